//! The Kafka feed against a real Kafka-protocol broker (tansu, started by
//! `make services`): publish, partition assignment across processes,
//! restarts that resume at the checkpoint.
//!
//! tansu's memory engine can report ListOffsets(latest) a batch behind the
//! last produced one; tests publish first and wait until the end offsets
//! cover what they published before running.

use crate::support::*;
use pillowtop::feed::kafka::KafkaFeed;
use pillowtop::feed::{Feed, TopicPartition};
use pillowtop::store::Store;
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A config reading `topic` from Kafka through the tagger plugin (one row
/// per change: doc id, partition, offset) into a SQLite store (tests point
/// PILLOWTOP_STORE_URL elsewhere).
fn write_config(dir: &Path, brokers: &str, topic: &str) -> PathBuf {
    write_config_with(dir, brokers, topic, "url = \"sqlite://store.db\"", "")
}

/// [`write_config`] with the `[store]` body and extra pillow keys given.
pub fn write_config_with(
    dir: &Path,
    brokers: &str,
    topic: &str,
    store: &str,
    pillow: &str,
) -> PathBuf {
    tagger_manifest(dir);
    let path = dir.join("pillowtop.toml");
    std::fs::write(
        &path,
        format!(
            "[feed]\ntype = \"kafka\"\nbrokers = {brokers:?}\n[store]\n{store}\n\
             [runtime]\ncompile_cache_dir = {:?}\n[reload]\nwatch = false\n\
             [[pillows]]\nname = \"tagged\"\ntopics = [{topic:?}]\nprocessors = [\"tagger/plugin.toml\"]\nchunk_size = 100\nmax_wait_ms = 50\n{pillow}\n",
            cache_dir()
        ),
    )
    .unwrap();
    path
}

/// Publish `n` changes with ids `{prefix}-{i}` through `pillowtop publish --brokers`.
fn publish(brokers: &str, topic: &str, partitions: u32, prefix: &str, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            serde_json::json!({"document_id": format!("{prefix}-{i}"), "document_type": "CommCareCase", "domain": "d", "document": {"i": i}})
                .to_string()
        })
        .collect();
    publish_lines(brokers, topic, partitions, &lines);
}

/// Publish change lines through `pillowtop publish --brokers`.
pub fn publish_lines(brokers: &str, topic: &str, partitions: u32, lines: &[String]) {
    let n = lines.len();
    let lines: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let mut child = bin()
        .args([
            "publish",
            "--brokers",
            brokers,
            "--topic",
            topic,
            "--partitions",
        ])
        .arg(partitions.to_string())
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("published {n} changes to {topic}")),
        "{stderr}"
    );
}

/// Wait until the broker's end offsets add up to `total`.
pub async fn wait_for_end_offsets(feed: &Feed, topic: &str, total: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let partitions = feed.partitions(&[topic.to_owned()]).await.unwrap();
        let sum = end_total(feed, &partitions).await;
        if sum >= total {
            assert_eq!(sum, total, "more messages than published in {topic}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "end offsets of {topic} stay at {sum} < {total}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (doc_id, partition, offset) of every row.
async fn rows(store_path: &Path) -> Vec<(String, u32, u64)> {
    let store = Store::open(store_path).await.unwrap();
    sqlx::query(r#"SELECT doc_id, "partition", "offset" FROM tagged"#)
        .fetch_all(store.sqlite().unwrap())
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get::<i64, _>(1) as u32,
                r.get::<i64, _>(2) as u64,
            )
        })
        .collect()
}

fn run(config: &Path, store: &Path, extra: &[&str]) -> String {
    let out = bin()
        .args([
            "--config",
            config.to_str().unwrap(),
            "--log",
            "warn",
            "run",
            "--until-caught-up",
        ])
        .args(extra)
        .env(
            "PILLOWTOP_STORE_URL",
            format!("sqlite://{}", store.display()),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Two processes over an 8-partition topic: together they process every
/// message exactly once, and each saves only its own partitions' checkpoints.
#[tokio::test(flavor = "multi_thread")]
async fn two_processes_split_an_eight_partition_topic_exactly() {
    let brokers = kafka_brokers();
    let topic = unique("split");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &brokers, &topic);
    let n = 2000;
    publish(&brokers, &topic, 8, "s", n);
    let feed = Feed::Kafka(KafkaFeed::connect(&brokers).unwrap());
    wait_for_end_offsets(&feed, &topic, n as u64).await;

    // Each process has its own store, so what each did stays apart.
    let stores: Vec<PathBuf> = (0..2)
        .map(|k| dir.path().join(format!("store-{k}.db")))
        .collect();
    let handles: Vec<_> = (0..2)
        .map(|k| {
            let (config, store) = (config.clone(), stores[k].clone());
            std::thread::spawn(move || {
                run(
                    &config,
                    &store,
                    &["--num-processes", "2", "--process-num", &k.to_string()],
                )
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }

    let all: Vec<TopicPartition> = (0..8).map(|p| TopicPartition::new(&topic, p)).collect();
    let mut seen: BTreeMap<(u32, u64), usize> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for (k, store_path) in stores.iter().enumerate() {
        // pairs[k::2] of the sorted partitions.
        let mine: BTreeSet<u32> = (0..8).filter(|p| p % 2 == k as u32).collect();
        for (id, partition, offset) in rows(store_path).await {
            assert!(
                mine.contains(&partition),
                "process {k} processed partition {partition}"
            );
            *seen.entry((partition, offset)).or_default() += 1;
            ids.insert(id);
        }
        let store = Store::open(store_path).await.unwrap();
        let checkpoints = store.checkpoints("tagged").await.unwrap();
        let saved: BTreeSet<u32> = checkpoints.iter().map(|c| c.tp.partition).collect();
        assert_eq!(saved, mine, "process {k} saved checkpoints of {saved:?}");
        for c in &checkpoints {
            let high = feed.watermarks(std::slice::from_ref(&c.tp)).await.unwrap()[0].high;
            assert_eq!(c.next_offset, high, "{} checkpoint", c.tp);
        }
    }
    assert_eq!(ids.len(), n, "every published change processed");
    assert!(
        seen.values().all(|&c| c == 1),
        "a change was processed twice"
    );
    let mut expected = BTreeSet::new();
    for (tp, w) in all.iter().zip(feed.watermarks(&all).await.unwrap()) {
        expected.extend((0..w.high).map(|o| (tp.partition, o)));
    }
    assert_eq!(
        seen.keys().copied().collect::<BTreeSet<_>>(),
        expected,
        "every offset covered"
    );
}

/// A graceful restart resumes at the exact next offset: nothing reprocessed.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_resumes_at_the_checkpoint() {
    let brokers = kafka_brokers();
    let topic = unique("resume");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &brokers, &topic);
    let store = dir.path().join("store.db");
    let feed = Feed::Kafka(KafkaFeed::connect(&brokers).unwrap());
    publish(&brokers, &topic, 3, "a", 500);
    wait_for_end_offsets(&feed, &topic, 500).await;
    let first = run(&config, &store, &[]);
    assert!(first.contains("pillow tagged: 500 changes read"), "{first}");
    publish(&brokers, &topic, 3, "b", 300);
    wait_for_end_offsets(&feed, &topic, 800).await;
    let second = run(&config, &store, &[]);
    assert!(
        second.contains("pillow tagged: 300 changes read"),
        "{second}"
    );
    let rows = rows(&store).await;
    assert_eq!(rows.len(), 800);
    assert_eq!(rows.iter().filter(|r| r.0.starts_with("b-")).count(), 300);
}
