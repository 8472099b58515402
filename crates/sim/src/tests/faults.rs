//! Injected faults: status, garbage, truncated and custom bodies, delays, `times`, `Any`.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{Client, SEND_PATH, send_body};
use crate::{Endpoint, Fault, FaultBody, SimConfig, spawn};
use ::cec::wire::{PollResponse, SendResponse, TokenByAkSkResponse};

/// A client with user `u1` connected to the robot and its welcome already polled.
async fn connected() -> (Client, String) {
    let c = Client::new(SimConfig::default()).await;
    let t = c.apply_token("u1").await;
    c.send_ok("u1", &t, "CONNECT", "").await;
    c.poll("u1", &t).await;
    (c, t)
}

#[tokio::test]
async fn an_injected_status_is_served_instead_of_processing_the_send() {
    let (c, t) = connected().await;
    c.sim
        .inject_fault(Fault::status(Endpoint::Send, 503).times(1));
    let a = c.send("u1", &t, "CHAT", "lost", Some("m1")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.value()["error_code"], "SIM.503");
    assert_eq!(
        c.sim.received("u1").len(),
        1,
        "only the CONNECT: the faulted send was not processed"
    );
    assert!(
        c.poll("u1", &t).await.downlink_messages.is_empty(),
        "the robot never saw it"
    );

    let r: SendResponse = c.send("u1", &t, "CHAT", "again", Some("m1")).await.json();
    assert_eq!(r.result_code, "0", "times(1): the next call is normal");
    assert!(c.sim.faults().is_empty());
    let s = c.sim.stats();
    assert_eq!(s.endpoints[&Endpoint::Send].faults, 1);
    assert_eq!(s.faults_served, 1);
    assert_eq!(s.calls(Endpoint::Send), 3);
}

#[tokio::test]
async fn a_garbage_body_is_not_json_and_drains_nothing() {
    let (c, t) = connected().await;
    c.sim.agent_say("u1", "kept");
    c.sim
        .inject_fault(Fault::body(Endpoint::Poll, FaultBody::Garbage).times(1));
    let a = c.poll_raw("u1", &t).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        serde_json::from_slice::<Value>(&a.body).is_err(),
        "garbage must not parse"
    );
    let m = c.poll("u1", &t).await.downlink_messages;
    assert_eq!(m.len(), 1, "the faulted poll drained nothing");
}

#[tokio::test]
async fn a_truncated_body_is_cut_json() {
    let c = Client::new(SimConfig::default()).await;
    for ep in [Endpoint::TokenByAkSk, Endpoint::Poll] {
        c.sim.inject_fault(Fault {
            endpoint: ep,
            status: None,
            delay: None,
            body: FaultBody::Truncated,
            times: Some(1),
        });
    }
    let a = c
        .token_by_ak_sk("sim-app-key", "sim-app-secret", None)
        .await;
    assert!(a.body.starts_with(b"{\"AccessToken\""));
    assert!(serde_json::from_slice::<TokenByAkSkResponse>(&a.body).is_err());
    let t = c.apply_token("u1").await;
    let a = c.poll_raw("u1", &t).await;
    assert!(a.body.starts_with(b"{\"resultCode\""));
    assert!(serde_json::from_slice::<PollResponse>(&a.body).is_err());
    assert_eq!(a.headers["content-type"], "application/json;charset=UTF-8");
}

