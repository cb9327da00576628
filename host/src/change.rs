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
use pillowtop_sdk::json::{self, Kind, Reader};
use std::borrow::Cow;
use std::sync::Arc;

/// One decoded change.
///
/// A change read from a feed owns the message value it was decoded from
/// (the `ChangeMeta` JSON, exactly as the feed held it: what a pillow error
/// keeps to run it again), and its inline document is a range of that
/// value rather than a copy of it.
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
    /// The feed value (empty for a change made by hand).
    value: String,
    /// Where its document is.
    document: Document,
}

/// Where a change's document is.
#[derive(Debug, Clone, PartialEq, Default)]
enum Document {
    /// It has none.
    #[default]
    None,
    /// Inline: these bytes of the change's value (whole characters: the
    /// range of a JSON value within the text).
    Inline(std::ops::Range<usize>),
    /// Given apart: read from a document source, or made by hand.
    Apart(String),
}

impl Change {
    /// A change of document `id` at `topic:partition` `offset`, made by
    /// hand (fixtures, the retry queue's stand-ins, tests): no metadata
    /// beyond these, no document and no feed value.
    pub fn new(
        id: impl Into<String>,
        topic: impl Into<Arc<str>>,
        partition: u32,
        offset: u64,
    ) -> Change {
        Change {
            id: id.into(),
            topic: topic.into(),
            partition,
            offset,
            domain: None,
            document_type: None,
            document_subtype: None,
            is_deletion: false,
            publish_time_ms: None,
            attempts: 0,
            processing_time_ms: 0,
            value: String::new(),
            document: Document::None,
        }
    }

    /// The document, JSON text of an object; `None` when the change
    /// carries none (a deletion, or a change whose document a document
    /// source reads).
    pub fn document(&self) -> Option<&str> {
        match &self.document {
            Document::None => None,
            Document::Inline(range) => Some(&self.value[range.clone()]),
            Document::Apart(text) => Some(text),
        }
    }

    /// Give the change its document (JSON text of an object), in place of
    /// any it had.
    pub fn set_document(&mut self, document: impl Into<String>) {
        self.document = Document::Apart(document.into());
    }

    /// This change with `document` as its document.
    #[must_use]
    pub fn with_document(mut self, document: impl Into<String>) -> Change {
        self.set_document(document);
        self
    }

    /// The feed value it was decoded from, as the feed held it (empty for
    /// a change made by hand).
    pub fn value(&self) -> &[u8] {
        self.value.as_bytes()
    }

    /// Take the feed value out, leaving the change without it (and
    /// without an inline document, which lived in it).
    pub fn take_value(&mut self) -> Vec<u8> {
        if matches!(self.document, Document::Inline(_)) {
            self.document = Document::None;
        }
        std::mem::take(&mut self.value).into_bytes()
    }
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

/// A message that is not a change, given back with why.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Undecodable {
    /// The message, as it was read.
    pub message: Message,
    /// Why it does not decode.
    pub error: DecodeError,
}

/// Decode one feed message; the change keeps the message's value buffer
/// and its inline document is a range of it (no copy of either).
///
/// One validating pass over the value with the SDK's JSON reader: the
/// metadata fields are read where they stand and the inline document is
/// validated and located in place, taken whole by the reader's 64-byte
/// block validator on x86-64 (about 17k instructions per 1.8 KB case in
/// the pillow, against 22k byte by byte).
/// Unknown fields are validated and ignored; a field given twice takes its
/// last value; `null` is the same as an absent field.
///
/// # Errors
///
/// Fails, giving the message back, when the value is not UTF-8 JSON,
/// lacks a string `document_id`, has a `document` that is not an object,
/// or a `publish_timestamp` that is neither RFC 3339 text nor epoch
/// milliseconds.
pub fn decode(message: Message) -> Result<Change, Box<Undecodable>> {
    let Message {
        tp,
        offset,
        key,
        value,
        timestamp_ms,
    } = message;
    let fail = |reason: String, value: Vec<u8>, tp: crate::feed::TopicPartition| {
        Box::new(Undecodable {
            error: DecodeError {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset,
                reason,
            },
            message: Message {
                tp,
                offset,
                key: key.clone(),
                value,
                timestamp_ms,
            },
        })
    };
    let text = match String::from_utf8(value) {
        Ok(text) => text,
        Err(e) => {
            let reason = format!(
                "value is not UTF-8 ({}); a change is ChangeMeta JSON",
                e.utf8_error()
            );
            return Err(fail(reason, e.into_bytes(), tp));
        }
    };
    match Fields::read(&text) {
        Ok(fields) => Ok(Change {
            id: fields.id,
            topic: tp.topic,
            partition: tp.partition,
            offset,
            domain: fields.domain,
            document_type: fields.document_type,
            document_subtype: fields.document_subtype,
            is_deletion: fields.is_deletion,
            publish_time_ms: fields.publish_time_ms,
            attempts: fields.attempts,
            processing_time_ms: crate::time::now_ms(),
            value: text,
            document: fields.document.map_or(Document::None, Document::Inline),
        }),
        Err(reason) => Err(fail(reason, text.into_bytes(), tp)),
    }
}

