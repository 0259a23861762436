//! Descriptors: what each one is and how a restart brings it back.
//!
//! Runs in the forked writer (see `writer` for what may be called there). The descriptors
//! are shared with the running application, so anything that changes them (offsets, queued
//! data) is read without consuming: offsets were captured in the parent, pipe contents were
//! copied with `tee(2)` in the parent, socket data is peeked. The parsers of
//! `/proc/self/fdinfo` below are pure and unit-tested.

use forkpoint_image::{
    EpollEntry, FdEntry, FdKind, FdRestore, FileLock, PipeInfo, SockOpt, SocketInfo,
};

use crate::error::WriteError;
use crate::fixbuf::FixBuf;
use crate::procfs;
use crate::sys;

/// Largest deleted file or memfd whose contents are saved.
const MAX_FILE_BLOB: u64 = 256 << 20;
/// Largest queued socket data saved.
const MAX_SOCKET_DATA: usize = 4 << 20;

/// What the parent copied of one pipe (read end fd, and the copy's read fd in the child).
#[derive(Clone, Copy)]
pub struct PipeCopy {
    pub ino: u64,
    pub copy_fd: i32,
}

fn field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
}

/// `eventfd-count: <hex>`, and `eventfd-semaphore: 0|1` on newer kernels.
pub fn parse_eventfd(info: &str) -> Option<(u64, bool)> {
    let count = u64::from_str_radix(field(info, "eventfd-count:")?, 16).ok()?;
    let sem = field(info, "eventfd-semaphore:").is_some_and(|s| s == "1");
    Some((count, sem))
}

fn parse_pair(s: &str) -> Option<u64> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (a, b) = inner.split_once(',')?;
    let secs: u64 = a.trim().parse().ok()?;
    let ns: u64 = b.trim().parse().ok()?;
    secs.checked_mul(1_000_000_000)?.checked_add(ns)
}

/// `clockid`, `it_value: (s, ns)` (time to next expiry), `it_interval: (s, ns)`, `ticks`
/// (expirations not read yet).
pub fn parse_timerfd(info: &str) -> Option<(i32, u64, u64, u64)> {
    let clock = field(info, "clockid:")?.parse().ok()?;
    let value = parse_pair(field(info, "it_value:")?)?;
    let interval = parse_pair(field(info, "it_interval:")?)?;
    let ticks = field(info, "ticks:")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    Some((clock, value, interval, ticks))
}

/// `sigmask: <hex>`.
pub fn parse_signalfd(info: &str) -> Option<u64> {
    u64::from_str_radix(field(info, "sigmask:")?, 16).ok()
}

/// `tfd: N events: HEX data: HEX ...` lines.
pub fn parse_epoll(info: &str) -> Vec<EpollEntry> {
    info.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("tfd:")?;
            let mut it = rest.split_whitespace();
            let fd = it.next()?.parse().ok()?;
            let mut events = None;
            let mut data = None;
            while let Some(k) = it.next() {
                match k {
                    "events:" => events = u32::from_str_radix(it.next()?, 16).ok(),
                    "data:" => data = u64::from_str_radix(it.next()?, 16).ok(),
                    _ => {}
                }
            }
            Some(EpollEntry {
                fd,
                events: events?,
                data: data?,
            })
        })
        .collect()
}

fn fdinfo(fd: i32) -> String {
    let mut p = FixBuf::<64>::new();
    p.str("/proc/self/fdinfo/").i64(fd as i64);
    procfs::read_proc_string(p.as_cstr())
}

/// Reads all of a regular file through `fd` without moving its offset.
fn read_whole(fd: i32, size: u64) -> Option<Vec<u8>> {
    let mut v = vec![0u8; size as usize];
    let mut got = 0usize;
    while got < v.len() {
        match sys::pread(fd, &mut v[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(libc::EINTR) => {}
            Err(_) => return None,
        }
    }
    v.truncate(got);
    Some(v)
}

/// Everything known about the process's descriptors, shared by `describe`.
pub struct FdContext<'a> {
    /// (fd, saved offset) for every descriptor the parent had.
    pub fds: &'a [(i32, i64)],
    pub pipe_copies: &'a [PipeCopy],
    /// Unix socket inode -> peer inode.
    pub unix_peers: Vec<(u64, u64)>,
    /// (inode, is it a pipe write end) of every pipe/FIFO descriptor.
    pub pipe_ends: Vec<(u64, bool)>,
    /// Inodes of every socket descriptor.
    pub socket_inos: Vec<u64>,
}

