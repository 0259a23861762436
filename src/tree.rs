//! `forkpoint checkpoint --tree`: checkpoint a process and every descendant at one
//! consistent cut, into one image.
//!
//! The steps: find the tree (parents before children; zombies too) and check that every
//! living member runs the library; leave each a request and a link to one shared barrier
//! page; signal them all; once all have stopped (gather), list the tree again and make any
//! process forked meanwhile join; then let them capture and fork (fork; the last to fork
//! releases everyone), or hold them stopped for `--kill`; wait for every member's report;
//! embed the members' images in the root's and give the result its final name. An attempt
//! the tree's changes defeat is made again until the timeout. The library's side is
//! `cdylib/src/barrier.rs`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use forkpoint_image::{
    encode_metadata, FdKind, FdRestore, Footer, Header, ImageFile, MemberFd, TreeInfo, TreeMember,
    FOOTER_LEN, METADATA_ENCODING_JSON, PAGE_SIZE,
};

use crate::checkpoint::{check_target, fmt_duration, process_alive, random_id, sigqueue};
use crate::control::{self, Report, TargetEnv};
use crate::{fmt_bytes, parse, CliError};

pub use forkpoint_image::tree_barrier::MAX_MEMBERS;
use forkpoint_image::tree_barrier::{
    MAGIC, PAGE, PHASE_ABORT, PHASE_FORK, PHASE_GATHER, PHASE_RELEASE, PHASE_RESUME, W_ARRIVED,
    W_COMPARED, W_FORKED, W_HOLD, W_MAGIC, W_MEMBERS, W_PHASE, W_PIDS, W_TIMEOUT_MS, W_VERIFIED,
};

/// A process as `/proc/PID/stat` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcStat {
    pub pid: i32,
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// When it started, in clock ticks after boot (field 22).
    pub start_ticks: u64,
    /// A zombie's wait status (field 52); 0 otherwise.
    pub exit_code: i32,
}

/// Parses `/proc/PID/stat` (the command name may hold spaces and parentheses).
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let comm = text.get(open + 1..close)?.to_string();
    let mut rest = text.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    let pgid = rest.next()?.parse().ok()?;
    let sid = rest.next()?.parse().ok()?;
    // Fields 7.. (rest now starts at field 7): starttime is 22, exit_code 52.
    let mut rest = rest.skip(22 - 7);
    let start_ticks = rest.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let exit_code = rest.nth(52 - 23).and_then(|v| v.parse().ok()).unwrap_or(0);
    Some(ProcStat {
        pid,
        comm,
        state,
        ppid,
        pgid,
        sid,
        start_ticks,
        exit_code,
    })
}

/// The library's writer children are named so: they are not the program's processes.
const WRITER_COMM: &str = "fp-writer";
/// Nor is the process through which a tree's root started this command.
const COORDINATOR_COMM: &str = "fp-coordinator";

/// `root` and its descendants among `all`, parents before children (breadth first),
/// without the library's image writers and this command (the library of a tree's root
/// starts it, through a helper process, to checkpoint the tree).
pub fn tree_of(root: i32, all: &[ProcStat]) -> Vec<ProcStat> {
    let me = std::process::id() as i32;
    let ours = |p: &ProcStat| {
        p.comm == WRITER_COMM
            || p.comm == COORDINATOR_COMM
            || p.comm == forkpoint_restart_loader::lazy::HELPER_COMM
            || p.pid == me
    };
    let mut out: Vec<ProcStat> = all.iter().filter(|p| p.pid == root).cloned().collect();
    let mut i = 0;
    while i < out.len() {
        let parent = out[i].pid;
        let mut kids: Vec<ProcStat> = all
            .iter()
            .filter(|p| p.ppid == parent && !ours(p))
            .cloned()
            .collect();
        kids.sort_by_key(|p| p.pid);
        out.extend(kids);
        i += 1;
    }
    out
}

/// Whether `pid` has children (other than the library's image writers): `checkpoint` then
/// takes the whole tree unless told `--no-tree`.
pub fn has_children(pid: i32) -> bool {
    tree_of(pid, &all_processes()).len() > 1
}

/// Whether `pid` runs in a PID namespace nested in ours (a restored tree's): its `NSpid`
/// in `/proc/PID/status` has more than one entry.
pub fn in_nested_pid_namespace(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))?
                .to_string();
            Some(line.split_whitespace().count() > 1)
        })
        .unwrap_or(false)
}

