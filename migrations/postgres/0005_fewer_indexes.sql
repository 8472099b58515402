-- Indexes that cost every write and served no query. A session belongs to one user, so its
-- transcript and events are read through the per-user indexes (messages_user, events_user) with
-- `session_id = ?` as a filter (docs/STORAGE.md); indexing session_id alone made every uplink
-- message dirty two more index pages at random places (S3, docs/BENCHMARKS.md). Sessions are
-- never deleted, so no foreign-key check needs them either.
DROP INDEX IF EXISTS messages_session;
DROP INDEX IF EXISTS events_session;
