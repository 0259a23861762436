//! Raw Linux syscalls for the signal handler and the forked writer.
//!
//! Async-signal-safe by construction: every function here is one `syscall` instruction and
//! touches no libc state (not even `errno`). Errors come back as `Err(errno)`.
//! This is one of the few modules with `unsafe`; callers pass plain slices and
//! NUL-terminated byte strings.

use core::arch::asm;

pub type SysResult = Result<usize, i32>;

#[inline(always)]
fn check(ret: isize) -> SysResult {
    if (-4095..0).contains(&ret) {
        Err((-ret) as i32)
    } else {
        Ok(ret as usize)
    }
}

/// # Safety
/// The caller upholds the contract of syscall `nr` for these arguments (valid pointers
/// for the lengths given, no aliasing of Rust references the kernel writes to).
#[inline(always)]
pub unsafe fn syscall6(
    nr: i64,
    a1: usize,
    a2: usize,
    a3: usize,
    a4: usize,
    a5: usize,
    a6: usize,
) -> isize {
    let ret: isize;
    // SAFETY: the x86-64 syscall ABI: rax number, rdi rsi rdx r10 r8 r9 arguments, rcx and
    // r11 clobbered; memory effects are the caller's contract (see above).
    unsafe {
        asm!("syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a1, in("rsi") a2, in("rdx") a3, in("r10") a4, in("r8") a5, in("r9") a6,
            lateout("rcx") _, lateout("r11") _,
            options(nostack));
    }
    ret
}

macro_rules! sc {
    ($nr:expr) => { sc!($nr, 0, 0, 0, 0, 0, 0) };
    ($nr:expr, $a:expr) => { sc!($nr, $a, 0, 0, 0, 0, 0) };
    ($nr:expr, $a:expr, $b:expr) => { sc!($nr, $a, $b, 0, 0, 0, 0) };
    ($nr:expr, $a:expr, $b:expr, $c:expr) => { sc!($nr, $a, $b, $c, 0, 0, 0) };
    ($nr:expr, $a:expr, $b:expr, $c:expr, $d:expr) => { sc!($nr, $a, $b, $c, $d, 0, 0) };
    ($nr:expr, $a:expr, $b:expr, $c:expr, $d:expr, $e:expr) => { sc!($nr, $a, $b, $c, $d, $e, 0) };
    ($nr:expr, $a:expr, $b:expr, $c:expr, $d:expr, $e:expr, $f:expr) => {
        check(syscall6($nr, $a as usize, $b as usize, $c as usize, $d as usize, $e as usize, $f as usize))
    };
}

/// A path or name for the kernel: must end with a NUL byte.
fn cstr(path: &[u8]) -> *const u8 {
    debug_assert!(path.last() == Some(&0));
    if path.last() == Some(&0) {
        path.as_ptr()
    } else {
        c"".as_ptr() as *const u8
    }
}

pub fn read(fd: i32, buf: &mut [u8]) -> SysResult {
    // SAFETY: the kernel writes at most buf.len() bytes into buf.
    unsafe { sc!(libc::SYS_read, fd, buf.as_mut_ptr(), buf.len()) }
}

pub fn pread(fd: i32, buf: &mut [u8], off: u64) -> SysResult {
    // SAFETY: the kernel writes at most buf.len() bytes into buf.
    unsafe { sc!(libc::SYS_pread64, fd, buf.as_mut_ptr(), buf.len(), off) }
}

pub fn write(fd: i32, buf: &[u8]) -> SysResult {
    // SAFETY: the kernel reads buf.len() bytes from buf.
    unsafe { sc!(libc::SYS_write, fd, buf.as_ptr(), buf.len()) }
}

