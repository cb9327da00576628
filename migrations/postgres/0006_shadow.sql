-- Shadow runs (`pillowtop plugin shadow`): a candidate version beside the
-- live one, its actions compared and never written. One row per pillow
-- process, processor, candidate and live version: the counts so far,
-- added to in each chunk's transaction. `failed` is JSON {"kind": n}.
CREATE TABLE shadow_runs (
    pillow            TEXT   NOT NULL,
    process_num       BIGINT NOT NULL,
    processor         TEXT   NOT NULL,
    candidate_version TEXT   NOT NULL,
    live_version      TEXT   NOT NULL,
    agree             BIGINT NOT NULL,
    differ            BIGINT NOT NULL,
    failed            TEXT   NOT NULL,
    hungrier          BIGINT NOT NULL,
    live_fuel         BIGINT NOT NULL,
    candidate_fuel    BIGINT NOT NULL,
    started_at_ms     BIGINT NOT NULL,
    updated_at_ms     BIGINT NOT NULL,
    PRIMARY KEY (pillow, process_num, processor, candidate_version, live_version)
);

-- The first differences (up to `[reload] shadow_diffs` per processor and
-- candidate version): both results as JSON and where they differ.
CREATE TABLE shadow_diffs (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pillow            TEXT   NOT NULL,
    processor         TEXT   NOT NULL,
    candidate_version TEXT   NOT NULL,
    live_version      TEXT   NOT NULL,
    doc_id            TEXT   NOT NULL,
    topic             TEXT   NOT NULL,
    partition         BIGINT NOT NULL,
    "offset"          BIGINT NOT NULL,
    live_actions      TEXT   NOT NULL,
    candidate_actions TEXT   NOT NULL,
    diff              TEXT   NOT NULL,
    at_ms             BIGINT NOT NULL
);
CREATE INDEX shadow_diffs_by_version ON shadow_diffs (processor, candidate_version, id);

-- A shadow starting ('shadow') and ending ('shadow_ended': stopped or
-- promoted) in a pillow process, with the positions where it did.
ALTER TABLE plugin_events DROP CONSTRAINT plugin_events_event_check;
ALTER TABLE plugin_events ADD CONSTRAINT plugin_events_event_check
    CHECK (event IN ('live', 'refused', 'shadow', 'shadow_ended'));
