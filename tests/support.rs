//! Shared helpers: plugin paths, manifests, runtimes, temp stores.

use pillowtop::feed::Feed;
use pillowtop::feed::embedded::EmbeddedFeed;
use pillowtop::manifest::Manifest;
use pillowtop::store::Store;
use pillowtop::wasm::{Processor, Runtime, RuntimeOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A compiled plugin component, or a loud failure naming the fix.
pub fn component(relative: &str) -> PathBuf {
    let path = root().join(relative);
    assert!(
        path.exists(),
        "{} is missing: build the plugins with `make plugins` (make test does this first)",
        path.display()
    );
    path
}

/// The index the shipped case-search plugin writes (CommCare's name, set in
/// its plugin.toml).
pub const CASE_SEARCH_INDEX: &str = "case-search-20230524";

/// Whether the shipped case-search plugin indexes a domain's cases: every
/// domain but the one its plugin.toml leaves out, never a change without one.
pub fn case_search_indexes(domain: &str) -> bool {
    !domain.is_empty() && domain != "demo-3"
}

pub fn case_search_manifest() -> PathBuf {
    component("plugins/case-search/case_search.wasm");
    root().join("plugins/case-search/plugin.toml")
}

/// A shared compile cache under cargo's target dir (CARGO_TARGET_DIR when
/// set, as in CI, so it survives between runs), so each component is
/// compiled once: Python and JavaScript components take ~10 s each.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root().join("target"), PathBuf::from)
        .join("test-compile-cache")
}

/// A runtime (with the shared compile cache) whose `lookup` import reads `lookups`.
pub fn runtime_with_lookups(lookups: Arc<dyn pillowtop::lookup::Lookups>) -> Runtime {
    Runtime::new(RuntimeOptions {
        compile_cache_dir: Some(cache_dir()),
        lookups,
        ..RuntimeOptions::default()
    })
    .unwrap()
}

pub fn runtime() -> Arc<Runtime> {
    static RUNTIME: OnceLock<Arc<Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            Arc::new(
                Runtime::new(RuntimeOptions {
                    compile_cache_dir: Some(cache_dir()),
                    ..RuntimeOptions::default()
                })
                .unwrap(),
            )
        })
        .clone()
}

/// Write a manifest for the hostile test plugin into `dir`.
pub fn hostile_manifest(dir: &Path, limits: &str, extra: &str) -> PathBuf {
    let wasm = component("plugins/testing/hostile/hostile.wasm");
    let text = format!(
        "name = \"hostile\"\nversion = \"1.0.0\"\ncomponent = {wasm:?}\n[limits]\n{limits}\n[capabilities]\nindices = [\"hostile\"]\ntables = [\"hostile_rows\"]\n{extra}"
    );
    let path = dir.join("hostile.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub fn load(manifest: &Path) -> Processor {
    let m = Manifest::load(manifest).unwrap();
    runtime()
        .load(&m)
        .unwrap_or_else(|e| panic!("loading {}: {e}", manifest.display()))
        .0
}

pub struct Env {
    /// Kept so the directory lives as long as the feed and store in it.
    _dir: tempfile::TempDir,
    pub feed: EmbeddedFeed,
    pub store: Store,
}

impl Env {
    /// An embedded feed and a SQLite store in a temp dir.
    pub async fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.db")).await.unwrap();
        Env::with_store(dir, store).await
    }

    /// An embedded feed and a PostgreSQL store in a fresh schema.
    pub async fn postgres() -> Env {
        let store = pg_store(&pg_schema("env")).await;
        Env::with_store(tempfile::tempdir().unwrap(), store).await
    }

    /// An embedded feed in `dir` and the given store.
    pub async fn with_store(dir: tempfile::TempDir, store: Store) -> Env {
        let feed = EmbeddedFeed::open(&dir.path().join("feed.db"))
            .await
            .unwrap();
        Env {
            _dir: dir,
            feed,
            store,
        }
    }

    /// The first column of `sql`'s rows as text, whichever store this is.
    pub async fn strings(&self, sql: &'static str) -> Vec<String> {
        use sqlx::Row;
        if let Some(pool) = self.store.sqlite() {
            let rows = sqlx::query(sql).fetch_all(pool).await.unwrap();
            rows.iter().map(|r| r.get(0)).collect()
        } else {
            let pool = self.store.postgres().unwrap();
            let rows = sqlx::query(sql).fetch_all(pool).await.unwrap();
            rows.iter().map(|r| r.get(0)).collect()
        }
    }

    /// Changes covered by the saved checkpoints of `checkpoint_id`: the sum
    /// of next offsets over its partitions.
    pub async fn checkpointed(&self, checkpoint_id: &str) -> u64 {
        checkpointed(&self.store, checkpoint_id).await
    }

    /// Run one statement, whichever store this is.
    pub async fn execute(&self, sql: &'static str) {
        if let Some(pool) = self.store.sqlite() {
            sqlx::raw_sql(sql).execute(pool).await.unwrap();
        } else {
            sqlx::raw_sql(sql)
                .execute(self.store.postgres().unwrap())
                .await
                .unwrap();
        }
    }

    /// The SQL sinks of this env's store.
    pub fn sql(&self) -> pillowtop::sink::SqlSink {
        pillowtop::sink::SqlSink::new(&self.store)
    }

    pub fn feed(&self) -> Feed {
        Feed::Embedded(self.feed.clone())
    }

    /// Publish JSON lines (keyed by document_id when present).
    pub async fn publish(&self, topic: &str, partitions: u32, lines: &[String]) {
        self.feed
            .create_topic(topic, Some(partitions))
            .await
            .unwrap();
        let messages = lines
            .iter()
            .map(|l| {
                let key = serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["document_id"].as_str().map(|s| s.as_bytes().to_vec()));
                (key, l.as_bytes().to_vec())
            })
            .collect();
        self.feed.publish(topic, messages).await.unwrap();
    }
}

