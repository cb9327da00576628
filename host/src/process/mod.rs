//! The whole host process as one library call.
//!
//! [`run`] opens what the config names (feed, store, Elasticsearch),
//! loads the plugins, prepares each pillow, then supervises every task —
//! the pillows, the admin endpoint, the plugin file watcher, SIGHUP
//! reloads, the heartbeat — in one `JoinSet` until a stop or the first
//! fatal error, and returns what the run did. `main` only parses the
//! command line and prints; tests start a host in-process through the
//! same call.
//!
//! Stopping ([`Stop`]): a graceful stop lets every pillow finish the chunk
//! in hand and save its checkpoints, within `runtime.shutdown_grace_seconds`.
//! When that time is up (or [`Stop::force`] is called, as a second signal
//! does), the run returns at once with [`ProcessError::GraceOver`], naming
//! the plugin calls still running; their chunks are not committed and are
//! read again on restart.

mod report;
mod retry;

pub use report::Report;
pub use retry::retry;

use crate::admin::{Admin, BindError, Context};
use crate::config::{HostConfig, PillowConfig, StoreLocation};
use crate::feed::{Feed, FeedError};
use crate::metrics::Metrics;
use crate::pillow::{Pillow, RunError, RunOptions, RunSummary};
use crate::reload::{Follower, Plugins, StartError};
use crate::resource::Resources;
use crate::retry::{RetryError, RetrySummary};
use crate::sink::elastic::{ElasticError, ElasticSink};
use crate::sink::{SinkError, Sinks};
use crate::status::StatusError;
use crate::store::{HEARTBEAT, Liveness, ProcessRecord, Store, StoreError};
use crate::wasm::calls::CallInProgress;
use crate::wasm::{Processor, Runtime, RuntimeOptions};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How a running host is asked to stop.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    graceful: CancellationToken,
    now: CancellationToken,
}

impl Stop {
    /// A handle nobody has pulled yet.
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Stop gracefully: every pillow finishes the chunk in hand and saves
    /// its checkpoints (within `runtime.shutdown_grace_seconds`).
    pub fn request(&self) {
        self.graceful.cancel();
    }

    /// Stop now, without waiting for the chunks in hand (after a
    /// [`Stop::request`]; a second signal).
    pub fn force(&self) {
        self.graceful.cancel();
        self.now.cancel();
    }

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        self.graceful.is_cancelled()
    }

    /// Resolves once a stop is requested.
    pub async fn requested_wait(&self) {
        self.graceful.cancelled().await;
    }

    /// Resolves once a stop was requested and then `grace` passed (or a
    /// forced stop came): the time a stopping process may take is up.
    async fn grace_over(&self, grace: Duration) {
        self.graceful.cancelled().await;
        tokio::select! {
            _ = tokio::time::sleep(grace) => {},
            _ = self.now.cancelled() => {},
        }
    }
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct ProcessOptions {
    /// Only this pillow (default: every pillow in the config).
    pub pillow: Option<String>,
    /// How each pillow runs (process number, until caught up, progress).
    pub run: RunOptions,
    /// Reload every plugin on SIGHUP (the binary; not for tests).
    pub reload_on_sighup: bool,
    /// Candidates to run beside their plugins' live versions from the
    /// start (manifests; `pillowtop run --shadow`).
    pub shadow: Vec<std::path::PathBuf>,
}

