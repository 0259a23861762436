//! Verify: everything checked before anything changes. The image itself was validated by
//! the reader; here the machine and the files the image depends on are checked.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;

use forkpoint_image::{FdKind, FdRestore, FileId, MappingKind, Metadata};

use crate::plan::Area;
use crate::RestoreError;

/// Feature bits that describe the machine, not the instruction set: never required.
const CPUID1_ECX_IGNORED: u32 = (1 << 27) | (1 << 31) | (1 << 3); // OSXSAVE, hypervisor, MONITOR
const CPUID7_EDX_IGNORED: u32 =
    (1 << 26) | (1 << 27) | (1 << 29) | (1 << 31) | (1 << 10) | (1 << 28); // speculation controls

/// Current CPU: (leaf1 ecx, edx, leaf7 ebx, ecx, edx, xcr0).
pub fn current_cpu() -> (u32, u32, u32, u32, u32, u64) {
    use core::arch::x86_64::{__cpuid, __cpuid_count};
    let (l1, l7) = (__cpuid(1), __cpuid_count(7, 0));
    let xcr0 = if l1.ecx & (1 << 27) != 0 {
        let (lo, hi): (u32, u32);
        // SAFETY: XGETBV(0) is valid when OSXSAVE is set (checked above).
        unsafe {
            core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack))
        };
        (hi as u64) << 32 | lo as u64
    } else {
        0
    };
    (l1.ecx, l1.edx, l7.ebx, l7.ecx, l7.edx, xcr0)
}

fn missing_bits(saved: u32, now: u32, ignored: u32) -> u32 {
    saved & !now & !ignored
}

const XSAVE_NAMES: &[(u32, &str)] = &[
    (0, "x87"),
    (1, "SSE"),
    (2, "AVX"),
    (3, "MPX bounds"),
    (4, "MPX csr"),
    (5, "AVX-512 opmask"),
    (6, "AVX-512 ZMM_Hi256"),
    (7, "AVX-512 Hi16_ZMM"),
    (9, "PKRU"),
    (17, "AMX tile config"),
    (18, "AMX tile data"),
];

/// Checks the saved CPU requirements against this CPU.
pub fn check_cpu(meta: &Metadata, now: (u32, u32, u32, u32, u32, u64)) -> Result<(), RestoreError> {
    let c = &meta.cpu;
    let missing_x = c.xsave_required & !now.5;
    if missing_x != 0 {
        let names: Vec<String> = (0..64)
            .filter(|b| missing_x & (1u64 << b) != 0)
            .map(|b| {
                XSAVE_NAMES
                    .iter()
                    .find(|(n, _)| *n == b)
                    .map(|(_, s)| s.to_string())
                    .unwrap_or(format!("xsave feature {b}"))
            })
            .collect();
        return Err(RestoreError::Refused(format!(
            "this CPU (or kernel) does not enable vector state the image needs: {} (image XSTATE_BV {:#x}, this machine's XCR0 {:#x})",
            names.join(", "),
            c.xsave_required,
            now.5
        )));
    }
    let checks = [
        ("CPUID.1:ECX", c.cpuid_1_ecx, now.0, CPUID1_ECX_IGNORED),
        ("CPUID.1:EDX", c.cpuid_1_edx, now.1, 0),
        ("CPUID.7.0:EBX", c.cpuid_7_ebx, now.2, 0),
        ("CPUID.7.0:ECX", c.cpuid_7_ecx, now.3, 0),
        ("CPUID.7.0:EDX", c.cpuid_7_edx, now.4, CPUID7_EDX_IGNORED),
    ];
    for (name, saved, cur, ignored) in checks {
        let m = missing_bits(saved, cur, ignored);
        if m != 0 {
            return Err(RestoreError::Refused(format!(
                "this CPU lacks instruction-set features the image's program may use: {name} bits {m:#x} (image {saved:#x}, this CPU {cur:#x})"
            )));
        }
    }
    Ok(())
}

/// How a file differs from the one recorded, if it does.
pub fn file_change(id: &FileId) -> Option<String> {
    let md = match std::fs::metadata(&id.path) {
        Ok(m) => m,
        Err(e) => return Some(format!("{}: {e}", id.path)),
    };
    if md.ino() != id.inode {
        return Some(format!(
            "{} was replaced (inode {} is now {})",
            id.path,
            id.inode,
            md.ino()
        ));
    }
    if md.size() != id.size {
        return Some(format!(
            "{} changed size ({} bytes at checkpoint, {} now)",
            id.path,
            id.size,
            md.size()
        ));
    }
    if md.mtime() != id.mtime_sec || md.mtime_nsec() != id.mtime_nsec {
        return Some(format!(
            "{} was modified since the checkpoint (mtime differs)",
            id.path
        ));
    }
    None
}

