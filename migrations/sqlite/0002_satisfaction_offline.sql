-- Satisfaction results and offline / leave messages (the PostgreSQL schema in ../postgres has the
-- same shape). Conventions as in 0001: INTEGER microsecond timestamps, STRICT tables, `id` is the
-- insertion order (ties of created_at).

-- Customer evaluations (saveSatisfaction) and robot feedback (v1/robot/feedbacksatisfaction).
CREATE TABLE satisfactions (
    id          INTEGER PRIMARY KEY,
    relay_id    TEXT    NOT NULL UNIQUE,
    kind        TEXT    NOT NULL,
    tenant      TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    session_id  TEXT    REFERENCES sessions (id),
    source      TEXT    NOT NULL CHECK (source IN ('customer', 'robot')),
    -- Customer: the evaluation, '1' to '5'. Robot: the feedback, '1' satisfied, '0' not.
    score       TEXT    NOT NULL,
    comment     TEXT,
    -- Robot: the interIdx the feedback is about.
    inter_idx   TEXT,
    result_code TEXT    NOT NULL,
    result_desc TEXT,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX satisfactions_user ON satisfactions (tenant, user_id, created_at);
CREATE INDEX satisfactions_created ON satisfactions (created_at);
CREATE INDEX satisfactions_session ON satisfactions (session_id);

-- Messages the contact center kept for later: a send answered in offline mode ('offline') and
-- doLeaveMessage ('leave_message').
CREATE TABLE offline_messages (
    id          INTEGER PRIMARY KEY,
    relay_id    TEXT    NOT NULL UNIQUE,
    kind        TEXT    NOT NULL,
    tenant      TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    session_id  TEXT    REFERENCES sessions (id),
    source      TEXT    NOT NULL CHECK (source IN ('offline', 'leave_message')),
    -- Offline: the up message's idempotency key.
    message_id  TEXT,
    -- Leave message: the number to call back.
    caller      TEXT,
    content     TEXT    NOT NULL,
    -- Offline: the upstream's offlineMsg.tipText.
    tip_text    TEXT,
    result_code TEXT    NOT NULL,
    result_desc TEXT,
    created_at  INTEGER NOT NULL
) STRICT;

-- A redelivered offline message is stored once.
CREATE UNIQUE INDEX offline_messages_key ON offline_messages (kind, tenant, user_id, message_id)
    WHERE message_id IS NOT NULL;
CREATE INDEX offline_messages_user ON offline_messages (tenant, user_id, created_at);
CREATE INDEX offline_messages_created ON offline_messages (created_at);
CREATE INDEX offline_messages_session ON offline_messages (session_id);
