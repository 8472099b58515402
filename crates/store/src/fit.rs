//! What may be committed for publishing: nothing the connected NATS server cannot take.
//!
//! [`PublishLimit`] is a cheap, shared handle to the connected server's `max_payload`, read at each
//! use from what the relay's NATS client reports ([`PublishLimit::follow`]: it follows the
//! server's `INFO`, reconnects included; NATS's default of 1 MiB before the first one). The store
//! itself never touches NATS. Group commit ([`crate::group::GroupCommit`]), the one path
//! every commit takes, passes each commit through [`PublishLimit::fit`] before queueing it: an
//! outbox message that cannot be published — over `max_payload` with its headers, or on a subject
//! no server routes — is not committed to the outbox. Its transcript row or event row is still
//! stored (nothing is lost, only its publication is replaced); in the same transaction a dead
//! letter keeps it (source `outbox`, reason `too_large` or `bad_subject`) and an `error` event on
//! `P.error` names it (subject excerpt, ids, sizes, no content). The outbox's own check at publish
//! time stays as a safety net for a server whose `max_payload` shrank after the commit.

use std::sync::{Arc, OnceLock};

use crate::{Commit, DeadLetter, SetAside, Write, dead_source, kind};
use contract::Subjects;
use contract::payload::{Event, event_type};
use contract::subjects::{check_token, excerpt};

use crate::{event_record, now};

/// NATS's default `max_payload`, assumed until a server says otherwise.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// How much of a subject the `error` event of a set-aside message repeats.
const SUBJECT_EXCERPT: usize = 160;

/// Reads the connected server's current `max_payload`.
type MaxPayload = Box<dyn Fn() -> usize + Send + Sync>;

/// A shared handle to the connected server's `max_payload`, and the subjects of the `error`
/// events that replace what does not fit. Cheap to clone.
#[derive(Clone)]
pub struct PublishLimit(Arc<Inner>);

struct Inner {
    subjects: Subjects,
    /// The connected server's `max_payload`, as the NATS client reports it (0 while unknown).
    source: OnceLock<MaxPayload>,
    /// Used while no source is set, or while it reports 0.
    fixed: usize,
}

impl PublishLimit {
    /// The limit of the server the relay will connect to ([`Self::follow`]); until then
    /// [`DEFAULT_MAX_PAYLOAD`].
    pub fn new(subjects: Subjects) -> Self {
        Self::fixed(subjects, DEFAULT_MAX_PAYLOAD)
    }

    /// A limit of `max_payload` bytes until a client is set (tests).
    pub fn fixed(subjects: Subjects, max_payload: usize) -> Self {
        PublishLimit(Arc::new(Inner {
            subjects,
            source: OnceLock::new(),
            fixed: max_payload,
        }))
    }

    /// From now on the limit is what `max_payload` reads (the NATS client's view of its server;
    /// the first source set stays).
    pub fn follow(&self, max_payload: impl Fn() -> usize + Send + Sync + 'static) {
        let _ = self.0.source.set(Box::new(max_payload));
    }

    /// The connected server's `max_payload` (an atomic read).
    pub fn max_payload(&self) -> usize {
        self.0
            .source
            .get()
            .map(|read| read())
            .filter(|&m| m > 0)
            .unwrap_or(self.0.fixed)
    }

    /// `write` with the outbox messages of its commit that cannot be published set aside
    /// ([`Commit::set_aside`]).
    pub fn fit_write(&self, write: &mut Write) {
        if let Write::Commit(c)
        | Write::Fact(c)
        | Write::TimStream(_, c)
        | Write::TimCallback(_, c) = write
        {
            self.fit(c);
        }
    }

    /// Sets aside each outbox message of `commit` (its downs' and its events') that cannot be
    /// published: a dead letter and an `error` event replace its outbox row.
    pub fn fit(&self, commit: &mut Commit) {
        let max_payload = self.max_payload();
        let mut set_aside = Vec::new();
        for d in &commit.down {
            let p = &d.publish;
            if commit.is_set_aside(&p.msg_id) {
                continue;
            }
            let Some((reason, error)) = unfit(&p.subject, p.payload.len(), max_payload) else {
                continue;
            };
            let r = &d.row;
            set_aside.push(self.letter(Letter {
                msg_id: &p.msg_id,
                subject: &p.subject,
                payload: &p.payload,
                kind: &r.kind,
                tenant: Some(&r.tenant),
                user: Some(&r.user_id),
                created_at: r.created_at,
                reason,
                error,
                max_payload,
            }));
        }
        for e in &commit.events {
            if commit.is_set_aside(&e.relay_id) {
                continue;
            }
            let Some((reason, error)) = unfit(&e.subject, e.body.len(), max_payload) else {
                continue;
            };
            set_aside.push(self.letter(Letter {
                msg_id: &e.relay_id,
                subject: &e.subject,
                payload: e.body.as_bytes(),
                kind: &e.kind,
                tenant: e.tenant.as_deref(),
                user: e.user_id.as_deref(),
                created_at: e.created_at,
                reason,
                error,
                max_payload,
            }));
        }
        commit.set_aside.extend(set_aside);
    }

