//! The chunk's documents, for a pillow with a document source: read in
//! one batch before the processors run (see [`crate::source`]). A change
//! left without its document becomes a pillow error of the pillow (no
//! processor ran), retried by the queue, which reads the document again.

use crate::change::Change;
use crate::errors::PillowError;
use crate::outage::wait_out;
use crate::source::{DocumentSource, SourceError, attach, needs_document};
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
    changes: &mut Vec<Change>,
    shutdown: &CancellationToken,
) -> Result<Option<Vec<PillowError>>, SourceError> {
    let ids: Vec<&str> = changes
        .iter()
        .filter(|c| needs_document(c))
        .map(|c| c.id.as_str())
        .collect();
    let what = format!("the document source of pillow {pillow}");
    let Some(fetched) = wait_out(&what, "for a chunk", shutdown, || source.fetch(&ids)).await
    else {
        return Ok(None);
    };
    let documents = fetched?;
    let now = crate::time::now_ms();
    let mut errors = Vec::new();
    changes.retain_mut(|change| match attach(change, &documents) {
        None => true,
        Some(why) => {
            let (kind, message) = why.describe(&change.id);
            let raw = change.take_value();
            errors.push(PillowError::without_document(
                pillow, change, raw, kind, message, now,
            ));
            false
        }
    });
    Ok(Some(errors))
}
