//! `make bench`: pillowtop's benchmarks, printed as Markdown tables.
//!
//! 1. case-search transform, one core: native Rust vs. the same code as a
//!    Wasm component with and without fuel metering.
//! 2. Plugin start: compile (cold cache) vs. load from the compile cache
//!    (warm), and instantiation (+ `init`) from a loaded plugin.
//! 3. Embedded end to end: SQLite feed -> pillow -> case-search -> SQLite
//!    store with checkpoints; changes/s, CPU time per change, peak RSS.
//! 4. case-search in Rust, Python and JavaScript side by side: changes/s,
//!    fuel per change, compile time, cached start, memory per instance.
//! 5. Hot reload: time from writing a new version to it being live in a
//!    running host (warm compile cache).
//! 6. Kafka (tansu) -> case-search -> PostgreSQL store: catch-up rate,
//!    end-to-end lag under a live stream, and the consumer alone (decode
//!    only) against raw rdkafka. Needs `make services`.
//! 7. PostgreSQL sink: rows/s upserted in batches with the checkpoint in
//!    the same transaction. Needs `make services`.
//! 8. Elasticsearch sink: documents/s written in chunks of 100, 500 and
//!    2000 (bulk, external versions), with the host's CPU per document.
//!    Needs `make services`.
//! 9. The retry queue; 10. lookups and document sources (see their modules).
//! 11. UCR: a 20-indicator data source over generated cases, native vs.
//!     the Wasm component with fuel (`BENCH_ONLY=ucr`).
//! 12. Shadow: the embedded pipeline with a candidate beside the live
//!     plugin, against without (`BENCH_ONLY=shadow`).
//! 13. The full stack: both of CommCare's pillows with all four
//!     processors, against osmem-server and against a cost-free
//!     Elasticsearch endpoint, with and without scraping
//!     (`BENCH_ONLY=full`; see its module).
//! 14. Idle: a caught-up pillow's CPU on the embedded feed and on Kafka,
//!     and the time it takes to pick up a new change (`BENCH_ONLY=idle`).
//! 15. Kafka -> case-search -> Elasticsearch bulk with PostgreSQL
//!     checkpoints, against a Python pillow of CommCare's shape on the
//!     same topic (`BENCH_ONLY=reference`; `reference_pillow.py`).
//!
//! Needs `make plugins` and `make build` first (make bench does both). Sizes can be set with
//! BENCH_CHANGES (default 50000).

mod free_es;
mod fullstack;
mod idle;
mod lookups;
mod reference;
mod retry;
mod servers;
mod shadow;
mod ucr;

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

/// The environment variable `var` parsed, or `default` when it is unset
/// or does not parse.
fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A tool `make` installs under ~/.cache/pillowtop/tools (`relative`
/// there), or the path in the environment variable `var`.
fn tool(var: &str, relative: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/pillowtop/tools")
                .join(relative)
        },
        PathBuf::from,
    )
}

/// The `pillowtop` binary `make build` made (honours CARGO_TARGET_DIR).
fn pillowtop_bin() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root().join("target"), PathBuf::from)
        .join("release/pillowtop")
}

/// BENCH_BASELINE: another `pillowtop` binary (say, one built at an
/// earlier commit) that the end-to-end and reference sections run beside
/// this build, round for round, so a change is measured before and after
/// in one run on the same machine.
fn baseline_bin() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os("BENCH_BASELINE")?);
    assert!(
        path.is_file(),
        "BENCH_BASELINE={} is not a file: point it at a pillowtop binary",
        path.display()
    );
    Some(path)
}

/// The binaries a section compares: this build, then the baseline if set.
fn binaries() -> Vec<(&'static str, PathBuf)> {
    let mut out = vec![("this build", pillowtop_bin())];
    out.extend(baseline_bin().map(|b| ("baseline", b)));
    out
}

/// The pillowtop binary as a command that runs on the config file the
/// benchmark wrote and nothing else: the environment overrides `make
/// services` prints (PILLOWTOP_ES_URL, PILLOWTOP_KAFKA_BROKERS, ...) would
/// otherwise reroute a section's feed or sinks to another server.
fn pillowtop_cmd() -> std::process::Command {
    pillowtop_cmd_of(&pillowtop_bin())
}

