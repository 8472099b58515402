//! SQLite implementation of [`super::Store`], the embedded default.
//!
//! The database runs in WAL mode with `synchronous = FULL`: a transaction that `commit()` returned
//! for survives a process crash and a power loss, which is what lets the relay ack NATS after it.
//! SQLite has one writer at a time, so every write transaction starts with `BEGIN IMMEDIATE`: it
//! takes the write lock up front (waiting up to `busy_timeout`) instead of failing with
//! `SQLITE_BUSY` when a read transaction tries to become a write one. Timestamps are INTEGER
//! microseconds since the Unix epoch (see `migrations/sqlite`).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool};
use time::OffsetDateTime;

use super::{
    Applied, Commit, Committed, Direction, DownRecord, EventRecord, FileDone, FileRow, FileStatus,
    MessagePage, MessageRow, MessageStatus, OfflineRow, OfflineSource, OutboxRow, OutboxStats,
    PendingFile, Result, SatisfactionRow, SatisfactionSource, Session, SessionChange, SessionState,
    Store, StoreError, TimCallbackRow, TimStreamRow, UpBegin, UpLookup, UpOutcome, Write, Written,
    check_commits, classify, committed_each, from_unix_micros, invalid, unix_micros,
};

mod lookup;

/// How long a writer waits for the write lock before giving up with `SQLITE_BUSY` (retryable).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Read connections of a file database (WAL lets readers run beside the writer, which has a
/// connection of its own).
const MAX_CONNECTIONS: u32 = 4;
/// Most rows per multi-row INSERT (a power of two). Each statement is a round trip to the
/// connection's worker thread, which costs more than SQLite's work for a row; each size used is
/// a plan of its own in the cache, so only powers of two up to this are used (see [`chunks`]).
const CHUNK: usize = 32;
/// WAL pages after which a commit copies the WAL back into the database (SQLite's default is
/// 1,000, 4 MiB): the pages a busy relay rewrites in every commit (the ends of the indexes) are
/// copied once per checkpoint, so fewer checkpoints copy fewer pages.
const WAL_CHECKPOINT_PAGES: u32 = 8_000;
/// Prepared statements kept per connection: six multi-row INSERTs in six sizes each, and the
/// rest. (With every size from 1 to 32 cached, S1's RSS per session grew by a quarter.)
const STATEMENT_CACHE: usize = 6 * 6 + 64;

/// SQLite-backed store.
pub struct SqliteStore {
    /// A pool of connections to one database file, for reads; a single connection for
    /// `sqlite::memory:`, whose database lives exactly as long as its connection.
    pool: SqlitePool,
    /// The connection writes go through: one, since SQLite has one writer at a time, and of its
    /// own, so a write never waits for a connection behind reads. The same pool as `pool` in
    /// memory.
    writer: SqlitePool,
    /// Up lookups, batched ([`lookup`]), through `pool`.
    lookups: lookup::Lookups,
}

impl SqliteStore {
    /// Opens (creating if missing) the database named by `url`: `sqlite://path/to.db`,
    /// `sqlite:path/to.db`, or `sqlite::memory:` for a private in-memory database (tests).
    ///
    /// # Errors
    /// [`StoreError::Query`] for a malformed URL, [`StoreError::Unavailable`] or `Query` when
    /// the file cannot be opened.
    pub async fn connect(url: &str) -> Result<Self> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let mut options = SqliteConnectOptions::from_str(url)
            .map_err(StoreError::Query)?
            .create_if_missing(true)
            .foreign_keys(true)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .statement_cache_capacity(STATEMENT_CACHE)
            // Profiled in the S3 benchmark (docs/BENCHMARKS.md): with SQLite's defaults 6 % of
            // the relay's time went to statement journals in temporary files (gone in memory)
            // and 9 % to checkpoints (4 % every 8,000 pages). Page lookups stayed at 8 % with a
            // 16 MiB page cache and with a memory map, so neither is kept (the cache cost RSS
            // in S1, a map turns an I/O error into SIGBUS).
            .pragma("temp_store", "memory")
            .pragma("wal_autocheckpoint", WAL_CHECKPOINT_PAGES.to_string());
        let pool_options = if in_memory {
            // One connection that never idles out or expires: closing it would drop the data.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            options = options.journal_mode(SqliteJournalMode::Wal);
            SqlitePoolOptions::new().max_connections(MAX_CONNECTIONS)
        };
        let pool = pool_options
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(classify)?;
        let writer = if in_memory {
            pool.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(BUSY_TIMEOUT)
                .connect_with(options)
                .await
                .map_err(classify)?
        };
        let lookups = lookup::Lookups::spawn(pool.clone());
        Ok(SqliteStore {
            pool,
            writer,
            lookups,
        })
    }

    /// The underlying pool, for callers that need a query the trait does not offer.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The writer's connection (tests check its settings).
    #[cfg(test)]
    pub(crate) fn writer_pool(&self) -> &SqlitePool {
        &self.writer
    }
}

const SESSION_COLUMNS: &str = "id, kind, tenant, user_id, channel_config_id, state, token, \
     opened_at, closed_at, close_reason, last_activity_at";

const MESSAGE_COLUMNS: &str = "relay_id, kind, tenant, user_id, session_id, direction, \
     message_id, message_code, source_type, control_type, media_type, content, body, status, \
     result_code, result_desc, stream_seq, created_at";

const INSERT_SESSION: &str = "INSERT INTO sessions (id, kind, tenant, user_id, \
     channel_config_id, state, token, opened_at, closed_at, close_reason, last_activity_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

const SET_SESSION_STATE: &str =
    "UPDATE sessions SET state = ?2 WHERE id = ?1 AND state <> 'closed'";

