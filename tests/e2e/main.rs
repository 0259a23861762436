//! End-to-end tests: real programs run under forkpoint, are checkpointed mid-work, killed
//! with SIGKILL, restarted from the image, and must finish with exactly the output of an
//! uninterrupted run.
//!
//! They need `cc`, `/usr/bin/python3`, `perl`, `xz` and `sha256sum` (`.ci/run` installs
//! them). Set `FORKPOINT_KEEP_TEST_DIRS=1` to keep the scratch directories for a look.

mod bad_input;
mod cli;
mod harness;
mod incremental;
mod kinds;
mod lazy;
mod preempt;
mod reliability;
mod runtimes;
mod threads;
mod trees;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};

use harness::*;

/// Makes a command line from the work directory.
type ArgvFn = Box<dyn Fn(&Path) -> Vec<OsString>>;

/// A program that paces itself and waits at `HOLD` for a `go` file in its work directory.
struct Paced {
    /// The command line, given the work directory (which holds the `go` file).
    argv: ArgvFn,
    /// Checkpoint once stdout has this many lines (before the hold step).
    checkpoint_after: usize,
    /// Files of the work directory to compare besides stdout and stderr.
    outputs: &'static [&'static str],
}

fn workload(t: &TestDir, steps: u32, delay_us: u32, hold: u32) -> Paced {
    let exe = compile_c(&t.path, "workload", WORKLOAD_C);
    Paced {
        argv: Box::new(move |dir: &Path| {
            vec![
                exe.clone().into(),
                dir.into(),
                steps.to_string().into(),
                delay_us.to_string().into(),
                hold.to_string().into(),
            ]
        }),
        checkpoint_after: (hold / 3) as usize,
        outputs: &["data.bin"],
    }
}

/// The seed the workload reads at start; tests change it after the checkpoint.
const SEED: &str = "4242\n";

/// Runs `p` uninterrupted in `t/ref`, returns that directory (its `prog.out`, ...).
fn reference(t: &TestDir, p: &Paced) -> PathBuf {
    let dir = t.sub("ref");
    fs::write(dir.join("go"), "").unwrap();
    fs::write(dir.join("seed"), SEED).unwrap();
    run_reference(&(p.argv)(&dir), &dir, &Io::in_dir(&dir, "prog"));
    dir
}

fn compare_outputs(reference: &Path, run: &Path, p: &Paced) {
    assert_same_file(&reference.join("prog.out"), &run.join("prog.out"));
    assert_same_file(&reference.join("prog.err"), &run.join("prog.err"));
    for f in p.outputs {
        assert_same_file(&reference.join(f), &run.join(f));
    }
}

/// Run under forkpoint, checkpoint mid-work, `kill -9`, restart, compare with `reference`.
fn roundtrip(t: &TestDir, p: &Paced) {
    let reference = reference(t, p);
    let run = run_dir(t);
    let images = t.sub("images");
    let io = Io::in_dir(&run, "prog");
    let mut proc = start_under_forkpoint(&(p.argv)(&run), &run, &images, &t.join("rt"), &io, &[]);
    wait_for_lines(&mut proc, &io.stdout, p.checkpoint_after);
    let image = checkpoint_ok(proc.pid);
    assert!(
        image.starts_with(&images),
        "image {image:?} is not in --dir {images:?}"
    );
    assert_killed(proc.kill9(), "the original program");
    assert!(
        count_lines(&io.stdout) < count_lines(&reference.join("prog.out")),
        "the killed program had already written all its output: the test proves nothing"
    );
    release(&run);
    restart_to_completion(&image, &Io::in_dir(&run, "restart"));
    compare_outputs(&reference, &run, p);
}

/// The directory of the run under forkpoint, with the seed in place.
fn run_dir(t: &TestDir) -> PathBuf {
    let run = t.sub("run");
    fs::write(run.join("seed"), SEED).unwrap();
    run
}

