//! Descriptors: every one is opened or created before the point of no return at a spare
//! number, then moved onto the number the program had. Files are never truncated or
//! created; pipes, sockets, eventfds, timerfds, signalfds and memfds are created anew with
//! their saved state; epoll interest lists are filled in last, once their targets exist.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use forkpoint_image::{
    EpollEntry, FdEntry, FdKind, FdRestore, FileLock, ImageFile, MemoryObject, Metadata, PipeInfo,
    SocketInfo,
};

use crate::RestoreError;

/// Pipes (read end, write end) and socket-pair ends of a process tree, by inode, and the
/// shared memory objects (memfds) its processes share: made once before the processes
/// start, inherited by each.
#[derive(Debug, Default)]
pub struct SharedFds {
    pub pipes: HashMap<u64, (RawFd, RawFd)>,
    pub sockets: HashMap<u64, RawFd>,
    pub memory: HashMap<MemoryObject, RawFd>,
    /// Restoring a member of a tree: the pipes and sockets the root inherited from outside
    /// the tree (its stdio); any other pipe a member was to inherit was made inside it.
    pub tree: Option<std::collections::HashSet<u64>>,
    /// Open file descriptions members share (one offset), by (pid, fd): opened once.
    pub files: HashMap<(i32, i32), RawFd>,
}

/// A descriptor ready to be moved into place.
pub struct Prepared {
    pub target: RawFd,
    pub temp: OwnedFd,
    pub cloexec: bool,
}

/// What `prepare` opened, and the epoll registrations to make once all are in place.
pub struct PreparedFds {
    pub fds: Vec<Prepared>,
    pub epolls: Vec<(i32, Vec<EpollEntry>)>,
}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

fn cvt(r: i32) -> io::Result<i32> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// A descriptor the kernel just returned (or its error).
fn owned(r: i32) -> io::Result<OwnedFd> {
    let fd = cvt(r)?;
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Closes a descriptor nothing in this process owns (one the program will not get back).
fn close_unowned(fd: RawFd) {
    // SAFETY: no Rust object owns `fd` (the caller checked): closing it cannot double-close.
    unsafe { libc::close(fd) };
}

fn open_path(path: &str, flags: i32) -> io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| io::Error::other("path contains a NUL byte"))?;
    // Reopen, never create or truncate; keep status flags (O_APPEND, O_NONBLOCK, ...).
    let keep =
        flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY | libc::O_TMPFILE);
    // SAFETY: NUL-terminated path.
    owned(unsafe { libc::open(c.as_ptr(), keep | libc::O_CLOEXEC | libc::O_NOCTTY) })
}

/// Moves `fd` to a number at or above `min` (so placing the others cannot clobber it).
fn lift(fd: OwnedFd, min: RawFd) -> io::Result<OwnedFd> {
    dup_lifted(fd.as_fd(), min)
}

fn dup_lifted(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: plain fcntl on a live descriptor.
    owned(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) })
}

