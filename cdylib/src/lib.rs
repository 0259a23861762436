//! `libforkpoint.so`: preload it into a program to make it checkpointable.
//!
//! At load (`init`) it reads `FORKPOINT_*` settings and installs the handler of the
//! checkpoint signal; nothing else changes in the host (no thread, no output unless
//! `FORKPOINT_LOG` asks). A checkpoint is requested by that signal (`kill`,
//! `forkpoint checkpoint`), by the `FORKPOINT_INTERVAL` timer, or by calling
//! [`forkpoint_checkpoint`]. The handler captures the thread's state and forks; the child
//! writes the image while the application runs on (see `checkpoint` and `writer`).

mod arena;
mod checkpoint;
mod compress;
pub mod config;
mod fds;
mod fixbuf;
mod fork;
mod interpose;
pub mod procfs;
mod report;
mod state;
mod sys;
mod thread_ids;
mod writer;

use core::sync::atomic::Ordering;

use config::{Config, LogLevel};
use state::{
    Runtime, API_FAILED, API_PENDING, API_RESTORED, LAST_WRITER, RUNTIME, TIMER_ID, WRITER_PID,
};

#[global_allocator]
static ALLOC: arena::ForkSafeAlloc = arena::ForkSafeAlloc;

/// Stack of the writer child. It exists in the application's address space (so the child
/// can start on it), but is never saved.
const WRITER_STACK_SIZE: usize = 8 << 20;
/// The leader uses ~30 KiB (debug build); only the pages it touches are in memory and images.
const LEADER_STACK_SIZE: usize = 1 << 20;

#[ctor::ctor]
fn init() {
    // Set-uid/set-gid programs: do nothing (glibc ignores preloads there, but be sure).
    // SAFETY: getauxval has no preconditions.
    if unsafe { libc::getauxval(libc::AT_SECURE) } != 0 {
        return;
    }
    if let Err(e) = try_init() {
        eprintln!("forkpoint: not enabled: {e}");
    }
}

fn try_init() -> Result<(), String> {
    thread_ids::init();
    let cwd = std::env::current_dir()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "/".into());
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let config = Config::from_env(&|k| std::env::var(k).ok(), &cwd, uid)?;
    let prog = std::fs::read_link("/proc/self/exe")
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "program".into());
    let prog: String = prog
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();

    let stack = map_stack(WRITER_STACK_SIZE).ok_or("cannot map the writer stack")?;
    let leader_stack = map_stack(LEADER_STACK_SIZE).ok_or("cannot map the leader stack")?;
    let (rseq_offset, rseq_size) = glibc_rseq();
    let signal = config.signal;
    let interval = config.interval_ns;
    let debug = config.log >= LogLevel::Info;
    RUNTIME
        .set(Runtime {
            config,
            prog,
            child_stack: (stack, stack + WRITER_STACK_SIZE),
            leader_stack: (leader_stack, leader_stack + LEADER_STACK_SIZE),
            rseq_offset,
            rseq_size,
        })
        .map_err(|_| "initialized twice".to_string())?;

    // SAFETY: installing a handler with a fully initialized sigaction; every signal is blocked
    // while it runs so no application handler interleaves with a checkpoint. SA_ONSTACK: a
    // Go thread runs on a goroutine stack of a few KiB that our frames would overflow; Go
    // requires it of every handler. The leader's work moves to its own stack.
    unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = checkpoint::on_signal as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
        libc::sigfillset(&mut sa.sa_mask);
        if interpose::real_sigaction(signal, &sa, core::ptr::null_mut()) != 0 {
            return Err(format!("cannot install the handler of signal {signal}"));
        }
    }
    // An exec wrapper of the program we replaced may have blocked it for the exec window.
    sys::sigmask_set(libc::SIG_UNBLOCK, 1u64 << (signal - 1));
    if let Some(ns) = interval {
        let id = sys::timer_create_signal(libc::CLOCK_MONOTONIC, signal)
            .map_err(|e| format!("timer_create: errno {e}"))?;
        sys::timer_settime_interval(id, ns).map_err(|e| format!("timer_settime: errno {e}"))?;
        TIMER_ID.store(id, Ordering::SeqCst);
    }
    if debug {
        eprintln!("forkpoint[{}]: ready (signal {signal})", std::process::id());
    }
    Ok(())
}

/// A private stack of `len` bytes (its start), or None.
fn map_stack(len: usize) -> Option<usize> {
    // SAFETY: a fresh private anonymous mapping at a kernel-chosen address.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p as usize)
}

/// glibc's rseq registration (glibc >= 2.35 exports these); (0, 0) if none.
fn glibc_rseq() -> (i64, u32) {
    // SAFETY: dlsym with RTLD_DEFAULT and NUL-terminated names; the symbols, when present,
    // are a ptrdiff_t and an unsigned int.
    unsafe {
        let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr());
        let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr());
        if off.is_null() || size.is_null() {
            return (0, 0);
        }
        (*(off as *const isize) as i64, *(size as *const u32))
    }
}

/// Takes a checkpoint now and waits until its image is durable.
///
/// Returns 0 when the image was written (in the running process), 1 when the process has
/// just been restarted from this checkpoint, and -1 when the checkpoint failed (the reason
/// is in the log with `FORKPOINT_LOG=info`, and in the report file); the process is
/// unaffected in every case.
#[no_mangle]
pub extern "C" fn forkpoint_checkpoint() -> i32 {
    let Some(rt) = RUNTIME.get() else { return -1 };
    API_RESTORED.store(false, Ordering::SeqCst);
    API_FAILED.store(false, Ordering::SeqCst);
    API_PENDING.store(true, Ordering::SeqCst);
    let sig = rt.config.signal;
    // Make sure our own signal can arrive while we raise it.
    let unblock = 1u64 << (sig - 1);
    let old = sys::sigmask_set(libc::SIG_UNBLOCK, unblock);
    let _ = sys::tgkill(sys::getpid(), sys::gettid(), sig);
    sys::sigmask_set(libc::SIG_SETMASK, old);
    API_PENDING.store(false, Ordering::SeqCst);
    if API_RESTORED.swap(false, Ordering::SeqCst) {
        return 1;
    }
    if API_FAILED.swap(false, Ordering::SeqCst) {
        return -1;
    }
    let pid = WRITER_PID.load(Ordering::SeqCst);
    if pid == 0 {
        // Already reaped by the handler.
        return status_result(LAST_WRITER.load(Ordering::SeqCst));
    }
    loop {
        match sys::wait_clone(pid, false) {
            Ok((p, status)) if p == pid => {
                WRITER_PID.store(0, Ordering::SeqCst);
                checkpoint::resend_queued();
                return if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                    0
                } else {
                    -1
                };
            }
            Err(libc::EINTR) => continue,
            _ => {
                // The handler reaped it when its exit notification arrived.
                let last = LAST_WRITER.load(Ordering::SeqCst);
                if (last >> 32) as i32 == pid {
                    return status_result(last);
                }
                return -1;
            }
        }
    }
}

fn status_result(last: u64) -> i32 {
    let status = last as u32 as i32;
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        0
    } else {
        -1
    }
}
