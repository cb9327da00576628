//! What `pillowtop run` prints when it ends: what each pillow did, and
//! where the sinks and pillows stand.

use super::{ProcessError, ProcessSummary};
use crate::config::HostConfig;
use crate::feed::Feed;
use crate::pillow::RunSummary;
use crate::sink::{SinkCounts, Sinks};
use std::collections::BTreeSet;
use std::fmt;

/// What the sinks hold and how far behind each pillow is, after a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The store, for messages.
    pub store: String,
    /// Documents and rows in the SQL sinks.
    pub sql: SinkCounts,
    /// Elasticsearch and the documents of each index, when configured.
    pub elastic: Option<(String, Vec<(String, u64)>)>,
    /// Per pillow: need-processing, partitions, pillow errors stored.
    pub lag: Vec<(String, u64, usize, u64)>,
}

/// Where the sinks and pillows stand after a run.
pub(super) async fn report(
    config: &HostConfig,
    feed: &Feed,
    sinks: &Sinks,
    summaries: &[RunSummary],
    indices: &BTreeSet<String>,
) -> Result<Report, ProcessError> {
    let mut report = Report {
        store: config.store.to_string(),
        sql: sinks.sql.counts().await?,
        ..Report::default()
    };
    if let Some(es) = &sinks.elastic {
        let mut counts = Vec::new();
        for index in indices {
            es.refresh(index).await?;
            counts.push((es.index_name(index), es.count(index).await?));
        }
        report.elastic = Some((es.location().to_owned(), counts));
    }
    for s in summaries {
        if let Some(p) = config.pillow(&s.pillow) {
            let status = crate::status::gather(
                &[p],
                feed,
                &sinks.store,
                config.runtime.max_component_bytes(),
            )
            .await?;
            let st = &status.pillows[0];
            let errors = st.error_total();
            report.lag.push((
                s.pillow.clone(),
                st.need_processing,
                st.partitions.len(),
                errors,
            ));
        }
    }
    Ok(report)
}

impl fmt::Display for ProcessSummary {
    /// The summary `pillowtop run` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.pillows {
            let secs = s.elapsed.as_secs_f64().max(1e-9);
            writeln!(
                f,
                "pillow {}: {} changes read, {} processed ({} superseded in their chunk) in {:.2} s ({:.0} changes/s), {} chunks",
                s.pillow,
                s.messages,
                s.changes,
                s.deduplicated,
                secs,
                s.messages as f64 / secs,
                s.chunks
            )?;
            if s.extra_pieces > 0 {
                writeln!(
                    f,
                    "  {} extra pieces: chunks whose actions went over chunk_memory_mb were written in parts",
                    s.extra_pieces
                )?;
            }
            let actions: Vec<_> = s.actions.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let or_none = |v: Vec<String>| {
                if v.is_empty() {
                    "none".to_owned()
                } else {
                    v.join(", ")
                }
            };
            writeln!(f, "  actions: {}", or_none(actions))?;
            let errors: Vec<_> = s.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
            writeln!(f, "  new pillow errors: {}", or_none(errors))?;
            writeln!(
                f,
                "  time: waiting for the feed {:.2} s, decode {:.2} s (beside the transform), transform (wasm) {:.2} s, waiting for the store {:.2} s",
                s.read_time.as_secs_f64(),
                s.decode_time.as_secs_f64(),
                s.transform_time.as_secs_f64(),
                s.load_time.as_secs_f64()
            )?;
        }
        let Some(report) = &self.report else {
            return Ok(());
        };
        writeln!(f, "sinks ({}):", report.store)?;
        for (index, n) in &report.sql.documents {
            writeln!(f, "  index {index}: {n} documents")?;
        }
        for (table, n) in &report.sql.rows {
            writeln!(f, "  table {table}: {n} rows")?;
        }
        for (pillow, need, partitions, errors) in &report.lag {
            writeln!(
                f,
                "pillow {pillow}: lag (need-processing) {need} over {partitions} partitions; pillow errors stored: {errors}"
            )?;
        }
        if let Some((location, counts)) = &report.elastic {
            writeln!(f, "sinks ({location}):")?;
            for (index, n) in counts {
                writeln!(f, "  index {index}: {n} documents")?;
            }
        }
        Ok(())
    }
}
