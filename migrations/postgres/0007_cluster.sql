-- Several relays as one service (docs/HA.md). PostgreSQL only: SQLite keeps one relay.
--
-- Work is divided into a fixed number of partitions (by tenant and user, FNV-1a 32 of the two
-- modulo the count, the same function as nats-server's `partition`). An instance holds a lease
-- on each partition it works on; every time is the database's (`now()`), never a host's.

-- The partition count the cluster was set up with: every member must be configured alike.
CREATE TABLE cluster_meta (
    id         integer     PRIMARY KEY CHECK (id = 1),
    partitions integer     NOT NULL CHECK (partitions BETWEEN 1 AND 1024),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The instances: alive while `lease_until` is ahead of the database's clock. A fair share is
-- computed over the live ones, ordered by `member`.
CREATE TABLE cluster_members (
    member      text        PRIMARY KEY,
    host        text        NOT NULL,
    pid         integer     NOT NULL,
    version     text        NOT NULL,
    started_at  timestamptz NOT NULL,
    seen_at     timestamptz NOT NULL,
    lease_until timestamptz NOT NULL
);

-- One row per partition. `owner` works on it while `lease_until` is ahead of `now()`; `epoch`
-- grows at every change of owner (and at a re-take after a lapse). A write of a partition's work
-- is applied only in a transaction that finds its writer the owner, at the epoch it knows, with
-- the lease running (and holds the row FOR SHARE until it commits, so no takeover slips in).
CREATE TABLE cluster_partitions (
    partition   integer     PRIMARY KEY,
    owner       text,
    epoch       bigint      NOT NULL DEFAULT 0,
    lease_until timestamptz,
    acquired_at timestamptz,
    renewed_at  timestamptz
);
CREATE INDEX cluster_partitions_owner ON cluster_partitions (owner);
