//! Trigger, quiesce, capture and fork: everything that runs in the application's process
//! when a checkpoint is asked for. This is the application's pause.
//!
//! Runs in signal handlers (the leader's, and every other thread's while it is stopped).
//! Allowed: the raw syscalls of `sys`, reading `RUNTIME` (set before the handler was
//! installed), atomics, the fixed buffers of `state`. Not allowed: allocation, stdio, locks,
//! any libc call that may take a lock or touch errno-dependent state.

use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use forkpoint_image::maps;

use crate::config::LogLevel;
use crate::fixbuf::FixBuf;
use crate::fork::{self, fork_with_resume_point, save_resume_point, Forked};
use crate::report::{self, Line};
use crate::state::{
    Capture, Leader, Runtime, ThreadCapture, Trigger, API_FAILED, API_PENDING, API_RESTORED,
    CAPTURE, GENERATION, LAST_WRITER, MAX_FDS, MAX_THREADS, QUIESCE, RESTORE_INFO, RUNTIME, SEQ,
    THREADS, TIMER_ID, WRITER_PID,
};
use crate::{procfs, sys, writer};

const SI_QUEUE: i32 = -1;
const SI_TIMER: i32 = -2;
const SI_TKILL: i32 = -6;
const CLD_EXITED: i32 = 1;
const CLD_DUMPED: i32 = 3;

/// Slots in THREADS the leader has handed out for the current quiesce.
static SLOTS_USED: AtomicUsize = AtomicUsize::new(0);
/// Per slot: the thread saved its state and waits.
static ARRIVED: [AtomicBool; MAX_THREADS] = [const { AtomicBool::new(false) }; MAX_THREADS];

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
        reap_writer(pid, true);
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
struct LeadArgs {
    leader: core::cell::Cell<Option<Leader>>,
    trigger: Trigger,
    id: u64,
    uctx: *mut c_void,
}

