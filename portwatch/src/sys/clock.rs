//! Kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to wall-clock time.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::time::{clock_gettime, ClockId};

/// Converts monotonic nanoseconds to wall time, using an offset taken once.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// Wall nanoseconds since the epoch at monotonic zero.
    offset_ns: i128,
}

impl WallClock {
    pub fn new() -> Self {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i128;
        Self { offset_ns: wall - i128::from(mono_ns()) }
    }

    /// A fixed offset, for tests.
    pub fn with_offset_ns(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        let ns = (self.offset_ns + i128::from(mono_ns)).max(0) as u128;
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

/// Now on CLOCK_MONOTONIC, in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn mono_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64).unwrap_or(0)
}

/// Now, as wall-clock nanoseconds since the epoch.
pub fn wall_now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// Now, as wall-clock seconds since the epoch.
pub fn wall_now_secs() -> u64 {
    (wall_now_ns() / 1_000_000_000).max(0) as u64
}

/// Converts a monotonic timestamp to wall-clock nanoseconds since the epoch.
pub fn wall_ns(clock: &WallClock, mono_ns: u64) -> i64 {
    clock.wall(mono_ns).duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// The local time zone's offset from UTC (seconds east) at wall time `ns`
/// (`localtime_r`, which reads TZ and /etc/localtime).
pub fn local_offset_secs(ns: i64) -> i64 {
    // `as _` is libc's time_t (64-bit on x86_64, musl included) without naming the
    // alias libc deprecates for musl targets.
    let t = (ns / 1_000_000_000) as _;
    // SAFETY: an all-zero `tm` is a valid value to be overwritten.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is thread-safe.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return 0;
    }
    tm.tm_gmtoff
}

/// RFC 3339 with milliseconds, UTC (what `watch` prints).
pub fn rfc3339_ms(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `HH:MM:SS.mmm` UTC, for the human table.
pub fn hms_ms(t: SystemTime) -> String {
    let s = rfc3339_ms(t);
    s.get(11..23).unwrap_or(&s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_with_offset() {
        let c = WallClock::with_offset_ns(1_700_000_000_000_000_000);
        let t = c.wall(1_500_000_000);
        assert_eq!(rfc3339_ms(t), "2023-11-14T22:13:21.500Z");
        assert_eq!(hms_ms(t), "22:13:21.500");
    }
}
