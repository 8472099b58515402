//! Handling one UpMessage: validate, call CEC (retrying what is retryable), commit the message's
//! row with its outcome and events in one transaction, and only then let the caller acknowledge
//! it.
//!
//! Idempotency: the up row is keyed by (tenant, user, messageId). A redelivered message whose row
//! is committed is acknowledged without doing anything; one with no row (the relay stopped
//! between the send and the commit), or a Pending row (begun by a version that wrote one before
//! the send), is sent again with the same `messageId`, which the upstream de-duplicates. Nothing
//! is written before the send, so a message waits for one commit, not two.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use time::OffsetDateTime;
use tracing::Instrument as _;

use super::Uplink;
use super::validate::{Refusal, check_up};
pub use crate::bus::ack::Disposition;
use crate::poller::PollerHandle;
use crate::relay::{Relay, Tenant};
use cec::outcome::SendOutcome;
use cec::wire::{CHANNEL_WEB, SOURCE_CUSTOMER, SendRequest, SendResponse};
use cec::wire_ops::{UploadRequest, UploadResponse};
use cec::{CecClient, CecError};
use contract::payload::{Event, UpFile, UpMessage, event_type, new_id};
use contract::subjects::{check_token, excerpt};
use store::deadletter::{Received, Why};
use store::{
    Commit, Direction, MessageRow, MessageStatus, OfflineRow, OfflineSource, Session,
    SessionChange, SessionState, SummaryRequest, dead_source, kind,
};
use store::{event_record, now};

/// One delivered uplink message.
pub struct Delivery<'a> {
    pub subject: &'a str,
    pub payload: &'a [u8],
    /// The idempotency key used when the payload has no (valid) `messageId`: unique per stream
    /// message (see the consumer).
    pub derived_id: String,
    pub stream_seq: u64,
    /// When it reached the `_IN` stream (its age budget counts from here).
    pub received_at: OffsetDateTime,
}

impl Delivery<'_> {
    /// The message as a dead letter's source.
    fn received<'s>(
        &'s self,
        tenant: Option<&'s str>,
        user: Option<&'s str>,
        message_id: Option<&'s str>,
    ) -> Received<'s> {
        Received {
            source: dead_source::CEC_UP,
            msg_id: &self.derived_id,
            subject: self.subject,
            payload: self.payload,
            kind: kind::CEC,
            tenant,
            user,
            message_id,
            received_at: self.received_at,
        }
    }
}

/// Handles one message; see the module docs. Everything logged about a routable message is
/// logged within its span `up`, which carries `tenant`, `user` and (once known) `message_id`.
pub async fn handle(up: &Uplink, d: Delivery<'_>) -> Disposition {
    let relay = &*up.relay;
    let Some((tenant_name, _, user)) = relay.subjects.parse_cec(d.subject) else {
        // The consumer's filter makes this impossible; refuse loudly rather than drop.
        tracing::error!(
            subject = d.subject,
            "Uplink message on an unexpected subject; refused"
        );
        return refuse_unroutable(relay, &d, "subject is not P.cec.<tenant>.up.<user>".into())
            .await;
    };
    // Nothing keyed by a token no subject can carry is stored: such a message names no
    // routable user (its events could not be published), so it is refused on `P.error`.
    if let Err(e) = check_token(tenant_name)
        .map_err(|e| format!("tenant {e}"))
        .and_then(|()| check_token(user).map_err(|e| format!("user {e}")))
    {
        return refuse_unroutable(relay, &d, e).await;
    }
    let span = tracing::error_span!(
        "up",
        tenant = tenant_name,
        user,
        message_id = tracing::field::Empty
    );
    handle_routed(relay, &up.poller, &d, tenant_name, user)
        .instrument(span)
        .await
}

