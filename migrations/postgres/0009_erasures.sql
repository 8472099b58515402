-- Retention and erasure (docs/PRIVACY.md; the SQLite schema in ../sqlite has the same shape).

-- A session with its customer, unique (the id is), so that the foreign keys below can reference
-- it. (An erasure finds a customer's sessions through sessions_user, 0008.)
CREATE UNIQUE INDEX sessions_customer_key ON sessions (kind, tenant, user_id, id);

-- Deleting a session makes PostgreSQL look for the rows that reference it. messages and events
-- have no index on session_id alone (0005 dropped them: they cost every write), so through the
-- single-column keys of 0001 each deleted session was a scan of both tables. Keyed by the
-- customer as well as the session, the same reference is looked up through the per-user indexes
-- (messages_user, events_user). A row's session is always its own customer's. NOT VALID: rows
-- already stored were checked by the old keys and are not read again here; new rows are checked.
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_session_id_fkey;
ALTER TABLE messages ADD CONSTRAINT messages_session_fkey
    FOREIGN KEY (kind, tenant, user_id, session_id)
    REFERENCES sessions (kind, tenant, user_id, id) NOT VALID;
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_session_id_fkey;
ALTER TABLE events ADD CONSTRAINT events_session_fkey
    FOREIGN KEY (kind, tenant, user_id, session_id)
    REFERENCES sessions (kind, tenant, user_id, id) NOT VALID;

-- One row per erasure (`ccrelay forget`, the `forget` RPC), kept as its audit: who asked, when,
-- whom, and how many rows (and files, and stream messages) went from where. Never any content:
-- the customer is named by a hash only.
CREATE TABLE erasures (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text        NOT NULL,
    tenant       text        NOT NULL,
    -- Lower-case hex SHA-256 of kind, tenant and user id, each followed by a NUL byte.
    user_hash    text        NOT NULL,
    -- `cli:<operating-system user>` or `rpc:<the caller's name for itself>`.
    requested_by text        NOT NULL,
    -- 'done'; 'incomplete' when a part failed (the caller was told; running it again finishes).
    outcome      text        NOT NULL CHECK (outcome IN ('done', 'incomplete')),
    -- What went, by table or place: {"messages": 12, "object_store": 1, "stream_out": 9, …}.
    counts       jsonb       NOT NULL,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL
);

CREATE INDEX erasures_user ON erasures (kind, tenant, user_hash);

-- The summaries whose free text retention is still to blank (docs/PRIVACY.md): only those with a
-- comment, so a pass reads exactly what it blanks, and a summary leaves the index once blanked.
CREATE INDEX session_summaries_free_text ON session_summaries (closed_at)
    WHERE satisfaction_comment IS NOT NULL;
