//! Wiring: builds the store, the NATS connection, the clients and every task of a running relay,
//! all under one [`CancellationToken`] and [`TaskTracker`], and shuts them down in order.
//!
//! Shutdown (SIGTERM, Ctrl-C, or the caller's future) runs in stages, within
//! `relay.shutdown_timeout`:
//! 1. intake stops: no new polls, no new uplink messages; unstarted uplink messages are handed
//!    back to JetStream;
//! 2. in-flight polls and sends finish and commit;
//! 3. the outbox publishes what it holds, if NATS is there;
//! 4. the HTTP server stops.
//!
//! What is not done by the deadline stays in the store, the poll journal and JetStream, and is
//! picked up at the next start: nothing is lost by stopping early.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::outbox::OutboxSignal;
use crate::ownership::Ownership;
use crate::relay::{Relay, Tenant};
use crate::{bus, http, outbox, poller, timlink, uplink};
use cec::CecClient;
use config::Config;
use contract::Subjects;
use store::DynStore;

/// A running relay.
pub struct App {
    relay: Arc<Relay>,
    /// In a cluster: the membership task, stopped (and its partitions given back) after the
    /// intake has drained.
    membership: Option<(CancellationToken, TaskTracker)>,
    /// Closed once the polls in flight have finished.
    journal: Arc<poller::journal::Journal>,
    intake: TaskTracker,
    outbox_tracker: TaskTracker,
    outbox_cancel: CancellationToken,
    http_cancel: CancellationToken,
    http_tracker: TaskTracker,
    http_addr: SocketAddr,
    nats: async_nats::Client,
    /// The nats-server `nats.embedded` started: stopped after the relay's last publish.
    _local_nats: Option<natsd::LocalNatsServer>,
    /// A SQLite database's instance lock, held until the relay is gone (dropped last).
    _instance_lock: Option<store::InstanceLock>,
}

