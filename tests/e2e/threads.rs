//! Multithreaded programs (issue 3): every thread is stopped for the checkpoint and every
//! thread is restored. Each test runs a real threaded program under forkpoint, checkpoints it
//! mid-work, kills the original with SIGKILL, restarts it from the image and compares its
//! output with an uninterrupted run, byte for byte.
//!
//! The programs read `seed` from their work directory once at start; the tests change it
//! after the checkpoint, so only a program restored from the image (not one started again)
//! prints the expected numbers.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

const THREADS_WORK_C: &str = include_str!("../programs/threads_work.c");
const RUST_THREADS_RS: &str = include_str!("../programs/rust_threads.rs");
const THREADS_PY: &str = include_str!("../programs/threads.py");
const THREAD_CHURN_C: &str = include_str!("../programs/thread_churn.c");
const THREADS_BLOCKED_C: &str = include_str!("../programs/threads_blocked.c");
const THREADS_STUBBORN_C: &str = include_str!("../programs/threads_stubborn.c");
const SIGNAL_HIDE_C: &str = include_str!("../programs/signal_hide.c");

/// The seed the programs read at start; the tests change it after the checkpoint.
const SEED: &str = "4242\n";
const NEW_SEED: &str = "7\n";

type ArgvFn<'a> = &'a dyn Fn(&Path) -> Vec<OsString>;

/// A work directory with the seed in place (and the `go` file, for a reference run).
fn work_dir(t: &TestDir, name: &str, go: bool) -> PathBuf {
    let d = t.sub(name);
    fs::write(d.join("seed"), SEED).unwrap();
    if go {
        fs::write(d.join("go"), "").unwrap();
    }
    d
}

/// After the original was killed: let the program past its hold step and change the seed.
fn release(run: &Path) {
    fs::write(run.join("go"), "").unwrap();
    fs::write(run.join("seed"), NEW_SEED).unwrap();
}

/// The names of the threads an image holds.
fn image_threads(image: &Path) -> Vec<String> {
    info_json(image)["metadata"]["threads"]
        .as_array()
        .expect("threads array")
        .iter()
        .map(|t| t["name"].as_str().unwrap_or("").to_string())
        .collect()
}

fn assert_image_has_threads(image: &Path, names: &[&str]) {
    let have = image_threads(image);
    for n in names {
        assert!(
            have.iter().any(|h| h == n),
            "image {} has no thread named {n}; its threads: {have:?}",
            image.display()
        );
    }
}

/// The common shape: reference run, run under forkpoint (with `env`), checkpoint once
/// stdout has `after` lines (after `inspect` looked at the live process), `kill -9`,
/// release, restart, compare stdout and stderr. Returns the image.
fn roundtrip(
    t: &TestDir,
    argv: ArgvFn,
    env: &[(&str, &OsStr)],
    after: usize,
    inspect: &dyn Fn(i32),
) -> PathBuf {
    let reference = work_dir(t, "ref", true);
    let ref_io = Io::in_dir(&reference, "prog");
    run_reference_with(&argv(&reference), &reference, &ref_io, env, b"");

    let run = work_dir(t, "run", false);
    let images = t.sub("images");
    let io = Io::in_dir(&run, "prog");
    let mut proc = start_under_forkpoint_with(
        &argv(&run),
        &run,
        &images,
        &t.join("rt"),
        &io,
        &[],
        env,
        Stdio::null(),
    );
    wait_for_lines(&mut proc, &io.stdout, after);
    inspect(proc.pid);
    let image = checkpoint_ok(proc.pid);
    assert_killed(proc.kill9(), "the original program");
    assert!(
        count_lines(&io.stdout) < count_lines(&ref_io.stdout),
        "the killed program had already written all its output: the test proves nothing"
    );
    release(&run);
    truncate_to(&io.stdout, saved_offset(&image, 1));
    restart_to_completion(&image, &Io::in_dir(&run, "restart"));
    assert_same_file(&ref_io.stdout, &io.stdout);
    assert_same_file(&ref_io.stderr, &io.stderr);
    image
}

fn threads_work(t: &TestDir, mode: &'static str) -> impl Fn(&Path) -> Vec<OsString> {
    let exe = compile_c(&t.path, "threads_work", THREADS_WORK_C);
    move |dir: &Path| {
        // 400 items in batches of 8 (about 4 ms of work each), 5 ms apart; hold at batch 30.
        let mut v = argv(&[&exe, &dir, &"400", &"8", &"5000", &"30"]);
        if !mode.is_empty() {
            v.push(mode.into());
        }
        v
    }
}

