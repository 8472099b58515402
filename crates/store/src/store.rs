//! [`Store`]: the one handle the relay holds on its database. It owns group commit (every write
//! goes through [`crate::group`]'s writers, a batch in one transaction of the [`Backend`]), the
//! fitting of commits to what NATS takes ([`PublishLimit`]), and the single commit-and-retry path
//! ([`Store::commit_retrying`] and its kin): how a write becomes durable, how it is retried while
//! the database is away, and how that is reported ([`StoreHealth`], metrics, log lines). Reads go
//! straight to the backend, through `Deref` to its [`Queries`].

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::fit::PublishLimit;
use crate::group::GroupCommit;
use crate::health::StoreHealth;
use crate::{
    Backend, Commit, Committed, DeadLetter, EventRecord, FileDone, MessageRow, Queries, Result,
    Session, TimCallbackRow, TimStreamRow, UpBegin, Write, Written, answer, begun, committed,
};

/// The answer of a write that says whether it changed anything.
fn changed(w: &Written) -> Option<bool> {
    match w {
        Written::Changed(c) => Some(*c),
        _ => None,
    }
}

/// The first wait of a retrying call after the database was found away; it doubles up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What a [`Store`] is given when it opens.
#[derive(Clone, Default)]
pub struct Options {
    /// What the connected NATS server takes: each commit is fitted to it before it is queued
    /// ([`PublishLimit::fit`]); an outbox message it cannot take is committed as a dead letter
    /// and an `error` event instead. `None` (tools, tests): commits are not checked.
    pub limit: Option<PublishLimit>,
    /// Ends the retrying calls ([`Store::commit_retrying`], …): once it fires they return the
    /// database's error instead of waiting for it to come back.
    pub cancel: CancellationToken,
    /// Called after a retrying call added outbox rows (the relay wakes its outbox publisher).
    pub on_outboxed: Option<Arc<dyn Fn() + Send + Sync>>,
    /// In a cluster (PostgreSQL): the partitions this instance owns; the writes of others are
    /// refused ([`crate::cluster`]).
    pub fencing: Option<Arc<crate::cluster::Fencing>>,
}

/// The store: group commit in front of a SQLite or PostgreSQL [`Backend`]. Cheap to clone (the
/// clones share one set of writers); the writers end when the last clone is dropped, after
/// applying what was queued.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    backend: Arc<dyn Backend>,
    group: GroupCommit,
    health: StoreHealth,
    options: Options,
}

/// What a retrying call does: a write's success shows the database takes writes again; a read's
/// only that it answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

impl Deref for Store {
    type Target = dyn Queries;

    /// The backend's reads (and its single-row updates), called on it directly.
    fn deref(&self) -> &dyn Queries {
        &*self.shared.backend
    }
}

impl Store {
    /// `backend` behind group commit, with the writers it asks for
    /// ([`Backend::writers`]).
    ///
    /// # Errors
    /// When a writer thread cannot be created (out of threads or memory).
    pub fn new(backend: Arc<dyn Backend>, options: Options) -> std::io::Result<Store> {
        if let Some(f) = &options.fencing {
            backend.set_fencing(f.clone());
        }
        let group = GroupCommit::for_backend(backend.clone())?;
        Ok(Store {
            shared: Arc::new(Shared {
                backend,
                group,
                health: StoreHealth::default(),
                options,
            }),
        })
    }