impl<'a> FdContext<'a> {
    pub fn new(fds: &'a [(i32, i64)], pipe_copies: &'a [PipeCopy]) -> FdContext<'a> {
        let mut pipe_ends = Vec::new();
        let mut socket_inos = Vec::new();
        let mut any_unix = false;
        for &(fd, _) in fds {
            if let Ok(st) = sys::fstat(fd) {
                match st.st_mode & libc::S_IFMT {
                    libc::S_IFIFO => {
                        let fl = sys::fcntl(fd, libc::F_GETFL, 0).unwrap_or(0) as i32;
                        pipe_ends.push((st.st_ino, fl & libc::O_ACCMODE == libc::O_WRONLY));
                    }
                    libc::S_IFSOCK => {
                        socket_inos.push(st.st_ino);
                        any_unix |= sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)
                            == Ok(libc::AF_UNIX);
                    }
                    _ => {}
                }
            }
        }
        let unix_peers = if any_unix {
            sys::unix_socket_peers()
        } else {
            Vec::new()
        };
        FdContext {
            fds,
            pipe_copies,
            unix_peers,
            pipe_ends,
            socket_inos,
        }
    }
}

/// Describes descriptor `fd`. `store` saves bytes in the image and returns their blob index.
pub fn describe(
    ctx: &FdContext<'_>,
    fd: i32,
    offset: i64,
    warnings: &mut Vec<String>,
    store: &mut dyn FnMut(&[u8]) -> Result<u32, WriteError>,
) -> Result<FdEntry, WriteError> {
    let mut link = FixBuf::<64>::new();
    link.str("/proc/self/fd/").i64(fd as i64);
    let mut buf = vec![0u8; 4096];
    let path = match sys::readlink(link.as_cstr(), &mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(_) => String::new(),
    };
    let flags = sys::fcntl(fd, libc::F_GETFL, 0).unwrap_or(0) as i32;
    let cloexec = sys::fcntl(fd, libc::F_GETFD, 0)
        .map(|f| f as i32 & libc::FD_CLOEXEC != 0)
        .unwrap_or(false);
    let stdio = fd <= 2;
    let devnull = |reason: String| FdRestore::DevNull { reason };
    let (kind, restore) = match sys::fstat(fd) {
        Err(e) => (FdKind::Other, devnull(format!("cannot stat: errno {e}"))),
        Ok(st) => match st.st_mode & libc::S_IFMT {
            libc::S_IFREG if path.starts_with("/memfd:") => {
                let name = path
                    .trim_start_matches("/memfd:")
                    .trim_end_matches(" (deleted)")
                    .to_string();
                let size = st.st_size as u64;
                let seals = sys::fcntl(fd, libc::F_GET_SEALS, 0).unwrap_or(0) as u32;
                file_blob(fd, size, store)?.map_or_else(
                    || {
                        (
                            FdKind::Other,
                            devnull(format!("memfd larger than {} MiB", MAX_FILE_BLOB >> 20)),
                        )
                    },
                    |data| {
                        (
                            FdKind::Memfd {
                                name,
                                seals,
                                size,
                                data: Some(data),
                            },
                            FdRestore::Recreate,
                        )
                    },
                )
            }
            libc::S_IFREG
                if path.starts_with('/') && !path.ends_with(" (deleted)") && st.st_nlink > 0 =>
            {
                (
                    FdKind::Regular {
                        file: procfs::file_id(&path, &st),
                    },
                    FdRestore::Reopen,
                )
            }
            libc::S_IFREG => {
                let size = st.st_size as u64;
                let mode = st.st_mode & 0o7777;
                // A write-only descriptor cannot be read: read the file through a new,
                // read-only open of it.
                let write_only = sys::fcntl(fd, libc::F_GETFL, 0)
                    .map(|f| f as i32 & libc::O_ACCMODE == libc::O_WRONLY)
                    .unwrap_or(false);
                let reader = if write_only {
                    let mut p = FixBuf::<64>::new();
                    p.str("/proc/self/fd/").i64(fd as i64);
                    sys::open(p.as_cstr(), libc::O_RDONLY | libc::O_CLOEXEC, 0).ok()
                } else {
                    None
                };
                let blob = file_blob(reader.unwrap_or(fd), size, store);
                if let Some(r) = reader {
                    sys::close(r);
                }
                blob?.map_or_else(
                    || {
                        (
                            FdKind::Other,
                            devnull(if size > MAX_FILE_BLOB {
                                format!("deleted file larger than {} MiB", MAX_FILE_BLOB >> 20)
                            } else {
                                "the deleted file's contents could not be read".into()
                            }),
                        )
                    },
                    |data| {
                        (
                            FdKind::DeletedFile {
                                size,
                                data: Some(data),
                                mode,
                            },
                            FdRestore::Approximate {
                                approximation:
                                    "a new unlinked file (O_TMPFILE) with the same contents".into(),
                            },
                        )
                    },
                )
            }
            libc::S_IFDIR => (FdKind::Directory, FdRestore::Reopen),
            libc::S_IFCHR => {
                let major = libc::major(st.st_rdev);
                let tty = major == 4 || major == 5 || (136..=143).contains(&major);
                match (tty, stdio) {
                    (true, true) => (FdKind::Tty { rdev: st.st_rdev }, FdRestore::Inherit),
                    (true, false) => (
                        FdKind::Tty { rdev: st.st_rdev },
                        devnull("a terminal other than stdin/stdout/stderr is not restored".into()),
                    ),
                    _ => (FdKind::CharDevice { rdev: st.st_rdev }, FdRestore::Reopen),
                }
            }
            libc::S_IFIFO => describe_pipe(ctx, fd, &st, flags, stdio, store)?,
            libc::S_IFSOCK => describe_socket(ctx, fd, &st, stdio, store)?,
            _ => describe_anon(fd, &path),
        },
    };
    match &restore {
        FdRestore::DevNull { reason } => warnings.push(format!(
            "descriptor {fd} ({path}): {reason}; restored as /dev/null"
        )),
        FdRestore::Approximate { approximation } => warnings.push(format!(
            "descriptor {fd} ({path}): restored as {approximation}"
        )),
        _ => {}
    }
    Ok(FdEntry {
        fd,
        flags,
        cloexec,
        offset,
        path,
        kind,
        restore,
    })
}

