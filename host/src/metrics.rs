//! Prometheus metrics, served by the admin endpoint at `/metrics`.
//!
//! A small registry of counters and gauges keyed by metric name and label
//! set, rendered in Prometheus' text format. Label values come from bounded
//! sets (pillow, processor, plugin version, outcome, error kind), never
//! from an error message or a document id. Hot paths add per chunk, not per
//! change, so the lock is taken a few times per chunk.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Counter or gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
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
    pub const ALL: [Metric; 18] = [
        Metric::PluginInfo,
        Metric::PluginReloadsTotal,
        Metric::PluginRefused,
        Metric::ChangesTotal,
        Metric::FuelUsedTotal,
        Metric::ProcessedOffset,
        Metric::SinkDown,
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

    /// Counter or gauge.
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

type Key = (Metric, Vec<(&'static str, String)>);

/// Reads counters kept elsewhere (atomics on a hot path) into the
/// registry just before it renders.
pub type Collector = Box<dyn Fn(&Metrics) + Send + Sync>;

/// The registry.
#[derive(Default)]
pub struct Metrics {
    values: Mutex<BTreeMap<Key, f64>>,
    collectors: Mutex<Vec<Collector>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    fn with(&self, f: impl FnOnce(&mut BTreeMap<Key, f64>)) {
        // A poisoned lock only means another thread panicked mid-update;
        // the numbers are still usable.
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut values);
    }

    fn key(metric: Metric, labels: &[(&'static str, &str)]) -> Key {
        (
            metric,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        )
    }

    /// Add `by` to a counter.
    pub fn add(&self, name: Metric, labels: &[(&'static str, &str)], by: f64) {
        let key = Self::key(name, labels);
        self.with(|v| *v.entry(key).or_default() += by);
    }

    /// Set a gauge.
    pub fn set(&self, name: Metric, labels: &[(&'static str, &str)], value: f64) {
        let key = Self::key(name, labels);
        self.with(|v| {
            v.insert(key, value);
        });
    }

    /// Remove every series of `name` whose labels include all of `labels`
    /// (e.g. the old version's `plugin_info` when a new one goes live).
    pub fn remove_matching(&self, name: Metric, labels: &[(&'static str, &str)]) {
        self.with(|v| {
            v.retain(|(n, ls), _| {
                *n != name
                    || !labels
                        .iter()
                        .all(|(k, val)| ls.iter().any(|(lk, lv)| lk == k && lv == val))
            })
        });
    }

    /// The current value of one series, if set.
    pub fn get(&self, name: Metric, labels: &[(&'static str, &str)]) -> Option<f64> {
        let key = Self::key(name, labels);
        let mut out = None;
        self.with(|v| out = v.get(&key).copied());
        out
    }

    /// Run `collect` before every render.
    pub fn collect_with(&self, collect: Collector) {
        self.collectors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(collect);
    }

    /// Everything in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        for collect in self
            .collectors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            collect(self);
        }
        let mut out = String::new();
        self.with(|values| {
            for metric in Metric::ALL {
                let (name, help) = (metric.name(), metric.help());
                let kind = match metric.kind() {
                    MetricType::Counter => "counter",
                    MetricType::Gauge => "gauge",
                };
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for ((m, labels), value) in values.iter() {
                    if *m != metric {
                        continue;
                    }
                    out.push_str(name);
                    if !labels.is_empty() {
                        out.push('{');
                        for (i, (k, v)) in labels.iter().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            let _ = write!(out, "{k}=\"{}\"", escape(v));
                        }
                        out.push('}');
                    }
                    let _ = writeln!(out, " {value}");
                }
            }
        });
        out
    }
}

/// Escape a label value: backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_escaped_labels() {
        let m = Metrics::new();
        m.add(
            Metric::ChangesTotal,
            &[("pillow", "p"), ("outcome", "ok")],
            2.0,
        );
        m.add(
            Metric::ChangesTotal,
            &[("pillow", "p"), ("outcome", "ok")],
            3.0,
        );
        m.set(Metric::PluginInfo, &[("plugin", "a\"b\\c\nd")], 1.0);
        let text = m.render();
        assert!(text.contains("# TYPE pillowtop_changes_total counter\n"));
        assert!(text.contains("pillowtop_changes_total{pillow=\"p\",outcome=\"ok\"} 5\n"));
        assert!(text.contains(r#"pillowtop_plugin_info{plugin="a\"b\\c\nd"} 1"#));
    }

    #[test]
    fn every_metric_is_rendered_with_its_type_and_a_unique_name() {
        let text = Metrics::new().render();
        let mut names = std::collections::HashSet::new();
        for m in Metric::ALL {
            assert!(names.insert(m.name()), "{} twice", m.name());
            assert!(m.name().starts_with("pillowtop_"));
            assert_eq!(
                m.name().ends_with("_total"),
                m.kind() == MetricType::Counter,
                "counters and only counters end in _total: {}",
                m.name()
            );
            assert!(text.contains(&format!("# TYPE {} ", m.name())), "{text}");
        }
    }

    #[test]
    fn remove_matching_drops_only_matching_series() {
        let m = Metrics::new();
        m.set(
            Metric::PluginInfo,
            &[("plugin", "a"), ("version", "1")],
            1.0,
        );
        m.set(
            Metric::PluginInfo,
            &[("plugin", "b"), ("version", "1")],
            1.0,
        );
        m.remove_matching(Metric::PluginInfo, &[("plugin", "a")]);
        assert_eq!(
            m.get(Metric::PluginInfo, &[("plugin", "a"), ("version", "1")]),
            None
        );
        assert_eq!(
            m.get(Metric::PluginInfo, &[("plugin", "b"), ("version", "1")]),
            Some(1.0)
        );
    }
}
