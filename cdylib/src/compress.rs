//! The writer's chunk pipeline: the writer thread gathers pages into chunks; compression
//! threads compress each chunk, reserve its place in the file with an atomic offset and
//! write it there. The index (which chunk holds which pages, where) is collected by the
//! writer thread and written last, in the metadata.
//!
//! Runs in the forked writer. The compression threads are raw `clone(CLONE_VM|CLONE_THREAD)`
//! threads of the writer: one address space, so pages dropped after gathering are dropped
//! once. They share the writer's TLS and must not touch it: allowed there are atomics, the
//! raw syscalls of `sys`, zstd through a per-slot static context and crc32; not allowed:
//! allocation (all buffers are allocated by the writer thread before they start), panics,
//! anything of std that uses thread-locals.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};

use forkpoint_image::{self as image, Chunk, Compression, PageRun, PAGE_SIZE};

use crate::error::WriteError;
use crate::sys;

const PAGE: usize = PAGE_SIZE as usize;
/// Pages per chunk: 4 MiB, large enough for zstd to do well, small enough to bound memory.
pub const CHUNK_PAGES: usize = 1024;
/// Stack of each compression thread.
const WORKER_STACK: usize = 512 << 10;

const FREE: u32 = 0;
const FILLED: u32 = 1;
const BUSY: u32 = 2;
const DONE: u32 = 3;

struct SlotData {
    raw: Vec<u8>,
    /// The chunk's pages in place in the snapshot (start, bytes), when they are one
    /// contiguous span of droppable memory: compressed and written from there, no copy.
    direct: Option<(u64, usize)>,
    /// Spans to drop once a direct chunk is written (its pages are read until then).
    drop_after: Vec<(u64, usize)>,
    compressed: Vec<u8>,
    runs: Vec<PageRun>,
    cctx: *mut zstd_sys::ZSTD_CCtx,
    _cctx_mem: Vec<u8>,
    // Filled in by whoever compressed the slot.
    offset: u64,
    stored_len: u64,
    crc32: u32,
    compression: Compression,
}

impl SlotData {
    fn raw_len(&self) -> usize {
        self.direct.map_or(self.raw.len(), |(_, len)| len)
    }

    /// The chunk's uncompressed bytes: in place, or gathered.
    fn input(&self) -> &[u8] {
        match self.direct {
            // SAFETY: a direct span is the snapshot's own droppable pages, mapped and
            // unchanged until drop_after runs, after the last use of this slice.
            Some((start, len)) => unsafe { core::slice::from_raw_parts(start as *const u8, len) },
            None => &self.raw,
        }
    }
}

struct Slot {
    state: AtomicU32,
    data: UnsafeCell<SlotData>,
}

/// What the writer thread and the compression threads share.
struct Shared {
    slots: Vec<Slot>,
    fd: i32,
    level: i32,
    next_offset: AtomicU64,
    /// Bumped (and futex-woken) when a slot is filled, or when there is no more work.
    work_seq: AtomicU32,
    /// Bumped (and futex-woken) when a slot is done.
    done_seq: AtomicU32,
    finishing: AtomicBool,
    /// First errno a compression thread met (0: none).
    error: AtomicI32,
}

// SAFETY: a slot's data is accessed only by the party that owns its state (the writer thread
// in FREE/DONE, one compression thread in BUSY); transitions are atomic with SeqCst ordering.
unsafe impl Sync for Shared {}

pub struct Chunker {
    shared: Box<Shared>,
    /// Slot the writer thread is filling.
    current: Option<usize>,
    new_run: bool,
    /// Per run of the current slot: may its pages be dropped once gathered.
    droppable: Vec<bool>,
    chunks: Vec<Chunk>,
    /// clear_child_tid words of the compression threads (0 once a thread has exited).
    worker_tids: Vec<AtomicU32>,
    _stacks: Vec<Vec<u8>>,
    pub bytes_raw: u64,
    pub bytes_stored: u64,
    /// Where `forkpoint checkpoint` reads how far the write is (-1: nobody asks).
    pub progress_fd: i32,
}

