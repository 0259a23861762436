//! Restored threads keep the TIDs of the program's first run in glibc's `pthread->tid`, so
//! that the lock owners recorded in memory still name them: a recursive or error-checking
//! mutex held across a checkpoint (V8's safepoint lock, SQLite's connection mutex, glibc's own
//! loader lock) is still the holder's after a restart. The kernel gave them other TIDs; the
//! loader and the kernel (`CLONE_PARENT_SETTID`) write those into [`THREAD_TABLE`] (layout in
//! `forkpoint_image::thread_table`).
//!
//! Calls that take a `pthread_t` and reach the kernel by the TID glibc keeps need the TID of
//! this run. Translated here, for threads in the table: `pthread_kill` and `pthread_sigqueue`
//! (the signal is sent by its TID here), `pthread_getcpuclockid` (the clock is made from it),
//! `pthread_getaffinity_np`/`pthread_setaffinity_np` (the syscall is made here) and
//! `pthread_getattr_np` on the calling thread (HotSpot asks it for its own stack: glibc's
//! reads the affinity by `pthread->tid`, so the thread's own slot holds this run's TID for the
//! duration of the call). For any thread not in the table (one started since the restart,
//! whose `pthread->tid` glibc wrote, or a program never restored) glibc's is called. Not
//! translated: `pthread_setname_np`/`pthread_getname_np`, `pthread_getattr_np` and
//! `pthread_setschedparam` of another restored thread, and `pthread_cancel` (glibc signals
//! inside itself): see docs/compatibility.md.
//!
//! These run in application context and in signal handlers (`pthread_kill` is
//! async-signal-safe): raw syscalls, reads of a static table, and glibc's definitions found
//! with `dlsym` at load time ([`init`]), never later.

use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use forkpoint_image::thread_table;

use crate::state::{Global, MAX_THREADS};
use crate::sys;

/// One restored thread (`forkpoint_image::thread_table`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RestoredThread {
    pub tid_address: u64,
    pub kept_tid: i32,
    pub tid: i32,
}

const _: () = assert!(core::mem::size_of::<RestoredThread>() == thread_table::ENTRY_LEN);
const _: () =
    assert!(core::mem::offset_of!(RestoredThread, kept_tid) == thread_table::OFF_KEPT_TID);
const _: () = assert!(core::mem::offset_of!(RestoredThread, tid) == thread_table::OFF_TID);

/// Written only by the loader (before the program resumes) and the kernel (at each thread's
/// clone, before that thread runs); read here.
pub static THREAD_TABLE: Global<[RestoredThread; MAX_THREADS]> = Global::new(
    [RestoredThread {
        tid_address: 0,
        kept_tid: 0,
        tid: 0,
    }; MAX_THREADS],
);

/// `&pthread->tid - pthread_self()` in this glibc, learnt at load (0: unknown).
static TID_OFFSET: AtomicUsize = AtomicUsize::new(0);
static NEXT_KILL: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
static NEXT_SIGQUEUE: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
static NEXT_GETATTR: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
static NEXT_CPUCLOCKID: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
static NEXT_GETAFFINITY: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
static NEXT_SETAFFINITY: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());

/// glibc's own signals, which `pthread_kill` refuses to send.
const SIGCANCEL: c_int = 32;
const SIGSETXID: c_int = 33;

/// At load, on the loading thread: where glibc keeps a thread's TID, and glibc's functions.
pub fn init() {
    let mut tid_address: usize = 0;
    if sys::prctl(
        libc::PR_GET_TID_ADDRESS,
        &mut tid_address as *mut usize as usize,
        0,
        0,
        0,
    )
    .is_ok()
    {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() } as usize;
        if tid_address > me && tid_address - me < 4096 {
            TID_OFFSET.store(tid_address - me, Ordering::Relaxed);
        }
    }
    crate::interpose::next_fn(&NEXT_KILL, c"pthread_kill");
    crate::interpose::next_fn(&NEXT_SIGQUEUE, c"pthread_sigqueue");
    crate::interpose::next_fn(&NEXT_GETATTR, c"pthread_getattr_np");
    crate::interpose::next_fn(&NEXT_CPUCLOCKID, c"pthread_getcpuclockid");
    crate::interpose::next_fn(&NEXT_GETAFFINITY, c"pthread_getaffinity_np");
    crate::interpose::next_fn(&NEXT_SETAFFINITY, c"pthread_setaffinity_np");
}

