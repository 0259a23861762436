//! Lazy restarts (`restart --lazy`): the program runs before its memory is filled, and must
//! still end exactly as an uninterrupted run, whatever touches the missing pages first
//! (read(2) and write(2) into them, a fork, an mremap, MADV_DONTNEED), and must never run
//! on wrong memory (a damaged chunk found late, the helper killed).
//!
//! Lazy restarts need a userfaultfd that takes faults from the kernel too (CAP_SYS_PTRACE
//! here): unprivileged, `--lazy` restores eagerly and says so, and the same tests check that
//! the program still ends right.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::harness::*;

const LAZY_MEM_C: &str = include_str!("../programs/lazy_mem.c");

/// Whether this user gets lazy restarts (the helper's userfaultfd needs CAP_SYS_PTRACE).
fn lazy_possible() -> bool {
    is_root()
}

/// `lazy_mem MIB` checkpointed while it waits for `go`, killed; and its reference output.
struct Checkpointed {
    _t: TestDir,
    work: PathBuf,
    image: PathBuf,
    reference: PathBuf,
}

fn checkpointed(name: &str, mib: u32) -> Checkpointed {
    checkpointed_with(name, &[&mib.to_string()])
}

fn checkpointed_with(name: &str, args: &[&str]) -> Checkpointed {
    let t = TestDir::new(name);
    let exe = compile_c(&t.path, "lazy_mem", LAZY_MEM_C);
    let mut argv = argv(&[&exe]);
    argv.extend(args.iter().map(|a| os(a)));
    // The reference run finds its `go` at once.
    let reference = t.sub("ref");
    fs::write(reference.join("go"), "").unwrap();
    run_reference(&argv, &reference, &Io::in_dir(&reference, "run"));
    let work = t.sub("work");
    let images = t.sub("images");
    let io = Io::in_dir(&work, "run");
    let mut p = start_under_forkpoint(&argv, &work, &images, &t.join("rt"), &io, &[]);
    wait_for_lines(&mut p, &io.stdout, 1);
    let image = checkpoint_ok(p.pid);
    assert_killed(p.kill9(), "lazy_mem");
    Checkpointed {
        _t: t,
        work,
        image,
        reference,
    }
}

impl Checkpointed {
    /// `forkpoint restart --lazy -v IMAGE` with its output in the work directory (the
    /// program's own stdout is the file it had, reopened at its offset).
    fn restart(&self, env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(forkpoint());
        cmd.arg("restart")
            .arg("--lazy")
            .arg("-v")
            .arg(&self.image)
            .current_dir(&self.work)
            .stdin(Stdio::null())
            .stdout(fs::File::create(self.work.join("restart.out")).unwrap())
            .stderr(fs::File::create(self.stderr()).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::new(
            cmd.spawn().expect("spawn restart"),
            "lazily restarted program",
        )
    }

    /// `forkpoint restart -v ARGS IMAGE` under `FORKPOINT_RESTART=lazy`, from the output
    /// the checkpoint left (`ready`), to the reference run's end; its stderr.
    fn restart_with_lazy_env(&self, args: &[&str]) -> String {
        fs::write(self.work.join("run.out"), "ready\n").unwrap();
        let mut cmd = Command::new(forkpoint());
        cmd.args(["restart", "-v"])
            .args(args)
            .arg(&self.image)
            .env("FORKPOINT_RESTART", "lazy")
            .current_dir(&self.work);
        let out = output_within(&mut cmd, WAIT);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        self.assert_same_as_reference();
        err
    }

    fn stderr(&self) -> PathBuf {
        self.work.join("restart.err")
    }

    fn go(&self) {
        fs::write(self.work.join("go"), "").unwrap();
    }

    /// The program ended as the uninterrupted run did: stdout and the file it wrote.
    fn assert_same_as_reference(&self) {
        assert_same_file(&self.reference.join("run.out"), &self.work.join("run.out"));
        assert_same_file(&self.reference.join("w.out"), &self.work.join("w.out"));
    }

    /// The restart -v said it went lazy (where this user may), or why not.
    fn assert_lazy_said(&self) {
        let err = String::from_utf8_lossy(&fs::read(self.stderr()).unwrap()).into_owned();
        if lazy_possible() {
            assert!(
                err.contains("chunks filled after the hand-over") && err.contains("registration"),
                "restart -v did not say it went lazy:\n{err}"
            );
        } else {
            assert!(
                err.contains("not lazy, restoring eagerly") && err.contains("UFFD_USER_MODE_ONLY"),
                "restart -v did not say why it is not lazy:\n{err}"
            );
        }
    }

    /// The helper of the restarted program `pid`.
    fn helper_of(&self, pid: i32) -> Option<i32> {
        fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let child: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            let ppid: i32 = rest.split(' ').nth(1)?.parse().ok()?;
            (comm == "fp-lazy" && ppid == pid).then_some(child)
        })
    }
}

