//! How a batch of [`Write`]s becomes rows, for both backends: which rows each write inserts,
//! updates or deletes, in which order, what is refused as invalid or corrupt, and what each
//! caller gets back. A backend supplies the table-level statements ([`RowOps`]), each row kind
//! written by one statement of its own, and the transaction around [`write_batch`].
//!
//! [`RowOps`] is used generically, never as `dyn`: PostgreSQL implements it on the connection of
//! its transaction, one round trip per statement; SQLite implements it with its writer's cached
//! prepared statements, synchronously inside the `async fn`s, so the writer drives
//! [`write_batch`] with `futures::executor::block_on` and every future completes when first
//! polled. The slice operations take all of a batch's rows of one kind at once: PostgreSQL sends
//! them as one statement (arrays expanded with `unnest`), SQLite executes its statement per row.
//! No operation is called with an empty slice.
//!
//! A batch's single-row writes are applied one by one, in order; its commits (also those of
//! stream and callback saves) are then applied together, table by table ([`apply`]). The commits
//! of a batch are concurrent writes (each caller waits for its own), so applying their parts table
//! by table is applying them in some order; within each commit its parts keep their documented
//! order (see the crate's documentation). Summaries come last ([`crate::summary`]): each is
//! computed by one statement from the rows the batch has written by then, so a session's closing
//! commit is summarised with every row of it, its own included.
//!
//! **Outbox order.** A down's outbox row is inserted by the statement that inserts the down, and
//! an event's by the statement that inserts the event, so a batch's outbox rows are all its
//! downs' (in commit order), then all its events' — commit by commit, each commit's own events
//! followed by the events announcing its set-aside messages — then its `session.summary` events. That is not the order of applying
//! the commits one after another (where one commit's downs and events would both precede the
//! next commit's), and it need not be: the outbox publisher keeps order only per subject
//! ([`crate::Queries::outbox_pending`]), and no subject carries both downs and events (downs go
//! on `…down.<user>` and `…in.<user>`, events on `…event.<user>` and `<prefix>.error`). Within
//! each subject the rows therefore follow commit order, the same as serial application would
//! give. Keeping each outbox row with its source row is what lets PostgreSQL insert a batch's
//! downs and their outbox rows in one statement and its events and theirs in another.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use time::OffsetDateTime;

use crate::summary::{self, SessionSummary, SummaryRequest};
use crate::{
    Commit, Committed, DeadLetter, Direction, DownRecord, EventRecord, FileDone, FileRow,
    FileStatus, MessageRow, MessageStatus, OfflineRow, Result, SatisfactionRow, Session,
    SessionChange, SessionState, StoreError, TimCallbackRow, TimStreamRow, UpBegin, UpOutcome,
    Write, Written, dead_source, invalid, kind, with_dead_letter,
};

/// A down record to insert (unless its `message_code` is known), with its outbox row.
pub(crate) struct DownInsert<'a> {
    pub(crate) down: &'a DownRecord,
    /// Whether the down, if inserted, gets its outbox row (not when it is set aside).
    pub(crate) publish: bool,
    /// Whether that outbox row is held (its commit has a pending file for the down).
    pub(crate) held: bool,
}

/// An event to insert with `body`, and, when `publish`, its outbox row (msg_id its relay id,
/// payload `body`, not held).
pub(crate) struct EventInsert<'a> {
    pub(crate) event: &'a EventRecord,
    pub(crate) body: &'a str,
    pub(crate) publish: bool,
}

/// The statements of one backend inside one write transaction, one per row kind and operation.
/// A `bool` result is whether the statement matched a row.
pub(crate) trait RowOps {
    // --- sessions ---
    async fn insert_session(&mut self, s: &Session) -> Result<()>;
    /// The state of session `id`, unless it is closed.
    async fn set_session_state(&mut self, id: &str, state: SessionState) -> Result<bool>;
    /// Closes session `id`, unless it is closed.
    async fn close_session(&mut self, id: &str, reason: &str, at: OffsetDateTime) -> Result<bool>;
    async fn session_exists(&mut self, id: &str) -> Result<bool>;
    async fn set_session_token(&mut self, id: &str, token: Option<&str>) -> Result<bool>;
    /// Moves each session's `last_activity_at` forward to its time (ids distinct); how many of
    /// the sessions exist.
    async fn touch_sessions(&mut self, touches: &[(&str, OffsetDateTime)]) -> Result<u64>;