/// A path of the program's own /proc directory (`/proc/OLDPID/...`) as it is after the
/// restart, where the program is this process: `/proc/self/...`. Other paths are unchanged.
pub fn live_path(meta: &Metadata, path: &str) -> String {
    let own = format!("/proc/{}", meta.process.pid);
    match path.strip_prefix(&own) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("/proc/self{rest}"),
        _ => path.to_string(),
    }
}

/// Files behind mappings must be exactly as they were; the others must exist. Returns the
/// warnings to show.
///
/// A writable shared mapping is the file itself: the program (or another process) writing
/// it after the checkpoint is what it was doing (the JVM's `hsperfdata` counters), and the
/// restored mapping shows the file as it is now, as with CRIU. It must still be the same
/// file and still cover the mapping (a shorter file would fault with SIGBUS).
pub fn check_files(meta: &Metadata) -> Result<Vec<String>, RestoreError> {
    let mut warnings = Vec::new();
    let mut seen = BTreeSet::new();
    for m in &meta.mappings {
        let (file, writable_shared) = match &m.kind {
            MappingKind::File { file } => (file, false),
            MappingKind::SharedFile { file } => (file, m.prot & libc::PROT_WRITE as u32 != 0),
            _ => continue,
        };
        if !seen.insert(file.path.clone()) {
            continue;
        }
        let Some(why) = file_change(file) else {
            continue;
        };
        let refuse = |why: String| {
            Err(RestoreError::Refused(format!(
                "the file behind the memory mapping at {:#x} changed: {why}; restoring would give the program wrong memory",
                m.start
            )))
        };
        if !writable_shared {
            return refuse(why);
        }
        match std::fs::metadata(&file.path) {
            Ok(md) if md.ino() == file.inode => {
                let needed = m.offset + (m.end - m.start);
                if md.size() < needed {
                    return refuse(format!(
                        "{} is {} bytes now, shorter than the {needed} the mapping covers",
                        file.path,
                        md.size()
                    ));
                }
                warnings.push(format!(
                    "{} (shared, writable, mapped at {:#x}) was written since the checkpoint: the program sees it as it is now",
                    file.path, m.start
                ));
            }
            _ => return refuse(why),
        }
    }
    for fd in &meta.fds {
        if fd.restore == FdRestore::Reopen {
            let path = live_path(meta, &fd.path);
            if path != fd.path {
                // The program's own /proc files: they exist as /proc/self now.
                continue;
            }
            if let FdKind::Regular { file } = &fd.kind {
                if let Err(e) = std::fs::metadata(&file.path) {
                    return Err(RestoreError::Refused(format!(
                        "descriptor {} cannot be reopened: {}: {e}",
                        fd.fd, file.path
                    )));
                }
            } else if std::fs::metadata(&fd.path).is_err() {
                return Err(RestoreError::Refused(format!(
                    "descriptor {} cannot be reopened: {} does not exist",
                    fd.fd, fd.path
                )));
            }
        }
    }
    if !meta.process.cwd.is_empty() && !std::path::Path::new(&meta.process.cwd).is_dir() {
        return Err(RestoreError::Refused(format!(
            "the working directory {} does not exist here",
            meta.process.cwd
        )));
    }
    Ok(warnings)
}

/// The vdso code must be the one the program used (it may hold pointers into it).
pub fn check_vdso(meta: &Metadata, loader: &[Area]) -> Result<(), RestoreError> {
    let saved = meta.mappings.iter().find_map(|m| match m.kind {
        MappingKind::Vdso { crc32 } => Some((crc32, m.end - m.start)),
        _ => None,
    });
    let Some((crc, len)) = saved else {
        return Ok(());
    };
    let mine = loader
        .iter()
        .find(|a| a.name == "[vdso]")
        .ok_or_else(|| RestoreError::Refused("this process has no vdso".into()))?;
    let my_len = mine.end - mine.start;
    // SAFETY: our own vdso is mapped readable for its whole range.
    let bytes = unsafe { std::slice::from_raw_parts(mine.start as *const u8, my_len as usize) };
    if my_len != len || forkpoint_image::crc32(bytes) != crc {
        return Err(RestoreError::Refused(format!(
            "this kernel's vdso differs from the one the image was taken under (kernel {} then): restore on the same kernel build",
            meta.process.kernel_release
        )));
    }
    Ok(())
}