impl App {
    /// Starts everything; returns once the HTTP listener is bound and the tasks are spawned.
    pub async fn start(config: Config) -> anyhow::Result<App> {
        // Before anything records a metric.
        let _ = crate::instrument::handle();
        if config.cec.is_empty() && config.tim.is_empty() {
            tracing::warn!(
                "No [[cec]] tenant and no [[tim]] app configured: nothing to relay \
                 (`ccrelay demo --keep-running` serves the built-in simulator as tenant \"demo\")"
            );
        }
        // A second relay on a SQLite database stops here, before it starts anything.
        let instance_lock =
            store::instance_lock(&config.store.url, &crate::instance::holder(&config))?;
        let local_nats = if config.nats.embedded {
            local_nats(&config.nats, Box::new(installed_nats_server))
                .await
                .context("nats.embedded: starting a local nats-server")?
        } else {
            warn_if_unreachable(&config.nats.url).await;
            None
        };

        // Nothing is committed for publishing that the connected server cannot take.
        let publish_limit = store::PublishLimit::new(Subjects::new(config.nats.prefix.clone()));
        let cancel = CancellationToken::new();
        let outbox_signal = OutboxSignal::default();
        // On PostgreSQL every relay is a member of the cluster on that database (docs/HA.md).
        let member = is_postgres(&config.store.url).then(|| member_info(&config.cluster));
        let fencing = member
            .as_ref()
            .map(|m| store::cluster::Fencing::new(&m.id, config.cluster.partitions));
        let store = store::connect_with(
            &config.store.url,
            store::Options {
                limit: Some(publish_limit.clone()),
                cancel: cancel.clone(),
                on_outboxed: Some({
                    let signal = outbox_signal.clone();
                    Arc::new(move || signal.notify())
                }),
                fencing: fencing.clone(),
            },
        )
        .await
        .with_context(|| {
            format!(
                "opening the store {}",
                config::redact::database_url(&config.store.url)
            )
        })?;
        store.migrate().await.context("migrating the store")?;
        let leases = match &member {
            Some(m) => {
                let leases = store
                    .leases()
                    .context("the store keeps no cluster leases")?;
                leases
                    .init(config.cluster.partitions)
                    .await
                    .context("setting up the cluster")?;
                tracing::info!(member = %m.id, partitions = config.cluster.partitions,
                    lease = ?config.cluster.lease, "Joining the cluster on this database");
                Some(leases)
            }
            None => None,
        };
        let ownership = if member.is_some() {
            Ownership::cluster(config.cluster.partitions)
        } else {
            Ownership::single(config.cluster.partitions)
        };
        let (journal, mut journal_leftovers) = open_journal(&config, member.as_ref())?;

        let nats = bus::connect::connect(&config.nats, "ccrelay")
            .await
            .context("connecting to NATS")?;
        if member.is_some() {
            // The server's version is known once connected: a member waits a little for it.
            let _ = tokio::time::timeout(Duration::from_secs(10), nats.flush()).await;
            if nats.server_info().version.is_empty() {
                tracing::warn!(
                    "NATS is not reachable yet: its version (a cluster needs 2.11 or newer) is \
                     checked when the streams are set up"
                );
            } else {
                bus::partitioned::check_server_version(&nats)
                    .await
                    .map_err(anyhow::Error::msg)
                    .context(
                        "a cluster of relays (PostgreSQL store) needs nats-server 2.11 or newer",
                    )?;
            }
        }
        let client = nats.clone();
        publish_limit.follow(move || client.max_payload());
        let js = async_nats::jetstream::new(nats.clone());

        // Its User-Agent names this instance (its member id in a cluster, else `cluster.id`, else
        // the host name) to the upstreams.
        let http_client = CecClient::http_client_for(
            &member
                .as_ref()
                .map_or_else(|| crate::instance::name(&config), |m| m.id.clone()),
        )
        .context("building the HTTP client")?;
        let tenants = config
            .cec
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    Tenant {
                        name: t.name.as_str().into(),
                        client: CecClient::new(http_client.clone(), t.clone()),
                    },
                )
            })
            .collect();

        let listener = tokio::net::TcpListener::bind(&config.http.listen)
            .await
            .with_context(|| format!("binding http.listen {}", config.http.listen))?;
        let http_addr = listener.local_addr()?;

        let (poller_handle, poller_inbox) = poller::channel();
        let streams_ready = Arc::new(AtomicBool::new(false));
        let relay = Arc::new(Relay {
            subjects: Subjects::new(config.nats.prefix.clone()),
            config,
            store: store.clone(),
            tenants,
            outbox: outbox_signal,
            cancel: cancel.clone(),
            streams_ready: streams_ready.clone(),
            ownership: ownership.clone(),
            member: member.as_ref().map(|m| m.id.clone()),
        });
        let journal = Arc::new(journal);

        let intake = TaskTracker::new();
        // Tencent IM: one client per [[tim]] app on the shared HTTP client; its stream
        // schedulers run with the intake tasks.
        let sink = timlink::Sink {
            store: store.clone(),
            subjects: relay.subjects.clone(),
            cancel: cancel.clone(),
            budget: timlink::Budget::of(&relay.config.relay),
            ownership: ownership.clone(),
        };
        let tim = Arc::new(timlink::TimLink::new(
            &relay.config,
            sink,
            http_client.clone(),
            &intake,
        ));

        let http_cancel = CancellationToken::new();
        let http_tracker = TaskTracker::new();
        let outbox_health = outbox::OutboxHealth::default();
        let router = http::router(http::Health {
            store: store.clone(),
            nats: nats.clone(),
            streams_ready,
            outbox: outbox_health.clone(),
            ownership: ownership.clone(),
        })
        .merge(timlink::callback::router(tim.clone(), nats.clone()));
        {
            let c = http_cancel.clone();
            http_tracker.spawn(async move {
                if let Err(e) = http::serve(listener, router, c).await {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            });
        }

        let outbox_cancel = CancellationToken::new();
        let outbox_tracker = TaskTracker::new();
        outbox_tracker.spawn(outbox::run(
            store.clone(),
            js.clone(),
            relay.subjects.clone(),
            relay.outbox.clone(),
            outbox::Settings::of(&relay.config.relay),
            outbox_health,
            ownership.clone(),
            outbox_cancel.clone(),
        ));
        if let Some(leases) = &leases {
            // Other members' commits wake this one's outbox (when it is the publisher).
            let (leases, signal, c) = (leases.clone(), relay.outbox.clone(), outbox_cancel.clone());
            outbox_tracker
                .spawn(async move { leases.follow_outbox(c, move || signal.notify()).await });
        }

        // What an earlier run (or a member that died on this host) polled and may not have
        // committed, before polling resumes.
        for leftover in journal_leftovers.drain(..) {
            poller::replay(&relay, &journal, leftover).await;
        }
        intake.spawn(poller::run(
            relay.clone(),
            journal.clone(),
            poller_inbox,
            intake.clone(),
        ));
        intake.spawn(timlink::run(tim, js.clone(), intake.clone()));
        intake.spawn(crate::media::run(relay.clone(), js.clone(), intake.clone()));
        if let Some(settings) = crate::privacy::retention::Settings::of(&relay.config.store) {
            intake.spawn(crate::privacy::retention::run(
                store.clone(),
                ownership.clone(),
                settings,
                cancel.clone(),
            ));
        }
        let up = Arc::new(uplink::Uplink {
            relay: relay.clone(),
            poller: poller_handle.clone(),
        });
        intake.spawn(uplink::run(up.clone(), js, intake.clone()));
        intake.spawn(crate::rpc::run(up, nats.clone()));
        let membership = match (member, leases, fencing) {
            (Some(me), Some(leases), Some(fencing)) => {
                let (stop, tracker) = (CancellationToken::new(), TaskTracker::new());
                tracker.spawn(crate::cluster::run(
                    crate::cluster::Membership {
                        me,
                        leases,
                        lease: relay.config.cluster.lease,
                        fencing,
                        ownership: ownership.clone(),
                        last: Arc::default(),
                    },
                    poller_handle.clone(),
                    store.clone(),
                    stop.clone(),
                ));
                Some((stop, tracker))
            }
            // A relay on SQLite polls every open session; a member, those of its partitions
            // as it takes them.
            _ => {
                resume_sessions(&poller_handle, &store).await?;
                None
            }
        };

        tracing::info!(http = %http_addr, nats = %config::redact::nats_url(&relay.config.nats.url), prefix = %relay.subjects.prefix(),
            store = %config::redact::database_url(&relay.config.store.url), tenants = relay.tenants.len(), "ccrelay started");
        http_tracker.spawn(notify_systemd(relay.clone(), http_cancel.clone()));
        http_tracker.spawn(metrics_upkeep(http_cancel.clone()));
        Ok(App {
            relay,
            membership,
            journal,
            intake,
            outbox_tracker,
            outbox_cancel,
            http_cancel,
            http_tracker,
            http_addr,
            nats,
            _local_nats: local_nats,
            _instance_lock: instance_lock,
        })
    }

    pub fn relay(&self) -> &Arc<Relay> {
        &self.relay
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// Whether the streams and the uplink consumer are set up.
    pub fn streams_ready(&self) -> bool {
        self.relay.streams_ready.load(Ordering::Relaxed)
    }

    /// Runs until `shutdown` completes, then shuts down in stages (see the module docs). A second
    /// SIGTERM or Ctrl-C during the shutdown abandons it: [`Stopped::Forced`], and the caller
    /// exits at once. Nothing is lost that way either — what was not committed is redelivered or
    /// polled again, what was committed is published at the next start — it is only redone.
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()>) -> Stopped {
        shutdown.await;
        tokio::select! {
            _ = self.shutdown() => Stopped::Clean,
            _ = shutdown_signal() => {
                tracing::warn!("Second signal: exiting now; unfinished work is redone at the next start");
                Stopped::Forced
            }
        }
    }

    /// Stops everything within `relay.shutdown_timeout`.
    pub async fn shutdown(self) {
        let deadline = tokio::time::Instant::now() + self.relay.config.relay.shutdown_timeout;
        tracing::info!("Shutting down: stopping intake");
        crate::systemd::notify_or_log("STOPPING=1");
        self.relay.cancel.cancel();
        self.intake.close();
        if tokio::time::timeout_at(deadline, self.intake.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "In-flight work did not finish before the shutdown deadline; it will be redone at the next start"
            );
        }
        self.journal.close();
        self.outbox_cancel.cancel();
        self.outbox_tracker.close();
        if tokio::time::timeout_at(deadline, self.outbox_tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "The outbox was not emptied before the shutdown deadline; the rest is published at the next start"
            );
        }
        // Nothing of this member's partitions is in flight any more: hand them all back.
        if let Some((stop, tracker)) = self.membership {
            stop.cancel();
            tracker.close();
            tracker.wait().await;
        }
        self.http_cancel.cancel();
        self.http_tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.http_tracker.wait()).await;
        let _ = self.nats.flush().await;
        // Close the connection before a local server goes, so it does not try to reconnect.
        let _ = self.nats.drain().await;
        if let Some(mut n) = self._local_nats {
            n.stop().await;
        }
        tracing::info!("Shutdown complete");
    }
}

