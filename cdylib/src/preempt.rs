//! Checkpoint on preemption (`FORKPOINT_ON_TERM`): batch schedulers, Kubernetes and systemd
//! send SIGTERM, then SIGKILL after a grace period. The library holds SIGTERM (the program's
//! own `sigaction` for it is recorded and reported back, as for the checkpoint signal), and
//! when it comes takes a checkpoint (of the tree, if the process has children), waits until
//! the image is durable, prints how long that took, and then hands SIGTERM to what the
//! program chose: its handler, ignoring it, or the default (the process ends by SIGTERM);
//! `checkpoint-exit` always ends it so. In a process restored from that checkpoint, the
//! SIGTERM is over: the program runs on.
//!
//! A scheduler's SIGTERM often reaches every process of the job at once (Slurm's
//! `scontrol requeue` and `scancel`, systemd's default KillMode, `kill -TERM -PGID`). The
//! tree's root checkpoints the tree; every other member holds its SIGTERM until the
//! root's checkpoint has taken it (its writer is done), at most [`MEMBER_WAIT_NS`] for that
//! checkpoint to begin, and then SIGTERM goes on to its disposition. A SIGTERM the program
//! sends itself (a `raise`, or a member's parent ending it: `Pool.terminate()` ending its
//! workers) is the program's business and goes on at once, without a checkpoint.
//!
//! Runs in the SIGTERM handler (every signal blocked but, while a tree's coordinator works,
//! the checkpoint signal). Allowed: the raw syscalls of `sys`, reading `RUNTIME`, atomics,
//! fixed buffers. Not allowed: allocation, stdio, locks.

use core::ffi::c_void;
use core::sync::atomic::Ordering;

use forkpoint_settings::OnTerm;

use crate::checkpoint::{lead, reap_writer};
use crate::fixbuf::FixBuf;
use crate::interpose::VIRTUAL_TERM;
use crate::state::{Trigger, GENERATION, RUNTIME, SEQ, WRITER_PID};
use crate::sys;

/// How the checkpoint taken for a SIGTERM ended.
enum Outcome {
    Durable,
    Failed,
    /// This is the process restored from it.
    Restored,
}

/// How long a member holds a SIGTERM for the root's checkpoint to begin.
const MEMBER_WAIT_NS: u64 = 5_000_000_000;
/// How long, at most, it then waits for its part of that checkpoint to be written (the
/// coordinator's own timeout).
const MEMBER_WRITE_NS: u64 = 120_000_000_000;

/// Whether the SIGTERM came from outside the program: not from this process itself, nor, in
/// a member, from its parent (a member of the tree too); kill(2), sigqueue(3) and tgkill(2)
/// name their sender, anything else counts as outside.
fn from_outside(info: *const libc::siginfo_t, root: bool) -> bool {
    if info.is_null() {
        return true;
    }
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let info = unsafe { &*info };
    const SI_USER: i32 = 0;
    const SI_QUEUE: i32 = -1;
    const SI_TKILL: i32 = -6;
    if !matches!(info.si_code, SI_USER | SI_QUEUE | SI_TKILL) {
        return true;
    }
    // SAFETY: these codes carry the sender's pid.
    let sender = unsafe { info.si_pid() };
    sender != sys::getpid() && (root || sender != sys::getppid())
}

pub extern "C" fn on_term(sig: i32, info: *mut libc::siginfo_t, uctx: *mut c_void) {
    let Some(rt) = RUNTIME.get() else { return };
    let root = crate::state::is_tree_root();
    if rt.config.on_term == OnTerm::Off || !from_outside(info, root) {
        deliver(sig, info, uctx, OnTerm::Checkpoint);
        return;
    }
    if !root {
        match hold_for_the_roots_checkpoint() {
            Outcome::Restored => {}
            _ => deliver(sig, info, uctx, rt.config.on_term),
        }
        return;
    }
    let t0 = sys::monotonic_ns();
    let outcome = if sys::has_children() {
        tree_checkpoint()
    } else {
        own_checkpoint(uctx)
    };
    let ms = (sys::monotonic_ns() - t0) / 1_000_000;
    let mut l = FixBuf::<4200>::new();
    l.str("forkpoint[")
        .i64(sys::getpid() as i64)
        .str("]: SIGTERM: ");
    match outcome {
        Outcome::Restored => return,
        Outcome::Durable => {
            l.str("checkpoint durable after ").u64(ms).str(" ms");
            if rt.config.name.is_some() || !sys::has_children() {
                l.str(" (");
                crate::writer::default_image_path(
                    &mut l,
                    rt,
                    sys::getpid(),
                    SEQ.load(Ordering::SeqCst),
                );
                l.str(")");
            }
        }
        Outcome::Failed => {
            l.str("checkpoint failed after ")
                .u64(ms)
                .str(" ms (FORKPOINT_LOG=info says why)");
        }
    }
    l.str("; SIGTERM goes on to the program\n");
    let _ = sys::write_all(2, l.as_bytes());
    deliver(sig, info, uctx, rt.config.on_term);
}