/// The last entries of `NSpid`, `NSpgid` and `NSsid` in `/proc/PID/status`: the process's
/// PID, group and session in its own PID namespace (a restored tree's, where they are what
/// its image must hold).
fn own_namespace_ids(pid: i32) -> Option<(i32, i32, i32)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let last = |key: &str| -> Option<i32> {
        let line = status.lines().find_map(|l| l.strip_prefix(key))?;
        line.split_whitespace().last()?.parse().ok()
    };
    Some((last("NSpid:")?, last("NSpgid:")?, last("NSsid:")?))
}

/// Whether `pid`, in a nested PID namespace, has a mount namespace of its own (a restored
/// tree's, where `forkpoint restart` mounted the namespace's own /proc): then its library
/// sees the PIDs and TIDs its syscalls use and it can be checkpointed.
pub fn has_own_proc(pid: i32) -> bool {
    let ours = fs::read_link("/proc/self/ns/mnt");
    let theirs = fs::read_link(format!("/proc/{pid}/ns/mnt"));
    matches!((ours, theirs), (Ok(a), Ok(b)) if a != b)
}

/// If `pid` is a `forkpoint restart` running a restored tree (its one child is the init of
/// a nested PID namespace, whose one living child is the tree's root), the root's PID.
pub fn restored_root(pid: i32) -> Option<i32> {
    let all = all_processes();
    let only_child = |p: i32| {
        let mut kids = all.iter().filter(|c| c.ppid == p && c.state != 'Z');
        match (kids.next(), kids.next()) {
            (Some(c), None) => Some(c.pid),
            _ => None,
        }
    };
    if !all.iter().any(|p| p.pid == pid && p.comm == "forkpoint") {
        return None;
    }
    let init = only_child(pid)?;
    if !in_nested_pid_namespace(init) || own_namespace_ids(init)?.0 != 1 {
        return None;
    }
    only_child(init)
}

/// The PIDs in /proc now.
fn pids_now() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn stat_of(pid: i32) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The tree under `root` while its living members are stopped, read cheaply (this runs in
/// the pause): the members as they are (stopped, their parents cannot change), the zombies
/// that still exist, and every process not in `seen` (the PIDs of the first listing), the
/// only ones that can be a member's new child. (A PID of the first listing reused for a
/// new child within the attempt would take the kernel cycling through every PID.)
fn relist(
    root: i32,
    seen: &std::collections::HashSet<i32>,
    members: &[ProcStat],
    zombies: &[ProcStat],
) -> Vec<ProcStat> {
    let mut all: Vec<ProcStat> = members.to_vec();
    all.extend(zombies.iter().filter_map(|z| stat_of(z.pid)));
    all.extend(
        pids_now()
            .into_iter()
            .filter(|p| !seen.contains(p))
            .filter_map(stat_of),
    );
    tree_of(root, &all)
}

fn all_processes() -> Vec<ProcStat> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name();
        let pid: i32 = name.to_str()?.parse().ok()?;
        parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    })
    .collect()
}

/// The barrier page, mapped shared with the members.
struct BarrierPage {
    addr: *mut u8,
}

impl BarrierPage {
    fn map(file: &File) -> io::Result<BarrierPage> {
        use std::os::fd::AsRawFd;
        // SAFETY: a new shared mapping of our own file; no MAP_FIXED.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(BarrierPage { addr: addr.cast() })
    }

    fn word(&self, i: usize) -> &AtomicU32 {
        assert!(i < PAGE / 4);
        // SAFETY: the page is mapped for the life of self, 4-aligned; the members access it
        // atomically too.
        unsafe { &*(self.addr.add(4 * i) as *const AtomicU32) }
    }

    /// Moves the phase from `from` to `to`, unless the members already moved it on; true if
    /// the phase is `to` now.
    fn advance(&self, from: u32, to: u32) -> bool {
        let now =
            match self
                .word(W_PHASE)
                .compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => to,
                Err(cur) => cur,
            };
        self.wake_phase();
        now == to
    }

    fn wake(&self, i: usize) {
        // SAFETY: FUTEX_WAKE on a valid word has no memory effects.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.word(i).as_ptr(),
                libc::FUTEX_WAKE,
                i32::MAX,
                0,
                0,
                0,
            )
        };
    }

    fn wake_phase(&self) {
        self.wake(W_PHASE);
    }

    /// Waits until word `i` reaches `n` or `deadline`; true if it did.
    fn wait_count(
        &self,
        i: usize,
        n: u32,
        deadline: Instant,
        alive: &mut dyn FnMut() -> bool,
    ) -> bool {
        loop {
            let v = self.word(i).load(Ordering::SeqCst);
            if v >= n {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || !alive() {
                return false;
            }
            let wait = (deadline - now).min(Duration::from_millis(20));
            let ts = libc::timespec {
                tv_sec: wait.as_secs() as i64,
                tv_nsec: wait.subsec_nanos() as i64,
            };
            // SAFETY: FUTEX_WAIT on a valid word with a valid timeout.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.word(i).as_ptr(),
                    libc::FUTEX_WAIT,
                    v,
                    &ts as *const libc::timespec,
                    0,
                    0,
                )
            };
        }
    }

    fn arrived_pids(&self) -> Vec<i32> {
        let n = (self.word(W_ARRIVED).load(Ordering::SeqCst) as usize).min(MAX_MEMBERS);
        (0..n)
            .map(|k| self.word(W_PIDS + k).load(Ordering::SeqCst) as i32)
            .collect()
    }
}

