//! What becomes of a message a JetStream consumer delivered: [`Disposition`], what its handler
//! decides, and the acknowledgement that carries it out ([`settle`]). Shared by the CEC uplink
//! and the Tencent consumer, which know each other's handlers no more than this module knows
//! theirs.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use tokio_util::sync::CancellationToken;

/// What to tell JetStream about a delivered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Its outcome is committed.
    Ack,
    /// Not handled now (shutting down, database down): try it again after the delay.
    Retry(Duration),
    /// Cannot be handled ever (it cannot even be stored): never deliver it again. Its error
    /// event and dead letter are committed, as far as the database allowed.
    Term,
    /// Not this instance's work (in a cluster, its partition belongs to another member now):
    /// handed back at once, without delay, so JetStream redelivers it first — before the later
    /// messages of its subject — to the partition's owner.
    HandBack,
}

/// Acknowledges `msg` as `d` says: ack, nak with a delay, or term.
pub async fn settle(msg: &jetstream::Message, d: Disposition) {
    let sent = match d {
        Disposition::Ack => msg.ack().await,
        Disposition::Retry(delay) => msg.ack_with(AckKind::Nak(Some(delay))).await,
        Disposition::Term => msg.ack_with(AckKind::Term).await,
        Disposition::HandBack => msg.ack_with(AckKind::Nak(None)).await,
    };
    if let Err(e) = sent {
        // Lost acks are harmless: the redelivered message finds its outcome committed.
        tracing::debug!(error = %e, "Could not send the ack");
    }
}

/// Tells JetStream the message is still being worked on.
pub async fn progress(msg: &jetstream::Message) {
    if let Err(e) = msg.ack_with(AckKind::Progress).await {
        tracing::debug!(error = %e, "Could not extend the ack deadline");
    }
}

/// Runs `work` for `msg` until it gives a disposition other than [`Disposition::Retry`] or
/// `cancel` fires, telling JetStream every `heartbeat` that the message is in progress. What
/// cannot be done now (the database away) is tried again in place after its delay rather than
/// handed back to JetStream, so that a message's delivery count grows with restarts only.
pub async fn work_beating<F, Fut>(
    msg: &jetstream::Message,
    heartbeat: Duration,
    cancel: &CancellationToken,
    mut work: F,
) -> Disposition
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Disposition>,
{
    let mut beat = tokio::time::interval(heartbeat);
    beat.tick().await; // the first tick is immediate
    loop {
        let attempt = work();
        tokio::pin!(attempt);
        let d = loop {
            tokio::select! {
                d = &mut attempt => break d,
                _ = beat.tick() => progress(msg).await,
            }
        };
        let Disposition::Retry(delay) = d else {
            return d;
        };
        if cancel.is_cancelled() {
            return d;
        }
        let wait = tokio::time::sleep(delay);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                _ = cancel.cancelled() => break,
                _ = beat.tick() => progress(msg).await,
            }
        }
    }
}

/// Derived message ids carry the `_IN` stream's creation time in base 36, so that they never
/// repeat, even when the stream is deleted and recreated (its sequence restarts).
pub fn stream_stamp(created: time::OffsetDateTime) -> String {
    base36(created.unix_timestamp().max(0) as u64)
}

/// `n` in base 36, for compact derived ids.
pub fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_is_compact() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }
}
