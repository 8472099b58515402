//! The PostgreSQL [`crate::Backend`].
//!
//! Same tables as SQLite (see `migrations/postgres`), with `timestamptz` timestamps, `jsonb`
//! bodies and `bytea` outbox payloads. A commit costs a fixed number of round trips whatever its
//! size: the downlink messages (with their outbox rows) and the events (with theirs) each go in
//! one statement, as arrays expanded with `UNNEST`. What a batch writes is decided by
//! `crate::apply`; this module has PostgreSQL's statements for it (`apply::RowOps`).

pub mod cluster;
mod privacy;
mod text;

use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{
    PgArgumentBuffer, PgConnectOptions, PgHasArrayType, PgPoolOptions, PgRow, PgTypeInfo,
    PgValueFormat, PgValueRef,
};
use sqlx::{PgConnection, PgPool, Postgres, Row};
use time::OffsetDateTime;

use crate::apply::{self, DownInsert, EventInsert, RowOps};
use crate::summary::{self, SessionSummary, SummaryPage};
use crate::{
    Backend, DeadLetter, Direction, EventRecord, ExportKey, ExportPage, FileDone, FileRow,
    FileStatus, Keyed, MessageRow, MessageStatus, OfflineRow, OfflineSource, OutboxRow,
    OutboxStats, PendingFile, Queries, Result, SatisfactionRow, SatisfactionSource, Session,
    SessionState, StoreError, TimCallbackRow, TimStreamRow, UpLookup, UpOutcome, Write, Written,
    classify, from_unix_micros, unix_micros,
};

/// How long a caller waits for a free connection before getting a retryable error.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: u32 = 8;

/// PostgreSQL-backed store.
pub struct PgStore {
    pool: PgPool,
    /// In a cluster: what the writes are checked against ([`cluster::fence`]).
    fencing: std::sync::OnceLock<std::sync::Arc<crate::cluster::Fencing>>,
}

impl PgStore {
    /// Connects to the database named by `url` (`postgres://…` or `postgresql://…`).
    ///
    /// # Errors
    /// [`StoreError::Query`] for a malformed URL, [`StoreError::Unavailable`] when the server
    /// cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        // sqlx checks a `verify-ca` certificate with rustls' process-wide crypto provider, which
        // rustls cannot pick by itself when both of its providers are built (reqwest brings
        // aws-lc-rs, sqlx's TLS ring): name one. An error means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options: PgConnectOptions = url.parse().map_err(StoreError::Query)?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(classify)?;
        Ok(PgStore {
            pool,
            fencing: std::sync::OnceLock::new(),
        })
    }

    /// The underlying pool, for callers that need a query the trait does not offer.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// A `timestamptz` as microseconds since the Unix epoch, in PostgreSQL's binary format
/// (microseconds since 2000-01-01T00:00:00Z). sqlx's own `time` support is a Cargo feature this
/// crate does not enable; this is all the store needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ts(i64);

/// 2000-01-01T00:00:00Z in microseconds since the Unix epoch.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
/// `pg_type` OIDs of `timestamptz` and `timestamptz[]` (built in, so stable).
const TIMESTAMPTZ_OID: Oid = Oid(1184);
const TIMESTAMPTZ_ARRAY_OID: Oid = Oid(1185);

impl Ts {
    fn of(t: OffsetDateTime) -> Self {
        Ts(unix_micros(t))
    }
    fn get(self) -> Result<OffsetDateTime> {
        from_unix_micros(self.0)
    }
}

impl sqlx::Type<Postgres> for Ts {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(TIMESTAMPTZ_OID)
    }
}

impl PgHasArrayType for Ts {
    fn array_type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(TIMESTAMPTZ_ARRAY_OID)
    }
}

impl sqlx::Encode<'_, Postgres> for Ts {
    fn encode_by_ref(
        &self,
        buf: &mut PgArgumentBuffer,
    ) -> std::result::Result<IsNull, BoxDynError> {
        let pg = self
            .0
            .checked_sub(PG_EPOCH_UNIX_MICROS)
            .ok_or("timestamp out of range for timestamptz")?;
        buf.extend_from_slice(&pg.to_be_bytes());
        Ok(IsNull::No)
    }

    fn size_hint(&self) -> usize {
        8
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for Ts {
    fn decode(value: PgValueRef<'r>) -> std::result::Result<Self, BoxDynError> {
        match value.format() {
            PgValueFormat::Binary => {
                let bytes: [u8; 8] = value.as_bytes()?.try_into()?;
                let unix = i64::from_be_bytes(bytes)
                    .checked_add(PG_EPOCH_UNIX_MICROS)
                    .ok_or("timestamptz out of range (infinity?)")?;
                Ok(Ts(unix))
            }
            PgValueFormat::Text => Err("timestamptz in text format is not supported".into()),
        }
    }
}

const SESSION_COLUMNS: &str = "id, kind, tenant, user_id, channel_config_id, state, token, \
     opened_at, closed_at, close_reason, last_activity_at";

const MESSAGE_COLUMNS: &str = "relay_id, kind, tenant, user_id, session_id, direction, \
     message_id, message_code, source_type, control_type, media_type, content, body::text AS body, \
     status, result_code, result_desc, stream_seq, created_at";

const INSERT_SESSION: &str = "INSERT INTO sessions (id, kind, tenant, user_id, \
     channel_config_id, state, token, opened_at, closed_at, close_reason, last_activity_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

const SET_SESSION_STATE: &str =
    "UPDATE sessions SET state = $2 WHERE id = $1 AND state <> 'closed'";

const CLOSE_SESSION: &str = "UPDATE sessions SET state = 'closed', closed_at = $2, \
     close_reason = $3 WHERE id = $1 AND state <> 'closed'";

const SESSION_EXISTS: &str = "SELECT 1 FROM sessions WHERE id = $1";

/// Moves `last_activity_at` forward for each distinct id (the latest time given wins).
const TOUCH_SESSIONS: &str = "UPDATE sessions s SET last_activity_at = \
     greatest(s.last_activity_at, t.at) \
     FROM (SELECT id, max(at) AS at FROM unnest($1::text[], $2::timestamptz[]) AS u(id, at) \
           GROUP BY id) t \
     WHERE s.id = t.id";

const UPDATE_UP: &str = "UPDATE messages SET status = $5, result_code = $6, result_desc = $7, \
     session_id = coalesce($8, session_id) \
     WHERE kind = $1 AND tenant = $2 AND user_id = $3 AND message_id = $4 AND direction = 'up'";

/// Inserts the down rows in the order given, skipping those whose message_code is known (or
/// repeated within the batch), and an outbox row for each one inserted that is published, in the
/// same order.
/// Returns the relay ids inserted.
const INSERT_DOWNS: &str = "WITH input AS ( \
       SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
           $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], \
           $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::int8[], \
           $18::timestamptz[], $19::text[], $20::text[], $21::bytea[], $22::bool[], \
           $23::bool[]) WITH ORDINALITY \
         AS t(relay_id, kind, tenant, user_id, session_id, direction, message_id, \
           message_code, source_type, control_type, media_type, content, body, status, \
           result_code, result_desc, stream_seq, created_at, msg_id, subject, payload, held, \
           publish, ord) \
     ), ins AS ( \
       INSERT INTO messages (relay_id, kind, tenant, user_id, session_id, direction, \
           message_id, message_code, source_type, control_type, media_type, content, body, \
           status, result_code, result_desc, stream_seq, created_at) \
       SELECT relay_id, kind, tenant, user_id, session_id, direction, message_id, \
           message_code, source_type, control_type, media_type, content, body::jsonb, status, \
           result_code, result_desc, stream_seq, created_at \
       FROM input ORDER BY ord \
       ON CONFLICT (kind, tenant, user_id, message_code) WHERE message_code IS NOT NULL \
       DO NOTHING \
       RETURNING relay_id \
     ), outboxed AS ( \
       INSERT INTO outbox (msg_id, subject, payload, created_at, held) \
       SELECT msg_id, subject, payload, $24, held FROM input \
       WHERE relay_id IN (SELECT relay_id FROM ins) AND publish ORDER BY ord \
     ) \
     SELECT relay_id FROM ins";

