//! Process trees: `forkpoint checkpoint --tree` takes a program with its children at one
//! cut into one image; `forkpoint restart` brings the whole tree back with its PIDs, its
//! parent links and the pipes between its processes (with the bytes in flight), and the
//! result must equal an uninterrupted run's.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::harness::*;

const PIPELINE_C: &str = include_str!("../programs/tree_pipeline.c");

/// A run of a command in its own directory: stdout, stderr, a `go` file.
struct TreeRun {
    dir: PathBuf,
    out: PathBuf,
    err: PathBuf,
    proc: Proc,
}

impl TreeRun {
    fn start(dir: &Path, rt: &Path, argv: &[&OsStr], under_fp: bool) -> TreeRun {
        TreeRun::start_with(dir, rt, argv, under_fp.then_some(&[]))
    }

    /// `run_args`: those of `forkpoint run` (None: without forkpoint).
    fn start_with(dir: &Path, rt: &Path, argv: &[&OsStr], run_args: Option<&[&str]>) -> TreeRun {
        let (out, err) = (dir.join("prog.out"), dir.join("prog.err"));
        let mut cmd = if let Some(run_args) = run_args {
            library();
            let mut c = Command::new(forkpoint());
            c.arg("run").args(run_args).arg("--").args(argv);
            c.env("FORKPOINT_RUNTIME_DIR", rt)
                .env_remove("FORKPOINT_LOG");
            c
        } else {
            let mut c = Command::new(argv[0]);
            c.args(&argv[1..]);
            c
        };
        cmd.current_dir(dir)
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap());
        let proc = Proc::new(cmd.spawn().expect("spawn"), "the tree's root");
        TreeRun {
            dir: dir.to_path_buf(),
            out,
            err,
            proc,
        }
    }

    fn wait_for(&self, what: &str, cond: impl Fn(&TreeRun) -> bool) {
        wait_until(what, WAIT, || cond(self));
    }

    fn go(&self) {
        fs::write(self.dir.join("go"), b"").unwrap();
    }

    fn finishes(&mut self) -> String {
        let st = self.proc.wait(WAIT);
        assert!(
            st.success(),
            "the run ended with {st}\n{}",
            read_lossy(&self.err)
        );
        read_lossy(&self.out)
    }
}

/// `tree_pipeline` under forkpoint in `t`'s `run` directory, once it has filled its pipes.
fn start_pipeline_ready(t: &TestDir, exe: &Path) -> TreeRun {
    let run = TreeRun::start(
        &t.sub("run"),
        &t.join("rt"),
        &[exe.as_os_str(), OsStr::new("go")],
        true,
    );
    run.wait_for("the program to be ready", |r| {
        read_lossy(&r.out).contains("ready")
    });
    run
}

/// `forkpoint checkpoint --tree [args] PID`.
fn checkpoint_tree(pid: i32, args: &[&str]) -> Ckpt {
    let mut a: Vec<&OsStr> = vec![OsStr::new("--tree")];
    a.extend(args.iter().map(OsStr::new));
    checkpoint(pid, &a)
}

/// The PIDs of the tree under `root` (by /proc/*/stat), root first.
fn tree_pids(root: i32) -> Vec<i32> {
    let mut all: Vec<(i32, i32)> = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
            let rest = &stat[stat.rfind(')').unwrap_or(0) + 1..];
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
                all.push((pid, ppid));
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(all.iter().filter(|&&(_, pp)| pp == p).map(|&(c, _)| c));
        i += 1;
    }
    out
}

/// Checkpoints the tree under `run`, kills every process of it (the test started them all),
/// and restarts it; the restarted tree writes on into the original's stdout.
fn checkpoint_kill_restart(run: &mut TreeRun, expect_members: usize) -> PathBuf {
    let pids = tree_pids(run.proc.pid);
    assert_eq!(
        pids.len(),
        expect_members,
        "the tree under the root: {pids:?}"
    );
    checkpoint_and_kill(run)
}

