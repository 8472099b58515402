//! Polling every open CEC session.
//!
//! One scheduler task owns all sessions: a [`DelayQueue`] holds each session's next due time, so
//! tens of thousands of sessions cost one timer wheel and a map entry each — no task, thread or
//! sleep per session. When a session is due, its poll runs as a task (at most
//! `relay.max_concurrent_polls` at once per tenant, so a tenant whose upstream hangs — its polls
//! waiting out their timeouts — cannot delay the polls of the others). One session never has two
//! polls in flight, so its messages are committed — and published — in the order the upstream
//! returned them.
//!
//! Each session keeps a fixed cadence: its first poll comes at a random point of the first
//! interval (so sessions opened together do not poll together), and after a successful poll the
//! next is due `poll_interval` after the previous one was *due* — not after it ended — so a
//! session is polled once per interval and the time a poll takes, or how late it started, does
//! not add up. A poll that ends (almost) at its successor's due time is followed a tenth of an
//! interval later, not at once. After a failure the next poll comes after a backoff (the interval
//! doubled per consecutive failure up to 30 s, ± 10 % jitter). How late each poll started after its
//! due time is the histogram `ccrelay_poll_lag_seconds`.
//!
//! Per poll the scheduler allocates nothing but the poll's task: the session moves into the task
//! and back (no copy), ids are shared `Arc<str>`s, and each tenant's permits and metric handles
//! are made once.
//!
//! What a poll returns is journaled ([`journal`]) and committed (transcript rows and outbox rows
//! in one transaction) before anything else happens to it (`poll`); at start-up, [`replay`]
//! commits what an earlier run journaled and may not have committed.
//!
//! A session is idle `idle_timeout` after its last message either way, measured on the monotonic
//! clock (`Polled::idle_at`): a step of the wall clock (NTP, a VM resumed) closes nothing. The
//! stored `last_activity_at` (wall clock) only seeds that deadline when a session is added — at
//! start-up, for the sessions a previous run left open.
//!
//! The handle also counts each tenant's open sessions ([`PollerHandle::reserve`]), so a CONNECT
//! beyond the tenant's `max_sessions` is refused before anything is opened.
//!
//! Who owns a session's state: the store. A session is opened, changes state and is closed by a
//! commit, and only by one; the store's row is the truth, and what a new run resumes. The
//! scheduler keeps a copy of each open session (`Polled`) so that a poll reads no row: a cache,
//! written in two ways only.
//! - A poll updates the copy it holds with what the same poll committed (the session's
//!   activity, its activation by an agent, its close), after the commit.
//! - Other tasks tell the scheduler, through [`PollerHandle`], what they committed: a session
//!   opened or put in the queue (`add`), activity (`touch`), a close (`remove`). The handle is
//!   called after the commit, never instead of it. These reports reach the copy at one point
//!   (`Entry::report`): at once, or — while a poll holds the copy — when the poll returns,
//!   applied on top of what the poll did.
//!
//! The copy's `idle_at` (the monotonic idle deadline) and the poll bookkeeping (`failures`,
//! `queue_position`) are the scheduler's own and exist nowhere else.

pub mod journal;
mod poll;

pub use poll::replay;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use time::OffsetDateTime;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tokio_util::time::{DelayQueue, delay_queue};

use tracing::Instrument as _;

use crate::instrument::PollMetrics;
use crate::relay::Relay;
use journal::Journal;
use store::{Session, SessionState};

/// Commands to the scheduler.
enum Cmd {
    Add(Box<Session>),
    /// Sessions of partitions this instance just took: polled from one interval on, so the
    /// previous owner's last poll is at least an interval before.
    Adopt(Vec<Session>),
    Remove(String),
    Touch(String, OffsetDateTime),
}

/// Lets other tasks add, remove and touch sessions. Cheap to clone.
#[derive(Clone)]
pub struct PollerHandle {
    tx: mpsc::UnboundedSender<Cmd>,
    open: Arc<OpenSessions>,
}

/// The scheduler's end of the handle; pass it to [`run`].
pub struct PollerInbox {
    rx: mpsc::UnboundedReceiver<Cmd>,
    open: Arc<OpenSessions>,
}

/// A new handle and the inbox its commands arrive in.
pub fn channel() -> (PollerHandle, PollerInbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let open = Arc::new(OpenSessions::default());
    (
        PollerHandle {
            tx,
            open: open.clone(),
        },
        PollerInbox { rx, open },
    )
}

