-- Poison messages (the SQLite schema in ../sqlite has the same shape). Conventions as in 0001.

-- An outbox row whose publish failed for a reason of its own (not NATS being away) is retried on
-- its own backoff: `attempts` so far, not before `next_attempt_at`, with the last error. Rows of
-- other subjects pass it; later rows of its subject wait for it (one user's order is kept).
ALTER TABLE outbox ADD COLUMN attempts integer NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN next_attempt_at timestamptz;
ALTER TABLE outbox ADD COLUMN last_error text;
-- Retrying rows only: "is a row of this subject backing off before this seq?".
CREATE INDEX outbox_retrying ON outbox (subject, seq) WHERE attempts > 0;

-- What the relay gave up on, with why: outbox rows that could not be published, uplink messages
-- whose attempt or age budget was spent, messages that could not be stored or named no routable
-- subject, and messages JetStream stopped delivering (max deliveries). Listed, retried and
-- dropped with `ccrelay deadletter`.
CREATE TABLE dead_letters (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- 'outbox', 'cec_up', 'tim_send', 'tim_stream', 'max_deliveries'.
    source     text        NOT NULL,
    -- Outbox: the row's Nats-Msg-Id. Uplink: the relay's id of the stream message.
    msg_id     text        NOT NULL,
    -- Where it was to be published (outbox) or where it was received (uplink); as given, so it
    -- may be long: never indexed.
    subject    text        NOT NULL,
    payload    bytea       NOT NULL,
    kind       text,
    tenant     text,
    user_id    text,
    -- The uplink message's idempotency key, when it has one.
    message_id text,
    -- A short code ('too_large', 'bad_subject', 'publish_failed', 'attempts', 'age',
    -- 'unstorable', 'max_deliveries') and the error in words.
    reason     text        NOT NULL,
    error      text        NOT NULL,
    attempts   integer     NOT NULL,
    -- When the item was committed (outbox) or received (uplink), and when it was given up.
    created_at timestamptz NOT NULL,
    dead_at    timestamptz NOT NULL
);
-- A message is given up once, however often the relay meets it again.
CREATE UNIQUE INDEX dead_letters_key ON dead_letters (source, msg_id);
