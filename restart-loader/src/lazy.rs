//! Lazy restart: the helper process that fills the program's memory after the hand-over.
//!
//! The loader opens a userfaultfd before it stages anything and starts the helper, a copy of
//! itself named `fp-lazy`, while it is still single-threaded and before any page is staged
//! (the copy shares nothing the program will write). The helper is the program's child with
//! SIGKILL as its exit signal: if it dies before the program does, the kernel kills the
//! program, which so never runs on pages it could not get. It is invisible to the program's
//! `wait()` (not a SIGCHLD child) and to the library's tree detection.
//!
//! The blob registers the lazy regions once they are at their target addresses, then closes
//! the start pipe. The helper answers each fault by decompressing the chunk that holds the
//! page (its CRC checked first) and copying all of it in, and fills the other chunks in the
//! background, in image order; then it lets the userfaultfd go, closes the image and only
//! waits for the program to end. A damaged chunk kills the program with a message on
//! restart's stderr rather than let it run on wrong memory. Forks, moves, unmaps and
//! `MADV_DONTNEED` of the program arrive as events: a child is filled too (its own
//! userfaultfd), a moved page is found where it went, a discarded page reads as zero.
//!
//! The helper is a forked copy of a single-threaded process: the heap and std are usable.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use forkpoint_image::read::ChunkReader;
use forkpoint_image::{ImageFile, PAGE_SIZE};

use crate::lazymap::{self, FaultAnswer, Source, Space};
use crate::plan::LazySplit;

const UFFD_API: u64 = 0xaa;
const UFFD_USER_MODE_ONLY: i32 = 1;
const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
const FEATURES: u64 = UFFD_FEATURE_EVENT_FORK
    | UFFD_FEATURE_EVENT_REMAP
    | UFFD_FEATURE_EVENT_REMOVE
    | UFFD_FEATURE_EVENT_UNMAP;
const UFFDIO_API: u64 = 0xc018_aa3f;
const UFFDIO_WAKE: u64 = 0x8010_aa02;
const UFFDIO_COPY: u64 = 0xc028_aa03;
const UFFDIO_ZEROPAGE: u64 = 0xc020_aa04;
const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_FORK: u8 = 0x13;
const EVENT_REMAP: u8 = 0x14;
const EVENT_REMOVE: u8 = 0x15;
const EVENT_UNMAP: u8 = 0x16;
const MSG_LEN: usize = 32;

/// The name (comm) of the helper: `forkpoint checkpoint` leaves it out of a tree.
pub const HELPER_COMM: &str = "fp-lazy";

/// A userfaultfd for this process's memory that handles faults from the kernel too (a
/// `read(2)` into a missing page) and reports forks, moves and discards. That needs
/// `CAP_SYS_PTRACE` (or `vm.unprivileged_userfaultfd=1` and still CAP_SYS_PTRACE for fork
/// events); `UFFD_USER_MODE_ONLY` would make such a `read(2)` fail with EFAULT.
pub fn open_userfaultfd() -> Result<OwnedFd, String> {
    // SAFETY: userfaultfd(2) only creates a descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: as above.
        let user_only = unsafe {
            libc::syscall(
                libc::SYS_userfaultfd,
                libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY,
            )
        };
        if user_only >= 0 {
            // SAFETY: just created, ours.
            unsafe { libc::close(user_only as i32) };
            return Err(format!(
                "userfaultfd for faults from the kernel too is refused ({e}): only \
                 UFFD_USER_MODE_ONLY is allowed (vm.unprivileged_userfaultfd=0 without \
                 CAP_SYS_PTRACE), and with it a read(2) into a page not yet filled would fail"
            ));
        }
        return Err(format!("userfaultfd is not available: {e}"));
    }
    // SAFETY: a descriptor the kernel just gave us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let mut api = [UFFD_API, FEATURES, 0u64];
    // SAFETY: UFFDIO_API with a 24-byte uffdio_api.
    if unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API as _, api.as_mut_ptr()) } != 0 {
        return Err(format!(
            "userfaultfd refuses the fork, mremap, munmap and madvise events a lazy restart \
             needs: {}",
            io::Error::last_os_error()
        ));
    }
    if api[1] & FEATURES != FEATURES {
        return Err("userfaultfd lacks the fork, mremap, munmap or madvise events".into());
    }
    Ok(fd)
}

