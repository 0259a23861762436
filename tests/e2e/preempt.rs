//! Preemption: `forkpoint run --on-term checkpoint` checkpoints a program when it gets
//! SIGTERM, waits until the image is durable and then lets SIGTERM do what the program
//! chose; `--resume-from DIR` restarts the newest valid image or starts afresh; `ls` and
//! `rm --keep`; and the recipes of examples/slurm and examples/systemd driven with the
//! SIGTERM-then-SIGKILL sequence schedulers use.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

const JOB_C: &str = include_str!("../programs/preempt_job.c");
const TREE_API_C: &str = include_str!("../programs/tree_api.c");

/// The job of the Slurm tests, `tree_api 60 0 DIR/go 50`: a parent and a worker child
/// with numbers in flight between them, holding at step 50.
struct TreeJob {
    exe: PathBuf,
}

impl TreeJob {
    fn new(t: &TestDir) -> TreeJob {
        TreeJob {
            exe: compile_c(&t.path, "tree_api", TREE_API_C),
        }
    }

    fn argv(&self, dir: &Path) -> Vec<OsString> {
        vec![
            self.exe.clone().into(),
            "60".into(),
            "0".into(),
            dir.join("go").into(),
            "50".into(),
        ]
    }

    /// Its stdout run to the end without forkpoint.
    fn expected(&self, t: &TestDir) -> String {
        let dir = t.sub("ref");
        fs::write(dir.join("go"), "").unwrap();
        let io = Io::in_dir(&dir, "prog");
        run_reference(&self.argv(&dir), &dir, &io);
        read_lossy(&io.stdout)
    }
}

/// PATH with the `forkpoint` under test first (the recipes call `forkpoint`).
fn path_with_forkpoint() -> String {
    format!(
        "{}:{}",
        forkpoint().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// `preempt_job STEPS HOLD DIR/go [handler]`.
struct Job {
    exe: PathBuf,
    args: Vec<String>,
    handler: bool,
}

impl Job {
    fn new(t: &TestDir, handler: bool) -> Job {
        Job {
            exe: compile_c(&t.path, "preempt_job", JOB_C),
            args: vec!["300".into(), "200".into()],
            handler,
        }
    }

    fn argv(&self, dir: &Path) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![self.exe.clone().into()];
        v.extend(self.args.iter().map(OsString::from));
        v.push(dir.join("go").into());
        if self.handler {
            v.push("handler".into());
        }
        v
    }

    /// Its stdout run to the end without forkpoint.
    fn expected(&self, t: &TestDir) -> String {
        let dir = t.sub("ref");
        fs::write(dir.join("go"), "").unwrap();
        let io = Io::in_dir(&dir, "prog");
        run_reference(&self.argv(&dir), &dir, &io);
        read_lossy(&io.stdout)
    }
}

/// `forkpoint run [run_args] -- argv` in `dir`, output in dir/prog.out and prog.err.
fn start_run(dir: &Path, rt: &Path, run_args: &[&OsStr], argv: &[OsString]) -> Proc {
    library();
    let mut cmd = Command::new(forkpoint());
    cmd.arg("run").args(run_args).arg("--").args(argv);
    cmd.current_dir(dir)
        .env("FORKPOINT_RUNTIME_DIR", rt)
        .env_remove("FORKPOINT_LOG")
        .stdin(Stdio::null())
        .stdout(File::create(dir.join("prog.out")).unwrap())
        .stderr(File::create(dir.join("prog.err")).unwrap());
    Proc::new(cmd.spawn().expect("spawn forkpoint run"), "the job")
}

/// `forkpoint run --resume-from images -- argv` in `dir`, to its end. Its stdout is
/// dir/prog.out opened for appending (a restored program reopens the file itself and
/// writes on at its saved offset; a fresh start writes after what is there); its stderr
/// is returned.
fn resume(dir: &Path, rt: &Path, images: &Path, argv: &[OsString]) -> (ExitStatus, String) {
    let mut cmd = Command::new(forkpoint());
    cmd.arg("run")
        .arg("--resume-from")
        .arg(images)
        .arg("--")
        .args(argv);
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("prog.out"))
        .unwrap();
    cmd.current_dir(dir)
        .env("FORKPOINT_RUNTIME_DIR", rt)
        .env_remove("FORKPOINT_LOG")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(File::create(dir.join("resume.err")).unwrap());
    let mut p = Proc::new(cmd.spawn().expect("spawn forkpoint run"), "the resumed job");
    let st = p.wait(WAIT);
    (st, read_lossy(&dir.join("resume.err")))
}

