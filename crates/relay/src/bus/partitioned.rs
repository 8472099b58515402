//! Partitioned consumption of `_IN` on a cluster (docs/HA.md, "Uplink: partitioned consumption in
//! JetStream"): the stream's subject transform that appends each message's partition, the
//! per-partition pinned-client consumers, and [`Follower`], which pulls the consumers of the
//! partitions this instance owns and nothing else.
//!
//! # Layout
//!
//! `_IN` stores `P.cec.<t>.up.<u>` as `P.cec.<t>.up.<u>.<p>` (and the Tencent subjects the same
//! way), `p` being nats-server's `partition(N, 2, 4)` of the tenant (or app) and user tokens —
//! the same function as [`contract::partition::of`]. Each partition has one durable pull
//! consumer per [`Kind`] (`ccrelay-cec-up-<p>` on `P.cec.*.up.*.<p>`, `ccrelay-tim-<p>` on
//! `P.tim.*.*.*.<p>`), with the pinned-client priority policy in the group [`GROUP`]: the server
//! delivers a consumer's messages to one pinned pull client only, so an instance that wrongly
//! believes it owns a partition (paused with a pull request open) gets nothing once the pin has
//! moved. The owner takes the pin by unpinning ([`unpin`]) when it gains the partition — the
//! database, not NATS, decides who owns what — and keeps it by pulling with the pin id the server
//! gave it; the pin expires `lease` after its holder's last pull (`priority_timeout`).
//!
//! # Changing owner
//!
//! When a partition leaves the owned set, its pull loop sends no further pull request and
//! receives the open one to its end (at most [`Setup::expires`], about a second), so that no
//! message the server sent is left in flight — one lost in flight would come back only after
//! `ack_wait`, behind newer ones. Every message received is handed to the dispatch callback,
//! also those that arrive after the decision: the dispatcher's work gate refuses the work of a
//! partition no longer owned, and its refusal must be a negative acknowledgement *without* delay,
//! sent when the message's turn in its subject's queue comes. JetStream redelivers negatively
//! acknowledged messages first, in the order they were handed back, so a subject's messages reach
//! the next owner in stream order. (Were this module to hand back what came after the decision
//! itself, those could be handed back before earlier messages of the same subject still queued
//! behind work in progress, and be redelivered ahead of them.)
//!
//! The loop then counts as stopped in [`Follower::pulling`]: a hand-back should release the
//! partition only once it is out of that set and the partition's work in flight has drained,
//! so the next owner's first pull comes after every hand-back of the old owner.
//!
//! # Upgrading from the single-consumer layout
//!
//! A relay on SQLite keeps the single consumers `ccrelay-cec-up` and `ccrelay-tim`
//! ([`super::streams`]). When [`ensure_partitioned`] finds a stream without the transform, it
//! makes sure those two consumers are there (so no message published during the switch lacks an
//! interested consumer and is dropped by the interest retention), narrows `ccrelay-tim`'s filter
//! to the 5-token subjects (`P.tim.>` would also take the partitioned ones), creates the
//! partition consumers and then sets the transform: from then on every new message is
//! partitioned, and the legacy consumers hold only what was stored before. A legacy consumer that
//! holds nothing is deleted at once; one that holds messages is drained by the owner of
//! partition 0 ([`Follower`] with partition 0 owned pulls it, hands its messages over like the
//! others — they are the ones whose subject has no partition token, to be gated as partition 0's
//! work — and deletes it once nothing is pending or unacknowledged). Until a kind's legacy
//! consumer is gone, no instance pulls that kind's partition consumers, so a user's old messages
//! are all handled before their new ones. A relay of the old version must not run alongside the
//! cluster during the switch.
//!
//! Going back from the partitioned layout to the single one is not supported with messages
//! still held by the partition consumers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{HeaderValue, StatusCode};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::streams::{self, CEC_UP_CONSUMER, SetupError, TIM_CONSUMER};
use config::NatsConfig;
use contract::Subjects;

/// The priority group of every partition consumer.
pub const GROUP: &str = "ccrelay";

/// The oldest nats-server a cluster works with: subject transforms came in 2.10, pinned-client
/// priority groups in 2.11.
pub const MIN_SERVER: (u32, u32) = (2, 11);

