//! Row tables a rebuild holds, so a pillow keeps running while one of its
//! tables is rebuilt (`pillowtop ucr rebuild`).
//!
//! A rebuild drops the table, creates it with the new definition and, in
//! the same transaction, *holds* it: one `table_holds` row per partition
//! of the pillow's feed, naming the rebuild's checkpoint id. It then
//! replays the feed from the start into the table. Meanwhile:
//!
//! - the pillow's commits drop their writes to the table for every
//!   partition still held (the rebuild will write those changes), and
//!   write everything else as usual;
//! - the rebuild's commits write the table only for partitions still
//!   held, never after the pillow took one back;
//! - the pillow takes a partition back (releases it) at the start of a
//!   chunk, or while idle, once the rebuild's committed checkpoint has
//!   reached that position and the pillow runs a version declaring the
//!   definition the rebuild writes. From then on it writes the table for
//!   that partition again, starting with that chunk.
//!
//! Every change of a partition is therefore written by the rebuild (those
//! before the release) or by the pillow (those from the release on), each
//! in feed order, the pillow's after the rebuild's; some are written by
//! both, which leaves the rows the later write makes. Both sides lock the
//! hold row of a partition (`FOR UPDATE`) before deciding, so a release
//! and a rebuild commit never interleave. A pillow commit locks the tables
//! it writes (`ROW EXCLUSIVE`, what its writes take anyway) before
//! reading holds, so the rebuild's drop-create-hold transaction cannot
//! slip between its read and its writes.

use super::WritePlan;
use crate::action::TableSpec;
use crate::db::{Db, Tx, quote};
use crate::feed::TopicPartition;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// What a commit tells about the tables a rebuild may hold.
#[derive(Debug, Clone, Default)]
pub struct HoldScope {
    /// The tables the committing pillow's processors write: a pillow may
    /// take back only its own tables.
    pub tables: Arc<[String]>,
    /// Where the chunk began in each partition the pillow reads (for the
    /// pillow idle: where it stands).
    pub starts: Vec<(TopicPartition, u64)>,
    /// Whether a held partition may be taken back at `starts`: a chunk's
    /// first piece only (later pieces follow writes the first one dropped),
    /// never the retry queue (its changes are old).
    pub may_release: bool,
}

/// The partition of a change, by its position in the chunk.
pub type PartitionOf<'a> = &'a (dyn Fn(u32) -> Option<TopicPartition> + Sync);

/// One held partition of a table.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub(super) struct Hold {
    table_name: String,
    topic: String,
    partition: i64,
    definition: Option<String>,
    rebuilder: String,
    released: bool,
    finished: bool,
}

impl Hold {
    fn tp(&self) -> TopicPartition {
        TopicPartition::new(&self.topic, self.partition as u32)
    }
}

/// A pillow commit found a partition it had taken back written by a
/// version of another definition.
#[derive(Debug)]
pub(super) struct Mismatch {
    pub table: String,
    pub stored: String,
    pub declared: String,
}

/// Why holds could not be settled.
#[derive(Debug)]
pub(super) enum SettleError {
    Database(sqlx::Error),
    Redefined(Mismatch),
}

impl From<sqlx::Error> for SettleError {
    fn from(e: sqlx::Error) -> Self {
        SettleError::Database(e)
    }
}

