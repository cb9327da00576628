//! Sinks: where actions land.
//!
//! A chunk's actions are first compacted into a [`WritePlan`] (pure, so it
//! is unit-tested without a database), then [`Delivery`] writes it:
//! documents to Elasticsearch ([`elastic`]) when configured, then one
//! transaction of the store's database with the SQL sink writes ([`sql`]:
//! [`sqlite`], [`postgres`]), the pillow errors and the checkpoint. A
//! delivery needs no feed: whatever produced the actions (a pillow, the
//! retry queue) hands them over with where they came from ([`Sources`]).
//!
//! Documents are versioned by the offset of the change that produced them:
//! a write with an older version than the stored one is skipped, so a
//! replay after a crash or a checkpoint rewind can never put old data over
//! new. Deletes leave a versioned tombstone for the same reason.
//!
//! Rows keep action order per table: a processor that deletes a document's
//! rows and upserts new ones (UCR's pattern) gets exactly that.

pub mod delivery;
pub mod elastic;
pub mod hold;
pub mod postgres;
pub mod shape;
pub mod sql;
pub mod sqlite;

pub use delivery::{Delivery, Sources};
pub use hold::HoldScope;
pub use sql::{ChunkCommit, SinkCounts, SqlSink};

use crate::action::{Action, Cell, PluginInfo, TableSpec};
use crate::db::DbError;
use crate::outage::Outage;
use crate::store::Store;
use elastic::{ElasticError, ElasticSink};
use std::collections::BTreeMap;

/// Why a SQL sink could not prepare or write.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A table exists with other columns than the spec asks for.
    #[error(
        "{store}: table {table:?} already exists and does not match the plugin's spec: {detail}; migrate or drop the table, or rename it in the plugin"
    )]
    Mismatch {
        /// Which store.
        store: String,
        /// Table.
        table: String,
        /// Which column differs and how.
        detail: String,
    },
    /// A table was built by one definition of its rows (a plugin's
    /// `table-spec.definition`, e.g. a UCR data source) and a plugin now
    /// declares another: writing would mix rows of both.
    #[error(
        "{store}: table {table:?} holds rows of another definition ({stored}) than this plugin version declares ({declared}); its rows would mix, so this version is not used. Keep the previous definition, or rebuild the table: for a UCR data source, stop the pillow and run `pillowtop ucr rebuild TABLE_ID`; otherwise stop the pillow, drop the table and reprocess the pillow's feed (pillowtop checkpoint reset)"
    )]
    Redefined {
        /// Which store.
        store: String,
        /// Table.
        table: String,
        /// The definition its rows were written by.
        stored: String,
        /// The definition declared now.
        declared: String,
    },
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DbError),
}

impl SinkError {
    /// Whether the database is unreachable or briefly unable to serve.
    pub fn is_outage(&self) -> bool {
        matches!(self, SinkError::Database(e) if e.is_outage())
    }

    /// Whether the database refused the data written: writing the chunk
    /// one change at a time finds the change at fault.
    pub fn is_data(&self) -> bool {
        matches!(self, SinkError::Database(e) if e.is_data())
    }
}

impl Outage for SinkError {
    fn is_outage(&self) -> bool {
        SinkError::is_outage(self)
    }
}

/// The table holding the documents of `index` in a SQL store.
pub fn index_table(index: &str) -> String {
    format!("doc_{index}")
}

/// Where a pillow's actions go: rows, pillow errors and checkpoints to the
/// store's database; documents to Elasticsearch when configured, else to
/// the store's `doc_<index>` tables.
#[derive(Clone)]
pub struct Sinks {
    /// The store (checkpoints, process records).
    pub store: Store,
    /// The SQL sink tables in the store's database.
    pub sql: SqlSink,
    /// The Elasticsearch sink, if documents go there.
    pub elastic: Option<ElasticSink>,
}

impl From<Store> for Sinks {
    fn from(store: Store) -> Sinks {
        Sinks::new(store, None)
    }
}

