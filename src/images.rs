//! The images in a directory, as a job keeps them: `forkpoint ls`, `forkpoint rm --keep N`,
//! and the newest valid image `forkpoint run --resume-from` restarts.
//!
//! An image is a regular file `*.fpk` whose name does not start with a dot (temporary files
//! end in `.tmp`, a tree's staging directories are hidden). Newest means the latest cut
//! (`checkpoint.time_unix_ns` in the metadata), the file's modification time for a file
//! whose metadata cannot be read.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use forkpoint_image::ImageFile;
use serde_json::json;

use crate::{fmt_bytes, CliError};

/// What `ls` shows of an image that opens.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub program: String,
    pub pid: i32,
    pub trigger: String,
    /// Processes in the image (1, or a tree's living members).
    pub processes: usize,
    /// This image's digest, and its parent's (an incremental image) with the path recorded.
    pub digest: String,
    pub parent: Option<forkpoint_image::ParentImage>,
}

#[derive(Debug)]
pub struct Entry {
    pub path: PathBuf,
    pub size: u64,
    /// The cut's time (ns since the epoch), else the file's mtime.
    pub time_ns: u64,
    /// The metadata, or why the image does not open.
    pub summary: Result<Summary, String>,
}

/// The images in `dir`, newest first.
pub fn list(dir: &Path) -> Result<Vec<Entry>, CliError> {
    let rd = fs::read_dir(dir)
        .map_err(|e| CliError::new(format!("cannot list {}: {e}", dir.display())))?;
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_image_name(name) {
            continue;
        }
        let path = e.path();
        let Ok(st) = fs::symlink_metadata(&path) else {
            continue;
        };
        if !st.is_file() {
            continue;
        }
        let mtime_ns = st
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        let (time_ns, summary) = match ImageFile::open(&path) {
            Ok(img) => {
                let m = &img.metadata;
                let processes = m.tree.as_ref().map_or(1, |t| {
                    t.members.iter().filter(|p| p.exited.is_none()).count()
                });
                let program = Path::new(&m.process.exe)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| m.process.exe.clone());
                (
                    m.checkpoint.time_unix_ns,
                    Ok(Summary {
                        program,
                        pid: m.process.pid,
                        trigger: m.checkpoint.trigger.clone(),
                        processes,
                        digest: img.digest.clone(),
                        parent: m.parent.clone(),
                    }),
                )
            }
            Err(e) => (mtime_ns, Err(e.to_string())),
        };
        out.push(Entry {
            path,
            size: st.len(),
            time_ns,
            summary,
        });
    }
    sort_newest_first(&mut out);
    Ok(out)
}

pub fn is_image_name(name: &str) -> bool {
    name.ends_with(".fpk") && !name.starts_with('.') && name.len() > ".fpk".len()
}

fn sort_newest_first(v: &mut [Entry]) {
    v.sort_by(|a, b| b.time_ns.cmp(&a.time_ns).then_with(|| b.path.cmp(&a.path)));
}

/// Opens the image and every member's, and reads and checks every chunk of each.
pub fn verify(path: &Path) -> Result<(), String> {
    let img = ImageFile::open(path).map_err(|e| e.to_string())?;
    if img.metadata.parent.is_some() {
        // Every link must be there and whole.
        return crate::info::chain_of(path, true).map(|_| ());
    }
    crate::info::verify(&img)?;
    if let Some(t) = &img.metadata.tree {
        for m in t.members.iter().skip(1).filter(|m| m.exited.is_none()) {
            let member = img
                .open_member(path, m.pid)
                .map_err(|e| format!("tree member {}: {e}", m.pid))?;
            crate::info::verify(&member).map_err(|e| format!("tree member {}: {e}", m.pid))?;
        }
    }
    Ok(())
}

