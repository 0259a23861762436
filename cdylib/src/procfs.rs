//! Parsers for `/proc/self` files and the policy deciding how each mapping is saved.
//! Pure functions over text, unit-tested without a live process.

use forkpoint_image::{Contents, FileId, MappingKind};

use crate::sys;

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    pub name: String,
}

impl MapsEntry {
    pub fn prot(&self) -> u32 {
        (self.read as u32) | (self.write as u32) << 1 | (self.exec as u32) << 2
    }
}

/// Parses `start-end perms offset major:minor inode   name`.
pub fn parse_maps_line(line: &str) -> Option<MapsEntry> {
    let l = forkpoint_image::maps::parse_line(line.as_bytes())?;
    Some(MapsEntry {
        start: l.start,
        end: l.end,
        read: l.read(),
        write: l.write(),
        exec: l.exec(),
        shared: l.shared(),
        offset: l.offset,
        dev_major: l.dev_major,
        dev_minor: l.dev_minor,
        inode: l.inode,
        name: String::from_utf8_lossy(l.name).into_owned(),
    })
}

/// How the image names a file: its path and what identifies this version of it (the
/// restart refuses a file that differs).
pub fn file_id(path: &str, st: &libc::stat) -> FileId {
    FileId {
        path: path.to_string(),
        dev: st.st_dev,
        inode: st.st_ino,
        size: st.st_size as u64,
        mtime_sec: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec,
    }
}

pub fn parse_maps(text: &str) -> Vec<MapsEntry> {
    text.lines().filter_map(parse_maps_line).collect()
}

/// Splits entries that straddle `lo` or `hi`, so [lo, hi) is covered by whole entries (the
/// kernel may have merged one of the library's own regions with a neighbour).
pub fn split_around(entries: Vec<MapsEntry>, lo: u64, hi: u64) -> Vec<MapsEntry> {
    let mut out = Vec::with_capacity(entries.len() + 2);
    for e in entries {
        let mut cur = e;
        for cut in [lo, hi] {
            if cur.start < cut && cut < cur.end {
                let mut right = cur.clone();
                right.start = cut;
                if cur.inode != 0 {
                    right.offset += cut - cur.start;
                }
                cur.end = cut;
                out.push(cur);
                cur = right;
            }
        }
        out.push(cur);
    }
    out
}

/// How the writer treats a mapping, before looking at its pages.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Store pages per the kind's rule.
    Save(MappingKind, Contents),
    /// A private or shared mapping of a regular file at `path` (to be stat'ed).
    File { path: String, shared: bool },
    /// A mapping of a file that is gone or was replaced: its contents are stored and it comes
    /// back as anonymous memory.
    Orphaned { shared: bool, why: String },
    /// Cannot be saved; the reason goes into the warnings.
    Skip(String),
}

const DELETED: &str = " (deleted)";

pub fn plan_mapping(e: &MapsEntry) -> Plan {
    let name = e.name.as_str();
    match name {
        "[heap]" => Plan::Save(MappingKind::Heap, Contents::Stored),
        "[stack]" => Plan::Save(MappingKind::Stack, Contents::Stored),
        "[vdso]" => Plan::Save(MappingKind::Vdso { crc32: 0 }, Contents::NotStored),
        "[vvar]" => Plan::Save(MappingKind::Vvar, Contents::NotStored),
        "[vvar_vclock]" => Plan::Save(MappingKind::VvarVclock, Contents::NotStored),
        "[vsyscall]" => Plan::Save(MappingKind::Vsyscall, Contents::NotStored),
        "" => Plan::Save(anon_kind(e.shared), Contents::Stored),
        _ if name.starts_with("[anon:")
            || name.starts_with("[anon_shmem:")
            || name.starts_with("[stack:") =>
        {
            Plan::Save(anon_kind(e.shared), Contents::Stored)
        }
        // MAP_SHARED|MAP_ANONYMOUS memory is a /dev/zero mapping to the kernel.
        _ if name.starts_with("/dev/zero") => Plan::Save(anon_kind(e.shared), Contents::Stored),
        _ if name.starts_with("/SYSV") => Plan::Orphaned {
            shared: e.shared,
            why: "a SysV shared memory segment (the segment itself is not recreated)".into(),
        },
        _ if name.starts_with("/memfd:") => Plan::Orphaned {
            shared: e.shared,
            why: format!(
                "{} is a memfd (the mapping is no longer tied to the descriptor)",
                name.trim_end_matches(DELETED)
            ),
        },
        _ if name.starts_with('/') && e.inode != 0 => {
            if let Some(path) = name.strip_suffix(DELETED) {
                Plan::Orphaned {
                    shared: e.shared,
                    why: format!("{path} was deleted"),
                }
            } else if name.starts_with("/dev/zero")
                || name.starts_with("/SYSV")
                || name.starts_with("/memfd:")
            {
                Plan::Orphaned {
                    shared: e.shared,
                    why: format!("{name} is not a regular file"),
                }
            } else {
                Plan::File {
                    path: name.to_string(),
                    shared: e.shared,
                }
            }
        }
        _ => Plan::Skip(format!(
            "mapping {:#x}-{:#x} {name:?} is of a kind forkpoint cannot save",
            e.start, e.end
        )),
    }
}

