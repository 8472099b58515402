//! Polling every open CEC session.
//!
//! One scheduler task owns all sessions: a [`DelayQueue`] holds each session's next due time, so
//! tens of thousands of sessions cost one timer wheel and a map entry each — no task, thread or
//! sleep per session. When a session is due, its poll runs as a task (at most
//! `relay.max_concurrent_polls` at once per tenant, so a tenant whose upstream hangs — its polls
//! waiting out their timeouts — cannot delay the polls of the others); when the poll ends, the session is scheduled again
//! `poll_interval` later (± 10 % jitter, so sessions opened together do not poll together). One
//! session never has two polls in flight, so its messages are committed — and published — in the
//! order the upstream returned them.
//!
//! What a poll returns is committed (transcript rows and outbox rows in one transaction) before
//! anything else happens to it ([`poll`]).

mod poll;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use time::OffsetDateTime;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::task::TaskTracker;
use tokio_util::time::{DelayQueue, delay_queue};

use crate::relay::Relay;
use crate::store::{Session, SessionState};

/// Commands to the scheduler.
enum Cmd {
    Add(Box<Session>),
    Remove(String),
    Touch(String, OffsetDateTime),
}

/// Lets other tasks add, remove and touch sessions. Cheap to clone.
#[derive(Clone)]
pub struct PollerHandle {
    tx: mpsc::UnboundedSender<Cmd>,
}

/// The scheduler's end of the handle; pass it to [`run`].
pub struct PollerInbox {
    rx: mpsc::UnboundedReceiver<Cmd>,
}

/// A new handle and the inbox its commands arrive in.
pub fn channel() -> (PollerHandle, PollerInbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    (PollerHandle { tx }, PollerInbox { rx })
}

impl PollerHandle {
    /// Starts polling a session (or updates it, if already polled).
    pub fn add(&self, s: Session) {
        let _ = self.tx.send(Cmd::Add(Box::new(s)));
    }
    /// Stops polling a session.
    pub fn remove(&self, session_id: &str) {
        let _ = self.tx.send(Cmd::Remove(session_id.to_owned()));
    }
    /// Records activity (a message either way), which postpones the idle timeout.
    pub fn touch(&self, session_id: &str, at: OffsetDateTime) {
        let _ = self.tx.send(Cmd::Touch(session_id.to_owned(), at));
    }
}

/// A polled session as the scheduler keeps it.
#[derive(Clone)]
pub(crate) struct Polled {
    pub session: Session,
    /// Consecutive failed polls (for backoff and giving up).
    pub failures: u32,
    /// While queued: the last queue position published, to publish only changes.
    pub queue_position: Option<i64>,
}

/// What a finished poll tells the scheduler.
pub(crate) enum Next {
    /// Poll again after the usual interval (or a backoff, after failures).
    Again(Box<Polled>),
    /// The session ended.
    Closed,
}

struct Entry {
    polled: Option<Polled>,
    key: Option<delay_queue::Key>,
    in_flight: bool,
    removed: bool,
    /// What `add` changed while a poll was in flight: the poll returns its own (older) copy of
    /// the session, so these are applied again on top of it.
    changed_state: Option<SessionState>,
    /// The latest activity `touch` reported while a poll was in flight (same reason).
    touched: Option<OffsetDateTime>,
}

