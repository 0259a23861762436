//! Parsing of the small values the CLI and the library share: durations (`30s`, `500ms`,
//! `2m`) and signals (`SIGUSR2`, `USR2`, `SIGRTMIN+3`, `RTMAX-2`, `62`).
//!
//! The syntax is the one `libforkpoint.so` reads from `FORKPOINT_INTERVAL` and
//! `FORKPOINT_SIGNAL`; the CLI validates it up front so a typo fails at once instead of in
//! the preloaded program.

use std::time::Duration;

/// glibc's `SIGRTMIN`: the kernel's first realtime signal is 32, glibc keeps 32 and 33.
pub const SIGRTMIN: i32 = 34;
/// The kernel's last signal number on x86-64.
pub const SIGRTMAX: i32 = 64;
/// The library's default trigger signal: `SIGRTMAX-2`.
pub const DEFAULT_SIGNAL: i32 = SIGRTMAX - 2;

/// Parses `500ms`, `30s`, `2m`, `1h`, `1.5s`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
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
        "ms" => 1e-3,
        "" | "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        u => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {u:?} (use ms, s, m or h)"
            ))
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("invalid duration {s:?}: too large"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration the way the library parses it (whole milliseconds).
pub fn duration_for_env(d: Duration) -> String {
    format!("{}ms", d.as_millis())
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

/// Parses a signal name or number, as `FORKPOINT_SIGNAL` accepts it, and checks that the
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(duration_for_env(Duration::from_secs(2)), "2000ms");
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
        assert_eq!(signal_name(62), "SIGRTMAX-2");
        assert_eq!(signal_name(34), "SIGRTMIN");
        assert_eq!(signal_name(36), "SIGRTMIN+2");
        assert_eq!(signal_name(12), "SIGUSR2");
        assert_eq!(signal_name(6), "SIGABRT");
        for n in (1..=64).filter(|n| ![9, 19, 32, 33].contains(n)) {
            assert_eq!(parse_signal(&signal_name(n)).unwrap(), n, "{n}");
        }
    }
}
