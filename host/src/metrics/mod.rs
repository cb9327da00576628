//! Prometheus metrics, served by the admin endpoint at `/metrics`.
//!
//! A small registry of counters, gauges and histograms keyed by metric and
//! label set, rendered in Prometheus' text format. Every metric is declared
//! once in [`catalog`]. Label values come from bounded sets (pillow,
//! processor, plugin version, outcome, error kind), never from an error
//! message or a document id. Hot paths add per chunk, not per change, so
//! the lock is taken a few times per chunk; a histogram is filled without
//! the lock ([`Buckets`]) and merged once per chunk.

mod catalog;
mod histogram;

pub use catalog::{Metric, MetricType};
pub use histogram::{Buckets, FUEL, STAGE_SECONDS};

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

type Key = (Metric, Vec<(&'static str, String)>);

/// Reads counters kept elsewhere (atomics on a hot path) into the
/// registry just before it renders.
pub type Collector = Box<dyn Fn(&Metrics) + Send + Sync>;

/// The registry.
#[derive(Default)]
pub struct Metrics {
    series: Mutex<Series>,
    collectors: Mutex<Vec<Collector>>,
}

/// Counters and gauges, and histograms.
#[derive(Default)]
struct Series {
    scalars: BTreeMap<Key, f64>,
    histograms: BTreeMap<Key, Buckets>,
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

    fn with<T>(&self, f: impl FnOnce(&mut Series) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-update;
        // the numbers are still usable.
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut series)
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
        self.with(|s| *s.scalars.entry(key).or_default() += by);
    }

    /// Set a gauge.
    pub fn set(&self, name: Metric, labels: &[(&'static str, &str)], value: f64) {
        let key = Self::key(name, labels);
        self.with(|s| {
            s.scalars.insert(key, value);
        });
    }

    /// Count one value into a histogram.
    pub fn observe(&self, name: Metric, labels: &[(&'static str, &str)], value: f64) {
        let Some(bounds) = Self::bounds(name) else {
            return;
        };
        let key = Self::key(name, labels);
        self.with(|s| {
            s.histograms
                .entry(key)
                .or_insert_with(|| Buckets::new(bounds))
                .observe(value)
        });
    }

    /// Add observations made elsewhere (a chunk's) to a histogram.
    pub fn merge(&self, name: Metric, labels: &[(&'static str, &str)], buckets: &Buckets) {
        let Some(bounds) = Self::bounds(name) else {
            return;
        };
        if buckets.count() == 0 {
            return;
        }
        let key = Self::key(name, labels);
        self.with(|s| {
            s.histograms
                .entry(key)
                .or_insert_with(|| Buckets::new(bounds))
                .merge(buckets)
        });
    }

    /// A histogram metric's bounds; `None` (and a debug assertion) for a
    /// counter or gauge.
    fn bounds(name: Metric) -> Option<&'static [f64]> {
        match name.kind() {
            MetricType::Histogram(bounds) => Some(bounds),
            _ => {
                debug_assert!(false, "{} is not a histogram", name.name());
                None
            }
        }
    }

    /// A histogram's observations so far, if any.
    pub fn histogram(&self, name: Metric, labels: &[(&'static str, &str)]) -> Option<Buckets> {
        let key = Self::key(name, labels);
        self.with(|s| s.histograms.get(&key).cloned())
    }

    /// Every series of `name` whose labels include all of `labels`: its
    /// labels and value.
    pub fn matching(
        &self,
        name: Metric,
        labels: &[(&'static str, &str)],
    ) -> Vec<(Vec<(&'static str, String)>, f64)> {
        self.with(|s| {
            s.scalars
                .iter()
                .filter(|((n, ls), _)| *n == name && has_labels(ls, labels))
                .map(|((_, ls), v)| (ls.clone(), *v))
                .collect()
        })
    }

    /// Remove every series of `name` whose labels include all of `labels`
    /// (e.g. the old version's `plugin_info` when a new one goes live).
    pub fn remove_matching(&self, name: Metric, labels: &[(&'static str, &str)]) {
        self.with(|s| {
            s.scalars
                .retain(|(n, ls), _| *n != name || !has_labels(ls, labels))
        });
    }

    /// The current value of one series, if set.
    pub fn get(&self, name: Metric, labels: &[(&'static str, &str)]) -> Option<f64> {
        let key = Self::key(name, labels);
        self.with(|s| s.scalars.get(&key).copied())
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
        self.with(|series| {
            for metric in Metric::ALL {
                let (name, help) = (metric.name(), metric.help());
                let kind = match metric.kind() {
                    MetricType::Counter => "counter",
                    MetricType::Gauge => "gauge",
                    MetricType::Histogram(_) => "histogram",
                };
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for ((_, labels), value) in series.scalars.iter().filter(|((m, _), _)| *m == metric)
                {
                    line(&mut out, name, labels, None, *value);
                }
                for ((_, labels), buckets) in
                    series.histograms.iter().filter(|((m, _), _)| *m == metric)
                {
                    let bucket = format!("{name}_bucket");
                    for (bound, n) in buckets.cumulative() {
                        let le = if bound.is_infinite() {
                            "+Inf".to_owned()
                        } else {
                            bound.to_string()
                        };
                        line(&mut out, &bucket, labels, Some(&le), n as f64);
                    }
                    line(
                        &mut out,
                        &format!("{name}_sum"),
                        labels,
                        None,
                        buckets.sum(),
                    );
                    line(
                        &mut out,
                        &format!("{name}_count"),
                        labels,
                        None,
                        buckets.count() as f64,
                    );
                }
            }
        });
        out
    }
}

/// Whether `have` includes every label of `want`.
fn has_labels(have: &[(&'static str, String)], want: &[(&'static str, &str)]) -> bool {
    want.iter()
        .all(|(k, val)| have.iter().any(|(hk, hv)| hk == k && hv == val))
}

/// One sample line, with an `le` label last when given.
fn line(
    out: &mut String,
    name: &str,
    labels: &[(&'static str, String)],
    le: Option<&str>,
    value: f64,
) {
    out.push_str(name);
    let le = le.map(|le| ("le", le.to_owned()));
    let mut all = labels.iter().chain(le.iter()).peekable();
    if all.peek().is_some() {
        out.push('{');
        for (i, (k, v)) in all.enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
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
    fn a_histogram_renders_cumulative_buckets_a_sum_and_a_count() {
        let m = Metrics::new();
        let labels = [("pillow", "p"), ("stage", "load")];
        m.observe(Metric::ProcessorSeconds, &labels, 0.25);
        let mut chunk = Buckets::new(STAGE_SECONDS);
        chunk.observe(0.25);
        chunk.observe(100.0);
        m.merge(Metric::ProcessorSeconds, &labels, &chunk);
        let text = m.render();
        assert!(
            text.contains("# TYPE pillowtop_processor_seconds histogram\n"),
            "{text}"
        );
        for expected in [
            r#"pillowtop_processor_seconds_bucket{pillow="p",stage="load",le="0.1"} 0"#,
            r#"pillowtop_processor_seconds_bucket{pillow="p",stage="load",le="0.5"} 2"#,
            r#"pillowtop_processor_seconds_bucket{pillow="p",stage="load",le="30"} 2"#,
            r#"pillowtop_processor_seconds_bucket{pillow="p",stage="load",le="+Inf"} 3"#,
            r#"pillowtop_processor_seconds_sum{pillow="p",stage="load"} 100.5"#,
            r#"pillowtop_processor_seconds_count{pillow="p",stage="load"} 3"#,
        ] {
            assert!(
                text.contains(&format!("{expected}\n")),
                "{expected} not in\n{text}"
            );
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