/// Calls glibc's definition in `slot` (found by [`init`]) with signature `ty`, or returns
/// ENOSYS if there is none: the fall-through of every function here for threads that are
/// not restored ones.
macro_rules! call_glibc {
    ($slot:expr, $ty:ty; $($arg:expr),*) => {{
        let Some(f) = next(&$slot) else {
            return libc::ENOSYS;
        };
        // SAFETY: `init` found this symbol under the name of the function it implements,
        // whose C signature `$ty` is.
        let f: $ty = unsafe { core::mem::transmute::<*mut c_void, $ty>(f) };
        // SAFETY: the caller's contract is the interposed function's own.
        unsafe { f($($arg),*) }
    }};
}

/// glibc's definition of an interposed function, or None before [`init`] found it.
fn next(slot: &AtomicPtr<c_void>) -> Option<*mut c_void> {
    let p = slot.load(Ordering::Acquire);
    (!p.is_null()).then_some(p)
}

/// This run's TID of the restored thread `thread`, if it is one.
fn restored_tid(thread: libc::pthread_t) -> Option<i32> {
    restored(thread).map(|(_, tid)| tid)
}

/// Where `thread` keeps its TID and this run's TID, if it is a restored thread.
fn restored(thread: libc::pthread_t) -> Option<(u64, i32)> {
    let off = TID_OFFSET.load(Ordering::Relaxed);
    if off == 0 || thread == 0 {
        return None;
    }
    let tid_address = (thread as usize).wrapping_add(off) as u64;
    let table = THREAD_TABLE.get() as *const RestoredThread;
    for i in 0..MAX_THREADS {
        // SAFETY: i < MAX_THREADS, inside the static table; entries are plain integers
        // written before this thread could run (volatile: the loader and kernel wrote them).
        let e = unsafe { core::ptr::read_volatile(table.add(i)) };
        if e.tid_address == 0 {
            break;
        }
        if e.tid_address != tid_address || e.tid <= 0 {
            continue;
        }
        // SAFETY: a live thread's descriptor (pthread_kill on another is undefined anyway);
        // glibc keeps the TID there, and the kernel clears it when the thread exits.
        let kept = unsafe { core::ptr::read_volatile(tid_address as *const i32) };
        return (kept == e.kept_tid).then_some((tid_address, e.tid));
    }
    None
}

/// # Safety
/// As `pthread_kill(3)`.
#[no_mangle]
pub unsafe extern "C" fn pthread_kill(thread: libc::pthread_t, sig: c_int) -> c_int {
    if let Some(tid) = restored_tid(thread) {
        if sig == SIGCANCEL || sig == SIGSETXID {
            return libc::EINVAL;
        }
        return match sys::tgkill(sys::getpid(), tid, sig) {
            Ok(_) => 0,
            Err(e) => e,
        };
    }
    call_glibc!(
        NEXT_KILL,
        unsafe extern "C" fn(libc::pthread_t, c_int) -> c_int;
        thread, sig
    )
}

/// # Safety
/// As `pthread_sigqueue(3)`.
#[no_mangle]
pub unsafe extern "C" fn pthread_sigqueue(
    thread: libc::pthread_t,
    sig: c_int,
    value: libc::sigval,
) -> c_int {
    if let Some(tid) = restored_tid(thread) {
        if sig == SIGCANCEL || sig == SIGSETXID {
            return libc::EINVAL;
        }
        let pid = sys::getpid();
        // The kernel's siginfo for SI_QUEUE: signo, errno, code, then pid, uid, value.
        let mut info = [0u64; 16];
        info[0] = sig as u32 as u64;
        info[1] = libc::SI_QUEUE as u32 as u64;
        info[2] = pid as u32 as u64 | (sys::getuid() as u64) << 32;
        info[3] = value.sival_ptr as u64;
        return match sys::tgsigqueueinfo(pid, tid, sig, &info) {
            Ok(_) => 0,
            Err(e) => e,
        };
    }
    call_glibc!(
        NEXT_SIGQUEUE,
        unsafe extern "C" fn(libc::pthread_t, c_int, libc::sigval) -> c_int;
        thread, sig, value
    )
}

