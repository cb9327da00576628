//! `pillowtop plugin ...`: check, scaffold, reload and deploy plugins.

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use pillowtop::config::HostConfig;
use pillowtop::conformance::{self, CheckOptions};
use pillowtop::reload::{Deploy, ReloadOutcome};
use pillowtop::scaffold::{self, Lang};
use pillowtop::store::Store;
use pillowtop::{admin, fixtures};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum PluginCommand {
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
        /// Also compare the plugin with this pillow's version of it (the
        /// config's manifest of the same name) on the pillow's recent
        /// changes: a deploy gate. Fails on any difference or failure.
        #[arg(long, requires = "last")]
        against_feed: Option<String>,
        /// With --against-feed: the last this many changes of each partition.
        #[arg(long, requires = "against_feed")]
        last: Option<u64>,
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
    /// Run a candidate version of plugin NAME beside the live one in the
    /// running host processes: it is compiled, initialised and
    /// fixture-checked as for a reload, then gets every change the live
    /// version gets; its actions are compared with the live version's and
    /// never written. `plugin diff NAME` shows what differs; `status` the
    /// counts; `plugin promote NAME` makes it live.
    Shadow {
        /// Plugin name (as in its manifest).
        name: String,
        /// The candidate's manifest (the same plugin name); required
        /// unless --stop.
        #[arg(required_unless_present = "stop")]
        manifest: Option<PathBuf>,
        /// Stop the running candidate instead.
        #[arg(long, conflicts_with = "manifest")]
        stop: bool,
    },
    /// Make plugin NAME's candidate live at each pillow's next chunk
    /// boundary (its tables and indices created first); the live version
    /// is kept compiled for `plugin rollback`.
    Promote {
        /// Plugin name.
        name: String,
    },
    /// Bring back the version live before plugin NAME's live one, at each
    /// pillow's next chunk boundary.
    Rollback {
        /// Plugin name.
        name: String,
    },
    /// Show how plugin NAME's candidate differs from the live version:
    /// counts per pillow process and the kept differences (change, both
    /// action lists, where they differ). Read from the store; the host
    /// need not run.
    Diff {
        /// Plugin name.
        name: String,
        /// The candidate version (default: the one compared most recently).
        #[arg(long)]
        version: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LangArg {
    /// Rust with pillowtop-sdk.
    Rust,
    /// Python with componentize-py.
    Python,
    /// JavaScript with componentize-js.
    Js,
}

/// Run a `plugin` command.
pub async fn plugin_command(
    command: PluginCommand,
    config: impl Fn() -> Result<HostConfig>,
) -> Result<()> {
    match command {
        PluginCommand::Check {
            manifest,
            compile_cache,
            runs,
            max_component_mb,
            against_feed,
            last,
        } => {
            let options = CheckOptions {
                compile_cache,
                runs: runs as usize,
                max_component_bytes: u64::from(max_component_mb) << 20,
            };
            let report = conformance::check(&manifest, options).await?;
            print!("{report}");
            let failed = report.failed();
            if failed > 0 {
                bail!(
                    "{failed} of {} fixtures failed for {}",
                    report.fixtures.as_ref().map_or(0, Vec::len),
                    report.manifest.name
                );
            }
            match (against_feed, last) {
                (Some(pillow), Some(last)) => {
                    crate::replay::check_against_feed(&config()?, manifest, pillow, last).await
                }
                _ => Ok(()),
            }
        }
        PluginCommand::New {
            name,
            lang,
            dir,
            sdk,
        } => plugin_new(&name, lang, dir, sdk),
        PluginCommand::Reload { name, all: _ } => plugin_reload(&config()?, name.as_deref()).await,
        PluginCommand::Shadow {
            name,
            manifest,
            stop,
        } => {
            let command = match manifest {
                // The host reads the manifest: give it an absolute path.
                Some(m) if !stop => Deploy::Shadow {
                    manifest: std::fs::canonicalize(&m)
                        .with_context(|| format!("candidate manifest {}", m.display()))?,
                },
                _ => Deploy::StopShadow,
            };
            deploy(&config()?, &name, &command).await
        }
        PluginCommand::Promote { name } => deploy(&config()?, &name, &Deploy::Promote).await,
        PluginCommand::Rollback { name } => deploy(&config()?, &name, &Deploy::Rollback).await,
        PluginCommand::Diff {
            name,
            version,
            json,
        } => diff(&config()?, &name, version.as_deref(), json).await,
    }
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
/// store to reload `name` and print what each said.
async fn plugin_reload(config: &HostConfig, name: Option<&str>) -> Result<()> {
    let store = Store::connect(&config.store).await?;
    let mut refused = 0;
    for (url, outcomes) in admin::Client::for_config(&config.admin)
        .reload_running(&store, name)
        .await?
    {
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

/// `pillowtop plugin shadow | promote | rollback`: ask every live host
/// process of the config's store and print what each did.
async fn deploy(config: &HostConfig, name: &str, command: &Deploy) -> Result<()> {
    let store = Store::connect(&config.store).await?;
    let mut failed = 0;
    for (url, outcomes) in admin::Client::for_config(&config.admin)
        .deploy_running(&store, name, command)
        .await?
    {
        for o in outcomes {
            if !o.succeeded() {
                failed += 1;
            }
            println!("{url}: {o}");
        }
    }
    if failed > 0 {
        bail!("{failed} host process(es) did not do it (see above)");
    }
    Ok(())
}

/// `pillowtop plugin diff`: the candidate's counts and kept differences.
async fn diff(config: &HostConfig, name: &str, version: Option<&str>, json: bool) -> Result<()> {
    let store = Store::connect(&config.store).await?;
    let runs = store.shadow_runs(Some(name)).await?;
    let Some(candidate) = version
        .map(str::to_owned)
        .or_else(|| runs.first().map(|r| r.candidate_version.clone()))
    else {
        bail!(
            "no candidate of plugin {name} has run in the {}; start one with `pillowtop plugin shadow {name} MANIFEST`",
            store.location()
        );
    };
    let runs: Vec<_> = runs
        .into_iter()
        .filter(|r| r.candidate_version == candidate)
        .collect();
    let diffs = store.shadow_diffs(name, &candidate).await?;
    if json {
        let out = serde_json::json!({"plugin": name, "candidate": candidate, "runs": runs, "differences": diffs});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("plugin {name}, candidate {candidate}");
    for r in &runs {
        println!(
            "  pillow {} process {} beside {}: {}",
            r.pillow, r.process_num, r.live_version, r.tally
        );
    }
    if diffs.is_empty() {
        println!("  no differences kept");
    }
    for d in &diffs {
        let c = &d.diff;
        println!(
            "\n  {} at {}:{}@{} (pillow {}, live {})",
            c.doc_id, c.topic, c.partition, c.offset, d.pillow, d.live_version
        );
        for line in &c.diff {
            println!("    {line}");
        }
    }
    Ok(())
}