#[tokio::test]
async fn a_custom_body_and_status_are_served_verbatim_on_any_endpoint_until_cleared() {
    let c = Client::new(SimConfig::default()).await;
    let body = r#"{"error_code":"APIGW.0308","error_msg":"throttled"}"#;
    c.sim.inject_fault(Fault {
        endpoint: Endpoint::Any,
        status: Some(429),
        delay: None,
        body: FaultBody::Custom(body.into()),
        times: None,
    });
    for _ in 0..2 {
        let a = c
            .token_by_ak_sk("sim-app-key", "sim-app-secret", None)
            .await;
        assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(a.body, body.as_bytes());
    }
    let a = c.post(SEND_PATH, None, send_body("u1", "CHAT", "x")).await;
    assert_eq!(
        a.status,
        StatusCode::TOO_MANY_REQUESTS,
        "Any covers send too"
    );
    c.sim.clear_faults();
    assert_eq!(
        c.token_by_ak_sk("sim-app-key", "sim-app-secret", None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(c.sim.stats().faults_served, 3);
}

#[tokio::test]
async fn faults_are_served_in_injection_order_per_endpoint() {
    let c = Client::new(SimConfig::default()).await;
    c.sim
        .inject_fault(Fault::status(Endpoint::ApplyToken, 500).times(1));
    c.sim
        .inject_fault(Fault::status(Endpoint::ApplyToken, 502).times(1));
    c.sim.inject_fault(Fault::status(Endpoint::Poll, 504));
    let body = json!({ "userId": "u1", "userName": "u1", "channelId": "1011577355744904195", "locale": "zh" });
    let statuses = [
        c.post(super::APPLY_PATH, None, body.clone()).await.status,
        c.post(super::APPLY_PATH, None, body.clone()).await.status,
        c.post(super::APPLY_PATH, None, body).await.status,
    ];
    assert_eq!(
        statuses,
        [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::OK
        ]
    );
    assert_eq!(c.sim.faults().len(), 1, "the poll fault is left");
}

#[tokio::test]
async fn a_delay_with_a_status_waits_then_serves_the_fault() {
    let (c, t) = connected().await;
    c.sim.inject_fault(Fault {
        endpoint: Endpoint::Send,
        status: Some(500),
        delay: Some(Duration::from_millis(150)),
        body: FaultBody::Normal,
        times: Some(1),
    });
    let t0 = Instant::now();
    let a = c.send("u1", &t, "CHAT", "slow", None).await;
    assert!(t0.elapsed() >= Duration::from_millis(150));
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(c.sim.received("u1").len(), 1, "not processed");
}

#[tokio::test]
async fn a_delayed_send_is_processed_even_when_the_client_gave_up() {
    let sim = spawn(SimConfig::default()).await.expect("spawn");
    let http = reqwest::Client::new();
    let base = sim.base_url();
    let access: TokenByAkSkResponse = http
        .post(format!("{base}/apigovernance/api/oauth/tokenByAkSk"))
        .json(&json!({ "app_key": "sim-app-key", "app_secret": "sim-app-secret" }))
        .send()
        .await
        .expect("tokenByAkSk")
        .json()
        .await
        .expect("json");
    let authed = |b: reqwest::RequestBuilder| {
        b.header("x-app-key", "sim-app-key")
            .bearer_auth(&access.access_token)
    };
    let apply: Value = authed(http.post(format!("{base}/apiaccess/ccmessaging/applyToken")))
        .json(&json!({ "userId": "u1", "userName": "u1", "channelId": "1011577355744904195", "locale": "zh" }))
        .send()
        .await
        .expect("applyToken")
        .json()
        .await
        .expect("json");
    let token = apply["token"].as_str().expect("token").to_owned();
    let send = |content: &str, timeout: Duration| {
        let mut body = send_body("u1", "CONNECT", content);
        body["messageId"] = json!("c1");
        authed(http.post(format!("{base}{SEND_PATH}")))
            .header("ccmessaging-token", &token)
            .timeout(timeout)
            .json(&body)
            .send()
    };

    sim.inject_fault(Fault::delay(Endpoint::Send, Duration::from_millis(300)).times(1));
    let err = send("", Duration::from_millis(50))
        .await
        .expect_err("the client times out");
    assert!(err.is_timeout(), "{err}");
    assert!(
        sim.received("u1").is_empty(),
        "not yet: the delay is running"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        sim.received("u1").len(),
        1,
        "processed once the delay passed"
    );

    let retry: SendResponse = send("", Duration::from_secs(5))
        .await
        .expect("retry")
        .json()
        .await
        .expect("json");
    assert_eq!(
        retry.result_desc.as_deref(),
        Some("connect to robot successfully.")
    );
    let got = sim.received("u1");
    assert_eq!(
        (got.len(), got[0].count),
        (1, 2),
        "the retry was de-duplicated by messageId"
    );
    assert_eq!(sim.stats().faults_served, 1);
}
