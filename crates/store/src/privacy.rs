//! Retention and erasure (docs/PRIVACY.md): the store's part. What retention deletes of old rows
//! and what an erasure deletes of one customer, one small transaction at a time ([`Purge`],
//! [`crate::Backend::purge`]); the erasure's audit record ([`Erasure`], table `erasures`); and
//! making what was deleted unreadable in the database's files ([`crate::Backend::scrub`]).
//!
//! **Steps, not batches of group commit.** A step deletes at most its `limit` rows of one table
//! in one transaction of its own and says whether another step may find more ([`Purged`]); the
//! caller (the relay's retention task, an erasure) runs steps until none is left, pausing between
//! them. Steps do not join the relay's group-commit batches: a batch that failed is applied again
//! write by write, and a step's count must be its own. On SQLite a step runs on the writer's
//! connection, between two batches (it holds the one write lock for its own rows only); on
//! PostgreSQL on a pooled connection, beside the writers. Deleting is idempotent, so two steps of
//! the same (two relays, a relay and `ccrelay forget`) at once only share the work.
//!
//! **Retention** ([`Purge::Older`]): rows older than the cut-off, by `created_at` (a stream by
//! `updated_at`, a finished one only; a file once its download ended). Tables with an index on
//! their time are read through it; the others (files, callbacks, streams, dead letters) from
//! their oldest rows in insertion order (`id`), which follows time: a step looks at the
//! `limit` oldest rows and deletes those past the cut-off, and the table is done when a step finds
//! none. Summaries keep their figures; their free text (`satisfaction_comment`) is blanked, found
//! through an index of the summaries that have one (migration 0009). Sessions go last: a closed
//! session past the cut-off once no row references it any more (rows created after it closed, a
//! satisfaction say, keep it until they age out; its token is cleared meanwhile). Sessions are
//! read in `opened_at` order from a cursor ([`Purged::after`]).
//!
//! **Erasure** ([`Purge::Customer`]): every row of one customer ([`Customer`]): by (kind, tenant,
//! user) where a table has those columns (`session_summaries` included), by the customer's
//! subjects in the outbox (which has none) and in dead letters (an outbox row set aside keeps
//! only its subject). Tencent's own tables (`tim_callbacks`, `tim_streams`) are keyed by app, so
//! only a `tim` customer is erased from them. Closed sessions go last; an open one stays (the
//! caller refuses to erase a customer with an open session, so one can only be new).
//!
//! **Foreign keys.** Rows reference their session; deleting a session makes the database look
//! for such rows, and `messages` and `events` have no index on `session_id` alone (migration
//! 0005). On PostgreSQL their keys name the customer too (migration 0009), so the look-up uses
//! the per-user indexes. On SQLite, where a key cannot be changed in place, a step that deletes
//! sessions runs with `foreign_keys` off on its connection, and deletes only sessions that the
//! same statement finds unreferenced through those indexes (a row's session is its customer's).
//! A summary does not reference its session (a Tencent Desk session's is no `sessions` row): it
//! keeps none.

use std::collections::BTreeMap;

use time::OffsetDateTime;

/// A table retention or an erasure deletes from, as named in the audit and in the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Outbox,
    Messages,
    Events,
    Satisfactions,
    OfflineMessages,
    Files,
    TimCallbacks,
    TimStreams,
    DeadLetters,
    SessionSummaries,
    Sessions,
}

