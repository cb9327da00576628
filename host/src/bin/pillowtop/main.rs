//! The `pillowtop` command: parse the command line, set up logging,
//! dispatch to the library and print what it returns. Everything else
//! lives in the library (`pillowtop::process::run` is the host itself).

mod checkpoint;
mod errors;
mod plugin;
mod replay;
mod sample;
mod status;
mod ucr;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use pillowtop::config::{FeedConfig, HostConfig};
use pillowtop::feed::Feed;
use pillowtop::feed::kafka::KafkaFeed;
use pillowtop::generate;
use pillowtop::pillow::RunOptions;
use pillowtop::process::{self, ProcessOptions, Stop};
use pillowtop::store::Store;
use std::path::PathBuf;
use std::time::Duration;

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

    /// Log lines as text, or as one JSON object per line (for a log
    /// pipeline: every field is a key, e.g. pillow, topic, partition,
    /// offset, doc_id on a line about a change).
    #[arg(
        long,
        global = true,
        env = "PILLOWTOP_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,

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
        /// Run the candidate in this manifest beside its plugin's live
        /// version from the first chunk, as `pillowtop plugin shadow`
        /// does in a running host (repeatable).
        #[arg(long)]
        shadow: Vec<PathBuf>,
    },
    /// Run the retry queue of each pillow (`pillowtop run` runs it too):
    /// due pillow errors are tried again, round-robin by domain, with
    /// CommCare's schedule. Stops on Ctrl-C or SIGTERM after its batch.
    Retry {
        /// Only this pillow's queue (default: every pillow).
        #[arg(long)]
        pillow: Option<String>,
        /// Stop once fewer than a batch are due, instead of waiting for more.
        #[arg(long)]
        once: bool,
    },
    /// Inspect and act on pillow errors: list, show, retry, purge, and
    /// turn one into a plugin fixture.
    Errors {
        #[command(subcommand)]
        command: errors::ErrorsCommand,
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
    /// Show checkpoints, positions processed, end offsets,
    /// need-processing, change lag, checkpoint age, errors, the retry
    /// queue, processes, sinks and plugin versions per pillow and
    /// partition (the structure `GET /status` serves).
    Status {
        /// Only this pillow.
        #[arg(long)]
        pillow: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Redraw every 2 seconds until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
    /// Show or move checkpoints (after a retention gap, to skip a backlog,
    /// or to reprocess). Moving refuses while the pillow runs.
    Checkpoint {
        #[command(subcommand)]
        command: checkpoint::CheckpointCommand,
    },
    /// Create or upgrade the store's tables (checkpoints, pillow errors,
    /// processes) in the config's store. `run` does this too; use it to
    /// prepare a database ahead of deploying, e.g. from a migration job.
    Migrate,
    /// Work with plugins.
    Plugin {
        #[command(subcommand)]
        command: plugin::PluginCommand,
    },
    /// Run a plugin version over a range of a pillow's feed (embedded or
    /// Kafka) and print the actions, or with --diff how a candidate's
    /// differ from the pillow's version. Read-only: no checkpoint is saved,
    /// no error recorded, nothing written.
    Replay(replay::ReplayArgs),
    /// Tools for UCR data sources (the `ucr` plugin).
    Ucr {
        #[command(subcommand)]
        command: ucr::UcrCommand,
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
        /// With `--kind related`: the folder to write `case-sql.jsonl`,
        /// `form-sql.jsonl` and `primary.sql` to (created if missing).
        #[arg(long)]
        out: Option<PathBuf>,
        /// With `--kind related`: the PostgreSQL schema `primary.sql`
        /// loads the known users and the cases into.
        #[arg(long, default_value = "commcarehq")]
        primary_schema: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum GenKind {
    /// CommCareCase changes (topic case-sql in CommCare).
    Case,
    /// XFormInstance changes (topic form-sql in CommCare).
    Form,
    /// Forms and the cases they create and update, with known and
    /// unknown users, valid and invalid phone numbers and repeat groups,
    /// for the full stack (needs --out; --count counts submissions).
    Related,
}

fn main() {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
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
        eprintln!("error: {}", each_cause_once(&e));
        std::process::exit(1);
    }
}

/// The error and its causes, each said once: a cause whose text its
/// parent's message already holds (our errors say what went wrong, with
/// the cause, and what to do) is not repeated.
fn each_cause_once(e: &anyhow::Error) -> String {
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    message
}

async fn dispatch(cli: Cli) -> Result<()> {
    let config = || HostConfig::load(&cli.config);
    match cli.command {
        Command::Gen {
            kind,
            count,
            seed,
            domains,
            out,
            primary_schema,
        } => match (kind, out) {
            (GenKind::Related, Some(out)) => {
                sample::related(&out, count, seed, domains, &primary_schema)
            }
            (GenKind::Related, None) => Err(anyhow::anyhow!(
                "--kind related writes three files (case and form changes, the primary database's SQL): give the folder with --out DIR"
            )),
            (_, Some(_)) => Err(anyhow::anyhow!(
                "--out is for --kind related; case and form changes go to stdout (redirect it)"
            )),
            (GenKind::Case, None) => sample::changes(generate::Kind::Case, count, seed, domains),
            (GenKind::Form, None) => sample::changes(generate::Kind::Form, count, seed, domains),
        },
        Command::Replay(args) => replay::replay_command(&config()?, args).await,
        Command::Plugin { command } => plugin::plugin_command(command, || Ok(config()?)).await,
        Command::Migrate => {
            let config = config()?;
            let store = Store::connect(&config.store).await?;
            if let FeedConfig::Embedded { .. } = config.feed {
                Feed::open(&config.feed).await?;
            }
            println!("{}: migrations applied, up to date", store.location());
            Ok(())
        }
        Command::Ucr { command } => {
            ucr::ucr_command(
                command,
                || Ok(config()?),
                |config| {
                    let stop = Stop::new();
                    stop_on_signals(stop.clone(), config.runtime.shutdown_grace_seconds);
                    stop
                },
            )
            .await
        }
        Command::Checkpoint { command } => {
            checkpoint::checkpoint_command(&config()?, command).await
        }
        Command::Errors { command } => errors::errors_command(&config()?, command).await,
        Command::Retry { pillow, once } => {
            let config = config()?;
            let stop = Stop::new();
            stop_on_signals(stop.clone(), config.runtime.shutdown_grace_seconds);
            for s in process::retry(&config, pillow.as_deref(), once, &stop).await? {
                let outcomes: Vec<_> = s.outcomes.iter().map(|(k, n)| format!("{k} {n}")).collect();
                println!(
                    "pillow {}: {} batches; {}",
                    s.pillow,
                    s.batches,
                    if outcomes.is_empty() {
                        "nothing was due".into()
                    } else {
                        outcomes.join(", ")
                    }
                );
            }
            Ok(())
        }
        Command::Publish {
            topic,
            brokers,
            partitions,
        } => {
            let feed = match brokers {
                Some(b) => Feed::Kafka(KafkaFeed::connect(&b)?),
                None => Feed::open(&config()?.feed).await?,
            };
            publish(&feed, &topic, partitions).await
        }
        Command::Status {
            pillow,
            json,
            watch,
        } => status::status_command(&config()?, pillow.as_deref(), json, watch).await,
        Command::Run {
            pillow,
            until_caught_up,
            num_processes,
            process_num,
            shadow,
        } => {
            let config = config()?;
            let stop = Stop::new();
            stop_on_signals(stop.clone(), config.runtime.shutdown_grace_seconds);
            let options = ProcessOptions {
                pillow,
                run: RunOptions {
                    until_caught_up,
                    process_num,
                    num_processes,
                    progress: true,
                },
                reload_on_sighup: true,
                shadow,
            };
            let summary = process::run(&config, options, &stop).await?;
            print!("{summary}");
            match summary.failed {
                Some(e) => Err(e.into()),
                None => Ok(()),
            }
        }
    }
}

/// Stop gracefully on the first Ctrl-C or SIGTERM, at once on the second.
fn stop_on_signals(stop: Stop, grace_seconds: u64) {
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
        loop {
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
            if !stop.requested() {
                tracing::info!(
                    grace_seconds,
                    "stopping: finishing the current chunk and saving checkpoints (up to runtime.shutdown_grace_seconds; a second signal stops at once)"
                );
                stop.request();
            } else {
                tracing::warn!("second stop signal: stopping now");
                stop.force();
                return;
            }
        }
    });
}

async fn publish(feed: &Feed, topic: &str, partitions: Option<u32>) -> Result<()> {
    let bar = indicatif::ProgressBar::no_length();
    bar.set_style(
        indicatif::ProgressStyle::with_template("publish {spinner} {pos} changes ({per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let stdin = std::io::stdin();
    let done =
        pillowtop::feed::publish::publish_lines(feed, topic, partitions, stdin.lock(), |n| {
            bar.set_position(n as u64)
        })
        .await?;
    bar.finish_and_clear();
    eprintln!(
        "published {} changes to {topic} ({} partitions) in {}",
        done.total,
        done.partitions,
        feed.describe()
    );
    if done.unkeyed > 0 {
        eprintln!(
            "warning: {} lines had no document_id; they were published without a key and will be recorded as decode errors",
            done.unkeyed
        );
    }
    Ok(())
}
