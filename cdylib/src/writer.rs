//! The forked writer: walks its own (copy-on-write) address space and writes the image.
//!
//! Runs in the child of `clone`, which has one thread and a copy of a process whose other
//! threads may have held any lock. Allowed: raw syscalls (`sys`), allocation (the global
//! allocator is in arena mode here), core/alloc code, zstd through a static context
//! (no malloc), serde_json. Not allowed: glibc malloc/stdio/locale, Rust std I/O, threads,
//! anything that takes a lock; returning into the parent's stack frames.

use forkpoint_image::{
    self as image, AltStack, Contents, CpuInfo, DataBlob, Footer, Header, Mapping, MappingKind,
    MemoryObject, Metadata, MmFields, ProcessInfo, Rlimit, Rseq, SigAction, ThreadState, PAGE_SIZE,
};

use crate::compress::Chunker;
use crate::config::LogLevel;
use crate::error::WriteError;
use crate::fds::{self, FdContext, PipeCopy};
use crate::fixbuf::FixBuf;
use crate::procfs::{self, Plan};
use crate::report;
use crate::state::{
    Capture, Runtime, ThreadCapture, CAPTURE, MAX_THREADS, RESTORE_INFO, RUNTIME, THREADS,
};
use crate::sys;

const PAGE: usize = PAGE_SIZE as usize;
/// pagemap entries read per syscall.
const PAGEMAP_BATCH: usize = 512;

/// Entry point of the writer child (on the library's writer stack). Never returns.
pub extern "C" fn writer_main() -> ! {
    let t_child = sys::monotonic_ns();
    if crate::arena::enter_writer_mode().is_err() {
        sys::exit_group(3);
    }
    // Signals meant for the application (a terminal's ^C to the process group, the
    // application's timers) must not run its handlers here. SIGKILL still ends us.
    sys::sigmask_set(libc::SIG_SETMASK, !0u64);
    let Some(rt) = RUNTIME.get() else {
        sys::exit_group(3)
    };
    {
        // SAFETY: the child has one thread and its copy of CAPTURE is its own; this is the
        // only mutable borrow, ended before the shared one below.
        let cap = unsafe { &mut *CAPTURE.get() };
        let (pid, id) = (cap.pid, cap.request_id);
        if cap.barrier_page != 0 {
            let released = crate::barrier::Barrier::writer_waits_for_release(cap.barrier_page);
            // SAFETY: the barrier page is the parent's; this copy of it is unused here.
            let _ = unsafe { sys::munmap(cap.barrier_page, crate::barrier::PAGE) };
            if !released {
                let msg = b"the tree checkpoint was abandoned before it was released";
                report::error_report(cap.report_path.as_bytes(), msg);
                sys::exit_group(1);
            }
        }
        choose_output_path(cap, rt, pid, id);
    }
    // SAFETY: the child has one thread and the parent no longer writes this copy.
    let cap: &Capture = unsafe { &*CAPTURE.get() };
    // A non-dumpable process's /proc files belong to root: the writer (not the application)
    // makes itself dumpable so it can read its own pagemap and maps.
    let _ = sys::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
    // So top, ps and perf tell the writer from the application.
    let _ = sys::prctl(libc::PR_SET_NAME, c"fp-writer".as_ptr() as usize, 0, 0, 0);
    if let Some(n) = rt.config.writer_nice {
        sys::setpriority_self(n);
    }
    let faults_at_start = parent_minor_faults(cap.pid);
    let mut tmp = FixBuf::<4200>::new();
    tmp.push(cap.out_path.as_bytes()).str(".tmp");
    match write_image(cap, t_child, &mut tmp) {
        Ok(done) => {
            let mut body = FixBuf::<8192>::new();
            body.str("status=ok\npath=").push(cap.out_path.as_bytes());
            body.str("\nbytes=")
                .u64(done.bytes)
                .str("\npages=")
                .u64(done.pages);
            body.str("\npause_us=")
                .u64(done.pause_ns / 1000)
                .str("\nwrite_ms=")
                .u64(done.write_ns / 1_000_000);
            body.str("\nseq=").u64(cap.seq);
            if let Some(parent) = &done.parent {
                body.str("\nincremental=1\nparent=").str(parent);
                body.str("\npages_inherited=").u64(done.inherited);
            } else if !done.full_reason.is_empty() {
                body.str("\nincremental=0\nfull_reason=")
                    .str(&done.full_reason.replace('\n', " "));
            }
            body.str("\nwriter_peak=")
                .u64(crate::arena::peak_bytes() as u64);
            if let (Some(a), Some(b)) = (faults_at_start, parent_minor_faults(cap.pid)) {
                body.str("\ncow_faults=").u64(b.saturating_sub(a));
            }
            body.str("\n");
            report::write_report(cap.report_path.as_bytes(), body.as_bytes());
            let mut l = report::Line::new();
            l.str("checkpoint ")
                .u64(cap.seq)
                .str(" written to ")
                .push(cap.out_path.as_bytes());
            l.str(" (")
                .u64(done.bytes)
                .str(" bytes, ")
                .u64(done.pages)
                .str(" pages, pause ");
            l.u64(done.pause_ns / 1000)
                .str(" us, write ")
                .u64(done.write_ns / 1_000_000)
                .str(" ms)");
            report::log(LogLevel::Info, l.as_bytes());
            if cap.barrier_page != 0 {
                crate::barrier::Barrier::writer_waits_for_comparison(
                    cap.report_path.as_bytes(),
                    cap.request_id,
                );
            }
            sys::exit_group(0)
        }
        Err(e) => {
            let msg = e.to_string();
            let _ = sys::unlink(tmp.as_cstr());
            let mut l = report::Line::new();
            l.str("checkpoint ").u64(cap.seq).str(" failed: ").str(&msg);
            report::error_report(cap.report_path.as_bytes(), msg.as_bytes());
            report::log(LogLevel::Info, l.as_bytes());
            sys::exit_group(1)
        }
    }
}

