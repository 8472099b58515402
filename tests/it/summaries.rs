//! Session summaries end to end, against the `ccrelay` binary, a real nats-server and the
//! simulator, on SQLite and PostgreSQL: a conversation with the robot, robot feedback, a queued
//! transfer, an agent, files both ways and a DISCONNECT ends with `session.summary` after
//! `session.closed`, with the figures the conversation made; an evaluation after the close
//! publishes it again with the evaluation; `summaries.list`, `ccrelay summaries list` and
//! `ccrelay report` read the same row. A Tencent Desk session's events, through signed
//! callbacks, keep its summary.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::app::{PREFIX, TENANT, Watcher, is_event, is_result_for};
use crate::support::relay_proc::{RelayConfig, RelayProcess, write_config};

/// The `ccrelay` binary on the relay's database (its admin commands).
fn ccrelay(db_url: &str, nats_url: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ccrelay"));
    c.env_remove("RUST_LOG")
        .env_remove("CCRELAY_CONFIG")
        .env("CCRELAY_STORE__URL", db_url)
        .env("CCRELAY_NATS__URL", nats_url)
        .env("CCRELAY_NATS__EMBEDDED", "false")
        .stdin(Stdio::null());
    c
}

fn run(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Customer<'a> {
    js: &'a async_nats::jetstream::Context,
    user: &'static str,
    seen: Watcher,
}

