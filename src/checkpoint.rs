//! `forkpoint checkpoint`: ask a running process for a checkpoint and wait until the image
//! is durable.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::control::{self, Report, TargetEnv};
use crate::parse;
use crate::{fmt_bytes, CliError};

pub struct CheckpointArgs {
    pub pid: i32,
    pub output: Option<PathBuf>,
    pub timeout: Duration,
    pub kill: bool,
    pub tree: bool,
    pub incremental: bool,
}

/// Outcome printed by the caller: the image path goes to stdout.
pub fn checkpoint(args: &CheckpointArgs) -> Result<String, CliError> {
    // `forkpoint restart` of a tree stands for the tree: checkpoint its root (again a tree).
    let restored = crate::tree::restored_root(args.pid);
    let pid = restored.unwrap_or(args.pid);
    if let Some(root) = restored {
        eprintln!(
            "forkpoint: {} is `forkpoint restart` of a process tree: checkpointing the tree \
             under its root, {root}",
            args.pid
        );
    }
    // Inside a restored tree's PID namespace without its own /proc, the library would read
    // other PIDs and TIDs than its syscalls use.
    if crate::tree::in_nested_pid_namespace(pid) && !crate::tree::has_own_proc(pid) {
        return Err(CliError::new(format!(
            "process {pid} is part of a restored process tree whose PID namespace has no /proc \
             of its own (it could not be mounted): it cannot be checkpointed again; restart \
             from the last image instead"
        )));
    }
    if pid <= 0 {
        return Err(CliError::usage(format!("invalid PID {pid}")));
    }
    let output = match &args.output {
        Some(p) if p.as_os_str().is_empty() => {
            return Err(CliError::usage("--output is empty".to_string()))
        }
        Some(p) if p.is_absolute() => p.clone(),
        Some(p) => std::env::current_dir()
            .map_err(|e| CliError::new(format!("cannot get the current directory: {e}")))?
            .join(p),
        None => PathBuf::new(),
    };
    if output.is_dir() {
        return Err(CliError::usage(format!(
            "--output {} is a directory; give the image's file name",
            output.display()
        )));
    }
    if args.tree || restored.is_some() || crate::tree::in_nested_pid_namespace(pid) {
        if args.incremental {
            eprintln!("forkpoint: a process tree is checkpointed whole (--incremental is for one process)");
        }
        let output = if output.as_os_str().is_empty() {
            default_tree_output(pid)?
        } else {
            output
        };
        return crate::tree::checkpoint_tree(&crate::tree::TreeArgs {
            root: pid,
            output,
            timeout: args.timeout,
            kill: args.kill,
        });
    }
    let mut request_contents = output
        .to_str()
        .filter(|p| !p.contains('\n'))
        .ok_or_else(|| CliError::usage("--output must be valid UTF-8, on one line".to_string()))?
        .as_bytes()
        .to_vec();
    if args.incremental {
        request_contents.extend_from_slice(b"\nincremental\n");
    }
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return Err(CliError::new(format!("no process with PID {pid}")));
    }
    let env = TargetEnv::of_pid(pid);
    let signo = match env.get("FORKPOINT_SIGNAL") {
        Some(s) => parse::parse_signal(s)
            .map_err(|e| CliError::new(format!("FORKPOINT_SIGNAL in {}: {e}", env.source)))?,
        None => parse::DEFAULT_SIGNAL,
    };
    check_target(pid, signo)?;

    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let base = control::runtime_base(&env, uid);
    let dir = base.join(pid.to_string());
    control::ensure_private_dir(&base, uid).map_err(CliError::new)?;
    control::ensure_private_dir(&dir, uid).map_err(CliError::new)?;
    control::remove_stale_dirs(&base, Duration::from_secs(600));

    let id = loop {
        let id = random_id()?;
        let taken = ["request", "report"]
            .iter()
            .any(|k| dir.join(format!("{k}.{id}")).exists());
        if !taken {
            break id;
        }
    };
    let request = dir.join(format!("request.{id}"));
    let report = dir.join(format!("report.{id}"));
    control::write_atomically(&dir, &format!("request.{id}"), &request_contents)
        .map_err(CliError::new)?;

    let sent = sigqueue(pid, signo, id);
    if let Err(e) = sent {
        let _ = fs::remove_file(&request);
        let why = match e.raw_os_error() {
            Some(libc::ESRCH) => format!("process {pid} is gone"),
            Some(libc::EPERM) => {
                format!("not permitted to signal process {pid} (it belongs to another user?)")
            }
            Some(libc::EAGAIN) => {
                format!("process {pid} has too many queued signals (RLIMIT_SIGPENDING reached)")
            }
            _ => format!("cannot signal process {pid}: {e}"),
        };
        return Err(CliError::new(why));
    }

    // On a terminal, a large process's write shows one updating line (its resident memory
    // is the estimate of what there is to write).
    let progress_file = dir.join(format!("progress.{id}"));
    let resident = resident_bytes(pid);
    let (stop, stop_rx) = std::sync::mpsc::channel::<()>();
    let progress = forkpoint_restart_loader::progress::wanted(resident).then(|| {
        let file = progress_file.clone();
        std::thread::spawn(move || {
            let done = || -> u64 {
                fs::read_to_string(&file)
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(0)
            };
            forkpoint_restart_loader::progress::show_until("checkpoint", resident, done, stop_rx)
        })
    });
    let parsed = wait_for_report(pid, &request, &report, args.timeout, signo);
    drop(stop);
    if let Some(p) = progress {
        let _ = p.join();
    }
    let _ = fs::remove_file(&progress_file);
    let parsed = parsed?;
    match parsed {
        Report::Error(e) => Err(CliError::new(format!(
            "checkpoint of process {pid} failed: {e}"
        ))),
        Report::Ok {
            path,
            bytes,
            pages,
            pause_us,
            write_ms,
            cow_faults,
            writer_peak,
            parent,
            full_reason,
        } => {
            let mut parts = Vec::new();
            if let Some(b) = bytes {
                parts.push(fmt_bytes(b));
            }
            if let Some(p) = pages {
                parts.push(format!("{p} pages stored"));
            }
            if let Some(us) = pause_us {
                parts.push(format!("application paused {:.3} ms", us as f64 / 1000.0));
            }
            if let Some(ms) = write_ms {
                parts.push(format!("durable after {ms} ms"));
            }
            if let Some(f) = cow_faults {
                parts.push(format!("{f} page faults in the program meanwhile"));
            }
            if let Some(m) = writer_peak {
                parts.push(format!("writer memory {}", fmt_bytes(m)));
            }
            eprintln!(
                "forkpoint: checkpoint of process {pid} written: {}",
                parts.join(", ")
            );
            if let Some(p) = parent {
                eprintln!("forkpoint: incremental image: unchanged pages are those of {p}");
            } else if let Some(why) = full_reason {
                eprintln!("forkpoint: whole image: {why}");
            }
            if args.kill {
                // SAFETY: kill with a valid signal number has no memory-safety preconditions.
                let r = unsafe { libc::kill(pid, libc::SIGKILL) };
                if r == 0 {
                    eprintln!("forkpoint: killed process {pid}");
                } else {
                    let e = io::Error::last_os_error();
                    return Err(CliError::new(format!(
                        "image {path} is durable, but killing process {pid} failed: {e}"
                    )));
                }
            }
            Ok(path)
        }
    }
}

