//! Document sources: changes that carry only metadata (as CommCare's do),
//! their documents read from PostgreSQL, one database or CommCare's
//! sharded layout over several, in one query per chunk and database.

use crate::support::*;
use pillowtop::config::PillowConfig;
use pillowtop::config::source::DocumentSourceConfig;
use pillowtop::errors::{ErrorKind, ErrorState};
use pillowtop::generate::{GenOptions, Generator, Kind};
use pillowtop::pillow::{Pillow, RunOptions};
use pillowtop::shard::ShardMap;
use serde_json::Value;
use std::collections::HashMap;
use tokio_util::sync::CancellationToken;

/// Case changes (ids unique), with their documents.
fn cases(n: usize) -> Vec<Value> {
    let mut g = Generator::new(GenOptions {
        seed: 11,
        domains: 3,
        kind: Kind::Case,
    });
    let mut seen = std::collections::HashSet::new();
    (0..n * 2)
        .map(|_| serde_json::from_str::<Value>(&g.next_line()).unwrap())
        .filter(|c| c["is_deletion"] != true && c["document"].is_object())
        .filter(|c| seen.insert(c["document_id"].as_str().unwrap().to_owned()))
        .take(n)
        .collect()
}

fn without_document(change: &Value) -> String {
    let mut c = change.clone();
    c.as_object_mut().unwrap().remove("document");
    c.to_string()
}