/// The working set of the last lazy restart of an image: `IMAGE.wset` next to it.
pub fn working_set_path(image: &Path) -> PathBuf {
    let mut p = image.as_os_str().to_owned();
    p.push(".wset");
    PathBuf::from(p)
}

/// The chunks the last lazy restart of this image faulted first, if its record matches.
pub fn read_working_set(image: &Path, img: &ImageFile) -> Vec<usize> {
    let Ok(text) = std::fs::read_to_string(working_set_path(image)) else {
        return Vec::new();
    };
    parse_working_set(&text, &identity(img), img.metadata.chunks.len())
}

fn identity(img: &ImageFile) -> String {
    format!("{:08x} {}", img.footer.metadata_crc32, img.footer.file_len)
}

const WSET_MAGIC: &str = "forkpoint working set 1";

/// `WSET_MAGIC`, then the image's identity, then chunk indexes, one per line.
pub fn parse_working_set(text: &str, identity: &str, chunks: usize) -> Vec<usize> {
    let mut lines = text.lines();
    if lines.next() != Some(WSET_MAGIC) || lines.next() != Some(identity) {
        return Vec::new();
    }
    let mut out: Vec<usize> = Vec::new();
    for l in lines {
        match l.trim().parse::<usize>() {
            Ok(i) if i < chunks && !out.contains(&i) => out.push(i),
            _ => {}
        }
    }
    out
}

pub fn format_working_set(identity: &str, chunks: &[usize]) -> String {
    let mut s = format!("{WSET_MAGIC}\n{identity}\n");
    for c in chunks {
        s.push_str(&format!("{c}\n"));
    }
    s
}

/// What the loader keeps of a started helper.
pub struct Started {
    /// Write end of the start pipe: the blob closes it once the regions are registered.
    pub ready: OwnedFd,
}

/// Everything the helper works from.
pub struct HelperInputs<'a> {
    pub img: &'a ImageFile,
    pub image_path: &'a Path,
    pub split: &'a LazySplit,
    pub working_set: &'a [usize],
    pub uffd: &'a OwnedFd,
    pub verbose: bool,
    pub t0: Instant,
    /// Tests only (debug builds, `FORKPOINT_TEST_LAZY_HOLD=1`): no background fill, every
    /// page arrives on demand.
    pub hold_fill: bool,
}

/// Starts the helper. The caller must be single-threaded.
pub fn start_helper(inp: &HelperInputs<'_>) -> Result<Started, String> {
    let mut p = [0i32; 2];
    // SAFETY: pipe2 fills two descriptors.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", io::Error::last_os_error()));
    }
    // SAFETY: both just created, ours.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    // SAFETY: getpid has no preconditions.
    let program = unsafe { libc::getpid() };
    // A fork (no shared memory) whose death is announced to us with SIGKILL. The caller is
    // single-threaded: the child may go on with the heap and std.
    // SAFETY: clone without CLONE_VM behaves as fork; both sides return here.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::SIGKILL as u64,
            0u64,
            0u64,
            0u64,
            0u64,
        )
    };
    if pid < 0 {
        return Err(format!(
            "cannot start the lazy helper: {}",
            io::Error::last_os_error()
        ));
    }
    if pid == 0 {
        drop(wr);
        let code = match helper_main(inp, program, rd) {
            Ok(()) => 0,
            // A damaged chunk was said already, with what it means.
            Err(e) if e.is_empty() => 1,
            Err(e) => {
                say(&format!("forkpoint restart: lazy fill: {e}\n"));
                1
            }
        };
        // SAFETY: _exit has no preconditions. A helper that exits takes the program with
        // it (SIGKILL): it only gets here once the program is gone, or on a failure.
        unsafe { libc::_exit(code) }
    }
    drop(rd);
    Ok(Started { ready: wr })
}

fn say(line: &str) {
    // SAFETY: writing our own buffer to stderr.
    let _ = unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}

