//! Restarting a process tree: verify every member, enter a new PID namespace (with a new
//! user namespace when unprivileged, which is what allows `clone3` with `set_tid` there),
//! start an init (PID 1 of the namespace) that makes the pipes and socket pairs the members
//! share, then the members top-down, each with its original PID and parent. Each member
//! stages itself with the single-process path and waits at the tree's barrier; only when
//! every member has staged do all hand over together. Any failure before that: every
//! member exits, nothing of the program runs.
//!
//! The calling process (`forkpoint restart`) stays outside the namespace: it passes its
//! signals on to the tree's root, and exits as the root does.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use forkpoint_image::{
    FdKind, FdRestore, ImageFile, Mapping, MemberFd, MemoryObject, Metadata, TreeMember,
};

use crate::fds::SharedFds;
use crate::{verify, RestoreError, RestoreOptions};

/// What a member needs to wait for the others: the barrier's pipes, the shared objects.
pub struct MemberSync {
    ready_w: RawFd,
    go_r: RawFd,
    pub shared: SharedFds,
}

impl MemberSync {
    /// Whether a warning of this member's image is about a pipe, socket or shared memory
    /// this tree shares: restored faithfully, the other end is another member.
    pub fn covers(&self, meta: &Metadata, warning: &str) -> bool {
        let shared = |ino: &u64| {
            warning.contains(&format!("pipe:[{ino}]"))
                || warning.contains(&format!("socket:[{ino}]"))
        };
        let shared_memory = |m: &Mapping| {
            m.memory_object
                .is_some_and(|o| self.shared.memory.contains_key(&o))
                && warning.starts_with(&format!("mapping {:#x}-{:#x}:", m.start, m.end))
        };
        self.shared.pipes.keys().any(shared)
            || self.shared.sockets.keys().any(shared)
            || meta.mappings.iter().any(shared_memory)
    }

    /// Says this member is staged, and waits until every member is. Err: another member
    /// failed (its message is already on stderr).
    pub fn staged(&self) -> Result<(), RestoreError> {
        // SAFETY: writing one byte from a valid buffer to our pipe.
        unsafe { libc::write(self.ready_w, b"R".as_ptr().cast(), 1) };
        let mut b = [0u8; 1];
        loop {
            // SAFETY: reading one byte into a valid buffer.
            let n = unsafe { libc::read(self.go_r, b.as_mut_ptr().cast(), 1) };
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            if n == 1 && b[0] == b'G' {
                return Ok(());
            }
            return Err(RestoreError::Refused(
                "another process of the tree could not be restored; none of them runs".into(),
            ));
        }
    }

    fn failed(&self) {
        // SAFETY: writing one byte from a valid buffer to our pipe.
        unsafe { libc::write(self.ready_w, b"F".as_ptr().cast(), 1) };
    }
}

fn cvt(r: libc::c_long, what: &str) -> Result<libc::c_long, RestoreError> {
    if r < 0 {
        Err(RestoreError::os(
            what.into(),
            std::io::Error::last_os_error(),
        ))
    } else {
        Ok(r)
    }
}

fn pipe() -> Result<(RawFd, RawFd), RestoreError> {
    let mut fds = [0; 2];
    // SAFETY: fds is two writable ints.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    cvt(r as _, "pipe2")?;
    Ok((fds[0], fds[1]))
}

fn close(fd: RawFd) {
    // SAFETY: a descriptor of ours that nothing else owns.
    unsafe { libc::close(fd) };
}

/// A new process with PID `pid` in our PID namespace (`clone3` with `set_tid`), like fork:
/// returns 0 in the child.
fn clone_with_pid(pid: i32) -> Result<i32, RestoreError> {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let tid = [pid as libc::pid_t];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tid.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: fork-like clone3 (no CLONE_VM, no new stack) of a single-threaded process; the
    // arguments are valid for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    let r = cvt(r, "").map_err(|e| {
        RestoreError::Failed(format!("cannot start process {pid} with its PID: {e}"))
    })?;
    Ok(r as i32)
}

/// Mounts a /proc of the tree's own PID namespace (in its own mount namespace, made a
/// slave of the machine's: mounts made outside later still reach the tree, none made here
/// goes out), so the library in the members reads the PIDs and TIDs its syscalls
/// use, and a restored tree can be checkpointed again. Best effort: where proc cannot be
/// mounted (a container masking parts of /proc), the tree runs with the outer /proc and a
/// second checkpoint of it is refused.
fn mount_own_proc() {
    let none = std::ptr::null::<libc::c_char>();
    // SAFETY: mount(2) with NUL-terminated strings, in our own mount namespace.
    unsafe {
        if libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) != 0
        {
            return;
        }
        libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        );
    }
}