/// Which uplink a consumer feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Customer messages to CEC: `P.cec.<t>.up.<u>`.
    CecUp,
    /// Tencent IM sends and stream chunks: `P.tim.<a>.send.<u>`, `P.tim.<a>.stream.<u>`.
    Tim,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::CecUp, Kind::Tim];

    /// The durable name of partition `p`'s consumer: `ccrelay-cec-up-<p>`, `ccrelay-tim-<p>`.
    pub fn consumer_name(self, p: u32) -> String {
        format!("{}-{p}", self.legacy_consumer())
    }

    /// The filter of partition `p`'s consumer: `P.cec.*.up.*.<p>`, `P.tim.*.*.*.<p>`.
    pub fn filter(self, subjects: &Subjects, p: u32) -> String {
        match self {
            Kind::CecUp => subjects.cec_up_partition_filter(p),
            Kind::Tim => subjects.tim_partition_filter(p),
        }
    }

    /// The single consumer of this kind in the unpartitioned layout.
    pub fn legacy_consumer(self) -> &'static str {
        match self {
            Kind::CecUp => CEC_UP_CONSUMER,
            Kind::Tim => TIM_CONSUMER,
        }
    }

    /// The partition a consumer name of this kind names, if it is one.
    fn partition_of_name(self, name: &str) -> Option<u32> {
        let digits = name
            .strip_prefix(self.legacy_consumer())?
            .strip_prefix('-')?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    fn description(self, p: u32) -> String {
        match self {
            Kind::CecUp => format!("ccrelay: customer messages to Huawei CEC, partition {p}"),
            Kind::Tim => {
                format!("ccrelay: messages and stream chunks to Tencent IM, partition {p}")
            }
        }
    }
}

/// [`Kind::consumer_name`].
pub fn consumer_name(kind: Kind, p: u32) -> String {
    kind.consumer_name(p)
}

/// What the partitioned layout is made from: the `[nats]` settings, the cluster's partition count
/// and its lease.
#[derive(Debug, Clone)]
pub struct Setup {
    pub nats: NatsConfig,
    /// `cluster.partitions`, fixed for the database's lifetime.
    pub partitions: u32,
    /// `cluster.lease`: the pin of a consumer lasts this long after its holder's last pull.
    pub lease: Duration,
}

impl Setup {
    pub fn new(nats: NatsConfig, partitions: u32, lease: Duration) -> Self {
        Setup {
            nats,
            partitions: partitions.max(1),
            lease,
        }
    }

    /// The partition consumers' `ack_wait`: `min(nats.ack_wait, lease / 2)`, so that the
    /// unacknowledged messages of a dead owner are redeliverable by the time its partitions
    /// expire. In-progress signals must come at a third of it.
    pub fn ack_wait(&self) -> Duration {
        self.nats
            .ack_wait
            .min(self.lease / 2)
            .max(Duration::from_millis(100))
    }

    /// A partition consumer's `max_ack_pending`: `nats.max_ack_pending` shared among the
    /// partitions (rounded up), so that the messages in flight on one instance stay within the
    /// configured bound however many partitions it owns.
    pub fn max_ack_pending(&self) -> i64 {
        let n = i64::from(self.partitions);
        ((self.nats.max_ack_pending.max(1) + n - 1) / n).max(1)
    }

    /// How long one pull request waits for messages: well below the pin's lifetime (the lease),
    /// which each request renews, and short, since a partition that changes owner waits for its
    /// open request to end.
    pub fn expires(&self) -> Duration {
        (self.lease / 4)
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(100))
    }

    /// How many messages one pull request asks for.
    fn batch(&self) -> usize {
        usize::try_from(self.max_ack_pending())
            .unwrap_or(usize::MAX)
            .clamp(1, 128)
    }

    /// The configuration of partition `p`'s consumer of `kind`.
    pub fn consumer_config(
        &self,
        subjects: &Subjects,
        kind: Kind,
        p: u32,
    ) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(kind.consumer_name(p)),
            description: Some(kind.description(p)),
            filter_subject: kind.filter(subjects, p),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait(),
            // As the single consumers: only restarts, lost acks and changes of owner deliver
            // again; the max-deliveries advisory records the dead letter.
            max_deliver: self.nats.max_deliver,
            max_ack_pending: self.max_ack_pending(),
            deliver_policy: consumer::DeliverPolicy::All,
            priority_policy: consumer::PriorityPolicy::PinnedClient,
            priority_groups: vec![GROUP.to_owned()],
            priority_timeout: self.lease,
            ..Default::default()
        }
    }

    /// The `_IN` stream as the cluster wants it: [`streams::stream_config`] plus the transform
    /// that appends the partition ([`Subjects::in_partition_transform`]). The stream's subjects
    /// are all 5-token ones, so the transform's source `P.*.*.*.*` takes every one of them.
    pub fn in_stream_config(&self, subjects: &Subjects) -> stream::Config {
        let (source, destination) = subjects.in_partition_transform(self.partitions);
        stream::Config {
            subject_transform: Some(stream::SubjectTransform {
                source,
                destination,
            }),
            ..streams::stream_config(
                subjects.in_stream(),
                subjects.in_stream_subjects(),
                &self.nats,
                true,
            )
        }
    }
}

