//! The retry queue (CommCare's `run_pillow_retry_queue`): pillow errors
//! whose next attempt is due are tried again, fairly across domains, in
//! bounded batches, and the outcome is recorded with CommCare's schedule
//! (see [`crate::errors::Backoff`]).
//!
//! ```text
//! due errors of one pillow, round-robin by domain (errors::sql::due)
//!   ─> rerun: the stored change through the live version of its processor
//!      (rerun), into one commit through the pillow's delivery path
//!      (sink::delivery: Elasticsearch, then one store transaction with the
//!      writes and each error's outcome; no checkpoint)
//!   ─> or republish: the change back on its topic with `attempts` counted
//! ```
//!
//! A retry that passes resolves its error only if the record is still the
//! one read (a newer change of the document recorded or passed meanwhile
//! wins, and the stale writes are dropped). The queue holds one batch at a
//! time, keeps to `retry_per_second`, and stops after its current batch on
//! shutdown. "Now" comes from a [`Clock`], so tests move through a
//! schedule of minutes without waiting.

pub mod republish;
pub mod rerun;

use crate::config::{PillowConfig, RetryMode};
use crate::db::DbError;
use crate::errors::{ErrorKind, PillowError};
use crate::feed::FeedError;
use crate::feed::publish::Publisher;
use crate::metrics::{Metric, Metrics};
use crate::reload::{Follower, SlotChange};
use crate::sink::delivery::{DeliveryError, FailureLog, OutageRetry};
use crate::sink::{Delivery, OutputError, Sinks};
use crate::source::{DocumentSource, SourceError};
use crate::time::Clock;
use crate::wasm::Processor;
use rerun::Tried;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why a retry queue stopped.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// The store could not be read.
    #[error("retry queue of pillow {pillow}: reading due errors: {source}")]
    Store {
        /// Pillow.
        pillow: String,
        /// The error.
        source: DbError,
    },
    /// A commit failed for a reason other than an outage.
    #[error("retry queue of pillow {pillow}: {source}")]
    Delivery {
        /// Pillow.
        pillow: String,
        /// The error.
        source: DeliveryError,
    },
    /// Republishing failed.
    #[error("retry queue of pillow {pillow}: republishing: {source}")]
    Feed {
        /// Pillow.
        pillow: String,
        /// The error.
        source: FeedError,
    },
    /// A new plugin version's outputs could not be prepared.
    #[error("retry queue of pillow {pillow}: {source}")]
    Outputs {
        /// Pillow.
        pillow: String,
        /// The error.
        source: OutputError,
    },
    /// The document source failed.
    #[error("retry queue of pillow {pillow}: {source}")]
    Source {
        /// Pillow.
        pillow: String,
        /// The error.
        source: SourceError,
    },
    /// The thread running the plugins failed (a host bug).
    #[error("retry queue of pillow {pillow}: processing thread failed: {message}")]
    Worker {
        /// Pillow.
        pillow: String,
        /// The panic.
        message: String,
    },
}

impl RetryError {
    /// Whether the same batch may succeed later: the store or a sink was
    /// unreachable or busy (the queue then looks again after its poll).
    pub fn is_outage(&self) -> bool {
        match self {
            RetryError::Store { source, .. } => source.is_outage(),
            RetryError::Outputs { source, .. } => crate::outage::Outage::is_outage(source),
            RetryError::Source { source, .. } => source.is_outage(),
            RetryError::Delivery { .. } | RetryError::Feed { .. } | RetryError::Worker { .. } => {
                false
            }
        }
    }
}

/// What the queue did with one error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retried {
    /// The error's id.
    pub id: i64,
    /// Its document.
    pub doc_id: String,
    /// Its domain.
    pub domain: Option<String>,
    /// Its processor.
    pub processor: String,
    /// What came of it.
    pub outcome: Outcome,
}

/// What came of one retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It passed: resolved.
    Resolved,
    /// It failed again; the next attempt is scheduled.
    Failed(ErrorKind),
    /// It failed again and is now parked.
    Parked(ErrorKind),
    /// Its change was appended to its topic again.
    Republished,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Resolved => "resolved",
            Outcome::Failed(_) => "failed",
            Outcome::Parked(_) => "parked",
            Outcome::Republished => "republished",
        }
    }
}

