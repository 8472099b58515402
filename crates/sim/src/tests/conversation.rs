//! Conversations through send and poll: robot, transfer, agent, queue, working hours, offline
//! mode, idempotency, validation, duplicate polls.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{Client, QUEUE_PATH, SEND_PATH, code_desc, send_body};
use crate::SimConfig;
use ::cec::wire::{DownlinkMessage, SendResponse, StrOrNum};

const CHANNEL: &str = "1011577355744904195";

/// Checks the fields every downlink message carries.
fn assert_common(m: &DownlinkMessage, user: &str, control: &str) {
    assert_eq!(m.from.as_deref(), Some(CHANNEL));
    assert_eq!(m.channel.as_deref(), Some("WEB"));
    assert_eq!(m.to.as_deref(), Some(user));
    assert_eq!(m.control_type.as_deref(), Some(control));
    assert_eq!(m.media_type.as_deref(), Some("TEXT"));
    assert!(m.message_code.as_deref().is_some_and(|c| !c.is_empty()));
    assert!(m.call_id.as_deref().is_some_and(|c| !c.is_empty()));
    let Some(StrOrNum::Int(ms)) = m.timestamp else {
        panic!("timestamp is not a number: {:?}", m.timestamp);
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    assert!(
        (now - ms).abs() < 10_000,
        "timestamp {ms} is not now ({now})"
    );
}

fn assert_robot(m: &DownlinkMessage, user: &str, content: &str, inter_idx: &str) {
    assert_common(m, user, "CHAT");
    assert_eq!(m.source_type.as_deref(), Some("ROBOT"));
    assert_eq!(m.content.as_deref(), Some(content));
    assert_eq!(m.sender_nickname.as_deref(), Some("robot"));
    assert_eq!(m.robot_gender.as_deref(), Some("MALE"));
    assert_eq!(m.inter_idx.as_deref(), Some(inter_idx));
}

fn assert_agent(m: &DownlinkMessage, user: &str, control: &str, content: &str) {
    assert_common(m, user, control);
    assert_eq!(m.source_type.as_deref(), Some("AGENT"));
    assert_eq!(m.content.as_deref(), Some(content));
    assert_eq!(m.sender_nickname.as_deref(), Some("agent"));
    assert_eq!(m.robot_gender, None);
}

fn assert_connected(m: &[DownlinkMessage], user: &str) {
    assert_eq!(m.len(), 2, "{m:?}");
    assert_common(&m[0], user, "CHAT");
    assert_eq!(m[0].source_type.as_deref(), Some("SYSTEM"));
    assert_eq!(m[0].content.as_deref(), Some("已接通座席。"));
    assert_eq!(m[0].sender_nickname.as_deref(), Some("系统"));
    assert_agent(&m[1], user, "CHAT", "您好，很高兴为您服务。");
}

#[tokio::test]
async fn a_conversation_goes_robot_then_agent_then_agent_disconnects() {
    let c = Client::new(SimConfig::default()).await;
    let t = c.apply_token("u1").await;
    let mut all = Vec::new();

    let r = c.send_ok("u1", &t, "CONNECT", "").await;
    assert_eq!(code_desc(&r), ("0", "connect to robot successfully."));
    assert_eq!(r.offline_msg, None);
    let raw = c.poll_raw("u1", &t).await;
    let v: Value = raw.value();
    assert_eq!(v["resultDesc"], "query user messages success.");
    assert!(
        v["downlinkMessages"][0]["timestamp"].is_i64(),
        "timestamp is a JSON number"
    );
    assert!(v["downlinkMessages"][0]["simQuestions"].is_null());
    let welcome = raw.json::<::cec::wire::PollResponse>().downlink_messages;
    assert_eq!(welcome.len(), 1);
    assert_robot(&welcome[0], "u1", "欢迎欢迎，热烈欢迎", "1");
    let call_id = welcome[0].call_id.clone();
    all.extend(welcome);

    assert!(
        c.poll("u1", &t).await.downlink_messages.is_empty(),
        "poll drains"
    );

    let r = c.send_ok("u1", &t, "CHAT", "版本").await;
    assert_eq!(code_desc(&r), ("0", "Send message to robot successfully"));
    let reply = c.poll("u1", &t).await.downlink_messages;
    assert_eq!(reply.len(), 1);
    assert_robot(&reply[0], "u1", "You said: 版本", "2");
    assert_eq!(reply[0].call_id, call_id);
    all.extend(reply);

    let r = c.send_ok("u1", &t, "INPUT", "").await;
    assert_eq!(
        code_desc(&r),
        ("13", "This is robot service,this message is prevented!")
    );

    let r = c.send_ok("u1", &t, "TRANS2AGENT", "").await;
    assert_eq!(
        code_desc(&r),
        ("0", "transfer from robot to agent success.")
    );
    let connected = c.poll("u1", &t).await.downlink_messages;
    assert_connected(&connected, "u1");
    assert!(connected.iter().all(|m| m.call_id == call_id));
    all.extend(connected);

    let r = c.send_ok("u1", &t, "TRANS2AGENT", "").await;
    assert_eq!(
        code_desc(&r),
        (
            "13",
            "fail to transfer from robot to agent,it has been agent service."
        )
    );
    assert_eq!(
        code_desc(&c.send_ok("u1", &t, "INPUT", "").await),
        ("0", "sendUserMessage successfully.")
    );
    let r = c.send_ok("u1", &t, "CHAT", "hello").await;
    assert_eq!(code_desc(&r), ("0", "sendUserMessage successfully."));
    c.sim.agent_say("u1", "anything else?");
    let replies = c.poll("u1", &t).await.downlink_messages;
    assert_eq!(replies.len(), 2);
    assert_agent(&replies[0], "u1", "CHAT", "Agent: hello");
    assert_agent(&replies[1], "u1", "CHAT", "anything else?");
    all.extend(replies);

    c.sim.agent_disconnect("u1");
    let bye = c.poll("u1", &t).await.downlink_messages;
    assert_eq!(bye.len(), 1);
    assert_agent(&bye[0], "u1", "DISCONNECT", "座席已结束会话。");
    assert!(bye[0].is_disconnect());
    assert_eq!(bye[0].is_offline_status.as_deref(), Some("false"));
    all.extend(bye);

    let r = c.send_ok("u1", &t, "CHAT", "are you there?").await;
    assert_eq!(
        code_desc(&r),
        ("13", "chat failed, none channel config found.")
    );

    let codes: Vec<String> = all.iter().filter_map(|m| m.message_code.clone()).collect();
    assert_eq!(
        codes.iter().collect::<HashSet<_>>().len(),
        all.len(),
        "messageCodes are unique"
    );
    let stamps: Vec<i64> = all
        .iter()
        .filter_map(|m| m.timestamp.as_ref()?.as_i64())
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[0] <= w[1]),
        "in the order produced: {stamps:?}"
    );
    let logged: Vec<String> = c
        .sim
        .poll_log()
        .into_iter()
        .flat_map(|p| p.message_codes)
        .collect();
    assert_eq!(logged, codes, "the poll log has every answered messageCode");

    let controls: Vec<String> = c
        .sim
        .received("u1")
        .into_iter()
        .map(|r| r.request.control_type)
        .collect();
    assert_eq!(
        controls,
        ["CONNECT", "CHAT", "TRANS2AGENT", "INPUT", "CHAT"],
        "refused sends are not accepted"
    );
}

