//! Pillow errors in the store's database, on the write path: failures
//! recorded inside a chunk's transaction (with its writes and
//! checkpoint), errors resolved by changes that passed, the retry queue's
//! outcomes, and the due errors the queue reads. The same SQL serves
//! SQLite and PostgreSQL except where a list of values is bound (JSON in
//! SQLite, arrays in PostgreSQL). Operator queries are in [`super::ops`].

use super::{Backoff, ErrorKind, ErrorState, PillowError};
use crate::db::{Db, Tx, on_db, on_tx};
use crate::feed::TopicPartition;
use std::collections::HashSet;

/// Changes of one pillow that passed one processor: each resolves the open
/// error of its document through that processor, unless the error holds a
/// newer change of the same partition (a replay must not resolve it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Passed {
    /// Pillow.
    pub pillow: String,
    /// Processor.
    pub processor: String,
    /// (document id, where, offset) of each change.
    pub changes: Vec<(String, TopicPartition, u64)>,
}

/// What one retry of a stored error came to, for [`settle_retries`].
#[derive(Debug, Clone, PartialEq)]
pub struct RetryOutcome {
    /// The error as the queue read it (its id, offset and attempt counts
    /// guard the update: a record changed meanwhile is left alone).
    pub read: PillowError,
    /// `None`: the change passed. Otherwise the new failure (kind,
    /// message, plugin version, time, backoff).
    pub failure: Option<PillowError>,
    /// When it was tried, epoch ms.
    pub at_ms: i64,
}

/// Record failures from a feed in `tx`. A new (document, pillow,
/// processor) starts a series; a known open one counts one more failure
/// in its series and in all, and takes the latest change (a replayed older
/// change leaves the stored newer one); a resolved one starts over. The
/// next attempt follows the error's [`Backoff`]; without one it is parked.
///
/// # Errors
///
/// When the database fails; the caller's transaction is then rolled back.
pub async fn record(tx: &mut Tx, errors: &[PillowError]) -> Result<(), sqlx::Error> {
    for e in errors {
        let found: Option<(i64, String, i64, i64, String, i64, i64)> = on_tx!(&mut *tx, t => {
            sqlx::query_as(
                r#"SELECT id, state, series_attempts, total_attempts, topic, partition, "offset"
                   FROM pillow_errors WHERE doc_id = $1 AND pillow = $2 AND processor = $3"#,
            )
            .bind(&e.doc_id)
            .bind(&e.pillow)
            .bind(&e.processor)
            .fetch_optional(&mut **t)
            .await?
        });
        let Some((id, state, series, total, topic, partition, offset)) = found else {
            let next = e.backoff.next_attempt_ms(e.kind, 1, 1, e.at_ms);
            on_tx!(&mut *tx, t => {
                sqlx::query(
                    r#"INSERT INTO pillow_errors (doc_id, pillow, processor, plugin_version, kind, message, topic, partition, "offset",
                           domain, document_type, change, series_attempts, total_attempts, first_attempt_ms, last_attempt_ms,
                           next_attempt_ms, state)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 1, 1, $13, $13, $14, $15)"#,
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
                .bind(next)
                .bind(state_of(next).as_str())
                .execute(&mut **t)
                .await
                .map(|_| ())
            })?;
            continue;
        };
        let fresh = state == ErrorState::Resolved.as_str();
        let (series, total) = if fresh {
            (1, 1)
        } else {
            (series as u32 + 1, total as u32 + 1)
        };
        let older = *e.tp.topic == *topic
            && i64::from(e.tp.partition) == partition
            && (e.offset as i64) < offset;
        let next = e.backoff.next_attempt_ms(e.kind, series, total, e.at_ms);
        on_tx!(&mut *tx, t => {
            sqlx::query(
                r#"UPDATE pillow_errors SET plugin_version = $2, kind = $3, message = $4,
                       topic = CASE WHEN $5 THEN topic ELSE $6 END,
                       partition = CASE WHEN $5 THEN partition ELSE $7 END,
                       "offset" = CASE WHEN $5 THEN "offset" ELSE $8 END,
                       domain = CASE WHEN $5 THEN domain ELSE $9 END,
                       document_type = CASE WHEN $5 THEN document_type ELSE $10 END,
                       change = CASE WHEN $5 THEN change ELSE $11 END,
                       series_attempts = $12, total_attempts = $13,
                       first_attempt_ms = CASE WHEN $14 THEN $15 ELSE first_attempt_ms END,
                       last_attempt_ms = $15, next_attempt_ms = $16, state = $17, resolved_at_ms = NULL
                   WHERE id = $1"#,
            )
            .bind(id)
            .bind(&e.plugin_version)
            .bind(e.kind.as_str())
            .bind(&e.message)
            .bind(older)
            .bind(&*e.tp.topic)
            .bind(i64::from(e.tp.partition))
            .bind(e.offset as i64)
            .bind(&e.domain)
            .bind(&e.document_type)
            .bind(&e.change)
            .bind(i64::from(series))
            .bind(i64::from(total))
            .bind(fresh)
            .bind(e.at_ms)
            .bind(next)
            .bind(state_of(next).as_str())
            .execute(&mut **t)
            .await
            .map(|_| ())
        })?;
    }
    Ok(())
}

