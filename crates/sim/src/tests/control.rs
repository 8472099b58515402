//! The HTTP control API under `/sim/`, against a spawned server; `Fault` as JSON; the handle's
//! lifetime.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{Endpoint, Fault, FaultBody, SimConfig, spawn};

#[test]
fn a_fault_reads_from_json_with_humantime_delays() {
    let f: Fault = serde_json::from_value(json!({
        "endpoint": "send", "status": 503, "delay": "1s 500ms", "body": "garbage", "times": 2
    }))
    .expect("fault");
    assert_eq!(f.endpoint, Endpoint::Send);
    assert_eq!(f.status, Some(503));
    assert_eq!(f.delay, Some(Duration::from_millis(1500)));
    assert_eq!(f.body, FaultBody::Garbage);
    assert_eq!(f.times, Some(2));

    let f: Fault =
        serde_json::from_value(json!({ "endpoint": "Poll", "body": { "custom": "{}" } }))
            .expect("fault");
    assert_eq!(
        f,
        Fault::body(Endpoint::Poll, FaultBody::Custom("{}".into()))
    );
    let f: Fault = serde_json::from_value(json!({ "endpoint": "tokenByAkSk" })).expect("fault");
    assert!(f.is_delay_only() && f.delay.is_none() && f.times.is_none());
    assert!(serde_json::from_value::<Fault>(json!({ "endpoint": "send", "colour": 1 })).is_err());
}

#[test]
fn sim_config_reads_with_defaults_and_humantime() {
    let cfg: SimConfig =
        serde_json::from_value(json!({ "queue_length": 3, "queue_step": "250ms", "robot": false }))
            .expect("config");
    assert_eq!(cfg.queue_length, 3);
    assert_eq!(cfg.queue_step, Duration::from_millis(250));
    assert!(!cfg.robot);
    assert_eq!(cfg.app_key, "sim-app-key");
    assert_eq!(cfg.access_token_ttl, Duration::from_secs(600));
    assert_eq!(cfg.cc_token_ttl, Duration::from_secs(3600));
    assert!(serde_json::from_value::<SimConfig>(json!({ "robots": true })).is_err());
    assert!(
        !format!("{cfg:?}").contains("sim-app-secret"),
        "the secret is never printed"
    );
}

#[tokio::test]
async fn the_control_api_drives_the_simulator_over_http() {
    let sim = spawn(SimConfig::default()).await.expect("spawn");
    let base = sim.base_url();
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| http.post(format!("{base}{path}")).json(&body).send();

    // A customer session, driven in process.
    let mut c = super::Client {
        sim: sim.sim().clone(),
        router: sim.router(),
        access: String::new(),
    };
    c.access = c
        .token_by_ak_sk("sim-app-key", "sim-app-secret", None)
        .await
        .json::<::cec::wire::TokenByAkSkResponse>()
        .access_token;
    let t = c.apply_token("u1").await;
    c.send_ok("u1", &t, "CONNECT", "").await;
    c.send_ok("u1", &t, "TRANS2AGENT", "").await;
    c.poll("u1", &t).await;

    let r = post(
        "/sim/cec/agent/say",
        json!({ "userId": "u1", "content": "from http" }),
    )
    .await
    .expect("say");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let m = c.poll("u1", &t).await.downlink_messages;
    assert_eq!(m[0].content.as_deref(), Some("from http"));
    assert_eq!(m[0].source_type.as_deref(), Some("AGENT"));

    post("/sim/cec/duplicate-next-poll", json!({ "userId": "u1" }))
        .await
        .expect("dup");
    assert_eq!(c.poll("u1", &t).await.downlink_messages, m);

    post("/sim/cec/agent/disconnect", json!({ "userId": "u1" }))
        .await
        .expect("disconnect");
    let bye = c.poll("u1", &t).await.downlink_messages;
    assert!(bye[0].is_disconnect());

    let r = post("/sim/cec/expire-tokens", json!({ "kind": "cc" }))
        .await
        .expect("expire");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        c.poll_raw("u1", &t).await.status,
        axum::http::StatusCode::UNAUTHORIZED,
        "no session left"
    );
    let r = post("/sim/cec/expire-tokens", json!({ "kind": "bogus" }))
        .await
        .expect("expire");
    assert!(r.status().is_client_error());
    post("/sim/cec/expire-tokens", json!({ "kind": "access" }))
        .await
        .expect("expire");
    let apply = json!({ "userId": "u1", "userName": "u1", "channelId": "1011577355744904195", "locale": "zh" });
    let a = c.post(super::APPLY_PATH, None, apply).await;
    assert_eq!(
        a.status,
        axum::http::StatusCode::UNAUTHORIZED,
        "AccessToken expired"
    );

    let received: Value = http
        .get(format!("{base}/sim/cec/received?userId=u1"))
        .send()
        .await
        .expect("received")
        .json()
        .await
        .expect("json");
    let controls: Vec<&str> = received
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["request"]["controlType"].as_str())
        .collect();
    assert_eq!(controls, ["CONNECT", "TRANS2AGENT"]);
    assert_eq!(received[0]["count"], 1);

    let log: Value = http
        .get(format!("{base}/sim/cec/poll-log"))
        .send()
        .await
        .expect("log")
        .json()
        .await
        .expect("json");
    let log = log.as_array().expect("array");
    assert_eq!(log.len(), 4);
    assert_eq!(log[0]["userId"], "u1");
    assert_eq!(log[2]["duplicate"], true);
    assert!(
        log[0]["unixMs"]
            .as_u64()
            .is_some_and(|ms| ms > 1_600_000_000_000)
    );

    let r = post(
        "/sim/faults",
        json!({ "endpoint": "poll", "status": 503, "times": 1 }),
    )
    .await
    .expect("fault");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let listed: Value = http
        .get(format!("{base}/sim/faults"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(listed[0]["endpoint"], "poll");
    let r = post("/sim/faults", json!({ "endpoint": "poll", "status": 5000 }))
        .await
        .expect("fault");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = http
        .delete(format!("{base}/sim/faults"))
        .send()
        .await
        .expect("clear");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(sim.faults().is_empty());

    let stats: Value = http
        .get(format!("{base}/sim/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["endpoints"]["poll"]["calls"], 5);
    assert_eq!(stats["endpoints"]["poll"]["unauthorized"], 1);
    assert_eq!(stats["endpoints"]["applyToken"]["unauthorized"], 1);
    assert_eq!(stats["unauthorized"], 2);
    assert_eq!(stats["accessTokensIssued"], 1);
    assert_eq!(stats["ccTokensIssued"], 1);
}

#[tokio::test]
async fn the_cec_api_is_served_over_http_and_stops_when_the_handle_drops() {
    let sim = spawn(SimConfig::default()).await.expect("spawn");
    let base = sim.base_url();
    assert!(base.starts_with("http://127.0.0.1:"));
    assert_eq!(
        sim.addr().port(),
        base.rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    );
    let http = reqwest::Client::new();
    let token = |http: &reqwest::Client, base: &str| {
        http.post(format!("{base}/apigovernance/api/oauth/tokenByAkSk"))
            .header("X-Token-Expire", "60")
            .json(&json!({ "app_key": "sim-app-key", "app_secret": "sim-app-secret" }))
            .timeout(Duration::from_secs(2))
            .send()
    };
    let r = token(&http, &base).await.expect("tokenByAkSk");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["Expires"], "60");
    drop(sim);
    let mut stopped = false;
    for _ in 0..50 {
        if token(&reqwest::Client::new(), &base).await.is_err() {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        stopped,
        "the server still answers after the handle was dropped"
    );
}
