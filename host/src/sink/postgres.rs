//! The PostgreSQL sink: document indices and row tables in the store's
//! database and schema, written inside the store transaction that also
//! saves pillow errors and the checkpoint (effectively-once for rows).
//!
//! Each declared index is a table `"doc_<index>"` (`id` primary key,
//! `document` JSON text, NULL for a deleted document, compressed with lz4
//! where the server has it, and `version`). Row
//! tables are created from their specs with native types (`bigint`,
//! `double precision`, `boolean`, `text`, `date`, `timestamptz`, `jsonb`).
//!
//! Writes are batched as one statement per table and operation: every
//! column travels as one array parameter and `UNNEST` turns the arrays back
//! into rows, so a batch of 10,000 rows is one round trip with a fixed
//! statement text (prepared once per connection), not 10,000 bound scalars.

use super::shape::{Found, FoundColumn};
use super::{RowOp, WritePlan, index_table};
use crate::action::{Cell, ColumnType, IndexSpec, TableSpec};
use crate::db::quote;
use sqlx::PgConnection;
use std::collections::{HashMap, HashSet};

/// Rows per statement: large enough to amortise the round trip, small
/// enough to keep one statement's arrays at a few megabytes.
const BATCH_ROWS: usize = 10_000;

/// The PostgreSQL type of a column, as `information_schema.columns.data_type`
/// names it, and the array type its values travel in (before the cast).
fn pg_type(kind: ColumnType) -> (&'static str, &'static str) {
    match kind {
        ColumnType::Integer => ("bigint", "int8[]"),
        ColumnType::Float => ("double precision", "float8[]"),
        ColumnType::Boolean => ("boolean", "bool[]"),
        ColumnType::Text => ("text", "text[]"),
        ColumnType::Date => ("date", "text[]"),
        ColumnType::Timestamp => ("timestamp with time zone", "text[]"),
        ColumnType::Json => ("jsonb", "text[]"),
    }
}

/// Serialises creating tables: two processes of one pillow starting
/// together would otherwise race on `CREATE TABLE IF NOT EXISTS` (which is
/// not atomic in PostgreSQL). Held until the transaction ends.
pub(super) async fn lock_ddl(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('pillowtop.sink.ddl'))")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Whether the server can compress values with lz4 (PostgreSQL 14+ built
/// with it; Debian's and the official images are).
///
/// Document texts are kilobytes of JSON, which PostgreSQL compresses once a
/// row passes about 2 KB (TOAST). With its default method, pglz, that
/// compression cost more than everything else in writing a chunk of
/// case-search documents; lz4 is several times faster at a similar ratio:
/// Kafka -> case-search -> PostgreSQL went from about 15k to 30k changes/s
/// on one 2-core machine (docs/BENCHMARKS.md, section 6).
pub async fn lz4_supported(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let supported: Option<bool> = sqlx::query_scalar(
        "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'",
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(supported == Some(true))
}

/// The type a column type is stored as, as `information_schema` names it.
pub(super) fn sql_type(kind: ColumnType) -> &'static str {
    pg_type(kind).0
}

/// Create the document table of an index if missing.
///
/// # Errors
///
/// When the database fails.
pub(super) async fn create_index_table(
    conn: &mut PgConnection,
    spec: &IndexSpec,
) -> Result<(), sqlx::Error> {
    let table = quote(&index_table(&spec.name));
    // A table created before keeps its method; `ALTER TABLE ... ALTER
    // COLUMN document SET COMPRESSION lz4` switches it for new writes.
    let compression = if lz4_supported(conn).await? {
        " COMPRESSION lz4"
    } else {
        ""
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY, document TEXT{compression}, version BIGINT NOT NULL)"
    )))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A column as `information_schema.columns` describes it.
#[derive(sqlx::FromRow)]
struct ColumnInfo {
    name: String,
    sql_type: String,
    nullable: bool,
}

/// The table `name` (in the store's schema) as the database describes
/// it; `None` when it does not exist.
///
/// # Errors
///
/// When the database fails.
pub(super) async fn describe(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<Found>, sqlx::Error> {
    let existing: Vec<ColumnInfo> = sqlx::query_as(
        "SELECT column_name::text AS name, data_type::text AS sql_type, is_nullable = 'YES' AS nullable
         FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = $1
         ORDER BY ordinal_position",
    )
    .bind(name)
    .fetch_all(&mut *conn)
    .await?;
    if existing.is_empty() {
        return Ok(None);
    }
    let primary_key: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
         WHERE i.indrelid = to_regclass($1) AND i.indisprimary
         ORDER BY array_position(i.indkey::int2[], a.attnum)",
    )
    .bind(quote(name))
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(Found {
        columns: existing
            .into_iter()
            .map(|c| FoundColumn {
                name: c.name,
                sql_type: c.sql_type,
                nullable: c.nullable,
            })
            .collect(),
        primary_key,
    }))
}

