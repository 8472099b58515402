//! Huawei Cloud CEC web channel: wire types exactly as documented ([`wire`]), the token caches
//! ([`auth`]), the HTTP client of one tenant ([`client`]), typed errors ([`error`]) and the
//! meaning of `send` result codes ([`outcome`]). Knows nothing of NATS or of the store.

pub mod auth;
pub mod client;
#[cfg(test)]
mod client_tests;
pub mod error;
pub mod outcome;
pub mod wire;
pub mod wire_ops;
#[cfg(test)]
mod wire_props;
#[cfg(test)]
mod wire_samples;

pub use client::CecClient;
pub use error::{CecError, Endpoint};