fn write_all(fd: BorrowedFd<'_>, mut b: &[u8]) -> io::Result<()> {
    while !b.is_empty() {
        // SAFETY: b is valid for its length.
        let n = unsafe { libc::write(fd.as_raw_fd(), b.as_ptr().cast(), b.len()) };
        if n < 0 {
            let e = errno();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        b = &b[n as usize..];
    }
    Ok(())
}

/// File status flags a recreated descriptor should carry.
fn set_status_flags(fd: BorrowedFd<'_>, flags: i32) {
    let keep = flags & (libc::O_NONBLOCK | libc::O_APPEND | libc::O_ASYNC);
    // SAFETY: plain fcntl on a live descriptor.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, keep) };
}

/// Sets the offset; the new one, or the kernel's error.
fn seek(fd: BorrowedFd<'_>, offset: i64) -> io::Result<i64> {
    // SAFETY: lseek on a live descriptor.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), offset, libc::SEEK_SET) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// Both descriptors of a new pipe or socketpair.
fn two(fds: [RawFd; 2]) -> (OwnedFd, OwnedFd) {
    // SAFETY: both were just returned by the kernel and nothing else owns them.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
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

/// Both ends of pipes created so far, by pipe inode (read end, write end). Dropped once
/// every descriptor has its own duplicate: an end no descriptor uses closes then.
type Pipes = HashMap<u64, (OwnedFd, OwnedFd)>;
/// Both ends of socketpairs created so far, by socket inode: (this end, other end); each
/// pair is in the map twice, once from either side.
type Pairs = HashMap<u64, (Rc<OwnedFd>, Rc<OwnedFd>)>;

/// Both ends of a new pipe, or of a named FIFO opened again by its name (an O_RDWR handle
/// first, so neither end's open waits for the other).
fn new_pipe(f: &FdEntry, p: &PipeInfo) -> io::Result<(OwnedFd, OwnedFd)> {
    if f.path.starts_with('/') {
        let _anchor = open_path(&f.path, libc::O_RDWR | libc::O_NONBLOCK)?;
        let r = open_path(&f.path, libc::O_RDONLY | libc::O_NONBLOCK)?;
        return Ok((r, open_path(&f.path, libc::O_WRONLY | libc::O_NONBLOCK)?));
    }
    let mut fds = [0i32; 2];
    // SAFETY: fds is two writable ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    let (r, w) = two(fds);
    // SAFETY: plain fcntl on our pipe.
    unsafe {
        libc::fcntl(
            w.as_raw_fd(),
            libc::F_SETPIPE_SZ,
            p.size.min(i32::MAX as u64) as i32,
        )
    };
    Ok((r, w))
}

/// A new descriptor for end `p` of a pipe, creating the pipe on first use.
fn pipe_end(img: &ImageFile, f: &FdEntry, p: &PipeInfo, pipes: &mut Pipes) -> io::Result<OwnedFd> {
    let (r, w) = match pipes.entry(p.ino) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(v) => v.insert(new_pipe(f, p)?),
    };
    if let Some(blob) = p.data {
        let bytes = img
            .read_blob(blob)
            .map_err(|e| io::Error::other(e.to_string()))?;
        write_all(w.as_fd(), &bytes)?;
    }
    dup_lifted(if p.write_end { w.as_fd() } else { r.as_fd() }, 3)
}

fn sock_addr(bytes: &[u8]) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let n = bytes
        .len()
        .min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: copying n bytes into a struct of at least n bytes.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), &mut ss as *mut _ as *mut u8, n) };
    (ss, n as libc::socklen_t)
}

/// The path of a unix socket address, if it names a file.
fn unix_path(bytes: &[u8]) -> Option<String> {
    let path = bytes.get(2..)?;
    if path.first().is_none_or(|&c| c == 0) {
        return None; // unnamed or abstract
    }
    let end = path.iter().position(|&c| c == 0).unwrap_or(path.len());
    Some(String::from_utf8_lossy(&path[..end]).into_owned())
}

/// A new descriptor for socket `s`; a socketpair is created on first use of either end.
fn socket_fd(
    img: &ImageFile,
    f: &FdEntry,
    s: &SocketInfo,
    pairs: &mut Pairs,
) -> io::Result<OwnedFd> {
    if let Some(peer) = s.pair {
        if !pairs.contains_key(&s.ino) {
            let mut sv = [0i32; 2];
            // SAFETY: sv is two writable ints.
            cvt(unsafe {
                libc::socketpair(
                    s.domain,
                    s.sock_type | libc::SOCK_CLOEXEC,
                    0,
                    sv.as_mut_ptr(),
                )
            })?;
            let (a, b) = two(sv);
            let (a, b) = (Rc::new(a), Rc::new(b));
            pairs.insert(peer, (Rc::clone(&b), Rc::clone(&a)));
            pairs.insert(s.ino, (a, b));
        }
        let (this, other) = &pairs[&s.ino];
        // Bytes queued for reading on this end are written into the other end.
        if let Some(blob) = s.data {
            let bytes = img
                .read_blob(blob)
                .map_err(|e| io::Error::other(e.to_string()))?;
            write_all(other.as_fd(), &bytes)?;
        }
        return dup_lifted(this.as_fd(), 3);
    }
    if matches!(f.restore, FdRestore::Approximate { .. }) {
        // Connected to a peer outside: a socket whose peer is gone.
        let mut sv = [0i32; 2];
        // SAFETY: sv is two writable ints.
        cvt(unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                sv.as_mut_ptr(),
            )
        })?;
        let (this, _gone) = two(sv);
        return Ok(this);
    }
    // SAFETY: creating a socket.
    let sock =
        owned(unsafe { libc::socket(s.domain, s.sock_type | libc::SOCK_CLOEXEC, s.protocol) })?;
    let fd = sock.as_raw_fd();
    for o in &s.options {
        // The kernel reports buffer sizes doubled (its bookkeeping): ask for half.
        let v =
            if o.level == libc::SOL_SOCKET && matches!(o.name, libc::SO_RCVBUF | libc::SO_SNDBUF) {
                o.value / 2
            } else {
                o.value
            };
        // SAFETY: an int option; a refused one (e.g. a buffer above the limit) keeps the default.
        unsafe { libc::setsockopt(fd, o.level, o.name, (&v as *const i32).cast(), 4) };
    }
    if !s.local.is_empty() && s.local.len() > 2 {
        let one: i32 = 1;
        // SAFETY: an int option.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const i32).cast(),
                4,
            )
        };
        if s.domain == libc::AF_UNIX {
            if let Some(path) = unix_path(&s.local) {
                // A stale socket file of the dead original: replace it.
                use std::os::unix::fs::FileTypeExt;
                if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let (ss, len) = sock_addr(&s.local);
        // SAFETY: ss holds len valid bytes of a sockaddr.
        if unsafe { libc::bind(fd, &ss as *const _ as *const libc::sockaddr, len) } != 0 {
            let e = errno();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot bind the saved address again: {e} (is it still taken?)"),
            ));
        }
    }
    // SAFETY: listen on our socket.
    if s.listening && unsafe { libc::listen(fd, 4096) } != 0 {
        return Err(errno());
    }
    Ok(sock)
}

