//! Host lookups: resources the host declares (a PostgreSQL query, an
//! Elasticsearch index, a table of its store) read by plugins through the
//! `lookup` import, cached with a bound and a TTL, prefetched a chunk at
//! a time, timed against the call's deadline; and the unknown-users
//! plugin on them, end to end over Kafka with its forms read from a
//! PostgreSQL document source.

use crate::kafka::publish_lines;
use crate::support::*;
use pillowtop::action::{Action, IndexSpec};
use pillowtop::config::lookup::LookupConfig;
use pillowtop::errors::{ErrorKind, ErrorState};
use pillowtop::lookup::{LookupError, Lookups};
use pillowtop::manifest::Manifest;
use pillowtop::metrics::Metrics;
use pillowtop::resource::Resources;
use pillowtop::sink::{Origin, VersionedAction, WritePlan};
use pillowtop::store::Store;
use pillowtop::wasm::{Failure, Runtime};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn configs(text: &str) -> BTreeMap<String, LookupConfig> {
    toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// `get` on a blocking thread, as a plugin call makes it.
async fn get(
    r: &Arc<Resources>,
    resource: &str,
    key: &str,
    within: Duration,
) -> Result<Option<String>, LookupError> {
    let (r, resource, key) = (r.clone(), resource.to_owned(), key.to_owned());
    tokio::task::spawn_blocking(move || r.get(&resource, &key, Instant::now() + within))
        .await
        .unwrap()
}

/// (calls, cache hits, queries, errors) of one resource.
fn stats(r: &Resources, name: &str) -> (u64, u64, u64, u64) {
    let (_, s) = r.stats().find(|(n, _)| *n == name).unwrap();
    (s.calls(), s.hits(), s.queries(), s.errors())
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Index `documents` (id, JSON) into `index` of `es`, creating it.
async fn seed_index(
    es: &pillowtop::sink::elastic::ElasticSink,
    index: &str,
    documents: &[(&str, Value)],
) {
    es.ensure_index(&IndexSpec {
        name: index.into(),
        mappings: "{}".into(),
        aliases: vec![],
    })
    .await
    .unwrap();
    let plan = WritePlan::build(
        documents
            .iter()
            .map(|(id, doc)| VersionedAction {
                action: Action::IndexDocument {
                    index: index.into(),
                    id: (*id).into(),
                    document: doc.to_string(),
                },
                version: 1,
                origin: Origin::default(),
            })
            .collect(),
    );
    assert!(es.write(&plan.documents).await.unwrap().is_empty());
}

/// The unknown-users manifest with `config` (and the grants it needs) in
/// place of its own, its component where `make plugins` put it.
fn unknown_users_manifest(
    dir: &Path,
    topic: &str,
    lookups: [&str; 2],
    timeout_ms: u64,
) -> Manifest {
    let wasm = component("plugins/unknown-users/unknown_users.wasm");
    let text = format!(
        "name = \"unknown-users\"\nversion = \"test\"\ncomponent = {wasm:?}\n\
         [limits]\nfuel = 5_000_000\nmemory_mb = 16\ntimeout_ms = {timeout_ms}\n\
         [subscription]\ntopics = [{topic:?}]\n\
         [capabilities]\nindices = [\"users\"]\nlookups = [{:?}, {:?}]\n\
         [prefetch]\n{:?} = [\"/form/meta/userID\"]\n{:?} = [\"/form/meta/userID\"]\n\
         [config]\nusers_lookup = {:?}\nusers_index_lookup = {:?}\n",
        lookups[0], lookups[1], lookups[0], lookups[1], lookups[0], lookups[1]
    );
    let path = dir.join(format!("unknown-users-{}.toml", lookups[0]));
    std::fs::write(&path, &text).unwrap();
    Manifest::load(&path).unwrap()
}

/// A form change with its document inline.
fn form(id: &str, user_id: &str, topic: &str) -> pillowtop::change::Change {
    let doc = json!({"_id": id, "domain": "demo", "doc_type": "XFormInstance",
        "form": {"meta": {"userID": user_id, "username": format!("name-{user_id}")}}});
    let line = json!({"document_id": id, "document_type": "XFormInstance", "domain": "demo", "document": doc});
    pillowtop::change::decode(pillowtop::feed::Message {
        tp: pillowtop::feed::TopicPartition::new(topic, 0),
        offset: 1,
        key: None,
        value: line.to_string().into_bytes(),
        timestamp_ms: None,
    })
    .unwrap()
}

/// Run `change` through a processor of `manifest` on a blocking thread.
async fn process(
    runtime: &Arc<Runtime>,
    manifest: &Manifest,
    change: pillowtop::change::Change,
) -> Result<Vec<Action>, Failure> {
    let (runtime, manifest) = (runtime.clone(), manifest.clone());
    tokio::task::spawn_blocking(move || runtime.load(&manifest).unwrap().0.process(&change))
        .await
        .unwrap()
}

/// Each kind of resource answers, absent keys too; answers are kept
/// (until their TTL) so a repeated key costs no query; a prefetch reads
/// only the keys not kept, in one query; a slow resource makes a
/// timeout within the deadline, a down one a `lookup` error; and the
/// counters reach `/metrics`. Then the unknown-users plugin on them.
#[tokio::test(flavor = "multi_thread")]
async fn resources_answer_through_a_cache_within_the_deadline() {
    let db = SourceDb::create("lk_users").await;
    db.insert("u-pg", &json!({"username": "pg"})).await;
    // Three seconds for every query, whatever the keys.
    sqlx::raw_sql(
        "CREATE FUNCTION slow_docs(wanted text[]) RETURNS TABLE (id text, doc json) AS $$
           BEGIN
             PERFORM pg_sleep(3);
             RETURN QUERY SELECT d.id, d.doc FROM docs d WHERE d.id = ANY(wanted);
           END $$ LANGUAGE plpgsql;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let prefix = es_prefix("lookups");
    let es = es_sink(&prefix);
    seed_index(&es, "users", &[("u-es", json!({"base_doc": "CouchUser"}))]).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store.db")).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE phones (doc_id TEXT NOT NULL, phone_number TEXT NOT NULL, is_two_way INTEGER NOT NULL);
         INSERT INTO phones VALUES ('c1', '15551234', 1), ('c2', '15551234', 0), ('c3', '1777', 0);",
    )
    .execute(store.sqlite().unwrap())
    .await
    .unwrap();
    let closed = free_port();
    let r = Arc::new(
        Resources::open(
            &configs(&format!(
                r#"
                [users]
                source = {{ type = "postgres", url = {url:?}, query = "SELECT id, doc FROM fetch_docs($1)" }}
                [users-index]
                source = {{ type = "elasticsearch", url = {es:?}, index = "{prefix}users" }}
                [phones]
                source = {{ type = "table", table = "phones", key = "phone_number" }}
                [fresh]
                ttl_seconds = 0
                source = {{ type = "postgres", url = {url:?}, query = "SELECT id, doc FROM fetch_docs($1)" }}
                [short]
                ttl_seconds = 1
                source = {{ type = "postgres", url = {url:?}, query = "SELECT id, doc FROM fetch_docs($1)" }}
                [slow]
                source = {{ type = "postgres", url = {url:?}, query = "SELECT id, doc FROM slow_docs($1)" }}
                [down]
                source = {{ type = "postgres", url = "postgres://postgres@127.0.0.1:{closed}/x", query = "SELECT id, doc FROM docs WHERE id = ANY($1)" }}
                "#,
                url = db.url,
                es = es_url(),
            )),
            store.db(),
            tokio::runtime::Handle::current(),
        )
        .unwrap(),
    );
    let long = Duration::from_secs(20);

    let found = get(&r, "users", "u-pg", long).await.unwrap().expect("u-pg");
    assert_eq!(json_of(&found)["username"], "pg");
    assert_eq!(get(&r, "users", "nobody", long).await, Ok(None));
    // Both answers are kept: asked again, nothing is queried.
    assert_eq!(
        get(&r, "users", "u-pg", long).await,
        Ok(Some(found.clone()))
    );
    assert_eq!(get(&r, "users", "nobody", long).await, Ok(None));
    assert_eq!(stats(&r, "users"), (4, 2, 2, 0));
    assert_eq!(db.calls().await, (2, 2), "(queries, keys) PostgreSQL saw");
    // A chunk's keys: one query for those not kept; the calls hit memory.
    r.prefetch("users", &["a", "u-pg", "b", "a"]).await.unwrap();
    assert_eq!(db.calls().await, (3, 4));
    for k in ["a", "b"] {
        assert_eq!(get(&r, "users", k, long).await, Ok(None));
    }
    assert_eq!(stats(&r, "users"), (6, 4, 3, 0));

    // Without a cache (TTL 0, as for a table the pillow writes): a
    // chunk's prefetch holds its answers until the chunk lets them go; a
    // second chunk holding a key shares it; then calls query again.
    assert!(r.holds("fresh") && !r.holds("users"));
    let first = r.prefetch("fresh", &["u-pg", "a", "u-pg"]).await.unwrap();
    assert_eq!(first, ["a", "u-pg"]);
    assert_eq!(db.calls().await, (4, 6), "one query for both keys");
    let second = r.prefetch("fresh", &["u-pg"]).await.unwrap();
    assert_eq!(second, ["u-pg"]);
    assert_eq!(
        get(&r, "fresh", "u-pg", long).await,
        Ok(Some(found.clone()))
    );
    assert_eq!(get(&r, "fresh", "a", long).await, Ok(None));
    assert_eq!(db.calls().await, (4, 6), "held answers need no query");
    r.release("fresh", &first);
    assert_eq!(
        get(&r, "fresh", "u-pg", long).await,
        Ok(Some(found.clone()))
    );
    assert_eq!(db.calls().await, (4, 6), "still held by the second chunk");
    get(&r, "fresh", "a", long).await.unwrap();
    assert_eq!(db.calls().await, (5, 7), "let go by its only chunk");
    r.release("fresh", &second);
    get(&r, "fresh", "u-pg", long).await.unwrap();
    assert_eq!(db.calls().await, (6, 8), "let go by both");
    assert_eq!(stats(&r, "fresh"), (5, 3, 3, 0));

    let user = get(&r, "users-index", "u-es", long)
        .await
        .unwrap()
        .expect("u-es");
    assert_eq!(json_of(&user)["base_doc"], "CouchUser");
    assert_eq!(get(&r, "users-index", "u-none", long).await, Ok(None));

    let rows = json_of(&get(&r, "phones", "15551234", long).await.unwrap().unwrap());
    let mut owners: Vec<(String, i64)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["doc_id"].as_str().unwrap().to_owned(),
                row["is_two_way"].as_i64().unwrap(),
            )
        })
        .collect();
    owners.sort();
    assert_eq!(owners, [("c1".to_owned(), 1), ("c2".to_owned(), 0)]);
    assert_eq!(get(&r, "phones", "0000", long).await, Ok(None));

    // A TTL of one second: read again once it passed.
    get(&r, "short", "u-pg", long).await.unwrap();
    get(&r, "short", "u-pg", long).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    get(&r, "short", "u-pg", long).await.unwrap();
    assert_eq!(stats(&r, "short"), (3, 1, 2, 0));

    // A query that takes 3 s against a 300 ms deadline.
    let started = Instant::now();
    let err = get(&r, "slow", "u-pg", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, LookupError::Timeout { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.kind(), ErrorKind::Timeout);

    let err = get(&r, "down", "u1", long).await.unwrap_err();
    assert!(matches!(err, LookupError::Unavailable { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Lookup);
    assert!(r.prefetch("down", &["u1"]).await.unwrap_err().outage);
    let err = get(&r, "undeclared", "k", long).await.unwrap_err();
    assert!(err.to_string().contains("[lookups.undeclared]"), "{err}");

    let metrics = Metrics::new();
    let reported = r.clone();
    metrics.collect_with(Box::new(move |m| reported.report(m)));
    let text = metrics.render();
    for line in [
        "pillowtop_lookup_calls_total{resource=\"users\"} 6",
        "pillowtop_lookup_cache_hits_total{resource=\"users\"} 4",
        "pillowtop_lookup_queries_total{resource=\"users\"} 3",
        "pillowtop_lookup_errors_total{resource=\"slow\"} 1",
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }

    // The unknown-users plugin on these resources.
    let runtime = Arc::new(runtime_with_lookups(r.clone()));
    let plugin_dir = tempfile::tempdir().unwrap();
    let topic = "form-sql";
    let normal = unknown_users_manifest(plugin_dir.path(), topic, ["users", "users-index"], 1000);
    for known in ["u-pg", "u-es"] {
        let actions = process(&runtime, &normal, form("f", known, topic)).await;
        assert_eq!(actions, Ok(vec![]), "{known} is known");
    }
    let actions = process(&runtime, &normal, form("f9", "u-new", topic))
        .await
        .unwrap();
    let [
        Action::CreateDocument {
            index,
            id,
            document,
        },
    ] = actions.as_slice()
    else {
        panic!("{actions:?}")
    };
    assert_eq!((index.as_str(), id.as_str()), ("users", "u-new"));
    assert_eq!(json_of(document)["first_form_found_in"], "f9");
    // A slow resource fails the change with a timeout in its deadline; a
    // down one with a `lookup` error (retried), whatever the plugin did.
    let slow = unknown_users_manifest(plugin_dir.path(), topic, ["slow", "users-index"], 300);
    let started = Instant::now();
    let err = process(&runtime, &slow, form("f10", "u-x", topic))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let down = unknown_users_manifest(plugin_dir.path(), topic, ["down", "users-index"], 20_000);
    let err = process(&runtime, &down, form("f11", "u-y", topic))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Lookup, "{err}");
    assert!(err.message.contains("\"down\""), "{err}");
    db.remove().await;
}

/// The whole host, as `pillowtop run` runs it: metadata-only form
/// changes over Kafka, their documents read from PostgreSQL (a document
/// source), users known from PostgreSQL and from the users index (lookup
/// resources, prefetched per chunk), unknown users created in
/// Elasticsearch. Two forms of one new user in one chunk, and a form of a
/// user another process already wrote (its lookup raced and saw nothing):
/// the first form found stays.
#[tokio::test(flavor = "multi_thread")]
async fn unknown_users_over_kafka_with_documents_and_lookups_from_servers() {
    let db = SourceDb::create("lk_forms").await;
    sqlx::raw_sql("CREATE TABLE users (id text PRIMARY KEY, doc json NOT NULL); INSERT INTO users VALUES ('u-pg', '{\"username\": \"pg\"}');")
        .execute(&db.pool)
        .await
        .unwrap();
    let prefix = es_prefix("unknown");
    let es = es_sink(&prefix);
    seed_index(&es, "users", &[("u-es", json!({"base_doc": "CouchUser"}))]).await;
    seed_index(&es, "empty", &[]).await;
    let topic = unique("forms");
    let forms = [
        ("f1", "u-new"),
        ("f2", "u-new"),
        ("f3", "u-pg"),
        ("f4", "u-es"),
        ("f5", "demo_user"),
        ("f6", "u-other"),
    ];
    let mut lines = Vec::new();
    for (id, user) in forms {
        let doc = json!({"_id": id, "domain": "demo", "form": {"meta": {"userID": user, "username": user}}});
        db.insert(id, &doc).await;
        lines.push(
            json!({"document_id": id, "document_type": "XFormInstance", "domain": "demo"})
                .to_string(),
        );
    }
    lines.push(
        json!({"document_id": "f-missing", "document_type": "XFormInstance", "domain": "demo"})
            .to_string(),
    );
    let brokers = kafka_brokers();
    publish_lines(&brokers, &topic, 1, &lines);

    let dir = tempfile::tempdir().unwrap();
    let manifest = unknown_users_manifest(dir.path(), &topic, ["users", "users-index"], 5000);
    let schema = pg_schema("unknown");
    let config = |users_index: &str| {
        let path = dir.path().join("pillowtop.toml");
        std::fs::write(
            &path,
            format!(
                "[feed]\ntype = \"kafka\"\nbrokers = {brokers:?}\n[store]\n{}\n\
                 [elasticsearch]\nurl = {:?}\nindex_prefix = {prefix:?}\n\
                 [runtime]\ncompile_cache_dir = {:?}\n[reload]\nwatch = false\n\
                 [[pillows]]\nname = \"unknown-users\"\ntopics = [{topic:?}]\nprocessors = [{:?}]\nchunk_size = 100\nmax_wait_ms = 50\n\
                 [pillows.document_source]\ntype = \"postgres\"\nurl = {:?}\nquery = \"SELECT id, doc FROM fetch_docs($1)\"\n\
                 [lookups.users.source]\ntype = \"postgres\"\nurl = {:?}\nquery = \"SELECT id, doc FROM users WHERE id = ANY($1)\"\n\
                 [lookups.users-index.source]\ntype = \"elasticsearch\"\nurl = {:?}\nindex = \"{prefix}{users_index}\"\n",
                pg_store_toml(&schema),
                es_url(),
                cache_dir(),
                manifest.path,
                db.url,
                db.url,
                es_url(),
            ),
        )
        .unwrap();
        path
    };
    let run = |path: &Path| {
        let out = bin()
            .args([
                "--config",
                path.to_str().unwrap(),
                "--log",
                "warn",
                "run",
                "--until-caught-up",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&config("users"));
    let doc = |id: &'static str| {
        let es = es_sink(&prefix);
        async move { es.document("users", id).await.unwrap().map(|d| d.source) }
    };
    let new = doc("u-new").await.expect("u-new was created");
    assert_eq!(
        (
            new["first_form_found_in"].as_str(),
            new["doc_type"].as_str(),
            new["domain_membership"]["domain"].as_str()
        ),
        (Some("f1"), Some("UnknownUser"), Some("demo")),
        "{new}"
    );
    assert_eq!(doc("u-pg").await, None, "known in PostgreSQL");
    assert_eq!(
        doc("u-es").await,
        Some(json!({"base_doc": "CouchUser"})),
        "known in the index"
    );
    assert_eq!(doc("demo_user").await, None);
    assert_eq!(doc("u-other").await.unwrap()["first_form_found_in"], "f6");
    let store = pg_store(&schema).await;
    let errors = recent_errors(&store, "unknown-users", 10).await.unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        (errors[0].doc_id.as_str(), errors[0].kind, errors[0].state),
        ("f-missing", ErrorKind::Missing, ErrorState::Pending)
    );

    // Another process whose users-index lookup saw nothing (an empty
    // index stands for the race): its create changes nothing.
    db.insert("f7", &json!({"_id": "f7", "domain": "demo", "form": {"meta": {"userID": "u-other", "username": "u-other"}}}))
        .await;
    publish_lines(
        &brokers,
        &topic,
        1,
        &[
            json!({"document_id": "f7", "document_type": "XFormInstance", "domain": "demo"})
                .to_string(),
        ],
    );
    run(&config("empty"));
    assert_eq!(doc("u-other").await.unwrap()["first_form_found_in"], "f6");
    db.remove().await;
}

/// A case change with its document inline, for the messaging table.
fn contact(id: &str, number: &str, verified: bool, closed: bool, modified: &str) -> String {
    let doc = json!({"_id": id, "doc_type": "CommCareCase", "domain": "demo", "type": "contact",
        "closed": closed, "server_modified_on": modified,
        "case_json": {"contact_phone_number": number, "contact_phone_number_is_verified": if verified { "true" } else { "" }}});
    json!({"document_id": id, "document_type": "CommCareCase", "domain": "demo", "document": doc})
        .to_string()
}

/// messaging-sync over the store it writes (a PostgreSQL store, so the
/// lookup is PostgreSQL's `json_agg` of the rows): the first case to
/// verify a number has it two-way, a second one stays one-way; an older
/// version of a case that arrives late changes nothing (the table's
/// version column); a closed case loses its row.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_sync_keeps_one_two_way_owner_per_number_and_the_newest_version() {
    let env = Env::postgres().await;
    let resources = Arc::new(
        Resources::open(
            &configs(
                "[phone-numbers]\nttl_seconds = 0\nsource = { type = \"table\", table = \"messaging_phone_numbers\", key = \"phone_number\" }",
            ),
            env.store.db(),
            tokio::runtime::Handle::current(),
        )
        .unwrap(),
    );
    let runtime = Arc::new(runtime_with_lookups(resources.clone()));
    let path = component("plugins/messaging-sync/plugin.toml");
    let manifest = Manifest::load(&path).unwrap();
    let config = pillowtop::config::PillowConfig {
        chunk_size: 100,
        max_wait_ms: 50,
        ..pillowtop::config::PillowConfig::new("messaging", &["case-sql"], vec![path])
    };
    let run = || async {
        let processor = runtime.load(&manifest).unwrap().0;
        pillowtop::pillow::Pillow::new(
            config.clone(),
            env.feed(),
            env.store.clone(),
            vec![processor],
        )
        .await
        .unwrap()
        .with_lookups(resources.clone())
        .run(
            pillowtop::pillow::RunOptions {
                until_caught_up: true,
                ..Default::default()
            },
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap()
    };
    let (t1, t2) = ("2026-11-01T10:00:00.000000Z", "2026-11-02T10:00:00.000000Z");
    env.publish(
        "case-sql",
        1,
        &[
            contact("a", "+1 555 000 1111", true, false, t2),
            contact("c", "15550002222", false, false, t1),
        ],
    )
    .await;
    run().await;
    env.publish(
        "case-sql",
        1,
        &[
            contact("b", "15550001111", true, false, t1),
            // An older version of `a`, with another number.
            contact("a", "15559999999", false, false, t1),
            contact("c", "15550002222", false, true, t2),
        ],
    )
    .await;
    let summary = run().await;
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    let rows: Vec<(String, String, bool, bool)> = sqlx::query_as(
        "SELECT doc_id, phone_number, is_two_way, verified FROM messaging_phone_numbers ORDER BY doc_id",
    )
    .fetch_all(env.store.postgres().unwrap())
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            ("a".to_owned(), "15550001111".to_owned(), true, true),
            ("b".to_owned(), "15550001111".to_owned(), false, false),
        ]
    );
}
