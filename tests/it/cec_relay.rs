//! The walking skeleton end to end: services ⇄ NATS ⇄ relay ⇄ CEC simulator, with SQLite.

use std::time::Duration;

use serde_json::json;
use store::{Direction, MessageStatus, kind};

use crate::support::app::*;

fn source(v: &serde_json::Value) -> &str {
    v["sourceType"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_flows_both_ways_and_is_stored() {
    let mut t = spawn_app().await;
    let user = "alice";
    let mut w = t.watch(TENANT, user).await;

    t.up(user, json!({"controlType": "CONNECT", "messageId": "c1"}))
        .await;
    w.until(10, "session.opened", is_event("session.opened"))
        .await;
    w.until(10, "CONNECT result", is_result_for("c1")).await;
    w.until(10, "robot welcome", |s, v| {
        s.contains(".down.") && v["sourceType"] == "ROBOT"
    })
    .await;

    t.up(
        user,
        json!({"content": "What are your opening hours?", "messageId": "c2"}),
    )
    .await;
    w.until(
        10,
        "robot answer",
        is_down_containing("What are your opening hours?"),
    )
    .await;

    t.up(
        user,
        json!({"controlType": "TRANS2AGENT", "messageId": "c3"}),
    )
    .await;
    w.until(10, "TRANS2AGENT result", is_result_for("c3")).await;
    w.until(10, "system message", |s, v| {
        s.contains(".down.") && v["sourceType"] == "SYSTEM"
    })
    .await;
    w.until(10, "agent greeting", |s, v| {
        s.contains(".down.") && v["sourceType"] == "AGENT"
    })
    .await;

    t.up(
        user,
        json!({"content": "Change my address please", "messageId": "c4"}),
    )
    .await;
    w.until(
        10,
        "agent reply",
        is_down_containing("Change my address please"),
    )
    .await;
    t.sim.agent_say(user, "Done, anything else?");
    w.until(
        10,
        "scripted agent message",
        is_down_containing("Done, anything else?"),
    )
    .await;

    t.up(
        user,
        json!({"controlType": "DISCONNECT", "messageId": "c5"}),
    )
    .await;
    let closed = w
        .until(10, "session.closed", is_event("session.closed"))
        .await;
    assert_eq!(closed["reason"], "customer");
    w.until(10, "DISCONNECT result", is_result_for("c5")).await;

    // Order: robot before system before agent; every DownMessage carries the relay's fields and
    // the upstream's, with Nats-Msg-Id = id (checked by uniqueness below).
    let downs = w.downs();
    let order: Vec<&str> = downs.iter().map(|v| source(v)).collect();
    let first_system = order.iter().position(|s| *s == "SYSTEM").unwrap();
    let first_agent = order.iter().position(|s| *s == "AGENT").unwrap();
    assert!(
        order[..first_system].iter().all(|s| *s == "ROBOT"),
        "{order:?}"
    );
    assert!(first_system < first_agent, "{order:?}");
    for d in &downs {
        assert_eq!(d["tenant"], TENANT);
        assert_eq!(d["userId"], user);
        assert!(d["id"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(
            d["messageCode"].as_str().is_some(),
            "upstream field kept: {d}"
        );
        assert!(d["receivedAt"].as_str().is_some());
        assert_eq!(d["to"], user);
    }
    let mut ids: Vec<&str> = w
        .seen
        .iter()
        .map(|(_, v)| v["id"].as_str().unwrap())
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "nothing published twice");
    let results: Vec<_> = w
        .events()
        .into_iter()
        .filter(|e| e["type"] == "up.result")
        .collect();
    assert_eq!(results.len(), 5, "one up.result per UpMessage");
    assert!(results.iter().all(|e| e["ok"] == true), "{results:#?}");

    // The transcript holds both directions with the upstream fields.
    let rows = t
        .app()
        .relay()
        .store
        .transcript(kind::CEC, TENANT, user)
        .await
        .unwrap();
    let ups: Vec<_> = rows
        .iter()
        .filter(|r| r.direction == Direction::Up)
        .collect();
    let stored_downs: Vec<_> = rows
        .iter()
        .filter(|r| r.direction == Direction::Down)
        .collect();
    assert_eq!(ups.len(), 5);
    assert!(ups.iter().all(|r| r.status == MessageStatus::Sent));
    assert_eq!(
        ups[1].content.as_deref(),
        Some("What are your opening hours?")
    );
    let body: serde_json::Value = serde_json::from_str(&ups[1].body).unwrap();
    assert_eq!(body["sourceType"], "CUSTOMER");
    assert_eq!(body["channel"], "WEB");
    assert_eq!(body["from"], user);
    assert_eq!(stored_downs.len(), downs.len());
    assert!(stored_downs.iter().all(|r| r.message_code.is_some()));
    let sessions = t
        .app()
        .relay()
        .store
        .list_sessions(Some(TENANT), None, 10)
        .await
        .unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].close_reason.as_deref(), Some("customer"));
    // What the upstream received, once each.
    let received = t.sim.received(user);
    assert_eq!(received.len(), 5);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_upstream_returns_twice_is_published_once() {
    let mut t = spawn_app().await;
    let user = "bob";
    let mut w = t.watch(TENANT, user).await;
    t.up(user, json!({"controlType": "CONNECT"})).await;
    w.until(10, "robot welcome", |s, v| {
        s.contains(".down.") && v["sourceType"] == "ROBOT"
    })
    .await;
    t.sim.duplicate_next_poll(user);
    t.sim.agent_say(user, "first");
    w.until(10, "first", is_down_containing("first")).await;
    t.sim.duplicate_next_poll(user);
    t.sim.agent_say(user, "second");
    w.until(10, "second", is_down_containing("second")).await;
    w.drain(2).await;
    let codes: Vec<&str> = w
        .downs()
        .iter()
        .map(|d| d["messageCode"].as_str().unwrap())
        .collect();
    let mut unique = codes.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        codes.len(),
        "duplicated messageCode published: {codes:?}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expiring_mid_conversation_lose_nothing() {
    let mut t = spawn_app().await;
    let user = "carol";
    let mut w = t.watch(TENANT, user).await;
    t.up(user, json!({"controlType": "CONNECT", "messageId": "k1"}))
        .await;
    w.until(10, "connected", is_result_for("k1")).await;
    t.sim.expire_cc_tokens();
    t.up(
        user,
        json!({"content": "after the ccmessaging-token expired", "messageId": "k2"}),
    )
    .await;
    w.until(
        10,
        "reply",
        is_down_containing("after the ccmessaging-token expired"),
    )
    .await;
    t.sim.expire_access_tokens();
    t.up(
        user,
        json!({"content": "after the AccessToken expired", "messageId": "k3"}),
    )
    .await;
    w.until(
        10,
        "reply",
        is_down_containing("after the AccessToken expired"),
    )
    .await;
    t.sim.expire_cc_tokens();
    t.sim.expire_access_tokens();
    t.sim.agent_say(user, "polled with both expired");
    w.until(
        10,
        "agent message",
        is_down_containing("polled with both expired"),
    )
    .await;
    w.drain(1).await;
    let bad: Vec<_> = w.events().into_iter().filter(|e| e["ok"] != true).collect();
    assert!(bad.is_empty(), "no error may reach the user: {bad:#?}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_the_relay_keeps_running() {
    let mut t = spawn_app().await;
    // Invalid JSON.
    let mut w = t.watch(TENANT, "dave").await;
    t.publish_raw(TENANT, "dave", b"{not json").await;
    let e = w.until(10, "error event", is_event("error")).await;
    assert_eq!(e["ok"], false);
    assert!(e["resultDesc"].as_str().unwrap().contains("payload"), "{e}");
    // A TEXT over 1 KB.
    t.up(
        "dave",
        json!({"content": "x".repeat(1025), "messageId": "big"}),
    )
    .await;
    let e = w
        .until(10, "oversize refusal", |s, v| {
            s.contains(".event.") && v["type"] == "error" && v["messageId"] == "big"
        })
        .await;
    assert_eq!(e["field"], "content");
    assert!(e["resultDesc"].as_str().unwrap().contains("1024"), "{e}");
    // An unknown tenant.
    let mut wx = t.watch("nosuch", "dave").await;
    t.publish_raw("nosuch", "dave", br#"{"content":"hi"}"#)
        .await;
    let e = wx.until(10, "unknown tenant", is_event("error")).await;
    assert_eq!(e["resultCode"], "unknown_tenant");
    // A user id CEC cannot take (25 characters; the limit is 24).
    let long = "u234567890123456789012345";
    let mut wl = t.watch(TENANT, long).await;
    t.up(long, json!({"content": "hi"})).await;
    let e = wl.until(10, "bad user id", is_event("error")).await;
    assert_eq!(e["field"], "userId");
    // Nothing of those reached the upstream, and the relay still works.
    assert!(t.sim.received("dave").is_empty());
    assert!(t.sim.received(long).is_empty());
    t.up(
        "dave",
        json!({"controlType": "CONNECT", "messageId": "ok1"}),
    )
    .await;
    let r = w
        .until(10, "a good message still works", is_result_for("ok1"))
        .await;
    assert_eq!(r["ok"], true);
    // Refusals are stored as failed up rows, with the reason.
    let rows = t
        .app()
        .relay()
        .store
        .transcript(kind::CEC, TENANT, "dave")
        .await
        .unwrap();
    let failed = rows
        .iter()
        .filter(|r| r.status == MessageStatus::Failed)
        .count();
    assert_eq!(failed, 2);
    tokio::time::sleep(Duration::from_millis(10)).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_transfer_reports_a_falling_position_then_the_agent_answers() {
    let mut t = spawn_app_with(sim::SimConfig {
        queue_length: 3,
        queue_step: Duration::from_millis(400),
        ..Default::default()
    })
    .await;
    let user = "quinn";
    let mut w = t.watch(TENANT, user).await;
    t.up(user, json!({"controlType": "CONNECT", "messageId": "q1"}))
        .await;
    w.until(10, "connected", is_result_for("q1")).await;
    t.up(
        user,
        json!({"controlType": "TRANS2AGENT", "messageId": "q2"}),
    )
    .await;
    let r = w.until(10, "transfer result", is_result_for("q2")).await;
    assert_eq!(r["resultCode"], "11", "{r}");
    w.until(15, "agent", |s, v| {
        s.contains(".down.") && v["sourceType"] == "AGENT"
    })
    .await;
    let positions: Vec<i64> = w
        .events()
        .iter()
        .filter(|e| e["type"] == "session.queued")
        .filter_map(|e| e["position"].as_i64())
        .collect();
    assert!(
        !positions.is_empty(),
        "no queue position published: {:#?}",
        w.events()
    );
    assert!(
        positions.windows(2).all(|p| p[1] < p[0]),
        "positions must fall: {positions:?}"
    );
    let sessions = t
        .app()
        .relay()
        .store
        .list_sessions(Some(TENANT), None, 5)
        .await
        .unwrap();
    assert_eq!(
        sessions[0].state,
        store::SessionState::Active,
        "back to active once the agent answers"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_answer_is_stored_once_and_announced() {
    let mut t = spawn_app_with(sim::SimConfig {
        offline_mode: true,
        ..Default::default()
    })
    .await;
    let user = "olga";
    let mut w = t.watch(TENANT, user).await;
    t.up(user, json!({"controlType": "CONNECT", "messageId": "f1"}))
        .await;
    let r = w.until(10, "result", is_result_for("f1")).await;
    assert_eq!(
        (r["ok"].clone(), r["offline"].clone()),
        (json!(true), json!(true)),
        "{r}"
    );
    let saved = w
        .until(10, "offline.saved", is_event("offline.saved"))
        .await;
    assert_eq!(saved["messageId"], "f1");
    // Published again (a service retrying): stored once.
    t.up(user, json!({"controlType": "CONNECT", "messageId": "f1"}))
        .await;
    w.drain(2).await;
    let rows = t
        .app()
        .relay()
        .store
        .offline_messages("cec", TENANT, user)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].message_id.as_deref(), Some("f1"));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_a_file_is_uploaded_then_sent_in_the_documented_form() {
    use base64::Engine as _;
    let mut t = spawn_app().await;
    let user = "fay";
    let mut w = t.watch(TENANT, user).await;
    t.up(user, json!({"controlType": "CONNECT", "messageId": "p0"}))
        .await;
    w.until(10, "connected", is_result_for("p0")).await;
    let png: Vec<u8> = (0..=255u8).collect();
    let b64 = base64::engine::general_purpose::STANDARD;
    t.up(user, json!({"messageId": "p1", "file": {"name": "a.png", "type": "png", "data": b64.encode(&png)}})).await;
    let r = w.until(10, "image result", is_result_for("p1")).await;
    assert_eq!(r["ok"], true, "{r}");
    t.up(user, json!({"messageId": "p2", "mediaType": "FILE", "file": {"name": "notes.txt", "type": "txt", "data": b64.encode(b"hello!")}})).await;
    let r = w.until(10, "file result", is_result_for("p2")).await;
    assert_eq!(r["ok"], true, "{r}");
    let received = t.sim.received(user);
    let image = &received
        .iter()
        .find(|r| r.request.message_id.as_deref() == Some("p1"))
        .unwrap()
        .request;
    assert_eq!(image.media_type, "IMAGE", "inferred from the file type");
    assert_eq!(
        t.sim.uploaded(&image.content).as_deref(),
        Some(&png[..]),
        "content is the fileId"
    );
    let file = &received
        .iter()
        .find(|r| r.request.message_id.as_deref() == Some("p2"))
        .unwrap()
        .request;
    let parts: Vec<&str> = file.content.split(',').collect();
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("notes.txt", "6", "txt"),
        "{}",
        file.content
    );
    assert_eq!(t.sim.uploaded(parts[2]).as_deref(), Some(&b"hello!"[..]));
    // Refused before any upload: a type CEC does not take.
    t.up(
        user,
        json!({"messageId": "p3", "file": {"name": "x.exe", "type": "exe", "data": "AA=="}}),
    )
    .await;
    let e = w
        .until(10, "refusal", |s, v| {
            s.contains(".event.") && v["type"] == "error" && v["messageId"] == "p3"
        })
        .await;
    assert_eq!(e["field"], "file.type", "{e}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_send_result_codes_reach_the_caller_unchanged() {
    use sim::Endpoint;
    let mut t = spawn_app().await;
    let user = "rick";
    let mut w = t.watch(TENANT, user).await;
    t.up(user, json!({"controlType": "CONNECT", "messageId": "r0"}))
        .await;
    w.until(10, "connected", is_result_for("r0")).await;
    let cases: [(&str, &str, bool); 5] = [
        ("2", "Param is null", false),
        ("3", "the content Json String must contains title", false),
        (
            "12",
            "The current time is not within the working time of the service agents",
            false,
        ),
        ("13", "sendUserMessage failed.", false),
        ("11", "Queuing...", true),
    ];
    for (i, (code, desc, ok)) in cases.iter().enumerate() {
        t.sim.force_result(Endpoint::Send, code, desc, 1);
        let id: &'static str = Box::leak(format!("r{}", i + 1).into_boxed_str());
        t.up(user, json!({"content": "hi", "messageId": id})).await;
        let r = w.until(10, "result", is_result_for(id)).await;
        assert_eq!(r["resultCode"], *code, "{r}");
        assert_eq!(r["resultDesc"], *desc, "{r}");
        assert_eq!(r["ok"], *ok, "{r}");
    }
    // "send too quick" is retried, and the message gets through.
    t.sim.force_result(
        Endpoint::Send,
        "13",
        "chat failed, send too quick or session keep touch failed.",
        2,
    );
    t.up(
        user,
        json!({"content": "after a slow-down", "messageId": "r9"}),
    )
    .await;
    let r = w
        .until(20, "result after retries", is_result_for("r9"))
        .await;
    assert_eq!(
        (r["ok"].clone(), r["resultCode"].clone()),
        (json!(true), json!("0")),
        "{r}"
    );
    // The stored rows say the same.
    let rows = t
        .app()
        .relay()
        .store
        .transcript("cec", TENANT, user)
        .await
        .unwrap();
    let r3 = rows
        .iter()
        .find(|r| r.message_id.as_deref() == Some("r3"))
        .unwrap();
    assert_eq!(
        (r3.status, r3.result_code.as_deref()),
        (store::MessageStatus::Failed, Some("12"))
    );
    t.stop().await;
}