fn anon_kind(shared: bool) -> MappingKind {
    if shared {
        MappingKind::SharedAnonymous
    } else {
        MappingKind::Anonymous
    }
}

/// pagemap bits (Documentation/admin-guide/mm/pagemap.rst).
pub const PM_PRESENT: u64 = 1 << 63;
pub const PM_SWAPPED: u64 = 1 << 62;
pub const PM_FILE_OR_SHARED: u64 = 1 << 61;

/// Whether a page with this pagemap entry holds data only the process has (and so must be
/// stored): present or swapped, and for private file mappings no longer the file's page.
pub fn page_needs_saving(entry: u64, private_file: bool) -> bool {
    if entry & PM_SWAPPED != 0 {
        return true;
    }
    if entry & PM_PRESENT == 0 {
        return false;
    }
    !(private_file && entry & PM_FILE_OR_SHARED != 0)
}

/// Fields of `/proc/self/stat` after the `(comm)` field, numbered as in proc(5).
pub fn stat_fields(stat: &str) -> Option<Vec<u64>> {
    let close = stat.rfind(')')?;
    // Field 3 onwards; field 3 (state) is a letter: keep numbering by pushing a 0.
    let mut out = vec![0u64, 0, 0]; // indexes 0..=2 unused (pid, comm)
    for (i, f) in stat[close + 1..].split_whitespace().enumerate() {
        if i == 0 {
            out.push(0);
        } else {
            out.push(f.parse::<i64>().map(|v| v as u64).unwrap_or(0));
        }
    }
    Some(out)
}

/// A `Key:\tvalue` line of `/proc/self/status`.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

/// Ranges whose `VmFlags` in an smaps listing include `flag` (e.g. `lo`: mlocked).
pub fn smaps_ranges_with_flag(text: &str, flag: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut cur = None;
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some((s, e)) = cur {
                if flags.split_whitespace().any(|f| f == flag) {
                    out.push((s, e));
                }
            }
        } else if let Some(e) = parse_maps_line(line) {
            cur = Some((e.start, e.end));
        }
    }
    out
}

/// How many bytes of an smaps line the [`ForkAdviceScanner`] looks at: enough for a
/// mapping's address range and every `VmFlags` flag the kernel prints.
const SCAN_LINE: usize = 320;

/// Finds the mappings whose smaps `VmFlags` include `dc` (MADV_DONTFORK) or `wf`
/// (MADV_WIPEONFORK), fed the text in chunks of any size. It runs in the pause, so it does
/// not allocate: each line is kept only up to [`SCAN_LINE`] bytes.
pub struct ForkAdviceScanner {
    line: [u8; SCAN_LINE],
    len: usize,
    range: Option<(u64, u64)>,
    /// Some mapping has `um`: registered with a userfaultfd for missing pages (a lazy
    /// restore's helper still fills it).
    pub missing_tracked: bool,
}

impl Default for ForkAdviceScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl ForkAdviceScanner {
    pub const fn new() -> Self {
        ForkAdviceScanner {
            line: [0; SCAN_LINE],
            len: 0,
            range: None,
            missing_tracked: false,
        }
    }

    /// Feeds the next chunk; `found(start, end, wipe)` is called for each advised mapping.
    pub fn feed(&mut self, chunk: &[u8], found: &mut impl FnMut(u64, u64, bool)) {
        for &b in chunk {
            if b == b'\n' {
                self.end_line(found);
            } else if self.len < SCAN_LINE {
                self.line[self.len] = b;
                self.len += 1;
            }
        }
    }

    /// Ends the text (a last line without a newline counts).
    pub fn finish(&mut self, found: &mut impl FnMut(u64, u64, bool)) {
        if self.len > 0 {
            self.end_line(found);
        }
    }

