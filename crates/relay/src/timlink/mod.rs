//! Timlink: everything between NATS and the Tencent IM client.
//!
//! - [`send`]: Desk sends from `P.tim.<a>.send.<u>` (one user's in order), idempotent by `id`,
//!   retried with backoff, each ending in a `send.result` event.
//! - [`stream`]: the robot stream scheduler of one app, fed by `P.tim.<a>.stream.<u>`: chunks of
//!   a `streamId` go out in order, one call at a time, merged while they wait for the rate limit.
//! - [`ratelimit`]: the app's limiter (GCRA), shared by its sends and streams.
//! - [`callback`]: the inbound callback endpoint `/tim/<a>/callback`.
//!
//! The upstream is reached only through [`TimUpstream`] (implemented for [`TimClient`]), so the
//! scheduler's tests run against an in-process fake. Data flows one way: JetStream consumer →
//! handlers → Tencent → store + outbox; a message is acknowledged only after its outcome is
//! committed.

pub mod callback;
pub mod ratelimit;
pub mod request;
pub mod send;
pub mod stream;

#[cfg(test)]
mod fake;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::ack::{self, Disposition, settle};
use crate::bus::serial::{self, BySubject};
use crate::bus::{partitioned, streams};
use config::{NatsConfig, TimApp};
use contract::Subjects;
use contract::payload::{Event, event_type};
use store::event_record;
use store::{Commit, Committed, DynStore, StoreError, kind};
use tim::wire::{SendMsgRequest, StreamMsgRequest, TimAnswer};
use tim::{TimClient, TimEndpoint, TimError};

use ratelimit::RateLimiter;
use stream::{ChunkIn, StreamHandle};

/// The two Tencent calls the relay makes. An answer that is not OK is an `Err`.
#[async_trait]
pub trait TimUpstream: Send + Sync + 'static {
    async fn send_msg(&self, req: &SendMsgRequest) -> Result<TimAnswer, TimError>;
    async fn send_stream_msg(&self, req: &StreamMsgRequest) -> Result<TimAnswer, TimError>;
}

#[async_trait]
impl TimUpstream for TimClient {
    async fn send_msg(&self, req: &SendMsgRequest) -> Result<TimAnswer, TimError> {
        ok_or_api(
            TimEndpoint::DeskSendMsg,
            TimClient::send_msg(self, req).await,
        )
    }
    async fn send_stream_msg(&self, req: &StreamMsgRequest) -> Result<TimAnswer, TimError> {
        ok_or_api(
            TimEndpoint::RobotSendStreamMsg,
            TimClient::send_stream_msg(self, req).await,
        )
    }
}

/// An OK-looking `Ok` whose answer says FAIL is turned into [`TimError::Api`] (the client does
/// this itself; this keeps the relay right whatever it does).
fn ok_or_api(endpoint: TimEndpoint, r: Result<TimAnswer, TimError>) -> Result<TimAnswer, TimError> {
    match r {
        Ok(a) if !a.is_ok() => Err(TimError::Api {
            endpoint,
            code: a.error_code,
            info: a.error_info,
        }),
        other => other,
    }
}

/// One configured app, at run time.
pub struct AppLink {
    pub name: Arc<str>,
    pub config: TimApp,
    pub upstream: Arc<dyn TimUpstream>,
    /// Shared by every send and stream of the app.
    pub limiter: Arc<RateLimiter>,
    /// The app's stream scheduler.
    pub streams: StreamHandle,
}

/// Every app, and what the handlers share.
pub struct TimLink {
    /// The store (which wakes the outbox), subjects and cancellation token every handler uses.
    sink: Sink,
    /// The streams and consumer settings (`[nats]`).
    nats: NatsConfig,
    /// `cluster.lease`: the partition consumers' pin timeout.
    lease: Duration,
    pub apps: HashMap<String, AppLink>,
}

/// What the handlers need of the relay, for code that also runs without one (tests).
#[derive(Clone)]
pub struct Sink {
    pub store: DynStore,
    pub subjects: Subjects,
    pub cancel: CancellationToken,
    /// How long a send is retried before it is given up.
    pub budget: Budget,
    /// Which users' sends and streams are this instance's (all, but in a cluster), and its share
    /// of each app's rate limit.
    pub ownership: crate::ownership::Ownership,
}

/// The attempt and age budget of one Tencent send (`relay.up_attempts`, `relay.up_max_age`):
/// rate-limit answers cost no attempt, but count against the age.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub attempts: u32,
    pub max_age: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget::of(&config::RelayConfig::default())
    }
}

impl Budget {
    pub fn of(relay: &config::RelayConfig) -> Self {
        Budget {
            attempts: relay.up_attempts.max(1),
            max_age: relay.up_max_age,
        }
    }
}

