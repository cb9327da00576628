//! Delivery: writing one chunk's actions and pillow errors to the sinks,
//! whatever produced them (a pillow reading a feed, or the retry queue
//! re-running stored changes).
//!
//! Documents go to Elasticsearch first when it is configured (a document
//! it refuses becomes a pillow error of kind `rejected`), then one
//! transaction of the store's database holds the SQL sink writes, the
//! pillow errors and the checkpoint. A crash between the two replays the
//! chunk; Elasticsearch's external versions make that harmless. A chunk
//! the database refuses for a data reason is written one change at a time,
//! so one bad change cannot hold back the rest.
//!
//! A sink outage (connection refused, timeout, 429, 5xx) holds the chunk:
//! the same writes are retried with [`OutageBackoff`] until the sink is
//! back, so the checkpoint never passes an unwritten change and no pillow
//! error is recorded for an outage ([`OutageRetry`]).

use super::elastic::ElasticError;
use super::{ChunkCommit, Origin, SinkError, Sinks};
use crate::change::Change;
use crate::errors::{ErrorKind, PillowError, ProcessorRef};
use crate::feed::TopicPartition;
use crate::metrics::{Metric, Metrics};
use crate::outage::{Outage, OutageBackoff};
use crate::rate::RateLimiter;
use crate::store::{Store, StoreError, Waiting};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// The changes (each with its feed value) and processors that the
/// [`Origin`]s of a chunk's actions point into, so a refused write becomes
/// a pillow error for exactly its change and processor.
#[derive(Debug, Default)]
pub struct Sources {
    /// Pillow name.
    pub pillow: String,
    /// The chunk's changes, by position.
    pub changes: Vec<Change>,
    /// The pillow's processors, by position.
    pub processors: Vec<ProcessorRef>,
}

impl Sources {
    /// The partition of the change at position `change`.
    pub fn partition_of(&self, change: u32) -> Option<TopicPartition> {
        self.changes.get(change as usize).map(|c| TopicPartition {
            topic: c.topic.clone(),
            partition: c.partition,
        })
    }

    /// A pillow error for the change and processor at `origin` (its
    /// message cut to the bound every pillow error has).
    pub fn record(&self, origin: Origin, kind: ErrorKind, message: String) -> PillowError {
        let change = &self.changes[origin.change as usize];
        let processor = &self.processors[usize::from(origin.processor)];
        PillowError::of_change(
            &self.pillow,
            change,
            processor,
            kind,
            message,
            crate::time::now_ms(),
        )
    }
}

impl ChunkCommit {
    /// A sink refused the writes of the change at `origin`: record it as a
    /// pillow error, or, when the retry queue was re-running that change,
    /// as the failure of that retry.
    fn refuse(&mut self, origin: Origin, record: PillowError) {
        match self.retries.iter_mut().find(|(c, _)| *c == origin.change) {
            Some((_, outcome)) => outcome.failure = Some(record),
            None => self.errors.push(record),
        }
    }
}

