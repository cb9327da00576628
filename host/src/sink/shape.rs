//! Whether an existing table has the shape a plugin's table spec asks
//! for: one pure check that both SQL sinks run on what their database
//! reports (SQLite's `table_info`, PostgreSQL's `information_schema`).

use crate::action::{ColumnType, TableSpec};

/// A table as the database describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its columns, in order.
    pub columns: Vec<FoundColumn>,
    /// Its primary key columns, in key order.
    pub primary_key: Vec<String>,
}

/// One column as the database describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundColumn {
    /// Name.
    pub name: String,
    /// The database's type name (compared without regard to case).
    pub sql_type: String,
    /// Whether it accepts NULL.
    pub nullable: bool,
}

/// Check `found` against `spec`, where `sql_type` names the database type
/// each column type is stored as. The first difference is the error: a
/// missing column, another type, other nullability, an extra column, or
/// another primary key.
///
/// # Errors
///
/// What differs, naming the column.
pub fn check(
    spec: &TableSpec,
    found: &Found,
    sql_type: fn(ColumnType) -> &'static str,
) -> Result<(), String> {
    for c in &spec.columns {
        let Some(f) = found.columns.iter().find(|f| f.name == c.name) else {
            return Err(format!("column {:?} is missing", c.name));
        };
        let want = sql_type(c.kind);
        if !f.sql_type.eq_ignore_ascii_case(want) {
            return Err(format!(
                "column {:?} is {}, the spec needs {want} ({})",
                c.name,
                f.sql_type,
                c.kind.as_str()
            ));
        }
        if f.nullable != c.nullable {
            let says = |nullable| if nullable { "nullable" } else { "NOT NULL" };
            return Err(format!(
                "column {:?} is {}, the spec says {}",
                c.name,
                says(f.nullable),
                says(c.nullable)
            ));
        }
    }
    if let Some(extra) = found
        .columns
        .iter()
        .find(|f| !spec.columns.iter().any(|c| c.name == f.name))
    {
        return Err(format!("column {:?} is not in the spec", extra.name));
    }
    if found.primary_key != spec.primary_key {
        return Err(format!(
            "primary key is {:?}, the spec says {:?}",
            found.primary_key, spec.primary_key
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Column;

    fn sql_type(kind: ColumnType) -> &'static str {
        match kind {
            ColumnType::Integer => "bigint",
            _ => "text",
        }
    }

    fn spec() -> TableSpec {
        TableSpec {
            name: "t".into(),
            columns: vec![
                Column::new("doc_id", ColumnType::Text, false),
                Column::new("n", ColumnType::Integer, true),
            ],
            primary_key: vec!["doc_id".into()],
            version_column: None,
            definition: None,
        }
    }

    fn found() -> Found {
        let col = |name: &str, sql_type: &str, nullable| FoundColumn {
            name: name.into(),
            sql_type: sql_type.into(),
            nullable,
        };
        Found {
            columns: vec![col("doc_id", "TEXT", false), col("n", "bigint", true)],
            primary_key: vec!["doc_id".into()],
        }
    }

    #[test]
    fn a_table_of_the_same_shape_matches_whatever_the_case_of_its_types() {
        assert_eq!(check(&spec(), &found(), sql_type), Ok(()));
    }

    #[test]
    fn each_difference_names_its_column() {
        type Edit = Box<dyn Fn(&mut Found)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|f| {
                    f.columns.remove(1);
                }),
                "column \"n\" is missing",
            ),
            (
                Box::new(|f| f.columns[1].sql_type = "text".into()),
                "column \"n\" is text, the spec needs bigint (integer)",
            ),
            (
                Box::new(|f| f.columns[1].nullable = false),
                "column \"n\" is NOT NULL, the spec says nullable",
            ),
            (
                Box::new(|f| f.columns[0].nullable = true),
                "column \"doc_id\" is nullable, the spec says NOT NULL",
            ),
            (
                Box::new(|f| {
                    let mut extra = f.columns[1].clone();
                    extra.name = "extra".into();
                    f.columns.push(extra);
                }),
                "column \"extra\" is not in the spec",
            ),
            (
                Box::new(|f| f.primary_key = vec!["doc_id".into(), "n".into()]),
                "primary key is [\"doc_id\", \"n\"], the spec says [\"doc_id\"]",
            ),
        ];
        for (change, expected) in cases {
            let mut f = found();
            change(&mut f);
            assert_eq!(check(&spec(), &f, sql_type), Err(expected.to_owned()));
        }
    }
}
