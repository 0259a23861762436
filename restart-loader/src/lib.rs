//! The restart loader: verify an image and the machine, plan the address space, stage
//! memory and descriptors, then hand over to the restore blob. The process that calls
//! [`restore`] becomes the checkpointed program (same PID), or gets an error having changed
//! nothing it cannot undo (the staged memory and files opened for reading are discarded
//! with the process).
//!
//! Unsafe code is denied here and allowed module by module below, each saying why; `plan`
//! (and the image parsing it uses) has none.
#![deny(unsafe_code)]

#[allow(unsafe_code)] // the restore blob: position-independent code the loader jumps to
mod blob;
#[allow(unsafe_code)] // descriptors created and moved with raw syscalls
mod fds;
#[allow(unsafe_code)] // userfaultfd, the helper's clone and its ioctls
pub mod lazy;
pub mod lazymap;
pub mod plan;
pub mod progress;
#[allow(unsafe_code)] // writes into the staged memory of the program
mod stage;
#[allow(unsafe_code)] // the raw syscalls
mod sys;
#[allow(unsafe_code)] // namespaces, clone3 with set_tid, the tree's pipes
mod tree;
#[allow(unsafe_code)] // cpuid and the xsave feature probe
pub mod verify;

use std::fmt;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Instant;

use forkpoint_image::{ImageFile, PAGE_SIZE};

/// Options of `forkpoint restart`.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Print each step and its timing to stderr.
    pub verbose: bool,
    /// Restore an image owned by another user.
    pub allow_foreign_owner: bool,
    /// Refuse an image that holds anything not faithfully restorable.
    pub strict: bool,
    /// Hand over before the memory is filled: a helper fills it on demand and in the
    /// background (`restart --lazy`). Where that is not possible, the restore is eager.
    pub lazy: bool,
    /// Where to look for the parents of an incremental image, besides its directory.
    pub images_dir: Option<std::path::PathBuf>,
}

/// Why a restore was refused (before the point of no return) or failed (after it).
#[derive(Debug)]
pub enum RestoreError {
    /// The image cannot be read, or is damaged.
    Image {
        path: std::path::PathBuf,
        source: forkpoint_image::ReadError,
    },
    /// The image does not fit this machine, its files or this user; the message says how.
    Refused(String),
    /// A system call failed while staging the program.
    Os {
        what: String,
        source: std::io::Error,
    },
    /// A system call failed; the kernel's answer is already part of the message.
    Failed(String),
}

impl RestoreError {
    fn os(what: String, source: std::io::Error) -> Self {
        RestoreError::Os { what, source }
    }
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestoreError::Image { path, source } => write!(f, "{}: {source}", path.display()),
            RestoreError::Refused(why) | RestoreError::Failed(why) => f.write_str(why),
            RestoreError::Os { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for RestoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RestoreError::Image { source, .. } => Some(source),
            RestoreError::Os { source, .. } => Some(source),
            RestoreError::Refused(_) | RestoreError::Failed(_) => None,
        }
    }
}

/// Restores the image at `path` into the calling process (a tree image: into processes
/// this one starts, see [`tree`]). Returns only on failure. The caller must be
/// single-threaded.
pub fn restore(
    path: &Path,
    opts: &RestoreOptions,
) -> Result<std::convert::Infallible, RestoreError> {
    let img = ImageFile::open(path).map_err(|source| RestoreError::Image {
        path: path.to_path_buf(),
        source,
    })?;
    if img.metadata.tree.is_some() {
        return tree::restore_tree(path, &img, opts);
    }
    if img.metadata.parent.is_none() {
        return restore_process(path, &img, opts, None, &[]);
    }
    // An incremental image: every link is found and checked before anything else.
    let links = forkpoint_image::chain::resolve(path, img, opts.images_dir.as_deref())
        .map_err(|e| RestoreError::Refused(e.to_string()))?;
    for l in &links[1..] {
        verify::check_owner(&l.path, opts.allow_foreign_owner)?;
    }
    let metas: Vec<&forkpoint_image::Metadata> = links.iter().map(|l| &l.image.metadata).collect();
    let provided = forkpoint_image::chain::provided(&metas);
    let ancestors: Vec<(&ImageFile, &forkpoint_image::pages::PageSet)> = links[1..]
        .iter()
        .zip(&provided[1..])
        .map(|(l, p)| (&l.image, p))
        .collect();
    restore_process(path, &links[0].image, opts, None, &ancestors)
}

