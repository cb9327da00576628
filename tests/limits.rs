//! The sandbox's limits as an operator meets them: the `pillowtop` binary
//! running a pillow of the hostile plugin. A misbehaving change fails with
//! its own error kind, the partition's other changes land, checkpoints
//! reach the end, the host's memory stays bounded, and SIGTERM ends the
//! process within its grace period.

use crate::support::*;
use pillowtop::store::Store;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A host config and hostile plugin manifest in a temp dir.
struct Host {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Host {
    /// `limits` goes into the manifest's `[limits]`, `pillow` into the
    /// pillow's table, `runtime` into `[runtime]`.
    fn new(limits: &str, pillow: &str, runtime: &str) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let manifest = hostile_manifest(dir.path(), limits, "");
        let config = dir.path().join("pillowtop.toml");
        std::fs::write(
            &config,
            format!(
                "[feed]\ntype = \"embedded\"\npath = \"feed.db\"\n[store]\nurl = \"sqlite://store.db\"\n\
                 [runtime]\ncompile_cache_dir = {:?}\n{runtime}\n[admin]\nenabled = false\n\
                 [[pillows]]\nname = \"hostile\"\ntopics = [\"hostile\"]\nprocessors = [{manifest:?}]\nmax_wait_ms = 20\n{pillow}\n",
                cache_dir()
            ),
        )
        .unwrap();
        Host { dir, config }
    }

    fn cmd(&self) -> Command {
        self.cmd_logging("warn")
    }

    fn cmd_logging(&self, level: &str) -> Command {
        let mut c = bin();
        c.args(["--config", self.config.to_str().unwrap(), "--log", level]);
        c
    }