fn source(toml: &str) -> DocumentSourceConfig {
    toml::from_str(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"))
}

/// Every case of `changes` stored the same in `env` as in `control`;
/// returns how many are live documents (not absent, not a tombstone).
async fn assert_same_documents(env: &Env, control: &Env, changes: &[Value]) -> usize {
    let mut live = 0;
    for c in changes {
        let id = c["document_id"].as_str().unwrap();
        let got = env.sql().document(CASE_SEARCH_INDEX, id).await.unwrap();
        let expected = control.sql().document(CASE_SEARCH_INDEX, id).await.unwrap();
        // The same but for `@indexed_on`, each run's processing time.
        let unstamped = |stored: &Option<(Option<String>, u64)>| {
            stored.as_ref().map(|(doc, version)| {
                let doc = doc.as_ref().map(|d| {
                    let mut v: Value = serde_json::from_str(d).unwrap();
                    v.as_object_mut().unwrap().remove("@indexed_on");
                    v
                });
                (doc, *version)
            })
        };
        assert_eq!(unstamped(&got), unstamped(&expected), "document {id}");
        live += usize::from(matches!(got, Some((Some(_), _))));
    }
    live
}

/// Run `config`'s pillow over `feed` into `store` until caught up.
async fn try_run(
    feed: pillowtop::feed::Feed,
    store: pillowtop::store::Store,
    config: PillowConfig,
) -> Result<pillowtop::pillow::RunSummary, pillowtop::pillow::RunError> {
    let processors = config.processors.iter().map(|m| load(m)).collect();
    Pillow::new(config, feed, store, processors)
        .await
        .unwrap()
        .run(
            RunOptions {
                until_caught_up: true,
                ..RunOptions::default()
            },
            CancellationToken::new(),
        )
        .await
}

async fn run(env: &Env, config: &PillowConfig) -> pillowtop::pillow::RunSummary {
    try_run(env.feed(), env.store.clone(), config.clone())
        .await
        .unwrap()
}

/// 300 metadata-only case changes whose documents live in two shard
/// databases (CommCare's hash and map) land exactly as the same changes
/// carrying their documents inline; each database is asked once per
/// chunk, for its own ids only. An inline document wins over the
/// source's; a deletion needs none; a change whose document is in no
/// database is a `missing` pillow error, which the retry queue resolves
/// once the document is written.
#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_reads_its_documents_from_commcares_shards_in_one_query_per_database() {
    let (a, b) = (
        SourceDb::create("src_a").await,
        SourceDb::create("src_b").await,
    );
    let shards: ShardMap =
        toml::from_str::<HashMap<String, ShardMap>>("m = { a = [0, 1], b = [2, 3] }")
            .unwrap()
            .remove("m")
            .unwrap();
    let changes = cases(300);
    for c in &changes {
        let id = c["document_id"].as_str().unwrap();
        let db = if shards.database_of(id) == "a" {
            &a
        } else {
            &b
        };
        db.insert(id, &c["document"]).await;
    }
    // An inline document that differs from the stored one, a deletion
    // without one, and a change whose document is nowhere.
    let inline = &changes[0];
    let mut newer = inline.clone();
    newer["document"]["name"] = Value::String("inline wins".into());
    let deleted = changes[1]["document_id"].as_str().unwrap().to_owned();
    let deletion = serde_json::json!({"document_id": deleted, "document_type": "CommCareCase", "domain": changes[1]["domain"], "is_deletion": true}).to_string();
    let missing = serde_json::json!({"document_id": "not-written-yet", "document_type": "CommCareCase", "domain": "demo-0"});

    let mut metadata: Vec<String> = changes.iter().map(without_document).collect();
    metadata.push(newer.to_string());
    metadata.push(deletion.clone());
    metadata.push(missing.to_string());
    let mut control_lines: Vec<String> = changes.iter().map(Value::to_string).collect();
    control_lines.push(newer.to_string());
    control_lines.push(deletion);

    let sharded = source(&format!(
        "type = \"postgres\"\nquery = \"SELECT id, doc FROM fetch_docs($1)\"\n[shards]\na = [0, 1]\nb = [2, 3]\n[databases]\na = {:?}\nb = {:?}\n",
        a.url, b.url
    ));
    let env = Env::new().await;
    env.publish("case-sql", 1, &metadata).await;
    let config = PillowConfig {
        chunk_size: 1000,
        max_wait_ms: 50,
        document_source: Some(sharded),
        ..PillowConfig::new("cs", &["case-sql"], vec![case_search_manifest()])
    };
    let summary = run(&env, &config).await;
    assert_eq!(summary.messages, metadata.len() as u64);

    let control = Env::new().await;
    control.publish("case-sql", 1, &control_lines).await;
    let plain = PillowConfig {
        document_source: None,
        ..config.clone()
    };
    run(&control, &plain).await;

    let live = assert_same_documents(&env, &control, &changes).await;
    assert!(
        live > 100,
        "only {live} cases landed: the test proves little"
    );
    let first = env
        .sql()
        .document(CASE_SEARCH_INDEX, inline["document_id"].as_str().unwrap())
        .await
        .unwrap()
        .and_then(|(d, _)| d)
        .expect("the inline change landed");
    assert!(first.contains("inline wins"), "{first}");
    let gone = env
        .sql()
        .document(CASE_SEARCH_INDEX, &deleted)
        .await
        .unwrap();
    assert!(!matches!(gone, Some((Some(_), _))), "{gone:?}");

    // One chunk: one query per database, for that database's ids only
    // (the inline change and the deletion are not asked for).
    let (ca, cb) = (a.calls().await, b.calls().await);
    assert_eq!((ca.0, cb.0), (1, 1), "queries per database");
    let asked = changes[1..]
        .iter()
        .filter(|c| c["document_id"] != deleted.as_str())
        .count() as i64
        + 1;
    assert_eq!(ca.1 + cb.1, asked, "ids asked for: {ca:?} {cb:?}");
    assert!(
        ca.1 > 100 && cb.1 > 100,
        "both shards hold some: {ca:?} {cb:?}"
    );

    let errors = recent_errors(&env.store, "cs", 10).await.unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(
        (e.doc_id.as_str(), e.kind, e.state, e.processor.as_str()),
        (
            "not-written-yet",
            ErrorKind::Missing,
            ErrorState::Pending,
            ""
        )
    );
    assert!(e.message.contains("DocumentMissingError"), "{}", e.message);

    // Written later: the queue reads it and the error is resolved.
    let doc = serde_json::json!({"_id": "not-written-yet", "domain": "demo-0", "type": "patient", "name": "late", "closed": false, "case_json": {}});
    let db = if shards.database_of("not-written-yet") == "a" {
        &a
    } else {
        &b
    };
    db.insert("not-written-yet", &doc).await;
    let queue = pillowtop::retry::RetryQueue::new(
        &config,
        pillowtop::sink::Sinks::from(env.store.clone()),
        vec![load(&case_search_manifest())],
        std::sync::Arc::new(pillowtop::metrics::Metrics::new()),
        CancellationToken::new(),
    )
    .reading(
        pillowtop::source::DocumentSource::open(config.document_source.as_ref().unwrap()).unwrap(),
    )
    .with_clock(pillowtop::time::Clock::manual(
        pillowtop::time::now_ms() + 3_600_000,
    ));
    let summary = queue.drain(&CancellationToken::new()).await.unwrap();
    assert_eq!(summary.outcomes.get("resolved"), Some(&1), "{summary:?}");
    let landed = env
        .sql()
        .document(CASE_SEARCH_INDEX, "not-written-yet")
        .await
        .unwrap()
        .and_then(|(d, _)| d)
        .expect("the retried change landed");
    assert!(landed.contains("late"), "{landed}");
    a.remove().await;
    b.remove().await;
}

