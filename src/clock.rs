//! Wall-clock time since the Unix epoch, in the units the agent uses. A clock set before the
//! epoch reads as 0: nothing the agent does with these values can go wrong with a 0.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Nanoseconds since the epoch.
pub fn unix_ns() -> u64 {
    u64::try_from(since_epoch().as_nanos()).unwrap_or(u64::MAX)
}

/// Milliseconds since the epoch.
pub fn unix_ms() -> u64 {
    u64::try_from(since_epoch().as_millis()).unwrap_or(u64::MAX)
}

/// Seconds since the epoch.
pub fn unix_secs() -> u64 {
    since_epoch().as_secs()
}

/// Seconds since the epoch, with their fraction.
pub fn unix_secs_f64() -> f64 {
    since_epoch().as_secs_f64()
}

/// Nanoseconds since the epoch from the coarse realtime clock (the kernel's last tick, a few
/// ms of resolution): a memory read where the precise clock reads the TSC, for stamping every
/// line with its read time at millisecond (Kafka timestamp) precision.
pub fn coarse_unix_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec for clock_gettime to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } == 0 {
        u64::try_from(ts.tv_sec)
            .unwrap_or(0)
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
    } else {
        unix_ns()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_units_agree_and_the_coarse_clock_is_within_a_tick_of_the_precise_one() {
        let ns = unix_ns();
        let coarse = coarse_unix_ns();
        let ms = unix_ms();
        let secs = unix_secs();
        assert!(ns > 1_700_000_000 * 1_000_000_000, "after 2023: {ns}");
        assert!(ms >= ns / 1_000_000 && ms - ns / 1_000_000 < 1_000);
        assert!(secs >= ns / 1_000_000_000 && secs - ns / 1_000_000_000 < 2);
        assert!(coarse.abs_diff(ns) < 1_000_000_000, "{coarse} vs {ns}");
        assert!((unix_secs_f64() - secs as f64).abs() < 2.0);
    }
}