/// What a run of the queue did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetrySummary {
    /// Pillow.
    pub pillow: String,
    /// Batches run.
    pub batches: u64,
    /// Errors tried, by outcome label.
    pub outcomes: BTreeMap<&'static str, u64>,
}

/// A pillow's retry queue.
pub struct RetryQueue {
    config: PillowConfig,
    sinks: Sinks,
    delivery: Delivery,
    /// `None` only while a batch runs on the blocking thread.
    lane: Option<Vec<Processor>>,
    followers: Vec<Follower>,
    publisher: Option<Publisher>,
    /// Where the documents of stored changes without one are read.
    source: Option<DocumentSource>,
    clock: Clock,
    metrics: Arc<Metrics>,
    /// Whether the tables and indices the processors declare are known to
    /// the sinks (checked once, before the first batch).
    prepared: bool,
    /// The domain served last: the next batch's turns start after it, so
    /// round-robin carries over from batch to batch.
    last_domain: String,
}

impl RetryQueue {
    /// The retry queue of `config`'s pillow, writing to `sinks` with
    /// `processors` (one per pillow processor, in order), reporting to
    /// `metrics`; `shutdown` ends a wait for a sink outage.
    pub fn new(
        config: &PillowConfig,
        sinks: Sinks,
        processors: Vec<Processor>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> RetryQueue {
        let outage = OutageRetry::new(
            sinks.store.clone(),
            config.name.clone(),
            metrics.clone(),
            shutdown,
        );
        let delivery = Delivery::new(
            sinks.clone(),
            outage,
            config.checkpoint_id().to_owned(),
            Arc::new(FailureLog::default()),
        );
        RetryQueue {
            config: config.clone(),
            sinks,
            delivery,
            lane: Some(processors),
            followers: Vec::new(),
            publisher: None,
            source: None,
            clock: Clock::System,
            metrics,
            prepared: false,
            last_domain: String::new(),
        }
    }

    /// Take new plugin versions from these slots (one follower per
    /// processor, in order) before each batch, as the pillow does.
    pub fn following(mut self, followers: Vec<Follower>) -> RetryQueue {
        self.followers = followers;
        self
    }

    /// Republish through `publisher` (needed for `retry = "republish"`).
    pub fn publishing(mut self, publisher: Publisher) -> RetryQueue {
        self.publisher = Some(publisher);
        self
    }

    /// Read the documents of stored changes that carry none from `source`
    /// (the pillow's `document_source`) before re-running them.
    pub fn reading(mut self, source: DocumentSource) -> RetryQueue {
        self.source = Some(source);
        self
    }

    /// Read "now" from `clock`.
    pub fn with_clock(mut self, clock: Clock) -> RetryQueue {
        self.clock = clock;
        self
    }

    fn pillow(&self) -> String {
        self.config.name.clone()
    }

    fn store_error(&self, source: sqlx::Error) -> RetryError {
        RetryError::Store {
            pillow: self.pillow(),
            source: DbError {
                store: self.sinks.store.location().to_owned(),
                source,
            },
        }
    }

    /// Run one batch: up to `retry_batch_size` due errors, tried and
    /// recorded. An empty list when nothing is due.
    ///
    /// # Errors
    ///
    /// See [`RetryError`]; nothing of a failed batch is recorded, and its
    /// errors are due again.
    pub async fn run_batch(&mut self) -> Result<Vec<Retried>, RetryError> {
        if !self.prepared {
            let infos: Vec<_> = self
                .lane
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|p| p.plugin().info().clone())
                .collect();
            self.sinks
                .ensure_all(&infos)
                .await
                .map_err(|source| RetryError::Outputs {
                    pillow: self.pillow(),
                    source,
                })?;
            self.prepared = true;
        }
        self.swap_versions().await?;
        let now = self.clock.now_ms();
        let due = crate::errors::sql::due(
            self.sinks.store.db(),
            &self.config.name,
            now,
            self.config.retry_batch_size,
            &self.last_domain,
        )
        .await
        .map_err(|source| self.store_error(source))?;
        let Some(last) = due.last() else {
            return Ok(Vec::new());
        };
        self.last_domain = last.domain.clone().unwrap_or_default();
        let retried = match self.config.retry {
            RetryMode::Republish => self.republish(due, now).await?,
            RetryMode::Rerun | RetryMode::Off => self.rerun(due, now).await?,
        };
        for r in &retried {
            self.metrics.add(
                Metric::RetriesTotal,
                &[
                    ("pillow", self.config.name.as_str()),
                    ("processor", r.processor.as_str()),
                    ("outcome", r.outcome.as_str()),
                ],
                1.0,
            );
        }
        Ok(retried)
    }

