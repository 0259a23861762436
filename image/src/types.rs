//! The metadata of an image: everything but the page contents.
//!
//! Serialized as JSON (field names as written here; enums with data internally tagged by
//! `kind`, or `how` for [`FdRestore`]; plain enums as `snake_case` strings). Addresses and
//! sizes are exact unsigned 64-bit integers. `docs/image-format.md` lists every field.

use serde::{Deserialize, Serialize};

/// Everything an image records besides the pages themselves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub process: ProcessInfo,
    pub checkpoint: CheckpointInfo,
    pub cpu: CpuInfo,
    pub library: LibraryInfo,
    pub mm: MmFields,
    pub threads: Vec<ThreadState>,
    /// Sorted by `start`, non-overlapping, page-aligned.
    pub mappings: Vec<Mapping>,
    /// The page index: which pages each chunk holds, in chunk order.
    pub chunks: Vec<Chunk>,
    pub fds: Vec<FdEntry>,
    /// Raw data referenced by descriptors (pipe contents, deleted files, memfds).
    #[serde(default)]
    pub blobs: Vec<DataBlob>,
    /// Process attributes besides credentials and limits.
    #[serde(default)]
    pub attributes: ProcessAttributes,
    /// madvise(DONTFORK / WIPEONFORK) and mlock'ed ranges, applied again at restart.
    #[serde(default)]
    pub memory_advice: Vec<MemoryAdvice>,
    /// File locks the process held, re-acquired at restart.
    #[serde(default)]
    pub locks: Vec<FileLock>,
    /// Interval timers and POSIX timers (fork does not inherit them: read in the pause).
    #[serde(default)]
    pub timers: Timers,
    /// Dispositions of signals 1..=64 other than SIGKILL and SIGSTOP, as the kernel reports them.
    pub signals: Vec<SigAction>,
    pub rlimits: Vec<Rlimit>,
    pub stats: Stats,
    /// Things the writer could not capture faithfully, in words a user can act on.
    pub warnings: Vec<String>,
    /// A process tree (format 1.2): this image's process is the root; every other member's
    /// whole image is embedded in this file. Absent for a single process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<TreeInfo>,
    /// An incremental image (format 1.3): the image it builds on. Its chunks hold only the
    /// pages written since the parent; the rest of the metadata is whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentImage>,
    /// Of an incremental image: the pages, in no chunk here, whose contents are the parent
    /// image's (resolved through its own parent in turn). Sorted, disjoint, each inside one
    /// private mapping with stored contents. A page in neither a chunk nor here is zero.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inherited: Vec<PageRun>,
}

/// The image an incremental image builds on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ParentImage {
    /// [`crate::metadata_digest`] of the parent's metadata: the parent's identity.
    pub digest: String,
    /// Where the parent was written (a hint: a parent is found by its digest).
    pub path: String,
    /// The parent's `checkpoint.seq` and `checkpoint.time_unix_ns`.
    pub seq: u64,
    pub time_unix_ns: u64,
}

/// The processes of a tree image, parents before their children; the first is the root.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TreeInfo {
    pub members: Vec<TreeMember>,
    /// Open file descriptions that more than one member holds (one file offset between
    /// them, as after `fork`): each the descriptors, by member, that are one description.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_files: Vec<Vec<MemberFd>>,
}

/// Descriptor `fd` of tree member `pid`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberFd {
    pub pid: i32,
    pub fd: i32,
}

