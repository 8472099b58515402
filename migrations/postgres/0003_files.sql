-- Media coming down (the SQLite schema in ../sqlite has the same shape). Conventions as in 0001.

-- A held outbox row is not published yet: a DownMessage whose media is still being downloaded.
-- The rows of the same subject (one user's DownMessages) committed after it wait for it too.
ALTER TABLE outbox ADD COLUMN held boolean NOT NULL DEFAULT false;
-- Held rows only: "is a row of this subject held before this seq?" and "the held row of this
-- msg_id", without reading the rows that are not held.
CREATE INDEX outbox_held ON outbox (subject, seq, msg_id) WHERE held;

-- Files the contact center sent down (a DownMessage whose mediaType is a file), downloaded with
-- downloadFileStream into the NATS object store. One row per DownMessage, keyed by its relay_id.
CREATE TABLE files (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relay_id      text        NOT NULL UNIQUE,
    kind          text        NOT NULL,
    tenant        text        NOT NULL,
    user_id       text        NOT NULL,
    session_id    text        REFERENCES sessions (id),
    media_type    text        NOT NULL,
    -- The upstream's fileId and the fileType asked of downloadFileStream.
    file_id       text        NOT NULL,
    file_type     text        NOT NULL,
    status        text        NOT NULL CHECK (status IN ('pending', 'stored', 'failed')),
    size          bigint,
    -- Lower-case hex.
    sha256        text,
    bucket        text,
    object        text,
    -- Download attempts made so far.
    attempts      integer     NOT NULL DEFAULT 0,
    error_code    text,
    error_message text,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    CHECK (status <> 'stored' OR (size IS NOT NULL AND sha256 IS NOT NULL
        AND bucket IS NOT NULL AND object IS NOT NULL))
);

-- The media task's work list (resumed at start-up).
CREATE INDEX files_pending ON files (created_at, id) WHERE status = 'pending';
CREATE INDEX files_user ON files (kind, tenant, user_id, created_at);
CREATE INDEX files_session ON files (session_id);