    // --- messages ---
    /// Inserts the up row `row` (direction up, with a message_id) as Pending, unless its message
    /// has a row; whether it did.
    async fn insert_pending_up(&mut self, row: &MessageRow) -> Result<bool>;
    /// The status of the up row of (kind, tenant, user, message_id), which exists.
    async fn up_status(
        &mut self,
        kind: &str,
        tenant: &str,
        user_id: &str,
        message_id: &str,
    ) -> Result<String>;
    /// The outcome of an up row (status, result, session unless `None`).
    async fn update_up(&mut self, up: &UpOutcome) -> Result<bool>;
    /// Up rows with their status, in order; an existing row of the message takes the outcome.
    async fn upsert_up_rows(&mut self, rows: &[&MessageRow]) -> Result<()>;
    /// Down rows in order, each skipped if its message_code is known (or repeated before it),
    /// and the outbox rows (created `now`) of those inserted; the relay ids inserted.
    async fn insert_downs(
        &mut self,
        downs: &[DownInsert<'_>],
        now: OffsetDateTime,
    ) -> Result<HashSet<String>>;
    async fn set_message_body(&mut self, relay_id: &str, body: &str) -> Result<()>;
    /// Sets a failed up row back to pending.
    async fn up_pending_again(
        &mut self,
        kind: &str,
        tenant: &str,
        user_id: &str,
        message_id: &str,
    ) -> Result<()>;

    // --- events and the other rows of a commit ---
    /// Events in order, and their outbox rows (created `now`) in the same order.
    async fn insert_events(
        &mut self,
        events: &[EventInsert<'_>],
        now: OffsetDateTime,
    ) -> Result<()>;
    async fn insert_satisfactions(&mut self, rows: &[&SatisfactionRow]) -> Result<()>;
    /// Offline rows in order, each skipped if its message_id is known (or repeated before it).
    async fn insert_offline(&mut self, rows: &[&OfflineRow]) -> Result<()>;
    async fn insert_files(&mut self, rows: &[&FileRow]) -> Result<()>;
    async fn file_attempt_failed(
        &mut self,
        relay_id: &str,
        attempts: i64,
        error_code: &str,
        error_message: &str,
        at: OffsetDateTime,
    ) -> Result<()>;
    /// The end of a pending file's download; false if it is not pending.
    async fn finish_file(&mut self, done: &FileDone) -> Result<bool>;
    async fn upsert_tim_stream(&mut self, row: &TimStreamRow) -> Result<()>;
    async fn insert_tim_callback(&mut self, row: &TimCallbackRow) -> Result<()>;

    // --- summaries ---
    /// The summary of closed CEC session `session_id` (view `cec_session_summaries`), computed
    /// and stored (inserted or replacing its row) as of `at`; `None` if the session is not a
    /// closed CEC session.
    async fn summarize_session(
        &mut self,
        session_id: &str,
        at: OffsetDateTime,
    ) -> Result<Option<SessionSummary>>;
    /// The summary of Desk session `session_id` of app `app` (view `tim_session_summaries`),
    /// computed and stored as of `at`; `None` if no callback of it is stored.
    async fn summarize_desk(
        &mut self,
        app: &str,
        session_id: &str,
        at: OffsetDateTime,
    ) -> Result<Option<SessionSummary>>;

    // --- outbox ---
    /// An outbox row, not held.
    async fn insert_outbox(
        &mut self,
        msg_id: &str,
        subject: &str,
        payload: &[u8],
        now: OffsetDateTime,
    ) -> Result<()>;
    async fn delete_outbox(&mut self, seqs: &[i64]) -> Result<()>;
    async fn outbox_failed(
        &mut self,
        seq: i64,
        attempts: i64,
        next_attempt_at: OffsetDateTime,
        error: &str,
    ) -> Result<()>;
    /// Outbox row `seq` copied into `dead_letters` (or the dead letter of its msg_id updated);
    /// the dead letter's id, `None` if there is no such row.
    async fn outbox_to_dead_letter(
        &mut self,
        seq: i64,
        reason: &str,
        error: &str,
        at: OffsetDateTime,
    ) -> Result<Option<i64>>;
    /// Releases the held outbox row of `msg_id` with `payload`.
    async fn release_outbox(&mut self, msg_id: &str, payload: &str) -> Result<()>;

    // --- dead letters ---
    /// Dead letters in order, each skipped if its (source, msg_id) is stored; the msg_ids and
    /// ids of those inserted.
    async fn insert_dead_letters(&mut self, rows: &[&DeadLetter]) -> Result<Vec<(String, i64)>>;
    /// Dead letter `id`, deleted; `None` if there is none.
    async fn take_dead_letter(&mut self, id: i64) -> Result<Option<DeadLetter>>;
    async fn delete_dead_letter(&mut self, id: i64) -> Result<bool>;
}

/// [`crate::Backend::write_batch`] inside the transaction `rows` is in: each write's result, in
/// order.
pub(crate) async fn write_batch<R: RowOps>(rows: &mut R, writes: &[Write]) -> Result<Vec<Written>> {
    let mut done = Vec::with_capacity(writes.len());
    let mut commits = Vec::new();
    for w in writes {
        let applied = apply_write(rows, w).await?;
        done.push(applied.keep_commit(&mut commits));
    }
    let committed = apply(rows, &commits).await?;
    Applied::results(done, committed)
}

/// One [`Write`], but for its commit, if it has one.
async fn apply_write<'w, R: RowOps>(rows: &mut R, w: &'w Write) -> Result<Applied<'w>> {
    let now = || OffsetDateTime::now_utc();
    Ok(match w {
        Write::Commit(c) | Write::Fact(c) => Applied::Commit(c),
        Write::BeginUp(row) => Applied::Done(Written::Begun(begin_up(rows, row).await?)),
        Write::SessionToken {
            session_id, token, ..
        } => {
            if !rows.set_session_token(session_id, token.as_deref()).await? {
                return Err(StoreError::Corrupt(format!(
                    "session {session_id:?} does not exist"
                )));
            }
            Applied::Done(Written::Done)
        }
        Write::OutboxDone(seqs) => {
            if !seqs.is_empty() {
                rows.delete_outbox(seqs).await?;
            }
            Applied::Done(Written::Done)
        }
        Write::TimStream(row, c) => {
            rows.upsert_tim_stream(row).await?;
            Applied::Commit(c)
        }
        Write::TimCallback(row, c) => {
            rows.insert_tim_callback(row).await?;
            Applied::Commit(c)
        }
        Write::OutboxFailed {
            seq,
            attempts,
            next_attempt_at,
            error,
        } => {
            rows.outbox_failed(*seq, *attempts, *next_attempt_at, error)
                .await?;
            Applied::Done(Written::Done)
        }
        Write::OutboxDead {
            seq,
            reason,
            error,
            event,
        } => {
            let at = now();
            let id = rows.outbox_to_dead_letter(*seq, reason, error, at).await?;
            if let (Some(id), Some(e)) = (id, event) {
                // The event announcing the dead letter, with its id, and its outbox row.
                let body = with_dead_letter(&e.body, Some(id));
                let event = EventInsert {
                    event: e,
                    body: &body,
                    publish: true,
                };
                rows.insert_events(&[event], at).await?;
            }
            rows.delete_outbox(&[*seq]).await?;
            Applied::Done(Written::Id(id))
        }
        Write::DeadLetterAdd(d) => {
            let stored = rows.insert_dead_letters(&[d]).await?;
            Applied::Done(Written::Id(stored.first().map(|(_, id)| *id)))
        }
        Write::DeadLetterRetry { id, fresh_msg_id } => {
            let d = dead_letter_retry(rows, *id, fresh_msg_id).await?;
            Applied::Done(Written::Retried(d.map(Box::new)))
        }
        Write::DeadLetterDrop(id) => {
            Applied::Done(Written::Changed(rows.delete_dead_letter(*id).await?))
        }
        Write::FileAttemptFailed {
            relay_id,
            attempts,
            error_code,
            error_message,
        } => {
            rows.file_attempt_failed(relay_id, *attempts, error_code, error_message, now())
                .await?;
            Applied::Done(Written::Done)
        }
        Write::FinishFile(done) => Applied::Done(Written::Changed(finish_file(rows, done).await?)),
    })
}

