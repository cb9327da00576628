//! The SQLite sink: document indices and row tables in the store database.
//!
//! Each declared index is a table `"doc_<index>"` with `id`, `document`
//! (JSON text; NULL marks a deleted document) and `version`. Each declared
//! row table is created from its spec under its own name. Writes happen
//! inside the caller's transaction.

use super::{RowOp, SinkError, SqlSink, WritePlan, describe_spec, index_table, quote};
use crate::action::{Cell, ColumnType, IndexSpec, TableSpec};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use std::collections::HashMap;

/// Most bound values per statement (SQLite allows 32766).
const MAX_BINDS: usize = 30_000;

fn sql_type(kind: ColumnType) -> &'static str {
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
async fn ensure_index(conn: &mut SqliteConnection, spec: &IndexSpec) -> Result<(), SinkError> {
    let table = quote(&index_table(&spec.name));
    sqlx::query(sqlx::AssertSqlSafe(format!(
        // A rowid table: documents are kilobytes, too large for a clustered
        // WITHOUT ROWID b-tree; the id is a separate unique index.
        "CREATE TABLE IF NOT EXISTS {table} (id TEXT NOT NULL UNIQUE, document TEXT, version INTEGER NOT NULL)"
    )))
    .execute(&mut *conn)
    .await?;
    sqlx::query("INSERT INTO sink_indices (name, mappings) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET mappings = excluded.mappings")
        .bind(&spec.name)
        .bind(&spec.mappings)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Create a row table if missing, or check that the existing one matches.
///
/// # Errors
///
/// [`SinkError::Mismatch`] naming the table and column when they differ.
async fn ensure_table(conn: &mut SqliteConnection, spec: &TableSpec) -> Result<(), SinkError> {
    let existing = sqlx::query(sqlx::AssertSqlSafe(format!(
        "PRAGMA table_info({})",
        quote(&spec.name)
    )))
    .fetch_all(&mut *conn)
    .await?;
    if existing.is_empty() {
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
        sqlx::query(sqlx::AssertSqlSafe(ddl))
            .execute(&mut *conn)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} (doc_id)",
            quote(&format!("{}_doc_id", spec.name)),
            quote(&spec.name)
        )))
        .execute(&mut *conn)
        .await?;
    } else {
        // (cid, name, type, notnull, dflt_value, pk)
        let found: Vec<(String, String, bool, i64)> = existing
            .iter()
            .map(|r| {
                (
                    r.get::<String, _>(1),
                    r.get::<String, _>(2),
                    r.get::<i64, _>(3) != 0,
                    r.get::<i64, _>(5),
                )
            })
            .collect();
        let mismatch = |detail: String| SinkError::Mismatch {
            table: spec.name.clone(),
            detail,
        };
        for c in &spec.columns {
            let Some((_, ty, notnull, _)) = found.iter().find(|(n, ..)| n == &c.name) else {
                return Err(mismatch(format!("column {:?} is missing", c.name)));
            };
            if !ty.eq_ignore_ascii_case(sql_type(c.kind)) {
                return Err(mismatch(format!(
                    "column {:?} is {ty}, the spec needs {} ({})",
                    c.name,
                    sql_type(c.kind),
                    c.kind.as_str()
                )));
            }
            if *notnull == c.nullable {
                return Err(mismatch(format!(
                    "column {:?} is {}, the spec says {}",
                    c.name,
                    if *notnull { "NOT NULL" } else { "nullable" },
                    if c.nullable { "nullable" } else { "NOT NULL" }
                )));
            }
        }
        for (name, ..) in &found {
            if !spec.columns.iter().any(|c| &c.name == name) {
                return Err(mismatch(format!("column {name:?} is not in the spec")));
            }
        }
        let mut pk: Vec<_> = found
            .iter()
            .filter(|f| f.3 > 0)
            .map(|f| (f.3, f.0.clone()))
            .collect();
        pk.sort();
        let pk: Vec<_> = pk.into_iter().map(|(_, n)| n).collect();
        if pk != spec.primary_key {
            return Err(mismatch(format!(
                "primary key is {pk:?}, the spec says {:?}",
                spec.primary_key
            )));
        }
    }
    let spec_text = describe_spec(spec);
    sqlx::query("INSERT INTO sink_tables (name, spec) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET spec = excluded.spec")
        .bind(&spec.name)
        .bind(spec_text)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Write `plan` on `conn` (inside the caller's transaction).
///
/// # Errors
///
/// When the database fails; the caller rolls back.
async fn apply(
    conn: &mut SqliteConnection,
    plan: &WritePlan,
    tables: &HashMap<String, TableSpec>,
) -> Result<(), SinkError> {
    for (index, writes) in &plan.documents {
        let table = quote(&index_table(index));
        let writes: Vec<_> = writes.values().collect();
        for batch in writes.chunks(MAX_BINDS / 3) {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new(format!("INSERT INTO {table} (id, document, version) "));
            qb.push_values(batch, |mut b, w| {
                b.push_bind(&w.id)
                    .push_bind(w.document.as_deref())
                    .push_bind(w.version as i64);
            });
            // An older version never replaces a newer one (replay safety).
            qb.push(format!(
                " ON CONFLICT (id) DO UPDATE SET document = excluded.document, version = excluded.version WHERE excluded.version >= {table}.version"
            ));
            qb.build().execute(&mut *conn).await?;
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
                    let conflict = if updates.is_empty() {
                        "DO NOTHING".to_string()
                    } else {
                        format!("DO UPDATE SET {}", updates.join(", "))
                    };
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

impl SqlSink for SqliteConnection {
    fn ensure_index(
        &mut self,
        spec: &IndexSpec,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        ensure_index(self, spec)
    }

    fn ensure_table(
        &mut self,
        spec: &TableSpec,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        ensure_table(self, spec)
    }

    fn apply(
        &mut self,
        plan: &WritePlan,
        tables: &HashMap<String, TableSpec>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        apply(self, plan, tables)
    }
}
