//! The store: checkpoints, host process records and plugin events, in the
//! same database (SQLite, the embedded default, or PostgreSQL) as the SQL
//! sink tables and pillow errors, so a chunk's writes, its pillow errors
//! and its checkpoint commit in **one transaction** (the sink's delivery
//! runs it): after a crash either all of a chunk landed or none of it did.
//!
//! Only DDL differs between the databases (`migrations/sqlite-store`,
//! `migrations/postgres`); queries are written once (see [`crate::db`]).

mod events;
mod processes;
mod shadows;

pub use events::{PluginEvent, PluginEventKind};
pub use processes::{HEARTBEAT, Liveness, ProcessRecord, STALE_AFTER, Waiting};
pub use shadows::{ShadowRun, StoredDiff};

use crate::config::StoreLocation;
use crate::db::{self, Db, Tx, on_db, on_tx};
use crate::feed::TopicPartition;
use crate::outage::Outage;
use std::path::Path;
use std::sync::Arc;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("{store}: {source}")]
    Database {
        /// Which store ([`StoreLocation`]'s display: no password).
        store: String,
        /// The error.
        source: sqlx::Error,
    },
    /// The database could not be opened or migrated.
    #[error("{store}: {message}")]
    Migrate {
        /// Which store.
        store: String,
        /// What failed and what to do.
        message: String,
    },
    /// The database server could not be reached while opening the store
    /// (connection refused, too many connections, shutting down): the
    /// same open may succeed later.
    #[error("{store}: {message}")]
    Unreachable {
        /// Which store.
        store: String,
        /// What failed and what to check.
        message: String,
    },
}

impl StoreError {
    /// Whether the store is unreachable or briefly unable to serve, so the
    /// same work may succeed later (see [`db::is_outage`]), as opposed to
    /// a refusal that retrying cannot fix.
    pub fn is_outage(&self) -> bool {
        match self {
            StoreError::Database { source, .. } => db::is_outage(source),
            StoreError::Unreachable { .. } => true,
            StoreError::Migrate { .. } => false,
        }
    }
}

impl Outage for StoreError {
    fn is_outage(&self) -> bool {
        StoreError::is_outage(self)
    }
}

/// A saved checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Where.
    pub tp: TopicPartition,
    /// The next offset to read.
    pub next_offset: u64,
    /// When it was saved, epoch ms.
    pub updated_at_ms: i64,
}

#[derive(sqlx::FromRow)]
struct CheckpointRow {
    topic: String,
    partition: i64,
    next_offset: i64,
    updated_at_ms: i64,
}

/// The store, in SQLite or PostgreSQL.
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
    /// For messages: [`StoreLocation`]'s display.
    location: Arc<str>,
}