/// [`crate::Store::begin_up`]: a Pending row for the up message, or what its row says.
async fn begin_up<R: RowOps>(rows: &mut R, row: &MessageRow) -> Result<UpBegin> {
    if row.direction != Direction::Up {
        return Err(invalid("begin_up takes an up row"));
    }
    let Some(message_id) = &row.message_id else {
        return Err(invalid("begin_up needs the up row's message_id"));
    };
    if rows.insert_pending_up(row).await? {
        return Ok(UpBegin::New);
    }
    let status = rows
        .up_status(&row.kind, &row.tenant, &row.user_id, message_id)
        .await?;
    Ok(match MessageStatus::parse(&status)? {
        MessageStatus::Pending => UpBegin::Pending,
        done => UpBegin::Done(done),
    })
}

/// Dead letter `id` published again (see [`crate::Store::dead_letter_retry`]): its message back
/// in the outbox (under its own msg_id if it came from the outbox, else `fresh_msg_id`), its up
/// row (if it names one) pending again; `None` if there is none.
async fn dead_letter_retry<R: RowOps>(
    rows: &mut R,
    id: i64,
    fresh_msg_id: &str,
) -> Result<Option<DeadLetter>> {
    let Some(d) = rows.take_dead_letter(id).await? else {
        return Ok(None);
    };
    let msg_id = if d.source == dead_source::OUTBOX {
        d.msg_id.as_str()
    } else {
        fresh_msg_id
    };
    rows.insert_outbox(msg_id, &d.subject, &d.payload, OffsetDateTime::now_utc())
        .await?;
    if let (Some(k), Some(t), Some(u), Some(m)) = (&d.kind, &d.tenant, &d.user_id, &d.message_id) {
        rows.up_pending_again(k, t, u, m).await?;
    }
    Ok(Some(d))
}

