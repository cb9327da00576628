//! The Kafka feed (rdkafka, librdkafka bundled).
//!
//! Partitions are assigned manually (no consumer group, no offsets committed
//! to Kafka): checkpoints live in pillowtop's store, and a reader seeks to
//! them. Reads use a `StreamConsumer`, woken by librdkafka when messages
//! arrive; metadata and watermark calls use a `BaseConsumer` on a blocking
//! thread.
//!
//! `auto.offset.reset = error`: a position the broker no longer holds (the
//! retention gap) stops the partition with CommCare's message instead of
//! silently skipping to another offset.

use super::{FeedError, Message, TopicPartition, Watermarks};
use futures_util::{FutureExt, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long metadata and watermark requests may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A Kafka cluster, reached through `brokers`.
#[derive(Clone)]
pub struct KafkaFeed {
    brokers: Arc<str>,
    /// For metadata and watermarks (never assigned or subscribed).
    meta: Arc<BaseConsumer>,
}

fn kafka_error(brokers: &str, what: &str, e: KafkaError) -> FeedError {
    let brokers = brokers.to_owned();
    let message = format!("{what}: {e}");
    if e.rdkafka_error_code().is_some_and(is_unreachable) {
        FeedError::Unreachable { brokers, message }
    } else {
        FeedError::Kafka { brokers, message }
    }
}

/// Whether librdkafka's error means the brokers could not be reached (or
/// not in time), so the same request may succeed later.
fn is_unreachable(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::NetworkException
    )
}

impl KafkaFeed {
    /// A client for `brokers` (`host:port,...`). Connecting is lazy: an
    /// unreachable broker shows on the first request.
    ///
    /// # Errors
    ///
    /// When the client cannot be created (a bad setting).
    pub fn connect(brokers: &str) -> Result<KafkaFeed, FeedError> {
        let meta = base_config(brokers)
            .create::<BaseConsumer>()
            .map_err(|e| kafka_error(brokers, "creating a client", e))?;
        Ok(KafkaFeed {
            brokers: brokers.into(),
            meta: Arc::new(meta),
        })
    }

