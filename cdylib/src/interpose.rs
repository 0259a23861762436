//! Keeping the checkpoint signal deliverable whatever the application does with signals.
//!
//! Programs block every signal in worker threads, install handlers for every signal, or
//! wait for signals synchronously; any of these would make a checkpoint time out or steal its
//! signal. The functions here replace glibc's (the library is preloaded, so its definitions
//! win) and keep the library's signal out of the kernel's view of what the application does,
//! while the application sees exactly what it asked for:
//!
//! - masks (`sigprocmask`, `pthread_sigmask`): the checkpoint signal is never blocked in the
//!   kernel; whether the application *asked* to block it is kept per thread and reported back
//!   in every old mask;
//! - dispositions (`sigaction`, `signal`, `bsd_signal`, `sysv_signal`): an application handler
//!   for the checkpoint signal is recorded and reported back, never installed (choose another
//!   `FORKPOINT_SIGNAL` if the application really uses that signal);
//! - waiting (`sigsuspend`, `sigwait`, `sigwaitinfo`, `sigtimedwait`, `signalfd`): the
//!   checkpoint signal is taken out of the set, so it is handled, not consumed.
//!
//! These run in normal application context (and possibly in the application's own signal
//! handlers, where glibc's versions are async-signal-safe too): they use raw syscalls, a
//! thread-local flag and a lock-free pointer to the next definition (`dlsym(RTLD_NEXT)`,
//! resolved on first use).

use core::cell::Cell;
use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use crate::state::RUNTIME;
use crate::sys;

thread_local! {
    /// Whether this thread's application code asked to block the checkpoint signal.
    static APP_BLOCKS: Cell<bool> = const { Cell::new(false) };
}

/// An action the application set for a signal the library handles itself, recorded as it
/// set it and reported back, never installed.
pub struct VirtualAction {
    pub handler: AtomicU64,
    pub flags: AtomicU64,
    pub mask: AtomicU64,
}

impl VirtualAction {
    const fn new() -> VirtualAction {
        VirtualAction {
            handler: AtomicU64::new(0),
            flags: AtomicU64::new(0),
            mask: AtomicU64::new(0),
        }
    }
}

/// The application's action for the checkpoint signal.
static VIRTUAL_OURS: VirtualAction = VirtualAction::new();
/// The application's action for SIGTERM while the library checkpoints on it (`on_term`).
pub static VIRTUAL_TERM: VirtualAction = VirtualAction::new();
/// Whether SIGTERM is the library's (set once at init, before the handler is installed).
pub static TERM_IS_OURS: AtomicBool = AtomicBool::new(false);

fn virtual_action(sig: c_int) -> Option<&'static VirtualAction> {
    if sig != 0 && sig == our_signal() {
        Some(&VIRTUAL_OURS)
    } else if sig == libc::SIGTERM && TERM_IS_OURS.load(Ordering::SeqCst) {
        Some(&VIRTUAL_TERM)
    } else {
        None
    }
}

/// glibc-internal signals (SIGCANCEL, SIGSETXID) that glibc never lets the application block.
const GLIBC_INTERNAL: u64 = (1 << 31) | (1 << 32);

fn our_bit() -> u64 {
    match RUNTIME.get() {
        Some(rt) => 1u64 << (rt.config.signal - 1),
        None => 0,
    }
}

fn our_signal() -> c_int {
    RUNTIME.get().map_or(0, |rt| rt.config.signal)
}

/// `dlsym(RTLD_NEXT, name)`, cached.
pub(crate) fn next_fn(slot: &AtomicPtr<c_void>, name: &core::ffi::CStr) -> *mut c_void {
    let p = slot.load(Ordering::Acquire);
    if !p.is_null() {
        return p;
    }
    // SAFETY: name is NUL-terminated; RTLD_NEXT finds glibc's definition after ours.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    slot.store(p, Ordering::Release);
    p
}

fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno.
    unsafe { *libc::__errno_location() = e };
}

/// Reads the first 64 signals of a sigset (what the kernel uses on x86-64).
///
/// # Safety
/// `set` must be null or point to a sigset_t.
unsafe fn read_set(set: *const libc::sigset_t) -> Option<u64> {
    // SAFETY: caller's contract; sigset_t is at least 8 bytes.
    (!set.is_null()).then(|| unsafe { core::ptr::read_unaligned(set as *const u64) })
}

