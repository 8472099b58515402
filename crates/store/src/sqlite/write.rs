//! The SQLite writer: every write of the store — group commit's batches ([`crate::group`]) —
//! applied by calling SQLite directly (rusqlite) on the thread that runs the batch, one
//! connection, one transaction per batch. What a batch writes is decided by [`crate::apply`];
//! this module has SQLite's statements for it ([`crate::apply::RowOps`]), each a cached prepared
//! statement executed per row, and runs [`crate::apply::write_batch`] to completion on its
//! thread (none of its futures waits).
//!
//! Why not through sqlx like the reads: sqlx runs each SQLite connection on a worker thread of
//! its own, so every statement — and every row it returns — is a round trip between two threads,
//! each a wake-up and a context switch. Profiled in the S3 benchmark (docs/BENCHMARKS.md), such a
//! writer's connection thread spent more of its CPU switching than in SQLite, and the single
//! writer is what bounds uplink throughput. Here a batch costs one wake-up: group commit's writer
//! thread ([`crate::group::Writers::OwnThread`]) runs its statements itself, each row one
//! prepared statement execution, which is cheap without the hop.
//!
//! The connection has the settings of the read pool ([`super::SqliteStore::connect`]): WAL,
//! `synchronous = FULL` (a committed batch survives a power loss), foreign keys, a busy timeout,
//! statement journals in memory and a checkpoint every [`super::WAL_CHECKPOINT_PAGES`] pages;
//! and, as the one connection that deletes, `secure_delete`.
//! [`Writer::write_batch`] blocks its thread for the batch: it is for the writer's own thread.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{LazyLock, Mutex};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;

use super::{BUSY_TIMEOUT, WAL_CHECKPOINT_PAGES};
use crate::apply::{self, DownInsert, EventInsert, RowOps};
use crate::summary::{self, SessionSummary};
use crate::{
    DeadLetter, FileDone, FileRow, MessageRow, MessageStatus, OfflineRow, Result, SatisfactionRow,
    Session, SessionState, StoreError, TimCallbackRow, TimStreamRow, UpOutcome, Write, Written,
    from_unix_micros, invalid, sqlite_transient, unix_micros,
};

/// Prepared statements the writer keeps: one per statement below, with room.
const STATEMENT_CACHE: usize = 40;

const MESSAGE_INSERT: &str = "INSERT INTO messages (relay_id, kind, tenant, user_id, \
     session_id, direction, message_id, message_code, source_type, control_type, media_type, \
     content, body, status, result_code, result_desc, stream_seq, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)";

/// An up row with its outcome; an existing one (Pending, of an earlier run) takes the outcome.
const UPSERT_UP: &str = "ON CONFLICT (kind, tenant, user_id, message_id) WHERE direction = 'up' \
     DO UPDATE SET status = excluded.status, result_code = excluded.result_code, \
     result_desc = excluded.result_desc, session_id = coalesce(excluded.session_id, session_id)";

/// A Pending up row (`begin_up`), unless the message has one.
const BEGIN_UP: &str = "ON CONFLICT (kind, tenant, user_id, message_id) WHERE direction = 'up' \
     DO NOTHING";

/// A down row, unless its message_code is known.
const INSERT_DOWN: &str = "ON CONFLICT (kind, tenant, user_id, message_code) \
     WHERE message_code IS NOT NULL DO NOTHING";

const UPDATE_UP: &str = "UPDATE messages SET status = ?5, result_code = ?6, result_desc = ?7, \
     session_id = coalesce(?8, session_id) \
     WHERE kind = ?1 AND tenant = ?2 AND user_id = ?3 AND message_id = ?4 AND direction = 'up'";

const UP_STATUS: &str = "SELECT status FROM messages \
     WHERE kind = ?1 AND tenant = ?2 AND user_id = ?3 AND message_id = ?4 AND direction = 'up'";

const INSERT_EVENT: &str = "INSERT INTO events (relay_id, kind, tenant, user_id, session_id, \
     event_type, ok, body, subject, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

