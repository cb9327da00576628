//! `make bench`: pillowtop's benchmarks, printed as Markdown tables.
//!
//! 1. case-search transform, one core: native Rust vs. the same code as a
//!    Wasm component with and without fuel metering.
//! 2. Plugin start: compile (cold cache) vs. load from the compile cache
//!    (warm), and instantiation (+ `init`) from a loaded plugin.
//! 3. Embedded end to end: SQLite feed -> pillow -> case-search -> SQLite
//!    store with checkpoints; changes/s, CPU time per change, peak RSS.
//!
//! Needs `make plugins` and `make build` first (make bench does both). Sizes can be set with
//! BENCH_CHANGES (default 50000).

use pillowtop::change::{self, Change};
use pillowtop::feed::{Message, TopicPartition};
use pillowtop::generate::{GenOptions, Generator, Kind};
use pillowtop::manifest::Manifest;
use pillowtop::wasm::{Runtime, RuntimeOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn cases(n: usize) -> Vec<String> {
    let mut g = Generator::new(GenOptions {
        seed: 42,
        domains: 3,
        kind: Kind::Case,
    });
    (0..n).map(|_| g.next_line()).collect()
}

/// Case changes with a document (deletions dropped), in an enabled domain.
fn decoded(lines: &[String]) -> Vec<Change> {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| Message {
            tp: TopicPartition::new("case-sql", 0),
            offset: i as u64,
            key: None,
            value: l.clone().into_bytes(),
            timestamp_ms: None,
        })
        .map(|m| change::decode(&m).unwrap())
        .filter(|c| c.document.is_some())
        .collect()
}

/// Best of `rounds` runs of `f` over all changes: changes per second.
fn best_rate(rounds: usize, n: usize, mut f: impl FnMut()) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
    }
    n as f64 / best.as_secs_f64()
}

fn manifest() -> Manifest {
    Manifest::load(&root().join("plugins/case-search/plugin.toml"))
        .expect("run `make plugins` first")
}

fn transform_bench(changes: &[Change]) {
    let n = changes.len();
    let avg = changes
        .iter()
        .map(|c| c.document.as_ref().unwrap().len())
        .sum::<usize>()
        / n;
    println!("\n## 1. case-search transform, one core ({n} cases, average {avg} bytes)\n");
    println!("| variant | changes/s | vs native | fuel per change |");
    println!("|---|---:|---:|---:|");

    // Native: the same transform code, plus building the same action.
    let native = best_rate(9, n, || {
        for c in changes {
            let mut out = String::new();
            case_search::transform::case_search_document(
                &c.id,
                c.document.as_deref().unwrap(),
                &mut out,
            )
            .unwrap();
            std::hint::black_box(pillowtop::action::Action::IndexDocument {
                index: "case-search".into(),
                id: c.id.clone(),
                document: out,
            });
        }
    });
    println!("| native Rust (same transform) | {native:.0} | 1.00x | - |");

    for (label, meter_fuel) in [
        ("Wasm, fuel enforced", true),
        ("Wasm, no fuel metering", false),
    ] {
        let runtime = Runtime::new(RuntimeOptions {
            meter_fuel,
            ..RuntimeOptions::default()
        })
        .unwrap();
        let (mut p, _) = runtime.load(&manifest()).unwrap();
        let mut fuel = 0u64;
        let rate = best_rate(9, n, || {
            fuel = 0;
            for c in changes {
                std::hint::black_box(p.process(c).unwrap());
                fuel += p.last_fuel_used();
            }
        });
        let fuel = if meter_fuel {
            format!("{}", fuel / n as u64)
        } else {
            "-".into()
        };
        println!(
            "| {label} (incl. host checks) | {rate:.0} | {:.2}x | {fuel} |",
            rate / native
        );
    }
}

fn startup_bench() {
    println!("\n## 2. Plugin start\n");
    let cache = tempfile::tempdir().unwrap();
    let m = manifest();
    let options = || RuntimeOptions {
        compile_cache_dir: Some(cache.path().to_owned()),
        ..RuntimeOptions::default()
    };
    let t = Instant::now();
    let (_, cold) = Runtime::new(options()).unwrap().load(&m).unwrap();
    let cold_total = t.elapsed();
    let t = Instant::now();
    let (mut p, warm) = Runtime::new(options()).unwrap().load(&m).unwrap();
    let warm_total = t.elapsed();
    println!(
        "| start | cache | compile or cache load | whole load (engine, compile, instantiate, init) |"
    );
    println!("|---|---|---:|---:|");
    println!(
        "| cold (empty cache) | {:?} | {:.1} ms | {:.1} ms |",
        cold.cache,
        cold.compile.as_secs_f64() * 1e3,
        cold_total.as_secs_f64() * 1e3
    );
    println!(
        "| warm (second start) | {:?} | {:.1} ms | {:.1} ms |",
        warm.cache,
        warm.compile.as_secs_f64() * 1e3,
        warm_total.as_secs_f64() * 1e3
    );
    let rounds = 2000;
    let t = Instant::now();
    for _ in 0..rounds {
        p.reinstantiate().unwrap();
    }
    let per = t.elapsed() / rounds;
    println!(
        "\nInstantiate + init from the loaded plugin (as after a trap): {:.3} ms (mean of {rounds}); memory per instance {} KiB.",
        per.as_secs_f64() * 1e3,
        p.memory_bytes() / 1024
    );
}