/// Tells systemd (`Type=notify`) `READY=1` once the streams and the consumers are set up (the
/// store was migrated before), then `WATCHDOG=1` every half `WatchdogSec` until `stop`.
async fn notify_systemd(relay: Arc<Relay>, stop: CancellationToken) {
    while !relay.streams_ready.load(Ordering::Relaxed) {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    match crate::systemd::notify("READY=1\nSTATUS=Relaying") {
        Ok(true) => tracing::info!("Told systemd the relay is ready"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "Cannot notify systemd"),
    }
    let Some(every) = crate::systemd::watchdog_interval() else {
        return;
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => crate::systemd::notify_or_log("WATCHDOG=1"),
        }
    }
}

/// Keeps the metrics' histograms bounded until `stop`.
async fn metrics_upkeep(stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => crate::instrument::upkeep(),
        }
    }
}

/// How [`App::run_until`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Stopped {
    /// Everything stopped within the deadline (or was left for the next start after it).
    Clean,
    /// A second signal cut the shutdown short: exit at once.
    Forced,
}

/// Where the embedded nats-server keeps its JetStream store, relative to the working directory.
pub const EMBEDDED_NATS_DIR: &str = "ccrelay-nats";

/// Where [`local_nats`] gets a nats-server binary: a blocking function, run on the blocking
/// pool. The relay's own is [`installed_nats_server`]; `ccrelay demo` passes one that may also
/// install (the `devkit` crate, which the relay does not depend on).
pub type FindBinary = Box<dyn FnOnce() -> anyhow::Result<std::path::PathBuf> + Send>;