/// What a commit may write of `plan`, given the holds on its tables:
/// `None` when it writes all of it. Takes partitions back where the
/// scope allows. Runs inside the commit's transaction.
pub(super) async fn settle(
    tx: &mut Tx,
    checkpoint_id: &str,
    plan: &WritePlan,
    scope: &HoldScope,
    declared: &HashMap<String, TableSpec>,
    partition_of: PartitionOf<'_>,
) -> Result<Option<WritePlan>, SettleError> {
    let mut tables: BTreeSet<&str> = plan.rows.keys().map(String::as_str).collect();
    if scope.may_release {
        tables.extend(scope.tables.iter().map(String::as_str));
    }
    if tables.is_empty() {
        return Ok(None);
    }
    let mut partitions: BTreeSet<TopicPartition> =
        scope.starts.iter().map(|(tp, _)| tp.clone()).collect();
    for ops in plan.rows.values() {
        for op in ops {
            let mut last = None;
            for o in op.origins() {
                if last != Some(o.change) {
                    last = Some(o.change);
                    partitions.extend(partition_of(o.change));
                }
            }
        }
    }
    if let Tx::Postgres(t) = tx {
        // Before reading holds: a rebuild's drop-create-hold transaction
        // waits for this one, or this one for it (and then sees its holds).
        if !plan.rows.is_empty() {
            let names: Vec<String> = plan.rows.keys().map(|t| quote(t)).collect();
            let sql = format!("LOCK TABLE {} IN ROW EXCLUSIVE MODE", names.join(", "));
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut **t)
                .await?;
        }
    }
    let holds = read(tx, &tables, &partitions).await?;
    if holds.is_empty() {
        return Ok(None);
    }
    // Per held table, the partitions whose writes this commit drops.
    let mut drop: BTreeMap<&str, BTreeSet<TopicPartition>> = BTreeMap::new();
    let mut by_table: BTreeMap<&str, Vec<&Hold>> = BTreeMap::new();
    for h in &holds {
        by_table.entry(&h.table_name).or_default().push(h);
    }
    let starts: HashMap<&TopicPartition, u64> =
        scope.starts.iter().map(|(tp, n)| (tp, *n)).collect();
    for (table, holds) in by_table {
        if holds.iter().any(|h| h.rebuilder == checkpoint_id) {
            // The rebuild: held partitions only.
            for h in holds.iter().filter(|h| h.released) {
                drop.entry(table).or_default().insert(h.tp());
            }
            continue;
        }
        let own = declared.get(table).and_then(|s| s.definition.as_deref());
        for h in holds {
            let tp = h.tp();
            if h.released {
                if own.is_some_and(|own| Some(own) != h.definition.as_deref()) {
                    return Err(SettleError::Redefined(Mismatch {
                        table: table.to_owned(),
                        stored: h.definition.clone().unwrap_or_default(),
                        declared: own.unwrap_or_default().to_owned(),
                    }));
                }
                continue;
            }
            let release = scope.may_release
                && own == h.definition.as_deref()
                && match starts.get(&tp) {
                    Some(start) => rebuilt_to(tx, &h.rebuilder, &tp).await? >= *start,
                    None => false,
                };
            if release {
                take_back(tx, h).await?;
                tracing::info!(table, partition = %tp, rebuild = %h.rebuilder, "table taken back from its rebuild for this partition; the pillow writes it again");
            } else {
                if own != h.definition.as_deref() && !h.finished {
                    tracing::debug!(table, partition = %tp, "the rebuild writes another definition than this pillow's version declares; it takes the table back once it runs that version");
                }
                drop.entry(table).or_default().insert(tp);
            }
        }
    }
    if drop.is_empty() {
        return Ok(None);
    }
    let dropped = |table: &str, o: &super::Origin| {
        drop.get(table)
            .is_some_and(|held| partition_of(o.change).is_some_and(|tp| held.contains(&tp)))
    };
    Ok(Some(plan.filtered(|_| true, |table, o| !dropped(table, o))))
}

/// The columns of a [`Hold`].
const COLUMNS: &str = "table_name, topic, partition, definition, rebuilder, released, finished";

/// The holds of `tables` in `partitions`, locked for this transaction.
async fn read(
    tx: &mut Tx,
    tables: &BTreeSet<&str>,
    partitions: &BTreeSet<TopicPartition>,
) -> Result<Vec<Hold>, sqlx::Error> {
    const COLUMNS: &str = "table_name, topic, partition, definition, rebuilder, released, finished";
    match tx {
        Tx::Postgres(t) => {
            let names: Vec<&str> = tables.iter().copied().collect();
            let topics: Vec<&str> = partitions.iter().map(|tp| &*tp.topic).collect();
            let numbers: Vec<i64> = partitions
                .iter()
                .map(|tp| i64::from(tp.partition))
                .collect();
            let rows: Vec<Hold> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM table_holds WHERE table_name = ANY($1) AND topic = ANY($2) AND partition = ANY($3) ORDER BY table_name, topic, partition FOR UPDATE"
            )))
            .bind(&names)
            .bind(&topics)
            .bind(&numbers)
            .fetch_all(&mut **t)
            .await?;
            Ok(rows
                .into_iter()
                .filter(|h| partitions.contains(&h.tp()))
                .collect())
        }
        // One writer at a time: nothing to lock.
        Tx::Sqlite(t) => {
            let rows: Vec<Hold> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM table_holds ORDER BY table_name, topic, partition"
            )))
            .fetch_all(&mut **t)
            .await?;
            Ok(rows
                .into_iter()
                .filter(|h| tables.contains(h.table_name.as_str()) && partitions.contains(&h.tp()))
                .collect())
        }
    }
}

