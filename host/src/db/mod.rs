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
    /// Start a transaction.
    ///
    /// # Errors
    ///
    /// When no connection can be had.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(d) => Tx::Sqlite(d.pool.begin().await?),
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

    #[test]
    fn identifiers_are_quoted_with_quotes_doubled() {
        assert_eq!(quote("case-search"), "\"case-search\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }
}
