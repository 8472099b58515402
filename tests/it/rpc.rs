//! `P.cec.<t>.rpc.<op>`: request-reply through NATS.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::support::app::*;

async fn rpc(t: &TestApp, tenant: &str, op: &str, body: &[u8]) -> Value {
    t.rpc_raw(tenant, op, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_relay_refuses_get_a_coded_error() {
    let mut t = spawn_app().await;
    let r = rpc(&t, "nosuch", "queueInfo", br#"{"userId":"u"}"#).await;
    assert_eq!(
        r,
        json!({"ok": false, "error": {"code": "unknown_tenant", "message": "no [[cec]] tenant is named \"nosuch\""}})
    );
    let r = rpc(&t, TENANT, "queueInfo", b"{oops").await;
    assert_eq!(r["error"]["code"], "invalid_request");
    let r = rpc(&t, TENANT, "queueInfo", b"{}").await;
    assert_eq!(r["error"]["message"], "userId: is required");
    let r = rpc(
        &t,
        TENANT,
        "queueInfo",
        br#"{"userId":"u234567890123456789012345"}"#,
    )
    .await;
    assert!(
        r["error"]["message"].as_str().unwrap().contains("24"),
        "{r}"
    );
    let r = rpc(
        &t,
        TENANT,
        "upload",
        br#"{"userId":"u","fileType":"exe","fileStream":"AA=="}"#,
    )
    .await;
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("fileType"),
        "{r}"
    );
    let r = rpc(
        &t,
        TENANT,
        "upload",
        br#"{"userId":"u","fileType":"png","fileStream":"!!"}"#,
    )
    .await;
    assert!(
        r["error"]["message"].as_str().unwrap().contains("base64"),
        "{r}"
    );
    let r = rpc(
        &t,
        TENANT,
        "clickToCall.create",
        br#"{"userId":"u","mediaAbility":"2"}"#,
    )
    .await;
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("mediaAbility"),
        "{r}"
    );
    let r = rpc(
        &t,
        TENANT,
        "mobileAgentCall",
        &serde_json::to_vec(&json!({"called": "1".repeat(33), "callerPresent": "95599"})).unwrap(),
    )
    .await;
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("called"),
        "{r}"
    );
    let r = rpc(&t, TENANT, "launchRocket", b"{}").await;
    assert_eq!(r["error"]["code"], "invalid_request");
    // None of this reached the upstream.
    assert_eq!(t.sim.stats().calls(sim::Endpoint::QueryQueueInfo), 0);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_info_is_answered_by_the_upstream() {
    let mut t = spawn_app().await;
    let mut w = t.watch(TENANT, "qq").await;
    t.up("qq", json!({"controlType": "CONNECT", "messageId": "q1"}))
        .await;
    w.until(10, "connected", is_result_for("q1")).await;
    let r = rpc(&t, TENANT, "queueInfo", br#"{"userId":"qq"}"#).await;
    // Not queued: the upstream answers with a non-zero code, passed through unchanged.
    assert!(r.get("resultCode").is_some(), "{r}");
    assert_eq!(r["ok"], r["resultCode"] == "0");
    assert_eq!(t.sim.stats().calls(sim::Endpoint::QueryQueueInfo), 1);
    // An upstream fault becomes a coded error.
    t.sim
        .inject_fault(sim::Fault::status(sim::Endpoint::QueryQueueInfo, 503).times(1));
    let r = rpc(&t, TENANT, "queueInfo", br#"{"userId":"qq"}"#).await;
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stateless_operation_works_through_nats() {
    use base64::Engine as _;
    let mut t = spawn_app().await;
    let mut w = t.watch(TENANT, "ops").await;
    t.up("ops", json!({"controlType": "CONNECT", "messageId": "o1"}))
        .await;
    w.until(10, "connected", is_result_for("o1")).await;
    let b64 = base64::engine::general_purpose::STANDARD;

    // upload then download, byte for byte, for each allowed type
    for ty in ["jpg", "png", "bmp", "mp3", "aac", "mp4", "txt", "csv"] {
        let bytes: Vec<u8> = (0..=255u8).chain(ty.bytes()).collect();
        let body = json!({"userId": "ops", "fileType": ty, "fileStream": b64.encode(&bytes)});
        let up = rpc(&t, TENANT, "upload", &serde_json::to_vec(&body).unwrap()).await;
        assert_eq!(up["ok"], true, "{ty}: {up}");
        let key = up["objectKey"].as_str().unwrap();
        assert_eq!(t.sim.uploaded(key).as_deref(), Some(&bytes[..]));
        let body = json!({"userId": "ops", "fileType": ty, "fileId": key});
        let down = rpc(&t, TENANT, "download", &serde_json::to_vec(&body).unwrap()).await;
        assert_eq!(down["ok"], true, "{down}");
        assert_eq!(
            b64.decode(down["fileStream"].as_str().unwrap()).unwrap(),
            bytes
        );
    }

    let r = rpc(
        &t,
        TENANT,
        "phrases",
        br#"{"userId":"ops","strContent":"a"}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["question"].is_array(), "{r}");

    let r = rpc(&t, TENANT, "clickToCall.support", br#"{"userId":"ops"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["clickToCallSupported"].is_boolean(), "{r}");
    let r = rpc(
        &t,
        TENANT,
        "clickToCall.create",
        br#"{"userId":"ops","mediaAbility":"0"}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = rpc(&t, TENANT, "clickToCall.events", br#"{"userId":"ops"}"#).await;
    assert!(r["eventId"].is_string() || r["eventId"].is_number(), "{r}");
    let r = rpc(&t, TENANT, "clickToCall.drop", br#"{"userId":"ops"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    let r = rpc(&t, TENANT, "clickToCall.drop", br#"{"userId":"ops"}"#).await;
    assert_eq!(
        (r["ok"].clone(), r["resultCode"].clone()),
        (json!(false), json!("13")),
        "{r}"
    );

    let r = rpc(
        &t,
        TENANT,
        "mobileAgentCall",
        br#"{"called":"88884432","callData":"1","callerPresent":"95599"}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["resultData"]["accesscode"].is_string(), "{r}");

    // A documented failure code reaches the caller unchanged.
    t.sim.force_result(
        sim::Endpoint::MobileAgentCreateCall,
        "30010019999",
        "CCM其他异常",
        1,
    );
    let r = rpc(
        &t,
        TENANT,
        "mobileAgentCall",
        br#"{"called":"1","callerPresent":"2"}"#,
    )
    .await;
    assert_eq!(r["ok"], false);
    assert_eq!(r["resultCode"], "30010019999");
    assert_eq!(r["resultDesc"], "CCM其他异常");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn satisfaction_feedback_and_leave_messages_are_stored_and_announced() {
    let mut t = spawn_app().await;
    let store = t.app().relay().store.clone();
    let mut w = t.watch(TENANT, "sat").await;
    t.up("sat", json!({"controlType": "CONNECT", "messageId": "s1"}))
        .await;
    w.until(10, "connected", is_result_for("s1")).await;

    // Refused before any upstream call, each naming its field and limit.
    let r = rpc(
        &t,
        TENANT,
        "satisfaction",
        br#"{"userId":"sat","evaluation":"6"}"#,
    )
    .await;
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("evaluation"),
        "{r}"
    );
    let long = json!({"userId": "sat", "evaluation": "5", "comment": "x".repeat(512)});
    let r = rpc(
        &t,
        TENANT,
        "satisfaction",
        &serde_json::to_vec(&long).unwrap(),
    )
    .await;
    assert!(
        r["error"]["message"].as_str().unwrap().contains("512"),
        "{r}"
    );
    let r = rpc(
        &t,
        TENANT,
        "robotFeedback",
        br#"{"from":"sat","feedback":0,"interIdx":"1"}"#,
    )
    .await;
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("feedbackContent"),
        "{r}"
    );
    let big =
        json!({"from": "sat", "feedback": 0, "interIdx": "1", "feedbackContent": "汉".repeat(22)});
    let r = rpc(
        &t,
        TENANT,
        "robotFeedback",
        &serde_json::to_vec(&big).unwrap(),
    )
    .await;
    assert!(
        r["error"]["message"].as_str().unwrap().contains("64"),
        "{r}"
    );
    assert!(t.sim.satisfactions().is_empty() && t.sim.robot_feedbacks().is_empty());

    let r = rpc(
        &t,
        TENANT,
        "satisfaction",
        br#"{"userId":"sat","evaluation":5,"comment":"good"}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = rpc(
        &t,
        TENANT,
        "robotFeedback",
        br#"{"from":"sat","feedback":0,"feedbackContent":"wrong answer","interIdx":"2"}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = rpc(
        &t,
        TENANT,
        "leaveMessage",
        br#"{"userId":"sat","caller":"1386667777","leaveMessage":"call me back"}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");

    let sats = store.satisfactions("cec", TENANT, "sat").await.unwrap();
    assert_eq!(sats.len(), 2);
    assert_eq!(
        (sats[0].score.as_str(), sats[0].comment.as_deref()),
        ("5", Some("good"))
    );
    assert!(sats[0].session_id.is_some(), "attached to the open session");
    assert_eq!(
        (sats[1].score.as_str(), sats[1].inter_idx.as_deref()),
        ("0", Some("2"))
    );
    let off = store.offline_messages("cec", TENANT, "sat").await.unwrap();
    assert_eq!(off.len(), 1);
    assert_eq!(
        (off[0].content.as_str(), off[0].caller.as_deref()),
        ("call me back", Some("1386667777"))
    );
    w.until(10, "offline.saved", is_event("offline.saved"))
        .await;
    w.drain(1).await;
    let saved = w
        .events()
        .iter()
        .filter(|e| e["type"] == "satisfaction.saved")
        .count();
    assert_eq!(saved, 2);
    assert_eq!(t.sim.satisfactions().len(), 1);
    assert_eq!(t.sim.leave_messages().len(), 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_wide_rpcs_list_sessions_and_transcripts_without_tokens() {
    let mut t = spawn_app().await;
    let mut w = t.watch(TENANT, "wide").await;
    t.up("wide", json!({"controlType": "CONNECT", "messageId": "w1"}))
        .await;
    w.until(10, "connected", is_result_for("w1")).await;
    t.up("wide", json!({"content": "hello", "messageId": "w2"}))
        .await;
    w.until(10, "robot answer", is_down_containing("hello"))
        .await;

    let req = |op: &'static str, body: Value| {
        let c = t.client.clone();
        async move {
            let m = c
                .request(
                    format!("{PREFIX}.rpc.{op}"),
                    serde_json::to_vec(&body).unwrap().into(),
                )
                .await
                .unwrap();
            serde_json::from_slice::<Value>(&m.payload).unwrap()
        }
    };
    let r = req(
        "sessions.list",
        json!({"tenant": TENANT, "state": "active"}),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let s = &r["sessions"][0];
    assert_eq!(
        (s["userId"].clone(), s["state"].clone()),
        (json!("wide"), json!("active"))
    );
    assert!(
        s.get("token").is_none(),
        "tokens never leave the store: {s}"
    );
    let r = req("sessions.list", json!({"state": "sleeping"})).await;
    assert_eq!(r["error"]["code"], "invalid_request");

    let r = req(
        "transcript.get",
        json!({"tenant": TENANT, "userId": "wide"}),
    )
    .await;
    let msgs = r["messages"].as_array().unwrap();
    assert!(
        msgs.iter()
            .any(|m| m["direction"] == "up" && m["content"] == "hello"),
        "{r}"
    );
    assert!(
        msgs.iter()
            .any(|m| m["direction"] == "down" && m["body"]["sourceType"] == "ROBOT"),
        "{r}"
    );

    let r = req("health", json!({})).await;
    assert_eq!(
        (r["ok"].clone(), r["database"].clone()),
        (json!(true), json!("up")),
        "{r}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_answers_inline_and_is_idempotent_by_message_id() {
    let mut t = spawn_app().await;
    let mut w = t.watch(TENANT, "sid").await;
    let r = rpc(
        &t,
        TENANT,
        "send",
        br#"{"userId":"sid","controlType":"CONNECT","messageId":"i1"}"#,
    )
    .await;
    assert_eq!(
        (r["ok"].clone(), r["resultCode"].clone()),
        (json!(true), json!("0")),
        "{r}"
    );
    let r = rpc(
        &t,
        TENANT,
        "send",
        br#"{"userId":"sid","content":"inline","messageId":"i2"}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    w.until(10, "robot answer", is_down_containing("inline"))
        .await;
    // The same messageId again: the recorded answer, nothing sent twice.
    let again = rpc(
        &t,
        TENANT,
        "send",
        br#"{"userId":"sid","content":"inline","messageId":"i2"}"#,
    )
    .await;
    assert_eq!(again, r);
    assert_eq!(t.sim.received("sid").len(), 2);
    // Without a messageId, one is made up and returned.
    let r = rpc(&t, TENANT, "send", br#"{"userId":"sid","content":"no id"}"#).await;
    assert!(r["messageId"].as_str().unwrap().starts_with("rpc-"), "{r}");
    // Refused by validation: a coded error, and the event stream says so too.
    let big = json!({"userId": "sid", "content": "x".repeat(1025), "messageId": "i3"});
    let r = rpc(&t, TENANT, "send", &serde_json::to_vec(&big).unwrap()).await;
    assert_eq!(r["error"]["code"], "invalid_request", "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("1024"),
        "{r}"
    );
    t.stop().await;
}

/// The last request the simulator received on `path`, checked for its method and headers: the
/// app key, the AccessToken (`Authorization: Bearer …`), and the customer's `ccmessaging-token`
/// when the endpoint takes one.
fn upstream(t: &TestApp, method: &str, path: &str, user_token: bool) -> sim::LoggedRequest {
    let reqs = t.sim.requests();
    let r = reqs
        .iter()
        .rev()
        .find(|r| r.path == path)
        .unwrap_or_else(|| panic!("no request to {path}"))
        .clone();
    assert_eq!(r.method, method, "{path}");
    let sc = sim::SimConfig::default();
    assert_eq!(r.header("x-app-key"), Some(sc.app_key.as_str()), "{path}");
    let auth = r.header("authorization").unwrap_or_default();
    assert!(
        auth.starts_with("Bearer ") && auth.len() > "Bearer ".len(),
        "{path}: {auth:?}"
    );
    assert_eq!(
        r.header("ccmessaging-token").is_some_and(|t| !t.is_empty()),
        user_token,
        "{path}: {r:?}"
    );
    if method == "POST" {
        assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
    } else {
        assert_eq!(r.body_len, 0, "{path}: a GET has no body");
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_sends_the_documented_upstream_request() {
    use base64::Engine as _;
    let mut t = spawn_app().await;
    let user = "req";
    let sc = sim::SimConfig::default();
    let cfg_id = sc.channel_config_id.clone();
    let locale = t.app().relay().config.cec[0].locale.clone();
    let store = t.app().relay().store.clone();

    // send (CONNECT, then a message), through the synchronous RPC.
    let r = rpc(
        &t,
        TENANT,
        "send",
        br#"{"userId":"req","controlType":"CONNECT","messageId":"e1"}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = rpc(
        &t,
        TENANT,
        "send",
        br#"{"userId":"req","content":"hello there","messageId":"e2","senderNickname":"Req"}"#,
    )
    .await;
    assert_eq!(
        (r["ok"].clone(), r["status"].clone()),
        (json!(true), json!("sent")),
        "{r}"
    );
    let apply = upstream(&t, "POST", "/apiaccess/ccmessaging/applyToken", false);
    let body = apply.body.unwrap();
    assert_eq!(body["userId"], user);
    assert_eq!(body["channelId"], cfg_id.as_str());
    let s = upstream(&t, "POST", "/apiaccess/ccmessaging/send", true);
    let mut body = s.body.unwrap();
    let ts = body["timestamp"].take();
    assert!(
        ts.as_str().is_some_and(|t| t.parse::<u64>().is_ok()),
        "timestamp in ms: {ts}"
    );
    assert_eq!(
        body,
        json!({"channel": "WEB", "content": "hello there", "controlType": "CHAT", "from": user,
            "mediaType": "TEXT", "senderNickname": "Req", "sourceType": "CUSTOMER",
            "timestamp": null, "to": cfg_id, "messageId": "e2"})
    );
    let rows = store.transcript("cec", TENANT, user).await.unwrap();
    let up = rows
        .iter()
        .find(|m| m.message_id.as_deref() == Some("e2"))
        .expect("the up row");
    assert_eq!(up.status, store::MessageStatus::Sent);
    assert_eq!(up.result_code.as_deref(), Some("0"));
    assert_eq!(up.content.as_deref(), Some("hello there"));
    assert!(up.session_id.is_some(), "{up:?}");
    let sent: Value = serde_json::from_str(&up.body).unwrap();
    assert_eq!(
        sent["messageId"], "e2",
        "the row keeps the request sent: {sent}"
    );

    // poll: GET with the customer's token.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p = upstream(&t, "GET", "/apiaccess/ccmessaging/poll", true);
    assert!(
        p.query.as_deref().unwrap_or_default().contains(user),
        "{p:?}"
    );

    let r = rpc(&t, TENANT, "queueInfo", br#"{"userId":"req"}"#).await;
    assert!(r.get("resultCode").is_some(), "{r}");
    let q = upstream(&t, "POST", "/apiaccess/ccmessaging/queryQueueInfo", true);
    assert_eq!(
        q.body.unwrap(),
        json!({"userId": user, "channelConfigId": cfg_id, "channel": "WEB"})
    );

    let r = rpc(
        &t,
        TENANT,
        "phrases",
        br#"{"userId":"req","strContent":"open"}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let q = upstream(
        &t,
        "POST",
        "/apiaccess/ccmessaging/queryPhraseByKeyword",
        true,
    );
    assert_eq!(
        q.body.unwrap(),
        json!({"strContent": "open", "locale": locale, "channel": "WEB"})
    );

    let b64 = base64::engine::general_purpose::STANDARD.encode(b"abc");
    let body = json!({"userId": user, "fileType": "png", "fileStream": b64});
    let r = rpc(&t, TENANT, "upload", &serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(r["ok"], true, "{r}");
    let key = r["objectKey"].as_str().unwrap().to_owned();
    let q = upstream(&t, "POST", "/apiaccess/ccmessaging/uploadFileStream", true);
    assert_eq!(
        q.body.unwrap(),
        json!({"fileType": "png", "fileStream": b64, "channel": "WEB"})
    );
    let body = json!({"userId": user, "fileType": "png", "fileId": key});
    let r = rpc(&t, TENANT, "download", &serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(r["ok"], true, "{r}");
    let q = upstream(
        &t,
        "POST",
        "/apiaccess/ccmessaging/downloadFileStream",
        true,
    );
    assert_eq!(
        q.body.unwrap(),
        json!({"fileId": key, "channel": "WEB", "fileType": "png"})
    );

    let r = rpc(&t, TENANT, "clickToCall.support", br#"{"userId":"req"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    upstream(
        &t,
        "GET",
        "/apiaccess/ccmessaging/v1/checkClickToCallSupport",
        true,
    );
    let r = rpc(
        &t,
        TENANT,
        "clickToCall.create",
        br#"{"userId":"req","mediaAbility":"1"}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let q = upstream(
        &t,
        "POST",
        "/apiaccess/ccmessaging/v1/createClickToCall",
        true,
    );
    assert_eq!(
        q.body.unwrap(),
        json!({"channel": "WEB", "mediaAbility": "1"})
    );
    rpc(&t, TENANT, "clickToCall.events", br#"{"userId":"req"}"#).await;
    upstream(
        &t,
        "GET",
        "/apiaccess/ccmessaging/v1/getClickToCallEvents",
        true,
    );
    let r = rpc(&t, TENANT, "clickToCall.drop", br#"{"userId":"req"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    let q = upstream(
        &t,
        "POST",
        "/apiaccess/ccmessaging/v1/dropClickToCall",
        true,
    );
    assert_eq!(q.body.unwrap(), json!({"channel": "WEB"}));

    let r = rpc(
        &t,
        TENANT,
        "mobileAgentCall",
        br#"{"called":"88884432","callData":"x=1","callerPresent":"95599"}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let q = upstream(
        &t,
        "POST",
        "/apiaccess/ccmessaging/v1/mobileagent/createcall",
        false,
    );
    assert_eq!(
        q.body.unwrap(),
        json!({"called": "88884432", "callData": "x=1", "callerPresent": "95599"})
    );

    // The ops that store: the request, then the rows.
    let r = rpc(
        &t,
        TENANT,
        "satisfaction",
        br#"{"userId":"req","evaluation":4,"comment":"fine"}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let q = upstream(&t, "POST", "/apiaccess/ccmessaging/saveSatisfaction", true);
    assert_eq!(
        q.body.unwrap(),
        json!({"channel": "WEB", "userId": user, "evaluation": "4", "comment": "fine",
            "channelConfigId": cfg_id})
    );
    let r = rpc(
        &t,
        TENANT,
        "robotFeedback",
        br#"{"from":"req","feedback":0,"feedbackContent":"wrong","interIdx":"3"}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let q = upstream(
        &t,
        "POST",
        "/apiaccess/ccmessaging/v1/robot/feedbacksatisfaction",
        true,
    );
    assert_eq!(
        q.body.unwrap(),
        json!({"feedback": 0, "feedbackContent": "wrong", "from": user, "interIdx": "3"})
    );
    let r = rpc(
        &t,
        TENANT,
        "leaveMessage",
        br#"{"userId":"req","caller":"13800000000","leaveMessage":"call me"}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let q = upstream(&t, "POST", "/apiaccess/ccmessaging/doLeaveMessage", true);
    assert_eq!(
        q.body.unwrap(),
        json!({"callId": user, "caller": "13800000000", "leaveMessage": "call me",
            "channel": "WEB"})
    );
    let sats = store.satisfactions("cec", TENANT, user).await.unwrap();
    let session_id = up.session_id.clone();
    assert_eq!(
        sats.iter()
            .map(|s| (
                s.source,
                s.score.as_str(),
                s.comment.as_deref(),
                s.inter_idx.as_deref(),
                s.result_code.as_str(),
                s.session_id.clone()
            ))
            .collect::<Vec<_>>(),
        vec![
            (
                store::SatisfactionSource::Customer,
                "4",
                Some("fine"),
                None,
                "0",
                session_id.clone()
            ),
            (
                store::SatisfactionSource::Robot,
                "0",
                Some("wrong"),
                Some("3"),
                "0",
                session_id.clone()
            ),
        ]
    );
    let off = store.offline_messages("cec", TENANT, user).await.unwrap();
    assert_eq!(off.len(), 1);
    assert_eq!(off[0].source, store::OfflineSource::LeaveMessage);
    assert_eq!(
        (
            off[0].caller.as_deref(),
            off[0].content.as_str(),
            off[0].result_code.as_str()
        ),
        (Some("13800000000"), "call me", "0")
    );
    assert_eq!(off[0].session_id, session_id);
    t.stop().await;
}

/// `/metrics`, the value of the first line naming `metric` with every one of `labels`.
async fn metric(t: &TestApp, metric: &str, labels: &[&str]) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", t.app().http_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(metric) && labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_go_only_to_inboxes_and_work_is_bounded_per_tenant() {
    let mut t = spawn_app_configured(sim::SimConfig::default(), None, |c, _| {
        c.rpc.max_concurrent = 1;
    })
    .await;
    // The relay answers (subscribed).
    let r = rpc(&t, TENANT, "nosuch", b"{}").await;
    assert_eq!(r["error"]["code"], "invalid_request");

    // Requests naming a reply subject that is not an inbox: a customer's uplink subject, the
    // JetStream API, any other subject. None gets anything published on it.
    let mut evil = t.client.subscribe("evil.>").await.unwrap();
    let mut up = t
        .client
        .subscribe(format!("{PREFIX}.cec.{TENANT}.up.>"))
        .await
        .unwrap();
    for reply in [
        format!("{PREFIX}.cec.{TENANT}.up.bob"),
        format!("$JS.API.STREAM.DELETE.{}_OUT", PREFIX.to_uppercase()),
        "evil.reply".to_owned(),
    ] {
        t.client
            .publish_with_reply(
                format!("{PREFIX}.cec.{TENANT}.rpc.clickToCall.support"),
                reply,
                br#"{"userId":"bob"}"#.to_vec().into(),
            )
            .await
            .unwrap();
    }
    t.client.flush().await.unwrap();
    let nothing = tokio::time::timeout(Duration::from_millis(1500), async {
        tokio::select! { m = evil.next() => m, m = up.next() => m }
    })
    .await;
    assert!(
        nothing.is_err(),
        "published on a caller's subject: {nothing:?}"
    );
    t.js.get_stream(format!("{}_OUT", PREFIX.to_uppercase()))
        .await
        .expect("the stream is still there");
    assert!(
        metric(
            &t,
            "ccrelay_rpc_refused_total",
            &["reason=\"reply_subject\"", "tenant=\"acme\""]
        )
        .await
            >= 3.0
    );
    // No request reached the upstream.
    assert_eq!(
        t.sim.stats().calls(sim::Endpoint::CheckClickToCallSupport),
        0
    );

    // One request of the tenant at a time: a second one is answered `unavailable` at once,
    // while the relay-wide requests (their own bucket) are served.
    t.sim.inject_fault(
        sim::Fault::delay(sim::Endpoint::QueryQueueInfo, Duration::from_secs(2)).times(1),
    );
    let slow = {
        let c = t.client.clone();
        tokio::spawn(async move {
            c.request(
                format!("{PREFIX}.cec.{TENANT}.rpc.queueInfo"),
                br#"{"userId":"busy1"}"#.to_vec().into(),
            )
            .await
            .map(|m| serde_json::from_slice::<Value>(&m.payload).unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = rpc(&t, TENANT, "queueInfo", br#"{"userId":"busy2"}"#).await;
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rpc.max_concurrent"),
        "{r}"
    );
    let h = t
        .client
        .request(format!("{PREFIX}.rpc.health"), "{}".into())
        .await
        .unwrap();
    let h: Value = serde_json::from_slice(&h.payload).unwrap();
    assert_eq!(h["ok"], true, "{h}");
    let first = slow.await.unwrap().unwrap();
    assert!(
        first.get("resultCode").is_some(),
        "the slow one is answered: {first}"
    );
    let r = rpc(&t, TENANT, "queueInfo", br#"{"userId":"busy2"}"#).await;
    assert!(r.get("resultCode").is_some(), "free again: {r}");
    assert!(
        metric(
            &t,
            "ccrelay_rpc_refused_total",
            &["reason=\"busy\"", "tenant=\"acme\""]
        )
        .await
            >= 1.0
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_scoped_reads_are_paged_and_confined_to_the_subject_tenant() {
    let mut t = spawn_app().await;
    let mut w = t.watch(TENANT, "pager").await;
    t.up(
        "pager",
        json!({"controlType": "CONNECT", "messageId": "g0"}),
    )
    .await;
    for i in 1..=4 {
        t.up(
            "pager",
            json!({"content": format!("page {i}"), "messageId": format!("g{i}")}),
        )
        .await;
    }
    w.until(10, "the last message", is_result_for("g4")).await;
    let store = t.app().relay().store.clone();
    let before = store
        .transcript("cec", TENANT, "pager")
        .await
        .unwrap()
        .len();
    assert!(before >= 5);

    // Page by page, two rows each, through the tenant-scoped subject and `next`.
    let mut seen: Vec<String> = Vec::new();
    let mut body = json!({"userId": "pager", "limit": 2});
    for _ in 0..100 {
        let r = t.rpc(TENANT, "transcript.get", &body).await;
        assert_eq!(r["ok"], true, "{r}");
        let msgs = r["messages"].as_array().unwrap();
        assert!(msgs.len() <= 2, "{r}");
        seen.extend(
            msgs.iter()
                .map(|m| m["relayId"].as_str().unwrap().to_owned()),
        );
        match r.get("next") {
            Some(next) => {
                assert_eq!(next, msgs.last().unwrap()["relayId"].as_str().unwrap());
                body["after"] = next.clone();
            }
            None => break,
        }
    }
    let whole: Vec<String> = store
        .transcript("cec", TENANT, "pager")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.relay_id)
        .collect();
    assert!(seen.len() >= before, "{} of {before}", seen.len());
    assert_eq!(
        seen[..],
        whole[..seen.len()],
        "the transcript, once, in order"
    );

    // The relay-wide form is paged the same way; without `limit`, a default page.
    let wide = |body: Value| {
        let c = t.client.clone();
        async move {
            let m = c
                .request(
                    format!("{PREFIX}.rpc.transcript.get"),
                    serde_json::to_vec(&body).unwrap().into(),
                )
                .await
                .unwrap();
            serde_json::from_slice::<Value>(&m.payload).unwrap()
        }
    };
    let r = wide(json!({"tenant": TENANT, "userId": "pager", "limit": 1})).await;
    assert_eq!(r["messages"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["next"], r["messages"][0]["relayId"], "{r}");
    let r = wide(json!({"tenant": TENANT, "userId": "pager"})).await;
    assert!(r.get("next").is_none(), "{r}");
    assert_eq!(
        r["messages"].as_array().unwrap().len(),
        whole.len().min(100)
    );

    // The subject's tenant, not the body's.
    let r = t
        .rpc(
            TENANT,
            "transcript.get",
            &json!({"tenant": "beta", "userId": "pager"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "invalid_request", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("tenant"),
        "{r}"
    );
    let r = t
        .rpc(
            TENANT,
            "transcript.get",
            &json!({"kind": "tim", "userId": "pager"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "invalid_request", "{r}");
    let r = t
        .rpc(
            TENANT,
            "transcript.get",
            &json!({"userId": "pager", "after": "nope"}),
        )
        .await;
    assert!(
        r["error"]["message"].as_str().unwrap().starts_with("after"),
        "{r}"
    );
    let r = t
        .rpc(
            TENANT,
            "transcript.get",
            &json!({"userId": "pager", "limit": 1001}),
        )
        .await;
    assert!(
        r["error"]["message"].as_str().unwrap().starts_with("limit"),
        "{r}"
    );
    let r = t
        .rpc(TENANT, "sessions.list", &json!({"tenant": "beta"}))
        .await;
    assert_eq!(r["error"]["code"], "invalid_request", "{r}");
    let r = t
        .rpc(TENANT, "sessions.list", &json!({"state": "active"}))
        .await;
    let sessions = r["sessions"].as_array().unwrap();
    assert!(sessions.iter().any(|s| s["userId"] == "pager"), "{r}");
    assert!(sessions.iter().all(|s| s["tenant"] == TENANT), "{r}");
    let r = t.rpc("beta", "sessions.list", &json!({})).await;
    assert_eq!(r["error"]["code"], "unknown_tenant", "{r}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_message_names_its_customer_by_call_id() {
    let mut t = spawn_app().await;
    // The documented body: callId is the customer.
    let r = t
        .rpc(
            TENANT,
            "leaveMessage",
            &json!({"callId": "lm", "caller": "1386667777", "leaveMessage": "call me back"}),
        )
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let q = upstream(&t, "POST", "/apiaccess/ccmessaging/doLeaveMessage", true);
    assert_eq!(
        q.body.unwrap(),
        json!({"callId": "lm", "caller": "1386667777", "leaveMessage": "call me back", "channel": "WEB"})
    );
    let apply = upstream(&t, "POST", "/apiaccess/ccmessaging/applyToken", false);
    assert_eq!(apply.body.unwrap()["userId"], "lm", "the token is lm's");
    let store = t.app().relay().store.clone();
    let off = store.offline_messages("cec", TENANT, "lm").await.unwrap();
    assert_eq!(off.len(), 1);
    // Both, when they agree; refused when they name two customers, or none.
    let r = t
        .rpc(
            TENANT,
            "leaveMessage",
            &json!({"userId": "lm", "callId": "lm", "caller": "1", "leaveMessage": "again"}),
        )
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = t
        .rpc(
            TENANT,
            "leaveMessage",
            &json!({"userId": "lm", "callId": "other", "caller": "1", "leaveMessage": "x"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "invalid_request", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("different customers"),
        "{r}"
    );
    let r = t
        .rpc(
            TENANT,
            "leaveMessage",
            &json!({"caller": "1", "leaveMessage": "x"}),
        )
        .await;
    assert_eq!(
        r["error"]["message"], "userId: is required (or callId)",
        "{r}"
    );
    assert_eq!(t.sim.leave_messages().len(), 2);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_robot_feedback_name_their_customer_by_from() {
    let mut t = spawn_app().await;
    let r = t
        .rpc(
            TENANT,
            "send",
            &json!({"from": "sf", "controlType": "CONNECT", "messageId": "f1"}),
        )
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = t
        .rpc(
            TENANT,
            "send",
            &json!({"from": "sf", "content": "hi", "messageId": "f2"}),
        )
        .await;
    assert_eq!(
        (r["ok"].clone(), r["status"].clone()),
        (json!(true), json!("sent")),
        "{r}"
    );
    let s = upstream(&t, "POST", "/apiaccess/ccmessaging/send", true);
    assert_eq!(s.body.unwrap()["from"], "sf");
    let r = t
        .rpc(
            TENANT,
            "send",
            &json!({"userId": "sf", "from": "sg", "content": "hi"}),
        )
        .await;
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("different customers"),
        "{r}"
    );
    // robotFeedback: `from` or `userId`, the same customer if both.
    let r = t
        .rpc(
            TENANT,
            "robotFeedback",
            &json!({"userId": "sf", "feedback": 1, "interIdx": "1"}),
        )
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = t
        .rpc(
            TENANT,
            "robotFeedback",
            &json!({"userId": "sf", "from": "sg", "feedback": 1, "interIdx": "1"}),
        )
        .await;
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("different customers"),
        "{r}"
    );
    // An op whose body has no user field of its own still needs userId.
    let r = t
        .rpc(TENANT, "phrases", &json!({"from": "sf", "strContent": "x"}))
        .await;
    assert_eq!(r["error"]["message"], "userId: is required", "{r}");
    t.stop().await;
}