fn deleted_file(img: &ImageFile, f: &FdEntry, data: Option<u32>, mode: u32) -> io::Result<OwnedFd> {
    let original = f.path.trim_end_matches(" (deleted)");
    let dir = std::path::Path::new(original)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let open_tmp = |dir: &str| -> io::Result<OwnedFd> {
        let c = CString::new(dir).map_err(|_| io::Error::other("NUL in path"))?;
        // SAFETY: NUL-terminated directory path.
        owned(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
                0o600,
            )
        })
    };
    let fd = open_tmp(&dir).or_else(|_| open_tmp("/tmp"))?;
    if let Some(blob) = data {
        let bytes = img
            .read_blob(blob)
            .map_err(|e| io::Error::other(e.to_string()))?;
        write_all(fd.as_fd(), &bytes)?;
    }
    // The file's permissions, then a descriptor with the program's access mode and flags (a
    // new open of the unnamed file through /proc, as O_TMPFILE gives O_RDWR).
    if mode != 0 {
        // SAFETY: fchmod of our own file.
        unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) };
    }
    open_path(&format!("/proc/self/fd/{}", fd.as_raw_fd()), f.flags)
}

fn memfd(
    img: &ImageFile,
    name: &str,
    seals: u32,
    size: u64,
    data: Option<u32>,
) -> io::Result<OwnedFd> {
    let c = CString::new(name).unwrap_or_default();
    let flags = libc::MFD_CLOEXEC
        | if seals != 0 {
            libc::MFD_ALLOW_SEALING
        } else {
            0
        };
    // SAFETY: NUL-terminated name.
    let fd = owned(unsafe { libc::memfd_create(c.as_ptr(), flags) })?;
    if let Some(blob) = data {
        let bytes = img
            .read_blob(blob)
            .map_err(|e| io::Error::other(e.to_string()))?;
        write_all(fd.as_fd(), &bytes)?;
    }
    // SAFETY: ftruncate of our memfd.
    unsafe { libc::ftruncate(fd.as_raw_fd(), size as i64) };
    if seals != 0 {
        // F_SEAL_SEAL last: it forbids adding the others.
        // SAFETY: plain fcntl.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals as i32) };
    }
    Ok(fd)
}

