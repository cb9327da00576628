//! The lookup resources a host config declares (`[lookups.NAME]`),
//! served to plugins through [`crate::lookup::Lookups`] with a cache per
//! resource, and prefetched a chunk at a time.

use crate::config::lookup::{LookupConfig, LookupSource, TableLookup};
use crate::config::source::DocumentSourceConfig;
use crate::db::{Db, quote};
use crate::lookup::{Cache, LookupError, Lookups};
use crate::metrics::{Metric, Metrics};
use crate::source::{DocumentSource, SourceError};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Answers read, by key: JSON text, or why the stored value is unusable.
type Answers = HashMap<String, Result<String, String>>;

/// Why a resource could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("lookups.{name}: {message}")]
pub struct OpenError {
    /// The resource.
    pub name: String,
    /// What is wrong.
    pub message: String,
}

/// Why a read failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    /// What happened, and what to do.
    pub message: String,
    /// Whether the same read may work later (the server is down or busy).
    pub outage: bool,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl crate::outage::Outage for FetchError {
    fn is_outage(&self) -> bool {
        self.outage
    }
}

/// What one resource has served since the process started.
#[derive(Debug, Default)]
pub struct Stats {
    calls: AtomicU64,
    hits: AtomicU64,
    queries: AtomicU64,
    errors: AtomicU64,
    nanos: AtomicU64,
}

