//! The restart loader: verify an image and the machine, plan the address space, stage
//! memory and descriptors, then hand over to the restore blob. The process that calls
//! [`restore`] becomes the checkpointed program (same PID), or gets an error having changed
//! nothing it cannot undo (the staged memory and files opened for reading are discarded
//! with the process).

mod blob;
mod fds;
pub mod plan;
mod stage;
mod sys;
pub mod verify;

use std::fmt;
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
}

/// Why a restore was refused.
#[derive(Debug)]
pub struct RestoreError(pub String);

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RestoreError {}

/// Restores the image at `path` into the calling process. Returns only on failure.
/// The caller must be single-threaded.
pub fn restore(
    path: &Path,
    opts: &RestoreOptions,
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
    let img =
        ImageFile::open(path).map_err(|e| RestoreError(format!("{}: {e}", path.display())))?;
    verify::check_owner(path, opts.allow_foreign_owner)?;
    let meta = &img.metadata;
    let creds = verify::credentials_to_take(meta)?;
    if opts.strict && !meta.warnings.is_empty() {
        return Err(RestoreError(format!(
            "--strict: the image holds what cannot be restored faithfully:\n  {}",
            meta.warnings.join("\n  ")
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
            .map_err(|e| RestoreError(format!("cannot read /proc/self/maps: {e}")))?,
    );
    verify::check_vdso(meta, &own_maps)?;
    let vdso = plan::pair_vdso(meta, &own_maps).map_err(RestoreError)?;
    say("verified the machine, the files and the vdso");

    // Plan.
    let layout =
        plan::plan_layout(meta, &own_maps, plan::data_len_bound(meta)).map_err(RestoreError)?;
    say(&format!(
        "staging at {:#x}-{:#x}",
        layout.reservation.0, layout.reservation.1
    ));

    // Stage memory.
    stage::map_regions(meta, &layout)?;
    let stage_map = stage::StageMap::new(meta, &layout);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let pages = stage::fill_regions(&img, &stage_map, threads)?;
    say(&format!(
        "decompressed {pages} pages ({} MiB) on {threads} threads",
        (pages * PAGE_SIZE) >> 20
    ));
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    // The library unmaps what is left of the reservation (vdso scratch and blob) once it runs.
    let leftover = (
        layout.vdso_scratch,
        layout.reservation.1 - layout.vdso_scratch,
    );
    stage::patch(meta, &stage_map, leftover, pid)?;
    stage::protect(meta, &layout)?;
    let advice_warnings = stage::apply_memory_advice(meta, &stage_map);

    // Stage descriptors.
    // Descriptors are placed above the program's highest one: the open-file limit must
    // allow that now (the program's own limits are set again later).
    let base = fds::spare_base(meta);
    sys::raise_nofile(base as u64 + meta.fds.len() as u64 + 16).map_err(RestoreError)?;
    let (prepared, mut warnings) = fds::prepare(&img, base)?;
    warnings.extend(meta.warnings.iter().cloned());
    warnings.extend(advice_warnings);
    warnings.extend(file_warnings);
    warnings.extend(verify::credential_warnings(meta, creds.as_ref()));
    // SAFETY: duplicating our own stderr for the blob's messages.
    let err_fd = unsafe {
        libc::fcntl(
            2,
            libc::F_DUPFD_CLOEXEC,
            base + prepared.fds.len() as i32 + 1,
        )
    };

    // Build the blob.
    let exe_fd = verify::may_set_exe()
        .then(|| {
            let c = std::ffi::CString::new(meta.process.exe.as_str()).ok()?;
            // SAFETY: NUL-terminated path; a descriptor for the blob's prctl.
            let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            // SAFETY: moving it above the program's descriptors.
            (fd >= 0).then(|| unsafe {
                libc::fcntl(
                    fd,
                    libc::F_DUPFD_CLOEXEC,
                    base + prepared.fds.len() as i32 + 2,
                )
            })
        })
        .flatten()
        .filter(|&fd| fd >= 0);
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
    };
    let data_at = layout.blob_start + PAGE_SIZE;
    let data = plan::build_program(&inputs, data_at).map_err(RestoreError)?;
    let stack_top = layout.blob_start + layout.blob_len;
    if data_at + data.bytes.len() as u64 > layout.thread_stacks {
        return Err(RestoreError(
            "internal error: the restore program does not fit its region".into(),
        ));
    }
    let code = blob::code();
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    // SAFETY: the blob region is the end of our reservation.
    unsafe { sys::mmap_fixed(layout.blob_start, layout.blob_len, rw, anon, -1, 0) }
        .map_err(|e| RestoreError(format!("cannot map the restore blob: {e}")))?;
    // SAFETY: freshly mapped RW region of sufficient size (checked above).
    unsafe {
        sys::copy_to(layout.blob_start, code);
        sys::copy_to(data_at, &data.bytes);
    }
    sys::mprotect(
        layout.blob_start,
        PAGE_SIZE,
        libc::PROT_READ | libc::PROT_EXEC,
    )
    .map_err(|e| RestoreError(format!("cannot protect the restore blob: {e}")))?;
    say(&format!("restore program: {} steps", data.steps.len()));
    for w in &warnings {
        eprintln!("forkpoint restart: warning: {w}");
    }
    if opts.verbose {
        for (i, s) in data.steps.iter().enumerate() {
            eprintln!("forkpoint restart:   step {}: {s}", i + 1);
        }
    }
    say("handing over to the restore blob");
    // The image descriptor is closed with every other descriptor the program did not have.

    // Point of no return: descriptors, process attributes, signals, then the blob.
    let keep: Vec<i32> = [Some(err_fd), exe_fd].into_iter().flatten().collect();
    for w in fds::install(meta, &prepared, &keep)? {
        let line = format!("forkpoint restart: warning: {w}\n");
        // SAFETY: writing our own buffer to the loader's error descriptor.
        unsafe { libc::write(err_fd, line.as_ptr().cast(), line.len()) };
    }
    for r in &meta.rlimits {
        let lim = libc::rlimit {
            rlim_cur: r.cur,
            rlim_max: r.max,
        };
        // SAFETY: setrlimit with a valid struct; a failure (raising a hard limit without
        // privilege) keeps ours and is said.
        if unsafe { libc::setrlimit(r.resource as _, &lim) } != 0 {
            let line = format!(
                "forkpoint restart: warning: resource limit {} ({} / {}) not restored: {}\n",
                r.resource,
                r.cur,
                r.max,
                std::io::Error::last_os_error()
            );
            // SAFETY: writing our own buffer to the loader's error descriptor.
            unsafe { libc::write(err_fd, line.as_ptr().cast(), line.len()) };
        }
    }
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(meta.process.umask as libc::mode_t) };
    if !meta.process.cwd.is_empty() {
        let _ = std::env::set_current_dir(&meta.process.cwd);
    }
    if let Some(c) = &creds {
        sys::take_credentials(c).map_err(RestoreError)?;
    } else {
        // Never more capabilities than the program had (a root image with a reduced set).
        sys::limit_capabilities(meta.attributes.cap_effective, meta.attributes.cap_permitted);
    }
    sys::block_all_signals();
    for w in sys::restore_timers_and_attributes(meta) {
        let line = format!("forkpoint restart: warning: {w}\n");
        // SAFETY: writing our own buffer to the loader's error descriptor.
        unsafe { libc::write(err_fd, line.as_ptr().cast(), line.len()) };
    }
    for s in &meta.signals {
        let _ = sys::set_kernel_sigaction(s.signo, s.handler, s.flags, s.restorer, s.mask);
    }
    sys::rseq_unregister().map_err(RestoreError)?;
    let program = data_at + data.program_offset as u64;
    if matches!(mm_restore, verify::MmRestore::Loader(_))
        && sys::freeze_loader_brk(loader_mm[4]).is_err()
    {
        let line = b"forkpoint restart: warning: cannot freeze the loader's brk: the program's \
                     brk() calls may unmap its memory\n";
        // SAFETY: writing a static buffer to the loader's error descriptor.
        unsafe { libc::write(err_fd, line.as_ptr().cast(), line.len()) };
    }
    // SAFETY: code, program and stack are in the blob region, which the program never unmaps;
    // this thread is the only one (staging threads were joined).
    unsafe { blob::jump(layout.blob_start, stack_top, program) }
}
