//! CommCare's own test vectors (`vectors/*.json`, each case taken from a
//! test file under `corehq/apps/userreports/tests` in dimagi/commcare-hq)
//! run natively through the evaluator, in `ucr eval`'s mode: one
//! expression's value, or one filter's verdict, on one document. The host's
//! `tests/ucr.rs` runs the same files through the Wasm component.

use serde_json::{Value, json};
use std::path::Path;
use ucr::indicator::Cell;
use ucr::processor::{ChangeView, Processor, TableAction};

/// A data source only there to give the probe a scope.
const SCOPE: &str = r#"{"domain": "vectors", "table_id": "v", "referenced_doc_type": "CommCareCase",
    "configured_indicators": [{"type": "raw", "column_id": "x", "datatype": "string", "property_name": "x"}]}"#;

fn evaluate(case: &Value) -> Result<Value, String> {
    let probe = match (case.get("expression"), case.get("filter")) {
        (Some(e), None) => json!({"expression": e}),
        (None, Some(f)) => json!({"filter": f}),
        _ => panic!("a case has an expression or a filter: {case}"),
    };
    let config = format!(
        r#"{{"related_docs": {{"CommCareCase": "cases"}}, "data_sources": [{{"file": "vectors.json", "spec": {SCOPE}}}], "eval": {probe}}}"#
    );
    let processor = Processor::from_config(&config)?;
    let doc = case["doc"].to_string();
    let view = ChangeView {
        id: "doc",
        domain: Some("vectors"),
        doc_type: Some("CommCareCase"),
        is_deletion: false,
        document: Some(&doc),
        processing_time_ms: 0,
    };
    let lookups = case.get("lookups").cloned().unwrap_or(json!({}));
    let lookup = |resource: &str, key: &str| {
        Ok(lookups
            .get(resource)
            .and_then(|r| r.get(key))
            .map(|d| d.to_string()))
    };
    let actions = processor.process(&view, &lookup).map_err(|e| e.message)?;
    match &actions[..] {
        [TableAction::UpsertRows { rows, .. }] => match &rows[..] {
            [row] => match &row[..] {
                [_, Cell::Text(value)] => Ok(serde_json::from_str(value).unwrap()),
                other => panic!("eval row {other:?}"),
            },
            other => panic!("eval rows {other:?}"),
        },
        other => panic!("eval actions {other:?}"),
    }
}

#[test]
fn commcare_test_vectors_give_commcare_values() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut failures = Vec::new();
    let mut count = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let vectors: Value = serde_json::from_str(&text).unwrap();
        for case in vectors["cases"].as_array().unwrap() {
            count += 1;
            let name = format!(
                "{}: {}",
                file.file_name().unwrap().to_string_lossy(),
                case["name"].as_str().unwrap()
            );
            let got = evaluate(case);
            let ok = match (&got, case.get("expect_error")) {
                (Err(e), Some(needle)) => e.contains(needle.as_str().unwrap()),
                (Ok(v), None) => *v == case["expect"],
                _ => false,
            };
            if !ok {
                failures.push(format!(
                    "{name}: got {got:?}, expected {}",
                    case.get("expect_error").unwrap_or(&case["expect"])
                ));
            }
        }
    }
    assert!(count >= 100, "vectors found: {count}");
    assert!(
        failures.is_empty(),
        "{} of {count} vectors differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