/// Becomes the checkpoint's leader, on the leader stack: the handler may run on a signal
/// stack (SA_ONSTACK) of a few KiB. One leader at a time (CHECKPOINT_BUSY), so one stack.
fn lead(trigger: Trigger, id: u64, uctx: *mut c_void) {
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

/// A non-leader thread: save what only it can read, say so, and wait for the release.
/// In a restored process the thread resumes here and waits for the restored leader.
fn stop_this_thread(tid: i32, uctx: *mut c_void) {
    let Some(rt) = RUNTIME.get() else { return };
    let used = SLOTS_USED.load(Ordering::SeqCst);
    // SAFETY: the leader wrote the tids before signalling; each thread writes only its own slot.
    let slots = unsafe { &mut *THREADS.get() };
    let Some(k) = (1..used).find(|&k| slots[k].tid == tid) else {
        return;
    };
    capture_thread(&mut slots[k], rt, uctx);
    // SAFETY: the slot is in a static; our frame stays put until the release (we wait below).
    let restored = unsafe { save_resume_point(&mut slots[k].regs) };
    if restored {
        // SAFETY: written by the leader before the fork; read-only since.
        let shared = unsafe { (*CAPTURE.get()).shared_pending };
        raise_pending(slots[k].pending & !shared, false);
        // Out of the restore blob: the leader may unmap it once every thread is.
        QUIESCE.resumed.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake_all(&QUIESCE.resumed);
    } else {
        ARRIVED[k].store(true, Ordering::SeqCst);
        QUIESCE.arrived.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake_all(&QUIESCE.arrived);
    }
    // Wait for this quiesce's release (an epoch, so a late waker of an earlier checkpoint
    // never mistakes the next one's state for its own).
    let epoch = QUIESCE.epoch.load(Ordering::SeqCst);
    loop {
        let r = QUIESCE.release.load(Ordering::SeqCst);
        if r == epoch {
            break;
        }
        sys::futex_wait(&QUIESCE.release, r, 0);
    }
}

/// Signals that were pending (blocked) at the checkpoint are pending again in the restored
/// thread (their siginfo is not kept: they arrive as sent by the process itself).
fn raise_pending(pending: u64, process_wide: bool) {
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

fn release_threads() {
    QUIESCE
        .release
        .store(QUIESCE.epoch.load(Ordering::SeqCst), Ordering::SeqCst);
    sys::futex_wake_all(&QUIESCE.release);
    QUIESCE.active.store(false, Ordering::SeqCst);
}

/// Reaps writer `pid` if it has exited, recording its status for the API. A writer that died
/// from a signal could not write its report: write one for it.
/// Requests that arrived while a writer was busy (ids, 0 = free slot).
static QUEUED: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];

fn queue_request(id: u64) -> bool {
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

fn fail(report_path: &[u8], trigger: Trigger, msg: &[u8]) {
    report::error_report(report_path, msg);
    report::log(LogLevel::Info, msg);
    if trigger == Trigger::Api {
        API_FAILED.store(true, Ordering::SeqCst);
    }
}

/// Ends the checkpoint path. Requests queued meanwhile go out when the writer is reaped;
/// with no writer running (this checkpoint failed before forking), now.
fn finish_checkpoint(leader: Leader) {
    leader.release();
    if WRITER_PID.load(Ordering::SeqCst) == 0 {
        resend_queued();
    }
}

/// The leader's part ([`lead`]); releases the leadership.
fn checkpoint(mut leader: Leader, trigger: Trigger, id: u64, uctx: *mut c_void) {
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
    let t_capture = sys::monotonic_ns();

    // Slot 0 is the leader's; the others are only read from here on.
    let (cap, slots) = leader.state();
    cap.trigger = trigger;
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
            restore_fork_advice(cap);
            drop_shared_copies(cap);
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
            raise_pending(slots[0].pending & !cap.shared_pending, false);
            raise_pending(cap.shared_pending, true);
            after_restore(cap, trigger);
            release_threads();
        }
        Forked::Failed(errno) => {
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

/// Sends the stop signal to every other thread (rescanning until no new thread appears) and
/// waits until each has saved its state. Returns the number of threads, leader included.
// The error is a fixed buffer on purpose: nothing here may allocate.
#[allow(clippy::result_large_err)]
fn stop_other_threads(leader: &mut Leader, rt: &Runtime, pid: i32, me: i32) -> Result<usize, Line> {
    // The stopped threads only write their own slots.
    let (_, slots) = leader.state();
    QUIESCE.epoch.fetch_add(1, Ordering::SeqCst);
    QUIESCE.arrived.store(0, Ordering::SeqCst);
    QUIESCE.resumed.store(0, Ordering::SeqCst);
    QUIESCE.leader_tid.store(me, Ordering::SeqCst);
    slots[0].tid = me;
    SLOTS_USED.store(1, Ordering::SeqCst);
    QUIESCE.active.store(true, Ordering::SeqCst);
    let mut used = 1usize;
    let mut expected = 0u32;
    loop {
        let mut new = 0;
        let mut overflow = false;
        for_each_task(|tid| {
            if (0..used).any(|k| slots[k].tid == tid) {
                return;
            }
            if used >= MAX_THREADS {
                overflow = true;
                return;
            }
            slots[used] = ThreadCapture::EMPTY;
            slots[used].tid = tid;
            ARRIVED[used].store(false, Ordering::SeqCst);
            SLOTS_USED.store(used + 1, Ordering::SeqCst);
            if sys::tgkill(pid, tid, rt.config.signal).is_ok() {
                expected += 1;
            } else {
                slots[used].tid = 0; // exited meanwhile
            }
            used += 1;
            new += 1;
        });
        if overflow {
            let mut msg = Line::new();
            msg.str("more than ")
                .u64(MAX_THREADS as u64)
                .str(" threads: not supported");
            return Err(msg);
        }
        if new == 0 {
            break;
        }
    }
    let deadline = sys::monotonic_ns() + rt.config.quiesce_timeout_ns;
    loop {
        let arrived = QUIESCE.arrived.load(Ordering::SeqCst);
        if arrived >= expected {
            break;
        }
        if sys::monotonic_ns() > deadline {
            // Threads that exited while we waited are fine; any other is stuck.
            let mut stuck = None;
            for k in 1..used {
                if slots[k].tid != 0 && !ARRIVED[k].load(Ordering::SeqCst) {
                    if task_exists(slots[k].tid) {
                        stuck.get_or_insert(slots[k].tid);
                    } else {
                        slots[k].tid = 0;
                        expected -= 1;
                    }
                }
            }
            if let Some(tid) = stuck {
                return Err(stuck_thread_message(tid, rt));
            }
            continue;
        }
        sys::futex_wait(&QUIESCE.arrived, arrived, 10_000_000);
    }
    // Compact: drop slots of threads that exited before stopping.
    let mut n = 1;
    for k in 1..used {
        if slots[k].tid != 0 && ARRIVED[k].load(Ordering::SeqCst) {
            if k != n {
                // SAFETY: both slots are ours (the thread in slot k waits for the release and
                // never touches its slot again until then; a restore resumes from the copy).
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        &slots[k] as *const ThreadCapture,
                        &mut slots[n] as *mut ThreadCapture,
                        1,
                    )
                };
            }
            n += 1;
        }
    }
    Ok(n)
}

fn task_exists(tid: i32) -> bool {
    let mut p = FixBuf::<64>::new();
    p.str("/proc/self/task/").i64(tid as i64);
    sys::stat(p.as_cstr()).is_ok()
}

/// Names a thread that did not stop: its tid, name, and what it is blocked in.
fn stuck_thread_message(tid: i32, rt: &Runtime) -> Line {
    let mut msg = Line::new();
    msg.str("thread ").i64(tid as i64);
    let mut buf = [0u8; 256];
    let mut p = FixBuf::<64>::new();
    p.str("/proc/self/task/").i64(tid as i64).str("/comm");
    if let Ok(fd) = sys::open(p.as_cstr(), libc::O_RDONLY | libc::O_CLOEXEC, 0) {
        let n = sys::read_full(fd, &mut buf).unwrap_or(0);
        sys::close(fd);
        msg.str(" (").push(procfs::trim_newline(&buf[..n])).str(")");
    }
    msg.str(" did not stop within ")
        .u64(rt.config.quiesce_timeout_ns / 1_000_000)
        .str(" ms");
    p.clear();
    p.str("/proc/self/task/").i64(tid as i64).str("/wchan");
    if let Ok(fd) = sys::open(p.as_cstr(), libc::O_RDONLY | libc::O_CLOEXEC, 0) {
        let n = sys::read_full(fd, &mut buf).unwrap_or(0);
        sys::close(fd);
        if n > 0 && buf[0] != b'0' {
            msg.str("; blocked in ")
                .push(procfs::trim_newline(&buf[..n]));
        }
    }
    p.clear();
    p.str("/proc/self/task/").i64(tid as i64).str("/syscall");
    if let Ok(fd) = sys::open(p.as_cstr(), libc::O_RDONLY | libc::O_CLOEXEC, 0) {
        let n = sys::read_full(fd, &mut buf).unwrap_or(0);
        sys::close(fd);
        let first = buf[..n].split(|&c| c == b' ').next().unwrap_or(b"");
        if !first.is_empty() {
            msg.str(", syscall ").push(procfs::trim_newline(first));
        }
    }
    msg.str(" (does it block signal ")
        .i64(rt.config.signal as i64)
        .str("?); the checkpoint was abandoned and the program runs on");
    msg
}

/// Runs first in a restored process: the memory is the writer's snapshot, so undo what the
/// writer changed, learn what the loader told us, and re-arm what the kernel did not keep.
fn after_restore(cap: &mut Capture, trigger: Trigger) {
    crate::arena::leave_writer_mode();
    // The pipe and memory copies were the writer's: those numbers and addresses may be the
    // program's now.
    cap.n_pipe_copies = 0;
    cap.n_shared_copies = 0;
    WRITER_PID.store(0, Ordering::SeqCst);
    // SAFETY: the loader wrote RESTORE_INFO before the process resumed; nothing else writes it.
    let info = unsafe { core::ptr::read_volatile(RESTORE_INFO.get()) };
    SEQ.store(cap.seq, Ordering::SeqCst);
    let from_loader = info.0[0] == forkpoint_image::restore_info::MAGIC;
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
    if let Some(rt) = RUNTIME.get() {
        if let Some(ns) = rt.config.interval_ns {
            if let Ok(id) = sys::timer_create_signal(libc::CLOCK_MONOTONIC, rt.config.signal) {
                TIMER_ID.store(id, Ordering::SeqCst);
                let _ = sys::timer_settime_interval(id, ns);
            }
        }
    }
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

/// A request is honoured only if its file is still there and is ours: another user cannot
/// choose where our memory is written.
fn request_pending(pid: i32, id: u64) -> bool {
    let mut req = FixBuf::<4096>::new();
    report::runtime_file(&mut req, pid, "request", id);
    sys::stat(req.as_cstr()).is_ok_and(|st| st.st_uid == sys::getuid())
}

/// Saves what only this thread can read (the writer child gets none of it from the kernel).
fn capture_thread(t: &mut ThreadCapture, rt: &Runtime, uctx: *mut c_void) {
    t.fs_base = sys::arch_get_fs();
    t.sigmask = sys::sigmask_get();
    let ss = sys::sigaltstack_get();
    t.altstack = (ss.ss_sp as u64, ss.ss_flags, ss.ss_size as u64);
    let mut tid_addr: u64 = 0;
    let _ = sys::prctl(
        libc::PR_GET_TID_ADDRESS,
        &mut tid_addr as *mut u64 as usize,
        0,
        0,
        0,
    );
    t.tid_address = tid_addr;
    t.robust_list = sys::get_robust_list();
    sys::sched_getaffinity(&mut t.affinity);
    t.sched = sys::sched_get();
    t.pending = sys::sigpending();
    let _ = sys::prctl(libc::PR_GET_NAME, t.name.as_mut_ptr() as usize, 0, 0, 0);
    t.rseq = if rt.rseq_size > 0 {
        let len = (rt.rseq_size.max(32) + 31) & !31;
        Some((
            t.fs_base.wrapping_add(rt.rseq_offset as u64),
            len,
            0x5305_3053,
        ))
    } else {
        None
    };
    t.xstate_bv = 0;
    t.xsave_size = 0;
    if !uctx.is_null() {
        // SAFETY: the kernel passes a valid ucontext to an SA_SIGINFO handler; fpregs points
        // at the frame's fxsave/xsave area or is NULL.
        let fp = unsafe { (*(uctx as *mut libc::ucontext_t)).uc_mcontext.fpregs } as *const u8;
        if !fp.is_null() {
            // SAFETY: the fxsave area is 512 bytes; its software-reserved bytes at 464 hold
            // the xsave magic, and when it is present the xsave header follows at 512.
            unsafe {
                let magic1 = core::ptr::read_unaligned(fp.add(464) as *const u32);
                if magic1 == 0x4650_5853 {
                    t.xsave_size = core::ptr::read_unaligned(fp.add(468) as *const u32);
                    t.xstate_bv = core::ptr::read_unaligned(fp.add(512) as *const u64);
                }
            }
        }
    }
}

/// File offsets: the open file descriptions are shared with the child, and the parent moves
/// them as soon as it runs on.
fn capture_fd_offsets(cap: &mut Capture) {
    cap.n_fds = 0;
    cap.fds_truncated = false;
    let Ok(dir) = sys::open(
        b"/proc/self/fd\0",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    ) else {
        return;
    };
    for_each_dirent_number(dir, |fd| {
        if fd == dir {
            return;
        }
        if cap.n_fds < MAX_FDS {
            let pos = sys::lseek(fd, 0, libc::SEEK_CUR).unwrap_or(-1);
            cap.fd_offsets[cap.n_fds] = (fd, pos);
            cap.n_fds += 1;
        } else {
            cap.fds_truncated = true;
        }
    });
    sys::close(dir);
    copy_pipes(cap);
}

/// Pipe contents: the parent keeps reading the pipes after the fork, so their buffered bytes
/// are copied now, with tee(2), which leaves them in place. The writer reads the copies.
fn copy_pipes(cap: &mut Capture) {
    cap.n_pipe_copies = 0;
    for k in 0..cap.n_fds {
        let fd = cap.fd_offsets[k].0;
        let Ok(st) = sys::fstat(fd) else { continue };
        if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
            continue;
        }
        let readable = sys::fcntl(fd, libc::F_GETFL, 0)
            .map(|f| f as i32 & libc::O_ACCMODE != libc::O_WRONLY)
            .unwrap_or(false);
        let seen = cap.pipe_copies[..cap.n_pipe_copies]
            .iter()
            .any(|&(ino, _)| ino == st.st_ino);
        if !readable || seen || cap.n_pipe_copies >= cap.pipe_copies.len() {
            continue;
        }
        let size = sys::fcntl(fd, libc::F_GETPIPE_SZ, 0).unwrap_or(65536);
        let Ok((r, w)) = sys::pipe2(libc::O_CLOEXEC | libc::O_NONBLOCK) else {
            continue;
        };
        let _ = sys::fcntl(w, libc::F_SETPIPE_SZ, size);
        let copied = sys::tee(fd, w, size).unwrap_or(0);
        sys::close(w);
        if copied == 0 {
            sys::close(r);
            continue;
        }
        cap.pipe_copies[cap.n_pipe_copies] = (st.st_ino, r);
        cap.n_pipe_copies += 1;
    }
}

/// Timers are not inherited by fork: read them now. Our own interval timer is not saved
/// (a restored library arms a new one).
fn capture_timers(cap: &mut Capture) {
    for (k, which) in [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF]
        .into_iter()
        .enumerate()
    {
        cap.itimers[k] = sys::getitimer(which);
    }
    let mut pdeathsig = 0i32;
    let _ = sys::prctl(
        libc::PR_GET_PDEATHSIG,
        &mut pdeathsig as *mut i32 as usize,
        0,
        0,
        0,
    );
    cap.pdeathsig = pdeathsig;
    cap.dumpable = sys::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0).unwrap_or(1) as i32;
    // The raw getpriority returns 20 - nice (the writer may change its own nice later).
    // SAFETY: no memory effects.
    let prio = unsafe {
        sys::syscall6(
            libc::SYS_getpriority,
            libc::PRIO_PROCESS as usize,
            0,
            0,
            0,
            0,
            0,
        )
    };
    cap.nice = if prio > 0 { 20 - prio as i32 } else { 0 };
    let mut sub = 0i32;
    let _ = sys::prctl(
        libc::PR_GET_CHILD_SUBREAPER,
        &mut sub as *mut i32 as usize,
        0,
        0,
        0,
    );
    cap.child_subreaper = sub != 0;
    cap.timers_text.clear();
    cap.n_posix_timers = 0;
    let Ok(fd) = sys::open(b"/proc/self/timers\0", libc::O_RDONLY | libc::O_CLOEXEC, 0) else {
        return;
    };
    let mut buf = [0u8; 2048];
    while let Ok(n) = sys::read(fd, &mut buf) {
        if n == 0 {
            break;
        }
        cap.timers_text.push(&buf[..n]);
    }
    sys::close(fd);
    let ours = TIMER_ID.load(Ordering::SeqCst);
    let text = cap.timers_text.as_bytes();
    let mut i = 0;
    while i + 4 <= text.len() {
        if &text[i..i + 4] == b"ID: " && (i == 0 || text[i - 1] == b'\n') {
            let mut j = i + 4;
            let mut id: i32 = 0;
            while j < text.len() && text[j].is_ascii_digit() {
                id = id
                    .saturating_mul(10)
                    .saturating_add((text[j] - b'0') as i32);
                j += 1;
            }
            if id != ours && cap.n_posix_timers < cap.posix_timers.len() {
                if let Ok((value, interval)) = sys::timer_gettime(id) {
                    cap.posix_timers[cap.n_posix_timers] = (id, value, interval);
                    cap.n_posix_timers += 1;
                }
            }
            i = j;
        } else {
            i += 1;
        }
    }
}