/// The latest `limit` pillow errors of `pillow` in `store`, newest first.
pub async fn recent_errors(
    store: &Store,
    pillow: &str,
    limit: u32,
) -> Result<Vec<pillowtop::errors::PillowError>, sqlx::Error> {
    pillowtop::errors::sql::recent(store.db(), pillow, limit).await
}

/// The sum of `partitions`' end offsets (high watermarks), asked in one
/// call: the number of messages ever written to them.
pub async fn end_total(feed: &Feed, partitions: &[pillowtop::feed::TopicPartition]) -> u64 {
    feed.watermarks(partitions)
        .await
        .unwrap()
        .iter()
        .map(|w| w.high)
        .sum()
}

/// Changes covered by `store`'s saved checkpoints of `checkpoint_id`.
pub async fn checkpointed(store: &Store, checkpoint_id: &str) -> u64 {
    store
        .checkpoints(checkpoint_id)
        .await
        .unwrap()
        .iter()
        .map(|c| c.next_offset)
        .sum()
}

pub fn change(id: &str, document: serde_json::Value) -> String {
    serde_json::json!({"document_id": id, "document_type": "CommCareCase", "domain": "demo-0", "document": document}).to_string()
}

/// The Kafka broker `make services` started (or PILLOWTOP_KAFKA_BROKERS),
/// or a loud failure naming the fix.
pub fn kafka_brokers() -> String {
    let brokers =
        std::env::var("PILLOWTOP_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let first = brokers.split(',').next().unwrap_or_default();
    assert!(
        std::net::TcpStream::connect_timeout(
            &first
                .parse()
                .expect("PILLOWTOP_KAFKA_BROKERS must be IP:PORT"),
            std::time::Duration::from_secs(2)
        )
        .is_ok(),
        "the Kafka broker is not reachable at {brokers}: run `make services` (make test does), or set PILLOWTOP_KAFKA_BROKERS"
    );
    brokers
}

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Spawn `run` (a `pillowtop ... --log info run` command) with piped output
/// and return once its pillow has started, with the rest of its stderr.
pub fn spawn_started(
    mut run: std::process::Command,
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStderr>,
) {
    use std::io::BufRead;
    let mut child = run
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 && !line.contains("pillow started") {
        line.clear();
    }
    (child, stderr)
}

/// The `pillowtop` binary, with no PILLOWTOP_* settings from the environment.
pub fn bin() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_pillowtop"));
    c.env_remove("PILLOWTOP_CONFIG")
        .env_remove("PILLOWTOP_STORE_URL")
        .env_remove("PILLOWTOP_FEED_PATH")
        .env_remove("PILLOWTOP_KAFKA_BROKERS")
        .env_remove("PILLOWTOP_ES_URL")
        .env_remove("PILLOWTOP_ADMIN_TOKEN")
        .env_remove("PILLOWTOP_ADMIN_ADDRESS")
        .env_remove("PILLOWTOP_STORE_SCHEMA")
        .env_remove("PILLOWTOP_LOG_FORMAT");
    c
}

