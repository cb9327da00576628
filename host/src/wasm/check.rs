//! Contract checks on what a plugin declares and returns.
//!
//! The canonical ABI guarantees the shapes; these checks cover the rest:
//! names, capabilities, JSON validity and row types. A plugin that fails
//! them gets a precise error for that change (or, at load, for the plugin).

use crate::action::{Action, Cell, ColumnType, PluginInfo, TableSpec};
use crate::errors::ErrorKind;
use crate::manifest::Manifest;
use pillowtop_sdk::json;
use std::collections::{HashMap, HashSet};

/// A failed check: the error kind and what exactly is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckError {
    /// `capability` or `malformed`.
    pub kind: ErrorKind,
    /// What is wrong.
    pub message: String,
}

fn malformed(message: String) -> CheckError {
    CheckError {
        kind: ErrorKind::Malformed,
        message,
    }
}

/// Longest document id accepted (Elasticsearch's limit is 512 bytes).
/// Row `doc_id`s and primary-key text values are held to it too: they are
/// document ids, and PostgreSQL refuses btree keys over about 2.7 KB.
pub const MAX_ID_BYTES: usize = 512;

/// Most columns a declared table may have: PostgreSQL's limit (SQLite's is
/// 2000), so a table that passes `init` can be created in either store.
pub const MAX_COLUMNS: usize = 1600;

/// Longest table name: PostgreSQL names are at most 63 bytes, and each
/// table gets an index named `<table>_doc_id`.
pub const MAX_TABLE_NAME_BYTES: usize = 56;

/// Longest index name: without Elasticsearch an index is stored as the
/// table `doc_<index>`, which must fit PostgreSQL's 63 bytes.
pub const MAX_INDEX_NAME_BYTES: usize = 59;

/// The store's own tables (and the embedded feed's). A plugin may not
/// declare them: its rows would land in the host's bookkeeping.
pub const RESERVED_TABLES: [&str; 8] = [
    "checkpoints",
    "pillow_errors",
    "processes",
    "plugin_events",
    "sink_indices",
    "sink_tables",
    "topics",
    "messages",
];

/// Table name prefixes that are not the plugin's: `doc_` holds a declared
/// index's documents in an SQL store; `sqlite_` and `pg_` are the
/// databases' own.
pub const RESERVED_TABLE_PREFIXES: [&str; 3] = ["doc_", "sqlite_", "pg_"];

fn reserved(table: &str) -> bool {
    RESERVED_TABLES.contains(&table) || RESERVED_TABLE_PREFIXES.iter().any(|p| table.starts_with(p))
}

/// What a plugin may write, from its validated `init` output.
#[derive(Debug, Clone, Default)]
pub struct Declared {
    /// Tables by name.
    pub tables: HashMap<String, TableSpec>,
    /// Index names.
    pub indices: HashSet<String>,
}

/// 1 to `max` bytes, the first passing `first`, every one a-z, 0-9, `_`
/// or (with `dash`) `-`: the rule of every name a plugin declares.
fn valid_name(s: &str, max: usize, first: fn(&u8) -> bool, dash: bool) -> bool {
    s.as_bytes().first().is_some_and(first)
        && s.len() <= max
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || (dash && b == b'-')
        })
}

/// A column name: a-z, 0-9 and `_`, starting with a letter.
fn valid_column_name(s: &str) -> bool {
    valid_name(s, 63, u8::is_ascii_lowercase, false)
}

/// A table name: a column name's rules, and `-` after the first byte
/// (CommCare's UCR tables carry the domain, which may hold one; every
/// statement quotes table names).
fn valid_table_name(s: &str) -> bool {
    valid_name(s, MAX_TABLE_NAME_BYTES, u8::is_ascii_lowercase, true)
}

/// Whether `capabilities.tables` grants `name`: listed as it is, or under
/// an entry `prefix*` (a plugin that names its tables from its config,
/// such as UCR, is granted them by prefix).
pub fn table_granted(granted: &[String], name: &str) -> bool {
    granted.iter().any(|g| match g.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => g == name,
    })
}

/// An index name: a-z, 0-9, `_` and `-`, starting with a letter or digit.
fn valid_index_name(s: &str) -> bool {
    valid_name(
        s,
        MAX_INDEX_NAME_BYTES,
        |b| b.is_ascii_lowercase() || b.is_ascii_digit(),
        true,
    )
}

