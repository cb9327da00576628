//! The PostgreSQL store and sink against a real PostgreSQL (started by
//! `make services`): migrations, typed rows in one transaction with the
//! checkpoint, table checks, the `migrate` command. Each test uses its own
//! schema. The pipeline tests in `pipeline.rs` also run against it.

use crate::support::*;
use pillowtop::action::{Action, Cell, Column, ColumnType, IndexSpec, PluginInfo, TableSpec};
use pillowtop::feed::TopicPartition;
use pillowtop::sink::{ChunkCommit, SqlSink};
use pillowtop::sink::{VersionedAction, WritePlan};
use pillowtop::store::Store;
use sqlx::Row;

fn visits() -> TableSpec {
    let col = |name: &str, kind, nullable| Column {
        name: name.into(),
        kind,
        nullable,
    };
    TableSpec {
        name: "visits".into(),
        columns: vec![
            col("doc_id", ColumnType::Text, false),
            col("n", ColumnType::Integer, false),
            col("day", ColumnType::Date, true),
            col("at", ColumnType::Timestamp, true),
            col("score", ColumnType::Float, true),
            col("ok", ColumnType::Boolean, true),
            col("extra", ColumnType::Json, true),
        ],
        primary_key: vec!["doc_id".into(), "n".into()],
        version_column: None,
        definition: None,
    }
}

fn info() -> PluginInfo {
    PluginInfo {
        tables: vec![visits()],
        indices: vec![IndexSpec {
            name: "cases".into(),
            mappings: "{}".into(),
            aliases: vec![],
        }],
    }
}

fn row(doc: &str, n: i64, day: &str, score: Cell) -> Vec<Cell> {
    vec![
        Cell::Text(doc.into()),
        Cell::Integer(n),
        Cell::Text(day.into()),
        Cell::Text(format!("{day}T10:30:00Z")),
        score,
        Cell::Boolean(n % 2 == 0),
        Cell::Text(format!("{{\"doc\": \"{doc}\", \"n\": {n}}}")),
    ]
}

/// doc_id, n, day, at (UTC, to the minute), score, ok, extra->>'n'.
type VisitRow = (String, i64, String, String, Option<f64>, bool, String);

fn at(action: Action, version: u64) -> VersionedAction {
    VersionedAction {
        action,
        version,
        origin: Default::default(),
    }
}

