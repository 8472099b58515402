//! Handling one TimSend: check, record as pending, call `send_msg` under the app's rate limit
//! (retrying what is retryable, with the same `MsgRandom`), commit the outcome with its
//! `send.result` event, and only then let the caller acknowledge it.
//!
//! Idempotency: the up row is keyed by (kind `tim`, `id`). A redelivered message whose
//! row is finished is acknowledged without a call; one still pending (the relay stopped mid-way)
//! is sent again with the same `MsgRandom`, which Tencent de-duplicates.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tracing::Instrument as _;

use super::{Sink, TimLink, TimUpstream, error_fields};
use contract::payload::{Event, event_type, new_id};
use contract::subjects::{check_token, excerpt};
use contract::tim_payload::{TimPayloadError, TimSend, parse_send};

use super::request::send_request;
use crate::bus::ack::Disposition;
use crate::timlink::ratelimit::RateLimiter;
use store::deadletter::{Received, Why};
use store::{Commit, Direction, MessageRow, MessageStatus, UpBegin, UpOutcome, dead_source, kind};
use store::{event_record, now};
use tim::TimError;
use tim::wire::SendMsgRequest;

/// One delivered TimSend.
pub struct Delivery<'a> {
    pub subject: &'a str,
    pub payload: &'a [u8],
    /// The idempotency key when the payload has no `id`: unique per stream message.
    pub derived_id: String,
    pub stream_seq: u64,
    /// When it reached the `_IN` stream.
    pub received_at: time::OffsetDateTime,
}

impl Delivery<'_> {
    /// The message as a dead letter's source.
    fn received<'s>(
        &'s self,
        app: Option<&'s str>,
        user: Option<&'s str>,
        id: Option<&'s str>,
    ) -> Received<'s> {
        Received {
            source: dead_source::TIM_SEND,
            msg_id: &self.derived_id,
            subject: self.subject,
            payload: self.payload,
            kind: kind::TIM,
            tenant: app,
            user,
            message_id: id,
            received_at: self.received_at,
        }
    }
}

/// Handles one message; see the module docs.
pub async fn handle(link: &TimLink, d: Delivery<'_>) -> Disposition {
    let sink = link.sink();
    let Some((app_name, _, user)) = sink.subjects.parse_tim(d.subject) else {
        return Disposition::Ack; // the dispatcher only sends `send` subjects here
    };
    let app = link.app(app_name);
    let upstream = app.map(|a| (a.upstream.as_ref(), a.limiter.as_ref()));
    handle_with(&sink, app_name, user, upstream, d).await
}

/// [`handle`] with the app's upstream and limiter given (`None`: unknown app).
pub async fn handle_with(
    sink: &Sink,
    app: &str,
    user: &str,
    upstream: Option<(&dyn TimUpstream, &RateLimiter)>,
    d: Delivery<'_>,
) -> Disposition {
    // Nothing keyed by a token no subject can carry is stored: refused on `P.error`.
    if let Err(e) = check_token(app)
        .map_err(|e| format!("app {e}"))
        .and_then(|()| check_token(user).map_err(|e| format!("user {e}")))
    {
        tracing::warn!(subject = %excerpt(d.subject, 160), reason = %e, "Tencent send on an unroutable subject; refused");
        let letter = d.received(None, None, None).letter(Why {
            reason: "bad_subject",
            error: format!("unroutable subject: {e}"),
            attempts: 0,
        });
        return give_up(sink, &letter).await;
    }
    let parsed = parse_send(d.payload);
    let id = parsed
        .as_ref()
        .ok()
        .and_then(|m| m.id.clone())
        .unwrap_or_else(|| d.derived_id.clone());
    let span = tracing::error_span!("send", app, user, id = %id);
    send_parsed(sink, app, user, upstream, &d, parsed, &id)
        .instrument(span)
        .await
}