fn program_done(path: &Path) -> bool {
    read_lossy(path).lines().any(|l| l == "done")
}

/// Every page arrives on demand (no background fill: a test-build knob), first touched by
/// read(2), write(2), a forked child, mremap and MADV_DONTNEED.
#[test]
fn lazy_restart_on_demand_only_is_byte_identical() {
    let c = checkpointed("lazy-demand", 64);
    c.go();
    let mut p = c.restart(&[("FORKPOINT_TEST_LAZY_HOLD", "1")]);
    let st = p.wait(WAIT);
    assert!(
        st.success(),
        "restart ended with {st}:\n{}",
        read_lossy(&c.stderr())
    );
    c.assert_lazy_said();
    c.assert_same_as_reference();
}

/// With the background fill, the fill finishes and says what it did; the working set it
/// recorded is filled first by the next lazy restart of the same image, which also ends
/// right. `FORKPOINT_RESTART=lazy` is the same as `--lazy`, `--eager` overrides it.
#[test]
fn lazy_restart_fills_in_the_background_and_learns_the_working_set() {
    let c = checkpointed("lazy-fill", 96);
    c.go();
    let mut p = c.restart(&[]);
    let st = p.wait(WAIT);
    let err = String::from_utf8_lossy(&fs::read(c.stderr()).unwrap()).into_owned();
    assert!(st.success(), "restart ended with {st}:\n{err}");
    c.assert_same_as_reference();
    c.assert_lazy_said();
    let wset = PathBuf::from(format!("{}.wset", c.image.display()));
    if lazy_possible() {
        // The program may end before the fill does; then the helper says so once it sees
        // the program gone (after restart's own exit), and records the working set.
        wait_until("the helper's last word", WAIT, || {
            let err = read_lossy(&c.stderr());
            err.contains("lazy fill done") || err.contains("ended before the lazy fill was done")
        });
        wait_until("the working set", WAIT, || wset.is_file());
        assert!(
            wset.is_file(),
            "no working set recorded at {}",
            wset.display()
        );
    }
    // Again, from the same image: the working set goes first.
    let err = c.restart_with_lazy_env(&[]);
    if lazy_possible() {
        assert!(
            err.contains("of the last working set filled first"),
            "the second restart did not use the working set:\n{err}"
        );
    }
    // --eager wins over the environment.
    let err = c.restart_with_lazy_env(&["--eager"]);
    assert!(
        !err.contains("after the hand-over"),
        "--eager went lazy:\n{err}"
    );
}

/// A chunk damaged in the image and only needed after the hand-over: the program is killed
/// with a message, and never prints results computed from wrong memory. (Eager, the
/// restart refuses before anything runs.)
#[test]
fn lazy_restart_kills_the_program_on_a_damaged_chunk() {
    let c = checkpointed("lazy-damaged", 64);
    // A chunk in the middle of the largest region: the program's big buffer.
    let info = info_json(&c.image);
    let chunks = info["metadata"]["chunks"].as_array().unwrap().clone();
    let big = info["metadata"]["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|m| m["end"].as_u64().unwrap() - m["start"].as_u64().unwrap())
        .unwrap()
        .clone();
    let (s, e) = (big["start"].as_u64().unwrap(), big["end"].as_u64().unwrap());
    let inside: Vec<&serde_json::Value> = chunks
        .iter()
        .filter(|c| {
            let a = c["runs"][0]["addr"].as_u64().unwrap();
            a >= s && a < e
        })
        .collect();
    assert!(inside.len() >= 4, "too few chunks in the big buffer");
    let victim = inside[inside.len() / 2];
    let at = victim["offset"].as_u64().unwrap() + victim["stored_len"].as_u64().unwrap() / 2;
    let mut bytes = fs::read(&c.image).unwrap();
    bytes[at as usize] ^= 0x55;
    fs::write(&c.image, &bytes).unwrap();
    c.go();
    let mut p = c.restart(&[("FORKPOINT_TEST_LAZY_HOLD", "1")]);
    let st = p.wait(WAIT);
    let err = read_lossy(&c.stderr());
    assert!(
        !st.success(),
        "the program ran on with a damaged chunk:\n{err}"
    );
    assert!(
        !program_done(&c.work.join("run.out")),
        "the program finished"
    );
    assert!(
        !read_lossy(&c.work.join("run.out")).contains("all "),
        "the program printed a result"
    );
    if lazy_possible() {
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(libc::SIGKILL),
            "{err}"
        );
        assert!(
            err.contains("the image is damaged")
                && err.contains("killed rather than run on wrong memory"),
            "{err}"
        );
    } else {
        assert!(err.contains("damaged"), "{err}");
    }
}

