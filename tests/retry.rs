//! The retry queue: CommCare's schedule under a controllable clock,
//! poison that never stalls a partition, fairness across domains, stale
//! retries that must not land, republishing, the queue inside `run`, the
//! operator commands, and the due query's index on PostgreSQL.

use crate::support::*;
use pillowtop::config::{PillowConfig, RetryMode};
use pillowtop::errors::ops::{self, Filter};
use pillowtop::errors::sql::{Passed, RetryOutcome};
use pillowtop::errors::{Backoff, ErrorKind, ErrorState, PillowError, ProcessorRef};
use pillowtop::feed::TopicPartition;
use pillowtop::metrics::Metrics;
use pillowtop::pillow::{Pillow, RunOptions};
use pillowtop::retry::{Outcome, RetryQueue};
use pillowtop::sink::{ChunkCommit, Origin, Sinks, VersionedAction, WritePlan};
use pillowtop::time::Clock;
use serde_json::json;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

const MIN: i64 = 60_000;

fn caught_up() -> RunOptions {
    RunOptions {
        until_caught_up: true,
        ..RunOptions::default()
    }
}

fn queue(
    config: &PillowConfig,
    env: &Env,
    manifest: &std::path::Path,
    clock: &Clock,
) -> RetryQueue {
    RetryQueue::new(
        config,
        Sinks::from(env.store.clone()),
        vec![load(manifest)],
        Arc::new(Metrics::new()),
        CancellationToken::new(),
    )
    .with_clock(clock.clone())
}

async fn errors_of(env: &Env, pillow: &str) -> Vec<PillowError> {
    let filter = Filter {
        pillow: Some(pillow.into()),
        ..Filter::default()
    };
    let mut errors = ops::list(env.store.db(), &filter, 1000).await.unwrap();
    errors.sort_by(|a, b| a.doc_id.cmp(&b.doc_id));
    errors
}