    async fn rerun(&mut self, due: Vec<PillowError>, now: i64) -> Result<Vec<Retried>, RetryError> {
        let documents = match &self.source {
            None => None,
            Some(source) => {
                // Every due document, without decoding the stored changes
                // (rerun does that once): on a pillow with a source the
                // stored changes carry no document, and one that does
                // keeps its own (`source::attach`).
                let ids: Vec<&str> = due.iter().map(|e| e.doc_id.as_str()).collect();
                Some(
                    source
                        .fetch(&ids)
                        .await
                        .map_err(|source| RetryError::Source {
                            pillow: self.pillow(),
                            source,
                        })?,
                )
            }
        };
        let mut lane = self.lane.take().expect("the lane is home between batches");
        let pillow = self.pillow();
        let joined = tokio::task::spawn_blocking(move || {
            let out = rerun::rerun(&pillow, &mut lane, due, documents.as_ref(), now);
            (lane, out)
        })
        .await;
        let (lane, (commit, sources, tried)) = joined.map_err(|e| RetryError::Worker {
            pillow: self.pillow(),
            message: e.to_string(),
        })?;
        self.lane = Some(lane);
        let delivered = self
            .delivery
            .deliver(commit, sources)
            .await
            .map_err(|source| RetryError::Delivery {
                pillow: self.pillow(),
                source,
            })?;
        Ok(tried
            .into_iter()
            .enumerate()
            .map(|(i, (e, t))| {
                let refused = delivered.refused.iter().any(|o| o.change as usize == i);
                let outcome = match t {
                    Tried::Passed(backoff) if refused => {
                        match rerun::failed(&backoff, ErrorKind::Rejected, &e, now) {
                            Tried::Failed { kind, parked: true } => Outcome::Parked(kind),
                            _ => Outcome::Failed(ErrorKind::Rejected),
                        }
                    }
                    Tried::Passed(_) => Outcome::Resolved,
                    Tried::Failed { kind, parked: true } => Outcome::Parked(kind),
                    Tried::Failed {
                        kind,
                        parked: false,
                    } => Outcome::Failed(kind),
                };
                retried(e, outcome)
            })
            .collect())
    }

    async fn republish(
        &mut self,
        due: Vec<PillowError>,
        now: i64,
    ) -> Result<Vec<Retried>, RetryError> {
        let Some(publisher) = &self.publisher else {
            return Err(RetryError::Feed {
                pillow: self.pillow(),
                source: FeedError::Invalid(
                    "retry = \"republish\" needs the pillow's feed; the queue was started without it (a bug in pillowtop)".into(),
                ),
            });
        };
        let mut by_topic: BTreeMap<&str, Vec<_>> = BTreeMap::new();
        for e in &due {
            by_topic
                .entry(&*e.tp.topic)
                .or_default()
                .push(republish::message(e));
        }
        for (topic, batch) in by_topic {
            publisher
                .send(topic, batch)
                .await
                .map_err(|source| RetryError::Feed {
                    pillow: self.pillow(),
                    source,
                })?;
        }
        // Owned: a borrow of a `Processor` (not `Sync`) must not be held
        // across an await.
        let refs: Vec<_> = self
            .lane
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(Processor::reference)
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for e in due {
            // Should the republished message never come back, the error
            // is due again after the delay its next failure would get.
            let backoff = refs
                .iter()
                .find(|p| p.name == e.processor)
                .map(|p| p.backoff)
                .unwrap_or_default();
            let a = i64::from(e.series_attempts + 1);
            let fallback = now.saturating_add(backoff.base_ms.max(60_000) * a * a);
            crate::errors::sql::postpone(self.sinks.store.db(), &e, fallback)
                .await
                .map_err(|source| self.store_error(source))?;
            out.push(retried(e, Outcome::Republished));
        }
        Ok(out)
    }