/// Inserts the events and the outbox rows of those published, in the order given.
const INSERT_EVENTS: &str = "WITH input AS ( \
       SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
           $6::text[], $7::bool[], $8::text[], $9::text[], $10::timestamptz[], $11::bool[]) \
           WITH ORDINALITY \
         AS t(relay_id, kind, tenant, user_id, session_id, event_type, ok, body, subject, \
           created_at, publish, ord) \
     ), ev AS ( \
       INSERT INTO events (relay_id, kind, tenant, user_id, session_id, event_type, ok, body, \
           subject, created_at) \
       SELECT relay_id, kind, tenant, user_id, session_id, event_type, ok, body::jsonb, \
           subject, created_at \
       FROM input ORDER BY ord \
     ) \
     INSERT INTO outbox (msg_id, subject, payload, created_at) \
     SELECT relay_id, subject, convert_to(body, 'UTF8'), $12 FROM input \
     WHERE publish ORDER BY ord";

/// Inserts dead letters, skipping those whose (source, msg_id) is stored; their msg_ids and ids.
const INSERT_DEAD_LETTERS: &str = "INSERT INTO dead_letters (source, msg_id, subject, payload, \
       kind, tenant, user_id, message_id, reason, error, attempts, created_at, dead_at) \
     SELECT source, msg_id, subject, payload, kind, tenant, user_id, message_id, reason, error, \
       attempts, created_at, dead_at \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::text[], \
       $7::text[], $8::text[], $9::text[], $10::text[], $11::int4[], $12::timestamptz[], \
       $13::timestamptz[]) WITH ORDINALITY AS t(source, msg_id, subject, payload, kind, tenant, \
       user_id, message_id, reason, error, attempts, created_at, dead_at, ord) \
     ORDER BY ord \
     ON CONFLICT (source, msg_id) DO NOTHING RETURNING msg_id, id";

/// Inserts the satisfaction rows, in the order given.
const INSERT_SATISFACTIONS: &str = "INSERT INTO satisfactions (relay_id, kind, tenant, user_id, \
       session_id, source, score, comment, inter_idx, result_code, result_desc, created_at) \
     SELECT relay_id, kind, tenant, user_id, session_id, source, score, comment, inter_idx, \
       result_code, result_desc, created_at \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
       $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::timestamptz[]) \
       WITH ORDINALITY AS t(relay_id, kind, tenant, user_id, session_id, source, score, comment, \
       inter_idx, result_code, result_desc, created_at, ord) \
     ORDER BY ord";

/// Inserts the offline rows in the order given, skipping those whose message_id is known (or
/// repeated within the batch).
const INSERT_OFFLINE: &str = "INSERT INTO offline_messages (relay_id, kind, tenant, user_id, \
       session_id, source, message_id, caller, content, tip_text, result_code, result_desc, \
       created_at) \
     SELECT relay_id, kind, tenant, user_id, session_id, source, message_id, caller, content, \
       tip_text, result_code, result_desc, created_at \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
       $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], \
       $13::timestamptz[]) \
       WITH ORDINALITY AS t(relay_id, kind, tenant, user_id, session_id, source, message_id, \
       caller, content, tip_text, result_code, result_desc, created_at, ord) \
     ORDER BY ord \
     ON CONFLICT (kind, tenant, user_id, message_id) WHERE message_id IS NOT NULL DO NOTHING";

const FILE_COLUMNS: &str = "relay_id, kind, tenant, user_id, session_id, media_type, file_id, \
     file_type, status, size, sha256, bucket, object, attempts::int8 AS attempts, error_code, \
     error_message, created_at, updated_at";

const INSERT_FILES: &str = "INSERT INTO files (relay_id, kind, tenant, user_id, session_id, \
     media_type, file_id, file_type, status, size, sha256, bucket, object, attempts, error_code, \
     error_message, created_at, updated_at) \
     SELECT relay_id, kind, tenant, user_id, session_id, media_type, file_id, file_type, status, \
       size, sha256, bucket, object, attempts, error_code, error_message, created_at, updated_at \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
       $6::text[], $7::text[], $8::text[], $9::text[], $10::int8[], $11::text[], $12::text[], \
       $13::text[], $14::int4[], $15::text[], $16::text[], $17::timestamptz[], \
       $18::timestamptz[]) WITH ORDINALITY AS t(relay_id, kind, tenant, user_id, session_id, \
       media_type, file_id, file_type, status, size, sha256, bucket, object, attempts, \
       error_code, error_message, created_at, updated_at, ord) ORDER BY ord";