/// Typed rows, documents, deletes and the checkpoint land together; the
/// last write of a key within one batch wins.
#[tokio::test(flavor = "multi_thread")]
async fn rows_documents_and_the_checkpoint_commit_together_with_native_types() {
    let store = pg_store(&pg_schema("pgsink")).await;
    let sql = SqlSink::new(&store);
    sql.ensure_outputs(&info()).await.unwrap();
    // Twice: an existing matching table is accepted.
    sql.ensure_outputs(&info()).await.unwrap();
    // Documents are compressed with lz4 where the server has it (the
    // Debian PostgreSQL `make services` uses does), pglz otherwise.
    let pool = store.postgres().unwrap();
    let lz4 = pillowtop::sink::postgres::lz4_supported(&mut pool.acquire().await.unwrap())
        .await
        .unwrap();
    let method: String = sqlx::query_scalar(
        r#"SELECT attcompression::text FROM pg_attribute WHERE attrelid = '"doc_cases"'::regclass AND attname = 'document'"#,
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(method, if lz4 { "l" } else { "" }, "lz4 supported: {lz4}");
    let upsert = |rows| Action::UpsertRows {
        table: "visits".into(),
        rows,
    };
    let plan = WritePlan::build(vec![
        at(
            upsert(vec![
                row("a", 1, "2024-01-01", Cell::Float(1.5)),
                row("a", 2, "2024-01-02", Cell::Null),
                row("b", 1, "2024-02-01", Cell::Integer(7)),
            ]),
            10,
        ),
        // Same key as the first row, later in the same batch: it wins.
        at(
            upsert(vec![row("a", 1, "2024-03-03", Cell::Float(2.5))]),
            11,
        ),
        at(
            Action::DeleteRows {
                table: "visits".into(),
                doc_id: "b".into(),
            },
            12,
        ),
        at(
            Action::IndexDocument {
                index: "cases".into(),
                id: "a".into(),
                document: "{\"v\":1}".into(),
            },
            11,
        ),
    ]);
    let tp = TopicPartition::new("case-sql", 3);
    sql.commit(
        "pg",
        &ChunkCommit {
            plan,
            errors: vec![],
            checkpoints: vec![(tp.clone(), 13)],
            ..ChunkCommit::default()
        },
        &|_| None,
    )
    .await
    .unwrap();

    let pool = store.postgres().unwrap();
    let rows = sqlx::query(
        "SELECT doc_id, n, day::text, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'), score, ok, extra->>'n'
         FROM visits ORDER BY doc_id, n",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let got: Vec<VisitRow> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "a".into(),
                1,
                "2024-03-03".into(),
                "2024-03-03 10:30".into(),
                Some(2.5),
                false,
                "1".into()
            ),
            (
                "a".into(),
                2,
                "2024-01-02".into(),
                "2024-01-02 10:30".into(),
                None,
                true,
                "2".into()
            ),
        ]
    );
    let saved = store.checkpoints("pg").await.unwrap();
    assert_eq!(saved.len(), 1);
    assert_eq!((saved[0].tp.clone(), saved[0].next_offset), (tp, 13));
    assert_eq!(
        sql.document("cases", "a").await.unwrap(),
        Some((Some("{\"v\":1}".into()), 11))
    );
    let counts = sql.counts().await.unwrap();
    assert_eq!(counts.rows, vec![("visits".to_string(), 2)]);
    assert_eq!(counts.documents, vec![("cases".to_string(), 1)]);
}

/// A failing statement rolls back the whole chunk: no rows, no checkpoint.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_commit_keeps_nothing_of_the_chunk() {
    let store = pg_store(&pg_schema("pgrollback")).await;
    let sql = SqlSink::new(&store);
    sql.ensure_outputs(&info()).await.unwrap();
    // Rows for a table the store has no spec for fail after the document
    // write went through; the transaction must undo it.
    let plan = WritePlan::build(vec![
        at(
            Action::IndexDocument {
                index: "cases".into(),
                id: "x".into(),
                document: "{}".into(),
            },
            1,
        ),
        at(
            Action::UpsertRows {
                table: "undeclared".into(),
                rows: vec![vec![Cell::Text("x".into())]],
            },
            1,
        ),
    ]);
    let err = sql
        .commit(
            "pg",
            &ChunkCommit {
                plan,
                errors: vec![],
                checkpoints: vec![(TopicPartition::new("t", 0), 2)],
                ..ChunkCommit::default()
            },
            &|_| None,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("undeclared"), "{err}");
    assert_eq!(sql.document("cases", "x").await.unwrap(), None);
    assert!(store.checkpoints("pg").await.unwrap().is_empty());
}

/// An existing table that does not match the plugin's spec is refused at
/// startup, naming the table and the column.
#[tokio::test(flavor = "multi_thread")]
async fn a_mismatching_table_is_refused_naming_table_and_column() {
    let schema = pg_schema("pgmismatch");
    let store = pg_store(&schema).await;
    let sql = SqlSink::new(&store);
    let pool = store.postgres().unwrap();
    sqlx::query(
        "CREATE TABLE visits (doc_id TEXT NOT NULL, n BIGINT NOT NULL, day TEXT, at TIMESTAMPTZ,
           score DOUBLE PRECISION, ok BOOLEAN, extra JSONB, PRIMARY KEY (doc_id, n))",
    )
    .execute(pool)
    .await
    .unwrap();
    let err = sql.ensure_outputs(&info()).await.unwrap_err().to_string();
    for needle in [
        "\"visits\"",
        "\"day\"",
        "is text",
        "date",
        "migrate or drop",
    ] {
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
    assert!(err.contains(&format!("schema {schema}")), "{err}");

    sqlx::query("DROP TABLE visits")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE visits (doc_id TEXT NOT NULL, n BIGINT NOT NULL, day DATE, at TIMESTAMPTZ,
           score DOUBLE PRECISION, ok BOOLEAN, extra JSONB, PRIMARY KEY (doc_id))",
    )
    .execute(pool)
    .await
    .unwrap();
    let err = sql.ensure_outputs(&info()).await.unwrap_err().to_string();
    assert!(err.contains("primary key is [\"doc_id\"]"), "{err}");
}