/// Minor page faults of the application process so far (`/proc/PID/stat` field 10): taken
/// at the start and the end of the write, the difference is mostly the copy-on-write faults
/// the forked checkpoint costs the running program.
fn parent_minor_faults(pid: i32) -> Option<u64> {
    let mut p = FixBuf::<64>::new();
    p.str("/proc/").i64(pid as i64).str("/stat");
    let stat = procfs::read_proc_string(p.as_cstr());
    procfs::stat_fields(&stat)?.get(10).copied()
}

struct Done {
    bytes: u64,
    pages: u64,
    /// The parent of an incremental image; else why the image is whole, when one was asked.
    parent: Option<String>,
    full_reason: String,
    /// Present pages left to the parent.
    inherited: u64,
    /// What a child image will name this one by.
    digest: String,
    pause_ns: u64,
    write_ns: u64,
    /// Monotonic times the memory walk and the last chunk were done (debug log).
    t_walked: u64,
    t_chunks: u64,
}

/// Called by the writer, not in the pause: reading and removing the request file costs
/// file-system calls the application need not wait for.
fn choose_output_path(cap: &mut Capture, rt: &Runtime, pid: i32, id: u64) {
    cap.out_path.clear();
    if id != 0 {
        // `forkpoint checkpoint --output` leaves the path in request.<id>.
        let mut req = FixBuf::<4096>::new();
        report::runtime_file(&mut req, pid, "request", id);
        let mut path = [0u8; 4096];
        if let Ok(fd) = sys::open(
            req.as_cstr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            0,
        ) {
            let n = sys::read_full(fd, &mut path).unwrap_or(0);
            sys::close(fd);
            let _ = sys::unlink(req.as_cstr());
            let p = procfs::request_options(&path[..n]).0;
            if !p.is_empty() {
                cap.out_path.push(p);
                return;
            }
        }
    }
    default_image_path(&mut cap.out_path, rt, pid, cap.seq);
}

/// Where checkpoint `seq` of process `pid` goes without `--output`: `DIR/NAME.fpk` with a
/// stable name for the job (`--name`: each checkpoint replaces the last), else
/// `DIR/PROG.PID.SEQ.fpk`.
pub fn default_image_path<const N: usize>(out: &mut FixBuf<N>, rt: &Runtime, pid: i32, seq: u64) {
    out.str(&rt.config.dir).str("/");
    match &rt.config.name {
        Some(name) => out.str(name),
        None => out.str(&rt.prog).str(".").i64(pid as i64).str(".").u64(seq),
    };
    out.str(".fpk");
}

/// Sequential output to the temporary image file.
struct Out {
    fd: i32,
    pos: u64,
    path: Vec<u8>,
}

impl Out {
    fn write(&mut self, mut b: &[u8]) -> Result<(), WriteError> {
        while !b.is_empty() {
            match sys::pwrite(self.fd, b, self.pos) {
                Ok(0) => return Err(WriteError::os("cannot write", &self.path, libc::EIO)),
                Ok(n) => {
                    b = &b[n..];
                    self.pos += n as u64;
                }
                Err(libc::EINTR) => {}
                Err(e) => return Err(WriteError::os("cannot write", &self.path, e)),
            }
        }
        Ok(())
    }
}

fn readlink_string(path: &[u8]) -> String {
    let mut buf = vec![0u8; 4096];
    match sys::readlink(path, &mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(_) => String::new(),
    }
}

