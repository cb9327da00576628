//! The pillow run loop.
//!
//! ```text
//! poll feed (up to chunk_size, or max_wait) ─> decode ─> dedupe by document id (last wins)
//!   ─> processors in manifest order (blocking thread; `transform_threads`
//!      lanes of plugin instances split the chunk) ─> compact writes
//!   ─> Elasticsearch bulk writes (when configured; refused documents become pillow errors)
//!   ─> one store transaction: SQL sink writes + pillow errors + checkpoint (when due)
//! ```
//!
//! A sink outage (connection refused, timeout, 429, 5xx) holds the chunk:
//! the same writes are retried with capped, jittered backoff until the sink
//! is back, so the checkpoint never passes an unwritten change and no
//! pillow error is recorded for an outage.
//!
//! A message that does not decode, and a change a processor fails on,
//! become pillow errors in the same transaction; the partition goes on.
//! On shutdown the loop finishes the chunk in hand, saves the checkpoint
//! and returns.
//!
//! A chunk whose actions would hold more than `chunk_memory_mb` is written
//! in pieces: the transform stops once the piece is over the budget, the
//! piece is delivered (without a checkpoint), and the rest of the chunk
//! follows; the checkpoint goes with the last piece. A crash between
//! pieces replays the whole chunk, which writes the same documents and rows
//! again. The only reordering is between documents (a chunk holds one
//! change per document), never between two changes of one document.

use crate::action::PluginInfo;
use crate::change::{self, Change};
use crate::checkpoint::{CheckpointPolicy, CheckpointTracker};
use crate::config::PillowConfig;
use crate::errors::{Backoff, ErrorKind, cut_message};
use crate::feed::{Feed, FeedError, FeedReader, Message, TopicPartition};
use crate::metrics::Metrics;
use crate::partition::{self, AssignmentError};
use crate::reload::{Follower, SlotChange};
use crate::sink::elastic::{ElasticError, ElasticSink};
use crate::sink::{Origin, Outage, OutageBackoff, VersionedAction, WritePlan};
use crate::store::{
    ChunkCommit, PillowErrorRecord, PluginEvent, PluginEventKind, Store, StoreError, Waiting,
};
use crate::wasm::sandbox::RateLimiter;
use crate::wasm::{Failure, LoadError, Processor};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Why a pillow stopped with an error. Nothing past the last committed
/// chunk is lost: the checkpoint never passes an uncommitted change.
#[derive(Debug, thiserror::Error)]
pub enum PillowError {
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
    /// A worker thread panicked (a host bug).
    #[error("pillow {pillow}: processing thread failed: {message}")]
    Worker {
        /// Pillow.
        pillow: String,
        /// The panic.
        message: String,
    },
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

/// Where a pillow's actions go: rows, pillow errors and checkpoints to the
/// store; documents to Elasticsearch when configured, else to the store's
/// `doc_<index>` tables.
#[derive(Clone)]
pub struct Sinks {
    /// The store.
    pub store: Store,
    /// The Elasticsearch sink, if documents go there.
    pub elastic: Option<ElasticSink>,
}

impl From<Store> for Sinks {
    fn from(store: Store) -> Sinks {
        Sinks {
            store,
            elastic: None,
        }
    }
}

/// Why a plugin's declared outputs could not be prepared.
#[derive(Debug, thiserror::Error)]
enum OutputError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Elastic(#[from] ElasticError),
}

impl Outage for OutputError {
    fn is_outage(&self) -> bool {
        match self {
            OutputError::Store(e) => e.is_outage(),
            OutputError::Elastic(e) => e.is_outage(),
        }
    }
}

impl OutputError {
    fn into_pillow(self, pillow: &str) -> PillowError {
        let pillow = pillow.to_owned();
        match self {
            OutputError::Store(source) => PillowError::Store { pillow, source },
            OutputError::Elastic(source) => PillowError::Elastic { pillow, source },
        }
    }
}

/// What each processor declared, owned: a borrow of a `Processor` (not
/// `Sync`) held across an await would make the future unsendable.
fn declared(processors: &[Processor]) -> Vec<PluginInfo> {
    processors
        .iter()
        .map(|p| p.plugin().info().clone())
        .collect()
}

impl Sinks {
    /// [`Sinks::ensure_outputs`] for every processor's declaration, in order.
    async fn ensure_all(&self, infos: &[PluginInfo]) -> Result<(), OutputError> {
        for info in infos {
            self.ensure_outputs(info).await?;
        }
        Ok(())
    }

