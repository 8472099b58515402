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
//! Around them: [`privacy`] (retention's background deletions, a customer's erasure), [`bus`]
//! (the NATS connection, streams, JetStream publisher), [`http`]
//! (`/healthz`, `/readyz`, `/metrics`, the Tencent callbacks), [`instrument`] (metrics),
//! [`systemd`] (readiness and watchdog), [`instance`] (the relay's name for the upstreams and
//! its SQLite lock's description), and [`app`], which wires every task under one cancellation
//! token and task tracker.
//!
//! The modules depend on each other in one direction only; each uses only those listed before it:
//! 1. [`instance`], [`instrument`], [`systemd`], [`ownership`] (the work gate of a cluster's
//!    partitions), [`bus`] (with [`bus::ack`]: what becomes of a consumed message);
//! 2. [`outbox`], [`privacy`] (retention and erasure);
//! 3. [`relay`]: what the CEC tasks share (store, subjects, tenants' clients, the outbox signal,
//!    the store's health, the cancellation token);
//! 4. [`media`]; 5. [`poller`], then [`cluster`] (membership: adopts sessions into the poller);
//! 6. [`uplink`] (given the poller's handle);
//! 7. [`timlink`] (its own narrow [`timlink::Sink`]: it uses nothing of [`relay`]);
//! 8. [`rpc`] (its `send` is the uplink's handler); 9. [`http`]; 10. [`app`].
//!
//! Tasks take what they use: the outbox its store, subjects and signal; the Tencent link a
//! [`timlink::Sink`]; the poller the poll journal; the uplink and RPC the poller's handle
//! ([`uplink::Uplink`]). The CEC tasks share [`relay::Relay`] for the store's commit path and
//! the tenants' clients.

pub mod app;
pub mod bus;
pub mod cluster;
pub mod http;
pub mod instance;
pub mod instrument;
pub mod media;
pub mod outbox;
pub mod ownership;
pub mod poller;
pub mod privacy;
pub mod relay;
pub mod rpc;
pub mod systemd;
pub mod timlink;
pub mod uplink;
