//! The `pillowtop` binary: gen | publish | run | status, graceful SIGTERM,
//! plugin check, and config errors.

use crate::support::*;
use std::path::Path;
use std::process::{Command, Stdio};

fn write_config(dir: &Path, chunk_size: usize) -> std::path::PathBuf {
    let path = dir.join("pillowtop.toml");
    let text = format!(
        "[feed]\ntype = \"embedded\"\npath = \"feed.db\"\n[store]\nurl = \"sqlite://store.db\"\n[runtime]\ncompile_cache_dir = {:?}\n\
         [[pillows]]\nname = \"case-search\"\ntopics = [\"case-sql\"]\nprocessors = [{:?}]\nchunk_size = {chunk_size}\nmax_wait_ms = 50\n",
        cache_dir(),
        case_search_manifest()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `gen | publish`, as a shell pipeline would.
fn gen_and_publish(config: &Path, count: u32) {
    let mut generator = bin()
        .args(["gen", "--count", &count.to_string(), "--seed", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = bin()
        .args([
            "--config",
            config.to_str().unwrap(),
            "publish",
            "--topic",
            "case-sql",
            "--partitions",
            "2",
        ])
        .stdin(generator.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(generator.wait().unwrap().success());
    assert!(
        out.status.success(),
        "publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("published {count} changes to case-sql"))
    );
}

fn run_until_caught_up(config: &Path) -> std::process::Output {
    bin()
        .args([
            "--config",
            config.to_str().unwrap(),
            "--log",
            "warn",
            "run",
            "--until-caught-up",
        ])
        .output()
        .unwrap()
}

fn status_json(config: &Path) -> serde_json::Value {
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
    status["pillows"].clone()
}

#[test]
fn gen_publish_run_status() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 200);
    gen_and_publish(&config, 3000);
    let before = status_json(&config);
    assert_eq!(before[0]["need_processing"], 3000);
    let out = run_until_caught_up(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("pillow case-search: 3000 changes read"),
        "{stdout}"
    );
    assert!(
        stdout.contains("lag (need-processing) 0 over 2 partitions"),
        "{stdout}"
    );
    let after = status_json(&config);
    assert_eq!(after[0]["need_processing"], 0);
    for p in after[0]["partitions"].as_array().unwrap() {
        assert_eq!(p["checkpoint"], p["end_offset"]);
    }
    let plugin = &after[0]["plugins"][0];
    assert_eq!(plugin["processor"], "case-search");
    assert!(plugin["on_disk"].as_str().unwrap().starts_with("0.1.0+"));
    // The version that ran, as the run recorded it, is the one on disk.
    assert_eq!(plugin["live"][0][1], plugin["on_disk"], "{plugin}");
    assert_eq!(after[0]["processes"][0]["state"], "stopped");
}

#[test]
fn sigterm_finishes_the_chunk_saves_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 20);
    gen_and_publish(&config, 30_000);
    let mut run = bin();
    run.args(["--config", config.to_str().unwrap(), "--log", "info", "run"]);
    // Wait for the pillow to start, let it work briefly, then SIGTERM.
    let (mut child, _stderr) = spawn_started(run);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "graceful stop exits 0");
    let saved: u64 = status_json(&config)[0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["checkpoint"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        saved > 0 && saved < 30_000,
        "stopped mid-stream with a saved checkpoint ({saved})"
    );
    // The rest, and only the rest, is read by the next run.
    let out = run_until_caught_up(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "pillow case-search: {} changes read",
            30_000 - saved
        )),
        "{stdout}"
    );
}

