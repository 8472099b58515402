-- Tencent IM (the PostgreSQL schema in ../postgres has the same shape). Conventions as in 0001:
-- INTEGER microsecond timestamps, STRICT tables, `id` is the insertion order.
--
-- Tencent's transcript rows live in `messages` with kind = 'tim' and tenant = the app: a Desk
-- send is an up row keyed by its `id` (its body, the send_msg request, carries MsgRandom); a
-- user's message from a callback is a down row. Robot streams and raw callbacks have their own
-- tables below.

-- One row per robot stream (`streamId`), updated after every send_stream_msg call.
CREATE TABLE tim_streams (
    id            INTEGER PRIMARY KEY,
    app           TEXT    NOT NULL,
    user_id       TEXT    NOT NULL,
    stream_id     TEXT    NOT NULL,
    -- The robot account (@RBT#…).
    from_account  TEXT,
    -- From the first answer; carried on every later call.
    msg_key       TEXT,
    -- The chunks Tencent accepted, concatenated in order.
    text          TEXT    NOT NULL,
    chunks        INTEGER NOT NULL,
    calls         INTEGER NOT NULL,
    -- JetStream sequence of the last chunk delivered (redeliveries at or below it are skipped).
    last_seq      INTEGER NOT NULL,
    finished      INTEGER NOT NULL CHECK (finished IN (0, 1)),
    status        TEXT    NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    error_code    TEXT,
    error_info    TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;

CREATE UNIQUE INDEX tim_streams_key ON tim_streams (app, stream_id);
CREATE INDEX tim_streams_user ON tim_streams (app, user_id, created_at);

-- Every callback Tencent made, as received.
CREATE TABLE tim_callbacks (
    id          INTEGER PRIMARY KEY,
    relay_id    TEXT    NOT NULL UNIQUE,
    app         TEXT    NOT NULL,
    user_id     TEXT,
    command     TEXT    NOT NULL,
    body        TEXT    NOT NULL CHECK (json_valid(body)),
    -- 1 when it was published on P.tim.<a>.in.<u> (0: the robot's own message, or no user).
    published   INTEGER NOT NULL CHECK (published IN (0, 1)),
    created_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX tim_callbacks_app ON tim_callbacks (app, created_at);
CREATE INDEX tim_callbacks_user ON tim_callbacks (app, user_id, created_at);
