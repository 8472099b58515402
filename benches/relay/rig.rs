//! What every scenario starts and measures: a nats-server, the simulator (in this process, behind
//! a tap that timestamps polls and sends), the release `ccrelay` binary as a child process, CPU
//! and RSS read from `/proc`, and percentiles.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use natsd::{self, LocalNatsServer, NatsServerOptions};
use sim::{Endpoint, SimConfig, Simulator};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The tenant name the relay gives the simulator.
pub const TENANT: &str = "bench";
/// The relay's subject prefix (its default).
pub const PREFIX: &str = "ccrelay";

/// Locks a mutex, ignoring poisoning (a panicked holder leaves plain counters behind).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts a nats-server ≥ 2.11 (found, or installed into `target/test-deps`) on a free port: a
/// relay on PostgreSQL is a cluster member, which needs 2.11.
pub async fn start_nats() -> Result<LocalNatsServer> {
    let deps = target_dir().join("test-deps");
    let binary = tokio::task::spawn_blocking(move || devkit::ensure_nats_server((2, 11), &deps))
        .await?
        .context("nats-server >= 2.11")?;
    LocalNatsServer::start(&binary, NatsServerOptions::default())
        .await
        .with_context(|| format!("starting {}", binary.display()))
}

/// `target/` of this build (the bench binary lives in `target/release/deps/`).
pub fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target")
}

/// What the tap in front of the simulator records.
#[derive(Default)]
pub struct Taps {
    /// Whether poll gaps and send receipts are being recorded.
    recording: AtomicBool,
    /// receiverId → instant of its last poll; gaps between consecutive polls of one user.
    polls: Mutex<(HashMap<String, Instant>, Vec<Duration>)>,
    /// messageId → instant the simulator received its send.
    sends: Mutex<HashMap<String, Instant>>,
    /// Robot stream chunks (S4) as `send_stream_msg` calls carried them.
    pub chunks: Mutex<ChunkTap>,
}

/// What S4 reads off the `send_stream_msg` calls: each chunk's text is `<index>@<unix µs at
/// publish>;`, so the delay from its publish to its receipt here needs no shared map.
#[derive(Default)]
pub struct ChunkTap {
    /// Calls seen.
    pub calls: u64,
    /// (chunk index, publish → receipt) of every chunk carried.
    pub delays: Vec<(u32, Duration)>,
    /// `To_Account` → the last chunk index it received.
    pub last: HashMap<String, u32>,
    /// Chunks that arrived out of order or twice (must stay 0).
    pub out_of_order: u64,
}

impl ChunkTap {
    fn record(&mut self, to: &str, text: &str, now_us: u64) {
        self.calls += 1;
        for token in text.split(';').filter(|t| !t.is_empty()) {
            let Some((idx, at)) = token.split_once('@') else {
                continue;
            };
            let (Ok(idx), Ok(at)) = (idx.parse::<u32>(), at.parse::<u64>()) else {
                continue;
            };
            let expected = self.last.get(to).map_or(0, |l| l + 1);
            if idx != expected {
                self.out_of_order += 1;
            }
            self.last.insert(to.to_owned(), idx);
            self.delays
                .push((idx, Duration::from_micros(now_us.saturating_sub(at))));
        }
    }
}

/// Microseconds since the Unix epoch (the wall clock both sides of S4 share).
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Taps {
    /// Starts recording afresh (previous gaps and receipts forgotten).
    pub fn start(&self) {
        let mut polls = lock(&self.polls);
        polls.0.clear();
        polls.1.clear();
        lock(&self.sends).clear();
        *lock(&self.chunks) = ChunkTap::default();
        self.recording.store(true, Ordering::SeqCst);
    }

    /// Stops recording; returns the poll gaps recorded.
    pub fn stop(&self) -> Vec<Duration> {
        self.recording.store(false, Ordering::SeqCst);
        std::mem::take(&mut lock(&self.polls).1)
    }

    /// When the send carrying `message_id` reached the simulator, if it has.
    pub fn send_received(&self, message_id: &str) -> Option<Instant> {
        lock(&self.sends).get(message_id).copied()
    }

    fn poll(&self, user: &str, at: Instant) {
        let mut polls = lock(&self.polls);
        let (last, gaps) = &mut *polls;
        if let Some(prev) = last.insert(user.to_owned(), at) {
            gaps.push(at.duration_since(prev));
        }
    }
}

