//! Sinks: where actions land.
//!
//! A chunk's actions are first compacted into a [`WritePlan`] (pure, so it
//! is unit-tested without a database), then written by a sink inside the
//! store transaction that also saves pillow errors and the checkpoint.
//!
//! Documents are versioned by the offset of the change that produced them:
//! a write with an older version than the stored one is skipped, so a
//! replay after a crash or a checkpoint rewind can never put old data over
//! new. Deletes leave a versioned tombstone for the same reason.
//!
//! Rows keep action order per table: a processor that deletes a document's
//! rows and upserts new ones (UCR's pattern) gets exactly that.

pub mod elastic;
pub mod postgres;
pub mod sqlite;

use crate::action::{Action, Cell, IndexSpec, TableSpec};
use std::collections::{BTreeMap, HashMap};

/// Why a SQL sink could not prepare or write.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A table exists with other columns than the spec asks for.
    #[error(
        "table {table:?} already exists and does not match the plugin's spec: {detail}; migrate or drop the table, or rename it in the plugin"
    )]
    Mismatch {
        /// Table.
        table: String,
        /// Which column differs and how.
        detail: String,
    },
    /// The database failed.
    #[error("sql sink: {0}")]
    Database(#[from] sqlx::Error),
}

/// The table holding the documents of `index` in a SQL store.
pub fn index_table(index: &str) -> String {
    format!("doc_{index}")
}

