//! The checkpoint driver, in the application's process: the handler of the checkpoint
//! signal tells the triggers apart (a request, the interval timer, the API, a leader's stop
//! request, a writer's exit); then become the leader, quiesce the
//! other threads, capture what only this process can read, fork the writer, and release
//! everyone; in a restored process, the same path returns through `restored`. The steps are
//! the modules `trigger`, `quiesce`, `capture`, `fork`, `writer` and `restored`. This is the
//! application's pause.
//!
//! Runs in signal handlers (the leader's, and every other thread's while it is stopped).
//! Allowed: the raw syscalls of `sys`, reading `RUNTIME` (set before the handler was
//! installed), atomics, the fixed buffers of `state`. Not allowed: allocation, stdio, locks,
//! any libc call that may take a lock or touch errno-dependent state.

use core::ffi::c_void;
use core::sync::atomic::Ordering;

use crate::barrier::Barrier;
use crate::capture::{
    capture_fd_offsets, capture_thread, capture_timers, close_pipe_copies, copy_shared_memory,
    drop_shared_copies, lift_fork_advice, restore_fork_advice,
};
use crate::config::LogLevel;
use crate::fixbuf::FixBuf;
use crate::fork::{self, fork_with_resume_point, Forked};
use crate::quiesce::stop_this_thread;
use crate::quiesce::{release_threads, stop_other_threads};
use crate::report::{self, Line};
use crate::restored::{after_restore, raise_pending};
use crate::state::{
    Leader, Trigger, API_FAILED, API_PENDING, CAPTURE, GENERATION, LAST_WRITER, QUIESCE, RUNTIME,
    SEQ, WRITER_PID,
};
use crate::trigger::{queue_request, request_pending, resend_queued};
use crate::{sys, writer};

// si_code values of the siginfo the handler gets.
const SI_QUEUE: i32 = -1;
const SI_TIMER: i32 = -2;
const SI_TKILL: i32 = -6;
const CLD_EXITED: i32 = 1;
const CLD_DUMPED: i32 = 3;

/// The handler of the checkpoint signal. Also receives our writers' exit notifications (their
/// exit signal is this signal, so the application's SIGCHLD and `wait` never see them), and
/// the leader's stop requests to the other threads.
pub extern "C" fn on_signal(_sig: i32, info: *mut libc::siginfo_t, uctx: *mut c_void) {
    if info.is_null() {
        return;
    }
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let info = unsafe { &*info };
    let code = info.si_code;
    if (CLD_EXITED..=CLD_DUMPED).contains(&code) {
        // SAFETY: for CLD_* codes the kernel filled the child fields.
        let pid = unsafe { info.si_pid() };
        if !crate::coordinator::on_exit(pid) {
            reap_writer(pid, true);
        }
        return;
    }
    // SAFETY: SI_TKILL siginfo carries the sender's pid (reading it for other codes only
    // reads a plain integer of the union).
    let sender = unsafe { info.si_pid() };
    if code == SI_TKILL && sender == sys::getpid() {
        let me = sys::gettid();
        if QUIESCE.active.load(Ordering::SeqCst) && me != QUIESCE.leader_tid.load(Ordering::SeqCst)
        {
            stop_this_thread(me, uctx);
            return;
        }
        if !API_PENDING.load(Ordering::SeqCst) {
            // A stop request of an abandoned checkpoint, delivered late (the thread had the
            // signal blocked): nothing to do.
            return;
        }
    }
    // Requests from another user (only root can signal us at all) are refused; root, such as
    // a batch scheduler, may ask.
    if matches!(code, SI_QUEUE | 0) {
        // SAFETY: SI_QUEUE and SI_USER siginfo carry the sender's uid.
        let uid = unsafe { info.si_uid() };
        if uid != 0 && uid != sys::getuid() {
            let mut l = Line::new();
            l.str("refusing a checkpoint request from uid ")
                .u64(uid as u64);
            report::log(LogLevel::Info, l.as_bytes());
            return;
        }
    }
    let (trigger, id) = match code {
        // SAFETY: SI_QUEUE carries a sigval; forkpoint checkpoint puts the request id there.
        SI_QUEUE => (
            Trigger::Request,
            unsafe { info.si_value() }.sival_ptr as u64 & 0x7fff_ffff,
        ),
        SI_TIMER => (Trigger::Interval, 0),
        SI_TKILL if API_PENDING.load(Ordering::SeqCst) => (Trigger::Api, 0),
        _ => (Trigger::Signal, 0),
    };
    lead(trigger, id, uctx);
}

