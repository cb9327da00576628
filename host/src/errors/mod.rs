//! Pillow errors, end to end: what failed ([`ErrorKind`]), the record kept
//! for the retry queue ([`PillowError`], [`ErrorState`]), its message bound
//! ([`cut_message`]), when it is tried again ([`backoff`]), how it is
//! stored in SQLite and PostgreSQL ([`sql`]) and what operators query
//! ([`ops`]).
//!
//! A pillow error is unique per (document id, pillow, processor) (CommCare:
//! per document and pillow). A change that fails again updates the same
//! record: attempts go up, the message and the change are replaced by the
//! latest failing change (CommCare keeps the first), and the next attempt
//! moves out. A newer change of the document that passes the same
//! processor resolves the record: with versioned writes, the stale change
//! must never be applied over newer data.

pub mod backoff;
pub mod ops;
pub mod sql;

pub use backoff::Backoff;

use crate::change::Change;
use crate::feed::TopicPartition;
use std::fmt;

/// Longest pillow error message kept, in bytes: the same cut as a plugin's
/// log lines. A message is stored, logged and shown by `status`, so a
/// plugin must not be able to make it arbitrarily large.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// `message` cut to at most [`MAX_MESSAGE_BYTES`] on a character
/// boundary; a cut message ends with a note of its original length, so
/// nobody mistakes it for the whole text. Cutting a cut message changes
/// nothing.
pub fn cut_message(message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let note = format!("… [cut: the message was {} bytes]", message.len());
    let mut end = MAX_MESSAGE_BYTES - note.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{note}", &message[..end])
}

/// What kind of failure a pillow error records. The names are stable: they
/// are stored, shown by `status` and used as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The feed message is not a valid change (bad JSON, missing `document_id`).
    Decode,
    /// The plugin ran out of fuel (`limits.fuel`).
    Fuel,
    /// The plugin exceeded its wall-clock deadline (`limits.timeout_ms`).
    Timeout,
    /// The plugin tried to grow memory beyond `limits.memory_mb`.
    Memory,
    /// The plugin handed the host more data in one call than
    /// `limits.output_mb` (its actions' strings and rows, a log line, a
    /// request for random bytes).
    Output,
    /// The plugin trapped: a panic, an `unreachable`, a stack overflow.
    Trap,
    /// The plugin used a table, index or lookup it did not declare.
    Capability,
    /// The plugin returned a malformed action (bad JSON, wrong row shape).
    Malformed,
    /// The plugin said the change might succeed later.
    Retryable,
    /// The plugin said the change can never succeed.
    Permanent,
    /// A fresh instance could not be created or initialised.
    Instantiate,
    /// A sink refused the change's write (a mapping or parse error,
    /// another 4xx); the rest of its chunk landed.
    Rejected,
    /// The pillow's document source has no document for a change that is
    /// not a deletion (CommCare's `DocumentMissingError`): always retried,
    /// as the document may not be written yet.
    Missing,
    /// A lookup resource the plugin asked could not answer (its database
    /// or index is down or refused the query): retried.
    Lookup,
}

