//! The host config (`pillowtop.toml`): the feed, the store, the runtime and
//! the pillows. Relative paths are resolved against the config file's folder.
//! `PILLOWTOP_FEED_PATH` (embedded), `PILLOWTOP_KAFKA_BROKERS` (switches the
//! feed to Kafka), `PILLOWTOP_STORE_URL`, `PILLOWTOP_STORE_SCHEMA` and
//! `PILLOWTOP_ES_URL` (sends documents to Elasticsearch) override the file.
//!
//! ```toml
//! [feed]
//! type = "embedded"            # the SQLite log; no servers
//! path = "../data/feed.db"
//!
//! [store]                      # checkpoints, pillow errors and sink tables
//! url = "sqlite://../data/store.db"   # or postgres://user@host:5432/db
//! # schema = "pillowtop"       # PostgreSQL only; default "public"
//!
//! # [elasticsearch]           # documents go here instead of the store's doc_<index> tables
//! # url = "http://127.0.0.1:9200"
//! # index_prefix = "staging-"
//!
//! [runtime]
//! compile_cache_dir = "../data/compile-cache"
//!
//! [[pillows]]
//! name = "case-search"
//! topics = ["case-sql"]
//! processors = ["../plugins/case-search/plugin.toml"]
//! chunk_size = 500
//! # transform_threads = 2      # threads (each with its own plugin instances) per chunk
//! # retry = "rerun"             # the retry queue: "rerun" (default), "republish" or "off"
//! # retry_batch_size = 500
//! # retry_per_second = 200      # 0: no limit
//! # [pillows.document_source]   # changes without documents: see `source` below
//! # type = "postgres"
//! # query = "SELECT id, doc FROM docs WHERE id = ANY($1)"
//! # url = "postgres://user@host/db"
//!
//! # [lookups.users.source]       # data plugins may read: see `lookup` below
//! # type = "table"
//! # table = "users"
//! # key = "user_id"
//! ```

pub mod lookup;
pub mod source;

use lookup::LookupConfig;
use serde::Deserialize;
use source::DocumentSourceConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why a host config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error(
        "cannot read host config {path}: {source}; pass --config FILE (see config/embedded.toml)"
    )]
    Read {
        /// The config path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Invalid TOML, or unknown or mistyped keys.
    #[error("invalid host config {path}: {message}")]
    Parse {
        /// The config path.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value is out of range or two keys disagree.
    #[error("invalid host config {path}: key `{key}`: {message}")]
    Invalid {
        /// The config path.
        path: PathBuf,
        /// The offending key, dotted.
        key: String,
        /// What is wrong and what would be valid.
        message: String,
    },
}

/// Where changes come from. A tagged enum: `type = "embedded"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FeedConfig {
    /// The embedded SQLite log.
    Embedded {
        /// The log's database file.
        path: PathBuf,
    },
    /// Kafka (partitions assigned manually; checkpoints in the store).
    Kafka {
        /// Bootstrap brokers, `host:port[,host:port...]`.
        brokers: String,
    },
}

/// The store: checkpoints, pillow errors and sink tables.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` (relative to the config file) or
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`.
    pub url: String,
    /// PostgreSQL only: the schema holding pillowtop's tables and the sink
    /// tables (created if missing). Default `public`.
    #[serde(default)]
    pub schema: Option<String>,
}

/// Where the store lives, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite file (the embedded default).
    Sqlite {
        /// The database file.
        path: PathBuf,
    },
    /// A PostgreSQL database.
    Postgres {
        /// Connection URL (may hold a password: print [`StoreLocation`]'s
        /// `Display`, which hides it).
        url: String,
        /// Schema of every table pillowtop creates.
        schema: String,
    },
}

impl std::fmt::Display for StoreLocation {
    /// For messages: the file, or the server and database without user or password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sqlite { path } => write!(f, "sqlite store {}", path.display()),
            StoreLocation::Postgres { url, schema } => {
                let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
                let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
                let rest = rest.split_once('?').map_or(rest, |(r, _)| r);
                write!(f, "postgres store {rest} (schema {schema})")
            }
        }
    }
}

/// The Elasticsearch sink. Without this section, documents go to the
/// store's `doc_<index>` tables.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticConfig {
    /// `http[s]://[USER:PASSWORD@]HOST:PORT` of an Elasticsearch 8 or
    /// OpenSearch node.
    pub url: String,
    /// Put before every index name a plugin declares: with `staging-`, the
    /// plugin's `case-search` index is `staging-case-search`. Lets several
    /// deployments (or tests) share a cluster.
    #[serde(default)]
    pub index_prefix: String,
    /// Timeout of one request, in milliseconds; a timed-out request counts
    /// as an outage and is retried.
    #[serde(default = "default_es_timeout_ms")]
    pub timeout_ms: u64,
    /// Largest bulk request body, in bytes; a chunk's documents are split
    /// across requests no larger than this (Elasticsearch refuses bodies
    /// over `http.max_content_length`, 100 MB by default).
    #[serde(default = "default_bulk_max_bytes")]
    pub bulk_max_bytes: usize,
}

fn default_es_timeout_ms() -> u64 {
    30_000
}
fn default_bulk_max_bytes() -> usize {
    10 * 1024 * 1024
}

impl ElasticConfig {
    /// A config for `url` with every other key at its default.
    pub fn new(url: impl Into<String>) -> ElasticConfig {
        ElasticConfig {
            url: url.into(),
            index_prefix: String::new(),
            timeout_ms: default_es_timeout_ms(),
            bulk_max_bytes: default_bulk_max_bytes(),
        }
    }