/// What [`lead`] passes to the leader on its own stack.
pub(crate) struct LeadArgs {
    leader: core::cell::Cell<Option<Leader>>,
    trigger: Trigger,
    id: u64,
    uctx: *mut c_void,
}

/// Becomes the checkpoint's leader, on the leader stack: the handler may run on a signal
/// stack (SA_ONSTACK) of a few KiB. One leader at a time (CHECKPOINT_BUSY), so one stack.
pub(crate) fn lead(trigger: Trigger, id: u64, uctx: *mut c_void) {
    let Some(rt) = RUNTIME.get() else { return };
    let Some(leader) = Leader::acquire() else {
        // Another thread is taking a checkpoint right now: a request waits its turn.
        if trigger == Trigger::Request {
            queue_request(id);
        }
        return;
    };
    extern "C" fn on_leader_stack(arg: u64) {
        // SAFETY: `arg` is the LeadArgs below, alive until call_on_stack returns.
        let a = unsafe { &*(arg as *const LeadArgs) };
        if let Some(leader) = a.leader.take() {
            checkpoint(leader, a.trigger, a.id, a.uctx);
        }
    }
    let args = LeadArgs {
        leader: core::cell::Cell::new(Some(leader)),
        trigger,
        id,
        uctx,
    };
    // SAFETY: this thread is the Leader, so no other thread is on the leader stack;
    // a panic cannot unwind out of on_leader_stack (extern "C": it aborts).
    unsafe {
        fork::call_on_stack(
            &args as *const LeadArgs as u64,
            on_leader_stack,
            rt.leader_stack.1 as u64,
        )
    };
}

/// Reaps writer `pid` if it has exited, recording its status for the API. A writer that died
/// from a signal could not write its report: write one for it.
pub fn reap_writer(pid: i32, nohang: bool) -> Option<i32> {
    if pid <= 0 || WRITER_PID.load(Ordering::SeqCst) != pid {
        return None;
    }
    loop {
        match sys::wait_clone(pid, nohang) {
            Ok((p, status)) if p == pid => {
                LAST_WRITER.store((pid as u64) << 32 | status as u32 as u64, Ordering::SeqCst);
                WRITER_PID.store(0, Ordering::SeqCst);
                resend_queued();
                if libc::WIFSIGNALED(status) {
                    let mut msg = Line::new();
                    msg.str("the image writer (pid ")
                        .i64(pid as i64)
                        .str(") was killed by signal ");
                    msg.i64(libc::WTERMSIG(status) as i64)
                        .str("; no image was written");
                    // SAFETY: the path was set before the fork and is only rewritten by the
                    // next checkpoint, which cannot start while WRITER_PID was set.
                    let cap = unsafe { &mut *CAPTURE.get() };
                    report::error_report(cap.report_path.as_bytes(), msg.as_bytes());
                    report::log(LogLevel::Info, msg.as_bytes());
                }
                return Some(status);
            }
            Ok(_) => return None,
            Err(libc::EINTR) => continue,
            // Someone else (the API's blocking wait) reaped it.
            Err(_) => return None,
        }
    }
}

