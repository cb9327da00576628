//! One chunk, from feed messages to actions: decoding beside the previous
//! chunk's transform ([`spawn_poll`]), dedupe by document id
//! ([`decode_chunk`]), the processors in lanes of threads within the
//! chunk's action budget ([`run_chunk`]), and per-processor counts for
//! metrics. Everything here but the poll is synchronous and testable
//! without a feed or a sink.

use super::lanes::Lane;
use crate::change::{self, Change};
use crate::errors::sql::Passed;
use crate::errors::{ErrorKind, PillowError};
use crate::feed::{FeedError, FeedReader, Message, TopicPartition};
use crate::metrics::{Buckets, FUEL, Metric, Metrics};
use crate::shadow::LaneShadow;
use crate::sink::{Origin, Sources, VersionedAction};
use crate::wasm::{Failure, Processor};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What one poll read: each message decoded into its change (which owns
/// the message's value), or given back with why it does not decode, in
/// feed order.
pub(super) struct Polled {
    pub(super) messages: Vec<Result<Change, Box<change::Undecodable>>>,
    /// What was read of each partition.
    pub(super) read: HashMap<TopicPartition, PartitionRead>,
    /// CPU time the decoding took (beside the previous chunk's transform).
    pub(super) decode_time: Duration,
}

/// What one poll read of one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct PartitionRead {
    /// One past the last offset read: where the position moves.
    pub(super) next: u64,
    /// The offset and feed time (epoch ms) of the latest message read
    /// that carries a time.
    pub(super) published: Option<(u64, i64)>,
}

impl PartitionRead {
    /// The feed time of the latest message read that carries one.
    pub(super) fn published_ms(&self) -> Option<i64> {
        self.published.map(|(_, at)| at)
    }
}

/// Per partition, what `messages` hold, in one pass (before they are
/// decoded, which takes each message apart).
fn partitions_read(messages: &[Message]) -> HashMap<TopicPartition, PartitionRead> {
    let mut read: HashMap<TopicPartition, PartitionRead> = HashMap::new();
    for m in messages {
        let r = match read.get_mut(&m.tp) {
            Some(r) => r,
            None => read.entry(m.tp.clone()).or_default(),
        };
        r.next = r.next.max(m.offset + 1);
        if let Some(at) = m.timestamp_ms
            && r.published.is_none_or(|(offset, _)| offset < m.offset)
        {
            r.published = Some((m.offset, at));
        }
    }
    read
}

/// Decode what a poll read, and sum it up per partition.
fn decode_poll(messages: Vec<Message>) -> Polled {
    let read = partitions_read(&messages);
    let started = Instant::now();
    let messages = messages.into_iter().map(change::decode).collect();
    Polled {
        messages,
        read,
        decode_time: started.elapsed(),
    }
}

/// A feed poll running in the background; gives the reader back with the
/// messages it read, already decoded.
pub(super) type Polling = tokio::task::JoinHandle<(FeedReader, Result<Polled, FeedError>)>;

pub(super) fn spawn_poll(mut reader: FeedReader, max: usize, max_wait: Duration) -> Polling {
    tokio::spawn(async move {
        let result = match reader.poll(max, max_wait).await {
            Ok(messages) if messages.is_empty() => Ok(Polled {
                messages: Vec::new(),
                read: HashMap::new(),
                decode_time: Duration::ZERO,
            }),
            // Decoding parses every message's JSON (about 1 µs for a 1.8 KB
            // case): on a blocking thread, so it overlaps the previous
            // chunk's transform without holding up the runtime.
            Ok(messages) => tokio::task::spawn_blocking(move || decode_poll(messages))
            .await
            .map_err(|e| FeedError::Invalid(format!("decoding a chunk of messages failed, a bug in pillowtop (please report it): {e}"))),
            Err(e) => Err(e),
        };
        (reader, result)
    })
}

