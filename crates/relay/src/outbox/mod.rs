//! Store-then-publish. Everything the relay publishes is first committed as an outbox row in the
//! same transaction as the data it describes ([`store::Commit`]); this task publishes the
//! rows in commit order with `Nats-Msg-Id` = the row's id, and deletes them once JetStream
//! acknowledged them. A crash between the PubAck and the delete republishes the row at the next
//! start, and JetStream drops it as a duplicate (within `nats.duplicate_window`).
//!
//! One row cannot stall the others. NATS being away (timeouts, a broken connection) holds every
//! row back with one backoff; a row that fails for a reason of its own — over the server's
//! `max_payload`, refused by JetStream — is retried on its own backoff (`attempts`,
//! `next_attempt_at`; later rows of its subject wait for it, other subjects pass), and after
//! `relay.outbox_attempts` moves to `dead_letters` ([`store::deadletter`]). What cannot fit the
//! connected server at all (its subject or size) is not committed to the outbox in the first
//! place ([`store::PublishLimit`]); a row that no longer fits (a server with a smaller `max_payload`)
//! goes to `dead_letters` at once. Either way its `error` event is committed in the same
//! transaction as its dead letter.
//!
//! In a cluster (`docs/HA.md`) one member publishes the whole outbox: the owner of partition 0,
//! each round under that partition's work gate ([`Ownership::begin`]), so a member that lost it
//! (paused past its lease) publishes nothing more. The others' commits wake it through
//! PostgreSQL's `NOTIFY` ([`store::cluster::Leases::follow_outbox`]); a row a former publisher
//! sent but had not deleted is sent again and dropped by JetStream as a duplicate.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus::publisher::{FailureKind, Outgoing, PublishFailure, publish_batch};
use crate::ownership::Ownership;
use contract::Subjects;
use store::{DeadLetter, DynStore, OutboxRow};

/// Wakes the publisher when a commit added outbox rows.
#[derive(Clone, Default)]
pub struct OutboxSignal(Arc<Notify>);

impl OutboxSignal {
    pub fn notify(&self) {
        self.0.notify_one();
    }
    async fn notified(&self) {
        self.0.notified().await
    }
}

/// How often the outbox is looked at even without a signal (rows from a previous run, retries),
/// and measured for the metrics and `/readyz`.
const SWEEP: Duration = Duration::from_secs(1);

/// How the publisher runs (from `[relay]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Rows published per batch.
    pub batch: usize,
    /// Failed publishes of a row (its own fault) before it becomes a dead letter.
    pub attempts: u32,
    /// Not ready while the oldest publishable row has waited longer than this.
    pub stuck_after: Duration,
}

impl Settings {
    pub fn of(relay: &config::RelayConfig) -> Self {
        Settings {
            batch: relay.outbox_batch,
            attempts: relay.outbox_attempts.max(1),
            stuck_after: relay.outbox_stuck_after,
        }
    }
}

/// Whether the outbox is publishing, for `/readyz`: why it is stuck, if it is.
#[derive(Clone, Default)]
pub struct OutboxHealth(Arc<std::sync::Mutex<HealthState>>);

#[derive(Default)]
struct HealthState {
    stuck: Option<String>,
    last_error: Option<String>,
}

impl OutboxHealth {
    /// Why the outbox is stuck, or `None` while it keeps up.
    pub fn stuck(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stuck
            .clone()
    }
    fn set_error(&self, e: Option<String>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).last_error = e;
    }
    fn judge(&self, waiting: Option<Duration>, pending: i64, bound: Duration) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.stuck = match waiting {
            Some(w) if w > bound => Some(format!(
                "{pending} rows to publish; the oldest publishable one has waited {}s{}",
                w.as_secs(),
                s.last_error
                    .as_deref()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            )),
            _ => None,
        };
    }
}

/// Publishes outbox rows until `cancel` fires, then makes one last attempt to empty it.
/// Meanwhile it measures the outbox every `SWEEP` for the metrics and `health`.
///
/// Deleting a published batch's rows overlaps publishing the next: the delete is a write that
/// waits for its turn in group commit, and awaiting it before reading the next batch made the
/// outbox the downlink's bottleneck. The rows of a delete still in flight are skipped when the
/// next batch is read, so nothing is published twice by this; should the delete fail, its rows
/// are published again later and JetStream drops them as duplicates (`Nats-Msg-Id`).
#[allow(clippy::too_many_arguments)] // Each is one of the task's narrow handles.
pub async fn run(
    store: DynStore,
    js: jetstream::Context,
    subjects: Subjects,
    signal: OutboxSignal,
    settings: Settings,
    health: OutboxHealth,
    ownership: Ownership,
    cancel: CancellationToken,
) {
    let ctx = Round {
        store: &store,
        js: &js,
        subjects: &subjects,
        settings: &settings,
        ownership: &ownership,
    };
    let publishing = publish(&ctx, &signal, &health, &cancel);
    let measuring = async {
        loop {
            // Only the member that publishes judges whether the outbox is stuck.
            if ownership.begin(0).is_some() {
                measure(&store, &health, settings.stuck_after).await;
            } else {
                health.judge(None, 0, settings.stuck_after);
            }
            tokio::time::sleep(SWEEP).await;
        }
    };
    tokio::select! {
        _ = publishing => {}
        _ = measuring => {}
    }
}

