//! Feeds: ordered, partitioned logs of changes.
//!
//! The embedded feed ([`embedded`]) is a SQLite log with Kafka's words and
//! guarantees: topics split into partitions, offsets that only grow, and a
//! key (the document id) that decides the partition so one document's
//! changes stay in order. The Kafka feed ([`kafka`]) reads real brokers
//! with manual partition assignment. The pillow loop sees only [`Feed`] and
//! [`FeedReader`]: one interface, two feeds.

pub mod embedded;
pub mod kafka;
pub mod publish;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition number.
    pub partition: u32,
}

impl TopicPartition {
    /// `topic:partition`.
    pub fn new(topic: &str, partition: u32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.topic, self.partition)
    }
}

/// Serialized as `topic:partition` (also as a map key).
impl serde::Serialize for TopicPartition {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::str::FromStr for TopicPartition {
    type Err = String;

    /// Parse `topic:partition` (the topic may itself contain `:`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (topic, partition) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not topic:partition"))?;
        let partition = partition
            .parse()
            .map_err(|_| format!("{s:?}: partition {partition:?} is not a number"))?;
        if topic.is_empty() {
            return Err(format!("{s:?}: empty topic"));
        }
        Ok(TopicPartition::new(topic, partition))
    }
}

/// One message as stored in a feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Where it is.
    pub tp: TopicPartition,
    /// Its offset.
    pub offset: u64,
    /// Its key (the document id).
    pub key: Option<Vec<u8>>,
    /// Its value (ChangeMeta JSON).
    pub value: Vec<u8>,
    /// When it was appended, epoch ms.
    pub timestamp_ms: Option<i64>,
}

/// Why a feed operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The feed's database failed.
    #[error("embedded feed {path}: {source}")]
    Database {
        /// Feed file.
        path: String,
        /// The database error.
        source: sqlx::Error,
    },
    /// A topic does not exist.
    #[error(
        "topic {0:?} does not exist in the feed; publish to it first (`pillowtop publish --topic {0}`)"
    )]
    UnknownTopic(String),
    /// A topic exists with another partition count.
    #[error(
        "topic {topic:?} has {existing} partitions, not {requested}; partition counts cannot change (as in Kafka): omit --partitions or use a new topic"
    )]
    PartitionMismatch {
        /// Topic.
        topic: String,
        /// Its partition count.
        existing: u32,
        /// What was asked for.
        requested: u32,
    },
    /// A bad argument.
    #[error("{0}")]
    Invalid(String),
    /// Kafka refused or could not be reached.
    #[error(
        "kafka {brokers}: {message}; check the brokers are up (`make services` starts a local one) and [feed] brokers"
    )]
    Kafka {
        /// Bootstrap brokers.
        brokers: String,
        /// What failed.
        message: String,
    },
    /// The brokers could not be reached, or not in time: the same request
    /// may succeed later.
    #[error(
        "kafka {brokers}: {message}; the brokers are unreachable: check they are up (`make services` starts a local one) and [feed] brokers"
    )]
    Unreachable {
        /// Bootstrap brokers.
        brokers: String,
        /// What failed.
        message: String,
    },
    /// The broker no longer holds the offset being read.
    #[error(
        "kafka {brokers}: {message}: the broker no longer holds this position (retention); see `pillowtop status` and move the checkpoint with `pillowtop checkpoint`"
    )]
    OffsetOutOfRange {
        /// Bootstrap brokers.
        brokers: String,
        /// librdkafka's message.
        message: String,
    },
    /// A checkpoint is older than the first offset the broker still holds
    /// (CommCare's check, with its message).
    #[error(
        "{}. Changes between them are gone from the feed; reprocess from another source if they matter, then move the checkpoint: `pillowtop checkpoint set --pillow PILLOW --partition {tp} --offset {first}` (or `checkpoint to-latest`)",
        gap_message(tp, *first, *needed)
    )]
    RetentionGap {
        /// The partition.
        tp: TopicPartition,
        /// The first offset the feed still holds.
        first: u64,
        /// The checkpoint.
        needed: u64,
    },
}

impl FeedError {
    /// Whether the feed is unreachable, so the same request may succeed
    /// later, as opposed to a refusal retrying cannot fix.
    pub fn is_outage(&self) -> bool {
        matches!(self, FeedError::Unreachable { .. })
    }
}

impl crate::outage::Outage for FeedError {
    fn is_outage(&self) -> bool {
        FeedError::is_outage(self)
    }
}

/// CommCare's sentence for a checkpoint the feed no longer holds.
pub fn gap_message(tp: &TopicPartition, first: u64, needed: u64) -> String {
    format!("First available topic offset for {tp} is {first} but needed {needed}")
}

