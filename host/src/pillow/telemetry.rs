//! What a pillow reports about its own progress, per chunk: the position
//! processed and the publish time of the last change of each partition
//! (from which status and `/metrics` compute need-processing and change
//! lag; when a poll finds nothing, the time it started stands for it), and
//! how long each stage took.

use super::chunk::PartitionRead;
use crate::feed::TopicPartition;
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

/// Report the positions processed (`next`) and the publish times of the
/// last changes processed (from what the chunk `read`).
pub(super) fn positions(
    metrics: &Metrics,
    pillow: &str,
    next: &HashMap<TopicPartition, u64>,
    read: &HashMap<TopicPartition, PartitionRead>,
) {
    for (tp, n) in next {
        let tp_label = tp.to_string();
        let labels = [("pillow", pillow), ("partition", tp_label.as_str())];
        metrics.set(Metric::ProcessedOffset, &labels, *n as f64);
        if let Some(at) = read.get(tp).and_then(PartitionRead::published_ms) {
            metrics.set(Metric::ProcessedPublishTime, &labels, at as f64 / 1000.0);
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

    #[test]
    fn positions_set_the_offset_and_publish_time_gauges() {
        let metrics = Metrics::new();
        let tp = TopicPartition::new("t", 3);
        positions(
            &metrics,
            "p",
            &HashMap::from([(tp.clone(), 12)]),
            &HashMap::from([(
                tp,
                PartitionRead {
                    next: 12,
                    published: Some((11, 1_500)),
                },
            )]),
        );
        let labels = [("pillow", "p"), ("partition", "t:3")];
        assert_eq!(metrics.get(Metric::ProcessedOffset, &labels), Some(12.0));
        assert_eq!(
            metrics.get(Metric::ProcessedPublishTime, &labels),
            Some(1.5)
        );
    }
}
