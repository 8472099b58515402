//! Tests of [`TimClient`] against wiremock: the exact requests, every error path, the UserSig
//! cache.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::{body_json, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::*;
use crate::error::code;
use crate::wire::MsgElement;

const KEY: &str = "test-secret-key";
const APPID: u64 = 1400000000;

fn app(base: &str) -> TimApp {
    TimApp {
        name: "shop".into(),
        base_url: url::Url::parse(base).unwrap(),
        sdkappid: APPID,
        secret_key: Some(SecretString::from(KEY)),
        secret_key_file: None,
        admin_identifier: "administrator".into(),
        callback_token: None,
        callback_token_file: None,
        allow_unsigned_callbacks: false,
        rate_limit: 200,
        request_timeout: Duration::from_millis(300),
        sig_expire: Duration::from_secs(1000),
        stream_idle_timeout: Duration::from_secs(30),
    }
}

/// A client whose clock is `now` (unix seconds).
fn client(server: &MockServer, now: &Arc<AtomicU64>) -> TimClient {
    let now = now.clone();
    TimClient::with_clock(
        reqwest::Client::new(),
        app(&server.uri()),
        Arc::new(move || now.load(Ordering::SeqCst)),
    )
}

fn ok() -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_json(json!({"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}))
}

fn fail(c: i64) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(
        json!({"ActionStatus":"FAIL","ErrorInfo":format!("error {c}"),"ErrorCode":c}),
    )
}

fn query(r: &Request) -> HashMap<String, String> {
    r.url.query_pairs().into_owned().collect()
}

fn by_session(text: &str) -> SendMsgRequest {
    SendMsgRequest {
        session_id: Some("fd8a2e30-54de-4e40-bcaf-02718409c5cf".into()),
        from_account: None,
        to_account: None,
        msg_random: 8436874,
        msg_body: vec![MsgElement::text(text)],
        cloud_custom_data: Some("your cloud custom data".into()),
        exclude_from_user_resp_timeout: None,
    }
}

fn first_chunk() -> StreamMsgRequest {
    StreamMsgRequest {
        from_account: "@RBT#my_bot".into(),
        to_account: "user01".into(),
        chunk: "hello, ".into(),
        msg_key: None,
        finish: None,
    }
}

#[tokio::test]
async fn send_msg_by_session_posts_the_documented_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v4/desk_http_svc/send_msg"))
        .and(query_param("sdkappid", "1400000000"))
        .and(query_param("identifier", "administrator"))
        .and(query_param("contenttype", "json"))
        .and(body_json(json!({
            "SessionId": "fd8a2e30-54de-4e40-bcaf-02718409c5cf",
            "MsgRandom": 8436874,
            "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "欢迎"}}],
            "CloudCustomData": "your cloud custom data"
        })))
        .respond_with(ok())
        .expect(2)
        .mount(&server)
        .await;
    let now = Arc::new(AtomicU64::new(1_700_000_000));
    let c = client(&server, &now);
    assert!(c.send_msg(&by_session("欢迎")).await.unwrap().is_ok());
    assert!(c.send_msg(&by_session("欢迎")).await.is_ok());

    let reqs = server.received_requests().await.unwrap();
    let (q1, q2) = (query(&reqs[0]), query(&reqs[1]));
    let mut keys: Vec<_> = q1.keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["contenttype", "identifier", "random", "sdkappid", "usersig"]
    );
    // random: a u32, fresh per call (equal twice in a row with probability 2⁻³²).
    let r1: u32 = q1["random"].parse().unwrap();
    let r2: u32 = q2["random"].parse().unwrap();
    assert_ne!(r1, r2);
    // The UserSig verifies for the admin, and is cached.
    let claims =
        usersig::verify(&q1["usersig"], KEY, APPID, "administrator", 1_700_000_000).unwrap();
    assert_eq!(claims.time, 1_700_000_000);
    assert_eq!(claims.expire, 1000);
    assert_eq!(q1["usersig"], q2["usersig"]);
    assert_eq!(
        reqs[0].headers.get("content-type").unwrap(),
        "application/json"
    );
}

