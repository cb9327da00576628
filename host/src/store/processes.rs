//! Which host processes run and where their admin endpoints are, for
//! `status`, `pillowtop plugin reload` and the checkpoint commands; and the
//! one rule for whether a recorded process is alive ([`Liveness`]).

use super::{Store, StoreError};
use crate::db::on_db;
use std::time::Duration;

/// How often a running process records that it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// A process whose last heartbeat is older than this (three missed
/// heartbeats) is taken for gone: killed, or hung.
pub const STALE_AFTER: Duration = Duration::from_secs(15);

/// Whether a recorded process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// Its heartbeat is fresh.
    Running,
    /// It stopped gracefully.
    Stopped,
    /// It never stopped, but its heartbeat is older than [`STALE_AFTER`]:
    /// killed or hung.
    Unresponsive,
}

impl Liveness {
    /// The name `status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Running => "running",
            Liveness::Stopped => "stopped",
            Liveness::Unresponsive => "unresponsive",
        }
    }
}

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

impl ProcessRecord {
    /// Whether it runs at `now_ms`: the one liveness rule.
    pub fn liveness(&self, now_ms: i64) -> Liveness {
        if self.stopped_at_ms.is_some() {
            Liveness::Stopped
        } else if now_ms - self.heartbeat_at_ms >= STALE_AFTER.as_millis() as i64 {
            Liveness::Unresponsive
        } else {
            Liveness::Running
        }
    }

    /// Whole seconds since its last heartbeat at `now_ms`.
    pub fn seconds_since_heartbeat(&self, now_ms: i64) -> i64 {
        (now_ms - self.heartbeat_at_ms).max(0) / 1000
    }
}

#[derive(sqlx::FromRow)]
struct ProcessRow {
    pillow: String,
    process_num: i64,
    pid: i64,
    host: String,
    admin_url: Option<String>,
    started_at_ms: i64,
    heartbeat_at_ms: i64,
    stopped_at_ms: Option<i64>,
    waiting_for: Option<String>,
    waiting_since_ms: Option<i64>,
    waiting_error: Option<String>,
}

impl From<ProcessRow> for ProcessRecord {
    fn from(r: ProcessRow) -> ProcessRecord {
        ProcessRecord {
            pillow: r.pillow,
            process_num: r.process_num as u32,
            pid: r.pid as u32,
            host: r.host,
            admin_url: r.admin_url,
            started_at_ms: r.started_at_ms,
            heartbeat_at_ms: r.heartbeat_at_ms,
            stopped_at_ms: r.stopped_at_ms,
            waiting: r.waiting_for.map(|sink| Waiting {
                sink,
                since_ms: r.waiting_since_ms.unwrap_or_default(),
                error: r.waiting_error.unwrap_or_default(),
            }),
        }
    }
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

impl Store {
    /// Record that this process runs `pillow` as `process_num` (replacing
    /// an earlier record of the same slot).
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn register_process(&self, p: &ProcessRecord) -> Result<(), StoreError> {
        on_db!(&self.db, pool => {
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
            .map_err(self.err())?;
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
        on_db!(&self.db, pool => {
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
            .map_err(self.err())?;
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
        on_db!(&self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE processes SET {column} = $1 WHERE pid = $2 AND stopped_at_ms IS NULL"
            )))
            .bind(at_ms)
            .bind(pid as i64)
            .execute(pool)
            .await
            .map_err(self.err())?;
        });
        Ok(())
    }

    /// Every recorded process, by pillow then process number.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn processes(&self) -> Result<Vec<ProcessRecord>, StoreError> {
        let rows: Vec<ProcessRow> = on_db!(&self.db, pool => {
            sqlx::query_as(
                "SELECT pillow, process_num, pid, host, admin_url, started_at_ms, heartbeat_at_ms, stopped_at_ms,
                        waiting_for, waiting_since_ms, waiting_error
                 FROM processes ORDER BY pillow, process_num",
            )
            .fetch_all(pool)
            .await
            .map_err(self.err())?
        });
        Ok(rows.into_iter().map(ProcessRecord::from).collect())
    }

    /// A process of `pillow` that is running now (by the liveness rule),
    /// if any: what refuses a checkpoint move, and what a rebuild waits on.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn running_process(
        &self,
        pillow: &str,
        now_ms: i64,
    ) -> Result<Option<ProcessRecord>, StoreError> {
        Ok(self
            .processes()
            .await?
            .into_iter()
            .find(|p| p.pillow == pillow && p.liveness(now_ms) == Liveness::Running))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_alive_while_its_heartbeat_is_fresh() {
        let p = ProcessRecord {
            pillow: "p".into(),
            process_num: 0,
            pid: 1,
            host: "h".into(),
            admin_url: None,
            started_at_ms: 0,
            heartbeat_at_ms: 100_000,
            stopped_at_ms: None,
            waiting: None,
        };
        assert_eq!(p.liveness(100_000), Liveness::Running);
        assert_eq!(p.liveness(114_999), Liveness::Running);
        assert_eq!(p.liveness(115_000), Liveness::Unresponsive);
        assert_eq!(p.seconds_since_heartbeat(115_000), 15);
        let stopped = ProcessRecord {
            stopped_at_ms: Some(100_001),
            ..p
        };
        assert_eq!(stopped.liveness(100_002), Liveness::Stopped);
        assert_eq!(stopped.liveness(900_000), Liveness::Stopped);
        assert_eq!(STALE_AFTER, 3 * HEARTBEAT, "three missed heartbeats");
    }
}