async fn publish(
    ctx: &Round<'_>,
    signal: &OutboxSignal,
    health: &OutboxHealth,
    cancel: &CancellationToken,
) {
    let store = ctx.store;
    let mut backoff = Duration::from_millis(100);
    let mut deleting = Deleting::default();
    loop {
        let round = ctx.publish_round(&deleting.seqs).await;
        // One delete in flight at a time: the previous one ends before the next starts.
        deleting.finish().await;
        match round {
            // Rows remain (or may): keep draining, even while shutting down.
            Ok(done) if !done.published.is_empty() || done.set_aside > 0 => {
                backoff = Duration::from_millis(100);
                health.set_error(None);
                deleting.start(store, done.published);
            }
            Ok(_) => {
                health.set_error(None);
                if cancel.is_cancelled() {
                    return;
                }
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = signal.notified() => {}
                    _ = tokio::time::sleep(SWEEP) => {}
                }
            }
            Err((e, published)) => {
                deleting.start(store, published);
                deleting.finish().await;
                health.set_error(Some(e.to_string()));
                tracing::warn!(error = %e, retry_in = ?backoff, "Outbox publish failed; nothing is lost, will retry");
                if cancel.is_cancelled() {
                    return;
                }
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The delete of the last published batch's rows, while it runs.
#[derive(Default)]
struct Deleting {
    seqs: Vec<i64>,
    task: Option<tokio::task::JoinHandle<Result<(), store::StoreError>>>,
}

impl Deleting {
    fn start(&mut self, store: &DynStore, seqs: Vec<i64>) {
        if seqs.is_empty() {
            return;
        }
        let (store, done) = (store.clone(), seqs.clone());
        self.seqs = seqs;
        self.task = Some(tokio::spawn(async move { store.outbox_done(&done).await }));
    }

    /// Waits for the delete, if one runs. A failed one leaves its rows to be published again.
    async fn finish(&mut self) {
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, rows = self.seqs.len(),
                    "Cannot delete published outbox rows; they will be published again (and dropped by JetStream as duplicates)"),
                Err(e) => tracing::warn!(error = %e, "The outbox delete task failed"),
            }
        }
        self.seqs.clear();
    }
}

/// The outbox's size and age, for the metrics and `/readyz`.
async fn measure(store: &DynStore, health: &OutboxHealth, stuck_after: Duration) {
    if let Ok(stats) = store.outbox_stats().await {
        let age = |t: Option<time::OffsetDateTime>| {
            t.map(|t| {
                let d = time::OffsetDateTime::now_utc() - t;
                Duration::try_from(d).unwrap_or_default()
            })
        };
        crate::instrument::outbox(stats.pending, age(stats.oldest));
        crate::instrument::poison(stats.retrying, stats.dead_letters);
        health.judge(age(stats.oldest_due), stats.pending, stuck_after);
    }
}

/// Why a publishing round stopped early.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("publish to NATS failed for {failed} of {total} messages: {first}")]
    Publish {
        failed: usize,
        total: usize,
        first: PublishFailure,
    },
}

/// What a round did.
#[derive(Debug, Default)]
pub struct Published {
    /// Seqs of the rows JetStream stored.
    pub published: Vec<i64>,
    /// Rows set aside: backing off after a failure of their own, or moved to `dead_letters`.
    pub set_aside: usize,
}

/// One publishing round's inputs.
struct Round<'a> {
    store: &'a DynStore,
    js: &'a jetstream::Context,
    subjects: &'a Subjects,
    settings: &'a Settings,
    ownership: &'a Ownership,
}