/// Why the host could not run, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The config names no such pillow, or none.
    #[error("{0}")]
    Config(String),
    /// The feed could not be opened.
    #[error(transparent)]
    Feed(#[from] FeedError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The embedded store is in use by another process.
    #[error(
        "{store} is in use by pillowtop process {pid} on {host} (pillow {pillow}, process {process_num}, heartbeat {seconds}s ago): the embedded store serves one process; stop that one first (SIGTERM), or use a PostgreSQL store to run several"
    )]
    StoreInUse {
        /// Which store.
        store: String,
        /// The process holding it.
        pid: u32,
        /// Its host.
        host: String,
        /// Its pillow.
        pillow: String,
        /// Its process number.
        process_num: u32,
        /// Seconds since its last heartbeat.
        seconds: i64,
    },
    /// Elasticsearch is configured wrong.
    #[error(transparent)]
    Elastic(#[from] ElasticError),
    /// The SQL sinks could not be read for the summary.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// Status could not be gathered for the summary.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// The Wasm runtime could not start (a wasmtime build problem).
    #[error("cannot start the WebAssembly runtime: {0}")]
    Runtime(String),
    /// A plugin of a pillow could not be loaded.
    #[error("pillow {pillow}: loading {path}: {source}")]
    Plugin {
        /// Pillow.
        pillow: String,
        /// The manifest.
        path: String,
        /// Why.
        source: Box<StartError>,
    },
    /// A pillow could not start.
    #[error(transparent)]
    Pillow(Box<RunError>),
    /// The admin endpoint could not listen.
    #[error(transparent)]
    Admin(#[from] BindError),
    /// The stop took longer than its grace period (or was forced) while
    /// plugin calls still ran; their chunks are not committed.
    #[error(
        "stopped before the chunk in hand finished (runtime.shutdown_grace_seconds = {grace_seconds}, or a second signal); {}; every committed chunk is kept and the rest is read again on restart",
        describe_stuck(stuck)
    )]
    GraceOver {
        /// The grace period.
        grace_seconds: u64,
        /// The plugin calls still running, longest first.
        stuck: Vec<CallInProgress>,
    },
    /// A retry queue failed.
    #[error(transparent)]
    Retry(Box<RetryError>),
    /// A task of the process panicked (a host bug).
    #[error("a task of the process failed (a bug in pillowtop; please report it): {0}")]
    Task(String),
}

impl From<RunError> for ProcessError {
    fn from(e: RunError) -> ProcessError {
        ProcessError::Pillow(Box::new(e))
    }
}

fn describe_stuck(stuck: &[CallInProgress]) -> String {
    match stuck {
        [] => "no plugin call was running (a sink or the feed was still answering)".into(),
        [call] => format!("{call} was still running"),
        [call, more @ ..] => format!("{call} was still running, and {} more calls", more.len()),
    }
}

/// What a run did, and where things stand after it.
#[derive(Debug, Default)]
pub struct ProcessSummary {
    /// What each pillow did.
    pub pillows: Vec<RunSummary>,
    /// A pillow that stopped with an error (the others were then stopped
    /// gracefully); the caller should exit non-zero.
    pub failed: Option<RunError>,
    /// Where documents and rows stand.
    pub report: Option<Report>,
    /// The admin endpoint's URL, when it ran.
    pub admin_url: Option<String>,
    /// What each pillow's retry queue did (the queues run in process 0).
    pub retries: Vec<RetrySummary>,
}

