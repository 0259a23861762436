//! Configuration from `FORKPOINT_*` environment variables, read once at init (a normal
//! context). Pure parsing, unit-tested without a process.

/// Default trigger signal: SIGRTMAX-2. glibc reserves 32 and 33; applications that use
/// realtime signals usually start from SIGRTMIN.
pub const DEFAULT_SIGNAL: i32 = 62;
/// Chosen by `benches/run.sh` (256 MiB and 1 GiB of text, levels -3, 1 and 3 in one session):
/// level 3 wrote its image about as fast as level 1 (0.72-0.82x `zstd -1 -T2` against
/// 0.69-0.73x), 4-5% smaller, and restarted 6-10% faster (less to decompress).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Off,
    Info,
    Debug,
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
}

pub const DEFAULT_QUIESCE_TIMEOUT_NS: u64 = 2_000_000_000;

const SIGNAL_NAMES: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
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
    ("PWR", 30),
    ("SYS", 31),
];

/// Parses `USR2`, `SIGUSR2`, `SIGRTMIN+3`, `RTMAX-2` or a number.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    let t = s.trim();
    let name = t.strip_prefix("SIG").unwrap_or(t);
    let sig = if let Ok(n) = name.parse::<i32>() {
        n
    } else if let Some(rest) = name.strip_prefix("RTMIN") {
        34 + parse_offset(rest, s)?
    } else if let Some(rest) = name.strip_prefix("RTMAX") {
        64 + parse_offset(rest, s)?
    } else if let Some(&(_, n)) = SIGNAL_NAMES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
    {
        n
    } else {
        return Err(format!("unknown signal {s:?}"));
    };
    match sig {
        9 | 19 => Err(format!("signal {s:?} cannot be caught")),
        32 | 33 => Err(format!("signal {s:?} is reserved by glibc")),
        1..=64 => Ok(sig),
        _ => Err(format!("signal {s:?} is out of range 1-64")),
    }
}

fn parse_offset(rest: &str, whole: &str) -> Result<i32, String> {
    if rest.is_empty() {
        return Ok(0);
    }
    rest.parse::<i32>()
        .map_err(|_| format!("bad signal offset in {whole:?}"))
}

/// Parses `30s`, `500ms`, `2m`, `1h`, `1.5s`, or plain seconds.
pub fn parse_duration_ns(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let scale = match unit.trim() {
        "" | "s" => 1e9,
        "ms" => 1e6,
        "us" => 1e3,
        "m" | "min" => 60e9,
        "h" => 3600e9,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s, m or h)")),
    };
    let ns = value * scale;
    if !(1e6..=1e15).contains(&ns) {
        return Err(format!("duration {s:?} must be between 1ms and ~11 days"));
    }
    Ok(ns as u64)
}

/// Runtime base: `FORKPOINT_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/forkpoint`, else
/// `/tmp/forkpoint-UID`. The CLI computes the same from the target's environment.
pub fn runtime_base(get: &dyn Fn(&str) -> Option<String>, uid: u32) -> String {
    if let Some(d) = get("FORKPOINT_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return d;
    }
    if let Some(x) = get("XDG_RUNTIME_DIR").filter(|d| d.starts_with('/')) {
        return format!("{}/forkpoint", x.trim_end_matches('/'));
    }
    format!("/tmp/forkpoint-{uid}")
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
        Ok(Config {
            signal,
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
    fn signals() {
        assert_eq!(parse_signal("USR2"), Ok(12));
        assert_eq!(parse_signal("SIGUSR1"), Ok(10));
        assert_eq!(parse_signal("SIGRTMIN+3"), Ok(37));
        assert_eq!(parse_signal("RTMAX-2"), Ok(62));
        assert_eq!(parse_signal("40"), Ok(40));
        assert!(parse_signal("KILL").is_err());
        assert!(parse_signal("32").is_err());
        assert!(parse_signal("65").is_err());
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ns("30s"), Ok(30_000_000_000));
        assert_eq!(parse_duration_ns("500ms"), Ok(500_000_000));
        assert_eq!(parse_duration_ns("2m"), Ok(120_000_000_000));
        assert_eq!(parse_duration_ns("1.5"), Ok(1_500_000_000));
        assert!(parse_duration_ns("10x").is_err());
        assert!(parse_duration_ns("0s").is_err());
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
    }
}
