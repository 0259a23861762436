//! Dirty-page tracking for incremental checkpoints: userfaultfd write-protection in async
//! mode (a write to a protected page only clears its protection, in the kernel, with no
//! fault sent anywhere) and the `PAGEMAP_SCAN` ioctl, which reports the pages written since
//! they were protected and protects them again in the same call.
//!
//! Per checkpoint N once tracking is on, all in the pause (the other threads stopped):
//! 1. **tracked**: the writable mappings registered now. They were registered at N-1 or
//!    before and have not moved since (a moved mapping loses its registration, a new one
//!    never had any), so their written pages are exactly what changed since image N-1.
//! 2. **register** the private anonymous mappings that are not yet (new since N-1).
//! 3. **scan 1**, over all memory: pages written since N-1, protected again.
//! 4. fork the writer.
//! 5. **scan 2**, in the parent: what the library itself wrote between scan 1 and the fork
//!    (its stack, its state), and a little after. Sent to the writer through a pipe, and
//!    carried into checkpoint N+1, which would otherwise miss the writes after the fork.
//!
//! Image N stores the pages of scan 1, of scan 2 and of the last checkpoint's scan 2; every
//! other present page of a tracked mapping is inherited from image N-1. Mappings not tracked
//! (new, moved, shared, file-backed, or registered by another userfaultfd, as during a lazy
//! fill) are stored whole, as in a full image.
//!
//! Runs in the leader's signal handler ([`before_fork`], [`after_fork_parent`],
//! [`fork_failed`]): raw syscalls of `sys`, the buffer mapped here, atomics; no allocation,
//! locks or libc. [`child_view`] runs in the writer (arena allocation allowed).

use forkpoint_image::pages::PageSet;

use crate::fixbuf::FixBuf;
use crate::state::{Global, Runtime};
use crate::sys::{self, PageRegion};

/// Written ranges one scan can report; more make the image whole.
const MAX_WRITTEN: usize = 1 << 20;
/// Tracked mappings one image can build on.
const MAX_TRACKED: usize = 16384;
/// Ranges of scan 2 (they fit one pipe buffer, so the parent's write never blocks).
const MAX_GAP: usize = 2048;
/// Writable mappings larger than this are not registered (marking a huge, mostly empty
/// reservation costs page tables); they are stored whole.
const MAX_VMA_TRACKED: u64 = 64 << 30;
/// End of user space (47-bit addresses).
const USER_END: u64 = 0x7fff_ffff_f000;
/// The library's userfaultfd is kept at or above this descriptor, out of the program's way.
const UFFD_FD_MIN: i32 = 800;

const OFF_TRACKED: usize = MAX_WRITTEN;
const OFF_GAP: usize = OFF_TRACKED + MAX_TRACKED;
const OFF_CARRY: usize = OFF_GAP + MAX_GAP;
const BUF_REGIONS: usize = OFF_CARRY + MAX_GAP;
const BUF_LEN: usize = (BUF_REGIONS * core::mem::size_of::<PageRegion>() + 4095) & !4095;

/// Lasting state, in the application's process.
struct Tracker {
    /// The userfaultfd the mappings are registered with (-1: none).
    uffd: i32,
    /// The process that opened it (a forked child of the program inherits a useless copy).
    owner: i32,
    /// The checkpoint whose pause armed the tracking (0: not armed).
    armed_after: u64,
    /// The region buffer (mapped once, never part of an image).
    buf: usize,
    n_carry: usize,
}

/// What this checkpoint's pause found, read by its writer (a copy-on-write snapshot).
pub struct Pass {
    /// An incremental image was asked for.
    pub wanted: bool,
    /// Why it cannot be one (empty: it can).
    pub reason: FixBuf<256>,
    /// The checkpoint the image would build on.
    pub parent_seq: u64,
    n_written: usize,
    n_tracked: usize,
    n_carry: usize,
    /// The read end of the pipe scan 2 comes through, and the write end (the parent's).
    gap_read: i32,
    gap_write: i32,
}

static TRACKER: Global<Tracker> = Global::new(Tracker {
    uffd: -1,
    owner: 0,
    armed_after: 0,
    buf: 0,
    n_carry: 0,
});

pub static PASS: Global<Pass> = Global::new(Pass {
    wanted: false,
    reason: FixBuf::new(),
    parent_seq: 0,
    n_written: 0,
    n_tracked: 0,
    n_carry: 0,
    gap_read: -1,
    gap_write: -1,
});

