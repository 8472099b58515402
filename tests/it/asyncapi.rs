//! `docs/asyncapi.yaml` and its JSON Schemas (`docs/schemas/`) say what the relay publishes and
//! accepts: a CEC and Tencent conversation's every message on `_OUT`, every input it was given, and
//! its RPC replies validate against them.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::app::*;
use crate::support::tim::{APP, spawn_tim_app};

fn schema(name: &str) -> jsonschema::Validator {
    let text = match name {
        "UpMessage" => include_str!("../../docs/schemas/UpMessage.json"),
        "DownMessage" => include_str!("../../docs/schemas/DownMessage.json"),
        "Event" => include_str!("../../docs/schemas/Event.json"),
        "TimSend" => include_str!("../../docs/schemas/TimSend.json"),
        "TimChunk" => include_str!("../../docs/schemas/TimChunk.json"),
        "TimInbound" => include_str!("../../docs/schemas/TimInbound.json"),
        "RpcReply" => include_str!("../../docs/schemas/RpcReply.json"),
        "SessionSummary" => include_str!("../../docs/schemas/SessionSummary.json"),
        other => panic!("no schema {other}"),
    };
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
    jsonschema::validator_for(&v).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn assert_valid(name: &str, v: &Value) {
    let errors: Vec<String> = schema(name).iter_errors(v).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{name} does not hold {v}: {errors:?}");
}

#[test]
fn the_document_names_every_subject_and_schema() {
    let doc = include_str!("../../docs/asyncapi.yaml");
    assert!(doc.starts_with("asyncapi: 3.0.0"));
    for subject in [
        "ccrelay.cec.{tenant}.up.{user}",
        "ccrelay.cec.{tenant}.down.{user}",
        "ccrelay.cec.{tenant}.event.{user}",
        "ccrelay.cec.{tenant}.rpc.{op}",
        "ccrelay.rpc.{op}",
        "ccrelay.error",
        "ccrelay.tim.{app}.send.{user}",
        "ccrelay.tim.{app}.stream.{user}",
        "ccrelay.tim.{app}.event.{user}",
        "ccrelay.tim.{app}.in.{user}",
    ] {
        assert!(doc.contains(&format!("address: {subject}")), "{subject}");
    }
    for name in [
        "UpMessage",
        "DownMessage",
        "Event",
        "TimSend",
        "TimChunk",
        "TimInbound",
        "RpcReply",
        "SessionSummary",
    ] {
        assert!(doc.contains(&format!("schemas/{name}.json")), "{name}");
        let _ = schema(name);
    }
    // A refused input is refused by the schema too.
    assert!(!schema("UpMessage").is_valid(&json!({"controlType": "SHOUT"})));
    assert!(!schema("UpMessage").is_valid(&json!({"content": "x", "nope": 1})));
    assert!(!schema("TimChunk").is_valid(&json!({"chunk": "no stream id"})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_relay_publishes_and_accepts_holds_the_schemas() {
    let mut t = spawn_tim_app().await;
    let mut out = Watcher::new(&t.js, &format!("{PREFIX}.>")).await;
    let mut inputs: Vec<(&str, Value)> = Vec::new();

    let ups = [
        json!({"controlType": "CONNECT", "messageId": "a0", "userName": "Ann", "locale": "en"}),
        json!({"content": "hello", "messageId": "a1", "senderNickname": "Ann"}),
        json!({"mediaType": "WEBCARD", "messageId": "a2",
               "content": json!({"title": "t", "redirectUrl": "https://x"}).to_string()}),
        json!({"messageId": "a3", "file": {"name": "n.txt", "type": "txt", "data": "aGk="}}),
    ];
    for up in ups {
        t.up("ann", up.clone()).await;
        inputs.push(("UpMessage", up));
    }
    let mut ann = t.watch(TENANT, "ann").await;
    ann.until(15, "a3", is_result_for("a3")).await;
    t.sim.agent_say("ann", "agent text");
    t.sim
        .agent_send_file("ann", "IMAGE", "png", b"\x89PNG\r\n".to_vec());
    ann.until(15, "file", |s, v| {
        s.contains(".down.") && v.get("file").is_some()
    })
    .await;
    // A refusal: an error event and an up.result.
    t.publish_raw(TENANT, "ann", b"{not json").await;
    t.up(
        "ann",
        json!({"controlType": "DISCONNECT", "messageId": "a9"}),
    )
    .await;
    ann.until(15, "closed", is_event("session.closed")).await;

    // Tencent: a send, a stream, a callback.
    let send = json!({"id": "s1", "from": "@customer_service_account", "text": "hi"});
    t.tim("send", "tom", send.clone()).await;
    inputs.push(("TimSend", send));
    for (i, chunk) in ["he", "llo"].iter().enumerate() {
        let c = json!({"streamId": "st1", "from": "@RBT#bot", "chunk": chunk, "finish": i == 1});
        t.tim("stream", "tom", c.clone()).await;
        inputs.push(("TimChunk", c));
    }
    let mut tom = t.watch_tim("tom").await;
    tom.until(15, "stream.result", is_event("stream.result"))
        .await;
    let rsp: Value = reqwest::Client::new()
        .post(format!("{}/sim/tim/callback", t.sim.base_url()))
        .json(&json!({
            "url": format!("http://{}/tim/{APP}/callback", t.app().http_addr()),
            "command": "Bot.OnC2CMessage",
            "body": {"CallbackCommand": "Bot.OnC2CMessage", "From_Account": "tom", "To_Account": "@RBT#bot",
                     "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hey"}}]},
            "sign": "good"
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rsp["status"], 200, "{rsp}");
    tom.until(15, "inbound", |s, _| s.contains(".in.")).await;

    // RPC replies, answered and refused.
    for (op, body) in [
        ("queueInfo", json!({"userId": "ann"})),
        ("satisfaction", json!({"userId": "ann", "evaluation": 9})),
        ("nosuch", json!({})),
        ("sessions.list", json!({})),
        ("transcript.get", json!({"userId": "ann", "limit": 1})),
        ("summaries.list", json!({"limit": 1})),
        (
            "forget",
            json!({"userId": "nobody", "requestedBy": "asyncapi"}),
        ),
        ("forget", json!({"userId": "a.b"})),
    ] {
        let r = t.rpc(TENANT, op, &body).await;
        assert_valid("RpcReply", &r);
        for s in r["summaries"].as_array().into_iter().flatten() {
            assert_valid("SessionSummary", s);
        }
    }

    out.drain(2).await;
    let mut kinds = std::collections::BTreeSet::new();
    for (subject, v) in &out.seen {
        let name = if subject.contains(".down.") {
            "DownMessage"
        } else if subject.contains(".in.") {
            "TimInbound"
        } else {
            "Event"
        };
        kinds.insert(if name == "Event" {
            v["type"].as_str().unwrap_or("?").to_owned()
        } else {
            name.to_owned()
        });
        assert_valid(name, v);
        if v["type"] == "session.summary" {
            assert_valid("SessionSummary", &v["summary"]);
        }
    }
    for (name, v) in &inputs {
        assert_valid(name, v);
    }
    for k in [
        "DownMessage",
        "TimInbound",
        "session.opened",
        "session.closed",
        "session.summary",
        "up.result",
        "error",
        "send.result",
        "stream.result",
    ] {
        assert!(kinds.contains(k), "the run published no {k}: {kinds:?}");
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    t.stop().await;
}
