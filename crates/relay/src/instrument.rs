//! The relay's metrics, served on `/metrics` in the Prometheus text format. Every metric is
//! recorded through one named function here (as Vector's internal events), so the names, labels
//! and units live in one place and the code that records them reads as what happened.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `ccrelay_sessions_active` | gauge | `tenant` |
//! | `ccrelay_polls_total` | counter | `tenant`, `outcome` (`ok`, `error`) |
//! | `ccrelay_poll_seconds` | histogram | `tenant` |
//! | `ccrelay_poll_lag_seconds` | histogram | `tenant` (how late a poll started after its due time) |
//! | `ccrelay_messages_total` | counter | `kind` (`cec`, `tim`), `tenant` (tenant or app), `direction` (`up`, `down`, `in`) |
//! | `ccrelay_upstream_calls_total` | counter | `kind`, `tenant`, `endpoint` |
//! | `ccrelay_upstream_call_seconds` | histogram | `kind`, `endpoint` |
//! | `ccrelay_upstream_errors_total` | counter | `kind`, `tenant`, `endpoint`, `code` |
//! | `ccrelay_retries_total` | counter | `kind`, `what` |
//! | `ccrelay_rate_limit_waits_total` | counter | `app` |
//! | `ccrelay_rate_limit_wait_seconds` | histogram | `app` |
//! | `ccrelay_outbox_backlog` | gauge | |
//! | `ccrelay_outbox_oldest_seconds` | gauge | |
//! | `ccrelay_outbox_retrying` | gauge | (rows backing off after failures of their own) |
//! | `ccrelay_publish_failures_total` | counter | `reason` (`row`: a failure of the row's own) |
//! | `ccrelay_dead_letters` | gauge | (rows in `dead_letters`) |
//! | `ccrelay_dead_letters_total` | counter | `source`, `reason` |
//! | `ccrelay_max_deliveries_total` | counter | `consumer` |
//! | `ccrelay_published_total` | counter | |
//! | `ccrelay_publish_seconds` | histogram | (per batch) |
//! | `ccrelay_redeliveries_total` | counter | `consumer` |
//! | `ccrelay_store_commit_seconds` | histogram | |
//! | `ccrelay_store_errors_total` | counter | `retryable` |
//! | `ccrelay_store_batches_total` | counter | (transactions of group commit) |
//! | `ccrelay_store_writes_total` | counter | (writes in them; ÷ batches = mean batch size) |
//! | `ccrelay_callbacks_refused_total` | counter | `app` (empty for an unknown one), `reason` (`unsigned`, `sign`, `time`, `too_large`, `unknown_app`) |
//! | `ccrelay_rpc_refused_total` | counter | `tenant` (empty for relay-wide or unknown), `reason` (`reply_subject`, `busy`) |
//! | `ccrelay_store_away` | gauge | (1 while the database is unreachable or refuses writes: polling paused) |
//! | `ccrelay_poll_journal_errors_total` | counter | (poll answers the journal could not write) |
//! | `ccrelay_poll_journal_replayed_total` | counter | (messages committed from the journal at start-up) |
//! | `ccrelay_cluster_partitions_owned` | gauge | (partitions this member holds; docs/HA.md) |
//! | `ccrelay_cluster_members` | gauge | (live members, as the last lease tick saw them) |
//! | `ccrelay_cluster_takeovers_total` | counter | `kind` (`expired`: from a member whose lease ran out; `free`) |
//! | `ccrelay_cluster_lease_renewal_seconds` | histogram | (one lease tick's transaction) |
//! | `ccrelay_cluster_fenced_writes_total` | counter | (writes refused: their partition was another member's; recorded by the store) |
//! | `ccrelay_retention_deleted_total` | counter | `table` (rows retention deleted; summaries: free texts blanked; docs/PRIVACY.md) |
//! | `ccrelay_retention_passes_total` | counter | `outcome` (`done`, `failed`, `handed_over`) |
//! | `ccrelay_erasures_total` | counter | `outcome` (`done`, `incomplete`: customers erased by `forget`) |
//!
//! The recorder is process-wide: installed once ([`handle`]), shared by every relay of the
//! process (tests run several).
//!
//! Metrics recorded on every poll are not looked up by name and labels each time (that builds
//! label strings and hashes them per call): [`PollMetrics`] and the clients' `UpstreamCalls` (crate `upstream`) hold the
//! registered handles of one tenant, made on first use (after the recorder is installed).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Histogram buckets, in seconds: from a millisecond to half a minute.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The process's Prometheus recorder, installed on first use. `None` if another recorder was
/// installed first (the metrics then go there).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new().set_buckets(BUCKETS).ok()?;
            match builder.install_recorder() {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot install the metrics recorder; /metrics stays empty");
                    None
                }
            }
        })
        .as_ref()
}

