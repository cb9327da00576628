//! Decoding feed messages into changes.
//!
//! A message value is CommCare's `ChangeMeta` as JSON (`document_id`,
//! `data_source_type`, `data_source_name`, `document_type`,
//! `document_subtype`, `domain`, `is_deletion`, `publish_timestamp`,
//! `attempts`, ...) plus, in pillowtop, an optional inline `document`
//! object. Unknown fields are ignored, as CommCare adds fields over time.
//! A message that does not decode becomes a pillow error of kind `decode`;
//! it never stops the partition.

use crate::feed::Message;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;

/// One decoded change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// `document_id`.
    pub id: String,
    /// The topic it was read from.
    pub topic: Arc<str>,
    /// The partition it was read from.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// `domain`.
    pub domain: Option<String>,
    /// `document_type`.
    pub document_type: Option<String>,
    /// `document_subtype`.
    pub document_subtype: Option<String>,
    /// `is_deletion`.
    pub is_deletion: bool,
    /// `publish_timestamp` in epoch milliseconds.
    pub publish_time_ms: Option<i64>,
    /// `attempts`.
    pub attempts: u32,
    /// When the host began processing it, in epoch milliseconds (read when
    /// it is decoded; fixtures set their own): CommCare's `@indexed_on`.
    pub processing_time_ms: i64,
    /// The inline document, JSON text of an object.
    pub document: Option<String>,
}

/// Why a message is not a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{topic}:{partition} offset {offset}: {reason}")]
pub struct DecodeError {
    /// Topic of the message.
    pub topic: Arc<str>,
    /// Partition of the message.
    pub partition: u32,
    /// Offset of the message.
    pub offset: u64,
    /// What is wrong, in words that say what a valid message looks like.
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Timestamp<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Millis(f64),
}

#[derive(Deserialize)]
struct WireChange<'a> {
    #[serde(borrow)]
    document_id: Cow<'a, str>,
    #[serde(default, borrow)]
    domain: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    document_type: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    document_subtype: Option<Cow<'a, str>>,
    #[serde(default)]
    is_deletion: bool,
    #[serde(default, borrow)]
    publish_timestamp: Option<Timestamp<'a>>,
    #[serde(default)]
    attempts: u32,
    #[serde(default, borrow)]
    document: Option<&'a RawValue>,
}

/// Decode one feed message.
///
/// # Errors
///
/// Fails when the value is not UTF-8 JSON, lacks a string `document_id`,
/// has a `document` that is not an object, or a `publish_timestamp` that is
/// neither RFC 3339 text nor epoch milliseconds.
pub fn decode(message: &Message) -> Result<Change, DecodeError> {
    let fail = |reason: String| DecodeError {
        topic: message.tp.topic.clone(),
        partition: message.tp.partition,
        offset: message.offset,
        reason,
    };
    let text = std::str::from_utf8(&message.value).map_err(|e| {
        fail(format!(
            "value is not UTF-8 ({e}); a change is ChangeMeta JSON"
        ))
    })?;
    let wire: WireChange<'_> = serde_json::from_str(text).map_err(|e| {
        fail(format!(
            "value is not a ChangeMeta JSON object with a string `document_id`: {e}"
        ))
    })?;
    if wire.document_id.is_empty() {
        return Err(fail("`document_id` is empty".into()));
    }
    let document = match wire.document {
        None => None,
        Some(raw) if raw.get().starts_with('{') => Some(raw.get().to_owned()),
        Some(raw) if raw.get() == "null" => None,
        Some(_) => return Err(fail("`document` must be a JSON object (or absent)".into())),
    };
    let publish_time_ms = match wire.publish_timestamp {
        None => None,
        Some(Timestamp::Millis(ms)) => Some(ms as i64),
        Some(Timestamp::Text(t)) => Some(crate::time::parse_rfc3339_ms(&t).ok_or_else(|| {
            fail(format!("`publish_timestamp` {t:?} is not an RFC 3339 time such as 2026-11-22T05:09:00.000000Z"))
        })?),
    };
    Ok(Change {
        id: wire.document_id.into_owned(),
        topic: message.tp.topic.clone(),
        partition: message.tp.partition,
        offset: message.offset,
        domain: wire.domain.map(Cow::into_owned),
        document_type: wire.document_type.map(Cow::into_owned),
        document_subtype: wire.document_subtype.map(Cow::into_owned),
        is_deletion: wire.is_deletion,
        publish_time_ms,
        attempts: wire.attempts,
        processing_time_ms: crate::time::now_ms(),
        document,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::TopicPartition;

    fn message(value: &str) -> Message {
        Message {
            tp: TopicPartition::new("case-sql", 3),
            offset: 7,
            key: None,
            value: value.as_bytes().to_vec(),
            timestamp_ms: None,
        }
    }

    #[test]
    fn decodes_commcare_change_meta() {
        let c = decode(&message(
            r#"{"document_id":"abc","data_source_type":"sql","data_source_name":"case-sql","document_type":"CommCareCase",
                "document_subtype":"patient","domain":"demo","is_deletion":false,"publish_timestamp":"2021-03-04T05:06:07.000000",
                "attempts":2,"document":{"_id":"abc","case_json":{}}}"#,
        ))
        .unwrap();
        assert_eq!(c.id, "abc");
        assert_eq!((&*c.topic, c.partition, c.offset), ("case-sql", 3, 7));
        assert_eq!(c.domain.as_deref(), Some("demo"));
        assert_eq!(c.document_subtype.as_deref(), Some("patient"));
        assert_eq!(c.publish_time_ms, Some(1_614_834_367_000));
        assert_eq!(c.attempts, 2);
        assert_eq!(
            c.document.as_deref(),
            Some(r#"{"_id":"abc","case_json":{}}"#)
        );
    }

    #[test]
    fn minimal_and_deletion() {
        let c = decode(&message(
            r#"{"document_id":"x","is_deletion":true,"document":null}"#,
        ))
        .unwrap();
        assert!(c.is_deletion && c.document.is_none() && c.domain.is_none());
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        for (value, needle) in [
            ("not json", "not a ChangeMeta JSON object"),
            (r#"{"domain":"d"}"#, "missing field `document_id`"),
            (r#"{"document_id":""}"#, "`document_id` is empty"),
            (
                r#"{"document_id":"a","document":[1]}"#,
                "`document` must be a JSON object",
            ),
            (
                r#"{"document_id":"a","publish_timestamp":"yesterday"}"#,
                "not an RFC 3339 time",
            ),
        ] {
            let err = decode(&message(value)).unwrap_err();
            assert!(err.to_string().contains(needle), "{value}: {err}");
            assert!(
                err.to_string().starts_with("case-sql:3 offset 7: "),
                "{err}"
            );
        }
        let err = decode(&Message {
            value: vec![0xff, 0xfe],
            ..message("")
        })
        .unwrap_err();
        assert!(err.reason.contains("not UTF-8"));
    }
}
