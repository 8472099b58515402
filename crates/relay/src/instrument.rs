//! The relay's metrics, served on `/metrics` in the Prometheus text format. Every metric is
//! recorded through one named function here (as Vector's internal events), so the names, labels
//! and units live in one place and the code that records them reads as what happened.
//!
//! Every metric is listed, with its type and labels, in [`CATALOGUE`]; [`handle`] describes them
//! to the exporter, so `/metrics` carries their `# HELP` and `# TYPE`. A test checks that every
//! metric the code records is in the catalogue, and one in `tests/it/grafana.rs` that the
//! dashboard (`docs/grafana/ccrelay.json`) names no other.
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

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric the relay exports: its name, kind and labels (with what they mean).
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: MetricKind,
    /// The labels, and what the series counts.
    pub labels: &'static str,
}

/// Every metric the relay (and the store and clients it runs) records.
pub const CATALOGUE: &[Metric] = &[
    Metric {
        name: "ccrelay_sessions_active",
        kind: MetricKind::Gauge,
        labels: "`tenant`",
    },
    Metric {
        name: "ccrelay_sessions_queued",
        kind: MetricKind::Gauge,
        labels: "`tenant` (polled sessions waiting in the contact center's queue)",
    },
    Metric {
        name: "ccrelay_polls_total",
        kind: MetricKind::Counter,
        labels: "`tenant`, `outcome` (`ok`, `error`)",
    },
    Metric {
        name: "ccrelay_poll_seconds",
        kind: MetricKind::Histogram,
        labels: "`tenant`",
    },
    Metric {
        name: "ccrelay_poll_lag_seconds",
        kind: MetricKind::Histogram,
        labels: "`tenant` (how late a poll started after its due time)",
    },
    Metric {
        name: "ccrelay_messages_total",
        kind: MetricKind::Counter,
        labels: "`kind` (`cec`, `tim`), `tenant` (tenant or app), `direction` (`up`, `down`, `in`)",
    },
    Metric {
        name: "ccrelay_upstream_calls_total",
        kind: MetricKind::Counter,
        labels: "`kind`, `tenant`, `endpoint`",
    },
    Metric {
        name: "ccrelay_upstream_call_seconds",
        kind: MetricKind::Histogram,
        labels: "`kind`, `endpoint`",
    },
    Metric {
        name: "ccrelay_upstream_errors_total",
        kind: MetricKind::Counter,
        labels: "`kind`, `tenant`, `endpoint`, `code`",
    },
    Metric {
        name: "ccrelay_retries_total",
        kind: MetricKind::Counter,
        labels: "`kind`, `what`",
    },
    Metric {
        name: "ccrelay_rate_limit_waits_total",
        kind: MetricKind::Counter,
        labels: "`app`",
    },
    Metric {
        name: "ccrelay_rate_limit_wait_seconds",
        kind: MetricKind::Histogram,
        labels: "`app`",
    },
    Metric {
        name: "ccrelay_rate_limit_per_second",
        kind: MetricKind::Gauge,
        labels: "`app` (the app's configured `rate_limit`: the budget of the whole service)",
    },
    Metric {
        name: "ccrelay_outbox_backlog",
        kind: MetricKind::Gauge,
        labels: "",
    },
    Metric {
        name: "ccrelay_outbox_oldest_seconds",
        kind: MetricKind::Gauge,
        labels: "",
    },
    Metric {
        name: "ccrelay_outbox_retrying",
        kind: MetricKind::Gauge,
        labels: "(rows backing off after failures of their own)",
    },
    Metric {
        name: "ccrelay_publish_failures_total",
        kind: MetricKind::Counter,
        labels: "`reason` (`row`: a failure of the row's own)",
    },
    Metric {
        name: "ccrelay_dead_letters",
        kind: MetricKind::Gauge,
        labels: "(rows in `dead_letters`)",
    },
    Metric {
        name: "ccrelay_dead_letters_total",
        kind: MetricKind::Counter,
        labels: "`source`, `reason`",
    },
    Metric {
        name: "ccrelay_max_deliveries_total",
        kind: MetricKind::Counter,
        labels: "`consumer`",
    },
    Metric {
        name: "ccrelay_published_total",
        kind: MetricKind::Counter,
        labels: "",
    },
    Metric {
        name: "ccrelay_publish_seconds",
        kind: MetricKind::Histogram,
        labels: "(per batch)",
    },
    Metric {
        name: "ccrelay_redeliveries_total",
        kind: MetricKind::Counter,
        labels: "`consumer`",
    },
    Metric {
        name: "ccrelay_store_commit_seconds",
        kind: MetricKind::Histogram,
        labels: "",
    },
    Metric {
        name: "ccrelay_store_errors_total",
        kind: MetricKind::Counter,
        labels: "`retryable`",
    },
    Metric {
        name: "ccrelay_store_batches_total",
        kind: MetricKind::Counter,
        labels: "(transactions of group commit)",
    },
    Metric {
        name: "ccrelay_store_writes_total",
        kind: MetricKind::Counter,
        labels: "(writes in them; ÷ batches = mean batch size)",
    },
    Metric {
        name: "ccrelay_callbacks_refused_total",
        kind: MetricKind::Counter,
        labels: "`app` (empty for an unknown one), `reason` (`unsigned`, `sign`, `time`, `too_large`, `unknown_app`)",
    },
    Metric {
        name: "ccrelay_rpc_refused_total",
        kind: MetricKind::Counter,
        labels: "`tenant` (empty for relay-wide or unknown), `reason` (`reply_subject`, `busy`)",
    },
    Metric {
        name: "ccrelay_store_away",
        kind: MetricKind::Gauge,
        labels: "(1 while the database is unreachable or refuses writes: polling paused)",
    },
    Metric {
        name: "ccrelay_poll_journal_errors_total",
        kind: MetricKind::Counter,
        labels: "(poll answers the journal could not write)",
    },
    Metric {
        name: "ccrelay_poll_journal_replayed_total",
        kind: MetricKind::Counter,
        labels: "(messages committed from the journal at start-up)",
    },
    Metric {
        name: "ccrelay_cluster_partitions_owned",
        kind: MetricKind::Gauge,
        labels: "(partitions this member holds; docs/HA.md)",
    },
    Metric {
        name: "ccrelay_cluster_members",
        kind: MetricKind::Gauge,
        labels: "(live members, as the last lease tick saw them)",
    },
    Metric {
        name: "ccrelay_cluster_takeovers_total",
        kind: MetricKind::Counter,
        labels: "`kind` (`expired`: from a member whose lease ran out; `free`)",
    },
    Metric {
        name: "ccrelay_cluster_lease_renewal_seconds",
        kind: MetricKind::Histogram,
        labels: "(one lease tick's transaction)",
    },
    Metric {
        name: "ccrelay_cluster_fenced_writes_total",
        kind: MetricKind::Counter,
        labels: "(writes refused: their partition was another member's; recorded by the store)",
    },
    Metric {
        name: "ccrelay_retention_deleted_total",
        kind: MetricKind::Counter,
        labels: "`table` (rows retention deleted; `session_summaries`: free texts blanked; docs/PRIVACY.md)",
    },
    Metric {
        name: "ccrelay_retention_passes_total",
        kind: MetricKind::Counter,
        labels: "`outcome` (`done`, `failed`, `handed_over`: retention passes)",
    },
    Metric {
        name: "ccrelay_erasures_total",
        kind: MetricKind::Counter,
        labels: "`outcome` (`done`, `incomplete`: customers erased by `forget`)",
    },
];

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
                Ok(h) => {
                    describe();
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot install the metrics recorder; /metrics stays empty");
                    None
                }
            }
        })
        .as_ref()
}

