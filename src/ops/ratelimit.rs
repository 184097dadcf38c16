//! Rate limiting for log lines: a failing sink must not flood the journal we read from.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// At most one line per cause per `period`; the next allowed line says how many were held back.
#[derive(Debug)]
pub struct RateLimit {
    period: Duration,
    seen: HashMap<String, (Instant, u64)>,
}

impl RateLimit {
    /// A limiter with this period.
    pub fn new(period: Duration) -> RateLimit {
        RateLimit {
            period,
            seen: HashMap::new(),
        }
    }

    /// `Some(suppressed)` if a line for `cause` may be logged now.
    pub fn allow(&mut self, cause: &str) -> Option<u64> {
        let now = Instant::now();
        match self.seen.get_mut(cause) {
            Some((last, suppressed)) if now.duration_since(*last) < self.period => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                *last = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                if self.seen.len() > 1000 {
                    self.seen.clear();
                }
                self.seen.insert(cause.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_limited_on_its_own_and_counts_what_it_suppressed() {
        let mut r = RateLimit::new(Duration::from_millis(50));
        assert_eq!(r.allow("a"), Some(0));
        assert_eq!(r.allow("a"), None);
        assert_eq!(r.allow("a"), None);
        assert_eq!(r.allow("b"), Some(0));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(r.allow("a"), Some(2));
    }
}