fn cpath(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn is_zero_page(p: &[u8]) -> bool {
    let (pre, words, post) = {
        // SAFETY: u64 has no invalid bit patterns; align_to splits correctly.
        unsafe { p.align_to::<u64>() }
    };
    // Most stored pages are not zero and say so in their first bytes: look there first,
    // then in blocks of 64 bytes, stopping at the first non-zero block.
    pre.iter().all(|&b| b == 0)
        && post.iter().all(|&b| b == 0)
        && words
            .chunks(8)
            .all(|b| b.iter().fold(0u64, |a, &w| a | w) == 0)
}

/// Ranges of this library's own mutable state, which the writer keeps using: never dropped.
fn own_addresses(threads: &[ThreadCapture]) -> [u64; 5] {
    [
        CAPTURE.get() as u64,
        THREADS.get() as u64,
        RESTORE_INFO.get() as u64,
        &crate::state::WRITER_PID as *const _ as u64,
        // The writer runs on the leader's TLS.
        threads.first().map_or(0, |t| t.fs_base),
    ]
}

fn thread_state(t: &ThreadCapture) -> ThreadState {
    let name_len = t.name.iter().position(|&c| c == 0).unwrap_or(16);
    ThreadState {
        tid: t.tid,
        name: String::from_utf8_lossy(&t.name[..name_len]).into_owned(),
        regs: t.regs,
        fs_base: t.fs_base,
        sigmask: t.sigmask,
        sigaltstack: AltStack {
            sp: t.altstack.0,
            flags: t.altstack.1,
            size: t.altstack.2,
        },
        tid_address: t.tid_address,
        robust_list: t.robust_list.0,
        robust_list_len: t.robust_list.1,
        rseq: t.rseq.map(|(addr, len, sig)| Rseq { addr, len, sig }),
        affinity: {
            let used = t
                .affinity
                .iter()
                .rposition(|&w| w != 0)
                .map_or(0, |i| i + 1);
            t.affinity[..used].to_vec()
        },
        sched_policy: t.sched.0,
        sched_priority: t.sched.1,
    }
}

/// The stopped threads, leader first.
fn threads(cap: &Capture) -> &'static [ThreadCapture] {
    // SAFETY: the writer has one thread; the slots are a snapshot nobody writes any more.
    let all = unsafe { &*THREADS.get() };
    &all[..cap.n_threads.min(all.len())]
}

fn write_image(cap: &Capture, t_child: u64, tmp: &mut FixBuf<4200>) -> Result<Done, WriteError> {
    let rt = RUNTIME
        .get()
        .ok_or(WriteError::Setup("library not initialized"))?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let tmp_path = tmp.as_cstr().to_vec();
    let _ = sys::unlink(&tmp_path);
    let fd = sys::open(&tmp_path, flags, 0o600)
        .map_err(|e| WriteError::os("cannot create", &tmp_path[..tmp_path.len() - 1], e))?;
    let mut out = Out {
        fd,
        pos: 0,
        path: tmp_path[..tmp_path.len() - 1].to_vec(),
    };
    let result = write_body(cap, rt, t_child, &mut out);
    let done = match result {
        Ok(d) => d,
        Err(e) => {
            sys::close(fd);
            return Err(e);
        }
    };
    let t_written = sys::monotonic_ns();
    sys::fsync(fd).map_err(|e| WriteError::os("cannot fsync", &out.path, e))?;
    sys::close(fd);
    if report::log_enabled(LogLevel::Debug) {
        let ms = |a: u64, b: u64| b.saturating_sub(a) / 1_000_000;
        let mut l = report::Line::new();
        l.str("checkpoint ")
            .u64(cap.seq)
            .str(": memory walked after ");
        l.u64(ms(t_child, done.t_walked))
            .str(" ms, chunks written after ");
        l.u64(ms(t_child, done.t_chunks))
            .str(" ms, metadata after ");
        l.u64(ms(t_child, t_written)).str(" ms, fsync ");
        l.u64(ms(t_written, sys::monotonic_ns())).str(" ms");
        report::log(LogLevel::Debug, l.as_bytes());
    }
    let mut fin = FixBuf::<4200>::new();
    fin.push(cap.out_path.as_bytes());
    sys::rename(&tmp_path, fin.as_cstr())
        .map_err(|e| WriteError::os("cannot rename the image to", cap.out_path.as_bytes(), e))?;
    // The rename is durable once the directory is.
    let dir_end = cap
        .out_path
        .as_bytes()
        .iter()
        .rposition(|&c| c == b'/')
        .unwrap_or(0);
    let mut dir = FixBuf::<4200>::new();
    dir.push(if dir_end == 0 {
        b"/"
    } else {
        &cap.out_path.as_bytes()[..dir_end]
    });
    if let Ok(dfd) = sys::open(
        dir.as_cstr(),
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    ) {
        let _ = sys::fsync(dfd);
        sys::close(dfd);
    }
    record_last_image(cap, &done.digest);
    Ok(done)
}

/// `<runtime>/<pid>/last-image.0`: the image the next incremental checkpoint builds on (its
/// checkpoint, time, digest and path), written once the image is durable.
fn record_last_image(cap: &Capture, digest: &str) {
    let mut body = FixBuf::<4400>::new();
    body.str("seq=")
        .u64(cap.seq)
        .str("\ntime=")
        .u64(cap.time_unix_ns);
    body.str("\ndigest=").str(digest).str("\npath=");
    body.push(cap.out_path.as_bytes()).str("\n");
    report::write_report(last_image_path(cap).as_bytes(), body.as_bytes());
}

/// `last-image.0` next to this checkpoint's report, in the process's runtime directory.
fn last_image_path(cap: &Capture) -> FixBuf<4200> {
    let report = cap.report_path.as_bytes();
    let mut path = FixBuf::<4200>::new();
    if let Some(slash) = report.iter().rposition(|&c| c == b'/') {
        path.push(&report[..=slash]).str("last-image.0");
    }
    path
}

