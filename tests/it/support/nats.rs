//! A fresh nats-server per test: its own free port and temporary JetStream store.

use std::path::PathBuf;
use std::sync::OnceLock;

use ccrelay::natsd::{self, LocalNatsServer, NatsServerOptions};

use super::{init_tracing, test_deps_dir};

/// The tests rely on JetStream features of nats-server 2.10 (Debian's 2.9 is too old).
pub const MIN_NATS_VERSION: (u32, u32) = (2, 10);

/// A nats-server ≥ [`MIN_NATS_VERSION`], installed into [`test_deps_dir`] on first use.
/// Looked up once per test binary.
///
/// Blocking: call it from `spawn_blocking` in async tests.
///
/// # Panics
/// If none can be found or installed; the message says what to install.
pub fn nats_server_binary() -> PathBuf {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            natsd::ensure_nats_server(MIN_NATS_VERSION, &test_deps_dir()).map_err(|e| e.to_string())
        })
        .clone()
        .unwrap_or_else(|e| panic!("the tests need nats-server ≥ 2.10: {e}"))
}

/// Starts a fresh nats-server with JetStream on a free port and a temporary store, and waits
/// until JetStream answers. Tests may `stop()`, `kill()` and `restart()` it; dropping it kills it
/// and removes the store.
pub async fn nats() -> LocalNatsServer {
    init_tracing();
    let binary = tokio::task::spawn_blocking(nats_server_binary)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    LocalNatsServer::start(&binary, NatsServerOptions::default())
        .await
        .unwrap_or_else(|e| panic!("cannot start nats-server {}: {e}", binary.display()))
}

/// [`nats`], requiring clients to log in as `user` with `password`.
pub async fn nats_with_password(user: &str, password: &str) -> LocalNatsServer {
    init_tracing();
    let binary = tokio::task::spawn_blocking(nats_server_binary)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let options = NatsServerOptions {
        user_password: Some((user.to_owned(), password.to_owned())),
        ..Default::default()
    };
    LocalNatsServer::start(&binary, options)
        .await
        .unwrap_or_else(|e| panic!("cannot start nats-server {}: {e}", binary.display()))
}