impl Drop for BarrierPage {
    fn drop(&mut self) {
        // SAFETY: our mapping, unused after this.
        unsafe { libc::munmap(self.addr.cast(), PAGE) };
    }
}

pub struct TreeArgs {
    pub root: i32,
    pub output: PathBuf,
    pub timeout: Duration,
    pub kill: bool,
}

/// Files of the request, removed however the checkpoint ends.
struct Cleanup {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = fs::remove_file(f);
        }
        for d in &self.dirs {
            let _ = fs::remove_dir_all(d);
        }
    }
}

fn name_of(p: &ProcStat) -> String {
    format!("{} ({})", p.pid, p.comm)
}

/// Why an attempt made no image.
enum Again {
    /// The tree changed under the checkpoint (a process started, exited or was still
    /// starting its program): another attempt may succeed.
    Retry(String),
    Fail(CliError),
}

impl From<CliError> for Again {
    fn from(e: CliError) -> Again {
        Again::Fail(e)
    }
}

/// Checkpoints the tree under `args.root`. Returns the image's path. A tree that changes
/// during an attempt (a build starting and ending jobs) is tried again until the timeout.
pub fn checkpoint_tree(args: &TreeArgs) -> Result<String, CliError> {
    let t0 = Instant::now();
    let deadline = t0 + args.timeout;
    let mut backoff = Duration::from_millis(2);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match attempt_tree(args, t0, deadline) {
            Ok(path) => return Ok(path),
            Err(Again::Fail(e)) => return Err(e),
            Err(Again::Retry(why)) => {
                if Instant::now() + backoff >= deadline {
                    return Err(CliError::new(format!(
                        "the tree under {} kept changing during the checkpoint ({attempt} \
                         attempts in {}; the last: {why}); no image, the processes run on",
                        args.root,
                        fmt_duration(args.timeout)
                    )));
                }
                // Not a wait for a condition: a pause before trying again, growing.
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(100));
            }
        }
    }
}

/// A process that started less than this long ago may still be loading its program (and
/// the library): not being ready is then a reason to try again, not to fail.
const STARTING: Duration = Duration::from_secs(1);

fn age(p: &ProcStat) -> Option<Duration> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let up: f64 = fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(Duration::from_secs_f64(
        (up - p.start_ticks as f64 / hz).max(0.0),
    ))
}

