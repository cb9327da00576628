//! `pillowtop status` as text: one screen per pillow.

use super::Status;
use std::fmt::Write as _;

/// Render a status as text: one screen per pillow.
pub fn render(status: &Status) -> String {
    let now = status.at_ms;
    let mut out = String::new();
    for s in &status.pillows {
        let _ = writeln!(
            out,
            "pillow {} (checkpoint id {}): need-processing {}",
            s.pillow, s.checkpoint_id, s.need_processing
        );
        for p in &s.plugins {
            let live: Vec<String> = p
                .live
                .iter()
                .map(|(n, v, _)| format!("{v} (process {n})"))
                .collect();
            let _ = writeln!(
                out,
                "  processor {}: live {}; on disk {}",
                p.processor,
                if live.is_empty() {
                    "never run".into()
                } else {
                    live.join(", ")
                },
                p.on_disk
            );
            for c in &p.shadows {
                let processes: Vec<String> = c.processes.iter().map(u32::to_string).collect();
                let _ = writeln!(
                    out,
                    "    SHADOW {} (process {}): {}; see `pillowtop plugin diff {}`",
                    c.version,
                    processes.join(", "),
                    c.tally,
                    p.processor
                );
            }
            if let Some(r) = &p.refused {
                let _ = writeln!(
                    out,
                    "    REFUSED {} ({}s ago): {}",
                    r.version.as_deref().unwrap_or("new files"),
                    (now - r.at_ms).max(0) / 1000,
                    crate::wasm::check::clip(&r.reason.replace('\n', " "), 300)
                );
            }
        }
        for p in &s.processes {
            let _ = writeln!(
                out,
                "  process {} pid {} on {}: {} (heartbeat {}s ago){}",
                p.process_num,
                p.pid,
                p.host,
                p.state,
                p.seconds_since_heartbeat,
                p.admin_url
                    .as_deref()
                    .map(|u| format!(", admin {u}"))
                    .unwrap_or_default()
            );
            if let Some(w) = &p.waiting {
                let _ = writeln!(
                    out,
                    "    WAITING for {}: unavailable for {}s, chunk held and retried (lag grows, nothing is lost): {}",
                    w.sink,
                    (now - w.since_ms).max(0) / 1000,
                    crate::wasm::check::clip(&w.error.replace('\n', " "), 300)
                );
            }
        }
        let _ = writeln!(
            out,
            "  {:<24} {:>7} {:>11} {:>11} {:>11} {:>15} {:>9} {:>14}",
            "partition",
            "process",
            "checkpoint",
            "processed",
            "end offset",
            "need-processing",
            "lag",
            "checkpoint age"
        );
        for p in &s.partitions {
            let _ = writeln!(
                out,
                "  {:<24} {:>7} {:>11} {:>11} {:>11} {:>15} {:>9} {:>14}",
                p.partition,
                p.process,
                p.checkpoint.map_or("-".into(), |c| c.to_string()),
                p.processed.map_or("-".into(), |c| c.to_string()),
                p.end_offset,
                p.need_processing,
                p.change_lag_seconds
                    .map_or("-".into(), |s| format!("{s:.1}s")),
                p.seconds_since_checkpoint
                    .map_or("never".into(), |s| format!("{s}s")),
            );
        }
        let total = s.error_total();
        if total == 0 {
            let _ = writeln!(out, "  errors: none");
        } else {
            let kinds: Vec<_> = s
                .errors_by_kind()
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let _ = writeln!(out, "  errors: {total} ({})", kinds.join(", "));
            let q = &s.retry_queue;
            let _ = writeln!(
                out,
                "  retry queue: {} pending, {} due now{}",
                q.pending,
                q.due,
                q.next_attempt_ms
                    .filter(|_| q.due == 0)
                    .map(|ms| format!(", next in {}s", (ms - now).max(0) / 1000))
                    .unwrap_or_default()
            );
            for e in &s.recent_errors {
                let _ = writeln!(
                    out,
                    "    #{} {} {} {}@{} doc {} [{}{}] attempts {}: {}",
                    e.id,
                    e.state,
                    e.kind,
                    e.partition,
                    e.offset,
                    e.doc_id,
                    if e.processor.is_empty() {
                        "decode"
                    } else {
                        &e.processor
                    },
                    e.plugin_version
                        .as_deref()
                        .map(|v| format!(" {v}"))
                        .unwrap_or_default(),
                    e.attempts,
                    crate::wasm::check::clip(&e.message, 200),
                );
            }
        }
    }
    out
}