/// Enters a new PID namespace (our next child is its init), inside a new user namespace
/// that maps our own uid and gid when we are not root.
fn enter_namespaces() -> Result<(), RestoreError> {
    // SAFETY: no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if uid == 0 {
        // SAFETY: unshare changes only our namespaces.
        let r = unsafe { libc::unshare(libc::CLONE_NEWPID | libc::CLONE_NEWNS) };
        cvt(r as _, "unshare(CLONE_NEWPID | CLONE_NEWNS)")?;
        return Ok(());
    }
    // SAFETY: as above.
    let r = unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::CLONE_NEWNS) };
    cvt(
        r as _,
        "unshare(CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS) (are unprivileged user namespaces disabled?)",
    )?;
    let write = |file: &str, text: String| {
        std::fs::write(file, text).map_err(|e| RestoreError::os(format!("cannot write {file}"), e))
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("{uid} {uid} 1\n"))?;
    write("/proc/self/gid_map", format!("{gid} {gid} 1\n"))?;
    Ok(())
}

/// The pipes and socket pairs more than one member holds, made here with their contents.
/// Each open file description members share, opened once (as its first holder's entry
/// says), for every holder's descriptor.
fn make_shared_files(
    members: &[&ImageFile],
    groups: &[Vec<MemberFd>],
) -> Result<HashMap<(i32, i32), RawFd>, RestoreError> {
    let mut files = HashMap::new();
    for group in groups {
        let entry = group.iter().find_map(|d| {
            let m = members.iter().find(|m| m.metadata.process.pid == d.pid)?;
            let f = m.metadata.fds.iter().find(|f| f.fd == d.fd)?;
            (f.restore == FdRestore::Reopen).then_some((m, f))
        });
        let Some((m, f)) = entry else { continue };
        let fd = std::os::fd::IntoRawFd::into_raw_fd(crate::fds::reopen_shared(&m.metadata, f)?);
        for d in group {
            files.insert((d.pid, d.fd), fd);
        }
    }
    Ok(files)
}

fn make_shared(
    members: &[&ImageFile],
    shared_files: &[Vec<MemberFd>],
) -> Result<SharedFds, RestoreError> {
    // What the root inherits from outside (its stdio) is not the tree's to make.
    let outside: std::collections::HashSet<u64> = members[0]
        .metadata
        .fds
        .iter()
        .filter(|f| f.restore == FdRestore::Inherit)
        .filter_map(|f| match &f.kind {
            FdKind::Pipe { pipe: Some(p) } => Some(p.ino),
            FdKind::Socket { socket: Some(s) } => Some(s.ino),
            _ => None,
        })
        .collect();
    let mut holders: HashMap<u64, usize> = HashMap::new();
    let count = |ino: u64, holders: &mut HashMap<u64, usize>, seen: &mut Vec<u64>| {
        if !seen.contains(&ino) {
            seen.push(ino);
            *holders.entry(ino).or_default() += 1;
        }
    };
    for m in members {
        let mut seen = Vec::new();
        for f in &m.metadata.fds {
            match &f.kind {
                FdKind::Pipe { pipe: Some(p) }
                    if !f.path.starts_with('/') && !outside.contains(&p.ino) =>
                {
                    count(p.ino, &mut holders, &mut seen)
                }
                FdKind::Socket { socket: Some(s) }
                    if s.pair.is_some() && !outside.contains(&s.ino) =>
                {
                    let pair = s.pair.unwrap_or(s.ino);
                    count(s.ino.min(pair), &mut holders, &mut seen)
                }
                _ => {}
            }
        }
    }
    let mut shared = SharedFds::default();
    let err = |what: &str, e: std::io::Error| RestoreError::os(what.into(), e);
    shared.memory = make_shared_memory(members)?;
    shared.tree = Some(outside);
    shared.files = make_shared_files(members, shared_files)?;
    for m in members {
        for f in &m.metadata.fds {
            match &f.kind {
                FdKind::Pipe { pipe: Some(p) }
                    if holders.get(&p.ino).is_some_and(|&n| n > 1)
                        && !shared.pipes.contains_key(&p.ino) =>
                {
                    let (r, w) = pipe()?;
                    // SAFETY: plain fcntl on our pipe.
                    unsafe {
                        libc::fcntl(w, libc::F_SETPIPE_SZ, p.size.min(i32::MAX as u64) as i32)
                    };
                    shared.pipes.insert(p.ino, (r, w));
                }
                FdKind::Socket { socket: Some(s) } => {
                    let Some(peer) = s.pair else { continue };
                    if holders.get(&s.ino.min(peer)).is_none_or(|&n| n <= 1)
                        || shared.sockets.contains_key(&s.ino)
                    {
                        continue;
                    }
                    let mut sv = [0; 2];
                    // SAFETY: sv is two writable ints.
                    if unsafe {
                        libc::socketpair(
                            s.domain,
                            s.sock_type | libc::SOCK_CLOEXEC,
                            0,
                            sv.as_mut_ptr(),
                        )
                    } != 0
                    {
                        return Err(err("socketpair", std::io::Error::last_os_error()));
                    }
                    shared.sockets.insert(s.ino, sv[0]);
                    shared.sockets.insert(peer, sv[1]);
                }
                _ => {}
            }
        }
    }
    // Contents: a pipe's once (every holder saw the same bytes at the cut); what a socket
    // end had queued for reading goes into its peer.
    let mut filled: Vec<u64> = Vec::new();
    for m in members {
        for f in &m.metadata.fds {
            let (ino, data, target) = match &f.kind {
                FdKind::Pipe { pipe: Some(p) } if shared.pipes.contains_key(&p.ino) => {
                    (p.ino, p.data, shared.pipes[&p.ino].1)
                }
                FdKind::Socket { socket: Some(s) } if shared.sockets.contains_key(&s.ino) => {
                    let peer = s.pair.unwrap_or(s.ino);
                    (s.ino, s.data, shared.sockets[&peer])
                }
                _ => continue,
            };
            let Some(blob) = data else { continue };
            if filled.contains(&ino) {
                continue;
            }
            filled.push(ino);
            let bytes = m.read_blob(blob).map_err(|e| {
                RestoreError::Failed(format!(
                    "cannot read the contents of pipe or socket {ino}: {e}"
                ))
            })?;
            // SAFETY: a descriptor we made, borrowed for the write only.
            let mut fd = std::mem::ManuallyDrop::new(unsafe {
                <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(target)
            });
            fd.write_all(&bytes)
                .map_err(|e| err("cannot refill a shared pipe", e))?;
        }
    }
    Ok(shared)
}

