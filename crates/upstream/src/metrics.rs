//! The upstream-call metrics both clients record (the relay's `/metrics` serves them):
//! `ccrelay_upstream_calls_total` (`kind`, `tenant`, `endpoint`), `ccrelay_upstream_call_seconds`
//! (`kind`, `endpoint`), `ccrelay_upstream_errors_total` (`kind`, `tenant`, `endpoint`, `code`).
//!
//! Recorded through the `metrics` facade: whichever recorder the process installed gets them.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram, counter, histogram};

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The upstream-call metrics of one tenant, per endpoint, each registered on its first call.
/// Error counters (labelled with the error's code) are still looked up per error.
pub struct UpstreamCalls {
    kind: &'static str,
    tenant: String,
    endpoints: Box<[OnceLock<(Counter, Histogram)>]>,
}

impl UpstreamCalls {
    /// Handles for `endpoints` endpoints (indexed `0..endpoints`) of `tenant`.
    pub fn new(kind: &'static str, tenant: &str, endpoints: usize) -> Self {
        UpstreamCalls {
            kind,
            tenant: tenant.to_owned(),
            endpoints: (0..endpoints).map(|_| OnceLock::new()).collect(),
        }
    }

    /// One call to the endpoint at `index` (named `endpoint`), as [`upstream_call`].
    pub fn record(
        &self,
        index: usize,
        endpoint: &'static str,
        took: Duration,
        error_code: Option<String>,
    ) {
        let Some(slot) = self.endpoints.get(index) else {
            return upstream_call(self.kind, &self.tenant, endpoint, took, error_code);
        };
        let kind = self.kind;
        let (calls, seconds) = slot.get_or_init(|| {
            (
                counter!("ccrelay_upstream_calls_total", "kind" => kind, "tenant" => self.tenant.clone(), "endpoint" => endpoint),
                histogram!("ccrelay_upstream_call_seconds", "kind" => kind, "endpoint" => endpoint),
            )
        });
        calls.increment(1);
        seconds.record(secs(took));
        if let Some(code) = error_code {
            upstream_error(kind, &self.tenant, endpoint, code);
        }
    }
}

fn upstream_error(kind: &'static str, tenant: &str, endpoint: &'static str, code: String) {
    counter!("ccrelay_upstream_errors_total", "kind" => kind, "tenant" => tenant.to_owned(),
        "endpoint" => endpoint, "code" => code)
    .increment(1);
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
        upstream_error(kind, tenant, endpoint, code);
    }
}
