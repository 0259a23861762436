//! One updating line on a terminal for long work: `forkpoint restart` decompressing a large
//! image, `forkpoint checkpoint` waiting for a large image to be written. Only when stderr
//! is a terminal and the work is large; logs and pipes get nothing here (the commands' one
//! summary line stays).

use std::io::{IsTerminal, Write};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Work smaller than this finishes before a line would help.
pub const MIN_BYTES: u64 = 64 << 20;
const EVERY: Duration = Duration::from_millis(250);

/// Whether to show progress for `total` bytes.
pub fn wanted(total: u64) -> bool {
    total >= MIN_BYTES && std::io::stderr().is_terminal()
}

fn mib(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

/// `restart: 312.0 MiB of 1.0 GiB (30%), 850.2 MiB/s, 1 s left`.
pub fn render(what: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let done = done.min(total);
    let pct = (done * 100).checked_div(total).unwrap_or(100);
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let left = if rate > 0.0 {
        format!(", {:.0} s left", ((total - done) as f64 / rate).ceil())
    } else {
        String::new()
    };
    format!(
        "forkpoint {what}: {} of {} ({pct}%), {:.1} MiB/s{left}",
        mib(done),
        mib(total),
        rate / (1u64 << 20) as f64
    )
}

/// Redraws the line every 250 ms from `done()` until `stop` is dropped or sent, then
/// clears it.
pub fn show_until(what: &str, total: u64, done: impl Fn() -> u64, stop: Receiver<()>) {
    let t0 = Instant::now();
    let mut err = std::io::stderr();
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(EVERY) {
        let line = render(what, done(), total, t0.elapsed());
        let _ = write!(err, "\r{line}\x1b[K");
        let _ = err.flush();
    }
    let _ = write!(err, "\r\x1b[K");
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_bytes_rate_and_time_left() {
        let l = render("restart", 512 << 20, 1 << 30, Duration::from_secs(1));
        assert_eq!(
            l,
            "forkpoint restart: 512.0 MiB of 1.0 GiB (50%), 512.0 MiB/s, 1 s left"
        );
        let l = render("checkpoint", 0, 100 << 20, Duration::ZERO);
        assert_eq!(
            l,
            "forkpoint checkpoint: 0.0 MiB of 100.0 MiB (0%), 0.0 MiB/s"
        );
        // Never more than all.
        assert!(render("x", 5, 3, Duration::from_secs(1)).contains("(100%)"));
    }
}