/// A memfd for each shared memory object more than one member maps, as large as the
/// furthest mapping of it reaches; each member maps it and fills its part from its image
/// (all saw the same bytes at the cut).
fn make_shared_memory(
    members: &[&ImageFile],
) -> Result<HashMap<MemoryObject, RawFd>, RestoreError> {
    let mut holders: HashMap<MemoryObject, (usize, u64)> = HashMap::new();
    for m in members {
        let mut seen = Vec::new();
        for map in &m.metadata.mappings {
            let Some(obj) = map.memory_object else {
                continue;
            };
            let end = map.offset.saturating_add(map.end - map.start);
            let h = holders.entry(obj).or_default();
            h.1 = h.1.max(end);
            if !seen.contains(&obj) {
                seen.push(obj);
                h.0 += 1;
            }
        }
    }
    let mut memory = HashMap::new();
    for (obj, (n, size)) in holders {
        if n < 2 {
            continue;
        }
        // SAFETY: NUL-terminated name; flags are plain bits.
        let fd = unsafe { libc::memfd_create(c"forkpoint-shared".as_ptr(), libc::MFD_CLOEXEC) };
        cvt(fd as _, "memfd_create")?;
        // SAFETY: plain ftruncate of our memfd.
        if unsafe { libc::ftruncate(fd, size as libc::off_t) } != 0 {
            let e = std::io::Error::last_os_error();
            close(fd);
            return Err(RestoreError::os(
                format!(
                    "cannot size the shared memory object {} to {size} bytes",
                    obj.inode
                ),
                e,
            ));
        }
        memory.insert(obj, fd);
    }
    Ok(memory)
}

/// The root's PID inside the namespace, for init's signal forwarding.
static ROOT_PID: AtomicI32 = AtomicI32::new(0);
/// Init's PID outside, for the outer process's forwarding.
static INIT_PID: AtomicI32 = AtomicI32::new(0);

const FORWARDED: [i32; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

extern "C" fn forward_to_root(sig: i32) {
    // SAFETY: kill is async-signal-safe.
    unsafe { libc::kill(ROOT_PID.load(Ordering::SeqCst), sig) };
}

extern "C" fn forward_to_init(sig: i32) {
    // SAFETY: kill is async-signal-safe.
    unsafe { libc::kill(INIT_PID.load(Ordering::SeqCst), sig) };
}

fn forward_signals(handler: extern "C" fn(i32)) {
    for sig in FORWARDED {
        // SAFETY: installing a handler that only calls kill.
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

/// Waits for `pid` (reaping any other child meanwhile); its exit as an exit code.
fn wait_for(pid: i32) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: status is a valid int.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return 1;
        }
        if r == pid {
            return if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
        }
    }
}

