//! `forkpoint info`: what an image holds, for people (tables) and tools (`--json`).

use std::fmt::Write as _;
use std::path::Path;

use forkpoint_image::{
    Contents, FdKind, FdRestore, ImageFile, Mapping, MappingKind, Metadata, PROT_EXEC, PROT_READ,
    PROT_WRITE,
};
use serde_json::json;

use crate::parse::signal_name;
use crate::{fmt_bytes, CliError};

/// Pages and compressed bytes the image stores for one mapping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegionStats {
    pub stored_pages: u64,
    /// The chunks' stored (compressed) bytes, shared among the mappings whose pages each
    /// chunk holds in proportion to their page counts.
    pub stored_bytes: u64,
}

/// Attributes every chunk's pages and stored bytes to the mappings (in `mappings` order).
pub fn region_stats(m: &Metadata) -> Vec<RegionStats> {
    let mut out = vec![RegionStats::default(); m.mappings.len()];
    for chunk in &m.chunks {
        let total: u64 = chunk.runs.iter().map(|r| r.pages).sum();
        if total == 0 {
            continue;
        }
        // Per mapping, the pages this chunk holds for it.
        let mut shares: Vec<(usize, u64)> = Vec::new();
        for run in &chunk.runs {
            let run_end = run
                .addr
                .saturating_add(run.pages.saturating_mul(forkpoint_image::PAGE_SIZE));
            // Runs are validated to lie inside one mapping; clip anyway.
            let first = m.mappings.partition_point(|map| map.end <= run.addr);
            for (i, map) in m.mappings.iter().enumerate().skip(first) {
                if map.start >= run_end {
                    break;
                }
                let lo = map.start.max(run.addr);
                let hi = map.end.min(run_end);
                if hi > lo {
                    let pages = (hi - lo) / forkpoint_image::PAGE_SIZE;
                    match shares.iter_mut().find(|(j, _)| *j == i) {
                        Some((_, p)) => *p += pages,
                        None => shares.push((i, pages)),
                    }
                }
            }
        }
        for (i, pages) in shares {
            out[i].stored_pages += pages;
            out[i].stored_bytes +=
                (chunk.stored_len as u128 * pages as u128 / total as u128) as u64;
        }
    }
    out
}

/// Reads and decompresses every chunk, checking every checksum: `(chunks, raw bytes)`.
pub fn verify(img: &ImageFile) -> Result<(usize, u64), String> {
    let mut scratch = Vec::new();
    let mut out = Vec::new();
    let mut bytes = 0u64;
    for (i, c) in img.metadata.chunks.iter().enumerate() {
        out.clear();
        out.resize(c.raw_len as usize, 0u8);
        img.read_chunk(i, &mut scratch, &mut out)
            .map_err(|e| e.to_string())?;
        bytes += c.raw_len;
    }
    Ok((img.metadata.chunks.len(), bytes))
}

