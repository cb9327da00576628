//! The retry schedule of pillow errors (CommCare's).

/// When a failed change is tried again.
///
/// CommCare's schedule: after attempt `a` (1-based) the next try is
/// `5 min × a²` later for the first three attempts (5, 20, 45 minutes);
/// later attempts wait the capped 45 minutes; after `max_attempts` attempts
/// in total (CommCare: 9) the error is parked and only an operator re-queues
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Base delay in milliseconds (CommCare: 5 minutes).
    pub base_ms: i64,
    /// Attempts after which the delay stops growing (CommCare: 3).
    pub growth_attempts: u32,
    /// Attempts after which the error is parked (CommCare: 9).
    pub max_attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base_ms: 5 * 60 * 1000,
            growth_attempts: 3,
            max_attempts: 9,
        }
    }
}

impl Backoff {
    /// The next attempt time after `attempts` attempts, the last at
    /// `last_ms`; `None` when the error is parked.
    pub fn next_attempt_ms(&self, attempts: u32, last_ms: i64) -> Option<i64> {
        if attempts == 0 {
            return Some(last_ms);
        }
        if attempts >= self.max_attempts {
            return None;
        }
        let a = attempts.min(self.growth_attempts) as i64;
        Some(last_ms + self.base_ms * a * a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commcare_schedule() {
        let b = Backoff::default();
        let min = 60_000;
        assert_eq!(b.next_attempt_ms(1, 0), Some(5 * min));
        assert_eq!(b.next_attempt_ms(2, 0), Some(20 * min));
        assert_eq!(b.next_attempt_ms(3, 0), Some(45 * min));
        assert_eq!(b.next_attempt_ms(8, 1000), Some(1000 + 45 * min));
        assert_eq!(b.next_attempt_ms(9, 0), None);
    }
}