/// The end of a file's download (see [`crate::Store::finish_file`]): the file row, the down's
/// transcript body and its outbox row released; false if the file is not pending.
async fn finish_file<R: RowOps>(rows: &mut R, done: &FileDone) -> Result<bool> {
    if done.status == FileStatus::Pending {
        return Err(invalid("finish_file needs status stored or failed"));
    }
    if !rows.finish_file(done).await? {
        return Ok(false);
    }
    rows.set_message_body(&done.relay_id, &done.payload).await?;
    rows.release_outbox(&done.relay_id, &done.payload).await?;
    Ok(true)
}

/// After an update of session `id` matched nothing: fine if the session exists (closed, so the
/// change is moot), a caller's bug if it does not.
async fn require_session<R: RowOps>(rows: &mut R, id: &str) -> Result<()> {
    if rows.session_exists(id).await? {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!(
            "session {id:?} does not exist"
        )))
    }
}

/// Applies `change`; whether it closed a session (a close of a closed session does not).
async fn session_change<R: RowOps>(rows: &mut R, change: &SessionChange) -> Result<bool> {
    match change {
        SessionChange::Open(s) => rows.insert_session(s).await.map(|()| false),
        SessionChange::SetState { id, state } => {
            if *state == SessionState::Closed {
                return Err(invalid(
                    "SessionChange::SetState cannot close a session: use Close",
                ));
            }
            if !rows.set_session_state(id, *state).await? {
                require_session(rows, id).await?;
            }
            Ok(false)
        }
        SessionChange::Close { id, reason, at } => {
            if rows.close_session(id, reason, *at).await? {
                return Ok(true);
            }
            require_session(rows, id).await?;
            Ok(false)
        }
    }
}

