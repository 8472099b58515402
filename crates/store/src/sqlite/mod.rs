//! The SQLite [`crate::Backend`], the embedded default: reads through a sqlx pool, every write
//! through one rusqlite connection ([`write`]).
//!
//! The database runs in WAL mode with `synchronous = FULL`: a transaction that `commit()` returned
//! for survives a process crash and a power loss, which is what lets the relay ack NATS after it.
//! SQLite has one writer at a time, so every write transaction starts with `BEGIN IMMEDIATE`: it
//! takes the write lock up front (waiting up to `busy_timeout`) instead of failing with
//! `SQLITE_BUSY` when a read transaction tries to become a write one. Timestamps are INTEGER
//! microseconds since the Unix epoch (see `migrations/sqlite`).

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqlitePool};
use time::OffsetDateTime;

use crate::summary::{self, SessionSummary, SummaryPage};
use crate::{
    Backend, DeadLetter, Direction, EventRecord, ExportKey, ExportPage, FileRow, FileStatus, Keyed,
    MessageRow, MessageStatus, OfflineRow, OfflineSource, OutboxRow, OutboxStats, PendingFile,
    Queries, Result, SatisfactionRow, SatisfactionSource, Session, SessionState, StoreError,
    TimCallbackRow, TimStreamRow, UpLookup, Write, Written, classify, from_unix_micros, invalid,
    unix_micros,
};

mod lookup;
mod privacy;
mod write;

/// How long a writer waits for the write lock before giving up with `SQLITE_BUSY` (retryable).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Read connections of a file database (WAL lets readers run beside the writer, which has a
/// connection of its own).
const MAX_CONNECTIONS: u32 = 4;
/// WAL pages after which a commit copies the WAL back into the database (SQLite's default is
/// 1,000, 4 MiB): the pages a busy relay rewrites in every commit (the ends of the indexes) are
/// copied once per checkpoint, so fewer checkpoints copy fewer pages.
const WAL_CHECKPOINT_PAGES: u32 = 8_000;
/// Prepared statements kept per read connection. (Each takes memory on each connection: with
/// multi-row INSERTs of every size from 1 to 32 cached, S1's RSS per session grew by a quarter.)
const STATEMENT_CACHE: usize = 64;

