//! NATS: the connection ([`connect`]), stream and consumer set-up ([`streams`]), the JetStream
//! publisher ([`publisher`]), what becomes of a consumed message ([`ack`]) and the per-subject
//! serial workers that handle consumed messages in order ([`serial`]). The subjects and
//! payloads are the `contract` crate's. Knows nothing of HTTP or of the upstream APIs.

pub mod ack;
pub mod connect;
pub mod publisher;
pub mod serial;
pub mod streams;