#[tokio::test]
async fn the_customer_disconnects_from_robot_or_agent() {
    let c = Client::new(SimConfig::default()).await;
    let t = c.apply_token("u1").await;
    let r = c.send_ok("u1", &t, "DISCONNECT", "").await;
    assert_eq!(
        code_desc(&r),
        ("13", "disconnect failed, none channel config found.")
    );
    c.send_ok("u1", &t, "CONNECT", "").await;
    let r = c.send_ok("u1", &t, "DISCONNECT", "").await;
    assert_eq!(code_desc(&r), ("0", "Disconnect robot successfully"));
    c.send_ok("u1", &t, "CONNECT", "").await;
    c.send_ok("u1", &t, "TRANS2AGENT", "").await;
    let r = c.send_ok("u1", &t, "DISCONNECT", "").await;
    assert_eq!(code_desc(&r), ("0", "disconnect successfully"));
    let r = c.send_ok("u1", &t, "TRANS2AGENT", "").await;
    assert_eq!(
        code_desc(&r),
        (
            "13",
            "fail to transfer from robot to agent,session keep touch failed."
        )
    );
}

#[tokio::test]
async fn a_repeated_message_id_is_answered_once_and_not_processed_again() {
    let c = Client::new(SimConfig::default()).await;
    let t = c.apply_token("u1").await;
    // Refused (no session): not accepted, so the retry after CONNECT is processed.
    let a = c.send("u1", &t, "CHAT", "hi", Some("m1")).await;
    assert_eq!(a.json::<SendResponse>().result_code, "13");
    c.send_ok("u1", &t, "CONNECT", "").await;
    c.poll("u1", &t).await;
    let first: SendResponse = c.send("u1", &t, "CHAT", "hi", Some("m1")).await.json();
    assert_eq!(first.result_code, "0");
    let again: SendResponse = c.send("u1", &t, "CHAT", "hi", Some("m1")).await.json();
    assert_eq!(again, first);
    let msgs = c.poll("u1", &t).await.downlink_messages;
    assert_eq!(msgs.len(), 1, "the robot answered once: {msgs:?}");

    let got = c.sim.received("u1");
    let m1: Vec<_> = got
        .iter()
        .filter(|r| r.request.message_id.as_deref() == Some("m1"))
        .collect();
    assert_eq!(m1.len(), 1);
    assert_eq!(m1[0].count, 2);
    assert_eq!(m1[0].response, first);
    assert_eq!(c.sim.stats().sends_deduplicated, 1);
    // The same messageId of another user is another message.
    let t2 = c.apply_token("u2").await;
    c.send_ok("u2", &t2, "CONNECT", "").await;
    c.send("u2", &t2, "CHAT", "hi", Some("m1")).await;
    assert_eq!(c.sim.received("u2").len(), 2);
}