/// A table built by one definition of its rows is not used by a plugin
/// version that declares another (PostgreSQL and SQLite stores); the same
/// definition, a table recorded without one, and a dropped table are
/// taken.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_of_another_definition_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let stores = [
        pg_store(&pg_schema("pgdefinition")).await,
        Store::open(&dir.path().join("store.db")).await.unwrap(),
    ];
    let defined = |definition: Option<&str>| PluginInfo {
        tables: vec![TableSpec {
            definition: definition.map(str::to_string),
            ..visits()
        }],
        indices: vec![],
    };
    for store in &stores {
        let sql = SqlSink::new(store);
        // Recorded without a definition (a table from before definitions):
        // the first one declared is taken and kept.
        sql.ensure_outputs(&defined(None)).await.unwrap();
        sql.ensure_outputs(&defined(Some("sha1:aaa")))
            .await
            .unwrap();
        sql.ensure_outputs(&defined(Some("sha1:aaa")))
            .await
            .unwrap();
        let err = sql
            .ensure_outputs(&defined(Some("sha1:bbb")))
            .await
            .unwrap_err()
            .to_string();
        for needle in [
            "\"visits\"",
            "another definition (sha1:aaa)",
            "(sha1:bbb)",
            "rebuild the table",
        ] {
            assert!(err.contains(needle), "expected {needle:?} in: {err}");
        }
        // Dropped by hand (as the refusal says), the table is built anew
        // by the new definition.
        match (store.postgres(), store.sqlite()) {
            (Some(pg), _) => sqlx::raw_sql("DROP TABLE visits")
                .execute(pg)
                .await
                .map(|_| ()),
            (_, Some(lite)) => sqlx::raw_sql("DROP TABLE visits")
                .execute(lite)
                .await
                .map(|_| ()),
            _ => unreachable!("a store is one or the other"),
        }
        .unwrap();
        sql.ensure_outputs(&defined(Some("sha1:bbb")))
            .await
            .unwrap();
        let err = sql
            .ensure_outputs(&defined(Some("sha1:aaa")))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("another definition (sha1:bbb)"),
            "{err}"
        );
        // A version declaring no definition keeps the recorded one: it
        // cannot clear the way for another.
        sql.ensure_outputs(&defined(None)).await.unwrap();
        let err = sql
            .ensure_outputs(&defined(Some("sha1:aaa")))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("another definition (sha1:bbb)"),
            "{err}"
        );
    }
}