/// A change's metadata, owned, and where its document is in the value.
struct Fields {
    id: String,
    domain: Option<String>,
    document_type: Option<String>,
    document_subtype: Option<String>,
    is_deletion: bool,
    publish_time_ms: Option<i64>,
    attempts: u32,
    document: Option<std::ops::Range<usize>>,
}

impl Fields {
    /// Read `text`; why it is not a change, in words that say what a valid
    /// one looks like.
    fn read(text: &str) -> Result<Fields, String> {
        let wire = Wire::read(text)?;
        let id = match wire.document_id {
            None => return Err("missing field `document_id`: a change names its document".into()),
            Some(id) if id.is_empty() => return Err("`document_id` is empty".into()),
            Some(id) => id.into_owned(),
        };
        let publish_time_ms = match wire.publish_timestamp {
            None => None,
            Some(Timestamp::Millis(ms)) => Some(ms as i64),
            Some(Timestamp::Text(t)) => Some(crate::time::parse_rfc3339_ms(&t).ok_or_else(|| {
                format!("`publish_timestamp` {t:?} is not an RFC 3339 time such as 2026-11-22T05:09:00.000000Z")
            })?),
        };
        // The document is a slice of `text`: its place in it.
        let document = wire.document.map(|doc| {
            let start = doc.as_ptr() as usize - text.as_ptr() as usize;
            start..start + doc.len()
        });
        Ok(Fields {
            id,
            domain: wire.domain.map(Cow::into_owned),
            document_type: wire.document_type.map(Cow::into_owned),
            document_subtype: wire.document_subtype.map(Cow::into_owned),
            is_deletion: wire.is_deletion,
            publish_time_ms,
            attempts: wire.attempts,
            document,
        })
    }
}

enum Timestamp<'a> {
    Text(Cow<'a, str>),
    Millis(f64),
}

/// The fields of a ChangeMeta the host reads, borrowed from the value.
#[derive(Default)]
struct Wire<'a> {
    document_id: Option<Cow<'a, str>>,
    domain: Option<Cow<'a, str>>,
    document_type: Option<Cow<'a, str>>,
    document_subtype: Option<Cow<'a, str>>,
    is_deletion: bool,
    publish_timestamp: Option<Timestamp<'a>>,
    attempts: u32,
    /// The document object's text, a slice of the value.
    document: Option<&'a str>,
}