fn exit(code: i32) -> ! {
    let _ = std::io::stderr().flush();
    // SAFETY: ends the process.
    unsafe { libc::_exit(code) }
}

/// Restores the tree of `img` (opened from `path`). Returns only if it refuses before any
/// process was started; otherwise this process exits as the tree's root does.
pub fn restore_tree(
    path: &Path,
    img: &ImageFile,
    opts: &RestoreOptions,
) -> Result<Infallible, RestoreError> {
    let tree: Vec<TreeMember> = img.metadata.tree.clone().unwrap_or_default().members;
    // Verify every member before anything starts.
    verify::check_owner(path, opts.allow_foreign_owner)?;
    let mut members = Vec::with_capacity(tree.len());
    for t in &tree {
        if t.exited.is_some() {
            members.push(None);
            continue;
        }
        let m = img
            .open_member(path, t.pid)
            .map_err(|source| RestoreError::Image {
                path: path.to_path_buf(),
                source,
            })?;
        let refuse = |e: RestoreError| RestoreError::Refused(format!("process {}: {e}", t.pid));
        verify::check_cpu(&m.metadata, verify::current_cpu()).map_err(refuse)?;
        verify::check_files(&m.metadata).map_err(refuse)?;
        members.push(Some(m));
    }
    let living: Vec<&ImageFile> = members.iter().flatten().collect();
    let n_living = living.len();
    if opts.verbose {
        eprintln!(
            "forkpoint restart: a tree of {} processes, all verified",
            tree.len()
        );
    }
    enter_namespaces()?;
    let (ready_r, ready_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    // SAFETY: this process is single-threaded: fork is safe.
    let init = unsafe { libc::fork() };
    if init < 0 {
        return Err(RestoreError::os(
            "fork".into(),
            std::io::Error::last_os_error(),
        ));
    }
    if init > 0 {
        // Outside: pass signals on, exit as the tree's root does.
        for fd in [ready_r, ready_w, go_r, go_w] {
            close(fd);
        }
        INIT_PID.store(init, Ordering::SeqCst);
        forward_signals(forward_to_init);
        exit(wait_for(init));
    }
    // Init, PID 1 of the namespace.
    mount_own_proc();
    let shared_files = img
        .metadata
        .tree
        .as_ref()
        .map(|t| t.shared_files.clone())
        .unwrap_or_default();
    let shared = match make_shared(&living, &shared_files) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("forkpoint restart: {e}");
            exit(1)
        }
    };
    let sync = MemberSync {
        ready_w,
        go_r,
        shared,
    };
    let root_pid = tree[0].pid;
    match clone_with_pid(root_pid) {
        Ok(0) => become_member(path, 0, &tree, &members, &sync, go_w, opts),
        Ok(_) => {}
        Err(e) => {
            eprintln!("forkpoint restart: {e}");
            exit(1)
        }
    }
    ROOT_PID.store(root_pid, Ordering::SeqCst);
    forward_signals(forward_to_root);
    close(ready_w);
    // The members have their copies: a pipe's end must close when its last member closes it.
    for &(r, w) in sync.shared.pipes.values() {
        close(r);
        close(w);
    }
    for &s in sync
        .shared
        .sockets
        .values()
        .chain(sync.shared.memory.values())
    {
        close(s);
    }
    let mut files: Vec<RawFd> = sync.shared.files.values().copied().collect();
    files.sort_unstable();
    files.dedup();
    for fd in files {
        close(fd);
    }
    // Every member says R (staged) or F; a member that dies says nothing.
    let mut staged = 0;
    let mut b = [0u8; 1];
    while staged < n_living {
        // SAFETY: reading one byte into a valid buffer.
        let n = unsafe { libc::read(ready_r, b.as_mut_ptr().cast(), 1) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n != 1 || b[0] != b'R' {
            break;
        }
        staged += 1;
    }
    if staged < n_living {
        close(go_w); // every member reads EOF and exits
        let _ = wait_for(root_pid);
        eprintln!(
            "forkpoint restart: {} of the tree's {} processes could not be staged; none of them ran",
            n_living - staged,
            n_living
        );
        exit(1);
    }
    let go = vec![b'G'; n_living];
    // SAFETY: writing from a valid buffer (a pipe holds 64 KiB: one byte per member fits).
    unsafe { libc::write(go_w, go.as_ptr().cast(), go.len()) };
    close(go_w);
    exit(wait_for(root_pid));
}

