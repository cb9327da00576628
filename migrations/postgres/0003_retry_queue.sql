-- The retry queue (CommCare's pillow_retry): a series count beside the
-- total (an operator's re-queue starts a new series), an explicit state,
-- and when an error was resolved (resolved records are kept until purged).
ALTER TABLE pillow_errors RENAME COLUMN attempts TO total_attempts;
ALTER TABLE pillow_errors ADD COLUMN series_attempts BIGINT NOT NULL DEFAULT 0;
UPDATE pillow_errors SET series_attempts = LEAST(total_attempts, 4);
ALTER TABLE pillow_errors ADD COLUMN state TEXT NOT NULL DEFAULT 'pending'
    CHECK (state IN ('pending', 'parked', 'resolved'));
UPDATE pillow_errors SET state = 'parked' WHERE next_attempt_ms IS NULL;
ALTER TABLE pillow_errors ADD COLUMN resolved_at_ms BIGINT;

-- Due errors: only pending ones have a next attempt, so the partial index
-- holds the queue and nothing else, per pillow in time order.
DROP INDEX pillow_errors_due;
CREATE INDEX pillow_errors_due ON pillow_errors (pillow, next_attempt_ms) WHERE next_attempt_ms IS NOT NULL;
-- Purging resolved records by age.
CREATE INDEX pillow_errors_resolved ON pillow_errors (resolved_at_ms) WHERE state = 'resolved';