const FINISH_FILE: &str = "UPDATE files SET status = $2, size = $3, sha256 = $4, bucket = $5, \
     object = $6, attempts = $7, error_code = $8, error_message = $9, updated_at = $10 \
     WHERE relay_id = $1 AND status = 'pending'";

const EVENT_COLUMNS: &str = "relay_id, kind, tenant, user_id, session_id, event_type, ok, body::text AS body, subject, created_at";
const SATISFACTION_COLUMNS: &str = "relay_id, kind, tenant, user_id, session_id, source, score, \
     comment, inter_idx, result_code, result_desc, created_at";

const OFFLINE_COLUMNS: &str = "relay_id, kind, tenant, user_id, session_id, source, message_id, \
     caller, content, tip_text, result_code, result_desc, created_at";

const INSERT_UP: &str = "INSERT INTO messages (relay_id, kind, tenant, user_id, session_id, \
     direction, message_id, message_code, source_type, control_type, media_type, content, body, \
     status, result_code, result_desc, stream_seq, created_at) \
     VALUES ($1, $2, $3, $4, $5, 'up', $6, $7, $8, $9, $10, $11, $12::jsonb, 'pending', $13, \
             $14, $15, $16) \
     ON CONFLICT (kind, tenant, user_id, message_id) WHERE direction = 'up' DO NOTHING";

/// Up rows with their outcome, in the order given; an existing row (Pending, of an earlier run)
/// takes the outcome.
const UPSERT_UPS: &str = "INSERT INTO messages (relay_id, kind, tenant, user_id, session_id, \
       direction, message_id, message_code, source_type, control_type, media_type, content, \
       body, status, result_code, result_desc, stream_seq, created_at) \
     SELECT relay_id, kind, tenant, user_id, session_id, 'up', message_id, message_code, \
       source_type, control_type, media_type, content, body::jsonb, status, result_code, \
       result_desc, stream_seq, created_at \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
       $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], \
       $14::text[], $15::text[], $16::int8[], $17::timestamptz[]) WITH ORDINALITY \
       AS t(relay_id, kind, tenant, user_id, session_id, message_id, message_code, source_type, \
       control_type, media_type, content, body, status, result_code, result_desc, stream_seq, \
       created_at, ord) \
     ORDER BY ord \
     ON CONFLICT (kind, tenant, user_id, message_id) WHERE direction = 'up' DO UPDATE SET \
     status = excluded.status, result_code = excluded.result_code, \
     result_desc = excluded.result_desc, \
     session_id = coalesce(excluded.session_id, messages.session_id)";

/// The status of an up row (`up_status`, NULL if none) beside the user's not-closed session
/// (NULL columns if none): one row always.
static UP_LOOKUP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT (SELECT status FROM messages WHERE kind = $1 AND tenant = $2 AND user_id = $3 \
           AND message_id = $4 AND direction = 'up') AS up_status, {SESSION_COLUMNS} \
         FROM (SELECT 1 AS one) AS o LEFT JOIN sessions ON sessions.kind = $1 \
           AND sessions.tenant = $2 AND sessions.user_id = $3 AND sessions.state <> 'closed'"
    )
});

const UP_STATUS: &str = "SELECT status FROM messages \
     WHERE kind = $1 AND tenant = $2 AND user_id = $3 AND message_id = $4 AND direction = 'up'";

fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(column).map_err(classify)
}

const DEAD_LETTER_COLUMNS: &str = "id, source, msg_id, subject, payload, kind, tenant, user_id, \
     message_id, reason, error, attempts, created_at, dead_at";

fn dead_letter_from_row(row: &PgRow) -> Result<DeadLetter> {
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
        attempts: i64::from(get::<i32>(row, "attempts")?),
        created_at: ts(row, "created_at")?,
        dead_at: ts(row, "dead_at")?,
    })
}

fn ts(row: &PgRow, column: &str) -> Result<OffsetDateTime> {
    get::<Ts>(row, column)?.get()
}

fn opt_ts(row: &PgRow, column: &str) -> Result<Option<OffsetDateTime>> {
    get::<Option<Ts>>(row, column)?.map(Ts::get).transpose()
}