/// Low and high watermarks: the first offset still held and the next offset
/// to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    /// First offset still held.
    pub low: u64,
    /// Next offset to be written (the end).
    pub high: u64,
}

/// A feed: the embedded log or Kafka, behind one interface.
#[derive(Clone)]
pub enum Feed {
    /// The SQLite log.
    Embedded(embedded::EmbeddedFeed),
    /// Kafka.
    Kafka(kafka::KafkaFeed),
}

impl Feed {
    /// Every partition of `topics`.
    ///
    /// # Errors
    ///
    /// When a topic is missing or the feed is unreachable.
    pub async fn partitions(&self, topics: &[String]) -> Result<Vec<TopicPartition>, FeedError> {
        match self {
            Feed::Embedded(f) => f.partitions(topics).await,
            Feed::Kafka(f) => f.partitions(topics).await,
        }
    }

    /// Watermarks of `partitions`, in the order given.
    ///
    /// # Errors
    ///
    /// When the feed is unreachable.
    pub async fn watermarks(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<Vec<Watermarks>, FeedError> {
        match self {
            Feed::Embedded(f) => {
                let mut out = Vec::with_capacity(partitions.len());
                for tp in partitions {
                    out.push(f.watermarks(tp).await?);
                }
                Ok(out)
            }
            Feed::Kafka(f) => f.watermarks(partitions).await,
        }
    }

    /// Create `topic` with `partitions` (default 4) unless it exists;
    /// returns its partition count.
    ///
    /// # Errors
    ///
    /// When it exists with another partition count, or the feed fails.
    pub async fn create_topic(
        &self,
        topic: &str,
        partitions: Option<u32>,
    ) -> Result<u32, FeedError> {
        match self {
            Feed::Embedded(f) => f.create_topic(topic, partitions).await,
            Feed::Kafka(f) => f.create_topic(topic, partitions).await,
        }
    }

    /// A reader positioned at `positions` (next offset per partition).
    ///
    /// # Errors
    ///
    /// When a Kafka consumer cannot be created.
    pub fn reader(&self, positions: Vec<(TopicPartition, u64)>) -> Result<FeedReader, FeedError> {
        Ok(match self {
            Feed::Embedded(f) => FeedReader::Embedded(f.reader(positions)),
            Feed::Kafka(f) => FeedReader::Kafka(f.reader(positions)?),
        })
    }

    /// Open the feed `config` names (creating the embedded log if missing).
    ///
    /// # Errors
    ///
    /// When the log cannot be opened, or the Kafka client not created.
    pub async fn open(config: &crate::config::FeedConfig) -> Result<Feed, FeedError> {
        match config {
            crate::config::FeedConfig::Embedded { path } => {
                Ok(Feed::Embedded(embedded::EmbeddedFeed::open(path).await?))
            }
            crate::config::FeedConfig::Kafka { brokers } => {
                Ok(Feed::Kafka(kafka::KafkaFeed::connect(brokers)?))
            }
        }
    }

    /// Where it is, for messages: the feed file or the brokers.
    pub fn describe(&self) -> String {
        match self {
            Feed::Embedded(f) => format!("embedded feed {}", f.path().display()),
            Feed::Kafka(f) => format!("kafka {}", f.brokers()),
        }
    }
}

/// Reads assigned partitions from their positions, in order per partition.
pub enum FeedReader {
    /// The SQLite log.
    Embedded(embedded::EmbeddedReader),
    /// Kafka.
    Kafka(kafka::KafkaReader),
}

impl FeedReader {
    /// Up to `max` messages, waiting at most `max_wait` for the first one.
    /// Messages of one partition come in offset order; an empty result
    /// means nothing arrived in time.
    ///
    /// # Errors
    ///
    /// When the feed is unreachable.
    pub async fn poll(
        &mut self,
        max: usize,
        max_wait: Duration,
    ) -> Result<Vec<Message>, FeedError> {
        match self {
            FeedReader::Embedded(r) => r.poll(max, max_wait).await,
            FeedReader::Kafka(r) => r.poll(max, max_wait).await,
        }
    }
}

/// Kafka's default partitioner (murmur2 of the key, positive, modulo the
/// partition count), so the embedded feed and Kafka (`partitioner =
/// murmur2_random` in librdkafka) agree where a key lands.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// MurmurHash2 as Kafka's Java client computes it (seed 0x9747b28c).
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's UtilsTest.testMurmur2 (signed ints there).
        let cases: [(&[u8], i32); 7] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
            (b"", 275_646_681),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input) as i32,
                expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn partition_is_stable_and_in_range() {
        for n in 1..9 {
            let p = partition_for_key(b"case-123", n);
            assert!(p < n);
            assert_eq!(p, partition_for_key(b"case-123", n));
        }
    }
}
