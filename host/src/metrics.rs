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

/// The metrics pillowtop exports: name, type, help.
pub const METRICS: &[(&str, MetricType, &str)] = &[
    (
        "pillowtop_plugin_info",
        MetricType::Gauge,
        "1 for the plugin version live in a pillow (version = manifest version + content hash)",
    ),
    (
        "pillowtop_plugin_reloads_total",
        MetricType::Counter,
        "Plugin reload attempts by outcome: live, unchanged, refused",
    ),
    (
        "pillowtop_plugin_refused",
        MetricType::Gauge,
        "1 while the newest version of a plugin on disk was refused and an older one keeps running",
    ),
    (
        "pillowtop_changes_total",
        MetricType::Counter,
        "Changes run through a processor, by plugin version and outcome (ok or an error kind)",
    ),
    (
        "pillowtop_fuel_used_total",
        MetricType::Counter,
        "Fuel used by a processor's calls",
    ),
    (
        "pillowtop_processed_offset",
        MetricType::Gauge,
        "Next offset to process, per pillow and partition",
    ),
];

type Key = (&'static str, Vec<(&'static str, String)>);

/// The registry.
#[derive(Debug, Default)]
pub struct Metrics {
    values: Mutex<BTreeMap<Key, f64>>,
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

    fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
        debug_assert!(
            METRICS.iter().any(|(n, _, _)| *n == name),
            "unregistered metric {name}"
        );
        (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        )
    }

    /// Add `by` to a counter.
    pub fn add(&self, name: &'static str, labels: &[(&'static str, &str)], by: f64) {
        let key = Self::key(name, labels);
        self.with(|v| *v.entry(key).or_default() += by);
    }

    /// Set a gauge.
    pub fn set(&self, name: &'static str, labels: &[(&'static str, &str)], value: f64) {
        let key = Self::key(name, labels);
        self.with(|v| {
            v.insert(key, value);
        });
    }

    /// Remove every series of `name` whose labels include all of `labels`
    /// (e.g. the old version's `plugin_info` when a new one goes live).
    pub fn remove_matching(&self, name: &'static str, labels: &[(&'static str, &str)]) {
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
    pub fn get(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Option<f64> {
        let key = Self::key(name, labels);
        let mut out = None;
        self.with(|v| out = v.get(&key).copied());
        out
    }

    /// Everything in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.with(|values| {
            for (name, kind, help) in METRICS {
                let kind = match kind {
                    MetricType::Counter => "counter",
                    MetricType::Gauge => "gauge",
                };
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for ((n, labels), value) in values.iter() {
                    if n != name {
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
            "pillowtop_changes_total",
            &[("pillow", "p"), ("outcome", "ok")],
            2.0,
        );
        m.add(
            "pillowtop_changes_total",
            &[("pillow", "p"), ("outcome", "ok")],
            3.0,
        );
        m.set("pillowtop_plugin_info", &[("plugin", "a\"b\\c\nd")], 1.0);
        let text = m.render();
        assert!(text.contains("# TYPE pillowtop_changes_total counter\n"));
        assert!(text.contains("pillowtop_changes_total{pillow=\"p\",outcome=\"ok\"} 5\n"));
        assert!(text.contains(r#"pillowtop_plugin_info{plugin="a\"b\\c\nd"} 1"#));
    }

    #[test]
    fn remove_matching_drops_only_matching_series() {
        let m = Metrics::new();
        m.set(
            "pillowtop_plugin_info",
            &[("plugin", "a"), ("version", "1")],
            1.0,
        );
        m.set(
            "pillowtop_plugin_info",
            &[("plugin", "b"), ("version", "1")],
            1.0,
        );
        m.remove_matching("pillowtop_plugin_info", &[("plugin", "a")]);
        assert_eq!(
            m.get(
                "pillowtop_plugin_info",
                &[("plugin", "a"), ("version", "1")]
            ),
            None
        );
        assert_eq!(
            m.get(
                "pillowtop_plugin_info",
                &[("plugin", "b"), ("version", "1")]
            ),
            Some(1.0)
        );
    }
}
