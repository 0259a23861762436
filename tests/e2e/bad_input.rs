//! Bad input: damaged images and a changed machine are refused before anything starts;
//! checkpoints that cannot be written leave the program running, unharmed.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use forkpoint_image::build::{rewrite_header, rewrite_metadata};
use forkpoint_image::{ImageFile, FORMAT_MAJOR, FORMAT_MINOR};

use crate::harness::*;

fn workload_argv(exe: &Path, dir: &Path, hold: u32) -> Vec<std::ffi::OsString> {
    vec![
        exe.into(),
        dir.into(),
        "300".into(),
        "2000".into(),
        hold.to_string().into(),
    ]
}

fn assert_mentions(stderr: &str, case: &str, any_of: &[&str]) {
    let lower = stderr.to_lowercase();
    assert!(
        any_of.iter().any(|w| lower.contains(&w.to_lowercase())),
        "{case}: the error should name the cause (one of {any_of:?}), got:\n{stderr}"
    );
}

/// Runs `forkpoint info` (optionally `--verify`) and returns (success, stderr).
fn info(image: &Path, verify: bool) -> (bool, String) {
    let mut cmd = Command::new(forkpoint());
    cmd.arg("info");
    if verify {
        cmd.arg("--verify");
    }
    let out = output_within(cmd.arg(image), WAIT);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The lowest xsave feature bit this CPU's kernel does not enable.
fn missing_xsave_bit() -> u64 {
    let have = xcr0();
    (2..63)
        .map(|b| 1u64 << b)
        .find(|bit| have & bit == 0)
        .expect("some XCR0 bit is clear")
}

#[test]
fn bad_images_are_refused_before_anything_starts() {
    let t = TestDir::new("bad-images");
    let exe = compile_c(&t.path, "workload", WORKLOAD_C);

    let reference = t.sub("ref");
    fs::write(reference.join("go"), "").unwrap();
    let ref_io = Io::in_dir(&reference, "prog");
    run_reference(&workload_argv(&exe, &reference, 200), &reference, &ref_io);

    let run = t.sub("run");
    let images = t.sub("images");
    let io = Io::in_dir(&run, "prog");
    let mut proc = start_under_forkpoint(
        &workload_argv(&exe, &run, 200),
        &run,
        &images,
        &t.join("rt"),
        &io,
        &[],
    );
    wait_for_lines(&mut proc, &io.stdout, 50);
    let image = checkpoint_ok(proc.pid);
    assert_killed(proc.kill9(), "the original program");
    fs::write(run.join("go"), "").unwrap();
    let offset = saved_offset(&image, 1);
    // Cut stdout back to the checkpoint: a restart that ran the program would write more.
    truncate_to(&io.stdout, offset);

    let good = fs::read(&image).unwrap();
    let parsed = ImageFile::open(&image).unwrap();
    let bad = t.sub("bad");
    let write = |name: &str, bytes: &[u8]| -> PathBuf {
        let p = bad.join(name);
        fs::write(&p, bytes).unwrap();
        p
    };
    let rio = Io::in_dir(&run, "refused");

    // Truncated: half the file, and just the last byte missing.
    for (name, len) in [("half", good.len() / 2), ("short", good.len() - 1)] {
        let p = write(&format!("truncated-{name}.fpk"), &good[..len]);
        let err = restart_refused(&p, &rio, &io.stdout);
        assert_mentions(&err, "truncated image", &["truncat", "too short"]);
        assert!(!info(&p, false).0, "info accepted a truncated image");
    }

    // A flipped byte in the largest chunk.
    let (ci, chunk) = parsed
        .metadata
        .chunks
        .iter()
        .enumerate()
        .max_by_key(|(_, c)| c.stored_len)
        .expect("the image stores pages");
    let mut b = good.clone();
    b[(chunk.offset + chunk.stored_len / 2) as usize] ^= 0x55;
    let p = write("chunk-flip.fpk", &b);
    let err = restart_refused(&p, &rio, &io.stdout);
    assert_mentions(&err, "flipped chunk byte", &["chunk"]);
    assert_mentions(&err, "flipped chunk byte", &["checksum", "crc", "corrupt"]);
    let (ok, err) = info(&p, true);
    assert!(!ok, "info --verify accepted a damaged chunk");
    assert_mentions(&err, "info --verify", &[&format!("chunk {ci}")]);

    // A flipped byte in the metadata.
    let mut b = good.clone();
    let f = parsed.footer;
    b[(f.metadata_offset + f.metadata_len / 2) as usize] ^= 0x01;
    let p = write("metadata-flip.fpk", &b);
    let err = restart_refused(&p, &rio, &io.stdout);
    assert_mentions(&err, "flipped metadata byte", &["metadata"]);
    assert_mentions(
        &err,
        "flipped metadata byte",
        &["checksum", "crc", "corrupt"],
    );
    assert!(!info(&p, false).0, "info accepted damaged metadata");

    // Wrong magic.
    let mut b = good.clone();
    b[..8].copy_from_slice(b"NOTFPKIM");
    let p = write("magic.fpk", &b);
    let err = restart_refused(&p, &rio, &io.stdout);
    assert_mentions(&err, "wrong magic", &["magic", "not a forkpoint image"]);

    // A newer format: minor and major, with a valid header checksum.
    for (name, major, minor) in [
        ("minor", FORMAT_MAJOR, FORMAT_MINOR + 1),
        ("major", FORMAT_MAJOR + 1, 0),
    ] {
        let b = rewrite_header(&good, |h| {
            h.major = major;
            h.minor = minor;
        });
        let p = write(&format!("version-{name}.fpk"), &b);
        let err = restart_refused(&p, &rio, &io.stdout);
        assert_mentions(&err, "newer format version", &["version"]);
    }

    // The image needs vector state this CPU does not have.
    let bit = missing_xsave_bit();
    let b = rewrite_metadata(&good, |m| m.cpu.xsave_required |= bit);
    let p = write("cpu.fpk", &b);
    let err = restart_refused(&p, &rio, &io.stdout);
    assert_mentions(&err, "missing CPU feature", &["xsave", "cpu", "feature"]);

    // Control: the untouched image restores, and the program completes its run.
    restart_to_completion(&image, &Io::in_dir(&run, "restart"));
    assert_same_file(&ref_io.stdout, &io.stdout);
    assert_same_file(&reference.join("data.bin"), &run.join("data.bin"));

    // The file behind the program's private mapping changes.
    truncate_to(&io.stdout, offset);
    let input = run.join("input.bin");
    let mut bytes = fs::read(&input).unwrap();
    bytes[0] ^= 1;
    bytes.push(0);
    fs::write(&input, &bytes).unwrap();
    let err = restart_refused(&image, &rio, &io.stdout);
    assert_mentions(&err, "changed mapped file", &["input.bin"]);
}

/// A private tmpfs, unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &Path, size: &str) -> Result<SmallFs, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0777"))
            .arg("tmpfs")
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(SmallFs(dir.to_path_buf()))
        } else {
            let why = String::from_utf8_lossy(&out.stderr);
            Err(why.split_whitespace().collect::<Vec<_>>().join(" "))
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts a failed checkpoint: non-zero exit, a reason, no image under its final name,
/// and the program still running.
fn assert_checkpoint_fails(
    proc: &mut Proc,
    target: &Path,
    args: &[&OsStr],
    case: &str,
    reason: &[&str],
) {
    let ck = checkpoint(proc.pid, args);
    assert!(
        !ck.status.success(),
        "{case}: forkpoint checkpoint should fail, but printed {:?}",
        ck.stdout
    );
    assert!(
        ck.stdout.trim().is_empty(),
        "{case}: printed an image path on failure"
    );
    assert_mentions(&ck.stderr, case, reason);
    assert!(
        !target.exists(),
        "{case}: {} exists after a failed checkpoint",
        target.display()
    );
    assert!(
        proc.running(),
        "{case}: the program died with the checkpoint"
    );
}

#[test]
fn failed_checkpoints_leave_the_program_unharmed() {
    let t = TestDir::new("ckpt-failures");
    let exe = compile_c(&t.path, "workload", WORKLOAD_C);
    let reference = t.sub("ref");
    fs::write(reference.join("go"), "").unwrap();
    let ref_io = Io::in_dir(&reference, "prog");
    run_reference(&workload_argv(&exe, &reference, 100), &reference, &ref_io);

    let run = t.sub("run");
    let images = t.sub("images");
    let io = Io::in_dir(&run, "prog");
    let mut proc = start_under_forkpoint(
        &workload_argv(&exe, &run, 100),
        &run,
        &images,
        &t.join("rt"),
        &io,
        &[],
    );
    // The program holds at step 100 until `go` exists: all of this happens mid-run.
    wait_for_lines(&mut proc, &io.stdout, 99);

    // The output directory does not exist.
    let missing = t.join("no/such/dir/image.fpk");
    assert_checkpoint_fails(
        &mut proc,
        &missing,
        &[OsStr::new("--output"), missing.as_os_str()],
        "missing directory",
        &["no such file", "does not exist", "no/such/dir"],
    );

    // The image directory given to `forkpoint run` was removed since.
    fs::remove_dir(&images).unwrap();
    let ck = checkpoint(proc.pid, &[]);
    assert!(
        !ck.status.success(),
        "checkpoint into a removed --dir succeeded"
    );
    assert_mentions(
        &ck.stderr,
        "removed image directory",
        &["no such file", "does not exist"],
    );
    assert!(proc.running(), "the program died with the checkpoint");
    assert!(!images.exists());
    fs::create_dir(&images).unwrap();

    // A directory we cannot write to. Root (with CAP_DAC_OVERRIDE) writes anyway.
    let ro = t.sub("readonly");
    fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    let probe = ro.join("probe");
    if fs::write(&probe, "").is_ok() {
        let _ = fs::remove_file(&probe);
        skip(
            "not-writable directory: this user can write to a mode 0555 directory \
             (root); the unprivileged CI pass covers it",
        );
    } else {
        let target = ro.join("image.fpk");
        assert_checkpoint_fails(
            &mut proc,
            &target,
            &[OsStr::new("--output"), target.as_os_str()],
            "read-only directory",
            &["permission denied", "read-only", "not writable"],
        );
        assert!(files_in(&ro).is_empty(), "files left in the read-only dir");
    }

    // Disk full: a 2 MiB tmpfs cannot hold the image (the program has 8 MiB of random bytes).
    let small = t.sub("small");
    match SmallFs::mount(&small, "2m") {
        Err(why) => skip(&format!(
            "disk full: cannot mount a small tmpfs here ({why}); the root CI pass covers it"
        )),
        Ok(fs_guard) => {
            let target = small.join("image.fpk");
            assert_checkpoint_fails(
                &mut proc,
                &target,
                &[OsStr::new("--output"), target.as_os_str()],
                "disk full",
                &["no space left", "space", "enospc"],
            );
            let left = files_in(&small);
            assert!(
                left.is_empty(),
                "a failed checkpoint left files on the full disk: {left:?}"
            );
            drop(fs_guard);
        }
    }

    // Still checkpointable after all that, and still running.
    let image = checkpoint_ok(proc.pid);
    assert!(image.starts_with(&images));

    // Let it finish: its output is exactly the uninterrupted run's.
    fs::write(run.join("go"), "").unwrap();
    let st = proc.wait(WAIT);
    assert!(
        st.success(),
        "the program ended with {st}: {}",
        read_lossy(&io.stderr)
    );
    assert_same_file(&ref_io.stdout, &io.stdout);
    assert_same_file(&ref_io.stderr, &io.stderr);
    assert_same_file(&reference.join("data.bin"), &run.join("data.bin"));
}
