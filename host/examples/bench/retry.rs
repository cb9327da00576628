//! Section 9: the retry queue. How fast it drains due errors whose plugin
//! now passes (SQLite and PostgreSQL stores), and what an active queue
//! costs the pillow beside it.

use crate::{cases, publish_generated, root, run_child, write_case_search_plugin};
use pillowtop::config::PillowConfig;
use pillowtop::errors::{Backoff, ErrorKind, PillowError, ProcessorRef};
use pillowtop::feed::{Message, TopicPartition};
use pillowtop::metrics::Metrics;
use pillowtop::retry::RetryQueue;
use pillowtop::sink::Sinks;
use pillowtop::store::Store;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// `n` due errors of pillow `case-search`, one per generated change (ids
/// made unique, `rN-...`, so they never meet a feed's cases), due since
/// epoch 0.
fn due_errors(n: usize) -> Vec<PillowError> {
    let processor = ProcessorRef {
        name: "case-search".into(),
        version: "bench".into(),
        backoff: Backoff::default(),
    };
    cases(n)
        .into_iter()
        .enumerate()
        .map(|(i, line)| {
            let line = line.replacen("\"document_id\":\"", &format!("\"document_id\":\"r{i}-"), 1);
            let c = pillowtop::change::decode(Message {
                tp: TopicPartition::new("case-sql", (i % 4) as u32),
                offset: i as u64,
                key: None,
                value: line.into_bytes(),
                timestamp_ms: None,
            })
            .unwrap();
            let mut e = PillowError::of_change(
                "case-search",
                &c,
                &processor,
                ErrorKind::Retryable,
                "lookup not ready yet".into(),
                0,
            );
            e.backoff.base_ms = 0;
            e
        })
        .collect()
}

/// Store `errors` (all new, due at once). SQLite through the pillow's own
/// `record`; PostgreSQL with one bulk insert per 10,000 (its `record`
/// path stalled here past 40,000 rows in one session: BENCHMARKS.md §9).
async fn preload(store: &Store, errors: &[PillowError]) {
    for part in errors.chunks(10_000) {
        match store.postgres() {
            None => {
                let mut tx = store.db().begin().await.unwrap();
                pillowtop::errors::sql::record(&mut tx, part).await.unwrap();
                store.db().commit(tx).await.unwrap();
            }
            Some(pool) => {
                let col = |f: fn(&PillowError) -> String| part.iter().map(f).collect::<Vec<_>>();
                sqlx::query(
                    r#"INSERT INTO pillow_errors (doc_id, pillow, processor, plugin_version, kind, message, topic, partition, "offset",
                           domain, document_type, change, series_attempts, total_attempts, first_attempt_ms, last_attempt_ms,
                           next_attempt_ms, state)
                       SELECT d, 'case-search', 'case-search', 'bench', 'retryable', 'lookup not ready yet', t, p, o, dom, dt, c,
                              1, 1, 0, 0, 0, 'pending'
                       FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::bytea[])
                            AS u(d, t, p, o, dom, dt, c)"#,
                )
                .bind(col(|e| e.doc_id.clone()))
                .bind(col(|e| e.tp.topic.to_string()))
                .bind(part.iter().map(|e| i64::from(e.tp.partition)).collect::<Vec<_>>())
                .bind(part.iter().map(|e| e.offset as i64).collect::<Vec<_>>())
                .bind(col(|e| e.domain.clone().unwrap_or_default()))
                .bind(col(|e| e.document_type.clone().unwrap_or_default()))
                .bind(part.iter().map(|e| e.change.clone()).collect::<Vec<_>>())
                .execute(pool)
                .await
                .unwrap();
            }
        }
    }
}

fn manifest_in(dir: &Path) -> std::path::PathBuf {
    write_case_search_plugin(dir);
    dir.join("plugin/plugin.toml")
}

