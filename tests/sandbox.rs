//! Hostile plugins: each failure has its own error kind, the instance is
//! replaced after a trap, and the next change is processed normally.

use crate::support::*;
use pillowtop::action::{Action, Cell};
use pillowtop::change::Change;
use pillowtop::errors::ErrorKind;
use pillowtop::wasm::Processor;
use std::sync::Arc;

fn change(id: &str, offset: u64, document: serde_json::Value) -> Change {
    let mut c = Change::new(id, "hostile-topic", 0, offset).with_document(document.to_string());
    c.domain = Some("demo".into());
    c.document_type = Some("CommCareCase".into());
    c
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
    let actions = p.process(&hostile("sandbox", "s")).unwrap();
    let seen = document(&actions);
    assert_eq!(seen["env"], 0, "no environment variables: {seen}");
    assert_eq!(seen["args"], 0, "no arguments: {seen}");
    assert_eq!(seen["fs"], false, "no filesystem: {seen}");
    assert_eq!(seen["net"], false, "no network: {seen}");
    // Refused by the sandbox (WASI's access-denied: TCP is not allowed),
    // not failing because the socket API is missing (`Unsupported`).
    assert_eq!(seen["net_error"], "PermissionDenied", "{seen}");
    assert_eq!(
        seen["clock_secs"], 0,
        "the clock is frozen at the epoch: {seen}"
    );
}

/// The host's own environment does not reach a plugin: `plugin check`,
/// run with a variable set, passes a fixture that says the plugin sees
/// no variable at all (and the same refusals as above).
#[test]
fn a_variable_set_in_the_host_is_invisible_to_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = dir.path().join("fixtures");
    std::fs::create_dir(&fixtures).unwrap();
    let seen = serde_json::json!({"env": 0, "probe": null, "args": 0, "fs": false, "net": false,
                                  "net_error": "PermissionDenied", "clock_secs": 0});
    std::fs::write(
        fixtures.join("sandbox.json"),
        serde_json::json!({
            "change": {"document_id": "s", "document_type": "CommCareCase", "document": {"hostile": "sandbox"}},
            "expect": [{"index_document": {"index": "hostile", "id": "s", "document": seen}}]
        })
        .to_string(),
    )
    .unwrap();
    let manifest = hostile_manifest(dir.path(), "fuel = 50_000_000", "");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("fixtures = \"fixtures\"\n{text}")).unwrap();
    let out = bin()
        .args([
            "plugin",
            "check",
            manifest.to_str().unwrap(),
            "--compile-cache",
        ])
        .arg(cache_dir())
        .env("PILLOWTOP_SANDBOX_PROBE", "visible to the host")
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(report.contains("fixtures: 1 passed, 0 failed"), "{report}");
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
    // The plugin reports the random numbers and clocks it sees: the same
    // change must see the same ones on a fresh instance.
    let (_dir, mut p) = processor("fuel = 50_000_000\nmemory_mb = 16\ntimeout_ms = 5000", "");
    let a = p.process(&hostile("random", "d")).unwrap();
    p.reinstantiate().unwrap();
    let b = p.process(&hostile("random", "d")).unwrap();
    assert_eq!(a, b);
}

/// Run `f` on its own thread; fail (instead of hanging the suite) if it
/// has not returned within `seconds`. A liveness bound, not a benchmark.
fn within<T: Send + 'static>(
    seconds: u64,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(seconds))
        .unwrap_or_else(|_| panic!("{what} did not return within {seconds} s"))
}

fn document(actions: &[Action]) -> serde_json::Value {
    let Action::IndexDocument { document, .. } = &actions[0] else {
        panic!("{actions:?}")
    };
    serde_json::from_str(document).unwrap()
}

#[test]
fn a_sleep_returns_at_once_under_the_frozen_clock() {
    // `std::thread::sleep(1 hour)`: before, wasmtime-wasi slept for real
    // inside the host call, where the epoch deadline cannot fire.
    let (_dir, mut p) = processor("fuel = 50_000_000\nmemory_mb = 16\ntimeout_ms = 1000", "");
    let actions = within(60, "a sleeping plugin", move || {
        let a = p.process(&hostile("sleep", "zz")).unwrap();
        assert_next_change_works(&mut p, "sleep");
        a
    });
    assert_eq!(document(&actions)["slept"], true);
}

#[test]
fn a_sleep_loop_spins_into_its_fuel_limit() {
    let (_dir, mut p) = processor("fuel = 20_000_000\nmemory_mb = 16\ntimeout_ms = 5000", "");
    let err = within(60, "a sleep loop", move || {
        p.process(&hostile("sleep-loop", "zz")).unwrap_err()
    });
    assert_eq!(err.kind, ErrorKind::Fuel, "{}", err.message);
}