pub(crate) fn fail(report_path: &[u8], trigger: Trigger, msg: &[u8]) {
    report::error_report(report_path, msg);
    report::log(LogLevel::Info, msg);
    if trigger == Trigger::Api {
        API_FAILED.store(true, Ordering::SeqCst);
    }
}

/// Ends the checkpoint path. Requests queued meanwhile go out when the writer is reaped;
/// with no writer running (this checkpoint failed before forking), now.
pub(crate) fn finish_checkpoint(leader: Leader) {
    leader.release();
    if WRITER_PID.load(Ordering::SeqCst) == 0 {
        resend_queued();
    }
}

/// The leader's part ([`lead`]); releases the leadership.
pub(crate) fn checkpoint(mut leader: Leader, trigger: Trigger, id: u64, uctx: *mut c_void) {
    let t0 = sys::monotonic_ns();
    let Some(rt) = RUNTIME.get() else {
        finish_checkpoint(leader);
        return;
    };
    let pid = sys::getpid();
    let me = sys::gettid();
    let mut report_path = FixBuf::<4096>::new();
    report::ensure_runtime_dir(pid);
    report::runtime_file(&mut report_path, pid, "report", id);

    if trigger == Trigger::Request && !request_pending(pid, id) {
        // `forkpoint checkpoint` gave up (timeout) and withdrew the request: nobody waits.
        let mut l = Line::new();
        l.str("ignoring withdrawn checkpoint request ").u64(id);
        report::log(LogLevel::Info, l.as_bytes());
        finish_checkpoint(leader);
        return;
    }
    // The tree's root on its interval: the tree is checkpointed (by the coordinator).
    if trigger == Trigger::Interval && crate::state::is_tree_root() && sys::has_children() {
        if let Err(msg) = crate::coordinator::start_for_interval() {
            fail(report_path.as_bytes(), trigger, msg.as_bytes());
        }
        finish_checkpoint(leader);
        return;
    }
    let busy = WRITER_PID.load(Ordering::SeqCst);
    if busy != 0 && reap_writer(busy, true).is_none() {
        // A `forkpoint checkpoint` request waits its turn: it is taken when this writer is
        // done (never two writers at once). Other triggers are refused.
        if trigger == Trigger::Request && queue_request(id) {
            let mut l = Line::new();
            l.str("request ")
                .u64(id)
                .str(" queued behind the checkpoint being written");
            report::log(LogLevel::Debug, l.as_bytes());
            finish_checkpoint(leader);
            return;
        }
        let mut msg = Line::new();
        msg.str("a checkpoint is already being written (writer pid ")
            .i64(busy as i64)
            .str(")");
        fail(report_path.as_bytes(), trigger, msg.as_bytes());
        finish_checkpoint(leader);
        return;
    }

    // Restored lazily: the pages must all be in before the writer looks for them.
    if let Err(msg) = crate::capture::wait_for_lazy_fill(leader.state().0) {
        fail(report_path.as_bytes(), trigger, msg.as_bytes());
        finish_checkpoint(leader);
        return;
    }

    // A member of a tree checkpoint: `forkpoint checkpoint` left a barrier for it.
    let barrier = match trigger {
        Trigger::Request => Barrier::open(pid, id),
        _ => None,
    };
    let t_quiesce = sys::monotonic_ns();
    let n_threads = match stop_other_threads(&mut leader, rt, pid, me) {
        Ok(n) => n,
        Err(msg) => {
            release_threads();
            fail(report_path.as_bytes(), trigger, msg.as_bytes());
            finish_checkpoint(leader);
            return;
        }
    };
    if let Some(b) = &barrier {
        if let Err(msg) = b.arrive(pid) {
            release_threads();
            fail(report_path.as_bytes(), trigger, msg.as_bytes());
            finish_checkpoint(leader);
            return;
        }
    }
    let t_capture = sys::monotonic_ns();

    // Slot 0 is the leader's; the others are only read from here on.
    let (cap, slots) = leader.state();
    // A request from the coordinator this process started records what started it.
    cap.trigger = match (trigger, crate::coordinator::started_by_us()) {
        (Trigger::Request, Some(started)) => started,
        _ => trigger,
    };
    cap.request_id = id;
    cap.pid = pid;
    cap.ppid = sys::getppid();
    cap.n_threads = n_threads;
    cap.seq = SEQ.load(Ordering::SeqCst) + 1;
    cap.generation = GENERATION.load(Ordering::SeqCst);
    cap.t_start_ns = t0;
    cap.time_unix_ns = sys::clock_ns(libc::CLOCK_REALTIME);
    cap.report_path.clear();
    cap.report_path.push(report_path.as_bytes());
    cap.barrier_page = barrier.as_ref().map_or(0, Barrier::addr);
    slots[0].tid = me;
    capture_thread(&mut slots[0], rt, uctx);
    cap.shared_pending = slots[..n_threads].iter().fold(!0u64, |a, t| a & t.pending);
    capture_fd_offsets(cap);
    capture_timers(cap);

    if let Err(msg) = lift_fork_advice(cap) {
        restore_fork_advice(cap);
        release_threads();
        close_pipe_copies(cap);
        fail(report_path.as_bytes(), trigger, msg.as_bytes());
        finish_checkpoint(leader);
        return;
    }
    copy_shared_memory(cap);
    let incremental = rt.config.incremental
        || (trigger == Trigger::Request && crate::trigger::request_wants_incremental(pid, id));
    // Last before the fork: what was written since the last checkpoint.
    crate::track::before_fork(rt, incremental);
    let t_fork = sys::monotonic_ns();
    // SAFETY: slots[0].regs lives in a static; the child stack is ours alone (mapped at init,
    // used only by writer children, each in its own address space).
    let forked = unsafe {
        fork_with_resume_point(
            &mut slots[0].regs,
            rt.config.signal,
            rt.child_stack.1 as u64,
            writer::writer_main,
        )
    };
    match forked {
        Forked::Parent(child) => {
            crate::track::after_fork_parent(cap.seq);
            restore_fork_advice(cap);
            drop_shared_copies(cap);
            if let Some(b) = &barrier {
                b.forked();
            }
            release_threads();
            close_pipe_copies(cap);
            WRITER_PID.store(child, Ordering::SeqCst);
            SEQ.store(cap.seq, Ordering::SeqCst);
            if report::log_enabled(LogLevel::Debug) {
                let now = sys::monotonic_ns();
                let mut l = Line::new();
                l.str("checkpoint ")
                    .u64(cap.seq)
                    .str(": ")
                    .u64(n_threads as u64)
                    .str(" threads, pause ");
                l.u64((now - t0) / 1000)
                    .str(" us (quiesce ")
                    .u64((t_capture - t_quiesce) / 1000);
                l.str(" us, capture ")
                    .u64((t_fork - t_capture) / 1000)
                    .str(" us, fork ");
                l.u64((now - t_fork) / 1000)
                    .str(" us), writer ")
                    .i64(child as i64);
                report::log(LogLevel::Debug, l.as_bytes());
            }
        }
        Forked::Restored => {
            // The barrier page is not in the image: nothing to unmap here.
            core::mem::forget(barrier);
            cap.barrier_page = 0;
            raise_pending(slots[0].pending & !cap.shared_pending, false);
            raise_pending(cap.shared_pending, true);
            after_restore(cap, trigger);
            release_threads();
        }
        Forked::Failed(errno) => {
            crate::track::fork_failed();
            restore_fork_advice(cap);
            drop_shared_copies(cap);
            release_threads();
            close_pipe_copies(cap);
            let mut msg = Line::new();
            msg.str("cannot fork the image writer: errno ")
                .i64(errno as i64);
            fail(report_path.as_bytes(), trigger, msg.as_bytes());
        }
    }
    finish_checkpoint(leader);
}