/// [`pillowtop_cmd`] of another pillowtop binary.
fn pillowtop_cmd_of(bin: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(bin);
    for key in [
        "PILLOWTOP_FEED_PATH",
        "PILLOWTOP_KAFKA_BROKERS",
        "PILLOWTOP_STORE_URL",
        "PILLOWTOP_STORE_SCHEMA",
        "PILLOWTOP_ES_URL",
    ] {
        cmd.env_remove(key);
    }
    cmd
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
        .map(|m| change::decode(m).unwrap())
        .filter(|c| c.document().is_some())
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

/// The case-search transform of `c`, run natively.
fn case_search_document(c: &Change) -> String {
    let mut out = String::new();
    case_search::transform::case_search_document(
        &c.id,
        c.document().unwrap(),
        c.processing_time_ms,
        &mut out,
    )
    .unwrap();
    out
}

/// The action the case-search plugin returns for `c`, built natively.
fn case_search_action(c: &Change) -> pillowtop::action::Action {
    pillowtop::action::Action::IndexDocument {
        index: "case-search".into(),
        id: c.id.clone(),
        document: case_search_document(c),
    }
}

fn transform_bench(changes: &[Change]) {
    let n = changes.len();
    let avg = changes
        .iter()
        .map(|c| c.document().unwrap().len())
        .sum::<usize>()
        / n;
    println!("\n## 1. case-search transform, one core ({n} cases, average {avg} bytes)\n");
    println!("| variant | changes/s | vs native | fuel per change |");
    println!("|---|---:|---:|---:|");

    // Native: the same transform code, plus building the same action.
    let native = best_rate(9, n, || {
        for c in changes {
            std::hint::black_box(case_search_action(c));
        }
    });
    println!("| native Rust (same transform) | {native:.0} | 1.00x | - |");

    // Native again, plus the checks the host runs on every Wasm plugin's
    // output (`Processor::process` calls the same `check_actions`): the
    // comparison through the same host path.
    let declared = pillowtop::wasm::check::Declared {
        indices: ["case-search".to_string()].into(),
        ..Default::default()
    };
    let native_checked = best_rate(9, n, || {
        for c in changes {
            let actions = [case_search_action(c)];
            pillowtop::wasm::check::check_actions(&declared, &actions).unwrap();
            std::hint::black_box(actions);
        }
    });
    let mut wasm_fuel_rate = 0.0;

    for (label, meter_fuel) in [
        ("Wasm, fuel enforced", true),
        ("Wasm, no fuel metering", false),
    ] {
        let runtime = Runtime::new(RuntimeOptions {
            meter_fuel,
            // `BENCH_PERFMAP=1 perf record -e cpu-clock ...` names the
            // plugin's functions in `perf report`.
            perf_map: std::env::var_os("BENCH_PERFMAP").is_some(),
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
        if meter_fuel {
            wasm_fuel_rate = rate;
        }
    }
    println!(
        "\nNative through the same host checks (`check_actions` on its output): {native_checked:.0} \
         changes/s; Wasm with fuel against it: {:.2}x.",
        wasm_fuel_rate / native_checked
    );

    // The largest host check, alone: every output document is validated
    // as one JSON object before it may reach a sink.
    let documents: Vec<String> = changes.iter().map(case_search_document).collect();
    let bytes = documents.iter().map(String::len).sum::<usize>() / n;
    let rate = best_rate(9, n, || {
        for d in &documents {
            std::hint::black_box(pillowtop_sdk::json::validate(d).unwrap());
        }
    });
    println!(
        "\nHost check of the output alone (`json::validate` of each {bytes}-byte document): \
         {:.2} µs per change.",
        1e6 / rate
    );
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

/// CPU seconds in two adjacent fields of /proc/self/stat, from `first`
/// (1-based): 14 for this process's user + system time, 16 for its
/// waited-for children's.
fn proc_cpu(first: usize) -> f64 {
    stat_cpu("self", first)
}

/// As [`proc_cpu`], for the process `/proc/{pid}` (`self` or a number).
fn stat_cpu(pid: &str, first: usize) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // The slice starts at field 3 (after the command name).
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(first) + ticks(first + 1)) / 100.0
}

/// CPU seconds (user + system) of waited-for children.
fn children_cpu() -> f64 {
    proc_cpu(16)
}

/// Run the real `pillowtop` binary; returns (wall seconds, child CPU seconds,
/// peak RSS MiB sampled from /proc while it runs, stdout).
fn run_child(args: &[&str], stdin: Option<std::process::Stdio>) -> (f64, f64, f64, String) {
    let mut cmd = pillowtop_cmd();
    cmd.args(args);
    if let Some(s) = stdin {
        cmd.stdin(s);
    }
    measure_child(cmd)
}

/// Run `cmd` to its end with its stdout captured and its stderr dropped;
/// returns what [`run_child`] does.
fn measure_child(mut cmd: std::process::Command) -> (f64, f64, f64, String) {
    let cpu0 = children_cpu();
    let started = Instant::now();
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `make build`",
            Path::new(cmd.get_program()).display()
        )
    });
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
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "{} exited with {status}",
                Path::new(cmd.get_program()).display()
            );
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