const WORKER_NAMES: &[&str] = &["worker-0", "worker-1", "worker-2", "worker-3"];

/// Four pthreads take turns at items through a mutex and condition variables; thread-local
/// (`__thread`) and thread-specific (`pthread_key`) data go into every result, the key's
/// destructors run when the restored workers exit, and `pthread_join` collects them.
#[test]
fn pthreads_mutex_condvar_tls() {
    let t = TestDir::new("pthreads");
    let argv = threads_work(&t, "");
    let image = roundtrip(&t, &argv, &[], 10, &|_| {});
    assert_image_has_threads(&image, WORKER_NAMES);
}

/// The same with workers that block every signal (sigfillset + pthread_sigmask) as they
/// start: the checkpoint still stops them, and they still read back a full mask, before
/// and after the restart.
#[test]
fn pthreads_that_block_all_signals() {
    let t = TestDir::new("pthreads-blockall");
    let argv = threads_work(&t, "blockall");
    let image = roundtrip(&t, &argv, &[], 10, &|pid| {
        // What the kernel applies: everything the workers asked for but the checkpoint
        // signal (the program itself checks that it reads back all blocked).
        for (tid, name) in threads_of(pid) {
            if !name.starts_with("worker-") {
                continue;
            }
            let blk = thread_sigset(pid, tid, "SigBlk:").expect("SigBlk");
            let bit = |s: i32| 1u64 << (s - 1);
            assert_eq!(
                blk & bit(CHECKPOINT_SIGNAL),
                0,
                "thread {tid} ({name}) has the checkpoint signal blocked in the kernel \
                 (SigBlk {blk:016x}): no checkpoint could stop it"
            );
            assert_ne!(
                blk & bit(libc::SIGUSR1),
                0,
                "thread {tid} ({name}): SIGUSR1 is not blocked (SigBlk {blk:016x}), \
                 the program's mask was not applied"
            );
        }
    });
    assert_image_has_threads(&image, WORKER_NAMES);
}

/// A restored program's threads get out of the restore at once. The restored leader waits
/// until every other thread has left the restore blob before it unmaps it; that wait must
/// end because they all said so, not because its deadline (10 s) passed. Measured from
/// `forkpoint restart` to the end of a run with about 0.2 s of work left; the bound, 5 s,
/// leaves room for a loaded machine.
#[test]
fn restored_threads_resume_without_a_stall() {
    let t = TestDir::new("pthreads-resume");
    let argv = threads_work(&t, "");
    let run = work_dir(&t, "run", false);
    let images = t.sub("images");
    let io = Io::in_dir(&run, "prog");
    let mut proc = start_under_forkpoint(&argv(&run), &run, &images, &t.join("rt"), &io, &[]);
    // The hold is at batch 30: checkpoint there, with 20 batches (about 0.2 s) left.
    wait_for_lines(&mut proc, &io.stdout, 30);
    let image = checkpoint_ok(proc.pid);
    assert_killed(proc.kill9(), "the original program");
    release(&run);
    truncate_to(&io.stdout, saved_offset(&image, 1));
    let t0 = Instant::now();
    restart_to_completion(&image, &Io::in_dir(&run, "restart"));
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the restarted program took {took:.1?} to do 0.2 s of work: its threads did not \
         resume at once ({} threads in the image)",
        image_threads(&image).len()
    );
}

/// The environment variable that makes this test binary run an embedded program (see
/// `run_embedded`).
const EMBEDDED: &str = "FORKPOINT_E2E_PROGRAM";

/// The Rust program, as a module, for when no `rustc` can be run (the unprivileged CI pass:
/// the toolchain is under /root).
#[allow(dead_code)]
#[path = "../programs/rust_threads.rs"]
mod rust_threads_program;

