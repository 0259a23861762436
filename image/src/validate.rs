//! Consistency checks on decoded metadata, run by the reader before anything acts on it:
//! every address, size, count and offset is bounded here.
//!
//! What is checked (each error names the item by index and address or file offset):
//!
//! - counts: mappings, threads (at least one), descriptors, signals, limits;
//! - mappings: page-aligned, non-empty, sorted, non-overlapping, inside user space (only the
//!   `[vsyscall]` page may lie above it), known protection bits, page-aligned file offset,
//!   shared kinds marked `shared`, nothing stored for kinds the kernel or a file recreates;
//! - chunks: in file order, non-overlapping, after the header and before the metadata; raw
//!   length 1 page to [`MAX_CHUNK_RAW_LEN`] and equal to the pages of its runs; stored
//!   (uncompressed) chunks exactly `raw_len` long and page-aligned in the file; zstd chunks no
//!   longer than zstd's worst case for `raw_len`;
//! - page runs: page-aligned, in user space, inside one mapping whose contents are stored,
//!   no page stored twice;
//! - threads: tids positive and unique, `rsp`/`rip` non-zero user addresses, other saved
//!   pointers zero or in user space;
//! - descriptors sorted by number, unique, non-negative;
//! - signals 1..=64 except SIGKILL and SIGSTOP, unique, handler and restorer in user space;
//! - resource limits: resource below [`RLIM_NLIMITS`], unique, `cur <= max`;
//! - `mm`: every address in user space, each start not after its end, `auxv` pairs bounded;
//! - the restore-info block address: zero or an aligned block in user space.
//!
//! `stats`, `warnings`, `process` and `checkpoint` are informational and not checked.

use std::fmt;

use crate::{
    restore_info, thread_table, Compression, Contents, MappingKind, Metadata, FIRST_CHUNK_OFFSET,
    MAX_CHUNK_RAW_LEN, PAGE_SIZE,
};

/// End of the x86-64 user address space (47-bit, 4-level paging).
pub const USER_SPACE_END: u64 = 0x0000_7fff_ffff_f000;
/// The `[vsyscall]` page, the one mapping allowed above user space.
pub const VSYSCALL_START: u64 = 0xffff_ffff_ff60_0000;
pub const MAX_MAPPINGS: usize = 1 << 20;
pub const MAX_THREADS: usize = 1 << 16;
/// 65536 CPUs.
pub const MAX_AFFINITY_WORDS: usize = 1024;
/// Highest descriptor number + 1 (the kernel's default `fs.nr_open`).
pub const MAX_FD_NUMBER: i32 = 1 << 20;
pub const MAX_FDS: usize = 1 << 20;
/// Signals 1..=64: at most one disposition each.
pub const MAX_SIGNAL: u32 = 64;
/// Number of resource limits the kernel knows (`RLIM_NLIMITS`): `resource` is below it.
pub const RLIM_NLIMITS: u32 = 16;
/// Upper bound on the `auxv` words (the kernel keeps far fewer).
pub const MAX_AUXV_WORDS: usize = 512;
/// Upper bound on [`crate::CpuInfo::xsave_frame_size`] (AMX frames are about 11 KiB).
pub const MAX_XSAVE_FRAME_SIZE: u32 = 1 << 20;

const SIGKILL: u32 = 9;
const SIGSTOP: u32 = 19;

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

/// `addr` is zero or a user-space address.
fn user_or_null(addr: u64) -> bool {
    addr < USER_SPACE_END
}

/// `addr` is a non-zero user-space address.
fn user_nonnull(addr: u64) -> bool {
    addr != 0 && addr < USER_SPACE_END
}

/// `[addr, addr+len)` lies in user space.
fn user_range(addr: u64, len: u64) -> bool {
    addr.checked_add(len).is_some_and(|e| e <= USER_SPACE_END)
}

/// Checks `m` against itself and against `chunks_end` (the file offset where the metadata,
/// and so the last chunk's end, lies).
pub fn validate_metadata(m: &Metadata, chunks_end: u64) -> Result<(), ValidationError> {
    validate_counts(m)?;
    validate_mappings(m)?;
    validate_chunks(m, chunks_end)?;
    validate_threads(m)?;
    validate_fds(m)?;
    validate_blobs(m, chunks_end)?;
    validate_signals(m)?;
    validate_rlimits(m)?;
    validate_mm(m)?;
    validate_misc(m)?;
    validate_tree(m, chunks_end)?;
    validate_inherited(m)?;
    Ok(())
}

