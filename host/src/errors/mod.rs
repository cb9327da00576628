//! Pillow errors, end to end: what failed ([`ErrorKind`]), the record kept
//! for the retry queue ([`PillowError`]), its message bound
//! ([`cut_message`]), when it is tried again ([`backoff`]) and how it is
//! stored in SQLite and PostgreSQL ([`sql`]).
//!
//! A pillow error is unique per (document id, pillow, processor). A change
//! that fails again updates the same record: attempts go up, the message and
//! the change are replaced, and the next attempt moves out.

pub mod backoff;
pub mod sql;

pub use backoff::Backoff;

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
}

impl ErrorKind {
    /// Every kind, in a stable order.
    pub const ALL: [ErrorKind; 12] = [
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

/// A failed (change, processor): what is recorded, and what is read back.
#[derive(Debug, Clone, PartialEq)]
pub struct PillowError {
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
    pub tp: TopicPartition,
    /// Its offset.
    pub offset: u64,
    /// Its domain.
    pub domain: Option<String>,
    /// Its document type.
    pub document_type: Option<String>,
    /// The raw feed message value, so nothing is lost.
    pub change: Vec<u8>,
    /// When it (last) failed, epoch ms.
    pub at_ms: i64,
    /// Attempts so far, as stored (0 for a failure not yet recorded).
    pub attempts: u32,
    /// The next attempt, as stored (`None`: parked, or not yet recorded).
    pub next_attempt_ms: Option<i64>,
    /// The retry schedule to apply when this failure is recorded (the
    /// processor's; the default for one read back).
    pub backoff: Backoff,
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
        assert!(!ErrorKind::Permanent.retryable());
        assert!(ErrorKind::Fuel.retryable());
        assert_eq!(ErrorKind::parse("nope"), None);
    }
}
