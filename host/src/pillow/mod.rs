//! A pillow: one set of topics, one ordered list of processors, one
//! checkpoint id; and its run loop.
//!
//! ```text
//! poll feed (up to chunk_size, or max_wait), decode beside the previous chunk
//!   ─> dedupe by document id (last wins)                      chunk
//!   ─> new plugin versions swapped in at the chunk boundary    swap
//!   ─> processors in manifest order (blocking thread; `transform_threads`
//!      lanes of plugin instances split the chunk)              chunk
//!   ─> delivery in the background: Elasticsearch, then one store
//!      transaction with rows, pillow errors and the checkpoint (when due)
//!                                                              sink::delivery
//! ```
//!
//! Where a process starts (assignment, checkpoints, retention gap) is
//! [`startup`]. A sink outage holds the chunk (the sink's delivery retries
//! it) so the checkpoint never passes an unwritten change. A message that
//! does not decode, and a change a processor fails on, become pillow
//! errors in the same transaction; the partition goes on. On shutdown the
//! loop finishes the chunk in hand, saves the checkpoint and returns.
//!
//! A chunk whose actions would hold more than `chunk_memory_mb` is written
//! in pieces: the transform stops once the piece is over the budget, the
//! piece is delivered (without a checkpoint), and the rest of the chunk
//! follows; the checkpoint goes with the last piece. A crash between
//! pieces replays the whole chunk, which writes the same documents and rows
//! again. The only reordering is between documents (a chunk holds one
//! change per document), never between two changes of one document.

mod candidates;
mod chunk;
mod documents;
mod lanes;
mod prefetch;
mod startup;
mod swap;
mod telemetry;

use crate::action::PluginInfo;
use crate::checkpoint::{CheckpointPolicy, CheckpointTracker};
use crate::config::PillowConfig;
use crate::errors::ErrorKind;
use crate::feed::{Feed, FeedError, TopicPartition};
use crate::metrics::Metrics;
use crate::partition::AssignmentError;
use crate::reload::Follower;
use crate::resource::Resources;
use crate::sink::delivery::{Delivered, DeliveryError, FailureLog, OutageRetry};
use crate::sink::elastic::ElasticError;
use crate::sink::{ChunkCommit, Delivery, HoldScope, OutputError, SinkError, Sinks, WritePlan};
use crate::source::{DocumentSource, SourceError};
use crate::store::StoreError;
use crate::wasm::{LoadError, Processor};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Why a pillow stopped with an error. Nothing past the last committed
/// chunk is lost: the checkpoint never passes an uncommitted change.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The feed failed.
    #[error("pillow {pillow}: {source}")]
    Feed {
        /// Pillow.
        pillow: String,
        /// The error.
        source: FeedError,
    },
    /// The store failed.
    #[error("pillow {pillow}: {source}")]
    Store {
        /// Pillow.
        pillow: String,
        /// The error.
        source: StoreError,
    },
    /// A SQL sink failed for a reason other than an outage (a table that
    /// does not match its spec), or was still down at shutdown.
    #[error("pillow {pillow}: {source}")]
    Sql {
        /// Pillow.
        pillow: String,
        /// The error.
        source: SinkError,
    },
    /// The Elasticsearch sink failed for a reason other than an outage
    /// (a mapping conflict, refused credentials).
    #[error("pillow {pillow}: {source}")]
    Elastic {
        /// Pillow.
        pillow: String,
        /// The error.
        source: ElasticError,
    },
    /// The process layout is impossible.
    #[error("pillow {pillow}: {source}")]
    Assignment {
        /// Pillow.
        pillow: String,
        /// The error.
        source: AssignmentError,
    },
    /// A plugin failed to load.
    #[error("pillow {pillow}: {source}")]
    Load {
        /// Pillow.
        pillow: String,
        /// The error.
        source: LoadError,
    },
    /// A manifest failed to load.
    #[error("pillow {pillow}: {source}")]
    Manifest {
        /// Pillow.
        pillow: String,
        /// The error.
        source: crate::manifest::ManifestError,
    },
    /// The document source failed for a reason other than an outage (a
    /// query that cannot work, a bad URL).
    #[error("pillow {pillow}: {source}")]
    Source {
        /// Pillow.
        pillow: String,
        /// The error.
        source: SourceError,
    },
    /// A worker thread panicked (a host bug).
    #[error("pillow {pillow}: processing thread failed: {message}")]
    Worker {
        /// Pillow.
        pillow: String,
        /// The panic.
        message: String,
    },
}

