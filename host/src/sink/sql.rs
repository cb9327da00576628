//! The SQL sinks: row tables, and document tables when there is no
//! Elasticsearch, in the store's database (SQLite: [`super::sqlite`],
//! PostgreSQL: [`super::postgres`]). A chunk's writes commit in one
//! transaction with its pillow errors and its checkpoint
//! ([`SqlSink::commit`]), so after a crash either all of it landed or none.

use super::{SinkError, WritePlan, index_table};
use crate::action::{PluginInfo, TableSpec};
use crate::db::{Db, DbError, Tx, on_db, quote};
use crate::errors::PillowError;
use crate::feed::TopicPartition;
use crate::store::Store;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// What a backend's table work failed with, before the sink adds which
/// store it is.
#[derive(Debug)]
pub(super) enum TableError {
    /// The database failed.
    Db(sqlx::Error),
    /// An existing table differs from the spec (the detail names how).
    Mismatch(String),
}

impl From<sqlx::Error> for TableError {
    fn from(e: sqlx::Error) -> TableError {
        TableError::Db(e)
    }
}

/// What one chunk (or piece of one) commits in one transaction.
#[derive(Debug, Default)]
pub struct ChunkCommit {
    /// Sink writes.
    pub plan: WritePlan,
    /// Failed changes.
    pub errors: Vec<PillowError>,
    /// Checkpoints to save (next offsets), if due.
    pub checkpoints: Vec<(TopicPartition, u64)>,
}

/// What the SQL sinks hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkCounts {
    /// (index, live documents).
    pub documents: Vec<(String, u64)>,
    /// (table, rows).
    pub rows: Vec<(String, u64)>,
}

/// The SQL sinks of a store's database. Cheap to clone; clones share the
/// declared table specs.
#[derive(Clone, Debug)]
pub struct SqlSink {
    db: Db,
    location: Arc<str>,
    /// Declared row tables. Replaced whole (copy on write) when a plugin is
    /// prepared, so a commit takes a cheap `Arc` clone instead of copying specs.
    tables: Arc<RwLock<Arc<HashMap<String, TableSpec>>>>,
}

impl SqlSink {
    /// The SQL sinks in `store`'s database.
    pub fn new(store: &Store) -> SqlSink {
        SqlSink {
            db: store.db().clone(),
            location: store.location().into(),
            tables: Arc::default(),
        }
    }

    fn err(&self) -> impl Fn(sqlx::Error) -> SinkError + '_ {
        |source| {
            SinkError::Database(DbError {
                store: self.location.to_string(),
                source,
            })
        }
    }

    fn table_err(&self, table: &str) -> impl Fn(TableError) -> SinkError + '_ {
        let table = table.to_owned();
        move |e| match e {
            TableError::Db(source) => self.err()(source),
            TableError::Mismatch(detail) => SinkError::Mismatch {
                store: self.location.to_string(),
                table: table.clone(),
                detail,
            },
        }
    }

    /// Create the tables and document tables a plugin declared, checking
    /// existing ones, and remember the specs for writing.
    ///
    /// # Errors
    ///
    /// A mismatching existing table names table and column.
    pub async fn ensure_outputs(&self, info: &PluginInfo) -> Result<(), SinkError> {
        let mut tx = self.db.begin().await.map_err(self.err())?;
        match &mut tx {
            Tx::Sqlite(t) => {
                for index in &info.indices {
                    super::sqlite::ensure_index(t, index)
                        .await
                        .map_err(self.err())?;
                }
                for table in &info.tables {
                    super::sqlite::ensure_table(t, table)
                        .await
                        .map_err(self.table_err(&table.name))?;
                }
            }
            Tx::Postgres(t) => {
                for index in &info.indices {
                    super::postgres::ensure_index(t, index)
                        .await
                        .map_err(self.err())?;
                }
                for table in &info.tables {
                    super::postgres::ensure_table(t, table)
                        .await
                        .map_err(self.table_err(&table.name))?;
                }
            }
        }
        self.db.commit(tx).await.map_err(self.err())?;
        let mut tables = self.tables.write().unwrap_or_else(|e| e.into_inner());
        let mut updated = HashMap::clone(&tables);
        for t in &info.tables {
            updated.insert(t.name.clone(), t.clone());
        }
        *tables = Arc::new(updated);
        Ok(())
    }

    /// Commit a chunk: sink writes, pillow errors and checkpoints (of
    /// `checkpoint_id`) in one transaction.
    ///
    /// # Errors
    ///
    /// When the database fails; nothing of the chunk is kept.
    pub async fn commit(&self, checkpoint_id: &str, chunk: &ChunkCommit) -> Result<(), SinkError> {
        let mut tx = self.db.begin().await.map_err(self.err())?;
        if !chunk.plan.is_empty() {
            let tables = Arc::clone(&self.tables.read().unwrap_or_else(|e| e.into_inner()));
            match &mut tx {
                Tx::Sqlite(t) => super::sqlite::apply(t, &chunk.plan, &tables).await,
                Tx::Postgres(t) => super::postgres::apply(t, &chunk.plan, &tables).await,
            }
            .map_err(self.err())?;
        }
        crate::errors::sql::record(&mut tx, &chunk.errors)
            .await
            .map_err(self.err())?;
        crate::store::save_checkpoints(&mut tx, checkpoint_id, &chunk.checkpoints)
            .await
            .map_err(self.err())?;
        self.db.commit(tx).await.map_err(self.err())
    }

    /// Live document counts per index and row counts per table.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn counts(&self) -> Result<SinkCounts, SinkError> {
        on_db!(&self.db, pool => {
            let mut counts = SinkCounts::default();
            let indices: Vec<String> =
                sqlx::query_scalar("SELECT name FROM sink_indices ORDER BY name")
                    .fetch_all(pool)
                    .await
                    .map_err(self.err())?;
            for index in indices {
                let table = quote(&index_table(&index));
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT COUNT(*) FROM {table} WHERE document IS NOT NULL"
                )))
                .fetch_one(pool)
                .await
                .map_err(self.err())?;
                counts.documents.push((index, n as u64));
            }
            let tables: Vec<String> =
                sqlx::query_scalar("SELECT name FROM sink_tables ORDER BY name")
                    .fetch_all(pool)
                    .await
                    .map_err(self.err())?;
            for table in tables {
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT COUNT(*) FROM {}",
                    quote(&table)
                )))
                .fetch_one(pool)
                .await
                .map_err(self.err())?;
                counts.rows.push((table, n as u64));
            }
            Ok(counts)
        })
    }

    /// One stored document of `index` (`None` when absent; `Some((None,
    /// version))` for a deletion's tombstone), with its version.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn document(
        &self,
        index: &str,
        id: &str,
    ) -> Result<Option<(Option<String>, u64)>, SinkError> {
        let table = quote(&index_table(index));
        let row: Option<(Option<String>, i64)> = on_db!(&self.db, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT document, version FROM {table} WHERE id = $1"
            )))
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(self.err())?
        });
        Ok(row.map(|(document, version)| (document, version as u64)))
    }
}