/// The image an incremental one builds on: the last checkpoint's, if it completed, is still
/// what it wrote, and is not about to be replaced by this one.
fn parent_image(cap: &Capture) -> Result<image::ParentImage, String> {
    let want = crate::track::parent_seq();
    let text = procfs::read_proc_string(last_image_path(cap).as_cstr());
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .unwrap_or("")
    };
    let seq: u64 = field("seq").parse().unwrap_or(0);
    if seq != want || want == 0 {
        return Err(format!(
            "the last checkpoint ({want}) did not complete: written whole"
        ));
    }
    let parent_path = field("path").to_string();
    if parent_path.as_bytes() == cap.out_path.as_bytes() {
        return Err(
            "this image would replace its own parent (a stable --name or --output): written whole"
                .into(),
        );
    }
    let digest = field("digest");
    let changed =
        || format!("the last image {parent_path} changed since it was written: written whole");
    let actual = metadata_digest_of(&parent_path).ok_or_else(changed)?;
    if actual != digest {
        return Err(changed());
    }
    Ok(image::ParentImage {
        digest: actual,
        path: parent_path,
        seq,
        time_unix_ns: field("time").parse().unwrap_or(0),
    })
}

/// [`image::metadata_digest`] of the image at `path` (its footer checked).
fn metadata_digest_of(path: &str) -> Option<String> {
    let fd = sys::open(&cpath(path), libc::O_RDONLY | libc::O_CLOEXEC, 0).ok()?;
    let digest = (|| {
        let len = sys::fstat(fd).ok()?.st_size as u64;
        let mut fb = [0u8; image::FOOTER_LEN];
        let flen = image::FOOTER_LEN as u64;
        if len < flen || sys::pread(fd, &mut fb, len - flen).ok()? != image::FOOTER_LEN {
            return None;
        }
        let footer = image::parse_footer(&fb, len).ok()?;
        let mut mb = vec![0u8; footer.metadata_len as usize];
        if sys::pread(fd, &mut mb, footer.metadata_offset).ok()? != mb.len()
            || image::crc32(&mb) != footer.metadata_crc32
        {
            return None;
        }
        Some(image::metadata_digest(&mb))
    })();
    sys::close(fd);
    digest
}

/// The inherited runs an incremental image lists, built page by page in address order.
#[derive(Default)]
struct Inherited {
    runs: Vec<image::PageRun>,
    /// Where the written-set lookup is (pages come in increasing order).
    cursor: usize,
    joinable: bool,
}

impl Inherited {
    /// A new mapping begins: its runs must not join the last one's (a run lies in one).
    fn break_run(&mut self) {
        self.joinable = false;
    }

    fn add(&mut self, addr: u64) {
        let joinable = core::mem::replace(&mut self.joinable, true);
        if let Some(last) = self.runs.last_mut().filter(|_| joinable) {
            if last.addr + last.pages * PAGE_SIZE == addr {
                last.pages += 1;
                return;
            }
        }
        self.runs.push(image::PageRun { addr, pages: 1 });
    }

    fn written_at(&mut self, written: &forkpoint_image::pages::PageSet, addr: u64) -> bool {
        let r = written.ranges();
        while self.cursor < r.len() && r[self.cursor].1 <= addr {
            self.cursor += 1;
        }
        r.get(self.cursor).is_some_and(|&(s, _)| s <= addr)
    }
}

