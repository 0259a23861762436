//! Tree checkpoints the program asks for itself: the interval timer of a tree's root, and
//! `forkpoint_checkpoint()` in a process with children.
//!
//! The library does not coordinate a tree in-process (a coordinator thread would itself be
//! stopped by the cut, and would be a thread the application never made). It starts the
//! coordinator there already is, `forkpoint checkpoint --tree PID`, under a helper child
//! (`fp-coordinator`) the application never sees: its exit signal is ours, not SIGCHLD, so
//! `wait(-1)` and SIGCHLD handlers skip it (the command cannot be that child itself: exec
//! makes a child's exit signal SIGCHLD again); the command leaves both out of the tree it
//! lists. Every member,
//! this process too, then takes the checkpoint as for any request. The command is found at
//! init: `$FORKPOINT_CLI` (`forkpoint run` sets it), else `forkpoint` next to this library
//! (or one directory up, cargo's `deps/`), else on `PATH`.
//!
//! [`CoordinatorExec::find`] and [`is_tree_root`] run in `init` (normal context: they
//! allocate and read files). [`start_for_interval`], [`on_exit`] and [`after_restore`] run in the signal
//! handler: raw syscalls of `sys`, atomics, fixed buffers; no allocation, no stdio, no
//! locks. [`wait_for_tree_checkpoint`] runs in the thread that called the API or in the SIGTERM
//! handler, with the same rules.

use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering};
use std::path::{Path, PathBuf};

use crate::config::LogLevel;
use crate::fixbuf::FixBuf;
use crate::report::{self, Line};
use crate::state::{Trigger, RUNTIME};
use crate::sys;

/// The coordinator running now (0: none).
static COORD_PID: AtomicI32 = AtomicI32::new(0);
/// Who started the coordinator: WAITER_NONE (the interval: the handler reaps it), or the
/// API or the SIGTERM handler, which wait for it themselves.
static COORD_WAITER: AtomicU8 = AtomicU8::new(WAITER_NONE);
const WAITER_NONE: u8 = 0;
const WAITER_API: u8 = 1;
const WAITER_TERM: u8 = 2;
/// Set in a process restored from a checkpoint its coordinator took: the API's wait then
/// returns "restarted".
static COORD_RESTORED: AtomicBool = AtomicBool::new(false);

/// How to start the coordinator, prepared at init: the command and the environment it gets
/// (ours without `LD_PRELOAD`: the command is not a member and must not load the library).
pub struct CoordinatorExec {
    /// NUL-terminated path of the `forkpoint` command.
    cli: Vec<u8>,
    /// NUL-terminated `--output` path (a stable image name), if any.
    output: Option<Vec<u8>>,
    /// The environment strings, each NUL-terminated, and the pointer array over them.
    _env: Vec<Vec<u8>>,
    envp: Vec<usize>,
}

impl CoordinatorExec {
    /// The command, if one is found (`our_library`: this library's path). `output`: where
    /// every tree image goes (a stable name), else the command's default names.
    pub fn find(our_library: Option<&Path>, output: Option<String>) -> Option<CoordinatorExec> {
        let get = |k: &str| std::env::var_os(k).map(PathBuf::from);
        let cli = find_cli(
            get("FORKPOINT_CLI"),
            our_library,
            get("PATH"),
            &is_executable,
        )?;
        let mut cli = cli.into_os_string().into_encoded_bytes();
        cli.push(0);
        let env: Vec<Vec<u8>> = std::env::vars_os()
            .filter(|(k, _)| k != "LD_PRELOAD")
            .map(|(k, v)| {
                let mut s = k.into_encoded_bytes();
                s.push(b'=');
                s.extend_from_slice(v.as_encoded_bytes());
                s.push(0);
                s
            })
            .collect();
        let mut envp: Vec<usize> = env.iter().map(|s| s.as_ptr() as usize).collect();
        envp.push(0);
        let output = output.map(|o| {
            let mut v = o.into_bytes();
            v.push(0);
            v
        });
        Some(CoordinatorExec {
            cli,
            output,
            _env: env,
            envp,
        })
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The first executable of: `explicit`, `forkpoint` beside the library or one directory up
/// (cargo's `target/debug/deps/`), `forkpoint` in a `path` directory.
pub fn find_cli(
    explicit: Option<PathBuf>,
    our_library: Option<&Path>,
    path: Option<PathBuf>,
    executable: &dyn Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if let Some(p) = explicit.filter(|p| !p.as_os_str().is_empty()) {
        return executable(&p).then_some(p);
    }
    let mut candidates = Vec::new();
    if let Some(dir) = our_library.and_then(Path::parent) {
        candidates.push(dir.join("forkpoint"));
        if let Some(up) = dir.parent() {
            candidates.push(up.join("forkpoint"));
        }
    }
    if let Some(path) = path {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("forkpoint")));
    }
    candidates
        .into_iter()
        .find(|p| p.is_absolute() && executable(p))
}

