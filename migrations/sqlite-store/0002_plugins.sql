-- Running host processes: where to reach them (`pillowtop plugin reload`)
-- and whether they are alive (status).
CREATE TABLE processes (
    pillow          TEXT    NOT NULL,
    process_num     INTEGER NOT NULL,
    pid             INTEGER NOT NULL,
    host            TEXT    NOT NULL,
    admin_url       TEXT,                -- NULL: no admin endpoint
    started_at_ms   INTEGER NOT NULL,
    heartbeat_at_ms INTEGER NOT NULL,
    stopped_at_ms   INTEGER,             -- set on a graceful stop
    PRIMARY KEY (pillow, process_num)
) WITHOUT ROWID;

-- Plugin versions going live in (or being refused by) a pillow process.
-- A 'live' event records the positions (next offset per partition) at the
-- chunk boundary where the version took over: every change at or after
-- them was processed by this version, until the next 'live' event.
CREATE TABLE plugin_events (
    id          INTEGER PRIMARY KEY,
    pillow      TEXT    NOT NULL,
    process_num INTEGER NOT NULL,
    processor   TEXT    NOT NULL,
    event       TEXT    NOT NULL CHECK (event IN ('live', 'refused')),
    version     TEXT,                    -- NULL when a refused version could not be read
    reason      TEXT,                    -- why it was refused
    positions   TEXT,                    -- JSON {"topic:partition": next_offset} for 'live'
    at_ms       INTEGER NOT NULL
);
CREATE INDEX plugin_events_by_processor ON plugin_events (pillow, processor, id);