impl Stats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn queried(&self, took: Duration) {
        Stats::bump(&self.queries);
        self.nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Lookups plugins made.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Lookups answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Queries sent to the resource (one per prefetch or cache miss).
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Lookups and prefetches that failed.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Time spent waiting on the resource.
    pub fn time(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

/// A table of the store, read by its key column.
struct StoreTable {
    db: Db,
    table: String,
    key: String,
}

enum Backend {
    /// A PostgreSQL query or an Elasticsearch index, read as a document
    /// source reads documents: the key as the id.
    Source(DocumentSource),
    Table(StoreTable),
}

struct Resource {
    backend: Backend,
    cache: Cache,
    /// Without a cache (`ttl_seconds = 0`): the answers prefetched for
    /// chunks in progress, each with how many chunks hold it, dropped
    /// when the last of them has run (see [`Resources::release`]).
    held: std::sync::Mutex<HashMap<String, (Option<String>, u32)>>,
    stats: Stats,
}

impl Resource {
    /// Without a cache, prefetched answers are held for their chunk.
    fn holds(&self) -> bool {
        !self.cache.enabled()
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Option<String>, u32)>> {
        // A poisoned lock only means a thread panicked mid-update; the
        // entries are whole values either way.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The host's lookup resources.
pub struct Resources {
    by_name: BTreeMap<String, Resource>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resources")
            .field("names", &self.by_name.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Resources {
    /// Open the resources `configs` declares (connections are made on
    /// first use). `store` serves `type = "table"` resources. Lookups
    /// made inside plugin calls (blocking threads) run on `runtime`.
    ///
    /// # Errors
    ///
    /// A URL that does not parse.
    pub fn open(
        configs: &BTreeMap<String, LookupConfig>,
        store: &Db,
        runtime: tokio::runtime::Handle,
    ) -> Result<Resources, OpenError> {
        let mut by_name = BTreeMap::new();
        for (name, config) in configs {
            let fail = |e: SourceError| OpenError {
                name: name.clone(),
                message: source_message(e),
            };
            let backend = match &config.source {
                LookupSource::Postgres(p) => Backend::Source(
                    DocumentSource::open(&DocumentSourceConfig::Postgres(p.clone()))
                        .map_err(fail)?,
                ),
                LookupSource::Elasticsearch(e) => Backend::Source(
                    DocumentSource::open(&DocumentSourceConfig::Elasticsearch(e.clone()))
                        .map_err(fail)?,
                ),
                LookupSource::Table(TableLookup { table, key }) => Backend::Table(StoreTable {
                    db: store.clone(),
                    table: table.clone(),
                    key: key.clone(),
                }),
            };
            let cache = Cache::new(
                config.cache_entries,
                Duration::from_secs(config.ttl_seconds),
            );
            by_name.insert(
                name.clone(),
                Resource {
                    backend,
                    cache,
                    held: Default::default(),
                    stats: Stats::default(),
                },
            );
        }
        Ok(Resources { by_name, runtime })
    }

    /// Whether the config declares `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// What each resource has served, by name.
    pub fn stats(&self) -> impl Iterator<Item = (&str, &Stats)> {
        self.by_name.iter().map(|(n, r)| (n.as_str(), &r.stats))
    }

    /// Copy the counters into `metrics` (called when `/metrics` is read).
    pub fn report(&self, metrics: &Metrics) {
        for (name, stats) in self.stats() {
            let labels = [("resource", name)];
            metrics.set(Metric::LookupCallsTotal, &labels, stats.calls() as f64);
            metrics.set(Metric::LookupCacheHitsTotal, &labels, stats.hits() as f64);
            metrics.set(Metric::LookupQueriesTotal, &labels, stats.queries() as f64);
            metrics.set(Metric::LookupErrorsTotal, &labels, stats.errors() as f64);
            metrics.set(
                Metric::LookupSecondsTotal,
                &labels,
                stats.time().as_secs_f64(),
            );
        }
    }

    /// Read the answers for `keys` the cache lacks in one query. A
    /// resource without a cache (`ttl_seconds` or `cache_entries` 0: a
    /// table the pillow writes, say) holds them instead for the chunk
    /// that asked, so its calls still hit memory and see the resource as
    /// it was when the chunk started, as their own queries would: the
    /// keys it holds come back, to [`Resources::release`] once the chunk
    /// has run.
    ///
    /// # Errors
    ///
    /// When the resource fails; [`FetchError::outage`] says whether to
    /// wait and try again.
    pub async fn prefetch(&self, resource: &str, keys: &[&str]) -> Result<Vec<String>, FetchError> {
        let Some(r) = self.by_name.get(resource) else {
            return Ok(Vec::new());
        };
        let holds = r.holds();
        let mut keys: Vec<&str> = keys.to_vec();
        keys.sort_unstable();
        keys.dedup();
        let now = Instant::now();
        let missing: Vec<&str> = if holds {
            let held = r.held();
            keys.iter()
                .copied()
                .filter(|k| !held.contains_key(*k))
                .collect()
        } else {
            keys.iter()
                .copied()
                .filter(|k| !r.cache.has(k, now))
                .collect()
        };
        let mut answers = if missing.is_empty() {
            Answers::new()
        } else {
            let started = Instant::now();
            let read = r.backend.fetch(&missing).await;
            r.stats.queried(started.elapsed());
            read.inspect_err(|_| Stats::bump(&r.stats.errors))?
        };
        if !holds {
            let now = Instant::now();
            for key in missing {
                match answers.remove(key) {
                    None => r.cache.put(key, None, now),
                    Some(Ok(value)) => r.cache.put(key, Some(value), now),
                    // Not kept: the call that asks for it reports it.
                    Some(Err(_)) => {}
                }
            }
            return Ok(Vec::new());
        }
        let mut held = r.held();
        let mut holding = Vec::with_capacity(keys.len());
        for key in keys {
            let entry = match held.get_mut(key) {
                Some(entry) => entry,
                None => match answers.remove(key) {
                    None => held.entry(key.to_owned()).or_insert((None, 0)),
                    Some(Ok(value)) => held.entry(key.to_owned()).or_insert((Some(value), 0)),
                    // Not held: the call that asks for it queries and
                    // reports it.
                    Some(Err(_)) => continue,
                },
            };
            entry.1 += 1;
            holding.push(key.to_owned());
        }
        Ok(holding)
    }

    /// Whether prefetching `resource` holds its answers for a chunk (it
    /// has no cache) rather than caching them.
    pub fn holds(&self, resource: &str) -> bool {
        self.by_name.get(resource).is_some_and(Resource::holds)
    }

    /// The chunk that prefetched `keys` of `resource` has run: drop the
    /// answers no other chunk holds.
    pub fn release(&self, resource: &str, keys: &[String]) {
        let Some(r) = self.by_name.get(resource) else {
            return;
        };
        let mut held = r.held();
        for key in keys {
            if let Some(entry) = held.get_mut(key) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    held.remove(key);
                }
            }
        }
    }
}

impl Lookups for Resources {
    fn get(
        &self,
        resource: &str,
        key: &str,
        deadline: Instant,
    ) -> Result<Option<String>, LookupError> {
        let unavailable = |message: String| LookupError::Unavailable {
            resource: resource.to_owned(),
            message,
        };
        let Some(r) = self.by_name.get(resource) else {
            return Err(unavailable(format!(
                "the host config declares no [lookups.{resource}]; declare it there, or take it out of the plugin's capabilities.lookups"
            )));
        };
        Stats::bump(&r.stats.calls);
        if r.holds()
            && let Some((answer, _)) = r.held().get(key)
        {
            Stats::bump(&r.stats.hits);
            return Ok(answer.clone());
        }
        let now = Instant::now();
        if let Some(answer) = r.cache.get(key, now) {
            Stats::bump(&r.stats.hits);
            return Ok(answer);
        }
        let timeout = || LookupError::Timeout {
            resource: resource.to_owned(),
        };
        let left = deadline.saturating_duration_since(now);
        if left.is_zero() {
            return Err(timeout());
        }
        let read = self
            .runtime
            .block_on(tokio::time::timeout(left, r.backend.fetch(&[key])));
        r.stats.queried(now.elapsed());
        let answer = match read {
            Err(_) => Err(timeout()),
            Ok(Err(e)) => Err(unavailable(e.message)),
            Ok(Ok(mut answers)) => match answers.remove(key) {
                None => Ok(None),
                Some(Ok(value)) => Ok(Some(value)),
                Some(Err(why)) => Err(unavailable(format!(
                    "its value for key {key:?} is unusable: {why}"
                ))),
            },
        };
        match &answer {
            Ok(value) => r.cache.put(key, value.clone(), Instant::now()),
            Err(_) => Stats::bump(&r.stats.errors),
        }
        answer
    }
}

/// A document source's error in a lookup's words.
fn source_message(e: SourceError) -> String {
    match e {
        SourceError::Database { database, source } => format!(
            "database {database}: {source}; check the database runs and the resource's source names it"
        ),
        SourceError::Shape { database, message } => format!("database {database}: {message}"),
        SourceError::Elastic(e) => e.to_string(),
        SourceError::Url { database, message } => {
            format!("invalid URL for database {database}: {message}")
        }
    }
}

impl Backend {
    async fn fetch(&self, keys: &[&str]) -> Result<Answers, FetchError> {
        match self {
            Backend::Source(source) => source.fetch(keys).await.map_err(|e| FetchError {
                outage: e.is_outage(),
                message: source_message(e),
            }),
            Backend::Table(table) => table.fetch(keys).await.map_err(|e| FetchError {
                outage: crate::db::is_outage(&e),
                message: format!(
                    "store table {:?} (key column {:?}): {e}; the plugin that writes it creates it when its pillow starts",
                    table.table, table.key
                ),
            }),
        }
    }
}

impl StoreTable {
    /// Every row whose key column equals one of `keys` (as text), as a
    /// JSON array of row objects per key.
    async fn fetch(&self, keys: &[&str]) -> Result<Answers, sqlx::Error> {
        let (table, key) = (quote(&self.table), quote(&self.key));
        let rows = match &self.db {
            Db::Postgres(pool) => {
                let sql = format!(
                    "SELECT t.{key}::text, json_agg(t)::text FROM {table} t WHERE t.{key}::text = ANY($1) GROUP BY 1"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(keys)
                    .fetch_all(pool)
                    .await?;
                pairs(rows)?
            }
            Db::Sqlite(database) => {
                let pool = &database.pool;
                let columns: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT name FROM pragma_table_info('{}')",
                    self.table
                )))
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()?;
                if columns.is_empty() {
                    return Err(sqlx::Error::Protocol(format!(
                        "no such table: {}",
                        self.table
                    )));
                }
                let object: Vec<String> = columns
                    .iter()
                    .map(|c| format!("'{c}', {}", quote(c)))
                    .collect();
                let sql = format!(
                    "SELECT CAST({key} AS TEXT), json_group_array(json_object({})) FROM {table} WHERE CAST({key} AS TEXT) IN (SELECT value FROM json_each(?1)) GROUP BY 1",
                    object.join(", ")
                );
                let keys = serde_json::to_string(keys).expect("strings serialize");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(keys)
                    .fetch_all(pool)
                    .await?;
                pairs(rows)?
            }
        };
        Ok(rows)
    }
}

/// (key, JSON text) rows as answers.
fn pairs<R: Row>(rows: Vec<R>) -> Result<Answers, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.into_iter()
        .map(|row| Ok((row.try_get(0)?, Ok(row.try_get(1)?))))
        .collect()
}
