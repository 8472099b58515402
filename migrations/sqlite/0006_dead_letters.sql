-- Poison messages (the PostgreSQL schema in ../postgres has the same shape). Conventions as in
-- 0001: INTEGER microsecond timestamps, STRICT tables, `id` is the insertion order.

-- An outbox row whose publish failed for a reason of its own (not NATS being away) is retried on
-- its own backoff: `attempts` so far, not before `next_attempt_at`, with the last error. Rows of
-- other subjects pass it; later rows of its subject wait for it (one user's order is kept).
ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN next_attempt_at INTEGER;
ALTER TABLE outbox ADD COLUMN last_error TEXT;
-- Retrying rows only: "is a row of this subject backing off before this seq?".
CREATE INDEX outbox_retrying ON outbox (subject, seq) WHERE attempts > 0;

-- What the relay gave up on, with why: outbox rows that could not be published, uplink messages
-- whose attempt or age budget was spent, messages that could not be stored or named no routable
-- subject, and messages JetStream stopped delivering (max deliveries). Listed, retried and
-- dropped with `ccrelay deadletter`.
CREATE TABLE dead_letters (
    id         INTEGER PRIMARY KEY,
    -- 'outbox', 'cec_up', 'tim_send', 'tim_stream', 'max_deliveries'.
    source     TEXT    NOT NULL,
    -- Outbox: the row's Nats-Msg-Id. Uplink: the relay's id of the stream message.
    msg_id     TEXT    NOT NULL,
    -- Where it was to be published (outbox) or where it was received (uplink); as given, so it
    -- may be long: never indexed.
    subject    TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    kind       TEXT,
    tenant     TEXT,
    user_id    TEXT,
    -- The uplink message's idempotency key, when it has one.
    message_id TEXT,
    -- A short code ('too_large', 'bad_subject', 'publish_failed', 'attempts', 'age',
    -- 'unstorable', 'max_deliveries') and the error in words.
    reason     TEXT    NOT NULL,
    error      TEXT    NOT NULL,
    attempts   INTEGER NOT NULL,
    -- When the item was committed (outbox) or received (uplink), and when it was given up.
    created_at INTEGER NOT NULL,
    dead_at    INTEGER NOT NULL
) STRICT;
-- A message is given up once, however often the relay meets it again.
CREATE UNIQUE INDEX dead_letters_key ON dead_letters (source, msg_id);
