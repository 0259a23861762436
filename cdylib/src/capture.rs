//! What the leader copies while the threads are stopped, because the writer (a fork) could
//! not see it as it was: descriptor offsets, buffered pipe bytes, timers, shared memory, and
//! the memory the program advised not to fork.
//!
//! Runs in signal handlers (the leader's, and every other thread's while it is stopped).
//! Allowed: the raw syscalls of `sys`, reading `RUNTIME` (set before the handler was
//! installed), atomics, the fixed buffers of `state`. Not allowed: allocation, stdio, locks,
//! any libc call that may take a lock or touch errno-dependent state.

use core::ffi::c_void;
use core::sync::atomic::Ordering;

use forkpoint_image::maps;

use crate::quiesce::for_each_dirent_number;
use crate::report::Line;
use crate::state::{Capture, Runtime, ThreadCapture, MAX_FDS, TIMER_ID};
use crate::{procfs, sys};

/// Saves what only this thread can read (the writer child gets none of it from the kernel).
pub(crate) fn capture_thread(t: &mut ThreadCapture, rt: &Runtime, uctx: *mut c_void) {
    t.fs_base = sys::arch_get_fs();
    t.sigmask = sys::sigmask_get();
    let ss = sys::sigaltstack_get();
    t.altstack = (ss.ss_sp as u64, ss.ss_flags, ss.ss_size as u64);
    let mut tid_addr: u64 = 0;
    let _ = sys::prctl(
        libc::PR_GET_TID_ADDRESS,
        &mut tid_addr as *mut u64 as usize,
        0,
        0,
        0,
    );
    t.tid_address = tid_addr;
    t.robust_list = sys::get_robust_list();
    sys::sched_getaffinity(&mut t.affinity);
    t.sched = sys::sched_get();
    t.pending = sys::sigpending();
    let _ = sys::prctl(libc::PR_GET_NAME, t.name.as_mut_ptr() as usize, 0, 0, 0);
    t.rseq = if rt.rseq_size > 0 {
        let len = (rt.rseq_size.max(32) + 31) & !31;
        Some((
            t.fs_base.wrapping_add(rt.rseq_offset as u64),
            len,
            0x5305_3053,
        ))
    } else {
        None
    };
    t.xstate_bv = 0;
    t.xsave_size = 0;
    if !uctx.is_null() {
        // SAFETY: the kernel passes a valid ucontext to an SA_SIGINFO handler; fpregs points
        // at the frame's fxsave/xsave area or is NULL.
        let fp = unsafe { (*(uctx as *mut libc::ucontext_t)).uc_mcontext.fpregs } as *const u8;
        if !fp.is_null() {
            // SAFETY: the fxsave area is 512 bytes; its software-reserved bytes at 464 hold
            // the xsave magic, and when it is present the xsave header follows at 512.
            unsafe {
                let magic1 = core::ptr::read_unaligned(fp.add(464) as *const u32);
                if magic1 == 0x4650_5853 {
                    t.xsave_size = core::ptr::read_unaligned(fp.add(468) as *const u32);
                    t.xstate_bv = core::ptr::read_unaligned(fp.add(512) as *const u64);
                }
            }
        }
    }
}

/// File offsets: the open file descriptions are shared with the child, and the parent moves
/// them as soon as it runs on.
pub(crate) fn capture_fd_offsets(cap: &mut Capture) {
    cap.n_fds = 0;
    cap.fds_truncated = false;
    let Ok(dir) = sys::open(
        b"/proc/self/fd\0",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    ) else {
        return;
    };
    for_each_dirent_number(dir, |fd| {
        if fd == dir || fd == crate::track::uffd() {
            return;
        }
        if cap.n_fds < MAX_FDS {
            let pos = sys::lseek(fd, 0, libc::SEEK_CUR).unwrap_or(-1);
            cap.fd_offsets[cap.n_fds] = (fd, pos);
            cap.n_fds += 1;
        } else {
            cap.fds_truncated = true;
        }
    });
    sys::close(dir);
    copy_pipes(cap);
}