/// The rebuild's committed position in `tp` (0 before its first commit).
async fn rebuilt_to(tx: &mut Tx, rebuilder: &str, tp: &TopicPartition) -> Result<u64, sqlx::Error> {
    let sql = "SELECT next_offset FROM checkpoints WHERE checkpoint_id = $1 AND topic = $2 AND partition = $3";
    let n: Option<i64> = crate::db::on_tx!(tx, t => {
        sqlx::query_scalar(sql)
            .bind(rebuilder)
            .bind(&*tp.topic)
            .bind(i64::from(tp.partition))
            .fetch_optional(&mut **t)
            .await
    })?;
    Ok(n.unwrap_or(0).max(0) as u64)
}

/// Release a held partition: deleted when the rebuild has finished,
/// marked released while it still runs (it reads the mark).
async fn take_back(tx: &mut Tx, h: &Hold) -> Result<(), sqlx::Error> {
    let sql = if h.finished {
        "DELETE FROM table_holds WHERE table_name = $1 AND topic = $2 AND partition = $3"
    } else {
        "UPDATE table_holds SET released = TRUE WHERE table_name = $1 AND topic = $2 AND partition = $3"
    };
    crate::db::on_tx!(tx, t => {
        sqlx::query(sql)
            .bind(&h.table_name)
            .bind(&h.topic)
            .bind(h.partition)
            .execute(&mut **t)
            .await
            .map(|_| ())
    })
}

/// Hold `table` for `rebuilder` in `partitions`, replacing holds of an
/// earlier rebuild of it (inside the transaction that drops and creates
/// the table).
pub(super) async fn hold(
    tx: &mut Tx,
    table: &str,
    definition: Option<&str>,
    rebuilder: &str,
    partitions: &[TopicPartition],
) -> Result<(), sqlx::Error> {
    crate::db::on_tx!(tx, t => {
        sqlx::query("DELETE FROM table_holds WHERE table_name = $1")
            .bind(table)
            .execute(&mut **t)
            .await
            .map(|_| ())
    })?;
    for tp in partitions {
        crate::db::on_tx!(tx, t => {
            sqlx::query("INSERT INTO table_holds (table_name, topic, partition, definition, rebuilder) VALUES ($1, $2, $3, $4, $5)")
                .bind(table)
                .bind(&*tp.topic)
                .bind(i64::from(tp.partition))
                .bind(definition)
                .bind(rebuilder)
                .execute(&mut **t)
                .await
                .map(|_| ())
        })?;
    }
    Ok(())
}

/// The holds of `table` (for the rebuild watching its pillow take the
/// table back): a read, outside any transaction.
pub(super) async fn of_table(
    db: &Db,
    table: &str,
) -> Result<Vec<(TopicPartition, bool)>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM table_holds WHERE table_name = $1 ORDER BY topic, partition"
    );
    let rows: Vec<Hold> = crate::db::on_db!(db, pool => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(table)
            .fetch_all(pool)
            .await
    })?;
    Ok(rows.iter().map(|h| (h.tp(), h.released)).collect())
}

/// The rebuild of `table` has stopped writing: partitions taken back are
/// forgotten; the others stay held until the pillow takes them back
/// (which then deletes them).
pub(super) async fn finish(tx: &mut Tx, table: &str, rebuilder: &str) -> Result<(), sqlx::Error> {
    for sql in [
        "DELETE FROM table_holds WHERE table_name = $1 AND rebuilder = $2 AND released",
        "UPDATE table_holds SET finished = TRUE WHERE table_name = $1 AND rebuilder = $2",
    ] {
        crate::db::on_tx!(tx, t => {
            sqlx::query(sql)
                .bind(table)
                .bind(rebuilder)
                .execute(&mut **t)
                .await
                .map(|_| ())
        })?;
    }
    Ok(())
}
