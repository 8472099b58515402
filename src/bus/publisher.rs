//! Publishing to JetStream with `Nats-Msg-Id` and waiting for the PubAcks, pipelined: a batch is
//! sent in one go and its acks awaited together.

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;

/// One message to publish.
pub struct Outgoing<'a> {
    pub msg_id: &'a str,
    pub subject: &'a str,
    pub payload: Bytes,
}

/// Publishes a batch; returns, per message in order, whether JetStream stored it (or had already
/// stored it: a duplicate PubAck counts as stored).
pub async fn publish_batch(
    js: &jetstream::Context,
    batch: Vec<Outgoing<'_>>,
) -> Vec<Result<(), String>> {
    let mut pending = Vec::with_capacity(batch.len());
    for m in batch {
        let publish = PublishMessage::build()
            .payload(m.payload)
            .message_id(m.msg_id);
        pending.push(js.send_publish(m.subject.to_owned(), publish).await);
    }
    let mut out = Vec::with_capacity(pending.len());
    for p in pending {
        out.push(match p {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        });
    }
    out
}