#[tokio::test]
async fn transfer_queues_with_11_then_the_agent_connects() {
    let cfg = SimConfig {
        queue_length: 2,
        queue_step: Duration::from_millis(200),
        ..SimConfig::default()
    };
    let c = Client::new(cfg).await;
    let t = c.apply_token("u1").await;
    let q = json!({ "userId": "u1", "channelConfigId": CHANNEL, "channel": "WEB" });
    assert_eq!(
        c.post(QUEUE_PATH, Some(&t), q.clone()).await.value()["resultCode"],
        "1",
        "not queued yet"
    );
    c.send_ok("u1", &t, "CONNECT", "").await;
    c.poll("u1", &t).await;

    let t0 = Instant::now();
    let r = c.send_ok("u1", &t, "TRANS2AGENT", "").await;
    assert_eq!(code_desc(&r), ("11", "Queuing..."));
    let info = c.post(QUEUE_PATH, Some(&t), q.clone()).await.value();
    assert_eq!(info["resultCode"], "0");
    assert_eq!(info["position"], 2);
    for k in [
        "totalWaitTime",
        "currentDeviceWaitTime",
        "configMaxcWaitTime",
        "longestWaitTime",
        "estimateWaitTime",
    ] {
        assert!(info[k].is_u64(), "{k} in {info}");
    }
    assert_eq!(
        code_desc(&c.send_ok("u1", &t, "CHAT", "hello?").await),
        ("11", "Queuing...")
    );
    assert!(c.poll("u1", &t).await.downlink_messages.is_empty());

    tokio::time::sleep(Duration::from_millis(250).saturating_sub(t0.elapsed())).await;
    assert_eq!(
        c.post(QUEUE_PATH, Some(&t), q.clone()).await.value()["position"],
        1
    );

    tokio::time::sleep(Duration::from_millis(450).saturating_sub(t0.elapsed())).await;
    assert_connected(&c.poll("u1", &t).await.downlink_messages, "u1");
    assert_eq!(
        c.post(QUEUE_PATH, Some(&t), q).await.value()["resultCode"],
        "1",
        "no longer queued"
    );
    assert_eq!(
        code_desc(&c.send_ok("u1", &t, "CHAT", "hi").await),
        ("0", "sendUserMessage successfully.")
    );
}