/// The open sessions of each tenant — those the poller was given and has not dropped — and the
/// sessions being opened (reserved by a CONNECT under way).
#[derive(Default)]
struct OpenSessions {
    inner: Mutex<OpenInner>,
}

#[derive(Default)]
struct OpenInner {
    /// Session id → tenant.
    tenant_of: HashMap<String, String>,
    /// Tenant → (open, reserved).
    counts: HashMap<String, (usize, usize)>,
}

impl OpenSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, OpenInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, id: &str, tenant: &str) {
        let mut g = self.lock();
        if g.tenant_of.contains_key(id) {
            return;
        }
        g.tenant_of.insert(id.to_owned(), tenant.to_owned());
        g.counts.entry(tenant.to_owned()).or_default().0 += 1;
    }

    fn remove(&self, id: &str) {
        let mut g = self.lock();
        if let Some(tenant) = g.tenant_of.remove(id)
            && let Some(c) = g.counts.get_mut(&tenant)
        {
            c.0 = c.0.saturating_sub(1);
        }
    }
}

/// A place for one more session of a tenant, held while its CONNECT is under way: give the
/// session to [`PollerHandle::add`] before dropping it (dropping it frees the place).
pub struct SessionSlot {
    open: Arc<OpenSessions>,
    tenant: String,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut g = self.open.lock();
        if let Some(c) = g.counts.get_mut(&self.tenant) {
            c.1 = c.1.saturating_sub(1);
        }
    }
}

impl PollerHandle {
    /// Starts polling a session (or updates it, if already polled).
    pub fn add(&self, s: Session) {
        self.open.insert(&s.id, &s.tenant);
        let _ = self.tx.send(Cmd::Add(Box::new(s)));
    }
    /// Starts polling sessions of partitions this instance took over (see `crate::cluster`):
    /// each is first polled between one and two intervals from now.
    pub fn adopt(&self, sessions: Vec<Session>) {
        for s in &sessions {
            self.open.insert(&s.id, &s.tenant);
        }
        let _ = self.tx.send(Cmd::Adopt(sessions));
    }
    /// Stops polling a session.
    pub fn remove(&self, session_id: &str) {
        self.open.remove(session_id);
        let _ = self.tx.send(Cmd::Remove(session_id.to_owned()));
    }
    /// The open sessions of `tenant` (polled, or being opened).
    pub fn open_sessions(&self, tenant: &str) -> usize {
        let g = self.open.lock();
        g.counts.get(tenant).map_or(0, |c| c.0 + c.1)
    }
    /// A place for one more session of `tenant` if it has fewer than `max` open (counting those
    /// being opened); otherwise how many it has.
    pub fn reserve(&self, tenant: &str, max: usize) -> Result<SessionSlot, usize> {
        let mut g = self.open.lock();
        let c = g.counts.entry(tenant.to_owned()).or_default();
        if c.0 + c.1 >= max {
            return Err(c.0 + c.1);
        }
        c.1 += 1;
        Ok(SessionSlot {
            open: self.open.clone(),
            tenant: tenant.to_owned(),
        })
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
    /// When the session becomes idle, on the monotonic clock: `idle_timeout` after its last
    /// activity.
    pub idle_at: Instant,
}

impl Polled {
    /// Whether `idle_timeout` passed without activity (monotonic time: a step of the wall clock
    /// does not count).
    pub fn is_idle(&self) -> bool {
        Instant::now() >= self.idle_at
    }

