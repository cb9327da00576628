//! The embedded feed: a partitioned, ordered log in one SQLite file.
//!
//! Offsets are dense and start at 0 per partition. Appends take SQLite's
//! write lock (`BEGIN IMMEDIATE`), so concurrent publishers serialize and
//! offsets never collide. Readers poll; the file is in WAL mode so reads
//! never block the writer. An idle reader does not read the log again
//! until SQLite's `data_version` of its own connection says another
//! connection committed: one cheap pragma per `max_wait_ms` (at most
//! every 500 ms) instead of a query per partition.

use super::{FeedError, Message, TopicPartition, Watermarks, partition_for_key};
use crate::db::sqlite::Database;
use sqlx::sqlite::SqliteConnection;
use sqlx::{QueryBuilder, Row};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Messages appended per transaction by [`EmbeddedFeed::publish`] (5
/// bound values each, well under SQLite's 32766-variable limit).
const PUBLISH_BATCH: usize = 2000;
/// The longest an idle reader sleeps between looks at the log's
/// `data_version`. It also looks at the end of every poll's wait, so with
/// a pillow's `max_wait_ms` below this a new change waits at most that.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// The embedded feed.
#[derive(Clone)]
pub struct EmbeddedFeed {
    db: Database,
    path: Arc<PathBuf>,
}

fn db_error(path: &Path) -> impl Fn(sqlx::Error) -> FeedError + '_ {
    move |source| FeedError::Database {
        path: path.display().to_string(),
        source,
    }
}

impl EmbeddedFeed {
    /// Open (creating if needed) the feed at `path`.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened or migrated.
    pub async fn open(path: &Path) -> Result<EmbeddedFeed, FeedError> {
        static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite-feed");
        let db = crate::db::sqlite::open(path, &MIGRATOR)
            .await
            .map_err(|e| FeedError::Invalid(format!("embedded feed {}: {e}", path.display())))?;
        Ok(EmbeddedFeed {
            db,
            path: Arc::new(path.to_owned()),
        })
    }

    /// The feed file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Create `topic` with `partitions` if missing; check the count if present.
    /// Returns the partition count.
    ///
    /// # Errors
    ///
    /// [`FeedError::PartitionMismatch`] when it exists with another count.
    pub async fn create_topic(
        &self,
        topic: &str,
        partitions: Option<u32>,
    ) -> Result<u32, FeedError> {
        if topic.is_empty()
            || topic.len() > 249
            || !topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(FeedError::Invalid(format!(
                "topic name {topic:?} must be 1-249 characters of a-z, A-Z, 0-9, '.', '_' and '-' (as in Kafka)"
            )));
        }
        if partitions == Some(0) {
            return Err(FeedError::Invalid("--partitions must be at least 1".into()));
        }
        let existing: Option<i64> =
            sqlx::query_scalar("SELECT partitions FROM topics WHERE name = ?")
                .bind(topic)
                .fetch_optional(&self.db.pool)
                .await
                .map_err(db_error(&self.path))?;
        match (existing, partitions) {
            (Some(n), Some(p)) if n as u32 != p => Err(FeedError::PartitionMismatch {
                topic: topic.into(),
                existing: n as u32,
                requested: p,
            }),
            (Some(n), _) => Ok(n as u32),
            (None, p) => {
                let p = p.unwrap_or(DEFAULT_PARTITIONS);
                sqlx::query("INSERT INTO topics (name, partitions, created_at_ms) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING")
                    .bind(topic)
                    .bind(p as i64)
                    .bind(crate::time::now_ms())
                    .execute(&self.db.pool)
                    .await
                    .map_err(db_error(&self.path))?;
                Ok(p)
            }
        }
    }

    /// Topics and their partition counts.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn topics(&self) -> Result<Vec<(String, u32)>, FeedError> {
        let rows = sqlx::query("SELECT name, partitions FROM topics ORDER BY name")
            .fetch_all(&self.db.pool)
            .await
            .map_err(db_error(&self.path))?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) as u32))
            .collect())
    }

    /// Append `messages` (key, value) to `topic`, each to the partition its
    /// key hashes to (a message without a key goes to partition 0). Returns
    /// how many were appended.
    ///
    /// # Errors
    ///
    /// When the topic is missing or the database fails; batches appended
    /// before the failure stay.
    pub async fn publish(
        &self,
        topic: &str,
        messages: Vec<(Option<Vec<u8>>, Vec<u8>)>,
    ) -> Result<usize, FeedError> {
        let partitions: Option<i64> =
            sqlx::query_scalar("SELECT partitions FROM topics WHERE name = ?")
                .bind(topic)
                .fetch_optional(&self.db.pool)
                .await
                .map_err(db_error(&self.path))?;
        let partitions = partitions.ok_or_else(|| FeedError::UnknownTopic(topic.into()))? as u32;
        let now = crate::time::now_ms();
        let mut written = 0;
        for batch in messages.chunks(PUBLISH_BATCH) {
            let mut tx = self
                .db
                .pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(db_error(&self.path))?;
            let rows = sqlx::query(r#"SELECT partition, MAX("offset") + 1 FROM messages WHERE topic = ? GROUP BY partition"#)
                .bind(topic)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error(&self.path))?;
            let mut next: HashMap<u32, i64> = rows
                .iter()
                .map(|r| (r.get::<i64, _>(0) as u32, r.get::<i64, _>(1)))
                .collect();
            let mut qb = QueryBuilder::new(
                r#"INSERT INTO messages (topic, partition, "offset", key, value, timestamp_ms) "#,
            );
            qb.push_values(batch, |mut b, (key, value)| {
                let p = key
                    .as_deref()
                    .map_or(0, |k| partition_for_key(k, partitions));
                let offset = next.entry(p).or_insert(0);
                b.push_bind(topic)
                    .push_bind(p as i64)
                    .push_bind(*offset)
                    .push_bind(key.clone())
                    .push_bind(value.clone())
                    .push_bind(now);
                *offset += 1;
            });
            qb.build()
                .execute(&mut *tx)
                .await
                .map_err(db_error(&self.path))?;
            tx.commit().await.map_err(db_error(&self.path))?;
            self.db.committed();
            written += batch.len();
        }
        Ok(written)
    }

    /// Every partition of `topics`.
    ///
    /// # Errors
    ///
    /// [`FeedError::UnknownTopic`] for a missing topic.
    pub async fn partitions(&self, topics: &[String]) -> Result<Vec<TopicPartition>, FeedError> {
        let mut out = Vec::new();
        for topic in topics {
            let n: Option<i64> = sqlx::query_scalar("SELECT partitions FROM topics WHERE name = ?")
                .bind(topic)
                .fetch_optional(&self.db.pool)
                .await
                .map_err(db_error(&self.path))?;
            let n = n.ok_or_else(|| FeedError::UnknownTopic(topic.clone()))?;
            out.extend((0..n as u32).map(|p| TopicPartition::new(topic, p)));
        }
        Ok(out)
    }

    /// Watermarks of one partition.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn watermarks(&self, tp: &TopicPartition) -> Result<Watermarks, FeedError> {
        let row = sqlx::query(r#"SELECT MIN("offset"), MAX("offset") FROM messages WHERE topic = ? AND partition = ?"#)
            .bind(&*tp.topic)
            .bind(tp.partition as i64)
            .fetch_one(&self.db.pool)
            .await
            .map_err(db_error(&self.path))?;
        let (low, high): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
        Ok(match (low, high) {
            (Some(l), Some(h)) => Watermarks {
                low: l as u64,
                high: h as u64 + 1,
            },
            _ => Watermarks { low: 0, high: 0 },
        })
    }

    /// A reader of `positions`.
    pub fn reader(&self, positions: Vec<(TopicPartition, u64)>) -> EmbeddedReader {
        EmbeddedReader {
            feed: self.clone(),
            positions,
            next_partition: 0,
            watch: None,
            found_nothing_at: None,
        }
    }
}

