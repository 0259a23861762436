//! The library's global allocator.
//!
//! In the application's process it forwards to the system allocator: only `init` (a normal
//! context) allocates there; the signal handler never does. In the forked writer, which has
//! one thread copied from a process whose other threads may have held glibc's malloc lock,
//! [`enter_writer_mode`] switches it to a bump arena in a fresh `mmap`: no locks, no glibc.
//! The arena is never part of an image (the writer skips its range) and is reset when a
//! restored process resumes ([`leave_writer_mode`]).

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::alloc::System;

use crate::sys;

pub struct ForkSafeAlloc;

static WRITER_MODE: AtomicBool = AtomicBool::new(false);
static ARENA_START: AtomicUsize = AtomicUsize::new(0);
static ARENA_NEXT: AtomicUsize = AtomicUsize::new(0);
static ARENA_END: AtomicUsize = AtomicUsize::new(0);
static ARENA_PEAK: AtomicUsize = AtomicUsize::new(0);

/// Address space reserved for the writer's arena (pages are only committed when touched).
const ARENA_RESERVE: usize = 64 << 30;

/// Switches to the arena. Call first thing in the writer child.
pub fn enter_writer_mode() -> Result<(), i32> {
    // SAFETY: a fresh anonymous mapping at a kernel-chosen address.
    let base = unsafe {
        sys::mmap(
            0,
            ARENA_RESERVE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    }?;
    ARENA_START.store(base, Ordering::Relaxed);
    ARENA_NEXT.store(base, Ordering::Relaxed);
    ARENA_PEAK.store(base, Ordering::Relaxed);
    ARENA_END.store(base + ARENA_RESERVE, Ordering::Relaxed);
    WRITER_MODE.store(true, Ordering::SeqCst);
    Ok(())
}

/// The arena's address range, to be left out of the image.
pub fn arena_range() -> (usize, usize) {
    (
        ARENA_START.load(Ordering::Relaxed),
        ARENA_END.load(Ordering::Relaxed),
    )
}

/// Back to the system allocator (a restored process resumes with the writer's state).
pub fn leave_writer_mode() {
    WRITER_MODE.store(false, Ordering::SeqCst);
    ARENA_START.store(0, Ordering::Relaxed);
    ARENA_NEXT.store(0, Ordering::Relaxed);
    ARENA_END.store(0, Ordering::Relaxed);
}

pub fn in_writer_mode() -> bool {
    WRITER_MODE.load(Ordering::Relaxed)
}

fn bump(layout: Layout) -> *mut u8 {
    // One thread only in the writer: plain load/store is enough.
    let next = ARENA_NEXT.load(Ordering::Relaxed);
    let align = layout.align().max(16);
    let start = (next + align - 1) & !(align - 1);
    let end = match start.checked_add(layout.size()) {
        Some(e) if e <= ARENA_END.load(Ordering::Relaxed) => e,
        _ => return core::ptr::null_mut(),
    };
    ARENA_NEXT.store(end, Ordering::Relaxed);
    ARENA_PEAK.fetch_max(end, Ordering::Relaxed);
    start as *mut u8
}

/// Most bytes the arena held at once (the writer's peak memory, buffers included).
pub fn peak_bytes() -> usize {
    ARENA_PEAK
        .load(Ordering::Relaxed)
        .saturating_sub(ARENA_START.load(Ordering::Relaxed))
}

// SAFETY: both arms return blocks of at least layout.size() bytes aligned to layout.align()
// (the arena rounds up); the arena hands out disjoint ranges and frees the last block only.
unsafe impl GlobalAlloc for ForkSafeAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if in_writer_mode() {
            bump(layout)
        } else {
            // SAFETY: forwarded with the caller's layout.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let p = ptr as usize;
        let (start, end) = arena_range();
        if p >= start && p < end {
            // Free in place only if it was the last block, so loops that allocate and free
            // a buffer reuse it.
            if p + layout.size() == ARENA_NEXT.load(Ordering::Relaxed) {
                ARENA_NEXT.store(p, Ordering::Relaxed);
            }
        } else if !in_writer_mode() {
            // SAFETY: ptr came from System.alloc with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
        // A system block freed in the writer is leaked: glibc's free is not safe there.
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = ptr as usize;
        let (start, end) = arena_range();
        let in_arena = p >= start && p < end;
        if !in_writer_mode() && !in_arena {
            // SAFETY: forwarded.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // Grow the last block in place when possible.
        if in_arena
            && p + layout.size() == ARENA_NEXT.load(Ordering::Relaxed)
            && p + new_size <= end
        {
            ARENA_NEXT.store(p + new_size, Ordering::Relaxed);
            return ptr;
        }
        // SAFETY: layout.align() is a valid alignment and new_size is non-zero per contract.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: forwarding to our own alloc.
        let np = unsafe { self.alloc(new_layout) };
        if !np.is_null() {
            // SAFETY: both blocks are valid for the smaller size and do not overlap.
            unsafe { core::ptr::copy_nonoverlapping(ptr, np, layout.size().min(new_size)) };
            // SAFETY: ptr was allocated by us with `layout`.
            unsafe { self.dealloc(ptr, layout) };
        }
        np
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !in_writer_mode() {
            // SAFETY: forwarded with the caller's layout.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // Arena memory above the high-water mark was never handed out: it is still the
        // zeroed memory of the fresh mapping, and writing zeros there would only fault in
        // pages (megabytes of compression buffers) before they are used.
        let fresh_from = ARENA_PEAK.load(Ordering::Relaxed);
        let p = bump(layout);
        if !p.is_null() {
            let start = p as usize;
            let dirty_end = fresh_from.min(start + layout.size());
            if dirty_end > start {
                // SAFETY: start..dirty_end lies inside the block just handed out.
                unsafe { core::ptr::write_bytes(p, 0, dirty_end - start) };
            }
        }
        p
    }
}
