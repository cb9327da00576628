//! The Elasticsearch sink against the real Elasticsearch-API server `make
//! services` starts (osmem-server): documents land with their offsets as
//! external versions, a replay changes nothing, a refused document is a
//! pillow error for its change only, mappings are checked at startup, and
//! an outage holds the chunk until the server is back.
//!
//! Every test uses its own index prefix, so tests share the server.

use crate::support::*;
use pillowtop::action::IndexSpec;
use pillowtop::config::PillowConfig;
use pillowtop::feed::TopicPartition;
use pillowtop::generate::{GenOptions, Generator, Kind};
use pillowtop::pillow::{Pillow, RunOptions, RunSummary};
use pillowtop::sink::Sinks;
use pillowtop::sink::elastic::{ElasticSink, StoredDocument};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn config(name: &str, chunk_size: usize) -> PillowConfig {
    PillowConfig {
        chunk_size,
        max_wait_ms: 20,
        checkpoint_every: 1,
        ..PillowConfig::new(name, &["case-sql"], vec![case_search_manifest()])
    }
}

fn caught_up() -> RunOptions {
    RunOptions {
        until_caught_up: true,
        ..RunOptions::default()
    }
}

async fn pillow(env: &Env, es: &ElasticSink, config: &PillowConfig) -> Pillow {
    let sinks = Sinks::new(env.store.clone(), Some(es.clone()));
    Pillow::new(
        config.clone(),
        env.feed(),
        sinks,
        vec![load(&config.processors[0])],
    )
    .await
    .unwrap_or_else(|e| panic!("starting the pillow: {e}"))
}

async fn run(env: &Env, es: &ElasticSink, config: &PillowConfig) -> RunSummary {
    pillow(env, es, config)
        .await
        .run(caught_up(), CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("running the pillow: {e}"))
}

/// Every document of `ids` as stored now.
async fn snapshot(es: &ElasticSink, ids: &[String]) -> BTreeMap<String, Option<StoredDocument>> {
    let mut out = BTreeMap::new();
    for id in ids {
        out.insert(
            id.clone(),
            es.document(CASE_SEARCH_INDEX, id).await.unwrap(),
        );
    }
    out
}

/// A TCP proxy in front of the test Elasticsearch server, a sink through
/// it and one straight to the server (to observe), both with index prefix
/// `name`.
pub(crate) async fn es_proxy(name: &str) -> (Proxy, ElasticSink, ElasticSink) {
    let direct: std::net::SocketAddr = es_url()
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .expect("PILLOWTOP_ES_URL must be http://IP:PORT for this test");
    let proxy = Proxy::start(direct).await;
    let prefix = es_prefix(name);
    let through_proxy = es_sink_at(&format!("http://{}", proxy.addr), &prefix);
    (proxy, through_proxy, es_sink(&prefix))
}

/// `n` patient case changes with ids `{prefix}{i}` and names `n{i}`.
pub(crate) fn patients(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            change(
                &format!("{prefix}{i}"),
                json!({"_id": format!("{prefix}{i}"), "type": "patient", "name": format!("n{i}"), "case_json": {"i": i.to_string()}}),
            )
        })
        .collect()
}

async fn count(es: &ElasticSink) -> u64 {
    es.refresh(CASE_SEARCH_INDEX).await.unwrap();
    es.count(CASE_SEARCH_INDEX).await.unwrap()
}

