//! ucr: CommCare's User Configurable Reports as a pillowtop plugin.
//!
//! A data source (CommCare's JSON export, unchanged) says which documents
//! of a domain it reads (`referenced_doc_type`, `configured_filter`), how
//! each becomes rows (`configured_indicators`, optionally one row per item
//! of `base_item_expression`) and the table they go to. One plugin
//! instance serves many data sources: the host reads the files named in
//! the manifest's `[config_files]` and hands them to `init`, which parses
//! every spec once. A change then becomes, per data source, "replace this
//! document's rows" or "delete them".
//!
//! The layers, each usable natively (tests, the bench's native row):
//! [`value`] (Python's values and rules), [`dates`], [`datatype`],
//! [`spec`] (reading specs with JSON paths), [`expr`], [`filter`],
//! [`evaluator`], [`indicator`], [`datasource`], [`reads`] (what of a
//! document the data sources read), [`processor`]; the
//! component glue is the `component` module below.

pub mod datasource;
pub mod datatype;
pub mod dates;
pub mod eval;
pub mod evaluator;
pub mod expr;
pub mod filter;
pub mod indicator;
pub mod processor;
pub mod reads;
pub mod spec;
pub mod value;

#[cfg(target_arch = "wasm32")]
mod component {
    use crate::eval::EvalError;
    use crate::indicator::{Cell, ColumnKind};
    use crate::processor::{ChangeView, Processor, TableAction};
    use pillowtop_sdk::host::{self, LookupError};
    use pillowtop_sdk::types::{
        Action, Change, Column, ColumnType, DeleteRows, PluginInfo, ProcessError, TableSpec,
        UpsertRows, Value,
    };
    use std::cell::RefCell;

    struct Ucr;

    thread_local! {
        /// The instance's data sources, parsed by `init`.
        static PROCESSOR: RefCell<Option<Processor>> = const { RefCell::new(None) };
    }

    fn lookup(resource: &str, key: &str) -> Result<Option<String>, EvalError> {
        host::lookup(resource, key).map_err(|e| EvalError {
            message: match e {
                LookupError::NotGranted(m) | LookupError::Unavailable(m) => {
                    format!("related_doc lookup {resource:?}: {m}")
                }
            },
            retryable: true,
        })
    }

    fn column_type(kind: ColumnKind) -> ColumnType {
        match kind {
            ColumnKind::Text => ColumnType::Text,
            ColumnKind::Integer => ColumnType::Integer,
            ColumnKind::Float => ColumnType::Float,
            ColumnKind::Boolean => ColumnType::Boolean,
            ColumnKind::Date => ColumnType::Date,
            ColumnKind::Timestamp => ColumnType::Timestamp,
            ColumnKind::Json => ColumnType::Json,
        }
    }

    fn value(cell: Cell) -> Value {
        match cell {
            Cell::Null => Value::Null,
            Cell::Bool(b) => Value::Boolean(b),
            Cell::Int(i) => Value::Integer(i),
            Cell::Float(f) => Value::Float(f),
            Cell::Text(t) => Value::Text(t),
        }
    }

    impl pillowtop_sdk::Guest for Ucr {
        fn init(config: String) -> Result<PluginInfo, String> {
            let processor = Processor::from_config(&config)?;
            let tables = processor
                .tables()
                .into_iter()
                .map(|(name, columns, definition)| TableSpec {
                    name: name.to_string(),
                    columns: columns
                        .iter()
                        .map(|c| Column {
                            name: c.name.clone(),
                            kind: column_type(c.kind),
                            nullable: c.nullable,
                        })
                        .collect(),
                    primary_key: columns
                        .iter()
                        .filter(|c| c.primary_key)
                        .map(|c| c.name.clone())
                        .collect(),
                    version_column: None,
                    definition: definition.map(str::to_string),
                })
                .collect();
            PROCESSOR.with_borrow_mut(|slot| {
                if slot.is_some() {
                    return Err("init called twice on one instance".to_string());
                }
                *slot = Some(processor);
                Ok(())
            })?;
            Ok(PluginInfo {
                tables,
                indices: vec![],
            })
        }

        fn process_change(change: Change) -> Result<Vec<Action>, ProcessError> {
            let view = ChangeView {
                id: &change.id,
                domain: change.domain.as_deref(),
                doc_type: change.document_type.as_deref(),
                is_deletion: change.is_deletion,
                document: change.document.as_deref(),
                processing_time_ms: change.processing_time_ms,
            };
            let actions = PROCESSOR.with_borrow(|processor| {
                let processor = processor
                    .as_ref()
                    .ok_or_else(|| ProcessError::Permanent("init was not called".into()))?;
                processor.process(&view, &lookup).map_err(|e| {
                    if e.retryable {
                        ProcessError::Retryable(e.message)
                    } else {
                        ProcessError::Permanent(e.message)
                    }
                })
            })?;
            Ok(actions
                .into_iter()
                .map(|a| match a {
                    TableAction::DeleteRows { table, doc_id } => {
                        Action::DeleteRows(DeleteRows { table, doc_id })
                    }
                    TableAction::UpsertRows { table, rows } => Action::UpsertRows(UpsertRows {
                        table,
                        rows: rows
                            .into_iter()
                            .map(|r| r.into_iter().map(value).collect())
                            .collect(),
                    }),
                })
                .collect())
        }
    }

    pillowtop_sdk::export!(Ucr);
}
