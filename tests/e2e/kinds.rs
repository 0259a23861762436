//! Descriptors and process state, in the style of CRIU's zdtm suite: one small C program
//! per kind (`tests/programs/zdtm_*.c`) sets the state up, prints `ready`, waits for a `go`
//! file, then checks from inside that the state is exactly as before and prints `PASS`
//! (exit 0) or `FAIL` lines on stderr.
//!
//! Each program runs twice: once uninterrupted (the control: its checks must hold without
//! forkpoint, so they test something real), and once under forkpoint: checkpointed at
//! `ready`, killed with SIGKILL, restarted from the image, released with the `go` file.
//! Restarts of images that should be faithful use `--strict`, which refuses anything
//! approximated: the images are checked to be clean that way. `docs/compatibility.md` maps
//! every kind to its test here.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

const PIPE_C: &str = include_str!("../programs/zdtm_pipe.c");
const PIPE_OUTSIDE_C: &str = include_str!("../programs/zdtm_pipe_outside.c");
const EVENTFD_C: &str = include_str!("../programs/zdtm_eventfd.c");
const TIMERFD_C: &str = include_str!("../programs/zdtm_timerfd.c");
const SIGNALFD_C: &str = include_str!("../programs/zdtm_signalfd.c");
const EPOLL_C: &str = include_str!("../programs/zdtm_epoll.c");
const SOCKETPAIR_C: &str = include_str!("../programs/zdtm_socketpair.c");
const LISTEN_C: &str = include_str!("../programs/zdtm_listen.c");
const TCP_PEER_C: &str = include_str!("../programs/zdtm_tcp_peer.c");
const MEMFD_C: &str = include_str!("../programs/zdtm_memfd.c");
const DELETED_C: &str = include_str!("../programs/zdtm_deleted.c");
const LOCKS_C: &str = include_str!("../programs/zdtm_locks.c");
const TIMERS_C: &str = include_str!("../programs/zdtm_timers.c");
const ATTRS_C: &str = include_str!("../programs/zdtm_attrs.c");
const SHM_C: &str = include_str!("../programs/zdtm_shm.c");
const MADVISE_C: &str = include_str!("../programs/zdtm_madvise.c");
const INOTIFY_C: &str = include_str!("../programs/zdtm_inotify.c");
const PROCFS_C: &str = include_str!("../programs/zdtm_procfs.c");
const MM_C: &str = include_str!("../programs/zdtm_mm.c");
const HELD_LOCKS_C: &str = include_str!("../programs/zdtm_held_locks.c");
const SHARED_FILE_C: &str = include_str!("../programs/zdtm_shared_file.c");
const SIGALTSTACK_C: &str = include_str!("../programs/zdtm_sigaltstack.c");
const NO_MM_MAP_C: &str = include_str!("../programs/no_mm_map.c");
const ECHO_SERVER_C: &str = include_str!("../programs/zdtm_echo_server.c");

/// A zdtm program, compiled into its own test directory.
struct Zdtm {
    t: TestDir,
    exe: PathBuf,
}

impl Zdtm {
    fn new(name: &str, source: &str) -> Zdtm {
        let t = TestDir::new(name);
        let exe = compile_c(&t.path, name, source);
        Zdtm { t, exe }
    }

    /// A fresh directory for one run (its `go` file, output, and any files it makes).
    fn dir(&self, name: &str) -> PathBuf {
        self.t.sub(name)
    }
}