/// Runs before `main` in every process of this binary (an ELF constructor: glibc passes
/// argc, argv and envp). With `FORKPOINT_E2E_PROGRAM=rust_threads` the process is not the
/// test harness but the Rust threads program, whose arguments are argv[1..].
extern "C" fn run_embedded(argc: libc::c_int, argv: *const *const libc::c_char, _: *const u8) {
    // SAFETY: getenv is safe before main (glibc set environ before running constructors);
    // the result is only read, at once.
    let v = unsafe { libc::getenv(c"FORKPOINT_E2E_PROGRAM".as_ptr()) };
    // SAFETY: a non-null getenv result is a NUL-terminated string.
    if v.is_null() || unsafe { std::ffi::CStr::from_ptr(v) } != c"rust_threads" {
        return;
    }
    let args = (1..argc.max(1) as usize)
        .map(|i| {
            // SAFETY: argv has argc valid NUL-terminated strings.
            unsafe { std::ffi::CStr::from_ptr(*argv.add(i)) }
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    std::process::exit(rust_threads_program::run(args));
}

#[used]
#[link_section = ".init_array"]
static RUN_EMBEDDED: extern "C" fn(libc::c_int, *const *const libc::c_char, *const u8) =
    run_embedded;

/// The command line of the Rust threads program: built with `rustc -O` when rustc runs,
/// else this test binary running the same source (see `run_embedded`).
fn rust_program(t: &TestDir) -> (Vec<OsString>, Vec<(&'static str, OsString)>) {
    let rustc_runs = Command::new("rustc")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if rustc_runs {
        let src = t.join("rust_threads.rs");
        fs::write(&src, RUST_THREADS_RS).unwrap();
        let exe = t.join("rust_threads");
        let out = output_within(
            Command::new("rustc")
                .args(["-O", "--edition", "2021", "-o"])
                .arg(&exe)
                .arg(&src),
            WAIT,
        );
        assert!(
            out.status.success(),
            "rustc rust_threads.rs failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (vec![exe.into()], vec![])
    } else {
        // Said on the real stderr, like a skip: this run tests the embedded build only.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "NOTE: rustc cannot be run; the Rust threads program runs embedded in the test binary"
        );
        let me = std::env::current_exe().expect("current_exe");
        (vec![me.into()], vec![(EMBEDDED, "rust_threads".into())])
    }
}

/// `std::thread` workers fed through mpsc channels, a `thread_local!`, and scoped threads
/// created and joined every fourth step.
#[test]
fn rust_threads_and_channels() {
    let t = TestDir::new("rust-threads");
    let (prefix, env) = rust_program(&t);
    let env: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    let argv = move |dir: &Path| {
        let mut v = prefix.clone();
        v.extend(argv(&[&dir, &"150", &"10", &"100"]));
        v
    };
    let image = roundtrip(&t, &argv, &env, 30, &|_| {});
    assert_image_has_threads(
        &image,
        &[
            "rust-worker-0",
            "rust-worker-1",
            "rust-worker-2",
            "rust-worker-3",
        ],
    );
}

/// python3 with `threading` workers fed through queues, with `threading.local` state.
#[test]
fn python_threading_workers() {
    if !have_tool("/usr/bin/python3") {
        return;
    }
    let t = TestDir::new("python-threads");
    let script = t.join("threads.py");
    fs::write(&script, THREADS_PY).unwrap();
    let argv = move |dir: &Path| {
        argv(&[
            &"/usr/bin/python3",
            &script,
            &"200",
            &"300",
            &"0.005",
            &"150",
            &dir,
        ])
    };
    let image = roundtrip(&t, &argv, &[], 40, &|_| {});
    // Python 3.11 does not name its threads for the kernel: count them.
    let threads = image_threads(&image);
    assert!(
        threads.len() >= 5,
        "the image holds {} threads ({threads:?}), not the main thread and 4 workers",
        threads.len()
    );
}

/// `xz -T2` of 24 MB of text, in 2 MiB blocks so that both compressor threads work:
/// checkpointed once it has read 8 MB, the output cut back to the image's offset for stdout,
/// restarted; the .xz must be byte-identical to an uninterrupted run's.
#[test]
fn xz_with_two_threads() {
    if !have_tool("xz") {
        return;
    }
    let t = TestDir::new("xz-threads");
    let input = t.join("input.txt");
    generate(&t.path, &input, 24_000_000, "text", 3);
    let argv = argv(&[&"xz", &"-T2", &"-3", &"--block-size=2MiB", &"-c", &input]);
    let reference = t.sub("ref");
    let ref_io = Io::in_dir(&reference, "prog");
    run_reference(&argv, &reference, &ref_io);

    let run = t.sub("run");
    let images = t.sub("images");
    let io = Io::in_dir(&run, "prog");
    let mut proc = start_under_forkpoint(&argv, &run, &images, &t.join("rt"), &io, &[]);
    let image = checkpoint_at_read_position(&mut proc, &input, 8_000_000);
    let _ = proc.kill9();
    let threads = image_threads(&image);
    assert!(
        threads.len() >= 3,
        "xz -T2 had {} threads in the image ({threads:?}); the test means to catch its \
         main thread and two compressors",
        threads.len()
    );
    let offset = saved_offset(&image, 1);
    let full = fs::metadata(&ref_io.stdout).unwrap().len();
    assert!(
        offset < full,
        "the checkpoint saved stdout at {offset} of {full} bytes: it was not taken mid-work"
    );
    truncate_to(&io.stdout, offset);
    restart_to_completion(&image, &Io::in_dir(&run, "restart"));
    assert_same_file(&ref_io.stdout, &io.stdout);
    assert_same_file(&ref_io.stderr, &io.stderr);
}

/// Threads created and joined (and detached ones) continuously while `forkpoint checkpoint`
/// is called every 100 ms, 50 times. Every image verifies; the first, every tenth and the
/// last are restarted and must finish with the uninterrupted run's output.
#[test]
fn thread_churn_under_repeated_checkpoints() {
    const CHECKPOINTS: usize = 50;
    const STEPS: &str = "40";
    const HOLD: usize = 20;
    let t = TestDir::new("thread-churn");
    let exe = compile_c(&t.path, "thread_churn", THREAD_CHURN_C);
    let argv = |dir: &Path| argv(&[&exe, &dir, &STEPS, &HOLD.to_string()]);
    let reference = work_dir(&t, "ref", true);
    let ref_io = Io::in_dir(&reference, "prog");
    run_reference(&argv(&reference), &reference, &ref_io);

    let run = work_dir(&t, "run", false);
    let images = t.sub("images");
    let io = Io::in_dir(&run, "prog");
    let mut proc = start_under_forkpoint(&argv(&run), &run, &images, &t.join("rt"), &io, &[]);
    // Steps 0..HOLD printed: it churns now, until the go file exists.
    wait_for_lines(&mut proc, &io.stdout, HOLD);
    let started = Instant::now();
    let mut taken = Vec::new();
    let mut slowest = Duration::ZERO;
    for i in 0..CHECKPOINTS {
        let t0 = Instant::now();
        let ck = checkpoint(proc.pid, &[]);
        assert!(
            ck.status.success(),
            "checkpoint {} of {CHECKPOINTS} of the churning program failed ({}): {}",
            i + 1,
            ck.status,
            ck.stderr
        );
        taken.push(ck.image());
        slowest = slowest.max(t0.elapsed());
        assert!(
            proc.running(),
            "the churning program ended during checkpoint {}: {}",
            i + 1,
            read_lossy(&io.stderr)
        );
        // Pacing, not waiting for a condition: one request every 100 ms at most.
        if let Some(rest) = Duration::from_millis(100).checked_sub(t0.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    eprintln!(
        "{CHECKPOINTS} checkpoints of the churning program in {:.1?} (slowest {slowest:.1?})",
        started.elapsed()
    );
    assert_killed(proc.kill9(), "the churning program");
    let mut distinct = taken.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), CHECKPOINTS, "two checkpoints shared a file");
    release(&run);

    let restored = |i: usize| i == 0 || i % 10 == 9 || i + 1 == CHECKPOINTS;
    for (i, image) in taken.iter().enumerate() {
        if restored(i) {
            continue;
        }
        let v = info_json_verify(image);
        assert_eq!(
            v["verified"],
            true,
            "image {} ({} of {CHECKPOINTS}) does not verify: {}",
            image.display(),
            i + 1,
            v["verify_error"]
        );
    }
    for (i, image) in taken.iter().enumerate() {
        if !restored(i) {
            continue;
        }
        truncate_to(&io.stdout, saved_offset(image, 1));
        let t0 = Instant::now();
        restart_to_completion(image, &Io::in_dir(&run, &format!("restart{}", i + 1)));
        eprintln!(
            "image {} ({} threads) restored and finished in {:.1?}",
            i + 1,
            image_threads(image).len(),
            t0.elapsed()
        );
        assert_same_file(&ref_io.stdout, &io.stdout);
        assert_same_file(&ref_io.stderr, &io.stderr);
    }
}

/// `forkpoint info --json --verify IMAGE` (every chunk read and checked).
fn info_json_verify(image: &Path) -> serde_json::Value {
    let out = output_within(
        Command::new(forkpoint())
            .args(["info", "--json", "--verify"])
            .arg(image),
        WAIT,
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "forkpoint info --json --verify {} printed no JSON ({e}; {}): {}",
            image.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// What the blocked threads' stdin pipe carries: 5 bytes for fp-read, 5 for fp-poll.
const BLOCKED_INPUT: &[u8] = b"AAAA\nBBBB\n";

/// Threads blocked in futex (pthread_cond_wait), read on a pipe, poll, nanosleep, and read
/// on an internal pipe at the moment of the checkpoint; after the restart each goes on and
/// the program finishes as an uninterrupted run does. The read and poll threads wait on
/// stdin, a pipe the restarted program inherits; the internal pipe is restored as
/// /dev/null in this version (the restart says so), so its reader sees EOF and goes on.
#[test]
fn threads_blocked_in_futex_read_poll_nanosleep() {
    let t = TestDir::new("blocked");
    let exe = compile_c(&t.path, "threads_blocked", THREADS_BLOCKED_C);
    let argv = |dir: &Path| argv(&[&exe, &dir]);
    let reference = work_dir(&t, "ref", true);
    let ref_io = Io::in_dir(&reference, "prog");
    run_reference_with(&argv(&reference), &reference, &ref_io, &[], BLOCKED_INPUT);

    let run = work_dir(&t, "run", false);
    let images = t.sub("images");
    let io = Io::in_dir(&run, "prog");
    // stdin: a pipe nobody writes to, so fp-read and fp-poll stay blocked.
    let mut proc = start_under_forkpoint_with(
        &argv(&run),
        &run,
        &images,
        &t.join("rt"),
        &io,
        &[],
        &[],
        Stdio::piped(),
    );
    wait_for_lines(&mut proc, &io.stdout, 1);
    let pid = proc.pid;
    // (name, acceptable system calls): futex; read; poll or ppoll; clock_nanosleep or
    // nanosleep; read.
    let expected: &[(&str, &[i64])] = &[
        ("fp-futex", &[202]),
        ("fp-read", &[0]),
        ("fp-poll", &[7, 271]),
        ("fp-sleep", &[230, 35]),
        ("fp-pipe", &[0]),
    ];
    let blocked = || {
        expected.iter().all(|(name, calls)| {
            thread_named(pid, name)
                .and_then(|tid| thread_syscall(pid, tid))
                .is_some_and(|nr| calls.contains(&nr))
        })
    };
    wait_until("every thread blocked in its system call", WAIT, || {
        assert!(
            proc.running(),
            "the program ended: {}",
            read_lossy(&io.stderr)
        );
        blocked()
    });
    let image = checkpoint_ok(pid);
    assert_image_has_threads(
        &image,
        &["fp-futex", "fp-read", "fp-poll", "fp-sleep", "fp-pipe"],
    );
    assert_killed(proc.kill9(), "the original program");
    release(&run);
    truncate_to(&io.stdout, saved_offset(&image, 1));

    let restart_io = Io::in_dir(&run, "restart");
    let mut restarted = start_restart_with_stdin(&image, &restart_io, Stdio::piped());
    let rpid = restarted.pid;
    // The restored fp-read goes back into read(2) on its (new) stdin before it gets data.
    wait_until("the restored fp-read to block in read", WAIT, || {
        assert!(
            restarted.running(),
            "the restarted program ended before it was given its input: {}",
            read_lossy(&restart_io.stderr)
        );
        thread_named(rpid, "fp-read").and_then(|tid| thread_syscall(rpid, tid)) == Some(0)
    });
    {
        use std::io::Write as _;
        let mut stdin = restarted.child.stdin.take().expect("stdin pipe");
        stdin.write_all(BLOCKED_INPUT).unwrap();
    }
    let st = restarted.wait(WAIT);
    let restart_err = read_lossy(&restart_io.stderr);
    assert!(
        st.success(),
        "restarted program ended with {st}\n{restart_err}"
    );
    assert_same_file(&ref_io.stdout, &io.stdout);
    assert_same_file(&ref_io.stderr, &io.stderr);
    // An image that restores the internal pipe as /dev/null must say so at the restart.
    let meta = info_json(&image);
    for fd in [40, 41] {
        let entry = meta["metadata"]["fds"]
            .as_array()
            .expect("fds array")
            .iter()
            .find(|e| e["fd"] == fd)
            .unwrap_or_else(|| panic!("the image has no descriptor {fd}"))
            .clone();
        if entry["restore"]["how"] != "dev_null" {
            continue;
        }
        assert!(
            restart_err
                .lines()
                .any(|l| l.contains(&format!("descriptor {fd} (pipe:"))
                    && l.contains("restored as /dev/null")),
            "the image restores the internal pipe's descriptor {fd} as /dev/null ({}), but \
             the restart did not warn about it; its stderr:\n{restart_err}",
            entry["restore"]
        );
    }
}

/// Starts threads_stubborn under forkpoint with a 500 ms quiesce timeout, lets it reach its
/// first hold (step 10), and checks that a checkpoint fails there with an error naming
/// fp-stubborn, leaving no file behind and the program running. `unblock` is the step at
/// which fp-stubborn restores its mask (0: never). Returns the reference run's `Io`, the
/// run directory, its `Io`, the images directory and the program.
fn stubborn_until_failed_checkpoint(
    t: &TestDir,
    unblock: &str,
) -> (Io, PathBuf, Io, PathBuf, Proc) {
    let exe = compile_c(&t.path, "threads_stubborn", THREADS_STUBBORN_C);
    // 40 steps; waits for `go` at step 10 and for `go2` at step 30.
    let argv = |dir: &Path| argv(&[&exe, &dir, &"40", &"10", &unblock, &"30"]);
    let env: &[(&str, &OsStr)] = &[("FORKPOINT_QUIESCE_TIMEOUT", OsStr::new("500ms"))];
    let reference = work_dir(t, "ref", true);
    fs::write(reference.join("go2"), "").unwrap();
    let ref_io = Io::in_dir(&reference, "prog");
    run_reference_with(&argv(&reference), &reference, &ref_io, env, b"");

    let run = work_dir(t, "run", false);
    let images = t.sub("images");
    let io = Io::in_dir(&run, "prog");
    let mut proc = start_under_forkpoint_with(
        &argv(&run),
        &run,
        &images,
        &t.join("rt"),
        &io,
        &[],
        env,
        Stdio::null(),
    );
    wait_for_lines(&mut proc, &io.stdout, 9);
    let pid = proc.pid;
    let tid = thread_named(pid, "fp-stubborn").expect("the program has a thread fp-stubborn");
    let blk = thread_sigset(pid, tid, "SigBlk:").expect("SigBlk");
    assert_ne!(
        blk & (1u64 << (CHECKPOINT_SIGNAL - 1)),
        0,
        "fp-stubborn does not block the checkpoint signal (SigBlk {blk:016x}): the test \
         proves nothing"
    );
    // Twice: the first failure must leave the library ready for the next request.
    for attempt in 1..=2 {
        let t0 = Instant::now();
        let ck = checkpoint(pid, &[]);
        let took = t0.elapsed();
        assert!(
            !ck.status.success(),
            "checkpoint {attempt} of a program with a thread that blocks the checkpoint \
             signal succeeded: {}",
            ck.stdout
        );
        assert!(
            ck.stderr.contains(&format!("thread {tid}")) && ck.stderr.contains("fp-stubborn"),
            "the error of checkpoint {attempt} does not name the stuck thread {tid} \
             (fp-stubborn): {}",
            ck.stderr
        );
        assert!(
            took < Duration::from_secs(30),
            "failed checkpoint {attempt} took {took:?} with a 500 ms quiesce timeout"
        );
        let left: Vec<_> = fs::read_dir(&images)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(
            left.is_empty(),
            "a failed checkpoint left files behind: {left:?}"
        );
        assert!(
            proc.running(),
            "the program did not survive failed checkpoint {attempt}"
        );
    }
    (ref_io, run, io, images, proc)
}

/// A thread that blocks every signal with a raw rt_sigprocmask system call (which no
/// interposed function sees) cannot be stopped: with FORKPOINT_QUIESCE_TIMEOUT=500ms the
/// checkpoint fails with an error naming that thread's TID and name, twice in a row, no
/// image file appears, and the program runs on to the uninterrupted run's output.
#[test]
fn quiesce_timeout_names_the_thread_and_the_program_runs_on() {
    let t = TestDir::new("stubborn");
    let (ref_io, run, io, images, mut proc) = stubborn_until_failed_checkpoint(&t, "0");
    fs::write(run.join("go"), "").unwrap();
    fs::write(run.join("go2"), "").unwrap();
    let st = proc.wait(WAIT);
    assert!(
        st.success(),
        "the program ended with {st}: {}",
        read_lossy(&io.stderr)
    );
    assert_same_file(&ref_io.stdout, &io.stdout);
    assert_same_file(&ref_io.stderr, &io.stderr);
    let left: Vec<_> = fs::read_dir(&images)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        left.is_empty(),
        "images appeared nobody asked for: {left:?}"
    );
}

/// After the timeout above, the stuck thread still has the stop signal the leader sent it
/// pending. When it later unblocks (restores its old mask with the raw call, at step 20),
/// that stale signal must not start a checkpoint of its own; a checkpoint asked for then
/// succeeds, the program finishes with the right output, and the image restores.
#[test]
fn a_stuck_thread_that_unblocks_later_starts_no_checkpoint() {
    let t = TestDir::new("stubborn-unblocks");
    let (ref_io, run, io, images, mut proc) = stubborn_until_failed_checkpoint(&t, "20");
    // fp-stubborn unblocks at step 20; the main thread then waits at step 30.
    fs::write(run.join("go"), "").unwrap();
    wait_for_lines(&mut proc, &io.stdout, 29);
    let image = checkpoint_ok(proc.pid);
    assert_image_has_threads(&image, &["fp-stubborn", "fp-normal"]);
    // The original finishes by itself, with the uninterrupted run's output.
    fs::write(run.join("go2"), "").unwrap();
    let st = proc.wait(WAIT);
    assert!(
        st.success(),
        "the program ended with {st}: {}",
        read_lossy(&io.stderr)
    );
    assert_same_file(&ref_io.stdout, &io.stdout);
    assert_same_file(&ref_io.stderr, &io.stderr);
    // The image taken once the thread had unblocked restores.
    fs::write(run.join("seed"), NEW_SEED).unwrap();
    truncate_to(&io.stdout, saved_offset(&image, 1));
    restart_to_completion(&image, &Io::in_dir(&run, "restart"));
    assert_same_file(&ref_io.stdout, &io.stdout);
    assert_same_file(&ref_io.stderr, &io.stderr);

    let others: Vec<String> = fs::read_dir(&images)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| *p != image)
        .map(|p| {
            let v = info_json(&p);
            let c = &v["metadata"]["checkpoint"];
            let leader = &v["metadata"]["threads"][0];
            format!(
                "{} (trigger {}, seq {}, first thread {} {})",
                p.display(),
                c["trigger"],
                c["seq"],
                leader["tid"],
                leader["name"]
            )
        })
        .collect();
    assert!(
        others.is_empty(),
        "besides the image asked for ({}), the images directory holds {others:?}: the stop \
         signal left pending on fp-stubborn by the abandoned quiesce was taken as a new \
         checkpoint trigger when the thread unblocked",
        image.display()
    );
}

/// The program installs its own handler for the checkpoint signal (62) and blocks it, in
/// the main thread and in a thread waiting in sigwait: it reads back what it set, before
/// and after the restart, its handler never runs, and still the checkpoint succeeds.
#[test]
fn the_program_cannot_hide_from_the_checkpoint_signal() {
    let t = TestDir::new("signal-hide");
    let exe = compile_c(&t.path, "signal_hide", SIGNAL_HIDE_C);
    let argv = |dir: &Path| argv(&[&exe, &dir, &"60", &"30"]);
    roundtrip(&t, &argv, &[], 12, &|pid| {
        // What the kernel applies: the library's handler is installed and no thread has
        // the checkpoint signal blocked. (Not SIGUSR1: while fp-sigwait waits for it in
        // rt_sigtimedwait, the kernel unblocks it.)
        let bit = |s: i32| 1u64 << (s - 1);
        for (tid, name) in threads_of(pid) {
            let cgt = thread_sigset(pid, tid, "SigCgt:").expect("SigCgt");
            assert_ne!(cgt & bit(CHECKPOINT_SIGNAL), 0, "signal 62 is not caught");
            let blk = thread_sigset(pid, tid, "SigBlk:").expect("SigBlk");
            assert_eq!(
                blk & bit(CHECKPOINT_SIGNAL),
                0,
                "thread {tid} ({name}) has the checkpoint signal blocked in the kernel \
                 (SigBlk {blk:016x})"
            );
        }
    });
}
