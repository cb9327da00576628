//! Every metric pillowtop exports, declared once: name, type, help.
//!
//! Labels: `pillow`, `partition` (`topic:N`), `processor`, `version`,
//! `outcome`, `stage`, `state`, `kind`, `sink`, `resource`, `role`; all from
//! bounded sets.

use super::histogram::{FUEL, STAGE_SECONDS};

/// Counter, gauge or histogram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetricType {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations counted into buckets with these upper bounds.
    Histogram(&'static [f64]),
}

/// Every metric pillowtop exports. A metric is used by this name, so one
/// that is not declared here cannot be set: the registry and the code that
/// reports cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// `pillowtop_plugin_info`.
    PluginInfo,
    /// `pillowtop_plugin_reloads_total`.
    PluginReloadsTotal,
    /// `pillowtop_plugin_refused`.
    PluginRefused,
    /// `pillowtop_changes_total`.
    ChangesTotal,
    /// `pillowtop_fuel_used_total`.
    FuelUsedTotal,
    /// `pillowtop_processed_offset`.
    ProcessedOffset,
    /// `pillowtop_current_offset`.
    CurrentOffset,
    /// `pillowtop_need_processing`.
    NeedProcessing,
    /// `pillowtop_change_lag_seconds`.
    ChangeLagSeconds,
    /// `pillowtop_processed_publish_time_seconds`.
    ProcessedPublishTime,
    /// `pillowtop_checkpoint_age_seconds`.
    CheckpointAgeSeconds,
    /// `pillowtop_processor_seconds`.
    ProcessorSeconds,
    /// `pillowtop_fuel_per_call`.
    FuelPerCall,
    /// `pillowtop_pillow_errors`.
    PillowErrors,
    /// `pillowtop_retry_queue_depth`.
    RetryQueueDepth,
    /// `pillowtop_retry_queue_due`.
    RetryQueueDue,
    /// `pillowtop_sink_down_since_seconds`.
    SinkDownSince,
    /// `pillowtop_sink_down_seconds`.
    SinkDownSeconds,
    /// `pillowtop_sink_down`.
    SinkDown,
    /// `pillowtop_sink_retries_total`.
    SinkRetriesTotal,
    /// `pillowtop_retries_total`.
    RetriesTotal,
    /// `pillowtop_lookup_calls_total`.
    LookupCallsTotal,
    /// `pillowtop_lookup_cache_hits_total`.
    LookupCacheHitsTotal,
    /// `pillowtop_lookup_queries_total`.
    LookupQueriesTotal,
    /// `pillowtop_lookup_errors_total`.
    LookupErrorsTotal,
    /// `pillowtop_lookup_seconds_total`.
    LookupSecondsTotal,
    /// `pillowtop_plugin_shadow_info`.
    PluginShadowInfo,
    /// `pillowtop_shadow_changes_total`.
    ShadowChangesTotal,
    /// `pillowtop_shadow_fuel_used_total`.
    ShadowFuelUsedTotal,
    /// `pillowtop_shadow_hungrier_total`.
    ShadowHungrierTotal,
}

impl Metric {
    /// Every metric, in the order `/metrics` lists them.
    pub const ALL: [Metric; 30] = [
        Metric::PluginInfo,
        Metric::PluginReloadsTotal,
        Metric::PluginRefused,
        Metric::ChangesTotal,
        Metric::FuelUsedTotal,
        Metric::ProcessedOffset,
        Metric::CurrentOffset,
        Metric::NeedProcessing,
        Metric::ChangeLagSeconds,
        Metric::ProcessedPublishTime,
        Metric::CheckpointAgeSeconds,
        Metric::ProcessorSeconds,
        Metric::FuelPerCall,
        Metric::PillowErrors,
        Metric::RetryQueueDepth,
        Metric::RetryQueueDue,
        Metric::SinkDown,
        Metric::SinkDownSince,
        Metric::SinkDownSeconds,
        Metric::SinkRetriesTotal,
        Metric::RetriesTotal,
        Metric::LookupCallsTotal,
        Metric::LookupCacheHitsTotal,
        Metric::LookupQueriesTotal,
        Metric::LookupErrorsTotal,
        Metric::LookupSecondsTotal,
        Metric::PluginShadowInfo,
        Metric::ShadowChangesTotal,
        Metric::ShadowFuelUsedTotal,
        Metric::ShadowHungrierTotal,
    ];

