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