/// A table held by a rebuild: the pillow's writes to it are dropped per
/// partition until it takes the partition back (at a chunk start the
/// rebuild's checkpoint has reached, running the rebuild's definition);
/// the rebuild's writes land until then and are dropped after. Once the
/// rebuild finishes, a partition taken back is forgotten. On PostgreSQL
/// and SQLite.
#[tokio::test(flavor = "multi_thread")]
async fn a_held_table_is_written_by_its_rebuild_until_the_pillow_takes_it_back() {
    use pillowtop::sink::{HoldScope, Origin};
    let dir = tempfile::tempdir().unwrap();
    let stores = [
        pg_store(&pg_schema("pghold")).await,
        Store::open(&dir.path().join("store.db")).await.unwrap(),
    ];
    let defined = |definition: &str| PluginInfo {
        tables: vec![TableSpec {
            definition: Some(definition.into()),
            ..visits()
        }],
        indices: vec![],
    };
    let (p0, p1) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
    let partition_of = |k: u32| Some(TopicPartition::new("t", k));
    // One upsert per partition: document `docs[k]` from partition k.
    let plan = |docs: [&str; 2]| {
        WritePlan::build(
            docs.iter()
                .enumerate()
                .map(|(k, doc)| VersionedAction {
                    action: Action::UpsertRows {
                        table: "visits".into(),
                        rows: vec![row(doc, 1, "2024-01-01", Cell::Null)],
                    },
                    version: 1,
                    origin: Origin {
                        change: k as u32,
                        processor: 0,
                    },
                })
                .collect(),
        )
    };
    let live = |docs: [&str; 2], starts: [u64; 2]| ChunkCommit {
        plan: plan(docs),
        scope: HoldScope {
            tables: vec!["visits".to_string()].into(),
            starts: vec![(p0.clone(), starts[0]), (p1.clone(), starts[1])],
            may_release: true,
        },
        ..ChunkCommit::default()
    };
    let rebuilt = |docs: [&str; 2], to: [u64; 2]| ChunkCommit {
        plan: plan(docs),
        checkpoints: vec![(p0.clone(), to[0]), (p1.clone(), to[1])],
        scope: HoldScope {
            tables: vec!["visits".to_string()].into(),
            starts: vec![(p0.clone(), 0), (p1.clone(), 0)],
            may_release: true,
        },
        ..ChunkCommit::default()
    };
    const REBUILD: &str = "pillow:rebuild:visits";
    for store in &stores {
        let docs = || async {
            let sql = "SELECT doc_id FROM visits ORDER BY doc_id";
            match (store.postgres(), store.sqlite()) {
                (Some(pg), _) => sqlx::query_scalar::<_, String>(sql).fetch_all(pg).await,
                (_, Some(lite)) => sqlx::query_scalar::<_, String>(sql).fetch_all(lite).await,
                _ => unreachable!("a store is one or the other"),
            }
            .unwrap()
        };
        let pillow = SqlSink::new(store);
        let rebuild = SqlSink::new(store);
        pillow.ensure_outputs(&defined("sha1:old")).await.unwrap();
        pillow
            .commit("pillow", &live(["a", "b"], [0, 0]), &partition_of)
            .await
            .unwrap();
        assert_eq!(docs().await, ["a", "b"]);

        rebuild
            .hold_for_rebuild(
                &defined("sha1:new").tables[0],
                REBUILD,
                &[p0.clone(), p1.clone()],
            )
            .await
            .unwrap();
        rebuild.ensure_outputs(&defined("sha1:new")).await.unwrap();
        assert_eq!(docs().await, Vec::<String>::new(), "created anew");
        // The pillow still runs the old definition: nothing of it lands,
        // and it takes nothing back, however far the rebuild is.
        rebuild
            .commit(REBUILD, &rebuilt(["r0", "r1"], [4, 9]), &partition_of)
            .await
            .unwrap();
        pillow
            .commit("pillow", &live(["x0", "x1"], [5, 5]), &partition_of)
            .await
            .unwrap();
        assert_eq!(docs().await, ["r0", "r1"]);
        assert_eq!(
            rebuild.holds("visits").await.unwrap(),
            [(p0.clone(), false), (p1.clone(), false)]
        );
        // Its new version goes live (the table has its definition now).
        pillow.ensure_outputs(&defined("sha1:new")).await.unwrap();
        // Partition 1's rebuild has passed the chunk start (9 >= 5): taken
        // back, the chunk's write lands; partition 0's has not (4 < 5).
        pillow
            .commit("pillow", &live(["y0", "y1"], [5, 5]), &partition_of)
            .await
            .unwrap();
        assert_eq!(docs().await, ["r0", "r1", "y1"]);
        assert_eq!(
            rebuild.holds("visits").await.unwrap(),
            [(p0.clone(), false), (p1.clone(), true)]
        );
        // The rebuild writes partition 0 only now.
        rebuild
            .commit(REBUILD, &rebuilt(["s0", "s1"], [10, 12]), &partition_of)
            .await
            .unwrap();
        assert_eq!(docs().await, ["r0", "r1", "s0", "y1"]);
        // A later piece of a chunk never takes a partition back.
        let mut piece = live(["z0", "z1"], [8, 8]);
        piece.scope.may_release = false;
        pillow
            .commit("pillow", &piece, &partition_of)
            .await
            .unwrap();
        assert_eq!(docs().await, ["r0", "r1", "s0", "y1", "z1"]);
        pillow
            .commit("pillow", &live(["w0", "w1"], [9, 9]), &partition_of)
            .await
            .unwrap();
        assert_eq!(docs().await, ["r0", "r1", "s0", "w0", "w1", "y1", "z1"]);
        rebuild.finish_rebuild("visits", REBUILD).await.unwrap();
        assert_eq!(rebuild.holds("visits").await.unwrap(), []);

        // A rebuild that finished before the pillow took partition 0 back
        // (the pillow was stopped): it takes it back when it gets to it,
        // and the hold is forgotten.
        rebuild
            .hold_for_rebuild(
                &defined("sha1:new").tables[0],
                REBUILD,
                &[p0.clone(), p1.clone()],
            )
            .await
            .unwrap();
        rebuild
            .commit(REBUILD, &rebuilt(["a0", "a1"], [3, 3]), &partition_of)
            .await
            .unwrap();
        rebuild.finish_rebuild("visits", REBUILD).await.unwrap();
        let mut first = live(["b0", "b1"], [3, 3]);
        first.scope.starts.pop();
        pillow
            .commit("pillow", &first, &partition_of)
            .await
            .unwrap();
        assert_eq!(docs().await, ["a0", "a1", "b0"]);
        assert_eq!(
            rebuild.holds("visits").await.unwrap(),
            [(p1.clone(), false)]
        );
    }
}

