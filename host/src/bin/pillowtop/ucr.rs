//! `pillowtop ucr ...`: tools for UCR data sources.

use anyhow::Result;
use clap::Subcommand;
use pillowtop::config::HostConfig;
use pillowtop::process::Stop;
use pillowtop::ucr::{self, EvalOutput, EvalRequest, Probe};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum UcrCommand {
    /// Evaluate a data source on one document through the UCR plugin and
    /// print, as JSON, the rows it would write (or, with --expression or
    /// --filter, that expression's value or whether the document passes
    /// that filter, using the data source's named expressions and
    /// filters). Nothing is written.
    Eval {
        /// The data source (CommCare's JSON export). Not `--config`: that
        /// names the host config for every command.
        #[arg(long)]
        data_source: PathBuf,
        /// The document (a case or form, JSON).
        #[arg(long)]
        doc: PathBuf,
        /// Print this expression's value instead of rows.
        #[arg(long, conflicts_with = "filter")]
        expression: Option<PathBuf>,
        /// Print whether the document passes this filter instead of rows.
        #[arg(long)]
        filter: Option<PathBuf>,
        /// What `related_doc` finds: a JSON file
        /// `{"RESOURCE": {"DOC_ID": DOCUMENT}}` (as a fixture's `lookups`).
        #[arg(long)]
        lookups: Option<PathBuf>,
        /// The UCR plugin's manifest.
        #[arg(long, default_value = "plugins/ucr/plugin.toml")]
        manifest: PathBuf,
        /// Compile cache directory.
        #[arg(long, default_value = "data/compile-cache")]
        compile_cache: PathBuf,
    },
    /// Rebuild the table of one data source (after its filter or
    /// indicators changed): create it anew with the new definition, then
    /// replay the pillow's feed from the start through the UCR plugin
    /// restricted to that data source, writing only that table, until the
    /// pillow takes the table back. The pillow may run meanwhile (its
    /// other tables and processors go on); with the embedded store it
    /// must be stopped.
    Rebuild {
        /// The data source's `table_id`.
        table_id: String,
        /// The pillow (default: the one pillow with that data source).
        #[arg(long)]
        pillow: Option<String>,
    },
}

pub async fn ucr_command(
    command: UcrCommand,
    config: impl FnOnce() -> Result<HostConfig>,
    stop: impl FnOnce(&HostConfig) -> Stop,
) -> Result<()> {
    match command {
        UcrCommand::Rebuild { table_id, pillow } => {
            let config = config()?;
            let stop = stop(&config);
            let rebuilt =
                ucr::rebuild::rebuild(&config, &table_id, pillow.as_deref(), &stop).await?;
            print!("{}", rebuilt.summary);
            if let Some(e) = rebuilt.summary.failed {
                return Err(e.into());
            }
            if rebuilt.taken_back == rebuilt.partitions {
                println!(
                    "rebuilt {}: pillow {} writes it again in every partition",
                    rebuilt.table, rebuilt.pillow
                );
            } else {
                println!(
                    "rebuilt {} from the feed of pillow {}; the pillow writes it again in {} more partition(s) once it runs (with the data source's new version)",
                    rebuilt.table,
                    rebuilt.pillow,
                    rebuilt.partitions - rebuilt.taken_back
                );
            }
            Ok(())
        }
        UcrCommand::Eval {
            data_source,
            doc,
            expression,
            filter,
            lookups,
            manifest,
            compile_cache,
        } => {
            let probe = match (expression, filter) {
                (Some(e), _) => Probe::Expression(e),
                (None, Some(f)) => Probe::Filter(f),
                (None, None) => Probe::Rows,
            };
            let output = ucr::eval(EvalRequest {
                manifest,
                data_source,
                doc,
                probe,
                lookups,
                compile_cache,
            })
            .await?;
            match output {
                EvalOutput::Value(value) => println!("{value}"),
                EvalOutput::Rows {
                    table,
                    passes,
                    rows,
                } => {
                    for row in &rows {
                        println!("{}", serde_json::Value::Object(row.clone()));
                    }
                    if !passes {
                        eprintln!(
                            "no rows: the document is not of the data source's domain and referenced_doc_type, or does not pass its configured_filter"
                        );
                    } else {
                        eprintln!("{} row(s) for table {table}", rows.len());
                    }
                }
            }
            Ok(())
        }
    }
}