fn tracker() -> &'static mut Tracker {
    // SAFETY: only the checkpoint leader (serialized by CHECKPOINT_BUSY) and the restore path
    // (the only thread running then) touch the tracker.
    unsafe { &mut *TRACKER.get() }
}

fn pass() -> &'static mut Pass {
    // SAFETY: as for the tracker; the writer reads its own copy.
    unsafe { &mut *PASS.get() }
}

fn regions(at: usize, n: usize) -> &'static mut [PageRegion] {
    let t = tracker();
    debug_assert!(t.buf != 0 && at + n <= BUF_REGIONS);
    // SAFETY: buf is a private read-write mapping of BUF_REGIONS regions, used only by the
    // checkpoint path (one at a time) and by the writer's own copy.
    unsafe { core::slice::from_raw_parts_mut((t.buf as *mut PageRegion).add(at), n) }
}

/// The checkpoint this pause's image would build on (0: none).
pub fn parent_seq() -> u64 {
    pass().parent_seq
}

/// The library's userfaultfd (-1: none): not one of the program's descriptors.
pub fn uffd() -> i32 {
    tracker().uffd
}

/// The region buffer, left out of images like the writer's stack.
pub fn buffer_range() -> (u64, u64) {
    let b = tracker().buf as u64;
    (b, if b == 0 { 0 } else { b + BUF_LEN as u64 })
}

/// A restored process starts untracked: the registrations were the old process's, and the
/// descriptor number may be the program's now. The buffer is mapped again (empty).
pub fn forget_after_restore() {
    let t = tracker();
    t.uffd = -1;
    t.owner = 0;
    t.armed_after = 0;
    t.n_carry = 0;
}

/// Steps 1 to 3; `wanted`: an incremental image was asked for.
pub fn before_fork(rt: &Runtime, wanted: bool) {
    let p = pass();
    p.wanted = wanted;
    p.reason.clear();
    p.parent_seq = 0;
    p.n_written = 0;
    p.n_tracked = 0;
    p.n_carry = 0;
    p.gap_read = -1;
    p.gap_write = -1;
    let t = tracker();
    let pid = sys::getpid();
    if t.uffd >= 0 && t.owner != pid {
        // Inherited through the program's fork: the registrations are the parent's.
        sys::close(t.uffd);
        t.uffd = -1;
        t.armed_after = 0;
        t.n_carry = 0;
    }
    if !wanted && t.armed_after == 0 {
        return;
    }
    if let Err(why) = arm(rt, pid) {
        p.reason.clear();
        p.reason.str(why);
        t.armed_after = 0;
    }
}

fn arm(rt: &Runtime, pid: i32) -> Result<(), &'static str> {
    let t = tracker();
    let p = pass();
    if t.buf == 0 {
        t.buf = sys::map_anonymous(BUF_LEN).map_err(|_| "cannot map the tracking buffer")?;
    }
    let was_armed = t.armed_after != 0 && t.uffd >= 0;
    if t.uffd >= 0 && sys::fcntl(t.uffd, libc::F_GETFD, 0).is_err() {
        // The program closed it (the kernel then dropped every registration).
        t.uffd = -1;
        p.reason
            .str("the program closed the library's userfaultfd: tracking starts again");
    }
    if t.uffd < 0 {
        let fd =
            sys::userfaultfd_with(sys::UFFD_FEATURE_WP_ASYNC | sys::UFFD_FEATURE_WP_UNPOPULATED)
                .map_err(|e| {
                    match e {
            libc::ENOSYS | libc::EINVAL => {
                "this kernel has no asynchronous userfaultfd write-protection (Linux 6.7 or later)"
            }
            _ => "userfaultfd was refused (see vm.unprivileged_userfaultfd, seccomp)",
        }
                })?;
        t.uffd = match sys::dup_cloexec_above(fd, UFFD_FD_MIN) {
            Ok(high) => {
                sys::close(fd);
                high
            }
            Err(_) => fd,
        };
        t.owner = pid;
        t.n_carry = 0;
    }
    let pm = sys::open(b"/proc/self/pagemap\0", libc::O_RDONLY | libc::O_CLOEXEC, 0)
        .map_err(|_| "cannot open /proc/self/pagemap")?;
    let maps = match sys::open(b"/proc/self/maps\0", libc::O_RDONLY | libc::O_CLOEXEC, 0) {
        Ok(fd) => fd,
        Err(_) => {
            sys::close(pm);
            return Err("cannot open /proc/self/maps");
        }
    };
    let r = scan_and_register(rt, t, p, pm, maps, was_armed);
    sys::close(maps);
    sys::close(pm);
    r?;
    if !was_armed && p.reason.as_bytes().is_empty() {
        p.reason
            .str("dirty-page tracking starts with this checkpoint: it is written whole");
    }
    if p.reason.as_bytes().is_empty() {
        p.parent_seq = t.armed_after;
        p.n_carry = t.n_carry;
    }
    let (r, w) = sys::pipe2(libc::O_CLOEXEC).map_err(|_| "cannot create a pipe")?;
    p.gap_read = r;
    p.gap_write = w;
    Ok(())
}

