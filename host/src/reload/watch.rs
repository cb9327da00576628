//! Watching plugin files: polling their metadata and reloading (or,
//! with `[reload] shadow = true`, shadowing) a slot whose files changed
//! and then held still.

use super::Plugins;
use super::slot::lock;
use crate::manifest::Manifest;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// The state of a watched file: size and modification time (None: missing).
type FileStamp = (PathBuf, Option<(u64, SystemTime)>);

/// What the watcher compares between polls.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Fingerprint(Vec<FileStamp>);

impl Fingerprint {
    /// Stamp the manifest, the component it names, its `[config_files]`
    /// and its fixture files (a folder: itself, for files added or
    /// removed, and each file in it).
    pub(super) fn of(manifest_path: &Path) -> Fingerprint {
        let stamp = |p: &Path| {
            let meta = std::fs::metadata(p).ok();
            (
                p.to_owned(),
                meta.map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH))),
            )
        };
        // A folder and every file in it: a file edited in place changes
        // its own stamp, not the folder's.
        let with_files = |dir: &Path, files: &mut Vec<_>| {
            files.push(stamp(dir));
            if let Ok(entries) = std::fs::read_dir(dir) {
                let mut paths: Vec<PathBuf> =
                    entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
                paths.sort();
                files.extend(paths.iter().map(|p| stamp(p)));
            }
        };
        let mut files = vec![stamp(manifest_path)];
        if let Ok(m) = Manifest::load(manifest_path) {
            files.push(stamp(&m.component));
            for path in &m.config_files {
                with_files(path, &mut files);
            }
            if let Some(dir) = &m.fixtures {
                with_files(dir, &mut files);
            }
        }
        Fingerprint(files)
    }
}

impl Plugins {
    /// Poll every slot's files each `interval` until `shutdown`; reload a
    /// slot whose files changed and then held still for one interval.
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut pending: Vec<(PathBuf, Fingerprint)> = Vec::new();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let this = self.clone();
            let previous = std::mem::take(&mut pending);
            // Stat calls and manifest parsing touch the disk: not on the
            // async workers.
            let work = tokio::task::spawn_blocking(move || {
                let mut still_pending = Vec::new();
                for slot in this.slots() {
                    let now = Fingerprint::of(&slot.manifest_path);
                    if *lock(&slot.seen) == now {
                        continue;
                    }
                    let stable = previous
                        .iter()
                        .any(|(p, f)| *p == slot.manifest_path && *f == now);
                    if stable {
                        if this.shadow_changes {
                            this.shadow(&slot, None);
                        } else {
                            this.reload(&slot);
                        }
                    } else {
                        still_pending.push((slot.manifest_path.clone(), now));
                    }
                }
                still_pending
            });
            pending = work.await.unwrap_or_default();
        }
    }
}
