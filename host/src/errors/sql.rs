//! Pillow errors in the store's database: recorded inside a chunk's
//! transaction (with its writes and checkpoint), counted and listed for
//! `status`. The same SQL serves SQLite and PostgreSQL.

use super::{Backoff, ErrorKind, PillowError};
use crate::db::{Db, Tx, on_db, on_tx};
use crate::feed::TopicPartition;

/// Record `errors` in `tx`: a new (document, pillow, processor) gets its
/// first attempt; a known one counts one more, with the latest change and
/// message. The next attempt follows the error's backoff (none for a kind
/// that retrying cannot fix).
///
/// # Errors
///
/// When the database fails; the caller's transaction is then rolled back.
pub async fn record(tx: &mut Tx, errors: &[PillowError]) -> Result<(), sqlx::Error> {
    on_tx!(tx, t => {
        for e in errors {
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
            .bind(i64::from(e.tp.partition))
            .bind(e.offset as i64)
            .bind(&e.domain)
            .bind(&e.document_type)
            .bind(&e.change)
            .bind(e.at_ms)
            .fetch_one(&mut **t)
            .await?;
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
                .execute(&mut **t)
                .await?;
        }
        Ok(())
    })
}

/// Pillow error counts of `pillow` by kind.
///
/// # Errors
///
/// When the database fails, or holds a kind this version does not know.
pub async fn counts(db: &Db, pillow: &str) -> Result<Vec<(ErrorKind, u64)>, sqlx::Error> {
    let rows: Vec<(String, i64)> = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT kind, COUNT(*) FROM pillow_errors WHERE pillow = $1 GROUP BY kind ORDER BY kind",
        )
        .bind(pillow)
        .fetch_all(pool)
        .await?
    });
    rows.into_iter()
        .map(|(kind, n)| Ok((parse_kind(&kind)?, n as u64)))
        .collect()
}

/// A stored pillow error, as its row.
#[derive(sqlx::FromRow)]
struct Row {
    doc_id: String,
    pillow: String,
    processor: String,
    plugin_version: Option<String>,
    kind: String,
    message: String,
    topic: String,
    partition: i64,
    offset: i64,
    domain: Option<String>,
    document_type: Option<String>,
    change: Vec<u8>,
    attempts: i64,
    last_attempt_ms: i64,
    next_attempt_ms: Option<i64>,
}

impl TryFrom<Row> for PillowError {
    type Error = sqlx::Error;

    fn try_from(r: Row) -> Result<PillowError, sqlx::Error> {
        Ok(PillowError {
            kind: parse_kind(&r.kind)?,
            doc_id: r.doc_id,
            pillow: r.pillow,
            processor: r.processor,
            plugin_version: r.plugin_version,
            message: r.message,
            tp: TopicPartition::new(&r.topic, r.partition as u32),
            offset: r.offset as u64,
            domain: r.domain,
            document_type: r.document_type,
            change: r.change,
            at_ms: r.last_attempt_ms,
            attempts: r.attempts as u32,
            next_attempt_ms: r.next_attempt_ms,
            backoff: Backoff::default(),
        })
    }
}

/// The latest `limit` pillow errors of `pillow`, newest first.
///
/// # Errors
///
/// When the database fails, or holds a kind this version does not know.
pub async fn recent(db: &Db, pillow: &str, limit: u32) -> Result<Vec<PillowError>, sqlx::Error> {
    let rows: Vec<Row> = on_db!(db, pool => {
        sqlx::query_as(
            r#"SELECT doc_id, pillow, processor, plugin_version, kind, message, topic, partition, "offset",
                      domain, document_type, change, attempts, last_attempt_ms, next_attempt_ms
               FROM pillow_errors WHERE pillow = $1 ORDER BY last_attempt_ms DESC, id DESC LIMIT $2"#,
        )
        .bind(pillow)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?
    });
    rows.into_iter().map(PillowError::try_from).collect()
}

fn parse_kind(kind: &str) -> Result<ErrorKind, sqlx::Error> {
    ErrorKind::parse(kind).ok_or_else(|| {
        sqlx::Error::Decode(
            format!("pillow_errors.kind {kind:?} is not a kind this pillowtop knows; upgrade it")
                .into(),
        )
    })
}
