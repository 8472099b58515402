-- Media coming down (the PostgreSQL schema in ../postgres has the same shape). Conventions as in
-- 0001: INTEGER microsecond timestamps, STRICT tables, `id` is the insertion order.

-- A held outbox row is not published yet: a DownMessage whose media is still being downloaded.
-- The rows of the same subject (one user's DownMessages) committed after it wait for it too.
ALTER TABLE outbox ADD COLUMN held INTEGER NOT NULL DEFAULT 0 CHECK (held IN (0, 1));
-- Held rows only: "is a row of this subject held before this seq?" and "the held row of this
-- msg_id", without reading the rows that are not held.
CREATE INDEX outbox_held ON outbox (subject, seq, msg_id) WHERE held = 1;

-- Files the contact center sent down (a DownMessage whose mediaType is a file), downloaded with
-- downloadFileStream into the NATS object store. One row per DownMessage, keyed by its relay_id.
CREATE TABLE files (
    id            INTEGER PRIMARY KEY,
    relay_id      TEXT    NOT NULL UNIQUE,
    kind          TEXT    NOT NULL,
    tenant        TEXT    NOT NULL,
    user_id       TEXT    NOT NULL,
    session_id    TEXT    REFERENCES sessions (id),
    media_type    TEXT    NOT NULL,
    -- The upstream's fileId and the fileType asked of downloadFileStream.
    file_id       TEXT    NOT NULL,
    file_type     TEXT    NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('pending', 'stored', 'failed')),
    size          INTEGER,
    -- Lower-case hex.
    sha256        TEXT,
    bucket        TEXT,
    object        TEXT,
    -- Download attempts made so far.
    attempts      INTEGER NOT NULL DEFAULT 0,
    error_code    TEXT,
    error_message TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    CHECK (status <> 'stored' OR (size IS NOT NULL AND sha256 IS NOT NULL
        AND bucket IS NOT NULL AND object IS NOT NULL))
) STRICT;

-- The media task's work list (resumed at start-up).
CREATE INDEX files_pending ON files (created_at, id) WHERE status = 'pending';
CREATE INDEX files_user ON files (kind, tenant, user_id, created_at);
CREATE INDEX files_session ON files (session_id);