impl RunError {
    fn delivery(pillow: String, e: DeliveryError) -> RunError {
        match e {
            DeliveryError::Elastic(source) => RunError::Elastic { pillow, source },
            DeliveryError::Sql(source) => RunError::Sql { pillow, source },
        }
    }

    fn outputs(pillow: &str, e: OutputError) -> RunError {
        let pillow = pillow.to_owned();
        match e {
            OutputError::Sql(source) => RunError::Sql { pillow, source },
            OutputError::Elastic(source) => RunError::Elastic { pillow, source },
        }
    }
}

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop once every assigned partition reaches the end offset it had at start.
    pub until_caught_up: bool,
    /// This process's number (0-based).
    pub process_num: u32,
    /// Override the config's `num_processes`.
    pub num_processes: Option<u32>,
    /// Draw a progress bar on stderr (hidden when stderr is not a terminal).
    pub progress: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    /// Pillow name.
    pub pillow: String,
    /// Partitions this process read.
    pub partitions: Vec<TopicPartition>,
    /// Messages read from the feed.
    pub messages: u64,
    /// Changes run through processors (after dedupe).
    pub changes: u64,
    /// Changes skipped because a later change of the same document was in the chunk.
    pub deduplicated: u64,
    /// Chunks committed.
    pub chunks: u64,
    /// Pieces beyond the first that chunks were written in because their
    /// actions went over `chunk_memory_mb`.
    pub extra_pieces: u64,
    /// Commits that saved checkpoints (with a chunk, or on their own when
    /// idle or stopping).
    pub checkpoint_saves: u64,
    /// Actions by kind.
    pub actions: BTreeMap<&'static str, u64>,
    /// Pillow errors recorded, by kind.
    pub errors: BTreeMap<ErrorKind, u64>,
    /// Time spent waiting for the feed (reads overlap processing, so this
    /// is the part not hidden behind it).
    pub read_time: Duration,
    /// Time spent decoding messages. Decoding runs in the background with
    /// the read, beside the previous chunk's transform; any part of it not
    /// hidden behind that counts in `read_time` too.
    pub decode_time: Duration,
    /// Time spent in processors (Wasm).
    pub transform_time: Duration,
    /// Time spent waiting for the store (commits overlap the next chunk's
    /// transform, so this is the part not hidden behind it).
    pub load_time: Duration,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// What each processor declared, owned: a borrow of a `Processor` (not
/// `Sync`) held across an await would make the future unsendable.
fn declared(processors: &[Processor]) -> Vec<PluginInfo> {
    processors
        .iter()
        .map(|p| p.plugin().info().clone())
        .collect()
}

/// A configured pillow, ready to run.
pub struct Pillow {
    config: PillowConfig,
    feed: Feed,
    sinks: Sinks,
    processors: Vec<Processor>,
    /// One per processor when hot reload is on.
    followers: Vec<Follower>,
    metrics: Arc<Metrics>,
    /// Where the documents of changes without one are read.
    source: Option<DocumentSource>,
    /// The host's lookup resources, prefetched a chunk at a time.
    lookups: Option<Arc<Resources>>,
}

impl Pillow {
    /// Prepare a pillow: create the tables and indices its processors declared.
    ///
    /// # Errors
    ///
    /// When the store cannot create or match them.
    pub async fn new(
        config: PillowConfig,
        feed: Feed,
        sinks: impl Into<Sinks>,
        processors: Vec<Processor>,
    ) -> Result<Pillow, RunError> {
        let sinks = sinks.into();
        sinks
            .ensure_all(&declared(&processors))
            .await
            .map_err(|e| RunError::outputs(&config.name, e))?;
        let name = config.name.clone();
        Pillow::assemble(config, feed, sinks, processors).map_err(|source| RunError::Source {
            pillow: name,
            source,
        })
    }

