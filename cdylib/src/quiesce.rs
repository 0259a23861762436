//! Stopping every other thread at a point the restore can resume: the leader signals each
//! (rescanning until no new thread appears), each saves its own state into its slot and
//! waits for the release.
//!
//! Runs in signal handlers (the leader's, and every other thread's while it is stopped).
//! Allowed: the raw syscalls of `sys`, reading `RUNTIME` (set before the handler was
//! installed), atomics, the fixed buffers of `state`. Not allowed: allocation, stdio, locks,
//! any libc call that may take a lock or touch errno-dependent state.

use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::capture::capture_thread;
use crate::fixbuf::FixBuf;
use crate::fork::save_resume_point;
use crate::report::Line;
use crate::restored::raise_pending;
use crate::state::{
    Leader, Runtime, ThreadCapture, CAPTURE, MAX_THREADS, QUIESCE, RUNTIME, THREADS,
};
use crate::{procfs, sys};

/// Slots in THREADS the leader has handed out for the current quiesce.
pub(crate) static SLOTS_USED: AtomicUsize = AtomicUsize::new(0);

/// Per slot: the thread saved its state and waits.
pub(crate) static ARRIVED: [AtomicBool; MAX_THREADS] =
    [const { AtomicBool::new(false) }; MAX_THREADS];

/// A non-leader thread: save what only it can read, say so, and wait for the release.
/// In a restored process the thread resumes here and waits for the restored leader.
pub(crate) fn stop_this_thread(tid: i32, uctx: *mut c_void) {
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

pub(crate) fn release_threads() {
    QUIESCE
        .release
        .store(QUIESCE.epoch.load(Ordering::SeqCst), Ordering::SeqCst);
    sys::futex_wake_all(&QUIESCE.release);
    QUIESCE.active.store(false, Ordering::SeqCst);
}

/// Sends the stop signal to every other thread (rescanning until no new thread appears) and
/// waits until each has saved its state. Returns the number of threads, leader included.
// The error is a fixed buffer on purpose: nothing here may allocate.
#[allow(clippy::result_large_err)]
pub(crate) fn stop_other_threads(
    leader: &mut Leader,
    rt: &Runtime,
    pid: i32,
    me: i32,
) -> Result<usize, Line> {
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

pub(crate) fn task_exists(tid: i32) -> bool {
    let mut p = FixBuf::<64>::new();
    p.str("/proc/self/task/").i64(tid as i64);
    sys::stat(p.as_cstr()).is_ok()
}

/// Names a thread that did not stop: its tid, name, and what it is blocked in.
pub(crate) fn stuck_thread_message(tid: i32, rt: &Runtime) -> Line {
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

/// Calls `f` with each numeric entry of the open directory `dir`.
pub(crate) fn for_each_dirent_number(dir: i32, mut f: impl FnMut(i32)) {
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

pub(crate) fn for_each_task(f: impl FnMut(i32)) {
    if let Ok(dir) = sys::open(
        b"/proc/self/task\0",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    ) {
        for_each_dirent_number(dir, f);
        sys::close(dir);
    }
}

pub(crate) fn parse_number(name: &[u8]) -> Option<i32> {
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
