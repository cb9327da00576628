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
type Stamp = Option<(u64, SystemTime)>;
type FileStamp = (PathBuf, Stamp);

/// What the watcher compares between polls.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Fingerprint(Vec<FileStamp>);

/// The files a manifest names, read once per version of the manifest:
/// each with whether it may be a folder whose files count too.
#[derive(Debug, Default)]
pub(super) struct Targets {
    manifest: Stamp,
    paths: Vec<(PathBuf, bool)>,
}

fn stamp(p: &Path) -> Stamp {
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
}

impl Targets {
    /// The component, the `[config_files]` and the fixture folder of the
    /// manifest at `manifest_path` (none if it does not load).
    fn of(manifest_path: &Path) -> Targets {
        let manifest = stamp(manifest_path);
        let mut paths = Vec::new();
        if let Ok(m) = Manifest::load(manifest_path) {
            paths.push((m.component, false));
            paths.extend(m.config_files.into_iter().map(|p| (p, true)));
            paths.extend(m.fixtures.map(|p| (p, true)));
        }
        Targets { manifest, paths }
    }
}

impl Fingerprint {
    /// Stamp the manifest, the component it names, its `[config_files]`
    /// and its fixture files (a folder: itself, for files added or
    /// removed, and each file in it).
    pub(super) fn of(manifest_path: &Path) -> Fingerprint {
        Fingerprint::with(manifest_path, &Targets::of(manifest_path))
    }

    /// As [`Fingerprint::of`], with the manifest's files already read.
    fn with(manifest_path: &Path, targets: &Targets) -> Fingerprint {
        let mut files = vec![(manifest_path.to_owned(), targets.manifest)];
        for (path, folder) in &targets.paths {
            files.push((path.clone(), stamp(path)));
            // A folder and every file in it: a file edited in place changes
            // its own stamp, not the folder's.
            if *folder && let Ok(entries) = std::fs::read_dir(path) {
                let mut paths: Vec<PathBuf> =
                    entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
                paths.sort();
                files.extend(paths.into_iter().map(|p| {
                    let s = stamp(&p);
                    (p, s)
                }));
            }
        }
        Fingerprint(files)
    }

    /// The fingerprint of `manifest_path` now, reading the manifest again
    /// only when its own stamp changed since `targets` were read.
    fn now(manifest_path: &Path, targets: &mut Targets) -> Fingerprint {
        if stamp(manifest_path) != targets.manifest {
            *targets = Targets::of(manifest_path);
        }
        Fingerprint::with(manifest_path, targets)
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
                    // A poll only stats files; it parses a manifest only
                    // when that changed.
                    let now = Fingerprint::now(&slot.manifest_path, &mut lock(&slot.watched));
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
