//! Tests of the simulator's Tencent IM side: in process through the router, and with the
//! relay's [`TimClient`] against a spawned simulator.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::super::tim::{SEND_PATH, STREAM_PATH};
use super::super::{SimConfig, Simulator, TimSimConfig};
use ::config::TimApp;
use ::tim::usersig::{self, unix_now};
use ::tim::wire::{MsgElement, SendMsgRequest, StreamMsgRequest};
use ::tim::{TimClient, TimError};

const KEY: &str = "sim-tim-secret-key";
const APPID: u64 = 1400000000;
const ADMIN: &str = "administrator";

struct Tim {
    sim: Simulator,
    router: Router,
}

impl Tim {
    fn new(cfg: TimSimConfig) -> Self {
        let sim = Simulator::new(SimConfig {
            tim: cfg,
            ..SimConfig::default()
        });
        let router = sim.router();
        Tim { sim, router }
    }

    async fn request(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = to_bytes(resp.into_body(), usize::MAX).await.expect("body");
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, v)
    }

    /// POST `path?query` with `body`.
    async fn post_raw(
        &self,
        path: &str,
        query: &str,
        body: impl Into<Body>,
    ) -> (StatusCode, Value) {
        let req = Request::post(format!("{path}?{query}"))
            .header("content-type", "application/json")
            .body(body.into())
            .expect("request");
        self.request(req).await
    }

    /// POST with a valid admin sig.
    async fn call(&self, path: &str, body: Value) -> Value {
        let (status, v) = self
            .post_raw(path, &query(&admin_sig()), body.to_string())
            .await;
        assert_eq!(status, StatusCode::OK);
        v
    }

    async fn get(&self, path: &str) -> Value {
        let req = Request::get(path).body(Body::empty()).expect("request");
        let (status, v) = self.request(req).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        v
    }

    async fn control(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.post_raw(path, "", body.to_string()).await
    }
}

fn admin_sig() -> String {
    usersig::sign(KEY, APPID, ADMIN, unix_now(), 3600)
}

fn query(sig: &str) -> String {
    query_as(ADMIN, sig)
}

fn query_as(identifier: &str, sig: &str) -> String {
    format!("sdkappid={APPID}&identifier={identifier}&usersig={sig}&random=12345&contenttype=json")
}

fn code(v: &Value) -> i64 {
    v["ErrorCode"]
        .as_i64()
        .unwrap_or_else(|| panic!("no ErrorCode: {v}"))
}

fn text_msg(session: &str, random: u32) -> Value {
    json!({"SessionId": session, "MsgRandom": random,
           "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hi"}}]})
}