/// A process being filled: its userfaultfd and what is missing where.
struct Target {
    uffd: OwnedFd,
    space: Space,
    /// The process ended (or exec'd): nothing more to fill there.
    dead: bool,
}

struct Helper<'a> {
    img: &'a ImageFile,
    sources: Vec<Source>,
    lazy_chunks: Vec<usize>,
    targets: Vec<Target>,
    reader: ChunkReader,
    /// The chunk decompressed last and its pages (copied into every process that lacks it).
    cached: Option<(usize, Vec<u8>)>,
    faulted: Vec<usize>,
    fault_pages: u64,
    zero_pages: u64,
    forks: u64,
    program: i32,
    /// When the background fill began: faults in the first second make the working set.
    started_at: Option<Instant>,
    /// Chunks a fault needed, of which only the faulting page was copied: the rest follows
    /// when no fault waits (target, chunk).
    rest_of: std::collections::VecDeque<(usize, usize)>,
    last_fault: Option<Instant>,
}

/// The background fill gives way to the program: it starts this long after the hand-over
/// and pauses until the program has not faulted for [`FAULT_QUIET`] (on a machine with few
/// CPUs its copies would otherwise delay the program's first answer).
const FILL_GRACE: std::time::Duration = std::time::Duration::from_millis(20);
const FAULT_QUIET: std::time::Duration = std::time::Duration::from_millis(3);

impl Helper<'_> {
    /// How long the background fill must still wait (zero: go on).
    fn fill_wait(&self) -> std::time::Duration {
        let since = |t: Option<Instant>, d: std::time::Duration| {
            t.map_or(std::time::Duration::ZERO, |t| d.saturating_sub(t.elapsed()))
        };
        since(self.started_at, FILL_GRACE).max(since(self.last_fault, FAULT_QUIET))
    }
}

/// Faults this soon after the start are the working set the next lazy restart fills first.
const WORKING_SET_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// A chunk the decompression threads made ready, or why they could not.
type Decompressed = (usize, Result<Vec<u8>, String>);