fn file_blob(
    fd: i32,
    size: u64,
    store: &mut dyn FnMut(&[u8]) -> Result<u32, WriteError>,
) -> Result<Option<u32>, WriteError> {
    if size > MAX_FILE_BLOB {
        return Ok(None);
    }
    match read_whole(fd, size) {
        Some(bytes) => store(&bytes).map(Some),
        None => Ok(None),
    }
}

fn describe_pipe(
    ctx: &FdContext<'_>,
    fd: i32,
    st: &libc::stat,
    flags: i32,
    stdio: bool,
    store: &mut dyn FnMut(&[u8]) -> Result<u32, WriteError>,
) -> Result<(FdKind, FdRestore), WriteError> {
    let ino = st.st_ino;
    let write_end = flags & libc::O_ACCMODE == libc::O_WRONLY;
    let has_read = ctx.pipe_ends.iter().any(|&(i, w)| i == ino && !w);
    let has_write = ctx.pipe_ends.iter().any(|&(i, w)| i == ino && w);
    let other_end_outside = if write_end { !has_read } else { !has_write };
    // Standard streams on a pipe to outside are the restarting command's; they are still
    // described in full, as in a process tree the other end may be another member.
    let inherit = stdio && other_end_outside;
    // The buffered bytes go with the first descriptor of the pipe that reads it.
    let first_reader = ctx
        .fds
        .iter()
        .find(|&&(f, _)| ctx.pipe_ends_of(f).is_some_and(|(i, w)| i == ino && !w))
        .map(|&(f, _)| f);
    let mut data = None;
    if first_reader == Some(fd) {
        if let Some(copy) = ctx.pipe_copies.iter().find(|c| c.ino == ino) {
            let mut bytes = Vec::new();
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n) = sys::read(copy.copy_fd, &mut buf) {
                if n == 0 {
                    break;
                }
                bytes.extend_from_slice(&buf[..n]);
            }
            if !bytes.is_empty() {
                data = Some(store(&bytes)?);
            }
        }
    }
    let size = sys::fcntl(fd, libc::F_GETPIPE_SZ, 0).unwrap_or(65536) as u64;
    let kind = FdKind::Pipe {
        pipe: Some(PipeInfo {
            ino,
            write_end,
            size,
            data,
            other_end_outside,
        }),
    };
    // An end whose other end nobody holds any more (POLLHUP on a read end, POLLERR on a
    // write end) comes back exactly so: the restored pipe has no other end either.
    let other_end_gone = other_end_outside && {
        let ev = sys::poll_now(fd);
        ev & if write_end {
            libc::POLLERR
        } else {
            libc::POLLHUP
        } != 0
    };
    let named = ctx_path_is_named_fifo(fd);
    let restore = if inherit {
        FdRestore::Inherit
    } else if named && other_end_outside && !other_end_gone {
        FdRestore::Approximate {
            approximation:
                "the FIFO opened again by its name: the process at its other end is not restored"
                    .into(),
        }
    } else if other_end_outside && !other_end_gone {
        FdRestore::Approximate {
            approximation: if write_end {
                "a pipe whose reader is gone (writes fail with EPIPE): the reader was another process".into()
            } else {
                "a pipe whose writer is gone (end of file after the buffered data): the writer was another process"
                    .into()
            },
        }
    } else {
        FdRestore::Recreate
    };
    Ok((kind, restore))
}

