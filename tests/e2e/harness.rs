//! What the end-to-end tests share: locating `forkpoint` and the library, scratch
//! directories, compiling the C test programs, running programs under forkpoint, waiting for
//! conditions (always bounded), checkpointing, restarting and comparing outputs.
//!
//! Tests own their processes: every child is killed by its PID and reaped when its handle
//! is dropped, so a failing test leaves nothing running.

#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Upper bound for any single wait: generous, because CI machines are small and shared.
pub const WAIT: Duration = Duration::from_secs(180);

pub const WORKLOAD_C: &str = include_str!("../programs/workload.c");
pub const GEN_C: &str = include_str!("../programs/gen.c");
/// CHECK/SETUP/wait_go/done of the zdtm-style programs, written next to every C source.
const ZDTM_H: &str = include_str!("../programs/zdtm.h");
pub const HASHCHAIN_PY: &str = include_str!("../programs/hashchain.py");
pub const HASHCHAIN_PL: &str = include_str!("../programs/hashchain.pl");
pub const APP_CHECKPOINT_C: &str = include_str!("../../examples/app_checkpoint.c");

/// The `forkpoint` binary: `$FORKPOINT_BIN` (for running a copied test binary, as CI does
/// for the unprivileged pass), else the one cargo built for these tests.
pub fn forkpoint() -> PathBuf {
    match std::env::var_os("FORKPOINT_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_forkpoint")),
    }
}

