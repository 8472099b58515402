//! Persistence: one [`Store`] — group commit, the commit-and-retry path and the database's
//! health — over a [`Backend`]: SQLite ([`sqlite`]) or PostgreSQL ([`postgres`]), chosen by the
//! `store.url` scheme ([`connect`]). A backend does two things: it applies a batch of [`Write`]s
//! in one transaction ([`Backend::write_batch`]) and it answers the reads ([`Queries`]). The rows
//! ([`MessageRow`], [`Session`], …), the errors and their classification ([`StoreError`]) are
//! defined here, once for both; the migrations are the top-level `migrations/`, embedded.
//!
//! The relay never writes piecemeal. Everything one step of work produces — transcript rows,
//! session changes, events and the outbox rows that will publish them — goes into one [`Commit`],
//! applied in one transaction. So a crash leaves either all of it or none of it, and whatever must
//! reach NATS is in the outbox the moment it is in the transcript.
//!
//! Tables (same shape in both databases, see `migrations/`):
//! - `sessions`: one row per CEC session; at most one not-closed row per (kind, tenant, user).
//! - `messages`: the transcript, both directions. Up rows are keyed by (kind, tenant, user,
//!   message_id) — the idempotency key — and carry a delivery status. Down rows are de-duplicated
//!   by (kind, tenant, user, message_code) when the upstream gives a code.
//! - `events`: every event the relay emitted.
//! - `satisfactions`: satisfaction results, customer evaluations (`saveSatisfaction`, score
//!   "1"–"5") and robot feedback (`feedbacksatisfaction`, score "1" or "0"), with the upstream's
//!   answer.
//! - `offline_messages`: what the contact center kept for later: a send it answered in offline
//!   mode (keyed, like up rows, by (kind, tenant, user, message_id): a redelivered one is stored
//!   once) and leave-messages (`doLeaveMessage`), with the upstream's answer.
//! - `files`: media the contact center sent down, downloaded into the NATS object store: one
//!   row per DownMessage, pending until downloaded (or given up), with its size, sha256, bucket,
//!   object and the last error.
//! - `erasures`: the audit of erasures (who asked, when, a hash of whom, how many rows went):
//!   [`privacy`], which also has retention's and erasure's deletions.
//! - `session_summaries`: one row per conversation — a CEC session once closed, a Tencent Desk
//!   session as of its latest event — with its figures ([`summary`]), computed in SQL from the
//!   rows above in the transaction that closes the session.
//! - `outbox`: what is still to be published, in commit order. A row is deleted once JetStream
//!   acknowledged it; so a transcript row is published exactly when no outbox row holds its id.
//!   A *held* row (a DownMessage whose file is being downloaded) is not published, nor is any
//!   later row of the same subject, until [`Queries::finish_file`] releases it.
//!
//! Timestamps are kept at microsecond precision (PostgreSQL `timestamptz`; in SQLite an INTEGER of
//! microseconds since the Unix epoch) and read back in UTC: finer digits are dropped, rounding
//! down ([`to_store_precision`]). JSON bodies come back as stored: byte for byte from SQLite, and
//! normalised by `jsonb` (same JSON value, whitespace and key order may differ) from PostgreSQL.
//!
//! A [`Commit`] is applied in the order of its fields: session changes, the up outcome, the down
//! records, the events, the satisfactions, the offline messages, the files, the touches, and last
//! the summaries ([`Commit::summaries`], and those of the sessions it closed), from everything
//! before them; its outbox rows follow the inserted downs (held when the commit has a file for
//! them), then the events, then the `session.summary` events; a message set aside ([`Commit::set_aside`]) has no outbox row, and its dead letter and
//! `error` event are stored with the commit's events instead. Transcripts, events, satisfactions
//! and offline messages read back ordered by `created_at`, ties in insertion order.
//!
//! **Group commit.** The writes ([`Write`]) of many tasks share transactions: the [`Store`]
//! queues each caller's write and a writer applies what has queued up, in order, in one
//! transaction ([`Backend::write_batch`]; see [`group`]), so a thousand callers cost a handful of
//! commits (fsyncs) instead of a thousand, and SQLite's one write lock is never fought over. Each
//! caller still gets its own result, and its write is still all or nothing: when a batch fails
//! for a reason other than the database being away, its writes are applied again one by one, so a
//! bad write fails alone. Every write goes this way, the updates of one row included.
//!
//! Bodies must be JSON (both stores refuse anything else; PostgreSQL's `jsonb` also refuses the
//! escape `\u0000`). A commit that names a session which does not exist (`SetState`, `Close`, a
//! touch, a row's `session_id`) or an up outcome whose row was never begun is a bug in the
//! caller: it fails, non-retryably, and nothing of it is kept. `SetState` and `Close` on a
//! closed session change nothing.
//!
//! A relay on SQLite holds its database's [`instance_lock`] for its lifetime, so a second relay on
//! the same file refuses to start; on PostgreSQL several relays are one service (docs/HA.md).

mod apply;
pub mod cluster;
pub mod deadletter;
mod fit;
pub mod group;
mod health;
mod lock;
pub mod metrics;
mod paged;
pub mod postgres;
pub mod privacy;
mod records;
pub mod sqlite;
mod store;
pub mod summary;

pub use fit::{DEFAULT_MAX_PAYLOAD, PublishLimit};
pub use health::StoreHealth;
pub use lock::{InstanceLock, LockError, instance_lock};
pub use paged::{ExportKey, ExportPage, Keyed};
pub use records::{event_record, now};
pub use store::{Options, Store};
pub use summary::{SessionSummary, SummaryPage, SummaryRequest};

use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;