fn err(what: impl Into<String>, e: impl std::fmt::Display) -> SetupError {
    SetupError {
        what: what.into(),
        reason: e.to_string(),
    }
}

/// Checks that the server can carry a cluster (nats-server ≥ 2.11).
///
/// # Errors
/// A sentence naming the server's version and what is missing.
pub async fn check_server_version(client: &async_nats::Client) -> Result<(), String> {
    check_version(&client.server_info().version)
}

/// [`check_server_version`] of a version string as the server's INFO gives it.
pub fn check_version(version: &str) -> Result<(), String> {
    match natsd::parse_version(version) {
        Some(v) if natsd::is_new_enough(v, MIN_SERVER) => Ok(()),
        Some(_) => Err(format!(
            "nats-server {version} is too old for a cluster: pinned-client priority groups and \
             subject-transform partitioning need {}.{} or newer",
            MIN_SERVER.0, MIN_SERVER.1
        )),
        None => Err(format!(
            "cannot tell the version of the nats-server ({version:?}); a cluster needs {}.{} or \
             newer for pinned-client priority groups and subject-transform partitioning",
            MIN_SERVER.0, MIN_SERVER.1
        )),
    }
}

/// Sets up both streams for a cluster: `_IN` with the partition transform and the
/// `2 × partitions` pinned-client consumers, the legacy consumers narrowed or deleted (see the
/// module docs for the order, which loses no message), and `_OUT` as
/// [`streams::ensure_streams`] makes it. Idempotent; every member runs it at start. Returns the
/// `_IN` stream's info.
pub async fn ensure_partitioned(
    js: &jetstream::Context,
    subjects: &Subjects,
    setup: &Setup,
) -> Result<stream::Info, SetupError> {
    let want = setup.in_stream_config(subjects);
    let name = want.name.clone();
    let existing = match js.get_stream(&name).await {
        Ok(mut s) => Some(
            s.info()
                .await
                .map_err(|e| err(format!("stream {name} info"), e))?
                .clone(),
        ),
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            None
        }
        Err(e) => return Err(err(format!("get stream {name}"), e)),
    };
    match &existing {
        // New: partitioned from its first message, with limits retention until its consumers
        // are there (an interest stream drops a message no consumer wants).
        None => {
            tracing::info!(stream = %name, "Creating stream (partitioned)");
            js.create_stream(stream::Config {
                retention: stream::RetentionPolicy::Limits,
                ..want.clone()
            })
            .await
            .map_err(|e| err(format!("create stream {name}"), e))?;
        }
        // Not yet partitioned: the legacy consumers take what is published until the transform
        // is set.
        Some(info) if info.config.subject_transform.is_none() => {
            tracing::info!(stream = %name, partitions = setup.partitions,
                "Switching the stream to the partitioned layout");
            streams::ensure_cec_up_consumer(js, subjects, &setup.nats).await?;
            ensure_legacy_tim(js, subjects, &setup.nats, true).await?;
        }
        Some(_) => ensure_legacy_tim(js, subjects, &setup.nats, false).await?,
    }
    let in_stream = js
        .get_stream_no_info(&name)
        .await
        .map_err(|e| err(format!("get stream {name}"), e))?;
    for kind in Kind::ALL {
        for p in 0..setup.partitions {
            in_stream
                .create_consumer(setup.consumer_config(subjects, kind, p))
                .await
                .map_err(|e| err(format!("consumer {}", kind.consumer_name(p)), e))?;
        }
    }
    let info = streams::ensure_stream(js, want).await?;
    remove_idle_leftovers(&in_stream, setup).await?;
    streams::ensure_stream(
        js,
        streams::stream_config(
            subjects.out_stream(),
            subjects.out_stream_subjects(),
            &setup.nats,
            false,
        ),
    )
    .await?;
    Ok(info)
}