/// The library `forkpoint run` will preload; the tests fail (not skip) when it is missing.
pub fn library() -> PathBuf {
    if let Some(p) = std::env::var_os("FORKPOINT_LIB").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let bin = forkpoint();
    let dir = bin.parent().expect("forkpoint has a directory");
    for cand in [
        dir.join("libforkpoint.so"),
        dir.join("deps/libforkpoint.so"),
    ] {
        if cand.is_file() {
            return cand;
        }
    }
    panic!(
        "libforkpoint.so is not next to {} nor in its deps/: build the workspace \
         (`cargo test --workspace` does)",
        bin.display()
    );
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A scratch directory removed when dropped (kept if `FORKPOINT_KEEP_TEST_DIRS` is set).
pub struct TestDir {
    pub path: PathBuf,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let base = std::env::temp_dir();
        let path = base.join(format!(
            "forkpoint-test-{}-{}-{name}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create test dir");
        TestDir { path }
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }

    /// A subdirectory, created.
    pub fn sub(&self, p: &str) -> PathBuf {
        let d = self.path.join(p);
        fs::create_dir_all(&d).expect("create subdir");
        d
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("FORKPOINT_KEEP_TEST_DIRS").is_some() {
            eprintln!("keeping {}", self.path.display());
            return;
        }
        // A test may have left a read-only directory behind.
        let _ = Command::new("chmod")
            .arg("-R")
            .arg("u+rwx")
            .arg(&self.path)
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Compiles C `source` into `dir/name` with `cc -O2`.
pub fn compile_c(dir: &Path, name: &str, source: &str) -> PathBuf {
    compile_c_with(dir, name, source, &[])
}

/// [`compile_c`] with more compiler flags.
pub fn compile_c_with(dir: &Path, name: &str, source: &str, flags: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    fs::write(&src, source).expect("write C source");
    fs::write(dir.join("zdtm.h"), ZDTM_H).expect("write zdtm.h");
    let exe = dir.join(name);
    let out = Command::new("cc")
        .args(["-O2", "-Wall"])
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .arg("-lm")
        .output()
        .expect("run cc (is gcc installed?)");
    assert!(
        out.status.success(),
        "cc {name}.c failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// Writes `bytes` of deterministic data of `kind` (`random`, `text`, `mixed`) to `path`.
pub fn generate(dir: &Path, path: &Path, bytes: u64, kind: &str, seed: u32) {
    let gen = dir.join("gen");
    if !gen.exists() {
        compile_c(dir, "gen", GEN_C);
    }
    let out = File::create(path).expect("create generated file");
    let st = Command::new(&gen)
        .arg(bytes.to_string())
        .arg(kind)
        .arg(seed.to_string())
        .stdout(out)
        .status()
        .expect("run gen");
    assert!(st.success(), "gen failed");
}

/// A child process this test owns: killed by PID and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub pid: i32,
    pub what: String,
    reaped: Option<ExitStatus>,
}

impl Proc {
    pub fn new(child: Child, what: &str) -> Proc {
        Proc {
            pid: child.id() as i32,
            child,
            what: what.to_string(),
            reaped: None,
        }
    }

    /// Waits for the process to end, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(st) = self.reaped {
            return st;
        }
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            match self.child.try_wait().expect("try_wait") {
                Some(st) => {
                    self.reaped = Some(st);
                    return st;
                }
                None if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let st = self.child.wait().expect("wait");
                    self.reaped = Some(st);
                    panic!(
                        "{} (pid {}) did not finish within {timeout:?}; killed it",
                        self.what, self.pid
                    );
                }
                None => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
            }
        }
    }

    /// `kill -9` and reap; returns how it ended.
    pub fn kill9(&mut self) -> ExitStatus {
        if let Some(st) = self.reaped {
            return st;
        }
        // SAFETY: plain kill(2) on the PID of our own unreaped child.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let st = self.child.wait().expect("wait after kill");
        self.reaped = Some(st);
        st
    }

    pub fn signal(&self, sig: i32) {
        assert!(self.reaped.is_none(), "{} already reaped", self.what);
        // SAFETY: plain kill(2) on the PID of our own unreaped child.
        let r = unsafe { libc::kill(self.pid, sig) };
        assert_eq!(r, 0, "kill({}, {sig}) failed", self.pid);
    }

    pub fn running(&mut self) -> bool {
        self.reaped.is_none() && self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Where a program's output goes: stdout and stderr files (stdin is /dev/null).
pub struct Io {
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Io {
    pub fn in_dir(dir: &Path, prefix: &str) -> Io {
        Io {
            stdout: dir.join(format!("{prefix}.out")),
            stderr: dir.join(format!("{prefix}.err")),
        }
    }
}

fn apply_io(cmd: &mut Command, io: &Io) {
    // Plain O_TRUNC files (not O_APPEND): a restarted program writes on at its saved offset.
    cmd.stdin(Stdio::null())
        .stdout(File::create(&io.stdout).expect("create stdout file"))
        .stderr(File::create(&io.stderr).expect("create stderr file"));
}

/// Runs `argv` to completion without forkpoint (the reference run).
pub fn run_reference(argv: &[OsString], cwd: &Path, io: &Io) {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).current_dir(cwd);
    apply_io(&mut cmd, io);
    let mut p = Proc::new(cmd.spawn().expect("spawn reference run"), "reference run");
    let st = p.wait(WAIT);
    assert!(
        st.success(),
        "reference run of {argv:?} failed: {st}\n{}",
        read_lossy(&io.stderr)
    );
}

/// Starts `forkpoint run --dir IMAGES -- argv...`, with the runtime directory under `rt`.
pub fn start_under_forkpoint(
    argv: &[OsString],
    cwd: &Path,
    images: &Path,
    rt: &Path,
    io: &Io,
    extra: &[&str],
) -> Proc {
    let mut cmd = Command::new(forkpoint());
    cmd.arg("run")
        .arg("--dir")
        .arg(images)
        .args(extra)
        .arg("--");
    cmd.args(argv).current_dir(cwd);
    cmd.env("FORKPOINT_RUNTIME_DIR", rt);
    cmd.env_remove("FORKPOINT_LOG");
    apply_io(&mut cmd, io);
    library(); // fail clearly if it is missing
    Proc::new(
        cmd.spawn().expect("spawn forkpoint run"),
        "program under forkpoint",
    )
}

/// Runs a command to completion, at most `timeout`, capturing its output.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Output {
    let dir = TestDir::new("out");
    let (o, e) = (dir.join("stdout"), dir.join("stderr"));
    cmd.stdin(Stdio::null())
        .stdout(File::create(&o).unwrap())
        .stderr(File::create(&e).unwrap());
    let mut p = Proc::new(cmd.spawn().expect("spawn"), &format!("{cmd:?}"));
    let status = p.wait(timeout);
    Output {
        status,
        stdout: fs::read(&o).unwrap_or_default(),
        stderr: fs::read(&e).unwrap_or_default(),
    }
}

/// The result of `forkpoint checkpoint`.
pub struct Ckpt {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ckpt {
    pub fn image(&self) -> PathBuf {
        assert!(
            self.status.success(),
            "forkpoint checkpoint failed ({}): {}",
            self.status,
            self.stderr
        );
        let p = PathBuf::from(self.stdout.trim());
        assert!(
            p.is_absolute() && p.is_file(),
            "checkpoint printed {:?}, not the path of an image",
            self.stdout
        );
        p
    }
}

/// `forkpoint checkpoint [args] PID`. The CLI gets no FORKPOINT_RUNTIME_DIR of its own: it
/// must find the channel through the target's environment.
pub fn checkpoint(pid: i32, args: &[&OsStr]) -> Ckpt {
    let mut cmd = Command::new(forkpoint());
    cmd.arg("checkpoint")
        .args(["--timeout", "150s"])
        .args(args)
        .arg(pid.to_string());
    cmd.env_remove("FORKPOINT_RUNTIME_DIR");
    let out = output_within(&mut cmd, WAIT);
    Ckpt {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn checkpoint_ok(pid: i32) -> PathBuf {
    checkpoint(pid, &[]).image()
}

/// Starts `forkpoint restart IMAGE`; the restored program is this process.
pub fn start_restart(image: &Path, io: &Io) -> Proc {
    let mut cmd = Command::new(forkpoint());
    cmd.arg("restart").arg(image);
    apply_io(&mut cmd, io);
    Proc::new(
        cmd.spawn().expect("spawn forkpoint restart"),
        "restarted program",
    )
}

/// Restarts `image` and waits for the program to finish successfully.
pub fn restart_to_completion(image: &Path, io: &Io) {
    let mut p = start_restart(image, io);
    let st = p.wait(WAIT);
    assert!(
        st.success(),
        "restarted program from {} ended with {st}\nrestart stderr:\n{}",
        image.display(),
        read_lossy(&io.stderr)
    );
}

/// Polls `cond` until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

pub fn count_lines(path: &Path) -> usize {
    fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

/// Waits until `path` has at least `n` lines, while `proc` runs.
pub fn wait_for_lines(proc: &mut Proc, path: &Path, n: usize) {
    wait_until(&format!("{n} lines in {}", path.display()), WAIT, || {
        if !proc.running() {
            panic!(
                "{} exited before printing {n} lines (printed {})",
                proc.what,
                count_lines(path)
            );
        }
        count_lines(path) >= n
    });
}

pub fn read_lossy(p: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(p) {
        let mut b = Vec::new();
        let _ = f.read_to_end(&mut b);
        s = String::from_utf8_lossy(&b).into_owned();
    }
    if s.len() > 4000 {
        let cut = s.len() - 4000;
        let cut = (cut..s.len())
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(cut);
        s = format!("...{}", &s[cut..]);
    }
    s
}

/// Asserts that two files are identical, describing the first difference.
pub fn assert_same_file(expected: &Path, actual: &Path) {
    let a = fs::read(expected).unwrap_or_else(|e| panic!("read {}: {e}", expected.display()));
    let b = fs::read(actual).unwrap_or_else(|e| panic!("read {}: {e}", actual.display()));
    if a == b {
        return;
    }
    let first = a
        .iter()
        .zip(&b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let context = |v: &[u8]| {
        let lo = first.saturating_sub(120);
        let hi = (first + 120).min(v.len());
        String::from_utf8_lossy(&v[lo..hi]).into_owned()
    };
    panic!(
        "{} ({} bytes) and {} ({} bytes) differ first at byte {first}\nexpected: ...{:?}...\nactual:   ...{:?}...",
        expected.display(),
        a.len(),
        actual.display(),
        b.len(),
        context(&a),
        context(&b)
    );
}

/// Asserts the process ended by our SIGKILL, i.e. it was still running: the restart then
/// has work left to do.
pub fn assert_killed(st: ExitStatus, what: &str) {
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "{what} was expected to be still running when killed, but ended with {st}"
    );
}

/// `forkpoint info --json IMAGE`.
pub fn info_json(image: &Path) -> serde_json::Value {
    let out = output_within(
        Command::new(forkpoint())
            .args(["info", "--json"])
            .arg(image),
        WAIT,
    );
    assert!(
        out.status.success(),
        "forkpoint info --json {} failed: {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("info --json prints JSON")
}

/// The offset the image saved for descriptor `fd`.
pub fn saved_offset(image: &Path, fd: i64) -> u64 {
    let v = info_json(image);
    let fds = v["metadata"]["fds"].as_array().expect("fds array");
    let e = fds
        .iter()
        .find(|e| e["fd"].as_i64() == Some(fd))
        .unwrap_or_else(|| panic!("image has no descriptor {fd}"));
    e["offset"].as_u64().expect("offset")
}

/// Cuts `path` back to `len` bytes: what the program wrote after the checkpoint is gone, so
/// only a restart that really runs the program can make the file whole again.
pub fn truncate_to(path: &Path, len: u64) {
    let f = fs::OpenOptions::new().write(true).open(path).expect("open");
    f.set_len(len).expect("truncate");
}

/// The file position of the descriptor of `pid` open on `file`.
pub fn fd_position(pid: i32, file: &Path) -> Option<u64> {
    for e in fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if fs::read_link(e.path()).ok().as_deref() == Some(file) {
            let info = fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                e.file_name().to_string_lossy()
            ))
            .ok()?;
            return info
                .lines()
                .find_map(|l| l.strip_prefix("pos:"))
                .and_then(|v| v.trim().parse().ok());
        }
    }
    None
}

/// True if `sig` is pending for the process (shared or thread queue).
pub fn signal_pending(pid: i32, sig: i32) -> bool {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("ShdPnd:")
                .or_else(|| l.strip_prefix("SigPnd:"))
        })
        .filter_map(|v| u64::from_str_radix(v.trim(), 16).ok())
        .any(|m| m & (1u64 << (sig - 1)) != 0)
}

/// The library's default trigger signal (SIGRTMAX-2).
pub const CHECKPOINT_SIGNAL: i32 = 62;

/// Checkpoints a program that reads a big file, at a known point mid-way: once it has read
/// `at` bytes of `input` it is stopped, the request is queued, and it is continued, so the
/// checkpoint signal is the first thing it handles.
pub fn checkpoint_at_read_position(proc: &mut Proc, input: &Path, at: u64) -> PathBuf {
    let pid = proc.pid;
    wait_until(&format!("{} to read {at} bytes", proc.what), WAIT, || {
        assert!(
            proc.running(),
            "{} ended before reading {at} bytes",
            proc.what
        );
        fd_position(pid, input).is_some_and(|p| p >= at)
    });
    proc.signal(libc::SIGSTOP);
    wait_until("the program to stop", WAIT, || {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('T')
            })
            .unwrap_or(false)
    });
    let mut cmd = Command::new(forkpoint());
    cmd.arg("checkpoint")
        .args(["--timeout", "150s"])
        .arg(pid.to_string())
        .env_remove("FORKPOINT_RUNTIME_DIR");
    let dir = TestDir::new("ckpt");
    let (o, e) = (dir.join("stdout"), dir.join("stderr"));
    cmd.stdin(Stdio::null())
        .stdout(File::create(&o).unwrap())
        .stderr(File::create(&e).unwrap());
    let mut ck = Proc::new(
        cmd.spawn().expect("spawn checkpoint"),
        "forkpoint checkpoint",
    );
    wait_until("the checkpoint request to be queued", WAIT, || {
        if !ck.running() {
            panic!(
                "forkpoint checkpoint ended before queueing its signal: {}",
                read_lossy(&e)
            );
        }
        signal_pending(pid, CHECKPOINT_SIGNAL)
    });
    proc.signal(libc::SIGCONT);
    let st = ck.wait(WAIT);
    Ckpt {
        status: st,
        stdout: read_lossy(&o),
        stderr: read_lossy(&e),
    }
    .image()
}