/// Most inherited runs an incremental image lists.
pub const MAX_INHERITED_RUNS: usize = 1 << 24;

/// Inherited runs: only in an image with a parent; page-aligned, sorted and disjoint, each
/// inside one private mapping with stored contents, none in a chunk of this image.
fn validate_inherited(m: &Metadata) -> Result<(), ValidationError> {
    if m.inherited.is_empty() {
        return Ok(());
    }
    if m.parent.is_none() {
        return err("inherited pages in an image that names no parent".into());
    }
    if m.inherited.len() > MAX_INHERITED_RUNS {
        return err(format!(
            "{} inherited page runs (at most {MAX_INHERITED_RUNS})",
            m.inherited.len()
        ));
    }
    let stored = crate::pages::PageSet::from_runs(m.chunks.iter().flat_map(|c| c.runs.iter()));
    let mut last_end = 0u64;
    let mut mi = 0usize;
    for r in &m.inherited {
        let end = r
            .pages
            .checked_mul(PAGE_SIZE)
            .and_then(|l| r.addr.checked_add(l))
            .filter(|&e| r.pages > 0 && r.addr % PAGE_SIZE == 0 && e <= USER_SPACE_END);
        let Some(end) = end else {
            return err(format!(
                "invalid inherited page run at {:#x} ({} pages)",
                r.addr, r.pages
            ));
        };
        if r.addr < last_end {
            return err(format!(
                "inherited page runs are not sorted and disjoint at {:#x}",
                r.addr
            ));
        }
        last_end = end;
        while mi < m.mappings.len() && m.mappings[mi].end <= r.addr {
            mi += 1;
        }
        match m.mappings.get(mi) {
            Some(map)
                if map.start <= r.addr
                    && end <= map.end
                    && map.contents == Contents::Stored
                    && !map.shared => {}
            _ => {
                return err(format!(
                    "inherited pages {:#x}-{end:#x} are not inside a private mapping with stored contents",
                    r.addr
                ))
            }
        }
        if stored.touches(r.addr, end) {
            return err(format!(
                "inherited pages {:#x}-{end:#x} are also stored in this image",
                r.addr
            ));
        }
    }
    Ok(())
}

/// Most processes a tree image holds.
pub const MAX_TREE_MEMBERS: usize = 4096;

