//! Section 13: the full stack (`config/full-stack.toml`: CommCare's case
//! pillow and form pillow, all four processors, two OS processes) on a
//! sample from `pillowtop gen --kind related`, over a tansu broker of its
//! own (sqlite engine, which reports partition ends exactly) and PostgreSQL (store, UCR and messaging tables,
//! the primary database the lookups read).
//!
//! 1. Every server local: documents into osmem-server (PILLOWTOP_ES_URL,
//!    as `make services` starts it): catch-up rate, the pillows' CPU per
//!    change, then a live stream at half that rate and the change lag the
//!    host reports.
//! 2. The same with Elasticsearch replaced by a cost-free endpoint the
//!    bench starts ([`FreeEs`]): the host's own rate and CPU. Catch-up
//!    rounds alternate without and with `/metrics` and `/status` of both
//!    processes scraped every second, to price the observability.
//!
//! CPU per change is the user+sys time of both pillow processes over
//! every change of both pillows (forms and cases).

use super::free_es::FreeEs;
use super::servers::{Broker, admin_get, es_url, free_port, pg_url, runtime, topic_end, unique};
use super::{children_cpu, env_or, pillowtop_cmd, root, stat_cpu};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const TOPICS: [&str; 2] = ["case-sql", "form-sql"];

/// A generated sample published to its own broker, with its primary
/// database loaded.
struct Sample {
    broker: Broker,
    dir: tempfile::TempDir,
    primary: String,
    /// Lines per topic, as published.
    lines: Vec<(&'static str, Vec<String>)>,
}

impl Sample {
    fn prepare(submissions: usize, seed: u64) -> Sample {
        let broker = Broker::start_exact();
        let dir = tempfile::tempdir().unwrap();
        let primary = unique("bench_primary");
        let out = dir.path().join("sample");
        succeeded(
            "gen",
            pillowtop_cmd()
                .args(["gen", "--kind", "related", "--count"])
                .arg(submissions.to_string())
                .args(["--seed", &seed.to_string(), "--out"])
                .arg(&out)
                .args(["--primary-schema", &primary])
                .output()
                .unwrap(),
        );
        let sql = std::fs::read_to_string(out.join("primary.sql")).unwrap();
        runtime().block_on(async {
            let pool = sqlx::PgPool::connect(&pg_url()).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .unwrap();
        });
        let lines: Vec<_> = TOPICS
            .into_iter()
            .map(|t| {
                let text = std::fs::read_to_string(out.join(format!("{t}.jsonl"))).unwrap();
                (t, text.lines().map(str::to_owned).collect::<Vec<_>>())
            })
            .collect();
        for (topic, l) in &lines {
            super::servers::publish(&broker.brokers(), topic, l);
            wait_for_end(&broker.brokers(), topic, l.len() as u64);
        }
        Sample {
            broker,
            dir,
            primary,
            lines,
        }
    }

    fn changes(&self) -> usize {
        self.lines.iter().map(|(_, l)| l.len()).sum()
    }

    fn count(&self, topic: &str) -> usize {
        self.lines
            .iter()
            .find(|(t, _)| *t == topic)
            .map_or(0, |(_, l)| l.len())
    }

    /// The shipped config on this sample's broker and primary schema, a
    /// new store schema, documents and the users-index lookup at `es`.
    fn config(&self, es: &str, name: &str) -> PathBuf {
        let schema = unique("bench_full");
        let prefix = format!("{}-", unique("bench-full").replace('_', "-"));
        let shipped = root().join("config/full-stack.toml");
        let mut c: toml::Table =
            toml::from_str(&std::fs::read_to_string(&shipped).unwrap()).unwrap();
        let s = |v: &str| toml::Value::String(v.to_owned());
        c["feed"]["brokers"] = s(&self.broker.brokers());
        c["store"]["url"] = s(&pg_url());
        c["store"]["schema"] = s(&schema);
        c["elasticsearch"]["url"] = s(es);
        c["elasticsearch"]["index_prefix"] = s(&prefix);
        c["runtime"]["compile_cache_dir"] = s(root().join("data/compile-cache").to_str().unwrap());
        c.insert(
            "reload".into(),
            toml::Value::Table(toml::toml! { watch = false }),
        );
        for (_, l) in c["lookups"].as_table_mut().unwrap().iter_mut() {
            let source = l["source"].as_table_mut().unwrap();
            if let Some(q) = source.get("query").and_then(|q| q.as_str()) {
                let q = q.replace("commcarehq.", &format!("\"{}\".", self.primary));
                source.insert("query".into(), s(&q));
                source.insert("url".into(), s(&pg_url()));
            }
            if source["type"].as_str() == Some("elasticsearch") {
                source.insert("url".into(), s(es));
                source.insert("index".into(), s(&format!("{prefix}users")));
            }
        }
        for pillow in c["pillows"].as_array_mut().unwrap() {
            for p in pillow["processors"].as_array_mut().unwrap() {
                *p = s(root()
                    .join("config")
                    .join(p.as_str().unwrap())
                    .to_str()
                    .unwrap());
            }
        }
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, toml::to_string(&c).unwrap()).unwrap();
        path
    }
}