/// What differs between the image's credentials and the ones the restored program will
/// have (it runs as whoever restores it, or, for root, as the image's user).
pub fn credential_warnings(meta: &Metadata, taking: Option<&Credentials>) -> Vec<String> {
    let mut w = Vec::new();
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let (uid, gid) = taking.map_or((uid, gid), |c| (c.uid, c.gid));
    let p = &meta.process;
    if p.uid != uid || p.gid != gid {
        w.push(format!(
            "the image was taken from uid {} gid {}; the program now runs as uid {uid} gid {gid}",
            p.uid, p.gid
        ));
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let eff = if taking.is_some() { 0 } else { eff };
    let missing = meta.attributes.cap_effective & !eff;
    if missing != 0 {
        w.push(format!(
            "the program had capabilities {missing:#x} that it does not have now: privileged operations may fail"
        ));
    }
    w
}

fn effective_capabilities() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// Whether this process may change /proc/self/exe (CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE).
pub fn may_set_exe() -> bool {
    let eff = effective_capabilities();
    eff & (1 << 21) != 0 || eff & (1 << 40) != 0
}

/// How the restore sets the kernel's view of the program's memory layout (brk, the argv and
/// environment ranges, auxv, the code and data bounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmRestore {
    /// `PR_SET_MM_MAP`: all at once, unprivileged too.
    Map,
    /// `PR_SET_MM_MAP` refused (errno): the single `PR_SET_MM_*` operations, which need
    /// CAP_SYS_RESOURCE (what CRIU does on kernels without the map call).
    Single(i32),
    /// Refused, and no CAP_SYS_RESOURCE for the single operations: they stay the loader's.
    Loader(i32),
}

/// Chooses the [`MmRestore`] way from what the kernel answers and the capabilities held.
pub fn mm_restore() -> MmRestore {
    mm_restore_from(crate::sys::mm_map_available(), effective_capabilities())
}

fn mm_restore_from(map: Result<(), i32>, eff: u64) -> MmRestore {
    const CAP_SYS_RESOURCE: u64 = 1 << 24;
    match map {
        Ok(()) => MmRestore::Map,
        Err(e) if eff & CAP_SYS_RESOURCE != 0 => MmRestore::Single(e),
        Err(e) => MmRestore::Loader(e),
    }
}

/// Whether the program can run with the loader's layout ([`MmRestore::Loader`]), which is
/// only safe when the loader's break lies at or below the program's heap. The kernel answers a
/// refused `brk()` with its current break and glibc takes any answer at or above the address
/// it asked for as success: with the loader's break above the program's heap, every `sbrk`
/// and every growing `malloc` would be told it got memory that is not there.
pub fn check_loader_layout(
    how: MmRestore,
    loader_start_brk: u64,
    program_start_brk: u64,
) -> Result<(), RestoreError> {
    match how {
        MmRestore::Loader(e) if loader_start_brk > program_start_brk => {
            Err(RestoreError::Refused(format!(
                "cannot restore the program's memory layout here: prctl(PR_SET_MM_MAP) is refused \
             ({}; a kernel without CONFIG_CHECKPOINT_RESTORE or a seccomp filter), there is no \
             CAP_SYS_RESOURCE for the single PR_SET_MM operations, and the kernel's break would \
             stay the loader's at {loader_start_brk:#x}, above the program's heap at \
             {program_start_brk:#x}: its brk() and sbrk() calls would be told they succeeded \
             for memory that is not there. Restart where PR_SET_MM_MAP is allowed or with \
             CAP_SYS_RESOURCE",
                std::io::Error::from_raw_os_error(e)
            )))
        }
        _ => Ok(()),
    }
}

/// What the restart says about the layout it could not restore, if anything.
pub fn mm_restore_warning(how: MmRestore) -> Option<String> {
    let errno = |e: i32| std::io::Error::from_raw_os_error(e);
    match how {
        MmRestore::Map => None,
        MmRestore::Single(e) => Some(format!(
            "prctl(PR_SET_MM_MAP) is refused here ({}; a kernel without \
             CONFIG_CHECKPOINT_RESTORE or a seccomp filter): brk, argv, environment and auxv \
             are set one by one with CAP_SYS_RESOURCE instead",
            errno(e)
        )),
        MmRestore::Loader(e) => Some(format!(
            "prctl(PR_SET_MM_MAP) is refused here ({}; a kernel without \
             CONFIG_CHECKPOINT_RESTORE or a seccomp filter) and there is no CAP_SYS_RESOURCE \
             for the single PR_SET_MM operations, so the kernel keeps the loader's layout for \
             the restored program: sbrk() and brk() fail (malloc falls back to mmap), \
             /proc/PID/cmdline and /proc/PID/environ show the loader's, /proc/PID/auxv is the \
             loader's (getauxval() is not affected) and /proc/PID/exe names forkpoint",
            errno(e)
        )),
    }
}