fn write_body(
    cap: &Capture,
    rt: &crate::state::Runtime,
    t_child: u64,
    out: &mut Out,
) -> Result<Done, WriteError> {
    // An incremental image: what the pause tracked, and the image it builds on.
    let (incremental, full_reason) = match crate::track::child_view()
        .and_then(|view| parent_image(cap).map(|parent| (view, parent)))
    {
        Ok(x) => (Some(x), String::new()),
        Err(why) => (None, why),
    };
    let header = if incremental.is_some() {
        Header::incremental()
    } else {
        Header::current()
    };
    let mut header_page = vec![0u8; PAGE];
    header_page[..image::HEADER_LEN].copy_from_slice(&header.encode());
    out.write(&header_page)?;

    let mut meta = Metadata::default();
    let mut inherited = Inherited::default();
    // Before the memory walk: it drops pages (the main stack holds argv and environ).
    describe_process(cap, &mut meta, out)?;
    let maps_text = procfs::read_proc_string(b"/proc/self/maps\0");
    let (arena_lo, arena_hi) = crate::arena::arena_range();
    let (stack_lo, stack_hi) = rt.child_stack;
    let entries = procfs::parse_maps(&maps_text);
    let entries = procfs::split_around(entries, arena_lo as u64, arena_hi as u64);
    let entries = procfs::split_around(entries, stack_lo as u64, stack_hi as u64);
    let (track_lo, track_hi) = crate::track::buffer_range();
    let mut entries = procfs::split_around(entries, track_lo, track_hi);
    let copies = &cap.shared_copies[..cap.n_shared_copies];
    for &(_, len, buf) in copies {
        entries = procfs::split_around(entries, buf, buf + len);
    }
    let pagemap = sys::open(b"/proc/self/pagemap\0", libc::O_RDONLY | libc::O_CLOEXEC, 0)
        .map_err(|e| WriteError::os("cannot open", b"/proc/self/pagemap", e))?;
    let selfmem = sys::open(b"/proc/self/mem\0", libc::O_RDONLY | libc::O_CLOEXEC, 0)
        .map_err(|e| WriteError::os("cannot open", b"/proc/self/mem", e))?;
    let own = own_addresses(threads(cap));
    let threads = rt.config.writer_threads.unwrap_or_else(sys::cpu_count);
    let mut chunker = Chunker::new(rt.config.zstd_level, out.fd, out.pos, threads)?;
    // `forkpoint checkpoint` shows how far the write is (on a terminal): report.<id> ->
    // progress.<id>, next to it; the command removes it with the report.
    let mut progress = FixBuf::<4200>::new();
    if cap.request_id != 0 {
        let report = cap.report_path.as_bytes();
        if let Some(at) = report.windows(7).rposition(|w| w == b"report.") {
            progress
                .push(&report[..at])
                .str("progress.")
                .push(&report[at + 7..]);
            let flags =
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_NOFOLLOW;
            chunker.progress_fd = sys::open(progress.as_cstr(), flags, 0o600).unwrap_or(-1);
        }
    }
    let mut pm = vec![0u64; PAGEMAP_BATCH];
    let mut page_buf = vec![0u8; PAGE];

    let mut prev: Option<&procfs::MapsEntry> = None;
    for e in &entries {
        let prev_entry = prev.replace(e);
        let prev = prev_entry;
        if e.start >= arena_lo as u64 && e.end <= arena_hi as u64 {
            continue; // the writer's own arena
        }
        if copies
            .iter()
            .any(|&(_, len, buf)| e.start >= buf && e.end <= buf + len)
        {
            continue; // the pause's copies of shared memory (saved as that memory)
        }
        meta.stats.pages_mapped += (e.end - e.start) / PAGE_SIZE;
        let library_own = (e.start >= stack_lo as u64 && e.end <= stack_hi as u64)
            || (e.start >= track_lo && e.end <= track_hi);
        if library_own {
            meta.mappings.push(Mapping {
                start: e.start,
                end: e.end,
                prot: e.prot(),
                shared: e.shared,
                offset: 0,
                name: e.name.clone(),
                kind: MappingKind::Anonymous,
                contents: Contents::Empty,
                approximation: None,
                memory_object: None,
            });
            continue;
        }
        let mut approximation = None;
        let (kind, contents, private_file, read_all) = match procfs::plan_mapping(e) {
            Plan::Save(kind, contents) => (kind, contents, false, false),
            Plan::File { path, shared } => match sys::stat(&cpath(&path)) {
                Ok(st) if st.st_ino == e.inode && (st.st_mode & libc::S_IFMT) == libc::S_IFREG => {
                    let id = procfs::file_id(&path, &st);
                    if shared {
                        (
                            MappingKind::SharedFile { file: id },
                            Contents::NotStored,
                            false,
                            false,
                        )
                    } else {
                        (
                            MappingKind::File { file: id },
                            Contents::Stored,
                            true,
                            false,
                        )
                    }
                }
                _ => {
                    let how = format!(
                        "anonymous memory with the saved contents: {path} changed or vanished since it was mapped"
                    );
                    meta.warnings.push(format!(
                        "mapping {:#x}-{:#x}: restored as {how}",
                        e.start, e.end
                    ));
                    approximation = Some(how);
                    (
                        if shared {
                            MappingKind::SharedAnonymous
                        } else {
                            MappingKind::Anonymous
                        },
                        Contents::Stored,
                        false,
                        true,
                    )
                }
            },
            Plan::Orphaned { shared, why } => {
                let how = format!(
                    "{} anonymous memory with the saved contents: {why}",
                    if shared { "shared" } else { "private" }
                );
                meta.warnings.push(format!(
                    "mapping {:#x}-{:#x}: restored as {how}",
                    e.start, e.end
                ));
                approximation = Some(how);
                let kind = if shared {
                    MappingKind::SharedAnonymous
                } else {
                    MappingKind::Anonymous
                };
                (kind, Contents::Stored, false, true)
            }
            Plan::Skip(why) => {
                meta.warnings.push(why);
                continue;
            }
        };
        // Fork leaves shared pages out of the child's page tables: pagemap cannot tell which
        // are in use, so every page is read (holes read as zero and are skipped).
        let read_all = read_all || matches!(kind, MappingKind::SharedAnonymous);
        let kind = match kind {
            MappingKind::Vdso { .. } => {
                let len = (e.end - e.start) as usize;
                // SAFETY: the vdso is mapped readable for the whole range in every process.
                let bytes = unsafe { core::slice::from_raw_parts(e.start as *const u8, len) };
                MappingKind::Vdso {
                    crc32: image::crc32(bytes),
                }
            }
            k => k,
        };
        if contents == Contents::Stored {
            chunker.break_run();
            inherited.break_run();
            // Dropping pages the writer itself may still use would break it: only the heap,
            // the main stack and large anonymous regions (malloc'd data), never a library's
            // .bss (anonymous, right after its file mapping) nor our own state.
            let after_file =
                prev.is_some_and(|p: &procfs::MapsEntry| p.end == e.start && p.inode != 0);
            let droppable = !e.shared
                && match kind {
                    MappingKind::Heap | MappingKind::Stack => true,
                    MappingKind::Anonymous => e.end - e.start >= 1 << 20 && !after_file,
                    _ => false,
                }
                && !own.iter().any(|&a| a >= e.start && a < e.end);
            let readable_direct = e.read && !read_all;
            // Tracked since the parent image: unchanged present pages are the parent's.
            let tracked = incremental.as_ref().filter(|(view, _)| {
                !e.shared
                    && !read_all
                    && matches!(
                        kind,
                        MappingKind::Heap | MappingKind::Stack | MappingKind::Anonymous
                    )
                    && view
                        .tracked
                        .clip(e.start, e.end)
                        .next()
                        .is_some_and(|(s, t)| s == e.start && t == e.end)
            });
            let npages = ((e.end - e.start) / PAGE_SIZE) as usize;
            let mut i = 0;
            while i < npages {
                let batch = (npages - i).min(PAGEMAP_BATCH);
                let addr0 = e.start + i as u64 * PAGE_SIZE;
                let pm_bytes = {
                    // SAFETY: u64 slice viewed as bytes for the kernel to fill.
                    unsafe {
                        core::slice::from_raw_parts_mut(pm.as_mut_ptr() as *mut u8, batch * 8)
                    }
                };
                let n = sys::pread(pagemap, pm_bytes, addr0 / PAGE_SIZE * 8).unwrap_or(0) / 8;
                for (k, &entry) in pm.iter().enumerate().take(batch) {
                    let addr = addr0 + k as u64 * PAGE_SIZE;
                    let wanted = if read_all {
                        true
                    } else {
                        k < n && procfs::page_needs_saving(entry, private_file)
                    };
                    if wanted {
                        if let Some((view, _)) = tracked {
                            if !inherited.written_at(&view.written, addr) {
                                inherited.add(addr);
                                meta.stats.pages_inherited += 1;
                                continue;
                            }
                        }
                    }
                    if !wanted {
                        if private_file && k < n && entry & procfs::PM_PRESENT != 0 {
                            meta.stats.pages_from_file += 1;
                        } else {
                            meta.stats.pages_untouched += 1;
                        }
                        continue;
                    }
                    let copied = cap.shared_copies[..cap.n_shared_copies]
                        .iter()
                        .find(|&&(s, l, _)| addr >= s && addr < s + l)
                        .map(|&(s, _, buf)| buf + (addr - s));
                    let in_place = droppable && readable_direct && copied.is_none();
                    let page: &[u8] = if let Some(src) = copied {
                        // SAFETY: the private copy the parent made of this shared page during
                        // the pause (mapped, readable, as long as the mapping).
                        unsafe { core::slice::from_raw_parts(src as *const u8, PAGE) }
                    } else if readable_direct {
                        // SAFETY: a readable page of our own address space, present per pagemap.
                        unsafe { core::slice::from_raw_parts(addr as *const u8, PAGE) }
                    } else {
                        // /proc/self/mem reads through protections and returns EIO past a
                        // file's end instead of raising SIGBUS.
                        match sys::pread(selfmem, &mut page_buf, addr) {
                            Ok(got) if got == PAGE => &page_buf,
                            _ => {
                                meta.stats.pages_untouched += 1;
                                continue;
                            }
                        }
                    };
                    if is_zero_page(page) {
                        meta.stats.pages_zero += 1;
                        continue;
                    }
                    meta.stats.pages_stored += 1;
                    chunker.add_page(addr, page, droppable, in_place)?;
                }
                i += batch;
            }
        } else if matches!(kind, MappingKind::SharedFile { .. }) {
            meta.stats.pages_from_file += (e.end - e.start) / PAGE_SIZE;
        }
        // Shared memory saved with its contents: which object, so that the processes of a
        // tree that share it share it again.
        let memory_object = (matches!(kind, MappingKind::SharedAnonymous)
            && contents == Contents::Stored)
            .then(|| MemoryObject {
                dev: libc::makedev(e.dev_major, e.dev_minor),
                inode: e.inode,
            });
        meta.mappings.push(Mapping {
            start: e.start,
            end: e.end,
            prot: e.prot(),
            shared: e.shared,
            offset: if matches!(
                kind,
                MappingKind::File { .. } | MappingKind::SharedFile { .. }
            ) || memory_object.is_some()
            {
                e.offset
            } else {
                0
            },
            name: e.name.clone(),
            kind,
            contents,
            approximation,
            memory_object,
        });
    }
    let t_walked = sys::monotonic_ns();
    let (chunks, chunks_end) = chunker.finish()?;
    if chunker.progress_fd >= 0 {
        sys::close(chunker.progress_fd);
        chunker.progress_fd = -1;
    }
    let t_chunks = sys::monotonic_ns();
    out.pos = chunks_end;
    sys::close(pagemap);
    sys::close(selfmem);
    meta.stats.bytes_raw = chunker.bytes_raw;
    meta.stats.bytes_stored = chunker.bytes_stored;
    meta.stats.zstd_level = rt.config.zstd_level;
    meta.chunks = chunks;
    meta.inherited = inherited.runs;
    let parent_path = incremental.as_ref().map(|(_, p)| p.path.clone());
    meta.parent = incremental.map(|(_, p)| p);

    meta.stats.pause_ns = t_child.saturating_sub(cap.t_start_ns);
    meta.stats.write_ns = sys::monotonic_ns().saturating_sub(t_child);

    let meta_bytes = image::encode_metadata(&meta);
    let metadata_offset = out.pos;
    out.write(&meta_bytes)?;
    let footer = Footer {
        metadata_offset,
        metadata_len: meta_bytes.len() as u64,
        metadata_crc32: image::crc32(&meta_bytes),
        metadata_encoding: image::METADATA_ENCODING_JSON,
        file_len: out.pos + image::FOOTER_LEN as u64,
    };
    out.write(&footer.encode())?;
    Ok(Done {
        bytes: out.pos,
        pages: meta.stats.pages_stored,
        parent: parent_path,
        full_reason,
        inherited: meta.stats.pages_inherited,
        digest: image::metadata_digest(&meta_bytes),
        pause_ns: meta.stats.pause_ns,
        write_ns: sys::monotonic_ns().saturating_sub(t_child),
        t_walked,
        t_chunks,
    })
}