#[tokio::test]
async fn send_msg_by_accounts_with_a_custom_element() {
    let server = MockServer::start().await;
    let data = r#"{"src": "22","content": {"header": "卡片标题"},"customerServicePlugin": 0}"#;
    Mock::given(method("POST"))
        .and(path("/v4/desk_http_svc/send_msg"))
        .and(body_json(json!({
            "FromAccount": "@customer_service_account",
            "ToAccount": "user45",
            "MsgRandom": 82139,
            "MsgBody": [{"MsgType": "TIMCustomElem", "MsgContent": {"Data": data}}],
            "ExcludeFromUserRespTimeout": 1
        })))
        .respond_with(ok())
        .expect(1)
        .mount(&server)
        .await;
    let now = Arc::new(AtomicU64::new(1_700_000_000));
    let req = SendMsgRequest {
        session_id: None,
        from_account: Some("@customer_service_account".into()),
        to_account: Some("user45".into()),
        msg_random: 82139,
        msg_body: vec![MsgElement {
            msg_type: "TIMCustomElem".into(),
            msg_content: json!({ "Data": data }),
        }],
        cloud_custom_data: None,
        exclude_from_user_resp_timeout: Some(1),
    };
    client(&server, &now).send_msg(&req).await.unwrap();
}

#[tokio::test]
async fn send_stream_msg_posts_the_documented_request_and_returns_msgkey() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v4/openim_robot_http_svc/send_stream_msg"))
        .and(query_param("sdkappid", "1400000000"))
        .and(query_param("identifier", "administrator"))
        .and(query_param("contenttype", "json"))
        .and(body_json(
            json!({"From_Account": "@RBT#my_bot","To_Account": "user01","Chunk": "hello, "}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0,"MsgKey":"606781340_3986845397_1706000918"})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v4/openim_robot_http_svc/send_stream_msg"))
        .and(body_json(json!({"From_Account": "@RBT#my_bot","To_Account": "user01","Chunk": "world","MsgKey": "606781340_3986845397_1706000918","Finish": 1})))
        .respond_with(ok())
        .expect(1)
        .mount(&server)
        .await;
    let now = Arc::new(AtomicU64::new(1_700_000_000));
    let c = client(&server, &now);
    let a = c.send_stream_msg(&first_chunk()).await.unwrap();
    assert_eq!(
        a.msg_key.as_deref(),
        Some("606781340_3986845397_1706000918")
    );
    let last = StreamMsgRequest {
        chunk: "world".into(),
        msg_key: a.msg_key,
        finish: Some(1),
        ..first_chunk()
    };
    c.send_stream_msg(&last).await.unwrap();
    let reqs = server.received_requests().await.unwrap();
    assert!(query(&reqs[0]).contains_key("random"));
}

#[tokio::test]
async fn a_base_url_with_a_trailing_slash_gives_one_slash() {
    let server = MockServer::start().await;
    Mock::given(path("/v4/desk_http_svc/send_msg"))
        .respond_with(ok())
        .expect(1)
        .mount(&server)
        .await;
    let c = TimClient::new(reqwest::Client::new(), app(&format!("{}/", server.uri())));
    c.send_msg(&by_session("x")).await.unwrap();
}

#[tokio::test]
async fn every_documented_code_is_an_api_error_classified_retryable_or_final() {
    let server = MockServer::start().await;
    let now = Arc::new(AtomicU64::new(1_700_000_000));
    let c = client(&server, &now);
    let retryable = [
        code::DESK_INTERNAL,
        60007,
        60011,
        60018,
        60019,
        code::REST_TIMEOUT,
    ];
    let finals = [
        code::JSON_PARSE,
        code::MSG_RANDOM,
        code::MSG_BODY,
        code::NOT_ADMIN,
        code::TOO_LONG,
        code::DESK_PARAM,
        code::NO_SESSION,
        code::SIG_INVALID,
        code::SIG_PARSE,
        code::SIG_IDENTIFIER,
        code::SIG_SDKAPPID,
        code::NOT_DESK_APP,
    ];
    for (c_, want_retry) in retryable
        .iter()
        .map(|c| (*c, true))
        .chain(finals.iter().map(|c| (*c, false)))
    {
        server.reset().await;
        Mock::given(method("POST"))
            .respond_with(fail(c_))
            .mount(&server)
            .await;
        let e = c.send_msg(&by_session("x")).await.unwrap_err();
        match &e {
            TimError::Api { code, info, .. } => {
                assert_eq!(*code, c_);
                assert_eq!(info, &format!("error {c_}"));
            }
            other => panic!("{c_}: {other:?}"),
        }
        assert_eq!(e.is_retryable(), want_retry, "{c_}");
        assert_eq!(e.code(), c_.to_string());
        assert_eq!(e.is_rate_limited(), code::RATE_LIMITS.contains(&c_));
        // No retry except for 70001.
        assert_eq!(server.received_requests().await.unwrap().len(), 1, "{c_}");
    }
    // The robot's codes.
    for (c_, want_retry) in [(code::ROBOT_INTERNAL, true), (code::ROBOT_PARAM, false)] {
        server.reset().await;
        Mock::given(method("POST"))
            .respond_with(fail(c_))
            .mount(&server)
            .await;
        let e = c.send_stream_msg(&first_chunk()).await.unwrap_err();
        assert_eq!(e.code(), c_.to_string());
        assert_eq!(e.is_retryable(), want_retry);
        assert_eq!(e.endpoint(), TimEndpoint::RobotSendStreamMsg);
    }
}