/// The process group member `c` must join inside the tree: one led by a member, other than
/// the root's (the root stays in `forkpoint restart`'s group and session, which stand for
/// its own: members in the root's group inherit it).
fn group_in_tree(tree: &[TreeMember], c: usize) -> Option<i32> {
    let (t, root) = (&tree[c], &tree[0]);
    // A session leader makes its group with its session (a group leader could not).
    let session_leader = t.sid == t.pid && t.sid != root.sid;
    (c != 0 && !session_leader && t.pgid != root.pgid && tree.iter().any(|m| m.pid == t.pgid))
        .then_some(t.pgid)
}

/// Puts member `i` (the calling process, just created) into its session and process
/// group: a session leader of its own session makes it again (before it creates its
/// children, which inherit it); a group led by a member is joined.
fn join_session_and_group(tree: &[TreeMember], i: usize) {
    let (t, root) = (&tree[i], &tree[0]);
    if i == 0 {
        return;
    }
    if t.sid == t.pid && t.sid != root.sid {
        // SAFETY: setsid affects only this process.
        unsafe { libc::setsid() };
        return;
    }
    if let Some(pgid) = group_in_tree(tree, i) {
        let pgid = if pgid == t.pid { 0 } else { pgid };
        // SAFETY: setpgid on this process; an error leaves it where it is.
        unsafe { libc::setpgid(0, pgid) };
    } else if t.pgid == root.pgid {
        // Back in the root's group if the parent left it.
        // SAFETY: getpgid/setpgid on processes of this tree.
        unsafe {
            let root_group = libc::getpgid(root.pid);
            if root_group > 0 && libc::getpgid(0) != root_group {
                libc::setpgid(0, root_group);
            }
        }
    }
}

/// Ends this process as the zombie it was: named as it was, with its wait status (a
/// normal exit's code, or death by the same signal, without a core dump).
fn become_zombie(cmdline: &[String], status: i32) -> ! {
    if let Some(name) = cmdline
        .first()
        .and_then(|n| std::ffi::CString::new(n.as_str()).ok())
    {
        // SAFETY: PR_SET_NAME with a NUL-terminated string (truncated to 15 bytes).
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    }
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain syscalls on this process, which ends here.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(sig);
        }
    }
    // SAFETY: ends the process.
    unsafe { libc::_exit(libc::WEXITSTATUS(status)) }
}

/// Becomes member `i`: starts its children (with their PIDs), then restores itself.
fn become_member(
    path: &Path,
    i: usize,
    tree: &[TreeMember],
    members: &[Option<ImageFile>],
    sync: &MemberSync,
    go_w: RawFd,
    opts: &RestoreOptions,
) -> ! {
    // Only init may hold the go pipe's write end: its close is everyone's abort.
    close(go_w);
    let me = tree[i].pid;
    join_session_and_group(tree, i);
    // Group leaders first, so that their siblings can join their groups.
    let mut children: Vec<usize> = (1..tree.len()).filter(|&c| tree[c].ppid == me).collect();
    children.sort_by_key(|&c| tree[c].pgid != tree[c].pid);
    for c in children {
        let child = &tree[c];
        match clone_with_pid(child.pid) {
            Ok(0) => {
                join_session_and_group(tree, c);
                match child.exited {
                    Some(status) => become_zombie(&child.cmdline, status),
                    None => become_member(path, c, tree, members, sync, -1, opts),
                }
            }
            Ok(pid) => {
                // The parent's side of the child's group change too (as shells do): either
                // may run first.
                if let Some(pgid) = group_in_tree(tree, c) {
                    // SAFETY: setpgid on our own child; an error leaves it where it is.
                    unsafe { libc::setpgid(pid, pgid) };
                }
                if child.exited.is_some() {
                    // A zombie before this process becomes the program: its SIGCHLD goes
                    // to the loader (ignored), the program finds it waiting to be reaped.
                    // SAFETY: a zeroed siginfo for waitid to fill.
                    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                    // SAFETY: waitid on our own child, leaving it a zombie (WNOWAIT).
                    while unsafe {
                        libc::waitid(
                            libc::P_PID,
                            pid as libc::id_t,
                            &mut info,
                            libc::WEXITED | libc::WNOWAIT,
                        )
                    } != 0
                        && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                    {
                    }
                }
            }
            Err(e) => {
                eprintln!("forkpoint restart: {e}");
                sync.failed();
                exit(1);
            }
        }
    }
    let Some(img) = &members[i] else { exit(1) };
    let err = match crate::restore_process(path, img, opts, Some(sync), &[]) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    eprintln!("forkpoint restart: process {me}: {err}");
    sync.failed();
    exit(1)
}
