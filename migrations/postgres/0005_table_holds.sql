-- A row table rebuilt (`pillowtop ucr rebuild`) while its pillow runs:
-- one row per partition of the pillow's feed. While a row is there and
-- not released, the pillow does not write the table for that partition;
-- the rebuild (checkpoint id `rebuilder`) does. The pillow takes the
-- partition back (released) at a chunk start the rebuild's checkpoint has
-- reached, running a version of the table's definition. `finished`: the
-- rebuild has stopped writing; a row taken back then is deleted.
CREATE TABLE table_holds (
    table_name TEXT    NOT NULL,
    topic      TEXT    NOT NULL,
    partition  BIGINT  NOT NULL,
    definition TEXT,
    rebuilder  TEXT    NOT NULL,
    released   BOOLEAN NOT NULL DEFAULT FALSE,
    finished   BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (table_name, topic, partition)
);