/// Restores one process from `img` into the calling process. A member of a tree waits at
/// the tree's barrier (`member`) before the point of no return.
fn restore_process(
    path: &Path,
    img: &ImageFile,
    opts: &RestoreOptions,
    member: Option<&tree::MemberSync>,
    ancestors: &[(&ImageFile, &forkpoint_image::pages::PageSet)],
) -> Result<std::convert::Infallible, RestoreError> {
    let t0 = Instant::now();
    let say = |what: &str| {
        if opts.verbose {
            eprintln!(
                "forkpoint restart: [{:>7.2} ms] {what}",
                t0.elapsed().as_secs_f64() * 1e3
            );
        }
    };
    // Verify.
    verify::check_owner(path, opts.allow_foreign_owner)?;
    let meta = &img.metadata;
    let creds = verify::credentials_to_take(meta)?;
    // In a tree, a pipe or socket to another member is restored faithfully.
    let unfaithful: Vec<&String> = meta
        .warnings
        .iter()
        .filter(|w| !member.is_some_and(|m| m.covers(meta, w)))
        .collect();
    if opts.strict && !unfaithful.is_empty() {
        let list: Vec<&str> = unfaithful.iter().map(|w| w.as_str()).collect();
        return Err(RestoreError::Refused(format!(
            "--strict: the image holds what cannot be restored faithfully:\n  {}",
            list.join("\n  ")
        )));
    }
    say(&format!(
        "read {}: {} mappings, {} chunks, {} descriptors",
        path.display(),
        meta.mappings.len(),
        meta.chunks.len(),
        meta.fds.len()
    ));
    verify::check_cpu(meta, verify::current_cpu())?;
    let file_warnings = verify::check_files(meta)?;
    let own_maps = plan::parse_maps(
        &std::fs::read_to_string("/proc/self/maps")
            .map_err(|e| RestoreError::os("cannot read /proc/self/maps".into(), e))?,
    );
    verify::check_vdso(meta, &own_maps)?;
    let vdso = plan::pair_vdso(meta, &own_maps).map_err(RestoreError::Refused)?;
    say("verified the machine, the files and the vdso");

    // Plan.
    let layout = plan::plan_layout(meta, &own_maps, plan::data_len_bound(meta))
        .map_err(RestoreError::Refused)?;
    say(&format!(
        "staging at {:#x}-{:#x}",
        layout.reservation.0, layout.reservation.1
    ));
    if !ancestors.is_empty() {
        say(&format!(
            "incremental image: {} older images provide {} MiB{}",
            ancestors.len(),
            ancestors.iter().map(|(_, p)| p.len_bytes()).sum::<u64>() >> 20,
            if opts.lazy {
                "; restored eagerly (a lazy restart takes one whole image: `forkpoint compact` makes one)"
            } else {
                ""
            }
        ));
    }
    let lazy = if opts.lazy && ancestors.is_empty() {
        start_lazy(path, img, &layout, member.is_some(), opts.verbose, t0)
    } else {
        None
    };
    if let Some(l) = &lazy {
        say(&format!(
            "lazy: {} of {} chunks filled after the hand-over, {} regions registered{}",
            l.split.lazy_chunks(),
            meta.chunks.len(),
            l.split.regions.len(),
            if l.working_set > 0 {
                format!(
                    ", {} chunks of the last working set filled first",
                    l.working_set
                )
            } else {
                String::new()
            }
        ));
    }

    // Stage memory.
    stage::map_regions(meta, &layout, member.map(|m| &m.shared))?;
    if let Some(l) = &lazy {
        stage::no_huge_pages(&layout, &l.split.regions);
    }
    let stage_map = stage::StageMap::new(meta, &layout);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // One restoring process shows progress; a tree's members restore side by side.
    let show_progress = member.is_none();
    let skip = lazy.as_ref().map(|l| l.split.lazy.as_slice());
    let mut pages = stage::fill_regions(img, &stage_map, threads, show_progress, skip)?;
    if !ancestors.is_empty() {
        pages += stage::fill_from_ancestors(ancestors, &stage_map, threads)?;
    }
    say(&format!(
        "decompressed {pages} pages ({} MiB) on {threads} threads",
        (pages * PAGE_SIZE) >> 20
    ));
    let pid = sys::getpid();
    // The library unmaps what is left of the reservation (vdso scratch and blob) once it runs.
    let leftover = (
        layout.vdso_scratch,
        layout.reservation.1 - layout.vdso_scratch,
    );
    stage::patch(meta, &stage_map, leftover, pid, lazy.is_some())?;
    stage::protect(meta, &layout)?;
    let advice_warnings = stage::apply_memory_advice(meta, &stage_map);

    // Stage descriptors.
    // Descriptors are placed above the program's highest one: the open-file limit must
    // allow that now (the program's own limits are set again later).
    let base = fds::spare_base(meta);
    sys::raise_nofile(base as u64 + meta.fds.len() as u64 + 16).map_err(RestoreError::Failed)?;
    let (prepared, mut warnings) = fds::prepare(img, base, member.map(|m| &m.shared))?;
    warnings.extend(unfaithful.into_iter().cloned());
    warnings.extend(advice_warnings);
    warnings.extend(file_warnings);
    warnings.extend(verify::credential_warnings(meta, creds.as_ref()));
    // Our own stderr, for the blob's messages.
    let err_fd = sys::dup_above(2, base + prepared.fds.len() as i32 + 1);

    // Build the blob.
    let exe_fd = verify::may_set_exe()
        .then(|| {
            // A descriptor for the blob's prctl, above the program's descriptors.
            let f = std::fs::File::open(&meta.process.exe).ok()?;
            Some(sys::dup_above(
                f.as_raw_fd(),
                base + prepared.fds.len() as i32 + 2,
            ))
        })
        .flatten()
        .filter(|&fd| fd >= 0);
    // A lazy restart: the blob registers the regions with the userfaultfd and closes the
    // helper's start pipe, both held above the program's descriptors until then.
    let lazy_fds = lazy.as_ref().map(|l| {
        let above = base + prepared.fds.len() as i32 + 3;
        (
            sys::dup_above(l.uffd.as_raw_fd(), above),
            sys::dup_above(l.started.ready.as_raw_fd(), above),
        )
    });
    if lazy_fds.is_some_and(|(u, r)| u < 0 || r < 0) {
        return Err(RestoreError::Failed(
            "cannot keep the userfaultfd for the restore program".into(),
        ));
    }
    let mm_restore = verify::mm_restore();
    let loader_mm = sys::current_mm();
    verify::check_loader_layout(mm_restore, loader_mm[4], meta.mm.start_brk)?;
    warnings.extend(verify::mm_restore_warning(mm_restore));
    if exe_fd.is_none() && !matches!(mm_restore, verify::MmRestore::Loader(_)) {
        warnings.push(format!(
            "/proc/PID/exe of the restored process names this forkpoint binary, not {}: \
             setting it needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN (argv, brk and auxv are \
             restored all the same)",
            meta.process.exe
        ));
    }
    // Debug (test) builds honour FORKPOINT_TEST_FAIL_STEP=N: step N of the restore program
    // fails, to test that the message names it. Release builds ignore it.
    let fail_step = if cfg!(debug_assertions) {
        std::env::var("FORKPOINT_TEST_FAIL_STEP")
            .ok()
            .and_then(|s| s.parse().ok())
    } else {
        None
    };
    let inputs = plan::ProgramInputs {
        meta,
        layout: &layout,
        vdso: &vdso,
        err_fd,
        exe_fd,
        fail_step,
        mm_restore,
        loader_mm,
        lazy: lazy
            .as_ref()
            .zip(lazy_fds)
            .map(|(l, (uffd, ready_fd))| plan::LazyRegistration {
                uffd,
                ready_fd,
                regions: &l.split.regions,
            }),
    };
    let data_at = layout.blob_start + PAGE_SIZE;
    let data = plan::build_program(&inputs, data_at).map_err(RestoreError::Refused)?;
    let stack_top = layout.blob_start + layout.blob_len;
    if data_at + data.bytes.len() as u64 > layout.thread_stacks {
        return Err(RestoreError::Failed(
            "internal error: the restore program does not fit its region".into(),
        ));
    }
    sys::place_blob(
        layout.blob_start,
        layout.blob_len,
        &[(layout.blob_start, blob::code()), (data_at, &data.bytes)],
    )
    .map_err(|e| RestoreError::os("cannot map the restore blob".into(), e))?;
    sys::mprotect(
        layout.blob_start,
        PAGE_SIZE,
        libc::PROT_READ | libc::PROT_EXEC,
    )
    .map_err(|e| RestoreError::os("cannot protect the restore blob".into(), e))?;
    say(&format!("restore program: {} steps", data.steps.len()));
    for w in &warnings {
        eprintln!("forkpoint restart: warning: {w}");
    }
    if opts.verbose {
        for (i, s) in data.steps.iter().enumerate() {
            eprintln!("forkpoint restart:   step {}: {s}", i + 1);
        }
    }
    if let Some(m) = member {
        say("staged; waiting for the other processes of the tree");
        m.staged()?;
    }
    say("handing over to the restore blob");
    // The image descriptor is closed with every other descriptor the program did not have.

    // Point of no return: descriptors, process attributes, signals, then the blob.
    let keep: Vec<i32> = [Some(err_fd), exe_fd]
        .into_iter()
        .flatten()
        .chain(lazy_fds.into_iter().flat_map(|(u, r)| [u, r]))
        .collect();
    hand_over(HandOver {
        meta,
        prepared,
        keep: &keep,
        committed: Committed { err_fd },
        creds: creds.as_ref(),
        mm_restore,
        loader_brk: loader_mm[4],
        blob_start: layout.blob_start,
        stack_top,
        program: data_at + data.program_offset as u64,
    })
}