const INSERT_SATISFACTION: &str = "INSERT INTO satisfactions (relay_id, kind, tenant, user_id, \
     session_id, source, score, comment, inter_idx, result_code, result_desc, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

/// An offline row, unless its message_id is known.
const INSERT_OFFLINE: &str = "INSERT INTO offline_messages (relay_id, kind, tenant, user_id, \
     session_id, source, message_id, caller, content, tip_text, result_code, result_desc, \
     created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
     ON CONFLICT (kind, tenant, user_id, message_id) WHERE message_id IS NOT NULL DO NOTHING";

/// A dead letter, unless its (source, msg_id) is stored; its id.
const INSERT_DEAD_LETTER: &str = "INSERT INTO dead_letters (source, msg_id, subject, payload, \
     kind, tenant, user_id, message_id, reason, error, attempts, created_at, dead_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
     ON CONFLICT (source, msg_id) DO NOTHING RETURNING id";

const INSERT_OUTBOX: &str =
    "INSERT INTO outbox (msg_id, subject, payload, created_at, held) VALUES (?1, ?2, ?3, ?4, ?5)";

const INSERT_FILE: &str = "INSERT INTO files (relay_id, kind, tenant, user_id, session_id, \
     media_type, file_id, file_type, status, size, sha256, bucket, object, attempts, error_code, \
     error_message, created_at, updated_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)";

const INSERT_SESSION: &str = "INSERT INTO sessions (id, kind, tenant, user_id, \
     channel_config_id, state, token, opened_at, closed_at, close_reason, last_activity_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

const SET_SESSION_STATE: &str =
    "UPDATE sessions SET state = ?2 WHERE id = ?1 AND state <> 'closed'";

const CLOSE_SESSION: &str = "UPDATE sessions SET state = 'closed', closed_at = ?2, \
     close_reason = ?3 WHERE id = ?1 AND state <> 'closed'";

const SESSION_EXISTS: &str = "SELECT 1 FROM sessions WHERE id = ?1";

const TIM_STREAM_UPSERT: &str = "INSERT INTO tim_streams (app, user_id, stream_id, from_account, \
     msg_key, text, chunks, calls, last_seq, finished, status, error_code, error_info, created_at, \
     updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) \
     ON CONFLICT (app, stream_id) DO UPDATE SET user_id = excluded.user_id, \
     from_account = excluded.from_account, msg_key = excluded.msg_key, text = excluded.text, \
     chunks = excluded.chunks, calls = excluded.calls, last_seq = excluded.last_seq, \
     finished = excluded.finished, status = excluded.status, error_code = excluded.error_code, \
     error_info = excluded.error_info, updated_at = excluded.updated_at";

const TIM_CALLBACK_INSERT: &str = "INSERT INTO tim_callbacks (relay_id, app, user_id, command, \
     body, published, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

const TOUCH_SESSION: &str =
    "UPDATE sessions SET last_activity_at = max(last_activity_at, ?2) WHERE id = ?1";

const SET_TOKEN: &str = "UPDATE sessions SET token = ?2 WHERE id = ?1";

const DELETE_OUTBOX: &str = "DELETE FROM outbox WHERE seq = ?1";

const OUTBOX_FAILED: &str =
    "UPDATE outbox SET attempts = ?2, next_attempt_at = ?3, last_error = ?4 WHERE seq = ?1";

/// Outbox row `?1` as a dead letter (or the dead letter of its msg_id updated); its id.
const OUTBOX_TO_DEAD_LETTER: &str = "INSERT INTO dead_letters (source, msg_id, subject, payload, \
     reason, error, attempts, created_at, dead_at) \
     SELECT 'outbox', msg_id, subject, payload, ?2, ?3, attempts, created_at, ?4 \
     FROM outbox WHERE seq = ?1 \
     ON CONFLICT (source, msg_id) DO UPDATE SET reason = excluded.reason, \
       error = excluded.error, attempts = excluded.attempts, dead_at = excluded.dead_at \
     RETURNING id";