/// `ccrelay run` with `nats.embedded`: a nats-server ≥ 2.9 already on the machine, never an
/// install.
pub fn installed_nats_server() -> anyhow::Result<std::path::PathBuf> {
    natsd::find_nats_server((2, 9)).context(
        "no nats-server ≥ 2.9 found (on PATH, in $CCRELAY_NATS_SERVER or ccrelay's cache); \
         `ccrelay run` never installs one",
    )
}

/// With a loopback `nats.url` that nobody answers, starts a local nats-server on that port (its
/// binary found by `find`). The server is tied to this process: it stops
/// when the returned handle is dropped, and when this process dies, even by SIGKILL
/// ([`natsd::LocalNatsServer`]).
pub async fn local_nats(
    cfg: &config::NatsConfig,
    find: FindBinary,
) -> anyhow::Result<Option<natsd::LocalNatsServer>> {
    let first = cfg
        .url
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let shown = config::redact::nats_url(&first);
    let parsed = url::Url::parse(&first).with_context(|| format!("nats.url {shown:?}"))?;
    let loopback = matches!(
        parsed.host_str(),
        Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
    );
    if !loopback || natsd::nats_reachable(&first, Duration::from_secs(1)).await {
        return Ok(None);
    }
    let port = parsed.port().unwrap_or(4222);
    tracing::info!(
        port,
        "No NATS server answers at {shown}: starting a local nats-server"
    );
    // The relay itself works with any JetStream server (2.9+).
    let binary = tokio::task::spawn_blocking(find)
        .await
        .context("looking for nats-server")??;
    let store_dir = std::path::PathBuf::from(EMBEDDED_NATS_DIR);
    let server = natsd::LocalNatsServer::start(
        &binary,
        natsd::NatsServerOptions {
            port,
            store_dir: Some(store_dir.clone()),
            ..Default::default()
        },
    )
    .await?;
    tracing::info!(binary = %binary.display(), store = %store_dir.display(), url = %server.url(), "Local nats-server started");
    Ok(Some(server))
}