fn own_checkpoint(uctx: *mut c_void) -> Outcome {
    // An image being written (the interval's) is let finish: never two writers at once.
    let busy = WRITER_PID.load(Ordering::SeqCst);
    if busy != 0 {
        reap_writer(busy, false);
    }
    let generation = GENERATION.load(Ordering::SeqCst);
    lead(Trigger::Term, 0, uctx);
    if GENERATION.load(Ordering::SeqCst) != generation {
        return Outcome::Restored;
    }
    let writer = WRITER_PID.load(Ordering::SeqCst);
    if writer == 0 {
        return Outcome::Failed;
    }
    match reap_writer(writer, false) {
        Some(st) if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0 => Outcome::Durable,
        _ => Outcome::Failed,
    }
}

/// A member's SIGTERM: wait until this process has been checkpointed (with the tree: its
/// writer is done), or for at most MEMBER_WAIT_NS for that to begin.
fn hold_for_the_roots_checkpoint() -> Outcome {
    let ours = 1u64 << (RUNTIME.get().map_or(1, |rt| rt.config.signal) - 1);
    let old = sys::sigmask_set(libc::SIG_UNBLOCK, ours);
    let (seq, generation) = (
        SEQ.load(Ordering::SeqCst),
        GENERATION.load(Ordering::SeqCst),
    );
    let t0 = sys::monotonic_ns();
    let idle = core::sync::atomic::AtomicU32::new(0);
    let outcome = loop {
        if GENERATION.load(Ordering::SeqCst) != generation {
            break Outcome::Restored;
        }
        let began = SEQ.load(Ordering::SeqCst) != seq;
        if began && WRITER_PID.load(Ordering::SeqCst) == 0 {
            break Outcome::Durable;
        }
        let waited = sys::monotonic_ns() - t0;
        if (!began && waited > MEMBER_WAIT_NS) || waited > MEMBER_WAIT_NS + MEMBER_WRITE_NS {
            break Outcome::Failed;
        }
        // Woken early by the checkpoint signal (a request, our writer's exit).
        sys::futex_wait(&idle, 0, 5_000_000);
    };
    sys::sigmask_set(libc::SIG_SETMASK, old);
    outcome
}

fn tree_checkpoint() -> Outcome {
    crate::coordinator::wait_running();
    // The coordinator's request must reach this thread: it is the process's only one, or
    // the others may be stopped by the checkpoint it starts.
    let ours = 1u64 << (RUNTIME.get().map_or(1, |rt| rt.config.signal) - 1);
    let old = sys::sigmask_set(libc::SIG_UNBLOCK, ours);
    let r = crate::coordinator::wait_for_tree_checkpoint(Trigger::Term);
    sys::sigmask_set(libc::SIG_SETMASK, old);
    match r {
        0 => Outcome::Durable,
        1 => Outcome::Restored,
        _ => Outcome::Failed,
    }
}

/// Hands SIGTERM to the program's disposition (`CheckpointExit`: to the default).
fn deliver(sig: i32, info: *mut libc::siginfo_t, uctx: *mut c_void, how: OnTerm) {
    let handler = VIRTUAL_TERM.handler.load(Ordering::SeqCst) as usize;
    if how == OnTerm::CheckpointExit || handler == libc::SIG_DFL {
        // The default action, as if the library were not there: end by SIGTERM (it is
        // blocked until this handler returns).
        let _ = sys::set_default_action(sig);
        let _ = sys::kill(sys::getpid(), sig);
        return;
    }
    if handler == libc::SIG_IGN {
        return;
    }
    let flags = VIRTUAL_TERM.flags.load(Ordering::SeqCst) as i32;
    // The mask the kernel would give the program's handler: the interrupted code's, its
    // sa_mask, and SIGTERM itself unless SA_NODEFER.
    let interrupted = if uctx.is_null() {
        0
    } else {
        // SAFETY: uctx is the ucontext_t the kernel passed to this SA_SIGINFO handler.
        unsafe {
            core::ptr::read_unaligned(
                &(*(uctx as *const libc::ucontext_t)).uc_sigmask as *const libc::sigset_t
                    as *const u64,
            )
        }
    };
    let mut mask = interrupted | VIRTUAL_TERM.mask.load(Ordering::SeqCst);
    if flags & libc::SA_NODEFER == 0 {
        mask |= 1u64 << (sig - 1);
    }
    if flags & libc::SA_RESETHAND != 0 {
        VIRTUAL_TERM
            .handler
            .store(libc::SIG_DFL as u64, Ordering::SeqCst);
    }
    let old = sys::sigmask_set(libc::SIG_SETMASK, mask);
    // SAFETY: the program installed this function as its SIGTERM handler with these flags;
    // it is called as the kernel would call it (SA_SIGINFO: with the siginfo and context).
    unsafe {
        if flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(i32, *mut libc::siginfo_t, *mut c_void) =
                core::mem::transmute(handler);
            f(sig, info, uctx);
        } else {
            let f: extern "C" fn(i32) = core::mem::transmute(handler);
            f(sig);
        }
    }
    sys::sigmask_set(libc::SIG_SETMASK, old);
}