/// Writes all of `buf`, retrying short writes and EINTR.
pub fn write_all(fd: i32, mut buf: &[u8]) -> Result<(), i32> {
    while !buf.is_empty() {
        match write(fd, buf) {
            Ok(0) => return Err(libc::EIO),
            Ok(n) => buf = &buf[n..],
            Err(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads until `buf` is full or end of file; returns the bytes read.
pub fn read_full(fd: i32, buf: &mut [u8]) -> SysResult {
    let mut n = 0;
    while n < buf.len() {
        match read(fd, &mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

pub fn open(path: &[u8], flags: i32, mode: u32) -> Result<i32, i32> {
    // SAFETY: path is NUL-terminated (cstr).
    unsafe { sc!(libc::SYS_openat, libc::AT_FDCWD, cstr(path), flags, mode) }.map(|fd| fd as i32)
}

pub fn close(fd: i32) {
    // SAFETY: closing a descriptor has no memory effects.
    let _ = unsafe { sc!(libc::SYS_close, fd) };
}

pub fn lseek(fd: i32, off: i64, whence: i32) -> Result<i64, i32> {
    // SAFETY: no memory effects.
    unsafe { sc!(libc::SYS_lseek, fd, off, whence) }.map(|x| x as i64)
}

pub fn fsync(fd: i32) -> SysResult {
    // SAFETY: no memory effects.
    unsafe { sc!(libc::SYS_fsync, fd) }
}

pub fn rename(from: &[u8], to: &[u8]) -> SysResult {
    // SAFETY: both paths are NUL-terminated.
    unsafe {
        sc!(
            libc::SYS_renameat,
            libc::AT_FDCWD,
            cstr(from),
            libc::AT_FDCWD,
            cstr(to)
        )
    }
}

pub fn unlink(path: &[u8]) -> SysResult {
    // SAFETY: path is NUL-terminated.
    unsafe { sc!(libc::SYS_unlinkat, libc::AT_FDCWD, cstr(path), 0) }
}

pub fn mkdir(path: &[u8], mode: u32) -> SysResult {
    // SAFETY: path is NUL-terminated.
    unsafe { sc!(libc::SYS_mkdirat, libc::AT_FDCWD, cstr(path), mode) }
}

pub fn fstat(fd: i32) -> Result<libc::stat, i32> {
    // SAFETY: libc::stat is plain data; the kernel fills it.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: st is a valid, writable struct stat.
    unsafe { sc!(libc::SYS_fstat, fd, &mut st as *mut libc::stat) }.map(|_| st)
}

pub fn stat(path: &[u8]) -> Result<libc::stat, i32> {
    // SAFETY: libc::stat is plain data.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: path NUL-terminated, st writable.
    unsafe {
        sc!(
            libc::SYS_newfstatat,
            libc::AT_FDCWD,
            cstr(path),
            &mut st as *mut libc::stat,
            0
        )
    }
    .map(|_| st)
}

pub fn readlink(path: &[u8], buf: &mut [u8]) -> SysResult {
    // SAFETY: path NUL-terminated; at most buf.len() bytes written.
    unsafe {
        sc!(
            libc::SYS_readlinkat,
            libc::AT_FDCWD,
            cstr(path),
            buf.as_mut_ptr(),
            buf.len()
        )
    }
}

pub fn getdents64(fd: i32, buf: &mut [u8]) -> SysResult {
    // SAFETY: at most buf.len() bytes written.
    unsafe { sc!(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) }
}

pub fn fcntl(fd: i32, cmd: i32, arg: usize) -> SysResult {
    // SAFETY: used only with integer-argument commands (F_GETFL, F_GETFD).
    unsafe { sc!(libc::SYS_fcntl, fd, cmd, arg) }
}

/// # Safety
/// As `mmap(2)`: with MAP_FIXED the range must not hold memory anything still uses.
pub unsafe fn mmap(addr: usize, len: usize, prot: i32, flags: i32, fd: i32, off: u64) -> SysResult {
    // SAFETY: the caller's contract.
    unsafe { sc!(libc::SYS_mmap, addr, len, prot, flags, fd, off) }
}

/// # Safety
/// Nothing may use the range afterwards.
pub unsafe fn munmap(addr: usize, len: usize) -> SysResult {
    // SAFETY: the caller's contract.
    unsafe { sc!(libc::SYS_munmap, addr, len) }
}

/// # Safety
/// As `madvise(2)`: MADV_DONTNEED discards the range's private contents.
pub unsafe fn madvise(addr: usize, len: usize, advice: i32) -> SysResult {
    // SAFETY: the caller's contract.
    unsafe { sc!(libc::SYS_madvise, addr, len, advice) }
}

pub fn getpid() -> i32 {
    // SAFETY: no memory effects.
    unsafe { sc!(libc::SYS_getpid) }.unwrap_or(0) as i32
}

pub fn getppid() -> i32 {
    // SAFETY: no memory effects.
    unsafe { sc!(libc::SYS_getppid) }.unwrap_or(0) as i32
}

pub fn getuid() -> u32 {
    // SAFETY: no memory effects.
    unsafe { sc!(libc::SYS_getuid) }.unwrap_or(0) as u32
}

pub fn gettid() -> i32 {
    // SAFETY: no memory effects.
    unsafe { sc!(libc::SYS_gettid) }.unwrap_or(0) as i32
}

pub fn kill(pid: i32, sig: i32) -> SysResult {
    // SAFETY: no memory effects.
    unsafe { sc!(libc::SYS_kill, pid, sig) }
}

pub fn tgkill(pid: i32, tid: i32, sig: i32) -> SysResult {
    // SAFETY: no memory effects on this process beyond signal delivery.
    unsafe { sc!(libc::SYS_tgkill, pid, tid, sig) }
}

/// As `rt_tgsigqueueinfo(2)`: a signal with `info` (a kernel siginfo, 128 bytes) to one
/// thread of process `pid`.
pub fn tgsigqueueinfo(pid: i32, tid: i32, sig: i32, info: &[u64; 16]) -> SysResult {
    // SAFETY: info is a whole 128-byte siginfo the kernel only reads.
    unsafe { sc!(libc::SYS_rt_tgsigqueueinfo, pid, tid, sig, info.as_ptr()) }
}

/// Current signal mask of the calling thread (64 signals).
pub fn sigmask_get() -> u64 {
    let mut old: u64 = 0;
    // SAFETY: old is an 8-byte kernel sigset.
    let _ = unsafe {
        sc!(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            0,
            &mut old as *mut u64,
            8
        )
    };
    old
}

/// Sets the signal mask with `how` (SIG_BLOCK, SIG_UNBLOCK, SIG_SETMASK); returns the old one.
pub fn sigmask_set(how: i32, set: u64) -> u64 {
    let mut old: u64 = 0;
    // SAFETY: set and old are 8-byte kernel sigsets.
    let _ = unsafe {
        sc!(
            libc::SYS_rt_sigprocmask,
            how,
            &set as *const u64,
            &mut old as *mut u64,
            8
        )
    };
    old
}

/// The kernel's `struct sigaction` on x86-64.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct KernelSigaction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// Puts back the default action of `sig`.
pub fn set_default_action(sig: i32) -> SysResult {
    let act = KernelSigaction::default();
    // SAFETY: act is a valid kernel sigaction (SIG_DFL, no flags, empty mask); no old action.
    unsafe {
        sc!(
            libc::SYS_rt_sigaction,
            sig,
            &act as *const KernelSigaction,
            0,
            8
        )
    }
}

pub fn sigaction_get(sig: i32) -> Result<KernelSigaction, i32> {
    let mut old = KernelSigaction::default();
    // SAFETY: old is a writable kernel sigaction; 8 is the kernel sigset size.
    unsafe {
        sc!(
            libc::SYS_rt_sigaction,
            sig,
            0,
            &mut old as *mut KernelSigaction,
            8
        )
    }
    .map(|_| old)
}

pub fn sigaltstack_get() -> libc::stack_t {
    let mut ss = libc::stack_t {
        ss_sp: core::ptr::null_mut(),
        ss_flags: 0,
        ss_size: 0,
    };
    // SAFETY: ss is a writable stack_t.
    let _ = unsafe { sc!(libc::SYS_sigaltstack, 0, &mut ss as *mut libc::stack_t) };
    ss
}

pub fn prctl(op: i32, a2: usize, a3: usize, a4: usize, a5: usize) -> SysResult {
    // SAFETY: used with PR_GET_TID_ADDRESS (writes one pointer to a2), PR_GET_NAME (16 bytes),
    // PR_SET_NAME (reads a NUL-terminated name at a2) and integer-only options; callers pass
    // matching buffers.
    unsafe { sc!(libc::SYS_prctl, op, a2, a3, a4, a5) }
}

pub fn get_robust_list() -> (u64, u64) {
    let mut head: u64 = 0;
    let mut len: u64 = 0;
    // SAFETY: head and len are writable words.
    let _ = unsafe {
        sc!(
            libc::SYS_get_robust_list,
            0,
            &mut head as *mut u64,
            &mut len as *mut u64
        )
    };
    (head, len)
}

pub fn arch_get_fs() -> u64 {
    let mut fs: u64 = 0;
    // SAFETY: ARCH_GET_FS writes one word.
    let _ = unsafe { sc!(libc::SYS_arch_prctl, 0x1003, &mut fs as *mut u64) };
    fs
}

/// Reaps child `pid` if it exited (`__WCLONE`: our writers do not signal SIGCHLD).
pub fn wait_clone(pid: i32, nohang: bool) -> Result<(i32, i32), i32> {
    let mut status: i32 = 0;
    let flags = libc::__WCLONE | if nohang { libc::WNOHANG } else { 0 };
    // SAFETY: status is a writable int; rusage NULL.
    unsafe { sc!(libc::SYS_wait4, pid, &mut status as *mut i32, flags, 0) }
        .map(|p| (p as i32, status))
}

pub fn clock_ns(clock: i32) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a writable timespec.
    let _ = unsafe {
        sc!(
            libc::SYS_clock_gettime,
            clock,
            &mut ts as *mut libc::timespec
        )
    };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

pub fn exit_group(code: i32) -> ! {
    // SAFETY: ends the process.
    unsafe {
        let _ = sc!(libc::SYS_exit_group, code);
    }
    loop {
        core::hint::spin_loop();
    }
}

pub fn prlimit(resource: u32) -> Result<(u64, u64), i32> {
    let mut lim = [0u64; 2];
    // SAFETY: lim is a writable struct rlimit64.
    unsafe { sc!(libc::SYS_prlimit64, 0, resource, 0, lim.as_mut_ptr()) }.map(|_| (lim[0], lim[1]))
}

pub fn uname() -> libc::utsname {
    // SAFETY: utsname is plain data.
    let mut u: libc::utsname = unsafe { core::mem::zeroed() };
    // SAFETY: u is writable.
    let _ = unsafe { sc!(libc::SYS_uname, &mut u as *mut libc::utsname) };
    u
}

pub fn setpriority_self(nice: i32) {
    // SAFETY: no memory effects.
    let _ = unsafe { sc!(libc::SYS_setpriority, libc::PRIO_PROCESS, 0, nice) };
}

/// Creates a POSIX timer delivering `sig` to the process; returns its id.
pub fn timer_create_signal(clock: i32, sig: i32) -> Result<i32, i32> {
    // SAFETY: sigevent is plain data.
    let mut ev: libc::sigevent = unsafe { core::mem::zeroed() };
    ev.sigev_notify = libc::SIGEV_SIGNAL;
    ev.sigev_signo = sig;
    let mut id: i32 = 0;
    // SAFETY: ev readable, id writable.
    unsafe {
        sc!(
            libc::SYS_timer_create,
            clock,
            &ev as *const libc::sigevent,
            &mut id as *mut i32
        )
    }
    .map(|_| id)
}

pub fn timer_settime_interval(id: i32, interval_ns: u64) -> SysResult {
    let ts = libc::timespec {
        tv_sec: (interval_ns / 1_000_000_000) as i64,
        tv_nsec: (interval_ns % 1_000_000_000) as i64,
    };
    let spec = libc::itimerspec {
        it_interval: ts,
        it_value: ts,
    };
    // SAFETY: spec readable, old value NULL.
    unsafe {
        sc!(
            libc::SYS_timer_settime,
            id,
            0,
            &spec as *const libc::itimerspec,
            0
        )
    }
}

/// Waits while `*word == val`, at most `timeout_ns` (0: no limit). Returns on wake, timeout,
/// signal or value change; callers re-check their condition.
pub fn futex_wait(word: &core::sync::atomic::AtomicU32, val: u32, timeout_ns: u64) {
    futex_wait_op(
        word,
        val,
        timeout_ns,
        libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
    )
}

/// As `futex_wait`, for a thread's CLONE_CHILD_CLEARTID word: the kernel wakes it at the
/// thread's exit with a shared (not private) FUTEX_WAKE, which a private wait never sees
/// (the wait would only end at its timeout).
pub fn futex_wait_tid(word: &core::sync::atomic::AtomicU32, val: u32, timeout_ns: u64) {
    futex_wait_op(word, val, timeout_ns, libc::FUTEX_WAIT)
}

fn futex_wait_op(word: &core::sync::atomic::AtomicU32, val: u32, timeout_ns: u64, op: i32) {
    let ts = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as i64,
        tv_nsec: (timeout_ns % 1_000_000_000) as i64,
    };
    let tsp = if timeout_ns == 0 {
        0
    } else {
        &ts as *const libc::timespec as usize
    };
    // SAFETY: word is a valid aligned u32; FUTEX_WAIT only reads it.
    let _ = unsafe { sc!(libc::SYS_futex, word.as_ptr(), op, val, tsp, 0, 0) };
}

/// As `futex_wait`, on a word in memory shared with other processes (a tree checkpoint's
/// barrier).
pub fn futex_wait_shared(word: &core::sync::atomic::AtomicU32, val: u32, timeout_ns: u64) {
    futex_wait_op(word, val, timeout_ns, libc::FUTEX_WAIT)
}

/// Wakes every waiter on a word shared with other processes.
pub fn futex_wake_shared(word: &core::sync::atomic::AtomicU32) {
    // SAFETY: word is a valid aligned u32.
    let _ = unsafe {
        sc!(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            0,
            0,
            0
        )
    };
}

pub fn futex_wake_all(word: &core::sync::atomic::AtomicU32) {
    // SAFETY: word is a valid aligned u32.
    let _ = unsafe {
        sc!(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
            0,
            0,
            0
        )
    };
}

/// The calling thread's CPU affinity (up to 1024 CPUs).
pub fn sched_getaffinity(mask: &mut [u64; 16]) {
    *mask = [0; 16];
    // SAFETY: mask is 128 writable bytes.
    let _ = unsafe { sc!(libc::SYS_sched_getaffinity, 0, 128, mask.as_mut_ptr()) };
}

/// Thread `tid`'s CPU affinity into `len` bytes at `set`; the bytes the kernel filled.
///
/// # Safety
/// `set` must be `len` writable bytes.
pub unsafe fn sched_getaffinity_of(tid: i32, set: *mut u8, len: usize) -> Result<usize, i32> {
    // SAFETY: caller's contract.
    unsafe { sc!(libc::SYS_sched_getaffinity, tid, len, set) }
}

/// Sets thread `tid`'s CPU affinity from `len` bytes at `set`.
///
/// # Safety
/// `set` must be `len` readable bytes.
pub unsafe fn sched_setaffinity_of(tid: i32, set: *const u8, len: usize) -> SysResult {
    // SAFETY: caller's contract.
    unsafe { sc!(libc::SYS_sched_setaffinity, tid, len, set) }
}

/// The calling thread's scheduling policy and priority.
pub fn sched_get() -> (i32, i32) {
    // SAFETY: no memory effects.
    let policy = unsafe { sc!(libc::SYS_sched_getscheduler, 0) }.unwrap_or(0) as i32;
    let mut prio: i32 = 0;
    // SAFETY: struct sched_param is one int.
    let _ = unsafe { sc!(libc::SYS_sched_getparam, 0, &mut prio as *mut i32) };
    (policy, prio)
}

/// Queues `sig` to this process with `value` as its sigval (si_code SI_QUEUE), as `sigqueue`.
pub fn sigqueue_self(sig: i32, value: u64) -> SysResult {
    // SAFETY: siginfo_t is plain data.
    let mut info: libc::siginfo_t = unsafe { core::mem::zeroed() };
    info.si_signo = sig;
    info.si_code = -1; // SI_QUEUE
                       // SAFETY: the layout of the SI_QUEUE member: si_pid (i32) at 16, si_uid (u32) at 20,
                       // si_value (8 bytes) at 24 on x86-64.
    unsafe {
        let base = &mut info as *mut libc::siginfo_t as *mut u8;
        core::ptr::write_unaligned(base.add(16) as *mut i32, getpid());
        core::ptr::write_unaligned(
            base.add(20) as *mut u32,
            sc!(libc::SYS_getuid).unwrap_or(0) as u32,
        );
        core::ptr::write_unaligned(base.add(24) as *mut u64, value);
    }
    // SAFETY: info is a valid siginfo for this call.
    unsafe {
        sc!(
            libc::SYS_rt_sigqueueinfo,
            getpid(),
            sig,
            &info as *const libc::siginfo_t
        )
    }
}

pub fn pwrite(fd: i32, buf: &[u8], off: u64) -> SysResult {
    // SAFETY: the kernel reads buf.len() bytes from buf.
    unsafe { sc!(libc::SYS_pwrite64, fd, buf.as_ptr(), buf.len(), off) }
}

/// Ends the calling thread only (the other threads of the process go on).
pub fn exit_thread() -> ! {
    // SAFETY: ends this thread; its stack is not freed by the kernel.
    unsafe {
        let _ = sc!(libc::SYS_exit, 0);
    }
    loop {
        core::hint::spin_loop();
    }
}

/// Number of CPUs this thread may run on.
pub fn cpu_count() -> usize {
    let mut mask = [0u64; 16];
    sched_getaffinity(&mut mask);
    mask.iter()
        .map(|w| w.count_ones() as usize)
        .sum::<usize>()
        .max(1)
}

pub fn getsockopt_int(fd: i32, level: i32, name: i32) -> Result<i32, i32> {
    let mut v: i32 = 0;
    let mut len: u32 = 4;
    // SAFETY: v and len are writable and sized for an int option.
    unsafe {
        sc!(
            libc::SYS_getsockopt,
            fd,
            level,
            name,
            &mut v as *mut i32,
            &mut len as *mut u32
        )
    }
    .map(|_| v)
}

/// `getsockname` (or `getpeername` with `peer`), as raw sockaddr bytes (empty on error).
pub fn sockname(fd: i32, peer: bool) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let mut len: u32 = 128;
    let nr = if peer {
        libc::SYS_getpeername
    } else {
        libc::SYS_getsockname
    };
    // SAFETY: buf and len are writable; the kernel writes at most len bytes.
    match unsafe { sc!(nr, fd, buf.as_mut_ptr(), &mut len as *mut u32) } {
        Ok(_) => buf[..(len as usize).min(128)].to_vec(),
        Err(_) => Vec::new(),
    }
}

/// Reads queued bytes without consuming them.
pub fn recv_peek(fd: i32, buf: &mut [u8]) -> SysResult {
    // SAFETY: at most buf.len() bytes written; no address.
    unsafe {
        sc!(
            libc::SYS_recvfrom,
            fd,
            buf.as_mut_ptr(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
            0,
            0
        )
    }
}

pub fn pipe2(flags: i32) -> Result<(i32, i32), i32> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is two writable ints.
    unsafe { sc!(libc::SYS_pipe2, fds.as_mut_ptr(), flags) }.map(|_| (fds[0], fds[1]))
}

/// Copies up to `len` bytes from pipe `from` to pipe `to` without consuming them.
pub fn tee(from: i32, to: i32, len: usize) -> SysResult {
    // SAFETY: no memory arguments.
    unsafe { sc!(libc::SYS_tee, from, to, len, libc::SPLICE_F_NONBLOCK) }
}

/// Unix socket inode -> peer inode, for every unix socket (NETLINK_SOCK_DIAG).
pub fn unix_socket_peers() -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    // SAFETY: creating a socket has no memory effects.
    let Ok(nl) = (unsafe {
        sc!(
            libc::SYS_socket,
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            4
        )
    }) else {
        return out; // NETLINK_SOCK_DIAG = 4
    };
    let nl = nl as i32;
    // nlmsghdr (16) + unix_diag_req (24).
    let mut req = [0u8; 40];
    req[0..4].copy_from_slice(&40u32.to_le_bytes());
    req[4..6].copy_from_slice(&20u16.to_le_bytes()); // SOCK_DIAG_BY_FAMILY
    req[6..8].copy_from_slice(&(0x1u16 | 0x300).to_le_bytes()); // NLM_F_REQUEST | NLM_F_DUMP
    req[8..12].copy_from_slice(&1u32.to_le_bytes());
    req[16] = libc::AF_UNIX as u8;
    req[20..24].copy_from_slice(&u32::MAX.to_le_bytes()); // all states
    req[28..32].copy_from_slice(&4u32.to_le_bytes()); // UDIAG_SHOW_PEER
    let mut addr: libc::sockaddr_nl = unsafe_zeroed_nl();
    addr.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: req and addr are valid for their lengths.
    let sent = unsafe {
        sc!(
            libc::SYS_sendto,
            nl,
            req.as_ptr(),
            req.len(),
            0,
            &addr as *const libc::sockaddr_nl,
            core::mem::size_of::<libc::sockaddr_nl>()
        )
    };
    if sent.is_err() {
        close(nl);
        return out;
    }
    let mut buf = vec![0u8; 64 << 10];
    'recv: loop {
        let n = match read(nl, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut off = 0usize;
        while off + 16 <= n {
            let len =
                u32::from_le_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
            let ty = u16::from_le_bytes([buf[off + 4], buf[off + 5]]);
            if len < 16 || off + len > n {
                break;
            }
            if ty == 3 || ty == 2 {
                break 'recv; // NLMSG_DONE, NLMSG_ERROR
            }
            // unix_diag_msg: family, type, state, pad, ino (u32 at 4), cookie (8): 16 bytes.
            let msg = off + 16;
            if msg + 16 <= off + len {
                let ino =
                    u32::from_le_bytes([buf[msg + 4], buf[msg + 5], buf[msg + 6], buf[msg + 7]])
                        as u64;
                let mut peer = 0u64;
                let mut a = msg + 16;
                while a + 4 <= off + len {
                    let alen = u16::from_le_bytes([buf[a], buf[a + 1]]) as usize;
                    let aty = u16::from_le_bytes([buf[a + 2], buf[a + 3]]);
                    if alen < 4 {
                        break;
                    }
                    if aty == 2 && alen >= 8 {
                        peer = u32::from_le_bytes([buf[a + 4], buf[a + 5], buf[a + 6], buf[a + 7]])
                            as u64;
                    }
                    a += (alen + 3) & !3;
                }
                out.push((ino, peer));
            }
            off += (len + 3) & !3;
        }
    }
    close(nl);
    out
}

fn unsafe_zeroed_nl() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain data; all-zero is valid.
    unsafe { core::mem::zeroed() }
}

fn timespec_ns(ts: &libc::timespec) -> u64 {
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// getitimer(which): (value, interval) in ns.
pub fn getitimer(which: i32) -> (u64, u64) {
    let mut it = [0i64; 4];
    // SAFETY: struct itimerval is four longs.
    let _ = unsafe { sc!(libc::SYS_getitimer, which, it.as_mut_ptr()) };
    (
        (it[2] as u64) * 1_000_000_000 + (it[3] as u64) * 1000,
        (it[0] as u64) * 1_000_000_000 + (it[1] as u64) * 1000,
    )
}

/// timer_gettime(id): (value, interval) in ns.
pub fn timer_gettime(id: i32) -> Result<(u64, u64), i32> {
    // SAFETY: itimerspec is plain data.
    let mut spec: libc::itimerspec = unsafe { core::mem::zeroed() };
    // SAFETY: spec is writable.
    unsafe {
        sc!(
            libc::SYS_timer_gettime,
            id,
            &mut spec as *mut libc::itimerspec
        )
    }
    .map(|_| (timespec_ns(&spec.it_value), timespec_ns(&spec.it_interval)))
}

/// Whether the open file description of `fd` itself holds an OFD lock over the range (asking
/// through it shows no conflicting lock).
pub fn ofd_lock_is_ours(fd: i32, write: bool, start: u64, len: u64) -> bool {
    // SAFETY: flock is plain data.
    let mut fl: libc::flock = unsafe { core::mem::zeroed() };
    fl.l_type = if write { libc::F_WRLCK } else { libc::F_RDLCK } as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start as i64;
    fl.l_len = len as i64;
    // SAFETY: fl is a writable struct flock.
    let r = unsafe {
        sc!(
            libc::SYS_fcntl,
            fd,
            libc::F_OFD_GETLK,
            &mut fl as *mut libc::flock
        )
    };
    r.is_ok() && fl.l_type == libc::F_UNLCK as i16
}

/// Starts writeback of a file range (no waiting): SYNC_FILE_RANGE_WRITE.
pub fn sync_file_range_start(fd: i32, off: u64, len: u64) {
    // SAFETY: no memory arguments.
    let _ = unsafe {
        sc!(
            libc::SYS_sync_file_range,
            fd,
            off,
            len,
            libc::SYNC_FILE_RANGE_WRITE
        )
    };
}

/// The events ready on `fd` right now (poll with a zero timeout).
pub fn poll_now(fd: i32) -> i16 {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    match unsafe { sc!(libc::SYS_poll, &mut p as *mut libc::pollfd, 1, 0) } {
        Ok(_) => p.revents,
        Err(_) => 0,
    }
}

/// Bytes waiting to be read on a socket or pipe (FIONREAD).
pub fn bytes_queued(fd: i32) -> i32 {
    let mut n: i32 = 0;
    // SAFETY: FIONREAD writes one int.
    match unsafe { sc!(libc::SYS_ioctl, fd, libc::FIONREAD, &mut n as *mut i32) } {
        Ok(_) => n,
        Err(_) => 0,
    }
}

/// Signals pending for the calling thread or its process.
pub fn sigpending() -> u64 {
    let mut set: u64 = 0;
    // SAFETY: an 8-byte kernel sigset.
    let _ = unsafe { sc!(libc::SYS_rt_sigpending, &mut set as *mut u64, 8) };
    set
}

/// `struct procmap_query` (linux/fs.h, kernel 6.11+).
#[repr(C)]
#[derive(Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

/// `_IOWR('f', 17, struct procmap_query)`.
const PROCMAP_QUERY: usize = 0xC068_6611;
pub const PROCMAP_QUERY_VMA_READABLE: u64 = 0x01;
pub const PROCMAP_QUERY_VMA_WRITABLE: u64 = 0x02;
pub const PROCMAP_QUERY_VMA_SHARED: u64 = 0x08;
const PROCMAP_QUERY_COVERING_OR_NEXT_VMA: u64 = 0x10;

/// A mapping found by `procmap_next`: (start, end, inode), its name in the caller's buffer.
pub struct VmaFound {
    pub start: u64,
    pub end: u64,
    pub inode: u64,
    pub name_len: usize,
    /// PROCMAP_QUERY_VMA_* permissions.
    pub flags: u64,
}

/// The first mapping at or above `addr` whose permissions include all of `flags`
/// (PROCMAP_QUERY_VMA_*), asked of an open `/proc/self/maps` without generating its text.
/// Ok(None): there is none; Err(ENOTTY/EINVAL): the kernel predates the query (before 6.11).
pub fn procmap_next(
    maps_fd: i32,
    addr: u64,
    flags: u64,
    name: &mut [u8],
) -> Result<Option<VmaFound>, i32> {
    let mut q = ProcmapQuery {
        size: core::mem::size_of::<ProcmapQuery>() as u64,
        query_flags: flags | PROCMAP_QUERY_COVERING_OR_NEXT_VMA,
        query_addr: addr,
        vma_name_size: name.len().min(u32::MAX as usize) as u32,
        vma_name_addr: name.as_mut_ptr() as u64,
        ..Default::default()
    };
    let qp = &mut q as *mut ProcmapQuery;
    // SAFETY: the kernel reads and writes `q` (its size is in q.size) and writes at most
    // vma_name_size bytes of the name into `name`.
    let mut r = unsafe { sc!(libc::SYS_ioctl, maps_fd, PROCMAP_QUERY, qp) };
    if r == Err(libc::ENAMETOOLONG) {
        // A name longer than the buffer: the mapping without its name (name_len 0).
        q.vma_name_size = 0;
        q.vma_name_addr = 0;
        let qp = &mut q as *mut ProcmapQuery;
        // SAFETY: as above, with no name asked for.
        r = unsafe { sc!(libc::SYS_ioctl, maps_fd, PROCMAP_QUERY, qp) };
    }
    match r {
        Ok(_) => Ok(Some(VmaFound {
            start: q.vma_start,
            end: q.vma_end,
            inode: q.inode,
            flags: q.vma_flags,
            // The size includes the terminating NUL.
            name_len: (q.vma_name_size as usize).saturating_sub(1).min(name.len()),
        })),
        Err(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `getauxval(type)` (0 when absent).
pub fn getauxval(kind: u64) -> u64 {
    // SAFETY: getauxval has no preconditions (it reads the auxiliary vector glibc saved).
    unsafe { libc::getauxval(kind) }
}

/// A fresh private anonymous read-write mapping of `len` bytes at a kernel-chosen address,
/// reserved lazily (MAP_NORESERVE): its start.
pub fn map_anonymous(len: usize) -> SysResult {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    // SAFETY: no MAP_FIXED: the kernel picks a free range, nothing existing is replaced.
    unsafe { mmap(0, len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) }
}

/// A short text for an errno the checkpoint reports (no allocation).
pub fn errno_text(e: i32) -> &'static str {
    match e {
        libc::ENOENT => "no such file or directory",
        libc::EACCES => "permission denied",
        libc::ENOSPC => "no space left on device",
        libc::EDQUOT => "disk quota exceeded",
        libc::EROFS => "read-only file system",
        libc::EEXIST => "file exists",
        libc::ENOTDIR => "not a directory",
        libc::EIO => "input/output error",
        libc::ELOOP => "too many symbolic links (refusing to follow one)",
        libc::EFBIG => "file too large",
        _ => "system error",
    }
}

/// Whether this process has children of its own (forked or spawned; not the library's
/// writers, whose exit signal is not SIGCHLD), without reaping any: `waitid` with WNOWAIT
/// fails with ECHILD only when there are none.
pub fn has_children() -> bool {
    let mut info = [0u64; 16];
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: info is a 128-byte siginfo the kernel fills; rusage NULL.
    let r = unsafe {
        sc!(
            libc::SYS_waitid,
            libc::P_ALL,
            0,
            info.as_mut_ptr(),
            flags,
            0
        )
    };
    r != Err(libc::ECHILD)
}

/// Where a spawned helper's stdout and stderr go.
pub enum HelperOutput<'a> {
    /// Both to this file (NUL-terminated path), truncated.
    File(&'a [u8]),
    /// Both to our stderr.
    Stderr,
}

/// The name (comm) of the process between us and a helper program: the tree listing
/// leaves it out, as it does the writers.
pub const HELPER_COMM: &[u8] = b"fp-coordinator\0";

/// Starts program `path` with `argv` and `envp` (NUL-terminated strings, each array ending
/// in 0) under a child of ours whose exit is announced with `exit_signal` (not SIGCHLD: the
/// application's `wait` and SIGCHLD never see it) and whose exit status is the program's
/// (128 + N if it was killed by signal N). The program cannot be our child itself: an exec
/// makes a child's exit signal SIGCHLD again. Its stdin is /dev/null, its other descriptors
/// closed, its signal mask empty. Like fork: the child is a copy of this process, which
/// blocks every signal (the application's handlers are in it) and runs nothing but the
/// raw syscalls below.
pub fn spawn_helper(
    path: &[u8],
    argv: &[usize],
    envp: &[usize],
    output: HelperOutput,
    exit_signal: i32,
) -> Result<i32, i32> {
    if argv.last() != Some(&0) || envp.last() != Some(&0) {
        return Err(libc::EINVAL);
    }
    let path = cstr(path);
    let out_path = match output {
        HelperOutput::File(p) => Some(cstr(p)),
        HelperOutput::Stderr => None,
    };
    let all: u64 = !0;
    let none: u64 = 0;
    let old = sigmask_set(libc::SIG_SETMASK, all);
    // SAFETY: clone without CLONE_VM and with no new stack is fork: the child has its own
    // copy of this stack and memory and only makes syscalls before exec or exit.
    let pid = unsafe { sc!(libc::SYS_clone, exit_signal as usize & 0xff, 0, 0, 0, 0) };
    if !matches!(pid, Ok(0)) {
        sigmask_set(libc::SIG_SETMASK, old);
        return pid.map(|p| p as i32);
    }
    // The helper: nothing here returns.
    let _ = prctl(libc::PR_SET_NAME, HELPER_COMM.as_ptr() as usize, 0, 0, 0);
    // SAFETY: as above (fork).
    let program = unsafe { sc!(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
    if program == Ok(0) {
        // SAFETY: raw syscalls on this process's own descriptors and mask; the strings and
        // arrays are NUL-/zero-terminated (checked above); exit_group ends it if exec fails.
        unsafe {
            if let Ok(null) = sc!(libc::SYS_open, c"/dev/null".as_ptr(), libc::O_RDWR, 0) {
                let _ = sc!(libc::SYS_dup2, null, 0);
            }
            match out_path {
                Some(p) => {
                    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC;
                    if let Ok(fd) = sc!(libc::SYS_open, p, flags, 0o600) {
                        let _ = sc!(libc::SYS_dup2, fd, 1);
                        let _ = sc!(libc::SYS_dup2, fd, 2);
                    }
                }
                None => {
                    let _ = sc!(libc::SYS_dup2, 2, 1);
                }
            }
            let _ = sc!(libc::SYS_close_range, 3, u32::MAX, 0);
            let _ = sc!(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &none as *const u64,
                0,
                8
            );
            let _ = sc!(libc::SYS_execve, path, argv.as_ptr(), envp.as_ptr());
        }
        exit_group(127);
    }
    let Ok(program) = program else {
        exit_group(126)
    };
    // SAFETY: closes this process's own descriptors (the program has its copies).
    let _ = unsafe { sc!(libc::SYS_close_range, 0, u32::MAX, 0) };
    let mut status: i32 = 0;
    loop {
        // SAFETY: status is a writable int; rusage NULL.
        match unsafe { sc!(libc::SYS_wait4, program, &mut status as *mut i32, 0, 0) } {
            Err(libc::EINTR) => continue,
            Ok(_) if libc::WIFEXITED(status) => exit_group(libc::WEXITSTATUS(status)),
            Ok(_) if libc::WIFSIGNALED(status) => exit_group(128 + libc::WTERMSIG(status)),
            _ => exit_group(126),
        }
    }
}

/// One range of the `PAGEMAP_SCAN` ioctl's output (`struct page_region`).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `_IOWR('f', 16, struct pm_scan_arg)` (Linux 6.7).
const PAGEMAP_SCAN: usize = 0xC060_6610;
/// Write-protect (re-arm) the pages the scan reports.
pub const PM_SCAN_WP_MATCHING: u64 = 1;
pub const PAGE_IS_WPALLOWED: u64 = 1;
pub const PAGE_IS_WRITTEN: u64 = 2;

/// `PAGEMAP_SCAN` on an open `/proc/self/pagemap`: the ranges of `[start, end)` whose pages
/// have all of `category_mask`, into `out` (at most `max_pages` pages, 0: no limit).
/// Returns how many ranges were filled and where the walk stopped.
pub fn pagemap_scan(
    pagemap_fd: i32,
    start: u64,
    end: u64,
    flags: u64,
    category_mask: u64,
    out: &mut [PageRegion],
    max_pages: u64,
) -> Result<(usize, u64), i32> {
    let mut a = PmScanArg {
        size: core::mem::size_of::<PmScanArg>() as u64,
        flags,
        start,
        end,
        vec: out.as_mut_ptr() as u64,
        vec_len: out.len() as u64,
        max_pages,
        category_mask,
        return_mask: category_mask,
        ..Default::default()
    };
    let ap = &mut a as *mut PmScanArg;
    // SAFETY: the kernel reads `a` and writes at most vec_len regions into `out`.
    let n = unsafe { sc!(libc::SYS_ioctl, pagemap_fd, PAGEMAP_SCAN, ap) }?;
    Ok((n.min(out.len()), a.walk_end))
}

const UFFD_USER_MODE_ONLY: usize = 1;
const UFFDIO_API: usize = 0xC018_AA3F;
const UFFDIO_REGISTER: usize = 0xC020_AA00;
const UFFD_API: u64 = 0xAA;
const UFFDIO_REGISTER_MODE_WP: u64 = 2;
/// Write-protect faults resolved by the kernel itself: a write only clears the page's
/// protection (which `PAGEMAP_SCAN` reads as written), the writer never waits.
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// Pages not yet populated are protected too (needed for `PM_SCAN_WP_MATCHING` on anonymous
/// memory).
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;

/// A userfaultfd with `features` (O_CLOEXEC | O_NONBLOCK), trying user-mode-only faults when
/// the kernel refuses the full kind (unprivileged with `vm.unprivileged_userfaultfd = 0`;
/// write-protect tracking needs no kernel faults).
pub fn userfaultfd_with(features: u64) -> Result<i32, i32> {
    let base = (libc::O_CLOEXEC | libc::O_NONBLOCK) as usize;
    // SAFETY: userfaultfd takes flags only.
    let fd = match unsafe { sc!(libc::SYS_userfaultfd, base) } {
        Ok(fd) => fd as i32,
        Err(libc::EPERM) => {
            // SAFETY: as above.
            let fd = unsafe { sc!(libc::SYS_userfaultfd, base | UFFD_USER_MODE_ONLY) }?;
            fd as i32
        }
        Err(e) => return Err(e),
    };
    let mut api = [UFFD_API, features, 0u64];
    let ap = api.as_mut_ptr();
    // SAFETY: struct uffdio_api is three u64s, read and written by the kernel.
    if let Err(e) = unsafe { sc!(libc::SYS_ioctl, fd, UFFDIO_API, ap) } {
        close(fd);
        return Err(e);
    }
    if api[1] & features != features {
        close(fd);
        return Err(libc::ENOSYS);
    }
    Ok(fd)
}

/// Registers `[start, start + len)` with `uffd` for write-protect tracking.
pub fn uffd_register_wp(uffd: i32, start: u64, len: u64) -> Result<(), i32> {
    let mut reg = [start, len, UFFDIO_REGISTER_MODE_WP, 0u64];
    let rp = reg.as_mut_ptr();
    // SAFETY: struct uffdio_register is range (2 u64), mode, ioctls: read and written.
    unsafe { sc!(libc::SYS_ioctl, uffd, UFFDIO_REGISTER, rp) }.map(|_| ())
}

/// `fcntl(fd, F_DUPFD_CLOEXEC, min)`: a copy of `fd` at `min` or above.
pub fn dup_cloexec_above(fd: i32, min: i32) -> Result<i32, i32> {
    fcntl(fd, libc::F_DUPFD_CLOEXEC, min as usize).map(|n| n as i32)
}
