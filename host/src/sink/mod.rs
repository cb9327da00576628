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

/// An action and the version (feed offset) of the change behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionedAction {
    /// The action.
    pub action: Action,
    /// The change's offset.
    pub version: u64,
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
}

/// A row operation, in action order.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOp {
    /// Upsert these rows (consecutive upserts to one table are merged).
    Upsert(Vec<Vec<Cell>>),
    /// Delete rows of these document ids (consecutive deletes are merged).
    Delete(Vec<String>),
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
        for VersionedAction { action, version } in actions {
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
                        },
                    );
                }
                Action::UpsertRows { table, rows } => {
                    let ops = plan.rows.entry(table).or_default();
                    match ops.last_mut() {
                        Some(RowOp::Upsert(existing)) => existing.extend(rows),
                        _ => ops.push(RowOp::Upsert(rows)),
                    }
                }
                Action::DeleteRows { table, doc_id } => {
                    let ops = plan.rows.entry(table).or_default();
                    match ops.last_mut() {
                        Some(RowOp::Delete(ids)) => ids.push(doc_id),
                        _ => ops.push(RowOp::Delete(vec![doc_id])),
                    }
                }
            }
        }
        plan
    }

    /// Whether nothing is written.
    pub fn is_empty(&self) -> bool {
        self.documents.is_empty() && self.rows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn va(action: Action, version: u64) -> VersionedAction {
        VersionedAction { action, version }
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
                version: 5
            }
        );
        assert_eq!(docs["b"].version, 6);
        assert_eq!(
            plan.rows["t"],
            vec![
                RowOp::Delete(vec!["a".into()]),
                RowOp::Upsert(vec![vec![Cell::Integer(1)], vec![Cell::Integer(2)]]),
                RowOp::Delete(vec!["b".into(), "c".into()]),
            ]
        );
        assert!(WritePlan::build(vec![]).is_empty());
    }
}
