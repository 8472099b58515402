//! Every NATS input the relay parses, fuzzed through the running relay: random bytes and random
//! JSON shaped like the contract's payloads, on every RPC op and on `up` subjects. Each request
//! must get a well-formed reply, each UpMessage exactly one `up.result` (and a refused one at most
//! one `error` event besides), and the relay must stay ready.
//! (The parsers' own property tests are beside them, in their crates.)

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::support::app::*;

/// A small deterministic generator (xorshift64*), so a failure reproduces.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
    fn text(&mut self) -> String {
        const ALPHABET: &[&str] = &[
            "a", "Z", "0", ",", " ", "汉", "\"", "\\", "\u{0}", "é", "{", ".",
        ];
        let len = match self.below(4) {
            0 => 0,
            1 => self.below(8),
            2 => self.below(40),
            _ => 1000 + self.below(100),
        };
        (0..len).map(|_| self.pick(ALPHABET)).collect()
    }
    fn value(&mut self, depth: usize, enums: &[&str]) -> Value {
        match self.below(if depth > 2 { 6 } else { 8 }) {
            0 => Value::Null,
            1 => Value::Bool(self.below(2) == 0),
            2 => json!(self.next() as i64 % 100),
            3 | 4 if !enums.is_empty() => Value::String(self.pick(enums).to_owned()),
            3..=5 => Value::String(self.text()),
            6 => Value::Array(
                (0..self.below(3))
                    .map(|_| self.value(depth + 1, enums))
                    .collect(),
            ),
            _ => self.object(depth + 1, &["name", "type", "data", "x"], enums),
        }
    }
    fn object(&mut self, depth: usize, fields: &[&str], enums: &[&str]) -> Value {
        let mut m = Map::new();
        for _ in 0..self.below(fields.len() + 1) {
            let k = self.pick(fields).to_owned();
            m.insert(k, self.value(depth, enums));
        }
        Value::Object(m)
    }
    /// Bytes that are often not JSON at all.
    fn payload(&mut self, fields: &[&str], enums: &[&str]) -> Vec<u8> {
        match self.below(6) {
            0 => (0..self.below(64)).map(|_| self.next() as u8).collect(),
            1 => b"{\"truncated\": ".to_vec(),
            2 => serde_json::to_vec(&self.value(0, enums)).unwrap(),
            _ => serde_json::to_vec(&self.object(0, fields, enums)).unwrap(),
        }
    }
}

const OPS: &[&str] = &[
    "queueInfo",
    "phrases",
    "upload",
    "download",
    "clickToCall.support",
    "clickToCall.create",
    "clickToCall.events",
    "clickToCall.drop",
    "mobileAgentCall",
    "send",
    "satisfaction",
    "robotFeedback",
    "leaveMessage",
    "sessions.list",
    "transcript.get",
];
const RPC_FIELDS: &[&str] = &[
    "userId",
    "from",
    "evaluation",
    "comment",
    "feedback",
    "feedbackContent",
    "interIdx",
    "strContent",
    "fileType",
    "fileStream",
    "fileId",
    "mediaAbility",
    "called",
    "callData",
    "callerPresent",
    "caller",
    "leaveMessage",
    "callId",
    "channelConfigId",
    "locale",
    "content",
    "controlType",
    "messageId",
    "tenant",
    "state",
    "limit",
    "kind",
    "after",
    "unknown",
];
const UP_FIELDS: &[&str] = &[
    "controlType",
    "mediaType",
    "content",
    "messageId",
    "senderNickname",
    "senderAvatar",
    "userAgent",
    "transData",
    "channelConfigId",
    "userName",
    "locale",
    "file",
    "unknown",
];
const ENUMS: &[&str] = &[
    "fuzz",
    "CHAT",
    "CONNECT",
    "DISCONNECT",
    "TEXT",
    "IMAGE",
    "WEBCARD",
    "FILE",
    "png",
    "exe",
    "0",
    "1",
    "5",
    "6",
    "AAE=",
    "{}",
    "active",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_rpc_requests_get_well_formed_replies() {
    let mut t = spawn_app().await;
    let mut g = Gen(0x5EED_0001);
    let codes = [
        "invalid_request",
        "unknown_tenant",
        "upstream",
        "unavailable",
        "timeout",
    ];
    for i in 0..400 {
        let (subject, payload) = if i % 10 == 9 {
            let op = g.pick(&["sessions.list", "transcript.get", "health", "nope"]);
            (format!("{PREFIX}.rpc.{op}"), g.payload(RPC_FIELDS, ENUMS))
        } else {
            let op = g.pick(OPS);
            (
                format!("{PREFIX}.cec.{TENANT}.rpc.{op}"),
                g.payload(RPC_FIELDS, ENUMS),
            )
        };
        let reply = tokio::time::timeout(
            Duration::from_secs(15),
            t.client.request(subject.clone(), payload.clone().into()),
        )
        .await
        .unwrap_or_else(|_| panic!("{subject}: no reply in 15 s"))
        .unwrap_or_else(|e| panic!("{subject}: {e}"));
        let v: Value = serde_json::from_slice(&reply.payload).unwrap_or_else(|e| {
            panic!(
                "{subject} {:?}: reply is not JSON ({e})",
                String::from_utf8_lossy(&payload)
            )
        });
        let what = || format!("{subject} {:?} → {v}", String::from_utf8_lossy(&payload));
        assert!(v["ok"].is_boolean(), "{}", what());
        if let Some(e) = v.get("error") {
            assert!(
                codes.contains(&e["code"].as_str().unwrap_or("")),
                "{}",
                what()
            );
            assert!(
                e["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{}",
                what()
            );
        }
    }
    assert_eq!(t.readyz().await.0, 200, "still ready");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_up_messages_each_get_one_result() {
    let mut t = spawn_app().await;
    let mut g = Gen(0x5EED_0002);
    const N: usize = 300;
    let mut users = Vec::new();
    for i in 0..N {
        // One message per customer; some ids are longer than CEC allows (24).
        let len = 1 + g.below(30);
        let user: String = (0..len)
            .map(|k| {
                if k == 0 {
                    "f"
                } else {
                    g.pick(&["a", "7", "_", "-"])
                }
            })
            .collect();
        let user = format!("{user}{i}");
        let payload = g.payload(UP_FIELDS, ENUMS);
        t.publish_raw(TENANT, &user, &payload).await;
        users.push(user);
    }
    let mut w = Watcher::new(&t.js, &format!("{PREFIX}.cec.{TENANT}.event.*")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let count = |w: &Watcher, u: &str, ty: &str| {
        w.events()
            .iter()
            .filter(|e| e["userId"] == u && e["type"] == ty)
            .count()
    };
    loop {
        w.drain(1).await;
        let answered = users
            .iter()
            .filter(|u| count(&w, u, "up.result") >= 1)
            .count();
        if answered == N || tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    w.drain(2).await;
    for u in &users {
        let theirs: Vec<_> = w
            .events()
            .into_iter()
            .filter(|e| e["userId"] == u.as_str())
            .collect();
        assert_eq!(
            count(&w, u, "up.result"),
            1,
            "{u}: one up.result: {theirs:#?}"
        );
        assert!(count(&w, u, "error") <= 1, "{u}: {theirs:#?}");
    }
    assert_eq!(t.readyz().await.0, 200, "still ready");
    t.stop().await;
}