    /// [`Pillow::new`] for a process starting up: while a sink is
    /// unreachable (connection refused, 429, 5xx, a PostgreSQL connection
    /// error), log what it waits for and try again with capped, jittered
    /// backoff instead of exiting, so a pillow started before its sinks
    /// comes up by itself. `Ok(None)` when `shutdown` fires first.
    ///
    /// # Errors
    ///
    /// As [`Pillow::new`] for everything but an outage (a mapping conflict,
    /// refused credentials): retrying cannot fix those. An outage is never
    /// given up on: only a reachable sink or `shutdown` ends the wait.
    pub async fn new_when_reachable(
        config: PillowConfig,
        feed: Feed,
        sinks: impl Into<Sinks>,
        processors: Vec<Processor>,
        shutdown: &CancellationToken,
    ) -> Result<Option<Pillow>, RunError> {
        let sinks = sinks.into();
        let infos = declared(&processors);
        let ready = crate::outage::wait_until_reachable(
            &format!("a sink of pillow {}", config.name),
            shutdown,
            || sinks.ensure_all(&infos),
        )
        .await;
        match ready {
            None => Ok(None),
            Some(Err(e)) => Err(RunError::outputs(&config.name, e)),
            Some(Ok(())) => {
                let name = config.name.clone();
                Pillow::assemble(config, feed, sinks, processors)
                    .map(Some)
                    .map_err(|source| RunError::Source {
                        pillow: name,
                        source,
                    })
            }
        }
    }

    fn assemble(
        config: PillowConfig,
        feed: Feed,
        sinks: Sinks,
        processors: Vec<Processor>,
    ) -> Result<Pillow, SourceError> {
        let source = config
            .document_source
            .as_ref()
            .map(DocumentSource::open)
            .transpose()?;
        Ok(Pillow {
            config,
            feed,
            sinks,
            processors,
            followers: Vec::new(),
            metrics: Arc::new(Metrics::new()),
            source,
            lookups: None,
        })
    }

    /// Follow plugin slots for hot reload: one follower per processor, in
    /// order. At each chunk boundary a processor whose slot has a new
    /// version is swapped for it (after the pillow created the tables and
    /// indices the new version declares).
    ///
    /// # Panics
    ///
    /// When the number of followers is not the number of processors (a
    /// caller bug).
    pub fn following(mut self, followers: Vec<Follower>) -> Pillow {
        assert_eq!(
            followers.len(),
            self.processors.len(),
            "one follower per processor"
        );
        self.followers = followers;
        self
    }