/// Quote an identifier (names are validated by the contract checks, but
/// quoting keeps '-' in index names and reserved words safe). The same
/// rule holds in SQLite and PostgreSQL.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A SQL sink: a connection of the store's database, inside the store's
/// transaction. Implemented for SQLite ([`sqlite`]) and PostgreSQL
/// ([`postgres`]), so the store commits sink writes, pillow errors and the
/// checkpoint together whichever database it is.
pub trait SqlSink {
    /// Create the document table of an index if missing.
    ///
    /// # Errors
    ///
    /// When the database fails.
    fn ensure_index(
        &mut self,
        spec: &IndexSpec,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Create a row table if missing, or check that the existing one matches.
    ///
    /// # Errors
    ///
    /// [`SinkError::Mismatch`] naming the table and column when they differ.
    fn ensure_table(
        &mut self,
        spec: &TableSpec,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Write `plan` (inside the caller's transaction).
    ///
    /// # Errors
    ///
    /// When the database fails; the caller rolls back.
    fn apply(
        &mut self,
        plan: &WritePlan,
        tables: &HashMap<String, TableSpec>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// Capped exponential backoff with jitter, for retrying the same chunk
/// while its sink is down (connection refused, timeouts, a server
/// restarting): 100 ms, 200 ms, 400 ms ... up to 30 s between attempts.
pub struct OutageBackoff;

impl OutageBackoff {
    /// The first delay.
    pub const BASE: std::time::Duration = std::time::Duration::from_millis(100);
    /// The longest delay.
    pub const CAP: std::time::Duration = std::time::Duration::from_secs(30);

    /// The delay before retry `attempt` (0-based), with `jitter` in
    /// `[0, 1)`: uniform in `[d/2, d]` where `d = min(CAP, BASE * 2^attempt)`,
    /// so retries of many pillows spread out but never spin.
    pub fn delay(attempt: u32, jitter: f64) -> std::time::Duration {
        let full = Self::BASE
            .saturating_mul(1u32 << attempt.min(16))
            .min(Self::CAP);
        full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// [`OutageBackoff::delay`] with jitter from the clock's nanoseconds:
    /// enough to spread the retries of several pillows apart.
    fn jittered(attempt: u32) -> std::time::Duration {
        let jitter = f64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
                % 1000,
        ) / 1000.0;
        Self::delay(attempt, jitter)
    }

    /// Sleep the jittered delay before retry `attempt`; `false` when
    /// `shutdown` fires first (stop retrying).
    pub async fn sleep_unless(
        attempt: u32,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> bool {
        tokio::select! {
            () = tokio::time::sleep(Self::jittered(attempt)) => true,
            () = shutdown.cancelled() => false,
        }
    }
}

/// Errors that tell an outage (the server is unreachable or briefly unable
/// to serve: retry the same work later) from a refusal.
pub(crate) trait Outage: std::fmt::Display {
    fn is_outage(&self) -> bool;
}

impl Outage for crate::store::StoreError {
    fn is_outage(&self) -> bool {
        crate::store::StoreError::is_outage(self)
    }
}

impl Outage for elastic::ElasticError {
    fn is_outage(&self) -> bool {
        elastic::ElasticError::is_outage(self)
    }
}

impl Outage for crate::feed::FeedError {
    fn is_outage(&self) -> bool {
        crate::feed::FeedError::is_outage(self)
    }
}

/// For startup: run `attempt` until it succeeds or fails with an error
/// that is not an outage, sleeping [`OutageBackoff`] between outages and
/// logging each with `what` (the server waited for). `None` when
/// `shutdown` fires first.
///
/// # Errors
///
/// The first error that is not an outage. An outage is never given up
/// on: only success or `shutdown` ends the wait.
pub(crate) async fn wait_until_reachable<T, E, F, Fut>(
    what: &str,
    shutdown: &tokio_util::sync::CancellationToken,
    mut attempt: F,
) -> Option<Result<T, E>>
where
    E: Outage,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut failures = 0u32;
    loop {
        match attempt().await {
            Err(e) if e.is_outage() => {
                tracing::warn!(error = %e, attempt = failures + 1, "{what} is unreachable at startup; waiting for it (Ctrl-C or SIGTERM to stop)");
                if !OutageBackoff::sleep_unless(failures, shutdown).await {
                    return None;
                }
                failures = failures.saturating_add(1);
            }
            result => {
                if failures > 0 && result.is_ok() {
                    tracing::info!(attempts = failures + 1, "{what} is reachable; starting");
                }
                return Some(result);
            }
        }
    }
}

/// Whether a database error means the store is unreachable or briefly
/// unable to serve (retry the same work later), rather than a refusal of
/// the data: I/O errors, pool timeouts, and PostgreSQL's connection
/// exceptions (class 08), shutdowns (57P01-57P03), too many connections
/// (53300), serialization failures and deadlocks (40001, 40P01).
pub fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || matches!(
                    &*code,
                    "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01"
                )
        }),
        _ => false,
    }
}

/// Whether a database error is a refusal of the data written (a value
/// out of range, a constraint an operator added), so writing the chunk
/// one change at a time finds the change at fault: PostgreSQL's data
/// exceptions and integrity violations (classes 22, 23); SQLite's
/// constraint and type mismatch errors.
pub fn is_data_error(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    if !matches!(db.kind(), sqlx::error::ErrorKind::Other) {
        return true;
    }
    db.code().is_some_and(|code| {
        if code.starts_with("22") || code.starts_with("23") {
            return true;
        }
        // SQLite's extended result codes: the primary code is the low byte.
        code.parse::<u32>()
            .is_ok_and(|n| matches!(n & 0xff, 19 | 20))
    })
}

/// How a table spec is recorded in the store's `sink_tables` registry.
pub fn describe_spec(spec: &TableSpec) -> String {
    let cols: Vec<_> = spec
        .columns
        .iter()
        .map(|c| {
            format!(
                "{} {}{}",
                c.name,
                c.kind.as_str(),
                if c.nullable { "?" } else { "" }
            )
        })
        .collect();
    format!(
        "({}) primary key ({})",
        cols.join(", "),
        spec.primary_key.join(", ")
    )
}

/// Where in its chunk an action came from: the change (by position among
/// the chunk's changes) and the processor (by position in the pillow), so
/// a sink that refuses one write can record a pillow error for exactly
/// that change and processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Origin {
    /// The change's position in the chunk.
    pub change: u32,
    /// The processor's position in the pillow.
    pub processor: u16,
}

/// An action, the version (feed offset) of the change behind it, and where
/// it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionedAction {
    /// The action.
    pub action: Action,
    /// The change's offset.
    pub version: u64,
    /// The change and processor that produced it.
    pub origin: Origin,
}

/// A document write after compaction: the last one per (index, id) wins.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentWrite {
    /// Document id.
    pub id: String,
    /// The document, or `None` for a delete (tombstone).
    pub document: Option<String>,
    /// Version: the change's offset.
    pub version: u64,
    /// The change and processor behind the write.
    pub origin: Origin,
}

/// A row operation, in action order. Each row or id keeps the origin of
/// its action, so a chunk the database refuses can be split by change.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOp {
    /// Upsert these rows (consecutive upserts to one table are merged).
    Upsert {
        /// The rows.
        rows: Vec<Vec<Cell>>,
        /// Per row: the action's origin.
        origins: Vec<Origin>,
    },
    /// Delete rows of these document ids (consecutive deletes are merged).
    Delete {
        /// The document ids.
        ids: Vec<String>,
        /// Per id: the action's origin.
        origins: Vec<Origin>,
    },
}

