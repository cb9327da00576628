//! One plugin manifest's versions in a host process — live, previous
//! (kept compiled for a rollback) and candidate (shadowed) — and each
//! pillow's view of them ([`Follower`]).

use super::Refusal;
use super::watch::{Fingerprint, Targets};
use crate::metrics::{Metric, Metrics};
use crate::shadow::Tally;
use crate::wasm::{Plugin, Processor};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Why the live version last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveCause {
    /// Loaded at startup or by a reload.
    Reload,
    /// The candidate was promoted (`pillowtop plugin promote`, or the
    /// automatic policy).
    Promoted,
    /// The previous version came back (`pillowtop plugin rollback`).
    RolledBack,
}

impl LiveCause {
    /// The reason a switch event records, if any.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            LiveCause::Reload => None,
            LiveCause::Promoted => Some("promoted from shadow"),
            LiveCause::RolledBack => Some("rolled back to the previous version"),
        }
    }
}

/// What a shadow run does beyond comparing (from `[reload]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShadowPolicy {
    /// Differences kept per processor and candidate version.
    pub keep_diffs: u32,
    /// Promote the candidate by itself after this many changes compared
    /// in this host process with no difference and no failure (0: never).
    pub promote_after: u64,
}

/// The versions of one slot, changed together under one lock.
pub(super) struct Versions {
    pub(super) live: Arc<Plugin>,
    pub(super) cause: LiveCause,
    /// The version live before this one, kept compiled for a rollback.
    pub(super) previous: Option<Arc<Plugin>>,
    /// The candidate running beside the live version, if any.
    pub(super) shadow: Option<Arc<Plugin>>,
    /// What the candidate did so far in this process (every pillow).
    pub(super) tally: Tally,
}

/// One plugin manifest's live version, shared by every pillow that lists it.
pub struct PluginSlot {
    pub(super) name: String,
    pub(super) manifest_path: PathBuf,
    pub(super) versions: Mutex<Versions>,
    pub(super) refusal: Mutex<Option<Refusal>>,
    /// Goes up each time a new live version is staged.
    pub(super) generation: AtomicU64,
    /// Goes up each time the candidate changes (set, promoted, stopped).
    pub(super) shadow_generation: AtomicU64,
    /// Goes up each time a version is refused.
    pub(super) refusals: AtomicU64,
    /// The files as of the last load attempt.
    pub(super) seen: Mutex<Fingerprint>,
    /// The files the manifest names, kept by the watcher between polls.
    pub(super) watched: Mutex<Targets>,
    /// Serialises reloads of this slot.
    pub(super) reloading: Mutex<()>,
    pub(super) policy: ShadowPolicy,
    pub(super) metrics: Arc<Metrics>,
}

