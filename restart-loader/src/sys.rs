//! The loader's few raw memory operations. Everything else in the loader is safe Rust.

use std::io;

fn check(r: *mut libc::c_void) -> io::Result<u64> {
    if r == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

/// Maps at exactly `addr`, replacing what is there.
///
/// # Safety
/// `addr..addr+len` must lie inside the loader's own staging reservation.
pub unsafe fn mmap_fixed(
    addr: u64,
    len: u64,
    prot: i32,
    flags: i32,
    fd: i32,
    off: u64,
) -> io::Result<u64> {
    // SAFETY: the caller's contract: only our reservation is replaced.
    check(unsafe {
        libc::mmap(
            addr as *mut _,
            len as usize,
            prot,
            flags | libc::MAP_FIXED,
            fd,
            off as i64,
        )
    })
}

/// Reserves `len` bytes at `addr`, failing if anything is mapped there.
pub fn reserve(addr: u64, len: u64) -> io::Result<()> {
    let flags =
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED_NOREPLACE;
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
    let got =
        check(unsafe { libc::mmap(addr as *mut _, len as usize, libc::PROT_NONE, flags, -1, 0) })?;
    if got != addr {
        return Err(io::Error::other(format!(
            "kernel placed the reservation at {got:#x}, not {addr:#x}"
        )));
    }
    Ok(())
}

pub fn mprotect(addr: u64, len: u64, prot: i32) -> io::Result<()> {
    // SAFETY: only called on staged regions, which nothing in the loader uses.
    if unsafe { libc::mprotect(addr as *mut _, len as usize, prot) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Copies `src` to address `dst` in staged memory.
///
/// # Safety
/// `dst..dst+src.len()` must be writable staged memory no other thread writes concurrently.
pub unsafe fn copy_to(dst: u64, src: &[u8]) {
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) }
}

/// Reads `N` bytes of staged memory.
///
/// # Safety
/// `src..src+N` must be mapped readable memory.
pub unsafe fn copy_from<const N: usize>(src: u64) -> [u8; N] {
    // SAFETY: the caller's contract.
    unsafe { std::ptr::read_unaligned(src as *const [u8; N]) }
}

/// Staged memory as a byte slice, to decompress into.
///
/// # Safety
/// `addr..addr+len` must be mapped writable staged memory that nothing else accesses while
/// the slice lives.
pub unsafe fn staged_slice<'a>(addr: u64, len: u64) -> &'a mut [u8] {
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len as usize) }
}

/// Faults in `len` bytes of staged memory at `addr` for writing, all at once
/// (`MADV_POPULATE_WRITE`): one call instead of one trap per page. Returns false when the
/// kernel does not know the advice (before 5.14: EINVAL); the pages then fault in as they
/// are written, as without it. Any other failure is left to the writes that follow.
pub fn populate_write(addr: u64, len: u64) -> bool {
    // SAFETY: the advice only faults pages in, as writes would (a missing anonymous page
    // becomes a zeroed one, a private file page its copy): it changes no content and no
    // mapping, whatever the range (an unmapped one fails with ENOMEM). Called on staged
    // memory about to be written in full.
    let r = unsafe { libc::madvise(addr as *mut _, len as usize, libc::MADV_POPULATE_WRITE) };
    !(r != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL))
}

/// Whether the kernel takes `prctl(PR_SET_MM, PR_SET_MM_MAP)` from this process: asks for the
/// map's size (`PR_SET_MM_MAP_SIZE`), which goes through the same gate (CONFIG_CHECKPOINT_RESTORE,
/// a seccomp filter) and changes nothing. `Err` holds the errno.
pub fn mm_map_available() -> Result<(), i32> {
    let mut size: u32 = 0;
    // SAFETY: PR_SET_MM_MAP_SIZE writes one u32 to the pointer and changes nothing.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_MM,
            libc::PR_SET_MM_MAP_SIZE,
            &mut size as *mut u32,
            0,
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// The loader's own mm fields the single `PR_SET_MM_*` operations start from: start_code,
/// end_code, start_data, end_data, start_brk, brk, arg_start, arg_end, env_start, env_end.
pub fn current_mm() -> [u64; 10] {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, r)| r);
    // Field 3 is the first after the name; proc(5) numbers start_code 26, end_code 27,
    // start_data 45, end_data 46, start_brk 47, arg_start 48 .. env_end 51.
    let field = |n: usize| -> u64 {
        after_name
            .split_whitespace()
            .nth(n - 3)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    // SAFETY: brk(0) only reports the current break.
    let brk = unsafe { libc::syscall(libc::SYS_brk, 0) } as u64;
    [
        field(26),
        field(27),
        field(45),
        field(46),
        field(47),
        brk,
        field(48),
        field(49),
        field(50),
        field(51),
    ]
}

