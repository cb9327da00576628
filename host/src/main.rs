//! The `pillowtop` command: parse the CLI, set up logging, load and check
//! the config, then call into the library.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use pillowtop::admin::{self, Admin};
use pillowtop::config::PillowConfig;
use pillowtop::config::{FeedConfig, HostConfig};
use pillowtop::feed::Feed;
use pillowtop::feed::embedded::EmbeddedFeed;
use pillowtop::feed::kafka::KafkaFeed;
use pillowtop::manifest::Manifest;
use pillowtop::metrics::Metrics;
use pillowtop::pillow::{Pillow, RunOptions, RunSummary, Sinks};
use pillowtop::reload::{Follower, Plugins, ReloadOutcome};
use pillowtop::scaffold::{self, Lang};
use pillowtop::sink::elastic::ElasticSink;
use pillowtop::store::ProcessRecord;
use pillowtop::store::Store;
use pillowtop::wasm::Processor;
use pillowtop::wasm::{Runtime, RuntimeOptions};
use pillowtop::{fixtures, generate, status};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Run change processors as sandboxed WebAssembly components.
///
/// pillowtop reads change feeds, runs every change through the pillow's
/// plugins (Wasm components) under fuel, memory and time limits, and writes
/// the resulting documents and rows with checkpoints in one transaction.
#[derive(Parser)]
#[command(name = "pillowtop", version, propagate_version = true)]
struct Cli {
    /// Host config file.
    #[arg(
        long,
        short,
        global = true,
        env = "PILLOWTOP_CONFIG",
        default_value = "pillowtop.toml"
    )]
    config: PathBuf,

    /// Log filter (e.g. `info`, `pillowtop=debug`).
    #[arg(long, global = true, env = "PILLOWTOP_LOG", default_value = "info")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run pillows: read, process, write, checkpoint. Stops on Ctrl-C or
    /// SIGTERM after finishing the chunk in hand and saving checkpoints.
    Run {
        /// Run only this pillow (default: every pillow in the config).
        #[arg(long)]
        pillow: Option<String>,
        /// Stop once every partition reaches the end offset it had at start.
        #[arg(long)]
        until_caught_up: bool,
        /// Split the pillow's partitions across this many processes
        /// (default: the config's `num_processes`).
        #[arg(long)]
        num_processes: Option<u32>,
        /// This process's number, 0-based.
        #[arg(long, default_value_t = 0)]
        process_num: u32,
    },
    /// Append changes (JSON lines on stdin, ChangeMeta with an inline
    /// `document`) to a topic of the config's feed (or of Kafka at
    /// --brokers), keyed by `document_id`.
    Publish {
        /// Topic to append to.
        #[arg(long)]
        topic: String,
        /// Produce to these Kafka brokers instead of the config's feed.
        #[arg(long, env = "PILLOWTOP_KAFKA_BROKERS")]
        brokers: Option<String>,
        /// Partitions, when the topic is created (default 4).
        #[arg(long)]
        partitions: Option<u32>,
    },
    /// Show checkpoints, end offsets, need-processing, checkpoint age,
    /// errors and plugin versions per pillow and partition.
    Status {
        /// Only this pillow.
        #[arg(long)]
        pillow: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show or move checkpoints (after a retention gap, to skip a backlog,
    /// or to reprocess). Moving refuses while the pillow runs.
    Checkpoint {
        #[command(subcommand)]
        command: CheckpointCommand,
    },
    /// Create or upgrade the store's tables (checkpoints, pillow errors,
    /// processes) in the config's store. `run` does this too; use it to
    /// prepare a database ahead of deploying, e.g. from a migration job.
    Migrate,
    /// Work with plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Print deterministic synthetic CommCare-like changes as JSON lines.
    Gen {
        /// What to generate.
        #[arg(long, value_enum, default_value_t = GenKind::Case)]
        kind: GenKind,
        /// How many changes.
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Seed; the same seed gives the same output.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Number of domains to spread changes over.
        #[arg(long, default_value_t = 4)]
        domains: u32,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// The conformance kit, for a plugin in any language: load it, check
    /// its declaration against the manifest's capabilities, and run its
    /// golden fixtures (each --runs times on one instance and once on a
    /// fresh one, to check determinism); every action is checked against
    /// the declaration. Prints fuel and memory per fixture against the limits.
    Check {
        /// The plugin's manifest (`plugin.toml`).
        manifest: PathBuf,
        /// Compile cache directory.
        #[arg(long, default_value = "data/compile-cache")]
        compile_cache: PathBuf,
        /// Calls of each fixture on one instance (at least 2; a fresh
        /// instance runs it once more).
        #[arg(long, default_value_t = fixtures::DEFAULT_RUNS as u32, value_parser = clap::value_parser!(u32).range(2..=1000))]
        runs: u32,
        /// Largest component file loaded, in MiB (as `runtime.max_component_mb`).
        #[arg(long, default_value_t = 256)]
        max_component_mb: u32,
    },
    /// Scaffold a working plugin: source, manifest, one golden fixture and
    /// a Makefile that builds the component. Then: `make` in the new
    /// directory, `pillowtop plugin check DIR/plugin.toml`, and list the
    /// manifest in a pillow's `processors`.
    New {
        /// Plugin name: lowercase letters, digits and '-'.
        name: String,
        /// Language.
        #[arg(long, value_enum, default_value_t = LangArg::Rust)]
        lang: LangArg,
        /// Directory to create (default: plugins/NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The Rust SDK (plugins/sdk of a pillowtop checkout); found
        /// upwards from the current directory when omitted.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Ask the running host processes (found in the store named by
    /// --config) to load plugin NAME's files now. A new version that
    /// compiles, initialises and passes its fixtures goes live at the next
    /// chunk boundary; otherwise the running version stays and the reason
    /// is printed. Exits non-zero when a version is refused.
    Reload {
        /// Plugin name (as in its manifest); omit with --all.
        #[arg(required_unless_present = "all")]
        name: Option<String>,
        /// Reload every plugin.
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
}

#[derive(Subcommand)]
enum CheckpointCommand {
    /// Per partition: the checkpoint, the first and end offsets the feed
    /// holds, and whether there is a retention gap.
    Show {
        /// The pillow.
        #[arg(long)]
        pillow: String,
    },
    /// Set one partition's checkpoint to OFFSET (the next offset to read).
    Set {
        /// The pillow.
        #[arg(long)]
        pillow: String,
        /// `topic:partition`.
        #[arg(long)]
        partition: String,
        /// The next offset to read; within what the feed holds.
        #[arg(long)]
        offset: u64,
        /// Even if a process of the pillow looks alive.
        #[arg(long)]
        force: bool,
    },
    /// Move checkpoints to the first offset the feed holds (reprocess all).
    Reset(MoveArgs),
    /// Move checkpoints to the end (skip every change not yet processed).
    ToLatest(MoveArgs),
}

/// Which checkpoints `reset` and `to-latest` move.
#[derive(clap::Args)]
struct MoveArgs {
    /// The pillow.
    #[arg(long)]
    pillow: String,
    /// Only these partitions (`topic:partition`); default all.
    #[arg(long)]
    partition: Vec<String>,
    /// Even if a process of the pillow looks alive.
    #[arg(long)]
    force: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum LangArg {
    /// Rust with pillowtop-sdk.
    Rust,
    /// Python with componentize-py.
    Python,
    /// JavaScript with componentize-js.
    Js,
}

#[derive(Clone, Copy, ValueEnum)]
enum GenKind {
    /// CommCareCase changes (topic case-sql in CommCare).
    Case,
    /// XFormInstance changes (topic form-sql in CommCare).
    Form,
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(dispatch(cli));
    // Never wait on a blocking thread still running a plugin call (a stop
    // past its grace period leaves one behind): exiting ends it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Gen {
            kind,
            count,
            seed,
            domains,
        } => generate_changes(kind, count, seed, domains),
        Command::Plugin {
            command:
                PluginCommand::Check {
                    manifest,
                    compile_cache,
                    runs,
                    max_component_mb,
                },
        } => {
            let max_component_bytes = u64::from(max_component_mb) << 20;
            plugin_check(&manifest, compile_cache, runs as usize, max_component_bytes).await
        }
        Command::Migrate => {
            let config = HostConfig::load(&cli.config)?;
            let store = Store::connect(&config.store).await?;
            if let FeedConfig::Embedded { .. } = config.feed {
                open_feed(&config).await?;
            }
            println!("{}: migrations applied, up to date", store.location());
            Ok(())
        }
        Command::Checkpoint { command } => {
            let config = HostConfig::load(&cli.config)?;
            checkpoint_command(&config, command).await
        }
        Command::Plugin {
            command:
                PluginCommand::New {
                    name,
                    lang,
                    dir,
                    sdk,
                },
        } => plugin_new(&name, lang, dir, sdk),
        Command::Plugin {
            command: PluginCommand::Reload { name, all: _ },
        } => {
            let config = HostConfig::load(&cli.config)?;
            plugin_reload(&config, name.as_deref()).await
        }
        Command::Publish {
            topic,
            brokers,
            partitions,
        } => {
            let feed = match brokers {
                Some(b) => Feed::Kafka(KafkaFeed::connect(&b)?),
                None => open_feed(&HostConfig::load(&cli.config)?).await?,
            };
            publish(&feed, &topic, partitions).await
        }
        Command::Status { pillow, json } => {
            let config = HostConfig::load(&cli.config)?;
            let statuses = statuses(&config, pillow.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&statuses)?);
            } else {
                print!("{}", status::render(&statuses));
            }
            Ok(())
        }
        Command::Run {
            pillow,
            until_caught_up,
            num_processes,
            process_num,
        } => {
            let config = HostConfig::load(&cli.config)?;
            run(
                &config,
                pillow.as_deref(),
                RunOptions {
                    until_caught_up,
                    process_num,
                    num_processes,
                    progress: true,
                },
            )
            .await
        }
    }
}

async fn open_feed(config: &HostConfig) -> Result<Feed> {
    match &config.feed {
        FeedConfig::Embedded { path } => Ok(Feed::Embedded(EmbeddedFeed::open(path).await?)),
        FeedConfig::Kafka { brokers } => Ok(Feed::Kafka(KafkaFeed::connect(brokers)?)),
    }
}

fn generate_changes(kind: GenKind, count: u64, seed: u64, domains: u32) -> Result<()> {
    let kind = match kind {
        GenKind::Case => generate::Kind::Case,
        GenKind::Form => generate::Kind::Form,
    };
    let mut g = generate::Generator::new(generate::GenOptions {
        seed,
        domains,
        kind,
    });
    let bar = indicatif::ProgressBar::new(count);
    bar.set_style(
        indicatif::ProgressStyle::with_template("gen [{bar:40}] {pos}/{len} ({per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for i in 0..count {
        let line = g.next_line();
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
        if i % 1000 == 999 {
            bar.inc(1000);
        }
    }
    out.flush()?;
    bar.finish_and_clear();
    Ok(())
}

async fn publish(feed: &Feed, topic: &str, partitions: Option<u32>) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct Key {
        document_id: Option<String>,
    }
    let partitions = feed.create_topic(topic, partitions).await?;
    let producer = match feed {
        Feed::Kafka(k) => Some(k.producer()?),
        Feed::Embedded(_) => None,
    };
    let send = async |batch: Vec<(Option<Vec<u8>>, Vec<u8>)>| -> Result<usize> {
        Ok(match (feed, &producer) {
            (_, Some(p)) => p.publish(topic, batch).await?,
            (Feed::Embedded(f), None) => f.publish(topic, batch).await?,
            (Feed::Kafka(_), None) => unreachable!("a Kafka feed always has a producer"),
        })
    };
    let stdin = std::io::stdin();
    let mut batch = Vec::with_capacity(2000);
    let (mut total, mut unkeyed) = (0usize, 0usize);
    let bar = indicatif::ProgressBar::no_length();
    bar.set_style(
        indicatif::ProgressStyle::with_template("publish {spinner} {pos} changes ({per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    for line in stdin.lock().lines() {
        let line = line.context("reading changes from stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        // The key keeps one document's changes in one partition. A line
        // without a document_id is still published (the pillow records it
        // as a decode error), unkeyed.
        let key = serde_json::from_str::<Key>(&line)
            .ok()
            .and_then(|k| k.document_id)
            .map(String::into_bytes);
        if key.is_none() {
            unkeyed += 1;
        }
        batch.push((key, line.into_bytes()));
        if batch.len() == 2000 {
            total += send(std::mem::take(&mut batch)).await?;
            bar.set_position(total as u64);
        }
    }
    total += send(batch).await?;
    bar.finish_and_clear();
    eprintln!(
        "published {total} changes to {topic} ({partitions} partitions) in {}",
        feed.describe()
    );
    if unkeyed > 0 {
        eprintln!(
            "warning: {unkeyed} lines had no document_id; they were published without a key and will be recorded as decode errors"
        );
    }
    Ok(())
}

async fn statuses(config: &HostConfig, only: Option<&str>) -> Result<Vec<status::PillowStatus>> {
    let feed = open_feed(config).await?;
    let store = Store::connect(&config.store).await?;
    let mut out = Vec::new();
    for p in selected(config, only)? {
        out.push(
            status::pillow_status(p, &feed, &store, config.runtime.max_component_bytes()).await?,
        );
    }
    Ok(out)
}

fn selected<'a>(
    config: &'a HostConfig,
    only: Option<&str>,
) -> Result<Vec<&'a pillowtop::config::PillowConfig>> {
    match only {
        Some(name) => match config.pillow(name) {
            Some(p) => Ok(vec![p]),
            None => {
                let names: Vec<_> = config.pillows.iter().map(|p| p.name.as_str()).collect();
                bail!(
                    "no pillow named {name:?} in {}; pillows: {}",
                    config.path.display(),
                    names.join(", ")
                )
            }
        },
        None if config.pillows.is_empty() => bail!(
            "{} defines no pillows; add a [[pillows]] table",
            config.path.display()
        ),
        None => Ok(config.pillows.iter().collect()),
    }
}

fn runtime_for(config: &HostConfig) -> Result<Arc<Runtime>> {
    Ok(Arc::new(Runtime::new(RuntimeOptions {
        compile_cache_dir: Some(config.runtime.compile_cache_dir.clone()),
        max_component_bytes: config.runtime.max_component_bytes(),
        guest_log_lines_per_second: config.runtime.guest_log_lines_per_second,
        ..RuntimeOptions::default()
    })?))
}

/// Cancel `token` on the first Ctrl-C or SIGTERM, and `force` on the
/// second (stop without waiting for the chunk in hand).
fn stop_on_signals(token: CancellationToken, force: CancellationToken, grace: Duration) {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops gracefully");
                None
            }
        };
        for signal in 0.. {
            #[cfg(unix)]
            let got = match term.as_mut() {
                Some(term) => tokio::select! {
                    r = tokio::signal::ctrl_c() => r.is_ok(),
                    r = term.recv() => r.is_some(),
                },
                None => tokio::signal::ctrl_c().await.is_ok(),
            };
            #[cfg(not(unix))]
            let got = tokio::signal::ctrl_c().await.is_ok();
            if !got {
                return;
            }
            if signal == 0 {
                tracing::info!(
                    grace_seconds = grace.as_secs(),
                    "stopping: finishing the current chunk and saving checkpoints (up to runtime.shutdown_grace_seconds; a second signal stops at once)"
                );
                token.cancel();
            } else {
                tracing::warn!("second stop signal: stopping now");
                force.cancel();
                return;
            }
        }
    });
}

