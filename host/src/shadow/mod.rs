//! Shadow (canary) runs: a candidate plugin version runs beside the live
//! one on the same changes, and its actions are compared, never written.
//!
//! ```text
//! pillowtop plugin shadow NAME MANIFEST   (or [reload] shadow = true)
//!   -> the slot's candidate: compiled, initialised, fixture-checked
//!      (reload::Plugins::shadow)
//!   -> each pillow's lanes run it after the live version on every change
//!      it or the live version wants (pillow::chunk), and compare
//!      (compare::verdict)
//!   -> the chunk's tally and first differences go into the chunk's store
//!      transaction (sql::record): counted once per change, even when a
//!      crash replays the chunk
//! pillowtop plugin diff NAME | status | metrics   read them back
//! pillowtop plugin promote NAME | rollback NAME   switch at a chunk boundary
//! ```
//!
//! Plugins do no I/O, so running a version whose output is thrown away
//! has no effect beyond its CPU time.

pub mod compare;
pub mod sql;

use crate::change::Change;
use crate::errors::ErrorKind;
use compare::{CallResult, Verdict};
use serde::Serialize;
use std::collections::BTreeMap;

/// What a candidate did beside the live version over some changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Same actions, or the same error kind.
    pub agree: u64,
    /// Different actions.
    pub differ: u64,
    /// The candidate failed where the live version did not (or failed
    /// otherwise), by error kind.
    pub failed: BTreeMap<ErrorKind, u64>,
    /// Changes on which the candidate used more fuel than the live version.
    pub hungrier: u64,
    /// Fuel the live version used on these changes.
    pub live_fuel: u64,
    /// Fuel the candidate used on them.
    pub candidate_fuel: u64,
}

impl Tally {
    /// Changes compared.
    pub fn changes(&self) -> u64 {
        self.agree + self.differ + self.failures()
    }

    /// Changes the candidate failed.
    pub fn failures(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Add `other`'s counts.
    pub fn add(&mut self, other: &Tally) {
        self.agree += other.agree;
        self.differ += other.differ;
        for (kind, n) in &other.failed {
            *self.failed.entry(*kind).or_default() += n;
        }
        self.hungrier += other.hungrier;
        self.live_fuel += other.live_fuel;
        self.candidate_fuel += other.candidate_fuel;
    }

    /// Count one change.
    fn count(&mut self, verdict: Verdict, live_fuel: u64, candidate_fuel: u64) {
        match verdict {
            Verdict::Agree => self.agree += 1,
            Verdict::Differ => self.differ += 1,
            Verdict::CandidateFailed(kind) => *self.failed.entry(kind).or_default() += 1,
        }
        if candidate_fuel > live_fuel {
            self.hungrier += 1;
        }
        self.live_fuel += live_fuel;
        self.candidate_fuel += candidate_fuel;
    }

    /// Fuel per change of the live version and of the candidate.
    pub fn fuel_per_change(&self) -> (f64, f64) {
        let n = self.changes().max(1) as f64;
        (self.live_fuel as f64 / n, self.candidate_fuel as f64 / n)
    }
}

impl std::fmt::Display for Tally {
    /// `compared N: A agree, D differ, F failed (kinds); H hungrier; fuel
    /// per change L live, C candidate`: one wording for status, `plugin
    /// diff` and `replay`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (live, candidate) = self.fuel_per_change();
        write!(
            f,
            "compared {}: {} agree, {} differ, {} failed",
            self.changes(),
            self.agree,
            self.differ,
            self.failures()
        )?;
        if !self.failed.is_empty() {
            let kinds: Vec<String> = self
                .failed
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            write!(f, " ({})", kinds.join(", "))?;
        }
        write!(
            f,
            "; {} hungrier; fuel per change {live:.0} live, {candidate:.0} candidate",
            self.hungrier
        )
    }
}

/// One change on which the versions differ (or the candidate failed),
/// kept for `pillowtop plugin diff`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    /// The change's document id.
    pub doc_id: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// The live version's actions (or error), as JSON.
    pub live: serde_json::Value,
    /// The candidate's.
    pub candidate: serde_json::Value,
    /// Where they differ, one line per place.
    pub diff: Vec<String>,
}

/// What the candidate of one processor did in one chunk (or piece): for
/// the chunk's store transaction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowRecord {
    /// Pillow.
    pub pillow: String,
    /// Process number.
    pub process_num: u32,
    /// Processor (plugin name).
    pub processor: String,
    /// The live version.
    pub live_version: String,
    /// The candidate version.
    pub candidate_version: String,
    /// The counts.
    pub tally: Tally,
    /// The differences found, in change order; the store keeps the first
    /// `keep_diffs` per processor and candidate version.
    pub diffs: Vec<Difference>,
    /// How many differences per candidate version the store keeps.
    pub keep_diffs: u32,
}

/// One lane's observations of its candidates, per processor.
#[derive(Debug, Default)]
pub struct LaneShadow {
    /// Per processor (empty tallies for processors without a candidate).
    pub tallies: Vec<Tally>,
    /// Differences found, as (processor, difference), in change order.
    pub diffs: Vec<(usize, Difference)>,
    /// Per processor, how many more differences to describe.
    room: Vec<usize>,
}

impl LaneShadow {
    /// For `processors` processors, describing at most `room[j]`
    /// differences of processor `j` (none when `room` is shorter; the rest
    /// are counted only).
    pub fn new(processors: usize, room: &[usize]) -> LaneShadow {
        LaneShadow {
            tallies: vec![Tally::default(); processors],
            diffs: Vec::new(),
            room: (0..processors)
                .map(|j| room.get(j).copied().unwrap_or(0))
                .collect(),
        }
    }

    /// Count (and when different, describe) processor `j`'s candidate's
    /// result on `change`.
    pub fn observe(
        &mut self,
        j: usize,
        change: &Change,
        live: &CallResult,
        live_fuel: u64,
        candidate: &CallResult,
        candidate_fuel: u64,
    ) {
        let verdict = compare::verdict(live, candidate);
        self.tallies[j].count(verdict, live_fuel, candidate_fuel);
        if verdict == Verdict::Agree || self.room[j] == 0 {
            return;
        }
        self.room[j] -= 1;
        let live = compare::result_json(live);
        let candidate = compare::result_json(candidate);
        let diff = compare::describe(&live, &candidate);
        self.diffs.push((
            j,
            Difference {
                doc_id: change.id.clone(),
                topic: change.topic.to_string(),
                partition: change.partition,
                offset: change.offset,
                live,
                candidate,
                diff,
            },
        ));
    }

    /// Add another lane's observations (of later changes of the chunk).
    pub fn join(&mut self, other: LaneShadow) {
        for (mine, theirs) in self.tallies.iter_mut().zip(&other.tallies) {
            mine.add(theirs);
        }
        self.diffs.extend(other.diffs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_reads_the_same_everywhere() {
        let mut t = Tally {
            agree: 7,
            differ: 2,
            hungrier: 1,
            live_fuel: 1000,
            candidate_fuel: 1500,
            ..Tally::default()
        };
        t.failed.insert(ErrorKind::Fuel, 1);
        assert_eq!(t.changes(), 10);
        assert_eq!(
            t.to_string(),
            "compared 10: 7 agree, 2 differ, 1 failed (fuel 1); 1 hungrier; fuel per change 100 live, 150 candidate"
        );
    }
}
