//! Uplink: customer messages from `P.cec.<t>.up.<u>` to CEC.
//!
//! The durable pull consumer delivers messages in stream order. Each goes to the worker of its
//! (tenant, user): one worker per user with work, so one user's messages are sent upstream in the
//! order they were published while different users proceed in parallel (at most
//! `relay.max_concurrent_sends` at once *per tenant*, so that a tenant whose upstream is failing —
//! its messages held by retries — cannot take the permits of the others). A worker exits when its
//! queue is empty.
//!
//! A message is acknowledged only after its outcome is committed ([`handle`]); while it is being
//! worked on (retries included) the worker tells JetStream it is in progress, so it is not
//! redelivered behind its own back. What cannot be done now (the database away) is tried again
//! in place, not handed back to JetStream, so that a message's deliveries count restarts only and
//! the consumer's `max_deliver` can be bounded (`nats.max_deliver`). A message that cannot be
//! stored at all is terminated, its dead letter recorded ([`store::deadletter`]). On shutdown,
//! unfinished messages are left unacknowledged (negative-acknowledged when possible) and come
//! back at the next start.

pub mod advisory;
pub mod handle;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::bus::ack::Disposition;
use crate::bus::serial::{self, BySubject};
use crate::bus::{ack, partitioned, streams};
use crate::poller::PollerHandle;
use crate::relay::Relay;
use handle::Delivery;

/// What the uplink's handlers use: the relay's shared parts, and the poller's handle, to hand it
/// the sessions a CONNECT opened and tell it of the others' activity.
pub struct Uplink {
    pub relay: Arc<Relay>,
    pub poller: PollerHandle,
}

/// Runs the CEC uplink consumer until the relay is cancelled.
pub async fn run(ctx: Arc<Uplink>, js: jetstream::Context, tracker: TaskTracker) {
    let relay = ctx.relay.clone();
    let cancel = relay.cancel.clone();
    let cfg = relay.config.nats.clone();
    let ownership = relay.ownership.clone();
    let setup = partitioned::Setup::new(
        cfg.clone(),
        ownership.partitions(),
        relay.config.cluster.lease,
    );
    let Some(stream_info) = streams::until_ok("Setting up the NATS streams", &cancel, || async {
        if ownership.is_cluster() {
            partitioned::ensure_partitioned(&js, &relay.subjects, &setup).await
        } else {
            streams::ensure_streams(&js, &relay.subjects, &cfg).await
        }
    })
    .await
    else {
        return;
    };
    let stamp = ack::stream_stamp(stream_info.created);
    tracker.spawn(advisory::run(relay.clone(), js.clone()));
    let workers = Workers {
        ctx,
        stamp: Arc::from(stamp.as_str()),
        serial: BySubject::new(tracker.clone()),
        permits: Arc::new(Mutex::new(HashMap::new())),
        // Within the consumer's ack wait, which a cluster shortens (`Setup::ack_wait`).
        heartbeat: if ownership.is_cluster() {
            setup.ack_wait() / 3
        } else {
            cfg.ack_wait / 3
        },
    };
    if ownership.is_cluster() {
        // A member pulls the consumers of its partitions only (docs/HA.md).
        relay
            .streams_ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let follower = partitioned::Follower::new(
            js.clone(),
            relay.subjects.clone(),
            setup,
            partitioned::Kind::CecUp,
        );
        ownership.add_puller(follower.pulling());
        tracing::info!("Consuming the uplink messages of this member's partitions");
        follower
            .run(ownership.consuming(), cancel.clone(), move |msg| {
                workers.dispatch(msg)
            })
            .await;
        return;
    }
    while !cancel.is_cancelled() {
        let Some(consumer) = streams::until_ok("Setting up the uplink consumer", &cancel, || {
            streams::ensure_cec_up_consumer(&js, &relay.subjects, &cfg)
        })
        .await
        else {
            return;
        };
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot pull uplink messages; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        relay
            .streams_ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            consumer = streams::CEC_UP_CONSUMER,
            "Consuming uplink messages"
        );
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                next = messages.next() => match next {
                    Some(Ok(msg)) => workers.dispatch(msg),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "Uplink consumer error");
                        // Transient errors (missed heartbeats while NATS restarts) are followed
                        // by more messages; a broken stream ends and is recreated below.
                    }
                    None => break,
                }
            }
        }
    }
}

