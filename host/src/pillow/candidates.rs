//! What a pillow does with its candidates' findings after each chunk:
//! records for the chunk's store transaction, metrics, and the tally the
//! slot's promotion policy reads.

use super::lanes::Lane;
use crate::metrics::{Metric, Metrics};
use crate::reload::Follower;
use crate::shadow::{LaneShadow, ShadowRecord};

/// Per processor: the candidate the pillow last saw and how many of its
/// differences this process has sent to the store (which keeps the first
/// `keep_diffs`): past that, differences are only counted.
pub(super) struct Candidates {
    seen: Vec<Option<String>>,
    sent: Vec<u32>,
}

impl Candidates {
    pub(super) fn new(processors: usize) -> Candidates {
        Candidates {
            seen: vec![None; processors],
            sent: vec![0; processors],
        }
    }

    /// How many differences of each processor's candidate the next chunk
    /// may describe.
    pub(super) fn room(&mut self, lane: &Lane, followers: &[Follower]) -> Vec<usize> {
        lane.shadow
            .iter()
            .zip(followers)
            .enumerate()
            .map(|(j, (candidate, follower))| {
                let version = candidate.as_ref().map(|p| p.plugin().version().to_string());
                if version != self.seen[j] {
                    self.seen[j] = version;
                    self.sent[j] = 0;
                }
                match candidate {
                    Some(_) => follower
                        .slot()
                        .policy()
                        .keep_diffs
                        .saturating_sub(self.sent[j]) as usize,
                    None => 0,
                }
            })
            .collect()
    }

    /// The chunk's shadow records (one per processor with a candidate);
    /// adds the counts to the metrics and to each slot's tally (which may
    /// promote the candidate by the policy).
    pub(super) fn records(
        &mut self,
        pillow: &str,
        process_num: u32,
        lane: &Lane,
        followers: &[Follower],
        shadow: LaneShadow,
        metrics: &Metrics,
    ) -> Vec<ShadowRecord> {
        let LaneShadow { tallies, diffs, .. } = shadow;
        let mut records = Vec::new();
        for (j, tally) in tallies.into_iter().enumerate() {
            // Candidates come only through followers.
            let (Some(candidate), Some(follower)) = (&lane.shadow[j], followers.get(j)) else {
                continue;
            };
            if tally.changes() == 0 {
                continue;
            }
            let live = lane.live[j].plugin();
            let processor = live.manifest().name.clone();
            let candidate_version = candidate.plugin().version().to_string();
            // Lanes are joined in chunk order, so these are in change order.
            let found: Vec<_> = diffs
                .iter()
                .filter(|(k, _)| *k == j)
                .map(|(_, d)| d.clone())
                .collect();
            self.sent[j] += found.len() as u32;
            let labels = |outcome: &str| {
                [
                    ("pillow", pillow.to_owned()),
                    ("processor", processor.clone()),
                    ("outcome", outcome.to_owned()),
                ]
            };
            let add = |outcome: &str, n: u64| {
                if n > 0 {
                    let l = labels(outcome);
                    let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    metrics.add(Metric::ShadowChangesTotal, &l, n as f64);
                }
            };
            add("agree", tally.agree);
            add("differ", tally.differ);
            for (kind, n) in &tally.failed {
                add(kind.as_str(), *n);
            }
            for (role, fuel) in [
                ("live", tally.live_fuel),
                ("candidate", tally.candidate_fuel),
            ] {
                metrics.add(
                    Metric::ShadowFuelUsedTotal,
                    &[
                        ("pillow", pillow),
                        ("processor", &processor),
                        ("role", role),
                    ],
                    fuel as f64,
                );
            }
            if tally.hungrier > 0 {
                metrics.add(
                    Metric::ShadowHungrierTotal,
                    &[("pillow", pillow), ("processor", &processor)],
                    tally.hungrier as f64,
                );
            }
            follower.slot().add_shadow_tally(&candidate_version, &tally);
            records.push(ShadowRecord {
                pillow: pillow.to_owned(),
                process_num,
                processor,
                live_version: live.version().to_string(),
                candidate_version,
                tally,
                diffs: found,
                keep_diffs: follower.slot().policy().keep_diffs,
            });
        }
        records
    }
}