/// What can go wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or the connection broke: retry later.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A query failed for a reason retrying will not fix (constraint, bad data, bug).
    #[error("database error: {0}")]
    Query(#[source] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported store url {0:?}: expected sqlite:… or postgres:…")]
    UnsupportedUrl(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// A statement of the SQLite writer failed (it calls SQLite directly: `sqlite/write.rs`);
    /// busy and locked are retryable, like sqlx's.
    #[error("database error: {error}")]
    Sqlite {
        #[source]
        error: rusqlite::Error,
        retryable: bool,
    },
    /// The transaction this write shared with others failed (see [`group`]); the error is the
    /// batch's, so retrying is as sensible as it says.
    #[error("{0}")]
    Batch(Arc<StoreError>),
    /// The write's partition is no longer this instance's (its lease ran out or another member
    /// took it over): refused, nothing of it applied. The work belongs to the partition's owner
    /// now; see [`cluster`].
    #[error("partition {partition} is no longer owned by this relay: write refused (fenced)")]
    Fenced { partition: u32 },
    /// The cluster's set-up in the database does not match this relay's.
    #[error("cluster: {0}")]
    Cluster(String),
}

impl StoreError {
    /// Whether the same call may succeed later: connection problems, pool timeouts, busy, and a
    /// database that refuses writes for now ([`Self::refuses_writes`]).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Query(e) => is_transient(e),
            StoreError::Batch(e) => e.is_retryable(),
            StoreError::Sqlite { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// Whether the write was refused because its partition is no longer this instance's
    /// ([`cluster`]): the work belongs to another member now.
    pub fn is_fenced(&self) -> bool {
        match self {
            StoreError::Fenced { .. } => true,
            StoreError::Batch(e) => e.is_fenced(),
            _ => false,
        }
    }

    /// Whether the database answers but takes no writes for now: its disk is full, it is
    /// read-only (a demoted primary, a read-only file), or its I/O fails. Such a database is away
    /// for the relay like an unreachable one, but a ping does not tell when it is back: only a
    /// write does.
    pub fn refuses_writes(&self) -> bool {
        match self {
            StoreError::Unavailable(e) | StoreError::Query(e) => match e {
                sqlx::Error::Database(db) => {
                    let code = db.code().unwrap_or_default();
                    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                        code.parse::<i32>().is_ok_and(sqlite_refuses_writes)
                    } else {
                        pg_refuses_writes(&code)
                    }
                }
                _ => false,
            },
            StoreError::Batch(e) => e.refuses_writes(),
            StoreError::Sqlite { error, .. } => error
                .sqlite_error()
                .is_some_and(|e| sqlite_refuses_writes(e.extended_code)),
            _ => false,
        }
    }
}

/// Sorts sqlx errors into "the database is (temporarily) not there" and the rest.
pub(crate) fn classify(e: sqlx::Error) -> StoreError {
    if is_transient(&e) {
        StoreError::Unavailable(e)
    } else {
        StoreError::Query(e)
    }
}

/// SQLite result codes (primary or extended) that mean "try again later": busy and locked (5,
/// 6), and the database refusing writes for now ([`sqlite_refuses_writes`]), or the file not
/// opening (14, `SQLITE_CANTOPEN`: its disk unmounted, say).
pub(crate) fn sqlite_transient(code: i32) -> bool {
    matches!(code & 0xff, 5 | 6 | 14) || sqlite_refuses_writes(code)
}

/// SQLite result codes of a database that takes no writes for now: `SQLITE_READONLY` (8),
/// `SQLITE_IOERR` (10) and `SQLITE_FULL` (13, the disk or `max_page_count`).
pub(crate) fn sqlite_refuses_writes(code: i32) -> bool {
    matches!(code & 0xff, 8 | 10 | 13)
}

/// PostgreSQL SQLSTATEs of a server that takes no writes for now: class 53 (insufficient
/// resources: 53100 disk full, 53200 out of memory, …) but 53300 (too many connections, which a
/// ping meets too), 25006 (read-only transaction: a standby, a demoted primary, or
/// `default_transaction_read_only`) and 58030 (I/O error).
fn pg_refuses_writes(code: &str) -> bool {
    (code.starts_with("53") && code != "53300") || code == "25006" || code == "58030"
}

fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // SQLite reports numeric (extended) result codes.
                code.parse::<i32>().is_ok_and(sqlite_transient)
            } else {
                // PostgreSQL SQLSTATEs: class 08 (connection), 57P0x (shutting down), 53300 (too
                // many connections), 40001/40P01 (serialisation, deadlock), and a server that
                // takes no writes for now.
                code.starts_with("08")
                    || code.starts_with("57P0")
                    || code == "53300"
                    || code == "40001"
                    || code == "40P01"
                    || pg_refuses_writes(&code)
            }
        }
        _ => false,
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// `t` as the store keeps it: in UTC, truncated (rounded down) to whole microseconds.
pub fn to_store_precision(t: OffsetDateTime) -> OffsetDateTime {
    // In range: every OffsetDateTime is within ±10_000 years, far inside i64 microseconds.
    from_unix_micros(unix_micros(t)).unwrap_or(t)
}

/// Microseconds since the Unix epoch, rounded down.
pub fn unix_micros(t: OffsetDateTime) -> i64 {
    // ±10_000 years in microseconds is about 3.2e17: fits in an i64.
    t.unix_timestamp_nanos().div_euclid(1_000) as i64
}

/// The inverse of [`unix_micros`], in UTC.
pub fn from_unix_micros(us: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .map_err(|e| StoreError::Corrupt(format!("timestamp {us}µs out of range: {e}")))
}

/// A caller's mistake the database was not asked about (non-retryable).
pub(crate) fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::Query(sqlx::Error::InvalidArgument(msg.into()))
}

/// The longest key given by an upstream (a CEC `messageCode`, a Tencent `MsgKey`) that the store
/// de-duplicates by: PostgreSQL's btree takes index rows of about 2.7 KB at most, and a longer
/// key would make its message unstorable. A longer one is kept in the message's body only.
pub const MAX_KEY_BYTES: usize = 512;

/// Which contact center a row belongs to.
pub mod kind {
    pub const CEC: &str = "cec";
    pub const TIM: &str = "tim";
}

