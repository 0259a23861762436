//! Planning the restore: where to stage each region, where the blob lives, and the list of
//! syscalls the blob runs. Pure functions over the image's metadata and the loader's own
//! memory map; no syscalls here.

use forkpoint_image::{
    thread_table, Mapping, MappingKind, Metadata, ThreadState, PAGE_SIZE, RESUME_RESTORED,
};

use crate::blob::{Op, CLONE, MAY_FAIL, OP_WORDS, QUIET, SET_RSP};
use crate::verify::MmRestore;

/// Lowest address the planner uses for its reservation (above the classic non-PIE area).
const SEARCH_FROM: u64 = 0x1_0000_0000;
/// Exclusive end of user space the planner may use.
const SEARCH_TO: u64 = 0x7fff_0000_0000;
/// Code page + data + stack of the blob.
const BLOB_CODE_LEN: u64 = PAGE_SIZE;
pub const BLOB_STACK_LEN: u64 = 64 * 1024;
/// Stack of each cloned thread while it runs its few steps.
pub const THREAD_STACK_LEN: u64 = 16 * 1024;
/// Extra room below a restored main stack so it can keep growing (it comes back as a
/// plain mapping, which the kernel does not grow on its own).
const STACK_HEADROOM: u64 = 8 << 20;

/// A range of the loader's (or any) address space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Area {
    pub start: u64,
    pub end: u64,
    pub name: String,
}

/// Parses `/proc/self/maps` into areas (start, end, name).
pub fn parse_maps(text: &str) -> Vec<Area> {
    text.lines()
        .filter_map(|l| {
            let l = forkpoint_image::maps::parse_line(l.as_bytes())?;
            Some(Area {
                start: l.start,
                end: l.end,
                name: String::from_utf8_lossy(l.name).trim_end().to_string(),
            })
        })
        .collect()
}

/// One region to stage and move into place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    /// Index into `metadata.mappings`.
    pub mapping: usize,
    /// Where it goes (for the main stack, extended downwards by the headroom).
    pub target_start: u64,
    pub target_end: u64,
    /// Where it is built first, inside the reservation.
    pub staged_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub reservation: (u64, u64),
    pub staged: Vec<Staged>,
    /// Scratch room for moving the vdso when its old and new places overlap.
    pub vdso_scratch: u64,
    /// Blob: code page, data, the other threads' stacks, then the main stack (all inside
    /// the reservation).
    pub blob_start: u64,
    pub blob_len: u64,
    pub thread_stacks: u64,
}

/// The special mappings moved (not staged): vvar, vvar_vclock, vdso, in address order.
pub fn is_special(kind: &MappingKind) -> bool {
    matches!(
        kind,
        MappingKind::Vdso { .. }
            | MappingKind::Vvar
            | MappingKind::VvarVclock
            | MappingKind::Vsyscall
    )
}

fn special_name(kind: &MappingKind) -> Option<&'static str> {
    match kind {
        MappingKind::Vdso { .. } => Some("[vdso]"),
        MappingKind::Vvar => Some("[vvar]"),
        MappingKind::VvarVclock => Some("[vvar_vclock]"),
        _ => None,
    }
}