impl PluginSlot {
    pub(super) fn new(
        name: String,
        manifest_path: PathBuf,
        live: Arc<Plugin>,
        seen: Fingerprint,
        policy: ShadowPolicy,
        metrics: Arc<Metrics>,
    ) -> PluginSlot {
        PluginSlot {
            name,
            manifest_path,
            versions: Mutex::new(Versions {
                live,
                cause: LiveCause::Reload,
                previous: None,
                shadow: None,
                tally: Tally::default(),
            }),
            refusal: Mutex::new(None),
            generation: AtomicU64::new(0),
            shadow_generation: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            seen: Mutex::new(seen),
            watched: Mutex::default(),
            reloading: Mutex::new(()),
            policy,
            metrics,
        }
    }

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
        let versions = lock(&self.versions);
        (
            versions.live.clone(),
            self.generation.load(Ordering::Acquire),
        )
    }

    /// The candidate running beside the live version, if any.
    pub fn shadow(&self) -> Option<Arc<Plugin>> {
        lock(&self.versions).shadow.clone()
    }

    /// The version a rollback would bring back, if any.
    pub fn previous(&self) -> Option<Arc<Plugin>> {
        lock(&self.versions).previous.clone()
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

    /// Record that a version of this plugin was refused.
    pub(super) fn refuse(&self, refusal: Refusal) {
        *lock(&self.refusal) = Some(refusal);
        self.refusals.fetch_add(1, Ordering::AcqRel);
    }

    /// The shadow policy.
    pub fn policy(&self) -> ShadowPolicy {
        self.policy
    }

    /// Make `plugin` live (for `cause`); the version it replaces becomes
    /// the previous one. Returns that version.
    pub(super) fn set_live(&self, plugin: Arc<Plugin>, cause: LiveCause) -> Arc<Plugin> {
        let version = plugin.version().to_string();
        let replaced = {
            let mut v = lock(&self.versions);
            let replaced = std::mem::replace(&mut v.live, plugin);
            v.previous = Some(replaced.clone());
            v.cause = cause;
            replaced
        };
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.metrics.remove_matching(
            Metric::PluginInfo,
            &[
                ("plugin", &self.name),
                ("version", &replaced.version().to_string()),
            ],
        );
        self.metrics.set(
            Metric::PluginInfo,
            &[("plugin", &self.name), ("version", &version)],
            1.0,
        );
        replaced
    }

    /// Set (or with `None` stop) the candidate; its counts start anew.
    /// Returns the candidate it replaces.
    pub(super) fn set_shadow(&self, plugin: Option<Arc<Plugin>>) -> Option<Arc<Plugin>> {
        let replaced = {
            let mut v = lock(&self.versions);
            v.tally = Tally::default();
            std::mem::replace(&mut v.shadow, plugin.clone())
        };
        self.shadow_generation.fetch_add(1, Ordering::AcqRel);
        if let Some(old) = &replaced {
            self.metrics.remove_matching(
                Metric::PluginShadowInfo,
                &[
                    ("plugin", &self.name),
                    ("version", &old.version().to_string()),
                ],
            );
        }
        if let Some(new) = &plugin {
            self.metrics.set(
                Metric::PluginShadowInfo,
                &[
                    ("plugin", &self.name),
                    ("version", &new.version().to_string()),
                ],
                1.0,
            );
        }
        replaced
    }

    /// Make the candidate live (it stops being a candidate); the live
    /// version becomes the previous one. `None` when there is no candidate.
    pub(super) fn promote(&self) -> Option<(Arc<Plugin>, Arc<Plugin>)> {
        let candidate = self.shadow()?;
        self.set_shadow(None);
        let replaced = self.set_live(candidate.clone(), LiveCause::Promoted);
        Some((candidate, replaced))
    }

    /// Add what a pillow's chunk found of `candidate`; promotes it when
    /// the policy says so. Returns whether it did.
    pub fn add_shadow_tally(&self, candidate: &str, tally: &Tally) -> bool {
        let due = {
            let mut v = lock(&self.versions);
            let current = v
                .shadow
                .as_ref()
                .is_some_and(|s| s.version().to_string() == candidate);
            if !current {
                return false;
            }
            v.tally.add(tally);
            let t = &v.tally;
            self.policy.promote_after > 0
                && t.changes() >= self.policy.promote_after
                && t.differ == 0
                && t.failures() == 0
        };
        if due && let Some((candidate, replaced)) = self.promote() {
            tracing::info!(plugin = %self.name, version = %candidate.version(), previous = %replaced.version(), promote_after = self.policy.promote_after, "candidate promoted by the policy: no difference and no failure");
            return true;
        }
        false
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data behind these locks is replaced whole, never left half-done,
    // so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A pillow's view of one slot: which generation its processor runs and
/// which refusals it has reported.
pub struct Follower {
    slot: Arc<PluginSlot>,
    generation: u64,
    shadow_generation: u64,
    refusals: u64,
}

/// What changed in a slot since a pillow last looked.
pub enum SlotChange {
    /// A new version to swap in, and why.
    NewVersion(Arc<Plugin>, LiveCause),
    /// A version was refused.
    Refused(Refusal),
    /// The candidate to run beside the live version (`None`: stop it).
    Shadow(Option<Arc<Plugin>>),
}

impl Follower {
    /// A processor for the live version, and its follower (which reports
    /// a running candidate at its first poll).
    pub fn start(slot: Arc<PluginSlot>) -> (Processor, Follower) {
        let (plugin, generation) = slot.live();
        let follower = Follower {
            generation,
            // One behind: a candidate already running is reported at once.
            shadow_generation: slot.shadow_generation.load(Ordering::Acquire)
                - u64::from(slot.shadow().is_some()),
            refusals: slot.refusals(),
            slot,
        };
        (Processor::new(plugin), follower)
    }

    /// The slot.
    pub fn slot(&self) -> &Arc<PluginSlot> {
        &self.slot
    }

    /// What changed since the last call (cheap when nothing did: three
    /// atomic loads).
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
            let cause = lock(&self.slot.versions).cause;
            out.push(SlotChange::NewVersion(plugin, cause));
        }
        let shadow_generation = self.slot.shadow_generation.load(Ordering::Acquire);
        if shadow_generation != self.shadow_generation {
            self.shadow_generation = shadow_generation;
            out.push(SlotChange::Shadow(self.slot.shadow()));
        }
        out
    }
}