/// What a run gets besides `PROGRAM GO`.
#[derive(Default)]
struct Spec {
    /// Arguments after the `go` file.
    args: Vec<OsString>,
    env: Vec<(&'static str, OsString)>,
    /// Standard input (default `/dev/null`).
    stdin: Option<OwnedFd>,
    /// More descriptors: ours, and the number the program gets it as.
    fds: Vec<(OwnedFd, i32)>,
}

impl Spec {
    fn args(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Spec {
        Spec {
            args: args.iter().map(|a| a.as_ref().to_os_string()).collect(),
            ..Spec::default()
        }
    }
}

/// A running program (or the `forkpoint restart` that became it).
struct Run {
    proc: Proc,
    /// The program's stdout and stderr (a restarted program writes on in the same files).
    out: PathBuf,
    err: PathBuf,
    /// What `forkpoint restart` itself printed (restarted runs only).
    loader_err: Option<PathBuf>,
    go: PathBuf,
    dir: PathBuf,
}

const MAX_EXTRA_FDS: usize = 4;

/// Spawns `cmd` with `spec`'s standard input, environment and extra descriptors.
fn spawn(mut cmd: Command, spec: Spec, out: &Path, err: &Path, what: &str) -> Proc {
    cmd.stdout(File::create(out).expect("create stdout file"))
        .stderr(File::create(err).expect("create stderr file"));
    match spec.stdin {
        Some(fd) => cmd.stdin(Stdio::from(fd)),
        None => cmd.stdin(Stdio::null()),
    };
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    assert!(
        spec.fds.len() <= MAX_EXTRA_FDS,
        "too many extra descriptors"
    );
    let mut map = [(-1i32, -1i32); MAX_EXTRA_FDS];
    for (slot, (fd, target)) in map.iter_mut().zip(&spec.fds) {
        *slot = (fd.as_raw_fd(), *target);
    }
    let hook = move || -> std::io::Result<()> {
        // First every source above every target, so that placing one cannot overwrite
        // another; then each onto its number (dup2 clears FD_CLOEXEC).
        let mut high = [-1i32; MAX_EXTRA_FDS];
        for (h, &(src, _)) in high.iter_mut().zip(&map) {
            if src >= 0 {
                // SAFETY: fcntl on a descriptor this (forked) process holds.
                *h = unsafe { libc::fcntl(src, libc::F_DUPFD, 100) };
                if *h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        let mut last = 2;
        for (&h, &(_, target)) in high.iter().zip(&map) {
            if h >= 0 {
                // SAFETY: dup2 and close on descriptors this (forked) process holds.
                if unsafe { libc::dup2(h, target) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: as above.
                unsafe { libc::close(h) };
                last = last.max(target);
            }
        }
        // Nothing else: descriptors the test process inherited without FD_CLOEXEC (a
        // jobserver pipe, say) would be outside peers in the image.
        // SAFETY: close_range has no memory arguments; the targets are all below `last + 1`.
        unsafe { libc::syscall(libc::SYS_close_range, last + 1, u32::MAX, 0) };
        Ok(())
    };
    // SAFETY: the hook only calls fcntl, dup2, close and close_range (async-signal-safe) and
    // allocates nothing; the descriptors stay open in `spec` until spawn returns.
    unsafe { cmd.pre_exec(hook) };
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    drop(spec.fds); // the child has its own copies now
    Proc::new(child, what)
}

/// Starts the program without forkpoint, in `dir`.
fn start_plain(z: &Zdtm, dir: &Path, spec: Spec) -> Run {
    let go = dir.join("go");
    let (out, err) = (dir.join("prog.out"), dir.join("prog.err"));
    let mut cmd = Command::new(&z.exe);
    cmd.arg(&go).args(&spec.args).current_dir(dir);
    let proc = spawn(cmd, spec, &out, &err, "the control run");
    Run {
        proc,
        out,
        err,
        loader_err: None,
        go,
        dir: dir.to_path_buf(),
    }
}

/// Starts the program under `forkpoint run`, in `dir`.
fn start_under_fp(z: &Zdtm, dir: &Path, spec: Spec) -> Run {
    library(); // fail clearly if it is missing
    let go = dir.join("go");
    let (out, err) = (dir.join("prog.out"), dir.join("prog.err"));
    let mut cmd = Command::new(forkpoint());
    cmd.arg("run")
        .arg("--dir")
        .arg(z.t.sub("images"))
        .arg("--")
        .arg(&z.exe)
        .arg(&go)
        .args(&spec.args)
        .current_dir(dir)
        .env("FORKPOINT_RUNTIME_DIR", z.t.join("rt"))
        .env_remove("FORKPOINT_LOG");
    let proc = spawn(cmd, spec, &out, &err, "the program under forkpoint");
    Run {
        proc,
        out,
        err,
        loader_err: None,
        go,
        dir: dir.to_path_buf(),
    }
}

static RESTARTS: AtomicUsize = AtomicUsize::new(0);

/// `forkpoint restart [args] IMAGE` of the program `orig` ran; the restored program writes
/// on in `orig`'s output files.
fn restart(orig: &Run, image: &Path, args: &[&str], stdin: Option<OwnedFd>) -> Run {
    restart_under(None, orig, image, args, stdin)
}

/// [`restart`], with `forkpoint restart` run by `wrapper` (`WRAPPER forkpoint restart ...`).
fn restart_under(
    wrapper: Option<&Path>,
    orig: &Run,
    image: &Path,
    args: &[&str],
    stdin: Option<OwnedFd>,
) -> Run {
    let n = RESTARTS.fetch_add(1, Ordering::SeqCst);
    let (lout, lerr) = (
        orig.dir.join(format!("restart{n}.out")),
        orig.dir.join(format!("restart{n}.err")),
    );
    let mut cmd = match wrapper {
        Some(w) => {
            let mut c = Command::new(w);
            c.arg(forkpoint());
            c
        }
        None => Command::new(forkpoint()),
    };
    cmd.arg("restart").args(args).arg(image);
    let spec = Spec {
        stdin,
        ..Spec::default()
    };
    let proc = spawn(cmd, spec, &lout, &lerr, "the restarted program");
    Run {
        proc,
        out: orig.out.clone(),
        err: orig.err.clone(),
        loader_err: Some(lerr),
        go: orig.go.clone(),
        dir: orig.dir.clone(),
    }
}

impl Run {
    fn describe(&self) -> String {
        let loader = self
            .loader_err
            .as_deref()
            .map(|p| format!("\nforkpoint restart's stderr:\n{}", read_lossy(p)))
            .unwrap_or_default();
        format!(
            "stdout:\n{}\nstderr:\n{}{loader}",
            read_lossy(&self.out),
            read_lossy(&self.err)
        )
    }

    /// Waits for a stdout line starting with `prefix`, and returns it.
    fn line(&mut self, prefix: &str) -> String {
        let mut found = None;
        let what = format!("a line {prefix:?} from {}", self.proc.what);
        wait_until(&what, WAIT, || {
            let text = fs::read_to_string(&self.out).unwrap_or_default();
            if let Some(l) = text.lines().find(|l| l.starts_with(prefix)) {
                found = Some(l.to_string());
                return true;
            }
            if !self.proc.running() {
                panic!(
                    "{} ended before printing {prefix:?}\n{}",
                    self.proc.what,
                    self.describe()
                );
            }
            false
        });
        found.unwrap()
    }

    /// The port in a `ready port N` line.
    fn ready_port(&mut self) -> u16 {
        let l = self.line("ready port ");
        l["ready port ".len()..]
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no port in {l:?}"))
    }

    fn go(&self) {
        fs::write(&self.go, "").expect("create the go file");
    }

    /// Waits for the end: exit 0, `PASS` on stdout, no `FAIL` on stderr.
    fn passes(&mut self) {
        let st = self.proc.wait(WAIT);
        let out = fs::read_to_string(&self.out).unwrap_or_default();
        let err = fs::read_to_string(&self.err).unwrap_or_default();
        assert!(
            st.success() && !err.contains("FAIL") && out.lines().any(|l| l == "PASS"),
            "{} ended with {st}, the checks did not all pass\n{}",
            self.proc.what,
            self.describe()
        );
    }

    fn loader_stderr(&self) -> String {
        self.loader_err
            .as_deref()
            .map(read_lossy)
            .unwrap_or_default()
    }
}

/// Checkpoints the program and kills it with SIGKILL; returns the image.
fn checkpoint_and_kill(run: &mut Run) -> PathBuf {
    let image = checkpoint_ok(run.proc.pid);
    assert_killed(run.proc.kill9(), "the original program");
    image
}

/// The control run, then checkpoint at `ready`, kill, go, restart: both must pass.
/// `args` makes the arguments for a run directory. Returns the image and the restarted run.
fn roundtrip(z: &Zdtm, strict: bool, args: impl Fn(&Path) -> Spec) -> (PathBuf, Run) {
    let ctl_dir = z.dir("control");
    let mut ctl = start_plain(z, &ctl_dir, args(&ctl_dir));
    ctl.line("ready");
    ctl.go();
    ctl.passes();

    let dir = z.dir("run");
    let mut run = start_under_fp(z, &dir, args(&dir));
    run.line("ready");
    let image = checkpoint_and_kill(&mut run);
    run.go();
    let mut r = restart(&run, &image, if strict { &["--strict"] } else { &[] }, None);
    r.passes();
    (image, r)
}

/// A restart that must be refused: exit non-zero (not a signal), a message with one of
/// `words`, and the program never ran (its stdout did not change). Returns the message.
fn refused(orig: &Run, image: &Path, args: &[&str], words: &[&str]) -> String {
    let before = fs::read(&orig.out).unwrap_or_default();
    let mut r = restart(orig, image, args, None);
    let st = r.proc.wait(WAIT);
    let err = r.loader_stderr();
    assert!(
        !st.success() && st.code().is_some(),
        "forkpoint restart {args:?} should have been refused with an error, but ended with {st}\n{}",
        r.describe()
    );
    let lower = err.to_lowercase();
    assert!(
        words.iter().any(|w| lower.contains(&w.to_lowercase())),
        "the refusal should name the cause (one of {words:?}), got:\n{err}"
    );
    assert!(
        fs::read(&orig.out).unwrap_or_default() == before,
        "the restart was refused, but the program ran:\n{}",
        r.describe()
    );
    err
}

/// The `fds` entry of descriptor `fd` in `forkpoint info --json`.
fn fd_entry(info: &Value, fd: i64) -> Value {
    info["metadata"]["fds"]
        .as_array()
        .expect("fds array")
        .iter()
        .find(|e| e["fd"].as_i64() == Some(fd))
        .unwrap_or_else(|| panic!("the image has no descriptor {fd}"))
        .clone()
}

/// How the image restores descriptor `fd`: `reopen`, `inherit`, `recreate`,
/// `approximate` or `dev_null`, and the text saying how or why.
fn restore_of(info: &Value, fd: i64) -> (String, String) {
    let e = fd_entry(info, fd);
    let r = &e["restore"];
    let how = r["how"].as_str().unwrap_or("").to_string();
    let text = r["approximation"]
        .as_str()
        .or(r["reason"].as_str())
        .unwrap_or("")
        .to_string();
    (how, text)
}

/// `forkpoint info IMAGE` (the table for people).
fn info_text(image: &Path) -> String {
    let out = output_within(Command::new(forkpoint()).arg("info").arg(image), WAIT);
    assert!(out.status.success(), "forkpoint info failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The line of `forkpoint info`'s descriptor table for `fd`.
fn info_fd_line(text: &str, fd: i32) -> String {
    let mut in_table = false;
    for l in text.lines() {
        if l.starts_with("descriptors") {
            in_table = true;
            continue;
        }
        if in_table && !l.starts_with(' ') {
            break;
        }
        if in_table && l.split_whitespace().next() == Some(&fd.to_string()) {
            return l.to_string();
        }
    }
    panic!("forkpoint info lists no descriptor {fd}:\n{text}");
}

/// A pipe: (read end, write end), close-on-exec in this process.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0i32; 2];
    // SAFETY: fds is two writable ints.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2");
    // SAFETY: two fresh descriptors nobody else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A pipe whose read end holds `bytes` and whose write end is closed.
fn pipe_with(bytes: &[u8]) -> OwnedFd {
    let (r, w) = pipe();
    File::from(w).write_all(bytes).expect("fill pipe");
    r
}

#[test]
fn pipe_with_buffered_bytes_both_ends_inside() {
    let z = Zdtm::new("zdtm_pipe", PIPE_C);
    let (image, _) = roundtrip(&z, true, |_| Spec::default());
    let info = info_json(&image);
    for fd in [3, 4, 5, 6] {
        assert_eq!(restore_of(&info, fd).0, "recreate", "descriptor {fd}");
    }
}

/// An empty pipe whose write end the program closed itself: nothing of it was outside the
/// process, so end of file after a restart is faithful, not an approximation.
#[test]
fn a_pipe_whose_writer_was_closed_is_restored_faithfully() {
    let z = Zdtm::new("zdtm_pipe", PIPE_C);
    roundtrip(&z, true, |_| Spec::args(&[&"closed-writer"]));
}

/// A named FIFO with both ends in the process stays the FIFO at its path.
#[test]
fn fifo_with_both_ends_inside_stays_the_named_fifo() {
    let z = Zdtm::new("zdtm_pipe", PIPE_C);
    roundtrip(&z, true, |dir| Spec::args(&[&"fifo", &dir.join("fifo")]));
}

/// Descriptor 3 reads a pipe only the test writes to; descriptor 4 writes a pipe only the
/// test reads; stdin is a pipe from the test. After a restart: the buffered bytes then end
/// of file, EPIPE, and the restarting command's stdin; `info` says which are approximated,
/// and `--strict` refuses the image.
#[test]
fn pipes_whose_other_end_is_outside() {
    let z = Zdtm::new("zdtm_pipe_outside", PIPE_OUTSIDE_C);
    let spec = |writer: &mut Option<OwnedFd>, reader: &mut Option<OwnedFd>| {
        let (r3, w3) = pipe();
        let mut w3 = File::from(w3);
        w3.write_all(b"outside-data").unwrap();
        let (r4, w4) = pipe();
        *writer = Some(w3.into());
        *reader = Some(r4);
        Spec {
            stdin: Some(pipe_with(b"stdin-line\n")),
            fds: vec![(r3, 3), (w4, 4)],
            ..Spec::default()
        }
    };
    // Control: the test closes its ends after `ready`.
    let (mut writer, mut reader) = (None, None);
    let dir = z.dir("control");
    let mut ctl = start_plain(&z, &dir, spec(&mut writer, &mut reader));
    ctl.line("ready");
    drop((writer.take(), reader.take()));
    ctl.go();
    ctl.passes();

    // Under forkpoint: the test keeps its ends open all along.
    let dir = z.dir("run");
    let mut run = start_under_fp(&z, &dir, spec(&mut writer, &mut reader));
    run.line("ready");
    let image = checkpoint_and_kill(&mut run);
    let info = info_json(&image);
    let (how3, text3) = restore_of(&info, 3);
    assert_eq!(how3, "approximate", "descriptor 3: {text3}");
    assert!(text3.contains("writer"), "descriptor 3: {text3}");
    let (how4, text4) = restore_of(&info, 4);
    assert_eq!(how4, "approximate", "descriptor 4: {text4}");
    assert!(text4.contains("reader"), "descriptor 4: {text4}");
    assert_eq!(restore_of(&info, 0).0, "inherit", "stdin");
    let text = info_text(&image);
    assert!(
        info_fd_line(&text, 3).contains("approx"),
        "forkpoint info:\n{text}"
    );
    refused(&run, &image, &["--strict"], &["--strict"]);
    run.go();
    let mut r = restart(&run, &image, &[], Some(pipe_with(b"stdin-line\n")));
    r.passes();
    let warned = r.loader_stderr();
    assert!(
        warned.contains("warning") && warned.contains("descriptor 3"),
        "the restart should warn about descriptor 3:\n{warned}"
    );
    drop((writer, reader));
}

#[test]
fn eventfd_counter_and_semaphore() {
    let z = Zdtm::new("zdtm_eventfd", EVENTFD_C);
    roundtrip(&z, true, |_| Spec::default());
}

#[test]
fn timerfd_fires_on_time() {
    let z = Zdtm::new("zdtm_timerfd", TIMERFD_C);
    roundtrip(&z, true, |_| Spec::default());
}

/// A timerfd that expired before the checkpoint and was not read yet: the expiry count is
/// part of its state.
#[test]
fn timerfd_expired_but_unread() {
    let z = Zdtm::new("zdtm_timerfd", TIMERFD_C);
    roundtrip(&z, true, |_| Spec::args(&[&"expired"]));
}

#[test]
fn signalfd_mask() {
    let z = Zdtm::new("zdtm_signalfd", SIGNALFD_C);
    roundtrip(&z, true, |_| Spec::default());
}

/// A signal blocked and queued at the checkpoint, waiting to be read from a signalfd.
#[test]
#[ignore = "partly restored: a signal pending at the checkpoint is pending again after the \
            restart, but without its siginfo (the value 4242 the test checks is lost; keeping \
            it would need dequeueing and requeueing in the pause)"]
fn signalfd_with_a_pending_signal() {
    let z = Zdtm::new("zdtm_signalfd", SIGNALFD_C);
    roundtrip(&z, true, |_| Spec::args(&[&"pending"]));
}

#[test]
fn epoll_interest_list_and_ready_set() {
    let z = Zdtm::new("zdtm_epoll", EPOLL_C);
    roundtrip(&z, true, |_| Spec::default());
}

#[test]
fn unix_stream_socketpairs_with_queued_data() {
    let z = Zdtm::new("zdtm_socketpair", SOCKETPAIR_C);
    roundtrip(&z, true, |_| Spec::default());
}

#[test]
#[ignore = "bug: queued messages of SOCK_DGRAM and SOCK_SEQPACKET socketpairs are not saved \
            (only stream data is peeked), and nothing warns: they are silently lost"]
fn unix_datagram_and_seqpacket_socketpairs_with_queued_messages() {
    let z = Zdtm::new("zdtm_socketpair", SOCKETPAIR_C);
    roundtrip(&z, true, |_| Spec::args(&[&"dgram"]));
}

/// Sends "hello\n" to a stream socket and returns the answer (the server then closes).
fn hello(mut s: impl Read + Write) -> String {
    s.write_all(b"hello\n").expect("send hello");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read the answer");
    answer
}

fn tcp_hello(port: u16) -> String {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the listener");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    hello(s)
}

/// A listener program's run: `ready`, go, `serving`, then `client` talks to it.
fn serve_once(run: &mut Run, client: impl FnOnce()) {
    run.line("serving");
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(client)) {
        // Say how the program ended: that is usually why its client failed.
        let st = run.proc.wait(WAIT);
        panic!(
            "the client failed ({}); {} ended with {st}\n{}",
            e.downcast_ref::<String>().map_or("", |s| s.as_str()),
            run.proc.what,
            run.describe()
        );
    }
    run.passes();
}

/// A TCP listener (and one on ::1 where there is IPv6) accepts a client after a restart.
/// While another socket holds its port the restart is refused, clearly.
#[test]
fn tcp_listener_accepts_after_restart_and_a_taken_port_is_refused() {
    let z = Zdtm::new("zdtm_listen", LISTEN_C);
    let dir = z.dir("control");
    let mut ctl = start_plain(&z, &dir, Spec::args(&[&"tcp"]));
    let port = ctl.ready_port();
    ctl.go();
    serve_once(&mut ctl, || {
        assert_eq!(tcp_hello(port), format!("hi {port}\n"))
    });

    let dir = z.dir("run");
    let mut run = start_under_fp(&z, &dir, Spec::args(&[&"tcp"]));
    let port = run.ready_port();
    let image = checkpoint_and_kill(&mut run);
    {
        let _squatter = TcpListener::bind(("127.0.0.1", port)).expect("bind the freed port");
        refused(
            &run,
            &image,
            &[],
            &["bind", "taken", "in use", &port.to_string()],
        );
    }
    run.go();
    let mut r = restart(&run, &image, &["--strict"], None);
    serve_once(&mut r, || {
        assert_eq!(tcp_hello(port), format!("hi {port}\n"))
    });
}

/// Options a server sets on its listener (SO_KEEPALIVE, SO_RCVBUF, TCP_NODELAY) are part of
/// the listener's state.
#[test]
fn tcp_listener_keeps_its_socket_options() {
    let z = Zdtm::new("zdtm_listen", LISTEN_C);
    let dir = z.dir("control");
    let mut ctl = start_plain(&z, &dir, Spec::args(&[&"tcp-options"]));
    let port = ctl.ready_port();
    ctl.go();
    serve_once(&mut ctl, || {
        assert_eq!(tcp_hello(port), format!("hi {port}\n"))
    });

    let dir = z.dir("run");
    let mut run = start_under_fp(&z, &dir, Spec::args(&[&"tcp-options"]));
    let port = run.ready_port();
    let image = checkpoint_and_kill(&mut run);
    run.go();
    let mut r = restart(&run, &image, &["--strict"], None);
    serve_once(&mut r, || {
        assert_eq!(tcp_hello(port), format!("hi {port}\n"))
    });
}

/// A unix stream listener at a path (its stale socket file is replaced), an abstract one,
/// and a unix datagram socket at a path.
#[test]
fn unix_listeners_with_a_path_and_abstract() {
    let z = Zdtm::new("zdtm_listen", LISTEN_C);
    let client = |sock: &Path| {
        let s = UnixStream::connect(sock).expect("connect to the unix listener");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        assert_eq!(hello(s), "hi 0\n");
        let d = UnixDatagram::unbound().unwrap();
        let mut dgram = sock.as_os_str().to_os_string();
        dgram.push(".dgram");
        d.send_to(b"dgram", &dgram)
            .expect("send to the unix datagram socket");
    };
    let dir = z.dir("control");
    let sock = dir.join("sock");
    let mut ctl = start_plain(&z, &dir, Spec::args(&[&"unix", &sock]));
    ctl.line("ready");
    ctl.go();
    serve_once(&mut ctl, || client(&sock));

    let dir = z.dir("run");
    let sock = dir.join("sock");
    let mut run = start_under_fp(&z, &dir, Spec::args(&[&"unix", &sock]));
    run.line("ready");
    let image = checkpoint_and_kill(&mut run);
    run.go();
    let mut r = restart(&run, &image, &["--strict"], None);
    serve_once(&mut r, || client(&sock));
}

#[test]
fn udp_socket_bound_receives_after_restart() {
    let z = Zdtm::new("zdtm_listen", LISTEN_C);
    let client = |port: u16| {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        u.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        u.send_to(b"dgram", ("127.0.0.1", port)).unwrap();
        let mut b = [0u8; 16];
        let (n, _) = u.recv_from(&mut b).expect("an answer to the datagram");
        assert_eq!(&b[..n], b"ack");
    };
    let dir = z.dir("control");
    let mut ctl = start_plain(&z, &dir, Spec::args(&[&"udp"]));
    let port = ctl.ready_port();
    ctl.go();
    serve_once(&mut ctl, || client(port));

    let dir = z.dir("run");
    let mut run = start_under_fp(&z, &dir, Spec::args(&[&"udp"]));
    let port = run.ready_port();
    let image = checkpoint_and_kill(&mut run);
    run.go();
    let mut r = restart(&run, &image, &["--strict"], None);
    serve_once(&mut r, || client(port));
}

/// The program holds a TCP connection it made to the test, one it accepted from the test,
/// and a unix stream connection it made to the test. They cannot come back (TCP repair needs
/// privileges; the unix peer is another process): after the restart each must report the
/// connection as gone, `info` says they are approximated, and the restart warns.
#[test]
fn connections_to_outside_peers_report_the_connection_gone() {
    let z = Zdtm::new("zdtm_tcp_peer", TCP_PEER_C);
    // Starts the program and sets the connections up; returns the test's ends.
    let setup = |dir: &Path, under_fp: bool| -> (Run, Vec<Box<dyn ReadStream>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let upath = dir.join("peer.sock");
        let ulistener = UnixListener::bind(&upath).unwrap();
        let spec = Spec::args(&[&port.to_string(), &upath]);
        let mut run = if under_fp {
            start_under_fp(&z, dir, spec)
        } else {
            start_plain(&z, dir, spec)
        };
        let (mut served, _) = listener.accept().expect("the program connects");
        served
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut hi = [0u8; 3];
        served.read_exact(&mut hi).unwrap();
        assert_eq!(&hi, b"hi\n");
        served.write_all(b"welcome\n").unwrap();
        let (mut userved, _) = ulistener.accept().expect("the program connects (unix)");
        userved
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        userved.read_exact(&mut hi).unwrap();
        assert_eq!(&hi, b"hi\n");
        userved.write_all(b"welcome\n").unwrap();
        let l = run.line("listen ");
        let lport: u16 = l["listen ".len()..].trim().parse().unwrap();
        let mut client = TcpStream::connect(("127.0.0.1", lport)).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        client.write_all(b"client\n").unwrap();
        run.line("ready");
        (
            run,
            vec![Box::new(served), Box::new(client), Box::new(userved)],
        )
    };
    let (mut ctl, ends) = setup(&z.dir("control"), false);
    drop(ends);
    ctl.go();
    ctl.passes();

    let (mut run, mut ends) = setup(&z.dir("run"), true);
    let image = checkpoint_and_kill(&mut run);
    let info = info_json(&image);
    let sockets: Vec<i64> = info["metadata"]["fds"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"]["kind"] == "socket")
        .map(|e| e["fd"].as_i64().unwrap())
        .collect();
    assert_eq!(sockets.len(), 3, "three sockets in the image: {sockets:?}");
    for &fd in &sockets {
        let (how, text) = restore_of(&info, fd);
        assert_eq!(how, "approximate", "socket {fd}: {text}");
        assert!(text.contains("reset"), "socket {fd}: {text}");
    }
    refused(&run, &image, &["--strict"], &["--strict"]);
    run.go();
    let mut r = restart(&run, &image, &[], None);
    r.passes();
    let warned = r.loader_stderr();
    for fd in &sockets {
        assert!(
            warned.contains(&format!("descriptor {fd}")),
            "the restart should warn about socket {fd}:\n{warned}"
        );
    }
    // Nothing the restarted program wrote reached the test's ends.
    for s in &mut ends {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "the test's end received {rest:?}");
    }
}

/// The test's end of a connection (TCP or unix), read with a timeout.
trait ReadStream: Read {}
impl ReadStream for TcpStream {}
impl ReadStream for UnixStream {}

#[test]
fn memfd_contents_name_and_seals() {
    let z = Zdtm::new("zdtm_memfd", MEMFD_C);
    roundtrip(&z, true, |_| Spec::default());
}

/// Files deleted while open come back with contents, offset and flags, nameless in the same
/// directory (`info` says how).
#[test]
fn deleted_files_with_contents_and_offset() {
    let z = Zdtm::new("zdtm_deleted", DELETED_C);
    let (image, _) = roundtrip(&z, false, |dir| Spec::args(&[&dir]));
    let (how, text) = restore_of(&info_json(&image), 3);
    assert!(
        how == "recreate" || (how == "approximate" && text.contains("O_TMPFILE")),
        "descriptor 3: {how} {text}"
    );
}

/// A deleted file's permissions, a read-only one's access mode, and a write-only append
/// one (which cannot be read through its own descriptor).
#[test]
fn deleted_files_keep_permissions_and_access_modes() {
    let z = Zdtm::new("zdtm_deleted", DELETED_C);
    roundtrip(&z, false, |dir| Spec::args(&[&dir, &"modes"]));
}

#[test]
fn file_locks_are_held_after_restart() {
    let z = Zdtm::new("zdtm_locks", LOCKS_C);
    let (image, _) = roundtrip(&z, true, |dir| Spec::args(&[&dir]));
    let info = info_json(&image);
    let kinds: Vec<String> = info["metadata"]["locks"]
        .as_array()
        .expect("locks array")
        .iter()
        .map(|l| l["kind"].as_str().unwrap_or("").to_string())
        .collect();
    for k in ["posix", "flock", "ofd"] {
        assert!(
            kinds.iter().any(|x| x == k),
            "no {k} lock in the image: {kinds:?}"
        );
    }
}

/// Takes a lock from the test process: `flock`, or a POSIX or OFD write lock on `len`
/// bytes from `start`.
fn take_lock(f: &File, kind: &str, start: i64, len: i64) {
    let fd = f.as_raw_fd();
    let r = if kind == "flock" {
        // SAFETY: flock on a descriptor we own.
        unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) }
    } else {
        // SAFETY: struct flock is plain data.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as i16;
        fl.l_whence = libc::SEEK_SET as i16;
        fl.l_start = start;
        fl.l_len = len;
        let cmd = if kind == "ofd" {
            libc::F_OFD_SETLK
        } else {
            libc::F_SETLK
        };
        // SAFETY: fl is a valid struct flock.
        unsafe { libc::fcntl(fd, cmd, &fl) }
    };
    assert_eq!(
        r,
        0,
        "the test cannot take the {kind} lock: {}",
        std::io::Error::last_os_error()
    );
}

/// After the checkpoint and the kill, the test itself takes each lock the program held: the
/// restart must be refused, clearly, before the program runs. Once the test lets go, the
/// restart succeeds and the program holds its locks.
#[test]
fn a_lock_another_process_holds_now_refuses_the_restart() {
    let z = Zdtm::new("zdtm_locks", LOCKS_C);
    let dir = z.dir("run");
    let mut run = start_under_fp(&z, &dir, Spec::args(&[&dir]));
    run.line("ready");
    let image = checkpoint_and_kill(&mut run);
    for (kind, file, start, len) in [
        ("flock", "lock-flock", 0, 0),
        ("posix", "lock-posix", 5, 1),
        ("ofd", "lock-ofd", 100, 0),
    ] {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(file))
            .unwrap();
        take_lock(&f, kind, start, len);
        let err = refused(&run, &image, &[], &["lock"]);
        assert!(
            err.contains(kind) || err.to_lowercase().contains("holds"),
            "the refusal should say which lock ({kind}) is held elsewhere:\n{err}"
        );
        drop(f);
    }
    run.go();
    restart(&run, &image, &["--strict"], None).passes();
}

#[test]
fn interval_and_posix_timers() {
    let z = Zdtm::new("zdtm_timers", TIMERS_C);
    let (image, r) = roundtrip(&z, true, |_| Spec::default());
    let ids: Vec<i64> = fs::read_to_string(&r.out)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("ready ids "))
        .expect("the ids line")
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    let saved: Vec<i64> = info_json(&image)["metadata"]["timers"]["posix"]
        .as_array()
        .expect("posix timers")
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    for id in &ids {
        assert!(
            saved.contains(id),
            "timer {id} is not in the image: {saved:?}"
        );
    }
}

#[test]
fn process_attributes_umask_rlimits_pdeathsig_and_more() {
    let z = Zdtm::new("zdtm_attrs", ATTRS_C);
    let (_, r) = roundtrip(&z, true, |dir| {
        let cwd = dir.join("cwd");
        fs::create_dir_all(&cwd).unwrap();
        let mut s = Spec::args(&[&cwd]);
        s.env.push(("ZDTM_MARK", "present".into()));
        s
    });
    let exe = fs::read_to_string(&r.out)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("exe ").map(str::to_string))
        .unwrap_or_default();
    // /proc/self/exe can only be changed with privileges (PR_SET_MM_MAP exe_fd).
    if is_root() {
        assert_eq!(
            Path::new(&exe),
            z.exe.as_path(),
            "/proc/self/exe of the restarted program"
        );
    } else {
        skip(&format!(
            "/proc/self/exe is {exe} after an unprivileged restart (needs privileges)"
        ));
    }
}

/// A process that made itself not dumpable (PR_SET_DUMPABLE 0, as ssh-agent does) is
/// checkpointed and restarted, and stays not dumpable.
#[test]
fn non_dumpable_process() {
    if !is_root() {
        skip(
            "unprivileged, a non-dumpable program cannot read its own /proc/self/environ, \
             which this program checks (its control run without forkpoint fails too)",
        );
        return;
    }
    let z = Zdtm::new("zdtm_attrs", ATTRS_C);
    roundtrip(&z, true, |dir| {
        let cwd = dir.join("cwd");
        fs::create_dir_all(&cwd).unwrap();
        let mut s = Spec::args(&[&cwd, &"nodump"]);
        s.env.push(("ZDTM_MARK", "present".into()));
        s
    });
}

/// Descriptors on the process's own /proc files (`/proc/self/stat` is `/proc/PID/stat` to
/// the kernel) must name the restarted process's files.
#[test]
fn descriptors_on_own_proc_files() {
    let z = Zdtm::new("zdtm_procfs", PROCFS_C);
    roundtrip(&z, true, |_| Spec::default());
}

/// What the kernel keeps about the memory layout (brk, argv and environment ranges, auxv,
/// and with the privilege for it /proc/self/exe) is the program's after a restart, so
/// `sbrk`, a growing `malloc`, `getauxval`, `ps` and profilers see the program, not the loader.
/// Unprivileged, the restart says that /proc/PID/exe is the one thing it could not set.
#[test]
fn memory_layout_the_kernel_keeps_is_the_programs() {
    let z = Zdtm::new("zdtm_mm", MM_C);
    let privileged = is_root();
    let (_, r) = roundtrip(&z, true, |_| {
        let mut s = Spec::args(&[&"two words", &"", &"last"]);
        if privileged {
            s.env.push(("FORKPOINT_TEST_EXE_KEPT", "1".into()));
        }
        s
    });
    let err = r.loader_stderr();
    assert!(
        !err.contains("PR_SET_MM_MAP"),
        "no PR_SET_MM_MAP step may fail here:\n{err}"
    );
    assert_eq!(
        err.contains("/proc/PID/exe of the restored process names"),
        !privileged,
        "the restart must say exactly when /proc/PID/exe is not the program's:\n{err}"
    );
}

/// Recursive and error-checking mutexes held across the checkpoint (glibc records the owner's
/// TID in them) are still their holders' after a restart, in the main thread and in another
/// (node's V8 hung here, relocking its safepoint mutex), and a restored thread can still be
/// signalled by its `pthread_t`. Twice from the same image: each restart numbers the threads
/// anew.
#[test]
fn locks_held_across_the_checkpoint() {
    let z = Zdtm::new("zdtm_held_locks", HELD_LOCKS_C);
    let (image, first) = roundtrip(&z, true, |_| Spec::default());
    let mut again = restart(&first, &image, &["--strict"], None);
    again.passes();
}

/// Threads with small signal stacks (Rust's 8 KiB, Go's): the library's handler runs there
/// (SA_ONSTACK) and must fit; the leader's work runs on its own stack. Checkpointed twice, so
/// that either thread may have been the leader.
#[test]
fn threads_with_small_signal_stacks() {
    let z = Zdtm::new("zdtm_sigaltstack", SIGALTSTACK_C);
    let dir = z.dir("run");
    let mut run = start_under_fp(&z, &dir, Spec::default());
    run.line("ready");
    for _ in 0..3 {
        checkpoint_ok(run.proc.pid);
    }
    let image = checkpoint_and_kill(&mut run);
    run.go();
    restart(&run, &image, &[], None).passes();
}

/// A file mapped shared and writable is the file itself: written after the checkpoint (the
/// JVM's hsperfdata counters are), the restart goes on with a warning and the program sees
/// the file as it is now, still tied to it. A file now shorter than the mapping is refused.
#[test]
fn shared_file_mapping_written_after_the_checkpoint() {
    let z = Zdtm::new("zdtm_shared_file", SHARED_FILE_C);
    let dir = z.dir("run");
    let file = dir.join("shared.bin");
    fs::write(&file, vec![0u8; 4 * 4096]).unwrap();
    let mut run = start_under_fp(&z, &dir, Spec::args(&[&file]));
    run.line("ready");
    let image = checkpoint_and_kill(&mut run);
    let mut bytes = fs::read(&file).unwrap();
    bytes[100] = b'M';
    fs::write(&file, &bytes).unwrap();
    run.go();
    let mut r = restart(&run, &image, &[], None);
    r.passes();
    let out = read_lossy(&r.out);
    assert!(
        out.contains("byte 100: M"),
        "the restored mapping should show the file as it is now:\n{out}"
    );
    let err = r.loader_stderr();
    assert!(
        err.contains("shared.bin") && err.contains("written since the checkpoint"),
        "the restart should say the shared file changed:\n{err}"
    );

    fs::write(&file, vec![0u8; 4096]).unwrap();
    refused(&run, &image, &[], &["shorter"]);
}

/// Where the kernel refuses PR_SET_MM_MAP (here a seccomp filter, as in a container profile or
/// on a kernel without CONFIG_CHECKPOINT_RESTORE), the restart says so before it runs the
/// program. With CAP_SYS_RESOURCE it sets the same fields one by one, as CRIU does, and the
/// program sees its own layout. Without it the kernel's break would stay the loader's, above
/// this (non-PIE, low heap) program's: its brk() calls would be told they got memory that is
/// not there, so the restart is refused, naming both addresses, and the program never runs.
#[test]
fn memory_layout_without_pr_set_mm_map() {
    let t = TestDir::new("zdtm_mm_nopie");
    let z = Zdtm {
        exe: compile_c_with(&t.path, "zdtm_mm", MM_C, &["-no-pie"]),
        t,
    };
    let wrapper = compile_c(&z.t.path, "no_mm_map", NO_MM_MAP_C);
    // CAP_SYS_RESOURCE, not root: container runtimes often leave it out of root's set.
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap();
    let single_ops = eff & (1 << 24) != 0;
    let dir = z.dir("run");
    let mut spec = Spec::args(&[&"an argument"]);
    if single_ops && is_root() {
        spec.env.push(("FORKPOINT_TEST_EXE_KEPT", "1".into()));
    }
    let mut run = start_under_fp(&z, &dir, spec);
    run.line("ready");
    let image = checkpoint_and_kill(&mut run);
    run.go();
    if single_ops {
        let mut r = restart_under(Some(&wrapper), &run, &image, &[], None);
        r.passes();
        let err = r.loader_stderr();
        assert!(
            err.contains("prctl(PR_SET_MM_MAP) is refused here (Operation not permitted")
                && err.contains("set one by one with CAP_SYS_RESOURCE")
                && !err.contains("failed"),
            "the restart must say that PR_SET_MM_MAP is refused and what it did instead:\n{err}"
        );
    } else {
        let before = fs::read(&run.out).unwrap();
        let mut r = restart_under(Some(&wrapper), &run, &image, &[], None);
        let st = r.proc.wait(WAIT);
        let err = r.loader_stderr();
        assert!(
            st.code() == Some(1)
                && err.contains("prctl(PR_SET_MM_MAP) is refused")
                && err.contains("no CAP_SYS_RESOURCE")
                && err.contains("above the program's heap"),
            "the restart must be refused, saying why:\n{}",
            r.describe()
        );
        assert_eq!(fs::read(&run.out).unwrap(), before, "the program ran");
    }
}

/// inotify watches cannot be restored: `info` says `/dev/null` and why, `--strict`
/// refuses, and the restarted program finds `/dev/null` in its place — never a descriptor
/// that silently reports nothing.
#[test]
fn inotify_is_restored_as_dev_null_and_says_so() {
    let z = Zdtm::new("zdtm_inotify", INOTIFY_C);
    let dir = z.dir("control");
    let watched = dir.join("watched");
    fs::create_dir_all(&watched).unwrap();
    let mut ctl = start_plain(&z, &dir, Spec::args(&[&watched]));
    ctl.line("ready");
    ctl.go();
    ctl.passes();
    assert_eq!(ctl.line("inotify "), "inotify anon_inode:inotify");
    assert_eq!(ctl.line("events "), "events 1");

    let dir = z.dir("run");
    let watched = dir.join("watched");
    fs::create_dir_all(&watched).unwrap();
    let mut run = start_under_fp(&z, &dir, Spec::args(&[&watched]));
    run.line("ready");
    let image = checkpoint_and_kill(&mut run);
    let (how, why) = restore_of(&info_json(&image), 3);
    assert_eq!(how, "dev_null", "{why}");
    assert!(why.contains("inotify"), "{why}");
    refused(&run, &image, &["--strict"], &["--strict"]);
    run.go();
    let mut r = restart(&run, &image, &[], None);
    r.passes();
    assert_eq!(r.line("inotify "), "inotify /dev/null");
}

/// Shared memory rewritten without pause by the program: the image must hold it as it was
/// when the threads were stopped (see zdtm_shm.c). Returns the image (and its directory,
/// removed when dropped).
fn shared_memory(mode: &str, linked: bool, strict: bool) -> (Zdtm, PathBuf) {
    let z = Zdtm::new(&format!("zdtm_shm_{mode}"), SHM_C);
    let (image, _) = roundtrip(&z, strict, |_| {
        let mut s = Spec::args(&[&mode]);
        if linked {
            s.args.push("linked".into());
        }
        s
    });
    (z, image)
}

/// How `info --json` says the mappings whose name starts with `prefix` are approximated.
fn mapping_approximations(image: &Path, prefix: &str) -> Vec<String> {
    info_json(image)["metadata"]["mappings"]
        .as_array()
        .expect("mappings array")
        .iter()
        .filter(|m| m["name"].as_str().unwrap_or("").starts_with(prefix))
        .map(|m| m["approximation"].as_str().unwrap_or("").to_string())
        .collect()
}

/// MAP_SHARED|MAP_ANONYMOUS memory: faithful (`--strict` accepts it).
#[test]
fn shared_anonymous_memory_is_saved_as_at_the_checkpoint() {
    shared_memory("anon", false, true);
}

/// A SysV segment: its contents are saved consistently; `info` says the segment itself is
/// not recreated.
#[test]
fn sysv_shared_memory_is_saved_as_at_the_checkpoint() {
    let (_z, image) = shared_memory("sysv", false, false);
    let how = mapping_approximations(&image, "/SYSV");
    assert!(
        !how.is_empty() && how.iter().all(|a| a.contains("SysV")),
        "info should say how the SysV mapping is approximated: {how:?}"
    );
}

/// A memfd mapped MAP_SHARED: saved consistently; `info` says it comes back as shared
/// memory of its own, no longer tied to the descriptor.
#[test]
fn memfd_shared_mapping_is_saved_as_at_the_checkpoint() {
    let (_z, image) = shared_memory("memfd", false, false);
    let how = mapping_approximations(&image, "/memfd:zdtm-shm");
    assert!(
        !how.is_empty() && how.iter().all(|a| a.contains("memfd")),
        "info should say how the memfd mapping is approximated: {how:?}"
    );
}

/// After a restart, writes through the memfd's mapping show through its descriptor and back.
#[test]
#[ignore = "not yet restored: a MAP_SHARED mapping of a memfd comes back as shared anonymous \
            memory, no longer tied to the memfd descriptor (info and --strict say so)"]
fn memfd_shared_mapping_stays_tied_to_its_descriptor() {
    shared_memory("memfd", true, false);
}

#[test]
fn madv_dontfork_region_is_restored() {
    let z = Zdtm::new("zdtm_madvise", MADVISE_C);
    roundtrip(&z, true, |_| Spec::args(&[&"dontfork"]));
}

#[test]
fn madv_wipeonfork_region_is_restored() {
    let z = Zdtm::new("zdtm_madvise", MADVISE_C);
    roundtrip(&z, true, |_| Spec::args(&[&"wipeonfork"]));
}

#[test]
fn mlocked_region_is_locked_again() {
    let z = Zdtm::new("zdtm_madvise", MADVISE_C);
    roundtrip(&z, true, |_| Spec::args(&[&"mlock"]));
}

/// One request/answer line on a connection to the echo server.
fn ask(conn: &mut BufReader<TcpStream>, line: &str) -> String {
    conn.get_mut()
        .write_all(line.as_bytes())
        .expect("send to the server");
    let mut answer = String::new();
    conn.read_line(&mut answer).expect("read the answer");
    answer
}

fn connect(port: u16) -> BufReader<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the echo server");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    BufReader::new(s)
}