/// The Elasticsearch-API server `make services` started (or
/// PILLOWTOP_ES_URL), or a loud failure naming the fix.
pub fn es_url() -> String {
    let url = std::env::var("PILLOWTOP_ES_URL").unwrap_or_else(|_| "http://127.0.0.1:19200".into());
    let addr = url
        .split_once("://")
        .map_or(url.as_str(), |(_, r)| r)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let reachable = addr.parse::<std::net::SocketAddr>().ok().is_some_and(|a| {
        std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)).is_ok()
    });
    assert!(
        reachable,
        "the Elasticsearch-API server is not reachable at {url}: run `make services` (make test does), or set PILLOWTOP_ES_URL (http://IP:PORT)"
    );
    url
}

/// An index prefix no other test uses (index names are lowercase).
pub fn es_prefix(name: &str) -> String {
    format!("{}-", unique(name).to_lowercase())
}

/// The Elasticsearch sink at `url` with `prefix` before every index name.
pub fn es_sink_at(url: &str, prefix: &str) -> pillowtop::sink::elastic::ElasticSink {
    let mut config = pillowtop::config::ElasticConfig::new(url);
    config.index_prefix = prefix.into();
    pillowtop::sink::elastic::ElasticSink::connect(&config).unwrap()
}

/// The Elasticsearch sink of `make services` with `prefix`.
pub fn es_sink(prefix: &str) -> pillowtop::sink::elastic::ElasticSink {
    es_sink_at(&es_url(), prefix)
}

/// The PostgreSQL database `make services` prepared (or PILLOWTOP_PG_URL),
/// or a loud failure naming the fix.
pub fn pg_url() -> String {
    let url = std::env::var("PILLOWTOP_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/pillowtop_test".into());
    let addr = pg_host_port(&url);
    let reachable = addr.parse::<std::net::SocketAddr>().ok().is_some_and(|a| {
        std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)).is_ok()
    });
    assert!(
        reachable,
        "PostgreSQL is not reachable at {addr} ({url}): run `make services` (make test does), or set PILLOWTOP_PG_URL"
    );
    url
}

/// `host:port` of a PostgreSQL URL (port 5432 when it names none).
pub fn pg_host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_port = rest
        .rsplit_once('@')
        .map_or(rest, |(_, r)| r)
        .split('/')
        .next()
        .unwrap_or_default();
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    }
}

/// A fresh PostgreSQL schema name for one test.
pub fn pg_schema(prefix: &str) -> String {
    unique(prefix).replace('-', "_").to_lowercase()
}

/// The `[store]` body of a host config for PostgreSQL in `schema`.
pub fn pg_store_toml(schema: &str) -> String {
    format!("url = {:?}\nschema = {schema:?}", pg_url())
}

