//! The robot stream scheduler of one app: `send_stream_msg` calls for every `streamId`, in
//! order, under the app's rate limit.
//!
//! One task owns the state of all the app's streams (a map and a FIFO of streams with work), so
//! thousands of streams cost a few hundred bytes each and no task of their own. Per stream:
//! - at most one call is in flight; the first call's `MsgKey` is carried on every later one;
//! - chunks that arrive while a call is in flight or while the limiter holds the stream back are
//!   merged into its next call (so calls ≤ chunks), up to [`MAX_MERGED_BYTES`];
//! - the last call carries `Finish: 1`: the chunk with `finish`, or, after `stream_idle_timeout`
//!   without a chunk, a call the relay makes itself with what is pending (maybe nothing);
//! - a retryable answer (rate limit, internal error, transport) puts the chunks back and retries
//!   after a backoff (exponential, jitter, capped), through the limiter again; a final answer
//!   fails the stream, and so does the [`super::Budget`] of sends: `relay.up_attempts` retryable
//!   answers (rate limits not counted) or an oldest pending chunk older than `relay.up_max_age`
//!   (since it reached `_IN`) end it with `reason` `attempts` / `age` and a dead letter;
//! - after every call the stream's row (assembled text, `MsgKey`, counts) is saved, with the
//!   `stream.result` event when it ended, and only then are the chunks acknowledged.
//!
//! Streams are served round-robin: a stream whose call returns goes to the back of the line.
//! A redelivered chunk (JetStream sequence at or below the stream's last) is acknowledged and
//! skipped; a stream seen for the first time since start is looked up in the store, so a restart
//! continues it with its `MsgKey`.
//!
//! The scheduler logs in the span `streams` (`app`), a call and its save in the span `stream`
//! (`app`, `stream_id`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::ratelimit::RateLimiter;
use super::{Sink, TimUpstream, error_fields};
use crate::bus::ack::Disposition;
use contract::payload::{Event, event_type};
use contract::tim_payload::TimChunk;
use store::deadletter::{Received, Why};
use store::{Commit, DeadLetter, MessageStatus, TimStreamRow, dead_source, kind};
use store::{event_record, now};
use tim::TimError;
use tim::wire::{MAX_BODY_BYTES, StreamMsgRequest};

/// Most bytes of chunk text merged into one call (the request must stay under 12 KB).
pub const MAX_MERGED_BYTES: usize = MAX_BODY_BYTES - 1024;
/// How long a finished stream is remembered in memory (later chunks are refused from it).
const TOMBSTONE: Duration = Duration::from_secs(600);

/// One chunk, as the consumer hands it over.
pub struct ChunkIn {
    pub user: String,
    pub chunk: TimChunk,
    /// JetStream stream sequence (0: unknown; never skipped as a redelivery).
    pub seq: u64,
    /// When it reached the `_IN` stream (its age counts against the budget).
    pub received_at: OffsetDateTime,
    /// Told once the chunk's outcome is committed. Dropped unanswered: deliver it again.
    pub done: Option<oneshot::Sender<Disposition>>,
}

/// What the scheduler needs.
pub struct StreamCtx {
    pub app: Arc<str>,
    pub upstream: Arc<dyn TimUpstream>,
    pub limiter: Arc<RateLimiter>,
    pub sink: Sink,
    pub idle_timeout: Duration,
}

/// Feeds one app's scheduler. Cheap to clone.
#[derive(Clone)]
pub struct StreamHandle {
    tx: mpsc::UnboundedSender<Msg>,
}

impl StreamHandle {
    /// Queues a chunk. When the scheduler has stopped the chunk is dropped, its `done` unanswered
    /// (so JetStream delivers it again).
    pub fn push(&self, c: ChunkIn) -> Result<(), SchedulerStopped> {
        self.tx.send(Msg::Chunk(c)).map_err(|_| SchedulerStopped)
    }
}

