//! The embedded pipeline end to end: SQLite feed -> pillow -> Wasm -> SQLite
//! store, asserting on what landed.

use crate::support::*;
use pillowtop::config::PillowConfig;
use pillowtop::feed::TopicPartition;
use pillowtop::generate::{GenOptions, Generator, Kind};
use pillowtop::pillow::{Pillow, RunOptions, RunSummary};
use pillowtop::sink::ChunkCommit;
use pillowtop::sink::{VersionedAction, WritePlan};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

fn pillow_config(name: &str, topic: &str, manifest: PathBuf, chunk_size: usize) -> PillowConfig {
    PillowConfig {
        chunk_size,
        max_wait_ms: 50,
        ..PillowConfig::new(name, &[topic], vec![manifest])
    }
}

async fn run(env: &Env, config: &PillowConfig, options: RunOptions) -> RunSummary {
    let processors = config.processors.iter().map(|m| load(m)).collect();
    let pillow = Pillow::new(config.clone(), env.feed(), env.store.clone(), processors)
        .await
        .unwrap();
    pillow.run(options, CancellationToken::new()).await.unwrap()
}

/// Run as process `k` (of the config's `num_processes`) until caught up.
fn process(k: u32) -> RunOptions {
    RunOptions {
        until_caught_up: true,
        process_num: k,
        ..RunOptions::default()
    }
}

fn caught_up() -> RunOptions {
    RunOptions {
        until_caught_up: true,
        ..RunOptions::default()
    }
}

fn cases(seed: u64, n: usize) -> Vec<String> {
    let mut g = Generator::new(GenOptions {
        seed,
        domains: 4,
        kind: Kind::Case,
    });
    (0..n).map(|_| g.next_line()).collect()
}

async fn checkpoints(env: &Env, id: &str) -> HashMap<TopicPartition, u64> {
    env.store
        .checkpoints(id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.tp, c.next_offset))
        .collect()
}

