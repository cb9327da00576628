//! `pillowtop replay` and `pillowtop plugin check --against-feed`: a plugin
//! version run over a range of a pillow's feed (embedded or Kafka),
//! read-only: no checkpoint is saved, no pillow error recorded, nothing
//! written to a sink, no consumer offset committed.
//!
//! Every change of the range is run (no dedupe by document), in feed order
//! per partition; a pillow with a `document_source` reads the documents as
//! the pillow does, and lookups are answered by the host config's
//! resources. With a candidate and `diff`, the pillow's version of the same
//! plugin runs beside it and the two are compared as a shadow run compares
//! them ([`crate::shadow`]).

use crate::change::{self, Change};
use crate::config::{HostConfig, PillowConfig};
use crate::feed::{Feed, FeedError, TopicPartition};
use crate::manifest::Manifest;
use crate::resource::Resources;
use crate::shadow::compare::{CallResult, result_json};
use crate::shadow::{Difference, LaneShadow, Tally};
use crate::source::{DocumentSource, attach, needs_document};
use crate::store::Store;
use crate::wasm::{Processor, Runtime, RuntimeOptions};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Which changes to run.
#[derive(Debug, Clone, Default)]
pub struct Range {
    /// Only this partition (one of the pillow's).
    pub partition: Option<TopicPartition>,
    /// First offset (default: the first the feed holds).
    pub from: Option<u64>,
    /// Stop before this offset (default: the end when the replay starts).
    pub to: Option<u64>,
    /// Only the last this many changes of each partition (before `to`).
    pub last: Option<u64>,
}

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    /// The pillow whose feed (topics, document source) and plugins are used.
    pub pillow: String,
    /// The changes.
    pub range: Range,
    /// Run this manifest's plugin (one of the pillow's, by name) instead
    /// of all the pillow's processors.
    pub candidate: Option<PathBuf>,
    /// Compare the candidate with the pillow's version of the same plugin
    /// and report only the differences.
    pub diff: bool,
}

/// One thing a replay found, in feed order per partition.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Replayed {
    /// A processor's result on a change.
    Change {
        /// Document id.
        doc_id: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Offset.
        offset: u64,
        /// Processor (plugin name).
        processor: String,
        /// Its version.
        version: String,
        /// The actions (as fixtures write them) or `{"error": ...}`.
        result: serde_json::Value,
    },
    /// With `diff`: a change on which the versions differ.
    Difference {
        /// Processor (plugin name).
        processor: String,
        /// The pillow's version.
        live_version: String,
        /// The candidate.
        candidate_version: String,
        /// The change and both results.
        #[serde(flatten)]
        difference: Difference,
    },
    /// A message that does not decode, or a change whose document could
    /// not be read.
    Skipped {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Offset.
        offset: u64,
        /// Why.
        reason: String,
    },
}

/// What a replay covered.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplaySummary {
    /// Per partition: the offsets run, `[from, to)`.
    pub ranges: Vec<(String, u64, u64)>,
    /// Changes run.
    pub changes: u64,
    /// Messages skipped (undecodable, document unavailable).
    pub skipped: u64,
    /// With `diff`: the counts.
    pub tally: Option<Tally>,
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The request does not fit the config or the feed.
    #[error("{0}")]
    Request(String),
    /// The feed failed.
    #[error(transparent)]
    Feed(#[from] FeedError),
    /// The store (for lookups) failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A plugin could not be loaded.
    #[error("{0}")]
    Plugin(String),
    /// The document source failed.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
}

/// Changes read and run per batch.
const BATCH: usize = 500;
/// Polls in a row that may return nothing before the range is read.
const EMPTY_POLLS: u32 = 100;

/// The processors a replay runs: `(live, candidate)`, where `candidate`
/// is set with `diff`.
struct Runners {
    run: Vec<Processor>,
    candidate: Option<Processor>,
}

