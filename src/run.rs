//! `forkpoint run`: exec a program with `libforkpoint.so` preloaded, so the program keeps
//! this command's PID.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use forkpoint_settings::OnTerm;

use crate::parse;
use crate::CliError;

pub struct RunArgs {
    pub dir: Option<PathBuf>,
    pub interval: Option<Duration>,
    pub signal: Option<i32>,
    pub on_term: Option<OnTerm>,
    pub name: Option<String>,
    pub resume_from: Option<PathBuf>,
    pub incremental: bool,
    pub command: Vec<OsString>,
}

/// Where the library is: `$FORKPOINT_LIB`, else next to this executable, else in its
/// `deps/` directory (where cargo leaves it when it is built as a dependency).
pub fn find_library() -> Result<PathBuf, CliError> {
    if let Some(lib) = std::env::var_os("FORKPOINT_LIB").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(&lib);
        return absolute(&p).and_then(|abs| {
            if abs.is_file() {
                Ok(abs)
            } else {
                Err(CliError::new(format!(
                    "FORKPOINT_LIB={} does not name a file",
                    p.display()
                )))
            }
        });
    }
    let exe = std::env::current_exe()
        .map_err(|e| CliError::new(format!("cannot locate the forkpoint executable: {e}")))?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let candidates = [
        dir.join("libforkpoint.so"),
        dir.join("deps").join("libforkpoint.so"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            CliError::new(format!(
                "cannot find libforkpoint.so (looked for {} and {}); build it with \
                 `cargo build --workspace` or set FORKPOINT_LIB",
                candidates[0].display(),
                candidates[1].display()
            ))
        })
}

fn absolute(p: &Path) -> Result<PathBuf, CliError> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .map_err(|e| CliError::new(format!("cannot get the current directory: {e}")))
    }
}

/// `lib` in front of an existing `LD_PRELOAD` (which may use spaces or colons).
pub fn preload_value(lib: &Path, existing: Option<&OsStr>) -> OsString {
    let mut v = lib.as_os_str().as_bytes().to_vec();
    if let Some(e) = existing.filter(|e| !e.as_bytes().iter().all(u8::is_ascii_whitespace)) {
        v.push(b':');
        v.extend_from_slice(e.as_bytes());
    }
    OsString::from_vec(v)
}

/// Sets up the environment and execs; returns only on failure. With `--resume-from`, this
/// process restarts the newest valid image there instead, if there is one.
pub fn run(args: &RunArgs) -> Result<std::convert::Infallible, CliError> {
    if let Some(n) = &args.name {
        forkpoint_settings::check_image_name(n)
            .map_err(|e| CliError::usage(format!("--name: {e}")))?;
    }
    if let Some(from) = &args.resume_from {
        // The first run of a job makes its image directory.
        std::fs::create_dir_all(from)
            .map_err(|e| CliError::new(format!("--resume-from {}: {e}", from.display())))?;
        if let Some(image) = crate::images::newest_valid(from)? {
            eprintln!("forkpoint: resuming from {}", image.display());
            let err = match forkpoint_restart_loader::restore(
                &image,
                &forkpoint_restart_loader::RestoreOptions {
                    lazy: crate::lazy_by_default(),
                    ..Default::default()
                },
            ) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            // A valid image the machine or its files refuse: starting afresh would throw
            // the job's progress away unasked.
            return Err(CliError::new(format!(
                "cannot resume from {}: {err} (remove the images in {} to start afresh)",
                image.display(),
                from.display()
            )));
        }
        eprintln!(
            "forkpoint: no image to resume from in {}: starting {}",
            from.display(),
            args.command
                .first()
                .map_or(String::new(), |c| c.to_string_lossy().into_owned())
        );
    }
    let lib = find_library()?;
    let (prog, rest) = args
        .command
        .split_first()
        .ok_or_else(|| CliError::usage("no command given".into()))?;
    let mut cmd = std::process::Command::new(prog);
    cmd.args(rest);
    cmd.env(
        "LD_PRELOAD",
        preload_value(&lib, std::env::var_os("LD_PRELOAD").as_deref()),
    );
    let dir = match args.dir.as_ref().or(args.resume_from.as_ref()) {
        Some(d) => Some(d.clone()),
        None => std::env::var_os("FORKPOINT_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
    };
    if let Some(d) = dir {
        let abs = absolute(&d)?;
        if !abs.is_dir() {
            return Err(CliError::new(format!(
                "image directory {} does not exist or is not a directory",
                abs.display()
            )));
        }
        cmd.env("FORKPOINT_DIR", abs);
    }
    if args.incremental {
        cmd.env("FORKPOINT_INCREMENTAL", "1");
    }
    if let Some(t) = args.interval {
        if t.is_zero() {
            return Err(CliError::usage("--interval must be more than zero".into()));
        }
        cmd.env("FORKPOINT_INTERVAL", parse::duration_for_env(t));
    }
    // The library of a tree's root runs this command to checkpoint the tree (interval, API).
    if let Ok(exe) = std::env::current_exe() {
        cmd.env("FORKPOINT_CLI", exe);
    }
    if let Some(t) = args.on_term {
        let v = match t {
            OnTerm::Off => "off",
            OnTerm::Checkpoint => "checkpoint",
            OnTerm::CheckpointExit => "checkpoint-exit",
        };
        cmd.env("FORKPOINT_ON_TERM", v);
    }
    if let Some(n) = &args.name {
        cmd.env("FORKPOINT_NAME", n);
    }
    if let Some(s) = args.signal {
        cmd.env("FORKPOINT_SIGNAL", s.to_string());
    }
    let err = cmd.exec();
    let code = match err.raw_os_error() {
        Some(libc::ENOENT) => 127,
        _ => 126,
    };
    Err(CliError {
        message: format!("cannot execute {}: {err}", Path::new(prog).display()),
        code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preload_is_prepended() {
        let lib = Path::new("/x/libforkpoint.so");
        assert_eq!(preload_value(lib, None), "/x/libforkpoint.so");
        assert_eq!(
            preload_value(lib, Some(OsStr::new(""))),
            "/x/libforkpoint.so"
        );
        assert_eq!(
            preload_value(lib, Some(OsStr::new("/y/a.so /z/b.so"))),
            "/x/libforkpoint.so:/y/a.so /z/b.so"
        );
    }
}