#[tokio::test]
async fn without_a_robot_connect_goes_to_the_queue_and_disconnect_leaves_it() {
    let cfg = SimConfig {
        robot: false,
        queue_length: 1,
        queue_step: Duration::from_secs(60),
        ..SimConfig::default()
    };
    let c = Client::new(cfg).await;
    let t = c.apply_token("u1").await;
    assert_eq!(
        code_desc(&c.send_ok("u1", &t, "CONNECT", "").await),
        ("11", "Queuing...")
    );
    assert_eq!(
        code_desc(&c.send_ok("u1", &t, "DISCONNECT", "").await),
        ("11", "Queuing...")
    );
    let r = c.send_ok("u1", &t, "CHAT", "hi").await;
    assert_eq!(
        code_desc(&r),
        ("13", "chat failed, none channel config found."),
        "the queue was left"
    );
}

#[tokio::test]
async fn without_a_robot_connect_reaches_an_agent_at_once() {
    let c = Client::new(SimConfig {
        robot: false,
        ..SimConfig::default()
    })
    .await;
    let t = c.apply_token("u1").await;
    assert_eq!(c.send_ok("u1", &t, "CONNECT", "").await.result_code, "0");
    assert_connected(&c.poll("u1", &t).await.downlink_messages, "u1");
}

#[tokio::test]
async fn outside_working_hours_agents_answer_12() {
    let c = Client::new(SimConfig {
        agents_available: false,
        ..SimConfig::default()
    })
    .await;
    let t = c.apply_token("u1").await;
    c.send_ok("u1", &t, "CONNECT", "").await;
    let r = c.send_ok("u1", &t, "TRANS2AGENT", "").await;
    assert_eq!(
        code_desc(&r),
        (
            "12",
            "The current time is not within the working time of the service agents."
        )
    );
    assert_eq!(
        c.send_ok("u1", &t, "CHAT", "ok").await.result_code,
        "0",
        "still with the robot"
    );

    let c = Client::new(SimConfig {
        agents_available: false,
        robot: false,
        ..SimConfig::default()
    })
    .await;
    let t = c.apply_token("u1").await;
    let r = c.send_ok("u1", &t, "CONNECT", "").await;
    assert_eq!(
        code_desc(&r),
        (
            "12",
            "The current time is not within the working time of the service agents"
        )
    );
    assert_eq!(
        c.send_ok("u1", &t, "CHAT", "hi").await.result_code,
        "13",
        "no session"
    );
}