async fn tap(State(taps): State<Arc<Taps>>, req: Request, next: Next) -> Response {
    if !taps.recording.load(Ordering::Relaxed) {
        return next.run(req).await;
    }
    let now = Instant::now();
    let path = req.uri().path();
    if path.ends_with("/ccmessaging/poll") {
        let user = req.uri().query().and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "receiverId")
                .map(|(_, v)| v.into_owned())
        });
        if let Some(user) = user {
            taps.poll(&user, now);
        }
        next.run(req).await
    } else if path.ends_with("/ccmessaging/send") {
        let (parts, body) = req.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, 16 * 1024 * 1024).await else {
            return next
                .run(Request::from_parts(parts, axum::body::Body::empty()))
                .await;
        };
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
            && let Some(id) = v.get("messageId").and_then(|m| m.as_str())
        {
            lock(&taps.sends).entry(id.to_owned()).or_insert(now);
        }
        next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
            .await
    } else if path.ends_with("/send_stream_msg") {
        let now_us = unix_us();
        let (parts, body) = req.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, 16 * 1024 * 1024).await else {
            return next
                .run(Request::from_parts(parts, axum::body::Body::empty()))
                .await;
        };
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            let to = v.get("To_Account").and_then(|m| m.as_str()).unwrap_or("");
            let text = v.get("Chunk").and_then(|m| m.as_str()).unwrap_or("");
            lock(&taps.chunks).record(to, text, now_us);
        }
        next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
            .await
    } else {
        next.run(req).await
    }
}

/// The simulator serving on `127.0.0.1:<free port>` behind the tap; stops when dropped.
pub struct Sim {
    pub sim: Simulator,
    pub taps: Arc<Taps>,
    pub base_url: String,
    shutdown: CancellationToken,
}

impl Sim {
    pub async fn start() -> Result<Sim> {
        let cfg = SimConfig {
            // The bench's messages and calls would otherwise pile up in the poll and call logs.
            poll_log_capacity: 0,
            call_log_capacity: 0,
            ..SimConfig::default()
        };
        let sim = Simulator::new(cfg);
        let taps = Arc::new(Taps::default());
        let router = sim
            .router()
            .layer(middleware::from_fn_with_state(taps.clone(), tap));
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                eprintln!("simulator stopped: {e}");
            }
        });
        Ok(Sim {
            sim,
            taps,
            base_url,
            shutdown,
        })
    }

    /// Calls of `ep` the simulator has answered so far.
    pub fn calls(&self, ep: Endpoint) -> u64 {
        self.sim.stats().calls(ep)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The release `ccrelay` binary running `run` on a generated configuration. Killed when dropped.
pub struct Relay {
    child: Child,
    pub log: PathBuf,
}

/// What [`Relay::start`] writes into the configuration.
pub struct RelayOptions<'a> {
    pub dir: &'a Path,
    pub store_url: &'a str,
    pub nats_url: &'a str,
    pub sim_url: &'a str,
    pub poll_interval: Duration,
    /// The relay's runtime worker threads (`TOKIO_WORKER_THREADS`); `None`: tokio's default, one
    /// per core.
    pub workers: Option<usize>,
}

impl Relay {
    pub fn start(o: &RelayOptions<'_>) -> Result<Relay> {
        Self::start_with(o, "", "")
    }