#[test]
fn plugin_check_passes_case_search_and_fails_a_wrong_fixture() {
    let out = bin()
        .args([
            "plugin",
            "check",
            case_search_manifest().to_str().unwrap(),
            "--compile-cache",
        ])
        .arg(cache_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("fixtures: 16 passed, 0 failed"), "{stdout}");

    // A copy of the plugin with one wrong golden fixture.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("fixtures")).unwrap();
    let manifest = std::fs::read_to_string(case_search_manifest())
        .unwrap()
        .replace(
            "component = \"case_search.wasm\"",
            &format!(
                "component = {:?}",
                component("plugins/case-search/case_search.wasm")
            ),
        );
    std::fs::write(dir.path().join("plugin.toml"), manifest).unwrap();
    let fixture =
        std::fs::read_to_string(root().join("plugins/case-search/fixtures/03-deletion.json"))
            .unwrap()
            .replace("\"id\": \"c3\"}", "\"id\": \"WRONG\"}");
    std::fs::write(dir.path().join("fixtures/03-deletion.json"), fixture).unwrap();
    let out = bin()
        .args([
            "plugin",
            "check",
            dir.path().join("plugin.toml").to_str().unwrap(),
            "--compile-cache",
        ])
        .arg(cache_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL  03-deletion.json")
            && stdout.contains("fixtures: 0 passed, 1 failed"),
        "{stdout}"
    );
}

#[test]
fn a_bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pillowtop.toml");
    std::fs::write(&path, "[feed]\ntype = \"embedded\"\npath = \"f.db\"\n[store]\nurl = \"sqlite://s.db\"\n[[pillows]]\nname = \"p\"\ntopics = [\"t\"]\nprocessors = [\"x.toml\"]\nchunk_sise = 5\n").unwrap();
    let out = bin()
        .args(["--config", path.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("unknown field `chunk_sise`") && stderr.contains("pillowtop.toml"),
        "{stderr}"
    );

    let out = bin()
        .args(["--config", "/nonexistent/pillowtop.toml", "status"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot read host config /nonexistent/pillowtop.toml")
    );
}

/// An error says each cause once: the OS error of a missing manifest is
/// not repeated by the chain of errors around it.
#[test]
fn a_missing_manifest_says_its_os_error_once() {
    let out = bin()
        .args(["plugin", "check", "/nonexistent/plugin.toml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot read plugin manifest /nonexistent/plugin.toml"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
}

/// The embedded store serves one process: a second `run` on it is refused
/// at start, naming the process that has it (not `database is locked`).
#[test]
fn a_second_process_on_the_embedded_store_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 20);
    gen_and_publish(&config, 100);
    let mut run = bin();
    run.args(["--config", config.to_str().unwrap(), "--log", "info", "run"]);
    let (mut first, _stderr) = spawn_started(run);
    let out = bin()
        .args(["--config", config.to_str().unwrap(), "run"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("is in use by pillowtop process {}", first.id())),
        "{stderr}"
    );
    assert!(!stderr.contains("database is locked"), "{stderr}");
    let kill = Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert_eq!(first.wait().unwrap().code(), Some(0));
    // Once it stopped, the store is free again.
    assert!(run_until_caught_up(&config).status.success());
}

fn cli(config: &Path, args: &[&str], succeeds: bool) -> String {
    let out = bin()
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert_eq!(out.status.success(), succeeds, "{args:?}: {stdout}{stderr}");
    if succeeds { stdout } else { stderr }
}

fn cli_ok(config: &Path, args: &[&str]) -> String {
    cli(config, args, true)
}

fn cli_err(config: &Path, args: &[&str]) -> String {
    cli(config, args, false)
}

/// A checkpoint the feed has dropped (retention) stops the pillow with
/// CommCare's message; `checkpoint` commands show and resolve it.
#[tokio::test(flavor = "multi_thread")]
async fn retention_gap_stops_with_commcares_message_and_checkpoint_commands_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 200);
    gen_and_publish(&config, 1000);
    assert!(run_until_caught_up(&config).status.success());
    gen_and_publish(&config, 500);
    let store = pillowtop::store::Store::open(&dir.path().join("store.db"))
        .await
        .unwrap();
    let saved = store.checkpoints("case-search").await.unwrap();
    let p0 = saved
        .iter()
        .find(|c| c.tp.partition == 0)
        .unwrap()
        .next_offset;
    // Retention drops partition 0's oldest messages, past the checkpoint
    // (the embedded feed has no retention of its own; this is what a
    // retention job would do).
    let feed = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        dir.path().join("feed.db").display()
    ))
    .await
    .unwrap();
    let first = p0 + 40;
    sqlx::query(
        r#"DELETE FROM messages WHERE topic = 'case-sql' AND partition = 0 AND "offset" < ?"#,
    )
    .bind(first as i64)
    .execute(&feed)
    .await
    .unwrap();

    let out = run_until_caught_up(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "First available topic offset for case-sql:0 is {first} but needed {p0}"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("pillowtop checkpoint set"), "{stderr}");

    let show = cli_ok(&config, &["checkpoint", "show", "--pillow", "case-search"]);
    assert!(show.contains("RETENTION GAP"), "{show}");
    let err = cli_err(
        &config,
        &[
            "checkpoint",
            "set",
            "--pillow",
            "case-search",
            "--partition",
            "case-sql:0",
            "--offset",
            &(first - 1).to_string(),
        ],
    );
    assert!(err.contains("outside what case-sql:0 holds"), "{err}");
    let set = cli_ok(
        &config,
        &[
            "checkpoint",
            "set",
            "--pillow",
            "case-search",
            "--partition",
            "case-sql:0",
            "--offset",
            &first.to_string(),
        ],
    );
    assert!(
        set.contains(&format!("case-sql:0: checkpoint {p0} -> {first}")),
        "{set}"
    );
    let out = run_until_caught_up(&config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = status_json(&config);
    assert_eq!(status[0]["need_processing"], 0);

    // While a process of the pillow looks alive, moving checkpoints is refused.
    let now = pillowtop::time::now_ms();
    store
        .register_process(&pillowtop::store::ProcessRecord {
            pillow: "case-search".into(),
            process_num: 0,
            pid: 4_000_000,
            host: "h".into(),
            admin_url: None,
            started_at_ms: now,
            heartbeat_at_ms: now,
            stopped_at_ms: None,
            waiting: None,
        })
        .await
        .unwrap();
    let err = cli_err(&config, &["checkpoint", "reset", "--pillow", "case-search"]);
    assert!(
        err.contains("is running") && err.contains("--force"),
        "{err}"
    );
    let reset = cli_ok(
        &config,
        &[
            "checkpoint",
            "reset",
            "--pillow",
            "case-search",
            "--partition",
            "case-sql:1",
            "--force",
        ],
    );
    assert!(
        reset.contains("case-sql:1: checkpoint") && reset.trim_end().ends_with("-> 0"),
        "{reset}"
    );
    let latest = cli_ok(
        &config,
        &[
            "checkpoint",
            "to-latest",
            "--pillow",
            "case-search",
            "--force",
        ],
    );
    assert_eq!(latest.lines().count(), 2, "{latest}");
    assert_eq!(status_json(&config)[0]["need_processing"], 0);
}

