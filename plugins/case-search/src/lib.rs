//! case-search: CommCare's case-search processor as a pillowtop plugin.
//!
//! For each case change of an indexed domain it indexes the case-search
//! document CommCare writes (see [`transform`]); a deletion, or a case whose
//! `doc_type` is a deleted one, deletes it. Changes of other document types,
//! of left-out domains or without a domain produce no actions.

pub mod transform;

#[cfg(target_arch = "wasm32")]
mod component {
    use crate::transform::{self, Config, MAPPINGS, Outcome};
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
                    aliases: config.alias.iter().cloned().collect(),
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
            if doc_type.is_some_and(|t| t != "CommCareCase" && t != "CommCareCase-Deleted") {
                return Ok(vec![]);
            }
            if !config
                .domains
                .enabled(change.domain.as_deref().unwrap_or(""))
            {
                return Ok(vec![]);
            }
            let delete = |id: String| {
                Ok(vec![Action::DeleteDocument(DeleteDocument {
                    index: config.index.clone(),
                    id,
                })])
            };
            // A deletion (or a change of a case typed `CommCareCase-Deleted`)
            // deletes the document, unless the case's current document is
            // live again: CommCare's ElasticProcessor then deletes nothing.
            if change.is_deletion || doc_type.is_some_and(transform::is_deleted_type) {
                if change.document.as_deref().is_some_and(transform::is_live) {
                    return Ok(vec![]);
                }
                return delete(change.id);
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
            match transform::case_search_document(
                &change.id,
                &doc,
                change.processing_time_ms,
                &mut out,
            ) {
                Ok(Outcome::Document) => Ok(vec![Action::IndexDocument(IndexDocument {
                    index: config.index.clone(),
                    id: change.id,
                    document: out,
                })]),
                Ok(Outcome::Deleted) => delete(change.id),
                Err(e) => Err(ProcessError::Permanent(e.to_string())),
            }
        }
    }

    pillowtop_sdk::export!(CaseSearch);
}