/// The app's stream scheduler is not running (the relay is stopping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stream scheduler has stopped")]
pub struct SchedulerStopped;

/// Starts the scheduler on `tracker`, in the span `streams` (`app`); it stops when the sink's
/// token is cancelled.
pub fn spawn(ctx: StreamCtx, tracker: &TaskTracker) -> StreamHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let span = tracing::error_span!("streams", app = %ctx.app);
    let sched = Scheduler {
        ctx: Arc::new(ctx),
        tx: tx.clone(),
        streams: HashMap::new(),
        ready: VecDeque::new(),
        delayed: BinaryHeap::new(),
        tracker: tracker.clone(),
    };
    tracker.spawn(sched.run(rx).instrument(span));
    StreamHandle { tx }
}

enum Msg {
    Chunk(ChunkIn),
    Loaded {
        key: String,
        row: Result<Option<TimStreamRow>, String>,
    },
    Done {
        key: String,
        outcome: CallOutcome,
    },
    /// Streams a previous run left unfinished.
    Resume(Vec<TimStreamRow>),
}

/// How many unfinished streams a start picks up to finish.
const RESUME_LIMIT: i64 = 100_000;

enum CallOutcome {
    /// Accepted and saved (as `row`); the chunks were acknowledged.
    Sent { row: TimStreamRow },
    /// Worth retrying: the chunks come back.
    Retry {
        taken: Vec<Pending>,
        error: TimError,
    },
    /// The stream failed (saved, chunks acknowledged).
    Failed,
    /// The stream's row could not be saved: the chunks will be redelivered.
    Unsaved,
}

struct Pending {
    seq: u64,
    text: String,
    finish: bool,
    received_at: OffsetDateTime,
    done: Option<oneshot::Sender<Disposition>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Looking for the stream in the store; chunks wait.
    Loading,
    /// Nothing to send.
    Idle,
    /// In the ready line.
    Queued,
    /// A call is out.
    InFlight,
    /// Backing off after a retryable failure.
    Waiting,
    /// Finished or failed.
    Closed,
}

struct StreamState {
    user: String,
    from: Option<String>,
    msg_key: Option<String>,
    /// What Tencent accepted so far.
    text: String,
    chunks: i64,
    calls: i64,
    last_seq: u64,
    created_at: OffsetDateTime,
    pending: VecDeque<Pending>,
    phase: Phase,
    /// The relay finishes the stream itself (idle).
    idle_finish: bool,
    last_chunk: Instant,
    retries: u32,
    backoff: Option<ExponentialBackoff>,
    closed_at: Option<Instant>,
}

struct Scheduler {
    ctx: Arc<StreamCtx>,
    tx: mpsc::UnboundedSender<Msg>,
    streams: HashMap<String, StreamState>,
    ready: VecDeque<String>,
    delayed: BinaryHeap<Reverse<(Instant, String)>>,
    tracker: TaskTracker,
}

fn answer(p: &mut Pending, d: Disposition) {
    if let Some(tx) = p.done.take() {
        let _ = tx.send(d);
    }
}

