//! The retry schedule of pillow errors: CommCare's rule, configurable per
//! plugin (`[retry]` in its manifest).

use super::ErrorKind;
use crate::manifest::RetryPolicy;

/// When a failed change is tried again.
///
/// CommCare's rule (`pillow_retry`'s `PillowError.add_attempt` and its due
/// query): failure `a` of the current series (1-based) schedules the next
/// try `base × a²` later (5, 20, 45 minutes); failure
/// `attempts_per_series + 1` parks the error. An operator's re-queue
/// starts a new series (the series count goes back to 0) while the total
/// keeps counting; once the total is past `max_total_attempts`, a failed
/// try parks the error again at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Whether failures are tried again at all (`false`: parked at once).
    pub enabled: bool,
    /// The first delay, in milliseconds (CommCare: 5 minutes).
    pub base_ms: i64,
    /// Failures in a series before the error is parked (CommCare: 3).
    pub attempts_per_series: u32,
    /// Failures in all after which a failed try parks at once (CommCare: 9).
    pub max_total_attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::from(&RetryPolicy::default())
    }
}

impl From<&RetryPolicy> for Backoff {
    fn from(p: &RetryPolicy) -> Backoff {
        Backoff {
            enabled: p.enabled,
            base_ms: i64::from(p.base_minutes) * 60_000,
            attempts_per_series: p.attempts_per_series,
            max_total_attempts: p.max_total_attempts,
        }
    }
}

impl Backoff {
    /// The next attempt after a failure of `kind` at `at_ms` that makes
    /// `series` failures in the current series and `total` in all (both
    /// counting this one); `None` parks the error.
    ///
    /// A kind retrying cannot fix (`decode`, `permanent`) is parked at once.
    pub fn next_attempt_ms(
        &self,
        kind: ErrorKind,
        series: u32,
        total: u32,
        at_ms: i64,
    ) -> Option<i64> {
        if !self.enabled
            || !kind.retryable()
            || series > self.attempts_per_series
            || total > self.max_total_attempts
        {
            return None;
        }
        let a = i64::from(series.max(1));
        Some(at_ms.saturating_add(self.base_ms.saturating_mul(a * a)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn commcare_schedule_parks_the_fourth_failure_of_a_series() {
        let b = Backoff::default();
        let k = ErrorKind::Trap;
        assert_eq!(b.next_attempt_ms(k, 1, 1, 0), Some(5 * MIN));
        assert_eq!(b.next_attempt_ms(k, 2, 2, 0), Some(20 * MIN));
        assert_eq!(b.next_attempt_ms(k, 3, 3, 1000), Some(1000 + 45 * MIN));
        assert_eq!(b.next_attempt_ms(k, 4, 4, 0), None, "parked");
    }

    #[test]
    fn a_new_series_retries_until_the_total_is_past_the_cutoff() {
        let b = Backoff::default();
        let k = ErrorKind::Retryable;
        // Two series of four failures, then a third series: its first
        // failure is total 9 (still within CommCare's cutoff of 9)...
        assert_eq!(b.next_attempt_ms(k, 1, 9, 0), Some(5 * MIN));
        // ...its second is total 10: parked at once.
        assert_eq!(b.next_attempt_ms(k, 2, 10, 0), None);
        assert_eq!(b.next_attempt_ms(k, 1, 10, 0), None);
    }

    #[test]
    fn kinds_retrying_cannot_fix_and_a_disabled_policy_park_at_once() {
        let b = Backoff::default();
        assert_eq!(b.next_attempt_ms(ErrorKind::Decode, 1, 1, 0), None);
        assert_eq!(b.next_attempt_ms(ErrorKind::Permanent, 1, 1, 0), None);
        assert!(b.next_attempt_ms(ErrorKind::Rejected, 1, 1, 0).is_some());
        let off = Backoff {
            enabled: false,
            ..b
        };
        assert_eq!(off.next_attempt_ms(ErrorKind::Trap, 1, 1, 0), None);
    }

    #[test]
    fn the_manifest_policy_sets_the_schedule() {
        let b = Backoff::from(&RetryPolicy {
            enabled: true,
            base_minutes: 1,
            attempts_per_series: 2,
            max_total_attempts: 5,
        });
        let k = ErrorKind::Fuel;
        assert_eq!(b.next_attempt_ms(k, 1, 1, 0), Some(MIN));
        assert_eq!(b.next_attempt_ms(k, 2, 2, 0), Some(4 * MIN));
        assert_eq!(b.next_attempt_ms(k, 3, 3, 0), None);
    }
}