/// Pipe contents: the parent keeps reading the pipes after the fork, so their buffered bytes
/// are copied now, with tee(2), which leaves them in place. The writer reads the copies.
pub(crate) fn copy_pipes(cap: &mut Capture) {
    cap.n_pipe_copies = 0;
    for k in 0..cap.n_fds {
        let fd = cap.fd_offsets[k].0;
        let Ok(st) = sys::fstat(fd) else { continue };
        if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
            continue;
        }
        let readable = sys::fcntl(fd, libc::F_GETFL, 0)
            .map(|f| f as i32 & libc::O_ACCMODE != libc::O_WRONLY)
            .unwrap_or(false);
        let seen = cap.pipe_copies[..cap.n_pipe_copies]
            .iter()
            .any(|&(ino, _)| ino == st.st_ino);
        if !readable || seen || cap.n_pipe_copies >= cap.pipe_copies.len() {
            continue;
        }
        let size = sys::fcntl(fd, libc::F_GETPIPE_SZ, 0).unwrap_or(65536);
        let Ok((r, w)) = sys::pipe2(libc::O_CLOEXEC | libc::O_NONBLOCK) else {
            continue;
        };
        let _ = sys::fcntl(w, libc::F_SETPIPE_SZ, size);
        let copied = sys::tee(fd, w, size).unwrap_or(0);
        sys::close(w);
        if copied == 0 {
            sys::close(r);
            continue;
        }
        cap.pipe_copies[cap.n_pipe_copies] = (st.st_ino, r);
        cap.n_pipe_copies += 1;
    }
}

/// Timers are not inherited by fork: read them now. Our own interval timer is not saved
/// (a restored library arms a new one).
pub(crate) fn capture_timers(cap: &mut Capture) {
    for (k, which) in [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF]
        .into_iter()
        .enumerate()
    {
        cap.itimers[k] = sys::getitimer(which);
    }
    let mut pdeathsig = 0i32;
    let _ = sys::prctl(
        libc::PR_GET_PDEATHSIG,
        &mut pdeathsig as *mut i32 as usize,
        0,
        0,
        0,
    );
    cap.pdeathsig = pdeathsig;
    cap.dumpable = sys::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0).unwrap_or(1) as i32;
    // The raw getpriority returns 20 - nice (the writer may change its own nice later).
    // SAFETY: no memory effects.
    let prio = unsafe {
        sys::syscall6(
            libc::SYS_getpriority,
            libc::PRIO_PROCESS as usize,
            0,
            0,
            0,
            0,
            0,
        )
    };
    cap.nice = if prio > 0 { 20 - prio as i32 } else { 0 };
    let mut sub = 0i32;
    let _ = sys::prctl(
        libc::PR_GET_CHILD_SUBREAPER,
        &mut sub as *mut i32 as usize,
        0,
        0,
        0,
    );
    cap.child_subreaper = sub != 0;
    cap.timers_text.clear();
    cap.n_posix_timers = 0;
    let Ok(fd) = sys::open(b"/proc/self/timers\0", libc::O_RDONLY | libc::O_CLOEXEC, 0) else {
        return;
    };
    let mut buf = [0u8; 2048];
    while let Ok(n) = sys::read(fd, &mut buf) {
        if n == 0 {
            break;
        }
        cap.timers_text.push(&buf[..n]);
    }
    sys::close(fd);
    let ours = TIMER_ID.load(Ordering::SeqCst);
    let text = cap.timers_text.as_bytes();
    let mut i = 0;
    while i + 4 <= text.len() {
        if &text[i..i + 4] == b"ID: " && (i == 0 || text[i - 1] == b'\n') {
            let mut j = i + 4;
            let mut id: i32 = 0;
            while j < text.len() && text[j].is_ascii_digit() {
                id = id
                    .saturating_mul(10)
                    .saturating_add((text[j] - b'0') as i32);
                j += 1;
            }
            if id != ours && cap.n_posix_timers < cap.posix_timers.len() {
                if let Ok((value, interval)) = sys::timer_gettime(id) {
                    cap.posix_timers[cap.n_posix_timers] = (id, value, interval);
                    cap.n_posix_timers += 1;
                }
            }
            i = j;
        } else {
            i += 1;
        }
    }
}

/// Most bytes of shared memory copied in the pause; beyond it the writer reads the live pages.
pub(crate) const MAX_SHARED_COPY: u64 = 256 << 20;