/// Why a delivery stopped: a refusal retrying cannot fix, or an outage
/// still on when shutdown was asked for. Nothing of the chunk is
/// committed; the next run reads it again.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Elasticsearch refused the bulk writes as a whole (credentials,
    /// privileges), or was still down at shutdown.
    #[error(transparent)]
    Elastic(#[from] ElasticError),
    /// The store's database failed.
    #[error(transparent)]
    Sql(#[from] SinkError),
}

/// Retries sink writes through an outage: while a sink cannot be reached,
/// the same writes are retried with [`OutageBackoff`] and the caller waits
/// (lag grows; no pillow error per change; the checkpoint never passes the
/// unwritten chunk). Logged once when it starts and once when it ends;
/// meanwhile `pillowtop_sink_down{pillow,sink}` is 1 and `status` shows
/// which sink this process waits for and since when.
#[derive(Clone)]
pub struct OutageRetry {
    store: Store,
    pillow: String,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl OutageRetry {
    /// Retries for `pillow`, reporting to `metrics` and (for `status`)
    /// `store`; `shutdown` ends a wait.
    pub fn new(
        store: Store,
        pillow: String,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> OutageRetry {
        OutageRetry {
            store,
            pillow,
            metrics,
            shutdown,
        }
    }

    /// Run `write` against `sink` (a bounded name: `store`,
    /// `elasticsearch`) at `location` until it succeeds or fails for a
    /// reason other than an outage.
    ///
    /// # Errors
    ///
    /// A non-outage error at once. An outage error only when shutdown is
    /// requested while the sink is still down: the chunk stays
    /// uncommitted and is read again by the next run.
    pub async fn retry<T, E, F, Fut>(
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
                        self.metrics.set(Metric::SinkDown, &labels, 0.0);
                        self.metrics.set(Metric::SinkDownSince, &labels, 0.0);
                        self.waiting(None).await;
                    }
                    return Ok(v);
                }
                Err(e) if e.is_outage() => {
                    if down_since.is_none() {
                        down_since = Some(Instant::now());
                        tracing::warn!(pillow = %self.pillow, sink = location, error = %e, "sink unavailable; holding this chunk and retrying with backoff (nothing is lost, lag grows)");
                        self.metrics.set(Metric::SinkDown, &labels, 1.0);
                        self.metrics.set(
                            Metric::SinkDownSince,
                            &labels,
                            crate::time::now_ms() as f64 / 1000.0,
                        );
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
                    self.metrics.add(Metric::SinkRetriesTotal, &labels, 1.0);
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

/// Log lines per second, per processor, for changes that fail.
const FAILURE_LOG_LINES_PER_SECOND: u32 = 10;

/// The "change failed" log, rate-limited per processor: a plugin failing
/// every change must not flood the log (every failure is still recorded
/// as a pillow error and counted in metrics).
#[derive(Default)]
pub struct FailureLog {
    limiters: Mutex<HashMap<String, RateLimiter>>,
}

impl FailureLog {
    /// Log `e`, unless its processor is over the rate.
    pub fn log(&self, e: &PillowError) {
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
        tracing::warn!(pillow = %e.pillow, topic = %e.tp.topic, partition = e.tp.partition, offset = e.offset, doc_id = %e.doc_id, processor = %e.processor, kind = %e.kind, error = %e.message, "change failed; recorded as a pillow error");
    }
}

/// What a delivered chunk saved.
#[derive(Debug)]
pub struct Delivered {
    /// Checkpoints saved with it.
    pub checkpoints: Vec<(TopicPartition, u64)>,
    /// Where the writes a sink refused came from (each recorded as a
    /// pillow error, or as the failure of a retry).
    pub refused: Vec<Origin>,
}

/// Writes chunks to their sinks.
pub struct Delivery {
    sinks: Sinks,
    outage: OutageRetry,
    checkpoint_id: String,
    failure_log: Arc<FailureLog>,
}

impl Delivery {
    /// Delivery to `sinks`, saving checkpoints under `checkpoint_id`,
    /// holding chunks through outages with `outage`, logging refused
    /// writes to `failure_log`.
    pub fn new(
        sinks: Sinks,
        outage: OutageRetry,
        checkpoint_id: String,
        failure_log: Arc<FailureLog>,
    ) -> Delivery {
        Delivery {
            sinks,
            outage,
            checkpoint_id,
            failure_log,
        }
    }

    /// Documents to Elasticsearch first (refused ones become pillow
    /// errors), then one store transaction with the rows, the pillow
    /// errors and the checkpoint.
    ///
    /// # Errors
    ///
    /// A refusal retrying cannot fix, or an outage still on at shutdown;
    /// nothing of the chunk is committed then.
    pub async fn deliver(
        &self,
        mut commit: ChunkCommit,
        sources: Sources,
    ) -> Result<Delivered, DeliveryError> {
        let mut refused_at = Vec::new();
        if let Some(es) = &self.sinks.elastic {
            let documents = std::mem::take(&mut commit.plan.documents);
            if !documents.is_empty() {
                let refused = self
                    .outage
                    .retry("elasticsearch", es.location(), || es.write(&documents))
                    .await?;
                for r in refused {
                    refused_at.push(r.origin);
                    let message = format!(
                        "{} refused document {:?} of index {:?}: {}",
                        es.location(),
                        r.id,
                        r.index,
                        r.reason
                    );
                    let record = sources.record(r.origin, ErrorKind::Rejected, message);
                    self.failure_log.log(&record);
                    commit.refuse(r.origin, record);
                }
            }
        }
        let sql = &self.sinks.sql;
        let partition_of = |k| sources.partition_of(k);
        match self
            .outage
            .retry("store", self.sinks.store.location(), || {
                sql.commit(&self.checkpoint_id, &commit, &partition_of)
            })
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_data() && !commit.plan.is_empty() => {
                refused_at.extend(self.commit_one_at_a_time(&mut commit, &sources, e).await?);
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Delivered {
            checkpoints: commit.checkpoints,
            refused: refused_at,
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
        sources: &Sources,
        cause: SinkError,
    ) -> Result<Vec<Origin>, SinkError> {
        let (sql, location) = (&self.sinks.sql, self.sinks.store.location());
        let partition_of = |k| sources.partition_of(k);
        tracing::warn!(pillow = %self.outage.pillow, store = location, error = %cause, "the store refused the chunk's writes; writing them one change at a time");
        let mut refused = Vec::new();
        // Parts commit one by one: none may take a held table back, since
        // the parts before it dropped their writes to it.
        commit.scope.may_release = false;
        for (origin, plan) in std::mem::take(&mut commit.plan).split_by_origin() {
            // A retried change's claim goes with its writes.
            let retries = match commit.retries.iter().position(|(c, _)| *c == origin.change) {
                Some(k) => vec![commit.retries.remove(k)],
                None => Vec::new(),
            };
            let mut one = ChunkCommit {
                plan,
                retries,
                scope: commit.scope.clone(),
                ..ChunkCommit::default()
            };
            match self
                .outage
                .retry("store", location, || {
                    sql.commit(&self.checkpoint_id, &one, &partition_of)
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
                    // Back with the rest, as a failure of that retry.
                    commit.retries.append(&mut one.retries);
                    commit.refuse(origin, record);
                    refused.push(origin);
                }
                Err(e) => return Err(e),
            }
        }
        self.outage
            .retry("store", location, || {
                sql.commit(&self.checkpoint_id, commit, &partition_of)
            })
            .await?;
        Ok(refused)
    }

    /// Save `checkpoints` on their own (when idle, or stopping), held
    /// through a store outage like a chunk.
    ///
    /// # Errors
    ///
    /// A store refusal, or an outage still on at shutdown.
    pub async fn save_checkpoints(
        &self,
        checkpoints: &[(TopicPartition, u64)],
    ) -> Result<(), StoreError> {
        let store = &self.sinks.store;
        self.outage
            .retry("store", store.location(), || {
                store.set_checkpoints(&self.checkpoint_id, checkpoints)
            })
            .await
    }
}