/// [`handle`] of a message whose subject names a routable tenant and user.
async fn handle_routed(
    relay: &Relay,
    poller: &PollerHandle,
    d: &Delivery<'_>,
    tenant_name: &str,
    user: &str,
) -> Disposition {
    let parsed = serde_json::from_slice::<UpMessage>(d.payload);
    let message_id = match &parsed {
        Ok(m) => m
            .message_id
            .clone()
            .filter(|id| super::validate::check_message_id(id).is_ok())
            .unwrap_or_else(|| d.derived_id.clone()),
        Err(_) => d.derived_id.clone(),
    };
    tracing::Span::current().record("message_id", message_id.as_str());
    let tenant = relay.tenant(tenant_name);
    let refusal: Option<(&str, Refusal)> = match (&parsed, tenant) {
        (Err(e), _) => Some((
            "invalid_request",
            Refusal {
                field: "payload".into(),
                reason: format!("not a valid UpMessage: {e}"),
            },
        )),
        (Ok(_), None) => Some((
            "unknown_tenant",
            Refusal {
                field: "tenant".into(),
                reason: format!("no [[cec]] tenant is named {tenant_name:?}"),
            },
        )),
        (Ok(m), Some(_)) => check_up(user, m).err().map(|r| ("invalid_request", r)),
    };

    // A redelivered message whose outcome is committed is acknowledged and nothing more. This is
    // a read, not a write: the message's row is written once, with its outcome
    // (`UpCtx::outcome`), so a message waits for one commit, after its send, not one before it.
    let lookup = match relay
        .store
        .up_lookup(kind::CEC, tenant_name, user, &message_id)
        .await
    {
        Ok(l) => l,
        Err(e) if e.is_retryable() => {
            tracing::warn!(error = %e, "Cannot look up uplink message; will retry");
            return Disposition::Retry(Duration::from_secs(1));
        }
        Err(e) => {
            // Not a passing fault: an operator must look. The message stays in the stream.
            tracing::error!(error = %e,
                "Cannot look up uplink message; it is left unacknowledged");
            return Disposition::Retry(Duration::from_secs(30));
        }
    };
    match lookup.status {
        Some(status) if status != MessageStatus::Pending => {
            tracing::debug!(?status, "Redelivered uplink message already handled");
            return Disposition::Ack;
        }
        // New, or Pending (a row an earlier version began before its send): send, same id.
        _ => {}
    }

    let (request, body) = match (&parsed, tenant, &refusal) {
        (Ok(m), Some(t), None) => {
            let req = build_request(t, user, &message_id, m);
            let body = serde_json::to_string(&req).unwrap_or_default();
            (Some(req), body)
        }
        // Kept as received, but as JSON (the transcript's bodies are JSON): a payload that is not a
        // valid UpMessage — or not JSON at all — is stored as a string under `payload`.
        _ => {
            let raw = String::from_utf8_lossy(d.payload);
            let body = match serde_json::from_slice::<serde_json::Value>(d.payload) {
                Ok(v) => serde_json::json!({ "payload": v }),
                Err(_) => serde_json::json!({ "payload": raw }),
            };
            (None, body.to_string())
        }
    };
    let ctx = UpCtx {
        relay,
        poller,
        tenant_name,
        user,
        message_id: &message_id,
        row: up_row(tenant_name, user, &message_id, &parsed, body, d.stream_seq),
        d,
        attempts: AtomicU32::new(0),
        spent: OnceLock::new(),
    };

    if let Some((code, refusal)) = refusal {
        tracing::warn!(code, reason = %refusal, "Uplink message refused");
        return ctx.commit_refusal(code, &refusal).await;
    }
    let (Ok(m), Some(t), Some(req)) = (parsed, tenant, request) else {
        return Disposition::Ack; // unreachable: no refusal means all three are present
    };
    let existing = lookup.session;
    match m.control_type() {
        "CONNECT" => ctx.connect(t, &m, req, existing).await,
        "DISCONNECT" => ctx.disconnect(t, req, existing).await,
        _ => ctx.other(t, req, m.file.as_ref(), existing).await,
    }
}

/// Builds the `send` body: the UpMessage plus what the relay fills in.
fn build_request(t: &Tenant, user: &str, message_id: &str, m: &UpMessage) -> SendRequest {
    SendRequest {
        channel: CHANNEL_WEB.to_owned(),
        content: m.content.clone().unwrap_or_default(),
        control_type: m.control_type().to_owned(),
        from: user.to_owned(),
        media_type: super::validate::effective_media_type(m),
        sender_nickname: m.sender_nickname.clone(),
        source_type: SOURCE_CUSTOMER.to_owned(),
        timestamp: Some((OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).to_string()),
        to: m
            .channel_config_id
            .clone()
            .unwrap_or_else(|| t.config().channel_config_id.clone()),
        user_agent: m.user_agent.clone(),
        sender_avatar: m.sender_avatar.clone(),
        message_id: Some(message_id.to_owned()),
        trans_data: m.trans_data.clone(),
    }
}

