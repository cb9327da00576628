//! A chunk's lookups, read before its processors run: for every plugin
//! whose manifest has `[prefetch]`, the keys its changes will ask for
//! (values at JSON pointers into their documents), one query per
//! resource, into the resource's cache. The lookups inside the plugin
//! calls then hit memory instead of making the Wasm thread wait on the
//! network once per change (see [`crate::lookup`]).

use crate::change::Change;
use crate::outage::wait_out;
use crate::resource::Resources;
use crate::wasm::Processor;
use pillowtop_sdk::json::{Kind, Value};
use std::collections::BTreeMap;
use tokio_util::sync::CancellationToken;

/// Per resource, the keys `changes` will ask for through `processors`
/// (each change only for the processors that want it). Read before any
/// await: processors stay on this thread.
pub(super) fn keys(
    processors: &[Processor],
    changes: &[(Change, Vec<u8>)],
) -> BTreeMap<String, Vec<String>> {
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let prefetching: Vec<&Processor> = processors
        .iter()
        .filter(|p| !p.plugin().manifest().prefetch.is_empty())
        .collect();
    if prefetching.is_empty() {
        return keys;
    }
    for (change, _) in changes {
        let Some(text) = change.document.as_deref() else {
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
                for pointer in pointers {
                    if let Some(value) = document.pointer(pointer) {
                        push_keys(value, out);
                    }
                }
            }
        }
    }
    keys
}

/// The keys a value at a pointer gives: a string or number, or each one
/// of an array of them.
fn push_keys(value: Value<'_>, out: &mut Vec<String>) {
    match value.kind() {
        Kind::String => {
            if let Some(s) = value.as_str().filter(|s| !s.is_empty()) {
                out.push(s.into_owned());
            }
        }
        Kind::Number => out.push(value.raw().to_owned()),
        Kind::Array => {
            for item in value.elements() {
                if item.kind() != Kind::Array {
                    push_keys(item, out);
                }
            }
        }
        _ => {}
    }
}

/// Read `keys` into the resources' caches, waiting out an outage of a
/// resource with capped backoff (the chunk waits, as for a down sink).
/// A failure that is not an outage is logged and left to the calls,
/// which fail their changes with a precise `lookup` error. `false` when
/// `shutdown` fires during an outage (the chunk is then not processed).
pub(super) async fn warm(
    pillow: &str,
    resources: &Resources,
    keys: BTreeMap<String, Vec<String>>,
    shutdown: &CancellationToken,
) -> bool {
    for (resource, keys) in keys {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let what = format!("lookup resource {resource} of pillow {pillow}");
        match wait_out(&what, "for a chunk", shutdown, || {
            resources.prefetch(&resource, &keys)
        })
        .await
        {
            None => return false,
            Some(Ok(())) => {}
            Some(Err(e)) => tracing::warn!(
                pillow,
                resource,
                error = %e,
                "prefetching lookups failed; the plugin's calls will report it"
            ),
        }
    }
    true
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
                push_keys(v, &mut out);
            }
        }
        assert_eq!(out, ["u1", "42", "u2", "7"]);
    }
}