    fn letter(&self, l: Letter<'_>) -> SetAside {
        let routable = |s: Option<&str>| s.filter(|t| check_token(t).is_ok()).map(str::to_owned);
        let dead = DeadLetter {
            id: 0,
            source: dead_source::OUTBOX.to_owned(),
            msg_id: l.msg_id.to_owned(),
            subject: l.subject.to_owned(),
            payload: l.payload.to_vec(),
            kind: Some(l.kind.to_owned()),
            tenant: routable(l.tenant),
            user_id: routable(l.user),
            message_id: None,
            reason: l.reason.to_owned(),
            error: l.error,
            attempts: 0,
            created_at: crate::to_store_precision(l.created_at),
            dead_at: now(),
        };
        let mut e = Event::new(event_type::ERROR, false)
            .result(dead.reason.clone(), Some(dead.error.clone()))
            .with("source", dead.source.as_str())
            .with("subject", excerpt(&dead.subject, SUBJECT_EXCERPT))
            .with("msgId", dead.msg_id.as_str())
            .with("attempts", 0)
            .with("size", l.payload.len())
            .with("maxPayload", l.max_payload)
            .with(
                "error",
                serde_json::json!({"code": dead.reason, "message": dead.error}),
            );
        if let (Some(t), Some(u)) = (&dead.tenant, &dead.user_id) {
            e = e.for_user(t, u);
        }
        let kind = dead.kind.as_deref().unwrap_or(kind::CEC);
        let event = event_record(kind, self.0.subjects.error(), None, &e);
        // The event names a dead letter id once stored: room for it.
        let fits = unfit(&event.subject, event.body.len() + 32, l.max_payload).is_none();
        SetAside {
            dead,
            event: fits.then_some(event),
        }
    }
}

/// One outbox message that cannot be published.
struct Letter<'a> {
    msg_id: &'a str,
    subject: &'a str,
    payload: &'a [u8],
    kind: &'a str,
    tenant: Option<&'a str>,
    user: Option<&'a str>,
    created_at: time::OffsetDateTime,
    reason: &'static str,
    error: String,
    max_payload: usize,
}

/// Why a message of `len` bytes on `subject` cannot be published within `max_payload`, if it
/// cannot ([`crate::deadletter::unpublishable`]).
fn unfit(subject: &str, len: usize, max_payload: usize) -> Option<(&'static str, String)> {
    crate::deadletter::unpublishable_len(subject, len, max_payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::payload::Event;

    fn commit_of(bodies: &[usize]) -> Commit {
        let events = bodies
            .iter()
            .map(|n| {
                let e = Event::new("session.opened", true)
                    .for_user("t", "u")
                    .with("pad", "p".repeat(*n));
                event_record(kind::CEC, "p.cec.t.event.u".into(), None, &e)
            })
            .collect();
        Commit {
            events,
            ..Commit::default()
        }
    }

    #[test]
    fn only_what_does_not_fit_is_set_aside_once() {
        let limit = PublishLimit::fixed(Subjects::new("p"), 4096);
        assert_eq!(limit.max_payload(), 4096);
        let mut c = commit_of(&[10, 5000]);
        limit.fit(&mut c);
        limit.fit(&mut c);
        assert_eq!(c.set_aside.len(), 1);
        let s = &c.set_aside[0];
        assert_eq!(s.dead.msg_id, c.events[1].relay_id);
        assert_eq!(
            (s.dead.reason.as_str(), s.dead.tenant.as_deref()),
            ("too_large", Some("t"))
        );
        let e = s.event.as_ref().expect("an error event");
        assert_eq!(e.subject, "p.error");
        assert!(e.body.len() < 1024 && !e.body.contains("ppp"), "{}", e.body);
    }

    #[test]
    fn a_server_taking_almost_nothing_gets_the_dead_letter_without_its_event() {
        let limit = PublishLimit::fixed(Subjects::new("p"), 300);
        let mut c = commit_of(&[400]);
        limit.fit(&mut c);
        assert_eq!(c.set_aside.len(), 1);
        assert!(c.set_aside[0].event.is_none());
    }

    #[test]
    fn nats_default_before_connecting() {
        assert_eq!(
            PublishLimit::new(Subjects::new("p")).max_payload(),
            DEFAULT_MAX_PAYLOAD
        );
    }
}
