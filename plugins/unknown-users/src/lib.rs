//! unknown-users: CommCare's `UnknownUsersProcessor` as a pillowtop plugin.
//!
//! For each form it reads `form.meta.userID`; a user id HQ does not know
//! (absent from the `users` lookup, then from the `users-index` lookup)
//! becomes an `UnknownUser` document (`AdminUser` when the username is
//! `admin`) in the users index, written with `create-document`: the first
//! form found for a user wins, also when two forms of one new user are in
//! one chunk or in two processes. See [`rules`].

pub mod rules;

#[cfg(target_arch = "wasm32")]
mod component {
    use crate::rules::{self, Config, Decision};
    use pillowtop_sdk::host::{self, LookupError};
    use pillowtop_sdk::types::{
        Action, Change, IndexDocument, IndexSpec, PluginInfo, ProcessError,
    };
    use std::sync::OnceLock;

    static CONFIG: OnceLock<Config> = OnceLock::new();

    struct UnknownUsers;

    /// Whether `resource` has `key`; a lookup that cannot answer makes
    /// the change retryable (the host fails it so anyway).
    fn known(resource: &str, key: &str) -> Result<bool, ProcessError> {
        match host::lookup(resource, key) {
            Ok(found) => Ok(found.is_some()),
            Err(LookupError::NotGranted(m) | LookupError::Unavailable(m)) => {
                Err(ProcessError::Retryable(m))
            }
        }
    }

    impl pillowtop_sdk::Guest for UnknownUsers {
        fn init(config: String) -> Result<PluginInfo, String> {
            let config = Config::parse(&config)?;
            let info = PluginInfo {
                tables: vec![],
                indices: vec![IndexSpec {
                    name: config.index.clone(),
                    mappings: rules::MAPPINGS.to_string(),
                    aliases: vec![],
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
            if change.is_deletion {
                return Ok(vec![]);
            }
            let Some(doc) = change.document else {
                return Ok(vec![]);
            };
            let form = match rules::read_form(&doc) {
                Ok(Decision::Skip) => return Ok(vec![]),
                Ok(Decision::Check(form)) => form,
                Err(e) => return Err(ProcessError::Permanent(e)),
            };
            if known(&config.users_lookup, &form.user_id)?
                || known(&config.users_index_lookup, &form.user_id)?
            {
                return Ok(vec![]);
            }
            Ok(vec![Action::CreateDocument(IndexDocument {
                index: config.index.clone(),
                id: form.user_id.clone(),
                document: form.user_document(),
            })])
        }
    }

    pillowtop_sdk::export!(UnknownUsers);
}