fn scan_and_register(
    rt: &Runtime,
    t: &mut Tracker,
    p: &mut Pass,
    pm: i32,
    maps: i32,
    was_armed: bool,
) -> Result<(), &'static str> {
    let own = [
        (rt.child_stack.0 as u64, rt.child_stack.1 as u64),
        buffer_range(),
    ];
    let mut name = [0u8; 1];
    let mut addr = 0u64;
    let mut probe = [PageRegion::default(); 1];
    loop {
        let vma = match sys::procmap_next(maps, addr, sys::PROCMAP_QUERY_VMA_WRITABLE, &mut name) {
            Ok(Some(v)) => v,
            Ok(None) => break,
            Err(_) => return Err("this kernel has no PROCMAP_QUERY (Linux 6.11 or later)"),
        };
        addr = vma.end;
        let ours = own.iter().any(|&(s, e)| vma.start < e && s < vma.end);
        let eligible = vma.inode == 0
            && vma.flags & sys::PROCMAP_QUERY_VMA_SHARED == 0
            && vma.end - vma.start <= MAX_VMA_TRACKED
            && !ours;
        if !eligible {
            continue;
        }
        // Registered already: tracked since the last checkpoint.
        let registered = matches!(
            sys::pagemap_scan(
                pm,
                vma.start,
                vma.start + 4096,
                0,
                sys::PAGE_IS_WPALLOWED,
                &mut probe,
                1
            ),
            Ok((1, _))
        );
        if registered {
            if was_armed {
                if p.n_tracked == MAX_TRACKED {
                    if p.reason.as_bytes().is_empty() {
                        p.reason
                            .str("more tracked mappings than one image can build on");
                    }
                } else {
                    regions(OFF_TRACKED + p.n_tracked, 1)[0] = PageRegion {
                        start: vma.start,
                        end: vma.end,
                        categories: 0,
                    };
                    p.n_tracked += 1;
                }
            }
        } else {
            // EBUSY: another userfaultfd has it (a lazy restore's fill): stored whole.
            let _ = sys::uffd_register_wp(t.uffd, vma.start, vma.end - vma.start);
        }
    }
    // Scan 1: written since the last arm, protected again (newly registered mappings are
    // protected here for the first time; their "written" pages are not used).
    let scanned = scan_written(pm, 0, MAX_WRITTEN).map_err(|e| {
        if e == libc::ENOTTY || e == libc::EINVAL {
            "this kernel has no PAGEMAP_SCAN (Linux 6.7 or later)"
        } else {
            "PAGEMAP_SCAN failed"
        }
    })?;
    p.n_written = scanned.unwrap_or(0);
    if scanned.is_none() && p.reason.as_bytes().is_empty() {
        p.reason
            .str("more than a million separate written ranges: written whole");
    }
    Ok(())
}

/// `PAGEMAP_SCAN` of all user space for written pages, protecting them again, into the
/// `max` regions of the buffer at `at`. Ok(None): more ranges than that (the scan still went
/// on protecting every written page: the next image needs it).
fn scan_written(pm: i32, at: usize, max: usize) -> Result<Option<usize>, i32> {
    let (mut start, mut n, mut overflow) = (0u64, 0usize, false);
    while start < USER_END {
        let out = regions(at + n, max - n);
        let (k, walk_end) = sys::pagemap_scan(
            pm,
            start,
            USER_END,
            sys::PM_SCAN_WP_MATCHING,
            sys::PAGE_IS_WRITTEN,
            out,
            0,
        )?;
        n += k;
        if walk_end <= start || walk_end >= USER_END {
            break;
        }
        start = walk_end;
        if n == max {
            overflow = true;
            n = 0;
        }
    }
    Ok((!overflow).then_some(n))
}