/// One process of a tree.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TreeMember {
    pub pid: i32,
    /// The parent's PID; for the root, its parent outside the tree.
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// `/proc/PID/exe` and the command line, for `forkpoint info`.
    pub exe: String,
    pub cmdline: Vec<String>,
    pub threads: u32,
    /// Bytes of memory the member's image holds (uncompressed).
    pub bytes: u64,
    /// Where the member's whole image (header to footer) lies in this file; the root's is
    /// the file itself (offset 0, the file's length).
    pub image_offset: u64,
    pub image_len: u64,
    /// A zombie (exited, not yet reaped by its parent): its wait status as `waitpid` would
    /// report it. It has no image (offset and length 0) and no children; a restart makes
    /// it exit so again, for its parent to reap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exited: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// `/proc/self/exe` at checkpoint time.
    pub exe: String,
    /// Command line, NUL-separated arguments as in `/proc/self/cmdline`.
    pub cmdline: Vec<String>,
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
    /// Supplementary groups.
    #[serde(default)]
    pub groups: Vec<u32>,
    pub cwd: String,
    pub umask: u32,
    pub hostname: String,
    pub kernel_release: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Per-process sequence number, starting at 1.
    pub seq: u64,
    /// `signal`, `interval` or `api`.
    pub trigger: String,
    /// Id of the `forkpoint checkpoint` request, 0 for a plain signal, timer or API call.
    pub request_id: u64,
    /// Wall-clock time of the fork, nanoseconds since the Unix epoch.
    pub time_unix_ns: u64,
    /// How many restores preceded this checkpoint in the process's lineage.
    pub generation: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuInfo {
    pub vendor: String,
    /// CPUID leaf 1 ECX, EDX; leaf 7 subleaf 0 EBX, ECX, EDX: features the program may
    /// have selected code paths by. The restoring CPU must have all of them.
    pub cpuid_1_ecx: u32,
    pub cpuid_1_edx: u32,
    pub cpuid_7_ebx: u32,
    pub cpuid_7_ecx: u32,
    pub cpuid_7_edx: u32,
    /// XCR0 at checkpoint: the xsave features enabled.
    pub xcr0: u64,
    /// Xsave features present in the saved signal frames (XSTATE_BV): the restoring
    /// kernel must enable every one, or the vector state cannot be restored.
    pub xsave_required: u64,
    /// Size of the xsave area in the signal frame (`fpx_sw_bytes.extended_size`).
    pub xsave_frame_size: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LibraryInfo {
    pub version: String,
    /// Address of the library's restore-info block (see `restore_info`).
    pub restore_info_addr: u64,
    /// Address and entries of the library's table of restored threads (see `thread_table`);
    /// 0 for a library without one, whose restored threads get their new TID in glibc's
    /// `pthread->tid` instead.
    #[serde(default)]
    pub thread_table_addr: u64,
    #[serde(default)]
    pub thread_table_len: u32,
}

/// The kernel's `mm_struct` fields `PR_SET_MM_MAP` restores.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MmFields {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// `/proc/self/auxv` as (type, value) pairs flattened, AT_NULL included.
    pub auxv: Vec<u64>,
}

/// Registers of the point where a thread resumes: inside the library's fork point, so the
/// library runs its after-restore code before returning to the application (the signal
/// frame the kernel pushed when the checkpoint signal arrived is in the saved stack).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeRegs {
    pub rbx: u64,
    pub rbp: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rsp: u64,
    pub rip: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ThreadState {
    pub tid: i32,
    pub name: String,
    pub regs: ResumeRegs,
    pub fs_base: u64,
    /// Signal mask at the resume point (the handler's mask; the application's own is in the
    /// signal frame on its stack).
    pub sigmask: u64,
    pub sigaltstack: AltStack,
    /// `PR_GET_TID_ADDRESS`: glibc's `&pthread->tid`, set again with `set_tid_address`.
    pub tid_address: u64,
    pub robust_list: u64,
    pub robust_list_len: u64,
    pub rseq: Option<Rseq>,
    /// CPU affinity mask (`sched_getaffinity`, one bit per CPU, 64 CPUs per word); empty if
    /// not captured.
    #[serde(default)]
    pub affinity: Vec<u64>,
    /// Scheduling policy and priority (`sched_getscheduler`, `sched_getparam`).
    #[serde(default)]
    pub sched_policy: i32,
    #[serde(default)]
    pub sched_priority: i32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AltStack {
    pub sp: u64,
    pub flags: i32,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rseq {
    pub addr: u64,
    pub len: u32,
    pub sig: u32,
}

/// Protection bits as in `mmap`: 1 read, 2 write, 4 exec.
pub const PROT_READ: u32 = 1;
pub const PROT_WRITE: u32 = 2;
pub const PROT_EXEC: u32 = 4;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub prot: u32,
    pub shared: bool,
    /// Offset in the file (file mappings) or in the shared memory object (`memory_object`),
    /// 0 otherwise.
    pub offset: u64,
    /// The pathname column of `/proc/self/maps` (`[heap]`, `/usr/lib/...`, empty).
    pub name: String,
    pub kind: MappingKind,
    pub contents: Contents,
    /// How the restored mapping differs from the original, if it does (`None`: faithful).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approximation: Option<String>,
    /// The kernel object behind shared memory saved with its contents (shared anonymous
    /// memory, a deleted `/dev/shm` file): the processes of a tree that map the same object
    /// share one again after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_object: Option<MemoryObject>,
}

/// Identity of a shared memory object at checkpoint time (its device and inode in
/// `/proc/PID/maps`), only compared between the processes of one tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemoryObject {
    pub dev: u64,
    pub inode: u64,
}

