//! Tencent IM through the relay, black-box: NATS in, the simulator's Tencent side (or a direct
//! HTTP call for callbacks) upstream, NATS and the database out.
//!
//! The callback tests call the relay directly; the others drive the simulator's Tencent side
//! (`/v4/…`) and read what it received through its control API (`/sim/tim/…`).

use std::time::Duration;

use relay::timlink::callback::sign;
use serde_json::{Value, json};
use store::kind;

use crate::support::tim::{APP, SIM_CALLBACK_TOKEN, SIM_SDKAPPID, spawn_tim_app};

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// POSTs a callback to the relay with Tencent's query string, signed at `request_time`.
async fn post_callback(
    url: &str,
    command: &str,
    body: &Value,
    request_time: i64,
    token: &str,
) -> (u16, Value) {
    let t = request_time.to_string();
    let mut u = url::Url::parse(url).unwrap();
    u.query_pairs_mut()
        .append_pair("SdkAppid", &SIM_SDKAPPID.to_string())
        .append_pair("CallbackCommand", command)
        .append_pair("contenttype", "json")
        .append_pair("ClientIP", "127.0.0.1")
        .append_pair("OptPlatform", "RESTAPI")
        .append_pair("RequestTime", &t)
        .append_pair("Sign", &sign(token, &t));
    let rsp = reqwest::Client::new()
        .post(u)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = rsp.status().as_u16();
    (status, rsp.json().await.unwrap_or(Value::Null))
}

fn c2c(from: &str, to: &str, text: &str) -> Value {
    json!({
        "CallbackCommand": "Bot.OnC2CMessage",
        "From_Account": from,
        "To_Account": to,
        "MsgKey": format!("key-{from}-{text}"),
        "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": text}}],
    })
}

#[tokio::test]
async fn a_signed_callback_is_answered_ok_stored_and_published() {
    let mut t = spawn_tim_app().await;
    let mut w = t.watch_tim("u1").await;
    let started = std::time::Instant::now();
    let (status, body) = post_callback(
        &t.callback_url(APP),
        "Bot.OnC2CMessage",
        &c2c("u1", "@RBT#bot", "hello"),
        now_secs(),
        SIM_CALLBACK_TOKEN,
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""})
    );
    let m = w
        .until(10, "the TimInbound", |s, _| s.contains(".in."))
        .await;
    assert_eq!(m["From_Account"], "u1");
    assert_eq!(m["app"], APP);
    assert_eq!(m["command"], "Bot.OnC2CMessage");
    assert_eq!(m["MsgBody"][0]["MsgContent"]["Text"], "hello");
    assert!(m["id"].is_string() && m["receivedAt"].is_string());

    let store = store::connect(&t.db_url).await.unwrap();
    let cbs = store.tim_callbacks(APP, 10).await.unwrap();
    assert_eq!(cbs.len(), 1);
    assert!(cbs[0].published);
    assert_eq!(cbs[0].user_id.as_deref(), Some("u1"));
    let transcript = store.transcript(kind::TIM, APP, "u1").await.unwrap();
    assert_eq!(transcript.len(), 1);
    assert_eq!(transcript[0].content.as_deref(), Some("hello"));
    // Readable like a CEC transcript.
    let rsp = t
        .client
        .request(
            "ccrelay.rpc.transcript.get",
            serde_json::to_vec(&json!({"tenant": APP, "userId": "u1", "kind": "tim"}))
                .unwrap()
                .into(),
        )
        .await
        .unwrap();
    let r: Value = serde_json::from_slice(&rsp.payload).unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["messages"][0]["content"], "hello");
    assert_eq!(r["messages"][0]["direction"], "down");
    assert_eq!(r["streams"], json!([]));
    t.stop().await;
}

#[tokio::test]
async fn callbacks_with_a_bad_or_stale_signature_or_an_unknown_app_are_refused() {
    let mut t = spawn_tim_app().await;
    let body = c2c("u2", "@RBT#bot", "x");
    let url = t.callback_url(APP);
    let (bad, b) = post_callback(&url, "Bot.OnC2CMessage", &body, now_secs(), "wrong-token").await;
    assert_eq!(bad, 401);
    assert_eq!(b["ActionStatus"], "FAIL");
    assert!(b["ErrorInfo"].as_str().unwrap().contains("Sign"), "{b}");
    let (stale, b) = post_callback(
        &url,
        "Bot.OnC2CMessage",
        &body,
        now_secs() - 120,
        SIM_CALLBACK_TOKEN,
    )
    .await;
    assert_eq!(stale, 403);
    assert!(
        b["ErrorInfo"].as_str().unwrap().contains("RequestTime"),
        "{b}"
    );
    let unsigned = reqwest::Client::new()
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);
    let (unknown, _) = post_callback(
        &t.callback_url("nope"),
        "Bot.OnC2CMessage",
        &body,
        now_secs(),
        SIM_CALLBACK_TOKEN,
    )
    .await;
    assert_eq!(unknown, 404);
    let store = store::connect(&t.db_url).await.unwrap();
    assert!(store.tim_callbacks(APP, 10).await.unwrap().is_empty());
    t.stop().await;
}