/// `pillowtop migrate` creates the store's tables in the configured
/// schema, and says what is wrong when PostgreSQL cannot be reached.
#[tokio::test(flavor = "multi_thread")]
async fn the_migrate_command_prepares_a_schema_and_explains_failures() {
    let schema = pg_schema("pgmigrate");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pillowtop.toml");
    let write = |store: &str| {
        std::fs::write(
            &config,
            format!("[feed]\ntype = \"kafka\"\nbrokers = \"127.0.0.1:1\"\n[store]\n{store}\n"),
        )
        .unwrap()
    };
    write(&pg_store_toml(&schema));
    for _ in 0..2 {
        let out = bin()
            .arg("--config")
            .arg(&config)
            .arg("migrate")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!(
                "(schema {schema}): migrations applied, up to date"
            )),
            "{stdout}"
        );
    }
    let store = pg_store(&schema).await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
    )
    .bind(&schema)
    .fetch_all(store.postgres().unwrap())
    .await
    .unwrap();
    for t in [
        "checkpoints",
        "pillow_errors",
        "plugin_events",
        "processes",
        "sink_indices",
        "sink_tables",
    ] {
        assert!(tables.contains(&t.to_string()), "{t} missing: {tables:?}");
    }

    write("url = \"postgres://postgres:secret@127.0.0.1:1/nowhere\"");
    let out = bin()
        .arg("--config")
        .arg(&config)
        .arg("migrate")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for needle in [
        "postgres store 127.0.0.1:1/nowhere",
        "cannot connect",
        "check that PostgreSQL runs",
    ] {
        assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    }
    assert!(!stderr.contains("secret"), "password leaked: {stderr}");
}

/// A TCP proxy in front of the test database, and the database URL
/// through it.
async fn pg_proxy() -> (Proxy, String) {
    let url = pg_url();
    let direct: std::net::SocketAddr = pg_host_port(&url)
        .parse()
        .expect("PILLOWTOP_PG_URL must name IP:PORT for this test");
    let proxy = Proxy::start(direct).await;
    let proxied = url.replacen(&direct.to_string(), &proxy.addr.to_string(), 1);
    assert_ne!(proxied, url, "PILLOWTOP_PG_URL must name IP:PORT");
    (proxy, proxied)
}