/// Advance positions past what was `read`, turn messages that do not
/// decode into pillow errors, and keep only the last change of each
/// document. Returns (changes, decode errors, changes skipped by dedupe).
pub(super) fn decode_chunk(
    pillow: &str,
    messages: Vec<Result<Change, Box<change::Undecodable>>>,
    read: &HashMap<TopicPartition, PartitionRead>,
    next: &mut HashMap<TopicPartition, u64>,
) -> (Changes, Vec<PillowError>, u64) {
    for (tp, r) in read {
        if let Some(pos) = next.get_mut(tp) {
            *pos = (*pos).max(r.next);
        }
    }
    let now = crate::time::now_ms();
    let mut changes = Vec::with_capacity(messages.len());
    let mut errors = Vec::new();
    for decoded in messages {
        match decoded {
            Ok(c) => changes.push(c),
            Err(undecodable) => {
                let change::Undecodable {
                    message: m,
                    error: e,
                } = *undecodable;
                let doc_id = m
                    .key
                    .as_deref()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .filter(|k| !k.is_empty())
                    .map_or_else(|| format!("{}:{}", m.tp, m.offset), str::to_owned);
                errors.push(PillowError::undecodable(
                    pillow,
                    doc_id,
                    (m.tp, m.offset),
                    m.value,
                    e.to_string(),
                    now,
                ));
            }
        }
    }
    // Dedupe: walk backwards marking the last change of each id (borrowing
    // the ids, no copies), then keep the marked ones in order.
    let before = changes.len();
    let mut keep = vec![false; before];
    {
        let mut seen = HashSet::with_capacity(before);
        for (i, c) in changes.iter().enumerate().rev() {
            keep[i] = seen.insert(c.id.as_str());
        }
    }
    let kept: Vec<_> = changes
        .into_iter()
        .zip(keep)
        .filter_map(|(c, k)| k.then_some(c))
        .collect();
    let skipped = (before - kept.len()) as u64;
    (kept, errors, skipped)
}

/// The result of running one chunk through the processors.
#[derive(Default)]
pub(super) struct ChunkOutcome {
    pub(super) actions: Vec<VersionedAction>,
    pub(super) errors: Vec<PillowError>,
    /// Per processor, the changes that passed it.
    pub(super) passed: Vec<Passed>,
    /// Per processor, in order.
    pub(super) stats: Vec<ProcessorStats>,
    /// The chunk's changes, for errors a sink finds later.
    pub(super) sources: Sources,
    /// What the candidates running beside processors found.
    pub(super) shadow: LaneShadow,
}

/// What one processor did in one chunk, for metrics.
#[derive(Clone)]
pub(super) struct ProcessorStats {
    ok: u64,
    failed: BTreeMap<ErrorKind, u64>,
    fuel: u64,
    /// Fuel per call.
    fuel_calls: Buckets,
}

impl Default for ProcessorStats {
    fn default() -> Self {
        ProcessorStats {
            ok: 0,
            failed: BTreeMap::new(),
            fuel: 0,
            fuel_calls: Buckets::new(FUEL),
        }
    }
}

impl ProcessorStats {
    /// Add another lane's counts for the same processor.
    fn add(&mut self, other: ProcessorStats) {
        self.ok += other.ok;
        self.fuel += other.fuel;
        self.fuel_calls.merge(&other.fuel_calls);
        for (kind, n) in other.failed {
            *self.failed.entry(kind).or_default() += n;
        }
    }
}

/// A transform thread gets at least this many changes of a chunk: fewer
/// would cost more in thread start-up than they save.
const MIN_CHANGES_PER_THREAD: usize = 64;

/// What one lane made of its run of a chunk.
struct LaneOutcome {
    shadow: LaneShadow,
    actions: Vec<VersionedAction>,
    failures: Vec<(Origin, Failure)>,
    passed: Vec<Origin>,
    stats: Vec<ProcessorStats>,
    /// Changes of its run it processed (all of them unless the chunk's
    /// action budget ran out first).
    done: usize,
}

/// The bytes of actions a chunk (piece) may hold, shared by its lanes.
struct ActionBudget {
    limit: usize,
    used: AtomicUsize,
}

impl ActionBudget {
    /// Count `bytes` more; whether the budget is now spent.
    fn spend(&self, bytes: usize) -> bool {
        self.used.fetch_add(bytes, Ordering::Relaxed) + bytes >= self.limit
    }

    fn spent(&self) -> bool {
        self.used.load(Ordering::Relaxed) >= self.limit
    }
}

/// A chunk's changes (each with the feed value it was decoded from).
pub(super) type Changes = Vec<Change>;

