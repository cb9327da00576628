//! Shadow runs and their kept differences, read back for `pillowtop
//! plugin diff` and `status` (written by [`crate::shadow::sql`] in each
//! chunk's transaction).

use super::{Store, StoreError};
use crate::db::on_db;
use crate::shadow::Tally;
use crate::shadow::sql::parse_failed;
use serde::Serialize;

/// What one candidate did in one pillow process so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShadowRun {
    /// Pillow.
    pub pillow: String,
    /// Process number.
    pub process_num: u32,
    /// Processor (plugin name).
    pub processor: String,
    /// The candidate version.
    pub candidate_version: String,
    /// The live version it ran beside.
    pub live_version: String,
    /// The counts.
    pub tally: Tally,
    /// First chunk, epoch ms.
    pub started_at_ms: i64,
    /// Latest chunk, epoch ms.
    pub updated_at_ms: i64,
}

/// One kept difference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredDiff {
    /// Pillow.
    pub pillow: String,
    /// The live version.
    pub live_version: String,
    /// The difference.
    #[serde(flatten)]
    pub diff: crate::shadow::Difference,
    /// When it was recorded, epoch ms.
    pub at_ms: i64,
}

#[derive(sqlx::FromRow)]
struct RunRow {
    pillow: String,
    process_num: i64,
    processor: String,
    candidate_version: String,
    live_version: String,
    agree: i64,
    differ: i64,
    failed: String,
    hungrier: i64,
    live_fuel: i64,
    candidate_fuel: i64,
    started_at_ms: i64,
    updated_at_ms: i64,
}

#[derive(sqlx::FromRow)]
struct DiffRow {
    pillow: String,
    live_version: String,
    doc_id: String,
    topic: String,
    partition: i64,
    offset: i64,
    live_actions: String,
    candidate_actions: String,
    diff: String,
    at_ms: i64,
}

impl Store {
    /// Shadow runs, most recently updated first; only `processor`'s when given.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn shadow_runs(&self, processor: Option<&str>) -> Result<Vec<ShadowRun>, StoreError> {
        let rows: Vec<RunRow> = on_db!(&self.db, pool => {
            sqlx::query_as(
                "SELECT pillow, process_num, processor, candidate_version, live_version, agree, differ, failed,
                        hungrier, live_fuel, candidate_fuel, started_at_ms, updated_at_ms
                 FROM shadow_runs WHERE $1 IS NULL OR processor = $1
                 ORDER BY updated_at_ms DESC, pillow, process_num",
            )
            .bind(processor)
            .fetch_all(pool)
            .await
            .map_err(self.err())?
        });
        Ok(rows
            .into_iter()
            .map(|r| ShadowRun {
                pillow: r.pillow,
                process_num: r.process_num as u32,
                processor: r.processor,
                candidate_version: r.candidate_version,
                live_version: r.live_version,
                tally: Tally {
                    agree: r.agree as u64,
                    differ: r.differ as u64,
                    failed: parse_failed(&r.failed),
                    hungrier: r.hungrier as u64,
                    live_fuel: r.live_fuel as u64,
                    candidate_fuel: r.candidate_fuel as u64,
                },
                started_at_ms: r.started_at_ms,
                updated_at_ms: r.updated_at_ms,
            })
            .collect())
    }

    /// The kept differences of `processor`'s candidate `candidate_version`,
    /// oldest first.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn shadow_diffs(
        &self,
        processor: &str,
        candidate_version: &str,
    ) -> Result<Vec<StoredDiff>, StoreError> {
        let rows: Vec<DiffRow> = on_db!(&self.db, pool => {
            sqlx::query_as(
                r#"SELECT pillow, live_version, doc_id, topic, partition, "offset", live_actions,
                          candidate_actions, diff, at_ms
                   FROM shadow_diffs WHERE processor = $1 AND candidate_version = $2 ORDER BY id"#,
            )
            .bind(processor)
            .bind(candidate_version)
            .fetch_all(pool)
            .await
            .map_err(self.err())?
        });
        let json = |text: &str| {
            serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.into()))
        };
        Ok(rows
            .into_iter()
            .map(|r| StoredDiff {
                pillow: r.pillow,
                live_version: r.live_version,
                diff: crate::shadow::Difference {
                    doc_id: r.doc_id,
                    topic: r.topic,
                    partition: r.partition as u32,
                    offset: r.offset as u64,
                    live: json(&r.live_actions),
                    candidate: json(&r.candidate_actions),
                    diff: r.diff.lines().map(str::to_owned).collect(),
                },
                at_ms: r.at_ms,
            })
            .collect())
    }
}