async fn assert_checkpoints_at_end(env: &Env, id: &str, topic: &str) {
    let saved = checkpoints(env, id).await;
    let partitions = env.feed().partitions(&[topic.to_string()]).await.unwrap();
    let ends = env.feed().watermarks(&partitions).await.unwrap();
    for (tp, w) in partitions.into_iter().zip(ends) {
        let end = w.high;
        assert_eq!(
            saved.get(&tp).copied().unwrap_or(0),
            end,
            "checkpoint of {tp}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn case_search_end_to_end_lands_the_latest_version_of_every_case() {
    case_search_end_to_end_lands_the_latest_version_of_every_case_in(Env::new().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn case_search_end_to_end_lands_the_latest_version_of_every_case_in_postgres() {
    case_search_end_to_end_lands_the_latest_version_of_every_case_in(Env::postgres().await).await;
}

async fn case_search_end_to_end_lands_the_latest_version_of_every_case_in(env: Env) {
    let mut lines = cases(5, 3000);
    let malformed = [
        "not json at all".to_string(),
        r#"{"domain":"demo-0","document":{}}"#.to_string(),
        r#"{"document_id":"bad-doc","document":[1,2]}"#.to_string(),
    ];
    lines.insert(10, malformed[0].clone());
    lines.insert(1000, malformed[1].clone());
    lines.push(malformed[2].clone());
    env.publish("case-sql", 4, &lines).await;
    let config = pillow_config("cs", "case-sql", case_search_manifest(), 200);
    let summary = run(&env, &config, caught_up()).await;
    assert_eq!(summary.messages, lines.len() as u64);
    assert_checkpoints_at_end(&env, "cs", "case-sql").await;

    // Decode errors: recorded with the exact bytes received, nothing lost.
    let errors = recent_errors(&env.store, "cs", 100).await.unwrap();
    assert_eq!(errors.len(), 3, "{errors:?}");
    for e in &errors {
        assert_eq!(e.kind.as_str(), "decode");
        assert!(
            malformed
                .iter()
                .any(|m| m.as_bytes() == e.change.as_slice()),
            "raw change kept: {:?}",
            String::from_utf8_lossy(&e.change)
        );
    }
    assert!(
        errors.iter().any(
            |e| e.doc_id == "bad-doc" && e.message.contains("`document` must be a JSON object")
        )
    );

    // Expected state, computed from the input alone: the last change of
    // each case decides; every domain but demo-3 is indexed (plugin.toml).
    let mut last: HashMap<String, Value> = HashMap::new();
    for l in &lines {
        if let Ok(v) = serde_json::from_str::<Value>(l)
            && let Some(id) = v["document_id"].as_str()
        {
            last.insert(id.to_owned(), v.clone());
        }
    }
    let mut expected_live = 0;
    for (id, change) in &last {
        let stored = env.sql().document(CASE_SEARCH_INDEX, id).await.unwrap();
        let live = change["is_deletion"] != true
            && change["document"].is_object()
            && case_search_indexes(change["domain"].as_str().unwrap_or(""));
        if !live {
            assert!(
                stored.as_ref().is_none_or(|(doc, _)| doc.is_none()),
                "{id} should not be live: {stored:?}"
            );
            continue;
        }
        expected_live += 1;
        let (doc, _version) = stored.unwrap_or_else(|| panic!("{id} missing"));
        let doc: Value = serde_json::from_str(&doc.expect("live document")).unwrap();
        let props = doc["case_properties"].as_array().unwrap();
        assert_eq!(
            props[0],
            serde_json::json!({"key": "@case_id", "value": id})
        );
        let closed = change["document"]["closed"] == true;
        assert_eq!(
            props[3]["value"],
            if closed { "closed" } else { "open" },
            "{id}"
        );
        assert_eq!(
            props.len(),
            10 + change["document"]["case_json"].as_object().unwrap().len()
        );
        assert!(doc.get("case_json").is_none());
        assert_eq!(
            doc["name"], change["document"]["name"],
            "latest version of {id}"
        );
    }
    let counts = env.sql().counts().await.unwrap();
    assert_eq!(
        counts.documents,
        vec![(CASE_SEARCH_INDEX.to_string(), expected_live)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_resumes_at_the_exact_next_offset() {
    let env = Env::new().await;
    let all = cases(9, 800);
    env.publish("case-sql", 3, &all[..500]).await;
    let config = pillow_config("resume", "case-sql", case_search_manifest(), 64);
    let first = run(&env, &config, caught_up()).await;
    assert_eq!(first.messages, 500);
    env.publish("case-sql", 3, &all[500..]).await;
    let second = run(&env, &config, caught_up()).await;
    assert_eq!(second.messages, 300, "only the new changes are read again");
    assert_checkpoints_at_end(&env, "resume", "case-sql").await;
    let third = run(&env, &config, caught_up()).await;
    assert_eq!(third.messages, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_changes_become_pillow_errors_and_the_partition_goes_on() {
    hostile_changes_become_pillow_errors_and_the_partition_goes_on_in(Env::new().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_changes_become_pillow_errors_and_the_partition_goes_on_in_postgres() {
    hostile_changes_become_pillow_errors_and_the_partition_goes_on_in(Env::postgres().await).await;
}

async fn hostile_changes_become_pillow_errors_and_the_partition_goes_on_in(env: Env) {
    let dir = tempfile::tempdir().unwrap();
    let manifest = hostile_manifest(
        dir.path(),
        "fuel = 20_000_000\nmemory_mb = 16\ntimeout_ms = 3000",
        "",
    );
    let modes = ["panic", "bomb", "loop", "undeclared-table", "bad-json"];
    let mut lines = Vec::new();
    for i in 0..10 {
        lines.push(change(&format!("n{i}"), serde_json::json!({})));
        if let Some(mode) = modes.get(i) {
            lines.push(change(
                &format!("h-{mode}"),
                serde_json::json!({"hostile": mode}),
            ));
        }
    }
    env.publish("h", 2, &lines).await;
    let config = pillow_config("hostile-pillow", "h", manifest, 4);
    let summary = run(&env, &config, caught_up()).await;
    assert_eq!(summary.messages, 15);
    assert_checkpoints_at_end(&env, "hostile-pillow", "h").await;

    let errors = recent_errors(&env.store, "hostile-pillow", 100)
        .await
        .unwrap();
    assert_each_hostile_change_failed_as_itself(&errors);
    for e in &errors {
        assert_eq!(e.processor, "hostile");
        assert!(
            e.plugin_version
                .as_deref()
                .is_some_and(|v| v.starts_with("1.0.0+")),
            "{e:?}"
        );
        assert_eq!((e.series_attempts, e.total_attempts), (1, 1));
        assert_eq!(e.state, pillowtop::errors::ErrorState::Pending);
        assert!(
            e.next_attempt_ms.is_some(),
            "retryable kinds are scheduled: {e:?}"
        );
    }
    let ids = env
        .strings("SELECT doc_id FROM hostile_rows ORDER BY doc_id")
        .await;
    assert_eq!(ids, (0..10).map(|i| format!("n{i}")).collect::<Vec<_>>());
    let counts = env.sql().counts().await.unwrap();
    assert_eq!(counts.documents, vec![("hostile".to_string(), 10)]);
}

/// One pillow error per hostile change, of the kind its misbehaviour earns.
fn assert_each_hostile_change_failed_as_itself(errors: &[pillowtop::errors::PillowError]) {
    let kinds: HashMap<_, _> = errors
        .iter()
        .map(|e| (e.doc_id.as_str(), e.kind.as_str()))
        .collect();
    assert_eq!(
        kinds,
        HashMap::from([
            ("h-panic", "trap"),
            ("h-bomb", "memory"),
            ("h-loop", "fuel"),
            ("h-undeclared-table", "capability"),
            ("h-bad-json", "malformed")
        ])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_keeps_only_the_last_change_of_a_document() {
    let env = Env::new().await;
    let doc = |name: &str| serde_json::json!({"_id": "same", "name": name, "case_json": {}});
    let lines = vec![
        change("same", doc("first")),
        change("other", doc("x")),
        change("same", doc("second")),
        change("same", doc("third")),
    ];
    env.publish("case-sql", 1, &lines).await;
    let config = pillow_config("dedupe", "case-sql", case_search_manifest(), 100);
    let summary = run(&env, &config, caught_up()).await;
    assert_eq!(
        (summary.messages, summary.changes, summary.deduplicated),
        (4, 2, 2)
    );
    let (stored, version) = env
        .sql()
        .document(CASE_SEARCH_INDEX, "same")
        .await
        .unwrap()
        .unwrap();
    let stored: Value = serde_json::from_str(&stored.unwrap()).unwrap();
    assert_eq!(stored["name"], "third");
    assert_eq!(
        version, 3,
        "the version is the offset of the change that wrote it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_never_overwrites_newer_documents() {
    a_replay_never_overwrites_newer_documents_in(Env::new().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_never_overwrites_newer_documents_in_postgres() {
    a_replay_never_overwrites_newer_documents_in(Env::postgres().await).await;
}

async fn a_replay_never_overwrites_newer_documents_in(env: Env) {
    let doc = |name: &str| serde_json::json!({"_id": "r1", "name": name, "case_json": {}});
    env.publish(
        "case-sql",
        1,
        &[change("r1", doc("old")), change("r1", doc("new"))],
    )
    .await;
    // chunk_size 1: each version is written in its own transaction.
    let config = pillow_config("replay", "case-sql", case_search_manifest(), 1);
    run(&env, &config, caught_up()).await;
    // The stored document and its version, without `@indexed_on` (each
    // run's processing time, which a replay renews as CommCare's does).
    let stored = || async {
        let (text, version) = env
            .sql()
            .document(CASE_SEARCH_INDEX, "r1")
            .await
            .unwrap()
            .unwrap();
        let mut doc: serde_json::Value = serde_json::from_str(&text.unwrap()).unwrap();
        doc.as_object_mut().unwrap().remove("@indexed_on");
        (doc, version)
    };
    let before = stored().await;

    // A stale write (older version) is ignored.
    let stale = VersionedAction {
        action: pillowtop::action::Action::IndexDocument {
            index: CASE_SEARCH_INDEX.into(),
            id: "r1".into(),
            document: r#"{"stale":true}"#.into(),
        },
        version: 0,
        origin: Default::default(),
    };
    env.sql()
        .commit(
            "replay",
            &ChunkCommit {
                plan: WritePlan::build(vec![stale]),
                ..ChunkCommit::default()
            },
            &|_| None,
        )
        .await
        .unwrap();
    assert_eq!(stored().await, before);

    // Rewind the checkpoint and replay everything: same state, no errors.
    env.store
        .set_checkpoints("replay", &[(TopicPartition::new("case-sql", 0), 0)])
        .await
        .unwrap();
    let again = run(&env, &config, caught_up()).await;
    assert_eq!(again.messages, 2);
    assert_eq!(stored().await, before);
    assert!(
        recent_errors(&env.store, "replay", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_finishes_the_chunk_and_saves_the_checkpoint() {
    let env = Env::new().await;
    env.publish("case-sql", 2, &cases(11, 20_000)).await;
    let mut config = pillow_config("stop", "case-sql", case_search_manifest(), 50);
    // Only the shutdown save can write a checkpoint in this run.
    config.checkpoint_every = u64::MAX;
    let processors = vec![load(&case_search_manifest())];
    let pillow = Pillow::new(config.clone(), env.feed(), env.store.clone(), processors)
        .await
        .unwrap();
    let token = CancellationToken::new();
    let handle = tokio::spawn(pillow.run(RunOptions::default(), token.clone()));
    // Wait until some chunks are committed, then stop.
    let pool = env.store.sqlite().unwrap().clone();
    loop {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            r#"SELECT COUNT(*) FROM "doc_{CASE_SEARCH_INDEX}""#
        )))
        .fetch_one(&pool)
        .await
        .unwrap_or(0);
        if n > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    token.cancel();
    let first = handle.await.unwrap().unwrap();
    assert!(
        first.messages > 0 && first.messages < 20_000,
        "stopped mid-stream after {} messages",
        first.messages
    );
    let saved: u64 = checkpoints(&env, "stop").await.values().sum();
    assert_eq!(
        saved, first.messages,
        "every message read before the stop is checkpointed"
    );
    let rest = run(&env, &config, caught_up()).await;
    assert_eq!(
        rest.messages,
        20_000 - first.messages,
        "nothing is read twice or skipped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_split_the_partitions_and_save_only_their_own() {
    let env = Env::new().await;
    env.publish("case-sql", 8, &cases(13, 2000)).await;
    let config = PillowConfig {
        num_processes: 2,
        ..pillow_config("split", "case-sql", case_search_manifest(), 100)
    };
    let p0 = run(&env, &config, process(0)).await;
    let after_p0 = checkpoints(&env, "split").await;
    let mine: Vec<u32> = after_p0
        .keys()
        .map(|tp| tp.partition)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        mine,
        vec![0, 2, 4, 6],
        "process 0 owns pairs[0::2] and saves only those"
    );
    let p1 = run(&env, &config, process(1)).await;
    assert_eq!(
        p0.messages + p1.messages,
        2000,
        "together they read every message once"
    );
    assert_eq!(
        p1.partitions
            .iter()
            .map(|tp| tp.partition)
            .collect::<Vec<_>>(),
        vec![1, 3, 5, 7]
    );
    assert_checkpoints_at_end(&env, "split", "case-sql").await;
}

/// `checkpoint_every` counts the changes since the last save: with chunks
/// of 10, every = 1 saves with every chunk and every = 25 with every third
/// (and the last, on catching up).
#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_are_saved_every_n_changes() {
    for (every, saves) in [(1, 10), (25, 4)] {
        let env = Env::new().await;
        let lines: Vec<String> = (0..100)
            .map(|i| change(&format!("c{i}"), serde_json::json!({"name": "x"})))
            .collect();
        env.publish("t", 1, &lines).await;
        let mut config = pillow_config("cp", "t", case_search_manifest(), 10);
        config.checkpoint_every = every;
        let summary = run(&env, &config, caught_up()).await;
        assert_eq!(summary.chunks, 10);
        assert_eq!(
            summary.checkpoint_saves, saves,
            "checkpoint_every = {every}"
        );
        assert_checkpoints_at_end(&env, "cp", "t").await;
    }
}

/// The store refuses one change's row (a constraint an operator added):
/// the chunk is written one change at a time, that change becomes a
/// pillow error of kind `rejected`, every other row lands and the
/// checkpoint moves on.
#[tokio::test(flavor = "multi_thread")]
async fn a_row_the_store_refuses_is_a_pillow_error_for_its_change_only() {
    a_row_the_store_refuses_is_a_pillow_error_for_its_change_only_in(
        Env::new().await,
        "CREATE TRIGGER no_bad BEFORE INSERT ON tagged WHEN NEW.doc_id = 'bad'
         BEGIN SELECT RAISE(ABORT, 'no_bad: rows of bad are not allowed'); END",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_the_store_refuses_is_a_pillow_error_for_its_change_only_in_postgres() {
    a_row_the_store_refuses_is_a_pillow_error_for_its_change_only_in(
        Env::postgres().await,
        "ALTER TABLE tagged ADD CONSTRAINT no_bad CHECK (doc_id <> 'bad')",
    )
    .await;
}

async fn a_row_the_store_refuses_is_a_pillow_error_for_its_change_only_in(
    env: Env,
    constraint: &'static str,
) {
    let dir = tempfile::tempdir().unwrap();
    let manifest = tagger_manifest(dir.path());
    let n = 60;
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let id = if i == 23 {
                "bad".into()
            } else {
                format!("d{i}")
            };
            change(&id, serde_json::json!({ "i": i }))
        })
        .collect();
    env.publish("t", 2, &lines).await;
    let config = pillow_config("refuse", "t", manifest.clone(), 100);
    let pillow = Pillow::new(config, env.feed(), env.store.clone(), vec![load(&manifest)])
        .await
        .unwrap();
    env.execute(constraint).await;
    let summary = pillow
        .run(caught_up(), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        summary.errors.get(&pillowtop::errors::ErrorKind::Rejected),
        Some(&1),
        "{:?}",
        summary.errors
    );
    let rows = env.strings("SELECT doc_id FROM tagged").await;
    assert_eq!(rows.len(), n - 1, "{rows:?}");
    assert!(!rows.contains(&"bad".to_string()));
    let errors = recent_errors(&env.store, "refuse", 10).await.unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].doc_id, "bad");
    assert_eq!(errors[0].kind.as_str(), "rejected");
    assert_eq!(errors[0].processor, "tagger");
    assert!(
        errors[0].message.contains("no_bad"),
        "{}",
        errors[0].message
    );
    assert_eq!(errors[0].change, lines[23].as_bytes());
    let saved = env.checkpointed("refuse").await;
    assert_eq!(
        saved, n as u64,
        "the checkpoint moves past the refused change"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn transform_threads_split_each_chunk_across_their_own_instances() {
    let env = Env::new().await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = tagger_manifest(dir.path());
    let toml = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("{toml}count_calls = true\n")).unwrap();
    let n = 1200;
    let lines: Vec<String> = (0..n)
        .map(|i| change(&format!("d{i:04}"), serde_json::json!({ "i": i })))
        .collect();
    env.publish("lanes", 1, &lines).await;
    let config = PillowConfig {
        transform_threads: 3,
        ..pillow_config("lanes", "lanes", manifest, 600)
    };
    let summary = run(&env, &config, caught_up()).await;
    assert_eq!(summary.messages, n as u64);
    assert_checkpoints_at_end(&env, "lanes", "lanes").await;

    // Every change landed once, as the result of its own call: results
    // went back to the change they came from.
    let rows = env
        .strings(r#"SELECT doc_id || ':' || "offset" || ':' || seq FROM tagged ORDER BY doc_id"#)
        .await;
    assert_eq!(rows.len(), n);
    let mut seqs = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let parts: Vec<&str> = row.split(':').collect();
        assert_eq!(
            (parts[0], parts[1]),
            (format!("d{i:04}").as_str(), i.to_string().as_str())
        );
        seqs.push(parts[2].parse::<usize>().unwrap());
    }
    // `seq` counts each instance's calls from 1: three instances took
    // part, each with about a third of every chunk (one instance would
    // have counted to 1200).
    let instances = seqs.iter().filter(|&&s| s == 1).count();
    let busiest = seqs.iter().max().copied().unwrap_or(0);
    assert_eq!(instances, 3, "instances that ran: {instances}");
    assert!(
        busiest <= n / 3 + 64,
        "one instance ran {busiest} of {n} changes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_changes_in_parallel_lanes_fail_alone() {
    let env = Env::new().await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = hostile_manifest(
        dir.path(),
        "fuel = 20_000_000\nmemory_mb = 16\ntimeout_ms = 3000",
        "",
    );
    // One chunk of 305 changes split three ways (runs of 102): hostile
    // changes in every run, one of them the first change of the middle run
    // (line 102) and two in the same run (so its instance is replaced
    // between them).
    let hostile = [
        (20, "panic"),
        (101, "bomb"),
        (103, "loop"),
        (204, "undeclared-table"),
        (290, "bad-json"),
    ];
    let mut lines = Vec::new();
    for i in 0..300 {
        if let Some((_, mode)) = hostile.iter().find(|(at, _)| *at == i) {
            lines.push(change(
                &format!("h-{mode}"),
                serde_json::json!({"hostile": mode}),
            ));
        }
        lines.push(change(&format!("n{i:03}"), serde_json::json!({})));
    }
    env.publish("hl", 1, &lines).await;
    let config = PillowConfig {
        transform_threads: 3,
        ..pillow_config("hostile-lanes", "hl", manifest, 400)
    };
    let summary = run(&env, &config, caught_up()).await;
    assert_eq!(summary.messages, 305);
    assert_checkpoints_at_end(&env, "hostile-lanes", "hl").await;
    let errors = recent_errors(&env.store, "hostile-lanes", 100)
        .await
        .unwrap();
    assert_each_hostile_change_failed_as_itself(&errors);
    let ids = env
        .strings("SELECT doc_id FROM hostile_rows ORDER BY doc_id")
        .await;
    assert_eq!(
        ids,
        (0..300).map(|i| format!("n{i:03}")).collect::<Vec<_>>()
    );
}

/// Length of `path` (0 while it does not exist).
fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Wait (up to 20 s) until the database file at `path` has grown by at
/// least `bytes` over `before`: its WAL pages were copied into it.
async fn wait_until_checkpointed(path: &std::path::Path, before: u64, bytes: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while file_len(path) < before + bytes {
        assert!(
            std::time::Instant::now() < deadline,
            "{} is {} bytes, expected at least {before} + {bytes} once its log was checkpointed; \
             its -wal file holds {} bytes: nothing copied the committed pages into the database file",
            path.display(),
            file_len(path),
            file_len(&path.with_extension("db-wal")),
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The bundled SQLite is built with `.cargo/config.toml`'s
/// `LIBSQLITE3_FLAGS`: no global lock around every allocation (memory
/// statistics off) and no page-cache group shared by all connections
/// (memory management off), so the feed reader, the store writer and the
/// checkpointer do not serialize on them.
#[tokio::test(flavor = "multi_thread")]
async fn bundled_sqlite_has_no_process_wide_allocation_locks() {
    let dir = tempfile::tempdir().unwrap();
    let store = pillowtop::store::Store::open(&dir.path().join("store.db"))
        .await
        .unwrap();
    let options: Vec<String> = sqlx::query_scalar("PRAGMA compile_options")
        .fetch_all(store.sqlite().unwrap())
        .await
        .unwrap();
    assert!(
        options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
        "SQLite was built with memory statistics on (is LIBSQLITE3_FLAGS from .cargo/config.toml applied?): {options:?}"
    );
    assert!(
        !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
        "SQLite was built with SQLITE_ENABLE_MEMORY_MANAGEMENT (one page-cache group for every connection): {options:?}"
    );
}

/// Committing connections leave WAL checkpoints to a background connection
/// (they checkpoint by themselves only past `WAL_SAFETY_PAGES`, 64 MiB):
/// soon after a commit, what it wrote is in the database file itself, for
/// the feed (publish) and the store (chunk commits) alike. Statement
/// journals stay in memory, so a commit writes only the log.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_commits_are_checkpointed_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let (feed_db, store_db) = (dir.path().join("feed.db"), dir.path().join("store.db"));
    let store = pillowtop::store::Store::open(&store_db).await.unwrap();
    let env = Env::with_store(dir, store).await;
    let safety: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
        .fetch_one(env.store.sqlite().unwrap())
        .await
        .unwrap();
    assert_eq!(safety, i64::from(pillowtop::db::sqlite::WAL_SAFETY_PAGES));
    // Statement journals of the multi-row upserts stay in memory (2 =
    // MEMORY) instead of going to temporary files beside the commit.
    let temp_store: i64 = sqlx::query_scalar("PRAGMA temp_store")
        .fetch_one(env.store.sqlite().unwrap())
        .await
        .unwrap();
    assert_eq!(temp_store, 2);

    let lines = cases(9, 400);
    let published: u64 = lines.iter().map(|l| l.len() as u64).sum();
    let before = file_len(&feed_db);
    env.publish("case-sql", 2, &lines).await;
    wait_until_checkpointed(&feed_db, before, published).await;

    let before = file_len(&store_db);
    let config = pillow_config("bg", "case-sql", case_search_manifest(), 100);
    let summary = run(&env, &config, caught_up()).await;
    assert!(summary.chunks >= 4, "{summary:?}");
    let written: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        r#"SELECT SUM(LENGTH(document)) FROM "doc_{CASE_SEARCH_INDEX}""#
    )))
    .fetch_one(env.store.sqlite().unwrap())
    .await
    .unwrap();
    assert!(
        written > 100_000,
        "only {written} bytes of documents written"
    );
    wait_until_checkpointed(&store_db, before, written as u64).await;
}