    /// [`Self::start`] with `nats_extra` appended to `[nats]` and `extra` (more sections, such
    /// as a `[[tim]]` app) to the end of the configuration.
    pub fn start_with(o: &RelayOptions<'_>, nats_extra: &str, extra: &str) -> Result<Relay> {
        let sc = SimConfig::default();
        let config = o.dir.join("ccrelay.toml");
        let retention = crate::retention::prepare(o.store_url)?;
        std::fs::write(
            &config,
            format!(
                r#"[store]
url = "{store}"
{store_retention}
[nats]
url = "{nats}"
embedded = false
{nats_retention}
{nats_extra}
[http]
listen = "127.0.0.1:0"
[[cec]]
name = "{TENANT}"
base_url = "{sim}"
app_key = "{ak}"
app_secret = "{secret}"
channel_config_id = "{ch}"
poll_interval = "{poll}ms"
idle_timeout = "1h"
max_sessions = 1000000
{extra}
"#,
                store = o.store_url,
                store_retention = retention.store,
                nats_retention = retention.nats,
                nats = o.nats_url,
                sim = o.sim_url,
                ak = sc.app_key,
                secret = sc.app_secret,
                ch = sc.channel_config_id,
                poll = o.poll_interval.as_millis(),
            ),
        )?;
        let log = o.dir.join("relay.log");
        let child = Command::new(env!("CARGO_BIN_EXE_ccrelay"))
            .args(["run", "--config"])
            .arg(&config)
            // The run's directory holds its poll journal (with PostgreSQL, the working directory).
            .current_dir(o.dir)
            .env("RUST_LOG", retention.log)
            .envs(o.workers.map(|n| ("TOKIO_WORKER_THREADS", n.to_string())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting target/release/ccrelay")?;
        Ok(Relay { child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the relay has created its streams; fails if it exits first.
    pub async fn wait_ready(&mut self, js: &async_nats::jetstream::Context) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while js
            .get_stream(format!("{}_OUT", PREFIX.to_uppercase()))
            .await
            .is_err()
        {
            if let Some(status) = self.child.try_wait()? {
                bail!("the relay exited ({status}): {}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("the relay never created its streams: {}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        text.get(start..).unwrap_or_default().to_owned()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`, 100 on Linux).
fn clk_tck() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU time (user + system) the process has used, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("/proc/<pid>/stat: no ')'")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let tick = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .context("/proc/<pid>/stat: short")?
            .parse::<f64>()?)
    };
    let ticks = tick(11)? + tick(12)?;
    Ok(Duration::from_secs_f64(ticks / clk_tck()))
}

/// Resident set size in KiB, from `VmRSS` in `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("/proc/<pid>/status: no VmRSS")
}

/// CPU used by a set of processes between [`CpuMeter::start`] and [`CpuMeter::stop`].
pub struct CpuMeter {
    pids: Vec<(&'static str, u32, Duration)>,
    at: Instant,
}

/// CPU used by each process over a window, and the window's length.
pub struct CpuSplit {
    pub wall: Duration,
    pub by: Vec<(&'static str, Duration)>,
}

impl CpuSplit {
    pub fn of(&self, name: &str) -> Duration {
        self.by
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(Duration::ZERO, |(_, d)| *d)
    }

    /// `name`'s CPU as a percentage of one core.
    pub fn pct(&self, name: &str) -> f64 {
        100.0 * self.of(name).as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }

    /// `relay 85% · sim 40% · nats 12%` (of one core).
    pub fn summary(&self) -> String {
        self.by
            .iter()
            .map(|(n, _)| format!("{n} {:.0}%", self.pct(n)))
            .collect::<Vec<_>>()
            .join(" · ")
    }
}

impl CpuMeter {
    pub fn start(pids: &[(&'static str, u32)]) -> Result<CpuMeter> {
        let pids = pids
            .iter()
            .map(|(n, p)| Ok((*n, *p, cpu_time(*p)?)))
            .collect::<Result<_>>()?;
        Ok(CpuMeter {
            pids,
            at: Instant::now(),
        })
    }

    /// The CPU each process used since [`CpuMeter::start`]. A process that exited meanwhile (a
    /// PostgreSQL backend whose connection closed) counts nothing: its last readings are gone
    /// with it, a slight undercount of its side.
    pub fn stop(&self) -> Result<CpuSplit> {
        let wall = self.at.elapsed();
        let by = self
            .pids
            .iter()
            .map(|(n, p, t0)| (*n, cpu_time(*p).unwrap_or(*t0).saturating_sub(*t0)))
            .collect();
        Ok(CpuSplit { wall, by })
    }
}

/// The `q` quantile (0–1) of `v` (sorted here), nearest rank; `None` if empty.
pub fn quantile<T: Ord + Copy>(v: &mut [T], q: f64) -> Option<T> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v.get(rank - 1).copied()
}

/// Polls `check` every 50 ms until it holds, or fails after `timeout` saying `what`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes `payloads` (subject, body) to JetStream with at most `in_flight` unacknowledged.
pub async fn publish_all(
    js: &async_nats::jetstream::Context,
    payloads: impl IntoIterator<Item = (String, String)>,
    in_flight: usize,
) -> Result<()> {
    let mut acks = std::collections::VecDeque::new();
    for (subject, body) in payloads {
        acks.push_back(js.publish(subject, body.into()).await?);
        if acks.len() >= in_flight
            && let Some(ack) = acks.pop_front()
        {
            ack.await?;
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

/// Opens `n` sessions through the relay (a CONNECT per user `<prefix><i>` on `_IN`) and waits
/// until the simulator has seen every CONNECT send.
pub async fn open_sessions(
    js: &async_nats::jetstream::Context,
    sim: &Sim,
    prefix: &str,
    n: usize,
) -> Result<()> {
    let sends0 = sim.calls(Endpoint::Send);
    publish_all(
        js,
        (0..n).map(|i| {
            (
                format!("{PREFIX}.cec.{TENANT}.up.{prefix}{i}"),
                r#"{"controlType":"CONNECT"}"#.to_owned(),
            )
        }),
        1024,
    )
    .await?;
    let timeout = Duration::from_secs(60 + n as u64 / 50);
    wait_until(timeout, "every CONNECT to reach the simulator", || async {
        Ok(sim.calls(Endpoint::Send) >= sends0 + n as u64)
    })
    .await
}

/// Messages in the relay's `_OUT` stream.
pub async fn out_messages(js: &async_nats::jetstream::Context) -> Result<u64> {
    let mut stream = js
        .get_stream(format!("{}_OUT", PREFIX.to_uppercase()))
        .await?;
    Ok(stream.info().await?.state.messages)
}

/// Waits until the `_OUT` stream has stopped growing for `quiet`; returns its message count.
pub async fn out_settled(js: &async_nats::jetstream::Context, quiet: Duration) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = out_messages(js).await?;
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = out_messages(js).await?;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return Ok(now);
        }
        if Instant::now() > deadline {
            bail!("_OUT never settled");
        }
    }
}

/// A bench baseline running as a child process (this binary, a hidden subcommand), so that its
/// CPU is measured apart from the simulator's. It prints `ready` once set up. Killed when dropped.
pub struct BaselineProcess {
    child: Child,
}

impl BaselineProcess {
    pub async fn spawn(args: &[String]) -> Result<BaselineProcess> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("child stdout")?;
        let ready = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut line = String::new();
            std::io::BufReader::new(stdout).read_line(&mut line).ok();
            line
        })
        .await?;
        if ready.trim() != "ready" {
            bail!("baseline {args:?} did not start (said {ready:?})");
        }
        Ok(BaselineProcess { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BaselineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CEC client on the simulator, with the relay's own HTTP client settings
/// ([`cec::CecClient::http_client`]).
pub fn cec_client(sim_url: &str) -> Result<cec::CecClient> {
    let sc = SimConfig::default();
    let tenant = config::CecTenant {
        name: TENANT.to_owned(),
        base_url: sim_url.parse()?,
        app_key: sc.app_key,
        app_secret: Some(sc.app_secret.into()),
        app_secret_file: None,
        channel_config_id: sc.channel_config_id,
        locale: "zh".to_owned(),
        poll_interval: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(3600),
        request_timeout: Duration::from_secs(10),
        token_expire: Duration::from_secs(3600),
        max_sessions: 1_000_000,
        max_file_bytes: 20 * 1024 * 1024,
    };
    Ok(cec::CecClient::new(cec::CecClient::http_client()?, tenant))
}