#[test]
fn an_init_that_sleeps_does_not_hold_the_load() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = hostile_manifest(
        dir.path(),
        "fuel = 50_000_000\nmemory_mb = 16\ntimeout_ms = 1000",
        "[config]\nsleep_init = true",
    );
    let mut p = within(120, "loading a plugin whose init sleeps", move || {
        load(&manifest)
    });
    assert_next_change_works(&mut p, "a sleeping init");
}

#[test]
fn aliased_outputs_are_refused_while_the_host_copies_them() {
    // A 4 MiB guest returns 100 documents that all point at one 1 MiB
    // string: 100 MiB once copied. The default limits.output_mb (16) stops
    // the copy; the host never holds the whole output.
    let (_dir, mut p) = processor("fuel = 500_000_000\nmemory_mb = 4\ntimeout_ms = 5000", "");
    let err = p.process(&hostile("alias", "al")).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Output, "{}", err.message);
    assert!(
        err.message
            .contains("more than limits.output_mb allows (16777216 bytes"),
        "{}",
        err.message
    );
    assert_next_change_works(&mut p, "an aliased output");
}

#[test]
fn output_mb_bounds_one_large_document_and_can_be_raised() {
    // 20 MiB in one document: over the default 16 MiB, within 32.
    let big = change(
        "big",
        1,
        serde_json::json!({"hostile": "big", "kib": 20 * 1024}),
    );
    let (_dir, mut p) = processor("fuel = 500_000_000\nmemory_mb = 64\ntimeout_ms = 5000", "");
    let err = p.process(&big).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Output, "{}", err.message);
    assert_next_change_works(&mut p, "a large document");
    let (_dir, mut p) = processor(
        "fuel = 500_000_000\nmemory_mb = 64\ntimeout_ms = 5000\noutput_mb = 32",
        "",
    );
    let actions = p.process(&big).unwrap();
    let Action::IndexDocument { document, .. } = &actions[0] else {
        panic!("{actions:?}")
    };
    assert!(document.len() > 20 << 20);
    assert!(
        p.last_output_bytes() > 20 << 20,
        "counted: {}",
        p.last_output_bytes()
    );
}

#[test]
fn a_plugin_error_message_is_cut_with_its_length() {
    let (_dir, mut p) = processor("fuel = 500_000_000\nmemory_mb = 16\ntimeout_ms = 5000", "");
    let err = p
        .process(&change(
            "e",
            1,
            serde_json::json!({"hostile": "big-error", "kib": 1024}),
        ))
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Retryable);
    assert!(err.message.len() < 4200, "{} bytes", err.message.len());
    assert!(err.message.starts_with("eeee"), "{}", &err.message[..40]);
    assert!(
        err.message
            .ends_with("[cut: the message was 1048576 bytes]"),
        "{}",
        &err.message[err.message.len() - 60..]
    );
}

#[test]
fn random_numbers_follow_the_change_not_the_instance() {
    let (_dir, mut p) = processor("fuel = 50_000_000\nmemory_mb = 16\ntimeout_ms = 5000", "");
    let at = |offset| change("r", offset, serde_json::json!({"hostile": "random"}));
    let first = document(&p.process(&at(5)).unwrap());
    let other = document(&p.process(&at(6)).unwrap());
    let again = document(&p.process(&at(5)).unwrap());
    p.reinstantiate().unwrap();
    let fresh = document(&p.process(&at(5)).unwrap());
    assert_eq!(
        first["random"], again["random"],
        "same change, same instance"
    );
    assert_eq!(
        first["random"], fresh["random"],
        "same change, fresh instance"
    );
    assert_ne!(
        first["random"], other["random"],
        "another change, other numbers"
    );
    // The clocks are frozen: a 50 ms sleep takes no time, and it is 1970.
    assert_eq!(first["monotonic_elapsed_ns"], 0, "{first}");
    assert_eq!(first["wall_ns"], 0, "{first}");
}

#[test]
fn key_values_longer_than_document_ids_are_malformed() {
    let (_dir, mut p) = processor("fuel = 50_000_000\nmemory_mb = 16\ntimeout_ms = 5000", "");
    let err = p.process(&hostile("long-key", "lk")).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Malformed, "{}", err.message);
    assert!(err.message.contains("at most 512 bytes"), "{}", err.message);
    assert_next_change_works(&mut p, "a long key");
}

/// A lookup resource that takes its time (as one backed by a database
/// can) and ignores the deadline it is given, counting the lookups it served.
#[derive(Default)]
struct SlowLookups(std::sync::atomic::AtomicUsize);