/// One unsharded database; a document source that is down holds the
/// chunk (nothing is recorded as missing), and the chunk lands once it is
/// back; a query that cannot work stops the pillow with the database's
/// own error.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_source_holds_the_chunk_and_a_bad_query_stops_the_pillow() {
    let db = SourceDb::create("src_one").await;
    let changes = cases(20);
    for c in &changes {
        db.insert(c["document_id"].as_str().unwrap(), &c["document"])
            .await;
    }
    let lines: Vec<String> = changes.iter().map(without_document).collect();
    let env = Env::new().await;
    env.publish("case-sql", 1, &lines).await;

    // Through a proxy that is down at first.
    let target = pg_host_port(&db.url).parse().unwrap();
    let mut proxy = Proxy::start(target).await;
    proxy.down().await;
    let host_port = pg_host_port(&db.url);
    assert!(
        db.url.contains(&host_port),
        "PILLOWTOP_PG_URL names its port: {}",
        db.url
    );
    let proxied = db.url.replacen(&host_port, &proxy.addr.to_string(), 1);
    let config = PillowConfig {
        chunk_size: 1000,
        max_wait_ms: 50,
        document_source: Some(source(&format!(
            "type = \"postgres\"\nquery = \"SELECT id, doc FROM docs WHERE id = ANY($1)\"\nurl = {proxied:?}\n"
        ))),
        ..PillowConfig::new("one", &["case-sql"], vec![case_search_manifest()])
    };
    let running = tokio::spawn(try_run(env.feed(), env.store.clone(), config.clone()));
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(!running.is_finished(), "the pillow waits for its source");
    assert_eq!(env.checkpointed("one").await, 0, "nothing checkpointed");
    assert!(
        recent_errors(&env.store, "one", 10)
            .await
            .unwrap()
            .is_empty()
    );
    proxy.up().await;
    let summary = running.await.unwrap().unwrap();
    assert_eq!(summary.changes, 20);
    assert!(
        recent_errors(&env.store, "one", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(env.checkpointed("one").await, 20);

    // A query naming a table that does not exist.
    let env = Env::new().await;
    env.publish("case-sql", 1, &lines).await;
    let bad = PillowConfig {
        document_source: Some(source(&format!(
            "type = \"postgres\"\nquery = \"SELECT id, doc FROM no_such_table WHERE id = ANY($1)\"\nurl = {:?}\n",
            db.url
        ))),
        ..config.clone()
    };
    let e = try_run(env.feed(), env.store.clone(), bad)
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("no_such_table"), "{text}");
    assert!(text.contains("document source"), "{text}");
    assert_eq!(env.checkpointed("one").await, 0);
    db.remove().await;
}

/// An Elasticsearch index as the source: one multi-get per chunk; what
/// lands is what the same changes with inline documents give; an id the
/// index lacks is a `missing` pillow error.
#[tokio::test(flavor = "multi_thread")]
async fn an_elasticsearch_index_serves_a_chunk_in_one_multi_get() {
    use elasticsearch::http::request::JsonBody;
    use elasticsearch::http::transport::Transport;
    use elasticsearch::params::Refresh;
    let index = es_prefix("source").to_lowercase() + "cases";
    let client = elasticsearch::Elasticsearch::new(Transport::single_node(&es_url()).unwrap());
    // Stored, not indexed (as case-search's own mapping does): the
    // generated cases' properties change type from case to case.
    let created = client
        .indices()
        .create(elasticsearch::indices::IndicesCreateParts::Index(&index))
        .body(serde_json::json!({"mappings": {"dynamic": false}}))
        .send()
        .await
        .unwrap();
    assert!(created.status_code().is_success(), "{created:?}");
    let changes = cases(50);
    let mut body: Vec<JsonBody<Value>> = Vec::new();
    for c in &changes {
        // Elasticsearch refuses `_id` inside a document; the source puts
        // it back from the hit's id.
        let mut doc = c["document"].clone();
        doc.as_object_mut().unwrap().remove("_id");
        body.push(serde_json::json!({"index": {"_id": c["document_id"]}}).into());
        body.push(doc.into());
    }
    let reply = client
        .bulk(elasticsearch::BulkParts::Index(&index))
        .body(body)
        .refresh(Refresh::True)
        .send()
        .await
        .unwrap();
    let status = reply.status_code();
    let text = reply.text().await.unwrap();
    assert!(
        status.is_success() && text.contains("\"errors\":false"),
        "{status}: {text}"
    );

    let mut lines: Vec<String> = changes.iter().map(without_document).collect();
    lines.push(
        serde_json::json!({"document_id": "not-indexed", "document_type": "CommCareCase", "domain": "demo-0"})
            .to_string(),
    );
    let env = Env::new().await;
    env.publish("case-sql", 1, &lines).await;
    let config = PillowConfig {
        chunk_size: 1000,
        max_wait_ms: 50,
        document_source: Some(source(&format!(
            "type = \"elasticsearch\"\nurl = {:?}\nindex = {index:?}\n",
            es_url()
        ))),
        ..PillowConfig::new("es", &["case-sql"], vec![case_search_manifest()])
    };
    let summary = run(&env, &config).await;
    assert_eq!(summary.messages, lines.len() as u64);

    let control = Env::new().await;
    let inline: Vec<String> = changes.iter().map(Value::to_string).collect();
    control.publish("case-sql", 1, &inline).await;
    run(
        &control,
        &PillowConfig {
            document_source: None,
            ..config.clone()
        },
    )
    .await;
    let live = assert_same_documents(&env, &control, &changes).await;
    assert!(live > 10, "only {live} cases landed");
    let errors = recent_errors(&env.store, "es", 10).await.unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        (errors[0].doc_id.as_str(), errors[0].kind),
        ("not-indexed", ErrorKind::Missing)
    );
}
