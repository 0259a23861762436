//! Stage: build every region at its staging address (decompressing chunks in parallel),
//! patch what the loader must tell the library, and set final protections. Still nothing
//! of the running loader is touched: a failure here leaves it intact.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use forkpoint_image::pages::PageSet;
use forkpoint_image::read::ChunkReader;
use forkpoint_image::{
    restore_info, thread_table, Contents, ImageFile, MappingKind, Metadata, PAGE_SIZE,
};

use crate::fds::SharedFds;
use crate::plan::Layout;
use crate::{sys, RestoreError};

/// Address translation from a target address to its staged copy.
pub struct StageMap {
    /// (target start, target end, staged address of target start), sorted.
    pub spans: Vec<(u64, u64, u64)>,
}

impl StageMap {
    pub fn new(meta: &Metadata, layout: &Layout) -> StageMap {
        let mut spans: Vec<(u64, u64, u64)> = layout
            .staged
            .iter()
            .map(|s| {
                let m = &meta.mappings[s.mapping];
                (m.start, m.end, s.staged_at + (m.start - s.target_start))
            })
            .collect();
        spans.sort_unstable();
        StageMap { spans }
    }

    /// Staged address of `len` bytes at target `addr`, if they lie in one staged mapping.
    pub fn translate(&self, addr: u64, len: u64) -> Option<u64> {
        let i = self.spans.partition_point(|s| s.0 <= addr).checked_sub(1)?;
        let (s, e, staged) = self.spans[i];
        (addr >= s && addr.checked_add(len)? <= e).then(|| staged + (addr - s))
    }
}

fn prot_flags(p: u32) -> i32 {
    let mut f = libc::PROT_NONE;
    if p & 1 != 0 {
        f |= libc::PROT_READ;
    }
    if p & 2 != 0 {
        f |= libc::PROT_WRITE;
    }
    if p & 4 != 0 {
        f |= libc::PROT_EXEC;
    }
    f
}