/// Applies `how`/`set` to the thread's mask, keeping the checkpoint signal unblocked in the
/// kernel and remembering whether the application wanted it blocked. Returns 0 or an errno.
///
/// # Safety
/// `set` null or a valid sigset_t; `old` null or writable sigset_t.
unsafe fn mask_op(how: c_int, set: *const libc::sigset_t, old: *mut libc::sigset_t) -> c_int {
    let bit = our_bit();
    let before = APP_BLOCKS.with(Cell::get);
    // SAFETY: caller's contract.
    let requested = unsafe { read_set(set) };
    let mut kernel_old: u64 = 0;
    let r = match requested {
        Some(s) => {
            let (blocks, s) = match how {
                libc::SIG_BLOCK => (before || s & bit != 0, s & !bit & !GLIBC_INTERNAL),
                libc::SIG_UNBLOCK => (before && s & bit == 0, s),
                libc::SIG_SETMASK => (s & bit != 0, s & !bit & !GLIBC_INTERNAL),
                _ => return libc::EINVAL,
            };
            // SAFETY: 8-byte kernel sigsets.
            let r = unsafe {
                sys::syscall6(
                    libc::SYS_rt_sigprocmask,
                    how as usize,
                    &s as *const u64 as usize,
                    &mut kernel_old as *mut u64 as usize,
                    8,
                    0,
                    0,
                )
            };
            if r == 0 {
                APP_BLOCKS.with(|c| c.set(blocks));
            }
            r
        }
        None => {
            // SAFETY: 8-byte kernel sigset.
            unsafe {
                sys::syscall6(
                    libc::SYS_rt_sigprocmask,
                    how as usize,
                    0,
                    &mut kernel_old as *mut u64 as usize,
                    8,
                    0,
                    0,
                )
            }
        }
    };
    if r < 0 {
        return (-r) as c_int;
    }
    if !old.is_null() {
        let shown = if before {
            kernel_old | bit
        } else {
            kernel_old & !bit
        };
        // SAFETY: old is a writable sigset_t (at least 8 bytes).
        unsafe { core::ptr::write_unaligned(old as *mut u64, shown) };
    }
    0
}

/// # Safety
/// As `pthread_sigmask(3)`.
#[no_mangle]
pub unsafe extern "C" fn pthread_sigmask(
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> c_int {
    // SAFETY: the caller's contract is pthread_sigmask's.
    unsafe { mask_op(how, set, old) }
}

/// # Safety
/// As `sigprocmask(2)`.
#[no_mangle]
pub unsafe extern "C" fn sigprocmask(
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> c_int {
    // SAFETY: the caller's contract is sigprocmask's.
    match unsafe { mask_op(how, set, old) } {
        0 => 0,
        e => {
            set_errno(e);
            -1
        }
    }
}

static NEXT_SIGACTION: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
type SigactionFn =
    unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int;

/// # Safety
/// As `sigaction(2)`.
#[no_mangle]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    if let Some(v) = virtual_action(sig) {
        if !old.is_null() {
            // SAFETY: old is a writable struct sigaction.
            unsafe {
                core::ptr::write_bytes(old, 0, 1);
                (*old).sa_sigaction = v.handler.load(Ordering::SeqCst) as usize;
                (*old).sa_flags = v.flags.load(Ordering::SeqCst) as c_int;
                core::ptr::write_unaligned(
                    &mut (*old).sa_mask as *mut libc::sigset_t as *mut u64,
                    v.mask.load(Ordering::SeqCst),
                );
            }
        }
        if !act.is_null() {
            // SAFETY: act is a readable struct sigaction.
            unsafe {
                v.handler
                    .store((*act).sa_sigaction as u64, Ordering::SeqCst);
                v.flags.store((*act).sa_flags as u64, Ordering::SeqCst);
                v.mask.store(
                    core::ptr::read_unaligned(
                        &(*act).sa_mask as *const libc::sigset_t as *const u64,
                    ),
                    Ordering::SeqCst,
                );
            }
        }
        return 0;
    }
    let f = next_fn(&NEXT_SIGACTION, c"sigaction");
    if f.is_null() {
        set_errno(libc::ENOSYS);
        return -1;
    }
    // SAFETY: f is glibc's sigaction, same signature.
    unsafe { core::mem::transmute::<*mut c_void, SigactionFn>(f)(sig, act, old) }
}

