//! NATS: the contract's subjects and payloads, stream set-up, the JetStream publisher and the
//! durable consumer of uplink messages. Knows nothing of HTTP or of the upstream APIs.

pub mod payload;
pub mod subjects;
