-- Checkpoints: the next offset to read, per (checkpoint id, topic, partition).
CREATE TABLE checkpoints (
    checkpoint_id TEXT    NOT NULL,
    topic         TEXT    NOT NULL,
    partition     INTEGER NOT NULL,
    next_offset   INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (checkpoint_id, topic, partition)
) WITHOUT ROWID;

-- Pillow errors: one per (document, pillow, processor), re-driven by the retry queue.
-- processor is '' for a message that did not decode (no processor ran).
CREATE TABLE pillow_errors (
    id               INTEGER PRIMARY KEY,
    doc_id           TEXT    NOT NULL,
    pillow           TEXT    NOT NULL,
    processor        TEXT    NOT NULL,
    plugin_version   TEXT,
    kind             TEXT    NOT NULL,
    message          TEXT    NOT NULL,
    topic            TEXT    NOT NULL,
    partition        INTEGER NOT NULL,
    "offset"         INTEGER NOT NULL,
    domain           TEXT,
    document_type    TEXT,
    change           BLOB    NOT NULL,   -- the feed message value, as received
    attempts         INTEGER NOT NULL,
    first_attempt_ms INTEGER NOT NULL,
    last_attempt_ms  INTEGER NOT NULL,
    next_attempt_ms  INTEGER,            -- NULL: parked, retried only on request
    UNIQUE (doc_id, pillow, processor)
);

-- The retry queue reads only due errors.
CREATE INDEX pillow_errors_due ON pillow_errors (next_attempt_ms) WHERE next_attempt_ms IS NOT NULL;

-- Sink registries: which document indices and row tables exist, with their specs.
CREATE TABLE sink_indices (
    name     TEXT PRIMARY KEY,
    mappings TEXT NOT NULL
);
CREATE TABLE sink_tables (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL
);
