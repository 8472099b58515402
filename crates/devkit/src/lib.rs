//! Development tooling: what `ccrelay demo`, the tests and the benchmarks need to stand up their
//! dependencies on a machine that may have none of them. [`nats`] installs a nats-server (running
//! one is [`natsd`]'s); [`pg_provision`] finds or provisions a PostgreSQL server; [`duckdb`]
//! installs the DuckDB shell the export tests read files back with. The relay's `run` command
//! never reaches this crate.

pub mod duckdb;
pub mod nats;
pub mod pg_provision;

pub use nats::{InstallError, ensure_nats_server, install_nats_server};