/// Wait until the broker reports `count` messages in `topic`: a
/// `--until-caught-up` run stops at the end it is told.
fn wait_for_end(brokers: &str, topic: &str, count: u64) {
    use pillowtop::feed::Feed;
    use pillowtop::feed::kafka::KafkaFeed;
    let feed = Feed::Kafka(KafkaFeed::connect(brokers).unwrap());
    let started = Instant::now();
    runtime().block_on(async {
        loop {
            let end = topic_end(&feed, topic).await;
            if end >= count {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{topic}: the broker reports {end} of the {count} messages published"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

fn succeeded(what: &str, out: std::process::Output) -> std::process::Output {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Both processes of the full stack, each with its own admin port.
fn start(config: &Path, until_caught_up: bool) -> Vec<(Child, u16)> {
    (0..2)
        .map(|n| {
            let port = free_port();
            let mut cmd = pillowtop_cmd();
            cmd.arg("--config")
                .arg(config)
                .args(["--log", "warn", "run", "--process-num", &n.to_string()])
                .env("PILLOWTOP_ADMIN_ADDRESS", format!("127.0.0.1:{port}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if until_caught_up {
                cmd.arg("--until-caught-up");
            }
            (cmd.spawn().unwrap(), port)
        })
        .collect()
}

/// Scrape `/metrics` and `/status` of every port each second, as a
/// Prometheus server and an open status page would (each request on its
/// own thread, so a slow answer does not delay the next second's), until
/// stopped. Returns the scrapes answered with 200 and their mean time.
fn scraper(ports: Vec<u16>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, f64)> {
    std::thread::spawn(move || {
        let mut requests = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            for port in &ports {
                for path in ["/metrics", "/status"] {
                    let port = *port;
                    requests.push(std::thread::spawn(move || {
                        let t = Instant::now();
                        admin_get(port, path)
                            .is_some_and(|(s, _)| s == 200)
                            .then(|| t.elapsed().as_secs_f64())
                    }));
                }
            }
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(1) && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let answered: Vec<f64> = requests
            .into_iter()
            .filter_map(|r| r.join().unwrap())
            .collect();
        // (An empty `sum` of floats is -0.0.)
        let mean = answered.iter().fold(0.0, |a, b| a + b) / answered.len().max(1) as f64;
        (answered.len() as u64, mean)
    })
}

struct CatchUp {
    wall: f64,
    cpu: f64,
    read: usize,
    /// Scrapes answered, and their mean time in seconds.
    scrapes: (u64, f64),
}

/// Both processes from start to caught up; CPU is theirs alone (the
/// children waited for in between).
fn catch_up(config: &Path, scrape: bool, label: &str) -> CatchUp {
    let cpu0 = children_cpu();
    let t = Instant::now();
    let processes = start(config, true);
    let stop = Arc::new(AtomicBool::new(false));
    let scraping = scrape.then(|| scraper(processes.iter().map(|p| p.1).collect(), stop.clone()));
    let mut read = 0;
    for (n, (child, _)) in processes.into_iter().enumerate() {
        let out = succeeded(&format!("process {n}"), child.wait_with_output().unwrap());
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            read += changes_read(line).unwrap_or(0);
            if line.contains("changes read") || line.contains("time:") {
                eprintln!("  {label}, process {n}: {}", line.trim());
            }
        }
    }
    let wall = t.elapsed().as_secs_f64();
    let cpu = children_cpu() - cpu0;
    stop.store(true, Ordering::Relaxed);
    let scrapes = scraping.map_or((0, 0.0), |h| h.join().unwrap());
    CatchUp {
        wall,
        cpu,
        read,
        scrapes,
    }
}

/// N of a summary line "pillow NAME: N changes read, ...".
fn changes_read(line: &str) -> Option<usize> {
    let (_, rest) = line.strip_prefix("pillow ")?.split_once(": ")?;
    rest.split_once(" changes read")?.0.parse().ok()
}

/// CPU seconds (user + sys) of a running process.
fn pid_cpu(pid: u32) -> f64 {
    stat_cpu(&pid.to_string(), 14)
}

/// The gauges of one scrape of `/metrics`, summed or maxed over series.
#[derive(Default)]
struct Gauges {
    max_lag: f64,
    processed: f64,
}

fn gauges(port: u16) -> Option<Gauges> {
    let (status, body) = admin_get(port, "/metrics")?;
    if status != 200 {
        return None;
    }
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).ok()?;
    let mut g = Gauges::default();
    for s in scrape.samples {
        let prometheus_parse::Value::Gauge(v) = s.value else {
            continue;
        };
        match s.metric.as_str() {
            "pillowtop_change_lag_seconds" => g.max_lag = g.max_lag.max(v),
            "pillowtop_processed_offset" => g.processed += v,
            _ => {}
        }
    }
    Some(g)
}

struct Live {
    rate: f64,
    lag_p50: f64,
    lag_p99: f64,
    lag_max: f64,
    caught_up_after: f64,
    cpu_per_change: f64,
}

/// The stack running on `config` (already caught up with the sample),
/// the sample published again at `rate` changes/s (both topics at once,
/// each at its share); the change lag both processes report on
/// `/metrics`, read every 250 ms.
fn live(sample: &Sample, config: &Path, rate: f64) -> Live {
    let processes = start(config, false);
    let ports: Vec<u16> = processes.iter().map(|p| p.1).collect();
    // Ready once both answer and have reported their positions (the
    // backlog was processed by the catch-up before).
    let total = sample.changes() as f64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ports.iter().any(|p| gauges(*p).is_none()) {
        assert!(Instant::now() < deadline, "the pillows did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pids: Vec<u32> = processes.iter().map(|p| p.0.id()).collect();
    let cpu0: f64 = pids.iter().map(|p| pid_cpu(*p)).sum();
    let t0 = Instant::now();
    let publishers: Vec<_> = sample
        .lines
        .iter()
        .map(|(topic, lines)| {
            let share = rate * lines.len() as f64 / total;
            paced_publish(&sample.broker.brokers(), topic, lines.clone(), share)
        })
        .collect();
    let mut lags = Vec::new();
    let mut published_at = None;
    let caught_up_at = loop {
        std::thread::sleep(Duration::from_millis(250));
        let scraped: Vec<Gauges> = ports.iter().filter_map(|p| gauges(*p)).collect();
        if scraped.len() == ports.len() {
            lags.push(scraped.iter().map(|g| g.max_lag).fold(0.0, f64::max));
        }
        if published_at.is_none() && publishers.iter().all(|p| p.is_finished()) {
            published_at = Some(t0.elapsed());
        }
        let processed: f64 = scraped.iter().map(|g| g.processed).sum();
        if published_at.is_some() && processed >= 2.0 * total {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "the live stream was not caught up in 10 minutes ({processed} of {} processed)",
            2.0 * total
        );
    };
    let publish_secs = publishers
        .into_iter()
        .map(|p| p.join().unwrap())
        .fold(0.0, f64::max);
    let cpu: f64 = pids.iter().map(|p| pid_cpu(*p)).sum::<f64>() - cpu0;
    for (mut child, _) in processes {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
    lags.sort_by(f64::total_cmp);
    let pick = |q: f64| lags[((lags.len() - 1) as f64 * q) as usize];
    Live {
        rate: total / publish_secs,
        lag_p50: pick(0.5),
        lag_p99: pick(0.99),
        lag_max: *lags.last().unwrap(),
        caught_up_after: (caught_up_at - published_at.unwrap()).as_secs_f64(),
        cpu_per_change: cpu / total,
    }
}

/// CPU seconds the whole machine has been busy (every process: the
/// pillows, PostgreSQL, the broker), from the first line of /proc/stat.
fn machine_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = ticks.get(3).unwrap_or(&0.0) + ticks.get(4).unwrap_or(&0.0);
    (ticks.iter().take(8).sum::<f64>() - idle) / 100.0
}

/// CPU seconds per second, both pillow processes and the whole machine.
#[derive(Clone, Copy)]
struct Busy {
    pillows: f64,
    machine: f64,
}

/// What scraping costs by itself: both processes of `config` started
/// caught up, their CPU (user + sys) and the machine's over `seconds` left
/// alone and over `seconds` scraped every second as [`scraper`] does.
fn scrape_cost(config: &Path, seconds: u64) -> (Busy, Busy) {
    let processes = start(config, false);
    let ports: Vec<u16> = processes.iter().map(|p| p.1).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ports.iter().any(|p| gauges(*p).is_none()) {
        assert!(Instant::now() < deadline, "the pillows did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    let pids: Vec<u32> = processes.iter().map(|p| p.0.id()).collect();
    let cpu = || pids.iter().map(|p| pid_cpu(*p)).sum::<f64>();
    let window = |scrape: bool| {
        let stop = Arc::new(AtomicBool::new(false));
        let scraping = scrape.then(|| scraper(ports.clone(), stop.clone()));
        let (c0, m0, t) = (cpu(), machine_busy(), Instant::now());
        std::thread::sleep(Duration::from_secs(seconds));
        let elapsed = t.elapsed().as_secs_f64();
        let used = Busy {
            pillows: (cpu() - c0) / elapsed,
            machine: (machine_busy() - m0) / elapsed,
        };
        stop.store(true, Ordering::Relaxed);
        if let Some(h) = scraping {
            h.join().unwrap();
        }
        used
    };
    let alone = window(false);
    let scraped = window(true);
    for (mut child, _) in processes {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
    (alone, scraped)
}

/// `pillowtop publish` fed `lines` at `per_second`; the thread returns
/// the seconds publishing took.
fn paced_publish(
    brokers: &str,
    topic: &str,
    lines: Vec<String>,
    per_second: f64,
) -> std::thread::JoinHandle<f64> {
    let mut child = pillowtop_cmd()
        .args(["publish", "--brokers", brokers, "--topic", topic])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        let t = Instant::now();
        let mut w = std::io::BufWriter::new(stdin);
        let mut sent = 0usize;
        while sent < lines.len() {
            let due = ((t.elapsed().as_secs_f64() * per_second) as usize + 1).min(lines.len());
            for l in &lines[sent..due] {
                w.write_all(l.as_bytes()).unwrap();
                w.write_all(b"\n").unwrap();
            }
            w.flush().unwrap();
            sent = due;
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(w);
        assert!(
            child.wait().unwrap().success(),
            "publish {lines:?} failed",
            lines = lines.len()
        );
        t.elapsed().as_secs_f64()
    })
}

/// Section 13.
pub fn full_stack_bench() {
    let real = Sample::prepare(env_or("BENCH_FULL_SUBMISSIONS_ES", 3_000), 42);
    let free = Sample::prepare(env_or("BENCH_FULL_SUBMISSIONS", 100_000), 43);
    println!(
        "\n## 13. The full stack: case pillow + form pillow, all four processors, two processes (tansu with its sqlite engine, PostgreSQL, Elasticsearch)\n"
    );
    println!(
        "| Elasticsearch | changes (cases + forms) | scraped every second | changes/s (wall incl. start) | changes/s (start excluded) | pillow CPU µs/change (user+sys, both processes) | start excluded | start + stop alone: wall, CPU |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|");
    // What starting and stopping both processes costs with nothing to read
    // (plugins from the compile cache, connections, index and table
    // checks), measured on each config once caught up.
    let row = |es: &str, s: &Sample, scraped: bool, r: &CatchUp, start: &CatchUp| {
        assert_eq!(
            r.read,
            s.changes(),
            "the processes did not read every change of the sample"
        );
        let n = r.read as f64;
        println!(
            "| {es} | {} + {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.2} s, {:.2} s |",
            s.count("case-sql"),
            s.count("form-sql"),
            if scraped {
                format!(
                    "yes ({} answered, {:.0} ms each)",
                    r.scrapes.0,
                    r.scrapes.1 * 1e3
                )
            } else {
                "no".into()
            },
            n / r.wall,
            n / (r.wall - start.wall),
            r.cpu * 1e6 / n,
            (r.cpu - start.cpu) * 1e6 / n,
            start.wall,
            start.cpu,
        );
    };

    let es = es_url();
    let config = real.config(&es, "osmem");
    let osmem = catch_up(&config, false, "osmem");
    let start = catch_up(&config, false, "osmem, nothing to read");
    row("osmem-server (local)", &real, false, &osmem, &start);
    let osmem_live = live(&real, &config, 0.5 * osmem.read as f64 / osmem.wall);

    let endpoint = FreeEs::start();
    let rounds = env_or("BENCH_FULL_ROUNDS", 3);
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut busiest = Vec::new();
    let mut last_config = None;
    for _ in 0..rounds {
        for scrape in [false, true] {
            let config = free.config(endpoint.url(), if scrape { "scraped" } else { "plain" });
            let r = catch_up(
                &config,
                scrape,
                if scrape { "free, scraped" } else { "free" },
            );
            let start = catch_up(&config, false, "free, nothing to read");
            row("cost-free endpoint (bench)", &free, scrape, &r, &start);
            let rate = r.read as f64 / r.wall;
            busiest.push(r.cpu / r.wall);
            if scrape {
                with.push(rate);
            } else {
                without.push(rate);
            }
            last_config = Some(config);
        }
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let free_live = live(&free, last_config.as_ref().unwrap(), 0.5 * best(&without));
    let (alone, scraped) = scrape_cost(last_config.as_ref().unwrap(), 20);
    let busiest = busiest.iter().copied().fold(0.0, f64::max);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let (bulks, ops, other) = endpoint.requests();
    println!(
        "\nScraped against not, best of {rounds} rounds each, alternated: {:.0} / {:.0} changes/s = **{:.3}x**. The cost-free endpoint answered {bulks} bulk requests of {ops} operations and {other} other requests (index checks, multi-gets) in all.\n",
        best(&with),
        best(&without),
        best(&with) / best(&without)
    );
    println!(
        "Scraping alone, both processes caught up, 20 s left alone then 20 s scraped every second: the pillows' CPU (`/proc/PID/stat`) {:.1} -> {:.1} ms per second, **+{:.1} ms** ({:.2}% of the {:.0} ms per second both spend at full load, the busiest round above); the whole machine's (`/proc/stat`: the pillows, PostgreSQL answering status queries, the broker answering offset requests) {:.1} -> {:.1} ms per second, **+{:.1} ms** ({:.2}% of its {cores} cores).\n",
        alone.pillows * 1e3,
        scraped.pillows * 1e3,
        (scraped.pillows - alone.pillows) * 1e3,
        100.0 * (scraped.pillows - alone.pillows) / busiest,
        busiest * 1e3,
        alone.machine * 1e3,
        scraped.machine * 1e3,
        (scraped.machine - alone.machine) * 1e3,
        100.0 * (scraped.machine - alone.machine) / cores,
    );
    println!(
        "| live stream (the sample published again at half the catch-up rate) | published changes/s | change lag p50 | p99 | max | caught up after the last publish | pillow CPU µs/change |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (label, l) in [
        ("osmem-server (local)", &osmem_live),
        ("cost-free endpoint (bench)", &free_live),
    ] {
        println!(
            "| {label} | {:.0} | {:.2} s | {:.2} s | {:.2} s | {:.0} ms | {:.1} |",
            l.rate,
            l.lag_p50,
            l.lag_p99,
            l.lag_max,
            l.caught_up_after * 1e3,
            l.cpu_per_change * 1e6
        );
    }
    println!(
        "\nChange lag is `pillowtop_change_lag_seconds` (now minus the publish time of the last change processed, 0 when nothing waits), the largest over both pillows' partitions, from both processes' `/metrics` every 250 ms."
    );
}