    /// Take new versions from the followed slots (after preparing what
    /// they declare), as the pillow does at a chunk boundary.
    async fn swap_versions(&mut self) -> Result<(), RetryError> {
        let mut fresh = Vec::new();
        for (j, f) in self.followers.iter_mut().enumerate() {
            for change in f.poll() {
                if let SlotChange::NewVersion(plugin, _) = change {
                    fresh.push((j, plugin));
                }
            }
        }
        for (j, plugin) in fresh {
            self.sinks
                .ensure_outputs(plugin.info())
                .await
                .map_err(|source| RetryError::Outputs {
                    pillow: self.pillow(),
                    source,
                })?;
            if let Some(lane) = self.lane.as_mut() {
                lane[j] = Processor::new(plugin);
            }
        }
        Ok(())
    }

    /// Run batches until `shutdown` (finishing the batch in hand): when a
    /// whole batch was due, the next follows as `retry_per_second`
    /// allows; otherwise the queue looks again after `retry_poll_seconds`.
    /// A store outage while reading is waited out.
    ///
    /// # Errors
    ///
    /// See [`RetryError`].
    pub async fn run(self, shutdown: CancellationToken) -> Result<RetrySummary, RetryError> {
        self.batches(shutdown, false).await
    }

    /// Run batches until fewer than a batch are due (`pillowtop retry
    /// --once`), keeping to `retry_per_second`.
    ///
    /// # Errors
    ///
    /// See [`RetryError`].
    pub async fn drain(self, shutdown: &CancellationToken) -> Result<RetrySummary, RetryError> {
        self.batches(shutdown.clone(), true).await
    }

    async fn batches(
        mut self,
        shutdown: CancellationToken,
        until_idle: bool,
    ) -> Result<RetrySummary, RetryError> {
        let mut summary = RetrySummary {
            pillow: self.pillow(),
            ..RetrySummary::default()
        };
        tracing::info!(pillow = %self.config.name, mode = ?self.config.retry, batch = self.config.retry_batch_size, per_second = self.config.retry_per_second, "retry queue started");
        let poll = Duration::from_secs(self.config.retry_poll_seconds);
        while !shutdown.is_cancelled() {
            let started = tokio::time::Instant::now();
            let wait = match self.run_batch().await {
                Ok(retried) => {
                    summary.add(&retried);
                    if (retried.len() as u32) < self.config.retry_batch_size {
                        if until_idle {
                            break;
                        }
                        poll
                    } else {
                        pace(retried.len(), self.config.retry_per_second)
                            .saturating_sub(started.elapsed())
                    }
                }
                Err(e) if e.is_outage() => {
                    tracing::warn!(pillow = %self.config.name, error = %e, "retry queue: the store or a sink is unreachable or busy; looking again later");
                    poll
                }
                Err(e) => return Err(e),
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        tracing::info!(pillow = %self.config.name, batches = summary.batches, outcomes = ?summary.outcomes, "retry queue stopped");
        Ok(summary)
    }
}

impl RetrySummary {
    fn add(&mut self, retried: &[Retried]) {
        if retried.is_empty() {
            return;
        }
        self.batches += 1;
        for r in retried {
            *self.outcomes.entry(r.outcome.as_str()).or_default() += 1;
        }
    }
}

/// How long `n` retries should take at `per_second` (0: no limit).
fn pace(n: usize, per_second: u32) -> Duration {
    if per_second == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(n as f64 / f64::from(per_second))
}

fn retried(e: PillowError, outcome: Outcome) -> Retried {
    Retried {
        id: e.id,
        doc_id: e.doc_id,
        domain: e.domain,
        processor: e.processor,
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_paced_to_the_rate() {
        assert_eq!(pace(500, 0), Duration::ZERO);
        assert_eq!(pace(500, 200), Duration::from_millis(2500));
        assert_eq!(pace(10, 1000), Duration::from_millis(10));
    }
}