impl ErrorKind {
    /// Every kind, in a stable order.
    pub const ALL: [ErrorKind; 14] = [
        ErrorKind::Decode,
        ErrorKind::Fuel,
        ErrorKind::Timeout,
        ErrorKind::Memory,
        ErrorKind::Output,
        ErrorKind::Trap,
        ErrorKind::Capability,
        ErrorKind::Malformed,
        ErrorKind::Retryable,
        ErrorKind::Permanent,
        ErrorKind::Instantiate,
        ErrorKind::Rejected,
        ErrorKind::Missing,
        ErrorKind::Lookup,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Decode => "decode",
            ErrorKind::Fuel => "fuel",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Memory => "memory",
            ErrorKind::Output => "output",
            ErrorKind::Trap => "trap",
            ErrorKind::Capability => "capability",
            ErrorKind::Malformed => "malformed",
            ErrorKind::Retryable => "retryable",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Instantiate => "instantiate",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Missing => "missing",
            ErrorKind::Lookup => "lookup",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether retrying can help. A permanent plugin error and a malformed
    /// message will fail the same way every time; everything else may pass
    /// with a fixed plugin, a bigger budget or on a quieter machine.
    pub fn retryable(self) -> bool {
        !matches!(self, ErrorKind::Permanent | ErrorKind::Decode)
    }
}

/// Serialized by its stored name.
impl serde::Serialize for ErrorKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a pillow error stands in the retry queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorState {
    /// Waiting for its next attempt (`next_attempt_ms`).
    Pending,
    /// No attempt is scheduled: its series is used up, its kind cannot be
    /// fixed by retrying, or its plugin's retries are off. Only an
    /// operator's `errors retry` queues it again.
    Parked,
    /// A later attempt (by the queue, or a newer change of the same
    /// document through the same processor) succeeded. Kept for
    /// inspection until purged.
    Resolved,
}

impl ErrorState {
    /// Every state, in a stable order.
    pub const ALL: [ErrorState; 3] = [
        ErrorState::Pending,
        ErrorState::Parked,
        ErrorState::Resolved,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorState::Pending => "pending",
            ErrorState::Parked => "parked",
            ErrorState::Resolved => "resolved",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<ErrorState> {
        ErrorState::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl serde::Serialize for ErrorState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for ErrorState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A processor as pillow errors name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessorRef {
    /// Plugin name.
    pub name: String,
    /// `version+hash`.
    pub version: String,
    /// Its retry schedule (its manifest's `[retry]`).
    pub backoff: Backoff,
}

/// A failed (change, processor): what is recorded, and what is read back.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PillowError {
    /// The stored record's id (0 for a failure not yet recorded).
    pub id: i64,
    /// Document id (or `topic:partition:offset` when the message had none).
    pub doc_id: String,
    /// Pillow name.
    pub pillow: String,
    /// Processor (plugin) name; empty for decode errors.
    pub processor: String,
    /// Plugin version (`version+hash`), if a plugin ran.
    pub plugin_version: Option<String>,
    /// Kind.
    pub kind: ErrorKind,
    /// What happened (at most [`MAX_MESSAGE_BYTES`]).
    pub message: String,
    /// Where the change was.
    #[serde(serialize_with = "tp_text")]
    pub tp: TopicPartition,
    /// Its offset.
    pub offset: u64,
    /// Its domain.
    pub domain: Option<String>,
    /// Its document type.
    pub document_type: Option<String>,
    /// The raw feed message value, so nothing is lost (the latest failing
    /// change of the document).
    #[serde(serialize_with = "bytes_text")]
    pub change: Vec<u8>,
    /// When it (last) failed, epoch ms.
    pub at_ms: i64,
    /// When it first failed, epoch ms (as stored; `at_ms` for a new one).
    pub first_attempt_ms: i64,
    /// Failures in the current series (CommCare's `current_attempt`), as
    /// stored; 0 for a failure not yet recorded.
    pub series_attempts: u32,
    /// Failures in all (CommCare's `total_attempts`), as stored.
    pub total_attempts: u32,
    /// The next attempt, as stored (`None`: parked or resolved, or not yet
    /// recorded).
    pub next_attempt_ms: Option<i64>,
    /// Where it stands.
    pub state: ErrorState,
    /// When it was resolved.
    pub resolved_at_ms: Option<i64>,
    /// The retry schedule to apply when this failure is recorded (the
    /// processor's; the default for one read back).
    #[serde(skip)]
    pub backoff: Backoff,
}

fn tp_text<S: serde::Serializer>(tp: &TopicPartition, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(tp)
}

/// The change as text when it is UTF-8 (a feed message is JSON), else
/// lossily.
fn bytes_text<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(b))
}

impl PillowError {
    /// The feed message this error stores, as the feed gave it (keyed by
    /// the document id), to decode or run again.
    pub fn feed_message(&self) -> crate::feed::Message {
        crate::feed::Message {
            tp: self.tp.clone(),
            offset: self.offset,
            key: Some(self.doc_id.clone().into_bytes()),
            value: self.change.clone(),
            timestamp_ms: None,
        }
    }