pub fn info(path: &Path, as_json: bool, do_verify: bool) -> Result<(), CliError> {
    let img = ImageFile::open(path).map_err(|e| {
        let msg = e.to_string();
        let shown = path.display().to_string();
        CliError::new(if msg.contains(&shown) {
            msg
        } else {
            format!("{shown}: {msg}")
        })
    })?;
    let regions = region_stats(&img.metadata);
    let members = tree_members(path, &img)?;
    let verified = if do_verify {
        Some(
            members
                .iter()
                .map(|(pid, m)| verify(m).map_err(|e| format!("process {pid}: {e}")))
                .try_fold((0, 0), |(n, b), r| r.map(|(n2, b2)| (n + n2, b + b2))),
        )
    } else {
        None
    };

    let chain = img
        .metadata
        .parent
        .is_some()
        .then(|| chain_of(path, do_verify));
    if as_json {
        let mut obj = json!({
            "format": {"major": img.header.major, "minor": img.header.minor},
            "file_len": img.footer.file_len,
            "metadata": &img.metadata,
            "regions": img.metadata.mappings.iter().zip(&regions).map(|(m, r)| json!({
                "start": m.start,
                "end": m.end,
                "stored_pages": r.stored_pages,
                "stored_bytes": r.stored_bytes,
            })).collect::<Vec<_>>(),
            "verified": verified.as_ref().map(|v| v.is_ok()),
        });
        if img.metadata.tree.is_some() {
            obj["shared_objects"] = json!(shared_objects(&members)
                .iter()
                .map(|(kind, ino, pids)| json!({"kind": kind, "inode": ino, "processes": pids}))
                .collect::<Vec<_>>());
            obj["members"] = json!(members
                .iter()
                .skip(1)
                .map(|(pid, m)| json!({"pid": pid, "metadata": &m.metadata}))
                .collect::<Vec<_>>());
        }
        if let Some(Err(e)) = &verified {
            obj["verify_error"] = json!(e);
        }
        match &chain {
            Some(Ok(links)) => {
                obj["chain"] = json!(links
                    .iter()
                    .map(|l| json!({
                        "path": l.path,
                        "seq": l.seq,
                        "digest": l.digest,
                        "stored_pages": l.stored_pages,
                        "provides_pages": l.provides_pages,
                    }))
                    .collect::<Vec<_>>())
            }
            Some(Err(e)) => obj["chain_error"] = json!(e),
            None => {}
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&obj).map_err(|e| CliError::new(e.to_string()))?
        );
    } else {
        print!("{}", render_tree(&img, &members));
        print!("{}", render(path, &img, &regions));
        match &chain {
            Some(Ok(links)) => {
                println!(
                    "chain       {} links, newest first (each page comes from the newest link holding it):",
                    links.len()
                );
                for (k, l) in links.iter().enumerate() {
                    println!(
                        "  {k:>3}  checkpoint {:<5} {} pages stored, {} used  {}  {}…",
                        l.seq,
                        l.stored_pages,
                        l.provides_pages,
                        l.path.display(),
                        l.digest.get(..12).unwrap_or("")
                    );
                }
            }
            Some(Err(e)) => println!("chain       broken: {e}"),
            None => {}
        }
        if let Some(Ok((n, b))) = &verified {
            println!("verified: {n} chunks, {b} bytes");
        }
    }
    if do_verify {
        if let Some(Err(e)) = &chain {
            return Err(CliError::new(e.clone()));
        }
    }
    match verified {
        Some(Err(e)) => Err(CliError::new(format!(
            "{}: verification failed: {e}",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// Every process of the image: the root (this image) and, for a tree, each member's image.
/// One link of an incremental chain, as `info` shows it.
pub struct LinkSummary {
    pub path: std::path::PathBuf,
    pub seq: u64,
    pub digest: String,
    pub stored_pages: u64,
    /// Pages a restart takes from this link.
    pub provides_pages: u64,
}

/// The chain ending in the incremental image at `path`, its links' chunks checked with
/// `do_verify`.
pub fn chain_of(path: &Path, do_verify: bool) -> Result<Vec<LinkSummary>, String> {
    let leaf = ImageFile::open(path).map_err(|e| e.to_string())?;
    let links = forkpoint_image::chain::resolve(path, leaf, None).map_err(|e| e.to_string())?;
    if do_verify {
        for l in &links {
            verify(&l.image).map_err(|e| format!("{}: {e}", l.path.display()))?;
        }
    }
    let metas: Vec<&Metadata> = links.iter().map(|l| &l.image.metadata).collect();
    let provided = forkpoint_image::chain::provided(&metas);
    Ok(links
        .iter()
        .zip(&provided)
        .map(|(l, p)| LinkSummary {
            path: l.path.clone(),
            seq: l.image.metadata.checkpoint.seq,
            digest: l.image.digest.clone(),
            stored_pages: l.image.metadata.stats.pages_stored,
            provides_pages: p.len_bytes() / forkpoint_image::PAGE_SIZE,
        })
        .collect())
}

fn tree_members(path: &Path, img: &ImageFile) -> Result<Vec<(i32, ImageFile)>, CliError> {
    let mut out = vec![(
        img.metadata.process.pid,
        ImageFile::open(path).map_err(|e| CliError::new(format!("{}: {e}", path.display())))?,
    )];
    for t in img
        .metadata
        .tree
        .iter()
        .flat_map(|t| t.members.iter().skip(1))
        .filter(|t| t.exited.is_none())
    {
        let m = img.open_member(path, t.pid).map_err(|e| {
            CliError::new(format!("{}: tree member {}: {e}", path.display(), t.pid))
        })?;
        out.push((t.pid, m));
    }
    Ok(out)
}

/// Pipes, socket pairs and shared memory that more than one process of a tree holds:
/// (kind, inode, pids).
pub fn shared_objects(members: &[(i32, ImageFile)]) -> Vec<(&'static str, u64, Vec<i32>)> {
    let mut seen: std::collections::BTreeMap<(&'static str, u64), Vec<i32>> = Default::default();
    for (pid, m) in members {
        for obj in m.metadata.mappings.iter().filter_map(|m| m.memory_object) {
            let pids = seen.entry(("memory", obj.inode)).or_default();
            if !pids.contains(pid) {
                pids.push(*pid);
            }
        }
        for f in &m.metadata.fds {
            let key = match &f.kind {
                FdKind::Pipe { pipe: Some(p) } => ("pipe", p.ino),
                FdKind::Socket { socket: Some(s) } if s.pair.is_some() => {
                    // Both ends of a pair count as one object: its lower inode names it.
                    ("socketpair", s.ino.min(s.pair.unwrap_or(s.ino)))
                }
                _ => continue,
            };
            let pids = seen.entry(key).or_default();
            if !pids.contains(pid) {
                pids.push(*pid);
            }
        }
    }
    seen.into_iter()
        .filter(|(_, pids)| pids.len() > 1)
        .map(|((k, ino), pids)| (k, ino, pids))
        .collect()
}

/// A wait status as a person reads it.
fn wait_status(status: i32) -> String {
    if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("exited with {}", libc::WEXITSTATUS(status))
    }
}

fn render_tree(img: &ImageFile, members: &[(i32, ImageFile)]) -> String {
    let Some(tree) = &img.metadata.tree else {
        return String::new();
    };
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(
        w,
        "tree        {} processes; a restart runs them in a new PID namespace with these PIDs \
         (from outside, the tree's root runs under `forkpoint restart`, which passes its \
         signals on and exits as the root does)",
        tree.members.len()
    );
    let _ = writeln!(
        w,
        "  {:>7} {:>7} {:>7} {:>7} {:>5} {:>10}  program",
        "pid", "ppid", "pgid", "sid", "thr", "bytes"
    );
    for t in &tree.members {
        let program = match t.exited {
            None => shell_words(&t.cmdline),
            Some(status) => format!(
                "{} (zombie, {}: its parent has not reaped it; restored so)",
                shell_words(&t.cmdline),
                wait_status(status)
            ),
        };
        let _ = writeln!(
            w,
            "  {:>7} {:>7} {:>7} {:>7} {:>5} {:>10}  {program}",
            t.pid,
            t.ppid,
            t.pgid,
            t.sid,
            t.threads,
            fmt_bytes(t.bytes),
        );
    }
    for (kind, ino, pids) in shared_objects(members) {
        let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
        let _ = writeln!(
            w,
            "  shared    {kind} inode {ino}: processes {}",
            pids.join(", ")
        );
    }
    for group in &tree.shared_files {
        let path = members
            .iter()
            .find(|(pid, _)| *pid == group[0].pid)
            .and_then(|(_, m)| m.metadata.fds.iter().find(|f| f.fd == group[0].fd))
            .map_or("?", |f| f.path.as_str());
        let holders: Vec<String> = group
            .iter()
            .map(|d| format!("{} fd {}", d.pid, d.fd))
            .collect();
        let _ = writeln!(
            w,
            "  shared    file description {path} (one offset): {}",
            holders.join(", ")
        );
    }
    let _ = writeln!(w, "root process:");
    s
}

fn render(path: &Path, img: &ImageFile, regions: &[RegionStats]) -> String {
    let m = &img.metadata;
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(
        w,
        "image       {} ({}, format {}.{})",
        path.display(),
        fmt_bytes(img.footer.file_len),
        img.header.major,
        img.header.minor
    );
    let p = &m.process;
    let _ = writeln!(w, "program     {}", p.exe);
    let _ = writeln!(w, "  cmdline   {}", shell_words(&p.cmdline));
    let _ = writeln!(
        w,
        "  pid       {} (ppid {}), uid {} gid {} (euid {} egid {})",
        p.pid, p.ppid, p.uid, p.gid, p.euid, p.egid
    );
    let _ = writeln!(w, "  cwd       {}", p.cwd);
    let _ = writeln!(w, "  umask     {:04o}", p.umask);
    let _ = writeln!(
        w,
        "  host      {} (kernel {})",
        p.hostname, p.kernel_release
    );
    let c = &m.checkpoint;
    let request = if c.request_id == 0 {
        String::new()
    } else {
        format!(", request {}", c.request_id)
    };
    let _ = writeln!(
        w,
        "checkpoint  #{} by {}{}, at {}, generation {}",
        c.seq,
        c.trigger,
        request,
        fmt_time(c.time_unix_ns),
        c.generation
    );
    let cpu = &m.cpu;
    let _ = writeln!(
        w,
        "cpu         {}; xcr0 {:#x}; xsave frame {} bytes",
        cpu.vendor, cpu.xcr0, cpu.xsave_frame_size
    );
    let _ = writeln!(
        w,
        "  requires  xsave features {:#x} ({})",
        cpu.xsave_required,
        xsave_names(cpu.xsave_required)
    );
    let _ = writeln!(
        w,
        "  cpuid     1:ecx {:#010x} edx {:#010x}; 7:ebx {:#010x} ecx {:#010x} edx {:#010x}",
        cpu.cpuid_1_ecx, cpu.cpuid_1_edx, cpu.cpuid_7_ebx, cpu.cpuid_7_ecx, cpu.cpuid_7_edx
    );
    let _ = writeln!(w, "library     version {}", m.library.version);

    let st = &m.stats;
    let _ = writeln!(
        w,
        "pages       {} mapped: {} stored, {} zero, {} from file, {} untouched",
        st.pages_mapped, st.pages_stored, st.pages_zero, st.pages_from_file, st.pages_untouched
    );
    let ratio = if st.bytes_stored > 0 {
        format!("{:.2}", st.bytes_raw as f64 / st.bytes_stored as f64)
    } else {
        "-".into()
    };
    let _ = writeln!(
        w,
        "bytes       {} raw, {} stored (ratio {}), zstd level {}",
        fmt_bytes(st.bytes_raw),
        fmt_bytes(st.bytes_stored),
        ratio,
        st.zstd_level
    );
    let _ = writeln!(
        w,
        "time        application paused {:.3} ms, image durable after {:.1} ms",
        st.pause_ns as f64 / 1e6,
        st.write_ns as f64 / 1e6
    );

    let _ = writeln!(w, "threads     {}", m.threads.len());
    for t in &m.threads {
        let _ = writeln!(
            w,
            "  tid {:<8} {:<16} rip {:#x} rsp {:#x} fs {:#x}{}",
            t.tid,
            t.name,
            t.regs.rip,
            t.regs.rsp,
            t.fs_base,
            match &t.rseq {
                Some(r) => format!(" rseq {:#x}/{}", r.addr, r.len),
                None => String::new(),
            }
        );
    }

    let split = forkpoint_restart_loader::plan::split_lazy_of_image(m);
    let lazy_bytes: u64 = m
        .chunks
        .iter()
        .zip(&split.lazy)
        .filter(|(_, &l)| l)
        .map(|(c, _)| c.raw_len)
        .sum();
    let _ = writeln!(
        w,
        "lazy        {} of {} chunks ({:.1} MiB) can be filled after the hand-over by \
         `restart --lazy`; until they are, its helper keeps this image open",
        split.lazy_chunks(),
        m.chunks.len(),
        lazy_bytes as f64 / (1 << 20) as f64
    );

    let _ = writeln!(w, "memory map  {} mappings", m.mappings.len());
    let _ = writeln!(
        w,
        "  {:<33} {:<4} {:<13} {:<9} {:>8} {:>10}  name",
        "start-end", "prot", "kind", "contents", "pages", "stored"
    );
    for (map, r) in m.mappings.iter().zip(regions) {
        let _ = writeln!(
            w,
            "  {:016x}-{:016x} {:<4} {:<13} {:<9} {:>8} {:>10}  {}",
            map.start,
            map.end,
            prot_string(map),
            kind_name(&map.kind),
            contents_name(map.contents),
            r.stored_pages,
            fmt_bytes(r.stored_bytes),
            map.name
        );
        if let Some(how) = &map.approximation {
            let _ = writeln!(w, "      approximated: {how}");
        }
    }

    let _ = writeln!(w, "descriptors {}", m.fds.len());
    let _ = writeln!(
        w,
        "  {:>4} {:<9} {:<22} {:>10}  {:<10} path",
        "fd", "kind", "flags", "offset", "restore"
    );
    for fd in &m.fds {
        let (how, reason) = match &fd.restore {
            FdRestore::Reopen => ("reopen", String::new()),
            FdRestore::Inherit => ("inherit", String::new()),
            FdRestore::Recreate => ("recreate", String::new()),
            FdRestore::Approximate { approximation } => ("approx", format!("  ({approximation})")),
            FdRestore::DevNull { reason } => ("/dev/null", format!("  ({reason})")),
        };
        let _ = writeln!(
            w,
            "  {:>4} {:<9} {:<22} {:>10}  {:<10} {}{}",
            fd.fd,
            fd_kind_name(&fd.kind),
            open_flags(fd.flags, fd.cloexec),
            fd.offset,
            how,
            fd.path,
            reason
        );
    }

    let custom: Vec<_> = m.signals.iter().filter(|a| a.handler != 0).collect();
    let _ = writeln!(w, "signals     {} not default", custom.len());
    for a in custom {
        let handler = match a.handler {
            1 => "ignored".to_string(),
            h => format!("handler {h:#x}"),
        };
        let _ = writeln!(
            w,
            "  {:<12} {:<24} flags {:#x} mask {:#x}",
            signal_name(a.signo as i32),
            handler,
            a.flags,
            a.mask
        );
    }
    if !m.rlimits.is_empty() {
        let _ = writeln!(w, "rlimits     {} saved", m.rlimits.len());
    }
    if m.warnings.is_empty() {
        let _ = writeln!(w, "warnings    none");
    } else {
        let _ = writeln!(w, "warnings    {}", m.warnings.len());
        for warn in &m.warnings {
            let _ = writeln!(w, "  - {warn}");
        }
    }
    s
}

fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn prot_string(m: &Mapping) -> String {
    let mut s = String::with_capacity(4);
    s.push(if m.prot & PROT_READ != 0 { 'r' } else { '-' });
    s.push(if m.prot & PROT_WRITE != 0 { 'w' } else { '-' });
    s.push(if m.prot & PROT_EXEC != 0 { 'x' } else { '-' });
    s.push(if m.shared { 's' } else { 'p' });
    s
}

pub fn kind_name(k: &MappingKind) -> &'static str {
    match k {
        MappingKind::Anonymous => "anonymous",
        MappingKind::Heap => "heap",
        MappingKind::Stack => "stack",
        MappingKind::File { .. } => "file",
        MappingKind::SharedFile { .. } => "shared-file",
        MappingKind::SharedAnonymous => "shared-anon",
        MappingKind::Vdso { .. } => "vdso",
        MappingKind::Vvar => "vvar",
        MappingKind::VvarVclock => "vvar-vclock",
        MappingKind::Vsyscall => "vsyscall",
    }
}

fn contents_name(c: Contents) -> &'static str {
    match c {
        Contents::Stored => "stored",
        Contents::NotStored => "-",
        Contents::Empty => "empty",
    }
}

fn fd_kind_name(k: &FdKind) -> &'static str {
    match k {
        FdKind::Regular { .. } => "file",
        FdKind::Directory => "directory",
        FdKind::CharDevice { .. } => "chardev",
        FdKind::Tty { .. } => "tty",
        FdKind::Pipe { .. } => "pipe",
        FdKind::Socket { .. } => "socket",
        FdKind::Eventfd { .. } => "eventfd",
        FdKind::Timerfd { .. } => "timerfd",
        FdKind::Signalfd { .. } => "signalfd",
        FdKind::Epoll { .. } => "epoll",
        FdKind::DeletedFile { .. } => "deleted",
        FdKind::Memfd { .. } => "memfd",
        FdKind::Other => "other",
    }
}

fn open_flags(flags: i32, cloexec: bool) -> String {
    let mut parts = vec![match flags & libc::O_ACCMODE {
        libc::O_RDONLY => "rdonly",
        libc::O_WRONLY => "wronly",
        libc::O_RDWR => "rdwr",
        _ => "?",
    }];
    for (bit, name) in [
        (libc::O_APPEND, "append"),
        (libc::O_NONBLOCK, "nonblock"),
        (libc::O_DIRECT, "direct"),
        (libc::O_SYNC, "sync"),
    ] {
        if flags & bit == bit {
            parts.push(name);
        }
    }
    if cloexec {
        parts.push("cloexec");
    }
    parts.join(",")
}

/// Names of the XSAVE state components set in `mask`.
pub fn xsave_names(mask: u64) -> String {
    const NAMES: &[&str] = &[
        "x87",
        "sse",
        "avx",
        "bndregs",
        "bndcsr",
        "opmask",
        "zmm_hi256",
        "hi16_zmm",
        "pt",
        "pkru",
        "pasid",
        "cet_u",
        "cet_s",
        "hdc",
        "uintr",
        "lbr",
        "hwp",
        "amx_tilecfg",
        "amx_tiledata",
        "apx",
    ];
    let v: Vec<String> = (0..64)
        .filter(|b| mask & (1u64 << b) != 0)
        .map(|b| {
            NAMES
                .get(b)
                .map(|s| s.to_string())
                .unwrap_or(format!("bit{b}"))
        })
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(" ")
    }
}