    /// Activity now: the session is idle `idle` from now.
    pub fn active_now(&mut self, idle: Duration) {
        self.idle_at = Instant::now() + idle;
    }
}

/// When a session whose last activity was `last` (wall clock) becomes idle: `idle` after it, on
/// the monotonic clock; now if that has passed; `idle` from now if `last` is in the future.
fn idle_deadline(last: OffsetDateTime, idle: Duration) -> Instant {
    let age = Duration::try_from(OffsetDateTime::now_utc() - last).unwrap_or(Duration::ZERO);
    Instant::now() + idle.saturating_sub(age)
}

/// What a finished poll tells the scheduler.
pub(crate) enum Next {
    /// Poll again after the usual interval (or a backoff, after failures).
    Again(Box<Polled>),
    /// The session ended.
    Closed,
}

/// What the scheduler keeps per tenant, made when its first session is added.
struct TenantPolls {
    /// At most `relay.max_concurrent_polls` polls of the tenant at once.
    permits: Semaphore,
    metrics: PollMetrics,
    interval: Duration,
    /// Polls due within one slot start together ([`wake_at`]).
    slot: Duration,
    /// The tenant's `idle_timeout`.
    idle: Duration,
}

struct Entry {
    /// The session; `None` while its poll is in flight (the poll owns it then).
    polled: Option<Box<Polled>>,
    tenant: Arc<TenantPolls>,
    key: Option<delay_queue::Key>,
    /// When the current (or next) poll is due.
    due: Instant,
    removed: bool,
    /// What others committed while a poll was in flight: the poll owns the copy then, and
    /// returns it without these, so they are applied when it comes back.
    reported: Reported,
    /// Whether `ccrelay_sessions_queued` counts this session now.
    queued: bool,
}

impl Entry {
    fn in_flight(&self) -> bool {
        self.polled.is_none()
    }

    /// The one place the poller's copy of a session takes what others committed: at once when
    /// the copy is here, when its poll returns while the poll has it.
    fn report(&mut self, r: Reported) {
        match self.polled.as_mut() {
            Some(p) => r.apply(p),
            None => self.reported.merge(r),
        }
        self.count_queued();
    }

    /// Brings `ccrelay_sessions_queued` in step with the copy's state (while the copy is here).
    fn count_queued(&mut self) {
        if let Some(p) = &self.polled {
            let queued = p.session.state == SessionState::Queued;
            if queued != self.queued {
                self.queued = queued;
                self.tenant.metrics.session_queued(queued);
            }
        }
    }
}

/// What another task committed about a session ([`PollerHandle::add`], [`PollerHandle::touch`]):
/// its new state, its latest activity, and the idle deadline that activity sets.
#[derive(Default)]
struct Reported {
    state: Option<SessionState>,
    last_activity: Option<OffsetDateTime>,
    idle_at: Option<Instant>,
}

impl Reported {
    /// `later` on top of `self`: its state if it has one, the latest activity and deadline.
    fn merge(&mut self, later: Reported) {
        self.state = later.state.or(self.state.take());
        self.last_activity = self.last_activity.max(later.last_activity);
        self.idle_at = self.idle_at.max(later.idle_at);
    }