/// Run a chunk through the processors (on a blocking thread: Wasm is
/// CPU-bound). With several lanes the chunk is split into contiguous runs,
/// one per lane and thread, and the outcomes are joined in chunk order.
///
/// The lanes stop once their actions together hold `budget_bytes` (each
/// lane finishes the change in hand, so every call makes progress); the
/// outcome then covers the changes processed, and the rest of the chunk is
/// returned in order, for the next piece.
///
/// # Panics
///
/// Re-raises a panic of a lane's thread (a host bug); the caller's
/// `spawn_blocking` turns it into [`super::RunError::Worker`].
///
/// A processor's candidate (if one runs) gets every change after the live
/// version, and the results are compared; at most `diff_room[j]` of
/// processor `j`'s differences are described, the rest counted.
pub(super) fn run_chunk(
    pillow: String,
    mut lanes: Vec<Lane>,
    changes: Changes,
    budget_bytes: usize,
    diff_room: &[usize],
) -> (Vec<Lane>, ChunkOutcome, Changes) {
    let threads = lanes
        .len()
        .min(changes.len().div_ceil(MIN_CHANGES_PER_THREAD))
        .max(1);
    let per_thread = changes.len().div_ceil(threads).max(1);
    let budget = ActionBudget {
        limit: budget_bytes,
        used: AtomicUsize::new(0),
    };
    let outcomes: Vec<LaneOutcome> = if threads == 1 {
        vec![run_lane(&mut lanes[0], &changes, 0, &budget, diff_room)]
    } else {
        std::thread::scope(|scope| {
            let budget = &budget;
            let mut runs = lanes.iter_mut().zip(changes.chunks(per_thread)).enumerate();
            let (_, (first_lane, first_run)) = runs.next().expect("a chunk has a first run");
            let others: Vec<_> = runs
                .map(|(k, (lane, run))| {
                    scope.spawn(move || run_lane(lane, run, k * per_thread, budget, diff_room))
                })
                .collect();
            let mut outcomes = vec![run_lane(first_lane, first_run, 0, budget, diff_room)];
            for handle in others {
                outcomes.push(
                    handle
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                );
            }
            outcomes
        })
    };

    let mut outcome = ChunkOutcome {
        stats: vec![ProcessorStats::default(); lanes[0].live.len()],
        shadow: LaneShadow::new(diff_room.len(), &[]),
        ..ChunkOutcome::default()
    };
    let mut failures = Vec::new();
    let mut passed = Vec::new();
    let mut processed = Vec::with_capacity(outcomes.len());
    for (k, lane) in outcomes.into_iter().enumerate() {
        let start = k * per_thread;
        processed.push(start..start + lane.done);
        outcome.actions.extend(lane.actions);
        failures.extend(lane.failures);
        passed.extend(lane.passed);
        outcome.shadow.join(lane.shadow);
        for (total, part) in outcome.stats.iter_mut().zip(lane.stats) {
            total.add(part);
        }
    }
    let (changes, rest) = match split_processed(changes, &processed) {
        Split::All(changes) => (changes, Vec::new()),
        Split::Part {
            processed,
            rest,
            index,
        } => {
            for a in &mut outcome.actions {
                a.origin.change = index[a.origin.change as usize];
            }
            for (origin, _) in &mut failures {
                origin.change = index[origin.change as usize];
            }
            for origin in &mut passed {
                origin.change = index[origin.change as usize];
            }
            (processed, rest)
        }
    };
    outcome.sources = Sources {
        pillow,
        changes,
        processors: lanes[0].live.iter().map(Processor::reference).collect(),
    };
    outcome.errors = failures
        .into_iter()
        .map(|(origin, f)| outcome.sources.record(origin, f.kind, f.message))
        .collect();
    outcome.passed = passed_by_processor(&outcome.sources, &passed);
    (lanes, outcome, rest)
}

/// A chunk's changes split into those processed and the rest.
#[derive(Debug, PartialEq)]
enum Split<T> {
    /// Every change was processed (indices unchanged).
    All(Vec<T>),
    /// Some were: the processed ones in order, the rest in order, and each
    /// processed change's new index, by old index.
    Part {
        processed: Vec<T>,
        rest: Vec<T>,
        index: Vec<u32>,
    },
}

/// Split `changes` by the `processed` ranges (in order, disjoint).
fn split_processed<T>(changes: Vec<T>, processed: &[std::ops::Range<usize>]) -> Split<T> {
    let count: usize = processed.iter().map(|r| r.len()).sum();
    if count == changes.len() {
        return Split::All(changes);
    }
    let mut done = vec![false; changes.len()];
    for r in processed {
        done[r.clone()].fill(true);
    }
    let mut index = vec![u32::MAX; changes.len()];
    let mut kept = Vec::with_capacity(count);
    let mut rest = Vec::with_capacity(changes.len() - count);
    for (i, (c, d)) in changes.into_iter().zip(done).enumerate() {
        if d {
            index[i] = kept.len() as u32;
            kept.push(c);
        } else {
            rest.push(c);
        }
    }
    Split::Part {
        processed: kept,
        rest,
        index,
    }
}