impl Table {
    /// The table's name in the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            Table::Outbox => "outbox",
            Table::Messages => "messages",
            Table::Events => "events",
            Table::Satisfactions => "satisfactions",
            Table::OfflineMessages => "offline_messages",
            Table::Files => "files",
            Table::TimCallbacks => "tim_callbacks",
            Table::TimStreams => "tim_streams",
            Table::DeadLetters => "dead_letters",
            Table::SessionSummaries => "session_summaries",
            Table::Sessions => "sessions",
        }
    }

    /// What retention goes through, in order: the rows, then the sessions they referenced. The
    /// outbox is not among them: its rows are deleted once published.
    pub const RETENTION: &'static [Table] = &[
        Table::Messages,
        Table::Events,
        Table::Satisfactions,
        Table::OfflineMessages,
        Table::Files,
        Table::TimCallbacks,
        Table::TimStreams,
        Table::DeadLetters,
        Table::SessionSummaries,
        Table::Sessions,
    ];

    /// What an erasure goes through, in order: what is still to be published first (so nothing
    /// of the customer is published after its rows are gone), the sessions last.
    pub const ERASURE: &'static [Table] = &[
        Table::Outbox,
        Table::Messages,
        Table::Events,
        Table::Satisfactions,
        Table::OfflineMessages,
        Table::Files,
        Table::TimCallbacks,
        Table::TimStreams,
        Table::DeadLetters,
        Table::SessionSummaries,
        Table::Sessions,
    ];
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One customer, as an erasure names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    /// `cec` or `tim` ([`crate::kind`]).
    pub kind: String,
    /// The tenant (CEC) or app (Tencent IM).
    pub tenant: String,
    pub user_id: String,
    /// The subjects the relay publishes and receives this customer's messages on, as the outbox
    /// and dead letters keep them (without a partition token): their rows are found by these.
    pub subjects: Vec<String>,
}

/// Where a sessions step of retention goes on from: the `(opened_at, id)` of the last session it
/// looked at.
pub type SessionCursor = (OffsetDateTime, String);

/// One step of retention or erasure: one transaction, at most `limit` rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Purge {
    /// Retention: rows of `table` older than `before` (see the module docs). For
    /// [`Table::Sessions`], closed sessions after `after`.
    Older {
        table: Table,
        before: OffsetDateTime,
        limit: i64,
        after: Option<SessionCursor>,
    },
    /// Erasure: rows of `table` of one customer.
    Customer {
        table: Table,
        customer: Customer,
        limit: i64,
    },
}

impl Purge {
    /// A retention step of `table`, from the start.
    pub fn older(table: Table, before: OffsetDateTime, limit: i64) -> Self {
        Purge::Older {
            table,
            before,
            limit,
            after: None,
        }
    }

    pub fn table(&self) -> Table {
        match self {
            Purge::Older { table, .. } | Purge::Customer { table, .. } => *table,
        }
    }

    /// The next step of the same after `done`, or `None` when `done` says none is left.
    pub fn next(&self, done: &Purged) -> Option<Purge> {
        if !done.more {
            return None;
        }
        let mut next = self.clone();
        if let Purge::Older { after, .. } = &mut next {
            *after = done.after.clone();
        }
        Some(next)
    }
}

/// What one step did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Purged {
    /// Rows deleted (summaries: rows whose free text was blanked).
    pub rows: u64,
    /// Whether another step of the same may find more.
    pub more: bool,
    /// Sessions: where the next step goes on from.
    pub after: Option<SessionCursor>,
}

/// What [`crate::Backend::scrub`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scrubbed {
    /// SQLite: the write-ahead log copied into the database file and truncated to nothing.
    Checkpointed,
    /// SQLite: readers kept the write-ahead log in use; it is truncated at a later checkpoint.
    Busy,
    /// PostgreSQL: the tables vacuumed.
    Vacuumed,
}

/// An erasure's audit record (table `erasures`): who asked, when, whom (a hash), and how many
/// rows went from where. No content.
#[derive(Debug, Clone, PartialEq)]
pub struct Erasure {
    /// Its id once stored (0 before).
    pub id: i64,
    pub kind: String,
    pub tenant: String,
    /// Lower-case hex SHA-256 of kind, tenant and user id, each followed by a NUL byte.
    pub user_hash: String,
    /// `cli:<user>` or `rpc:<caller>`.
    pub requested_by: String,
    /// `done`, or `incomplete` when a part failed.
    pub outcome: String,
    /// What went, by table or place.
    pub counts: BTreeMap<String, u64>,
    pub started_at: OffsetDateTime,
    pub finished_at: OffsetDateTime,
}

/// `session_summaries` (migration 0008, one row per conversation, keyed by (kind, tenant,
/// session_id)): what retention and erasure take of it — these columns, and `kind`, `tenant`,
/// `user_id` (a customer's rows).
pub(crate) mod summaries {
    /// Its free text, blanked by retention.
    pub const FREE_TEXT: &str = "satisfaction_comment";
    /// When its session closed: how old it is.
    pub const AT: &str = "closed_at";
}

