//! Firefighting, end to end: the whole host run in this process through an
//! Elasticsearch outage, watched the way an operator would — `/metrics`
//! parsed with a Prometheus text-format parser, `/status` and `pillowtop
//! status`, `/healthz`, and the page rendered by a real headless Chromium
//! — and the admin endpoint's token when it listens off loopback.

use crate::elastic::{es_proxy, patients};
use crate::support::*;
use pillowtop::admin::Client;
use pillowtop::feed::embedded::EmbeddedFeed;
use prometheus_parse::{Scrape, Value as Sample};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A host started in this process from `pillowtop.toml` in `dir`.
struct Host {
    dir: tempfile::TempDir,
    admin: String,
    feed: EmbeddedFeed,
    stop: pillowtop::process::Stop,
    run: tokio::task::JoinHandle<
        Result<pillowtop::process::ProcessSummary, pillowtop::process::ProcessError>,
    >,
}

impl Host {
    /// Write `config` (with `ADMIN` replaced by `listen`, an `IP:PORT`)
    /// and start it; returns once `/healthz` answers on loopback.
    async fn start(config: &str, listen: &str) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pillowtop.toml");
        std::fs::write(&path, config.replace("ADMIN", listen)).unwrap();
        let feed = EmbeddedFeed::open(&dir.path().join("feed.db"))
            .await
            .unwrap();
        feed.create_topic("case-sql", Some(2)).await.unwrap();
        let config = pillowtop::config::HostConfig::load(&path).unwrap();
        let stop = pillowtop::process::Stop::new();
        let run = {
            let stop = stop.clone();
            tokio::spawn(async move {
                pillowtop::process::run(&config, Default::default(), &stop).await
            })
        };
        let port = listen.rsplit(':').next().unwrap();
        let admin = format!("http://127.0.0.1:{port}");
        wait_for("the admin endpoint", async || {
            Client::default().get(&admin, "/healthz").await.is_ok()
        })
        .await;
        Host {
            dir,
            admin,
            feed,
            stop,
            run,
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("pillowtop.toml")
    }