    /// Runs the embedded migrations of the backend.
    pub async fn migrate(&self) -> Result<()> {
        self.shared.backend.migrate().await
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<()> {
        self.shared.backend.ping().await
    }

    /// Refuses further writes and closes the connections, after waiting for those in use to be
    /// returned. Every later call fails with a retryable [`crate::StoreError::Unavailable`].
    pub async fn close(&self) {
        self.shared.group.close();
        self.shared.backend.close().await;
    }

    /// Whether the database takes writes, as the retrying calls found it.
    pub fn health(&self) -> &StoreHealth {
        &self.shared.health
    }

    /// Returns at once while the database takes writes; otherwise waits until a probe or a
    /// write finds it back ([`StoreHealth::wait_up`]). `false` if `cancel` fired first.
    pub async fn wait_up(&self, cancel: &CancellationToken) -> bool {
        self.shared.health.wait_up(self, cancel).await
    }

    /// How many batches (transactions, retries of a failed batch's writes not counted) the
    /// writers have applied.
    pub fn batches(&self) -> u64 {
        self.shared.group.batches()
    }

    // --- Writes, one attempt each -----------------------------------------------------------

    /// Applies everything in `commit` in one transaction.
    pub async fn commit(&self, commit: Commit) -> Result<Committed> {
        if commit.is_empty() {
            return Ok(Committed::default());
        }
        committed("commit", self.submit(Write::Commit(commit)).await?)
    }

    /// [`Self::commit`] of a *fact*: what the upstream has already forgotten (a poll answer's
    /// messages), applied in a cluster whoever owns the partition ([`crate::cluster`]).
    pub async fn commit_fact(&self, commit: Commit) -> Result<Committed> {
        if commit.is_empty() {
            return Ok(Committed::default());
        }
        committed("commit", self.submit(Write::Fact(commit)).await?)
    }

    /// The cluster's leases, when the database keeps them (PostgreSQL).
    pub fn leases(&self) -> Option<crate::cluster::Leases> {
        self.shared.backend.leases()
    }

    /// Records an uplink message as Pending, unless its (kind, tenant, user, message_id) exists.
    pub async fn begin_up(&self, row: &MessageRow) -> Result<UpBegin> {
        begun(self.submit(Write::BeginUp(row.clone())).await?)
    }

    /// Stores a user's new `ccmessaging-token` (or clears it) on `session` (by its id; its
    /// tenant and user keep the write on the user's group-commit writer).
    pub async fn set_session_token(&self, session: &Session, token: Option<&str>) -> Result<()> {
        self.submit(Write::session_token(session, token))
            .await
            .map(drop)
    }

    /// Deletes published outbox rows.
    pub async fn outbox_done(&self, seqs: &[i64]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.submit(Write::OutboxDone(seqs.to_vec()))
            .await
            .map(drop)
    }

    /// Inserts or updates the stream `row` (keyed by (app, stream_id)) and applies `commit`
    /// (its events) in the same transaction.
    pub async fn tim_stream_save(&self, row: &TimStreamRow, commit: Commit) -> Result<Committed> {
        let w = Write::TimStream(row.clone(), commit);
        committed("tim_stream_save", self.submit(w).await?)
    }

    /// Stores a callback and applies `commit` (its transcript row and outbox message, when it
    /// is published) in the same transaction.
    pub async fn tim_callback_save(
        &self,
        row: &TimCallbackRow,
        commit: Commit,
    ) -> Result<Committed> {
        let w = Write::TimCallback(row.clone(), commit);
        committed("tim_callback_save", self.submit(w).await?)
    }

    /// Records a failed publish of row `seq` (a failure of its own): its attempts so far, the
    /// error, and when it may be tried again. Its subject's later rows wait for it.
    pub async fn outbox_failed(
        &self,
        seq: i64,
        attempts: i64,
        next_attempt_at: OffsetDateTime,
        error: &str,
    ) -> Result<()> {
        let w = Write::OutboxFailed {
            seq,
            attempts,
            next_attempt_at,
            error: error.to_owned(),
        };
        self.submit(w).await.map(drop)
    }

    /// Moves outbox row `seq` into `dead_letters` (source `outbox`) with `reason` and `error`, and
    /// stores `event` (the `error` event announcing it, given the dead letter's id as
    /// `deadLetter`) with its outbox row, in one transaction. Returns the dead letter's id; `None`
    /// (storing nothing) if the row is gone.
    pub async fn outbox_dead(
        &self,
        seq: i64,
        reason: &str,
        error: &str,
        event: Option<&EventRecord>,
    ) -> Result<Option<i64>> {
        let w = Write::OutboxDead {
            seq,
            reason: reason.to_owned(),
            error: error.to_owned(),
            event: event.cloned(),
        };
        let got = self.submit(w).await?;
        answer("outbox_dead", got, |w| match w {
            Written::Id(id) => Some(*id),
            _ => None,
        })
    }

    /// Stores a dead letter; `None` (changing nothing) if its (source, msg_id) is stored already.
    pub async fn dead_letter_add(&self, dead: &DeadLetter) -> Result<Option<i64>> {
        let got = self.submit(Write::DeadLetterAdd(dead.clone())).await?;
        answer("dead_letter_add", got, |w| match w {
            Written::Id(id) => Some(*id),
            _ => None,
        })
    }

    /// Publishes dead letter `id` again, in one transaction: an outbox row with its subject and
    /// payload (Nats-Msg-Id: its own for an outbox row, else `fresh_msg_id`), the uplink row of
    /// its `message_id` (if failed) set back to pending so that the relay sends it again, and the
    /// dead letter deleted. Returns it; `None` if there is no such dead letter.
    pub async fn dead_letter_retry(
        &self,
        id: i64,
        fresh_msg_id: &str,
    ) -> Result<Option<DeadLetter>> {
        let w = Write::DeadLetterRetry {
            id,
            fresh_msg_id: fresh_msg_id.to_owned(),
        };
        let got = self.submit(w).await?;
        answer("dead_letter_retry", got, |w| match w {
            Written::Retried(d) => Some(d.as_deref().cloned()),
            _ => None,
        })
    }

    /// Deletes dead letter `id`; false if there is none.
    pub async fn dead_letter_drop(&self, id: i64) -> Result<bool> {
        let got = self.submit(Write::DeadLetterDrop(id)).await?;
        answer("dead_letter_drop", got, changed)
    }

    /// Records a failed download attempt of a pending file (it stays pending).
    pub async fn file_attempt_failed(
        &self,
        relay_id: &str,
        attempts: i64,
        error_code: &str,
        error_message: &str,
    ) -> Result<()> {
        let w = Write::FileAttemptFailed {
            relay_id: relay_id.to_owned(),
            attempts,
            error_code: error_code.to_owned(),
            error_message: error_message.to_owned(),
        };
        self.submit(w).await.map(drop)
    }

    /// In one transaction: fills the pending file's row, rewrites its DownMessage (outbox payload
    /// and transcript body) to `done.payload`, and releases the held outbox row. Returns false
    /// (changing nothing) when the file is not pending.
    pub async fn finish_file(&self, done: &FileDone) -> Result<bool> {
        let got = self.submit(Write::FinishFile(done.clone())).await?;
        answer("finish_file", got, changed)
    }

    /// Queues `write` (fitted to the limit, if there is one) and waits for its result; logs and
    /// counts the dead letters of the outbox messages it set aside.
    async fn submit(&self, write: Write) -> Result<Written> {
        let result = self.submit_fitted(write).await;
        if let Err(crate::StoreError::Fenced { partition }) = &result {
            crate::metrics::fenced(*partition);
        }
        result
    }

    async fn submit_fitted(&self, mut write: Write) -> Result<Written> {
        let group = &self.shared.group;
        let Some(limit) = &self.shared.options.limit else {
            return group.queue(write).await;
        };
        limit.fit_write(&mut write);
        let letters: Vec<DeadLetter> = match &write {
            Write::Commit(c)
            | Write::Fact(c)
            | Write::TimStream(_, c)
            | Write::TimCallback(_, c) => c
                .set_aside
                .iter()
                .map(|s| DeadLetter {
                    payload: Vec::new(),
                    ..s.dead.clone()
                })
                .collect(),
            _ => Vec::new(),
        };
        let written = group.queue(write).await?;
        if let Written::Committed(c) = &written {
            for (msg_id, id) in &c.set_aside {
                if let Some(d) = letters.iter().find(|d| &d.msg_id == msg_id) {
                    crate::deadletter::logged(d, *id);
                }
            }
        }
        Ok(written)
    }

    // --- Retention and erasure ([`crate::privacy`]) ------------------------------------------

    /// One step of retention or erasure: one transaction of its own, beside group commit's.
    pub async fn purge(&self, step: &crate::privacy::Purge) -> Result<crate::privacy::Purged> {
        self.shared.backend.purge(step).await
    }

    /// Makes what was deleted from `tables` unreadable in the database's files, as far as the
    /// database can ([`Backend::scrub`]).
    pub async fn scrub(
        &self,
        tables: &[crate::privacy::Table],
    ) -> Result<crate::privacy::Scrubbed> {
        self.shared.backend.scrub(tables).await
    }

    /// Stores an erasure's audit record; its id.
    pub async fn record_erasure(&self, erasure: &crate::privacy::Erasure) -> Result<i64> {
        self.shared.backend.record_erasure(erasure).await
    }

    // --- The commit-and-retry path ----------------------------------------------------------

    /// Commits, retrying while the database is away (the work it records was done and must not
    /// be lost), until it succeeds, fails for good, or the store's cancellation token fires.
    pub async fn commit_retrying(&self, commit: Commit) -> Result<Committed> {
        self.save_retrying("the commit", || self.commit(commit.clone()))
            .await
    }

    /// [`Self::commit_fact`], retried as [`Self::commit_retrying`] is.
    pub async fn commit_fact_retrying(&self, commit: Commit) -> Result<Committed> {
        self.save_retrying("the commit", || self.commit_fact(commit.clone()))
            .await
    }

    /// Runs `save` (a write that commits: [`Self::commit`], [`Self::tim_stream_save`], …) as
    /// [`Self::commit_retrying`] does; `what` names it in the log while it is retried.
    pub async fn save_retrying<F, Fut>(&self, what: &str, save: F) -> Result<Committed>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Committed>>,
    {
        let c = self.retrying(Access::Write, what, save).await?;
        if c.outboxed > 0 {
            self.outboxed();
        }
        Ok(c)
    }

    /// [`Self::finish_file`], retried as [`Self::commit_retrying`] is.
    pub async fn finish_file_retrying(&self, done: &FileDone) -> Result<bool> {
        let released = self
            .retrying(Access::Write, "the file's release", || {
                self.finish_file(done)
            })
            .await?;
        if released {
            self.outboxed();
        }
        Ok(released)
    }

    /// Runs the read `read`, retrying while the database is away, until it answers, fails for
    /// good, or the store's cancellation token fires; `what` names it in the log while it is
    /// retried.
    pub async fn read_retrying<T, F, Fut>(&self, what: &str, read: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.retrying(Access::Read, what, read).await
    }

    /// The one retry loop: every attempt's outcome updates [`StoreHealth`] (a retryable failure
    /// takes the database for away; an answer — a write's, or a read's unless the database
    /// refuses writes — for back), and a write's its `ccrelay_store_commit_seconds`.
    async fn retrying<T, F, Fut>(&self, access: Access, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let health = &self.shared.health;
        let cancel = &self.shared.options.cancel;
        // The database answered: it is back, unless only a write can tell.
        let answered = || {
            if access == Access::Write || !health.is_refusing() {
                health.set_up();
            }
        };
        let mut delay = RETRY_FIRST;
        loop {
            let started = Instant::now();
            let result = op().await;
            if access == Access::Write {
                crate::metrics::store_commit(
                    started.elapsed(),
                    result.as_ref().err().map(|e| e.is_retryable()),
                );
            }
            match result {
                Ok(v) => {
                    answered();
                    return Ok(v);
                }
                Err(e) if e.is_retryable() && !cancel.is_cancelled() => {
                    health.set_down(&e);
                    tracing::warn!(error = %e, retry_in = ?delay, "Database unavailable; retrying {what}");
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(RETRY_MAX);
                }
                Err(e) => {
                    if !e.is_retryable() {
                        // The database answered about this call itself.
                        answered();
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Outbox rows were added: tells whoever publishes them.
    fn outboxed(&self) {
        if let Some(hook) = &self.shared.options.on_outboxed {
            hook();
        }
    }
}
