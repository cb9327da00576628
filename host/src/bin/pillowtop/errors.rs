//! `pillowtop errors ...`: the operator tools for pillow errors.

use anyhow::{Result, bail};
use clap::Subcommand;
use pillowtop::config::HostConfig;
use pillowtop::errors::ops::{Filter, Requeue, purge_resolved, requeue};
use pillowtop::errors::{ErrorKind, ErrorState};
use pillowtop::store::Store;
use pillowtop::triage;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand)]
pub enum ErrorsCommand {
    /// Pillow errors, newest first, with counts by state, kind and domain.
    List {
        #[command(flatten)]
        filter: ErrorFilter,
        /// Errors listed (the counts cover all).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One error in full: the change, its metadata, kind, message, plugin
    /// version, attempts and times.
    Show {
        /// The error's id (first column of `errors list`).
        id: i64,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Queue errors for a retry now, starting a new series of attempts
    /// (CommCare's reset): one by id, or every open error the filters
    /// match with --all.
    Retry {
        /// The error's id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Every pending and parked error the filters match.
        #[arg(long)]
        all: bool,
        /// Only parked ones.
        #[arg(long, requires = "all")]
        parked: bool,
        #[command(flatten)]
        filter: ErrorFilter,
    },
    /// Delete resolved errors.
    Purge {
        /// Resolved errors (the only ones that can be purged).
        #[arg(long, required = true)]
        resolved: bool,
        /// Only those resolved longer ago than this (`30d`, `12h`, `45m`).
        #[arg(long, value_parser = parse_age)]
        older_than: Option<Duration>,
    },
    /// Write an error's stored change as a golden fixture of its plugin.
    Fixture {
        /// The error's id.
        id: i64,
        /// The plugin's fixtures directory.
        #[arg(long)]
        dir: PathBuf,
        /// Expect what the live plugin version returns now (otherwise
        /// the stored error kind, to edit into what it should be).
        #[arg(long)]
        expect_current: bool,
    },
}

/// Which errors an `errors` command covers.
#[derive(clap::Args)]
pub struct ErrorFilter {
    /// Only this pillow.
    #[arg(long)]
    pillow: Option<String>,
    /// Only this processor (plugin name).
    #[arg(long)]
    processor: Option<String>,
    /// Only this domain.
    #[arg(long)]
    domain: Option<String>,
    /// Only this kind (decode, fuel, timeout, memory, output, trap, capability, malformed, retryable, permanent, instantiate, rejected).
    #[arg(long, value_parser = parse_kind)]
    kind: Option<ErrorKind>,
    /// Only this state (pending, parked, resolved).
    #[arg(long, value_parser = parse_state)]
    state: Option<ErrorState>,
}

impl ErrorFilter {
    fn into_filter(self) -> Filter {
        Filter {
            pillow: self.pillow,
            processor: self.processor,
            domain: self.domain,
            kind: self.kind,
            state: self.state,
        }
    }
}

fn parse_kind(s: &str) -> Result<ErrorKind, String> {
    ErrorKind::parse(s).ok_or_else(|| {
        let all: Vec<_> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        format!("{s:?} is not an error kind; kinds: {}", all.join(", "))
    })
}

fn parse_state(s: &str) -> Result<ErrorState, String> {
    ErrorState::parse(s)
        .ok_or_else(|| format!("{s:?} is not a state; states: pending, parked, resolved"))
}

/// `30d`, `12h`, `45m`, `90s`.
fn parse_age(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not an age like 30d, 12h, 45m or 90s"))?;
    let secs = match unit {
        "d" => n * 86_400,
        "h" => n * 3600,
        "m" => n * 60,
        "s" => n,
        _ => return Err(format!("{s:?} is not an age like 30d, 12h, 45m or 90s")),
    };
    Ok(Duration::from_secs(secs))
}

pub async fn errors_command(config: &HostConfig, command: ErrorsCommand) -> Result<()> {
    let store = Store::connect(&config.store).await?;
    let now = pillowtop::time::now_ms();
    match command {
        ErrorsCommand::List {
            filter,
            limit,
            json,
        } => {
            let listing = triage::list(&store, &filter.into_filter(), limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listing)?);
            } else {
                print!("{listing}");
            }
        }
        ErrorsCommand::Show { id, json } => {
            let e = triage::get(&store, id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                print!("{}", triage::show(&e, now));
            }
        }
        ErrorsCommand::Retry {
            id,
            all,
            parked,
            filter,
        } => {
            let which = match id {
                Some(id) => {
                    let e = triage::get(&store, id).await?;
                    if e.state == ErrorState::Resolved {
                        bail!(
                            "pillow error {id} is resolved (a newer change of {} passed): retrying its stale change could put old data over new",
                            e.doc_id
                        );
                    }
                    Requeue::Id(id)
                }
                None if all => {
                    let mut filter = filter.into_filter();
                    if parked {
                        filter.state = Some(ErrorState::Parked);
                    }
                    if filter.state == Some(ErrorState::Resolved) {
                        bail!(
                            "resolved errors are not retried (a newer change passed); --state pending or parked"
                        );
                    }
                    Requeue::All(filter)
                }
                None => bail!("give an error id, or --all"),
            };
            let n = requeue(store.db(), &which, now).await?;
            println!(
                "{n} pillow errors queued for a retry now (a new series of attempts); the retry queue of `pillowtop run` or `pillowtop retry` takes them"
            );
        }
        ErrorsCommand::Purge {
            resolved: _,
            older_than,
        } => {
            let before = now - older_than.map_or(0, |d| d.as_millis() as i64);
            let n = purge_resolved(store.db(), before).await?;
            println!("{n} resolved pillow errors deleted");
        }
        ErrorsCommand::Fixture {
            id,
            dir,
            expect_current,
        } => {
            let path = triage::write_fixture(config, &store, id, &dir, expect_current).await?;
            println!(
                "wrote {}; `pillowtop plugin check MANIFEST` runs it",
                path.display()
            );
        }
    }
    Ok(())
}