/// Whether this process is the root of its tree, the one whose interval timer checkpoints
/// the tree: its parent does not run this library (`our_library` is not in its maps).
pub fn is_tree_root(our_library: Option<&Path>, ppid: i32) -> bool {
    let Some(lib) = our_library else { return true };
    match std::fs::read_to_string(format!("/proc/{ppid}/maps")) {
        Ok(maps) => !maps_hold_path(&maps, lib),
        // Another user's (or gone): not one of ours.
        Err(_) => true,
    }
}

fn maps_hold_path(maps: &str, lib: &Path) -> bool {
    let lib = lib.to_string_lossy();
    maps.lines()
        .any(|l| l.split_whitespace().nth(5) == Some(lib.as_ref()))
}

/// The file of the mapping that holds `addr` in `maps` (our own library's path).
pub fn mapped_file_at(maps: &str, addr: u64) -> Option<PathBuf> {
    maps.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (lo, hi) = f.next()?.split_once('-')?;
        let (lo, hi) = (
            u64::from_str_radix(lo, 16).ok()?,
            u64::from_str_radix(hi, 16).ok()?,
        );
        let path = f.nth(4)?;
        (lo <= addr && addr < hi && path.starts_with('/')).then(|| PathBuf::from(path))
    })
}

/// Starts the coordinator for the tree under this process. `waiter`: who waits for it
/// ([`wait_for_tree_checkpoint`]); WAITER_NONE: the handler reaps it when it ends.
fn start(waiter: u8) -> Result<i32, &'static str> {
    let Some(rt) = RUNTIME.get() else {
        return Err("the library is not initialized");
    };
    let Some(exec) = &rt.coordinator else {
        return Err(
            "a process tree is checkpointed by the forkpoint command, and none was \
                    found (set FORKPOINT_CLI to its path)",
        );
    };
    let running = COORD_PID.load(Ordering::SeqCst);
    if running != 0 && reap(running, true).is_none() {
        return Err("the previous checkpoint of this tree is still being taken");
    }
    let pid = sys::getpid();
    let mut pid_text = FixBuf::<24>::new();
    pid_text.i64(pid as i64).str("\0");
    let mut argv = [
        exec.cli.as_ptr() as usize,
        c"checkpoint".as_ptr() as usize,
        c"--tree".as_ptr() as usize,
        pid_text.as_bytes().as_ptr() as usize,
        0,
        0,
        0,
    ];
    if let Some(o) = &exec.output {
        argv[3] = c"--output".as_ptr() as usize;
        argv[4] = o.as_ptr() as usize;
        argv[5] = pid_text.as_bytes().as_ptr() as usize;
    }
    report::ensure_runtime_dir(pid);
    let mut log_path = FixBuf::<4096>::new();
    report::runtime_file(&mut log_path, pid, "coordinator", 0);
    let output = if report::log_enabled(LogLevel::Info) {
        sys::HelperOutput::Stderr
    } else {
        sys::HelperOutput::File(log_path.as_cstr())
    };
    COORD_WAITER.store(waiter, Ordering::SeqCst);
    match sys::spawn_helper(&exec.cli, &argv, &exec.envp, output, rt.config.signal) {
        Ok(child) => {
            COORD_PID.store(child, Ordering::SeqCst);
            let mut l = Line::new();
            l.str("tree checkpoint: coordinator ")
                .i64(child as i64)
                .str(" started");
            report::log(LogLevel::Debug, l.as_bytes());
            Ok(child)
        }
        Err(_) => {
            COORD_WAITER.store(WAITER_NONE, Ordering::SeqCst);
            Err("cannot start the forkpoint command for the tree checkpoint")
        }
    }
}

/// Reaps coordinator `pid` if it has ended (or is not our child any more); its status.
fn reap(pid: i32, nohang: bool) -> Option<i32> {
    loop {
        match sys::wait_clone(pid, nohang) {
            Ok((p, status)) if p == pid => {
                COORD_PID.store(0, Ordering::SeqCst);
                if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
                    let mut l = Line::new();
                    l.str("tree checkpoint failed (coordinator ")
                        .i64(pid as i64)
                        .str(", status ")
                        .i64(status as i64)
                        .str("; its messages are in the runtime directory's coordinator.0)");
                    report::log(LogLevel::Info, l.as_bytes());
                }
                return Some(status);
            }
            Ok(_) => return None,
            Err(libc::EINTR) => continue,
            Err(_) => {
                COORD_PID.store(0, Ordering::SeqCst);
                return Some(-1);
            }
        }
    }
}

/// A child's exit notification: true if it was the coordinator's (reaped here unless the
/// API waits for it).
pub fn on_exit(pid: i32) -> bool {
    if pid == 0 || pid != COORD_PID.load(Ordering::SeqCst) {
        return false;
    }
    if COORD_WAITER.load(Ordering::SeqCst) == WAITER_NONE {
        reap(pid, true);
    }
    true
}