/// The message's transcript row as received (Pending; see [`UpCtx::outcome`]).
fn up_row(
    tenant: &str,
    user: &str,
    message_id: &str,
    parsed: &Result<UpMessage, serde_json::Error>,
    body: String,
    seq: u64,
) -> MessageRow {
    let m = parsed.as_ref().ok();
    MessageRow {
        relay_id: new_id(),
        kind: kind::CEC.to_owned(),
        tenant: tenant.to_owned(),
        user_id: user.to_owned(),
        session_id: None,
        direction: Direction::Up,
        message_id: Some(message_id.to_owned()),
        message_code: None,
        source_type: Some(SOURCE_CUSTOMER.to_owned()),
        control_type: m.map(|m| m.control_type().to_owned()),
        media_type: m.map(super::validate::effective_media_type),
        content: m.and_then(|m| m.content.clone()),
        body,
        status: MessageStatus::Pending,
        result_code: None,
        result_desc: None,
        stream_seq: i64::try_from(seq).ok(),
        created_at: now(),
    }
}

struct UpCtx<'a> {
    relay: &'a Relay,
    poller: &'a PollerHandle,
    tenant_name: &'a str,
    user: &'a str,
    message_id: &'a str,
    /// The message's row as received; committed only with its outcome ([`UpCtx::outcome`]).
    row: MessageRow,
    d: &'a Delivery<'a>,
    /// Upstream attempts so far (`relay.up_attempts` is the budget).
    attempts: AtomicU32,
    /// Set when the attempt or age budget is spent: `attempts` or `age`.
    spent: OnceLock<&'static str>,
}

/// Why an upstream call did not produce an answer.
enum CallFailed {
    /// Failed for good.
    Final(CecError),
    /// The relay is stopping: leave the message for redelivery.
    Cancelled,
}

impl<'a> UpCtx<'a> {
    fn event(&self, ty: &str, ok: bool) -> Event {
        Event::new(ty, ok).for_user(self.tenant_name, self.user)
    }

    fn event_subject(&self) -> String {
        self.relay
            .subjects
            .cec_event_or_error(self.tenant_name, self.user)
    }

    /// The message's row with its outcome, for [`Commit::up_row`]: written once, inserted or
    /// finishing a Pending row an earlier version began.
    fn outcome(
        &self,
        status: MessageStatus,
        session_id: Option<&str>,
        code: Option<String>,
        desc: Option<String>,
    ) -> MessageRow {
        MessageRow {
            status,
            session_id: session_id.map(str::to_owned),
            result_code: code,
            result_desc: desc,
            ..self.row.clone()
        }
    }

    async fn commit_refusal(&self, code: &str, r: &Refusal) -> Disposition {
        let error = self
            .event(event_type::ERROR, false)
            .result(code, Some(r.to_string()))
            .with("messageId", self.message_id)
            .with("field", r.field.as_str())
            .with(
                "error",
                serde_json::json!({"code": code, "message": r.to_string()}),
            );
        let result = self
            .event(event_type::UP_RESULT, false)
            .result(code, Some(r.to_string()))
            .with("messageId", self.message_id);
        let subject = self.event_subject();
        let commit = Commit {
            up_row: Some(self.outcome(
                MessageStatus::Failed,
                None,
                Some(code.to_owned()),
                Some(r.to_string()),
            )),
            events: vec![
                event_record(kind::CEC, subject.clone(), None, &error),
                event_record(kind::CEC, subject, None, &result),
            ],
            ..Default::default()
        };
        self.finish(commit).await
    }

    /// Counts an attempt that failed in a retryable way; whether the message's budget is spent
    /// (then it is given up: [`Self::commit_failure`]).
    fn budget_spent(&self) -> bool {
        let cfg = &self.relay.config.relay;
        let attempts = self.attempts.fetch_add(1, Ordering::Relaxed) + 1;
        let age = OffsetDateTime::now_utc() - self.d.received_at;
        let why = if attempts >= cfg.up_attempts.max(1) {
            "attempts"
        } else if age > cfg.up_max_age {
            "age"
        } else {
            return false;
        };
        let _ = self.spent.set(why);
        true
    }