/// Resolves once a stop was requested and then `grace` passed (or a
/// second signal came): the time a stopping process may take is up.
async fn grace_over(shutdown: &CancellationToken, force: &CancellationToken, grace: Duration) {
    shutdown.cancelled().await;
    tokio::select! {
        _ = tokio::time::sleep(grace) => {},
        _ = force.cancelled() => {},
    }
}

async fn run(config: &HostConfig, only: Option<&str>, options: RunOptions) -> Result<()> {
    let pillows = selected(config, only)?;
    // Signals also stop a startup that waits for its store or sinks.
    let shutdown = CancellationToken::new();
    let force = CancellationToken::new();
    let grace = Duration::from_secs(config.runtime.shutdown_grace_seconds);
    stop_on_signals(shutdown.clone(), force.clone(), grace);
    let feed = open_feed(config).await?;
    let Some(store) = Store::connect_when_reachable(&config.store, &shutdown).await? else {
        tracing::warn!("stopped while waiting for the store at startup; nothing was read");
        return Ok(());
    };
    let elastic = config
        .elasticsearch
        .as_ref()
        .map(ElasticSink::connect)
        .transpose()?;
    let sinks = Sinks {
        store: store.clone(),
        elastic: elastic.clone(),
    };
    let runtime = runtime_for(config)?;
    let metrics = Arc::new(Metrics::new());
    let plugins = Arc::new(Plugins::new(runtime.clone(), metrics.clone()));

    let mut prepared = Vec::new();
    let mut indices = std::collections::BTreeSet::new();
    for p in pillows {
        let started = Instant::now();
        let (processors, followers) = load_pillow_plugins(&plugins, p).await?;
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
            p.clone(),
            feed.clone(),
            sinks.clone(),
            processors,
            &shutdown,
        )
        .await?
        else {
            tracing::warn!(pillow = %p.name, "stopped while waiting for a sink at startup; nothing was read");
            return Ok(());
        };
        let pillow = pillow.following(followers).with_metrics(metrics.clone());
        tracing::info!(pillow = %p.name, startup_ms = started.elapsed().as_secs_f64() * 1e3, "pillow ready");
        prepared.push((p, pillow));
    }

    // Side tasks stop with the pillows, not with the signal: the pillows
    // finish their chunk first.
    let side = CancellationToken::new();
    let admin_url = if config.admin.enabled {
        let admin = Admin::bind(&config.admin.listen_address).await?;
        let url = admin.url().to_owned();
        tracing::info!(%url, "admin endpoint: /metrics, /plugins, POST /plugins/NAME/reload");
        tokio::spawn(admin.serve(plugins.clone(), side.clone()));
        Some(url)
    } else {
        None
    };
    if config.reload.watch {
        tokio::spawn(plugins.clone().watch(
            Duration::from_millis(config.reload.poll_interval_ms),
            side.clone(),
        ));
    }
    reload_on_sighup(plugins.clone(), side.clone());
    let pid = std::process::id();
    let now = pillowtop::time::now_ms();
    for (p, _) in &prepared {
        store
            .register_process(&ProcessRecord {
                pillow: p.name.clone(),
                process_num: options.process_num,
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
        let store = store.clone();
        let side = side.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tokio::select! {
                    _ = side.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Err(e) = store.heartbeat(pid, pillowtop::time::now_ms()).await {
                    tracing::warn!(error = %e, "cannot record heartbeat");
                }
            }
        });
    }

    let tasks: Vec<_> = prepared
        .into_iter()
        .map(|(_, pillow)| tokio::spawn(pillow.run(options.clone(), shutdown.clone())))
        .collect();
    let joined = async {
        let mut summaries: Vec<RunSummary> = Vec::new();
        let mut failed = None;
        for t in tasks {
            match t.await {
                Ok(Ok(s)) => summaries.push(s),
                Ok(Err(e)) => {
                    // One pillow failing stops the others gracefully.
                    shutdown.cancel();
                    failed.get_or_insert(anyhow::Error::new(e));
                }
                Err(e) => {
                    shutdown.cancel();
                    failed.get_or_insert(anyhow::anyhow!("pillow task failed: {e}"));
                }
            }
        }
        (summaries, failed)
    };
    // A stop may take `grace`; a plugin call still running then (a long
    // limits.timeout_ms) is left behind on its thread, uncommitted.
    let (summaries, failed) = tokio::select! {
        joined = joined => joined,
        _ = grace_over(&shutdown, &force, grace) => {
            let stuck = runtime.calls_in_progress();
            for call in &stuck {
                tracing::error!(%call, "still running when the stop's grace period ended; its chunk is not committed and will be read again on restart");
            }
            side.cancel();
            // Best effort, bounded: the store may be what holds us up.
            let stopped = store.process_stopped(pid, pillowtop::time::now_ms());
            let _ = tokio::time::timeout(Duration::from_secs(2), stopped).await;
            bail!(
                "stopped before the chunk in hand finished (runtime.shutdown_grace_seconds = {}, or a second signal); {}; every committed chunk is kept and the rest is read again on restart",
                grace.as_secs(),
                match stuck.as_slice() {
                    [] => "no plugin call was running (a sink or the feed was still answering)".into(),
                    [call] => format!("{call} was still running"),
                    [call, more @ ..] => format!("{call} was still running, and {} more calls", more.len()),
                }
            )
        }
    };
    side.cancel();
    store
        .process_stopped(pid, pillowtop::time::now_ms())
        .await?;
    print_summary(config, &summaries, &store, &feed).await?;
    if let Some(es) = &elastic {
        println!("sinks ({}):", es.location());
        for index in &indices {
            es.refresh(index).await?;
            println!(
                "  index {}: {} documents",
                es.index_name(index),
                es.count(index).await?
            );
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// How often a running process records that it is alive.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Load a pillow's plugins (shared with other pillows listing the same
/// manifest) on a blocking thread: compiling can take seconds.
async fn load_pillow_plugins(
    plugins: &Arc<Plugins>,
    pillow: &PillowConfig,
) -> Result<(Vec<Processor>, Vec<Follower>)> {
    let plugins = plugins.clone();
    let manifests = pillow.processors.clone();
    let name = pillow.name.clone();
    tokio::task::spawn_blocking(move || {
        let mut processors = Vec::new();
        let mut followers = Vec::new();
        for path in &manifests {
            let (slot, timings) = plugins
                .load(path)
                .with_context(|| format!("pillow {name}: loading {}", path.display()))?;
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
    .await?
}

/// Reload every plugin on SIGHUP.
fn reload_on_sighup(plugins: Arc<Plugins>, stop: CancellationToken) {
    #[cfg(unix)]
    tokio::spawn(async move {
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
    });
    #[cfg(not(unix))]
    let _ = (plugins, stop);
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

async fn checkpoint_command(config: &HostConfig, command: CheckpointCommand) -> Result<()> {
    use pillowtop::checkpoint::{self, Move};
    let (name, partitions, to, force) = match command {
        CheckpointCommand::Show { pillow } => {
            let p = selected(config, Some(&pillow))?[0];
            let feed = open_feed(config).await?;
            let store = Store::connect(&config.store).await?;
            println!(
                "{:<28} {:>12} {:>12} {:>12}  state",
                "partition", "checkpoint", "first offset", "end offset"
            );
            for c in checkpoint::inspect(p, &feed, &store).await? {
                println!(
                    "{:<28} {:>12} {:>12} {:>12}  {}",
                    c.partition.to_string(),
                    c.checkpoint.map_or("-".into(), |v| v.to_string()),
                    c.first_offset,
                    c.end_offset,
                    if c.retention_gap() {
                        format!(
                            "RETENTION GAP: {}",
                            pillowtop::feed::gap_message(
                                &c.partition,
                                c.first_offset,
                                c.checkpoint.unwrap_or(0)
                            )
                        )
                    } else {
                        "ok".into()
                    }
                );
            }
            return Ok(());
        }
        CheckpointCommand::Set {
            pillow,
            partition,
            offset,
            force,
        } => (pillow, vec![partition], Move::To(offset), force),
        CheckpointCommand::Reset(a) => (a.pillow, a.partition, Move::Reset, a.force),
        CheckpointCommand::ToLatest(a) => (a.pillow, a.partition, Move::ToLatest, a.force),
    };
    let p = selected(config, Some(&name))?[0];
    let feed = open_feed(config).await?;
    let store = Store::connect(&config.store).await?;
    for (tp, old, new) in checkpoint::apply(p, &feed, &store, &partitions, to, force).await? {
        println!(
            "{tp}: checkpoint {} -> {new}",
            old.map_or("none".into(), |o| o.to_string())
        );
    }
    Ok(())
}

fn plugin_new(name: &str, lang: LangArg, dir: Option<PathBuf>, sdk: Option<PathBuf>) -> Result<()> {
    let lang = match lang {
        LangArg::Rust => Lang::Rust,
        LangArg::Python => Lang::Python,
        LangArg::Js => Lang::Js,
    };
    let dir = dir.unwrap_or_else(|| Path::new("plugins").join(name));
    let sdk = sdk.or_else(|| scaffold::find_sdk(&std::env::current_dir().ok()?));
    let files = scaffold::scaffold(name, lang, &dir, sdk.as_deref())?;
    println!("created plugin {name} in {}:", dir.display());
    for f in &files {
        println!("  {}", f.display());
    }
    let tool = match lang {
        Lang::Rust => "the wasm32-wasip2 target (added by make if missing)",
        Lang::Python => "componentize-py (pip install componentize-py)",
        Lang::Js => "componentize-js (npm install @bytecodealliance/componentize-js)",
    };
    println!(
        "next:\n  make -C {0}                      # builds the component; needs {tool}\n  pillowtop plugin check {0}/plugin.toml\n  add \"{0}/plugin.toml\" to a pillow's processors; a running host picks up every rebuild",
        dir.display()
    );
    Ok(())
}

/// `pillowtop plugin reload`: ask every live host process of the config's
/// pillows to reload `name` and print what each said.
async fn plugin_reload(config: &HostConfig, name: Option<&str>) -> Result<()> {
    let store = Store::connect(&config.store).await?;
    let now = pillowtop::time::now_ms();
    let stale_ms = 3 * HEARTBEAT.as_millis() as i64;
    let mut urls: Vec<String> = store
        .processes()
        .await?
        .into_iter()
        .filter(|p| p.stopped_at_ms.is_none() && now - p.heartbeat_at_ms < stale_ms)
        .filter_map(|p| p.admin_url)
        .collect();
    urls.sort();
    urls.dedup();
    if urls.is_empty() {
        bail!(
            "no running pillowtop process with an admin endpoint is recorded in the {}; start one with `pillowtop run`, or send it SIGHUP",
            config.store
        );
    }
    let mut refused = 0;
    for url in &urls {
        let outcomes = admin::request_reload(url, name).await?;
        if outcomes.is_empty() {
            println!("{url}: no plugins loaded");
        }
        for o in outcomes {
            if matches!(o, ReloadOutcome::Refused { .. }) {
                refused += 1;
            }
            println!("{url}: {o}");
        }
    }
    if refused > 0 {
        bail!("{refused} reload(s) refused; the running versions stay live (see above)");
    }
    Ok(())
}

async fn print_summary(
    config: &HostConfig,
    summaries: &[RunSummary],
    store: &Store,
    feed: &Feed,
) -> Result<()> {
    for s in summaries {
        let secs = s.elapsed.as_secs_f64().max(1e-9);
        println!(
            "pillow {}: {} changes read, {} processed ({} superseded in their chunk) in {:.2} s ({:.0} changes/s), {} chunks",
            s.pillow,
            s.messages,
            s.changes,
            s.deduplicated,
            secs,
            s.messages as f64 / secs,
            s.chunks
        );
        if s.extra_pieces > 0 {
            println!(
                "  {} extra pieces: chunks whose actions went over chunk_memory_mb were written in parts",
                s.extra_pieces
            );
        }
        let actions: Vec<_> = s.actions.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!(
            "  actions: {}",
            if actions.is_empty() {
                "none".into()
            } else {
                actions.join(", ")
            }
        );
        let errors: Vec<_> = s.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!(
            "  new pillow errors: {}",
            if errors.is_empty() {
                "none".into()
            } else {
                errors.join(", ")
            }
        );
        println!(
            "  time: waiting for the feed {:.2} s, decode {:.2} s (beside the transform), transform (wasm) {:.2} s, waiting for the store {:.2} s",
            s.read_time.as_secs_f64(),
            s.decode_time.as_secs_f64(),
            s.transform_time.as_secs_f64(),
            s.load_time.as_secs_f64()
        );
    }
    let counts = store.sink_counts().await?;
    println!("sinks ({}):", config.store);
    for (index, n) in &counts.documents {
        println!("  index {index}: {n} documents");
    }
    for (table, n) in &counts.rows {
        println!("  table {table}: {n} rows");
    }
    for s in summaries {
        if let Some(p) = config.pillow(&s.pillow) {
            let st =
                status::pillow_status(p, feed, store, config.runtime.max_component_bytes()).await?;
            let errors: u64 = st.errors.iter().map(|(_, n)| n).sum();
            println!(
                "pillow {}: lag (need-processing) {} over {} partitions; pillow errors stored: {errors}",
                s.pillow,
                st.need_processing,
                st.partitions.len()
            );
        }
    }
    Ok(())
}

async fn plugin_check(
    manifest_path: &Path,
    compile_cache: PathBuf,
    runs: usize,
    max_component_bytes: u64,
) -> Result<()> {
    let manifest = Manifest::load(manifest_path)?;
    let runtime = Runtime::new(RuntimeOptions {
        compile_cache_dir: Some(compile_cache),
        max_component_bytes,
        ..RuntimeOptions::default()
    })?;
    let m = manifest.clone();
    let (result, runtime) = tokio::task::spawn_blocking(move || {
        let r = runtime.load(&m);
        (r, runtime)
    })
    .await?;
    let (mut processor, timings) = result?;
    let plugin = processor.plugin().clone();
    println!(
        "plugin {} {} ({}): loaded in {:.0} ms ({:?}), instantiated in {:.2} ms, init {:.2} ms",
        manifest.name,
        plugin.version(),
        manifest.component.display(),
        timings.compile.as_secs_f64() * 1e3,
        timings.cache,
        timings.instantiate.as_secs_f64() * 1e3,
        timings.init.as_secs_f64() * 1e3,
    );
    let info = plugin.info();
    let indices: Vec<_> = info.indices.iter().map(|i| i.name.as_str()).collect();
    let tables: Vec<_> = info.tables.iter().map(|t| t.name.as_str()).collect();
    println!(
        "  declares indices {indices:?}, tables {tables:?} (within the manifest's capabilities)"
    );
    let Some(dir) = &manifest.fixtures else {
        println!(
            "  no fixtures: add `fixtures = \"fixtures\"` to the manifest and golden files to that directory"
        );
        return Ok(());
    };
    let fixtures = fixtures::load(dir)?;
    if fixtures.is_empty() {
        bail!("fixtures directory {} has no *.json files", dir.display());
    }
    let (results, _runtime) = tokio::task::spawn_blocking(move || {
        let results: Vec<_> = fixtures
            .iter()
            .map(|(name, f)| fixtures::run_times(&mut processor, name, f, runs))
            .collect();
        (results, runtime)
    })
    .await?;
    let mut failed = 0;
    let limits = manifest.limits;
    let percent = |fuel: u64| fuel as f64 * 100.0 / limits.fuel.max(1) as f64;
    for r in &results {
        match &r.failure {
            None => println!(
                "  ok    {:<32} fuel {:>12} ({:>5.2}% of limits.fuel)  memory {:>4} MiB of {}",
                r.name,
                r.fuel_used,
                percent(r.fuel_used),
                r.memory_bytes.div_ceil(1 << 20),
                limits.memory_mb
            ),
            Some(why) => {
                failed += 1;
                println!("  FAIL  {:<32} {why}", r.name);
            }
        }
    }
    let max_fuel = results.iter().map(|r| r.fuel_used).max().unwrap_or(0);
    // Fixtures are small; real documents can be many times larger, so
    // advise a wide margin over the largest fixture.
    const HEADROOM: u64 = 20;
    println!(
        "fuel: the costliest fixture used {max_fuel} ({:.2}% of limits.fuel = {}); \
         keep limits.fuel at least {HEADROOM}x the cost of your largest real change",
        percent(max_fuel),
        limits.fuel
    );
    if max_fuel.saturating_mul(HEADROOM) > limits.fuel {
        println!(
            "  warning: less than {HEADROOM}x headroom; larger documents may run out of fuel. Consider limits.fuel = {}",
            max_fuel.saturating_mul(HEADROOM)
        );
    }
    println!(
        "fixtures: {} passed, {failed} failed",
        results.len() - failed
    );
    if failed > 0 {
        bail!(
            "{failed} of {} fixtures failed for {}",
            results.len(),
            manifest.name
        );
    }
    Ok(())
}
