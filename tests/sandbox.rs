//! Hostile plugins: each failure has its own error kind, the instance is
//! replaced after a trap, and the next change is processed normally.

use crate::support::*;
use pillowtop::action::{Action, Cell};
use pillowtop::change::Change;
use pillowtop::errors::ErrorKind;
use pillowtop::wasm::Processor;
use std::sync::Arc;

fn change(id: &str, offset: u64, document: serde_json::Value) -> Change {
    Change {
        id: id.into(),
        topic: Arc::from("hostile-topic"),
        partition: 0,
        offset,
        domain: Some("demo".into()),
        document_type: Some("CommCareCase".into()),
        document_subtype: None,
        is_deletion: false,
        publish_time_ms: None,
        attempts: 0,
        document: Some(document.to_string()),
    }
}

fn hostile(mode: &str, id: &str) -> Change {
    change(id, 1, serde_json::json!({"hostile": mode}))
}

/// The change after a failure must be processed normally, by a working instance.
fn assert_next_change_works(p: &mut Processor, after: &str) {
    let actions = p
        .process(&change("ok-after", 99, serde_json::json!({})))
        .unwrap_or_else(|e| panic!("change after {after} failed: {e}"));
    assert_eq!(
        actions,
        vec![
            Action::IndexDocument {
                index: "hostile".into(),
                id: "ok-after".into(),
                document: r#"{"id":"ok-after"}"#.into()
            },
            Action::UpsertRows {
                table: "hostile_rows".into(),
                rows: vec![vec![Cell::Text("ok-after".into()), Cell::Integer(99)]]
            },
        ],
        "after {after}"
    );
}

fn processor(limits: &str, extra: &str) -> (tempfile::TempDir, Processor) {
    let dir = tempfile::tempdir().unwrap();
    let manifest = hostile_manifest(dir.path(), limits, extra);
    let p = load(&manifest);
    (dir, p)
}

#[test]
fn each_failure_has_its_own_kind_and_the_next_change_goes_on() {
    let (_dir, mut p) = processor("fuel = 20_000_000\nmemory_mb = 16\ntimeout_ms = 5000", "");
    let cases = [
        ("loop", ErrorKind::Fuel, "ran out of fuel"),
        ("bomb", ErrorKind::Memory, "limits.memory_mb"),
        (
            "panic",
            ErrorKind::Trap,
            "panics on purpose for change c-panic",
        ),
        ("stack", ErrorKind::Trap, "trapped"),
        (
            "undeclared-table",
            ErrorKind::Capability,
            "table \"secret_table\", which init did not declare",
        ),
        (
            "undeclared-index",
            ErrorKind::Capability,
            "index \"someone-elses-index\"",
        ),
        (
            "lookup-ungranted",
            ErrorKind::Capability,
            "lookup of resource \"not-granted\"",
        ),
        ("bad-json", ErrorKind::Malformed, "is not a JSON object"),
        (
            "bad-row",
            ErrorKind::Malformed,
            "has 1 values but table \"hostile_rows\" has 2 columns",
        ),
        ("retryable", ErrorKind::Retryable, "lookup not ready yet"),
        ("permanent", ErrorKind::Permanent, "can never be processed"),
    ];
    for (mode, kind, needle) in cases {
        let err = p
            .process(&hostile(mode, &format!("c-{mode}")))
            .expect_err(mode);
        assert_eq!(err.kind, kind, "{mode}: {}", err.message);
        assert!(
            err.message.contains(needle),
            "{mode}: {needle:?} not in {:?}",
            err.message
        );
        assert_next_change_works(&mut p, mode);
    }
}

#[test]
fn a_timeout_is_not_a_fuel_error() {
    // Fuel enough for many seconds of looping; the 100 ms deadline fires first.
    let (_dir, mut p) = processor(
        "fuel = 1_000_000_000_000\nmemory_mb = 16\ntimeout_ms = 100",
        "",
    );
    let started = std::time::Instant::now();
    let err = p.process(&hostile("loop", "c-slow")).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{}", err.message);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "the deadline did not stop the loop"
    );
    assert_next_change_works(&mut p, "timeout");
}

#[test]
fn a_trapped_instance_is_replaced_not_reused() {
    let (_dir, mut p) = processor("fuel = 20_000_000\nmemory_mb = 16\ntimeout_ms = 5000", "");
    assert_next_change_works(&mut p, "start");
    let small = p.memory_bytes();
    assert_eq!(
        p.process(&hostile("bomb", "b")).unwrap_err().kind,
        ErrorKind::Memory
    );
    assert_next_change_works(&mut p, "bomb");
    // The bomb grew its instance's memory to the cap; a reused instance would
    // still be that big. A fresh one is back to its initial size.
    assert_eq!(
        p.memory_bytes(),
        small,
        "the instance after the bomb is a fresh one"
    );
    assert!(small < 16 * 1024 * 1024);
}

#[test]
fn the_sandbox_has_nothing_real_behind_it() {
    let (_dir, mut p) = processor("fuel = 50_000_000\nmemory_mb = 16\ntimeout_ms = 5000", "");
    // Set an environment variable the plugin must not see.
    let actions = p.process(&hostile("sandbox", "s")).unwrap();
    let Action::IndexDocument { document, .. } = &actions[0] else {
        panic!("{actions:?}")
    };
    let seen: serde_json::Value = serde_json::from_str(document).unwrap();
    assert_eq!(seen["env"], 0, "no environment variables: {seen}");
    assert_eq!(seen["args"], 0, "no arguments: {seen}");
    assert_eq!(seen["fs"], false, "no filesystem: {seen}");
    assert_eq!(seen["net"], false, "no network: {seen}");
    assert_eq!(
        seen["clock_secs"], 0,
        "the clock is frozen at the epoch: {seen}"
    );
}

#[test]
fn a_log_flood_neither_fails_nor_stalls_the_change() {
    let (_dir, mut p) = processor("fuel = 500_000_000\nmemory_mb = 16\ntimeout_ms = 5000", "");
    let actions = p.process(&hostile("log-flood", "flood")).unwrap();
    assert_eq!(actions.len(), 1);
    assert_next_change_works(&mut p, "log-flood");
}

#[test]
fn the_same_change_gives_the_same_actions() {
    let (_dir, mut p) = processor("fuel = 50_000_000\nmemory_mb = 16\ntimeout_ms = 5000", "");
    let a = p.process(&hostile("sandbox", "d")).unwrap();
    p.reinstantiate().unwrap();
    let b = p.process(&hostile("sandbox", "d")).unwrap();
    assert_eq!(a, b);
}
