//! Hot reload: new plugin versions go live without a restart, or are refused
//! and the running version stays; and deployment beside it: a candidate
//! version shadowed, promoted, rolled back.
//!
//! [`Plugins`] holds one [`PluginSlot`] per loaded manifest (pillows that
//! list the same manifest share it). A slot holds the *live* plugin — a
//! compiled, linked, `init`-checked [`Plugin`] — and a generation number,
//! the version live before it (kept compiled, for a rollback) and possibly
//! a *candidate* running beside it ([`crate::shadow`]).
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
//! A candidate ([`deploy`]: `pillowtop plugin shadow`, or watched files
//! with `[reload] shadow = true`) passes the same checks and is staged
//! beside the live version instead; `promote` and `rollback` switch the
//! live version through the same generation, so at the same kind of chunk
//! boundary.
//!
//! Watching ([`watch`]) polls file metadata (size, modification time)
//! instead of using inotify: it behaves the same on every filesystem
//! (network mounts, container volumes, symlink swaps as in Kubernetes
//! ConfigMaps) and costs a few `stat` calls per interval. A change is
//! loaded once the files look the same on two polls in a row, so a
//! component still being written is not loaded half-way.

mod deploy;
mod slot;
mod watch;

pub use deploy::{Deploy, DeployOutcome};
pub use slot::{Follower, LiveCause, PluginSlot, ShadowPolicy, SlotChange};

use crate::fixtures;
use crate::manifest::Manifest;
use crate::metrics::{Metric, Metrics};
use crate::wasm::{self, LoadError, LoadTimings, Plugin, Runtime};
use serde::Serialize;
use slot::lock;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use watch::Fingerprint;

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
    policy: ShadowPolicy,
    /// Changed files are staged as candidates, not made live.
    shadow_changes: bool,
}

impl Plugins {
    /// An empty set: changed files go live, candidates keep 100 differences
    /// and are never promoted by themselves.
    pub fn new(runtime: Arc<Runtime>, metrics: Arc<Metrics>) -> Plugins {
        Plugins {
            runtime,
            metrics,
            slots: Mutex::new(Vec::new()),
            policy: ShadowPolicy {
                keep_diffs: 100,
                promote_after: 0,
            },
            shadow_changes: false,
        }
    }

    /// The same, with `[reload]`'s shadow settings.
    pub fn with_reload_config(mut self, config: &crate::config::ReloadConfig) -> Plugins {
        self.policy = ShadowPolicy {
            keep_diffs: config.shadow_diffs,
            promote_after: config.promote_after,
        };
        self.shadow_changes = config.shadow;
        self
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
        self.metrics.set(
            Metric::PluginInfo,
            &[
                ("plugin", &manifest.name),
                ("version", &plugin.version().to_string()),
            ],
            1.0,
        );
        let slot = Arc::new(PluginSlot::new(
            manifest.name.clone(),
            path,
            plugin,
            seen,
            self.policy,
            self.metrics.clone(),
        ));
        lock(&self.slots).push(slot.clone());
        Ok((slot, Some(timings)))
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
        let outcome = match self.candidate(slot, &slot.manifest_path, &live) {
            Ok(None) => ReloadOutcome::Unchanged {
                plugin: slot.name.clone(),
                version: live_version,
            },
            Ok(Some(plugin)) => {
                let version = plugin.version().to_string();
                *lock(&slot.refusal) = None;
                slot.set_live(plugin, LiveCause::Reload);
                ReloadOutcome::Live {
                    plugin: slot.name.clone(),
                    version,
                    previous: live_version,
                    load_ms: started.elapsed().as_secs_f64() * 1e3,
                }
            }
            Err(refusal) => {
                slot.refuse(refusal.clone());
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

    /// The plugin in the files of `manifest_path` (a version of the
    /// slot's plugin), checked; `None` if it is the live version.
    fn candidate(
        &self,
        slot: &PluginSlot,
        manifest_path: &Path,
        live: &Plugin,
    ) -> Result<Option<Arc<Plugin>>, Refusal> {
        let refuse = |version: Option<String>, reason: String| Refusal {
            version,
            reason,
            at_ms: crate::time::now_ms(),
        };
        let manifest = Manifest::load(manifest_path).map_err(|e| refuse(None, e.to_string()))?;
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
}
