//! Operator queries over pillow errors (`pillowtop errors ...`): list with
//! filters and counts, show one, re-queue, purge resolved records.

use super::sql::{COLUMNS, Row};
use super::{ErrorKind, ErrorState, PillowError};
use crate::db::{Db, on_db};

/// Which errors a list, a count or a re-queue covers (every filter given
/// must match).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Pillow.
    pub pillow: Option<String>,
    /// Processor (plugin name).
    pub processor: Option<String>,
    /// Domain.
    pub domain: Option<String>,
    /// Kind.
    pub kind: Option<ErrorKind>,
    /// State.
    pub state: Option<ErrorState>,
}

impl Filter {
    /// `WHERE ...` with `$N` placeholders from `$first` on, and the values
    /// to bind in order.
    fn clause(&self, first: usize) -> (String, Vec<String>) {
        let mut terms = Vec::new();
        let mut values = Vec::new();
        let mut add = |column: &str, value: Option<&str>| {
            if let Some(v) = value {
                values.push(v.to_owned());
                terms.push(format!("{column} = ${}", first + values.len() - 1));
            }
        };
        add("pillow", self.pillow.as_deref());
        add("processor", self.processor.as_deref());
        add("domain", self.domain.as_deref());
        add("kind", self.kind.map(ErrorKind::as_str));
        add("state", self.state.map(ErrorState::as_str));
        if terms.is_empty() {
            ("TRUE".into(), values)
        } else {
            (terms.join(" AND "), values)
        }
    }
}

/// Error counts by a column, for the top of a list.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Errors matching the filter.
    pub total: u64,
    /// By state.
    pub by_state: Vec<(String, u64)>,
    /// By kind.
    pub by_kind: Vec<(String, u64)>,
    /// By domain (`-` for none), most first.
    pub by_domain: Vec<(String, u64)>,
}

/// The errors `filter` matches, newest first, at most `limit`.
///
/// # Errors
///
/// When the database fails, or holds a kind this version does not know.
pub async fn list(db: &Db, filter: &Filter, limit: u32) -> Result<Vec<PillowError>, sqlx::Error> {
    let (clause, values) = filter.clause(1);
    let sql = format!(
        "SELECT {COLUMNS} FROM pillow_errors WHERE {clause} ORDER BY last_attempt_ms DESC, id DESC LIMIT {limit}"
    );
    let rows: Vec<Row> = on_db!(db, pool => {
        let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
        for v in &values {
            q = q.bind(v);
        }
        q.fetch_all(pool).await?
    });
    rows.into_iter().map(PillowError::try_from).collect()
}

/// Counts of the errors `filter` matches, by state, kind and domain.
///
/// # Errors
///
/// When the database fails.
pub async fn counts(db: &Db, filter: &Filter) -> Result<Counts, sqlx::Error> {
    let mut counts = Counts::default();
    for (column, out) in [
        ("state", &mut counts.by_state),
        ("kind", &mut counts.by_kind),
        ("COALESCE(domain, '-')", &mut counts.by_domain),
    ] {
        let (clause, values) = filter.clause(1);
        let sql = format!(
            "SELECT {column}, COUNT(*) FROM pillow_errors WHERE {clause} GROUP BY {column} ORDER BY COUNT(*) DESC, {column}"
        );
        let rows: Vec<(String, i64)> = on_db!(db, pool => {
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
            for v in &values {
                q = q.bind(v);
            }
            q.fetch_all(pool).await?
        });
        *out = rows.into_iter().map(|(k, n)| (k, n as u64)).collect();
    }
    counts.total = counts.by_state.iter().map(|(_, n)| n).sum();
    Ok(counts)
}

/// One error by id.
///
/// # Errors
///
/// When the database fails, or holds a kind this version does not know.
pub async fn get(db: &Db, id: i64) -> Result<Option<PillowError>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM pillow_errors WHERE id = $1");
    let row: Option<Row> = on_db!(db, pool => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?
    });
    row.map(PillowError::try_from).transpose()
}

/// Which errors a re-queue covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requeue {
    /// One error.
    Id(i64),
    /// Every open (pending or parked) error `filter` matches (its state
    /// filter, when given, must be pending or parked).
    All(Filter),
}

/// Re-queue errors now, as CommCare's reset does: the current series
/// starts over (its count goes back to 0) and the next attempt is
/// `now_ms`, while the total keeps counting. Resolved errors are left
/// alone (their change is stale: a newer one passed). Returns how many
/// were re-queued.
///
/// # Errors
///
/// When the database fails.
pub async fn requeue(db: &Db, which: &Requeue, now_ms: i64) -> Result<u64, sqlx::Error> {
    let (clause, values) = match which {
        Requeue::Id(_) => ("id = $2".to_owned(), Vec::new()),
        Requeue::All(filter) => filter.clause(2),
    };
    let sql = format!(
        "UPDATE pillow_errors SET series_attempts = 0, next_attempt_ms = $1, state = 'pending'
         WHERE state <> 'resolved' AND {clause}"
    );
    Ok(on_db!(db, pool => {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now_ms);
        if let Requeue::Id(id) = which {
            q = q.bind(*id);
        }
        for v in &values {
            q = q.bind(v);
        }
        q.execute(pool).await?.rows_affected()
    }))
}

/// Delete resolved errors resolved before `before_ms`; how many.
///
/// # Errors
///
/// When the database fails.
pub async fn purge_resolved(db: &Db, before_ms: i64) -> Result<u64, sqlx::Error> {
    Ok(on_db!(db, pool => {
        sqlx::query("DELETE FROM pillow_errors WHERE state = 'resolved' AND resolved_at_ms < $1")
            .bind(before_ms)
            .execute(pool)
            .await?
            .rows_affected()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_binds_what_it_names_in_order() {
        let f = Filter {
            pillow: Some("cases".into()),
            kind: Some(ErrorKind::Trap),
            state: Some(ErrorState::Parked),
            ..Filter::default()
        };
        let (clause, values) = f.clause(2);
        assert_eq!(clause, "pillow = $2 AND kind = $3 AND state = $4");
        assert_eq!(values, vec!["cases", "trap", "parked"]);
        assert_eq!(Filter::default().clause(1), ("TRUE".into(), vec![]));
    }
}