/// The legacy Tencent consumer with its filter narrowed to the 5-token subjects (what was stored
/// before the transform): created when `create`, else only updated if it exists.
async fn ensure_legacy_tim(
    js: &jetstream::Context,
    subjects: &Subjects,
    cfg: &NatsConfig,
    create: bool,
) -> Result<(), SetupError> {
    let name = subjects.in_stream();
    let in_stream = js
        .get_stream_no_info(&name)
        .await
        .map_err(|e| err(format!("get stream {name}"), e))?;
    let have = match in_stream.consumer_info(TIM_CONSUMER).await {
        Ok(info) => Some(info.config),
        Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => None,
        Err(e) => return Err(err(format!("consumer {TIM_CONSUMER} info"), e)),
    };
    let narrow = format!("{}.tim.*.*.*", subjects.prefix());
    match have {
        Some(c) if c.filter_subject == narrow => Ok(()),
        None if !create => Ok(()),
        _ => {
            let want = consumer::pull::Config {
                durable_name: Some(TIM_CONSUMER.to_owned()),
                description: Some(
                    "ccrelay: messages and stream chunks to Tencent IM (before partitioning)"
                        .to_owned(),
                ),
                filter_subject: narrow,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: cfg.ack_wait,
                max_deliver: cfg.max_deliver,
                max_ack_pending: cfg.max_ack_pending,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            };
            in_stream
                .create_consumer(want)
                .await
                .map(|_| ())
                .map_err(|e| err(format!("consumer {TIM_CONSUMER}"), e))
        }
    }
}

/// Deletes the consumers the partitioned layout no longer needs when they hold nothing: the
/// legacy ones (the transform is set, so nothing new reaches them) and those of partitions at or
/// beyond the partition count. One that still holds messages is left (the legacy ones are
/// drained by [`Follower`]), with a warning for the others.
async fn remove_idle_leftovers(
    in_stream: &jetstream::stream::Stream<()>,
    setup: &Setup,
) -> Result<(), SetupError> {
    let mut names = in_stream.consumer_names();
    let mut leftovers = Vec::new();
    while let Some(name) = names.next().await {
        let name = name.map_err(|e| err("list consumers", e))?;
        let legacy = Kind::ALL.iter().any(|k| k.legacy_consumer() == name);
        let beyond = Kind::ALL
            .iter()
            .filter_map(|k| k.partition_of_name(&name))
            .any(|p| p >= setup.partitions);
        if legacy || beyond {
            leftovers.push((name, legacy));
        }
    }
    for (name, legacy) in leftovers {
        let info = match in_stream.consumer_info(&name).await {
            Ok(info) => info,
            Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => continue,
            Err(e) => return Err(err(format!("consumer {name} info"), e)),
        };
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            tracing::info!(consumer = %name, "Deleting a consumer the partitioned layout does not use");
            delete_consumer(in_stream, &name).await?;
        } else if legacy {
            tracing::info!(consumer = %name, pending = info.num_pending + info.num_ack_pending as u64,
                "Messages stored before partitioning wait on the single consumer; the owner of \
                 partition 0 drains it");
        } else {
            tracing::warn!(consumer = %name, pending = info.num_pending + info.num_ack_pending as u64,
                partitions = setup.partitions,
                "A consumer of a partition beyond cluster.partitions still holds messages; they \
                 are not consumed");
        }
    }
    Ok(())
}

async fn delete_consumer(
    in_stream: &jetstream::stream::Stream<()>,
    name: &str,
) -> Result<(), SetupError> {
    match in_stream.delete_consumer(name).await {
        Ok(_) => Ok(()),
        Err(e) if is_consumer_not_found(&e) => Ok(()),
        Err(e) => Err(err(format!("delete consumer {name}"), e)),
    }
}

fn is_consumer_not_found(e: &jetstream::stream::ConsumerError) -> bool {
    matches!(e.kind(), jetstream::stream::ConsumerErrorKind::JetStream(ref j)
        if j.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND)
}

/// Messages stored before partitioning that the legacy consumer of `kind` still holds (pending
/// delivery or unacknowledged); `None` once that consumer is gone.
pub async fn legacy_pending(
    js: &jetstream::Context,
    subjects: &Subjects,
    kind: Kind,
) -> Result<Option<u64>, SetupError> {
    let name = subjects.in_stream();
    let in_stream = js
        .get_stream_no_info(&name)
        .await
        .map_err(|e| err(format!("get stream {name}"), e))?;
    match in_stream.consumer_info(kind.legacy_consumer()).await {
        Ok(info) => Ok(Some(
            info.num_pending + u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX),
        )),
        Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(format!("consumer {} info", kind.legacy_consumer()), e)),
    }
}