const CLOSE_SESSION: &str = "UPDATE sessions SET state = 'closed', closed_at = ?2, \
     close_reason = ?3 WHERE id = ?1 AND state <> 'closed'";

const SESSION_EXISTS: &str = "SELECT 1 FROM sessions WHERE id = ?1";

/// Moves `last_activity_at` forward for each `[id, micros]` pair of the JSON array `?1` (one
/// pair per id).
const TOUCH_SESSIONS: &str = "UPDATE sessions SET last_activity_at = max(last_activity_at, t.at) \
     FROM (SELECT value ->> 0 AS id, value ->> 1 AS at FROM json_each(?1)) AS t \
     WHERE sessions.id = t.id";

const UPDATE_UP: &str = "UPDATE messages SET status = ?5, result_code = ?6, result_desc = ?7, \
     session_id = coalesce(?8, session_id) \
     WHERE kind = ?1 AND tenant = ?2 AND user_id = ?3 AND message_id = ?4 AND direction = 'up'";

const INSERT_UP: &str = "INSERT INTO messages (relay_id, kind, tenant, user_id, session_id, \
     direction, message_id, message_code, source_type, control_type, media_type, content, body, \
     status, result_code, result_desc, stream_seq, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18) \
     ON CONFLICT (kind, tenant, user_id, message_id) WHERE direction = 'up' DO NOTHING";

/// The status of an up row (`up_status`, NULL if none) beside the user's not-closed session
/// (NULL columns if none): one row always.
const UP_STATUS: &str = "SELECT status FROM messages \
     WHERE kind = ?1 AND tenant = ?2 AND user_id = ?3 AND message_id = ?4 AND direction = 'up'";

/// `items` in slices of [`CHUNK`] rows, then of falling powers of two: a batch of any size is
/// inserted by statements of six sizes only, so few plans are cached (each takes memory, on each
/// connection).
fn chunks<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if items.is_empty() {
            return None;
        }
        let n = if items.len() >= CHUNK {
            CHUNK
        } else {
            1 << items.len().ilog2()
        };
        let (head, rest) = items.split_at(n);
        items = rest;
        Some(head)
    })
}

/// `INSERT … VALUES (…), (…), …` for 1 to [`CHUNK`] rows, built once.
struct MultiRow {
    /// `by_rows[n - 1]` inserts n rows (only powers of two are used: see [`chunks`]).
    by_rows: Vec<String>,
}

impl MultiRow {
    fn new(head: &str, columns: usize, tail: &str) -> Self {
        let row = format!("({})", vec!["?"; columns].join(", "));
        let by_rows = (1..=CHUNK)
            .map(|n| format!("{head} VALUES {} {tail}", vec![row.as_str(); n].join(", ")))
            .collect();
        MultiRow { by_rows }
    }

    fn sql(&'static self, rows: usize) -> &'static str {
        &self.by_rows[rows - 1]
    }
}

/// Down rows; those whose message_code is known (or repeated in the same statement) are
/// skipped. Returns the relay ids inserted.
static INSERT_DOWNS: LazyLock<MultiRow> = LazyLock::new(|| {
    MultiRow::new(
        "INSERT INTO messages (relay_id, kind, tenant, user_id, session_id, direction, \
         message_id, message_code, source_type, control_type, media_type, content, body, status, \
         result_code, result_desc, stream_seq, created_at)",
        18,
        "ON CONFLICT (kind, tenant, user_id, message_code) WHERE message_code IS NOT NULL \
         DO NOTHING RETURNING relay_id",
    )
});

static INSERT_EVENTS: LazyLock<MultiRow> = LazyLock::new(|| {
    MultiRow::new(
        "INSERT INTO events (relay_id, kind, tenant, user_id, session_id, event_type, ok, body, \
         subject, created_at)",
        10,
        "",
    )
});

static INSERT_SATISFACTIONS: LazyLock<MultiRow> = LazyLock::new(|| {
    MultiRow::new(
        "INSERT INTO satisfactions (relay_id, kind, tenant, user_id, session_id, source, score, \
         comment, inter_idx, result_code, result_desc, created_at)",
        12,
        "",
    )
});

/// Offline rows; those whose message_id is known (or repeated in the same statement) are
/// skipped.
static INSERT_OFFLINE: LazyLock<MultiRow> = LazyLock::new(|| {
    MultiRow::new(
        "INSERT INTO offline_messages (relay_id, kind, tenant, user_id, session_id, source, \
         message_id, caller, content, tip_text, result_code, result_desc, created_at)",
        13,
        "ON CONFLICT (kind, tenant, user_id, message_id) WHERE message_id IS NOT NULL \
         DO NOTHING",
    )
});

const FILE_COLUMNS: &str = "relay_id, kind, tenant, user_id, session_id, media_type, file_id, \
     file_type, status, size, sha256, bucket, object, attempts, error_code, error_message, \
     created_at, updated_at";

const INSERT_FILE: &str = "INSERT INTO files (relay_id, kind, tenant, user_id, session_id, \
     media_type, file_id, file_type, status, size, sha256, bucket, object, attempts, error_code, \
     error_message, created_at, updated_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)";

const FINISH_FILE: &str = "UPDATE files SET status = ?2, size = ?3, sha256 = ?4, bucket = ?5, \
     object = ?6, attempts = ?7, error_code = ?8, error_message = ?9, updated_at = ?10 \
     WHERE relay_id = ?1 AND status = 'pending'";

const EVENT_COLUMNS: &str =
    "relay_id, kind, tenant, user_id, session_id, event_type, ok, body, subject, created_at";
const SATISFACTION_COLUMNS: &str = "relay_id, kind, tenant, user_id, session_id, source, score, \
     comment, inter_idx, result_code, result_desc, created_at";

const OFFLINE_COLUMNS: &str = "relay_id, kind, tenant, user_id, session_id, source, message_id, \
     caller, content, tip_text, result_code, result_desc, created_at";

/// Up rows with their outcome; an existing row (Pending, of an earlier run) takes the outcome.
static UPSERT_UPS: LazyLock<MultiRow> = LazyLock::new(|| {
    MultiRow::new(
        "INSERT INTO messages (relay_id, kind, tenant, user_id, session_id, direction, \
         message_id, message_code, source_type, control_type, media_type, content, body, status, \
         result_code, result_desc, stream_seq, created_at)",
        18,
        "ON CONFLICT (kind, tenant, user_id, message_id) WHERE direction = 'up' DO UPDATE SET \
         status = excluded.status, result_code = excluded.result_code, \
         result_desc = excluded.result_desc, \
         session_id = coalesce(excluded.session_id, session_id)",
    )
});

/// Outbox rows; SQLite numbers the rows of one INSERT in the order of its VALUES.
static INSERT_OUTBOX: LazyLock<MultiRow> = LazyLock::new(|| {
    MultiRow::new(
        "INSERT INTO outbox (msg_id, subject, payload, created_at, held)",
        5,
        "",
    )
});

type Query<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments>;

/// Binds the 18 columns of [`MESSAGE_COLUMNS`], in order.
fn bind_message<'q>(query: Query<'q>, row: &MessageRow, status: MessageStatus) -> Query<'q> {
    query
        .bind(row.relay_id.clone())
        .bind(row.kind.clone())
        .bind(row.tenant.clone())
        .bind(row.user_id.clone())
        .bind(row.session_id.clone())
        .bind(row.direction.as_str())
        .bind(row.message_id.clone())
        .bind(row.message_code.clone())
        .bind(row.source_type.clone())
        .bind(row.control_type.clone())
        .bind(row.media_type.clone())
        .bind(row.content.clone())
        .bind(row.body.clone())
        .bind(status.as_str())
        .bind(row.result_code.clone())
        .bind(row.result_desc.clone())
        .bind(row.stream_seq)
        .bind(unix_micros(row.created_at))
}