/// Makes `dir` (and everything in it) readable by everyone, for tests run as another user.
pub fn open_up(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
}

/// Runs `forkpoint restart --eager` expecting a refusal: returns its stderr. Asserts that it
/// failed, and that the program did not run (`watch` did not change). Eager, because a
/// lazy restart (`FORKPOINT_RESTART=lazy`) finds a damaged chunk only when it fills it,
/// after the hand-over (that contract is `lazy::lazy_restart_kills_the_program_on_a_
/// damaged_chunk`'s); every other check is the same before a lazy hand-over.
pub fn restart_refused(image: &Path, io: &Io, watch: &Path) -> String {
    let before = fs::read(watch).unwrap_or_default();
    let mut cmd = Command::new(forkpoint());
    cmd.args(["restart", "--eager"]).arg(image);
    apply_io(&mut cmd, io);
    let mut p = Proc::new(cmd.spawn().expect("spawn forkpoint restart"), "restart");
    let st = p.wait(WAIT);
    let err = read_lossy(&io.stderr);
    assert!(
        !st.success(),
        "restart of {} should have been refused, but succeeded; stderr:\n{err}",
        image.display()
    );
    assert!(
        st.code().is_some(),
        "restart of {} should exit with an error, but died of {st}; stderr:\n{err}",
        image.display()
    );
    let after = fs::read(watch).unwrap_or_default();
    assert!(
        before == after,
        "restart of {} was refused, but the program ran: {} changed",
        image.display(),
        watch.display()
    );
    err
}