fn state_of(next: Option<i64>) -> ErrorState {
    if next.is_some() {
        ErrorState::Pending
    } else {
        ErrorState::Parked
    }
}

/// Resolve, in `tx`, the open errors that `passed` changes supersede (at
/// `at_ms`). One statement per processor, whatever the number of changes.
///
/// # Errors
///
/// When the database fails.
pub async fn resolve_passed(tx: &mut Tx, passed: &[Passed], at_ms: i64) -> Result<(), sqlx::Error> {
    for p in passed.iter().filter(|p| !p.changes.is_empty()) {
        match &mut *tx {
            Tx::Sqlite(t) => {
                let list = serde_json::Value::Array(
                    p.changes
                        .iter()
                        .map(|(id, tp, off)| serde_json::json!([id, &*tp.topic, tp.partition, off]))
                        .collect(),
                )
                .to_string();
                // `doc_id IN (...)` probes the unique index for each
                // change; the offset check runs only for the documents that
                // have an open error. (A join with `json_each` let SQLite
                // scan the whole table once per change.)
                sqlx::query(
                    r#"UPDATE pillow_errors SET state = 'resolved', next_attempt_ms = NULL, resolved_at_ms = $3
                       WHERE doc_id IN (SELECT value ->> 0 FROM json_each($4))
                         AND pillow = $1 AND processor = $2 AND state <> 'resolved'
                         AND NOT EXISTS (SELECT 1 FROM json_each($4) AS s
                                         WHERE s.value ->> 0 = pillow_errors.doc_id AND s.value ->> 1 = pillow_errors.topic
                                           AND s.value ->> 2 = pillow_errors.partition AND s.value ->> 3 < pillow_errors."offset")"#,
                )
                .bind(&p.pillow)
                .bind(&p.processor)
                .bind(at_ms)
                .bind(list)
                .execute(&mut **t)
                .await?;
            }
            Tx::Postgres(t) => {
                let ids: Vec<&str> = p.changes.iter().map(|(id, _, _)| id.as_str()).collect();
                let topics: Vec<&str> = p.changes.iter().map(|(_, tp, _)| &*tp.topic).collect();
                let parts: Vec<i64> = p
                    .changes
                    .iter()
                    .map(|(_, tp, _)| i64::from(tp.partition))
                    .collect();
                let offs: Vec<i64> = p.changes.iter().map(|(_, _, o)| *o as i64).collect();
                // `doc_id = ANY(...)` probes the unique index for each
                // change; the offset check runs only for the documents that
                // have an open error.
                sqlx::query(
                    r#"UPDATE pillow_errors e SET state = 'resolved', next_attempt_ms = NULL, resolved_at_ms = $3
                       WHERE e.doc_id = ANY($4::text[]) AND e.pillow = $1 AND e.processor = $2 AND e.state <> 'resolved'
                         AND NOT EXISTS (SELECT 1 FROM unnest($4::text[], $5::text[], $6::bigint[], $7::bigint[]) AS s(doc_id, topic, part, off)
                                         WHERE s.doc_id = e.doc_id AND s.topic = e.topic AND s.part = e.partition AND s.off < e."offset")"#,
                )
                .bind(&p.pillow)
                .bind(&p.processor)
                .bind(at_ms)
                .bind(ids)
                .bind(topics)
                .bind(parts)
                .bind(offs)
                .execute(&mut **t)
                .await?;
            }
        }
    }
    Ok(())
}