/// Most bytes of shared memory copied in the pause; beyond it the writer reads the live pages.
const MAX_SHARED_COPY: u64 = 256 << 20;

/// Shared writable anonymous memory (MAP_SHARED|MAP_ANONYMOUS, SysV, memfd, /dev/zero) is
/// not protected by copy-on-write: the application goes on writing it after the fork. Copy
/// it now, while the threads are stopped, so the image is consistent.
fn copy_shared_memory(cap: &mut Capture) {
    cap.n_shared_copies = 0;
    cap.maps_text.clear();
    let Ok(fd) = sys::open(b"/proc/self/maps\0", libc::O_RDONLY | libc::O_CLOEXEC, 0) else {
        return;
    };
    let mut budget = MAX_SHARED_COPY;
    // Asking the kernel for just the shared writable mappings costs one ioctl per such
    // mapping (most programs have none), where the text of /proc/self/maps costs time in
    // proportion to every mapping of the process, all inside the pause.
    let wanted = sys::PROCMAP_QUERY_VMA_READABLE
        | sys::PROCMAP_QUERY_VMA_WRITABLE
        | sys::PROCMAP_QUERY_VMA_SHARED;
    let mut addr = 0u64;
    let mut name = [0u8; 4096];
    let queried = loop {
        match sys::procmap_next(fd, addr, wanted, &mut name) {
            Ok(Some(vma)) => {
                let nm = name.get(..vma.name_len).unwrap_or(&[]);
                let (copies, n) = (&mut cap.shared_copies, &mut cap.n_shared_copies);
                copy_if_shared_anon(copies, n, (vma.start, vma.end), vma.inode, nm, &mut budget);
                if vma.end <= addr {
                    break true;
                }
                addr = vma.end;
            }
            Ok(None) => break true,
            // Only a kernel without the query (the first call fails) falls back to the text;
            // a later failure ends the scan rather than copying some mappings twice.
            Err(_) => break addr != 0,
        }
    };
    if !queried {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sys::read(fd, &mut buf) {
            if n == 0 {
                break;
            }
            cap.maps_text.push(&buf[..n]);
        }
        let (text, copies, n) = (
            cap.maps_text.as_bytes(),
            &mut cap.shared_copies,
            &mut cap.n_shared_copies,
        );
        for line in text.split(|&c| c == b'\n') {
            let Some(l) = maps::parse_line(line) else {
                continue;
            };
            if !(l.shared() && l.write() && l.read()) {
                continue;
            }
            copy_if_shared_anon(copies, n, (l.start, l.end), l.inode, l.name, &mut budget);
        }
    }
    sys::close(fd);
}

