//! The command-line tool on its own: argument handling, clear errors, `info` on images made
//! in memory, and `run`'s environment.

use std::fs;
use std::path::Path;
use std::process::Command;

use forkpoint_image::build::{sample_metadata, ImageBuilder};
use forkpoint_image::PAGE_SIZE;

use crate::harness::*;

fn fp(args: &[&str]) -> std::process::Output {
    output_within(Command::new(forkpoint()).args(args), WAIT)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn info_on_a_missing_file_names_it() {
    let o = fp(&["info", "/nonexistent/image.fpk"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.starts_with("forkpoint info: "), "{e}");
    assert!(
        e.contains("/nonexistent/image.fpk") && e.contains("No such file"),
        "{e}"
    );
}

#[test]
fn restart_of_a_missing_file_fails_cleanly() {
    let o = fp(&["restart", "/nonexistent/image.fpk"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("forkpoint restart: "),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_arguments_are_usage_errors() {
    for args in [
        &["checkpoint", "notapid"][..],
        &["checkpoint", "--timeout", "soon", "1"],
        &["checkpoint", "--output", "/", "1"],
        &["run", "--signal", "SIGKILL", "--", "true"],
        &["run", "--interval", "5 parsecs", "--", "true"],
        // Below the library's 1 ms: once accepted here and passed on as "0ms", which the
        // library refused, so the program ran without checkpoints.
        &["run", "--interval", "0.5ms", "--", "true"],
        &["run"],
        &["frobnicate"],
    ] {
        let o = fp(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

/// A process without the library would be killed by the checkpoint signal (the default
/// action of a realtime signal): `checkpoint` must refuse, and leave it alone.
#[test]
fn checkpoint_refuses_a_process_without_the_library() {
    let mut sleeper = Proc::new(Command::new("sleep").arg("60").spawn().unwrap(), "sleep");
    let o = fp(&["checkpoint", "--timeout", "5s", &sleeper.pid.to_string()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("libforkpoint"), "{}", stderr(&o));
    assert!(
        sleeper.running(),
        "checkpoint killed a process without the library"
    );
    let _ = sleeper.kill9();

    let o = fp(&["checkpoint", "2147483647"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no process"), "{}", stderr(&o));
}

#[test]
fn run_execs_in_place_with_the_library_preloaded() {
    let t = TestDir::new("cli-run");
    let out = t.join("env.txt");
    let images = t.sub("images");
    let mut cmd = Command::new(forkpoint());
    cmd.args(["run", "--dir"])
        .arg(&images)
        .args(["--interval", "2m", "--signal", "SIGUSR2", "--", "sh", "-c"])
        .arg(
            "echo \"$$\"; echo \"$LD_PRELOAD\"; echo \"$FORKPOINT_DIR\"; \
             echo \"$FORKPOINT_INTERVAL\"; echo \"$FORKPOINT_SIGNAL\"",
        )
        .env("LD_PRELOAD", "")
        .env("FORKPOINT_RUNTIME_DIR", t.join("rt"))
        .stdout(fs::File::create(&out).unwrap());
    let mut p = Proc::new(cmd.spawn().unwrap(), "forkpoint run sh");
    let st = p.wait(WAIT);
    assert!(st.success());
    let text = fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(
        lines[0],
        p.pid.to_string(),
        "the program must get run's PID"
    );
    assert!(Path::new(lines[1]).is_absolute(), "{text}");
    assert!(lines[1].ends_with("libforkpoint.so"), "{text}");
    assert_eq!(Path::new(lines[2]), images);
    assert_eq!(lines[3], "120000ms");
    assert_eq!(lines[4], "12");

    let o = fp(&["run", "--", "/nonexistent/program"]);
    assert_eq!(o.status.code(), Some(127));
    assert!(
        stderr(&o).contains("/nonexistent/program"),
        "{}",
        stderr(&o)
    );

    let o = fp(&["run", "--dir", "/nonexistent/dir", "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent/dir"), "{}", stderr(&o));
}

fn sample_image(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let meta = sample_metadata();
    let start = meta.mappings[0].start;
    let mut page = vec![0u8; 3 * PAGE_SIZE as usize];
    for (i, b) in page.iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    let bytes = ImageBuilder::new(meta).pages(start, &page).build();
    let path = dir.join("sample.fpk");
    fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

#[test]
fn info_shows_an_image() {
    let t = TestDir::new("cli-info");
    let (path, bytes) = sample_image(&t.path);
    let p = path.to_str().unwrap();

    let o = fp(&["info", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    for want in [
        "program",
        "checkpoint",
        "memory map",
        "descriptors",
        "signals",
        "/usr/bin/example",
    ] {
        assert!(text.contains(want), "info lacks {want:?}:\n{text}");
    }

    let o = fp(&["info", "--verify", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("verified: 1 chunks, 12288 bytes"), "{text}");

    let o = fp(&["info", "--json", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["format"]["major"], 1);
    assert_eq!(v["file_len"], bytes.len() as u64);
    assert!(v["verified"].is_null());
    let mappings = v["metadata"]["mappings"].as_array().unwrap();
    let regions = v["regions"].as_array().unwrap();
    assert_eq!(regions.len(), mappings.len());
    assert_eq!(regions[0]["stored_pages"], 3);
    assert_eq!(regions[0]["start"], mappings[0]["start"]);

    // A flipped byte in the chunk: info still reads the metadata, --verify finds it.
    let mut bad = bytes.clone();
    bad[PAGE_SIZE as usize + 10] ^= 0xff;
    let badp = t.join("bad.fpk");
    fs::write(&badp, &bad).unwrap();
    let b = badp.to_str().unwrap();
    assert!(fp(&["info", b]).status.success());
    let o = fp(&["info", "--verify", b]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("chunk 0"), "{}", stderr(&o));
    let o = fp(&["info", "--verify", "--json", b]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verified"], false);
}