    fn apply(self, p: &mut Polled) {
        if let Some(state) = self.state {
            p.session.state = state;
        }
        if let Some(at) = self.last_activity {
            p.session.last_activity_at = p.session.last_activity_at.max(at);
        }
        if let Some(at) = self.idle_at {
            p.idle_at = p.idle_at.max(at);
        }
    }
}

/// Runs the scheduler until the relay is cancelled. Polls run on `tracker`, so shutdown waits for
/// those in flight to commit what they received; what they receive goes into `journal` first.
pub async fn run(
    relay: Arc<Relay>,
    journal: Arc<Journal>,
    mut inbox: PollerInbox,
    tracker: TaskTracker,
) {
    let mut queue: DelayQueue<Arc<str>> = DelayQueue::new();
    let mut sessions: HashMap<Arc<str>, Entry> = HashMap::new();
    let mut tenants: HashMap<String, Arc<TenantPolls>> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Arc<str>, Next)>();
    let cancel = relay.cancel.clone();

    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            Some((id, next)) = done_rx.recv() => {
                let Some(entry) = sessions.get_mut(&id) else { continue };
                match next {
                    Next::Again(mut p) if !entry.removed => {
                        std::mem::take(&mut entry.reported).apply(&mut p);
                        let due = next_due(entry.tenant.interval, entry.due, p.failures, Instant::now());
                        entry.due = due;
                        entry.key = Some(queue.insert_at(id, wake_at(due, entry.tenant.slot)));
                        entry.polled = Some(p);
                        entry.count_queued();
                    }
                    _ => {
                        forget(&mut sessions, &inbox.open, &id);
                    }
                }
            }
            Some(cmd) = inbox.rx.recv() => match cmd {
                Cmd::Add(s) => match sessions.get_mut(s.id.as_str()) {
                    Some(e) => {
                        e.removed = false;
                        let idle_at = idle_deadline(s.last_activity_at, e.tenant.idle);
                        e.report(Reported {
                            state: Some(s.state),
                            last_activity: Some(s.last_activity_at),
                            idle_at: Some(idle_at),
                        });
                    }
                    None => {
                        let tenant = tenant_polls(&relay, &mut tenants, &s.tenant);
                        // Spread the first polls of many sessions over one interval.
                        let first = tenant.interval.mul_f64(rand::rng().random_range(0.0..1.0));
                        insert(&mut sessions, &mut queue, tenant, *s, first);
                    }
                },
                Cmd::Adopt(adopted) => {
                    for s in adopted {
                        if sessions.contains_key(s.id.as_str()) {
                            continue;
                        }
                        let tenant = tenant_polls(&relay, &mut tenants, &s.tenant);
                        // Not before one interval: the previous owner may have just polled it.
                        let first = tenant.interval.mul_f64(rand::rng().random_range(1.0..2.0));
                        insert(&mut sessions, &mut queue, tenant, s, first);
                    }
                }
                Cmd::Remove(id) => {
                    if let Some(e) = sessions.get_mut(id.as_str()) {
                        if e.in_flight() {
                            e.removed = true;
                        } else {
                            if let Some(k) = e.key.take() {
                                queue.remove(&k);
                            }
                            forget(&mut sessions, &inbox.open, &id);
                        }
                    }
                }
                Cmd::Touch(id, at) => {
                    if let Some(e) = sessions.get_mut(id.as_str()) {
                        // Activity now, whatever the wall clock says `at` is.
                        let idle_at = Instant::now() + e.tenant.idle;
                        e.report(Reported {
                            state: None,
                            last_activity: Some(at),
                            idle_at: Some(idle_at),
                        });
                    }
                }
            },
            Some(expired) = queue.next(), if !queue.is_empty() => {
                let id = expired.into_inner();
                let Some(entry) = sessions.get_mut(&id) else { continue };
                entry.key = None;
                let Some(polled) = entry.polled.take() else { continue };
                // Only while its partition is this instance's; else its owner polls it now.
                let Some(work) = relay.ownership.begin_for(&polled.session.tenant, &polled.session.user_id) else {
                    tracing::debug!(session = %polled.session.id, "Session's partition is not this relay's any more; not polled here");
                    if let Some(t) = relay.tenant(&polled.session.tenant) {
                        t.client.forget_user(&polled.session.user_id);
                    }
                    forget(&mut sessions, &inbox.open, &id);
                    continue;
                };
                let (due, tenant) = (entry.due, entry.tenant.clone());
                let (relay, journal) = (relay.clone(), journal.clone());
                let done = done_tx.clone();
                let span = tracing::error_span!(
                    "poll",
                    tenant = %polled.session.tenant,
                    user = %polled.session.user_id
                );
                tracker.spawn(async move {
                    let _work = work;
                    let next = match tenant.permits.acquire().await {
                        Ok(_permit) => {
                            tenant.metrics.lag(Instant::now().saturating_duration_since(due));
                            poll::poll_session(&relay, &journal, &tenant.metrics, polled).await
                        }
                        Err(_) => Next::Again(polled),
                    };
                    let _ = done.send((id, next));
                }.instrument(span));
            }
        }
    }
}

/// Starts tracking session `s`, first polled `first` from now.
fn insert(
    sessions: &mut HashMap<Arc<str>, Entry>,
    queue: &mut DelayQueue<Arc<str>>,
    tenant: Arc<TenantPolls>,
    s: Session,
    first: Duration,
) {
    let due = Instant::now() + first;
    let id: Arc<str> = s.id.as_str().into();
    let key = queue.insert_at(id.clone(), wake_at(due, tenant.slot));
    tenant.metrics.session_polled();
    let idle_at = idle_deadline(s.last_activity_at, tenant.idle);
    let mut entry = Entry {
        polled: Some(Box::new(Polled {
            session: s,
            failures: 0,
            queue_position: None,
            idle_at,
        })),
        tenant,
        key: Some(key),
        due,
        removed: false,
        reported: Reported::default(),
        queued: false,
    };
    entry.count_queued();
    sessions.insert(id, entry);
}