/// After the original was killed: let the program past its hold step, and change the seed
/// so that only a program restored from the image (not one started again) prints the
/// expected numbers.
fn release(run: &Path) {
    fs::write(run.join("go"), "").unwrap();
    fs::write(run.join("seed"), "7\n").unwrap();
}

#[test]
fn c_program_with_every_kind_of_memory() {
    let t = TestDir::new("c-program");
    let p = workload(&t, 400, 3000, 300);
    roundtrip(&t, &p);
}

#[test]
fn python_hash_chain() {
    hash_chain("/usr/bin/python3", "hashchain.py", HASHCHAIN_PY);
}

#[test]
fn perl_hash_chain() {
    hash_chain("perl", "hashchain.pl", HASHCHAIN_PL);
}

/// The same hash chain in a script language: `interpreter SCRIPT 300 2000 0.002 200 GO`.
fn hash_chain(interpreter: &'static str, file: &str, source: &str) {
    if !have_tool(interpreter) {
        return;
    }
    let t = TestDir::new(file);
    let script = t.join(file);
    fs::write(&script, source).unwrap();
    let p = Paced {
        argv: Box::new(move |dir: &Path| {
            vec![
                interpreter.into(),
                script.clone().into(),
                "300".into(),
                "2000".into(),
                "0.002".into(),
                "200".into(),
                dir.join("go").into(),
            ]
        }),
        checkpoint_after: 60,
        outputs: &[],
    };
    roundtrip(&t, &p);
}