pub fn retry_bench() {
    let n: usize = std::env::var("BENCH_RETRY_ERRORS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let errors = due_errors(n);
    let batch: u32 = std::env::var("BENCH_RETRY_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    println!("\n## 9. Retry queue\n");
    println!(
        "Draining {n} due errors whose plugin (case-search, every domain) now passes: `RetryQueue::drain`, batch {batch}, no rate limit; each batch is one due query, the plugin calls and one store transaction with the writes and the resolutions.\n"
    );
    println!("| store | errors/s | wall |");
    println!("|---|---:|---:|");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest_in(dir.path());
    for label in ["SQLite", "PostgreSQL"] {
        let store = rt.block_on(async {
            match label {
                "SQLite" => Store::open(&dir.path().join("drain.db")).await.unwrap(),
                _ => Store::connect(&pillowtop::config::StoreLocation::Postgres {
                    url: crate::servers::pg_url(),
                    schema: crate::servers::unique("retry_bench").replace('-', "_"),
                })
                .await
                .unwrap(),
            }
        });
        rt.block_on(preload(&store, &errors));
        let config = PillowConfig {
            retry_batch_size: batch,
            retry_per_second: 0,
            ..PillowConfig::new("case-search", &["case-sql"], vec![manifest.clone()])
        };
        let processor = pillowtop::wasm::Runtime::new(pillowtop::wasm::RuntimeOptions::default())
            .unwrap()
            .load(&pillowtop::manifest::Manifest::load(&manifest).unwrap())
            .unwrap()
            .0;
        let queue = RetryQueue::new(
            &config,
            Sinks::from(store.clone()),
            vec![processor],
            Arc::new(Metrics::new()),
            CancellationToken::new(),
        );
        let started = Instant::now();
        let summary = rt.block_on(queue.drain(&CancellationToken::new())).unwrap();
        let wall = started.elapsed().as_secs_f64();
        assert_eq!(
            summary.outcomes.get("resolved"),
            Some(&(n as u64)),
            "{summary:?}"
        );
        println!("| {label} | {:.0} | {wall:.1} s |", n as f64 / wall);
    }

    let changes = 50_000;
    println!(
        "\nA pillow beside an active queue: `pillowtop run --until-caught-up` over {changes} changes (embedded feed and store, chunk 2000) with an empty error table, and with {n} due errors of the same pillow preloaded (its queue runs in the process); best of 2 rounds, alternated.\n"
    );
    println!("| retry queue | changes/s | vs none | errors retried during the run |");
    println!("|---|---:|---:|---:|");
    let mut best = [0f64; 3];
    let mut retried = [0u64; 3];
    for _ in 0..2 {
        for (k, rate) in [None, Some(200), Some(0)].into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            write_case_search_plugin(dir.path());
            let config = dir.path().join("pillowtop.toml");
            std::fs::write(
                &config,
                format!(
                    "[feed]\ntype = \"embedded\"\npath = \"feed.db\"\n[store]\nurl = \"sqlite://store.db\"\n[runtime]\ncompile_cache_dir = {:?}\n\
                     [[pillows]]\nname = \"case-search\"\ntopics = [\"case-sql\"]\nprocessors = [\"plugin/plugin.toml\"]\nchunk_size = 2000\nmax_wait_ms = 100\nretry_batch_size = 500\nretry_per_second = {}\n",
                    root().join("data/compile-cache"),
                    rate.unwrap_or(200)
                ),
            )
            .unwrap();
            if rate.is_some() {
                rt.block_on(async {
                    let store = Store::open(&dir.path().join("store.db")).await.unwrap();
                    preload(&store, &errors).await;
                });
            }
            let cfg = config.to_str().unwrap();
            publish_generated(cfg, changes);
            let (wall, _, _, _) = run_child(
                &["--config", cfg, "--log", "warn", "run", "--until-caught-up"],
                None,
            );
            best[k] = best[k].max(changes as f64 / wall);
            if rate.is_some() {
                let resolved = rt.block_on(async {
                    let store = Store::open(&dir.path().join("store.db")).await.unwrap();
                    let filter = pillowtop::errors::ops::Filter {
                        state: Some(pillowtop::errors::ErrorState::Resolved),
                        ..Default::default()
                    };
                    pillowtop::errors::ops::counts(store.db(), &filter)
                        .await
                        .unwrap()
                        .total
                });
                retried[k] = retried[k].max(resolved);
            }
        }
    }
    for (k, label) in [
        "none (empty error table)",
        "active, retry_per_second = 200 (default)",
        "active, no rate limit",
    ]
    .into_iter()
    .enumerate()
    {
        println!(
            "| {label} | {:.0} | {:.2}x | {} |",
            best[k],
            best[k] / best[0],
            if k == 0 {
                "-".to_owned()
            } else {
                retried[k].to_string()
            }
        );
    }
}