/// The root is this image's process at offset 0; every other member's image lies after the
/// root's data, page-aligned, inside the data area, apart from every other; parents come
/// before their children.
fn validate_tree(m: &Metadata, chunks_end: u64) -> Result<(), ValidationError> {
    let Some(tree) = &m.tree else { return Ok(()) };
    let members = &tree.members;
    if members.is_empty() || members.len() > MAX_TREE_MEMBERS {
        return err(format!(
            "a tree of {} processes: must be 1 to {MAX_TREE_MEMBERS}",
            members.len()
        ));
    }
    let root = &members[0];
    if root.pid != m.process.pid || root.image_offset != 0 || root.exited.is_some() {
        return err(format!(
            "the tree's first member (pid {}) is not this image's process (pid {})",
            root.pid, m.process.pid
        ));
    }
    let root_data_end = m
        .chunks
        .iter()
        .map(|c| c.offset.saturating_add(c.stored_len))
        .chain(m.blobs.iter().map(|b| b.offset.saturating_add(b.len)))
        .max()
        .unwrap_or(crate::FIRST_CHUNK_OFFSET);
    let mut ranges = Vec::with_capacity(members.len());
    let mut seen = std::collections::HashSet::new();
    for (i, t) in members.iter().enumerate() {
        if t.pid <= 0 || !seen.insert(t.pid) {
            return err(format!(
                "tree member {i}: pid {} is invalid or repeated",
                t.pid
            ));
        }
        if i == 0 {
            continue;
        }
        if !members[..i].iter().any(|p| p.pid == t.ppid) {
            return err(format!(
                "tree member {i} (pid {}): its parent {} is not an earlier member",
                t.pid, t.ppid
            ));
        }
        if t.exited.is_some() {
            if t.image_offset != 0 || t.image_len != 0 || t.threads != 0 {
                return err(format!(
                    "tree member {i} (pid {}) exited but has an image or threads",
                    t.pid
                ));
            }
            if members.iter().any(|c| c.ppid == t.pid) {
                return err(format!(
                    "tree member {i} (pid {}) exited but has children",
                    t.pid
                ));
            }
            continue;
        }
        let end = t.image_offset.checked_add(t.image_len);
        let min_len = crate::FIRST_CHUNK_OFFSET + crate::FOOTER_LEN as u64;
        if t.image_offset < root_data_end
            || !t.image_offset.is_multiple_of(crate::PAGE_SIZE)
            || t.image_len < min_len
            || end.is_none_or(|e| e > chunks_end)
        {
            return err(format!(
                "tree member {i} (pid {}): its image at {}+{} lies outside the data area",
                t.pid, t.image_offset, t.image_len
            ));
        }
        ranges.push((t.image_offset, t.image_offset + t.image_len, t.pid));
    }
    for (g, group) in tree.shared_files.iter().enumerate() {
        if group.len() < 2 || group.len() > MAX_TREE_MEMBERS * 4 {
            return err(format!(
                "shared file description {g}: {} descriptors (must be 2 to {})",
                group.len(),
                MAX_TREE_MEMBERS * 4
            ));
        }
        if let Some(d) = group
            .iter()
            .find(|d| d.fd < 0 || !members.iter().any(|t| t.pid == d.pid && t.exited.is_none()))
        {
            return err(format!(
                "shared file description {g}: descriptor {} of {} is not a living member's",
                d.fd, d.pid
            ));
        }
    }
    ranges.sort_unstable();
    if let Some(w) = ranges.windows(2).find(|w| w[1].0 < w[0].1) {
        return err(format!(
            "the images of tree members {} and {} overlap",
            w[0].2, w[1].2
        ));
    }
    Ok(())
}

fn validate_counts(m: &Metadata) -> Result<(), ValidationError> {
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
        return err(format!(
            "{} descriptors exceed the limit of {MAX_FDS}",
            m.fds.len()
        ));
    }
    Ok(())
}

fn validate_mappings(m: &Metadata) -> Result<(), ValidationError> {
    let mut prev_end = 0u64;
    for (i, map) in m.mappings.iter().enumerate() {
        let at = format!("mapping {i} {:#x}-{:#x}", map.start, map.end);
        if map.start % PAGE_SIZE != 0 || map.end % PAGE_SIZE != 0 || map.end <= map.start {
            return err(format!("{at} is empty or not page-aligned"));
        }
        let is_vsyscall_kind = matches!(map.kind, MappingKind::Vsyscall);
        if map.end > USER_SPACE_END {
            // Only the one [vsyscall] page may lie above user space.
            if !(is_vsyscall_kind
                && map.start == VSYSCALL_START
                && map.end == VSYSCALL_START + PAGE_SIZE)
            {
                return err(format!("{at} lies outside user space"));
            }
        }
        if map.start < prev_end {
            return err(format!(
                "{at} overlaps the previous mapping (which ends at {prev_end:#x}) or is out of order"
            ));
        }
        if map.prot & !7 != 0 {
            return err(format!("{at} has unknown protection bits {:#x}", map.prot));
        }
        if map.offset % PAGE_SIZE != 0 {
            return err(format!(
                "{at} file offset {:#x} is not page-aligned",
                map.offset
            ));
        }
        let kind_name = match &map.kind {
            MappingKind::Anonymous => "anonymous",
            MappingKind::Heap => "heap",
            MappingKind::Stack => "stack",
            MappingKind::File { .. } => "file",
            MappingKind::SharedFile { .. } => "shared_file",
            MappingKind::SharedAnonymous => "shared_anonymous",
            MappingKind::Vdso { .. } => "vdso",
            MappingKind::Vvar => "vvar",
            MappingKind::VvarVclock => "vvar_vclock",
            MappingKind::Vsyscall => "vsyscall",
        };
        // A shared kind must come from a shared mapping. (The converse does not hold: the
        // writer saves a shared mapping of a deleted file as `anonymous`, shared = true, and
        // a restart brings it back private.)
        let shared_kind = matches!(
            map.kind,
            MappingKind::SharedFile { .. } | MappingKind::SharedAnonymous
        );
        if shared_kind && !map.shared {
            return err(format!("{at} of kind {kind_name} has shared = false"));
        }
        let recreated = matches!(
            map.kind,
            MappingKind::SharedFile { .. }
                | MappingKind::Vdso { .. }
                | MappingKind::Vvar
                | MappingKind::VvarVclock
                | MappingKind::Vsyscall
        );
        if recreated && map.contents == Contents::Stored {
            return err(format!(
                "{at} of kind {kind_name} cannot have stored contents"
            ));
        }
        prev_end = map.end;
    }
    Ok(())
}

