//! The chunk's documents, for a pillow with a document source: read in
//! one batch before the processors run (see [`crate::source`]). A change
//! left without its document becomes a pillow error of the pillow (no
//! processor ran), retried by the queue, which reads the document again.

use crate::change::Change;
use crate::errors::PillowError;
use crate::outage::OutageBackoff;
use crate::source::{DocumentSource, SourceError};
use tokio_util::sync::CancellationToken;

/// Read the documents `changes` need from `source`, waiting out an outage
/// of it with capped backoff. Changes left without a document are taken
/// out of `changes` and returned as pillow errors: kind `missing`
/// (retryable, CommCare's `DocumentMissingError`) when the source has no
/// such document, `decode` when what it holds is not a JSON object.
/// `Ok(None)` when `shutdown` fires during an outage (the chunk is then
/// not processed).
///
/// # Errors
///
/// A failure that is not an outage (a query that cannot work).
pub(super) async fn fill(
    pillow: &str,
    source: &DocumentSource,
    changes: &mut Vec<(Change, Vec<u8>)>,
    shutdown: &CancellationToken,
) -> Result<Option<Vec<PillowError>>, SourceError> {
    let mut failures = 0u32;
    let unavailable = loop {
        match source.fill(changes).await {
            Ok(unavailable) => break unavailable,
            Err(e) if e.is_outage() => {
                tracing::warn!(pillow, error = %e, attempt = failures + 1, "the document source is unreachable; the chunk waits for it");
                if !OutageBackoff::sleep_unless(failures, shutdown).await {
                    return Ok(None);
                }
                failures = failures.saturating_add(1);
            }
            Err(e) => return Err(e),
        }
    };
    if unavailable.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let now = crate::time::now_ms();
    let mut errors = Vec::with_capacity(unavailable.len());
    // Back to front, so the positions stay valid while removing.
    for (i, why) in unavailable.into_iter().rev() {
        let (change, raw) = changes.remove(i);
        let (kind, message) = why.describe(&change.id);
        errors.push(PillowError::without_document(
            pillow, &change, raw, kind, message, now,
        ));
    }
    errors.reverse();
    Ok(Some(errors))
}