/// Moves the kernel's break (the loader's, when it cannot be set to the program's) back to the
/// loader's `start_brk`, below the program's heap (checked by verify::check_loader_layout), so
/// that the kernel refuses every `brk()` the program makes below it and reports a break under
/// the address asked for (glibc's test for failure); the blob then blocks growth with a guard
/// page there. Left as it was, a `brk()` below the loader's break would "shrink" it: the kernel
/// unmaps from there up and reports success. The loader's heap goes: nothing may allocate
/// after this. Called last before the blob; allocation-free.
pub fn freeze_loader_brk(start_brk: u64) -> Result<(), ()> {
    // SAFETY: the loader's heap is not used after this (the caller jumps to the blob next).
    let r = unsafe { libc::syscall(libc::SYS_brk, start_brk) } as u64;
    if r == start_brk {
        Ok(())
    } else {
        Err(())
    }
}

/// Unregisters the loader thread's rseq area before its memory goes away.
pub fn rseq_unregister() -> Result<(), String> {
    // SAFETY: dlsym lookups of glibc's exported rseq variables (NUL-terminated names).
    let (off, size) = unsafe {
        let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr());
        let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr());
        if off.is_null() || size.is_null() {
            return Ok(());
        }
        (*(off as *const isize), *(size as *const u32))
    };
    if size == 0 {
        return Ok(());
    }
    let mut fs: u64 = 0;
    // SAFETY: ARCH_GET_FS writes one word.
    unsafe { libc::syscall(libc::SYS_arch_prctl, 0x1003, &mut fs as *mut u64) };
    let area = fs.wrapping_add(off as u64);
    for len in [32u32, 64, 128, 256] {
        // SAFETY: unregistering our own area; the kernel only checks it matches.
        let r = unsafe { libc::syscall(libc::SYS_rseq, area, len, 1, 0x5305_3053u32) };
        if r == 0 {
            return Ok(());
        }
    }
    Err(format!(
        "cannot unregister the loader's rseq area: {}",
        io::Error::last_os_error()
    ))
}

/// Sets a signal disposition exactly as the kernel reported it at checkpoint time.
pub fn set_kernel_sigaction(
    sig: u32,
    handler: u64,
    flags: u64,
    restorer: u64,
    mask: u64,
) -> io::Result<()> {
    let act = [handler, flags, restorer, mask];
    // SAFETY: act has the layout of the kernel's struct sigaction; old action not requested.
    let r = unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, act.as_ptr(), 0usize, 8usize) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn block_all_signals() {
    let all: u64 = !0;
    // SAFETY: an 8-byte kernel sigset.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            0usize,
            8usize,
        )
    };
}