/// A process started while its database is unreachable waits for it
/// (backoff, no error) and opens the store once it is back; a shutdown
/// while it waits ends the wait with no store. A refusal that waiting
/// cannot fix (an unknown role) fails at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_process_started_before_its_database_waits_for_it() {
    use pillowtop::config::StoreLocation;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;
    let (mut proxy, proxied) = pg_proxy().await;
    proxy.down().await;
    let location = StoreLocation::Postgres {
        url: proxied,
        schema: pg_schema("late"),
    };
    let err = Store::connect(&location)
        .await
        .expect_err("no database, no store");
    assert!(err.is_outage(), "a refused connection is an outage: {err}");

    assert_shutdown_ends_wait(|shutdown| {
        let location = location.clone();
        async move { Store::connect_when_reachable(&location, &shutdown).await }
    })
    .await;

    let shutdown = CancellationToken::new();
    let opening = tokio::spawn({
        let location = location.clone();
        async move { Store::connect_when_reachable(&location, &shutdown).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !opening.is_finished(),
        "startup gave up while the database was down: {:?}",
        opening.await.map(|r| r.map(|s| s.is_some()))
    );
    proxy.up().await;
    let store = tokio::time::timeout(Duration::from_secs(30), opening)
        .await
        .expect("still waiting 30 s after the database came back")
        .unwrap()
        .unwrap_or_else(|e| panic!("opening failed after the database came back: {e}"))
        .expect("no store without a shutdown");
    assert!(
        store.checkpoints("late").await.unwrap().is_empty(),
        "migrated"
    );

    let url = pg_url().replacen("postgres://postgres@", "postgres://no_such_role@", 1);
    assert!(
        url.contains("no_such_role@"),
        "PILLOWTOP_PG_URL must start with postgres://postgres@ for this test"
    );
    let unknown_role = StoreLocation::Postgres {
        url,
        schema: pg_schema("late"),
    };
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        Store::connect_when_reachable(&unknown_role, &CancellationToken::new()),
    )
    .await
    .expect("retried a refusal as if it were an outage")
    .expect_err("an unknown role cannot open the store");
    assert!(!err.is_outage(), "{err}");
    assert!(err.to_string().contains("no_such_role"), "{err}");
}

/// PostgreSQL goes away mid-run (every connection cut, new ones refused)
/// for a few seconds and comes back: the pillow holds its chunk, retries
/// with backoff and carries on by itself. Every change lands once, no
/// pillow error is recorded for the outage, the checkpoints end at the end.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_outage_holds_the_chunk_and_resumes_by_itself() {
    let (mut proxy, proxied) = pg_proxy().await;
    let schema = pg_schema("outage");
    let store = Store::connect(&pillowtop::config::StoreLocation::Postgres {
        url: proxied,
        schema: schema.clone(),
    })
    .await
    .unwrap();
    let observer = pg_store(&schema).await;
    let env = Env::with_store(tempfile::tempdir().unwrap(), store).await;
    let n = 4000;
    let lines: Vec<String> = (0..n)
        .map(|i| change(&format!("o{i}"), serde_json::json!({"i": i})))
        .collect();
    env.publish("t", 2, &lines).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = tagger_manifest(dir.path());
    let config = pillowtop::config::PillowConfig {
        chunk_size: 50,
        max_wait_ms: 20,
        checkpoint_every: 1,
        ..pillowtop::config::PillowConfig::new("outage", &["t"], vec![manifest.clone()])
    };
    let pillow = pillowtop::pillow::Pillow::new(
        config,
        env.feed(),
        env.store.clone(),
        vec![load(&manifest)],
    )
    .await
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(pillow.run(Default::default(), stop.clone()));

    let count = async || -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM tagged")
            .fetch_one(observer.postgres().unwrap())
            .await
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while count().await < 500 {
        assert!(
            std::time::Instant::now() < deadline,
            "no progress before the outage"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    proxy.down().await;
    let during = count().await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(
        !run.is_finished(),
        "the pillow stopped during the outage: {:?}",
        run.await
    );
    assert_eq!(
        count().await,
        during,
        "nothing lands while the store is down"
    );
    assert!(
        during < n,
        "the outage came too late to matter: publish more"
    );
    proxy.up().await;
    while count().await < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} rows after the store came back",
            count().await
        );
        assert!(!run.is_finished(), "the pillow stopped after the outage");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.cancel();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.messages, n as u64, "each change read once");
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert!(
        recent_errors(&observer, "outage", 5)
            .await
            .unwrap()
            .is_empty()
    );
    let saved = checkpointed(&observer, "outage").await;
    assert_eq!(saved, n as u64, "checkpoints at the end");
}

