//! Numbers in messages as a person writes them: `1 byte`, `3 bytes`, `1.5 seconds`.
//!
//! Ground floor: no I/O, no other module of the crate. Used by error messages and reports so that
//! no output says `1 bytes`, `blob(s)` or `29.013µs`.

use std::fmt;
use std::time::Duration;

/// `n` with the singular or plural noun: `1 byte`, `0 bytes`, `2 bytes`.
#[derive(Debug, Clone, Copy)]
pub struct Count {
    n: u64,
    one: &'static str,
    many: &'static str,
}

/// `n` followed by `one` when `n == 1`, else by `many`.
#[must_use]
pub fn count(n: u64, one: &'static str, many: &'static str) -> Count {
    Count { n, one, many }
}

/// `1 byte`, `2 bytes`.
#[must_use]
pub fn bytes(n: u64) -> Count {
    count(n, "byte", "bytes")
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let noun = if self.n == 1 { self.one } else { self.many };
        write!(f, "{} {noun}", self.n)
    }
}

/// A duration rounded the way a person says it: `less than a millisecond`, `250 ms`,
/// `1.5 seconds`, `10 minutes`, `1 hour 30 minutes`.
#[derive(Debug, Clone, Copy)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let secs = d.as_secs();
        if d < Duration::from_millis(1) {
            return if d.is_zero() {
                f.write_str("0 seconds")
            } else {
                f.write_str("less than a millisecond")
            };
        }
        if d < Duration::from_secs(1) {
            return write!(f, "{} ms", d.as_millis());
        }
        if secs < 60 {
            let tenths = d.subsec_millis() / 100;
            return match (secs, tenths) {
                (1, 0) => f.write_str("1 second"),
                (s, 0) => write!(f, "{s} seconds"),
                (s, t) => write!(f, "{s}.{t} seconds"),
            };
        }
        let (big, big_one, big_many, small, small_one, small_many) = if secs < 3600 {
            (secs / 60, "minute", "minutes", secs % 60, "second", "seconds")
        } else if secs < 86_400 {
            (secs / 3600, "hour", "hours", secs % 3600 / 60, "minute", "minutes")
        } else {
            (secs / 86_400, "day", "days", secs % 86_400 / 3600, "hour", "hours")
        };
        write!(f, "{}", count(big, big_one, big_many))?;
        if small > 0 {
            write!(f, " {}", count(small, small_one, small_many))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_bytes() {
        assert_eq!(bytes(1).to_string(), "1 byte");
        assert_eq!(bytes(0).to_string(), "0 bytes");
        assert_eq!(bytes(4096).to_string(), "4096 bytes");
        assert_eq!(count(1, "blob", "blobs").to_string(), "1 blob");
        assert_eq!(count(2, "entry", "entries").to_string(), "2 entries");
    }

    #[test]
    fn durations() {
        let h = |d| HumanDuration(d).to_string();
        assert_eq!(h(Duration::ZERO), "0 seconds");
        assert_eq!(h(Duration::from_nanos(29_013)), "less than a millisecond");
        assert_eq!(h(Duration::from_millis(250)), "250 ms");
        assert_eq!(h(Duration::from_secs(1)), "1 second");
        assert_eq!(h(Duration::from_millis(1500)), "1.5 seconds");
        assert_eq!(h(Duration::from_secs(600)), "10 minutes");
        assert_eq!(h(Duration::from_secs(61)), "1 minute 1 second");
        assert_eq!(h(Duration::from_secs(5400)), "1 hour 30 minutes");
        assert_eq!(h(Duration::from_secs(2 * 86_400)), "2 days");
    }
}
