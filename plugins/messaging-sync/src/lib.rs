//! messaging-sync: CommCare's case phone number sync as a pillowtop
//! plugin. A case with a valid contact phone number, neither closed nor
//! deleted, has one row in the phone numbers table; any other case has
//! none. The row is two-way (and verified) when the number has more than
//! 3 digits and the case says it is verified, unless another case's row
//! already has the number as two-way, which the plugin reads through a
//! lookup of the table. See [`rules`].

pub mod rules;

#[cfg(target_arch = "wasm32")]
mod component {
    use crate::rules::{self, COLUMNS, Config, Decision, PhoneRow};
    use pillowtop_sdk::host::{self, LookupError};
    use pillowtop_sdk::types::{
        Action, Change, Column, ColumnType, DeleteRows, PluginInfo, ProcessError, TableSpec,
        UpsertRows, Value,
    };
    use std::sync::OnceLock;

    static CONFIG: OnceLock<Config> = OnceLock::new();

    struct MessagingSync;

    fn text(v: Option<String>) -> Value {
        v.map_or(Value::Null, Value::Text)
    }

    fn cells(row: PhoneRow) -> Vec<Value> {
        vec![
            Value::Text(row.case_id.clone()),
            text(row.domain),
            Value::Text("CommCareCase".into()),
            Value::Text(row.case_id),
            Value::Text(row.phone_number),
            text(row.backend_id),
            text(row.ivr_backend_id),
            Value::Boolean(row.two_way),
            Value::Boolean(false),
            Value::Boolean(row.two_way),
            text(row.contact_last_modified),
            Value::Text(row.created_on),
        ]
    }

    impl pillowtop_sdk::Guest for MessagingSync {
        fn init(config: String) -> Result<PluginInfo, String> {
            let config = Config::parse(&config)?;
            let columns = COLUMNS
                .iter()
                .map(|(name, kind, nullable)| Column {
                    name: (*name).into(),
                    kind: match *kind {
                        "boolean" => ColumnType::Boolean,
                        "timestamp" => ColumnType::Timestamp,
                        _ => ColumnType::Text,
                    },
                    nullable: *nullable,
                })
                .collect();
            let info = PluginInfo {
                tables: vec![TableSpec {
                    name: config.table.clone(),
                    columns,
                    primary_key: vec!["doc_id".into()],
                    // CommCare skips a case version older than the entry's.
                    version_column: Some("contact_last_modified".into()),
                    definition: None,
                }],
                indices: vec![],
            };
            CONFIG
                .set(config)
                .map_err(|_| "init called twice on one instance".to_string())?;
            Ok(info)
        }

        fn process_change(change: Change) -> Result<Vec<Action>, ProcessError> {
            let config = CONFIG
                .get()
                .ok_or_else(|| ProcessError::Permanent("init was not called".into()))?;
            let decision = rules::decide(
                config,
                &change.id,
                change.is_deletion,
                change.document.as_deref(),
                change.processing_time_ms,
            )
            .map_err(ProcessError::Permanent)?;
            let (row, wants_two_way) = match decision {
                Decision::Skip => return Ok(vec![]),
                Decision::Delete => {
                    return Ok(vec![Action::DeleteRows(DeleteRows {
                        table: config.table.clone(),
                        doc_id: change.id,
                    })]);
                }
                Decision::Entry { row, wants_two_way } => (row, wants_two_way),
            };
            let rows = match host::lookup(&config.lookup, &row.phone_number) {
                Ok(rows) => rows,
                Err(LookupError::NotGranted(m) | LookupError::Unavailable(m)) => {
                    return Err(ProcessError::Retryable(m));
                }
            };
            let row = rules::settle(row, wants_two_way, rows.as_deref())
                .map_err(ProcessError::Retryable)?;
            Ok(vec![Action::UpsertRows(UpsertRows {
                table: config.table.clone(),
                rows: vec![cells(row)],
            })])
        }
    }

    pillowtop_sdk::export!(MessagingSync);
}