    /// The URL with any password replaced by `***`.
    pub fn url_without_password(&self) -> String {
        let Some((scheme, rest)) = self.url.split_once("://") else {
            return self.url.clone();
        };
        let (authority, path) = rest
            .split_once('/')
            .map_or((rest, ""), |(a, _)| (a, &rest[a.len()..]));
        let Some((userinfo, host)) = authority.rsplit_once('@') else {
            return self.url.clone();
        };
        let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
        format!("{scheme}://{user}:***@{host}{path}")
    }
}

impl std::fmt::Display for ElasticConfig {
    /// For messages: the server without user or password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rest = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, r)| r);
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        let scheme = self.url.split_once("://").map_or("http", |(s, _)| s);
        write!(f, "elasticsearch {scheme}://{}", rest.trim_end_matches('/'))
    }
}

impl std::fmt::Debug for ElasticConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElasticConfig")
            .field("url", &self.url_without_password())
            .field("index_prefix", &self.index_prefix)
            .field("timeout_ms", &self.timeout_ms)
            .field("bulk_max_bytes", &self.bulk_max_bytes)
            .finish()
    }
}

/// Wasm runtime settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Compiled components are cached here, keyed by content hash and
    /// engine, so a restart does not recompile.
    #[serde(default = "default_cache_dir")]
    pub compile_cache_dir: PathBuf,
    /// Plugin log and stdout/stderr lines per second per plugin before the
    /// rest are dropped (and counted). The same rate bounds the host's own
    /// "change failed" lines per plugin.
    #[serde(default = "default_log_lines_per_second")]
    pub guest_log_lines_per_second: u32,
    /// Largest component file loaded, in MiB. Anything else (a directory,
    /// a device such as `/dev/zero`, a FIFO) is refused before reading.
    #[serde(default = "default_max_component_mb")]
    pub max_component_mb: u32,
    /// How long `run` may take to stop after SIGTERM or Ctrl-C, in
    /// seconds: it finishes the chunk in hand and saves checkpoints. A
    /// plugin call still running when the time is up (a long
    /// `limits.timeout_ms`) is left behind: the process logs which plugin,
    /// change and partition it was, exits with status 1, and the
    /// uncommitted chunk is read again on restart. Keep it below your
    /// supervisor's kill timeout (Kubernetes: 30 s by default). A second
    /// signal stops at once the same way.
    #[serde(default = "default_shutdown_grace_seconds")]
    pub shutdown_grace_seconds: u64,
}

fn default_cache_dir() -> PathBuf {
    PathBuf::from("data/compile-cache")
}
fn default_log_lines_per_second() -> u32 {
    100
}
fn default_max_component_mb() -> u32 {
    256
}
fn default_shutdown_grace_seconds() -> u64 {
    20
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            compile_cache_dir: default_cache_dir(),
            guest_log_lines_per_second: default_log_lines_per_second(),
            max_component_mb: default_max_component_mb(),
            shutdown_grace_seconds: default_shutdown_grace_seconds(),
        }
    }
}

impl RuntimeConfig {
    /// `max_component_mb` in bytes.
    pub fn max_component_bytes(&self) -> u64 {
        u64::from(self.max_component_mb) << 20
    }
}

/// The admin HTTP endpoint: `/metrics`, `/status`, plugin reloads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on. The default port 0 picks a free port, so
    /// several processes on one machine never collide; each records the
    /// address it got in the store, where `pillowtop plugin reload` finds
    /// it. Give a fixed port (e.g. `127.0.0.1:9180`) for Prometheus to scrape.
    #[serde(default = "default_admin_listen_address")]
    pub listen_address: String,
    /// Set to false to run without the endpoint (reload by SIGHUP or by
    /// file changes only).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Bearer token every request must carry (`Authorization: Bearer
    /// TOKEN`) except on `open_routes` and the page itself. Required when
    /// `listen_address` is not loopback; at least 16 characters. The
    /// environment variable `PILLOWTOP_ADMIN_TOKEN` overrides it (keep it
    /// out of the file).
    #[serde(default)]
    pub token: Option<String>,
    /// Routes served without the token (exact paths): by default what a
    /// load balancer and Prometheus need.
    #[serde(default = "default_open_routes")]
    pub open_routes: Vec<String>,
    /// When `/healthz` reports unhealthy.
    #[serde(default)]
    pub health: HealthRules,
}

/// The environment variable that sets (and overrides) `[admin] token`.
pub const ADMIN_TOKEN_ENV: &str = "PILLOWTOP_ADMIN_TOKEN";
/// The environment variable that overrides `[admin] listen_address`.
pub const ADMIN_ADDRESS_ENV: &str = "PILLOWTOP_ADMIN_ADDRESS";

impl AdminConfig {
    /// The token requests must carry, if any.
    pub fn token(&self) -> Option<String> {
        self.token.clone()
    }
}

/// When `GET /healthz` answers 503 (`[admin.health]`). A stopped or
/// unresponsive pillow process with nothing running in its place is
/// always unhealthy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthRules {
    /// A sink (store, Elasticsearch) unreachable this long. Shorter
    /// outages are waited out: the chunk is held and retried.
    #[serde(default = "default_sink_down_seconds")]
    pub sink_down_seconds: u64,
    /// Changes wait and no checkpoint of the partition has moved this long
    /// (a pillow saves at least every `checkpoint_max_delay_seconds` while
    /// it processes, 300 s by default).
    #[serde(default = "default_checkpoint_stalled_seconds")]
    pub checkpoint_stalled_seconds: u64,
}

fn default_sink_down_seconds() -> u64 {
    300
}
fn default_checkpoint_stalled_seconds() -> u64 {
    900
}
fn default_open_routes() -> Vec<String> {
    vec!["/healthz".into(), "/metrics".into()]
}

