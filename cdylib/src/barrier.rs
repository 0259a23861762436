//! The barrier of a tree checkpoint: every member of a process tree stops its threads, then
//! waits until all members have; all capture and fork; none runs on until all have forked.
//! So no member reads or writes a pipe, socket or shared memory of another between the
//! first capture and the last fork: one consistent cut. `forkpoint checkpoint` on the root
//! sets it up: it creates one page in the runtime directory and links it into every member's
//! directory as `barrier.<request id>`. The CLI moves the phase to fork once every member
//! has arrived and the tree, listed again, has no newcomer (one forked before its parent
//! stopped joins the barrier first); the last to fork moves it to release. The CLI aborts
//! at its timeout, or when the tree keeps changing. Writers wait for the
//! release before they compress, so they do not take the CPUs the pause still needs.
//!
//! The page's layout is `forkpoint_image::tree_barrier`, shared with the CLI.
//!
//! Runs in the leader's signal handler. Allowed: the raw syscalls of `sys`, atomics on the
//! shared page. Not allowed: allocation, stdio, locks.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::fixbuf::FixBuf;
use crate::report;
use crate::sys;

pub use forkpoint_image::tree_barrier::PAGE;
use forkpoint_image::tree_barrier::{
    MAGIC, MAX_MEMBERS, PHASE_ABORT, PHASE_FORK, PHASE_GATHER, PHASE_RELEASE, PHASE_RESUME,
    W_ARRIVED, W_COMPARED, W_FORKED, W_HOLD, W_MEMBERS, W_PHASE, W_PIDS, W_TIMEOUT_MS, W_VERIFIED,
};

/// A mapped barrier page, unmapped on drop.
pub struct Barrier {
    addr: usize,
}

impl Barrier {
    /// The barrier of request `id`, if `forkpoint checkpoint` made one for this process.
    pub fn open(pid: i32, id: u64) -> Option<Barrier> {
        let mut path = FixBuf::<4096>::new();
        report::runtime_file(&mut path, pid, "barrier", id);
        Self::open_path(&mut path)
    }

    /// The barrier at `path` (`.../PID/barrier.ID`).
    fn open_path(path: &mut FixBuf<4096>) -> Option<Barrier> {
        let fd = sys::open(
            path.as_cstr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            0,
        )
        .ok()?;
        // A page we own (the directory is private), of the right size.
        let ok = sys::fstat(fd)
            .is_ok_and(|st| st.st_uid == sys::getuid() && st.st_size as usize == PAGE);
        // SAFETY: no MAP_FIXED: the kernel picks a free range.
        let addr = ok.then(|| unsafe {
            sys::mmap(
                0,
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        });
        sys::close(fd);
        let addr = addr?.ok()?;
        let b = Barrier { addr };
        (b.word(0).load(Ordering::SeqCst) == MAGIC).then_some(b)
    }

    pub fn addr(&self) -> usize {
        self.addr
    }

    fn word(&self, i: usize) -> &AtomicU32 {
        debug_assert!(i < PAGE / 4);
        // SAFETY: the page is mapped read-write for the life of `self`, 4-aligned; other
        // processes access it only atomically too.
        unsafe { &*((self.addr + 4 * i) as *const AtomicU32) }
    }

    fn timeout_ns(&self) -> u64 {
        self.word(W_TIMEOUT_MS).load(Ordering::SeqCst).max(1) as u64 * 1_000_000
    }

    /// Waits until the phase is past `phase`; returns the new phase, or None at the timeout.
    fn wait_past(&self, phase: u32) -> Option<u32> {
        let deadline = sys::monotonic_ns() + self.timeout_ns();
        loop {
            let now = self.word(W_PHASE).load(Ordering::SeqCst);
            if now != phase {
                return Some(now);
            }
            let left = deadline.saturating_sub(sys::monotonic_ns());
            if left == 0 {
                return None;
            }
            sys::futex_wait_shared(self.word(W_PHASE), phase, left.min(100_000_000));
        }
    }

    /// This member's threads are stopped: say so, and wait until every member's are.
    /// Err: the coordinator gave up (a member never arrived) or went away.
    pub fn arrive(&self, pid: i32) -> Result<(), &'static str> {
        let n = self.word(W_MEMBERS).load(Ordering::SeqCst) as usize;
        let slot = self.word(W_ARRIVED).fetch_add(1, Ordering::SeqCst) as usize;
        if slot < n && slot < MAX_MEMBERS {
            self.word(W_PIDS + slot).store(pid as u32, Ordering::SeqCst);
        }
        sys::futex_wake_shared(self.word(W_ARRIVED));
        // The CLI moves the phase on once it has seen every member stopped and found no
        // process started meanwhile (or made it join).
        match self.wait_past(PHASE_GATHER) {
            Some(PHASE_FORK) | Some(PHASE_RELEASE) => Ok(()),
            Some(_) => Err("the tree checkpoint was abandoned: another member did not stop"),
            None => Err("the tree checkpoint timed out waiting for the other members"),
        }
    }

