//! The control channel between `forkpoint checkpoint` and the library: files in a
//! per-process runtime directory, a request named by a random id, a signal carrying the id,
//! and a report the library's writer leaves when the image is durable (or has failed).
//!
//! ```text
//! <base>/<pid>/request.<id>     absolute image path, or empty for the default name
//! <base>/<pid>/report.<id>      status=ok|error, path=, bytes=, pages=, pause_us=, write_ms=, error=
//! ```
//!
//! `<base>` is `$FORKPOINT_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/forkpoint`, else
//! `/tmp/forkpoint-<uid>`, computed from the *target's* environment. Both directories are
//! mode 0700 and must belong to the caller.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The variables of a process's environment that decide where its channel is and which
/// signal triggers it.
#[derive(Debug, Default, Clone)]
pub struct TargetEnv {
    pub vars: HashMap<String, String>,
    /// Where the values came from, for messages.
    pub source: String,
}

impl TargetEnv {
    /// Reads `/proc/PID/environ`; falls back to our own environment when it cannot.
    pub fn of_pid(pid: i32) -> TargetEnv {
        match fs::read(format!("/proc/{pid}/environ")) {
            Ok(bytes) if !bytes.is_empty() => TargetEnv {
                vars: parse_environ(&bytes),
                source: format!("the environment of process {pid}"),
            },
            _ => TargetEnv::own(),
        }
    }

    pub fn own() -> TargetEnv {
        TargetEnv {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
            source: "forkpoint's own environment".into(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// Splits NUL-separated `KEY=VALUE` strings.
pub fn parse_environ(bytes: &[u8]) -> HashMap<String, String> {
    bytes
        .split(|&b| b == 0)
        .filter_map(|kv| {
            let s = std::str::from_utf8(kv).ok()?;
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// The runtime base directory as the library computes it.
pub fn runtime_base(env: &TargetEnv, uid: u32) -> PathBuf {
    PathBuf::from(forkpoint_settings::runtime_base(
        &|k| env.get(k).map(str::to_string),
        uid,
    ))
}

/// Creates `dir` (mode 0700) if missing, then checks it is a real directory owned by `uid`
/// that nobody else can enter.
pub fn ensure_private_dir(dir: &Path, uid: u32) -> Result<(), String> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    let md =
        fs::symlink_metadata(dir).map_err(|e| format!("cannot stat {}: {e}", dir.display()))?;
    if !md.file_type().is_dir() {
        return Err(format!(
            "{} is not a directory (refusing to use it as a runtime directory)",
            dir.display()
        ));
    }
    if md.uid() != uid {
        return Err(format!(
            "{} belongs to uid {}, not to us (uid {uid}): refusing to use it",
            dir.display(),
            md.uid()
        ));
    }
    if md.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} has mode {:o}; it must be 0700 (others could forge requests or reports)",
            dir.display(),
            md.permissions().mode() & 0o7777
        ));
    }
    Ok(())
}

/// Removes the channel directories of processes that are gone: a `report.*` or
/// `request.*` nobody will read, and the directory itself, once it is `min_age` old (a
/// `forkpoint checkpoint` may still be collecting the report of a process that just died).
/// Best effort: anything unexpected is left alone.
pub fn remove_stale_dirs(base: &Path, min_age: std::time::Duration) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let old_enough = e
            .metadata()
            .ok()
            .filter(|m| m.file_type().is_dir())
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= min_age);
        if !old_enough {
            continue;
        }
        let dir = e.path();
        if let Ok(files) = fs::read_dir(&dir) {
            for f in files.flatten() {
                let n = f.file_name();
                let n = n.to_string_lossy();
                if n.starts_with("request.") || n.starts_with("report.") {
                    let _ = fs::remove_file(f.path());
                }
            }
        }
        let _ = fs::remove_dir(&dir);
    }
}

/// The result the library reports for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Ok {
        path: String,
        bytes: Option<u64>,
        pages: Option<u64>,
        pause_us: Option<u64>,
        write_ms: Option<u64>,
        /// Page faults the running program took while the image was written (mostly
        /// copy-on-write: the price of a forked checkpoint).
        cow_faults: Option<u64>,
        /// The writer's peak memory (its arena), bytes.
        writer_peak: Option<u64>,
        /// An incremental image's parent; or why an asked-for incremental image is whole.
        parent: Option<String>,
        full_reason: Option<String>,
    },
    Error(String),
}

