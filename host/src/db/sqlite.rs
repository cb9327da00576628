//! Opening the SQLite files of the embedded feed and the store, with one
//! set of settings, and checkpointing their write-ahead logs in the
//! background.
//!
//! Both files run in WAL mode: a commit appends pages to the `-wal` file,
//! and a *checkpoint* later copies them into the database file. SQLite's
//! default runs that checkpoint inside the commit that pushes the log past
//! 1000 pages, so every second or third chunk commit of the store also
//! rewrote the previous chunks' pages and synced the file before it
//! returned (the commit of 2,000 case documents took twice as long as one
//! without). Here the committing connections leave checkpoints to one
//! dedicated connection that a commit wakes ([`Database::committed`]), so
//! the copy overlaps the next chunk instead of delaying this one. A
//! passive checkpoint never blocks a writer or a reader. If that connection
//! falls behind, the committing connection still checkpoints once the log
//! passes [`WAL_SAFETY_PAGES`], so the log stays bounded.

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, SqlitePool};
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;

/// Log size, in pages, at which a committing connection checkpoints by
/// itself (SQLite's `wal_autocheckpoint`; its default is 1000). With 16 KiB
/// pages this is 64 MiB, about ten chunk commits of 2,000 case documents:
/// reached only when the background checkpointer falls behind.
pub const WAL_SAFETY_PAGES: u32 = 4096;

/// Rows a connection's thread may hand to the reading task before it
/// waits for the task to take them (sqlx's default is 50). A feed read
/// returns up to `chunk_size` rows; with 50, once the buffer filled, the
/// connection thread and the reader woke each other row by row (4096 cut a
/// pillow's context switches by 40-47%, BENCHMARKS.md 3f). Bounded, so a
/// huge query still applies back-pressure.
const ROW_BUFFER: usize = 4096;

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The parent directory could not be created.
    #[error("cannot create {dir}: {source}")]
    CreateDir {
        /// The directory.
        dir: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Connecting failed.
    #[error(transparent)]
    Connect(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// An open SQLite database: a connection pool and the handle that wakes
/// its background checkpointer. Cheap to clone; the checkpointer stops
/// when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Database {
    /// The pool every query goes through.
    pub pool: SqlitePool,
    checkpoints: mpsc::Sender<()>,
}

impl Database {
    /// Tell the checkpointer that a transaction committed, so it copies
    /// the new log pages into the database file. Never waits: wake-ups
    /// that arrive while one is pending are merged.
    pub fn committed(&self) {
        let _ = self.checkpoints.try_send(());
    }
}

/// Open (creating it and its directory if needed) and migrate the database
/// at `path`, and start its background checkpointer (on the current tokio
/// runtime).
///
/// # Errors
///
/// See [`OpenError`].
pub async fn open(path: &Path, migrator: &Migrator) -> Result<Database, OpenError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::CreateDir {
            dir: dir.display().to_string(),
            source,
        })?;
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // NORMAL in WAL mode: a commit survives a process crash; only an
        // OS crash or power loss can lose the last commits.
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(30))
        // Documents and changes are 1-3 KB: 16 KiB pages hold them
        // without overflow chains (applies when the file is created).
        .page_size(16384)
        // A chunk commit writes megabytes; the default 2 MiB page cache
        // spills mid-transaction. 16 MiB per connection (negative = KiB).
        .pragma("cache_size", "-16384")
        .pragma("wal_autocheckpoint", WAL_SAFETY_PAGES.to_string())
        // A multi-row upsert inside a transaction keeps a statement journal
        // (the pages it changes, to undo just that statement if it fails
        // part way); in memory, not in a temporary file: a chunk commit
        // wrote megabytes of them. Sorts' temporary b-trees live in memory
        // too; each is bounded by its one query.
        .pragma("temp_store", "memory")
        .row_buffer_size(ROW_BUFFER);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options.clone())
        .await?;
    migrator.run(&pool).await?;
    let checkpointer = options.connect().await?;
    let (checkpoints, wakeups) = mpsc::channel(1);
    tokio::spawn(checkpoint_on_commit(
        checkpointer,
        wakeups,
        path.display().to_string(),
    ));
    Ok(Database { pool, checkpoints })
}

/// The background checkpointer: one passive checkpoint per wake-up, until
/// every [`Database`] handle is gone. A failed checkpoint is logged and
/// retried at the next commit; the committing connections' own
/// checkpoint at [`WAL_SAFETY_PAGES`] still bounds the log meanwhile.
async fn checkpoint_on_commit(
    mut conn: SqliteConnection,
    mut wakeups: mpsc::Receiver<()>,
    path: String,
) {
    while wakeups.recv().await.is_some() {
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut conn)
            .await
        {
            tracing::warn!(database = %path, %error, "background WAL checkpoint failed; the log grows until the next one succeeds");
        }
    }
    let _ = conn.close().await;
}