/// The tenant's permits and metric handles, made on first use.
fn tenant_polls(
    relay: &Relay,
    tenants: &mut HashMap<String, Arc<TenantPolls>>,
    name: &str,
) -> Arc<TenantPolls> {
    if let Some(t) = tenants.get(name) {
        return t.clone();
    }
    let t = Arc::new(TenantPolls {
        permits: Semaphore::new(relay.config.relay.max_concurrent_polls),
        metrics: PollMetrics::new(name),
        interval: poll_interval(relay, name),
        slot: slot_for(poll_interval(relay, name)),
        idle: relay
            .tenant(name)
            .map(|t| t.config().idle_timeout)
            .unwrap_or(Duration::from_secs(30 * 60)),
    });
    tenants.insert(name.to_owned(), t.clone());
    t
}

/// Stops tracking a session.
fn forget(sessions: &mut HashMap<Arc<str>, Entry>, open: &OpenSessions, id: &str) {
    open.remove(id);
    if let Some(e) = sessions.remove(id) {
        e.tenant.metrics.session_unpolled();
        if e.queued {
            e.tenant.metrics.session_queued(false);
        }
    }
}

fn poll_interval(relay: &Relay, tenant: &str) -> Duration {
    relay
        .tenant(tenant)
        .map(|t| t.config().poll_interval)
        .unwrap_or(Duration::from_secs(1))
}

/// When the poll after one that was due at `due` and ended at `now` is due: one `interval` after
/// `due` (but at least a tenth of an interval from now) after a success; after failures the
/// interval doubled per consecutive failure up to 30 s, ± 10 %, from now.
/// The width of a tenant's time slots: a hundredth of its poll interval, from 1 to 20 ms.
fn slot_for(interval: Duration) -> Duration {
    (interval / 100).clamp(Duration::from_millis(1), Duration::from_millis(20))
}

/// When a poll due at `due` starts: at the end of its `slot` (slots counted from the first call
/// in the process). So the polls due within one slot share one wake-up of the scheduler, and
/// their answers arrive close together, instead of a wake-up each — fewer wake-ups per poll,
/// most of all when the sessions are spread over several relays (docs/BENCHMARKS.md, S5). A
/// poll starts less than one slot late (`ccrelay_poll_lag_seconds` includes it); the schedule
/// itself (`due`) keeps the interval exactly.
fn wake_at(due: Instant, slot: Duration) -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let since = due.saturating_duration_since(epoch).as_nanos();
    let slot = slot.as_nanos().max(1);
    let end = since.div_ceil(slot) * slot;
    epoch + Duration::from_nanos(u64::try_from(end).unwrap_or(u64::MAX))
}

