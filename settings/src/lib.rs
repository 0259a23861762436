//! The settings forkpoint's CLI and its preloaded library both read, parsed in one place:
//! durations (`500ms`, `30s`, `2m`), signals (`SIGUSR2`, `SIGRTMAX-2`, `62`), the
//! `FORKPOINT_*` environment the library is configured by, and the runtime-directory rule.
//! The CLI validates what it passes on with these same functions, so a value it accepts is
//! one the library accepts (it once passed `--interval 0.5ms` on as `0ms`, which the library
//! refused, and the program ran with no checkpoints).
//!
//! Pure parsing: no unsafe, no process state; the library calls it once at load, in a normal
//! context (it allocates).
#![forbid(unsafe_code)]

use std::time::Duration;

/// glibc's `SIGRTMIN`: the kernel's first realtime signal is 32, glibc keeps 32 and 33.
pub const SIGRTMIN: i32 = 34;
/// The kernel's last signal number on x86-64.
pub const SIGRTMAX: i32 = 64;
/// The library's default trigger signal: `SIGRTMAX-2` (applications that use realtime
/// signals usually start from SIGRTMIN).
pub const DEFAULT_SIGNAL: i32 = SIGRTMAX - 2;
/// Chosen by `benches/run.sh` (256 MiB and 1 GiB of text, levels -3, 1 and 3 in one session):
/// level 3 wrote its image about as fast as level 1 (0.72-0.82x `zstd -1 -T2` against
/// 0.69-0.73x), 4-5% smaller, and restarted 6-10% faster (less to decompress).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
pub const DEFAULT_QUIESCE_TIMEOUT_NS: u64 = 2_000_000_000;
/// Durations between 1 ms and ~11 days (an interval timer below 1 ms would checkpoint
/// without pause).
pub const MIN_DURATION_NS: u64 = 1_000_000;
pub const MAX_DURATION_NS: u64 = 1_000_000_000_000_000;

/// Parses `500ms`, `30s`, `2m`, `1h`, `1.5s`, `250us`; a bare number is seconds. Between
/// [`MIN_DURATION_NS`] and [`MAX_DURATION_NS`].
pub fn parse_duration_ns(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "invalid duration {s:?}: expected a number with a unit, e.g. 500ms, 30s, 2m"
        ));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: {num:?} is not a number"))?;
    let scale = match unit.trim() {
        "us" => 1e3,
        "ms" => 1e6,
        "" | "s" | "sec" => 1e9,
        "m" | "min" => 60e9,
        "h" => 3600e9,
        u => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {u:?} (use us, ms, s, m or h)"
            ))
        }
    };
    let ns = (value * scale).round();
    if !(MIN_DURATION_NS as f64..=MAX_DURATION_NS as f64).contains(&ns) {
        return Err(format!(
            "invalid duration {s:?}: must be between 1ms and ~11 days"
        ));
    }
    Ok(ns as u64)
}

/// [`parse_duration_ns`] as a `Duration`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_duration_ns(s).map(Duration::from_nanos)
}

/// Formats a duration so that [`parse_duration_ns`] reads it back exactly: whole
/// milliseconds, or microseconds when it is not (`1.5ms` is `1500us`).
pub fn duration_for_env(d: Duration) -> String {
    if Duration::from_millis(d.as_millis() as u64) == d {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros())
    }
}

const NAMES: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("IOT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("POLL", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// The conventional name of signal `n` (`SIGUSR2`, `SIGRTMIN+3`, `SIGRTMAX-2`).
pub fn signal_name(n: i32) -> String {
    if let Some((name, _)) = NAMES
        .iter()
        .find(|&&(name, v)| v == n && name != "IOT" && name != "POLL")
    {
        return format!("SIG{name}");
    }
    if (SIGRTMIN..=SIGRTMAX).contains(&n) {
        let from_min = n - SIGRTMIN;
        let from_max = SIGRTMAX - n;
        return if from_min == 0 {
            "SIGRTMIN".into()
        } else if from_max == 0 {
            "SIGRTMAX".into()
        } else if from_min <= from_max {
            format!("SIGRTMIN+{from_min}")
        } else {
            format!("SIGRTMAX-{from_max}")
        };
    }
    format!("signal {n}")
}

/// Parses a signal name or number, as `FORKPOINT_SIGNAL` and `--signal` accept it, and checks that the
/// library can use it as a trigger (catchable, not reserved by glibc).
pub fn parse_signal(s: &str) -> Result<i32, String> {
    let t = s.trim();
    let n = parse_signal_number(t)?;
    match n {
        9 | 19 => Err(format!(
            "signal {s:?} ({}) cannot be caught, so it cannot trigger a checkpoint",
            signal_name(n)
        )),
        32 | 33 => Err(format!(
            "signal {s:?} ({n}) is reserved by glibc; use SIGRTMIN..SIGRTMAX (34..64)"
        )),
        1..=64 => Ok(n),
        _ => Err(format!("signal {s:?} is out of range 1..64")),
    }
}

fn parse_signal_number(t: &str) -> Result<i32, String> {
    if let Ok(n) = t.parse::<i32>() {
        return Ok(n);
    }
    let upper = t.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let offset = |rest: &str, base: i32, sign: i32| -> Result<i32, String> {
        if rest.is_empty() {
            return Ok(base);
        }
        let (op, num) = rest.split_at(1);
        let k: i32 = num
            .parse()
            .map_err(|_| format!("invalid signal {t:?}: bad offset {rest:?}"))?;
        match (op, sign) {
            ("+", 1) | ("-", -1) => Ok(base + sign * k),
            _ => Err(format!("invalid signal {t:?}: use RTMIN+N or RTMAX-N")),
        }
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return offset(rest, SIGRTMIN, 1);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return offset(rest, SIGRTMAX, -1);
    }
    NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, v)| v)
        .ok_or_else(|| {
            format!("unknown signal {t:?} (use a name such as SIGUSR2 or SIGRTMAX-2, or a number)")
        })
}