#[tokio::test]
async fn the_robot_s_own_messages_are_stored_but_not_echoed() {
    let mut t = spawn_tim_app().await;
    let mut w = t.watch_tim("u3").await;
    let (status, _) = post_callback(
        &t.callback_url(APP),
        "C2C.CallbackAfterSendMsg",
        &c2c("@RBT#bot", "u3", "robot says"),
        now_secs(),
        SIM_CALLBACK_TOKEN,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post_callback(
        &t.callback_url(APP),
        "Bot.OnC2CMessage",
        &c2c("u3", "@RBT#bot", "user says"),
        now_secs(),
        SIM_CALLBACK_TOKEN,
    )
    .await;
    assert_eq!(status, 200);
    w.until(10, "the user's message", |s, _| s.contains(".in."))
        .await;
    w.drain(1).await;
    let ins: Vec<_> = w.seen.iter().filter(|(s, _)| s.contains(".in.")).collect();
    assert_eq!(ins.len(), 1, "only the user's message: {ins:?}");
    assert_eq!(ins[0].1["From_Account"], "u3");
    let store = store::connect(&t.db_url).await.unwrap();
    let cbs = store.tim_callbacks(APP, 10).await.unwrap();
    assert_eq!(cbs.len(), 2);
    assert!(!cbs[0].published);
    assert!(cbs[1].published);
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Through the simulator's Tencent side.

#[tokio::test]
async fn desk_sends_reach_the_simulator_by_session_and_by_account() {
    let mut t = spawn_tim_app().await;
    let mut w = t.watch_tim("u4").await;
    t.tim(
        "send",
        "u4",
        json!({"id": "m1", "sessionId": "sess-1", "text": "by session"}),
    )
    .await;
    t.tim(
        "send",
        "u4",
        json!({"id": "m2", "from": "@customer_service_account",
               "msgBody": [{"MsgType": "TIMCustomElem", "MsgContent": {"Data": "card"}}],
               "cloudCustomData": "cd", "excludeFromUserRespTimeout": 1}),
    )
    .await;
    for id in ["m1", "m2"] {
        let e = w
            .until(15, "send.result", |s, v| {
                s.contains(".event.") && v["type"] == "send.result" && v["messageId"] == id
            })
            .await;
        assert_eq!(e["ok"], true, "{e}");
    }
    let msgs = t.sim_get("/sim/tim/messages").await;
    let msgs = msgs.as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["SessionId"], "sess-1");
    assert_eq!(msgs[0]["MsgBody"][0]["MsgContent"]["Text"], "by session");
    assert_eq!(msgs[0]["MsgRandom"], tim::wire::msg_random("m1"));
    assert_eq!(msgs[1]["FromAccount"], "@customer_service_account");
    assert_eq!(msgs[1]["ToAccount"], "u4");
    assert_eq!(msgs[1]["MsgBody"][0]["MsgType"], "TIMCustomElem");
    assert_eq!(msgs[1]["CloudCustomData"], "cd");
    assert_eq!(msgs[1]["ExcludeFromUserRespTimeout"], 1);
    t.stop().await;
}

#[tokio::test]
async fn a_final_tencent_error_becomes_a_failed_send_result() {
    let mut t = spawn_tim_app().await;
    t.sim_post(
        "/sim/tim/faults",
        json!({"endpoint": "send_msg", "errorCode": 141005, "errorInfo": "session ended", "times": 1}),
    )
    .await;
    let mut w = t.watch_tim("u5").await;
    t.tim(
        "send",
        "u5",
        json!({"id": "m3", "sessionId": "gone", "text": "x"}),
    )
    .await;
    let e = w
        .until(15, "send.result", |s, v| {
            s.contains(".event.") && v["type"] == "send.result"
        })
        .await;
    assert_eq!(e["ok"], false);
    assert_eq!(e["errorCode"], 141005);
    assert_eq!(e["errorInfo"], "session ended");
    t.stop().await;
}

#[tokio::test]
async fn a_stream_arrives_whole_in_order_and_finished() {
    let mut t = spawn_tim_app().await;
    let mut w = t.watch_tim("u6").await;
    for (i, c) in ["Hello", ", ", "world", "!"].iter().enumerate() {
        t.tim(
            "stream",
            "u6",
            json!({"streamId": "st-1", "from": "@RBT#bot", "chunk": c, "finish": i == 3}),
        )
        .await;
    }
    let e = w
        .until(15, "stream.result", |s, v| {
            s.contains(".event.") && v["type"] == "stream.result"
        })
        .await;
    assert_eq!(e["ok"], true, "{e}");
    let streams = t
        .sim_until("/sim/tim/streams", 10, |v| {
            v.as_array()
                .is_some_and(|a| a.iter().any(|s| s["finished"] == true))
        })
        .await;
    let s = &streams.as_array().unwrap()[0];
    assert_eq!(s["text"], "Hello, world!");
    assert_eq!(s["to"], "u6");
    assert_eq!(e["MsgKey"], s["msgKey"]);
    let stats = t.sim_get("/sim/tim/stats").await;
    assert_eq!(stats["rateLimited"], 0);
    assert_eq!(stats["sigRejected"], 0);
    let store = store::connect(&t.db_url).await.unwrap();
    let row = store.tim_stream(APP, "st-1").await.unwrap().unwrap();
    assert_eq!(row.text, "Hello, world!");
    assert!(row.finished);
    t.stop().await;
}

#[tokio::test]
async fn an_idle_stream_is_finished_by_the_relay() {
    let mut t = spawn_tim_app().await;
    t.tim(
        "stream",
        "u7",
        json!({"streamId": "st-idle", "from": "@RBT#bot", "chunk": "partial"}),
    )
    .await;
    // stream_idle_timeout is 2 s in the test config.
    let streams = t
        .sim_until("/sim/tim/streams", 15, |v| {
            v.as_array()
                .is_some_and(|a| a.iter().any(|s| s["finished"] == true))
        })
        .await;
    assert_eq!(streams[0]["text"], "partial");
    t.stop().await;
}

#[tokio::test]
async fn simulator_callbacks_good_bad_and_stale() {
    let mut t = spawn_tim_app().await;
    let mut w = t.watch_tim("u8").await;
    let url = t.callback_url(APP);
    for (sign, want) in [("good", 200), ("bad", 401), ("stale", 403)] {
        let r = t
            .sim_post(
                "/sim/tim/callback",
                json!({"url": url, "command": "Bot.OnC2CMessage",
                       "body": c2c("u8", "@RBT#bot", sign), "sign": sign}),
            )
            .await;
        assert_eq!(r["status"], want, "{sign}: {r}");
    }
    let m = w
        .until(10, "the TimInbound", |s, _| s.contains(".in."))
        .await;
    assert_eq!(m["MsgBody"][0]["MsgContent"]["Text"], "good");
    w.drain(1).await;
    assert_eq!(w.seen.iter().filter(|(s, _)| s.contains(".in.")).count(), 1);
    t.stop().await;
}

/// The streaming load test, black-box: 500 concurrent streams at 20 chunks per second each through
/// NATS, against the simulator's 200 calls per second.
#[tokio::test]
async fn five_hundred_streams_at_20_chunks_per_second_through_nats_stay_under_the_limit() {
    const STREAMS: usize = 500;
    const CHUNKS: usize = 20; // one second at 20/s
    let mut t = spawn_tim_app().await;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for i in 0..CHUNKS {
        tick.tick().await;
        let mut acks = Vec::with_capacity(STREAMS);
        for n in 0..STREAMS {
            let payload = json!({"streamId": format!("load-{n}"), "from": "@RBT#bot",
                                 "chunk": format!("{n}:{i};"), "finish": i + 1 == CHUNKS});
            acks.push(
                t.js.publish(
                    format!("ccrelay.tim.{APP}.stream.lu{n}"),
                    serde_json::to_vec(&payload).unwrap().into(),
                )
                .await
                .unwrap(),
            );
        }
        for a in
            futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future))
                .await
        {
            a.unwrap();
        }
    }
    let streams = t
        .sim_until("/sim/tim/streams", 120, |v| {
            v.as_array()
                .is_some_and(|a| a.iter().filter(|s| s["finished"] == true).count() == STREAMS)
        })
        .await;
    for s in streams.as_array().unwrap() {
        let n: usize = s["to"].as_str().unwrap()[2..].parse().unwrap();
        let want: String = (0..CHUNKS).map(|i| format!("{n}:{i};")).collect();
        assert_eq!(s["text"], want.as_str(), "stream to {}", s["to"]);
    }
    let stats = t.sim_get("/sim/tim/stats").await;
    eprintln!("simulator stats after the load: {stats}");
    assert_eq!(stats["rateLimited"], 0, "{stats}");
    assert!(
        stats["maxCallsInOneSecond"].as_u64().unwrap() <= 200,
        "{stats}"
    );
    assert!(
        stats["calls"].as_u64().unwrap() < (STREAMS * CHUNKS) as u64,
        "chunks are merged: {stats}"
    );
    let store = store::connect(&t.db_url).await.unwrap();
    let row = store.tim_stream(APP, "load-250").await.unwrap().unwrap();
    assert!(row.finished);
    assert_eq!(row.chunks, CHUNKS as i64);
    t.stop().await;
}