/// The outcome of an up row begun earlier.
async fn up_outcome<R: RowOps>(rows: &mut R, up: &UpOutcome) -> Result<()> {
    if !rows.update_up(up).await? {
        return Err(StoreError::Corrupt(format!(
            "up outcome for a message never begun: {}/{}/{} message_id {:?}",
            up.kind, up.tenant, up.user_id, up.message_id
        )));
    }
    Ok(())
}

/// Everything of `commits` — the commits of one batch of writes — and what each did. Each kind
/// of row of all of them goes in one [`RowOps`] call.
async fn apply<R: RowOps>(rows: &mut R, commits: &[&Commit]) -> Result<Vec<Committed>> {
    check_commits(commits)?;
    let now = OffsetDateTime::now_utc();

    // By commit, the sessions it closed.
    let mut closed: Vec<Vec<&str>> = Vec::with_capacity(commits.len());
    for c in commits {
        let mut closed_here = Vec::new();
        for change in &c.sessions {
            if session_change(rows, change).await?
                && let SessionChange::Close { id, .. } = change
            {
                closed_here.push(id.as_str());
            }
        }
        closed.push(closed_here);
        if let Some(up) = &c.up {
            up_outcome(rows, up).await?;
        }
    }

    let up_rows: Vec<&MessageRow> = commits.iter().filter_map(|c| c.up_row.as_ref()).collect();
    if !up_rows.is_empty() {
        rows.upsert_up_rows(&up_rows).await?;
    }

    // A set-aside down is stored without its outbox row; one with a file of its commit is held.
    let downs: Vec<DownInsert<'_>> = commits
        .iter()
        .flat_map(|c| {
            c.down.iter().map(|d| DownInsert {
                down: d,
                publish: !c.is_set_aside(&d.publish.msg_id),
                held: c.files.iter().any(|f| f.relay_id == d.row.relay_id),
            })
        })
        .collect();
    let inserted = if downs.is_empty() {
        HashSet::new()
    } else {
        rows.insert_downs(&downs, now).await?
    };

    // The dead letters of the messages set aside (those of downs skipped as duplicates are not
    // stored), then the events announcing them, with the dead letters' ids.
    let dead: Vec<&DeadLetter> = commits
        .iter()
        .flat_map(|c| c.set_aside_stored(&inserted))
        .map(|s| &s.dead)
        .collect();
    let dead_ids: HashMap<String, i64> = if dead.is_empty() {
        HashMap::new()
    } else {
        rows.insert_dead_letters(&dead).await?.into_iter().collect()
    };
    // By the index of their commit (none allocated in a batch without set-aside messages).
    let announced: Vec<(usize, &EventRecord, String)> = commits
        .iter()
        .enumerate()
        .flat_map(|(i, c)| c.set_aside_stored(&inserted).map(move |s| (i, s)))
        .filter_map(|(i, s)| {
            let e = s.event.as_ref()?;
            let id = dead_ids.get(&s.dead.msg_id).copied();
            Some((i, e, with_dead_letter(&e.body, id)))
        })
        .collect();
    // Commit by commit: its events (a set-aside one without its outbox row), then those
    // announcing its set-aside messages.
    let own: usize = commits.iter().map(|c| c.events.len()).sum();
    let mut events: Vec<EventInsert<'_>> = Vec::with_capacity(own + announced.len());
    let mut announcing = announced.iter().peekable();
    for (i, c) in commits.iter().enumerate() {
        events.extend(c.events.iter().map(|e| EventInsert {
            event: e,
            body: &e.body,
            publish: !c.is_set_aside(&e.relay_id),
        }));
        while let Some((_, e, body)) = announcing.next_if(|(j, ..)| *j == i) {
            events.push(EventInsert {
                event: e,
                body,
                publish: true,
            });
        }
    }
    if !events.is_empty() {
        rows.insert_events(&events, now).await?;
    }

    let satisfactions: Vec<&SatisfactionRow> =
        commits.iter().flat_map(|c| &c.satisfactions).collect();
    if !satisfactions.is_empty() {
        rows.insert_satisfactions(&satisfactions).await?;
    }
    let offline: Vec<&OfflineRow> = commits.iter().flat_map(|c| &c.offline).collect();
    if !offline.is_empty() {
        rows.insert_offline(&offline).await?;
    }
    // A file whose down was skipped as a duplicate is skipped with it.
    let files: Vec<&FileRow> = commits
        .iter()
        .flat_map(|c| &c.files)
        .filter(|f| inserted.contains(&f.relay_id))
        .collect();
    if !files.is_empty() {
        rows.insert_files(&files).await?;
    }

    touch_sessions(rows, commits).await?;
    let summary_events = summarize(rows, commits, &closed, now).await?;
    let mut committed = committed_each(commits, &inserted, &dead_ids);
    for (c, n) in committed.iter_mut().zip(summary_events) {
        c.outboxed += n;
    }
    Ok(committed)
}