/// A lazy restart under way: what was split off, the helper's start pipe, the userfaultfd.
struct Lazy {
    split: plan::LazySplit,
    working_set: usize,
    uffd: std::os::fd::OwnedFd,
    started: lazy::Started,
}

/// Opens the userfaultfd and starts the helper, or says why not (the restore is then eager:
/// a lazy restart is an optimisation, never a reason to refuse).
fn start_lazy(
    path: &Path,
    img: &ImageFile,
    layout: &plan::Layout,
    in_tree: bool,
    verbose: bool,
    t0: Instant,
) -> Option<Lazy> {
    let eager = |why: &str| {
        if verbose {
            eprintln!("forkpoint restart: not lazy, restoring eagerly: {why}");
        }
    };
    if in_tree {
        eager("a process tree is restored eagerly");
        return None;
    }
    let meta = &img.metadata;
    let mut working_set = lazy::read_working_set(path, img);
    // The working set is filled before the hand-over; a bound keeps that short.
    let mut bytes = 0u64;
    working_set.retain(|&c| {
        bytes += meta.chunks[c].raw_len;
        bytes <= WORKING_SET_LIMIT
    });
    let split = plan::split_lazy(meta, layout, &plan::pages_needed_first(meta), &working_set);
    if split.lazy_chunks() == 0 {
        eager("no chunk of the image can be filled after the hand-over");
        return None;
    }
    let uffd = match lazy::open_userfaultfd() {
        Ok(fd) => fd,
        Err(why) => {
            eager(&why);
            return None;
        }
    };
    let started = lazy::start_helper(&lazy::HelperInputs {
        img,
        image_path: path,
        split: &split,
        working_set: &working_set,
        uffd: &uffd,
        verbose,
        t0,
        hold_fill: cfg!(debug_assertions)
            && std::env::var_os("FORKPOINT_TEST_LAZY_HOLD").is_some_and(|v| v == "1"),
    });
    match started {
        Ok(started) => Some(Lazy {
            working_set: working_set.len(),
            split,
            uffd,
            started,
        }),
        Err(why) => {
            eager(&why);
            None
        }
    }
}