/// Says in the log, once, when no NATS server answers at `url` at start-up: the relay keeps
/// trying (and keeps polling into its store), and never starts a server of its own.
async fn warn_if_unreachable(url: &str) {
    if !natsd::nats_reachable(url, Duration::from_secs(1)).await {
        tracing::warn!(
            nats = %config::redact::nats_url(url),
            "No NATS server answers at nats.url: the relay keeps trying to connect and stores what it \
             polls meanwhile; `ccrelay run` never starts a server of its own (`ccrelay demo` does)"
        );
    }
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres:") || url.starts_with("postgresql:")
}

/// Who this member is: `cluster.id`, else the host name and a random suffix (new at each
/// start, so two relays on one host never take each other for one).
fn member_info(cfg: &config::ClusterConfig) -> store::cluster::MemberInfo {
    let host = crate::cluster::host_name();
    let id = cfg.id.clone().unwrap_or_else(|| {
        let suffix: u32 = rand::random();
        let head: String = host.chars().take(64 - 7).collect();
        format!("{head}-{:06x}", suffix & 0xff_ffff)
    });
    store::cluster::MemberInfo {
        id,
        host,
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: store::now(),
    }
}

/// The poll journal and what earlier runs left in it. A member of a cluster has a journal of its
/// own (`<name>-<member>`, locked while in use) and also takes over the journals of members
/// that died on this host, so what a killed member polled is committed by the next to start.
fn open_journal(
    config: &Config,
    member: Option<&store::cluster::MemberInfo>,
) -> anyhow::Result<(poller::journal::Journal, Vec<poller::journal::Leftover>)> {
    use poller::journal::Journal;
    let Some((dir, name)) =
        poller::journal::location(&config.store.url, config.relay.journal_dir.as_deref())
    else {
        return Ok((Journal::disabled(), Vec::new()));
    };
    let what = || format!("opening the poll journal in {}", dir.display());
    match member {
        None => {
            let (journal, leftover) = Journal::open(&dir, &name).with_context(what)?;
            Ok((journal, vec![leftover]))
        }
        Some(m) => {
            let own = format!("{name}-{}", m.id);
            let (journal, leftover) = Journal::open_locked(&dir, &own).with_context(what)?;
            let mut leftovers = vec![leftover];
            leftovers.extend(Journal::orphans(&dir, &name, &own).with_context(what)?);
            Ok((journal, leftovers))
        }
    }
}

async fn resume_sessions(poller: &poller::PollerHandle, store: &DynStore) -> anyhow::Result<()> {
    let open = store
        .open_sessions()
        .await
        .context("reading open sessions")?;
    let n = open.len();
    for s in open {
        poller.add(s);
    }
    if n > 0 {
        tracing::info!(sessions = n, "Resumed polling of open sessions");
    }
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Received SIGINT"),
        _ = term => tracing::info!("Received SIGTERM"),
    }
}
