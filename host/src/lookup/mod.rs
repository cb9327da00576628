//! Lookups: the read-only data a plugin may read beyond its change,
//! through the WIT `lookup` import, per resource its manifest grants
//! (`capabilities.lookups`).
//!
//! The host declares the resources (`[lookups.NAME]` in its config, see
//! [`crate::config::lookup`]): a SQL query over PostgreSQL, an
//! Elasticsearch index, or a table of its own store.
//! [`crate::resource::Resources`] serves them with a bounded [`Cache`] per
//! resource and meters calls, cache hits, queries and time.
//!
//! A plugin runs one change at a time on a Wasm thread, and a lookup is a
//! call into the host from inside it: a cache miss makes that thread wait
//! on the network. So a pillow does not wait once per change: before a
//! chunk's processors run it reads, for each plugin that declares
//! `[prefetch]` in its manifest (JSON pointers into the document whose
//! values are keys), the keys the chunk will ask for in **one** query per
//! resource and fills the cache (see `Resources::prefetch`). The calls
//! inside the plugin then hit memory. A key the prefetch could not
//! foresee still works, one query for it, counted against the call's
//! deadline. Why not a batch import (`lookup-many`) instead: the plugin
//! sees one change per call, so it could batch only its own keys; the
//! host sees the whole chunk.

mod cache;

pub use cache::Cache;

use crate::errors::ErrorKind;
use std::collections::HashMap;
use std::time::Instant;

/// Why a lookup gave no answer. The plugin receives it as an error
/// value; the change then fails with [`LookupError::kind`] whatever the
/// plugin does with it, so an outage is never taken for "absent".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The resource did not answer before the call's deadline.
    #[error(
        "lookup resource {resource:?} did not answer before the call's deadline (limits.timeout_ms); a slow database or index shows here"
    )]
    Timeout {
        /// The resource.
        resource: String,
    },
    /// The resource could not answer: down, a query that fails, a value
    /// that is not JSON, or no such resource in the host config.
    #[error("lookup resource {resource:?} could not answer: {message}")]
    Unavailable {
        /// The resource.
        resource: String,
        /// Why, and what to do.
        message: String,
    },
}

impl LookupError {
    /// The kind of the pillow error of a change whose lookup failed:
    /// `timeout`, or `lookup` (retried).
    pub fn kind(&self) -> ErrorKind {
        match self {
            LookupError::Timeout { .. } => ErrorKind::Timeout,
            LookupError::Unavailable { .. } => ErrorKind::Lookup,
        }
    }
}

/// Read-only data plugins may look up (granted per resource in the manifest).
pub trait Lookups: Send + Sync {
    /// The value of `key` in `resource` (JSON text), `None` when absent.
    /// It runs inside a plugin call, on a blocking thread, and must not
    /// wait past `deadline` (the call's `limits.timeout_ms`). The host
    /// starts no lookup after the deadline.
    ///
    /// # Errors
    ///
    /// When the resource cannot answer in time.
    fn get(
        &self,
        resource: &str,
        key: &str,
        deadline: Instant,
    ) -> Result<Option<String>, LookupError>;
}

/// In-memory lookups: resource -> key -> value. What fixtures give
/// (`"lookups"` in a fixture file); an unknown resource or key is absent.
#[derive(Debug, Default, Clone)]
pub struct MemoryLookups(pub HashMap<String, HashMap<String, String>>);

impl Lookups for MemoryLookups {
    fn get(
        &self,
        resource: &str,
        key: &str,
        _deadline: Instant,
    ) -> Result<Option<String>, LookupError> {
        Ok(self.0.get(resource).and_then(|r| r.get(key)).cloned())
    }
}