/// Releases the pin of partition `p`'s consumer of `kind`, so that the next pull request without
/// a pin id — the new owner's — takes it. Releasing a consumer nobody is pinned to is fine.
pub async fn unpin(
    js: &jetstream::Context,
    subjects: &Subjects,
    kind: Kind,
    p: u32,
) -> Result<(), SetupError> {
    let name = subjects.in_stream();
    let consumer = kind.consumer_name(p);
    js.get_stream_no_info(&name)
        .await
        .map_err(|e| err(format!("get stream {name}"), e))?
        .unpin_consumer(&consumer, GROUP)
        .await
        .map_err(|e| err(format!("unpin consumer {consumer}"), e))
}

/// What a [`Follower`] hands every consumed message to.
type Dispatch = Arc<dyn Fn(jetstream::Message) + Send + Sync>;

/// Pulls the partition consumers of one [`Kind`] for the partitions this instance owns (see the
/// module docs). [`Follower::run`] until cancelled; [`Follower::pulling`] says which partitions
/// still have a pull loop (those being stopped included).
pub struct Follower {
    js: jetstream::Context,
    subjects: Subjects,
    setup: Setup,
    kind: Kind,
    pulling: watch::Sender<BTreeSet<u32>>,
}

/// A pull loop: of a partition consumer, or of the legacy consumer (counted as partition 0's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    Legacy,
    Partition(u32),
}

impl Slot {
    fn partition(self) -> u32 {
        match self {
            Slot::Legacy => 0,
            Slot::Partition(p) => p,
        }
    }
}

/// How a pull loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Told to stop (or cancelled).
    Stopped,
    /// The legacy consumer is drained and deleted, or was gone.
    LegacyGone,
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    pub fn new(js: jetstream::Context, subjects: Subjects, setup: Setup, kind: Kind) -> Self {
        let (pulling, _) = watch::channel(BTreeSet::new());
        Follower {
            js,
            subjects,
            setup,
            kind,
            pulling,
        }
    }

    /// The partitions that have a pull loop running, stopping ones included: a partition that
    /// left the owned set is out of this set once its loop has ended, and no message of it is
    /// dispatched after that. The legacy consumer's drain counts as partition 0.
    pub fn pulling(&self) -> watch::Receiver<BTreeSet<u32>> {
        self.pulling.subscribe()
    }

    /// Pulls the consumers of the partitions in `owned` as it changes, handing every message to
    /// `dispatch` (which must not block), until `cancel`; then stops every loop as when a
    /// partition is lost, and returns once they have all ended.
    ///
    /// A message's partition is its subject's [`Subjects::partition_token`]; a message without
    /// one comes from the legacy consumer's drain, which is partition 0's work. `dispatch` may
    /// receive messages of a partition that has just left `owned` (see the module docs): gate
    /// them, and hand back a refused one with a negative acknowledgement without delay.
    pub async fn run<F>(
        self,
        mut owned: watch::Receiver<BTreeSet<u32>>,
        cancel: CancellationToken,
        dispatch: F,
    ) where
        F: Fn(jetstream::Message) + Send + Sync + 'static,
    {
        let dispatch: Dispatch = Arc::new(dispatch);
        let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(Slot, Ended)>();
        let mut running: BTreeMap<Slot, Running> = BTreeMap::new();
        // Whether the legacy consumer of this kind may still exist; checked until it is gone.
        let mut legacy = true;
        let mut legacy_check = tokio::time::interval(Duration::from_secs(1));
        legacy_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watching = true;
        loop {
            let want: BTreeSet<u32> = if cancel.is_cancelled() {
                BTreeSet::new()
            } else {
                owned.borrow_and_update().clone()
            };
            if legacy && !running.contains_key(&Slot::Legacy) && !cancel.is_cancelled() {
                match legacy_pending(&self.js, &self.subjects, self.kind).await {
                    Ok(None) => legacy = false,
                    Ok(Some(_)) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "Cannot tell whether the single consumer is drained")
                    }
                }
            }
            // What should run: the legacy drain alone while the legacy consumer exists (on the
            // owner of partition 0), else the owned partitions.
            let mut should: BTreeSet<Slot> = BTreeSet::new();
            if legacy {
                if want.contains(&0) {
                    should.insert(Slot::Legacy);
                }
            } else {
                should.extend(want.iter().map(|&p| Slot::Partition(p)));
            }
            for (slot, r) in &running {
                if !should.contains(slot) && !r.stop.is_cancelled() {
                    tracing::debug!(kind = ?self.kind, ?slot, "Stopping a pull loop");
                    r.stop.cancel();
                }
            }
            for &slot in &should {
                // A loop still stopping ends first (its last messages are dispatched before a
                // new loop's); its end brings us back here.
                if running.contains_key(&slot) {
                    continue;
                }
                let stop = CancellationToken::new();
                let puller = Puller {
                    js: self.js.clone(),
                    subjects: self.subjects.clone(),
                    setup: self.setup.clone(),
                    kind: self.kind,
                    slot,
                    dispatch: dispatch.clone(),
                };
                let ended = ended_tx.clone();
                let token = stop.clone();
                let task = tokio::spawn(async move {
                    let how = puller.run(token).await;
                    let _ = ended.send((slot, how));
                });
                running.insert(slot, Running { stop, task });
            }
            let now: BTreeSet<u32> = running.keys().map(|s| s.partition()).collect();
            self.pulling.send_if_modified(|have| {
                let changed = *have != now;
                *have = now;
                changed
            });
            if cancel.is_cancelled() && running.is_empty() {
                return;
            }
            tokio::select! {
                _ = cancel.cancelled(), if !cancel.is_cancelled() => {}
                changed = owned.changed(), if watching && !cancel.is_cancelled() => {
                    if changed.is_err() {
                        // The owner of the set is gone: keep what runs until cancelled.
                        watching = false;
                    }
                }
                Some((slot, how)) = ended_rx.recv() => {
                    if let Some(r) = running.remove(&slot) {
                        let _ = r.task.await;
                    }
                    if how == Ended::LegacyGone {
                        legacy = false;
                    }
                }
                _ = legacy_check.tick(),
                    if legacy && !running.contains_key(&Slot::Legacy) && !cancel.is_cancelled() => {}
            }
        }
    }
}