/// Settle the retry queue's outcomes in `tx`: a pass resolves its error, a
/// failure counts one more attempt and schedules the next by its backoff.
/// Each update applies only if the record is still what the queue read
/// (pending, same change, same attempt count): a newer change of the
/// document, recorded or resolved meanwhile by a pillow, wins. Each
/// outcome comes with the position of its change in the chunk; returns
/// the positions of passes that did not apply, whose writes the caller
/// must drop.
///
/// # Errors
///
/// When the database fails.
pub async fn settle_retries(
    tx: &mut Tx,
    outcomes: &[(u32, RetryOutcome)],
) -> Result<Vec<u32>, sqlx::Error> {
    let passes: Vec<_> = outcomes
        .iter()
        .filter(|(_, o)| o.failure.is_none())
        .collect();
    let resolved = resolve_retried(tx, &passes).await?;
    for (_, o) in outcomes {
        let (r, Some(f)) = (&o.read, &o.failure) else {
            continue;
        };
        let (series, total) = (r.series_attempts + 1, r.total_attempts + 1);
        let next = f.backoff.next_attempt_ms(f.kind, series, total, o.at_ms);
        on_tx!(&mut *tx, t => {
            sqlx::query(
                r#"UPDATE pillow_errors SET plugin_version = $2, kind = $3, message = $4, series_attempts = $5,
                       total_attempts = $6, last_attempt_ms = $7, next_attempt_ms = $8, state = $9
                   WHERE id = $1 AND state = 'pending' AND "offset" = $10 AND total_attempts = $11"#,
            )
            .bind(r.id)
            .bind(&f.plugin_version)
            .bind(f.kind.as_str())
            .bind(&f.message)
            .bind(i64::from(series))
            .bind(i64::from(total))
            .bind(o.at_ms)
            .bind(next)
            .bind(state_of(next).as_str())
            .bind(r.offset as i64)
            .bind(i64::from(r.total_attempts))
            .execute(&mut **t)
            .await
            .map(|_| ())?
        });
    }
    Ok(passes
        .iter()
        .filter(|(_, o)| !resolved.contains(&o.read.id))
        .map(|(i, _)| *i)
        .collect())
}

/// Resolve the errors of passed retries in one statement, each only if
/// still as read; returns the ids resolved.
async fn resolve_retried(
    tx: &mut Tx,
    passes: &[&(u32, RetryOutcome)],
) -> Result<HashSet<i64>, sqlx::Error> {
    if passes.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<i64> = passes.iter().map(|(_, o)| o.read.id).collect();
    let at: Vec<i64> = passes.iter().map(|(_, o)| o.at_ms).collect();
    let offsets: Vec<i64> = passes.iter().map(|(_, o)| o.read.offset as i64).collect();
    let totals: Vec<i64> = passes
        .iter()
        .map(|(_, o)| i64::from(o.read.total_attempts))
        .collect();
    let resolved: Vec<i64> = match tx {
        Tx::Sqlite(t) => {
            let rows = serde_json::to_string(
                &(0..ids.len())
                    .map(|k| [ids[k], at[k], offsets[k], totals[k]])
                    .collect::<Vec<_>>(),
            )
            .expect("integers serialize");
            sqlx::query_scalar(
                r#"UPDATE pillow_errors SET state = 'resolved', next_attempt_ms = NULL, resolved_at_ms = r.at
                   FROM (SELECT value ->> 0 AS id, value ->> 1 AS at, value ->> 2 AS off, value ->> 3 AS total
                         FROM json_each($1)) AS r
                   WHERE pillow_errors.id = r.id AND pillow_errors.state = 'pending'
                     AND pillow_errors."offset" = r.off AND pillow_errors.total_attempts = r.total
                   RETURNING pillow_errors.id"#,
            )
            .bind(rows)
            .fetch_all(&mut **t)
            .await?
        }
        Tx::Postgres(t) => {
            sqlx::query_scalar(
                r#"UPDATE pillow_errors e SET state = 'resolved', next_attempt_ms = NULL, resolved_at_ms = r.at
                   FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[]) AS r(id, at, off, total)
                   WHERE e.id = r.id AND e.state = 'pending' AND e."offset" = r.off AND e.total_attempts = r.total
                   RETURNING e.id"#,
            )
            .bind(&ids)
            .bind(&at)
            .bind(&offsets)
            .bind(&totals)
            .fetch_all(&mut **t)
            .await?
        }
    };
    Ok(resolved.into_iter().collect())
}