/// Validate `init`'s declaration against the manifest.
///
/// # Errors
///
/// Returns the first problem, naming the table/index and the manifest key to change.
pub fn check_info(info: &PluginInfo, manifest: &Manifest) -> Result<Declared, String> {
    let mut declared = Declared::default();
    for index in &info.indices {
        if !valid_index_name(&index.name) {
            return Err(format!(
                "init declared index {:?}: index names use a-z, 0-9, '-' and '_', start with a letter or digit, at most {MAX_INDEX_NAME_BYTES} bytes",
                index.name
            ));
        }
        if !manifest.capabilities.indices.contains(&index.name) {
            return Err(format!(
                "init declared index {:?}, which the manifest does not grant; add it to capabilities.indices in {}",
                index.name,
                manifest.path.display()
            ));
        }
        match serde_json::from_str::<serde_json::Value>(&index.mappings) {
            Ok(serde_json::Value::Object(_)) => {}
            _ => {
                return Err(format!(
                    "init declared index {:?} with mappings that are not a JSON object",
                    index.name
                ));
            }
        }
        if !declared.indices.insert(index.name.clone()) {
            return Err(format!("init declared index {:?} twice", index.name));
        }
    }
    // Aliases are names readers use: granted like indices, and never the
    // name of an index (Elasticsearch refuses an alias named like one).
    let mut aliases = HashSet::new();
    for index in &info.indices {
        for alias in &index.aliases {
            if !valid_index_name(alias) {
                return Err(format!(
                    "init declared alias {alias:?} of index {:?}: alias names follow the index name rules (a-z, 0-9, '-' and '_', at most {MAX_INDEX_NAME_BYTES} bytes)",
                    index.name
                ));
            }
            if !manifest.capabilities.indices.contains(alias) {
                return Err(format!(
                    "init declared alias {alias:?} of index {:?}, which the manifest does not grant; add it to capabilities.indices in {}",
                    index.name,
                    manifest.path.display()
                ));
            }
            if declared.indices.contains(alias) || !aliases.insert(alias.clone()) {
                return Err(format!(
                    "init declared alias {alias:?} twice or also as an index name; an alias names exactly one index"
                ));
            }
        }
    }
    for table in &info.tables {
        let name = &table.name;
        if !valid_table_name(name) {
            return Err(format!(
                "init declared table {name:?}: table names use a-z, 0-9, '_' and '-', start with a letter, at most {MAX_TABLE_NAME_BYTES} bytes"
            ));
        }
        if reserved(name) {
            return Err(format!(
                "init declared table {name:?}, a name the host keeps for itself; reserved: {} and names starting with {}; rename the table",
                RESERVED_TABLES.join(", "),
                RESERVED_TABLE_PREFIXES.join(", ")
            ));
        }
        if table.columns.len() > MAX_COLUMNS {
            return Err(format!(
                "table {name:?} declares {} columns; at most {MAX_COLUMNS} fit a table in every store (PostgreSQL's limit); split it into several tables",
                table.columns.len()
            ));
        }
        if !table_granted(&manifest.capabilities.tables, name) {
            return Err(format!(
                "init declared table {name:?}, which the manifest does not grant; add it to capabilities.tables (or a prefix grant such as {:?}) in {}",
                format!("{}*", &name[..name.find('_').map_or(name.len(), |i| i + 1)]),
                manifest.path.display()
            ));
        }
        let mut columns = HashSet::new();
        for c in &table.columns {
            if !valid_column_name(&c.name) {
                return Err(format!(
                    "table {name:?}: column {:?} must use a-z, 0-9 and '_', start with a letter, at most 63 bytes",
                    c.name
                ));
            }
            if !columns.insert(c.name.as_str()) {
                return Err(format!("table {name:?}: column {:?} appears twice", c.name));
            }
        }
        match table.columns.iter().find(|c| c.name == "doc_id") {
            Some(c) if c.kind == ColumnType::Text && !c.nullable => {}
            _ => {
                return Err(format!(
                    "table {name:?} needs a non-nullable text column `doc_id` linking rows to their document"
                ));
            }
        }
        if table.primary_key.is_empty() {
            return Err(format!(
                "table {name:?} declares no primary key; upserts need one (e.g. [\"doc_id\"])"
            ));
        }
        for k in &table.primary_key {
            match table.columns.iter().find(|c| &c.name == k) {
                None => {
                    return Err(format!(
                        "table {name:?}: primary key column {k:?} is not among its columns"
                    ));
                }
                Some(c) if c.nullable => {
                    return Err(format!(
                        "table {name:?}: primary key column {k:?} must not be nullable"
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some(v) = &table.version_column {
            if !table.columns.iter().any(|c| &c.name == v) {
                return Err(format!(
                    "table {name:?}: version column {v:?} is not among its columns"
                ));
            }
            if table.primary_key.contains(v) {
                return Err(format!(
                    "table {name:?}: version column {v:?} is in the primary key; a version orders rows of one key"
                ));
            }
        }
        if declared
            .tables
            .insert(name.clone(), table.clone())
            .is_some()
        {
            return Err(format!("init declared table {name:?} twice"));
        }
    }
    Ok(declared)
}

fn check_id(what: &str, id: &str) -> Result<(), CheckError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(malformed(format!(
            "{what} id must be 1..={MAX_ID_BYTES} bytes, got {} bytes",
            id.len()
        )));
    }
    Ok(())
}

fn check_index(declared: &Declared, index: &str) -> Result<(), CheckError> {
    if declared.indices.contains(index) {
        Ok(())
    } else {
        Err(CheckError {
            kind: ErrorKind::Capability,
            message: format!(
                "action targets index {index:?}, which init did not declare (declared: {:?})",
                sorted(&declared.indices)
            ),
        })
    }
}

fn table<'a>(declared: &'a Declared, table: &str) -> Result<&'a TableSpec, CheckError> {
    declared.tables.get(table).ok_or_else(|| CheckError {
        kind: ErrorKind::Capability,
        message: format!(
            "action targets table {table:?}, which init did not declare (declared: {:?})",
            sorted(declared.tables.keys())
        ),
    })
}

fn sorted<'a>(names: impl IntoIterator<Item = &'a String>) -> Vec<&'a str> {
    let mut v: Vec<_> = names.into_iter().map(String::as_str).collect();
    v.sort();
    v
}