/// Parses a report file's `key=value` lines.
pub fn parse_report(text: &str) -> Result<Report, String> {
    let mut kv = HashMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            kv.insert(k.trim(), v.trim_end_matches('\r'));
        }
    }
    let num = |k: &str| kv.get(k).and_then(|v| v.trim().parse::<u64>().ok());
    match kv.get("status").map(|s| s.trim()) {
        Some("ok") => {
            let path = kv
                .get("path")
                .filter(|p| !p.is_empty())
                .ok_or("the report says ok but names no image path")?;
            Ok(Report::Ok {
                path: path.to_string(),
                bytes: num("bytes"),
                pages: num("pages"),
                pause_us: num("pause_us"),
                write_ms: num("write_ms"),
                cow_faults: num("cow_faults"),
                writer_peak: num("writer_peak"),
                parent: kv.get("parent").map(|s| s.to_string()),
                full_reason: kv.get("full_reason").map(|s| s.to_string()),
            })
        }
        Some("error") => Ok(Report::Error(
            kv.get("error")
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown error (the report gives no reason)".into()),
        )),
        Some(other) => Err(format!("the report has an unknown status {other:?}")),
        None => Err("the report has no status line".into()),
    }
}

/// Writes `contents` to `dir/name` atomically: `name.tmp`, then a rename.
pub fn write_atomically(dir: &Path, name: &str, contents: &[u8]) -> Result<(), String> {
    let tmp = dir.join(format!("{name}.tmp"));
    let fin = dir.join(name);
    let res = (|| -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, &fin)
    })();
    res.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot write {}: {e}", fin.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environ_parsing() {
        let m = parse_environ(b"A=1\0B=x=y\0C\0\0D=\0");
        assert_eq!(m.get("A").unwrap(), "1");
        assert_eq!(m.get("B").unwrap(), "x=y");
        assert!(!m.contains_key("C"));
        assert_eq!(m.get("D").unwrap(), "");
    }

    #[test]
    fn base_selection() {
        let mut env = TargetEnv::default();
        assert_eq!(runtime_base(&env, 7), PathBuf::from("/tmp/forkpoint-7"));
        env.vars
            .insert("XDG_RUNTIME_DIR".into(), "/run/user/7".into());
        assert_eq!(
            runtime_base(&env, 7),
            PathBuf::from("/run/user/7/forkpoint")
        );
        env.vars.insert("FORKPOINT_RUNTIME_DIR".into(), "/x".into());
        assert_eq!(runtime_base(&env, 7), PathBuf::from("/x"));
    }

    #[test]
    fn stale_dirs_go() {
        let base = std::env::temp_dir().join(format!("fp-stale-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        // A PID above pid_max cannot exist; our own PID does.
        let gone = base.join("4194305");
        let alive = base.join(std::process::id().to_string());
        for d in [&gone, &alive] {
            fs::create_dir_all(d).unwrap();
            fs::write(d.join("report.7"), "status=ok\n").unwrap();
        }
        fs::write(gone.join("keep.me"), "").unwrap();
        remove_stale_dirs(&base, std::time::Duration::ZERO);
        assert!(!gone.join("report.7").exists());
        assert!(
            gone.join("keep.me").exists(),
            "only channel files are removed"
        );
        assert!(alive.join("report.7").exists());
        fs::remove_file(gone.join("keep.me")).unwrap();
        remove_stale_dirs(&base, std::time::Duration::ZERO);
        assert!(!gone.exists());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn reports() {
        let ok = parse_report(
            "status=ok\npath=/a/b.fpk\nbytes=100\npages=3\npause_us=120\nwrite_ms=40\n",
        )
        .unwrap();
        assert_eq!(
            ok,
            Report::Ok {
                path: "/a/b.fpk".into(),
                bytes: Some(100),
                pages: Some(3),
                pause_us: Some(120),
                cow_faults: None,
                writer_peak: None,
                parent: None,
                full_reason: None,
                write_ms: Some(40)
            }
        );
        assert_eq!(
            parse_report("status=error\nerror=cannot create /x/y.tmp: No such file or directory\n")
                .unwrap(),
            Report::Error("cannot create /x/y.tmp: No such file or directory".into())
        );
        assert!(parse_report("status=ok\n").is_err());
        assert!(parse_report("").is_err());
        assert!(parse_report("status=maybe\n").is_err());
    }
}
