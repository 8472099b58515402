//! A fresh nats-server per test: its own free port and temporary JetStream store.

use std::path::PathBuf;
use std::sync::OnceLock;

use natsd::{self, LocalNatsServer, NatsServerOptions};

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
            devkit::ensure_nats_server(MIN_NATS_VERSION, &test_deps_dir())
                .map_err(|e| e.to_string())
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

/// A nats-server started with a configuration file (accounts, users, permissions), on a free
/// port of 127.0.0.1, with JetStream in a temporary directory. Killed when dropped.
pub struct ConfiguredNats {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl ConfiguredNats {
    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for ConfiguredNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts nats-server with `conf` (listen address and JetStream store are added before it) and
/// the environment `env` (for `$VARIABLE`s in `conf`), and waits until it greets clients.
pub async fn nats_with_config(conf: &str, env: &[(&str, &str)]) -> ConfiguredNats {
    init_tracing();
    let binary = tokio::task::spawn_blocking(nats_server_binary)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    // A unique name, so that the readiness check knows it reached this server and not another
    // that took the port first.
    let name = format!("ccrelay-conf-{:016x}", rand::random::<u64>());
    let path = dir.path().join("nats-server.conf");
    let store = dir.path().join("js");
    std::fs::write(
        &path,
        format!(
            "host: 127.0.0.1\nport: {port}\nserver_name: {name}\njetstream {{ store_dir: {:?} }}\n{conf}\n",
            store.display().to_string()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("nats-server.log")).unwrap();
    let child = std::process::Command::new(&binary)
        .arg("-c")
        .arg(&path)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut server = ConfiguredNats {
        child,
        port,
        _dir: dir,
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if natsd::nats_reachable(&server.url(), std::time::Duration::from_millis(500)).await {
            return server;
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            let log = std::fs::read_to_string(server._dir.path().join("nats-server.log"))
                .unwrap_or_default();
            panic!("nats-server exited ({status}) with this configuration:\n{log}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nats-server did not start in 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Whether the server on 127.0.0.1:`port` greets with an `INFO` naming `name`.
async fn greets_as(port: u16, name: &str) -> bool {
    use tokio::io::AsyncBufReadExt;
    let greeting = async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let mut line = String::new();
        tokio::io::BufReader::new(stream)
            .read_line(&mut line)
            .await
            .ok()?;
        Some(line)
    };
    matches!(
        tokio::time::timeout(std::time::Duration::from_millis(500), greeting).await,
        Ok(Some(line)) if line.starts_with("INFO ") && line.contains(&format!("\"server_name\":\"{name}\""))
    )
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
