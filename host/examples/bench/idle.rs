//! Section 14: what a caught-up pillow costs doing nothing, and how soon it
//! still picks up a new change.
//!
//! For each feed (embedded; Kafka with PostgreSQL checkpoints) a real
//! `pillowtop run` with the case-search pillow, the admin endpoint and the
//! plugin file watcher on (as a user runs it) reads a small backlog; once
//! its `/status/live` positions reach the end, its CPU (user + sys from
//! `/proc/PID/stat`) is read over `BENCH_IDLE_SECONDS` (default 60) of
//! idling. Then single changes are published at uneven intervals, and the
//! time from the publish being acknowledged to the process reporting the
//! change processed is taken: an upper bound of the pickup latency, which
//! includes the transform and the write.

use super::servers::{Broker, admin_get, free_port, pg_url, runtime, unique};
use super::{env_or, pillowtop_cmd, root, stat_cpu, write_case_search_plugin};
use pillowtop::feed::Feed;
use pillowtop::feed::embedded::EmbeddedFeed;
use pillowtop::feed::kafka::KafkaFeed;
use pillowtop::feed::publish::Publisher;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// `max_wait_ms` of the pillow: the pickup target is this + 50 ms.
const MAX_WAIT_MS: u64 = 200;
/// Single changes published after the idle window.
const PICKUPS: usize = 20;

/// `GET /status/live` on `port`: the sum of the processed positions.
fn processed(port: u16) -> Option<u64> {
    let (_, body) = admin_get(port, "/status/live")?;
    let live: Vec<serde_json::Value> = serde_json::from_str(&body).ok()?;
    Some(live.iter().filter_map(|l| l["processed"].as_u64()).sum())
}

/// Wait until the process on `port` reports `target` changes processed.
fn wait_for(port: u16, target: u64, child: &mut Child, log: &Path) -> Duration {
    let t = Instant::now();
    loop {
        if processed(port).is_some_and(|p| p >= target) {
            return t.elapsed();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "pillowtop run exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the pillow did not reach {target} changes processed in 120 s: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

struct Idle {
    cpu_share: f64,
    pickups: Vec<f64>,
}

/// Run the pillow of `config` over `lines` published to `feed`, idle it,
/// then time single changes.
fn measure(config: &Path, feed: &Feed, topic: &str, lines: &[String], seconds: u64) -> Idle {
    let rt = runtime();
    // One publisher for the run, so the time from a publish acknowledged
    // to the change processed does not include shutting a producer down
    // (`publish_lines` makes one per call).
    let publisher = Publisher::new(feed).unwrap();
    let publish = |lines: &[String]| {
        let batch = lines
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let key = v["document_id"].as_str().map(|k| k.as_bytes().to_vec());
                (key, l.as_bytes().to_vec())
            })
            .collect();
        rt.block_on(publisher.send(topic, batch)).unwrap();
    };
    rt.block_on(feed.create_topic(topic, Some(4))).unwrap();
    publish(lines);
    let port = free_port();
    let log = config.with_file_name("host.log");
    let mut child = pillowtop_cmd()
        .arg("--config")
        .arg(config)
        .args(["--log", "warn", "run"])
        .env("PILLOWTOP_ADMIN_ADDRESS", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut total = lines.len() as u64;
    wait_for(port, total, &mut child, &log);
    // Let every after-work timer run out before the window.
    std::thread::sleep(Duration::from_secs(2));
    let pid = child.id().to_string();
    let cpu0 = stat_cpu(&pid, 14);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let cpu_share = (stat_cpu(&pid, 14) - cpu0) / t.elapsed().as_secs_f64();
    let mut pickups = Vec::new();
    for i in 0..PICKUPS {
        // Uneven gaps, so a change lands anywhere in a poll's wait.
        std::thread::sleep(Duration::from_millis(300 + (i as u64 * 137) % 500));
        publish(&lines[i % lines.len()..][..1]);
        total += 1;
        pickups.push(wait_for(port, total, &mut child, &log).as_secs_f64());
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let _ = child.wait();
    Idle { cpu_share, pickups }
}

fn config(dir: &Path, feed_and_store: &str, topic: &str) -> std::path::PathBuf {
    write_case_search_plugin(dir);
    let config = dir.join("pillowtop.toml");
    std::fs::write(
        &config,
        format!(
            "{feed_and_store}\n[runtime]\ncompile_cache_dir = {:?}\n\
             [[pillows]]\nname = \"case-search\"\ntopics = [{topic:?}]\nprocessors = [\"plugin/plugin.toml\"]\n\
             chunk_size = 500\nmax_wait_ms = {MAX_WAIT_MS}\n",
            root().join("data/compile-cache")
        ),
    )
    .unwrap();
    config
}

pub fn idle_bench(lines: &[String]) {
    let seconds: u64 = env_or("BENCH_IDLE_SECONDS", 60);
    let lines = &lines[..lines.len().min(1000)];
    println!(
        "\n## 14. Idle: a caught-up pillow's CPU, and the time to pick up a new change\n\n\
         `pillowtop run` with the case-search pillow, admin endpoint and file watcher on, max_wait_ms = {MAX_WAIT_MS}, after reading {} changes; CPU over {seconds} s idle; then {PICKUPS} single changes, each timed from its publish acknowledged to the process reporting it processed (`/status/live`).\n",
        lines.len()
    );
    println!("| feed | idle CPU (share of one core) | pickup p50 | pickup max | target max |");
    println!("|---|---:|---:|---:|---:|");
    let row = |label: &str, idle: Idle| {
        let mut p = idle.pickups;
        p.sort_by(f64::total_cmp);
        println!(
            "| {label} | {:.2}% | {:.0} ms | {:.0} ms | {} ms |",
            idle.cpu_share * 100.0,
            p[p.len() / 2] * 1e3,
            p[p.len() - 1] * 1e3,
            MAX_WAIT_MS + 50
        );
    };

    let dir = tempfile::tempdir().unwrap();
    let config_path = config(
        dir.path(),
        "[feed]\ntype = \"embedded\"\npath = \"feed.db\"\n[store]\nurl = \"sqlite://store.db\"",
        "case-sql",
    );
    let feed = Feed::Embedded(
        runtime()
            .block_on(EmbeddedFeed::open(&dir.path().join("feed.db")))
            .unwrap(),
    );
    row(
        "embedded (SQLite feed and store)",
        measure(&config_path, &feed, "case-sql", lines, seconds),
    );

    let broker = Broker::start_exact();
    let topic = unique("idle-case-sql").replace('_', "-");
    let brokers = broker.brokers();
    let dir = tempfile::tempdir().unwrap();
    let config_path = config(
        dir.path(),
        &format!(
            "[feed]\ntype = \"kafka\"\nbrokers = {brokers:?}\n[store]\nurl = {:?}\nschema = {:?}",
            pg_url(),
            unique("bench_idle")
        ),
        &topic,
    );
    let feed = Feed::Kafka(KafkaFeed::connect(&brokers).unwrap());
    row(
        &format!("Kafka ({}), PostgreSQL store", broker.describe()),
        measure(&config_path, &feed, &topic, lines, seconds),
    );
}
