-- Events by time (the SQLite schema in ../sqlite has the same index): `ccrelay export --what
-- events` reads them page by page in (created_at, id) order, one range of this index per page;
-- without it each page would scan and sort the whole table. New rows add at its end, so a write
-- touches only its last page. IF NOT EXISTS: retention, which deletes the oldest events, wants the
-- same index. Built once, at the upgrade, while the migration holds the table.
CREATE INDEX IF NOT EXISTS events_created ON events (created_at);