/// The kernel's XCR0: the xsave features this CPU and kernel enable.
pub fn xcr0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV with ECX=0 reads XCR0; it is available whenever the OS enables XSAVE,
    // which every x86-64 Linux this project supports does (the images need xsave frames).
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
                        options(nomem, nostack, preserves_flags));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

pub fn os(s: &str) -> OsString {
    OsString::from(s)
}

pub fn argv(parts: &[&dyn AsRef<OsStr>]) -> Vec<OsString> {
    parts.iter().map(|p| p.as_ref().to_os_string()).collect()
}

/// True if `tool` (a path, or a name on `PATH`) can be run. When it cannot, the test is
/// skipped with a printed reason — except under CI (`CI` set), where that is a failure:
/// `.ci/run` installs every tool the tests use.
pub fn have_tool(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let runnable = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if tool.contains('/') {
        runnable(Path::new(tool))
    } else {
        std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|d| runnable(&d.join(tool))))
            .unwrap_or(false)
    };
    if !found {
        let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
        assert!(!ci, "{tool} is not installed, and CI must run every test");
        skip(&format!(
            "{tool} is not installed (apt-get install the package that has it)"
        ));
    }
    found
}

/// Says why (part of) a test was skipped, on the real stderr: the test harness's capture
/// would hide it from a passing test's output, and a skip must be seen.
pub fn skip(why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIP: {why}");
}

