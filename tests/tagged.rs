//! A host running pillow `tagged` over topic `load` with the tagger test
//! plugin (each change becomes a row saying which version wrote it): the
//! setup the hot-reload and shadow tests share.

use crate::support::*;
use pillowtop::feed::embedded::EmbeddedFeed;
use pillowtop::store::{PluginEvent, PluginEventKind, Store};
use sqlx::Row;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A tagger plugin in its own directory, rewritable version by version.
pub(crate) struct TaggerPlugin {
    pub(crate) dir: PathBuf,
}

impl TaggerPlugin {
    pub(crate) fn new(root: &Path) -> TaggerPlugin {
        TaggerPlugin::in_dir(root, "tagger")
    }

    /// In directory `name` of `root` (a second copy: a candidate's files).
    pub(crate) fn in_dir(root: &Path, name: &str) -> TaggerPlugin {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("fixtures")).unwrap();
        let p = TaggerPlugin { dir };
        p.restore_component();
        p
    }

    pub(crate) fn manifest(&self) -> PathBuf {
        self.dir.join("plugin.toml")
    }

    pub(crate) fn component(&self) -> PathBuf {
        self.dir.join("tagger.wasm")
    }

    pub(crate) fn restore_component(&self) {
        std::fs::copy(
            component("plugins/testing/tagger/tagger.wasm"),
            self.component(),
        )
        .unwrap();
    }

    /// Write version `n` tagging rows `tag`, with a fixture that expects
    /// `fixture_tag` (the fixture file first, then the manifest: the
    /// watcher must not load the pair half-written).
    pub(crate) fn write(&self, n: u32, tag: &str, fixture_tag: &str, extra_config: &str) {
        let fixture = serde_json::json!({
            "description": "each change becomes one row tagged with the version",
            "topic": "load", "partition": 1, "offset": 7,
            "change": {"document_id": "d1", "document_type": "CommCareCase", "domain": "x", "document": {}},
            "expect": [{"upsert_rows": {"table": "tagged", "rows": [["d1", fixture_tag, "load", 1, 7, 0]]}}]
        });
        std::fs::write(
            self.dir.join("fixtures/01-row.json"),
            serde_json::to_string_pretty(&fixture).unwrap(),
        )
        .unwrap();
        std::fs::write(
            self.manifest(),
            format!(
                "name = \"tagger\"\nversion = \"{n}.0.0\"\ncomponent = \"tagger.wasm\"\nfixtures = \"fixtures\"\n\
                 [limits]\nfuel = 1_000_000\nmemory_mb = 16\ntimeout_ms = 1000\n\
                 [capabilities]\ntables = [\"tagged\"]\n[config]\ntag = \"{tag}\"\n{extra_config}"
            ),
        )
        .unwrap();
    }

    /// Version `n` in good order: tag `v{n}`, matching fixture.
    pub(crate) fn good(&self, n: u32) {
        let tag = format!("v{n}");
        self.write(n, &tag, &tag, "");
    }
}

pub(crate) fn write_config(
    dir: &Path,
    manifest: &Path,
    watch: bool,
    reload_extra: &str,
) -> PathBuf {
    let path = dir.join("pillowtop.toml");
    let text = format!(
        "[feed]\ntype = \"embedded\"\npath = \"feed.db\"\n[store]\nurl = \"sqlite://store.db\"\n\
         [runtime]\ncompile_cache_dir = {:?}\n[reload]\nwatch = {watch}\npoll_interval_ms = 50\n{reload_extra}\n\
         [[pillows]]\nname = \"tagged\"\ntopics = [\"load\"]\nprocessors = [{manifest:?}]\nchunk_size = 40\nmax_wait_ms = 20\n",
        cache_dir()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Wait (up to 60 s; it takes well under a second when things work) for
/// the pillow's plugin events to satisfy `done`.
pub(crate) async fn wait_for_events(
    store: &Store,
    what: &str,
    done: impl Fn(&[PluginEvent]) -> bool,
) -> Vec<PluginEvent> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = store.plugin_events("tagged").await.unwrap();
        if done(&events) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; events so far: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn has(events: &[PluginEvent], kind: PluginEventKind, version_prefix: &str) -> bool {
    first(events, kind, version_prefix).is_some()
}

/// The first event of `kind` for a version starting with `version_prefix`.
pub(crate) fn first<'a>(
    events: &'a [PluginEvent],
    kind: PluginEventKind,
    version_prefix: &str,
) -> Option<&'a PluginEvent> {
    events.iter().find(|e| {
        e.event == kind
            && e.version
                .as_deref()
                .is_some_and(|v| v.starts_with(version_prefix))
    })
}

