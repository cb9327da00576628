//! What `pillowtop status` shows: per pillow and partition the checkpoint,
//! the feed's end offset, need-processing (lag in changes), seconds since
//! the last checkpoint and the owning process; error counts, recent errors
//! and plugin versions. One screen for the firefighting guide.

use crate::checkpoint::{self, CheckpointError};
use crate::config::PillowConfig;
use crate::errors::{ErrorKind, PillowError};
use crate::feed::{Feed, FeedError};
use crate::manifest::Manifest;
use crate::partition;
use crate::shadow::Tally;
use crate::store::{PluginEvent, PluginEventKind, ShadowRun, Store, StoreError, Waiting};
use serde::Serialize;
use std::fmt::Write as _;

/// One partition's state.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionStatus {
    /// `topic:partition`.
    pub partition: String,
    /// Process that owns it (of `num_processes`).
    pub process: u32,
    /// Saved checkpoint (next offset), if any.
    pub checkpoint: Option<u64>,
    /// The feed's end offset (next offset to be written).
    pub end_offset: u64,
    /// `end_offset - checkpoint`.
    pub need_processing: u64,
    /// Seconds since the checkpoint was saved.
    pub seconds_since_checkpoint: Option<i64>,
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
    /// Pillow errors by kind.
    pub errors: Vec<(ErrorKind, u64)>,
    /// The latest errors.
    #[serde(skip)]
    pub recent_errors: Vec<PillowError>,
    /// Processors: what runs, what is on disk, what was refused.
    pub plugins: Vec<PluginStatus>,
    /// Host processes that ran this pillow.
    pub processes: Vec<ProcessStatus>,
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

/// Gather one pillow's status.
///
/// # Errors
///
/// When the feed or store cannot be read.
pub async fn pillow_status(
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
                need_processing: p.need_processing(),
                seconds_since_checkpoint: p.saved_at_ms.map(|at| (now - at).max(0) / 1000),
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
    let plugins = config
        .processors
        .iter()
        .map(|path| {
            let (processor, on_disk) = match Manifest::load(path) {
                Ok(m) => match crate::wasm::plugin_version(&m, max_component_bytes) {
                    Ok(v) => (m.name, v.to_string()),
                    Err(e) => (m.name, format!("component unreadable: {e}")),
                },
                Err(e) => (path.display().to_string(), format!("manifest error: {e}")),
            };
            plugin_status(processor, on_disk, &events, &runs)
        })
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
            .map_err(errors_err)?,
        recent_errors: crate::errors::sql::recent(store.db(), &config.name, 5)
            .await
            .map_err(errors_err)?,
        plugins,
        processes,
    })
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

/// Render statuses as text.
pub fn render(statuses: &[PillowStatus]) -> String {
    let mut out = String::new();
    for s in statuses {
        let _ = writeln!(
            out,
            "pillow {} (checkpoint id {}): need-processing {}",
            s.pillow, s.checkpoint_id, s.need_processing
        );
        for p in &s.plugins {
            let live: Vec<String> = p
                .live
                .iter()
                .map(|(n, v, _)| format!("{v} (process {n})"))
                .collect();
            let _ = writeln!(
                out,
                "  processor {}: live {}; on disk {}",
                p.processor,
                if live.is_empty() {
                    "never run".into()
                } else {
                    live.join(", ")
                },
                p.on_disk
            );
            for c in &p.shadows {
                let processes: Vec<String> = c.processes.iter().map(u32::to_string).collect();
                let _ = writeln!(
                    out,
                    "    SHADOW {} (process {}): {}; see `pillowtop plugin diff {}`",
                    c.version,
                    processes.join(", "),
                    c.tally,
                    p.processor
                );
            }
            if let Some(r) = &p.refused {
                let _ = writeln!(
                    out,
                    "    REFUSED {} ({}s ago): {}",
                    r.version.as_deref().unwrap_or("new files"),
                    (crate::time::now_ms() - r.at_ms).max(0) / 1000,
                    crate::wasm::check::clip(&r.reason.replace('\n', " "), 300)
                );
            }
        }
        for p in &s.processes {
            let _ = writeln!(
                out,
                "  process {} pid {} on {}: {} (heartbeat {}s ago){}",
                p.process_num,
                p.pid,
                p.host,
                p.state,
                p.seconds_since_heartbeat,
                p.admin_url
                    .as_deref()
                    .map(|u| format!(", admin {u}"))
                    .unwrap_or_default()
            );
            if let Some(w) = &p.waiting {
                let _ = writeln!(
                    out,
                    "    WAITING for {}: unavailable for {}s, chunk held and retried (lag grows, nothing is lost): {}",
                    w.sink,
                    (crate::time::now_ms() - w.since_ms).max(0) / 1000,
                    crate::wasm::check::clip(&w.error.replace('\n', " "), 300)
                );
            }
        }
        let _ = writeln!(
            out,
            "  {:<24} {:>7} {:>12} {:>12} {:>15} {:>14}",
            "partition", "process", "checkpoint", "end offset", "need-processing", "checkpoint age"
        );
        for p in &s.partitions {
            let _ = writeln!(
                out,
                "  {:<24} {:>7} {:>12} {:>12} {:>15} {:>14}",
                p.partition,
                p.process,
                p.checkpoint.map_or("-".into(), |c| c.to_string()),
                p.end_offset,
                p.need_processing,
                p.seconds_since_checkpoint
                    .map_or("never".into(), |s| format!("{s}s")),
            );
        }
        let total: u64 = s.errors.iter().map(|(_, n)| n).sum();
        if total == 0 {
            let _ = writeln!(out, "  errors: none");
        } else {
            let kinds: Vec<_> = s.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let _ = writeln!(out, "  errors: {total} ({})", kinds.join(", "));
            for e in &s.recent_errors {
                let _ = writeln!(
                    out,
                    "    #{} {} {} {}@{} doc {} [{}{}] attempts {}: {}",
                    e.id,
                    e.state,
                    e.kind,
                    e.tp,
                    e.offset,
                    e.doc_id,
                    if e.processor.is_empty() {
                        "decode"
                    } else {
                        &e.processor
                    },
                    e.plugin_version
                        .as_deref()
                        .map(|v| format!(" {v}"))
                        .unwrap_or_default(),
                    e.total_attempts,
                    crate::wasm::check::clip(&e.message.replace('\n', " "), 200),
                );
            }
        }
    }
    out
}