static DEAD_LETTER_BY_ID: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM dead_letters WHERE id = ?1",
        super::DEAD_LETTER_COLUMNS
    )
});

const DELETE_DEAD_LETTER: &str = "DELETE FROM dead_letters WHERE id = ?1";

/// A failed up row set back to pending (its dead letter is published again).
const UP_PENDING_AGAIN: &str = "UPDATE messages SET status = 'pending' WHERE direction = 'up' \
     AND kind = ?1 AND tenant = ?2 AND user_id = ?3 AND message_id = ?4 AND status = 'failed'";

const FILE_ATTEMPT_FAILED: &str = "UPDATE files SET attempts = ?2, error_code = ?3, \
     error_message = ?4, updated_at = ?5 WHERE relay_id = ?1 AND status = 'pending'";

const FINISH_FILE: &str = "UPDATE files SET status = ?2, size = ?3, sha256 = ?4, bucket = ?5, \
     object = ?6, attempts = ?7, error_code = ?8, error_message = ?9, updated_at = ?10 \
     WHERE relay_id = ?1 AND status = 'pending'";

const SET_MESSAGE_BODY: &str = "UPDATE messages SET body = ?2 WHERE relay_id = ?1";

const RELEASE_OUTBOX: &str =
    "UPDATE outbox SET payload = ?2, held = 0 WHERE held = 1 AND msg_id = ?1";

/// The summary of closed CEC session `?1`, as of `?2`, stored and returned.
static SUMMARIZE_SESSION: LazyLock<String> =
    LazyLock::new(|| summary::upsert("cec_session_summaries", "v.session_id = ?1", "?2"));

/// The summary of Desk session `?2` of app `?1`, as of `?3`, stored and returned.
static SUMMARIZE_DESK: LazyLock<String> = LazyLock::new(|| {
    summary::upsert(
        "tim_session_summaries",
        "v.tenant = ?1 AND v.session_id = ?2",
        "?3",
    )
});

/// The writer's connection; `None` once closed.
pub(super) struct Writer {
    conn: Mutex<Option<Connection>>,
}

impl Writer {
    /// Opens the database file at `path` (created and migrated by the pool already), at most
    /// `max_page_count` pages big when given.
    pub(super) fn open(path: &Path, max_page_count: Option<u32>) -> Result<Self> {
        let conn = Connection::open(path).map_err(sqlite_error)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite_error)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(sqlite_error)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(invalid(format!(
                "the SQLite writer's journal mode is {mode:?}, not WAL"
            )));
        }
        for (pragma, value) in [
            ("synchronous", "FULL".to_owned()),
            ("foreign_keys", "ON".to_owned()),
            ("temp_store", "MEMORY".to_owned()),
            ("wal_autocheckpoint", WAL_CHECKPOINT_PAGES.to_string()),
            // Deleted content is overwritten with zeros, pages freed included: the text of a
            // published outbox row, of a row rewritten by an update, of cells a b-tree moved, is
            // not left in free space, where an erasure could not reach it (docs/PRIVACY.md).
            ("secure_delete", "ON".to_owned()),
        ] {
            conn.pragma_update(None, pragma, value)
                .map_err(sqlite_error)?;
        }
        if let Some(n) = max_page_count {
            conn.pragma_update(None, "max_page_count", n)
                .map_err(sqlite_error)?;
        }
        Ok(Writer {
            conn: Mutex::new(Some(conn)),
        })
    }

    /// Applies `writes` in one `BEGIN IMMEDIATE` transaction, in order; see
    /// [`crate::Backend::write_batch`]. Blocks the calling thread until committed.
    pub(super) fn write_batch(&self, writes: &[Write]) -> Result<Vec<Written>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let Some(conn) = guard.as_mut() else {
            return Err(StoreError::Unavailable(sqlx::Error::PoolClosed));
        };
        // On error `tx` is dropped, which rolls everything back.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite_error)?;
        // Every statement of `Rows` runs when its future is first polled.
        let written = futures::executor::block_on(apply::write_batch(&mut Rows(&tx), writes))?;
        tx.commit().map_err(sqlite_error)?;
        Ok(written)
    }

    /// Runs `f` on the writer's connection, between two batches ([`super::privacy`]'s steps).
    pub(super) fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let conn = guard
            .as_mut()
            .ok_or(StoreError::Unavailable(sqlx::Error::PoolClosed))?;
        f(conn)
    }

    /// Closes the connection; later writes fail as unavailable.
    pub(super) fn close(&self) {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(conn);
    }

    /// `PRAGMA name` on the writer's connection (tests check its settings).
    #[cfg(test)]
    pub(super) fn pragma(&self, name: &str) -> Result<i64> {
        let guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let conn = guard
            .as_ref()
            .ok_or(StoreError::Unavailable(sqlx::Error::PoolClosed))?;
        conn.pragma_query_value(None, name, |r| r.get(0))
            .map_err(sqlite_error)
    }
}

