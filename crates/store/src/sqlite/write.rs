//! The SQLite writer: every write of the store — group commit's batches ([`crate::group`]) —
//! applied by calling SQLite directly (rusqlite) on the thread that runs the batch, one
//! connection, one transaction per batch.
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
//! statement journals in memory and a checkpoint every [`super::WAL_CHECKPOINT_PAGES`] pages.
//! [`Writer::write_batch`] blocks its thread for the batch: it is for the writer's own thread.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{LazyLock, Mutex};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;

use super::{BUSY_TIMEOUT, WAL_CHECKPOINT_PAGES};
use crate::{
    Applied, Commit, Committed, DeadLetter, Direction, EventRecord, FileDone, FileStatus,
    MessageRow, MessageStatus, Result, SessionChange, SessionState, StoreError, TimCallbackRow,
    TimStreamRow, UpBegin, UpOutcome, Write, Written, check_commits, committed_each, dead_source,
    from_unix_micros, invalid, sqlite_transient, unix_micros, with_dead_letter,
};

/// Prepared statements the writer keeps: one per statement below, with room.
const STATEMENT_CACHE: usize = 32;

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
        let mut done = Vec::with_capacity(writes.len());
        let mut commits = Vec::new();
        for w in writes {
            let applied = apply_write(&tx, w)?;
            done.push(applied.keep_commit(&mut commits));
        }
        let committed = apply(&tx, &commits)?;
        tx.commit().map_err(sqlite_error)?;
        Applied::results(done, committed)
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

/// After an UPDATE of a session matched nothing: fine if the session exists (closed, so the
/// change is moot), a caller's bug if it does not.
fn require_session(conn: &Connection, id: &str) -> Result<()> {
    let found = conn
        .prepare_cached(SESSION_EXISTS)
        .and_then(|mut s| s.query_row([id], |_| Ok(())).optional())
        .map_err(sqlite_error)?;
    match found {
        Some(()) => Ok(()),
        None => Err(StoreError::Corrupt(format!(
            "session {id:?} does not exist"
        ))),
    }
}