/// Tells the recorder each metric's kind and help text (the catalogue's labels).
fn describe() {
    for m in CATALOGUE {
        match m.kind {
            MetricKind::Counter => metrics::describe_counter!(m.name, m.labels),
            MetricKind::Gauge => metrics::describe_gauge!(m.name, m.labels),
            MetricKind::Histogram => metrics::describe_histogram!(m.name, m.labels),
        }
    }
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
    queued: Gauge,
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
            queued: gauge!("ccrelay_sessions_queued", "tenant" => tenant.to_owned()),
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

    /// A polled session started (`true`) or stopped (`false`) waiting in the queue.
    pub fn session_queued(&self, queued: bool) {
        if queued {
            self.queued.increment(1.0);
        } else {
            self.queued.decrement(1.0);
        }
    }
}

/// The app's configured rate limit (calls per second for the whole service).
pub fn rate_limit_budget(app: &str, per_second: u32) {
    gauge!("ccrelay_rate_limit_per_second", "app" => app.to_owned()).set(f64::from(per_second));
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    /// The names recorded by `counter!("…"`, `gauge!("…"` and `histogram!("…"` in `dir`'s sources.
    fn recorded(dir: &Path, names: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                recorded(&path, names);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for macro_ in ["counter!(\"", "gauge!(\"", "histogram!(\""] {
                    for (at, _) in text.match_indices(macro_) {
                        let rest = &text[at + macro_.len()..];
                        if let Some(end) = rest.find('"') {
                            names.insert(rest[..end].to_owned());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_catalogue_lists_every_metric_the_workspace_records() {
        let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut names = BTreeSet::new();
        for krate in ["relay", "store", "upstream", "cec", "tim"] {
            recorded(&crates.join(krate).join("src"), &mut names);
        }
        names.retain(|n| n.starts_with("ccrelay_") && n != "ccrelay_test");
        assert!(names.len() > 30, "the scan found too little: {names:?}");
        let listed: BTreeSet<String> = CATALOGUE.iter().map(|m| m.name.to_owned()).collect();
        assert_eq!(listed.len(), CATALOGUE.len(), "a metric is listed twice");
        let missing: Vec<_> = names.difference(&listed).collect();
        let stale: Vec<_> = listed.difference(&names).collect();
        assert!(
            missing.is_empty(),
            "recorded but not in CATALOGUE: {missing:?}"
        );
        assert!(
            stale.is_empty(),
            "in CATALOGUE but never recorded: {stale:?}"
        );
        for m in CATALOGUE {
            assert_eq!(
                m.kind == MetricKind::Counter,
                m.name.ends_with("_total"),
                "{}: counters, and only they, end in _total",
                m.name
            );
        }
    }
}