/// Run the host: every pillow `options` selects, until `stop` (or, with
/// `run.until_caught_up`, until each is caught up).
///
/// # Errors
///
/// See [`ProcessError`]. A pillow that fails after starting does not make
/// this an error: it is in [`ProcessSummary::failed`], with what every
/// pillow did.
pub async fn run(
    config: &HostConfig,
    options: ProcessOptions,
    stop: &Stop,
) -> Result<ProcessSummary, ProcessError> {
    let pillows = selected(config, options.pillow.as_deref())?;
    let Some(Opened {
        feed,
        store,
        sinks,
        lookups,
        runtime,
        metrics,
        plugins,
    }) = open(config, stop).await?
    else {
        return Ok(ProcessSummary::default());
    };
    let mut prepared = Vec::new();
    let mut queues = Vec::new();
    let mut indices = BTreeSet::new();
    for p in &pillows {
        let started = Instant::now();
        let (processors, followers) = load_pillow_plugins(&plugins, p).await?;
        refuse_undeclared_lookups(config, p, &processors, &lookups)?;
        for processor in &processors {
            indices.extend(
                processor
                    .plugin()
                    .info()
                    .indices
                    .iter()
                    .map(|i| i.name.clone()),
            );
        }
        let Some(pillow) = Pillow::new_when_reachable(
            (*p).clone(),
            feed.clone(),
            sinks.clone(),
            processors,
            &stop.graceful,
        )
        .await?
        else {
            tracing::warn!(pillow = %p.name, "stopped while waiting for a sink at startup; nothing was read");
            return Ok(ProcessSummary::default());
        };
        if options.run.process_num == 0 {
            queues.extend(retry::queue(p, &sinks, &followers, &metrics, &feed, stop)?);
        }
        let pillow = pillow
            .following(followers)
            .with_metrics(metrics.clone())
            .with_lookups(lookups.clone());
        tracing::info!(pillow = %p.name, startup_ms = started.elapsed().as_secs_f64() * 1e3, "pillow ready");
        prepared.push((p.name.clone(), pillow));
    }
    for manifest in &options.shadow {
        stage_candidate(&plugins, manifest).await?;
    }

    // Side tasks stop with the pillows, not with the stop request: the
    // pillows finish their chunk first.
    let side = CancellationToken::new();
    let mut tasks: JoinSet<Task> = JoinSet::new();
    let admin_url = if config.admin.enabled {
        let admin = Admin::bind(&config.admin).await?;
        let url = admin.url().to_owned();
        tracing::info!(%url, "admin endpoint: / (firefighting page), /status, /healthz, /metrics, /plugins");
        let context = Context {
            plugins: plugins.clone(),
            pillows: pillows.iter().map(|p| (*p).clone()).collect(),
            feed: feed.clone(),
            store: store.clone(),
            process_num: options.run.process_num,
            config: Arc::new(config.clone()),
            gathered: Default::default(),
        };
        let side = side.clone();
        tasks.spawn(async move {
            admin.serve(context, side).await;
            Task::Side("admin endpoint")
        });
        Some(url)
    } else {
        None
    };
    if config.reload.watch {
        let interval = Duration::from_millis(config.reload.poll_interval_ms);
        let (plugins, side) = (plugins.clone(), side.clone());
        tasks.spawn(async move {
            plugins.watch(interval, side).await;
            Task::Side("plugin file watcher")
        });
    }
    if options.reload_on_sighup {
        let (plugins, side) = (plugins.clone(), side.clone());
        tasks.spawn(async move {
            reload_on_sighup(plugins, side).await;
            Task::Side("SIGHUP reloads")
        });
    }
    let pid = std::process::id();
    let now = crate::time::now_ms();
    // Names first: a borrow of a `Pillow` (its processors are not `Sync`)
    // held across an await would make this future unsendable.
    let names: Vec<String> = prepared.iter().map(|(name, _)| name.clone()).collect();
    for name in names {
        store
            .register_process(&ProcessRecord {
                pillow: name,
                process_num: options.run.process_num,
                pid,
                host: hostname(),
                admin_url: admin_url.clone(),
                started_at_ms: now,
                heartbeat_at_ms: now,
                stopped_at_ms: None,
                waiting: None,
            })
            .await?;
    }
    {
        let (store, side) = (store.clone(), side.clone());
        tasks.spawn(async move {
            heartbeat(store, pid, side).await;
            Task::Side("heartbeat")
        });
    }
    let mut running = prepared.len();
    for (_, pillow) in prepared {
        let (run, graceful) = (options.run.clone(), stop.graceful.clone());
        tasks.spawn(async move { Task::Pillow(Box::new(pillow.run(run, graceful).await)) });
    }
    // A retry queue stops with the pillows (after its batch in hand).
    for queue in queues {
        let side = side.clone();
        tasks.spawn(async move { Task::Retry(Box::new(queue.run(side).await)) });
    }

    let grace = Duration::from_secs(config.runtime.shutdown_grace_seconds);
    let mut summary = ProcessSummary {
        admin_url,
        ..ProcessSummary::default()
    };
    let grace_over = stop.grace_over(grace);
    tokio::pin!(grace_over);
    while running > 0 {
        let joined = tokio::select! {
            joined = tasks.join_next() => joined,
            _ = &mut grace_over => {
                let stuck = runtime.calls_in_progress();
                for call in &stuck {
                    tracing::error!(%call, "still running when the stop's grace period ended; its chunk is not committed and will be read again on restart");
                }
                side.cancel();
                // Best effort, bounded: the store may be what holds us up.
                let stopped = store.process_stopped(pid, crate::time::now_ms());
                let _ = tokio::time::timeout(Duration::from_secs(2), stopped).await;
                // Tasks are dropped; a plugin call on a blocking thread is
                // left to the process's exit.
                tasks.abort_all();
                return Err(ProcessError::GraceOver { grace_seconds: grace.as_secs(), stuck });
            }
        };
        match joined {
            None => break,
            Some(Ok(Task::Pillow(result))) => {
                running -= 1;
                match *result {
                    Ok(s) => summary.pillows.push(s),
                    Err(e) => {
                        // One pillow failing stops the others gracefully.
                        stop.request();
                        tracing::error!(error = %e, "a pillow stopped with an error; stopping the others");
                        summary.failed.get_or_insert(e);
                    }
                }
            }
            Some(Ok(Task::Side(what))) => {
                if !side.is_cancelled() {
                    tracing::warn!(task = what, "a side task ended before the pillows");
                }
            }
            Some(Ok(Task::Retry(result))) => retried(*result, &mut summary),
            Some(Err(e)) => {
                side.cancel();
                tasks.abort_all();
                return Err(ProcessError::Task(e.to_string()));
            }
        }
    }
    side.cancel();
    // The side tasks stop at once on `side`, a retry queue after its batch
    // in hand; don't let one hold the exit (an unfinished batch is not
    // committed, and its errors stay due).
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(joined) = tasks.join_next().await {
            if let Ok(Task::Retry(result)) = joined {
                retried(*result, &mut summary);
            }
        }
    })
    .await;
    store.process_stopped(pid, crate::time::now_ms()).await?;
    summary.report = Some(report::report(config, &feed, &sinks, &summary.pillows, &indices).await?);
    Ok(summary)
}

