//! Retention and erasure (docs/PRIVACY.md): the relay's part of what the store deletes
//! ([`store::privacy`]).
//!
//! - [`retention`]: the background task that deletes, every `store.retention_interval`, what is
//!   older than `store.retention`, a few hundred rows per transaction with pauses between them,
//!   on one member of a cluster (the owner of partition 0, as the outbox publisher). The streams
//!   and the files bucket need no task: their own `max_age` (at most the retention, checked when
//!   the configuration loads) deletes what is older.
//! - [`forget`]: the erasure of one customer everywhere the relay keeps them — every table, the
//!   files in the object store, their messages in `_IN` and `_OUT` — with its audit record. Used by
//!   `ccrelay forget` and the `forget` RPC.

pub mod forget;
pub mod retention;