/// `counts` as the JSON object the audit keeps.
pub(crate) fn counts_json(counts: &BTreeMap<String, u64>) -> String {
    serde_json::to_string(counts).unwrap_or_else(|_| "{}".to_owned())
}

/// The audit's `counts` read back.
pub(crate) fn counts_of(json: &str) -> crate::Result<BTreeMap<String, u64>> {
    serde_json::from_str(json)
        .map_err(|e| crate::StoreError::Corrupt(format!("erasure counts {json:?}: {e}")))
}

/// The statements of the steps, written once for both backends with `?N` parameters (SQLite's;
/// PostgreSQL's `$N` by [`sql::pg`]). Each takes its parameters as [`sql::Binds`] says.
pub(crate) mod sql {
    use super::{Purge, Table, summaries};

    /// The parameters of a statement, in order.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Binds {
        /// `?1` the cut-off, `?2` the limit.
        Older,
        /// `?1` kind, `?2` tenant, `?3` user, `?4` the limit.
        Customer,
        /// `?1` app, `?2` user, `?3` the limit.
        App,
        /// `?1` the limit, `?2` the customer's subjects.
        Subjects,
        /// `?1` kind, `?2` tenant, `?3` user, `?4` the limit, `?5` the subjects.
        CustomerOrSubjects,
    }

    /// How a step's row count says whether another step may find more.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum More {
        /// Read through an index in order: more while a step fills its limit.
        WhileFull,
        /// Read from the oldest `limit` rows by id: more while a step deletes anything.
        WhileAny,
    }

    /// `sql` with PostgreSQL's `$N` parameters (the statements here have no `?` elsewhere).
    pub fn pg(sql: &str) -> String {
        sql.replace('?', "$")
    }

    /// The condition that no row references session `s` any more (aliased `s`): through the
    /// per-user indexes for messages and events, the session indexes for the others.
    pub const UNREFERENCED: &str = "NOT EXISTS (SELECT 1 FROM messages m WHERE m.kind = s.kind AND m.tenant = s.tenant \
               AND m.user_id = s.user_id AND m.session_id = s.id) \
             AND NOT EXISTS (SELECT 1 FROM events e WHERE e.kind = s.kind AND e.tenant = s.tenant \
               AND e.user_id = s.user_id AND e.session_id = s.id) \
             AND NOT EXISTS (SELECT 1 FROM satisfactions x WHERE x.session_id = s.id) \
             AND NOT EXISTS (SELECT 1 FROM offline_messages x WHERE x.session_id = s.id) \
             AND NOT EXISTS (SELECT 1 FROM files x WHERE x.session_id = s.id)";

    /// The candidates of a retention step of sessions: closed, opened before `?1`, after
    /// `(?2, ?3)` in (opened_at, id) order, at most `?4`; their id and opened_at.
    pub const OLD_SESSIONS: &str = "SELECT id, opened_at FROM sessions \
         WHERE state = 'closed' AND opened_at < ?1 \
           AND (opened_at > ?2 OR (opened_at = ?2 AND id > ?3)) \
         ORDER BY opened_at, id LIMIT ?4";

    /// Deletes session `?1` if it closed before `?2` and nothing references it.
    pub fn delete_old_session() -> String {
        format!(
            "DELETE FROM sessions WHERE id IN (SELECT s.id FROM sessions s \
               WHERE s.id = ?1 AND s.closed_at < ?2 AND {UNREFERENCED})"
        )
    }

    /// The token of a closed session that stays (something still references it), cleared.
    pub const CLEAR_OLD_TOKEN: &str = "UPDATE sessions SET token = NULL \
         WHERE id = ?1 AND closed_at < ?2 AND token IS NOT NULL";

    /// The statement of a step that is one statement (every step but a retention step of
    /// sessions), its parameters and how to read its count; `None` for a step with nothing to do
    /// (a table this customer has no rows in). `subjects_in` is the backend's `IN` over the
    /// subjects parameter (`?2` or `?5`, given as `{}`).
    pub fn statement(step: &Purge, subjects_in: &str) -> Option<(String, Binds, More)> {
        let t = step.table().as_str();
        let subjects = |n: &str| subjects_in.replace("{}", n);
        match step {
            Purge::Older { table, .. } => Some(match table {
                Table::Messages | Table::Events | Table::Satisfactions | Table::OfflineMessages => {
                    (
                        format!(
                            "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE created_at < ?1 \
                         ORDER BY created_at LIMIT ?2)"
                        ),
                        Binds::Older,
                        More::WhileFull,
                    )
                }
                Table::TimCallbacks | Table::DeadLetters => (
                    format!(
                        "DELETE FROM {t} WHERE id IN (SELECT h.id FROM (SELECT id, created_at \
                         FROM {t} ORDER BY id LIMIT ?2) AS h WHERE h.created_at < ?1)"
                    ),
                    Binds::Older,
                    More::WhileAny,
                ),
                Table::Files => (
                    "DELETE FROM files WHERE id IN (SELECT h.id FROM (SELECT id, created_at, \
                     status FROM files ORDER BY id LIMIT ?2) AS h \
                     WHERE h.created_at < ?1 AND h.status <> 'pending')"
                        .to_owned(),
                    Binds::Older,
                    More::WhileAny,
                ),
                Table::TimStreams => (
                    "DELETE FROM tim_streams WHERE id IN (SELECT h.id FROM (SELECT id, \
                     updated_at, status FROM tim_streams ORDER BY id LIMIT ?2) AS h \
                     WHERE h.updated_at < ?1 AND h.status <> 'pending')"
                        .to_owned(),
                    Binds::Older,
                    More::WhileAny,
                ),
                // Through session_summaries_free_text (the summaries that have one).
                Table::SessionSummaries => (
                    format!(
                        "UPDATE {t} SET {text} = NULL WHERE (kind, tenant, session_id) IN \
                         (SELECT kind, tenant, session_id FROM {t} \
                          WHERE {text} IS NOT NULL AND {at} < ?1 ORDER BY {at} LIMIT ?2)",
                        text = summaries::FREE_TEXT,
                        at = summaries::AT
                    ),
                    Binds::Older,
                    More::WhileFull,
                ),
                // The outbox is not retention's; sessions are not one statement.
                Table::Outbox | Table::Sessions => return None,
            }),
            Purge::Customer {
                table, customer, ..
            } => Some(match table {
                Table::TimCallbacks | Table::TimStreams => {
                    if customer.kind != crate::kind::TIM {
                        return None;
                    }
                    (
                        format!(
                            "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} \
                             WHERE app = ?1 AND user_id = ?2 LIMIT ?3)"
                        ),
                        Binds::App,
                        More::WhileFull,
                    )
                }
                Table::Outbox => (
                    format!(
                        "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox \
                         WHERE subject {} LIMIT ?1)",
                        subjects("?2")
                    ),
                    Binds::Subjects,
                    More::WhileFull,
                ),
                Table::DeadLetters => (
                    format!(
                        "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters \
                         WHERE (kind = ?1 AND tenant = ?2 AND user_id = ?3) OR subject {} \
                         LIMIT ?4)",
                        subjects("?5")
                    ),
                    Binds::CustomerOrSubjects,
                    More::WhileFull,
                ),
                Table::SessionSummaries => (
                    format!(
                        "DELETE FROM {t} WHERE (kind, tenant, session_id) IN \
                         (SELECT kind, tenant, session_id FROM {t} \
                          WHERE kind = ?1 AND tenant = ?2 AND user_id = ?3 LIMIT ?4)"
                    ),
                    Binds::Customer,
                    More::WhileFull,
                ),
                Table::Sessions => (
                    format!(
                        "DELETE FROM sessions WHERE id IN (SELECT s.id FROM sessions s \
                         WHERE s.kind = ?1 AND s.tenant = ?2 AND s.user_id = ?3 \
                           AND s.state = 'closed' AND {UNREFERENCED} LIMIT ?4)"
                    ),
                    Binds::Customer,
                    More::WhileFull,
                ),
                Table::Messages
                | Table::Events
                | Table::Satisfactions
                | Table::OfflineMessages
                | Table::Files => (
                    format!(
                        "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} \
                         WHERE kind = ?1 AND tenant = ?2 AND user_id = ?3 LIMIT ?4)"
                    ),
                    Binds::Customer,
                    More::WhileFull,
                ),
            }),
        }
    }
}
