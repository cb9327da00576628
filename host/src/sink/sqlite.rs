//! The SQLite sink: document indices and row tables in the store database.
//!
//! Each declared index is a table `"doc_<index>"` with `id`, `document`
//! (JSON text; NULL marks a deleted document) and `version`. Each declared
//! row table is created from its spec under its own name. Writes happen
//! inside the caller's transaction.

use super::shape::{Found, FoundColumn};
use super::{RowOp, WritePlan, index_table};
use crate::action::{Cell, ColumnType, IndexSpec, TableSpec};
use crate::db::quote;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};
use std::collections::HashMap;

/// Most bound values per statement (SQLite allows 32766).
const MAX_BINDS: usize = 30_000;

/// The type a column type is stored as.
pub(super) fn sql_type(kind: ColumnType) -> &'static str {
    match kind {
        ColumnType::Integer | ColumnType::Boolean => "INTEGER",
        ColumnType::Float => "REAL",
        ColumnType::Text | ColumnType::Date | ColumnType::Timestamp | ColumnType::Json => "TEXT",
    }
}

/// Create the document table of an index if missing.
///
/// # Errors
///
/// When the database fails.
pub(super) async fn create_index_table(
    conn: &mut SqliteConnection,
    spec: &IndexSpec,
) -> Result<(), sqlx::Error> {
    let table = quote(&index_table(&spec.name));
    sqlx::query(sqlx::AssertSqlSafe(format!(
        // A rowid table: documents are kilobytes, too large for a clustered
        // WITHOUT ROWID b-tree; the id is a separate unique index.
        "CREATE TABLE IF NOT EXISTS {table} (id TEXT NOT NULL UNIQUE, document TEXT, version INTEGER NOT NULL)"
    )))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A column as `PRAGMA table_info` describes it.
#[derive(sqlx::FromRow)]
struct TableInfo {
    name: String,
    #[sqlx(rename = "type")]
    sql_type: String,
    notnull: i64,
    /// Position in the primary key (1-based), 0 when not in it.
    pk: i64,
}

/// The table `name` as the database describes it; `None` when it does
/// not exist.
///
/// # Errors
///
/// When the database fails.
pub(super) async fn describe(
    conn: &mut SqliteConnection,
    name: &str,
) -> Result<Option<Found>, sqlx::Error> {
    let existing: Vec<TableInfo> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "PRAGMA table_info({})",
        quote(name)
    )))
    .fetch_all(&mut *conn)
    .await?;
    if existing.is_empty() {
        return Ok(None);
    }
    let mut key: Vec<&TableInfo> = existing.iter().filter(|c| c.pk > 0).collect();
    key.sort_by_key(|c| c.pk);
    Ok(Some(Found {
        primary_key: key.into_iter().map(|c| c.name.clone()).collect(),
        columns: existing
            .into_iter()
            .map(|c| FoundColumn {
                name: c.name,
                sql_type: c.sql_type,
                nullable: c.notnull == 0,
            })
            .collect(),
    }))
}

/// Write `plan` on `conn` (inside the caller's transaction).
///
/// # Errors
///
/// When the database fails; the caller rolls back.
pub(super) async fn apply(
    conn: &mut SqliteConnection,
    plan: &WritePlan,
    tables: &HashMap<String, TableSpec>,
) -> Result<(), sqlx::Error> {
    for (index, writes) in &plan.documents {
        let table = quote(&index_table(index));
        for (batch_of, conflict) in super::document_groups(&table, writes) {
            for batch in batch_of.chunks(MAX_BINDS / 3) {
                let mut qb: QueryBuilder<Sqlite> =
                    QueryBuilder::new(format!("INSERT INTO {table} (id, document, version) "));
                qb.push_values(batch, |mut b, w| {
                    b.push_bind(&w.id)
                        .push_bind(w.document.as_deref())
                        .push_bind(w.version as i64);
                });
                qb.push(format!(" {conflict}"));
                qb.build().execute(&mut *conn).await?;
            }
        }
    }
    for (name, ops) in &plan.rows {
        let spec = tables
            .get(name)
            .ok_or_else(|| sqlx::Error::Protocol(format!("no spec for table {name}")))?;
        let quoted = quote(name);
        for op in ops {
            match op {
                RowOp::Delete { ids, .. } => {
                    for batch in ids.chunks(MAX_BINDS) {
                        let mut qb: QueryBuilder<Sqlite> =
                            QueryBuilder::new(format!("DELETE FROM {quoted} WHERE doc_id IN ("));
                        let mut sep = qb.separated(", ");
                        for id in batch {
                            sep.push_bind(id);
                        }
                        qb.push(")");
                        qb.build().execute(&mut *conn).await?;
                    }
                }
                RowOp::Upsert { rows, .. } => {
                    let cols: Vec<_> = spec.columns.iter().map(|c| quote(&c.name)).collect();
                    let pk: Vec<_> = spec.primary_key.iter().map(|k| quote(k)).collect();
                    let updates: Vec<_> = spec
                        .columns
                        .iter()
                        .filter(|c| !spec.primary_key.contains(&c.name))
                        .map(|c| format!("{0} = excluded.{0}", quote(&c.name)))
                        .collect();
                    let conflict = super::conflict_rule(spec, &updates);
                    for batch in rows.chunks((MAX_BINDS / spec.columns.len().max(1)).max(1)) {
                        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
                            "INSERT INTO {quoted} ({}) ",
                            cols.join(", ")
                        ));
                        qb.push_values(batch, |mut b, row| {
                            for cell in row {
                                match cell {
                                    Cell::Null => b.push_bind(None::<i64>),
                                    Cell::Boolean(v) => b.push_bind(i64::from(*v)),
                                    Cell::Integer(v) => b.push_bind(*v),
                                    Cell::Float(v) => b.push_bind(*v),
                                    Cell::Text(v) => b.push_bind(v.as_str()),
                                };
                            }
                        });
                        qb.push(format!(" ON CONFLICT ({}) {conflict}", pk.join(", ")));
                        qb.build().execute(&mut *conn).await?;
                    }
                }
            }
        }
    }
    Ok(())
}