/// The case-search plugin with every domain enabled (so every case is
/// written), in `dir/plugin/plugin.toml`.
fn write_case_search_plugin(dir: &Path) {
    let manifest = std::fs::read_to_string(root().join("plugins/case-search/plugin.toml"))
        .unwrap()
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
    let plugin_dir = dir.join("plugin");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    std::fs::write(plugin_dir.join("plugin.toml"), manifest).unwrap();
}

/// A config in `dir` for pillow `case-search` (the plugin of
/// [`write_case_search_plugin`], written there too) over topic case-sql of
/// an embedded feed, with a SQLite store.
fn embedded_case_search(dir: &Path, chunk_size: usize, threads: usize) -> PathBuf {
    write_case_search_plugin(dir);
    let config = dir.join("pillowtop.toml");
    std::fs::write(
        &config,
        format!(
            "[feed]\ntype = \"embedded\"\npath = \"feed.db\"\n[store]\nurl = \"sqlite://store.db\"\n[runtime]\ncompile_cache_dir = {:?}\n\
             [[pillows]]\nname = \"case-search\"\ntopics = [\"case-sql\"]\nprocessors = [\"plugin/plugin.toml\"]\nchunk_size = {chunk_size}\nmax_wait_ms = 100\ntransform_threads = {threads}\n",
            root().join("data/compile-cache")
        ),
    )
    .unwrap();
    config
}