#[tokio::test]
async fn offline_mode_fails_connect_with_offline_msg_and_keeps_the_message() {
    let c = Client::new(SimConfig {
        offline_mode: true,
        ..SimConfig::default()
    })
    .await;
    let t = c.apply_token("u1").await;
    let a = c.send("u1", &t, "CONNECT", "", None).await;
    let v = a.value();
    assert_eq!(v["resultCode"], "13");
    assert_eq!(
        v["offlineMsg"]["isOfflineStatus"], true,
        "a JSON boolean: {v}"
    );
    assert!(
        v["offlineMsg"]["tipText"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    let r = c.send_ok("u1", &t, "CHAT", "please call me back").await;
    assert_eq!(
        code_desc(&r),
        ("13", "chat failed, none channel config found.")
    );
    assert!(r.is_offline());
    let kept = c.sim.received("u1");
    assert_eq!(kept.len(), 2);
    assert_eq!(kept[1].request.content, "please call me back");
    assert!(c.poll("u1", &t).await.downlink_messages.is_empty());
}

#[tokio::test]
async fn duplicate_next_poll_returns_the_same_message_codes_again() {
    let c = Client::new(SimConfig::default()).await;
    let t = c.apply_token("u1").await;
    c.send_ok("u1", &t, "CONNECT", "").await;
    c.send_ok("u1", &t, "CHAT", "one").await;
    let first: Vec<_> = c.poll("u1", &t).await.downlink_messages;
    assert_eq!(first.len(), 2);
    c.sim.duplicate_next_poll("u1");
    c.sim.agent_say("u1", "new");
    let again = c.poll("u1", &t).await.downlink_messages;
    assert_eq!(again.len(), 3);
    assert_eq!(
        &again[..2],
        &first[..],
        "the same messages, same messageCodes"
    );
    assert_eq!(again[2].content.as_deref(), Some("new"));
    assert!(
        c.poll("u1", &t).await.downlink_messages.is_empty(),
        "only the next poll repeats"
    );
    let log = c.sim.poll_log();
    assert_eq!(log.len(), 2);
    assert!(!log[0].duplicate && log[1].duplicate);
    assert_eq!(log[1].message_codes[..2], log[0].message_codes[..]);
}

#[tokio::test]
async fn send_refuses_what_the_document_forbids() {
    let c = Client::new(SimConfig::default()).await;
    let t = c.apply_token("u1").await;
    c.send_ok("u1", &t, "CONNECT", "").await;
    let invalid = ("3", "Requested param validate failed.");
    let card = |v: Value| v.to_string();
    let cases: Vec<(&str, Value, (&str, &str))> = vec![
        ("channel", json!("LINE"), invalid),
        ("sourceType", json!("AGENT"), invalid),
        ("controlType", json!("SHOUT"), invalid),
        ("mediaType", json!("GIF"), invalid),
        ("messageId", json!("x".repeat(33)), invalid),
        ("messageId", json!("a,b"), invalid),
        ("content", json!("x".repeat(1025)), invalid),
        ("content", json!("é".repeat(513)), invalid),
        (
            "to",
            json!("42"),
            ("13", "chat failed, none channel config found."),
        ),
        (
            "content",
            json!(""),
            ("13", "Chat failed because the content is empty."),
        ),
    ];
    for (field, value, want) in cases {
        let mut body = send_body("u1", "CHAT", "hi");
        body[field] = value;
        let r: SendResponse = c.post(SEND_PATH, Some(&t), body).await.json();
        assert_eq!(code_desc(&r), want, "{field}");
    }
    let mut body = send_body("u1", "CONNECT", "");
    body["to"] = json!("42");
    let r: SendResponse = c.post(SEND_PATH, Some(&t), body).await.json();
    assert_eq!(
        code_desc(&r),
        ("13", "connect failed, none channel config found.")
    );

    let media_cases = [
        ("IMAGE", String::new(), ("3", "content can not be empty")),
        (
            "WEBCARD",
            "{not json".into(),
            ("3", "Incorrect JSON format"),
        ),
        (
            "WEBCARD",
            card(json!({"title": "t"})),
            (
                "3",
                "the content Json String must contains mediaFileId or redirectUrl",
            ),
        ),
        (
            "WEBCARD",
            card(json!({"redirectUrl": "https://x"})),
            ("3", "the content Json String must contains title"),
        ),
        (
            "WEBCARD",
            card(json!({"title": "t", "mediaFileId": "f", "mediaFileType": "gif"})),
            ("3", "Incorrect mediaFileType"),
        ),
        (
            "WEBCARD",
            card(json!({"title": "t", "mediaFileId": "f", "mediaFileType": "img/png"})),
            ("0", "Send message to robot successfully"),
        ),
        (
            "TEXT",
            "x".repeat(1024),
            ("0", "Send message to robot successfully"),
        ),
    ];
    for (media, content, want) in media_cases {
        let mut body = send_body("u1", "CHAT", &content);
        body["mediaType"] = json!(media);
        let r: SendResponse = c.post(SEND_PATH, Some(&t), body).await.json();
        assert_eq!(code_desc(&r), want, "{media} {content}");
    }

    let mut body = send_body("u1", "CHAT", "hi");
    body.as_object_mut().expect("object").remove("controlType");
    let r: SendResponse = c.post(SEND_PATH, Some(&t), body).await.json();
    assert_eq!(code_desc(&r), ("2", "Param is null"));

    let a = c
        .request(
            c.authed("POST", SEND_PATH, Some(&t))
                .body(axum::body::Body::from("{oops"))
                .expect("request"),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        c.sim.received("u1").len(),
        3,
        "CONNECT and the two valid CHATs only"
    );
}

#[tokio::test]
async fn sending_too_quickly_is_refused() {
    let c = Client::new(SimConfig {
        send_rate_limit: Some(2),
        ..SimConfig::default()
    })
    .await;
    let t = c.apply_token("u1").await;
    c.send_ok("u1", &t, "CONNECT", "").await;
    assert_eq!(c.send_ok("u1", &t, "CHAT", "1").await.result_code, "0");
    let r = c.send_ok("u1", &t, "CHAT", "2").await;
    assert_eq!(
        code_desc(&r),
        (
            "13",
            "chat failed, send too quick or session keep touch failed."
        )
    );
    let t2 = c.apply_token("u2").await;
    assert_eq!(
        c.send_ok("u2", &t2, "CONNECT", "").await.result_code,
        "0",
        "the limit is per user"
    );
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(c.send_ok("u1", &t, "CHAT", "3").await.result_code, "0");
}

#[tokio::test]
async fn the_robot_and_agent_answer_media_messages() {
    let c = Client::new(SimConfig::default()).await;
    let t = c.apply_token("u1").await;
    c.send_ok("u1", &t, "CONNECT", "").await;
    let mut body = send_body("u1", "CHAT", "e31d0e44e82f");
    body["mediaType"] = json!("IMAGE");
    let r: SendResponse = c.post(SEND_PATH, Some(&t), body.clone()).await.json();
    assert_eq!(r.result_code, "0");
    c.send_ok("u1", &t, "TRANS2AGENT", "").await;
    let r: SendResponse = c.post(SEND_PATH, Some(&t), body).await.json();
    assert_eq!(code_desc(&r), ("0", "sendUserMessage successfully."));
    let m = c.poll("u1", &t).await.downlink_messages;
    let contents: Vec<_> = m.iter().filter_map(|m| m.content.as_deref()).collect();
    assert_eq!(contents[1], "You sent a message of type IMAGE.");
    assert_eq!(contents[4], "Agent: received your message of type IMAGE.");
}

#[tokio::test]
async fn thousands_of_sessions_run_no_task() {
    let c = Client::new(SimConfig {
        queue_length: 1,
        ..SimConfig::default()
    })
    .await;
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    for i in 0..2000 {
        let user = format!("user{i}");
        let t = c.apply_token(&user).await;
        c.send_ok(&user, &t, "CONNECT", "").await;
        c.send_ok(&user, &t, "TRANS2AGENT", "").await;
    }
    assert_eq!(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        tasks
    );
    assert_eq!(c.sim.stats().calls(crate::Endpoint::Send), 4000);
}