/// One pull loop.
struct Puller {
    js: jetstream::Context,
    subjects: Subjects,
    setup: Setup,
    kind: Kind,
    slot: Slot,
    dispatch: Dispatch,
}

/// A pull request as the server reads it (`CONSUMER.MSG.NEXT`).
#[derive(Serialize)]
struct NextRequest<'a> {
    batch: usize,
    #[serde(with = "nanos")]
    expires: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    /// The pin id the server gave this loop, to keep the pin.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

mod nanos {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// How one pull request ended.
enum Request {
    /// Answered (batch full, expired, pin moved, …): the next one may be sent.
    Done,
    /// The consumer is not there (or not as it should be): set it up again.
    Missing(String),
    /// The subscription ended (the client is closed).
    Closed,
}

/// How long after its expiry a pull request's end is waited for before it is taken as lost
/// (a reconnection, a server restart).
const LOST_AFTER: Duration = Duration::from_secs(2);

impl Puller {
    fn consumer(&self) -> String {
        match self.slot {
            Slot::Legacy => self.kind.legacy_consumer().to_owned(),
            Slot::Partition(p) => self.kind.consumer_name(p),
        }
    }

    async fn run(self, stop: CancellationToken) -> Ended {
        let consumer = self.consumer();
        if let Slot::Partition(p) = self.slot {
            // The database gave us the partition: take the pin from whoever holds it.
            if let Err(e) = unpin(&self.js, &self.subjects, self.kind, p).await {
                tracing::warn!(consumer = %consumer, error = %e, "Cannot unpin the consumer; its pin moves when the holder's expires");
            }
        }
        tracing::info!(consumer = %consumer, "Pulling");
        let mut delay = Duration::from_millis(200);
        loop {
            if stop.is_cancelled() {
                return Ended::Stopped;
            }
            match self.pull(&consumer, &stop).await {
                Ok(how) => return how,
                Err(why) => {
                    tracing::warn!(consumer = %consumer, error = %why, retry_in = ?delay, "Pull loop failed; retrying");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return Ended::Stopped,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
            if let Slot::Partition(p) = self.slot {
                let stream = self.subjects.in_stream();
                let made = async {
                    self.js
                        .get_stream_no_info(&stream)
                        .await
                        .map_err(|e| err(format!("get stream {stream}"), e))?
                        .create_consumer(self.setup.consumer_config(&self.subjects, self.kind, p))
                        .await
                        .map_err(|e| err(format!("consumer {consumer}"), e))
                }
                .await;
                if let Err(e) = made {
                    tracing::warn!(error = %e, "Cannot set up the consumer again");
                }
            }
        }
    }

    /// Sends pull requests one after the other, dispatching what they bring, until told to stop
    /// (the open request is then received to its end) or something fails.
    async fn pull(&self, consumer: &str, stop: &CancellationToken) -> Result<Ended, String> {
        let client = self.js.client();
        let inbox = client.new_inbox();
        let mut sub = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| format!("subscribe: {e}"))?;
        let api = format!("CONSUMER.MSG.NEXT.{}.{consumer}", self.subjects.in_stream());
        let group = matches!(self.slot, Slot::Partition(_)).then_some(GROUP);
        let batch = self.setup.batch();
        let expires = self.setup.expires();
        let mut pin: Option<String> = None;
        let result = loop {
            if stop.is_cancelled() {
                break Ok(Ended::Stopped);
            }
            let body = serde_json::to_vec(&NextRequest {
                batch,
                expires,
                group,
                id: pin.as_deref(),
            })
            .map_err(|e| format!("pull request: {e}"))?;
            self.js
                .send_request(
                    api.clone(),
                    async_nats::Request::new()
                        .payload(body.into())
                        .inbox(inbox.clone()),
                )
                .await
                .map_err(|e| format!("pull request: {e}"))?;
            let deadline = Instant::now() + expires + LOST_AFTER;
            let mut got = 0usize;
            let end = loop {
                let next = tokio::select! {
                    // On stop, no further request; the open one is received to its end, so
                    // that nothing the server sent us is left in flight (it would come back
                    // only after ack_wait, behind newer messages).
                    _ = stop.cancelled(), if !stop.is_cancelled() => continue,
                    next = tokio::time::timeout_at(deadline, sub.next()) => next,
                };
                let Ok(next) = next else {
                    tracing::debug!(consumer = %consumer, "A pull request got no end; taking it as lost");
                    break Request::Done;
                };
                let Some(msg) = next else {
                    break Request::Closed;
                };
                match msg.status {
                    None | Some(StatusCode::OK) => {
                        got += 1;
                        // Every message of a pinned consumer names the pin; keep ours.
                        if let Some(id) = msg
                            .headers
                            .as_ref()
                            .and_then(|h| h.get_last(async_nats::header::NATS_PIN_ID))
                            .map(HeaderValue::as_str)
                            && pin.as_deref() != Some(id)
                        {
                            pin = Some(id.to_owned());
                        }
                        let msg = jetstream::Message {
                            message: msg,
                            context: self.js.clone(),
                        };
                        (self.dispatch)(msg);
                        if got >= batch {
                            break Request::Done;
                        }
                    }
                    Some(StatusCode::IDLE_HEARTBEAT) => {}
                    Some(StatusCode::PIN_ID_MISMATCH) => {
                        // The pin moved (unpinned by a new owner, or expired): wait on standby.
                        tracing::debug!(consumer = %consumer, "Not pinned (any more)");
                        pin = None;
                        break Request::Done;
                    }
                    Some(StatusCode::NO_RESPONDERS) => {
                        break Request::Missing("no responders".into());
                    }
                    Some(status) => {
                        let what = msg.description.unwrap_or_default();
                        if what.contains("Consumer Deleted")
                            || what.contains("Invalid Priority Group")
                            || what.contains("Not a Pinned Client")
                        {
                            break Request::Missing(format!("{status} {what}"));
                        }
                        if status != StatusCode::TIMEOUT && status != StatusCode::REQUEST_TERMINATED
                        {
                            tracing::debug!(consumer = %consumer, %status, %what, "Pull request ended");
                        }
                        break Request::Done;
                    }
                }
            };
            match end {
                Request::Done => {}
                Request::Missing(why) => {
                    if self.slot == Slot::Legacy {
                        break Ok(Ended::LegacyGone);
                    }
                    break Err(format!("consumer {consumer}: {why}"));
                }
                Request::Closed => break Err("the subscription ended".into()),
            }
            // An empty answer: the legacy consumer may be drained.
            if self.slot == Slot::Legacy && got == 0 && !stop.is_cancelled() {
                match self.legacy_drained(consumer).await {
                    Ok(true) => break Ok(Ended::LegacyGone),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "Cannot tell whether the single consumer is drained")
                    }
                }
            }
        };
        let _ = sub.unsubscribe().await;
        result
    }