/// The progress file is rewritten each time this many bytes (2^N) more are stored.
const PROGRESS_STEP_SHIFT: u32 = 23;

impl Chunker {
    /// `start` is the file offset of the first chunk; `threads` compression threads (0:
    /// the writer thread compresses itself).
    pub fn new(level: i32, fd: i32, start: u64, threads: usize) -> Result<Chunker, WriteError> {
        let n_slots = if threads == 0 { 1 } else { 2 * threads + 1 };
        // SAFETY: pure size computation.
        let bound = unsafe { zstd_sys::ZSTD_compressBound(CHUNK_PAGES * PAGE) };
        let mut slots = Vec::with_capacity(n_slots);
        for _ in 0..n_slots {
            let (cctx, mem) = if level == 0 {
                (core::ptr::null_mut(), Vec::new())
            } else {
                // SAFETY: pure size computation.
                let size = unsafe { zstd_sys::ZSTD_estimateCCtxSize(level) };
                let mut mem = vec![0u8; size + 64];
                let aligned = (mem.as_mut_ptr() as usize + 63) & !63;
                // SAFETY: `mem` outlives the context (kept in the slot) and is aligned; a
                // static context never allocates.
                let cctx = unsafe {
                    zstd_sys::ZSTD_initStaticCCtx(aligned as *mut core::ffi::c_void, size)
                };
                if cctx.is_null() {
                    return Err(WriteError::Setup(
                        "cannot set up a zstd compression context",
                    ));
                }
                (cctx, mem)
            };
            slots.push(Slot {
                state: AtomicU32::new(FREE),
                data: UnsafeCell::new(SlotData {
                    raw: Vec::with_capacity(CHUNK_PAGES * PAGE),
                    direct: None,
                    drop_after: Vec::with_capacity(64),
                    compressed: if level == 0 {
                        Vec::new()
                    } else {
                        vec![0u8; bound]
                    },
                    runs: Vec::with_capacity(64),
                    cctx,
                    _cctx_mem: mem,
                    offset: 0,
                    stored_len: 0,
                    crc32: 0,
                    compression: Compression::None,
                }),
            });
        }
        let shared = Box::new(Shared {
            slots,
            fd,
            level,
            next_offset: AtomicU64::new(start),
            work_seq: AtomicU32::new(0),
            done_seq: AtomicU32::new(0),
            finishing: AtomicBool::new(false),
            error: AtomicI32::new(0),
        });
        let mut c = Chunker {
            shared,
            current: None,
            new_run: true,
            droppable: Vec::with_capacity(64),
            chunks: Vec::new(),
            worker_tids: (0..threads).map(|_| AtomicU32::new(0)).collect(),
            _stacks: Vec::new(),
            bytes_raw: 0,
            bytes_stored: 0,
            progress_fd: -1,
        };
        for i in 0..threads {
            let mut stack = vec![0u8; WORKER_STACK];
            let top = (stack.as_mut_ptr() as usize + WORKER_STACK) & !15;
            let tid_word = &c.worker_tids[i] as *const AtomicU32 as u64;
            let arg = &*c.shared as *const Shared as u64;
            // SAFETY: the stack and the shared state outlive the thread (finish() joins every
            // thread before the Chunker is dropped); worker_main follows the rules above.
            match unsafe { crate::fork::spawn_thread(top as u64, tid_word, worker_main, arg) } {
                Ok(tid) => c.worker_tids[i].store(tid as u32, Ordering::SeqCst),
                Err(_) => c.worker_tids[i].store(0, Ordering::SeqCst), // fewer threads: fine
            }
            c._stacks.push(stack);
        }
        Ok(c)
    }

    /// The next page starts a new run (a run never spans two mappings).
    pub fn break_run(&mut self) {
        self.new_run = true;
    }

    fn has_workers(&self) -> bool {
        self.worker_tids
            .iter()
            .any(|t| t.load(Ordering::SeqCst) != 0)
    }