#[tokio::test]
async fn callbacks_fail_closed_without_a_token_ahead_of_time_or_too_large() {
    let mut t = crate::support::app::spawn_app_configured(
        sim::SimConfig::default(),
        None,
        |config, sim| {
            config
                .tim
                .push(crate::support::tim::sim_tim_app(&sim.base_url()));
            // No token: refused, whatever the query says.
            let mut closed = crate::support::tim::sim_tim_app(&sim.base_url());
            closed.name = "closed".into();
            closed.callback_token = None;
            config.tim.push(closed);
            // No token, unsigned callbacks allowed explicitly.
            let mut open = crate::support::tim::sim_tim_app(&sim.base_url());
            open.name = "open".into();
            open.callback_token = None;
            open.allow_unsigned_callbacks = true;
            config.tim.push(open);
        },
    )
    .await;
    let body = c2c("u5", "@RBT#bot", "hello");
    let unsigned = |app: &str| {
        let url = t.callback_url(app);
        let body = body.clone();
        async move {
            let r = reqwest::Client::new()
                .post(format!("{url}?CallbackCommand=Bot.OnC2CMessage"))
                .json(&body)
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };
    assert_eq!(unsigned("closed").await, 401);
    let (signed, b) = post_callback(
        &t.callback_url("closed"),
        "Bot.OnC2CMessage",
        &body,
        now_secs(),
        "anything",
    )
    .await;
    assert_eq!(signed, 401, "{b}");
    assert!(
        b["ErrorInfo"].as_str().unwrap().contains("callback_token"),
        "{b}"
    );
    assert_eq!(unsigned("open").await, 200);

    // Signed a minute ahead of the relay's clock: refused (a few seconds are tolerated).
    let url = t.callback_url(APP);
    let (ahead, b) = post_callback(
        &url,
        "Bot.OnC2CMessage",
        &body,
        now_secs() + 50,
        SIM_CALLBACK_TOKEN,
    )
    .await;
    assert_eq!(ahead, 403, "{b}");
    assert!(b["ErrorInfo"].as_str().unwrap().contains("ahead"), "{b}");
    let (near, b) = post_callback(
        &url,
        "Bot.OnC2CMessage",
        &body,
        now_secs() + 2,
        SIM_CALLBACK_TOKEN,
    )
    .await;
    assert_eq!(near, 200, "{b}");

    // A body that could not be published within the server's max_payload (1 MiB): refused
    // before anything is stored, with an `error` event.
    let mut w =
        crate::support::app::Watcher::new(&t.js, &format!("{}.error", crate::support::app::PREFIX))
            .await;
    // About 1 MiB: under the HTTP server's own 2 MiB limit, over what NATS takes.
    let mut big = c2c("u6", "@RBT#bot", "big");
    big["MsgBody"][0]["MsgContent"]["Text"] = json!("x".repeat(1024 * 1024));
    let (too_large, b) = post_callback(
        &url,
        "Bot.OnC2CMessage",
        &big,
        now_secs(),
        SIM_CALLBACK_TOKEN,
    )
    .await;
    assert_eq!(too_large, 413, "{b}");
    assert!(
        b["ErrorInfo"].as_str().unwrap().contains("max_payload"),
        "{b}"
    );
    let e = w
        .until(10, "the refusal", |_, v| v["type"] == "error")
        .await;
    assert_eq!(e["app"], APP, "{e}");
    let store = store::connect(&t.db_url).await.unwrap();
    let cbs = store.tim_callbacks(APP, 10).await.unwrap();
    assert_eq!(cbs.len(), 1, "only the signed one in the window: {cbs:?}");
    assert_eq!(store.tim_callbacks("open", 10).await.unwrap().len(), 1);
    assert!(store.tim_callbacks("closed", 10).await.unwrap().is_empty());
    t.stop().await;
}