    fn end_line(&mut self, found: &mut impl FnMut(u64, u64, bool)) {
        let line = &self.line[..self.len];
        if let Some(flags) = line.strip_prefix(b"VmFlags:") {
            if let Some((start, end)) = self.range.take() {
                let mut flags = flags.split(|&c| c == b' ').filter(|f| !f.is_empty());
                let (mut dc, mut wf) = (false, false);
                for f in &mut flags {
                    dc |= f == b"dc";
                    wf |= f == b"wf";
                    self.missing_tracked |= f == b"um";
                }
                if dc {
                    found(start, end, false);
                }
                if wf {
                    found(start, end, true);
                }
            }
        } else if let Some(range) = smaps_header_range(line) {
            self.range = Some(range);
        }
        self.len = 0;
    }
}

/// The `start-end` of an smaps mapping header (`7f00-7f10 rw-p ...`); field lines
/// (`Rss:   4 kB`) are not headers.
fn smaps_header_range(line: &[u8]) -> Option<(u64, u64)> {
    let first = line.split(|&c| c == b' ').next()?;
    let dash = first.iter().position(|&c| c == b'-')?;
    let hex = |b: &[u8]| -> Option<u64> {
        if b.is_empty() {
            return None;
        }
        let mut v = 0u64;
        for &c in b {
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => return None,
            };
            v = v.checked_mul(16)?.checked_add(d as u64)?;
        }
        Some(v)
    };
    let (start, end) = (hex(&first[..dash])?, hex(&first[dash + 1..])?);
    (start < end).then_some((start, end))
}

/// One line of `/proc/locks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockLine {
    /// `POSIX`, `FLOCK` or `OFDLCK`.
    pub class: String,
    pub write: bool,
    pub pid: i64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    pub start: u64,
    /// Inclusive end, None for EOF.
    pub end: Option<u64>,
}

/// Parses `/proc/locks` (`1: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 EOF`); blocked
/// waiters (`->` lines) are skipped.
pub fn parse_locks(text: &str) -> Vec<LockLine> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let _n = it.next()?;
            let class = it.next()?;
            if class == "->" {
                return None;
            }
            let _mode = it.next()?;
            let rw = it.next()?;
            let pid: i64 = it.next()?.parse().ok()?;
            let mut dev = it.next()?.split(':');
            let dev_major = u32::from_str_radix(dev.next()?, 16).ok()?;
            let dev_minor = u32::from_str_radix(dev.next()?, 16).ok()?;
            let inode = dev.next()?.parse().ok()?;
            let start = it.next()?.parse().ok()?;
            let end = match it.next()? {
                "EOF" => None,
                e => Some(e.parse().ok()?),
            };
            Some(LockLine {
                class: class.to_string(),
                write: rw == "WRITE",
                pid,
                dev_major,
                dev_minor,
                inode,
                start,
                end,
            })
        })
        .collect()
}

/// One entry of `/proc/PID/timers`: (id, signo, sigev_value, notify kind, clockid).
pub fn parse_timers(text: &str) -> Vec<(i32, i32, u64, String, i32)> {
    let mut out = Vec::new();
    let mut cur: Option<(i32, i32, u64, String, i32)> = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("ID: ") {
            if let Some(t) = cur.take() {
                out.push(t);
            }
            cur = v.trim().parse().ok().map(|id| (id, 0, 0, String::new(), 0));
        } else if let Some(t) = cur.as_mut() {
            if let Some(v) = line.strip_prefix("signal: ") {
                let (sig, val) = v.trim().split_once('/').unwrap_or((v.trim(), "0"));
                t.1 = sig.parse().unwrap_or(0);
                t.2 = u64::from_str_radix(val, 16).unwrap_or(0);
            } else if let Some(v) = line.strip_prefix("notify: ") {
                t.3 = v.split('/').next().unwrap_or("").to_string();
            } else if let Some(v) = line.strip_prefix("ClockID: ") {
                t.4 = v.trim().parse().unwrap_or(0);
            }
        }
    }
    out.extend(cur);
    out
}

fn proc_err(what: &str, path: &[u8], e: i32) -> String {
    let path = path.strip_suffix(b"\0").unwrap_or(path);
    format!(
        "{what} {}: {} (errno {e})",
        String::from_utf8_lossy(path),
        sys::errno_text(e)
    )
}

