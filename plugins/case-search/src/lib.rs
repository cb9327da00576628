//! case-search: CommCare's case-search processor as a pillowtop plugin.
//!
//! For each case change in an enabled domain it indexes a case-search
//! document (see [`transform`]); a deletion deletes the document. Changes of
//! other document types or domains produce no actions.

pub mod transform;

#[cfg(target_arch = "wasm32")]
mod component {
    use crate::transform::{self, Config, MAPPINGS};
    use pillowtop_sdk::types::{
        Action, Change, DeleteDocument, IndexDocument, IndexSpec, PluginInfo, ProcessError,
    };
    use std::sync::OnceLock;

    static CONFIG: OnceLock<Config> = OnceLock::new();

    struct CaseSearch;

    impl pillowtop_sdk::Guest for CaseSearch {
        fn init(config: String) -> Result<PluginInfo, String> {
            let config = Config::parse(&config)?;
            let info = PluginInfo {
                tables: vec![],
                indices: vec![IndexSpec {
                    name: config.index.clone(),
                    mappings: MAPPINGS.to_string(),
                }],
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
            let doc_type = change.document_type.as_deref();
            // CommCare's deleted cases are `CommCareCase-Deleted`.
            let deleted_type = doc_type.is_some_and(|t| t.ends_with("-Deleted"));
            if doc_type.is_some_and(|t| t != "CommCareCase" && t != "CommCareCase-Deleted") {
                return Ok(vec![]);
            }
            let domain = change.domain.as_deref().unwrap_or("");
            if !config.domains.enabled(domain) {
                return Ok(vec![]);
            }
            if change.is_deletion || deleted_type {
                return Ok(vec![Action::DeleteDocument(DeleteDocument {
                    index: config.index.clone(),
                    id: change.id,
                })]);
            }
            // CommCare's DocumentMissingError: retried, the document may
            // not be written yet.
            let Some(doc) = change.document else {
                return Err(ProcessError::Retryable(format!(
                    "change {} is not a deletion but carries no document",
                    change.id
                )));
            };
            let mut out = String::new();
            transform::case_search_document(&change.id, &doc, &mut out)
                .map_err(|e| ProcessError::Permanent(e.to_string()))?;
            Ok(vec![Action::IndexDocument(IndexDocument {
                index: config.index.clone(),
                id: change.id,
                document: out,
            })])
        }
    }

    pillowtop_sdk::export!(CaseSearch);
}
