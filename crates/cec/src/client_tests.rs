//! The client against the simulator (token life cycle) and against a wiremock fake (the exact
//! request shape).

use std::time::Duration;

use wiremock::matchers::{body_partial_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::CecClient;
use super::error::CecError;
use super::wire::SendRequest;
use config::CecTenant;
use sim::{self, Endpoint as SimEndpoint, Fault, SimConfig};

fn tenant(base: &str) -> CecTenant {
    let sc = SimConfig::default();
    let mut t = CecTenant::simulated(
        "t",
        url::Url::parse(base).unwrap(),
        &sc.app_key,
        &sc.app_secret,
        &sc.channel_config_id,
    );
    t.request_timeout = Duration::from_secs(2);
    t
}

fn client(base: &str) -> CecClient {
    CecClient::new(CecClient::http_client().unwrap(), tenant(base))
}

fn chat(user: &str, text: &str, id: &str) -> SendRequest {
    SendRequest {
        channel: "WEB".into(),
        content: text.into(),
        control_type: "CHAT".into(),
        from: user.into(),
        media_type: "TEXT".into(),
        sender_nickname: None,
        source_type: "CUSTOMER".into(),
        timestamp: Some("1700000000000".into()),
        to: SimConfig::default().channel_config_id,
        user_agent: None,
        sender_avatar: None,
        message_id: Some(id.into()),
        trans_data: None,
    }
}

async fn connected(c: &CecClient, user: &str) {
    let mut req = chat(user, "", "connect");
    req.control_type = "CONNECT".into();
    let rsp = c.send(&req).await.unwrap();
    assert_eq!(rsp.result_code, "0", "{rsp:?}");
}

#[tokio::test]
async fn the_access_token_is_fetched_once_for_concurrent_callers() {
    let s = sim::spawn(SimConfig::default()).await.unwrap();
    let c = client(&s.base_url());
    let users: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    futures::future::join_all(users.iter().map(|u| c.poll(u)))
        .await
        .into_iter()
        .for_each(|r| {
            r.unwrap();
        });
    assert_eq!(s.stats().access_tokens_issued, 1);
    s.expire_access_tokens();
    futures::future::join_all(users.iter().map(|u| c.poll(u)))
        .await
        .into_iter()
        .for_each(|r| {
            r.unwrap();
        });
    // One refresh for all twenty after the refusal: each caller's 401 invalidates only the token
    // it used, which the first refresh already replaced.
    assert_eq!(s.stats().access_tokens_issued, 2, "{:?}", s.stats());
}

#[tokio::test]
async fn an_expired_user_token_is_renewed_from_the_response_header() {
    let s = sim::spawn(SimConfig::default()).await.unwrap();
    let c = client(&s.base_url());
    connected(&c, "alice").await;
    let before = c.user_token("alice").unwrap();
    s.expire_cc_tokens();
    c.send(&chat("alice", "hi", "m1")).await.unwrap();
    let after = c.user_token("alice").unwrap();
    assert_ne!(before, after, "the header's token replaced the old one");
    assert_eq!(s.stats().cc_tokens_renewed, 1);
    c.poll("alice").await.unwrap();
    assert_eq!(
        s.stats().cc_tokens_renewed,
        1,
        "the renewed token is used from then on"
    );
}

#[tokio::test]
async fn a_401_renews_the_token_and_retries_once() {
    let s = sim::spawn(SimConfig::default()).await.unwrap();
    let c = client(&s.base_url());
    c.poll("bob").await.unwrap();
    let issued = s.stats().cc_tokens_issued;
    // Without a session an expired token is refused (401): the client applies again and retries.
    s.expire_cc_tokens();
    c.poll("bob").await.unwrap();
    assert_eq!(s.stats().cc_tokens_issued, issued + 1);
    // A 401 that persists is reported, not retried forever.
    s.inject_fault(Fault::status(SimEndpoint::Poll, 401));
    let e = c.poll("bob").await.unwrap_err();
    assert!(matches!(e, CecError::Unauthorized { .. }), "{e}");
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn upstream_faults_become_typed_errors() {
    let s = sim::spawn(SimConfig::default()).await.unwrap();
    let c = client(&s.base_url());
    s.inject_fault(Fault::status(SimEndpoint::Poll, 503).times(1));
    let e = c.poll("u").await.unwrap_err();
    assert!(
        matches!(e, CecError::Status { status: 503, .. }) && e.is_retryable(),
        "{e}"
    );
    s.inject_fault(Fault::body(SimEndpoint::Poll, sim::FaultBody::Garbage).times(1));
    let e = c.poll("u").await.unwrap_err();
    assert!(
        matches!(e, CecError::Decode { .. }) && e.is_retryable(),
        "{e}"
    );
    s.inject_fault(Fault::delay(SimEndpoint::Poll, Duration::from_secs(5)).times(1));
    let e = c.poll("u").await.unwrap_err();
    assert!(
        matches!(e, CecError::Timeout { .. }) && e.is_retryable(),
        "{e}"
    );
    c.poll("u").await.unwrap();
}

#[tokio::test]
async fn requests_have_the_documented_shape() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/apigovernance/api/oauth/tokenByAkSk"))
        .and(header("X-Token-Expire", "600"))
        .and(body_partial_json(serde_json::json!({"app_key": "sim-app-key", "app_secret": "sim-app-secret"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "AccessToken": "AT1", "ApplyType": "Bearer", "CreateTime": "1545650171", "Expires": "600"
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/apiaccess/ccmessaging/applyToken"))
        .and(header("x-app-key", "sim-app-key"))
        .and(header("Authorization", "Bearer AT1"))
        .and(body_partial_json(serde_json::json!({"userId": "carol", "userName": "carol", "channelId": "1011577355744904195", "locale": "zh"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"token": "CT1", "resultCode": "0"})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/apiaccess/ccmessaging/send"))
        .and(header("ccmessaging-token", "CT1"))
        .and(header("Authorization", "Bearer AT1"))
        .and(header("content-type", "application/json"))
        .and(body_partial_json(serde_json::json!({
            "channel": "WEB", "content": "hi", "controlType": "CHAT", "from": "carol",
            "mediaType": "TEXT", "sourceType": "CUSTOMER", "to": "1011577355744904195", "messageId": "m1"
        })))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("ccmessaging-token", "CT2")
                .set_body_json(serde_json::json!({"resultCode": "0", "resultDesc": "sendUserMessage successfully."})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/apiaccess/ccmessaging/poll"))
        .and(query_param("receiverId", "carol"))
        .and(query_param("channel", "WEB"))
        .and(header("ccmessaging-token", "CT2"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"resultCode": "0", "downlinkMessages": []})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server.uri());
    let rsp = c.send(&chat("carol", "hi", "m1")).await.unwrap();
    assert_eq!(rsp.result_code, "0");
    c.poll("carol").await.unwrap();
}

#[tokio::test]
async fn every_operation_goes_to_its_documented_path() {
    use super::wire_ops::*;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/apigovernance/api/oauth/tokenByAkSk"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"AccessToken": "AT", "Expires": "600"})),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/apiaccess/ccmessaging/applyToken"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"token": "CT", "resultCode": "0"})),
        )
        .mount(&server)
        .await;
    let ok = || ResponseTemplate::new(200).set_body_json(serde_json::json!({"resultCode": "0"}));
    let user_call = |m: &'static str, p: &'static str| {
        Mock::given(method(m))
            .and(path(p))
            .and(header("ccmessaging-token", "CT"))
            .and(header("Authorization", "Bearer AT"))
            .and(header("x-app-key", "sim-app-key"))
    };
    user_call("POST", "/apiaccess/ccmessaging/queryQueueInfo")
        .and(body_partial_json(
            serde_json::json!({"userId": "u", "channel": "WEB"}),
        ))
        .respond_with(ok())
        .expect(1)
        .mount(&server)
        .await;
    user_call("POST", "/apiaccess/ccmessaging/saveSatisfaction")
        .and(body_partial_json(
            serde_json::json!({"evaluation": "5", "userId": "u"}),
        ))
        .respond_with(ok())
        .expect(1)
        .mount(&server)
        .await;
    user_call("POST", "/apiaccess/ccmessaging/uploadFileStream")
        .and(body_partial_json(
            serde_json::json!({"fileType": "png", "fileStream": "AAA=", "channel": "WEB"}),
        ))
        .respond_with(ok())
        .expect(1)
        .mount(&server)
        .await;
    user_call("POST", "/apiaccess/ccmessaging/downloadFileStream")
        .and(body_partial_json(
            serde_json::json!({"fileId": "f1", "fileType": "png"}),
        ))
        .respond_with(ok())
        .expect(1)
        .mount(&server)
        .await;
    user_call("POST", "/apiaccess/ccmessaging/queryPhraseByKeyword")
        .and(body_partial_json(
            serde_json::json!({"strContent": "ab", "locale": "zh"}),
        ))
        .respond_with(ok())
        .expect(1)
        .mount(&server)
        .await;
    user_call("POST", "/apiaccess/ccmessaging/v1/createClickToCall")
        .and(body_partial_json(
            serde_json::json!({"channel": "WEB", "mediaAbility": "1"}),
        ))
        .respond_with(ok())
        .expect(1)
        .mount(&server)
        .await;
    user_call("GET", "/apiaccess/ccmessaging/v1/getClickToCallEvents")
        .and(query_param("channel", "WEB"))
        .respond_with(ok())
        .expect(1)
        .mount(&server)
        .await;
    user_call("GET", "/apiaccess/ccmessaging/v1/checkClickToCallSupport")
        .and(query_param("channel", "WEB"))
        .respond_with(ok())
        .expect(1)
        .mount(&server)
        .await;
    user_call("POST", "/apiaccess/ccmessaging/v1/dropClickToCall")
        .and(body_partial_json(serde_json::json!({"channel": "WEB"})))
        .respond_with(ok())
        .expect(1)
        .mount(&server)
        .await;
    user_call("POST", "/apiaccess/ccmessaging/doLeaveMessage")
        .and(body_partial_json(
            serde_json::json!({"callId": "c", "caller": "138", "leaveMessage": "m"}),
        ))
        .respond_with(ok())
        .expect(1)
        .mount(&server)
        .await;
    user_call(
        "POST",
        "/apiaccess/ccmessaging/v1/robot/feedbacksatisfaction",
    )
    .and(body_partial_json(
        serde_json::json!({"feedback": 0, "feedbackContent": "bad", "from": "u", "interIdx": "2"}),
    ))
    .respond_with(ok())
    .expect(1)
    .mount(&server)
    .await;
    Mock::given(method("POST"))
        .and(path("/apiaccess/ccmessaging/v1/mobileagent/createcall"))
        .and(header("Authorization", "Bearer AT"))
        .and(body_partial_json(
            serde_json::json!({"called": "88884432", "callerPresent": "95599"}),
        ))
        .respond_with(ok())
        .expect(1)
        .mount(&server)
        .await;

    let c = client(&server.uri());
    let ch = SimConfig::default().channel_config_id;
    let web = || "WEB".to_owned();
    c.query_queue_info(
        "u",
        &QueueInfoRequest {
            user_id: "u".into(),
            channel_config_id: ch.clone(),
            channel: web(),
        },
    )
    .await
    .unwrap();
    c.save_satisfaction(&SatisfactionRequest {
        channel: web(),
        user_id: "u".into(),
        evaluation: "5".into(),
        comment: "ok".into(),
        channel_config_id: ch,
    })
    .await
    .unwrap();
    c.upload(
        "u",
        &UploadRequest {
            file_type: "png".into(),
            file_stream: "AAA=".into(),
            channel: web(),
        },
    )
    .await
    .unwrap();
    c.download(
        "u",
        &DownloadRequest {
            file_id: "f1".into(),
            channel: web(),
            file_type: "png".into(),
        },
    )
    .await
    .unwrap();
    c.phrases(
        "u",
        &PhraseRequest {
            str_content: "ab".into(),
            locale: "zh".into(),
            channel: web(),
        },
    )
    .await
    .unwrap();
    c.create_click_to_call(
        "u",
        &ClickToCallRequest {
            channel: web(),
            media_ability: "1".into(),
        },
    )
    .await
    .unwrap();
    c.click_to_call_events("u").await.unwrap();
    c.click_to_call_support("u").await.unwrap();
    c.drop_click_to_call("u").await.unwrap();
    c.leave_message(
        "u",
        &LeaveMessageRequest {
            call_id: "c".into(),
            caller: "138".into(),
            leave_message: "m".into(),
            channel: web(),
        },
    )
    .await
    .unwrap();
    c.robot_feedback(&RobotFeedbackRequest {
        feedback: 0,
        feedback_content: Some("bad".into()),
        from: "u".into(),
        inter_idx: "2".into(),
    })
    .await
    .unwrap();
    c.mobile_agent_call(&MobileAgentCallRequest {
        called: "88884432".into(),
        call_data: None,
        caller_present: "95599".into(),
    })
    .await
    .unwrap();
}

/// The token endpoints of a wiremock fake: AccessToken `AT1`, user token `CT1`.
async fn mount_tokens(server: &MockServer) {
    Mock::given(path("/apigovernance/api/oauth/tokenByAkSk"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "AccessToken": "AT1", "Expires": "600"
        })))
        .mount(server)
        .await;
    Mock::given(path("/apiaccess/ccmessaging/applyToken"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"token": "CT1", "resultCode": "0"})),
        )
        .mount(server)
        .await;
}