/// glibc's own `sigaction`, for the library's handler (ours would only record it).
///
/// # Safety
/// As `sigaction(2)`.
pub unsafe fn real_sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    let f = next_fn(&NEXT_SIGACTION, c"sigaction");
    if f.is_null() {
        return -1;
    }
    // SAFETY: f is glibc's sigaction, same signature.
    unsafe { core::mem::transmute::<*mut c_void, SigactionFn>(f)(sig, act, old) }
}

/// `signal`-style installation through our `sigaction` (BSD semantics, as glibc's `signal`).
fn install_simple(sig: c_int, handler: libc::sighandler_t, flags: c_int) -> libc::sighandler_t {
    // SAFETY: zeroed sigaction is a valid "SIG_DFL, empty mask" value.
    let mut act: libc::sigaction = unsafe { core::mem::zeroed() };
    act.sa_sigaction = handler;
    act.sa_flags = flags;
    // SAFETY: zeroed sigaction is valid.
    let mut old: libc::sigaction = unsafe { core::mem::zeroed() };
    // SAFETY: both point to valid structs.
    if unsafe { sigaction(sig, &act, &mut old) } != 0 {
        return libc::SIG_ERR;
    }
    old.sa_sigaction
}

/// # Safety
/// As `signal(2)`.
#[no_mangle]
pub unsafe extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    install_simple(sig, handler, libc::SA_RESTART)
}

/// # Safety
/// As `bsd_signal(3)`.
#[no_mangle]
pub unsafe extern "C" fn bsd_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    install_simple(sig, handler, libc::SA_RESTART)
}

/// # Safety
/// As `sysv_signal(3)`.
#[no_mangle]
pub unsafe extern "C" fn sysv_signal(
    sig: c_int,
    handler: libc::sighandler_t,
) -> libc::sighandler_t {
    install_simple(sig, handler, libc::SA_RESETHAND | libc::SA_NODEFER)
}

/// A copy of `set` without the checkpoint signal.
///
/// # Safety
/// `set` must point to a sigset_t.
unsafe fn without_ours(set: *const libc::sigset_t) -> libc::sigset_t {
    // SAFETY: caller's contract.
    let mut copy = unsafe { core::ptr::read(set) };
    let sig = our_signal();
    if sig != 0 {
        // SAFETY: copy is a valid sigset_t.
        unsafe { libc::sigdelset(&mut copy, sig) };
    }
    copy
}

static NEXT_SIGSUSPEND: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
static NEXT_SIGWAIT: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
static NEXT_SIGWAITINFO: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
static NEXT_SIGTIMEDWAIT: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
static NEXT_SIGNALFD: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());

macro_rules! call_next {
    ($slot:expr, $name:expr, $ty:ty, $($arg:expr),*) => {{
        let f = next_fn(&$slot, $name);
        if f.is_null() {
            set_errno(libc::ENOSYS);
            return -1;
        }
        // SAFETY: f is glibc's definition of the same function.
        unsafe { core::mem::transmute::<*mut c_void, $ty>(f)($($arg),*) }
    }};
}

/// # Safety
/// As `sigsuspend(2)`.
#[no_mangle]
pub unsafe extern "C" fn sigsuspend(mask: *const libc::sigset_t) -> c_int {
    if mask.is_null() {
        set_errno(libc::EFAULT);
        return -1;
    }
    // SAFETY: mask is a sigset_t per the caller's contract.
    let m = unsafe { without_ours(mask) };
    call_next!(
        NEXT_SIGSUSPEND,
        c"sigsuspend",
        unsafe extern "C" fn(*const libc::sigset_t) -> c_int,
        &m
    )
}

/// # Safety
/// As `sigwait(3)`.
#[no_mangle]
pub unsafe extern "C" fn sigwait(set: *const libc::sigset_t, sig: *mut c_int) -> c_int {
    if set.is_null() {
        return libc::EFAULT;
    }
    // SAFETY: set is a sigset_t per the caller's contract.
    let s = unsafe { without_ours(set) };
    call_next!(
        NEXT_SIGWAIT,
        c"sigwait",
        unsafe extern "C" fn(*const libc::sigset_t, *mut c_int) -> c_int,
        &s,
        sig
    )
}

