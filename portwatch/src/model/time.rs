//! Durations and times as users write them, and as portwatch prints them.
use std::time::{Duration, UNIX_EPOCH};

/// The longest duration any option accepts. Far beyond any useful grace period or
/// timeout, and small enough that adding it to any clock reading cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);

/// Parses `5s`, `250ms`, `1m30s`; a bare number means seconds. At most
/// [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let d = match t.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(t).map_err(|e| format!("invalid duration '{t}': {e} (e.g. 5s, 250ms, 1m)"))?,
    };
    if d > MAX_DURATION {
        return Err(format!("invalid duration '{t}': longer than the maximum of {}", humantime::format_duration(MAX_DURATION)));
    }
    Ok(d)
}

/// A duration as people read it, rounded to the millisecond ("3s 999ms", "250ms").
pub fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

/// Wall-clock nanoseconds since the epoch, as the history stores times.
pub type WallNs = i64;

/// RFC 3339 UTC with milliseconds.
pub fn fmt_time(ns: WallNs) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64)).to_string()
}

/// Parses `--since`/`--until`/`--at`: `now`; a duration back from now (`10m` or
/// `-10m`); a UTC time (`2026-11-26T10:02:11Z`); a time with an offset
/// (`2026-11-26T12:02:11+02:00`); or a local time without one
/// (`2026-11-26 12:02:11`), placed with `local_offset_secs` (the local zone's
/// offset from UTC at that moment, in seconds east).
pub fn parse_when(s: &str, now: WallNs, local_offset_secs: &dyn Fn(WallNs) -> i64) -> Result<WallNs, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Ok(d) = parse_duration(t.strip_prefix('-').unwrap_or(t)) {
        return Ok(now - d.as_nanos() as i64);
    }
    let bad = || format!("invalid time '{t}': give now, a duration like 10m, or a time like 2026-11-26T10:02:11Z");
    // A trailing `Z`, `+HH:MM`, `-HH:MM` or `+HHMM` after the seconds.
    let (clock, offset) = split_zone(t).ok_or_else(bad)?;
    let utc = humantime::parse_rfc3339_weak(clock).map_err(|_| bad())?;
    let ns = utc.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    let offset = match offset {
        Some(secs) => secs,
        None => local_offset_secs(ns),
    };
    Ok(ns - offset * 1_000_000_000)
}

/// Splits a time into its clock part and its zone offset (seconds east); `None`
/// offset for a time without a zone.
fn split_zone(t: &str) -> Option<(&str, Option<i64>)> {
    if let Some(clock) = t.strip_suffix('Z').or_else(|| t.strip_suffix('z')) {
        return Some((clock, Some(0)));
    }
    // Offsets start after `YYYY-MM-DDTHH:MM` (16 characters).
    let sign_at = t.char_indices().skip(16).find(|&(_, c)| c == '+' || c == '-').map(|(i, _)| i);
    let Some(i) = sign_at else { return Some((t, None)) };
    let (clock, zone) = t.split_at(i);
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (i64, i64) = (digits[..2].parse().ok()?, digits[2..].parse().ok()?);
    if h > 23 || m > 59 {
        return None;
    }
    Some((clock, Some(sign * (h * 3600 + m * 60))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UTC: &dyn Fn(WallNs) -> i64 = &|_| 0;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").unwrap_err().contains("invalid duration 'soon'"));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("18446744073709551615").unwrap_err().contains("maximum"));
        assert!(parse_duration("1000000d").unwrap_err().contains("maximum"));
        assert_eq!(parse_duration("366d"), Ok(MAX_DURATION));
    }

    #[test]
    fn times() {
        let now = 100_000_000_000;
        assert_eq!(parse_when("now", now, UTC), Ok(now));
        assert_eq!(parse_when("10s", now, UTC), Ok(90_000_000_000));
        assert_eq!(parse_when("-10s", now, UTC), Ok(90_000_000_000));
        assert_eq!(parse_when("1970-01-01T00:01:40Z", 0, UTC), Ok(100_000_000_000));
        assert_eq!(parse_when("1970-01-01T02:01:40+02:00", 0, UTC), Ok(100_000_000_000));
        assert_eq!(parse_when("1970-01-01T02:01:40+0200", 0, UTC), Ok(100_000_000_000));
        assert_eq!(parse_when("2026-11-26T10:02:11-05:00", 0, UTC), parse_when("2026-11-26T15:02:11Z", 0, UTC));
        // A local time: the zone's offset applies.
        let cet: &dyn Fn(WallNs) -> i64 = &|_| 3600;
        assert_eq!(parse_when("1970-01-01 01:01:40", 0, cet), Ok(100_000_000_000));
        assert!(parse_when("yesterday", 0, UTC).is_err());
        assert!(parse_when("1970-01-01T00:01:40+25:00", 0, UTC).is_err());
        assert_eq!(fmt_time(1_500_000_000), "1970-01-01T00:00:01.500Z");
    }
}