/// Maps every staged region (anonymous or from its file) inside the reservation.
pub fn map_regions(
    meta: &Metadata,
    layout: &Layout,
    tree: Option<&SharedFds>,
) -> Result<(), RestoreError> {
    let (rs, re) = layout.reservation;
    sys::reserve(rs, re - rs)
        .map_err(|e| RestoreError::os(format!("cannot reserve the staging area at {rs:#x}"), e))?;
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    for s in &layout.staged {
        let m = &meta.mappings[s.mapping];
        let len = s.target_end - s.target_start;
        let what = |e: std::io::Error| {
            RestoreError::os(
                format!("cannot stage the mapping at {:#x} ({})", m.start, m.name),
                e,
            )
        };
        let tree_object = m.memory_object.and_then(|o| tree?.memory.get(&o).copied());
        match &m.kind {
            MappingKind::File { file } | MappingKind::SharedFile { file } => {
                let shared = matches!(m.kind, MappingKind::SharedFile { .. });
                let writable = shared && m.prot & 2 != 0;
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(writable)
                    .open(&file.path)
                    .map_err(|e| {
                        RestoreError::os(
                            format!(
                                "cannot open {} for the mapping at {:#x}",
                                file.path, m.start
                            ),
                            e,
                        )
                    })?;
                let (prot, flags) = if shared {
                    (prot_flags(m.prot), libc::MAP_SHARED)
                } else {
                    (rw, libc::MAP_PRIVATE)
                };
                // SAFETY: inside our reservation, which nothing else uses.
                unsafe { sys::mmap_fixed(s.staged_at, len, prot, flags, f.as_raw_fd(), m.offset) }
                    .map_err(what)?;
            }
            MappingKind::SharedAnonymous if tree_object.is_some() => {
                // Memory another process of the tree maps too: the tree's object.
                let fd = tree_object.unwrap_or(-1);
                // SAFETY: inside our reservation; fd is the tree's memfd, sized to hold it.
                unsafe { sys::mmap_fixed(s.staged_at, len, rw, libc::MAP_SHARED, fd, m.offset) }
                    .map_err(what)?;
            }
            MappingKind::SharedAnonymous => {
                // SAFETY: inside our reservation.
                unsafe {
                    sys::mmap_fixed(
                        s.staged_at,
                        len,
                        rw,
                        libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                }
                .map_err(what)?;
            }
            _ => {
                // Regions saved empty (the library's writer stack) were reserved without
                // commitment; keep them so.
                let noreserve = if m.contents == Contents::Empty {
                    libc::MAP_NORESERVE
                } else {
                    0
                };
                let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | noreserve;
                // SAFETY: inside our reservation.
                unsafe { sys::mmap_fixed(s.staged_at, len, rw, flags, -1, 0) }.map_err(what)?;
            }
        }
    }
    Ok(())
}

/// Decompresses every chunk into the staged regions, on all CPUs. Every chunk's checksum is
/// verified here; a bad one fails the restore before the point of no return.
pub fn fill_regions(
    img: &ImageFile,
    stage: &StageMap,
    threads: usize,
    show_progress: bool,
    skip: Option<&[bool]>,
) -> Result<u64, RestoreError> {
    let chunks = &img.metadata.chunks;
    // A lazy restart fills the chunks it skips here after the hand-over.
    let todo: Vec<usize> = (0..chunks.len())
        .filter(|&i| !skip.is_some_and(|s| s.get(i).copied().unwrap_or(false)))
        .collect();
    let total: u64 = todo.iter().map(|&i| chunks[i].raw_len).sum();
    let done = AtomicU64::new(0);
    let (progress_stop, progress_rx) = std::sync::mpsc::channel::<()>();
    let next = AtomicUsize::new(0);
    let error: Mutex<Option<String>> = Mutex::new(None);
    let pages = AtomicUsize::new(0);
    // Fresh staged pages are faulted in a run at a time before they are written (one call
    // instead of a trap per page); off for good if the kernel does not know how.
    let populate = AtomicBool::new(true);
    let prefault = |dst: u64, len: u64| {
        if populate.load(Ordering::Relaxed) && !sys::populate_write(dst, len) {
            populate.store(false, Ordering::Relaxed);
        }
    };
    // The staging threads must be gone, not just done, before the restore blob runs: the
    // scope's implicit join only waits for the closures, so each is joined (pthread_join
    // waits for the kernel to clear the thread's tid, i.e. for the thread to have exited).
    std::thread::scope(|scope| {
        let progress = (show_progress && crate::progress::wanted(total)).then(|| {
            let done = &done;
            scope.spawn(move || {
                crate::progress::show_until(
                    "restart",
                    total,
                    || done.load(Ordering::Relaxed),
                    progress_rx,
                )
            })
        });
        let mut handles = Vec::new();
        for _ in 0..threads.max(1).min(todo.len().max(1)) {
            handles.push(scope.spawn(|| {
                let mut reader = ChunkReader::new();
                let mut out = Vec::new();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= todo.len() || error.lock().map(|e| e.is_some()).unwrap_or(true) {
                        break;
                    }
                    let i = todo[k];
                    let c = &chunks[i];
                    let fail =
                        |msg: String| *error.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg);
                    // A chunk of one run (the common case: a large region) is decompressed, or
                    // read, straight into its staged pages; others through a buffer.
                    if let [r] = c.runs.as_slice() {
                        let Some(dst) = stage.translate(r.addr, c.raw_len) else {
                            fail(format!(
                                "chunk {i}: pages at {:#x} are outside every restored mapping",
                                r.addr
                            ));
                            return;
                        };
                        prefault(dst, c.raw_len);
                        // SAFETY: dst..dst+raw_len is staged RW memory inside one mapping that
                        // only this thread writes (runs are disjoint, validated by the reader).
                        let staged = unsafe { sys::staged_slice(dst, c.raw_len) };
                        if let Err(e) = img.read_chunk_into(i, &mut reader, staged) {
                            fail(e.to_string());
                            break;
                        }
                    } else {
                        out.resize(c.raw_len as usize, 0);
                        if let Err(e) = img.read_chunk_into(i, &mut reader, &mut out) {
                            fail(e.to_string());
                            break;
                        }
                        let mut off = 0usize;
                        for r in &c.runs {
                            let len = r.pages * PAGE_SIZE;
                            let Some(dst) = stage.translate(r.addr, len) else {
                                fail(format!(
                                    "chunk {i}: pages at {:#x} are outside every restored mapping",
                                    r.addr
                                ));
                                return;
                            };
                            prefault(dst, len);
                            // SAFETY: as above, for this run.
                            unsafe { sys::copy_to(dst, &out[off..off + len as usize]) };
                            off += len as usize;
                        }
                    }
                    pages.fetch_add((c.raw_len / PAGE_SIZE) as usize, Ordering::Relaxed);
                    done.fetch_add(c.raw_len, Ordering::Relaxed);
                }
            }));
        }
        for h in handles {
            let _ = h.join();
        }
        drop(progress_stop);
        if let Some(p) = progress {
            let _ = p.join();
        }
    });
    if let Some(e) = error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(RestoreError::Failed(format!("the image is damaged: {e}")));
    }
    Ok(pages.load(Ordering::Relaxed) as u64)
}

