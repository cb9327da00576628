//! Re-running stored changes through the live processors: one batch of
//! due errors in, one commit (writes, and each error's outcome) out.
//! Synchronous, for a blocking thread (Wasm is CPU-bound).

use crate::change::{self, Change};
use crate::errors::sql::RetryOutcome;
use crate::errors::{Backoff, ErrorKind, PillowError};
use crate::sink::{ChunkCommit, Origin, Sources, VersionedAction, WritePlan};
use crate::source::{Documents, attach};
use crate::wasm::Processor;

/// What one retry came to, for counts and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tried {
    /// The change passed its processor (with this retry schedule, should
    /// a sink refuse its writes): the error is resolved.
    Passed(Backoff),
    /// It failed again with this kind; `parked` when that ends its series.
    Failed {
        /// The kind of this failure.
        kind: ErrorKind,
        /// Whether no further attempt is scheduled.
        parked: bool,
    },
}

/// The stored change of `e` with `attempts` set to the failures so far
/// (WIT `change.attempts`: a plugin may act differently on a retry).
fn stored_change(e: &PillowError) -> Result<Change, change::DecodeError> {
    let mut c = change::decode(e.feed_message()).map_err(|u| u.error)?;
    c.attempts = e.total_attempts;
    Ok(c)
}

/// A failure of `kind` at `at_ms` of the retry of `e`, with `backoff`:
/// failed again, and whether that parks it.
pub fn failed(backoff: &Backoff, kind: ErrorKind, e: &PillowError, at_ms: i64) -> Tried {
    let next = backoff.next_attempt_ms(kind, e.series_attempts + 1, e.total_attempts + 1, at_ms);
    Tried::Failed {
        kind,
        parked: next.is_none(),
    }
}

/// Run each due error's stored change through its processor (a decode
/// error's message is decoded again and, if it decodes now, goes through
/// every processor of the pillow), at `at_ms`. With a document source
/// (`documents`: what it returned for the due documents), a change
/// without a document gets the one read, and fails as `missing` when
/// there is none. Returns the commit, the sources its writes point into,
/// and what each retry came to.
pub fn rerun(
    pillow: &str,
    lane: &mut [Processor],
    due: Vec<PillowError>,
    documents: Option<&Documents>,
    at_ms: i64,
) -> (ChunkCommit, Sources, Vec<(PillowError, Tried)>) {
    let refs: Vec<_> = lane.iter().map(Processor::reference).collect();
    let mut commit = ChunkCommit::default();
    let mut sources = Sources {
        pillow: pillow.to_owned(),
        changes: Vec::with_capacity(due.len()),
        processors: refs.clone(),
    };
    let mut actions = Vec::new();
    let mut tried = Vec::with_capacity(due.len());
    for (i, e) in due.into_iter().enumerate() {
        let position = i as u32;
        let fail = |kind: ErrorKind, message: String| {
            let mut f = e.clone();
            f.kind = kind;
            f.message = crate::errors::cut_message(message);
            f.at_ms = at_ms;
            if let Some(p) = refs.iter().find(|p| p.name == e.processor) {
                f.plugin_version = Some(p.version.clone());
                f.backoff = p.backoff;
            }
            f
        };
        let mut decoded = stored_change(&e);
        let unavailable = match (&mut decoded, documents) {
            (Ok(c), Some(documents)) => attach(c, documents),
            _ => None,
        };
        let failure = match (&decoded, unavailable, e.processor.as_str()) {
            (Err(d), _, _) => Some(fail(ErrorKind::Decode, d.to_string())),
            (Ok(c), Some(why), _) => {
                let (kind, message) = why.describe(&c.id);
                Some(fail(kind, message))
            }
            (Ok(c), None, "") => {
                // It decodes now: every processor that wants it runs, and
                // their failures are errors of their own.
                for (j, p) in lane.iter_mut().enumerate() {
                    if !p.wants(c) {
                        continue;
                    }
                    let origin = Origin {
                        change: position,
                        processor: j as u16,
                    };
                    match p.process(c) {
                        Ok(out) => actions.extend(versioned(out, c, origin)),
                        Err(f) => commit.errors.push(PillowError::of_change(
                            pillow, c, &refs[j], f.kind, f.message, at_ms,
                        )),
                    }
                }
                None
            }
            (Ok(c), None, name) => match lane
                .iter_mut()
                .position(|p| p.plugin().manifest().name == name)
            {
                None => Some(fail(
                    ErrorKind::Permanent,
                    format!(
                        "processor {name:?} is no longer in pillow {pillow:?}: parked; add it back and run `pillowtop errors retry {}`, or purge the error",
                        e.id
                    ),
                )),
                // No longer subscribed: nothing to do, nothing stale to apply.
                Some(j) if !lane[j].wants(c) => None,
                Some(j) => {
                    let origin = Origin {
                        change: position,
                        processor: j as u16,
                    };
                    match lane[j].process(c) {
                        Ok(out) => {
                            actions.extend(versioned(out, c, origin));
                            None
                        }
                        Err(f) => Some(fail(f.kind, f.message)),
                    }
                }
            },
        };
        let backoff = refs
            .iter()
            .find(|p| p.name == e.processor)
            .map_or_else(Backoff::default, |p| p.backoff);
        let outcome = match &failure {
            None => Tried::Passed(backoff),
            Some(f) => failed(&f.backoff, f.kind, &e, at_ms),
        };
        // A change that does not decode has no `Change`; its position in
        // the sources is never pointed at (no writes), so a placeholder
        // (without the stored value) keeps positions aligned.
        let change = decoded.unwrap_or_else(|_| placeholder(&e));
        sources.changes.push(change);
        tried.push((e.clone(), outcome));
        commit.retries.push((
            position,
            RetryOutcome {
                read: e,
                failure,
                at_ms,
            },
        ));
    }
    commit.plan = WritePlan::build(actions);
    (commit, sources, tried)
}

fn versioned(
    actions: Vec<crate::action::Action>,
    change: &Change,
    origin: Origin,
) -> impl Iterator<Item = VersionedAction> + '_ {
    actions.into_iter().map(move |action| VersionedAction {
        action,
        version: change.offset,
        origin,
    })
}

fn placeholder(e: &PillowError) -> Change {
    let mut c = Change::new(
        e.doc_id.clone(),
        e.tp.topic.clone(),
        e.tp.partition,
        e.offset,
    );
    c.domain = e.domain.clone();
    c.document_type = e.document_type.clone();
    c.attempts = e.total_attempts;
    c.processing_time_ms = crate::time::now_ms();
    c
}
