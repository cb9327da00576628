//! `pillowtop ucr rebuild TABLE_ID`: rebuild the table of one UCR data
//! source from the pillow's feed, with the data source as its file says
//! now, while the pillow keeps running.
//!
//! A data source whose filter or indicators changed declares a new
//! definition for its table, and the host refuses to write it into the
//! table the old definition built: the pillow keeps running the old
//! version (on a reload) or does not start (at startup). The rebuild, for
//! one data source only:
//!
//! 1. finds the pillow whose UCR processor has a data source with that
//!    `table_id`, and loads the plugin restricted to it
//!    (`include_ucrs = [TABLE_ID]`) for the table it declares;
//! 2. in one transaction, drops the table, creates it with the new
//!    definition and *holds* it for every partition of the pillow's feed
//!    (`crate::sink::hold`): the pillow's other tables and processors go
//!    on, but it leaves this table to the rebuild, and its waiting new
//!    version goes live (the table now has that version's definition);
//! 3. replays the feed from its first offset into the table, in a pillow
//!    of its own (`PILLOW:rebuild:TABLE_ID`, name and checkpoint id, reset
//!    first) that saves its checkpoint with every chunk, until every
//!    partition reaches the end it had at the start, with a progress bar;
//! 4. follows the feed on until the pillow has taken every partition back
//!    (it does at a chunk start, or idle, once the rebuild has passed its
//!    position), or, when no process of the pillow runs, until the rebuild
//!    has passed the pillow's checkpoints: the pillow takes the table
//!    back when it starts.
//!
//! Every change is then written by the rebuild (before the pillow takes
//! its partition back) or by the pillow (from then on), in feed order.
//! With the embedded store (one process at a time) the pillow must be
//! stopped: the rebuild refuses while any process uses the store.

use crate::action::TableSpec;
use crate::checkpoint::{self, CheckpointError, Move};
use crate::config::{HostConfig, PillowConfig, RetryMode};
use crate::feed::{Feed, TopicPartition};
use crate::manifest::Manifest;
use crate::pillow::RunOptions;
use crate::process::{self, ProcessError, ProcessOptions, ProcessSummary, Stop};
use crate::sink::SqlSink;
use crate::store::Store;
use crate::wasm::{Runtime, RuntimeOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often the rebuild, following the feed, looks whether the pillow
/// has taken the table back.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// How often it says what it still waits for.
const SAY_EVERY: Duration = Duration::from_secs(30);

/// Why a rebuild could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// No pillow, or more than one, has a data source of that table id.
    #[error("{0}")]
    Find(String),
    /// A manifest or its data source files could not be read or loaded.
    #[error("{0}")]
    Plugin(String),
    /// Another rebuild of the table runs, or its positions cannot be set.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The store or feed failed.
    #[error("{0}")]
    Store(String),
    /// The rebuild run failed (its summary says what it did).
    #[error(transparent)]
    Run(#[from] ProcessError),
    /// Stopped (Ctrl-C, SIGTERM) before the pillow had the table back.
    #[error(
        "stopped before the rebuild of {table} was done: the pillow does not write the table until it is; run `pillowtop ucr rebuild` for it again (it starts over)"
    )]
    Interrupted {
        /// The table.
        table: String,
    },
}

/// What a rebuild did.
#[derive(Debug)]
pub struct Rebuilt {
    /// The pillow whose feed was replayed.
    pub pillow: String,
    /// The table rebuilt.
    pub table: String,
    /// The replay of the feed as it stood at the start.
    pub summary: ProcessSummary,
    /// Partitions the pillow had taken back when the rebuild stopped; the
    /// others it takes back when it gets to them (it was not running).
    pub taken_back: usize,
    /// Partitions of the pillow's feed.
    pub partitions: usize,
}