/// `pillowtop gen --count n --seed 42 --domains 3 | pillowtop publish` to
/// topic case-sql (4 partitions) of `config`'s feed.
fn publish_generated(config: &str, n: usize) {
    let mut generator = pillowtop_cmd()
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
    run_child(
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
}

/// Echo to stderr the summary lines a `pillowtop run` printed (changes
/// read, time by stage), labelled.
fn echo_summary(out: &str, label: &str) {
    for line in out
        .lines()
        .filter(|l| l.contains("changes read") || l.contains("time:"))
    {
        eprintln!("  {label}: {}", line.trim());
    }
}

fn end_to_end_bench(n: usize) {
    println!(
        "\n## 3. Embedded end to end ({n} changes: SQLite feed -> case-search -> SQLite store, checkpoints)\n"
    );
    println!(
        "Measured on the real `pillowtop run --until-caught-up` process (every domain enabled, so every case is written).\n"
    );
    println!(
        "| chunk_size | transform_threads | binary | changes/s (wall, whole run incl. start) | pillow process CPU µs/change (user+sys) | peak RSS of the pillow process |"
    );
    println!("|---:|---:|---|---:|---:|---:|");
    for (chunk_size, threads) in [(500usize, 1usize), (2000, 1), (2000, 2)] {
        // With a baseline, each binary gets its own copy of the same feed,
        // one right after the other.
        for (name, bin) in binaries() {
            let dir = tempfile::tempdir().unwrap();
            let config = embedded_case_search(dir.path(), chunk_size, threads);
            let config = config.to_str().unwrap();
            publish_generated(config, n);
            let mut cmd = pillowtop_cmd_of(&bin);
            cmd.args([
                "--config",
                config,
                "--log",
                "warn",
                "run",
                "--until-caught-up",
            ]);
            let (wall, cpu, rss, out) = measure_child(cmd);
            println!(
                "| {chunk_size} | {threads} | {name} | {:.0} | {:.1} | {rss:.0} MiB |",
                n as f64 / wall,
                cpu * 1e6 / n as f64
            );
            echo_summary(
                &out,
                &format!("chunk {chunk_size}, {threads} thread(s), {name}"),
            );
        }
    }
}

fn main() {
    let n = env_or("BENCH_CHANGES", 50_000);
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
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wanted = |s: &str| only.is_empty() || only.split(',').any(|o| o == s);
    if wanted("transform") {
        transform_bench(&changes);
    }
    if wanted("start") {
        startup_bench();
    }
    if wanted("e2e") {
        end_to_end_bench(n);
    }
    if wanted("languages") {
        languages_bench(&changes);
    }
    if wanted("reload") {
        reload_bench();
    }
    if wanted("kafka") {
        servers::kafka_bench(&lines);
    }
    if wanted("pgsink") {
        servers::pg_sink_bench();
    }
    if wanted("essink") {
        servers::es_sink_bench(&changes);
    }
    if wanted("retry") {
        retry::retry_bench();
    }
    if wanted("lookups") {
        lookups::lookups_bench(&lines);
    }
    if wanted("ucr") {
        ucr::ucr_bench(&changes);
    }
    if wanted("shadow") {
        shadow::shadow_bench(n);
    }
    if wanted("full") {
        fullstack::full_stack_bench();
    }
    if wanted("idle") {
        idle::idle_bench(&lines);
    }
    if wanted("reference") {
        reference::reference_bench(&lines);
    }
}

/// Section 4: the three case-search plugins on the same changes.
fn languages_bench(changes: &[Change]) {
    println!("\n## 4. case-search in three languages (one core, same changes, fuel enforced)\n");
    println!(
        "| plugin | component | compile (cold) | cached start | changes/s | vs Rust | fuel per change | memory per instance |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut rust_rate = 0.0;
    for (label, manifest, sample) in [
        (
            "Rust",
            "plugins/case-search/plugin.toml",
            changes.len().min(20_000),
        ),
        (
            "Python (componentize-py)",
            "plugins/examples/python-case-search/plugin.toml",
            1_000,
        ),
        (
            "JavaScript (componentize-js)",
            "plugins/examples/js-case-search/plugin.toml",
            1_000,
        ),
    ] {
        let mut m = Manifest::load(&root().join(manifest)).expect("run `make plugins` first");
        m.config_json = r#"{"index":"case-search","domains":"*"}"#.into();
        let size = std::fs::metadata(&m.component)
            .map(|x| x.len())
            .unwrap_or(0);
        let cache = tempfile::tempdir().unwrap();
        let options = || RuntimeOptions {
            compile_cache_dir: Some(cache.path().to_owned()),
            ..RuntimeOptions::default()
        };
        let (_, cold) = Runtime::new(options()).unwrap().load(&m).unwrap();
        let t = Instant::now();
        let (mut p, _) = Runtime::new(options()).unwrap().load(&m).unwrap();
        let warm = t.elapsed();
        let sample = &changes[..sample];
        let mut fuel = 0u64;
        let rate = best_rate(3, sample.len(), || {
            fuel = 0;
            for c in sample {
                std::hint::black_box(p.process(c).unwrap());
                fuel += p.last_fuel_used();
            }
        });
        if rust_rate == 0.0 {
            rust_rate = rate;
        }
        println!(
            "| {label} | {:.1} MB | {:.2} s | {:.0} ms | {rate:.0} | {:.3}x | {} | {:.1} MiB |",
            size as f64 / 1e6,
            cold.compile.as_secs_f64(),
            warm.as_secs_f64() * 1e3,
            rate / rust_rate,
            fuel / sample.len() as u64,
            p.memory_bytes() as f64 / (1 << 20) as f64,
        );
    }
    println!(
        "\nFuel per change is per average generated case; `limits.fuel` in each manifest keeps at least 20x headroom over it."
    );
}

/// A copy of `component` that differs by a custom section, so it has its
/// own content hash (a "new build" of the same plugin).
fn variant(component: &[u8], n: u32) -> Vec<u8> {
    let name = b"pillowtop-bench";
    let payload = n.to_le_bytes();
    let body_len = 1 + name.len() + payload.len();
    let mut out = component.to_vec();
    out.push(0); // custom section
    out.push(body_len as u8); // LEB128 of a small size is the byte itself
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}

/// Section 5: write a new version into a running host's plugin directory and
/// time until its `live` event is in the store.
fn reload_bench() {
    println!(
        "\n## 5. Hot reload: file written -> new version live (running host, warm compile cache)\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("tagger");
    std::fs::create_dir_all(&plugin).unwrap();
    let original = std::fs::read(root().join("plugins/testing/tagger/tagger.wasm"))
        .expect("run `make plugins` first");
    let cache = dir.path().join("cache");
    let manifest = |version: u32| {
        format!(
            "name = \"tagger\"\nversion = \"{version}.0.0\"\ncomponent = \"tagger.wasm\"\n\
             [limits]\nfuel = 1_000_000\nmemory_mb = 16\ntimeout_ms = 1000\n\
             [capabilities]\ntables = [\"tagged\"]\n[config]\ntag = \"v{version}\"\n"
        )
    };
    let rounds = 10u32;
    // Warm the compile cache with every build, as `plugin check` before a
    // deploy does.
    let runtime = Runtime::new(RuntimeOptions {
        compile_cache_dir: Some(cache.clone()),
        ..RuntimeOptions::default()
    })
    .unwrap();
    for v in 1..=rounds + 1 {
        std::fs::write(plugin.join("tagger.wasm"), variant(&original, v)).unwrap();
        std::fs::write(plugin.join("plugin.toml"), manifest(v)).unwrap();
        runtime
            .load(&Manifest::load(&plugin.join("plugin.toml")).unwrap())
            .unwrap();
    }
    std::fs::write(plugin.join("tagger.wasm"), variant(&original, 1)).unwrap();
    std::fs::write(plugin.join("plugin.toml"), manifest(1)).unwrap();
    let config = dir.path().join("pillowtop.toml");
    std::fs::write(
        &config,
        format!(
            "[feed]\ntype = \"embedded\"\npath = \"feed.db\"\n[store]\nurl = \"sqlite://store.db\"\n[runtime]\ncompile_cache_dir = {cache:?}\n\
             [[pillows]]\nname = \"tagged\"\ntopics = [\"load\"]\nprocessors = [\"tagger/plugin.toml\"]\nmax_wait_ms = 100\n"
        ),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let feed = pillowtop::feed::embedded::EmbeddedFeed::open(&dir.path().join("feed.db"))
            .await
            .unwrap();
        feed.create_topic("load", Some(2)).await.unwrap();
    });
    // Opened (and migrated) before the host starts: two processes must not
    // create the embedded store's tables at once.
    let store = rt
        .block_on(pillowtop::store::Store::open(&dir.path().join("store.db")))
        .unwrap();
    let mut child = pillowtop_cmd()
        .args(["--config", config.to_str().unwrap(), "--log", "warn", "run"])
        .stderr(std::fs::File::create(dir.path().join("host.log")).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let live = |v: u32| {
        let prefix = format!("{v}.0.0+");
        rt.block_on(store.plugin_events("tagged"))
            .unwrap()
            .iter()
            .any(|e| {
                e.event == pillowtop::store::PluginEventKind::Live
                    && e.version.as_deref().is_some_and(|x| x.starts_with(&prefix))
            })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !live(1) {
        assert!(
            Instant::now() < deadline,
            "host did not start: {}",
            std::fs::read_to_string(dir.path().join("host.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut times = Vec::new();
    for v in 2..=rounds + 1 {
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        std::fs::write(plugin.join("tagger.wasm"), variant(&original, v)).unwrap();
        std::fs::write(plugin.join("plugin.toml"), manifest(v)).unwrap();
        while !live(v) {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "v{v} never went live"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        times.push(t.elapsed());
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    times.sort();
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    println!("| new component + manifest written | median | max | rounds |");
    println!("|---|---:|---:|---:|");
    println!(
        "| to `live` in the store (poll_interval_ms = 100, max_wait_ms = 100) | {:.0} ms | {:.0} ms | {} |",
        ms(&times[times.len() / 2]),
        ms(times.last().unwrap()),
        times.len()
    );
    println!(
        "\nThe time is the watcher's two polls (a change must hold still for one interval), the load from the compile cache, instantiate + init, and the wait for the next chunk boundary (an idle pillow's poll returns after max_wait_ms)."
    );
}
