//! Chains of incremental images: find each link's parent by its digest, check the links
//! belong together, and work out which pages each link provides.
//!
//! A page of the newest image (the leaf) comes from the first link, leaf to root, whose
//! chunks hold it, as long as every link before that one lists it as inherited; otherwise
//! it is zero. [`provided`] turns that rule into one page set per link, so a restart or a
//! compaction reads each link once and copies every page once.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::pages::PageSet;
use crate::read::{ImageFile, ReadError};
use crate::types::{Metadata, ParentImage};

/// Longest chain a reader follows (a bound on work for hostile input; digests rule out
/// cycles).
pub const MAX_CHAIN_LEN: usize = 10_000;

/// One image of a chain and where it was found.
#[derive(Debug)]
pub struct Link {
    pub path: PathBuf,
    pub image: ImageFile,
}

/// A parent no directory holds.
#[derive(Debug)]
pub struct MissingParent {
    pub child: PathBuf,
    pub parent: ParentImage,
    pub looked: Vec<PathBuf>,
    /// A file at the recorded path that is not the parent (replaced or rewritten).
    pub replaced: Option<String>,
}

/// Why a chain cannot be used.
#[derive(Debug)]
pub enum ChainError {
    /// No image with the parent's digest was found.
    Missing(Box<MissingParent>),
    /// A link found by its digest does not fit its child.
    Mismatch {
        path: PathBuf,
        why: String,
    },
    /// A link that cannot be read.
    Unreadable {
        path: PathBuf,
        source: ReadError,
    },
    TooLong,
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainError::Missing(m) => {
                let MissingParent {
                    child,
                    parent,
                    looked,
                    replaced,
                } = &**m;
                write!(
                    f,
                    "{}: its parent image (checkpoint {}, digest {}…, written as {}) is missing",
                    child.display(),
                    parent.seq,
                    parent.digest.get(..12).unwrap_or(&parent.digest),
                    parent.path
                )?;
                if let Some(r) = replaced {
                    write!(f, "; {r}")?;
                }
                let dirs: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
                write!(
                    f,
                    " (looked in {}; give the directory that holds it with --images-dir, or \
                     restart from an older full image)",
                    dirs.join(", ")
                )
            }
            ChainError::Mismatch { path, why } => write!(f, "{}: {why}", path.display()),
            ChainError::Unreadable { path, source } => write!(f, "{}: {source}", path.display()),
            ChainError::TooLong => write!(f, "the chain has more than {MAX_CHAIN_LEN} links"),
        }
    }
}

impl std::error::Error for ChainError {}

/// The chain ending in `leaf` (read from `leaf_path`), leaf first, root (a full image) last.
/// Each parent is looked for at its recorded path, then by that file name and then by digest
/// in the leaf's directory and in `images_dir`. Every link is opened and validated; its
/// digest, sequence number, time and process must be what its child recorded.
pub fn resolve(
    leaf_path: &Path,
    leaf: ImageFile,
    images_dir: Option<&Path>,
) -> Result<Vec<Link>, ChainError> {
    let leaf_dir = leaf_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut dirs = vec![leaf_dir];
    if let Some(d) = images_dir {
        if !dirs.iter().any(|x| x == d) {
            dirs.push(d.to_path_buf());
        }
    }
    let mut links = vec![Link {
        path: leaf_path.to_path_buf(),
        image: leaf,
    }];
    let mut scanned: Option<Vec<(PathBuf, String)>> = None;
    loop {
        let child = links.last().expect("at least the leaf");
        let Some(parent) = child.image.metadata.parent.clone() else {
            return Ok(links);
        };
        if links.len() >= MAX_CHAIN_LEN {
            return Err(ChainError::TooLong);
        }
        let found = find_parent(&parent, &dirs, &mut scanned)?;
        let (path, image) = match found {
            Ok(x) => x,
            Err(replaced) => {
                return Err(ChainError::Missing(Box::new(MissingParent {
                    child: child.path.clone(),
                    parent,
                    looked: dirs.clone(),
                    replaced,
                })))
            }
        };
        check_link(&child.image.metadata, &parent, &path, &image)?;
        links.push(Link { path, image });
    }
}

