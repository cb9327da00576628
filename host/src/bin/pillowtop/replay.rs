//! `pillowtop replay` and the feed half of `pillowtop plugin check`.

use anyhow::{Result, bail};
use pillowtop::config::HostConfig;
use pillowtop::feed::TopicPartition;
use pillowtop::replay::{self, Range, ReplayRequest, ReplaySummary, Replayed};
use std::path::PathBuf;

/// `pillowtop replay`'s arguments.
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// The pillow whose feed and plugins are used.
    #[arg(long)]
    pillow: String,
    /// Only this partition (`topic:N`).
    #[arg(long)]
    partition: Option<TopicPartition>,
    /// First offset (default: the first the feed holds).
    #[arg(long)]
    from: Option<u64>,
    /// Stop before this offset (default: the end when the replay starts).
    #[arg(long)]
    to: Option<u64>,
    /// Run this manifest's plugin (one of the pillow's, by name) instead
    /// of the pillow's processors.
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// With --plugin: run the pillow's version beside it and print only
    /// the changes on which they differ.
    #[arg(long, requires = "plugin")]
    diff: bool,
    /// Print JSON lines (one per finding, then a summary line).
    #[arg(long)]
    json: bool,
}

/// Run `pillowtop replay`: exits non-zero with `--diff` when a
/// difference or a candidate failure was found.
pub async fn replay_command(config: &HostConfig, args: ReplayArgs) -> Result<()> {
    let request = ReplayRequest {
        pillow: args.pillow,
        range: Range {
            partition: args.partition,
            from: args.from,
            to: args.to,
            last: None,
        },
        candidate: args.plugin,
        diff: args.diff,
    };
    let summary = run(config, &request, args.json).await?;
    verdict(&summary)
}

/// `pillowtop plugin check --against-feed P --last N`: the candidate
/// beside the pillow's version on the last N changes of each partition.
pub async fn check_against_feed(
    config: &HostConfig,
    manifest: PathBuf,
    pillow: String,
    last: u64,
) -> Result<()> {
    let request = ReplayRequest {
        pillow,
        range: Range {
            last: Some(last),
            ..Range::default()
        },
        candidate: Some(manifest),
        diff: true,
    };
    let summary = run(config, &request, false).await?;
    verdict(&summary)
}

async fn run(config: &HostConfig, request: &ReplayRequest, json: bool) -> Result<ReplaySummary> {
    let print = |found: Replayed| {
        if json {
            println!(
                "{}",
                serde_json::to_string(&found).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
            );
            return;
        }
        match found {
            Replayed::Change {
                doc_id,
                topic,
                partition,
                offset,
                processor,
                version,
                result,
            } => println!("{topic}:{partition}@{offset} {doc_id} [{processor} {version}] {result}"),
            Replayed::Difference {
                processor,
                live_version,
                candidate_version,
                difference: d,
            } => {
                println!(
                    "{}:{}@{} {} [{processor}: {live_version} -> {candidate_version}]",
                    d.topic, d.partition, d.offset, d.doc_id
                );
                for line in &d.diff {
                    println!("    {line}");
                }
            }
            Replayed::Skipped {
                topic,
                partition,
                offset,
                reason,
            } => println!("{topic}:{partition}@{offset} skipped: {reason}"),
        }
    };
    let summary = replay::replay(config, request, print).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({"type": "summary", "summary": summary})
        );
    } else {
        let ranges: Vec<String> = summary
            .ranges
            .iter()
            .map(|(tp, from, to)| format!("{tp} [{from}, {to})"))
            .collect();
        eprintln!(
            "replayed {} changes ({} skipped) of {}; nothing was written",
            summary.changes,
            summary.skipped,
            if ranges.is_empty() {
                "an empty range".into()
            } else {
                ranges.join(", ")
            }
        );
        if let Some(t) = &summary.tally {
            eprintln!("{t}");
        }
    }
    Ok(summary)
}

fn verdict(summary: &ReplaySummary) -> Result<()> {
    if let Some(t) = &summary.tally
        && (t.differ > 0 || t.failures() > 0)
    {
        bail!(
            "the candidate differs on {} and fails on {} of {} changes (see above)",
            t.differ,
            t.failures(),
            t.changes()
        );
    }
    Ok(())
}