/// Runtime base: `FORKPOINT_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/forkpoint`, else
/// `/tmp/forkpoint-UID`. Empty values count as unset; a relative `XDG_RUNTIME_DIR` is
/// ignored (the XDG spec says so). The CLI computes it from the target's environment.
pub fn runtime_base(get: &dyn Fn(&str) -> Option<String>, uid: u32) -> String {
    if let Some(d) = get("FORKPOINT_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return d;
    }
    if let Some(x) = get("XDG_RUNTIME_DIR").filter(|d| d.starts_with('/')) {
        return format!("{}/forkpoint", x.trim_end_matches('/'));
    }
    format!("/tmp/forkpoint-{uid}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Off,
    Info,
    Debug,
}

/// What the library does when the program gets SIGTERM (`FORKPOINT_ON_TERM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTerm {
    /// Nothing: SIGTERM is the program's.
    Off,
    /// Checkpoint, wait until the image is durable, then hand SIGTERM to the program's own
    /// disposition.
    Checkpoint,
    /// Checkpoint, wait until durable, then end as an unhandled SIGTERM ends a program.
    CheckpointExit,
}

/// Parses an `--on-term` / `FORKPOINT_ON_TERM` value.
pub fn parse_on_term(t: &str) -> Result<OnTerm, String> {
    match t.trim() {
        "" | "off" | "none" => Ok(OnTerm::Off),
        "checkpoint" => Ok(OnTerm::Checkpoint),
        "checkpoint-exit" => Ok(OnTerm::CheckpointExit),
        other => Err(format!(
            "{other:?} is not an on-term action (checkpoint, checkpoint-exit or off)"
        )),
    }
}