/// The `.fpk` files of `dir`.
fn images_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".fpk"))
        .collect();
    v.sort();
    v
}

/// SIGTERM with the default disposition: the checkpoint is durable (said on stderr with the
/// time it took and the image) before SIGTERM ends the program; the job resumed from
/// `--resume-from` ends as an uninterrupted run.
#[test]
fn sigterm_checkpoints_then_ends_the_program_and_the_job_resumes() {
    let t = TestDir::new("preempt_default");
    let job = Job::new(&t, false);
    let expected = job.expected(&t);
    let (run, images, rt) = (t.sub("run"), t.sub("images"), t.join("rt"));
    let mut p = start_run(
        &run,
        &rt,
        &[
            OsStr::new("--dir"),
            images.as_os_str(),
            OsStr::new("--on-term"),
            OsStr::new("checkpoint"),
            OsStr::new("--name"),
            OsStr::new("job"),
        ],
        &job.argv(&run),
    );
    wait_for_lines(&mut p, &run.join("prog.out"), 199);
    p.signal(libc::SIGTERM);
    let st = p.wait(WAIT);
    assert_eq!(st.signal(), Some(libc::SIGTERM), "the job ended with {st}");
    let err = read_lossy(&run.join("prog.err"));
    assert!(
        err.contains("SIGTERM: checkpoint durable after ") && err.contains("/images/job.fpk)"),
        "{err}"
    );
    assert_eq!(images_in(&images), ["job.fpk"]);
    let info = info_json(&images.join("job.fpk"));
    assert_eq!(info["metadata"]["checkpoint"]["trigger"], "term");

    fs::write(run.join("go"), "").unwrap();
    let (st, err) = resume(&run, &rt, &images, &job.argv(&run));
    assert!(st.success(), "the resumed job ended with {st}\n{err}");
    assert!(err.contains("resuming from"), "{err}");
    assert_eq!(read_lossy(&run.join("prog.out")), expected);
}

/// A program with its own SIGTERM handler gets the SIGTERM after the checkpoint (its
/// handler runs, it stops cleanly); with `checkpoint-exit` its handler does not run. The
/// program resumed from the image did not get that SIGTERM: it runs to the end.
#[test]
fn sigterm_reaches_the_programs_handler_after_the_checkpoint() {
    let t = TestDir::new("preempt_handler");
    let job = Job::new(&t, true);
    let expected = job.expected(&t);
    let rt = t.join("rt");
    for (action, dir) in [("checkpoint", "run"), ("checkpoint-exit", "run_exit")] {
        let (run, images) = (t.sub(dir), t.sub(&format!("{dir}_images")));
        let mut p = start_run(
            &run,
            &rt,
            &[
                OsStr::new("--dir"),
                images.as_os_str(),
                OsStr::new("--on-term"),
                OsStr::new(action),
            ],
            &job.argv(&run),
        );
        wait_for_lines(&mut p, &run.join("prog.out"), 199);
        p.signal(libc::SIGTERM);
        let st = p.wait(WAIT);
        let err = read_lossy(&run.join("prog.err"));
        let durable = err.find("SIGTERM: checkpoint durable").expect(&err);
        if action == "checkpoint" {
            assert_eq!(
                st.code(),
                Some(3),
                "{action}: the job ended with {st}\n{err}"
            );
            let stopping = err.find("stopping at step 200").expect(&err);
            assert!(durable < stopping, "{err}");
        } else {
            assert_eq!(st.signal(), Some(libc::SIGTERM), "{action}: {st}\n{err}");
            assert!(!err.contains("stopping"), "{err}");
        }
        let imgs = images_in(&images);
        assert_eq!(imgs.len(), 1, "{imgs:?}");
        fs::write(run.join("go"), "").unwrap();
        let (st, err) = resume(&run, &rt, &images, &job.argv(&run));
        assert!(
            st.success(),
            "{action}: the resumed job ended with {st}\n{err}"
        );
        assert_eq!(read_lossy(&run.join("prog.out")), expected, "{action}");
    }
}

