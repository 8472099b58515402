//! tokenByAkSk, the AccessToken and app-key checks, applyToken, and the ccmessaging-token's
//! renewal during a session.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};

use super::{APPLY_PATH, Client};
use crate::{Endpoint, SimConfig};
use ::cec::wire::{ApplyTokenResponse, TokenByAkSkResponse};

#[tokio::test]
async fn token_by_ak_sk_answers_exactly_the_documented_fields() {
    let c = Client::new(SimConfig::default()).await;
    let a = c
        .token_by_ak_sk("sim-app-key", "sim-app-secret", Some("120"))
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.value();
    let mut keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "AccessToken",
            "AppKey",
            "ApplyType",
            "CreateTime",
            "Expires",
            "Scope",
            "UserID"
        ]
    );
    assert_eq!(v["ApplyType"], "Bearer");
    assert_eq!(v["Expires"], "120");
    assert_eq!(v["AppKey"], "sim-app-key");
    assert_eq!(v["UserID"], "Anonymous");
    let created: u64 = v["CreateTime"]
        .as_str()
        .expect("string")
        .parse()
        .expect("secs");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        now.abs_diff(created) <= 5,
        "CreateTime {created} is not now ({now})"
    );
    let other: TokenByAkSkResponse = c
        .token_by_ak_sk("sim-app-key", "sim-app-secret", None)
        .await
        .json();
    assert_ne!(
        other.access_token,
        a.json::<TokenByAkSkResponse>().access_token
    );
}

#[tokio::test]
async fn x_token_expire_is_capped_by_the_configured_ttl_and_defaults_to_it() {
    let c = Client::new(SimConfig::default()).await;
    for (header, expires) in [(Some("99999"), "600"), (None, "600"), (Some("30"), "30")] {
        let r: TokenByAkSkResponse = c
            .token_by_ak_sk("sim-app-key", "sim-app-secret", header)
            .await
            .json();
        assert_eq!(
            r.expires.as_deref(),
            Some(expires),
            "X-Token-Expire {header:?}"
        );
    }
}

#[tokio::test]
async fn wrong_app_key_or_secret_gets_401() {
    let c = Client::new(SimConfig::default()).await;
    for (key, secret) in [("nope", "sim-app-secret"), ("sim-app-key", "nope")] {
        let a = c.token_by_ak_sk(key, secret, None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert_eq!(a.value()["check"], "app_key/app_secret");
    }
    assert_eq!(
        c.sim.stats().endpoints[&Endpoint::TokenByAkSk].unauthorized,
        2
    );
    assert_eq!(c.sim.stats().access_tokens_issued, 1);
}

#[tokio::test]
async fn ccmessaging_calls_need_the_app_key_and_a_live_access_token() {
    let c = Client::new(SimConfig::default()).await;
    let body = json!({ "userId": "u1", "userName": "u1", "channelId": "1011577355744904195", "locale": "zh" });
    let no_key = Request::post(APPLY_PATH)
        .header("Authorization", format!("Bearer {}", c.access))
        .body(Body::from(body.to_string()))
        .expect("request");
    let a = c.request(no_key).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.value()["check"], "x-app-key");

    let bad_bearer = Request::post(APPLY_PATH)
        .header("X-APP-Key", "sim-app-key")
        .header("Authorization", "Bearer not-a-token")
        .body(Body::from(body.to_string()))
        .expect("request");
    let a = c.request(bad_bearer).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.value()["check"], "Authorization");

    // Upper-case header names, as in the document's sample, are the same headers.
    let upper = Request::post(APPLY_PATH)
        .header("X-APP-Key", "sim-app-key")
        .header("AUTHORIZATION", format!("Bearer {}", c.access))
        .body(Body::from(body.to_string()))
        .expect("request");
    assert_eq!(c.request(upper).await.status, StatusCode::OK);

    c.sim.expire_access_tokens();
    let a = c.post(APPLY_PATH, None, body).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.value()["message"], "AccessToken has expired");
    assert_eq!(c.sim.stats().unauthorized, 3);
}