    /// Report to this metrics registry.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Pillow {
        self.metrics = metrics;
        self
    }

    /// Prefetch each chunk's lookups (its plugins' `[prefetch]`) from
    /// these resources, the ones the plugins' calls read.
    pub fn with_lookups(mut self, lookups: Arc<Resources>) -> Pillow {
        self.lookups = Some(lookups);
        self
    }

    /// Run until `shutdown` fires (or, with `until_caught_up`, until caught up).
    ///
    /// # Errors
    ///
    /// Feed or store failures stop the pillow; everything committed before stays.
    pub async fn run(
        self,
        options: RunOptions,
        shutdown: CancellationToken,
    ) -> Result<RunSummary, RunError> {
        // Destructured so the future holds no borrow of `Processor` (not
        // `Sync`) across awaits: processors only ever move to and from the
        // blocking thread that runs them.
        let Pillow {
            config,
            feed,
            sinks,
            processors,
            mut followers,
            metrics,
            source,
            lookups,
        } = self;
        let started = Instant::now();
        let name = config.name.clone();
        let store = sinks.store.clone();
        // One lane of processors per transform thread; lane 0 is the one
        // versions, metrics and pillow errors are read from (all lanes run
        // the same plugin versions).
        let mut lanes = vec![lanes::Lane::new(processors)];
        for _ in 1..config.transform_threads {
            let lane = lanes[0].like();
            lanes.push(lane);
        }
        let mut candidates = candidates::Candidates::new(lanes[0].live.len());
        let feed_err = |source| RunError::Feed {
            pillow: name.clone(),
            source,
        };
        let store_err = |source| RunError::Store {
            pillow: name.clone(),
            source,
        };
        let Some(start) = startup::start(&config, &feed, &store, &options, &shutdown).await? else {
            return Ok(RunSummary {
                pillow: name.clone(),
                ..Default::default()
            });
        };
        let startup::Start {
            assigned,
            positions,
            targets,
        } = start;
        let mut next: HashMap<TopicPartition, u64> = positions.iter().cloned().collect();
        telemetry::positions(&metrics, &name, &next, &HashMap::new());
        let mut committed = next.clone();
        let reader = feed.reader(positions).map_err(feed_err)?;
        let chunk_size = config.chunk_size;
        let policy = CheckpointPolicy {
            every: config.checkpoint_every,
            max_delay: Duration::from_secs(config.checkpoint_max_delay_seconds),
        };
        let mut tracker = CheckpointTracker::new(policy, Instant::now());
        let max_wait = Duration::from_millis(config.max_wait_ms);
        let mut summary = RunSummary {
            pillow: name.clone(),
            partitions: assigned.clone(),
            ..Default::default()
        };
        let versions: Vec<String> = lanes[0]
            .live
            .iter()
            .map(|p| format!("{}@{}", p.plugin().manifest().name, p.plugin().version()))
            .collect();
        tracing::info!(pillow = %name, partitions = assigned.len(), processors = ?versions, "pillow started");
        let events_of = swap::Events {
            pillow: name.clone(),
            process_num: options.process_num,
        };
        // Built before awaiting: the future must not hold a borrow of a
        // `Processor` (not `Sync`) across an await.
        let started_versions = events_of.started(&lanes[0].live, &next);
        for event in &started_versions {
            store.record_plugin_event(event).await.map_err(store_err)?;
        }

        let backlog: u64 = targets
            .iter()
            .map(|(tp, t)| t.saturating_sub(next[tp]))
            .sum();
        let bar = progress_bar(options.progress, options.until_caught_up, backlog, &name);

        let outage = OutageRetry::new(
            store.clone(),
            name.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        let failure_log = Arc::new(FailureLog::default());
        let delivery = Arc::new(Delivery::new(
            sinks.clone(),
            outage,
            config.checkpoint_id().to_owned(),
            failure_log.clone(),
        ));
        let chunk_budget = config.chunk_memory_bytes();
        let mut waiting: Vec<Option<swap::Waiting>> = followers.iter().map(|_| None).collect();
        let mut own_tables = tables_of(&lanes[0].live);
        let mut idle_hold_check = Instant::now();
        let mut in_flight: Option<InFlight> = None;
        let mut reader = Some(reader);
        let mut polling: Option<chunk::Polling> = None;
        let mut poll_started_ms = crate::time::now_ms();
        loop {
            if options.until_caught_up && targets.iter().all(|(tp, t)| next[tp] >= *t) {
                break;
            }
            // The next chunk is read while this one is transformed and
            // committed. Reads stay in order: one poll at a time, each
            // continuing where the last one stopped. On shutdown a chunk
            // read but not yet processed is dropped; its offsets were never
            // checkpointed, so the next run reads it again.
            let poll = match polling.take() {
                Some(poll) => poll,
                None => {
                    poll_started_ms = crate::time::now_ms();
                    chunk::spawn_poll(
                        reader.take().expect("the reader is home when no poll runs"),
                        chunk_size,
                        max_wait,
                    )
                }
            };
            let t_read = Instant::now();
            let (back, polled) = tokio::select! {
                _ = shutdown.cancelled() => break,
                joined = poll => joined.map_err(|e| RunError::Worker { pillow: name.clone(), message: e.to_string() })?,
            };
            let polled = polled.map_err(feed_err)?;
            // Everything published before this poll started was read by
            // it or an earlier one.
            let read_up_to_ms = poll_started_ms;
            polling = Some(chunk::spawn_poll(back, chunk_size, max_wait));
            poll_started_ms = crate::time::now_ms();
            // A chunk boundary: the last chunk is fully processed, the next
            // not started. New plugin versions take over here, for every
            // partition at once.
            let events = swap::swap_new_versions(
                &mut followers,
                &mut waiting,
                &mut lanes,
                &sinks,
                &events_of,
                &next,
            )
            .await;
            if !events.is_empty() {
                own_tables = tables_of(&lanes[0].live);
            }
            for event in &events {
                store.record_plugin_event(event).await.map_err(store_err)?;
            }
            if !polled.messages.is_empty() {
                summary.read_time += t_read.elapsed();
            }
            if polled.messages.is_empty() {
                finish_commit(&mut in_flight, &mut committed, &mut tracker, &mut summary).await?;
                telemetry::caught_up(&metrics, &name, &next, read_up_to_ms);
                if !own_tables.is_empty() && idle_hold_check.elapsed() >= IDLE_HOLD_CHECK {
                    // Idle, everything delivered: a table a rebuild holds
                    // may be taken back where the pillow stands.
                    idle_hold_check = Instant::now();
                    let commit = ChunkCommit {
                        scope: HoldScope {
                            tables: own_tables.clone(),
                            starts: positions_of(&next),
                            may_release: true,
                        },
                        ..ChunkCommit::default()
                    };
                    delivery
                        .deliver(commit, Default::default())
                        .await
                        .map_err(|e| RunError::delivery(name.clone(), e))?;
                }
                if tracker.due(Instant::now()) {
                    summary.checkpoint_saves +=
                        save_checkpoints(&delivery, &next, &mut committed, &mut tracker)
                            .await
                            .map_err(store_err)?;
                }
                continue;
            }
            let n = polled.messages.len() as u64;
            summary.messages += n;
            summary.decode_time += polled.decode_time;
            telemetry::stage(
                &metrics,
                &name,
                telemetry::Stage::Decode,
                polled.decode_time,
            );
            let read = polled.read;
            // Where to stop if a source or lookup resource is down and
            // the process stops before this chunk is processed.
            let before_chunk = (source.is_some() || lookups.is_some()).then(|| next.clone());
            // Where the chunk starts: a table a rebuild holds may be taken
            // back here.
            let mut starts = positions_of(&next);
            let (mut changes, mut decode_errors, skipped) =
                chunk::decode_chunk(&name, polled.messages, &read, &mut next);
            if let Some(source) = &source {
                let filled = documents::fill(&name, source, &mut changes, &shutdown)
                    .await
                    .map_err(|source| RunError::Source {
                        pillow: name.clone(),
                        source,
                    })?;
                match filled {
                    Some(mut unavailable) => decode_errors.append(&mut unavailable),
                    None => {
                        // Stopped while the source was down: this chunk
                        // was not processed, and the stop must not
                        // checkpoint past it.
                        next = before_chunk.expect("taken with a source");
                        break;
                    }
                }
            }
            // Answers held for this chunk, let go once it has run.
            let mut held = None;
            if let Some(resources) = &lookups {
                let keys = prefetch::keys(&lanes[0].live, &changes);
                if prefetch::holds(resources, &keys) {
                    // Read as of after the previous chunk's writes, which
                    // a table the pillow writes may hold.
                    finish_commit(&mut in_flight, &mut committed, &mut tracker, &mut summary)
                        .await?;
                }
                if !keys.is_empty() {
                    match prefetch::warm(&name, resources, keys, &shutdown).await {
                        Some(h) => held = Some(h),
                        None => {
                            // Stopped while a lookup resource was down: as above.
                            next = before_chunk.expect("taken with lookups");
                            break;
                        }
                    }
                }
            }
            summary.deduplicated += skipped;
            summary.changes += changes.len() as u64;

            // The chunk, in pieces when its actions go over chunk_memory_mb
            // (one piece otherwise). Every piece is processed and handed to
            // delivery before the loop looks at shutdown again: `next`
            // already covers the whole chunk.
            let mut pending = changes;
            loop {
                let t1 = Instant::now();
                let pillow = name.clone();
                let room = candidates.room(&lanes[0], &followers);
                let (back, outcome, rest) = tokio::task::spawn_blocking(move || {
                    chunk::run_chunk(pillow, lanes, pending, chunk_budget, &room)
                })
                .await
                .map_err(|e| RunError::Worker {
                    pillow: name.clone(),
                    message: e.to_string(),
                })?;
                lanes = back;
                summary.transform_time += t1.elapsed();
                telemetry::stage(&metrics, &name, telemetry::Stage::Transform, t1.elapsed());
                let last = rest.is_empty();

                let t2 = Instant::now();
                let mut errors = outcome.errors;
                errors.append(&mut decode_errors);
                for a in &outcome.actions {
                    *summary.actions.entry(a.action.kind()).or_default() += 1;
                }
                chunk::report(&metrics, &name, &lanes[0].live, &outcome.stats);
                let shadow = if lanes[0].shadowing() {
                    candidates.records(
                        &name,
                        options.process_num,
                        &lanes[0],
                        &followers,
                        outcome.shadow,
                        &metrics,
                    )
                } else {
                    Vec::new()
                };
                for e in &errors {
                    *summary.errors.entry(e.kind).or_default() += 1;
                    failure_log.log(e);
                }
                // The previous commit first: a checkpoint it saved covers
                // changes up to that chunk, not this one, so this chunk
                // counts towards the next save only after it.
                finish_commit(&mut in_flight, &mut committed, &mut tracker, &mut summary).await?;
                let checkpoints = if last {
                    tracker.record(n);
                    let caught_up =
                        options.until_caught_up && targets.iter().all(|(tp, t)| next[tp] >= *t);
                    if tracker.due(Instant::now()) || caught_up {
                        changed(&next, &committed)
                    } else {
                        vec![]
                    }
                } else {
                    summary.extra_pieces += 1;
                    tracing::debug!(pillow = %name, left = rest.len(), budget_mb = config.chunk_memory_mb, "chunk over chunk_memory_mb: writing this piece before the rest");
                    vec![]
                };
                let commit = ChunkCommit {
                    plan: WritePlan::build(outcome.actions),
                    errors,
                    passed: outcome.passed,
                    retries: Vec::new(),
                    shadow,
                    checkpoints,
                    scope: HoldScope {
                        tables: own_tables.clone(),
                        // The first piece only: the later ones follow
                        // its decision.
                        may_release: !starts.is_empty(),
                        starts: std::mem::take(&mut starts),
                    },
                };
                // Commit in the background while the next chunk (or piece)
                // is read and transformed; commits stay strictly in order
                // (this one starts only after the previous one finished),
                // so a checkpoint never passes an uncommitted chunk.
                let delivery = delivery.clone();
                let sources = outcome.sources;
                let pillow = name.clone();
                let metrics = metrics.clone();
                in_flight = Some(tokio::spawn(async move {
                    let started = Instant::now();
                    let delivered = delivery
                        .deliver(commit, sources)
                        .await
                        .map_err(|e| RunError::delivery(pillow.clone(), e))?;
                    telemetry::stage(&metrics, &pillow, telemetry::Stage::Load, started.elapsed());
                    Ok(delivered)
                }));
                summary.load_time += t2.elapsed();
                if last {
                    break;
                }
                pending = rest;
            }
            drop(held);
            telemetry::positions(&metrics, &name, &next, &read);
            summary.chunks += 1;
            bar.inc(n);
        }
        // Graceful stop: everything processed is committed; save where we are.
        finish_commit(&mut in_flight, &mut committed, &mut tracker, &mut summary).await?;
        summary.checkpoint_saves +=
            save_checkpoints(&delivery, &next, &mut committed, &mut tracker)
                .await
                .map_err(store_err)?;
        bar.finish_and_clear();
        summary.elapsed = started.elapsed();
        tracing::info!(pillow = %name, messages = summary.messages, chunks = summary.chunks, "pillow stopped; checkpoints saved");
        Ok(summary)
    }
}

