//! Rate limiting log lines: a plugin's own lines and the host's lines
//! about a plugin's failures, so a misbehaving plugin cannot flood the log.

use std::time::Instant;

/// A token bucket over log lines: `rate` lines per second, bursts of `rate`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    tokens: f64,
    last: Instant,
    dropped: u64,
}

impl RateLimiter {
    /// A full bucket of `lines_per_second`.
    pub fn new(lines_per_second: u32, now: Instant) -> Self {
        let rate = f64::from(lines_per_second.max(1));
        RateLimiter {
            rate,
            tokens: rate,
            last: now,
            dropped: 0,
        }
    }

    /// Whether a line may be logged at `now`: `Some(n)` if so, where `n`
    /// counts the lines dropped since the last allowed one (reported once);
    /// `None` if this line is dropped.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.dropped))
        } else {
            self.dropped += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rate_limiter_allows_bursts_then_counts_drops() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(3, t0);
        assert_eq!(r.allow(t0), Some(0));
        assert_eq!(r.allow(t0), Some(0));
        assert_eq!(r.allow(t0), Some(0));
        assert_eq!(r.allow(t0), None);
        assert_eq!(r.allow(t0), None);
        // A third of a second refills one token; the drops are reported once.
        assert_eq!(r.allow(t0 + Duration::from_millis(340)), Some(2));
        assert_eq!(r.allow(t0 + Duration::from_millis(340)), None);
    }
}
