//! Hot reload: new versions go live at chunk boundaries without a restart;
//! broken versions are refused and the running one stays.

use crate::support::*;
use crate::tagged::*;
use pillowtop::metrics::Metrics;
use pillowtop::reload::{Plugins, ReloadOutcome};
use pillowtop::store::{PluginEventKind, Store};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn plugins() -> Arc<Plugins> {
    Arc::new(Plugins::new(runtime(), Arc::new(Metrics::new())))
}

fn refused_reason(outcome: &ReloadOutcome) -> &str {
    match outcome {
        ReloadOutcome::Refused { refusal, .. } => &refusal.reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_stages_only_versions_that_compile_init_and_pass_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = TaggerPlugin::new(dir.path());
    plugin.good(1);
    let plugins = plugins();
    let slot = tokio::task::block_in_place(|| plugins.load(&plugin.manifest()))
        .unwrap()
        .0;
    let v1 = slot.live().0.version().to_string();
    assert!(v1.starts_with("1.0.0+"), "{v1}");

    // Same files: nothing to do.
    let out = plugins.reload_named(Some("tagger")).await;
    assert_eq!(
        out,
        vec![ReloadOutcome::Unchanged {
            plugin: "tagger".into(),
            version: v1.clone()
        }]
    );
    assert_eq!(slot.generation(), 0);

    // Fixtures that the new version fails.
    plugin.write(2, "v2", "something-else", "");
    let out = plugins.reload_named(Some("tagger")).await;
    let reason = refused_reason(&out[0]);
    assert!(reason.contains("1 of 1 golden fixtures fail"), "{reason}");
    assert!(reason.contains("01-row.json"), "{reason}");

    // init fails.
    plugin.write(3, "v3", "v3", "fail_init = true");
    let out = plugins.reload_named(Some("tagger")).await;
    let reason = refused_reason(&out[0]);
    assert!(
        reason.contains("init failed") && reason.contains("fail_init"),
        "{reason}"
    );

    // Not a component.
    plugin.good(4);
    std::fs::write(plugin.component(), b"\0asm garbage").unwrap();
    let out = plugins.reload_named(Some("tagger")).await;
    let reason = refused_reason(&out[0]);
    assert!(
        reason.contains("not a valid WebAssembly component"),
        "{reason}"
    );

    // A manifest that no longer parses.
    plugin.restore_component();
    std::fs::write(plugin.manifest(), "name = \"tagger\"\nversio = 1\n").unwrap();
    let out = plugins.reload_named(Some("tagger")).await;
    let reason = refused_reason(&out[0]);
    assert!(reason.contains("plugin.toml"), "{reason}");

    // Every refusal left v1 live and the generation alone.
    assert_eq!(slot.live().0.version().to_string(), v1);
    assert_eq!(slot.generation(), 0);
    assert_eq!(slot.refusals(), 4);
    assert!(slot.refusal().0.is_some());

    // A good version goes live and clears the refusal.
    plugin.good(5);
    let out = plugins.reload_named(None).await;
    match &out[0] {
        ReloadOutcome::Live {
            version, previous, ..
        } => {
            assert!(version.starts_with("5.0.0+"), "{version}");
            assert_eq!(previous, &v1);
        }
        other => panic!("expected live, got {other:?}"),
    }
    assert_eq!(slot.generation(), 1);
    assert!(slot.refusal().0.is_none());
    let metrics = plugins.metrics().render();
    assert!(
        metrics.contains("pillowtop_plugin_reloads_total{plugin=\"tagger\",outcome=\"refused\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pillowtop_plugin_refused{plugin=\"tagger\"} 0"),
        "{metrics}"
    );
    assert!(!metrics.contains(&format!("version=\"{v1}\"")), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_whose_init_sleeps_is_staged_without_holding_the_reload() {
    // Before, `init` sleeping (WASI served the sleep with real time) hung
    // `plugin reload` and every later reload of the plugin.
    let dir = tempfile::tempdir().unwrap();
    let manifest = hostile_manifest(dir.path(), "fuel = 50_000_000\ntimeout_ms = 1000", "");
    let plugins = plugins();
    let slot = tokio::task::block_in_place(|| plugins.load(&manifest))
        .unwrap()
        .0;
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("{text}\n[config]\nsleep_init = true\n")).unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        plugins.reload_named(Some("hostile")),
    )
    .await
    .expect("the reload returned: init sleeps under a frozen clock");
    assert!(matches!(out[0], ReloadOutcome::Live { .. }), "{out:?}");
    assert_eq!(slot.generation(), 1);
}

fn sigterm(child: &std::process::Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// A host process (the binary: signals and the CLI reach it) of a
/// [`Setup`]; its log goes to `host.log` in `dir`.
struct Host {
    dir: tempfile::TempDir,
    plugin: TaggerPlugin,
    config: PathBuf,
    store: Store,
    child: std::process::Child,
}

impl Host {
    async fn start(watch: bool, partitions: u32) -> Host {
        let Setup {
            dir,
            plugin,
            config,
            feed: _,
            store,
        } = Setup::new(watch, partitions).await;
        let log = std::fs::File::create(dir.path().join("host.log")).unwrap();
        let child = bin()
            .args(["--config", config.to_str().unwrap(), "--log", "info", "run"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Host {
            dir,
            plugin,
            config,
            store,
            child,
        }
    }
}

/// v1 -> v2 -> broken v3 -> v4 under continuous load, by file watching, in
/// one host that never restarts (run in this process).
#[tokio::test(flavor = "multi_thread")]
async fn versions_swap_at_chunk_boundaries_under_load_and_broken_ones_never_run() {
    let InProcessHost {
        _dir,
        plugin,
        feed,
        store,
        stop: host_stop,
        run,
    } = InProcessHost::start(true, 4).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(feed.clone(), stop.clone());
    let host_log = || {
        if run.is_finished() {
            "the host stopped early"
        } else {
            "the host runs"
        }
    };

    wait_for_events(&store, "v1 live", |e| {
        has(e, PluginEventKind::Live, "1.0.0+")
    })
    .await;
    // Let each version work under load before the next switch.
    let settle = async |store: &Store, tag: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while rows(store).await.iter().filter(|r| r.1 == tag).count() < 100 {
            assert!(
                Instant::now() < deadline,
                "host stopped processing:\n{}",
                host_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    settle(&store, "v1").await;

    plugin.good(2);
    wait_for_events(&store, "v2 live", |e| {
        has(e, PluginEventKind::Live, "2.0.0+")
    })
    .await;
    settle(&store, "v2").await;

    // v3: the manifest changes and the component is broken.
    std::fs::write(plugin.component(), b"\0asm\x0d\0\x01\0 truncated").unwrap();
    plugin.good(3);
    let events = wait_for_events(&store, "v3 refused", |e| {
        e.iter().any(|e| e.event == PluginEventKind::Refused)
    })
    .await;
    let refusal = events
        .iter()
        .find(|e| e.event == PluginEventKind::Refused)
        .unwrap();
    assert!(
        refusal.version.as_deref().unwrap().starts_with("3.0.0+"),
        "{refusal:?}"
    );
    assert!(
        refusal
            .reason
            .as_deref()
            .unwrap()
            .contains("not a valid WebAssembly component"),
        "{refusal:?}"
    );
    // v2 keeps running after the refusal.
    let v2_rows = rows(&store).await.iter().filter(|r| r.1 == "v2").count();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows(&store).await.iter().filter(|r| r.1 == "v2").count() < v2_rows + 100 {
        assert!(
            Instant::now() < deadline,
            "v2 stopped after the refusal:\n{}",
            host_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    plugin.restore_component();
    plugin.good(4);
    wait_for_events(&store, "v4 live", |e| {
        has(e, PluginEventKind::Live, "4.0.0+")
    })
    .await;
    settle(&store, "v4").await;

    stop.store(true, Ordering::Relaxed);
    let published = load.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows(&store).await.len() < published.len() {
        assert!(Instant::now() < deadline, "not caught up:\n{}", host_log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The same host did all of it.
    assert!(!run.is_finished(), "the host exited");
    host_stop.request();
    let summary = run.await.unwrap().unwrap();
    assert!(summary.failed.is_none(), "{:?}", summary.failed);

    // Every published change is processed exactly once (one row per id,
    // every id present).
    let rows = rows(&store).await;
    let ids: HashSet<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(rows.len(), published.len());
    assert_eq!(ids, published.iter().map(String::as_str).collect());

    // Switch points: v1 from the start, then v2 and v4 at the positions
    // their 'live' events recorded; v3 never went live.
    let events = store.plugin_events("tagged").await.unwrap();
    let live: Vec<(String, BTreeMap<_, u64>)> = events
        .iter()
        .filter(|e| e.event == PluginEventKind::Live)
        .map(|e| {
            let major = e.version.as_deref().unwrap().split('.').next().unwrap();
            (format!("v{major}"), e.positions.clone())
        })
        .collect();
    let order: Vec<&str> = live.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(order, ["v1", "v2", "v4"], "{events:#?}");

    // Each row's version is the one live at its offset, so every chunk was
    // processed by one version and the switches fell between chunks.
    let mut per_tag: HashMap<&str, usize> = HashMap::new();
    for (id, tag, partition, offset) in &rows {
        let tp = pillowtop::feed::TopicPartition::new("load", *partition);
        let expected = live
            .iter()
            .rev()
            .find(|(_, pos)| pos.get(&tp).copied().unwrap_or(0) <= *offset)
            .map(|(t, _)| t.as_str())
            .unwrap();
        assert_eq!(tag, expected, "{id} at {tp}@{offset}; switches {live:?}");
        *per_tag.entry(tag.as_str()).or_default() += 1;
    }
    for tag in ["v1", "v2", "v4"] {
        assert!(per_tag.get(tag).copied().unwrap_or(0) >= 100, "{per_tag:?}");
    }
    assert!(!per_tag.contains_key("v3"));
    // Two swaps, while changes kept arriving (not at the start or end):
    // v1 went live at the start, v2 and v4 at chunk boundaries.
    assert_eq!(live.len() - 1, 2, "{live:?}");
}

/// Reload on request: `pillowtop plugin reload` through the admin endpoint
/// and SIGHUP, with file watching off; status and metrics tell the live and
/// the refused version.
#[tokio::test(flavor = "multi_thread")]
async fn reload_on_request_by_cli_and_sighup_with_status_and_metrics() {
    let Host {
        dir,
        plugin,
        config,
        store,
        mut child,
    } = Host::start(false, 2).await;
    let host_log = || std::fs::read_to_string(dir.path().join("host.log")).unwrap_or_default();
    wait_for_events(&store, "v1 live", |e| {
        has(e, PluginEventKind::Live, "1.0.0+")
    })
    .await;
    let cli = |args: &[&str]| {
        let mut all = vec!["--config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        bin().args(all).output().unwrap()
    };

    // Watching is off: a new version waits for a request.
    plugin.good(2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!has(
        &store.plugin_events("tagged").await.unwrap(),
        PluginEventKind::Live,
        "2.0.0+"
    ));
    let out = cli(&["plugin", "reload", "tagger"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("tagger: 2.0.0+") && stdout.contains("is live"),
        "{stdout}"
    );
    wait_for_events(&store, "v2 live", |e| {
        has(e, PluginEventKind::Live, "2.0.0+")
    })
    .await;

    // A version failing its fixtures, by SIGHUP.
    plugin.write(3, "v3", "not-v3", "");
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let events = wait_for_events(&store, "v3 refused", |e| {
        has(e, PluginEventKind::Refused, "3.0.0+")
    })
    .await;
    let reason = events.last().unwrap().reason.clone().unwrap();
    assert!(reason.contains("golden fixtures fail"), "{reason}");

    // The CLI says so too, and fails.
    let out = cli(&["plugin", "reload", "tagger"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("refused 3.0.0+") && stdout.contains("keeps running"),
        "{stdout}"
    );
    let out = cli(&["plugin", "reload", "nope"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no plugin named \"nope\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Status: v2 live in process 0, v3 refused with the reason.
    let out = cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &status["pillows"][0]["plugins"][0];
    assert!(
        p["live"][0][1].as_str().unwrap().starts_with("2.0.0+"),
        "{p}"
    );
    assert!(p["on_disk"].as_str().unwrap().starts_with("3.0.0+"), "{p}");
    assert!(
        p["refused"]["reason"]
            .as_str()
            .unwrap()
            .contains("golden fixtures fail"),
        "{p}"
    );
    assert_eq!(status["pillows"][0]["processes"][0]["state"], "running");
    let text = String::from_utf8_lossy(&cli(&["status"]).stdout).to_string();
    assert!(text.contains("REFUSED 3.0.0+"), "{text}");

    // Metrics: the live version and the refusal.
    let url = store.processes().await.unwrap()[0]
        .admin_url
        .clone()
        .unwrap();
    let metrics = pillowtop::admin::Client::default()
        .get(&url, "/metrics")
        .await
        .unwrap();
    let v2 = p["live"][0][1].as_str().unwrap();
    assert!(
        metrics.contains(&format!(
            "pillowtop_plugin_info{{plugin=\"tagger\",version=\"{v2}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("pillowtop_plugin_refused{plugin=\"tagger\"} 1"),
        "{metrics}"
    );

    sigterm(&child);
    assert!(child.wait().unwrap().success(), "{}", host_log());
}
