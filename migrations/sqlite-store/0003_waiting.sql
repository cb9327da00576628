-- The sink a process is waiting for during an outage (NULL: none): which
-- sink, since when, and the error that started it, for `status`.
ALTER TABLE processes ADD COLUMN waiting_for TEXT;
ALTER TABLE processes ADD COLUMN waiting_since_ms INTEGER;
ALTER TABLE processes ADD COLUMN waiting_error TEXT;