fn attempt_tree(args: &TreeArgs, t0: Instant, deadline: Instant) -> Result<String, Again> {
    let root = args.root;
    // Inside a restored tree's PID namespace the library names its runtime directory, and
    // its image, with the PIDs it has there.
    let nested = in_nested_pid_namespace(root);
    let rt_pid = |pid: i32| {
        if nested {
            own_namespace_ids(pid).map_or(pid, |i| i.0)
        } else {
            pid
        }
    };
    let everyone = all_processes();
    let mut seen: std::collections::HashSet<i32> = everyone.iter().map(|p| p.pid).collect();
    let listed = tree_of(root, &everyone);
    if listed.is_empty() {
        return Err(CliError::new(format!("no process with PID {root}")).into());
    }
    if listed[0].state == 'Z' {
        return Err(CliError::new(format!("process {root} has exited (zombie)")).into());
    }
    if listed.len() > MAX_MEMBERS {
        return Err(CliError::new(format!(
            "the tree under {root} has {} processes; at most {MAX_MEMBERS} can be checkpointed together",
            listed.len()
        ))
        .into());
    }
    // Zombies are part of the tree (their parents will reap them) but take no part in the
    // barrier.
    let (members, zombies): (Vec<ProcStat>, Vec<ProcStat>) =
        listed.iter().cloned().partition(|p| p.state != 'Z');
    let (mut members, mut zombies) = (members, zombies);
    let mut signals = Vec::new();
    for m in &members {
        signals.push(signal_for(m)?);
    }

    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let base = control::runtime_base(&TargetEnv::of_pid(root), uid);
    control::ensure_private_dir(&base, uid).map_err(CliError::new)?;
    control::ensure_private_dir(&base.join(rt_pid(root).to_string()), uid)
        .map_err(CliError::new)?;
    let id = random_id()?;
    let out_dir = args.output.parent().unwrap_or(Path::new("/")).to_path_buf();
    let out_name = args
        .output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tree.fpk".into());
    let stage = out_dir.join(format!(".{out_name}.members-{id}"));
    let mut cleanup = Cleanup {
        files: Vec::new(),
        dirs: Vec::new(),
    };
    fs::create_dir(&stage)
        .map_err(|e| CliError::new(format!("cannot create {}: {e}", stage.display())))?;
    cleanup.dirs.push(stage.clone());

    // The barrier, linked into every member's runtime directory.
    let barrier_path = base
        .join(rt_pid(root).to_string())
        .join(format!("barrier.{id}"));
    let barrier_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&barrier_path)
        .map_err(|e| CliError::new(format!("cannot create {}: {e}", barrier_path.display())))?;
    cleanup.files.push(barrier_path.clone());
    let mut page = vec![0u8; PAGE];
    for (w, v) in [
        (W_MAGIC, MAGIC),
        (W_MEMBERS, members.len() as u32),
        (
            W_TIMEOUT_MS,
            args.timeout.as_millis().min(u32::MAX as u128) as u32,
        ),
    ] {
        page[4 * w..4 * w + 4].copy_from_slice(&v.to_le_bytes());
    }
    barrier_file
        .write_all_at(&page, 0)
        .map_err(|e| CliError::new(format!("cannot write {}: {e}", barrier_path.display())))?;
    let barrier = BarrierPage::map(&barrier_file)
        .map_err(|e| CliError::new(format!("cannot map {}: {e}", barrier_path.display())))?;
    let at = Enrolment {
        base: &base,
        rt_pid: &rt_pid,
        uid,
        root,
        id,
        barrier_path: &barrier_path,
        stage: &stage,
    };
    let mut requests = Vec::new();
    for m in &members {
        requests.push(at.enroll(m, &mut cleanup)?);
    }

    // Signal everyone, then run the barrier.
    for (k, (m, &signo)) in members.iter().zip(&signals).enumerate() {
        if let Err(e) = sigqueue(m.pid, signo, id) {
            barrier.advance(PHASE_GATHER, PHASE_ABORT);
            settle(&members[..k], &requests[..k], signals[0]);
            let msg = format!("cannot signal process {} of the tree: {e}", name_of(m));
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Err(Again::Retry(msg));
            }
            return Err(CliError::new(msg).into());
        }
    }

    // Gather. Once all are stopped, the tree is listed again: a process started meanwhile
    // (forked before its parent stopped) joins the cut, or a parent's image would name a
    // child the tree image does not hold. When no newcomer is left, this process moves the
    // phase to fork; the last member to fork moves it to release.
    let mut rounds = 0;
    loop {
        let n = members.len() as u32;
        let mut gone = None;
        let arrived = {
            let mut alive = || {
                let dead = members.iter().find(|m| !process_alive(m.pid));
                gone = dead.cloned();
                dead.is_none()
            };
            barrier.wait_count(W_ARRIVED, n, deadline, &mut alive)
        };
        if !arrived && barrier.advance(PHASE_GATHER, PHASE_ABORT) {
            if let Some(m) = gone {
                settle(&members, &requests, signals[0]);
                return Err(Again::Retry(format!(
                    "process {} exited during the checkpoint",
                    name_of(&m)
                )));
            }
            let arrived = barrier.arrived_pids();
            let missing: Vec<String> = members
                .iter()
                .filter(|m| !arrived.contains(&m.pid))
                .map(name_of)
                .collect();
            return Err(CliError::new(format!(
                "timed out after {}: {} of the tree did not stop for the checkpoint (blocking the \
                 checkpoint signal, or stopped?); everyone was released, no image",
                fmt_duration(args.timeout),
                missing.join(", ")
            ))
            .into());
        }
        let now = relist(root, &seen, &members, &zombies);
        // A zombie reaped before its parent stopped is not the parent's child in its image.
        zombies.retain(|z| now.iter().any(|p| p.pid == z.pid));
        let newcomers: Vec<ProcStat> = now
            .into_iter()
            .filter(|p| {
                !members.iter().any(|m| m.pid == p.pid) && !zombies.iter().any(|z| z.pid == p.pid)
            })
            .collect();
        if newcomers.is_empty() {
            break;
        }
        rounds += 1;
        let sig0 = signals[0];
        let abandon = |why: String, members: &[ProcStat], requests: &[_]| {
            barrier.advance(PHASE_GATHER, PHASE_ABORT);
            settle(members, requests, sig0);
            Again::Retry(why)
        };
        if rounds > MAX_JOIN_ROUNDS || members.len() + newcomers.len() > MAX_MEMBERS {
            return Err(abandon(
                format!(
                    "the tree kept growing while it was stopped ({} processes)",
                    members.len()
                ),
                &members,
                &requests,
            ));
        }
        let first_new = members.len();
        seen.extend(newcomers.iter().map(|p| p.pid));
        for p in newcomers {
            if p.state == 'Z' {
                zombies.push(p);
                continue;
            }
            let signo = match joining_signal(&p) {
                Ok(s) => s,
                Err(why) => return Err(abandon(why, &members, &requests)),
            };
            let request = match at.enroll(&p, &mut cleanup) {
                Ok(r) => r,
                Err(e) => {
                    barrier.advance(PHASE_GATHER, PHASE_ABORT);
                    settle(&members, &requests, signals[0]);
                    return Err(e);
                }
            };
            members.push(p);
            signals.push(signo);
            requests.push(request);
        }
        barrier
            .word(W_MEMBERS)
            .store(members.len() as u32, Ordering::SeqCst);
        for k in first_new..members.len() {
            if let Err(e) = sigqueue(members[k].pid, signals[k], id) {
                let why = format!(
                    "cannot signal process {} of the tree: {e}",
                    name_of(&members[k])
                );
                return Err(abandon(why, &members[..k], &requests[..k]));
            }
        }
    }
    // The PIDs, groups and sessions the image holds are those the processes have in their
    // own namespace (read now, while all are stopped).
    let inner: std::collections::HashMap<i32, (i32, i32, i32)> = if nested {
        members
            .iter()
            .chain(&zombies)
            .filter_map(|p| Some((p.pid, own_namespace_ids(p.pid)?)))
            .collect()
    } else {
        Default::default()
    };
    let t_stopped = t0.elapsed();
    let n = members.len() as u32;
    barrier
        .word(W_HOLD)
        .store(args.kill as u32, Ordering::SeqCst);
    barrier.word(W_VERIFIED).store(1, Ordering::SeqCst);
    barrier.advance(PHASE_GATHER, PHASE_FORK);
    let forked = barrier.wait_count(W_FORKED, n, deadline, &mut || true)
        || !barrier.advance(PHASE_FORK, PHASE_ABORT);
    barrier.advance(PHASE_FORK, PHASE_RELEASE);

    // Every member's report.
    let mut pause_us = 0u64;
    let mut failures = Vec::new();
    for (m, (request, report, _)) in members.iter().zip(&requests) {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        match crate::checkpoint::wait_for_report(m.pid, request, report, left, signals[0]) {
            Ok(Report::Ok { pause_us: p, .. }) => pause_us = pause_us.max(p.unwrap_or(0)),
            Ok(Report::Error(e)) => failures.push(format!("{}: {e}", name_of(m))),
            Err(e) => failures.push(format!("{}: {}", name_of(m), e.message)),
        }
    }
    if !forked && failures.is_empty() {
        failures.push("not every member forked its writer in time".into());
    }
    // Held members (`--kill`) run on if there is no image after all. The writers wait,
    // holding their members' descriptors as they were at the cut, until the descriptors
    // are compared (or this ends otherwise).
    let resume = || {
        barrier.advance(PHASE_RELEASE, PHASE_RESUME);
    };
    let compared = || {
        barrier.word(W_COMPARED).store(1, Ordering::SeqCst);
        barrier.wake(W_COMPARED);
    };
    if !failures.is_empty() {
        compared();
        resume();
        return Err(CliError::new(format!(
            "checkpoint of the tree under {root} failed (the processes run on, no image): {}",
            failures.join("; ")
        ))
        .into());
    }

    let images: Vec<&Path> = requests.iter().map(|(_, _, i)| i.as_path()).collect();
    let mut shared_files = shared_descriptions(&members, &images);
    for d in shared_files.iter_mut().flatten() {
        d.pid = inner.get(&d.pid).map_or(d.pid, |i| i.0);
    }
    compared();
    let bytes = assemble(
        &members,
        &zombies,
        &inner,
        &images,
        &shared_files,
        &args.output,
        id,
    )
    .inspect_err(|_| resume())?;
    eprintln!(
        "forkpoint: checkpoint of the tree under {root} ({} processes{}) written: {}, all \
         stopped after {:.3} ms, longest pause {:.3} ms, durable after {} ms",
        members.len(),
        match zombies.len() {
            0 => String::new(),
            1 => " and a zombie".into(),
            z => format!(" and {z} zombies"),
        },
        fmt_bytes(bytes),
        t_stopped.as_secs_f64() * 1e3,
        pause_us as f64 / 1e3,
        t0.elapsed().as_millis()
    );
    drop(cleanup);
    if args.kill {
        // Still held at the barrier since the cut. All stopped first, then all killed: no
        // process of the tree can see another die and react (a shell reporting its
        // child's death and exiting on its own).
        for sig in [libc::SIGSTOP, libc::SIGKILL] {
            for m in &members {
                // SAFETY: kill with a valid signal has no memory-safety preconditions.
                unsafe { libc::kill(m.pid, sig) };
            }
        }
        eprintln!(
            "forkpoint: killed the {} processes of the tree",
            members.len()
        );
    }
    Ok(args.output.display().to_string())
}

