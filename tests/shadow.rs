//! Shadow versions: a candidate runs beside the live version under load,
//! its actions compared and never written; promote and rollback switch at
//! chunk boundaries in a host that never restarts.

use crate::tagged::*;
use pillowtop::admin;
use pillowtop::feed::TopicPartition;
use pillowtop::feed::embedded::EmbeddedFeed;
use pillowtop::reload::{Deploy, DeployOutcome};
use pillowtop::shadow::Tally;
use pillowtop::store::{PluginEventKind, Store};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The case types the load cycles through; v2 differs on the first only.
const SUBTYPES: [&str; 3] = ["household", "patient", "visit"];

/// Case `n` (of subtype `SUBTYPES[n % 3]`) as a feed message; its id and
/// subtype go to `published`.
fn typed_case(n: usize, published: &mut Vec<(String, &'static str)>) -> (Option<Vec<u8>>, Vec<u8>) {
    let id = format!("doc-{n}");
    let subtype = SUBTYPES[n % SUBTYPES.len()];
    let line = serde_json::json!({"document_id": id, "document_type": "CommCareCase",
        "document_subtype": subtype, "domain": "x", "document": {"n": n}});
    published.push((id.clone(), subtype));
    (Some(id.into_bytes()), line.to_string().into_bytes())
}

/// Publishes small batches of cases of [`SUBTYPES`] in turn to topic
/// `load` until stopped; returns (id, subtype) of each.
fn start_typed_load(
    feed: EmbeddedFeed,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(String, &'static str)>> {
    tokio::spawn(async move {
        let mut published = Vec::new();
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let batch: Vec<_> = (0..15)
                .map(|_| {
                    n += 1;
                    typed_case(n, &mut published)
                })
                .collect();
            feed.publish("load", batch).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        published
    })
}

/// Wait (up to 60 s) until `done` holds of the store.
async fn wait_until<F>(store: &Store, what: &str, done: F)
where
    F: AsyncFn(&Store) -> bool,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(store).await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The candidate's counts over every process.
async fn tally_of(store: &Store, candidate: &str) -> Tally {
    let mut total = Tally::default();
    for r in store.shadow_runs(Some("tagger")).await.unwrap() {
        if r.candidate_version == candidate {
            total.add(&r.tally);
        }
    }
    total
}

/// The `tagged` rows written with `tag`.
async fn tagged(store: &Store, tag: &str) -> usize {
    rows(store).await.iter().filter(|r| r.1 == tag).count()
}

async fn deploy(store: &Store, command: Deploy) -> DeployOutcome {
    let mut answers = admin::Client::default()
        .deploy_running(store, "tagger", &command)
        .await
        .unwrap();
    assert_eq!(answers.len(), 1, "one host process: {answers:?}");
    let (_, mut outcomes) = answers.pop().unwrap();
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    outcomes.pop().unwrap()
}

/// Live v1; candidate v2 differs only for case type `household`, beside
/// it under continuous load on 4 partitions; then promoted; then rolled
/// back.
#[tokio::test(flavor = "multi_thread")]
async fn a_candidate_is_compared_under_load_then_promoted_and_rolled_back() {
    let InProcessHost {
        _dir,
        plugin,
        feed,
        store,
        stop: host_stop,
        run,
    } = InProcessHost::start_with(Setup::with(false, 4, "shadow_diffs = 30").await);
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_typed_load(feed.clone(), stop.clone());
    wait_until(&store, "v1 writing", async |s| tagged(s, "v1").await >= 100).await;

    // v2: the same component; `household` cases tagged v2. Its fixture
    // (a change without a subtype) passes.
    let root = plugin.dir.parent().unwrap().to_owned();
    let candidate = TaggerPlugin::in_dir(&root, "candidate");
    candidate.write(2, "v1", "v1", "subtype_tags = { household = \"v2\" }");
    let shadowing = deploy(
        &store,
        Deploy::Shadow {
            manifest: candidate.manifest(),
        },
    )
    .await;
    let DeployOutcome::Shadowing { version: v2, .. } = shadowing else {
        panic!("expected the candidate to run: {shadowing:?}");
    };
    assert!(v2.starts_with("2.0.0+"), "{v2}");
    wait_until(&store, "the candidate to differ 60 times", async |s| {
        tally_of(s, &v2).await.differ >= 60
    })
    .await;

    // While it runs: status and metrics show it.
    let config = pillowtop::config::HostConfig::load(&_dir.path().join("pillowtop.toml")).unwrap();
    let gathered = pillowtop::status::gather(
        &[&config.pillows[0]],
        &pillowtop::feed::Feed::Embedded(feed.clone()),
        &store,
        config.runtime.max_component_bytes(),
    )
    .await
    .unwrap();
    let status = &gathered.pillows[0];
    let shadows = &status.plugins[0].shadows;
    assert_eq!(shadows.len(), 1, "{status:?}");
    assert_eq!(shadows[0].version, v2);
    assert!(
        shadows[0].tally.differ >= 60 && shadows[0].tally.agree >= 120,
        "{shadows:?}"
    );
    let text = pillowtop::status::render(&gathered);
    assert!(text.contains(&format!("SHADOW {v2}")), "{text}");
    let url = store.processes().await.unwrap()[0]
        .admin_url
        .clone()
        .unwrap();
    let metrics = admin::Client::default()
        .get(&url, "/metrics")
        .await
        .unwrap();
    assert!(
        metric(
            &metrics,
            "pillowtop_shadow_changes_total",
            &[("outcome", "differ")]
        ) >= 60.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "pillowtop_plugin_shadow_info",
            &[("version", &v2)]
        ),
        1.0
    );
    // Nothing of v2's reached the sink.
    assert_eq!(tagged(&store, "v2").await, 0);

    let promoted = deploy(&store, Deploy::Promote).await;
    assert!(
        matches!(promoted, DeployOutcome::Switched { ref version, .. } if *version == v2),
        "{promoted:?}"
    );
    wait_until(&store, "v2 writing", async |s| tagged(s, "v2").await >= 40).await;

    let rolled_back = deploy(&store, Deploy::Rollback).await;
    assert!(
        matches!(rolled_back, DeployOutcome::Switched { ref version, .. } if version.starts_with("1.0.0+")),
        "{rolled_back:?}"
    );
    let v2_rows = tagged(&store, "v2").await;
    wait_until(&store, "v1 writing again", async |s| {
        let events = s.plugin_events("tagged").await.unwrap();
        let back = events
            .iter()
            .filter(|e| e.event == PluginEventKind::Live)
            .count()
            == 3;
        back && rows(s).await.len() >= v2_rows * 3 + 300
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    let published = load.await.unwrap();
    wait_until(&store, "catching up", async |s| {
        rows(s).await.len() >= published.len()
    })
    .await;
    let metrics = admin::Client::default()
        .get(&url, "/metrics")
        .await
        .unwrap();
    // The same host did all of it.
    assert!(!run.is_finished(), "the host exited");
    host_stop.request();
    let summary = run.await.unwrap().unwrap();
    assert!(summary.failed.is_none(), "{:?}", summary.failed);

    // Every change written exactly once: one row per id.
    let rows = rows(&store).await;
    assert_eq!(rows.len(), published.len());
    let ids: HashSet<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(ids.len(), published.len());
    // ... and processed by exactly one live version: the live calls that
    // passed, over both versions, are the changes.
    let live_ok = metric(&metrics, "pillowtop_changes_total", &[("outcome", "ok")]);
    assert_eq!(live_ok, published.len() as f64, "{metrics}");

    // The switch points: v1 from the start, v2 where it was promoted, v1
    // where it was rolled back; the candidate ran from its 'shadow' event
    // to its 'shadow_ended' event (the promotion).
    let events = store.plugin_events("tagged").await.unwrap();
    let at = |kind: PluginEventKind, nth: usize| -> BTreeMap<TopicPartition, u64> {
        events
            .iter()
            .filter(|e| e.event == kind)
            .nth(nth)
            .unwrap_or_else(|| panic!("no {kind:?} event #{nth}: {events:#?}"))
            .positions
            .clone()
    };
    let live: Vec<(&str, Option<&str>)> = events
        .iter()
        .filter(|e| e.event == PluginEventKind::Live)
        .map(|e| (&e.version.as_deref().unwrap()[..5], e.reason.as_deref()))
        .collect();
    assert_eq!(
        live,
        [
            ("1.0.0", None),
            ("2.0.0", Some("promoted from shadow")),
            ("1.0.0", Some("rolled back to the previous version"))
        ],
        "{events:#?}"
    );
    let shadow_from = at(PluginEventKind::Shadow, 0);
    let shadow_to = at(PluginEventKind::ShadowEnded, 0);
    let promoted_at = at(PluginEventKind::Live, 1);
    let rolled_back_at = at(PluginEventKind::Live, 2);
    assert_eq!(
        shadow_to, promoted_at,
        "the candidate ended where it went live"
    );
    let pos =
        |m: &BTreeMap<TopicPartition, u64>, tp: &TopicPartition| m.get(tp).copied().unwrap_or(0);

    // The counts are exactly the changes the candidate saw: every
    // household case differs, every other case agrees.
    let subtype: HashMap<&str, &str> = published.iter().map(|(id, t)| (id.as_str(), *t)).collect();
    let mut expected = Tally::default();
    for (id, tag, partition, offset) in &rows {
        let tp = TopicPartition::new("load", *partition);
        let household = subtype[id.as_str()] == "household";
        if (pos(&shadow_from, &tp)..pos(&shadow_to, &tp)).contains(offset) {
            if household {
                expected.differ += 1;
            } else {
                expected.agree += 1;
            }
        }
        // Each row was written by the version live at its offset.
        let v2_live = (pos(&promoted_at, &tp)..pos(&rolled_back_at, &tp)).contains(offset);
        let want = if v2_live && household { "v2" } else { "v1" };
        assert_eq!(
            tag,
            want,
            "{id} ({}) at {tp}@{offset}",
            subtype[id.as_str()]
        );
    }
    let got = tally_of(&store, &v2).await;
    assert_eq!(
        (got.agree, got.differ, got.failures()),
        (expected.agree, expected.differ, 0)
    );
    assert!(
        got.differ >= 60 && got.live_fuel > 0 && got.candidate_fuel > 0,
        "{got:?}"
    );
    assert!(tagged(&store, "v2").await >= 40);

    // The first 30 differences are kept, each a household case whose row
    // the candidate would have tagged v2.
    let diffs = store.shadow_diffs("tagger", &v2).await.unwrap();
    assert_eq!(diffs.len(), 30);
    for d in &diffs {
        assert_eq!(subtype[d.diff.doc_id.as_str()], "household", "{d:?}");
        assert_eq!(
            d.diff.diff,
            [r#"[0].upsert_rows.rows[0][1]: "v1" -> "v2""#],
            "{d:?}"
        );
        assert_eq!(d.diff.live[0]["upsert_rows"]["rows"][0][1], "v1");
    }
}

/// The value of the series of `name` whose labels include `labels`,
/// summed over the rest (0 when none).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Publish `n` cases of [`SUBTYPES`] in turn; (id, subtype) of each.
async fn publish_typed(feed: &EmbeddedFeed, n: usize) -> Vec<(String, &'static str)> {
    let mut published = Vec::new();
    let batch: Vec<_> = (1..=n).map(|i| typed_case(i, &mut published)).collect();
    feed.publish("load", batch).await.unwrap();
    published
}

/// Run the `pillowtop` binary on the setup's config; (exit ok, stdout
/// JSON lines, stderr).
fn cli(dir: &std::path::Path, args: &[&str]) -> (bool, Vec<serde_json::Value>, String) {
    let out = crate::support::bin()
        .arg("--config")
        .arg(dir.join("pillowtop.toml"))
        .args(args)
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        out.status.success(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `replay` runs the pillow's version over a range and prints the
/// actions; `--diff` and `plugin check --against-feed` compare a
/// candidate; nothing is written anywhere.
#[tokio::test(flavor = "multi_thread")]
async fn replay_prints_a_range_and_compares_a_candidate_without_writing() {
    let setup = Setup::with(false, 4, "").await;
    let dir = setup.dir.path().to_owned();
    let published = publish_typed(&setup.feed, 60).await;

    // Everything, by the pillow's own version.
    let (ok, lines, err) = cli(&dir, &["replay", "--pillow", "tagged", "--json"]);
    assert!(ok, "{err}");
    let changes: Vec<&serde_json::Value> = lines.iter().filter(|l| l["type"] == "change").collect();
    assert_eq!(changes.len(), 60, "{lines:?}");
    let ids: HashSet<&str> = changes
        .iter()
        .map(|c| c["doc_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 60);
    for c in &changes {
        let row = &c["result"][0]["upsert_rows"]["rows"][0];
        assert_eq!(row[0], c["doc_id"]);
        assert_eq!(row[1], "v1");
        assert_eq!(
            (row[3].as_u64(), row[4].as_u64()),
            (c["partition"].as_u64(), c["offset"].as_u64())
        );
        assert!(c["version"].as_str().unwrap().starts_with("1.0.0+"));
    }
    let summary = &lines.last().unwrap()["summary"];
    assert_eq!(summary["changes"], 60);

    // One partition, offsets [2, 5).
    let (ok, lines, err) = cli(
        &dir,
        &[
            "replay",
            "--pillow",
            "tagged",
            "--partition",
            "load:1",
            "--from",
            "2",
            "--to",
            "5",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let offsets: Vec<(u64, u64)> = lines
        .iter()
        .filter(|l| l["type"] == "change")
        .map(|l| {
            (
                l["partition"].as_u64().unwrap(),
                l["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(offsets, [(1, 2), (1, 3), (1, 4)]);
    let (ok, _, err) = cli(
        &dir,
        &["replay", "--pillow", "tagged", "--partition", "load:9"],
    );
    assert!(!ok && err.contains("does not read load:9"), "{err}");

    // A candidate that tags households v2: exactly the households differ.
    let candidate = TaggerPlugin::in_dir(&dir, "candidate");
    candidate.write(2, "v1", "v1", "subtype_tags = { household = \"v2\" }");
    let manifest = candidate.manifest();
    let manifest = manifest.to_str().unwrap();
    let (ok, lines, err) = cli(
        &dir,
        &[
            "replay", "--pillow", "tagged", "--plugin", manifest, "--diff", "--json",
        ],
    );
    assert!(!ok, "differences make it fail: {err}");
    let differing: HashSet<&str> = lines
        .iter()
        .filter(|l| l["type"] == "difference")
        .map(|l| l["doc_id"].as_str().unwrap())
        .collect();
    let households: HashSet<&str> = published
        .iter()
        .filter(|(_, t)| *t == "household")
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(differing, households);
    let tally = &lines.last().unwrap()["summary"]["tally"];
    assert_eq!(
        (tally["differ"].as_u64(), tally["agree"].as_u64()),
        (Some(20), Some(40)),
        "{tally}"
    );

    // The deploy gate: the last 5 changes of each partition.
    let cache = crate::support::cache_dir().display().to_string();
    let (ok, _, err) = cli(
        &dir,
        &[
            "plugin",
            "check",
            manifest,
            "--compile-cache",
            &cache,
            "--against-feed",
            "tagged",
            "--last",
            "5",
        ],
    );
    assert!(!ok && err.contains("the candidate differs on"), "{err}");
    let same = TaggerPlugin::in_dir(&dir, "same");
    same.write(3, "v1", "v1", "");
    let (ok, _, err) = cli(
        &dir,
        &[
            "plugin",
            "check",
            same.manifest().to_str().unwrap(),
            "--compile-cache",
            &cache,
            "--against-feed",
            "tagged",
            "--last",
            "5",
        ],
    );
    assert!(ok, "an equal candidate passes: {err}");
    assert!(err.contains("compared 20: 20 agree, 0 differ"), "{err}");

    // Read-only: no checkpoint, no error, no row table.
    let store = &setup.store;
    assert!(store.checkpoints("tagged").await.unwrap().is_empty());
    assert!(rows(store).await.is_empty());
    let errors: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pillow_errors")
        .fetch_one(store.sqlite().unwrap())
        .await
        .unwrap();
    assert_eq!(errors, 0);
}

/// `[reload] shadow = true` with `promote_after = 100`: a version written
/// over the live one's files runs as a candidate first; one that writes
/// the same rows is promoted by the policy, one that differs stays a
/// candidate and never writes.
#[tokio::test(flavor = "multi_thread")]
async fn a_watched_candidate_that_agrees_is_promoted_by_the_policy_and_one_that_differs_is_not() {
    let InProcessHost {
        _dir,
        plugin,
        feed,
        store,
        stop: host_stop,
        run,
    } = InProcessHost::start_with(Setup::with(true, 4, "shadow = true\npromote_after = 100").await);
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_typed_load(feed.clone(), stop.clone());
    wait_until(&store, "v1 writing", async |s| tagged(s, "v1").await >= 100).await;

    // v2 writes what v1 writes: shadowed, then promoted by the policy.
    plugin.write(2, "v1", "v1", "");
    let events = wait_for_events(&store, "v2 promoted", |e| {
        has(e, PluginEventKind::Live, "2.0.0")
    })
    .await;
    assert!(
        has(&events, PluginEventKind::Shadow, "2.0.0"),
        "v2 ran as a candidate first: {events:#?}"
    );
    let promoted = first(&events, PluginEventKind::Live, "2.0.0").unwrap();
    assert_eq!(promoted.reason.as_deref(), Some("promoted from shadow"));
    let v2 = promoted.version.clone().unwrap();
    let before = tally_of(&store, &v2).await;
    assert!(
        before.agree >= 100 && before.differ == 0 && before.failures() == 0,
        "{before:?}"
    );

    // v3 tags everything v3: it differs on every change and stays a
    // candidate however many it sees.
    plugin.write(3, "v3", "v3", "");
    let events = wait_for_events(&store, "v3 shadowed", |e| {
        has(e, PluginEventKind::Shadow, "3.0.0")
    })
    .await;
    let v3 = first(&events, PluginEventKind::Shadow, "3.0.0")
        .and_then(|e| e.version.clone())
        .unwrap();
    wait_until(&store, "v3 to differ 300 times", async |s| {
        tally_of(s, &v3).await.differ >= 300
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    let published = load.await.unwrap();
    wait_until(&store, "catching up", async |s| {
        rows(s).await.len() >= published.len()
    })
    .await;
    assert!(!run.is_finished(), "the host exited");
    host_stop.request();
    let summary = run.await.unwrap().unwrap();
    assert!(summary.failed.is_none(), "{:?}", summary.failed);

    let events = store.plugin_events("tagged").await.unwrap();
    let live: Vec<(&str, Option<&str>)> = events
        .iter()
        .filter(|e| e.event == PluginEventKind::Live)
        .map(|e| (&e.version.as_deref().unwrap()[..5], e.reason.as_deref()))
        .collect();
    assert_eq!(
        live,
        [("1.0.0", None), ("2.0.0", Some("promoted from shadow"))],
        "v3 never went live: {events:#?}"
    );
    let v3_tally = tally_of(&store, &v3).await;
    assert_eq!(v3_tally.agree, 0, "{v3_tally:?}");
    // Every row written once, by v1 or v2, and none by the candidate.
    let rows = rows(&store).await;
    assert_eq!(rows.len(), published.len());
    assert!(rows.iter().all(|r| r.1 == "v1"), "a row not tagged v1");
}