impl Scheduler {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let cancel = self.ctx.sink.cancel.clone();
        self.load_unfinished();
        let sweep_every =
            (self.ctx.idle_timeout / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
        let mut sweep = tokio::time::interval(sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = self.dispatch();
            tokio::select! {
                _ = cancel.cancelled() => break,
                m = rx.recv() => match m {
                    Some(m) => self.on_msg(m),
                    None => break,
                },
                _ = tokio::time::sleep_until(wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))), if wake.is_some() => {}
                _ = sweep.tick() => self.sweep(),
            }
        }
        // Unanswered chunks are dropped with their senders: JetStream delivers them again.
    }

    /// Starts every call the limiter allows now; returns when to look again.
    fn dispatch(&mut self) -> Option<Instant> {
        let now = Instant::now();
        while let Some(Reverse((at, _))) = self.delayed.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, key))) = self.delayed.pop() else {
                break;
            };
            if let Some(s) = self.streams.get_mut(&key)
                && s.phase == Phase::Waiting
            {
                s.phase = Phase::Queued;
                self.ready.push_back(key);
            }
        }
        let mut wake = self.delayed.peek().map(|Reverse((at, _))| *at);
        while let Some(key) = self.ready.front() {
            let live = self
                .streams
                .get(key)
                .is_some_and(|s| s.phase == Phase::Queued);
            if !live {
                self.ready.pop_front();
                continue;
            }
            if let Err(at) = self.ctx.limiter.try_acquire_at(now) {
                wake = Some(wake.map_or(at, |w| w.min(at)));
                break;
            }
            if let Some(key) = self.ready.pop_front() {
                self.start_call(key);
            }
        }
        wake
    }

    fn on_msg(&mut self, m: Msg) {
        match m {
            Msg::Chunk(c) => self.on_chunk(c),
            Msg::Loaded { key, row } => self.on_loaded(key, row),
            Msg::Done { key, outcome } => self.on_done(key, outcome),
            Msg::Resume(rows) => self.on_resume(rows),
        }
    }

    fn on_chunk(&mut self, mut c: ChunkIn) {
        let key = c.chunk.stream_id.clone();
        let p = Pending {
            seq: c.seq,
            text: std::mem::take(&mut c.chunk.chunk),
            finish: c.chunk.finish,
            received_at: c.received_at,
            done: c.done.take(),
        };
        let Some(s) = self.streams.get_mut(&key) else {
            let s = StreamState {
                user: c.user,
                from: c.chunk.from,
                msg_key: None,
                text: String::new(),
                chunks: 0,
                calls: 0,
                last_seq: 0,
                created_at: now(),
                pending: VecDeque::from([p]),
                phase: Phase::Loading,
                idle_finish: false,
                last_chunk: Instant::now(),
                retries: 0,
                backoff: None,
                closed_at: None,
            };
            self.streams.insert(key.clone(), s);
            let store = self.ctx.sink.store.clone();
            let app = self.ctx.app.clone();
            let tx = self.tx.clone();
            self.tracker.spawn(async move {
                // Retried while the database is away: giving up would hand this chunk back to
                // JetStream while a later one of the same stream could go ahead of it.
                let row = store
                    .read_retrying("the stream's state", || store.tim_stream(&app, &key))
                    .await
                    .map_err(|e| e.to_string());
                let _ = tx.send(Msg::Loaded { key, row });
            });
            return;
        };
        if s.user != c.user {
            let reason = format!("streamId: belongs to another user ({:?})", s.user);
            let mut p = p;
            self.refuse(&c.user, &key, &mut p, reason);
            return;
        }
        if p.seq != 0 && p.seq <= s.last_seq {
            let mut p = p;
            answer(&mut p, Disposition::Ack); // a redelivery of what was sent
            return;
        }
        if s.phase == Phase::Closed {
            let user = s.user.clone();
            let mut p = p;
            self.refuse(
                &user,
                &key,
                &mut p,
                "streamId: the stream is already finished".into(),
            );
            return;
        }
        if s.from.is_none() {
            s.from = c.chunk.from;
        }
        s.last_chunk = Instant::now();
        s.pending.push_back(p);
        if s.phase == Phase::Idle {
            s.phase = Phase::Queued;
            self.ready.push_back(key);
        }
    }

    /// Refuses one chunk with an `error` event (committed, then acknowledged).
    fn refuse(&self, user: &str, stream_id: &str, p: &mut Pending, reason: String) {
        tracing::warn!(user, stream_id, reason, "Tencent stream chunk refused");
        let sink = self.ctx.sink.clone();
        let (field, why) = reason.split_once(": ").unwrap_or(("streamId", &reason));
        let mut commit = sink.refusal(&self.ctx.app, user, "invalid_request", field, why);
        if let Some(e) = commit.events.first_mut() {
            // Name the stream in the event.
            if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&e.body) {
                v["streamId"] = stream_id.into();
                e.body = v.to_string();
            }
        }
        let done = p.done.take();
        self.tracker.spawn(async move {
            let d = match sink.commit(commit).await {
                Ok(_) => Disposition::Ack,
                Err(_) => Disposition::Retry(Duration::from_secs(5)),
            };
            if let Some(tx) = done {
                let _ = tx.send(d);
            }
        });
    }

    /// Reads the streams a previous run left open (retrying while the database is away), so that
    /// the idle sweep finishes those whose producer is gone: without this a stream whose last
    /// chunk came before a restart would never get its `Finish: 1`.
    fn load_unfinished(&self) {
        let store = self.ctx.sink.store.clone();
        let app = self.ctx.app.clone();
        let tx = self.tx.clone();
        self.tracker.spawn(async move {
            let read = store.read_retrying("the unfinished robot streams", || {
                store.tim_open_streams(&app, RESUME_LIMIT)
            });
            match read.await {
                Ok(rows) => {
                    if !rows.is_empty() {
                        tracing::info!(app = %app, streams = rows.len(), "Resuming unfinished robot streams");
                        let _ = tx.send(Msg::Resume(rows));
                    }
                }
                Err(e) if e.is_retryable() => {} // cancelled while the database is away
                Err(e) => {
                    tracing::error!(app = %app, error = %e, "Cannot read the unfinished robot streams; they will be finished when a chunk of theirs arrives");
                }
            }
        });
    }

    /// Takes up the unfinished streams of a previous run as idle: the idle timeout counts from
    /// now, so a producer that is still there can go on.
    fn on_resume(&mut self, rows: Vec<TimStreamRow>) {
        for r in rows {
            if self.streams.contains_key(&r.stream_id) {
                continue; // a chunk of it arrived first and loaded it
            }
            let s = StreamState {
                user: r.user_id,
                from: r.from_account,
                msg_key: r.msg_key,
                text: r.text,
                chunks: r.chunks,
                calls: r.calls,
                last_seq: r.last_seq.max(0) as u64,
                created_at: r.created_at,
                pending: VecDeque::new(),
                phase: Phase::Idle,
                idle_finish: false,
                last_chunk: Instant::now(),
                retries: 0,
                backoff: None,
                closed_at: None,
            };
            self.streams.insert(r.stream_id, s);
        }
    }

    fn on_loaded(&mut self, key: String, row: Result<Option<TimStreamRow>, String>) {
        let Some(s) = self.streams.get_mut(&key) else {
            return;
        };
        match row {
            Err(e) => {
                tracing::warn!(
                    stream_id = key,
                    error = e,
                    "Cannot read the stream's state; its chunks will be redelivered"
                );
                // Dropping the pending chunks' senders hands them back to JetStream.
                self.streams.remove(&key);
            }
            Ok(None) => {
                s.phase = Phase::Queued;
                self.ready.push_back(key);
            }
            Ok(Some(r)) if r.user_id != s.user => {
                // The streamId is taken by another user's stream.
                let reason = format!("streamId: belongs to another user ({:?})", r.user_id);
                let user = s.user.clone();
                let mut rest: Vec<Pending> = s.pending.drain(..).collect();
                self.streams.remove(&key);
                for p in &mut rest {
                    self.refuse(&user, &key, p, reason.clone());
                }
            }
            Ok(Some(r)) => {
                s.msg_key = r.msg_key;
                s.text = r.text;
                s.chunks = r.chunks;
                s.calls = r.calls;
                s.last_seq = r.last_seq.max(0) as u64;
                s.created_at = r.created_at;
                if s.from.is_none() {
                    s.from = r.from_account;
                }
                let last = s.last_seq;
                let mut stale = Vec::new();
                s.pending.retain_mut(|p| {
                    if p.seq != 0 && p.seq <= last {
                        stale.push(p.done.take());
                        false
                    } else {
                        true
                    }
                });
                for tx in stale.into_iter().flatten() {
                    let _ = tx.send(Disposition::Ack);
                }
                if r.finished {
                    s.phase = Phase::Closed;
                    s.closed_at = Some(Instant::now());
                    let user = s.user.clone();
                    let mut rest: Vec<Pending> = s.pending.drain(..).collect();
                    for p in &mut rest {
                        self.refuse(
                            &user,
                            &key,
                            p,
                            "streamId: the stream is already finished".into(),
                        );
                    }
                } else if s.pending.is_empty() {
                    s.phase = Phase::Idle;
                } else {
                    s.phase = Phase::Queued;
                    self.ready.push_back(key);
                }
            }
        }
    }

    fn start_call(&mut self, key: String) {
        let ctx = self.ctx.clone();
        let Some(s) = self.streams.get_mut(&key) else {
            return;
        };
        let mut taken: Vec<Pending> = Vec::new();
        let mut text = String::new();
        let mut finish = false;
        while let Some(p) = s.pending.front() {
            if !taken.is_empty() && text.len() + p.text.len() > MAX_MERGED_BYTES {
                break;
            }
            let Some(p) = s.pending.pop_front() else {
                break;
            };
            text.push_str(&p.text);
            finish = p.finish;
            taken.push(p);
            if finish {
                break;
            }
        }
        if s.idle_finish && s.pending.is_empty() {
            finish = true;
        }
        s.phase = Phase::InFlight;
        let (prev_len, prev_chunks) = (s.text.len(), s.chunks);
        let mut row = TimStreamRow {
            app: ctx.app.to_string(),
            user_id: s.user.clone(),
            stream_id: key.clone(),
            from_account: s.from.clone(),
            msg_key: s.msg_key.clone(),
            text: format!("{}{}", s.text, text),
            chunks: s.chunks + taken.len() as i64,
            calls: s.calls + 1,
            last_seq: taken
                .iter()
                .map(|p| p.seq)
                .max()
                .unwrap_or(0)
                .max(s.last_seq) as i64,
            finished: finish,
            status: if finish {
                MessageStatus::Sent
            } else {
                MessageStatus::Pending
            },
            error_code: None,
            error_info: None,
            created_at: s.created_at,
            updated_at: now(),
        };
        let tx = self.tx.clone();
        let Some(from) = s.from.clone() else {
            // Nothing can be sent without the robot account: fail the stream.
            row.calls -= 1;
            row.text.truncate(prev_len);
            row.chunks = prev_chunks;
            let error = TimError::Invalid {
                endpoint: tim::TimEndpoint::RobotSendStreamMsg,
                reason:
                    "from: missing: the first chunk of a stream names the robot account (@RBT#…)"
                        .into(),
            };
            self.tracker.spawn(async move {
                let outcome = fail(&ctx, row, taken, &error, None).await;
                let _ = tx.send(Msg::Done { key, outcome });
            });
            return;
        };
        let req = StreamMsgRequest {
            from_account: from,
            to_account: s.user.clone(),
            chunk: text,
            msg_key: s.msg_key.clone(),
            finish: finish.then_some(1),
        };
        self.tracker.spawn(async move {
            let outcome = call(&ctx, req, row, taken).await;
            let _ = tx.send(Msg::Done { key, outcome });
        });
    }

    fn on_done(&mut self, key: String, outcome: CallOutcome) {
        let Some(s) = self.streams.get_mut(&key) else {
            return;
        };
        match outcome {
            CallOutcome::Sent { row } => {
                // The row the call task saved is the stream's new state.
                s.msg_key = row.msg_key;
                s.text = row.text;
                s.chunks = row.chunks;
                s.calls = row.calls;
                s.last_seq = row.last_seq.max(0) as u64;
                s.retries = 0;
                s.backoff = None;
                if row.finished {
                    s.phase = Phase::Closed;
                    s.closed_at = Some(Instant::now());
                    let user = s.user.clone();
                    let mut rest: Vec<Pending> = s.pending.drain(..).collect();
                    for p in &mut rest {
                        self.refuse(
                            &user,
                            &key,
                            p,
                            "streamId: the stream is already finished".into(),
                        );
                    }
                } else {
                    self.after_sent(&key);
                }
            }
            CallOutcome::Retry { taken, error } => {
                for p in taken.into_iter().rev() {
                    s.pending.push_front(p);
                }
                if !error.is_rate_limited() {
                    s.retries += 1;
                }
                let budget = self.ctx.sink.budget;
                let aged = s
                    .pending
                    .iter()
                    .map(|p| p.received_at)
                    .min()
                    .is_some_and(|t| OffsetDateTime::now_utc() - t > budget.max_age);
                if aged || s.retries >= budget.attempts {
                    // The budget is spent: fail the stream with what is pending, as a dead letter.
                    let why = if aged { "age" } else { "attempts" };
                    let taken: Vec<Pending> = s.pending.drain(..).collect();
                    s.phase = Phase::InFlight;
                    let letter = self.dead_letter(&key, &taken, why, &error);
                    let row = self.failed_row(&key);
                    let ctx = self.ctx.clone();
                    let tx = self.tx.clone();
                    self.tracker.spawn(async move {
                        let outcome = fail(&ctx, row, taken, &error, Some((why, letter))).await;
                        let _ = tx.send(Msg::Done { key, outcome });
                    });
                    return;
                }
                let delay = s
                    .backoff
                    .get_or_insert_with(|| {
                        ExponentialBuilder::default()
                            .with_jitter()
                            .with_min_delay(Duration::from_millis(100))
                            .with_max_delay(Duration::from_secs(5))
                            .without_max_times()
                            .build()
                    })
                    .next()
                    .unwrap_or(Duration::from_secs(5));
                tracing::debug!(stream_id = key, code = %error.code(), retry_in = ?delay, "send_stream_msg failed; retrying");
                s.phase = Phase::Waiting;
                self.delayed.push(Reverse((Instant::now() + delay, key)));
            }
            CallOutcome::Failed => {
                s.phase = Phase::Closed;
                s.closed_at = Some(Instant::now());
                let user = s.user.clone();
                let mut rest: Vec<Pending> = s.pending.drain(..).collect();
                for p in &mut rest {
                    self.refuse(&user, &key, p, "streamId: the stream failed".into());
                }
            }
            CallOutcome::Unsaved => {
                // Its chunks go back to JetStream; forget the stream so it is re-read.
                self.streams.remove(&key);
            }
        }
    }

    fn after_sent(&mut self, key: &str) {
        let Some(s) = self.streams.get_mut(key) else {
            return;
        };
        if s.phase == Phase::Closed {
            return;
        }
        if s.pending.is_empty() && !s.idle_finish {
            s.phase = Phase::Idle;
        } else {
            s.phase = Phase::Queued;
            self.ready.push_back(key.to_owned());
        }
    }

    /// The dead letter of stream `key` given up for `why` with `taken` pending: its subject, and
    /// a TimChunk of the text Tencent never took.
    fn dead_letter(&self, key: &str, taken: &[Pending], why: &str, e: &TimError) -> DeadLetter {
        let s = &self.streams[key];
        let chunk = TimChunk {
            stream_id: key.to_owned(),
            from: s.from.clone(),
            chunk: taken.iter().map(|p| p.text.as_str()).collect(),
            finish: taken.iter().any(|p| p.finish),
        };
        let payload = serde_json::to_vec(&chunk).unwrap_or_default();
        let subject = self.ctx.sink.subjects.tim_stream(&self.ctx.app, &s.user);
        let msg_id = format!("tim-stream-{}-{key}", self.ctx.app);
        let received_at = taken
            .iter()
            .map(|p| p.received_at)
            .min()
            .unwrap_or_else(OffsetDateTime::now_utc);
        Received {
            source: dead_source::TIM_STREAM,
            msg_id: &msg_id,
            subject: &subject,
            payload: &payload,
            kind: kind::TIM,
            tenant: Some(&self.ctx.app),
            user: Some(&s.user),
            message_id: Some(key),
            received_at,
        }
        .letter(Why {
            reason: why,
            error: format!("given up after {} attempts: {e}", s.retries),
            attempts: i64::from(s.retries),
        })
    }

    fn failed_row(&self, key: &str) -> TimStreamRow {
        let s = &self.streams[key];
        TimStreamRow {
            app: self.ctx.app.to_string(),
            user_id: s.user.clone(),
            stream_id: key.to_owned(),
            from_account: s.from.clone(),
            msg_key: s.msg_key.clone(),
            text: s.text.clone(),
            chunks: s.chunks,
            calls: s.calls,
            last_seq: s.last_seq as i64,
            finished: true,
            status: MessageStatus::Failed,
            error_code: None,
            error_info: None,
            created_at: s.created_at,
            updated_at: now(),
        }
    }

    /// Finishes idle streams; forgets old finished ones.
    fn sweep(&mut self) {
        let now = Instant::now();
        let idle = self.ctx.idle_timeout;
        let mut gone = Vec::new();
        for (key, s) in &mut self.streams {
            match s.phase {
                Phase::Idle if now.duration_since(s.last_chunk) >= idle => {
                    tracing::debug!(stream_id = key, "Stream idle; finishing it");
                    s.idle_finish = true;
                    s.phase = Phase::Queued;
                    self.ready.push_back(key.clone());
                }
                Phase::Closed
                    if s.closed_at
                        .is_some_and(|t| now.duration_since(t) >= TOMBSTONE) =>
                {
                    gone.push(key.clone());
                }
                _ => {}
            }
        }
        for k in gone {
            self.streams.remove(&k);
        }
    }
}