/// Most times the tree is listed again while stopped before the attempt is abandoned.
const MAX_JOIN_ROUNDS: usize = 8;

/// What each member needs to take part in one attempt.
struct Enrolment<'a> {
    base: &'a Path,
    /// The PID naming a process's runtime directory (see `attempt_tree`).
    rt_pid: &'a dyn Fn(i32) -> i32,
    uid: u32,
    root: i32,
    id: i32,
    barrier_path: &'a Path,
    stage: &'a Path,
}

impl Enrolment<'_> {
    /// Gives `m` its runtime directory, a link to the barrier and a request naming its
    /// member image: (request, report, image).
    fn enroll(
        &self,
        m: &ProcStat,
        cleanup: &mut Cleanup,
    ) -> Result<(PathBuf, PathBuf, PathBuf), Again> {
        let dir = self.base.join((self.rt_pid)(m.pid).to_string());
        control::ensure_private_dir(&dir, self.uid).map_err(CliError::new)?;
        if m.pid != self.root {
            let link = dir.join(format!("barrier.{}", self.id));
            fs::hard_link(self.barrier_path, &link)
                .map_err(|e| CliError::new(format!("cannot link {}: {e}", link.display())))?;
            cleanup.files.push(link);
        }
        let image = self.stage.join(format!("{}.fpk", m.pid));
        control::write_atomically(
            &dir,
            &format!("request.{}", self.id),
            image.to_string_lossy().as_bytes(),
        )
        .map_err(CliError::new)?;
        let request = dir.join(format!("request.{}", self.id));
        cleanup.files.push(request.clone());
        let report = dir.join(format!("report.{}", self.id));
        cleanup.files.push(report.clone());
        Ok((request, report, image))
    }
}