/// CPU seconds (user + system) of waited-for children, from /proc/self/stat.
fn children_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // cutime and cstime are fields 16 and 17 (1-based); the slice starts at field 3.
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(16) + ticks(17)) / 100.0
}

/// Run the real `pillowtop` binary; returns (wall seconds, child CPU seconds,
/// peak RSS MiB sampled from /proc while it runs, stdout).
fn run_child(args: &[&str], stdin: Option<std::process::Stdio>) -> (f64, f64, f64, String) {
    let bin = root().join("target/release/pillowtop");
    let cpu0 = children_cpu();
    let started = Instant::now();
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    if let Some(s) = stdin {
        cmd.stdin(s);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}; run `make build`", bin.display()));
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0.0f64;
    loop {
        if let Ok(status) = std::fs::read_to_string(&status_path)
            && let Some(kb) = status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        {
            peak_kb = peak_kb.max(kb);
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let wall = started.elapsed().as_secs_f64();
    let mut out = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    (wall, children_cpu() - cpu0, peak_kb / 1024.0, out)
}

fn end_to_end_bench(n: usize) {
    println!(
        "\n## 3. Embedded end to end ({n} changes: SQLite feed -> case-search -> SQLite store, checkpoints)\n"
    );
    println!(
        "Measured on the real `pillowtop run --until-caught-up` process (every domain enabled, so every case is written).\n"
    );
    println!(
        "| chunk_size | changes/s (wall, whole run incl. start) | pillow process CPU µs/change (user+sys) | peak RSS of the pillow process |"
    );
    println!("|---:|---:|---:|---:|");
    let manifest_src =
        std::fs::read_to_string(root().join("plugins/case-search/plugin.toml")).unwrap();
    for chunk_size in [500usize, 2000] {
        let dir = tempfile::tempdir().unwrap();
        let plugin_dir = dir.path().join("plugin");
        std::fs::create_dir(&plugin_dir).unwrap();
        let manifest = manifest_src
            .replace(
                "component = \"case_search.wasm\"",
                &format!(
                    "component = {:?}",
                    root().join("plugins/case-search/case_search.wasm")
                ),
            )
            .replace("fixtures = \"fixtures\"\n", "")
            .replace(
                "domains = [\"demo-0\", \"demo-1\", \"demo-2\"]",
                "domains = \"*\"",
            );
        std::fs::write(plugin_dir.join("plugin.toml"), manifest).unwrap();
        let config = dir.path().join("pillowtop.toml");
        std::fs::write(
            &config,
            format!(
                "[feed]\ntype = \"embedded\"\npath = \"feed.db\"\n[store]\nurl = \"sqlite://store.db\"\n[runtime]\ncompile_cache_dir = {:?}\n\
                 [[pillows]]\nname = \"case-search\"\ntopics = [\"case-sql\"]\nprocessors = [\"plugin/plugin.toml\"]\nchunk_size = {chunk_size}\nmax_wait_ms = 100\n",
                root().join("data/compile-cache")
            ),
        )
        .unwrap();
        let config = config.to_str().unwrap();
        let bin = root().join("target/release/pillowtop");
        let mut generator = std::process::Command::new(&bin)
            .args([
                "gen",
                "--count",
                &n.to_string(),
                "--seed",
                "42",
                "--domains",
                "3",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (_, _, _, _) = run_child(
            &[
                "--config",
                config,
                "publish",
                "--topic",
                "case-sql",
                "--partitions",
                "4",
            ],
            Some(generator.stdout.take().unwrap().into()),
        );
        generator.wait().unwrap();
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
            "| {chunk_size} | {:.0} | {:.1} | {rss:.0} MiB |",
            n as f64 / wall,
            cpu * 1e6 / n as f64
        );
        for line in out
            .lines()
            .filter(|l| l.contains("changes read") || l.contains("time:"))
        {
            eprintln!("  chunk {chunk_size}: {}", line.trim());
        }
    }
}

fn main() {
    let n: usize = std::env::var("BENCH_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let lines = cases(n);
    println!(
        "# pillowtop benchmarks\n\nMachine: {} cores; `nproc` = {}.",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let changes = decoded(&lines);
    transform_bench(&changes);
    startup_bench();
    end_to_end_bench(n);
}
