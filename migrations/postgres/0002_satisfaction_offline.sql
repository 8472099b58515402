-- Satisfaction results and offline / leave messages (the SQLite schema in ../sqlite has the same
-- shape). Conventions as in 0001: timestamptz timestamps, `id` is the insertion order (ties of
-- created_at).

-- Customer evaluations (saveSatisfaction) and robot feedback (v1/robot/feedbacksatisfaction).
CREATE TABLE satisfactions (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relay_id    text        NOT NULL UNIQUE,
    kind        text        NOT NULL,
    tenant      text        NOT NULL,
    user_id     text        NOT NULL,
    session_id  text        REFERENCES sessions (id),
    source      text        NOT NULL CHECK (source IN ('customer', 'robot')),
    -- Customer: the evaluation, '1' to '5'. Robot: the feedback, '1' satisfied, '0' not.
    score       text        NOT NULL,
    comment     text,
    -- Robot: the interIdx the feedback is about.
    inter_idx   text,
    result_code text        NOT NULL,
    result_desc text,
    created_at  timestamptz NOT NULL
);

CREATE INDEX satisfactions_user ON satisfactions (tenant, user_id, created_at, id);
CREATE INDEX satisfactions_created ON satisfactions (created_at);
CREATE INDEX satisfactions_session ON satisfactions (session_id);

-- Messages the contact center kept for later: a send answered in offline mode ('offline') and
-- doLeaveMessage ('leave_message').
CREATE TABLE offline_messages (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relay_id    text        NOT NULL UNIQUE,
    kind        text        NOT NULL,
    tenant      text        NOT NULL,
    user_id     text        NOT NULL,
    session_id  text        REFERENCES sessions (id),
    source      text        NOT NULL CHECK (source IN ('offline', 'leave_message')),
    -- Offline: the up message's idempotency key.
    message_id  text,
    -- Leave message: the number to call back.
    caller      text,
    content     text        NOT NULL,
    -- Offline: the upstream's offlineMsg.tipText.
    tip_text    text,
    result_code text        NOT NULL,
    result_desc text,
    created_at  timestamptz NOT NULL
);

-- A redelivered offline message is stored once.
CREATE UNIQUE INDEX offline_messages_key ON offline_messages (kind, tenant, user_id, message_id)
    WHERE message_id IS NOT NULL;
CREATE INDEX offline_messages_user ON offline_messages (tenant, user_id, created_at, id);
CREATE INDEX offline_messages_created ON offline_messages (created_at);
CREATE INDEX offline_messages_session ON offline_messages (session_id);
