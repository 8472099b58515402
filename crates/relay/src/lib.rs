//! The ccrelay engine: the tasks that move messages between NATS and the upstream contact
//! centers, and keep every step in the store.
//!
//! Downlink (contact center → NATS): [`poller`] polls every active CEC session, journals the
//! answer and commits its messages (with their outbox rows) through the store; [`media`] downloads
//! the files agents send into the NATS object store; [`timlink`]'s callback endpoint takes Tencent
//! IM's inbound messages; [`outbox`] publishes what was committed to JetStream.
//!
//! Uplink (NATS → contact center): [`uplink`] consumes customer messages and commands from `_IN`
//! and makes the CEC calls; [`timlink`] makes Tencent's Desk sends and robot streams under the
//! app's rate limit; [`rpc`] answers request-reply calls for the endpoints that are not messages.
//!
//! Around them: [`bus`] (the NATS connection, streams, JetStream publisher), [`http`]
//! (`/healthz`, `/readyz`, `/metrics`, the Tencent callbacks), [`instrument`] (metrics),
//! [`systemd`] (readiness and watchdog), and [`app`], which wires every task
//! under one cancellation token and task tracker.

pub mod app;
pub mod bus;
pub mod http;
pub mod instrument;
pub mod media;
pub mod outbox;
pub mod poller;
pub mod relay;
pub mod rpc;
pub mod systemd;
pub mod timlink;
pub mod uplink;
