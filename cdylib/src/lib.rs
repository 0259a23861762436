//! `libforkpoint.so`: preload it into a program to make it checkpointable.
//!
//! At load (`init`) it reads `FORKPOINT_*` settings and installs the handler of the
//! checkpoint signal; nothing else changes in the host (no thread, no output unless
//! `FORKPOINT_LOG` asks). A checkpoint is requested by that signal (`kill`,
//! `forkpoint checkpoint`), by the `FORKPOINT_INTERVAL` timer, or by calling
//! [`forkpoint_checkpoint`]. The handler captures the thread's state and forks; the child
//! writes the image while the application runs on (see `checkpoint` and `writer`).
//!
//! Unsafe code is denied here and allowed module by module below, each saying why: the
//! raw syscalls, the interposed libc functions, the fork point and the memory the
//! checkpoint shares with its signal handlers. Parsing, planning and policy modules have none.
#![deny(unsafe_code)]

#[allow(unsafe_code)] // the writer's bump allocator over its own mapping
mod arena;
#[allow(unsafe_code)] // the tree checkpoint's barrier: atomics on a page shared between processes
mod barrier;
#[allow(unsafe_code)] // the signal frame's registers, copies of shared memory and pipes
mod capture;
#[allow(unsafe_code)] // the leader's stack switch, the fork, the writer's report path
mod checkpoint;
#[allow(unsafe_code)] // zstd's C API over the arena
mod compress;
pub mod config;
mod coordinator;
mod error;
mod fds;
mod fixbuf;
#[allow(unsafe_code)] // the fork point and stack switch (assembly)
mod fork;
#[allow(unsafe_code)] // the libc functions the program calls, replaced (no_mangle)
mod interpose;
#[allow(unsafe_code)] // calls the program's own SIGTERM handler, reads the signal context
mod preempt;
pub mod procfs;
#[allow(unsafe_code)] // the slots the stopped threads write, their raw signal frames
mod quiesce;
mod report;
#[allow(unsafe_code)] // the restore-info block the loader wrote, the loader's leftover mapping
mod restored;
#[allow(unsafe_code)] // statics shared between the handler, the threads and the writer
mod state;
#[allow(unsafe_code)] // the raw syscalls
mod sys;
#[allow(unsafe_code)] // the pthread functions translated for restored threads (no_mangle)
mod thread_ids;
#[allow(unsafe_code)] // the tracking buffer, shared with the writer as raw memory
mod track;
mod trigger;
#[allow(unsafe_code)] // reads the capture state and the process's own memory in the child
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
    if sys::getauxval(libc::AT_SECURE) != 0 {
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
    let uid = sys::getuid();
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

    // This library's file: the `forkpoint` command is looked for beside it, and a parent
    // that maps it is a member of the same tree.
    let our_library = std::fs::read_to_string("/proc/self/maps")
        .ok()
        .and_then(|maps| {
            coordinator::mapped_file_at(
                &maps,
                try_init as fn() -> Result<(), String> as usize as u64,
            )
        });
    let stable_image = config
        .name
        .as_ref()
        .map(|n| format!("{}/{n}.fpk", config.dir));
    let coordinator = coordinator::CoordinatorExec::find(our_library.as_deref(), stable_image);
    // Only the tree's root runs the interval timer and holds SIGTERM: it checkpoints the
    // whole tree.
    let pid = sys::getpid();
    let wants_root = config.interval_ns.is_some() || config.on_term != config::OnTerm::Off;
    let tree_root_pid =
        if wants_root && !coordinator::is_tree_root(our_library.as_deref(), sys::getppid()) {
            0
        } else {
            pid
        };
    // Every process of the tree holds SIGTERM: the root to checkpoint, the others to wait
    // for that (see `preempt`).
    let on_term = config.on_term != config::OnTerm::Off;
    let stack = map_stack(WRITER_STACK_SIZE).ok_or("cannot map the writer stack")?;
    let leader_stack = map_stack(LEADER_STACK_SIZE).ok_or("cannot map the leader stack")?;
    let (rseq_offset, rseq_size) = interpose::glibc_rseq();
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
            coordinator,
        })
        .map_err(|_| "initialized twice".to_string())?;

    // Every signal is blocked while the handler runs, so no application handler interleaves
    // with a checkpoint. SA_ONSTACK: a Go thread runs on a goroutine stack of a few KiB that
    // our frames would overflow; Go requires it of every handler. The leader's work moves to
    // its own stack.
    interpose::install_handler(signal, checkpoint::on_signal)
        .map_err(|_| format!("cannot install the handler of signal {signal}"))?;
    if on_term {
        interpose::hold_sigterm(preempt::on_term)
            .map_err(|_| "cannot install the handler of SIGTERM".to_string())?;
    }
    // An exec wrapper of the program we replaced may have blocked it for the exec window.
    sys::sigmask_set(libc::SIG_UNBLOCK, 1u64 << (signal - 1));
    state::TREE_ROOT_PID.store(tree_root_pid, Ordering::SeqCst);
    if let Some(ns) = interval.filter(|_| tree_root_pid == pid) {
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
    sys::map_anonymous(len).ok()
}

/// Takes a checkpoint now and waits until its image is durable.
///
/// Returns 0 when the image was written (in the running process), 1 when the process has
/// just been restarted from this checkpoint, and -1 when the checkpoint failed (the reason
/// is in the log with `FORKPOINT_LOG=info`, and in the report file); the process is
/// unaffected in every case.
#[allow(unsafe_code)] // the exported C API (no_mangle)
#[no_mangle]
pub extern "C" fn forkpoint_checkpoint() -> i32 {
    let Some(rt) = RUNTIME.get() else { return -1 };
    // With children, the checkpoint is the tree's (a forked child has its parent's
    // RUNTIME but is not the parent: it has children of its own or none).
    if sys::has_children() {
        return coordinator::wait_for_tree_checkpoint(state::Trigger::Api);
    }
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
                trigger::resend_queued();
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