/// Store connections plan every statement for the table as it is: a
/// cached generic plan of the pillow-error lookup, prepared while the
/// table was small, picked the index on `pillow` and read every error of
/// the pillow per lookup (seen preloading 100,000 errors).
#[tokio::test(flavor = "multi_thread")]
async fn store_connections_plan_each_statement_for_the_table_as_it_is() {
    let store = pg_store(&pg_schema("plans")).await;
    let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
        .fetch_one(store.postgres().unwrap())
        .await
        .unwrap();
    assert_eq!(mode, "force_custom_plan");
}

/// A table with a version column keeps the newest version of each row
/// whatever order the versions arrive in (a retried older change never
/// overwrites a newer row); a `create-document` fills only an absent
/// document. The same on SQLite and PostgreSQL.
#[tokio::test(flavor = "multi_thread")]
async fn versioned_rows_and_created_documents_keep_the_newest_and_the_first() {
    let phones = TableSpec {
        name: "phones".into(),
        columns: vec![
            Column::new("doc_id", ColumnType::Text, false),
            Column::new("number", ColumnType::Text, false),
            Column::new("modified", ColumnType::Timestamp, true),
        ],
        primary_key: vec!["doc_id".into()],
        version_column: Some("modified".into()),
        definition: None,
    };
    let info = PluginInfo {
        tables: vec![phones],
        indices: vec![IndexSpec {
            name: "users".into(),
            mappings: "{}".into(),
            aliases: vec![],
        }],
    };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(&dir.path().join("store.db")).await.unwrap();
    let postgres = pg_store(&pg_schema("versioned")).await;
    for store in [sqlite, postgres] {
        let sql = SqlSink::new(&store);
        sql.ensure_outputs(&info).await.unwrap();
        let phone = |number: &str, modified: &str| Action::UpsertRows {
            table: "phones".into(),
            rows: vec![vec![
                Cell::Text("case-1".into()),
                Cell::Text(number.into()),
                Cell::Text(modified.into()),
            ]],
        };
        let create = |n: u32| Action::CreateDocument {
            index: "users".into(),
            id: "u1".into(),
            document: format!("{{\"form\":{n}}}"),
        };
        for (chunk, actions) in [
            vec![
                at(phone("111", "2026-11-02T10:00:00Z"), 1),
                at(create(1), 1),
            ],
            // An older version, and a second create: both change nothing.
            vec![
                at(phone("999", "2026-11-01T10:00:00Z"), 2),
                at(create(2), 2),
            ],
            // A newer version replaces it.
            vec![at(phone("333", "2026-11-03T10:00:00Z"), 3)],
        ]
        .into_iter()
        .enumerate()
        {
            sql.commit(
                "versioned",
                &ChunkCommit {
                    plan: WritePlan::build(actions),
                    checkpoints: vec![(TopicPartition::new("case-sql", 0), chunk as u64 + 1)],
                    ..ChunkCommit::default()
                },
                &|_| None,
            )
            .await
            .unwrap();
            if chunk == 1 {
                assert_eq!(number(&store).await, "111", "{}", store.location());
            }
        }
        assert_eq!(number(&store).await, "333", "{}", store.location());
        assert_eq!(
            sql.document("users", "u1").await.unwrap(),
            Some((Some("{\"form\":1}".into()), 1)),
            "{}",
            store.location()
        );
    }
}

/// The number stored for case-1.
async fn number(store: &Store) -> String {
    let sql = "SELECT number FROM phones WHERE doc_id = 'case-1'";
    match (store.sqlite(), store.postgres()) {
        (Some(pool), _) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        (_, Some(pool)) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        _ => unreachable!("a store is SQLite or PostgreSQL"),
    }
}
