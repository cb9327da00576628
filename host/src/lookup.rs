//! Lookups: the read-only data a plugin may read beyond its change,
//! through the WIT `lookup` import, per resource its manifest grants
//! (`capabilities.lookups`). Today an in-memory map; resources backed by a
//! database or an index implement [`Lookups`] too.

use std::collections::HashMap;
use std::time::Instant;

/// Read-only data plugins may look up (granted per resource in the manifest).
pub trait Lookups: Send + Sync {
    /// The value for `key` in `resource`, if any. It runs inside a plugin
    /// call and must not wait past `deadline` (the call's
    /// `limits.timeout_ms`): an implementation that waits on I/O bounds
    /// its wait by it. The host starts no lookup after the deadline.
    fn get(&self, resource: &str, key: &str, deadline: Instant) -> Option<String>;
}

/// In-memory lookups: resource -> key -> value.
#[derive(Debug, Default, Clone)]
pub struct MemoryLookups(pub HashMap<String, HashMap<String, String>>);

impl Lookups for MemoryLookups {
    fn get(&self, resource: &str, key: &str, _deadline: Instant) -> Option<String> {
        self.0.get(resource)?.get(key).cloned()
    }
}