/// What a supervised task ended with.
enum Task {
    Pillow(Box<Result<RunSummary, RunError>>),
    Retry(Box<Result<RetrySummary, RetryError>>),
    Side(&'static str),
}

/// Note what a retry queue did; one that failed is logged (the pillows go
/// on: their errors wait for the next run's queue).
fn retried(result: Result<RetrySummary, RetryError>, summary: &mut ProcessSummary) {
    match result {
        Ok(s) => summary.retries.push(s),
        Err(e) => {
            tracing::error!(error = %e, "a retry queue stopped; pillow errors wait for the next run (or `pillowtop retry`)");
        }
    }
}

/// What a process opens before its pillows start.
struct Opened {
    feed: Feed,
    store: Store,
    sinks: Sinks,
    lookups: Arc<Resources>,
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    plugins: Arc<Plugins>,
}

/// Open the feed, the store (waiting for it while `stop` allows; `None`
/// when stopped first), Elasticsearch and the Wasm runtime of `config`.
async fn open(config: &HostConfig, stop: &Stop) -> Result<Option<Opened>, ProcessError> {
    let feed = Feed::open(&config.feed).await?;
    let Some(store) = Store::connect_when_reachable(&config.store, &stop.graceful).await? else {
        tracing::warn!("stopped while waiting for the store at startup; nothing was read");
        return Ok(None);
    };
    refuse_if_embedded_store_in_use(config, &store).await?;
    let elastic = config
        .elasticsearch
        .as_ref()
        .map(ElasticSink::connect)
        .transpose()?;
    let sinks = Sinks::new(store.clone(), elastic);
    let lookups = Arc::new(
        Resources::open(
            &config.lookups,
            store.db(),
            tokio::runtime::Handle::current(),
        )
        .map_err(|e| ProcessError::Config(format!("{}: {e}", config.path.display())))?,
    );
    let runtime = Arc::new(
        Runtime::new(RuntimeOptions {
            lookups: lookups.clone(),
            ..RuntimeOptions::from_config(&config.runtime)
        })
        .map_err(|e| ProcessError::Runtime(format!("{e:#}")))?,
    );
    let metrics = Arc::new(Metrics::new());
    let reported = lookups.clone();
    metrics.collect_with(Box::new(move |m| reported.report(m)));
    let plugins =
        Arc::new(Plugins::new(runtime.clone(), metrics.clone()).with_reload_config(&config.reload));
    Ok(Some(Opened {
        feed,
        store,
        sinks,
        lookups,
        runtime,
        metrics,
        plugins,
    }))
}

/// A plugin granted a lookup resource the host does not declare would
/// fail every change that asks for it: refuse to start instead, saying
/// what to add.
fn refuse_undeclared_lookups(
    config: &HostConfig,
    pillow: &PillowConfig,
    processors: &[Processor],
    lookups: &Resources,
) -> Result<(), ProcessError> {
    for processor in processors {
        let manifest = processor.plugin().manifest();
        if let Some(missing) = manifest
            .capabilities
            .lookups
            .iter()
            .find(|r| !lookups.contains(r))
        {
            return Err(ProcessError::Config(format!(
                "pillow {}: plugin {} ({}) is granted lookup resource {missing:?}, which {} does not declare; add a [lookups.{missing}] table there (see docs/lookups.md)",
                pillow.name,
                manifest.name,
                manifest.path.display(),
                config.path.display(),
            )));
        }
    }
    Ok(())
}

/// The pillows a command covers: the one named, or every pillow.
///
/// # Errors
///
/// When the config names no such pillow, or none at all.
pub fn selected<'a>(
    config: &'a HostConfig,
    only: Option<&str>,
) -> Result<Vec<&'a PillowConfig>, ProcessError> {
    match only {
        Some(name) => match config.pillow(name) {
            Some(p) => Ok(vec![p]),
            None => {
                let names: Vec<_> = config.pillows.iter().map(|p| p.name.as_str()).collect();
                Err(ProcessError::Config(format!(
                    "no pillow named {name:?} in {}; pillows: {}",
                    config.path.display(),
                    names.join(", ")
                )))
            }
        },
        None if config.pillows.is_empty() => Err(ProcessError::Config(format!(
            "{} defines no pillows; add a [[pillows]] table",
            config.path.display()
        ))),
        None => Ok(config.pillows.iter().collect()),
    }
}

