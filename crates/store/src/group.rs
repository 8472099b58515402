//! Group commit: many callers' writes share one transaction.
//!
//! Every write of the relay is small (a poll answer's rows, an up row, an outcome, published
//! outbox seqs) and must be durable before the caller goes on — which on SQLite at
//! `synchronous = FULL` is an fsync, and on either database a round trip for `COMMIT`. Done one by
//! one, thousands of them a second queue on the fsync (SQLite's single write lock makes the
//! others sleep in its busy handler). [`GroupCommit`] queues each caller's [`Write`] instead; a
//! writer task takes whatever has queued up (at most [`MAX_BATCH`]) and applies it in order in one
//! transaction with [`Backend::write_batch`], then answers every caller. While one batch commits,
//! the next one fills, so the batch size follows the load: one write when idle (no added wait),
//! hundreds under load.
//!
//! Each caller keeps the all-or-nothing of its own write: a batch that fails for a reason other
//! than the database being away (a bad write, a constraint) is applied again one write at a time,
//! so only the bad write fails. A batch that fails because the database is away fails every
//! write in it with the same retryable error ([`StoreError::Batch`]), and the callers retry as
//! they would have.
//!
//! Writes are applied in the order they were queued (per writer; a user's writes all go to one),
//! so a caller that waits for its write before
//! making the next one (as every caller does) sees them applied in its order. A write whose caller
//! stopped waiting before its batch began (a timeout, a cancelled task) is not applied — as a
//! transaction that was never committed — so a caller that gave up and answered "failed" (a
//! Tencent callback past its budget, which Tencent then retries) is not also stored. One that
//! gives up while its batch is being committed may still be: the same window as a single
//! transaction's. A writer that panics (a bug) answers its batch with a retryable error, says so
//! in the log, and goes on with the next. Reads go straight to the backend.

use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};

use crate::{Backend, Result, StoreError, Write, Written};

/// Most writes in one transaction. Large enough that a full queue drains in a few commits, small
/// enough that one transaction stays short (SQLite's readers see the WAL grow by its size).
pub const MAX_BATCH: usize = 512;
/// Writes waiting for a writer, at most (per writer); a caller beyond waits for room
/// (back-pressure).
const QUEUE: usize = 8 * MAX_BATCH;
/// Writer tasks for PostgreSQL, each with its own queue and transaction, so the database's
/// round trips overlap. A write goes to the writer its user hashes to ([`Write::user`]): one
/// user's writes stay in order, and two writers' transactions never update the same rows — with
/// writes dealt out at random they did (sessions touched by polls and sends) in different orders,
/// deadlocked and waited for `deadlock_timeout`. SQLite, with one write lock, gets one writer.
pub const PG_WRITERS: usize = 4;

/// How a backend's writes are applied ([`crate::Backend::writers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writers {
    /// This many writer tasks on the tokio runtime, each with its own queue and transaction;
    /// the backend's `write_batch` awaits its database (PostgreSQL: [`PG_WRITERS`]).
    Tasks(usize),
    /// One writer on a thread of its own (a single-threaded tokio runtime), for a backend whose
    /// `write_batch` does the batch's work on the calling thread, blocking it (SQLite calls
    /// SQLite directly: `sqlite/write.rs`).
    OwnThread,
}

/// One queued write and where its answer goes.
struct Job {
    write: Write,
    reply: oneshot::Sender<Result<Written>>,
}

/// The writers of a [`crate::Store`] and their queues; see the module docs.
pub(crate) struct GroupCommit {
    /// One queue per writer.
    queues: Vec<mpsc::Sender<Job>>,
    closed: AtomicBool,
    /// Transactions applied so far (tests, diagnostics).
    batches: Arc<AtomicU64>,
}

impl GroupCommit {
    /// Wraps `inner`, with `writers` writer tasks (at least one) on the current tokio runtime.
    /// They end when the `GroupCommit` is dropped, after applying what was queued.
    fn new(inner: Arc<dyn Backend>, writers: usize) -> Self {
        let batches = Arc::new(AtomicU64::new(0));
        let queues = (0..writers.max(1))
            .map(|_| {
                let (queue, rx) = mpsc::channel(QUEUE);
                tokio::spawn(writer(inner.clone(), rx, batches.clone()));
                queue
            })
            .collect();
        GroupCommit {
            queues,
            closed: AtomicBool::new(false),
            batches,
        }
    }

    /// The writers `inner` asks for ([`crate::Backend::writers`]).
    ///
    /// # Errors
    /// When a writer thread or its runtime cannot be created (out of threads or memory).
    pub(crate) fn for_backend(inner: Arc<dyn Backend>) -> std::io::Result<Self> {
        match inner.writers() {
            Writers::Tasks(n) => Ok(GroupCommit::new(inner, n)),
            Writers::OwnThread => GroupCommit::on_own_thread(inner),
        }
    }

