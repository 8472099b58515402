//! The public contract on NATS: the subjects ccrelay reads and writes ([`subjects`]) and the
//! payloads on them ([`payload`] for CEC, [`tim_payload`] for Tencent IM, [`summary`] for the
//! summary of a conversation). The AsyncAPI document
//! and JSON Schemas in `docs/` describe the same shapes, and a test checks them against these
//! types.
//!
//! It knows nothing of NATS connections, of the store, or of the upstream APIs' wire types: a
//! DownMessage carries the upstream message as a type parameter ([`payload::DownMessage`]).

pub mod partition;
pub mod payload;
pub mod subjects;
pub mod summary;
pub mod tim_payload;

pub use subjects::Subjects;