/// `ls` names a broken image, `--resume-from` passes over it to the previous valid one
/// (saying so), `rm --keep 0` removes it but keeps the newest valid image, and in a
/// directory without images the job starts afresh.
#[test]
fn resume_passes_over_a_broken_image_and_starts_afresh_without_one() {
    let t = TestDir::new("preempt_resume");
    let job = Job::new(&t, false);
    let expected = job.expected(&t);
    let (run, images, rt) = (t.sub("run"), t.sub("images"), t.join("rt"));
    let mut p = start_run(&run, &rt, &[], &job.argv(&run));
    wait_for_lines(&mut p, &run.join("prog.out"), 199);
    let old = images.join("older.fpk");
    let new = images.join("newer.fpk");
    for img in [&old, &new] {
        let c = checkpoint(p.pid, &[OsStr::new("-o"), img.as_os_str()]);
        assert_eq!(c.image(), *img);
    }
    assert_killed(p.kill9(), "the job");
    // The newer image loses its last bytes (a disk that filled, a copy cut short).
    let len = fs::metadata(&new).unwrap().len();
    File::options()
        .write(true)
        .open(&new)
        .unwrap()
        .set_len(len - 100)
        .unwrap();

    let ls = output_within(
        Command::new(forkpoint())
            .args(["ls", "--verify", "--json"])
            .arg(&images),
        WAIT,
    );
    assert_eq!(ls.status.code(), Some(0), "{ls:?}");
    let v: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().rsplit('/').next().unwrap())
        .collect();
    assert_eq!(names, ["newer.fpk", "older.fpk"], "{v}");
    assert_eq!(v[0]["opens"], false, "{v}");
    assert_eq!(v[1]["verified"], true, "{v}");
    let text = output_within(
        Command::new(forkpoint())
            .args(["ls", "--verify"])
            .arg(&images),
        WAIT,
    );
    assert_eq!(
        text.status.code(),
        Some(1),
        "ls --verify exits 1 when an image is broken"
    );
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("broken"),
        "{text:?}"
    );

    fs::write(run.join("go"), "").unwrap();
    let (st, err) = resume(&run, &rt, &images, &job.argv(&run));
    assert!(st.success(), "the resumed job ended with {st}\n{err}");
    assert!(
        err.contains("newer.fpk does not verify")
            && err.contains("resuming from")
            && err.contains("older.fpk"),
        "{err}"
    );
    assert_eq!(read_lossy(&run.join("prog.out")), expected);

    let rm = output_within(
        Command::new(forkpoint())
            .args(["rm", "--keep", "0"])
            .arg(&images),
        WAIT,
    );
    assert!(rm.status.success(), "{rm:?}");
    assert_eq!(images_in(&images), ["older.fpk"]);

    // No image at all: the command starts afresh (and makes the directory).
    let fresh = t.sub("fresh");
    fs::write(fresh.join("go"), "").unwrap();
    let (st, err) = resume(&fresh, &rt, &fresh.join("images"), &job.argv(&fresh));
    assert!(st.success(), "{st}\n{err}");
    assert!(err.contains("no image to resume from"), "{err}");
    assert_eq!(read_lossy(&fresh.join("prog.out")), expected);
}

/// The children of `pid` (by /proc/*/stat).
fn children_of(pid: i32) -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let child: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid: i32 = stat[stat.rfind(')')? + 1..]
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