/// At most this much of the last working set is filled before a lazy hand-over.
const WORKING_SET_LIMIT: u64 = 256 << 20;

/// Past the point of no return the descriptor table is the program's: an error cannot go
/// back to the CLI (it would print on the program's descriptors and exit as if the restart
/// had been refused). [`hand_over`] returns `!`, so `?` does not compile there; a failure
/// goes through [`Committed::or_die`], which says what failed on the loader's own copy of
/// stderr and exits 127, as a failing blob step does.
struct Committed {
    err_fd: i32,
}

impl Committed {
    fn or_die<T>(&self, r: Result<T, RestoreError>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => {
                sys::write_line(
                    self.err_fd,
                    &format!(
                        "forkpoint restart: {e} (after the point of no return: the program cannot run)\n"
                    ),
                );
                sys::exit_now(127)
            }
        }
    }

    fn warn(&self, w: &str) {
        sys::write_line(self.err_fd, &format!("forkpoint restart: warning: {w}\n"));
    }
}

/// What the hand-over needs, all staged before the point of no return.
struct HandOver<'a> {
    meta: &'a forkpoint_image::Metadata,
    prepared: fds::PreparedFds,
    keep: &'a [i32],
    committed: Committed,
    creds: Option<&'a verify::Credentials>,
    mm_restore: verify::MmRestore,
    loader_brk: u64,
    blob_start: u64,
    stack_top: u64,
    program: u64,
}

