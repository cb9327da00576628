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
//!
//! Where each partition stands ([`positions`]: the feed's offsets joined
//! with the saved checkpoints, the one query `status`, the checkpoint
//! commands and a starting pillow share). Operators move checkpoints with
//! `pillowtop checkpoint` ([`inspect`], [`apply`]): after a retention gap,
//! to skip a backlog, or to reprocess.

use crate::config::PillowConfig;
use crate::feed::{Feed, FeedError, TopicPartition};
use crate::store::{Store, StoreError};
use serde::Serialize;
use std::time::{Duration, Instant};

/// One partition's checkpoint against what the feed holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionPosition {
    /// The partition.
    pub partition: TopicPartition,
    /// The saved checkpoint (next offset), if any.
    pub checkpoint: Option<u64>,
    /// When the checkpoint was saved, epoch ms.
    pub saved_at_ms: Option<i64>,
    /// First offset the feed still holds.
    pub first_offset: u64,
    /// Next offset the feed will write.
    pub end_offset: u64,
}

impl PartitionPosition {
    /// Whether the checkpoint is below what the feed still holds.
    pub fn retention_gap(&self) -> bool {
        self.checkpoint.is_some_and(|c| c < self.first_offset)
    }

    /// Changes the feed holds past the checkpoint (all of them without one).
    pub fn need_processing(&self) -> u64 {
        self.end_offset.saturating_sub(self.checkpoint.unwrap_or(0))
    }

    /// Where a pillow starts reading: the checkpoint, or the first offset
    /// the feed holds when there is none.
    ///
    /// # Errors
    ///
    /// A retention gap: the checkpoint is below what the feed still holds
    /// (CommCare stops too, rather than skip changes silently).
    pub fn start(&self) -> Result<u64, FeedError> {
        match self.checkpoint {
            Some(needed) if needed < self.first_offset => Err(FeedError::RetentionGap {
                tp: self.partition.clone(),
                first: self.first_offset,
                needed,
            }),
            Some(checkpoint) => Ok(checkpoint),
            None => Ok(self.first_offset),
        }
    }
}

/// The position of each of `pairs`: the feed's first and end offsets and
/// the checkpoint saved under `checkpoint_id`, in the order given.
///
/// # Errors
///
/// When the feed or store fails.
pub async fn positions(
    feed: &Feed,
    store: &Store,
    checkpoint_id: &str,
    pairs: &[TopicPartition],
) -> Result<Vec<PartitionPosition>, CheckpointError> {
    let saved = store.checkpoints(checkpoint_id).await?;
    let watermarks = feed.watermarks(pairs).await?;
    let mut out = Vec::with_capacity(pairs.len());
    for (tp, w) in pairs.iter().zip(watermarks) {
        let checkpoint = saved.iter().find(|c| &c.tp == tp);
        out.push(PartitionPosition {
            partition: tp.clone(),
            checkpoint: checkpoint.map(|c| c.next_offset),
            saved_at_ms: checkpoint.map(|c| c.updated_at_ms),
            first_offset: w.low,
            end_offset: w.high,
        });
    }
    Ok(out)
}

/// Why checkpoints could not be read or moved.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The feed failed.
    #[error(transparent)]
    Feed(#[from] FeedError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A partition is not one of the pillow's.
    #[error("{0} is not a partition of this pillow's topics; see `pillowtop checkpoint show`")]
    UnknownPartition(String),
    /// An offset outside what the feed holds.
    #[error(
        "offset {offset} is outside what {partition} holds ({first}..={end}); give an offset in that range"
    )]
    OutOfRange {
        /// Partition.
        partition: TopicPartition,
        /// Asked for.
        offset: u64,
        /// First held.
        first: u64,
        /// End.
        end: u64,
    },
    /// A process of the pillow is running and would overwrite the change.
    #[error(
        "pillow {pillow} is running (process {process_num}, pid {pid}, heartbeat {age_s}s ago); stop it first (SIGTERM), or pass --force if it is gone"
    )]
    Running {
        /// Pillow.
        pillow: String,
        /// Its process number.
        process_num: u32,
        /// Its pid.
        pid: u32,
        /// Seconds since its heartbeat.
        age_s: i64,
    },
}

