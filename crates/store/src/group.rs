//! Group commit: many callers' writes share one transaction.
//!
//! Every write of the relay is small (a poll answer's rows, an up row, an outcome, published
//! outbox seqs) and must be durable before the caller goes on — which on SQLite at
//! `synchronous = FULL` is an fsync, and on either database a round trip for `COMMIT`. Done one by
//! one, thousands of them a second queue on the fsync (SQLite's single write lock makes the
//! others sleep in its busy handler). [`GroupCommit`] queues each caller's [`Write`] instead; a
//! writer task takes whatever has queued up (at most [`MAX_BATCH`]) and applies it in order in one
//! transaction with [`Store::write_batch`], then answers every caller. While one batch commits,
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

use async_trait::async_trait;
use futures::FutureExt;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::fit::PublishLimit;

use super::{
    Commit, Committed, DeadLetter, EventRecord, FileDone, FileRow, MessagePage, MessageRow,
    OfflineRow, OutboxRow, OutboxStats, PendingFile, Result, SatisfactionRow, Session,
    SessionState, Store, StoreError, TimCallbackRow, TimStreamRow, UpBegin, UpLookup, Write,
    Written, begun, committed,
};

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

thread_local! {
    /// Whether this thread is a writer of its own ([`GroupCommit::on_own_thread`]).
    static WRITER_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the caller runs on a writer thread of its own ([`GroupCommit::on_own_thread`]),
/// where a backend may block for the length of a batch.
pub(crate) fn on_writer_thread() -> bool {
    WRITER_THREAD.get()
}

/// One queued write and where its answer goes.
struct Job {
    write: Write,
    reply: oneshot::Sender<Result<Written>>,
}

/// A [`Store`] whose writes go through group commit; see the module docs.
pub struct GroupCommit {
    inner: Arc<dyn Store>,
    /// One queue per writer.
    queues: Vec<mpsc::Sender<Job>>,
    closed: AtomicBool,
    /// Transactions applied so far (tests, diagnostics).
    batches: Arc<AtomicU64>,
    /// What the connected NATS server takes: each commit is fitted to it before it is queued.
    limit: Option<PublishLimit>,
}

impl GroupCommit {
    /// Wraps `inner`, with `writers` writer tasks (at least one) on the current tokio runtime.
    /// They end when the `GroupCommit` is dropped, after applying what was queued.
    pub fn new(inner: Arc<dyn Store>, writers: usize) -> Self {
        let batches = Arc::new(AtomicU64::new(0));
        let queues = (0..writers.max(1))
            .map(|_| {
                let (queue, rx) = mpsc::channel(QUEUE);
                tokio::spawn(writer(inner.clone(), rx, batches.clone()));
                queue
            })
            .collect();
        GroupCommit {
            inner,
            queues,
            closed: AtomicBool::new(false),
            batches,
            limit: None,
        }
    }

    /// Wraps `inner` with one writer that runs on a thread of its own (a single-threaded tokio
    /// runtime), for a backend that does a batch's work on the calling thread (SQLite's writer
    /// calls SQLite directly, blocking for the batch: `sqlite/write.rs`; `on_writer_thread`
    /// tells it where it is). Before that, the batch's statements were round trips to sqlx's
    /// connection thread, and a writer task on the shared runtime waited behind hundreds of
    /// ready tasks at every one of them (the S3 benchmark, docs/BENCHMARKS.md). Not for
    /// PostgreSQL: its sockets belong to the runtime that opened them. The thread ends when the
    /// `GroupCommit` is dropped, after applying what was queued.
    ///
    /// # Errors
    /// When the thread or its runtime cannot be created (out of threads or memory).
    pub fn on_own_thread(inner: Arc<dyn Store>) -> std::io::Result<Self> {
        let batches = Arc::new(AtomicU64::new(0));
        let (queue, rx) = mpsc::channel(QUEUE);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (store, counter) = (inner.clone(), batches.clone());
        std::thread::Builder::new()
            .name("ccrelay-writer".into())
            .spawn(move || {
                WRITER_THREAD.set(true);
                runtime.block_on(writer(store, rx, counter))
            })?;
        Ok(GroupCommit {
            inner,
            queues: vec![queue],
            closed: AtomicBool::new(false),
            batches,
            limit: None,
        })
    }

    /// Fits every commit to `limit` before queueing it ([`PublishLimit::fit`]): an outbox
    /// message the connected NATS server cannot take is committed as a dead letter and an
    /// `error` event instead, in the same transaction, and logged and counted once committed.
    pub fn publishing_within(mut self, limit: PublishLimit) -> Self {
        self.limit = Some(limit);
        self
    }

    /// How many batches (transactions, retries of a failed batch's writes not counted) the
    /// writers have applied.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Queues `write` (fitted to the limit, if there is one) and waits for its result; logs and
    /// counts the dead letters of the outbox messages it set aside.
    async fn submit(&self, mut write: Write) -> Result<Written> {
        let Some(limit) = &self.limit else {
            return self.queue(write).await;
        };
        limit.fit_write(&mut write);
        let letters: Vec<DeadLetter> = match &write {
            Write::Commit(c) | Write::TimStream(_, c) | Write::TimCallback(_, c) => c
                .set_aside
                .iter()
                .map(|s| DeadLetter {
                    payload: Vec::new(),
                    ..s.dead.clone()
                })
                .collect(),
            _ => Vec::new(),
        };
        let written = self.queue(write).await?;
        if let Written::Committed(c) = &written {
            for (msg_id, id) in &c.set_aside {
                if let Some(d) = letters.iter().find(|d| &d.msg_id == msg_id) {
                    crate::deadletter::logged(d, *id);
                }
            }
        }
        Ok(written)
    }

    /// Queues `write` and waits for its result.
    async fn queue(&self, write: Write) -> Result<Written> {
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
async fn writer(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Job>, batches: Arc<AtomicU64>) {
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
async fn apply(store: &dyn Store, jobs: &mut Vec<Job>) {
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

#[async_trait]
impl Store for GroupCommit {
    async fn migrate(&self) -> Result<()> {
        self.inner.migrate().await
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }

    /// Queues each write separately (they may land in different transactions); callers that
    /// need several writes in one transaction put them in one [`Commit`].
    async fn write_batch(&self, writes: &mut [Write]) -> Result<Vec<Written>> {
        let mut out = Vec::with_capacity(writes.len());
        for w in writes.iter() {
            out.push(self.submit(w.clone()).await?);
        }
        Ok(out)
    }

    async fn commit(&self, commit: Commit) -> Result<Committed> {
        if commit.is_empty() {
            return Ok(Committed::default());
        }
        committed("commit", self.submit(Write::Commit(commit)).await?)
    }

    async fn begin_up(&self, row: &MessageRow) -> Result<UpBegin> {
        begun(self.submit(Write::BeginUp(row.clone())).await?)
    }

    async fn up_lookup(
        &self,
        kind: &str,
        tenant: &str,
        user_id: &str,
        message_id: &str,
    ) -> Result<UpLookup> {
        self.inner
            .up_lookup(kind, tenant, user_id, message_id)
            .await
    }

    async fn open_session(
        &self,
        kind: &str,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<Session>> {
        self.inner.open_session(kind, tenant, user_id).await
    }

    async fn open_sessions(&self) -> Result<Vec<Session>> {
        self.inner.open_sessions().await
    }

    async fn list_sessions(
        &self,
        tenant: Option<&str>,
        state: Option<SessionState>,
        limit: i64,
    ) -> Result<Vec<Session>> {
        self.inner.list_sessions(tenant, state, limit).await
    }

    async fn set_session_token(&self, session: &Session, token: Option<&str>) -> Result<()> {
        self.submit(Write::session_token(session, token))
            .await
            .map(drop)
    }

    async fn outbox_pending(&self, limit: i64) -> Result<Vec<OutboxRow>> {
        self.inner.outbox_pending(limit).await
    }

    async fn outbox_done(&self, seqs: &[i64]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.submit(Write::OutboxDone(seqs.to_vec()))
            .await
            .map(drop)
    }

    async fn outbox_stats(&self) -> Result<OutboxStats> {
        self.inner.outbox_stats().await
    }

    async fn outbox_failed(
        &self,
        seq: i64,
        attempts: i64,
        next_attempt_at: OffsetDateTime,
        error: &str,
    ) -> Result<()> {
        self.inner
            .outbox_failed(seq, attempts, next_attempt_at, error)
            .await
    }

    async fn outbox_dead(
        &self,
        seq: i64,
        reason: &str,
        error: &str,
        event: Option<&EventRecord>,
    ) -> Result<Option<i64>> {
        self.inner.outbox_dead(seq, reason, error, event).await
    }

    async fn dead_letter_add(&self, dead: &DeadLetter) -> Result<Option<i64>> {
        self.inner.dead_letter_add(dead).await
    }

    async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>> {
        self.inner.dead_letters(limit).await
    }

    async fn dead_letter_retry(&self, id: i64, fresh_msg_id: &str) -> Result<Option<DeadLetter>> {
        self.inner.dead_letter_retry(id, fresh_msg_id).await
    }

    async fn dead_letter_drop(&self, id: i64) -> Result<bool> {
        self.inner.dead_letter_drop(id).await
    }

    async fn transcript(&self, kind: &str, tenant: &str, user_id: &str) -> Result<Vec<MessageRow>> {
        self.inner.transcript(kind, tenant, user_id).await
    }

    async fn transcript_page(
        &self,
        kind: &str,
        tenant: &str,
        user_id: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Option<Vec<MessageRow>>> {
        self.inner
            .transcript_page(kind, tenant, user_id, after, limit)
            .await
    }

    async fn messages_page(&self, page: &MessagePage) -> Result<Vec<MessageRow>> {
        self.inner.messages_page(page).await
    }

    async fn events(&self, kind: &str, tenant: &str, user_id: &str) -> Result<Vec<EventRecord>> {
        self.inner.events(kind, tenant, user_id).await
    }

    async fn satisfactions(
        &self,
        kind: &str,
        tenant: &str,
        user_id: &str,
    ) -> Result<Vec<SatisfactionRow>> {
        self.inner.satisfactions(kind, tenant, user_id).await
    }

    async fn offline_messages(
        &self,
        kind: &str,
        tenant: &str,
        user_id: &str,
    ) -> Result<Vec<OfflineRow>> {
        self.inner.offline_messages(kind, tenant, user_id).await
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.inner.close().await;
    }

    async fn tim_stream_save(&self, row: &TimStreamRow, commit: Commit) -> Result<Committed> {
        let w = Write::TimStream(row.clone(), commit);
        committed("tim_stream_save", self.submit(w).await?)
    }

    async fn tim_stream(&self, app: &str, stream_id: &str) -> Result<Option<TimStreamRow>> {
        self.inner.tim_stream(app, stream_id).await
    }

    async fn tim_streams(&self, app: &str, user_id: &str) -> Result<Vec<TimStreamRow>> {
        self.inner.tim_streams(app, user_id).await
    }

    async fn tim_open_streams(&self, app: &str, limit: i64) -> Result<Vec<TimStreamRow>> {
        self.inner.tim_open_streams(app, limit).await
    }

    async fn tim_callback_save(&self, row: &TimCallbackRow, commit: Commit) -> Result<Committed> {
        let w = Write::TimCallback(row.clone(), commit);
        committed("tim_callback_save", self.submit(w).await?)
    }

    async fn tim_callbacks(&self, app: &str, limit: i64) -> Result<Vec<TimCallbackRow>> {
        self.inner.tim_callbacks(app, limit).await
    }

    async fn pending_files(&self, limit: i64) -> Result<Vec<PendingFile>> {
        self.inner.pending_files(limit).await
    }

    async fn file_attempt_failed(
        &self,
        relay_id: &str,
        attempts: i64,
        error_code: &str,
        error_message: &str,
    ) -> Result<()> {
        self.inner
            .file_attempt_failed(relay_id, attempts, error_code, error_message)
            .await
    }

    async fn finish_file(&self, done: &FileDone) -> Result<bool> {
        self.inner.finish_file(done).await
    }

    async fn files(&self, kind: &str, tenant: &str, user_id: &str) -> Result<Vec<FileRow>> {
        self.inner.files(kind, tenant, user_id).await
    }
}