fn helper_main(inp: &HelperInputs<'_>, program: i32, ready: OwnedFd) -> Result<(), String> {
    // SAFETY: prctl(PR_SET_NAME) with a NUL-terminated name; signal() sets dispositions.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"fp-lazy".as_ptr() as u64, 0, 0, 0);
        // The program decides about these; the helper must not die of them (that would
        // kill the program).
        for s in [
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGHUP,
            libc::SIGTERM,
            libc::SIGPIPE,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
        ] {
            libc::signal(s, libc::SIG_IGN);
        }
        // Not the program's standard input and output: a reader waiting for their end.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::close(null);
        }
    }
    // SAFETY: pidfd_open(2) of our parent, the program.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, program, 0) };
    if pidfd < 0 {
        return Err(format!("pidfd_open: {}", io::Error::last_os_error()));
    }
    // SAFETY: just created, ours.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    let chunks = inp.img.metadata.chunks.len();
    let sources = lazymap::sources(&inp.img.metadata, &inp.split.lazy);
    let lazy_chunks: Vec<usize> = (0..chunks).filter(|&i| inp.split.lazy[i]).collect();
    // SAFETY: this copy of the process owns the descriptor from now on (the loader's
    // OwnedFd is never dropped here: the helper ends with _exit). Only our targets may hold
    // it, or the kernel would keep the regions registered once they are dropped.
    let uffd = unsafe { OwnedFd::from_raw_fd(inp.uffd.as_raw_fd()) };
    let mut h = Helper {
        img: inp.img,
        sources,
        lazy_chunks,
        targets: vec![Target {
            uffd,
            space: Space::new(&inp.split.regions, chunks),
            dead: false,
        }],
        reader: ChunkReader::new(),
        cached: None,
        faulted: Vec::new(),
        fault_pages: 0,
        zero_pages: 0,
        forks: 0,
        program,
        started_at: None,
        rest_of: std::collections::VecDeque::new(),
        last_fault: None,
    };
    // Decompression threads fill a bounded queue in image order; this thread answers
    // faults (decompressing the faulting chunk itself when it is not there yet) and copies
    // what the queue brings into every process. A byte on `wake` says the queue has more.
    let mut wake = [0i32; 2];
    // SAFETY: pipe2 fills two descriptors.
    if unsafe { libc::pipe2(wake.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(format!("pipe: {}", io::Error::last_os_error()));
    }
    // SAFETY: both just created, ours.
    let (wake_rd, wake_wr) =
        unsafe { (OwnedFd::from_raw_fd(wake[0]), OwnedFd::from_raw_fd(wake[1])) };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(h.lazy_chunks.len().max(1));
    let (tx, rx) = std::sync::mpsc::sync_channel::<Decompressed>(threads * 2);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let go = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let img_ptr = inp.img as *const ImageFile as usize;
    for _ in 0..threads {
        let (tx, next, go, order) = (tx.clone(), next.clone(), go.clone(), h.lazy_chunks.clone());
        let wake_wr = wake_wr.as_raw_fd();
        std::thread::spawn(move || {
            // SAFETY: the image outlives every thread: the process ends with _exit.
            let img = unsafe { &*(img_ptr as *const ImageFile) };
            // The background fill takes only idle CPU: the program, and this process's
            // answers to its faults, come first.
            let idle = libc::sched_param { sched_priority: 0 };
            // SAFETY: sched_setscheduler(0, ...) on this thread with a valid sched_param.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle) };
            {
                let (m, cv) = &*go;
                let mut started = m.lock().unwrap_or_else(|p| p.into_inner());
                while !*started {
                    started = cv.wait(started).unwrap_or_else(|p| p.into_inner());
                }
            }
            let mut reader = ChunkReader::new();
            loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&c) = order.get(k) else { break };
                let mut buf = vec![0u8; img.metadata.chunks[c].raw_len as usize];
                let r = img
                    .read_chunk_into(c, &mut reader, &mut buf)
                    .map(|()| buf)
                    .map_err(|e| e.to_string());
                if tx.send((c, r)).is_err() {
                    break;
                }
                // SAFETY: one byte to our own pipe (full: the reader has plenty already).
                unsafe { libc::write(wake_wr, [1u8].as_ptr().cast(), 1) };
            }
        });
    }
    drop(tx);
    let mut started = false;
    let mut received = 0usize;
    let mut program_alive = true;
    loop {
        // Wait for something to do: a fault or event, the start, a decompressed chunk, or
        // the program's end.
        let mut fds: Vec<libc::pollfd> = vec![
            libc::pollfd {
                fd: if program_alive { pidfd.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if started {
                    wake_rd.as_raw_fd()
                } else {
                    ready.as_raw_fd()
                },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        for t in &h.targets {
            fds.push(libc::pollfd {
                fd: if t.dead { -1 } else { t.uffd.as_raw_fd() },
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let wait = h.fill_wait();
        if started && !wait.is_zero() {
            // Held back: the queue's byte must not wake us meanwhile.
            fds[1].fd = -1;
        }
        let timeout = if !started {
            -1
        } else if !wait.is_zero() {
            wait.as_millis().max(1) as i32
        } else if h.rest_of.is_empty() {
            -1
        } else {
            0
        };
        // SAFETY: fds is a valid array of pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        if fds[0].revents != 0 {
            // The program is gone; children it forked meanwhile may still need pages.
            program_alive = false;
            h.targets[0].dead = true;
            // (Before the start, the restore failed and said why.)
            if inp.verbose && started {
                say(&format!(
                    "forkpoint restart: [{:>7.2} ms] the program ended before the lazy fill \
                     was done: {} pages faulted on demand (in {} chunks), {} zero pages\n",
                    inp.t0.elapsed().as_secs_f64() * 1e3,
                    h.fault_pages,
                    h.faulted.len(),
                    h.zero_pages
                ));
            }
            h.write_working_set(inp);
            if h.targets.iter().all(|t| t.dead) {
                return Ok(());
            }
        }
        if !started && fds[1].revents != 0 {
            // The blob registered the regions and closed its end: start filling.
            started = true;
            h.started_at = Some(Instant::now());
            if !inp.hold_fill {
                let (m, cv) = &*go;
                *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
                cv.notify_all();
            }
        }
        let ready_targets: Vec<usize> = fds[2..]
            .iter()
            .enumerate()
            .filter(|(_, p)| p.revents != 0)
            .map(|(i, _)| i)
            .collect();
        let quiet = ready_targets.is_empty();
        for t in ready_targets.into_iter().rev() {
            h.serve(t)?;
        }
        // The rest of a faulted chunk, while it is likely still decompressed.
        let go_on = started && h.fill_wait().is_zero();
        if quiet && go_on {
            if let Some((t, c)) = h.rest_of.pop_front() {
                h.decompressed(c)?;
                h.fill(t, c)?;
            }
        }
        if go_on {
            // One chunk of the background fill per round, so that faults wait at most one
            // chunk's copy; its byte on `wake` is taken with it.
            let mut byte = [0u8; 1];
            // SAFETY: reading one byte from our own non-blocking pipe.
            let woken = unsafe { libc::read(wake_rd.as_raw_fd(), byte.as_mut_ptr().cast(), 1) } > 0;
            if let (true, Ok((c, r))) = (woken, rx.try_recv()) {
                received += 1;
                match r {
                    Ok(buf) => {
                        h.cached = Some((c, buf));
                        h.fill_everywhere(c)?;
                    }
                    Err(e) => return Err(h.damaged(&e)),
                }
            }
            if received == h.lazy_chunks.len() {
                h.finish(inp);
                break;
            }
        }
    }
    // Filled: the program no longer depends on us or the image. Stay until it ends, since
    // our exit would kill it.
    h.targets.clear();
    h.cached = None;
    if !program_alive {
        return Ok(());
    }
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; -1 waits for the program's end.
    while unsafe { libc::poll(&mut p, 1, -1) } <= 0 {}
    Ok(())
}

impl Helper<'_> {
    /// Reads and answers every pending message of target `t`.
    fn serve(&mut self, t: usize) -> Result<(), String> {
        let mut buf = [0u8; MSG_LEN * 64];
        loop {
            // SAFETY: reading into our buffer.
            let n = unsafe {
                libc::read(
                    self.targets[t].uffd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n <= 0 {
                return Ok(());
            }
            for m in buf[..n as usize].chunks_exact(MSG_LEN) {
                self.message(t, m)?;
            }
        }
    }

    fn message(&mut self, t: usize, m: &[u8]) -> Result<(), String> {
        let arg =
            |i: usize| u64::from_le_bytes(m[8 + i * 8..16 + i * 8].try_into().unwrap_or_default());
        match m[0] {
            EVENT_PAGEFAULT => {
                let addr = arg(1) & !(PAGE_SIZE - 1);
                match self.targets[t].space.answer(&self.sources, addr) {
                    FaultAnswer::Chunk(c) => {
                        let early = self
                            .started_at
                            .is_none_or(|s| s.elapsed() < WORKING_SET_WINDOW);
                        if t == 0 && early && !self.faulted.contains(&c) {
                            self.faulted.push(c);
                        }
                        self.fault_pages += 1;
                        self.last_fault = Some(Instant::now());
                        self.decompressed(c)?;
                        // Only the faulting page now, waking the thread; the rest of the
                        // chunk once no fault waits (that page is skipped as already there).
                        let off = self.targets[t]
                            .space
                            .orig_of(addr)
                            .and_then(|o| lazymap::offset_in_chunk(&self.sources, o));
                        match (off, &self.cached) {
                            (Some(off), Some((_, data))) => {
                                let page = &data[off as usize..(off + PAGE_SIZE) as usize];
                                match copy(self.targets[t].uffd.as_raw_fd(), addr, page) {
                                    Copied::Busy => self.fill(t, c)?,
                                    _ => self.rest_of.push_back((t, c)),
                                }
                            }
                            _ => self.fill(t, c)?,
                        }
                    }
                    FaultAnswer::Zero => {
                        self.zero_pages += 1;
                        self.last_fault = Some(Instant::now());
                        zeropage(self.targets[t].uffd.as_raw_fd(), addr);
                    }
                }
                wake(self.targets[t].uffd.as_raw_fd(), addr);
            }
            EVENT_FORK => {
                let fd = arg(0) as u32 as RawFd;
                // SAFETY: the kernel installed this descriptor for us with the message.
                let uffd = unsafe { OwnedFd::from_raw_fd(fd) };
                let space = self.targets[t].space.clone();
                self.targets.push(Target {
                    uffd,
                    space,
                    dead: false,
                });
                self.forks += 1;
            }
            EVENT_REMAP => self.targets[t].space.remap(arg(0), arg(1), arg(2)),
            EVENT_REMOVE => self.targets[t].space.discard(arg(0), arg(1)),
            EVENT_UNMAP => self.targets[t].space.unmap(arg(0), arg(1)),
            _ => {}
        }
        Ok(())
    }

    /// Says on restart's stderr that a chunk is damaged and kills the program; the error
    /// returned is empty: all is said.
    fn damaged(&self, e: &str) -> String {
        say(&format!(
            "forkpoint restart: the image is damaged ({e}), found while filling the restored \
             program's memory: the program (PID {}) is killed rather than run on wrong \
             memory\n",
            self.program
        ));
        // SAFETY: kill(2) of the program, our parent.
        unsafe { libc::kill(self.program, libc::SIGKILL) };
        String::new()
    }

    /// Decompresses chunk `c` here (a fault wants it now) and checks it.
    fn decompressed(&mut self, c: usize) -> Result<(), String> {
        if self.cached.as_ref().is_some_and(|(i, _)| *i == c) {
            return Ok(());
        }
        let raw = self.img.metadata.chunks[c].raw_len as usize;
        let mut buf = self.cached.take().map(|(_, b)| b).unwrap_or_default();
        buf.resize(raw, 0);
        if let Err(e) = self.img.read_chunk_into(c, &mut self.reader, &mut buf) {
            return Err(self.damaged(&e.to_string()));
        }
        self.cached = Some((c, buf));
        Ok(())
    }

    /// Copies chunk `c` (the cached one) into target `t`, where its pages are now.
    fn fill(&mut self, t: usize, c: usize) -> Result<(), String> {
        if self.targets[t].dead || self.targets[t].space.done[c] {
            return Ok(());
        }
        // Taken out while copying: answering a pending event may decompress another chunk.
        let Some((i, data)) = self.cached.take() else {
            return Err(format!("internal error: chunk {c} is not decompressed"));
        };
        if i != c {
            return Err(format!("internal error: chunk {c} is not decompressed"));
        }
        let r = self.fill_from(t, c, &data);
        if self.cached.is_none() {
            self.cached = Some((i, data));
        }
        r
    }

    fn fill_from(&mut self, t: usize, c: usize, data: &[u8]) -> Result<(), String> {
        let mut at = 0u64;
        let mut busy = false;
        'runs: for r in &self.img.metadata.chunks[c].runs {
            let len = r.pages * PAGE_SIZE;
            for (dst, off, n) in self.targets[t].space.places(r.addr, len) {
                let src = &data[(at + off) as usize..(at + off + n) as usize];
                match copy(self.targets[t].uffd.as_raw_fd(), dst, src) {
                    Copied::Done => {}
                    Copied::Busy => {
                        busy = true;
                        break 'runs;
                    }
                    Copied::Dead => {
                        self.targets[t].dead = true;
                        return Ok(());
                    }
                    Copied::Gone => {}
                }
            }
            at += len;
        }
        if busy {
            // A fork, move or discard is pending: take it first, then place the pages again
            // (those already copied are skipped).
            self.serve(t)?;
            return self.fill_from(t, c, data);
        }
        self.targets[t].space.done[c] = true;
        Ok(())
    }

    /// Copies chunk `c` into every process still being filled.
    fn fill_everywhere(&mut self, c: usize) -> Result<(), String> {
        for t in 0..self.targets.len() {
            self.fill(t, c)?;
        }
        Ok(())
    }

    fn finish(&mut self, inp: &HelperInputs<'_>) {
        if inp.verbose {
            let mib = self
                .lazy_chunks
                .iter()
                .map(|&c| self.img.metadata.chunks[c].raw_len)
                .sum::<u64>()
                >> 20;
            say(&format!(
                "forkpoint restart: [{:>7.2} ms] lazy fill done: {} chunks ({mib} MiB) in the \
                 background; {} pages faulted on demand (in {} chunks), {} zero pages, {} \
                 forked processes filled too\n",
                inp.t0.elapsed().as_secs_f64() * 1e3,
                self.lazy_chunks.len(),
                self.fault_pages,
                self.faulted.len(),
                self.zero_pages,
                self.forks
            ));
        }
        self.write_working_set(inp);
    }

    /// Records the chunks faulted first (after those of the last record) for the next lazy
    /// restart of this image. Best effort: a directory we cannot write keeps none.
    fn write_working_set(&mut self, inp: &HelperInputs<'_>) {
        let mut chunks: Vec<usize> = inp.working_set.to_vec();
        for &c in &self.faulted {
            if !chunks.contains(&c) {
                chunks.push(c);
            }
        }
        if chunks.is_empty() || chunks == inp.working_set {
            return;
        }
        let path = working_set_path(inp.image_path);
        let tmp = {
            let mut p = path.as_os_str().to_owned();
            p.push(format!(".tmp{}", std::process::id()));
            PathBuf::from(p)
        };
        if std::fs::write(&tmp, format_working_set(&identity(self.img), &chunks)).is_ok()
            && std::fs::rename(&tmp, &path).is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
        self.faulted.clear();
    }
}

enum Copied {
    Done,
    /// EAGAIN: the program's memory layout is changing (an event waits to be read).
    Busy,
    /// The mapping is gone.
    Gone,
    /// The process is gone (its memory: exit or exec).
    Dead,
}

/// `UFFDIO_COPY` of `src` to `dst`, page by page past pages already there.
fn copy(uffd: RawFd, dst: u64, src: &[u8]) -> Copied {
    let mut done = 0u64;
    let len = src.len() as u64;
    while done < len {
        // dst, src, len, mode, copy (out).
        let mut arg = [
            dst + done,
            src.as_ptr() as u64 + done,
            len - done,
            0u64,
            0u64,
        ];
        // SAFETY: UFFDIO_COPY with a 40-byte uffdio_copy; src is our buffer.
        let r = unsafe { libc::ioctl(uffd, UFFDIO_COPY as _, arg.as_mut_ptr()) };
        let copied = arg[4] as i64;
        if r == 0 {
            return Copied::Done;
        }
        if copied > 0 {
            done += copied as u64;
            continue;
        }
        match io::Error::last_os_error().raw_os_error() {
            // A page already there (the program's own, copied into a child at fork): skip it.
            Some(libc::EEXIST) => done += PAGE_SIZE,
            Some(libc::EAGAIN) => return Copied::Busy,
            Some(libc::ESRCH) => return Copied::Dead,
            _ => return Copied::Gone,
        }
    }
    Copied::Done
}

fn zeropage(uffd: RawFd, addr: u64) {
    // range start, len, mode, zeropage (out).
    let mut arg = [addr, PAGE_SIZE, 0u64, 0u64];
    // SAFETY: UFFDIO_ZEROPAGE with a 32-byte uffdio_zeropage. EEXIST (a page got there
    // first) and ENOENT (the mapping went) need nothing more than the wake below.
    unsafe { libc::ioctl(uffd, UFFDIO_ZEROPAGE as _, arg.as_mut_ptr()) };
}

fn wake(uffd: RawFd, addr: u64) {
    let mut range = [addr, PAGE_SIZE];
    // SAFETY: UFFDIO_WAKE with a 16-byte uffdio_range.
    unsafe { libc::ioctl(uffd, UFFDIO_WAKE as _, range.as_mut_ptr()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_set_round_trips_and_refuses_another_image() {
        let text = format_working_set("0badf00d 4096", &[3, 1, 7]);
        assert_eq!(parse_working_set(&text, "0badf00d 4096", 8), vec![3, 1, 7]);
        // Another image, or chunks it does not have.
        assert!(parse_working_set(&text, "0badf00d 8192", 8).is_empty());
        assert_eq!(parse_working_set(&text, "0badf00d 4096", 4), vec![3, 1]);
        assert!(parse_working_set("junk", "0badf00d 4096", 8).is_empty());
    }
}