fn ts(row: &SqliteRow, column: &str) -> Result<OffsetDateTime> {
    from_unix_micros(row.try_get(column).map_err(classify)?)
}

fn opt_ts(row: &SqliteRow, column: &str) -> Result<Option<OffsetDateTime>> {
    row.try_get::<Option<i64>, _>(column)
        .map_err(classify)?
        .map(from_unix_micros)
        .transpose()
}

fn get<'r, T>(row: &'r SqliteRow, column: &str) -> Result<T>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(column).map_err(classify)
}

fn session_from_row(row: &SqliteRow) -> Result<Session> {
    Ok(Session {
        id: get(row, "id")?,
        kind: get(row, "kind")?,
        tenant: get(row, "tenant")?,
        user_id: get(row, "user_id")?,
        channel_config_id: get(row, "channel_config_id")?,
        state: SessionState::parse(get(row, "state")?)?,
        token: get(row, "token")?,
        opened_at: ts(row, "opened_at")?,
        closed_at: opt_ts(row, "closed_at")?,
        close_reason: get(row, "close_reason")?,
        last_activity_at: ts(row, "last_activity_at")?,
    })
}

fn message_from_row(row: &SqliteRow) -> Result<MessageRow> {
    Ok(MessageRow {
        relay_id: get(row, "relay_id")?,
        kind: get(row, "kind")?,
        tenant: get(row, "tenant")?,
        user_id: get(row, "user_id")?,
        session_id: get(row, "session_id")?,
        direction: Direction::parse(get(row, "direction")?)?,
        message_id: get(row, "message_id")?,
        message_code: get(row, "message_code")?,
        source_type: get(row, "source_type")?,
        control_type: get(row, "control_type")?,
        media_type: get(row, "media_type")?,
        content: get(row, "content")?,
        body: get(row, "body")?,
        status: MessageStatus::parse(get(row, "status")?)?,
        result_code: get(row, "result_code")?,
        result_desc: get(row, "result_desc")?,
        stream_seq: get(row, "stream_seq")?,
        created_at: ts(row, "created_at")?,
    })
}

/// Binds the 18 columns of [`FILE_COLUMNS`], in order.
fn bind_file<'q>(query: Query<'q>, f: &FileRow) -> Query<'q> {
    query
        .bind(f.relay_id.clone())
        .bind(f.kind.clone())
        .bind(f.tenant.clone())
        .bind(f.user_id.clone())
        .bind(f.session_id.clone())
        .bind(f.media_type.clone())
        .bind(f.file_id.clone())
        .bind(f.file_type.clone())
        .bind(f.status.as_str())
        .bind(f.size)
        .bind(f.sha256.clone())
        .bind(f.bucket.clone())
        .bind(f.object.clone())
        .bind(f.attempts)
        .bind(f.error_code.clone())
        .bind(f.error_message.clone())
        .bind(unix_micros(f.created_at))
        .bind(unix_micros(f.updated_at))
}

fn file_from_row(row: &SqliteRow) -> Result<FileRow> {
    Ok(FileRow {
        relay_id: get(row, "relay_id")?,
        kind: get(row, "kind")?,
        tenant: get(row, "tenant")?,
        user_id: get(row, "user_id")?,
        session_id: get(row, "session_id")?,
        media_type: get(row, "media_type")?,
        file_id: get(row, "file_id")?,
        file_type: get(row, "file_type")?,
        status: FileStatus::parse(get(row, "status")?)?,
        size: get(row, "size")?,
        sha256: get(row, "sha256")?,
        bucket: get(row, "bucket")?,
        object: get(row, "object")?,
        attempts: get(row, "attempts")?,
        error_code: get(row, "error_code")?,
        error_message: get(row, "error_message")?,
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
    })
}