/// The span of the work on one stream: `app`, `stream_id`.
fn stream_span(ctx: &StreamCtx, row: &TimStreamRow) -> tracing::Span {
    tracing::error_span!("stream", app = %ctx.app, stream_id = %row.stream_id)
}

/// One `send_stream_msg` call, then the save of its outcome, in the stream's span.
async fn call(
    ctx: &StreamCtx,
    req: StreamMsgRequest,
    row: TimStreamRow,
    taken: Vec<Pending>,
) -> CallOutcome {
    let span = stream_span(ctx, &row);
    call_in_span(ctx, req, row, taken).instrument(span).await
}

async fn call_in_span(
    ctx: &StreamCtx,
    req: StreamMsgRequest,
    mut row: TimStreamRow,
    mut taken: Vec<Pending>,
) -> CallOutcome {
    match ctx.upstream.send_stream_msg(&req).await {
        Ok(a) => {
            if row.msg_key.is_none() {
                row.msg_key = a.msg_key.clone().filter(|k| !k.is_empty());
            }
            let commit = if row.finished {
                result_commit(ctx, &row, None, None)
            } else {
                Commit::default()
            };
            let store = ctx.sink.store.clone();
            match ctx
                .sink
                .save(|| store.tim_stream_save(&row, commit.clone()))
                .await
            {
                Ok(_) => {
                    for p in &mut taken {
                        answer(p, Disposition::Ack);
                    }
                    CallOutcome::Sent { row }
                }
                Err(e) => {
                    tracing::error!(error = %e,
                        "Cannot save the stream after Tencent accepted a call; its chunks will be redelivered");
                    CallOutcome::Unsaved
                }
            }
        }
        Err(e) if e.is_retryable() => {
            if ctx.sink.cancel.is_cancelled() {
                // Shutting down: the chunks go back to JetStream unanswered (dropping their
                // senders), to be sent after the restart; the stream has not failed.
                drop(taken);
                return CallOutcome::Unsaved;
            }
            CallOutcome::Retry { taken, error: e }
        }
        Err(e) => {
            row.calls -= 1;
            row.text.truncate(row.text.len() - req.chunk.len());
            row.chunks -= taken.len() as i64;
            fail_in_span(ctx, row, taken, &e, None).await
        }
    }
}