    async fn publish(&self, lines: &[String]) {
        let messages = lines
            .iter()
            .map(|l| {
                let id = serde_json::from_str::<Value>(l).unwrap()["document_id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                (Some(id.into_bytes()), l.clone().into_bytes())
            })
            .collect();
        self.feed.publish("case-sql", messages).await.unwrap();
    }

    async fn stop(self) -> pillowtop::process::ProcessSummary {
        self.stop.request();
        let summary = self.run.await.unwrap().unwrap();
        assert!(summary.failed.is_none(), "{:?}", summary.failed);
        summary
    }
}

/// Poll `done` every 50 ms, for 60 s at most.
async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/metrics`, parsed.
async fn scrape(admin: &str) -> Scrape {
    let text = Client::default().get(admin, "/metrics").await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The values of every sample of `metric` (a counter or gauge) whose
/// labels include `labels`.
fn values(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .filter_map(|s| match s.value {
            Sample::Gauge(v) | Sample::Counter(v) | Sample::Untyped(v) => Some(v),
            _ => None,
        })
        .collect()
}

fn one(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let v = values(scrape, metric, labels);
    assert_eq!(v.len(), 1, "{metric}{labels:?}: {v:?}");
    v[0]
}

/// Observations in a histogram's series whose labels include `labels`.
fn histogram_count(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let infinite: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .filter_map(|s| match &s.value {
            Sample::Histogram(buckets) => buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map(|b| b.count),
            _ => None,
        })
        .sum();
    let count: f64 = values(scrape, &format!("{metric}_count"), labels)
        .iter()
        .sum();
    assert_eq!(
        infinite, count,
        "{metric}: the +Inf bucket holds every observation"
    );
    count
}

/// `GET /status` as JSON.
async fn status(admin: &str, client: &Client) -> Value {
    serde_json::from_str(&client.get(admin, "/status").await.unwrap()).unwrap()
}

/// Headless Chromium from Debian's package (`make services` installs it).
fn chromium() -> PathBuf {
    let path = PathBuf::from(
        std::env::var("PILLOWTOP_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    assert!(
        path.exists(),
        "no Chromium at {}: run `make services` (make test does), or set PILLOWTOP_CHROMIUM",
        path.display()
    );
    path
}

/// Load `url` in headless Chromium, let its scripts run for a few
/// (virtual) seconds, and return the DOM; with `screenshot`, also save a
/// PNG of the page there.
fn browse(url: &str, screenshot: Option<&Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(chromium());
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1360,900",
        "--virtual-time-budget=5000",
    ]);
    command.arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(path) => command.arg(format!("--screenshot={}", path.display())),
        None => command.arg("--dump-dom"),
    };
    let out = command.arg(url).output().unwrap();
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An attribute of the first element that has `marker` in its tag.
fn attribute(dom: &str, marker: &str, name: &str) -> String {
    let at = dom
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} not in the page:\n{dom}"));
    let tag_end = at + dom[at..].find('>').unwrap();
    let tag_start = dom[..at].rfind('<').unwrap();
    let tag = &dom[tag_start..tag_end];
    let key = format!("{name}=\"");
    let from = tag
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {tag}"))
        + key.len();
    tag[from..from + tag[from..].find('"').unwrap()].to_owned()
}

/// The pillow's section of the page: need-processing, max lag and sinks.
fn page_figures(dom: &str, pillow: &str) -> (u64, f64, String) {
    let marker = format!("data-pillow=\"{pillow}\"");
    (
        attribute(dom, &marker, "data-need-total").parse().unwrap(),
        attribute(dom, &marker, "data-lag-max").parse().unwrap(),
        attribute(dom, &marker, "data-sinks"),
    )
}

fn sum_partitions(status: &Value, field: &str) -> f64 {
    status["pillows"][0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[field].as_f64().unwrap_or(0.0))
        .sum()
}

/// With Elasticsearch cut off mid-run, every view says so while it lasts —
/// metrics (sink down and for how long, need-processing and lag above 0,
/// end offsets), `/healthz` (503 with the reason, past
/// `sink_down_seconds`), `/status` and `pillowtop status` (the waiting
/// process, need-processing from the positions processed), the page in
/// Chromium (the pillow, need and lag above 0, the sink down) — and once
/// it is back, everything drops to 0, health is ok, and every document is
/// in the index, each processed once (fuel histogram count) with every
/// stage timed.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_status_health_and_the_page_follow_a_run_through_a_sink_outage() {
    let (mut proxy, _through_proxy, observer) = es_proxy("observe").await;
    let prefix = observer.index_name("");
    let client = Client::default();
    let config = format!(
        "[feed]\ntype = \"embedded\"\npath = \"feed.db\"\n[store]\nurl = \"sqlite://store.db\"\n\
         [elasticsearch]\nurl = \"http://{}\"\nindex_prefix = {prefix:?}\n\
         [runtime]\ncompile_cache_dir = {:?}\n[admin]\nlisten_address = \"ADMIN\"\n\
         [admin.health]\nsink_down_seconds = 1\n[reload]\nwatch = false\n\
         [[pillows]]\nname = \"observe\"\ntopics = [\"case-sql\"]\nprocessors = [{:?}]\nchunk_size = 20\nmax_wait_ms = 20\ncheckpoint_every = 1\n",
        proxy.addr,
        cache_dir(),
        case_search_manifest()
    );
    let host = Host::start(&config, &format!("127.0.0.1:{}", free_port())).await;
    let admin = host.admin.clone();
    let pillow = [("pillow", "observe")];
    let es_down = [("pillow", "observe"), ("sink", "elasticsearch")];

    // Caught up on a first batch: nothing waits, no lag.
    let first = patients("a", 100);
    host.publish(&first).await;
    wait_for("the first batch", async || {
        let s = scrape(&admin).await;
        values(&s, "pillowtop_current_offset", &pillow)
            .iter()
            .sum::<f64>()
            == 100.0
            && values(&s, "pillowtop_need_processing", &pillow)
                .iter()
                .sum::<f64>()
                == 0.0
    })
    .await;

    // Elasticsearch goes away and changes keep coming.
    proxy.down().await;
    let second = patients("b", 200);
    host.publish(&second).await;
    let mut during = scrape(&admin).await;
    wait_for("the outage in the metrics", async || {
        during = scrape(&admin).await;
        values(&during, "pillowtop_sink_down", &es_down) == [1.0]
            && values(&during, "pillowtop_sink_down_seconds", &es_down)
                .first()
                .is_some_and(|s| *s >= 1.5)
            && values(&during, "pillowtop_change_lag_seconds", &pillow)
                .iter()
                .any(|l| *l >= 1.0)
    })
    .await;
    let retries = one(&during, "pillowtop_sink_retries_total", &es_down);
    assert!(retries >= 1.0, "{retries}");
    assert_eq!(
        values(&during, "pillowtop_current_offset", &pillow)
            .iter()
            .sum::<f64>(),
        300.0,
        "end offsets: every change published"
    );
    let need: f64 = values(&during, "pillowtop_need_processing", &pillow)
        .iter()
        .sum();
    assert!(need > 0.0 && need <= 200.0, "need-processing {need}");
    assert!(
        values(&during, "pillowtop_sink_down_since_seconds", &es_down)[0] > 1.7e9,
        "since: a Unix time"
    );

    // /healthz: unhealthy, saying why.
    let health = client
        .get(&admin, "/healthz")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        health.contains("503") && health.contains("unreachable for"),
        "{health}"
    );
    // /status: the process waits for Elasticsearch; need-processing counts
    // from the positions processed.
    let s = status(&admin, &client).await;
    let p = &s["pillows"][0];
    assert!(
        p["processes"][0]["waiting"]["sink"]
            .as_str()
            .unwrap()
            .contains("elasticsearch"),
        "{p:#}"
    );
    assert!(p["need_processing"].as_u64().unwrap() > 0, "{p:#}");
    assert!(
        p["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["processed"].as_u64().is_some()),
        "{p:#}"
    );
    // `pillowtop status` shows the same structure, from another process.
    let out = bin()
        .args([
            "--config",
            host.config_path().to_str().unwrap(),
            "status",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cli_pillow = &cli["pillows"][0];
    assert!(
        cli_pillow["need_processing"].as_u64().unwrap() > 0,
        "{cli:#}"
    );
    assert!(sum_partitions(&cli, "processed") >= sum_partitions(&cli, "checkpoint"));
    assert!(cli_pillow["processes"][0]["waiting"].is_object(), "{cli:#}");
    let text = bin()
        .args(["--config", host.config_path().to_str().unwrap(), "status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("WAITING for elasticsearch"), "{text}");
    assert!(text.contains("need-processing"), "{text}");

    // The page, in a real browser: the pillow, need and lag above 0, the
    // sink down.
    let dom = browse(&format!("{admin}/"), None);
    assert_eq!(attribute(&dom, "<body", "data-loaded"), "yes", "{dom}");
    let (need, lag, sinks) = page_figures(&dom, "observe");
    assert!(need > 0, "page need-processing {need}");
    assert!(lag > 0.0, "page lag {lag}");
    assert_eq!(sinks, "down");
    assert!(dom.contains("sink down"), "{dom}");
    let screenshot = std::env::var_os("PILLOWTOP_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| host.dir.path().join("page.png"));
    browse(&format!("{admin}/"), Some(&screenshot));
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    assert!(png.len() > 20_000, "a blank page? {} bytes", png.len());

    // Nothing landed while down; back up, everything drops to 0.
    assert_eq!(count_docs(&observer).await, 100, "nothing lands while down");
    proxy.up().await;
    let mut after = scrape(&admin).await;
    wait_for("catching up", async || {
        after = scrape(&admin).await;
        values(&after, "pillowtop_need_processing", &pillow) == [0.0, 0.0]
            && values(&after, "pillowtop_change_lag_seconds", &pillow) == [0.0, 0.0]
            && values(&after, "pillowtop_sink_down", &es_down) == [0.0]
    })
    .await;
    assert_eq!(one(&after, "pillowtop_sink_down_seconds", &es_down), 0.0);
    assert_eq!(
        one(&after, "pillowtop_sink_down_since_seconds", &es_down),
        0.0
    );
    let processor = [("pillow", "observe"), ("processor", "case-search")];
    assert_eq!(
        histogram_count(&after, "pillowtop_fuel_per_call", &processor),
        300.0,
        "one call per change"
    );
    for stage in ["decode", "transform", "load"] {
        let n = histogram_count(
            &after,
            "pillowtop_processor_seconds",
            &[("pillow", "observe"), ("stage", stage)],
        );
        assert!(n >= 1.0, "{stage}: {n}");
    }
    wait_for("healthy again", async || {
        client.get(&admin, "/healthz").await.is_ok()
    })
    .await;
    let dom = browse(&format!("{admin}/"), None);
    let (need, lag, sinks) = page_figures(&dom, "observe");
    assert_eq!(
        (need, lag, sinks.as_str()),
        (0, 0.0, "up"),
        "after catch-up"
    );
    assert_eq!(count_docs(&observer).await, 300);
    let summary = host.stop().await;
    assert_eq!(summary.pillows[0].messages, 300);
}

async fn count_docs(es: &pillowtop::sink::elastic::ElasticSink) -> u64 {
    es.refresh(CASE_SEARCH_INDEX).await.unwrap();
    es.count(CASE_SEARCH_INDEX).await.unwrap()
}

/// Bound off loopback, the endpoint refuses to start without a token, and
/// with one answers 401 (with a challenge) on every route but `/healthz`,
/// `/metrics` and the page; the CLI's client and the page (given
/// `#token=`) carry it.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_endpoint_off_loopback_needs_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = tagger_manifest(dir.path());
    let body = |admin: &str, token: &str| {
        format!(
            "[feed]\ntype = \"embedded\"\npath = \"feed.db\"\n[store]\nurl = \"sqlite://store.db\"\n\
             [runtime]\ncompile_cache_dir = {:?}\n[admin]\nlisten_address = {admin:?}\n{token}\
             [reload]\nwatch = false\n\
             [[pillows]]\nname = \"guarded\"\ntopics = [\"case-sql\"]\nprocessors = [{manifest:?}]\n",
            cache_dir()
        )
    };
    let path = dir.path().join("open.toml");
    std::fs::write(&path, body("0.0.0.0:0", "")).unwrap();
    let refused = pillowtop::config::HostConfig::load(&path)
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("not a loopback address") && refused.contains("set [admin] token"),
        "{refused}"
    );

    let token = "s3cret-admin-token-0123";
    let port = free_port();
    let config = body("ADMIN", &format!("token = {token:?}\n"));
    let host = Host::start(&config, &format!("0.0.0.0:{port}")).await;
    let admin = format!("http://127.0.0.1:{port}");
    let anonymous = Client::default();
    let wrong = Client::new(Some("not-the-admin-token".into()));
    let holder = Client::new(Some(token.into()));
    for path in ["/status", "/status/live", "/plugins", "/errors/1"] {
        for client in [&anonymous, &wrong] {
            let e = client.get(&admin, path).await.unwrap_err().to_string();
            assert!(e.contains("401"), "{path}: {e}");
        }
        let answer = holder.get(&admin, path).await;
        match path {
            "/errors/1" => assert!(
                answer.unwrap_err().to_string().contains("404"),
                "past the guard: no such error"
            ),
            _ => {
                answer.unwrap();
            }
        }
    }
    let e = anonymous
        .request(&admin, "POST", "/plugins/reload", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("401"), "{e}");
    holder
        .request(&admin, "POST", "/plugins/reload", None)
        .await
        .unwrap();
    for open in ["/healthz", "/metrics", "/"] {
        anonymous.get(&admin, open).await.unwrap();
    }
    // The page: without the token it says the status was refused; with
    // `#token=` it shows the pillow.
    let dom = browse(&format!("{admin}/"), None);
    assert!(dom.contains("401"), "{dom}");
    let dom = browse(&format!("{admin}/#token={token}"), None);
    assert_eq!(attribute(&dom, "<body", "data-loaded"), "yes");
    assert!(dom.contains("data-pillow=\"guarded\""), "{dom}");
    host.stop().await;
}