impl Default for HealthRules {
    fn default() -> Self {
        HealthRules {
            sink_down_seconds: default_sink_down_seconds(),
            checkpoint_stalled_seconds: default_checkpoint_stalled_seconds(),
        }
    }
}

fn default_admin_listen_address() -> String {
    "127.0.0.1:0".into()
}
fn default_true() -> bool {
    true
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen_address: default_admin_listen_address(),
            enabled: true,
            token: None,
            open_routes: default_open_routes(),
            health: HealthRules::default(),
        }
    }
}

/// Hot reload of plugins.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Watch every loaded manifest, component and fixture file, and load a
    /// changed plugin without a restart. SIGHUP and `pillowtop plugin
    /// reload` work either way.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// How often watched files are checked. A change is loaded once the
    /// files look the same on two checks in a row (a half-written file is
    /// not loaded), so a new version is picked up within about twice this.
    /// Default 250 ms: each check wakes the host, idle or not.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Stage a changed plugin as a *candidate* beside the live version
    /// (its actions compared, never written) instead of making it live;
    /// `pillowtop plugin promote` makes it live. As `pillowtop plugin
    /// shadow` does for a manifest anywhere.
    #[serde(default)]
    pub shadow: bool,
    /// How many differences between a candidate and the live version are
    /// kept (per plugin and candidate version) for `pillowtop plugin diff`;
    /// the rest are counted.
    #[serde(default = "default_shadow_diffs")]
    pub shadow_diffs: u32,
    /// Promote a candidate by itself once this many changes were compared
    /// in a host process with no difference and no failure (0: never;
    /// each host process decides for itself).
    #[serde(default)]
    pub promote_after: u64,
}

fn default_poll_interval_ms() -> u64 {
    250
}

fn default_shadow_diffs() -> u32 {
    100
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: true,
            poll_interval_ms: default_poll_interval_ms(),
            shadow: false,
            shadow_diffs: default_shadow_diffs(),
            promote_after: 0,
        }
    }
}

/// One pillow: topics, processors in order, chunking and checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PillowConfig {
    /// Pillow name, unique in the config.
    pub name: String,
    /// Checkpoint id; defaults to the name. Changing it starts from scratch.
    #[serde(default)]
    pub checkpoint_id: Option<String>,
    /// Topics read.
    pub topics: Vec<String>,
    /// Plugin manifests, run in this order for every change.
    pub processors: Vec<PathBuf>,
    /// Changes per chunk (one transaction per chunk).
    #[serde(default = "default_chunk_size")]
    pub chunk_size: usize,
    /// How long to wait for a chunk to fill before processing what arrived.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
    /// Save the checkpoint after this many changes...
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// ...or after this many seconds, whichever comes first.
    #[serde(default = "default_checkpoint_max_delay_seconds")]
    pub checkpoint_max_delay_seconds: u64,
    /// Processes the pillow's partitions are split across.
    #[serde(default = "default_num_processes")]
    pub num_processes: u32,
    /// Process 0 reads nothing (it runs migrations); the others split the partitions.
    #[serde(default)]
    pub dedicated_migration_process: bool,
    /// Threads that run the processors over a chunk at once, each with its
    /// own instance of every plugin (1..=64). A chunk is split into
    /// contiguous runs of at least 64 changes, one per thread, and the
    /// results are put back in chunk order, so what lands is the same as
    /// with one thread. More than the machine's cores only adds instances.
    #[serde(default = "default_transform_threads")]
    pub transform_threads: usize,
    /// Most bytes of actions (documents, ids, row cells) a chunk holds
    /// before it is written, in MiB. A chunk whose actions would exceed it
    /// is written early in smaller pieces (its checkpoint still waits for
    /// the last piece), so a chunk of large outputs cannot exhaust the
    /// host's memory. Peak memory for actions is about twice this (one
    /// piece written while the next is processed).
    #[serde(default = "default_chunk_memory_mb")]
    pub chunk_memory_mb: u32,
    /// How the retry queue tries this pillow's errors again.
    #[serde(default)]
    pub retry: RetryMode,
    /// Due errors the retry queue reads and tries per batch (it never
    /// holds more than one batch).
    #[serde(default = "default_retry_batch_size")]
    pub retry_batch_size: u32,
    /// Most errors the retry queue tries per second (0: no limit), so a
    /// large backlog cannot take the pillow's store or plugins from it.
    #[serde(default = "default_retry_per_second")]
    pub retry_per_second: u32,
    /// How long the retry queue waits before looking again when fewer
    /// than a batch were due (CommCare: 10 s).
    #[serde(default = "default_retry_poll_seconds")]
    pub retry_poll_seconds: u64,
    /// Where the documents of changes that carry none are read (CommCare's
    /// changes carry only metadata): one query per chunk. Without it, a
    /// change must carry its `document` (or be a deletion). See
    /// [`source`].
    #[serde(default)]
    pub document_source: Option<DocumentSourceConfig>,
}

/// How a pillow's retry queue tries an error again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetryMode {
    /// Re-run the failed processor on the stored change through the live
    /// plugin version, writing through the pillow's own delivery path.
    #[default]
    Rerun,
    /// Append the stored change to its topic again with `attempts`
    /// counted, as CommCare does for Kafka feeds: the pillow's normal
    /// path handles it.
    Republish,
    /// No retry queue for this pillow: errors stay for operators.
    Off,
}

fn default_chunk_size() -> usize {
    500
}
fn default_max_wait_ms() -> u64 {
    500
}
fn default_checkpoint_every() -> u64 {
    1000
}
fn default_checkpoint_max_delay_seconds() -> u64 {
    300
}
fn default_num_processes() -> u32 {
    1
}
fn default_transform_threads() -> usize {
    1
}
fn default_chunk_memory_mb() -> u32 {
    256
}
fn default_retry_batch_size() -> u32 {
    500
}
fn default_retry_per_second() -> u32 {
    200
}
fn default_retry_poll_seconds() -> u64 {
    10
}