/// Becomes the image's user: groups, then gids, then uids (after which no privilege is left),
/// and stays dumpable so the restored program can read its own /proc files (and be
/// checkpointed again).
pub fn take_credentials(c: &crate::verify::Credentials) -> Result<(), String> {
    let groups: Vec<libc::gid_t> = c.groups.clone();
    // SAFETY: groups is a valid array of its length.
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0 {
        return Err(format!(
            "cannot set the image's groups: {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: plain credential syscalls.
    if unsafe { libc::setresgid(c.gid, c.egid, c.egid) } != 0 {
        return Err(format!(
            "cannot take gid {}: {}",
            c.gid,
            io::Error::last_os_error()
        ));
    }
    // SAFETY: as above.
    if unsafe { libc::setresuid(c.uid, c.euid, c.euid) } != 0 {
        return Err(format!(
            "cannot take uid {}: {}",
            c.uid,
            io::Error::last_os_error()
        ));
    }
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
    Ok(())
}

fn itimerval(value_ns: u64, interval_ns: u64) -> libc::itimerval {
    let tv = |ns: u64| libc::timeval {
        tv_sec: (ns / 1_000_000_000) as i64,
        tv_usec: ((ns % 1_000_000_000) / 1000) as i64,
    };
    libc::itimerval {
        it_interval: tv(interval_ns),
        it_value: tv(value_ns),
    }
}

/// Re-arms the interval timers and POSIX timers (with their ids), and sets the process
/// attributes. Returns what could not be done.
pub fn restore_timers_and_attributes(meta: &forkpoint_image::Metadata) -> Vec<String> {
    let mut warnings = Vec::new();
    let a = &meta.attributes;
    // SAFETY: plain syscalls with integer arguments.
    unsafe {
        if libc::setpriority(libc::PRIO_PROCESS, 0, a.nice) != 0 {
            warnings.push(format!(
                "cannot set nice value {}: {}",
                a.nice,
                io::Error::last_os_error()
            ));
        }
        libc::personality(a.personality as libc::c_ulong);
        if a.no_new_privs {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        }
        libc::prctl(libc::PR_SET_DUMPABLE, a.dumpable as libc::c_ulong, 0, 0, 0);
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            a.pdeathsig as libc::c_ulong,
            0,
            0,
            0,
        );
        if a.child_subreaper {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        }
    }
    for (k, which) in [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF]
        .into_iter()
        .enumerate()
    {
        let t = meta.timers.itimers[k];
        if t.value_ns > 0 {
            let v = itimerval(t.value_ns, t.interval_ns);
            // SAFETY: v is a valid itimerval; old value not requested.
            unsafe { libc::setitimer(which, &v, std::ptr::null_mut()) };
        }
    }
    // POSIX timers keep their ids: Linux >= 6.15 lets timer_create take the id asked for.
    const PR_TIMER_CREATE_RESTORE_IDS: i32 = 77;
    // SAFETY: prctl with integer arguments.
    let exact_ids = unsafe { libc::prctl(PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0) } == 0;
    for t in &meta.timers.posix {
        // SAFETY: sigevent is plain data.
        let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
        ev.sigev_notify = match t.notify.as_str() {
            "none" => libc::SIGEV_NONE,
            "thread" => {
                warnings.push(format!(
                    "POSIX timer {} signalled one thread; it now signals the process",
                    t.id
                ));
                libc::SIGEV_SIGNAL
            }
            _ => libc::SIGEV_SIGNAL,
        };
        ev.sigev_signo = t.signo;
        ev.sigev_value = libc::sigval {
            sival_ptr: t.sigev_value as usize as *mut libc::c_void,
        };
        let mut id: libc::timer_t = t.id as usize as libc::timer_t;
        // SAFETY: ev and id are valid; with exact ids the kernel reads the wanted id from id.
        let mut r = unsafe {
            libc::syscall(
                libc::SYS_timer_create,
                t.clockid,
                &ev as *const libc::sigevent,
                &mut id as *mut libc::timer_t as *mut i32,
            )
        };
        let mut got: i32 = id as usize as i32;
        if !exact_ids {
            // Older kernels hand out ids in order: create and drop placeholders up to it.
            let mut spare = Vec::new();
            while r == 0 && got < t.id {
                spare.push(got);
                let mut id2: i32 = 0;
                // SAFETY: as above.
                r = unsafe {
                    libc::syscall(
                        libc::SYS_timer_create,
                        t.clockid,
                        &ev as *const libc::sigevent,
                        &mut id2 as *mut i32,
                    )
                };
                got = id2;
            }
            for s in spare {
                // SAFETY: deleting our own placeholder timer.
                unsafe { libc::syscall(libc::SYS_timer_delete, s) };
            }
        }
        if r != 0 || got != t.id {
            warnings.push(format!(
                "POSIX timer {} could not be recreated with its id (got {got}): {}",
                t.id,
                io::Error::last_os_error()
            ));
            continue;
        }
        if t.value_ns > 0 {
            let ts = |ns: u64| libc::timespec {
                tv_sec: (ns / 1_000_000_000) as i64,
                tv_nsec: (ns % 1_000_000_000) as i64,
            };
            let spec = libc::itimerspec {
                it_interval: ts(t.interval_ns),
                it_value: ts(t.value_ns),
            };
            // SAFETY: spec is valid; old value not requested.
            unsafe {
                libc::syscall(
                    libc::SYS_timer_settime,
                    got,
                    0,
                    &spec as *const libc::itimerspec,
                    0usize,
                )
            };
        }
    }
    if exact_ids {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0) };
    }
    warnings
}