/// Saves the stream as failed with its `stream.result`, and acknowledges `taken`. `dead`: the
/// budget spent (`attempts` / `age`) and the dead letter recorded first, named in the event.
async fn fail(
    ctx: &StreamCtx,
    row: TimStreamRow,
    taken: Vec<Pending>,
    e: &TimError,
    dead: Option<(&str, DeadLetter)>,
) -> CallOutcome {
    let span = stream_span(ctx, &row);
    fail_in_span(ctx, row, taken, e, dead)
        .instrument(span)
        .await
}

async fn fail_in_span(
    ctx: &StreamCtx,
    mut row: TimStreamRow,
    mut taken: Vec<Pending>,
    e: &TimError,
    dead: Option<(&str, DeadLetter)>,
) -> CallOutcome {
    tracing::warn!(code = %e.code(), error = %e, "Tencent stream failed");
    row.finished = true;
    row.status = MessageStatus::Failed;
    row.error_code = Some(e.code());
    row.error_info = Some(e.info());
    row.last_seq = row
        .last_seq
        .max(taken.iter().map(|p| p.seq).max().unwrap_or(0) as i64);
    let dead = match dead {
        None => None,
        Some((why, letter)) => match store::deadletter::record(&ctx.sink.store, &letter).await {
            Ok(id) => Some((why, id)),
            Err(err) if err.is_retryable() => {
                tracing::warn!(error = %err,
                    "Cannot store the dead letter of a Tencent stream; its chunks will be redelivered");
                return CallOutcome::Unsaved;
            }
            Err(err) => {
                tracing::error!(error = %err,
                    "Cannot store the dead letter of a Tencent stream");
                Some((why, None))
            }
        },
    };
    let commit = result_commit(ctx, &row, Some(e), dead);
    let store = ctx.sink.store.clone();
    match ctx
        .sink
        .save(|| store.tim_stream_save(&row, commit.clone()))
        .await
    {
        Ok(_) => {
            for p in &mut taken {
                answer(p, Disposition::Ack);
            }
            CallOutcome::Failed
        }
        Err(err) => {
            tracing::error!(error = %err,
                "Cannot save the failed stream; its chunks will be redelivered");
            CallOutcome::Unsaved
        }
    }
}

