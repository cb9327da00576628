//! `pillowtop ucr rebuild TABLE_ID`: rebuild the table of one UCR data
//! source from the pillow's feed, with the data source as its file says
//! now.
//!
//! A data source whose filter or indicators changed declares a new
//! definition for its table, and the host refuses to write it into the
//! table the old definition built. The rebuild, for one data source only:
//!
//! 1. finds the pillow whose UCR processor has a data source with that
//!    `table_id`, and refuses while a process of that pillow runs (its
//!    other processors, and every other pillow, may run; this one must be
//!    stopped so that no one else writes the table meanwhile);
//! 2. drops the table and its registry entry;
//! 3. runs the pillow's feed from the first offset through the UCR plugin
//!    restricted to that data source (`include_ucrs = [TABLE_ID]`), in a
//!    pillow of its own checkpoint id (`PILLOW:rebuild:TABLE_ID`, reset
//!    first) that writes nothing else, until every partition reaches the
//!    end it had at the start, with a progress bar.
//!
//! When the pillow starts again its UCR version finds the table with its
//! own definition and resumes from its checkpoints: the changes between
//! its checkpoint and the rebuild's end are written again, in order, which
//! leaves every row as the latest change of its document makes it.

use crate::checkpoint::{self, CheckpointError, Move};
use crate::config::{HostConfig, PillowConfig, RetryMode};
use crate::feed::Feed;
use crate::manifest::Manifest;
use crate::pillow::RunOptions;
use crate::process::{self, ProcessError, ProcessOptions, ProcessSummary, Stop};
use crate::sink::SqlSink;
use crate::store::Store;
use crate::wasm::{Runtime, RuntimeOptions};
use std::path::{Path, PathBuf};

/// Why a rebuild could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// No pillow, or more than one, has a data source of that table id.
    #[error("{0}")]
    Find(String),
    /// A manifest or its data source files could not be read or loaded.
    #[error("{0}")]
    Plugin(String),
    /// The pillow runs, or its positions cannot be set.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The store or feed failed.
    #[error("{0}")]
    Store(String),
    /// The rebuild run failed (its summary says what it did).
    #[error(transparent)]
    Run(#[from] ProcessError),
}

/// What a rebuild did.
#[derive(Debug)]
pub struct Rebuilt {
    /// The pillow whose feed was replayed.
    pub pillow: String,
    /// The table rebuilt.
    pub table: String,
    /// The run of the restricted pillow.
    pub summary: ProcessSummary,
}

/// Rebuild the table of data source `table_id`, in `pillow` (or the one
/// pillow that has it).
///
/// # Errors
///
/// See [`RebuildError`]; the table is dropped only once the pillow is
/// known to be stopped and the plugin to accept the data source.
pub async fn rebuild(
    config: &HostConfig,
    table_id: &str,
    pillow: Option<&str>,
    stop: &Stop,
) -> Result<Rebuilt, RebuildError> {
    let (pillow, manifest) = find(config, table_id, pillow)?;
    let restricted = RestrictedManifest::write(&manifest, table_id)?;
    let table = declared_table(config, restricted.path()).await?;

    let mut rebuild_pillow = pillow.clone();
    rebuild_pillow.checkpoint_id = Some(format!("{}:rebuild:{table_id}", pillow.checkpoint_id()));
    rebuild_pillow.processors = vec![restricted.path().to_owned()];
    rebuild_pillow.num_processes = 1;
    rebuild_pillow.dedicated_migration_process = false;
    // The pillow's own errors are not this run's to retry.
    rebuild_pillow.retry = RetryMode::Off;

    let feed = Feed::open(&config.feed)
        .await
        .map_err(|e| RebuildError::Store(e.to_string()))?;
    let store = Store::connect(&config.store)
        .await
        .map_err(|e| RebuildError::Store(e.to_string()))?;
    // Refuses while a process of the pillow runs (same pillow name), and,
    // on the embedded store (one process at a time), while any does:
    // before anything is dropped.
    checkpoint::apply(&rebuild_pillow, &feed, &store, &[], Move::Reset, false).await?;
    process::refuse_if_embedded_store_in_use(config, &store).await?;
    SqlSink::new(&store)
        .drop_table(&table)
        .await
        .map_err(|e| RebuildError::Store(e.to_string()))?;
    tracing::info!(pillow = %pillow.name, %table, "table dropped; replaying the feed from its first offset");

    let mut run_config = config.clone();
    run_config.pillows = vec![rebuild_pillow];
    run_config.admin.enabled = false;
    run_config.reload.watch = false;
    let options = ProcessOptions {
        pillow: None,
        run: RunOptions {
            until_caught_up: true,
            process_num: 0,
            num_processes: Some(1),
            progress: true,
        },
        reload_on_sighup: false,
    };
    let summary = process::run(&run_config, options, stop).await?;
    Ok(Rebuilt {
        pillow: pillow.name.clone(),
        table,
        summary,
    })
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
async fn declared_table(config: &HostConfig, manifest: &Path) -> Result<String, RebuildError> {
    let options = RuntimeOptions::from_config(&config.runtime);
    let manifest = manifest.to_owned();
    tokio::task::spawn_blocking(move || {
        let loaded = Manifest::load(&manifest).map_err(|e| e.to_string())?;
        let runtime = Runtime::new(options).map_err(|e| format!("{e:#}"))?;
        let (processor, _) = runtime.load(&loaded).map_err(|e| e.to_string())?;
        let tables: Vec<String> = processor
            .plugin()
            .info()
            .tables
            .iter()
            .map(|t| t.name.clone())
            .collect();
        match &tables[..] {
            [one] => Ok(one.clone()),
            other => Err(format!(
                "the plugin restricted to one data source declared {} tables ({}); expected one",
                other.len(),
                other.join(", ")
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