/// SQLite-backed store.
pub struct SqliteStore {
    /// A pool of connections to one database file, for reads.
    pool: SqlitePool,
    /// Every write goes through this connection: one, since SQLite has one writer at a
    /// time, and of its own, so a write never waits for a connection behind reads (`sqlite/write.rs`).
    batches: Arc<write::Writer>,
    /// Up lookups, batched ([`lookup`]), through `pool`.
    lookups: lookup::Lookups,
    /// For `sqlite::memory:`: the temporary directory of the database, removed with the store.
    _temp: Option<tempfile::TempDir>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database named by `url`: `sqlite://path/to.db`,
    /// `sqlite:path/to.db`, or `sqlite::memory:` for a private database that lives as long as
    /// the store (tests; it is a file in a temporary directory, since the writer and the
    /// readers are separate connections).
    ///
    /// # Errors
    /// [`StoreError::Query`] for a malformed URL, [`StoreError::Unavailable`] or `Query` when
    /// the file cannot be opened.
    pub async fn connect(url: &str) -> Result<Self> {
        let (url, max_page_count) = take_max_page_count(url)?;
        let url = url.as_str();
        let (options, temp) = if in_memory(url) {
            let dir = tempfile::Builder::new()
                .prefix("ccrelay-db-")
                .tempdir()
                .map_err(|e| StoreError::Unavailable(sqlx::Error::Io(e)))?;
            let options = SqliteConnectOptions::new().filename(dir.path().join("ccrelay.db"));
            (options, Some(dir))
        } else {
            let options = SqliteConnectOptions::from_str(url).map_err(StoreError::Query)?;
            (options, None)
        };
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .statement_cache_capacity(STATEMENT_CACHE)
            // Profiled in the S3 benchmark (docs/BENCHMARKS.md): with SQLite's defaults 6 % of
            // the relay's time went to statement journals in temporary files (gone in memory)
            // and 9 % to checkpoints (4 % every 8,000 pages). Page lookups stayed at 8 % with a
            // 16 MiB page cache and with a memory map, so neither is kept (the cache cost RSS
            // in S1, a map turns an I/O error into SIGBUS). The batch writer ([`write`]) has
            // the same settings.
            .pragma("temp_store", "memory")
            .pragma("wal_autocheckpoint", WAL_CHECKPOINT_PAGES.to_string());
        let options = match max_page_count {
            Some(n) => options.pragma("max_page_count", n.to_string()),
            None => options,
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(classify)?;
        // The pool created the file; opening it again is quick (no I/O beyond the header).
        let batches = Arc::new(write::Writer::open(options.get_filename(), max_page_count)?);
        let lookups = lookup::Lookups::spawn(pool.clone());
        Ok(SqliteStore {
            pool,
            batches,
            lookups,
            _temp: temp,
        })
    }

    /// The underlying pool, for callers that need a query the trait does not offer.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// `PRAGMA name` on the batch writer's connection (tests check its settings).
    #[cfg(test)]
    pub(crate) fn writer_pragma(&self, name: &str) -> Result<i64> {
        self.batches.pragma(name)
    }
}

/// Whether `url` names a private database that lives as long as the store (`sqlite::memory:`,
/// `mode=memory`).
fn in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// The database file that [`SqliteStore::connect`] opens for `url`, as the URL names it
/// (relative to the working directory if the URL's path is); `None` for `sqlite::memory:` and
/// `mode=memory`, whose file is private to the store.
///
/// # Errors
/// [`StoreError::Query`] for a malformed URL, as `connect` would.
pub(crate) fn database_file(url: &str) -> Result<Option<PathBuf>> {
    let (url, _) = take_max_page_count(url)?;
    if in_memory(&url) {
        return Ok(None);
    }
    let options = SqliteConnectOptions::from_str(&url).map_err(StoreError::Query)?;
    Ok(Some(options.get_filename().to_owned()))
}

/// `url` without its `max_page_count=N` query parameter, and `N`: the most pages the database
/// may grow to (SQLite's `PRAGMA max_page_count`, set on every connection). Beyond it, writes fail
/// with `SQLITE_FULL` as on a full disk — polling pauses until pages are freed — which caps the
/// database's size and lets the tests fill it.
fn take_max_page_count(url: &str) -> Result<(String, Option<u32>)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None));
    };
    let mut max = None;
    let mut rest = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("max_page_count", n)) => {
                max = Some(n.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    invalid(format!(
                        "store.url: max_page_count={n:?} is not a positive number of pages"
                    ))
                })?);
            }
            _ => rest.push(pair),
        }
    }
    Ok(match rest.is_empty() {
        true => (base.to_owned(), max),
        false => (format!("{base}?{}", rest.join("&")), max),
    })
}

const SESSION_COLUMNS: &str = "id, kind, tenant, user_id, channel_config_id, state, token, \
     opened_at, closed_at, close_reason, last_activity_at";

const MESSAGE_COLUMNS: &str = "relay_id, kind, tenant, user_id, session_id, direction, \
     message_id, message_code, source_type, control_type, media_type, content, body, status, \
     result_code, result_desc, stream_seq, created_at";

const FILE_COLUMNS: &str = "relay_id, kind, tenant, user_id, session_id, media_type, file_id, \
     file_type, status, size, sha256, bucket, object, attempts, error_code, error_message, \
     created_at, updated_at";

const EVENT_COLUMNS: &str =
    "relay_id, kind, tenant, user_id, session_id, event_type, ok, body, subject, created_at";
const SATISFACTION_COLUMNS: &str = "relay_id, kind, tenant, user_id, session_id, source, score, \
     comment, inter_idx, result_code, result_desc, created_at";

const OFFLINE_COLUMNS: &str = "relay_id, kind, tenant, user_id, session_id, source, message_id, \
     caller, content, tip_text, result_code, result_desc, created_at";

