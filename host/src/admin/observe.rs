//! The read-only routes: `/status`, `/status/live`, `/healthz`, `/metrics`
//! and `/errors/{id}`.
//!
//! Status is gathered from the feed and the store (a few small queries per
//! pillow and two offset requests per topic) at most once per
//! [`FRESH_FOR`]: requests that arrive meanwhile, or while a gather runs,
//! share it. The positions this process holds in memory are laid over it
//! on every request, so need-processing and lag stay current. `/metrics` refreshes the gauges that come from
//! status before it renders: the partitions this process owns, and (on
//! process 0 only, so that a sum over processes is right) the pillow's
//! errors and retry queue.

use super::Context;
use crate::metrics::{Metric, Metrics};
use crate::status::{self, Live, Status, StatusError};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a gathered status answers requests: a page polling and a
/// scraper every second cost one gather between them, however many ask.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// The latest status gathered and when; the lock is held while a gather
/// runs, so requests that arrive then wait for it instead of gathering too.
#[derive(Default)]
pub struct Gathered(tokio::sync::Mutex<Option<(Instant, Status)>>);

/// The positions this process holds ahead of its checkpoints, from its
/// metrics (`pillowtop_processed_offset` and the publish time beside it).
pub(super) fn live_positions(metrics: &Metrics) -> Vec<Live> {
    metrics
        .matching(Metric::ProcessedOffset, &[])
        .into_iter()
        .filter_map(|(labels, processed)| {
            let label = |name: &str| {
                labels
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone())
            };
            let (pillow, partition) = (label("pillow")?, label("partition")?);
            let published = metrics.get(
                Metric::ProcessedPublishTime,
                &[("pillow", &pillow), ("partition", &partition)],
            );
            Some(Live {
                pillow,
                partition,
                processed: processed as u64,
                last_published_ms: published.map(|s| (s * 1000.0) as i64),
            })
        })
        .collect()
}

/// Status of this process's pillows (gathered at most once per
/// [`FRESH_FOR`]), its own positions laid over.
async fn gather(context: &Context) -> Result<Status, StatusError> {
    let mut latest = context.gathered.0.lock().await;
    let mut status = match &*latest {
        Some((at, status)) if at.elapsed() < FRESH_FOR => status.clone(),
        _ => {
            let pillows: Vec<_> = context.pillows.iter().collect();
            let status = status::gather(
                &pillows,
                &context.feed,
                &context.store,
                context.config.runtime.max_component_bytes(),
            )
            .await?;
            *latest = Some((Instant::now(), status.clone()));
            status
        }
    };
    drop(latest);
    status.overlay(&live_positions(context.plugins.metrics()));
    Ok(status)
}

fn unavailable(e: StatusError) -> (StatusCode, String) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("cannot gather status: {e}\n"),
    )
}

pub(super) async fn status(
    State(context): State<Arc<Context>>,
) -> Result<Json<Status>, (StatusCode, String)> {
    gather(&context).await.map(Json).map_err(unavailable)
}

pub(super) async fn live(State(context): State<Arc<Context>>) -> Json<Vec<Live>> {
    Json(live_positions(context.plugins.metrics()))
}

/// Every sink this process has found unreachable, with seconds down now
/// (0 once it is back): the store included, which cannot record its own
/// outage for `status`.
fn outages(metrics: &Metrics, now_ms: i64) -> Vec<(String, String, f64)> {
    metrics
        .matching(Metric::SinkDownSince, &[])
        .into_iter()
        .map(|(labels, since)| {
            let label = |name: &str| {
                labels
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map_or_else(String::new, |(_, v)| v.clone())
            };
            let down = if since > 0.0 {
                (now_ms as f64 / 1000.0 - since).max(0.0)
            } else {
                0.0
            };
            (label("pillow"), label("sink"), down)
        })
        .collect()
}