/// How often an idle pillow looks whether it can take back a table a
/// rebuild holds (one small query).
const IDLE_HOLD_CHECK: Duration = Duration::from_secs(2);

/// The tables a pillow's processors write.
fn tables_of(processors: &[Processor]) -> Arc<[String]> {
    processors
        .iter()
        .flat_map(|p| p.plugin().info().tables.iter().map(|t| t.name.clone()))
        .collect()
}

/// Positions, sorted.
fn positions_of(next: &HashMap<TopicPartition, u64>) -> Vec<(TopicPartition, u64)> {
    let mut out: Vec<_> = next.iter().map(|(tp, n)| (tp.clone(), *n)).collect();
    out.sort();
    out
}

/// A chunk delivery running in the background.
type InFlight = tokio::task::JoinHandle<Result<Delivered, RunError>>;

/// Wait for the delivery in flight, if any, and note the checkpoints it
/// saved and the writes a sink refused.
async fn finish_commit(
    in_flight: &mut Option<InFlight>,
    committed: &mut HashMap<TopicPartition, u64>,
    tracker: &mut CheckpointTracker,
    summary: &mut RunSummary,
) -> Result<(), RunError> {
    let Some(handle) = in_flight.take() else {
        return Ok(());
    };
    let delivered = match handle.await {
        Ok(result) => result?,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    if !delivered.refused.is_empty() {
        *summary.errors.entry(ErrorKind::Rejected).or_default() += delivered.refused.len() as u64;
    }
    if !delivered.checkpoints.is_empty() {
        committed.extend(delivered.checkpoints);
        tracker.saved(Instant::now());
        summary.checkpoint_saves += 1;
    }
    Ok(())
}

/// Save the positions that moved since the last save (idle, or stopping).
async fn save_checkpoints(
    delivery: &Delivery,
    next: &HashMap<TopicPartition, u64>,
    committed: &mut HashMap<TopicPartition, u64>,
    tracker: &mut CheckpointTracker,
) -> Result<u64, StoreError> {
    let checkpoints = changed(next, committed);
    tracker.saved(Instant::now());
    if checkpoints.is_empty() {
        return Ok(0);
    }
    delivery.save_checkpoints(&checkpoints).await?;
    committed.extend(checkpoints);
    Ok(1)
}

/// Partitions whose position moved past the saved checkpoint.
fn changed(
    next: &HashMap<TopicPartition, u64>,
    committed: &HashMap<TopicPartition, u64>,
) -> Vec<(TopicPartition, u64)> {
    let mut out: Vec<_> = next
        .iter()
        .filter(|(tp, n)| committed.get(*tp) != Some(*n))
        .map(|(tp, n)| (tp.clone(), *n))
        .collect();
    out.sort();
    out
}

fn progress_bar(enabled: bool, bounded: bool, total: u64, name: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = if bounded {
        ProgressBar::new(total)
    } else {
        ProgressBar::no_length()
    };
    let template = if bounded {
        "{prefix} [{bar:40}] {pos}/{len} changes ({per_sec}, eta {eta})"
    } else {
        "{prefix} {spinner} {pos} changes ({per_sec})"
    };
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(name.to_owned());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_positions_that_moved_are_saved_in_order() {
        let tp = |p| TopicPartition::new("t", p);
        let next = HashMap::from([(tp(2), 9), (tp(0), 5), (tp(1), 3)]);
        let committed = HashMap::from([(tp(0), 5), (tp(1), 1)]);
        assert_eq!(changed(&next, &committed), vec![(tp(1), 3), (tp(2), 9)]);
        assert_eq!(changed(&committed, &committed), vec![]);
    }
}