/// Run `changes` (which start at position `first` of the chunk) through
/// one lane's processors, in order, until the chunk's action budget is
/// spent.
fn run_lane(
    lane: &mut Lane,
    changes: &[Change],
    first: usize,
    budget: &ActionBudget,
    diff_room: &[usize],
) -> LaneOutcome {
    let processors = lane.live.len();
    let mut outcome = LaneOutcome {
        shadow: LaneShadow::new(processors, diff_room),
        actions: Vec::new(),
        failures: Vec::new(),
        passed: Vec::new(),
        stats: vec![ProcessorStats::default(); processors],
        done: 0,
    };
    for (i, change) in changes.iter().enumerate() {
        if budget.spent() {
            break;
        }
        let mut bytes = 0;
        for (j, ((p, shadow), stats)) in lane
            .live
            .iter_mut()
            .zip(lane.shadow.iter_mut())
            .zip(outcome.stats.iter_mut())
            .enumerate()
        {
            let wanted = p.wants(change);
            let shadowed = shadow.as_ref().is_some_and(|s| s.wants(change));
            if !wanted && !shadowed {
                continue;
            }
            let origin = Origin {
                change: (first + i) as u32,
                processor: j as u16,
            };
            let (result, fuel) = if wanted {
                (p.process(change), p.last_fuel_used())
            } else {
                (Ok(Vec::new()), 0)
            };
            if let Some(candidate) = shadow {
                // Its actions are compared and dropped: never written.
                let (theirs, their_fuel) = if shadowed {
                    (candidate.process(change), candidate.last_fuel_used())
                } else {
                    (Ok(Vec::new()), 0)
                };
                outcome
                    .shadow
                    .observe(j, change, &result, fuel, &theirs, their_fuel);
            }
            if !wanted {
                continue;
            }
            stats.fuel += fuel;
            stats.fuel_calls.observe(fuel as f64);
            match result {
                Ok(actions) => {
                    stats.ok += 1;
                    outcome.passed.push(origin);
                    bytes += p.last_output_bytes();
                    outcome
                        .actions
                        .extend(actions.into_iter().map(|action| VersionedAction {
                            action,
                            version: change.offset,
                            origin,
                        }))
                }
                Err(failure) => {
                    *stats.failed.entry(failure.kind).or_default() += 1;
                    outcome.failures.push((origin, failure));
                }
            }
        }
        outcome.done = i + 1;
        if budget.spend(bytes) {
            break;
        }
    }
    outcome
}

/// The changes at `passed` grouped by processor, for resolving the
/// errors they supersede.
fn passed_by_processor(sources: &Sources, passed: &[Origin]) -> Vec<Passed> {
    let mut out: Vec<Passed> = sources
        .processors
        .iter()
        .map(|p| Passed {
            pillow: sources.pillow.clone(),
            processor: p.name.clone(),
            changes: Vec::new(),
        })
        .collect();
    for o in passed {
        let c = &sources.changes[o.change as usize];
        out[usize::from(o.processor)].changes.push((
            c.id.clone(),
            TopicPartition {
                topic: c.topic.clone(),
                partition: c.partition,
            },
            c.offset,
        ));
    }
    out.retain(|p| !p.changes.is_empty());
    out
}

