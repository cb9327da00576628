-- The PostgreSQL store: the same tables as migrations/sqlite-store, in the
-- schema named by [store] schema. Integers are BIGINT throughout (offsets,
-- epoch milliseconds), so one set of queries reads both stores as i64.

-- Checkpoints: the next offset to read, per (checkpoint id, topic, partition).
CREATE TABLE checkpoints (
    checkpoint_id TEXT   NOT NULL,
    topic         TEXT   NOT NULL,
    partition     BIGINT NOT NULL,
    next_offset   BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (checkpoint_id, topic, partition)
);

-- Pillow errors: one per (document, pillow, processor), re-driven by the retry queue.
-- processor is '' for a message that did not decode (no processor ran).
CREATE TABLE pillow_errors (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    doc_id           TEXT   NOT NULL,
    pillow           TEXT   NOT NULL,
    processor        TEXT   NOT NULL,
    plugin_version   TEXT,
    kind             TEXT   NOT NULL,
    message          TEXT   NOT NULL,
    topic            TEXT   NOT NULL,
    partition        BIGINT NOT NULL,
    "offset"         BIGINT NOT NULL,
    domain           TEXT,
    document_type    TEXT,
    change           BYTEA  NOT NULL,   -- the feed message value, as received
    attempts         BIGINT NOT NULL,
    first_attempt_ms BIGINT NOT NULL,
    last_attempt_ms  BIGINT NOT NULL,
    next_attempt_ms  BIGINT,            -- NULL: parked, retried only on request
    UNIQUE (doc_id, pillow, processor)
);

-- The retry queue reads only due errors: a partial index keeps parked ones out.
CREATE INDEX pillow_errors_due ON pillow_errors (next_attempt_ms) WHERE next_attempt_ms IS NOT NULL;
CREATE INDEX pillow_errors_recent ON pillow_errors (pillow, last_attempt_ms DESC, id DESC);

-- Sink registries: which document indices and row tables exist, with their specs.
CREATE TABLE sink_indices (
    name     TEXT PRIMARY KEY,
    mappings TEXT NOT NULL
);
CREATE TABLE sink_tables (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL
);

-- Running host processes: where to reach them (`pillowtop plugin reload`)
-- and whether they are alive (status).
CREATE TABLE processes (
    pillow          TEXT   NOT NULL,
    process_num     BIGINT NOT NULL,
    pid             BIGINT NOT NULL,
    host            TEXT   NOT NULL,
    admin_url       TEXT,                -- NULL: no admin endpoint
    started_at_ms   BIGINT NOT NULL,
    heartbeat_at_ms BIGINT NOT NULL,
    stopped_at_ms   BIGINT,              -- set on a graceful stop
    PRIMARY KEY (pillow, process_num)
);

-- Plugin versions going live in (or being refused by) a pillow process;
-- see migrations/sqlite-store/0002_plugins.sql.
CREATE TABLE plugin_events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pillow      TEXT   NOT NULL,
    process_num BIGINT NOT NULL,
    processor   TEXT   NOT NULL,
    event       TEXT   NOT NULL CHECK (event IN ('live', 'refused')),
    version     TEXT,
    reason      TEXT,
    positions   TEXT,                    -- JSON {"topic:partition": next_offset} for 'live'
    at_ms       BIGINT NOT NULL
);
CREATE INDEX plugin_events_by_processor ON plugin_events (pillow, processor, id);
