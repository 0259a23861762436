//! State shared between `init`, the signal handler, the API and the forked writer.
//!
//! Plain statics, no locks: the checkpoint path is serialized by [`CHECKPOINT_BUSY`], and the
//! writer child reads a copy-on-write snapshot of [`CAPTURE`] taken at the fork.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

use forkpoint_image::ResumeRegs;

use crate::config::Config;
use crate::fixbuf::FixBuf;

/// A static only one party writes at a time (see the module doc for who and when).
pub struct Global<T>(UnsafeCell<T>);

// SAFETY: access is serialized by CHECKPOINT_BUSY (handler) or happens in the single-threaded
// writer child; see each use.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    pub const fn new(v: T) -> Self {
        Global(UnsafeCell::new(v))
    }
    pub fn get(&self) -> *mut T {
        self.0.get()
    }
}

/// Advised ranges (after merging neighbours) one checkpoint can lift; more fail it.
pub const MAX_ADVISED: usize = 4096;
pub const MAX_FDS: usize = 4096;
/// Most pipes whose buffered bytes a checkpoint saves.
pub const MAX_PIPE_COPIES: usize = 64;
/// Most POSIX timers a checkpoint saves.
pub const MAX_POSIX_TIMERS: usize = 256;

/// How the checkpoint was asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Trigger {
    Signal,
    Interval,
    Api,
    Request,
    /// SIGTERM, with `FORKPOINT_ON_TERM`.
    Term,
}

impl Trigger {
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Signal => "signal",
            Trigger::Interval => "interval",
            Trigger::Api => "api",
            Trigger::Request => "request",
            Trigger::Term => "term",
        }
    }
}

/// What one thread saves in its handler: what only it can read.
#[repr(C)]
pub struct ThreadCapture {
    pub tid: i32,
    pub regs: ResumeRegs,
    pub name: [u8; 16],
    pub fs_base: u64,
    pub sigmask: u64,
    pub altstack: (u64, i32, u64),
    pub tid_address: u64,
    pub robust_list: (u64, u64),
    pub rseq: Option<(u64, u32, u32)>,
    pub xstate_bv: u64,
    pub xsave_size: u32,
    /// CPU affinity (1024 CPUs) and scheduling policy/priority.
    pub affinity: [u64; 16],
    pub sched: (i32, i32),
    /// Signals pending (blocked) for the thread or the process at the stop.
    pub pending: u64,
}

impl ThreadCapture {
    pub const EMPTY: ThreadCapture = ThreadCapture {
        tid: 0,
        regs: ResumeRegs {
            rbx: 0,
            rbp: 0,
            r12: 0,
            r13: 0,
            r14: 0,
            r15: 0,
            rsp: 0,
            rip: 0,
        },
        name: [0; 16],
        fs_base: 0,
        sigmask: 0,
        altstack: (0, 0, 0),
        tid_address: 0,
        robust_list: (0, 0),
        rseq: None,
        xstate_bv: 0,
        xsave_size: 0,
        affinity: [0; 16],
        sched: (0, 0),
        pending: 0,
    };
}

/// Most threads a checkpoint stops.
pub const MAX_THREADS: usize = 1024;

/// Slot 0 is the leader (the thread that took the request); the others are filled by the
/// quiesced threads themselves, each in its own slot, between the leader's signal and the
/// release.
pub static THREADS: Global<[ThreadCapture; MAX_THREADS]> =
    Global::new([ThreadCapture::EMPTY; MAX_THREADS]);

