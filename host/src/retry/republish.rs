//! Republishing a stored change to its topic (`retry = "republish"`), as
//! CommCare's retry queue does for Kafka feeds: the change goes back on
//! the feed with `attempts` counted, and the pillow's normal path handles
//! it (a pass resolves the error, a failure counts one more attempt).

use crate::errors::PillowError;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// The stored change of `e` as a keyed message, with `attempts` set to its
/// failures so far. A value that is not a JSON object (a decode error) is
/// sent back as it was, and fails the same way.
pub fn message(e: &PillowError) -> (Option<Vec<u8>>, Vec<u8>) {
    let key = Some(e.doc_id.clone().into_bytes());
    let value = with_attempts(&e.change, e.total_attempts).unwrap_or_else(|| e.change.clone());
    (key, value)
}

/// `value` (a ChangeMeta JSON object) with its top-level `attempts` set to
/// `attempts`; every other member is kept as written (the document's
/// text is not re-serialized).
fn with_attempts(value: &[u8], attempts: u32) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(value).ok()?;
    let mut members: BTreeMap<&str, &RawValue> = serde_json::from_str(text).ok()?;
    let count = RawValue::from_string(attempts.to_string()).ok()?;
    members.insert("attempts", &count);
    serde_json::to_vec(&members).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_set_and_the_document_is_kept_as_written() {
        let v = br#"{"document_id":"c1","attempts":0,"document":{"z":1, "a":[2,3]}}"#;
        let out = with_attempts(v, 3).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains(r#""attempts":3"#), "{out}");
        assert!(out.contains(r#""document":{"z":1, "a":[2,3]}"#), "{out}");
        assert!(out.contains(r#""document_id":"c1""#), "{out}");
        let added = with_attempts(br#"{"document_id":"c2"}"#, 1).unwrap();
        assert_eq!(added, br#"{"attempts":1,"document_id":"c2"}"#);
        assert_eq!(with_attempts(b"not json", 1), None);
        assert_eq!(with_attempts(b"[1]", 1), None);
    }
}