/// Rebuild the table of data source `table_id`, in `pillow` (or the one
/// pillow that has it).
///
/// # Errors
///
/// See [`RebuildError`]; the table is dropped only once the plugin is
/// known to accept the data source and no other rebuild of it runs.
pub async fn rebuild(
    config: &HostConfig,
    table_id: &str,
    pillow: Option<&str>,
    stop: &Stop,
) -> Result<Rebuilt, RebuildError> {
    let (pillow, manifest) = find(config, table_id, pillow)?;
    let restricted = RestrictedManifest::write(&manifest, table_id)?;
    let spec = declared_table(config, restricted.path()).await?;
    let store_err = |e: &dyn std::fmt::Display| RebuildError::Store(e.to_string());

    let rebuilder = format!("{}:rebuild:{table_id}", pillow.checkpoint_id());
    let mut rebuild_pillow = pillow.clone();
    rebuild_pillow.name = rebuilder.clone();
    rebuild_pillow.checkpoint_id = Some(rebuilder.clone());
    rebuild_pillow.processors = vec![restricted.path().to_owned()];
    rebuild_pillow.num_processes = 1;
    rebuild_pillow.dedicated_migration_process = false;
    // The pillow takes a partition back from what the rebuild committed:
    // every chunk commits its checkpoint.
    rebuild_pillow.checkpoint_every = 1;
    rebuild_pillow.checkpoint_max_delay_seconds = 1;
    // The pillow's own errors are not this run's to retry.
    rebuild_pillow.retry = RetryMode::Off;

    let feed = Feed::open(&config.feed).await.map_err(|e| store_err(&e))?;
    let store = Store::connect(&config.store)
        .await
        .map_err(|e| store_err(&e))?;
    // The embedded store serves one process at a time; refused before
    // anything is dropped, as is a second rebuild of the table (a process
    // of the rebuild's name runs).
    process::refuse_if_embedded_store_in_use(config, &store).await?;
    let moves = checkpoint::apply(&rebuild_pillow, &feed, &store, &[], Move::Reset, false).await?;
    let partitions: Vec<TopicPartition> = moves.into_iter().map(|(tp, _, _)| tp).collect();
    let sql = SqlSink::new(&store);
    sql.hold_for_rebuild(&spec, &rebuilder, &partitions)
        .await
        .map_err(|e| store_err(&e))?;
    tracing::info!(pillow = %pillow.name, table = %spec.name, "table created anew and held; replaying the feed from its first offset");

    let mut run_config = config.clone();
    run_config.pillows = vec![rebuild_pillow];
    run_config.admin.enabled = false;
    run_config.reload.watch = false;
    let options = |until_caught_up| ProcessOptions {
        pillow: None,
        run: RunOptions {
            until_caught_up,
            process_num: 0,
            num_processes: Some(1),
            progress: until_caught_up,
        },
        ..ProcessOptions::default()
    };
    let mut summary = process::run(&run_config, options(true), stop).await?;
    if summary.failed.is_none() && !stop.requested() {
        // Follow the feed until the pillow has the table back.
        let following = Stop::new();
        let watch = watch(
            &store, &sql, &pillow, &spec.name, &rebuilder, stop, &following,
        );
        let (tail, watched) =
            tokio::join!(process::run(&run_config, options(false), &following), watch);
        watched?;
        // A failure while following is the run's failure, as one in the
        // replay.
        summary.failed = tail?.failed;
    }
    sql.finish_rebuild(&spec.name, &rebuilder)
        .await
        .map_err(|e| store_err(&e))?;
    if stop.requested() && summary.failed.is_none() {
        return Err(RebuildError::Interrupted { table: spec.name });
    }
    let holds = sql.holds(&spec.name).await.map_err(|e| store_err(&e))?;
    Ok(Rebuilt {
        pillow: pillow.name.clone(),
        table: spec.name,
        summary,
        taken_back: partitions.len() - holds.len(),
        partitions: partitions.len(),
    })
}

/// Until the pillow has taken every partition of `table` back, or no
/// process of it runs and the rebuild has passed its checkpoints (or
/// `stop`): then stop `following`.
async fn watch(
    store: &Store,
    sql: &SqlSink,
    pillow: &PillowConfig,
    table: &str,
    rebuilder: &str,
    stop: &Stop,
    following: &Stop,
) -> Result<(), RebuildError> {
    let store_err = |e: &dyn std::fmt::Display| RebuildError::Store(e.to_string());
    let mut said = Instant::now();
    let result = loop {
        tokio::select! {
            _ = stop.requested_wait() => break Ok(()),
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
        let holds = match sql.holds(table).await {
            Ok(h) => h,
            Err(e) => break Err(store_err(&e)),
        };
        let held: Vec<&TopicPartition> =
            holds.iter().filter(|(_, r)| !r).map(|(tp, _)| tp).collect();
        if held.is_empty() {
            break Ok(());
        }
        let running = match store
            .running_process(&pillow.name, crate::time::now_ms())
            .await
        {
            Ok(p) => p.is_some(),
            Err(e) => break Err(store_err(&e)),
        };
        if !running {
            let (ours, theirs) = match (
                store.checkpoints(rebuilder).await,
                store.checkpoints(pillow.checkpoint_id()).await,
            ) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => break Err(store_err(&e)),
            };
            let at = |list: &[crate::store::Checkpoint], tp: &TopicPartition| {
                list.iter()
                    .find(|c| c.tp == *tp)
                    .map_or(0, |c| c.next_offset)
            };
            if held.iter().all(|tp| at(&ours, tp) >= at(&theirs, tp)) {
                tracing::info!(pillow = %pillow.name, table, "no process of the pillow runs and the rebuild has passed its checkpoints: it takes the table back when it starts");
                break Ok(());
            }
        }
        if said.elapsed() >= SAY_EVERY {
            said = Instant::now();
            tracing::warn!(pillow = %pillow.name, table, partitions = held.len(), "waiting for the pillow to take the table back: it does once it runs the data source's new version (with [reload] watch it loads it by itself; otherwise send it SIGHUP or restart it)");
        }
    };
    following.request();
    result
}