    /// Its exported name.
    pub fn name(self) -> &'static str {
        self.describe().0
    }

    /// Counter, gauge or histogram.
    pub fn kind(self) -> MetricType {
        self.describe().1
    }

    /// What it measures, as `# HELP` says.
    pub fn help(self) -> &'static str {
        self.describe().2
    }

    fn describe(self) -> (&'static str, MetricType, &'static str) {
        match self {
            Metric::PluginInfo => (
                "pillowtop_plugin_info",
                MetricType::Gauge,
                "1 for the plugin version live in a pillow (version = manifest version + content hash)",
            ),
            Metric::PluginReloadsTotal => (
                "pillowtop_plugin_reloads_total",
                MetricType::Counter,
                "Plugin reload attempts by outcome: live, unchanged, refused",
            ),
            Metric::PluginRefused => (
                "pillowtop_plugin_refused",
                MetricType::Gauge,
                "1 while the newest version of a plugin on disk was refused and an older one keeps running",
            ),
            Metric::ChangesTotal => (
                "pillowtop_changes_total",
                MetricType::Counter,
                "Changes run through a processor, by plugin version and outcome (ok or an error kind)",
            ),
            Metric::FuelUsedTotal => (
                "pillowtop_fuel_used_total",
                MetricType::Counter,
                "Fuel used by a processor's calls",
            ),
            Metric::ProcessedOffset => (
                "pillowtop_processed_offset",
                MetricType::Gauge,
                "Next offset to process, per pillow and partition",
            ),
            Metric::CurrentOffset => (
                "pillowtop_current_offset",
                MetricType::Gauge,
                "The feed's end offset (the next offset to be written), per pillow and partition",
            ),
            Metric::NeedProcessing => (
                "pillowtop_need_processing",
                MetricType::Gauge,
                "Changes waiting, per pillow and partition: the feed's end offset minus the position processed",
            ),
            Metric::ChangeLagSeconds => (
                "pillowtop_change_lag_seconds",
                MetricType::Gauge,
                "Seconds from the publish time of the last change processed to now, per pillow and partition; 0 when no change waits",
            ),
            Metric::ProcessedPublishTime => (
                "pillowtop_processed_publish_time_seconds",
                MetricType::Gauge,
                "Publish time (Unix seconds) of the last change processed, per pillow and partition; while caught up, the time up to which every change is processed",
            ),
            Metric::CheckpointAgeSeconds => (
                "pillowtop_checkpoint_age_seconds",
                MetricType::Gauge,
                "Seconds since the partition's checkpoint was last saved",
            ),
            Metric::ProcessorSeconds => (
                "pillowtop_processor_seconds",
                MetricType::Histogram(STAGE_SECONDS),
                "Time a chunk spent in each stage: decode, transform (every processor), load (sinks, errors and checkpoint)",
            ),
            Metric::FuelPerCall => (
                "pillowtop_fuel_per_call",
                MetricType::Histogram(FUEL),
                "Fuel one processor call used, by processor",
            ),
            Metric::PillowErrors => (
                "pillowtop_pillow_errors",
                MetricType::Gauge,
                "Pillow errors recorded, by state (pending, parked, ...) and kind",
            ),
            Metric::RetryQueueDepth => (
                "pillowtop_retry_queue_depth",
                MetricType::Gauge,
                "Pillow errors waiting for the retry queue; rate(pillowtop_retries_total) is how fast it drains",
            ),
            Metric::RetryQueueDue => (
                "pillowtop_retry_queue_due",
                MetricType::Gauge,
                "Pillow errors in the retry queue whose next attempt is due now",
            ),
            Metric::SinkDownSince => (
                "pillowtop_sink_down_since_seconds",
                MetricType::Gauge,
                "Unix time a sink became unreachable for a pillow; 0 while it is reachable",
            ),
            Metric::SinkDownSeconds => (
                "pillowtop_sink_down_seconds",
                MetricType::Gauge,
                "Seconds a sink has been unreachable for a pillow; 0 while it is reachable",
            ),
            Metric::SinkDown => (
                "pillowtop_sink_down",
                MetricType::Gauge,
                "1 while a pillow holds a chunk because its sink (store or elasticsearch) is unreachable",
            ),
            Metric::RetriesTotal => (
                "pillowtop_retries_total",
                MetricType::Counter,
                "Pillow errors the retry queue tried again, by pillow, processor and outcome (resolved, failed, parked, republished, superseded)",
            ),
            Metric::SinkRetriesTotal => (
                "pillowtop_sink_retries_total",
                MetricType::Counter,
                "Writes retried because their sink (store or elasticsearch) was unreachable",
            ),
            Metric::LookupCallsTotal => (
                "pillowtop_lookup_calls_total",
                MetricType::Counter,
                "Lookups plugins made, by resource",
            ),
            Metric::LookupCacheHitsTotal => (
                "pillowtop_lookup_cache_hits_total",
                MetricType::Counter,
                "Lookups answered from the resource's cache",
            ),
            Metric::LookupQueriesTotal => (
                "pillowtop_lookup_queries_total",
                MetricType::Counter,
                "Queries sent to a lookup resource (one per chunk prefetch or cache miss)",
            ),
            Metric::LookupErrorsTotal => (
                "pillowtop_lookup_errors_total",
                MetricType::Counter,
                "Lookups and prefetches a resource could not answer (down, too slow, a failing query)",
            ),
            Metric::LookupSecondsTotal => (
                "pillowtop_lookup_seconds_total",
                MetricType::Counter,
                "Time spent waiting on a lookup resource",
            ),
            Metric::PluginShadowInfo => (
                "pillowtop_plugin_shadow_info",
                MetricType::Gauge,
                "1 for a candidate version running beside a plugin's live version (pillowtop plugin shadow)",
            ),
            Metric::ShadowChangesTotal => (
                "pillowtop_shadow_changes_total",
                MetricType::Counter,
                "Changes a candidate ran on beside the live version, by outcome: agree, differ, or the candidate's error kind",
            ),
            Metric::ShadowFuelUsedTotal => (
                "pillowtop_shadow_fuel_used_total",
                MetricType::Counter,
                "Fuel used on the changes a candidate was compared on, by role: live or candidate",
            ),
            Metric::ShadowHungrierTotal => (
                "pillowtop_shadow_hungrier_total",
                MetricType::Counter,
                "Changes on which a candidate used more fuel than the live version",
            ),
        }
    }
}