/// Session states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Connected (robot or agent): polled.
    Active,
    /// Waiting in an agent queue: polled.
    Queued,
    /// Ended: not polled.
    Closed,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Active => "active",
            SessionState::Queued => "queued",
            SessionState::Closed => "closed",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "active" => Ok(SessionState::Active),
            "queued" => Ok(SessionState::Queued),
            "closed" => Ok(SessionState::Closed),
            other => Err(StoreError::Corrupt(format!(
                "unknown session state {other:?}"
            ))),
        }
    }
}

/// A session as stored.
#[derive(Clone, PartialEq)]
pub struct Session {
    /// Relay id of the session (UUIDv7).
    pub id: String,
    pub kind: String,
    pub tenant: String,
    pub user_id: String,
    pub channel_config_id: String,
    pub state: SessionState,
    /// The user's current `ccmessaging-token`, kept so polling resumes after a restart without a
    /// new applyToken. A short-lived bearer credential: never logged.
    pub token: Option<String>,
    pub opened_at: OffsetDateTime,
    pub closed_at: Option<OffsetDateTime>,
    pub close_reason: Option<String>,
    /// Last message in either direction: what `idle_timeout` is measured from.
    pub last_activity_at: OffsetDateTime,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("tenant", &self.tenant)
            .field("user_id", &self.user_id)
            .field("channel_config_id", &self.channel_config_id)
            .field("state", &self.state)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("opened_at", &self.opened_at)
            .field("closed_at", &self.closed_at)
            .field("close_reason", &self.close_reason)
            .field("last_activity_at", &self.last_activity_at)
            .finish()
    }
}

/// A change to a session, part of a [`Commit`].
#[derive(Debug, Clone, PartialEq)]
pub enum SessionChange {
    /// Insert a new session (state Active or Queued).
    Open(Session),
    /// Set the state of an open session (Active ⇄ Queued).
    SetState { id: String, state: SessionState },
    /// Close it, with the reason (`customer`, `agent`, `idle`, `error`). Closing a closed session
    /// is a no-op.
    Close {
        id: String,
        reason: String,
        at: OffsetDateTime,
    },
}

/// A row for the outbox: published as-is with `Nats-Msg-Id = msg_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMsg {
    pub msg_id: String,
    pub subject: String,
    pub payload: Vec<u8>,
}

/// One transcript row.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageRow {
    /// Relay id (UUIDv7); for down rows also the published DownMessage's id.
    pub relay_id: String,
    pub kind: String,
    pub tenant: String,
    pub user_id: String,
    pub session_id: Option<String>,
    /// `up` or `down`.
    pub direction: Direction,
    /// Up: the idempotency key (CEC `messageId`, Tencent `id`).
    pub message_id: Option<String>,
    /// Down: the upstream's unique `messageCode`, when given.
    pub message_code: Option<String>,
    pub source_type: Option<String>,
    pub control_type: Option<String>,
    pub media_type: Option<String>,
    pub content: Option<String>,
    /// The whole message as JSON: for up, the request sent upstream; for down, the DownMessage.
    pub body: String,
    pub status: MessageStatus,
    pub result_code: Option<String>,
    pub result_desc: Option<String>,
    /// JetStream sequence of the `_IN` message an up row came from.
    pub stream_seq: Option<i64>,
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "up" => Ok(Direction::Up),
            "down" => Ok(Direction::Down),
            other => Err(StoreError::Corrupt(format!("unknown direction {other:?}"))),
        }
    }
}

/// Delivery status of a transcript row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageStatus {
    /// Up: received, not yet answered by the upstream (a crash here means: send again).
    Pending,
    /// Up: the upstream accepted it.
    Sent,
    /// Up: refused for good (by validation or the upstream).
    Failed,
    /// Down: stored (and queued for publishing).
    Received,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Pending => "pending",
            MessageStatus::Sent => "sent",
            MessageStatus::Failed => "failed",
            MessageStatus::Received => "received",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "pending" => Ok(MessageStatus::Pending),
            "sent" => Ok(MessageStatus::Sent),
            "failed" => Ok(MessageStatus::Failed),
            "received" => Ok(MessageStatus::Received),
            other => Err(StoreError::Corrupt(format!(
                "unknown message status {other:?}"
            ))),
        }
    }
}

/// A downlink message to store and publish; skipped whole if its `message_code` was seen before.
#[derive(Debug, Clone, PartialEq)]
pub struct DownRecord {
    pub row: MessageRow,
    pub publish: OutboxMsg,
}

/// An event to store and publish.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub relay_id: String,
    pub kind: String,
    pub tenant: Option<String>,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub event_type: String,
    pub ok: bool,
    /// The Event JSON, as published.
    pub body: String,
    pub subject: String,
    pub created_at: OffsetDateTime,
}

/// The final outcome of an up row begun earlier (see [`Store::begin_up`]); an up row not begun
/// goes in [`Commit::up_row`] with its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct UpOutcome {
    pub kind: String,
    pub tenant: String,
    pub user_id: String,
    pub message_id: String,
    pub status: MessageStatus,
    pub session_id: Option<String>,
    pub result_code: Option<String>,
    pub result_desc: Option<String>,
}

/// Who gave a satisfaction result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SatisfactionSource {
    /// The customer's evaluation (`saveSatisfaction`): score "1" to "5".
    Customer,
    /// Feedback on a robot answer (`v1/robot/feedbacksatisfaction`): score "1" (satisfied) or
    /// "0" (not).
    Robot,
}

impl SatisfactionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            SatisfactionSource::Customer => "customer",
            SatisfactionSource::Robot => "robot",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "customer" => Ok(SatisfactionSource::Customer),
            "robot" => Ok(SatisfactionSource::Robot),
            other => Err(StoreError::Corrupt(format!(
                "unknown satisfaction source {other:?}"
            ))),
        }
    }
}

/// A satisfaction result as stored (table `satisfactions`).
#[derive(Debug, Clone, PartialEq)]
pub struct SatisfactionRow {
    /// Relay id (UUIDv7).
    pub relay_id: String,
    pub kind: String,
    pub tenant: String,
    pub user_id: String,
    pub session_id: Option<String>,
    pub source: SatisfactionSource,
    /// Customer: the evaluation, "1" to "5". Robot: the feedback, "1" or "0".
    pub score: String,
    /// Customer: the comment. Robot: `feedbackContent`.
    pub comment: Option<String>,
    /// Robot: the `interIdx` the feedback is about.
    pub inter_idx: Option<String>,
    /// The upstream's answer.
    pub result_code: String,
    pub result_desc: Option<String>,
    pub created_at: OffsetDateTime,
}