/// `pillowtop errors list | show | retry | purge | fixture` and `pillowtop
/// retry --once` on a store a run left pillow errors in.
#[test]
fn operators_list_show_requeue_and_turn_errors_into_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = hostile_manifest(dir.path(), "fuel = 5_000_000", "");
    let config = dir.path().join("pillowtop.toml");
    std::fs::write(
        &config,
        format!(
            "[feed]\ntype = \"embedded\"\npath = \"feed.db\"\n[store]\nurl = \"sqlite://store.db\"\n[runtime]\ncompile_cache_dir = {:?}\n\
             [[pillows]]\nname = \"ops\"\ntopics = [\"t\"]\nprocessors = [{manifest:?}]\nmax_wait_ms = 50\n",
            cache_dir()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let lines = [
        change("x-retry", serde_json::json!({"hostile": "retryable"})),
        change("x-perm", serde_json::json!({"hostile": "permanent"})),
        change("good", serde_json::json!({"i": 1})),
    ]
    .join("\n");
    let mut publish = bin()
        .args([
            "--config",
            cfg,
            "publish",
            "--topic",
            "t",
            "--partitions",
            "1",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    publish
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    assert!(publish.wait().unwrap().success());
    assert!(run_until_caught_up(&config).status.success());
    let pillowtop = |args: &[&str]| {
        let out = bin().args(["--config", cfg]).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    let listing: serde_json::Value =
        serde_json::from_str(&pillowtop(&["errors", "list", "--json"])).unwrap();
    assert_eq!(listing["counts"]["total"], 2, "{listing}");
    let ids: std::collections::HashMap<String, i64> = listing["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["doc_id"].as_str().unwrap().to_owned(),
                e["id"].as_i64().unwrap(),
            )
        })
        .collect();
    let table = pillowtop(&["errors", "list", "--kind", "permanent"]);
    assert!(table.starts_with("1 pillow errors\n"), "{table}");
    assert!(table.contains("by kind:   permanent 1"), "{table}");
    assert!(
        table.contains("ID") && table.contains("x-perm") && !table.contains("x-retry"),
        "{table}"
    );

    let shown = pillowtop(&["errors", "show", &ids["x-retry"].to_string()]);
    for needle in [
        "state:      pending",
        "kind:       retryable",
        "lookup not ready yet",
        "\"hostile\": \"retryable\"",
        "1 in this series, 1 in all",
    ] {
        assert!(shown.contains(needle), "{needle:?} in:\n{shown}");
    }
    let missing = bin()
        .args(["--config", cfg, "errors", "show", "999"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no pillow error with id 999"));

    // Nothing is due for five minutes; re-queue the parked one now.
    assert!(pillowtop(&["retry", "--once"]).contains("pillow ops: 0 batches; nothing was due"));
    assert!(
        pillowtop(&["errors", "retry", "--all", "--parked"]).starts_with("1 pillow errors queued")
    );
    let retried = pillowtop(&["retry", "--once"]);
    assert!(
        retried.contains("pillow ops: 1 batches; parked 1"),
        "{retried}"
    );
    let perm: serde_json::Value = serde_json::from_str(&pillowtop(&[
        "errors",
        "show",
        &ids["x-perm"].to_string(),
        "--json",
    ]))
    .unwrap();
    assert_eq!(
        (
            perm["state"].as_str(),
            perm["series_attempts"].as_i64(),
            perm["total_attempts"].as_i64()
        ),
        (Some("parked"), Some(1), Some(2)),
        "{perm}"
    );

    let fixtures = dir.path().join("fixtures");
    let wrote = pillowtop(&[
        "errors",
        "fixture",
        &ids["x-retry"].to_string(),
        "--dir",
        fixtures.to_str().unwrap(),
        "--expect-current",
    ]);
    assert!(wrote.starts_with("wrote "), "{wrote}");
    let file = std::fs::read_dir(&fixtures)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let fixture: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(fixture["expect_error"], "retryable", "{fixture}");
    assert_eq!(fixture["change"]["document_id"], "x-retry");
    assert_eq!(fixture["topic"], "t");
    assert!(
        pillowtop(&["errors", "purge", "--resolved"])
            .starts_with("0 resolved pillow errors deleted")
    );
}

/// `--log-format json`: one JSON object per line, and the line about a
/// change that failed names its pillow, topic, partition, offset and
/// document.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_name_the_change_a_line_is_about() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 50);
    let feed = pillowtop::feed::embedded::EmbeddedFeed::open(&dir.path().join("feed.db"))
        .await
        .unwrap();
    feed.create_topic("case-sql", Some(1)).await.unwrap();
    let good = change("c1", serde_json::json!({"_id": "c1", "type": "patient"}));
    feed.publish(
        "case-sql",
        vec![
            (Some(b"c1".to_vec()), good.into_bytes()),
            (Some(b"bad1".to_vec()), b"{not json".to_vec()),
        ],
    )
    .await
    .unwrap();
    let out = bin()
        .args([
            "--config",
            config.to_str().unwrap(),
            "--log-format",
            "json",
            "run",
            "--until-caught-up",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let failed = lines
        .iter()
        .find(|l| l["message"] == "change failed; recorded as a pillow error")
        .unwrap_or_else(|| panic!("no line about the failed change:\n{stderr}"));
    assert_eq!(failed["pillow"], "case-search", "{failed}");
    assert_eq!(failed["topic"], "case-sql", "{failed}");
    assert_eq!(failed["partition"], 0, "{failed}");
    assert_eq!(failed["offset"], 1, "{failed}");
    assert_eq!(failed["doc_id"], "bad1", "{failed}");
    assert_eq!(failed["level"], "WARN", "{failed}");
}