/// The `/metrics` body.
pub fn render() -> String {
    handle().map(|h| h.render()).unwrap_or_default()
}

/// Keeps the histograms' memory bounded; call every few seconds.
pub fn upkeep() {
    if let Some(h) = handle() {
        h.run_upkeep();
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A session started being polled.
pub fn session_polled(tenant: &str) {
    gauge!("ccrelay_sessions_active", "tenant" => tenant.to_owned()).increment(1.0);
}

/// A session stopped being polled (closed, or its tenant removed).
pub fn session_unpolled(tenant: &str) {
    gauge!("ccrelay_sessions_active", "tenant" => tenant.to_owned()).decrement(1.0);
}

/// One poll of one session, and how long the upstream took.
pub fn poll(tenant: &str, took: Duration, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    counter!("ccrelay_polls_total", "tenant" => tenant.to_owned(), "outcome" => outcome)
        .increment(1);
    histogram!("ccrelay_poll_seconds", "tenant" => tenant.to_owned()).record(secs(took));
}

/// The poll metrics of one tenant, registered once.
pub struct PollMetrics {
    ok: Counter,
    error: Counter,
    seconds: Histogram,
    lag: Histogram,
    sessions: Gauge,
}

impl PollMetrics {
    /// Registers the handles for `tenant`; the same series [`poll`] and [`session_polled`] record.
    pub fn new(tenant: &str) -> Self {
        PollMetrics {
            ok: counter!("ccrelay_polls_total", "tenant" => tenant.to_owned(), "outcome" => "ok"),
            error: counter!("ccrelay_polls_total", "tenant" => tenant.to_owned(), "outcome" => "error"),
            seconds: histogram!("ccrelay_poll_seconds", "tenant" => tenant.to_owned()),
            lag: histogram!("ccrelay_poll_lag_seconds", "tenant" => tenant.to_owned()),
            sessions: gauge!("ccrelay_sessions_active", "tenant" => tenant.to_owned()),
        }
    }

    /// One poll, and how long the upstream took (as [`poll`]).
    pub fn poll(&self, took: Duration, ok: bool) {
        if ok { &self.ok } else { &self.error }.increment(1);
        self.seconds.record(secs(took));
    }

    /// A poll started `late` after it was due.
    pub fn lag(&self, late: Duration) {
        self.lag.record(secs(late));
    }

    /// A session started being polled (as [`session_polled`]).
    pub fn session_polled(&self) {
        self.sessions.increment(1.0);
    }

    /// A session stopped being polled (as [`session_unpolled`]).
    pub fn session_unpolled(&self) {
        self.sessions.decrement(1.0);
    }
}

/// `n` messages stored for `kind`/`tenant` in `direction` (`up`, `down`, `in`).
pub fn messages(kind: &'static str, tenant: &str, direction: &'static str, n: usize) {
    if n > 0 {
        counter!("ccrelay_messages_total", "kind" => kind, "tenant" => tenant.to_owned(), "direction" => direction)
            .increment(n as u64);
    }
}

/// A retry of `what` (`send`, `poll`, `download`, `stream`, …) after a retryable failure.
pub fn retry(kind: &'static str, what: &'static str) {
    counter!("ccrelay_retries_total", "kind" => kind, "what" => what).increment(1);
}

/// A call waited `waited` for the app's rate limit.
pub fn rate_limit_wait(app: &str, waited: Duration) {
    counter!("ccrelay_rate_limit_waits_total", "app" => app.to_owned()).increment(1);
    histogram!("ccrelay_rate_limit_wait_seconds", "app" => app.to_owned()).record(secs(waited));
}

/// The outbox: rows waiting, and how long the first in line has waited.
pub fn outbox(backlog: i64, oldest: Option<Duration>) {
    gauge!("ccrelay_outbox_backlog").set(backlog as f64);
    gauge!("ccrelay_outbox_oldest_seconds").set(oldest.map(secs).unwrap_or(0.0));
}

/// Outbox rows backing off after failures of their own, and the rows of `dead_letters`.
pub fn poison(retrying: i64, dead_letters: i64) {
    gauge!("ccrelay_outbox_retrying").set(retrying as f64);
    gauge!("ccrelay_dead_letters").set(dead_letters as f64);
}

/// A publish of one outbox row failed for a reason of its own (it backs off alone).
pub fn publish_failed(reason: &'static str) {
    counter!("ccrelay_publish_failures_total", "reason" => reason).increment(1);
}

/// JetStream stopped delivering a message to `consumer` (its max-deliveries advisory).
pub fn max_deliveries(consumer: &str) {
    counter!("ccrelay_max_deliveries_total", "consumer" => consumer.to_owned()).increment(1);
}

/// A batch of `n` outbox rows published (PubAcks received) in `took`.
pub fn published(n: usize, took: Duration) {
    counter!("ccrelay_published_total").increment(n as u64);
    histogram!("ccrelay_publish_seconds").record(secs(took));
}

/// A message JetStream delivered again (its ack did not arrive in time, or the relay restarted).
pub fn redelivered(consumer: &'static str) {
    counter!("ccrelay_redeliveries_total", "consumer" => consumer).increment(1);
}

/// A Tencent callback refused before anything of it was stored.
pub fn callback_refused(app: &str, reason: &'static str) {
    counter!("ccrelay_callbacks_refused_total", "app" => app.to_owned(), "reason" => reason)
        .increment(1);
}

/// An RPC request dropped (`reply_subject`) or answered `unavailable` at once (`busy`).
pub fn rpc_refused(tenant: &str, reason: &'static str) {
    counter!("ccrelay_rpc_refused_total", "tenant" => tenant.to_owned(), "reason" => reason)
        .increment(1);
}

/// A poll answer the journal could not write.
pub fn poll_journal_error() {
    counter!("ccrelay_poll_journal_errors_total").increment(1);
}

/// Messages committed from the poll journal at start-up (polled by an earlier run, not
/// committed when it stopped).
pub fn poll_journal_replayed(messages: usize) {
    counter!("ccrelay_poll_journal_replayed_total").increment(messages as u64);
}

/// What the last lease tick saw: partitions held by this member, live members.
pub fn cluster_view(owned: usize, members: usize) {
    gauge!("ccrelay_cluster_partitions_owned").set(owned as f64);
    gauge!("ccrelay_cluster_members").set(members as f64);
}

/// A partition taken: from a member whose lease ran out (`expired`), or `free`.
pub fn cluster_takeover(kind: &'static str) {
    counter!("ccrelay_cluster_takeovers_total", "kind" => kind).increment(1);
}

/// One lease tick's transaction took `took`.
pub fn cluster_lease_renewal(took: Duration) {
    histogram!("ccrelay_cluster_lease_renewal_seconds").record(took.as_secs_f64());
}

/// Retention deleted `rows` of `table` (of `session_summaries`: blanked their free text).
pub fn retention_deleted(table: &'static str, rows: u64) {
    counter!("ccrelay_retention_deleted_total", "table" => table).increment(rows);
}

/// A retention pass ended: `done`, `failed` (the next one goes on), `handed_over` (partition 0
/// moved to another member).
pub fn retention_pass(outcome: &'static str) {
    counter!("ccrelay_retention_passes_total", "outcome" => outcome).increment(1);
}

/// An erasure ended: `done` or `incomplete`.
pub fn erasure(outcome: &'static str) {
    counter!("ccrelay_erasures_total", "outcome" => outcome).increment(1);
}
