//! Which host processes run, where their admin endpoints are, and which
//! plugin versions went live in them (or were refused), for `status` and
//! `pillowtop plugin reload`.

use super::{Backend, Store, StoreError};
use crate::feed::TopicPartition;
use sqlx::Row;
use std::collections::BTreeMap;

/// A running (or stopped) host process of a pillow.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProcessRecord {
    /// Pillow.
    pub pillow: String,
    /// Its `process_num`.
    pub process_num: u32,
    /// OS process id.
    pub pid: u32,
    /// Host name.
    pub host: String,
    /// Base URL of its admin endpoint, if it has one.
    pub admin_url: Option<String>,
    /// Start time, epoch ms.
    pub started_at_ms: i64,
    /// Last heartbeat, epoch ms.
    pub heartbeat_at_ms: i64,
    /// Set when it stopped gracefully, epoch ms.
    pub stopped_at_ms: Option<i64>,
    /// The sink it is waiting for, during an outage.
    pub waiting: Option<Waiting>,
}

/// A sink outage a process is waiting out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Waiting {
    /// The sink (its display: kind and server, no password).
    pub sink: String,
    /// Since when, epoch ms.
    pub since_ms: i64,
    /// The error that started it.
    pub error: String,
}

/// What happened to a plugin version in a pillow process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginEventKind {
    /// The version took over at a chunk boundary.
    Live,
    /// The version was refused; the previous one keeps running.
    Refused,
}

impl PluginEventKind {
    fn as_str(self) -> &'static str {
        match self {
            PluginEventKind::Live => "live",
            PluginEventKind::Refused => "refused",
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
    /// Why it was refused.
    pub reason: Option<String>,
    /// For `live`: the next offset per partition when it took over.
    pub positions: BTreeMap<TopicPartition, u64>,
    /// When, epoch ms.
    pub at_ms: i64,
}

impl Store {
    /// Record that this process runs `pillow` as `process_num` (replacing
    /// an earlier record of the same slot).
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn register_process(&self, p: &ProcessRecord) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO processes (pillow, process_num, pid, host, admin_url, started_at_ms, heartbeat_at_ms, stopped_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)
                 ON CONFLICT (pillow, process_num) DO UPDATE SET pid = excluded.pid, host = excluded.host,
                   admin_url = excluded.admin_url, started_at_ms = excluded.started_at_ms,
                   heartbeat_at_ms = excluded.heartbeat_at_ms, stopped_at_ms = NULL,
                   waiting_for = NULL, waiting_since_ms = NULL, waiting_error = NULL",
            )
            .bind(&p.pillow)
            .bind(p.process_num as i64)
            .bind(p.pid as i64)
            .bind(&p.host)
            .bind(&p.admin_url)
            .bind(p.started_at_ms)
            .bind(p.heartbeat_at_ms)
            .execute(pool)
            .await
            .map_err(self.db())?;
        });
        Ok(())
    }

    /// Refresh the heartbeat of every slot this pid holds.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn heartbeat(&self, pid: u32, at_ms: i64) -> Result<(), StoreError> {
        self.update_running(pid, "heartbeat_at_ms", at_ms).await
    }

    /// Record (or clear, with `None`) the sink outage this pid's slot of
    /// `pillow` is waiting out.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn set_waiting(
        &self,
        pillow: &str,
        pid: u32,
        waiting: Option<&Waiting>,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "UPDATE processes SET waiting_for = $1, waiting_since_ms = $2, waiting_error = $3
                 WHERE pillow = $4 AND pid = $5 AND stopped_at_ms IS NULL",
            )
            .bind(waiting.map(|w| w.sink.as_str()))
            .bind(waiting.map(|w| w.since_ms))
            .bind(waiting.map(|w| w.error.as_str()))
            .bind(pillow)
            .bind(pid as i64)
            .execute(pool)
            .await
            .map_err(self.db())?;
        });
        Ok(())
    }

    /// Mark this pid's slots as stopped gracefully.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn process_stopped(&self, pid: u32, at_ms: i64) -> Result<(), StoreError> {
        self.update_running(pid, "stopped_at_ms", at_ms).await
    }

    /// Set `column` (one of two fixed names) on this pid's running slots.
    async fn update_running(
        &self,
        pid: u32,
        column: &'static str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE processes SET {column} = $1 WHERE pid = $2 AND stopped_at_ms IS NULL"
            )))
            .bind(at_ms)
            .bind(pid as i64)
            .execute(pool)
            .await
            .map_err(self.db())?;
        });
        Ok(())
    }

    /// Every recorded process, by pillow then process number.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn processes(&self) -> Result<Vec<ProcessRecord>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT pillow, process_num, pid, host, admin_url, started_at_ms, heartbeat_at_ms, stopped_at_ms,
                        waiting_for, waiting_since_ms, waiting_error
                 FROM processes ORDER BY pillow, process_num",
            )
            .fetch_all(pool)
            .await
            .map_err(self.db())?;
            Ok(rows
                .iter()
                .map(|r| ProcessRecord {
                    pillow: r.get(0),
                    process_num: r.get::<i64, _>(1) as u32,
                    pid: r.get::<i64, _>(2) as u32,
                    host: r.get(3),
                    admin_url: r.get(4),
                    started_at_ms: r.get(5),
                    heartbeat_at_ms: r.get(6),
                    stopped_at_ms: r.get(7),
                    waiting: r.get::<Option<String>, _>(8).map(|sink| Waiting {
                        sink,
                        since_ms: r.get::<Option<i64>, _>(9).unwrap_or_default(),
                        error: r.get::<Option<String>, _>(10).unwrap_or_default(),
                    }),
                })
                .collect())
        })
    }

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
        on_pool!(self, pool => {
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
            .map_err(self.db())?;
        });
        Ok(())
    }

    /// Plugin events of `pillow`, oldest first.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn plugin_events(&self, pillow: &str) -> Result<Vec<PluginEvent>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT pillow, process_num, processor, event, version, reason, positions, at_ms
                 FROM plugin_events WHERE pillow = $1 ORDER BY id",
            )
            .bind(pillow)
            .fetch_all(pool)
            .await
            .map_err(self.db())?;
            Ok(rows
                .iter()
                .map(|r| {
                    let positions: Option<String> = r.get(6);
                    let positions = positions
                        .and_then(|p| serde_json::from_str::<BTreeMap<String, u64>>(&p).ok())
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|(tp, n)| Some((tp.parse().ok()?, n)))
                        .collect();
                    PluginEvent {
                        pillow: r.get(0),
                        process_num: r.get::<i64, _>(1) as u32,
                        processor: r.get(2),
                        event: if r.get::<String, _>(3) == "live" {
                            PluginEventKind::Live
                        } else {
                            PluginEventKind::Refused
                        },
                        version: r.get(4),
                        reason: r.get(5),
                        positions,
                        at_ms: r.get(7),
                    }
                })
                .collect())
        })
    }
}