/// How a message came to be kept for later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineSource {
    /// A send the upstream answered in offline mode (`offlineMsg.isOfflineStatus`).
    Offline,
    /// `doLeaveMessage`.
    LeaveMessage,
}

impl OfflineSource {
    pub fn as_str(self) -> &'static str {
        match self {
            OfflineSource::Offline => "offline",
            OfflineSource::LeaveMessage => "leave_message",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "offline" => Ok(OfflineSource::Offline),
            "leave_message" => Ok(OfflineSource::LeaveMessage),
            other => Err(StoreError::Corrupt(format!(
                "unknown offline message source {other:?}"
            ))),
        }
    }
}

/// An offline message or leave-message as stored (table `offline_messages`). A row whose
/// (kind, tenant, user_id, message_id) is already stored is skipped; rows without a
/// `message_id` are never de-duplicated.
#[derive(Debug, Clone, PartialEq)]
pub struct OfflineRow {
    /// Relay id (UUIDv7).
    pub relay_id: String,
    pub kind: String,
    pub tenant: String,
    pub user_id: String,
    pub session_id: Option<String>,
    pub source: OfflineSource,
    /// Offline: the up message's idempotency key.
    pub message_id: Option<String>,
    /// Leave message: the number to call back.
    pub caller: Option<String>,
    pub content: String,
    /// Offline: the upstream's `offlineMsg.tipText`.
    pub tip_text: Option<String>,
    /// The upstream's answer.
    pub result_code: String,
    pub result_desc: Option<String>,
    pub created_at: OffsetDateTime,
}

/// Where a downloaded file stands (table `files`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStatus {
    /// Not downloaded yet: its DownMessage's outbox row is held.
    Pending,
    /// In the object store; its DownMessage was released carrying `file`.
    Stored,
    /// Given up; its DownMessage was released carrying `fileError`.
    Failed,
}

impl FileStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FileStatus::Pending => "pending",
            FileStatus::Stored => "stored",
            FileStatus::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "pending" => Ok(FileStatus::Pending),
            "stored" => Ok(FileStatus::Stored),
            "failed" => Ok(FileStatus::Failed),
            other => Err(StoreError::Corrupt(format!(
                "unknown file status {other:?}"
            ))),
        }
    }
}

/// A file the contact center sent down, as stored (table `files`): one per DownMessage whose
/// media the relay downloads, keyed by the DownMessage's relay id.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRow {
    /// The DownMessage's relay id (= its outbox `msg_id`).
    pub relay_id: String,
    pub kind: String,
    pub tenant: String,
    pub user_id: String,
    pub session_id: Option<String>,
    pub media_type: String,
    /// The upstream's `fileId`.
    pub file_id: String,
    /// The `fileType` asked of `downloadFileStream`.
    pub file_type: String,
    pub status: FileStatus,
    pub size: Option<i64>,
    /// SHA-256 of the bytes, lower-case hex.
    pub sha256: Option<String>,
    pub bucket: Option<String>,
    pub object: Option<String>,
    /// Download attempts made so far.
    pub attempts: i64,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// A pending file with the payload of its held outbox row (the DownMessage as committed).
#[derive(Debug, Clone, PartialEq)]
pub struct PendingFile {
    pub file: FileRow,
    pub payload: Vec<u8>,
}

/// The end of a file's download, applied by [`Queries::finish_file`] in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct FileDone {
    pub relay_id: String,
    /// [`FileStatus::Stored`] or [`FileStatus::Failed`].
    pub status: FileStatus,
    pub size: Option<i64>,
    pub sha256: Option<String>,
    pub bucket: Option<String>,
    pub object: Option<String>,
    pub attempts: i64,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// The DownMessage to publish (and keep as the transcript body), with `file` or `fileError`.
    pub payload: String,
    pub at: OffsetDateTime,
}

/// Everything one step of work writes, applied in one transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Commit {
    pub sessions: Vec<SessionChange>,
    /// Outcome of an uplink message whose row was begun earlier ([`Store::begin_up`]).
    pub up: Option<UpOutcome>,
    /// An uplink message's row with its outcome (status, result, session): inserted, or — if its
    /// (kind, tenant, user, message_id) exists, e.g. a Pending row of an earlier run — that row
    /// takes this outcome. Lets a message be recorded and finished in one commit, with no
    /// [`Store::begin_up`] before it.
    pub up_row: Option<MessageRow>,
    /// Downlink messages: transcript row + outbox row each, both skipped for a duplicate code.
    pub down: Vec<DownRecord>,
    /// Events: events row + outbox row each.
    pub events: Vec<EventRecord>,
    /// Satisfaction results (customer evaluations, robot feedback).
    pub satisfactions: Vec<SatisfactionRow>,
    /// Offline messages and leave-messages; one whose message_id is stored already is skipped.
    pub offline: Vec<OfflineRow>,
    /// Sessions whose `last_activity_at` moves to the given time.
    pub touch: Vec<(String, OffsetDateTime)>,
    /// Pending files (status Pending) of down records in this commit, by the down's relay id:
    /// the down's outbox row is committed held, and released by [`Queries::finish_file`]. A file
    /// whose down was skipped as a duplicate is skipped too; one whose down is not in the
    /// commit is refused.
    pub files: Vec<FileRow>,
    /// Outbox messages of this commit that cannot be published (too large for the connected
    /// server, or on a subject no server routes), as [`crate::fit::PublishLimit::fit`] found them: the down
    /// or event whose `msg_id` it names is stored without its outbox row, and instead its dead
    /// letter and the `error` event announcing it are stored — the event with the dead letter's
    /// id, and published — unless the down was skipped as a duplicate (then nothing of it is).
    pub set_aside: Vec<SetAside>,
    /// Summaries to (re)compute after the rest of the commit, published when they name a
    /// subject ([`summary`]). A CEC session this commit closes is summarised even when it is not
    /// listed (then without an event).
    pub summaries: Vec<SummaryRequest>,
}