/// A rusqlite error as the store reports it, retryable as sqlx's are: busy, locked, and a
/// database that takes no writes for now (full, read-only, failing I/O; see
/// [`crate::sqlite_transient`]).
pub(super) fn sqlite_error(e: rusqlite::Error) -> StoreError {
    let retryable = e
        .sqlite_error()
        .is_some_and(|f| sqlite_transient(f.extended_code));
    StoreError::Sqlite {
        error: e,
        retryable,
    }
}

/// Runs `sql` (cached) with `params`; the number of rows changed.
fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<usize> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute(params))
        .map_err(sqlite_error)
}

/// Inserts `row` (its 18 columns, with `status`) by `sql`, one of the `MESSAGE_*` below.
fn insert_message(
    conn: &Connection,
    sql: &str,
    row: &MessageRow,
    status: MessageStatus,
) -> Result<usize> {
    exec(
        conn,
        sql,
        params![
            row.relay_id,
            row.kind,
            row.tenant,
            row.user_id,
            row.session_id,
            row.direction.as_str(),
            row.message_id,
            row.message_code,
            row.source_type,
            row.control_type,
            row.media_type,
            row.content,
            row.body,
            status.as_str(),
            row.result_code,
            row.result_desc,
            row.stream_seq,
            unix_micros(row.created_at),
        ],
    )
}

static MESSAGE_UPSERT_UP: LazyLock<String> =
    LazyLock::new(|| format!("{MESSAGE_INSERT} {UPSERT_UP}"));
static MESSAGE_BEGIN_UP: LazyLock<String> =
    LazyLock::new(|| format!("{MESSAGE_INSERT} {BEGIN_UP}"));
static MESSAGE_INSERT_DOWN: LazyLock<String> =
    LazyLock::new(|| format!("{MESSAGE_INSERT} {INSERT_DOWN}"));

/// The writer's statements inside the transaction its connection is in.
struct Rows<'c>(&'c Connection);

impl Rows<'_> {
    /// Runs `sql` (cached) with `params`; whether it changed a row.
    fn changed(&self, sql: &str, params: impl rusqlite::Params) -> Result<bool> {
        Ok(exec(self.0, sql, params)? > 0)
    }

    /// Runs `sql` (cached) with `params`, returning at most one value.
    fn optional<T: rusqlite::types::FromSql>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Option<T>> {
        self.0
            .prepare_cached(sql)
            .and_then(|mut st| st.query_row(params, |r| r.get(0)).optional())
            .map_err(sqlite_error)
    }

    /// Runs `sql`, one of the `SUMMARIZE_*` statements, with `params`: the summary it stored.
    fn summary(&self, sql: &str, params: impl rusqlite::Params) -> Result<Option<SessionSummary>> {
        self.0
            .prepare_cached(sql)
            .and_then(|mut st| {
                st.query_row(params, |r| Ok(summary::from_row(&SummaryColumns(r))))
                    .optional()
            })
            .map_err(sqlite_error)?
            .transpose()
    }

    fn outbox(
        &self,
        msg_id: &str,
        subject: &str,
        payload: &[u8],
        now: i64,
        held: bool,
    ) -> Result<()> {
        exec(
            self.0,
            INSERT_OUTBOX,
            params![msg_id, subject, payload, now, held],
        )?;
        Ok(())
    }
}