/// The checkpoint signal of member `m`, once it is ready to take it. A process that just
/// started may still be loading its program and the library: try again later.
fn signal_for(m: &ProcStat) -> Result<i32, Again> {
    let env = TargetEnv::of_pid(m.pid);
    let signo = match env.get("FORKPOINT_SIGNAL") {
        Some(s) => parse::parse_signal(s)
            .map_err(|e| CliError::new(format!("FORKPOINT_SIGNAL in {}: {e}", env.source)))?,
        None => parse::DEFAULT_SIGNAL,
    };
    if let Err(e) = check_target(m.pid, signo) {
        let msg = format!(
            "process {} of the tree cannot be checkpointed: {}",
            name_of(m),
            e.message
        );
        if !process_alive(m.pid) || age(m).is_some_and(|a| a < STARTING) {
            return Err(Again::Retry(msg));
        }
        return Err(CliError::new(msg).into());
    }
    Ok(signo)
}

/// How long the stopped tree waits for a newcomer to be ready for the signal.
const JOIN_WAIT: Duration = Duration::from_millis(50);

/// `signal_for` a process that started during the gather, while the others wait (briefly:
/// they are stopped). Err: why the attempt must be abandoned.
fn joining_signal(p: &ProcStat) -> Result<i32, String> {
    let until = Instant::now() + JOIN_WAIT;
    loop {
        match signal_for(p) {
            Ok(s) => return Ok(s),
            Err(Again::Retry(why)) if Instant::now() >= until => return Err(why),
            Err(Again::Fail(e)) => return Err(e.message),
            Err(Again::Retry(_)) => std::thread::sleep(Duration::from_micros(200)),
        }
    }
}