/// Generated cases (updates, closings, deletions, several domains) land as
/// the latest version of each case, each at the offset of that change;
/// rewinding the checkpoint and replaying the whole topic changes no
/// document and records no error (the stale writes are version conflicts,
/// which count as done).
#[tokio::test(flavor = "multi_thread")]
async fn documents_land_with_offsets_as_versions_and_a_replay_changes_nothing() {
    let env = Env::new().await;
    let es = es_sink(&es_prefix("replay"));
    let mut g = Generator::new(GenOptions {
        seed: 11,
        domains: 4,
        kind: Kind::Case,
    });
    let lines: Vec<String> = (0..1500).map(|_| g.next_line()).collect();
    env.publish("case-sql", 3, &lines).await;
    let config = config("es-replay", 100);
    let summary = run(&env, &es, &config).await;
    assert_eq!(summary.messages, lines.len() as u64);
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);

    // Expected, from the input alone: the last change of each case decides.
    let mut last: HashMap<String, Value> = HashMap::new();
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap();
        last.insert(v["document_id"].as_str().unwrap().to_owned(), v);
    }
    let ids: Vec<String> = last.keys().cloned().collect();
    let before = snapshot(&es, &ids).await;
    let mut live = 0;
    let mut versions = std::collections::HashSet::new();
    for (id, change) in &last {
        let expect_live = change["is_deletion"] != true
            && case_search_indexes(change["domain"].as_str().unwrap());
        match &before[id] {
            None => assert!(!expect_live, "{id} is missing"),
            Some(doc) => {
                assert!(expect_live, "{id} should not be in the index: {doc:?}");
                live += 1;
                assert_eq!(doc.source["name"], change["document"]["name"], "{id}");
                assert!(doc.source.get("_id").is_none());
                assert_eq!(
                    doc.source["case_properties"][0],
                    json!({"key": "@case_id", "value": id})
                );
                versions.insert(doc.version);
            }
        }
    }
    assert!(live > 100, "too few live cases to mean anything: {live}");
    assert_eq!(count(&es).await, live);
    // Versions are feed offsets: below the end offset of the largest partition.
    let partitions: Vec<_> = (0..3).map(|p| TopicPartition::new("case-sql", p)).collect();
    let ends = end_total(&env.feed(), &partitions).await;
    assert!(versions.iter().all(|v| *v < ends), "{versions:?}");

    // Rewind and replay everything.
    let rewind: Vec<_> = (0..3)
        .map(|p| (TopicPartition::new("case-sql", p), 0))
        .collect();
    env.store
        .set_checkpoints("es-replay", &rewind)
        .await
        .unwrap();
    let replay = run(&env, &es, &config).await;
    assert_eq!(replay.messages, lines.len() as u64, "the whole topic again");
    assert!(replay.errors.is_empty(), "{:?}", replay.errors);
    assert!(
        recent_errors(&env.store, "es-replay", 5)
            .await
            .unwrap()
            .is_empty()
    );
    let after = snapshot(&es, &ids).await;
    for id in &ids {
        assert_eq!(after[id], before[id], "{id} changed on replay");
    }
    assert_eq!(count(&es).await, live);
}

/// A document the server refuses (a string where the mapping says
/// boolean) becomes a pillow error of kind `rejected` for that change,
/// with the server's reason and the raw change; the rest of its chunk
/// lands and the checkpoint moves on. Deleting a document that was never
/// indexed is no error.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_document_is_a_pillow_error_for_its_change_only() {
    let env = Env::new().await;
    let es = es_sink(&es_prefix("refused"));
    let n = 30;
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let closed = if i == 17 { json!("maybe") } else { json!(false) };
            change(
                &format!("r{i}"),
                json!({"_id": format!("r{i}"), "type": "patient", "name": format!("n{i}"), "closed": closed, "case_json": {}}),
            )
        })
        .collect();
    // And a deletion of a document that was never indexed: success.
    let mut published = lines.clone();
    published.push(
        json!({"document_id": "ghost", "document_type": "CommCareCase", "domain": "demo-0", "is_deletion": true})
            .to_string(),
    );
    env.publish("case-sql", 2, &published).await;
    let config = config("es-refused", 50);
    let summary = run(&env, &es, &config).await;
    assert_eq!(
        summary.errors.get(&pillowtop::errors::ErrorKind::Rejected),
        Some(&1),
        "{:?}",
        summary.errors
    );
    assert_eq!(count(&es).await, n as u64 - 1);
    assert!(
        es.document(CASE_SEARCH_INDEX, "r17")
            .await
            .unwrap()
            .is_none()
    );
    let errors = recent_errors(&env.store, "es-refused", 10).await.unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(e.doc_id, "r17");
    assert_eq!(e.kind.as_str(), "rejected");
    assert_eq!(e.processor, "case-search");
    assert!(e.message.contains("closed"), "{}", e.message);
    assert!(e.message.contains("case-search"), "{}", e.message);
    assert_eq!(e.change, lines[17].as_bytes(), "the raw change is kept");
    assert!(e.next_attempt_ms.is_some(), "a rejection is retried later");
    let saved = env.checkpointed("es-refused").await;
    assert_eq!(
        saved,
        n as u64 + 1,
        "the checkpoint moves past the refused change"
    );
}

