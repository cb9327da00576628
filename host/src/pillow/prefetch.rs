//! A chunk's lookups, read before its processors run: for every plugin
//! whose manifest has `[prefetch]`, the keys its changes will ask for
//! (values at JSON pointers into their documents), one query per
//! resource, into the resource's cache. The lookups inside the plugin
//! calls then hit memory instead of making the Wasm thread wait on the
//! network once per change (see [`crate::lookup`]).

use crate::change::Change;
use crate::manifest::Keep;
use crate::outage::wait_out;
use crate::resource::Resources;
use crate::wasm::Processor;
use pillowtop_sdk::json::{Kind, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Per resource, the keys `changes` will ask for through `processors`
/// (each change only for the processors that want it). Read before any
/// await: processors stay on this thread.
pub(super) fn keys(processors: &[Processor], changes: &[Change]) -> BTreeMap<String, Vec<String>> {
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let prefetching: Vec<&Processor> = processors
        .iter()
        .filter(|p| !p.plugin().manifest().prefetch.is_empty())
        .collect();
    if prefetching.is_empty() {
        return keys;
    }
    for change in changes {
        let Some(text) = change.document() else {
            continue;
        };
        // Validated once per change, only when some processor wants it;
        // no tree is built: a pointer reads only the members on its path
        // (and the last of a repeated key, as the plugins read it).
        let mut document: Option<Option<Value<'_>>> = None;
        for p in prefetching.iter().filter(|p| p.wants(change)) {
            let Some(document) = *document.get_or_insert_with(|| Value::parse(text).ok()) else {
                break;
            };
            for (resource, pointers) in &p.plugin().manifest().prefetch {
                let out = keys.entry(resource.clone()).or_default();
                for key in pointers {
                    if let Some(value) = document.pointer(&key.pointer) {
                        push_keys(value, key.keep, out);
                    }
                }
            }
        }
    }
    keys
}

/// The keys a value at a pointer gives: a string or number, or each one
/// of an array of them; `keep` says what of each.
fn push_keys(value: Value<'_>, keep: Keep, out: &mut Vec<String>) {
    let mut push = |text: &str| {
        let key = match keep {
            Keep::Whole => text.to_owned(),
            Keep::Digits => text.chars().filter(char::is_ascii_digit).collect(),
        };
        if !key.is_empty() {
            out.push(key);
        }
    };
    match value.kind() {
        Kind::String => {
            if let Some(s) = value.as_str() {
                push(&s);
            }
        }
        Kind::Number => push(value.raw()),
        Kind::Array => {
            for item in value.elements() {
                if item.kind() != Kind::Array {
                    push_keys(item, keep, out);
                }
            }
        }
        _ => {}
    }
}

/// Read `keys` into the resources' caches (or hold them for this chunk,
/// for a resource without a cache), waiting out an outage of a resource
/// with capped backoff (the chunk waits, as for a down sink). A failure
/// that is not an outage is logged and left to the calls, which fail
/// their changes with a precise `lookup` error. Returns the keys held,
/// per resource, to keep until the chunk has run; `None` when
/// `shutdown` fires during an outage (the chunk is then not processed).
pub(super) async fn warm(
    pillow: &str,
    resources: &Arc<Resources>,
    keys: BTreeMap<String, Vec<String>>,
    shutdown: &CancellationToken,
) -> Option<Held> {
    let mut held = Held {
        resources: resources.clone(),
        keys: BTreeMap::new(),
    };
    for (resource, keys) in keys {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let what = format!("lookup resource {resource} of pillow {pillow}");
        match wait_out(&what, "for a chunk", shutdown, || {
            resources.prefetch(&resource, &keys)
        })
        .await
        {
            None => return None,
            Some(Ok(holding)) => {
                if !holding.is_empty() {
                    held.keys.insert(resource, holding);
                }
            }
            Some(Err(e)) => tracing::warn!(
                pillow,
                resource,
                error = %e,
                "prefetching lookups failed; the plugin's calls will report it"
            ),
        }
    }
    Some(held)
}

/// Keys held for a chunk, per resource, let go when dropped: once the
/// chunk has run, or when the pillow stops in the middle of it.
pub(super) struct Held {
    resources: Arc<Resources>,
    keys: BTreeMap<String, Vec<String>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        for (resource, keys) in std::mem::take(&mut self.keys) {
            self.resources.release(&resource, &keys);
        }
    }
}

/// Whether any of `keys`' resources holds answers for the chunk (it has
/// no cache): its prefetch must then come after the previous chunk's
/// commit, so that the chunk sees what that one wrote.
pub(super) fn holds(resources: &Resources, keys: &BTreeMap<String, Vec<String>>) -> bool {
    keys.keys().any(|r| resources.holds(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_strings_numbers_and_their_arrays() {
        let doc = Value::parse(
            r#"{"a": "u1", "b": 42, "c": ["u2", 7, {"x": 1}, ["nested"]], "d": "", "e": null, "f": true}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        for p in ["/a", "/b", "/c", "/d", "/e", "/f", "/missing"] {
            if let Some(v) = doc.pointer(p) {
                push_keys(v, Keep::Whole, &mut out);
            }
        }
        assert_eq!(out, ["u1", "42", "u2", "7"]);
    }

    #[test]
    fn digits_keys_keep_only_the_digits_and_drop_what_has_none() {
        let doc = Value::parse(
            r#"{"a": "+254 (712) 345-678", "b": 254712, "c": ["07-12", "call me"], "d": "12a34"}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        for p in ["/a", "/b", "/c", "/d"] {
            push_keys(doc.pointer(p).unwrap(), Keep::Digits, &mut out);
        }
        assert_eq!(out, ["254712345678", "254712", "0712", "1234"]);
    }
}
