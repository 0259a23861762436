//! Trigger, capture and fork: everything that runs in the application's process when a
//! checkpoint is asked for. This is the application's pause.
//!
//! Runs in a signal handler. Allowed: the raw syscalls of `sys`, reading `RUNTIME` (set
//! before the handler was installed), atomics, the fixed buffers of `state`.
//! Not allowed: allocation, stdio, locks, any libc call that may take a lock or touch
//! errno-dependent state.

use core::ffi::c_void;
use core::sync::atomic::Ordering;

use crate::config::LogLevel;
use crate::fixbuf::FixBuf;
use crate::fork::{fork_with_resume_point, Forked};
use crate::report::{self, Line};
use crate::state::{
    Trigger, API_FAILED, API_PENDING, API_RESTORED, CAPTURE, CHECKPOINT_BUSY, GENERATION,
    LAST_WRITER, MAX_FDS, RESTORE_INFO, RUNTIME, SEQ, TIMER_ID, WRITER_PID,
};
use crate::{sys, writer};

const SI_QUEUE: i32 = -1;
const SI_TIMER: i32 = -2;
const SI_TKILL: i32 = -6;
const CLD_EXITED: i32 = 1;
const CLD_DUMPED: i32 = 3;

/// The handler of the checkpoint signal. Also receives our writers' exit notifications (their
/// exit signal is this signal, so the application's SIGCHLD and `wait` never see them).
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
    checkpoint(trigger, id, uctx);
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
            Err(_) => {
                // Someone else (the API's blocking wait) reaped it.
                return None;
            }
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

fn checkpoint(trigger: Trigger, id: u64, uctx: *mut c_void) {
    let t0 = sys::monotonic_ns();
    let Some(rt) = RUNTIME.get() else { return };
    if CHECKPOINT_BUSY
        .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return;
    }
    let pid = sys::getpid();
    let mut report_path = FixBuf::<4096>::new();
    report::ensure_runtime_dir(pid);
    report::runtime_file(&mut report_path, pid, "report", id);

    let busy = WRITER_PID.load(Ordering::SeqCst);
    if busy != 0 && reap_writer(busy, true).is_none() {
        let mut msg = Line::new();
        msg.str("a checkpoint is already being written (writer pid ")
            .i64(busy as i64)
            .str(")");
        fail(report_path.as_bytes(), trigger, msg.as_bytes());
        CHECKPOINT_BUSY.store(false, Ordering::SeqCst);
        return;
    }
    let threads = count_threads();
    if threads != 1 {
        let mut msg = Line::new();
        msg.str("the process has ").u64(threads as u64);
        msg.str(" threads; this forkpoint version checkpoints single-threaded programs only");
        fail(report_path.as_bytes(), trigger, msg.as_bytes());
        CHECKPOINT_BUSY.store(false, Ordering::SeqCst);
        return;
    }

    // SAFETY: CHECKPOINT_BUSY is held: nobody else touches CAPTURE until we release it.
    let cap = unsafe { &mut *CAPTURE.get() };
    cap.trigger = trigger;
    cap.request_id = id;
    cap.pid = pid;
    cap.tid = sys::gettid();
    cap.seq = SEQ.load(Ordering::SeqCst) + 1;
    cap.generation = GENERATION.load(Ordering::SeqCst);
    cap.t_start_ns = t0;
    cap.time_unix_ns = sys::clock_ns(libc::CLOCK_REALTIME);
    cap.report_path.clear();
    cap.report_path.push(report_path.as_bytes());
    choose_output_path(cap, rt, pid, id);
    capture_thread(cap, rt, uctx);
    capture_fd_offsets(cap);

    let (stack_lo, stack_hi) = rt.child_stack;
    let _ = stack_lo;
    // SAFETY: cap.regs lives in a static; the child stack is ours alone (mapped at init, used
    // only by writer children, each in its own address space).
    let forked = unsafe {
        fork_with_resume_point(
            &mut cap.regs,
            rt.config.signal,
            stack_hi as u64,
            writer::writer_main,
        )
    };
    match forked {
        Forked::Parent(child) => {
            WRITER_PID.store(child, Ordering::SeqCst);
            SEQ.store(cap.seq, Ordering::SeqCst);
            if report::log_enabled(LogLevel::Debug) {
                let mut l = Line::new();
                l.str("checkpoint ")
                    .u64(cap.seq)
                    .str(": forked writer ")
                    .i64(child as i64);
                l.str(" after a pause of ")
                    .u64((sys::monotonic_ns() - t0) / 1000)
                    .str(" us");
                report::log(LogLevel::Debug, l.as_bytes());
            }
        }
        Forked::Restored => after_restore(trigger),
        Forked::Failed(errno) => {
            let mut msg = Line::new();
            msg.str("cannot fork the image writer: errno ")
                .i64(errno as i64);
            fail(report_path.as_bytes(), trigger, msg.as_bytes());
        }
    }
    CHECKPOINT_BUSY.store(false, Ordering::SeqCst);
}