/// Checkpoints the tree under `run` however many processes it has now, and kills it.
fn checkpoint_and_kill(run: &mut TreeRun) -> PathBuf {
    let image = checkpoint_tree(run.proc.pid, &["--kill"]).image();
    // Whatever the tree was at the cut: the checkpoint stopped, then killed, all of it.
    let pids = tree_pids(run.proc.pid);
    assert_killed(run.proc.wait(WAIT), "the original tree's root");
    wait_until("the original tree to be gone", WAIT, || {
        pids.iter()
            .all(|&p| !Path::new(&format!("/proc/{p}")).exists() || is_zombie(p))
    });
    image
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s[s.rfind(')').unwrap_or(0) + 1..]
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

fn restart_tree(image: &Path, dir: &Path) -> Proc {
    let mut cmd = Command::new(forkpoint());
    cmd.arg("restart")
        .arg(image)
        .stdin(Stdio::null())
        .stdout(File::create(dir.join("restart.out")).unwrap())
        .stderr(File::create(dir.join("restart.err")).unwrap());
    Proc::new(cmd.spawn().expect("spawn restart"), "the restarted tree")
}

/// The output of `argv` run without forkpoint in `t`'s `control` directory, let go once
/// `ready`.
fn uninterrupted(t: &TestDir, argv: &[&OsStr], ready: impl Fn(&TreeRun) -> bool) -> String {
    let mut control = TreeRun::start(&t.sub("control"), &t.join("rt"), argv, false);
    control.wait_for("the control run to be ready", ready);
    control.go();
    control.finishes()
}

/// Restarts the tree of `image`, which writes on into `run`'s output: it must succeed and
/// leave `expected` there. Returns the restart's stderr.
fn restart_matches(image: &Path, run: &TreeRun, expected: &str) -> String {
    let mut r = restart_tree(image, &run.dir);
    let st = r.wait(WAIT);
    let err = read_lossy(&run.dir.join("restart.err"));
    assert!(st.success(), "the restarted tree ended with {st}\n{err}");
    assert_eq!(read_lossy(&run.out), expected, "{err}");
    err
}

/// A parent and a child with numbers in flight in the pipe to the child and answers in
/// flight in the pipe back; the parent `waitpid`s the child by its stored PID at the end.
#[test]
fn pipeline_parent_and_child_with_data_in_flight_both_ways() {
    let t = TestDir::new("tree_pipeline");
    let exe = compile_c(&t.path, "tree_pipeline", PIPELINE_C);
    let ready = |r: &TreeRun| read_lossy(&r.out).contains("ready");

    let mut control = TreeRun::start(
        &t.sub("control"),
        &t.join("rt"),
        &[exe.as_os_str(), OsStr::new("go")],
        false,
    );
    control.wait_for("the control run to be ready", ready);
    control.go();
    let expected = control.finishes();
    assert!(expected.contains("PASS"), "{expected}");

    let mut run = TreeRun::start(
        &t.sub("run"),
        &t.join("rt"),
        &[exe.as_os_str(), OsStr::new("go")],
        true,
    );
    run.wait_for("the program to be ready", ready);
    let image = checkpoint_kill_restart(&mut run, 2);

    let info = info_json(&image);
    let members = info["metadata"]["tree"]["members"]
        .as_array()
        .expect("tree members")
        .clone();
    assert_eq!(members.len(), 2);
    assert_eq!(members[1]["ppid"], members[0]["pid"]);
    let shared = info["shared_objects"].as_array().expect("shared objects");
    assert!(
        shared.iter().filter(|o| o["kind"] == "pipe").count() >= 2,
        "{shared:?}"
    );

    run.go();
    let mut r = restart_tree(&image, &run.dir);
    let st = r.wait(WAIT);
    assert!(
        st.success(),
        "the restarted tree ended with {st}\n{}",
        read_lossy(&run.dir.join("restart.err"))
    );
    assert_eq!(
        read_lossy(&run.out),
        expected,
        "the restarted tree's output differs"
    );
    let err = read_lossy(&run.dir.join("restart.err"));
    assert!(
        !err.contains("reader is gone") && !err.contains("writer is gone"),
        "a shared pipe was approximated:\n{err}"
    );
}

/// A three-stage shell pipeline with lines in flight in both pipes: every stage comes back
/// and the sum at the end is that of an uninterrupted run.
#[test]
fn three_stage_shell_pipeline_with_data_in_both_pipes() {
    let t = TestDir::new("tree_shell");
    // Stage 2 passes 5000 lines on, then waits for go; stage 3 waits for go before reading;
    // seq fills the first pipe meanwhile.
    let script = "seq 1 300000 \
        | perl -ne 'print $_ * 3, qq(\\n); if ($. == 5000) { open my $f, q(>), q(ready2); close $f; select(undef, undef, undef, 0.01) until -e q(go) }' \
        | perl -e 'open my $f, q(>), q(ready3); close $f; select(undef, undef, undef, 0.01) until -e q(go); my $s = 0; while (<STDIN>) { $s += $_ } print qq(sum=$s\\n)'";
    let argv = [OsStr::new("bash"), OsStr::new("-c"), OsStr::new(script)];
    let ready = |r: &TreeRun| r.dir.join("ready2").exists() && r.dir.join("ready3").exists();

    let expected = uninterrupted(&t, &argv, ready);
    assert!(expected.starts_with("sum="), "{expected}");

    let mut run = TreeRun::start(&t.sub("run"), &t.join("rt"), &argv, true);
    run.wait_for("the pipeline to be ready", ready);
    // The first pipe full: seq blocks in write.
    let image = checkpoint_kill_restart(&mut run, 4);
    run.go();
    let mut r = restart_tree(&image, &run.dir);
    let st = r.wait(WAIT);
    assert!(
        st.success(),
        "the restarted pipeline ended with {st}\n{}",
        read_lossy(&run.dir.join("restart.err"))
    );
    assert_eq!(read_lossy(&run.out), expected);
}

/// A member that never stops for the checkpoint (it is stopped, SIGSTOP): the checkpoint
/// times out naming it, every member runs on, and no image is left.
#[test]
fn a_member_that_never_arrives_fails_the_checkpoint_and_releases_everyone() {
    let t = TestDir::new("tree_stuck");
    let exe = compile_c(&t.path, "tree_pipeline", PIPELINE_C);
    let mut run = start_pipeline_ready(&t, &exe);
    let pids = tree_pids(run.proc.pid);
    assert_eq!(pids.len(), 2);
    // SAFETY: stopping the child this test started.
    unsafe { libc::kill(pids[1], libc::SIGSTOP) };
    let out = t.join("never.fpk");
    let mut cmd = Command::new(forkpoint());
    cmd.args(["checkpoint", "--tree", "--timeout", "2s", "-o"])
        .arg(&out)
        .arg(run.proc.pid.to_string())
        .env_remove("FORKPOINT_RUNTIME_DIR");
    let o = output_within(&mut cmd, WAIT);
    let c = Ckpt {
        status: o.status,
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    assert!(
        !c.status.success(),
        "the checkpoint should have failed: {}",
        c.stderr
    );
    assert!(
        c.stderr.contains(&pids[1].to_string()) && c.stderr.contains("did not stop"),
        "{}",
        c.stderr
    );
    assert!(!out.exists(), "an image was left at {}", out.display());
    let leftovers: Vec<_> = fs::read_dir(&t.path)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".never"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "staging files were left: {leftovers:?}"
    );
    // Everyone was released: the job finishes as it would have (the child, continued,
    // finds the request withdrawn and ignores it).
    // SAFETY: continuing the child this test stopped.
    unsafe { libc::kill(pids[1], libc::SIGCONT) };
    run.go();
    let output = run.finishes();
    assert!(output.contains("PASS"), "{output}");
}

/// A descendant without the library (it cleared LD_PRELOAD): the checkpoint refuses at
/// once, naming it, and touches nothing.
#[test]
fn a_member_without_the_library_is_named() {
    let t = TestDir::new("tree_nolib");
    let argv = [
        OsStr::new("bash"),
        OsStr::new("-c"),
        OsStr::new("env -u LD_PRELOAD sleep 300 & echo started; wait"),
    ];
    let mut run = TreeRun::start(&t.sub("run"), &t.join("rt"), &argv, true);
    run.wait_for("the child to start", |r| {
        read_lossy(&r.out).contains("started") && tree_pids(r.proc.pid).len() == 2
    });
    let pids = tree_pids(run.proc.pid);
    let c = checkpoint(run.proc.pid, &[]);
    assert!(!c.status.success());
    assert!(
        c.stderr.contains(&format!("{} (sleep)", pids[1])) && c.stderr.contains("libforkpoint"),
        "{}",
        c.stderr
    );
    // The policy for such a child: --no-tree takes the parent alone.
    let alone = checkpoint(run.proc.pid, &[OsStr::new("--no-tree")]).image();
    let info = info_json(&alone);
    assert!(info["metadata"]["tree"].is_null(), "a tree image: {info}");
    fs::remove_file(&alone).unwrap();
    for &p in pids.iter().rev() {
        // SAFETY: signalling processes this test started.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    run.proc.wait(WAIT);
}

/// A file behind a member's mapping changed after the checkpoint: the whole restart is
/// refused before any process of the tree runs (nothing more is written to its output).
#[test]
fn a_changed_file_refuses_the_whole_tree_before_anything_runs() {
    let t = TestDir::new("tree_changed");
    let exe = compile_c(&t.path, "tree_pipeline", PIPELINE_C);
    let mut run = start_pipeline_ready(&t, &exe);
    let image = checkpoint_kill_restart(&mut run, 2);
    // The same program built again: same path, another file.
    let rebuilt = compile_c(&t.sub("again"), "tree_pipeline", PIPELINE_C);
    fs::rename(&rebuilt, &exe).unwrap();
    run.go();
    let before = read_lossy(&run.out);
    let mut r = restart_tree(&image, &run.dir);
    let st = r.wait(WAIT);
    let err = read_lossy(&run.dir.join("restart.err"));
    assert!(!st.success() && st.code() == Some(1), "{st}\n{err}");
    assert!(
        err.contains("changed"),
        "the refusal should say what changed:\n{err}"
    );
    assert_eq!(
        read_lossy(&run.out),
        before,
        "a process of the refused tree ran"
    );
}

const POOL_PY: &str = r#"
import hashlib, multiprocessing as mp, os, time

def work(i):
    while not os.path.exists("go"):
        time.sleep(0.01)
    return hashlib.sha256(str(i).encode()).hexdigest()[:16]

if __name__ == "__main__":
    mp.set_start_method("fork")
    with mp.Pool(2) as pool:
        print("ready", flush=True)
        for i, h in enumerate(pool.imap(work, range(300))):
            print(i, h, flush=True)
    print("done", flush=True)
"#;

/// Python `multiprocessing.Pool(2)` with `imap`: the parent (with its pool threads) and both
/// workers come back, with the task and result pipes and the semaphores they share (deleted
/// `/dev/shm` files, one memory object for all three again), and the results are those of
/// an uninterrupted run.
#[test]
fn python_multiprocessing_pool_imap() {
    let t = TestDir::new("tree_pool");
    let script = t.join("job.py");
    fs::write(&script, POOL_PY).unwrap();
    let argv = [OsStr::new("/usr/bin/python3"), script.as_os_str()];
    let ready = |r: &TreeRun| read_lossy(&r.out).contains("ready");

    let expected = uninterrupted(&t, &argv, ready);
    assert!(expected.ends_with("done\n"), "{expected}");

    let mut run = TreeRun::start(&t.sub("run"), &t.join("rt"), &argv, true);
    run.wait_for("the pool to be ready", |r| {
        ready(r) && tree_pids(r.proc.pid).len() == 3
    });
    let image = checkpoint_kill_restart(&mut run, 3);
    let info = info_json(&image);
    let shared = info["shared_objects"].as_array().expect("shared objects");
    let memory: Vec<_> = shared.iter().filter(|o| o["kind"] == "memory").collect();
    assert!(
        memory
            .iter()
            .any(|o| o["processes"].as_array().is_some_and(|p| p.len() == 3)),
        "no memory shared by all three processes: {shared:?}"
    );

    run.go();
    let mut r = restart_tree(&image, &run.dir);
    let st = r.wait(WAIT);
    let err = read_lossy(&run.dir.join("restart.err"));
    assert!(st.success(), "the restarted pool ended with {st}\n{err}");
    assert_eq!(
        read_lossy(&run.out),
        expected,
        "the restarted pool's output differs"
    );
    assert!(
        !err.contains("/dev/shm/sem."),
        "a shared semaphore was approximated:\n{err}"
    );
}

const ZOMBIE_C: &str = include_str!("../programs/tree_zombie.c");

/// A parent with two zombie children (one exited 7, one killed by SIGTERM; SIGCHLD pending,
/// blocked), a live child that shares anonymous memory with it, and a child whose stdin is
/// a pipe with bytes in flight from a writer already gone: after the restart the parent
/// reaps all four by their stored PIDs with the same statuses, finds SIGCHLD still pending
/// and the live child's additions in the shared memory; the reader gets its bytes.
#[test]
fn parent_with_zombie_children_and_shared_anonymous_memory() {
    let t = TestDir::new("tree_zombie");
    let exe = compile_c(&t.path, "tree_zombie", ZOMBIE_C);
    let argv = [exe.as_os_str()];
    let ready = |r: &TreeRun| read_lossy(&r.out).contains("ready");

    let expected = uninterrupted(&t, &argv, ready);
    assert!(expected.contains("PASS"), "{expected}");

    let mut run = TreeRun::start(&t.sub("run"), &t.join("rt"), &argv, true);
    run.wait_for("the program to be ready", ready);
    let image = checkpoint_kill_restart(&mut run, 5);
    let info = info_json(&image);
    let members = info["metadata"]["tree"]["members"]
        .as_array()
        .unwrap()
        .clone();
    let zombies: Vec<_> = members.iter().filter(|m| m["exited"].is_i64()).collect();
    assert_eq!(zombies.len(), 2, "{members:?}");

    run.go();
    let err = restart_matches(&image, &run, &expected);
    assert!(!err.contains("warning"), "{err}");
}

/// `make -j2` building 300 small targets (each a shell with a pipe into `sha256sum`),
/// checkpointed mid-build while jobs start and end all the time (one job waits for `go`,
/// and so do the targets after the 150th, so the build cannot end before the checkpoint):
/// the checkpoint takes the tree as it is at the cut (processes forked meanwhile join it,
/// finished jobs not yet reaped are zombies), and the restarted build ends with the same
/// targets as an uninterrupted one.
#[test]
fn make_j2_many_small_targets() {
    let t = TestDir::new("tree_make");
    let makefile = "N := $(shell seq 1 300)\n\
        all: gate $(addprefix t/,$(N))\n\
        \tcat $(addprefix t/,$(N)) | sha256sum > all.sum\n\
        gate:\n\
        \t@while [ ! -e go ]; do sleep 0.01; done\n\
        t/%:\n\
        \t@[ $* -le 150 ] || while [ ! -e go ]; do sleep 0.01; done\n\
        \t@mkdir -p t; echo $* | sha256sum > $@.tmp; mv $@.tmp $@\n\
        .PHONY: all gate\n";
    let argv = [
        OsStr::new("make"),
        OsStr::new("-j2"),
        OsStr::new("-s"),
        OsStr::new("-f"),
        OsStr::new("../Makefile"),
    ];
    fs::write(t.join("Makefile"), makefile).unwrap();
    let started = |r: &TreeRun| r.dir.join("t/40").exists();
    let sum = |r: &TreeRun| read_lossy(&r.dir.join("all.sum"));

    let mut control = TreeRun::start(&t.sub("control"), &t.join("rt"), &argv, false);
    control.wait_for("the control build to start", started);
    control.go();
    control.finishes();
    let expected = sum(&control);
    assert!(expected.ends_with("  -\n"), "{expected}");

    let mut run = TreeRun::start(&t.sub("run"), &t.join("rt"), &argv, true);
    run.wait_for("the build to start", started);
    let image = checkpoint_and_kill(&mut run);
    let built = fs::read_dir(run.dir.join("t")).unwrap().count();
    assert!(built < 300, "the build was over before the checkpoint");

    run.go();
    let mut r = restart_tree(&image, &run.dir);
    let st = r.wait(WAIT);
    let err = read_lossy(&run.dir.join("restart.err"));
    assert!(
        st.success(),
        "the restarted build ended with {st}\n{err}\nits stderr:\n{}",
        read_lossy(&run.err)
    );
    assert_eq!(sum(&run), expected, "{err}");
    for n in 1..=300 {
        assert!(
            run.dir.join(format!("t/{n}")).exists(),
            "t/{n} was not built"
        );
    }
}

const WIDE_C: &str = include_str!("../programs/tree_wide.c");

/// A tree of 64 processes (three levels) checkpointed at one cut and restarted: every
/// process comes back with its PID, every parent reaps its children by their stored PIDs
/// with the right exit codes, and the root's sum equals an uninterrupted run's.
#[test]
fn a_tree_of_64_processes() {
    let t = TestDir::new("tree_wide");
    let exe = compile_c(&t.path, "tree_wide", WIDE_C);
    let argv = [exe.as_os_str()];
    let ready = |r: &TreeRun| read_lossy(&r.out).contains("ready");

    let expected = uninterrupted(&t, &argv, ready);
    assert!(expected.contains("PASS"), "{expected}");

    let mut run = TreeRun::start(&t.sub("run"), &t.join("rt"), &argv, true);
    run.wait_for("the tree to be ready", ready);
    // Plain `checkpoint PID` (no --tree): a process with children is taken with its tree.
    let pids = tree_pids(run.proc.pid);
    assert_eq!(pids.len(), 64, "{pids:?}");
    let image = checkpoint(run.proc.pid, &[OsStr::new("--kill")]).image();
    assert_killed(run.proc.wait(WAIT), "the original tree's root");
    wait_until("the original tree to be gone", WAIT, || {
        pids.iter()
            .all(|&p| !Path::new(&format!("/proc/{p}")).exists() || is_zombie(p))
    });
    let info = info_json(&image);
    assert_eq!(
        info["metadata"]["tree"]["members"].as_array().map(Vec::len),
        Some(64)
    );

    run.go();
    restart_matches(&image, &run, &expected);
}

const GROUPS_C: &str = include_str!("../programs/tree_groups.c");

/// Sessions and process groups inside the tree come back: a child that made its own
/// session is its leader again, a group leader's child is in its group (and `kill(-pgid)`
/// reaches both), a child in the root's group stays in it. Also after a second checkpoint,
/// taken of the restored tree (the image holds the PIDs of its namespace).
#[test]
fn sessions_and_process_groups_inside_the_tree() {
    let t = TestDir::new("tree_groups");
    let exe = compile_c(&t.path, "tree_groups", GROUPS_C);
    let argv = [exe.as_os_str()];
    let ready = |r: &TreeRun| read_lossy(&r.out).contains("ready");

    let expected = uninterrupted(&t, &argv, ready);
    assert!(expected.contains("PASS"), "{expected}");

    let mut run = TreeRun::start(&t.sub("run"), &t.join("rt"), &argv, true);
    run.wait_for("the program to be ready", ready);
    let image = checkpoint_kill_restart(&mut run, 5);
    let mut first = restart_tree(&image, &run.dir);
    // restart, init, and the tree's 5 processes.
    wait_until("the tree to be restored", WAIT, || {
        tree_pids(first.pid).len() == 7
    });
    // The restored tree checkpointed again (through its `forkpoint restart`), killed, and
    // restarted from that second image: still the same relations.
    let second = checkpoint(first.pid, &[OsStr::new("--kill")]).image();
    // `forkpoint restart` exits as the tree's root did: killed, 128 + 9.
    let st = first.wait(WAIT);
    assert_eq!(st.code(), Some(137), "the first restart ended with {st}");
    let info = info_json(&second);
    assert_eq!(
        info["metadata"]["tree"]["members"].as_array().map(Vec::len),
        Some(5),
        "{info}"
    );
    run.go();
    restart_matches(&second, &run, &expected);
}

const SHARED_FILE_C: &str = include_str!("../programs/tree_shared_file.c");

/// A log opened before a fork is one open file description of parent and child (one
/// offset): after the restart their writes still follow one another, none overwrites
/// another's; the image names the shared descriptions.
#[test]
fn an_open_file_description_shared_by_parent_and_child() {
    let t = TestDir::new("tree_shared_file");
    let exe = compile_c(&t.path, "tree_shared_file", SHARED_FILE_C);
    let argv = [exe.as_os_str()];
    let ready = |r: &TreeRun| read_lossy(&r.out).contains("ready");

    let expected = uninterrupted(&t, &argv, ready);
    assert!(expected.contains("PASS"), "{expected}");

    let mut run = TreeRun::start(&t.sub("run"), &t.join("rt"), &argv, true);
    run.wait_for("the program to be ready", ready);
    let image = checkpoint_kill_restart(&mut run, 2);
    let info = info_json(&image);
    let groups = info["metadata"]["tree"]["shared_files"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // The log, and stdout and stderr (files here).
    assert!(groups.len() >= 3, "shared descriptions: {groups:?}");
    run.go();
    restart_matches(&image, &run, &expected);
}

const API_C: &str = include_str!("../programs/tree_api.c");

/// The tree images in `dir` that are complete (their final name), by number.
fn tree_images(dir: &Path) -> Vec<PathBuf> {
    let number = |p: &Path| -> Option<u64> {
        let name = p.file_name()?.to_str()?;
        name.rsplit_once(".tree-")?
            .1
            .strip_suffix(".fpk")?
            .parse()
            .ok()
    };
    let mut v: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| Some((number(&e.path())?, e.path())))
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

/// Kills every process of the tree under `run` (the test started them all).
fn kill_tree(run: &mut TreeRun) {
    let pids = tree_pids(run.proc.pid);
    for &p in pids.iter().rev() {
        // SAFETY: kill has no memory-safety preconditions; these are our processes.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    assert_killed(run.proc.wait(WAIT), "the original tree's root");
    wait_until("the original tree to be gone", WAIT, || {
        pids.iter()
            .all(|&p| !Path::new(&format!("/proc/{p}")).exists() || is_zombie(p))
    });
}

/// `forkpoint_checkpoint()` in a parent with a child checkpoints the tree (the library
/// starts the coordinator): 0 in the original, 1 in the restored tree, which checkpoints
/// itself again from inside its PID namespace.
#[test]
fn the_api_in_a_parent_checkpoints_its_tree() {
    let t = TestDir::new("tree_api");
    let exe = compile_c(&t.path, "tree_api", API_C);
    let argv = [
        exe.as_os_str(),
        OsStr::new("60"),
        OsStr::new("20"),
        OsStr::new("go"),
        OsStr::new("50"),
    ];
    let at_hold = |r: &TreeRun| count_lines(&r.out) >= 49;
    let expected = uninterrupted(&t, &argv, at_hold);
    assert!(expected.ends_with("PASS\n"), "{expected}");

    let mut run = TreeRun::start(&t.sub("run"), &t.join("rt"), &argv, true);
    run.wait_for("the program to reach step 49", at_hold);
    assert_eq!(
        read_lossy(&run.err),
        "step 20: checkpoint written\nstep 40: checkpoint written\n"
    );
    let images = tree_images(&run.dir);
    assert_eq!(images.len(), 2, "{images:?}");
    for img in &images {
        let info = info_json(img);
        assert_eq!(
            info["metadata"]["tree"]["members"].as_array().map(Vec::len),
            Some(2),
            "{info}"
        );
        assert_eq!(info["metadata"]["checkpoint"]["trigger"], "api", "{info}");
    }
    kill_tree(&mut run);
    run.go();
    restart_matches(&images[1], &run, &expected);
    assert_eq!(
        read_lossy(&run.err),
        "step 20: checkpoint written\nstep 40: restarted from the checkpoint\n\
         step 60: checkpoint written\n"
    );
    assert_eq!(tree_images(&run.dir).len(), 3);
}

/// `forkpoint run --interval` of a program with a child: the root's timer checkpoints the
/// whole tree (the child takes no images of its own), and the newest image restores it.
#[test]
fn interval_checkpoints_of_a_tree() {
    let t = TestDir::new("tree_interval");
    let exe = compile_c(&t.path, "tree_api", API_C);
    let argv = [
        exe.as_os_str(),
        OsStr::new("400"),
        OsStr::new("0"),
        OsStr::new("go"),
        OsStr::new("300"),
    ];
    let at_hold = |r: &TreeRun| count_lines(&r.out) >= 299;
    let expected = uninterrupted(&t, &argv, at_hold);
    assert!(expected.ends_with("PASS\n"), "{expected}");

    let mut run = TreeRun::start_with(
        &t.sub("run"),
        &t.join("rt"),
        &argv,
        Some(&["--interval", "200ms"]),
    );
    run.wait_for("the program to reach its hold step", at_hold);
    wait_until("two interval images of the tree", WAIT, || {
        assert!(run.proc.running(), "the program ended early");
        tree_images(&run.dir).len() >= 2
    });
    kill_tree(&mut run);
    let images = tree_images(&run.dir);
    let newest = images.last().unwrap();
    let info = info_json(newest);
    assert_eq!(
        info["metadata"]["checkpoint"]["trigger"], "interval",
        "{info}"
    );
    assert_eq!(
        info["metadata"]["tree"]["members"].as_array().map(Vec::len),
        Some(2),
        "{info}"
    );
    let own: Vec<_> = fs::read_dir(&run.dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".fpk") && !n.contains(".tree-"))
        .collect();
    assert!(own.is_empty(), "single-process images: {own:?}");
    run.go();
    restart_matches(newest, &run, &expected);
}
