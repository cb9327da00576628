//! The store: checkpoints, pillow errors, process records and the SQL
//! sink tables, in one database (SQLite, the embedded default, or
//! PostgreSQL), so a chunk's writes, its pillow errors and its checkpoint
//! commit in **one transaction**: after a crash either all of a chunk
//! landed or none of it did.
//!
//! Both databases get the same SQL text: queries use `$N` placeholders,
//! which SQLite and PostgreSQL both accept, and [`on_pool!`] expands a
//! body once per backend so each copy type-checks against its own driver.
//! Only DDL (`migrations/sqlite-store`, `migrations/postgres`) and the
//! sinks' bulk writes ([`crate::sink::SqlSink`]) differ.

use crate::action::{PluginInfo, TableSpec};
use crate::config::StoreLocation;
use crate::errors::{Backoff, ErrorKind};
use crate::feed::TopicPartition;
use crate::sink::{self, SinkError, SqlSink, WritePlan};
use sqlx::{PgPool, Row, SqlitePool};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// Run `$body` with `$pool` bound to the store's pool, whichever database
/// it is: the body is written once and compiled per backend.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite(crate::sqlite::Database { pool: $pool, .. }) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

mod plugins;
mod postgres;
pub use plugins::{PluginEvent, PluginEventKind, ProcessRecord, Waiting};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("{store}: {source}")]
    Database {
        /// Which store ([`StoreLocation`]'s display: no password).
        store: String,
        /// The error.
        source: sqlx::Error,
    },
    /// The database could not be opened or migrated.
    #[error("{store}: {message}")]
    Migrate {
        /// Which store.
        store: String,
        /// What failed and what to do.
        message: String,
    },
    /// The database server could not be reached while opening the store
    /// (connection refused, too many connections, shutting down): the
    /// same open may succeed later.
    #[error("{store}: {message}")]
    Unreachable {
        /// Which store.
        store: String,
        /// What failed and what to check.
        message: String,
    },
    /// Preparing or writing a sink table failed.
    #[error("{store}: {source}")]
    Sink {
        /// Which store.
        store: String,
        /// The sink error.
        source: SinkError,
    },
}

impl StoreError {
    /// Whether the store is unreachable or briefly unable to serve, so the
    /// same work may succeed later (see [`sink::is_outage`]), as opposed to
    /// a refusal that retrying cannot fix.
    pub fn is_outage(&self) -> bool {
        match self {
            StoreError::Database { source, .. }
            | StoreError::Sink {
                source: SinkError::Database(source),
                ..
            } => sink::is_outage(source),
            StoreError::Unreachable { .. } => true,
            StoreError::Migrate { .. } | StoreError::Sink { .. } => false,
        }
    }

    /// Whether the database refused the data written (see
    /// [`sink::is_data_error`]): another split of the same writes may
    /// succeed without the change at fault.
    pub fn is_data(&self) -> bool {
        match self {
            StoreError::Database { source, .. }
            | StoreError::Sink {
                source: SinkError::Database(source),
                ..
            } => sink::is_data_error(source),
            StoreError::Migrate { .. }
            | StoreError::Unreachable { .. }
            | StoreError::Sink { .. } => false,
        }
    }
}

/// A failed change, ready to be recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct PillowErrorRecord {
    /// Document id (or `topic:partition:offset` when the message had none).
    pub doc_id: String,
    /// Pillow name.
    pub pillow: String,
    /// Processor (plugin) name; empty for decode errors.
    pub processor: String,
    /// Plugin version (`version+hash`), if a plugin ran.
    pub plugin_version: Option<String>,
    /// Kind.
    pub kind: ErrorKind,
    /// Message.
    pub message: String,
    /// Where the change was.
    pub tp: TopicPartition,
    /// Its offset.
    pub offset: u64,
    /// Its domain.
    pub domain: Option<String>,
    /// Its document type.
    pub document_type: Option<String>,
    /// The raw feed message value, so nothing is lost.
    pub change: Vec<u8>,
    /// When it failed, epoch ms.
    pub at_ms: i64,
    /// Retry schedule.
    pub backoff: Backoff,
}