impl Sink {
    /// Runs `save` until it succeeds, fails for good, or the relay is cancelled (retrying while
    /// the database is away: [`store::Store::save_retrying`], which wakes the outbox when rows
    /// were added).
    pub async fn save<F, Fut>(&self, save: F) -> Result<Committed, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Committed, StoreError>>,
    {
        self.store.save_retrying("the commit", save).await
    }

    /// Commits `commit` with [`Self::save`].
    pub async fn commit(&self, commit: Commit) -> Result<Committed, StoreError> {
        let store = self.store.clone();
        self.save(|| store.commit(commit.clone())).await
    }

    /// An `error` event about a refused message, on the user's event subject (or `P.error`).
    pub fn refusal(&self, app: &str, user: &str, code: &str, field: &str, reason: &str) -> Commit {
        let e = Event::new(event_type::ERROR, false)
            .for_user(app, user)
            .result(code, Some(format!("{field}: {reason}")))
            .with("app", app)
            .with("field", field)
            .with(
                "error",
                serde_json::json!({"code": code, "message": format!("{field}: {reason}")}),
            );
        let subject = self.subjects.tim_event_or_error(app, user);
        Commit {
            events: vec![event_record(kind::TIM, subject, None, &e)],
            ..Default::default()
        }
    }
}

impl TimLink {
    /// Builds one [`AppLink`] per `[[tim]]` app of `config` (one [`TimClient`] each, on the
    /// shared `http` client) and starts their stream schedulers on `tracker`. `sink` is what
    /// every handler commits through.
    pub fn new(
        config: &config::Config,
        sink: Sink,
        http: reqwest::Client,
        tracker: &TaskTracker,
    ) -> TimLink {
        let apps = config
            .tim
            .iter()
            .map(|app| {
                let upstream: Arc<dyn TimUpstream> =
                    Arc::new(TimClient::new(http.clone(), app.clone()));
                crate::instrument::rate_limit_budget(&app.name, app.rate_limit);
                let limiter = Arc::new(
                    RateLimiter::for_limit(app.rate_limit).shared_by(sink.ownership.clone()),
                );
                let streams = stream::spawn(
                    stream::StreamCtx {
                        app: app.name.as_str().into(),
                        upstream: upstream.clone(),
                        limiter: limiter.clone(),
                        sink: sink.clone(),
                        idle_timeout: app.stream_idle_timeout,
                    },
                    tracker,
                );
                let link = AppLink {
                    name: app.name.as_str().into(),
                    config: app.clone(),
                    upstream,
                    limiter,
                    streams,
                };
                (app.name.clone(), link)
            })
            .collect();
        TimLink {
            sink,
            nats: config.nats.clone(),
            lease: config.cluster.lease,
            apps,
        }
    }

    pub fn sink(&self) -> Sink {
        self.sink.clone()
    }

    pub fn app(&self, name: &str) -> Option<&AppLink> {
        self.apps.get(name)
    }
}

/// Runs the Tencent consumer (`ccrelay-tim` on `P.tim.>`) until the relay is cancelled. Does
/// nothing when no `[[tim]]` app is configured.
pub async fn run(link: Arc<TimLink>, js: jetstream::Context, tracker: TaskTracker) {
    if link.apps.is_empty() {
        return;
    }
    let cancel = link.sink.cancel.clone();
    let subjects = link.sink.subjects.clone();
    let cfg = link.nats.clone();
    let ownership = link.sink.ownership.clone();
    let setup = partitioned::Setup::new(cfg.clone(), ownership.partitions(), link.lease);
    let Some(stream_info) = streams::until_ok("Setting up the NATS streams", &cancel, || async {
        if ownership.is_cluster() {
            partitioned::ensure_partitioned(&js, &subjects, &setup).await
        } else {
            streams::ensure_streams(&js, &subjects, &cfg).await
        }
    })
    .await
    else {
        return;
    };
    let stamp = ack::stream_stamp(stream_info.created);
    let workers = Workers {
        stamp: Arc::from(stamp.as_str()),
        link: link.clone(),
        serial: BySubject::new(tracker.clone()),
        tracker: tracker.clone(),
        // Within the consumer's ack wait, which a cluster shortens (`Setup::ack_wait`).
        heartbeat: (if ownership.is_cluster() {
            setup.ack_wait()
        } else {
            cfg.ack_wait
        } / 3)
            .max(Duration::from_millis(500)),
    };
    if ownership.is_cluster() {
        // A member pulls the consumers of its partitions only (docs/HA.md).
        let follower =
            partitioned::Follower::new(js.clone(), subjects.clone(), setup, partitioned::Kind::Tim);
        ownership.add_puller(follower.pulling());
        tracing::info!("Consuming the Tencent IM messages of this member's partitions");
        follower
            .run(ownership.consuming(), cancel.clone(), move |msg| {
                workers.dispatch(msg)
            })
            .await;
        return;
    }
    while !cancel.is_cancelled() {
        let Some(consumer) = streams::until_ok("Setting up the Tencent consumer", &cancel, || {
            streams::ensure_tim_consumer(&js, &subjects, &cfg)
        })
        .await
        else {
            return;
        };
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot pull Tencent messages; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        tracing::info!(
            consumer = streams::TIM_CONSUMER,
            "Consuming Tencent IM messages"
        );
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                next = messages.next() => match next {
                    Some(Ok(msg)) => workers.dispatch(msg),
                    Some(Err(e)) => tracing::warn!(error = %e, "Tencent consumer error"),
                    None => break,
                }
            }
        }
    }
}