fn event_from_row(row: &SqliteRow) -> Result<EventRecord> {
    Ok(EventRecord {
        relay_id: get(row, "relay_id")?,
        kind: get(row, "kind")?,
        tenant: get(row, "tenant")?,
        user_id: get(row, "user_id")?,
        session_id: get(row, "session_id")?,
        event_type: get(row, "event_type")?,
        ok: get(row, "ok")?,
        body: get(row, "body")?,
        subject: get(row, "subject")?,
        created_at: ts(row, "created_at")?,
    })
}

fn satisfaction_from_row(row: &SqliteRow) -> Result<SatisfactionRow> {
    Ok(SatisfactionRow {
        relay_id: get(row, "relay_id")?,
        kind: get(row, "kind")?,
        tenant: get(row, "tenant")?,
        user_id: get(row, "user_id")?,
        session_id: get(row, "session_id")?,
        source: SatisfactionSource::parse(get(row, "source")?)?,
        score: get(row, "score")?,
        comment: get(row, "comment")?,
        inter_idx: get(row, "inter_idx")?,
        result_code: get(row, "result_code")?,
        result_desc: get(row, "result_desc")?,
        created_at: ts(row, "created_at")?,
    })
}

fn offline_from_row(row: &SqliteRow) -> Result<OfflineRow> {
    Ok(OfflineRow {
        relay_id: get(row, "relay_id")?,
        kind: get(row, "kind")?,
        tenant: get(row, "tenant")?,
        user_id: get(row, "user_id")?,
        session_id: get(row, "session_id")?,
        source: OfflineSource::parse(get(row, "source")?)?,
        message_id: get(row, "message_id")?,
        caller: get(row, "caller")?,
        content: get(row, "content")?,
        tip_text: get(row, "tip_text")?,
        result_code: get(row, "result_code")?,
        result_desc: get(row, "result_desc")?,
        created_at: ts(row, "created_at")?,
    })
}

/// After an UPDATE of a session matched nothing: fine if the session exists (closed, so the
/// change is moot), a caller's bug if it does not.
async fn require_session(conn: &mut SqliteConnection, id: &str) -> Result<()> {
    let found = sqlx::query(SESSION_EXISTS)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(classify)?;
    match found {
        Some(_) => Ok(()),
        None => Err(StoreError::Corrupt(format!(
            "session {id:?} does not exist"
        ))),
    }
}

/// A session change inside the transaction `conn` is in.
async fn apply_session_change(conn: &mut SqliteConnection, change: &SessionChange) -> Result<()> {
    match change {
        SessionChange::Open(s) => {
            sqlx::query(INSERT_SESSION)
                .bind(s.id.clone())
                .bind(s.kind.clone())
                .bind(s.tenant.clone())
                .bind(s.user_id.clone())
                .bind(s.channel_config_id.clone())
                .bind(s.state.as_str())
                .bind(s.token.clone())
                .bind(unix_micros(s.opened_at))
                .bind(s.closed_at.map(unix_micros))
                .bind(s.close_reason.clone())
                .bind(unix_micros(s.last_activity_at))
                .execute(&mut *conn)
                .await
                .map_err(classify)?;
        }
        SessionChange::SetState { id, state } => {
            if *state == SessionState::Closed {
                return Err(invalid(
                    "SessionChange::SetState cannot close a session: use Close",
                ));
            }
            let r = sqlx::query(SET_SESSION_STATE)
                .bind(id.clone())
                .bind(state.as_str())
                .execute(&mut *conn)
                .await
                .map_err(classify)?;
            if r.rows_affected() == 0 {
                require_session(conn, id).await?;
            }
        }
        SessionChange::Close { id, reason, at } => {
            let r = sqlx::query(CLOSE_SESSION)
                .bind(id.clone())
                .bind(unix_micros(*at))
                .bind(reason.clone())
                .execute(&mut *conn)
                .await
                .map_err(classify)?;
            if r.rows_affected() == 0 {
                require_session(conn, id).await?;
            }
        }
    }
    Ok(())
}

