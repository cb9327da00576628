//! `pillowtop plugin new`: a working plugin to start from, in Rust, Python
//! or JavaScript: source, manifest, one golden fixture, the WIT contract
//! (Python, JavaScript) and a Makefile that builds the component.
//!
//! Every scaffold does the same thing, so the three read side by side: one
//! row per change into table `<name>_changes` (document id, domain,
//! document type), and nothing for a deletion.

use std::path::{Path, PathBuf};

/// The contract, embedded so a scaffold outside this repository has it.
const WIT: &str = include_str!("../../wit/processor.wit");

/// A plugin language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// Rust with `pillowtop-sdk` (wasm32-wasip2).
    Rust,
    /// Python with componentize-py.
    Python,
    /// JavaScript with componentize-js.
    Js,
}

/// Why a scaffold could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name cannot be a plugin, table and crate name.
    #[error(
        "plugin name {0:?} must start with a lowercase letter and use only lowercase letters, digits and '-' (at most 40 characters)"
    )]
    Name(String),
    /// The directory exists.
    #[error("{0} already exists; choose another name or --dir")]
    Exists(PathBuf),
    /// A Rust scaffold needs the SDK.
    #[error(
        "cannot find the Rust plugin SDK (plugins/sdk) above {0}; run from a pillowtop checkout or pass --sdk PATH"
    )]
    NoSdk(PathBuf),
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// File.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
}

fn valid_name(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The Rust SDK crate, searched upwards from `start`.
pub fn find_sdk(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|d| d.join("plugins/sdk"))
        .find(|d| d.join("Cargo.toml").is_file())
}

/// Write a new plugin `name` in `lang` into `dir` (which must not exist).
/// `sdk` is the Rust SDK's directory (Rust only). Returns the files written.
///
/// # Errors
///
/// See [`ScaffoldError`].
pub fn scaffold(
    name: &str,
    lang: Lang,
    dir: &Path,
    sdk: Option<&Path>,
) -> Result<Vec<PathBuf>, ScaffoldError> {
    if !valid_name(name) {
        return Err(ScaffoldError::Name(name.into()));
    }
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir.into()));
    }
    let snake = name.replace('-', "_");
    let table = format!("{snake}_changes");
    let component = match lang {
        Lang::Rust => format!("{snake}.wasm"),
        Lang::Python | Lang::Js => format!("{name}.wasm"),
    };
    let (fuel, memory_mb, fuel_note) = match lang {
        Lang::Rust => (
            "5_000_000",
            32,
            "compiled Rust needs tens of thousands per change",
        ),
        Lang::Python => (
            "200_000_000",
            64,
            "CPython interprets the plugin: millions per change",
        ),
        Lang::Js => (
            "200_000_000",
            64,
            "the JS engine interprets the plugin: millions per change",
        ),
    };
    let fill = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{snake}}", &snake)
            .replace("{{table}}", &table)
            .replace("{{component}}", &component)
            .replace("{{fuel}}", fuel)
            .replace("{{fuel_note}}", fuel_note)
            .replace("{{memory_mb}}", &memory_mb.to_string())
    };
    let mut files: Vec<(PathBuf, String)> = vec![
        (dir.join("plugin.toml"), fill(MANIFEST)),
        (
            dir.join("fixtures/01-one-row-per-change.json"),
            fill(FIXTURE),
        ),
        (
            dir.join("fixtures/02-deletion.json"),
            fill(FIXTURE_DELETION),
        ),
    ];
    match lang {
        Lang::Rust => {
            let sdk = sdk.ok_or_else(|| ScaffoldError::NoSdk(dir.into()))?;
            let sdk = std::path::absolute(sdk).unwrap_or_else(|_| sdk.into());
            files.push((
                dir.join("Cargo.toml"),
                fill(RUST_CARGO).replace("{{sdk}}", &sdk.display().to_string()),
            ));
            files.push((dir.join("src/lib.rs"), fill(RUST_LIB)));
            files.push((dir.join("Makefile"), fill(RUST_MAKEFILE)));
        }
        Lang::Python => {
            files.push((dir.join("app.py"), fill(PYTHON_APP)));
            files.push((dir.join("wit/processor.wit"), WIT.into()));
            files.push((dir.join("Makefile"), fill(PYTHON_MAKEFILE)));
        }
        Lang::Js => {
            files.push((dir.join("app.js"), fill(JS_APP)));
            files.push((dir.join("wit/processor.wit"), WIT.into()));
            files.push((dir.join("Makefile"), fill(JS_MAKEFILE)));
        }
    }
    for (path, text) in &files {
        let write = |source| ScaffoldError::Write {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(write)?;
        }
        std::fs::write(path, text).map_err(write)?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

const MANIFEST: &str = r#"# {{name}}: a pillowtop plugin. Check it with `pillowtop plugin check plugin.toml`.
name = "{{name}}"
version = "0.1.0"
# Built by `make` in this directory.
component = "{{component}}"
fixtures = "fixtures"

[limits]
# Fuel per change: {{fuel_note}}. `pillowtop plugin check`
# prints what each fixture used; keep at least 20x your largest real change.
fuel = {{fuel}}
memory_mb = {{memory_mb}}
timeout_ms = 1000

[subscription]
# Empty lists mean "all".
topics = []
document_types = []

[capabilities]
tables = ["{{table}}"]

[config]
# Handed to init as JSON.
"#;

const FIXTURE: &str = r#"{
  "description": "Each change becomes one row: document id, domain, document type.",
  "topic": "case-sql",
  "offset": 3,
  "change": {"document_id": "c1", "document_type": "CommCareCase", "domain": "demo", "document": {"_id": "c1"}},
  "expect": [{"upsert_rows": {"table": "{{table}}", "rows": [["c1", "demo", "CommCareCase"]]}}]
}
"#;

