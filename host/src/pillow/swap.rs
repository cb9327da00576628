//! Hot reload inside a running pillow: at a chunk boundary, a processor
//! whose plugin slot has a new version is swapped for it in every lane
//! (once the sinks have the tables and indices the version declares), so
//! each chunk is processed by exactly one version. What happened is
//! recorded as plugin events for `status`.

use crate::feed::TopicPartition;
use crate::reload::{Follower, SlotChange};
use crate::sink::Sinks;
use crate::store::{PluginEvent, PluginEventKind};
use crate::wasm::Processor;
use std::collections::HashMap;

/// Plugin events of one pillow process.
pub(super) struct Events {
    pub(super) pillow: String,
    pub(super) process_num: u32,
}

impl Events {
    /// An event for `processor`; a `live` one records where each
    /// partition stood (`next`) when the version took over.
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
            positions: if event == PluginEventKind::Live {
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
/// in every lane; returns the events to record. A version whose declared
/// tables or indices do not fit the sinks is refused by this pillow and
/// the running one stays.
pub(super) async fn swap_new_versions(
    followers: &mut [Follower],
    lanes: &mut [Vec<Processor>],
    sinks: &Sinks,
    events: &Events,
    next: &HashMap<TopicPartition, u64>,
) -> Vec<PluginEvent> {
    let mut out = Vec::new();
    for (i, follower) in followers.iter_mut().enumerate() {
        for change in follower.poll() {
            let processor = follower.slot().name().to_owned();
            let event = match change {
                SlotChange::Refused(r) => events.event(
                    &processor,
                    PluginEventKind::Refused,
                    r.version,
                    Some(r.reason),
                    next,
                ),
                SlotChange::NewVersion(plugin) => {
                    let version = plugin.version().to_string();
                    match sinks.ensure_outputs(plugin.info()).await {
                        Ok(()) => {
                            tracing::info!(pillow = %events.pillow, plugin = %processor, %version, from = %lanes[0][i].plugin().version(), "new plugin version live at this chunk boundary");
                            for lane in lanes.iter_mut() {
                                lane[i] = Processor::new(plugin.clone());
                            }
                            events.event(
                                &processor,
                                PluginEventKind::Live,
                                Some(version),
                                None,
                                next,
                            )
                        }
                        Err(e) => {
                            let reason =
                                format!("its declared tables or indices do not fit the sinks: {e}");
                            tracing::warn!(pillow = %events.pillow, plugin = %processor, %version, %reason, "plugin version refused by this pillow");
                            events.event(
                                &processor,
                                PluginEventKind::Refused,
                                Some(version),
                                Some(reason),
                                next,
                            )
                        }
                    }
                }
            };
            out.push(event);
        }
    }
    out
}