/// The outcome of an up row begun earlier, inside the transaction `conn` is in.
async fn apply_up_outcome(conn: &mut SqliteConnection, up: &UpOutcome) -> Result<()> {
    let r = sqlx::query(UPDATE_UP)
        .bind(up.kind.clone())
        .bind(up.tenant.clone())
        .bind(up.user_id.clone())
        .bind(up.message_id.clone())
        .bind(up.status.as_str())
        .bind(up.result_code.clone())
        .bind(up.result_desc.clone())
        .bind(up.session_id.clone())
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    if r.rows_affected() == 0 {
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
/// Each table's rows of all of them go in as few statements as [`CHUNK`] allows: a statement is
/// a round trip to the connection's thread, which costs more than SQLite's work for a row, so a
/// batch of 200 commits makes a few dozen statements, not a thousand. The commits are
/// concurrent writes (each caller waits for its own), so applying their parts table by table is
/// applying them in some order; within each commit its parts keep their documented order, and
/// its outbox rows (its downs inserted, then its events) follow those of the commits before it.
async fn apply(conn: &mut SqliteConnection, commits: &[&Commit]) -> Result<Vec<Committed>> {
    check_commits(commits)?;
    let now = unix_micros(OffsetDateTime::now_utc());

    for c in commits {
        for change in &c.sessions {
            apply_session_change(conn, change).await?;
        }
        if let Some(up) = &c.up {
            apply_up_outcome(conn, up).await?;
        }
    }

    let up_rows: Vec<&MessageRow> = commits.iter().filter_map(|c| c.up_row.as_ref()).collect();
    for chunk in chunks(&up_rows) {
        let mut query = sqlx::query(UPSERT_UPS.sql(chunk.len()));
        for row in chunk {
            query = bind_message(query, row, row.status);
        }
        query.execute(&mut *conn).await.map_err(classify)?;
    }

    let downs: Vec<&DownRecord> = commits.iter().flat_map(|c| &c.down).collect();
    let mut inserted = HashSet::new();
    for chunk in chunks(&downs) {
        let mut query = sqlx::query(INSERT_DOWNS.sql(chunk.len()));
        for down in chunk {
            query = bind_message(query, &down.row, down.row.status);
        }
        for row in query.fetch_all(&mut *conn).await.map_err(classify)? {
            inserted.insert(get::<String>(&row, "relay_id")?);
        }
    }

    let events: Vec<&EventRecord> = commits.iter().flat_map(|c| &c.events).collect();
    for chunk in chunks(&events) {
        let mut query = sqlx::query(INSERT_EVENTS.sql(chunk.len()));
        for event in chunk {
            query = query
                .bind(event.relay_id.clone())
                .bind(event.kind.clone())
                .bind(event.tenant.clone())
                .bind(event.user_id.clone())
                .bind(event.session_id.clone())
                .bind(event.event_type.clone())
                .bind(event.ok)
                .bind(event.body.clone())
                .bind(event.subject.clone())
                .bind(unix_micros(event.created_at));
        }
        query.execute(&mut *conn).await.map_err(classify)?;
    }

    let satisfactions: Vec<&SatisfactionRow> =
        commits.iter().flat_map(|c| &c.satisfactions).collect();
    for chunk in chunks(&satisfactions) {
        let mut query = sqlx::query(INSERT_SATISFACTIONS.sql(chunk.len()));
        for r in chunk {
            query = query
                .bind(r.relay_id.clone())
                .bind(r.kind.clone())
                .bind(r.tenant.clone())
                .bind(r.user_id.clone())
                .bind(r.session_id.clone())
                .bind(r.source.as_str())
                .bind(r.score.clone())
                .bind(r.comment.clone())
                .bind(r.inter_idx.clone())
                .bind(r.result_code.clone())
                .bind(r.result_desc.clone())
                .bind(unix_micros(r.created_at));
        }
        query.execute(&mut *conn).await.map_err(classify)?;
    }

    let offline: Vec<&OfflineRow> = commits.iter().flat_map(|c| &c.offline).collect();
    for chunk in chunks(&offline) {
        let mut query = sqlx::query(INSERT_OFFLINE.sql(chunk.len()));
        for r in chunk {
            query = query
                .bind(r.relay_id.clone())
                .bind(r.kind.clone())
                .bind(r.tenant.clone())
                .bind(r.user_id.clone())
                .bind(r.session_id.clone())
                .bind(r.source.as_str())
                .bind(r.message_id.clone())
                .bind(r.caller.clone())
                .bind(r.content.clone())
                .bind(r.tip_text.clone())
                .bind(r.result_code.clone())
                .bind(r.result_desc.clone())
                .bind(unix_micros(r.created_at));
        }
        query.execute(&mut *conn).await.map_err(classify)?;
    }

    // What to publish, commit by commit: its downs inserted, then its events.
    let mut outbox: Vec<(&str, &str, &[u8], bool)> = Vec::new();
    for c in commits {
        for down in c.down.iter().filter(|d| inserted.contains(&d.row.relay_id)) {
            let held = c.files.iter().any(|f| f.relay_id == down.row.relay_id);
            outbox.push((
                &down.publish.msg_id,
                &down.publish.subject,
                &down.publish.payload,
                held,
            ));
        }
        for event in &c.events {
            outbox.push((
                &event.relay_id,
                &event.subject,
                event.body.as_bytes(),
                false,
            ));
        }
    }
    for chunk in chunks(&outbox) {
        let mut query = sqlx::query(INSERT_OUTBOX.sql(chunk.len()));
        for (msg_id, subject, payload, held) in chunk {
            query = query
                .bind(*msg_id)
                .bind(*subject)
                .bind(*payload)
                .bind(now)
                .bind(*held);
        }
        query.execute(&mut *conn).await.map_err(classify)?;
    }

    for f in commits
        .iter()
        .flat_map(|c| &c.files)
        .filter(|f| inserted.contains(&f.relay_id))
    {
        bind_file(sqlx::query(INSERT_FILE), f)
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
    }

    touch_sessions(conn, commits.iter().flat_map(|c| &c.touch)).await?;
    Ok(committed_each(commits, &inserted))
}

/// Moves each session's `last_activity_at` forward to the latest time it is given, in one
/// statement; a session that does not exist is an error.
async fn touch_sessions<'a>(
    conn: &mut SqliteConnection,
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
    if latest.is_empty() {
        return Ok(());
    }
    // The pairs travel as one JSON array: one statement, and one cached plan, for any count.
    let pairs: Vec<(&str, i64)> = latest.iter().map(|(id, at)| (*id, *at)).collect();
    let list = serde_json::to_string(&pairs).map_err(|e| invalid(e.to_string()))?;
    let r = sqlx::query(TOUCH_SESSIONS)
        .bind(list)
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    if r.rows_affected() as usize == pairs.len() {
        return Ok(());
    }
    for (id, _) in &pairs {
        if sqlx::query(SESSION_EXISTS)
            .bind(id.to_string())
            .fetch_optional(&mut *conn)
            .await
            .map_err(classify)?
            .is_none()
        {
            return Err(StoreError::Corrupt(format!(
                "touch of session {id:?}, which does not exist"
            )));
        }
    }
    Ok(())
}

impl SqliteStore {
    /// One user's rows of `table` (one of the store's own tables), oldest first.
    async fn user_rows<T>(
        &self,
        columns: &str,
        table: &str,
        kind: &str,
        tenant: &str,
        user_id: &str,
        map: fn(&SqliteRow) -> Result<T>,
    ) -> Result<Vec<T>> {
        let sql = format!(
            "SELECT {columns} FROM {table} \
             WHERE kind = ?1 AND tenant = ?2 AND user_id = ?3 ORDER BY created_at, id"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(kind.to_owned())
            .bind(tenant.to_owned())
            .bind(user_id.to_owned())
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?
            .iter()
            .map(map)
            .collect()
    }
}

/// One [`Write`] inside the transaction `conn` is in, but for its commit, if it has one.
async fn apply_write<'w>(conn: &mut SqliteConnection, w: &'w Write) -> Result<Applied<'w>> {
    Ok(match w {
        Write::Commit(c) => Applied::Commit(c),
        Write::BeginUp(row) => Applied::Done(Written::Begun(begin_up_on(conn, row).await?)),
        Write::SessionToken {
            session_id, token, ..
        } => {
            set_token_on(conn, session_id, token.as_deref()).await?;
            Applied::Done(Written::Done)
        }
        Write::OutboxDone(seqs) => {
            outbox_done_on(conn, seqs).await?;
            Applied::Done(Written::Done)
        }
        Write::TimStream(row, c) => {
            tim_stream_on(conn, row).await?;
            Applied::Commit(c)
        }
        Write::TimCallback(row, c) => {
            tim_callback_on(conn, row).await?;
            Applied::Commit(c)
        }
    })
}

