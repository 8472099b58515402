//! Dead letters: what the relay gave up on, kept with its subject, payload and reason in the
//! `dead_letters` table (see `docs/RELIABILITY.md` § Poison messages). One poison message — a
//! subject no server can route, a payload over the server's `max_payload`, a key the database
//! cannot store, an upstream that refuses one user for good — ends here instead of stalling the
//! outbox or a consumer. Each is logged, counted (`ccrelay_dead_letters_total`) and announced by
//! an `error` event on `P.error`; operators list, retry and drop them with `ccrelay deadletter`.

use bytes::Bytes;
use time::OffsetDateTime;

use crate::records::{event_record, now};
use crate::{Commit, DeadLetter, DynStore, EventRecord, StoreError};
use contract::Subjects;
use contract::payload::{Event, event_type};
use contract::subjects::{check_token, excerpt};

/// How much of an untrusted subject an event or a log line repeats.
const SUBJECT_EXCERPT: usize = 160;

/// What went wrong, for a [`DeadLetter`].
pub struct Why<'a> {
    /// A short code (`too_large`, `bad_subject`, `attempts`, `age`, `unstorable`, …).
    pub reason: &'a str,
    pub error: String,
    pub attempts: i64,
}

/// Where a received message came from, for a [`DeadLetter`] of an uplink message.
pub struct Received<'a> {
    /// One of [`crate::dead_source`].
    pub source: &'a str,
    /// The relay's id of the stream message (unique per `_IN` message).
    pub msg_id: &'a str,
    pub subject: &'a str,
    pub payload: &'a [u8],
    /// `cec` or `tim`, and the tenant (app), user and `messageId` when they are known good.
    pub kind: &'a str,
    pub tenant: Option<&'a str>,
    pub user: Option<&'a str>,
    pub message_id: Option<&'a str>,
    /// When it reached the stream.
    pub received_at: OffsetDateTime,
}

impl Received<'_> {
    /// The dead letter of this message.
    pub fn letter(&self, why: Why<'_>) -> DeadLetter {
        let routable = |s: Option<&str>| s.filter(|t| check_token(t).is_ok()).map(str::to_owned);
        DeadLetter {
            id: 0,
            source: self.source.to_owned(),
            msg_id: self.msg_id.to_owned(),
            subject: self.subject.to_owned(),
            payload: self.payload.to_vec(),
            kind: Some(self.kind.to_owned()),
            tenant: routable(self.tenant),
            user_id: routable(self.user),
            message_id: self.message_id.map(str::to_owned),
            reason: why.reason.to_owned(),
            error: why.error,
            attempts: why.attempts,
            created_at: crate::to_store_precision(self.received_at),
            dead_at: now(),
        }
    }
}

/// Stores `d` (once per source and msg_id), logs it and counts it. Returns its id; `None` when it
/// was stored before.
pub async fn record(store: &DynStore, d: &DeadLetter) -> Result<Option<i64>, StoreError> {
    let id = store.dead_letter_add(d).await?;
    if id.is_some() {
        logged(d, id);
    }
    Ok(id)
}

/// The log line and metric of a new dead letter.
pub fn logged(d: &DeadLetter, id: Option<i64>) {
    crate::metrics::dead_letter(&d.source, &d.reason);
    tracing::warn!(
        dead_letter = id,
        source = %d.source,
        reason = %d.reason,
        subject = %excerpt(&d.subject, SUBJECT_EXCERPT),
        msg_id = %d.msg_id,
        attempts = d.attempts,
        error = %d.error,
        "Gave up on a message; it is kept as a dead letter (ccrelay deadletter list)"
    );
}

