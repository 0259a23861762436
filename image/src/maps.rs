//! One line of `/proc/PID/maps`, parsed without allocating: the library reads it inside the
//! checkpoint pause (async-signal context: no allocation), the writer and the restart loader
//! outside it. One parser, so the three agree on what a line says.

/// `start-end perms offset dev inode name`, borrowing the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapsLine<'a> {
    pub start: u64,
    pub end: u64,
    /// `rwxp`/`rw-s` and the like (at least 4 bytes).
    pub perms: &'a [u8],
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// The path or `[heap]`-style name, leading padding removed; empty for anonymous memory.
    pub name: &'a [u8],
}

impl MapsLine<'_> {
    pub fn read(&self) -> bool {
        self.perms[0] == b'r'
    }
    pub fn write(&self) -> bool {
        self.perms[1] == b'w'
    }
    pub fn exec(&self) -> bool {
        self.perms[2] == b'x'
    }
    pub fn shared(&self) -> bool {
        self.perms[3] == b's'
    }
}

fn number(b: &[u8], radix: u32) -> Option<u64> {
    if b.is_empty() {
        return None;
    }
    let mut v = 0u64;
    for &c in b {
        v = v
            .checked_mul(radix as u64)?
            .checked_add((c as char).to_digit(radix)? as u64)?;
    }
    Some(v)
}

/// Parses one line (without its newline); None if it is not a maps line.
pub fn parse_line(line: &[u8]) -> Option<MapsLine<'_>> {
    let mut fields = line.splitn(6, |&c| c == b' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let dev = fields.next()?;
    let inode = fields.next()?;
    let name = fields.next().unwrap_or(b"");
    let name = &name[name.iter().position(|&c| c != b' ').unwrap_or(name.len())..];
    let dash = range.iter().position(|&c| c == b'-')?;
    let colon = dev.iter().position(|&c| c == b':')?;
    if perms.len() < 4 {
        return None;
    }
    Some(MapsLine {
        start: number(&range[..dash], 16)?,
        end: number(&range[dash + 1..], 16)?,
        perms,
        offset: number(offset, 16)?,
        dev_major: u32::try_from(number(&dev[..colon], 16)?).ok()?,
        dev_minor: u32::try_from(number(&dev[colon + 1..], 16)?).ok()?,
        inode: number(inode, 10)?,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let l = parse_line(
            b"7f0a1c000000-7f0a1c021000 rw-s 0001a000 fd:01 1234567                    /dev/shm/x (deleted)",
        )
        .unwrap();
        assert_eq!(
            (l.start, l.end, l.offset),
            (0x7f0a1c000000, 0x7f0a1c021000, 0x1a000)
        );
        assert_eq!((l.dev_major, l.dev_minor, l.inode), (0xfd, 1, 1234567));
        assert!(l.read() && l.write() && !l.exec() && l.shared());
        assert_eq!(l.name, b"/dev/shm/x (deleted)");
        let anon = parse_line(b"55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(anon.name, b"");
        assert_eq!(
            parse_line(b"7ffc1000-7ffc3000 r-xp 00000000 00:00 0                  [vdso]")
                .unwrap()
                .name,
            b"[vdso]"
        );
        for bad in [
            &b""[..],
            b"zz-10 rw-p 0 00:00 0",
            b"10-20 rw 0 00:00 0",
            b"10-20 rw-p 0 0000 0",
            b"10-20 rw-p 0 00:00 x",
            b"ffffffffffffffffff-1 rw-p 0 00:00 0",
        ] {
            assert_eq!(parse_line(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
