//! A fixed-capacity byte buffer for building paths, report lines and log lines without
//! allocating (usable in the signal handler). Text that does not fit is cut, never panics.

#[derive(Clone)]
pub struct FixBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Default for FixBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FixBuf<N> {
    pub const fn new() -> Self {
        FixBuf {
            buf: [0; N],
            len: 0,
        }
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub fn push(&mut self, bytes: &[u8]) -> &mut Self {
        // Keep one byte for the NUL of `as_cstr`.
        let room = N.saturating_sub(1).saturating_sub(self.len);
        let n = bytes.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.push(s.as_bytes())
    }

    pub fn u64(&mut self, mut v: u64) -> &mut Self {
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&tmp[i..])
    }

    /// `0x` and lowercase hex digits.
    pub fn hex(&mut self, mut v: u64) -> &mut Self {
        let mut tmp = [0u8; 16];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = b"0123456789abcdef"[(v & 15) as usize];
            v >>= 4;
            if v == 0 {
                break;
            }
        }
        self.push(b"0x").push(&tmp[i..])
    }

    pub fn i64(&mut self, v: i64) -> &mut Self {
        if v < 0 {
            self.push(b"-");
        }
        self.u64(v.unsigned_abs())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The contents followed by a NUL byte, for the kernel.
    pub fn as_cstr(&mut self) -> &[u8] {
        self.buf[self.len] = 0;
        &self.buf[..self.len + 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers_and_cuts_overflow() {
        let mut b = FixBuf::<16>::new();
        b.str("x=").u64(0).str(" ").i64(-42);
        assert_eq!(b.as_bytes(), b"x=0 -42");
        b.str("0123456789");
        assert_eq!(b.as_bytes().len(), 15);
        assert_eq!(b.as_cstr().last(), Some(&0));
    }
}