    /// The bootstrap brokers.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&BaseConsumer) -> Result<T, FeedError> + Send + 'static,
    ) -> Result<T, FeedError> {
        let meta = self.meta.clone();
        tokio::task::spawn_blocking(move || f(&meta))
            .await
            .map_err(|e| FeedError::Invalid(format!("kafka request thread failed: {e}")))?
    }

    /// Every partition of `topics`, sorted by topic then partition.
    ///
    /// # Errors
    ///
    /// When a topic does not exist or the brokers cannot be reached.
    pub async fn partitions(&self, topics: &[String]) -> Result<Vec<TopicPartition>, FeedError> {
        let topics = topics.to_vec();
        let brokers = self.brokers.clone();
        self.blocking(move |c| {
            let mut out = Vec::new();
            for topic in &topics {
                let md = c
                    .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
                    .map_err(|e| kafka_error(&brokers, &format!("metadata of {topic}"), e))?;
                let t = md
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                    .ok_or_else(|| FeedError::UnknownTopic(topic.clone()))?;
                out.extend(
                    t.partitions()
                        .iter()
                        .map(|p| TopicPartition::new(topic, p.id() as u32)),
                );
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    /// Low and high watermarks of `partitions`, in the order given: two
    /// ListOffsets requests per leader for all of them (asking one
    /// partition at a time costs two round trips each, which a busy broker
    /// turns into seconds for a status page).
    ///
    /// # Errors
    ///
    /// When the brokers cannot be reached or refuse a partition.
    pub async fn watermarks(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<Vec<Watermarks>, FeedError> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let partitions = partitions.to_vec();
        let brokers = self.brokers.clone();
        self.blocking(move |c| {
            let low = list_offsets(c, &brokers, &partitions, Offset::Beginning)?;
            let high = list_offsets(c, &brokers, &partitions, Offset::End)?;
            Ok(low
                .into_iter()
                .zip(high)
                .map(|(low, high)| Watermarks { low, high })
                .collect())
        })
        .await
    }

    /// Create `topic` with `partitions` unless it exists; returns its
    /// partition count.
    ///
    /// # Errors
    ///
    /// When it exists with another count, or the brokers refuse.
    pub async fn create_topic(
        &self,
        topic: &str,
        partitions: Option<u32>,
    ) -> Result<u32, FeedError> {
        match self.partitions(&[topic.to_owned()]).await {
            Ok(existing) => {
                let existing = existing.len() as u32;
                return match partitions {
                    Some(requested) if requested != existing => Err(FeedError::PartitionMismatch {
                        topic: topic.into(),
                        existing,
                        requested,
                    }),
                    _ => Ok(existing),
                };
            }
            Err(FeedError::UnknownTopic(_)) => {}
            Err(e) => return Err(e),
        }
        let n = partitions.unwrap_or(4);
        let admin: AdminClient<DefaultClientContext> = base_config(&self.brokers)
            .create()
            .map_err(|e| kafka_error(&self.brokers, "creating an admin client", e))?;
        let results = admin
            .create_topics(
                &[NewTopic::new(topic, n as i32, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT)),
            )
            .await
            .map_err(|e| kafka_error(&self.brokers, &format!("creating topic {topic}"), e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(FeedError::Kafka {
                        brokers: self.brokers.to_string(),
                        message: format!("creating topic {topic}: {code}"),
                    });
                }
            }
        }
        // Metadata can trail the creation for a moment.
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            match self.partitions(&[topic.to_owned()]).await {
                Ok(p) if p.len() as u32 == n => return Ok(n),
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Ok(p) => {
                    return Err(FeedError::Kafka {
                        brokers: self.brokers.to_string(),
                        message: format!(
                            "topic {topic} was created with {} partitions, not {n}",
                            p.len()
                        ),
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A producer keyed like Kafka's Java client (murmur2), so a document's
    /// changes land on the partition the embedded feed would pick too.
    ///
    /// # Errors
    ///
    /// When the producer cannot be created.
    pub fn producer(&self) -> Result<KafkaPublisher, FeedError> {
        let producer: FutureProducer = base_config(&self.brokers)
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .set("acks", "all")
            .create()
            .map_err(|e| kafka_error(&self.brokers, "creating a producer", e))?;
        Ok(KafkaPublisher {
            brokers: self.brokers.clone(),
            producer,
        })
    }

    /// A reader of `positions` (next offset per partition).
    ///
    /// # Errors
    ///
    /// When the consumer cannot be created or assigned.
    pub fn reader(&self, positions: Vec<(TopicPartition, u64)>) -> Result<KafkaReader, FeedError> {
        let consumer: StreamConsumer = base_config(&self.brokers)
            // Checkpoints live in our store; Kafka's group offsets are unused.
            .set("group.id", "pillowtop")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error")
            // How long the broker may hold a fetch open for data. Kafka
            // answers as soon as data is there, so this only paces an idle
            // consumer's fetches (10 a second). tansu 0.6 holds every fetch
            // the whole wait even when it has data: 100 ms still lets it
            // hand over 1 MiB per partition per fetch.
            .set("fetch.wait.max.ms", FETCH_WAIT_MS)
            .set("queued.max.messages.kbytes", "65536")
            .create()
            .map_err(|e| kafka_error(&self.brokers, "creating a consumer", e))?;
        let mut tpl = TopicPartitionList::new();
        for (tp, offset) in &positions {
            tpl.add_partition_offset(
                &tp.topic,
                tp.partition as i32,
                Offset::Offset(*offset as i64),
            )
            .map_err(|e| kafka_error(&self.brokers, &format!("assigning {tp}"), e))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| kafka_error(&self.brokers, "assigning partitions", e))?;
        let mut topics: Vec<Arc<str>> = Vec::new();
        for (tp, _) in &positions {
            if !topics.contains(&tp.topic) {
                topics.push(tp.topic.clone());
            }
        }
        Ok(KafkaReader {
            brokers: self.brokers.clone(),
            consumer,
            topics,
        })
    }
}

/// `fetch.wait.max.ms` of the pillows' consumers.
const FETCH_WAIT_MS: &str = "100";

fn base_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", "pillowtop")
        // Keep librdkafka's own logging quiet; errors come back as results.
        .set("log_level", "3");
    c
}

/// Produces changes to Kafka.
pub struct KafkaPublisher {
    brokers: Arc<str>,
    producer: FutureProducer,
}

impl KafkaPublisher {
    /// Produce `messages` (key, value) to `topic` and wait until every one
    /// is acknowledged. Returns how many were produced.
    ///
    /// # Errors
    ///
    /// The first delivery failure.
    pub async fn publish(
        &self,
        topic: &str,
        messages: Vec<(Option<Vec<u8>>, Vec<u8>)>,
    ) -> Result<usize, FeedError> {
        let mut pending = Vec::with_capacity(messages.len());
        for (key, value) in &messages {
            let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(value.as_slice());
            if let Some(k) = key {
                record = record.key(k.as_slice());
            }
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        // The local queue is full: let deliveries drain.
                        record = r;
                        self.producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => {
                        return Err(kafka_error(
                            &self.brokers,
                            &format!("producing to {topic}"),
                            e,
                        ));
                    }
                }
            }
        }
        let n = pending.len();
        for delivery in pending {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    return Err(kafka_error(
                        &self.brokers,
                        &format!("producing to {topic}"),
                        e,
                    ));
                }
                Err(_) => {
                    return Err(FeedError::Kafka {
                        brokers: self.brokers.to_string(),
                        message: format!("producing to {topic}: the producer shut down"),
                    });
                }
            }
        }
        Ok(n)
    }
}

/// Reads assigned partitions from their positions.
///
/// A `StreamConsumer`: librdkafka tells the async runtime when its queue
/// turns non-empty, so an idle reader waits on a timer alone (a blocking
/// `poll` spun through the last millisecond of every wait).
pub struct KafkaReader {
    brokers: Arc<str>,
    consumer: StreamConsumer,
    /// The assigned topics' names, shared by every message read from them
    /// (a name allocated per message cost an allocation and a copy each).
    topics: Vec<Arc<str>>,
}

impl KafkaReader {
    /// Up to `max` messages, waiting at most `max_wait` for the first one.
    ///
    /// # Errors
    ///
    /// A retention gap, or a broker error librdkafka does not retry itself.
    pub async fn poll(
        &mut self,
        max: usize,
        max_wait: Duration,
    ) -> Result<Vec<Message>, FeedError> {
        let brokers = &*self.brokers;
        let topics = &self.topics;
        let topic = |name: &str| {
            topics
                .iter()
                .find(|t| &***t == name)
                .cloned()
                .unwrap_or_else(|| name.into())
        };
        let mut stream = self.consumer.stream();
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + max_wait;
        while out.len() < max {
            // Wait for the first message up to max_wait; after that take only
            // what is already fetched.
            let next = if out.is_empty() {
                match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                }
            } else {
                match stream.next().now_or_never() {
                    Some(next) => next,
                    None => break,
                }
            };
            match next {
                None => break,
                Some(Ok(m)) => out.push(Message {
                    tp: TopicPartition {
                        topic: topic(m.topic()),
                        partition: m.partition() as u32,
                    },
                    offset: m.offset() as u64,
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    timestamp_ms: m.timestamp().to_millis(),
                }),
                Some(Err(KafkaError::PartitionEOF(_))) => continue,
                Some(Err(e))
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::OffsetOutOfRange) =>
                {
                    return Err(FeedError::OffsetOutOfRange {
                        brokers: brokers.into(),
                        message: e.to_string(),
                    });
                }
                // Transport errors (broker down, connection reset) are
                // retried by librdkafka itself; they surface here as
                // information.
                Some(Err(e)) if is_transient(&e) => {
                    tracing::warn!(%brokers, error = %e, "kafka: transient error; librdkafka retries");
                    if out.is_empty() && tokio::time::Instant::now() >= deadline {
                        break;
                    }
                }
                Some(Err(e)) => return Err(kafka_error(brokers, "reading", e)),
            }
        }
        Ok(out)
    }
}

