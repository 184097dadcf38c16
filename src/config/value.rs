//! Value parsers shared by every section: durations (`"250ms"`, `"2m"`), sizes (`"64MiB"`),
//! templates, and the counts and sizes that must be positive.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::ConfigError;
use crate::record::Template;

/// A duration written as `"1s"`, `"250ms"`, `"2m"`, `"1h"`.
#[derive(Debug, Clone, Copy)]
pub(super) struct HumanDuration(pub(super) Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(de::Error::custom)
    }
}

/// Parses `"250ms"`, `"1s"`, `"1.5s"`, `"2m"`, `"1h"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        format!("invalid duration {s:?}: expected e.g. \"500ms\", \"1s\", \"2m\", \"1h\"")
    })?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unit must be one of ms, s, m, h (e.g. \"25s\")"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// A byte size written as an integer or `"64MiB"`, `"512KiB"`, `"1GiB"`, `"10MB"`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ByteSize(u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte size such as 67108864 or \"64MiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a byte size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_bytes(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

pub(super) fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid byte size {s:?}: expected e.g. \"64MiB\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => {
            return Err(format!(
                "invalid byte size {s:?}: unit must be one of B, KiB, MiB, GiB, KB, MB, GB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("byte size {s:?} is too large"))
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Template::parse(&s).map_err(de::Error::custom)
    }
}

pub(super) type Invalid<'a> = &'a dyn Fn(&str, String) -> ConfigError;

/// A count that must be at least 1.
pub(super) fn count(
    value: Option<u32>,
    key: &str,
    default: usize,
    invalid: Invalid,
) -> Result<usize, ConfigError> {
    match value {
        Some(0) => Err(invalid(
            key,
            format!("must be at least 1 (default {default})"),
        )),
        Some(n) => Ok(n as usize),
        None => Ok(default),
    }
}

/// A size of at least 1 KiB (and at most 1 GiB when `bounded`); `default` is the value and
/// how the documentation writes it.
pub(super) fn bytes(
    value: Option<ByteSize>,
    key: &str,
    default: (usize, &str),
    bounded: bool,
    invalid: Invalid,
) -> Result<usize, ConfigError> {
    let max = if bounded { 1 << 30 } else { u64::MAX };
    match value {
        Some(ByteSize(n)) if !(1024..=max).contains(&n) => Err(invalid(
            key,
            if bounded {
                format!("must be between 1KiB and 1GiB (default \"{}\")", default.1)
            } else {
                format!("must be at least 1KiB (default \"{}\")", default.1)
            },
        )),
        Some(ByteSize(n)) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        None => Ok(default.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_take_units_and_a_bare_number_is_an_error() {
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("10MB"), Ok(10_000_000));
        assert!(parse_bytes("10 parsecs").is_err());
    }
}
