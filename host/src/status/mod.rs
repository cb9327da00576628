//! What an operator sees of running pillows: per pillow and partition the
//! checkpoint, the position processed, the feed's end offset,
//! need-processing, change lag, checkpoint age and the owning process;
//! errors by state and kind, the retry queue, recent errors, plugin
//! versions, processes and the sinks they wait for.
//!
//! One structure, [`Status`], for every view: `pillowtop status` (text,
//! `--json`, `--watch`), the admin endpoint's `GET /status` and the
//! firefighting page that polls it, `/healthz` ([`health`]) and the gauges
//! of `/metrics`. It is gathered from the feed and the store
//! ([`gather`]); the positions processes hold in memory ahead of their
//! checkpoints are laid over it ([`Status::overlay`] with each process's
//! [`Live`] positions), so need-processing and lag are current, not as
//! old as the last checkpoint.

mod health;
mod render;

pub use crate::config::HealthRules;
pub use health::health;
pub use render::render;

use crate::checkpoint::{self, CheckpointError};
use crate::config::PillowConfig;
use crate::errors::sql::QueueSummary;
use crate::errors::{ErrorKind, ErrorState, PillowError};
use crate::feed::{Feed, FeedError};
use crate::manifest::Manifest;
use crate::partition;
use crate::shadow::Tally;
use crate::store::{PluginEvent, PluginEventKind, ShadowRun, Store, StoreError, Waiting};
use serde::{Deserialize, Serialize};

/// Every pillow asked about, at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// When it was gathered, epoch ms.
    pub at_ms: i64,
    /// The pillows.
    pub pillows: Vec<PillowStatus>,
}

/// One partition's state.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PartitionStatus {
    /// `topic:partition`.
    pub partition: String,
    /// Process that owns it (of `num_processes`).
    pub process: u32,
    /// Saved checkpoint (next offset), if any.
    pub checkpoint: Option<u64>,
    /// The feed's end offset (next offset to be written).
    pub end_offset: u64,
    /// The next offset its process will read, when a running process
    /// reported it (ahead of the checkpoint by up to a checkpoint's worth).
    pub processed: Option<u64>,
    /// `end_offset` minus `processed` (or the checkpoint when no process
    /// reported).
    pub need_processing: u64,
    /// Seconds since the checkpoint was saved.
    pub seconds_since_checkpoint: Option<i64>,
    /// Seconds from the publish time of the last change processed (or the
    /// last time the process found nothing to read) to now; 0 when no
    /// change waits; `None` when no running process reported.
    pub change_lag_seconds: Option<f64>,
}

/// One pillow's state.
#[derive(Debug, Clone, Serialize)]
pub struct PillowStatus {
    /// Name.
    pub pillow: String,
    /// Checkpoint id.
    pub checkpoint_id: String,
    /// Partitions.
    pub partitions: Vec<PartitionStatus>,
    /// Total need-processing.
    pub need_processing: u64,
    /// Pillow errors by state and kind.
    pub errors: Vec<ErrorCount>,
    /// The retry queue.
    pub retry_queue: QueueSummary,
    /// The latest errors, newest first.
    pub recent_errors: Vec<ErrorSummary>,
    /// Processors: what runs, what is on disk, what was refused.
    pub plugins: Vec<PluginStatus>,
    /// Host processes that ran this pillow.
    pub processes: Vec<ProcessStatus>,
}

/// Pillow errors of one state and kind.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ErrorCount {
    /// Pending, parked or resolved.
    pub state: ErrorState,
    /// The kind.
    pub kind: ErrorKind,
    /// How many.
    pub count: u64,
}

/// A pillow error, as a status line shows it (the change itself is left
/// out: `pillowtop errors show ID` or `GET /errors/ID` has it).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ErrorSummary {
    /// Its id.
    pub id: i64,
    /// Pending, parked or resolved.
    pub state: ErrorState,
    /// The kind.
    pub kind: ErrorKind,
    /// `topic:partition`.
    pub partition: String,
    /// The change's offset.
    pub offset: u64,
    /// The document.
    pub doc_id: String,
    /// The processor (empty for a change that could not be decoded).
    pub processor: String,
    /// The plugin version that failed, if one ran.
    pub plugin_version: Option<String>,
    /// Attempts in all.
    pub attempts: u32,
    /// When it last failed, epoch ms.
    pub at_ms: i64,
    /// The message, clipped to 300 characters on one line.
    pub message: String,
}

impl From<&PillowError> for ErrorSummary {
    fn from(e: &PillowError) -> ErrorSummary {
        ErrorSummary {
            id: e.id,
            state: e.state,
            kind: e.kind,
            partition: e.tp.to_string(),
            offset: e.offset,
            doc_id: e.doc_id.clone(),
            processor: e.processor.clone(),
            plugin_version: e.plugin_version.clone(),
            attempts: e.total_attempts,
            at_ms: e.at_ms,
            message: crate::wasm::check::clip(&e.message.replace('\n', " "), 300),
        }
    }
}

