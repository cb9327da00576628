//! `pillowtop checkpoint ...`: show and move a pillow's checkpoints.

use anyhow::Result;
use clap::Subcommand;
use pillowtop::checkpoint;
use pillowtop::config::HostConfig;
use pillowtop::feed::Feed;
use pillowtop::process::selected;
use pillowtop::store::Store;

#[derive(Subcommand)]
pub enum CheckpointCommand {
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
pub struct MoveArgs {
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

pub async fn checkpoint_command(config: &HostConfig, command: CheckpointCommand) -> Result<()> {
    use checkpoint::Move;
    let (name, partitions, to, force) = match command {
        CheckpointCommand::Show { pillow } => {
            let p = selected(config, Some(&pillow))?[0];
            let feed = Feed::open(&config.feed).await?;
            let store = Store::connect(&config.store).await?;
            println!(
                "{:<28} {:>12} {:>12} {:>12}  state",
                "partition", "checkpoint", "first offset", "end offset"
            );
            for c in checkpoint::inspect(p, &feed, &store).await? {
                let state = match c.checkpoint.filter(|_| c.retention_gap()) {
                    Some(needed) => format!(
                        "RETENTION GAP: {}",
                        pillowtop::feed::gap_message(&c.partition, c.first_offset, needed)
                    ),
                    None => "ok".to_owned(),
                };
                println!(
                    "{:<28} {:>12} {:>12} {:>12}  {state}",
                    c.partition.to_string(),
                    c.checkpoint.map_or("-".into(), |v| v.to_string()),
                    c.first_offset,
                    c.end_offset,
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
    let feed = Feed::open(&config.feed).await?;
    let store = Store::connect(&config.store).await?;
    for (tp, old, new) in checkpoint::apply(p, &feed, &store, &partitions, to, force).await? {
        println!(
            "{tp}: checkpoint {} -> {new}",
            old.map_or("none".into(), |o| o.to_string())
        );
    }
    Ok(())
}