/// A filter over a big generated file, checkpointed once it has read `at` bytes. The
/// output is cut back to the checkpoint's offset before the restart (the original may have
/// finished while the image was written), so only the restarted program can complete it.
fn filter_roundtrip(t: &TestDir, argv: &[OsString], input: &Path, at: u64) {
    let reference = t.sub("ref");
    let ref_io = Io::in_dir(&reference, "prog");
    run_reference(argv, &reference, &ref_io);

    let run = t.sub("run");
    let images = t.sub("images");
    let io = Io::in_dir(&run, "prog");
    let mut proc = start_under_forkpoint(argv, &run, &images, &t.join("rt"), &io, &[]);
    let image = checkpoint_at_read_position(&mut proc, input, at);
    let _ = proc.kill9();
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

#[test]
fn sha256sum_of_200_mb() {
    if !have_tool("sha256sum") {
        return;
    }
    let t = TestDir::new("sha256sum");
    let input = t.join("input.bin");
    generate(&t.path, &input, 200_000_000, "random", 1);
    let argv = vec![OsString::from("sha256sum"), input.clone().into()];
    filter_roundtrip(&t, &argv, &input, 60_000_000);
}

#[test]
fn xz_of_100_mb() {
    if !have_tool("xz") {
        return;
    }
    let t = TestDir::new("xz");
    let input = t.join("input.txt");
    generate(&t.path, &input, 100_000_000, "mixed", 2);
    let argv = vec![
        OsString::from("xz"),
        "-T1".into(),
        "-c".into(),
        input.clone().into(),
    ];
    filter_roundtrip(&t, &argv, &input, 40_000_000);
}

/// One image restarted twice gives the same result twice; two checkpoints of one run are
/// both restorable. Before each restart the output is cut back to the image's offset.
#[test]
fn restart_twice_and_two_checkpoints_of_one_run() {
    let t = TestDir::new("twice");
    let p = workload(&t, 400, 2000, 300);
    let reference = reference(&t, &p);
    let run = run_dir(&t);
    let images = t.sub("images");
    let io = Io::in_dir(&run, "prog");
    let mut proc = start_under_forkpoint(&(p.argv)(&run), &run, &images, &t.join("rt"), &io, &[]);
    wait_for_lines(&mut proc, &io.stdout, 80);
    let first = checkpoint_ok(proc.pid);
    wait_for_lines(&mut proc, &io.stdout, 200);
    let second = checkpoint_ok(proc.pid);
    assert_ne!(first, second, "two checkpoints must not share a file");
    assert_killed(proc.kill9(), "the original program");
    release(&run);

    let first_offset = saved_offset(&first, 1);
    let second_offset = saved_offset(&second, 1);
    assert!(
        first_offset < second_offset,
        "the second checkpoint was taken later"
    );
    for (round, (image, offset)) in [
        (&first, first_offset),
        (&first, first_offset),
        (&second, second_offset),
    ]
    .into_iter()
    .enumerate()
    {
        truncate_to(&io.stdout, offset);
        restart_to_completion(image, &Io::in_dir(&run, &format!("restart{round}")));
        compare_outputs(&reference, &run, &p);
    }
}

/// Plain `LD_PRELOAD=libforkpoint.so PROG` and `kill -s SIGRTMAX-2 PID`: the library
/// leaves `report.0` in the runtime directory.
#[test]
fn plain_preload_and_kill_signal() {
    let t = TestDir::new("plain");
    let p = workload(&t, 300, 3000, 200);
    let reference = reference(&t, &p);
    let run = run_dir(&t);
    let images = t.sub("images");
    let rt = t.join("rt");
    let io = Io::in_dir(&run, "prog");
    let argv = (p.argv)(&run);
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(&run)
        .env("LD_PRELOAD", library())
        .env("FORKPOINT_DIR", &images)
        .env("FORKPOINT_RUNTIME_DIR", &rt)
        .stdin(std::process::Stdio::null())
        .stdout(fs::File::create(&io.stdout).unwrap())
        .stderr(fs::File::create(&io.stderr).unwrap());
    let mut proc = Proc::new(cmd.spawn().unwrap(), "preloaded program");
    wait_for_lines(&mut proc, &io.stdout, 50);
    proc.signal(CHECKPOINT_SIGNAL);
    let report = rt.join(proc.pid.to_string()).join("report.0");
    wait_until("report.0", WAIT, || report.exists());
    let text = fs::read_to_string(&report).unwrap();
    assert!(text.lines().any(|l| l == "status=ok"), "report: {text}");
    let image = PathBuf::from(
        text.lines()
            .find_map(|l| l.strip_prefix("path="))
            .unwrap_or_else(|| panic!("report names no path: {text}")),
    );
    assert!(
        image.starts_with(&images),
        "image {image:?} not in FORKPOINT_DIR"
    );
    assert_killed(proc.kill9(), "the original program");
    release(&run);
    restart_to_completion(&image, &Io::in_dir(&run, "restart"));
    compare_outputs(&reference, &run, &p);
}

/// `forkpoint run --interval`: images appear by themselves; the newest restores.
#[test]
fn interval_checkpoints() {
    let t = TestDir::new("interval");
    let p = workload(&t, 300, 3000, 200);
    let reference = reference(&t, &p);
    let run = run_dir(&t);
    let images = t.sub("images");
    let io = Io::in_dir(&run, "prog");
    let mut proc = start_under_forkpoint(
        &(p.argv)(&run),
        &run,
        &images,
        &t.join("rt"),
        &io,
        &["--interval", "200ms"],
    );
    let finished_images = || -> Vec<PathBuf> {
        fs::read_dir(&images)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().and_then(|e| e.to_str()) != Some("tmp"))
            .collect()
    };
    wait_until("two interval images", WAIT, || {
        assert!(
            proc.running(),
            "the program ended before two interval checkpoints"
        );
        finished_images().len() >= 2
    });
    // Let the program reach its hold step, so it is mid-run when killed.
    wait_for_lines(&mut proc, &io.stdout, 199);
    assert_killed(proc.kill9(), "the original program");
    // Only whole images carry the final name: every one of them opens.
    let mut newest: Option<(u64, PathBuf)> = None;
    for img in finished_images() {
        let v = info_json(&img);
        assert_eq!(
            v["metadata"]["checkpoint"]["trigger"], "interval",
            "{img:?}"
        );
        let seq = v["metadata"]["checkpoint"]["seq"].as_u64().unwrap();
        if newest.as_ref().is_none_or(|(s, _)| seq > *s) {
            newest = Some((seq, img));
        }
    }
    let (_, image) = newest.unwrap();
    release(&run);
    truncate_to(&io.stdout, saved_offset(&image, 1));
    restart_to_completion(&image, &Io::in_dir(&run, "restart"));
    compare_outputs(&reference, &run, &p);
}

