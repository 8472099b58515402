//! Click-to-call (create, events, support, drop) and v1/mobileagent/createcall.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::Client;
use crate::SimConfig;

const CREATE: &str = "/apiaccess/ccmessaging/v1/createClickToCall";
const EVENTS: &str = "/apiaccess/ccmessaging/v1/getClickToCallEvents?channel=WEB";
const SUPPORT: &str = "/apiaccess/ccmessaging/v1/checkClickToCallSupport?channel=WEB";
const DROP: &str = "/apiaccess/ccmessaging/v1/dropClickToCall";
const MOBILE: &str = "/apiaccess/ccmessaging/v1/mobileagent/createcall";

fn create(ability: &str) -> Value {
    json!({ "channel": "WEB", "mediaAbility": ability })
}

#[tokio::test]
async fn a_click_to_call_is_created_announced_and_dropped() {
    let c = Client::new(SimConfig::default()).await;
    let t = c.apply_token("u1").await;
    let a = c.get(SUPPORT, Some(&t)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.value(),
        json!({ "resultCode": "0", "resultDesc": "", "webRTCSupported": true, "clickToCallSupported": true })
    );
    let a = c.post(CREATE, Some(&t), create("0")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.value(),
        json!({ "resultCode": "0", "resultDesc": "null" })
    );

    let a = c.get(EVENTS, Some(&t)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.value(),
        json!({
            "resultCode": "0",
            "resultDesc": "Call connected",
            "eventId": "168101",
            "content": {
                "domain": "webrtc.sim.invalid",
                "gwAddresses": ["127.0.0.1:8443", "127.0.0.1:8444"],
                "accessCode": "179080000537636",
                "clickToCallCaller": "AnonymousCard"
            }
        })
    );
    let nothing = json!({ "resultCode": "0", "resultDesc": "" });
    assert_eq!(c.get(EVENTS, Some(&t)).await.value(), nothing);

    let a = c.post(CREATE, Some(&t), create("1")).await;
    assert_eq!(a.value()["resultCode"], "13", "one call at a time");

    let a = c.post(DROP, Some(&t), json!({ "channel": "WEB" })).await;
    assert_eq!(a.value(), json!({ "resultCode": "0", "resultDesc": "" }));
    let v = c.get(EVENTS, Some(&t)).await.value();
    assert_eq!(v["eventId"], "168102");
    assert_eq!(v["resultDesc"], "Call released");
    assert_eq!(c.get(EVENTS, Some(&t)).await.value(), nothing);

    let a = c.post(DROP, Some(&t), json!({ "channel": "WEB" })).await;
    assert_eq!(a.value()["resultCode"], "13", "nothing left to drop");
    let a = c.post(CREATE, Some(&t), create("1")).await;
    assert_eq!(a.value()["resultCode"], "0", "a new call after the drop");
}

#[tokio::test]
async fn click_to_call_belongs_to_the_tokens_user() {
    let c = Client::new(SimConfig::default()).await;
    let t1 = c.apply_token("u1").await;
    let t2 = c.apply_token("u2").await;
    c.post(CREATE, Some(&t1), create("0")).await;
    let nothing = json!({ "resultCode": "0", "resultDesc": "" });
    assert_eq!(c.get(EVENTS, Some(&t2)).await.value(), nothing);
    let a = c.post(DROP, Some(&t2), json!({ "channel": "WEB" })).await;
    assert_eq!(a.value()["resultCode"], "13");
    assert_eq!(c.get(EVENTS, Some(&t1)).await.value()["eventId"], "168101");
    for (method, path) in [
        ("GET", EVENTS),
        ("GET", SUPPORT),
        ("POST", DROP),
        ("POST", CREATE),
    ] {
        let a = if method == "GET" {
            c.get(path, None).await
        } else {
            c.post(path, None, create("0")).await
        };
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path} without a token");
    }
}