/// # Safety
/// As `sigwaitinfo(2)`.
#[no_mangle]
pub unsafe extern "C" fn sigwaitinfo(
    set: *const libc::sigset_t,
    info: *mut libc::siginfo_t,
) -> c_int {
    if set.is_null() {
        set_errno(libc::EFAULT);
        return -1;
    }
    // SAFETY: set is a sigset_t per the caller's contract.
    let s = unsafe { without_ours(set) };
    call_next!(
        NEXT_SIGWAITINFO,
        c"sigwaitinfo",
        unsafe extern "C" fn(*const libc::sigset_t, *mut libc::siginfo_t) -> c_int,
        &s,
        info
    )
}

/// # Safety
/// As `sigtimedwait(2)`.
#[no_mangle]
pub unsafe extern "C" fn sigtimedwait(
    set: *const libc::sigset_t,
    info: *mut libc::siginfo_t,
    timeout: *const libc::timespec,
) -> c_int {
    if set.is_null() {
        set_errno(libc::EFAULT);
        return -1;
    }
    // SAFETY: set is a sigset_t per the caller's contract.
    let s = unsafe { without_ours(set) };
    call_next!(
        NEXT_SIGTIMEDWAIT,
        c"sigtimedwait",
        unsafe extern "C" fn(
            *const libc::sigset_t,
            *mut libc::siginfo_t,
            *const libc::timespec,
        ) -> c_int,
        &s,
        info,
        timeout
    )
}

/// # Safety
/// As `signalfd(2)`.
#[no_mangle]
pub unsafe extern "C" fn signalfd(fd: c_int, mask: *const libc::sigset_t, flags: c_int) -> c_int {
    if mask.is_null() {
        set_errno(libc::EFAULT);
        return -1;
    }
    // SAFETY: mask is a sigset_t per the caller's contract.
    let m = unsafe { without_ours(mask) };
    call_next!(
        NEXT_SIGNALFD,
        c"signalfd",
        unsafe extern "C" fn(c_int, *const libc::sigset_t, c_int) -> c_int,
        fd,
        &m,
        flags
    )
}

/// Set once the application gives any fork advice (MADV_DONTFORK, MADV_WIPEONFORK or their
/// undo): from then on each checkpoint reads the advised ranges from /proc/self/smaps and
/// lifts the advice around its fork, so the writer child sees that memory. Programs that never
/// advise (most) pay nothing. Tracking the ranges here instead cannot be exact: the advice
/// moves with `mremap`, shrinks with a partial `munmap` and vanishes under `mmap(MAP_FIXED)`.
pub static FORK_ADVICE_SEEN: AtomicBool = AtomicBool::new(false);

/// # Safety
/// As `madvise(2)`.
#[no_mangle]
pub unsafe extern "C" fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int {
    if matches!(
        advice,
        libc::MADV_DONTFORK | libc::MADV_WIPEONFORK | libc::MADV_DOFORK | libc::MADV_KEEPONFORK
    ) {
        // Before the call: a checkpoint that stops this thread just after it must scan.
        FORK_ADVICE_SEEN.store(true, Ordering::SeqCst);
    }
    // SAFETY: the caller's contract is madvise's.
    let r = unsafe {
        sys::syscall6(
            libc::SYS_madvise,
            addr as usize,
            len,
            advice as usize,
            0,
            0,
            0,
        )
    };
    if r < 0 {
        set_errno((-r) as c_int);
        return -1;
    }
    0
}

/// The window of an `execve`: between the kernel replacing the program and the new
/// program's library installing its handler, the checkpoint signal would kill it (its
/// default action). The exec wrappers block it (the mask survives exec) and the library's
/// init unblocks it once its handler is in place; a failed exec unblocks it again. (Calls
/// glibc makes internally, e.g. from `execl`, are not seen here; `posix_spawn` is guarded
/// below.)
fn exec_guarded(f: impl FnOnce() -> c_int) -> c_int {
    let bit = our_bit();
    if bit == 0 {
        return f();
    }
    let old = sys::sigmask_set(libc::SIG_BLOCK, bit);
    let r = f();
    if old & bit == 0 {
        sys::sigmask_set(libc::SIG_UNBLOCK, bit);
    }
    r
}

