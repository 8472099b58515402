//! Upstream faults: what is retryable is retried with backoff, keeping the `messageId` so the
//! upstream sees one message; what is final becomes an event; and one tenant's failing upstream
//! does not slow the others down.

use std::time::Duration;

use config::CecTenant;
use serde_json::json;
use sim::{Endpoint, Fault, FaultBody, SimConfig};

use crate::support::app::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_faults_is_retried_and_the_upstream_sees_each_message_once() {
    let mut t = spawn_app().await;
    let user = "burst";
    let mut w = t.watch(TENANT, user).await;
    t.up(user, json!({"controlType": "CONNECT", "messageId": "b0"}))
        .await;
    w.until(10, "connected", is_result_for("b0")).await;

    // Each message meets one kind of fault first: 503 twice, a 502 HTML page, a JSON answer cut
    // in the middle, and an answer slower than the relay's request timeout (3 s here; the
    // upstream processes that call anyway).
    let faults = [
        Fault::status(Endpoint::Send, 503).times(2),
        Fault {
            endpoint: Endpoint::Send,
            status: Some(502),
            delay: None,
            body: FaultBody::Garbage,
            times: Some(1),
        },
        Fault::body(Endpoint::Send, FaultBody::Truncated).times(1),
        Fault::delay(Endpoint::Send, Duration::from_secs(4)).times(1),
    ];
    for (i, f) in faults.into_iter().enumerate() {
        t.sim.inject_fault(f);
        let id: &'static str = Box::leak(format!("b{}", i + 1).into_boxed_str());
        t.up(
            user,
            json!({"content": format!("through fault {i}"), "messageId": id}),
        )
        .await;
        let r = w.until(30, id, is_result_for(id)).await;
        assert_eq!(
            (&r["ok"], &r["resultCode"]),
            (&json!(true), &json!("0")),
            "{r}"
        );
    }
    // Give the slow call time to land, then count what the upstream processed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = t.sim.received(user);
    for i in 1..=4 {
        let id = format!("b{i}");
        let copies: Vec<u32> = received
            .iter()
            .filter(|r| r.request.message_id.as_deref() == Some(id.as_str()))
            .map(|r| r.count)
            .collect();
        assert_eq!(
            copies.len(),
            1,
            "{id} processed {} times upstream",
            copies.len()
        );
        if i == 4 {
            // The upstream processed the slow first try; the retry carried the same messageId
            // and was recognised.
            assert!(copies[0] >= 2, "{id} was not retried: {copies:?}");
        }
    }
    let results = w
        .events()
        .iter()
        .filter(|e| e["type"] == "up.result")
        .count();
    assert_eq!(results, 5, "one up.result per UpMessage");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_s_failing_upstream_does_not_slow_the_others() {
    let healthy = sim::spawn(SimConfig::default()).await.unwrap();
    let sc = SimConfig::default();
    let beta = CecTenant::simulated(
        "beta",
        url::Url::parse(&healthy.base_url()).unwrap(),
        &sc.app_key,
        &sc.app_secret,
        &sc.channel_config_id,
    );
    let mut t = spawn_app_configured(SimConfig::default(), None, move |c, _| {
        c.relay.max_concurrent_sends = 2;
        c.cec.push(beta);
    })
    .await;
    // acme's upstream fails every send; its customers' messages are retried, holding their
    // tenant's permits.
    t.sim.inject_fault(Fault::status(Endpoint::Send, 503));
    for u in ["a1", "a2", "a3"] {
        t.up(u, json!({"controlType": "CONNECT"})).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // beta is served at once.
    let mut w = t.watch("beta", "b1").await;
    t.publish_raw(
        "beta",
        "b1",
        &serde_json::to_vec(&json!({"controlType": "CONNECT", "messageId": "ok1"})).unwrap(),
    )
    .await;
    let r = w.until(5, "beta's CONNECT", is_result_for("ok1")).await;
    assert_eq!(r["ok"], true, "{r}");
    // And acme recovers once its upstream does.
    t.sim.clear_faults();
    let mut a = t.watch(TENANT, "a3").await;
    a.until(30, "acme's CONNECT", is_event("up.result")).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_s_hanging_polls_do_not_delay_the_others() {
    let healthy = sim::spawn(SimConfig::default()).await.unwrap();
    let sc = SimConfig::default();
    let mut beta = CecTenant::simulated(
        "beta",
        url::Url::parse(&healthy.base_url()).unwrap(),
        &sc.app_key,
        &sc.app_secret,
        &sc.channel_config_id,
    );
    beta.poll_interval = Duration::from_millis(100);
    let mut t = spawn_app_configured(SimConfig::default(), None, move |c, _| {
        c.relay.max_concurrent_polls = 2;
        c.cec.push(beta);
    })
    .await;
    let mut events = Watcher::new(&t.js, &format!("{PREFIX}.cec.*.event.*")).await;
    for (i, u) in ["a1", "a2", "a3", "a4"].iter().enumerate() {
        let id: &'static str = Box::leak(format!("a{i}").into_boxed_str());
        t.up(u, json!({"controlType": "CONNECT", "messageId": id}))
            .await;
        events.until(10, "acme CONNECT", is_result_for(id)).await;
    }
    t.publish_raw(
        "beta",
        "b1",
        &serde_json::to_vec(&json!({"controlType": "CONNECT", "messageId": "bc"})).unwrap(),
    )
    .await;
    events.until(10, "beta CONNECT", is_result_for("bc")).await;

    // acme's polls now hang until they time out (3 s), holding acme's poll permits.
    t.sim
        .inject_fault(Fault::delay(Endpoint::Poll, Duration::from_secs(20)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut w = t.watch("beta", "b1").await;
    let said = tokio::time::Instant::now();
    healthy.agent_say("b1", "still served");
    w.until(
        2,
        "beta's agent message",
        is_down_containing("still served"),
    )
    .await;
    assert!(said.elapsed() < Duration::from_secs(2));
    t.sim.clear_faults();
    t.stop().await;
}