const DEAD_LETTER_COLUMNS: &str = "id, source, msg_id, subject, payload, kind, tenant, user_id, \
     message_id, reason, error, attempts, created_at, dead_at";

fn dead_letter_from_row(row: &SqliteRow) -> Result<DeadLetter> {
    Ok(DeadLetter {
        id: get(row, "id")?,
        source: get(row, "source")?,
        msg_id: get(row, "msg_id")?,
        subject: get(row, "subject")?,
        payload: get(row, "payload")?,
        kind: get(row, "kind")?,
        tenant: get(row, "tenant")?,
        user_id: get(row, "user_id")?,
        message_id: get(row, "message_id")?,
        reason: get(row, "reason")?,
        error: get(row, "error")?,
        attempts: get(row, "attempts")?,
        created_at: ts(row, "created_at")?,
        dead_at: ts(row, "dead_at")?,
    })
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

impl SqliteStore {
    /// A page of `table` (one of the store's own tables, with `id`, `tenant` and `created_at`)
    /// in `(created_at, id)` order ([`ExportPage`]). One range of the table's `created_at` index,
    /// whose entries are `(created_at, rowid)`: already in the page's order, so nothing is
    /// sorted, and the first condition bounds the range.
    async fn export_rows<T>(
        &self,
        columns: &str,
        table: &str,
        page: &ExportPage,
        map: fn(&SqliteRow) -> Result<T>,
    ) -> Result<Vec<Keyed<T>>> {
        let sql = format!(
            "SELECT id AS export_id, {columns} FROM {table} \
             WHERE created_at >= ?1 AND (created_at > ?1 OR id > ?2) AND created_at < ?3 \
               AND (?4 IS NULL OR tenant = ?4) \
             ORDER BY created_at, id LIMIT ?5"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(unix_micros(page.after.at))
            .bind(page.after.id)
            .bind(unix_micros(page.until))
            .bind(page.tenant.clone())
            .bind(page.limit.max(0))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?
            .iter()
            .map(|r| {
                Ok(Keyed {
                    key: ExportKey {
                        at: ts(r, "created_at")?,
                        id: get(r, "export_id")?,
                    },
                    row: map(r)?,
                })
            })
            .collect()
    }

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

#[async_trait]
impl Backend for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("../../migrations/sqlite")
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

    /// Applies the batch on the calling thread, blocking it until committed (`sqlite/write.rs`):
    /// group commit calls it from a writer thread of its own ([`Self::writers`]).
    async fn write_batch(&self, writes: &mut [Write]) -> Result<Vec<Written>> {
        self.batches.write_batch(writes)
    }

    fn writers(&self) -> crate::group::Writers {
        crate::group::Writers::OwnThread
    }

    async fn purge(&self, step: &crate::privacy::Purge) -> Result<crate::privacy::Purged> {
        let (writer, step) = (Arc::clone(&self.batches), step.clone());
        blocking(move || privacy::purge(&writer, &step)).await
    }

    async fn scrub(&self, _tables: &[crate::privacy::Table]) -> Result<crate::privacy::Scrubbed> {
        let writer = Arc::clone(&self.batches);
        blocking(move || privacy::scrub(&writer)).await
    }

    async fn record_erasure(&self, erasure: &crate::privacy::Erasure) -> Result<i64> {
        let (writer, erasure) = (Arc::clone(&self.batches), erasure.clone());
        blocking(move || privacy::record_erasure(&writer, &erasure)).await
    }

    async fn close(&self) {
        // Waits for a batch in progress: off the runtime.
        let batches = Arc::clone(&self.batches);
        let _ = tokio::task::spawn_blocking(move || batches.close()).await;
        self.pool.close().await;
    }
}

#[async_trait]
impl Queries for SqliteStore {
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
            "SELECT seq, msg_id, subject, payload, created_at, attempts FROM outbox o \
             WHERE held = 0 AND (attempts = 0 OR next_attempt_at <= ?2) \
             AND NOT EXISTS (SELECT 1 FROM outbox h \
               WHERE h.held = 1 AND h.subject = o.subject AND h.seq < o.seq) \
             AND NOT EXISTS (SELECT 1 FROM outbox r \
               WHERE r.attempts > 0 AND r.subject = o.subject AND r.seq < o.seq) \
             ORDER BY seq LIMIT ?1",
        )
        .bind(limit.max(0))
        .bind(unix_micros(OffsetDateTime::now_utc()))
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
                attempts: get(row, "attempts")?,
            })
        })
        .collect()
    }

    async fn outbox_stats(&self) -> Result<OutboxStats> {
        let row = sqlx::query(
            "SELECT count(*) AS pending, \
             (SELECT created_at FROM outbox ORDER BY seq LIMIT 1) AS oldest, \
             (SELECT created_at FROM outbox WHERE held = 0 AND attempts = 0 \
               ORDER BY seq LIMIT 1) AS oldest_due, \
             (SELECT count(*) FROM outbox WHERE attempts > 0) AS retrying, \
             (SELECT count(*) FROM dead_letters) AS dead_letters FROM outbox",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(classify)?;
        Ok(OutboxStats {
            pending: get(&row, "pending")?,
            oldest: opt_ts(&row, "oldest")?,
            oldest_due: opt_ts(&row, "oldest_due")?,
            retrying: get(&row, "retrying")?,
            dead_letters: get(&row, "dead_letters")?,
        })
    }

    async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>> {
        let sql = format!("SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters ORDER BY id LIMIT ?1");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(limit.max(0))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?
            .iter()
            .map(dead_letter_from_row)
            .collect()
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

    async fn transcript_page(
        &self,
        kind: &str,
        tenant: &str,
        user_id: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Option<Vec<MessageRow>>> {
        if let Some(after) = after {
            let known = sqlx::query(
                "SELECT 1 FROM messages WHERE relay_id = ?1 AND kind = ?2 AND tenant = ?3 AND user_id = ?4",
            )
            .bind(after.to_owned())
            .bind(kind.to_owned())
            .bind(tenant.to_owned())
            .bind(user_id.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?;
            if known.is_none() {
                return Ok(None);
            }
        }
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE kind = ?1 AND tenant = ?2 AND user_id = ?3 \
               AND (?4 IS NULL OR (created_at, id) > \
                    (SELECT created_at, id FROM messages WHERE relay_id = ?4)) \
             ORDER BY created_at, id LIMIT ?5"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(kind.to_owned())
            .bind(tenant.to_owned())
            .bind(user_id.to_owned())
            .bind(after.map(str::to_owned))
            .bind(limit.max(0))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?
            .iter()
            .map(message_from_row)
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    async fn export_messages(&self, page: &ExportPage) -> Result<Vec<Keyed<MessageRow>>> {
        self.export_rows(MESSAGE_COLUMNS, "messages", page, message_from_row)
            .await
    }

    async fn export_events(&self, page: &ExportPage) -> Result<Vec<Keyed<EventRecord>>> {
        self.export_rows(EVENT_COLUMNS, "events", page, event_from_row)
            .await
    }

    async fn export_satisfactions(&self, page: &ExportPage) -> Result<Vec<Keyed<SatisfactionRow>>> {
        self.export_rows(
            SATISFACTION_COLUMNS,
            "satisfactions",
            page,
            satisfaction_from_row,
        )
        .await
    }

    async fn export_offline(&self, page: &ExportPage) -> Result<Vec<Keyed<OfflineRow>>> {
        self.export_rows(OFFLINE_COLUMNS, "offline_messages", page, offline_from_row)
            .await
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

    async fn files(&self, kind: &str, tenant: &str, user_id: &str) -> Result<Vec<FileRow>> {
        self.user_rows(FILE_COLUMNS, "files", kind, tenant, user_id, file_from_row)
            .await
    }

    async fn erasures(&self, limit: i64) -> Result<Vec<crate::privacy::Erasure>> {
        sqlx::query(
            "SELECT id, kind, tenant, user_hash, requested_by, outcome, counts, started_at, \
             finished_at FROM erasures ORDER BY id DESC LIMIT ?1",
        )
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?
        .iter()
        .map(|row| {
            Ok(crate::privacy::Erasure {
                id: get(row, "id")?,
                kind: get(row, "kind")?,
                tenant: get(row, "tenant")?,
                user_hash: get(row, "user_hash")?,
                requested_by: get(row, "requested_by")?,
                outcome: get(row, "outcome")?,
                counts: crate::privacy::counts_of(&get::<String>(row, "counts")?)?,
                started_at: ts(row, "started_at")?,
                finished_at: ts(row, "finished_at")?,
            })
        })
        .collect()
    }

    async fn summaries_page(&self, page: &SummaryPage) -> Result<Vec<SessionSummary>> {
        let (sql, args) = page.query(|n| format!("?{n}"));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in args {
            q = match a {
                summary::Arg::Time(t) => q.bind(unix_micros(t)),
                summary::Arg::Text(t) => q.bind(t),
                summary::Arg::Int(i) => q.bind(i),
            };
        }
        q.fetch_all(&self.pool)
            .await
            .map_err(classify)?
            .iter()
            .map(|r| summary::from_row(&SummaryColumns(r)))
            .collect()
    }

    async fn summary(
        &self,
        kind: &str,
        tenant: &str,
        session_id: &str,
    ) -> Result<Option<SessionSummary>> {
        let sql = format!(
            "SELECT {} FROM session_summaries \
             WHERE kind = ?1 AND tenant = ?2 AND session_id = ?3",
            *summary::COLUMN_LIST
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(kind.to_owned())
            .bind(tenant.to_owned())
            .bind(session_id.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?
            .map(|r| summary::from_row(&SummaryColumns(&r)))
            .transpose()
    }

    async fn latest_session(
        &self,
        kind: &str,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<Session>> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions \
             WHERE kind = ?1 AND tenant = ?2 AND user_id = ?3 \
             ORDER BY opened_at DESC, id DESC LIMIT 1"
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
}

/// A row of `session_summaries` as the read pool returns it: INTEGER microsecond timestamps,
/// 0/1 flags.
struct SummaryColumns<'r>(&'r SqliteRow);

impl summary::Columns for SummaryColumns<'_> {
    fn text(&self, column: &str) -> Result<Option<String>> {
        get(self.0, column)
    }
    fn int(&self, column: &str) -> Result<Option<i64>> {
        get(self.0, column)
    }
    fn flag(&self, column: &str) -> Result<Option<bool>> {
        Ok(self.int(column)?.map(|v| v != 0))
    }
    fn time(&self, column: &str) -> Result<Option<OffsetDateTime>> {
        opt_ts(self.0, column)
    }
}

/// Runs `f` (which blocks on the writer's connection) on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable(sqlx::Error::Io(std::io::Error::other(e))))?
}

// --- Tencent IM: streams and callbacks ---------------------------------------------------

const TIM_STREAM_COLUMNS: &str = "app, user_id, stream_id, from_account, msg_key, text, chunks, \
     calls, last_seq, finished, status, error_code, error_info, created_at, updated_at";

const TIM_CALLBACK_COLUMNS: &str = "relay_id, app, user_id, command, body, published, created_at";

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
mod url_tests {
    use super::take_max_page_count;

    #[test]
    fn max_page_count_is_taken_out_of_the_url_and_checked() {
        assert_eq!(
            take_max_page_count("sqlite://a.db").unwrap(),
            ("sqlite://a.db".to_owned(), None)
        );
        assert_eq!(
            take_max_page_count("sqlite://a.db?max_page_count=300").unwrap(),
            ("sqlite://a.db".to_owned(), Some(300))
        );
        assert_eq!(
            take_max_page_count("sqlite://a.db?mode=rwc&max_page_count=7").unwrap(),
            ("sqlite://a.db?mode=rwc".to_owned(), Some(7))
        );
        for bad in ["0", "-1", "lots", ""] {
            let url = format!("sqlite://a.db?max_page_count={bad}");
            let err = take_max_page_count(&url).unwrap_err().to_string();
            assert!(err.contains("max_page_count"), "{bad}: {err}");
        }
    }
}