/// An image is code and data that will run as the caller: refuse one another user owns.
pub fn check_owner(path: &std::path::Path, allow_foreign: bool) -> Result<(), RestoreError> {
    let md =
        std::fs::metadata(path).map_err(|e| RestoreError::os(path.display().to_string(), e))?;
    // SAFETY: getuid has no preconditions.
    let me = unsafe { libc::getuid() };
    if md.uid() != me && !allow_foreign {
        return Err(RestoreError::Refused(format!(
            "{} is owned by uid {}, not by you (uid {me}): restoring it would run its contents as you; \
             pass --allow-foreign-owner if you trust it",
            path.display(),
            md.uid()
        )));
    }
    Ok(())
}

/// Credentials the restored process must run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
    pub groups: Vec<u32>,
}

/// When root restores an image taken by another user, the process drops to that user's
/// credentials (never runs the image as root unless it was root's). A non-root caller
/// restores as itself: the kernel lets it take no other identity.
pub fn credentials_to_take(meta: &Metadata) -> Result<Option<Credentials>, RestoreError> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let p = &meta.process;
    if euid != 0 || (p.uid == 0 && p.euid == 0) {
        return Ok(None);
    }
    Ok(Some(Credentials {
        uid: p.uid,
        euid: p.euid,
        gid: p.gid,
        egid: p.egid,
        groups: p.groups.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mm_restore_falls_back_by_capability() {
        assert_eq!(mm_restore_from(Ok(()), 0), MmRestore::Map);
        assert_eq!(
            mm_restore_from(Err(libc::EPERM), 1 << 24),
            MmRestore::Single(libc::EPERM)
        );
        assert_eq!(
            mm_restore_from(Err(libc::EINVAL), !(1 << 24)),
            MmRestore::Loader(libc::EINVAL)
        );
        assert!(mm_restore_warning(MmRestore::Map).is_none());
        let w = mm_restore_warning(MmRestore::Loader(libc::EPERM)).unwrap();
        assert!(w.contains("sbrk") && w.contains("/proc/PID/cmdline"), "{w}");
        let loader = MmRestore::Loader(libc::EPERM);
        assert!(check_loader_layout(loader, 0x5000, 0x6000).is_ok());
        assert!(check_loader_layout(loader, 0x6000, 0x6000).is_ok());
        let e = check_loader_layout(loader, 0x7000, 0x6000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("0x7000") && e.contains("0x6000"), "{e}");
        assert!(check_loader_layout(MmRestore::Single(libc::EPERM), 0x7000, 0x6000).is_ok());
    }

    #[test]
    fn own_proc_paths_follow_the_process() {
        let mut meta = Metadata::default();
        meta.process.pid = 42;
        assert_eq!(live_path(&meta, "/proc/42/fd"), "/proc/self/fd");
        assert_eq!(live_path(&meta, "/proc/42"), "/proc/self");
        assert_eq!(live_path(&meta, "/proc/421/fd"), "/proc/421/fd");
        assert_eq!(live_path(&meta, "/etc/passwd"), "/etc/passwd");
    }

    #[test]
    fn cpu_feature_missing_is_refused() {
        let mut meta = Metadata::default();
        let now = current_cpu();
        meta.cpu.xsave_required = now.5;
        meta.cpu.cpuid_7_ebx = now.2;
        assert!(check_cpu(&meta, now).is_ok());
        meta.cpu.xsave_required = now.5 | (1 << 18);
        let mut fake = now;
        fake.5 &= !(1 << 18);
        let e = check_cpu(&meta, fake).unwrap_err().to_string();
        assert!(e.contains("AMX tile data"), "{e}");
        meta.cpu.xsave_required = 0;
        meta.cpu.cpuid_7_ebx = 1 << 16;
        fake.2 = 0;
        assert!(check_cpu(&meta, fake)
            .unwrap_err()
            .to_string()
            .contains("CPUID.7.0:EBX"));
    }

    #[test]
    fn changed_file_is_named() {
        let dir = std::env::temp_dir().join(format!("fp-verify-{}", std::process::id()));
        std::fs::write(&dir, b"abc").unwrap();
        let md = std::fs::metadata(&dir).unwrap();
        let mut id = FileId {
            path: dir.to_string_lossy().into(),
            dev: md.dev(),
            inode: md.ino(),
            size: 3,
            mtime_sec: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
        };
        assert_eq!(file_change(&id), None);
        id.size = 4;
        assert!(file_change(&id).unwrap().contains("changed size"));
        std::fs::remove_file(&dir).unwrap();
        assert!(file_change(&id).is_some());
    }
}