/// The newest image of `dir` that verifies; each newer one that does not is said on stderr.
pub fn newest_valid(dir: &Path) -> Result<Option<PathBuf>, CliError> {
    for e in list(dir)? {
        match verify(&e.path) {
            Ok(()) => return Ok(Some(e.path)),
            Err(why) => eprintln!(
                "forkpoint: {} does not verify ({why}); trying the previous image",
                e.path.display()
            ),
        }
    }
    Ok(None)
}

/// `forkpoint ls [--verify] [--json] DIR`.
pub fn ls(dir: &Path, do_verify: bool, as_json: bool) -> Result<(), CliError> {
    let entries = list(dir)?;
    let verified: Vec<Option<Result<(), String>>> = entries
        .iter()
        .map(|e| do_verify.then(|| verify(&e.path)))
        .collect();
    if as_json {
        let v: Vec<_> = entries
            .iter()
            .zip(&verified)
            .map(|(e, ver)| {
                let mut o = json!({
                    "path": e.path,
                    "size": e.size,
                    "time_unix_ns": e.time_ns,
                    "opens": e.summary.is_ok(),
                    "verified": ver.as_ref().map(|r| r.is_ok()),
                    // An incremental image's parent, as recorded (path and digest).
                    "parent": e.summary.as_ref().ok().and_then(|s| s.parent.as_ref()).map(|p| json!({"path": p.path, "digest": p.digest, "seq": p.seq})),
                });
                match &e.summary {
                    Ok(s) => {
                        o["program"] = json!(s.program);
                        o["pid"] = json!(s.pid);
                        o["trigger"] = json!(s.trigger);
                        o["processes"] = json!(s.processes);
                    }
                    Err(why) => o["error"] = json!(why),
                }
                if let Some(Err(why)) = ver {
                    o["error"] = json!(why);
                }
                o
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| CliError::new(e.to_string()))?
        );
        return Ok(());
    }
    let rows: Vec<[String; 7]> = entries
        .iter()
        .zip(&verified)
        .map(|(e, ver)| {
            let name = e
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let state = match (&e.summary, ver) {
                (Err(why), _) => format!("broken: {why}"),
                (Ok(_), Some(Err(why))) => format!("broken: {why}"),
                (Ok(_), Some(Ok(()))) => "verified".to_string(),
                (Ok(_), None) => "opens".to_string(),
            };
            let (program, pid, trigger, procs) = match &e.summary {
                Ok(s) => (
                    s.program.clone(),
                    s.pid.to_string(),
                    s.trigger.clone(),
                    s.processes.to_string(),
                ),
                Err(_) => ("?".into(), "?".into(), "?".into(), "?".into()),
            };
            [
                name,
                program,
                pid,
                crate::info::fmt_time(e.time_ns),
                fmt_bytes(e.size),
                format!("{trigger} ({procs} proc)"),
                state,
            ]
        })
        .collect();
    let header = [
        "IMAGE", "PROGRAM", "PID", "TAKEN", "SIZE", "TRIGGER", "STATE",
    ]
    .map(String::from);
    let mut widths = [0usize; 7];
    for r in std::iter::once(&header).chain(&rows) {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 6 {
                    c.clone()
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    if do_verify && verified.iter().any(|v| matches!(v, Some(Err(_)))) {
        return Err(CliError::new(format!(
            "{}: some images do not verify",
            dir.display()
        )));
    }
    Ok(())
}

/// Which images `rm --keep N` removes, given the images newest first and whether each is
/// valid (asked lazily, newest first, only until one is): all but the newest `keep`, never
/// the newest valid image (kept even beyond `keep`, so the directory keeps one).
pub fn to_remove(n: usize, keep: usize, valid: &mut dyn FnMut(usize) -> bool) -> Vec<usize> {
    let newest_valid = (0..n).find(|&i| valid(i));
    (keep..n).filter(|&i| Some(i) != newest_valid).collect()
}

/// `doomed` without the images a kept one builds on (`parent_of`: the index of an image's
/// parent among the `n`), however far back.
pub fn spare_parents(
    n: usize,
    doomed: Vec<usize>,
    parent_of: &dyn Fn(usize) -> Option<usize>,
) -> Vec<usize> {
    let mut kept = vec![true; n];
    for &i in &doomed {
        kept[i] = false;
    }
    let mut needed = vec![false; n];
    for i in (0..n).filter(|&i| kept[i]) {
        let mut at = parent_of(i);
        let mut steps = 0;
        while let Some(p) = at.filter(|_| steps <= n) {
            needed[p] = true;
            at = parent_of(p);
            steps += 1;
        }
    }
    doomed.into_iter().filter(|&i| !needed[i]).collect()
}

/// `forkpoint rm --keep N DIR`.
pub fn rm(dir: &Path, keep: usize) -> Result<(), CliError> {
    let entries = list(dir)?;
    let mut valid = |i: usize| match verify(&entries[i].path) {
        Ok(()) => true,
        Err(why) => {
            eprintln!(
                "forkpoint: {} does not verify: {why}",
                entries[i].path.display()
            );
            false
        }
    };
    let doomed = to_remove(entries.len(), keep, &mut valid);
    let parent_of = |i: usize| {
        let want = entries[i].summary.as_ref().ok()?.parent.as_ref()?;
        entries
            .iter()
            .position(|e| e.summary.as_ref().is_ok_and(|s| s.digest == want.digest))
    };
    let before = doomed.len();
    let doomed = spare_parents(entries.len(), doomed, &parent_of);
    if doomed.len() < before {
        eprintln!(
            "forkpoint: keeping {} older images that kept incremental images build on",
            before - doomed.len()
        );
    }
    for i in doomed {
        let p = &entries[i].path;
        fs::remove_file(p)
            .map_err(|e| CliError::new(format!("cannot remove {}: {e}", p.display())))?;
        println!("removed {}", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        assert!(is_image_name("job.fpk"));
        assert!(is_image_name("python3.42.tree-3.fpk"));
        assert!(!is_image_name("job.fpk.tmp"));
        assert!(!is_image_name(".job.fpk"));
        assert!(!is_image_name(".fpk"));
        assert!(!is_image_name("notes.txt"));
    }

    #[test]
    fn retention_never_removes_a_parent_of_a_kept_image() {
        // 0 <- 1 <- 2 (newest first: 0 is the newest, built on 1, built on 2); 3 whole.
        let parent = |i: usize| match i {
            0 => Some(1),
            1 => Some(2),
            _ => None,
        };
        assert_eq!(spare_parents(4, vec![1, 2, 3], &parent), vec![3]);
        // Keeping only the whole image 3 frees the whole chain.
        assert_eq!(spare_parents(4, vec![0, 1, 2], &parent), vec![0, 1, 2]);
        // Keeping the middle link keeps its own parent only.
        assert_eq!(spare_parents(4, vec![0, 2, 3], &parent), vec![0, 3]);
    }

    #[test]
    fn retention_keeps_the_newest_valid_image() {
        let valid_set = |v: &'static [bool]| move |i: usize| v[i];
        // All valid: the newest 2 stay.
        assert_eq!(to_remove(5, 2, &mut valid_set(&[true; 5])), vec![2, 3, 4]);
        // The two newest are broken: the third (newest valid) stays too.
        assert_eq!(
            to_remove(5, 2, &mut valid_set(&[false, false, true, true, true])),
            vec![3, 4]
        );
        // keep 0 still keeps one valid image.
        assert_eq!(
            to_remove(3, 0, &mut valid_set(&[false, true, true])),
            vec![0, 2]
        );
        // None valid: only `keep` decides.
        assert_eq!(to_remove(3, 1, &mut valid_set(&[false; 3])), vec![1, 2]);
        // Validity is asked newest first, and no further than the first valid one.
        let mut asked = Vec::new();
        to_remove(4, 1, &mut |i| {
            asked.push(i);
            i == 1
        });
        assert_eq!(asked, vec![0, 1]);
    }
}
