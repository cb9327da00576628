-- Shadow runs: see migrations/postgres/0006_shadow.sql.
CREATE TABLE shadow_runs (
    pillow            TEXT    NOT NULL,
    process_num       INTEGER NOT NULL,
    processor         TEXT    NOT NULL,
    candidate_version TEXT    NOT NULL,
    live_version      TEXT    NOT NULL,
    agree             INTEGER NOT NULL,
    differ            INTEGER NOT NULL,
    failed            TEXT    NOT NULL,
    hungrier          INTEGER NOT NULL,
    live_fuel         INTEGER NOT NULL,
    candidate_fuel    INTEGER NOT NULL,
    started_at_ms     INTEGER NOT NULL,
    updated_at_ms     INTEGER NOT NULL,
    PRIMARY KEY (pillow, process_num, processor, candidate_version, live_version)
);

CREATE TABLE shadow_diffs (
    id                INTEGER PRIMARY KEY,
    pillow            TEXT    NOT NULL,
    processor         TEXT    NOT NULL,
    candidate_version TEXT    NOT NULL,
    live_version      TEXT    NOT NULL,
    doc_id            TEXT    NOT NULL,
    topic             TEXT    NOT NULL,
    partition         INTEGER NOT NULL,
    "offset"          INTEGER NOT NULL,
    live_actions      TEXT    NOT NULL,
    candidate_actions TEXT    NOT NULL,
    diff              TEXT    NOT NULL,
    at_ms             INTEGER NOT NULL
);
CREATE INDEX shadow_diffs_by_version ON shadow_diffs (processor, candidate_version, id);

-- Two more plugin events ('shadow', 'shadow_ended'): SQLite cannot change
-- a CHECK constraint, so the table is rebuilt with its rows.
CREATE TABLE plugin_events_new (
    id          INTEGER PRIMARY KEY,
    pillow      TEXT    NOT NULL,
    process_num INTEGER NOT NULL,
    processor   TEXT    NOT NULL,
    event       TEXT    NOT NULL CHECK (event IN ('live', 'refused', 'shadow', 'shadow_ended')),
    version     TEXT,
    reason      TEXT,
    positions   TEXT,
    at_ms       INTEGER NOT NULL
);
INSERT INTO plugin_events_new (id, pillow, process_num, processor, event, version, reason, positions, at_ms)
    SELECT id, pillow, process_num, processor, event, version, reason, positions, at_ms FROM plugin_events;
DROP TABLE plugin_events;
ALTER TABLE plugin_events_new RENAME TO plugin_events;
CREATE INDEX plugin_events_by_processor ON plugin_events (pillow, processor, id);