fn next_due(interval: Duration, due: Instant, failures: u32, now: Instant) -> Instant {
    if failures == 0 {
        return (due + interval).max(now + interval / 10);
    }
    let backoff = (interval * 2u32.saturating_pow(failures.min(8))).min(Duration::from_secs(30));
    now + backoff.mul_f64(rand::rng().random_range(0.9..1.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_poll_starts_at_the_end_of_its_slot_never_before_it_is_due() {
        const SLOT: Duration = Duration::from_millis(10);
        let t0 = wake_at(Instant::now(), SLOT);
        for ms in [0u64, 1, 9, 10, 11, 999, 1_000, 3_601_000] {
            let due = t0 + Duration::from_millis(ms);
            let at = wake_at(due, SLOT);
            assert!(at >= due, "{ms} ms: started before it was due");
            assert!(at - due < SLOT, "{ms} ms: started a slot late or more");
            assert_eq!(
                (at - t0).as_nanos() % SLOT.as_nanos(),
                0,
                "{ms} ms: not a slot's end"
            );
        }
        // Polls due within one slot share its wake-up.
        let a = wake_at(t0 + Duration::from_millis(1), SLOT);
        let b = wake_at(t0 + Duration::from_millis(9), SLOT);
        assert_eq!(a, b);
        assert_eq!(
            slot_for(Duration::from_millis(100)),
            Duration::from_millis(1)
        );
        assert_eq!(slot_for(S), Duration::from_millis(10));
        assert_eq!(slot_for(5 * S), Duration::from_millis(20));
        assert_eq!(
            slot_for(Duration::from_millis(20)),
            Duration::from_millis(1)
        );
    }

    fn session(id: &str, tenant: &str, last: OffsetDateTime) -> Session {
        Session {
            id: id.into(),
            kind: "cec".into(),
            tenant: tenant.into(),
            user_id: format!("u-{id}"),
            channel_config_id: "c".into(),
            state: SessionState::Active,
            token: None,
            opened_at: last,
            closed_at: None,
            close_reason: None,
            last_activity_at: last,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idleness_is_measured_on_the_monotonic_clock() {
        let idle = Duration::from_secs(30 * 60);
        let now = OffsetDateTime::now_utc();
        // Last active a minute ago by the wall clock: idle 29 minutes from now.
        let mut p = Polled {
            session: session("s1", "acme", now - time::Duration::minutes(1)),
            failures: 0,
            queue_position: None,
            idle_at: idle_deadline(now - time::Duration::minutes(1), idle),
        };
        assert!(!p.is_idle());
        // The wall clock jumps two hours ahead (as seen from the session's stored timestamp,
        // which now looks two hours old): nothing is idle, the monotonic clock did not move.
        p.session.last_activity_at = now - time::Duration::hours(2);
        assert!(!p.is_idle(), "a wall-clock step must not close the session");
        tokio::time::advance(Duration::from_secs(28 * 60)).await;
        assert!(!p.is_idle());
        // Activity postpones it by a whole idle_timeout.
        p.active_now(idle);
        tokio::time::advance(Duration::from_secs(29 * 60)).await;
        assert!(!p.is_idle());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(p.is_idle());
    }

    #[tokio::test(start_paused = true)]
    async fn the_stored_last_activity_seeds_the_deadline() {
        let idle = Duration::from_secs(30 * 60);
        let now = OffsetDateTime::now_utc();
        // Resumed at start-up: idle since two hours, so idle at once; 10 minutes: 20 to go.
        assert!(idle_deadline(now - time::Duration::hours(2), idle) <= Instant::now());
        let d = idle_deadline(now - time::Duration::minutes(10), idle) - Instant::now();
        assert!(
            (Duration::from_secs(19 * 60)..=Duration::from_secs(20 * 60)).contains(&d),
            "{d:?}"
        );
        // A time in the future (the clock went back) counts as now.
        assert_eq!(
            idle_deadline(now + time::Duration::hours(1), idle),
            Instant::now() + idle
        );
    }

    #[test]
    fn the_open_sessions_of_a_tenant_are_capped() {
        let (h, _inbox) = channel();
        let now = OffsetDateTime::now_utc();
        h.add(session("a1", "acme", now));
        h.add(session("a1", "acme", now)); // an update, not another session
        h.add(session("b1", "beta", now));
        assert_eq!(h.open_sessions("acme"), 1);
        let slot = h.reserve("acme", 2).expect("a second place");
        assert_eq!(h.reserve("acme", 2).err(), Some(2), "the place is held");
        assert!(h.reserve("beta", 2).is_ok(), "tenants are counted apart");
        h.add(session("a2", "acme", now));
        drop(slot);
        assert_eq!(h.open_sessions("acme"), 2);
        assert!(h.reserve("acme", 2).is_err());
        h.remove("a1");
        assert_eq!(h.open_sessions("acme"), 1);
        let slot = h.reserve("acme", 2).expect("room again");
        drop(slot); // a CONNECT that did not open a session frees its place
        assert_eq!(h.open_sessions("acme"), 1);
    }

    #[test]
    fn a_successful_poll_keeps_the_cadence() {
        let due = Instant::now();
        // Ended 30 ms after it was due: the next is due one interval after the last was due.
        assert_eq!(
            next_due(S, due, 0, due + Duration::from_millis(30)),
            due + S
        );
        // Started late and ended 600 ms late: still one interval after the due time.
        assert_eq!(
            next_due(S, due, 0, due + Duration::from_millis(600)),
            due + S
        );
    }

    #[test]
    fn a_poll_ending_past_its_successors_due_time_leaves_a_tenth_of_an_interval() {
        let due = Instant::now();
        let now = due + Duration::from_millis(1500);
        assert_eq!(next_due(S, due, 0, now), now + S / 10);
        let now = due + Duration::from_millis(950);
        assert_eq!(next_due(S, due, 0, now), now + S / 10);
    }

    #[test]
    fn failures_back_off_from_now_up_to_30s() {
        let due = Instant::now();
        let now = due + Duration::from_millis(200);
        for (failures, base) in [(1, 2.0), (2, 4.0), (3, 8.0), (5, 30.0), (40, 30.0)] {
            let d = next_due(S, due, failures, now) - now;
            let secs = d.as_secs_f64();
            assert!(
                (base * 0.9 - 1e-9..=base * 1.1 + 1e-9).contains(&secs),
                "{failures} failures: {secs} s"
            );
        }
    }
}