    async fn ensure_outputs(&self, info: &PluginInfo) -> Result<(), OutputError> {
        match &self.elastic {
            Some(es) => {
                for index in &info.indices {
                    es.ensure_index(index).await?;
                }
                let tables = PluginInfo {
                    tables: info.tables.clone(),
                    indices: Vec::new(),
                };
                self.store.ensure_outputs(&tables).await?;
            }
            None => self.store.ensure_outputs(info).await?,
        }
        Ok(())
    }
}

/// A configured pillow, ready to run.
pub struct Pillow {
    config: PillowConfig,
    feed: Feed,
    store: Store,
    elastic: Option<ElasticSink>,
    processors: Vec<Processor>,
    /// One per processor when hot reload is on.
    followers: Vec<Follower>,
    metrics: Arc<Metrics>,
}

/// The result of running one chunk through the processors.
#[derive(Default)]
struct ChunkOutcome {
    actions: Vec<VersionedAction>,
    errors: Vec<PillowErrorRecord>,
    /// Per processor, in order.
    stats: Vec<ProcessorStats>,
    /// The chunk's changes, for errors a sink finds later.
    sources: ChunkSources,
}

/// A processor as pillow errors name it.
#[derive(Clone)]
struct ProcessorRef {
    name: String,
    version: String,
    max_attempts: u32,
}

impl ProcessorRef {
    fn of(p: &Processor) -> ProcessorRef {
        let plugin = p.plugin();
        ProcessorRef {
            name: plugin.manifest().name.clone(),
            version: plugin.version().to_string(),
            max_attempts: plugin.manifest().retry.max_attempts,
        }
    }
}

/// A chunk's changes (with their raw feed values) and processors, which
/// an action's [`Origin`] points into.
#[derive(Default)]
struct ChunkSources {
    pillow: String,
    changes: Vec<(Change, Vec<u8>)>,
    processors: Vec<ProcessorRef>,
}

impl ChunkSources {
    /// A pillow error for the change and processor at `origin`.
    fn record(&self, origin: Origin, kind: ErrorKind, message: String) -> PillowErrorRecord {
        let (change, raw) = &self.changes[origin.change as usize];
        let processor = &self.processors[usize::from(origin.processor)];
        PillowErrorRecord {
            doc_id: change.id.clone(),
            pillow: self.pillow.clone(),
            processor: processor.name.clone(),
            plugin_version: Some(processor.version.clone()),
            kind,
            message: cut_message(message),
            tp: TopicPartition {
                topic: change.topic.clone(),
                partition: change.partition,
            },
            offset: change.offset,
            domain: change.domain.clone(),
            document_type: change.document_type.clone(),
            change: raw.clone(),
            at_ms: crate::time::now_ms(),
            backoff: Backoff {
                max_attempts: processor.max_attempts,
                ..Backoff::default()
            },
        }
    }
}

/// What one processor did in one chunk, for metrics.
#[derive(Default, Clone)]
struct ProcessorStats {
    ok: u64,
    failed: BTreeMap<ErrorKind, u64>,
    fuel: u64,
}

impl ProcessorStats {
    /// Add another lane's counts for the same processor.
    fn add(&mut self, other: ProcessorStats) {
        self.ok += other.ok;
        self.fuel += other.fuel;
        for (kind, n) in other.failed {
            *self.failed.entry(kind).or_default() += n;
        }
    }
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
    ) -> Result<Pillow, PillowError> {
        let sinks = sinks.into();
        sinks
            .ensure_all(&declared(&processors))
            .await
            .map_err(|e| e.into_pillow(&config.name))?;
        Ok(Pillow::assemble(config, feed, sinks, processors))
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
    ) -> Result<Option<Pillow>, PillowError> {
        let sinks = sinks.into();
        let infos = declared(&processors);
        let ready = crate::sink::wait_until_reachable(
            &format!("a sink of pillow {}", config.name),
            shutdown,
            || sinks.ensure_all(&infos),
        )
        .await;
        match ready {
            None => Ok(None),
            Some(Err(e)) => Err(e.into_pillow(&config.name)),
            Some(Ok(())) => Ok(Some(Pillow::assemble(config, feed, sinks, processors))),
        }
    }