/// The embedded (SQLite) store serves one process: refuse to start while
/// another live process has it (by the liveness rule; on this host, its
/// pid must also exist, so a crashed process does not hold it).
pub(crate) async fn refuse_if_embedded_store_in_use(
    config: &HostConfig,
    store: &Store,
) -> Result<(), ProcessError> {
    if !matches!(config.store, StoreLocation::Sqlite { .. }) {
        return Ok(());
    }
    let now = crate::time::now_ms();
    let me = std::process::id();
    let host = hostname();
    let holder = store.processes().await?.into_iter().find(|p| {
        p.pid != me
            && p.liveness(now) == Liveness::Running
            && (p.host != host || std::path::Path::new(&format!("/proc/{}", p.pid)).exists())
    });
    match holder {
        Some(p) => Err(ProcessError::StoreInUse {
            store: store.location().to_owned(),
            seconds: p.seconds_since_heartbeat(now),
            pid: p.pid,
            host: p.host,
            pillow: p.pillow,
            process_num: p.process_num,
        }),
        None => Ok(()),
    }
}

/// Run the candidate in `manifest` beside its plugin's live version from
/// the first chunk (`pillowtop run --shadow`).
async fn stage_candidate(
    plugins: &Arc<Plugins>,
    manifest: &std::path::Path,
) -> Result<(), ProcessError> {
    let refuse =
        |why: String| ProcessError::Config(format!("--shadow {}: {why}", manifest.display()));
    let name = crate::manifest::Manifest::load(manifest)
        .map_err(|e| refuse(e.to_string()))?
        .name;
    let Some(slot) = plugins.slots().into_iter().find(|s| s.name() == name) else {
        return Err(refuse(format!(
            "no pillow of this run has a processor named {name}"
        )));
    };
    let (plugins, path) = (plugins.clone(), manifest.to_owned());
    let outcome = tokio::task::spawn_blocking(move || plugins.shadow(&slot, Some(&path)))
        .await
        .map_err(|e| ProcessError::Task(e.to_string()))?;
    match outcome {
        crate::reload::DeployOutcome::Shadowing { .. } => Ok(()),
        other => Err(refuse(other.to_string())),
    }
}