/// Descriptors, process attributes, signals, then the jump into the blob.
fn hand_over(h: HandOver<'_>) -> ! {
    let (meta, c) = (h.meta, &h.committed);
    for w in c.or_die(fds::install(meta, h.prepared, h.keep)) {
        c.warn(&w);
    }
    for r in &meta.rlimits {
        // A failure (raising a hard limit without privilege) keeps ours and is said.
        if let Err(e) = sys::setrlimit(r.resource, r.cur, r.max) {
            c.warn(&format!(
                "resource limit {} ({} / {}) not restored: {e}",
                r.resource, r.cur, r.max
            ));
        }
    }
    sys::umask(meta.process.umask);
    if !meta.process.cwd.is_empty() {
        let _ = std::env::set_current_dir(&meta.process.cwd);
    }
    if let Some(creds) = h.creds {
        c.or_die(sys::take_credentials(creds).map_err(RestoreError::Failed));
    } else {
        // Never more capabilities than the program had (a root image with a reduced set).
        sys::limit_capabilities(meta.attributes.cap_effective, meta.attributes.cap_permitted);
    }
    sys::block_all_signals();
    for w in sys::restore_timers_and_attributes(meta) {
        c.warn(&w);
    }
    for s in &meta.signals {
        let _ = sys::set_kernel_sigaction(s.signo, s.handler, s.flags, s.restorer, s.mask);
    }
    c.or_die(sys::rseq_unregister().map_err(RestoreError::Failed));
    if matches!(h.mm_restore, verify::MmRestore::Loader(_))
        && sys::freeze_loader_brk(h.loader_brk).is_err()
    {
        c.warn("cannot freeze the loader's brk: the program's brk() calls may unmap its memory");
    }
    // SAFETY: code, program and stack are in the blob region, which the program never unmaps;
    // this thread is the only one (staging threads were joined).
    #[allow(unsafe_code)]
    unsafe {
        blob::jump(h.blob_start, h.stack_top, h.program)
    }
}
