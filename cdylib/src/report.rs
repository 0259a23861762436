//! Reports and log lines, written with raw syscalls (usable in the handler and the writer).
//!
//! A report is `key=value` lines in `<runtime>/<pid>/report.<id>`, written to a temporary
//! name and renamed, so `forkpoint checkpoint` never reads half a report.

use crate::config::LogLevel;
use crate::fixbuf::FixBuf;
use crate::state::RUNTIME;
use crate::sys;

pub type Line = FixBuf<1024>;

/// Writes `body` to `path` atomically (mode 0600). Errors are ignored: a report that cannot
/// be written shows up as a timeout in the CLI, and the log says why.
pub fn write_report(path: &[u8], body: &[u8]) {
    if path.is_empty() {
        return;
    }
    let mut tmp = FixBuf::<4200>::new();
    tmp.push(path).str(".tmp");
    let mut fin = FixBuf::<4200>::new();
    fin.push(path);
    let _ = sys::unlink(tmp.as_cstr());
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let Ok(fd) = sys::open(tmp.as_cstr(), flags, 0o600) else {
        return;
    };
    let ok = sys::write_all(fd, body).is_ok();
    sys::close(fd);
    if ok {
        let _ = sys::rename(tmp.as_cstr(), fin.as_cstr());
    } else {
        let _ = sys::unlink(tmp.as_cstr());
    }
}

/// Creates the runtime directories (mode 0700) the report path lives in.
pub fn ensure_runtime_dir(pid: i32) {
    let Some(rt) = RUNTIME.get() else { return };
    let mut p = FixBuf::<4200>::new();
    p.str(&rt.config.runtime_base);
    let _ = sys::mkdir(p.as_cstr(), 0o700);
    p.str("/").i64(pid as i64);
    let _ = sys::mkdir(p.as_cstr(), 0o700);
}

/// Builds `<runtime>/<pid>/<name>.<id>`.
pub fn runtime_file(out: &mut FixBuf<4096>, pid: i32, name: &str, id: u64) {
    out.clear();
    if let Some(rt) = RUNTIME.get() {
        out.str(&rt.config.runtime_base)
            .str("/")
            .i64(pid as i64)
            .str("/")
            .str(name)
            .str(".")
            .u64(id);
    }
}

pub fn error_report(path: &[u8], msg: &[u8]) {
    let mut body = FixBuf::<2048>::new();
    body.str("status=error\nerror=").push(msg).str("\n");
    write_report(path, body.as_bytes());
}

pub fn log_enabled(level: LogLevel) -> bool {
    RUNTIME.get().is_some_and(|rt| rt.config.log >= level)
}

/// `forkpoint[PID]: msg` on stderr, if logging is on at `level`.
pub fn log(level: LogLevel, msg: &[u8]) {
    if !log_enabled(level) {
        return;
    }
    let mut l = Line::new();
    l.str("forkpoint[")
        .i64(sys::getpid() as i64)
        .str("]: ")
        .push(msg)
        .str("\n");
    let _ = sys::write_all(2, l.as_bytes());
}