/// Check every action a plugin returned for one change.
///
/// # Errors
///
/// The first action that is outside the declaration (`capability`) or
/// malformed (`malformed`), by position.
pub fn check_actions(declared: &Declared, actions: &[Action]) -> Result<(), CheckError> {
    for (i, action) in actions.iter().enumerate() {
        let at = |e: CheckError| CheckError {
            kind: e.kind,
            message: format!("action {i} ({}): {}", action.kind(), e.message),
        };
        match action {
            Action::IndexDocument {
                index,
                id,
                document,
            }
            | Action::CreateDocument {
                index,
                id,
                document,
            } => {
                check_index(declared, index).map_err(at)?;
                check_id("document", id).map_err(at)?;
                // A document goes verbatim into a bulk request body, so it
                // must be one JSON value; the SDK's validator checks it in one
                // pass that builds nothing.
                match json::validate(document) {
                    Ok(json::Kind::Object) => {}
                    Ok(_) => {
                        return Err(at(malformed(format!(
                            "document {id:?} is not a JSON object"
                        ))));
                    }
                    Err(e) => {
                        return Err(at(malformed(format!(
                            "document {id:?} is not a JSON object: {e}"
                        ))));
                    }
                }
            }
            Action::DeleteDocument { index, id } => {
                check_index(declared, index).map_err(at)?;
                check_id("document", id).map_err(at)?;
            }
            Action::UpsertRows { table: name, rows } => {
                let spec = table(declared, name).map_err(at)?;
                for (r, row) in rows.iter().enumerate() {
                    check_row(spec, row).map_err(|m| at(malformed(format!("row {r}: {m}"))))?;
                }
            }
            Action::DeleteRows {
                table: name,
                doc_id,
            } => {
                table(declared, name).map_err(at)?;
                check_id("doc", doc_id).map_err(at)?;
            }
        }
    }
    Ok(())
}