/// The image with `parent`'s digest; Err(Some(why)) when the file at the recorded path is
/// another image (or no image).
#[allow(clippy::type_complexity)]
fn find_parent(
    parent: &ParentImage,
    dirs: &[PathBuf],
    scanned: &mut Option<Vec<(PathBuf, String)>>,
) -> Result<Result<(PathBuf, ImageFile), Option<String>>, ChainError> {
    let hint = PathBuf::from(&parent.path);
    let mut candidates = vec![hint.clone()];
    if let Some(name) = hint.file_name() {
        candidates.extend(dirs.iter().map(|d| d.join(name)));
    }
    let mut replaced = None;
    for c in candidates {
        match ImageFile::open(&c) {
            Ok(img) if img.digest == parent.digest => return Ok(Ok((c, img))),
            Ok(img) => {
                replaced.get_or_insert_with(|| {
                    format!(
                        "{} is another image (checkpoint {}, digest {}…): the parent was replaced",
                        c.display(),
                        img.metadata.checkpoint.seq,
                        img.digest.get(..12).unwrap_or("")
                    )
                });
            }
            Err(ReadError::Io(_, e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                replaced.get_or_insert_with(|| format!("{} cannot be used: {e}", c.display()));
            }
        }
    }
    // Renamed or moved: every image in the directories, by digest (read once per chain).
    let all = scanned.get_or_insert_with(|| {
        let mut v = Vec::new();
        for d in dirs {
            let Ok(rd) = std::fs::read_dir(d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "fpk") {
                    if let Ok(img) = ImageFile::open(&p) {
                        v.push((p, img.digest));
                    }
                }
            }
        }
        v
    });
    if let Some((p, _)) = all.iter().find(|(_, d)| *d == parent.digest) {
        let img = ImageFile::open(p).map_err(|source| ChainError::Unreadable {
            path: p.clone(),
            source,
        })?;
        if img.digest == parent.digest {
            return Ok(Ok((p.clone(), img)));
        }
    }
    Ok(Err(replaced))
}

/// A parent found by digest must also be the checkpoint, of the same process, its child
/// recorded, and older.
fn check_link(
    child: &Metadata,
    parent: &ParentImage,
    path: &Path,
    image: &ImageFile,
) -> Result<(), ChainError> {
    let m = &image.metadata;
    let why = if m.checkpoint.seq != parent.seq || m.checkpoint.time_unix_ns != parent.time_unix_ns
    {
        Some(format!(
            "its checkpoint is {} at {} ns, its child recorded {} at {} ns",
            m.checkpoint.seq, m.checkpoint.time_unix_ns, parent.seq, parent.time_unix_ns
        ))
    } else if m.checkpoint.seq >= child.checkpoint.seq
        || m.checkpoint.time_unix_ns > child.checkpoint.time_unix_ns
    {
        Some(format!(
            "checkpoint {} is not older than its child, checkpoint {}",
            m.checkpoint.seq, child.checkpoint.seq
        ))
    } else if m.process.pid != child.process.pid || m.process.exe != child.process.exe {
        Some(format!(
            "it is process {} ({}), its child is process {} ({})",
            m.process.pid, m.process.exe, child.process.pid, child.process.exe
        ))
    } else if m.tree.is_some() {
        Some("it is a process tree's image".to_string())
    } else {
        None
    };
    match why {
        Some(why) => Err(ChainError::Mismatch {
            path: path.to_path_buf(),
            why: format!("not the parent image its child names: {why}"),
        }),
        None => Ok(()),
    }
}

/// For each link, leaf first, the pages it provides: those of its chunks that every newer
/// link inherits. Disjoint; the leaf provides all of its chunks.
pub fn provided(links: &[&Metadata]) -> Vec<PageSet> {
    let mut want = PageSet::all();
    let mut out = Vec::with_capacity(links.len());
    for m in links {
        let stored = PageSet::from_runs(m.chunks.iter().flat_map(|c| c.runs.iter()));
        out.push(stored.intersect(&want));
        if m.parent.is_none() {
            break;
        }
        want = want.intersect(&PageSet::from_runs(&m.inherited));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Chunk, Compression, PageRun};

    fn meta(stored: &[(u64, u64)], inherited: &[(u64, u64)], parent: bool) -> Metadata {
        let run = |&(a, p): &(u64, u64)| PageRun {
            addr: a * 4096,
            pages: p,
        };
        Metadata {
            chunks: vec![Chunk {
                offset: 4096,
                stored_len: 1,
                raw_len: 1,
                compression: Compression::None,
                crc32: 0,
                runs: stored.iter().map(run).collect(),
            }],
            inherited: inherited.iter().map(run).collect(),
            parent: parent.then(ParentImage::default),
            ..Metadata::default()
        }
    }

    fn pages(s: &PageSet) -> Vec<u64> {
        s.ranges()
            .iter()
            .flat_map(|&(a, b)| a / 4096..b / 4096)
            .collect()
    }

    #[test]
    fn each_page_comes_from_the_newest_link_that_stores_it() {
        // root stores 0..10; link 1 rewrites 2, inherits the rest but 9 (discarded);
        // the leaf rewrites 3 and inherits 0..3 and 4..9.
        let root = meta(&[(0, 10)], &[], false);
        let mid = meta(&[(2, 1)], &[(0, 2), (3, 6)], true);
        let leaf = meta(&[(3, 1)], &[(0, 3), (4, 5)], true);
        let p = provided(&[&leaf, &mid, &root]);
        assert_eq!(pages(&p[0]), vec![3]);
        assert_eq!(pages(&p[1]), vec![2]);
        assert_eq!(pages(&p[2]), vec![0, 1, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn a_page_not_inherited_is_not_taken_from_an_older_link() {
        let root = meta(&[(0, 4)], &[], false);
        let leaf = meta(&[], &[(0, 1)], true);
        let p = provided(&[&leaf, &root]);
        assert!(p[0].is_empty());
        assert_eq!(pages(&p[1]), vec![0]);
    }
}