/// The position a running process holds for one partition, ahead of its
/// checkpoint (from its metrics); `GET /status/live` answers these.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Live {
    /// The pillow.
    pub pillow: String,
    /// `topic:partition`.
    pub partition: String,
    /// The next offset it will read.
    pub processed: u64,
    /// Publish time of the last change it processed, epoch ms.
    pub last_published_ms: Option<i64>,
}

/// One processor of a pillow.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PluginStatus {
    /// Plugin name (or the manifest path when the manifest is unreadable).
    pub processor: String,
    /// The version of the files on disk now (or why it cannot be read).
    pub on_disk: String,
    /// Per process number: the version live there and since when (epoch ms).
    pub live: Vec<(u32, String, i64)>,
    /// The latest refusal after the newest version went live, if any.
    pub refused: Option<Refused>,
    /// Candidates running beside the live version, with what they did.
    pub shadows: Vec<ShadowStatus>,
}

/// A candidate running beside a processor's live version.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ShadowStatus {
    /// The candidate version.
    pub version: String,
    /// The processes running it.
    pub processes: Vec<u32>,
    /// What it did so far (every process, beside any live version).
    pub tally: Tally,
}

/// A refused version.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Refused {
    /// Its version, when readable.
    pub version: Option<String>,
    /// Why.
    pub reason: String,
    /// When, epoch ms.
    pub at_ms: i64,
}

/// One host process of a pillow.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProcessStatus {
    /// Its process number.
    pub process_num: u32,
    /// OS pid and host.
    pub pid: u32,
    /// Host name.
    pub host: String,
    /// `running`, `stopped` (gracefully), or `unresponsive` (no heartbeat
    /// for [`crate::store::STALE_AFTER`]: killed or hung).
    pub state: &'static str,
    /// Admin endpoint.
    pub admin_url: Option<String>,
    /// Seconds since its last heartbeat.
    pub seconds_since_heartbeat: i64,
    /// The sink it is waiting for during an outage, if any.
    pub waiting: Option<Waiting>,
}