/// What the leader captures before the fork besides the threads: what the parent will change
/// after the fork (file offsets are shared with the child) and where the result goes.
#[repr(C)]
pub struct Capture {
    pub pid: i32,
    pub ppid: i32,
    /// Threads in THREADS[..n_threads].
    pub n_threads: usize,
    /// Signals pending for every thread: taken as pending for the process.
    pub shared_pending: u64,
    pub trigger: Trigger,
    pub request_id: u64,
    pub seq: u64,
    pub generation: u64,
    pub t_start_ns: u64,
    pub time_unix_ns: u64,
    /// The tree checkpoint's barrier page (0: none): the writer unmaps its copy first, so
    /// the image does not hold it.
    pub barrier_page: usize,
    pub fd_offsets: [(i32, i64); MAX_FDS],
    pub n_fds: usize,
    pub fds_truncated: bool,
    /// Copies of pipe contents made with tee(2): (pipe inode, read fd of the copy).
    pub pipe_copies: [(u64, i32); MAX_PIPE_COPIES],
    pub n_pipe_copies: usize,
    /// getitimer(REAL, VIRTUAL, PROF): (value, interval) ns.
    pub itimers: [(u64, u64); 3],
    /// /proc/self/timers as read in the pause, and each timer's (id, value, interval) ns.
    pub timers_text: FixBuf<16384>,
    pub posix_timers: [(i32, u64, u64); MAX_POSIX_TIMERS],
    pub n_posix_timers: usize,
    pub pdeathsig: i32,
    pub dumpable: i32,
    /// Private copies of shared writable anonymous memory, made in the pause (the
    /// application writes the shared pages on after the fork): (start, len, copy address).
    pub shared_copies: [(u64, u64, u64); 32],
    pub n_shared_copies: usize,
    /// /proc/self/maps, read in the pause on kernels without PROCMAP_QUERY.
    pub maps_text: FixBuf<262144>,
    /// MADV_DONTFORK / WIPEONFORK ranges lifted for the fork: (start, len, wipe).
    pub advised: [(u64, u64, bool); MAX_ADVISED],
    pub n_advised: usize,
    /// Read buffer for /proc/self/smaps in the pause (the handler's stack may be small).
    pub smaps_chunk: [u8; 65536],
    pub nice: i32,
    pub child_subreaper: bool,
    /// Final image path; the writer creates `<out_path>.tmp` first.
    pub out_path: FixBuf<4096>,
    /// Where the result goes (`<runtime>/<pid>/report.<id>`).
    pub report_path: FixBuf<4096>,
}

pub static CAPTURE: Global<Capture> = Global::new(Capture {
    pid: 0,
    ppid: 0,
    n_threads: 0,
    shared_pending: 0,
    trigger: Trigger::Signal,
    request_id: 0,
    seq: 0,
    generation: 0,
    t_start_ns: 0,
    time_unix_ns: 0,
    barrier_page: 0,
    fd_offsets: [(0, 0); MAX_FDS],
    n_fds: 0,
    fds_truncated: false,
    pipe_copies: [(0, -1); MAX_PIPE_COPIES],
    n_pipe_copies: 0,
    itimers: [(0, 0); 3],
    timers_text: FixBuf::new(),
    posix_timers: [(0, 0, 0); MAX_POSIX_TIMERS],
    n_posix_timers: 0,
    pdeathsig: 0,
    dumpable: 1,
    shared_copies: [(0, 0, 0); 32],
    n_shared_copies: 0,
    maps_text: FixBuf::new(),
    advised: [(0, 0, false); MAX_ADVISED],
    smaps_chunk: [0; 65536],
    n_advised: 0,
    nice: 0,
    child_subreaper: false,
    out_path: FixBuf::new(),
    report_path: FixBuf::new(),
});

/// The quiesce rendezvous. `arrived` and `release` are futex words.
pub struct Quiesce {
    /// Set by the leader while it stops the other threads.
    pub active: AtomicBool,
    pub leader_tid: AtomicI32,
    /// Threads that saved their state and wait.
    pub arrived: AtomicU32,
    /// Threads that resumed in a restored process (the leader waits for all before it
    /// unmaps the restore blob).
    pub resumed: AtomicU32,
    /// Number of the current quiesce.
    pub epoch: AtomicU32,
    /// Set to `epoch` when the leader lets the threads go.
    pub release: AtomicU32,
}

pub static QUIESCE: Quiesce = Quiesce {
    active: AtomicBool::new(false),
    leader_tid: AtomicI32::new(0),
    arrived: AtomicU32::new(0),
    resumed: AtomicU32::new(0),
    epoch: AtomicU32::new(0),
    release: AtomicU32::new(0),
};

/// Set while a thread is inside the checkpoint path (held by a [`Leader`]).
pub static CHECKPOINT_BUSY: AtomicBool = AtomicBool::new(false);

