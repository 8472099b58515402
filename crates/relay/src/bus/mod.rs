//! NATS: the connection ([`connect`]), stream and consumer set-up ([`streams`]), the JetStream
//! publisher ([`publisher`]), what becomes of a consumed message ([`ack`]), the per-subject
//! serial workers that handle consumed messages in order ([`serial`]) and, on a cluster, the
//! partitioned layout of `_IN` with a pinned-client consumer per partition ([`partitioned`]).
//! The subjects and payloads are the `contract` crate's. Knows nothing of HTTP or of the
//! upstream APIs.

pub mod ack;
pub mod connect;
pub mod partitioned;
pub mod publisher;
pub mod serial;
pub mod streams;