#[tokio::test]
async fn fail_with_error_code_zero_or_a_string_code_is_still_a_failure() {
    let server = MockServer::start().await;
    let now = Arc::new(AtomicU64::new(1_700_000_000));
    let c = client(&server, &now);
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"ActionStatus":"FAIL","ErrorInfo":"session ended","ErrorCode":"141005"}),
        ))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"ActionStatus":"FAIL","ErrorInfo":"odd","ErrorCode":0})),
        )
        .mount(&server)
        .await;
    let e = c.send_msg(&by_session("x")).await.unwrap_err();
    assert_eq!(e.code(), "141005");
    assert_eq!(e.info(), "session ended");
    let e = c.send_msg(&by_session("x")).await.unwrap_err();
    assert!(matches!(e, TimError::Api { code: 0, .. }), "{e:?}");
}

#[tokio::test]
async fn an_expired_sig_is_signed_anew_and_retried_once() {
    let server = MockServer::start().await;
    let now = Arc::new(AtomicU64::new(1_700_000_000));
    let c = client(&server, &now);
    Mock::given(method("POST"))
        .respond_with(ok())
        .up_to_n_times(1)
        .mount(&server)
        .await;
    c.send_msg(&by_session("x")).await.unwrap();
    // Ten seconds later (well before renewal), Tencent says the sig expired, then accepts.
    now.fetch_add(10, Ordering::SeqCst);
    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(fail(code::SIG_EXPIRED))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ok())
        .mount(&server)
        .await;
    c.send_msg(&by_session("x")).await.unwrap();
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 2);
    let (s1, s2) = (
        query(&reqs[0])["usersig"].clone(),
        query(&reqs[1])["usersig"].clone(),
    );
    assert_ne!(s1, s2);
    let t1 = usersig::decode(&s1).unwrap().0.time;
    let t2 = usersig::decode(&s2).unwrap().0.time;
    assert_eq!((t1, t2), (1_700_000_000, 1_700_000_010));
    assert_eq!(reqs[0].body, reqs[1].body, "the retry sends the same body");

    // Twice 70001: one retry only, and the caller sees 70001.
    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(fail(code::SIG_EXPIRED))
        .mount(&server)
        .await;
    let e = c.send_stream_msg(&first_chunk()).await.unwrap_err();
    assert!(e.needs_new_sig());
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn the_admin_sig_is_renewed_after_80_percent_of_its_life() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ok())
        .mount(&server)
        .await;
    let t0 = 1_700_000_000;
    let now = Arc::new(AtomicU64::new(t0));
    let c = client(&server, &now); // sig_expire 1000 s
    c.send_msg(&by_session("x")).await.unwrap();
    now.store(t0 + 799, Ordering::SeqCst);
    c.send_msg(&by_session("x")).await.unwrap();
    now.store(t0 + 800, Ordering::SeqCst);
    c.send_msg(&by_session("x")).await.unwrap();
    c.send_msg(&by_session("x")).await.unwrap();
    let times: Vec<u64> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| usersig::decode(&query(r)["usersig"]).unwrap().0.time)
        .collect();
    assert_eq!(times, [t0, t0, t0 + 800, t0 + 800]);
}