/// A /proc file's bytes (they have no size to read up front).
pub fn read_proc(path: &[u8]) -> Result<Vec<u8>, String> {
    let fd = sys::open(path, libc::O_RDONLY | libc::O_CLOEXEC, 0)
        .map_err(|e| proc_err("cannot open", path, e))?;
    let mut v = Vec::with_capacity(64 << 10);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match sys::read(fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => v.extend_from_slice(&buf[..n]),
            Err(libc::EINTR) => {}
            Err(e) => {
                sys::close(fd);
                return Err(proc_err("cannot read", path, e));
            }
        }
    }
    sys::close(fd);
    Ok(v)
}

/// A /proc file as text; empty if it cannot be read.
pub fn read_proc_string(path: &[u8]) -> String {
    read_proc(path)
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default()
}

/// `b` without trailing newlines and NULs (a /proc value, a request file's path).
/// A request file: the output path (may be empty) on the first line, then options one per
/// line. Returns the path and whether `incremental` is among them.
pub fn request_options(b: &[u8]) -> (&[u8], bool) {
    let mut lines = b.split(|&c| c == b'\n');
    let path = trim_newline(lines.next().unwrap_or(b""));
    let incremental = lines.any(|l| trim_newline(l) == b"incremental");
    (path, incremental)
}