/// [`handle_with`] of a routable send whose idempotency key is `id`; runs in the span `send`
/// (`app`, `user`, `id`).
async fn send_parsed(
    sink: &Sink,
    app: &str,
    user: &str,
    upstream: Option<(&dyn TimUpstream, &RateLimiter)>,
    d: &Delivery<'_>,
    parsed: Result<TimSend, TimPayloadError>,
    id: &str,
) -> Disposition {
    let built: Result<(TimSend, SendMsgRequest), (&str, TimPayloadError)> = match (parsed, upstream)
    {
        (Err(e), _) => Err(("invalid_request", e)),
        (Ok(_), None) => Err((
            "unknown_app",
            TimPayloadError {
                field: "app".into(),
                reason: format!("no [[tim]] app is named {app:?}"),
            },
        )),
        (Ok(m), Some(_)) => match send_request(&m, user, id) {
            Ok(req) => Ok((m, req)),
            Err(e) => Err(("invalid_request", e)),
        },
    };
    let ctx = Ctx {
        sink,
        app,
        user,
        id,
        d,
    };
    let body = match &built {
        Ok((_, req)) => serde_json::to_string(req).unwrap_or_else(|_| "{}".into()),
        Err(_) => match serde_json::from_slice::<serde_json::Value>(d.payload) {
            Ok(v) => serde_json::json!({ "payload": v }).to_string(),
            Err(_) => {
                serde_json::json!({ "payload": String::from_utf8_lossy(d.payload) }).to_string()
            }
        },
    };
    let row = ctx.row(built.as_ref().ok(), body, d.stream_seq);
    match sink.store.begin_up(&row).await {
        Ok(UpBegin::Done(status)) => {
            tracing::debug!(?status, "Redelivered Tencent send already handled");
            return Disposition::Ack;
        }
        Ok(UpBegin::New | UpBegin::Pending) => {}
        Err(e) if e.is_retryable() => {
            tracing::warn!(error = %e, "Cannot record Tencent send; will retry");
            return Disposition::Retry(Duration::from_secs(1));
        }
        Err(e) if e.is_fenced() => {
            tracing::warn!(error = %e, "Tencent send's partition moved to another relay; handed back");
            return Disposition::HandBack;
        }
        Err(e) => {
            tracing::error!(error = %e, "Cannot record Tencent send; it is terminated");
            let letter = d.received(Some(app), Some(user), Some(id)).letter(Why {
                reason: "unstorable",
                error: e.to_string(),
                attempts: 0,
            });
            return give_up(sink, &letter).await;
        }
    }
    let (req, (upstream, limiter)) = match (built, upstream) {
        (Ok((_, req)), Some(u)) => (req, u),
        (Err((code, e)), _) => {
            tracing::warn!(code, reason = %e, "Tencent send refused");
            return ctx.refused(code, &e).await;
        }
        (Ok(_), None) => return Disposition::Ack, // unreachable: no app is a refusal above
    };
    let mut backoff = ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .without_max_times()
        .build();
    let mut retries = 0;
    let result = loop {
        if sink.cancel.is_cancelled() {
            return Disposition::Retry(Duration::from_secs(1));
        }
        let waiting = std::time::Instant::now();
        limiter.acquire().await;
        let waited = waiting.elapsed();
        if waited >= Duration::from_millis(1) {
            crate::instrument::rate_limit_wait(app, waited);
        }
        match upstream.send_msg(&req).await {
            Ok(_) => break Ok(()),
            Err(e)
                if e.is_retryable()
                    && time::OffsetDateTime::now_utc() - d.received_at <= sink.budget.max_age
                    && (e.is_rate_limited() || retries + 1 < sink.budget.attempts) =>
            {
                if !e.is_rate_limited() {
                    retries += 1;
                }
                crate::instrument::retry("tim", "send");
                let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!(code = %e.code(), error = %e, retry_in = ?delay, "Tencent send_msg failed; retrying");
                tokio::select! {
                    _ = sink.cancel.cancelled() => return Disposition::Retry(Duration::from_secs(1)),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => break Err(e),
        }
    };
    // A retryable failure here has spent the attempt or age budget: a dead letter too.
    let mut dead = None;
    if let Err(e) = &result
        && e.is_retryable()
    {
        let aged = time::OffsetDateTime::now_utc() - d.received_at > sink.budget.max_age;
        let letter = d.received(Some(app), Some(user), Some(id)).letter(Why {
            reason: if aged { "age" } else { "attempts" },
            error: format!("given up after {} attempts: {e}", retries + 1),
            attempts: i64::from(retries + 1),
        });
        match store::deadletter::record(&sink.store, &letter).await {
            Ok(dl) => dead = Some((if aged { "age" } else { "attempts" }, dl)),
            Err(e) if e.is_retryable() => return Disposition::Retry(Duration::from_secs(2)),
            Err(e) => {
                tracing::error!(error = %e, "Cannot store the dead letter of a Tencent send")
            }
        }
    }
    ctx.outcome(result.as_ref().err(), dead).await
}

/// Records `letter` and its `error` event on `P.error` (each as far as the database takes it),
/// then acknowledges: a bad subject, or a message that cannot be stored, is never retried.
pub(super) async fn give_up(sink: &Sink, letter: &store::DeadLetter) -> Disposition {
    let id = match store::deadletter::record(&sink.store, letter).await {
        Ok(id) => id,
        Err(e) if e.is_retryable() => return Disposition::Retry(Duration::from_secs(2)),
        Err(e) => {
            tracing::error!(error = %e, "Cannot store a dead letter");
            None
        }
    };
    match sink
        .commit(store::deadletter::event_commit(&sink.subjects, letter, id))
        .await
    {
        Ok(_) => Disposition::Ack,
        Err(e) if e.is_retryable() => Disposition::Retry(Duration::from_secs(2)),
        Err(e) => {
            tracing::error!(error = %e, "Cannot commit the error event of a dead letter");
            Disposition::Term
        }
    }
}

struct Ctx<'a> {
    sink: &'a Sink,
    app: &'a str,
    user: &'a str,
    id: &'a str,
    d: &'a Delivery<'a>,
}

impl Ctx<'_> {
    fn row(&self, built: Option<&(TimSend, SendMsgRequest)>, body: String, seq: u64) -> MessageRow {
        MessageRow {
            relay_id: new_id(),
            kind: kind::TIM.to_owned(),
            tenant: self.app.to_owned(),
            user_id: self.user.to_owned(),
            session_id: None,
            direction: Direction::Up,
            message_id: Some(self.id.to_owned()),
            message_code: None,
            source_type: Some("DESK".to_owned()),
            control_type: None,
            media_type: built.and_then(|(_, r)| r.msg_body.first().map(|e| e.msg_type.clone())),
            content: built.and_then(|(m, _)| m.text.clone()),
            body,
            status: MessageStatus::Pending,
            result_code: None,
            result_desc: None,
            stream_seq: i64::try_from(seq).ok(),
            created_at: now(),
        }
    }

    fn up(&self, status: MessageStatus, code: String, desc: String) -> UpOutcome {
        UpOutcome {
            kind: kind::TIM.to_owned(),
            tenant: self.app.to_owned(),
            user_id: self.user.to_owned(),
            message_id: self.id.to_owned(),
            status,
            session_id: None,
            result_code: Some(code),
            result_desc: Some(desc),
        }
    }

    fn result_event(&self, ok: bool) -> Event {
        Event::new(event_type::SEND_RESULT, ok)
            .for_user(self.app, self.user)
            .with("messageId", self.id)
            .with("app", self.app)
    }

    async fn refused(&self, code: &str, e: &TimPayloadError) -> Disposition {
        let reason = e.to_string();
        let mut commit = self
            .sink
            .refusal(self.app, self.user, code, &e.field, &e.reason);
        let ev = self
            .result_event(false)
            .result(code, Some(reason.clone()))
            .with("errorCode", code)
            .with("errorInfo", reason.as_str());
        commit.events.push(event_record(
            kind::TIM,
            self.sink.subjects.tim_event_or_error(self.app, self.user),
            None,
            &ev,
        ));
        commit.up = Some(self.up(MessageStatus::Failed, code.to_owned(), reason));
        self.commit(commit).await
    }

    /// Commits the send's outcome; `dead` names the budget spent and the dead letter, when the
    /// send was given up.
    async fn outcome(
        &self,
        err: Option<&TimError>,
        dead: Option<(&str, Option<i64>)>,
    ) -> Disposition {
        let (status, mut ev, code, desc) = match err {
            None => (
                MessageStatus::Sent,
                self.result_event(true)
                    .result("0", Some("OK".into()))
                    .with("errorCode", 0)
                    .with("errorInfo", ""),
                "0".to_owned(),
                "OK".to_owned(),
            ),
            Some(e) => {
                tracing::warn!(code = %e.code(), error = %e, "Tencent send failed");
                let (code, info) = error_fields(e);
                (
                    MessageStatus::Failed,
                    self.result_event(false)
                        .result(e.code(), Some(info.clone()))
                        .with("errorCode", code)
                        .with("errorInfo", info.as_str()),
                    e.code(),
                    info,
                )
            }
        };
        if let Some((why, id)) = dead {
            ev = ev.with("reason", why);
            if let Some(id) = id {
                ev = ev.with("deadLetter", id);
            }
        }
        let commit = Commit {
            up: Some(self.up(status, code, desc)),
            events: vec![event_record(
                kind::TIM,
                self.sink.subjects.tim_event_or_error(self.app, self.user),
                None,
                &ev,
            )],
            ..Default::default()
        };
        self.commit(commit).await
    }

    async fn commit(&self, commit: Commit) -> Disposition {
        match self.sink.commit(commit).await {
            Ok(_) => {
                crate::instrument::messages("tim", self.app, "up", 1);
                Disposition::Ack
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e,
                    "Cannot commit the outcome of a Tencent send; it will be tried again");
                Disposition::Retry(Duration::from_secs(2))
            }
            Err(e) => {
                tracing::error!(error = %e,
                    "Cannot store the outcome of a Tencent send; it is terminated");
                let letter = self
                    .d
                    .received(Some(self.app), Some(self.user), Some(self.id))
                    .letter(Why {
                        reason: "unstorable",
                        error: e.to_string(),
                        attempts: 0,
                    });
                give_up(self.sink, &letter).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::timlink::fake::FakeTim;
    use contract::Subjects;

    async fn sink() -> Sink {
        let store = store::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        Sink {
            store,
            subjects: Subjects::new("ccrelay"),
            cancel: CancellationToken::new(),
            budget: Default::default(),
            ownership: crate::ownership::Ownership::single(1),
        }
    }

    async fn send(sink: &Sink, fake: &FakeTim, payload: &str, seq: u64) -> Disposition {
        let limiter = RateLimiter::new(1000);
        handle_with(
            sink,
            "shop",
            "u1",
            Some((fake, &limiter)),
            Delivery {
                subject: "ccrelay.tim.shop.send.u1",
                payload: payload.as_bytes(),
                derived_id: format!("tim-s{seq}"),
                stream_seq: seq,
                received_at: time::OffsetDateTime::now_utc(),
            },
        )
        .await
    }

    async fn events(sink: &Sink) -> Vec<serde_json::Value> {
        sink.store
            .events(kind::TIM, "shop", "u1")
            .await
            .unwrap()
            .iter()
            .map(|e| serde_json::from_str(&e.body).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_send_is_delivered_once_and_reported() {
        let sink = sink().await;
        let fake = FakeTim::new(100, Duration::ZERO);
        let p = r#"{"id":"m1","from":"@cs","text":"hello","cloudCustomData":"cd"}"#;
        assert_eq!(send(&sink, &fake, p, 1).await, Disposition::Ack);
        assert_eq!(send(&sink, &fake, p, 1).await, Disposition::Ack); // redelivered
        let sends = fake.with(|s| s.sends.clone());
        assert_eq!(sends.len(), 1);
        let req = &sends[0].0;
        assert_eq!(req.from_account.as_deref(), Some("@cs"));
        assert_eq!(req.to_account.as_deref(), Some("u1"));
        assert_eq!(req.msg_random, tim::wire::msg_random("m1"));
        assert_eq!(req.cloud_custom_data.as_deref(), Some("cd"));
        let ev = events(&sink).await;
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0]["type"], "send.result");
        assert_eq!(ev[0]["ok"], true);
        assert_eq!(ev[0]["messageId"], "m1");
        assert_eq!(ev[0]["errorCode"], 0);
        let t = sink
            .store
            .transcript(kind::TIM, "shop", "u1")
            .await
            .unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].status, MessageStatus::Sent);
        assert_eq!(t[0].content.as_deref(), Some("hello"));
        let body: serde_json::Value = serde_json::from_str(&t[0].body).unwrap();
        assert_eq!(body["MsgRandom"], tim::wire::msg_random("m1"));
    }

    #[tokio::test]
    async fn retryable_errors_are_retried_with_the_same_msg_random() {
        let sink = sink().await;
        let fake = FakeTim::new(100, Duration::ZERO);
        fake.with(|s| s.send_faults.extend([141002, 60018]));
        let p = r#"{"id":"m2","sessionId":"sess-1","msgBody":[{"MsgType":"TIMCustomElem","MsgContent":{"Data":"card"}}]}"#;
        assert_eq!(send(&sink, &fake, p, 1).await, Disposition::Ack);
        let sends = fake.with(|s| s.sends.clone());
        assert_eq!(sends.len(), 1);
        assert_eq!(sends[0].0.session_id.as_deref(), Some("sess-1"));
        assert_eq!(sends[0].0.msg_body[0].msg_type, "TIMCustomElem");
        assert_eq!(fake.with(|s| s.calls), 3);
        assert_eq!(events(&sink).await[0]["ok"], true);
    }

    #[tokio::test]
    async fn a_send_that_spends_its_attempts_is_given_up_as_a_dead_letter() {
        let mut sink = sink().await;
        sink.budget.attempts = 3;
        let fake = FakeTim::new(100, Duration::ZERO);
        fake.with(|s| s.send_faults.extend([141002; 10]));
        let p = r#"{"id":"m9","sessionId":"s","text":"x"}"#;
        assert_eq!(send(&sink, &fake, p, 1).await, Disposition::Ack);
        assert_eq!(fake.with(|s| s.calls), 3, "three attempts");
        let ev = events(&sink).await;
        assert_eq!(
            (&ev[0]["ok"], &ev[0]["reason"]),
            (&false.into(), &"attempts".into())
        );
        let dead = sink.store.dead_letters(10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(ev[0]["deadLetter"], dead[0].id);
        assert_eq!(
            (
                dead[0].source.as_str(),
                dead[0].message_id.as_deref(),
                dead[0].attempts
            ),
            ("tim_send", Some("m9"), 3)
        );
        // Redelivered: its outcome is committed, nothing more happens.
        assert_eq!(send(&sink, &fake, p, 1).await, Disposition::Ack);
        assert_eq!(fake.with(|s| s.calls), 3);
        assert_eq!(sink.store.dead_letters(10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_send_to_an_unroutable_user_stores_nothing_keyed_by_it() {
        let sink = sink().await;
        let fake = FakeTim::new(100, Duration::ZERO);
        let limiter = RateLimiter::new(1000);
        let user = "y".repeat(4040);
        let subject = format!("ccrelay.tim.shop.send.{user}");
        let d = handle_with(
            &sink,
            "shop",
            &user,
            Some((&fake, &limiter)),
            Delivery {
                subject: &subject,
                payload: br#"{"id":"m1","sessionId":"s","text":"x"}"#,
                derived_id: "tim-s1".into(),
                stream_seq: 1,
                received_at: time::OffsetDateTime::now_utc(),
            },
        )
        .await;
        assert_eq!(d, Disposition::Ack);
        assert_eq!(fake.with(|s| s.calls), 0);
        assert!(
            sink.store
                .transcript(kind::TIM, "shop", &user)
                .await
                .unwrap()
                .is_empty()
        );
        let dead = sink.store.dead_letters(10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (dead[0].reason.as_str(), dead[0].user_id.as_deref()),
            ("bad_subject", None)
        );
        assert_eq!(dead[0].subject, subject);
        let pending = sink.store.outbox_pending(10).await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].subject, "ccrelay.error");
    }

    #[tokio::test]
    async fn each_final_code_becomes_a_failed_send_result() {
        for code in [90001, 90005, 90007, 90009, 93000, 141004, 141005, 70009] {
            let sink = sink().await;
            let fake = FakeTim::new(100, Duration::ZERO);
            fake.with(|s| s.send_faults.push_back(code));
            let p = r#"{"id":"m3","sessionId":"s","text":"x"}"#;
            assert_eq!(send(&sink, &fake, p, 1).await, Disposition::Ack);
            assert_eq!(fake.with(|s| s.calls), 1, "{code} is final");
            let ev = events(&sink).await;
            assert_eq!(ev[0]["ok"], false);
            assert_eq!(ev[0]["errorCode"], code);
            assert_eq!(ev[0]["resultCode"], code.to_string());
            assert_eq!(ev[0]["errorInfo"], format!("fake error {code}"));
            let t = sink
                .store
                .transcript(kind::TIM, "shop", "u1")
                .await
                .unwrap();
            assert_eq!(t[0].status, MessageStatus::Failed);
        }
    }

    #[tokio::test]
    async fn invalid_sends_are_refused_before_any_call() {
        let sink = sink().await;
        let fake = FakeTim::new(100, Duration::ZERO);
        let big = format!(
            r#"{{"id":"m4","sessionId":"s","text":"{}"}}"#,
            "x".repeat(13 * 1024)
        );
        for (i, p) in [r#"{"id":"m5","text":"no addressing"}"#, &big, "not json"]
            .iter()
            .enumerate()
        {
            assert_eq!(send(&sink, &fake, p, i as u64 + 1).await, Disposition::Ack);
        }
        assert_eq!(fake.with(|s| s.calls), 0);
        let ev = events(&sink).await;
        let results: Vec<_> = ev.iter().filter(|e| e["type"] == "send.result").collect();
        assert_eq!(results.len(), 3);
        assert!(results.iter().all(|e| e["ok"] == false));
        assert!(
            results[0]["errorInfo"]
                .as_str()
                .unwrap()
                .starts_with("sessionId")
        );
        assert!(results[1]["errorInfo"].as_str().unwrap().contains("12288"));
        assert_eq!(results[2]["messageId"], "tim-s3");
        let errors = ev.iter().filter(|e| e["type"] == "error").count();
        assert_eq!(errors, 3);
    }

    #[tokio::test]
    async fn an_unknown_app_is_refused() {
        let sink = sink().await;
        let d = handle_with(
            &sink,
            "nope",
            "u1",
            None,
            Delivery {
                subject: "ccrelay.tim.nope.send.u1",
                payload: br#"{"sessionId":"s","text":"x"}"#,
                derived_id: "d1".into(),
                stream_seq: 1,
                received_at: time::OffsetDateTime::now_utc(),
            },
        )
        .await;
        assert_eq!(d, Disposition::Ack);
        let ev = sink.store.events(kind::TIM, "nope", "u1").await.unwrap();
        assert!(ev.iter().any(|e| e.event_type == "send.result" && !e.ok));
        let _ = Arc::new(());
    }
}