/// A restarted program can be checkpointed again (the library notices its new PID and
/// re-arms its trigger and channel), and that image restores too.
#[test]
fn checkpoint_of_a_restarted_program() {
    let t = TestDir::new("generations");
    let p = workload(&t, 300, 2000, 200);
    let reference = reference(&t, &p);
    let run = run_dir(&t);
    let images = t.sub("images");
    let io = Io::in_dir(&run, "prog");
    let mut proc = start_under_forkpoint(&(p.argv)(&run), &run, &images, &t.join("rt"), &io, &[]);
    wait_for_lines(&mut proc, &io.stdout, 50);
    let first = checkpoint_ok(proc.pid);
    assert_killed(proc.kill9(), "the original program");
    // Not released yet: the restarted program runs on to its hold step and waits there.
    truncate_to(&io.stdout, saved_offset(&first, 1));
    let restart_io = Io::in_dir(&run, "restart1");
    let mut restarted = start_restart(&first, &restart_io);
    wait_for_lines(&mut restarted, &io.stdout, 199);
    // --kill: the program is killed once its image is durable.
    let second = checkpoint(restarted.pid, &[OsStr::new("--kill")]).image();
    assert_killed(restarted.wait(WAIT), "the restarted program");
    let v = info_json(&second);
    assert_eq!(v["metadata"]["checkpoint"]["generation"], 1, "{second:?}");
    assert_eq!(v["metadata"]["process"]["pid"], restarted.pid);
    release(&run);
    restart_to_completion(&second, &Io::in_dir(&run, "restart2"));
    compare_outputs(&reference, &run, &p);
}

/// `forkpoint_checkpoint()` called by the program (examples/app_checkpoint.c): it returns
/// 0 when the image is written and 1 in the program restarted from it.
#[test]
fn checkpoint_requested_by_the_program() {
    let t = TestDir::new("api");
    let exe = compile_c(&t.path, "app_checkpoint", APP_CHECKPOINT_C);
    let argv = |dir: &Path| -> Vec<OsString> {
        vec![
            exe.clone().into(),
            "60".into(),
            "20".into(),
            dir.join("go").into(),
            "50".into(),
        ]
    };
    let reference = t.sub("ref");
    fs::write(reference.join("go"), "").unwrap();
    let ref_io = Io::in_dir(&reference, "prog");
    run_reference(&argv(&reference), &reference, &ref_io);

    let run = t.sub("run");
    let images = t.sub("images");
    let io = Io::in_dir(&run, "prog");
    let mut proc = start_under_forkpoint(&argv(&run), &run, &images, &t.join("rt"), &io, &[]);
    wait_for_lines(&mut proc, &io.stdout, 49);
    assert_eq!(
        fs::read_to_string(&io.stderr).unwrap(),
        "step 20: checkpoint written\nstep 40: checkpoint written\n"
    );
    assert_killed(proc.kill9(), "the original program");
    let mut by_seq = Vec::new();
    for e in fs::read_dir(&images).unwrap().flatten() {
        let v = info_json(&e.path());
        assert_eq!(v["metadata"]["checkpoint"]["trigger"], "api");
        by_seq.push((
            v["metadata"]["checkpoint"]["seq"].as_u64().unwrap(),
            e.path(),
        ));
    }
    by_seq.sort();
    assert_eq!(by_seq.len(), 2, "{by_seq:?}");
    fs::write(run.join("go"), "").unwrap();
    restart_to_completion(&by_seq[1].1, &Io::in_dir(&run, "restart"));
    assert_same_file(&ref_io.stdout, &io.stdout);
    assert_eq!(
        fs::read_to_string(&io.stderr).unwrap(),
        "step 20: checkpoint written\nstep 40: restarted from the checkpoint\n\
         step 60: checkpoint written\n"
    );
}