/// Dispatches consumed messages: sends to one worker per subject (so one user's sends keep their
/// order), chunks to their app's scheduler.
#[derive(Clone)]
struct Workers {
    /// The `_IN` stream's creation time, in every derived id.
    stamp: Arc<str>,
    link: Arc<TimLink>,
    /// One worker per send subject (user), so a user's sends keep their order.
    serial: BySubject,
    tracker: TaskTracker,
    heartbeat: Duration,
}

fn stream_seq(msg: &jetstream::Message) -> u64 {
    msg.info().map(|i| i.stream_sequence).unwrap_or(0)
}

impl Workers {
    fn dispatch(&self, msg: jetstream::Message) {
        let subjects = &self.link.sink.subjects;
        let parsed = subjects
            .parse_tim(msg.subject.as_str())
            .map(|(a, k, u)| (a.to_owned(), k.to_owned(), u.to_owned()));
        match parsed {
            Some((app, k, user)) if k == "stream" => self.chunk(app, user, msg),
            Some((_, k, _)) if k == "send" => self.send(msg),
            _ => {
                // The consumer's filter and the `_IN` subjects make this impossible.
                tracing::error!(subject = %msg.subject, "Tencent message on an unexpected subject; refused");
                let sink = self.link.sink();
                // No routable app and user: the event goes to `P.error`.
                let reason = format!(
                    "{} is not P.tim.<a>.send.<u> or P.tim.<a>.stream.<u>",
                    msg.subject
                );
                let commit = sink.refusal("", "", "invalid_request", "subject", &reason);
                self.tracker.spawn(async move {
                    let d = match sink.commit(commit).await {
                        Ok(_) => Disposition::Ack,
                        Err(_) => Disposition::Retry(Duration::from_secs(5)),
                    };
                    settle(&msg, d).await;
                });
            }
        }
    }

    /// A chunk: checked, then handed to its app's scheduler; acknowledged once the scheduler
    /// says its outcome is committed.
    fn chunk(&self, app: String, user: String, msg: jetstream::Message) {
        let sink = self.link.sink();
        // Nothing keyed by a token no subject can carry is stored: refused on `P.error`.
        if let Err(e) = contract::subjects::check_token(&app)
            .map_err(|e| format!("app {e}"))
            .and_then(|()| contract::subjects::check_token(&user).map_err(|e| format!("user {e}")))
        {
            let info = msg.info().ok();
            let received_at = info
                .as_ref()
                .map(|i| i.published)
                .unwrap_or_else(time::OffsetDateTime::now_utc);
            let msg_id = format!("tim-c{}-{}", self.stamp, stream_seq(&msg));
            let letter = store::deadletter::Received {
                source: store::dead_source::TIM_STREAM,
                msg_id: &msg_id,
                subject: self
                    .link
                    .sink
                    .subjects
                    .without_partition(msg.subject.as_str()),
                payload: &msg.payload,
                kind: kind::TIM,
                tenant: None,
                user: None,
                message_id: None,
                received_at,
            }
            .letter(store::deadletter::Why {
                reason: "bad_subject",
                error: format!("unroutable subject: {e}"),
                attempts: 0,
            });
            self.tracker.spawn(async move {
                let d = send::give_up(&sink, &letter).await;
                settle(&msg, d).await;
            });
            return;
        }
        let (code, field, reason) = match (
            self.link.app(&app),
            contract::tim_payload::parse_chunk(&msg.payload),
        ) {
            (None, _) => (
                "unknown_app",
                "app".to_owned(),
                format!("no [[tim]] app is named {app:?}"),
            ),
            (Some(_), Err(e)) => ("invalid_request", e.field, e.reason),
            (Some(a), Ok(chunk)) => {
                // In a cluster: only while the chunk's partition is this member's; else it goes
                // back at once to the partition's owner.
                let Some(work) = self.gate(&msg) else {
                    let this = self.clone();
                    self.tracker.spawn(async move { this.refuse(&msg).await });
                    return;
                };
                let (tx, rx) = oneshot::channel();
                let pushed = a.streams.push(ChunkIn {
                    user,
                    chunk,
                    seq: stream_seq(&msg),
                    received_at: msg
                        .info()
                        .map(|i| i.published)
                        .unwrap_or_else(|_| time::OffsetDateTime::now_utc()),
                    done: Some(tx),
                });
                let heartbeat = self.heartbeat;
                self.tracker.spawn(async move {
                    let _work = work;
                    let d = if pushed.is_ok() {
                        wait_beating(&msg, rx, heartbeat).await
                    } else {
                        Disposition::Retry(Duration::from_secs(1))
                    };
                    settle(&msg, d).await;
                });
                return;
            }
        };
        {
            tracing::warn!(
                app,
                user,
                code,
                field,
                reason,
                "Tencent stream chunk refused"
            );
            let mut commit = sink.refusal(&app, &user, code, &field, &reason);
            // Also as a stream.result, so a stream's caller hears of it where it listens.
            let e = Event::new(event_type::STREAM_RESULT, false)
                .for_user(&app, &user)
                .result(code, Some(format!("{field}: {reason}")))
                .with("errorCode", code)
                .with("errorInfo", format!("{field}: {reason}"));
            commit.events.push(event_record(
                kind::TIM,
                sink.subjects.tim_event_or_error(&app, &user),
                None,
                &e,
            ));
            self.tracker.spawn(async move {
                let d = match sink.commit(commit).await {
                    Ok(_) => Disposition::Ack,
                    Err(_) => Disposition::Retry(Duration::from_secs(5)),
                };
                settle(&msg, d).await;
            });
        }
    }

