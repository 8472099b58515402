//! NATS: the connection ([`connect`]), stream and consumer set-up ([`streams`]) and the JetStream
//! publisher ([`publisher`]). The subjects and payloads are the `contract` crate's. Knows nothing
//! of HTTP or of the upstream APIs.

pub mod connect;
pub mod publisher;
pub mod streams;
