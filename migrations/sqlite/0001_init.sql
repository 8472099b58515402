-- ccrelay store, SQLite flavour (the PostgreSQL schema in ../postgres has the same shape).
--
-- Timestamps are INTEGER microseconds since the Unix epoch, UTC: the precision of PostgreSQL's
-- timestamptz, so both stores return the same values; they sort as numbers and compare fast.
-- In SQL: strftime('%Y-%m-%dT%H:%M:%fZ', created_at / 1e6, 'unixepoch').
-- JSON bodies are TEXT, stored exactly as given, and must be JSON (as PostgreSQL's jsonb
-- requires). Tables are STRICT: a value of the wrong type is an error.

-- One row per contact-center session. At most one not-closed session per (kind, tenant, user).
CREATE TABLE sessions (
    id                TEXT    NOT NULL PRIMARY KEY,
    kind              TEXT    NOT NULL,
    tenant            TEXT    NOT NULL,
    user_id           TEXT    NOT NULL,
    channel_config_id TEXT    NOT NULL,
    state             TEXT    NOT NULL CHECK (state IN ('active', 'queued', 'closed')),
    -- The user's current ccmessaging-token: a short-lived bearer credential.
    token             TEXT,
    opened_at         INTEGER NOT NULL,
    closed_at         INTEGER,
    close_reason      TEXT,
    last_activity_at  INTEGER NOT NULL,
    CHECK ((state = 'closed') = (closed_at IS NOT NULL))
) STRICT;

-- The one-open-session guarantee; also finds a user's open session.
CREATE UNIQUE INDEX sessions_open_user ON sessions (kind, tenant, user_id) WHERE state <> 'closed';
-- All open sessions (polling resumes at start-up), without reading the closed ones.
CREATE INDEX sessions_open ON sessions (opened_at, id) WHERE state <> 'closed';
-- Listing, newest first, by tenant, by state, or neither.
CREATE INDEX sessions_opened ON sessions (opened_at, id);
CREATE INDEX sessions_tenant_opened ON sessions (tenant, opened_at, id);
CREATE INDEX sessions_state_opened ON sessions (state, opened_at, id);

-- The transcript, both directions. `id` is the insertion order (ties of created_at).
CREATE TABLE messages (
    id           INTEGER PRIMARY KEY,
    relay_id     TEXT    NOT NULL UNIQUE,
    kind         TEXT    NOT NULL,
    tenant       TEXT    NOT NULL,
    user_id      TEXT    NOT NULL,
    session_id   TEXT    REFERENCES sessions (id),
    direction    TEXT    NOT NULL CHECK (direction IN ('up', 'down')),
    -- Up: the idempotency key.
    message_id   TEXT,
    -- Down: the upstream's messageCode, when given.
    message_code TEXT,
    source_type  TEXT,
    control_type TEXT,
    media_type   TEXT,
    content      TEXT,
    body         TEXT    NOT NULL CHECK (json_valid(body)),
    status       TEXT    NOT NULL CHECK (status IN ('pending', 'sent', 'failed', 'received')),
    result_code  TEXT,
    result_desc  TEXT,
    stream_seq   INTEGER,
    created_at   INTEGER NOT NULL,
    CHECK (direction <> 'up' OR message_id IS NOT NULL)
) STRICT;

-- Idempotency of uplink messages.
CREATE UNIQUE INDEX messages_up_key ON messages (kind, tenant, user_id, message_id)
    WHERE direction = 'up';
-- De-duplication of downlink messages the upstream returns twice.
CREATE UNIQUE INDEX messages_down_code ON messages (kind, tenant, user_id, message_code)
    WHERE message_code IS NOT NULL;
-- A user's transcript in order (rowid, i.e. id, is the implicit last key).
CREATE INDEX messages_user ON messages (kind, tenant, user_id, created_at);
-- Export by time.
CREATE INDEX messages_created ON messages (created_at);
-- A session's transcript; also keeps the foreign-key check cheap when sessions are deleted.
CREATE INDEX messages_session ON messages (session_id);

-- Every event the relay emitted.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY,
    relay_id   TEXT    NOT NULL UNIQUE,
    kind       TEXT    NOT NULL,
    tenant     TEXT,
    user_id    TEXT,
    session_id TEXT    REFERENCES sessions (id),
    event_type TEXT    NOT NULL,
    ok         INTEGER NOT NULL CHECK (ok IN (0, 1)),
    body       TEXT    NOT NULL CHECK (json_valid(body)),
    subject    TEXT    NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

CREATE INDEX events_user ON events (kind, tenant, user_id, created_at);
CREATE INDEX events_session ON events (session_id);

-- What is still to be published, in commit order. AUTOINCREMENT: a seq is never reused, even
-- after the table was emptied, so a late `outbox_done` can only delete the row it meant.
CREATE TABLE outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id     TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