    /// The message cannot be stored (a non-retryable database error): an `error` event on
    /// `P.error` and a dead letter, as far as the database takes them, and never again.
    async fn unstorable(&self, e: &store::StoreError) -> Disposition {
        if e.is_fenced() {
            tracing::warn!(error = %e, "Uplink message's partition moved to another relay; handed back");
            return Disposition::HandBack;
        }
        tracing::error!(error = %e,
            "Cannot store the outcome of an uplink message; it is terminated");
        let letter = self
            .d
            .received(
                Some(self.tenant_name),
                Some(self.user),
                Some(self.message_id),
            )
            .letter(Why {
                reason: "unstorable",
                error: e.to_string(),
                attempts: i64::from(self.attempts.load(Ordering::Relaxed)),
            });
        terminate(self.relay, letter).await
    }

    async fn finish(&self, commit: Commit) -> Disposition {
        match self.relay.commit(commit).await {
            Ok(_) => {
                // Unknown tenants share one label, so made-up names cannot grow the metrics.
                let label = match self.relay.tenant(self.tenant_name) {
                    Some(_) => self.tenant_name,
                    None => "unknown",
                };
                crate::instrument::messages("cec", label, "up", 1);
                Disposition::Ack
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e,
                    "Cannot commit the outcome of an uplink message; it will be tried again");
                Disposition::Retry(Duration::from_secs(2))
            }
            Err(e) => self.unstorable(&e).await,
        }
    }

    /// Calls `f` until it answers, retrying what is retryable with exponential backoff and jitter.
    async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, CallFailed>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, CecError>>,
    {
        let mut backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(30))
            .without_max_times()
            .build();
        loop {
            if self.relay.cancel.is_cancelled() {
                return Err(CallFailed::Cancelled);
            }
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && self.budget_spent() => {
                    return Err(CallFailed::Final(e));
                }
                Err(e) if e.is_retryable() => {
                    crate::instrument::retry("cec", "call");
                    let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                    tracing::warn!(                        endpoint = %e.endpoint(), code = %e.code(), error = %e, retry_in = ?delay, "CEC {what} failed; retrying");
                    tokio::select! {
                        _ = self.relay.cancel.cancelled() => return Err(CallFailed::Cancelled),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => return Err(CallFailed::Final(e)),
            }
        }
    }

    /// `send`, retrying transport failures and "send too quick".
    async fn send(
        &self,
        client: &CecClient,
        req: &SendRequest,
    ) -> Result<SendResponse, CallFailed> {
        let mut backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(10))
            .without_max_times()
            .build();
        loop {
            let rsp = self.call("send", || client.send(req)).await?;
            if !SendOutcome::of(&rsp).is_retryable() {
                return Ok(rsp);
            }
            if self.budget_spent() {
                return Err(CallFailed::Final(CecError::Result {
                    endpoint: cec::error::Endpoint::Send,
                    code: rsp.result_code.clone(),
                    desc: rsp.result_desc.clone().unwrap_or_default(),
                }));
            }
            let delay = backoff.next().unwrap_or(Duration::from_secs(10));
            crate::instrument::retry("cec", "send_too_quick");
            tracing::info!(                code = %rsp.result_code, retry_in = ?delay, "CEC asked to slow down; retrying");
            tokio::select! {
                _ = self.relay.cancel.cancelled() => return Err(CallFailed::Cancelled),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Commits a final upstream failure as a failed up row with its events. When the message's
    /// budget is spent, its dead letter is recorded first, and the result says so.
    async fn commit_failure(&self, e: CecError, session: Option<&Session>) -> Disposition {
        tracing::warn!(            endpoint = %e.endpoint(), code = %e.code(), error = %e, "Uplink message failed upstream");
        let mut desc = e.to_string();
        let mut dead = None;
        if let Some(why) = self.spent.get().copied() {
            let attempts = self.attempts.load(Ordering::Relaxed);
            desc = match why {
                "age" => format!(
                    "given up: still failing {} after it was received: {desc}",
                    humantime::format_duration(self.relay.config.relay.up_max_age)
                ),
                _ => format!("given up after {attempts} attempts: {desc}"),
            };
            let letter = self
                .d
                .received(
                    Some(self.tenant_name),
                    Some(self.user),
                    Some(self.message_id),
                )
                .letter(Why {
                    reason: why,
                    error: desc.clone(),
                    attempts: i64::from(attempts),
                });
            match store::deadletter::record(&self.relay.store, &letter).await {
                Ok(id) => dead = Some((why, id)),
                Err(e) if e.is_retryable() => return Disposition::Retry(Duration::from_secs(2)),
                Err(e) => return self.unstorable(&e).await,
            }
        }
        let mut result = self
            .event(event_type::UP_RESULT, false)
            .result(e.code(), Some(desc.clone()))
            .with("messageId", self.message_id)
            .with(
                "error",
                serde_json::json!({"code": "upstream", "message": desc}),
            );
        if let Some((why, id)) = dead {
            result = result.with("reason", why);
            if let Some(id) = id {
                result = result.with("deadLetter", id);
            }
        }
        let commit = Commit {
            up_row: Some(self.outcome(
                MessageStatus::Failed,
                session.map(|s| s.id.as_str()),
                Some(e.code()),
                Some(desc),
            )),
            events: vec![event_record(
                kind::CEC,
                self.event_subject(),
                session.map(|s| s.id.as_str()),
                &result,
            )],
            ..Default::default()
        };
        self.finish(commit).await
    }

    fn result_event(&self, rsp: &SendResponse, outcome: SendOutcome, control: &str) -> Event {
        let mut e = self
            .event(event_type::UP_RESULT, outcome.is_ok())
            .result(rsp.result_code.clone(), rsp.result_desc.clone())
            .with("messageId", self.message_id)
            .with("controlType", control)
            .with("offline", outcome == SendOutcome::Offline);
        if let Some(tip) = rsp.offline_msg.as_ref().and_then(|o| o.tip_text.clone()) {
            e = e.with("tipText", tip);
        }
        e
    }

    /// Adds what every answered `send` records: `session.queued` when queued, the up row's final
    /// status, and its `up.result`.
    fn record_send_outcome(
        &self,
        commit: &mut Commit,
        rsp: &SendResponse,
        outcome: SendOutcome,
        req: &SendRequest,
        session_id: Option<&str>,
        subject: String,
    ) {
        let control = req.control_type.as_str();
        if outcome == SendOutcome::Offline {
            // Kept by the contact center as an offline message: stored (once per messageId) and
            // announced.
            let tip = rsp.offline_msg.as_ref().and_then(|o| o.tip_text.clone());
            let row = OfflineRow {
                relay_id: new_id(),
                kind: kind::CEC.to_owned(),
                tenant: self.tenant_name.to_owned(),
                user_id: self.user.to_owned(),
                session_id: session_id.map(str::to_owned),
                source: OfflineSource::Offline,
                message_id: Some(self.message_id.to_owned()),
                caller: None,
                content: req.content.clone(),
                tip_text: tip.clone(),
                result_code: rsp.result_code.clone(),
                result_desc: rsp.result_desc.clone(),
                created_at: now(),
            };
            let mut ev = self
                .event(event_type::OFFLINE_SAVED, true)
                .result(rsp.result_code.clone(), rsp.result_desc.clone())
                .with("source", "offline")
                .with("messageId", self.message_id)
                .with("offlineId", row.relay_id.as_str());
            if let Some(t) = tip {
                ev = ev.with("tipText", t);
            }
            commit.offline.push(row);
            commit
                .events
                .push(event_record(kind::CEC, subject.clone(), session_id, &ev));
        }
        if outcome == SendOutcome::Queued {
            let q = self
                .event(event_type::SESSION_QUEUED, true)
                .result(rsp.result_code.clone(), rsp.result_desc.clone());
            commit
                .events
                .push(event_record(kind::CEC, subject.clone(), session_id, &q));
        }
        let status = if outcome.is_ok() {
            MessageStatus::Sent
        } else {
            MessageStatus::Failed
        };
        commit.up_row = Some(self.outcome(
            status,
            session_id,
            Some(rsp.result_code.clone()),
            rsp.result_desc.clone(),
        ));
        let result = self.result_event(rsp, outcome, control);
        commit
            .events
            .push(event_record(kind::CEC, subject, session_id, &result));
    }

    /// Uploads a file carried by an UpMessage; returns its fileId and size, or the refusal.
    async fn upload(
        &self,
        t: &Tenant,
        f: &UpFile,
    ) -> Result<Result<(String, usize), UploadResponse>, CallFailed> {
        use base64::Engine as _;
        // Checked by validation; an empty file if it somehow is not base64.
        let size = base64::engine::general_purpose::STANDARD
            .decode(f.data.as_bytes())
            .map(|b| b.len())
            .unwrap_or(0);
        let req = UploadRequest {
            file_type: f.file_type.to_ascii_lowercase(),
            file_stream: f.data.clone(),
            channel: CHANNEL_WEB.to_owned(),
        };
        let rsp = self
            .call("uploadFileStream", || t.client.upload(self.user, &req))
            .await?;
        Ok(match rsp.object_key.clone() {
            Some(key) if rsp.result_code == "0" && !key.is_empty() => Ok((key, size)),
            _ => Err(rsp),
        })
    }

    async fn connect(
        &self,
        t: &Tenant,
        m: &UpMessage,
        req: SendRequest,
        existing: Option<Session>,
    ) -> Disposition {
        let cfg = t.config();
        // A new session needs a place under the tenant's `max_sessions`, held until the session
        // is handed to the poller (or this CONNECT fails): refused before anything is opened.
        let _slot = match existing {
            Some(_) => None,
            None => match self.poller.reserve(self.tenant_name, cfg.max_sessions) {
                Ok(slot) => Some(slot),
                Err(open) => {
                    tracing::warn!(
                        open,
                        max_sessions = cfg.max_sessions,
                        "CONNECT refused: the tenant has as many open sessions as it may"
                    );
                    let r = Refusal {
                        field: "controlType".into(),
                        reason: format!(
                            "tenant {:?} has {open} open sessions, its max_sessions; try again later",
                            self.tenant_name
                        ),
                    };
                    return self.commit_refusal("session_limit", &r).await;
                }
            },
        };
        let user_name = m.user_name.clone().unwrap_or_else(|| self.user.to_owned());
        let locale = m.locale.clone().unwrap_or_else(|| cfg.locale.clone());
        if existing.is_none() || t.client.user_token(self.user).is_none() {
            let applied = self
                .call("applyToken", || {
                    t.client
                        .apply_token(self.user, &user_name, &locale, &req.to)
                })
                .await;
            match applied {
                Ok(_) => {}
                Err(CallFailed::Cancelled) => return Disposition::Retry(Duration::from_secs(1)),
                Err(CallFailed::Final(e)) => {
                    return self.commit_failure(e, existing.as_ref()).await;
                }
            }
        }
        let rsp = match self.send(&t.client, &req).await {
            Ok(r) => r,
            Err(CallFailed::Cancelled) => return Disposition::Retry(Duration::from_secs(1)),
            Err(CallFailed::Final(e)) => return self.commit_failure(e, existing.as_ref()).await,
        };
        let outcome = SendOutcome::of(&rsp);
        let at = now();
        let subject = self.event_subject();
        let mut commit = Commit::default();
        let mut opened: Option<Session> = None;
        let session_id = match (&existing, outcome) {
            (Some(s), SendOutcome::Accepted | SendOutcome::Queued) => {
                let state = if outcome == SendOutcome::Queued {
                    SessionState::Queued
                } else {
                    SessionState::Active
                };
                if state != s.state {
                    commit.sessions.push(SessionChange::SetState {
                        id: s.id.clone(),
                        state,
                    });
                }
                commit.touch.push((s.id.clone(), at));
                Some(s.id.clone())
            }
            (None, SendOutcome::Accepted | SendOutcome::Queued) => {
                let state = if outcome == SendOutcome::Queued {
                    SessionState::Queued
                } else {
                    SessionState::Active
                };
                let s = Session {
                    id: new_id(),
                    kind: kind::CEC.to_owned(),
                    tenant: self.tenant_name.to_owned(),
                    user_id: self.user.to_owned(),
                    channel_config_id: req.to.clone(),
                    state,
                    token: t.client.user_token(self.user).map(|t| t.to_string()),
                    opened_at: at,
                    closed_at: None,
                    close_reason: None,
                    last_activity_at: at,
                };
                commit.sessions.push(SessionChange::Open(s.clone()));
                let opened_ev = self
                    .event(event_type::SESSION_OPENED, true)
                    .result(rsp.result_code.clone(), rsp.result_desc.clone())
                    .with("sessionId", s.id.as_str())
                    .with("channelConfigId", s.channel_config_id.as_str())
                    .with("locale", locale.as_str());
                commit.events.push(event_record(
                    kind::CEC,
                    subject.clone(),
                    Some(&s.id),
                    &opened_ev,
                ));
                let id = s.id.clone();
                opened = Some(s);
                Some(id)
            }
            (s, _) => s.as_ref().map(|s| s.id.clone()),
        };
        self.record_send_outcome(
            &mut commit,
            &rsp,
            outcome,
            &req,
            session_id.as_deref(),
            subject,
        );
        let d = self.finish(commit).await;
        if d == Disposition::Ack {
            match opened {
                Some(s) => {
                    tracing::info!(session = %s.id, "Session opened");
                    self.poller.add(s);
                }
                // No session: its token is not kept.
                None if existing.is_none() => t.client.forget_user(self.user),
                None => {}
            }
        }
        d
    }

    async fn disconnect(
        &self,
        t: &Tenant,
        req: SendRequest,
        existing: Option<Session>,
    ) -> Disposition {
        let rsp = match self.send(&t.client, &req).await {
            Ok(r) => Some(r),
            Err(CallFailed::Cancelled) => return Disposition::Retry(Duration::from_secs(1)),
            // The customer wants out: the session ends here whatever the upstream says.
            Err(CallFailed::Final(e)) if existing.is_some() => {
                tracing::warn!(error = %e, "DISCONNECT failed upstream; closing the session anyway");
                None
            }
            Err(CallFailed::Final(e)) => return self.commit_failure(e, None).await,
        };
        let at = now();
        let subject = self.event_subject();
        let mut commit = Commit::default();
        if let Some(s) = &existing {
            commit.sessions.push(SessionChange::Close {
                id: s.id.clone(),
                reason: "customer".into(),
                at,
            });
            // Summarised in the same transaction (with this DISCONNECT's row), published after
            // `session.closed`.
            commit
                .summaries
                .push(SummaryRequest::cec(s, Some(subject.clone())));
            let closed = self
                .event(event_type::SESSION_CLOSED, true)
                .with("sessionId", s.id.as_str())
                .with("reason", "customer");
            commit.events.push(event_record(
                kind::CEC,
                subject.clone(),
                Some(&s.id),
                &closed,
            ));
        }
        let sid = existing.as_ref().map(|s| s.id.as_str());
        match &rsp {
            Some(rsp) => {
                let outcome = SendOutcome::of(rsp);
                let status = if outcome.is_ok() {
                    MessageStatus::Sent
                } else {
                    MessageStatus::Failed
                };
                commit.up_row = Some(self.outcome(
                    status,
                    sid,
                    Some(rsp.result_code.clone()),
                    rsp.result_desc.clone(),
                ));
                let result = self.result_event(rsp, outcome, "DISCONNECT");
                commit
                    .events
                    .push(event_record(kind::CEC, subject, sid, &result));
            }
            None => {
                commit.up_row = Some(self.outcome(
                    MessageStatus::Failed,
                    sid,
                    Some("upstream".into()),
                    Some("DISCONNECT failed upstream".into()),
                ));
                let result = self
                    .event(event_type::UP_RESULT, false)
                    .result(
                        "upstream",
                        Some("DISCONNECT failed upstream; the session was closed".into()),
                    )
                    .with("messageId", self.message_id)
                    .with("controlType", "DISCONNECT");
                commit
                    .events
                    .push(event_record(kind::CEC, subject, sid, &result));
            }
        }
        let d = self.finish(commit).await;
        if d == Disposition::Ack {
            if let Some(s) = existing {
                tracing::info!(session = %s.id, reason = "customer", "Session closed");
                self.poller.remove(&s.id);
            }
            t.client.forget_user(self.user);
        }
        d
    }

    async fn other(
        &self,
        t: &Tenant,
        mut req: SendRequest,
        file: Option<&UpFile>,
        existing: Option<Session>,
    ) -> Disposition {
        if let Some(f) = file {
            match self.upload(t, f).await {
                Ok(Ok((file_id, size))) => {
                    let ty = f.file_type.to_ascii_lowercase();
                    req.content = super::validate::file_content(
                        &req.media_type,
                        &f.name,
                        size,
                        &file_id,
                        &ty,
                    );
                }
                Ok(Err(rsp)) => {
                    // The upload was refused: the message fails with the upstream's code.
                    let result = self
                        .event(event_type::UP_RESULT, false)
                        .result(rsp.result_code.clone(), rsp.result_desc.clone())
                        .with("messageId", self.message_id)
                        .with("stage", "uploadFileStream");
                    let sid = existing.as_ref().map(|s| s.id.as_str());
                    let commit = Commit {
                        up_row: Some(self.outcome(
                            MessageStatus::Failed,
                            sid,
                            Some(rsp.result_code.clone()),
                            rsp.result_desc.clone(),
                        )),
                        events: vec![event_record(kind::CEC, self.event_subject(), sid, &result)],
                        ..Default::default()
                    };
                    return self.finish(commit).await;
                }
                Err(CallFailed::Cancelled) => return Disposition::Retry(Duration::from_secs(1)),
                Err(CallFailed::Final(e)) => {
                    return self.commit_failure(e, existing.as_ref()).await;
                }
            }
        }
        let rsp = match self.send(&t.client, &req).await {
            Ok(r) => r,
            Err(CallFailed::Cancelled) => return Disposition::Retry(Duration::from_secs(1)),
            Err(CallFailed::Final(e)) => return self.commit_failure(e, existing.as_ref()).await,
        };
        let outcome = SendOutcome::of(&rsp);
        let at = now();
        let subject = self.event_subject();
        let sid = existing.as_ref().map(|s| s.id.clone());
        let mut commit = Commit::default();
        if let Some(s) = &existing {
            commit.touch.push((s.id.clone(), at));
            if outcome == SendOutcome::Queued && s.state != SessionState::Queued {
                commit.sessions.push(SessionChange::SetState {
                    id: s.id.clone(),
                    state: SessionState::Queued,
                });
            }
        }
        self.record_send_outcome(&mut commit, &rsp, outcome, &req, sid.as_deref(), subject);
        let d = self.finish(commit).await;
        if d == Disposition::Ack
            && let Some(s) = existing
        {
            if outcome == SendOutcome::Queued && s.state != SessionState::Queued {
                // The poller keeps its own copy: tell it, so it starts tracking the queue.
                self.poller.add(Session {
                    state: SessionState::Queued,
                    last_activity_at: at,
                    ..s.clone()
                });
            }
            self.poller.touch(&s.id, at);
        }
        d
    }
}

/// A message whose subject names no routable tenant and user: a dead letter and an `error`
/// event on `P.error`, then ack.
async fn refuse_unroutable(relay: &Relay, d: &Delivery<'_>, why: String) -> Disposition {
    tracing::warn!(subject = %excerpt(d.subject, 160), reason = %why, "Uplink message on an unroutable subject; refused");
    let letter = d.received(None, None, None).letter(Why {
        reason: "bad_subject",
        error: format!("unroutable subject: {why}"),
        attempts: 0,
    });
    let id = match store::deadletter::record(&relay.store, &letter).await {
        Ok(id) => id,
        Err(e) if e.is_retryable() => return Disposition::Retry(Duration::from_secs(2)),
        Err(e) => {
            tracing::error!(error = %e, "Cannot store the dead letter of an unroutable uplink message");
            None
        }
    };
    let commit = store::deadletter::event_commit(&relay.subjects, &letter, id);
    match relay.commit(commit).await {
        Ok(_) => Disposition::Ack,
        Err(e) if e.is_retryable() => Disposition::Retry(Duration::from_secs(2)),
        Err(e) => {
            tracing::error!(error = %e, "Cannot commit the refusal of an unroutable uplink message; it is terminated");
            Disposition::Term
        }
    }
}

/// A message that cannot be stored: its dead letter and its `error` event on `P.error`, as far
/// as the database takes them (each is tried once), then [`Disposition::Term`].
async fn terminate(relay: &Relay, letter: store::DeadLetter) -> Disposition {
    let id = match store::deadletter::record(&relay.store, &letter).await {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "Cannot store the dead letter either");
            store::deadletter::logged(&letter, None);
            None
        }
    };
    let commit = store::deadletter::event_commit(&relay.subjects, &letter, id);
    if let Err(e) = relay.commit(commit).await {
        tracing::error!(error = %e, "Cannot commit the error event of an unstorable message");
    }
    Disposition::Term
}