/// Shared writable anonymous memory (MAP_SHARED|MAP_ANONYMOUS, SysV, memfd, /dev/zero) is
/// not protected by copy-on-write: the application goes on writing it after the fork. Copy
/// it now, while the threads are stopped, so the image is consistent.
pub(crate) fn copy_shared_memory(cap: &mut Capture) {
    cap.n_shared_copies = 0;
    cap.maps_text.clear();
    let Ok(fd) = sys::open(b"/proc/self/maps\0", libc::O_RDONLY | libc::O_CLOEXEC, 0) else {
        return;
    };
    let mut budget = MAX_SHARED_COPY;
    // Asking the kernel for just the shared writable mappings costs one ioctl per such
    // mapping (most programs have none), where the text of /proc/self/maps costs time in
    // proportion to every mapping of the process, all inside the pause.
    let wanted = sys::PROCMAP_QUERY_VMA_READABLE
        | sys::PROCMAP_QUERY_VMA_WRITABLE
        | sys::PROCMAP_QUERY_VMA_SHARED;
    let mut addr = 0u64;
    let mut name = [0u8; 4096];
    let queried = loop {
        match sys::procmap_next(fd, addr, wanted, &mut name) {
            Ok(Some(vma)) => {
                let nm = name.get(..vma.name_len).unwrap_or(&[]);
                let (copies, n) = (&mut cap.shared_copies, &mut cap.n_shared_copies);
                copy_if_shared_anon(copies, n, (vma.start, vma.end), vma.inode, nm, &mut budget);
                if vma.end <= addr {
                    break true;
                }
                addr = vma.end;
            }
            Ok(None) => break true,
            // Only a kernel without the query (the first call fails) falls back to the text;
            // a later failure ends the scan rather than copying some mappings twice.
            Err(_) => break addr != 0,
        }
    };
    if !queried {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sys::read(fd, &mut buf) {
            if n == 0 {
                break;
            }
            cap.maps_text.push(&buf[..n]);
        }
        let (text, copies, n) = (
            cap.maps_text.as_bytes(),
            &mut cap.shared_copies,
            &mut cap.n_shared_copies,
        );
        for line in text.split(|&c| c == b'\n') {
            let Some(l) = maps::parse_line(line) else {
                continue;
            };
            if !(l.shared() && l.write() && l.read()) {
                continue;
            }
            copy_if_shared_anon(copies, n, (l.start, l.end), l.inode, l.name, &mut budget);
        }
    }
    sys::close(fd);
}