/// Copies, from each older link of an incremental chain, the pages it provides (its chunks
/// that touch them are read, checked and decompressed; the newest link is [`fill_regions`]'s).
pub fn fill_from_ancestors(
    links: &[(&ImageFile, &PageSet)],
    stage: &StageMap,
    threads: usize,
) -> Result<u64, RestoreError> {
    let jobs: Vec<(usize, usize)> = links
        .iter()
        .enumerate()
        .flat_map(|(l, (img, want))| {
            img.metadata
                .chunks
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    c.runs
                        .iter()
                        .any(|r| want.touches(r.addr, r.addr + r.pages * PAGE_SIZE))
                })
                .map(move |(i, _)| (l, i))
        })
        .collect();
    let next = AtomicUsize::new(0);
    let pages = AtomicU64::new(0);
    let error: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for _ in 0..threads.max(1).min(jobs.len().max(1)) {
            handles.push(scope.spawn(|| {
                let mut reader = ChunkReader::new();
                let mut out = Vec::new();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= jobs.len() || error.lock().map(|e| e.is_some()).unwrap_or(true) {
                        break;
                    }
                    let (l, i) = jobs[k];
                    let (img, want) = links[l];
                    let c = &img.metadata.chunks[i];
                    let fail =
                        |msg: String| *error.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg);
                    out.resize(c.raw_len as usize, 0);
                    if let Err(e) = img.read_chunk_into(i, &mut reader, &mut out) {
                        fail(format!("parent image {} back: {e}", l + 1));
                        break;
                    }
                    let mut off = 0u64;
                    for r in &c.runs {
                        let end = r.addr + r.pages * PAGE_SIZE;
                        for (s, e) in want.clip(r.addr, end) {
                            let Some(dst) = stage.translate(s, e - s) else {
                                fail(format!(
                                    "parent image {} back, chunk {i}: pages at {s:#x} are outside every restored mapping",
                                    l + 1
                                ));
                                return;
                            };
                            // Faulted in a range at a time, as fill_regions does.
                            let _ = sys::populate_write(dst, e - s);
                            let from = (off + (s - r.addr)) as usize;
                            // SAFETY: dst..dst+(e-s) is staged RW memory inside one mapping;
                            // the links provide disjoint pages, so no other thread writes it.
                            unsafe { sys::copy_to(dst, &out[from..from + (e - s) as usize]) };
                            pages.fetch_add((e - s) / PAGE_SIZE, Ordering::Relaxed);
                        }
                        off += r.pages * PAGE_SIZE;
                    }
                }
            }));
        }
        for h in handles {
            let _ = h.join();
        }
    });
    if let Some(e) = error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(RestoreError::Failed(format!(
            "the image chain is damaged: {e}"
        )));
    }
    Ok(pages.load(Ordering::Relaxed))
}

/// Writes what the library reads when it resumes: the restore block and the table of restored
/// threads (for a library without one, the new TIDs go where glibc keeps them instead).
pub fn patch(
    meta: &Metadata,
    stage: &StageMap,
    blob: (u64, u64),
    new_tid: i32,
    lazy: bool,
) -> Result<(), RestoreError> {
    let at = meta.library.restore_info_addr;
    if at != 0 {
        let dst = stage
            .translate(at, restore_info::LEN as u64)
            .ok_or_else(|| {
                RestoreError::Failed(format!(
                    "the library's restore block at {at:#x} is not in a restored mapping"
                ))
            })?;
        let mut block = [0u8; restore_info::LEN];
        let magic = if lazy {
            restore_info::MAGIC_LAZY
        } else {
            restore_info::MAGIC
        };
        block[restore_info::OFF_MAGIC..][..8].copy_from_slice(&magic.to_le_bytes());
        block[restore_info::OFF_GENERATION..][..8]
            .copy_from_slice(&(meta.checkpoint.generation + 1).to_le_bytes());
        block[restore_info::OFF_BLOB_ADDR..][..8].copy_from_slice(&blob.0.to_le_bytes());
        block[restore_info::OFF_BLOB_LEN..][..8].copy_from_slice(&blob.1.to_le_bytes());
        // SAFETY: translated into staged RW memory.
        unsafe { sys::copy_to(dst, &block) };
    }
    let table = meta.library.thread_table_addr;
    if table == 0 {
        // A library without a thread table: glibc's cached TIDs become this run's.
        for t in &meta.threads {
            if t.tid_address != 0 {
                if let Some(dst) = stage.translate(t.tid_address, 4) {
                    // SAFETY: translated into staged RW memory.
                    unsafe { sys::copy_to(dst, &new_tid.to_le_bytes()) };
                }
            }
        }
        return Ok(());
    }
    // Field by field: the table may span two mappings (a library's .data and .bss). The
    // library reads entries up to the first without a tid address.
    let put = |at: u64, bytes: &[u8]| -> Result<(), RestoreError> {
        let dst = stage.translate(at, bytes.len() as u64).ok_or_else(|| {
            RestoreError::Failed(format!(
                "the library's thread table at {table:#x} is not in a restored mapping"
            ))
        })?;
        // SAFETY: translated into staged RW memory of bytes.len() bytes.
        unsafe { sys::copy_to(dst, bytes) };
        Ok(())
    };
    let main = crate::plan::main_thread_index(meta);
    for (i, t) in meta.threads.iter().enumerate() {
        let kept = match stage.translate(t.tid_address, 4) {
            // SAFETY: translated into staged memory, 4 bytes.
            Some(src) if t.tid_address != 0 => i32::from_le_bytes(unsafe { sys::copy_from(src) }),
            _ => 0,
        };
        let e = table + (i * thread_table::ENTRY_LEN) as u64;
        put(
            e + thread_table::OFF_TID_ADDRESS as u64,
            &t.tid_address.to_le_bytes(),
        )?;
        put(e + thread_table::OFF_KEPT_TID as u64, &kept.to_le_bytes())?;
        // The others' are written by the kernel when the blob clones them.
        let tid = if i == main { new_tid } else { 0 };
        put(e + thread_table::OFF_TID as u64, &tid.to_le_bytes())?;
    }
    let n = meta.threads.len();
    if n < meta.library.thread_table_len as usize {
        let end = table + (n * thread_table::ENTRY_LEN + thread_table::OFF_TID_ADDRESS) as u64;
        put(end, &0u64.to_le_bytes())?;
    }
    Ok(())
}