/// Waits for the report of request `request` (its file `report`) of process `pid`, then
/// removes the report. Gives up at `timeout`, or soon after the process died without having
/// picked up the request.
pub fn wait_for_report(
    pid: i32,
    request: &Path,
    report: &Path,
    timeout: Duration,
    signo: i32,
) -> Result<Report, CliError> {
    let started = Instant::now();
    let mut sleep = Duration::from_millis(1);
    let mut died_at: Option<Instant> = None;
    let text = loop {
        match fs::read_to_string(report) {
            Ok(t) => break t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(CliError::new(format!(
                    "cannot read {}: {e}",
                    report.display()
                )))
            }
        }
        if died_at.is_none() && !process_alive(pid) {
            died_at = Some(Instant::now());
        }
        // A program that died after picking up the request (its request file is gone) has
        // a writer that goes on and completes the image: wait for its report as usual. One
        // that died before never will: give up after a moment.
        if let Some(t) = died_at {
            if request.exists() && t.elapsed() > Duration::from_secs(2) {
                let _ = fs::remove_file(request);
                return Err(CliError::new(format!(
                    "process {pid} exited before the checkpoint was reported; no image"
                )));
            }
        }
        if started.elapsed() >= timeout {
            let picked_up = !request.exists();
            let _ = fs::remove_file(request);
            let mut msg = format!(
                "timed out after {} waiting for process {pid} to report the checkpoint",
                fmt_duration(timeout)
            );
            if !picked_up {
                msg.push_str(&format!(
                    "; it did not pick up the request (is it stopped, or blocking {}?)",
                    parse::signal_name(signo)
                ));
                if signal_blocked(pid, signo) == Some(true) {
                    msg.push_str(&format!(
                        "; it currently blocks {}",
                        parse::signal_name(signo)
                    ));
                }
            } else {
                msg.push_str("; the image is still being written, or the writer died");
            }
            return Err(CliError::new(msg));
        }
        std::thread::sleep(sleep);
        sleep = (sleep * 2).min(Duration::from_millis(20));
    };
    let parsed = control::parse_report(&text);
    let _ = fs::remove_file(report);
    parsed.map_err(|e| {
        CliError::new(format!(
            "cannot understand the report of process {pid}: {e}"
        ))
    })
}