/// The image deleted while the program still needs pages from it: the helper keeps it
/// open, so the program ends right.
#[test]
fn lazy_restart_survives_the_image_deleted() {
    let c = checkpointed("lazy-deleted", 64);
    let mut p = c.restart(&[("FORKPOINT_TEST_LAZY_HOLD", "1")]);
    // Handed over (the program runs, waiting for `go`), then the image goes.
    wait_until("the hand-over", WAIT, || {
        read_lossy(&c.stderr()).contains("handing over")
    });
    fs::remove_file(&c.image).unwrap();
    c.go();
    let st = p.wait(WAIT);
    assert!(st.success(), "{st}:\n{}", read_lossy(&c.stderr()));
    c.assert_same_as_reference();
}

/// The helper killed before the fill is done: the kernel kills the program with it (the
/// helper's exit signal), which never runs on pages it could not get.
#[test]
fn lazy_restart_helper_killed_takes_the_program_down() {
    if !lazy_possible() {
        return skip(
            "a lazy restart needs CAP_SYS_PTRACE; unprivileged it is eager, with no helper",
        );
    }
    let c = checkpointed("lazy-helper-killed", 64);
    let mut p = c.restart(&[("FORKPOINT_TEST_LAZY_HOLD", "1")]);
    let mut helper = None;
    wait_until("the helper", WAIT, || {
        helper = c.helper_of(p.pid);
        helper.is_some() && read_lossy(&c.stderr()).contains("handing over")
    });
    // SAFETY: kill(2) of the helper of our own child.
    unsafe { libc::kill(helper.unwrap(), libc::SIGKILL) };
    c.go();
    let st = p.wait(WAIT);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL),
        "the program outlived its helper: {st}"
    );
    assert!(!program_done(&c.work.join("run.out")));
}

/// A checkpoint of a lazily restarted program, taken while pages are still missing, waits
/// for the fill: the new image is whole, and restarts (eagerly) to the right end.
#[test]
fn checkpoint_during_a_lazy_fill_is_whole() {
    let c = checkpointed("lazy-recheckpoint", 128);
    let mut p = c.restart(&[]);
    wait_until("the hand-over", WAIT, || {
        read_lossy(&c.stderr()).contains("handing over")
    });
    let again = checkpoint_ok(p.pid);
    assert_killed(p.kill9(), "lazily restarted program");
    fs::write(c.work.join("run.out"), "ready\n").unwrap();
    c.go();
    let mut cmd = Command::new(forkpoint());
    cmd.arg("restart").arg(&again).current_dir(&c.work);
    let out = output_within(&mut cmd, WAIT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.assert_same_as_reference();
}

/// The program ends right after the hand-over, leaving a child it forked that has not
/// touched its memory yet: the helper goes on filling the child, which ends right.
#[test]
fn lazy_restart_fills_a_child_whose_parent_ended() {
    let c = checkpointed_with("lazy-orphan", &["64", "orphan"]);
    let want = c.reference.join("orphan.out");
    wait_until("the reference run's orphan", WAIT, || want.is_file());
    c.go();
    let mut p = c.restart(&[]);
    let st = p.wait(WAIT);
    assert!(st.success(), "{st}:\n{}", read_lossy(&c.stderr()));
    let got = c.work.join("orphan.out");
    wait_until("the restored program's orphan", WAIT, || got.is_file());
    assert_same_file(&want, &got);
    assert_same_file(&c.reference.join("run.out"), &c.work.join("run.out"));
}
