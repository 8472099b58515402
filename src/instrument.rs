//! The relay's metrics, served on `/metrics` in the Prometheus text format. Every metric is
//! recorded through one named function here (as Vector's internal events), so the names, labels
//! and units live in one place and the code that records them reads as what happened.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `ccrelay_sessions_active` | gauge | `tenant` |
//! | `ccrelay_polls_total` | counter | `tenant`, `outcome` (`ok`, `error`) |
//! | `ccrelay_poll_seconds` | histogram | `tenant` |
//! | `ccrelay_messages_total` | counter | `kind` (`cec`, `tim`), `tenant` (tenant or app), `direction` (`up`, `down`, `in`) |
//! | `ccrelay_upstream_calls_total` | counter | `kind`, `tenant`, `endpoint` |
//! | `ccrelay_upstream_call_seconds` | histogram | `kind`, `endpoint` |
//! | `ccrelay_upstream_errors_total` | counter | `kind`, `tenant`, `endpoint`, `code` |
//! | `ccrelay_retries_total` | counter | `kind`, `what` |
//! | `ccrelay_rate_limit_waits_total` | counter | `app` |
//! | `ccrelay_rate_limit_wait_seconds` | histogram | `app` |
//! | `ccrelay_outbox_backlog` | gauge | |
//! | `ccrelay_outbox_oldest_seconds` | gauge | |
//! | `ccrelay_published_total` | counter | |
//! | `ccrelay_publish_seconds` | histogram | (per batch) |
//! | `ccrelay_redeliveries_total` | counter | `consumer` |
//! | `ccrelay_store_commit_seconds` | histogram | |
//! | `ccrelay_store_errors_total` | counter | `retryable` |
//! | `ccrelay_store_batches_total` | counter | (transactions of group commit) |
//! | `ccrelay_store_writes_total` | counter | (writes in them; ÷ batches = mean batch size) |
//!
//! The recorder is process-wide: installed once ([`handle`]), shared by every relay of the
//! process (tests run several).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
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

/// `n` messages stored for `kind`/`tenant` in `direction` (`up`, `down`, `in`).
pub fn messages(kind: &'static str, tenant: &str, direction: &'static str, n: usize) {
    if n > 0 {
        counter!("ccrelay_messages_total", "kind" => kind, "tenant" => tenant.to_owned(), "direction" => direction)
            .increment(n as u64);
    }
}

/// One upstream HTTP call (with its in-client retries) and, if it failed, its code.
pub fn upstream_call(
    kind: &'static str,
    tenant: &str,
    endpoint: &'static str,
    took: Duration,
    error_code: Option<String>,
) {
    counter!("ccrelay_upstream_calls_total", "kind" => kind, "tenant" => tenant.to_owned(), "endpoint" => endpoint)
        .increment(1);
    histogram!("ccrelay_upstream_call_seconds", "kind" => kind, "endpoint" => endpoint)
        .record(secs(took));
    if let Some(code) = error_code {
        counter!("ccrelay_upstream_errors_total", "kind" => kind, "tenant" => tenant.to_owned(),
            "endpoint" => endpoint, "code" => code)
        .increment(1);
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

/// A batch of `n` outbox rows published (PubAcks received) in `took`.
pub fn published(n: usize, took: Duration) {
    counter!("ccrelay_published_total").increment(n as u64);
    histogram!("ccrelay_publish_seconds").record(secs(took));
}

/// A message JetStream delivered again (its ack did not arrive in time, or the relay restarted).
pub fn redelivered(consumer: &'static str) {
    counter!("ccrelay_redeliveries_total", "consumer" => consumer).increment(1);
}

/// One store commit attempt.
pub fn store_commit(took: Duration, error: Option<bool>) {
    histogram!("ccrelay_store_commit_seconds").record(secs(took));
    if let Some(retryable) = error {
        counter!("ccrelay_store_errors_total", "retryable" => if retryable { "true" } else { "false" })
            .increment(1);
    }
}

/// Group commit applied a batch of `writes` writes in one transaction.
pub fn store_batch(writes: usize) {
    counter!("ccrelay_store_batches_total").increment(1);
    counter!("ccrelay_store_writes_total").increment(writes as u64);
}