/// One offset per partition, in the order given, from a ListOffsets
/// request per leader: `Offset::Beginning` asks for the first offset held,
/// `Offset::End` for the next to be written.
fn list_offsets(
    c: &BaseConsumer,
    brokers: &str,
    partitions: &[TopicPartition],
    which: Offset,
) -> Result<Vec<u64>, FeedError> {
    let what = || {
        format!(
            "offsets of {}",
            partitions
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut tpl = TopicPartitionList::new();
    for tp in partitions {
        tpl.add_partition_offset(&tp.topic, tp.partition as i32, which)
            .map_err(|e| kafka_error(brokers, &what(), e))?;
    }
    let found = c
        .offsets_for_times(tpl, REQUEST_TIMEOUT)
        .map_err(|e| kafka_error(brokers, &what(), e))?;
    partitions
        .iter()
        .map(|tp| {
            let elem = found
                .find_partition(&tp.topic, tp.partition as i32)
                .ok_or_else(|| FeedError::Kafka {
                    brokers: brokers.to_owned(),
                    message: format!("offsets of {tp}: missing from the broker's answer"),
                })?;
            elem.error()
                .map_err(|e| kafka_error(brokers, &format!("offsets of {tp}"), e))?;
            match elem.offset() {
                Offset::Offset(o) => Ok(o.max(0) as u64),
                other => Err(FeedError::Kafka {
                    brokers: brokers.to_owned(),
                    message: format!("offsets of {tp}: the broker answered {other:?}"),
                }),
            }
        })
        .collect()
}

fn is_transient(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::UnknownTopicOrPartition
        )
    )
}