/// Copies a shared writable mapping now if it is anonymous memory (shared anonymous, SysV,
/// memfd, /dev/zero), which the writer saves from this copy.
pub(crate) fn copy_if_shared_anon(
    copies: &mut [(u64, u64, u64)],
    n_copies: &mut usize,
    (start, end): (u64, u64),
    inode: u64,
    name: &[u8],
    budget: &mut u64,
) {
    let shared_anon = inode == 0
        || name.starts_with(b"/SYSV")
        || name.starts_with(b"/memfd:")
        || name.starts_with(b"/dev/zero");
    if !shared_anon || end <= start {
        return;
    }
    let len = end - start;
    if len > *budget || *n_copies >= copies.len() {
        return;
    }
    // SAFETY: a fresh private anonymous mapping.
    let Ok(copy) = (unsafe {
        sys::mmap(
            0,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    }) else {
        return;
    };
    // SAFETY: both ranges are mapped readable/writable for len bytes and distinct.
    unsafe { core::ptr::copy_nonoverlapping(start as *const u8, copy as *mut u8, len as usize) };
    *budget -= len;
    copies[*n_copies] = (start, len, copy as u64);
    *n_copies += 1;
}

pub(crate) fn drop_shared_copies(cap: &mut Capture) {
    for &(_, len, copy) in &cap.shared_copies[..cap.n_shared_copies] {
        // SAFETY: our own copy, used only by the writer child (which has its own).
        let _ = unsafe { sys::munmap(copy as usize, len as usize) };
    }
    cap.n_shared_copies = 0;
}

/// A process restored lazily whose helper still fills pages: the writer would find them
/// missing and leave them out of the image. So the checkpoint waits, the program running on
/// meanwhile, until no mapping is registered with the helper's userfaultfd any more (smaps
/// flag `um`), at most [`LAZY_FILL_WAIT_NS`].
// The error is a fixed buffer on purpose: nothing here may allocate.
#[allow(clippy::result_large_err)]
pub(crate) fn wait_for_lazy_fill(cap: &mut Capture) -> Result<(), Line> {
    if !crate::state::LAZY_FILL_PENDING.load(Ordering::SeqCst) {
        return Ok(());
    }
    let deadline = sys::monotonic_ns() + LAZY_FILL_WAIT_NS;
    let mut msg = Line::new();
    loop {
        let mut scanner = procfs::ForkAdviceScanner::new();
        if let Err(e) = scan_smaps(&mut cap.smaps_chunk, &mut scanner, &mut |_, _, _| {}) {
            msg.str("cannot read /proc/self/smaps to see whether the lazy restart's fill is done: errno ")
                .i64(e as i64);
            return Err(msg);
        }
        if !scanner.missing_tracked {
            crate::state::LAZY_FILL_PENDING.store(false, Ordering::SeqCst);
            return Ok(());
        }
        if sys::monotonic_ns() > deadline {
            msg.str("the lazy restart's background fill is not done after ")
                .u64(LAZY_FILL_WAIT_NS / 1_000_000_000)
                .str(" s (pages still missing would be left out of the image)");
            return Err(msg);
        }
        let idle = core::sync::atomic::AtomicU32::new(0);
        sys::futex_wait(&idle, 0, 2_000_000);
    }
}

/// Reads all of `/proc/self/smaps` through `buf` into `scanner`; the errno on failure.
fn scan_smaps(
    buf: &mut [u8],
    scanner: &mut procfs::ForkAdviceScanner,
    found: &mut impl FnMut(u64, u64, bool),
) -> Result<(), i32> {
    let fd = sys::open(b"/proc/self/smaps\0", libc::O_RDONLY | libc::O_CLOEXEC, 0)?;
    let mut result = Ok(());
    loop {
        match sys::read(fd, buf) {
            Ok(0) => break,
            Ok(k) => scanner.feed(&buf[..k], found),
            Err(e) if e == libc::EINTR => continue,
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    scanner.finish(found);
    sys::close(fd);
    result
}

/// How long a checkpoint waits for a lazy restart's fill.
const LAZY_FILL_WAIT_NS: u64 = 120_000_000_000;

/// Ranges the application keeps out of forks (MADV_DONTFORK) or wiped in them
/// (MADV_WIPEONFORK) are made ordinary for our fork, so the writer sees them. Which ranges
/// they are is read from /proc/self/smaps (exact, whatever the application did since its
/// `madvise`), only once the application has given such advice at all: smaps walks the page
/// tables, which costs pause time in proportion to the resident memory.
// The error is a fixed buffer on purpose: nothing here may allocate.
#[allow(clippy::result_large_err)]
pub(crate) fn lift_fork_advice(cap: &mut Capture) -> Result<(), Line> {
    cap.n_advised = 0;
    if !crate::interpose::FORK_ADVICE_SEEN.load(Ordering::SeqCst) {
        return Ok(());
    }
    let mut msg = Line::new();
    let mut scanner = procfs::ForkAdviceScanner::new();
    let (ranges, n) = (&mut cap.advised, &mut cap.n_advised);
    let mut overflow = false;
    let mut found = |start: u64, end: u64, wipe: bool| {
        if let Some(last) = ranges[..*n].last_mut() {
            if last.2 == wipe && last.0 + last.1 == start {
                last.1 += end - start;
                return;
            }
        }
        match ranges.get_mut(*n) {
            Some(slot) => {
                *slot = (start, end - start, wipe);
                *n += 1;
            }
            None => overflow = true,
        }
    };
    if let Err(e) = scan_smaps(&mut cap.smaps_chunk, &mut scanner, &mut found) {
        msg.str("cannot read /proc/self/smaps for the MADV_DONTFORK ranges: errno ")
            .i64(e as i64);
        return Err(msg);
    }
    if overflow {
        msg.str("the program keeps more than ")
            .u64(crate::state::MAX_ADVISED as u64)
            .str(" separate ranges out of forks (MADV_DONTFORK/MADV_WIPEONFORK)");
        return Err(msg);
    }
    for &(start, len, wipe) in &cap.advised[..cap.n_advised] {
        let lift = if wipe {
            libc::MADV_KEEPONFORK
        } else {
            libc::MADV_DOFORK
        };
        // SAFETY: changes only how the range is inherited by a fork.
        if let Err(e) = unsafe { sys::madvise(start as usize, len as usize, lift) } {
            msg.str("cannot lift MADV_DONTFORK/WIPEONFORK at ")
                .hex(start)
                .str(": errno ")
                .i64(e as i64);
            return Err(msg);
        }
    }
    Ok(())
}

pub(crate) fn restore_fork_advice(cap: &Capture) {
    for &(start, len, wipe) in &cap.advised[..cap.n_advised] {
        let advice = if wipe {
            libc::MADV_WIPEONFORK
        } else {
            libc::MADV_DONTFORK
        };
        // SAFETY: puts back the application's own advice.
        let _ = unsafe { sys::madvise(start as usize, len as usize, advice) };
    }
}

/// The copies are the writer's: the application's process closes its handles after the fork.
pub(crate) fn close_pipe_copies(cap: &mut Capture) {
    for &(_, fd) in &cap.pipe_copies[..cap.n_pipe_copies] {
        sys::close(fd);
    }
    cap.n_pipe_copies = 0;
}