/// The interval of the tree's root: start a tree checkpoint (the handler reaps it).
pub fn start_for_interval() -> Result<i32, &'static str> {
    start(WAITER_NONE)
}

/// Waits until a tree checkpoint started for the interval has ended (a SIGTERM's must not
/// run beside it).
pub fn wait_running() {
    let pid = COORD_PID.load(Ordering::SeqCst);
    if pid != 0 && COORD_WAITER.load(Ordering::SeqCst) == WAITER_NONE {
        reap(pid, false);
    }
}

/// If a request now comes from a coordinator this process started, what started it (the
/// image records that trigger).
pub fn started_by_us() -> Option<Trigger> {
    if COORD_PID.load(Ordering::SeqCst) == 0 {
        return None;
    }
    Some(match COORD_WAITER.load(Ordering::SeqCst) {
        WAITER_API => Trigger::Api,
        WAITER_TERM => Trigger::Term,
        _ => Trigger::Interval,
    })
}

/// In a restored process: the coordinator of the checkpoint is not there any more.
pub fn after_restore() {
    if COORD_PID.swap(0, Ordering::SeqCst) != 0
        && COORD_WAITER.load(Ordering::SeqCst) != WAITER_NONE
    {
        COORD_RESTORED.store(true, Ordering::SeqCst);
    }
}

/// `forkpoint_checkpoint()` (`Trigger::Api`) or a SIGTERM (`Trigger::Term`) in a process
/// with children: checkpoint the tree under it and wait. 0 written, 1 restarted from it,
/// -1 failed.
pub fn wait_for_tree_checkpoint(trigger: Trigger) -> i32 {
    COORD_RESTORED.store(false, Ordering::SeqCst);
    let waiter = if trigger == Trigger::Term {
        WAITER_TERM
    } else {
        WAITER_API
    };
    let pid = match start(waiter) {
        Ok(p) => p,
        Err(msg) => {
            report::log(LogLevel::Info, msg.as_bytes());
            return -1;
        }
    };
    let result = loop {
        match sys::wait_clone(pid, false) {
            Ok((p, status)) if p == pid => {
                COORD_PID.store(0, Ordering::SeqCst);
                break if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                    0
                } else {
                    report::log(
                        LogLevel::Info,
                        b"tree checkpoint failed (its messages are in the runtime directory's coordinator.0)",
                    );
                    -1
                };
            }
            Err(libc::EINTR) => continue,
            // Not our child: in a process restored from this checkpoint, the coordinator
            // does not exist.
            _ => {
                break if COORD_RESTORED.swap(false, Ordering::SeqCst) {
                    1
                } else {
                    -1
                }
            }
        }
    };
    COORD_WAITER.store(WAITER_NONE, Ordering::SeqCst);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_is_found_in_order() {
        let have = |names: &'static [&'static str]| {
            move |p: &Path| names.iter().any(|n| p == Path::new(n))
        };
        let lib = Path::new("/opt/fp/target/debug/deps/libforkpoint.so");
        let exe = have(&["/opt/fp/target/debug/forkpoint", "/usr/bin/forkpoint"]);
        assert_eq!(
            find_cli(None, Some(lib), Some("/usr/bin".into()), &exe),
            Some(PathBuf::from("/opt/fp/target/debug/forkpoint"))
        );
        assert_eq!(
            find_cli(
                None,
                Some(Path::new("/lib/libforkpoint.so")),
                Some("/bin:/usr/bin".into()),
                &exe
            ),
            Some(PathBuf::from("/usr/bin/forkpoint"))
        );
        // An explicit path is used or nothing: never silently another command.
        assert_eq!(
            find_cli(Some("/x/forkpoint".into()), Some(lib), None, &exe),
            None
        );
        // Relative PATH entries are not trusted.
        let rel = have(&["bin/forkpoint"]);
        assert_eq!(find_cli(None, None, Some("bin".into()), &rel), None);
    }

    #[test]
    fn our_library_is_found_in_maps() {
        let maps = "55d0-55e0 r-xp 00000000 08:01 12 /usr/bin/python3.11\n\
                    7f00-7f10 r-xp 00001000 08:01 99 /opt/lib/libforkpoint.so\n\
                    7f20-7f30 rw-p 00000000 00:00 0 \n";
        assert_eq!(
            mapped_file_at(maps, 0x7f08),
            Some(PathBuf::from("/opt/lib/libforkpoint.so"))
        );
        assert_eq!(mapped_file_at(maps, 0x7f28), None);
        assert!(maps_hold_path(maps, Path::new("/opt/lib/libforkpoint.so")));
        assert!(!maps_hold_path(maps, Path::new("/lib/libforkpoint.so")));
    }
}