#[tokio::test]
async fn bad_expired_and_foreign_sigs_are_refused_with_tencent_s_codes() {
    let t = Tim::new(TimSimConfig::default());
    let body = text_msg("s1", 1).to_string();
    let now = unix_now();
    let cases = [
        (
            query(&usersig::sign("wrong key", APPID, ADMIN, now, 3600)),
            70009,
        ),
        (
            query(&usersig::sign(KEY, APPID, ADMIN, now - 1000, 300)),
            70001,
        ),
        (query("garbage"), 70003),
        (
            query(&usersig::sign(KEY, APPID, "someone", now, 3600)),
            70013,
        ),
        (
            query(&usersig::sign(KEY, 1400000001, ADMIN, now, 3600)),
            70014,
        ),
        (
            format!(
                "sdkappid=1400000001&identifier={ADMIN}&usersig={}&random=1&contenttype=json",
                admin_sig()
            ),
            70020,
        ),
        (
            format!("sdkappid={APPID}&identifier={ADMIN}&random=1&contenttype=json"),
            60004,
        ),
        (
            format!(
                "identifier={ADMIN}&usersig={}&random=1&contenttype=json",
                admin_sig()
            ),
            60012,
        ),
    ];
    for (q, want) in &cases {
        let (status, v) = t.post_raw(SEND_PATH, q, body.clone()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["ActionStatus"], "FAIL", "{v}");
        assert_eq!(code(&v), *want, "{q}: {v}");
        assert!(!v["ErrorInfo"].as_str().unwrap().is_empty());
    }
    // A valid sig of a non-admin: 90009 on Desk, 60010 on the robot; not a sig rejection.
    let user = usersig::sign(KEY, APPID, "user1", now, 3600);
    let (_, v) = t
        .post_raw(SEND_PATH, &query_as("user1", &user), body.clone())
        .await;
    assert_eq!(code(&v), 90009);
    let (_, v) = t
        .post_raw(
            STREAM_PATH,
            &query_as("user1", &user),
            json!({"From_Account":"@RBT#b","To_Account":"u","Chunk":"x"}).to_string(),
        )
        .await;
    assert_eq!(code(&v), 60010);
    // random and contenttype are checked.
    let sig = admin_sig();
    let (_, v) = t
        .post_raw(
            SEND_PATH,
            &format!(
                "sdkappid={APPID}&identifier={ADMIN}&usersig={sig}&random=-1&contenttype=json"
            ),
            body.clone(),
        )
        .await;
    assert_eq!(code(&v), 60002);
    let (_, v) = t
        .post_raw(
            SEND_PATH,
            &format!("sdkappid={APPID}&identifier={ADMIN}&usersig={sig}&random=1"),
            body.clone(),
        )
        .await;
    assert_eq!(code(&v), 60002);

    let stats = t.get("/sim/tim/stats").await;
    assert_eq!(stats["sigRejected"], cases.len() as u64);
    assert_eq!(stats["calls"], cases.len() as u64 + 4);
    assert!(
        t.get("/sim/tim/messages")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn calls_over_the_rate_limit_are_answered_60007() {
    let t = Tim::new(TimSimConfig {
        rate_limit: 5,
        ..TimSimConfig::default()
    });
    let mut limited = 0;
    for i in 0..12 {
        let v = t.call(SEND_PATH, text_msg("s", i)).await;
        if code(&v) == 60007 {
            assert_eq!(v["ActionStatus"], "FAIL");
            limited += 1;
        } else {
            assert_eq!(code(&v), 0, "{v}");
        }
    }
    // 12 calls span at most two wall-clock seconds: at most 10 are accepted.
    assert!(limited >= 2, "{limited}");
    let stats = t.get("/sim/tim/stats").await;
    assert_eq!(stats["rateLimited"], limited);
    assert_eq!(stats["calls"], 12);
    assert!(
        stats["maxCallsInOneSecond"].as_u64().unwrap() >= 6,
        "{stats}"
    );
    let accepted = t.get("/sim/tim/messages").await;
    assert_eq!(accepted.as_array().unwrap().len(), 12 - limited as usize);
    // The client sees a rate limit.
    assert!(::tim::error::code::RATE_LIMITS.contains(&::tim::error::code::SIM_RATE_LIMIT));
}

#[tokio::test]
async fn a_stream_gets_a_msgkey_carries_it_and_is_closed_by_finish() {
    let t = Tim::new(TimSimConfig::default());
    let first = t
        .call(
            STREAM_PATH,
            json!({"From_Account":"@RBT#my_bot","To_Account":"user01","Chunk":"hello, "}),
        )
        .await;
    assert_eq!(code(&first), 0, "{first}");
    let key = first["MsgKey"].as_str().unwrap().to_owned();
    assert!(key.starts_with("1400000000_"), "{key}");
    let mid = t
        .call(
            STREAM_PATH,
            json!({"From_Account":"@RBT#my_bot","To_Account":"user01","Chunk":"wor","MsgKey":key}),
        )
        .await;
    assert_eq!(mid["MsgKey"], key);
    // A MsgKey for another user, or an unknown one: 10004.
    let other = t
        .call(
            STREAM_PATH,
            json!({"From_Account":"@RBT#my_bot","To_Account":"user02","Chunk":"x","MsgKey":key}),
        )
        .await;
    assert_eq!(code(&other), 10004);
    let unknown = t
        .call(
            STREAM_PATH,
            json!({"From_Account":"@RBT#my_bot","To_Account":"user01","Chunk":"x","MsgKey":"nope"}),
        )
        .await;
    assert_eq!(code(&unknown), 10004);
    let last = t
        .call(STREAM_PATH, json!({"From_Account":"@RBT#my_bot","To_Account":"user01","Chunk":"ld","MsgKey":key,"Finish":1}))
        .await;
    assert_eq!(code(&last), 0);
    let after = t
        .call(
            STREAM_PATH,
            json!({"From_Account":"@RBT#my_bot","To_Account":"user01","Chunk":"!","MsgKey":key}),
        )
        .await;
    assert_eq!(code(&after), 10004, "{after}");
    // A second stream to the same user gets another key.
    let second = t
        .call(
            STREAM_PATH,
            json!({"From_Account":"@RBT#my_bot","To_Account":"user01","Chunk":"again","Finish":1}),
        )
        .await;
    assert_ne!(second["MsgKey"], key);
    for bad in [
        json!({"To_Account":"u","Chunk":"x"}),
        json!({"From_Account":"b","To_Account":"u"}),
        json!({"From_Account":"b","To_Account":"u","Chunk":"x","Finish":2}),
    ] {
        assert_eq!(code(&t.call(STREAM_PATH, bad).await), 10004);
    }
    let streams = t.get("/sim/tim/streams").await;
    assert_eq!(
        streams,
        json!([
            {"msgKey": key, "from": "@RBT#my_bot", "to": "user01", "text": "hello, world", "calls": 3, "finished": true},
            {"msgKey": second["MsgKey"], "from": "@RBT#my_bot", "to": "user01", "text": "again", "calls": 1, "finished": true},
        ])
    );
}

#[tokio::test]
async fn send_msg_is_deduplicated_by_msg_random_per_addressing() {
    let t = Tim::new(TimSimConfig::default());
    let by_accounts = json!({"FromAccount":"@cs","ToAccount":"user45","MsgRandom":7,
        "MsgBody":[{"MsgType":"TIMCustomElem","MsgContent":{"Data":"{}"}}],
        "CloudCustomData":"ccd","ExcludeFromUserRespTimeout":1});
    for body in [
        text_msg("s1", 7),
        text_msg("s1", 7),
        text_msg("s2", 7),
        by_accounts.clone(),
        by_accounts,
        text_msg("s1", 8),
    ] {
        assert_eq!(code(&t.call(SEND_PATH, body).await), 0);
    }
    let m = t.get("/sim/tim/messages").await;
    let dups: Vec<bool> = m
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["duplicate"].as_bool().unwrap())
        .collect();
    assert_eq!(dups, [false, true, false, false, true, false]);
    assert_eq!(
        m[3],
        json!({"FromAccount":"@cs","ToAccount":"user45","MsgRandom":7,
               "MsgBody":[{"MsgType":"TIMCustomElem","MsgContent":{"Data":"{}"}}],
               "CloudCustomData":"ccd","ExcludeFromUserRespTimeout":1,"duplicate":false})
    );
    assert_eq!(m[0]["SessionId"], "s1");
    assert!(m[0].get("FromAccount").is_none());

    t.control("/sim/tim/reset", json!({})).await;
    assert_eq!(t.get("/sim/tim/messages").await, json!([]));
    assert_eq!(t.get("/sim/tim/stats").await["calls"], 0);
    assert_eq!(code(&t.call(SEND_PATH, text_msg("s1", 7)).await), 0);
    assert_eq!(t.get("/sim/tim/messages").await[0]["duplicate"], false);
}

#[tokio::test]
async fn send_msg_bodies_are_checked_with_the_documented_codes() {
    let t = Tim::new(TimSimConfig::default());
    let q = query(&admin_sig());
    let (_, v) = t.post_raw(SEND_PATH, &q, "{not json").await;
    assert_eq!(code(&v), 90001);
    let (_, v) = t
        .post_raw(SEND_PATH, &q, r#"{"SessionId":"s","MsgBody":[]}"#)
        .await;
    assert_eq!(code(&v), 90005);
    let (_, v) = t
        .post_raw(
            SEND_PATH,
            &q,
            r#"{"SessionId":"s","MsgRandom":"7","MsgBody":[{}]}"#,
        )
        .await;
    assert_eq!(code(&v), 90005);
    let (_, v) = t
        .post_raw(
            SEND_PATH,
            &q,
            r#"{"SessionId":"s","MsgRandom":7,"MsgBody":{}}"#,
        )
        .await;
    assert_eq!(code(&v), 90007);
    let (_, v) = t
        .post_raw(
            SEND_PATH,
            &q,
            r#"{"FromAccount":"a","MsgRandom":7,"MsgBody":[{}]}"#,
        )
        .await;
    assert_eq!(code(&v), 141004);
    let (_, v) = t
        .post_raw(
            SEND_PATH,
            &q,
            r#"{"SessionId":"s","MsgRandom":7,"MsgBody":[{}],"ExcludeFromUserRespTimeout":3}"#,
        )
        .await;
    assert_eq!(code(&v), 141004);
    let big = text_msg(&"s".repeat(13 * 1024), 1).to_string();
    let (_, v) = t.post_raw(SEND_PATH, &q, big).await;
    assert_eq!(code(&v), 93000);
    assert!(
        t.get("/sim/tim/messages")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn faults_answer_the_next_calls_then_stop() {
    let t = Tim::new(TimSimConfig::default());
    let (s, _) = t
        .control(
            "/sim/tim/faults",
            json!({"endpoint":"send_msg","errorCode":141002,"errorInfo":"内部错误","times":2}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    t.control(
        "/sim/tim/faults",
        json!({"endpoint":"send_stream_msg","status":500}),
    )
    .await;
    let stream = json!({"From_Account":"@RBT#b","To_Account":"u","Chunk":"x"});
    let (status, _) = t
        .post_raw(STREAM_PATH, &query(&admin_sig()), stream.to_string())
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(code(&t.call(STREAM_PATH, stream.clone()).await), 0);
    for _ in 0..2 {
        let v = t.call(SEND_PATH, text_msg("s", 1)).await;
        assert_eq!(
            (code(&v), v["ErrorInfo"].as_str().unwrap()),
            (141002, "内部错误")
        );
    }
    assert_eq!(code(&t.call(SEND_PATH, text_msg("s", 1)).await), 0);
    // A delay-only fault delays, then the call is processed.
    t.control("/sim/tim/faults", json!({"delayMs":150})).await;
    let started = std::time::Instant::now();
    assert_eq!(code(&t.call(SEND_PATH, text_msg("s", 2)).await), 0);
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(t.sim.tim().messages().len(), 2);
    // Nonsense faults are refused.
    let (s, _) = t.control("/sim/tim/faults", json!({"times":1})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = t
        .control("/sim/tim/faults", json!({"errorCode":1,"status":500}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = t
        .control("/sim/tim/faults", json!({"endpoint":"poll","errorCode":1}))
        .await;
    assert!(s.is_client_error());
}

/// What a callback receiver saw: query pairs and body.
type Seen = Arc<Mutex<Vec<(Vec<(String, String)>, Value)>>>;

async fn callback_receiver() -> (String, Seen) {
    use axum::extract::{RawQuery, State};
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(
            "/tim/shop/callback",
            axum::routing::post(
                |State(seen): State<Seen>,
                 RawQuery(q): RawQuery,
                 axum::Json(body): axum::Json<Value>| async move {
                    let pairs = url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
                        .into_owned()
                        .collect();
                    seen.lock().unwrap().push((pairs, body));
                    axum::Json(json!({"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}))
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/tim/shop/callback",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test]
async fn callbacks_are_sent_with_tencent_s_query_and_a_good_bad_or_stale_sign() {
    let t = Tim::new(TimSimConfig::default());
    let (url, seen) = callback_receiver().await;
    let body = json!({"CallbackCommand":"Bot.OnC2CMessage","From_Account":"user01","To_Account":"@RBT#b","MsgBody":[]});
    for sign in ["good", "bad", "stale"] {
        let (status, v) = t
            .control(
                "/sim/tim/callback",
                json!({"url":url,"command":"Bot.OnC2CMessage","body":body,"sign":sign}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["status"], 200);
        assert_eq!(v["body"]["ActionStatus"], "OK");
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let now = unix_now();
    for (i, (q, got)) in seen.iter().enumerate() {
        assert_eq!(got, &body);
        let get = |k: &str| {
            q.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no {k}"))
        };
        assert_eq!(get("SdkAppid"), "1400000000");
        assert_eq!(get("CallbackCommand"), "Bot.OnC2CMessage");
        assert_eq!(get("contenttype"), "json");
        assert_eq!(get("ClientIP"), "127.0.0.1");
        assert!(!get("OptPlatform").is_empty());
        let time: u64 = get("RequestTime").parse().unwrap();
        let good = super::super::tim::callback_sign("sim-callback-token", time);
        match i {
            0 => {
                assert!(now.abs_diff(time) <= 2);
                assert_eq!(get("Sign"), good);
            }
            1 => {
                assert!(now.abs_diff(time) <= 2);
                assert_ne!(get("Sign"), good);
            }
            _ => {
                assert!(now - time >= 3000, "stale by an hour");
                assert_eq!(get("Sign"), good);
            }
        }
    }
    // Sign = hex sha256(token + RequestTime).
    assert_eq!(
        super::super::tim::callback_sign("abc", 1),
        sha256_hex("abc1")
    );
    // An unreachable URL is a 502, not a hang.
    let (status, _) = t
        .control(
            "/sim/tim/callback",
            json!({"url":"http://127.0.0.1:1/x","command":"c","body":{}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
}

fn sha256_hex(s: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn the_relay_s_client_is_accepted_by_the_simulator() {
    let sim = crate::spawn(SimConfig::default()).await.unwrap();
    let app = TimApp {
        name: "shop".into(),
        base_url: url::Url::parse(&sim.base_url()).unwrap(),
        sdkappid: APPID,
        secret_key: Some(SecretString::from(KEY)),
        secret_key_file: None,
        admin_identifier: ADMIN.into(),
        callback_token: None,
        callback_token_file: None,
        allow_unsigned_callbacks: false,
        rate_limit: 200,
        request_timeout: Duration::from_secs(5),
        sig_expire: Duration::from_secs(86400),
        stream_idle_timeout: Duration::from_secs(30),
    };
    let c = TimClient::new(reqwest::Client::new(), app.clone());
    let msg = SendMsgRequest {
        session_id: Some("s1".into()),
        from_account: None,
        to_account: None,
        msg_random: ::tim::wire::msg_random("msg-1"),
        msg_body: vec![MsgElement::text("你好")],
        cloud_custom_data: None,
        exclude_from_user_resp_timeout: None,
    };
    c.send_msg(&msg).await.unwrap();
    c.send_msg(&msg).await.unwrap();
    let got = sim.tim().messages();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].msg_random, ::tim::wire::msg_random("msg-1"));
    assert!(got[1].duplicate);

    let mut req = StreamMsgRequest {
        from_account: "@RBT#my_bot".into(),
        to_account: "user01".into(),
        chunk: "hello, ".into(),
        msg_key: None,
        finish: None,
    };
    let key = c.send_stream_msg(&req).await.unwrap().msg_key;
    assert!(key.is_some());
    req.msg_key = key;
    req.chunk = "world".into();
    req.finish = Some(1);
    c.send_stream_msg(&req).await.unwrap();
    let e = c.send_stream_msg(&req).await.unwrap_err();
    assert!(matches!(e, TimError::Api { code: 10004, .. }), "{e:?}");
    assert!(!e.is_retryable());
    assert_eq!(sim.tim().streams()[0].text, "hello, world");

    // A wrong key: 70009, final; counted.
    let wrong = TimClient::new(
        reqwest::Client::new(),
        TimApp {
            secret_key: Some(SecretString::from("not the key")),
            ..app
        },
    );
    let e = wrong.send_msg(&msg).await.unwrap_err();
    assert_eq!(e.code(), "70009");
    assert!(!e.is_retryable());
    assert_eq!(sim.tim().stats().sig_rejected, 1);
}

#[test]
fn the_tim_settings_read_with_defaults_and_stay_secret() {
    let cfg: SimConfig =
        serde_json::from_value(json!({ "tim": { "rate_limit": 5 } })).expect("config");
    assert_eq!(cfg.tim.rate_limit, 5);
    assert_eq!(cfg.tim.sdkappid, 1400000000);
    assert_eq!(cfg.tim.secret_key, "sim-tim-secret-key");
    assert_eq!(cfg.tim.admin_identifier, "administrator");
    assert_eq!(cfg.tim.callback_token, "sim-callback-token");
    assert_eq!(SimConfig::default().tim.rate_limit, 200);
    assert!(serde_json::from_value::<SimConfig>(json!({ "tim": { "ratelimit": 5 } })).is_err());
    let shown = format!("{cfg:?}");
    assert!(!shown.contains("sim-tim-secret-key") && !shown.contains("sim-callback-token"));
}

#[tokio::test]
async fn the_client_sees_the_simulator_s_rate_limit_as_a_rate_limit() {
    let sim = crate::spawn(SimConfig {
        tim: TimSimConfig {
            rate_limit: 1,
            ..TimSimConfig::default()
        },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let app = TimApp {
        name: "shop".into(),
        base_url: url::Url::parse(&sim.base_url()).unwrap(),
        sdkappid: APPID,
        secret_key: Some(SecretString::from(KEY)),
        secret_key_file: None,
        admin_identifier: ADMIN.into(),
        callback_token: None,
        callback_token_file: None,
        allow_unsigned_callbacks: false,
        rate_limit: 1,
        request_timeout: Duration::from_secs(5),
        sig_expire: Duration::from_secs(86400),
        stream_idle_timeout: Duration::from_secs(30),
    };
    let c = TimClient::new(reqwest::Client::new(), app);
    let req = StreamMsgRequest {
        from_account: "@RBT#my_bot".into(),
        to_account: "user01".into(),
        chunk: "x".into(),
        msg_key: None,
        finish: Some(1),
    };
    // Three calls span at most two wall-clock seconds: at least one is refused.
    let mut limited = 0;
    for _ in 0..3 {
        if let Err(e) = c.send_stream_msg(&req).await {
            assert!(e.is_rate_limited() && e.is_retryable(), "{e:?}");
            limited += 1;
        }
    }
    assert!(limited >= 1);
    assert_eq!(sim.tim().stats().rate_limited, limited);
}
