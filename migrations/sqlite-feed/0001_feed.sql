-- The embedded feed: a partitioned, ordered log with Kafka's vocabulary.
CREATE TABLE topics (
    name          TEXT PRIMARY KEY,
    partitions    INTEGER NOT NULL CHECK (partitions > 0),
    created_at_ms INTEGER NOT NULL
);

-- One row per message; offsets are dense per (topic, partition), from 0.
-- A rowid table: values are ~1-2 KB, too large for a clustered WITHOUT ROWID b-tree.
CREATE TABLE messages (
    topic        TEXT    NOT NULL,
    partition    INTEGER NOT NULL,
    "offset"     INTEGER NOT NULL,
    key          BLOB,
    value        BLOB    NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, "offset")
);