/// No transparent huge pages in the staged regions a lazy restart registers: a huge page
/// faulted in by an early-filled chunk would make its neighbours present (zero), and the
/// helper could not copy their contents in any more.
pub fn no_huge_pages(layout: &Layout, regions: &[(u64, u64)]) {
    for s in &layout.staged {
        if regions.contains(&(s.target_start, s.target_end)) {
            let len = (s.target_end - s.target_start) as usize;
            // SAFETY: staged memory of ours; only its paging property changes.
            unsafe { libc::madvise(s.staged_at as *mut _, len, libc::MADV_NOHUGEPAGE) };
        }
    }
}

/// Final protections of the staged regions (shared file mappings already have theirs).
pub fn protect(meta: &Metadata, layout: &Layout) -> Result<(), RestoreError> {
    for s in &layout.staged {
        let m = &meta.mappings[s.mapping];
        if matches!(m.kind, MappingKind::SharedFile { .. }) {
            continue;
        }
        sys::mprotect(
            s.staged_at,
            s.target_end - s.target_start,
            prot_flags(m.prot),
        )
        .map_err(|e| {
            RestoreError::os(
                format!("cannot set protections of the mapping at {:#x}", m.start),
                e,
            )
        })?;
    }
    Ok(())
}

/// Applies the saved madvise/mlock properties to the staged regions (they move with them).
/// A range may span several mappings: each piece is done on its own.
pub fn apply_memory_advice(meta: &Metadata, stage: &StageMap) -> Vec<String> {
    let mut warnings = Vec::new();
    for a in &meta.memory_advice {
        let end = a.start.saturating_add(a.len);
        let pieces: Vec<(u64, u64)> = stage
            .spans
            .iter()
            .filter(|s| s.0 < end && a.start < s.1)
            .map(|&(s, e, staged)| {
                let lo = a.start.max(s);
                (staged + (lo - s), end.min(e) - lo)
            })
            .collect();
        if pieces.is_empty() {
            warnings.push(format!(
                "{} range {:#x}+{:#x} is not in a restored mapping",
                a.advice, a.start, a.len
            ));
        }
        for (at, len) in pieces {
            if let Some(e) = apply_advice(&a.advice, at, len) {
                warnings.push(format!(
                    "cannot apply {} to {:#x}+{:#x}: {e}",
                    a.advice, a.start, a.len
                ));
            }
        }
    }
    warnings
}

fn apply_advice(advice: &str, at: u64, len: u64) -> Option<std::io::Error> {
    // SAFETY: staged memory of ours; these calls change only paging properties.
    let r = unsafe {
        match advice {
            "dontfork" => libc::madvise(at as *mut _, len as usize, libc::MADV_DONTFORK),
            "wipeonfork" => libc::madvise(at as *mut _, len as usize, libc::MADV_WIPEONFORK),
            "mlock" => libc::mlock(at as *const _, len as usize),
            _ => 0,
        }
    };
    (r != 0).then(std::io::Error::last_os_error)
}
