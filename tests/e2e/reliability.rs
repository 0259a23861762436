//! Reliability and security (issue 6): many checkpoints under load, faults injected into
//! the writer, the directory and the loader, checkpoints requested while the program forks,
//! executes or exits, crafted images, planted symlinks, set-uid programs, other users.
//!
//! Every test shows the program running on (or restoring) with exactly the output of an
//! uninterrupted run, and each failure ending in a clear error. Random timings come from a
//! seeded generator: the seed is printed, and `FORKPOINT_TEST_SEED=N` repeats a run.
//! `FORKPOINT_SOAK=1000` runs the long soak (default: 100 checkpoints).
//! `docs/reliability.md` says which test shows which promise.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use forkpoint_image::build::{rewrite_metadata, sample_metadata, ImageBuilder};
use forkpoint_image::{
    crc32, encode_metadata, Compression, Contents, Footer, ImageFile, MappingKind,
    FIRST_CHUNK_OFFSET, FOOTER_LEN, METADATA_ENCODING_JSON, PAGE_SIZE,
};

use crate::harness::*;

const REL_SOAK_C: &str = include_str!("../programs/rel_soak.c");
const REL_BALLAST_C: &str = include_str!("../programs/rel_ballast.c");
const REL_FORKS_C: &str = include_str!("../programs/rel_forks.c");
const REL_SECURE_C: &str = include_str!("../programs/rel_secure.c");
const REL_FDS_C: &str = include_str!("../programs/rel_fds.c");

const SEED: &str = "4242\n";
/// The seed written after the original run: a restart that started the program over would
/// print other numbers.
const OTHER_SEED: &str = "7\n";

// ---------------------------------------------------------------------------------------
// Helpers.

/// A line on the real stderr (shown even for a passing test, like `skip`).
fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// xorshift64*, seeded from `FORKPOINT_TEST_SEED` or a fixed default; the seed is printed.
struct Rng(u64);