/// Which descriptors of different members are one open file description (one offset, as
/// after `fork`: a job's stdout redirected to a file, a log opened before forking). Asked
/// of the kernel (`kcmp`) on the members' writers, which hold the descriptors as they were
/// at the cut; only files a restart reopens are compared (others are recreated). Without
/// `kcmp` (or the writers), none is taken as shared.
fn shared_descriptions(members: &[ProcStat], images: &[&Path]) -> Vec<Vec<MemberFd>> {
    let all = all_processes();
    let writer_of = |pid: i32| {
        let mut w = all
            .iter()
            .filter(|p| p.ppid == pid && p.comm == WRITER_COMM && p.state != 'Z');
        match (w.next(), w.next()) {
            (Some(p), None) => Some(p.pid),
            _ => None,
        }
    };
    // (writer, descriptor, path) of every file a restart would reopen.
    let mut candidates: Vec<(i32, MemberFd, String)> = Vec::new();
    for (m, path) in members.iter().zip(images) {
        let (Some(w), Ok(img)) = (writer_of(m.pid), ImageFile::open(path)) else {
            continue;
        };
        for f in &img.metadata.fds {
            if f.restore == FdRestore::Reopen && matches!(f.kind, FdKind::Regular { .. }) {
                candidates.push((
                    w,
                    MemberFd {
                        pid: m.pid,
                        fd: f.fd,
                    },
                    f.path.clone(),
                ));
            }
        }
    }
    let same = |a: &(i32, MemberFd, String), b: &(i32, MemberFd, String)| {
        // SAFETY: kcmp only compares kernel objects of two processes.
        let r = unsafe {
            libc::syscall(
                libc::SYS_kcmp,
                a.0,
                b.0,
                0, // KCMP_FILE
                a.1.fd as libc::c_long,
                b.1.fd as libc::c_long,
            )
        };
        r == 0
    };
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for i in 0..candidates.len() {
        let joined = groups.iter_mut().find(|g| {
            let first = &candidates[g[0]];
            first.2 == candidates[i].2
                && !g
                    .iter()
                    .any(|&k| candidates[k].1.pid == candidates[i].1.pid)
                && same(first, &candidates[i])
        });
        match joined {
            Some(g) => g.push(i),
            None => groups.push(vec![i]),
        }
    }
    groups
        .into_iter()
        .filter(|g| g.len() > 1)
        .map(|g| g.into_iter().map(|k| candidates[k].1).collect())
        .collect()
}

/// After an abandoned attempt: waits (briefly) for each member's report, so none is
/// written after the attempt's files are removed.
fn settle(members: &[ProcStat], requests: &[(PathBuf, PathBuf, PathBuf)], signo: i32) {
    for (m, (request, report, _)) in members.iter().zip(requests) {
        if process_alive(m.pid) && fs::metadata(request).is_ok() {
            let _ = crate::checkpoint::wait_for_report(
                m.pid,
                request,
                report,
                Duration::from_secs(2),
                signo,
            );
        }
    }
}

fn pad_to_page(f: &mut File) -> io::Result<u64> {
    let pos = f.seek(SeekFrom::End(0))?;
    let padded = pos.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    if padded > pos {
        f.write_all(&vec![0u8; (padded - pos) as usize])?;
    }
    Ok(padded)
}

