//! Sections 6 to 8: benchmarks against real servers. Section 6 starts its
//! own tansu with the memory engine (the binary `make services` installs;
//! `BENCH_KAFKA_BROKERS` points it at another broker instead); PostgreSQL
//! on PILLOWTOP_PG_URL and osmem-server on PILLOWTOP_ES_URL are the ones
//! `make services` starts.

use super::{echo_summary, pillowtop_cmd, proc_cpu, root, run_child, write_case_search_plugin};
use pillowtop::action::{Action, Cell, Column, ColumnType, PluginInfo, TableSpec};
use pillowtop::config::StoreLocation;
use pillowtop::feed::kafka::KafkaFeed;
use pillowtop::feed::{Feed, TopicPartition};
use pillowtop::sink::{ChunkCommit, SqlSink};
use pillowtop::sink::{VersionedAction, WritePlan};
use pillowtop::store::Store;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn reachable(addr: &str) -> bool {
    addr.parse()
        .ok()
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// The broker section 6 measures against.
pub(crate) enum Broker {
    /// `BENCH_KAFKA_BROKERS`, run by someone else.
    External(String),
    /// A tansu of the bench's own on a free port, killed on drop: the
    /// memory engine for section 6 (fast; it can report a partition's end
    /// late, and section 6 checks it read every change), the sqlite
    /// engine where a run must stop exactly at the end.
    Own {
        addr: String,
        child: std::process::Child,
        _dir: tempfile::TempDir,
    },
}

impl Broker {
    pub(crate) fn start() -> Broker {
        Broker::start_on("memory://tansu/")
    }

    /// A tansu with the sqlite engine in a temporary directory, which
    /// reports every partition's end exactly (the memory engine can
    /// report it a batch late, for good).
    pub(crate) fn start_exact() -> Broker {
        // Relative to the broker's directory (its current one).
        Broker::start_on("sqlite://tansu.db")
    }

    /// A tansu with `--storage-engine storage`, unless BENCH_KAFKA_BROKERS
    /// names one to use instead.
    fn start_on(storage: &str) -> Broker {
        if let Ok(brokers) = std::env::var("BENCH_KAFKA_BROKERS") {
            let first = brokers.split(',').next().unwrap_or_default();
            assert!(
                reachable(first),
                "no Kafka broker at {brokers} (BENCH_KAFKA_BROKERS)"
            );
            return Broker::External(brokers);
        }
        let bin = super::tool("PILLOWTOP_TANSU", "bin/tansu");
        assert!(
            bin.exists(),
            "tansu is missing at {}: run `make services`, or set PILLOWTOP_TANSU",
            bin.display()
        );
        let addr = format!("127.0.0.1:{}", free_port());
        let url = format!("tcp://{addr}");
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("tansu.log")).unwrap();
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", storage])
            .current_dir(dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !reachable(&addr) {
            assert!(
                Instant::now() < deadline,
                "tansu did not start on {addr}: {}",
                std::fs::read_to_string(dir.path().join("tansu.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker::Own {
            addr,
            child,
            _dir: dir,
        }
    }

    pub(crate) fn brokers(&self) -> String {
        match self {
            Broker::External(b) => b.clone(),
            Broker::Own { addr, .. } => addr.clone(),
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Broker::External(b) => format!("the broker at {b}"),
            Broker::Own { .. } => "tansu, started for this section".into(),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Broker::Own { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The messages in partitions 0-3 of `topic` (the end offsets summed;
/// 0 while the broker cannot say).
pub(crate) async fn topic_end(feed: &Feed, topic: &str) -> u64 {
    let partitions: Vec<_> = (0..4).map(|p| TopicPartition::new(topic, p)).collect();
    feed.watermarks(&partitions)
        .await
        .map_or(0, |w| w.iter().map(|w| w.high).sum())
}

/// `GET path` from the admin listener on `port`: (status, body).
pub(crate) fn admin_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_owned()))
}

/// A loopback port nothing listens on now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// osmem-server, as `make services` starts it.
pub(crate) fn es_url() -> String {
    std::env::var("PILLOWTOP_ES_URL").unwrap_or_else(|_| "http://127.0.0.1:19200".into())
}

pub fn pg_url() -> String {
    std::env::var("PILLOWTOP_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/pillowtop_test".into())
}

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `pillowtop publish --brokers B --topic T --partitions 4` fed `lines`;
/// returns the wall seconds it took.
pub(crate) fn publish(brokers: &str, topic: &str, lines: &[String]) -> f64 {
    let started = Instant::now();
    let mut child = pillowtop_cmd()
        .args([
            "publish",
            "--brokers",
            brokers,
            "--topic",
            topic,
            "--partitions",
            "4",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        let mut stdin = std::io::BufWriter::new(child.stdin.take().unwrap());
        for l in lines {
            stdin.write_all(l.as_bytes()).unwrap();
            stdin.write_all(b"\n").unwrap();
        }
    }
    assert!(child.wait().unwrap().success(), "publish failed");
    started.elapsed().as_secs_f64()
}

async fn checkpointed(store: &Store) -> u64 {
    store
        .checkpoints("case-search")
        .await
        .unwrap()
        .iter()
        .map(|c| c.next_offset)
        .sum()
}

/// Section 6.
pub fn kafka_bench(lines: &[String]) {
    let n = lines.len();
    let avg = lines.iter().map(String::len).sum::<usize>() / n.max(1);
    let broker = Broker::start();
    let brokers = broker.brokers();
    let topic = unique("bench-case-sql").replace('_', "-");
    let schema = unique("bench_kafka");
    println!(
        "\n## 6. Kafka -> case-search -> PostgreSQL ({n} changes of {avg} bytes, 4 partitions; {}, and PostgreSQL, on this machine)\n",
        broker.describe()
    );
    let publish_secs = publish(&brokers, &topic, lines);
    println!(
        "Published with `pillowtop publish --brokers`: {:.0} changes/s (the broker's ingest rate bounds the live test below).\n",
        n as f64 / publish_secs
    );

    let dir = tempfile::tempdir().unwrap();
    write_case_search_plugin(dir.path());
    let config = dir.path().join("pillowtop.toml");
    // checkpoint_every = 1: every chunk commits its checkpoint (chunks are
    // far larger than CommCare's 1000-change default anyway), so the lag
    // below is read exactly from the checkpoints.
    std::fs::write(
        &config,
        format!(
            "[feed]\ntype = \"kafka\"\nbrokers = {brokers:?}\n[store]\nurl = {:?}\nschema = {schema:?}\n\
             [runtime]\ncompile_cache_dir = {:?}\n[reload]\nwatch = false\n\
             [[pillows]]\nname = \"case-search\"\ntopics = [{topic:?}]\nprocessors = [\"plugin/plugin.toml\"]\n\
             chunk_size = 2000\nmax_wait_ms = 20\ncheckpoint_every = 1\n",
            pg_url(),
            root().join("data/compile-cache")
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let (wall, cpu, rss, out) = run_child(
        &[
            "--config",
            config,
            "--log",
            "warn",
            "run",
            "--until-caught-up",
        ],
        None,
    );
    println!(
        "| measure | result |\n|---|---:|\n| catch-up of the backlog, wall incl. start | {:.0} changes/s |\n| pillow process CPU (user+sys) | {:.1} µs/change |\n| peak RSS of the pillow process | {rss:.0} MiB |",
        n as f64 / wall,
        cpu * 1e6 / n as f64
    );
    echo_summary(&out, "kafka catch-up");
    // The memory engine can report a partition's end a batch late; a
    // catch-up that stopped short would overstate the rate.
    assert!(
        out.contains(&format!(": {n} changes read")),
        "the catch-up did not read all {n} changes; its summary:\n{out}"
    );

    // Live: a running pillow, changes published as fast as the broker
    // takes them; lag = how far the checkpoints trail the published end.
    let rt = runtime();
    let store = rt
        .block_on(Store::connect(&StoreLocation::Postgres {
            url: pg_url(),
            schema: schema.clone(),
        }))
        .unwrap();
    let mut child = pillowtop_cmd()
        .args(["--config", config, "--log", "warn", "run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Ready once it has registered and is idle at the end.
    std::thread::sleep(Duration::from_secs(2));
    let live = &lines[..n.min(20_000)];
    let target = n as u64 + live.len() as u64;
    let sampler = {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let store = store.clone();
        let (sampler_brokers, topic_name) = (brokers.clone(), topic.clone());
        let handle = rt.spawn(async move {
            let mut max_lag_seen = 0u64;
            let feed = Feed::Kafka(KafkaFeed::connect(&sampler_brokers).unwrap());
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let high = topic_end(&feed, &topic_name).await;
                max_lag_seen = max_lag_seen.max(high.saturating_sub(checkpointed(&store).await));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            max_lag_seen
        });
        (stop, handle)
    };
    let t0 = Instant::now();
    let publish_secs = publish(&brokers, &topic, live);
    let published_at = t0.elapsed();
    let caught_up_at = rt.block_on(async {
        loop {
            if checkpointed(&store).await >= target {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "live phase stalled"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    sampler.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let max_lag = rt.block_on(sampler.1).unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    println!(
        "| live stream: {} changes published at {:.0}/s; max lag sampled every 50 ms | {max_lag} changes |\n| live stream: caught up after the last publish was acknowledged | {:.0} ms |",
        live.len(),
        live.len() as f64 / publish_secs,
        (caught_up_at.saturating_sub(published_at)).as_secs_f64() * 1e3
    );

    consumer_bench(&brokers, &topic, target);
}

/// The consumer alone: raw rdkafka vs. the host's reader + decode, over
/// the same `total` messages of `topic`, best of three each.
fn consumer_bench(brokers: &str, topic: &str, total: u64) {
    let raw = || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "bench-raw")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .set("queued.max.messages.kbytes", "65536")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..4 {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        // Timed from the first message on (not counted), as below:
        // connecting and the first fetch are not throughput.
        let mut started = None;
        let (mut count, mut bytes) = (0u64, 0usize);
        while count < total {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                started.get_or_insert_with(Instant::now);
                bytes += m.payload().map_or(0, <[u8]>::len);
                count += 1;
            }
        }
        std::hint::black_box(bytes);
        (count - 1) as f64 / started.map_or(0.0, |t| t.elapsed().as_secs_f64())
    };
    let rt = runtime();
    let host = || {
        rt.block_on(async {
            let feed = Feed::Kafka(KafkaFeed::connect(brokers).unwrap());
            let positions = (0..4).map(|p| (TopicPartition::new(topic, p), 0)).collect();
            let mut reader = feed.reader(positions).unwrap();
            // The clock starts at the first batch, which is not counted.
            let mut started: Option<(Instant, u64)> = None;
            let mut count = 0u64;
            while count < total {
                let batch = reader.poll(2000, Duration::from_millis(100)).await.unwrap();
                if batch.is_empty() {
                    continue;
                }
                for m in batch {
                    std::hint::black_box(pillowtop::change::decode(m).ok());
                    count += 1;
                }
                started.get_or_insert_with(|| (Instant::now(), count));
            }
            started.map_or(0.0, |(t, first)| {
                (count - first) as f64 / t.elapsed().as_secs_f64()
            })
        })
    };
    let (mut best_raw, mut best_host) = (0f64, 0f64);
    for _ in 0..3 {
        best_raw = best_raw.max(raw());
        best_host = best_host.max(host());
    }
    println!(
        "\nConsumer alone, {total} messages from offset 0 (best of 3 each):\n\n| consumer | messages/s | host overhead |\n|---|---:|---:|\n| raw rdkafka `BaseConsumer` (poll, touch payload) | {best_raw:.0} | - |\n| pillowtop Kafka reader + ChangeMeta decode | {best_host:.0} | {:.1}% |",
        (1.0 - best_host / best_raw) * 100.0
    );
}

/// A UCR-like table: ten typed columns.
fn ucr_table() -> TableSpec {
    let col = |name: &str, kind, nullable| Column {
        name: name.into(),
        kind,
        nullable,
    };
    TableSpec {
        name: "ucr_visits".into(),
        columns: vec![
            col("doc_id", ColumnType::Text, false),
            col("domain", ColumnType::Text, false),
            col("owner_id", ColumnType::Text, true),
            col("visit_date", ColumnType::Date, true),
            col("modified_on", ColumnType::Timestamp, true),
            col("visit_number", ColumnType::Integer, true),
            col("weight_kg", ColumnType::Float, true),
            col("referred", ColumnType::Boolean, true),
            col("village", ColumnType::Text, true),
            col("notes", ColumnType::Text, true),
        ],
        primary_key: vec!["doc_id".into()],
        version_column: None,
        definition: None,
    }
}

fn ucr_row(i: usize, pass: usize) -> Vec<Cell> {
    vec![
        Cell::Text(format!("doc-{i:08}")),
        Cell::Text(format!("demo-{}", i % 4)),
        Cell::Text(format!("owner-{:04}", i % 997)),
        Cell::Text(format!("2024-{:02}-{:02}", 1 + i % 12, 1 + i % 28)),
        Cell::Text(format!("2024-05-{:02}T10:{:02}:00Z", 1 + i % 28, i % 60)),
        Cell::Integer((i % 20 + pass) as i64),
        Cell::Float(40.0 + (i % 400) as f64 / 10.0),
        Cell::Boolean(i.is_multiple_of(3)),
        Cell::Text(format!("village {}", i % 311)),
        Cell::Text("follow up next week about the referral".into()),
    ]
}

/// Section 7.
pub fn pg_sink_bench() {
    let rows_total: usize = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    println!(
        "\n## 7. PostgreSQL sink ({rows_total} rows of a 10-column UCR-like table, one transaction per batch with its checkpoint)\n"
    );
    println!("| rows per transaction | insert rows/s | update (upsert over existing) rows/s |");
    println!("|---:|---:|---:|");
    let rt = runtime();
    for batch in [1000usize, 5000, 20_000] {
        let schema = unique("bench_pgsink");
        let store = rt
            .block_on(Store::connect(&StoreLocation::Postgres {
                url: pg_url(),
                schema,
            }))
            .unwrap();
        let sql = SqlSink::new(&store);
        rt.block_on(sql.ensure_outputs(&PluginInfo {
            tables: vec![ucr_table()],
            indices: vec![],
        }))
        .unwrap();
        let mut rates = Vec::new();
        for pass in 0..2 {
            let started = Instant::now();
            for (k, start) in (0..rows_total).step_by(batch).enumerate() {
                let rows = (start..(start + batch).min(rows_total))
                    .map(|i| ucr_row(i, pass))
                    .collect();
                let commit = ChunkCommit {
                    plan: WritePlan::build(vec![VersionedAction {
                        action: Action::UpsertRows {
                            table: "ucr_visits".into(),
                            rows,
                        },
                        version: k as u64,
                        origin: Default::default(),
                    }]),
                    errors: vec![],
                    checkpoints: vec![(TopicPartition::new("case-sql", 0), (start + batch) as u64)],
                    ..ChunkCommit::default()
                };
                rt.block_on(sql.commit("bench", &commit, &|_| None))
                    .unwrap();
            }
            rates.push(rows_total as f64 / started.elapsed().as_secs_f64());
        }
        println!("| {batch} | {:.0} | {:.0} |", rates[0], rates[1]);
    }
}

/// Section 8: the Elasticsearch sink writing case-search documents (made
/// by the native transform, so only the sink is measured) in chunks of
/// 100, 500 and 2000, each chunk one `write` (bulk requests with external
/// versions), into a fresh index per chunk size.
pub fn es_sink_bench(changes: &[pillowtop::change::Change]) {
    use pillowtop::action::IndexSpec;
    use pillowtop::config::ElasticConfig;
    use pillowtop::sink::elastic::ElasticSink;
    let url = es_url();
    // osmem-server indexes case-search documents (about 50 nested
    // properties each) at a few hundred per second; a subset keeps the
    // section to minutes.
    let limit: usize = std::env::var("BENCH_ES_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let docs: Vec<(String, String)> = changes
        .iter()
        .take(limit)
        .map(|c| (c.id.clone(), crate::case_search_document(c)))
        .collect();
    let n = docs.len();
    let avg = docs.iter().map(|(_, d)| d.len()).sum::<usize>() / n.max(1);
    println!(
        "\n## 8. Elasticsearch sink ({n} case-search documents, average {avg} bytes, into osmem-server at {url})\n"
    );
    println!("| chunk size | documents/s | host CPU µs/document (user+sys of this process) |");
    println!("|---:|---:|---:|");
    let rt = runtime();
    let mappings =
        std::fs::read_to_string(root().join("plugins/case-search/mappings.json")).unwrap();
    for chunk in [100usize, 500, 2000] {
        let mut config = ElasticConfig::new(url.clone());
        config.index_prefix = format!("{}-", unique("bench-es").to_lowercase().replace('_', "-"));
        let es = ElasticSink::connect(&config).unwrap();
        rt.block_on(es.ensure_index(&IndexSpec {
            name: "case-search".into(),
            mappings: mappings.clone(),
            aliases: vec![],
        }))
        .unwrap_or_else(|e| panic!("{e}: run `make services`"));
        let plans: Vec<WritePlan> = docs
            .chunks(chunk)
            .enumerate()
            .map(|(k, part)| {
                WritePlan::build(
                    part.iter()
                        .enumerate()
                        .map(|(i, (id, doc))| VersionedAction {
                            action: Action::IndexDocument {
                                index: "case-search".into(),
                                id: id.clone(),
                                document: doc.clone(),
                            },
                            version: (k * chunk + i) as u64,
                            origin: Default::default(),
                        })
                        .collect(),
                )
            })
            .collect();
        let cpu0 = proc_cpu(14);
        let started = Instant::now();
        for plan in &plans {
            let refused = rt.block_on(es.write(&plan.documents)).unwrap();
            assert!(refused.is_empty(), "{refused:?}");
        }
        let wall = started.elapsed().as_secs_f64();
        let cpu = proc_cpu(14) - cpu0;
        rt.block_on(es.refresh("case-search")).unwrap();
        let landed = rt.block_on(es.count("case-search")).unwrap();
        assert_eq!(
            landed as usize,
            docs.iter()
                .map(|(id, _)| id)
                .collect::<std::collections::HashSet<_>>()
                .len()
        );
        println!(
            "| {chunk} | {:.0} | {:.1} |",
            n as f64 / wall,
            cpu * 1e6 / n as f64
        );
    }
}
