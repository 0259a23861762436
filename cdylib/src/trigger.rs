//! Checkpoint requests (`forkpoint checkpoint`, with an id): whether one is still wanted,
//! and the small queue of those that arrive while a checkpoint is being taken or written.
//! The handler that tells the triggers apart is `checkpoint::on_signal`.
//!
//! Runs in signal handlers (the leader's, and every other thread's while it is stopped).
//! Allowed: the raw syscalls of `sys`, reading `RUNTIME` (set before the handler was
//! installed), atomics, the fixed buffers of `state`. Not allowed: allocation, stdio, locks,
//! any libc call that may take a lock or touch errno-dependent state.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::fixbuf::FixBuf;
use crate::report;
use crate::state::RUNTIME;
use crate::sys;

/// Requests that arrived while a writer was busy (ids, 0 = free slot).
pub(crate) static QUEUED: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];

pub(crate) fn queue_request(id: u64) -> bool {
    QUEUED.iter().any(|slot| {
        slot.compare_exchange(0, id, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    })
}

/// After a writer is gone: send each queued request to ourselves again, in order; the first
/// starts the next checkpoint, the others queue up behind it.
pub fn resend_queued() {
    let Some(rt) = RUNTIME.get() else { return };
    for slot in &QUEUED {
        let id = slot.swap(0, Ordering::SeqCst);
        if id != 0 {
            let _ = sys::sigqueue_self(rt.config.signal, id);
        }
    }
}

/// A request is honoured only if its file is still there and is ours: another user cannot
/// choose where our memory is written.
/// Whether request `id` asks for an incremental image (`forkpoint checkpoint --incremental`
/// writes the word on the request's second line; the first is the output path).
pub(crate) fn request_wants_incremental(pid: i32, id: u64) -> bool {
    let mut req = FixBuf::<4096>::new();
    report::runtime_file(&mut req, pid, "request", id);
    let Ok(fd) = sys::open(
        req.as_cstr(),
        libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        0,
    ) else {
        return false;
    };
    let mut buf = [0u8; 4200];
    let n = sys::read_full(fd, &mut buf).unwrap_or(0);
    sys::close(fd);
    crate::procfs::request_options(&buf[..n]).1
}

pub(crate) fn request_pending(pid: i32, id: u64) -> bool {
    let mut req = FixBuf::<4096>::new();
    report::runtime_file(&mut req, pid, "request", id);
    sys::stat(req.as_cstr()).is_ok_and(|st| st.st_uid == sys::getuid())
}
