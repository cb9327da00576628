//! The store: checkpoints, pillow errors and the SQLite sink tables, in one
//! SQLite database, so a chunk's writes, its pillow errors and its
//! checkpoint commit in **one transaction**: after a crash either all of a
//! chunk landed or none of it did.

use crate::action::{PluginInfo, TableSpec};
use crate::errors::{Backoff, ErrorKind};
use crate::feed::TopicPartition;
use crate::sink::WritePlan;
use crate::sink::sqlite::{self as sqlite_sink, SinkError};
use sqlx::{Row, SqlitePool};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

mod plugins;
pub use plugins::{PluginEvent, PluginEventKind, ProcessRecord};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("store {path}: {source}")]
    Database {
        /// Store file.
        path: PathBuf,
        /// The error.
        source: sqlx::Error,
    },
    /// The file could not be opened or migrated.
    #[error("store {path}: {message}")]
    Migrate {
        /// Store file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Preparing or writing a sink table failed.
    #[error("store {path}: {source}")]
    Sink {
        /// Store file.
        path: PathBuf,
        /// The sink error.
        source: SinkError,
    },
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

/// The SQLite store.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    path: Arc<PathBuf>,
    /// Declared row tables. Replaced whole (copy on write) when a plugin is
    /// prepared, so a commit takes a cheap `Arc` clone instead of copying specs.
    tables: Arc<RwLock<Arc<HashMap<String, TableSpec>>>>,
}

impl Store {
    /// Open (creating if needed) and migrate the store at `path`.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened or migrated.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite-store");
        let pool = crate::sqlite::open(path, &MIGRATOR)
            .await
            .map_err(|e| StoreError::Migrate {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        Ok(Store {
            pool,
            path: Arc::new(path.to_owned()),
            tables: Arc::default(),
        })
    }

    fn db(&self) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        |source| StoreError::Database {
            path: (*self.path).clone(),
            source,
        }
    }

    fn sink(&self) -> impl Fn(SinkError) -> StoreError + '_ {
        |source| StoreError::Sink {
            path: (*self.path).clone(),
            source,
        }
    }

    /// The pool, for status queries and tests.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Create the tables and document indices a plugin declared, checking
    /// existing ones.
    ///
    /// # Errors
    ///
    /// A mismatching existing table names table and column.
    pub async fn ensure_outputs(&self, info: &PluginInfo) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(self.db())?;
        for index in &info.indices {
            sqlite_sink::ensure_index(&mut tx, index)
                .await
                .map_err(self.sink())?;
        }
        for table in &info.tables {
            sqlite_sink::ensure_table(&mut tx, table)
                .await
                .map_err(self.sink())?;
        }
        tx.commit().await.map_err(self.db())?;
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
        let rows = sqlx::query("SELECT topic, partition, next_offset, updated_at_ms FROM checkpoints WHERE checkpoint_id = ? ORDER BY topic, partition")
            .bind(checkpoint_id)
            .fetch_all(&self.pool)
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
    }

    /// Commit a chunk: sink writes, pillow errors and checkpoints in one transaction.
    ///
    /// # Errors
    ///
    /// When the database fails; nothing of the chunk is kept.
    pub async fn commit(&self, checkpoint_id: &str, chunk: &ChunkCommit) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(self.db())?;
        if !chunk.plan.is_empty() {
            let tables = Arc::clone(&self.tables.read().unwrap_or_else(|e| e.into_inner()));
            sqlite_sink::apply(&mut tx, &chunk.plan, &tables)
                .await
                .map_err(self.sink())?;
        }
        for e in &chunk.errors {
            let attempts: i64 = sqlx::query_scalar(
                r#"INSERT INTO pillow_errors (doc_id, pillow, processor, plugin_version, kind, message, topic, partition, "offset",
                       domain, document_type, change, attempts, first_attempt_ms, last_attempt_ms, next_attempt_ms)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, NULL)
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
            .bind(e.at_ms)
            .fetch_one(&mut *tx)
            .await
            .map_err(self.db())?;
            let next = if e.kind.retryable() {
                e.backoff.next_attempt_ms(attempts as u32, e.at_ms)
            } else {
                None
            };
            sqlx::query("UPDATE pillow_errors SET next_attempt_ms = ? WHERE doc_id = ? AND pillow = ? AND processor = ?")
                .bind(next)
                .bind(&e.doc_id)
                .bind(&e.pillow)
                .bind(&e.processor)
                .execute(&mut *tx)
                .await
                .map_err(self.db())?;
        }
        self.write_checkpoints(&mut tx, checkpoint_id, &chunk.checkpoints)
            .await?;
        tx.commit().await.map_err(self.db())
    }

    async fn write_checkpoints(
        &self,
        conn: &mut sqlx::SqliteConnection,
        checkpoint_id: &str,
        checkpoints: &[(TopicPartition, u64)],
    ) -> Result<(), StoreError> {
        let now = crate::time::now_ms();
        for (tp, next) in checkpoints {
            sqlx::query(
                "INSERT INTO checkpoints (checkpoint_id, topic, partition, next_offset, updated_at_ms) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (checkpoint_id, topic, partition) DO UPDATE SET next_offset = excluded.next_offset, updated_at_ms = excluded.updated_at_ms",
            )
            .bind(checkpoint_id)
            .bind(&*tp.topic)
            .bind(tp.partition as i64)
            .bind(*next as i64)
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(self.db())?;
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
        let mut tx = self.pool.begin().await.map_err(self.db())?;
        self.write_checkpoints(&mut tx, checkpoint_id, checkpoints)
            .await?;
        tx.commit().await.map_err(self.db())
    }

    /// Pillow error counts of `pillow` by kind.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn error_counts(&self, pillow: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT kind, COUNT(*) FROM pillow_errors WHERE pillow = ? GROUP BY kind ORDER BY kind",
        )
        .bind(pillow)
        .fetch_all(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) as u64))
            .collect())
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
        let rows = sqlx::query(
            r#"SELECT doc_id, processor, plugin_version, kind, message, topic, partition, "offset", attempts, next_attempt_ms, change
               FROM pillow_errors WHERE pillow = ? ORDER BY last_attempt_ms DESC, id DESC LIMIT ?"#,
        )
        .bind(pillow)
        .bind(limit as i64)
        .fetch_all(&self.pool)
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
    }

    /// Live document counts per index and row counts per table.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn sink_counts(&self) -> Result<SinkCounts, StoreError> {
        let mut counts = SinkCounts::default();
        let indices: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sink_indices ORDER BY name")
                .fetch_all(&self.pool)
                .await
                .map_err(self.db())?;
        for index in indices {
            let table = sqlite_sink::quote(&sqlite_sink::index_table(&index));
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM {table} WHERE document IS NOT NULL"
            )))
            .fetch_one(&self.pool)
            .await
            .map_err(self.db())?;
            counts.documents.push((index, n as u64));
        }
        let tables: Vec<String> = sqlx::query_scalar("SELECT name FROM sink_tables ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(self.db())?;
        for table in tables {
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM {}",
                sqlite_sink::quote(&table)
            )))
            .fetch_one(&self.pool)
            .await
            .map_err(self.db())?;
            counts.rows.push((table, n as u64));
        }
        Ok(counts)
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
        let table = sqlite_sink::quote(&sqlite_sink::index_table(index));
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT document, version FROM {table} WHERE id = ?"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(row.map(|r| (r.get::<Option<String>, _>(0), r.get::<i64, _>(1) as u64)))
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