    fn check_error(&self) -> Result<(), WriteError> {
        match self.shared.error.load(Ordering::SeqCst) {
            0 => Ok(()),
            errno => Err(WriteError::Chunk { errno }),
        }
    }

    /// Collects a finished slot's chunk into the index.
    fn harvest(&mut self, i: usize) {
        // SAFETY: the slot is DONE: only the writer thread touches it now.
        let d = unsafe { &mut *self.shared.slots[i].data.get() };
        let raw_len = d.raw_len() as u64;
        let before = self.bytes_raw;
        self.bytes_raw += raw_len;
        self.bytes_stored += d.stored_len;
        if self.progress_fd >= 0
            && before >> PROGRESS_STEP_SHIFT != self.bytes_raw >> PROGRESS_STEP_SHIFT
        {
            let mut line = crate::fixbuf::FixBuf::<32>::new();
            line.u64(self.bytes_raw).str("\n");
            let _ = crate::sys::pwrite(self.progress_fd, line.as_bytes(), 0);
        }
        self.chunks.push(Chunk {
            offset: d.offset,
            stored_len: d.stored_len,
            raw_len,
            compression: d.compression,
            crc32: d.crc32,
            runs: core::mem::take(&mut d.runs),
        });
        d.raw.clear();
        d.direct = None;
        self.shared.slots[i].state.store(FREE, Ordering::SeqCst);
    }

    /// A free slot for the writer thread, harvesting finished ones, waiting if all are busy.
    fn free_slot(&mut self) -> Result<usize, WriteError> {
        loop {
            self.check_error()?;
            let seq = self.shared.done_seq.load(Ordering::SeqCst);
            for i in 0..self.shared.slots.len() {
                match self.shared.slots[i].state.load(Ordering::SeqCst) {
                    DONE => {
                        self.harvest(i);
                        return Ok(i);
                    }
                    FREE => return Ok(i),
                    _ => {}
                }
            }
            if !self.has_workers() {
                return Err(WriteError::Setup(
                    "internal error: no free chunk slot and no compression thread",
                ));
            }
            sys::futex_wait(&self.shared.done_seq, seq, 100_000_000);
        }
    }

    /// Adds one page to the current chunk. `in_place`: `page` is the snapshot's own page at
    /// `addr`, which nothing changes until the chunk is written (droppable memory): a chunk
    /// of such pages at consecutive addresses is compressed and written from where it is.
    pub fn add_page(
        &mut self,
        addr: u64,
        page: &[u8],
        droppable: bool,
        in_place: bool,
    ) -> Result<(), WriteError> {
        let i = match self.current {
            Some(i) => i,
            None => {
                let i = self.free_slot()?;
                self.current = Some(i);
                self.new_run = true;
                i
            }
        };
        // SAFETY: slot i is FREE and owned by the writer thread until it is marked FILLED.
        let d = unsafe { &mut *self.shared.slots[i].data.get() };
        let new_run = core::mem::replace(&mut self.new_run, false);
        match d.runs.last_mut() {
            Some(r)
                if !new_run
                    && r.addr + r.pages * PAGE_SIZE == addr
                    && self.droppable.last() == Some(&droppable) =>
            {
                r.pages += 1
            }
            _ => {
                d.runs.push(PageRun { addr, pages: 1 });
                self.droppable.push(droppable);
            }
        }
        let in_place = in_place && page.as_ptr() as u64 == addr && page.len() == PAGE;
        match d.direct {
            None if in_place && d.raw.is_empty() => d.direct = Some((addr, PAGE)),
            Some((start, len)) if in_place && start + len as u64 == addr => {
                d.direct = Some((start, len + PAGE))
            }
            Some((start, len)) => {
                // Not contiguous any more: gather what was in place, then go on copying.
                // SAFETY: start..start+len are the snapshot's pages added above, still mapped
                // (they are dropped only after the chunk is written).
                let span = unsafe { core::slice::from_raw_parts(start as *const u8, len) };
                d.raw.extend_from_slice(span);
                d.raw.extend_from_slice(page);
                d.direct = None;
            }
            None => d.raw.extend_from_slice(page),
        }
        if d.raw_len() >= CHUNK_PAGES * PAGE {
            self.submit()?;
        }
        Ok(())
    }