    /// Publish changes to topic `hostile` (one partition, in order).
    fn publish(&self, lines: &[String]) {
        let mut child = self
            .cmd()
            .args(["publish", "--topic", "hostile", "--partitions", "1"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut stdin, lines.join("\n").as_bytes()).unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "publish: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn store(&self) -> Store {
        Store::open(&self.dir.path().join("store.db"))
            .await
            .unwrap()
    }
}

/// What a finished process did: status, peak resident memory, stdout and
/// stderr.
struct Finished {
    status: ExitStatus,
    max_rss_bytes: u64,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn assert_peak_rss_under_mib(&self, mib: u64) {
        assert!(
            self.max_rss_bytes > 0 && self.max_rss_bytes < mib << 20,
            "peak RSS {} MiB, over {mib} MiB",
            self.max_rss_bytes >> 20
        );
    }
}

/// A process's peak resident memory so far (`VmHWM`), if it still runs.
/// Read from /proc rather than from `wait4`'s rusage: a child's `ru_maxrss`
/// starts at its parent's RSS at fork (the test process, large when tests
/// run in parallel), while `VmHWM` belongs to the child's own memory map.
fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Wait for `child`, sampling its peak RSS every 20 ms (`VmHWM` only grows,
/// so the last sample before exit is within 20 ms of the end).
fn finish(mut child: Child) -> Finished {
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let mut max_rss_bytes = 0;
    let status = loop {
        if let Some(peak) = peak_rss_bytes(child.id()) {
            max_rss_bytes = max_rss_bytes.max(peak);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished {
        status,
        max_rss_bytes,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn run_until_caught_up(host: &Host) -> Finished {
    let child = host
        .cmd()
        .args(["run", "--until-caught-up"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    finish(child)
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// (doc_id, kind, message) of every stored pillow error.
async fn pillow_errors(store: &Store) -> Vec<(String, String, String)> {
    sqlx::query_as("SELECT doc_id, kind, message FROM pillow_errors ORDER BY doc_id")
        .fetch_all(store.sqlite().unwrap())
        .await
        .unwrap()
}

async fn documents(store: &Store) -> Vec<String> {
    sqlx::query_scalar("SELECT id FROM doc_hostile ORDER BY id")
        .fetch_all(store.sqlite().unwrap())
        .await
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_hostile_change_fails_alone_and_the_partition_reaches_its_end() {
    // The sleep loop must end by fuel (its sleeps return at once): the
    // deadline is far enough out that a loaded 2-core machine burning the
    // fuel through host calls does not reach it first (it did at 2 s).
    let host = Host::new(
        "fuel = 200_000_000\nmemory_mb = 64\ntimeout_ms = 10000",
        "chunk_size = 50\ncheckpoint_every = 1",
        "shutdown_grace_seconds = 10",
    );
    let mut lines: Vec<String> = (0..10)
        .map(|i| change(&format!("n{i:02}"), serde_json::json!({})))
        .collect();
    let hostile = [
        ("h-sleep", serde_json::json!({"hostile": "sleep"})),
        ("h-sleep-loop", serde_json::json!({"hostile": "sleep-loop"})),
        (
            "h-alias",
            serde_json::json!({"hostile": "alias", "kib": 1024, "copies": 100}),
        ),
        (
            "h-big",
            serde_json::json!({"hostile": "big", "kib": 20 * 1024}),
        ),
        (
            "h-big-error",
            serde_json::json!({"hostile": "big-error", "kib": 1024}),
        ),
        ("h-long-key", serde_json::json!({"hostile": "long-key"})),
        ("h-permanent", serde_json::json!({"hostile": "permanent"})),
    ];
    lines.extend(hostile.iter().map(|(id, d)| change(id, d.clone())));
    lines.extend((10..20).map(|i| change(&format!("n{i:02}"), serde_json::json!({}))));
    host.publish(&lines);
    // Opened (and migrated) first: the embedded store is not for two
    // processes to create at once.
    let store = host.store().await;

    let mut child = host
        .cmd()
        .args(["run"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while checkpointed(&store, "hostile").await < lines.len() as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "checkpoints never reached the end ({} of {}); pillow errors: {:?}",
            checkpointed(&store, "hostile").await,
            lines.len(),
            pillow_errors(&store).await
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the host exited early ({status}): {}", finish(child).stderr);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sigterm(&child);
    let stopping = Instant::now();
    let done = finish(child);
    assert_eq!(done.status.code(), Some(0), "{}", done.stderr);
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "exited {:?} after SIGTERM, past the 10 s grace period",
        stopping.elapsed()
    );

    let errors = pillow_errors(&store).await;
    let kinds: Vec<(&str, &str)> = errors
        .iter()
        .map(|(id, kind, _)| (id.as_str(), kind.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("h-alias", "output"),
            ("h-big", "output"),
            ("h-big-error", "retryable"),
            ("h-long-key", "malformed"),
            ("h-permanent", "permanent"),
            ("h-sleep-loop", "fuel"),
        ],
        "one pillow error per hostile change, of its own kind (a sleep is no error)"
    );
    let cut = &errors.iter().find(|e| e.0 == "h-big-error").unwrap().2;
    assert!(cut.len() < 4200, "stored message of {} bytes", cut.len());
    assert!(
        cut.ends_with("[cut: the message was 1048576 bytes]"),
        "{}",
        &cut[cut.len() - 50..]
    );
    let mut expected: Vec<String> = (0..20).map(|i| format!("n{i:02}")).collect();
    expected.push("h-sleep".into());
    expected.sort();
    assert_eq!(
        documents(&store).await,
        expected,
        "every other change landed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn aliased_outputs_over_2000_changes_keep_the_host_small() {
    // The case: a 4 MiB plugin returns 100 documents that all point
    // at one 1 MiB string. Before, 53 such changes took the host to 16 GB.
    let host = Host::new(
        "fuel = 500_000_000\nmemory_mb = 4\ntimeout_ms = 5000",
        "chunk_size = 2000",
        "",
    );
    let lines: Vec<String> = (0..2000)
        .map(|i| {
            change(
                &format!("a{i:04}"),
                serde_json::json!({"hostile": "alias", "kib": 1024, "copies": 100}),
            )
        })
        .collect();
    host.publish(&lines);
    let done = run_until_caught_up(&host);
    assert!(done.status.success(), "{}", done.stderr);
    let store = host.store().await;
    let errors = pillow_errors(&store).await;
    assert_eq!(
        errors.len(),
        2000,
        "every change is an error: {}",
        done.stdout
    );
    assert!(errors.iter().all(|e| e.1 == "output"), "{:?}", &errors[0]);
    assert_eq!(checkpointed(&store, "hostile").await, 2000);
    // Measured at 41 MiB (`/usr/bin/time -v`); 16 MiB of output per call is
    // the most any change may make the host copy.
    done.assert_peak_rss_under_mib(256);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_over_its_memory_budget_is_written_in_pieces() {
    // 300 changes of 1 MiB documents in one chunk of 2000: 300 MiB of
    // actions, held whole before. chunk_memory_mb = 8 writes them in pieces.
    let host = Host::new(
        "fuel = 500_000_000\nmemory_mb = 64\ntimeout_ms = 5000",
        "chunk_size = 2000\nchunk_memory_mb = 8",
        "",
    );
    let lines: Vec<String> = (0..300)
        .map(|i| {
            change(
                &format!("b{i:03}"),
                serde_json::json!({"hostile": "big", "kib": 1024}),
            )
        })
        .collect();
    host.publish(&lines);
    let done = run_until_caught_up(&host);
    assert!(done.status.success(), "{}", done.stderr);
    assert!(done.stdout.contains("extra pieces"), "{}", done.stdout);
    let store = host.store().await;
    assert_eq!(pillow_errors(&store).await, vec![]);
    assert_eq!(documents(&store).await.len(), 300, "every document landed");
    assert_eq!(checkpointed(&store, "hostile").await, 300);
    done.assert_peak_rss_under_mib(256);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_the_process_within_its_grace_period_even_with_a_call_running() {
    // A plugin call allowed ten minutes (timeout_ms at its maximum) spins
    // on: the chunk cannot finish, so the stop cannot wait for it.
    let host = Host::new(
        "fuel = 1_000_000_000_000_000_000\nmemory_mb = 16\ntimeout_ms = 600_000",
        "chunk_size = 50",
        "shutdown_grace_seconds = 2",
    );
    // First, so whatever the chunking, nothing can be committed past it.
    let mut lines = vec![change("stuck", serde_json::json!({"hostile": "loop"}))];
    lines.extend((0..5).map(|i| change(&format!("n{i}"), serde_json::json!({}))));
    host.publish(&lines);
    let mut run = host.cmd_logging("info");
    run.arg("run");
    let (mut child, mut stderr) = spawn_started(run);
    std::thread::sleep(Duration::from_millis(500));
    sigterm(&child);
    let stopping = Instant::now();
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(30),
            "still running 30 s after SIGTERM with a 2 s grace period"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = rest.join().unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("still running when the stop's grace period ended"),
        "{log}"
    );
    assert!(
        log.contains("plugin hostile@1.0.0+")
            && log.contains("of change \"stuck\" at hostile:0 offset 0"),
        "names the plugin, change and partition: {log}"
    );
    let store = host.store().await;
    assert_eq!(
        checkpointed(&store, "hostile").await,
        0,
        "the stuck chunk was not committed"
    );
    assert!(documents(&store).await.is_empty());

    // The next run reads the chunk again; with a sane timeout the loop is
    // a timeout error and everything else lands.
    let manifest = host.dir.path().join("hostile.toml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("timeout_ms = 600_000", "timeout_ms = 200");
    std::fs::write(&manifest, text).unwrap();
    let done = run_until_caught_up(&host);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(documents(&store).await, vec!["n0", "n1", "n2", "n3", "n4"]);
    let errors = pillow_errors(&store).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (errors[0].0.as_str(), errors[0].1.as_str()),
        ("stuck", "timeout")
    );
    assert_eq!(checkpointed(&store, "hostile").await, 6);
}

fn check(manifest: &Path, extra: &[&str]) -> (bool, String) {
    let out = bin()
        .args([
            "plugin",
            "check",
            manifest.to_str().unwrap(),
            "--compile-cache",
        ])
        .arg(cache_dir())
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn plugin_check_refuses_what_would_fail_at_run() {
    let dir = tempfile::tempdir().unwrap();
    // A declared table named like the store's own.
    let reserved = hostile_manifest(dir.path(), "fuel = 50_000_000", "");
    let text = std::fs::read_to_string(&reserved)
        .unwrap()
        .replace("tables = [\"hostile_rows\"]", "tables = [\"checkpoints\"]")
        + "[config]\nreserved_table = true\n";
    std::fs::write(&reserved, text).unwrap();
    let (ok, out) = check(&reserved, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("init declared table \"checkpoints\", a name the host keeps for itself"),
        "{out}"
    );
    assert!(
        out.contains("pillow_errors, processes"),
        "names the reserved set: {out}"
    );

    // A table PostgreSQL cannot hold.
    let wide = hostile_manifest(
        dir.path(),
        "fuel = 500_000_000",
        "[config]\nwide_table = true",
    );
    let (ok, out) = check(&wide, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("declares 10002 columns; at most 1600"),
        "{out}"
    );

    // A component that is not a file is refused before reading it.
    let text = std::fs::read_to_string(&wide).unwrap();
    let zero = dir.path().join("zero.toml");
    let component = component("plugins/testing/hostile/hostile.wasm");
    std::fs::write(
        &zero,
        text.replace(&format!("{component:?}"), "\"/dev/zero\""),
    )
    .unwrap();
    let (ok, out) = check(&zero, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("/dev/zero: not a regular file (a character device)"),
        "{out}"
    );

    // Nor is one over runtime.max_component_mb (a 2 MiB file, never read).
    let big = dir.path().join("big.wasm");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    let too_big = dir.path().join("big.toml");
    std::fs::write(
        &too_big,
        text.replace(&format!("{component:?}"), &format!("{big:?}")),
    )
    .unwrap();
    let (ok, out) = check(&too_big, &["--max-component-mb", "1"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("2097152 bytes, over the limit of 1048576 bytes (runtime.max_component_mb)"),
        "{out}"
    );
}

#[test]
fn plugin_check_is_bounded_by_the_frozen_clock_and_runs_fixtures_as_asked() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = dir.path().join("fixtures");
    std::fs::create_dir(&fixtures).unwrap();
    std::fs::write(
        fixtures.join("drift.json"),
        serde_json::json!({
            "change": {"document_id": "d", "document_type": "CommCareCase",
                       "document": {"hostile": "drift", "from_call": 5}},
            "expect": [{"index_document": {"index": "hostile", "id": "d", "document": {"n": 0}}}]
        })
        .to_string(),
    )
    .unwrap();
    // init sleeps for an hour, were the clock real.
    let manifest = hostile_manifest(
        dir.path(),
        "fuel = 50_000_000\ntimeout_ms = 1000",
        "[config]\nsleep_init = true",
    );
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("fixtures = \"fixtures\"\n{text}")).unwrap();
    let started = Instant::now();
    let (ok, out) = check(&manifest, &[]);
    assert!(ok, "three calls agree: {out}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "check took {:?}",
        started.elapsed()
    );
    let (ok, out) = check(&manifest, &["--runs", "5"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("not deterministic: call 5 of the same change"),
        "{out}"
    );
}