/// # Safety
/// As `pthread_getcpuclockid(3)`.
#[no_mangle]
pub unsafe extern "C" fn pthread_getcpuclockid(
    thread: libc::pthread_t,
    clock: *mut libc::clockid_t,
) -> c_int {
    if let Some(tid) = restored_tid(thread) {
        // The kernel's per-thread CPU clock: !tid << 3 | CPUCLOCK_PERTHREAD | CPUCLOCK_SCHED.
        // SAFETY: the caller passes a writable clockid_t.
        unsafe { *clock = (!tid) << 3 | 6 };
        return 0;
    }
    call_glibc!(
        NEXT_CPUCLOCKID,
        unsafe extern "C" fn(libc::pthread_t, *mut libc::clockid_t) -> c_int;
        thread, clock
    )
}

/// # Safety
/// As `pthread_getaffinity_np(3)`.
#[no_mangle]
pub unsafe extern "C" fn pthread_getaffinity_np(
    thread: libc::pthread_t,
    size: usize,
    set: *mut libc::cpu_set_t,
) -> c_int {
    if let Some(tid) = restored_tid(thread) {
        // SAFETY: the caller's set is `size` writable bytes.
        return match unsafe { sys::sched_getaffinity_of(tid, set as *mut u8, size) } {
            Ok(n) => {
                // As glibc: the bytes past what the kernel filled are cleared.
                // SAFETY: n <= size, inside the caller's set.
                unsafe { core::ptr::write_bytes((set as *mut u8).add(n), 0, size - n) };
                0
            }
            Err(e) => e,
        };
    }
    call_glibc!(
        NEXT_GETAFFINITY,
        unsafe extern "C" fn(libc::pthread_t, usize, *mut libc::cpu_set_t) -> c_int;
        thread, size, set
    )
}

/// # Safety
/// As `pthread_setaffinity_np(3)`.
#[no_mangle]
pub unsafe extern "C" fn pthread_setaffinity_np(
    thread: libc::pthread_t,
    size: usize,
    set: *const libc::cpu_set_t,
) -> c_int {
    if let Some(tid) = restored_tid(thread) {
        // SAFETY: the caller's set is `size` readable bytes.
        return match unsafe { sys::sched_setaffinity_of(tid, set as *const u8, size) } {
            Ok(_) => 0,
            Err(e) => e,
        };
    }
    call_glibc!(
        NEXT_SETAFFINITY,
        unsafe extern "C" fn(libc::pthread_t, usize, *const libc::cpu_set_t) -> c_int;
        thread, size, set
    )
}

/// # Safety
/// As `pthread_getattr_np(3)`.
#[no_mangle]
pub unsafe extern "C" fn pthread_getattr_np(
    thread: libc::pthread_t,
    attr: *mut libc::pthread_attr_t,
) -> c_int {
    let Some(f) = next(&NEXT_GETATTR) else {
        return libc::ENOSYS;
    };
    // SAFETY: glibc's pthread_getattr_np, found at load, has this signature.
    let f: unsafe extern "C" fn(libc::pthread_t, *mut libc::pthread_attr_t) -> c_int =
        unsafe { core::mem::transmute(f) };
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    let swap = if thread == me { restored(thread) } else { None };
    let Some((tid_address, tid)) = swap else {
        // SAFETY: the caller's contract is pthread_getattr_np's.
        return unsafe { f(thread, attr) };
    };
    let slot = tid_address as *mut i32;
    // SAFETY: the calling thread's own TID slot; only this thread reads it for its own locks,
    // and it takes none whose owner check matters inside pthread_getattr_np.
    let kept = unsafe { core::ptr::read_volatile(slot) };
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(slot, tid) };
    // SAFETY: the caller's contract is pthread_getattr_np's.
    let r = unsafe { f(thread, attr) };
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(slot, kept) };
    r
}