#[tokio::test]
async fn an_access_token_expires_after_x_token_expire_seconds() {
    let mut c = Client::new(SimConfig::default()).await;
    c.access = c
        .token_by_ak_sk("sim-app-key", "sim-app-secret", Some("1"))
        .await
        .json::<TokenByAkSkResponse>()
        .access_token;
    c.apply_token("u1").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let body = json!({ "userId": "u1", "userName": "u1", "channelId": "1011577355744904195", "locale": "zh" });
    assert_eq!(
        c.post(APPLY_PATH, None, body).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn apply_token_checks_user_id_length_and_channel_id() {
    let c = Client::new(SimConfig::default()).await;
    let long = "u".repeat(25);
    for (user, channel) in [
        (long.as_str(), "1011577355744904195"),
        ("", "1011577355744904195"),
        ("u1", "42"),
    ] {
        let body = json!({ "userId": user, "userName": "n", "channelId": channel, "locale": "zh" });
        let r: ApplyTokenResponse = c.post(APPLY_PATH, None, body).await.json();
        assert_eq!(r.result_code, "1", "userId {user:?} channelId {channel}");
        assert!(r.token.is_empty());
    }
    let max = "u".repeat(24);
    let t = c.apply_token(&max).await;
    assert_ne!(
        t,
        c.apply_token(&max).await,
        "every applyToken gives a new token"
    );
    assert_eq!(c.sim.stats().cc_tokens_issued, 2);
}

#[tokio::test]
async fn reapplying_keeps_the_session_and_retires_the_old_token() {
    let c = Client::new(SimConfig::default()).await;
    let old = c.apply_token("u1").await;
    assert_eq!(c.send_ok("u1", &old, "CONNECT", "").await.result_code, "0");
    let new = c.apply_token("u1").await;
    assert_eq!(
        c.poll_raw("u1", &old).await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = c.poll("u1", &new).await;
    assert_eq!(
        r.downlink_messages.len(),
        1,
        "the robot's welcome is still there"
    );
    assert_eq!(
        c.send_ok("u1", &new, "CHAT", "hi").await.result_code,
        "0",
        "still in session"
    );
}

#[tokio::test]
async fn a_token_of_another_user_gets_401() {
    let c = Client::new(SimConfig::default()).await;
    let t1 = c.apply_token("u1").await;
    c.apply_token("u2").await;
    let a = c.poll_raw("u2", &t1).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.value()["check"], "ccmessaging-token");
    assert_eq!(
        c.send("u2", &t1, "CONNECT", "", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        c.poll_raw("nobody", &t1).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn an_expired_cc_token_is_renewed_in_the_response_header_during_a_session() {
    let c = Client::new(SimConfig::default()).await;
    let old = c.apply_token("u1").await;
    c.send_ok("u1", &old, "CONNECT", "").await;
    c.sim.expire_cc_tokens();

    let a = c.send("u1", &old, "CHAT", "hello", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.json::<Value>()["resultCode"],
        "0",
        "the expired token was accepted"
    );
    let new = a
        .renewed_token()
        .expect("a new ccmessaging-token in the response header");
    assert_ne!(new, old);

    assert_eq!(
        c.poll_raw("u1", &old).await.status,
        StatusCode::UNAUTHORIZED,
        "the old token stops working"
    );
    let a = c.poll_raw("u1", &new).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.renewed_token(), None, "a live token is not renewed");
    assert_eq!(c.sim.stats().cc_tokens_renewed, 1);
}

#[tokio::test]
async fn an_expired_cc_token_without_a_session_gets_401() {
    let c = Client::new(SimConfig::default()).await;
    let t = c.apply_token("u1").await;
    c.sim.expire_cc_tokens();
    let a = c.poll_raw("u1", &t).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.renewed_token(), None);
    assert_eq!(
        c.send("u1", &t, "CONNECT", "", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    // After a DISCONNECT the session is over, so an expired token is refused again.
    let t = c.apply_token("u1").await;
    c.send_ok("u1", &t, "CONNECT", "").await;
    c.send_ok("u1", &t, "DISCONNECT", "").await;
    c.sim.expire_cc_tokens();
    assert_eq!(c.poll_raw("u1", &t).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_cc_token_expires_after_its_ttl() {
    let cfg = SimConfig {
        cc_token_ttl: Duration::from_millis(50),
        ..SimConfig::default()
    };
    let c = Client::new(cfg).await;
    let t = c.apply_token("u1").await;
    assert_eq!(c.poll_raw("u1", &t).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(c.poll_raw("u1", &t).await.status, StatusCode::UNAUTHORIZED);
}