impl Rng {
    fn new(test: &str) -> Rng {
        let seed = std::env::var("FORKPOINT_TEST_SEED")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0x5eed_0006);
        note(&format!(
            "{test}: random seed {seed} (FORKPOINT_TEST_SEED={seed} repeats this run)"
        ));
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (0 if `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// (state, ppid) of `pid` from `/proc/PID/stat`.
fn stat_of(pid: i32) -> Option<(char, i32)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = s.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid))
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    stat_of(pid).is_some_and(|(s, _)| s != 'Z' && s != 'X')
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The live (non-zombie) children of `pid`. (`/proc/PID/task/*/children` needs
/// CONFIG_PROC_CHILDREN, which not every kernel has: scan every process's parent instead.)
fn children_of(pid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| stat_of(p).is_some_and(|(s, pp)| pp == pid && s != 'Z' && s != 'X'))
        .collect()
}

/// Live processes (other than this test process) whose command line mentions `needle`,
/// with that command line.
fn procs_mentioning(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter(|&p| p != me && alive(p))
        .filter_map(|p| {
            let raw = fs::read(format!("/proc/{p}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmd.contains(needle)
                .then(|| (p, cmd.trim_end().to_string()))
        })
        .collect()
}

/// Sends `sig` to our own child process `p` if it has not been reaped (a zombie keeps its
/// PID, so the signal cannot reach anyone else).
fn signal_own(p: &mut Proc, sig: i32) -> bool {
    if !p.running() {
        return false;
    }
    // SAFETY: kill with a PID we own and have not reaped; no memory is involved.
    unsafe { libc::kill(p.pid, sig) == 0 }
}

/// `forkpoint checkpoint`, started and left running.
struct PendingCkpt {
    proc: Proc,
    out: PathBuf,
    err: PathBuf,
    _dir: TestDir,
}

fn start_checkpoint(pid: i32, args: &[&OsStr]) -> PendingCkpt {
    let dir = TestDir::new("ckpt");
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut cmd = Command::new(forkpoint());
    cmd.arg("checkpoint");
    if !args.iter().any(|a| *a == "--timeout") {
        cmd.args(["--timeout", "150s"]);
    }
    cmd.args(args)
        .arg(pid.to_string())
        .env_remove("FORKPOINT_RUNTIME_DIR")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap());
    PendingCkpt {
        proc: Proc::new(
            cmd.spawn().expect("spawn checkpoint"),
            "forkpoint checkpoint",
        ),
        out,
        err,
        _dir: dir,
    }
}

impl PendingCkpt {
    fn finish(mut self) -> Ckpt {
        let status = self.proc.wait(WAIT);
        Ckpt {
            status,
            stdout: fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: fs::read_to_string(&self.err).unwrap_or_default(),
        }
    }
}

/// A command run to completion.
struct Measured {
    status: ExitStatus,
    elapsed: Duration,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` (stdin /dev/null) to completion, at most `timeout`, with its address space
/// limited to `as_limit` bytes if given (RLIMIT_AS: an attempt to allocate or map beyond
/// it fails instead of succeeding lazily).
fn run_measured(cmd: &mut Command, timeout: Duration, as_limit: Option<u64>) -> Measured {
    let dir = TestDir::new("measured");
    let (o, e) = (dir.join("stdout"), dir.join("stderr"));
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&o).unwrap())
        .stderr(fs::File::create(&e).unwrap());
    if let Some(limit) = as_limit {
        let set_limit = move || {
            let r = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: setrlimit with a valid struct; async-signal-safe, as pre_exec needs.
            if unsafe { libc::setrlimit(libc::RLIMIT_AS, &r) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: the closure only calls setrlimit (async-signal-safe) in the child.
        unsafe { cmd.pre_exec(set_limit) };
    }
    let t0 = Instant::now();
    let mut p = Proc::new(cmd.spawn().expect("spawn"), &format!("{cmd:?}"));
    let status = p.wait(timeout);
    Measured {
        status,
        elapsed: t0.elapsed(),
        stdout: String::from_utf8_lossy(&fs::read(&o).unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&fs::read(&e).unwrap_or_default()).into_owned(),
    }
}

/// `forkpoint info --json --verify IMAGE`: Ok(the JSON) if every chunk checks out.
fn verify_image(image: &Path) -> Result<serde_json::Value, String> {
    let out = output_within(
        Command::new(forkpoint())
            .args(["info", "--json", "--verify"])
            .arg(image),
        WAIT,
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(format!("info --verify exited with {}: {err}", out.status));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("info --json: {e}"))?;
    if v["verified"] != serde_json::Value::Bool(true) {
        return Err(format!("not verified: {}", v["verify_error"]));
    }
    Ok(v)
}

/// The saved offset of descriptor `fd` in `info --json` output.
fn json_offset(v: &serde_json::Value, fd: i64) -> Option<u64> {
    v["metadata"]["fds"]
        .as_array()?
        .iter()
        .find(|e| e["fd"].as_i64() == Some(fd))?["offset"]
        .as_u64()
}

fn assert_mentions(text: &str, case: &str, any_of: &[&str]) {
    let lower = text.to_lowercase();
    assert!(
        any_of.iter().any(|w| lower.contains(&w.to_lowercase())),
        "{case}: the message should say one of {any_of:?}, got:\n{text}"
    );
}

fn file_crc(p: &Path) -> u32 {
    crc32(&fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())))
}

fn write_seed(dir: &Path, seed: &str) {
    fs::write(dir.join("seed"), seed).unwrap();
}

/// A run directory with the seed, and the reference run of `argv(dir)` done in `t/ref`
/// (with `go` present, so it never holds). Returns (reference dir, its Io).
fn reference_run(t: &TestDir, argv: &dyn Fn(&Path) -> Vec<OsString>) -> (PathBuf, Io) {
    let dir = t.sub("ref");
    fs::write(dir.join("go"), "").unwrap();
    write_seed(&dir, SEED);
    let io = Io::in_dir(&dir, "prog");
    run_reference(&argv(&dir), &dir, &io);
    (dir, io)
}

/// The program `argv(t/run)` under forkpoint, seeded with SEED, images into `t/images`,
/// runtime directory `t/rt`: what most tests here start from.
struct Started {
    run: PathBuf,
    images: PathBuf,
    io: Io,
    proc: Proc,
}

fn start_seeded(t: &TestDir, argv: &dyn Fn(&Path) -> Vec<OsString>) -> Started {
    let run = t.sub("run");
    write_seed(&run, SEED);
    let images = t.sub("images");
    let io = Io::in_dir(&run, "prog");
    let proc = start_under_forkpoint(&argv(&run), &run, &images, &t.join("rt"), &io, &[]);
    Started {
        run,
        images,
        io,
        proc,
    }
}

fn ballast_argv(
    exe: &Path,
    dir: &Path,
    mb: u32,
    steps: u32,
    delay_us: u32,
    hold: u32,
) -> Vec<OsString> {
    argv(&[
        &exe,
        &dir,
        &mb.to_string(),
        &steps.to_string(),
        &delay_us.to_string(),
        &hold.to_string(),
    ])
}

/// The program's stdout and stderr in `run` equal the reference's.
fn assert_same_output(reference: &Io, io: &Io) {
    assert_same_file(&reference.stdout, &io.stdout);
    assert_same_file(&reference.stderr, &io.stderr);
}

/// Waits for the program to end by itself, successfully.
fn finishes_ok(proc: &mut Proc, io: &Io) {
    let st = proc.wait(WAIT);
    assert!(
        st.success(),
        "{} ended with {st}; its stderr:\n{}",
        proc.what,
        read_lossy(&io.stderr)
    );
}

/// The (uid, gid) of the unprivileged test user `fpuser`, created if missing (as root).
/// None, with a printed reason, when there is no such user and none can be made.
fn test_user(test: &str) -> Option<(u32, u32)> {
    if !is_root() {
        skip(&format!("{test}: needs root (the root CI pass runs it)"));
        return None;
    }
    let lookup = || -> Option<(u32, u32)> {
        let out = Command::new("id").arg("-u").arg("fpuser").output().ok()?;
        let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
        let out = Command::new("id").arg("-g").arg("fpuser").output().ok()?;
        let gid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
        Some((uid, gid))
    };
    if let Some(ids) = lookup() {
        return Some(ids);
    }
    let made = Command::new("useradd")
        .args(["--no-create-home", "--shell", "/usr/sbin/nologin", "fpuser"])
        .output();
    match made {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            // Another test may have created it meanwhile.
            if lookup().is_none() {
                skip(&format!(
                    "{test}: no user fpuser and useradd failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                return None;
            }
        }
        Err(e) => {
            skip(&format!(
                "{test}: no user fpuser and cannot run useradd: {e}"
            ));
            return None;
        }
    }
    let ids = lookup();
    if ids.is_none() {
        skip(&format!(
            "{test}: useradd fpuser succeeded but id cannot find it"
        ));
    }
    ids
}

// ---------------------------------------------------------------------------------------
// 1. Soak.

/// rel_soak writes record (b, w) at this record number of data.bin.
fn soak_record_slot(b: u64, w: u64, batches: u64) -> u64 {
    ((b * 3 + w) * 7919) % (batches * 3)
}

struct SoakImage {
    index: usize,
    path: PathBuf,
    stdout_offset: u64,
}

#[derive(Default)]
struct VerifyOutcome {
    verified: usize,
    lost: Vec<String>,
    kept: Vec<SoakImage>,
    mid_run: usize,
}

/// Verifies each image as it arrives; keeps every `every`th and the last, deletes the rest.
fn verify_stream(
    rx: mpsc::Receiver<(usize, PathBuf)>,
    every: usize,
    hold_offset: u64,
) -> VerifyOutcome {
    let mut o = VerifyOutcome::default();
    let mut pending: Option<SoakImage> = None;
    let mut last = 0;
    for (index, path) in rx {
        last = index;
        let v = if path.is_file() {
            verify_image(&path)
        } else {
            Err("the image is missing".into())
        };
        let stdout_offset = match v {
            Ok(v) => {
                o.verified += 1;
                json_offset(&v, 1).unwrap_or(0)
            }
            Err(why) => {
                o.lost
                    .push(format!("image {index} {}: {why}", path.display()));
                continue;
            }
        };
        if stdout_offset < hold_offset {
            o.mid_run += 1;
        }
        let img = SoakImage {
            index,
            path,
            stdout_offset,
        };
        if let Some(prev) = pending.take() {
            let _ = fs::remove_file(&prev.path);
        }
        if index % every == 0 {
            o.kept.push(img);
        } else {
            pending = Some(img);
        }
    }
    if let Some(p) = pending {
        if p.index == last {
            o.kept.push(p);
        } else {
            let _ = fs::remove_file(&p.path);
        }
    }
    o
}

/// Several threads allocating, writing a file and signalling each other, checkpointed every
/// ~50 ms (100 times; `FORKPOINT_SOAK=N` for N). Every image passes `info --verify`;
/// every 50th and the last are restarted and finish with the uninterrupted run's output;
/// the checkpointed run's own output is the uninterrupted run's.
#[test]
fn soak_checkpoints_under_load() {
    let n: usize = std::env::var("FORKPOINT_SOAK")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(100);
    let t0 = Instant::now();
    let t = TestDir::new("soak");
    let exe = compile_c(&t.path, "rel_soak", REL_SOAK_C);
    let mut batches = (n as u64 * 100).max(3000);
    while (batches * 3).is_multiple_of(7919) {
        batches += 1;
    }
    let hold = batches - 1;
    let soak_argv = |dir: &Path| -> Vec<OsString> {
        argv(&[&exe, &dir, &batches.to_string(), &"2000", &hold.to_string()])
    };
    let (_, ref_io) = reference_run(&t, &soak_argv);
    let ref_dir = t.join("ref");

    let run = t.sub("run");
    write_seed(&run, SEED);
    let images = t.sub("images");
    let rt = t.join("rt");
    let io = Io::in_dir(&run, "prog");
    let mut proc = start_under_forkpoint(&soak_argv(&run), &run, &images, &rt, &io, &[]);
    wait_for_lines(&mut proc, &io.stdout, 10);
    // An image whose stdout offset reached this was taken while the program held.
    let line_len = fs::read_to_string(&ref_io.stdout)
        .unwrap()
        .lines()
        .take(hold as usize)
        .map(|l| l.len() as u64 + 1)
        .sum::<u64>();

    let (tx, rx) = mpsc::channel();
    let verifier = std::thread::spawn(move || verify_stream(rx, 50, line_len));
    let mut inflight: VecDeque<PendingCkpt> = VecDeque::new();
    let mut requested = 0usize;
    let mut taken_ok = 0usize;
    let mut failed: Vec<String> = Vec::new();
    let mut next_at = Instant::now();
    let loop_start = Instant::now();
    let deadline = loop_start + Duration::from_secs(60 + 10 * n as u64);
    while requested < n || !inflight.is_empty() {
        assert!(
            proc.running(),
            "the program ended during the soak, after {requested} requests; its stderr:\n{}",
            read_lossy(&io.stderr)
        );
        assert!(
            Instant::now() < deadline,
            "the soak did not finish in time: {requested} requested, {taken_ok} written"
        );
        // Requests are answered in order (the library queues them): collect the oldest.
        if inflight.front_mut().is_some_and(|c| !c.proc.running()) {
            let ck = inflight.pop_front().unwrap().finish();
            if ck.status.success() {
                taken_ok += 1;
                tx.send((taken_ok, PathBuf::from(ck.stdout.trim())))
                    .unwrap();
            } else {
                failed.push(format!("{}: {}", ck.status, ck.stderr.trim()));
            }
            continue;
        }
        // At most two at once: one being written, one queued behind it.
        if requested < n && inflight.len() < 2 && Instant::now() >= next_at {
            // A request is answered within a second or two here; 15 s means it was lost.
            inflight.push_back(start_checkpoint(
                proc.pid,
                &[OsStr::new("--timeout"), OsStr::new("15s")],
            ));
            requested += 1;
            next_at = Instant::now() + Duration::from_millis(50);
            continue;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let ckpt_secs = loop_start.elapsed().as_secs_f64();
    drop(tx);
    let outcome = verifier.join().expect("verifier thread");

    // Let the original finish: its output is the uninterrupted run's.
    fs::write(run.join("go"), "").unwrap();
    finishes_ok(&mut proc, &io);
    assert_same_output(&ref_io, &io);
    assert_same_file(&ref_dir.join("data.bin"), &run.join("data.bin"));
    let leftovers: Vec<_> = fs::read_dir(&images)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".fpk"))
        .collect();
    let channel: Vec<_> = fs::read_dir(rt.join(proc.pid.to_string()))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("request.") || n.starts_with("report."))
                .collect()
        })
        .unwrap_or_default();

    // Restart the kept images; each must complete the run exactly.
    write_seed(&run, OTHER_SEED);
    let mut restarted = 0;
    for img in &outcome.kept {
        truncate_to(&io.stdout, img.stdout_offset);
        let printed = count_lines(&io.stdout) as u64;
        // Scribble over the records of the batches not yet started at the checkpoint.
        let mut data = fs::read(run.join("data.bin")).unwrap();
        for b in (printed + 1)..batches {
            for w in 0..3 {
                let at = (soak_record_slot(b, w, batches) * 256) as usize;
                data[at..at + 256].fill(b'#');
            }
        }
        fs::write(run.join("data.bin"), &data).unwrap();
        restart_to_completion(
            &img.path,
            &Io::in_dir(&run, &format!("restart{}", img.index)),
        );
        assert_same_file(&ref_io.stdout, &io.stdout);
        assert_same_file(&ref_dir.join("data.bin"), &run.join("data.bin"));
        restarted += 1;
    }

    let lost = outcome.lost.len();
    note(&format!(
        "soak: {requested} checkpoints requested, {taken_ok} taken, {} failed, {} verified, \
         {restarted} restarted, {lost} lost; {} of the verified taken mid-run; checkpoints \
         took {ckpt_secs:.1} s ({:.0} ms each), whole test {:.1} s",
        failed.len(),
        outcome.verified,
        outcome.mid_run,
        ckpt_secs * 1000.0 / n as f64,
        t0.elapsed().as_secs_f64()
    ));
    assert!(failed.is_empty(), "failed checkpoints: {failed:#?}");
    assert!(outcome.lost.is_empty(), "lost images: {:#?}", outcome.lost);
    assert_eq!(outcome.verified, taken_ok);
    assert_eq!(taken_ok, n);
    assert!(
        restarted >= n / 50,
        "only {restarted} images were restarted"
    );
    assert!(
        leftovers.is_empty(),
        "files other than images left in the image directory: {leftovers:?}"
    );
    assert!(
        channel.is_empty(),
        "requests or reports left in the runtime directory: {channel:?}"
    );
}

/// Requests that arrive while another checkpoint is pausing the program (its threads
/// stopped in their handlers, the signal blocked everywhere) or writing its image are
/// queued and answered: none is lost. Many requests in flight at once against the
/// multithreaded soak program make arrivals during a pause frequent.
#[test]
fn requests_arriving_during_a_checkpoint_are_not_lost() {
    let t = TestDir::new("burst");
    let exe = compile_c(&t.path, "rel_soak", REL_SOAK_C);
    let batches = 20_000u64;
    let args = |dir: &Path| -> Vec<OsString> {
        argv(&[
            &exe,
            &dir,
            &batches.to_string(),
            &"2000",
            &(batches - 1).to_string(),
        ])
    };
    let (_, ref_io) = reference_run(&t, &args);
    let Started {
        run,
        images: _,
        io,
        mut proc,
    } = start_seeded(&t, &args);
    wait_for_lines(&mut proc, &io.stdout, 10);

    let n = 24;
    let mut inflight: VecDeque<PendingCkpt> = VecDeque::new();
    let (mut ok, mut lost, mut refused) = (0, Vec::new(), Vec::new());
    let mut sent = 0;
    while sent < n || !inflight.is_empty() {
        assert!(
            proc.running(),
            "the program died: {}",
            read_lossy(&io.stderr)
        );
        if sent < n && inflight.len() < 6 {
            inflight.push_back(start_checkpoint(
                proc.pid,
                &[OsStr::new("--timeout"), OsStr::new("15s")],
            ));
            sent += 1;
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let ck = inflight.pop_front().unwrap().finish();
        if ck.status.success() {
            let image = ck.image();
            fs::remove_file(&image).unwrap();
            ok += 1;
        } else if ck.stderr.contains("timed out") {
            lost.push(ck.stderr.trim().to_string());
        } else {
            refused.push(ck.stderr.trim().to_string());
        }
    }
    note(&format!(
        "requests_arriving_during_a_checkpoint_are_not_lost: {n} requests, up to 6 at once: \
         {ok} images, {} refused, {} never answered (timed out after 15 s)",
        refused.len(),
        lost.len()
    ));
    fs::write(run.join("go"), "").unwrap();
    finishes_ok(&mut proc, &io);
    assert_same_output(&ref_io, &io);
    assert!(
        lost.is_empty(),
        "requests were never answered (the library dropped them): {lost:#?}"
    );
    assert!(refused.is_empty(), "requests were refused: {refused:#?}");
}

// ---------------------------------------------------------------------------------------
// 2. Faults injected.

/// The image writer of `pid`: its only child while a checkpoint is being written.
fn wait_for_writer(proc: &mut Proc, ck: &mut PendingCkpt) -> Option<i32> {
    let mut writer = None;
    wait_until("the image writer to start", WAIT, || {
        assert!(proc.running(), "the program died");
        writer = children_of(proc.pid).first().copied();
        writer.is_some() || !ck.proc.running()
    });
    writer
}

/// The writer child killed with SIGKILL at random points of the write: the checkpoint
/// fails with that reason, nothing carries the image's name, the program runs on, a later
/// checkpoint to the same name works, and the program finishes with the reference output.
#[test]
fn writer_killed_at_random_points() {
    let mut rng = Rng::new("writer_killed_at_random_points");
    let t = TestDir::new("writer-killed");
    let exe = compile_c(&t.path, "rel_ballast", REL_BALLAST_C);
    let args = |dir: &Path| ballast_argv(&exe, dir, 256, 100, 1000, 50);
    let (_, ref_io) = reference_run(&t, &args);

    let Started {
        run,
        images,
        io,
        mut proc,
    } = start_seeded(&t, &args);
    wait_for_lines(&mut proc, &io.stdout, 49);

    // How long a whole write takes here.
    let calib = images.join("calibration.fpk");
    let started = Instant::now();
    let ck = checkpoint(proc.pid, &[OsStr::new("--output"), calib.as_os_str()]);
    ck.image();
    let full = started.elapsed();
    fs::remove_file(&calib).unwrap();

    let rounds = 6;
    let (mut killed, mut finished_first, mut tmp_left) = (0, 0, Vec::new());
    let mut delays = Vec::new();
    for round in 0..rounds {
        let target = images.join(format!("killed-{round}.fpk"));
        let tmp = images.join(format!("killed-{round}.fpk.tmp"));
        let mut ck = start_checkpoint(proc.pid, &[OsStr::new("--output"), target.as_os_str()]);
        let writer = wait_for_writer(&mut proc, &mut ck);
        // Within the first 80% of a whole write's time: most kills land mid-write.
        let delay = Duration::from_millis(rng.below(full.as_millis() as u64 * 4 / 5));
        delays.push(delay.as_millis());
        std::thread::sleep(delay);
        let mut did_kill = false;
        if let Some(w) = writer {
            // Only if it is still the program's child (not reaped, not reused).
            if stat_of(w).is_some_and(|(s, pp)| pp == proc.pid && s != 'Z') {
                // SAFETY: kill of the program's writer child, checked just above.
                did_kill = unsafe { libc::kill(w, libc::SIGKILL) } == 0;
            }
        }
        let ck = ck.finish();
        assert!(
            proc.running(),
            "round {round}: the program died with its writer"
        );
        if did_kill && !ck.status.success() {
            killed += 1;
            assert!(ck.stdout.trim().is_empty(), "round {round}: printed a path");
            assert_mentions(&ck.stderr, "killed writer", &["killed by signal 9"]);
            assert_mentions(&ck.stderr, "killed writer", &["no image was written"]);
            assert!(
                !target.exists(),
                "round {round}: {} exists after the writer was killed (after {delay:?})",
                target.display()
            );
            if let Ok(md) = fs::symlink_metadata(&tmp) {
                assert_eq!(
                    md.mode() & 0o777,
                    0o600,
                    "the leftover {} is readable by others",
                    tmp.display()
                );
                tmp_left.push(tmp.clone());
            }
        } else {
            // The write finished before the kill: a whole, valid image.
            finished_first += 1;
            assert!(
                ck.status.success(),
                "round {round}: the checkpoint failed without its writer being killed: {}",
                ck.stderr
            );
            verify_image(&target).unwrap_or_else(|e| panic!("round {round}: {e}"));
            fs::remove_file(&target).unwrap();
        }
    }
    note(&format!(
        "writer_killed_at_random_points: a whole write takes {} ms; {rounds} rounds, kill \
         delays {delays:?} ms: {killed} writers killed, {finished_first} finished first; \
         {} left NAME.tmp behind",
        full.as_millis(),
        tmp_left.len()
    ));
    assert!(
        killed > 0,
        "no writer was killed mid-write: the test proved nothing"
    );

    // A later checkpoint to a name whose NAME.tmp was left behind replaces it.
    if let Some(tmp) = tmp_left.first() {
        let target = tmp.with_extension("");
        let image = checkpoint(proc.pid, &[OsStr::new("--output"), target.as_os_str()]).image();
        verify_image(&image).unwrap();
        assert!(!tmp.exists(), "{} is still there", tmp.display());
        fs::remove_file(&image).unwrap();
    }

    fs::write(run.join("go"), "").unwrap();
    finishes_ok(&mut proc, &io);
    assert_same_output(&ref_io, &io);
}

/// The directory of the image removed while the image is being written: a clear error,
/// no image anywhere, the program runs on and finishes with the reference output.
#[test]
fn directory_removed_while_writing() {
    let t = TestDir::new("dir-removed");
    let exe = compile_c(&t.path, "rel_ballast", REL_BALLAST_C);
    let args = |dir: &Path| ballast_argv(&exe, dir, 256, 100, 1000, 50);
    let (_, ref_io) = reference_run(&t, &args);

    let Started {
        run,
        images: _,
        io,
        mut proc,
    } = start_seeded(&t, &args);
    wait_for_lines(&mut proc, &io.stdout, 49);

    let doomed = t.sub("doomed");
    let target = doomed.join("image.fpk");
    let tmp = doomed.join("image.fpk.tmp");
    let mut ck = start_checkpoint(proc.pid, &[OsStr::new("--output"), target.as_os_str()]);
    wait_until("the writer to create image.fpk.tmp", WAIT, || {
        assert!(ck.proc.running(), "the checkpoint ended before writing");
        tmp.exists()
    });
    fs::remove_dir_all(&doomed).unwrap();
    let ck = ck.finish();
    assert!(
        !ck.status.success(),
        "the checkpoint succeeded although its directory was removed during the write \
         (did the write finish first?): {}",
        ck.stdout
    );
    assert_mentions(&ck.stderr, "directory removed", &["image.fpk"]);
    assert_mentions(&ck.stderr, "directory removed", &["no such file"]);
    assert!(!doomed.exists(), "the directory came back");
    assert!(proc.running(), "the program died with the checkpoint");

    // Still checkpointable, and unharmed.
    checkpoint_ok(proc.pid);
    fs::write(run.join("go"), "").unwrap();
    finishes_ok(&mut proc, &io);
    assert_same_output(&ref_io, &io);
}

/// Checkpoints requested again and again while the program forks, vforks, executes
/// children and reaps them: every request ends (bounded) in an image that verifies or a
/// clear error, and the program's output is the uninterrupted run's.
#[test]
fn checkpoints_while_forking_and_vforking() {
    let t = TestDir::new("forks");
    let exe = compile_c(&t.path, "rel_forks", REL_FORKS_C);
    let iters = 3000u32;
    let args = |dir: &Path| -> Vec<OsString> {
        argv(&[
            &exe,
            &"loop",
            &dir,
            &iters.to_string(),
            &"2000",
            &iters.to_string(),
        ])
    };
    let (_, ref_io) = reference_run(&t, &args);

    let Started {
        run,
        images: _,
        io,
        mut proc,
    } = start_seeded(&t, &args);
    wait_for_lines(&mut proc, &io.stdout, 5);
    let (mut ok, mut failed) = (0, Vec::new());
    let mut slowest = Duration::ZERO;
    for _ in 0..25 {
        let started = Instant::now();
        let ck = checkpoint(proc.pid, &[]);
        slowest = slowest.max(started.elapsed());
        assert!(
            proc.running(),
            "the program died: {}",
            read_lossy(&io.stderr)
        );
        if ck.status.success() {
            let image = ck.image();
            verify_image(&image).unwrap();
            fs::remove_file(&image).unwrap();
            ok += 1;
        } else {
            failed.push(ck.stderr.trim().to_string());
        }
    }
    let at = count_lines(&io.stdout);
    fs::write(run.join("go"), "").unwrap();
    finishes_ok(&mut proc, &io);
    assert_same_output(&ref_io, &io);
    note(&format!(
        "checkpoints_while_forking_and_vforking: {ok} images, {} failed, slowest request \
         {} ms; the program was at iteration {at} of {iters} after them",
        failed.len(),
        slowest.as_millis()
    ));
    assert!(failed.is_empty(), "failed checkpoints: {failed:#?}");
    assert!(
        (at as u32) < iters,
        "the program had finished its loop before the last checkpoint: the test proved less"
    );
}

/// The program executes itself again and again (same PID, same stdout), while
/// `forkpoint checkpoint` is asked for images: the program is never killed, every request
/// ends in an image or a clear error, and an image of a later generation restores.
#[test]
fn checkpoint_requests_during_execve() {
    let t = TestDir::new("exec-cli");
    let exe = compile_c(&t.path, "rel_forks", REL_FORKS_C);
    let args = |dir: &Path| -> Vec<OsString> {
        argv(&[&exe, &"chain", &dir, &"1", &"200", &"2", &"4000"])
    };
    let (_, ref_io) = reference_run(&t, &args);

    let Started {
        run,
        images: _,
        io,
        mut proc,
    } = start_seeded(&t, &args);
    wait_for_lines(&mut proc, &io.stdout, 1);
    let (mut images_ok, mut refused, mut other) = (Vec::new(), 0, Vec::new());
    while proc.running() {
        let ck = start_checkpoint(proc.pid, &[]).finish();
        if ck.status.success() {
            images_ok.push(PathBuf::from(ck.stdout.trim()));
        } else if [
            "does not have libforkpoint.so loaded",
            "does not catch",
            "no process",
            "exited",
            "is gone",
        ]
        .iter()
        .any(|m| ck.stderr.contains(m))
        {
            refused += 1;
        } else {
            other.push(ck.stderr.trim().to_string());
        }
    }
    let st = proc.wait(WAIT);
    note(&format!(
        "checkpoint_requests_during_execve: {} images, {refused} refused cleanly (mid-exec \
         or exited), {} other failures; program ended with {st}",
        images_ok.len(),
        other.len()
    ));
    assert!(
        st.success(),
        "the program was killed while checkpoints were requested during its execs: {st}"
    );
    assert_same_output(&ref_io, &io);
    assert!(
        other.is_empty(),
        "unexpected checkpoint failures: {other:#?}"
    );
    let last = images_ok.last().expect("no checkpoint succeeded");
    // The newest image: a later generation, restarted, runs the chain to its end. (The
    // seed stays: every later generation reads it again. A restart that started over would
    // print generation 1 at the image's offset.)
    truncate_to(&io.stdout, saved_offset(last, 1));
    restart_to_completion(last, &Io::in_dir(&run, "restart"));
    assert_same_file(&ref_io.stdout, &io.stdout);
}

/// The same with plain `kill -s SIGRTMAX-2 PID` (what a batch scheduler sends), every few
/// milliseconds, while the program executes itself: it must never be killed by it.
#[test]
fn checkpoint_signals_during_execve() {
    let t = TestDir::new("exec-signal");
    let exe = compile_c(&t.path, "rel_forks", REL_FORKS_C);
    let args = |dir: &Path| -> Vec<OsString> {
        argv(&[&exe, &"chain", &dir, &"1", &"200", &"2", &"4000"])
    };
    let (_, ref_io) = reference_run(&t, &args);

    let Started {
        run: _,
        images: _,
        io,
        mut proc,
    } = start_seeded(&t, &args);
    wait_for_lines(&mut proc, &io.stdout, 1);
    let mut sent = 0;
    while signal_own(&mut proc, CHECKPOINT_SIGNAL) {
        sent += 1;
        std::thread::sleep(Duration::from_millis(3));
    }
    let st = proc.wait(WAIT);
    let lines = count_lines(&io.stdout);
    note(&format!(
        "checkpoint_signals_during_execve: {sent} signals sent; program ended with {st} \
         after {lines} of {} lines",
        count_lines(&ref_io.stdout)
    ));
    assert!(
        st.success(),
        "the program was killed by the checkpoint signal while executing itself ({st}, \
         after {sent} signals, at line {lines}: {:?}): a signal that arrives during execve() \
         stays pending with its default action (terminate) until the new program's \
         libforkpoint installs its handler",
        fs::read_to_string(&io.stdout)
            .unwrap_or_default()
            .lines()
            .last()
            .unwrap_or("")
    );
    assert_same_output(&ref_io, &io);
}

/// A checkpoint taken while the program is inside exit() (in an atexit handler): the
/// restarted program completes its exit, handler output included.
#[test]
fn checkpoint_inside_exit_restores() {
    let t = TestDir::new("in-exit");
    let exe = compile_c(&t.path, "rel_ballast", REL_BALLAST_C);
    let args = |dir: &Path| -> Vec<OsString> {
        let mut a = ballast_argv(&exe, dir, 16, 20, 0, 0);
        a.push("exit-hold".into());
        a
    };
    let (_, ref_io) = reference_run(&t, &args);

    let Started {
        run,
        images: _,
        io,
        mut proc,
    } = start_seeded(&t, &args);
    wait_for_lines(&mut proc, &io.stdout, 21); // 20 steps, then "in the exit handler"
    let image = checkpoint_ok(proc.pid);
    assert_killed(proc.kill9(), "the program in its exit handler");
    fs::write(run.join("go"), "").unwrap();
    write_seed(&run, OTHER_SEED);
    truncate_to(&io.stdout, saved_offset(&image, 1));
    assert_eq!(count_lines(&io.stdout), 21);
    restart_to_completion(&image, &Io::in_dir(&run, "restart"));
    assert_same_output(&ref_io, &io);
}

/// The program exits while its image is being written (the writer is held with SIGSTOP
/// until the program has exited, then let go). Decided behaviour: the image completes, and
/// `forkpoint checkpoint` waits for the writer's report rather than for the program, so its
/// answer is the image, which verifies.
#[test]
fn program_exits_while_its_image_is_written() {
    let t = TestDir::new("exit-during-write");
    let exe = compile_c(&t.path, "rel_ballast", REL_BALLAST_C);
    let args = |dir: &Path| ballast_argv(&exe, dir, 64, 60, 0, 50);
    let (_, ref_io) = reference_run(&t, &args);

    let Started {
        run,
        images,
        io,
        mut proc,
    } = start_seeded(&t, &args);
    wait_for_lines(&mut proc, &io.stdout, 49);
    let target = images.join("exiting.fpk");
    let tmp = images.join("exiting.fpk.tmp");
    let mut ck = start_checkpoint(proc.pid, &[OsStr::new("--output"), target.as_os_str()]);
    let writer = wait_for_writer(&mut proc, &mut ck).expect("a writer");
    wait_until("the writer to create exiting.fpk.tmp", WAIT, || {
        tmp.exists()
    });
    let stopped = stat_of(writer).is_some_and(|(s, pp)| pp == proc.pid && s != 'Z')
        // SAFETY: SIGSTOP to the program's writer child, checked just above.
        && unsafe { libc::kill(writer, libc::SIGSTOP) } == 0;
    assert!(stopped, "the writer ended before it could be held");
    // Let the program finish now, while its image is being written.
    fs::write(run.join("go"), "").unwrap();
    finishes_ok(&mut proc, &io);
    assert_same_output(&ref_io, &io);
    // The program is gone; its writer (reparented) is held. Let it go: forkpoint checkpoint
    // waits for the writer, not for the program, and must answer with the image.
    let held = stat_of(writer).map(|(s, _)| s);
    if held == Some('T') || held == Some('t') {
        // SAFETY: the (stopped, so still existing) writer of our program.
        unsafe { libc::kill(writer, libc::SIGCONT) };
    }
    let ck = ck.finish();
    wait_until("the orphaned writer to end", WAIT, || !alive(writer));
    let tmp_left = tmp.exists();
    let on_disk = fs::metadata(&target).map(|m| m.len()).ok();
    note(&format!(
        "program_exits_while_its_image_is_written: writer state when checkpoint answered: \
         {held:?}; checkpoint said: {} {}; afterwards image: {on_disk:?} bytes, NAME.tmp left: \
         {tmp_left}",
        ck.status,
        ck.stderr.trim()
    ));
    assert!(
        ck.status.success(),
        "`forkpoint checkpoint` failed with\n  {}\nthough the writer went on after the program exited",
        ck.stderr.trim()
    );
    if ck.status.success() {
        let image = ck.image();
        verify_image(&image).unwrap();
        assert!(!tmp_left, "{} left behind", tmp.display());
    } else {
        let verifies = on_disk.map(|_| verify_image(&target).is_ok());
        assert!(
            on_disk.is_none(),
            "`forkpoint checkpoint` failed with\n  {}\nbut the writer (pid {writer}) went on \
             after the program exited and wrote {} ({} bytes, verifies: {:?}): forkpoint's \
             answer and the disk disagree",
            ck.stderr.trim(),
            target.display(),
            on_disk.unwrap(),
            verifies
        );
        assert!(!tmp_left, "{} left behind", tmp.display());
    }
}

/// `forkpoint restart` of a large image killed with SIGKILL at random moments before the
/// restore blob runs: no process is left behind, the image is unchanged, and it still
/// restores to the reference output.
#[test]
fn loader_killed_before_the_blob_runs() {
    let mut rng = Rng::new("loader_killed_before_the_blob_runs");
    let t = TestDir::new("loader-killed");
    let exe = compile_c(&t.path, "rel_ballast", REL_BALLAST_C);
    let args = |dir: &Path| ballast_argv(&exe, dir, 256, 100, 0, 50);
    let (_, ref_io) = reference_run(&t, &args);

    let Started {
        run,
        images: _,
        io,
        mut proc,
    } = start_seeded(&t, &args);
    wait_for_lines(&mut proc, &io.stdout, 49);
    let image = checkpoint_ok(proc.pid);
    assert_killed(proc.kill9(), "the original program");
    let offset = saved_offset(&image, 1);
    truncate_to(&io.stdout, offset);
    let crc = file_crc(&image);
    let md = fs::metadata(&image).unwrap();
    let needle = t.path.to_string_lossy().into_owned();
    let files_before: Vec<_> = {
        let mut v: Vec<_> = fs::read_dir(&run)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        v.sort();
        v
    };

    // Calibrate: how long until the loader hands over to the blob.
    let verbose = |round: &str| -> Proc {
        let mut cmd = Command::new(forkpoint());
        cmd.args(["restart", "-v"]).arg(&image);
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(run.join(format!("{round}.out"))).unwrap())
            .stderr(fs::File::create(run.join(format!("{round}.err"))).unwrap());
        Proc::new(cmd.spawn().unwrap(), "forkpoint restart")
    };
    let mut first = verbose("loader-calib");
    let calib_err = run.join("loader-calib.err");
    wait_until("the calibration restore to hand over", WAIT, || {
        assert!(
            first.running(),
            "the calibration restore ended: {}",
            read_lossy(&calib_err)
        );
        fs::read_to_string(&calib_err).is_ok_and(|s| s.contains("handing over"))
    });
    let handover_ms: f64 = fs::read_to_string(&calib_err)
        .unwrap()
        .lines()
        .find(|l| l.contains("handing over"))
        .and_then(|l| {
            l.split('[')
                .nth(1)?
                .split("ms]")
                .next()?
                .trim()
                .parse()
                .ok()
        })
        .expect("a timed handover line");
    // The restored program holds at step 50 (no `go`): it prints nothing more.
    wait_until("the restored program to run", WAIT, || {
        stat_of(first.pid).is_some_and(|(s, _)| s == 'S')
            && fs::read_link(format!("/proc/{}/exe", first.pid)).is_ok()
    });
    assert_killed(first.kill9(), "the restored program");

    let mut stages = Vec::new();
    for round in 0..8 {
        let name = format!("loader-{round}");
        // Two rounds in the first milliseconds (reading and verifying), the others anywhere
        // before the handover (mostly staging: decompression dominates).
        let span = if round < 2 {
            5_000
        } else {
            (handover_ms * 1000.0) as u64
        };
        let delay = Duration::from_micros(rng.below(span));
        let mut p = verbose(&name);
        std::thread::sleep(delay);
        let st = p.kill9();
        let err = read_lossy(&run.join(format!("{name}.err")));
        let stage = err
            .lines()
            .rev()
            .find(|l| l.contains("ms]"))
            .and_then(|l| l.split("ms]").nth(1))
            .unwrap_or(" (before reading the image)")
            .trim()
            .to_string();
        stages.push(format!("{} ms: {stage}", delay.as_millis()));
        assert!(
            st.signal() == Some(libc::SIGKILL) || st.code().is_some(),
            "round {round}: the loader ended with {st}"
        );
        wait_until(
            "no process of this test left",
            Duration::from_secs(10),
            || procs_mentioning(&needle).is_empty(),
        );
    }
    note(&format!(
        "loader_killed_before_the_blob_runs: handover after {handover_ms:.0} ms; killed at \
         {stages:#?}"
    ));
    let strays = procs_mentioning(&needle);
    assert!(strays.is_empty(), "processes left behind: {strays:?}");
    assert_eq!(file_crc(&image), crc, "the image changed");
    let md2 = fs::metadata(&image).unwrap();
    assert_eq!(
        (md2.len(), md2.mtime(), md2.mode()),
        (md.len(), md.mtime(), md.mode())
    );
    let files_after: Vec<_> = {
        let mut v: Vec<_> = fs::read_dir(&run)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| !n.to_string_lossy().starts_with("loader-"))
            .collect();
        v.sort();
        v
    };
    let before: Vec<_> = files_before
        .into_iter()
        .filter(|n| !n.to_string_lossy().starts_with("loader-"))
        .collect();
    assert_eq!(
        before, files_after,
        "files appeared in the program's directory"
    );

    // Still restorable, to the end.
    truncate_to(&io.stdout, offset);
    fs::write(run.join("go"), "").unwrap();
    write_seed(&run, OTHER_SEED);
    restart_to_completion(&image, &Io::in_dir(&run, "restart"));
    assert_same_output(&ref_io, &io);
}

/// Debug builds of the loader fail restore step N on request (FORKPOINT_TEST_FAIL_STEP):
/// the message names the step (number, count, what it does) and the exit code is 127;
/// the program does not run, and the image restores normally afterwards.
#[test]
fn restore_blob_failure_names_the_step() {
    if std::env::var_os("FORKPOINT_BIN").is_some_and(|v| !v.is_empty()) || !cfg!(debug_assertions) {
        skip("restore_blob_failure_names_the_step: FORKPOINT_TEST_FAIL_STEP works in debug builds only");
        return;
    }
    let t = TestDir::new("fail-step");
    let exe = compile_c(&t.path, "workload", WORKLOAD_C);
    let args = |dir: &Path| -> Vec<OsString> { argv(&[&exe, &dir, &"300", &"2000", &"200"]) };
    let (ref_dir, ref_io) = reference_run(&t, &args);
    let Started {
        run,
        images: _,
        io,
        mut proc,
    } = start_seeded(&t, &args);
    wait_for_lines(&mut proc, &io.stdout, 60);
    let image = checkpoint_ok(proc.pid);
    assert_killed(proc.kill9(), "the original program");
    fs::write(run.join("go"), "").unwrap();
    write_seed(&run, OTHER_SEED);
    let offset = saved_offset(&image, 1);
    let needle = t.path.to_string_lossy().into_owned();

    let fail = |step: usize| -> Measured {
        truncate_to(&io.stdout, offset);
        run_measured(
            Command::new(forkpoint())
                .args(["restart", "-v"])
                .arg(&image)
                .env("FORKPOINT_TEST_FAIL_STEP", step.to_string()),
            WAIT,
            None,
        )
    };
    // The step list a verbose restart prints (addresses differ from run to run: the
    // loader's own layout is randomized).
    let step_list = |stderr: &str| -> Vec<String> {
        stderr
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("forkpoint restart:")?.trim_start();
                let (n, what) = rest.strip_prefix("step ")?.split_once(": ")?;
                n.parse::<usize>().ok()?;
                Some(what.to_string())
            })
            .collect()
    };
    let first = fail(1);
    let m = step_list(&first.stderr).len();
    assert!(m > 5, "no step list in:\n{}", first.stderr);
    // The last step, rt_sigreturn, runs after the loader's error descriptor is closed
    // (step M-1): the kernel never returns an error from it (a bad frame is a SIGSEGV), so
    // an injected failure there can only be seen in the exit code.
    let mut last_message = String::new();
    for n in [1, 2, m / 2, m - 1, m] {
        let r = fail(n);
        let steps = step_list(&r.stderr);
        assert_eq!(steps.len(), m, "the number of steps changed:\n{}", r.stderr);
        // "thread T (name): what" in the list; "thread T (name) step N of M (what)" on failure.
        let (who, what) = steps[n - 1]
            .split_once("): ")
            .map(|(w, x)| (format!("{w})"), x.to_string()))
            .expect("a step named after its thread");
        let expect = format!("{who} step {n} of {m} ({what}) failed: errno 38");
        assert_eq!(
            r.status.code(),
            Some(127),
            "failing step {n} ({what}): exit {}; stderr:\n{}",
            r.status,
            r.stderr
        );
        if n == m {
            assert_eq!(what, "rt_sigreturn", "the last step");
            last_message = r
                .stderr
                .lines()
                .find(|l| l.contains("failed: errno"))
                .unwrap_or("(no message: the error descriptor is closed)")
                .to_string();
        } else {
            assert!(
                r.stderr.contains(&expect),
                "failing step {n}: expected {expect:?} in:\n{}",
                r.stderr
            );
        }
        assert_eq!(
            fs::metadata(&io.stdout).unwrap().len(),
            offset,
            "failing step {n}: the program ran"
        );
        let strays = procs_mentioning(&needle);
        assert!(
            strays.is_empty(),
            "failing step {n}: left behind {strays:?}"
        );
    }
    note(&format!(
        "restore_blob_failure_names_the_step: {m} steps; steps 1, 2, {}, {} named; failing \
         step {m} (rt_sigreturn): exit 127, {last_message}",
        m / 2,
        m - 1
    ));
    truncate_to(&io.stdout, offset);
    restart_to_completion(&image, &Io::in_dir(&run, "restart"));
    assert_same_output(&ref_io, &io);
    assert_same_file(&ref_dir.join("data.bin"), &run.join("data.bin"));
}

// ---------------------------------------------------------------------------------------
// 3. Hostile input.

/// Rebuilds image `bytes` with chunk `which` stored as the zstd frame `with` (its length,
/// compression and CRC updated, the chunks after it moved), then the metadata and footer.
fn replace_chunk(bytes: &[u8], which: usize, with: &[u8]) -> Vec<u8> {
    let img = ImageFile::from_bytes(bytes).expect("a valid image to start from");
    let mut meta = img.metadata.clone();
    let mut out = bytes[..FIRST_CHUNK_OFFSET as usize].to_vec();
    for (i, c) in meta.chunks.iter_mut().enumerate() {
        let data = if i == which {
            with.to_vec()
        } else {
            bytes[c.offset as usize..(c.offset + c.stored_len) as usize].to_vec()
        };
        if i == which {
            c.compression = Compression::Zstd;
        }
        if c.compression == Compression::None {
            out.resize((out.len() as u64).next_multiple_of(PAGE_SIZE) as usize, 0);
        }
        c.offset = out.len() as u64;
        c.stored_len = data.len() as u64;
        c.crc32 = crc32(&data);
        out.extend_from_slice(&data);
    }
    append_metadata(out, &encode_metadata(&meta))
}

fn append_metadata(mut out: Vec<u8>, mb: &[u8]) -> Vec<u8> {
    let footer = Footer {
        metadata_offset: out.len() as u64,
        metadata_len: mb.len() as u64,
        metadata_crc32: crc32(mb),
        metadata_encoding: METADATA_ENCODING_JSON,
        file_len: (out.len() + mb.len() + FOOTER_LEN) as u64,
    };
    out.extend_from_slice(mb);
    out.extend_from_slice(&footer.encode());
    out
}

/// Returns `bytes` with the footer `f` makes of the current one (its CRC recomputed).
fn rewrite_footer(bytes: &[u8], f: impl FnOnce(&mut Footer)) -> Vec<u8> {
    let at = bytes.len() - FOOTER_LEN;
    let mut fb = [0u8; FOOTER_LEN];
    fb.copy_from_slice(&bytes[at..]);
    let mut footer = Footer::decode_unchecked(&fb);
    f(&mut footer);
    let mut out = bytes.to_vec();
    out[at..].copy_from_slice(&footer.encode());
    out
}

type Case = (&'static str, Vec<u8>, &'static [&'static str]);

fn case(name: &'static str, bytes: Vec<u8>, words: &'static [&'static str]) -> Case {
    (name, bytes, words)
}

/// A zstd frame that inflates to 64 MiB of zeros (a few KiB stored).
fn zstd_bomb() -> Vec<u8> {
    let meta = sample_metadata();
    let start = meta.mappings[0].start;
    let raw = 64u64 << 20;
    let (bytes, m) = ImageBuilder::new(meta)
        .chunk_size(raw)
        .pages(start, &vec![0u8; raw as usize])
        .build_with_metadata();
    let c = &m.chunks[0];
    assert_eq!(c.raw_len, raw);
    bytes[c.offset as usize..(c.offset + c.stored_len) as usize].to_vec()
}

/// Crafted images — mappings and page runs outside user space, counts and lengths far
/// beyond any real image, offsets outside the file, a decompression bomb, resume addresses
/// in the kernel — are refused by `forkpoint restart` with a clear error, quickly, in
/// bounded memory, before the program runs; `forkpoint info --verify` refuses them too.
#[test]
fn crafted_images_are_refused() {
    let t = TestDir::new("crafted");
    let exe = compile_c(&t.path, "workload", WORKLOAD_C);
    let args = |dir: &Path| -> Vec<OsString> { argv(&[&exe, &dir, &"300", &"2000", &"200"]) };
    let (ref_dir, ref_io) = reference_run(&t, &args);
    let Started {
        run,
        images: _,
        io,
        mut proc,
    } = start_seeded(&t, &args);
    wait_for_lines(&mut proc, &io.stdout, 60);
    let image = checkpoint_ok(proc.pid);
    assert_killed(proc.kill9(), "the original program");
    fs::write(run.join("go"), "").unwrap();
    write_seed(&run, OTHER_SEED);
    let offset = saved_offset(&image, 1);
    truncate_to(&io.stdout, offset);

    let good = fs::read(&image).unwrap();
    let parsed = ImageFile::from_bytes(&good).unwrap();
    let meta = &parsed.metadata;
    let kernel = 0xffff_8000_0000_0000u64;
    let stack = meta
        .mappings
        .iter()
        .position(|m| matches!(m.kind, MappingKind::Stack))
        .expect("a stack mapping");
    let anon = meta
        .mappings
        .iter()
        .position(|m| matches!(m.kind, MappingKind::Anonymous) && m.contents == Contents::Stored)
        .expect("an anonymous mapping");
    // 64 TiB in a hole of the layout (between the executable's low addresses and the
    // libraries near the top).
    let (huge_start, huge_end) = (0x1000_0000_0000u64, 0x5000_0000_0000u64);
    assert!(
        meta.mappings
            .iter()
            .all(|m| m.end <= huge_start || m.start >= huge_end),
        "the layout has no hole for the huge mapping"
    );

    let bomb = zstd_bomb();
    let cases = vec![
        case(
            "mapping-beyond-user-space",
            rewrite_metadata(&good, |m| m.mappings[stack].end = 0x8000_0000_0000),
            &["outside user space"],
        ),
        case(
            "page-run-in-kernel-space",
            rewrite_metadata(&good, |m| {
                m.chunks[0].runs[0].addr = kernel;
            }),
            &["page run", "user space", "not inside a mapping"],
        ),
        case(
            "page-run-of-2^62-pages",
            rewrite_metadata(&good, |m| m.chunks[0].runs[0].pages = 1 << 62),
            &["page run"],
        ),
        case(
            "chunk-beyond-end-of-file",
            rewrite_metadata(&good, |m| m.chunks[0].offset = 1 << 40),
            &["outside the chunk area"],
        ),
        case(
            "chunk-length-wraps",
            rewrite_metadata(&good, |m| {
                let last = m.chunks.len() - 1;
                m.chunks[last].stored_len = u64::MAX - 100;
            }),
            &["outside the chunk area"],
        ),
        case(
            "chunk-of-1-TiB",
            rewrite_metadata(&good, |m| m.chunks[0].raw_len = 1 << 40),
            &["raw length"],
        ),
        case(
            "70000-threads",
            rewrite_metadata(&good, |m| {
                let t0 = m.threads[0].clone();
                m.threads = (0..70_000)
                    .map(|i| {
                        let mut th = t0.clone();
                        th.tid = 1_000_000 + i;
                        th
                    })
                    .collect();
            }),
            &["threads"],
        ),
        case(
            "100000-auxv-words",
            rewrite_metadata(&good, |m| m.mm.auxv = vec![0; 100_000]),
            &["auxv"],
        ),
        case(
            "resume-in-kernel-space",
            rewrite_metadata(&good, |m| m.threads[0].regs.rip = 0xffff_ffff_8100_0000),
            &["not a user address"],
        ),
        case(
            "signal-handler-in-kernel-space",
            rewrite_metadata(&good, |m| {
                if let Some(s) = m.signals.first_mut() {
                    s.handler = kernel;
                } else {
                    panic!("the workload image has no signal dispositions to change");
                }
            }),
            &["not a user address"],
        ),
        case(
            "restore-info-in-kernel-space",
            rewrite_metadata(&good, |m| m.library.restore_info_addr = kernel),
            &["restore_info"],
        ),
        case(
            "metadata-of-1-GiB",
            rewrite_footer(&good, |f| f.metadata_len = 1 << 30),
            &["exceeds the limit"],
        ),
        case(
            "metadata-beyond-end-of-file",
            rewrite_footer(&good, |f| f.metadata_offset = f.file_len + 4096),
            &["does not lie between"],
        ),
        case(
            "decompression-bomb",
            replace_chunk(&good, 0, &bomb),
            &["chunk 0"],
        ),
        case(
            "mapping-of-64-TiB",
            rewrite_metadata(&good, |m| {
                let mut big = m.mappings[anon].clone();
                big.start = huge_start;
                big.end = huge_end;
                big.name = String::new();
                let at = m.mappings.partition_point(|x| x.start < huge_start);
                m.mappings.insert(at, big);
            }),
            &["no free address range", "cannot", "memory"],
        ),
    ];

    let crafted = t.sub("crafted");
    let mut failures = Vec::new();
    let mut table = Vec::new();
    // The loader runs with 2 GiB of address space: plenty for this image (the control
    // below restores under the same limit), and an attempt to allocate without bound
    // fails instead of succeeding lazily.
    let limit = Some(2u64 << 30);
    for (name, bytes, words) in &cases {
        let p = crafted.join(format!("{name}.fpk"));
        fs::write(&p, bytes).unwrap();
        let r = run_measured(
            // Eager: a lazy restart checks the chunks after the hand-over (see lazy.rs).
            Command::new(forkpoint())
                .args(["restart", "--eager"])
                .arg(&p),
            Duration::from_secs(60),
            limit,
        );
        let first_line = r.stderr.lines().next().unwrap_or("").to_string();
        table.push(format!(
            "{name}: {} in {} ms: {first_line}",
            r.status,
            r.elapsed.as_millis()
        ));
        let ran = fs::metadata(&io.stdout).unwrap().len() != offset;
        let lower = r.stderr.to_lowercase();
        let problem = if ran {
            Some("the program ran".to_string())
        } else if r.status.code().is_none() {
            Some(format!("the loader died: {}", r.status))
        } else if r.status.success() {
            Some("restart succeeded".to_string())
        } else if !words.iter().any(|w| lower.contains(&w.to_lowercase())) {
            Some(format!("the error does not say one of {words:?}"))
        } else if r.elapsed > Duration::from_secs(30) {
            Some(format!("the loader took {:?}", r.elapsed))
        } else {
            None
        };
        if let Some(p) = problem {
            failures.push(format!("{name}: {p}; stderr:\n{}", r.stderr.trim()));
        }
        truncate_to(&io.stdout, offset);
        // `info --verify` reads and checks everything but the machine-dependent layout.
        let v = run_measured(
            Command::new(forkpoint()).args(["info", "--verify"]).arg(&p),
            Duration::from_secs(60),
            limit,
        );
        let loader_only = *name == "mapping-of-64-TiB";
        if v.status.code().is_none() || (!loader_only && v.status.success()) {
            failures.push(format!(
                "{name}: forkpoint info --verify ended with {}: {}",
                v.status,
                v.stderr.trim()
            ));
        }
    }
    note(&format!(
        "crafted_images_are_refused:\n  {}",
        table.join("\n  ")
    ));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // Control: the untouched image restores, under the same limit.
    truncate_to(&io.stdout, offset);
    let r = run_measured(
        Command::new(forkpoint()).arg("restart").arg(&image),
        WAIT,
        limit,
    );
    assert!(
        r.status.success(),
        "the untouched image: {}: {}",
        r.status,
        r.stderr
    );
    assert_same_output(&ref_io, &io);
    assert_same_file(&ref_dir.join("data.bin"), &run.join("data.bin"));
}

/// Descriptors numbered above the restarting shell's soft limit of open files. A program
/// that raised its own soft limit (within the hard one) and holds descriptor 5000 restores
/// from a shell whose soft limit is 1024; a crafted descriptor 2000000000, beyond any
/// limit, is refused with an error that names it.
#[test]
fn descriptors_above_the_open_file_limit() {
    let t = TestDir::new("fd-limit");
    let exe = compile_c(&t.path, "rel_fds", REL_FDS_C);
    let args = |dir: &Path| -> Vec<OsString> { argv(&[&exe, &dir, &"40", &"20", &"5000"]) };
    let (ref_dir, ref_io) = reference_run(&t, &args);
    let Started {
        run,
        images: _,
        io,
        mut proc,
    } = start_seeded(&t, &args);
    wait_for_lines(&mut proc, &io.stdout, 19);
    let image = checkpoint_ok(proc.pid);
    assert_killed(proc.kill9(), "the original program");
    fs::write(run.join("go"), "").unwrap();
    let offset = saved_offset(&image, 1);
    let high_offset = saved_offset(&image, 5000);
    let soft_1024 = |cmd: &mut Command| {
        let lower = || {
            let mut r = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit/setrlimit with a valid struct; async-signal-safe.
            unsafe {
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                r.rlim_cur = r.rlim_cur.min(1024);
                if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        };
        // SAFETY: the closure only calls getrlimit/setrlimit in the child.
        unsafe { cmd.pre_exec(lower) };
    };

    // Crafted: descriptor 2000000000 (beyond any limit) as well.
    let good = fs::read(&image).unwrap();
    let crafted = t.join("fd-2000000000.fpk");
    fs::write(
        &crafted,
        rewrite_metadata(&good, |m| {
            let mut fd = m.fds[0].clone();
            fd.fd = 2_000_000_000;
            m.fds.push(fd);
        }),
    )
    .unwrap();
    truncate_to(&io.stdout, offset);
    truncate_to(&run.join("high.txt"), high_offset);
    let mut cmd = Command::new(forkpoint());
    cmd.arg("restart").arg(&crafted);
    soft_1024(&mut cmd);
    let r = run_measured(&mut cmd, WAIT, None);
    let crafted_err = r.stderr.trim().to_string();
    assert_eq!(
        fs::metadata(&io.stdout).unwrap().len(),
        offset,
        "the program ran"
    );

    // The real image, from a shell with the usual soft limit of 1024.
    let mut cmd = Command::new(forkpoint());
    cmd.arg("restart").arg(&image);
    soft_1024(&mut cmd);
    let r = run_measured(&mut cmd, WAIT, None);
    note(&format!(
        "descriptors_above_the_open_file_limit: descriptor 2000000000: {crafted_err}; \
         descriptor 5000 with a soft limit of 1024: {}",
        if r.status.success() {
            "restored".to_string()
        } else {
            r.stderr.trim().to_string()
        }
    ));
    assert!(
        r.status.success(),
        "a program holding descriptor 5000 (it raised its soft RLIMIT_NOFILE, the hard \
         limit allows it) does not restore from a shell whose soft limit is 1024: {}",
        r.stderr.trim()
    );
    assert_same_output(&ref_io, &io);
    assert_same_file(&ref_dir.join("high.txt"), &run.join("high.txt"));
    assert!(
        crafted_err.contains("2000000000"),
        "the refusal of descriptor 2000000000 does not name it: {crafted_err}"
    );
}

/// Checkpoints a small workload (held mid-run) into `images`, kills it, and returns
/// (reference Io, run dir, run Io, image, saved stdout offset) with `go` present.
fn held_workload_image(t: &TestDir) -> (Io, PathBuf, Io, PathBuf, u64) {
    let exe = compile_c(&t.path, "workload", WORKLOAD_C);
    let args = |dir: &Path| -> Vec<OsString> { argv(&[&exe, &dir, &"300", &"2000", &"200"]) };
    let (_, ref_io) = reference_run(t, &args);
    let Started {
        run,
        images: _,
        io,
        mut proc,
    } = start_seeded(t, &args);
    wait_for_lines(&mut proc, &io.stdout, 60);
    let image = checkpoint_ok(proc.pid);
    assert_killed(proc.kill9(), "the original program");
    fs::write(run.join("go"), "").unwrap();
    write_seed(&run, OTHER_SEED);
    let offset = saved_offset(&image, 1);
    truncate_to(&io.stdout, offset);
    (ref_io, run, io, image, offset)
}

/// An image owned by another user is refused unless `--allow-foreign-owner` is given.
#[test]
fn foreign_owned_image_is_refused() {
    let Some((uid, gid)) = test_user("foreign_owned_image_is_refused") else {
        return;
    };
    let t = TestDir::new("foreign");
    let (ref_io, run, io, image, offset) = held_workload_image(&t);
    std::os::unix::fs::chown(&image, Some(uid), Some(gid)).unwrap();
    let rio = Io::in_dir(&run, "refused");
    let err = restart_refused(&image, &rio, &io.stdout);
    assert_mentions(&err, "image owned by fpuser", &["owned by"]);
    assert_eq!(fs::metadata(&io.stdout).unwrap().len(), offset);

    let mut cmd = Command::new(forkpoint());
    cmd.args(["restart", "--allow-foreign-owner"]).arg(&image);
    let out = Io::in_dir(&run, "allowed");
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&out.stdout).unwrap())
        .stderr(fs::File::create(&out.stderr).unwrap());
    let mut p = Proc::new(cmd.spawn().unwrap(), "restart --allow-foreign-owner");
    let st = p.wait(WAIT);
    assert!(st.success(), "{st}: {}", read_lossy(&out.stderr));
    assert_same_output(&ref_io, &io);
}

/// The `Uid:`, `Gid:`, `Groups:` and `CapEff:` lines of `/proc/PID/status`.
fn credentials_of(pid: i32) -> Option<(String, String, String, String)> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| -> Option<String> {
        Some(
            s.lines()
                .find_map(|l| l.strip_prefix(k))?
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        )
    };
    Some((
        field("Uid:")?,
        field("Gid:")?,
        field("Groups:")?,
        field("CapEff:")?,
    ))
}

/// An image taken by an unprivileged user (fpuser) and restored by root with
/// `--allow-foreign-owner` runs as that user, with no capabilities, never as root.
#[test]
fn root_restores_another_users_image_as_that_user() {
    let Some((uid, gid)) = test_user("root_restores_another_users_image_as_that_user") else {
        return;
    };
    let t = TestDir::new("as-user");
    open_up(&t.path);
    let exe = compile_c(&t.path, "workload", WORKLOAD_C);
    let args = |dir: &Path| -> Vec<OsString> { argv(&[&exe, &dir, &"300", &"2000", &"200"]) };
    let (_, ref_io) = reference_run(&t, &args);
    let run = t.sub("run");
    write_seed(&run, SEED);
    let images = t.sub("images");
    let rt = t.sub("rt");
    let io = Io::in_dir(&run, "prog");
    for p in [&run, &images, &rt] {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    }
    fs::set_permissions(&rt, fs::Permissions::from_mode(0o700)).unwrap();
    for f in [&io.stdout, &io.stderr, &run.join("seed")] {
        fs::write(f, if f.ends_with("seed") { SEED } else { "" }).unwrap();
        std::os::unix::fs::chown(f, Some(uid), Some(gid)).unwrap();
    }
    let as_user = |cmd: &mut Command| {
        cmd.uid(uid)
            .gid(gid)
            .env_remove("XDG_RUNTIME_DIR")
            .env("HOME", &run);
    };
    let mut cmd = Command::new(forkpoint());
    cmd.arg("run")
        .arg("--dir")
        .arg(&images)
        .arg("--")
        .args(args(&run));
    cmd.current_dir(&run)
        .env("FORKPOINT_RUNTIME_DIR", &rt)
        .env_remove("FORKPOINT_LOG")
        .stdin(Stdio::null())
        .stdout(fs::OpenOptions::new().write(true).open(&io.stdout).unwrap())
        .stderr(fs::OpenOptions::new().write(true).open(&io.stderr).unwrap());
    as_user(&mut cmd);
    let mut proc = Proc::new(cmd.spawn().unwrap(), "workload run by fpuser");
    wait_for_lines(&mut proc, &io.stdout, 60);
    let mut cmd = Command::new(forkpoint());
    cmd.args(["checkpoint", "--timeout", "150s"])
        .arg(proc.pid.to_string());
    as_user(&mut cmd);
    let ck = run_measured(&mut cmd, WAIT, None);
    assert!(ck.status.success(), "checkpoint as fpuser: {}", ck.stderr);
    let image = PathBuf::from(ck.stdout.trim());
    assert_killed(proc.kill9(), "the original program");
    let md = fs::metadata(&image).unwrap();
    assert_eq!(
        (md.uid(), md.mode() & 0o777),
        (uid, 0o600),
        "the image's owner and mode"
    );
    truncate_to(&io.stdout, saved_offset(&image, 1));

    // Root, without the option: refused.
    let err = restart_refused(&image, &Io::in_dir(&t.path, "refused"), &io.stdout);
    assert_mentions(&err, "fpuser's image restored by root", &["owned by"]);

    // With it: the restored program holds at step 200 (no `go` yet), as fpuser.
    let rio = Io::in_dir(&t.path, "allowed");
    let mut cmd = Command::new(forkpoint());
    cmd.args(["restart", "--allow-foreign-owner"]).arg(&image);
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&rio.stdout).unwrap())
        .stderr(fs::File::create(&rio.stderr).unwrap());
    let mut p = Proc::new(cmd.spawn().unwrap(), "restart --allow-foreign-owner");
    wait_for_lines(&mut p, &io.stdout, 199);
    let creds = credentials_of(p.pid).expect("the restored program's credentials");
    let (u, g) = (uid.to_string(), gid.to_string());
    assert_eq!(
        creds.0,
        [&u, &u, &u, &u].map(|s| s.as_str()).join(" "),
        "uids"
    );
    assert_eq!(
        creds.1,
        [&g, &g, &g, &g].map(|s| s.as_str()).join(" "),
        "gids"
    );
    assert!(!creds.2.split(' ').any(|x| x == "0"), "groups: {}", creds.2);
    assert_eq!(
        u64::from_str_radix(&creds.3, 16).ok(),
        Some(0),
        "effective capabilities: {}",
        creds.3
    );
    fs::write(run.join("go"), "").unwrap();
    let st = p.wait(WAIT);
    assert!(st.success(), "{st}: {}", read_lossy(&rio.stderr));
    assert_same_output(&ref_io, &io);
}

/// A symlink (or hard link, or directory) planted at NAME.tmp or at NAME: the checkpoint
/// never writes through it, the victim is unchanged, and the image is a fresh 0600 file.
#[test]
fn planted_links_are_not_followed() {
    let t = TestDir::new("planted");
    let exe = compile_c(&t.path, "workload", WORKLOAD_C);
    let args = |dir: &Path| -> Vec<OsString> { argv(&[&exe, &dir, &"300", &"2000", &"100"]) };
    let (ref_dir, ref_io) = reference_run(&t, &args);
    let Started {
        run,
        images,
        io,
        mut proc,
    } = start_seeded(&t, &args);
    wait_for_lines(&mut proc, &io.stdout, 99);

    let victims = t.sub("victims");
    let victim = victims.join("precious.txt");
    fs::write(&victim, "precious\n").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
    let unchanged = |case: &str| {
        assert_eq!(
            fs::read_to_string(&victim).unwrap(),
            "precious\n",
            "{case}: the victim was written"
        );
        let md = fs::metadata(&victim).unwrap();
        assert_eq!(
            md.mode() & 0o7777,
            0o644,
            "{case}: the victim's mode changed"
        );
        assert_eq!(md.nlink(), 1, "{case}: the victim gained a link");
    };
    let fresh_image = |case: &str, p: &Path| {
        let md = fs::symlink_metadata(p).unwrap();
        assert!(
            md.file_type().is_file(),
            "{case}: {} is not a plain file",
            p.display()
        );
        assert_eq!(md.mode() & 0o777, 0o600, "{case}: image mode");
        verify_image(p).unwrap_or_else(|e| panic!("{case}: {e}"));
        let tmp = PathBuf::from(format!("{}.tmp", p.display()));
        assert!(
            fs::symlink_metadata(&tmp).is_err(),
            "{case}: {} left",
            tmp.display()
        );
    };
    let ckpt_to = |p: &Path| checkpoint(proc.pid, &[OsStr::new("--output"), p.as_os_str()]);

    // A symlink at NAME.tmp to the victim.
    let a = images.join("a.fpk");
    std::os::unix::fs::symlink(&victim, images.join("a.fpk.tmp")).unwrap();
    let img = ckpt_to(&a).image();
    assert_eq!(img, a);
    unchanged("symlink at NAME.tmp");
    fresh_image("symlink at NAME.tmp", &a);

    // A dangling symlink at NAME.tmp: following it would create its target.
    let b = images.join("b.fpk");
    let target = victims.join("created-through-the-link");
    std::os::unix::fs::symlink(&target, images.join("b.fpk.tmp")).unwrap();
    ckpt_to(&b).image();
    assert!(
        !target.exists(),
        "the checkpoint created {}",
        target.display()
    );
    fresh_image("dangling symlink at NAME.tmp", &b);

    // A hard link to the victim at NAME.tmp (same file system).
    let c = images.join("c.fpk");
    fs::hard_link(&victim, images.join("c.fpk.tmp")).unwrap();
    ckpt_to(&c).image();
    unchanged("hard link at NAME.tmp");
    fresh_image("hard link at NAME.tmp", &c);

    // A symlink at the final name: the rename replaces the link, not its target.
    let d = images.join("d.fpk");
    std::os::unix::fs::symlink(&victim, &d).unwrap();
    ckpt_to(&d).image();
    unchanged("symlink at NAME");
    fresh_image("symlink at NAME", &d);

    // A directory at NAME.tmp: it cannot be removed, so the checkpoint fails cleanly.
    let e = images.join("e.fpk");
    let dir = images.join("e.fpk.tmp");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("inside"), "x").unwrap();
    let ck = ckpt_to(&e);
    assert!(
        !ck.status.success(),
        "a checkpoint through a directory at NAME.tmp succeeded"
    );
    assert_mentions(&ck.stderr, "directory at NAME.tmp", &["e.fpk.tmp"]);
    assert!(!e.exists());
    assert_eq!(fs::read_to_string(dir.join("inside")).unwrap(), "x");
    assert!(proc.running(), "the program died");

    fs::write(run.join("go"), "").unwrap();
    finishes_ok(&mut proc, &io);
    assert_same_output(&ref_io, &io);
    assert_same_file(&ref_dir.join("data.bin"), &run.join("data.bin"));
}

/// The value of `key` in `/proc/PID/auxv`.
fn auxv_value(pid: i32, key: u64) -> Option<u64> {
    let raw = fs::read(format!("/proc/{pid}/auxv")).ok()?;
    raw.chunks_exact(16).find_map(|c| {
        let k = u64::from_ne_bytes(c[..8].try_into().unwrap());
        let v = u64::from_ne_bytes(c[8..].try_into().unwrap());
        (k == key).then_some(v)
    })
}

fn catches(pid: i32, sig: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let v = s
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&v, 16).ok()
        })
        .is_some_and(|m| m & (1u64 << (sig - 1)) != 0)
}

/// A set-uid program (secure mode, AT_SECURE = 1) started with LD_PRELOAD: glibc ignores
/// the preload; and when the program dlopen()s the library itself, the library sees
/// AT_SECURE and does nothing (no handler, no runtime directory). Either way the program
/// runs normally and `forkpoint checkpoint` refuses it cleanly, without killing it.
#[test]
fn setuid_program_runs_without_the_library() {
    let Some((uid, gid)) = test_user("setuid_program_runs_without_the_library") else {
        return;
    };
    let t = TestDir::new("setuid");
    let exe = compile_c(&t.path, "rel_secure", REL_SECURE_C);
    let lib = library();
    for with_dlopen in [false, true] {
        let case = if with_dlopen {
            "LD_PRELOAD and dlopen"
        } else {
            "LD_PRELOAD"
        };
        let tag = if with_dlopen { "dlopen" } else { "preload" };
        let args = |dir: &Path, exe: &Path| -> Vec<OsString> {
            let mut a = argv(&[&exe, &dir, &"40", &"20"]);
            if with_dlopen {
                a.push(lib.clone().into());
            }
            a
        };
        let ref_dir = t.sub(&format!("ref-{tag}"));
        fs::write(ref_dir.join("go"), "").unwrap();
        let ref_io = Io::in_dir(&ref_dir, "prog");
        // The reference run: not set-uid, without LD_PRELOAD.
        run_reference(&args(&ref_dir, &exe), &ref_dir, &ref_io);

        let suid = t.join(&format!("rel_secure_suid_{tag}"));
        fs::copy(&exe, &suid).unwrap();
        std::os::unix::fs::chown(&suid, Some(uid), Some(gid)).unwrap();
        fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).unwrap();
        let run = t.sub(&format!("run-{tag}"));
        let images = t.sub(&format!("images-{tag}"));
        let rt = t.join(&format!("rt-{tag}"));
        let io = Io::in_dir(&run, "prog");
        let mut cmd = Command::new(&suid);
        cmd.args(&args(&run, &suid)[1..])
            .current_dir(&run)
            .env("LD_PRELOAD", &lib)
            .env("FORKPOINT_DIR", &images)
            .env("FORKPOINT_RUNTIME_DIR", &rt)
            .env("FORKPOINT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&io.stdout).unwrap())
            .stderr(fs::File::create(&io.stderr).unwrap());
        let mut proc = Proc::new(cmd.spawn().unwrap(), "set-uid program");
        wait_for_lines(&mut proc, &io.stdout, 19);
        assert_eq!(
            auxv_value(proc.pid, libc::AT_SECURE),
            Some(1),
            "{case}: the program is not in secure mode (nosuid mount?)"
        );
        let maps = fs::read_to_string(format!("/proc/{}/maps", proc.pid)).unwrap();
        assert_eq!(
            maps.contains("libforkpoint"),
            with_dlopen,
            "{case}: libforkpoint.so mapped: {}",
            maps.contains("libforkpoint")
        );
        assert!(
            !catches(proc.pid, CHECKPOINT_SIGNAL),
            "{case}: the library armed its checkpoint signal in a set-uid program"
        );
        let ck = checkpoint(proc.pid, &[]);
        assert!(
            !ck.status.success(),
            "{case}: checkpoint of a set-uid program succeeded"
        );
        assert_mentions(
            &ck.stderr,
            case,
            &["does not have libforkpoint.so loaded", "does not catch"],
        );
        assert!(
            proc.running(),
            "{case}: the checkpoint request killed the program"
        );
        assert!(
            !rt.join(proc.pid.to_string()).exists(),
            "{case}: the library made its runtime directory"
        );
        fs::write(run.join("go"), "").unwrap();
        finishes_ok(&mut proc, &io);
        assert_same_output(&ref_io, &io);
        assert!(
            fs::read_dir(&images).unwrap().next().is_none(),
            "{case}: files in the image directory"
        );
    }
}

/// Another (unprivileged) user cannot checkpoint a process of ours: `forkpoint checkpoint`
/// run as fpuser fails with a clear reason, and the process runs on untouched.
#[test]
fn checkpoint_request_from_another_user_is_refused() {
    let Some((uid, gid)) = test_user("checkpoint_request_from_another_user_is_refused") else {
        return;
    };
    let t = TestDir::new("other-user");
    open_up(&t.path);
    let exe = compile_c(&t.path, "workload", WORKLOAD_C);
    let args = |dir: &Path| -> Vec<OsString> { argv(&[&exe, &dir, &"300", &"2000", &"100"]) };
    let (_, ref_io) = reference_run(&t, &args);
    let run = t.sub("run");
    write_seed(&run, SEED);
    let images = t.sub("images");
    let rt = t.join("rt");
    let io = Io::in_dir(&run, "prog");
    let mut proc = start_under_forkpoint(&args(&run), &run, &images, &rt, &io, &[]);
    wait_for_lines(&mut proc, &io.stdout, 99);

    let home = t.sub("fpuser-home");
    std::os::unix::fs::chown(&home, Some(uid), Some(gid)).unwrap();
    let mut cmd = Command::new(forkpoint());
    cmd.args(["checkpoint", "--timeout", "10s"])
        .arg(proc.pid.to_string())
        .env_clear()
        .env("HOME", &home)
        .env("PATH", "/usr/bin:/bin")
        .uid(uid)
        .gid(gid);
    let r = run_measured(&mut cmd, WAIT, None);
    assert!(
        !r.status.success(),
        "another user's checkpoint succeeded: {}",
        r.stdout
    );
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert_mentions(
        &r.stderr,
        "checkpoint by another user",
        &["permission denied", "not permitted", "another user"],
    );
    assert!(proc.running(), "the program died");
    assert!(
        fs::read_dir(&images).unwrap().next().is_none(),
        "an image was written"
    );
    fs::write(run.join("go"), "").unwrap();
    finishes_ok(&mut proc, &io);
    assert_same_output(&ref_io, &io);
}

/// The control channel lives in a private runtime directory: one that another user owns,
/// or that others can enter, is refused by `forkpoint checkpoint` (others could forge
/// requests or read reports), and the program runs on untouched.
#[test]
fn runtime_directory_must_be_private() {
    let t = TestDir::new("rt-private");
    let exe = compile_c(&t.path, "workload", WORKLOAD_C);
    let args = |dir: &Path| -> Vec<OsString> { argv(&[&exe, &dir, &"300", &"2000", &"100"]) };
    let (_, ref_io) = reference_run(&t, &args);
    let run = t.sub("run");
    write_seed(&run, SEED);
    let images = t.sub("images");
    let rt = t.sub("rt");
    let io = Io::in_dir(&run, "prog");
    let mut proc = start_under_forkpoint(&args(&run), &run, &images, &rt, &io, &[]);
    wait_for_lines(&mut proc, &io.stdout, 99);

    // Others may enter it.
    fs::set_permissions(&rt, fs::Permissions::from_mode(0o755)).unwrap();
    let ck = checkpoint(proc.pid, &[]);
    assert!(
        !ck.status.success(),
        "a checkpoint through a mode 0755 runtime directory"
    );
    assert_mentions(
        &ck.stderr,
        "runtime dir mode 0755",
        &["mode 755", "must be 0700"],
    );
    assert!(proc.running());

    // Another user owns it (root only: chown).
    if let Some((uid, gid)) = test_user("runtime_directory_must_be_private (another owner)") {
        fs::set_permissions(&rt, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&rt, Some(uid), Some(gid)).unwrap();
        let ck = checkpoint(proc.pid, &[]);
        assert!(
            !ck.status.success(),
            "a checkpoint through fpuser's runtime directory"
        );
        assert_mentions(&ck.stderr, "runtime dir of fpuser", &["belongs to uid"]);
        assert!(proc.running());
        std::os::unix::fs::chown(&rt, Some(0), Some(0)).unwrap();
    }

    // Made private again: the checkpoint works.
    fs::set_permissions(&rt, fs::Permissions::from_mode(0o700)).unwrap();
    checkpoint_ok(proc.pid);
    assert!(
        fs::read_dir(&images).unwrap().count() == 1,
        "exactly one image: the refused requests wrote nothing"
    );
    fs::write(run.join("go"), "").unwrap();
    finishes_ok(&mut proc, &io);
    assert_same_output(&ref_io, &io);
}
