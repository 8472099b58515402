-- Tencent IM (the SQLite schema in ../sqlite has the same shape). Conventions as in 0001:
-- timestamptz timestamps, `id` is the insertion order.
--
-- Tencent's transcript rows live in `messages` with kind = 'tim' and tenant = the app: a Desk
-- send is an up row keyed by its `id` (its body, the send_msg request, carries MsgRandom); a
-- user's message from a callback is a down row. Robot streams and raw callbacks have their own
-- tables below.

-- One row per robot stream (`streamId`), updated after every send_stream_msg call.
CREATE TABLE tim_streams (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app           text        NOT NULL,
    user_id       text        NOT NULL,
    stream_id     text        NOT NULL,
    -- The robot account (@RBT#…).
    from_account  text,
    -- From the first answer; carried on every later call.
    msg_key       text,
    -- The chunks Tencent accepted, concatenated in order.
    text          text        NOT NULL,
    chunks        bigint      NOT NULL,
    calls         bigint      NOT NULL,
    -- JetStream sequence of the last chunk delivered (redeliveries at or below it are skipped).
    last_seq      bigint      NOT NULL,
    finished      boolean     NOT NULL,
    status        text        NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    error_code    text,
    error_info    text,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);

CREATE UNIQUE INDEX tim_streams_key ON tim_streams (app, stream_id);
CREATE INDEX tim_streams_user ON tim_streams (app, user_id, created_at, id);

-- Every callback Tencent made, as received.
CREATE TABLE tim_callbacks (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relay_id    text        NOT NULL UNIQUE,
    app         text        NOT NULL,
    user_id     text,
    command     text        NOT NULL,
    body        jsonb       NOT NULL,
    -- true when it was published on P.tim.<a>.in.<u> (false: the robot's own message, or no user).
    published   boolean     NOT NULL,
    created_at  timestamptz NOT NULL
);

CREATE INDEX tim_callbacks_app ON tim_callbacks (app, created_at, id);
CREATE INDEX tim_callbacks_user ON tim_callbacks (app, user_id, created_at, id);