/// Raises the soft open-file limit to at least `want` descriptors (within the hard limit).
pub fn raise_nofile(want: u64) -> Result<(), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a writable struct rlimit.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if lim.rlim_cur >= want {
        return Ok(());
    }
    if lim.rlim_max < want {
        return Err(format!(
            "the program had descriptors up to number {}, above this shell's hard open-file limit {} (raise it: ulimit -Hn)",
            want.saturating_sub(16),
            lim.rlim_max
        ));
    }
    lim.rlim_cur = want;
    // SAFETY: lim is a valid struct rlimit within the hard limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(format!(
            "cannot raise the open-file limit to {want}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Drops every capability the image's program did not have (capset keeps only the
/// intersection; it can never add one).
pub fn limit_capabilities(effective: u64, permitted: u64) {
    // _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set.
    let mut hdr = [0x2008_0522u32, 0];
    let mut cur = [0u32; 6];
    // SAFETY: header and data of the sizes capget expects for version 3.
    if unsafe { libc::syscall(libc::SYS_capget, hdr.as_mut_ptr(), cur.as_mut_ptr()) } != 0 {
        return;
    }
    let now_eff = cur[0] as u64 | (cur[3] as u64) << 32;
    let now_perm = cur[1] as u64 | (cur[4] as u64) << 32;
    let (eff, perm) = (now_eff & effective, now_perm & permitted);
    if (eff, perm) == (now_eff, now_perm) {
        return;
    }
    let data = [
        eff as u32,
        perm as u32,
        cur[2],
        (eff >> 32) as u32,
        (perm >> 32) as u32,
        cur[5],
    ];
    // SAFETY: as above; lowering capabilities is always allowed.
    unsafe { libc::syscall(libc::SYS_capset, hdr.as_mut_ptr(), data.as_ptr()) };
}

/// This process's PID.
pub fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// A close-on-exec duplicate of `fd` at `min` or above; -1 on failure.
pub fn dup_above(fd: i32, min: i32) -> i32 {
    // SAFETY: F_DUPFD_CLOEXEC only creates a descriptor; `fd` is borrowed.
    unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) }
}

/// Writes `line` to `fd`, best effort (the loader's messages after the point of no return).
pub fn write_line(fd: i32, line: &str) {
    // SAFETY: writing our own buffer.
    let _ = unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
}

/// Sets resource limit `resource` to (`cur`, `max`).
pub fn setrlimit(resource: u32, cur: u64, max: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: cur,
        rlim_max: max,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(resource as _, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the file mode creation mask.
pub fn umask(mask: u32) {
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(mask as libc::mode_t) };
}

/// Maps `len` bytes read-write at `start` (the end of our reservation, replaced) and copies
/// each `(address, bytes)` part into it.
pub fn place_blob(start: u64, len: u64, parts: &[(u64, &[u8])]) -> io::Result<()> {
    for &(at, bytes) in parts {
        if at < start || at + bytes.len() as u64 > start + len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a part of the restore blob lies outside its region",
            ));
        }
    }
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    // SAFETY: the blob region is the end of our own reservation; nothing else lives there.
    unsafe { mmap_fixed(start, len, rw, anon, -1, 0) }?;
    for &(at, bytes) in parts {
        // SAFETY: inside the region just mapped read-write (checked above).
        unsafe { copy_to(at, bytes) };
    }
    Ok(())
}

/// Ends the process now with `code` (no destructors, no stdio flush: past the point of no
/// return nothing of the loader's may run any more).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions and does not return.
    unsafe { libc::_exit(code) }
}
