//! The SQL sinks: row tables, and document tables when there is no
//! Elasticsearch, in the store's database (SQLite: [`super::sqlite`],
//! PostgreSQL: [`super::postgres`]). A chunk's writes commit in one
//! transaction with its pillow errors and its checkpoint
//! ([`SqlSink::commit`]), so after a crash either all of it landed or none.

use super::hold::{self, HoldScope, PartitionOf, SettleError};
use super::{SinkError, WritePlan, describe_spec, index_table, shape};
use crate::action::{ColumnType, PluginInfo, TableSpec};
use crate::db::{Db, DbError, Tx, on_db, on_tx, quote};
use crate::errors::PillowError;
use crate::errors::sql::{Passed, RetryOutcome};
use crate::feed::TopicPartition;
use crate::store::Store;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// What one chunk (or piece of one) commits in one transaction.
#[derive(Debug, Default)]
pub struct ChunkCommit {
    /// Sink writes.
    pub plan: WritePlan,
    /// Failed changes.
    pub errors: Vec<PillowError>,
    /// Changes that passed, per processor: they resolve older open errors
    /// of their documents.
    pub passed: Vec<Passed>,
    /// The retry queue's outcomes, by the position of their change in the
    /// chunk. A pass whose error changed meanwhile (a newer change of the
    /// document was recorded or passed) does not apply, and its writes are
    /// dropped.
    pub retries: Vec<(u32, RetryOutcome)>,
    /// Checkpoints to save (next offsets), if due.
    pub checkpoints: Vec<(TopicPartition, u64)>,
    /// What candidates running beside processors found in the chunk.
    pub shadow: Vec<crate::shadow::ShadowRecord>,
    /// Where the writes come from, for tables a rebuild holds.
    pub scope: HoldScope,
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

    /// Create the tables and document tables a plugin declared, checking
    /// existing ones, record them in the store's registries, and remember
    /// the specs for writing.
    ///
    /// # Errors
    ///
    /// A mismatching existing table names table and column.
    pub async fn ensure_outputs(&self, info: &PluginInfo) -> Result<(), SinkError> {
        let mut tx = self.db.begin().await.map_err(self.err())?;
        if let Tx::Postgres(t) = &mut tx {
            // Two processes of one pillow starting together would race on
            // CREATE TABLE otherwise.
            super::postgres::lock_ddl(t).await.map_err(self.err())?;
        }
        for index in &info.indices {
            match &mut tx {
                Tx::Sqlite(t) => super::sqlite::create_index_table(t, index).await,
                Tx::Postgres(t) => super::postgres::create_index_table(t, index).await,
            }
            .map_err(self.err())?;
            on_tx!(&mut tx, t => {
                sqlx::query("INSERT INTO sink_indices (name, mappings) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET mappings = excluded.mappings")
                    .bind(&index.name)
                    .bind(&index.mappings)
                    .execute(&mut **t)
                    .await
                    .map(|_| ())
            })
            .map_err(self.err())?;
        }
        for table in &info.tables {
            self.ensure_table(&mut tx, table).await?;
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

    /// Drop the row table of `spec`, create it anew and hold it for the
    /// rebuild `rebuilder` in `partitions`, in one transaction: from its
    /// commit on, pillows writing the table leave it to the rebuild until
    /// they take it back ([`hold`]).
    ///
    /// # Errors
    ///
    /// When the database fails; nothing changes then.
    pub async fn hold_for_rebuild(
        &self,
        spec: &TableSpec,
        rebuilder: &str,
        partitions: &[TopicPartition],
    ) -> Result<(), SinkError> {
        let mut tx = self.db.begin().await.map_err(self.err())?;
        if let Tx::Postgres(t) = &mut tx {
            super::postgres::lock_ddl(t).await.map_err(self.err())?;
        }
        let ddl = format!("DROP TABLE IF EXISTS {}", quote(&spec.name));
        on_tx!(&mut tx, t => sqlx::query(sqlx::AssertSqlSafe(ddl)).execute(&mut **t).await.map(|_| ()))
            .map_err(self.err())?;
        on_tx!(&mut tx, t => {
            sqlx::query("DELETE FROM sink_tables WHERE name = $1")
                .bind(&spec.name)
                .execute(&mut **t)
                .await
                .map(|_| ())
        })
        .map_err(self.err())?;
        self.ensure_table(&mut tx, spec).await?;
        hold::hold(
            &mut tx,
            &spec.name,
            spec.definition.as_deref(),
            rebuilder,
            partitions,
        )
        .await
        .map_err(self.err())?;
        self.db.commit(tx).await.map_err(self.err())
    }

    /// The partitions of `table` a rebuild holds, with whether its pillow
    /// has taken each back.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn holds(&self, table: &str) -> Result<Vec<(TopicPartition, bool)>, SinkError> {
        hold::of_table(&self.db, table).await.map_err(self.err())
    }

    /// The rebuild `rebuilder` of `table` has stopped writing it: forget
    /// the partitions taken back; the pillow takes the others back when it
    /// gets to them.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn finish_rebuild(&self, table: &str, rebuilder: &str) -> Result<(), SinkError> {
        let mut tx = self.db.begin().await.map_err(self.err())?;
        hold::finish(&mut tx, table, rebuilder)
            .await
            .map_err(self.err())?;
        self.db.commit(tx).await.map_err(self.err())
    }

