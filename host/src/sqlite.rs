//! Opening the SQLite files of the embedded feed and the store, with one
//! set of settings.

use sqlx::SqlitePool;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::path::Path;
use std::time::Duration;

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

/// Open (creating it and its directory if needed) and migrate the database at `path`.
///
/// # Errors
///
/// See [`OpenError`].
pub async fn open(path: &Path, migrator: &Migrator) -> Result<SqlitePool, OpenError> {
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
        .pragma("cache_size", "-16384");
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    migrator.run(&pool).await?;
    Ok(pool)
}