/// One column of a batch, as the array it is bound as.
enum ColumnValues<'a> {
    Integer(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Boolean(Vec<Option<bool>>),
    Text(Vec<Option<&'a str>>),
}

impl<'a> ColumnValues<'a> {
    fn new(kind: ColumnType, capacity: usize) -> ColumnValues<'a> {
        match kind {
            ColumnType::Integer => ColumnValues::Integer(Vec::with_capacity(capacity)),
            ColumnType::Float => ColumnValues::Float(Vec::with_capacity(capacity)),
            ColumnType::Boolean => ColumnValues::Boolean(Vec::with_capacity(capacity)),
            ColumnType::Text | ColumnType::Date | ColumnType::Timestamp | ColumnType::Json => {
                ColumnValues::Text(Vec::with_capacity(capacity))
            }
        }
    }

    /// Append `cell`; `false` when it does not fit the column (the host's
    /// output checks rule that out, so it is a host bug).
    fn push(&mut self, cell: &'a Cell) -> bool {
        match (self, cell) {
            (ColumnValues::Integer(v), Cell::Integer(i)) => v.push(Some(*i)),
            (ColumnValues::Float(v), Cell::Float(f)) => v.push(Some(*f)),
            (ColumnValues::Float(v), Cell::Integer(i)) => v.push(Some(*i as f64)),
            (ColumnValues::Boolean(v), Cell::Boolean(b)) => v.push(Some(*b)),
            (ColumnValues::Text(v), Cell::Text(t)) => v.push(Some(t.as_str())),
            (ColumnValues::Integer(v), Cell::Null) => v.push(None),
            (ColumnValues::Float(v), Cell::Null) => v.push(None),
            (ColumnValues::Boolean(v), Cell::Null) => v.push(None),
            (ColumnValues::Text(v), Cell::Null) => v.push(None),
            _ => return false,
        }
        true
    }
}

/// A primary-key value, hashable (floats by their bits).
#[derive(PartialEq, Eq, Hash)]
enum KeyPart<'a> {
    Null,
    Boolean(bool),
    Integer(i64),
    Float(u64),
    Text(&'a str),
}

fn key_part(cell: &Cell) -> KeyPart<'_> {
    match cell {
        Cell::Null => KeyPart::Null,
        Cell::Boolean(b) => KeyPart::Boolean(*b),
        Cell::Integer(i) => KeyPart::Integer(*i),
        Cell::Float(f) => KeyPart::Float(f.to_bits()),
        Cell::Text(t) => KeyPart::Text(t),
    }
}

/// The rows of `rows` to write, in order, keeping only the last row of each
/// primary key: PostgreSQL refuses an `INSERT ... ON CONFLICT DO UPDATE`
/// that touches one row twice, and the last write is the one that must win.
fn last_per_key<'a>(rows: &'a [Vec<Cell>], pk: &[usize]) -> Vec<&'a [Cell]> {
    let mut seen = HashSet::with_capacity(rows.len());
    let mut keep: Vec<&[Cell]> = rows
        .iter()
        .rev()
        .filter(|row| seen.insert(pk.iter().map(|&i| key_part(&row[i])).collect::<Vec<_>>()))
        .map(Vec::as_slice)
        .collect();
    keep.reverse();
    keep
}

/// `INSERT INTO t (cols) SELECT u.c0, u.c1::date, ... FROM UNNEST($1::int8[], ...)`
/// with the spec's conflict rule.
fn upsert_sql(spec: &TableSpec) -> String {
    let cols: Vec<_> = spec.columns.iter().map(|c| quote(&c.name)).collect();
    let arrays: Vec<_> = spec
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}", i + 1, pg_type(c.kind).1))
        .collect();
    let aliases: Vec<_> = (0..spec.columns.len()).map(|i| format!("c{i}")).collect();
    let selected: Vec<_> = spec
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| match c.kind {
            ColumnType::Date => format!("u.c{i}::date"),
            ColumnType::Timestamp => format!("u.c{i}::timestamptz"),
            ColumnType::Json => format!("u.c{i}::jsonb"),
            _ => format!("u.c{i}"),
        })
        .collect();
    let pk: Vec<_> = spec.primary_key.iter().map(|k| quote(k)).collect();
    let updates: Vec<_> = spec
        .columns
        .iter()
        .filter(|c| !spec.primary_key.contains(&c.name))
        .map(|c| format!("{0} = excluded.{0}", quote(&c.name)))
        .collect();
    let conflict = super::conflict_rule(spec, &updates);
    format!(
        "INSERT INTO {} ({}) SELECT {} FROM UNNEST({}) AS u({}) ON CONFLICT ({}) {conflict}",
        quote(&spec.name),
        cols.join(", "),
        selected.join(", "),
        arrays.join(", "),
        aliases.join(", "),
        pk.join(", ")
    )
}