/// An index that exists with a field mapped as another type than the
/// plugin declares stops the pillow at startup with the field, both types
/// and what to do; an index that merely lacks declared fields gets them.
#[tokio::test(flavor = "multi_thread")]
async fn index_mappings_are_checked_at_startup() {
    let env = Env::new().await;
    let conflicting = es_sink(&es_prefix("conflict"));
    conflicting
        .ensure_index(&IndexSpec {
            name: CASE_SEARCH_INDEX.into(),
            mappings: r#"{"properties":{"closed":{"type":"keyword"}}}"#.into(),
            aliases: vec![],
        })
        .await
        .unwrap();
    let sinks = Sinks::new(env.store.clone(), Some(conflicting.clone()));
    let err = match Pillow::new(
        config("es-conflict", 10),
        env.feed(),
        sinks,
        vec![load(&case_search_manifest())],
    )
    .await
    {
        Ok(_) => panic!("a conflicting mapping must not start"),
        Err(e) => e.to_string(),
    };
    for needle in [
        "closed",
        "`keyword`",
        "`boolean`",
        &conflicting.index_name(CASE_SEARCH_INDEX),
        "reindex",
    ] {
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }

    let partial = es_sink(&es_prefix("partial"));
    partial
        .ensure_index(&IndexSpec {
            name: CASE_SEARCH_INDEX.into(),
            mappings: r#"{"properties":{"owner_id":{"type":"keyword"}}}"#.into(),
            aliases: vec![],
        })
        .await
        .unwrap();
    pillow(&env, &partial, &config("es-partial", 10)).await;
    let mapping = partial.mapping(CASE_SEARCH_INDEX).await.unwrap();
    assert_eq!(mapping["properties"]["closed"]["type"], "boolean");
    assert_eq!(mapping["properties"]["case_properties"]["type"], "nested");
}

/// The plugin's alias (`case_search`, prefixed like its index) points at
/// its index and serves its documents; an alias already pointing at another
/// index stops the start, naming both and what to do, instead of letting
/// readers of the alias see two indices.
#[tokio::test(flavor = "multi_thread")]
async fn the_alias_points_at_the_index_and_a_taken_alias_stops_the_start() {
    let env = Env::new().await;
    let es = es_sink(&es_prefix("alias"));
    env.publish("case-sql", 1, &patients("al", 3)).await;
    run(&env, &es, &config("es-alias", 10)).await;
    es.refresh(CASE_SEARCH_INDEX).await.unwrap();
    let through_alias = es
        .document("case_search", "al1")
        .await
        .unwrap()
        .expect("the document read through the alias");
    assert_eq!(through_alias.source["doc_id"], "al1");
    assert_eq!(through_alias.source["name"], "n1");
    // A second start finds the alias in place and leaves it.
    run(&env, &es, &config("es-alias", 10)).await;

    let taken = es_sink(&es_prefix("alias-taken"));
    taken
        .ensure_index(&IndexSpec {
            name: "case-search-old".into(),
            mappings: "{}".into(),
            aliases: vec!["case_search".into()],
        })
        .await
        .unwrap();
    let sinks = Sinks::new(env.store.clone(), Some(taken.clone()));
    let err = match Pillow::new(
        config("es-alias-taken", 10),
        env.feed(),
        sinks,
        vec![load(&case_search_manifest())],
    )
    .await
    {
        Ok(_) => panic!("an alias of another index must not be taken over"),
        Err(e) => e.to_string(),
    };
    for needle in [
        taken.index_name("case_search"),
        taken.index_name("case-search-old"),
        taken.index_name(CASE_SEARCH_INDEX),
        "POST /_aliases".to_string(),
    ] {
        assert!(err.contains(&needle), "expected {needle:?} in: {err}");
    }
}