/// Partitions of a topic created by `publish` without `--partitions`.
pub const DEFAULT_PARTITIONS: u32 = 4;

/// Polls assigned partitions of the embedded feed.
pub struct EmbeddedReader {
    feed: EmbeddedFeed,
    positions: Vec<(TopicPartition, u64)>,
    /// Round-robin start, so no partition is starved when chunks fill up.
    next_partition: usize,
    /// A connection of its own (out of the pool, which hands out any of
    /// its connections) whose `data_version` tells when others commit.
    watch: Option<SqliteConnection>,
    /// The `data_version` at which the last read found nothing new: until
    /// it changes, an idle reader does not read the log again (a pillow
    /// polls again after every `max_wait_ms`).
    found_nothing_at: Option<i64>,
}

impl EmbeddedReader {
    /// See [`super::FeedReader::poll`].
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn poll(
        &mut self,
        max: usize,
        max_wait: Duration,
    ) -> Result<Vec<Message>, FeedError> {
        let deadline = Instant::now() + max_wait;
        loop {
            // Taken before the read: a commit after this point changes it,
            // so nothing committed after the read began is waited past.
            let version = self.data_version().await?;
            // A read that found nothing at this version finds nothing again.
            if self.found_nothing_at != Some(version) {
                let out = self.read_once(max).await?;
                if !out.is_empty() || self.positions.is_empty() {
                    self.found_nothing_at = None;
                    return Ok(out);
                }
                self.found_nothing_at = Some(version);
            }
            loop {
                tokio::time::sleep_until(deadline.min(Instant::now() + IDLE_POLL)).await;
                // At the deadline the next poll looks first thing.
                if Instant::now() >= deadline {
                    return Ok(Vec::new());
                }
                if self.data_version().await? != version {
                    break;
                }
            }
        }
    }

    /// SQLite's `data_version` on this reader's own connection: it changes
    /// whenever another connection (of any process) commits to the file.
    async fn data_version(&mut self) -> Result<i64, FeedError> {
        let err = db_error(&self.feed.path);
        let conn = match &mut self.watch {
            Some(c) => c,
            None => self
                .watch
                .insert(self.feed.db.pool.acquire().await.map_err(&err)?.detach()),
        };
        sqlx::query_scalar("PRAGMA data_version")
            .fetch_one(conn)
            .await
            .map_err(err)
    }

    async fn read_once(&mut self, max: usize) -> Result<Vec<Message>, FeedError> {
        let mut out = Vec::new();
        let n = self.positions.len();
        for i in 0..n {
            if out.len() >= max {
                break;
            }
            let idx = (self.next_partition + i) % n;
            let (tp, position) = &mut self.positions[idx];
            let rows = sqlx::query(
                r#"SELECT "offset", key, value, timestamp_ms FROM messages
                   WHERE topic = ? AND partition = ? AND "offset" >= ? ORDER BY "offset" LIMIT ?"#,
            )
            .bind(&*tp.topic)
            .bind(tp.partition as i64)
            .bind(*position as i64)
            .bind((max - out.len()) as i64)
            .fetch_all(&self.feed.db.pool)
            .await
            .map_err(db_error(&self.feed.path))?;
            for r in rows {
                let offset = r.get::<i64, _>(0) as u64;
                *position = offset + 1;
                out.push(Message {
                    tp: tp.clone(),
                    offset,
                    key: r.get(1),
                    value: r.get(2),
                    timestamp_ms: Some(r.get(3)),
                });
            }
        }
        self.next_partition = (self.next_partition + 1) % n.max(1);
        Ok(out)
    }
}