/// The `error` event announcing dead letter `id` on `P.error`. Its tenant and user are set only
/// when they are routable tokens (they are stored in indexed columns).
pub fn event(subjects: &Subjects, d: &DeadLetter, id: Option<i64>) -> EventRecord {
    let mut e = Event::new(event_type::ERROR, false)
        .result(d.reason.clone(), Some(d.error.clone()))
        .with("source", d.source.as_str())
        .with("subject", excerpt(&d.subject, SUBJECT_EXCERPT))
        .with("msgId", d.msg_id.as_str())
        .with("attempts", d.attempts)
        .with(
            "error",
            serde_json::json!({"code": d.reason, "message": d.error}),
        );
    if let Some(id) = id {
        e = e.with("deadLetter", id);
    }
    if let Some(m) = &d.message_id {
        e = e.with("messageId", m.as_str());
    }
    if let (Some(t), Some(u)) = (&d.tenant, &d.user_id) {
        e = e.for_user(t, u);
    }
    let kind = d.kind.as_deref().unwrap_or(crate::kind::CEC);
    event_record(kind, subjects.error(), None, &e)
}

/// A commit of the `error` event of dead letter `id`.
pub fn event_commit(subjects: &Subjects, d: &DeadLetter, id: Option<i64>) -> Commit {
    Commit {
        events: vec![event(subjects, d, id)],
        ..Default::default()
    }
}

/// Why an outbox row cannot be published to the connected server, if it cannot: a subject over
/// [`contract::subjects::MAX_SUBJECT_BYTES`], or a message over its `max_payload`.
pub fn unpublishable(
    subject: &str,
    payload: &Bytes,
    max_payload: usize,
) -> Option<(&'static str, String)> {
    unpublishable_len(subject, payload.len(), max_payload)
}

/// [`unpublishable`] of a payload of `len` bytes.
pub fn unpublishable_len(
    subject: &str,
    len: usize,
    max_payload: usize,
) -> Option<(&'static str, String)> {
    use contract::subjects::MAX_SUBJECT_BYTES;
    if subject.len() > MAX_SUBJECT_BYTES {
        return Some((
            "bad_subject",
            format!(
                "the subject is {} bytes; the relay publishes on subjects of at most {MAX_SUBJECT_BYTES}",
                subject.len()
            ),
        ));
    }
    // The headers (Nats-Msg-Id) count towards max_payload; a generous allowance for them.
    let size = len + HEADER_ALLOWANCE;
    if max_payload > 0 && size > max_payload {
        return Some((
            "too_large",
            format!(
                "the message is {len} bytes; the NATS server takes at most {max_payload} (max_payload)"
            ),
        ));
    }
    None
}

/// Bytes of headers a published message carries besides its payload, at most (`NATS/1.0`,
/// `Nats-Msg-Id` with a relay id).
pub const HEADER_ALLOWANCE: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_that_cannot_fit_the_server_is_named_with_its_reason() {
        let small = Bytes::from_static(b"{}");
        assert_eq!(unpublishable("p.error", &small, 1024), None);
        let big = Bytes::from(vec![b'x'; 1024]);
        assert_eq!(
            unpublishable("p.error", &big, 1024).map(|r| r.0),
            Some("too_large")
        );
        let long = format!("p.cec.t.event.{}", "y".repeat(4040));
        assert_eq!(
            unpublishable(&long, &small, 1 << 20).map(|r| r.0),
            Some("bad_subject")
        );
    }

    #[test]
    fn the_event_names_only_routable_users() {
        let s = Subjects::new("p");
        let r = Received {
            source: crate::dead_source::CEC_UP,
            msg_id: "s1-1",
            subject: "p.cec.t.up.x",
            payload: b"{}",
            kind: "cec",
            tenant: Some("t"),
            user: Some(&"y".repeat(300)),
            message_id: None,
            received_at: OffsetDateTime::now_utc(),
        };
        let d = r.letter(Why {
            reason: "bad_subject",
            error: "too long".into(),
            attempts: 1,
        });
        assert_eq!(
            (d.tenant.as_deref(), d.user_id.as_deref()),
            (Some("t"), None)
        );
        let e = event(&s, &d, Some(7));
        assert_eq!(e.subject, "p.error");
        assert_eq!(e.user_id, None);
        assert!(e.body.contains("\"deadLetter\":7"), "{}", e.body);
    }
}