/// Move a pending error's next attempt to `next_ms` (the queue republished
/// its change: the feed's own path tries it now, and this is the fallback
/// should that message never arrive), if it is still the change read.
///
/// # Errors
///
/// When the database fails.
pub async fn postpone(db: &Db, read: &PillowError, next_ms: i64) -> Result<(), sqlx::Error> {
    on_db!(db, pool => {
        sqlx::query(
            r#"UPDATE pillow_errors SET next_attempt_ms = $2
               WHERE id = $1 AND state = 'pending' AND "offset" = $3 AND total_attempts = $4"#,
        )
        .bind(read.id)
        .bind(next_ms)
        .bind(read.offset as i64)
        .bind(i64::from(read.total_attempts))
        .execute(pool)
        .await?;
    });
    Ok(())
}

/// The columns of a stored error, in [`Row`]'s order.
pub(super) const COLUMNS: &str = r#"id, doc_id, pillow, processor, plugin_version, kind, message, topic, partition, "offset",
    domain, document_type, change, series_attempts, total_attempts, first_attempt_ms, last_attempt_ms,
    next_attempt_ms, state, resolved_at_ms"#;

/// The query behind [`due`] (`$1` pillow, `$2` now, `$3` limit, `$4` the
/// domain served last), for `EXPLAIN`.
pub fn due_query() -> String {
    let columns = COLUMNS.replace('\n', " ");
    format!(
        r#"WITH picked AS (
               SELECT id, turn, after, dom, due FROM (
                   SELECT id, next_attempt_ms AS due, COALESCE(domain, '') AS dom,
                          CASE WHEN COALESCE(domain, '') > $4 THEN 0 ELSE 1 END AS after,
                          ROW_NUMBER() OVER (PARTITION BY domain ORDER BY next_attempt_ms, id) AS turn
                   FROM pillow_errors
                   WHERE pillow = $1 AND next_attempt_ms IS NOT NULL AND next_attempt_ms <= $2
               ) ranked
               ORDER BY turn, after, dom, due, id LIMIT $3
           )
           SELECT {} FROM picked JOIN pillow_errors e ON e.id = picked.id
           ORDER BY picked.turn, picked.after, picked.dom, picked.due, picked.id"#,
        prefixed(&columns, "e.")
    )
}

/// Up to `limit` errors of `pillow` due at `now_ms`, served round-robin by
/// domain: one due error of every domain (earliest first), then a second
/// of every domain, and so on; within a turn domains go in name order,
/// starting after `last_domain` (the one a previous batch served last), so
/// the rotation carries over between batches and one domain's flood cannot
/// starve another. Served by the partial index `pillow_errors_due`.
///
/// # Errors
///
/// When the database fails, or holds a kind this version does not know.
pub async fn due(
    db: &Db,
    pillow: &str,
    now_ms: i64,
    limit: u32,
    last_domain: &str,
) -> Result<Vec<PillowError>, sqlx::Error> {
    let sql = due_query();
    let rows: Vec<Row> = on_db!(db, pool => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(pillow)
            .bind(now_ms)
            .bind(i64::from(limit))
            .bind(last_domain)
            .fetch_all(pool)
            .await?
    });
    rows.into_iter().map(PillowError::try_from).collect()
}