    /// Whether the legacy consumer holds nothing any more; then it is deleted.
    async fn legacy_drained(&self, consumer: &str) -> Result<bool, SetupError> {
        match legacy_pending(&self.js, &self.subjects, self.kind).await? {
            None => Ok(true),
            Some(0) => {
                let name = self.subjects.in_stream();
                let in_stream = self
                    .js
                    .get_stream_no_info(&name)
                    .await
                    .map_err(|e| err(format!("get stream {name}"), e))?;
                delete_consumer(&in_stream, consumer).await?;
                tracing::info!(consumer = %consumer, "Single consumer drained and deleted; the partitioned layout takes over");
                Ok(true)
            }
            Some(_) => Ok(false),
        }
    }
}

/// The partition of a consumed `_IN` message: its subject's partition token, or partition 0 for a
/// message without one (from the single consumer's drain).
pub fn partition_of(subjects: &Subjects, msg: &jetstream::Message) -> u32 {
    subjects.partition_token(msg.subject.as_str()).unwrap_or(0)
}

/// The work guard of `msg`'s partition, if this member may work on it now (the work gate,
/// [`crate::ownership::Ownership::begin`]).
pub fn gate(
    ownership: &crate::ownership::Ownership,
    subjects: &Subjects,
    msg: &jetstream::Message,
) -> Option<crate::ownership::Work> {
    ownership.begin(partition_of(subjects, msg))
}

