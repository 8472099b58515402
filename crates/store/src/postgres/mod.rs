//! The PostgreSQL [`crate::Backend`].
//!
//! Same tables as SQLite (see `migrations/postgres`), with `timestamptz` timestamps, `jsonb`
//! bodies and `bytea` outbox payloads. A commit costs a fixed number of round trips whatever its
//! size: the downlink messages (with their outbox rows) and the events (with theirs) each go in
//! one statement, as arrays expanded with `UNNEST`.

mod text;

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

use crate::{
    Applied, Backend, Commit, Committed, DeadLetter, Direction, DownRecord, EventRecord, FileDone,
    FileRow, FileStatus, MessagePage, MessageRow, MessageStatus, OfflineRow, OfflineSource,
    OutboxRow, OutboxStats, PendingFile, Queries, Result, SatisfactionRow, SatisfactionSource,
    Session, SessionChange, SessionState, StoreError, TimCallbackRow, TimStreamRow, UpBegin,
    UpLookup, UpOutcome, Write, Written, check_commits, classify, committed_each, from_unix_micros,
    invalid, unix_micros, with_dead_letter,
};

/// How long a caller waits for a free connection before getting a retryable error.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: u32 = 8;

/// PostgreSQL-backed store.
pub struct PgStore {
    pool: PgPool,
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
        Ok(PgStore { pool })
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

/// Moves `last_activity_at` forward for each distinct id (the latest time given wins) and
/// returns the ids it found.
const TOUCH_SESSIONS: &str = "UPDATE sessions s SET last_activity_at = \
     greatest(s.last_activity_at, t.at) \
     FROM (SELECT id, max(at) AS at FROM unnest($1::text[], $2::timestamptz[]) AS u(id, at) \
           GROUP BY id) t \
     WHERE s.id = t.id RETURNING s.id";

const UPDATE_UP: &str = "UPDATE messages SET status = $5, result_code = $6, result_desc = $7, \
     session_id = coalesce($8, session_id) \
     WHERE kind = $1 AND tenant = $2 AND user_id = $3 AND message_id = $4 AND direction = 'up'";

/// Inserts the down rows in the order given, skipping those whose message_code is known (or
/// repeated within the batch), and an outbox row for each one inserted, in the same order.
/// Returns the relay ids inserted.
const INSERT_DOWNS: &str = "WITH input AS ( \
       SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
           $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], \
           $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::int8[], \
           $18::timestamptz[], $19::text[], $20::text[], $21::bytea[], $22::bool[]) \
           WITH ORDINALITY \
         AS t(relay_id, kind, tenant, user_id, session_id, direction, message_id, \
           message_code, source_type, control_type, media_type, content, body, status, \
           result_code, result_desc, stream_seq, created_at, msg_id, subject, payload, held, \
           ord) \
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
       SELECT msg_id, subject, payload, $23, held FROM input \
       WHERE relay_id IN (SELECT relay_id FROM ins) AND NOT (msg_id = ANY($24)) ORDER BY ord \
     ) \
     SELECT relay_id FROM ins";

/// Inserts the events and their outbox rows, in the order given.
const INSERT_EVENTS: &str = "WITH input AS ( \
       SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
           $6::text[], $7::bool[], $8::text[], $9::text[], $10::timestamptz[]) WITH ORDINALITY \
         AS t(relay_id, kind, tenant, user_id, session_id, event_type, ok, body, subject, \
           created_at, ord) \
     ), ev AS ( \
       INSERT INTO events (relay_id, kind, tenant, user_id, session_id, event_type, ok, body, \
           subject, created_at) \
       SELECT relay_id, kind, tenant, user_id, session_id, event_type, ok, body::jsonb, \
           subject, created_at \
       FROM input ORDER BY ord \
     ) \
     INSERT INTO outbox (msg_id, subject, payload, created_at) \
     SELECT relay_id, subject, convert_to(body, 'UTF8'), $11 FROM input \
     WHERE NOT (relay_id = ANY($12)) ORDER BY ord";

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