    /// [`partitioned::refuse`]: back to its partition's owner.
    async fn refuse(&self, msg: &jetstream::Message) {
        partitioned::refuse(&self.link.sink.ownership, &self.link.sink.subjects, msg).await;
    }

    /// [`partitioned::gate`]: the work guard of `msg`'s partition, if this member may work on it.
    fn gate(&self, msg: &jetstream::Message) -> Option<crate::ownership::Work> {
        partitioned::gate(&self.link.sink.ownership, &self.link.sink.subjects, msg)
    }

    fn send(&self, msg: jetstream::Message) {
        let this = self.clone();
        self.serial.dispatch(msg, move |queue| this.work(queue));
    }

    async fn work(self, mut queue: serial::Queue) {
        while let Some(msg) = queue.pop() {
            let cancel = &self.link.sink.cancel;
            if cancel.is_cancelled() {
                // Hand it back for the next run (a member: for the next owner, see `refuse`).
                if self.link.sink.ownership.is_cluster() {
                    self.refuse(&msg).await;
                } else {
                    settle(&msg, Disposition::Retry(Duration::from_secs(1))).await;
                }
                continue;
            }
            let Some(_work) = self.gate(&msg) else {
                self.refuse(&msg).await;
                continue;
            };
            let seq = stream_seq(&msg);
            let received_at = msg
                .info()
                .map(|i| i.published)
                .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
            let d = ack::work_beating(&msg, self.heartbeat, cancel, || {
                send::handle(
                    &self.link,
                    send::Delivery {
                        subject: self
                            .link
                            .sink
                            .subjects
                            .without_partition(msg.subject.as_str()),
                        payload: &msg.payload,
                        derived_id: format!("tim-s{}-{seq}", self.stamp),
                        stream_seq: seq,
                        received_at,
                    },
                )
            })
            .await;
            match d {
                // Fenced: the partition moved before this member heard of it.
                Disposition::HandBack => self.refuse(&msg).await,
                d => settle(&msg, d).await,
            }
        }
    }
}

/// Waits for the scheduler's word, telling JetStream meanwhile that the chunk is in progress.
/// A scheduler that drops the sender (shutting down) means: deliver it again.
async fn wait_beating(
    msg: &jetstream::Message,
    mut rx: oneshot::Receiver<Disposition>,
    heartbeat: Duration,
) -> Disposition {
    let mut beat = tokio::time::interval(heartbeat);
    beat.tick().await;
    loop {
        tokio::select! {
            d = &mut rx => return d.unwrap_or(Disposition::Retry(Duration::from_secs(1))),
            _ = beat.tick() => ack::progress(msg).await,
        }
    }
}

/// The code and text a `send.result` / `stream.result` reports for `e`.
pub fn error_fields(e: &TimError) -> (serde_json::Value, String) {
    let code = match e {
        TimError::Api { code, .. } => serde_json::Value::from(*code),
        other => serde_json::Value::from(other.code()),
    };
    (code, e.info())
}