/// 10,000 good changes with three kinds of poison on 4 partitions: every
/// good change lands, the checkpoints reach the end, each poison document
/// is one error; moving a manual clock through CommCare's schedule shows
/// exactly the attempts expected (retryable kinds after 5, 20 and 45
/// minutes, then parked; decode and permanent parked at once).
#[tokio::test(flavor = "multi_thread")]
async fn poison_never_stalls_a_partition_and_is_parked_on_schedule() {
    poison_in(
        Env::new().await,
        "CREATE TRIGGER no_reject BEFORE INSERT ON hostile_rows WHEN NEW.doc_id LIKE 'reject-%'
         BEGIN SELECT RAISE(ABORT, 'no_reject: rows of reject-* are refused'); END",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_never_stalls_a_partition_and_is_parked_on_schedule_in_postgres() {
    poison_in(
        Env::postgres().await,
        "ALTER TABLE hostile_rows ADD CONSTRAINT no_reject CHECK (doc_id NOT LIKE 'reject-%')",
    )
    .await;
}

async fn poison_in(env: Env, refuse: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let manifest = hostile_manifest(dir.path(), "fuel = 5_000_000", "");
    let good = 10_000;
    let mut lines: Vec<String> = (0..good)
        .map(|i| change(&format!("g{i:05}"), json!({ "i": i })))
        .collect();
    let poison = [
        (1_000, "not json {".to_owned()),
        (2_500, "{\"no_document_id\": true}".to_owned()),
        (7_000, "[1, 2]".to_owned()),
        (500, change("trap-1", json!({"hostile": "panic"}))),
        (5_000, change("trap-2", json!({"hostile": "panic"}))),
        (3_000, change("perm-1", json!({"hostile": "permanent"}))),
        (9_000, change("perm-2", json!({"hostile": "permanent"}))),
        (4_000, change("reject-1", json!({"i": -1}))),
        (8_000, change("reject-2", json!({"i": -2}))),
    ];
    for (at, line) in poison.iter().rev() {
        lines.insert(*at, line.clone());
    }
    env.publish("t", 4, &lines).await;
    let config = PillowConfig {
        chunk_size: 500,
        max_wait_ms: 20,
        ..PillowConfig::new("poison", &["t"], vec![manifest.clone()])
    };
    let pillow = Pillow::new(
        config.clone(),
        env.feed(),
        env.store.clone(),
        vec![load(&manifest)],
    )
    .await
    .unwrap();
    env.execute(refuse).await;
    let summary = pillow
        .run(caught_up(), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(summary.messages, lines.len() as u64);

    let rows = env.strings("SELECT doc_id FROM hostile_rows").await;
    assert_eq!(rows.len(), good, "every good change landed");
    assert!(rows.iter().all(|r| r.starts_with('g')));
    assert_eq!(
        env.checkpointed("poison").await,
        lines.len() as u64,
        "checkpoints at the end"
    );

    let errors = errors_of(&env, "poison").await;
    assert_eq!(
        errors.len(),
        9,
        "one error per poison document: {errors:#?}"
    );
    let kinds: Vec<_> = errors
        .iter()
        .map(|e| (e.doc_id.as_str(), e.kind, e.state))
        .collect();
    use ErrorKind::*;
    use ErrorState::*;
    let decode: Vec<_> = kinds.iter().filter(|k| k.1 == Decode).collect();
    assert_eq!(decode.len(), 3, "{kinds:?}");
    assert!(decode.iter().all(|k| k.2 == Parked), "{kinds:?}");
    for (doc, kind, state) in [
        ("perm-1", Permanent, Parked),
        ("perm-2", Permanent, Parked),
        ("reject-1", Rejected, Pending),
        ("reject-2", Rejected, Pending),
        ("trap-1", Trap, Pending),
        ("trap-2", Trap, Pending),
    ] {
        assert!(kinds.contains(&(doc, kind, state)), "{doc}: {kinds:?}");
    }
    let retryable: Vec<_> = errors.iter().filter(|e| e.state == Pending).collect();
    for e in &retryable {
        assert_eq!((e.series_attempts, e.total_attempts), (1, 1));
        assert_eq!(e.next_attempt_ms, Some(e.at_ms + 5 * MIN), "{e:?}");
    }
    for e in errors.iter().filter(|e| e.state == Parked) {
        assert_eq!(e.next_attempt_ms, None, "{e:?}");
    }

    // The schedule, under a clock the test moves.
    let first_due = retryable
        .iter()
        .map(|e| e.next_attempt_ms.unwrap())
        .min()
        .unwrap();
    let last_due = retryable
        .iter()
        .map(|e| e.next_attempt_ms.unwrap())
        .max()
        .unwrap();
    let clock = Clock::manual(first_due - 1);
    let mut q = queue(&config, &env, &manifest, &clock);
    assert!(
        q.run_batch().await.unwrap().is_empty(),
        "nothing due a millisecond early"
    );
    let mut at = last_due;
    for (step, delay) in [(1, 20 * MIN), (2, 45 * MIN), (3, 0)] {
        clock.set_ms(at);
        let retried = q.run_batch().await.unwrap();
        assert_eq!(retried.len(), 4, "step {step}: {retried:?}");
        for r in &retried {
            let kind = if r.doc_id.starts_with("trap") {
                Trap
            } else {
                Rejected
            };
            let expected = if step == 3 {
                Outcome::Parked(kind)
            } else {
                Outcome::Failed(kind)
            };
            assert_eq!(r.outcome, expected, "step {step}: {r:?}");
        }
        if step < 3 {
            clock.set_ms(at + delay - 1);
            assert!(
                q.run_batch().await.unwrap().is_empty(),
                "step {step}: nothing due early"
            );
            at += delay;
        }
    }
    clock.set_ms(at + 24 * 60 * MIN);
    assert!(
        q.run_batch().await.unwrap().is_empty(),
        "parked errors are never due"
    );

    let errors = errors_of(&env, "poison").await;
    assert_eq!(errors.len(), 9, "still one error per document");
    for e in &errors {
        if e.doc_id.starts_with("trap") || e.doc_id.starts_with("reject") {
            assert_eq!(
                (e.state, e.series_attempts, e.total_attempts),
                (Parked, 4, 4),
                "{e:?}"
            );
            assert_eq!(e.next_attempt_ms, None);
        } else {
            assert_eq!((e.state, e.total_attempts), (Parked, 1), "{e:?}");
        }
    }
    let rows = env.strings("SELECT doc_id FROM hostile_rows").await;
    assert_eq!(rows.len(), good, "retries wrote nothing of the poison");
}

fn stored(pillow: &str, doc: &str, domain: &str, offset: u64, backoff: Backoff) -> PillowError {
    let raw = json!({"document_id": doc, "document_type": "CommCareCase", "domain": domain, "document": {"n": offset}})
        .to_string();
    let change = pillowtop::change::decode(pillowtop::feed::Message {
        tp: TopicPartition::new("t", 0),
        offset,
        key: Some(doc.as_bytes().to_vec()),
        value: raw.into_bytes(),
        timestamp_ms: None,
    })
    .unwrap();
    let processor = ProcessorRef {
        name: "tagger".into(),
        version: "1.0.0+test".into(),
        backoff,
    };
    PillowError::of_change(
        pillow,
        &change,
        &processor,
        ErrorKind::Retryable,
        "not yet".into(),
        1_000,
    )
}

async fn record(env: &Env, errors: &[PillowError]) {
    let mut tx = env.store.db().begin().await.unwrap();
    pillowtop::errors::sql::record(&mut tx, errors)
        .await
        .unwrap();
    env.store.db().commit(tx).await.unwrap();
}

/// Domain A has 10,000 due errors and domain B 10: all of B's are retried
/// within the first 20 retries.
#[tokio::test(flavor = "multi_thread")]
async fn due_errors_are_served_round_robin_by_domain() {
    fair_in(Env::new().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn due_errors_are_served_round_robin_by_domain_in_postgres() {
    fair_in(Env::postgres().await).await;
}

async fn fair_in(env: Env) {
    let dir = tempfile::tempdir().unwrap();
    let manifest = tagger_manifest(dir.path());
    let now = Backoff {
        base_ms: 0,
        ..Backoff::default()
    };
    let mut errors: Vec<_> = (0..10_000)
        .map(|i| stored("fair", &format!("a{i:05}"), "a", i, now))
        .collect();
    errors.extend((0..10).map(|i| stored("fair", &format!("b{i}"), "b", 20_000 + i, now)));
    record(&env, &errors).await;
    let processor = load(&manifest);
    Sinks::from(env.store.clone())
        .ensure_outputs(processor.plugin().info())
        .await
        .unwrap();
    let config = PillowConfig {
        retry_batch_size: 5,
        ..PillowConfig::new("fair", &["t"], vec![manifest.clone()])
    };
    let clock = Clock::manual(2_000);
    let mut q = queue(&config, &env, &manifest, &clock);
    let mut first = Vec::new();
    for _ in 0..4 {
        first.extend(q.run_batch().await.unwrap());
    }
    assert_eq!(first.len(), 20);
    let b: Vec<_> = first
        .iter()
        .filter(|r| r.domain.as_deref() == Some("b"))
        .collect();
    assert_eq!(b.len(), 10, "all of b within the first 20: {first:?}");
    assert!(
        first.iter().all(|r| r.outcome == Outcome::Resolved),
        "{first:?}"
    );
    let rows = env
        .strings("SELECT doc_id FROM tagged ORDER BY doc_id")
        .await;
    assert_eq!(rows.len(), 20, "each retry wrote its change's row");
    let left = ops::counts(
        env.store.db(),
        &Filter {
            state: Some(ErrorState::Pending),
            ..Filter::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(left.total, 10_000 - 10);
}

/// A newer change of the document that passes the same processor resolves
/// its error (an older replayed one does not), and a retry of the stale
/// change that raced with it writes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_newer_change_resolves_the_error_and_a_stale_retry_writes_nothing() {
    stale_in(Env::new().await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_change_resolves_the_error_and_a_stale_retry_writes_nothing_in_postgres() {
    stale_in(Env::postgres().await).await;
}

async fn stale_in(env: Env) {
    let dir = tempfile::tempdir().unwrap();
    let manifest = tagger_manifest(dir.path());
    let processor = load(&manifest);
    let sinks = Sinks::from(env.store.clone());
    sinks
        .ensure_outputs(processor.plugin().info())
        .await
        .unwrap();
    record(&env, &[stored("stale", "d1", "a", 3, Backoff::default())]).await;
    let read = errors_of(&env, "stale").await.remove(0);
    let passed = |offset| Passed {
        pillow: "stale".into(),
        processor: "tagger".into(),
        changes: vec![("d1".into(), TopicPartition::new("t", 0), offset)],
    };
    let commit = |c: ChunkCommit| {
        let sql = sinks.sql.clone();
        async move { sql.commit("stale", &c, &|_| None).await.unwrap() }
    };
    // A replayed older change passing leaves the error open...
    commit(ChunkCommit {
        passed: vec![passed(1)],
        ..ChunkCommit::default()
    })
    .await;
    assert_eq!(errors_of(&env, "stale").await[0].state, ErrorState::Pending);
    // ...a newer one resolves it.
    commit(ChunkCommit {
        passed: vec![passed(7)],
        ..ChunkCommit::default()
    })
    .await;
    let resolved = errors_of(&env, "stale").await.remove(0);
    assert_eq!(resolved.state, ErrorState::Resolved);
    assert_eq!(resolved.next_attempt_ms, None);
    assert!(resolved.resolved_at_ms.is_some());
    // The queue had read the error before, and its retry passed: its
    // claim fails, and its row is not written.
    let row = WritePlan::build(vec![VersionedAction {
        action: pillowtop::action::Action::UpsertRows {
            table: "tagged".into(),
            rows: vec![vec![
                pillowtop::action::Cell::Text("d1".into()),
                pillowtop::action::Cell::Text("stale".into()),
                pillowtop::action::Cell::Text("t".into()),
                pillowtop::action::Cell::Integer(0),
                pillowtop::action::Cell::Integer(3),
                pillowtop::action::Cell::Integer(0),
            ]],
        },
        version: 3,
        origin: Origin::default(),
    }]);
    commit(ChunkCommit {
        plan: row,
        retries: vec![(
            0,
            RetryOutcome {
                read,
                failure: None,
                at_ms: 9_999,
            },
        )],
        ..ChunkCommit::default()
    })
    .await;
    assert!(
        env.strings("SELECT doc_id FROM tagged").await.is_empty(),
        "the stale row must not land"
    );
    let after = errors_of(&env, "stale").await.remove(0);
    assert_eq!(
        after.resolved_at_ms, resolved.resolved_at_ms,
        "resolved once"
    );
    // A later failure of the document starts a new series.
    let mut again = stored("stale", "d1", "a", 9, Backoff::default());
    again.at_ms = 50_000;
    record(&env, &[again]).await;
    let reopened = errors_of(&env, "stale").await.remove(0);
    assert_eq!(reopened.id, resolved.id);
    assert_eq!(
        (
            reopened.state,
            reopened.series_attempts,
            reopened.total_attempts,
            reopened.offset
        ),
        (ErrorState::Pending, 1, 1, 9)
    );
    assert_eq!(reopened.resolved_at_ms, None);
}

/// `retry = "republish"`: the stored change goes back on its topic with
/// `attempts` counted, and the pillow's normal path handles it.
#[tokio::test(flavor = "multi_thread")]
async fn republish_puts_the_change_back_on_its_topic_with_attempts() {
    let env = Env::new().await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = hostile_manifest(
        dir.path(),
        "fuel = 5_000_000",
        "[retry]\nbase_minutes = 0\n",
    );
    let lines = vec![
        change("r1", json!({"hostile": "retryable"})),
        change("ok", json!({"i": 1})),
    ];
    env.publish("t", 1, &lines).await;
    let config = PillowConfig {
        max_wait_ms: 20,
        retry: RetryMode::Republish,
        ..PillowConfig::new("repub", &["t"], vec![manifest.clone()])
    };
    let run = || async {
        Pillow::new(
            config.clone(),
            env.feed(),
            env.store.clone(),
            vec![load(&manifest)],
        )
        .await
        .unwrap()
        .run(caught_up(), CancellationToken::new())
        .await
        .unwrap()
    };
    run().await;
    let first = errors_of(&env, "repub").await.remove(0);
    assert_eq!((first.offset, first.total_attempts), (0, 1));
    let clock = Clock::manual(first.next_attempt_ms.unwrap());
    let mut q = queue(&config, &env, &manifest, &clock)
        .publishing(pillowtop::feed::publish::Publisher::new(&env.feed()).unwrap());
    let retried = q.run_batch().await.unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].outcome, Outcome::Republished);
    let waiting = errors_of(&env, "repub").await.remove(0);
    assert!(
        waiting.next_attempt_ms.unwrap() >= clock.now_ms() + MIN,
        "not due again until its republished change had time to come back: {waiting:?}"
    );
    assert!(q.run_batch().await.unwrap().is_empty());
    // The pillow reads the republished change (offset 2) and fails again.
    run().await;
    let second = errors_of(&env, "repub").await.remove(0);
    assert_eq!(
        (second.offset, second.total_attempts, second.series_attempts),
        (2, 2, 2)
    );
    let value: serde_json::Value = serde_json::from_slice(&second.change).unwrap();
    assert_eq!(value["attempts"], 1, "{value}");
    assert_eq!(value["document"]["hostile"], "retryable");
}

/// The queue runs inside `pillowtop run` as a supervised task: with a
/// zero base delay, a change that always fails is tried until its series
/// is used up, then parked; the run's summary says what the queue did.
#[tokio::test(flavor = "multi_thread")]
async fn the_queue_runs_inside_the_host_until_the_error_is_parked() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = hostile_manifest(
        dir.path(),
        "fuel = 5_000_000",
        "[retry]\nbase_minutes = 0\n",
    );
    let config_path = dir.path().join("pillowtop.toml");
    std::fs::write(
        &config_path,
        format!(
            "[feed]\ntype = \"embedded\"\npath = \"feed.db\"\n[store]\nurl = \"sqlite://store.db\"\n[runtime]\ncompile_cache_dir = {:?}\n\
             [[pillows]]\nname = \"inside\"\ntopics = [\"t\"]\nprocessors = [{manifest:?}]\nmax_wait_ms = 50\nretry_poll_seconds = 1\n",
            cache_dir()
        ),
    )
    .unwrap();
    let feed = pillowtop::feed::embedded::EmbeddedFeed::open(&dir.path().join("feed.db"))
        .await
        .unwrap();
    feed.create_topic("t", Some(1)).await.unwrap();
    feed.publish(
        "t",
        vec![
            (
                Some(b"x1".to_vec()),
                change("x1", json!({"hostile": "retryable"})).into_bytes(),
            ),
            (
                Some(b"g".to_vec()),
                change("g", json!({"i": 1})).into_bytes(),
            ),
            (
                Some(b"y1".to_vec()),
                change("y1", json!({"hostile": "fail-first"})).into_bytes(),
            ),
        ],
    )
    .await
    .unwrap();
    // Opened (and migrated) first: the host then finds it ready.
    let store = pillowtop::store::Store::open(&dir.path().join("store.db"))
        .await
        .unwrap();
    let config = pillowtop::config::HostConfig::load(&config_path).unwrap();
    let stop = pillowtop::process::Stop::new();
    let run = {
        let stop = stop.clone();
        tokio::spawn(
            async move { pillowtop::process::run(&config, Default::default(), &stop).await },
        )
    };
    let (mut parked, mut resolved) = (None, None);
    // Up to two minutes: the queue polls every second, and a loaded
    // machine running the other tests slows each try.
    for _ in 0..1200 {
        let errors = ops::list(store.db(), &Filter::default(), 10).await.unwrap();
        for e in errors {
            match e.state {
                ErrorState::Parked => parked = Some(e),
                ErrorState::Resolved => resolved = Some(e),
                ErrorState::Pending => {}
            }
        }
        if parked.is_some() && resolved.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    stop.request();
    let summary = run.await.unwrap().unwrap();
    let e = parked.expect("the error was parked within 120 s");
    assert_eq!(
        (e.doc_id.as_str(), e.series_attempts, e.total_attempts),
        ("x1", 4, 4),
        "{e:?}"
    );
    // The plugin saw `attempts` 1 on the retry, and passed.
    let y1 = resolved.expect("the fail-first change was resolved by its retry");
    assert_eq!((y1.doc_id.as_str(), y1.total_attempts), ("y1", 1), "{y1:?}");
    let rows = sqlx::query_scalar::<_, String>("SELECT doc_id FROM hostile_rows ORDER BY doc_id")
        .fetch_all(store.sqlite().unwrap())
        .await
        .unwrap();
    assert_eq!(rows, vec!["g", "y1"], "the retry wrote y1's row");
    assert_eq!(summary.retries.len(), 1, "{:?}", summary.retries);
    let outcomes = &summary.retries[0].outcomes;
    assert_eq!(outcomes.get("resolved"), Some(&1), "{outcomes:?}");
    assert_eq!(outcomes.get("failed"), Some(&2), "{outcomes:?}");
    assert_eq!(outcomes.get("parked"), Some(&1), "{outcomes:?}");
}

/// The due query is served by the partial index on a table of 1,000,000
/// errors of which 1% are due (PostgreSQL's own plan, by `EXPLAIN`).
#[tokio::test(flavor = "multi_thread")]
async fn the_due_query_uses_the_partial_index_on_a_million_errors_in_postgres() {
    let store = pg_store(&pg_schema("due")).await;
    let pool = store.postgres().unwrap();
    sqlx::raw_sql(
        r#"INSERT INTO pillow_errors (doc_id, pillow, processor, kind, message, topic, partition, "offset", domain,
               change, series_attempts, total_attempts, first_attempt_ms, last_attempt_ms, next_attempt_ms, state)
           SELECT 'd' || i, 'big', 'p', 'trap', 'm', 't', 0, i, 'domain-' || (i / 100 % 50), '\x7b7d'::bytea, 1, 1, 0, 0,
                  CASE i % 100 WHEN 0 THEN 1000 WHEN 1 THEN 4000000000000 END,
                  CASE WHEN i % 100 IN (0, 1) THEN 'pending' ELSE 'parked' END
           FROM generate_series(1, 1000000) AS i;
           ANALYZE pillow_errors;"#,
    )
    .execute(pool)
    .await
    .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN {}",
        pillowtop::errors::sql::due_query()
    )))
    .bind("big")
    .bind(2_000_i64)
    .bind(500_i64)
    .bind("")
    .fetch_all(pool)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains("pillow_errors_due"),
        "the due query must use the partial index:\n{plan}"
    );
    assert!(
        !plan.contains("Seq Scan on pillow_errors"),
        "no full scan:\n{plan}"
    );
    let due = pillowtop::errors::sql::due(store.db(), "big", 2_000, 500, "")
        .await
        .unwrap();
    assert_eq!(due.len(), 500);
    let domains: std::collections::BTreeSet<_> = due.iter().map(|e| e.domain.clone()).collect();
    assert_eq!(domains.len(), 50, "every domain served in the first batch");
}
