-- ccrelay store, PostgreSQL flavour (the SQLite schema in ../sqlite has the same shape).
--
-- Timestamps are timestamptz (microsecond precision). Message and event bodies are jsonb, so
-- analytics can query them (note: jsonb normalises whitespace and key order); outbox payloads
-- are bytea, published byte for byte.

-- One row per contact-center session. At most one not-closed session per (kind, tenant, user).
CREATE TABLE sessions (
    id                text        NOT NULL PRIMARY KEY,
    kind              text        NOT NULL,
    tenant            text        NOT NULL,
    user_id           text        NOT NULL,
    channel_config_id text        NOT NULL,
    state             text        NOT NULL CHECK (state IN ('active', 'queued', 'closed')),
    -- The user's current ccmessaging-token: a short-lived bearer credential.
    token             text,
    opened_at         timestamptz NOT NULL,
    closed_at         timestamptz,
    close_reason      text,
    last_activity_at  timestamptz NOT NULL,
    CHECK ((state = 'closed') = (closed_at IS NOT NULL))
);

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
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relay_id     text        NOT NULL UNIQUE,
    kind         text        NOT NULL,
    tenant       text        NOT NULL,
    user_id      text        NOT NULL,
    session_id   text        REFERENCES sessions (id),
    direction    text        NOT NULL CHECK (direction IN ('up', 'down')),
    -- Up: the idempotency key.
    message_id   text,
    -- Down: the upstream's messageCode, when given.
    message_code text,
    source_type  text,
    control_type text,
    media_type   text,
    content      text,
    body         jsonb       NOT NULL,
    status       text        NOT NULL CHECK (status IN ('pending', 'sent', 'failed', 'received')),
    result_code  text,
    result_desc  text,
    stream_seq   bigint,
    created_at   timestamptz NOT NULL,
    CHECK (direction <> 'up' OR message_id IS NOT NULL)
);

-- Idempotency of uplink messages.
CREATE UNIQUE INDEX messages_up_key ON messages (kind, tenant, user_id, message_id)
    WHERE direction = 'up';
-- De-duplication of downlink messages the upstream returns twice.
CREATE UNIQUE INDEX messages_down_code ON messages (kind, tenant, user_id, message_code)
    WHERE message_code IS NOT NULL;
-- A user's transcript in order.
CREATE INDEX messages_user ON messages (kind, tenant, user_id, created_at, id);
-- Export by time.
CREATE INDEX messages_created ON messages (created_at);
-- A session's transcript; also keeps the foreign-key check cheap when sessions are deleted.
CREATE INDEX messages_session ON messages (session_id);

-- Every event the relay emitted.
CREATE TABLE events (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relay_id   text        NOT NULL UNIQUE,
    kind       text        NOT NULL,
    tenant     text,
    user_id    text,
    session_id text        REFERENCES sessions (id),
    event_type text        NOT NULL,
    ok         boolean     NOT NULL,
    body       jsonb       NOT NULL,
    subject    text        NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE INDEX events_user ON events (kind, tenant, user_id, created_at, id);
CREATE INDEX events_session ON events (session_id);

-- What is still to be published, in commit order. Identity values are never reused.
CREATE TABLE outbox (
    seq        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    msg_id     text        NOT NULL,
    subject    text        NOT NULL,
    payload    bytea       NOT NULL,
    created_at timestamptz NOT NULL
);