async fn upsert_rows(
    conn: &mut PgConnection,
    spec: &TableSpec,
    rows: &[Vec<Cell>],
) -> Result<(), sqlx::Error> {
    let pk: Vec<usize> = spec
        .primary_key
        .iter()
        .filter_map(|k| spec.columns.iter().position(|c| &c.name == k))
        .collect();
    let rows = last_per_key(rows, &pk);
    let sql = upsert_sql(spec);
    for batch in rows.chunks(BATCH_ROWS) {
        let mut columns: Vec<ColumnValues> = spec
            .columns
            .iter()
            .map(|c| ColumnValues::new(c.kind, batch.len()))
            .collect();
        for row in batch {
            for ((values, cell), column) in columns.iter_mut().zip(row.iter()).zip(&spec.columns) {
                if !values.push(cell) {
                    return Err(sqlx::Error::Protocol(format!(
                        "table {:?} column {:?} ({}) got {cell:?}: the host's output check should have refused it",
                        spec.name,
                        column.name,
                        column.kind.as_str()
                    )));
                }
            }
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for values in columns {
            query = match values {
                ColumnValues::Integer(v) => query.bind(v),
                ColumnValues::Float(v) => query.bind(v),
                ColumnValues::Boolean(v) => query.bind(v),
                ColumnValues::Text(v) => query.bind(v),
            };
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

pub(super) async fn apply(
    conn: &mut PgConnection,
    plan: &WritePlan,
    tables: &HashMap<String, TableSpec>,
) -> Result<(), sqlx::Error> {
    for (index, writes) in &plan.documents {
        let table = quote(&index_table(index));
        for (batch_of, conflict) in super::document_groups(&table, writes) {
            let sql = format!(
                "INSERT INTO {table} (id, document, version) SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[]) {conflict}"
            );
            for batch in batch_of.chunks(BATCH_ROWS) {
                let ids: Vec<&str> = batch.iter().map(|w| w.id.as_str()).collect();
                let documents: Vec<Option<&str>> =
                    batch.iter().map(|w| w.document.as_deref()).collect();
                let versions: Vec<i64> = batch.iter().map(|w| w.version as i64).collect();
                sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(ids)
                    .bind(documents)
                    .bind(versions)
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }
    for (name, ops) in &plan.rows {
        let spec = tables
            .get(name)
            .ok_or_else(|| sqlx::Error::Protocol(format!("no spec for table {name}")))?;
        for op in ops {
            match op {
                RowOp::Delete { ids, .. } => {
                    let sql = format!(
                        "DELETE FROM {} WHERE doc_id = ANY ($1::text[])",
                        quote(name)
                    );
                    for batch in ids.chunks(BATCH_ROWS) {
                        let batch: Vec<&str> = batch.iter().map(String::as_str).collect();
                        sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                            .bind(batch)
                            .execute(&mut *conn)
                            .await?;
                    }
                }
                RowOp::Upsert { rows, .. } => upsert_rows(conn, spec, rows).await?,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Column;

    fn spec() -> TableSpec {
        let col = |name: &str, kind, nullable| Column {
            name: name.into(),
            kind,
            nullable,
        };
        TableSpec {
            name: "visits".into(),
            columns: vec![
                col("doc_id", ColumnType::Text, false),
                col("n", ColumnType::Integer, false),
                col("day", ColumnType::Date, true),
                col("extra", ColumnType::Json, true),
            ],
            primary_key: vec!["doc_id".into(), "n".into()],
            version_column: None,
            definition: None,
        }
    }

    #[test]
    fn upsert_statement_casts_and_updates_non_key_columns() {
        assert_eq!(
            upsert_sql(&spec()),
            "INSERT INTO \"visits\" (\"doc_id\", \"n\", \"day\", \"extra\") \
             SELECT u.c0, u.c1, u.c2::date, u.c3::jsonb \
             FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[]) AS u(c0, c1, c2, c3) \
             ON CONFLICT (\"doc_id\", \"n\") DO UPDATE SET \"day\" = excluded.\"day\", \"extra\" = excluded.\"extra\""
        );
        let mut keys_only = spec();
        keys_only.columns.truncate(2);
        assert!(upsert_sql(&keys_only).ends_with("DO NOTHING"));
    }

    #[test]
    fn the_last_row_of_each_key_wins_in_order() {
        let row = |id: &str, n: i64, day: &str| {
            vec![
                Cell::Text(id.into()),
                Cell::Integer(n),
                Cell::Text(day.into()),
                Cell::Null,
            ]
        };
        let rows = vec![
            row("a", 1, "2024-01-01"),
            row("b", 1, "2024-01-02"),
            row("a", 1, "2024-01-03"),
            row("a", 2, "2024-01-04"),
        ];
        let kept = last_per_key(&rows, &[0, 1]);
        assert_eq!(
            kept,
            vec![rows[1].as_slice(), rows[2].as_slice(), rows[3].as_slice()]
        );
    }

    #[test]
    fn cells_must_fit_their_column() {
        let mut ints = ColumnValues::new(ColumnType::Integer, 2);
        assert!(ints.push(&Cell::Integer(3)));
        assert!(ints.push(&Cell::Null));
        assert!(!ints.push(&Cell::Text("3".into())));
        let mut floats = ColumnValues::new(ColumnType::Float, 1);
        assert!(floats.push(&Cell::Integer(2)));
        match floats {
            ColumnValues::Float(v) => assert_eq!(v, vec![Some(2.0)]),
            _ => unreachable!("a float column"),
        }
    }
}
