//! Records which plugin version processed each change, for the host's
//! hot-reload tests.
//!
//! `[config] tag = "v1"` names the version. Every change becomes one row of
//! table `tagged`: (doc_id, tag, topic, partition, offset). Tests swap
//! versions under load and check from the rows that each change was
//! processed by exactly one version, on the right side of each switch point.
//! A deletion deletes the document's row instead (sink and crash tests
//! check that no row of a deleted document survives).
//! `fail_init = true` makes `init` fail (a version that must be refused).

#[cfg(target_arch = "wasm32")]
mod component {
    use pillowtop_sdk::json::Value;
    use pillowtop_sdk::types::{Value as Cell, *};
    use std::sync::OnceLock;

    static TAG: OnceLock<String> = OnceLock::new();

    struct Tagger;

    fn column(name: &str, kind: ColumnType) -> Column {
        Column {
            name: name.into(),
            kind,
            nullable: false,
        }
    }

    impl pillowtop_sdk::Guest for Tagger {
        fn init(config: String) -> Result<PluginInfo, String> {
            let config = Value::parse(&config).map_err(|e| format!("config: {e}"))?;
            if config.get("fail_init").and_then(|v| v.as_bool()) == Some(true) {
                return Err("config sets fail_init = true".into());
            }
            let tag = config
                .get("tag")
                .and_then(|v| v.as_str().map(|s| s.into_owned()))
                .ok_or("config key `tag` (a string) is required")?;
            let _ = TAG.set(tag);
            Ok(PluginInfo {
                tables: vec![TableSpec {
                    name: "tagged".into(),
                    columns: vec![
                        column("doc_id", ColumnType::Text),
                        column("tag", ColumnType::Text),
                        column("topic", ColumnType::Text),
                        column("partition", ColumnType::Integer),
                        column("offset", ColumnType::Integer),
                    ],
                    primary_key: vec!["doc_id".into()],
                }],
                indices: vec![],
            })
        }

        fn process_change(change: Change) -> Result<Vec<Action>, ProcessError> {
            if change.is_deletion {
                return Ok(vec![Action::DeleteRows(DeleteRows {
                    table: "tagged".into(),
                    doc_id: change.id,
                })]);
            }
            let tag = TAG.get().cloned().unwrap_or_default();
            Ok(vec![Action::UpsertRows(UpsertRows {
                table: "tagged".into(),
                rows: vec![vec![
                    Cell::Text(change.id),
                    Cell::Text(tag),
                    Cell::Text(change.topic),
                    Cell::Integer(change.partition.into()),
                    Cell::Integer(change.offset as i64),
                ]],
            })])
        }
    }

    pillowtop_sdk::export!(Tagger);
}