impl RowOp {
    fn push_upsert(ops: &mut Vec<RowOp>, rows: Vec<Vec<Cell>>, origin: Origin) {
        if let Some(RowOp::Upsert {
            rows: existing,
            origins,
        }) = ops.last_mut()
        {
            origins.extend(std::iter::repeat_n(origin, rows.len()));
            existing.extend(rows);
        } else {
            ops.push(RowOp::Upsert {
                origins: vec![origin; rows.len()],
                rows,
            });
        }
    }

    fn push_delete(ops: &mut Vec<RowOp>, id: String, origin: Origin) {
        if let Some(RowOp::Delete { ids, origins }) = ops.last_mut() {
            ids.push(id);
            origins.push(origin);
        } else {
            ops.push(RowOp::Delete {
                ids: vec![id],
                origins: vec![origin],
            });
        }
    }
}

/// What one chunk writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WritePlan {
    /// Per index: the final write per document id, by id.
    pub documents: BTreeMap<String, BTreeMap<String, DocumentWrite>>,
    /// Per table: operations in order.
    pub rows: BTreeMap<String, Vec<RowOp>>,
}

impl WritePlan {
    /// Compact `actions` (in processing order).
    pub fn build(actions: Vec<VersionedAction>) -> WritePlan {
        let mut plan = WritePlan::default();
        for VersionedAction {
            action,
            version,
            origin,
        } in actions
        {
            match action {
                Action::IndexDocument {
                    index,
                    id,
                    document,
                } => {
                    plan.documents.entry(index).or_default().insert(
                        id.clone(),
                        DocumentWrite {
                            id,
                            document: Some(document),
                            version,
                            origin,
                        },
                    );
                }
                Action::DeleteDocument { index, id } => {
                    plan.documents.entry(index).or_default().insert(
                        id.clone(),
                        DocumentWrite {
                            id,
                            document: None,
                            version,
                            origin,
                        },
                    );
                }
                Action::UpsertRows { table, rows } => {
                    RowOp::push_upsert(plan.rows.entry(table).or_default(), rows, origin);
                }
                Action::DeleteRows { table, doc_id } => {
                    RowOp::push_delete(plan.rows.entry(table).or_default(), doc_id, origin);
                }
            }
        }
        plan
    }

    /// Whether nothing is written.
    pub fn is_empty(&self) -> bool {
        self.documents.is_empty() && self.rows.is_empty()
    }