/// The same through the CLI: `pillowtop run` with `[elasticsearch]` in
/// the config writes the documents there and says so; a mapping conflict
/// exits non-zero with the message, and the password in the URL never
/// shows.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_writes_to_elasticsearch_and_reports_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = es_prefix("cli");
    let url = es_url().replacen("://", "://pillow:s3cret@", 1);
    let config = dir.path().join("pillowtop.toml");
    std::fs::write(
        &config,
        format!(
            "[feed]\ntype = \"embedded\"\npath = \"feed.db\"\n[store]\nurl = \"sqlite://store.db\"\n\
             [elasticsearch]\nurl = {url:?}\nindex_prefix = {prefix:?}\n\
             [runtime]\ncompile_cache_dir = {:?}\n[admin]\nenabled = false\n[reload]\nwatch = false\n\
             [[pillows]]\nname = \"cs\"\ntopics = [\"case-sql\"]\nprocessors = [{:?}]\nchunk_size = 100\n",
            cache_dir(),
            case_search_manifest()
        ),
    )
    .unwrap();
    let gen_out = bin()
        .args(["gen", "--kind", "case", "--count", "300", "--seed", "3"])
        .output()
        .unwrap();
    assert!(gen_out.status.success());
    let mut publish = bin()
        .arg("--config")
        .arg(&config)
        .args(["publish", "--topic", "case-sql", "--partitions", "2"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        publish
            .stdin
            .take()
            .unwrap()
            .write_all(&gen_out.stdout)
            .unwrap();
    }
    assert!(publish.wait().unwrap().success());
    let out = bin()
        .arg("--config")
        .arg(&config)
        .args(["--log", "warn", "run", "--until-caught-up"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let es = es_sink(&prefix);
    let n = count(&es).await;
    assert!(n > 0);
    assert!(
        stdout.contains(&format!("index {prefix}{CASE_SEARCH_INDEX}: {n} documents")),
        "{stdout}"
    );
    assert!(!stdout.contains("s3cret") && !stderr.contains("s3cret"));

    // Now break the index's mapping: the next start refuses, saying why.
    let conflict_prefix = es_prefix("cli-conflict");
    es_sink(&conflict_prefix)
        .ensure_index(&IndexSpec {
            name: CASE_SEARCH_INDEX.into(),
            mappings: r#"{"properties":{"case_properties":{"type":"keyword"}}}"#.into(),
            aliases: vec![],
        })
        .await
        .unwrap();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&prefix, &conflict_prefix);
    std::fs::write(&config, text).unwrap();
    let out = bin()
        .arg("--config")
        .arg(&config)
        .args(["run", "--until-caught-up"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("case_properties") && stderr.contains("nested"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

/// The server goes away mid-run (every connection cut, new ones refused)
/// for a few seconds and comes back. The pillow holds its chunk and
/// retries with backoff; `status` names the sink it waits for; nothing
/// lands meanwhile and the checkpoint never passes a document that is not
/// in the index. Afterwards every document is there, at its offset, with
/// no pillow error.
#[tokio::test(flavor = "multi_thread")]
async fn an_elasticsearch_outage_holds_the_chunk_and_resumes_by_itself() {
    let (mut proxy, through_proxy, observer) = es_proxy("outage").await;
    let env = Env::new().await;
    let n = 3000;
    env.publish("case-sql", 2, &patients("o", n)).await;
    let config = config("es-outage", 50);
    // A process record, as `pillowtop run` makes, for status to show.
    env.store
        .register_process(&pillowtop::store::ProcessRecord {
            pillow: "es-outage".into(),
            process_num: 0,
            pid: std::process::id(),
            host: "test".into(),
            admin_url: None,
            started_at_ms: 0,
            heartbeat_at_ms: pillowtop::time::now_ms(),
            stopped_at_ms: None,
            waiting: None,
        })
        .await
        .unwrap();
    let pillow = pillow(&env, &through_proxy, &config).await;
    let stop = CancellationToken::new();
    let run = tokio::spawn(pillow.run(RunOptions::default(), stop.clone()));

    let deadline = Instant::now() + Duration::from_secs(90);
    while count(&observer).await < 300 {
        assert!(Instant::now() < deadline, "no progress before the outage");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.down().await;
    let during = count(&observer).await;
    assert!(during < n as u64, "the outage came too late: publish more");
    let waiting = loop {
        let processes = env.store.processes().await.unwrap();
        if let Some(w) = processes.iter().find_map(|p| p.waiting.clone()) {
            break w;
        }
        assert!(Instant::now() < deadline, "status never showed the outage");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(waiting.sink.contains("elasticsearch"), "{waiting:?}");
    assert!(
        waiting.sink.contains(&proxy.addr.to_string()),
        "{waiting:?}"
    );
    assert!(waiting.since_ms > 0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!run.is_finished(), "the pillow stopped: {:?}", run.await);
    assert_eq!(count(&observer).await, during, "nothing lands while down");
    let checkpointed = env.checkpointed("es-outage").await;
    assert!(
        checkpointed <= during,
        "checkpoints cover {checkpointed} changes but only {during} documents landed"
    );
    let status = pillowtop::status::render(
        &pillowtop::status::gather(
            &[&config],
            &env.feed(),
            &env.store,
            pillowtop::wasm::DEFAULT_MAX_COMPONENT_BYTES,
        )
        .await
        .unwrap(),
    );
    assert!(status.contains("WAITING for elasticsearch"), "{status}");

    proxy.up().await;
    while count(&observer).await < n as u64 {
        assert!(
            Instant::now() < deadline,
            "{} of {n} documents after the server came back",
            count(&observer).await
        );
        assert!(!run.is_finished(), "the pillow stopped after the outage");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.messages, n as u64, "each change read once");
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert!(
        recent_errors(&env.store, "es-outage", 5)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        env.store
            .processes()
            .await
            .unwrap()
            .iter()
            .all(|p| p.waiting.is_none()),
        "the outage is cleared from status"
    );
    let saved = env.checkpointed("es-outage").await;
    assert_eq!(saved, n as u64, "checkpoints at the end");
    for i in [0, n / 2, n - 1] {
        let doc = observer
            .document(CASE_SEARCH_INDEX, &format!("o{i}"))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("o{i} missing"));
        assert_eq!(doc.source["name"], format!("n{i}"));
    }
}

/// A pillow started while Elasticsearch is unreachable waits for it (with
/// backoff, reading nothing) instead of exiting, then starts by itself and
/// writes every change once the server is back; a shutdown while it waits
/// ends the wait with no pillow.
#[tokio::test(flavor = "multi_thread")]
async fn a_pillow_started_before_elasticsearch_waits_for_it() {
    let (mut proxy, through_proxy, observer) = es_proxy("late").await;
    proxy.down().await;
    let env = Env::new().await;
    let n = 200;
    env.publish("case-sql", 2, &patients("l", n)).await;
    let config = config("es-late", 50);
    let sinks = || Sinks::new(env.store.clone(), Some(through_proxy.clone()));

    // Shut down while waiting: no pillow, no error, promptly.
    assert_shutdown_ends_wait(|shutdown| {
        let (config, feed, sinks) = (config.clone(), env.feed(), sinks());
        let processors = vec![load(&config.processors[0])];
        async move { Pillow::new_when_reachable(config, feed, sinks, processors, &shutdown).await }
    })
    .await;

    // Start while down, then bring the server up.
    let shutdown = CancellationToken::new();
    let feed = env.feed();
    let processors = vec![load(&config.processors[0])];
    let starting = tokio::spawn({
        let config = config.clone();
        let sinks = sinks();
        let shutdown = shutdown.clone();
        async move { Pillow::new_when_reachable(config, feed, sinks, processors, &shutdown).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !starting.is_finished(),
        "startup gave up while the sink was down: {:?}",
        starting
            .await
            .map(|r| r.map(|p| p.is_some()).map_err(|e| e.to_string()))
    );
    assert_eq!(env.checkpointed("es-late").await, 0, "nothing read yet");
    proxy.up().await;
    let pillow = tokio::time::timeout(Duration::from_secs(30), starting)
        .await
        .expect("startup still waiting 30 s after the server came back")
        .unwrap()
        .unwrap_or_else(|e| panic!("startup failed after the server came back: {e}"))
        .expect("startup returned no pillow without a shutdown");

    let summary = pillow
        .run(caught_up(), CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("running the pillow: {e}"));
    assert_eq!(summary.messages, n as u64);
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert_eq!(count(&observer).await, n as u64);
}
