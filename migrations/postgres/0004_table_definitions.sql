-- What decides a row table's rows beyond its columns (a plugin's opaque
-- definition, e.g. a hash of a UCR data source): a table built by one
-- definition is not written by another.
ALTER TABLE sink_tables ADD COLUMN definition TEXT;