/// `VmRSS` of `pid` in bytes (0 if unknown).
fn resident_bytes(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let kb: u64 = status_field(&s, "VmRSS:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some(kb * 1024)
        })
        .unwrap_or(0)
}

/// `DIR/PROG.PID.tree-N.fpk` in the root's image directory, N one more than any there
/// (`DIR/NAME.fpk` for a root run with `--name`).
fn default_tree_output(pid: i32) -> Result<PathBuf, CliError> {
    let env = TargetEnv::of_pid(pid);
    let cwd = fs::read_link(format!("/proc/{pid}/cwd"))
        .map_err(|e| CliError::new(format!("cannot read the working directory of {pid}: {e}")))?;
    let dir = match env.get("FORKPOINT_DIR") {
        Some(d) if !d.is_empty() => cwd.join(d),
        _ => cwd,
    };
    // A job's stable name (`run --name`): the tree's image is that one too.
    if let Some(name) = env.get("FORKPOINT_NAME").filter(|n| !n.is_empty()) {
        return Ok(dir.join(format!("{name}.fpk")));
    }
    let prog = fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "program".into());
    let prefix = format!("{prog}.{pid}.tree-");
    let next = fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_prefix(&prefix)?
                    .strip_suffix(".fpk")?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap_or(0)
        })
        .unwrap_or(0)
        + 1;
    Ok(dir.join(format!("{prefix}{next}.fpk")))
}

/// Refuses targets that would not survive the signal: a process without the library (the
/// default action of a realtime signal is to terminate), or one that does not catch it.
pub fn check_target(pid: i32, signo: i32) -> Result<(), CliError> {
    match fs::read_to_string(format!("/proc/{pid}/maps")) {
        Ok(maps) => {
            let loaded = maps.lines().any(|l| {
                l.split_whitespace()
                    .nth(5)
                    .and_then(|p| Path::new(p).file_name())
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libforkpoint"))
            });
            if !loaded {
                return Err(CliError::new(format!(
                    "process {pid} does not have libforkpoint.so loaded; start it with \
                     `forkpoint run -- CMD` (or LD_PRELOAD=libforkpoint.so)"
                )));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            // A process of ours that made itself non-dumpable hides its maps; its status
            // (world-readable) still says whose it is.
            // SAFETY: getuid has no preconditions.
            let me = unsafe { libc::getuid() };
            let ours = fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    status_field(&s, "Uid:")
                        .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok())
                })
                == Some(me);
            if !ours {
                return Err(CliError::new(format!(
                    "cannot inspect process {pid}: permission denied (it belongs to another user?)"
                )));
            }
        }
        Err(_) => return Err(CliError::new(format!("no process with PID {pid}"))),
    }
    if let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) {
        if let Some(state) = status_field(&status, "State:") {
            if state.starts_with('Z') || state.starts_with('X') {
                return Err(CliError::new(format!("process {pid} has exited (zombie)")));
            }
        }
        if let Some(cgt) = status_field(&status, "SigCgt:").and_then(parse_sigset) {
            if cgt & sigbit(signo) == 0 {
                return Err(CliError::new(format!(
                    "process {pid} does not catch {} ({signo}): the library is not set up with \
                     that signal (FORKPOINT_SIGNAL differs, or its init failed; FORKPOINT_LOG=info \
                     shows why)",
                    parse::signal_name(signo)
                )));
            }
        }
    }
    Ok(())
}

fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
}

fn parse_sigset(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim(), 16).ok()
}

fn sigbit(signo: i32) -> u64 {
    1u64 << (signo - 1)
}

pub fn signal_blocked(pid: i32, signo: i32) -> Option<bool> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let blk = parse_sigset(status_field(&status, "SigBlk:")?)?;
    Some(blk & sigbit(signo) != 0)
}

/// True while `pid` exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid, 0) };
    if r != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name, which may contain spaces.
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

pub fn sigqueue(pid: i32, signo: i32, id: i32) -> io::Result<()> {
    // The library reads `si_value.sival_int`; on little-endian x86-64 that is the low half
    // of the pointer member the libc crate exposes.
    let value = libc::sigval {
        sival_ptr: id as usize as *mut libc::c_void,
    };
    // SAFETY: sigqueue takes plain values; no memory is shared with the kernel.
    let r = unsafe { libc::sigqueue(pid, signo, value) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A request id in 1..=i32::MAX.
pub fn random_id() -> Result<i32, CliError> {
    let mut buf = [0u8; 4];
    // SAFETY: buf is a valid, writable 4-byte buffer for the duration of the call.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        return Err(CliError::new(format!(
            "getrandom failed: {}",
            io::Error::last_os_error()
        )));
    }
    let v = (u32::from_ne_bytes(buf) & 0x7fff_ffff) as i32;
    Ok(if v == 0 { 1 } else { v })
}

pub fn fmt_duration(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