/// Add a chunk's per-processor counts to the metrics, labelled with the
/// version that processed them.
pub(super) fn report(
    metrics: &Metrics,
    pillow: &str,
    processors: &[Processor],
    stats: &[ProcessorStats],
) {
    for (p, s) in processors.iter().zip(stats) {
        let plugin = p.plugin();
        let processor = plugin.manifest().name.as_str();
        let version = plugin.version().to_string();
        let labels = |outcome| {
            [
                ("pillow", pillow),
                ("processor", processor),
                ("version", version.as_str()),
                ("outcome", outcome),
            ]
        };
        if s.ok > 0 {
            metrics.add(Metric::ChangesTotal, &labels("ok"), s.ok as f64);
        }
        for (kind, n) in &s.failed {
            metrics.add(Metric::ChangesTotal, &labels(kind.as_str()), *n as f64);
        }
        if s.fuel > 0 {
            metrics.add(
                Metric::FuelUsedTotal,
                &[("pillow", pillow), ("processor", processor)],
                s.fuel as f64,
            );
        }
        metrics.merge(
            Metric::FuelPerCall,
            &[("pillow", pillow), ("processor", processor)],
            &s.fuel_calls,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(offset: u64, key: Option<&str>, value: &str) -> Message {
        Message {
            tp: TopicPartition::new("t", 0),
            offset,
            key: key.map(|k| k.as_bytes().to_vec()),
            value: value.as_bytes().to_vec(),
            timestamp_ms: None,
        }
    }

    /// `messages` through the poll's decoding and [`decode_chunk`].
    fn chunk(
        messages: Vec<Message>,
        next: &mut HashMap<TopicPartition, u64>,
    ) -> (Changes, Vec<PillowError>, u64) {
        let polled = decode_poll(messages);
        decode_chunk("p", polled.messages, &polled.read, next)
    }

    fn timed(partition: u32, offset: u64, at: Option<i64>) -> Message {
        Message {
            tp: TopicPartition::new("t", partition),
            timestamp_ms: at,
            ..message(offset, None, "")
        }
    }

    #[test]
    fn the_latest_offset_of_each_partition_gives_its_publish_time() {
        let chunk = [
            timed(0, 5, Some(50)),
            timed(1, 9, Some(90)),
            timed(0, 7, Some(70)),
            timed(0, 6, Some(99)),
            timed(1, 10, None),
        ];
        let read = partitions_read(&chunk);
        let last = |p| read[&TopicPartition::new("t", p)].published_ms().unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(last(0), 70);
        assert_eq!(last(1), 90);
        let next: Vec<u64> = (0..2)
            .map(|p| read[&TopicPartition::new("t", p)].next)
            .collect();
        assert_eq!(next, vec![8, 11], "one past the last offset read");
    }

    fn doc(id: &str, n: u32) -> String {
        format!(r#"{{"document_id": "{id}", "document": {{"n": {n}}}}}"#)
    }

    #[test]
    fn a_chunk_keeps_the_last_change_of_each_document_in_feed_order() {
        let tp = TopicPartition::new("t", 0);
        let mut next = HashMap::from([(tp.clone(), 0)]);
        let messages = vec![
            message(0, Some("a"), &doc("a", 1)),
            message(1, Some("b"), &doc("b", 1)),
            message(2, Some("a"), &doc("a", 2)),
            message(3, Some("c"), &doc("c", 1)),
        ];
        let (changes, errors, skipped) = chunk(messages, &mut next);
        let kept: Vec<(&str, u64)> = changes.iter().map(|c| (c.id.as_str(), c.offset)).collect();
        assert_eq!(kept, vec![("b", 1), ("a", 2), ("c", 3)]);
        assert_eq!(skipped, 1);
        assert!(errors.is_empty());
        assert_eq!(next[&tp], 4, "the position passes every message read");
    }

    #[test]
    fn a_message_that_does_not_decode_is_a_pillow_error_the_position_passes() {
        let tp = TopicPartition::new("t", 0);
        let mut next = HashMap::from([(tp.clone(), 5)]);
        let messages = vec![
            message(5, Some("k1"), "not json"),
            message(6, None, "{}"),
            message(7, Some("d"), &doc("d", 1)),
        ];
        let (changes, errors, _) = chunk(messages, &mut next);
        assert_eq!(changes.len(), 1);
        let ids: Vec<&str> = errors.iter().map(|e| e.doc_id.as_str()).collect();
        assert_eq!(ids, vec!["k1", "t:0:6"], "the key, else where it was");
        assert!(
            errors
                .iter()
                .all(|e| e.kind == ErrorKind::Decode && e.processor.is_empty())
        );
        assert_eq!(errors[0].change, b"not json", "the raw message is kept");
        assert_eq!(next[&tp], 8);
    }

    #[test]
    fn a_fully_processed_chunk_is_not_split() {
        assert_eq!(
            split_processed(vec!['a', 'b', 'c'], &[0..2, 2..3]),
            Split::All(vec!['a', 'b', 'c'])
        );
    }

    #[test]
    fn the_rest_of_each_lane_run_follows_in_chunk_order() {
        // Two lanes over runs 0..3 and 3..6; the budget ran out after one
        // change of the first run and two of the second.
        let split = split_processed(vec!['a', 'b', 'c', 'd', 'e', 'f'], &[0..1, 3..5]);
        let Split::Part {
            processed,
            rest,
            index,
        } = split
        else {
            panic!("expected a split")
        };
        assert_eq!(processed, vec!['a', 'd', 'e']);
        assert_eq!(rest, vec!['b', 'c', 'f']);
        assert_eq!(index[0], 0);
        assert_eq!(index[3], 1);
        assert_eq!(index[4], 2);
    }

    #[test]
    fn the_budget_is_spent_once_the_limit_is_reached() {
        let b = ActionBudget {
            limit: 10,
            used: AtomicUsize::new(0),
        };
        assert!(!b.spend(4));
        assert!(!b.spent());
        assert!(b.spend(6), "reaching the limit spends it");
        assert!(b.spent());
    }
}