async fn begin_up_on(conn: &mut SqliteConnection, row: &MessageRow) -> Result<UpBegin> {
    if row.direction != Direction::Up {
        return Err(invalid("begin_up takes an up row"));
    }
    let Some(message_id) = &row.message_id else {
        return Err(invalid("begin_up needs the up row's message_id"));
    };
    let r = bind_message(sqlx::query(INSERT_UP), row, MessageStatus::Pending)
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    if r.rows_affected() == 1 {
        return Ok(UpBegin::New);
    }
    let status: String = sqlx::query_scalar(UP_STATUS)
        .bind(row.kind.clone())
        .bind(row.tenant.clone())
        .bind(row.user_id.clone())
        .bind(message_id.clone())
        .fetch_one(&mut *conn)
        .await
        .map_err(classify)?;
    Ok(match MessageStatus::parse(&status)? {
        MessageStatus::Pending => UpBegin::Pending,
        done => UpBegin::Done(done),
    })
}

async fn set_token_on(
    conn: &mut SqliteConnection,
    session_id: &str,
    token: Option<&str>,
) -> Result<()> {
    let r = sqlx::query("UPDATE sessions SET token = ?2 WHERE id = ?1")
        .bind(session_id.to_owned())
        .bind(token.map(str::to_owned))
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    if r.rows_affected() == 0 {
        return Err(StoreError::Corrupt(format!(
            "session {session_id:?} does not exist"
        )));
    }
    Ok(())
}

async fn outbox_done_on(conn: &mut SqliteConnection, seqs: &[i64]) -> Result<()> {
    if seqs.is_empty() {
        return Ok(());
    }
    // One statement whatever the count: the seqs travel as one JSON array.
    let list = serde_json::to_string(seqs).map_err(|e| invalid(e.to_string()))?;
    sqlx::query("DELETE FROM outbox WHERE seq IN (SELECT value FROM json_each(?1))")
        .bind(list)
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    Ok(())
}

async fn tim_stream_on(conn: &mut SqliteConnection, row: &TimStreamRow) -> Result<()> {
    sqlx::query(TIM_STREAM_UPSERT)
        .bind(row.app.clone())
        .bind(row.user_id.clone())
        .bind(row.stream_id.clone())
        .bind(row.from_account.clone())
        .bind(row.msg_key.clone())
        .bind(row.text.clone())
        .bind(row.chunks)
        .bind(row.calls)
        .bind(row.last_seq)
        .bind(i64::from(row.finished))
        .bind(row.status.as_str())
        .bind(row.error_code.clone())
        .bind(row.error_info.clone())
        .bind(unix_micros(row.created_at))
        .bind(unix_micros(row.updated_at))
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    Ok(())
}

