//! Opening a PostgreSQL database: create the schema if missing, point every
//! connection's `search_path` at it, run the migrations.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use std::str::FromStr;
use std::time::Duration;

/// Connections per process: one chunk commit in flight per pillow, plus
/// status, heartbeats and plugin events.
const MAX_CONNECTIONS: u32 = 8;

/// Why the store could not be opened: a message naming what failed and
/// what to check, and whether the server was unreachable (so the same open
/// may succeed later) rather than refusing (bad URL, role, permissions).
#[derive(Debug)]
pub struct OpenError {
    /// What failed and what to check.
    pub message: String,
    /// The server could not be reached or was briefly unable to serve.
    pub outage: bool,
}

impl OpenError {
    fn refused(message: String) -> OpenError {
        OpenError {
            message,
            outage: false,
        }
    }
}

/// Open `schema` of the database at `url` and run `migrator` there.
///
/// # Errors
///
/// An [`OpenError`].
pub async fn open(
    url: &str,
    schema: &str,
    migrator: &sqlx::migrate::Migrator,
) -> Result<PgPool, OpenError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| OpenError::refused(format!("invalid store.url: {e}")))?
        .application_name("pillowtop");
    let unreachable = |e: sqlx::Error| OpenError {
        outage: super::is_outage(&e),
        message: format!(
            "cannot connect: {e}; check that PostgreSQL runs and store.url (or PILLOWTOP_STORE_URL) names its host, port, user and database"
        ),
    };
    // The schema must exist before a connection can use it as search_path.
    // `CREATE SCHEMA IF NOT EXISTS` is not atomic: two processes starting
    // together can both try to create it, so creation takes a lock.
    let mut conn = options.connect().await.map_err(unreachable)?;
    let cannot_create = |e: sqlx::Error| OpenError {
        outage: super::is_outage(&e),
        message: format!(
            "cannot create schema {schema}: {e}; create it, or grant CREATE on the database"
        ),
    };
    let mut tx = conn.begin().await.map_err(cannot_create)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('pillowtop.store.schema'))")
        .execute(&mut *tx)
        .await
        .map_err(cannot_create)?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {}",
        super::quote(schema)
    )))
    .execute(&mut *tx)
    .await
    .map_err(cannot_create)?;
    tx.commit().await.map_err(cannot_create)?;
    drop(conn);
    let pool = PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(Duration::from_secs(30))
        // Every statement is planned for its parameters and the table as
        // it is: with cached generic plans, a lookup prepared while
        // `pillow_errors` was small was seen to pick the index on `pillow`
        // (every error of the pillow) over the unique index, and each
        // lookup then read the whole table.
        .connect_with(options.options([
            ("search_path", schema),
            ("plan_cache_mode", "force_custom_plan"),
        ]))
        .await
        .map_err(unreachable)?;
    migrator.run(&pool).await.map_err(|e| OpenError {
        outage: matches!(&e, sqlx::migrate::MigrateError::Execute(e) if super::is_outage(e)),
        message: format!("migration failed: {e}"),
    })?;
    Ok(pool)
}