/// The tree image: the root's image up to its metadata, each other member's whole image
/// (page-aligned), the root's metadata with the tree, a footer. Written under a temporary
/// name, made durable, then renamed. Returns its size.
fn assemble(
    members: &[ProcStat],
    zombies: &[ProcStat],
    inner: &std::collections::HashMap<i32, (i32, i32, i32)>,
    images: &[&Path],
    shared_files: &[Vec<MemberFd>],
    output: &Path,
    id: i32,
) -> Result<u64, CliError> {
    let err = |what: &str, p: &Path, e: &dyn std::fmt::Display| {
        CliError::new(format!("{what} {}: {e}", p.display()))
    };
    let root_img = ImageFile::open(images[0]).map_err(|e| err("cannot read", images[0], &e))?;
    let tmp = output.with_file_name(format!(
        ".{}.tmp-{id}",
        output
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let result = (|| -> Result<u64, CliError> {
        let mut out = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| err("cannot create", &tmp, &e))?;
        let io_err = |e: io::Error| err("cannot write", &tmp, &e);
        let mut root_file = File::open(images[0]).map_err(|e| err("cannot read", images[0], &e))?;
        io::copy(
            &mut (&mut root_file).take(root_img.footer.metadata_offset),
            &mut out,
        )
        .map_err(io_err)?;
        let mut tree = TreeInfo::default();
        for (i, (m, path)) in members.iter().zip(images).enumerate() {
            let img = ImageFile::open(path).map_err(|e| err("cannot read", path, &e))?;
            let (image_offset, image_len) = if i == 0 {
                (0, 0)
            } else {
                let at = pad_to_page(&mut out).map_err(io_err)?;
                let mut f = File::open(path).map_err(|e| err("cannot read", path, &e))?;
                let len = io::copy(&mut f, &mut out).map_err(io_err)?;
                (at, len)
            };
            let meta = &img.metadata;
            let own = inner.get(&m.pid).copied();
            tree.members.push(TreeMember {
                pid: meta.process.pid,
                ppid: if i == 0 {
                    meta.process.ppid
                } else {
                    inner.get(&m.ppid).map_or(m.ppid, |p| p.0)
                },
                pgid: own.map_or(m.pgid, |o| o.1),
                sid: own.map_or(m.sid, |o| o.2),
                exe: meta.process.exe.clone(),
                cmdline: meta.process.cmdline.clone(),
                threads: meta.threads.len() as u32,
                bytes: meta.stats.pages_stored * PAGE_SIZE,
                image_offset,
                image_len,
                exited: None,
            });
        }
        // Zombies after the living (their parents come earlier), with their wait status.
        for z in zombies {
            let own = inner.get(&z.pid).copied();
            tree.members.push(TreeMember {
                pid: own.map_or(z.pid, |o| o.0),
                ppid: inner.get(&z.ppid).map_or(z.ppid, |p| p.0),
                pgid: own.map_or(z.pgid, |o| o.1),
                sid: own.map_or(z.sid, |o| o.2),
                exe: String::new(),
                cmdline: vec![z.comm.clone()],
                threads: 0,
                bytes: 0,
                image_offset: 0,
                image_len: 0,
                exited: Some(z.exit_code),
            });
        }
        tree.shared_files = shared_files.to_vec();
        let mut meta = root_img.metadata.clone();
        meta.tree = Some(tree);
        let at = out.seek(SeekFrom::End(0)).map_err(io_err)?;
        let mb = encode_metadata(&meta);
        let footer = Footer {
            metadata_offset: at,
            metadata_len: mb.len() as u64,
            metadata_crc32: forkpoint_image::crc32(&mb),
            metadata_encoding: METADATA_ENCODING_JSON,
            file_len: at + mb.len() as u64 + FOOTER_LEN as u64,
        };
        out.write_all(&mb).map_err(io_err)?;
        out.write_all(&footer.encode()).map_err(io_err)?;
        out.write_all_at(&Header::tree().encode(), 0)
            .map_err(io_err)?;
        out.sync_all().map_err(io_err)?;
        // Check what we wrote before it gets the final name.
        let check =
            ImageFile::open(&tmp).map_err(|e| err("the tree image does not verify:", &tmp, &e))?;
        for m in check
            .metadata
            .tree
            .as_ref()
            .map(|t| t.members.clone())
            .unwrap_or_default()
            .iter()
            .filter(|m| m.exited.is_none())
        {
            check
                .open_member(&tmp, m.pid)
                .map_err(|e| err("the tree image does not verify:", &tmp, &e))?;
        }
        fs::rename(&tmp, output).map_err(|e| err("cannot rename the image to", output, &e))?;
        if let Some(dir) = output.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(footer.file_len)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, ppid: i32) -> ProcStat {
        ProcStat {
            pid,
            comm: format!("p{pid}"),
            state: 'S',
            ppid,
            pgid: 1,
            sid: 1,
            start_ticks: 0,
            exit_code: 0,
        }
    }

    #[test]
    fn stat_with_odd_names() {
        let s = parse_stat("42 (a) b (c)) S 7 42 1 0 -1").unwrap();
        assert_eq!(
            (s.pid, s.comm.as_str(), s.state, s.ppid, s.pgid, s.sid),
            (42, "a) b (c)", 'S', 7, 42, 1)
        );
        assert!(parse_stat("garbage").is_none());
        // A zombie: starttime (field 22) and exit_code (field 52).
        let mut fields: Vec<String> = (4..=52).map(|f| f.to_string()).collect();
        fields[22 - 4] = "12345".into();
        fields[52 - 4] = "1792".into();
        let z = parse_stat(&format!("9 (sh) Z {}", fields.join(" "))).unwrap();
        assert_eq!(
            (z.state, z.ppid, z.start_ticks, z.exit_code),
            ('Z', 4, 12345, 1792)
        );
        assert!(parse_stat("1 (x) S").is_none());
    }

    #[test]
    fn tree_lists_parents_first() {
        let all = [p(1, 0), p(10, 1), p(12, 10), p(11, 10), p(13, 12), p(20, 1)];
        let t: Vec<i32> = tree_of(10, &all).iter().map(|p| p.pid).collect();
        assert_eq!(t, [10, 11, 12, 13]);
        assert!(tree_of(99, &all).is_empty());
    }
}