/// The summaries `c` computes, given the sessions it `closed`: each of its requests — but one
/// for a session it tried to close and did not (closed already) — and one, unpublished, for
/// each session it closed that it did not ask for (a summary of a CEC session is computed from
/// its id alone: it names its tenant and user).
fn summary_requests<'c>(c: &'c Commit, closed: &[&str]) -> Vec<Cow<'c, SummaryRequest>> {
    let closes = |id: &str| {
        c.sessions
            .iter()
            .any(|s| matches!(s, SessionChange::Close { id: closing, .. } if closing == id))
    };
    let is_cec = |r: &SummaryRequest, id: &str| r.kind == kind::CEC && r.session_id == id;
    let mut wanted: Vec<Cow<'c, SummaryRequest>> = c
        .summaries
        .iter()
        .filter(|r| {
            r.kind != kind::CEC || !closes(&r.session_id) || closed.contains(&r.session_id.as_str())
        })
        .map(Cow::Borrowed)
        .collect();
    for id in closed {
        if !c.summaries.iter().any(|r| is_cec(r, id)) {
            wanted.push(Cow::Owned(SummaryRequest {
                kind: kind::CEC.to_owned(),
                tenant: String::new(),
                user_id: String::new(),
                session_id: (*id).to_owned(),
                publish: None,
            }));
        }
    }
    wanted
}

/// Computes the summaries of `commits` (see [`summary_requests`]) from their rows, stores them,
/// and inserts the `session.summary` events of those that name a subject, with their outbox
/// rows; how many events each commit published.
async fn summarize<R: RowOps>(
    rows: &mut R,
    commits: &[&Commit],
    closed: &[Vec<&str>],
    now: OffsetDateTime,
) -> Result<Vec<usize>> {
    let at = crate::to_store_precision(now);
    let mut published = vec![0; commits.len()];
    let mut events: Vec<EventRecord> = Vec::new();
    for (i, c) in commits.iter().enumerate() {
        for req in summary_requests(c, &closed[i]) {
            let row = if req.kind == kind::TIM {
                rows.summarize_desk(&req.tenant, &req.session_id, at)
                    .await?
            } else {
                rows.summarize_session(&req.session_id, at).await?
            };
            if let (Some(row), Some(subject)) = (row, &req.publish) {
                events.push(summary::event(&row, subject.clone()));
                published[i] += 1;
            }
        }
    }
    if !events.is_empty() {
        let inserts: Vec<EventInsert<'_>> = events
            .iter()
            .map(|e| EventInsert {
                event: e,
                body: &e.body,
                publish: true,
            })
            .collect();
        rows.insert_events(&inserts, now).await?;
    }
    Ok(published)
}