/// A stored pillow error, as `status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredError {
    /// Document id.
    pub doc_id: String,
    /// Processor.
    pub processor: String,
    /// Plugin version.
    pub plugin_version: Option<String>,
    /// Kind.
    pub kind: String,
    /// Message.
    pub message: String,
    /// Where.
    pub tp: TopicPartition,
    /// Offset.
    pub offset: u64,
    /// Attempts so far.
    pub attempts: u32,
    /// Next attempt (None: parked).
    pub next_attempt_ms: Option<i64>,
    /// The raw change.
    pub change: Vec<u8>,
}

/// What one chunk commits.
#[derive(Debug, Default)]
pub struct ChunkCommit {
    /// Sink writes.
    pub plan: WritePlan,
    /// Failed changes.
    pub errors: Vec<PillowErrorRecord>,
    /// Checkpoints to save (next offsets), if due.
    pub checkpoints: Vec<(TopicPartition, u64)>,
}

/// A saved checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Where.
    pub tp: TopicPartition,
    /// The next offset to read.
    pub next_offset: u64,
    /// When it was saved, epoch ms.
    pub updated_at_ms: i64,
}

#[derive(Clone)]
enum Backend {
    Sqlite(crate::sqlite::Database),
    Postgres(PgPool),
}

/// The store, in SQLite or PostgreSQL.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// For messages: [`StoreLocation`]'s display.
    location: Arc<str>,
    /// Declared row tables. Replaced whole (copy on write) when a plugin is
    /// prepared, so a commit takes a cheap `Arc` clone instead of copying specs.
    tables: Arc<RwLock<Arc<HashMap<String, TableSpec>>>>,
}

