//! NATS: the connection ([`connect`]), stream and consumer set-up ([`streams`]), the JetStream
//! publisher ([`publisher`]) and what becomes of a consumed message ([`ack`]). The subjects and
//! payloads are the `contract` crate's. Knows nothing of HTTP or of the upstream APIs.

pub mod ack;
pub mod connect;
pub mod publisher;
pub mod streams;
