//! Hot reload inside a running pillow: at a chunk boundary, a processor
//! whose plugin slot has a new version is swapped for it in every lane
//! (once the sinks have the tables and indices the version declares), so
//! each chunk is processed by exactly one version; a candidate starts or
//! stops running beside it at the same kind of boundary. What happened is
//! recorded as plugin events for `status`.

use super::lanes::Lane;
use crate::feed::TopicPartition;
use crate::reload::{Follower, LiveCause, SlotChange};
use crate::sink::{OutputError, SinkError, Sinks};
use crate::store::{PluginEvent, PluginEventKind};
use crate::wasm::{Plugin, Processor};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a version refused because a table of another definition
/// stands in its way is tried again.
const RETRY_REDEFINED: Duration = Duration::from_secs(2);

/// A version this pillow refused because a table it declares holds rows
/// of another definition: it goes live by itself once the table is
/// rebuilt with its definition (`pillowtop ucr rebuild`), without another
/// reload. A newer version from the slot replaces it.
pub(super) struct Waiting {
    plugin: Arc<Plugin>,
    tried: Instant,
}

/// Plugin events of one pillow process.
pub(super) struct Events {
    pub(super) pillow: String,
    pub(super) process_num: u32,
}

impl Events {
    /// An event for `processor`; a `live`, `shadow` or `shadow_ended` one
    /// records where each partition stood (`next`) when it happened.
    pub(super) fn event(
        &self,
        processor: &str,
        event: PluginEventKind,
        version: Option<String>,
        reason: Option<String>,
        next: &HashMap<TopicPartition, u64>,
    ) -> PluginEvent {
        PluginEvent {
            pillow: self.pillow.clone(),
            process_num: self.process_num,
            processor: processor.to_owned(),
            event,
            version,
            reason,
            positions: if event != PluginEventKind::Refused {
                next.iter().map(|(tp, n)| (tp.clone(), *n)).collect()
            } else {
                Default::default()
            },
            at_ms: crate::time::now_ms(),
        }
    }

    /// `live` events for the versions a pillow starts with.
    pub(super) fn started(
        &self,
        processors: &[Processor],
        next: &HashMap<TopicPartition, u64>,
    ) -> Vec<PluginEvent> {
        processors
            .iter()
            .map(|p| {
                let plugin = p.plugin();
                self.event(
                    &plugin.manifest().name,
                    PluginEventKind::Live,
                    Some(plugin.version().to_string()),
                    None,
                    next,
                )
            })
            .collect()
    }
}

/// Swap in the new versions the `followers` (one per processor) report,
/// in every lane, and start or stop the candidates they report; returns
/// the events to record. A version whose declared
/// tables or indices do not fit the sinks is refused by this pillow and
/// the running one stays; one refused only because a table must be
/// rebuilt first waits in `waiting` (one slot per processor) and is tried
/// again every few seconds.
pub(super) async fn swap_new_versions(
    followers: &mut [Follower],
    waiting: &mut [Option<Waiting>],
    lanes: &mut [Lane],
    sinks: &Sinks,
    events: &Events,
    next: &HashMap<TopicPartition, u64>,
) -> Vec<PluginEvent> {
    let mut out = Vec::new();
    for (i, follower) in followers.iter_mut().enumerate() {
        let processor = follower.slot().name().to_owned();
        for change in follower.poll() {
            match change {
                SlotChange::Refused(r) => out.push(events.event(
                    &processor,
                    PluginEventKind::Refused,
                    r.version,
                    Some(r.reason),
                    next,
                )),
                SlotChange::Shadow(candidate) => {
                    let ended = lanes[0].shadow[i]
                        .as_ref()
                        .map(|p| p.plugin().version().to_string());
                    for lane in lanes.iter_mut() {
                        lane.set_shadow(i, candidate.as_ref());
                    }
                    if let Some(version) = ended {
                        out.push(events.event(
                            &processor,
                            PluginEventKind::ShadowEnded,
                            Some(version),
                            None,
                            next,
                        ));
                    }
                    if let Some(c) = &candidate {
                        tracing::info!(pillow = %events.pillow, plugin = %processor, version = %c.version(), "candidate runs beside the live version from this chunk boundary");
                        out.push(events.event(
                            &processor,
                            PluginEventKind::Shadow,
                            Some(c.version().to_string()),
                            None,
                            next,
                        ));
                    }
                }
                SlotChange::NewVersion(plugin, cause) => {
                    waiting[i] = None;
                    let version = plugin.version().to_string();
                    match try_swap(&plugin, cause, i, lanes, sinks, events, next).await {
                        Ok(live) => out.push(live),
                        Err(e) => {
                            let reason =
                                format!("its declared tables or indices do not fit the sinks: {e}");
                            tracing::warn!(pillow = %events.pillow, plugin = %processor, %version, %reason, "plugin version refused by this pillow");
                            if matches!(e, OutputError::Sql(SinkError::Redefined { .. })) {
                                waiting[i] = Some(Waiting {
                                    plugin,
                                    tried: Instant::now(),
                                });
                            }
                            out.push(events.event(
                                &processor,
                                PluginEventKind::Refused,
                                Some(version),
                                Some(reason),
                                next,
                            ));
                        }
                    }
                }
            }
        }
        let due = waiting[i]
            .as_ref()
            .is_some_and(|w| w.tried.elapsed() >= RETRY_REDEFINED);
        if due && let Some(w) = waiting[i].as_mut() {
            // Quietly: the refusal was logged and recorded once.
            match try_swap(&w.plugin, LiveCause::Reload, i, lanes, sinks, events, next).await {
                Ok(live) => {
                    waiting[i] = None;
                    out.push(live);
                }
                Err(_) => w.tried = Instant::now(),
            }
        }
    }
    out
}

/// Swap `plugin` in as processor `i` in every lane if the sinks take
/// what it declares; the `live` event to record.
async fn try_swap(
    plugin: &Arc<Plugin>,
    cause: LiveCause,
    i: usize,
    lanes: &mut [Lane],
    sinks: &Sinks,
    events: &Events,
    next: &HashMap<TopicPartition, u64>,
) -> Result<PluginEvent, OutputError> {
    sinks.ensure_outputs(plugin.info()).await?;
    let processor = &plugin.manifest().name;
    let version = plugin.version().to_string();
    tracing::info!(pillow = %events.pillow, plugin = %processor, %version, from = %lanes[0].live[i].plugin().version(), reason = cause.reason().unwrap_or("reload"), "new plugin version live at this chunk boundary");
    for lane in lanes.iter_mut() {
        lane.live[i] = Processor::new(plugin.clone());
    }
    Ok(events.event(
        processor,
        PluginEventKind::Live,
        Some(version),
        cause.reason().map(str::to_owned),
        next,
    ))
}
