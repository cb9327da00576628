//! RFC 3339 timestamps to and from milliseconds since the Unix epoch.
//!
//! CommCare's `ChangeMeta.publish_timestamp` is an ISO 8601 string; the
//! parsing and formatting live in the SDK (`pillowtop_sdk::time`), so a
//! plugin writing a timestamp cell uses the very rule the host checks it
//! with. Here: the clock.

pub use pillowtop_sdk::time::{format_rfc3339_ms, parse_rfc3339_ms};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Where "now" comes from for schedules (the retry queue's due times):
/// the system clock, or a clock a test sets, so a schedule of minutes is
/// checked without waiting for it.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The system clock.
    #[default]
    System,
    /// A clock that stands still until moved.
    Manual(std::sync::Arc<std::sync::atomic::AtomicI64>),
}

impl Clock {
    /// A manual clock at `ms` (epoch milliseconds).
    pub fn manual(ms: i64) -> Clock {
        Clock::Manual(std::sync::Arc::new(ms.into()))
    }

    /// Now, in epoch milliseconds.
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => now_ms(),
            Clock::Manual(ms) => ms.load(std::sync::atomic::Ordering::SeqCst),
        }
    }

    /// Move a manual clock to `ms` (a system clock ignores it).
    pub fn set_ms(&self, ms: i64) {
        if let Clock::Manual(at) = self {
            at.store(ms, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_set() {
        let c = Clock::manual(1000);
        let same = c.clone();
        assert_eq!(c.now_ms(), 1000);
        same.set_ms(61_000);
        assert_eq!(c.now_ms(), 61_000, "clones share the time");
        assert!(Clock::System.now_ms() > 1_700_000_000_000);
    }

    #[test]
    fn parses_known_instants() {
        // 2021-03-04T05:06:07Z = 1614834367 s (checked with `date -u -d @1614834367`).
        assert_eq!(
            parse_rfc3339_ms("2021-03-04T05:06:07Z"),
            Some(1_614_834_367_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2021-03-04T05:06:07.123456"),
            Some(1_614_834_367_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2021-03-04T07:06:07.5+02:00"),
            Some(1_614_834_367_500)
        );
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T00:00:00Z"),
            Some(951_782_400_000)
        );
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "2021-03-04",
            "2021-13-04T00:00:00Z",
            "2021-03-04T00:00:00+0200",
            "2021-03-04T00:00:00.Z",
            "abcd-03-04T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339_ms(s), None, "{s}");
        }
    }

    #[test]
    fn formats_and_round_trips() {
        assert_eq!(
            format_rfc3339_ms(1_614_834_367_123),
            "2021-03-04T05:06:07.123Z"
        );
        for ms in [
            0,
            951_782_400_000,
            1_614_834_367_123,
            4_102_444_800_999,
            -86_400_000,
        ] {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Some(ms));
        }
    }
}
