//! Crashes and outages with the real servers: a pillow killed with SIGKILL
//! mid-stream, a Kafka broker restarted under a running pillow, two
//! processes sharing one PostgreSQL store. Kafka is tansu (`make services`);
//! the store is PostgreSQL, one schema per test.
//!
//! The broker-restart test runs its own tansu on a free port with the
//! sqlite storage engine (durable across a `kill -9`; the memory engine
//! would lose the topic).

use crate::kafka::{publish_lines, wait_for_end_offsets, write_config_with};
use crate::support::*;
use pillowtop::feed::kafka::KafkaFeed;
use pillowtop::feed::{Feed, TopicPartition};
use pillowtop::store::Store;
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A change line for the tagger plugin: an upsert, or a deletion.
fn line(id: &str, n: usize, deletion: bool) -> String {
    serde_json::json!({"document_id": id, "document_type": "CommCareCase", "domain": "d",
        "is_deletion": deletion, "document": {"n": n}})
    .to_string()
}

/// The `tagged` rows: doc id -> (partition, offset of the change that
/// wrote it); empty until the pillow has created the table.
async fn tagged(store: &Store) -> BTreeMap<String, (u32, u64)> {
    let pool = store.postgres().unwrap();
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass('tagged')::text")
        .fetch_one(pool)
        .await
        .unwrap();
    if exists.is_none() {
        return BTreeMap::new();
    }
    sqlx::query(r#"SELECT doc_id, "partition", "offset" FROM tagged"#)
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get::<String, _>(0),
                (r.get::<i64, _>(1) as u32, r.get::<i64, _>(2) as u64),
            )
        })
        .collect()
}

/// Assert two row maps are equal, printing a short diff when not.
fn assert_rows(
    got: &BTreeMap<String, (u32, u64)>,
    want: &BTreeMap<String, (u32, u64)>,
    what: &str,
) {
    if got == want {
        return;
    }
    let extra: Vec<_> = got
        .iter()
        .filter(|(k, v)| want.get(*k) != Some(v))
        .take(10)
        .collect();
    let missing: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .take(10)
        .collect();
    panic!(
        "{what}: {} rows, expected {}; first rows not expected: {extra:?}; first expected rows missing or different: {missing:?}",
        got.len(),
        want.len()
    );
}

async fn checkpoints(store: &Store) -> HashMap<TopicPartition, u64> {
    store
        .checkpoints("tagged")
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.tp, c.next_offset))
        .collect()
}

/// Every message of `topic` as (partition, offset, doc id, is_deletion),
/// read back from the broker.
async fn read_all(feed: &Feed, topic: &str) -> Vec<(u32, u64, String, bool)> {
    let partitions = feed.partitions(&[topic.to_owned()]).await.unwrap();
    let total = end_total(feed, &partitions).await;
    let mut reader = feed
        .reader(partitions.into_iter().map(|tp| (tp, 0)).collect())
        .unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (out.len() as u64) < total {
        assert!(
            Instant::now() < deadline,
            "read back {} of {total}",
            out.len()
        );
        for m in reader.poll(5000, Duration::from_millis(200)).await.unwrap() {
            let v: serde_json::Value = serde_json::from_slice(&m.value).unwrap();
            out.push((
                m.tp.partition,
                m.offset,
                v["document_id"].as_str().unwrap().to_owned(),
                v["is_deletion"] == true,
            ));
        }
    }
    out
}

/// What the table must hold after processing every message below `upto`
/// (per partition): the last change of each document decides; a deletion
/// leaves no row.
fn expected(
    messages: &[(u32, u64, String, bool)],
    upto: impl Fn(u32) -> u64,
) -> BTreeMap<String, (u32, u64)> {
    let mut sorted: Vec<_> = messages.iter().collect();
    sorted.sort_by_key(|m| (m.0, m.1));
    let mut state = BTreeMap::new();
    for (partition, offset, id, deletion) in sorted {
        if *offset >= upto(*partition) {
            continue;
        }
        if *deletion {
            state.remove(id);
        } else {
            state.insert(id.clone(), (*partition, *offset));
        }
    }
    state
}