    /// Hands the current slot to the compression threads (or compresses it here).
    fn submit(&mut self) -> Result<(), WriteError> {
        let Some(i) = self.current.take() else {
            return Ok(());
        };
        // SAFETY: slot i is still owned by the writer thread.
        let d = unsafe { &mut *self.shared.slots[i].data.get() };
        if d.raw_len() == 0 {
            return Ok(());
        }
        // Once the pages are copied (or, for a chunk read in place, written), this copy of
        // them is not needed any more. Dropping it lets the running application write those
        // pages without copying them.
        d.drop_after.clear();
        for (r, &drop) in d.runs.iter().zip(&self.droppable) {
            if drop && d.direct.is_some() {
                d.drop_after.push((r.addr, (r.pages * PAGE_SIZE) as usize));
            } else if drop {
                // SAFETY: private anonymous pages of the application's snapshot that the
                // writer never reads again (its own data is never marked droppable).
                let _ = unsafe {
                    sys::madvise(
                        r.addr as usize,
                        (r.pages * PAGE_SIZE) as usize,
                        libc::MADV_DONTNEED,
                    )
                };
            }
        }
        self.droppable.clear();
        if self.has_workers() {
            self.shared.slots[i].state.store(FILLED, Ordering::SeqCst);
            self.shared.work_seq.fetch_add(1, Ordering::SeqCst);
            sys::futex_wake_all(&self.shared.work_seq);
        } else {
            self.shared.slots[i].state.store(BUSY, Ordering::SeqCst);
            process_slot(&self.shared, i);
            self.check_error()?;
            self.harvest(i);
        }
        Ok(())
    }

    /// Flushes the last chunk, waits for every chunk to be written, stops the threads.
    /// Returns the chunks sorted by file offset and the offset after the last one.
    pub fn finish(&mut self) -> Result<(Vec<Chunk>, u64), WriteError> {
        let r = self.submit();
        self.shared.finishing.store(true, Ordering::SeqCst);
        self.shared.work_seq.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake_all(&self.shared.work_seq);
        self.join();
        r?;
        // Whatever is left FILLED (threads gone) is compressed here.
        for i in 0..self.shared.slots.len() {
            if self.shared.slots[i].state.load(Ordering::SeqCst) == FILLED {
                self.shared.slots[i].state.store(BUSY, Ordering::SeqCst);
                process_slot(&self.shared, i);
            }
        }
        self.check_error()?;
        for i in 0..self.shared.slots.len() {
            if self.shared.slots[i].state.load(Ordering::SeqCst) == DONE {
                self.harvest(i);
            }
        }
        let mut chunks = core::mem::take(&mut self.chunks);
        chunks.sort_unstable_by_key(|c| c.offset);
        Ok((chunks, self.shared.next_offset.load(Ordering::SeqCst)))
    }
}

impl Chunker {
    /// Waits for every compression thread to exit (the kernel clears each tid word at exit
    /// and wakes it).
    fn join(&self) {
        for t in &self.worker_tids {
            loop {
                let v = t.load(Ordering::SeqCst);
                if v == 0 {
                    break;
                }
                sys::futex_wait_tid(t, v, 100_000_000);
            }
        }
    }
}