/// A session change inside the transaction `conn` is in.
fn apply_session_change(conn: &Connection, change: &SessionChange) -> Result<()> {
    match change {
        SessionChange::Open(s) => {
            exec(
                conn,
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
        }
        SessionChange::SetState { id, state } => {
            if *state == SessionState::Closed {
                return Err(invalid(
                    "SessionChange::SetState cannot close a session: use Close",
                ));
            }
            if exec(conn, SET_SESSION_STATE, params![id, state.as_str()])? == 0 {
                require_session(conn, id)?;
            }
        }
        SessionChange::Close { id, reason, at } => {
            if exec(conn, CLOSE_SESSION, params![id, unix_micros(*at), reason])? == 0 {
                require_session(conn, id)?;
            }
        }
    }
    Ok(())
}

/// The outcome of an up row begun earlier, inside the transaction `conn` is in.
fn apply_up_outcome(conn: &Connection, up: &UpOutcome) -> Result<()> {
    let changed = exec(
        conn,
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
    )?;
    if changed == 0 {
        return Err(StoreError::Corrupt(format!(
            "up outcome for a message never begun: {}/{}/{} message_id {:?}",
            up.kind, up.tenant, up.user_id, up.message_id
        )));
    }
    Ok(())
}

/// Everything of `commits` — the commits of one batch of writes — inside the transaction `conn`
/// is in, and what each did.
///
/// The commits are concurrent writes (each caller waits for its own), so applying their parts
/// table by table is applying them in some order; within each commit its parts keep their
/// documented order, and its outbox rows (its downs inserted, then its events) follow those of
/// the commits before it.
fn apply(conn: &Connection, commits: &[&Commit]) -> Result<Vec<Committed>> {
    check_commits(commits)?;
    let now = unix_micros(OffsetDateTime::now_utc());

    for c in commits {
        for change in &c.sessions {
            apply_session_change(conn, change)?;
        }
        if let Some(up) = &c.up {
            apply_up_outcome(conn, up)?;
        }
    }
    for row in commits.iter().filter_map(|c| c.up_row.as_ref()) {
        insert_message(conn, &MESSAGE_UPSERT_UP, row, row.status)?;
    }

    let mut inserted = HashSet::new();
    for down in commits.iter().flat_map(|c| &c.down) {
        if insert_message(conn, &MESSAGE_INSERT_DOWN, &down.row, down.row.status)? == 1 {
            inserted.insert(down.row.relay_id.clone());
        }
    }

    // The dead letters of the messages set aside, then the events announcing them (with the
    // dead letters' ids) beside the commits' own events.
    let mut dead_ids = HashMap::new();
    for s in commits.iter().flat_map(|c| c.set_aside_stored(&inserted)) {
        let d = &s.dead;
        let id = dead_letter_add_on(conn, d)?;
        if let Some(id) = id {
            dead_ids.insert(d.msg_id.clone(), id);
        }
    }
    let announced: Vec<Vec<EventRecord>> = commits
        .iter()
        .map(|c| {
            c.set_aside_stored(&inserted)
                .filter_map(|s| {
                    let mut e = s.event.clone()?;
                    e.body = with_dead_letter(&e.body, dead_ids.get(&s.dead.msg_id).copied());
                    Some(e)
                })
                .collect()
        })
        .collect();

    for e in commits
        .iter()
        .flat_map(|c| &c.events)
        .chain(announced.iter().flatten())
    {
        insert_event(conn, e, &e.body)?;
    }

    for r in commits.iter().flat_map(|c| &c.satisfactions) {
        exec(
            conn,
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

    for r in commits.iter().flat_map(|c| &c.offline) {
        exec(
            conn,
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

    // What to publish, commit by commit: its downs inserted, then its events. Each row's seq
    // follows the one before it.
    for (c, announced) in commits.iter().zip(&announced) {
        for down in c
            .down
            .iter()
            .filter(|d| inserted.contains(&d.row.relay_id) && !c.is_set_aside(&d.publish.msg_id))
        {
            let held = c.files.iter().any(|f| f.relay_id == down.row.relay_id);
            let p = &down.publish;
            exec(
                conn,
                INSERT_OUTBOX,
                params![p.msg_id, p.subject, p.payload, now, held],
            )?;
        }
        for e in c
            .events
            .iter()
            .filter(|e| !c.is_set_aside(&e.relay_id))
            .chain(announced)
        {
            exec(
                conn,
                INSERT_OUTBOX,
                params![e.relay_id, e.subject, e.body.as_bytes(), now, false],
            )?;
        }
    }

    for f in commits
        .iter()
        .flat_map(|c| &c.files)
        .filter(|f| inserted.contains(&f.relay_id))
    {
        exec(
            conn,
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

    touch_sessions(conn, commits.iter().flat_map(|c| &c.touch))?;
    Ok(committed_each(commits, &inserted, &dead_ids))
}

/// Moves each session's `last_activity_at` forward to the latest time it is given; a session
/// that does not exist is an error.
fn touch_sessions<'a>(
    conn: &Connection,
    touches: impl Iterator<Item = &'a (String, OffsetDateTime)>,
) -> Result<()> {
    let mut latest: HashMap<&str, i64> = HashMap::new();
    for (id, at) in touches {
        let at = unix_micros(*at);
        latest
            .entry(id.as_str())
            .and_modify(|t| *t = (*t).max(at))
            .or_insert(at);
    }
    for (id, at) in latest {
        if exec(conn, TOUCH_SESSION, params![id, at])? == 0 {
            return Err(StoreError::Corrupt(format!(
                "touch of session {id:?}, which does not exist"
            )));
        }
    }
    Ok(())
}

/// One [`Write`] inside the transaction `conn` is in, but for its commit, if it has one.
fn apply_write<'w>(conn: &Connection, w: &'w Write) -> Result<Applied<'w>> {
    Ok(match w {
        Write::Commit(c) => Applied::Commit(c),
        Write::BeginUp(row) => Applied::Done(Written::Begun(begin_up_on(conn, row)?)),
        Write::SessionToken {
            session_id, token, ..
        } => {
            if exec(conn, SET_TOKEN, params![session_id, token])? == 0 {
                return Err(StoreError::Corrupt(format!(
                    "session {session_id:?} does not exist"
                )));
            }
            Applied::Done(Written::Done)
        }
        Write::OutboxDone(seqs) => {
            for seq in seqs {
                exec(conn, DELETE_OUTBOX, [seq])?;
            }
            Applied::Done(Written::Done)
        }
        Write::TimStream(row, c) => {
            tim_stream_on(conn, row)?;
            Applied::Commit(c)
        }
        Write::TimCallback(row, c) => {
            tim_callback_on(conn, row)?;
            Applied::Commit(c)
        }
        Write::OutboxFailed {
            seq,
            attempts,
            next_attempt_at,
            error,
        } => {
            let at = unix_micros(*next_attempt_at);
            exec(conn, OUTBOX_FAILED, params![seq, attempts, at, error])?;
            Applied::Done(Written::Done)
        }
        Write::OutboxDead {
            seq,
            reason,
            error,
            event,
        } => Applied::Done(Written::Id(outbox_dead_on(
            conn,
            *seq,
            reason,
            error,
            event.as_ref(),
        )?)),
        Write::DeadLetterAdd(d) => Applied::Done(Written::Id(dead_letter_add_on(conn, d)?)),
        Write::DeadLetterRetry { id, fresh_msg_id } => Applied::Done(Written::Retried(
            dead_letter_retry_on(conn, *id, fresh_msg_id)?.map(Box::new),
        )),
        Write::DeadLetterDrop(id) => {
            Applied::Done(Written::Changed(exec(conn, DELETE_DEAD_LETTER, [id])? > 0))
        }
        Write::FileAttemptFailed {
            relay_id,
            attempts,
            error_code,
            error_message,
        } => {
            let now = unix_micros(OffsetDateTime::now_utc());
            exec(
                conn,
                FILE_ATTEMPT_FAILED,
                params![relay_id, attempts, error_code, error_message, now],
            )?;
            Applied::Done(Written::Done)
        }
        Write::FinishFile(done) => Applied::Done(Written::Changed(finish_file_on(conn, done)?)),
    })
}

/// Stores `d` unless its (source, msg_id) is stored; its id.
fn dead_letter_add_on(conn: &Connection, d: &DeadLetter) -> Result<Option<i64>> {
    conn.prepare_cached(INSERT_DEAD_LETTER)
        .and_then(|mut st| {
            st.query_row(
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
                |r| r.get(0),
            )
            .optional()
        })
        .map_err(sqlite_error)
}

/// Outbox row `seq` moved to `dead_letters`, with `event` (given the dead letter's id) and its
/// outbox row; the dead letter's id, `None` if the row is gone.
fn outbox_dead_on(
    conn: &Connection,
    seq: i64,
    reason: &str,
    error: &str,
    event: Option<&EventRecord>,
) -> Result<Option<i64>> {
    let now = unix_micros(OffsetDateTime::now_utc());
    let id: Option<i64> = conn
        .prepare_cached(OUTBOX_TO_DEAD_LETTER)
        .and_then(|mut st| {
            st.query_row(params![seq, reason, error, now], |r| r.get(0))
                .optional()
        })
        .map_err(sqlite_error)?;
    if let (Some(id), Some(e)) = (id, event) {
        let body = with_dead_letter(&e.body, Some(id));
        insert_event(conn, e, &body)?;
        exec(
            conn,
            INSERT_OUTBOX,
            params![e.relay_id, e.subject, body.as_bytes(), now, false],
        )?;
    }
    exec(conn, DELETE_OUTBOX, [seq])?;
    Ok(id)
}

/// Dead letter `id` published again (see [`crate::Store::dead_letter_retry`]); `None` if there
/// is none.
fn dead_letter_retry_on(
    conn: &Connection,
    id: i64,
    fresh_msg_id: &str,
) -> Result<Option<DeadLetter>> {
    let found = conn
        .prepare_cached(&DEAD_LETTER_BY_ID)
        .and_then(|mut st| st.query_row([id], dead_letter_of).optional())
        .map_err(sqlite_error)?;
    let Some(d) = found else {
        return Ok(None);
    };
    let d = d?;
    let msg_id = if d.source == dead_source::OUTBOX {
        d.msg_id.as_str()
    } else {
        fresh_msg_id
    };
    let now = unix_micros(OffsetDateTime::now_utc());
    exec(
        conn,
        INSERT_OUTBOX,
        params![msg_id, d.subject, d.payload, now, false],
    )?;
    if let (Some(k), Some(t), Some(u), Some(m)) = (&d.kind, &d.tenant, &d.user_id, &d.message_id) {
        exec(conn, UP_PENDING_AGAIN, params![k, t, u, m])?;
    }
    exec(conn, DELETE_DEAD_LETTER, [id])?;
    Ok(Some(d))
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

/// The end of a file's download (see [`crate::Store::finish_file`]); false if it is not pending.
fn finish_file_on(conn: &Connection, done: &FileDone) -> Result<bool> {
    if done.status == FileStatus::Pending {
        return Err(invalid("finish_file needs status stored or failed"));
    }
    let changed = exec(
        conn,
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
    )?;
    if changed == 0 {
        return Ok(false);
    }
    exec(conn, SET_MESSAGE_BODY, params![done.relay_id, done.payload])?;
    exec(
        conn,
        RELEASE_OUTBOX,
        params![done.relay_id, done.payload.as_bytes()],
    )?;
    Ok(true)
}

/// Inserts event `e` with `body`.
fn insert_event(conn: &Connection, e: &EventRecord, body: &str) -> Result<()> {
    exec(
        conn,
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
    Ok(())
}

fn begin_up_on(conn: &Connection, row: &MessageRow) -> Result<UpBegin> {
    if row.direction != Direction::Up {
        return Err(invalid("begin_up takes an up row"));
    }
    let Some(message_id) = &row.message_id else {
        return Err(invalid("begin_up needs the up row's message_id"));
    };
    if insert_message(conn, &MESSAGE_BEGIN_UP, row, MessageStatus::Pending)? == 1 {
        return Ok(UpBegin::New);
    }
    let status: String = conn
        .prepare_cached(UP_STATUS)
        .and_then(|mut s| {
            s.query_row(
                params![row.kind, row.tenant, row.user_id, message_id],
                |r| r.get(0),
            )
        })
        .map_err(sqlite_error)?;
    Ok(match MessageStatus::parse(&status)? {
        MessageStatus::Pending => UpBegin::Pending,
        done => UpBegin::Done(done),
    })
}

fn tim_stream_on(conn: &Connection, row: &TimStreamRow) -> Result<()> {
    exec(
        conn,
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

fn tim_callback_on(conn: &Connection, row: &TimCallbackRow) -> Result<()> {
    exec(
        conn,
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