#[tokio::test]
async fn answers_over_the_limit_are_refused_unread_and_final() {
    use base64::Engine as _;
    let server = MockServer::start().await;
    mount_tokens(&server).await;
    // A poll answer of 5 MiB: more than any JSON answer may hold.
    let huge = format!(
        r#"{{"resultCode":"0","downlinkMessages":[],"pad":"{}"}}"#,
        "x".repeat(5 * 1024 * 1024)
    );
    Mock::given(path("/apiaccess/ccmessaging/poll"))
        .respond_with(ResponseTemplate::new(200).set_body_string(huge))
        .mount(&server)
        .await;
    // An error status with a huge body is still the status (its body is not quoted).
    Mock::given(path("/apiaccess/ccmessaging/queryQueueInfo"))
        .respond_with(ResponseTemplate::new(503).set_body_string("y".repeat(5 * 1024 * 1024)))
        .mount(&server)
        .await;
    let file = |n: usize| {
        serde_json::json!({
            "resultCode": "0",
            "fileStream": base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]),
        })
    };
    Mock::given(path("/apiaccess/ccmessaging/downloadFileStream"))
        .and(body_partial_json(serde_json::json!({"fileId": "small"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(file(100_000)))
        .mount(&server)
        .await;
    Mock::given(path("/apiaccess/ccmessaging/downloadFileStream"))
        .and(body_partial_json(serde_json::json!({"fileId": "big"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(file(300_000)))
        .mount(&server)
        .await;
    let mut t = tenant(&server.uri());
    t.max_file_bytes = 200_000;
    let c = CecClient::new(CecClient::http_client().unwrap(), t);

    let e = c.poll("carol").await.unwrap_err();
    assert!(
        matches!(e, CecError::TooLarge { limit, .. } if limit == upstream::bounded::MAX_ANSWER_BYTES),
        "{e:?}"
    );
    assert!(!e.is_retryable());
    assert_eq!(e.code(), "too_large");

    let q = super::wire_ops::QueueInfoRequest {
        user_id: "carol".into(),
        channel_config_id: "c".into(),
        channel: "WEB".into(),
    };
    let e = c.query_queue_info("carol", &q).await.unwrap_err();
    assert!(
        matches!(&e, CecError::Status { status: 503, snippet, .. } if snippet.is_empty()),
        "{e:?}"
    );

    // downloadFileStream may carry a file up to max_file_bytes, base64-encoded: far over the JSON
    // limit's share of it, under the file's.
    let dl = |id: &str| super::wire_ops::DownloadRequest {
        file_id: id.into(),
        channel: "WEB".into(),
        file_type: "png".into(),
    };
    let ok = c.download("carol", &dl("small")).await.unwrap();
    assert_eq!(ok.file_stream.map(|s| s.len()), Some(133_336));
    let e = c.download("carol", &dl("big")).await.unwrap_err();
    assert!(matches!(e, CecError::TooLarge { .. }), "{e:?}");
    assert!(!e.is_retryable());
}

#[test]
fn the_download_limit_covers_the_base64_of_the_largest_file() {
    let max = 20 * 1024 * 1024;
    let limit = super::client::download_limit(max);
    assert!(limit >= max.div_ceil(3) * 4 + max.div_ceil(3) * 4 / 76);
    assert!(limit < max * 3 / 2, "{limit}");
}

#[tokio::test]
async fn every_request_names_the_instance_in_its_user_agent() {
    let server = MockServer::start().await;
    let agent = format!("ccrelay/{} (relay-a)", env!("CARGO_PKG_VERSION"));
    Mock::given(method("POST"))
        .and(path("/apigovernance/api/oauth/tokenByAkSk"))
        .and(header("user-agent", agent.as_str()))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"AccessToken": "AT", "Expires": "600"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/apiaccess/ccmessaging/applyToken"))
        .and(header("user-agent", agent.as_str()))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"token": "CT", "resultCode": "0"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/apiaccess/ccmessaging/poll"))
        .and(header("user-agent", agent.as_str()))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"resultCode": "0", "downlinkMessages": []})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let c = CecClient::new(
        CecClient::http_client_for("relay-a").unwrap(),
        tenant(&server.uri()),
    );
    c.poll("u").await.unwrap();
}

#[test]
fn the_user_agent_carries_a_header_safe_instance_name() {
    let v = env!("CARGO_PKG_VERSION");
    assert_eq!(
        super::client::user_agent("relay-a"),
        format!("ccrelay/{v} (relay-a)")
    );
    assert_eq!(
        super::client::user_agent(""),
        format!("ccrelay/{v} (ccrelay)")
    );
    assert_eq!(
        super::client::user_agent("a b(c)\\d\u{e9}\n"),
        format!("ccrelay/{v} (a_b_c__d__)")
    );
}
