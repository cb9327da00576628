//! The rules, as CommCare's `update_unknown_user_from_form_if_necessary`
//! (corehq/pillows/user.py) applies them, and the document its user
//! adapter (corehq/apps/es/users.py) indexes. Plain Rust: unit-tested
//! natively.

use pillowtop_sdk::json::{self, Kind, Value};

/// The users index mappings this plugin declares: the fields it writes,
/// typed as CommCare's user mapping types them.
pub const MAPPINGS: &str = r#"{"properties":{"doc_type":{"type":"keyword"},"domain":{"type":"text","fields":{"exact":{"type":"keyword"}}},"username":{"type":"text","fields":{"exact":{"type":"keyword"}}},"base_username":{"type":"text","fields":{"exact":{"type":"keyword"}}},"first_form_found_in":{"type":"keyword"},"doc_id":{"type":"keyword"},"domain_membership":{"type":"object","properties":{"domain":{"type":"text","fields":{"exact":{"type":"keyword"}}}}},"user_data_es":{"type":"nested","properties":{"key":{"type":"keyword"},"value":{"type":"text"}}},"__group_ids":{"type":"keyword"},"__group_names":{"type":"text"}}}"#;

/// User ids that never become users (CommCare's `WEIRD_USER_IDS`):
/// system, demo and placeholder owners.
pub const SYSTEM_USER_IDS: [&str; 7] = [
    "commtrack-system",
    "demo_user",
    "demo_user_group_id",
    "-",
    "system",
    "_archive_",
    "callcenter-system",
];

/// The plugin's `[config]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The users index.
    pub index: String,
    /// The lookup resource of the users HQ knows, by user id.
    pub users_lookup: String,
    /// The lookup resource of the users index, by user id.
    pub users_index_lookup: String,
}

impl Config {
    /// Read `[config]` (JSON text); every key has a default.
    ///
    /// # Errors
    ///
    /// A key that is not a non-empty string.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config = Value::parse(text).map_err(|e| format!("config: {e}"))?;
        let read = |key: &str, default: &str| -> Result<String, String> {
            match config.get(key) {
                None => Ok(default.to_owned()),
                Some(v) => match v.as_str() {
                    Some(s) if !s.is_empty() => Ok(s.into_owned()),
                    _ => Err(format!(
                        "config.{key} must be a non-empty string, got {}",
                        v.raw()
                    )),
                },
            }
        };
        if let Some((key, _)) = config.members().find(|(k, _)| {
            !["index", "users_lookup", "users_index_lookup"]
                .iter()
                .any(|n| k.is(n))
        }) {
            return Err(format!(
                "config has unknown key {}; known keys: index, users_lookup, users_index_lookup",
                key.raw()
            ));
        }
        Ok(Config {
            index: read("index", "users")?,
            users_lookup: read("users_lookup", "users")?,
            users_index_lookup: read("users_index_lookup", "users-index")?,
        })
    }
}

/// What a form says about its user.
#[derive(Debug, Clone, PartialEq)]
pub struct Form<'a> {
    /// `form.meta.userID`.
    pub user_id: String,
    /// `form.meta.username`, as written (JSON), if present.
    pub username: Option<Value<'a>>,
    /// `domain`, as written, if present.
    pub domain: Option<Value<'a>>,
    /// `_id`, as written, if present.
    pub xform_id: Option<Value<'a>>,
}

/// What to do with a form.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision<'a> {
    /// Nothing: no user id, or a system one.
    Skip,
    /// Ask the lookups whether this user is known.
    Check(Form<'a>),
}

/// Read the user fields of a form document.
///
/// # Errors
///
/// When the document is not a JSON object.
pub fn read_form(doc: &str) -> Result<Decision<'_>, String> {
    let doc = Value::parse(doc).map_err(|e| format!("form document: {e}"))?;
    if doc.kind() != Kind::Object {
        return Err("form document is not a JSON object".into());
    }
    // `form_doc.get('form', {}).get('meta', {})`: a form or meta that is
    // not an object has no user id.
    let meta = doc
        .get_last("form")
        .filter(|f| f.kind() == Kind::Object)
        .and_then(|f| f.get_last("meta"))
        .filter(|m| m.kind() == Kind::Object);
    let user_id = meta
        .as_ref()
        .and_then(|m| m.get_last("userID"))
        .and_then(|v| v.as_str());
    let Some(user_id) = user_id.filter(|id| !id.is_empty()) else {
        return Ok(Decision::Skip);
    };
    if SYSTEM_USER_IDS.contains(&&*user_id) {
        return Ok(Decision::Skip);
    }
    Ok(Decision::Check(Form {
        user_id: user_id.into_owned(),
        username: meta.as_ref().and_then(|m| m.get_last("username")),
        domain: doc.get_last("domain"),
        xform_id: doc.get_last("_id"),
    }))
}