/// The per-user workers.
#[derive(Clone)]
struct Workers {
    ctx: Arc<Uplink>,
    stamp: Arc<str>,
    /// One worker per subject (user), so a user's messages go upstream in order.
    serial: BySubject,
    /// Send permits per tenant (by subject token), made on first use.
    permits: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    heartbeat: Duration,
}

impl Workers {
    fn dispatch(&self, msg: jetstream::Message) {
        let this = self.clone();
        self.serial.dispatch(msg, move |queue| this.work(queue));
    }

    async fn work(self, mut queue: serial::Queue) {
        while let Some(msg) = queue.pop() {
            if self.ctx.relay.cancel.is_cancelled() {
                // Hand it back for the next run (a member: for the next owner, see `refuse`).
                if self.ctx.relay.ownership.is_cluster() {
                    self.refuse(&msg).await;
                } else {
                    let _ = msg
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                }
                continue;
            }
            // In a cluster: only while the message's partition is this member's.
            let Some(_work) = self.gate(&msg) else {
                self.refuse(&msg).await;
                continue;
            };
            let Ok(_permit) = self.permits_for(queue.subject()).acquire_owned().await else {
                return;
            };
            self.process(&msg).await;
        }
    }

    /// [`partitioned::refuse`]: back to its partition's owner.
    async fn refuse(&self, msg: &jetstream::Message) {
        partitioned::refuse(&self.ctx.relay.ownership, &self.ctx.relay.subjects, msg).await;
    }

    /// [`partitioned::gate`]: the work guard of `msg`'s partition, if this member may work on it.
    fn gate(&self, msg: &jetstream::Message) -> Option<crate::ownership::Work> {
        partitioned::gate(&self.ctx.relay.ownership, &self.ctx.relay.subjects, msg)
    }

    /// The send permits of the tenant `subject` names.
    fn permits_for(&self, subject: &str) -> Arc<Semaphore> {
        // Configured tenants only: a subject naming an unknown one shares one pool (it is refused
        // at once anyway), so made-up names cannot grow the map.
        let tenant = self
            .ctx
            .relay
            .subjects
            .parse_cec(subject)
            .map(|(t, _, _)| t)
            .filter(|t| self.ctx.relay.tenant(t).is_some())
            .unwrap_or("");
        let mut permits = self.permits.lock().unwrap_or_else(|p| p.into_inner());
        permits
            .entry(tenant.to_owned())
            .or_insert_with(|| {
                Arc::new(Semaphore::new(
                    self.ctx.relay.config.relay.max_concurrent_sends,
                ))
            })
            .clone()
    }

    async fn process(&self, msg: &jetstream::Message) {
        // A JetStream message always has its metadata; should it not, a fresh random id keeps the
        // derived ids unique (losing only redelivery de-duplication for that message).
        let (derived_id, seq, received_at) = match msg.info() {
            Ok(i) => {
                if i.delivered > 1 {
                    crate::instrument::redelivered(streams::CEC_UP_CONSUMER);
                }
                (
                    format!("s{}-{}", self.stamp, i.stream_sequence),
                    i.stream_sequence,
                    i.published,
                )
            }
            Err(_) => (
                uuid::Uuid::now_v7().simple().to_string(),
                0,
                time::OffsetDateTime::now_utc(),
            ),
        };
        let heartbeat = self.heartbeat.max(Duration::from_millis(500));
        let disposition = ack::work_beating(msg, heartbeat, &self.ctx.relay.cancel, || {
            handle::handle(
                &self.ctx,
                Delivery {
                    // As published (without a partitioned `_IN`'s partition token).
                    subject: self
                        .ctx
                        .relay
                        .subjects
                        .without_partition(msg.subject.as_str()),
                    payload: &msg.payload,
                    derived_id: derived_id.clone(),
                    stream_seq: seq,
                    received_at,
                },
            )
        })
        .await;
        match disposition {
            // Fenced: the partition moved before this member heard of it.
            Disposition::HandBack => self.refuse(msg).await,
            d => ack::settle(msg, d).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_fit_the_message_id_limit() {
        let id = format!(
            "s{}-{}",
            crate::bus::ack::base36(u32::MAX as u64 * 4),
            u64::MAX
        );
        assert!(id.len() <= 32, "{id} is {} long", id.len());
        assert!(validate::check_message_id(&id).is_ok());
    }
}