/// `columns` (comma-separated) each prefixed with `prefix`.
fn prefixed(columns: &str, prefix: &str) -> String {
    columns
        .split(',')
        .map(|c| format!("{prefix}{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The latest `limit` pillow errors of `pillow`, newest first.
///
/// # Errors
///
/// When the database fails, or holds a kind this version does not know.
pub async fn recent(db: &Db, pillow: &str, limit: u32) -> Result<Vec<PillowError>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM pillow_errors WHERE pillow = $1 ORDER BY last_attempt_ms DESC, id DESC LIMIT $2"
    );
    let rows: Vec<Row> = on_db!(db, pool => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(pillow)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
    });
    rows.into_iter().map(PillowError::try_from).collect()
}

/// Pillow error counts of `pillow` by state and kind.
///
/// # Errors
///
/// When the database fails, or holds a kind or state this version does
/// not know.
pub async fn counts(
    db: &Db,
    pillow: &str,
) -> Result<Vec<(ErrorState, ErrorKind, u64)>, sqlx::Error> {
    let rows: Vec<(String, String, i64)> = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT state, kind, COUNT(*) FROM pillow_errors WHERE pillow = $1 GROUP BY state, kind ORDER BY state, kind",
        )
        .bind(pillow)
        .fetch_all(pool)
        .await?
    });
    rows.into_iter()
        .map(|(state, kind, n)| Ok((parse_state(&state)?, parse_kind(&kind)?, n as u64)))
        .collect()
}

/// The retry queue of a pillow at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueSummary {
    /// Errors waiting for an attempt.
    pub pending: u64,
    /// Of those, due now.
    pub due: u64,
    /// When the earliest is due, epoch ms.
    pub next_attempt_ms: Option<i64>,
}

/// `pillow`'s retry queue at `now_ms` (served by the partial index on due
/// errors).
///
/// # Errors
///
/// When the database fails.
pub async fn queue(db: &Db, pillow: &str, now_ms: i64) -> Result<QueueSummary, sqlx::Error> {
    let (pending, due, next): (i64, Option<i64>, Option<i64>) = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT COUNT(*), SUM(CASE WHEN next_attempt_ms <= $2 THEN 1 ELSE 0 END), MIN(next_attempt_ms)
             FROM pillow_errors WHERE pillow = $1 AND next_attempt_ms IS NOT NULL",
        )
        .bind(pillow)
        .bind(now_ms)
        .fetch_one(pool)
        .await?
    });
    Ok(QueueSummary {
        pending: pending as u64,
        due: due.unwrap_or(0) as u64,
        next_attempt_ms: next,
    })
}

/// A stored pillow error, as its row ([`COLUMNS`]).
#[derive(sqlx::FromRow)]
pub(super) struct Row {
    id: i64,
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
    series_attempts: i64,
    total_attempts: i64,
    first_attempt_ms: i64,
    last_attempt_ms: i64,
    next_attempt_ms: Option<i64>,
    state: String,
    resolved_at_ms: Option<i64>,
}

impl TryFrom<Row> for PillowError {
    type Error = sqlx::Error;

    fn try_from(r: Row) -> Result<PillowError, sqlx::Error> {
        Ok(PillowError {
            id: r.id,
            kind: parse_kind(&r.kind)?,
            state: parse_state(&r.state)?,
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
            first_attempt_ms: r.first_attempt_ms,
            series_attempts: r.series_attempts as u32,
            total_attempts: r.total_attempts as u32,
            next_attempt_ms: r.next_attempt_ms,
            resolved_at_ms: r.resolved_at_ms,
            backoff: Backoff::default(),
        })
    }
}

pub(super) fn parse_kind(kind: &str) -> Result<ErrorKind, sqlx::Error> {
    ErrorKind::parse(kind).ok_or_else(|| {
        decode_error(format!(
            "pillow_errors.kind {kind:?} is not a kind this pillowtop knows; upgrade it"
        ))
    })
}

fn parse_state(state: &str) -> Result<ErrorState, sqlx::Error> {
    ErrorState::parse(state).ok_or_else(|| {
        decode_error(format!(
            "pillow_errors.state {state:?} is not a state this pillowtop knows; upgrade it"
        ))
    })
}

fn decode_error(message: String) -> sqlx::Error {
    sqlx::Error::Decode(message.into())
}