impl PillowConfig {
    /// A pillow reading `topics` through `processors` (manifest paths),
    /// everything else at its default, as a config file that names only
    /// those gets.
    pub fn new(name: &str, topics: &[&str], processors: Vec<PathBuf>) -> PillowConfig {
        PillowConfig {
            name: name.to_owned(),
            checkpoint_id: None,
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            processors,
            chunk_size: default_chunk_size(),
            max_wait_ms: default_max_wait_ms(),
            checkpoint_every: default_checkpoint_every(),
            checkpoint_max_delay_seconds: default_checkpoint_max_delay_seconds(),
            num_processes: default_num_processes(),
            dedicated_migration_process: false,
            transform_threads: default_transform_threads(),
            chunk_memory_mb: default_chunk_memory_mb(),
            retry: RetryMode::default(),
            retry_batch_size: default_retry_batch_size(),
            retry_per_second: default_retry_per_second(),
            retry_poll_seconds: default_retry_poll_seconds(),
            document_source: None,
        }
    }

    /// `chunk_memory_mb` in bytes.
    pub fn chunk_memory_bytes(&self) -> usize {
        self.chunk_memory_mb as usize * 1024 * 1024
    }

    /// The checkpoint id in use.
    pub fn checkpoint_id(&self) -> &str {
        self.checkpoint_id.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    feed: FeedConfig,
    store: StoreConfig,
    #[serde(default)]
    elasticsearch: Option<ElasticConfig>,
    #[serde(default)]
    runtime: RuntimeConfig,
    #[serde(default)]
    admin: AdminConfig,
    #[serde(default)]
    reload: ReloadConfig,
    #[serde(default)]
    pillows: Vec<PillowConfig>,
    #[serde(default)]
    lookups: BTreeMap<String, LookupConfig>,
}

/// A validated host config with resolved paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// The feed.
    pub feed: FeedConfig,
    /// The store.
    pub store: StoreLocation,
    /// The Elasticsearch sink, if documents go there.
    pub elasticsearch: Option<ElasticConfig>,
    /// Runtime settings.
    pub runtime: RuntimeConfig,
    /// The admin endpoint.
    pub admin: AdminConfig,
    /// Hot reload.
    pub reload: ReloadConfig,
    /// The pillows.
    pub pillows: Vec<PillowConfig>,
    /// Lookup resources plugins may be granted, by name.
    pub lookups: BTreeMap<String, LookupConfig>,
}