/// Whether `fd` is a named FIFO (its link names a path) rather than an anonymous pipe.
fn ctx_path_is_named_fifo(fd: i32) -> bool {
    let mut link = FixBuf::<64>::new();
    link.str("/proc/self/fd/").i64(fd as i64);
    let mut buf = [0u8; 8];
    matches!(sys::readlink(link.as_cstr(), &mut buf), Ok(n) if n > 0 && buf[0] == b'/')
}

impl FdContext<'_> {
    fn pipe_ends_of(&self, fd: i32) -> Option<(u64, bool)> {
        let st = sys::fstat(fd).ok()?;
        if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
            return None;
        }
        let fl = sys::fcntl(fd, libc::F_GETFL, 0).ok()? as i32;
        Some((st.st_ino, fl & libc::O_ACCMODE == libc::O_WRONLY))
    }
}

fn describe_socket(
    ctx: &FdContext<'_>,
    fd: i32,
    st: &libc::stat,
    stdio: bool,
    store: &mut dyn FnMut(&[u8]) -> Result<u32, WriteError>,
) -> Result<(FdKind, FdRestore), WriteError> {
    let ino = st.st_ino;
    let domain = sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(-1);
    let sock_type = sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).unwrap_or(-1);
    let protocol = sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or(0);
    let listening =
        sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).unwrap_or(0) != 0;
    let local = sys::sockname(fd, false);
    let peer = sys::sockname(fd, true);
    let pair = ctx
        .unix_peers
        .iter()
        .find(|&&(i, _)| i == ino)
        .map(|&(_, p)| p)
        .filter(|p| *p != 0 && ctx.socket_inos.contains(p));
    let connected = !peer.is_empty() || ctx.unix_peers.iter().any(|&(i, p)| i == ino && p != 0);
    if stdio && connected && pair.is_none() {
        return Ok((FdKind::Socket { socket: None }, FdRestore::Inherit));
    }
    let mut data = None;
    if pair.is_some() && sock_type == libc::SOCK_STREAM {
        let mut buf = vec![0u8; MAX_SOCKET_DATA];
        if let Ok(n) = sys::recv_peek(fd, &mut buf) {
            if n > 0 {
                data = Some(store(&buf[..n])?);
            }
        }
    }
    let supported = matches!(domain, libc::AF_UNIX | libc::AF_INET | libc::AF_INET6)
        && matches!(
            sock_type,
            libc::SOCK_STREAM | libc::SOCK_DGRAM | libc::SOCK_SEQPACKET
        );
    let info = SocketInfo {
        ino,
        domain,
        sock_type,
        protocol,
        listening,
        local,
        peer,
        pair,
        data,
        options: socket_options(fd, domain, sock_type),
    };
    let restore = if !supported {
        FdRestore::DevNull {
            reason: format!("socket of domain {domain}, type {sock_type} is not restorable"),
        }
    } else if pair.is_some() && sock_type != libc::SOCK_STREAM && sys::bytes_queued(fd) > 0 {
        FdRestore::Approximate {
            approximation: "a socketpair without the datagrams that were queued on it (only stream data is saved)"
                .into(),
        }
    } else if listening || pair.is_some() || !connected {
        FdRestore::Recreate
    } else {
        FdRestore::Approximate {
            approximation: "a socket whose connection was reset (the peer is outside the process; reconnecting needs \
                            TCP repair, which needs privileges): reads see end of file, writes fail with EPIPE"
                .into(),
        }
    };
    Ok((FdKind::Socket { socket: Some(info) }, restore))
}

/// Integer options worth carrying over (level, name); the rest keep their defaults.
const SOCKET_OPTIONS: &[(i32, i32)] = &[
    (libc::SOL_SOCKET, libc::SO_REUSEADDR),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    (libc::SOL_SOCKET, libc::SO_BROADCAST),
    (libc::SOL_SOCKET, libc::SO_OOBINLINE),
    (libc::SOL_SOCKET, libc::SO_RCVBUF),
    (libc::SOL_SOCKET, libc::SO_SNDBUF),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT),
    (libc::SOL_SOCKET, libc::SO_PRIORITY),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
];

