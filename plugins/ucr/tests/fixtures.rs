//! The plugin's golden fixtures, run natively through the same evaluator
//! the component uses: quick feedback while writing a data source. `make
//! test` also runs them through the Wasm component (`plugin check`).

use serde_json::{Value, json};
use std::path::Path;
use ucr::eval::EvalError;
use ucr::indicator::Cell;
use ucr::processor::{ChangeView, Processor, TableAction};

/// The `[config]` the host builds from plugin.toml: its `[config]` plus
/// every data source file of `data_sources/`, sorted by name.
fn config() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(dir.join("data_sources"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let sources: Vec<Value> = files
        .iter()
        .map(|p| {
            let spec: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            json!({"file": format!("data_sources/{}", p.file_name().unwrap().to_string_lossy()), "spec": spec})
        })
        .collect();
    json!({"table_prefix": "ucr_", "related_docs": {"CommCareCase": "cases"}, "data_sources": sources}).to_string()
}

fn cell(c: &Cell) -> Value {
    match c {
        Cell::Null => Value::Null,
        Cell::Bool(b) => json!(b),
        Cell::Int(i) => json!(i),
        Cell::Float(f) => json!(f),
        Cell::Text(t) => json!(t),
    }
}

fn action(a: &TableAction) -> Value {
    match a {
        TableAction::DeleteRows { table, doc_id } => {
            json!({"delete_rows": {"table": table, "doc_id": doc_id}})
        }
        TableAction::UpsertRows { table, rows } => json!({"upsert_rows": {
            "table": table,
            "rows": rows.iter().map(|r| r.iter().map(cell).collect::<Vec<_>>()).collect::<Vec<_>>()
        }}),
    }
}

#[test]
fn every_fixture_gives_its_expected_actions() {
    let processor = Processor::from_config(&config()).expect("the shipped data sources parse");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    assert!(paths.len() >= 13, "fixtures missing");
    for path in paths {
        let fixture: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let change = &fixture["change"];
        let document = change.get("document").map(|d| d.to_string());
        let view = ChangeView {
            id: change["document_id"].as_str().unwrap(),
            domain: change["domain"].as_str(),
            doc_type: change["document_type"].as_str(),
            is_deletion: change["is_deletion"].as_bool().unwrap_or(false),
            document: document.as_deref(),
            processing_time_ms: fixture["processing_time_ms"].as_i64().unwrap_or(0),
        };
        let lookups = fixture.get("lookups").cloned().unwrap_or(json!({}));
        let lookup = |resource: &str, key: &str| -> Result<Option<String>, EvalError> {
            Ok(lookups
                .get(resource)
                .and_then(|r| r.get(key))
                .map(|v| v.to_string()))
        };
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        match (
            processor.process(&view, &lookup),
            fixture.get("expect_error"),
        ) {
            (Ok(actions), None) => {
                let got: Vec<Value> = actions.iter().map(action).collect();
                assert_eq!(Value::Array(got), fixture["expect"], "{name}");
            }
            (Err(e), Some(kind)) => {
                let got = if e.retryable {
                    "retryable"
                } else {
                    "permanent"
                };
                assert_eq!(got, kind.as_str().unwrap(), "{name}: {}", e.message);
            }
            (Ok(actions), Some(kind)) => panic!("{name}: expected a {kind} error, got {actions:?}"),
            (Err(e), None) => panic!("{name}: unexpected error {}", e.message),
        }
    }
}