static NEXT_EXECVE: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
static NEXT_EXECV: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
static NEXT_EXECVP: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
static NEXT_EXECVPE: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
static NEXT_FEXECVE: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());

type Argv = *const *const core::ffi::c_char;
type Path = *const core::ffi::c_char;

/// # Safety
/// As `execve(2)`.
#[no_mangle]
pub unsafe extern "C" fn execve(path: Path, argv: Argv, envp: Argv) -> c_int {
    exec_guarded(|| {
        call_next!(
            NEXT_EXECVE,
            c"execve",
            unsafe extern "C" fn(Path, Argv, Argv) -> c_int,
            path,
            argv,
            envp
        )
    })
}

/// # Safety
/// As `execv(3)`.
#[no_mangle]
pub unsafe extern "C" fn execv(path: Path, argv: Argv) -> c_int {
    exec_guarded(|| {
        call_next!(
            NEXT_EXECV,
            c"execv",
            unsafe extern "C" fn(Path, Argv) -> c_int,
            path,
            argv
        )
    })
}

/// # Safety
/// As `execvp(3)`.
#[no_mangle]
pub unsafe extern "C" fn execvp(file: Path, argv: Argv) -> c_int {
    exec_guarded(|| {
        call_next!(
            NEXT_EXECVP,
            c"execvp",
            unsafe extern "C" fn(Path, Argv) -> c_int,
            file,
            argv
        )
    })
}

/// # Safety
/// As `execvpe(3)`.
#[no_mangle]
pub unsafe extern "C" fn execvpe(file: Path, argv: Argv, envp: Argv) -> c_int {
    exec_guarded(|| {
        call_next!(
            NEXT_EXECVPE,
            c"execvpe",
            unsafe extern "C" fn(Path, Argv, Argv) -> c_int,
            file,
            argv,
            envp
        )
    })
}

/// # Safety
/// As `fexecve(3)`.
#[no_mangle]
pub unsafe extern "C" fn fexecve(fd: c_int, argv: Argv, envp: Argv) -> c_int {
    exec_guarded(|| {
        call_next!(
            NEXT_FEXECVE,
            c"fexecve",
            unsafe extern "C" fn(c_int, Argv, Argv) -> c_int,
            fd,
            argv,
            envp
        )
    })
}

static NEXT_POSIX_SPAWN: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
static NEXT_POSIX_SPAWNP: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());

type SpawnFn = unsafe extern "C" fn(
    *mut libc::pid_t,
    Path,
    *const libc::posix_spawn_file_actions_t,
    *const libc::posix_spawnattr_t,
    Argv,
    Argv,
) -> c_int;

/// `exec_guarded` for `posix_spawn`: its child execs inside glibc, with the caller's mask
/// or, under `POSIX_SPAWN_SETSIGMASK`, the attribute's; the checkpoint signal is added to
/// whichever the child gets (a copy of the attributes, the caller's are not changed).
///
/// # Safety
/// `attrp` is null or a valid, initialized `posix_spawnattr_t`.
unsafe fn spawn_guarded(
    attrp: *const libc::posix_spawnattr_t,
    f: impl FnOnce(*const libc::posix_spawnattr_t) -> c_int,
) -> c_int {
    let (bit, sig) = (our_bit(), our_signal());
    if bit == 0 {
        return f(attrp);
    }
    let old = sys::sigmask_set(libc::SIG_BLOCK, bit);
    let r = if attrp.is_null() {
        f(attrp)
    } else {
        // SAFETY: glibc's posix_spawnattr_t is a plain struct (flags, masks, policy): a
        // bitwise copy is a valid attribute object, used only for this call.
        let mut copy = unsafe { core::ptr::read(attrp) };
        let mut flags: libc::c_short = 0;
        // SAFETY: valid attribute object and out-pointers.
        unsafe {
            libc::posix_spawnattr_getflags(&copy, &mut flags);
            if flags as c_int & libc::POSIX_SPAWN_SETSIGMASK != 0 {
                let mut mask: libc::sigset_t = core::mem::zeroed();
                libc::posix_spawnattr_getsigmask(&copy, &mut mask);
                libc::sigaddset(&mut mask, sig);
                libc::posix_spawnattr_setsigmask(&mut copy, &mask);
            }
        }
        f(&copy)
    };
    if old & bit == 0 {
        sys::sigmask_set(libc::SIG_UNBLOCK, bit);
    }
    r
}