/// The pillow and processor manifest whose `[config_files] data_sources`
/// hold a data source of `table_id`.
fn find(
    config: &HostConfig,
    table_id: &str,
    only: Option<&str>,
) -> Result<(PillowConfig, PathBuf), RebuildError> {
    let mut found = Vec::new();
    let mut seen = Vec::new();
    for p in &config.pillows {
        if only.is_some_and(|name| name != p.name) {
            continue;
        }
        for path in &p.processors {
            let manifest = Manifest::load(path)
                .map_err(|e| RebuildError::Plugin(format!("pillow {}: {e}", p.name)))?;
            for id in table_ids(&manifest.config_json) {
                if id == table_id {
                    found.push((p.clone(), path.clone()));
                }
                seen.push(id);
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => {
            seen.sort();
            seen.dedup();
            Err(RebuildError::Find(format!(
                "no UCR data source with table_id {table_id:?} in {}{}; table ids found: {}",
                only.map_or(String::from("the pillows of "), |p| format!(
                    "pillow {p} of "
                )),
                config.path.display(),
                if seen.is_empty() {
                    "none".into()
                } else {
                    seen.join(", ")
                }
            )))
        }
        _ => Err(RebuildError::Find(format!(
            "table_id {table_id:?} is a data source of pillows {}; name one with --pillow",
            found
                .iter()
                .map(|(p, _)| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The `table_id`s of the data sources in a manifest's config (the files
/// `[config_files] data_sources` put there); none for other plugins.
fn table_ids(config_json: &str) -> Vec<String> {
    let Ok(config) = serde_json::from_str::<serde_json::Value>(config_json) else {
        return Vec::new();
    };
    config["data_sources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["spec"]["table_id"].as_str().map(str::to_owned))
        .collect()
}

/// The table the restricted plugin declares (its data source's), loaded
/// through the compile cache.
async fn declared_table(config: &HostConfig, manifest: &Path) -> Result<TableSpec, RebuildError> {
    let options = RuntimeOptions::from_config(&config.runtime);
    let manifest = manifest.to_owned();
    tokio::task::spawn_blocking(move || {
        let loaded = Manifest::load(&manifest).map_err(|e| e.to_string())?;
        let runtime = Runtime::new(options).map_err(|e| format!("{e:#}"))?;
        let (processor, _) = runtime.load(&loaded).map_err(|e| e.to_string())?;
        match &processor.plugin().info().tables[..] {
            [one] => Ok(one.clone()),
            other => Err(format!(
                "the plugin restricted to one data source declared {} tables ({}); expected one",
                other.len(),
                other
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    })
    .await
    .map_err(|e| RebuildError::Plugin(e.to_string()))?
    .map_err(RebuildError::Plugin)
}

/// A copy of the UCR manifest beside the original (so its relative paths
/// hold) whose `[config]` includes only one data source; removed on drop.
struct RestrictedManifest {
    path: PathBuf,
}

impl RestrictedManifest {
    fn write(original: &Path, table_id: &str) -> Result<RestrictedManifest, RebuildError> {
        let err = |e: String| RebuildError::Plugin(format!("{}: {e}", original.display()));
        let text = std::fs::read_to_string(original).map_err(|e| err(e.to_string()))?;
        let mut doc: toml::Table = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let config = doc
            .entry("config")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(config) = config.as_table_mut() else {
            return Err(err("[config] is not a table".into()));
        };
        config.remove("exclude_ucrs");
        config.insert(
            "include_ucrs".into(),
            toml::Value::Array(vec![toml::Value::String(table_id.to_owned())]),
        );
        let text = toml::to_string(&doc).map_err(|e| err(e.to_string()))?;
        let stem = original
            .file_stem()
            .map_or("ucr".into(), |s| s.to_string_lossy().into_owned());
        let path = original.with_file_name(format!(".{stem}.rebuild-{table_id}.toml"));
        std::fs::write(&path, text)
            .map_err(|e| err(format!("cannot write {}: {e}", path.display())))?;
        Ok(RestrictedManifest { path })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RestrictedManifest {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_ids_are_read_from_the_data_sources_in_config() {
        let config = r#"{"table_prefix": "ucr_", "data_sources": [
            {"file": "a.json", "spec": {"table_id": "patients"}},
            {"file": "b.json", "spec": {"table_id": "visits"}}]}"#;
        assert_eq!(table_ids(config), ["patients", "visits"]);
        assert!(table_ids(r#"{"domains": ["*"]}"#).is_empty());
        assert!(table_ids("not json").is_empty());
    }
}