/// `YYYY-MM-DD HH:MM:SS.mmm UTC` from nanoseconds since the epoch.
pub fn fmt_time(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let ms = (ns / 1_000_000) % 1000;
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}.{ms:03} UTC",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use forkpoint_image::{Chunk, Compression, PageRun};

    fn mapping(start: u64, end: u64) -> Mapping {
        Mapping {
            start,
            end,
            prot: 3,
            shared: false,
            offset: 0,
            name: String::new(),
            kind: MappingKind::Anonymous,
            contents: Contents::Stored,
            approximation: None,
            memory_object: None,
        }
    }

    #[test]
    fn stored_bytes_are_shared_by_pages() {
        let mut m = Metadata {
            mappings: vec![
                mapping(0x1000, 0x5000),
                mapping(0x10000, 0x20000),
                mapping(0x30000, 0x31000),
            ],
            ..Metadata::default()
        };
        m.chunks = vec![
            Chunk {
                offset: 4096,
                stored_len: 400,
                raw_len: 4 * 4096,
                compression: Compression::Zstd,
                crc32: 0,
                runs: vec![
                    PageRun {
                        addr: 0x1000,
                        pages: 1,
                    },
                    PageRun {
                        addr: 0x10000,
                        pages: 3,
                    },
                ],
            },
            Chunk {
                offset: 4496,
                stored_len: 100,
                raw_len: 4096,
                compression: Compression::None,
                crc32: 0,
                runs: vec![PageRun {
                    addr: 0x12000,
                    pages: 1,
                }],
            },
        ];
        let r = region_stats(&m);
        assert_eq!(
            r[0],
            RegionStats {
                stored_pages: 1,
                stored_bytes: 100
            }
        );
        assert_eq!(
            r[1],
            RegionStats {
                stored_pages: 4,
                stored_bytes: 400
            }
        );
        assert_eq!(r[2], RegionStats::default());
    }

    #[test]
    fn time_format() {
        assert_eq!(fmt_time(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(
            fmt_time(1_700_000_000_123_000_000),
            "2023-11-14 22:13:20.123 UTC"
        );
        assert_eq!(
            fmt_time(951_782_400_000_000_000),
            "2000-02-29 00:00:00.000 UTC"
        );
    }

    #[test]
    fn names() {
        assert_eq!(xsave_names(0x7), "x87 sse avx");
        assert_eq!(xsave_names(0), "none");
        assert_eq!(
            open_flags(libc::O_WRONLY | libc::O_APPEND, true),
            "wronly,append,cloexec"
        );
        assert_eq!(shell_words(&["a b".into(), "c".into()]), "'a b' c");
    }
}
