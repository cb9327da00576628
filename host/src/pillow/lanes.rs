//! What one transform thread runs: an instance of every processor's live
//! version and, beside it, of the candidate of each processor that has
//! one. Lane 0 is the one versions are read from: every lane runs the
//! same versions.

use crate::wasm::{Plugin, Processor};
use std::sync::Arc;

/// One transform thread's plugin instances.
pub(super) struct Lane {
    /// Per processor, in order: its live version.
    pub(super) live: Vec<Processor>,
    /// Per processor: its candidate, when one runs beside it.
    pub(super) shadow: Vec<Option<Processor>>,
}

impl Lane {
    /// A lane of `live` processors, without candidates.
    pub(super) fn new(live: Vec<Processor>) -> Lane {
        let shadow = live.iter().map(|_| None).collect();
        Lane { live, shadow }
    }

    /// Another lane of the same versions (fresh instances).
    pub(super) fn like(&self) -> Lane {
        let fresh = |p: &Processor| Processor::new(p.plugin().clone());
        Lane {
            live: self.live.iter().map(fresh).collect(),
            shadow: self.shadow.iter().map(|s| s.as_ref().map(fresh)).collect(),
        }
    }

    /// Run `candidate` beside processor `i` (`None`: stop its candidate).
    pub(super) fn set_shadow(&mut self, i: usize, candidate: Option<&Arc<Plugin>>) {
        self.shadow[i] = candidate.map(|p| Processor::new(p.clone()));
    }

    /// Whether any candidate runs.
    pub(super) fn shadowing(&self) -> bool {
        self.shadow.iter().any(Option::is_some)
    }
}