/// An outbox message a commit does not publish: its dead letter (source
/// [`dead_source::OUTBOX`], `msg_id` the message's) and the `error` event that replaces it on
/// `P.error`. See [`Commit::set_aside`].
#[derive(Debug, Clone, PartialEq)]
pub struct SetAside {
    pub dead: DeadLetter,
    /// The event announcing it; its body gets the dead letter's id (`deadLetter`) when stored.
    /// `None` when even that event could not be published (a server taking almost nothing).
    pub event: Option<EventRecord>,
}

impl Commit {
    /// Whether the outbox message `msg_id` of this commit is set aside ([`Commit::set_aside`]).
    pub(crate) fn is_set_aside(&self, msg_id: &str) -> bool {
        self.set_aside.iter().any(|s| s.dead.msg_id == msg_id)
    }

    /// Its set-aside messages that are stored, given the relay ids of the downs inserted: all
    /// but those of downs skipped as duplicates.
    pub(crate) fn set_aside_stored<'c>(
        &'c self,
        inserted: &'c std::collections::HashSet<String>,
    ) -> impl Iterator<Item = &'c SetAside> + 'c {
        self.set_aside.iter().filter(move |s| {
            !self
                .down
                .iter()
                .any(|d| d.publish.msg_id == s.dead.msg_id && !inserted.contains(&d.row.relay_id))
        })
    }
}

/// `body` (a JSON object: an event of [`SetAside`]) with `"deadLetter": id` added.
pub(crate) fn with_dead_letter(body: &str, id: Option<i64>) -> String {
    let Some(id) = id else {
        return body.to_owned();
    };
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(body) {
        Ok(mut m) => {
            m.insert("deadLetter".to_owned(), id.into());
            serde_json::to_string(&m).unwrap_or_else(|_| body.to_owned())
        }
        Err(_) => body.to_owned(),
    }
}

impl Commit {
    /// The (tenant, user) of the first of its parts that names one.
    pub fn user(&self) -> Option<(&str, &str)> {
        let session = self.sessions.iter().find_map(|c| match c {
            SessionChange::Open(s) => Some((s.tenant.as_str(), s.user_id.as_str())),
            _ => None,
        });
        self.up
            .as_ref()
            .map(|u| (u.tenant.as_str(), u.user_id.as_str()))
            .or_else(|| {
                self.up_row
                    .as_ref()
                    .map(|r| (r.tenant.as_str(), r.user_id.as_str()))
            })
            .or_else(|| {
                self.down
                    .first()
                    .map(|d| (d.row.tenant.as_str(), d.row.user_id.as_str()))
            })
            .or(session)
            .or_else(|| {
                self.events
                    .iter()
                    .find_map(|e| Some((e.tenant.as_deref()?, e.user_id.as_deref()?)))
            })
            .or_else(|| {
                self.satisfactions
                    .first()
                    .map(|r| (r.tenant.as_str(), r.user_id.as_str()))
            })
            .or_else(|| {
                self.offline
                    .first()
                    .map(|r| (r.tenant.as_str(), r.user_id.as_str()))
            })
            .or_else(|| {
                self.summaries
                    .first()
                    .map(|r| (r.tenant.as_str(), r.user_id.as_str()))
            })
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
            && self.up.is_none()
            && self.up_row.is_none()
            && self.down.is_empty()
            && self.events.is_empty()
            && self.satisfactions.is_empty()
            && self.offline.is_empty()
            && self.touch.is_empty()
            && self.files.is_empty()
            && self.set_aside.is_empty()
            && self.summaries.is_empty()
    }
}

/// What a commit did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// Relay ids of the down records inserted (in the order given).
    pub inserted_down: Vec<String>,
    /// How many down records were skipped as duplicates.
    pub duplicate_down: usize,
    /// How many outbox rows were added.
    pub outboxed: usize,
    /// The outbox messages set aside ([`Commit::set_aside`]) and stored, by `msg_id`, with
    /// their dead letter's id (`None` if one of that msg_id was stored before).
    pub set_aside: Vec<(String, Option<i64>)>,
}

/// What [`Queries::up_lookup`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpLookup {
    /// The status of the message's row; `None` if it has none.
    pub status: Option<MessageStatus>,
    /// The user's not-closed session, if any.
    pub session: Option<Session>,
}

/// What [`Store::begin_up`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpBegin {
    /// First time this message is seen: the row was inserted as Pending.
    New,
    /// Seen before and not finished (the relay stopped mid-way): send it again, same id.
    Pending,
    /// Already finished with this status: acknowledge and do nothing else.
    Done(MessageStatus),
}

/// An outbox row as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub seq: i64,
    pub msg_id: String,
    pub subject: String,
    pub payload: Vec<u8>,
    pub created_at: OffsetDateTime,
    /// Failed publishes of this row so far (each for a reason of its own, not NATS being away).
    pub attempts: i64,
}

/// Size and age of the outbox.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboxStats {
    /// Rows waiting to be published (held and retrying ones included).
    pub pending: i64,
    /// When the first row in line (lowest seq) was committed.
    pub oldest: Option<OffsetDateTime>,
    /// When the oldest row that could be published now (neither held nor backing off) was
    /// committed: how long publishing is behind.
    pub oldest_due: Option<OffsetDateTime>,
    /// Rows backing off after failures of their own.
    pub retrying: i64,
    /// Rows in `dead_letters`.
    pub dead_letters: i64,
}

/// Where a dead letter comes from (`dead_letters.source`).
pub mod dead_source {
    /// An outbox row that could not be published.
    pub const OUTBOX: &str = "outbox";
    /// A CEC UpMessage.
    pub const CEC_UP: &str = "cec_up";
    /// A Tencent TimSend.
    pub const TIM_SEND: &str = "tim_send";
    /// A Tencent stream chunk.
    pub const TIM_STREAM: &str = "tim_stream";
    /// A message JetStream stopped delivering (its max-deliveries advisory).
    pub const MAX_DELIVERIES: &str = "max_deliveries";
}

