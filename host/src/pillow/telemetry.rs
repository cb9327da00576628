//! What a pillow reports about its own progress, per chunk: the position
//! processed and the publish time of the last change of each partition
//! (from which status and `/metrics` compute need-processing and change
//! lag; when a poll finds nothing, the time it started stands for it), and
//! how long each stage took.

use crate::feed::{Message, TopicPartition};
use crate::metrics::{Metric, Metrics};
use std::collections::HashMap;
use std::time::Duration;

/// A stage of a chunk, as `pillowtop_processor_seconds{stage}` names it
/// (CommCare's `processor.timing` by extract, transform, load).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Reading the messages into changes.
    Decode,
    /// Every processor's calls.
    Transform,
    /// Sinks, pillow errors and the checkpoint, in one delivery.
    Load,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Transform => "transform",
            Stage::Load => "load",
        }
    }
}

/// Count one chunk's time in `stage`.
pub(super) fn stage(metrics: &Metrics, pillow: &str, stage: Stage, took: Duration) {
    metrics.observe(
        Metric::ProcessorSeconds,
        &[("pillow", pillow), ("stage", stage.as_str())],
        took.as_secs_f64(),
    );
}

/// The publish time (epoch ms) of the latest message of each partition in
/// a chunk, for messages that carry one.
pub(super) fn last_published(messages: &[Message]) -> HashMap<TopicPartition, i64> {
    let mut last: HashMap<TopicPartition, (u64, i64)> = HashMap::new();
    for m in messages {
        let Some(at) = m.timestamp_ms else { continue };
        match last.get_mut(&m.tp) {
            Some(seen) if seen.0 >= m.offset => {}
            Some(seen) => *seen = (m.offset, at),
            None => {
                last.insert(m.tp.clone(), (m.offset, at));
            }
        }
    }
    last.into_iter().map(|(tp, (_, at))| (tp, at)).collect()
}

/// Report the positions processed (`next`) and the publish times of the
/// last changes processed.
pub(super) fn positions(
    metrics: &Metrics,
    pillow: &str,
    next: &HashMap<TopicPartition, u64>,
    published: &HashMap<TopicPartition, i64>,
) {
    for (tp, n) in next {
        let tp_label = tp.to_string();
        let labels = [("pillow", pillow), ("partition", tp_label.as_str())];
        metrics.set(Metric::ProcessedOffset, &labels, *n as f64);
        if let Some(at) = published.get(tp) {
            metrics.set(Metric::ProcessedPublishTime, &labels, *at as f64 / 1000.0);
        }
    }
}

/// Caught up: every change published before `read_up_to_ms` is
/// processed, so for lag it counts as the publish time of the last one.
pub(super) fn caught_up(
    metrics: &Metrics,
    pillow: &str,
    next: &HashMap<TopicPartition, u64>,
    read_up_to_ms: i64,
) {
    for tp in next.keys() {
        let tp_label = tp.to_string();
        metrics.set(
            Metric::ProcessedPublishTime,
            &[("pillow", pillow), ("partition", tp_label.as_str())],
            read_up_to_ms as f64 / 1000.0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(partition: u32, offset: u64, at: Option<i64>) -> Message {
        Message {
            tp: TopicPartition::new("t", partition),
            offset,
            key: None,
            value: Vec::new(),
            timestamp_ms: at,
        }
    }

    #[test]
    fn the_latest_offset_of_each_partition_gives_its_publish_time() {
        let chunk = [
            message(0, 5, Some(50)),
            message(1, 9, Some(90)),
            message(0, 7, Some(70)),
            message(0, 6, Some(99)),
            message(1, 10, None),
        ];
        let last = last_published(&chunk);
        assert_eq!(last.len(), 2);
        assert_eq!(last[&TopicPartition::new("t", 0)], 70);
        assert_eq!(last[&TopicPartition::new("t", 1)], 90);
    }

    #[test]
    fn positions_set_the_offset_and_publish_time_gauges() {
        let metrics = Metrics::new();
        let tp = TopicPartition::new("t", 3);
        positions(
            &metrics,
            "p",
            &HashMap::from([(tp.clone(), 12)]),
            &HashMap::from([(tp, 1_500)]),
        );
        let labels = [("pillow", "p"), ("partition", "t:3")];
        assert_eq!(metrics.get(Metric::ProcessedOffset, &labels), Some(12.0));
        assert_eq!(
            metrics.get(Metric::ProcessedPublishTime, &labels),
            Some(1.5)
        );
    }
}
