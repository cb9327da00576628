//! When checkpoints are saved.
//!
//! A checkpoint is the next offset to read, per (checkpoint id, topic,
//! partition). It is written in the same store transaction as the chunk's
//! sink writes whenever it is due: after `checkpoint_every` changes or
//! `checkpoint_max_delay_seconds` since the last save (CommCare: 1000
//! changes / 300 s), and always on shutdown and when caught up. Between
//! saves, writes are committed without moving the checkpoint; a crash then
//! replays at most the unsaved tail, which versioned, idempotent sink writes
//! absorb.

use std::time::{Duration, Instant};

/// How often checkpoints are saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// Save after this many changes.
    pub every: u64,
    /// Save at least this often while changes flow.
    pub max_delay: Duration,
}

/// Tracks changes and time since the last save.
#[derive(Debug, Clone)]
pub struct CheckpointTracker {
    policy: CheckpointPolicy,
    since_save: u64,
    last_save: Instant,
}

impl CheckpointTracker {
    /// A tracker whose last save is `now`.
    pub fn new(policy: CheckpointPolicy, now: Instant) -> Self {
        CheckpointTracker {
            policy,
            since_save: 0,
            last_save: now,
        }
    }

    /// Count `n` processed changes.
    pub fn record(&mut self, n: u64) {
        self.since_save += n;
    }

    /// Whether unsaved changes exist.
    pub fn dirty(&self) -> bool {
        self.since_save > 0
    }

    /// Whether a save is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.dirty()
            && (self.since_save >= self.policy.every
                || now.duration_since(self.last_save) >= self.policy.max_delay)
    }

    /// Note a save at `now`.
    pub fn saved(&mut self, now: Instant) {
        self.since_save = 0;
        self.last_save = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_by_count_or_delay_never_when_clean() {
        let t0 = Instant::now();
        let mut t = CheckpointTracker::new(
            CheckpointPolicy {
                every: 10,
                max_delay: Duration::from_secs(5),
            },
            t0,
        );
        assert!(!t.due(t0 + Duration::from_secs(60)), "nothing to save");
        t.record(9);
        assert!(!t.due(t0 + Duration::from_secs(1)));
        t.record(1);
        assert!(t.due(t0 + Duration::from_secs(1)));
        t.saved(t0 + Duration::from_secs(1));
        t.record(1);
        assert!(!t.due(t0 + Duration::from_secs(5)));
        assert!(t.due(t0 + Duration::from_secs(6)));
    }
}