/// Something the relay gave up on, as stored (table `dead_letters`). Kept with its subject and
/// payload, so that it can be published again ([`Queries::dead_letter_retry`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Its id in the table (0 before it is stored).
    pub id: i64,
    /// One of [`dead_source`].
    pub source: String,
    /// Outbox: the row's `Nats-Msg-Id`. Uplink: the relay's id of the stream message. Unique
    /// with `source`: a message is given up once.
    pub msg_id: String,
    /// Where it was to be published, or where it was received (as given, maybe long).
    pub subject: String,
    pub payload: Vec<u8>,
    pub kind: Option<String>,
    pub tenant: Option<String>,
    pub user_id: Option<String>,
    /// An uplink message's idempotency key.
    pub message_id: Option<String>,
    /// A short code: `too_large`, `bad_subject`, `publish_failed`, `attempts`, `age`,
    /// `unstorable`, `max_deliveries`.
    pub reason: String,
    /// The error in words.
    pub error: String,
    pub attempts: i64,
    /// When the item was committed (outbox) or received (uplink).
    pub created_at: OffsetDateTime,
    /// When it was given up.
    pub dead_at: OffsetDateTime,
}

impl DeadLetter {
    /// Text as both databases keep it: NUL (which PostgreSQL's text cannot hold) becomes U+FFFD.
    pub(crate) fn clean(s: &str) -> String {
        s.replace('\0', "\u{fffd}")
    }
}

/// A database the [`Store`] commits to: the [`Queries`], the migrations, and a batch of writes
/// applied in one transaction. Implementations: [`sqlite::SqliteStore`], [`postgres::PgStore`].
#[async_trait]
pub trait Backend: Queries {
    /// Runs the embedded migrations of this backend.
    async fn migrate(&self) -> Result<()>;
    /// Checks that the database answers.
    async fn ping(&self) -> Result<()>;

    /// Applies `writes`, in order, in one transaction — one commit, one fsync — and returns what
    /// each did; or the error that rolled all of them back. A backend may rewrite a write in
    /// place into what its database can store (PostgreSQL replaces NULs), which is why it takes
    /// them mutably: after an error they can be applied again as they are.
    async fn write_batch(&self, writes: &mut [Write]) -> Result<Vec<Written>>;
    /// The cluster's leases, on a backend that keeps them (PostgreSQL).
    fn leases(&self) -> Option<cluster::Leases> {
        None
    }
    /// From now on, refuses the fenced writes ([`Write::fenced_user`]) of partitions that
    /// `fencing` does not own (see [`cluster`]). Only a backend with [`Self::leases`] can.
    fn set_fencing(&self, _fencing: Arc<cluster::Fencing>) {}
    /// How group commit is to run this backend's writers; with [`group::Writers::OwnThread`],
    /// `write_batch` blocks the calling thread for the batch.
    fn writers(&self) -> group::Writers;

    /// One step of retention or erasure, in a transaction of its own beside group commit's
    /// ([`privacy`]).
    async fn purge(&self, step: &privacy::Purge) -> Result<privacy::Purged>;
    /// Makes what was deleted unreadable in the database's files, as far as the database can:
    /// SQLite copies its write-ahead log into the database and truncates it; PostgreSQL vacuums
    /// `tables` (none: nothing; docs/PRIVACY.md says what stays).
    async fn scrub(&self, tables: &[privacy::Table]) -> Result<privacy::Scrubbed>;
    /// Stores an erasure's audit record; its id.
    async fn record_erasure(&self, erasure: &privacy::Erasure) -> Result<i64>;

    /// Closes the connections, after waiting for those in use to be returned. Every later call
    /// fails with a retryable [`StoreError::Unavailable`].
    async fn close(&self);
}

