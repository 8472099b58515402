//! # ccrelay
//!
//! A daemon that lets a company's services talk to its contact center over NATS instead of HTTP.
//! It relays Huawei Cloud CEC's web channel (and Tencent Cloud IM) to NATS JetStream subjects, polls
//! every active CEC session, and keeps the whole conversation in SQLite or PostgreSQL. The public
//! contract — subjects, payloads, configuration, tables — is in the README and `docs/`.
//!
//! # Layout
//! Data flows one way through the modules: upstream clients → poller / uplink → store + outbox →
//! bus.
//! - [`cec`]: the Huawei CEC web-channel client: wire types exactly as documented, token caches,
//!   typed errors with `is_retryable()`. Knows nothing of NATS.
//! - [`tim`]: the Tencent Cloud IM client (Desk `send_msg`, robot `send_stream_msg`, UserSig).
//! - [`uplink`]: turns an UpMessage from NATS into CEC calls and records the outcome.
//! - [`timlink`]: NATS ↔ Tencent IM: Desk sends, the robot stream scheduler under the app's rate
//!   limit, and the inbound callback endpoint.
//! - [`poller`]: schedules and runs the polls of every active session; journals and commits what
//!   comes back, and replays the journal at start-up.
//! - [`store`]: the store trait and its SQLite and PostgreSQL implementations; every step commits
//!   in one transaction, outbox rows included.
//! - [`media`]: downloads the files agents send into the NATS object store, then releases their
//!   held DownMessages.
//! - [`rpc`]: request-reply over core NATS for the CEC endpoints that are not messages.
//! - [`outbox`]: publishes committed outbox rows to JetStream and deletes them on PubAck.
//! - [`deadletter`]: what the relay gave up on (poison messages), kept with the reason.
//! - [`bus`]: subjects, payloads, stream set-up, the JetStream publisher and the durable consumer.
//! - [`instrument`]: the metrics, one named function each, served on `/metrics`.
//! - [`http`]: `/healthz`, `/readyz` (and the Tencent callbacks of [`timlink`]).
//! - [`natsd`]: finding, installing and running a local nats-server (the demo, tests), tied to
//!   the process that started it.
//! - [`systemd`]: `sd_notify` readiness, stopping and watchdog notifications.
//! - [`relay`]: the state every task shares.
//! - [`sim`]: the simulator of the upstream contact centers (`ccrelay simulate`).
//! - [`admin`]: the operator's commands over the store: sessions, transcript, export, replay.
//! - [`bounded`]: reading upstream answers up to a limit (both clients).
//! - [`config`], [`cli`], [`telemetry`], [`app`]: configuration, command line, logs, and the wiring of
//!   all tasks under one cancellation token and task tracker.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod bounded;
pub mod bus;
pub mod cec;
pub mod cli;
pub mod config;
pub mod deadletter;
pub mod demo;
pub mod http;
pub mod instrument;
pub mod media;
pub mod natsd;
pub mod outbox;
pub mod poller;
pub mod relay;
pub mod rpc;
pub mod sim;
pub mod store;
pub mod systemd;
pub mod telemetry;
pub mod tim;
pub mod timlink;
pub mod uplink;