fn create(
    img: &ImageFile,
    f: &FdEntry,
    shared: &SharedFds,
    pipes: &mut Pipes,
    pairs: &mut Pairs,
) -> io::Result<OwnedFd> {
    let nonblock = f.flags & libc::O_NONBLOCK != 0;
    let fd = match &f.kind {
        // Pipes and socket pairs shared with other processes of a tree were made, with
        // their contents, before the tree's processes started: this one inherited them.
        FdKind::Pipe { pipe: Some(p) } if shared.pipes.contains_key(&p.ino) => {
            let (r, w) = shared.pipes[&p.ino];
            // SAFETY: the tree's descriptors stay open until `install` closes what the
            // program does not use, after this.
            let end = unsafe { BorrowedFd::borrow_raw(if p.write_end { w } else { r }) };
            dup_lifted(end, 3)?
        }
        FdKind::Socket { socket: Some(s) } if shared.sockets.contains_key(&s.ino) => {
            // SAFETY: as for pipes above.
            let end = unsafe { BorrowedFd::borrow_raw(shared.sockets[&s.ino]) };
            dup_lifted(end, 3)?
        }
        FdKind::Pipe { pipe: Some(p) } => pipe_end(img, f, p, pipes)?,
        FdKind::Socket { socket: Some(s) } => socket_fd(img, f, s, pairs)?,
        FdKind::Eventfd { count, semaphore } => {
            let flags = libc::EFD_CLOEXEC | if *semaphore { libc::EFD_SEMAPHORE } else { 0 };
            // SAFETY: creating an eventfd.
            let fd = owned(unsafe { libc::eventfd(0, flags) })?;
            if *count > 0 {
                write_all(fd.as_fd(), &count.to_ne_bytes())?;
            }
            fd
        }
        FdKind::Timerfd {
            clockid,
            value_ns,
            interval_ns,
            ticks,
        } => {
            // SAFETY: creating a timerfd.
            let fd = owned(unsafe { libc::timerfd_create(*clockid, libc::TFD_CLOEXEC) })?;
            // Expirations nobody read yet come back as one expiry right away (its count is
            // not settable); then the timer goes on as it was.
            let value = if *ticks > 0 { 1 } else { *value_ns };
            if value > 0 {
                let ts = |ns: u64| libc::timespec {
                    tv_sec: (ns / 1_000_000_000) as i64,
                    tv_nsec: (ns % 1_000_000_000) as i64,
                };
                let spec = libc::itimerspec {
                    it_interval: ts(*interval_ns),
                    it_value: ts(value),
                };
                // SAFETY: spec is valid; old value not requested.
                cvt(unsafe {
                    libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut())
                })?;
            }
            fd
        }
        FdKind::Signalfd { mask } => {
            // SAFETY: sigset_t is plain data; the kernel uses its first 8 bytes.
            let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
            // SAFETY: writing 8 bytes into a sigset_t.
            unsafe { std::ptr::write_unaligned(&mut set as *mut _ as *mut u64, *mask) };
            // SAFETY: creating a signalfd with a valid mask.
            owned(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) })?
        }
        // SAFETY: creating an epoll instance.
        FdKind::Epoll { .. } => owned(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?,
        FdKind::DeletedFile { data, mode, .. } => deleted_file(img, f, *data, *mode)?,
        FdKind::Memfd {
            name,
            seals,
            size,
            data,
        } => memfd(img, name, *seals, *size, *data)?,
        _ => return Err(io::Error::other("no saved state to recreate it from")),
    };
    // Pipes shared an O_NONBLOCK open above: always set their own flags.
    if nonblock || f.flags & libc::O_APPEND != 0 || matches!(f.kind, FdKind::Pipe { .. }) {
        set_status_flags(fd.as_fd(), f.flags);
    }
    if matches!(f.kind, FdKind::DeletedFile { .. } | FdKind::Memfd { .. }) && f.offset > 0 {
        seek(fd.as_fd(), f.offset)?;
    }
    Ok(fd)
}

/// Takes lock `l` on `fd` (or, with `test_only`, checks that nothing else holds it).
fn take_lock(fd: BorrowedFd<'_>, l: &FileLock, test_only: bool) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    if l.kind == "flock" {
        let op = if l.write {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        } | libc::LOCK_NB;
        // SAFETY: flock on our own descriptor.
        return cvt(unsafe { libc::flock(fd, op) })
            .map(|_| ())
            .map_err(|e| io::Error::new(e.kind(), format!("{e} (another process holds it now)")));
    }
    // SAFETY: flock is plain data.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if l.write {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    } as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = l.start as i64;
    fl.l_len = l.len as i64;
    let cmd = match (l.kind.as_str(), test_only) {
        ("ofd", _) => libc::F_OFD_SETLK,
        (_, true) => libc::F_GETLK,
        _ => libc::F_SETLK,
    };
    // SAFETY: fl is a valid struct flock.
    cvt(unsafe { libc::fcntl(fd, cmd, &mut fl) })?;
    if test_only && fl.l_type != libc::F_UNLCK as i16 {
        return Err(io::Error::other(format!(
            "process {} holds a conflicting lock now",
            fl.l_pid
        )));
    }
    Ok(())
}

