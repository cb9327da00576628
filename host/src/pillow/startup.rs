//! Where a pillow process starts: which partitions it owns, where each
//! starts reading (its checkpoint, or the first offset the feed holds; a
//! retention gap stops it), and, to stop once caught up, where each ends.

use super::{RunError, RunOptions};
use crate::checkpoint::{self, CheckpointError};
use crate::config::PillowConfig;
use crate::feed::{Feed, TopicPartition};
use crate::partition;
use crate::store::Store;
use std::collections::HashMap;
use tokio_util::sync::CancellationToken;

/// A pillow's starting point.
pub(super) struct Start {
    /// The partitions this process reads.
    pub(super) assigned: Vec<TopicPartition>,
    /// Where each starts (the next offset to read).
    pub(super) positions: Vec<(TopicPartition, u64)>,
    /// With `until_caught_up`: the end offset of each at start.
    pub(super) targets: HashMap<TopicPartition, u64>,
}

/// Find the start. A broker down at startup is waited for, as a sink is;
/// `Ok(None)` when `shutdown` fires first.
///
/// # Errors
///
/// A feed or store failure, an impossible process layout, or a retention
/// gap on one of the assigned partitions.
pub(super) async fn start(
    config: &PillowConfig,
    feed: &Feed,
    store: &Store,
    options: &RunOptions,
    shutdown: &CancellationToken,
) -> Result<Option<Start>, RunError> {
    let name = &config.name;
    let feed_err = |source| RunError::Feed {
        pillow: name.clone(),
        source,
    };
    let Some(pairs) = crate::outage::wait_until_reachable(
        &format!("the feed of pillow {name}"),
        shutdown,
        || feed.partitions(&config.topics),
    )
    .await
    else {
        return Ok(None);
    };
    let pairs = pairs.map_err(feed_err)?;
    let assigned = partition::assign(
        pairs,
        options.num_processes.unwrap_or(config.num_processes),
        options.process_num,
        config.dedicated_migration_process,
    )
    .map_err(|source| RunError::Assignment {
        pillow: name.clone(),
        source,
    })?;
    let found = checkpoint::positions(feed, store, config.checkpoint_id(), &assigned)
        .await
        .map_err(|e| match e {
            CheckpointError::Store(source) => RunError::Store {
                pillow: name.clone(),
                source,
            },
            CheckpointError::Feed(source) => feed_err(source),
            other => RunError::Feed {
                pillow: name.clone(),
                source: crate::feed::FeedError::Invalid(other.to_string()),
            },
        })?;
    let mut positions = Vec::with_capacity(found.len());
    let mut targets = HashMap::new();
    for p in &found {
        positions.push((p.partition.clone(), p.start().map_err(feed_err)?));
        if options.until_caught_up {
            targets.insert(p.partition.clone(), p.end_offset);
        }
    }
    Ok(Some(Start {
        assigned,
        positions,
        targets,
    }))
}
