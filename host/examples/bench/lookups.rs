//! Section 10: host lookups and document sources. The unknown-users
//! plugin over forms whose users are looked up in PostgreSQL (with the
//! manifest's per-chunk prefetch, and without it), and a case-search
//! pillow over Kafka whose changes carry no document, read from a
//! PostgreSQL document source, beside the same changes carrying them.

use crate::servers::{Broker, pg_url, publish, runtime, unique};
use crate::{root, run_child, write_case_search_plugin};
use pillowtop::config::PillowConfig;
use pillowtop::feed::Feed;
use pillowtop::feed::embedded::EmbeddedFeed;
use pillowtop::generate::{GenOptions, Generator, Kind};
use pillowtop::manifest::Manifest;
use pillowtop::pillow::{Pillow, RunOptions};
use pillowtop::resource::Resources;
use pillowtop::store::Store;
use pillowtop::wasm::{Runtime, RuntimeOptions};
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

const FORMS: usize = 100_000;
const USERS: usize = 5_000;
/// Users HQ knows (in the users table); the rest are unknown.
const KNOWN: usize = 4_000;

/// `FORMS` generated forms, form `i` submitted by user `u{i % USERS}`.
fn forms() -> Vec<String> {
    let mut g = Generator::new(GenOptions {
        seed: 7,
        domains: 3,
        kind: Kind::Form,
    });
    (0..FORMS)
        .map(|i| {
            let mut v: Value = serde_json::from_str(&g.next_line()).unwrap();
            v["document"]["form"]["meta"]["userID"] = Value::String(format!("u{}", i % USERS));
            v.to_string()
        })
        .collect()
}

/// One run of unknown-users over `lines`: (forms/s, lookup calls per
/// form, cache hit ratio, queries, users created).
fn unknown_users_run(lines: &[String], schema: &str, prefetch: bool) -> (f64, f64, f64, u64, u64) {
    let rt = runtime();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let feed = EmbeddedFeed::open(&dir.path().join("feed.db")).await.unwrap();
        feed.create_topic("form-sql", Some(4)).await.unwrap();
        let messages = lines
            .iter()
            .map(|l| (None, l.as_bytes().to_vec()))
            .collect();
        feed.publish("form-sql", messages).await.unwrap();
        let store = Store::open(&dir.path().join("store.db")).await.unwrap();
        let configs = toml::from_str(&format!(
            "[users.source]\ntype = \"postgres\"\nurl = {url:?}\nquery = \"SELECT id, doc FROM {schema}.users WHERE id = ANY($1)\"\n\
             [users-index.source]\ntype = \"postgres\"\nurl = {url:?}\nquery = \"SELECT id, doc FROM {schema}.indexed_users WHERE id = ANY($1)\"\n",
            url = pg_url()
        ))
        .unwrap();
        let resources = Arc::new(
            Resources::open(&configs, store.db(), tokio::runtime::Handle::current()).unwrap(),
        );
        let runtime = Runtime::new(RuntimeOptions {
            compile_cache_dir: Some(root().join("data/compile-cache")),
            lookups: resources.clone(),
            ..RuntimeOptions::default()
        })
        .unwrap();
        let mut text =
            std::fs::read_to_string(root().join("plugins/unknown-users/plugin.toml")).unwrap();
        if !prefetch {
            let at = text.find("[prefetch]").unwrap();
            let end = text[at..].find("[config]").unwrap() + at;
            text.replace_range(at..end, "");
        }
        let manifest = Manifest::parse(&text, &root().join("plugins/unknown-users/plugin.toml"))
            .unwrap();
        let processor = runtime.load(&manifest).unwrap().0;
        let config = PillowConfig::new("unknown-users", &["form-sql"], vec![manifest.path.clone()]);
        let pillow = Pillow::new(config, Feed::Embedded(feed), store.clone(), vec![processor])
            .await
            .unwrap()
            .with_lookups(resources.clone());
        let started = Instant::now();
        let summary = pillow
            .run(
                RunOptions {
                    until_caught_up: true,
                    ..RunOptions::default()
                },
                CancellationToken::new(),
            )
            .await
            .unwrap();
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(summary.changes, FORMS as u64, "{summary:?}");
        assert!(summary.errors.is_empty(), "{summary:?}");
        let (mut calls, mut hits, mut queries) = (0, 0, 0);
        for (_, s) in resources.stats() {
            calls += s.calls();
            hits += s.hits();
            queries += s.queries();
        }
        let created = pillowtop::sink::SqlSink::new(&store)
            .counts()
            .await
            .unwrap()
            .documents
            .iter()
            .map(|(_, n)| *n)
            .sum::<u64>();
        (
            FORMS as f64 / secs,
            calls as f64 / FORMS as f64,
            hits as f64 / calls.max(1) as f64,
            queries,
            created,
        )
    })
}

/// The users table (the first `KNOWN` users) and an empty users index
/// table in a fresh schema of the PostgreSQL `make services` runs.
fn users_schema() -> String {
    let schema = unique("bench_users");
    runtime().block_on(async {
        let pool = sqlx::PgPool::connect(&pg_url()).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.users (id text PRIMARY KEY, doc json NOT NULL);
             CREATE TABLE {schema}.indexed_users (id text PRIMARY KEY, doc json NOT NULL);
             INSERT INTO {schema}.users SELECT 'u' || i, json_build_object('username', 'user' || i)
               FROM generate_series(0, {}) AS i;",
            KNOWN - 1
        )))
        .execute(&pool)
        .await
        .unwrap();
    });
    schema
}

