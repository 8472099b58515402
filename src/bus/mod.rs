//! NATS: the contract's subjects ([`subjects`]) and payloads ([`payload`]), the connection
//! ([`connect`]), stream and consumer set-up ([`streams`]) and the JetStream publisher
//! ([`publisher`]); the Tencent IM payloads are in [`tim_payload`]. Knows nothing of HTTP or of the upstream APIs.

pub mod connect;
pub mod payload;
pub mod publisher;
pub mod streams;
pub mod subjects;
pub mod tim_payload;

pub use subjects::Subjects;