impl Store {
    /// Open (creating if needed) and migrate the SQLite store at `path`.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened or migrated.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        Store::connect(&StoreLocation::Sqlite {
            path: path.to_owned(),
        })
        .await
    }

    /// Open the store at `location` and bring its schema up to date.
    /// PostgreSQL: the schema is created if missing; concurrent starts
    /// are safe (migrations take an advisory lock).
    ///
    /// # Errors
    ///
    /// When the database cannot be reached or migrated; the message says
    /// which store and what to check.
    pub async fn connect(location: &StoreLocation) -> Result<Store, StoreError> {
        static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite-store");
        let name = location.to_string();
        let backend = match location {
            StoreLocation::Sqlite { path } => {
                Backend::Sqlite(crate::sqlite::open(path, &SQLITE).await.map_err(|e| {
                    StoreError::Migrate {
                        store: name.clone(),
                        message: e.to_string(),
                    }
                })?)
            }
            StoreLocation::Postgres { url, schema } => {
                Backend::Postgres(postgres::open(url, schema).await.map_err(|e| {
                    if e.outage {
                        StoreError::Unreachable {
                            store: name.clone(),
                            message: e.message,
                        }
                    } else {
                        StoreError::Migrate {
                            store: name.clone(),
                            message: e.message,
                        }
                    }
                })?)
            }
        };
        Ok(Store {
            backend,
            location: name.into(),
            tables: Arc::default(),
        })
    }

    /// [`Store::connect`] for a process starting up: while the database
    /// is unreachable, log it and try again with capped, jittered backoff
    /// instead of failing, so a process started before its database comes
    /// up by itself. `Ok(None)` when `shutdown` fires first.
    ///
    /// # Errors
    ///
    /// As [`Store::connect`] for everything but an outage (a bad URL, an
    /// unknown role, a failed migration): retrying cannot fix those. An
    /// outage is never given up on: only a reachable database or
    /// `shutdown` ends the wait.
    pub async fn connect_when_reachable(
        location: &StoreLocation,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<Option<Store>, StoreError> {
        sink::wait_until_reachable(&location.to_string(), shutdown, || Store::connect(location))
            .await
            .transpose()
    }

    /// Which store this is, for messages (no password).
    pub fn location(&self) -> &str {
        &self.location
    }

    fn db(&self) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        |source| StoreError::Database {
            store: self.location.to_string(),
            source,
        }
    }

    fn sink(&self) -> impl Fn(SinkError) -> StoreError + '_ {
        |source| StoreError::Sink {
            store: self.location.to_string(),
            source,
        }
    }

    /// The SQLite pool, when the store is SQLite (for tests and tools).
    pub fn sqlite(&self) -> Option<&SqlitePool> {
        match &self.backend {
            Backend::Sqlite(db) => Some(&db.pool),
            Backend::Postgres(_) => None,
        }
    }

    /// The PostgreSQL pool, when the store is PostgreSQL (for tests and tools).
    pub fn postgres(&self) -> Option<&PgPool> {
        match &self.backend {
            Backend::Postgres(pool) => Some(pool),
            Backend::Sqlite(_) => None,
        }
    }

    /// Create the tables and document indices a plugin declared, checking
    /// existing ones.
    ///
    /// # Errors
    ///
    /// A mismatching existing table names table and column.
    pub async fn ensure_outputs(&self, info: &PluginInfo) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(self.db())?;
            for index in &info.indices {
                tx.ensure_index(index).await.map_err(self.sink())?;
            }
            for table in &info.tables {
                tx.ensure_table(table).await.map_err(self.sink())?;
            }
            tx.commit().await.map_err(self.db())?;
        });
        let mut tables = self.tables.write().unwrap_or_else(|e| e.into_inner());
        let mut updated = HashMap::clone(&tables);
        for t in &info.tables {
            updated.insert(t.name.clone(), t.clone());
        }
        *tables = Arc::new(updated);
        Ok(())
    }

    /// Saved checkpoints of `checkpoint_id`.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn checkpoints(&self, checkpoint_id: &str) -> Result<Vec<Checkpoint>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query("SELECT topic, partition, next_offset, updated_at_ms FROM checkpoints WHERE checkpoint_id = $1 ORDER BY topic, partition")
                .bind(checkpoint_id)
                .fetch_all(pool)
                .await
                .map_err(self.db())?;
            Ok(rows
                .iter()
                .map(|r| Checkpoint {
                    tp: TopicPartition::new(&r.get::<String, _>(0), r.get::<i64, _>(1) as u32),
                    next_offset: r.get::<i64, _>(2) as u64,
                    updated_at_ms: r.get(3),
                })
                .collect())
        })
    }

    /// Commit a chunk: sink writes, pillow errors and checkpoints in one transaction.
    ///
    /// # Errors
    ///
    /// When the database fails; nothing of the chunk is kept.
    pub async fn commit(&self, checkpoint_id: &str, chunk: &ChunkCommit) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(self.db())?;
            if !chunk.plan.is_empty() {
                let tables = Arc::clone(&self.tables.read().unwrap_or_else(|e| e.into_inner()));
                tx.apply(&chunk.plan, &tables).await.map_err(self.sink())?;
            }
            for e in &chunk.errors {
                let attempts: i64 = sqlx::query_scalar(
                    r#"INSERT INTO pillow_errors (doc_id, pillow, processor, plugin_version, kind, message, topic, partition, "offset",
                           domain, document_type, change, attempts, first_attempt_ms, last_attempt_ms, next_attempt_ms)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 1, $13, $13, NULL)
                       ON CONFLICT (doc_id, pillow, processor) DO UPDATE SET
                           plugin_version = excluded.plugin_version, kind = excluded.kind, message = excluded.message,
                           topic = excluded.topic, partition = excluded.partition, "offset" = excluded."offset",
                           domain = excluded.domain, document_type = excluded.document_type, change = excluded.change,
                           attempts = pillow_errors.attempts + 1, last_attempt_ms = excluded.last_attempt_ms
                       RETURNING attempts"#,
                )
                .bind(&e.doc_id)
                .bind(&e.pillow)
                .bind(&e.processor)
                .bind(&e.plugin_version)
                .bind(e.kind.as_str())
                .bind(&e.message)
                .bind(&*e.tp.topic)
                .bind(e.tp.partition as i64)
                .bind(e.offset as i64)
                .bind(&e.domain)
                .bind(&e.document_type)
                .bind(&e.change)
                .bind(e.at_ms)
                .fetch_one(&mut *tx)
                .await
                .map_err(self.db())?;
                let next = if e.kind.retryable() {
                    e.backoff.next_attempt_ms(attempts as u32, e.at_ms)
                } else {
                    None
                };
                sqlx::query("UPDATE pillow_errors SET next_attempt_ms = $1 WHERE doc_id = $2 AND pillow = $3 AND processor = $4")
                    .bind(next)
                    .bind(&e.doc_id)
                    .bind(&e.pillow)
                    .bind(&e.processor)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.db())?;
            }
            let now = crate::time::now_ms();
            for (tp, next) in &chunk.checkpoints {
                sqlx::query(
                    "INSERT INTO checkpoints (checkpoint_id, topic, partition, next_offset, updated_at_ms) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (checkpoint_id, topic, partition) DO UPDATE SET next_offset = excluded.next_offset, updated_at_ms = excluded.updated_at_ms",
                )
                .bind(checkpoint_id)
                .bind(&*tp.topic)
                .bind(tp.partition as i64)
                .bind(*next as i64)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(self.db())?;
            }
            tx.commit().await.map_err(self.db())
        })?;
        if let Backend::Sqlite(db) = &self.backend {
            db.committed();
        }
        Ok(())
    }

    /// Set checkpoints directly (operator tooling).
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn set_checkpoints(
        &self,
        checkpoint_id: &str,
        checkpoints: &[(TopicPartition, u64)],
    ) -> Result<(), StoreError> {
        let chunk = ChunkCommit {
            checkpoints: checkpoints.to_vec(),
            ..ChunkCommit::default()
        };
        self.commit(checkpoint_id, &chunk).await
    }

    /// Pillow error counts of `pillow` by kind.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn error_counts(&self, pillow: &str) -> Result<Vec<(String, u64)>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT kind, COUNT(*) FROM pillow_errors WHERE pillow = $1 GROUP BY kind ORDER BY kind",
            )
            .bind(pillow)
            .fetch_all(pool)
            .await
            .map_err(self.db())?;
            Ok(rows
                .iter()
                .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) as u64))
                .collect())
        })
    }

    /// The latest `limit` pillow errors of `pillow`, newest first.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn recent_errors(
        &self,
        pillow: &str,
        limit: u32,
    ) -> Result<Vec<StoredError>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(
                r#"SELECT doc_id, processor, plugin_version, kind, message, topic, partition, "offset", attempts, next_attempt_ms, change
                   FROM pillow_errors WHERE pillow = $1 ORDER BY last_attempt_ms DESC, id DESC LIMIT $2"#,
            )
            .bind(pillow)
            .bind(limit as i64)
            .fetch_all(pool)
            .await
            .map_err(self.db())?;
            Ok(rows
            .iter()
            .map(|r| StoredError {
                doc_id: r.get(0),
                processor: r.get(1),
                plugin_version: r.get(2),
                kind: r.get(3),
                message: r.get(4),
                tp: TopicPartition::new(&r.get::<String, _>(5), r.get::<i64, _>(6) as u32),
                offset: r.get::<i64, _>(7) as u64,
                attempts: r.get::<i64, _>(8) as u32,
                next_attempt_ms: r.get(9),
                change: r.get(10),
            })
            .collect())
        })
    }

    /// Live document counts per index and row counts per table.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn sink_counts(&self) -> Result<SinkCounts, StoreError> {
        on_pool!(self, pool => {
            let mut counts = SinkCounts::default();
            let indices: Vec<String> =
                sqlx::query_scalar("SELECT name FROM sink_indices ORDER BY name")
                    .fetch_all(pool)
                    .await
                    .map_err(self.db())?;
            for index in indices {
                let table = sink::quote(&sink::index_table(&index));
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT COUNT(*) FROM {table} WHERE document IS NOT NULL"
                )))
                .fetch_one(pool)
                .await
                .map_err(self.db())?;
                counts.documents.push((index, n as u64));
            }
            let tables: Vec<String> =
                sqlx::query_scalar("SELECT name FROM sink_tables ORDER BY name")
                    .fetch_all(pool)
                    .await
                    .map_err(self.db())?;
            for table in tables {
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT COUNT(*) FROM {}",
                    sink::quote(&table)
                )))
                .fetch_one(pool)
                .await
                .map_err(self.db())?;
                counts.rows.push((table, n as u64));
            }
            Ok(counts)
        })
    }

    /// One stored document of `index` (None when absent or deleted), with its version.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn document(
        &self,
        index: &str,
        id: &str,
    ) -> Result<Option<(Option<String>, u64)>, StoreError> {
        let table = sink::quote(&sink::index_table(index));
        on_pool!(self, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT document, version FROM {table} WHERE id = $1"
            )))
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(self.db())?;
            Ok(row.map(|r| (r.get::<Option<String>, _>(0), r.get::<i64, _>(1) as u64)))
        })
    }
}

/// What the sinks hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkCounts {
    /// (index, live documents).
    pub documents: Vec<(String, u64)>,
    /// (table, rows).
    pub rows: Vec<(String, u64)>,
}