/// Runs the scheduler until the relay is cancelled. Polls run on `tracker`, so shutdown waits for
/// those in flight to commit what they received.
pub async fn run(relay: Arc<Relay>, mut inbox: PollerInbox, tracker: TaskTracker) {
    let mut queue: DelayQueue<String> = DelayQueue::new();
    let mut sessions: HashMap<String, Entry> = HashMap::new();
    // Poll permits per tenant, made on first use.
    let mut permits: HashMap<String, Arc<Semaphore>> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, Next)>();
    let cancel = relay.cancel.clone();

    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            Some((id, next)) = done_rx.recv() => {
                let Some(entry) = sessions.get_mut(&id) else { continue };
                entry.in_flight = false;
                match next {
                    Next::Again(mut p) if !entry.removed => {
                        if let Some(state) = entry.changed_state.take() {
                            p.session.state = state;
                        }
                        if let Some(at) = entry.touched.take() {
                            p.session.last_activity_at = p.session.last_activity_at.max(at);
                        }
                        let delay = next_delay(&relay, &p);
                        entry.key = Some(queue.insert(id.clone(), delay));
                        entry.polled = Some(*p);
                    }
                    _ => {
                        forget(&mut sessions, &id);
                    }
                }
            }
            Some(cmd) = inbox.rx.recv() => match cmd {
                Cmd::Add(s) => {
                    let id = s.id.clone();
                    let interval = poll_interval(&relay, &s.tenant);
                    match sessions.get_mut(&id) {
                        Some(e) => {
                            e.removed = false;
                            if e.in_flight {
                                e.changed_state = Some(s.state);
                                e.touched = e.touched.max(Some(s.last_activity_at));
                            }
                            if let Some(p) = e.polled.as_mut() {
                                p.session = *s;
                            }
                        }
                        None => {
                            // Spread the first polls of many sessions over one interval.
                            let first = interval.mul_f64(rand::rng().random_range(0.0..1.0));
                            let key = queue.insert(id.clone(), first);
                            crate::instrument::session_polled(&s.tenant);
                            sessions.insert(id, Entry {
                                polled: Some(Polled {
                                    session: *s,
                                    failures: 0,
                                    queue_position: None,
                                }),
                                key: Some(key),
                                in_flight: false,
                                removed: false,
                                changed_state: None,
                                touched: None,
                            });
                        }
                    }
                }
                Cmd::Remove(id) => {
                    if let Some(e) = sessions.get_mut(&id) {
                        if e.in_flight {
                            e.removed = true;
                        } else {
                            if let Some(k) = e.key.take() {
                                queue.remove(&k);
                            }
                            forget(&mut sessions, &id);
                        }
                    }
                }
                Cmd::Touch(id, at) => {
                    if let Some(e) = sessions.get_mut(&id) {
                        if e.in_flight {
                            e.touched = e.touched.max(Some(at));
                        }
                        if let Some(p) = e.polled.as_mut()
                            && at > p.session.last_activity_at
                        {
                            p.session.last_activity_at = at;
                        }
                    }
                }
            },
            Some(expired) = queue.next(), if !queue.is_empty() => {
                let id = expired.into_inner();
                let Some(entry) = sessions.get_mut(&id) else { continue };
                entry.key = None;
                let Some(polled) = entry.polled.clone() else { continue };
                entry.in_flight = true;
                let permits = permits
                    .entry(polled.session.tenant.clone())
                    .or_insert_with(|| Arc::new(Semaphore::new(relay.config.relay.max_concurrent_polls)))
                    .clone();
                let relay = relay.clone();
                let done = done_tx.clone();
                tracker.spawn(async move {
                    let next = match permits.acquire_owned().await {
                        Ok(_permit) => poll::poll_session(&relay, polled).await,
                        Err(_) => Next::Again(Box::new(polled)),
                    };
                    let _ = done.send((id, next));
                });
            }
        }
    }
}

/// Stops tracking a session.
fn forget(sessions: &mut HashMap<String, Entry>, id: &str) {
    if let Some(p) = sessions.remove(id).and_then(|e| e.polled) {
        crate::instrument::session_unpolled(&p.session.tenant);
    }
}

fn poll_interval(relay: &Relay, tenant: &str) -> Duration {
    relay
        .tenant(tenant)
        .map(|t| t.config().poll_interval)
        .unwrap_or(Duration::from_secs(1))
}

/// The interval ± 10 %, doubled per consecutive failure up to 30 s.
fn next_delay(relay: &Relay, p: &Polled) -> Duration {
    let base = poll_interval(relay, &p.session.tenant);
    let backoff = if p.failures == 0 {
        base
    } else {
        (base * 2u32.saturating_pow(p.failures.min(8))).min(Duration::from_secs(30))
    };
    backoff.mul_f64(rand::rng().random_range(0.9..1.1))
}