/// Checks an image name (`--name`, `FORKPOINT_NAME`): the image is `DIR/NAME.fpk`.
pub fn check_image_name(n: &str) -> Result<(), String> {
    if n.is_empty() || n == "." || n == ".." || n.starts_with('.') {
        return Err(format!(
            "{n:?} is not an image name (empty, or starting with a dot)"
        ));
    }
    if n.contains('/') || n.contains('\0') || n.len() > 200 {
        return Err(format!(
            "{n:?} is not an image name (no '/', at most 200 bytes: the image is DIR/NAME.fpk)"
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub signal: i32,
    pub interval_ns: Option<u64>,
    /// Directory images go to (absolute).
    pub dir: String,
    /// Base of the per-process runtime directories (request and report files).
    pub runtime_base: String,
    pub zstd_level: i32,
    pub log: LogLevel,
    /// Nice value for the writer, if set.
    pub writer_nice: Option<i32>,
    /// How long the leader waits for every thread to stop before giving up.
    pub quiesce_timeout_ns: u64,
    /// Compression threads of the writer (None: one per CPU; 0: the writer compresses alone).
    pub writer_threads: Option<usize>,
    /// What SIGTERM does (the tree's root only).
    pub on_term: OnTerm,
    /// Stable image name: every checkpoint goes to `DIR/NAME.fpk` (replacing the last).
    pub name: Option<String>,
    /// `FORKPOINT_INCREMENTAL=1`: every checkpoint after the first holds only the pages
    /// written since the one before (where tracking works).
    pub incremental: bool,
}

impl Config {
    pub fn from_env(
        get: &dyn Fn(&str) -> Option<String>,
        cwd: &str,
        uid: u32,
    ) -> Result<Config, String> {
        let signal = match get("FORKPOINT_SIGNAL") {
            Some(s) if !s.is_empty() => {
                parse_signal(&s).map_err(|e| format!("FORKPOINT_SIGNAL: {e}"))?
            }
            _ => DEFAULT_SIGNAL,
        };
        let interval_ns = match get("FORKPOINT_INTERVAL") {
            Some(s) if !s.is_empty() => {
                Some(parse_duration_ns(&s).map_err(|e| format!("FORKPOINT_INTERVAL: {e}"))?)
            }
            _ => None,
        };
        let dir = match get("FORKPOINT_DIR") {
            Some(d) if d.starts_with('/') => d,
            Some(d) if !d.is_empty() => format!("{}/{}", cwd.trim_end_matches('/'), d),
            _ => cwd.to_string(),
        };
        let zstd_level = match get("FORKPOINT_ZSTD_LEVEL") {
            Some(s) if !s.is_empty() => s
                .trim()
                .parse::<i32>()
                .ok()
                .filter(|l| (-7..=19).contains(l))
                .ok_or_else(|| format!("FORKPOINT_ZSTD_LEVEL: {s:?} is not a level from -7 to 19 (0 stores pages uncompressed)"))?,
            _ => DEFAULT_ZSTD_LEVEL,
        };
        let log = match get("FORKPOINT_LOG").as_deref().map(str::trim) {
            None | Some("") | Some("0") | Some("off") => LogLevel::Off,
            Some("debug") => LogLevel::Debug,
            Some(_) => LogLevel::Info,
        };
        let writer_nice = match get("FORKPOINT_NICE") {
            Some(s) if !s.is_empty() => Some(
                s.trim()
                    .parse::<i32>()
                    .ok()
                    .filter(|n| (-20..=19).contains(n))
                    .ok_or_else(|| format!("FORKPOINT_NICE: {s:?} is not -20..19"))?,
            ),
            _ => None,
        };
        let quiesce_timeout_ns = match get("FORKPOINT_QUIESCE_TIMEOUT") {
            Some(s) if !s.is_empty() => {
                parse_duration_ns(&s).map_err(|e| format!("FORKPOINT_QUIESCE_TIMEOUT: {e}"))?
            }
            _ => DEFAULT_QUIESCE_TIMEOUT_NS,
        };
        let writer_threads = match get("FORKPOINT_WRITER_THREADS") {
            Some(s) if !s.is_empty() => Some(
                s.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n <= 256)
                    .ok_or_else(|| format!("FORKPOINT_WRITER_THREADS: {s:?} is not 0 to 256"))?,
            ),
            _ => None,
        };
        let on_term = match get("FORKPOINT_ON_TERM") {
            Some(s) => parse_on_term(&s).map_err(|e| format!("FORKPOINT_ON_TERM: {e}"))?,
            None => OnTerm::Off,
        };
        let name = match get("FORKPOINT_NAME") {
            Some(n) if !n.is_empty() => {
                check_image_name(&n).map_err(|e| format!("FORKPOINT_NAME: {e}"))?;
                Some(n)
            }
            _ => None,
        };
        let incremental = match get("FORKPOINT_INCREMENTAL").as_deref().map(str::trim) {
            None | Some("" | "0") => false,
            Some("1") => true,
            Some(v) => return Err(format!("FORKPOINT_INCREMENTAL: {v:?} is not 0 or 1")),
        };
        Ok(Config {
            incremental,
            signal,
            on_term,
            name,
            interval_ns,
            dir,
            runtime_base: runtime_base(get, uid),
            zstd_level,
            log,
            writer_nice,
            quiesce_timeout_ns,
            writer_threads,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn config_defaults_and_overrides() {
        let c = Config::from_env(&env(&[]), "/work", 1000).unwrap();
        assert_eq!(c.signal, DEFAULT_SIGNAL);
        assert_eq!(c.dir, "/work");
        assert_eq!(c.runtime_base, "/tmp/forkpoint-1000");
        assert_eq!(c.interval_ns, None);
        let c = Config::from_env(
            &env(&[
                ("FORKPOINT_DIR", "imgs"),
                ("FORKPOINT_INTERVAL", "1s"),
                ("XDG_RUNTIME_DIR", "/run/user/5"),
                ("FORKPOINT_LOG", "debug"),
            ]),
            "/w/",
            5,
        )
        .unwrap();
        assert_eq!(c.dir, "/w/imgs");
        assert_eq!(c.interval_ns, Some(1_000_000_000));
        assert_eq!(c.runtime_base, "/run/user/5/forkpoint");
        assert_eq!(c.log, LogLevel::Debug);
        assert!(Config::from_env(&env(&[("FORKPOINT_ZSTD_LEVEL", "99")]), "/", 0).is_err());
        let c = Config::from_env(
            &env(&[
                ("FORKPOINT_ON_TERM", "checkpoint-exit"),
                ("FORKPOINT_NAME", "job-42"),
            ]),
            "/",
            0,
        )
        .unwrap();
        assert_eq!(c.on_term, OnTerm::CheckpointExit);
        assert_eq!(c.name.as_deref(), Some("job-42"));
        for bad in [
            ("FORKPOINT_ON_TERM", "yes"),
            ("FORKPOINT_NAME", "a/b"),
            ("FORKPOINT_NAME", ".x"),
        ] {
            assert!(Config::from_env(&env(&[bad]), "/", 0).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("1e400s").is_err());
        assert_eq!(parse_duration_ns("30s"), Ok(30_000_000_000));
        assert_eq!(parse_duration_ns("1.5"), Ok(1_500_000_000));
        assert!(parse_duration_ns("10x").is_err());
        assert!(parse_duration_ns("0s").is_err());
        assert_eq!(duration_for_env(Duration::from_secs(2)), "2000ms");
        assert_eq!(duration_for_env(Duration::from_micros(1500)), "1500us");
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGUSR2").unwrap(), 12);
        assert_eq!(parse_signal("usr1").unwrap(), 10);
        assert_eq!(parse_signal("SIGRTMIN+3").unwrap(), 37);
        assert_eq!(parse_signal("RTMAX-2").unwrap(), 62);
        assert_eq!(parse_signal("SIGRTMAX").unwrap(), 64);
        assert_eq!(parse_signal("62").unwrap(), 62);
        assert!(parse_signal("SIGKILL").is_err());
        assert!(parse_signal("STOP").is_err());
        assert!(parse_signal("32").is_err());
        assert!(parse_signal("65").is_err());
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("RTMIN-1").is_err());
        assert!(parse_signal("BOGUS").is_err());
        assert!(parse_signal("NOPE").is_err());
        assert_eq!(parse_signal("SIGUSR1"), Ok(10));
        assert_eq!(parse_signal("USR2"), Ok(12));
        assert_eq!(parse_signal("40"), Ok(40));
        assert!(parse_signal("KILL").is_err());
        assert_eq!(signal_name(62), "SIGRTMAX-2");
        assert_eq!(signal_name(34), "SIGRTMIN");
        assert_eq!(signal_name(36), "SIGRTMIN+2");
        assert_eq!(signal_name(12), "SIGUSR2");
        assert_eq!(signal_name(6), "SIGABRT");
        for n in (1..=64).filter(|n| ![9, 19, 32, 33].contains(n)) {
            assert_eq!(parse_signal(&signal_name(n)).unwrap(), n, "{n}");
        }
    }

    /// What the CLI accepts and passes on (`run --interval`, `--signal`) the library reads
    /// back as the same value, and what one refuses the other refuses.
    #[test]
    fn cli_and_library_agree() {
        let durations = [
            "500ms", "0.5ms", "1ms", "1.5ms", "250us", "999us", "30s", "1.5", "2m", "1h", "0s", "",
            "s", "10x", "1e400s", "12 days", "11d",
        ];
        for d in durations {
            let lib = Config::from_env(&env(&[("FORKPOINT_INTERVAL", d)]), "/", 0);
            match parse_duration(d) {
                Ok(v) => {
                    let passed = duration_for_env(v);
                    let c = Config::from_env(&env(&[("FORKPOINT_INTERVAL", &passed)]), "/", 0)
                        .unwrap_or_else(|e| panic!("{d:?} passed on as {passed:?}: {e}"));
                    assert_eq!(c.interval_ns, Some(v.as_nanos() as u64), "{d:?}");
                    assert_eq!(lib.map(|c| c.interval_ns), Ok(c.interval_ns), "{d:?}");
                }
                Err(_) => assert!(lib.is_err() || d.is_empty(), "{d:?}"),
            }
        }
        assert!(parse_duration("0.5ms").is_err());
        for n in -5..70 {
            for s in [n.to_string(), signal_name(n)] {
                let lib = Config::from_env(&env(&[("FORKPOINT_SIGNAL", &s)]), "/", 0);
                assert_eq!(parse_signal(&s).ok(), lib.ok().map(|c| c.signal), "{s:?}");
            }
        }
        for s in [
            "IOT",
            "SIGPOLL",
            "usr2",
            "RTMIN+3",
            "SIGRTMAX-2",
            "RTMIN-1",
            "BOGUS",
        ] {
            let lib = Config::from_env(&env(&[("FORKPOINT_SIGNAL", s)]), "/", 0);
            assert_eq!(parse_signal(s).ok(), lib.ok().map(|c| c.signal), "{s:?}");
        }
    }
}
