//! Which plugin versions went live in which host process (or were
//! refused), for `status`.

use super::{Store, StoreError};
use crate::db::on_db;
use crate::feed::TopicPartition;
use std::collections::BTreeMap;

/// What happened to a plugin version in a pillow process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginEventKind {
    /// The version took over at a chunk boundary.
    Live,
    /// The version was refused; the previous one keeps running.
    Refused,
    /// The version started running beside the live one as a candidate
    /// (its actions compared, not written).
    Shadow,
    /// The candidate stopped (stopped, replaced or promoted).
    ShadowEnded,
}

impl PluginEventKind {
    fn as_str(self) -> &'static str {
        match self {
            PluginEventKind::Live => "live",
            PluginEventKind::Refused => "refused",
            PluginEventKind::Shadow => "shadow",
            PluginEventKind::ShadowEnded => "shadow_ended",
        }
    }

    fn parse(s: &str) -> PluginEventKind {
        match s {
            "live" => PluginEventKind::Live,
            "shadow" => PluginEventKind::Shadow,
            "shadow_ended" => PluginEventKind::ShadowEnded,
            _ => PluginEventKind::Refused,
        }
    }
}

/// One plugin event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginEvent {
    /// Pillow.
    pub pillow: String,
    /// Process number.
    pub process_num: u32,
    /// Processor (plugin name).
    pub processor: String,
    /// Live or refused.
    pub event: PluginEventKind,
    /// `version+hash`, when known.
    pub version: Option<String>,
    /// Why it was refused, or why it went live (promoted, rolled back).
    pub reason: Option<String>,
    /// For all but `refused`: the next offset per partition when it
    /// happened (for `live`: when the version took over).
    pub positions: BTreeMap<TopicPartition, u64>,
    /// When, epoch ms.
    pub at_ms: i64,
}

#[derive(sqlx::FromRow)]
struct EventRow {
    pillow: String,
    process_num: i64,
    processor: String,
    event: String,
    version: Option<String>,
    reason: Option<String>,
    positions: Option<String>,
    at_ms: i64,
}

impl From<EventRow> for PluginEvent {
    fn from(r: EventRow) -> PluginEvent {
        let positions = r
            .positions
            .and_then(|p| serde_json::from_str::<BTreeMap<String, u64>>(&p).ok())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(tp, n)| Some((tp.parse().ok()?, n)))
            .collect();
        PluginEvent {
            pillow: r.pillow,
            process_num: r.process_num as u32,
            processor: r.processor,
            event: PluginEventKind::parse(&r.event),
            version: r.version,
            reason: r.reason,
            positions,
            at_ms: r.at_ms,
        }
    }
}

impl Store {
    /// Record a plugin event.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn record_plugin_event(&self, e: &PluginEvent) -> Result<(), StoreError> {
        let positions = (!e.positions.is_empty()).then(|| {
            let map: BTreeMap<String, u64> = e
                .positions
                .iter()
                .map(|(tp, n)| (tp.to_string(), *n))
                .collect();
            serde_json::to_string(&map).unwrap_or_default()
        });
        on_db!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO plugin_events (pillow, process_num, processor, event, version, reason, positions, at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&e.pillow)
            .bind(e.process_num as i64)
            .bind(&e.processor)
            .bind(e.event.as_str())
            .bind(&e.version)
            .bind(&e.reason)
            .bind(positions)
            .bind(e.at_ms)
            .execute(pool)
            .await
            .map_err(self.err())?;
        });
        Ok(())
    }

    /// Plugin events of `pillow`, oldest first.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn plugin_events(&self, pillow: &str) -> Result<Vec<PluginEvent>, StoreError> {
        let rows: Vec<EventRow> = on_db!(&self.db, pool => {
            sqlx::query_as(
                "SELECT pillow, process_num, processor, event, version, reason, positions, at_ms
                 FROM plugin_events WHERE pillow = $1 ORDER BY id",
            )
            .bind(pillow)
            .fetch_all(pool)
            .await
            .map_err(self.err())?
        });
        Ok(rows.into_iter().map(PluginEvent::from).collect())
    }
}