/// Hands `msg` back to JetStream for the owner of its partition: once this member no longer
/// pulls that partition (else the server would give it straight back), without delay (so the
/// next owner gets it before anything newer of its subject); meanwhile the partition counts it
/// as work in flight, so a hand-back of the partition waits for it.
pub async fn refuse(
    ownership: &crate::ownership::Ownership,
    subjects: &Subjects,
    msg: &jetstream::Message,
) {
    let p = partition_of(subjects, msg);
    let _held = ownership.hold(p);
    ownership.unpulled(p, Duration::from_secs(5)).await;
    super::ack::settle(msg, super::ack::Disposition::HandBack).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_filters() {
        let s = Subjects::new("ccrelay");
        assert_eq!(consumer_name(Kind::CecUp, 17), "ccrelay-cec-up-17");
        assert_eq!(consumer_name(Kind::Tim, 0), "ccrelay-tim-0");
        assert_eq!(Kind::CecUp.filter(&s, 17), "ccrelay.cec.*.up.*.17");
        assert_eq!(Kind::Tim.filter(&s, 3), "ccrelay.tim.*.*.*.3");
        assert_eq!(Kind::CecUp.partition_of_name("ccrelay-cec-up-17"), Some(17));
        assert_eq!(Kind::CecUp.partition_of_name("ccrelay-cec-up"), None);
        assert_eq!(Kind::CecUp.partition_of_name("ccrelay-cec-up-x"), None);
        assert_eq!(Kind::Tim.partition_of_name("ccrelay-cec-up-1"), None);
        assert_eq!(Kind::Tim.partition_of_name("ccrelay-tim-63"), Some(63));
    }

    #[test]
    fn consumer_settings_follow_the_lease() {
        let nats = NatsConfig::default();
        let setup = Setup::new(nats.clone(), 64, Duration::from_secs(10));
        assert_eq!(setup.ack_wait(), Duration::from_secs(5));
        assert_eq!(setup.expires(), Duration::from_secs(1));
        assert_eq!(setup.max_ack_pending(), (nats.max_ack_pending + 63) / 64);
        let c = setup.consumer_config(&Subjects::new("p"), Kind::Tim, 9);
        assert_eq!(c.durable_name.as_deref(), Some("ccrelay-tim-9"));
        assert_eq!(c.filter_subject, "p.tim.*.*.*.9");
        assert_eq!(c.priority_policy, consumer::PriorityPolicy::PinnedClient);
        assert_eq!(c.priority_groups, vec![GROUP.to_owned()]);
        assert_eq!(c.priority_timeout, Duration::from_secs(10));
        assert_eq!(c.max_deliver, nats.max_deliver);
        let short = Setup::new(nats, 1, Duration::from_secs(2));
        assert_eq!(short.ack_wait(), Duration::from_secs(1));
        assert_eq!(short.expires(), Duration::from_millis(500));
        let cfg = short.in_stream_config(&Subjects::new("p"));
        let t = cfg.subject_transform.expect("a transform");
        assert_eq!(t.source, "p.*.*.*.*");
        assert!(t.destination.ends_with(".{{partition(1,2,4)}}"));
    }

    #[test]
    fn the_server_version_is_checked() {
        assert!(check_version("2.11.0").is_ok());
        assert!(check_version("2.12.8").is_ok());
        assert!(check_version("3.0.0").is_ok());
        assert_eq!(
            check_version("2.10.0").unwrap_err(),
            "nats-server 2.10.0 is too old for a cluster: pinned-client priority groups and \
             subject-transform partitioning need 2.11 or newer"
        );
        assert!(check_version("2.9.25").is_err());
        assert!(check_version("banana").unwrap_err().contains("cannot tell"));
    }
}
