//! Outages: telling "the server is unreachable or briefly unable to serve"
//! from a refusal, and waiting one out.
//!
//! The feed, the store and the sinks each classify their own errors by
//! implementing [`Outage`]; this module owns what follows from it: the
//! backoff between attempts ([`OutageBackoff`]) and the startup wait for a
//! server that is not up yet ([`wait_until_reachable`]). It sits below
//! every module that talks to a server and imports none of them.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Errors that tell an outage (the server is unreachable or briefly unable
/// to serve: retry the same work later) from a refusal (retrying cannot fix
/// it: a bad credential, a mapping conflict, a malformed request).
pub trait Outage: std::fmt::Display {
    /// Whether retrying the same work later may succeed.
    fn is_outage(&self) -> bool;
}

/// Capped exponential backoff with jitter, for retrying the same work
/// while its server is down (connection refused, timeouts, a server
/// restarting): 100 ms, 200 ms, 400 ms ... up to 30 s between attempts.
pub struct OutageBackoff;

impl OutageBackoff {
    /// The first delay.
    pub const BASE: Duration = Duration::from_millis(100);
    /// The longest delay.
    pub const CAP: Duration = Duration::from_secs(30);

    /// The delay before retry `attempt` (0-based), with `jitter` in
    /// `[0, 1)`: uniform in `[d/2, d]` where `d = min(CAP, BASE * 2^attempt)`,
    /// so retries of many pillows spread out but never spin.
    pub fn delay(attempt: u32, jitter: f64) -> Duration {
        let full = Self::BASE
            .saturating_mul(1u32 << attempt.min(16))
            .min(Self::CAP);
        full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// [`OutageBackoff::delay`] with jitter from the clock's nanoseconds:
    /// enough to spread the retries of several pillows apart.
    fn jittered(attempt: u32) -> Duration {
        let jitter = f64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
                % 1000,
        ) / 1000.0;
        Self::delay(attempt, jitter)
    }

    /// Sleep the jittered delay before retry `attempt`; `false` when
    /// `shutdown` fires first (stop retrying).
    pub async fn sleep_unless(attempt: u32, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            () = tokio::time::sleep(Self::jittered(attempt)) => true,
            () = shutdown.cancelled() => false,
        }
    }
}

/// For startup: [`wait_out`] "at startup".
///
/// # Errors
///
/// As [`wait_out`].
pub async fn wait_until_reachable<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    attempt: F,
) -> Option<Result<T, E>>
where
    E: Outage,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    wait_out(what, "at startup", shutdown, attempt).await
}

/// Run `attempt` until it succeeds or fails with an error that is not an
/// outage, sleeping [`OutageBackoff`] between outages and logging each
/// with `what` (the server waited for) and `when` (what waits: "at
/// startup", "for a chunk"). `None` when `shutdown` fires first.
///
/// # Errors
///
/// The first error that is not an outage. An outage is never given up
/// on: only success or `shutdown` ends the wait.
pub async fn wait_out<T, E, F, Fut>(
    what: &str,
    when: &str,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Option<Result<T, E>>
where
    E: Outage,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut failures = 0u32;
    loop {
        match attempt().await {
            Err(e) if e.is_outage() => {
                tracing::warn!(error = %e, attempt = failures + 1, "{what} is unreachable {when}; waiting for it (Ctrl-C or SIGTERM to stop)");
                if !OutageBackoff::sleep_unless(failures, shutdown).await {
                    return None;
                }
                failures = failures.saturating_add(1);
            }
            result => {
                if failures > 0 && result.is_ok() {
                    tracing::info!(attempts = failures + 1, "{what} is reachable; going on");
                }
                return Some(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn outage_backoff_doubles_to_a_cap_with_jitter() {
        assert_eq!(OutageBackoff::delay(0, 0.0), Duration::from_millis(50));
        assert_eq!(OutageBackoff::delay(0, 1.0), Duration::from_millis(100));
        assert_eq!(OutageBackoff::delay(3, 1.0), Duration::from_millis(800));
        assert_eq!(OutageBackoff::delay(20, 1.0), Duration::from_secs(30));
        assert_eq!(OutageBackoff::delay(u32::MAX, 0.0), Duration::from_secs(15));
    }

    #[derive(Debug)]
    struct Down(bool);

    impl std::fmt::Display for Down {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(if self.0 { "down" } else { "refused" })
        }
    }

    impl Outage for Down {
        fn is_outage(&self) -> bool {
            self.0
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_startup_wait_rides_out_outages_and_stops_at_a_refusal() {
        let tries = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let shutdown = CancellationToken::new();
        // Down three times, then up: the backoff is slept in paused time.
        let got = wait_until_reachable("the server", &shutdown, || async {
            match tries.fetch_add(1, Ordering::SeqCst) {
                0..3 => Err(Down(true)),
                _ => Ok(7),
            }
        })
        .await;
        assert!(matches!(got, Some(Ok(7))));
        assert_eq!(tries.load(Ordering::SeqCst), 4);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(350) && waited <= Duration::from_millis(700),
            "three backoffs of 100, 200, 400 ms with jitter: {waited:?}"
        );
        // A refusal ends the wait at once.
        let got = wait_until_reachable("the server", &shutdown, || async {
            Err::<(), _>(Down(false))
        })
        .await;
        assert!(matches!(got, Some(Err(Down(false)))));
        // Shutdown ends an outage's wait.
        shutdown.cancel();
        let got = wait_until_reachable("the server", &shutdown, || async {
            Err::<(), _>(Down(true))
        })
        .await;
        assert!(got.is_none());
    }
}
