//! `pillowtop publish`: append JSON lines (CommCare `ChangeMeta` with an
//! inline `document`) to a topic, keyed by `document_id` so one document's
//! changes stay in one partition, in order.

use super::kafka::KafkaPublisher;
use super::{Feed, FeedError};
use std::io::BufRead;

/// Lines sent per batch.
const BATCH: usize = 2000;

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Changes appended.
    pub total: usize,
    /// Lines without a `document_id`: published unkeyed (the pillow records
    /// each as a decode error).
    pub unkeyed: usize,
    /// The topic's partition count.
    pub partitions: u32,
}

/// Why a publish stopped.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Reading the input failed.
    #[error("reading changes: {0}")]
    Read(#[from] std::io::Error),
    /// The feed refused or failed.
    #[error(transparent)]
    Feed(#[from] FeedError),
}

/// Appends keyed messages to topics of a feed (one Kafka producer, made
/// once, for a Kafka feed).
pub struct Publisher {
    feed: Feed,
    producer: Option<KafkaPublisher>,
}

impl Publisher {
    /// A publisher to `feed`.
    ///
    /// # Errors
    ///
    /// When a Kafka producer cannot be made (a bad broker list).
    pub fn new(feed: &Feed) -> Result<Publisher, FeedError> {
        let producer = match feed {
            Feed::Kafka(k) => Some(k.producer()?),
            Feed::Embedded(_) => None,
        };
        Ok(Publisher {
            feed: feed.clone(),
            producer,
        })
    }

    /// Append `batch` (key, value) to `topic`; how many were appended.
    ///
    /// # Errors
    ///
    /// When the feed refuses or fails; part of the batch may be appended.
    pub async fn send(
        &self,
        topic: &str,
        batch: Vec<(Option<Vec<u8>>, Vec<u8>)>,
    ) -> Result<usize, FeedError> {
        match (&self.feed, &self.producer) {
            (_, Some(p)) => p.publish(topic, batch).await,
            (Feed::Embedded(f), None) => f.publish(topic, batch).await,
            (Feed::Kafka(_), None) => unreachable!("a Kafka feed always has a producer"),
        }
    }
}

/// Publish every non-empty line of `lines` to `topic` of `feed` (creating
/// it with `partitions`, 4 by default), calling `progress` with the count
/// so far after each batch.
///
/// # Errors
///
/// See [`PublishError`]; batches sent before the error stay published.
pub async fn publish_lines(
    feed: &Feed,
    topic: &str,
    partitions: Option<u32>,
    lines: impl BufRead,
    mut progress: impl FnMut(usize),
) -> Result<Published, PublishError> {
    #[derive(serde::Deserialize)]
    struct Key {
        document_id: Option<String>,
    }
    let partitions = feed.create_topic(topic, partitions).await?;
    let publisher = Publisher::new(feed)?;
    let send = async |batch| publisher.send(topic, batch).await;
    let mut batch = Vec::with_capacity(BATCH);
    let (mut total, mut unkeyed) = (0usize, 0usize);
    for line in lines.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        // The key keeps one document's changes in one partition. A line
        // without a document_id is still published (the pillow records it
        // as a decode error), unkeyed.
        let key = serde_json::from_str::<Key>(&line)
            .ok()
            .and_then(|k| k.document_id)
            .map(String::into_bytes);
        if key.is_none() {
            unkeyed += 1;
        }
        batch.push((key, line.into_bytes()));
        if batch.len() == BATCH {
            total += send(std::mem::take(&mut batch)).await?;
            progress(total);
        }
    }
    total += send(batch).await?;
    progress(total);
    Ok(Published {
        total,
        unkeyed,
        partitions,
    })
}