/// Step 5, in the parent right after the fork.
pub fn after_fork_parent(seq: u64) {
    let p = pass();
    let t = tracker();
    if p.gap_write < 0 {
        return;
    }
    sys::close(p.gap_read);
    let n = match sys::open(b"/proc/self/pagemap\0", libc::O_RDONLY | libc::O_CLOEXEC, 0) {
        Ok(pm) => {
            let scanned = scan_written(pm, OFF_GAP, MAX_GAP);
            sys::close(pm);
            scanned.ok().flatten().unwrap_or(usize::MAX)
        }
        Err(_) => usize::MAX,
    };
    // The writer takes usize::MAX as "unknown": its image is whole, and so is the next.
    let count = (n as u64).to_le_bytes();
    let ok = sys::write_all(p.gap_write, &count).is_ok()
        && (n == usize::MAX || {
            let gap = regions(OFF_GAP, n);
            // SAFETY: PageRegion is plain old data: viewing it as bytes is sound.
            let bytes = unsafe {
                core::slice::from_raw_parts(gap.as_ptr() as *const u8, core::mem::size_of_val(gap))
            };
            sys::write_all(p.gap_write, bytes).is_ok()
        });
    sys::close(p.gap_write);
    p.gap_write = -1;
    if n == usize::MAX || !ok {
        t.armed_after = 0;
        t.n_carry = 0;
        return;
    }
    regions(OFF_CARRY, n).copy_from_slice(regions(OFF_GAP, n));
    t.n_carry = n;
    t.armed_after = seq;
}

/// The fork failed: nothing was written after the last image, and tracking was re-armed
/// without one: the next image is whole.
pub fn fork_failed() {
    let p = pass();
    for fd in [p.gap_read, p.gap_write] {
        if fd >= 0 {
            sys::close(fd);
        }
    }
    p.gap_read = -1;
    p.gap_write = -1;
    tracker().armed_after = 0;
}

/// What the writer builds an incremental image from.
pub struct ChildView {
    /// Mappings tracked since the parent image.
    pub tracked: PageSet,
    /// Pages written since the parent image (within the tracked mappings and beyond).
    pub written: PageSet,
}

/// In the writer: the pause's findings and scan 2 from the pipe. Err: why the image must be
/// whole (empty when nobody asked for an incremental one).
pub fn child_view() -> Result<ChildView, String> {
    let p = pass();
    if p.gap_write >= 0 {
        // The parent's end: the pipe ends when the parent closes its copy.
        sys::close(p.gap_write);
    }
    let gap = read_gap(p.gap_read);
    if p.gap_read >= 0 {
        sys::close(p.gap_read);
    }
    if !p.wanted {
        return Err(String::new());
    }
    if !p.reason.as_bytes().is_empty() {
        return Err(String::from_utf8_lossy(p.reason.as_bytes()).into_owned());
    }
    let gap = gap.ok_or_else(|| {
        "the library could not read what it wrote during the pause: written whole".to_string()
    })?;
    let range = |r: &PageRegion| (r.start, r.end);
    let mut written: Vec<(u64, u64)> = regions(0, p.n_written).iter().map(range).collect();
    written.extend(regions(OFF_CARRY, p.n_carry).iter().map(range));
    written.extend(gap);
    let tracked: Vec<(u64, u64)> = regions(OFF_TRACKED, p.n_tracked)
        .iter()
        .map(range)
        .collect();
    if tracked.is_empty() {
        return Err("no mapping has been tracked since the last checkpoint".into());
    }
    Ok(ChildView {
        tracked: PageSet::from_ranges(tracked),
        written: PageSet::from_ranges(written),
    })
}

fn read_gap(fd: i32) -> Option<Vec<(u64, u64)>> {
    if fd < 0 {
        return None;
    }
    let mut count = [0u8; 8];
    if sys::read_full(fd, &mut count).ok()? != 8 {
        return None;
    }
    let n = u64::from_le_bytes(count) as usize;
    if n > MAX_GAP {
        return None;
    }
    let mut bytes = vec![0u8; n * 24];
    if sys::read_full(fd, &mut bytes).ok()? != bytes.len() {
        return None;
    }
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    Some(
        bytes
            .chunks_exact(24)
            .map(|r| (word(&r[0..8]), word(&r[8..16])))
            .collect(),
    )
}