async fn tim_callback_on(conn: &mut SqliteConnection, row: &TimCallbackRow) -> Result<()> {
    sqlx::query(TIM_CALLBACK_INSERT)
        .bind(row.relay_id.clone())
        .bind(row.app.clone())
        .bind(row.user_id.clone())
        .bind(row.command.clone())
        .bind(row.body.clone())
        .bind(i64::from(row.published))
        .bind(unix_micros(row.created_at))
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn write_batch(&self, writes: &mut [Write]) -> Result<Vec<Written>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(classify)?;
        // On error `tx` is dropped, which rolls everything back.
        let mut done = Vec::with_capacity(writes.len());
        let mut commits = Vec::new();
        for w in writes.iter() {
            let applied = apply_write(&mut tx, w).await?;
            done.push(applied.keep_commit(&mut commits));
        }
        let committed = apply(&mut tx, &commits).await?;
        tx.commit().await.map_err(classify)?;
        Applied::results(done, committed)
    }

    async fn up_lookup(
        &self,
        kind: &str,
        tenant: &str,
        user_id: &str,
        message_id: &str,
    ) -> Result<UpLookup> {
        self.lookups
            .lookup([
                kind.to_owned(),
                tenant.to_owned(),
                user_id.to_owned(),
                message_id.to_owned(),
            ])
            .await
    }

    async fn open_session(
        &self,
        kind: &str,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<Session>> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions \
             WHERE kind = ?1 AND tenant = ?2 AND user_id = ?3 AND state <> 'closed'"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(kind.to_owned())
            .bind(tenant.to_owned())
            .bind(user_id.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?
            .as_ref()
            .map(session_from_row)
            .transpose()
    }

    async fn open_sessions(&self) -> Result<Vec<Session>> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE state <> 'closed' ORDER BY opened_at, id"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?
            .iter()
            .map(session_from_row)
            .collect()
    }

    async fn list_sessions(
        &self,
        tenant: Option<&str>,
        state: Option<SessionState>,
        limit: i64,
    ) -> Result<Vec<Session>> {
        // One statement per filter combination, so each can use its index.
        let filter = match (tenant.is_some(), state.is_some()) {
            (false, false) => "",
            (true, false) => "WHERE tenant = ?2",
            (false, true) => "WHERE state = ?3",
            (true, true) => "WHERE tenant = ?2 AND state = ?3",
        };
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions {filter} \
             ORDER BY opened_at DESC, id DESC LIMIT ?1"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(limit.max(0))
            .bind(tenant.map(str::to_owned))
            .bind(state.map(SessionState::as_str))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?
            .iter()
            .map(session_from_row)
            .collect()
    }

    async fn outbox_pending(&self, limit: i64) -> Result<Vec<OutboxRow>> {
        sqlx::query(
            "SELECT seq, msg_id, subject, payload, created_at FROM outbox o \
             WHERE held = 0 AND NOT EXISTS (SELECT 1 FROM outbox h \
               WHERE h.held = 1 AND h.subject = o.subject AND h.seq < o.seq) \
             ORDER BY seq LIMIT ?1",
        )
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?
        .iter()
        .map(|row| {
            Ok(OutboxRow {
                seq: get(row, "seq")?,
                msg_id: get(row, "msg_id")?,
                subject: get(row, "subject")?,
                payload: get(row, "payload")?,
                created_at: ts(row, "created_at")?,
            })
        })
        .collect()
    }

    async fn outbox_stats(&self) -> Result<OutboxStats> {
        let row = sqlx::query(
            "SELECT count(*) AS pending, \
             (SELECT created_at FROM outbox ORDER BY seq LIMIT 1) AS oldest FROM outbox",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(classify)?;
        Ok(OutboxStats {
            pending: get(&row, "pending")?,
            oldest: opt_ts(&row, "oldest")?,
        })
    }

    async fn transcript(&self, kind: &str, tenant: &str, user_id: &str) -> Result<Vec<MessageRow>> {
        self.user_rows(
            MESSAGE_COLUMNS,
            "messages",
            kind,
            tenant,
            user_id,
            message_from_row,
        )
        .await
    }

    async fn messages_page(&self, page: &MessagePage) -> Result<Vec<MessageRow>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE created_at >= ?1 AND created_at < ?2 AND (?3 IS NULL OR tenant = ?3) \
               AND (created_at > ?4 OR (created_at = ?4 AND relay_id > ?5)) \
             ORDER BY created_at, relay_id LIMIT ?6"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(unix_micros(page.since))
            .bind(unix_micros(page.until))
            .bind(page.tenant.clone())
            .bind(unix_micros(page.after.0))
            .bind(page.after.1.clone())
            .bind(page.limit.max(0))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?
            .iter()
            .map(message_from_row)
            .collect()
    }

    async fn events(&self, kind: &str, tenant: &str, user_id: &str) -> Result<Vec<EventRecord>> {
        self.user_rows(
            EVENT_COLUMNS,
            "events",
            kind,
            tenant,
            user_id,
            event_from_row,
        )
        .await
    }

    async fn satisfactions(
        &self,
        kind: &str,
        tenant: &str,
        user_id: &str,
    ) -> Result<Vec<SatisfactionRow>> {
        self.user_rows(
            SATISFACTION_COLUMNS,
            "satisfactions",
            kind,
            tenant,
            user_id,
            satisfaction_from_row,
        )
        .await
    }

    async fn offline_messages(
        &self,
        kind: &str,
        tenant: &str,
        user_id: &str,
    ) -> Result<Vec<OfflineRow>> {
        self.user_rows(
            OFFLINE_COLUMNS,
            "offline_messages",
            kind,
            tenant,
            user_id,
            offline_from_row,
        )
        .await
    }

    async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }

    async fn tim_stream(&self, app: &str, stream_id: &str) -> Result<Option<TimStreamRow>> {
        let sql = format!(
            "SELECT {TIM_STREAM_COLUMNS} FROM tim_streams WHERE app = ?1 AND stream_id = ?2"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(app.to_owned())
            .bind(stream_id.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?
            .as_ref()
            .map(tim_stream_from_row)
            .transpose()
    }

    async fn tim_streams(&self, app: &str, user_id: &str) -> Result<Vec<TimStreamRow>> {
        let sql = format!(
            "SELECT {TIM_STREAM_COLUMNS} FROM tim_streams \
             WHERE app = ?1 AND user_id = ?2 ORDER BY created_at, id"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(app.to_owned())
            .bind(user_id.to_owned())
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?
            .iter()
            .map(tim_stream_from_row)
            .collect()
    }

    async fn tim_open_streams(&self, app: &str, limit: i64) -> Result<Vec<TimStreamRow>> {
        let sql = format!(
            "SELECT {TIM_STREAM_COLUMNS} FROM tim_streams \
             WHERE app = ?1 AND finished = ?2 AND status = 'pending' ORDER BY created_at, id LIMIT ?3"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(app.to_owned())
            .bind(false)
            .bind(limit.max(0))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?
            .iter()
            .map(tim_stream_from_row)
            .collect()
    }

    async fn tim_callbacks(&self, app: &str, limit: i64) -> Result<Vec<TimCallbackRow>> {
        let sql = format!(
            "SELECT {TIM_CALLBACK_COLUMNS} FROM tim_callbacks \
             WHERE app = ?1 ORDER BY created_at, id LIMIT ?2"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(app.to_owned())
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?
            .iter()
            .map(tim_callback_from_row)
            .collect()
    }

    async fn pending_files(&self, limit: i64) -> Result<Vec<PendingFile>> {
        let sql = format!(
            "SELECT {cols}, o.payload AS payload FROM files f \
             JOIN outbox o ON o.held = 1 AND o.msg_id = f.relay_id \
             WHERE f.status = 'pending' ORDER BY f.created_at, f.id LIMIT ?1",
            cols = FILE_COLUMNS
                .split(", ")
                .map(|c| format!("f.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(limit.max(0))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?
            .iter()
            .map(|row| {
                Ok(PendingFile {
                    file: file_from_row(row)?,
                    payload: get(row, "payload")?,
                })
            })
            .collect()
    }

    async fn file_attempt_failed(
        &self,
        relay_id: &str,
        attempts: i64,
        error_code: &str,
        error_message: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE files SET attempts = ?2, error_code = ?3, error_message = ?4, \
             updated_at = ?5 WHERE relay_id = ?1 AND status = 'pending'",
        )
        .bind(relay_id.to_owned())
        .bind(attempts)
        .bind(error_code.to_owned())
        .bind(error_message.to_owned())
        .bind(unix_micros(OffsetDateTime::now_utc()))
        .execute(&self.writer)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn finish_file(&self, done: &FileDone) -> Result<bool> {
        if done.status == FileStatus::Pending {
            return Err(invalid("finish_file needs status stored or failed"));
        }
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(classify)?;
        let r = sqlx::query(FINISH_FILE)
            .bind(done.relay_id.clone())
            .bind(done.status.as_str())
            .bind(done.size)
            .bind(done.sha256.clone())
            .bind(done.bucket.clone())
            .bind(done.object.clone())
            .bind(done.attempts)
            .bind(done.error_code.clone())
            .bind(done.error_message.clone())
            .bind(unix_micros(done.at))
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("UPDATE messages SET body = ?2 WHERE relay_id = ?1")
            .bind(done.relay_id.clone())
            .bind(done.payload.clone())
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        sqlx::query("UPDATE outbox SET payload = ?2, held = 0 WHERE held = 1 AND msg_id = ?1")
            .bind(done.relay_id.clone())
            .bind(done.payload.as_bytes().to_vec())
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(true)
    }

    async fn files(&self, kind: &str, tenant: &str, user_id: &str) -> Result<Vec<FileRow>> {
        self.user_rows(FILE_COLUMNS, "files", kind, tenant, user_id, file_from_row)
            .await
    }
}

// --- Tencent IM (issue 4, T-relay) ----------------------------------------------------------

const TIM_STREAM_COLUMNS: &str = "app, user_id, stream_id, from_account, msg_key, text, chunks, \
     calls, last_seq, finished, status, error_code, error_info, created_at, updated_at";

const TIM_STREAM_UPSERT: &str = "INSERT INTO tim_streams (app, user_id, stream_id, from_account, \
     msg_key, text, chunks, calls, last_seq, finished, status, error_code, error_info, created_at, \
     updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) \
     ON CONFLICT (app, stream_id) DO UPDATE SET user_id = excluded.user_id, \
     from_account = excluded.from_account, msg_key = excluded.msg_key, text = excluded.text, \
     chunks = excluded.chunks, calls = excluded.calls, last_seq = excluded.last_seq, \
     finished = excluded.finished, status = excluded.status, error_code = excluded.error_code, \
     error_info = excluded.error_info, updated_at = excluded.updated_at";

const TIM_CALLBACK_COLUMNS: &str = "relay_id, app, user_id, command, body, published, created_at";

const TIM_CALLBACK_INSERT: &str = "INSERT INTO tim_callbacks (relay_id, app, user_id, command, \
     body, published, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

fn tim_stream_from_row(row: &SqliteRow) -> Result<TimStreamRow> {
    Ok(TimStreamRow {
        app: get(row, "app")?,
        user_id: get(row, "user_id")?,
        stream_id: get(row, "stream_id")?,
        from_account: get(row, "from_account")?,
        msg_key: get(row, "msg_key")?,
        text: get(row, "text")?,
        chunks: get(row, "chunks")?,
        calls: get(row, "calls")?,
        last_seq: get(row, "last_seq")?,
        finished: get::<i64>(row, "finished")? != 0,
        status: MessageStatus::parse(&get::<String>(row, "status")?)?,
        error_code: get(row, "error_code")?,
        error_info: get(row, "error_info")?,
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
    })
}

fn tim_callback_from_row(row: &SqliteRow) -> Result<TimCallbackRow> {
    Ok(TimCallbackRow {
        relay_id: get(row, "relay_id")?,
        app: get(row, "app")?,
        user_id: get(row, "user_id")?,
        command: get(row, "command")?,
        body: get(row, "body")?,
        published: get::<i64>(row, "published")? != 0,
        created_at: ts(row, "created_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_go_in_chunks_of_few_sizes_in_order() {
        for n in 0..200usize {
            let items: Vec<usize> = (0..n).collect();
            let parts: Vec<&[usize]> = chunks(&items).collect();
            assert_eq!(parts.concat(), items, "n = {n}");
            for p in &parts {
                assert!(
                    p.len().is_power_of_two() && p.len() <= CHUNK,
                    "n = {n}: {}",
                    p.len()
                );
            }
            // At most the full chunks plus one of each smaller size.
            assert!(parts.len() <= n / CHUNK + CHUNK.ilog2() as usize, "n = {n}");
        }
    }
}
