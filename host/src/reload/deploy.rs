//! Deploying a version without guessing: a candidate shadowed beside the
//! live version, promoted when it is right, and the previous version
//! brought back if it was not. Each switch goes through the slot's
//! generation, so pillows make it at a chunk boundary as for a reload.

use super::slot::LiveCause;
use super::{Fingerprint, PluginSlot, Plugins, Refusal, lock};
use crate::metrics::Metric;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// What a deployment command did.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum DeployOutcome {
    /// A candidate runs beside the live version.
    Shadowing {
        /// Plugin name.
        plugin: String,
        /// The candidate.
        version: String,
        /// The live version it is compared with.
        live: String,
        /// Milliseconds spent loading and checking it.
        load_ms: f64,
    },
    /// The candidate was refused; nothing changed.
    Refused {
        /// Plugin name.
        plugin: String,
        /// The live version.
        live: String,
        /// Why.
        #[serde(flatten)]
        refusal: Refusal,
    },
    /// The candidate's files hold the live version: nothing to compare.
    SameAsLive {
        /// Plugin name.
        plugin: String,
        /// The live version.
        version: String,
    },
    /// The candidate stopped.
    ShadowStopped {
        /// Plugin name.
        plugin: String,
        /// The candidate that stopped.
        version: String,
    },
    /// A version was made live (promoted or rolled back); pillows switch
    /// at their next chunk boundary.
    Switched {
        /// Plugin name.
        plugin: String,
        /// The version now live.
        version: String,
        /// The version it replaces (a rollback brings it back).
        previous: String,
        /// "promoted" or "rolled back".
        how: String,
    },
    /// Nothing to do, and why.
    Nothing {
        /// Plugin name.
        plugin: String,
        /// Why (no candidate to promote, no previous version, ...).
        reason: String,
    },
}

impl DeployOutcome {
    /// Whether the command did what was asked.
    pub fn succeeded(&self) -> bool {
        !matches!(
            self,
            DeployOutcome::Refused { .. } | DeployOutcome::Nothing { .. }
        )
    }
}

impl std::fmt::Display for DeployOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeployOutcome::Shadowing {
                plugin,
                version,
                live,
                load_ms,
            } => write!(
                f,
                "{plugin}: {version} runs beside {live} on every change, its actions compared and not written (loaded and checked in {load_ms:.0} ms); see `pillowtop plugin diff {plugin}`"
            ),
            DeployOutcome::Refused {
                plugin,
                live,
                refusal,
            } => write!(
                f,
                "{plugin}: refused {}: {}; {live} keeps running alone",
                refusal
                    .version
                    .as_deref()
                    .unwrap_or("the candidate's files"),
                refusal.reason
            ),
            DeployOutcome::SameAsLive { plugin, version } => write!(
                f,
                "{plugin}: the candidate is {version}, the live version itself; nothing to compare"
            ),
            DeployOutcome::ShadowStopped { plugin, version } => {
                write!(f, "{plugin}: candidate {version} stopped")
            }
            DeployOutcome::Switched {
                plugin,
                version,
                previous,
                how,
            } => write!(
                f,
                "{plugin}: {how}: {version} is live from each pillow's next chunk boundary (replaces {previous})"
            ),
            DeployOutcome::Nothing { plugin, reason } => write!(f, "{plugin}: {reason}"),
        }
    }
}