/// Opens the file of `f` as a restart reopens it (same flags, at its offset): for an open
/// file description several processes of a tree share.
pub fn reopen_shared(meta: &Metadata, f: &FdEntry) -> Result<OwnedFd, RestoreError> {
    let what = |e| RestoreError::os(format!("cannot reopen {} (shared by the tree)", f.path), e);
    let fd = open_path(&crate::verify::live_path(meta, &f.path), f.flags).map_err(what)?;
    if f.offset > 0 && f.flags & libc::O_APPEND == 0 {
        seek(fd.as_fd(), f.offset).map_err(what)?;
    }
    Ok(fd)
}

/// Opens or creates every descriptor to restore. Returns them and the warnings to show.
pub fn prepare(
    img: &ImageFile,
    base: i32,
    shared: Option<&SharedFds>,
) -> Result<(PreparedFds, Vec<String>), RestoreError> {
    let none = SharedFds::default();
    let shared = shared.unwrap_or(&none);
    let meta = &img.metadata;
    let mut out = PreparedFds {
        fds: Vec::new(),
        epolls: Vec::new(),
    };
    let mut warnings = Vec::new();
    let mut pipes = Pipes::new();
    let mut pairs = Pairs::new();
    for f in &meta.fds {
        // A pipe or socket another process of the tree holds is that process's, whatever
        // the image says about its other end (stdin from the previous stage is not "from
        // outside").
        let in_tree = match &f.kind {
            FdKind::Pipe { pipe: Some(p) } => shared.pipes.contains_key(&p.ino),
            FdKind::Socket { socket: Some(s) } => shared.sockets.contains_key(&s.ino),
            _ => false,
        };
        // A stdio pipe of a member that is not the root's from outside was made inside the
        // tree (`echo | sha256sum` in a shell whose `echo` has exited): it comes back with
        // its bytes, not as the restarting command's descriptor.
        let made_inside = shared.tree.as_ref().is_some_and(|outside| {
            f.restore == FdRestore::Inherit
                && matches!(&f.kind, FdKind::Pipe { pipe: Some(p) } if !outside.contains(&p.ino))
        });
        let restore = if in_tree || made_inside {
            &FdRestore::Recreate
        } else {
            &f.restore
        };
        let temp = match restore {
            FdRestore::Inherit => {
                // SAFETY: F_GETFD only queries.
                if unsafe { libc::fcntl(f.fd, libc::F_GETFD) } < 0 {
                    warnings.push(format!(
                        "descriptor {} ({}) was to be inherited, but this command has no descriptor {}: left closed",
                        f.fd, f.path, f.fd
                    ));
                }
                continue;
            }
            FdRestore::Reopen if shared.files.contains_key(&(meta.process.pid, f.fd)) => {
                // One description with other members of the tree, opened (and placed at
                // its offset) before they started.
                // SAFETY: the tree's descriptors stay open until `install` closes what the
                // program does not use, after this.
                let one =
                    unsafe { BorrowedFd::borrow_raw(shared.files[&(meta.process.pid, f.fd)]) };
                dup_lifted(one, 3).map_err(|e| {
                    RestoreError::os(format!("cannot place descriptor {} ({})", f.fd, f.path), e)
                })?
            }
            FdRestore::Reopen => {
                let fd =
                    open_path(&crate::verify::live_path(meta, &f.path), f.flags).map_err(|e| {
                        RestoreError::os(
                            format!("cannot reopen descriptor {} ({})", f.fd, f.path),
                            e,
                        )
                    })?;
                // An O_APPEND file may have shrunk: its writes go to the end all the same.
                let seeked = if f.offset > 0 {
                    seek(fd.as_fd(), f.offset)
                } else {
                    Ok(0)
                };
                if f.flags & libc::O_APPEND == 0 {
                    seeked.map_err(|e| {
                        RestoreError::os(
                            format!(
                                "cannot seek descriptor {} ({}) to offset {}",
                                f.fd, f.path, f.offset
                            ),
                            e,
                        )
                    })?;
                }
                fd
            }
            FdRestore::Recreate | FdRestore::Approximate { .. } => {
                create(img, f, shared, &mut pipes, &mut pairs).map_err(|e| {
                    RestoreError::os(
                        format!("cannot recreate descriptor {} ({})", f.fd, f.path),
                        e,
                    )
                })?
            }
            FdRestore::DevNull { .. } => {
                // The image's warnings already say why.
                let acc = f.flags & libc::O_ACCMODE;
                open_path("/dev/null", acc)
                    .map_err(|e| RestoreError::os("cannot open /dev/null".into(), e))?
            }
        };
        let temp = lift(temp, base)
            .map_err(|e| RestoreError::os(format!("cannot place descriptor {}", f.fd), e))?;
        if let FdKind::Epoll { interest } = &f.kind {
            out.epolls.push((f.fd, interest.clone()));
        }
        out.fds.push(Prepared {
            target: f.fd,
            temp,
            cloexec: f.cloexec,
        });
    }
    // Locks tied to open file descriptions (flock, OFD) are taken now, on the new
    // descriptions; POSIX locks belong to the process and are dropped by any close of the
    // file, so they are only checked now and taken once the descriptors are in place.
    for l in &meta.locks {
        let Some(p) = out.fds.iter().find(|p| p.target == l.fd) else {
            continue;
        };
        take_lock(p.temp.as_fd(), l, l.kind == "posix").map_err(|e| {
            RestoreError::os(
                format!(
                    "cannot take the {} lock on descriptor {} again",
                    l.kind, l.fd
                ),
                e,
            )
        })?;
    }
    // The originals of pipes and socketpairs close as `pipes` and `pairs` go: each end lives
    // on in the descriptors that use it (an end none uses closes: EOF or EPIPE, as for a
    // peer outside).
    Ok((out, warnings))
}

