//! Store-then-publish. Everything the relay publishes is first committed as an outbox row in the
//! same transaction as the data it describes ([`crate::store::Commit`]); this task publishes the
//! rows in commit order with `Nats-Msg-Id` = the row's id, and deletes them once JetStream
//! acknowledged them. A crash between the PubAck and the delete republishes the row at the next
//! start, and JetStream drops it as a duplicate (within `nats.duplicate_window`).

mod records;

pub use records::{down_record, event_record, now};

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus::publisher::{Outgoing, publish_batch};
use crate::store::DynStore;

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

/// How often the outbox is looked at even without a signal (rows from a previous run, retries).
const SWEEP: Duration = Duration::from_secs(1);

/// Publishes outbox rows until `cancel` fires, then makes one last attempt to empty it.
///
/// Deleting a published batch's rows overlaps publishing the next: the delete is a write that
/// waits for its turn in group commit, and awaiting it before reading the next batch made the
/// outbox the downlink's bottleneck. The rows of a delete still in flight are skipped when the
/// next batch is read, so nothing is published twice by this; should the delete fail, its rows
/// are published again later and JetStream drops them as duplicates (`Nats-Msg-Id`).
pub async fn run(
    store: DynStore,
    js: jetstream::Context,
    signal: OutboxSignal,
    batch: usize,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut measured = std::time::Instant::now() - SWEEP;
    let mut deleting = Deleting::default();
    loop {
        if measured.elapsed() >= SWEEP {
            measured = std::time::Instant::now();
            measure(&store).await;
        }
        let round = publish_round(&store, &js, batch, &deleting.seqs).await;
        // One delete in flight at a time: the previous one ends before the next starts.
        deleting.finish().await;
        match round {
            // Rows remain (or may): keep draining, even while shutting down.
            Ok(published) if !published.is_empty() => {
                backoff = Duration::from_millis(100);
                deleting.start(&store, published);
            }
            Ok(_) => {
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
                deleting.start(&store, published);
                deleting.finish().await;
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
    task: Option<tokio::task::JoinHandle<Result<(), crate::store::StoreError>>>,
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

/// The outbox's size and age, for the metrics (at most once a [`SWEEP`]).
async fn measure(store: &DynStore) {
    if let Ok(stats) = store.outbox_stats().await {
        let age = stats.oldest.map(|t| {
            let d = time::OffsetDateTime::now_utc() - t;
            Duration::try_from(d).unwrap_or_default()
        });
        crate::instrument::outbox(stats.pending, age);
    }
}

/// Why a publishing round stopped early.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("publish to NATS failed for {failed} of {total} messages: {first}")]
    Publish {
        failed: usize,
        total: usize,
        first: String,
    },
}

/// Publishes the oldest `batch` rows, leaving out `skip` (rows whose delete is in flight);
/// returns the seqs published, or the first error with the seqs published before it.
pub async fn publish_round(
    store: &DynStore,
    js: &jetstream::Context,
    batch: usize,
    skip: &[i64],
) -> Result<Vec<i64>, (OutboxError, Vec<i64>)> {
    let rows = store
        .outbox_pending((batch + skip.len()) as i64)
        .await
        .map_err(|e| (e.into(), Vec::new()))?;
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| !skip.contains(&r.seq))
        .take(batch)
        .collect();
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let outgoing = rows
        .iter()
        .map(|r| Outgoing {
            msg_id: &r.msg_id,
            subject: &r.subject,
            payload: Bytes::copy_from_slice(&r.payload),
        })
        .collect();
    let started = std::time::Instant::now();
    let results = publish_batch(js, outgoing).await;
    let took = started.elapsed();
    let mut done = Vec::with_capacity(rows.len());
    let mut first_err = None;
    let mut failed = 0;
    for (row, res) in rows.iter().zip(results) {
        match res {
            Ok(()) => done.push(row.seq),
            Err(e) => {
                failed += 1;
                first_err.get_or_insert(e);
            }
        }
    }
    if !done.is_empty() {
        crate::instrument::published(done.len(), took);
    }
    match first_err {
        None => Ok(done),
        Some(first) => Err((
            OutboxError::Publish {
                failed,
                total: rows.len(),
                first,
            },
            done,
        )),
    }
}
