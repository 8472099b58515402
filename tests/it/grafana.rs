//! The Grafana dashboard (`docs/grafana/ccrelay.json`) names only metrics the relay exports, and
//! `/metrics` serves only metrics of the relay's catalogue (`relay::instrument::CATALOGUE`), with
//! their `# HELP` and `# TYPE`.

use std::collections::BTreeSet;
use std::time::Duration;

use relay::instrument::{CATALOGUE, MetricKind};
use serde_json::{Value, json};

use crate::support::app::*;
use crate::support::tim::sim_tim_app;

/// The catalogue's metric a series name belongs to: itself, or a histogram's `_bucket`, `_sum`
/// or `_count`.
fn metric_of(series: &str) -> Option<&'static str> {
    CATALOGUE
        .iter()
        .map(|m| m.name)
        .find(|&m| m == series)
        .or_else(|| {
            ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
                let base = series.strip_suffix(suffix)?;
                CATALOGUE
                    .iter()
                    .find(|m| m.name == base && m.kind == MetricKind::Histogram)
                    .map(|m| m.name)
            })
        })
}

/// Every `ccrelay_…` name in a PromQL expression.
fn names_in(expr: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("ccrelay_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(&tail[..end]);
        rest = &tail[end..];
    }
    names
}

/// Every PromQL expression of the dashboard: its panels' targets and its variables' queries.
fn dashboard_queries() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana/ccrelay.json");
    let text = std::fs::read_to_string(path).expect("docs/grafana/ccrelay.json");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    let mut ids = BTreeSet::new();
    for panel in dash["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(panel["id"].as_i64().expect("a panel id")),
            "panel ids repeat"
        );
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(target["expr"].as_str().expect("a target's expr").to_owned());
        }
    }
    for var in dash["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = var["query"]["query"].as_str() {
            queries.push(q.to_owned());
        }
    }
    queries
}

#[test]
fn the_dashboard_names_only_exported_metrics() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{queries:#?}");
    let mut used = BTreeSet::new();
    for q in &queries {
        let names = names_in(q);
        assert!(!names.is_empty(), "a query naming no ccrelay metric: {q}");
        for n in names {
            let metric = metric_of(n)
                .unwrap_or_else(|| panic!("{n} (in `{q}`) is not a metric the relay exports"));
            used.insert(metric);
        }
    }
    // What the issue asks the dashboard to show.
    for needed in [
        "ccrelay_sessions_active",
        "ccrelay_sessions_queued",
        "ccrelay_poll_lag_seconds",
        "ccrelay_messages_total",
        "ccrelay_upstream_errors_total",
        "ccrelay_outbox_backlog",
        "ccrelay_dead_letters",
        "ccrelay_store_commit_seconds",
        "ccrelay_rate_limit_per_second",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

#[test]
fn a_histogram_series_maps_to_its_metric_and_a_stranger_to_none() {
    assert_eq!(
        metric_of("ccrelay_poll_seconds_bucket"),
        Some("ccrelay_poll_seconds")
    );
    assert_eq!(
        metric_of("ccrelay_polls_total"),
        Some("ccrelay_polls_total")
    );
    assert_eq!(metric_of("ccrelay_polls_total_count"), None);
    assert_eq!(metric_of("ccrelay_nonsense"), None);
    assert_eq!(
        names_in("rate(ccrelay_a_total{x=\"ccrelay_b\"}[1m]) / ccrelay_c"),
        ["ccrelay_a_total", "ccrelay_b", "ccrelay_c"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_served_are_the_catalogue_s_and_count_the_queue() {
    // The simulator puts a transfer behind three customers, one step every 2 s.
    let queue = sim::SimConfig {
        queue_length: 3,
        queue_step: Duration::from_secs(2),
        ..Default::default()
    };
    let mut t = spawn_app_configured(queue, None, |config, sim| {
        config.tim.push(sim_tim_app(&sim.base_url()));
    })
    .await;
    let user = "gauge";
    let mut w = t.watch(TENANT, user).await;
    t.up(user, json!({"controlType": "CONNECT", "messageId": "g1"}))
        .await;
    w.until(10, "connected", is_result_for("g1")).await;
    t.up(
        user,
        json!({"controlType": "TRANS2AGENT", "messageId": "g2"}),
    )
    .await;
    let r = w.until(10, "transfer result", is_result_for("g2")).await;
    assert_eq!(r["resultCode"], "11", "queued: {r}");
    let mut tw = t.watch_tim("gauge").await;
    t.tim("send", "gauge", json!({"id": "gm1", "text": "hello"}))
        .await;
    tw.until(15, "send.result", |s, v| {
        s.contains(".event.") && v["type"] == "send.result"
    })
    .await;

    let url = format!("http://{}/metrics", t.app().http_addr());
    let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
    let mut served = BTreeSet::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let series = line.split(['{', ' ']).next().unwrap_or_default();
        let metric = metric_of(series)
            .unwrap_or_else(|| panic!("/metrics serves {series}, not in the catalogue"));
        served.insert(metric);
    }
    for m in [
        "ccrelay_sessions_active",
        "ccrelay_sessions_queued",
        "ccrelay_polls_total",
        "ccrelay_messages_total",
        "ccrelay_upstream_calls_total",
        "ccrelay_store_commit_seconds",
        "ccrelay_rate_limit_per_second",
    ] {
        assert!(served.contains(m), "{m} not served:\n{body}");
    }
    assert!(
        body.contains("# HELP ccrelay_polls_total ")
            && body.contains("# TYPE ccrelay_polls_total counter"),
        "the catalogue's help and type are served:\n{body}"
    );
    let value = |series: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    // Tests of this process share the recorder: at least this one session is queued.
    assert!(
        value("ccrelay_sessions_queued{tenant=\"acme\"}") >= 1.0,
        "{body}"
    );
    assert_eq!(
        value("ccrelay_rate_limit_per_second{app=\"shop\"}"),
        f64::from(sim_tim_app("http://x").rate_limit)
    );
    t.stop().await;
}