#[tokio::test]
async fn http_500_is_a_retryable_status_error() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_string("upstream broke"))
        .mount(&server)
        .await;
    let now = Arc::new(AtomicU64::new(1_700_000_000));
    let e = client(&server, &now)
        .send_msg(&by_session("x"))
        .await
        .unwrap_err();
    match &e {
        TimError::Status {
            status, snippet, ..
        } => {
            assert_eq!(*status, 500);
            assert_eq!(snippet, "upstream broke");
        }
        other => panic!("{other:?}"),
    }
    assert!(e.is_retryable());
    let e = {
        server.reset().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(403))
            .mount(&server)
            .await;
        client(&server, &now)
            .send_msg(&by_session("x"))
            .await
            .unwrap_err()
    };
    assert!(!e.is_retryable(), "{e:?}");
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ok().set_delay(Duration::from_secs(3)))
        .mount(&server)
        .await;
    let now = Arc::new(AtomicU64::new(1_700_000_000));
    let started = std::time::Instant::now();
    let e = client(&server, &now)
        .send_stream_msg(&first_chunk())
        .await
        .unwrap_err();
    assert!(matches!(e, TimError::Timeout { .. }), "{e:?}");
    assert!(e.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_garbage_body_is_a_decode_error() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>gateway</html>"))
        .mount(&server)
        .await;
    let now = Arc::new(AtomicU64::new(1_700_000_000));
    let e = client(&server, &now)
        .send_msg(&by_session("x"))
        .await
        .unwrap_err();
    match &e {
        TimError::Decode { snippet, .. } => assert_eq!(snippet, "<html>gateway</html>"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_refused_connection_never_shows_the_usersig() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let c = TimClient::new(reqwest::Client::new(), app(&base));
    let e = c.send_msg(&by_session("x")).await.unwrap_err();
    assert!(matches!(e, TimError::Connect { .. }), "{e:?}");
    let shown = format!("{e} {e:?} {}", e.info());
    assert!(!shown.contains("usersig"), "{shown}");
    assert!(!shown.contains("sdkappid"), "{shown}");
    assert!(!format!("{c:?}").contains(KEY));
}

#[tokio::test]
async fn bodies_over_12_kb_and_unaddressed_sends_are_refused_before_sending() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ok())
        .mount(&server)
        .await;
    let now = Arc::new(AtomicU64::new(1_700_000_000));
    let c = client(&server, &now);
    let e = c
        .send_msg(&by_session(&"x".repeat(MAX_BODY_BYTES)))
        .await
        .unwrap_err();
    let shown = e.to_string();
    assert!(matches!(e, TimError::Invalid { .. }));
    let size = serde_json::to_vec(&by_session(&"x".repeat(MAX_BODY_BYTES)))
        .unwrap()
        .len();
    assert!(
        shown.contains(&format!(
            "body is {size} bytes, over the limit of 12288 bytes"
        )),
        "{shown}"
    );
    assert!(!e.is_retryable());
    let e = c
        .send_stream_msg(&StreamMsgRequest {
            chunk: "y".repeat(MAX_BODY_BYTES),
            ..first_chunk()
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("over the limit"), "{e}");
    let unaddressed = SendMsgRequest {
        session_id: None,
        from_account: Some("@cs".into()),
        ..by_session("x")
    };
    let e = c.send_msg(&unaddressed).await.unwrap_err();
    assert!(e.to_string().contains("SessionId"), "{e}");
    let empty = SendMsgRequest {
        msg_body: vec![],
        ..by_session("x")
    };
    assert!(
        c.send_msg(&empty)
            .await
            .unwrap_err()
            .to_string()
            .contains("MsgBody")
    );
    assert!(server.received_requests().await.unwrap().is_empty());
    // Just under the limit is sent.
    let base = serde_json::to_vec(&by_session("")).unwrap().len();
    c.send_msg(&by_session(&"z".repeat(MAX_BODY_BYTES - base)))
        .await
        .unwrap();
    let _: Value =
        serde_json::from_slice(&server.received_requests().await.unwrap()[0].body).unwrap();
}

#[tokio::test]
async fn an_answer_over_the_limit_is_a_final_error() {
    let server = MockServer::start().await;
    Mock::given(path("/v4/desk_http_svc/send_msg"))
        .respond_with(ResponseTemplate::new(200).set_body_string(format!(
            r#"{{"ActionStatus":"OK","ErrorCode":0,"pad":"{}"}}"#,
            "x".repeat(upstream::bounded::MAX_ANSWER_BYTES)
        )))
        .mount(&server)
        .await;
    let now = Arc::new(AtomicU64::new(1_700_000_000));
    let e = client(&server, &now)
        .send_msg(&by_session("hi"))
        .await
        .unwrap_err();
    assert!(matches!(e, TimError::TooLarge { .. }), "{e:?}");
    assert!(!e.is_retryable());
    assert_eq!(e.code(), "too_large");
}