    /// Create the row table of `spec` if missing (with an index on
    /// `doc_id`), or check that the existing one has its shape; record it
    /// in the `sink_tables` registry.
    async fn ensure_table(&self, tx: &mut Tx, spec: &TableSpec) -> Result<(), SinkError> {
        let (found, sql_type) = match tx {
            Tx::Sqlite(t) => (
                super::sqlite::describe(t, &spec.name).await,
                super::sqlite::sql_type as fn(ColumnType) -> &'static str,
            ),
            Tx::Postgres(t) => (
                super::postgres::describe(t, &spec.name).await,
                super::postgres::sql_type as fn(ColumnType) -> &'static str,
            ),
        };
        match found.map_err(self.err())? {
            Some(found) => {
                shape::check(spec, &found, sql_type).map_err(|detail| SinkError::Mismatch {
                    store: self.location.to_string(),
                    table: spec.name.clone(),
                    detail,
                })?;
                self.check_definition(tx, spec).await?;
            }
            None => {
                let statements = [
                    create_table_sql(spec, sql_type),
                    format!(
                        "CREATE INDEX IF NOT EXISTS {} ON {} (doc_id)",
                        quote(&format!("{}_doc_id", spec.name)),
                        quote(&spec.name)
                    ),
                ];
                for ddl in statements {
                    on_tx!(&mut *tx, t => sqlx::query(sqlx::AssertSqlSafe(ddl)).execute(&mut **t).await.map(|_| ()))
                        .map_err(self.err())?;
                }
            }
        }
        on_tx!(&mut *tx, t => {
            sqlx::query("INSERT INTO sink_tables (name, spec, definition) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, definition = COALESCE(excluded.definition, sink_tables.definition)")
                .bind(&spec.name)
                .bind(describe_spec(spec))
                .bind(&spec.definition)
                .execute(&mut **t)
                .await
                .map(|_| ())
        })
        .map_err(self.err())?;
        Ok(())
    }

