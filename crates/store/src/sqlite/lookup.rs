//! Batched up lookups: many callers' [`Queries::up_lookup`](crate::Queries::up_lookup)s
//! answered by one statement.
//!
//! Every uplink message starts with a lookup (its row's status, the user's open session). A
//! statement of its own is two thread hops (the caller's task to the connection's worker thread
//! and back) that cost far more than SQLite's two index searches: in the S3 benchmark the reader
//! threads spent ~80 µs of CPU per lookup, mostly waking and sleeping (docs/BENCHMARKS.md). A
//! task takes whatever lookups have queued up (at most [`MAX_LOOKUPS`]) and answers them all
//! with one statement over a JSON array of their keys, so the hops are paid per batch: one
//! lookup alone when idle (no added wait but a channel hop), hundreds under load. While one
//! batch runs the next one fills, as in group commit ([`crate::group`]).
//!
//! A statement that fails fails each lookup of its batch with the same error
//! ([`StoreError::Batch`], retryable as the error is); a row that cannot be read fails its own
//! lookup only. A caller that stopped waiting is not looked up. The task ends when the store is
//! dropped; a panic in it (a bug) fails its batch with a retryable error and the task goes on.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use sqlx::{Row, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::{MessageStatus, Result, SESSION_COLUMNS, StoreError, UpLookup, get, session_from_row};
use crate::classify;

/// Most lookups in one statement.
pub(super) const MAX_LOOKUPS: usize = 256;
/// Lookups waiting for the task, at most; a caller beyond waits for room.
const QUEUE: usize = 4 * MAX_LOOKUPS;

/// One lookup's row per key of the JSON array `?1` (`[[kind, tenant, user_id, message_id], …]`),
/// with the key's position in the array as `i`: the same two index searches as one lookup
/// (`messages_up_key`, `sessions_open_user`), once per key.
static LOOKUP_ALL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let session_columns = SESSION_COLUMNS
        .split(", ")
        .map(|c| format!("s.{c} AS {c}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "WITH k AS (SELECT key AS i, value ->> 0 AS kind, value ->> 1 AS tenant, \
           value ->> 2 AS user_id, value ->> 3 AS message_id FROM json_each(?1)) \
         SELECT k.i AS i, (SELECT status FROM messages AS m WHERE m.kind = k.kind \
           AND m.tenant = k.tenant AND m.user_id = k.user_id AND m.message_id = k.message_id \
           AND m.direction = 'up') AS up_status, {session_columns} \
         FROM k LEFT JOIN sessions AS s ON s.kind = k.kind AND s.tenant = k.tenant \
           AND s.user_id = k.user_id AND s.state <> 'closed'"
    )
});

/// `[kind, tenant, user_id, message_id]` of one lookup.
pub(super) type Key = [String; 4];

struct Job {
    key: Key,
    reply: oneshot::Sender<Result<UpLookup>>,
}

/// The queue of the lookup task of one store.
pub(super) struct Lookups {
    queue: mpsc::Sender<Job>,
}

impl Lookups {
    /// Starts the task on the current tokio runtime, reading through `pool`.
    pub(super) fn spawn(pool: SqlitePool) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, rx));
        Lookups { queue }
    }

    /// Queues the lookup of `key` and waits for its answer.
    pub(super) async fn lookup(&self, key: Key) -> Result<UpLookup> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { key, reply })
            .await
            .map_err(|_| closed())?;
        answer.await.unwrap_or_else(|_| Err(closed()))
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable(sqlx::Error::PoolClosed)
}

async fn run(pool: SqlitePool, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_LOOKUPS);
    while rx.recv_many(&mut jobs, MAX_LOOKUPS).await > 0 {
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let keys: Vec<&Key> = jobs.iter().map(|j| &j.key).collect();
        let found = AssertUnwindSafe(lookup_all(&pool, &keys))
            .catch_unwind()
            .await;
        match found {
            Ok(Ok(found)) => {
                for (job, r) in jobs.drain(..).zip(found) {
                    let _ = job.reply.send(r);
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(lookups = jobs.len(), error = %e, "A batch of up lookups failed");
                let e = Arc::new(e);
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(StoreError::Batch(e.clone())));
                }
            }
            Err(_) => {
                // The callers see their reply dropped: a retryable error.
                tracing::error!(
                    lookups = jobs.len(),
                    "The up lookup task panicked; its lookups were not answered"
                );
            }
        }
        jobs.clear();
    }
}

/// Each key's lookup, in the order of `keys`; `Err` when the statement failed.
async fn lookup_all(pool: &SqlitePool, keys: &[&Key]) -> Result<Vec<Result<UpLookup>>> {
    let list = serde_json::to_string(keys).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(LOOKUP_ALL.as_str()))
        .bind(list)
        .fetch_all(pool)
        .await
        .map_err(classify)?;
    let mut out: Vec<Option<Result<UpLookup>>> = keys.iter().map(|_| None).collect();
    for row in &rows {
        let i: i64 = get(row, "i")?;
        let slot = usize::try_from(i)
            .ok()
            .and_then(|i| out.get_mut(i))
            .ok_or_else(|| {
                StoreError::Corrupt(format!("up lookup row for key {i} of {}", keys.len()))
            })?;
        *slot = Some(lookup_of(row));
    }
    Ok(out
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| Err(StoreError::Corrupt("an up lookup returned no row".into())))
        })
        .collect())
}

fn lookup_of(row: &sqlx::sqlite::SqliteRow) -> Result<UpLookup> {
    let status: Option<String> = get(row, "up_status")?;
    let id: Option<String> = row.try_get("id").map_err(classify)?;
    Ok(UpLookup {
        status: status.as_deref().map(MessageStatus::parse).transpose()?,
        session: id.map(|_| session_from_row(row)).transpose()?,
    })
}