/// Load a pillow's plugins (shared with other pillows listing the same
/// manifest) on a blocking thread: compiling can take seconds.
async fn load_pillow_plugins(
    plugins: &Arc<Plugins>,
    pillow: &PillowConfig,
) -> Result<(Vec<Processor>, Vec<Follower>), ProcessError> {
    let plugins = plugins.clone();
    let manifests = pillow.processors.clone();
    let name = pillow.name.clone();
    tokio::task::spawn_blocking(move || {
        let mut processors = Vec::new();
        let mut followers = Vec::new();
        for path in &manifests {
            let (slot, timings) = plugins.load(path).map_err(|source| ProcessError::Plugin {
                pillow: name.clone(),
                path: path.display().to_string(),
                source: Box::new(source),
            })?;
            let (processor, follower) = Follower::start(slot);
            match timings {
                Some(t) => tracing::info!(
                    pillow = %name,
                    plugin = %processor.plugin().manifest().name,
                    version = %processor.plugin().version(),
                    cache = ?t.cache,
                    compile_ms = t.compile.as_secs_f64() * 1e3,
                    instantiate_ms = t.instantiate.as_secs_f64() * 1e3,
                    "plugin loaded"
                ),
                None => tracing::info!(pillow = %name, plugin = %processor.plugin().manifest().name, "plugin shared with another pillow"),
            }
            processors.push(processor);
            followers.push(follower);
        }
        Ok((processors, followers))
    })
    .await
    .map_err(|e| ProcessError::Task(e.to_string()))?
}

/// Record that this process is alive, every [`HEARTBEAT`], until `stop`.
async fn heartbeat(store: Store, pid: u32, stop: CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = store.heartbeat(pid, crate::time::now_ms()).await {
            tracing::warn!(error = %e, "cannot record heartbeat");
        }
    }
}

/// Reload every plugin on SIGHUP, until `stop`.
async fn reload_on_sighup(plugins: Arc<Plugins>, stop: CancellationToken) {
    #[cfg(unix)]
    {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload through the admin endpoint instead");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            tracing::info!("SIGHUP: reloading every plugin");
            for outcome in plugins.reload_named(None).await {
                tracing::info!(%outcome, "SIGHUP reload");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = plugins;
        stop.cancelled().await;
    }
}

/// This machine's name, for process records.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_grace_period_starts_at_the_stop_request_and_a_second_signal_ends_it() {
        let grace = Duration::from_secs(20);
        let stop = Stop::new();
        // No stop requested: the grace never runs out.
        let over = tokio::time::timeout(Duration::from_secs(3600), stop.grace_over(grace)).await;
        assert!(over.is_err(), "no stop, no grace period");
        stop.request();
        let started = tokio::time::Instant::now();
        stop.grace_over(grace).await;
        assert_eq!(started.elapsed(), grace);
        // Forced: over at once.
        let stop = Stop::new();
        stop.request();
        stop.force();
        let started = tokio::time::Instant::now();
        stop.grace_over(grace).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[test]
    fn a_stop_past_its_grace_names_the_calls_left_behind() {
        let call = |plugin: &str| CallInProgress {
            plugin: plugin.into(),
            call: "init",
            change: None,
            running_for: Duration::from_secs(3),
        };
        let text = |stuck| {
            ProcessError::GraceOver {
                grace_seconds: 20,
                stuck,
            }
            .to_string()
        };
        assert!(text(vec![]).contains("no plugin call was running"));
        assert!(
            text(vec![call("a@1")]).contains("plugin a@1 in init for 3.0 s was still running;")
        );
        assert!(
            text(vec![call("a@1"), call("b@1")]).contains("was still running, and 1 more calls")
        );
    }
}