    /// Refuse to use the existing table of `spec` when the store records
    /// that its rows were written by another definition than the one
    /// `spec` declares. A table recorded without one (or a spec without
    /// one) is taken as it is; a spec without one keeps the recorded one,
    /// so a version that stops declaring it cannot clear the way for
    /// another definition.
    async fn check_definition(&self, tx: &mut Tx, spec: &TableSpec) -> Result<(), SinkError> {
        let Some(declared) = &spec.definition else {
            return Ok(());
        };
        let stored: Option<Option<String>> = on_tx!(&mut *tx, t => {
            sqlx::query_scalar("SELECT definition FROM sink_tables WHERE name = $1")
                .bind(&spec.name)
                .fetch_optional(&mut **t)
                .await
        })
        .map_err(self.err())?;
        match stored.flatten() {
            Some(stored) if &stored != declared => Err(SinkError::Redefined {
                store: self.location.to_string(),
                table: spec.name.clone(),
                stored,
                declared: declared.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Commit a chunk: sink writes, pillow errors and checkpoints (of
    /// `checkpoint_id`) in one transaction. `partition_of(k)` is the
    /// partition of the chunk's change at position `k`: writes to a table
    /// a rebuild holds are dropped for the partitions it holds ([`hold`];
    /// a change without one is written).
    ///
    /// # Errors
    ///
    /// When the database fails; nothing of the chunk is kept.
    pub async fn commit(
        &self,
        checkpoint_id: &str,
        chunk: &ChunkCommit,
        partition_of: PartitionOf<'_>,
    ) -> Result<(), SinkError> {
        let mut tx = self.db.begin().await.map_err(self.err())?;
        // Error records first, writes after: the queue's claim on an error
        // and a pillow's resolution of it take the row in the same order
        // in every transaction.
        let now = crate::time::now_ms();
        let lost = crate::errors::sql::settle_retries(&mut tx, &chunk.retries)
            .await
            .map_err(self.err())?;
        crate::errors::sql::resolve_passed(&mut tx, &chunk.passed, now)
            .await
            .map_err(self.err())?;
        let kept;
        let plan = if lost.is_empty() {
            &chunk.plan
        } else {
            kept = chunk.plan.without_changes(&lost);
            &kept
        };
        let tables = Arc::clone(&self.tables.read().unwrap_or_else(|e| e.into_inner()));
        let settled = hold::settle(
            &mut tx,
            checkpoint_id,
            plan,
            &chunk.scope,
            &tables,
            partition_of,
        )
        .await
        .map_err(|e| match e {
            SettleError::Database(source) => self.err()(source),
            SettleError::Redefined(m) => SinkError::Redefined {
                store: self.location.to_string(),
                table: m.table,
                stored: m.stored,
                declared: m.declared,
            },
        })?;
        let plan = settled.as_ref().unwrap_or(plan);
        if !plan.is_empty() {
            match &mut tx {
                Tx::Sqlite(t) => super::sqlite::apply(t, plan, &tables).await,
                Tx::Postgres(t) => super::postgres::apply(t, plan, &tables).await,
            }
            .map_err(self.err())?;
        }
        crate::errors::sql::record(&mut tx, &chunk.errors)
            .await
            .map_err(self.err())?;
        crate::shadow::sql::record(&mut tx, &chunk.shadow)
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

/// `CREATE TABLE` for `spec`, with `sql_type` naming each column's type.
fn create_table_sql(spec: &TableSpec, sql_type: fn(ColumnType) -> &'static str) -> String {
    let mut ddl = format!("CREATE TABLE {} (", quote(&spec.name));
    for c in &spec.columns {
        ddl.push_str(&format!(
            "{} {}{}, ",
            quote(&c.name),
            sql_type(c.kind),
            if c.nullable { "" } else { " NOT NULL" }
        ));
    }
    let pk: Vec<_> = spec.primary_key.iter().map(|k| quote(k)).collect();
    ddl.push_str(&format!("PRIMARY KEY ({}))", pk.join(", ")));
    ddl
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Column;

    #[test]
    fn a_table_is_created_with_the_backends_types_and_its_key() {
        let spec = TableSpec {
            name: "visits".into(),
            columns: vec![
                Column::new("doc_id", ColumnType::Text, false),
                Column::new("n", ColumnType::Integer, true),
            ],
            primary_key: vec!["doc_id".into()],
            version_column: None,
            definition: None,
        };
        assert_eq!(
            create_table_sql(&spec, super::super::postgres::sql_type),
            r#"CREATE TABLE "visits" ("doc_id" text NOT NULL, "n" bigint, PRIMARY KEY ("doc_id"))"#
        );
        assert_eq!(
            create_table_sql(&spec, super::super::sqlite::sql_type),
            r#"CREATE TABLE "visits" ("doc_id" TEXT NOT NULL, "n" INTEGER, PRIMARY KEY ("doc_id"))"#
        );
    }
}