impl<'a> Wire<'a> {
    /// Read `text`; why it is not a ChangeMeta, in words for the user.
    fn read(text: &'a str) -> Result<Wire<'a>, String> {
        let json = |e: json::Error| {
            format!("value is not a ChangeMeta JSON object with a string `document_id`: {e}")
        };
        let mut r = Reader::new(text);
        let mut wire = Wire::default();
        r.object().map_err(json)?;
        while let Some(key) = r.key().map_err(json)? {
            let value = r.value().map_err(json)?;
            let key = key.decoded();
            let wrong = |what: &str| format!("`{key}` must be {what}, not {}", value.raw());
            let text = || match value.kind() {
                Kind::Null => Ok(None),
                Kind::String => Ok(value.as_str()),
                _ => Err(wrong("a string (or null)")),
            };
            match &*key {
                "document_id" => wire.document_id = text()?,
                "domain" => wire.domain = text()?,
                "document_type" => wire.document_type = text()?,
                "document_subtype" => wire.document_subtype = text()?,
                "is_deletion" => {
                    wire.is_deletion = match value.kind() {
                        Kind::Null => false,
                        _ => value.as_bool().ok_or_else(|| wrong("true or false"))?,
                    }
                }
                "attempts" => {
                    wire.attempts = match value.kind() {
                        Kind::Null => 0,
                        _ => value
                            .as_i64()
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(|| wrong("a whole number from 0"))?,
                    }
                }
                "publish_timestamp" => {
                    wire.publish_timestamp = match value.kind() {
                        Kind::Null => None,
                        Kind::String => value.as_str().map(Timestamp::Text),
                        Kind::Number => value.as_f64().map(Timestamp::Millis),
                        _ => return Err(wrong("RFC 3339 text or epoch milliseconds")),
                    }
                }
                "document" => {
                    wire.document = match value.kind() {
                        Kind::Null => None,
                        Kind::Object => Some(value.raw()),
                        _ => return Err(wrong("a JSON object (or absent)")),
                    }
                }
                _ => {}
            }
        }
        r.end().map_err(json)?;
        Ok(wire)
    }
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
        let c = decode(message(
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
        assert_eq!(c.document(), Some(r#"{"_id":"abc","case_json":{}}"#));
    }

    #[test]
    fn reads_escapes_numbers_and_nulls_and_ignores_unknown_fields() {
        let c = decode(message(
            r#" {"extra":{"deep":[1,{"document_id":"no"}]},"document_id":"a\"b\u00e9",
                "domain":null,"publish_timestamp":1614834367000,"attempts":null,
                "document":{"_id":"a\"b\u00e9","s":"}"}} "#,
        ))
        .unwrap();
        assert_eq!(c.id, "a\"b\u{e9}");
        assert_eq!(c.domain, None);
        assert_eq!(c.publish_time_ms, Some(1_614_834_367_000));
        assert_eq!(c.attempts, 0);
        assert_eq!(
            c.document(),
            Some(r#"{"_id":"a\"b\u00e9","s":"}"}"#),
            "the document is kept as written"
        );
        let twice = decode(message(r#"{"document_id":"a","document_id":"b"}"#)).unwrap();
        assert_eq!(twice.id, "b", "a field given twice takes its last value");
    }

    #[test]
    fn minimal_and_deletion() {
        let c = decode(message(
            r#"{"document_id":"x","is_deletion":true,"document":null}"#,
        ))
        .unwrap();
        assert!(c.is_deletion && c.document().is_none() && c.domain.is_none());
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
            (r#"{"document_id":7}"#, "`document_id` must be a string"),
            (
                r#"{"document_id":"a","domain":["d"]}"#,
                "`domain` must be a string",
            ),
            (
                r#"{"document_id":"a","is_deletion":"yes"}"#,
                "`is_deletion` must be true or false",
            ),
            (
                r#"{"document_id":"a","attempts":-1}"#,
                "`attempts` must be a whole number",
            ),
            (
                r#"{"document_id":"a","attempts":1.5}"#,
                "`attempts` must be a whole number",
            ),
            (
                r#"{"document_id":"a","publish_timestamp":{}}"#,
                "`publish_timestamp` must be",
            ),
            (
                r#"{"document_id":"a","document":{"x":tru}}"#,
                "not a ChangeMeta JSON object",
            ),
            (r#"{"document_id":"a"} {}"#, "not a ChangeMeta JSON object"),
            (r#"["document_id"]"#, "not a ChangeMeta JSON object"),
        ] {
            let err = decode(message(value)).unwrap_err();
            assert!(err.to_string().contains(needle), "{value}: {err}");
            assert!(
                err.to_string().starts_with("case-sql:3 offset 7: "),
                "{err}"
            );
        }
        let err = decode(Message {
            value: vec![0xff, 0xfe],
            ..message("")
        })
        .unwrap_err();
        assert!(err.error.reason.contains("not UTF-8"));
    }

    #[test]
    fn a_change_keeps_its_value_and_finds_its_document_in_it() {
        let value =
            r#"{"document_id":"é1","document":{"_id":"é1","n":[1,{"x":"}"}]},"domain":"d"}"#;
        let c = decode(message(value)).unwrap();
        assert_eq!(c.value(), value.as_bytes(), "the value as the feed held it");
        assert_eq!(c.document(), Some(r#"{"_id":"é1","n":[1,{"x":"}"}]}"#));
        let mut c2 = c.clone();
        assert_eq!(c2.take_value(), value.as_bytes());
        assert_eq!(
            c2.document(),
            None,
            "the inline document went with the value"
        );
        let mut apart = c.with_document(r#"{"a":1}"#);
        assert_eq!(apart.document(), Some(r#"{"a":1}"#));
        assert_eq!(apart.take_value(), value.as_bytes());
        assert_eq!(
            apart.document(),
            Some(r#"{"a":1}"#),
            "a document given apart stays"
        );
    }

    #[test]
    fn an_undecodable_message_is_given_back_whole() {
        for value in [&b"not json"[..], &[0xff, 0xfe][..]] {
            let m = Message {
                key: Some(b"k".to_vec()),
                timestamp_ms: Some(5),
                value: value.to_vec(),
                ..message("")
            };
            let back = decode(m.clone()).unwrap_err();
            assert_eq!(back.message, m);
            let at = (&*back.error.topic, back.error.partition, back.error.offset);
            assert_eq!(
                at,
                ("case-sql", 3, 7),
                "the error says where the message is"
            );
        }
    }
}