impl Store {
    /// Open (creating if needed) and migrate the SQLite store at `path`.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened or migrated.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        Store::connect(&StoreLocation::Sqlite {
            path: path.to_owned(),
        })
        .await
    }

    /// Open the store at `location` and bring its schema up to date.
    /// PostgreSQL: the schema is created if missing; concurrent starts
    /// are safe (migrations take an advisory lock).
    ///
    /// # Errors
    ///
    /// When the database cannot be reached or migrated; the message says
    /// which store and what to check.
    pub async fn connect(location: &StoreLocation) -> Result<Store, StoreError> {
        static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite-store");
        static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");
        let name = location.to_string();
        let db = match location {
            StoreLocation::Sqlite { path } => {
                Db::Sqlite(db::sqlite::open(path, &SQLITE).await.map_err(|e| {
                    StoreError::Migrate {
                        store: name.clone(),
                        message: e.to_string(),
                    }
                })?)
            }
            StoreLocation::Postgres { url, schema } => Db::Postgres(
                db::postgres::open(url, schema, &POSTGRES)
                    .await
                    .map_err(|e| {
                        if e.outage {
                            StoreError::Unreachable {
                                store: name.clone(),
                                message: e.message,
                            }
                        } else {
                            StoreError::Migrate {
                                store: name.clone(),
                                message: e.message,
                            }
                        }
                    })?,
            ),
        };
        Ok(Store {
            db,
            location: name.into(),
        })
    }

    /// [`Store::connect`] for a process starting up: while the database
    /// is unreachable, log it and try again with capped, jittered backoff
    /// instead of failing, so a process started before its database comes
    /// up by itself. `Ok(None)` when `shutdown` fires first.
    ///
    /// # Errors
    ///
    /// As [`Store::connect`] for everything but an outage (a bad URL, an
    /// unknown role, a failed migration): retrying cannot fix those. An
    /// outage is never given up on: only a reachable database or
    /// `shutdown` ends the wait.
    pub async fn connect_when_reachable(
        location: &StoreLocation,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<Option<Store>, StoreError> {
        crate::outage::wait_until_reachable(&location.to_string(), shutdown, || {
            Store::connect(location)
        })
        .await
        .transpose()
    }

    /// Which store this is, for messages (no password).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The database, for the sinks and pillow errors sharing it.
    pub fn db(&self) -> &Db {
        &self.db
    }

    fn err(&self) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        |source| StoreError::Database {
            store: self.location.to_string(),
            source,
        }
    }

    /// The SQLite pool, when the store is SQLite (for tests and tools).
    pub fn sqlite(&self) -> Option<&sqlx::SqlitePool> {
        self.db.sqlite()
    }

    /// The PostgreSQL pool, when the store is PostgreSQL (for tests and tools).
    pub fn postgres(&self) -> Option<&sqlx::PgPool> {
        self.db.postgres()
    }

    /// Saved checkpoints of `checkpoint_id`.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn checkpoints(&self, checkpoint_id: &str) -> Result<Vec<Checkpoint>, StoreError> {
        let rows: Vec<CheckpointRow> = on_db!(&self.db, pool => {
            sqlx::query_as("SELECT topic, partition, next_offset, updated_at_ms FROM checkpoints WHERE checkpoint_id = $1 ORDER BY topic, partition")
                .bind(checkpoint_id)
                .fetch_all(pool)
                .await
                .map_err(self.err())?
        });
        Ok(rows
            .into_iter()
            .map(|r| Checkpoint {
                tp: TopicPartition::new(&r.topic, r.partition as u32),
                next_offset: r.next_offset as u64,
                updated_at_ms: r.updated_at_ms,
            })
            .collect())
    }

    /// Set checkpoints in a transaction of their own (idle saves, the
    /// graceful stop, operator tooling).
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn set_checkpoints(
        &self,
        checkpoint_id: &str,
        checkpoints: &[(TopicPartition, u64)],
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await.map_err(self.err())?;
        save_checkpoints(&mut tx, checkpoint_id, checkpoints)
            .await
            .map_err(self.err())?;
        self.db.commit(tx).await.map_err(self.err())
    }
}

/// Save `checkpoints` (next offsets) of `checkpoint_id` in `tx`, with the
/// writes they cover.
///
/// # Errors
///
/// When the database fails; the caller's transaction is then rolled back.
pub async fn save_checkpoints(
    tx: &mut Tx,
    checkpoint_id: &str,
    checkpoints: &[(TopicPartition, u64)],
) -> Result<(), sqlx::Error> {
    let now = crate::time::now_ms();
    on_tx!(tx, t => {
        for (tp, next) in checkpoints {
            sqlx::query(
                "INSERT INTO checkpoints (checkpoint_id, topic, partition, next_offset, updated_at_ms) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (checkpoint_id, topic, partition) DO UPDATE SET next_offset = excluded.next_offset, updated_at_ms = excluded.updated_at_ms",
            )
            .bind(checkpoint_id)
            .bind(&*tp.topic)
            .bind(i64::from(tp.partition))
            .bind(*next as i64)
            .bind(now)
            .execute(&mut **t)
            .await?;
        }
        Ok(())
    })
}