/// Why a plugin's declared outputs could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// A SQL table or document table.
    #[error(transparent)]
    Sql(#[from] SinkError),
    /// An Elasticsearch index.
    #[error(transparent)]
    Elastic(#[from] ElasticError),
}

impl Outage for OutputError {
    fn is_outage(&self) -> bool {
        match self {
            OutputError::Sql(e) => e.is_outage(),
            OutputError::Elastic(e) => e.is_outage(),
        }
    }
}

impl Sinks {
    /// The store's SQL sinks, and Elasticsearch for documents when given.
    pub fn new(store: Store, elastic: Option<ElasticSink>) -> Sinks {
        Sinks {
            sql: SqlSink::new(&store),
            store,
            elastic,
        }
    }

    /// [`Sinks::ensure_outputs`] for every declaration, in order.
    ///
    /// # Errors
    ///
    /// As [`Sinks::ensure_outputs`].
    pub async fn ensure_all(&self, infos: &[PluginInfo]) -> Result<(), OutputError> {
        for info in infos {
            self.ensure_outputs(info).await?;
        }
        Ok(())
    }

    /// Create the tables and indices a plugin declared (indices in
    /// Elasticsearch when it is configured), checking existing ones.
    ///
    /// # Errors
    ///
    /// A mismatching table or index, or an unreachable sink.
    pub async fn ensure_outputs(&self, info: &PluginInfo) -> Result<(), OutputError> {
        match &self.elastic {
            Some(es) => {
                for index in &info.indices {
                    es.ensure_index(index).await?;
                }
                let tables = PluginInfo {
                    tables: info.tables.clone(),
                    indices: Vec::new(),
                };
                self.sql.ensure_outputs(&tables).await?;
            }
            None => self.sql.ensure_outputs(info).await?,
        }
        Ok(())
    }
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
    let version = spec
        .version_column
        .as_ref()
        .map_or(String::new(), |v| format!(" version ({v})"));
    format!(
        "({}) primary key ({}){version}",
        cols.join(", "),
        spec.primary_key.join(", ")
    )
}

/// A document table's writes (`table` quoted) in the two groups one
/// statement each serves, with each group's `ON CONFLICT` clause: plain
/// writes and deletes, where an older version never replaces a newer one
/// (replay safety), and creates, which fill only an id that has no
/// document (or a deleted one).
fn document_groups<'a>(
    table: &str,
    writes: &'a BTreeMap<String, DocumentWrite>,
) -> [(Vec<&'a DocumentWrite>, String); 2] {
    let (creates, writes): (Vec<_>, Vec<_>) = writes.values().partition(|w| w.create);
    let set = "ON CONFLICT (id) DO UPDATE SET document = excluded.document, version = excluded.version WHERE";
    [
        (writes, format!("{set} excluded.version >= {table}.version")),
        (creates, format!("{set} {table}.document IS NULL")),
    ]
}

/// What an upsert does with a row whose key is already stored: nothing
/// when every column is in the key; else the non-key columns are set,
/// and with a version column only when the new version is not lower.
fn conflict_rule(spec: &TableSpec, updates: &[String]) -> String {
    if updates.is_empty() {
        return "DO NOTHING".to_string();
    }
    let set = format!("DO UPDATE SET {}", updates.join(", "));
    match &spec.version_column {
        None => set,
        Some(v) => {
            let (table, v) = (crate::db::quote(&spec.name), crate::db::quote(v));
            format!("{set} WHERE excluded.{v} >= {table}.{v} OR {table}.{v} IS NULL")
        }
    }
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
    /// Write it only if the index holds no such document (a
    /// `create-document` action); an existing one stays as it is.
    pub create: bool,
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
    /// Per row or id: the origin of its action.
    pub fn origins(&self) -> &[Origin] {
        match self {
            RowOp::Upsert { origins, .. } | RowOp::Delete { origins, .. } => origins,
        }
    }

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
                            create: false,
                            version,
                            origin,
                        },
                    );
                }
                Action::CreateDocument {
                    index,
                    id,
                    document,
                } => {
                    let docs = plan.documents.entry(index).or_default();
                    // Within the chunk the index's state is known: after
                    // a write of this id the create changes nothing (the
                    // first create wins); after a delete it is a plain
                    // write; otherwise it depends on the index.
                    let create = match docs.get(&id) {
                        Some(w) if w.document.is_some() => continue,
                        Some(_) => false,
                        None => true,
                    };
                    docs.insert(
                        id.clone(),
                        DocumentWrite {
                            id,
                            document: Some(document),
                            create,
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
                            create: false,
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

    /// This plan without the writes of the changes at `changes` (positions
    /// in the chunk), keeping the order of the rest.
    pub fn without_changes(&self, changes: &[u32]) -> WritePlan {
        let keep = |o: &Origin| !changes.contains(&o.change);
        self.filtered(keep, |_, o| keep(o))
    }

    /// This plan with only the document writes `keep_document` and the row
    /// writes `keep_row` (given the table) accept, in their order.
    pub fn filtered(
        &self,
        keep_document: impl Fn(&Origin) -> bool,
        keep_row: impl Fn(&str, &Origin) -> bool,
    ) -> WritePlan {
        let mut plan = WritePlan::default();
        for (index, docs) in &self.documents {
            let docs: BTreeMap<_, _> = docs
                .iter()
                .filter(|(_, w)| keep_document(&w.origin))
                .map(|(id, w)| (id.clone(), w.clone()))
                .collect();
            if !docs.is_empty() {
                plan.documents.insert(index.clone(), docs);
            }
        }
        for (table, ops) in &self.rows {
            let keep = |o: &Origin| keep_row(table, o);
            let mut kept = Vec::new();
            for op in ops {
                match op {
                    RowOp::Upsert { rows, origins } => {
                        for (row, origin) in rows.iter().zip(origins) {
                            if keep(origin) {
                                RowOp::push_upsert(&mut kept, vec![row.clone()], *origin);
                            }
                        }
                    }
                    RowOp::Delete { ids, origins } => {
                        for (id, origin) in ids.iter().zip(origins) {
                            if keep(origin) {
                                RowOp::push_delete(&mut kept, id.clone(), *origin);
                            }
                        }
                    }
                }
            }
            if !kept.is_empty() {
                plan.rows.insert(table.clone(), kept);
            }
        }
        plan
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
    fn a_plan_without_some_changes_keeps_the_rest_in_order() {
        let at = |change, action| VersionedAction {
            action,
            version: u64::from(change),
            origin: Origin {
                change,
                processor: 0,
            },
        };
        let upsert = |v| Action::UpsertRows {
            table: "t".into(),
            rows: vec![vec![Cell::Integer(v)]],
        };
        let doc = |id: &str| Action::IndexDocument {
            index: "i".into(),
            id: id.into(),
            document: "{}".into(),
        };
        let plan = WritePlan::build(vec![
            at(0, upsert(1)),
            at(1, upsert(2)),
            at(2, upsert(3)),
            at(1, doc("b")),
            at(2, doc("c")),
        ]);
        let kept = plan.without_changes(&[1]);
        let expected = WritePlan::build(vec![at(0, upsert(1)), at(2, upsert(3)), at(2, doc("c"))]);
        assert_eq!(kept, expected);
        assert_eq!(plan.without_changes(&[]), plan);
        assert!(plan.without_changes(&[0, 1, 2]).is_empty());
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
                create: false,
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

    #[test]
    fn the_first_create_of_an_id_wins_and_a_delete_makes_it_a_write() {
        let create = |id: &str, n: u32| Action::CreateDocument {
            index: "u".into(),
            id: id.into(),
            document: format!("{{\"n\":{n}}}"),
        };
        let plan = WritePlan::build(vec![
            va(create("a", 1), 1),
            va(create("a", 2), 2),
            va(
                Action::IndexDocument {
                    index: "u".into(),
                    id: "b".into(),
                    document: "{}".into(),
                },
                3,
            ),
            va(create("b", 4), 4),
            va(
                Action::DeleteDocument {
                    index: "u".into(),
                    id: "c".into(),
                },
                5,
            ),
            va(create("c", 6), 6),
        ]);
        let docs = &plan.documents["u"];
        // Two creates of `a`: the first, still only if the index has none.
        assert_eq!(
            (docs["a"].document.as_deref(), docs["a"].create),
            (Some("{\"n\":1}"), true)
        );
        // A create after a write in the same chunk changes nothing.
        assert_eq!(
            (docs["b"].document.as_deref(), docs["b"].version),
            (Some("{}"), 3)
        );
        // After a delete the id is free: the create is a plain write.
        assert_eq!(
            (docs["c"].document.as_deref(), docs["c"].create),
            (Some("{\"n\":6}"), false)
        );
    }
}
