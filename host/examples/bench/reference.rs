//! Section 15: the production path against a Python pillow of CommCare's
//! shape, side by side on the same topic in one run.
//!
//! One Kafka topic (tansu with its sqlite engine, 4 partitions) holds the
//! generated cases; each round, with fresh checkpoints, runs
//!
//! - `pillowtop run --until-caught-up`: the case-search pillow as a new
//!   user configures it (chunk 500, checkpoints every 1000 changes in
//!   PostgreSQL, documents to `[elasticsearch]`), and
//! - `reference_pillow.py` (next to this file): confluent-kafka, `json`,
//!   the same Python transform as the Python plugin, bulk requests of 500
//!   over a keep-alive connection, checkpoints every 1000 changes in
//!   PostgreSQL with psycopg,
//!
//! both against the bench's cost-free Elasticsearch endpoint, and takes
//! each process's CPU (user + sys, from wait4's accounting) per change.
//! The endpoint's own thread CPU is printed beside it, to show it was
//! never the bottleneck.

use super::free_es::FreeEs;
use super::servers::{Broker, pg_url, publish, unique};
use super::{
    binaries, env_or, measure_child, pillowtop_cmd_of, root, tool, write_case_search_plugin,
};
use std::path::PathBuf;

/// Rounds of each pillow, alternated (BENCH_ROUNDS overrides).
const ROUNDS: usize = 3;

/// The Python the reference pillow runs on: `make bench` installs it
/// with its packages (PILLOWTOP_BENCH_PYTHON).
fn python() -> PathBuf {
    let path = tool("PILLOWTOP_BENCH_PYTHON", "bench-py/bin/python");
    assert!(
        path.exists(),
        "the reference pillow's Python is missing at {}: run `make bench` (it installs \
         confluent-kafka and psycopg there), or set PILLOWTOP_BENCH_PYTHON",
        path.display()
    );
    path
}

struct Round {
    wall: f64,
    cpu: f64,
    endpoint_cpu: f64,
}

pub fn reference_bench(lines: &[String]) {
    let n = lines.len();
    let avg = lines.iter().map(String::len).sum::<usize>() / n.max(1);
    let python = python();
    let broker = Broker::start_exact();
    let brokers = broker.brokers();
    let topic = unique("bench-reference").replace('_', "-");
    println!(
        "\n## 15. Kafka -> case-search -> Elasticsearch bulk, PostgreSQL checkpoints: pillowtop against a Python pillow of CommCare's shape ({n} changes of {avg} bytes, 4 partitions; {}; the cost-free endpoint)\n",
        broker.describe()
    );
    publish(&brokers, &topic, lines);
    let es = FreeEs::start();
    let dir = tempfile::tempdir().unwrap();
    write_case_search_plugin(dir.path());
    let index = "case-search-bench";
    let pillowtop_round = |bin: &std::path::Path, schema: &str| {
        let config = dir.path().join("pillowtop.toml");
        std::fs::write(
            &config,
            format!(
                "[feed]\ntype = \"kafka\"\nbrokers = {brokers:?}\n[store]\nurl = {:?}\nschema = {schema:?}\n\
                 [elasticsearch]\nurl = {:?}\n[runtime]\ncompile_cache_dir = {:?}\n\
                 [[pillows]]\nname = \"case-search\"\ntopics = [{topic:?}]\nprocessors = [\"plugin/plugin.toml\"]\n",
                pg_url(),
                es.url(),
                root().join("data/compile-cache")
            ),
        )
        .unwrap();
        let mut cmd = pillowtop_cmd_of(bin);
        cmd.arg("--config")
            .arg(&config)
            .args(["--log", "warn", "run", "--until-caught-up"]);
        cmd
    };
    let reference_round = |table: &str| {
        let mut cmd = std::process::Command::new(&python);
        cmd.env("PYTHONDONTWRITEBYTECODE", "1")
            .arg(root().join("host/examples/bench/reference_pillow.py"))
            .args([
                "--brokers",
                &brokers,
                "--topic",
                &topic,
                "--partitions",
                "4",
            ])
            .args(["--count", &n.to_string(), "--es-url", es.url()])
            .args(["--index", index, "--pg-url", &pg_url(), "--table", table]);
        cmd
    };
    let timed = |cmd: std::process::Command, expect: &str| {
        let ops0 = es.requests().1;
        let es0 = es.cpu_seconds();
        let (wall, cpu, _, out) = measure_child(cmd);
        assert!(
            out.contains(expect),
            "the round did not report {expect:?}; it printed:\n{out}"
        );
        let ops = es.requests().1 - ops0;
        assert!(
            ops >= n as u64 * 9 / 10,
            "only {ops} bulk operations reached the endpoint for {n} changes"
        );
        Round {
            wall,
            cpu,
            endpoint_cpu: es.cpu_seconds() - es0,
        }
    };
    // A first pillowtop run fills the compile cache, as a host that has
    // run before has it.
    let binaries = binaries();
    for (_, bin) in &binaries {
        timed(
            pillowtop_round(bin, &unique("bench_ref_warm")),
            "changes read",
        );
    }
    // Rounds per binary (this build, then the baseline if any).
    let mut pillows: Vec<Vec<Round>> = binaries.iter().map(|_| Vec::new()).collect();
    let mut theirs = Vec::new();
    let rounds = env_or("BENCH_ROUNDS", ROUNDS);
    for _ in 0..rounds {
        for ((_, bin), done) in binaries.iter().zip(&mut pillows) {
            done.push(timed(
                pillowtop_round(bin, &unique("bench_ref")),
                &format!(": {n} changes read"),
            ));
        }
        theirs.push(timed(
            reference_round(&unique("bench_ref_py")),
            &format!("{n} changes, 0 bulk errors"),
        ));
    }
    println!(
        "| pillow | round | changes/s (wall incl. start) | CPU µs/change (user+sys) | endpoint thread CPU, share of the wall |\n|---|---:|---:|---:|---:|"
    );
    let row = |name: &str, i: usize, r: &Round| {
        println!(
            "| {name} | {} | {:.0} | {:.1} | {:.1}% |",
            i + 1,
            n as f64 / r.wall,
            r.cpu * 1e6 / n as f64,
            r.endpoint_cpu * 100.0 / r.wall
        );
    };
    for (i, b) in theirs.iter().enumerate() {
        for ((name, _), done) in binaries.iter().zip(&pillows) {
            row(&format!("pillowtop, {name}"), i, &done[i]);
        }
        row("Python reference", i, b);
    }
    let best = |rounds: &[Round]| {
        rounds
            .iter()
            .map(|r| r.cpu * 1e6 / n as f64)
            .fold(f64::INFINITY, f64::min)
    };
    let (a, b) = (best(&pillows[0]), best(&theirs));
    println!(
        "\nBest CPU per change: pillowtop {a:.1} µs, Python reference {b:.1} µs: {:.1}x less.",
        b / a
    );
    if let Some(baseline) = pillows.get(1) {
        let c = best(baseline);
        println!(
            "Baseline pillowtop {c:.1} µs: this build {:+.1}%.",
            (a - c) * 100.0 / c
        );
    }
}