pub fn trim_newline(b: &[u8]) -> &[u8] {
    let mut end = b.len();
    while end > 0 && (b[end - 1] == b'\n' || b[end - 1] == 0) {
        end -= 1;
    }
    &b[..end]
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_files_carry_the_path_and_options() {
        assert_eq!(
            super::request_options(b"/a/b.fpk"),
            (&b"/a/b.fpk"[..], false)
        );
        assert_eq!(
            super::request_options(b"/a b\nincremental\n"),
            (&b"/a b"[..], true)
        );
        assert_eq!(super::request_options(b"\nincremental"), (&b""[..], true));
        assert_eq!(super::request_options(b""), (&b""[..], false));
    }

    use super::*;

    #[test]
    fn fork_advice_scan() {
        let text = "\
1000-3000 rw-p 00000000 00:00 0 
Size:                  8 kB
VmFlags: rd wr mr mw me dc nr 
3000-4000 rw-p 00000000 00:00 0                          [heap]
Rss:                   4 kB
VmFlags: rd wr mr mw me ac um 
7f00-8000 rw-p 00000000 00:00 0 
VmFlags: rd wr mr mw me wf dc";
        let expect = vec![
            (0x1000, 0x3000, false),
            (0x7f00, 0x8000, false),
            (0x7f00, 0x8000, true),
        ];
        // Any chunking gives the same answer.
        for chunk in [1, 2, 7, 64, 4096] {
            let mut got = Vec::new();
            let mut sc = ForkAdviceScanner::new();
            let mut f = |s, e, w| got.push((s, e, w));
            for c in text.as_bytes().chunks(chunk) {
                sc.feed(c, &mut f);
            }
            sc.finish(&mut f);
            assert_eq!(got, expect, "chunk {chunk}");
            assert!(sc.missing_tracked, "chunk {chunk}");
        }
    }

    #[test]
    fn fork_advice_scan_survives_long_lines() {
        let long = format!(
            "1000-2000 r--p 00000000 08:01 5 /{}\nVmFlags: rd dc\n",
            "x".repeat(5000)
        );
        let mut got = Vec::new();
        let mut sc = ForkAdviceScanner::new();
        sc.feed(long.as_bytes(), &mut |s, e, w| got.push((s, e, w)));
        assert_eq!(got, vec![(0x1000, 0x2000, false)]);
        assert!(!sc.missing_tracked);
        // Garbage and a flags line without a header find nothing.
        let mut sc = ForkAdviceScanner::new();
        sc.feed(
            b"VmFlags: dc\nzz-yy\nAnonHugePages: 0 kB\n",
            &mut |_, _, _| panic!(),
        );
    }

    #[test]
    fn parses_maps_lines() {
        let e = parse_maps_line("7f0e1c000000-7f0e1c021000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(
            (e.start, e.end, e.prot(), e.shared, e.name.as_str()),
            (0x7f0e1c000000, 0x7f0e1c021000, 3, false, "")
        );
        let e = parse_maps_line(
            "55d4c2a00000-55d4c2a02000 r-xp 00002000 fe:01 1234   /usr/bin/my prog",
        )
        .unwrap();
        assert_eq!(
            (e.offset, e.dev_major, e.dev_minor, e.inode, e.prot()),
            (0x2000, 0xfe, 1, 1234, 5)
        );
        assert_eq!(e.name, "/usr/bin/my prog");
        let e = parse_maps_line(
            "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]",
        )
        .unwrap();
        assert_eq!(e.name, "[vsyscall]");
        assert!(parse_maps_line("garbage").is_none());
    }

    #[test]
    fn splits_merged_regions() {
        let e = parse_maps_line("1000-9000 rw-p 00000000 00:00 0 ").unwrap();
        let parts = split_around(vec![e], 0x3000, 0x5000);
        let ranges: Vec<(u64, u64)> = parts.iter().map(|p| (p.start, p.end)).collect();
        assert_eq!(
            ranges,
            vec![(0x1000, 0x3000), (0x3000, 0x5000), (0x5000, 0x9000)]
        );
        let f = parse_maps_line("1000-9000 r--p 00001000 08:01 5 /f").unwrap();
        let parts = split_around(vec![f], 0x2000, 0x20000);
        assert_eq!(parts[1].offset, 0x2000);
        assert_eq!(parts.len(), 2);
    }

    #[test]
    fn plans_mappings() {
        let mut e = parse_maps_line("1000-2000 rw-p 00000000 00:00 0 [heap]").unwrap();
        assert_eq!(
            plan_mapping(&e),
            Plan::Save(MappingKind::Heap, Contents::Stored)
        );
        e.name = "/lib/x.so".into();
        e.inode = 7;
        assert_eq!(
            plan_mapping(&e),
            Plan::File {
                path: "/lib/x.so".into(),
                shared: false
            }
        );
        e.name = "/tmp/gone (deleted)".into();
        assert!(matches!(plan_mapping(&e), Plan::Orphaned { .. }));
        e.name = "[uprobes]".into();
        assert!(matches!(plan_mapping(&e), Plan::Skip(_)));
    }

    #[test]
    fn page_rules() {
        assert!(!page_needs_saving(0, false));
        assert!(page_needs_saving(PM_PRESENT, false));
        assert!(page_needs_saving(PM_PRESENT | PM_FILE_OR_SHARED, false));
        assert!(!page_needs_saving(PM_PRESENT | PM_FILE_OR_SHARED, true));
        assert!(page_needs_saving(PM_PRESENT, true));
        assert!(page_needs_saving(PM_SWAPPED, true));
    }

    #[test]
    fn smaps_flags() {
        let t = "1000-3000 rw-p 00000000 00:00 0 \nRss: 8 kB\nVmFlags: rd wr mr mw me lo ac\n5000-6000 r--p 00000000 00:00 0 \nVmFlags: rd mr\n";
        assert_eq!(smaps_ranges_with_flag(t, "lo"), vec![(0x1000, 0x3000)]);
    }

    #[test]
    fn locks_listing() {
        let t = "1: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 EOF\n1: -> POSIX  ADVISORY  WRITE 99 08:01:5678 0 EOF\n2: FLOCK  ADVISORY  READ 1234 fe:00:42 0 EOF\n3: OFDLCK ADVISORY  WRITE -1 fe:00:42 10 19\n";
        let l = parse_locks(t);
        assert_eq!(l.len(), 3);
        assert_eq!(
            (
                l[0].class.as_str(),
                l[0].write,
                l[0].pid,
                l[0].dev_major,
                l[0].inode,
                l[0].end
            ),
            ("POSIX", true, 1234, 8, 5678, None)
        );
        assert_eq!(
            (l[2].class.as_str(), l[2].pid, l[2].start, l[2].end),
            ("OFDLCK", -1, 10, Some(19))
        );
    }

    #[test]
    fn timers_listing() {
        let t = "ID: 0\nsignal: 62/0000000000000000\nnotify: signal/pid.7\nClockID: 1\nID: 3\nsignal: 14/00000000000000ff\nnotify: thread/tid.9\nClockID: 0\n";
        assert_eq!(
            parse_timers(t),
            vec![
                (0, 62, 0, "signal".into(), 1),
                (3, 14, 0xff, "thread".into(), 0)
            ]
        );
    }

    #[test]
    fn stat_numbering() {
        let f = stat_fields("42 (a) b) R 1 2 3 4 5 6 7 8 9 10").unwrap();
        assert_eq!(f[4], 1);
        assert_eq!(f[13], 10);
        assert_eq!(
            status_field("Umask:\t0022\nUid:\t1 2 3 4\n", "Uid"),
            Some("1 2 3 4")
        );
    }
}