/// Sends SIGTERM to `p` and to `also` (processes of its tree), waits `grace` for `p` to end,
/// then SIGKILLs it (what Slurm and systemd do); returns how it ended and whether the grace
/// period was enough.
fn term_then_kill(p: &mut Proc, also: &[i32], grace: Duration) -> (ExitStatus, bool) {
    p.signal(libc::SIGTERM);
    for &pid in also {
        // SAFETY: kill has no memory-safety preconditions; the test started these.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !p.running() {
            return (p.wait(WAIT), true);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (p.kill9(), false)
}

/// The Slurm recipe (examples/slurm/job.sbatch) run as Slurm runs it, with the SIGTERM
/// then SIGKILL of a preemption (30 s of grace), sent to every process of the job at once
/// (as `scontrol requeue` and `scancel` do): a job with a child process is checkpointed
/// whole (the child holds its SIGTERM until then), ends, and its requeued run resumes it to
/// the output of an uninterrupted run.
#[test]
fn slurm_recipe_preempted_and_requeued() {
    let t = TestDir::new("preempt_slurm");
    let job = TreeJob::new(&t);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/slurm/job.sbatch");
    let recipe = fs::read_to_string(&script).unwrap();
    assert!(recipe.contains("#SBATCH --signal=B:TERM@30"), "{recipe}");
    let grace = Duration::from_secs(30);
    let expected = job.expected(&t);

    let (run, rt) = (t.sub("run"), t.join("rt"));
    let images = run.join("forkpoint-images/job");
    let path = path_with_forkpoint();
    // Slurm's output file, opened for appending (--open-mode=append) by each run.
    let job_run = |what: &str| -> Proc {
        library();
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(run.join("slurm.out"))
            .unwrap();
        let err = OpenOptions::new()
            .create(true)
            .append(true)
            .open(run.join("slurm.err"))
            .unwrap();
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .args(job.argv(&run))
            .current_dir(&run)
            .env("PATH", &path)
            .env("SLURM_SUBMIT_DIR", &run)
            .env("SLURM_JOB_NAME", "job")
            .env("FORKPOINT_RUNTIME_DIR", &rt)
            .env_remove("FORKPOINT_LOG")
            .env_remove("FORKPOINT_IMAGES")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        Proc::new(cmd.spawn().expect("spawn the job script"), what)
    };
    let mut first = job_run("the job's first run");
    wait_for_lines(&mut first, &run.join("slurm.out"), 49);
    let kids = children_of(first.pid);
    assert_eq!(kids.len(), 1, "the job's child: {kids:?}");
    let (st, in_grace) = term_then_kill(&mut first, &kids, grace);
    let err = read_lossy(&run.join("slurm.err"));
    assert!(
        in_grace,
        "the job did not end within the grace period\n{err}"
    );
    assert_eq!(st.signal(), Some(libc::SIGTERM), "{st}\n{err}");
    assert!(err.contains("SIGTERM: checkpoint durable after"), "{err}");
    let info = info_json(&images.join("job.fpk"));
    let members = info["metadata"]["tree"]["members"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(members.len(), 2, "{info}");
    // The child was alive at the cut: it held its own SIGTERM until then.
    assert!(members.iter().all(|m| m["exited"].is_null()), "{members:?}");
    // The tree's child ends by itself once its parent is gone (end of file on its pipe).
    wait_until("the first run's child to end", WAIT, || {
        !fs::read_dir("/proc").unwrap().flatten().any(|e| {
            fs::read_to_string(e.path().join("cmdline"))
                .is_ok_and(|c| c.starts_with(&format!("{}\0", job.exe.display())))
        })
    });

    fs::write(run.join("go"), "").unwrap();
    let mut second = job_run("the requeued job");
    let st = second.wait(WAIT);
    let err = read_lossy(&run.join("slurm.err"));
    assert!(st.success(), "the requeued job ended with {st}\n{err}");
    assert!(err.contains("resuming from"), "{err}");
    assert_eq!(read_lossy(&run.join("slurm.out")), expected);
}

/// The systemd unit (examples/systemd/forkpoint-job.service): its ExecStart, with the
/// unit's paths replaced by the test's, stopped as systemd stops it (KillMode=mixed: SIGTERM
/// to the main process, SIGKILL after TimeoutStopSec) and started again, twice: the job
/// resumes, is checkpointed again by its second stop, and ends as an uninterrupted run.
#[test]
fn systemd_unit_stopped_and_started_again() {
    let t = TestDir::new("preempt_systemd");
    let job = Job::new(&t, false);
    let expected = job.expected(&t);
    let unit = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/systemd/forkpoint-job.service"),
    )
    .unwrap();
    let key = |k: &str| -> String {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("the unit has no {k}="))
            .to_string()
    };
    assert_eq!(key("KillMode"), "mixed");
    let grace = Duration::from_secs(key("TimeoutStopSec").parse().unwrap());
    let (run, rt) = (t.sub("run"), t.join("rt"));
    let state = key("WorkingDirectory");
    let exec: Vec<OsString> = key("ExecStart")
        .split_whitespace()
        .flat_map(|w| -> Vec<OsString> {
            if w == "/usr/local/bin/forkpoint" {
                vec![forkpoint().into()]
            } else if w == "/usr/local/bin/my-job" {
                job.argv(&run)
            } else if let Some(rest) = w.strip_prefix(&state) {
                vec![format!("{}{rest}", run.display()).into()]
            } else {
                vec![w.into()]
            }
        })
        .collect();
    let start = |what: &str| -> Proc {
        library();
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(run.join("prog.out"))
            .unwrap();
        let mut cmd = Command::new(&exec[0]);
        cmd.args(&exec[1..])
            .current_dir(&run)
            .env("FORKPOINT_RUNTIME_DIR", &rt)
            .env_remove("FORKPOINT_LOG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(File::create(run.join(format!("{what}.err"))).unwrap());
        Proc::new(cmd.spawn().expect("spawn ExecStart"), what)
    };
    let mut first = start("first");
    wait_for_lines(&mut first, &run.join("prog.out"), 199);
    let (st, in_grace) = term_then_kill(&mut first, &[], grace);
    let err = read_lossy(&run.join("first.err"));
    assert!(
        in_grace && st.signal() == Some(libc::SIGTERM),
        "{st}\n{err}"
    );
    assert_eq!(images_in(&run.join("images")), ["job.fpk"]);
    // Started again, the restored job (under another PID now) is stopped again before it
    // gets past its hold step: it is still the one that checkpoints on SIGTERM.
    let image = run.join("images/job.fpk");
    let first_cut = info_json(&image)["metadata"]["checkpoint"]["time_unix_ns"].clone();
    let mut second = start("second");
    // Once the restore has handed over (before that, the loader dies of a SIGTERM and the
    // image stays the first one).
    let pid = second.pid;
    // (The restored program catches SIGTERM, the loader does not.)
    wait_until("the restored job to run", WAIT, || {
        fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
                .is_some_and(|m| m & (1 << (libc::SIGTERM - 1)) != 0)
        })
    });
    let (st, in_grace) = term_then_kill(&mut second, &[], grace);
    let err = read_lossy(&run.join("second.err"));
    assert!(
        in_grace && st.signal() == Some(libc::SIGTERM),
        "{st}\n{err}"
    );
    // The restored job writes on into the first run's stderr (a file it reopened).
    let first_err = read_lossy(&run.join("first.err"));
    assert!(
        first_err.contains("SIGTERM: checkpoint durable after"),
        "{first_err}"
    );
    let info = info_json(&image);
    assert_ne!(
        info["metadata"]["checkpoint"]["time_unix_ns"], first_cut,
        "{info}"
    );
    assert_eq!(info["metadata"]["checkpoint"]["generation"], 1, "{info}");
    fs::write(run.join("go"), "").unwrap();
    let mut third = start("third");
    let st = third.wait(WAIT);
    let err = read_lossy(&run.join("third.err"));
    assert!(st.success(), "{st}\n{err}");
    assert_eq!(read_lossy(&run.join("prog.out")), expected);
}

