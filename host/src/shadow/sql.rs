//! A chunk's shadow records, written in the chunk's store transaction:
//! the counts add up per (pillow, process, processor, candidate, live
//! version), and the first differences per processor and candidate
//! version are kept. Written with the chunk, they are counted once per
//! change even when a crash makes the chunk run again.

use super::ShadowRecord;
use crate::db::{Tx, on_tx};
use std::collections::BTreeMap;

/// Add `records` to the store, in `tx`.
///
/// # Errors
///
/// When the database fails.
pub async fn record(tx: &mut Tx, records: &[ShadowRecord]) -> Result<(), sqlx::Error> {
    let now = crate::time::now_ms();
    for r in records {
        // The counts add up in the upsert; the failures by kind (JSON) are
        // read and merged only when this chunk has some.
        let mut failed = r.tally.failed.clone();
        if !failed.is_empty() {
            let stored: Option<String> = on_tx!(&mut *tx, t => {
                sqlx::query_scalar(
                    "SELECT failed FROM shadow_runs
                     WHERE pillow = $1 AND process_num = $2 AND processor = $3 AND candidate_version = $4 AND live_version = $5",
                )
                .bind(&r.pillow)
                .bind(i64::from(r.process_num))
                .bind(&r.processor)
                .bind(&r.candidate_version)
                .bind(&r.live_version)
                .fetch_optional(&mut **t)
                .await?
            });
            for (kind, n) in parse_failed(stored.as_deref().unwrap_or("{}")) {
                *failed.entry(kind).or_default() += n;
            }
        }
        let t = &r.tally;
        on_tx!(&mut *tx, q => {
            sqlx::query(
                "INSERT INTO shadow_runs (pillow, process_num, processor, candidate_version, live_version,
                     agree, differ, failed, hungrier, live_fuel, candidate_fuel, started_at_ms, updated_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)
                 ON CONFLICT (pillow, process_num, processor, candidate_version, live_version) DO UPDATE SET
                     agree = shadow_runs.agree + excluded.agree,
                     differ = shadow_runs.differ + excluded.differ,
                     failed = CASE WHEN excluded.failed = '{}' THEN shadow_runs.failed ELSE excluded.failed END,
                     hungrier = shadow_runs.hungrier + excluded.hungrier,
                     live_fuel = shadow_runs.live_fuel + excluded.live_fuel,
                     candidate_fuel = shadow_runs.candidate_fuel + excluded.candidate_fuel,
                     updated_at_ms = excluded.updated_at_ms",
            )
            .bind(&r.pillow)
            .bind(i64::from(r.process_num))
            .bind(&r.processor)
            .bind(&r.candidate_version)
            .bind(&r.live_version)
            .bind(t.agree as i64)
            .bind(t.differ as i64)
            .bind(failed_json(&failed))
            .bind(t.hungrier as i64)
            .bind(t.live_fuel as i64)
            .bind(t.candidate_fuel as i64)
            .bind(now)
            .execute(&mut **q)
            .await
            .map(|_| ())
        })?;
        for d in &r.diffs {
            let inserted = on_tx!(&mut *tx, t => {
                sqlx::query(
                    r#"INSERT INTO shadow_diffs (pillow, processor, candidate_version, live_version, doc_id,
                           topic, partition, "offset", live_actions, candidate_actions, diff, at_ms)
                       SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12
                       WHERE (SELECT COUNT(*) FROM shadow_diffs WHERE processor = $2 AND candidate_version = $3) < $13"#,
                )
                .bind(&r.pillow)
                .bind(&r.processor)
                .bind(&r.candidate_version)
                .bind(&r.live_version)
                .bind(&d.doc_id)
                .bind(&d.topic)
                .bind(i64::from(d.partition))
                .bind(d.offset as i64)
                .bind(d.live.to_string())
                .bind(d.candidate.to_string())
                .bind(d.diff.join("\n"))
                .bind(now)
                .bind(i64::from(r.keep_diffs))
                .execute(&mut **t)
                .await?
                .rows_affected()
            });
            if inserted == 0 {
                // Full: the later differences of this record are counted only.
                break;
            }
        }
    }
    Ok(())
}

/// Failure counts as stored: `{"kind": n, ...}`.
pub(crate) fn failed_json(failed: &BTreeMap<crate::errors::ErrorKind, u64>) -> String {
    let map: BTreeMap<&str, u64> = failed.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    serde_json::to_string(&map).unwrap_or_else(|_| "{}".into())
}

/// Stored failure counts (unknown kinds, from a newer pillowtop, are left out).
pub(crate) fn parse_failed(text: &str) -> BTreeMap<crate::errors::ErrorKind, u64> {
    serde_json::from_str::<BTreeMap<String, u64>>(text)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, n)| Some((crate::errors::ErrorKind::parse(&k)?, n)))
        .collect()
}
