//! The logs of a whole conversation — CEC and Tencent, an upstream failure, a token renewal, a
//! callback — hold no secret and no token: not the app secret, the Tencent key or callback token,
//! no AccessToken, ccmessaging-token or UserSig the run used. And every line about an upstream
//! failure names its tenant or app.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sim::{Endpoint, Fault, SimConfig};

use crate::support::app::*;
use crate::support::relay_proc::{RelayConfig, RelayProcess, write_config};

const TIM_KEY: &str = "sim-tim-secret-key";
const CALLBACK_TOKEN: &str = "sim-callback-token";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_token_reaches_the_logs() {
    crate::support::init_tracing();
    let nats = crate::support::nats().await;
    let sim = sim::spawn(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nats_url = nats.url();
    let tim = format!(
        r#"
[[tim]]
name = "shop"
base_url = "{sim}"
sdkappid = 1400000000
secret_key = "{TIM_KEY}"
admin_identifier = "administrator"
callback_token = "{CALLBACK_TOKEN}"
sig_expire = "1h"
"#,
        sim = sim.base_url()
    );
    let config = write_config(
        dir.path(),
        &RelayConfig {
            store_url: None,
            nats_url: &nats_url,
            sim: &sim,
            relay_section: "",
            request_timeout: "3s",
            ack_wait: "3s",
            extra: &tim,
        },
    );
    // The test config's random HTTP port is not known from outside: fix one.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&config, text).unwrap();
    let started = unix_now();
    let mut relay = RelayProcess::new(config, dir.path().join("relay.log"));
    relay.start_with(&[("RUST_LOG", "debug")], &["--log-format", "json"]);
    let client = async_nats::connect(&nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    relay.wait_for_streams(&js).await;
    let mut w = Watcher::new(&js, &format!("{PREFIX}.*.*.*.*")).await;
    let up = |user: &str, body: Value| {
        let (js, subject) = (js.clone(), format!("{PREFIX}.cec.{TENANT}.up.{user}"));
        async move {
            js.publish(subject, serde_json::to_vec(&body).unwrap().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };

    up("lena", json!({"controlType": "CONNECT", "messageId": "l0"})).await;
    w.until(20, "connected", is_result_for("l0")).await;
    // A refused token (renewed), an upstream failure (retried), a final failure.
    sim.inject_fault(Fault::status(Endpoint::Send, 401).times(1));
    up("lena", json!({"content": "after a 401", "messageId": "l1"})).await;
    w.until(20, "l1", is_result_for("l1")).await;
    sim.inject_fault(Fault::status(Endpoint::Send, 503).times(2));
    up("lena", json!({"content": "after 503s", "messageId": "l2"})).await;
    w.until(20, "l2", is_result_for("l2")).await;
    sim.inject_fault(Fault::status(Endpoint::Send, 400).times(1));
    up("lena", json!({"content": "refused", "messageId": "l3"})).await;
    w.until(20, "l3", is_result_for("l3")).await;
    sim.agent_say("lena", "agent here");
    w.until(20, "agent", is_down_containing("agent here")).await;
    // Tencent: a send and a signed callback.
    js.publish(
        format!("{PREFIX}.tim.shop.send.lena"),
        serde_json::to_vec(&json!({"id": "t1", "from": "@cs", "text": "hi"}))
            .unwrap()
            .into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    w.until(20, "send.result", |_, v| v["type"] == "send.result")
        .await;
    let rsp: Value = reqwest::Client::new()
        .post(format!("{}/sim/tim/callback", sim.base_url()))
        .json(&json!({
            "url": format!("http://127.0.0.1:{port}/tim/shop/callback"),
            "command": "Bot.OnC2CMessage",
            "body": {"CallbackCommand": "Bot.OnC2CMessage", "From_Account": "lena",
                     "To_Account": "@RBT#bot", "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hey"}}]},
            "sign": "good"
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rsp["status"], 200, "{rsp}");
    let tokens_in_db = session_tokens(dir.path()).await;
    relay.signal("-TERM");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while relay.child.as_mut().unwrap().try_wait().unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.child = None;
    let ended = unix_now();
    let log = relay.log_text();
    assert!(log.lines().count() > 20, "the run logged: {log}");

    // Everything secret the run had.
    let sc = SimConfig::default();
    let mut secrets = vec![
        sc.app_secret.clone(),
        TIM_KEY.to_owned(),
        CALLBACK_TOKEN.to_owned(),
    ];
    for r in sim.requests() {
        if let Some(bearer) = r
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
        {
            secrets.push(bearer.to_owned());
        }
        if let Some(t) = r.header("ccmessaging-token") {
            secrets.push(t.to_owned());
        }
    }
    secrets.extend(tokens_in_db);
    for t in started.saturating_sub(2)..=ended + 2 {
        secrets.push(tim::usersig::sign(
            TIM_KEY,
            1_400_000_000,
            "administrator",
            t,
            3600,
        ));
    }
    secrets.sort();
    secrets.dedup();
    assert!(secrets.len() > 5, "the run used tokens: {secrets:?}");
    for s in &secrets {
        assert!(!s.is_empty());
        assert!(
            !log.contains(s.as_str()),
            "a secret or token is in the logs: {s}"
        );
    }
    assert!(
        !log.to_ascii_lowercase().contains("usersig="),
        "a UserSig query in the logs"
    );

    // JSON lines; those about an upstream failure name the tenant or app.
    let mut upstream_lines = 0;
    for line in log.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if v.get("endpoint").is_some() && matches!(v["level"].as_str(), Some("WARN" | "ERROR")) {
            upstream_lines += 1;
            assert!(
                v.get("tenant").is_some() || v.get("app").is_some(),
                "names no tenant or app: {line}"
            );
        }
    }
    assert!(upstream_lines > 0, "the upstream failures were logged");
}

/// The ccmessaging-tokens the relay stored for its sessions.
async fn session_tokens(dir: &std::path::Path) -> Vec<String> {
    let url = format!("sqlite://{}", dir.join("relay.db").display());
    let store = store::connect(&url).await.unwrap();
    store
        .list_sessions(None, None, 100)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|s| s.token)
        .collect()
}
