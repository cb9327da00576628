//! Which process reads which partitions (CommCare's assignment).
//!
//! All (topic, partition) pairs of a pillow are sorted by topic, then
//! partition; process `k` of `n` takes `pairs[k::n]`. With a dedicated
//! migration process, process 0 takes none and processes `1..n` split the
//! pairs among themselves.

use crate::feed::TopicPartition;
use std::collections::HashMap;

/// Errors in a process layout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AssignmentError {
    /// `process_num` is not below `num_processes`.
    #[error("process_num {process_num} is out of range: num_processes is {num_processes}, so use 0..={max}", max = num_processes.saturating_sub(1))]
    OutOfRange {
        /// The process number given.
        process_num: u32,
        /// The number of processes.
        num_processes: u32,
    },
    /// A dedicated migration process needs at least one other process.
    #[error(
        "dedicated_migration_process needs num_processes >= 2 (process 0 migrates, the others read partitions); got {0}"
    )]
    MigrationNeedsTwo(u32),
    /// `num_processes` is zero.
    #[error("num_processes must be at least 1")]
    NoProcesses,
}

/// The partitions process `process_num` of `num_processes` reads.
///
/// # Errors
///
/// Fails when the layout is impossible (see [`AssignmentError`]).
pub fn assign(
    mut pairs: Vec<TopicPartition>,
    num_processes: u32,
    process_num: u32,
    dedicated_migration_process: bool,
) -> Result<Vec<TopicPartition>, AssignmentError> {
    if num_processes == 0 {
        return Err(AssignmentError::NoProcesses);
    }
    if process_num >= num_processes {
        return Err(AssignmentError::OutOfRange {
            process_num,
            num_processes,
        });
    }
    pairs.sort();
    pairs.dedup();
    let (k, n) = if dedicated_migration_process {
        if num_processes < 2 {
            return Err(AssignmentError::MigrationNeedsTwo(num_processes));
        }
        if process_num == 0 {
            return Ok(vec![]);
        }
        (process_num - 1, num_processes - 1)
    } else {
        (process_num, num_processes)
    };
    Ok(pairs
        .into_iter()
        .skip(k as usize)
        .step_by(n as usize)
        .collect())
}

/// Which process owns each pair in the layout, derived from [`assign`] so
/// the rule lives in one place.
///
/// # Errors
///
/// Fails when the layout is impossible (see [`AssignmentError`]).
pub fn owners(
    pairs: &[TopicPartition],
    num_processes: u32,
    dedicated_migration_process: bool,
) -> Result<HashMap<TopicPartition, u32>, AssignmentError> {
    let mut out = HashMap::with_capacity(pairs.len());
    for k in 0..num_processes {
        for tp in assign(
            pairs.to_vec(),
            num_processes,
            k,
            dedicated_migration_process,
        )? {
            out.insert(tp, k);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(t: &str, p: u32) -> TopicPartition {
        TopicPartition::new(t, p)
    }

    fn pairs() -> Vec<TopicPartition> {
        // Deliberately unsorted: assignment must not depend on input order.
        vec![
            tp("form", 1),
            tp("case", 2),
            tp("case", 0),
            tp("form", 0),
            tp("case", 1),
        ]
    }

    #[test]
    fn strided_over_sorted_pairs() {
        assert_eq!(
            assign(pairs(), 2, 0, false).unwrap(),
            [tp("case", 0), tp("case", 2), tp("form", 1)]
        );
        assert_eq!(
            assign(pairs(), 2, 1, false).unwrap(),
            [tp("case", 1), tp("form", 0)]
        );
        assert_eq!(assign(pairs(), 1, 0, false).unwrap().len(), 5);
    }

    #[test]
    fn processes_cover_every_pair_exactly_once() {
        for n in 1..=7 {
            let mut seen: Vec<_> = (0..n)
                .flat_map(|k| assign(pairs(), n, k, false).unwrap())
                .collect();
            seen.sort();
            let mut expected = pairs();
            expected.sort();
            assert_eq!(seen, expected, "n={n}");
            let owners = owners(&pairs(), n, false).unwrap();
            for t in pairs() {
                let k = owners[&t];
                assert!(assign(pairs(), n, k, false).unwrap().contains(&t));
            }
        }
    }

    #[test]
    fn dedicated_migration_process_gets_nothing() {
        assert!(assign(pairs(), 3, 0, true).unwrap().is_empty());
        assert_eq!(
            assign(pairs(), 3, 1, true).unwrap(),
            [tp("case", 0), tp("case", 2), tp("form", 1)]
        );
        assert_eq!(
            assign(pairs(), 3, 2, true).unwrap(),
            [tp("case", 1), tp("form", 0)]
        );
        assert_eq!(
            owners(&pairs(), 3, true).unwrap().get(&tp("form", 0)),
            Some(&2)
        );
        assert_eq!(
            assign(pairs(), 1, 0, true),
            Err(AssignmentError::MigrationNeedsTwo(1))
        );
    }

    #[test]
    fn bad_layouts_are_errors() {
        assert_eq!(
            assign(pairs(), 0, 0, false),
            Err(AssignmentError::NoProcesses)
        );
        let err = assign(pairs(), 2, 2, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "process_num 2 is out of range: num_processes is 2, so use 0..=1"
        );
    }
}