/// Copies a shared writable mapping now if it is anonymous memory (shared anonymous, SysV,
/// memfd, /dev/zero), which the writer saves from this copy.
fn copy_if_shared_anon(
    copies: &mut [(u64, u64, u64)],
    n_copies: &mut usize,
    (start, end): (u64, u64),
    inode: u64,
    name: &[u8],
    budget: &mut u64,
) {
    let shared_anon = inode == 0
        || name.starts_with(b"/SYSV")
        || name.starts_with(b"/memfd:")
        || name.starts_with(b"/dev/zero");
    if !shared_anon || end <= start {
        return;
    }
    let len = end - start;
    if len > *budget || *n_copies >= copies.len() {
        return;
    }
    // SAFETY: a fresh private anonymous mapping.
    let Ok(copy) = (unsafe {
        sys::mmap(
            0,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    }) else {
        return;
    };
    // SAFETY: both ranges are mapped readable/writable for len bytes and distinct.
    unsafe { core::ptr::copy_nonoverlapping(start as *const u8, copy as *mut u8, len as usize) };
    *budget -= len;
    copies[*n_copies] = (start, len, copy as u64);
    *n_copies += 1;
}

fn drop_shared_copies(cap: &mut Capture) {
    for &(_, len, copy) in &cap.shared_copies[..cap.n_shared_copies] {
        // SAFETY: our own copy, used only by the writer child (which has its own).
        let _ = unsafe { sys::munmap(copy as usize, len as usize) };
    }
    cap.n_shared_copies = 0;
}

/// Ranges the application keeps out of forks (MADV_DONTFORK) or wiped in them
/// (MADV_WIPEONFORK) are made ordinary for our fork, so the writer sees them. Which ranges
/// they are is read from /proc/self/smaps (exact, whatever the application did since its
/// `madvise`), only once the application has given such advice at all: smaps walks the page
/// tables, which costs pause time in proportion to the resident memory.
// The error is a fixed buffer on purpose: nothing here may allocate.
#[allow(clippy::result_large_err)]
fn lift_fork_advice(cap: &mut Capture) -> Result<(), Line> {
    cap.n_advised = 0;
    if !crate::interpose::FORK_ADVICE_SEEN.load(Ordering::SeqCst) {
        return Ok(());
    }
    let mut msg = Line::new();
    let fd = match sys::open(b"/proc/self/smaps\0", libc::O_RDONLY | libc::O_CLOEXEC, 0) {
        Ok(fd) => fd,
        Err(e) => {
            msg.str("cannot read /proc/self/smaps for the MADV_DONTFORK ranges: errno ")
                .i64(e as i64);
            return Err(msg);
        }
    };
    let mut scanner = procfs::ForkAdviceScanner::new();
    let (ranges, n) = (&mut cap.advised, &mut cap.n_advised);
    let mut overflow = false;
    let mut found = |start: u64, end: u64, wipe: bool| {
        if let Some(last) = ranges[..*n].last_mut() {
            if last.2 == wipe && last.0 + last.1 == start {
                last.1 += end - start;
                return;
            }
        }
        match ranges.get_mut(*n) {
            Some(slot) => {
                *slot = (start, end - start, wipe);
                *n += 1;
            }
            None => overflow = true,
        }
    };
    let mut read_error = 0;
    loop {
        match sys::read(fd, &mut cap.smaps_chunk) {
            Ok(0) => break,
            Ok(k) => scanner.feed(&cap.smaps_chunk[..k], &mut found),
            Err(e) if e == libc::EINTR => continue,
            Err(e) => {
                read_error = e;
                break;
            }
        }
    }
    scanner.finish(&mut found);
    sys::close(fd);
    if read_error != 0 {
        msg.str("cannot read /proc/self/smaps for the MADV_DONTFORK ranges: errno ")
            .i64(read_error as i64);
        return Err(msg);
    }
    if overflow {
        msg.str("the program keeps more than ")
            .u64(crate::state::MAX_ADVISED as u64)
            .str(" separate ranges out of forks (MADV_DONTFORK/MADV_WIPEONFORK)");
        return Err(msg);
    }
    for &(start, len, wipe) in &cap.advised[..cap.n_advised] {
        let lift = if wipe {
            libc::MADV_KEEPONFORK
        } else {
            libc::MADV_DOFORK
        };
        // SAFETY: changes only how the range is inherited by a fork.
        if let Err(e) = unsafe { sys::madvise(start as usize, len as usize, lift) } {
            msg.str("cannot lift MADV_DONTFORK/WIPEONFORK at ")
                .hex(start)
                .str(": errno ")
                .i64(e as i64);
            return Err(msg);
        }
    }
    Ok(())
}

fn restore_fork_advice(cap: &Capture) {
    for &(start, len, wipe) in &cap.advised[..cap.n_advised] {
        let advice = if wipe {
            libc::MADV_WIPEONFORK
        } else {
            libc::MADV_DONTFORK
        };
        // SAFETY: puts back the application's own advice.
        let _ = unsafe { sys::madvise(start as usize, len as usize, advice) };
    }
}

/// The copies are the writer's: the application's process closes its handles after the fork.
fn close_pipe_copies(cap: &mut Capture) {
    for &(_, fd) in &cap.pipe_copies[..cap.n_pipe_copies] {
        sys::close(fd);
    }
    cap.n_pipe_copies = 0;
}

/// Calls `f` with each numeric entry of the open directory `dir`.
fn for_each_dirent_number(dir: i32, mut f: impl FnMut(i32)) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match sys::getdents64(dir, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut off = 0;
        while off + 19 < n {
            let reclen = u16::from_le_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen == 0 {
                break;
            }
            if let Some(v) = parse_number(&buf[off + 19..(off + reclen).min(n)]) {
                f(v);
            }
            off += reclen;
        }
    }
}

fn for_each_task(f: impl FnMut(i32)) {
    if let Ok(dir) = sys::open(
        b"/proc/self/task\0",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    ) {
        for_each_dirent_number(dir, f);
        sys::close(dir);
    }
}

fn parse_number(name: &[u8]) -> Option<i32> {
    let mut v: i32 = 0;
    let mut any = false;
    for &c in name {
        if c == 0 {
            break;
        }
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((c - b'0') as i32)?;
        any = true;
    }
    any.then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirent_names() {
        assert_eq!(parse_number(b"12\0\0"), Some(12));
        assert_eq!(parse_number(b".\0"), None);
        assert_eq!(parse_number(b"\0"), None);
        assert_eq!(procfs::trim_newline(b"/a/b\n\0"), b"/a/b");
    }
}
