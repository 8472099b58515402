//! Publishing to JetStream with `Nats-Msg-Id` and waiting for the PubAcks, pipelined: a batch is
//! sent in one go and its acks awaited together. Each message's result is typed
//! ([`PublishFailure`]), so the outbox can tell NATS being away from a message of its own.

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use bytes::Bytes;

/// One message to publish.
pub struct Outgoing<'a> {
    pub msg_id: &'a str,
    pub subject: &'a str,
    pub payload: Bytes,
}

/// Why one message was not stored: whose fault it is ([`FailureKind`], what the outbox acts on)
/// and what NATS said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PublishFailure {
    pub kind: FailureKind,
    pub message: String,
}

/// Whose fault a failed publish is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// NATS or the stream is away, slow or reconnecting: every message fails alike.
    Transient,
    /// No stream took the subject (no responders): the stream is missing, or — when other
    /// messages of the batch were stored — this subject is not one of its subjects.
    NoStream,
    /// The message itself was refused: over the server's `max_payload`, or JetStream answered
    /// with an error for it.
    Own,
}

/// Publishes a batch; returns, per message in order, whether JetStream stored it (or had already
/// stored it: a duplicate PubAck counts as stored).
pub async fn publish_batch(
    js: &jetstream::Context,
    batch: Vec<Outgoing<'_>>,
) -> Vec<Result<(), PublishFailure>> {
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
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| {
                let kind = match e.kind() {
                    PublishErrorKind::TimedOut
                    | PublishErrorKind::BrokenPipe
                    | PublishErrorKind::MaxAckPending => FailureKind::Transient,
                    PublishErrorKind::StreamNotFound => FailureKind::NoStream,
                    // An answer of JetStream's about this message.
                    _ => FailureKind::Own,
                };
                PublishFailure {
                    kind,
                    message: e.to_string(),
                }
            }),
            Err(e) => Err(PublishFailure {
                kind: if e.kind() == PublishErrorKind::MaxPayloadExceeded {
                    FailureKind::Own
                } else {
                    FailureKind::Transient
                },
                message: e.to_string(),
            }),
        });
    }
    out
}