/// The reads: what [`Store`] reads straight from its backend (through `Deref`, one accessor), so
/// that a read query is written once per backend and nowhere else. Implementations: [`sqlite::SqliteStore`], [`postgres::PgStore`].
#[async_trait]
pub trait Queries: Send + Sync + 'static {
    /// What handling an uplink message needs to know before its send, in one read (no write, so
    /// no wait for a commit): the status of its row, if it has one — how a redelivered message
    /// is recognised — and the user's not-closed session.
    async fn up_lookup(
        &self,
        kind: &str,
        tenant: &str,
        user_id: &str,
        message_id: &str,
    ) -> Result<UpLookup>;

    /// The not-closed session of a user, if any.
    async fn open_session(
        &self,
        kind: &str,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<Session>>;
    /// All not-closed sessions (to resume polling at start-up).
    async fn open_sessions(&self) -> Result<Vec<Session>>;
    /// Sessions filtered by tenant and/or state, newest first, at most `limit`.
    async fn list_sessions(
        &self,
        tenant: Option<&str>,
        state: Option<SessionState>,
        limit: i64,
    ) -> Result<Vec<Session>>;
    /// The oldest `limit` outbox rows, in commit order.
    async fn outbox_pending(&self, limit: i64) -> Result<Vec<OutboxRow>>;
    async fn outbox_stats(&self) -> Result<OutboxStats>;
    /// The oldest `limit` dead letters.
    async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>>;
    /// A user's transcript, both directions, oldest first.
    async fn transcript(&self, kind: &str, tenant: &str, user_id: &str) -> Result<Vec<MessageRow>>;
    /// A page of [`Queries::transcript`]: at most `limit` rows, in the same order, after the row
    /// whose relay id is `after` (from the first row without it). `None` when `after` names no
    /// row of this transcript.
    async fn transcript_page(
        &self,
        kind: &str,
        tenant: &str,
        user_id: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Option<Vec<MessageRow>>>;
    /// Events of a user, oldest first.
    async fn events(&self, kind: &str, tenant: &str, user_id: &str) -> Result<Vec<EventRecord>>;
    /// Satisfaction results of a user, oldest first.
    async fn satisfactions(
        &self,
        kind: &str,
        tenant: &str,
        user_id: &str,
    ) -> Result<Vec<SatisfactionRow>>;
    /// Offline messages and leave-messages of a user, oldest first.
    async fn offline_messages(
        &self,
        kind: &str,
        tenant: &str,
        user_id: &str,
    ) -> Result<Vec<OfflineRow>>;

    // Exports: a table in time order, page by page ([`ExportPage`]). Rows come in
    // `(created_at, id)` order with their key; each call reads one index range of at most
    // `page.limit` rows. A table added to `ccrelay export` gets one method here (the session
    // summaries' is keyed by `closed_at` instead of `created_at`).

    /// Transcript rows (table `messages`, both directions).
    async fn export_messages(&self, page: &ExportPage) -> Result<Vec<Keyed<MessageRow>>>;
    /// Events (table `events`); `page.tenant` leaves out the events that name no tenant.
    async fn export_events(&self, page: &ExportPage) -> Result<Vec<Keyed<EventRecord>>>;
    /// Satisfaction results (table `satisfactions`).
    async fn export_satisfactions(&self, page: &ExportPage) -> Result<Vec<Keyed<SatisfactionRow>>>;
    /// Offline messages and leave-messages (table `offline_messages`).
    async fn export_offline(&self, page: &ExportPage) -> Result<Vec<Keyed<OfflineRow>>>;

    // Tencent IM: streams and callbacks.

    /// One stream, by app and `streamId`.
    async fn tim_stream(&self, app: &str, stream_id: &str) -> Result<Option<TimStreamRow>>;
    /// A user's streams, oldest first.
    async fn tim_streams(&self, app: &str, user_id: &str) -> Result<Vec<TimStreamRow>>;
    /// An app's streams neither finished nor failed, oldest first, at most `limit` (to finish
    /// them after a restart).
    async fn tim_open_streams(&self, app: &str, limit: i64) -> Result<Vec<TimStreamRow>>;
    /// The callbacks of an app, oldest first, at most `limit`.
    async fn tim_callbacks(&self, app: &str, limit: i64) -> Result<Vec<TimCallbackRow>>;

    // Media coming down: the `files` table and held outbox rows.

    /// The oldest `limit` pending files, with their held outbox payloads.
    async fn pending_files(&self, limit: i64) -> Result<Vec<PendingFile>>;
    /// Files of a user, oldest first.
    async fn files(&self, kind: &str, tenant: &str, user_id: &str) -> Result<Vec<FileRow>>;

    /// The erasures' audit, newest first, at most `limit`.
    async fn erasures(&self, limit: i64) -> Result<Vec<privacy::Erasure>>;

    // Session summaries ([`summary`]).

    /// A page of summaries ([`SummaryPage`]).
    async fn summaries_page(&self, page: &SummaryPage) -> Result<Vec<SessionSummary>>;
    /// The summary of one session.
    async fn summary(
        &self,
        kind: &str,
        tenant: &str,
        session_id: &str,
    ) -> Result<Option<SessionSummary>>;
    /// The user's latest session (open or closed), by `opened_at`.
    async fn latest_session(
        &self,
        kind: &str,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<Session>>;
}

/// One caller's write: what [`Backend::write_batch`] applies, many to a transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// [`Store::commit`].
    Commit(Commit),
    /// [`Store::commit_fact`]: a commit of what the upstream has already forgotten (the
    /// messages of a poll answer in hand), applied whoever owns its partition.
    Fact(Commit),
    /// [`Store::begin_up`]: the up row to record as Pending.
    BeginUp(MessageRow),
    /// [`Store::set_session_token`].
    SessionToken {
        session_id: String,
        tenant: String,
        user_id: String,
        token: Option<String>,
    },
    /// [`Store::outbox_done`]: the published rows' seqs.
    OutboxDone(Vec<i64>),
    /// [`Store::tim_stream_save`].
    TimStream(TimStreamRow, Commit),
    /// [`Store::tim_callback_save`].
    TimCallback(TimCallbackRow, Commit),
    /// [`Store::outbox_failed`].
    OutboxFailed {
        seq: i64,
        attempts: i64,
        next_attempt_at: OffsetDateTime,
        error: String,
    },
    /// [`Store::outbox_dead`].
    OutboxDead {
        seq: i64,
        reason: String,
        error: String,
        event: Option<EventRecord>,
    },
    /// [`Store::dead_letter_add`].
    DeadLetterAdd(DeadLetter),
    /// [`Store::dead_letter_retry`].
    DeadLetterRetry { id: i64, fresh_msg_id: String },
    /// [`Store::dead_letter_drop`].
    DeadLetterDrop(i64),
    /// [`Store::file_attempt_failed`].
    FileAttemptFailed {
        relay_id: String,
        attempts: i64,
        error_code: String,
        error_message: String,
    },
    /// [`Store::finish_file`].
    FinishFile(FileDone),
}

impl Write {
    /// [`Store::set_session_token`]'s write.
    pub fn session_token(session: &Session, token: Option<&str>) -> Self {
        Write::SessionToken {
            session_id: session.id.clone(),
            tenant: session.tenant.clone(),
            user_id: session.user_id.clone(),
            token: token.map(str::to_owned),
        }
    }

    /// The (tenant or app, user) whose rows it writes, when it names one: group commit keeps one
    /// user's writes on one writer ([`group`]).
    pub fn user(&self) -> Option<(&str, &str)> {
        match self {
            Write::Commit(c)
            | Write::Fact(c)
            | Write::TimStream(_, c)
            | Write::TimCallback(_, c)
                if c.user().is_some() =>
            {
                c.user()
            }
            Write::SessionToken {
                tenant, user_id, ..
            } => Some((tenant, user_id)),
            Write::Commit(_)
            | Write::Fact(_)
            | Write::OutboxDone(_)
            | Write::OutboxFailed { .. }
            | Write::OutboxDead { .. }
            | Write::DeadLetterAdd(_)
            | Write::DeadLetterRetry { .. }
            | Write::DeadLetterDrop(_)
            | Write::FileAttemptFailed { .. }
            | Write::FinishFile(_) => None,
            Write::BeginUp(row) => Some((&row.tenant, &row.user_id)),
            Write::TimStream(row, _) => Some((&row.app, &row.user_id)),
            Write::TimCallback(row, _) => row.user_id.as_deref().map(|u| (row.app.as_str(), u)),
        }
    }
}

impl Write {
    /// The (tenant or app, user) whose partition must be owned for it to apply (see
    /// [`cluster`]): that of a commit, an up row begun, a token and a robot stream. Facts, stored
    /// callbacks and the outbox's, dead letters' and files' bookkeeping are not fenced.
    pub fn fenced_user(&self) -> Option<(&str, &str)> {
        match self {
            Write::Commit(_)
            | Write::BeginUp(_)
            | Write::SessionToken { .. }
            | Write::TimStream(..) => self.user(),
            _ => None,
        }
    }
}

/// What one [`Write`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    /// A commit (also of a stream or a callback save).
    Committed(Committed),
    /// What `begin_up` found.
    Begun(UpBegin),
    /// A token set, outbox rows deleted or a failure recorded.
    Done,
    /// The dead letter stored (`outbox_dead`, `dead_letter_add`), if one was.
    Id(Option<i64>),
    /// The dead letter published again, if there was one (`dead_letter_retry`).
    Retried(Option<Box<DeadLetter>>),
    /// Whether anything changed (`dead_letter_drop`, `finish_file`).
    Changed(bool),
}