/// Runs first in a restored process: the memory is the writer's snapshot, so undo what the
/// writer changed, learn what the loader told us, and re-arm what the kernel did not keep.
fn after_restore(trigger: Trigger) {
    crate::arena::leave_writer_mode();
    WRITER_PID.store(0, Ordering::SeqCst);
    // SAFETY: the loader wrote RESTORE_INFO before the process resumed; nothing else writes it.
    let info = unsafe { core::ptr::read_volatile(RESTORE_INFO.get()) };
    // SAFETY: CHECKPOINT_BUSY is held by this (only) thread.
    let cap = unsafe { &*CAPTURE.get() };
    SEQ.store(cap.seq, Ordering::SeqCst);
    let generation = if info.0[0] == forkpoint_image::restore_info::MAGIC {
        info.0[1]
    } else {
        cap.generation + 1
    };
    GENERATION.store(generation, Ordering::SeqCst);
    if info.0[0] == forkpoint_image::restore_info::MAGIC && info.0[2] != 0 && info.0[3] != 0 {
        // SAFETY: the loader's restore blob region: nothing of the program lives there.
        let _ = unsafe { sys::munmap(info.0[2] as usize, info.0[3] as usize) };
    }
    // SAFETY: as above, only this thread runs here.
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
    l.str(" (generation ").u64(generation).str(")");
    report::log(LogLevel::Info, l.as_bytes());
}

fn choose_output_path(
    cap: &mut crate::state::Capture,
    rt: &crate::state::Runtime,
    pid: i32,
    id: u64,
) {
    cap.out_path.clear();
    if id != 0 {
        // `forkpoint checkpoint --output` leaves the path in request.<id>.
        let mut req = FixBuf::<4096>::new();
        report::runtime_file(&mut req, pid, "request", id);
        let mut path = [0u8; 4096];
        if let Ok(fd) = sys::open(
            req.as_cstr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            0,
        ) {
            let n = sys::read_full(fd, &mut path).unwrap_or(0);
            sys::close(fd);
            let _ = sys::unlink(req.as_cstr());
            let p = trim_newline(&path[..n]);
            if !p.is_empty() {
                cap.out_path.push(p);
                return;
            }
        }
    }
    cap.out_path
        .str(&rt.config.dir)
        .str("/")
        .str(&rt.prog)
        .str(".")
        .i64(pid as i64)
        .str(".")
        .u64(cap.seq)
        .str(".fpk");
}

fn trim_newline(b: &[u8]) -> &[u8] {
    let mut end = b.len();
    while end > 0 && (b[end - 1] == b'\n' || b[end - 1] == 0) {
        end -= 1;
    }
    &b[..end]
}

/// Saves what only this thread can read (the writer child gets none of it from the kernel).
fn capture_thread(cap: &mut crate::state::Capture, rt: &crate::state::Runtime, uctx: *mut c_void) {
    cap.fs_base = sys::arch_get_fs();
    cap.sigmask = sys::sigmask_get();
    let ss = sys::sigaltstack_get();
    cap.altstack = (ss.ss_sp as u64, ss.ss_flags, ss.ss_size as u64);
    let mut tid_addr: u64 = 0;
    let _ = sys::prctl(
        libc::PR_GET_TID_ADDRESS,
        &mut tid_addr as *mut u64 as usize,
        0,
        0,
        0,
    );
    cap.tid_address = tid_addr;
    cap.robust_list = sys::get_robust_list();
    let _ = sys::prctl(libc::PR_GET_NAME, cap.name.as_mut_ptr() as usize, 0, 0, 0);
    cap.rseq = if rt.rseq_size > 0 {
        let len = (rt.rseq_size.max(32) + 31) & !31;
        Some((
            cap.fs_base.wrapping_add(rt.rseq_offset as u64),
            len,
            0x5305_3053,
        ))
    } else {
        None
    };
    cap.xstate_bv = 0;
    cap.xsave_size = 0;
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
                    cap.xsave_size = core::ptr::read_unaligned(fp.add(468) as *const u32);
                    cap.xstate_bv = core::ptr::read_unaligned(fp.add(512) as *const u64);
                }
            }
        }
    }
}

/// File offsets: the open file descriptions are shared with the child, and the parent moves
/// them as soon as it runs on.
fn capture_fd_offsets(cap: &mut crate::state::Capture) {
    cap.n_fds = 0;
    cap.fds_truncated = false;
    let Ok(dir) = sys::open(
        b"/proc/self/fd\0",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    ) else {
        return;
    };
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
            let name = &buf[off + 19..(off + reclen).min(n)];
            if let Some(fd) = parse_fd_name(name) {
                if fd != dir {
                    if cap.n_fds < MAX_FDS {
                        let pos = sys::lseek(fd, 0, libc::SEEK_CUR).unwrap_or(-1);
                        cap.fd_offsets[cap.n_fds] = (fd, pos);
                        cap.n_fds += 1;
                    } else {
                        cap.fds_truncated = true;
                    }
                }
            }
            off += reclen;
        }
    }
    sys::close(dir);
}

fn parse_fd_name(name: &[u8]) -> Option<i32> {
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

fn count_threads() -> usize {
    let Ok(dir) = sys::open(
        b"/proc/self/task\0",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    ) else {
        return 1;
    };
    let mut buf = [0u8; 4096];
    let mut count = 0;
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
            if parse_fd_name(&buf[off + 19..(off + reclen).min(n)]).is_some() {
                count += 1;
            }
            off += reclen;
        }
    }
    sys::close(dir);
    count.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_names() {
        assert_eq!(parse_fd_name(b"12\0\0"), Some(12));
        assert_eq!(parse_fd_name(b".\0"), None);
        assert_eq!(parse_fd_name(b"\0"), None);
        assert_eq!(trim_newline(b"/a/b\n\0"), b"/a/b");
    }
}
