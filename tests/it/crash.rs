//! The real binary killed with SIGKILL mid-conversation and started again.

use std::time::Duration;

use serde_json::json;

use crate::support::app::*;
use crate::support::relay_proc::{RelayConfig, RelayProcess, write_config};

fn config<'a>(
    nats_url: &'a str,
    sim: &'a sim::SimHandle,
    relay_section: &'a str,
    request_timeout: &'a str,
) -> RelayConfig<'a> {
    RelayConfig {
        store_url: None,
        nats_url,
        sim,
        relay_section,
        request_timeout,
        ack_wait: "3s",
        extra: "",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_relay_resumes_without_losing_or_duplicating() {
    crate::support::init_tracing();
    let nats = crate::support::nats().await;
    let sim = sim::spawn(sim::SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let nats_url = nats.url();
    let config = write_config(dir.path(), &config(&nats_url, &sim, "", "2s"));
    let mut relay = RelayProcess::new(config, dir.path().join("relay.log"));
    relay.start();

    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let up = |body: serde_json::Value| {
        let js = js.clone();
        async move {
            js.publish(
                format!("{PREFIX}.cec.{TENANT}.up.erin"),
                serde_json::to_vec(&body).unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    };
    relay.wait_for_streams(&js).await;
    let mut w = Watcher::new(&js, &format!("{PREFIX}.cec.{TENANT}.*.erin")).await;
    up(json!({"controlType": "CONNECT", "messageId": "x0"})).await;
    w.until(20, "connected", is_result_for("x0")).await;

    let mut expected = Vec::new();
    for round in 0..3 {
        // Messages said while the relay is up…
        let live = format!("live-{round}");
        sim.agent_say("erin", &live);
        let live_static: &'static str = Box::leak(live.clone().into_boxed_str());
        w.until(20, "live message", is_down_containing(live_static))
            .await;
        // …an uplink message published right before the kill…
        let id = format!("k{round}");
        up(json!({"content": format!("sent-before-kill-{round}"), "messageId": id})).await;
        tokio::time::sleep(Duration::from_millis(50 * round as u64)).await;
        relay.kill();
        // …and messages said while it is down.
        let down = format!("while-down-{round}");
        sim.agent_say("erin", &down);
        relay.start();
        expected.extend([live, down]);
    }
    sim.agent_say("erin", "final");
    w.until(30, "final", is_down_containing("final")).await;
    w.drain(3).await;

    let contents: Vec<String> = w
        .downs()
        .iter()
        .filter_map(|d| d["content"].as_str().map(str::to_owned))
        .collect();
    for e in &expected {
        let n = contents.iter().filter(|c| c.contains(e.as_str())).count();
        assert_eq!(n, 1, "{e:?} arrived {n} times; downs: {contents:#?}");
    }
    // The robot's answers to messages sent just before a kill: at most once. (A poll answer inside
    // the relay at the instant of SIGKILL is the one loss CEC's unacknowledged poll imposes.)
    for round in 0..3 {
        let e = format!("sent-before-kill-{round}");
        let n = contents.iter().filter(|c| c.contains(e.as_str())).count();
        assert!(n <= 1, "{e:?} arrived {n} times");
    }
    let mut ids: Vec<&str> = w
        .seen
        .iter()
        .map(|(_, v)| v["id"].as_str().unwrap())
        .collect();
    let total = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total, "an id was published twice");
    // The upstream processed each uplink message once, whatever the kills: a message resent after
    // a kill carries the same messageId and is de-duplicated (counted, not processed again).
    assert_eq!(sim.received("erin").len(), 4, "{:?}", sim.received("erin"));
    relay.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once_and_loses_nothing() {
    crate::support::init_tracing();
    let nats = crate::support::nats().await;
    let sim = sim::spawn(sim::SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let nats_url = nats.url();
    let config = write_config(
        dir.path(),
        &config(&nats_url, &sim, r#"shutdown_timeout = "60s""#, "30s"),
    );
    let mut relay = RelayProcess::new(config, dir.path().join("relay.log"));
    relay.start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    relay.wait_for_streams(&js).await;
    let mut w = Watcher::new(&js, &format!("{PREFIX}.cec.{TENANT}.*.sam")).await;

    // A send the upstream takes 20 s to answer keeps the first shutdown waiting.
    sim.inject_fault(sim::Fault::delay(sim::Endpoint::Send, Duration::from_secs(20)).times(1));
    js.publish(
        format!("{PREFIX}.cec.{TENANT}.up.sam"),
        serde_json::to_vec(&json!({"controlType": "CONNECT", "messageId": "q1"}))
            .unwrap()
            .into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sim.faults().iter().any(|f| f.times == Some(1)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the send never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let child = relay.child.as_mut().unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first SIGTERM waits for the send"
    );
    relay.signal("-TERM");
    let child = relay.child.as_mut().unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "no exit within 3 s of the second SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    relay.child = None;
    let log = relay.log_text();
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("Second signal"), "{log}");

    // Started again, the relay finishes the abandoned message, once.
    relay.start();
    w.until(30, "the abandoned CONNECT's result", is_result_for("q1"))
        .await;
    w.drain(2).await;
    let results = w
        .events()
        .iter()
        .filter(|e| e["type"] == "up.result" && e["messageId"] == "q1")
        .count();
    assert_eq!(results, 1);
    relay.kill();
}