fn validate_chunks(m: &Metadata, chunks_end: u64) -> Result<(), ValidationError> {
    // Every stored page run must fall inside one mapping whose contents are stored, and
    // no page may be stored twice.
    let mut runs: Vec<(u64, u64, usize)> = Vec::new();
    let mut expected_offset = FIRST_CHUNK_OFFSET;
    for (ci, c) in m.chunks.iter().enumerate() {
        if c.offset < expected_offset {
            return err(format!(
                "chunk {ci} at file offset {} overlaps the previous chunk or the header",
                c.offset
            ));
        }
        let end = c
            .offset
            .checked_add(c.stored_len)
            .filter(|&e| e <= chunks_end);
        let Some(end) = end else {
            return err(format!(
                "chunk {ci} at file offset {}+{} lies outside the chunk area (which ends at {chunks_end})",
                c.offset, c.stored_len
            ));
        };
        expected_offset = end;
        if c.raw_len == 0 || c.raw_len > MAX_CHUNK_RAW_LEN || c.raw_len % PAGE_SIZE != 0 {
            return err(format!(
                "chunk {ci} at file offset {} raw length {} is not 1 to {} pages",
                c.offset,
                c.raw_len,
                MAX_CHUNK_RAW_LEN / PAGE_SIZE
            ));
        }
        match c.compression {
            Compression::None => {
                if c.stored_len != c.raw_len {
                    return err(format!(
                        "stored chunk {ci} at file offset {} is {} bytes, its raw length is {}",
                        c.offset, c.stored_len, c.raw_len
                    ));
                }
                if c.offset % PAGE_SIZE != 0 {
                    return err(format!(
                        "stored chunk {ci} at file offset {} is not page-aligned",
                        c.offset
                    ));
                }
            }
            Compression::Zstd => {
                // raw_len <= MAX_CHUNK_RAW_LEN, so the cast is exact.
                let bound = zstd::zstd_safe::compress_bound(c.raw_len as usize) as u64;
                if c.stored_len == 0 || c.stored_len > bound {
                    return err(format!(
                        "zstd chunk {ci} at file offset {} is {} bytes: not 1 to {bound} for {} raw bytes",
                        c.offset, c.stored_len, c.raw_len
                    ));
                }
            }
        }
        let mut pages = 0u64;
        for r in &c.runs {
            let len = r.pages.checked_mul(PAGE_SIZE);
            let run_end = len.and_then(|l| r.addr.checked_add(l));
            match run_end {
                Some(e) if r.pages > 0 && r.addr % PAGE_SIZE == 0 && e <= USER_SPACE_END => {
                    runs.push((r.addr, e, ci))
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
    for (start, end, ci) in runs {
        if start < last_end {
            return err(format!(
                "page {start:#x} is stored twice (again in chunk {ci})"
            ));
        }
        last_end = end;
        while mi < m.mappings.len() && m.mappings[mi].end <= start {
            mi += 1;
        }
        match m.mappings.get(mi) {
            Some(map)
                if map.start <= start && end <= map.end && map.contents == Contents::Stored => {}
            _ => {
                return err(format!(
                "stored pages {start:#x}-{end:#x} of chunk {ci} are not inside a mapping with stored contents"
            ))
            }
        }
    }
    Ok(())
}

fn validate_threads(m: &Metadata) -> Result<(), ValidationError> {
    let mut tids: Vec<i32> = Vec::with_capacity(m.threads.len());
    for (i, t) in m.threads.iter().enumerate() {
        let at = format!("thread {i} (tid {})", t.tid);
        if t.tid <= 0 {
            return err(format!("{at} has a non-positive tid"));
        }
        tids.push(t.tid);
        if !user_nonnull(t.regs.rsp) {
            return err(format!(
                "{at} resume rsp {:#x} is not a user address",
                t.regs.rsp
            ));
        }
        if !user_nonnull(t.regs.rip) {
            return err(format!(
                "{at} resume rip {:#x} is not a user address",
                t.regs.rip
            ));
        }
        for (what, v) in [
            ("fs_base", t.fs_base),
            ("tid_address", t.tid_address),
            ("robust_list", t.robust_list),
        ] {
            if !user_or_null(v) {
                return err(format!("{at} {what} {v:#x} is not a user address"));
            }
        }
        if t.affinity.len() > MAX_AFFINITY_WORDS {
            return err(format!(
                "{at} affinity mask of {} words exceeds {MAX_AFFINITY_WORDS}",
                t.affinity.len()
            ));
        }
        if !user_range(t.sigaltstack.sp, t.sigaltstack.size) {
            return err(format!(
                "{at} sigaltstack {:#x}+{:#x} is not in user space",
                t.sigaltstack.sp, t.sigaltstack.size
            ));
        }
        if let Some(r) = t.rseq {
            if r.addr == 0 || !user_range(r.addr, u64::from(r.len)) {
                return err(format!(
                    "{at} rseq area {:#x}+{} is not in user space",
                    r.addr, r.len
                ));
            }
        }
    }
    tids.sort_unstable();
    if let Some(w) = tids.windows(2).find(|w| w[0] == w[1]) {
        return err(format!("tid {} appears in two threads", w[0]));
    }
    Ok(())
}

fn validate_fds(m: &Metadata) -> Result<(), ValidationError> {
    let mut prev: Option<i32> = None;
    for (i, f) in m.fds.iter().enumerate() {
        if f.fd < 0 {
            return err(format!("descriptor entry {i} has negative number {}", f.fd));
        }
        if f.fd >= MAX_FD_NUMBER {
            return err(format!(
                "descriptor entry {i} has number {}, above the limit {}",
                f.fd,
                MAX_FD_NUMBER - 1
            ));
        }
        if prev.is_some_and(|p| f.fd <= p) {
            return err(format!(
                "descriptor entry {i} (fd {}) is a duplicate or out of order",
                f.fd
            ));
        }
        prev = Some(f.fd);
    }
    Ok(())
}

/// Largest raw blob (pipe contents, deleted file, memfd) a reader accepts.
pub const MAX_BLOB_LEN: u64 = 1 << 30;
/// Most registrations of one epoll instance.
pub const MAX_EPOLL_ENTRIES: usize = 1 << 20;

fn validate_blobs(m: &Metadata, chunks_end: u64) -> Result<(), ValidationError> {
    for (i, b) in m.blobs.iter().enumerate() {
        let end = b.offset.checked_add(b.len);
        if b.offset < crate::FIRST_CHUNK_OFFSET
            || b.len > MAX_BLOB_LEN
            || end.is_none_or(|e| e > chunks_end)
        {
            return err(format!(
                "blob {i} at {}+{} lies outside the data area or is too large",
                b.offset, b.len
            ));
        }
    }
    let blob_ok = |x: &Option<u32>| x.is_none_or(|k| (k as usize) < m.blobs.len());
    for f in &m.fds {
        let ok = match &f.kind {
            crate::FdKind::Pipe { pipe: Some(p) } => blob_ok(&p.data),
            crate::FdKind::Socket { socket: Some(s) } => {
                blob_ok(&s.data) && s.local.len() <= 128 && s.peer.len() <= 128
            }
            crate::FdKind::DeletedFile { data, size, .. }
            | crate::FdKind::Memfd { data, size, .. } => blob_ok(data) && *size <= MAX_BLOB_LEN,
            crate::FdKind::Epoll { interest } => interest.len() <= MAX_EPOLL_ENTRIES,
            _ => true,
        };
        if !ok {
            return err(format!(
                "descriptor {} refers to a missing blob or has oversized fields",
                f.fd
            ));
        }
    }
    Ok(())
}

fn validate_signals(m: &Metadata) -> Result<(), ValidationError> {
    let mut seen = 0u64;
    for (i, s) in m.signals.iter().enumerate() {
        if s.signo == 0 || s.signo > MAX_SIGNAL || s.signo == SIGKILL || s.signo == SIGSTOP {
            return err(format!(
                "signal entry {i} has signal number {} (must be 1 to {MAX_SIGNAL}, not SIGKILL or SIGSTOP)",
                s.signo
            ));
        }
        let bit = 1u64 << (s.signo - 1);
        if seen & bit != 0 {
            return err(format!(
                "signal entry {i}: signal {} appears twice",
                s.signo
            ));
        }
        seen |= bit;
        // SIG_DFL is 0 and SIG_IGN 1; anything else is a function in user space.
        if !user_or_null(s.handler) || !user_or_null(s.restorer) {
            return err(format!(
                "signal {} handler {:#x} or restorer {:#x} is not a user address",
                s.signo, s.handler, s.restorer
            ));
        }
    }
    Ok(())
}

fn validate_rlimits(m: &Metadata) -> Result<(), ValidationError> {
    let mut seen = 0u32;
    for (i, r) in m.rlimits.iter().enumerate() {
        if r.resource >= RLIM_NLIMITS {
            return err(format!(
                "limit entry {i} has unknown resource {} (must be below {RLIM_NLIMITS})",
                r.resource
            ));
        }
        let bit = 1u32 << r.resource;
        if seen & bit != 0 {
            return err(format!(
                "limit entry {i}: resource {} appears twice",
                r.resource
            ));
        }
        seen |= bit;
        if r.cur > r.max {
            return err(format!(
                "limit entry {i} (resource {}): soft limit {} exceeds hard limit {}",
                r.resource, r.cur, r.max
            ));
        }
    }
    Ok(())
}

fn validate_mm(m: &Metadata) -> Result<(), ValidationError> {
    let mm = &m.mm;
    let fields = [
        ("start_code", mm.start_code),
        ("end_code", mm.end_code),
        ("start_data", mm.start_data),
        ("end_data", mm.end_data),
        ("start_brk", mm.start_brk),
        ("brk", mm.brk),
        ("start_stack", mm.start_stack),
        ("arg_start", mm.arg_start),
        ("arg_end", mm.arg_end),
        ("env_start", mm.env_start),
        ("env_end", mm.env_end),
    ];
    for (name, v) in fields {
        if v > USER_SPACE_END {
            return err(format!("mm.{name} {v:#x} is not in user space"));
        }
    }
    let pairs = [
        ("start_code", mm.start_code, "end_code", mm.end_code),
        ("start_data", mm.start_data, "end_data", mm.end_data),
        ("start_brk", mm.start_brk, "brk", mm.brk),
        ("arg_start", mm.arg_start, "arg_end", mm.arg_end),
        ("env_start", mm.env_start, "env_end", mm.env_end),
    ];
    for (a, av, b, bv) in pairs {
        if av > bv {
            return err(format!("mm.{a} {av:#x} lies after mm.{b} {bv:#x}"));
        }
    }
    if mm.auxv.len() & 1 != 0 || mm.auxv.len() > MAX_AUXV_WORDS {
        return err(format!(
            "mm.auxv has {} words: must be (type, value) pairs, at most {MAX_AUXV_WORDS} words",
            mm.auxv.len()
        ));
    }
    Ok(())
}

fn validate_misc(m: &Metadata) -> Result<(), ValidationError> {
    let a = m.library.restore_info_addr;
    if a != 0 && (a & 7 != 0 || !user_range(a, restore_info::LEN as u64)) {
        return err(format!(
            "library.restore_info_addr {a:#x} is not an aligned user address"
        ));
    }
    let (t, n) = (m.library.thread_table_addr, m.library.thread_table_len);
    if t != 0
        && (t & 7 != 0
            || n as usize > MAX_THREADS
            || !user_range(t, n as u64 * thread_table::ENTRY_LEN as u64))
    {
        return err(format!(
            "library.thread_table_addr {t:#x} with {n} entries is not an aligned user range \
             of at most {MAX_THREADS} entries"
        ));
    }
    if t != 0 && (n as usize) < m.threads.len() {
        return err(format!(
            "library.thread_table_len {n} is less than the {} threads",
            m.threads.len()
        ));
    }
    if m.cpu.xsave_frame_size > MAX_XSAVE_FRAME_SIZE {
        return err(format!(
            "cpu.xsave_frame_size {} exceeds {MAX_XSAVE_FRAME_SIZE}",
            m.cpu.xsave_frame_size
        ));
    }
    Ok(())
}
