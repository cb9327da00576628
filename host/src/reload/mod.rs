//! Hot reload: new plugin versions go live without a restart, or are refused
//! and the running version stays.
//!
//! [`Plugins`] holds one [`PluginSlot`] per loaded manifest (pillows that
//! list the same manifest share it). A slot holds the *live* plugin — a
//! compiled, linked, `init`-checked [`Plugin`] — and a generation number.
//!
//! A reload (a watched file changed, SIGHUP, or `pillowtop plugin reload`)
//! runs off the hot path, on a blocking thread: read the manifest, compile
//! (or load from the compile cache), instantiate, `init`, check the
//! declaration against the capabilities, then run the manifest's golden
//! fixtures. Only a version that passes all of that is staged (the slot's
//! generation goes up). Each pillow notices the new generation at its next
//! chunk boundary and swaps its processor there, for all its partitions at
//! once, so every chunk is processed by exactly one version. A refused
//! version changes nothing but the slot's refusal, which status, the log
//! and the `pillowtop_plugin_refused` metric report.
//!
//! Watching polls file metadata (size, modification time) instead of
//! using inotify: it behaves the same on every filesystem (network mounts,
//! container volumes, symlink swaps as in Kubernetes ConfigMaps) and costs a
//! few `stat` calls per interval. A change is loaded once the files look the
//! same on two polls in a row, so a component still being written is not
//! loaded half-way.

use crate::fixtures;
use crate::manifest::Manifest;
use crate::metrics::{Metric, Metrics};
use crate::wasm::{self, LoadError, LoadTimings, Plugin, Processor, Runtime};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// Why a version was refused: what was tried and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Refusal {
    /// `version+hash` of the refused files, when they could be read.
    pub version: Option<String>,
    /// What failed, precisely (compile, init, declaration, fixtures).
    pub reason: String,
    /// When, epoch ms.
    pub at_ms: i64,
}

/// The result of one reload attempt.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// A new version is staged; pillows swap to it at their next chunk boundary.
    Live {
        /// Plugin name.
        plugin: String,
        /// The new version.
        version: String,
        /// The version it replaces.
        previous: String,
        /// Milliseconds spent compiling (or loading from cache), instantiating,
        /// initialising and running fixtures.
        load_ms: f64,
    },
    /// The files hold the version already live.
    Unchanged {
        /// Plugin name.
        plugin: String,
        /// The live version.
        version: String,
    },
    /// The new files were refused; the live version keeps running.
    Refused {
        /// Plugin name.
        plugin: String,
        /// The version that keeps running.
        live: String,
        /// Why.
        #[serde(flatten)]
        refusal: Refusal,
    },
}

impl ReloadOutcome {
    fn label(&self) -> &'static str {
        match self {
            ReloadOutcome::Live { .. } => "live",
            ReloadOutcome::Unchanged { .. } => "unchanged",
            ReloadOutcome::Refused { .. } => "refused",
        }
    }
}

impl std::fmt::Display for ReloadOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadOutcome::Live {
                plugin,
                version,
                previous,
                load_ms,
            } => write!(
                f,
                "{plugin}: {version} is live (replaces {previous}; loaded and checked in {load_ms:.0} ms)"
            ),
            ReloadOutcome::Unchanged { plugin, version } => {
                write!(f, "{plugin}: unchanged, {version} is live")
            }
            ReloadOutcome::Refused {
                plugin,
                live,
                refusal,
            } => write!(
                f,
                "{plugin}: refused {}: {}; {live} keeps running",
                refusal.version.as_deref().unwrap_or("the new files"),
                refusal.reason
            ),
        }
    }
}

/// The state of a watched file: size and modification time (None: missing).
type FileStamp = (PathBuf, Option<(u64, SystemTime)>);

/// What the watcher compares between polls.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Fingerprint(Vec<FileStamp>);