/// `scontrol ARGS` (or another Slurm command): its stdout; panics with its stderr on failure.
fn slurm(cmd: &str, args: &[&str]) -> String {
    let out = output_within(Command::new(cmd).args(args), WAIT);
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn job_state(id: &str) -> String {
    let show = slurm("scontrol", &["show", "job", id]);
    show.split_whitespace()
        .find_map(|w| w.strip_prefix("JobState="))
        .unwrap_or("?")
        .to_string()
}

/// The recipe under a real Slurm (the one-node cluster `.ci/run` starts with
/// examples/slurm/single-node.sh; FORKPOINT_SLURM=1 says it is there): submitted with
/// sbatch, preempted with `scontrol requeue` while mid-run (Slurm sends SIGTERM to the job's
/// processes, SIGKILL after KillWait), requeued by Slurm, and resumed from its image to the
/// output of an uninterrupted run.
#[test]
fn real_slurm_requeue_resumes_the_job() {
    if std::env::var_os("FORKPOINT_SLURM").is_none_or(|v| v != "1") {
        skip("no Slurm cluster here (FORKPOINT_SLURM=1 is set by .ci/run once it runs one)");
        return;
    }
    let t = TestDir::new("preempt_real_slurm");
    let job = TreeJob::new(&t);
    let run = t.sub("run");
    let expected = job.expected(&t);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/slurm/job.sbatch");
    library();
    let path = path_with_forkpoint();
    let out = run.join("slurm.out");
    let mut sbatch = Command::new("sbatch");
    sbatch
        .arg("--parsable")
        .arg("--job-name=forkpoint-e2e")
        .arg(format!("--output={}", out.display()))
        .arg(&script)
        .args(job.argv(&run))
        .current_dir(&run)
        .env("PATH", &path)
        .env("FORKPOINT_RUNTIME_DIR", t.join("rt"))
        .env_remove("FORKPOINT_LOG")
        .env_remove("FORKPOINT_IMAGES");
    let submitted = output_within(&mut sbatch, WAIT);
    assert!(submitted.status.success(), "sbatch: {submitted:?}");
    let id = String::from_utf8_lossy(&submitted.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    // Cancel the job however the test ends.
    struct Cancel(String);
    impl Drop for Cancel {
        fn drop(&mut self) {
            let _ = Command::new("scancel").arg(&self.0).output();
        }
    }
    let _cancel = Cancel(id.clone());
    let long = Duration::from_secs(240);
    wait_until("the job to reach its hold step", long, || {
        let state = job_state(&id);
        assert!(
            matches!(state.as_str(), "PENDING" | "RUNNING" | "CONFIGURING"),
            "job {id} is {state}:\n{}",
            read_lossy(&out)
        );
        count_lines(&out) >= 49
            && read_lossy(&out)
                .lines()
                .filter(|l| l.starts_with("step "))
                .count()
                >= 49
    });
    slurm("scontrol", &["requeue", &id]);
    let requeued_at = std::time::SystemTime::now();
    let image = run.join("forkpoint-images/forkpoint-e2e/job.fpk");
    wait_until("the checkpoint taken on Slurm's SIGTERM", long, || {
        read_lossy(&out).contains("SIGTERM: checkpoint durable after")
    });
    assert!(image.is_file(), "{}", read_lossy(&out));
    fs::write(run.join("go"), "").unwrap();
    // Slurm holds a requeued job back for a while (BeginTime); let it start now.
    wait_until("the job to be requeued", long, || {
        job_state(&id) == "PENDING"
    });
    // And its first run wholly gone from the node: started again too soon, the job is
    // killed as "non-startable batch job: Job credential revoked" (seen under load in CI).
    wait_until("the node to be idle again", long, || {
        slurm("sinfo", &["-h", "-N", "-o", "%T"]).trim() == "idle"
    });
    // slurmd compares the new launch's credential with the revocation in whole seconds: the
    // requeued run must start in a later second than the requeue.
    let unix_s = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    wait_until("a second later than the requeue", long, || {
        unix_s(std::time::SystemTime::now()) > unix_s(requeued_at) + 1
    });
    slurm(
        "scontrol",
        &["update", &format!("JobId={id}"), "StartTime=now"],
    );
    wait_until("the requeued job to finish", long, || {
        let state = job_state(&id);
        assert!(
            !matches!(
                state.as_str(),
                "FAILED" | "CANCELLED" | "TIMEOUT" | "NODE_FAIL"
            ),
            "job {id} is {state}:\n{}",
            read_lossy(&out)
        );
        state == "COMPLETED"
    });
    let log = read_lossy(&out);
    assert!(log.contains("resuming from"), "{log}");
    let stdout_lines: String = log
        .lines()
        .filter(|l| l.starts_with("step ") || *l == "PASS")
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(stdout_lines, expected, "{log}");
    assert!(
        slurm("scontrol", &["show", "job", &id]).contains("Restarts=1"),
        "the job was not requeued once"
    );
}

/// On a terminal (here a pseudo-terminal from `script`), checkpointing and restarting a
/// large process show one updating line with bytes, rate and time left; on a file (every
/// other test) nothing of it appears.
#[test]
fn progress_on_a_terminal_only() {
    if !have_tool("python3") || !have_tool("script") {
        return;
    }
    let t = TestDir::new("progress");
    let (run, rt) = (t.sub("run"), t.join("rt"));
    let code = "import os, time\n\
                blocks = [os.urandom(1 << 20) for _ in range(160)]\n\
                print('ready', flush=True)\n\
                while not os.path.exists('go'): time.sleep(0.005)\n";
    let mut p = start_run(
        &run,
        &rt,
        &[],
        &["python3".into(), "-c".into(), code.into()],
    );
    wait_until("the program to be ready", WAIT, || {
        read_lossy(&run.join("prog.out")).contains("ready")
    });
    let image = run.join("big.fpk");
    let on_tty = |cmd: String, log: &Path| -> String {
        let out = output_within(
            Command::new("script")
                .arg("-qec")
                .arg(cmd)
                .arg(log)
                .env("FORKPOINT_RUNTIME_DIR", &rt)
                .stdin(Stdio::null()),
            WAIT,
        );
        assert!(out.status.success(), "{out:?}");
        read_lossy(log)
    };
    let typed = on_tty(
        format!(
            "{} checkpoint -o {} {}",
            forkpoint().display(),
            image.display(),
            p.pid
        ),
        &run.join("checkpoint.tty"),
    );
    assert!(
        typed.contains("\rforkpoint checkpoint: ") && typed.contains(" MiB/s"),
        "{typed:?}"
    );
    assert_killed(p.kill9(), "the program");
    fs::write(run.join("go"), "").unwrap();
    // The same image restarted on a file shows no progress.
    let c = checkpoint_restart_quietly(&image, &run);
    assert!(
        !c.contains("forkpoint restart: ") || !c.contains("MiB/s"),
        "{c}"
    );
    let typed = on_tty(
        format!(
            "timeout -s KILL 20 {} restart {} </dev/null",
            forkpoint().display(),
            image.display()
        ),
        &run.join("restart.tty"),
    );
    assert!(typed.contains("\rforkpoint restart: "), "{typed:?}");
}

/// Restarts `image` with stderr on a file; it reads end of file on stdin and ends. Its
/// stderr.
fn checkpoint_restart_quietly(image: &Path, dir: &Path) -> String {
    let err = dir.join("quiet.err");
    let mut cmd = Command::new(forkpoint());
    cmd.arg("restart")
        .arg(image)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&err).unwrap());
    let mut p = Proc::new(cmd.spawn().unwrap(), "the quiet restart");
    let st = p.wait(WAIT);
    assert!(st.success(), "{st}\n{}", read_lossy(&err));
    read_lossy(&err)
}
