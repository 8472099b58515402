-- Retention and erasure (docs/PRIVACY.md; the PostgreSQL schema in ../postgres has the same
-- shape). Conventions as in 0001: INTEGER microsecond timestamps, STRICT tables.

-- A customer's sessions, the closed ones too (sessions_open_user covers the open ones only): an
-- erasure finds them here. Sessions are few beside messages, so the index costs little.
CREATE INDEX sessions_user ON sessions (kind, tenant, user_id, id);

-- One row per erasure (`ccrelay forget`, the `forget` RPC), kept as its audit: who asked, when,
-- whom, and how many rows (and files, and stream messages) went from where. Never any content:
-- the customer is named by a hash only.
CREATE TABLE erasures (
    id           INTEGER PRIMARY KEY,
    kind         TEXT    NOT NULL,
    tenant       TEXT    NOT NULL,
    -- Lower-case hex SHA-256 of kind, tenant and user id, each followed by a NUL byte.
    user_hash    TEXT    NOT NULL,
    -- `cli:<operating-system user>` or `rpc:<the caller's name for itself>`.
    requested_by TEXT    NOT NULL,
    -- 'done'; 'incomplete' when a part failed (the caller was told; running it again finishes).
    outcome      TEXT    NOT NULL CHECK (outcome IN ('done', 'incomplete')),
    -- What went, by table or place: {"messages": 12, "object_store": 1, "stream_out": 9, …}.
    counts       TEXT    NOT NULL CHECK (json_valid(counts)),
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX erasures_user ON erasures (kind, tenant, user_hash);