const FIXTURE_DELETION: &str = r#"{
  "description": "A deletion removes the document's rows.",
  "change": {"document_id": "c2", "document_type": "CommCareCase", "domain": "demo", "is_deletion": true},
  "expect": [{"delete_rows": {"table": "{{table}}", "doc_id": "c2"}}]
}
"#;

const RUST_CARGO: &str = r#"[package]
name = "{{name}}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
pillowtop-sdk = { path = "{{sdk}}" }

# Its own workspace, so it builds wherever it lives.
[workspace]

[profile.release]
opt-level = 3
codegen-units = 1
"#;

const RUST_LIB: &str = r#"//! {{name}}: one row per change into `{{table}}`.

#[cfg(target_arch = "wasm32")]
mod component {
    use pillowtop_sdk::types::{Value as Cell, *};

    struct Plugin;

    fn text_column(name: &str, nullable: bool) -> Column {
        Column {
            name: name.into(),
            kind: ColumnType::Text,
            nullable,
        }
    }

    impl pillowtop_sdk::Guest for Plugin {
        /// Declare what the plugin writes; `config` is the manifest's [config] as JSON.
        fn init(_config: String) -> Result<PluginInfo, String> {
            Ok(PluginInfo {
                tables: vec![TableSpec {
                    name: "{{table}}".into(),
                    columns: vec![
                        text_column("doc_id", false),
                        text_column("domain", true),
                        text_column("document_type", true),
                    ],
                    primary_key: vec!["doc_id".into()],
                    version_column: None,
                    definition: None,
                }],
                indices: vec![],
            })
        }

        /// Decide what follows from one change.
        fn process_change(change: Change) -> Result<Vec<Action>, ProcessError> {
            if change.is_deletion {
                return Ok(vec![Action::DeleteRows(DeleteRows {
                    table: "{{table}}".into(),
                    doc_id: change.id,
                })]);
            }
            let text = |v: Option<String>| v.map_or(Cell::Null, Cell::Text);
            Ok(vec![Action::UpsertRows(UpsertRows {
                table: "{{table}}".into(),
                rows: vec![vec![
                    Cell::Text(change.id),
                    text(change.domain),
                    text(change.document_type),
                ]],
            })])
        }
    }

    pillowtop_sdk::export!(Plugin);
}
"#;