    /// A new failure of `change` (stored with its feed value) in `pillow`
    /// through `processor`, at `at_ms`. Its message is cut to
    /// [`MAX_MESSAGE_BYTES`].
    pub fn of_change(
        pillow: &str,
        change: &Change,
        processor: &ProcessorRef,
        kind: ErrorKind,
        message: String,
        at_ms: i64,
    ) -> PillowError {
        PillowError {
            processor: processor.name.clone(),
            plugin_version: Some(processor.version.clone()),
            backoff: processor.backoff,
            ..PillowError::without_document(
                pillow,
                change,
                change.value().to_vec(),
                kind,
                message,
                at_ms,
            )
        }
    }

    /// A failure of `change` in `pillow` that belongs to no processor: no
    /// processor ran because the change has no document (its document
    /// source lacks it, or holds something that is not a JSON object); on
    /// retry every processor runs. [`PillowError::of_change`] adds the
    /// processor.
    pub fn without_document(
        pillow: &str,
        change: &Change,
        raw: Vec<u8>,
        kind: ErrorKind,
        message: String,
        at_ms: i64,
    ) -> PillowError {
        PillowError {
            domain: change.domain.clone(),
            document_type: change.document_type.clone(),
            ..PillowError::new(
                pillow,
                change.id.clone(),
                TopicPartition {
                    topic: change.topic.clone(),
                    partition: change.partition,
                },
                change.offset,
                raw,
                kind,
                message,
                at_ms,
            )
        }
    }

    /// A feed message at `offset` of `tp` that does not decode (kind
    /// `decode`, no processor): `doc_id` is its key, or where it is.
    pub fn undecodable(
        pillow: &str,
        doc_id: String,
        (tp, offset): (TopicPartition, u64),
        raw: Vec<u8>,
        message: String,
        at_ms: i64,
    ) -> PillowError {
        PillowError::new(
            pillow,
            doc_id,
            tp,
            offset,
            raw,
            ErrorKind::Decode,
            message,
            at_ms,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        pillow: &str,
        doc_id: String,
        tp: TopicPartition,
        offset: u64,
        change: Vec<u8>,
        kind: ErrorKind,
        message: String,
        at_ms: i64,
    ) -> PillowError {
        PillowError {
            id: 0,
            doc_id,
            pillow: pillow.to_owned(),
            processor: String::new(),
            plugin_version: None,
            kind,
            message: cut_message(message),
            tp,
            offset,
            domain: None,
            document_type: None,
            change,
            at_ms,
            first_attempt_ms: at_ms,
            series_attempts: 0,
            total_attempts: 0,
            next_attempt_ms: None,
            state: ErrorState::Pending,
            resolved_at_ms: None,
            backoff: Backoff::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_with_their_length() {
        assert_eq!(cut_message("short".into()), "short");
        let exact = "a".repeat(MAX_MESSAGE_BYTES);
        assert_eq!(cut_message(exact.clone()), exact);
        let long = "é".repeat(MAX_MESSAGE_BYTES); // 2 bytes a character
        let cut = cut_message(long);
        assert!(cut.len() <= MAX_MESSAGE_BYTES, "{} bytes", cut.len());
        assert!(cut.len() > MAX_MESSAGE_BYTES - 64, "{} bytes", cut.len());
        assert!(cut.starts_with("éé"), "{cut}");
        assert!(
            cut.ends_with(&format!(
                "é… [cut: the message was {} bytes]",
                2 * MAX_MESSAGE_BYTES
            )),
            "a cut never splits a character: {cut}"
        );
        assert_eq!(
            cut_message(cut.clone()),
            cut,
            "a cut message stays as it is"
        );
    }

    #[test]
    fn kinds_round_trip_and_classify() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(k.as_str()), Some(k));
        }
        for s in ErrorState::ALL {
            assert_eq!(ErrorState::parse(s.as_str()), Some(s));
        }
        assert!(!ErrorKind::Permanent.retryable());
        assert!(ErrorKind::Fuel.retryable());
        assert_eq!(ErrorKind::parse("nope"), None);
    }
}