impl HostConfig {
    /// Load `path`, applying `PILLOWTOP_*` environment overrides.
    ///
    /// # Errors
    ///
    /// See [`ConfigError`].
    pub fn load(path: &Path) -> Result<HostConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        HostConfig::parse(&text, path, |k| std::env::var(k).ok())
    }

    /// Parse `text` as if read from `path`, with `env` for overrides.
    ///
    /// # Errors
    ///
    /// See [`ConfigError`].
    pub fn parse(
        text: &str,
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<HostConfig, ConfigError> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.into(),
            message,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                dir.join(p)
            }
        };

        if let Some(p) = env("PILLOWTOP_FEED_PATH") {
            raw.feed = FeedConfig::Embedded {
                path: PathBuf::from(p),
            };
        }
        let feed = match raw.feed {
            FeedConfig::Embedded { path } => FeedConfig::Embedded {
                path: resolve(&path),
            },
            FeedConfig::Kafka { brokers } => FeedConfig::Kafka { brokers },
        };
        let feed = match env("PILLOWTOP_KAFKA_BROKERS") {
            Some(brokers) => FeedConfig::Kafka { brokers },
            None => feed,
        };
        if let FeedConfig::Kafka { brokers } = &feed
            && (brokers.is_empty() || brokers.split(',').any(|b| !b.contains(':')))
        {
            return Err(invalid(
                "feed.brokers",
                format!("{brokers:?} is not a list of host:port, e.g. \"127.0.0.1:9092\""),
            ));
        }
        let url = env("PILLOWTOP_STORE_URL").unwrap_or(raw.store.url);
        let schema = env("PILLOWTOP_STORE_SCHEMA").or(raw.store.schema);
        let store = if let Some(file) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if file.is_empty() {
                return Err(invalid(
                    "store.url",
                    "names no file; use sqlite://PATH".into(),
                ));
            }
            if let Some(schema) = schema {
                return Err(invalid(
                    "store.schema",
                    format!(
                        "{schema:?} applies to PostgreSQL only, but store.url is {url:?}; remove store.schema"
                    ),
                ));
            }
            StoreLocation::Sqlite {
                path: resolve(Path::new(file)),
            }
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let schema = schema.unwrap_or_else(|| "public".into());
            let valid = schema
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
                && schema
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && schema.len() <= 63;
            if !valid {
                return Err(invalid(
                    "store.schema",
                    format!(
                        "{schema:?} is not a plain schema name; use lowercase letters, digits and '_' (at most 63), starting with a letter or '_'"
                    ),
                ));
            }
            StoreLocation::Postgres { url, schema }
        } else {
            return Err(invalid(
                "store.url",
                format!(
                    "{url:?} is not supported; use sqlite://PATH (e.g. sqlite://data/store.db) or postgres://USER@HOST:PORT/DATABASE"
                ),
            ));
        };
        let elasticsearch = match (env("PILLOWTOP_ES_URL"), raw.elasticsearch) {
            (Some(url), Some(es)) => Some(ElasticConfig { url, ..es }),
            (Some(url), None) => Some(ElasticConfig::new(url)),
            (None, es) => es,
        };
        if let Some(es) = &elasticsearch {
            validate_elastic(es).map_err(|(key, message)| invalid(key, message))?;
        }
        if let Some(token) = env(ADMIN_TOKEN_ENV).filter(|t| !t.is_empty()) {
            raw.admin.token = Some(token);
        }
        // A second process of a config with a fixed port needs its own.
        if let Some(address) = env(ADMIN_ADDRESS_ENV).filter(|a| !a.is_empty()) {
            raw.admin.listen_address = address;
        }
        if raw.admin.enabled {
            let address = raw
                .admin
                .listen_address
                .parse::<std::net::SocketAddr>()
                .map_err(|_| {
                    invalid(
                        "admin.listen_address",
                        format!(
                            "{:?} is not IP:PORT; e.g. \"127.0.0.1:9180\", or \"127.0.0.1:0\" for any free port",
                            raw.admin.listen_address
                        ),
                    )
                })?;
            if !address.ip().is_loopback() && raw.admin.token.is_none() {
                return Err(invalid(
                    "admin.listen_address",
                    format!(
                        "{address} is not a loopback address, and anyone who can reach it could reload, shadow and promote plugins; set [admin] token (or {ADMIN_TOKEN_ENV}) to require a bearer token, or listen on 127.0.0.1"
                    ),
                ));
            }
        }
        if let Some(token) = &raw.admin.token
            && token.chars().count() < 16
        {
            return Err(invalid(
                "admin.token",
                format!(
                    "is {} characters; use at least 16 (e.g. `openssl rand -hex 16`)",
                    token.chars().count()
                ),
            ));
        }
        for route in &raw.admin.open_routes {
            if !route.starts_with('/') {
                return Err(invalid(
                    "admin.open_routes",
                    format!("{route:?} is not a path; write it as \"/healthz\""),
                ));
            }
        }
        if !(10..=60_000).contains(&raw.reload.poll_interval_ms) {
            return Err(invalid(
                "reload.poll_interval_ms",
                format!("{} is out of range 10..=60000", raw.reload.poll_interval_ms),
            ));
        }
        let mut runtime = raw.runtime;
        runtime.compile_cache_dir = resolve(&runtime.compile_cache_dir);
        if !(1..=4096).contains(&runtime.max_component_mb) {
            return Err(invalid(
                "runtime.max_component_mb",
                format!("{} is out of range 1..=4096", runtime.max_component_mb),
            ));
        }
        if !(1..=3600).contains(&runtime.shutdown_grace_seconds) {
            return Err(invalid(
                "runtime.shutdown_grace_seconds",
                format!(
                    "{} is out of range 1..=3600",
                    runtime.shutdown_grace_seconds
                ),
            ));
        }

        let mut names = std::collections::HashSet::new();
        for (i, p) in raw.pillows.iter_mut().enumerate() {
            let key = |k: &str| format!("pillows[{i}].{k}");
            if p.name.is_empty()
                || !p
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(invalid(
                    &key("name"),
                    format!(
                        "{:?} must be non-empty and use only letters, digits, '-' and '_'",
                        p.name
                    ),
                ));
            }
            if !names.insert(p.name.clone()) {
                return Err(invalid(
                    &key("name"),
                    format!("{:?} is used by two pillows; names must be unique", p.name),
                ));
            }
            if p.topics.is_empty() || p.topics.iter().any(|t| t.is_empty()) {
                return Err(invalid(
                    &key("topics"),
                    "list at least one non-empty topic, e.g. [\"case-sql\"]".into(),
                ));
            }
            if p.processors.is_empty() {
                return Err(invalid(
                    &key("processors"),
                    "list at least one plugin manifest, e.g. [\"plugins/case-search/plugin.toml\"]"
                        .into(),
                ));
            }
            if !(1..=100_000).contains(&p.chunk_size) {
                return Err(invalid(
                    &key("chunk_size"),
                    format!("{} is out of range 1..=100000", p.chunk_size),
                ));
            }
            if !(1..=65_536).contains(&p.chunk_memory_mb) {
                return Err(invalid(
                    &key("chunk_memory_mb"),
                    format!("{} is out of range 1..=65536", p.chunk_memory_mb),
                ));
            }
            if p.checkpoint_every == 0 {
                return Err(invalid(
                    &key("checkpoint_every"),
                    "must be at least 1".into(),
                ));
            }
            if !(1..=64).contains(&p.transform_threads) {
                return Err(invalid(
                    &key("transform_threads"),
                    format!(
                        "{} is out of range 1..=64 (threads per pillow that run its plugins)",
                        p.transform_threads
                    ),
                ));
            }
            if !(1..=10_000).contains(&p.retry_batch_size) {
                return Err(invalid(
                    &key("retry_batch_size"),
                    format!("{} is out of range 1..=10000", p.retry_batch_size),
                ));
            }
            if !(1..=3600).contains(&p.retry_poll_seconds) {
                return Err(invalid(
                    &key("retry_poll_seconds"),
                    format!("{} is out of range 1..=3600", p.retry_poll_seconds),
                ));
            }
            if p.num_processes == 0 {
                return Err(invalid(&key("num_processes"), "must be at least 1".into()));
            }
            if p.dedicated_migration_process && p.num_processes < 2 {
                return Err(invalid(
                    &key("dedicated_migration_process"),
                    format!(
                        "needs num_processes >= 2 (process 0 only migrates), but {} is {}",
                        key("num_processes"),
                        p.num_processes
                    ),
                ));
            }
            for m in &mut p.processors {
                *m = resolve(m);
            }
        }
        if let Some(name) = raw.lookups.keys().find(|n| !lookup::valid_resource_name(n)) {
            return Err(invalid(
                &format!("lookups.{name}"),
                "a lookup resource name uses lowercase letters, digits, '-' and '_' (1 to 64)"
                    .into(),
            ));
        }
        Ok(HostConfig {
            path: path.to_owned(),
            feed,
            store,
            elasticsearch,
            runtime,
            admin: raw.admin,
            reload: raw.reload,
            pillows: raw.pillows,
            lookups: raw.lookups,
        })
    }

    /// The pillow named `name`.
    pub fn pillow(&self, name: &str) -> Option<&PillowConfig> {
        self.pillows.iter().find(|p| p.name == name)
    }
}

