//! `pillowtop ucr ...`: tools for UCR data sources.

use anyhow::Result;
use clap::Subcommand;
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
}

pub async fn ucr_command(command: UcrCommand) -> Result<()> {
    match command {
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