    /// Wraps `inner` with one writer that runs on a thread of its own (a single-threaded tokio
    /// runtime), for a backend that does a batch's work on the calling thread. A writer task on
    /// the shared runtime would wait behind hundreds of ready tasks between batches (the S3
    /// benchmark, docs/BENCHMARKS.md), and block one of its threads during each. Not for
    /// PostgreSQL: its sockets belong to the runtime that opened them. The thread ends when the
    /// `GroupCommit` is dropped, after applying what was queued.
    ///
    /// # Errors
    /// When the thread or its runtime cannot be created (out of threads or memory).
    fn on_own_thread(inner: Arc<dyn Backend>) -> std::io::Result<Self> {
        let batches = Arc::new(AtomicU64::new(0));
        let (queue, rx) = mpsc::channel(QUEUE);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (store, counter) = (inner, batches.clone());
        std::thread::Builder::new()
            .name("ccrelay-writer".into())
            .spawn(move || runtime.block_on(writer(store, rx, counter)))?;
        Ok(GroupCommit {
            queues: vec![queue],
            closed: AtomicBool::new(false),
            batches,
        })
    }

    /// How many batches (transactions, retries of a failed batch's writes not counted) the
    /// writers have applied.
    pub(crate) fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Queues `write` and waits for its result.
    /// Refuses every later write with a retryable error (the store is closing).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    pub(crate) async fn queue(&self, write: Write) -> Result<Written> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable(sqlx::Error::PoolClosed));
        }
        let (reply, answer) = oneshot::channel();
        let shard = match (write.user(), self.queues.len()) {
            (_, 1) | (None, _) => 0,
            (Some(user), n) => {
                let mut h = std::hash::DefaultHasher::new();
                user.hash(&mut h);
                (h.finish() % n as u64) as usize
            }
        };
        self.queues[shard]
            .send(Job { write, reply })
            .await
            .map_err(|_| StoreError::Unavailable(sqlx::Error::PoolClosed))?;
        // The writer answers every job it takes; it only drops one when its task is torn down
        // (the runtime stopping).
        answer
            .await
            .unwrap_or(Err(StoreError::Unavailable(sqlx::Error::PoolClosed)))
    }
}

/// Takes what has queued up, applies it as one batch, answers; until the queue is closed.
async fn writer(store: Arc<dyn Backend>, mut rx: mpsc::Receiver<Job>, batches: Arc<AtomicU64>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    loop {
        if rx.recv_many(&mut jobs, MAX_BATCH).await == 0 {
            return;
        }
        // Callers that stopped waiting: their writes are dropped, not applied.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        batches.fetch_add(1, Ordering::Relaxed);
        let writes = jobs.len();
        let applied = AssertUnwindSafe(apply(store.as_ref(), &mut jobs))
            .catch_unwind()
            .await;
        if applied.is_err() {
            // The batch's callers whose answers were not sent see their reply dropped: a
            // retryable error. The writer lives on for the next batch.
            tracing::error!(
                writes,
                "The store writer panicked applying a batch; its writes were not confirmed"
            );
            jobs.clear();
        }
    }
}

/// Applies `jobs` (emptying it) and answers each.
async fn apply(store: &dyn Backend, jobs: &mut Vec<Job>) {
    let (mut writes, replies): (Vec<Write>, Vec<_>) =
        jobs.drain(..).map(|j| (j.write, j.reply)).unzip();
    crate::metrics::store_batch(writes.len());
    match store.write_batch(&mut writes).await {
        Ok(done) if done.len() == writes.len() => {
            for (reply, d) in replies.into_iter().zip(done) {
                let _ = reply.send(Ok(d));
            }
        }
        Ok(done) => {
            let e = Arc::new(StoreError::Corrupt(format!(
                "a batch of {} writes returned {} results",
                writes.len(),
                done.len()
            )));
            for reply in replies {
                let _ = reply.send(Err(StoreError::Batch(e.clone())));
            }
        }
        Err(e) if writes.len() == 1 => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(e));
            }
        }
        Err(e) if e.is_retryable() => {
            // The database is away (or busy): every write would fail alike.
            tracing::debug!(writes = writes.len(), error = %e, "A batch of writes failed; the callers retry");
            let e = Arc::new(e);
            for reply in replies {
                let _ = reply.send(Err(StoreError::Batch(e.clone())));
            }
        }
        Err(e) => {
            // One of them is bad: find it by applying each alone.
            tracing::debug!(writes = writes.len(), error = %e, "A batch of writes failed; applying them one by one");
            for (w, reply) in writes.into_iter().zip(replies) {
                let mut one = [w];
                let r = store.write_batch(&mut one).await.and_then(|mut d| {
                    d.pop().ok_or_else(|| {
                        StoreError::Corrupt("a batch of one write returned nothing".into())
                    })
                });
                let _ = reply.send(r);
            }
        }
    }
}