impl Drop for Chunker {
    /// On an error path: stop the threads before their buffers go.
    fn drop(&mut self) {
        self.shared.finishing.store(true, Ordering::SeqCst);
        let _ = self.shared.error.compare_exchange(
            0,
            libc::ECANCELED,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        self.shared.work_seq.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake_all(&self.shared.work_seq);
        self.join();
    }
}

/// Compresses and writes slot `i` (state BUSY, owned by the caller), then marks it DONE.
fn process_slot(sh: &Shared, i: usize) {
    let Some(slot) = sh.slots.get(i) else { return };
    // SAFETY: the caller moved the slot to BUSY: it is ours alone.
    let d = unsafe { &mut *slot.data.get() };
    let mut compression = Compression::None;
    let (out_ptr, out_cap) = (d.compressed.as_mut_ptr(), d.compressed.len());
    let input = d.input();
    let mut stored_len = input.len();
    if !d.cctx.is_null() {
        // SAFETY: cctx is this slot's static context; src and dst are valid for their lengths.
        let n = unsafe {
            zstd_sys::ZSTD_compressCCtx(
                d.cctx,
                out_ptr as *mut core::ffi::c_void,
                out_cap,
                input.as_ptr() as *const core::ffi::c_void,
                input.len(),
                sh.level,
            )
        };
        // SAFETY: pure check of a return code.
        let failed = unsafe { zstd_sys::ZSTD_isError(n) } != 0;
        if !failed && n < input.len() {
            compression = Compression::Zstd;
            stored_len = n;
        }
    }
    let bytes: &[u8] = match compression {
        Compression::Zstd => d.compressed.get(..stored_len).unwrap_or(&[]),
        Compression::None => input,
    };
    // Reserve the chunk's place; store-only chunks are page-aligned so a restart could map
    // them straight from the file.
    let align = if compression == Compression::None {
        PAGE_SIZE
    } else {
        1
    };
    let mut offset = sh.next_offset.load(Ordering::SeqCst);
    loop {
        let start = offset.div_ceil(align) * align;
        match sh.next_offset.compare_exchange(
            offset,
            start + stored_len as u64,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => {
                offset = start;
                break;
            }
            Err(cur) => offset = cur,
        }
    }
    let mut done = 0usize;
    while done < bytes.len() {
        let Some(rest) = bytes.get(done..) else { break };
        match sys::pwrite(sh.fd, rest, offset + done as u64) {
            Ok(0) => {
                let _ = sh
                    .error
                    .compare_exchange(0, libc::EIO, Ordering::SeqCst, Ordering::SeqCst);
                break;
            }
            Ok(k) => done += k,
            Err(libc::EINTR) => {}
            Err(e) => {
                let _ = sh
                    .error
                    .compare_exchange(0, e, Ordering::SeqCst, Ordering::SeqCst);
                break;
            }
        }
    }
    // Start writing it back now, so the final fsync has little left to wait for.
    sys::sync_file_range_start(sh.fd, offset, stored_len as u64);
    let crc32 = image::crc32(bytes);
    for &(addr, len) in &d.drop_after {
        // SAFETY: private anonymous pages of the application's snapshot that were only read
        // for this chunk, which is written (`input` and `bytes` are not used past here).
        let _ = unsafe { sys::madvise(addr as usize, len, libc::MADV_DONTNEED) };
    }
    d.offset = offset;
    d.stored_len = stored_len as u64;
    d.crc32 = crc32;
    d.compression = compression;
    slot.state.store(DONE, Ordering::SeqCst);
    sh.done_seq.fetch_add(1, Ordering::SeqCst);
    sys::futex_wake_all(&sh.done_seq);
}

/// A compression thread: takes FILLED slots until there is no more work.
extern "C" fn worker_main(arg: u64) -> ! {
    // SAFETY: arg is the Shared the Chunker keeps alive until this thread has exited.
    let sh = unsafe { &*(arg as *const Shared) };
    let _ = sys::prctl(libc::PR_SET_NAME, c"fp-compress".as_ptr() as usize, 0, 0, 0);
    loop {
        let seq = sh.work_seq.load(Ordering::SeqCst);
        let mut took = false;
        for i in 0..sh.slots.len() {
            if sh.slots[i]
                .state
                .compare_exchange(FILLED, BUSY, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                process_slot(sh, i);
                took = true;
            }
        }
        if !took {
            if sh.finishing.load(Ordering::SeqCst) || sh.error.load(Ordering::SeqCst) != 0 {
                break;
            }
            sys::futex_wait(&sh.work_seq, seq, 100_000_000);
        }
    }
    sys::exit_thread()
}
