//! One database layer for the store, pillow errors and the SQL sinks:
//! which database it is ([`Db`]: SQLite, the embedded default, or
//! PostgreSQL), opening either with one set of settings ([`sqlite`],
//! [`postgres`]), transactions over either ([`Tx`]), classifying sqlx
//! errors ([`is_outage`], [`is_data_error`]) and quoting identifiers.
//!
//! Both databases get the same SQL text where they can: queries use `$N`
//! placeholders, which SQLite and PostgreSQL both accept, and [`on_db!`] /
//! [`on_tx!`] expand a body once per backend so each copy type-checks
//! against its own driver. Only DDL and the sinks' bulk writes differ.

pub mod postgres;
pub mod sqlite;

use sqlx::{PgPool, Postgres, Sqlite, SqlitePool, Transaction};

/// An open database: the store's (SQLite or PostgreSQL). Cheap to clone.
#[derive(Clone, Debug)]
pub enum Db {
    /// A SQLite file, with its background WAL checkpointer.
    Sqlite(sqlite::Database),
    /// A PostgreSQL pool (every connection's `search_path` is the store's schema).
    Postgres(PgPool),
}

/// A transaction on a [`Db`].
pub enum Tx {
    /// On SQLite.
    Sqlite(Transaction<'static, Sqlite>),
    /// On PostgreSQL.
    Postgres(Transaction<'static, Postgres>),
}

/// Run `$body` with `$pool` bound to the database's pool, whichever it is:
/// the body is written once and compiled per backend.
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite(database) => {
                let $pool = &database.pool;
                $body
            }
            $crate::db::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_db;

/// Run `$body` with `$tx` bound to the backend's transaction (use it as
/// `&mut **$tx`), whichever it is.
macro_rules! on_tx {
    ($tx:expr, $t:ident => $body:expr) => {
        match $tx {
            $crate::db::Tx::Sqlite($t) => $body,
            $crate::db::Tx::Postgres($t) => $body,
        }
    };
}
pub(crate) use on_tx;

impl Db {
    /// Start a write transaction. SQLite's takes the write lock at once
    /// (`BEGIN IMMEDIATE`), waiting up to the busy timeout for another
    /// writer: a deferred transaction that reads first and writes later
    /// fails at once with "database is locked" when another connection
    /// committed in between (the pillow and its retry queue share the
    /// store), and the busy timeout never applies to that case.
    ///
    /// # Errors
    ///
    /// When no connection can be had, or SQLite's lock stayed taken for
    /// the whole busy timeout.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(d) => Tx::Sqlite(d.pool.begin_with("BEGIN IMMEDIATE").await?),
            Db::Postgres(p) => Tx::Postgres(p.begin().await?),
        })
    }

    /// Commit `tx`, then let SQLite's background checkpointer copy the
    /// new log pages (see [`sqlite::Database::committed`]).
    ///
    /// # Errors
    ///
    /// When the commit fails; nothing of the transaction is kept.
    pub async fn commit(&self, tx: Tx) -> Result<(), sqlx::Error> {
        match tx {
            Tx::Sqlite(t) => t.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
        }
        if let Db::Sqlite(d) = self {
            d.committed();
        }
        Ok(())
    }

    /// The SQLite pool, when this is SQLite (for tests and tools).
    pub fn sqlite(&self) -> Option<&SqlitePool> {
        match self {
            Db::Sqlite(d) => Some(&d.pool),
            Db::Postgres(_) => None,
        }
    }

    /// The PostgreSQL pool, when this is PostgreSQL (for tests and tools).
    pub fn postgres(&self) -> Option<&PgPool> {
        match self {
            Db::Postgres(p) => Some(p),
            Db::Sqlite(_) => None,
        }
    }
}

/// A database error with the database it came from, for messages.
#[derive(Debug, thiserror::Error)]
#[error("{store}: {source}")]
pub struct DbError {
    /// Which database (the store location's display: no password).
    pub store: String,
    /// The error.
    pub source: sqlx::Error,
}

impl DbError {
    /// Whether the database is unreachable or briefly unable to serve
    /// ([`is_outage`]).
    pub fn is_outage(&self) -> bool {
        is_outage(&self.source)
    }

    /// Whether the database refused the data written ([`is_data_error`]).
    pub fn is_data(&self) -> bool {
        is_data_error(&self.source)
    }
}

/// Whether a database error means the server is unreachable or briefly
/// unable to serve (retry the same work later), rather than a refusal of
/// the data: I/O errors, pool timeouts, and PostgreSQL's connection
/// exceptions (class 08), shutdowns (57P01-57P03), too many connections
/// (53300), serialization failures and deadlocks (40001, 40P01); SQLite's
/// busy and locked (another writer held the file past the busy timeout).
pub fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => match sqlite_primary_code(db.as_ref()) {
            Some(code) => matches!(code, SQLITE_BUSY | SQLITE_LOCKED),
            None => db.code().is_some_and(|code| {
                code.starts_with("08")
                    || matches!(
                        &*code,
                        "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01"
                    )
            }),
        },
        _ => false,
    }
}

const SQLITE_BUSY: u32 = 5;
const SQLITE_LOCKED: u32 = 6;
const SQLITE_CONSTRAINT: u32 = 19;
const SQLITE_MISMATCH: u32 = 20;

/// SQLite's primary result code (the low byte of its extended code), when
/// `db` is a SQLite error: PostgreSQL's SQLSTATEs can parse as numbers too.
fn sqlite_primary_code(db: &dyn sqlx::error::DatabaseError) -> Option<u32> {
    db.try_downcast_ref::<sqlx::sqlite::SqliteError>()?;
    db.code()?.parse::<u32>().ok().map(|n| n & 0xff)
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
    match sqlite_primary_code(db.as_ref()) {
        Some(code) => matches!(code, SQLITE_CONSTRAINT | SQLITE_MISMATCH),
        None => db
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
    }
}

/// Quote an identifier (names are validated by the contract checks, but
/// quoting keeps '-' in index names and reserved words safe). The same
/// rule holds in SQLite and PostgreSQL.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_told_from_refusals() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(is_outage(&sqlx::Error::Io(refused)));
        assert!(is_outage(&sqlx::Error::PoolTimedOut));
        assert!(!is_outage(&sqlx::Error::RowNotFound));
        assert!(!is_outage(&sqlx::Error::Protocol(
            "no spec for table t".into()
        )));
        assert!(!is_data_error(&sqlx::Error::RowNotFound));
    }

    /// A second writer past the busy timeout gets SQLite's "database is
    /// locked": an outage to wait out, not a refusal of the data.
    #[tokio::test]
    async fn a_locked_sqlite_file_is_an_outage() {
        use sqlx::ConnectOptions;
        use sqlx::sqlite::SqliteConnectOptions;
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("locked.db"))
            .create_if_missing(true)
            .busy_timeout(std::time::Duration::ZERO);
        let mut holder = options.connect().await.unwrap();
        let mut other = options.connect().await.unwrap();
        sqlx::raw_sql("CREATE TABLE t (x INTEGER); BEGIN IMMEDIATE; INSERT INTO t VALUES (1)")
            .execute(&mut holder)
            .await
            .unwrap();
        let e = sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap_err();
        assert!(is_outage(&e), "{e:?}");
        assert!(!is_data_error(&e), "{e:?}");
    }

    #[test]
    fn identifiers_are_quoted_with_quotes_doubled() {
        assert_eq!(quote("case-search"), "\"case-search\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }
}