impl pillowtop::lookup::Lookups for SlowLookups {
    fn get(
        &self,
        _resource: &str,
        _key: &str,
        _deadline: std::time::Instant,
    ) -> Result<Option<String>, pillowtop::lookup::LookupError> {
        std::thread::sleep(std::time::Duration::from_millis(300));
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Some("v".into()))
    }
}

/// A lookup resource whose database is down.
struct DownLookups;

impl pillowtop::lookup::Lookups for DownLookups {
    fn get(
        &self,
        resource: &str,
        _key: &str,
        _deadline: std::time::Instant,
    ) -> Result<Option<String>, pillowtop::lookup::LookupError> {
        Err(pillowtop::lookup::LookupError::Unavailable {
            resource: resource.into(),
            message: "connection refused".into(),
        })
    }
}

/// A plugin that asks for a resource its manifest does not grant gets an
/// error value (it carries on, and reports what it got), never the data,
/// and the change fails with `capability`; one whose resource is down
/// gets an error value too, and the change fails with `lookup` although
/// the plugin returned actions: an outage is never taken for "absent".
#[test]
fn a_refused_or_failed_lookup_is_an_error_value_and_fails_the_change() {
    let secret = pillowtop::lookup::MemoryLookups(
        [(
            "not-granted".to_owned(),
            [("x".to_owned(), "secret-value".to_owned())].into(),
        )]
        .into(),
    );
    let dir = tempfile::tempdir().unwrap();
    let limits = "fuel = 50_000_000\nmemory_mb = 16\ntimeout_ms = 5000";
    let manifest = hostile_manifest(dir.path(), limits, "lookups = [\"slow\"]");
    let manifest = pillowtop::manifest::Manifest::load(&manifest).unwrap();
    let (mut p, _) = runtime_with_lookups(Arc::new(secret))
        .load(&manifest)
        .unwrap();
    let err = p.process(&hostile("lookup-ungranted", "u1")).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Capability, "{}", err.message);
    assert!(!err.message.contains("secret-value"), "{}", err.message);
    assert_next_change_works(&mut p, "an ungranted lookup");

    let (mut p, _) = runtime_with_lookups(Arc::new(DownLookups))
        .load(&manifest)
        .unwrap();
    let one = change("d1", 1, serde_json::json!({"hostile": "lookups", "n": 1}));
    let err = p.process(&one).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Lookup, "{}", err.message);
    assert!(
        err.message.contains("\"slow\"") && err.message.contains("connection refused"),
        "{}",
        err.message
    );
}

#[test]
fn time_spent_in_host_calls_counts_against_the_deadline() {
    let lookups = Arc::new(SlowLookups::default());
    let runtime = runtime_with_lookups(lookups.clone());
    let dir = tempfile::tempdir().unwrap();
    let manifest = hostile_manifest(
        dir.path(),
        "fuel = 50_000_000\nmemory_mb = 16\ntimeout_ms = 500",
        "lookups = [\"slow\"]",
    );
    let manifest = pillowtop::manifest::Manifest::load(&manifest).unwrap();
    let (mut p, _) = runtime.load(&manifest).unwrap();
    let one = change("l1", 1, serde_json::json!({"hostile": "lookups", "n": 1}));
    assert_eq!(document(&p.process(&one).unwrap())["found"], 1);
    // Five lookups of 300 ms each in a 500 ms call: the deadline passes
    // during the second, and no third one starts.
    let before = lookups.0.load(std::sync::atomic::Ordering::SeqCst);
    let five = change("l5", 2, serde_json::json!({"hostile": "lookups", "n": 5}));
    let err = p.process(&five).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{}", err.message);
    assert_eq!(
        lookups.0.load(std::sync::atomic::Ordering::SeqCst) - before,
        2,
        "lookups served in the 500 ms call"
    );
}

#[test]
fn fixtures_catch_output_that_drifts_after_some_calls() {
    let (_dir, mut p) = processor("fuel = 50_000_000\nmemory_mb = 16\ntimeout_ms = 5000", "");
    let fixture = serde_json::json!({
        "change": {"document_id": "d", "document_type": "CommCareCase", "document": {"hostile": "drift", "from_call": 4}},
        "expect": [{"index_document": {"index": "hostile", "id": "d", "document": {"n": 0}}}]
    });
    let fixture: pillowtop::fixtures::Fixture = serde_json::from_str(&fixture.to_string()).unwrap();
    // Two calls on one instance look deterministic; the fourth is not.
    assert_eq!(
        pillowtop::fixtures::run_times(&mut p, "drift", &fixture, 2).failure,
        None
    );
    p.reinstantiate().unwrap();
    let failure = pillowtop::fixtures::run_times(&mut p, "drift", &fixture, 4)
        .failure
        .expect("the fourth call differs");
    assert!(
        failure.contains("not deterministic: call 4 of the same change on one instance"),
        "{failure}"
    );
}