    /// This member has forked its writer: say so, and wait until every member has and the
    /// CLI has checked the tree (on a timeout or abort, run on: the writer sees it and
    /// writes nothing).
    pub fn forked(&self) {
        let n = self.word(W_MEMBERS).load(Ordering::SeqCst);
        let done = self.word(W_FORKED).fetch_add(1, Ordering::SeqCst) + 1;
        sys::futex_wake_shared(self.word(W_FORKED));
        // The CLI sets VERIFIED, then looks at FORKED; we add to FORKED, then look at
        // VERIFIED: whichever comes second moves the phase on.
        if done == n && self.word(W_VERIFIED).load(Ordering::SeqCst) != 0 {
            self.advance(PHASE_FORK, PHASE_RELEASE);
        }
        if self.wait_past(PHASE_FORK) == Some(PHASE_RELEASE)
            && self.word(W_HOLD).load(Ordering::SeqCst) != 0
        {
            // `--kill`: stay stopped until killed (or told to resume, or the timeout).
            let _ = self.wait_past(PHASE_RELEASE);
        }
    }

    /// Moves the phase from `from` to `to` unless someone (the CLI aborting) already moved it.
    fn advance(&self, from: u32, to: u32) {
        let _ = self
            .word(W_PHASE)
            .compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst);
        sys::futex_wake_shared(self.word(W_PHASE));
    }

    /// In the writer child: waits until every member has forked (or the checkpoint was
    /// abandoned), so that writers compressing do not take the CPUs the members' pause
    /// still needs.
    /// False if the checkpoint was abandoned (a process started during it, or a timeout):
    /// the writer then writes nothing.
    pub fn writer_waits_for_release(addr: usize) -> bool {
        let b = core::mem::ManuallyDrop::new(Barrier { addr });
        matches!(
            b.wait_past(PHASE_FORK),
            Some(PHASE_RELEASE) | Some(PHASE_RESUME)
        )
    }
}

impl Barrier {
    /// In the writer child, its report written: waits until the CLI has compared the
    /// writers' descriptors (this process holds its member's as they were at the cut).
    pub fn writer_waits_for_comparison(report_path: &[u8], id: u64) {
        // The barrier is next to the report (the writer does not look the runtime up).
        let dir = report_path
            .iter()
            .rposition(|&c| c == b'/')
            .map_or(&report_path[..0], |i| &report_path[..=i]);
        let mut path = FixBuf::<4096>::new();
        path.push(dir).str("barrier.").u64(id);
        let Some(b) = Barrier::open_path(&mut path) else {
            return;
        };
        let deadline = sys::monotonic_ns() + b.timeout_ns();
        while b.word(W_COMPARED).load(Ordering::SeqCst) == 0 {
            let left = deadline.saturating_sub(sys::monotonic_ns());
            if left == 0 || b.word(W_PHASE).load(Ordering::SeqCst) == PHASE_ABORT {
                return;
            }
            sys::futex_wait_shared(b.word(W_COMPARED), 0, left.min(100_000_000));
        }
    }
}

impl Drop for Barrier {
    fn drop(&mut self) {
        // SAFETY: the page is ours and nothing refers to it after drop.
        let _ = unsafe { sys::munmap(self.addr, PAGE) };
    }
}