/// Every partition of the pillow with its checkpoint and the feed's offsets.
///
/// # Errors
///
/// When the feed or store fails.
pub async fn inspect(
    pillow: &PillowConfig,
    feed: &Feed,
    store: &Store,
) -> Result<Vec<PartitionPosition>, CheckpointError> {
    let pairs = feed.partitions(&pillow.topics).await?;
    positions(feed, store, pillow.checkpoint_id(), &pairs).await
}

/// Where to move checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// To this offset (one partition).
    To(u64),
    /// To the first offset the feed holds: reprocess everything it has.
    Reset,
    /// To the end: skip everything not yet processed.
    ToLatest,
}

/// Move the checkpoints of `partitions` (all of the pillow's when empty).
/// Refuses while a process of the pillow has a fresh heartbeat, unless
/// `force`. Returns (partition, old, new) for each moved checkpoint.
///
/// # Errors
///
/// See [`CheckpointError`].
pub async fn apply(
    pillow: &PillowConfig,
    feed: &Feed,
    store: &Store,
    partitions: &[String],
    to: Move,
    force: bool,
) -> Result<Vec<(TopicPartition, Option<u64>, u64)>, CheckpointError> {
    if !force {
        let now = crate::time::now_ms();
        if let Some(p) = store.running_process(&pillow.name, now).await? {
            return Err(CheckpointError::Running {
                pillow: pillow.name.clone(),
                process_num: p.process_num,
                pid: p.pid,
                age_s: p.seconds_since_heartbeat(now),
            });
        }
    }
    let all = inspect(pillow, feed, store).await?;
    let chosen: Vec<&PartitionPosition> = if partitions.is_empty() {
        all.iter().collect()
    } else {
        partitions
            .iter()
            .map(|name| {
                all.iter()
                    .find(|p| p.partition.to_string() == *name)
                    .ok_or_else(|| CheckpointError::UnknownPartition(name.clone()))
            })
            .collect::<Result<_, _>>()?
    };
    let mut moves = Vec::new();
    for p in chosen {
        let new = match to {
            Move::To(offset) => {
                if offset < p.first_offset || offset > p.end_offset {
                    return Err(CheckpointError::OutOfRange {
                        partition: p.partition.clone(),
                        offset,
                        first: p.first_offset,
                        end: p.end_offset,
                    });
                }
                offset
            }
            Move::Reset => p.first_offset,
            Move::ToLatest => p.end_offset,
        };
        moves.push((p.partition.clone(), p.checkpoint, new));
    }
    let writes: Vec<(TopicPartition, u64)> =
        moves.iter().map(|(tp, _, n)| (tp.clone(), *n)).collect();
    store
        .set_checkpoints(pillow.checkpoint_id(), &writes)
        .await?;
    Ok(moves)
}

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
    fn a_pillow_starts_at_its_checkpoint_or_the_first_offset_never_across_a_gap() {
        let at = |checkpoint| PartitionPosition {
            partition: TopicPartition::new("t", 3),
            checkpoint,
            saved_at_ms: None,
            first_offset: 10,
            end_offset: 50,
        };
        assert_eq!(at(None).start().unwrap(), 10);
        assert_eq!(at(Some(10)).start().unwrap(), 10);
        assert_eq!(at(Some(42)).start().unwrap(), 42);
        let gap = at(Some(7));
        assert!(gap.retention_gap());
        let err = gap.start().unwrap_err().to_string();
        assert!(
            err.starts_with("First available topic offset for t:3 is 10 but needed 7."),
            "CommCare's message: {err}"
        );
        assert_eq!(at(Some(42)).need_processing(), 8);
        assert_eq!(at(None).need_processing(), 50);
    }

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
