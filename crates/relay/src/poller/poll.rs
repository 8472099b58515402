//! One poll of one session: call `poll`, commit what came back, then decide what happens next.
//! A poll runs in the span `poll` (`tenant`, `user`), a journaled answer replayed at start-up in
//! the span `replay` (the same fields), so their log lines do not repeat them.
//!
//! The order matters for loss: CEC's poll has no acknowledgement, so an answer is the relay's to
//! keep from the moment it arrives. An answer with messages goes into the poll journal first
//! ([`super::journal`]: a crash from then on does not lose it), then is committed — transcript
//! rows, outbox rows, the session's close if the agent hung up — and everything else
//! (publishing, idle checks, token bookkeeping) comes after. A database that is away (down,
//! full, read-only) holds the commit, retried until it goes through; a shutdown leaves it in the
//! journal; an answer the store refuses for good is set aside beside the journal.
//!
//! The common poll — nothing came back — is kept small and allocation-light: it copies no token
//! or session, and the rarer paths (storing messages, closing, queue tracking, a paused
//! database) are boxed futures, so the task every poll spawns holds only the poll's own state.

use time::OffsetDateTime;
use tracing::Instrument as _;

use super::journal::{Header, Journal, Leftover};
use super::{Next, Polled};
use crate::instrument::PollMetrics;
use crate::relay::Relay;
use cec::wire::{CHANNEL_WEB, DownlinkMessage, SOURCE_CUSTOMER, SendRequest, result_code};
use cec::wire_ops::QueueInfoRequest;
use contract::payload::{DownMessage, Event, event_type, new_id};
use store::{Commit, Session, SessionChange, SessionState, SummaryRequest};
use store::{Direction, DownRecord, MessageRow, MessageStatus, OutboxMsg, event_record, now};
use store::{from_unix_micros, kind, unix_micros};

/// Consecutive final (non-retryable) failures after which a session is closed with reason `error`.
const MAX_FINAL_FAILURES: u32 = 5;

pub(crate) async fn poll_session(
    relay: &Relay,
    journal: &Journal,
    metrics: &PollMetrics,
    mut p: Box<Polled>,
) -> Next {
    let Some(tenant) = relay.tenant(&p.session.tenant) else {
        tracing::warn!(session = %p.session.id,
            "Session of a tenant that is no longer configured; not polled");
        return Next::Closed;
    };
    // Take nothing from the upstream that could not be stored now.
    if relay.store.health().is_down() && !Box::pin(relay.store.wait_up(&relay.cancel)).await {
        return Next::Again(p);
    }
    let s = &p.session;
    let client = &tenant.client;
    if !client.has_user_token(&s.user_id)
        && let Some(token) = &s.token
    {
        client.set_user_token(
            &s.user_id,
            token,
            &s.user_id,
            &tenant.config().locale,
            &s.channel_config_id,
        );
    }
    // A relay paused past its lease (SIGSTOP, a frozen VM) polls nothing it no longer owns.
    if !relay.ownership.valid() {
        return Next::Again(p);
    }
    let poll_started = std::time::Instant::now();
    let polled = client.poll_raw(&s.user_id).await;
    metrics.poll(poll_started.elapsed(), polled.is_ok());
    let (rsp, raw) = match polled {
        Ok(r) => r,
        Err(e) => {
            p.failures += 1;
            if e.is_retryable() {
                tracing::warn!(endpoint = %e.endpoint(), code = %e.code(),
                    error = %e, failures = p.failures, "Poll failed; will retry");
            } else {
                tracing::error!(endpoint = %e.endpoint(), code = %e.code(),
                    error = %e, failures = p.failures, "Poll refused");
                if p.failures >= MAX_FINAL_FAILURES {
                    return Box::pin(close(relay, p, "error", Some(e.to_string()))).await;
                }
            }
            return Next::Again(p);
        }
    };
    let received_at = now();
    if rsp.result_code != result_code::OK {
        p.failures += 1;
        tracing::warn!(code = %rsp.result_code,
            desc = rsp.result_desc.as_deref().unwrap_or(""), "Poll answered with a failure code");
        return Next::Again(p);
    }
    p.failures = 0;
    if !rsp.downlink_messages.is_empty() {
        // Into the journal before anything else is done with it: from here on a crash does not
        // lose it.
        let header = journal_header(&p.session, received_at);
        let ticket = journal.append(&header, &raw);
        tracing::trace!(journaled = ticket.is_some(),
            codes = ?rsp.downlink_messages.iter().map(|m| m.message_code.as_deref()).collect::<Vec<_>>(),
            "Poll answer in hand");
        let stored = Box::pin(store_messages(relay, tenant, &mut p, rsp, received_at)).await;
        if let Stored::Refused = stored {
            set_aside(journal, &header, &raw);
        }
        match (stored, ticket) {
            // Left in the journal: the next start replays it.
            (Stored::Interrupted, _) | (_, None) => {}
            (_, Some(t)) => journal.done(t),
        }
        match stored {
            Stored::Kept => {}
            Stored::Closed => return Next::Closed,
            Stored::Refused | Stored::Interrupted => return Next::Again(p),
        }
    }
    drop(raw);
    // Keep the stored token in step with the one the upstream last handed out.
    if let Some(current) = client.user_token_changed(&p.session.user_id, p.session.token.as_deref())
    {
        Box::pin(store_token(relay, &mut p, &current)).await;
    }
    if p.session.state == SessionState::Queued {
        Box::pin(track_queue(relay, tenant, &mut p)).await;
    }
    if p.is_idle() {
        return Box::pin(close_idle(relay, p)).await;
    }
    Next::Again(p)
}