/// Everything but memory: process, thread, descriptors, signals, limits, CPU.
fn describe_process(cap: &Capture, meta: &mut Metadata, out: &mut Out) -> Result<(), WriteError> {
    let status = procfs::read_proc_string(b"/proc/self/status\0");
    let ids = |key: &str| -> (u32, u32) {
        let f: Vec<u32> = procfs::status_field(&status, key)
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        (
            f.first().copied().unwrap_or(0),
            f.get(1).copied().unwrap_or(0),
        )
    };
    let (uid, euid) = ids("Uid");
    let (gid, egid) = ids("Gid");
    let u = sys::uname();
    let cstr_field = |f: &[libc::c_char]| -> String {
        let b: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&b).into_owned()
    };
    let cmdline = procfs::read_proc(b"/proc/self/cmdline\0").unwrap_or_default();
    meta.process = ProcessInfo {
        exe: readlink_string(b"/proc/self/exe\0"),
        cmdline: cmdline
            .split(|&c| c == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
        pid: cap.pid,
        ppid: cap.ppid,
        uid,
        gid,
        euid,
        egid,
        groups: procfs::status_field(&status, "Groups")
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect(),
        cwd: readlink_string(b"/proc/self/cwd\0"),
        umask: procfs::status_field(&status, "Umask")
            .and_then(|s| u32::from_str_radix(s, 8).ok())
            .unwrap_or(0o022),
        hostname: cstr_field(&u.nodename),
        kernel_release: cstr_field(&u.release),
    };
    meta.checkpoint = image::CheckpointInfo {
        seq: cap.seq,
        trigger: cap.trigger.name().to_string(),
        request_id: cap.request_id,
        time_unix_ns: cap.time_unix_ns,
        generation: cap.generation,
    };
    meta.library = image::LibraryInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        restore_info_addr: RESTORE_INFO.get() as u64,
        thread_table_addr: crate::thread_ids::THREAD_TABLE.get() as u64,
        thread_table_len: MAX_THREADS as u32,
    };

    let stat = procfs::read_proc_string(b"/proc/self/stat\0");
    let f = procfs::stat_fields(&stat).unwrap_or_default();
    let g = |i: usize| f.get(i).copied().unwrap_or(0);
    // SAFETY: brk(0) only queries the current break.
    let brk = unsafe { sys::syscall6(libc::SYS_brk, 0, 0, 0, 0, 0, 0) } as u64;
    let auxv = procfs::read_proc(b"/proc/self/auxv\0").unwrap_or_default();
    meta.mm = MmFields {
        start_code: g(26),
        end_code: g(27),
        start_stack: g(28),
        start_data: g(45),
        end_data: g(46),
        start_brk: g(47),
        brk,
        arg_start: g(48),
        arg_end: g(49),
        env_start: g(50),
        env_end: g(51),
        auxv: auxv
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect(),
    };

    meta.threads = threads(cap).iter().map(thread_state).collect();

    meta.cpu = cpu_info(cap);

    let it = |k: usize| image::Itimer {
        value_ns: cap.itimers[k].0,
        interval_ns: cap.itimers[k].1,
    };
    meta.timers.itimers = [it(0), it(1), it(2)];
    let listing = procfs::parse_timers(&String::from_utf8_lossy(cap.timers_text.as_bytes()));
    for &(id, value_ns, interval_ns) in &cap.posix_timers[..cap.n_posix_timers] {
        if let Some((_, signo, sigev_value, notify, clockid)) = listing.iter().find(|t| t.0 == id) {
            meta.timers.posix.push(image::PosixTimer {
                id,
                clockid: *clockid,
                notify: notify.clone(),
                signo: *signo,
                sigev_value: *sigev_value,
                value_ns,
                interval_ns,
            });
        }
    }
    // SAFETY: personality(0xffffffff) only queries.
    let personality = unsafe { sys::syscall6(libc::SYS_personality, 0xffff_ffff, 0, 0, 0, 0, 0) };
    let caps = |key: &str| {
        procfs::status_field(&status, key)
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .unwrap_or(0)
    };
    meta.attributes = image::ProcessAttributes {
        cap_effective: caps("CapEff"),
        cap_permitted: caps("CapPrm"),
        nice: cap.nice,
        personality: personality.max(0) as u32,
        no_new_privs: sys::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0).unwrap_or(0) == 1,
        dumpable: cap.dumpable,
        pdeathsig: cap.pdeathsig,
        child_subreaper: cap.child_subreaper,
    };

    for sig in 1..=64u32 {
        if sig == 9 || sig == 19 {
            continue;
        }
        if let Ok(a) = sys::sigaction_get(sig as i32) {
            meta.signals.push(SigAction {
                signo: sig,
                handler: a.handler,
                flags: a.flags,
                restorer: a.restorer,
                mask: a.mask,
            });
        }
    }
    for res in 0..16u32 {
        if let Ok((cur, max)) = sys::prlimit(res) {
            meta.rlimits.push(Rlimit {
                resource: res,
                cur,
                max,
            });
        }
    }
    if cap.fds_truncated {
        meta.warnings.push(format!(
            "more than {} descriptors: the rest were not saved",
            crate::state::MAX_FDS
        ));
    }
    let copies: Vec<PipeCopy> = cap.pipe_copies[..cap.n_pipe_copies]
        .iter()
        .map(|&(ino, copy_fd)| PipeCopy { ino, copy_fd })
        .collect();
    let ctx = FdContext::new(&cap.fd_offsets[..cap.n_fds], &copies);
    let mut warnings = Vec::new();
    for &(fd, offset) in &cap.fd_offsets[..cap.n_fds] {
        let entry = fds::describe(&ctx, fd, offset, &mut warnings, &mut |bytes| {
            store_blob(out, &mut meta.blobs, bytes)
        })?;
        meta.fds.push(entry);
    }
    meta.fds.sort_by_key(|f| f.fd);
    for &(start, len, wipe) in &cap.advised[..cap.n_advised] {
        let advice = if wipe { "wipeonfork" } else { "dontfork" };
        meta.memory_advice.push(image::MemoryAdvice {
            start,
            len,
            advice: advice.into(),
        });
    }
    // mlock is not inherited by fork: the parent's smaps says which ranges it locked. Reading
    // smaps walks every page table of the running parent: only when its status says it has
    // locked memory at all.
    let mut status = FixBuf::<64>::new();
    status.str("/proc/").i64(cap.pid as i64).str("/status");
    let status_text = procfs::read_proc_string(status.as_cstr());
    let locked = procfs::status_field(&status_text, "VmLck")
        .is_none_or(|v| v.split_whitespace().next() != Some("0"));
    let smaps_text = if locked {
        let mut smaps = FixBuf::<64>::new();
        smaps.str("/proc/").i64(cap.pid as i64).str("/smaps");
        procfs::read_proc_string(smaps.as_cstr())
    } else {
        String::new()
    };
    for (start, end) in procfs::smaps_ranges_with_flag(&smaps_text, "lo") {
        meta.memory_advice.push(image::MemoryAdvice {
            start,
            len: end - start,
            advice: "mlock".into(),
        });
    }
    meta.locks = fds::locks_held(cap.pid, &cap.fd_offsets[..cap.n_fds]);
    meta.warnings.extend(warnings);
    Ok(())
}