/// # Safety
/// As `posix_spawn(3)`.
#[no_mangle]
pub unsafe extern "C" fn posix_spawn(
    pid: *mut libc::pid_t,
    path: Path,
    actions: *const libc::posix_spawn_file_actions_t,
    attrp: *const libc::posix_spawnattr_t,
    argv: Argv,
    envp: Argv,
) -> c_int {
    let f = next_fn(&NEXT_POSIX_SPAWN, c"posix_spawn");
    if f.is_null() {
        return libc::ENOSYS;
    }
    // SAFETY: f is glibc's posix_spawn; the arguments are the caller's, attrp as contracted.
    unsafe {
        spawn_guarded(attrp, |a| {
            core::mem::transmute::<*mut c_void, SpawnFn>(f)(pid, path, actions, a, argv, envp)
        })
    }
}

/// # Safety
/// As `posix_spawnp(3)`.
#[no_mangle]
pub unsafe extern "C" fn posix_spawnp(
    pid: *mut libc::pid_t,
    file: Path,
    actions: *const libc::posix_spawn_file_actions_t,
    attrp: *const libc::posix_spawnattr_t,
    argv: Argv,
    envp: Argv,
) -> c_int {
    let f = next_fn(&NEXT_POSIX_SPAWNP, c"posix_spawnp");
    if f.is_null() {
        return libc::ENOSYS;
    }
    // SAFETY: as in posix_spawn.
    unsafe {
        spawn_guarded(attrp, |a| {
            core::mem::transmute::<*mut c_void, SpawnFn>(f)(pid, file, actions, a, argv, envp)
        })
    }
}

/// Installs `handler` (SA_SIGINFO, SA_RESTART, SA_ONSTACK, every signal blocked while it
/// runs) for `sig` with glibc's own sigaction, which the program's calls never reach.
pub fn install_handler(
    sig: c_int,
    handler: extern "C" fn(i32, *mut libc::siginfo_t, *mut c_void),
) -> Result<(), ()> {
    // SAFETY: a zeroed sigaction is a valid starting point; every field is then set.
    let mut sa: libc::sigaction = unsafe { core::mem::zeroed() };
    sa.sa_sigaction = handler as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
    // SAFETY: sa_mask is a sigset_t inside `sa`.
    unsafe { libc::sigfillset(&mut sa.sa_mask) };
    // SAFETY: a fully initialized sigaction; no old action is asked for.
    if unsafe { real_sigaction(sig, &sa, core::ptr::null_mut()) } != 0 {
        return Err(());
    }
    Ok(())
}

/// Takes SIGTERM for the library (`on_term`): what the program had (an inherited SIG_IGN)
/// becomes its recorded action, `handler` is installed as for the checkpoint signal, and the
/// program's later `sigaction`s for SIGTERM are only recorded.
pub fn hold_sigterm(
    handler: extern "C" fn(i32, *mut libc::siginfo_t, *mut c_void),
) -> Result<(), ()> {
    // SAFETY: zeroed sigaction is a valid out-parameter.
    let mut old: libc::sigaction = unsafe { core::mem::zeroed() };
    // SAFETY: old is writable; no new action.
    if unsafe { real_sigaction(libc::SIGTERM, core::ptr::null(), &mut old) } == 0 {
        VIRTUAL_TERM
            .handler
            .store(old.sa_sigaction as u64, Ordering::SeqCst);
        VIRTUAL_TERM
            .flags
            .store(old.sa_flags as u64, Ordering::SeqCst);
    }
    TERM_IS_OURS.store(true, Ordering::SeqCst);
    install_handler(libc::SIGTERM, handler)
}

/// glibc's rseq registration (glibc >= 2.35 exports these); (0, 0) if none.
pub fn glibc_rseq() -> (i64, u32) {
    // SAFETY: dlsym with RTLD_DEFAULT and NUL-terminated names; the symbols, when present,
    // are a ptrdiff_t and an unsigned int.
    unsafe {
        let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr());
        let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr());
        if off.is_null() || size.is_null() {
            return (0, 0);
        }
        (*(off as *const isize) as i64, *(size as *const u32))
    }
}