impl Plugins {
    /// Stage a candidate beside `slot`'s live version: the plugin in the
    /// files of `manifest_path` (the slot's own files when `None`), with the
    /// same checks as a reload. Blocking: call from a blocking thread.
    pub fn shadow(&self, slot: &PluginSlot, manifest_path: Option<&Path>) -> DeployOutcome {
        let _one_at_a_time = lock(&slot.reloading);
        let started = Instant::now();
        let path = manifest_path.unwrap_or(&slot.manifest_path);
        if manifest_path.is_none() {
            *lock(&slot.seen) = Fingerprint::of(&slot.manifest_path);
        }
        let (live, _) = slot.live();
        let outcome = match self.candidate(slot, path, &live) {
            Ok(None) => DeployOutcome::SameAsLive {
                plugin: slot.name.clone(),
                version: live.version().to_string(),
            },
            Ok(Some(candidate)) => {
                let version = candidate.version().to_string();
                *lock(&slot.refusal) = None;
                slot.set_shadow(Some(candidate));
                DeployOutcome::Shadowing {
                    plugin: slot.name.clone(),
                    version,
                    live: live.version().to_string(),
                    load_ms: started.elapsed().as_secs_f64() * 1e3,
                }
            }
            Err(refusal) => {
                slot.refuse(refusal.clone());
                DeployOutcome::Refused {
                    plugin: slot.name.clone(),
                    live: live.version().to_string(),
                    refusal,
                }
            }
        };
        let label = match &outcome {
            DeployOutcome::Shadowing { .. } => "shadow",
            DeployOutcome::Refused { .. } => "refused",
            _ => "unchanged",
        };
        self.metrics.add(
            Metric::PluginReloadsTotal,
            &[("plugin", &slot.name), ("outcome", label)],
            1.0,
        );
        tracing::info!(plugin = %slot.name, %outcome, "plugin candidate");
        outcome
    }

    /// Stop `slot`'s candidate.
    pub fn stop_shadow(&self, slot: &PluginSlot) -> DeployOutcome {
        match slot.set_shadow(None) {
            Some(old) => DeployOutcome::ShadowStopped {
                plugin: slot.name.clone(),
                version: old.version().to_string(),
            },
            None => DeployOutcome::Nothing {
                plugin: slot.name.clone(),
                reason: "no candidate runs".into(),
            },
        }
    }

    /// Make `slot`'s candidate live.
    pub fn promote(&self, slot: &PluginSlot) -> DeployOutcome {
        let outcome = match slot.promote() {
            Some((candidate, replaced)) => DeployOutcome::Switched {
                plugin: slot.name.clone(),
                version: candidate.version().to_string(),
                previous: replaced.version().to_string(),
                how: "promoted".into(),
            },
            None => DeployOutcome::Nothing {
                plugin: slot.name.clone(),
                reason: "no candidate to promote; start one with `pillowtop plugin shadow NAME MANIFEST`".into(),
            },
        };
        tracing::info!(plugin = %slot.name, %outcome, "plugin promote");
        outcome
    }

    /// Bring back the version live before `slot`'s live one.
    pub fn rollback(&self, slot: &PluginSlot) -> DeployOutcome {
        let outcome = match slot.previous() {
            Some(previous) => {
                let replaced = slot.set_live(previous.clone(), LiveCause::RolledBack);
                DeployOutcome::Switched {
                    plugin: slot.name.clone(),
                    version: previous.version().to_string(),
                    previous: replaced.version().to_string(),
                    how: "rolled back".into(),
                }
            }
            None => DeployOutcome::Nothing {
                plugin: slot.name.clone(),
                reason: "no previous version: this host process has run only the live one".into(),
            },
        };
        tracing::info!(plugin = %slot.name, %outcome, "plugin rollback");
        outcome
    }

    /// Apply `command` to the slots named `name`, off the async runtime.
    pub async fn deploy_named(
        self: &std::sync::Arc<Self>,
        name: &str,
        command: Deploy,
    ) -> Vec<DeployOutcome> {
        let slots: Vec<_> = self
            .slots()
            .into_iter()
            .filter(|s| s.name == name)
            .collect();
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            slots
                .iter()
                .map(|s| match &command {
                    Deploy::Shadow { manifest } => this.shadow(s, Some(manifest)),
                    Deploy::StopShadow => this.stop_shadow(s),
                    Deploy::Promote => this.promote(s),
                    Deploy::Rollback => this.rollback(s),
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }
}

/// A deployment command for [`Plugins::deploy_named`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Deploy {
    /// Shadow the plugin in this manifest (a path on the host's machine).
    Shadow {
        /// The candidate's manifest.
        manifest: std::path::PathBuf,
    },
    /// Stop the candidate.
    StopShadow,
    /// Make the candidate live.
    Promote,
    /// Bring the previous version back.
    Rollback,
}