impl RowOps for Rows<'_> {
    async fn insert_session(&mut self, s: &Session) -> Result<()> {
        exec(
            self.0,
            INSERT_SESSION,
            params![
                s.id,
                s.kind,
                s.tenant,
                s.user_id,
                s.channel_config_id,
                s.state.as_str(),
                s.token,
                unix_micros(s.opened_at),
                s.closed_at.map(unix_micros),
                s.close_reason,
                unix_micros(s.last_activity_at),
            ],
        )?;
        Ok(())
    }

    async fn set_session_state(&mut self, id: &str, state: SessionState) -> Result<bool> {
        self.changed(SET_SESSION_STATE, params![id, state.as_str()])
    }

    async fn close_session(&mut self, id: &str, reason: &str, at: OffsetDateTime) -> Result<bool> {
        self.changed(CLOSE_SESSION, params![id, unix_micros(at), reason])
    }

    async fn session_exists(&mut self, id: &str) -> Result<bool> {
        Ok(self.optional::<i64>(SESSION_EXISTS, [id])?.is_some())
    }

    async fn set_session_token(&mut self, id: &str, token: Option<&str>) -> Result<bool> {
        self.changed(SET_TOKEN, params![id, token])
    }

    async fn touch_sessions(&mut self, touches: &[(&str, OffsetDateTime)]) -> Result<u64> {
        let mut found = 0;
        for (id, at) in touches {
            found += exec(self.0, TOUCH_SESSION, params![id, unix_micros(*at)])? as u64;
        }
        Ok(found)
    }

    async fn insert_pending_up(&mut self, row: &MessageRow) -> Result<bool> {
        Ok(insert_message(self.0, &MESSAGE_BEGIN_UP, row, MessageStatus::Pending)? == 1)
    }

    async fn up_status(
        &mut self,
        kind: &str,
        tenant: &str,
        user_id: &str,
        message_id: &str,
    ) -> Result<String> {
        self.0
            .prepare_cached(UP_STATUS)
            .and_then(|mut s| s.query_row(params![kind, tenant, user_id, message_id], |r| r.get(0)))
            .map_err(sqlite_error)
    }

    async fn update_up(&mut self, up: &UpOutcome) -> Result<bool> {
        self.changed(
            UPDATE_UP,
            params![
                up.kind,
                up.tenant,
                up.user_id,
                up.message_id,
                up.status.as_str(),
                up.result_code,
                up.result_desc,
                up.session_id,
            ],
        )
    }

    async fn upsert_up_rows(&mut self, rows: &[&MessageRow]) -> Result<()> {
        for row in rows {
            insert_message(self.0, &MESSAGE_UPSERT_UP, row, row.status)?;
        }
        Ok(())
    }

    async fn insert_downs(
        &mut self,
        downs: &[DownInsert<'_>],
        now: OffsetDateTime,
    ) -> Result<HashSet<String>> {
        let now = unix_micros(now);
        let mut inserted = HashSet::new();
        for d in downs {
            let row = &d.down.row;
            if insert_message(self.0, &MESSAGE_INSERT_DOWN, row, row.status)? == 1 {
                inserted.insert(row.relay_id.clone());
                if d.publish {
                    let p = &d.down.publish;
                    self.outbox(&p.msg_id, &p.subject, &p.payload, now, d.held)?;
                }
            }
        }
        Ok(inserted)
    }

    async fn set_message_body(&mut self, relay_id: &str, body: &str) -> Result<()> {
        exec(self.0, SET_MESSAGE_BODY, params![relay_id, body])?;
        Ok(())
    }

    async fn up_pending_again(
        &mut self,
        kind: &str,
        tenant: &str,
        user_id: &str,
        message_id: &str,
    ) -> Result<()> {
        exec(
            self.0,
            UP_PENDING_AGAIN,
            params![kind, tenant, user_id, message_id],
        )?;
        Ok(())
    }

    async fn insert_events(
        &mut self,
        events: &[EventInsert<'_>],
        now: OffsetDateTime,
    ) -> Result<()> {
        let now = unix_micros(now);
        for EventInsert {
            event: e,
            body,
            publish,
        } in events
        {
            exec(
                self.0,
                INSERT_EVENT,
                params![
                    e.relay_id,
                    e.kind,
                    e.tenant,
                    e.user_id,
                    e.session_id,
                    e.event_type,
                    e.ok,
                    body,
                    e.subject,
                    unix_micros(e.created_at),
                ],
            )?;
            if *publish {
                self.outbox(&e.relay_id, &e.subject, body.as_bytes(), now, false)?;
            }
        }
        Ok(())
    }

    async fn insert_satisfactions(&mut self, rows: &[&SatisfactionRow]) -> Result<()> {
        for r in rows {
            exec(
                self.0,
                INSERT_SATISFACTION,
                params![
                    r.relay_id,
                    r.kind,
                    r.tenant,
                    r.user_id,
                    r.session_id,
                    r.source.as_str(),
                    r.score,
                    r.comment,
                    r.inter_idx,
                    r.result_code,
                    r.result_desc,
                    unix_micros(r.created_at),
                ],
            )?;
        }
        Ok(())
    }

    async fn insert_offline(&mut self, rows: &[&OfflineRow]) -> Result<()> {
        for r in rows {
            exec(
                self.0,
                INSERT_OFFLINE,
                params![
                    r.relay_id,
                    r.kind,
                    r.tenant,
                    r.user_id,
                    r.session_id,
                    r.source.as_str(),
                    r.message_id,
                    r.caller,
                    r.content,
                    r.tip_text,
                    r.result_code,
                    r.result_desc,
                    unix_micros(r.created_at),
                ],
            )?;
        }
        Ok(())
    }

    async fn insert_files(&mut self, rows: &[&FileRow]) -> Result<()> {
        for f in rows {
            exec(
                self.0,
                INSERT_FILE,
                params![
                    f.relay_id,
                    f.kind,
                    f.tenant,
                    f.user_id,
                    f.session_id,
                    f.media_type,
                    f.file_id,
                    f.file_type,
                    f.status.as_str(),
                    f.size,
                    f.sha256,
                    f.bucket,
                    f.object,
                    f.attempts,
                    f.error_code,
                    f.error_message,
                    unix_micros(f.created_at),
                    unix_micros(f.updated_at),
                ],
            )?;
        }
        Ok(())
    }

    async fn file_attempt_failed(
        &mut self,
        relay_id: &str,
        attempts: i64,
        error_code: &str,
        error_message: &str,
        at: OffsetDateTime,
    ) -> Result<()> {
        exec(
            self.0,
            FILE_ATTEMPT_FAILED,
            params![
                relay_id,
                attempts,
                error_code,
                error_message,
                unix_micros(at)
            ],
        )?;
        Ok(())
    }

    async fn finish_file(&mut self, done: &FileDone) -> Result<bool> {
        self.changed(
            FINISH_FILE,
            params![
                done.relay_id,
                done.status.as_str(),
                done.size,
                done.sha256,
                done.bucket,
                done.object,
                done.attempts,
                done.error_code,
                done.error_message,
                unix_micros(done.at),
            ],
        )
    }

    async fn upsert_tim_stream(&mut self, row: &TimStreamRow) -> Result<()> {
        exec(
            self.0,
            TIM_STREAM_UPSERT,
            params![
                row.app,
                row.user_id,
                row.stream_id,
                row.from_account,
                row.msg_key,
                row.text,
                row.chunks,
                row.calls,
                row.last_seq,
                row.finished,
                row.status.as_str(),
                row.error_code,
                row.error_info,
                unix_micros(row.created_at),
                unix_micros(row.updated_at),
            ],
        )?;
        Ok(())
    }

    async fn insert_tim_callback(&mut self, row: &TimCallbackRow) -> Result<()> {
        exec(
            self.0,
            TIM_CALLBACK_INSERT,
            params![
                row.relay_id,
                row.app,
                row.user_id,
                row.command,
                row.body,
                row.published,
                unix_micros(row.created_at),
            ],
        )?;
        Ok(())
    }

    async fn summarize_session(
        &mut self,
        session_id: &str,
        at: OffsetDateTime,
    ) -> Result<Option<SessionSummary>> {
        self.summary(&SUMMARIZE_SESSION, params![session_id, unix_micros(at)])
    }

    async fn summarize_desk(
        &mut self,
        app: &str,
        session_id: &str,
        at: OffsetDateTime,
    ) -> Result<Option<SessionSummary>> {
        self.summary(&SUMMARIZE_DESK, params![app, session_id, unix_micros(at)])
    }

    async fn insert_outbox(
        &mut self,
        msg_id: &str,
        subject: &str,
        payload: &[u8],
        now: OffsetDateTime,
    ) -> Result<()> {
        self.outbox(msg_id, subject, payload, unix_micros(now), false)
    }

    async fn delete_outbox(&mut self, seqs: &[i64]) -> Result<()> {
        for seq in seqs {
            exec(self.0, DELETE_OUTBOX, [seq])?;
        }
        Ok(())
    }

    async fn outbox_failed(
        &mut self,
        seq: i64,
        attempts: i64,
        next_attempt_at: OffsetDateTime,
        error: &str,
    ) -> Result<()> {
        let at = unix_micros(next_attempt_at);
        exec(self.0, OUTBOX_FAILED, params![seq, attempts, at, error])?;
        Ok(())
    }

    async fn outbox_to_dead_letter(
        &mut self,
        seq: i64,
        reason: &str,
        error: &str,
        at: OffsetDateTime,
    ) -> Result<Option<i64>> {
        self.optional(
            OUTBOX_TO_DEAD_LETTER,
            params![seq, reason, error, unix_micros(at)],
        )
    }

    async fn release_outbox(&mut self, msg_id: &str, payload: &str) -> Result<()> {
        exec(self.0, RELEASE_OUTBOX, params![msg_id, payload.as_bytes()])?;
        Ok(())
    }

    async fn insert_dead_letters(&mut self, rows: &[&DeadLetter]) -> Result<Vec<(String, i64)>> {
        let mut stored = Vec::new();
        for d in rows {
            let id = self.optional(
                INSERT_DEAD_LETTER,
                params![
                    d.source,
                    d.msg_id,
                    d.subject,
                    d.payload,
                    d.kind,
                    d.tenant,
                    d.user_id,
                    d.message_id,
                    d.reason,
                    d.error,
                    d.attempts,
                    unix_micros(d.created_at),
                    unix_micros(d.dead_at),
                ],
            )?;
            if let Some(id) = id {
                stored.push((d.msg_id.clone(), id));
            }
        }
        Ok(stored)
    }

    async fn take_dead_letter(&mut self, id: i64) -> Result<Option<DeadLetter>> {
        let found = self
            .0
            .prepare_cached(&DEAD_LETTER_BY_ID)
            .and_then(|mut st| st.query_row([id], dead_letter_of).optional())
            .map_err(sqlite_error)?;
        let Some(d) = found else {
            return Ok(None);
        };
        let d = d?;
        exec(self.0, DELETE_DEAD_LETTER, [id])?;
        Ok(Some(d))
    }

    async fn delete_dead_letter(&mut self, id: i64) -> Result<bool> {
        self.changed(DELETE_DEAD_LETTER, [id])
    }
}

/// A row of `session_summaries` as the writer reads it (RETURNING): INTEGER microsecond
/// timestamps, 0/1 flags.
struct SummaryColumns<'r, 's>(&'r rusqlite::Row<'s>);

impl summary::Columns for SummaryColumns<'_, '_> {
    fn text(&self, column: &str) -> Result<Option<String>> {
        self.0.get(column).map_err(sqlite_error)
    }
    fn int(&self, column: &str) -> Result<Option<i64>> {
        self.0.get(column).map_err(sqlite_error)
    }
    fn flag(&self, column: &str) -> Result<Option<bool>> {
        Ok(self.int(column)?.map(|v| v != 0))
    }
    fn time(&self, column: &str) -> Result<Option<OffsetDateTime>> {
        self.int(column)?.map(from_unix_micros).transpose()
    }
}

/// A dead letter read by the writer (its columns in the order of `DEAD_LETTER_COLUMNS`); the
/// timestamps are checked after the row is read.
fn dead_letter_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<DeadLetter>> {
    let (created_at, dead_at): (i64, i64) = (r.get(12)?, r.get(13)?);
    let mut d = DeadLetter {
        id: r.get(0)?,
        source: r.get(1)?,
        msg_id: r.get(2)?,
        subject: r.get(3)?,
        payload: r.get(4)?,
        kind: r.get(5)?,
        tenant: r.get(6)?,
        user_id: r.get(7)?,
        message_id: r.get(8)?,
        reason: r.get(9)?,
        error: r.get(10)?,
        attempts: r.get(11)?,
        created_at: OffsetDateTime::UNIX_EPOCH,
        dead_at: OffsetDateTime::UNIX_EPOCH,
    };
    Ok(from_unix_micros(created_at).and_then(|c| {
        d.created_at = c;
        d.dead_at = from_unix_micros(dead_at)?;
        Ok(d)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(code: std::ffi::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn busy_and_locked_are_retryable_and_constraints_are_not() {
        assert!(sqlite_error(failure(rusqlite::ffi::SQLITE_BUSY)).is_retryable());
        assert!(sqlite_error(failure(rusqlite::ffi::SQLITE_LOCKED)).is_retryable());
        assert!(!sqlite_error(failure(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)).is_retryable());
        assert!(!sqlite_error(rusqlite::Error::QueryReturnedNoRows).is_retryable());
    }

    #[test]
    fn a_full_read_only_or_failing_database_is_away_not_final() {
        for code in [
            rusqlite::ffi::SQLITE_FULL,
            rusqlite::ffi::SQLITE_IOERR,
            rusqlite::ffi::SQLITE_IOERR_WRITE,
            rusqlite::ffi::SQLITE_IOERR_FSYNC,
            rusqlite::ffi::SQLITE_READONLY,
            rusqlite::ffi::SQLITE_READONLY_DBMOVED,
        ] {
            let e = sqlite_error(failure(code));
            assert!(e.is_retryable(), "{code}: {e}");
            assert!(e.refuses_writes(), "{code}: {e}");
        }
        let busy = sqlite_error(failure(rusqlite::ffi::SQLITE_BUSY));
        assert!(!busy.refuses_writes(), "a ping tells when busy ends");
        let cant_open = sqlite_error(failure(rusqlite::ffi::SQLITE_CANTOPEN));
        assert!(cant_open.is_retryable() && !cant_open.refuses_writes());
    }

    #[test]
    fn a_closed_writer_refuses_writes_as_unavailable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let writer = Writer::open(&dir.path().join("w.db"), None).expect("open");
        assert_eq!(writer.pragma("synchronous").expect("pragma"), 2, "FULL");
        writer.close();
        let err = writer
            .write_batch(&[Write::OutboxDone(vec![1])])
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(err.is_retryable());
    }
}