/// Writes `bytes` at the current end of the image as a raw blob; returns its index.
fn store_blob(out: &mut Out, blobs: &mut Vec<DataBlob>, bytes: &[u8]) -> Result<u32, WriteError> {
    let offset = out.pos;
    out.write(bytes)?;
    blobs.push(DataBlob {
        offset,
        len: bytes.len() as u64,
        crc32: image::crc32(bytes),
    });
    Ok((blobs.len() - 1) as u32)
}

fn cpu_info(cap: &Capture) -> CpuInfo {
    use core::arch::x86_64::{__cpuid, __cpuid_count};
    let (l0, l1, l7) = (__cpuid(0), __cpuid(1), __cpuid_count(7, 0));
    let mut vendor = Vec::with_capacity(12);
    for r in [l0.ebx, l0.edx, l0.ecx] {
        vendor.extend_from_slice(&r.to_le_bytes());
    }
    let osxsave = l1.ecx & (1 << 27) != 0;
    let xcr0 = if osxsave { xgetbv0() } else { 0 };
    CpuInfo {
        vendor: String::from_utf8_lossy(&vendor).into_owned(),
        cpuid_1_ecx: l1.ecx,
        cpuid_1_edx: l1.edx,
        cpuid_7_ebx: l7.ebx,
        cpuid_7_ecx: l7.ecx,
        cpuid_7_edx: l7.edx,
        xcr0,
        xsave_required: threads(cap).iter().fold(0, |a, t| a | t.xstate_bv),
        xsave_frame_size: threads(cap).iter().map(|t| t.xsave_size).max().unwrap_or(0),
    }
}

fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV with ECX=0 is valid when CPUID reports OSXSAVE (checked by the caller).
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack))
    };
    (hi as u64) << 32 | lo as u64
}