fn session_from_row(row: &PgRow) -> Result<Session> {
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

fn message_from_row(row: &PgRow) -> Result<MessageRow> {
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

fn file_from_row(row: &PgRow) -> Result<FileRow> {
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

fn event_from_row(row: &PgRow) -> Result<EventRecord> {
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

fn satisfaction_from_row(row: &PgRow) -> Result<SatisfactionRow> {
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

fn offline_from_row(row: &PgRow) -> Result<OfflineRow> {
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

impl PgStore {
    /// A page of `table` (one of the store's own tables, with `id`, `tenant` and `created_at`)
    /// in `(created_at, id)` order ([`ExportPage`]): a range of the table's `created_at` index
    /// (the first condition bounds it), ties put in `id` order by an incremental sort.
    async fn export_rows<T>(
        &self,
        columns: &str,
        table: &str,
        page: &ExportPage,
        map: fn(&PgRow) -> Result<T>,
    ) -> Result<Vec<Keyed<T>>> {
        let sql = format!(
            "SELECT id AS export_id, {columns} FROM {table} \
             WHERE created_at >= $1 AND (created_at > $1 OR id > $2) AND created_at < $3 \
               AND ($4::text IS NULL OR tenant = $4) \
             ORDER BY created_at, id LIMIT $5"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(Ts::of(page.after.at))
            .bind(page.after.id)
            .bind(Ts::of(page.until))
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
        map: fn(&PgRow) -> Result<T>,
    ) -> Result<Vec<T>> {
        let sql = format!(
            "SELECT {columns} FROM {table} \
             WHERE kind = $1 AND tenant = $2 AND user_id = $3 ORDER BY created_at, id"
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

/// [`crate::Backend::write_batch`] on `conn`, in one transaction.
async fn write_batch_on(
    conn: &mut PgConnection,
    fencing: Option<&crate::cluster::Fencing>,
    writes: &[Write],
) -> Result<Vec<Written>> {
    let mut tx = sqlx::Connection::begin(conn).await.map_err(classify)?;
    if let Some(f) = fencing {
        cluster::fence(&mut tx, f, writes).await?;
    }
    // On error `tx` is dropped, which rolls everything back.
    let written = apply::write_batch(&mut *tx, writes).await?;
    if fencing.is_some() && cluster::outboxed(&written) {
        // Wakes the member that publishes the outbox, when this transaction commits.
        cluster::notify_outbox(&mut tx).await?;
    }
    tx.commit().await.map_err(classify)?;
    Ok(written)
}

/// One column of a batch, as an array parameter.
fn column<'a, T: 'a>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    items.into_iter().collect()
}

/// Runs `q`; whether it changed a row.
async fn changed(
    conn: &mut PgConnection,
    q: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
) -> Result<bool> {
    let r = q.execute(conn).await.map_err(classify)?;
    Ok(r.rows_affected() > 0)
}

/// Runs `q` for its effect.
async fn run(
    conn: &mut PgConnection,
    q: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
) -> Result<()> {
    q.execute(conn).await.map_err(classify)?;
    Ok(())
}

/// The statements of a write, on the connection of its transaction: one round trip each.
impl RowOps for PgConnection {
    async fn insert_session(&mut self, s: &Session) -> Result<()> {
        let q = sqlx::query(INSERT_SESSION)
            .bind(&s.id)
            .bind(&s.kind)
            .bind(&s.tenant)
            .bind(&s.user_id)
            .bind(&s.channel_config_id)
            .bind(s.state.as_str())
            .bind(&s.token)
            .bind(Ts::of(s.opened_at))
            .bind(s.closed_at.map(Ts::of))
            .bind(&s.close_reason)
            .bind(Ts::of(s.last_activity_at));
        run(self, q).await
    }

    async fn set_session_state(&mut self, id: &str, state: SessionState) -> Result<bool> {
        let q = sqlx::query(SET_SESSION_STATE).bind(id).bind(state.as_str());
        changed(self, q).await
    }

    async fn close_session(&mut self, id: &str, reason: &str, at: OffsetDateTime) -> Result<bool> {
        let q = sqlx::query(CLOSE_SESSION)
            .bind(id)
            .bind(Ts::of(at))
            .bind(reason);
        changed(self, q).await
    }

    async fn session_exists(&mut self, id: &str) -> Result<bool> {
        let found = sqlx::query(SESSION_EXISTS)
            .bind(id)
            .fetch_optional(self)
            .await
            .map_err(classify)?;
        Ok(found.is_some())
    }

    async fn set_session_token(&mut self, id: &str, token: Option<&str>) -> Result<bool> {
        let q = sqlx::query("UPDATE sessions SET token = $2 WHERE id = $1")
            .bind(id)
            .bind(token);
        changed(self, q).await
    }

    async fn touch_sessions(&mut self, touches: &[(&str, OffsetDateTime)]) -> Result<u64> {
        let r = sqlx::query(TOUCH_SESSIONS)
            .bind(column(touches.iter().map(|(id, _)| *id)))
            .bind(column(touches.iter().map(|(_, at)| Ts::of(*at))))
            .execute(self)
            .await
            .map_err(classify)?;
        Ok(r.rows_affected())
    }

    async fn insert_pending_up(&mut self, row: &MessageRow) -> Result<bool> {
        let q = sqlx::query(INSERT_UP)
            .bind(&row.relay_id)
            .bind(&row.kind)
            .bind(&row.tenant)
            .bind(&row.user_id)
            .bind(&row.session_id)
            .bind(&row.message_id)
            .bind(&row.message_code)
            .bind(&row.source_type)
            .bind(&row.control_type)
            .bind(&row.media_type)
            .bind(&row.content)
            .bind(&row.body)
            .bind(&row.result_code)
            .bind(&row.result_desc)
            .bind(row.stream_seq)
            .bind(Ts::of(row.created_at));
        changed(self, q).await
    }

    async fn up_status(
        &mut self,
        kind: &str,
        tenant: &str,
        user_id: &str,
        message_id: &str,
    ) -> Result<String> {
        sqlx::query_scalar(UP_STATUS)
            .bind(kind)
            .bind(tenant)
            .bind(user_id)
            .bind(message_id)
            .fetch_one(self)
            .await
            .map_err(classify)
    }

    async fn update_up(&mut self, up: &UpOutcome) -> Result<bool> {
        let q = sqlx::query(UPDATE_UP)
            .bind(&up.kind)
            .bind(&up.tenant)
            .bind(&up.user_id)
            .bind(&up.message_id)
            .bind(up.status.as_str())
            .bind(&up.result_code)
            .bind(&up.result_desc)
            .bind(&up.session_id);
        changed(self, q).await
    }

    async fn upsert_up_rows(&mut self, up_rows: &[&MessageRow]) -> Result<()> {
        let rows = || up_rows.iter();
        let q = sqlx::query(UPSERT_UPS)
            .bind(column(rows().map(|r| r.relay_id.as_str())))
            .bind(column(rows().map(|r| r.kind.as_str())))
            .bind(column(rows().map(|r| r.tenant.as_str())))
            .bind(column(rows().map(|r| r.user_id.as_str())))
            .bind(column(rows().map(|r| r.session_id.as_deref())))
            .bind(column(rows().map(|r| r.message_id.as_deref())))
            .bind(column(rows().map(|r| r.message_code.as_deref())))
            .bind(column(rows().map(|r| r.source_type.as_deref())))
            .bind(column(rows().map(|r| r.control_type.as_deref())))
            .bind(column(rows().map(|r| r.media_type.as_deref())))
            .bind(column(rows().map(|r| r.content.as_deref())))
            .bind(column(rows().map(|r| r.body.as_str())))
            .bind(column(rows().map(|r| r.status.as_str())))
            .bind(column(rows().map(|r| r.result_code.as_deref())))
            .bind(column(rows().map(|r| r.result_desc.as_deref())))
            .bind(column(rows().map(|r| r.stream_seq)))
            .bind(column(rows().map(|r| Ts::of(r.created_at))));
        run(self, q).await
    }

    async fn insert_downs(
        &mut self,
        downs: &[DownInsert<'_>],
        now: OffsetDateTime,
    ) -> Result<HashSet<String>> {
        let rows = || downs.iter().map(|d| &d.down.row);
        let publish = || downs.iter().map(|d| &d.down.publish);
        let inserted: Vec<String> = sqlx::query_scalar(INSERT_DOWNS)
            .bind(column(rows().map(|r| r.relay_id.as_str())))
            .bind(column(rows().map(|r| r.kind.as_str())))
            .bind(column(rows().map(|r| r.tenant.as_str())))
            .bind(column(rows().map(|r| r.user_id.as_str())))
            .bind(column(rows().map(|r| r.session_id.as_deref())))
            .bind(column(rows().map(|r| r.direction.as_str())))
            .bind(column(rows().map(|r| r.message_id.as_deref())))
            .bind(column(rows().map(|r| r.message_code.as_deref())))
            .bind(column(rows().map(|r| r.source_type.as_deref())))
            .bind(column(rows().map(|r| r.control_type.as_deref())))
            .bind(column(rows().map(|r| r.media_type.as_deref())))
            .bind(column(rows().map(|r| r.content.as_deref())))
            .bind(column(rows().map(|r| r.body.as_str())))
            .bind(column(rows().map(|r| r.status.as_str())))
            .bind(column(rows().map(|r| r.result_code.as_deref())))
            .bind(column(rows().map(|r| r.result_desc.as_deref())))
            .bind(column(rows().map(|r| r.stream_seq)))
            .bind(column(rows().map(|r| Ts::of(r.created_at))))
            .bind(column(publish().map(|p| p.msg_id.as_str())))
            .bind(column(publish().map(|p| p.subject.as_str())))
            .bind(column(publish().map(|p| p.payload.as_slice())))
            .bind(column(downs.iter().map(|d| d.held)))
            .bind(column(downs.iter().map(|d| d.publish)))
            .bind(Ts::of(now))
            .fetch_all(self)
            .await
            .map_err(classify)?;
        Ok(inserted.into_iter().collect())
    }

    async fn set_message_body(&mut self, relay_id: &str, body: &str) -> Result<()> {
        let q = sqlx::query("UPDATE messages SET body = $2::jsonb WHERE relay_id = $1")
            .bind(relay_id)
            .bind(text::json(body));
        run(self, q).await
    }

    async fn up_pending_again(
        &mut self,
        kind: &str,
        tenant: &str,
        user_id: &str,
        message_id: &str,
    ) -> Result<()> {
        let q = sqlx::query(
            "UPDATE messages SET status = 'pending' WHERE direction = 'up' AND kind = $1 \
             AND tenant = $2 AND user_id = $3 AND message_id = $4 AND status = 'failed'",
        )
        .bind(kind)
        .bind(tenant)
        .bind(user_id)
        .bind(message_id);
        run(self, q).await
    }

    async fn insert_events(
        &mut self,
        events: &[EventInsert<'_>],
        now: OffsetDateTime,
    ) -> Result<()> {
        let rows = || events.iter().map(|e| e.event);
        let q = sqlx::query(INSERT_EVENTS)
            .bind(column(rows().map(|e| e.relay_id.as_str())))
            .bind(column(rows().map(|e| e.kind.as_str())))
            .bind(column(rows().map(|e| e.tenant.as_deref())))
            .bind(column(rows().map(|e| e.user_id.as_deref())))
            .bind(column(rows().map(|e| e.session_id.as_deref())))
            .bind(column(rows().map(|e| e.event_type.as_str())))
            .bind(column(rows().map(|e| e.ok)))
            .bind(column(events.iter().map(|e| e.body)))
            .bind(column(rows().map(|e| e.subject.as_str())))
            .bind(column(rows().map(|e| Ts::of(e.created_at))))
            .bind(column(events.iter().map(|e| e.publish)))
            .bind(Ts::of(now));
        run(self, q).await
    }

    async fn insert_satisfactions(&mut self, satisfactions: &[&SatisfactionRow]) -> Result<()> {
        let rows = || satisfactions.iter();
        let q = sqlx::query(INSERT_SATISFACTIONS)
            .bind(column(rows().map(|r| r.relay_id.as_str())))
            .bind(column(rows().map(|r| r.kind.as_str())))
            .bind(column(rows().map(|r| r.tenant.as_str())))
            .bind(column(rows().map(|r| r.user_id.as_str())))
            .bind(column(rows().map(|r| r.session_id.as_deref())))
            .bind(column(rows().map(|r| r.source.as_str())))
            .bind(column(rows().map(|r| r.score.as_str())))
            .bind(column(rows().map(|r| r.comment.as_deref())))
            .bind(column(rows().map(|r| r.inter_idx.as_deref())))
            .bind(column(rows().map(|r| r.result_code.as_str())))
            .bind(column(rows().map(|r| r.result_desc.as_deref())))
            .bind(column(rows().map(|r| Ts::of(r.created_at))));
        run(self, q).await
    }

    async fn insert_offline(&mut self, offline: &[&OfflineRow]) -> Result<()> {
        let rows = || offline.iter();
        let q = sqlx::query(INSERT_OFFLINE)
            .bind(column(rows().map(|r| r.relay_id.as_str())))
            .bind(column(rows().map(|r| r.kind.as_str())))
            .bind(column(rows().map(|r| r.tenant.as_str())))
            .bind(column(rows().map(|r| r.user_id.as_str())))
            .bind(column(rows().map(|r| r.session_id.as_deref())))
            .bind(column(rows().map(|r| r.source.as_str())))
            .bind(column(rows().map(|r| r.message_id.as_deref())))
            .bind(column(rows().map(|r| r.caller.as_deref())))
            .bind(column(rows().map(|r| r.content.as_str())))
            .bind(column(rows().map(|r| r.tip_text.as_deref())))
            .bind(column(rows().map(|r| r.result_code.as_str())))
            .bind(column(rows().map(|r| r.result_desc.as_deref())))
            .bind(column(rows().map(|r| Ts::of(r.created_at))));
        run(self, q).await
    }

    async fn insert_files(&mut self, files: &[&FileRow]) -> Result<()> {
        let rows = || files.iter();
        let q = sqlx::query(INSERT_FILES)
            .bind(column(rows().map(|r| r.relay_id.as_str())))
            .bind(column(rows().map(|r| r.kind.as_str())))
            .bind(column(rows().map(|r| r.tenant.as_str())))
            .bind(column(rows().map(|r| r.user_id.as_str())))
            .bind(column(rows().map(|r| r.session_id.as_deref())))
            .bind(column(rows().map(|r| r.media_type.as_str())))
            .bind(column(rows().map(|r| r.file_id.as_str())))
            .bind(column(rows().map(|r| r.file_type.as_str())))
            .bind(column(rows().map(|r| r.status.as_str())))
            .bind(column(rows().map(|r| r.size)))
            .bind(column(rows().map(|r| r.sha256.as_deref())))
            .bind(column(rows().map(|r| r.bucket.as_deref())))
            .bind(column(rows().map(|r| r.object.as_deref())))
            .bind(column(rows().map(|r| r.attempts as i32)))
            .bind(column(rows().map(|r| r.error_code.as_deref())))
            .bind(column(rows().map(|r| r.error_message.as_deref())))
            .bind(column(rows().map(|r| Ts::of(r.created_at))))
            .bind(column(rows().map(|r| Ts::of(r.updated_at))));
        run(self, q).await
    }

    async fn file_attempt_failed(
        &mut self,
        relay_id: &str,
        attempts: i64,
        error_code: &str,
        error_message: &str,
        at: OffsetDateTime,
    ) -> Result<()> {
        let q = sqlx::query(
            "UPDATE files SET attempts = $2, error_code = $3, error_message = $4, \
             updated_at = $5 WHERE relay_id = $1 AND status = 'pending'",
        )
        .bind(relay_id)
        .bind(attempts as i32)
        .bind(error_code)
        .bind(error_message)
        .bind(Ts::of(at));
        run(self, q).await
    }

    async fn finish_file(&mut self, done: &FileDone) -> Result<bool> {
        let q = sqlx::query(FINISH_FILE)
            .bind(&done.relay_id)
            .bind(done.status.as_str())
            .bind(done.size)
            .bind(&done.sha256)
            .bind(&done.bucket)
            .bind(&done.object)
            .bind(done.attempts as i32)
            .bind(&done.error_code)
            .bind(text::owned_opt(&done.error_message))
            .bind(Ts::of(done.at));
        changed(self, q).await
    }

    async fn upsert_tim_stream(&mut self, row: &TimStreamRow) -> Result<()> {
        let q = sqlx::query(TIM_STREAM_UPSERT)
            .bind(row.app.clone())
            .bind(row.user_id.clone())
            .bind(row.stream_id.clone())
            .bind(row.from_account.clone())
            .bind(row.msg_key.clone())
            .bind(&row.text)
            .bind(row.chunks)
            .bind(row.calls)
            .bind(row.last_seq)
            .bind(row.finished)
            .bind(row.status.as_str())
            .bind(row.error_code.clone())
            .bind(&row.error_info)
            .bind(Ts::of(row.created_at))
            .bind(Ts::of(row.updated_at));
        run(self, q).await
    }

    async fn insert_tim_callback(&mut self, row: &TimCallbackRow) -> Result<()> {
        let q = sqlx::query(TIM_CALLBACK_INSERT)
            .bind(row.relay_id.clone())
            .bind(row.app.clone())
            .bind(row.user_id.clone())
            .bind(row.command.clone())
            .bind(&row.body)
            .bind(row.published)
            .bind(Ts::of(row.created_at));
        run(self, q).await
    }

    async fn insert_outbox(
        &mut self,
        msg_id: &str,
        subject: &str,
        payload: &[u8],
        now: OffsetDateTime,
    ) -> Result<()> {
        let q = sqlx::query(
            "INSERT INTO outbox (msg_id, subject, payload, created_at, held) \
             VALUES ($1, $2, $3, $4, false)",
        )
        .bind(msg_id)
        .bind(subject)
        .bind(payload)
        .bind(Ts::of(now));
        run(self, q).await
    }

    async fn delete_outbox(&mut self, seqs: &[i64]) -> Result<()> {
        let q = sqlx::query("DELETE FROM outbox WHERE seq = ANY($1)").bind(seqs);
        run(self, q).await
    }

    async fn outbox_failed(
        &mut self,
        seq: i64,
        attempts: i64,
        next_attempt_at: OffsetDateTime,
        error: &str,
    ) -> Result<()> {
        let q = sqlx::query(
            "UPDATE outbox SET attempts = $2, next_attempt_at = $3, last_error = $4 \
             WHERE seq = $1",
        )
        .bind(seq)
        .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
        .bind(Ts::of(next_attempt_at))
        .bind(DeadLetter::clean(error));
        run(self, q).await
    }

    async fn outbox_to_dead_letter(
        &mut self,
        seq: i64,
        reason: &str,
        error: &str,
        at: OffsetDateTime,
    ) -> Result<Option<i64>> {
        sqlx::query_scalar(
            "INSERT INTO dead_letters (source, msg_id, subject, payload, reason, error, \
               attempts, created_at, dead_at) \
             SELECT 'outbox', msg_id, subject, payload, $2, $3, attempts, created_at, $4 \
             FROM outbox WHERE seq = $1 \
             ON CONFLICT (source, msg_id) DO UPDATE SET reason = excluded.reason, \
               error = excluded.error, attempts = excluded.attempts, dead_at = excluded.dead_at \
             RETURNING id",
        )
        .bind(seq)
        .bind(DeadLetter::clean(reason))
        .bind(DeadLetter::clean(error))
        .bind(Ts::of(at))
        .fetch_optional(self)
        .await
        .map_err(classify)
    }

    async fn release_outbox(&mut self, msg_id: &str, payload: &str) -> Result<()> {
        let q =
            sqlx::query("UPDATE outbox SET payload = $2, held = false WHERE held AND msg_id = $1")
                .bind(msg_id)
                .bind(payload.as_bytes());
        run(self, q).await
    }

    async fn insert_dead_letters(&mut self, dead: &[&DeadLetter]) -> Result<Vec<(String, i64)>> {
        let rows = || dead.iter();
        let clean = |s: Option<&String>| s.map(|s| DeadLetter::clean(s));
        sqlx::query_as(INSERT_DEAD_LETTERS)
            .bind(column(rows().map(|d| DeadLetter::clean(&d.source))))
            .bind(column(rows().map(|d| DeadLetter::clean(&d.msg_id))))
            .bind(column(rows().map(|d| DeadLetter::clean(&d.subject))))
            .bind(column(rows().map(|d| d.payload.as_slice())))
            .bind(column(rows().map(|d| clean(d.kind.as_ref()))))
            .bind(column(rows().map(|d| clean(d.tenant.as_ref()))))
            .bind(column(rows().map(|d| clean(d.user_id.as_ref()))))
            .bind(column(rows().map(|d| clean(d.message_id.as_ref()))))
            .bind(column(rows().map(|d| DeadLetter::clean(&d.reason))))
            .bind(column(rows().map(|d| DeadLetter::clean(&d.error))))
            .bind(column(
                rows().map(|d| i32::try_from(d.attempts).unwrap_or(i32::MAX)),
            ))
            .bind(column(rows().map(|d| Ts::of(d.created_at))))
            .bind(column(rows().map(|d| Ts::of(d.dead_at))))
            .fetch_all(self)
            .await
            .map_err(classify)
    }

    async fn take_dead_letter(&mut self, id: i64) -> Result<Option<DeadLetter>> {
        sqlx::query(sqlx::AssertSqlSafe(DEAD_LETTER_TAKE.as_str()))
            .bind(id)
            .fetch_optional(self)
            .await
            .map_err(classify)?
            .as_ref()
            .map(dead_letter_from_row)
            .transpose()
    }

    async fn delete_dead_letter(&mut self, id: i64) -> Result<bool> {
        let q = sqlx::query("DELETE FROM dead_letters WHERE id = $1").bind(id);
        changed(self, q).await
    }

    async fn summarize_session(
        &mut self,
        session_id: &str,
        at: OffsetDateTime,
    ) -> Result<Option<SessionSummary>> {
        sqlx::query(sqlx::AssertSqlSafe(SUMMARIZE_SESSION.as_str()))
            .bind(session_id)
            .bind(Ts::of(at))
            .fetch_optional(self)
            .await
            .map_err(classify)?
            .map(|r| summary::from_row(&SummaryColumns(&r)))
            .transpose()
    }

    async fn summarize_desk(
        &mut self,
        app: &str,
        session_id: &str,
        at: OffsetDateTime,
    ) -> Result<Option<SessionSummary>> {
        sqlx::query(sqlx::AssertSqlSafe(SUMMARIZE_DESK.as_str()))
            .bind(app)
            .bind(session_id)
            .bind(Ts::of(at))
            .fetch_optional(self)
            .await
            .map_err(classify)?
            .map(|r| summary::from_row(&SummaryColumns(&r)))
            .transpose()
    }
}

/// The summary of closed CEC session `$1`, as of `$2`, stored and returned.
static SUMMARIZE_SESSION: LazyLock<String> =
    LazyLock::new(|| summary::upsert("cec_session_summaries", "v.session_id = $1", "$2"));

/// The summary of Desk session `$2` of app `$1`, as of `$3`, stored and returned.
static SUMMARIZE_DESK: LazyLock<String> = LazyLock::new(|| {
    summary::upsert(
        "tim_session_summaries",
        "v.tenant = $1 AND v.session_id = $2",
        "$3",
    )
});

/// A row of `session_summaries` as PostgreSQL returns it.
struct SummaryColumns<'r>(&'r PgRow);

impl summary::Columns for SummaryColumns<'_> {
    fn text(&self, column: &str) -> Result<Option<String>> {
        get(self.0, column)
    }
    fn int(&self, column: &str) -> Result<Option<i64>> {
        get(self.0, column)
    }
    fn flag(&self, column: &str) -> Result<Option<bool>> {
        get(self.0, column)
    }
    fn time(&self, column: &str) -> Result<Option<OffsetDateTime>> {
        opt_ts(self.0, column)
    }
}

/// Deletes a dead letter, returning it.
static DEAD_LETTER_TAKE: LazyLock<String> = LazyLock::new(|| {
    format!("DELETE FROM dead_letters WHERE id = $1 RETURNING {DEAD_LETTER_COLUMNS}")
});

#[async_trait]
impl Backend for PgStore {
    async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("../../migrations/postgres")
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
        for w in writes.iter_mut() {
            text::write(w);
        }
        let mut conn = self.pool.acquire().await.map_err(classify)?;
        let result = write_batch_on(&mut conn, self.fencing.get().map(|f| &**f), writes).await;
        if let Err(e) = &result
            && e.refuses_writes()
        {
            // A read-only server (a demoted primary, a standby) or one out of resources: this
            // connection is not used again, so the next attempt connects afresh — to the new
            // primary, once the address points to it.
            conn.close_on_drop();
        }
        result
    }

    fn writers(&self) -> crate::group::Writers {
        crate::group::Writers::Tasks(crate::group::PG_WRITERS)
    }

    async fn purge(&self, step: &crate::privacy::Purge) -> Result<crate::privacy::Purged> {
        privacy::purge(&self.pool, step).await
    }

    async fn scrub(&self, tables: &[crate::privacy::Table]) -> Result<crate::privacy::Scrubbed> {
        privacy::scrub(&self.pool, tables).await
    }

    async fn record_erasure(&self, erasure: &crate::privacy::Erasure) -> Result<i64> {
        privacy::record_erasure(&self.pool, erasure).await
    }

    fn leases(&self) -> Option<cluster::Leases> {
        Some(cluster::Leases::new(self.pool.clone()))
    }

    fn set_fencing(&self, fencing: std::sync::Arc<crate::cluster::Fencing>) {
        let _ = self.fencing.set(fencing);
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl Queries for PgStore {
    async fn up_lookup(
        &self,
        kind: &str,
        tenant: &str,
        user_id: &str,
        message_id: &str,
    ) -> Result<UpLookup> {
        let row = sqlx::query(sqlx::AssertSqlSafe(UP_LOOKUP.as_str()))
            .bind(kind)
            .bind(tenant)
            .bind(user_id)
            .bind(message_id)
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        let status: Option<String> = get(&row, "up_status")?;
        let id: Option<String> = get(&row, "id")?;
        Ok(UpLookup {
            status: status.as_deref().map(MessageStatus::parse).transpose()?,
            session: id.map(|_| session_from_row(&row)).transpose()?,
        })
    }

    async fn open_session(
        &self,
        kind: &str,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<Session>> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions \
             WHERE kind = $1 AND tenant = $2 AND user_id = $3 AND state <> 'closed'"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(kind)
            .bind(tenant)
            .bind(user_id)
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
        // One statement per filter combination, so each can use its index; PostgreSQL wants
        // every parameter used, so absent filters get a trivially true test.
        let filter = match (tenant.is_some(), state.is_some()) {
            (false, false) => "WHERE $2::text IS NULL AND $3::text IS NULL",
            (true, false) => "WHERE tenant = $2 AND $3::text IS NULL",
            (false, true) => "WHERE $2::text IS NULL AND state = $3",
            (true, true) => "WHERE tenant = $2 AND state = $3",
        };
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions {filter} \
             ORDER BY opened_at DESC, id DESC LIMIT $1"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(limit.max(0))
            .bind(tenant)
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
             WHERE NOT held AND (attempts = 0 OR next_attempt_at <= $2) \
             AND NOT EXISTS (SELECT 1 FROM outbox h \
               WHERE h.held AND h.subject = o.subject AND h.seq < o.seq) \
             AND NOT EXISTS (SELECT 1 FROM outbox r \
               WHERE r.attempts > 0 AND r.subject = o.subject AND r.seq < o.seq) \
             ORDER BY seq LIMIT $1",
        )
        .bind(limit.max(0))
        .bind(Ts::of(OffsetDateTime::now_utc()))
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
                attempts: i64::from(get::<i32>(row, "attempts")?),
            })
        })
        .collect()
    }

    async fn outbox_stats(&self) -> Result<OutboxStats> {
        let row = sqlx::query(
            "SELECT count(*) AS pending, \
             (SELECT created_at FROM outbox ORDER BY seq LIMIT 1) AS oldest, \
             (SELECT created_at FROM outbox WHERE NOT held AND attempts = 0 \
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
        let sql = format!("SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters ORDER BY id LIMIT $1");
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
                "SELECT 1 FROM messages WHERE relay_id = $1 AND kind = $2 AND tenant = $3 AND user_id = $4",
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
             WHERE kind = $1 AND tenant = $2 AND user_id = $3 \
               AND ($4::text IS NULL OR (created_at, id) > \
                    (SELECT created_at, id FROM messages WHERE relay_id = $4)) \
             ORDER BY created_at, id LIMIT $5"
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
            "SELECT {TIM_STREAM_COLUMNS} FROM tim_streams WHERE app = $1 AND stream_id = $2"
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
             WHERE app = $1 AND user_id = $2 ORDER BY created_at, id"
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
             WHERE app = $1 AND finished = $2 AND status = 'pending' ORDER BY created_at, id LIMIT $3"
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
             WHERE app = $1 ORDER BY created_at, id LIMIT $2"
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
             JOIN outbox o ON o.held AND o.msg_id = f.relay_id \
             WHERE f.status = 'pending' ORDER BY f.created_at, f.id LIMIT $1",
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
        privacy::erasures(&self.pool, limit).await
    }

    async fn summaries_page(&self, page: &SummaryPage) -> Result<Vec<SessionSummary>> {
        let (sql, args) = page.query(|n| format!("${n}"));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in args {
            q = match a {
                summary::Arg::Time(t) => q.bind(Ts::of(t)),
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
             WHERE kind = $1 AND tenant = $2 AND session_id = $3",
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
             WHERE kind = $1 AND tenant = $2 AND user_id = $3 \
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

// --- Tencent IM: streams and callbacks ---------------------------------------------------

const TIM_STREAM_COLUMNS: &str = "app, user_id, stream_id, from_account, msg_key, text, chunks, \
     calls, last_seq, finished, status, error_code, error_info, created_at, updated_at";

const TIM_STREAM_UPSERT: &str = "INSERT INTO tim_streams (app, user_id, stream_id, from_account, \
     msg_key, text, chunks, calls, last_seq, finished, status, error_code, error_info, created_at, \
     updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
     ON CONFLICT (app, stream_id) DO UPDATE SET user_id = excluded.user_id, \
     from_account = excluded.from_account, msg_key = excluded.msg_key, text = excluded.text, \
     chunks = excluded.chunks, calls = excluded.calls, last_seq = excluded.last_seq, \
     finished = excluded.finished, status = excluded.status, error_code = excluded.error_code, \
     error_info = excluded.error_info, updated_at = excluded.updated_at";

const TIM_CALLBACK_COLUMNS: &str =
    "relay_id, app, user_id, command, body::text AS body, published, created_at";

const TIM_CALLBACK_INSERT: &str = "INSERT INTO tim_callbacks (relay_id, app, user_id, command, \
     body, published, created_at) VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7)";

fn tim_stream_from_row(row: &PgRow) -> Result<TimStreamRow> {
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
        finished: get::<bool>(row, "finished")?,
        status: MessageStatus::parse(&get::<String>(row, "status")?)?,
        error_code: get(row, "error_code")?,
        error_info: get(row, "error_info")?,
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
    })
}

fn tim_callback_from_row(row: &PgRow) -> Result<TimCallbackRow> {
    Ok(TimCallbackRow {
        relay_id: get(row, "relay_id")?,
        app: get(row, "app")?,
        user_id: get(row, "user_id")?,
        command: get(row, "command")?,
        body: get(row, "body")?,
        published: get::<bool>(row, "published")?,
        created_at: ts(row, "created_at")?,
    })
}