/// Records the token the upstream handed out last with the session (best effort).
async fn store_token(relay: &Relay, p: &mut Polled, current: &str) {
    match relay
        .store
        .set_session_token(&p.session, Some(current))
        .await
    {
        Ok(()) => p.session.token = Some(current.to_owned()),
        Err(e) => {
            tracing::debug!(error = %e, "Could not store the renewed token; will try again")
        }
    }
}

/// What became of the messages a poll returned.
#[derive(Clone, Copy)]
enum Stored {
    /// Committed; the session goes on.
    Kept,
    /// Committed with the session's close (the agent hung up).
    Closed,
    /// Refused by the store for good (not for being away: that is retried until it takes it).
    Refused,
    /// Not committed: the relay is stopping. The journal keeps the answer for the next start.
    Interrupted,
}

/// The journal's header of an answer polled for `s` at `at`.
fn journal_header(s: &Session, at: OffsetDateTime) -> Header {
    Header {
        tenant: s.tenant.clone(),
        user: s.user_id.clone(),
        session: s.id.clone(),
        channel: s.channel_config_id.clone(),
        state: s.state.as_str().to_owned(),
        at: unix_micros(at),
    }
}

/// Keeps an answer the store refused for good beside the journal, and says where.
fn set_aside(journal: &Journal, header: &Header, body: &[u8]) {
    match journal.reject(header, body) {
        Ok(file) => {
            tracing::error!(file = %file.display(), "Polled messages the store refused were set aside in this file")
        }
        Err(e) => tracing::error!(error = %e,
            "Polled messages the store refused could not be set aside and are lost"),
    }
}

/// The commit of the messages one poll answer brought for session `s`: transcript rows with
/// their outbox rows (files held for download), the session's activity, and its close if the
/// agent hung up or its activation if an agent spoke while it was queued. Also whether it closes
/// the session and whether an agent spoke.
fn answer_commit(
    relay: &Relay,
    s: &Session,
    messages: Vec<DownlinkMessage>,
    received_at: OffsetDateTime,
) -> (Commit, bool, bool) {
    let mut commit = Commit::default();
    let down_subject = relay.subjects.cec_down(&s.tenant, &s.user_id);
    let mut disconnected = false;
    let mut agent_spoke = false;
    for m in messages {
        disconnected |= m.is_disconnect();
        agent_spoke |= m.source_type.as_deref() == Some("AGENT");
        let down = DownMessage {
            id: new_id(),
            tenant: s.tenant.clone(),
            user_id: s.user_id.clone(),
            channel_config_id: s.channel_config_id.clone(),
            received_at,
            file: None,
            file_error: None,
            message: m,
        };
        // A file message is committed held, its download left to the media task.
        if let Some(f) = crate::media::pending_file(kind::CEC, &s.id, &down) {
            commit.files.push(f);
        }
        commit
            .down
            .push(down_record(kind::CEC, down_subject.clone(), &s.id, &down));
    }
    commit.touch.push((s.id.clone(), received_at));
    if disconnected {
        add_close(relay, &mut commit, s, "agent", None, received_at);
    } else if agent_spoke && s.state == SessionState::Queued {
        commit.sessions.push(SessionChange::SetState {
            id: s.id.clone(),
            state: SessionState::Active,
        });
    }
    (commit, disconnected, agent_spoke)
}