/// Moves each session's `last_activity_at` forward to the latest time the commits give it; a
/// session that does not exist is an error.
async fn touch_sessions<R: RowOps>(rows: &mut R, commits: &[&Commit]) -> Result<()> {
    let mut touches: Vec<(&str, OffsetDateTime)> = commits
        .iter()
        .flat_map(|c| &c.touch)
        .map(|(id, at)| (id.as_str(), *at))
        .collect();
    if touches.is_empty() {
        return Ok(());
    }
    // By id, latest first; then one per id, with its latest time.
    touches.sort_unstable_by(|a, b| a.0.cmp(b.0).then(b.1.cmp(&a.1)));
    touches.dedup_by(|later, first| later.0 == first.0);
    let found = rows.touch_sessions(&touches).await?;
    if found == touches.len() as u64 {
        return Ok(());
    }
    for (id, _) in &touches {
        if !rows.session_exists(id).await? {
            return Err(StoreError::Corrupt(format!(
                "touch of session {id:?}, which does not exist"
            )));
        }
    }
    Err(StoreError::Corrupt(format!(
        "{found} of {} sessions touched, though all exist",
        touches.len()
    )))
}

/// What one write's own statements did: it is done, or its commit is left to be applied with
/// the batch's other commits, all at once (a statement per table per batch, not per write).
enum Applied<'w> {
    Done(Written),
    Commit(&'w Commit),
}

impl<'w> Applied<'w> {
    /// Its result if done; else `None`, and its commit joins `commits`.
    fn keep_commit(self, commits: &mut Vec<&'w Commit>) -> Option<Written> {
        match self {
            Applied::Done(d) => Some(d),
            Applied::Commit(c) => {
                commits.push(c);
                None
            }
        }
    }

    /// The batch's results in write order: `done` with its gaps filled, in order, by the
    /// results of the commits kept (one each, else a bug).
    fn results(done: Vec<Option<Written>>, committed: Vec<Committed>) -> Result<Vec<Written>> {
        let kept = done.iter().filter(|d| d.is_none()).count();
        if kept != committed.len() {
            return Err(StoreError::Corrupt(format!(
                "{kept} commits in a batch gave {} results",
                committed.len()
            )));
        }
        let mut committed = committed.into_iter();
        Ok(done
            .into_iter()
            .map(|d| d.unwrap_or_else(|| Written::Committed(committed.next().unwrap_or_default())))
            .collect())
    }
}

/// Refuses, before any statement, what no backend can store of a batch's commits: an up row it
/// cannot key, a file whose down is not in its commit.
fn check_commits(commits: &[&Commit]) -> Result<()> {
    for c in commits {
        if c.up_row
            .as_ref()
            .is_some_and(|r| r.direction != Direction::Up || r.message_id.is_none())
        {
            return Err(invalid("Commit::up_row takes an up row with a message_id"));
        }
        if let Some(f) = c
            .files
            .iter()
            .find(|f| !c.down.iter().any(|d| d.row.relay_id == f.relay_id))
        {
            return Err(invalid(format!(
                "file of down message {:?}, which is not in the commit",
                f.relay_id
            )));
        }
    }
    Ok(())
}

/// What each of a batch's commits did, given the relay ids of the downs the batch inserted and
/// the ids of the dead letters of its set-aside messages: its downs inserted (in its order) and
/// skipped, its outbox rows (those downs and its events, less those set aside, plus the events
/// announcing them) and its set-aside messages.
fn committed_each(
    commits: &[&Commit],
    inserted: &HashSet<String>,
    dead_ids: &HashMap<String, i64>,
) -> Vec<Committed> {
    commits
        .iter()
        .map(|c| {
            let mut d = Committed::default();
            for down in &c.down {
                if inserted.contains(&down.row.relay_id) {
                    d.inserted_down.push(down.row.relay_id.clone());
                } else {
                    d.duplicate_down += 1;
                }
            }
            let published_downs = c
                .down
                .iter()
                .filter(|down| {
                    inserted.contains(&down.row.relay_id) && !c.is_set_aside(&down.publish.msg_id)
                })
                .count();
            let published_events = c
                .events
                .iter()
                .filter(|e| !c.is_set_aside(&e.relay_id))
                .count();
            let mut announced = 0;
            for s in c.set_aside_stored(inserted) {
                announced += usize::from(s.event.is_some());
                d.set_aside
                    .push((s.dead.msg_id.clone(), dead_ids.get(&s.dead.msg_id).copied()));
            }
            d.outboxed = published_downs + published_events + announced;
            d
        })
        .collect()
}