/// Closes every descriptor the program did not have, then moves the prepared ones into place,
/// then registers the epoll interest lists (their targets exist now). Returns warnings.
pub fn install(
    meta: &Metadata,
    prepared: PreparedFds,
    keep: &[RawFd],
) -> Result<Vec<String>, RestoreError> {
    let inherited: Vec<i32> = meta
        .fds
        .iter()
        .filter(|f| f.restore == FdRestore::Inherit)
        .map(|f| f.fd)
        .collect();
    let open_now: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| RestoreError::os("cannot list /proc/self/fd".into(), e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .collect();
    for fd in open_now {
        let wanted = inherited.contains(&fd)
            || keep.contains(&fd)
            || prepared.fds.iter().any(|p| p.temp.as_raw_fd() == fd);
        if !wanted {
            // Past the point of no return nothing of the loader's that owns a descriptor
            // (the image file, std's handles) is used or dropped again.
            close_unowned(fd);
        }
    }
    for p in prepared.fds {
        let flags = if p.cloexec { libc::O_CLOEXEC } else { 0 };
        // SAFETY: dup3 onto a number we just freed (or an inherited one the image replaces);
        // the target is the program's from now on, owned by no Rust object.
        if unsafe { libc::dup3(p.temp.as_raw_fd(), p.target, flags) } < 0 {
            return Err(RestoreError::os(
                format!("cannot move descriptor into place as {}", p.target),
                errno(),
            ));
        }
    }
    let mut warnings = Vec::new();
    for l in meta.locks.iter().filter(|l| l.kind == "posix") {
        // SAFETY: l.fd was just placed by the loop above and stays open while borrowed.
        let fd = unsafe { BorrowedFd::borrow_raw(l.fd) };
        if let Err(e) = take_lock(fd, l, false) {
            warnings.push(format!(
                "cannot take the POSIX lock on descriptor {} again: {e}",
                l.fd
            ));
        }
    }
    for (epfd, entries) in &prepared.epolls {
        for e in entries {
            let mut ev = libc::epoll_event {
                events: e.events,
                u64: e.data,
            };
            // SAFETY: ev is a valid epoll_event.
            if unsafe { libc::epoll_ctl(*epfd, libc::EPOLL_CTL_ADD, e.fd, &mut ev) } != 0 {
                warnings.push(format!(
                    "epoll {epfd}: cannot register descriptor {} again: {}",
                    e.fd,
                    errno()
                ));
            }
        }
    }
    Ok(warnings)
}
