//! # ccrelay
//!
//! A daemon that lets a company's services talk to its contact center over NATS instead of HTTP.
//! It relays Huawei Cloud CEC's web channel (and Tencent Cloud IM) to NATS JetStream subjects, polls
//! every active CEC session, and keeps the whole conversation in SQLite or PostgreSQL. The public
//! contract — subjects, payloads, configuration, tables — is in the README and `docs/`.
//!
//! This package is the `ccrelay` binary: its command line ([`cli`]), the operator's commands over
//! the store ([`admin`]) and the demo ([`demo`]). The engine and everything it uses are the
//! workspace's crates under `crates/`; the README's "Layout" section follows a message through
//! them.

pub mod admin;
pub mod cli;
pub mod demo;
pub mod telemetry;