    fn assemble(
        config: PillowConfig,
        feed: Feed,
        sinks: Sinks,
        processors: Vec<Processor>,
    ) -> Pillow {
        Pillow {
            config,
            feed,
            store: sinks.store,
            elastic: sinks.elastic,
            processors,
            followers: Vec::new(),
            metrics: Arc::new(Metrics::new()),
        }
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

    /// Run until `shutdown` fires (or, with `until_caught_up`, until caught up).
    ///
    /// # Errors
    ///
    /// Feed or store failures stop the pillow; everything committed before stays.
    pub async fn run(
        self,
        options: RunOptions,
        shutdown: CancellationToken,
    ) -> Result<RunSummary, PillowError> {
        // Destructured so the future holds no borrow of `Processor` (not
        // `Sync`) across awaits: processors only ever move to and from the
        // blocking thread that runs them.
        let Pillow {
            config,
            feed,
            store,
            elastic,
            processors,
            mut followers,
            metrics,
        } = self;
        let started = Instant::now();
        let name = config.name.clone();
        // One lane of processors per transform thread; lane 0 is the one
        // versions, metrics and pillow errors are read from (all lanes run
        // the same plugin versions).
        let mut lanes: Vec<Vec<Processor>> = vec![processors];
        for _ in 1..config.transform_threads {
            lanes.push(
                lanes[0]
                    .iter()
                    .map(|p| Processor::new(p.plugin().clone()))
                    .collect(),
            );
        }
        let feed_err = |source| PillowError::Feed {
            pillow: name.clone(),
            source,
        };
        let store_err = |source| PillowError::Store {
            pillow: name.clone(),
            source,
        };
        let checkpoint_id = config.checkpoint_id().to_owned();
        // A broker down at startup is waited for, as a sink is.
        let Some(pairs) = crate::sink::wait_until_reachable(
            &format!("the feed of pillow {name}"),
            &shutdown,
            || feed.partitions(&config.topics),
        )
        .await
        else {
            return Ok(RunSummary {
                pillow: name.clone(),
                ..Default::default()
            });
        };
        let pairs = pairs.map_err(feed_err)?;
        let num_processes = options.num_processes.unwrap_or(config.num_processes);
        let assigned = partition::assign(
            pairs,
            num_processes,
            options.process_num,
            config.dedicated_migration_process,
        )
        .map_err(|source| PillowError::Assignment {
            pillow: name.clone(),
            source,
        })?;
        let saved: HashMap<TopicPartition, u64> = store
            .checkpoints(&checkpoint_id)
            .await
            .map_err(store_err)?
            .into_iter()
            .map(|c| (c.tp, c.next_offset))
            .collect();
        // Start at the checkpoint, or at the first offset the feed holds
        // when there is none. A checkpoint below that is a retention gap:
        // stop rather than skip changes silently (CommCare does the same).
        let mut positions: Vec<(TopicPartition, u64)> = Vec::with_capacity(assigned.len());
        for tp in &assigned {
            let low = feed.watermarks(tp).await.map_err(feed_err)?.low;
            let start = match saved.get(tp) {
                Some(&needed) if needed < low => {
                    return Err(feed_err(FeedError::RetentionGap {
                        tp: tp.clone(),
                        first: low,
                        needed,
                    }));
                }
                Some(&checkpoint) => checkpoint,
                None => low,
            };
            positions.push((tp.clone(), start));
        }
        let mut targets = HashMap::new();
        if options.until_caught_up {
            for tp in &assigned {
                targets.insert(
                    tp.clone(),
                    feed.watermarks(tp).await.map_err(feed_err)?.high,
                );
            }
        }
        let mut next: HashMap<TopicPartition, u64> = positions.iter().cloned().collect();
        let mut committed = next.clone();
        let reader = feed.reader(positions.clone()).map_err(feed_err)?;
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
            .iter()
            .map(|p| format!("{}@{}", p.plugin().manifest().name, p.plugin().version()))
            .collect();
        tracing::info!(pillow = %name, partitions = assigned.len(), processors = ?versions, "pillow started");
        let plugin_event =
            |processor: &str,
             event,
             version: Option<String>,
             reason,
             next: &HashMap<TopicPartition, u64>| PluginEvent {
                pillow: name.clone(),
                process_num: options.process_num,
                processor: processor.to_owned(),
                event,
                version,
                reason,
                positions: if event == PluginEventKind::Live {
                    next.iter().map(|(tp, n)| (tp.clone(), *n)).collect()
                } else {
                    Default::default()
                },
                at_ms: crate::time::now_ms(),
            };
        // Built before awaiting: the future must not hold a borrow of a
        // `Processor` (not `Sync`) across an await.
        let started_versions: Vec<PluginEvent> = lanes[0]
            .iter()
            .map(|p| {
                let plugin = p.plugin();
                plugin_event(
                    &plugin.manifest().name,
                    PluginEventKind::Live,
                    Some(plugin.version().to_string()),
                    None,
                    &next,
                )
            })
            .collect();
        for event in &started_versions {
            store.record_plugin_event(event).await.map_err(store_err)?;
        }

        let backlog: u64 = targets
            .iter()
            .map(|(tp, t)| t.saturating_sub(next[tp]))
            .sum();
        let bar = progress_bar(options.progress, options.until_caught_up, backlog, &name);

        let sinks = Sinks {
            store: store.clone(),
            elastic: elastic.clone(),
        };
        let outage = OutageRetry {
            store: store.clone(),
            pillow: name.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        };
        let failure_log = Arc::new(FailureLog::default());
        let delivery = Arc::new(Delivery {
            sinks: sinks.clone(),
            outage: outage.clone(),
            checkpoint_id: checkpoint_id.clone(),
            failure_log: failure_log.clone(),
        });
        let chunk_budget = config.chunk_memory_bytes();
        let mut in_flight: Option<InFlight> = None;
        let mut reader = Some(reader);
        let mut polling: Option<Polling> = None;
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
                None => spawn_poll(
                    reader.take().expect("the reader is home when no poll runs"),
                    chunk_size,
                    max_wait,
                ),
            };
            let t_read = Instant::now();
            let (back, polled) = tokio::select! {
                _ = shutdown.cancelled() => break,
                joined = poll => joined.map_err(|e| PillowError::Worker { pillow: name.clone(), message: e.to_string() })?,
            };
            let polled = polled.map_err(feed_err)?;
            polling = Some(spawn_poll(back, chunk_size, max_wait));
            // A chunk boundary: the last chunk is fully processed, the next
            // not started. New plugin versions take over here, for every
            // partition at once.
            for (i, follower) in followers.iter_mut().enumerate() {
                for change in follower.poll() {
                    let processor = follower.slot().name().to_owned();
                    let event = match change {
                        SlotChange::Refused(r) => plugin_event(
                            &processor,
                            PluginEventKind::Refused,
                            r.version,
                            Some(r.reason),
                            &next,
                        ),
                        SlotChange::NewVersion(plugin) => {
                            let version = plugin.version().to_string();
                            match sinks.ensure_outputs(plugin.info()).await {
                                Ok(()) => {
                                    tracing::info!(pillow = %name, plugin = %processor, %version, from = %lanes[0][i].plugin().version(), "new plugin version live at this chunk boundary");
                                    for lane in &mut lanes {
                                        lane[i] = Processor::new(plugin.clone());
                                    }
                                    plugin_event(
                                        &processor,
                                        PluginEventKind::Live,
                                        Some(version),
                                        None,
                                        &next,
                                    )
                                }
                                Err(e) => {
                                    let reason = format!(
                                        "its declared tables or indices do not fit the sinks: {e}"
                                    );
                                    tracing::warn!(pillow = %name, plugin = %processor, %version, %reason, "plugin version refused by this pillow");
                                    plugin_event(
                                        &processor,
                                        PluginEventKind::Refused,
                                        Some(version),
                                        Some(reason),
                                        &next,
                                    )
                                }
                            }
                        }
                    };
                    store.record_plugin_event(&event).await.map_err(store_err)?;
                }
            }
            if !polled.messages.is_empty() {
                summary.read_time += t_read.elapsed();
            }
            if polled.messages.is_empty() {
                finish_commit(&mut in_flight, &mut committed, &mut tracker, &mut summary).await?;
                if tracker.due(Instant::now()) {
                    summary.checkpoint_saves += save_checkpoints(
                        &outage,
                        &checkpoint_id,
                        &next,
                        &mut committed,
                        &mut tracker,
                    )
                    .await
                    .map_err(store_err)?;
                }
                continue;
            }
            let n = polled.messages.len() as u64;
            summary.messages += n;
            summary.decode_time += polled.decode_time;
            let (changes, mut decode_errors, skipped) =
                decode_chunk(&name, polled.messages, &mut next);
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
                let (back, outcome, rest) = tokio::task::spawn_blocking(move || {
                    run_chunk(pillow, lanes, pending, chunk_budget)
                })
                .await
                .map_err(|e| PillowError::Worker {
                    pillow: name.clone(),
                    message: e.to_string(),
                })?;
                lanes = back;
                summary.transform_time += t1.elapsed();
                let last = rest.is_empty();

                let t2 = Instant::now();
                let mut errors = outcome.errors;
                errors.append(&mut decode_errors);
                for a in &outcome.actions {
                    *summary.actions.entry(a.action.kind()).or_default() += 1;
                }
                report(&metrics, &name, &lanes[0], &outcome.stats);
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
                    checkpoints,
                };
                // Commit in the background while the next chunk (or piece)
                // is read and transformed; commits stay strictly in order
                // (this one starts only after the previous one finished),
                // so a checkpoint never passes an uncommitted chunk.
                let delivery = delivery.clone();
                let sources = outcome.sources;
                in_flight = Some(tokio::spawn(async move {
                    delivery.deliver(commit, sources).await
                }));
                summary.load_time += t2.elapsed();
                if last {
                    break;
                }
                pending = rest;
            }
            for (tp, n) in &next {
                let tp = tp.to_string();
                metrics.set(
                    "pillowtop_processed_offset",
                    &[("pillow", name.as_str()), ("partition", tp.as_str())],
                    *n as f64,
                );
            }
            summary.chunks += 1;
            bar.inc(n);
        }
        // Graceful stop: everything processed is committed; save where we are.
        finish_commit(&mut in_flight, &mut committed, &mut tracker, &mut summary).await?;
        summary.checkpoint_saves +=
            save_checkpoints(&outage, &checkpoint_id, &next, &mut committed, &mut tracker)
                .await
                .map_err(store_err)?;
        bar.finish_and_clear();
        summary.elapsed = started.elapsed();
        tracing::info!(pillow = %name, messages = summary.messages, chunks = summary.chunks, "pillow stopped; checkpoints saved");
        Ok(summary)
    }
}