/// Commits the answers an earlier run journaled (and may not have committed), in the order they
/// came; an answer committed already changes nothing (its messages' codes are known). `false`
/// if the relay stopped first: the journal keeps them for the next start.
pub async fn replay(relay: &Relay, journal: &Journal, leftover: Leftover) -> bool {
    if leftover.records.is_empty() {
        leftover.remove();
        return true;
    }
    let answers = leftover.records.len();
    tracing::info!(answers, "Replaying the poll journal of the previous run");
    let (mut stored, mut duplicates) = (0, 0);
    for r in &leftover.records {
        let h = &r.header;
        let span = tracing::error_span!("replay", tenant = %h.tenant, user = %h.user);
        let rsp = match cec::client::parse_poll(&r.body) {
            Ok(rsp) => rsp,
            Err(e) => {
                span.in_scope(|| {
                    tracing::error!(error = %e, "A journaled poll answer does not parse");
                    set_aside(journal, h, &r.body);
                });
                continue;
            }
        };
        let at = from_unix_micros(h.at).unwrap_or_else(|_| now());
        let session = Session {
            id: h.session.clone(),
            kind: kind::CEC.to_owned(),
            tenant: h.tenant.clone(),
            user_id: h.user.clone(),
            channel_config_id: h.channel.clone(),
            state: SessionState::parse(&h.state).unwrap_or(SessionState::Active),
            token: None,
            opened_at: at,
            closed_at: None,
            close_reason: None,
            last_activity_at: at,
        };
        let (commit, _, _) = answer_commit(relay, &session, rsp.downlink_messages, at);
        match relay
            .store
            .commit_fact_retrying(commit)
            .instrument(span.clone())
            .await
        {
            Ok(c) => {
                crate::instrument::messages("cec", &h.tenant, "down", c.inserted_down.len());
                stored += c.inserted_down.len();
                duplicates += c.duplicate_down;
            }
            Err(_) if relay.cancel.is_cancelled() => return false,
            Err(e) => span.in_scope(|| {
                tracing::error!(error = %e, "A journaled poll answer could not be stored");
                set_aside(journal, h, &r.body);
            }),
        }
    }
    crate::instrument::poll_journal_replayed(stored);
    tracing::info!(
        answers,
        stored,
        already_stored = duplicates,
        "Poll journal replayed"
    );
    leftover.remove();
    true
}

/// Commits the messages a poll returned (and the session's close, if the agent hung up).
async fn store_messages(
    relay: &Relay,
    tenant: &crate::relay::Tenant,
    p: &mut Polled,
    rsp: cec::wire::PollResponse,
    received_at: OffsetDateTime,
) -> Stored {
    let client = &tenant.client;
    let s = &p.session;
    {
        let (commit, disconnected, agent_spoke) =
            answer_commit(relay, s, rsp.downlink_messages, received_at);
        // What the upstream has handed out it does not give again: a fact, committed even if
        // this relay lost the partition meanwhile (the store recognises a message seen twice).
        match relay.store.commit_fact_retrying(commit).await {
            Ok(c) => {
                crate::instrument::messages("cec", &s.tenant, "down", c.inserted_down.len());
                if c.duplicate_down > 0 {
                    tracing::info!(
                        duplicates = c.duplicate_down,
                        "Upstream returned messages it had returned before; published once"
                    );
                }
            }
            Err(e) if relay.cancel.is_cancelled() => {
                tracing::warn!(error = %e,
                    "Stopping before polled messages were stored; the poll journal keeps them for the next start");
                return Stored::Interrupted;
            }
            Err(e) => {
                // The database being away is retried until it is back: only a refusal for good
                // (a bug, bad data) gets here.
                tracing::error!(error = %e,
                    "Polled messages could not be stored");
                return Stored::Refused;
            }
        }
        if disconnected {
            tracing::info!(session = %s.id, reason = "agent", "Session closed");
            client.forget_user(&s.user_id);
            return Stored::Closed;
        }
        p.session.last_activity_at = received_at;
        p.active_now(tenant.config().idle_timeout);
        if agent_spoke && p.session.state == SessionState::Queued {
            p.session.state = SessionState::Active;
        }
    }
    Stored::Kept
}

fn add_close(
    relay: &Relay,
    commit: &mut Commit,
    s: &store::Session,
    reason: &str,
    detail: Option<String>,
    at: OffsetDateTime,
) {
    commit.sessions.push(SessionChange::Close {
        id: s.id.clone(),
        reason: reason.to_owned(),
        at,
    });
    // Summarised in the same transaction, from everything stored of it by then, and published
    // after `session.closed`.
    commit.summaries.push(SummaryRequest::cec(
        s,
        Some(relay.subjects.cec_event(&s.tenant, &s.user_id)),
    ));
    let mut ev = Event::new(event_type::SESSION_CLOSED, reason != "error")
        .for_user(&s.tenant, &s.user_id)
        .with("sessionId", s.id.as_str())
        .with("reason", reason);
    if let Some(d) = detail {
        ev = ev.result("error", Some(d));
    }
    commit.events.push(event_record(
        kind::CEC,
        relay.subjects.cec_event(&s.tenant, &s.user_id),
        Some(&s.id),
        &ev,
    ));
}