fn spawn_run(config: &Path, extra: &[&str]) -> Child {
    bin()
        .args(["--config", config.to_str().unwrap(), "--log", "warn", "run"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// SIGTERM (finish the chunk, save checkpoints), then [`finish`].
fn terminate(child: Child) -> String {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    finish(child)
}

/// The number after "pillow tagged: " in a run summary.
fn changes_read(stdout: &str) -> u64 {
    stdout
        .split("pillow tagged: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no run summary in: {stdout}"))
}

/// SIGKILL mid-stream, then restart: at the kill the table holds exactly
/// the effect of the checkpointed prefix (rows and checkpoint commit in one
/// transaction), the restart reads only what the checkpoint had not
/// covered, and afterwards every live document has exactly one row and no
/// deleted one has any.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_stream_loses_nothing_and_repeats_only_the_unsaved_tail() {
    let brokers = kafka_brokers();
    let topic = unique("kill9");
    let schema = pg_schema("kill9");
    let dir = tempfile::tempdir().unwrap();
    // Checkpoint every chunk: then "the checkpointed prefix" is exact.
    let config = write_config_with(
        dir.path(),
        &brokers,
        &topic,
        &pg_store_toml(&schema),
        "checkpoint_every = 1",
    );
    let docs: usize = 15_000;
    let mut lines: Vec<String> = (0..docs)
        .map(|i| line(&format!("k-{i}"), 0, false))
        .collect();
    lines.extend((0..docs).map(|i| line(&format!("k-{i}"), 1, i.is_multiple_of(5))));
    publish_lines(&brokers, &topic, 4, &lines);
    let feed = Feed::Kafka(KafkaFeed::connect(&brokers).unwrap());
    wait_for_end_offsets(&feed, &topic, lines.len() as u64).await;
    let store = pg_store(&schema).await;

    let mut child = spawn_run(&config, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done: u64 = checkpoints(&store).await.values().sum();
        if done >= 3000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no progress: {done} checkpointed"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pillow exited early"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let at_kill = checkpoints(&store).await;
    let saved: u64 = at_kill.values().sum();
    assert!(
        saved < lines.len() as u64,
        "the pillow finished before the kill ({saved} checkpointed): publish more changes"
    );
    let messages = read_all(&feed, &topic).await;
    let upto = |p: u32| {
        at_kill
            .get(&TopicPartition::new(&topic, p))
            .copied()
            .unwrap_or(0)
    };
    assert_rows(
        &tagged(&store).await,
        &expected(&messages, upto),
        &format!(
            "rows at the kill must be exactly the checkpointed prefix's (checkpoints {at_kill:?})"
        ),
    );

    let stdout = finish(spawn_run(&config, &["--until-caught-up"]));
    assert_eq!(
        changes_read(&stdout),
        lines.len() as u64 - saved,
        "the restart reads from the checkpoint on: {stdout}"
    );
    let all = expected(&messages, |_| u64::MAX);
    assert_eq!(all.len(), docs - docs / 5, "live documents");
    assert_rows(&tagged(&store).await, &all, "rows after the restart");
    assert!(recent_errors(&store, "tagged", 5).await.unwrap().is_empty());
}

/// A test's own broker, a unique topic and PostgreSQL schema, and a host
/// config for them in a temp dir (kept alive by the returned `TempDir`).
fn own_broker_run(name: &str) -> (Broker, String, String, tempfile::TempDir, PathBuf) {
    let broker = Broker::start();
    let topic = unique(name);
    let schema = pg_schema(&name.replace('-', "_"));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(
        dir.path(),
        &broker.addr,
        &topic,
        &pg_store_toml(&schema),
        "",
    );
    (broker, topic, schema, dir, config)
}

/// Wait until the table holds `n` rows, while the pillow keeps running.
async fn wait_for_rows(store: &Store, n: usize, child: &mut Child, seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let got = tagged(store).await.len();
        if got == n {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pillow exited with {got} of {n} rows"
        );
        assert!(
            Instant::now() < deadline,
            "{got} of {n} rows after {seconds} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The broker is killed and restarted under a running pillow: the pillow
/// rides it out (no operator action, no exit), then processes what is
/// published after the restart; every change lands once.
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_mid_run_is_survived_without_operator_action() {
    let (mut broker, topic, schema, _dir, config) = own_broker_run("restart");
    let brokers = broker.addr.clone();
    let first: Vec<String> = (0..2000)
        .map(|i| line(&format!("a-{i}"), 0, false))
        .collect();
    publish_lines(&brokers, &topic, 2, &first);
    let store = pg_store(&schema).await;
    let mut child = spawn_run(&config, &[]);
    wait_for_rows(&store, 2000, &mut child, 60).await;

    broker.kill();
    // Long enough for the consumer to see the broker gone and retry.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the pillow exited while the broker was down"
    );
    broker.up();
    let second: Vec<String> = (0..2000)
        .map(|i| line(&format!("b-{i}"), 0, false))
        .collect();
    publish_lines(&brokers, &topic, 2, &second);
    wait_for_rows(&store, 4000, &mut child, 90).await;

    // SIGTERM: finish the chunk, save checkpoints, exit 0.
    terminate(child);
    let feed = Feed::Kafka(KafkaFeed::connect(&brokers).unwrap());
    let saved = checkpoints(&store).await;
    let partitions = feed.partitions(std::slice::from_ref(&topic)).await.unwrap();
    let ends = feed.watermarks(&partitions).await.unwrap();
    for (tp, w) in partitions.into_iter().zip(ends) {
        let high = w.high;
        assert_eq!(saved.get(&tp).copied(), Some(high), "{tp} checkpoint");
    }
    let high: u64 = saved.values().sum();
    assert_eq!(high, 4000, "each change published once");
    assert!(recent_errors(&store, "tagged", 5).await.unwrap().is_empty());
}

/// `run` started while its broker is down waits for it (past librdkafka's
/// metadata timeout, no exit), then starts by itself when the broker comes
/// up and processes every change once; SIGTERM then exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_started_before_its_broker_waits_for_it() {
    let (mut broker, topic, schema, _dir, config) = own_broker_run("late-broker");
    let brokers = broker.addr.clone();
    let lines: Vec<String> = (0..500)
        .map(|i| line(&format!("l-{i}"), 0, false))
        .collect();
    publish_lines(&brokers, &topic, 2, &lines);
    broker.kill();
    let store = pg_store(&schema).await;
    let mut child = spawn_run(&config, &[]);
    // Longer than the 10 s metadata request timeout: the first attempt
    // has failed and the process is still there.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "run exited while the broker was down: {}",
        finish(child)
    );
    assert!(tagged(&store).await.is_empty());
    broker.up();
    wait_for_rows(&store, 500, &mut child, 90).await;
    let stdout = terminate(child);
    assert_eq!(changes_read(&stdout), 500, "{stdout}");
    assert!(recent_errors(&store, "tagged", 5).await.unwrap().is_empty());
}

/// Two processes of one pillow share a PostgreSQL store: they create the
/// tables concurrently without tripping over each other, split the
/// partitions, and `status` shows per partition the checkpoint, the
/// broker's end offset, need-processing and the owning process.
#[tokio::test(flavor = "multi_thread")]
async fn two_processes_share_a_postgres_store_and_status_shows_the_owners() {
    let brokers = kafka_brokers();
    let topic = unique("shared");
    let schema = pg_schema("shared");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(
        dir.path(),
        &brokers,
        &topic,
        &pg_store_toml(&schema),
        "num_processes = 2",
    );
    let lines: Vec<String> = (0..1200)
        .map(|i| line(&format!("s-{i}"), 0, false))
        .collect();
    publish_lines(&brokers, &topic, 4, &lines);
    let feed = Feed::Kafka(KafkaFeed::connect(&brokers).unwrap());
    wait_for_end_offsets(&feed, &topic, 1200).await;
    let children: Vec<Child> = (0..2)
        .map(|k| {
            spawn_run(
                &config,
                &["--until-caught-up", "--process-num", &k.to_string()],
            )
        })
        .collect();
    let read: u64 = children.into_iter().map(|c| changes_read(&finish(c))).sum();
    assert_eq!(read, 1200, "each change read by exactly one process");
    let store = pg_store(&schema).await;
    assert_eq!(tagged(&store).await.len(), 1200);

    let out = bin()
        .args(["--config", config.to_str().unwrap(), "status", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pillow = &status["pillows"][0];
    assert_eq!(pillow["need_processing"], 0, "{pillow:#}");
    let partitions = pillow["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 4);
    for (i, p) in partitions.iter().enumerate() {
        let tp = TopicPartition::new(&topic, i as u32);
        let high = feed.watermarks(std::slice::from_ref(&tp)).await.unwrap()[0].high;
        assert_eq!(p["partition"], tp.to_string());
        assert_eq!(p["process"], i % 2, "pairs[k::2] owns {tp}");
        assert_eq!(p["end_offset"], high);
        assert_eq!(p["checkpoint"], high);
        assert_eq!(p["need_processing"], 0);
    }
    let processes = pillow["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 2, "{processes:?}");
    assert!(processes.iter().all(|p| p["state"] == "stopped"));
}
