//! Lean JSON reading and writing for plugins.
//!
//! Plugins pay for every instruction (fuel), so these helpers avoid building
//! a tree: [`Value`] is a validated slice of the input, [`Value::members`]
//! walks an object's members lazily, and values can be copied to the output
//! verbatim with [`Value::raw`]. Everything is validated as it is walked, so
//! a raw slice that reaches the output is always well-formed JSON.
//!
//! ```
//! use pillowtop_sdk::json::{Value, Kind};
//!
//! let doc = Value::parse(r#"{"name": "Ada", "age": 36}"#).unwrap();
//! assert_eq!(doc.get("name").unwrap().as_str().unwrap(), "Ada");
//! assert_eq!(doc.get("age").unwrap().kind(), Kind::Number);
//! ```

//! The parts: reading ([`Value`], [`Key`], [`walk_object`], and
//! [`Reader`], a cursor the caller steers through one validating pass), validating
//! ([`validate`], with a fast path by 64-byte blocks on x86-64), the
//! scanner that says where and why text is not JSON, and writing
//! ([`write_compact`], [`write_str`], [`write_escaped`]).

#[cfg(target_arch = "x86_64")]
mod blocks;
mod reader;
mod scan;
mod validate;
mod value;
mod write;

pub use reader::Reader;
pub use validate::validate;
pub use value::{Elements, Key, Members, Value, Walk, walk_object};
pub use write::{write_compact, write_escaped, write_str};

use std::fmt;

/// Nesting deeper than this is rejected, so hostile input cannot exhaust the stack.
pub const MAX_DEPTH: usize = 128;

/// Why some text is not valid JSON, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error {
    /// Byte offset in the text where the problem was found.
    pub offset: usize,
    /// What was expected or found.
    pub reason: &'static str,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid JSON at byte {}: {}", self.offset, self.reason)
    }
}

impl std::error::Error for Error {}

/// The kind of a JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `null`
    Null,
    /// `true` or `false`
    Bool,
    /// A number, e.g. `-1.5e3`
    Number,
    /// A string
    String,
    /// An array
    Array,
    /// An object
    Object,
}

#[cfg(test)]
mod tests;