/// After an UPDATE of a session matched nothing: fine if the session exists (closed, so the
/// change is moot), a caller's bug if it does not.
async fn require_session(conn: &mut PgConnection, id: &str) -> Result<()> {
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

/// One column of a batch, as an array parameter.
fn column<'a, T: 'a>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    items.into_iter().collect()
}

/// A session change inside the transaction `conn` is in.
async fn apply_session_change(conn: &mut PgConnection, change: &SessionChange) -> Result<()> {
    match change {
        SessionChange::Open(s) => {
            sqlx::query(INSERT_SESSION)
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
                .bind(Ts::of(s.last_activity_at))
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
                .bind(id)
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
                .bind(id)
                .bind(Ts::of(*at))
                .bind(reason)
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
async fn apply_up_outcome(conn: &mut PgConnection, up: &UpOutcome) -> Result<()> {
    let r = sqlx::query(UPDATE_UP)
        .bind(&up.kind)
        .bind(&up.tenant)
        .bind(&up.user_id)
        .bind(&up.message_id)
        .bind(up.status.as_str())
        .bind(&up.result_code)
        .bind(&up.result_desc)
        .bind(&up.session_id)
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
/// Each table's rows of all of them go in one statement (arrays, `unnest`): a statement is a
/// round trip to the server, so a batch of 200 commits makes about ten, not a thousand. The
/// commits are concurrent writes (each caller waits for its own), so applying their parts table
/// by table is applying them in some order; within each commit its parts keep their documented
/// order, and outbox rows keep commit order within the downs and within the events.
async fn apply(conn: &mut PgConnection, commits: &[&Commit]) -> Result<Vec<Committed>> {
    check_commits(commits)?;
    let now = Ts::of(OffsetDateTime::now_utc());

    for c in commits {
        for change in &c.sessions {
            apply_session_change(conn, change).await?;
        }
        if let Some(up) = &c.up {
            apply_up_outcome(conn, up).await?;
        }
    }

    let up_rows: Vec<&MessageRow> = commits.iter().filter_map(|c| c.up_row.as_ref()).collect();
    if !up_rows.is_empty() {
        let rows = || up_rows.iter();
        sqlx::query(UPSERT_UPS)
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
            .bind(column(rows().map(|r| Ts::of(r.created_at))))
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
    }

    let held: std::collections::HashSet<&str> = commits
        .iter()
        .flat_map(|c| &c.files)
        .map(|f| f.relay_id.as_str())
        .collect();
    // Outbox messages set aside: stored without their outbox rows.
    let set_aside: Vec<String> = commits
        .iter()
        .flat_map(|c| &c.set_aside)
        .map(|s| s.dead.msg_id.clone())
        .collect();
    let downs: Vec<&DownRecord> = commits.iter().flat_map(|c| &c.down).collect();
    let mut inserted_downs = std::collections::HashSet::new();
    if !downs.is_empty() {
        let rows = || downs.iter().map(|d| &d.row);
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
            .bind(column(downs.iter().map(|d| d.publish.msg_id.as_str())))
            .bind(column(downs.iter().map(|d| d.publish.subject.as_str())))
            .bind(column(downs.iter().map(|d| d.publish.payload.as_slice())))
            .bind(column(
                downs.iter().map(|d| held.contains(d.row.relay_id.as_str())),
            ))
            .bind(now)
            .bind(&set_aside)
            .fetch_all(&mut *conn)
            .await
            .map_err(classify)?;
        inserted_downs.extend(inserted);
    }
    // The dead letters of the messages set aside, then the events announcing them (with the
    // dead letters' ids) beside the commits' own events.
    let dead: Vec<&DeadLetter> = commits
        .iter()
        .flat_map(|c| c.set_aside_stored(&inserted_downs))
        .map(|s| &s.dead)
        .collect();
    let mut dead_ids = std::collections::HashMap::new();
    if !dead.is_empty() {
        let rows = || dead.iter();
        let clean = |s: Option<&String>| s.map(|s| DeadLetter::clean(s));
        let ids: Vec<(String, i64)> = sqlx::query_as(INSERT_DEAD_LETTERS)
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
            .fetch_all(&mut *conn)
            .await
            .map_err(classify)?;
        dead_ids.extend(ids);
    }
    let announced: Vec<EventRecord> = commits
        .iter()
        .flat_map(|c| c.set_aside_stored(&inserted_downs))
        .filter_map(|s| {
            let mut e = s.event.clone()?;
            e.body = with_dead_letter(&e.body, dead_ids.get(&s.dead.msg_id).copied());
            Some(e)
        })
        .collect();
    let events: Vec<&EventRecord> = commits
        .iter()
        .flat_map(|c| &c.events)
        .chain(&announced)
        .collect();
    if !events.is_empty() {
        let events = || events.iter();
        sqlx::query(INSERT_EVENTS)
            .bind(column(events().map(|e| e.relay_id.as_str())))
            .bind(column(events().map(|e| e.kind.as_str())))
            .bind(column(events().map(|e| e.tenant.as_deref())))
            .bind(column(events().map(|e| e.user_id.as_deref())))
            .bind(column(events().map(|e| e.session_id.as_deref())))
            .bind(column(events().map(|e| e.event_type.as_str())))
            .bind(column(events().map(|e| e.ok)))
            .bind(column(events().map(|e| e.body.as_str())))
            .bind(column(events().map(|e| e.subject.as_str())))
            .bind(column(events().map(|e| Ts::of(e.created_at))))
            .bind(now)
            .bind(&set_aside)
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
    }

    let satisfactions: Vec<&SatisfactionRow> =
        commits.iter().flat_map(|c| &c.satisfactions).collect();
    if !satisfactions.is_empty() {
        let rows = || satisfactions.iter();
        sqlx::query(INSERT_SATISFACTIONS)
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
            .bind(column(rows().map(|r| Ts::of(r.created_at))))
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
    }

    let offline: Vec<&OfflineRow> = commits.iter().flat_map(|c| &c.offline).collect();
    if !offline.is_empty() {
        let rows = || offline.iter();
        sqlx::query(INSERT_OFFLINE)
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
            .bind(column(rows().map(|r| Ts::of(r.created_at))))
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
    }

    let files: Vec<&FileRow> = commits
        .iter()
        .flat_map(|c| &c.files)
        .filter(|f| inserted_downs.contains(&f.relay_id))
        .collect();
    if !files.is_empty() {
        let rows = || files.iter();
        sqlx::query(INSERT_FILES)
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
            .bind(column(rows().map(|r| Ts::of(r.updated_at))))
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
    }

    let touch: Vec<&(String, OffsetDateTime)> = commits.iter().flat_map(|c| &c.touch).collect();
    if !touch.is_empty() {
        let found: Vec<String> = sqlx::query_scalar(TOUCH_SESSIONS)
            .bind(column(touch.iter().map(|(id, _)| id.as_str())))
            .bind(column(touch.iter().map(|(_, at)| Ts::of(*at))))
            .fetch_all(&mut *conn)
            .await
            .map_err(classify)?;
        let found: std::collections::HashSet<String> = found.into_iter().collect();
        if let Some((missing, _)) = touch.iter().find(|(id, _)| !found.contains(id)) {
            return Err(StoreError::Corrupt(format!(
                "touch of session {missing:?}, which does not exist"
            )));
        }
    }

    // RETURNING comes in no particular order: each commit's downs are reported in its order.
    Ok(committed_each(commits, &inserted_downs, &dead_ids))
}

impl PgStore {
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
async fn write_batch_on(conn: &mut PgConnection, writes: &[Write]) -> Result<Vec<Written>> {
    let mut tx = sqlx::Connection::begin(conn).await.map_err(classify)?;
    // On error `tx` is dropped, which rolls everything back.
    let mut done = Vec::with_capacity(writes.len());
    let mut commits = Vec::new();
    for w in writes {
        let applied = apply_write(&mut tx, w).await?;
        done.push(applied.keep_commit(&mut commits));
    }
    let committed = apply(&mut tx, &commits).await?;
    tx.commit().await.map_err(classify)?;
    Applied::results(done, committed)
}

/// One [`Write`] inside the transaction `conn` is in, but for its commit, if it has one.
async fn apply_write<'w>(conn: &mut PgConnection, w: &'w Write) -> Result<Applied<'w>> {
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
        Write::OutboxFailed {
            seq,
            attempts,
            next_attempt_at,
            error,
        } => {
            outbox_failed_on(conn, *seq, *attempts, *next_attempt_at, error).await?;
            Applied::Done(Written::Done)
        }
        Write::OutboxDead {
            seq,
            reason,
            error,
            event,
        } => {
            let id = outbox_dead_on(conn, *seq, reason, error, event.as_ref()).await?;
            Applied::Done(Written::Id(id))
        }
        Write::DeadLetterAdd(d) => Applied::Done(Written::Id(dead_letter_add_on(conn, d).await?)),
        Write::DeadLetterRetry { id, fresh_msg_id } => {
            let d = dead_letter_retry_on(conn, *id, fresh_msg_id).await?;
            Applied::Done(Written::Retried(d.map(Box::new)))
        }
        Write::DeadLetterDrop(id) => {
            Applied::Done(Written::Changed(dead_letter_drop_on(conn, *id).await?))
        }
        Write::FileAttemptFailed {
            relay_id,
            attempts,
            error_code,
            error_message,
        } => {
            file_attempt_failed_on(conn, relay_id, *attempts, error_code, error_message).await?;
            Applied::Done(Written::Done)
        }
        Write::FinishFile(done) => {
            Applied::Done(Written::Changed(finish_file_on(conn, done).await?))
        }
    })
}

async fn outbox_failed_on(
    conn: &mut PgConnection,
    seq: i64,
    attempts: i64,
    next_attempt_at: OffsetDateTime,
    error: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE outbox SET attempts = $2, next_attempt_at = $3, last_error = $4 WHERE seq = $1",
    )
    .bind(seq)
    .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
    .bind(Ts::of(next_attempt_at))
    .bind(DeadLetter::clean(error))
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

async fn outbox_dead_on(
    conn: &mut PgConnection,
    seq: i64,
    reason: &str,
    error: &str,
    event: Option<&EventRecord>,
) -> Result<Option<i64>> {
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO dead_letters (source, msg_id, subject, payload, reason, error, attempts, \
           created_at, dead_at) \
         SELECT 'outbox', msg_id, subject, payload, $2, $3, attempts, created_at, $4 \
         FROM outbox WHERE seq = $1 \
         ON CONFLICT (source, msg_id) DO UPDATE SET reason = excluded.reason, \
           error = excluded.error, attempts = excluded.attempts, dead_at = excluded.dead_at \
         RETURNING id",
    )
    .bind(seq)
    .bind(DeadLetter::clean(reason))
    .bind(DeadLetter::clean(error))
    .bind(Ts::of(OffsetDateTime::now_utc()))
    .fetch_optional(&mut *conn)
    .await
    .map_err(classify)?;
    if let (Some(id), Some(e)) = (id, event) {
        let body = text::json(&with_dead_letter(&e.body, Some(id)));
        sqlx::query(
            "INSERT INTO events (relay_id, kind, tenant, user_id, session_id, event_type, ok, \
               body, subject, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10)",
        )
        .bind(&e.relay_id)
        .bind(&e.kind)
        .bind(&e.tenant)
        .bind(&e.user_id)
        .bind(&e.session_id)
        .bind(&e.event_type)
        .bind(e.ok)
        .bind(&body)
        .bind(&e.subject)
        .bind(Ts::of(e.created_at))
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
        sqlx::query(
            "INSERT INTO outbox (msg_id, subject, payload, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&e.relay_id)
        .bind(&e.subject)
        .bind(body.as_bytes())
        .bind(Ts::of(OffsetDateTime::now_utc()))
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    }
    sqlx::query("DELETE FROM outbox WHERE seq = $1")
        .bind(seq)
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    Ok(id)
}

async fn dead_letter_add_on(conn: &mut PgConnection, d: &DeadLetter) -> Result<Option<i64>> {
    sqlx::query_scalar(
        "INSERT INTO dead_letters (source, msg_id, subject, payload, kind, tenant, user_id, \
           message_id, reason, error, attempts, created_at, dead_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (source, msg_id) DO NOTHING RETURNING id",
    )
    .bind(DeadLetter::clean(&d.source))
    .bind(DeadLetter::clean(&d.msg_id))
    .bind(DeadLetter::clean(&d.subject))
    .bind(&d.payload)
    .bind(d.kind.as_deref().map(DeadLetter::clean))
    .bind(d.tenant.as_deref().map(DeadLetter::clean))
    .bind(d.user_id.as_deref().map(DeadLetter::clean))
    .bind(d.message_id.as_deref().map(DeadLetter::clean))
    .bind(DeadLetter::clean(&d.reason))
    .bind(DeadLetter::clean(&d.error))
    .bind(i32::try_from(d.attempts).unwrap_or(i32::MAX))
    .bind(Ts::of(d.created_at))
    .bind(Ts::of(d.dead_at))
    .fetch_optional(&mut *conn)
    .await
    .map_err(classify)
}

async fn dead_letter_retry_on(
    conn: &mut PgConnection,
    id: i64,
    fresh_msg_id: &str,
) -> Result<Option<DeadLetter>> {
    let sql = format!("DELETE FROM dead_letters WHERE id = $1 RETURNING {DEAD_LETTER_COLUMNS}");
    let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(classify)?
    else {
        return Ok(None);
    };
    let d = dead_letter_from_row(&row)?;
    let msg_id = if d.source == super::dead_source::OUTBOX {
        d.msg_id.as_str()
    } else {
        fresh_msg_id
    };
    sqlx::query(
        "INSERT INTO outbox (msg_id, subject, payload, created_at, held) \
         VALUES ($1, $2, $3, $4, false)",
    )
    .bind(msg_id)
    .bind(&d.subject)
    .bind(&d.payload)
    .bind(Ts::of(OffsetDateTime::now_utc()))
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    if let (Some(k), Some(t), Some(u), Some(m)) = (&d.kind, &d.tenant, &d.user_id, &d.message_id) {
        sqlx::query(
            "UPDATE messages SET status = 'pending' WHERE direction = 'up' AND kind = $1 \
             AND tenant = $2 AND user_id = $3 AND message_id = $4 AND status = 'failed'",
        )
        .bind(k)
        .bind(t)
        .bind(u)
        .bind(m)
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    }
    Ok(Some(d))
}

async fn dead_letter_drop_on(conn: &mut PgConnection, id: i64) -> Result<bool> {
    let r = sqlx::query("DELETE FROM dead_letters WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    Ok(r.rows_affected() > 0)
}

async fn file_attempt_failed_on(
    conn: &mut PgConnection,
    relay_id: &str,
    attempts: i64,
    error_code: &str,
    error_message: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE files SET attempts = $2, error_code = $3, error_message = $4, \
         updated_at = $5 WHERE relay_id = $1 AND status = 'pending'",
    )
    .bind(relay_id)
    .bind(attempts as i32)
    .bind(error_code)
    .bind(error_message)
    .bind(Ts::of(OffsetDateTime::now_utc()))
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

async fn finish_file_on(conn: &mut PgConnection, done: &FileDone) -> Result<bool> {
    if done.status == FileStatus::Pending {
        return Err(invalid("finish_file needs status stored or failed"));
    }
    let r = sqlx::query(FINISH_FILE)
        .bind(&done.relay_id)
        .bind(done.status.as_str())
        .bind(done.size)
        .bind(&done.sha256)
        .bind(&done.bucket)
        .bind(&done.object)
        .bind(done.attempts as i32)
        .bind(&done.error_code)
        .bind(text::owned_opt(&done.error_message))
        .bind(Ts::of(done.at))
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    if r.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query("UPDATE messages SET body = $2::jsonb WHERE relay_id = $1")
        .bind(&done.relay_id)
        .bind(text::json(&done.payload))
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    sqlx::query("UPDATE outbox SET payload = $2, held = false WHERE held AND msg_id = $1")
        .bind(&done.relay_id)
        .bind(done.payload.as_bytes())
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    Ok(true)
}

async fn begin_up_on(conn: &mut PgConnection, row: &MessageRow) -> Result<UpBegin> {
    if row.direction != Direction::Up {
        return Err(invalid("begin_up takes an up row"));
    }
    let Some(message_id) = &row.message_id else {
        return Err(invalid("begin_up needs the up row's message_id"));
    };
    let r = sqlx::query(INSERT_UP)
        .bind(&row.relay_id)
        .bind(&row.kind)
        .bind(&row.tenant)
        .bind(&row.user_id)
        .bind(&row.session_id)
        .bind(message_id)
        .bind(&row.message_code)
        .bind(&row.source_type)
        .bind(&row.control_type)
        .bind(&row.media_type)
        .bind(&row.content)
        .bind(&row.body)
        .bind(&row.result_code)
        .bind(&row.result_desc)
        .bind(row.stream_seq)
        .bind(Ts::of(row.created_at))
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    if r.rows_affected() == 1 {
        return Ok(UpBegin::New);
    }
    let status: String = sqlx::query_scalar(UP_STATUS)
        .bind(&row.kind)
        .bind(&row.tenant)
        .bind(&row.user_id)
        .bind(message_id)
        .fetch_one(&mut *conn)
        .await
        .map_err(classify)?;
    Ok(match MessageStatus::parse(&status)? {
        MessageStatus::Pending => UpBegin::Pending,
        done => UpBegin::Done(done),
    })
}

async fn set_token_on(
    conn: &mut PgConnection,
    session_id: &str,
    token: Option<&str>,
) -> Result<()> {
    let r = sqlx::query("UPDATE sessions SET token = $2 WHERE id = $1")
        .bind(session_id)
        .bind(token)
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

async fn outbox_done_on(conn: &mut PgConnection, seqs: &[i64]) -> Result<()> {
    if seqs.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM outbox WHERE seq = ANY($1)")
        .bind(seqs)
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    Ok(())
}

async fn tim_stream_on(conn: &mut PgConnection, row: &TimStreamRow) -> Result<()> {
    sqlx::query(TIM_STREAM_UPSERT)
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
        .bind(Ts::of(row.updated_at))
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    Ok(())
}

async fn tim_callback_on(conn: &mut PgConnection, row: &TimCallbackRow) -> Result<()> {
    sqlx::query(TIM_CALLBACK_INSERT)
        .bind(row.relay_id.clone())
        .bind(row.app.clone())
        .bind(row.user_id.clone())
        .bind(row.command.clone())
        .bind(&row.body)
        .bind(row.published)
        .bind(Ts::of(row.created_at))
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    Ok(())
}

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
        let result = write_batch_on(&mut conn, writes).await;
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

    async fn messages_page(&self, page: &MessagePage) -> Result<Vec<MessageRow>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE created_at >= $1 AND created_at < $2 AND ($3::text IS NULL OR tenant = $3) \
               AND (created_at > $4 OR (created_at = $4 AND relay_id > $5)) \
             ORDER BY created_at, relay_id LIMIT $6"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(Ts::of(page.since))
            .bind(Ts::of(page.until))
            .bind(page.tenant.clone())
            .bind(Ts::of(page.after.0))
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
