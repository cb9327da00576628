//! Retry queues in a process: one per pillow inside `pillowtop run`
//! (process 0 of each pillow, so a pillow split over processes runs one
//! queue), or alone as `pillowtop retry`.

use super::{Opened, ProcessError, Stop, load_pillow_plugins, open, selected};
use crate::config::{HostConfig, PillowConfig, RetryMode};
use crate::feed::Feed;
use crate::feed::publish::Publisher;
use crate::metrics::Metrics;
use crate::reload::Follower;
use crate::retry::{RetryError, RetryQueue, RetrySummary};
use crate::sink::Sinks;
use crate::source::DocumentSource;
use std::sync::Arc;
use tokio::task::JoinSet;

/// The retry queue of `pillow`, following the same plugin slots as its
/// processors (`followers`), with instances of its own; `None` when the
/// pillow's `retry` is `off`.
///
/// # Errors
///
/// When a Kafka producer for `retry = "republish"` cannot be made, or the
/// pillow's document source cannot be opened.
pub(super) fn queue(
    pillow: &PillowConfig,
    sinks: &Sinks,
    followers: &[Follower],
    metrics: &Arc<Metrics>,
    feed: &Feed,
    stop: &Stop,
) -> Result<Option<RetryQueue>, ProcessError> {
    if pillow.retry == RetryMode::Off {
        return Ok(None);
    }
    let (processors, followers): (Vec<_>, Vec<_>) = followers
        .iter()
        .map(|f| Follower::start(f.slot().clone()))
        .unzip();
    let mut queue = RetryQueue::new(
        pillow,
        sinks.clone(),
        processors,
        metrics.clone(),
        stop.graceful.clone(),
    )
    .following(followers);
    if pillow.retry == RetryMode::Republish {
        queue = queue.publishing(Publisher::new(feed)?);
    }
    if let Some(config) = &pillow.document_source {
        let source = DocumentSource::open(config).map_err(|source| {
            ProcessError::Retry(Box::new(RetryError::Source {
                pillow: pillow.name.clone(),
                source,
            }))
        })?;
        queue = queue.reading(source);
    }
    Ok(Some(queue))
}

/// `pillowtop retry`: run the retry queue of every pillow `only` selects
/// (whose `retry` is not `off`) until `stop`, or with `once` until fewer
/// than a batch are due.
///
/// # Errors
///
/// When the config, feed, store or a plugin cannot be opened, or a queue
/// fails (see [`crate::retry::RetryError`]).
pub async fn retry(
    config: &HostConfig,
    only: Option<&str>,
    once: bool,
    stop: &Stop,
) -> Result<Vec<RetrySummary>, ProcessError> {
    let pillows = selected(config, only)?;
    let Some(Opened {
        feed,
        sinks,
        metrics,
        plugins,
        ..
    }) = open(config, stop).await?
    else {
        return Ok(Vec::new());
    };
    let mut queues = JoinSet::new();
    for p in pillows {
        let (_, followers) = load_pillow_plugins(&plugins, p).await?;
        let Some(queue) = queue(p, &sinks, &followers, &metrics, &feed, stop)? else {
            tracing::info!(pillow = %p.name, "retry = \"off\": no retry queue");
            continue;
        };
        let graceful = stop.graceful.clone();
        queues.spawn(async move {
            if once {
                queue.drain(&graceful).await
            } else {
                queue.run(graceful).await
            }
        });
    }
    let mut summaries = Vec::new();
    while let Some(joined) = queues.join_next().await {
        let result = joined.map_err(|e| ProcessError::Task(e.to_string()))?;
        summaries.push(result.map_err(|e| ProcessError::Retry(Box::new(e)))?);
    }
    summaries.sort_by(|a, b| a.pillow.cmp(&b.pillow));
    Ok(summaries)
}