/// The result of `what`, a write that commits; another kind of result is a bug.
fn committed(what: &str, got: Written) -> Result<Committed> {
    match got {
        Written::Committed(c) => Ok(c),
        other => Err(StoreError::Corrupt(format!(
            "{what} was answered with {other:?}"
        ))),
    }
}

/// What `what` answered, picked by `pick`; another kind of result is a bug.
fn answer<T>(what: &str, got: Written, pick: impl FnOnce(&Written) -> Option<T>) -> Result<T> {
    pick(&got).ok_or_else(|| StoreError::Corrupt(format!("{what} was answered with {got:?}")))
}

/// The result of a `begin_up`; another kind of result is a bug.
fn begun(got: Written) -> Result<UpBegin> {
    match got {
        Written::Begun(b) => Ok(b),
        other => Err(StoreError::Corrupt(format!(
            "begin_up was answered with {other:?}"
        ))),
    }
}

/// A Tencent robot stream as stored (table `tim_streams`).
#[derive(Debug, Clone, PartialEq)]
pub struct TimStreamRow {
    pub app: String,
    pub user_id: String,
    pub stream_id: String,
    /// The robot account (`@RBT#…`).
    pub from_account: Option<String>,
    /// From the first answer; carried on every later call.
    pub msg_key: Option<String>,
    /// What Tencent accepted so far, in order.
    pub text: String,
    pub chunks: i64,
    pub calls: i64,
    /// JetStream sequence of the last chunk delivered.
    pub last_seq: i64,
    pub finished: bool,
    /// Pending (open), Sent (finished) or Failed.
    pub status: MessageStatus,
    pub error_code: Option<String>,
    pub error_info: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// A Tencent callback as received (table `tim_callbacks`).
#[derive(Debug, Clone, PartialEq)]
pub struct TimCallbackRow {
    pub relay_id: String,
    pub app: String,
    pub user_id: Option<String>,
    /// `CallbackCommand`.
    pub command: String,
    /// The body as Tencent sent it (JSON).
    pub body: String,
    /// Published on `P.tim.<a>.in.<u>`.
    pub published: bool,
    pub created_at: OffsetDateTime,
}

/// The name the relay's tasks give the [`Store`] they share.
pub type DynStore = Store;

/// Opens the store named by `url` (`sqlite:` or `postgres:`), without migrating, behind group
/// commit (SQLite with one writer on a thread of its own, PostgreSQL with [`group::PG_WRITERS`]),
/// with default [`Options`]: its commits are not checked against a NATS server's limits and its
/// retrying calls are never cancelled (tools, tests). The relay opens its store with
/// [`connect_with`].
pub async fn connect(url: &str) -> Result<Store> {
    connect_with(url, Options::default()).await
}

/// [`connect`], with `options`.
pub async fn connect_with(url: &str, options: Options) -> Result<Store> {
    if url.starts_with("sqlite:") {
        let backend = Arc::new(sqlite::SqliteStore::connect(url).await?);
        Store::new(backend, options).map_err(|e| StoreError::Unavailable(sqlx::Error::Io(e)))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let backend = Arc::new(postgres::PgStore::connect(url).await?);
        Store::new(backend, options).map_err(|e| StoreError::Unavailable(sqlx::Error::Io(e)))
    } else {
        Err(StoreError::UnsupportedUrl(config::redact::database_url(
            url,
        )))
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod classify_tests {
    use super::*;

    #[test]
    fn postgres_resource_read_only_and_io_errors_refuse_writes() {
        for code in ["53000", "53100", "53200", "53400", "25006", "58030"] {
            assert!(pg_refuses_writes(code), "{code}");
        }
        for code in ["53300", "08006", "40001", "23505", "42P01", ""] {
            assert!(!pg_refuses_writes(code), "{code}");
        }
    }

    #[test]
    fn sqlite_full_read_only_and_io_errors_are_transient() {
        // Primary and extended codes: SQLITE_FULL, SQLITE_IOERR_WRITE (10 | 3 << 8),
        // SQLITE_READONLY_DBMOVED (8 | 4 << 8).
        for code in [13, 10, 778, 8, 1032] {
            assert!(
                sqlite_transient(code) && sqlite_refuses_writes(code),
                "{code}"
            );
        }
        assert!(sqlite_transient(5) && !sqlite_refuses_writes(5));
        // SQLITE_CONSTRAINT_UNIQUE (19 | 8 << 8).
        assert!(!sqlite_transient(2067));
    }
}