async fn close(relay: &Relay, p: Box<Polled>, reason: &str, detail: Option<String>) -> Next {
    let s = &p.session;
    let mut commit = Commit::default();
    add_close(relay, &mut commit, s, reason, detail, now());
    match relay.commit(commit).await {
        Ok(_) => {
            tracing::info!(session = %s.id, reason, "Session closed");
            if let Some(t) = relay.tenant(&s.tenant) {
                t.client.forget_user(&s.user_id);
            }
            Next::Closed
        }
        Err(e) => {
            tracing::warn!(error = %e, session = %s.id, "Could not close the session; will try again");
            Next::Again(p)
        }
    }
}

/// Idle: tell the upstream the customer left (best effort), then close.
async fn close_idle(relay: &Relay, p: Box<Polled>) -> Next {
    let s = &p.session;
    if let Some(t) = relay.tenant(&s.tenant) {
        let req = SendRequest {
            channel: CHANNEL_WEB.to_owned(),
            content: String::new(),
            control_type: "DISCONNECT".to_owned(),
            from: s.user_id.clone(),
            media_type: "TEXT".to_owned(),
            sender_nickname: None,
            source_type: SOURCE_CUSTOMER.to_owned(),
            timestamp: Some(
                (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).to_string(),
            ),
            to: s.channel_config_id.clone(),
            user_agent: None,
            sender_avatar: None,
            // Same id for every attempt at closing this session.
            message_id: Some(format!("idle-{}", &s.id[s.id.len().saturating_sub(27)..])),
            trans_data: None,
        };
        if let Err(e) = t.client.send(&req).await {
            tracing::warn!(error = %e, "Idle DISCONNECT failed upstream; closing anyway");
        }
    }
    close(relay, p, "idle", None).await
}

/// While queued: ask queryQueueInfo and publish `session.queued` when the position changed.
/// Best effort: a failed query is retried at the next poll.
async fn track_queue(relay: &Relay, tenant: &crate::relay::Tenant, p: &mut Polled) {
    let s = &p.session;
    let req = QueueInfoRequest {
        user_id: s.user_id.clone(),
        channel_config_id: s.channel_config_id.clone(),
        channel: CHANNEL_WEB.to_owned(),
    };
    let info = match tenant.client.query_queue_info(&s.user_id, &req).await {
        Ok(i) => i,
        Err(e) => {
            tracing::debug!(error = %e, "queryQueueInfo failed");
            return;
        }
    };
    // A non-zero code means "no queue information": the agent may have answered already.
    if info.result_code != result_code::OK
        || info.position.is_none()
        || info.position == p.queue_position
    {
        return;
    }
    let mut ev = Event::new(event_type::SESSION_QUEUED, true)
        .for_user(&s.tenant, &s.user_id)
        .result(info.result_code.clone(), info.result_desc.clone())
        .with("sessionId", s.id.as_str());
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&info) {
        for (k, v) in fields {
            if k != "resultCode" && k != "resultDesc" {
                ev = ev.with(&k, v);
            }
        }
    }
    let commit = Commit {
        events: vec![event_record(
            kind::CEC,
            relay.subjects.cec_event(&s.tenant, &s.user_id),
            Some(&s.id),
            &ev,
        )],
        ..Default::default()
    };
    match relay.commit(commit).await {
        Ok(_) => p.queue_position = info.position,
        Err(e) => tracing::warn!(error = %e, "Could not record the queue position; will retry"),
    }
}

/// The transcript row and outbox message of a downlink message.
pub fn down_record(
    kind: &str,
    subject: String,
    session_id: &str,
    down: &DownMessage<DownlinkMessage>,
) -> DownRecord {
    let body = serde_json::to_string(down).unwrap_or_else(|_| "{}".to_owned());
    let m = &down.message;
    DownRecord {
        row: MessageRow {
            relay_id: down.id.clone(),
            kind: kind.to_owned(),
            tenant: down.tenant.clone(),
            user_id: down.user_id.clone(),
            session_id: Some(session_id.to_owned()),
            direction: Direction::Down,
            message_id: None,
            message_code: m
                .message_code
                .clone()
                .filter(|c| !c.is_empty() && c.len() <= store::MAX_KEY_BYTES),
            source_type: m.source_type.clone(),
            control_type: m.control_type.clone(),
            media_type: m.media_type.clone(),
            content: m.content.clone(),
            body: body.clone(),
            status: MessageStatus::Received,
            result_code: None,
            result_desc: None,
            stream_seq: None,
            created_at: down.received_at,
        },
        publish: OutboxMsg {
            msg_id: down.id.clone(),
            subject,
            payload: body.into_bytes(),
        },
    }
}