pub(super) async fn healthz(State(context): State<Arc<Context>>) -> impl IntoResponse {
    let rules = &context.config.admin.health;
    let now = crate::time::now_ms();
    let mut reasons: Vec<String> = outages(context.plugins.metrics(), now)
        .into_iter()
        .filter(|(_, _, down)| *down > 0.0 && *down >= rules.sink_down_seconds as f64)
        .map(|(pillow, sink, down)| {
            format!(
                "pillow {pillow}: {sink} unreachable for {down:.0}s (over [admin.health] sink_down_seconds = {})",
                rules.sink_down_seconds
            )
        })
        .collect();
    match gather(&context).await {
        Ok(status) => {
            for reason in status::health(&status, rules) {
                if !reasons.contains(&reason) {
                    reasons.push(reason);
                }
            }
        }
        // Within the threshold, a store outage this process already
        // waits out is not yet a reason.
        Err(_)
            if outages(context.plugins.metrics(), now)
                .iter()
                .any(|(_, _, down)| *down > 0.0) => {}
        Err(e) => reasons.push(format!("cannot gather status: {e}")),
    }
    if reasons.is_empty() {
        (StatusCode::OK, "ok\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy:\n{}\n", reasons.join("\n")),
        )
    }
}

pub(super) async fn metrics(State(context): State<Arc<Context>>) -> impl IntoResponse {
    let metrics = context.plugins.metrics();
    match gather(&context).await {
        Ok(status) => refresh(metrics, &status, context.process_num),
        Err(e) => {
            tracing::debug!(error = %e, "cannot gather status for /metrics; its gauges keep their last values")
        }
    }
    for (pillow, sink, down) in outages(metrics, crate::time::now_ms()) {
        metrics.set(
            Metric::SinkDownSeconds,
            &[("pillow", &pillow), ("sink", &sink)],
            down,
        );
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        metrics.render(),
    )
}

/// Set the gauges that come from status.
fn refresh(metrics: &Metrics, status: &Status, process_num: u32) {
    for p in &status.pillows {
        let pillow = p.pillow.as_str();
        for part in p.partitions.iter().filter(|x| x.process == process_num) {
            let labels = [("pillow", pillow), ("partition", part.partition.as_str())];
            metrics.set(Metric::CurrentOffset, &labels, part.end_offset as f64);
            metrics.set(Metric::NeedProcessing, &labels, part.need_processing as f64);
            if let Some(lag) = part.change_lag_seconds {
                metrics.set(Metric::ChangeLagSeconds, &labels, lag);
            }
            if let Some(age) = part.seconds_since_checkpoint {
                metrics.set(Metric::CheckpointAgeSeconds, &labels, age as f64);
            }
        }
        if process_num != 0 {
            continue;
        }
        // Every state and kind seen, so a count that went to 0 shows 0.
        metrics.remove_matching(Metric::PillowErrors, &[("pillow", pillow)]);
        for e in &p.errors {
            metrics.set(
                Metric::PillowErrors,
                &[
                    ("pillow", pillow),
                    ("state", e.state.as_str()),
                    ("kind", e.kind.as_str()),
                ],
                e.count as f64,
            );
        }
        metrics.set(
            Metric::RetryQueueDepth,
            &[("pillow", pillow)],
            p.retry_queue.pending as f64,
        );
        metrics.set(
            Metric::RetryQueueDue,
            &[("pillow", pillow)],
            p.retry_queue.due as f64,
        );
    }
}

pub(super) async fn error(
    State(context): State<Arc<Context>>,
    Path(id): Path<i64>,
) -> Result<String, (StatusCode, String)> {
    match crate::triage::get(&context.store, id).await {
        Ok(e) => Ok(crate::triage::show(&e, crate::time::now_ms())),
        Err(crate::triage::TriageError::NotFound(_)) => Err((
            StatusCode::NOT_FOUND,
            format!("no pillow error {id}: it may have been purged\n"),
        )),
        Err(e) => Err((StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))),
    }
}
