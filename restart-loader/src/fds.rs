//! Descriptors: opened before the point of no return at spare numbers, then moved onto the
//! numbers the program had. Files are never truncated or created.

use std::ffi::CString;
use std::io;

use forkpoint_image::{FdRestore, Metadata};

use crate::RestoreError;

/// A descriptor ready to be moved into place.
pub struct Prepared {
    pub target: i32,
    pub temp: i32,
    pub cloexec: bool,
}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

fn open_path(path: &str, flags: i32) -> io::Result<i32> {
    let c = CString::new(path).map_err(|_| io::Error::other("path contains a NUL byte"))?;
    // Reopen, never create or truncate; keep status flags (O_APPEND, O_NONBLOCK, ...).
    let keep =
        flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY | libc::O_TMPFILE);
    // SAFETY: NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), keep | libc::O_CLOEXEC | libc::O_NOCTTY) };
    if fd < 0 {
        return Err(errno());
    }
    Ok(fd)
}

/// Moves `fd` to a number at or above `min` (so placing the others cannot clobber it).
fn lift(fd: i32, min: i32) -> io::Result<i32> {
    // SAFETY: plain fcntl on our own descriptor.
    let high = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    // SAFETY: closing our own temporary descriptor.
    unsafe { libc::close(fd) };
    if high < 0 {
        return Err(errno());
    }
    Ok(high)
}

/// Lowest number above every descriptor the program had and every one we hold now.
pub fn spare_base(meta: &Metadata) -> i32 {
    let max_target = meta.fds.iter().map(|f| f.fd).max().unwrap_or(2);
    let max_own = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .max()
                .unwrap_or(2)
        })
        .unwrap_or(64);
    max_target.max(max_own) + 1
}

/// Opens every descriptor to restore. Returns them and the warnings to show.
pub fn prepare(meta: &Metadata, base: i32) -> Result<(Vec<Prepared>, Vec<String>), RestoreError> {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for f in &meta.fds {
        let temp = match &f.restore {
            FdRestore::Inherit => {
                // SAFETY: F_GETFD only queries.
                if unsafe { libc::fcntl(f.fd, libc::F_GETFD) } < 0 {
                    warnings.push(format!("descriptor {} ({}) was to be inherited, but this command has no descriptor {}: left closed", f.fd, f.path, f.fd));
                }
                continue;
            }
            FdRestore::Reopen => {
                let fd = open_path(&f.path, f.flags).map_err(|e| {
                    RestoreError(format!(
                        "cannot reopen descriptor {} ({}): {e}",
                        f.fd, f.path
                    ))
                })?;
                if f.offset > 0 {
                    // SAFETY: lseek on our own descriptor.
                    let r = unsafe { libc::lseek(fd, f.offset, libc::SEEK_SET) };
                    if r != f.offset && f.flags & libc::O_APPEND == 0 {
                        return Err(RestoreError(format!(
                            "cannot seek descriptor {} ({}) to offset {}: {}",
                            f.fd,
                            f.path,
                            f.offset,
                            errno()
                        )));
                    }
                }
                fd
            }
            FdRestore::DevNull { .. } => {
                // The image's warnings already say why.
                let acc = f.flags & libc::O_ACCMODE;
                open_path("/dev/null", acc)
                    .map_err(|e| RestoreError(format!("cannot open /dev/null: {e}")))?
            }
        };
        let temp = lift(temp, base)
            .map_err(|e| RestoreError(format!("cannot place descriptor {}: {e}", f.fd)))?;
        out.push(Prepared {
            target: f.fd,
            temp,
            cloexec: f.cloexec,
        });
    }
    Ok((out, warnings))
}

/// Closes every descriptor the program did not have, then moves the prepared ones into place.
/// `keep` are descriptors the loader still needs (its error descriptor).
pub fn install(meta: &Metadata, prepared: &[Prepared], keep: &[i32]) -> Result<(), RestoreError> {
    let inherited: Vec<i32> = meta
        .fds
        .iter()
        .filter(|f| f.restore == FdRestore::Inherit)
        .map(|f| f.fd)
        .collect();
    let open_now: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| RestoreError(format!("cannot list /proc/self/fd: {e}")))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .collect();
    for fd in open_now {
        let wanted =
            inherited.contains(&fd) || keep.contains(&fd) || prepared.iter().any(|p| p.temp == fd);
        if !wanted {
            // SAFETY: closing a descriptor nothing in the loader uses any more.
            unsafe { libc::close(fd) };
        }
    }
    for p in prepared {
        let flags = if p.cloexec { libc::O_CLOEXEC } else { 0 };
        // SAFETY: dup3 onto a number we just freed (or an inherited one the image replaces).
        if unsafe { libc::dup3(p.temp, p.target, flags) } < 0 {
            return Err(RestoreError(format!(
                "cannot move descriptor into place as {}: {}",
                p.target,
                errno()
            )));
        }
        // SAFETY: our temporary copy.
        unsafe { libc::close(p.temp) };
    }
    Ok(())
}