impl Fingerprint {
    /// Stamp the manifest, the component it names, its `[config_files]`
    /// and its fixture files (a folder: itself, for files added or
    /// removed, and each file in it).
    fn of(manifest_path: &Path) -> Fingerprint {
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

/// One plugin manifest's live version, shared by every pillow that lists it.
pub struct PluginSlot {
    name: String,
    manifest_path: PathBuf,
    live: Mutex<Arc<Plugin>>,
    refusal: Mutex<Option<Refusal>>,
    /// Goes up each time a new version is staged.
    generation: AtomicU64,
    /// Goes up each time a version is refused.
    refusals: AtomicU64,
    /// The files as of the last load attempt.
    seen: Mutex<Fingerprint>,
    /// Serialises reloads of this slot.
    reloading: Mutex<()>,
}

impl PluginSlot {
    /// Plugin name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Manifest path.
    pub fn manifest_path(&self) -> &Path {
        &self.manifest_path
    }

    /// The live plugin and its generation.
    pub fn live(&self) -> (Arc<Plugin>, u64) {
        let live = lock(&self.live).clone();
        (live, self.generation.load(Ordering::Acquire))
    }

    /// The current generation (cheap; checked at every chunk boundary).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The last refusal (if any) and how many refusals there were.
    pub fn refusal(&self) -> (Option<Refusal>, u64) {
        let r = lock(&self.refusal).clone();
        (r, self.refusals.load(Ordering::Acquire))
    }

    /// How many refusals there were (cheap).
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Acquire)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data behind these locks is replaced whole, never left half-done,
    // so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a plugin could not be loaded at startup.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    /// The plugin failed to load.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Its fixtures fail.
    #[error("plugin {plugin}: {message}")]
    Fixtures {
        /// Plugin.
        plugin: String,
        /// Which fixtures fail and how.
        message: String,
    },
}

/// Every plugin slot of a host process, the runtime that loads them and the
/// metrics they report to.
pub struct Plugins {
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    slots: Mutex<Vec<Arc<PluginSlot>>>,
}

impl Plugins {
    /// An empty set.
    pub fn new(runtime: Arc<Runtime>, metrics: Arc<Metrics>) -> Plugins {
        Plugins {
            runtime,
            metrics,
            slots: Mutex::new(Vec::new()),
        }
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Every slot.
    pub fn slots(&self) -> Vec<Arc<PluginSlot>> {
        lock(&self.slots).clone()
    }

    /// The slot of `manifest_path`, loading the plugin if no pillow has yet.
    /// At startup the fixtures are not run (`plugin check` does that);
    /// reloads run them.
    ///
    /// Slow on a compile-cache miss: call from a blocking thread.
    ///
    /// # Errors
    ///
    /// When the manifest is invalid or the plugin does not load.
    pub fn load(
        &self,
        manifest_path: &Path,
    ) -> Result<(Arc<PluginSlot>, Option<LoadTimings>), StartError> {
        let path = std::fs::canonicalize(manifest_path).unwrap_or_else(|_| manifest_path.into());
        if let Some(slot) = lock(&self.slots).iter().find(|s| s.manifest_path == path) {
            return Ok((slot.clone(), None));
        }
        // Stamp before reading, so a write racing the load is seen as a change.
        let seen = Fingerprint::of(&path);
        let manifest = Manifest::load(&path)?;
        let (processor, timings) = self.runtime.load(&manifest)?;
        let plugin = processor.plugin().clone();
        self.set_live_metric(&manifest.name, None, &plugin.version().to_string());
        let slot = Arc::new(PluginSlot {
            name: manifest.name.clone(),
            manifest_path: path,
            live: Mutex::new(plugin),
            refusal: Mutex::new(None),
            generation: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            seen: Mutex::new(seen),
            reloading: Mutex::new(()),
        });
        lock(&self.slots).push(slot.clone());
        Ok((slot, Some(timings)))
    }

    fn set_live_metric(&self, plugin: &str, previous: Option<&str>, version: &str) {
        if let Some(previous) = previous {
            self.metrics.remove_matching(
                Metric::PluginInfo,
                &[("plugin", plugin), ("version", previous)],
            );
        }
        self.metrics.set(
            Metric::PluginInfo,
            &[("plugin", plugin), ("version", version)],
            1.0,
        );
    }

    /// Load the slot's files now and stage them if they are a new version
    /// that compiles, initialises, declares only what the manifest grants
    /// and passes its fixtures. Blocking: call from a blocking thread.
    pub fn reload(&self, slot: &PluginSlot) -> ReloadOutcome {
        let _one_at_a_time = lock(&slot.reloading);
        let started = Instant::now();
        *lock(&slot.seen) = Fingerprint::of(&slot.manifest_path);
        let (live, _) = slot.live();
        let live_version = live.version().to_string();
        let outcome = match self.candidate(slot, &live) {
            Ok(None) => ReloadOutcome::Unchanged {
                plugin: slot.name.clone(),
                version: live_version,
            },
            Ok(Some(plugin)) => {
                let version = plugin.version().to_string();
                *lock(&slot.live) = plugin;
                *lock(&slot.refusal) = None;
                slot.generation.fetch_add(1, Ordering::AcqRel);
                self.set_live_metric(&slot.name, Some(&live_version), &version);
                ReloadOutcome::Live {
                    plugin: slot.name.clone(),
                    version,
                    previous: live_version,
                    load_ms: started.elapsed().as_secs_f64() * 1e3,
                }
            }
            Err(refusal) => {
                *lock(&slot.refusal) = Some(refusal.clone());
                slot.refusals.fetch_add(1, Ordering::AcqRel);
                ReloadOutcome::Refused {
                    plugin: slot.name.clone(),
                    live: live_version,
                    refusal,
                }
            }
        };
        let refused = matches!(outcome, ReloadOutcome::Refused { .. });
        if !matches!(outcome, ReloadOutcome::Unchanged { .. }) {
            self.metrics.set(
                Metric::PluginRefused,
                &[("plugin", &slot.name)],
                if refused { 1.0 } else { 0.0 },
            );
        }
        self.metrics.add(
            Metric::PluginReloadsTotal,
            &[("plugin", &slot.name), ("outcome", outcome.label())],
            1.0,
        );
        if refused {
            tracing::warn!(plugin = %slot.name, %outcome, "plugin version refused");
        } else {
            tracing::info!(plugin = %slot.name, %outcome, "plugin reload");
        }
        outcome
    }

    /// The new plugin in the slot's files, `None` if it is the live version.
    fn candidate(&self, slot: &PluginSlot, live: &Plugin) -> Result<Option<Arc<Plugin>>, Refusal> {
        let refuse = |version: Option<String>, reason: String| Refusal {
            version,
            reason,
            at_ms: crate::time::now_ms(),
        };
        let manifest =
            Manifest::load(&slot.manifest_path).map_err(|e| refuse(None, e.to_string()))?;
        if manifest.name != slot.name {
            return Err(refuse(
                None,
                format!(
                    "the manifest now names the plugin {:?}, not {:?}; renaming a plugin needs a restart",
                    manifest.name, slot.name
                ),
            ));
        }
        let version =
            wasm::plugin_version(&manifest, self.runtime.max_component_bytes()).map_err(|e| {
                refuse(
                    None,
                    format!(
                        "cannot read component {}: {e}",
                        manifest.component.display()
                    ),
                )
            })?;
        if &version == live.version() {
            return Ok(None);
        }
        let v = Some(version.to_string());
        let (mut processor, _) = self
            .runtime
            .load(&manifest)
            .map_err(|e| refuse(v.clone(), e.to_string()))?;
        if let Some(dir) = &manifest.fixtures {
            let loaded = fixtures::load(dir).map_err(|e| refuse(v.clone(), e.to_string()))?;
            let failed: Vec<String> = loaded
                .iter()
                .map(|(name, f)| fixtures::run(&mut processor, name, f))
                .filter_map(|r| r.failure.map(|why| format!("{}: {why}", r.name)))
                .collect();
            if !failed.is_empty() {
                return Err(refuse(
                    v,
                    format!(
                        "{} of {} golden fixtures fail: {}",
                        failed.len(),
                        loaded.len(),
                        failed.join("; ")
                    ),
                ));
            }
        }
        Ok(Some(processor.plugin().clone()))
    }

    /// Reload every slot named `name` (every slot when `None`), off the
    /// async runtime.
    pub async fn reload_named(self: &Arc<Self>, name: Option<&str>) -> Vec<ReloadOutcome> {
        let slots: Vec<_> = self
            .slots()
            .into_iter()
            .filter(|s| name.is_none_or(|n| s.name == n))
            .collect();
        let this = self.clone();
        tokio::task::spawn_blocking(move || slots.iter().map(|s| this.reload(s)).collect())
            .await
            .unwrap_or_default()
    }

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
                        this.reload(&slot);
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

/// A pillow's view of one slot: which generation its processor runs and
/// which refusals it has reported.
pub struct Follower {
    slot: Arc<PluginSlot>,
    generation: u64,
    refusals: u64,
}

/// What changed in a slot since a pillow last looked.
pub enum SlotChange {
    /// A new version to swap in.
    NewVersion(Arc<Plugin>),
    /// A version was refused.
    Refused(Refusal),
}

impl Follower {
    /// A processor for the live version, and its follower.
    pub fn start(slot: Arc<PluginSlot>) -> (Processor, Follower) {
        let (plugin, generation) = slot.live();
        let follower = Follower {
            generation,
            refusals: slot.refusals(),
            slot,
        };
        (Processor::new(plugin), follower)
    }

    /// The slot.
    pub fn slot(&self) -> &Arc<PluginSlot> {
        &self.slot
    }

    /// What changed since the last call (cheap when nothing did: two atomic loads).
    pub fn poll(&mut self) -> Vec<SlotChange> {
        let mut out = Vec::new();
        if self.slot.refusals() != self.refusals {
            let (refusal, n) = self.slot.refusal();
            self.refusals = n;
            if let Some(r) = refusal {
                out.push(SlotChange::Refused(r));
            }
        }
        if self.slot.generation() != self.generation {
            let (plugin, generation) = self.slot.live();
            self.generation = generation;
            out.push(SlotChange::NewVersion(plugin));
        }
        out
    }
}