/// The image's vdso/vvar mappings and the loader's, paired by name. Errors if the kernel
/// lays them out differently (then the saved program's vdso calls would go astray).
pub fn pair_vdso(meta: &Metadata, loader: &[Area]) -> Result<Vec<(Area, u64)>, String> {
    let image: Vec<(&'static str, &Mapping)> = meta
        .mappings
        .iter()
        .filter_map(|m| special_name(&m.kind).map(|n| (n, m)))
        .collect();
    let mine: Vec<&Area> = loader
        .iter()
        .filter(|a| matches!(a.name.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]"))
        .collect();
    let names_img: Vec<&str> = image.iter().map(|(n, _)| *n).collect();
    let names_mine: Vec<&str> = mine.iter().map(|a| a.name.as_str()).collect();
    if names_img.is_empty() {
        return Ok(Vec::new());
    }
    if names_img != names_mine {
        return Err(format!(
            "the image has vdso mappings {names_img:?} but this kernel provides {names_mine:?}: restore needs the kernel the image was taken under"
        ));
    }
    let mut out = Vec::new();
    let base_img = image[0].1.start;
    let base_mine = mine[0].start;
    for ((name, m), a) in image.iter().zip(&mine) {
        if m.end - m.start != a.end - a.start || m.start - base_img != a.start - base_mine {
            return Err(format!("{name} has a different size or position on this kernel: restore needs the kernel the image was taken under"));
        }
        out.push(((*a).clone(), m.start));
    }
    Ok(out)
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Lowest gap of `len` bytes in [SEARCH_FROM, SEARCH_TO) clear of every range in `busy`.
fn find_gap(busy: &mut [(u64, u64)], len: u64) -> Option<u64> {
    busy.sort_unstable();
    let mut cand = SEARCH_FROM;
    for &(s, e) in busy.iter() {
        if e <= cand {
            continue;
        }
        if s >= cand && s - cand >= len {
            break;
        }
        cand = cand.max(e);
        cand = (cand + 0x1f_ffff) & !0x1f_ffff; // 2 MiB aligned for tidiness
    }
    (cand.checked_add(len)? <= SEARCH_TO).then_some(cand)
}

/// Where the main stack may extend down to without touching its lower neighbour.
fn stack_target(meta: &Metadata, i: usize) -> (u64, u64) {
    let m = &meta.mappings[i];
    let below = if i == 0 { 0 } else { meta.mappings[i - 1].end };
    let size = m.end - m.start;
    let room = m.start.saturating_sub(below).saturating_sub(1 << 20);
    let extra = STACK_HEADROOM.saturating_sub(size).min(room) & !(PAGE_SIZE - 1);
    (m.start - extra, m.end)
}

/// Plans the staging area and blob region.
pub fn plan_layout(meta: &Metadata, loader: &[Area], data_len: u64) -> Result<Layout, String> {
    let mut targets = Vec::new();
    for (i, m) in meta.mappings.iter().enumerate() {
        if is_special(&m.kind) {
            continue;
        }
        let (s, e) = if matches!(m.kind, MappingKind::Stack) {
            stack_target(meta, i)
        } else {
            (m.start, m.end)
        };
        targets.push(Staged {
            mapping: i,
            target_start: s,
            target_end: e,
            staged_at: 0,
        });
    }
    let staged_total: u64 = targets.iter().map(|t| t.target_end - t.target_start).sum();
    let vdso_len: u64 = meta
        .mappings
        .iter()
        .filter(|m| special_name(&m.kind).is_some())
        .map(|m| m.end - m.start)
        .sum();
    let data_len = (data_len + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
    let thread_stacks_len = THREAD_STACK_LEN * meta.threads.len().saturating_sub(1) as u64;
    let blob_len = BLOB_CODE_LEN + data_len + thread_stacks_len + BLOB_STACK_LEN;
    let total = staged_total + vdso_len + blob_len;
    let mut busy: Vec<(u64, u64)> = loader.iter().map(|a| (a.start, a.end)).collect();
    busy.extend(meta.mappings.iter().map(|m| (m.start, m.end)));
    busy.extend(targets.iter().map(|t| (t.target_start, t.target_end)));
    let start = find_gap(&mut busy, total)
        .ok_or("no free address range is large enough to stage the image")?;
    let mut at = start;
    for t in &mut targets {
        t.staged_at = at;
        at += t.target_end - t.target_start;
    }
    let vdso_scratch = at;
    at += vdso_len;
    let layout = Layout {
        reservation: (start, start + total),
        staged: targets,
        vdso_scratch,
        blob_start: at,
        blob_len,
        thread_stacks: at + BLOB_CODE_LEN + data_len,
    };
    debug_assert!(layout
        .staged
        .iter()
        .all(|t| !overlaps((t.target_start, t.target_end), layout.reservation)));
    Ok(layout)
}

/// What the blob needs besides the layout.
pub struct ProgramInputs<'a> {
    pub meta: &'a Metadata,
    pub layout: &'a Layout,
    /// The loader's vdso mappings with their target addresses.
    pub vdso: &'a [(Area, u64)],
    pub err_fd: i32,
    /// The program's executable, opened, when this process may set /proc/self/exe.
    pub exe_fd: Option<i32>,
    /// Test builds only: make this step (1-based) of the main thread's program fail.
    pub fail_step: Option<usize>,
    /// How the kernel's mm fields are set, and the loader's own ones the single
    /// `PR_SET_MM_*` operations start from ([`crate::sys::current_mm`]).
    pub mm_restore: crate::verify::MmRestore,
    pub loader_mm: [u64; 10],
    /// A lazy restart: the regions the blob registers with the helper's userfaultfd once
    /// they are in place.
    pub lazy: Option<LazyRegistration<'a>>,
}

/// What the blob needs to hand the lazy regions to the helper.
#[derive(Debug, Clone, Copy)]
pub struct LazyRegistration<'a> {
    pub uffd: i32,
    /// The write end of the pipe the helper waits on: closed once the regions are
    /// registered, it tells the helper to start the background fill.
    pub ready_fd: i32,
    pub regions: &'a [(u64, u64)],
}

/// The single `PR_SET_MM_*` operations (value, name) that move the loader's mm fields `cur`
/// to the program's `want` (both in [`crate::sys::current_mm`] order), ordered so that every
/// intermediate state passes the kernel's checks (start before end, start_code strictly).
pub fn single_mm_ops(want: &[u64; 10], cur: &[u64; 10]) -> Vec<(u64, u64, &'static str)> {
    const NAMES: [(u64, &str); 10] = [
        (1, "PR_SET_MM_START_CODE"),
        (2, "PR_SET_MM_END_CODE"),
        (3, "PR_SET_MM_START_DATA"),
        (4, "PR_SET_MM_END_DATA"),
        (6, "PR_SET_MM_START_BRK"),
        (7, "PR_SET_MM_BRK"),
        (8, "PR_SET_MM_ARG_START"),
        (9, "PR_SET_MM_ARG_END"),
        (10, "PR_SET_MM_ENV_START"),
        (11, "PR_SET_MM_ENV_END"),
    ];
    let mut ops = Vec::new();
    for pair in 0..5 {
        let (s, e) = (2 * pair, 2 * pair + 1);
        // Start first keeps (new start, old end) ordered when the new start is not past the
        // old end; otherwise end first keeps (old start, new end) ordered.
        let start_first = if pair == 0 {
            want[s] < cur[e]
        } else {
            want[s] <= cur[e]
        };
        let order = if start_first { [s, e] } else { [e, s] };
        for i in order {
            ops.push((NAMES[i].0, want[i], NAMES[i].1));
        }
    }
    ops
}

/// The blob's data area: program words, messages, `prctl_mm_map`, auxv, signal frame.
pub struct BlobData {
    pub bytes: Vec<u8>,
    /// Offset of the program (entry argument) in `bytes`.
    pub program_offset: usize,
    pub steps: Vec<String>,
}

const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;
const PR_SET_MM_AUXV: u64 = 12;
const PR_SET_MM_EXE_FILE: u64 = 13;
const MREMAP_MAYMOVE: u64 = 1;
const MREMAP_FIXED: u64 = 2;
const ARCH_SET_FS: u64 = 0x1002;
const SYS_RT_SIGRETURN: u64 = 15;
const SYS_MMAP: u64 = 9;
const SYS_MREMAP: u64 = 25;
const SYS_MUNMAP: u64 = 11;
const SYS_PRCTL: u64 = 157;
const SYS_ARCH_PRCTL: u64 = 158;
const SYS_SET_TID_ADDRESS: u64 = 218;
const SYS_SET_ROBUST_LIST: u64 = 273;
const SYS_RSEQ: u64 = 334;
const SYS_CLOSE: u64 = 3;
const SYS_IOCTL: u64 = 16;
/// `_IOWR(0xAA, 0x00, struct uffdio_register)`.
pub const UFFDIO_REGISTER: u64 = 0xc020_aa00;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const SYS_CLONE: u64 = 56;
const SYS_SCHED_SETAFFINITY: u64 = 203;
const SYS_SCHED_SETSCHEDULER: u64 = 144;
const PR_SET_NAME: u64 = 15;
/// Size of the kernel's `struct ucontext` on x86-64.
pub const UCONTEXT_LEN: usize = 304;

struct DataBuilder {
    bytes: Vec<u8>,
    base: u64,
}

impl DataBuilder {
    fn align(&mut self, a: usize) {
        while !self.bytes.len().is_multiple_of(a) {
            self.bytes.push(0);
        }
    }
    fn put(&mut self, b: &[u8], align: usize) -> u64 {
        self.align(align);
        let at = self.base + self.bytes.len() as u64;
        self.bytes.extend_from_slice(b);
        at
    }
}

fn words(ws: &[u64]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Builds the frame `rt_sigreturn` restores the thread from: the resume registers saved
/// at the fork point, no FPU state (the kernel resets it: the resume point is a function
/// return, where only callee-saved registers matter), and the handler's signal mask.
pub fn build_frame(t: &ThreadState) -> [u8; UCONTEXT_LEN] {
    let mut f = [0u8; UCONTEXT_LEN];
    let mut put = |off: usize, v: u64| f[off..off + 8].copy_from_slice(&v.to_le_bytes());
    put(0, 0x6); // uc_flags: UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS
    put(8, 0); // uc_link
    put(16, t.sigaltstack.sp);
    put(24, (t.sigaltstack.flags & libc_ss_disable()) as u32 as u64);
    put(32, t.sigaltstack.size);
    let mc = 40;
    let r = &t.regs;
    put(mc + 4 * 8, r.r12);
    put(mc + 5 * 8, r.r13);
    put(mc + 6 * 8, r.r14);
    put(mc + 7 * 8, r.r15);
    put(mc + 10 * 8, r.rbp);
    put(mc + 11 * 8, r.rbx);
    put(mc + 13 * 8, RESUME_RESTORED);
    put(mc + 15 * 8, r.rsp);
    put(mc + 16 * 8, r.rip);
    put(mc + 17 * 8, 0x202); // eflags: IF
                             // cs, gs, fs, ss as four u16: __USER_CS 0x33, __USER_DS 0x2b.
    put(mc + 18 * 8, 0x33 | (0x2b << 48));
    put(mc + 23 * 8, 0); // fpstate: none
    put(296, t.sigmask);
    f
}

fn libc_ss_disable() -> i32 {
    2 // SS_DISABLE; SS_ONSTACK (1) is not a settable flag
}

/// Steps of one program, with the words of each failure message.
#[derive(Default)]
/// Each step: the op, what it does (listed by `restart -v`, named in a failure message),
/// and for a step that may fail, what differs when it does.
struct Steps(Vec<(Op, String, Option<String>)>);

impl Steps {
    fn add(&mut self, nr: u64, args: [u64; 6], flags: u64, what: String) {
        self.add_op(
            Op {
                nr,
                args,
                flags,
                ..Op::default()
            },
            what,
        );
    }

    fn add_op(&mut self, op: Op, what: String) {
        self.0.push((op, what, None));
    }

    /// A step whose failure is reported (with `if_failed`: what stays different) and the
    /// restore goes on.
    fn add_fallible(&mut self, nr: u64, args: [u64; 6], what: String, if_failed: String) {
        let op = Op {
            nr,
            args,
            flags: MAY_FAIL,
            ..Op::default()
        };
        self.0.push((op, what, Some(if_failed)));
    }

    /// Lays the program out in `d` (messages, then the words the blob reads); returns its
    /// address. `who` names the thread in messages.
    fn emit(
        mut self,
        d: &mut DataBuilder,
        err_fd: i32,
        who: &str,
        names: &mut Vec<String>,
        fail_step: Option<usize>,
    ) -> u64 {
        let n = self.0.len();
        // Test builds can make one step fail on purpose (an unknown syscall: ENOSYS).
        if let Some(op) = fail_step
            .and_then(|k| k.checked_sub(1))
            .and_then(|k| self.0.get_mut(k))
        {
            op.0.nr = 0xffff;
            op.0.flags &= !MAY_FAIL;
        }
        let mut msgs = Vec::with_capacity(n);
        for (i, (op, what, if_failed)) in self.0.iter().enumerate() {
            let outcome = match (op.flags & MAY_FAIL != 0, if_failed) {
                (true, Some(diff)) => format!("failed, continuing: {diff}"),
                (true, None) => "failed, continuing".to_string(),
                (false, _) => "failed".to_string(),
            };
            let text = format!(
                "forkpoint restart: {who} step {} of {n} ({what}) {outcome}: errno ",
                i + 1
            );
            let at = d.put(text.as_bytes(), 1);
            msgs.push((at, text.len() as u64));
            names.push(format!("{who}: {what}"));
        }
        let mut prog = vec![n as u64, err_fd as u64];
        for ((o, _, _), (mp, ml)) in self.0.iter().zip(&msgs) {
            prog.push(o.nr);
            prog.extend_from_slice(&o.args);
            prog.extend_from_slice(&[o.flags, *mp, *ml, o.rsp]);
        }
        debug_assert_eq!(prog.len(), 2 + n * OP_WORDS);
        d.put(&words(&prog), 16)
    }
}

/// Where the kernel writes the new TID of thread `i` (`CLONE_PARENT_SETTID`): its entry of the
/// library's thread table (0 without one).
pub fn thread_table_tid(table: u64, i: usize) -> u64 {
    if table == 0 {
        return 0;
    }
    table + (i * thread_table::ENTRY_LEN + thread_table::OFF_TID) as u64
}

/// Per-thread kernel state that lives outside memory, then the thread's resume.
fn thread_tail(steps: &mut Steps, d: &mut DataBuilder, t: &ThreadState) {
    if t.robust_list != 0 {
        steps.add(
            SYS_SET_ROBUST_LIST,
            [t.robust_list, t.robust_list_len.max(24), 0, 0, 0, 0],
            MAY_FAIL,
            "set_robust_list".into(),
        );
    }
    if let Some(r) = t.rseq {
        steps.add(
            SYS_RSEQ,
            [r.addr, r.len as u64, 0, r.sig as u64, 0, 0],
            MAY_FAIL,
            format!("rseq registration at {:#x}", r.addr),
        );
    }
    if !t.affinity.is_empty() {
        let mask = words(&t.affinity);
        let at = d.put(&mask, 8);
        steps.add(
            SYS_SCHED_SETAFFINITY,
            [0, mask.len() as u64, at, 0, 0, 0],
            MAY_FAIL,
            "sched_setaffinity".into(),
        );
    }
    if t.sched_policy != 0 || t.sched_priority != 0 {
        let at = d.put(&t.sched_priority.to_le_bytes(), 8);
        steps.add(
            SYS_SCHED_SETSCHEDULER,
            [0, t.sched_policy as u32 as u64, at, 0, 0, 0],
            MAY_FAIL,
            format!(
                "sched_setscheduler (policy {}, priority {})",
                t.sched_policy, t.sched_priority
            ),
        );
    }
    let mut name = t.name.as_bytes().to_vec();
    name.truncate(15);
    name.push(0);
    let name_at = d.put(&name, 1);
    steps.add(
        SYS_PRCTL,
        [PR_SET_NAME, name_at, 0, 0, 0, 0],
        MAY_FAIL,
        "prctl(PR_SET_NAME)".into(),
    );
}

/// Which saved thread the loader's own thread becomes: the original main thread (tid ==
/// pid) when it was captured, else the first.
pub fn main_thread_index(meta: &Metadata) -> usize {
    meta.threads
        .iter()
        .position(|t| t.tid == meta.process.pid)
        .unwrap_or(0)
}

/// Builds the blob's data area for a region whose data starts at `base`.
pub fn build_program(inp: &ProgramInputs<'_>, base: u64) -> Result<BlobData, String> {
    let meta = inp.meta;
    let layout = inp.layout;
    if meta.threads.is_empty() {
        return Err("the image has no thread".into());
    }
    let main = main_thread_index(meta);
    let thread = &meta.threads[main];
    let mut d = DataBuilder {
        bytes: Vec::new(),
        base,
    };
    let mut names = Vec::new();
    let mut steps = Steps::default();

    // 1. Unmap everything of the loader but the reservation and the vdso/vvar pages.
    let mut keep: Vec<(u64, u64)> = vec![layout.reservation];
    keep.extend(inp.vdso.iter().map(|(a, _)| (a.start, a.end)));
    keep.sort_unstable();
    let mut from = 0u64;
    for &(s, e) in &keep {
        if s > from {
            steps.add(
                SYS_MUNMAP,
                [from, s - from, 0, 0, 0, 0],
                0,
                format!("munmap {from:#x}-{s:#x} (the loader)"),
            );
        }
        from = from.max(e);
    }
    let user_end = 0x7fff_ffff_f000u64;
    if from < user_end {
        steps.add(
            SYS_MUNMAP,
            [from, user_end - from, 0, 0, 0, 0],
            0,
            format!("munmap {from:#x}-{user_end:#x} (the loader)"),
        );
    }

    // 2. The kernel's vdso and vvar go where the program saw them (through a scratch area
    //    when the old and new places overlap).
    if let (Some(first), Some(last)) = (inp.vdso.first(), inp.vdso.last()) {
        let cur = (first.0.start, last.0.end);
        let tgt = (first.1, first.1 + (last.0.end - first.0.start));
        let via_scratch = overlaps(cur, tgt) && cur != tgt;
        if cur != tgt {
            for (a, target) in inp.vdso {
                let len = a.end - a.start;
                let mut src = a.start;
                if via_scratch {
                    let scratch = layout.vdso_scratch + (a.start - cur.0);
                    steps.add(
                        SYS_MREMAP,
                        [src, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, scratch, 0],
                        0,
                        format!("mremap {} to scratch", a.name),
                    );
                    src = scratch;
                }
                steps.add(
                    SYS_MREMAP,
                    [src, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, *target, 0],
                    0,
                    format!("mremap {} to {target:#x}", a.name),
                );
            }
        }
    }

    // 3. Every staged region onto its target: a page-table move, no copy.
    for s in &layout.staged {
        let len = s.target_end - s.target_start;
        steps.add(
            SYS_MREMAP,
            [
                s.staged_at,
                len,
                len,
                MREMAP_MAYMOVE | MREMAP_FIXED,
                s.target_start,
                0,
            ],
            0,
            format!(
                "mremap {:#x}-{:#x} ({})",
                s.target_start, s.target_end, meta.mappings[s.mapping].name
            ),
        );
    }

    // 3b. A lazy restart: the regions still missing pages go to the helper, before anything
    //     touches them. Without the registration a missing page would read as zero: fatal.
    if let Some(lazy) = &inp.lazy {
        for &(start, end) in lazy.regions {
            let reg = words(&[start, end - start, UFFDIO_REGISTER_MODE_MISSING, 0]);
            let at = d.put(&reg, 8);
            steps.add(
                SYS_IOCTL,
                [lazy.uffd as u64, UFFDIO_REGISTER, at, 0, 0, 0],
                0,
                format!("userfaultfd registration of {start:#x}-{end:#x}"),
            );
        }
        steps.add(
            SYS_CLOSE,
            [lazy.uffd as u64, 0, 0, 0, 0, 0],
            MAY_FAIL,
            "close of the loader's userfaultfd".into(),
        );
        steps.add(
            SYS_CLOSE,
            [lazy.ready_fd as u64, 0, 0, 0, 0, 0],
            MAY_FAIL,
            "close of the lazy helper's start pipe".into(),
        );
    }

    // 4. The mm fields: brk, argv/env (what ps shows), auxv. Refused in some setups: go on.
    let mm = &meta.mm;
    let auxv_bytes = words(&mm.auxv);
    let auxv_at = d.put(&auxv_bytes, 8);
    let mut map = words(&[
        mm.start_code,
        mm.end_code,
        mm.start_data,
        mm.end_data,
        mm.start_brk,
        mm.brk,
        mm.start_stack,
        mm.arg_start,
        mm.arg_end,
        mm.env_start,
        mm.env_end,
        auxv_at,
    ]);
    map.extend_from_slice(&(auxv_bytes.len() as u32).to_le_bytes());
    match inp.mm_restore {
        MmRestore::Map => {
            // With the privilege for it, /proc/self/exe names the program again (exe_fd); the
            // same call without it follows, so brk and argv are set either way.
            if let Some(fd) = inp.exe_fd {
                let mut with_exe = map.clone();
                with_exe.extend_from_slice(&(fd as u32).to_le_bytes());
                let at = d.put(&with_exe, 8);
                steps.add_fallible(
                    SYS_PRCTL,
                    [PR_SET_MM, PR_SET_MM_MAP, at, with_exe.len() as u64, 0, 0],
                    "prctl(PR_SET_MM_MAP): brk, argv, environment, auxv and /proc/self/exe".into(),
                    "/proc/self/exe names forkpoint, not the program (the next step sets the rest)"
                        .into(),
                );
            }
            map.extend_from_slice(&(-1i32).to_le_bytes()); // exe_fd: keep
            let map_at = d.put(&map, 8);
            let what = if inp.exe_fd.is_some() {
                "prctl(PR_SET_MM_MAP) again without exe_fd: brk, argv, environment and auxv"
            } else {
                "prctl(PR_SET_MM_MAP): brk, argv, environment and auxv"
            };
            steps.add_fallible(
                SYS_PRCTL,
                [PR_SET_MM, PR_SET_MM_MAP, map_at, map.len() as u64, 0, 0],
                what.into(),
                "the kernel's brk, argv and environment ranges (/proc/PID/cmdline, sbrk) and \
                 auxv stay the loader's"
                    .into(),
            );
        }
        MmRestore::Single(_) => {
            let want = [
                mm.start_code,
                mm.end_code,
                mm.start_data,
                mm.end_data,
                mm.start_brk,
                mm.brk,
                mm.arg_start,
                mm.arg_end,
                mm.env_start,
                mm.env_end,
            ];
            for (opt, value, name) in single_mm_ops(&want, &inp.loader_mm) {
                steps.add_fallible(
                    SYS_PRCTL,
                    [PR_SET_MM, opt, value, 0, 0, 0],
                    format!("prctl(PR_SET_MM, {name}, {value:#x})"),
                    "this field of /proc/PID/stat stays the loader's".into(),
                );
            }
            steps.add_fallible(
                SYS_PRCTL,
                [
                    PR_SET_MM,
                    PR_SET_MM_AUXV,
                    auxv_at,
                    auxv_bytes.len() as u64,
                    0,
                    0,
                ],
                "prctl(PR_SET_MM, PR_SET_MM_AUXV)".into(),
                "/proc/PID/auxv stays the loader's".into(),
            );
            if let Some(fd) = inp.exe_fd {
                steps.add_fallible(
                    SYS_PRCTL,
                    [PR_SET_MM, PR_SET_MM_EXE_FILE, fd as u64, 0, 0, 0],
                    "prctl(PR_SET_MM, PR_SET_MM_EXE_FILE)".into(),
                    "/proc/self/exe names forkpoint, not the program".into(),
                );
            }
        }
        MmRestore::Loader(_) => {
            // The kernel's break stays the loader's (frozen at its start, below the program's
            // heap: verify::check_loader_layout): a page there makes every brk() that would
            // grow it fail, so malloc turns to mmap. Already mapped (EEXIST): blocked as well.
            steps.add(
                SYS_MMAP,
                [
                    inp.loader_mm[4],
                    PAGE_SIZE,
                    0,
                    (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64,
                    u64::MAX,
                    0,
                ],
                MAY_FAIL | QUIET,
                format!("guard page at the loader's break {:#x}", inp.loader_mm[4]),
            );
        }
    }
    if let Some(fd) = inp.exe_fd {
        steps.add(
            SYS_CLOSE,
            [fd as u64, 0, 0, 0, 0, 0],
            MAY_FAIL,
            "close of the exe descriptor".into(),
        );
    }

    // 5. The other threads: each a clone that sets its TLS and tid address, then runs its own
    //    small program ending in rt_sigreturn on its frame. With the library's thread table,
    //    glibc's `pthread->tid` keeps the TID the program knows the thread by (lock owners in
    //    memory name it) and the kernel writes the new one into the table; without, the new
    //    TID goes into `pthread->tid`.
    let table = meta.library.thread_table_addr;
    let clone_flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM
        | libc::CLONE_SETTLS
        | libc::CLONE_CHILD_CLEARTID
        | if table != 0 {
            libc::CLONE_PARENT_SETTID
        } else {
            libc::CLONE_CHILD_SETTID
        }) as u64;
    let mut stack_k = 0u64;
    for (i, t) in meta.threads.iter().enumerate() {
        if i == main {
            continue;
        }
        let who = format!("thread {} ({})", t.tid, t.name);
        let mut child = Steps::default();
        thread_tail(&mut child, &mut d, t);
        let frame_at = d.put(&build_frame(t), 64);
        child.add_op(
            Op {
                nr: SYS_RT_SIGRETURN,
                flags: SET_RSP,
                rsp: frame_at,
                ..Op::default()
            },
            "rt_sigreturn".into(),
        );
        let child_at = child.emit(&mut d, inp.err_fd, &who, &mut names, None);
        let stack_top = layout.thread_stacks + (stack_k + 1) * THREAD_STACK_LEN;
        stack_k += 1;
        steps.add_op(
            Op {
                nr: SYS_CLONE,
                args: [
                    clone_flags,
                    stack_top,
                    thread_table_tid(table, i),
                    t.tid_address,
                    t.fs_base,
                    0,
                ],
                flags: CLONE,
                rsp: child_at,
                ..Op::default()
            },
            format!("clone of {who}"),
        );
    }

    // 6. This thread: its own kernel state, then resume.
    steps.add(
        SYS_SET_TID_ADDRESS,
        [thread.tid_address, 0, 0, 0, 0, 0],
        0,
        "set_tid_address".into(),
    );
    steps.add(
        SYS_ARCH_PRCTL,
        [ARCH_SET_FS, thread.fs_base, 0, 0, 0, 0],
        0,
        "arch_prctl(ARCH_SET_FS)".into(),
    );
    thread_tail(&mut steps, &mut d, thread);
    steps.add(
        SYS_CLOSE,
        [inp.err_fd as u64, 0, 0, 0, 0, 0],
        MAY_FAIL,
        "close of the loader's error descriptor".into(),
    );
    let frame_at = d.put(&build_frame(thread), 64);
    steps.add_op(
        Op {
            nr: SYS_RT_SIGRETURN,
            flags: SET_RSP,
            rsp: frame_at,
            ..Op::default()
        },
        "rt_sigreturn".into(),
    );
    let who = format!("thread {} ({})", thread.tid, thread.name);
    let program_at = steps.emit(&mut d, inp.err_fd, &who, &mut names, inp.fail_step);
    Ok(BlobData {
        program_offset: (program_at - base) as usize,
        bytes: d.bytes,
        steps: names,
    })
}

/// A lazy restart's split of the chunks: the ones filled before the hand-over and the ones
/// the helper fills after it, on demand or in the background.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LazySplit {
    /// Per chunk: filled after the hand-over.
    pub lazy: Vec<bool>,
    /// Target ranges registered with userfaultfd: each private anonymous region that holds
    /// a lazy chunk, whole (its pages stored nowhere are zero-filled on fault).
    pub regions: Vec<(u64, u64)>,
}

impl LazySplit {
    pub fn lazy_chunks(&self) -> usize {
        self.lazy.iter().filter(|&&l| l).count()
    }
}

/// Ranges whose pages must be in place before the hand-over: what the loader reads or
/// writes itself (the restore block, the thread table, the TID words) and ranges with
/// memory advice (`mlock` faults its pages in; `wipeonfork` must not be filled in a child).
pub fn pages_needed_first(meta: &Metadata) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let lib = &meta.library;
    if lib.restore_info_addr != 0 {
        out.push((
            lib.restore_info_addr,
            forkpoint_image::restore_info::LEN as u64,
        ));
    }
    if lib.thread_table_addr != 0 {
        let len = (lib.thread_table_len as u64 + 1) * thread_table::ENTRY_LEN as u64;
        out.push((lib.thread_table_addr, len));
    }
    for t in &meta.threads {
        if t.tid_address != 0 {
            out.push((t.tid_address, 4));
        }
    }
    for a in &meta.memory_advice {
        out.push((a.start, a.len));
    }
    out
}

/// Splits the chunks for a lazy restart. A chunk is lazy when all its runs lie in private
/// anonymous regions (userfaultfd fills only anonymous memory; file-backed and shared ones
/// are filled first), none of its pages is in `needed`, and it is not in `working_set`
/// (the chunks the last lazy restart of this image faulted first: they are wanted at once).
pub fn split_lazy(
    meta: &Metadata,
    layout: &Layout,
    needed: &[(u64, u64)],
    working_set: &[usize],
) -> LazySplit {
    let staged: Vec<(u64, u64, usize)> = layout
        .staged
        .iter()
        .map(|s| (s.target_start, s.target_end, s.mapping))
        .collect();
    split_lazy_in(meta, staged, needed, working_set)
}

/// [`split_lazy`] over the image's own mappings (what `forkpoint info` reports).
pub fn split_lazy_of_image(meta: &Metadata) -> LazySplit {
    let regions = meta
        .mappings
        .iter()
        .enumerate()
        .map(|(i, m)| (m.start, m.end, i))
        .collect();
    split_lazy_in(meta, regions, &pages_needed_first(meta), &[])
}

/// `staged`: (target start, end, mapping index) of every restored region.
fn split_lazy_in(
    meta: &Metadata,
    mut staged: Vec<(u64, u64, usize)>,
    needed: &[(u64, u64)],
    working_set: &[usize],
) -> LazySplit {
    staged.sort_unstable();
    let region_of = |addr: u64| -> Option<(u64, u64, usize)> {
        let i = staged.partition_point(|s| s.0 <= addr).checked_sub(1)?;
        let s = staged[i];
        (addr < s.1).then_some(s)
    };
    let anonymous = |m: &Mapping| {
        matches!(
            m.kind,
            MappingKind::Anonymous | MappingKind::Heap | MappingKind::Stack
        ) && m.memory_object.is_none()
    };
    let page_down = |a: u64| a & !(PAGE_SIZE - 1);
    let needed: Vec<(u64, u64)> = needed
        .iter()
        .filter(|r| r.1 > 0)
        .map(|&(a, l)| (page_down(a), a.saturating_add(l)))
        .collect();
    let mut split = LazySplit {
        lazy: vec![false; meta.chunks.len()],
        regions: Vec::new(),
    };
    for (i, c) in meta.chunks.iter().enumerate() {
        if working_set.contains(&i) || c.runs.is_empty() {
            continue;
        }
        let mut regions = Vec::new();
        let ok = c.runs.iter().all(|r| {
            let end = r.addr.saturating_add(r.pages.saturating_mul(PAGE_SIZE));
            let Some((s, e, m)) = region_of(r.addr) else {
                return false;
            };
            regions.push((s, e));
            end <= e
                && anonymous(&meta.mappings[m])
                && !needed.iter().any(|&n| overlaps((r.addr, end), n))
        });
        if ok {
            split.lazy[i] = true;
            split.regions.extend(regions);
        }
    }
    split.regions.sort_unstable();
    split.regions.dedup();
    split
}

/// Upper bound on the data area `build_program` produces, to size the blob region first.
pub fn data_len_bound(meta: &Metadata) -> u64 {
    // Per mapping: its move and, lazy, its registration (32 bytes of data).
    let n_ops = meta.mappings.len() as u64 * 3 + 36 + meta.threads.len() as u64 * 10;
    let per_thread: u64 = meta
        .threads
        .iter()
        .map(|t| UCONTEXT_LEN as u64 + 64 + 32 + 16 + t.affinity.len() as u64 * 8)
        .sum();
    let frames = per_thread;
    n_ops * (OP_WORDS as u64 * 8 + 300)
        + meta.mappings.len() as u64 * 32
        + frames
        + meta.mm.auxv.len() as u64 * 8
        + 4096
}

#[cfg(test)]
mod tests {
    use super::*;
    use forkpoint_image::{Contents, Mapping};

    /// The kernel's checks on one single PR_SET_MM step (kernel/sys.c
    /// validate_prctl_map_addr): every pair ordered, start_code strictly.
    fn kernel_accepts(m: &[u64; 10]) -> bool {
        m[0] < m[1] && m[2] <= m[3] && m[4] <= m[5] && m[6] <= m[7] && m[8] <= m[9]
    }

    #[test]
    fn single_mm_ops_pass_the_kernel_checks_at_every_step() {
        let loader = [
            0x5555_0000,
            0x5556_0000,
            0x5557_0000,
            0x5557_1000,
            0x5558_0000,
            0x5558_8000,
            0x7ffd_1000,
            0x7ffd_1100,
            0x7ffd_1100,
            0x7ffd_1f00,
        ];
        // The program's layout below, above, and overlapping the loader's.
        let below = loader.map(|v| v - 0x1000_0000);
        let above = loader.map(|v| v + 0x1000_0000);
        let mut overlapping = loader.map(|v| v + 0x800);
        overlapping[1] = loader[1] + 0x10_0000;
        for want in [below, above, overlapping, loader] {
            let ops = single_mm_ops(&want, &loader);
            assert_eq!(ops.len(), 10);
            let mut cur = loader;
            for (opt, value, name) in ops {
                let i = [1, 2, 3, 4, 6, 7, 8, 9, 10, 11]
                    .iter()
                    .position(|&o| o == opt)
                    .unwrap();
                cur[i] = value;
                assert!(kernel_accepts(&cur), "{name} leaves {cur:x?}");
            }
            assert_eq!(cur, want);
        }
    }

    fn mapping(start: u64, end: u64, kind: MappingKind) -> Mapping {
        Mapping {
            start,
            end,
            prot: 3,
            shared: false,
            offset: 0,
            name: String::new(),
            kind,
            contents: Contents::Stored,
            approximation: None,
            memory_object: None,
        }
    }

    #[test]
    fn finds_a_gap_clear_of_both_layouts() {
        let meta = Metadata {
            mappings: vec![
                mapping(0x1_0000_0000, 0x1_0010_0000, MappingKind::Anonymous),
                mapping(0x7ffc_0000_0000, 0x7ffc_0002_1000, MappingKind::Stack),
            ],
            ..Metadata::default()
        };
        let loader = vec![Area {
            start: 0x1_0020_0000,
            end: 0x1_0040_0000,
            name: String::new(),
        }];
        let l = plan_layout(&meta, &loader, 10_000).unwrap();
        let res = l.reservation;
        for m in &meta.mappings {
            assert!(!overlaps(res, (m.start, m.end)));
        }
        assert!(!overlaps(res, (0x1_0020_0000, 0x1_0040_0000)));
        // The stack got headroom below it.
        let st = l.staged.iter().find(|s| s.mapping == 1).unwrap();
        assert_eq!(st.target_end - st.target_start, STACK_HEADROOM);
        // Staged copies are disjoint and inside the reservation.
        for s in &l.staged {
            assert!(s.staged_at >= res.0 && s.staged_at + (s.target_end - s.target_start) <= res.1);
        }
    }

    #[test]
    fn lazy_split_leaves_only_private_anonymous_chunks_the_loader_does_not_touch() {
        use forkpoint_image::{Chunk, Compression, FileId, PageRun};
        let p = PAGE_SIZE;
        let chunk = |runs: &[(u64, u64)]| Chunk {
            offset: 0,
            stored_len: 0,
            raw_len: runs.iter().map(|r| r.1).sum::<u64>() * p,
            compression: Compression::Zstd,
            crc32: 0,
            runs: runs
                .iter()
                .map(|&(addr, pages)| PageRun { addr, pages })
                .collect(),
        };
        let file = FileId {
            path: "/lib/x.so".into(),
            dev: 0,
            inode: 0,
            size: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
        };
        let mut meta = Metadata {
            mappings: vec![
                mapping(0x10000, 0x20000, MappingKind::Heap),
                mapping(0x20000, 0x30000, MappingKind::File { file }),
                mapping(0x40000, 0x80000, MappingKind::Anonymous),
                mapping(0x90000, 0xa0000, MappingKind::SharedAnonymous),
            ],
            chunks: vec![
                chunk(&[(0x10000, 4)]),               // heap: lazy
                chunk(&[(0x20000, 1)]),               // file-backed: eager
                chunk(&[(0x40000, 2), (0x50000, 2)]), // anonymous: lazy
                chunk(&[(0x44000, 1), (0x90000, 1)]), // partly shared: eager
                chunk(&[(0x60000, 4)]),               // holds the restore block: eager
                chunk(&[(0x70000, 4)]),               // in the working set: eager
            ],
            ..Metadata::default()
        };
        meta.library.restore_info_addr = 0x61008;
        let layout = Layout {
            reservation: (0, 0),
            staged: meta
                .mappings
                .iter()
                .enumerate()
                .map(|(i, m)| Staged {
                    mapping: i,
                    target_start: m.start,
                    target_end: m.end,
                    staged_at: 0,
                })
                .collect(),
            vdso_scratch: 0,
            blob_start: 0,
            blob_len: 0,
            thread_stacks: 0,
        };
        let split = split_lazy(&meta, &layout, &pages_needed_first(&meta), &[5]);
        assert_eq!(split.lazy, vec![true, false, true, false, false, false]);
        assert_eq!(split.regions, vec![(0x10000, 0x20000), (0x40000, 0x80000)]);
        // What `forkpoint info` reports: the same, with no working set.
        assert_eq!(
            split_lazy_of_image(&meta).lazy,
            vec![true, false, true, false, false, true]
        );
    }

    #[test]
    fn vdso_layout_must_match() {
        let meta = Metadata {
            mappings: vec![mapping(
                0x7000_0000_0000,
                0x7000_0000_2000,
                MappingKind::Vdso { crc32: 0 },
            )],
            ..Metadata::default()
        };
        let loader = vec![Area {
            start: 0x7100_0000_0000,
            end: 0x7100_0000_3000,
            name: "[vdso]".into(),
        }];
        assert!(pair_vdso(&meta, &loader).is_err());
        let loader = vec![Area {
            start: 0x7100_0000_0000,
            end: 0x7100_0000_2000,
            name: "[vdso]".into(),
        }];
        assert_eq!(pair_vdso(&meta, &loader).unwrap().len(), 1);
    }

    #[test]
    fn frame_carries_resume_registers() {
        let mut t = ThreadState::default();
        t.regs.rip = 0x1234;
        t.regs.rsp = 0x5678;
        t.sigmask = 0xff;
        let f = build_frame(&t);
        let at = |o: usize| u64::from_le_bytes(f[o..o + 8].try_into().unwrap());
        assert_eq!(at(40 + 16 * 8), 0x1234);
        assert_eq!(at(40 + 15 * 8), 0x5678);
        assert_eq!(at(40 + 13 * 8), RESUME_RESTORED);
        assert_eq!(at(296), 0xff);
    }
}