    /// Split into one plan per origin (change and processor), in origin
    /// order, each keeping its writes' order per table: writing the parts
    /// one after another lands what the whole plan would.
    pub fn split_by_origin(self) -> Vec<(Origin, WritePlan)> {
        let mut parts: BTreeMap<(u32, u16), WritePlan> = BTreeMap::new();
        let key = |o: Origin| (o.change, o.processor);
        for (index, docs) in self.documents {
            for (id, write) in docs {
                parts
                    .entry(key(write.origin))
                    .or_default()
                    .documents
                    .entry(index.clone())
                    .or_default()
                    .insert(id, write);
            }
        }
        for (table, ops) in self.rows {
            for op in ops {
                match op {
                    RowOp::Upsert { rows, origins } => {
                        for (row, origin) in rows.into_iter().zip(origins) {
                            let part = parts.entry(key(origin)).or_default();
                            let ops = part.rows.entry(table.clone()).or_default();
                            RowOp::push_upsert(ops, vec![row], origin);
                        }
                    }
                    RowOp::Delete { ids, origins } => {
                        for (id, origin) in ids.into_iter().zip(origins) {
                            let part = parts.entry(key(origin)).or_default();
                            let ops = part.rows.entry(table.clone()).or_default();
                            RowOp::push_delete(ops, id, origin);
                        }
                    }
                }
            }
        }
        parts
            .into_iter()
            .map(|((change, processor), plan)| (Origin { change, processor }, plan))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn outage_backoff_doubles_to_a_cap_with_jitter() {
        assert_eq!(OutageBackoff::delay(0, 0.0), Duration::from_millis(50));
        assert_eq!(OutageBackoff::delay(0, 1.0), Duration::from_millis(100));
        assert_eq!(OutageBackoff::delay(3, 1.0), Duration::from_millis(800));
        assert_eq!(OutageBackoff::delay(20, 1.0), Duration::from_secs(30));
        assert_eq!(OutageBackoff::delay(u32::MAX, 0.0), Duration::from_secs(15));
    }

    #[test]
    fn a_plan_splits_by_origin_keeping_order() {
        let at = |change, processor, action| VersionedAction {
            action,
            version: u64::from(change),
            origin: Origin { change, processor },
        };
        let upsert = |v| Action::UpsertRows {
            table: "t".into(),
            rows: vec![vec![Cell::Integer(v)]],
        };
        let plan = WritePlan::build(vec![
            at(
                0,
                0,
                Action::DeleteRows {
                    table: "t".into(),
                    doc_id: "a".into(),
                },
            ),
            at(0, 0, upsert(1)),
            at(
                0,
                1,
                Action::IndexDocument {
                    index: "i".into(),
                    id: "a".into(),
                    document: "{}".into(),
                },
            ),
            at(1, 0, upsert(2)),
            at(1, 0, upsert(3)),
        ]);
        let parts = plan.split_by_origin();
        let origins: Vec<_> = parts.iter().map(|(o, _)| (o.change, o.processor)).collect();
        assert_eq!(origins, vec![(0, 0), (0, 1), (1, 0)]);
        let o00 = Origin {
            change: 0,
            processor: 0,
        };
        assert_eq!(
            parts[0].1.rows["t"],
            vec![
                RowOp::Delete {
                    ids: vec!["a".into()],
                    origins: vec![o00]
                },
                RowOp::Upsert {
                    rows: vec![vec![Cell::Integer(1)]],
                    origins: vec![o00]
                },
            ],
            "delete before upsert, as the plugin said"
        );
        assert!(parts[0].1.documents.is_empty());
        assert_eq!(parts[1].1.documents["i"]["a"].version, 0);
        let o10 = Origin {
            change: 1,
            processor: 0,
        };
        assert_eq!(
            parts[2].1.rows["t"],
            vec![RowOp::Upsert {
                rows: vec![vec![Cell::Integer(2)], vec![Cell::Integer(3)]],
                origins: vec![o10; 2]
            }]
        );
    }

    #[test]
    fn outages_are_told_from_refusals() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(is_outage(&sqlx::Error::Io(refused)));
        assert!(is_outage(&sqlx::Error::PoolTimedOut));
        assert!(!is_outage(&sqlx::Error::RowNotFound));
        assert!(!is_outage(&sqlx::Error::Protocol(
            "no spec for table t".into()
        )));
    }

    fn va(action: Action, version: u64) -> VersionedAction {
        VersionedAction {
            action,
            version,
            origin: Origin::default(),
        }
    }

    #[test]
    fn last_document_write_wins_and_row_order_is_kept() {
        let plan = WritePlan::build(vec![
            va(
                Action::IndexDocument {
                    index: "i".into(),
                    id: "a".into(),
                    document: "{\"v\":1}".into(),
                },
                1,
            ),
            va(
                Action::DeleteRows {
                    table: "t".into(),
                    doc_id: "a".into(),
                },
                1,
            ),
            va(
                Action::UpsertRows {
                    table: "t".into(),
                    rows: vec![vec![Cell::Integer(1)]],
                },
                1,
            ),
            va(
                Action::UpsertRows {
                    table: "t".into(),
                    rows: vec![vec![Cell::Integer(2)]],
                },
                2,
            ),
            va(
                Action::DeleteRows {
                    table: "t".into(),
                    doc_id: "b".into(),
                },
                3,
            ),
            va(
                Action::DeleteRows {
                    table: "t".into(),
                    doc_id: "c".into(),
                },
                4,
            ),
            va(
                Action::DeleteDocument {
                    index: "i".into(),
                    id: "a".into(),
                },
                5,
            ),
            va(
                Action::IndexDocument {
                    index: "i".into(),
                    id: "b".into(),
                    document: "{}".into(),
                },
                6,
            ),
        ]);
        let docs = &plan.documents["i"];
        assert_eq!(
            docs["a"],
            DocumentWrite {
                id: "a".into(),
                document: None,
                version: 5,
                origin: Origin::default(),
            }
        );
        assert_eq!(docs["b"].version, 6);
        assert_eq!(
            plan.rows["t"],
            vec![
                RowOp::Delete {
                    ids: vec!["a".into()],
                    origins: vec![Origin::default()]
                },
                RowOp::Upsert {
                    rows: vec![vec![Cell::Integer(1)], vec![Cell::Integer(2)]],
                    origins: vec![Origin::default(); 2]
                },
                RowOp::Delete {
                    ids: vec!["b".into(), "c".into()],
                    origins: vec![Origin::default(); 2]
                },
            ]
        );
        assert!(WritePlan::build(vec![]).is_empty());
    }
}