#[tokio::test]
async fn create_click_to_call_answers_7_12_and_13() {
    let c = Client::new(SimConfig {
        click_to_call: false,
        ..SimConfig::default()
    })
    .await;
    let t = c.apply_token("u1").await;
    let a = c.post(CREATE, Some(&t), create("0")).await;
    assert_eq!(a.value()["resultCode"], "7");
    let a = c.get(SUPPORT, Some(&t)).await;
    assert_eq!(a.value()["webRTCSupported"], false);
    assert_eq!(a.value()["clickToCallSupported"], false);

    let c = Client::new(SimConfig {
        agents_available: false,
        ..SimConfig::default()
    })
    .await;
    let t = c.apply_token("u1").await;
    let a = c.post(CREATE, Some(&t), create("1")).await;
    assert_eq!(
        a.value(),
        json!({ "resultCode": "12", "resultDesc": "The current time is not within the working time of the service agents" })
    );

    let c = Client::new(SimConfig::default()).await;
    let t = c.apply_token("u1").await;
    for body in [
        create("2"),
        json!({ "channel": "APP", "mediaAbility": "0" }),
        json!({ "channel": "WEB" }),
        json!({ "channel": "WEB", "mediaAbility": 0 }),
    ] {
        let a = c.post(CREATE, Some(&t), body.clone()).await;
        assert_eq!(a.value()["resultCode"], "13", "{body}");
    }
    let nothing = json!({ "resultCode": "0", "resultDesc": "" });
    assert_eq!(
        c.get(EVENTS, Some(&t)).await.value(),
        nothing,
        "no call was made"
    );
}

fn mobile(called: &str, data: &str, present: &str) -> Value {
    json!({ "called": called, "callData": data, "callerPresent": present })
}

#[tokio::test]
async fn mobile_agent_createcall_needs_only_the_access_headers() {
    let c = Client::new(SimConfig::default()).await;
    let a = c.post(MOBILE, None, mobile("88884432", "1", "95599")).await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.value();
    assert_eq!(v["resultCode"], "0");
    assert_eq!(v["resultDesc"], "Success");
    let data = v["resultData"].as_object().expect("resultData");
    assert_eq!(data.len(), 3);
    assert_eq!(data["sipServiceAddress"], "127.0.0.1:5063");
    let code = data["accesscode"].as_str().expect("accesscode");
    assert!(
        code.starts_with("179080000537636") && code.len() > 15,
        "{code}"
    );
    let serial = data["callSerialNo"].as_str().expect("callSerialNo");
    assert!(!serial.is_empty() && serial.len() <= 50);
    let again = c
        .post(MOBILE, None, mobile("88884432", "1", "95599"))
        .await
        .value();
    assert_ne!(again["resultData"]["callSerialNo"], serial);

    let longest = mobile(&"1".repeat(32), &"d".repeat(1024), &"9".repeat(32));
    assert_eq!(
        c.post(MOBILE, None, longest).await.value()["resultCode"],
        "0"
    );
    let no_present = json!({ "called": "88884432" });
    assert_eq!(
        c.post(MOBILE, None, no_present).await.value()["resultCode"],
        "0"
    );

    let req = axum::http::Request::post(MOBILE)
        .header("content-type", "application/json")
        .header("X-APP-Key", "sim-app-key")
        .body(axum::body::Body::from(mobile("1", "", "2").to_string()))
        .expect("request");
    assert_eq!(c.request(req).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn mobile_agent_createcall_answers_3001000003_and_3001000001() {
    let c = Client::new(SimConfig::default()).await;
    for body in [
        mobile(&"1".repeat(33), "", "95599"),
        mobile("", "", "95599"),
        json!({ "callData": "1", "callerPresent": "95599" }),
        mobile("88884432", &"d".repeat(1025), "95599"),
        mobile("88884432", "1", &"9".repeat(33)),
    ] {
        let a = c.post(MOBILE, None, body.clone()).await;
        assert_eq!(
            a.value(),
            json!({ "resultCode": "3001000003", "resultDesc": "input parameter validation failed" }),
            "{body}"
        );
    }
    let c = Client::new(SimConfig {
        mobile_agent: false,
        ..SimConfig::default()
    })
    .await;
    let a = c.post(MOBILE, None, mobile("88884432", "1", "95599")).await;
    assert_eq!(a.value()["resultCode"], "3001000001");
    assert!(a.value().get("resultData").is_none());
}