impl Customer<'_> {
    async fn up(&self, msg: Value) {
        let body = serde_json::to_vec(&msg).unwrap();
        self.js
            .publish(
                format!("{PREFIX}.cec.{TENANT}.up.{}", self.user),
                body.into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Sends `msg` (with messageId `id`) and waits for its up.result, which must be ok.
    async fn send(&mut self, id: &'static str, mut msg: Value) {
        msg["messageId"] = json!(id);
        self.up(msg).await;
        let r = self.seen.until(20, id, is_result_for(id)).await;
        assert_eq!(r["ok"], true, "{r}");
    }

    fn summaries(&self) -> Vec<&Value> {
        self.seen
            .seen
            .iter()
            .filter(|(s, v)| s.contains(".event.") && v["type"] == "session.summary")
            .map(|(_, v)| v)
            .collect()
    }
}

async fn rpc(client: &async_nats::Client, op: &str, body: Value) -> Value {
    let subject = format!("{PREFIX}.cec.{TENANT}.rpc.{op}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client
            .request(subject.clone(), serde_json::to_vec(&body).unwrap().into())
            .await
        {
            Ok(m) => return serde_json::from_slice(&m.payload).unwrap(),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{op}: {e}"),
        }
    }
}

async fn a_conversation_ends_with_its_summary(pg: bool) {
    crate::support::init_tracing();
    let nats = crate::support::nats().await;
    let sim = sim::spawn(sim::SimConfig {
        queue_length: 2,
        queue_step: Duration::from_millis(700),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pg = if pg {
        Some(crate::support::fresh_pg_database().await)
    } else {
        None
    };
    let store_url = pg.as_ref().map_or_else(
        || format!("sqlite://{}", dir.path().join("relay.db").display()),
        |p| p.url.clone(),
    );
    let nats_url = nats.url();
    let config = write_config(
        dir.path(),
        &RelayConfig {
            store_url: Some(store_url.clone()),
            nats_url: &nats_url,
            sim: &sim,
            relay_section: "",
            request_timeout: "3s",
            ack_wait: "5s",
            extra: "",
        },
    );
    let mut relay = RelayProcess::new(config, dir.path().join("relay.log"));
    relay.start();
    let client = async_nats::connect(&nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    relay.wait_for_streams(&js).await;

    let watch = |user: &str| {
        let filter = format!("{PREFIX}.cec.{TENANT}.*.{user}");
        let js = js.clone();
        async move { Watcher::new(&js, &filter).await }
    };
    let mut ann = Customer {
        js: &js,
        user: "ann",
        seen: watch("ann").await,
    };
    let robot = |s: &str, v: &Value| s.contains(".down.") && v["sourceType"] == "ROBOT";
    ann.send(
        "a-connect",
        json!({"controlType": "CONNECT", "locale": "en"}),
    )
    .await;
    ann.seen.until(20, "robot welcome", robot).await;
    ann.send("a-hello", json!({"content": "hello"})).await;
    let answer = ann
        .seen
        .until(20, "robot answer", |s, v| {
            robot(s, v) && v["content"] == "You said: hello"
        })
        .await;
    let r = rpc(
        &client,
        "robotFeedback",
        json!({"userId": "ann", "feedback": 1, "interIdx": answer["interIdx"]}),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");

    // To an agent, through the queue.
    ann.send("a-agent", json!({"controlType": "TRANS2AGENT"}))
        .await;
    let agent = |s: &str, v: &Value| s.contains(".down.") && v["sourceType"] == "AGENT";
    ann.seen.until(30, "the agent", agent).await;
    ann.send("a-question", json!({"content": "a question"}))
        .await;
    ann.seen
        .until(20, "the agent's answer", |s, v| {
            agent(s, v) && v["content"] == "Agent: a question"
        })
        .await;
    ann.send(
        "a-file",
        json!({"file": {"name": "a.png", "type": "png", "data": "iVBORw0KGgo="}}),
    )
    .await;
    sim.agent_send_file("ann", "IMAGE", "png", b"\x89PNG\r\n".to_vec());
    ann.seen
        .until(20, "the agent's file", |s, v| {
            agent(s, v) && v.get("file").is_some()
        })
        .await;
    ann.send("a-bye", json!({"controlType": "DISCONNECT"}))
        .await;
    let summary = ann
        .seen
        .until(20, "the summary", is_event("session.summary"))
        .await;

    // After session.closed (and the DISCONNECT's up.result, committed with it), of the same
    // session.
    let events: Vec<&Value> = ann
        .seen
        .seen
        .iter()
        .filter(|(s, _)| s.contains(".event."))
        .map(|(_, v)| v)
        .collect();
    let closed = events
        .iter()
        .position(|v| v["type"] == "session.closed")
        .expect("session.closed");
    let after: Vec<&Value> = events[closed + 1..]
        .iter()
        .map(|v| &v["type"])
        .take_while(|t| *t != "session.summary")
        .collect();
    assert_eq!(after, vec!["up.result"], "{events:#?}");
    assert_eq!(summary["sessionId"], events[closed]["sessionId"]);
    let s = &summary["summary"];
    assert_eq!(s["kind"], "cec");
    assert_eq!(s["tenant"], TENANT);
    assert_eq!(s["userId"], "ann");
    assert_eq!(s["sessionId"], summary["sessionId"]);
    assert_eq!(s["closeReason"], "customer");
    assert_eq!(s["locale"], "en");
    assert_eq!(s["queued"], true);
    assert_eq!(s["maxQueuePosition"], 2, "the queue was 2 long: {s}");
    assert_eq!(s["transfers"], 1);
    assert_eq!(
        s["customerMessages"], 3,
        "hello, the question, the file: {s}"
    );
    assert_eq!(s["filesFromCustomer"], 1);
    assert_eq!(s["filesToCustomer"], 1);
    assert_eq!(s["robotMessages"], 2, "the welcome and the answer: {s}");
    // The greeting, the answers to the question and to the file, the file.
    assert_eq!(s["agentMessages"], 4, "{s}");
    assert_eq!(s["systemMessages"], 1, "已接通座席。: {s}");
    assert_eq!(s["robotFeedbackPositive"], 1);
    assert_eq!(s["robotFeedbackNegative"], 0);
    assert_eq!(s["satisfactionEvaluation"], Value::Null);
    let ms = |k: &str| {
        s[k].as_i64()
            .unwrap_or_else(|| panic!("{k} is not a number: {s}"))
    };
    // Two queue steps of 700 ms, then at most a few polls.
    assert!(
        (1_000..10_000).contains(&ms("queueWaitMs")),
        "queue wait: {s}"
    );
    assert!(ms("firstRobotAnswerMs") < ms("firstAgentAnswerMs"), "{s}");
    assert!(ms("firstAgentAnswerMs") <= ms("durationMs"), "{s}");
    assert!(ms("agentResponseMedianMs") >= 0, "{s}");

    // An evaluation after the close: the summary again, with it.
    let r = rpc(
        &client,
        "satisfaction",
        json!({"userId": "ann", "evaluation": "5", "comment": "swift"}),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let again = ann
        .seen
        .until(20, "the summary with the evaluation", |sub, v| {
            is_event("session.summary")(sub, v) && v["summary"]["satisfactionEvaluation"] == 5
        })
        .await;
    assert_eq!(again["summary"]["satisfactionComment"], "swift");
    assert_eq!(again["sessionId"], summary["sessionId"]);
    assert_eq!(ann.summaries().len(), 2);

    // bob: the agent hangs up.
    let mut bob = Customer {
        js: &js,
        user: "bob",
        seen: watch("bob").await,
    };
    bob.send("b-connect", json!({"controlType": "CONNECT"}))
        .await;
    bob.seen.until(20, "robot welcome", robot).await;
    sim.agent_disconnect("bob");
    let b = bob
        .seen
        .until(20, "bob's summary", is_event("session.summary"))
        .await;
    assert_eq!(b["summary"]["closeReason"], "agent");
    assert_eq!(b["summary"]["queued"], false);
    assert_eq!(b["summary"]["queueWaitMs"], Value::Null);

    // summaries.list, tenant-scoped, a page at a time.
    let page = rpc(&client, "summaries.list", json!({"limit": 1})).await;
    assert_eq!(page["ok"], true, "{page}");
    assert_eq!(page["summaries"][0], again["summary"], "{page}");
    let next = page["next"].as_str().expect("a next page").to_owned();
    let page = rpc(
        &client,
        "summaries.list",
        json!({"limit": 1, "after": next}),
    )
    .await;
    assert_eq!(page["summaries"][0], b["summary"], "{page}");
    assert!(page.get("next").is_none(), "{page}");
    let refused = rpc(&client, "summaries.list", json!({"tenant": "other"})).await;
    assert_eq!(refused["error"]["code"], "invalid_request", "{refused}");
    relay.kill();

    // The admin commands read the same rows.
    let lines = run(ccrelay(&store_url, &nats_url).args([
        "summaries",
        "list",
        "--tenant",
        TENANT,
        "--json",
    ]));
    let listed: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed, vec![again["summary"].clone(), b["summary"].clone()]);
    let table = run(ccrelay(&store_url, &nats_url).args(["summaries", "list", "--user", "bob"]));
    assert_eq!(table.lines().count(), 2, "a header and bob's: {table}");
    assert!(table.contains("agent"), "{table}");

    let report: Value = serde_json::from_str(&run(ccrelay(&store_url, &nats_url).args([
        "report",
        "--since",
        "2000-01-01",
        "--json",
    ])))
    .unwrap();
    let t = &report["tenants"][0];
    assert_eq!(
        report["tenants"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert_eq!(t["tenant"], TENANT);
    assert_eq!(t["sessions"], 2);
    assert_eq!(t["closeReasons"], json!({"agent": 1, "customer": 1}));
    assert_eq!(t["messages"]["customer"], 3);
    assert_eq!(t["queued"], 1);
    assert_eq!(t["queueWaitMs"]["count"], 1);
    assert_eq!(t["queueWaitMs"]["p50"], again["summary"]["queueWaitMs"]);
    assert_eq!(t["queueWaitMs"]["p99"], again["summary"]["queueWaitMs"]);
    assert_eq!(t["firstRobotAnswerMs"]["count"], 2);
    assert_eq!(t["satisfaction"]["count"], 1);
    assert_eq!(t["satisfaction"]["mean"], 5.0);
    assert_eq!(t["satisfaction"]["distribution"]["5"], 1);
    let text = run(ccrelay(&store_url, &nats_url).args(["report", "--since", "2000-01-01"]));
    assert!(text.contains(&format!("{TENANT} (cec)")), "{text}");
    assert!(text.contains("1 evaluated, mean 5.00"), "{text}");
    let empty = run(ccrelay(&store_url, &nats_url).args(["report", "--since", "2999-01-01"]));
    assert!(empty.contains("No session summary"), "{empty}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_ends_with_its_summary_on_sqlite() {
    a_conversation_ends_with_its_summary(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_ends_with_its_summary_on_postgres() {
    a_conversation_ends_with_its_summary(true).await;
}

/// Tencent: Desk's session events (`Desk.SessionEventNotify`, from the simulator's signed
/// callbacks) keep their session's summary, read with the relay-wide `summaries.list`; each is
/// also published to the user it names (`ClientUserId`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desk_session_events_keep_their_session_s_summary() {
    use crate::support::tim::{APP, spawn_tim_app};
    let mut t = spawn_tim_app().await;
    let mut tom = t.watch_tim("tom").await;
    let (desk, t0) = (
        "b0f4ca12-4850-4218-a284-efe679a87066",
        1_725_540_000_000_i64,
    );
    for (event, ms, extra) in [
        ("SessionBegin", 0, json!({})),
        ("ChatBot.UserSendMsg", 1_000, json!({"MsgKey": "k1"})),
        ("ChatBot.RobotSendMsg", 1_800, json!({"MsgKey": "k2"})),
        ("ChatBot.UserSendMsg", 5_000, json!({"MsgKey": "k3"})),
        ("Staff.StaffSendMsg", 20_000, json!({"MsgKey": "k4"})),
        ("SessionEnd", 30_000, json!({"SatisfactionSelected": 4})),
    ] {
        let mut body = json!({"CallbackCommand": "Desk.SessionEventNotify", "SessionId": desk,
            "Event": event, "EventTime": t0 + ms, "ClientUserId": "tom",
            "CustomerServiceId": "@customer_service_account"});
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        let r = t
            .sim_post(
                "/sim/tim/callback",
                json!({"url": t.callback_url(APP), "command": "Desk.SessionEventNotify",
                       "body": body, "sign": "good"}),
            )
            .await;
        assert_eq!(r["status"], 200, "{r}");
    }
    tom.until(10, "the SessionEnd", |s, v| {
        s.contains(".in.") && v["Event"] == "SessionEnd"
    })
    .await;
    let rsp = t
        .client
        .request(
            format!("{PREFIX}.rpc.summaries.list"),
            serde_json::to_vec(&json!({"kind": "tim", "tenant": APP}))
                .unwrap()
                .into(),
        )
        .await
        .unwrap();
    let page: Value = serde_json::from_slice(&rsp.payload).unwrap();
    let s = &page["summaries"][0];
    assert_eq!(
        page["summaries"].as_array().map(Vec::len),
        Some(1),
        "{page}"
    );
    assert_eq!(s["kind"], "tim");
    assert_eq!(s["tenant"], APP);
    assert_eq!(s["userId"], "tom");
    assert_eq!(s["sessionId"], desk);
    assert_eq!(s["durationMs"], 30_000);
    assert_eq!(s["customerMessages"], 2);
    assert_eq!(s["robotMessages"], 1);
    assert_eq!(s["agentMessages"], 1);
    assert_eq!(s["firstRobotAnswerMs"], 1_800);
    assert_eq!(s["firstAgentAnswerMs"], 20_000);
    assert_eq!(s["satisfactionEvaluation"], 4);
    assert_eq!(s["queued"], Value::Null);
    t.stop().await;
}