/// Why status could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Feed.
    #[error(transparent)]
    Feed(#[from] FeedError),
    /// Store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Checkpoints.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Pillow errors.
    #[error("{store}: reading pillow errors: {source}")]
    Errors {
        /// Which store.
        store: String,
        /// The error.
        source: sqlx::Error,
    },
    /// The process layout is impossible.
    #[error(transparent)]
    Assignment(#[from] partition::AssignmentError),
}

/// Gather the status of `pillows`.
///
/// # Errors
///
/// When the feed or store cannot be read.
pub async fn gather(
    pillows: &[&PillowConfig],
    feed: &Feed,
    store: &Store,
    max_component_bytes: u64,
) -> Result<Status, StatusError> {
    let mut out = Vec::with_capacity(pillows.len());
    for p in pillows {
        out.push(pillow_status(p, feed, store, max_component_bytes).await?);
    }
    Ok(Status {
        at_ms: crate::time::now_ms(),
        pillows: out,
    })
}

impl Status {
    /// Lay the positions running processes hold over the checkpoints:
    /// need-processing from the position processed, and the change lag.
    pub fn overlay(&mut self, live: &[Live]) {
        for p in &mut self.pillows {
            for part in &mut p.partitions {
                // The furthest any process reported: after a handover the
                // old owner's last figure may linger.
                let Some(l) = live
                    .iter()
                    .filter(|l| l.pillow == p.pillow && l.partition == part.partition)
                    .max_by_key(|l| l.processed)
                else {
                    continue;
                };
                let processed = l.processed.max(part.checkpoint.unwrap_or(0));
                part.processed = Some(processed);
                part.need_processing = part.end_offset.saturating_sub(processed);
                part.change_lag_seconds = if part.need_processing == 0 {
                    Some(0.0)
                } else {
                    l.last_published_ms
                        .map(|ms| (self.at_ms - ms).max(0) as f64 / 1000.0)
                };
            }
            p.need_processing = p.partitions.iter().map(|x| x.need_processing).sum();
        }
    }
}

impl PillowStatus {
    /// Pillow errors in every state.
    pub fn error_total(&self) -> u64 {
        self.errors.iter().map(|e| e.count).sum()
    }

    /// Pillow errors by kind, every state together.
    pub fn errors_by_kind(&self) -> Vec<(ErrorKind, u64)> {
        let mut out: Vec<(ErrorKind, u64)> = Vec::new();
        for e in &self.errors {
            match out.iter_mut().find(|(k, _)| *k == e.kind) {
                Some((_, n)) => *n += e.count,
                None => out.push((e.kind, e.count)),
            }
        }
        out.sort();
        out
    }
}

/// Gather one pillow's status.
async fn pillow_status(
    config: &PillowConfig,
    feed: &Feed,
    store: &Store,
    max_component_bytes: u64,
) -> Result<PillowStatus, StatusError> {
    let pairs = feed.partitions(&config.topics).await?;
    let now = crate::time::now_ms();
    let owners = partition::owners(
        &pairs,
        config.num_processes,
        config.dedicated_migration_process,
    )?;
    let mut partitions: Vec<PartitionStatus> =
        checkpoint::positions(feed, store, config.checkpoint_id(), &pairs)
            .await?
            .into_iter()
            .map(|p| PartitionStatus {
                process: owners.get(&p.partition).copied().unwrap_or(0),
                partition: p.partition.to_string(),
                checkpoint: p.checkpoint,
                end_offset: p.end_offset,
                processed: None,
                need_processing: p.need_processing(),
                seconds_since_checkpoint: p.saved_at_ms.map(|at| (now - at).max(0) / 1000),
                change_lag_seconds: None,
            })
            .collect();
    partitions.sort_by(|a, b| a.partition.cmp(&b.partition));
    let errors_err = |source| StatusError::Errors {
        store: store.location().to_owned(),
        source,
    };
    let events = store.plugin_events(&config.name).await?;
    let runs: Vec<ShadowRun> = store
        .shadow_runs(None)
        .await?
        .into_iter()
        .filter(|r| r.pillow == config.name)
        .collect();
    // Reading and hashing the components touches the disk: not on the
    // async workers.
    let processors = config.processors.clone();
    let on_disk = tokio::task::spawn_blocking(move || {
        processors
            .iter()
            .map(|path| on_disk(path, max_component_bytes))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let plugins = on_disk
        .into_iter()
        .map(|(processor, on_disk)| plugin_status(processor, on_disk, &events, &runs))
        .collect();
    let processes = store
        .processes()
        .await?
        .into_iter()
        .filter(|p| p.pillow == config.name)
        .map(|p| ProcessStatus {
            process_num: p.process_num,
            pid: p.pid,
            host: p.host.clone(),
            state: p.liveness(now).as_str(),
            admin_url: p.admin_url.clone(),
            seconds_since_heartbeat: p.seconds_since_heartbeat(now),
            waiting: p.waiting.clone().filter(|_| p.stopped_at_ms.is_none()),
        })
        .collect();
    Ok(PillowStatus {
        pillow: config.name.clone(),
        checkpoint_id: config.checkpoint_id().to_owned(),
        need_processing: partitions.iter().map(|p| p.need_processing).sum(),
        partitions,
        errors: crate::errors::sql::counts(store.db(), &config.name)
            .await
            .map_err(errors_err)?
            .into_iter()
            .map(|(state, kind, count)| ErrorCount { state, kind, count })
            .collect(),
        retry_queue: crate::errors::sql::queue(store.db(), &config.name, now)
            .await
            .map_err(errors_err)?,
        recent_errors: crate::errors::sql::recent(store.db(), &config.name, 5)
            .await
            .map_err(errors_err)?
            .iter()
            .map(ErrorSummary::from)
            .collect(),
        plugins,
        processes,
    })
}

/// A processor's name and the version of its files on disk (or why they
/// cannot be read).
fn on_disk(manifest: &std::path::Path, max_component_bytes: u64) -> (String, String) {
    match Manifest::load(manifest) {
        Ok(m) => match crate::wasm::plugin_version(&m, max_component_bytes) {
            Ok(v) => (m.name, v.to_string()),
            Err(e) => (m.name, format!("component unreadable: {e}")),
        },
        Err(e) => (
            manifest.display().to_string(),
            format!("manifest error: {e}"),
        ),
    }
}

/// Fold a pillow's plugin events (oldest first) into one processor's
/// status, with the counts of the candidates it runs.
fn plugin_status(
    processor: String,
    on_disk: String,
    events: &[PluginEvent],
    runs: &[ShadowRun],
) -> PluginStatus {
    let mut live: Vec<(u32, String, i64)> = Vec::new();
    let mut refused = None;
    let mut shadowing: Vec<(u32, String)> = Vec::new();
    for e in events.iter().filter(|e| e.processor == processor) {
        let version = e.version.clone().unwrap_or_default();
        match e.event {
            PluginEventKind::Live => {
                match live.iter_mut().find(|(n, _, _)| *n == e.process_num) {
                    Some(slot) => *slot = (e.process_num, version, e.at_ms),
                    None => live.push((e.process_num, version, e.at_ms)),
                }
                refused = None;
            }
            PluginEventKind::Refused => {
                refused = Some(Refused {
                    version: e.version.clone(),
                    reason: e.reason.clone().unwrap_or_default(),
                    at_ms: e.at_ms,
                })
            }
            PluginEventKind::Shadow => {
                shadowing.retain(|(n, _)| *n != e.process_num);
                shadowing.push((e.process_num, version));
            }
            PluginEventKind::ShadowEnded => shadowing.retain(|(n, _)| *n != e.process_num),
        }
    }
    live.sort();
    let mut shadows: Vec<ShadowStatus> = Vec::new();
    for (process, version) in shadowing {
        match shadows.iter_mut().find(|s| s.version == version) {
            Some(s) => s.processes.push(process),
            None => shadows.push(ShadowStatus {
                version,
                processes: vec![process],
                tally: Tally::default(),
            }),
        }
    }
    for s in &mut shadows {
        s.processes.sort();
        for r in runs
            .iter()
            .filter(|r| r.processor == processor && r.candidate_version == s.version)
        {
            s.tally.add(&r.tally);
        }
    }
    PluginStatus {
        processor,
        on_disk,
        live,
        refused,
        shadows,
    }
}