/// Retries sink writes through an outage: while a sink cannot be reached,
/// the same writes are retried with [`OutageBackoff`] and the pillow waits
/// (lag grows; no pillow error per change; the checkpoint never passes the
/// unwritten chunk). Logged once when it starts and once when it ends;
/// meanwhile `pillowtop_sink_down{pillow,sink}` is 1 and `status` shows
/// which sink this process waits for and since when.
#[derive(Clone)]
struct OutageRetry {
    store: Store,
    pillow: String,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl OutageRetry {
    /// Run `write` against `sink` (a bounded name: `store`,
    /// `elasticsearch`) at `location` until it succeeds or fails for a
    /// reason other than an outage.
    ///
    /// # Errors
    ///
    /// A non-outage error at once. An outage error only when shutdown is
    /// requested while the sink is still down: the chunk stays
    /// uncommitted and is read again by the next run.
    async fn retry<T, E, F, Fut>(
        &self,
        sink: &'static str,
        location: &str,
        mut write: F,
    ) -> Result<T, E>
    where
        E: Outage,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let labels = [("pillow", self.pillow.as_str()), ("sink", sink)];
        let mut down_since: Option<Instant> = None;
        let mut attempt = 0u32;
        loop {
            match write().await {
                Ok(v) => {
                    if let Some(since) = down_since {
                        tracing::info!(pillow = %self.pillow, sink = location, down_seconds = since.elapsed().as_secs_f64(), attempts = attempt, "sink reachable again; the held chunk is written");
                        self.metrics.set("pillowtop_sink_down", &labels, 0.0);
                        self.waiting(None).await;
                    }
                    return Ok(v);
                }
                Err(e) if e.is_outage() => {
                    if down_since.is_none() {
                        down_since = Some(Instant::now());
                        tracing::warn!(pillow = %self.pillow, sink = location, error = %e, "sink unavailable; holding this chunk and retrying with backoff (nothing is lost, lag grows)");
                        self.metrics.set("pillowtop_sink_down", &labels, 1.0);
                        // Recorded for `status` through the store, which
                        // cannot work when the store itself is down.
                        if sink != "store" {
                            self.waiting(Some(Waiting {
                                sink: location.to_owned(),
                                since_ms: crate::time::now_ms(),
                                error: e.to_string(),
                            }))
                            .await;
                        }
                    }
                    self.metrics
                        .add("pillowtop_sink_retries_total", &labels, 1.0);
                    if !OutageBackoff::sleep_unless(attempt, &self.shutdown).await {
                        tracing::warn!(pillow = %self.pillow, sink = location, "stopping while a sink is unavailable: this chunk is not committed and will be read again on restart");
                        self.waiting(None).await;
                        return Err(e);
                    }
                    attempt = attempt.saturating_add(1);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Record (or clear) the sink this process waits for; best effort.
    async fn waiting(&self, waiting: Option<Waiting>) {
        if let Err(e) = self
            .store
            .set_waiting(&self.pillow, std::process::id(), waiting.as_ref())
            .await
        {
            tracing::debug!(pillow = %self.pillow, error = %e, "cannot record the sink outage for status");
        }
    }
}

/// Writes one chunk to its sinks, in the background.
struct Delivery {
    sinks: Sinks,
    outage: OutageRetry,
    checkpoint_id: String,
    failure_log: Arc<FailureLog>,
}

/// Log lines per second, per processor, for changes that fail.
const FAILURE_LOG_LINES_PER_SECOND: u32 = 10;

/// The "change failed" log, rate-limited per processor: a plugin failing
/// every change must not flood the log (every failure is still recorded
/// as a pillow error and counted in metrics).
#[derive(Default)]
struct FailureLog {
    limiters: Mutex<HashMap<String, RateLimiter>>,
}

impl FailureLog {
    fn log(&self, e: &PillowErrorRecord) {
        let now = Instant::now();
        let allowed = {
            let mut limiters = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
            limiters
                .entry(e.processor.clone())
                .or_insert_with(|| RateLimiter::new(FAILURE_LOG_LINES_PER_SECOND, now))
                .allow(now)
        };
        let Some(dropped) = allowed else { return };
        if dropped > 0 {
            tracing::warn!(pillow = %e.pillow, processor = %e.processor, dropped, "more changes failed than are logged (all are recorded as pillow errors)");
        }
        tracing::warn!(pillow = %e.pillow, tp = %e.tp, offset = e.offset, doc_id = %e.doc_id, processor = %e.processor, kind = %e.kind, error = %e.message, "change failed; recorded as a pillow error");
    }
}

/// What a delivered chunk saved.
struct Delivered {
    /// Checkpoints saved with it.
    checkpoints: Vec<(TopicPartition, u64)>,
    /// Writes a sink refused, recorded as pillow errors.
    rejected: u64,
}

impl Delivery {
    /// Documents to Elasticsearch first (refused ones become pillow
    /// errors), then one store transaction with the rows, the pillow
    /// errors and the checkpoint. A crash between the two replays the
    /// chunk; Elasticsearch's external versions make that harmless.
    async fn deliver(
        &self,
        mut commit: ChunkCommit,
        sources: ChunkSources,
    ) -> Result<Delivered, PillowError> {
        let pillow = &self.outage.pillow;
        let mut rejected = 0;
        if let Some(es) = &self.sinks.elastic {
            let documents = std::mem::take(&mut commit.plan.documents);
            if !documents.is_empty() {
                let refused = self
                    .outage
                    .retry("elasticsearch", es.location(), || es.write(&documents))
                    .await
                    .map_err(|source| PillowError::Elastic {
                        pillow: pillow.clone(),
                        source,
                    })?;
                rejected = refused.len() as u64;
                for r in refused {
                    let message = format!(
                        "{} refused document {:?} of index {:?}: {}",
                        es.location(),
                        r.id,
                        r.index,
                        r.reason
                    );
                    let record = sources.record(r.origin, ErrorKind::Rejected, message);
                    self.failure_log.log(&record);
                    commit.errors.push(record);
                }
            }
        }
        let store = &self.sinks.store;
        let store_err = |source| PillowError::Store {
            pillow: pillow.clone(),
            source,
        };
        match self
            .outage
            .retry("store", store.location(), || {
                store.commit(&self.checkpoint_id, &commit)
            })
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_data() && !commit.plan.is_empty() => {
                rejected += self
                    .commit_one_at_a_time(&mut commit, &sources, e)
                    .await
                    .map_err(store_err)?;
            }
            Err(e) => return Err(store_err(e)),
        }
        Ok(Delivered {
            checkpoints: commit.checkpoints,
            rejected,
        })
    }

    /// The store refused the chunk's writes for a data reason: commit each
    /// change's writes in a transaction of its own, record the refused
    /// ones as pillow errors, then commit the errors and the checkpoint.
    /// A crash in between replays the chunk, which lands the same rows
    /// again (upserts by key, deletes by document id).
    async fn commit_one_at_a_time(
        &self,
        commit: &mut ChunkCommit,
        sources: &ChunkSources,
        cause: StoreError,
    ) -> Result<u64, StoreError> {
        let store = &self.sinks.store;
        tracing::warn!(pillow = %self.outage.pillow, store = store.location(), error = %cause, "the store refused the chunk's writes; writing them one change at a time");
        let mut rejected = 0;
        for (origin, plan) in std::mem::take(&mut commit.plan).split_by_origin() {
            let one = ChunkCommit {
                plan,
                ..ChunkCommit::default()
            };
            match self
                .outage
                .retry("store", store.location(), || {
                    store.commit(&self.checkpoint_id, &one)
                })
                .await
            {
                Ok(()) => {}
                Err(e) if e.is_data() => {
                    let record = sources.record(
                        origin,
                        ErrorKind::Rejected,
                        format!("the store refused this change's writes: {e}"),
                    );
                    self.failure_log.log(&record);
                    commit.errors.push(record);
                    rejected += 1;
                }
                Err(e) => return Err(e),
            }
        }
        self.outage
            .retry("store", store.location(), || {
                store.commit(&self.checkpoint_id, commit)
            })
            .await?;
        Ok(rejected)
    }
}

/// What one poll read: each message with its decoded change (or why it
/// does not decode), in feed order.
struct Polled {
    messages: Vec<(Message, Result<Change, change::DecodeError>)>,
    /// CPU time the decoding took (beside the previous chunk's transform).
    decode_time: Duration,
}

/// A feed poll running in the background; gives the reader back with the
/// messages it read, already decoded.
type Polling = tokio::task::JoinHandle<(FeedReader, Result<Polled, FeedError>)>;

fn spawn_poll(mut reader: FeedReader, max: usize, max_wait: Duration) -> Polling {
    tokio::spawn(async move {
        let result = match reader.poll(max, max_wait).await {
            Ok(messages) if messages.is_empty() => Ok(Polled {
                messages: Vec::new(),
                decode_time: Duration::ZERO,
            }),
            // Decoding parses every message's JSON (about 5 µs for a 1.8 KB
            // case): on a blocking thread, so it overlaps the previous
            // chunk's transform without holding up the runtime.
            Ok(messages) => tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let messages = messages
                    .into_iter()
                    .map(|m| {
                        let decoded = change::decode(&m);
                        (m, decoded)
                    })
                    .collect();
                Polled {
                    messages,
                    decode_time: started.elapsed(),
                }
            })
            .await
            .map_err(|e| FeedError::Invalid(format!("decoding a chunk of messages failed, a bug in pillowtop (please report it): {e}"))),
            Err(e) => Err(e),
        };
        (reader, result)
    })
}

/// A chunk delivery running in the background.
type InFlight = tokio::task::JoinHandle<Result<Delivered, PillowError>>;

/// Wait for the delivery in flight, if any, and note the checkpoints it
/// saved and the writes a sink refused.
async fn finish_commit(
    in_flight: &mut Option<InFlight>,
    committed: &mut HashMap<TopicPartition, u64>,
    tracker: &mut CheckpointTracker,
    summary: &mut RunSummary,
) -> Result<(), PillowError> {
    let Some(handle) = in_flight.take() else {
        return Ok(());
    };
    let delivered = match handle.await {
        Ok(result) => result?,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    if delivered.rejected > 0 {
        *summary.errors.entry(ErrorKind::Rejected).or_default() += delivered.rejected;
    }
    if !delivered.checkpoints.is_empty() {
        committed.extend(delivered.checkpoints);
        tracker.saved(Instant::now());
        summary.checkpoint_saves += 1;
    }
    Ok(())
}

async fn save_checkpoints(
    outage: &OutageRetry,
    checkpoint_id: &str,
    next: &HashMap<TopicPartition, u64>,
    committed: &mut HashMap<TopicPartition, u64>,
    tracker: &mut CheckpointTracker,
) -> Result<u64, StoreError> {
    let checkpoints = changed(next, committed);
    tracker.saved(Instant::now());
    if checkpoints.is_empty() {
        return Ok(0);
    }
    outage
        .retry("store", outage.store.location(), || {
            outage.store.set_checkpoints(checkpoint_id, &checkpoints)
        })
        .await?;
    committed.extend(checkpoints);
    Ok(1)
}

/// Decode messages, advance positions, and keep only the last change of
/// each document. Returns (changes with their raw values, decode errors,
/// changes skipped by dedupe).
#[allow(clippy::type_complexity)]
fn decode_chunk(
    pillow: &str,
    messages: Vec<(Message, Result<Change, change::DecodeError>)>,
    next: &mut HashMap<TopicPartition, u64>,
) -> (Vec<(Change, Vec<u8>)>, Vec<PillowErrorRecord>, u64) {
    let now = crate::time::now_ms();
    let mut changes = Vec::with_capacity(messages.len());
    let mut errors = Vec::new();
    for (m, decoded) in messages {
        if let Some(pos) = next.get_mut(&m.tp) {
            *pos = (*pos).max(m.offset + 1);
        }
        match decoded {
            Ok(c) => changes.push((c, m.value)),
            Err(e) => {
                let doc_id = m
                    .key
                    .as_deref()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .filter(|k| !k.is_empty())
                    .map_or_else(|| format!("{}:{}", m.tp, m.offset), str::to_owned);
                errors.push(PillowErrorRecord {
                    doc_id,
                    pillow: pillow.to_owned(),
                    processor: String::new(),
                    plugin_version: None,
                    kind: ErrorKind::Decode,
                    message: cut_message(e.to_string()),
                    tp: m.tp,
                    offset: m.offset,
                    domain: None,
                    document_type: None,
                    change: m.value,
                    at_ms: now,
                    backoff: Backoff::default(),
                });
            }
        }
    }
    // Dedupe: walk backwards marking the last change of each id (borrowing
    // the ids, no copies), then keep the marked ones in order.
    let before = changes.len();
    let mut keep = vec![false; before];
    {
        let mut seen = HashSet::with_capacity(before);
        for (i, (c, _)) in changes.iter().enumerate().rev() {
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

/// A transform thread gets at least this many changes of a chunk: fewer
/// would cost more in thread start-up than they save.
const MIN_CHANGES_PER_THREAD: usize = 64;

/// What one lane made of its run of a chunk.
struct LaneOutcome {
    actions: Vec<VersionedAction>,
    failures: Vec<(Origin, Failure)>,
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

/// A chunk's changes, with the raw feed value of each.
type Changes = Vec<(Change, Vec<u8>)>;

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
/// `spawn_blocking` turns it into [`PillowError::Worker`].
fn run_chunk(
    pillow: String,
    mut lanes: Vec<Vec<Processor>>,
    changes: Changes,
    budget_bytes: usize,
) -> (Vec<Vec<Processor>>, ChunkOutcome, Changes) {
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
        vec![run_lane(&mut lanes[0], &changes, 0, &budget)]
    } else {
        std::thread::scope(|scope| {
            let budget = &budget;
            let mut runs = lanes.iter_mut().zip(changes.chunks(per_thread)).enumerate();
            let (_, (first_lane, first_run)) = runs.next().expect("a chunk has a first run");
            let others: Vec<_> = runs
                .map(|(k, (lane, run))| {
                    scope.spawn(move || run_lane(lane, run, k * per_thread, budget))
                })
                .collect();
            let mut outcomes = vec![run_lane(first_lane, first_run, 0, budget)];
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
        stats: vec![ProcessorStats::default(); lanes[0].len()],
        ..ChunkOutcome::default()
    };
    let mut failures = Vec::new();
    let mut processed = Vec::with_capacity(outcomes.len());
    for (k, lane) in outcomes.into_iter().enumerate() {
        let start = k * per_thread;
        processed.push(start..start + lane.done);
        outcome.actions.extend(lane.actions);
        failures.extend(lane.failures);
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
            (processed, rest)
        }
    };
    outcome.sources = ChunkSources {
        pillow,
        changes,
        processors: lanes[0].iter().map(ProcessorRef::of).collect(),
    };
    outcome.errors = failures
        .into_iter()
        .map(|(origin, f)| outcome.sources.record(origin, f.kind, f.message))
        .collect();
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
    processors: &mut [Processor],
    changes: &[(Change, Vec<u8>)],
    first: usize,
    budget: &ActionBudget,
) -> LaneOutcome {
    let mut outcome = LaneOutcome {
        actions: Vec::new(),
        failures: Vec::new(),
        stats: vec![ProcessorStats::default(); processors.len()],
        done: 0,
    };
    for (i, (change, _)) in changes.iter().enumerate() {
        if budget.spent() {
            break;
        }
        let mut bytes = 0;
        for (j, (p, stats)) in processors
            .iter_mut()
            .zip(outcome.stats.iter_mut())
            .enumerate()
        {
            if !p.wants(change) {
                continue;
            }
            let origin = Origin {
                change: (first + i) as u32,
                processor: j as u16,
            };
            let result = p.process(change);
            stats.fuel += p.last_fuel_used();
            match result {
                Ok(actions) => {
                    stats.ok += 1;
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

/// Add a chunk's per-processor counts to the metrics, labelled with the
/// version that processed them.
fn report(metrics: &Metrics, pillow: &str, processors: &[Processor], stats: &[ProcessorStats]) {
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
            metrics.add("pillowtop_changes_total", &labels("ok"), s.ok as f64);
        }
        for (kind, n) in &s.failed {
            metrics.add("pillowtop_changes_total", &labels(kind.as_str()), *n as f64);
        }
        if s.fuel > 0 {
            metrics.add(
                "pillowtop_fuel_used_total",
                &[("pillow", pillow), ("processor", processor)],
                s.fuel as f64,
            );
        }
    }
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