/// Run `request` and hand each finding to `out`, in order.
///
/// # Errors
///
/// See [`ReplayError`].
pub async fn replay(
    config: &HostConfig,
    request: &ReplayRequest,
    mut out: impl FnMut(Replayed),
) -> Result<ReplaySummary, ReplayError> {
    let Some(pillow) = config.pillow(&request.pillow) else {
        let names: Vec<&str> = config.pillows.iter().map(|p| p.name.as_str()).collect();
        return Err(ReplayError::Request(format!(
            "no pillow named {:?} in {}; pillows: {}",
            request.pillow,
            config.path.display(),
            names.join(", ")
        )));
    };
    if request.diff && request.candidate.is_none() {
        return Err(ReplayError::Request(
            "--diff compares a candidate with the pillow's version: give it with --plugin MANIFEST"
                .into(),
        ));
    }
    let feed = Feed::open(&config.feed).await?;
    let ranges = ranges(&feed, pillow, &request.range).await?;
    let store = Store::connect(&config.store).await?;
    let lookups = Arc::new(
        Resources::open(
            &config.lookups,
            store.db(),
            tokio::runtime::Handle::current(),
        )
        .map_err(|e| ReplayError::Request(format!("{}: {e}", config.path.display())))?,
    );
    let runtime = Arc::new(
        Runtime::new(RuntimeOptions {
            lookups,
            ..RuntimeOptions::from_config(&config.runtime)
        })
        .map_err(|e| ReplayError::Plugin(format!("{e:#}")))?,
    );
    let mut runners = Some(load(&runtime, pillow, request).await?);
    let source = pillow
        .document_source
        .as_ref()
        .map(DocumentSource::open)
        .transpose()?;

    let mut summary = ReplaySummary {
        ranges: ranges
            .iter()
            .map(|(tp, from, to)| (tp.to_string(), *from, *to))
            .collect(),
        tally: request.diff.then(Tally::default),
        ..ReplaySummary::default()
    };
    let ends: HashMap<TopicPartition, u64> =
        ranges.iter().map(|(tp, _, to)| (tp.clone(), *to)).collect();
    let mut next: HashMap<TopicPartition, u64> = ranges
        .iter()
        .map(|(tp, from, _)| (tp.clone(), *from))
        .collect();
    if ranges.is_empty() {
        return Ok(summary);
    }
    let mut reader = feed.reader(
        ranges
            .iter()
            .map(|(tp, from, _)| (tp.clone(), *from))
            .collect(),
    )?;
    let mut empty = 0;
    while next.iter().any(|(tp, n)| *n < ends[tp]) {
        let messages = reader.poll(BATCH, Duration::from_millis(200)).await?;
        if messages.is_empty() {
            empty += 1;
            if empty >= EMPTY_POLLS {
                let behind: Vec<String> = next
                    .iter()
                    .filter(|(tp, n)| **n < ends[*tp])
                    .map(|(tp, n)| format!("{tp} at {n} of {}", ends[tp]))
                    .collect();
                return Err(ReplayError::Request(format!(
                    "the feed stopped returning messages before the end of the range: {}",
                    behind.join(", ")
                )));
            }
            continue;
        }
        empty = 0;
        let mut changes = Vec::new();
        for m in messages {
            let Some(pos) = next.get_mut(&m.tp) else {
                continue;
            };
            if m.offset < *pos || m.offset >= ends[&m.tp] {
                continue;
            }
            *pos = m.offset + 1;
            match change::decode(m) {
                Ok(c) => changes.push(c),
                Err(undecodable) => {
                    let change::Undecodable { message: m, error } = *undecodable;
                    summary.skipped += 1;
                    out(skipped(
                        &m.tp,
                        m.offset,
                        format!("does not decode: {error}"),
                    ));
                }
            }
        }
        if let Some(source) = &source {
            let ids: Vec<&str> = changes
                .iter()
                .filter(|c| needs_document(c))
                .map(|c| c.id.as_str())
                .collect();
            let documents = source.fetch(&ids).await?;
            changes.retain_mut(|c| match attach(c, &documents) {
                None => true,
                Some(why) => {
                    summary.skipped += 1;
                    let tp = TopicPartition::new(&c.topic, c.partition);
                    out(skipped(&tp, c.offset, why.describe(&c.id).1));
                    false
                }
            });
        }
        summary.changes += changes.len() as u64;
        let taken = runners
            .take()
            .expect("the runners are home between batches");
        let (back, found) = tokio::task::spawn_blocking(move || run_batch(taken, &changes))
            .await
            .map_err(|e| ReplayError::Plugin(format!("a replay batch failed: {e}")))?;
        runners = Some(back);
        for (finding, tally) in found {
            if let (Some(total), Some(t)) = (summary.tally.as_mut(), tally) {
                total.add(&t);
            }
            if let Some(f) = finding {
                out(f);
            }
        }
    }
    Ok(summary)
}

fn skipped(tp: &TopicPartition, offset: u64, reason: String) -> Replayed {
    Replayed::Skipped {
        topic: tp.topic.to_string(),
        partition: tp.partition,
        offset,
        reason,
    }
}