pub(crate) async fn rows(store: &Store) -> Vec<(String, String, u32, u64)> {
    let exists: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'tagged'",
    )
    .fetch_one(store.sqlite().unwrap())
    .await
    .unwrap();
    if exists == 0 {
        return vec![];
    }
    sqlx::query(r#"SELECT doc_id, tag, "partition", "offset" FROM tagged"#)
        .fetch_all(store.sqlite().unwrap())
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get::<i64, _>(2) as u32,
                r.get::<i64, _>(3) as u64,
            )
        })
        .collect()
}

/// Publishes small batches to topic `load` until stopped; returns the ids.
pub(crate) fn start_load(
    feed: EmbeddedFeed,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut ids = Vec::new();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let batch: Vec<_> = (0..15)
                .map(|_| {
                    n += 1;
                    let id = format!("doc-{n}");
                    let line = serde_json::json!({"document_id": id, "document_type": "CommCareCase", "domain": "x", "document": {"n": n}});
                    ids.push(id.clone());
                    (Some(id.into_bytes()), line.to_string().into_bytes())
                })
                .collect();
            feed.publish("load", batch).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ids
    })
}

/// The files of a host running pillow `tagged` (topic `load`, created
/// with `partitions`) with the tagger plugin at v1, its feed and its store.
pub(crate) struct Setup {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) plugin: TaggerPlugin,
    pub(crate) config: PathBuf,
    pub(crate) feed: EmbeddedFeed,
    pub(crate) store: Store,
}

impl Setup {
    pub(crate) async fn new(watch: bool, partitions: u32) -> Setup {
        Setup::with(watch, partitions, "").await
    }

    /// With more `[reload]` settings.
    pub(crate) async fn with(watch: bool, partitions: u32, reload_extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let plugin = TaggerPlugin::new(dir.path());
        plugin.good(1);
        let config = write_config(dir.path(), &plugin.manifest(), watch, reload_extra);
        let feed = EmbeddedFeed::open(&dir.path().join("feed.db"))
            .await
            .unwrap();
        feed.create_topic("load", Some(partitions)).await.unwrap();
        let store = Store::open(&dir.path().join("store.db")).await.unwrap();
        Setup {
            dir,
            plugin,
            config,
            feed,
            store,
        }
    }
}

/// A host of a [`Setup`] run in this process (`pillowtop::process::run`).
pub(crate) struct InProcessHost {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) plugin: TaggerPlugin,
    pub(crate) feed: EmbeddedFeed,
    pub(crate) store: Store,
    pub(crate) stop: pillowtop::process::Stop,
    pub(crate) run: tokio::task::JoinHandle<
        Result<pillowtop::process::ProcessSummary, pillowtop::process::ProcessError>,
    >,
}

impl InProcessHost {
    pub(crate) async fn start(watch: bool, partitions: u32) -> InProcessHost {
        InProcessHost::start_with(Setup::new(watch, partitions).await)
    }

    /// The host of `setup`.
    pub(crate) fn start_with(setup: Setup) -> InProcessHost {
        let Setup {
            dir,
            plugin,
            config,
            feed,
            store,
        } = setup;
        let config = pillowtop::config::HostConfig::load(&config).unwrap();
        let stop = pillowtop::process::Stop::new();
        let run = {
            let stop = stop.clone();
            tokio::spawn(async move {
                pillowtop::process::run(&config, Default::default(), &stop).await
            })
        };
        InProcessHost {
            _dir: dir,
            plugin,
            feed,
            store,
            stop,
            run,
        }
    }
}
