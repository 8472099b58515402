//! JetStream's max-deliveries advisories of the `_IN` consumers: a message delivered
//! `nats.max_deliver` times without an ack is not delivered again. Each advisory is counted
//! (`ccrelay_max_deliveries_total`), logged, and the message — fetched from the stream by its
//! sequence — kept as a dead letter (source `max_deliveries`), so that it is not lost silently.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use serde::Deserialize;

use crate::relay::Relay;
use store::deadletter::{Received, Why};
use store::{dead_source, kind};

/// The fields of `io.nats.jetstream.advisory.v1.max_deliver` the relay reads.
#[derive(Debug, Deserialize)]
pub struct MaxDeliveries {
    pub stream: String,
    pub consumer: String,
    pub stream_seq: u64,
    pub deliveries: u64,
}

/// The subject of the advisories of every consumer of `stream`.
pub fn subject(stream: &str) -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.*")
}

/// Listens to the `_IN` stream's max-deliveries advisories until the relay is cancelled. (Started
/// by the CEC consumer's task, it covers the Tencent consumer too.)
pub async fn run(relay: Arc<Relay>, js: jetstream::Context) {
    let stream = relay.subjects.in_stream();
    let client = js.client();
    let mut sub = loop {
        // One member of a cluster takes each advisory (a queue group): its dead letter and event
        // are recorded once, by whichever member, as facts (not fenced).
        match client
            .queue_subscribe(subject(&stream), crate::rpc::QUEUE_GROUP.to_owned())
            .await
        {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot subscribe to JetStream's max-deliveries advisories; retrying");
                tokio::select! {
                    _ = relay.cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    loop {
        let msg = tokio::select! {
            _ = relay.cancel.cancelled() => return,
            m = sub.next() => match m {
                Some(m) => m,
                None => return,
            },
        };
        let Ok(adv) = serde_json::from_slice::<MaxDeliveries>(&msg.payload) else {
            tracing::warn!("Unreadable max-deliveries advisory");
            continue;
        };
        crate::instrument::max_deliveries(&adv.consumer);
        tracing::error!(stream = %adv.stream, consumer = %adv.consumer, stream_seq = adv.stream_seq,
            deliveries = adv.deliveries, "JetStream gave up delivering a message (max_deliver); it is kept as a dead letter");
        record(&relay, &js, &adv).await;
    }
}

/// The dead letter of the message an advisory names, if the stream still has it.
async fn record(relay: &Relay, js: &jetstream::Context, adv: &MaxDeliveries) {
    let fetched = match js.get_stream_no_info(&adv.stream).await {
        Ok(s) => s
            .get_raw_message(adv.stream_seq)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let m = match fetched {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(stream_seq = adv.stream_seq, error = %e, "Cannot fetch the message JetStream gave up on");
            return;
        }
    };
    let subjects = &relay.subjects;
    let (k, tenant, user) = match subjects.parse_cec(&m.subject) {
        Some((t, _, u)) => (kind::CEC, Some(t), Some(u)),
        None => match subjects.parse_tim(&m.subject) {
            Some((a, _, u)) => (kind::TIM, Some(a), Some(u)),
            None => (kind::CEC, None, None),
        },
    };
    let msg_id = format!(
        "{}-{}-{}",
        adv.consumer,
        adv.stream_seq,
        m.time.unix_timestamp()
    );
    let letter = Received {
        source: dead_source::MAX_DELIVERIES,
        msg_id: &msg_id,
        // As published: a retried dead letter goes back where its sender put it.
        subject: subjects.without_partition(&m.subject),
        payload: &m.payload,
        kind: k,
        tenant,
        user,
        message_id: None,
        received_at: m.time,
    }
    .letter(Why {
        reason: "max_deliveries",
        error: format!(
            "delivered {} times by consumer {} without an outcome",
            adv.deliveries, adv.consumer
        ),
        attempts: i64::try_from(adv.deliveries).unwrap_or(i64::MAX),
    });
    match store::deadletter::record(&relay.store, &letter).await {
        Ok(id) => {
            let commit = store::deadletter::event_commit(subjects, &letter, id);
            if let Err(e) = relay.store.commit_fact_retrying(commit).await {
                tracing::warn!(error = %e, "Cannot commit the error event of a max-deliveries dead letter");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "Cannot store the dead letter of a max-deliveries advisory")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jetstream_s_max_deliveries_advisory() {
        // As nats-server 2.10 sends it.
        let body = br#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"Ut2xUs2MNk8Q1vQp8L2nTh","timestamp":"2026-12-07T01:00:00.000000000Z","stream":"CCRELAY_IN","consumer":"ccrelay-cec-up","stream_seq":7,"deliveries":50,"domain":""}"#;
        let a: MaxDeliveries = serde_json::from_slice(body).unwrap();
        assert_eq!(
            (
                a.stream.as_str(),
                a.consumer.as_str(),
                a.stream_seq,
                a.deliveries
            ),
            ("CCRELAY_IN", "ccrelay-cec-up", 7, 50)
        );
        assert_eq!(
            subject("CCRELAY_IN"),
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.CCRELAY_IN.*"
        );
    }
}