fn socket_options(fd: i32, domain: i32, sock_type: i32) -> Vec<SockOpt> {
    SOCKET_OPTIONS
        .iter()
        .filter(|&&(level, _)| match level {
            libc::IPPROTO_TCP => sock_type == libc::SOCK_STREAM && domain != libc::AF_UNIX,
            libc::IPPROTO_IPV6 => domain == libc::AF_INET6,
            _ => true,
        })
        .filter_map(|&(level, name)| {
            sys::getsockopt_int(fd, level, name)
                .ok()
                .map(|value| SockOpt { level, name, value })
        })
        .collect()
}

fn describe_anon(fd: i32, path: &str) -> (FdKind, FdRestore) {
    let info = fdinfo(fd);
    let parsed = match path {
        "anon_inode:[eventfd]" => {
            parse_eventfd(&info).map(|(count, semaphore)| FdKind::Eventfd { count, semaphore })
        }
        "anon_inode:[timerfd]" => {
            parse_timerfd(&info).map(|(clockid, value_ns, interval_ns, ticks)| FdKind::Timerfd {
                clockid,
                value_ns,
                interval_ns,
                ticks,
            })
        }
        "anon_inode:[signalfd]" => parse_signalfd(&info).map(|mask| FdKind::Signalfd { mask }),
        "anon_inode:[eventpoll]" => Some(FdKind::Epoll {
            interest: parse_epoll(&info),
        }),
        _ => None,
    };
    match parsed {
        Some(kind) => (kind, FdRestore::Recreate),
        None => (
            FdKind::Other,
            FdRestore::DevNull {
                reason: match path {
                    "anon_inode:inotify" => {
                        "inotify watches name inodes, not paths, and reopening by handle needs privileges".into()
                    }
                    _ => format!("{path} is not restorable"),
                },
            },
        ),
    }
}

/// The file locks this process holds (POSIX locks by its pid; flock and OFD locks by
/// whether one of its open file descriptions holds them).
pub fn locks_held(pid: i32, fds: &[(i32, i64)]) -> Vec<FileLock> {
    let text = procfs::read_proc_string(b"/proc/locks\0");
    let mut out = Vec::new();
    for l in crate::procfs::parse_locks(&text) {
        let matching = fds.iter().map(|&(fd, _)| fd).filter(|&fd| {
            sys::fstat(fd).is_ok_and(|st| {
                st.st_ino == l.inode
                    && libc::major(st.st_dev) == l.dev_major
                    && libc::minor(st.st_dev) == l.dev_minor
            })
        });
        let len = l.end.map_or(0, |e| e + 1 - l.start);
        let lock = |fd: i32, kind: &str| FileLock {
            fd,
            kind: kind.into(),
            write: l.write,
            start: l.start,
            len,
        };
        match l.class.as_str() {
            "POSIX" if l.pid == pid as i64 => {
                if let Some(fd) = matching.into_iter().next() {
                    out.push(lock(fd, "posix"));
                }
            }
            "FLOCK" if l.pid == pid as i64 => {
                if let Some(fd) = matching.into_iter().next() {
                    out.push(lock(fd, "flock"));
                }
            }
            "OFDLCK" => {
                // Held by one of our descriptions if asking through it shows no conflict.
                for fd in matching {
                    if sys::ofd_lock_is_ours(fd, l.write, l.start, len) {
                        out.push(lock(fd, "ofd"));
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fdinfo() {
        let ev = "pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1057\neventfd-count:               2a\neventfd-id: 3\neventfd-semaphore: 1\n";
        assert_eq!(parse_eventfd(ev), Some((42, true)));
        let tf = "pos:\t0\nflags:\t02\nclockid: 1\nticks: 0\nsettime flags: 00\nit_value: (0, 499813020)\nit_interval: (2, 0)\n";
        assert_eq!(parse_timerfd(tf), Some((1, 499_813_020, 2_000_000_000, 0)));
        assert_eq!(
            parse_signalfd("pos:\t0\nsigmask:\t0000000000004002\n"),
            Some(0x4002)
        );
        let ep = "pos:\t0\ntfd:        5 events:       19 data:                5  pos:0 ino:1057 sdev:f\ntfd:        7 events: 80000001 data: ffffffffffffffff  pos:0 ino:9 sdev:f\n";
        assert_eq!(
            parse_epoll(ep),
            vec![
                EpollEntry {
                    fd: 5,
                    events: 0x19,
                    data: 5
                },
                EpollEntry {
                    fd: 7,
                    events: 0x8000_0001,
                    data: u64::MAX
                }
            ]
        );
        assert_eq!(parse_timerfd("clockid: 0\n"), None);
    }
}
