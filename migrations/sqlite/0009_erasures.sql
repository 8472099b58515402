-- Retention and erasure (docs/PRIVACY.md; the PostgreSQL schema in ../postgres has the same
-- shape). Conventions as in 0001: INTEGER microsecond timestamps, STRICT tables.

-- An erasure finds a customer's sessions, the closed ones too, through sessions_user (0008).

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

-- The summaries whose free text retention is still to blank (docs/PRIVACY.md): only those with a
-- comment, so a pass reads exactly what it blanks, and a summary leaves the index once blanked.
CREATE INDEX session_summaries_free_text ON session_summaries (closed_at)
    WHERE satisfaction_comment IS NOT NULL;