fn check_row(spec: &TableSpec, row: &[Cell]) -> Result<(), String> {
    if row.len() != spec.columns.len() {
        return Err(format!(
            "has {} values but table {:?} has {} columns",
            row.len(),
            spec.name,
            spec.columns.len()
        ));
    }
    for (cell, col) in row.iter().zip(&spec.columns) {
        if let Cell::Text(t) = cell
            && t.len() > MAX_ID_BYTES
            && (col.name == "doc_id" || spec.primary_key.contains(&col.name))
        {
            return Err(format!(
                "column {:?} is part of the key, and its value is {} bytes; key values are at most {MAX_ID_BYTES} bytes, as document ids are",
                col.name,
                t.len()
            ));
        }
        let ok = match (cell, col.kind) {
            (Cell::Null, _) => col.nullable,
            (Cell::Boolean(_), ColumnType::Boolean) => true,
            (Cell::Integer(_), ColumnType::Integer) => true,
            (Cell::Float(f), ColumnType::Float) => f.is_finite(),
            (Cell::Integer(_), ColumnType::Float) => true,
            (Cell::Text(t), ColumnType::Json) => json::validate(t).is_ok(),
            (Cell::Text(t), ColumnType::Date) => is_date(t),
            (Cell::Text(t), ColumnType::Timestamp) => crate::time::parse_rfc3339_ms(t).is_some(),
            (Cell::Text(_), ColumnType::Text) => true,
            _ => false,
        };
        if !ok {
            return Err(format!(
                "column {:?} ({}{}) cannot hold {}",
                col.name,
                col.kind.as_str(),
                if col.nullable { ", nullable" } else { "" },
                describe(cell)
            ));
        }
    }
    Ok(())
}

fn is_date(s: &str) -> bool {
    s.len() == 10 && crate::time::parse_rfc3339_ms(&format!("{s}T00:00:00Z")).is_some()
}

fn describe(cell: &Cell) -> String {
    match cell {
        Cell::Null => "null".into(),
        Cell::Boolean(b) => format!("boolean {b}"),
        Cell::Integer(i) => format!("integer {i}"),
        Cell::Float(f) => format!("float {f}"),
        Cell::Text(t) => format!("text {:?}", crate::wasm::check::short(t)),
    }
}

/// At most 40 characters of `s`, for error messages.
pub fn short(s: &str) -> String {
    clip(s, 40)
}