/// Proof that this thread leads the checkpoint (it holds [`CHECKPOINT_BUSY`]): the way to the
/// capture state in the application process. One exists at a time; [`Leader::release`]
/// gives it back. (The writer child reads its own copy of the state; stopped threads write
/// only their own slot.)
pub struct Leader {
    _held: (),
}

impl Leader {
    /// Takes the checkpoint path, or None if another thread is on it.
    pub fn acquire() -> Option<Leader> {
        CHECKPOINT_BUSY
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .ok()
            .map(|_| Leader { _held: () })
    }

    /// The capture state and the threads' slots (slot 0 is the leader's).
    pub fn state(&mut self) -> (&mut Capture, &mut [ThreadCapture; MAX_THREADS]) {
        // SAFETY: CHECKPOINT_BUSY is held by this Leader, the only one; the borrows live as
        // long as `&mut self`, so no second pair exists.
        unsafe { (&mut *CAPTURE.get(), &mut *THREADS.get()) }
    }

    pub fn release(self) {
        CHECKPOINT_BUSY.store(false, Ordering::SeqCst);
    }
}
/// The writer child being waited for, 0 if none.
pub static WRITER_PID: AtomicI32 = AtomicI32::new(0);
/// wait status of the last writer reaped by the handler, and its pid.
pub static LAST_WRITER: AtomicU64 = AtomicU64::new(0);
/// Set by `forkpoint_checkpoint` around its self-signal.
pub static API_PENDING: AtomicBool = AtomicBool::new(false);
/// Set by the handler when the API-triggered checkpoint resumed in a restored process.
pub static API_RESTORED: AtomicBool = AtomicBool::new(false);
/// Set by the handler when the API-triggered checkpoint failed before forking.
pub static API_FAILED: AtomicBool = AtomicBool::new(false);
/// Checkpoints taken by this process lineage (last sequence number used).
pub static SEQ: AtomicU64 = AtomicU64::new(0);
/// Restores this process lineage went through.
pub static GENERATION: AtomicU64 = AtomicU64::new(0);
/// POSIX timer of FORKPOINT_INTERVAL (-1 if none).
pub static TIMER_ID: AtomicI32 = AtomicI32::new(-1);

/// Filled once by `init`.
pub struct Runtime {
    pub config: Config,
    /// Short program name for default image names.
    pub prog: String,
    /// The writer child's stack (start, end).
    pub child_stack: (usize, usize),
    /// The checkpoint leader's stack (start, end): the handler may have entered on a small
    /// signal stack (SA_ONSTACK: Go's, Rust's 8 KiB one), too small for the leader's work.
    pub leader_stack: (usize, usize),
    /// glibc's `__rseq_offset` and `__rseq_size` (size 0: rseq not registered by glibc).
    pub rseq_offset: i64,
    pub rseq_size: u32,
    /// How to start `forkpoint checkpoint --tree` for this process's own tree checkpoints.
    pub coordinator: Option<crate::coordinator::CoordinatorExec>,
}

/// The PID of the tree's root, the process whose interval timer and SIGTERM checkpoint the
/// tree, if that is this process (0: a member; a child forked from the root inherits the
/// root's PID, which is not its own). A single-process restart gives the process another
/// PID: `restored` moves it along.
pub static TREE_ROOT_PID: AtomicI32 = AtomicI32::new(0);

/// Restored lazily, and the loader's helper may still be filling pages (the smaps flag
/// `um` says so): a checkpoint waits for it. Cleared once no mapping has the flag.
pub static LAZY_FILL_PENDING: AtomicBool = AtomicBool::new(false);

/// Whether this process is its tree's root.
pub fn is_tree_root() -> bool {
    TREE_ROOT_PID.load(Ordering::SeqCst) == crate::sys::getpid()
}

pub static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// Written by the restart loader into the restored memory (layout in
/// `forkpoint_image::restore_info`).
#[repr(C, align(8))]
pub struct RestoreInfo(pub [u64; 4]);

pub static RESTORE_INFO: Global<RestoreInfo> = Global::new(RestoreInfo([0; 4]));