/// Identity of a file as seen at checkpoint time; a restart checks it has not changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub path: String,
    pub dev: u64,
    pub inode: u64,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MappingKind {
    /// Private anonymous memory (also `.bss`, thread stacks, malloc arenas).
    Anonymous,
    Heap,
    Stack,
    /// Private mapping of a file: clean pages come from the file, written ones from the image.
    File {
        file: FileId,
    },
    /// Shared mapping of a file: remapped from the file, nothing stored.
    SharedFile {
        file: FileId,
    },
    /// Shared anonymous memory (also `/dev/zero`, SysV, memfd): contents stored.
    SharedAnonymous,
    Vdso {
        crc32: u32,
    },
    Vvar,
    VvarVclock,
    Vsyscall,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Contents {
    /// Present non-zero pages are in chunks; the others read as zero (or come from the file).
    Stored,
    /// Nothing stored: recreated by the kernel (vdso, vvar, vsyscall) or from the file.
    NotStored,
    /// Reserved but deliberately not saved (the library's own writer stack): restored empty.
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    Zstd,
    /// Stored as is (level 0); page-aligned in the file so a restart could map it.
    None,
}

/// A run of consecutive pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRun {
    pub addr: u64,
    pub pages: u64,
}

/// One compressed block of pages in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    pub offset: u64,
    pub stored_len: u64,
    /// Uncompressed length: the pages of `runs`, concatenated, times PAGE_SIZE.
    pub raw_len: u64,
    pub compression: Compression,
    /// CRC-32 of the stored bytes.
    pub crc32: u32,
    pub runs: Vec<PageRun>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FdEntry {
    pub fd: i32,
    /// `fcntl(F_GETFL)` flags.
    pub flags: i32,
    pub cloexec: bool,
    pub offset: i64,
    /// The `/proc/self/fd/N` link target.
    pub path: String,
    pub kind: FdKind,
    pub restore: FdRestore,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FdKind {
    Regular {
        file: FileId,
    },
    Directory,
    CharDevice {
        rdev: u64,
    },
    Tty {
        rdev: u64,
    },
    Pipe {
        #[serde(default)]
        pipe: Option<PipeInfo>,
    },
    Socket {
        #[serde(default)]
        socket: Option<SocketInfo>,
    },
    Eventfd {
        count: u64,
        semaphore: bool,
    },
    Timerfd {
        clockid: i32,
        /// Time to the next expiry (0: disarmed) and the period, nanoseconds.
        value_ns: u64,
        interval_ns: u64,
        /// Expirations not read yet.
        #[serde(default)]
        ticks: u64,
    },
    Signalfd {
        mask: u64,
    },
    Epoll {
        interest: Vec<EpollEntry>,
    },
    /// A regular file that was deleted while open: its contents are in a blob.
    DeletedFile {
        size: u64,
        data: Option<u32>,
        /// Permission bits of the file.
        #[serde(default)]
        mode: u32,
    },
    /// A memfd: name, seals and contents (in a blob).
    Memfd {
        name: String,
        seals: u32,
        size: u64,
        data: Option<u32>,
    },
    /// Anything else (inotify, fanotify, perf, ...; `path` says what).
    Other,
}

/// A range with a property fork or the kernel does not carry over by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryAdvice {
    pub start: u64,
    pub len: u64,
    /// `dontfork`, `wipeonfork` or `mlock`.
    pub advice: String,
}

/// A file lock, on the file a descriptor refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLock {
    /// A descriptor of the process on the locked file (for `flock` and OFD locks: the one
    /// whose open file description holds the lock).
    pub fd: i32,
    /// `posix` (fcntl F_SETLK), `ofd` (F_OFD_SETLK) or `flock`.
    pub kind: String,
    pub write: bool,
    pub start: u64,
    /// Length in bytes; 0 means to the end of the file.
    pub len: u64,
}

