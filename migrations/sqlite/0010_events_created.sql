-- Events by time (the PostgreSQL schema in ../postgres has the same index): `ccrelay export
-- --what events` reads them page by page in (created_at, id) order, one range of this index per
-- page (its entries are (created_at, rowid)); without it each page would scan and sort the whole
-- table. New rows add at its end, so a write touches only its last page. IF NOT EXISTS: retention,
-- which deletes the oldest events, wants the same index.
CREATE INDEX IF NOT EXISTS events_created ON events (created_at);
