//! Consistency checks on decoded metadata, run by the reader before anything acts on it:
//! every address, size, count and offset is bounded here.

use std::fmt;

use crate::{Contents, Metadata, FIRST_CHUNK_OFFSET, MAX_CHUNK_RAW_LEN, PAGE_SIZE};

/// End of the x86-64 user address space (47-bit, 4-level paging).
pub const USER_SPACE_END: u64 = 0x0000_7fff_ffff_f000;
/// The `[vsyscall]` page, the one mapping allowed above user space.
pub const VSYSCALL_START: u64 = 0xffff_ffff_ff60_0000;
pub const MAX_MAPPINGS: usize = 1 << 20;
pub const MAX_THREADS: usize = 1 << 16;
pub const MAX_FDS: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError(pub String);

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ValidationError {}

fn err<T>(s: String) -> Result<T, ValidationError> {
    Err(ValidationError(s))
}

/// Checks `m` against itself and against `chunks_end` (the file offset where the metadata,
/// and so the last chunk's end, lies).
pub fn validate_metadata(m: &Metadata, chunks_end: u64) -> Result<(), ValidationError> {
    if m.mappings.len() > MAX_MAPPINGS {
        return err(format!(
            "{} mappings exceed the limit of {MAX_MAPPINGS}",
            m.mappings.len()
        ));
    }
    if m.threads.is_empty() || m.threads.len() > MAX_THREADS {
        return err(format!(
            "{} threads: must be 1 to {MAX_THREADS}",
            m.threads.len()
        ));
    }
    if m.fds.len() > MAX_FDS {
        return err(format!("{} descriptors exceed the limit", m.fds.len()));
    }
    let mut prev_end = 0u64;
    for (i, map) in m.mappings.iter().enumerate() {
        let vsyscall = map.start == VSYSCALL_START;
        if map.start % PAGE_SIZE != 0 || map.end % PAGE_SIZE != 0 || map.end <= map.start {
            return err(format!(
                "mapping {i} {:#x}-{:#x} is empty or not page-aligned",
                map.start, map.end
            ));
        }
        if !vsyscall && map.end > USER_SPACE_END {
            return err(format!(
                "mapping {i} {:#x}-{:#x} lies outside user space",
                map.start, map.end
            ));
        }
        if map.start < prev_end {
            return err(format!(
                "mapping {i} at {:#x} overlaps or is out of order",
                map.start
            ));
        }
        if map.prot & !7 != 0 {
            return err(format!(
                "mapping {i} has unknown protection bits {:#x}",
                map.prot
            ));
        }
        if map.offset % PAGE_SIZE != 0 {
            return err(format!(
                "mapping {i} file offset {:#x} is not page-aligned",
                map.offset
            ));
        }
        prev_end = map.end;
    }
    // Every stored page run must fall inside one mapping whose contents are stored, and
    // no page may be stored twice.
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut expected_offset = FIRST_CHUNK_OFFSET;
    for (ci, c) in m.chunks.iter().enumerate() {
        if c.offset < expected_offset {
            return err(format!(
                "chunk {ci} at offset {} overlaps the previous chunk or the header",
                c.offset
            ));
        }
        let end = c
            .offset
            .checked_add(c.stored_len)
            .filter(|&e| e <= chunks_end);
        let Some(end) = end else {
            return err(format!(
                "chunk {ci} at {}+{} lies outside the chunk area",
                c.offset, c.stored_len
            ));
        };
        expected_offset = end;
        if c.raw_len == 0 || c.raw_len > MAX_CHUNK_RAW_LEN || c.raw_len % PAGE_SIZE != 0 {
            return err(format!(
                "chunk {ci} raw length {} is not 1 to {} pages",
                c.raw_len,
                MAX_CHUNK_RAW_LEN / PAGE_SIZE
            ));
        }
        let mut pages = 0u64;
        for r in &c.runs {
            let len = r.pages.checked_mul(PAGE_SIZE);
            let run_end = len.and_then(|l| r.addr.checked_add(l));
            match run_end {
                Some(e) if r.pages > 0 && r.addr % PAGE_SIZE == 0 && e <= USER_SPACE_END => {
                    runs.push((r.addr, e))
                }
                _ => {
                    return err(format!(
                        "chunk {ci} has an invalid page run at {:#x} ({} pages)",
                        r.addr, r.pages
                    ))
                }
            }
            pages = pages.saturating_add(r.pages);
        }
        if pages.checked_mul(PAGE_SIZE) != Some(c.raw_len) {
            return err(format!(
                "chunk {ci} runs hold {pages} pages but its raw length is {}",
                c.raw_len
            ));
        }
    }
    runs.sort_unstable();
    let mut mi = 0usize;
    let mut last_end = 0u64;
    for (start, end) in runs {
        if start < last_end {
            return err(format!("page {start:#x} is stored twice"));
        }
        last_end = end;
        while mi < m.mappings.len() && m.mappings[mi].end <= start {
            mi += 1;
        }
        match m.mappings.get(mi) {
            Some(map)
                if map.start <= start && end <= map.end && map.contents == Contents::Stored => {}
            _ => return err(format!(
                "stored pages {start:#x}-{end:#x} are not inside a mapping with stored contents"
            )),
        }
    }
    Ok(())
}