/// A value as written, or `null` when absent.
fn raw_or_null<'a>(v: &Option<Value<'a>>) -> &'a str {
    v.as_ref().map_or("null", |v| v.raw())
}

impl Form<'_> {
    /// The users-index document CommCare writes for an unknown user.
    pub fn user_document(&self) -> String {
        let raw = raw_or_null;
        let username = raw(&self.username);
        let admin = self
            .username
            .as_ref()
            .and_then(|u| u.as_str())
            .is_some_and(|u| u == "admin");
        let mut out = String::with_capacity(256);
        out.push_str("{\"domain\":");
        json::write_compact(&mut out, raw(&self.domain));
        out.push_str(",\"username\":");
        json::write_compact(&mut out, username);
        out.push_str(",\"first_form_found_in\":");
        json::write_compact(&mut out, raw(&self.xform_id));
        out.push_str(",\"doc_type\":");
        out.push_str(if admin {
            "\"AdminUser\""
        } else {
            "\"UnknownUser\""
        });
        if let Some(domain) = self.domain.as_ref().filter(|d| d.truthy()) {
            out.push_str(",\"domain_membership\":{\"domain\":");
            json::write_compact(&mut out, domain.raw());
            out.push('}');
        }
        // The user adapter: a user that is not a CommCareUser keeps its
        // whole username as base_username; no groups, no user data.
        out.push_str(",\"base_username\":");
        json::write_compact(&mut out, username);
        out.push_str(",\"doc_id\":");
        json::write_str(&mut out, &self.user_id);
        out.push_str(",\"user_data_es\":[],\"__group_ids\":[],\"__group_names\":[]}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(doc: &str) -> Decision<'_> {
        read_form(doc).unwrap()
    }

    #[test]
    fn system_and_empty_user_ids_are_skipped() {
        for id in SYSTEM_USER_IDS {
            let doc = format!(r#"{{"_id":"f","form":{{"meta":{{"userID":"{id}"}}}}}}"#);
            assert_eq!(decide(&doc), Decision::Skip, "{id}");
        }
        for doc in [
            r#"{"_id":"f"}"#,
            r#"{"form":{"meta":{"userID":""}}}"#,
            r#"{"form":{"meta":{"userID":null}}}"#,
            r#"{"form":"text"}"#,
            r#"{"form":{"meta":[]}}"#,
        ] {
            assert_eq!(decide(doc), Decision::Skip, "{doc}");
        }
        assert!(read_form("[1]").is_err());
    }

    #[test]
    fn an_unknown_user_document_is_commcares() {
        let doc =
            r#"{"_id":"f1","domain":"demo","form":{"meta":{"userID":"u1","username":"ada"}}}"#;
        let Decision::Check(form) = decide(doc) else {
            panic!("skipped")
        };
        let out: serde_like::Doc = serde_like::parse(&form.user_document());
        assert_eq!(out.get("doc_type"), "\"UnknownUser\"");
        assert_eq!(out.get("domain_membership"), "{\"domain\":\"demo\"}");
        assert_eq!(out.get("first_form_found_in"), "\"f1\"");
        assert_eq!(out.get("base_username"), "\"ada\"");
        assert_eq!(out.get("doc_id"), "\"u1\"");
    }

    #[test]
    fn admin_no_domain_and_duplicate_keys() {
        let doc = r#"{"_id":"f2","domain":"","form":{"meta":{"userID":"x","userID":"u2","username":"admin"}}}"#;
        let Decision::Check(form) = decide(doc) else {
            panic!("skipped")
        };
        assert_eq!(form.user_id, "u2");
        let out = serde_like::parse(&form.user_document());
        assert_eq!(out.get("doc_type"), "\"AdminUser\"");
        assert_eq!(out.get("domain"), "\"\"");
        assert!(!out.has("domain_membership"));
    }

    /// Reads the output back with the SDK's own parser.
    mod serde_like {
        use pillowtop_sdk::json::Value;

        pub struct Doc(String);

        pub fn parse(text: &str) -> Doc {
            assert_eq!(
                pillowtop_sdk::json::validate(text),
                Ok(pillowtop_sdk::json::Kind::Object)
            );
            Doc(text.to_owned())
        }

        impl Doc {
            pub fn get(&self, key: &str) -> String {
                Value::parse(&self.0)
                    .unwrap()
                    .get(key)
                    .unwrap_or_else(|| panic!("no {key} in {}", self.0))
                    .raw()
                    .to_owned()
            }

            pub fn has(&self, key: &str) -> bool {
                Value::parse(&self.0).unwrap().get(key).is_some()
            }
        }
    }
}