/// Check the Elasticsearch section; the error names the key.
fn validate_elastic(es: &ElasticConfig) -> Result<(), (&'static str, String)> {
    let host = es
        .url
        .strip_prefix("http://")
        .or_else(|| es.url.strip_prefix("https://"))
        .map(|rest| {
            let authority = rest.split('/').next().unwrap_or_default();
            authority.rsplit_once('@').map_or(authority, |(_, h)| h)
        });
    if host.is_none_or(str::is_empty) {
        return Err((
            "elasticsearch.url",
            format!(
                "{:?} is not an http(s) URL of a node, e.g. \"http://127.0.0.1:9200\"",
                es.url_without_password()
            ),
        ));
    }
    // Elasticsearch's rules for index names, applied to the prefix.
    let p = &es.index_prefix;
    let forbidden =
        |c: char| c.is_ascii_uppercase() || c.is_whitespace() || "\\/*?\"<>|,#:".contains(c);
    if p.chars().any(forbidden) || p.starts_with(['_', '-', '+']) || p.len() > 100 {
        return Err((
            "elasticsearch.index_prefix",
            format!(
                "{p:?} cannot start an index name: use lowercase letters, digits, '-', '_' and '.', not starting with '_', '-' or '+' (at most 100)"
            ),
        ));
    }
    if !(100..=3_600_000).contains(&es.timeout_ms) {
        return Err((
            "elasticsearch.timeout_ms",
            format!("{} is out of range 100..=3600000", es.timeout_ms),
        ));
    }
    if es.bulk_max_bytes < 64 * 1024 {
        return Err((
            "elasticsearch.bulk_max_bytes",
            format!("{} is below the minimum of 65536", es.bulk_max_bytes),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [feed]
        type = "embedded"
        path = "feed.db"
        [store]
        url = "sqlite://store.db"
        [[pillows]]
        name = "case-search"
        topics = ["case-sql"]
        processors = ["../plugins/case-search/plugin.toml"]
        num_processes = 2
    "#;

    fn parse(text: &str) -> Result<HostConfig, ConfigError> {
        HostConfig::parse(text, Path::new("/etc/pt/pillowtop.toml"), |_| None)
    }

    #[test]
    fn parses_with_defaults_and_resolved_paths() {
        let c = parse(GOOD).unwrap();
        assert_eq!(
            c.feed,
            FeedConfig::Embedded {
                path: "/etc/pt/feed.db".into()
            }
        );
        assert_eq!(
            c.store,
            StoreLocation::Sqlite {
                path: "/etc/pt/store.db".into()
            }
        );
        assert_eq!(
            c.runtime.compile_cache_dir,
            Path::new("/etc/pt/data/compile-cache")
        );
        let p = &c.pillows[0];
        assert_eq!(
            (
                p.chunk_size,
                p.checkpoint_every,
                p.checkpoint_max_delay_seconds
            ),
            (500, 1000, 300)
        );
        assert_eq!(p.transform_threads, 1, "one transform thread unless asked");
        assert_eq!(p.chunk_memory_bytes(), 256 << 20);
        assert_eq!(c.runtime.max_component_bytes(), 256 << 20);
        assert_eq!(c.runtime.shutdown_grace_seconds, 20);
        assert_eq!(p.checkpoint_id(), "case-search");
        assert_eq!(c.admin, AdminConfig::default());
        assert_eq!(c.admin.listen_address, "127.0.0.1:0");
        assert!(c.reload.watch);
        assert_eq!(c.reload.poll_interval_ms, 250);
        assert_eq!(
            p.processors[0],
            Path::new("/etc/pt/../plugins/case-search/plugin.toml")
        );
    }

    #[test]
    fn kafka_feed_from_the_file_or_the_environment() {
        let text = GOOD.replace(
            "type = \"embedded\"\n        path = \"feed.db\"",
            "type = \"kafka\"\n        brokers = \"k1:9092,k2:9092\"",
        );
        assert_eq!(
            parse(&text).unwrap().feed,
            FeedConfig::Kafka {
                brokers: "k1:9092,k2:9092".into()
            }
        );
        let c = HostConfig::parse(GOOD, Path::new("/etc/pt/pillowtop.toml"), |k| {
            (k == "PILLOWTOP_KAFKA_BROKERS").then(|| "127.0.0.1:19092".into())
        })
        .unwrap();
        assert_eq!(
            c.feed,
            FeedConfig::Kafka {
                brokers: "127.0.0.1:19092".into()
            }
        );
    }

    #[test]
    fn environment_overrides_urls() {
        let c = HostConfig::parse(GOOD, Path::new("/etc/pt/pillowtop.toml"), |k| match k {
            "PILLOWTOP_STORE_URL" => Some("sqlite:///tmp/other.db".into()),
            "PILLOWTOP_FEED_PATH" => Some("/tmp/feed.db".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            c.store,
            StoreLocation::Sqlite {
                path: "/tmp/other.db".into()
            }
        );
        assert_eq!(
            c.feed,
            FeedConfig::Embedded {
                path: "/tmp/feed.db".into()
            }
        );
    }

    #[test]
    fn the_sample_configs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let embedded = HostConfig::parse(
            include_str!("../../../config/embedded.toml"),
            &root.join("embedded.toml"),
            |_| None,
        )
        .unwrap();
        assert!(matches!(embedded.store, StoreLocation::Sqlite { .. }));
        let full = HostConfig::parse(
            include_str!("../../../config/full-stack.toml"),
            &root.join("full-stack.toml"),
            |_| None,
        )
        .unwrap();
        assert!(matches!(full.feed, FeedConfig::Kafka { .. }));
        assert_eq!(
            full.store.to_string(),
            "postgres store 127.0.0.1:5432/pillowtop_test (schema pillowtop)"
        );
        // CommCare's two pillows, two processes each, its checkpoint frequency.
        let shape: Vec<_> = full
            .pillows
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.processors.len(),
                    p.num_processes,
                    p.checkpoint_every,
                )
            })
            .collect();
        assert_eq!(
            shape,
            [("case-pillow", 3, 2, 1000), ("xform-pillow", 2, 2, 1000)]
        );
        for p in &full.pillows {
            for m in &p.processors {
                assert!(m.exists(), "{} names {}", p.name, m.display());
            }
        }
        assert_eq!(
            full.lookups.keys().collect::<Vec<_>>(),
            ["cases", "phone-numbers", "users", "users-index"]
        );
        let es = full
            .elasticsearch
            .expect("full-stack.toml names Elasticsearch");
        assert_eq!(es.to_string(), "elasticsearch http://127.0.0.1:19200");
        assert_eq!(es.index_prefix, "pillowtop-");
        assert!(
            embedded.elasticsearch.is_none(),
            "the embedded default needs no servers"
        );
    }

    #[test]
    fn the_admin_address_from_the_environment_wins() {
        let env = |k: &str| (k == ADMIN_ADDRESS_ENV).then(|| "127.0.0.1:9181".to_owned());
        let text = GOOD.replace(
            "[store]",
            "[admin]\nlisten_address = \"127.0.0.1:9180\"\n[store]",
        );
        let c = HostConfig::parse(&text, Path::new("/etc/pt/pillowtop.toml"), env).unwrap();
        assert_eq!(c.admin.listen_address, "127.0.0.1:9181");
        let bad = |k: &str| (k == ADMIN_ADDRESS_ENV).then(|| "0.0.0.0:9181".to_owned());
        let err = HostConfig::parse(&text, Path::new("/etc/pt/pillowtop.toml"), bad).unwrap_err();
        assert!(err.to_string().contains("not a loopback"), "{err}");
    }

    #[test]
    fn postgres_store_with_schema_and_a_hidden_password() {
        let text = GOOD.replace(
            "url = \"sqlite://store.db\"",
            "url = \"postgres://pt:secret@db.example:5433/hq?sslmode=disable\"\nschema = \"pillows\"",
        );
        let c = parse(&text).unwrap();
        assert_eq!(
            c.store,
            StoreLocation::Postgres {
                url: "postgres://pt:secret@db.example:5433/hq?sslmode=disable".into(),
                schema: "pillows".into()
            }
        );
        assert_eq!(
            c.store.to_string(),
            "postgres store db.example:5433/hq (schema pillows)"
        );
        let c = HostConfig::parse(GOOD, Path::new("/etc/pt/pillowtop.toml"), |k| match k {
            "PILLOWTOP_STORE_URL" => Some("postgresql://localhost/x".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            c.store,
            StoreLocation::Postgres {
                url: "postgresql://localhost/x".into(),
                schema: "public".into()
            }
        );
    }

    #[test]
    fn bad_configs_name_the_key() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "type = \"embedded\"",
                "type = \"kafkaa\"",
                &["unknown variant `kafkaa`", "`embedded`"],
            ),
            (
                "url = \"sqlite://store.db\"",
                "url = \"mysql://x\"",
                &["key `store.url`", "sqlite://PATH", "postgres://"],
            ),
            (
                "url = \"sqlite://store.db\"",
                "url = \"sqlite://store.db\"\nschema = \"x\"",
                &["key `store.schema`", "PostgreSQL only"],
            ),
            (
                "url = \"sqlite://store.db\"",
                "url = \"postgres://u@h/db\"\nschema = \"My-Schema\"",
                &["key `store.schema`", "lowercase letters"],
            ),
            (
                "num_processes = 2",
                "num_processes = 2\nchunk_sise = 3",
                &["unknown field `chunk_sise`", "`chunk_size`"],
            ),
            (
                "num_processes = 2",
                "num_processes = 1\ndedicated_migration_process = true",
                &[
                    "pillows[0].dedicated_migration_process",
                    "pillows[0].num_processes is 1",
                ],
            ),
            (
                "num_processes = 2",
                "chunk_size = 0",
                &["pillows[0].chunk_size", "1..=100000"],
            ),
            (
                "num_processes = 2",
                "retry_batch_size = 0",
                &["pillows[0].retry_batch_size", "1..=10000"],
            ),
            (
                "num_processes = 2",
                "retry = \"later\"",
                &["unknown variant `later`", "`rerun`, `republish`, `off`"],
            ),
            (
                "num_processes = 2",
                "transform_threads = 0",
                &["pillows[0].transform_threads", "1..=64"],
            ),
            (
                "num_processes = 2",
                "transform_threads = 65",
                &["pillows[0].transform_threads", "65 is out of range"],
            ),
            (
                "topics = [\"case-sql\"]",
                "topics = []",
                &["pillows[0].topics"],
            ),
            (
                "num_processes = 2",
                "chunk_memory_mb = 0",
                &["pillows[0].chunk_memory_mb", "1..=65536"],
            ),
            (
                "[store]",
                "[runtime]\nmax_component_mb = 0\n[store]",
                &["key `runtime.max_component_mb`", "1..=4096"],
            ),
            (
                "[store]",
                "[runtime]\nshutdown_grace_seconds = 0\n[store]",
                &["key `runtime.shutdown_grace_seconds`", "1..=3600"],
            ),
            (
                "[store]",
                "[admin]\nlisten_address = \"localhost\"\n[store]",
                &["key `admin.listen_address`", "IP:PORT", "127.0.0.1:0"],
            ),
            (
                "[store]",
                "[admin]\nlisten_address = \"0.0.0.0:9180\"\n[store]",
                &[
                    "key `admin.listen_address`",
                    "not a loopback",
                    "set [admin] token",
                    "PILLOWTOP_ADMIN_TOKEN",
                ],
            ),
            (
                "[store]",
                "[admin]\ntoken = \"short\"\n[store]",
                &["key `admin.token`", "5 characters", "at least 16"],
            ),
            (
                "[store]",
                "[admin]\nopen_routes = [\"healthz\"]\n[store]",
                &["key `admin.open_routes`", "\"/healthz\""],
            ),
            (
                "[store]",
                "[admin.health]\nsink_down_minutes = 5\n[store]",
                &["unknown field `sink_down_minutes`", "sink_down_seconds"],
            ),
            (
                "[store]",
                "[reload]\npoll_interval_ms = 1\n[store]",
                &["key `reload.poll_interval_ms`", "10..=60000"],
            ),
            (
                "[store]",
                "[reload]\nwatch = \"yes\"\n[store]",
                &["invalid type", "expected a boolean"],
            ),
            (
                "type = \"embedded\"\n        path = \"feed.db\"",
                "type = \"kafka\"\n        brokers = \"localhost\"",
                &["key `feed.brokers`", "host:port"],
            ),
            (
                "type = \"embedded\"\n        path = \"feed.db\"",
                "type = \"kafka\"\n        path = \"feed.db\"",
                &["unknown field `path`", "`brokers`"],
            ),
        ];
        for (from, to, needles) in cases {
            let text = GOOD.replace(from, to);
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("/etc/pt/pillowtop.toml"), "{err}");
            for n in *needles {
                assert!(err.contains(n), "expected {n:?} in: {err}");
            }
        }
        let two = format!(
            "{GOOD}\n[[pillows]]\nname = \"case-search\"\ntopics = [\"a\"]\nprocessors = [\"p\"]"
        );
        assert!(
            parse(&two)
                .unwrap_err()
                .to_string()
                .contains("used by two pillows")
        );
    }

    #[test]
    fn elasticsearch_is_optional_and_env_can_enable_it() {
        assert_eq!(parse(GOOD).unwrap().elasticsearch, None);
        let with = format!(
            "{GOOD}\n[elasticsearch]\nurl = \"https://u:s3cret@es.example:9200\"\nindex_prefix = \"staging-\""
        );
        let es = parse(&with).unwrap().elasticsearch.unwrap();
        assert_eq!(es.index_prefix, "staging-");
        assert_eq!(es.timeout_ms, 30_000);
        assert_eq!(es.bulk_max_bytes, 10 * 1024 * 1024);
        // The password never reaches a message.
        assert_eq!(es.to_string(), "elasticsearch https://es.example:9200");
        assert_eq!(es.url_without_password(), "https://u:***@es.example:9200");
        assert!(!format!("{es:?}").contains("s3cret"));

        let env = |k: &str| (k == "PILLOWTOP_ES_URL").then(|| "http://127.0.0.1:19200".to_owned());
        let path = Path::new("/etc/pt/pillowtop.toml");
        let from_env = HostConfig::parse(GOOD, path, env).unwrap();
        assert_eq!(
            from_env.elasticsearch,
            Some(ElasticConfig::new("http://127.0.0.1:19200"))
        );
        // The variable replaces the URL and keeps the other keys.
        let both = HostConfig::parse(&with, path, env)
            .unwrap()
            .elasticsearch
            .unwrap();
        assert_eq!(both.url, "http://127.0.0.1:19200");
        assert_eq!(both.index_prefix, "staging-");
    }

    #[test]
    fn bad_elasticsearch_keys_are_named() {
        let cases: &[(&str, &[&str])] = &[
            (
                "url = \"es:9200\"",
                &["key `elasticsearch.url`", "http://127.0.0.1:9200"],
            ),
            (
                "url = \"http://u:pw@\"",
                &["key `elasticsearch.url`", "u:***@"],
            ),
            (
                "url = \"http://es:9200\"\nindex_prefix = \"Staging\"",
                &["key `elasticsearch.index_prefix`", "lowercase"],
            ),
            (
                "url = \"http://es:9200\"\nindex_prefix = \"_x\"",
                &["key `elasticsearch.index_prefix`"],
            ),
            (
                "url = \"http://es:9200\"\ntimeout_ms = 0",
                &["key `elasticsearch.timeout_ms`", "100..=3600000"],
            ),
            (
                "url = \"http://es:9200\"\nbulk_max_bytes = 10",
                &["key `elasticsearch.bulk_max_bytes`", "65536"],
            ),
            (
                "url = \"http://es:9200\"\nbatch = 1",
                &["unknown field `batch`", "index_prefix"],
            ),
        ];
        for (section, needles) in cases {
            let err = parse(&format!("{GOOD}\n[elasticsearch]\n{section}"))
                .unwrap_err()
                .to_string();
            assert!(!err.contains("pw"), "{err}");
            for n in *needles {
                assert!(err.contains(n), "expected {n:?} in: {err}");
            }
        }
    }
}