const RUST_MAKEFILE: &str = r#"# Build the component next to plugin.toml.
{{component}}: Cargo.toml src/lib.rs
	rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
	cargo build --release --target wasm32-wasip2
	cp $${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/{{snake}}.wasm {{component}}
"#;

const PYTHON_APP: &str = r#""""{{name}}: one row per change into `{{table}}`."""

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

TABLE = "{{table}}"


def _text(value):
    return types.Value_Null() if value is None else types.Value_Text(value)


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> types.PluginInfo:
        """Declare what the plugin writes; `config` is the manifest's [config] as JSON.
        Raise Err("message") to refuse the config."""
        columns = [
            types.Column(name="doc_id", kind=types.ColumnType.TEXT, nullable=False),
            types.Column(name="domain", kind=types.ColumnType.TEXT, nullable=True),
            types.Column(name="document_type", kind=types.ColumnType.TEXT, nullable=True),
        ]
        table = types.TableSpec(name=TABLE, columns=columns, primary_key=["doc_id"], version_column=None, definition=None)
        return types.PluginInfo(tables=[table], indices=[])

    def process_change(self, change: types.Change):
        """Decide what follows from one change. Raise
        Err(types.ProcessError_Permanent("why")) for a change that can never
        succeed, Err(types.ProcessError_Retryable("why")) for one worth retrying."""
        if change.is_deletion:
            return [types.Action_DeleteRows(types.DeleteRows(table=TABLE, doc_id=change.id))]
        row = [types.Value_Text(change.id), _text(change.domain), _text(change.document_type)]
        return [types.Action_UpsertRows(types.UpsertRows(table=TABLE, rows=[row]))]
"#;

const PYTHON_MAKEFILE: &str = r#"# Build the component next to plugin.toml (needs: pip install componentize-py).
COMPONENTIZE_PY ?= componentize-py

{{component}}: app.py wit/processor.wit
	$(COMPONENTIZE_PY) -d wit -w processor componentize app -o {{component}}
"#;

const JS_APP: &str = r#"// {{name}}: one row per change into `{{table}}`.
//
// Return a value for `ok`; throw a plain value (not an Error) for `err`:
// a string from init, {tag: "permanent" | "retryable", val: "why"} from
// processChange. A thrown Error is a bug and traps.

const TABLE = "{{table}}";

const text = (v) => (v == null ? { tag: "null" } : { tag: "text", val: v });

// Declare what the plugin writes; `config` is the manifest's [config] as JSON.
export function init(config) {
  const column = (name, nullable) => ({ name, kind: "text", nullable });
  return {
    tables: [
      {
        name: TABLE,
        columns: [column("doc_id", false), column("domain", true), column("document_type", true)],
        primaryKey: ["doc_id"],
        versionColumn: null,
        definition: null,
      },
    ],
    indices: [],
  };
}

// Decide what follows from one change.
export function processChange(change) {
  if (change.isDeletion) {
    return [{ tag: "delete-rows", val: { table: TABLE, docId: change.id } }];
  }
  const row = [{ tag: "text", val: change.id }, text(change.domain), text(change.documentType)];
  return [{ tag: "upsert-rows", val: { table: TABLE, rows: [row] } }];
}
"#;

const JS_MAKEFILE: &str = r#"# Build the component next to plugin.toml
# (needs: npm install @bytecodealliance/componentize-js).
COMPONENTIZE_JS ?= npx componentize-js

{{component}}: app.js wit/processor.wit
	$(COMPONENTIZE_JS) app.js --wit wit --world-name processor -d http fetch-event -o {{component}}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_fit_plugin_table_and_crate_rules() {
        for good in ["a", "my-plugin", "ucr2"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "My", "9lives", "a_b", "a b", &"x".repeat(41)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn refuses_an_existing_directory_and_a_bad_name() {
        let dir = std::env::temp_dir();
        assert!(matches!(
            scaffold("ok", Lang::Python, &dir, None),
            Err(ScaffoldError::Exists(_))
        ));
        assert!(matches!(
            scaffold("Bad", Lang::Python, &dir.join("x"), None),
            Err(ScaffoldError::Name(_))
        ));
    }
}