/// The store in `schema` (created and migrated if needed).
pub async fn pg_store(schema: &str) -> Store {
    Store::connect(&pillowtop::config::StoreLocation::Postgres {
        url: pg_url(),
        schema: schema.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("opening the PostgreSQL store: {e}"))
}

/// The tansu binary `make services` installed, for tests that run their
/// own broker (to restart it).
pub fn tansu_bin() -> PathBuf {
    let path = std::env::var_os("PILLOWTOP_TANSU").map_or_else(
        || {
            std::env::var_os("PILLOWTOP_TOOLS")
                .map_or_else(
                    || {
                        PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                            .join(".cache/pillowtop/tools")
                    },
                    PathBuf::from,
                )
                .join("bin/tansu")
        },
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "tansu is missing at {}: run `make services` (make test does), or set PILLOWTOP_TANSU",
        path.display()
    );
    path
}

/// A tansu broker on its own port and storage, restartable (for tests
/// that stop it, or that need the shipped topic names to themselves).
pub struct Broker {
    dir: tempfile::TempDir,
    pub addr: String,
    child: Option<std::process::Child>,
}

impl Broker {
    pub fn start() -> Broker {
        let mut b = Broker {
            dir: tempfile::tempdir().unwrap(),
            addr: format!("127.0.0.1:{}", free_port()),
            child: None,
        };
        b.up();
        b
    }

    pub fn up(&mut self) {
        let url = format!("tcp://{}", self.addr);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .unwrap();
        let child = std::process::Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(&self.addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "tansu did not start on {}: {}",
                self.addr,
                std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A startup wait for an unreachable server (`wait`, given its shutdown
/// token) ends with `Ok(None)`, no error, once the token fires 700 ms in.
pub async fn assert_shutdown_ends_wait<T, E, Fut>(
    wait: impl FnOnce(tokio_util::sync::CancellationToken) -> Fut,
) where
    E: std::fmt::Display,
    Fut: std::future::Future<Output = Result<Option<T>, E>>,
{
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        cancel.cancel();
    });
    let waited = tokio::time::timeout(std::time::Duration::from_secs(20), wait(token))
        .await
        .expect("the wait ignored the shutdown")
        .unwrap_or_else(|e| panic!("an unreachable server at startup is no error: {e}"));
    assert!(waited.is_none(), "the wait ended without its server");
}

/// A TCP proxy on a loopback port to `target`, which a test can take down
/// (every connection cut, new ones refused) and bring back on the same port:
/// a server outage as its clients see it, without stopping a server other
/// tests share.
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    target: std::net::SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Whether the running task accepted a connection since `up`.
    forwarded: Arc<AtomicBool>,
}

impl Proxy {
    pub async fn start(target: std::net::SocketAddr) -> Proxy {
        let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut proxy = Proxy {
            addr,
            target,
            task: None,
            forwarded: Arc::default(),
        };
        proxy.up().await;
        proxy
    }

    pub async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        let target = self.target;
        let forwarded = Arc::clone(&self.forwarded);
        forwarded.store(false, Ordering::Relaxed);
        self.task = Some(tokio::spawn(async move {
            // Dropping the set (when this task is aborted) cuts every connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                forwarded.store(true, Ordering::Relaxed);
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Cut every connection and refuse new ones. If any connection was
    /// forwarded, returns half a second later: a request forwarded before
    /// the cut (a COMMIT, a bulk write) still completes on the server, its
    /// client just never hears back, and a test's "nothing lands while
    /// down" baseline must include it.
    pub async fn down(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
            if self.forwarded.load(Ordering::Relaxed) {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
}

/// The tagger test plugin's manifest in `dir/tagger` (one row per change
/// into table `tagged`; a deletion deletes the row).
pub fn tagger_manifest(dir: &Path) -> PathBuf {
    let plugin = dir.join("tagger");
    std::fs::create_dir_all(&plugin).unwrap();
    std::fs::copy(
        component("plugins/testing/tagger/tagger.wasm"),
        plugin.join("tagger.wasm"),
    )
    .unwrap();
    std::fs::write(
        plugin.join("plugin.toml"),
        "name = \"tagger\"\nversion = \"1.0.0\"\ncomponent = \"tagger.wasm\"\n[limits]\nfuel = 1_000_000\n\
         [capabilities]\ntables = [\"tagged\"]\n[config]\ntag = \"k\"\n",
    )
    .unwrap();
    plugin.join("plugin.toml")
}

/// A database of its own on the local PostgreSQL, with a `docs` table and
/// a `fetch_docs(ids)` function that counts its calls in `calls`.
pub struct SourceDb {
    pub name: String,
    pub url: String,
    pub pool: sqlx::PgPool,
}

impl SourceDb {
    pub async fn create(prefix: &str) -> SourceDb {
        let admin = sqlx::PgPool::connect(&pg_url()).await.unwrap();
        let name = unique(prefix).replace('-', "_").to_lowercase();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        let base = pg_url();
        let url = format!("{}/{name}", &base[..base.rfind('/').unwrap()]);
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE docs (id text PRIMARY KEY, doc json NOT NULL);
             CREATE TABLE calls (ids integer NOT NULL);
             CREATE FUNCTION fetch_docs(wanted text[]) RETURNS TABLE (id text, doc json) AS $$
               BEGIN
                 INSERT INTO calls VALUES (cardinality(wanted));
                 RETURN QUERY SELECT d.id, d.doc FROM docs d WHERE d.id = ANY(wanted);
               END $$ LANGUAGE plpgsql;",
        )
        .execute(&pool)
        .await
        .unwrap();
        SourceDb { name, url, pool }
    }

    pub async fn insert(&self, id: &str, doc: &serde_json::Value) {
        // As text: a `Json` parameter is jsonb, whose keys PostgreSQL
        // reorders (and case-search keeps the order of a case's keys).
        sqlx::query(
            "INSERT INTO docs VALUES ($1, $2::json) ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
        )
        .bind(id)
        .bind(doc.to_string())
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// (queries, ids asked for) so far.
    pub async fn calls(&self) -> (i64, i64) {
        sqlx::query_as("SELECT count(*), COALESCE(sum(ids), 0)::bigint FROM calls")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn remove(self) {
        self.pool.close().await;
        let admin = sqlx::PgPool::connect(&pg_url()).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&admin)
        .await
        .unwrap();
    }
}