/// Like `start_under_forkpoint`, with `env` added to the program's environment and `stdin`
/// as its standard input.
#[allow(clippy::too_many_arguments)]
pub fn start_under_forkpoint_with(
    argv: &[OsString],
    cwd: &Path,
    images: &Path,
    rt: &Path,
    io: &Io,
    extra: &[&str],
    env: &[(&str, &OsStr)],
    stdin: Stdio,
) -> Proc {
    let mut cmd = Command::new(forkpoint());
    cmd.arg("run")
        .arg("--dir")
        .arg(images)
        .args(extra)
        .arg("--");
    cmd.args(argv).current_dir(cwd);
    cmd.env("FORKPOINT_RUNTIME_DIR", rt);
    cmd.env_remove("FORKPOINT_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    apply_io(&mut cmd, io);
    cmd.stdin(stdin);
    library(); // fail clearly if it is missing
    Proc::new(
        cmd.spawn().expect("spawn forkpoint run"),
        "program under forkpoint",
    )
}

/// Runs `argv` to completion without forkpoint, with `env` added, writing `input` to its
/// standard input (a pipe, closed after `input`).
pub fn run_reference_with(
    argv: &[OsString],
    cwd: &Path,
    io: &Io,
    env: &[(&str, &OsStr)],
    input: &[u8],
) {
    use std::io::Write as _;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).current_dir(cwd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    apply_io(&mut cmd, io);
    cmd.stdin(Stdio::piped());
    let mut p = Proc::new(cmd.spawn().expect("spawn reference run"), "reference run");
    let mut stdin = p.child.stdin.take().expect("stdin pipe");
    stdin
        .write_all(input)
        .expect("write the reference run's input");
    drop(stdin);
    let st = p.wait(WAIT);
    assert!(
        st.success(),
        "reference run of {argv:?} failed: {st}\n{}",
        read_lossy(&io.stderr)
    );
}

/// Like `start_restart`, with `stdin` as the restored program's standard input.
pub fn start_restart_with_stdin(image: &Path, io: &Io, stdin: Stdio) -> Proc {
    let mut cmd = Command::new(forkpoint());
    cmd.arg("restart").arg(image);
    apply_io(&mut cmd, io);
    cmd.stdin(stdin);
    Proc::new(
        cmd.spawn().expect("spawn forkpoint restart"),
        "restarted program",
    )
}

/// The threads of `pid`: (TID, name from `comm`), sorted by TID.
pub fn threads_of(pid: i32) -> Vec<(i32, String)> {
    let mut v: Vec<(i32, String)> = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let tid: i32 = e.file_name().to_str()?.parse().ok()?;
                    let comm = fs::read_to_string(e.path().join("comm")).ok()?;
                    Some((tid, comm.trim_end().to_string()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The TID of the thread of `pid` named `name`, if there is one.
pub fn thread_named(pid: i32, name: &str) -> Option<i32> {
    threads_of(pid)
        .into_iter()
        .find(|(_, n)| n == name)
        .map(|(t, _)| t)
}

/// The system call thread `tid` of `pid` is blocked in (`/proc/PID/task/TID/syscall`),
/// None if it is running or gone.
pub fn thread_syscall(pid: i32, tid: i32) -> Option<i64> {
    let s = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// A line of `/proc/PID/task/TID/status` (e.g. `SigBlk:`) as a 64-bit signal set.
pub fn thread_sigset(pid: i32, tid: i32, field: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    let v = s.lines().find_map(|l| l.strip_prefix(field))?;
    u64::from_str_radix(v.trim(), 16).ok()
}
