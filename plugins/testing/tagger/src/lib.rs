//! Records which plugin version processed each change, for the host's
//! hot-reload tests.
//!
//! `[config] tag = "v1"` names the version. Every change becomes one row of
//! table `tagged`: (doc_id, tag, topic, partition, offset, seq). With
//! `count_calls = true`, `seq` counts this instance's calls from 1 (tests of
//! parallel transform threads tell instances apart by it); otherwise it is
//! 0, so the plugin stays deterministic and passes its fixtures. Tests swap
//! versions under load and check from the rows that each change was
//! processed by exactly one version, on the right side of each switch point.
//! A deletion deletes the document's row instead (sink and crash tests
//! check that no row of a deleted document survives).
//! `fail_init = true` makes `init` fail (a version that must be refused).
//! `subtype_tags = {"SUBTYPE": "TAG"}` tags changes of those document
//! subtypes (case types) otherwise: a version that differs from another
//! only for some changes, for the shadow tests.

#[cfg(target_arch = "wasm32")]
mod component {
    use pillowtop_sdk::json::Value;
    use pillowtop_sdk::types::{Value as Cell, *};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

    static TAG: OnceLock<String> = OnceLock::new();
    /// (subtype, tag) pairs of `subtype_tags`.
    static SUBTYPE_TAGS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    static COUNT_CALLS: AtomicBool = AtomicBool::new(false);
    /// Calls of `process-change` on this instance so far.
    static CALLS: AtomicI64 = AtomicI64::new(0);

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
            let subtype_tags = config
                .get("subtype_tags")
                .map(|tags| {
                    tags.members()
                        .map(|(k, v)| {
                            let tag = v.as_str().ok_or("subtype_tags values must be strings")?;
                            Ok((k.decoded().into_owned(), tag.into_owned()))
                        })
                        .collect::<Result<Vec<_>, String>>()
                })
                .transpose()?
                .unwrap_or_default();
            let _ = SUBTYPE_TAGS.set(subtype_tags);
            let count = config.get("count_calls").and_then(|v| v.as_bool()) == Some(true);
            COUNT_CALLS.store(count, Ordering::Relaxed);
            Ok(PluginInfo {
                tables: vec![TableSpec {
                    name: "tagged".into(),
                    columns: vec![
                        column("doc_id", ColumnType::Text),
                        column("tag", ColumnType::Text),
                        column("topic", ColumnType::Text),
                        column("partition", ColumnType::Integer),
                        column("offset", ColumnType::Integer),
                        column("seq", ColumnType::Integer),
                    ],
                    primary_key: vec!["doc_id".into()],
                    version_column: None,
                    definition: None,
                }],
                indices: vec![],
            })
        }

        fn process_change(change: Change) -> Result<Vec<Action>, ProcessError> {
            let seq = if COUNT_CALLS.load(Ordering::Relaxed) {
                CALLS.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                0
            };
            if change.is_deletion {
                return Ok(vec![Action::DeleteRows(DeleteRows {
                    table: "tagged".into(),
                    doc_id: change.id,
                })]);
            }
            let by_subtype = SUBTYPE_TAGS.get().and_then(|tags| {
                let subtype = change.document_subtype.as_deref()?;
                tags.iter()
                    .find(|(s, _)| s == subtype)
                    .map(|(_, t)| t.clone())
            });
            let tag = by_subtype.unwrap_or_else(|| TAG.get().cloned().unwrap_or_default());
            Ok(vec![Action::UpsertRows(UpsertRows {
                table: "tagged".into(),
                rows: vec![vec![
                    Cell::Text(change.id),
                    Cell::Text(tag),
                    Cell::Text(change.topic),
                    Cell::Integer(change.partition.into()),
                    Cell::Integer(change.offset as i64),
                    Cell::Integer(seq),
                ]],
            })])
        }
    }

    pillowtop_sdk::export!(Tagger);
}
