//! The first steps of a restored process, before the program runs on: undo what the writer
//! changed, learn what the loader said, re-raise the signals that were pending.
//!
//! Runs in signal handlers (the leader's, and every other thread's while it is stopped).
//! Allowed: the raw syscalls of `sys`, reading `RUNTIME` (set before the handler was
//! installed), atomics, the fixed buffers of `state`. Not allowed: allocation, stdio, locks,
//! any libc call that may take a lock or touch errno-dependent state.

use core::sync::atomic::Ordering;

use crate::config::LogLevel;
use crate::report::{self, Line};
use crate::state::{
    Capture, Trigger, API_RESTORED, GENERATION, QUIESCE, RESTORE_INFO, RUNTIME, SEQ, TIMER_ID,
    WRITER_PID,
};
use crate::sys;

/// Signals that were pending (blocked) at the checkpoint are pending again in the restored
/// thread (their siginfo is not kept: they arrive as sent by the process itself).
pub(crate) fn raise_pending(pending: u64, process_wide: bool) {
    let ours = RUNTIME.get().map_or(0, |rt| 1u64 << (rt.config.signal - 1));
    let (pid, tid) = (sys::getpid(), sys::gettid());
    for sig in 1..=64 {
        let bit = 1u64 << (sig - 1);
        if pending & bit != 0 && bit != ours && sig != libc::SIGKILL && sig != libc::SIGSTOP {
            let _ = if process_wide {
                sys::kill(pid, sig)
            } else {
                sys::tgkill(pid, tid, sig)
            };
        }
    }
}

/// Runs first in a restored process: the memory is the writer's snapshot, so undo what the
/// writer changed, learn what the loader told us, and re-arm what the kernel did not keep.
pub(crate) fn after_restore(cap: &mut Capture, trigger: Trigger) {
    crate::arena::leave_writer_mode();
    crate::track::forget_after_restore();
    // The pipe and memory copies were the writer's: those numbers and addresses may be the
    // program's now.
    cap.n_pipe_copies = 0;
    cap.n_shared_copies = 0;
    WRITER_PID.store(0, Ordering::SeqCst);
    // SAFETY: the loader wrote RESTORE_INFO before the process resumed; nothing else writes it.
    let info = unsafe { core::ptr::read_volatile(RESTORE_INFO.get()) };
    SEQ.store(cap.seq, Ordering::SeqCst);
    let lazy = info.0[0] == forkpoint_image::restore_info::MAGIC_LAZY;
    let from_loader = info.0[0] == forkpoint_image::restore_info::MAGIC || lazy;
    crate::state::LAZY_FILL_PENDING.store(lazy, Ordering::SeqCst);
    let generation = if from_loader {
        info.0[1]
    } else {
        cap.generation + 1
    };
    GENERATION.store(generation, Ordering::SeqCst);
    if from_loader && info.0[2] != 0 && info.0[3] != 0 {
        // The other threads run their last blob steps (and rt_sigreturn from frames in the
        // blob region) concurrently: wait until all are out before unmapping it.
        let others = cap.n_threads.saturating_sub(1) as u32;
        let deadline = sys::monotonic_ns() + 10_000_000_000;
        loop {
            let r = QUIESCE.resumed.load(Ordering::SeqCst);
            if r >= others || sys::monotonic_ns() > deadline {
                break;
            }
            sys::futex_wait(&QUIESCE.resumed, r, 10_000_000);
        }
        // SAFETY: what is left of the loader's reservation: nothing of the program lives there.
        let _ = unsafe { sys::munmap(info.0[2] as usize, info.0[3] as usize) };
    }
    // SAFETY: as above, only this thread writes it.
    unsafe { core::ptr::write_volatile(RESTORE_INFO.get(), crate::state::RestoreInfo([0; 4])) };
    // The root restored alone runs under the restart's PID: it is still the root.
    if crate::state::TREE_ROOT_PID.load(Ordering::SeqCst) == cap.pid {
        crate::state::TREE_ROOT_PID.store(sys::getpid(), Ordering::SeqCst);
    }
    if let Some(rt) = RUNTIME.get() {
        if let Some(ns) = rt
            .config
            .interval_ns
            .filter(|_| crate::state::is_tree_root())
        {
            if let Ok(id) = sys::timer_create_signal(libc::CLOCK_MONOTONIC, rt.config.signal) {
                TIMER_ID.store(id, Ordering::SeqCst);
                let _ = sys::timer_settime_interval(id, ns);
            }
        }
    }
    crate::coordinator::after_restore();
    if trigger == Trigger::Api {
        API_RESTORED.store(true, Ordering::SeqCst);
    }
    let mut l = Line::new();
    l.str("restored from checkpoint ")
        .u64(cap.seq)
        .str(" of pid ")
        .i64(cap.pid as i64);
    l.str(" (generation ")
        .u64(generation)
        .str(", ")
        .u64(cap.n_threads as u64)
        .str(" threads)");
    report::log(LogLevel::Info, l.as_bytes());
}