/// The `stream.result` event of a stream that ended; `dead` names the budget spent and the dead
/// letter, as a `send.result` does.
fn result_commit(
    ctx: &StreamCtx,
    row: &TimStreamRow,
    e: Option<&TimError>,
    dead: Option<(&str, Option<i64>)>,
) -> Commit {
    let mut ev = Event::new(event_type::STREAM_RESULT, e.is_none())
        .for_user(&ctx.app, &row.user_id)
        .with("app", &*ctx.app)
        .with("streamId", row.stream_id.as_str())
        .with("MsgKey", row.msg_key.clone().unwrap_or_default())
        .with("chunks", row.chunks)
        .with("calls", row.calls);
    ev = match e {
        None => ev
            .result("0", Some("OK".into()))
            .with("errorCode", 0)
            .with("errorInfo", ""),
        Some(e) => {
            let (code, info) = error_fields(e);
            ev.result(e.code(), Some(info.clone()))
                .with("errorCode", code)
                .with("errorInfo", info)
        }
    };
    if let Some((why, id)) = dead {
        ev = ev.with("reason", why);
        if let Some(id) = id {
            ev = ev.with("deadLetter", id);
        }
    }
    let subject = ctx.sink.subjects.tim_event_or_error(&ctx.app, &row.user_id);
    Commit {
        events: vec![event_record(kind::TIM, subject, None, &ev)],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