impl Round<'_> {
    /// Publishes the oldest `batch` due rows, leaving out `skip` (rows whose delete is in
    /// flight). Rows failing for a reason of their own are set aside; a failure of NATS itself
    /// ends the round with the seqs published before it.
    async fn publish_round(&self, skip: &[i64]) -> Result<Published, (OutboxError, Vec<i64>)> {
        // The publisher of a cluster is partition 0's owner; for the round's length.
        let Some(_publisher) = self.ownership.begin(0) else {
            return Ok(Published::default());
        };
        let batch = self.settings.batch;
        let rows = self
            .store
            .outbox_pending((batch + skip.len()) as i64)
            .await
            .map_err(|e| (e.into(), Vec::new()))?;
        let rows: Vec<_> = rows
            .into_iter()
            .filter(|r| !skip.contains(&r.seq))
            .take(batch)
            .collect();
        let mut out = Published::default();
        if rows.is_empty() {
            return Ok(out);
        }
        let max_payload = self.js.client().server_info().max_payload;
        let mut sendable = Vec::with_capacity(rows.len());
        for row in rows {
            let payload = Bytes::from(row.payload.clone());
            match store::deadletter::unpublishable(&row.subject, &payload, max_payload) {
                Some((reason, error)) => {
                    out.set_aside += 1;
                    // Not set aside after all: the round ends, and the outbox backs off.
                    self.give_up(&row, reason, &error, row.attempts)
                        .await
                        .map_err(|e| (e.into(), Vec::new()))?;
                }
                None => sendable.push((row, payload)),
            }
        }
        if sendable.is_empty() {
            return Ok(out);
        }
        let outgoing = sendable
            .iter()
            .map(|(r, payload)| Outgoing {
                msg_id: &r.msg_id,
                subject: &r.subject,
                payload: payload.clone(),
            })
            .collect();
        let started = std::time::Instant::now();
        let results = publish_batch(self.js, outgoing).await;
        let took = started.elapsed();
        let any_stored = results.iter().any(Result::is_ok);
        let mut first_err = None;
        let mut store_err = None;
        let mut failed = 0;
        for ((row, _), res) in sendable.iter().zip(results) {
            match res {
                Ok(()) => out.published.push(row.seq),
                Err(e)
                    if e.kind == FailureKind::Own
                        || (e.kind == FailureKind::NoStream && any_stored) =>
                {
                    out.set_aside += 1;
                    crate::instrument::publish_failed("row");
                    if let Err(e) = self.failed(row, &e.message).await {
                        store_err.get_or_insert(e);
                    }
                }
                Err(e) => {
                    failed += 1;
                    first_err.get_or_insert(e);
                }
            }
        }
        if !out.published.is_empty() {
            crate::instrument::published(out.published.len(), took);
        }
        if let Some(e) = store_err {
            return Err((e.into(), out.published));
        }
        match first_err {
            None => Ok(out),
            Some(first) => Err((
                OutboxError::Publish {
                    failed,
                    total: sendable.len(),
                    first,
                },
                out.published,
            )),
        }
    }

    /// A failure of `row`'s own: backs it off, or gives it up after its last attempt. An error
    /// when that cannot be recorded (the row is then tried again after the outbox's backoff).
    async fn failed(&self, row: &OutboxRow, error: &str) -> Result<(), store::StoreError> {
        let attempts = row.attempts + 1;
        if attempts >= i64::from(self.settings.attempts) {
            // The dead letter counts this attempt too.
            let now = time::OffsetDateTime::now_utc();
            self.store
                .outbox_failed(row.seq, attempts, now, error)
                .await?;
            return self.give_up(row, "publish_failed", error, attempts).await;
        }
        let exp = (attempts - 1).clamp(0, 6) as u32;
        let delay = Duration::from_millis(500)
            .saturating_mul(1 << exp)
            .min(Duration::from_secs(30));
        tracing::warn!(seq = row.seq, msg_id = %row.msg_id, attempts, error, retry_in = ?delay,
            "Outbox row refused; it is retried on its own backoff, other subjects go on");
        let next = time::OffsetDateTime::now_utc() + delay;
        self.store
            .outbox_failed(row.seq, attempts, next, error)
            .await
    }

    /// Moves `row` to `dead_letters` and commits the `error` event announcing it on `P.error`,
    /// in one transaction. An error when that cannot be done (the row stays, and is tried again
    /// after a backoff).
    async fn give_up(
        &self,
        row: &OutboxRow,
        reason: &str,
        error: &str,
        attempts: i64,
    ) -> Result<(), store::StoreError> {
        let routable = |t: &str| contract::subjects::check_token(t).is_ok();
        let parsed = self
            .subjects
            .parse_cec(&row.subject)
            .map(|(t, _, u)| (store::kind::CEC, t, u))
            .or_else(|| {
                self.subjects
                    .parse_tim(&row.subject)
                    .map(|(a, _, u)| (store::kind::TIM, a, u))
            })
            .filter(|(_, t, u)| routable(t) && routable(u));
        let mut letter = DeadLetter {
            id: 0,
            source: store::dead_source::OUTBOX.to_owned(),
            msg_id: row.msg_id.clone(),
            subject: row.subject.clone(),
            payload: Vec::new(),
            kind: Some(parsed.map(|p| p.0).unwrap_or(store::kind::CEC).to_owned()),
            tenant: parsed.map(|p| p.1.to_owned()),
            user_id: parsed.map(|p| p.2.to_owned()),
            message_id: None,
            reason: reason.to_owned(),
            error: error.to_owned(),
            attempts,
            created_at: row.created_at,
            dead_at: store::now(),
        };
        let event = store::deadletter::event(self.subjects, &letter, None);
        let id = self
            .store
            .outbox_dead(row.seq, reason, error, Some(&event))
            .await?;
        if id.is_some() {
            letter.id = id.unwrap_or_default();
            store::deadletter::logged(&letter, id);
        }
        Ok(())
    }
}