fn unknown_users_bench() {
    println!(
        "\n## 10. Lookups and document sources\n\n### unknown-users: {FORMS} forms from {USERS} users ({KNOWN} known to the users table), lookups in PostgreSQL\n\nEmbedded feed (4 partitions) and SQLite store; both lookup resources are PostgreSQL queries (`users`, and an empty `users-index`); the default cache (100,000 answers, 60 s). Measured in-process, from the pillow's start to caught up.\n"
    );
    let lines = forms();
    let schema = users_schema();
    println!(
        "| run | forms/s | lookup calls per form | cache hit ratio | queries to PostgreSQL | users created |\n|---|---:|---:|---:|---:|---:|"
    );
    for (name, prefetch) in [
        ("with `[prefetch]` (as shipped)", true),
        ("without `[prefetch]`", false),
    ] {
        let (rate, calls, hits, queries, created) = unknown_users_run(&lines, &schema, prefetch);
        assert_eq!(
            created,
            (USERS - KNOWN) as u64,
            "one document per unknown user"
        );
        println!(
            "| {name} | {rate:.0} | {calls:.2} | {:.1}% | {queries} | {created} |",
            hits * 100.0
        );
    }
}

/// The case changes of `lines` without their documents, and the
/// documents by id (the last of each id).
fn split(lines: &[String]) -> (Vec<String>, Vec<(String, String)>) {
    let mut metadata = Vec::with_capacity(lines.len());
    let mut documents = std::collections::HashMap::new();
    for line in lines {
        let mut v: Value = serde_json::from_str(line).unwrap();
        let object = v.as_object_mut().unwrap();
        if let Some(doc) = object.remove("document").filter(|d| d.is_object()) {
            documents.insert(
                object["document_id"].as_str().unwrap().to_owned(),
                doc.to_string(),
            );
        }
        metadata.push(v.to_string());
    }
    (metadata, documents.into_iter().collect())
}

fn document_source_bench(lines: &[String]) {
    let n = lines.len();
    let broker = Broker::start();
    let brokers = broker.brokers();
    println!(
        "\n### Document source: {n} case changes over Kafka without their documents, read from PostgreSQL, beside the same changes carrying them\n\n{}; PostgreSQL store; the documents in one PostgreSQL table (`SELECT id, doc FROM docs WHERE id = ANY($1)`, one query per chunk of 2,000); the pillow binary from start to caught up, inline first.\n",
        broker.describe()
    );
    let (metadata, documents) = split(lines);
    let schema = unique("bench_docs");
    runtime().block_on(async {
        let pool = sqlx::PgPool::connect(&pg_url()).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA {schema}; CREATE TABLE {schema}.docs (id text PRIMARY KEY, doc json NOT NULL);"
        )))
        .execute(&pool)
        .await
        .unwrap();
        for part in documents.chunks(5_000) {
            let ids: Vec<&str> = part.iter().map(|(id, _)| id.as_str()).collect();
            let docs: Vec<&str> = part.iter().map(|(_, d)| d.as_str()).collect();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {schema}.docs SELECT * FROM UNNEST($1::text[], $2::text[]::json[])"
            )))
            .bind(ids)
            .bind(docs)
            .execute(&pool)
            .await
            .unwrap();
        }
    });
    let inline_topic = unique("bench-inline").replace('_', "-");
    let metadata_topic = unique("bench-metadata").replace('_', "-");
    publish(&brokers, &inline_topic, lines);
    publish(&brokers, &metadata_topic, &metadata);
    let dir = tempfile::tempdir().unwrap();
    write_case_search_plugin(dir.path());
    let run = |topic: &str, source: &str| {
        let config = dir.path().join(format!("{topic}.toml"));
        std::fs::write(
            &config,
            format!(
                "[feed]\ntype = \"kafka\"\nbrokers = {brokers:?}\n[store]\nurl = {url:?}\nschema = {:?}\n\
                 [runtime]\ncompile_cache_dir = {:?}\n[reload]\nwatch = false\n\
                 [[pillows]]\nname = \"case-search\"\ntopics = [{topic:?}]\nprocessors = [\"plugin/plugin.toml\"]\n\
                 chunk_size = 2000\nmax_wait_ms = 20\n{source}",
                unique("bench_store"),
                root().join("data/compile-cache"),
                url = pg_url(),
            ),
        )
        .unwrap();
        let (wall, cpu, _, out) = run_child(
            &[
                "--config",
                config.to_str().unwrap(),
                "--log",
                "warn",
                "run",
                "--until-caught-up",
            ],
            None,
        );
        assert!(
            out.contains(&format!(": {n} changes read")),
            "the catch-up did not read all {n} changes:\n{out}"
        );
        (n as f64 / wall, cpu * 1e6 / n as f64)
    };
    let inline = run(&inline_topic, "");
    let source = run(
        &metadata_topic,
        &format!(
            "[pillows.document_source]\ntype = \"postgres\"\nurl = {:?}\nquery = \"SELECT id, doc FROM {schema}.docs WHERE id = ANY($1)\"\n",
            pg_url()
        ),
    );
    println!(
        "| changes | changes/s | pillow CPU per change |\n|---|---:|---:|\n| carrying their documents | {:.0} | {:.1} µs |\n| metadata only, documents from PostgreSQL | {:.0} | {:.1} µs |\n| ratio | {:.2}x | |",
        inline.0,
        inline.1,
        source.0,
        source.1,
        source.0 / inline.0
    );
}

/// Section 10.
pub fn lookups_bench(lines: &[String]) {
    unknown_users_bench();
    document_source_bench(lines);
}