/// Process attributes a restart sets again (or checks).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessAttributes {
    /// Effective and permitted capability sets (`/proc/self/status`); checked at restart.
    pub cap_effective: u64,
    pub cap_permitted: u64,
    pub nice: i32,
    pub personality: u32,
    pub no_new_privs: bool,
    pub dumpable: i32,
    /// `PR_GET_PDEATHSIG` (0: none).
    pub pdeathsig: i32,
    pub child_subreaper: bool,
}

/// An interval timer (`setitimer`): time to the next expiry and period, nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Itimer {
    pub value_ns: u64,
    pub interval_ns: u64,
}

/// A POSIX timer (`timer_create`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixTimer {
    pub id: i32,
    pub clockid: i32,
    /// `signal`, `thread` or `none` (as /proc/PID/timers says).
    pub notify: String,
    pub signo: i32,
    /// The sigevent value delivered with the signal.
    pub sigev_value: u64,
    pub value_ns: u64,
    pub interval_ns: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timers {
    /// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF.
    pub itimers: [Itimer; 3],
    pub posix: Vec<PosixTimer>,
}

/// One end of a pipe or FIFO.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipeInfo {
    /// pipefs inode: descriptors with the same one share the pipe.
    pub ino: u64,
    pub write_end: bool,
    /// `F_GETPIPE_SZ`.
    pub size: u64,
    /// Blob holding the bytes buffered at the checkpoint (on one descriptor of the pipe).
    pub data: Option<u32>,
    /// The other end was held only outside the process.
    pub other_end_outside: bool,
}

/// A socket: what is needed to recreate it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SocketInfo {
    pub ino: u64,
    pub domain: i32,
    pub sock_type: i32,
    pub protocol: i32,
    pub listening: bool,
    /// `getsockname` and `getpeername`, raw sockaddr bytes (empty: none).
    pub local: Vec<u8>,
    pub peer: Vec<u8>,
    /// For one end of a socketpair inside the process: the other end's inode.
    pub pair: Option<u64>,
    /// Blob holding the bytes queued for reading (stream sockets).
    pub data: Option<u32>,
    /// Integer socket options (level, name, value as `getsockopt` reports it).
    #[serde(default)]
    pub options: Vec<SockOpt>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockOpt {
    pub level: i32,
    pub name: i32,
    pub value: i32,
}

/// One registration in an epoll instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollEntry {
    pub fd: i32,
    pub events: u32,
    pub data: u64,
}

/// Bytes stored raw in the chunk area (pipe contents, deleted files, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataBlob {
    pub offset: u64,
    pub len: u64,
    pub crc32: u32,
}

/// How a restart brings the descriptor back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum FdRestore {
    /// Opened again by path with the saved flags (never truncated) and offset.
    Reopen,
    /// Standard stream taken from whoever runs `forkpoint restart`.
    Inherit,
    /// Created again as it was (pipe, eventfd, timerfd, epoll, socket, memfd, ...).
    Recreate,
    /// Created again as the closest honest thing; `how` says what differs.
    Approximate { approximation: String },
    /// Not restorable here: `/dev/null` in its place, and the reason.
    DevNull { reason: String },
}

/// A signal disposition as the kernel's `struct k_sigaction` holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigAction {
    pub signo: u32,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: u32,
    pub cur: u64,
    pub max: u64,
}

/// What the writer did, for `forkpoint info` and the benchmark.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Pages mapped in the address space.
    pub pages_mapped: u64,
    /// Pages stored in chunks.
    pub pages_stored: u64,
    /// Present pages not stored because they were all zero.
    pub pages_zero: u64,
    /// Pages left to the file (clean pages of private file mappings, shared file mappings).
    pub pages_from_file: u64,
    /// Pages never touched (not present, not swapped).
    pub pages_untouched: u64,
    pub bytes_raw: u64,
    pub bytes_stored: u64,
    /// Time the application was stopped for the fork, nanoseconds.
    pub pause_ns: u64,
    /// Time from the fork to the metadata being written, nanoseconds.
    pub write_ns: u64,
    pub zstd_level: i32,
    /// Of an incremental image: present pages left to the parent (unchanged since it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pages_inherited: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
