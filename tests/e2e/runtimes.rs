//! The language runtimes docs/compatibility.md claims, each checkpointed mid-work, killed
//! with SIGKILL, restarted, and compared with an uninterrupted run: node (a JIT loop and an
//! event loop), OpenJDK (G1 and SerialGC), Go (goroutines, SIGURG preemption), Ruby and Lua
//! (interpreters with their own collectors), numpy with OpenBLAS threads, and sqlite3 writing
//! a WAL-mode file database. Each program reads `seed` at start (the test changes it after the
//! checkpoint, so only a restored program prints the reference output), holds at step HOLD
//! until `go` exists, and ends with a digest of all it kept. `.ci/run` installs the runtimes;
//! a missing one fails under CI and is skipped with the reason elsewhere.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::*;
use crate::{roundtrip, Paced};

const LOOP_JS: &str = include_str!("../programs/rt_loop.js");
const EVENTS_JS: &str = include_str!("../programs/rt_events.js");
const LOOP_JAVA: &str = include_str!("../programs/RtLoop.java");
const GOROUTINES_GO: &str = include_str!("../programs/rt_goroutines.go");
const LOOP_RB: &str = include_str!("../programs/rt_loop.rb");
const LOOP_LUA: &str = include_str!("../programs/rt_loop.lua");
const NUMPY_PY: &str = include_str!("../programs/rt_numpy.py");
const SQLITE_PY: &str = include_str!("../programs/rt_sqlite.py");

/// Steps of every program, the step it holds at, and how many lines before the checkpoint.
const STEPS: u32 = 300;
const HOLD: u32 = 200;
const CHECKPOINT_AFTER: usize = 60;

/// `prefix... DIR STEPS HOLD`, checkpointed after [`CHECKPOINT_AFTER`] lines.
fn paced(prefix: Vec<OsString>, outputs: &'static [&'static str]) -> Paced {
    Paced {
        argv: Box::new(move |dir: &Path| {
            let mut v = prefix.clone();
            v.extend([
                dir.into(),
                STEPS.to_string().into(),
                HOLD.to_string().into(),
            ]);
            v
        }),
        checkpoint_after: CHECKPOINT_AFTER,
        outputs,
    }
}

/// Writes `source` into the test directory as `name`, returns its path.
fn script(t: &TestDir, name: &str, source: &str) -> PathBuf {
    let p = t.join(name);
    fs::write(&p, source).unwrap();
    p
}

/// Runs a build step to success (a compiler), within a bound.
fn build(cmd: &mut Command, what: &str) {
    let out = output_within(cmd, Duration::from_secs(300));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn node_cpu_loop() {
    if !have_tool("node") {
        return;
    }
    let t = TestDir::new("node-loop");
    let js = script(&t, "rt_loop.js", LOOP_JS);
    roundtrip(&t, &paced(argv(&[&"node", &js]), &[]));
}

#[test]
fn node_event_loop_with_timers() {
    if !have_tool("node") {
        return;
    }
    let t = TestDir::new("node-events");
    let js = script(&t, "rt_events.js", EVENTS_JS);
    roundtrip(&t, &paced(argv(&[&"node", &js]), &[]));
}

/// `RtLoop.java` compiled into the test directory; returns the class path.
fn java_classes(t: &TestDir) -> PathBuf {
    let src = script(t, "RtLoop.java", LOOP_JAVA);
    let classes = t.sub("classes");
    build(
        Command::new("javac").arg("-d").arg(&classes).arg(&src),
        "javac RtLoop.java",
    );
    classes
}

/// One Java round trip at a time: a JVM starting removes the `/tmp/hsperfdata_USER/PID`
/// files of JVMs no longer running, which is the file the other test's killed JVM still
/// has mapped until its restart.
static ONE_JVM: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn java_roundtrip(name: &str, gc: &str) {
    if !have_tool("java") || !have_tool("javac") {
        return;
    }
    let _one = ONE_JVM.lock().unwrap_or_else(|e| e.into_inner());
    let t = TestDir::new(name);
    let classes = java_classes(&t);
    // A bounded heap, so that the collector works during the run.
    let p = paced(
        argv(&[&"java", &"-Xmx128m", &gc, &"-cp", &classes, &"RtLoop"]),
        &[],
    );
    roundtrip(&t, &p);
}

#[test]
fn java_with_g1() {
    java_roundtrip("java-g1", "-XX:+UseG1GC");
}

#[test]
fn java_with_serial_gc() {
    java_roundtrip("java-serial", "-XX:+UseSerialGC");
}

/// Built with cgo: a pure-Go binary is static and LD_PRELOAD never reaches it (said in
/// docs/compatibility.md).
#[test]
fn go_goroutines() {
    if !have_tool("go") {
        return;
    }
    let t = TestDir::new("go-goroutines");
    let src = script(&t, "rt_goroutines.go", GOROUTINES_GO);
    let exe = t.join("rt_goroutines");
    build(
        Command::new("go")
            .arg("build")
            .arg("-o")
            .arg(&exe)
            .arg(&src)
            .current_dir(&t.path)
            .env("GOCACHE", t.sub("gocache"))
            .env("GOPATH", t.sub("gopath"))
            .env("GO111MODULE", "off")
            .env("CGO_ENABLED", "1")
            .env("GOFLAGS", "-mod=mod"),
        "go build rt_goroutines.go",
    );
    roundtrip(&t, &paced(argv(&[&exe]), &[]));
}

#[test]
fn ruby_threads_and_gc() {
    if !have_tool("ruby") {
        return;
    }
    let t = TestDir::new("ruby");
    let rb = script(&t, "rt_loop.rb", LOOP_RB);
    roundtrip(&t, &paced(argv(&[&"ruby", &rb]), &[]));
}

#[test]
fn lua_tables_and_closures() {
    if !have_tool("lua5.4") {
        return;
    }
    let t = TestDir::new("lua");
    let lua = script(&t, "rt_loop.lua", LOOP_LUA);
    roundtrip(&t, &paced(argv(&[&"lua5.4", &lua]), &[]));
}

/// The Python with numpy: `.ci/run` makes a venv at /opt/forkpoint-ci/numpy (readable by the
/// unprivileged user too); `FORKPOINT_TEST_NUMPY_PYTHON` names another.
fn numpy_python() -> Option<OsString> {
    let candidates: Vec<OsString> = std::env::var_os("FORKPOINT_TEST_NUMPY_PYTHON")
        .into_iter()
        .chain([
            "/opt/forkpoint-ci/numpy/bin/python3".into(),
            "python3".into(),
        ])
        .collect();
    let found = candidates.into_iter().find(|py| {
        Command::new(py)
            .args(["-c", "import numpy"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
        assert!(!ci, "no python3 with numpy, and CI must run every test");
        skip("no python3 with numpy (python3 -m pip install numpy)");
    }
    found
}

#[test]
fn numpy_with_openblas_threads() {
    let Some(py) = numpy_python() else {
        return;
    };
    let t = TestDir::new("numpy");
    let src = script(&t, "rt_numpy.py", NUMPY_PY);
    roundtrip(
        &t,
        &paced(argv(&[&"env", &"OPENBLAS_NUM_THREADS=2", &py, &src]), &[]),
    );
}

#[test]
fn sqlite_wal_database_being_written() {
    if !have_tool("/usr/bin/python3") {
        return;
    }
    let t = TestDir::new("sqlite");
    let src = script(&t, "rt_sqlite.py", SQLITE_PY);
    roundtrip(&t, &paced(argv(&[&"/usr/bin/python3", &src]), &[]));
}
