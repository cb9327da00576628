//! `GET /healthz`: whether the pillows are doing their job, with the
//! reasons when they are not.
//!
//! Unhealthy when a pillow's process has stopped or stopped answering and
//! nothing runs in its place, when a sink has been unreachable longer than
//! [`HealthRules::sink_down_seconds`], or when changes wait and no
//! checkpoint has moved for [`HealthRules::checkpoint_stalled_seconds`].

use super::{HealthRules, Status};

/// The reasons `status` is unhealthy under `rules`; empty when healthy.
pub fn health(status: &Status, rules: &HealthRules) -> Vec<String> {
    let now = status.at_ms;
    let mut reasons = Vec::new();
    for p in &status.pillows {
        for proc in &p.processes {
            let replaced = p
                .processes
                .iter()
                .any(|o| o.process_num == proc.process_num && o.state == "running");
            if proc.state != "running" && !replaced {
                reasons.push(format!(
                    "pillow {} process {} is {} (pid {} on {}, last heartbeat {}s ago): start it again with `pillowtop run --pillow {} --process-num {}`",
                    p.pillow,
                    proc.process_num,
                    proc.state,
                    proc.pid,
                    proc.host,
                    proc.seconds_since_heartbeat,
                    p.pillow,
                    proc.process_num
                ));
            }
            if let Some(w) = proc.waiting.as_ref().filter(|_| proc.state == "running") {
                let down = (now - w.since_ms).max(0) / 1000;
                if down >= rules.sink_down_seconds as i64 {
                    reasons.push(format!(
                        "pillow {} process {}: {} unreachable for {down}s (over [admin.health] sink_down_seconds = {}): {}",
                        p.pillow,
                        proc.process_num,
                        w.sink,
                        rules.sink_down_seconds,
                        crate::wasm::check::clip(&w.error.replace('\n', " "), 200)
                    ));
                }
            }
        }
        for part in &p.partitions {
            let stalled = part
                .seconds_since_checkpoint
                .is_some_and(|s| s >= rules.checkpoint_stalled_seconds as i64);
            if part.need_processing > 0 && stalled {
                reasons.push(format!(
                    "pillow {} partition {}: {} changes wait and its checkpoint has not moved for {}s (over [admin.health] checkpoint_stalled_seconds = {})",
                    p.pillow,
                    part.partition,
                    part.need_processing,
                    part.seconds_since_checkpoint.unwrap_or_default(),
                    rules.checkpoint_stalled_seconds
                ));
            }
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::sql::QueueSummary;
    use crate::status::{PartitionStatus, PillowStatus, ProcessStatus};
    use crate::store::Waiting;

    const NOW: i64 = 1_000_000_000;

    fn process(num: u32, state: &'static str, waiting: Option<Waiting>) -> ProcessStatus {
        ProcessStatus {
            process_num: num,
            pid: 7,
            host: "h".into(),
            state,
            admin_url: None,
            seconds_since_heartbeat: 1,
            waiting,
        }
    }

    fn partition(need: u64, age: Option<i64>) -> PartitionStatus {
        PartitionStatus {
            partition: "t:0".into(),
            process: 0,
            checkpoint: Some(1),
            end_offset: 1 + need,
            processed: None,
            need_processing: need,
            seconds_since_checkpoint: age,
            change_lag_seconds: None,
        }
    }

    fn status(processes: Vec<ProcessStatus>, partitions: Vec<PartitionStatus>) -> Status {
        Status {
            at_ms: NOW,
            pillows: vec![PillowStatus {
                pillow: "p".into(),
                checkpoint_id: "p".into(),
                need_processing: partitions.iter().map(|p| p.need_processing).sum(),
                partitions,
                errors: vec![],
                retry_queue: QueueSummary::default(),
                recent_errors: vec![],
                plugins: vec![],
                processes,
            }],
        }
    }

    const RULES: HealthRules = HealthRules {
        sink_down_seconds: 60,
        checkpoint_stalled_seconds: 600,
    };

    #[test]
    fn a_running_pillow_that_keeps_up_is_healthy() {
        let s = status(
            vec![process(0, "running", None)],
            vec![partition(0, Some(5000)), partition(10, Some(3))],
        );
        assert_eq!(health(&s, &RULES), Vec::<String>::new());
    }

    #[test]
    fn a_stopped_process_is_unhealthy_unless_another_runs_in_its_place() {
        let stopped = status(vec![process(1, "unresponsive", None)], vec![]);
        let reasons = health(&stopped, &RULES);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].contains("process 1 is unresponsive"),
            "{reasons:?}"
        );
        let replaced = status(
            vec![process(1, "stopped", None), process(1, "running", None)],
            vec![],
        );
        assert_eq!(health(&replaced, &RULES), Vec::<String>::new());
    }

    #[test]
    fn a_sink_down_too_long_and_a_stalled_checkpoint_with_changes_waiting_are_unhealthy() {
        let waiting = |secs: i64| Waiting {
            sink: "elasticsearch http://es".into(),
            since_ms: NOW - secs * 1000,
            error: "connection refused".into(),
        };
        let short = status(vec![process(0, "running", Some(waiting(59)))], vec![]);
        assert_eq!(health(&short, &RULES), Vec::<String>::new());
        let long = status(
            vec![process(0, "running", Some(waiting(61)))],
            vec![partition(5, Some(600))],
        );
        let reasons = health(&long, &RULES);
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].contains("elasticsearch http://es unreachable for 61s"));
        assert!(reasons[1].contains("5 changes wait"), "{reasons:?}");
    }
}