/// The `[from, to)` offsets of each partition the range covers.
async fn ranges(
    feed: &Feed,
    pillow: &PillowConfig,
    range: &Range,
) -> Result<Vec<(TopicPartition, u64, u64)>, ReplayError> {
    let mut pairs = feed.partitions(&pillow.topics).await?;
    if let Some(only) = &range.partition {
        if !pairs.contains(only) {
            let names: Vec<String> = pairs.iter().map(ToString::to_string).collect();
            return Err(ReplayError::Request(format!(
                "pillow {} does not read {only}; its partitions: {}",
                pillow.name,
                names.join(", ")
            )));
        }
        pairs = vec![only.clone()];
    }
    let watermarks = feed.watermarks(&pairs).await?;
    let mut out = Vec::new();
    for (tp, w) in pairs.into_iter().zip(watermarks) {
        let to = range.to.map_or(w.high, |t| t.min(w.high));
        let from = match (range.last, range.from) {
            (Some(last), _) => to.saturating_sub(last).max(w.low),
            (None, Some(from)) if from < w.low => {
                return Err(ReplayError::Request(crate::feed::gap_message(
                    &tp, w.low, from,
                )));
            }
            (None, Some(from)) => from,
            (None, None) => w.low,
        };
        if from < to {
            out.push((tp, from, to));
        }
    }
    Ok(out)
}

/// The processors the request runs, loaded on a blocking thread.
async fn load(
    runtime: &Arc<Runtime>,
    pillow: &PillowConfig,
    request: &ReplayRequest,
) -> Result<Runners, ReplayError> {
    let runtime = runtime.clone();
    let manifests = pillow.processors.clone();
    let candidate = request.candidate.clone();
    let diff = request.diff;
    let name = pillow.name.clone();
    tokio::task::spawn_blocking(move || {
        let load = |path: &std::path::Path| {
            let manifest = Manifest::load(path).map_err(|e| ReplayError::Plugin(e.to_string()))?;
            runtime
                .load(&manifest)
                .map(|(p, _)| p)
                .map_err(|e| ReplayError::Plugin(e.to_string()))
        };
        let live: Vec<Processor> = manifests.iter().map(|p| load(p)).collect::<Result<_, _>>()?;
        let Some(path) = candidate else {
            return Ok(Runners {
                run: live,
                candidate: None,
            });
        };
        let candidate = load(&path)?;
        let plugin = &candidate.plugin().manifest().name;
        let Some(own) = live
            .into_iter()
            .find(|p| &p.plugin().manifest().name == plugin)
        else {
            return Err(ReplayError::Request(format!(
                "pillow {name} has no processor named {plugin} (the candidate's name); its processors are in its `processors` list"
            )));
        };
        Ok(if diff {
            Runners {
                run: vec![own],
                candidate: Some(candidate),
            }
        } else {
            Runners {
                run: vec![candidate],
                candidate: None,
            }
        })
    })
    .await
    .map_err(|e| ReplayError::Plugin(format!("loading the plugins failed: {e}")))?
}

/// Run a batch: every processor's result, or with a candidate the
/// differences and each change's counts.
#[allow(clippy::type_complexity)]
fn run_batch(
    mut runners: Runners,
    changes: &[Change],
) -> (Runners, Vec<(Option<Replayed>, Option<Tally>)>) {
    let mut found = Vec::new();
    for change in changes {
        let Some(candidate) = runners.candidate.as_mut() else {
            for p in runners.run.iter_mut().filter(|p| p.wants(change)) {
                let result: CallResult = p.process(change);
                found.push((
                    Some(Replayed::Change {
                        doc_id: change.id.clone(),
                        topic: change.topic.to_string(),
                        partition: change.partition,
                        offset: change.offset,
                        processor: p.plugin().manifest().name.clone(),
                        version: p.plugin().version().to_string(),
                        result: result_json(&result),
                    }),
                    None,
                ));
            }
            continue;
        };
        let live = &mut runners.run[0];
        let (wanted, shadowed) = (live.wants(change), candidate.wants(change));
        if !wanted && !shadowed {
            continue;
        }
        let run = |p: &mut Processor, wants: bool| {
            if wants {
                (p.process(change), p.last_fuel_used())
            } else {
                (Ok(Vec::new()), 0)
            }
        };
        let (ours, our_fuel) = run(live, wanted);
        let (theirs, their_fuel) = run(candidate, shadowed);
        let mut lane = LaneShadow::new(1, &[1]);
        lane.observe(0, change, &ours, our_fuel, &theirs, their_fuel);
        let tally = lane.tallies.pop();
        let difference = lane
            .diffs
            .pop()
            .map(|(_, difference)| Replayed::Difference {
                processor: live.plugin().manifest().name.clone(),
                live_version: live.plugin().version().to_string(),
                candidate_version: candidate.plugin().version().to_string(),
                difference,
            });
        found.push((difference, tally));
    }
    (runners, found)
}