/// A real program using several kinds at once: an epoll TCP echo server with a listening
/// socket, an eventfd holding its request count, and a self-pipe for SIGUSR1. Checkpointed
/// idle (restarted with `--strict`: all of it is restored faithfully), then served: it
/// echoes, counts on from the checkpointed count, and counts a signal through its pipe.
#[test]
fn epoll_echo_server_with_eventfd_and_self_pipe() {
    let z = Zdtm::new("zdtm_echo_server", ECHO_SERVER_C);
    // Three requests before the (possible) checkpoint; the server then has closed 1 client.
    let first = |run: &mut Run| -> u16 {
        let port = run.ready_port();
        let mut c = connect(port);
        for w in ["one\n", "two\n", "three\n"] {
            assert_eq!(ask(&mut c, w), w);
        }
        drop(c);
        run.line("closed 1");
        port
    };
    // After: two more clients at once, a signal, stats, quit.
    let second = |run: &mut Run, port: u16| {
        let mut a = connect(port);
        let mut b = connect(port);
        assert_eq!(ask(&mut a, "four\n"), "four\n");
        assert_eq!(ask(&mut b, "five\n"), "five\n");
        run.proc.signal(libc::SIGUSR1);
        assert_eq!(ask(&mut a, "stats\n"), "served 5 signals 1\n");
        assert_eq!(ask(&mut b, "quit\n"), "bye\n");
        let st = run.proc.wait(WAIT);
        assert!(
            st.success(),
            "the server ended with {st}\n{}",
            run.describe()
        );
        assert_eq!(run.line("exit "), "exit served 5 signals 1");
    };
    let dir = z.dir("control");
    let mut ctl = start_plain(&z, &dir, Spec::default());
    let port = first(&mut ctl);
    second(&mut ctl, port);

    let dir = z.dir("run");
    let mut run = start_under_fp(&z, &dir, Spec::default());
    let port = first(&mut run);
    let image = checkpoint_and_kill(&mut run);
    let info = info_json(&image);
    let kinds: Vec<String> = info["metadata"]["fds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"]["kind"].as_str().unwrap_or("").to_string())
        .collect();
    for k in ["socket", "eventfd", "epoll", "pipe"] {
        assert!(
            kinds.iter().any(|x| x == k),
            "no {k} in the image: {kinds:?}"
        );
    }
    let mut r = restart(&run, &image, &["--strict"], None);
    // The listener is bound again before the program runs; connect once it answers.
    let mut c = None;
    wait_until("the restarted server to answer", WAIT, || {
        assert!(r.proc.running(), "the restart ended\n{}", r.describe());
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                c = Some(s);
                true
            }
            Err(_) => false,
        }
    });
    drop(c);
    r.line("closed 2");
    second(&mut r, port);
}