/// At most `n` characters of `s`, with `…` when cut.
pub fn clip(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::{Column, IndexSpec};
    use std::path::Path;

    fn manifest() -> Manifest {
        Manifest::parse(
            "name = \"p\"\nversion = \"1\"\ncomponent = \"p.wasm\"\n[capabilities]\nindices = [\"docs\"]\ntables = [\"rows\"]",
            Path::new("p/plugin.toml"),
        )
        .unwrap()
    }

    fn rows_spec() -> TableSpec {
        TableSpec {
            name: "rows".into(),
            columns: vec![
                Column::new("doc_id", ColumnType::Text, false),
                Column::new("n", ColumnType::Integer, true),
                Column::new("day", ColumnType::Date, true),
            ],
            primary_key: vec!["doc_id".into()],
            version_column: None,
            definition: None,
        }
    }

    fn info() -> PluginInfo {
        PluginInfo {
            tables: vec![rows_spec()],
            indices: vec![IndexSpec {
                name: "docs".into(),
                mappings: "{}".into(),
                aliases: vec![],
            }],
        }
    }

    #[test]
    fn aliases_must_be_granted_and_distinct() {
        let granted = Manifest::parse(
            "name = \"p\"\nversion = \"1\"\ncomponent = \"p.wasm\"\n[capabilities]\nindices = [\"docs\", \"docs_read\"]\ntables = [\"rows\"]",
            Path::new("p/plugin.toml"),
        )
        .unwrap();
        let mut i = info();
        i.indices[0].aliases = vec!["docs_read".into()];
        assert!(check_info(&i, &granted).is_ok());
        assert!(
            check_info(&i, &manifest()).unwrap_err().contains(
                "alias \"docs_read\" of index \"docs\", which the manifest does not grant"
            )
        );
        i.indices[0].aliases = vec!["docs".into()];
        assert!(
            check_info(&i, &granted)
                .unwrap_err()
                .contains("also as an index name")
        );
        i.indices[0].aliases = vec!["Docs".into()];
        assert!(
            check_info(&i, &granted)
                .unwrap_err()
                .contains("alias names follow")
        );
    }

    #[test]
    fn declarations_must_be_granted_and_well_formed() {
        assert!(check_info(&info(), &manifest()).is_ok());
        let mut i = info();
        i.indices[0].name = "other".into();
        assert!(
            check_info(&i, &manifest())
                .unwrap_err()
                .contains("add it to capabilities.indices in p/plugin.toml")
        );
        let mut i = info();
        i.tables[0].columns.remove(0);
        i.tables[0].primary_key = vec!["n".into()];
        assert!(
            check_info(&i, &manifest())
                .unwrap_err()
                .contains("`doc_id`")
        );
        let mut i = info();
        i.tables[0].primary_key = vec!["n".into()];
        assert!(
            check_info(&i, &manifest())
                .unwrap_err()
                .contains("must not be nullable")
        );
        let mut i = info();
        i.tables[0].version_column = Some("modified".into());
        assert!(
            check_info(&i, &manifest())
                .unwrap_err()
                .contains("version column \"modified\" is not among its columns")
        );
        i.tables[0].version_column = Some("doc_id".into());
        assert!(
            check_info(&i, &manifest())
                .unwrap_err()
                .contains("is in the primary key")
        );
        let mut i = info();
        i.indices[0].mappings = "[1]".into();
        assert!(
            check_info(&i, &manifest())
                .unwrap_err()
                .contains("not a JSON object")
        );
    }

    #[test]
    fn tables_are_granted_by_name_or_by_prefix() {
        let granted = |list: &str| {
            Manifest::parse(
                &format!(
                    "name = \"p\"\nversion = \"1\"\ncomponent = \"p.wasm\"\n[capabilities]\nindices = [\"docs\"]\ntables = [{list}]"
                ),
                Path::new("p/plugin.toml"),
            )
            .unwrap()
        };
        let named = |name: &str| {
            let mut i = info();
            i.tables[0].name = name.into();
            i
        };
        let ucr = granted("\"ucr_*\"");
        assert!(check_info(&named("ucr_demo-3_cases_53ec8c11"), &ucr).is_ok());
        // The refusal suggests a prefix grant from the name's first word.
        let err = check_info(&named("case_rows"), &ucr).unwrap_err();
        assert!(
            err.contains("does not grant") && err.contains("\"case_*\""),
            "{err}"
        );
        // A prefix grant does not reach the host's own tables.
        let err = check_info(&named("checkpoints"), &granted("\"*\"")).unwrap_err();
        assert!(err.contains("a name the host keeps for itself"), "{err}");
        for bad in ["-ucr", "ucr_Demo", "ucr demo"] {
            let err = check_info(&named(bad), &granted("\"*\"")).unwrap_err();
            assert!(err.contains("a-z, 0-9, '_' and '-'"), "{bad}: {err}");
        }
    }

    #[test]
    fn declarations_must_fit_every_store() {
        let granted = |tables: &[&str]| {
            let list: Vec<String> = tables.iter().map(|t| format!("{t:?}")).collect();
            Manifest::parse(
                &format!(
                    "name = \"p\"\nversion = \"1\"\ncomponent = \"p.wasm\"\n[capabilities]\nindices = [\"docs\"]\ntables = [{}]",
                    list.join(", ")
                ),
                Path::new("p/plugin.toml"),
            )
            .unwrap()
        };
        for name in [
            "checkpoints",
            "pillow_errors",
            "processes",
            "doc_docs",
            "sqlite_master",
            "pg_class",
        ] {
            let mut i = info();
            i.tables[0].name = name.into();
            let err = check_info(&i, &granted(&[name])).unwrap_err();
            assert!(
                err.contains("a name the host keeps for itself"),
                "{name}: {err}"
            );
            assert!(
                err.contains("checkpoints, pillow_errors"),
                "names the reserved set: {err}"
            );
            assert!(err.contains("doc_, sqlite_, pg_"), "{err}");
        }
        // Wider than PostgreSQL allows: refused at init, not at the first write.
        let mut i = info();
        for n in 0..MAX_COLUMNS {
            i.tables[0].columns.push(Column {
                name: format!("c{n}"),
                kind: ColumnType::Integer,
                nullable: true,
            });
        }
        let err = check_info(&i, &manifest()).unwrap_err();
        assert!(err.contains("declares 1603 columns; at most 1600"), "{err}");
        i.tables[0].columns.truncate(MAX_COLUMNS);
        assert!(check_info(&i, &manifest()).is_ok(), "1600 columns fit");
        // Names whose derived identifiers would not fit 63 bytes.
        let long_table = "t".repeat(MAX_TABLE_NAME_BYTES + 1);
        let mut i = info();
        i.tables[0].name = long_table.clone();
        let err = check_info(&i, &granted(&[&long_table])).unwrap_err();
        assert!(err.contains("at most 56 bytes"), "{err}");
        let mut i = info();
        i.indices[0].name = "i".repeat(MAX_INDEX_NAME_BYTES + 1);
        let err = check_info(&i, &manifest()).unwrap_err();
        assert!(err.contains("at most 59 bytes"), "{err}");
    }

    #[test]
    fn key_values_are_held_to_the_id_limit() {
        let d = check_info(&info(), &manifest()).unwrap();
        let row = |doc_id: String| Action::UpsertRows {
            table: "rows".into(),
            rows: vec![vec![Cell::Text(doc_id), Cell::Null, Cell::Null]],
        };
        assert_eq!(check_actions(&d, &[row("a".repeat(MAX_ID_BYTES))]), Ok(()));
        let err = check_actions(&d, &[row("a".repeat(MAX_ID_BYTES + 1))]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Malformed);
        assert!(
            err.message
                .contains("column \"doc_id\" is part of the key, and its value is 513 bytes"),
            "{}",
            err.message
        );
    }

    #[test]
    fn actions_are_checked_against_the_declaration() {
        let d = check_info(&info(), &manifest()).unwrap();
        let ok = vec![
            Action::IndexDocument {
                index: "docs".into(),
                id: "a".into(),
                document: r#"{"x":1}"#.into(),
            },
            Action::DeleteDocument {
                index: "docs".into(),
                id: "a".into(),
            },
            Action::UpsertRows {
                table: "rows".into(),
                rows: vec![vec![
                    Cell::Text("a".into()),
                    Cell::Null,
                    Cell::Text("2026-11-22".into()),
                ]],
            },
            Action::DeleteRows {
                table: "rows".into(),
                doc_id: "a".into(),
            },
        ];
        assert_eq!(check_actions(&d, &ok), Ok(()));

        let cases = [
            (
                Action::IndexDocument {
                    index: "nope".into(),
                    id: "a".into(),
                    document: "{}".into(),
                },
                ErrorKind::Capability,
                "index \"nope\"",
            ),
            (
                Action::UpsertRows {
                    table: "secret".into(),
                    rows: vec![],
                },
                ErrorKind::Capability,
                "table \"secret\"",
            ),
            (
                Action::IndexDocument {
                    index: "docs".into(),
                    id: "a".into(),
                    document: "{\"a\":".into(),
                },
                ErrorKind::Malformed,
                "not a JSON object",
            ),
            (
                Action::IndexDocument {
                    index: "docs".into(),
                    id: "a".into(),
                    document: "[1]".into(),
                },
                ErrorKind::Malformed,
                "not a JSON object",
            ),
            (
                Action::IndexDocument {
                    index: "docs".into(),
                    id: "".into(),
                    document: "{}".into(),
                },
                ErrorKind::Malformed,
                "id must be",
            ),
            (
                Action::UpsertRows {
                    table: "rows".into(),
                    rows: vec![vec![Cell::Integer(1)]],
                },
                ErrorKind::Malformed,
                "has 1 values but table \"rows\" has 3",
            ),
            (
                Action::UpsertRows {
                    table: "rows".into(),
                    rows: vec![vec![Cell::Null, Cell::Null, Cell::Null]],
                },
                ErrorKind::Malformed,
                "column \"doc_id\" (text) cannot hold null",
            ),
            (
                Action::UpsertRows {
                    table: "rows".into(),
                    rows: vec![vec![
                        Cell::Text("a".into()),
                        Cell::Null,
                        Cell::Text("22/11/2026".into()),
                    ]],
                },
                ErrorKind::Malformed,
                "column \"day\" (date, nullable)",
            ),
        ];
        for (action, kind, needle) in cases {
            let err = check_actions(&d, &[ok[0].clone(), action]).unwrap_err();
            assert_eq!(err.kind, kind, "{}", err.message);
            assert!(err.message.starts_with("action 1 ("), "{}", err.message);
            assert!(
                err.message.contains(needle),
                "{needle:?} not in {}",
                err.message
            );
        }
    }
}
