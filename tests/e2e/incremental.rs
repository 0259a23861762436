//! Incremental checkpoints: `checkpoint --incremental` writes only the pages written since
//! the last checkpoint, naming it as the parent. A restart resolves the chain and must end
//! exactly as an uninterrupted run, from the newest link or from any older one; `compact`
//! merges a chain into one whole image; a chain with a link missing or replaced is refused
//! before anything runs.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use forkpoint_image::ImageFile;

use crate::harness::*;

const INC_MEM_C: &str = include_str!("../programs/inc_mem.c");
const PHASES: usize = 6;

/// `forkpoint restart ARGS IMAGE` to its end; (success, stderr).
fn restart_with(args: &[&OsStr], image: &Path) -> (bool, String) {
    let mut cmd = Command::new(forkpoint());
    cmd.arg("restart").args(args).arg(image);
    let out = output_within(&mut cmd, WAIT);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn incremental_chains_restart_byte_identical_compact_and_refuse_broken_links() {
    let t = TestDir::new("incremental");
    let exe = compile_c(&t.path, "inc_mem", INC_MEM_C);
    let argv = argv(&[&exe, &"16", &PHASES.to_string()]);
    let reference = t.sub("ref");
    for k in 1..=PHASES {
        fs::write(reference.join(format!("go.{k}")), "").unwrap();
    }
    run_reference(&argv, &reference, &Io::in_dir(&reference, "run"));
    let work = t.sub("work");
    let images = t.sub("images");
    let io = Io::in_dir(&work, "run");
    let mut p = start_under_forkpoint(&argv, &work, &images, &t.join("rt"), &io, &[]);
    let mut chain: Vec<PathBuf> = Vec::new();
    for k in 1..=PHASES {
        wait_for_lines(&mut p, &io.stdout, 2 * k - 1);
        let c = checkpoint(p.pid, &[OsStr::new("--incremental")]);
        let image = c.image();
        if k == 1 {
            assert!(
                c.stderr.contains("whole image: dirty-page tracking starts"),
                "{}",
                c.stderr
            );
        } else {
            assert!(c.stderr.contains("incremental image"), "{}", c.stderr);
        }
        chain.push(image);
        if k < PHASES {
            fs::write(work.join(format!("go.{k}")), "").unwrap();
        }
    }
    assert_killed(p.kill9(), "inc_mem");
    // Written at this point: the output up to the last checkpoint.
    let at_checkpoint = fs::read(&io.stdout).unwrap();
    fs::write(work.join(format!("go.{PHASES}")), "").unwrap();

    let full = fs::metadata(&chain[0]).unwrap().len();
    for (k, link) in chain.iter().enumerate() {
        let img = ImageFile::open(link).unwrap();
        let m = &img.metadata;
        if k == 0 {
            assert!(m.parent.is_none());
            continue;
        }
        let parent = m
            .parent
            .as_ref()
            .expect("an incremental image names its parent");
        assert_eq!(parent.path, chain[k - 1].to_str().unwrap());
        assert_eq!(
            parent.digest,
            ImageFile::open(&chain[k - 1]).unwrap().digest
        );
        assert!(m.stats.pages_inherited > 0 && !m.inherited.is_empty());
        let len = fs::metadata(link).unwrap().len();
        assert!(
            len * 5 < full,
            "link {k} is {len} bytes, the whole image {full}: not incremental"
        );
    }

    // From the newest link, and from an older one.
    let leaf = chain.last().unwrap().clone();
    for from in [&leaf, &chain[2]] {
        let (ok, err) = restart_with(&[], from);
        assert!(ok, "restart from {} failed:\n{err}", from.display());
        assert_same_file(&reference.join("run.out"), &io.stdout);
    }

    // Compacted: one whole image, which needs no parent.
    let whole = t.join("whole.fpk");
    let mut cmd = Command::new(forkpoint());
    cmd.arg("compact").arg(&leaf).arg("-o").arg(&whole);
    let out = output_within(&mut cmd, WAIT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ImageFile::open(&whole).unwrap().metadata.parent.is_none());

    // The parents moved away: the chain is refused before anything runs, unless the
    // directory holding them is given.
    let moved = t.sub("moved");
    for link in &chain[..PHASES - 1] {
        fs::rename(link, moved.join(link.file_name().unwrap())).unwrap();
    }
    fs::write(&io.stdout, &at_checkpoint).unwrap();
    let (ok, err) = restart_with(&[], &leaf);
    assert!(!ok, "a restart without its parents ran");
    assert!(
        err.contains("its parent image")
            && err.contains("is missing")
            && err.contains("--images-dir"),
        "{err}"
    );
    assert_eq!(
        fs::read(&io.stdout).unwrap(),
        at_checkpoint,
        "the refused restart ran"
    );
    let (ok, err) = restart_with(&[OsStr::new("--images-dir"), moved.as_os_str()], &leaf);
    assert!(ok, "{err}");
    assert_same_file(&reference.join("run.out"), &io.stdout);

    // The compacted image restarts alone.
    let (ok, err) = restart_with(&[], &whole);
    assert!(ok, "{err}");
    assert_same_file(&reference.join("run.out"), &io.stdout);

    // A link replaced by another image of the chain: refused.
    let second = moved.join(chain[1].file_name().unwrap());
    let third = moved.join(chain[2].file_name().unwrap());
    fs::copy(&second, &third).unwrap();
    let (ok, err) = restart_with(&[OsStr::new("--images-dir"), moved.as_os_str()], &leaf);
    assert!(!ok, "a restart over a replaced link ran");
    assert!(
        err.contains("is missing") || err.contains("not the parent"),
        "{err}"
    );
}

/// `inc_mem 8 PHASES` under forkpoint in `dir`/work, images in `dir`/images; its reference
/// output in `dir`/ref.
struct Job {
    work: PathBuf,
    reference: PathBuf,
    io: Io,
    p: Proc,
}

fn start_job(t: &TestDir, name: &str, exe: &Path, phases: usize, images: &Path) -> Job {
    let argv = argv(&[&exe, &"8", &phases.to_string()]);
    let reference = t.sub(&format!("{name}-ref"));
    for k in 1..=phases {
        fs::write(reference.join(format!("go.{k}")), "").unwrap();
    }
    run_reference(&argv, &reference, &Io::in_dir(&reference, "run"));
    let work = t.sub(&format!("{name}-work"));
    let io = Io::in_dir(&work, "run");
    let p = start_under_forkpoint(
        &argv,
        &work,
        images,
        &t.join(&format!("{name}-rt")),
        &io,
        &[],
    );
    Job {
        work,
        reference,
        io,
        p,
    }
}

impl Job {
    /// Waits for "ready k" and checkpoints incrementally.
    fn checkpoint_at(&mut self, k: usize, extra: &[&OsStr]) -> Ckpt {
        wait_for_lines(&mut self.p, &self.io.stdout, 2 * k - 1);
        let mut args = vec![OsStr::new("--incremental")];
        args.extend_from_slice(extra);
        checkpoint(self.p.pid, &args)
    }

    fn go(&self, k: usize) {
        fs::write(self.work.join(format!("go.{k}")), "").unwrap();
    }

    fn restart_to_the_end(&self, image: &Path, args: &[&OsStr]) {
        let (ok, err) = restart_with(args, image);
        assert!(ok, "restart from {} failed:\n{err}", image.display());
        assert_same_file(&self.reference.join("run.out"), &self.io.stdout);
    }
}

#[test]
fn a_failed_or_interrupted_checkpoint_leaves_a_usable_chain() {
    let t = TestDir::new("incremental-faults");
    let exe = compile_c(&t.path, "inc_mem", INC_MEM_C);
    let images = t.sub("images");
    let mut job = start_job(&t, "job", &exe, 5, &images);
    job.checkpoint_at(1, &[]).image();
    job.go(1);
    // A checkpoint that cannot be written: the next one must not build on it.
    let nowhere = t.join("no-such-dir").join("x.fpk");
    let failed = job.checkpoint_at(2, &[OsStr::new("--output"), nowhere.as_os_str()]);
    assert!(!failed.status.success(), "{}", failed.stdout);
    job.go(2);
    let c = job.checkpoint_at(3, &[]);
    c.image();
    assert!(
        c.stderr.contains("whole image") && c.stderr.contains("did not complete"),
        "{}",
        c.stderr
    );
    job.go(3);
    let a = job.checkpoint_at(4, &[]);
    let a_image = a.image();
    assert!(a.stderr.contains("incremental image"), "{}", a.stderr);
    job.go(4);
    // The program killed while its next checkpoint is in flight: either the writer finished
    // that image (it outlives the program), or there is none and the last one stands.
    wait_for_lines(&mut job.p, &job.io.stdout, 9);
    let mut cmd = Command::new(forkpoint());
    cmd.args(["checkpoint", "--incremental", "--timeout", "60s"])
        .arg(job.p.pid.to_string())
        .env_remove("FORKPOINT_RUNTIME_DIR")
        .stdin(std::process::Stdio::null())
        .stdout(fs::File::create(t.join("b.out")).unwrap())
        .stderr(fs::File::create(t.join("b.err")).unwrap());
    let mut b = Proc::new(cmd.spawn().unwrap(), "forkpoint checkpoint");
    assert_killed(job.p.kill9(), "inc_mem");
    let b_ok = b.wait(WAIT).success();
    let at_kill = fs::read(&job.io.stdout).unwrap();
    job.go(5);
    if b_ok {
        let b_image = PathBuf::from(fs::read_to_string(t.join("b.out")).unwrap().trim());
        job.restart_to_the_end(&b_image, &[]);
        fs::write(&job.io.stdout, &at_kill).unwrap();
    }
    job.restart_to_the_end(&a_image, &[]);
    // No half-written image under a final name.
    for e in fs::read_dir(&images).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "fpk") {
            ImageFile::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
}

#[test]
fn interleaved_chains_in_one_directory_resolve_by_digest() {
    let t = TestDir::new("incremental-interleaved");
    let exe = compile_c(&t.path, "inc_mem", INC_MEM_C);
    let images = t.sub("images");
    let phases = 4;
    let mut jobs = [
        start_job(&t, "a", &exe, phases, &images),
        start_job(&t, "b", &exe, phases, &images),
    ];
    let mut leaves = Vec::new();
    for k in 1..=phases {
        for j in jobs.iter_mut() {
            let image = j.checkpoint_at(k, &[]).image();
            if k < phases {
                j.go(k);
            } else {
                leaves.push(image);
            }
        }
    }
    for j in jobs.iter_mut() {
        assert_killed(j.p.kill9(), "inc_mem");
        j.go(phases);
    }
    // Every image renamed, the two chains' names shuffled together: only the digests tell
    // which parent is whose.
    let mut names: Vec<PathBuf> = fs::read_dir(&images)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2 * phases);
    let mut renamed = Vec::new();
    for (i, p) in names.iter().enumerate() {
        let to = images.join(format!("img-{}.fpk", (i * 5) % names.len()));
        let tmp = images.join(format!("tmp-{i}"));
        fs::rename(p, &tmp).unwrap();
        renamed.push((p.clone(), tmp, to));
    }
    for (_, tmp, to) in &renamed {
        fs::rename(tmp, to).unwrap();
    }
    for (j, leaf) in jobs.iter().zip(&leaves) {
        let now = &renamed.iter().find(|(from, _, _)| from == leaf).unwrap().2;
        j.restart_to_the_end(now, &[]);
    }
}
