//! Poison messages: no single message stalls a pipeline. With oversized subject tokens, keys no
//! database index can hold, a user the upstream always refuses with HTTP 500 and a message over
//! the server's `max_payload` flowing, other users' traffic keeps flowing both ways about as fast
//! as in a clean run; each poison input ends in an event and a dead letter; a restart with them
//! present changes nothing. And a stuck outbox shows as a backlog and as not ready.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use config::{CecTenant, Config};
use serde_json::{Value, json};
use sim::{SimConfig, SimHandle};

use crate::support::app::*;

/// Uplink messages whose user token no index can hold (a few hundred keep CI fast; the relay
/// refuses them before anything is stored, so their number only costs time).
const UNINDEXABLE: usize = 150;
/// Round trips per user and phase.
const TRIPS: usize = 5;

/// An upstream that answers everything with HTTP 500.
async fn always_500() -> String {
    let app = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "upstream broken",
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/")
}

/// The test configuration plus tenant `bad` (on `bad_url`), the Tencent app `shop` on the
/// simulator, and a small attempt budget.
fn configure(c: &mut Config, bad_url: &str, sim: &SimHandle) {
    c.tim
        .push(crate::support::tim::sim_tim_app(&sim.base_url()));
    let sc = SimConfig::default();
    let mut bad = CecTenant::simulated(
        "bad",
        url::Url::parse(bad_url).unwrap(),
        &sc.app_key,
        &sc.app_secret,
        &sc.channel_config_id,
    );
    bad.request_timeout = Duration::from_secs(2);
    c.cec.push(bad);
    c.relay.up_attempts = 3;
}

fn ccrelay(db_url: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ccrelay"));
    c.env_remove("RUST_LOG")
        .env_remove("CCRELAY_CONFIG")
        .env("CCRELAY_STORE__URL", db_url)
        .env("CCRELAY_NATS__EMBEDDED", "false")
        .stdin(Stdio::null());
    c
}

/// `ccrelay deadletter list --json`.
fn dead_letters(db_url: &str) -> Vec<Value> {
    let out = ccrelay(db_url)
        .args(["deadletter", "list", "--json", "--limit", "100000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deadletter list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn count(rows: &[Value], reason: &str) -> usize {
    rows.iter().filter(|r| r["reason"] == reason).count()
}

/// A customer connects, then sends `TRIPS` messages one after the other; each round trip lasts
/// from its publish to the robot's echo coming down.
async fn round_trips(t: &TestApp, user: &str) -> Vec<Duration> {
    let mut w = t.watch(TENANT, user).await;
    let connect = format!("{user}-c");
    t.up(
        user,
        json!({"controlType": "CONNECT", "messageId": connect}),
    )
    .await;
    w.until(30, "connected", |s, v| {
        s.contains(".event.") && v["type"] == "up.result" && v["messageId"] == connect.as_str()
    })
    .await;
    let mut trips = Vec::new();
    for i in 0..TRIPS {
        let text = format!("{user} says {i}");
        let started = Instant::now();
        t.up(
            user,
            json!({"content": text, "messageId": format!("{user}-{i}")}),
        )
        .await;
        w.until(30, "the echo", |s, v| {
            s.contains(".down.") && v["content"].as_str().is_some_and(|c| c.contains(&text))
        })
        .await;
        trips.push(started.elapsed());
    }
    trips
}

fn median(mut d: Vec<Duration>) -> Duration {
    d.sort();
    d[d.len() / 2]
}

/// A user token of `len` pseudo-random letters and digits (splitmix64 from `seed`):
/// incompressible enough that no btree takes it.
fn random_token(seed: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ALPHABET[(z % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

async fn poison_does_not_stall_other_users(db_url: Option<String>) {
    let bad_url = always_500().await;
    let bad = bad_url.clone();
    let mut t = spawn_app_configured(SimConfig::default(), db_url, move |c, sim| {
        configure(c, &bad, sim)
    })
    .await;
    let mut errors = Watcher::new(&t.js, &format!("{PREFIX}.error")).await;

    let clean = round_trips(&t, "clean1").await;

    // The poison, all at once.
    let chat = serde_json::to_vec(&json!({"content": "hi"})).unwrap();
    // An oversized token, published on core NATS (no reply subject), as in the report.
    let long = "y".repeat(4040);
    t.client
        .publish(
            format!("{PREFIX}.cec.{TENANT}.up.{long}"),
            chat.clone().into(),
        )
        .await
        .unwrap();
    // Keys no index can hold.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    for i in 0..UNINDEXABLE {
        let user = random_token(seed ^ ((i as u64) << 32), 3000);
        t.client
            .publish(
                format!("{PREFIX}.cec.{TENANT}.up.{user}"),
                chat.clone().into(),
            )
            .await
            .unwrap();
    }
    // The same towards Tencent: a send and a stream chunk.
    let app = crate::support::tim::APP;
    t.client
        .publish(
            format!("{PREFIX}.tim.{app}.send.{long}"),
            serde_json::to_vec(&json!({"id": "t1", "sessionId": "s", "text": "hi"}))
                .unwrap()
                .into(),
        )
        .await
        .unwrap();
    t.client
        .publish(
            format!("{PREFIX}.tim.{app}.stream.{}", random_token(seed, 3000)),
            serde_json::to_vec(&json!({"streamId": "st1", "chunk": "hi", "finish": true}))
                .unwrap()
                .into(),
        )
        .await
        .unwrap();
    t.client.flush().await.unwrap();
    // A user whose upstream refuses everything with HTTP 500.
    let mut doomed = Watcher::new(&t.js, &format!("{PREFIX}.cec.bad.event.doomed")).await;
    for id in ["d0", "d1", "d2"] {
        t.publish_raw(
            "bad",
            "doomed",
            &serde_json::to_vec(&json!({"content": "help", "messageId": id})).unwrap(),
        )
        .await;
    }
    // A message over the server's max_payload (1 MiB), from the agent.
    let mut big = t.watch(TENANT, "big").await;
    t.up(
        "big",
        json!({"controlType": "CONNECT", "messageId": "big-c"}),
    )
    .await;
    big.until(30, "connected", is_result_for("big-c")).await;
    t.sim.agent_say("big", &"x".repeat(1_100_000));

    // Meanwhile, another customer.
    let poisoned = round_trips(&t, "clean2").await;
    // Tencent traffic flows too.
    let mut tw = t.watch_tim("tclean").await;
    t.tim(
        "send",
        "tclean",
        json!({"id": "tc1", "sessionId": "s1", "text": "hello"}),
    )
    .await;
    let r = tw
        .until(30, "send.result", |s, v| {
            s.contains(".event.") && v["type"] == "send.result" && v["messageId"] == "tc1"
        })
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let (clean_m, poisoned_m) = (median(clean.clone()), median(poisoned.clone()));
    eprintln!("median round trip: clean {clean_m:?}, with poison {poisoned_m:?}");
    let bound = (clean_m * 2).max(Duration::from_millis(1500));
    assert!(
        poisoned_m <= bound,
        "with poison flowing the median round trip is {poisoned_m:?}, over {bound:?} (clean: {clean:?}, poisoned: {poisoned:?})"
    );

    // Each poison input: an event…
    for id in ["d0", "d1", "d2"] {
        let r = doomed
            .until(60, "the doomed user's final result", |_, v| {
                v["type"] == "up.result" && v["messageId"] == id
            })
            .await;
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["reason"], "attempts", "{r}");
        assert!(r["deadLetter"].is_i64(), "{r}");
    }
    // …on `P.error` for what names no routable user or cannot be published…
    let expected_bad_subject = UNINDEXABLE + 3;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let of = |code: &str| {
            errors
                .seen
                .iter()
                .filter(|(_, v)| v["type"] == "error" && v["resultCode"] == code)
                .count()
        };
        let (bad_subject, too_large) = (of("bad_subject"), of("too_large"));
        if bad_subject >= expected_bad_subject && too_large >= 1 {
            assert_eq!((bad_subject, too_large), (expected_bad_subject, 1));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{bad_subject} bad_subject and {too_large} too_large error events in 60 s"
        );
        errors.drain(1).await;
    }
    for (_, e) in &errors.seen {
        assert!(e["deadLetter"].is_i64(), "{e}");
        assert!(
            e["subject"].as_str().is_some_and(|s| s.len() < 400),
            "the event repeats an excerpt of the subject: {e}"
        );
    }

    // …and a dead letter each, listed by the CLI.
    let dead = dead_letters(&t.db_url);
    assert_eq!(
        count(&dead, "bad_subject"),
        expected_bad_subject,
        "{dead:?}"
    );
    assert_eq!(count(&dead, "attempts"), 3);
    assert_eq!(count(&dead, "too_large"), 1);
    assert_eq!(dead.len(), expected_bad_subject + 4);
    let (status, ready) = t.readyz().await;
    assert_eq!((status, &ready["outbox"]), (200, &json!("up")), "{ready}");

    // A restart with all of it present changes nothing.
    t.stop().await;
    let mut config = test_config(&t.nats_server.url(), &t.db_url, &t.sim);
    configure(&mut config, &bad_url, &t.sim);
    t.app = Some(
        relay::app::App::start(config)
            .await
            .expect("relay restarts"),
    );
    t.wait_ready().await;
    let again = round_trips(&t, "clean3").await;
    assert!(
        median(again.clone()) <= bound,
        "after the restart: {again:?}"
    );
    let before = errors.seen.len();
    errors.drain(2).await;
    assert_eq!(
        errors.seen.len(),
        before,
        "no new error events after the restart"
    );
    doomed.drain(1).await;
    let results = doomed
        .seen
        .iter()
        .filter(|(_, v)| v["type"] == "up.result")
        .count();
    assert_eq!(results, 3, "the doomed user's messages are not tried again");
    let after = dead_letters(&t.db_url);
    assert_eq!(
        after.iter().map(|d| &d["id"]).collect::<Vec<_>>(),
        dead.iter().map(|d| &d["id"]).collect::<Vec<_>>()
    );
    let (status, ready) = t.readyz().await;
    assert_eq!(status, 200, "{ready}");

    // An operator retries one (the doomed user's first message: handled again, given up again)
    // and drops another.
    let d0 = after
        .iter()
        .find(|d| d["messageId"] == "d0")
        .expect("d0's dead letter");
    let out = ccrelay(&t.db_url)
        .args(["deadletter", "retry", &d0["id"].to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        doomed.drain(1).await;
        let results = doomed
            .seen
            .iter()
            .filter(|(_, v)| v["type"] == "up.result" && v["messageId"] == "d0")
            .count();
        if results == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "d0 was not handled again");
    }
    let retried = dead_letters(&t.db_url);
    assert_eq!(
        retried.len(),
        after.len(),
        "given up again, as a new dead letter"
    );
    assert!(retried.iter().all(|d| d["id"] != d0["id"]));
    let drop = after.iter().find(|d| d["reason"] == "too_large").unwrap();
    let out = ccrelay(&t.db_url)
        .args(["deadletter", "drop", &drop["id"].to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(dead_letters(&t.db_url).len(), after.len() - 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_does_not_stall_other_users_on_sqlite() {
    poison_does_not_stall_other_users(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_does_not_stall_other_users_on_postgres() {
    let pg = crate::support::fresh_pg_database().await;
    poison_does_not_stall_other_users(Some(pg.url.clone())).await;
}

/// A value of `/metrics`.
async fn metric(t: &TestApp, name: &str) -> Option<f64> {
    let url = format!("http://{}/metrics", t.app().http_addr());
    let body = reqwest::get(url).await.ok()?.text().await.ok()?;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_outbox_is_a_backlog_and_not_ready() {
    let mut t = spawn_app_configured(
        SimConfig::default(),
        None,
        |c: &mut Config, _: &SimHandle| {
            c.relay.outbox_stuck_after = Duration::from_secs(1);
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.readyz().await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "never ready: {:?}",
            t.readyz().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing can be published any more: the `_OUT` stream is gone.
    t.js.delete_stream(format!("{}_OUT", PREFIX.to_uppercase()))
        .await
        .unwrap();
    // A refusal to publish (an unknown tenant).
    t.publish_raw("nobody", "u1", b"{}").await;

    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut saw_backlog, mut saw_stuck) = (false, None);
    while !(saw_backlog && saw_stuck.is_some()) {
        assert!(
            Instant::now() < deadline,
            "backlog seen: {saw_backlog}; /readyz: {:?}",
            t.readyz().await
        );
        // The recorder is shared by every relay of the test process: another test's relay may
        // have just written 0; ours writes its count every second.
        saw_backlog |= metric(&t, "ccrelay_outbox_backlog")
            .await
            .is_some_and(|n| n >= 1.0);
        let (status, body) = t.readyz().await;
        if status == 503
            && body["outbox"]
                .as_str()
                .is_some_and(|s| s.starts_with("stuck"))
        {
            saw_stuck = Some(body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = saw_stuck.unwrap_or_default();
    assert_eq!(body["ready"], false, "{body}");
    assert!(
        body["outbox"]
            .as_str()
            .is_some_and(|s| s.contains("rows to publish")),
        "{body}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_jetstream_refuses_backs_off_alone_then_is_a_dead_letter() {
    let t = spawn_app_configured(
        SimConfig::default(),
        None,
        |c: &mut Config, _: &SimHandle| {
            c.relay.outbox_attempts = 3;
        },
    )
    .await;
    let mut errors = Watcher::new(&t.js, &format!("{PREFIX}.error")).await;
    let (mut w1, mut w2) = (t.watch(TENANT, "u1").await, t.watch(TENANT, "u2").await);
    for (user, w) in [("u1", &mut w1), ("u2", &mut w2)] {
        let id: &'static str = if user == "u1" { "u1-c" } else { "u2-c" };
        t.up(user, json!({"controlType": "CONNECT", "messageId": id}))
            .await;
        w.until(30, "connected", is_result_for(id)).await;
    }
    // JetStream now refuses any message over 2 KiB (its answer names the message: a failure of
    // the row's own, not of NATS).
    let name = format!("{}_OUT", PREFIX.to_uppercase());
    let mut config =
        t.js.get_stream(&name)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .config
            .clone();
    config.max_message_size = 2048;
    t.js.update_stream(&config).await.unwrap();

    t.sim.agent_say("u1", &"z".repeat(3000));
    t.sim.agent_say("u1", "after the big one");
    t.sim.agent_say("u2", "meanwhile");
    // Other subjects pass the refused row at once; its own subject's next row waits for it.
    let started = Instant::now();
    w2.until(10, "u2's message", is_down_containing("meanwhile"))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    w1.until(
        30,
        "u1's next message",
        is_down_containing("after the big one"),
    )
    .await;
    assert!(
        w1.downs()
            .iter()
            .all(|d| d["content"].as_str().is_none_or(|c| !c.contains("zzzz"))),
        "the refused message was not published"
    );
    let e = errors
        .until(10, "the dead letter's event", |_, v| {
            v["resultCode"] == "publish_failed"
        })
        .await;
    assert_eq!(
        (&e["source"], &e["attempts"]),
        (&json!("outbox"), &json!(3)),
        "{e}"
    );
    let dead = dead_letters(&t.db_url);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["reason"], "publish_failed");
    assert_eq!(dead[0]["attempts"], 3);
    assert!(
        dead[0]["payload"]
            .as_str()
            .is_some_and(|p| p.contains("zzzz"))
    );
}

/// A message over the server's `max_payload` is never committed to the outbox: its transcript
/// row is stored, and in the same transaction its dead letter and an `error` event naming it.
/// A trigger records every row the outbox is ever given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_max_payload_never_enters_the_outbox() {
    let t = spawn_app().await;
    let audit = rusqlite::Connection::open(&t.db_path).unwrap();
    audit
        .execute_batch(
            "CREATE TABLE outbox_audit (msg_id TEXT NOT NULL, size INTEGER NOT NULL); \
             CREATE TRIGGER outbox_audit AFTER INSERT ON outbox BEGIN \
               INSERT INTO outbox_audit VALUES (new.msg_id, length(new.payload)); END;",
        )
        .unwrap();
    let mut errors = Watcher::new(&t.js, &format!("{PREFIX}.error")).await;
    let mut w = t.watch(TENANT, "big").await;
    t.up(
        "big",
        json!({"controlType": "CONNECT", "messageId": "big-c"}),
    )
    .await;
    w.until(30, "connected", is_result_for("big-c")).await;
    let max_payload = t.client.server_info().max_payload;
    t.sim.agent_say("big", &"x".repeat(max_payload + 1000));
    t.sim.agent_say("big", "after the big one");
    w.until(
        30,
        "the next message",
        is_down_containing("after the big one"),
    )
    .await;
    let e = errors
        .until(30, "the error event", |_, v| v["resultCode"] == "too_large")
        .await;
    let msg_id = e["msgId"].as_str().unwrap().to_owned();

    // Never in the outbox, and nothing the outbox was given is over the limit.
    let given: Vec<(String, i64)> = audit
        .prepare("SELECT msg_id, size FROM outbox_audit")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(given.len() >= 3, "{given:?}");
    assert!(!given.iter().any(|(m, _)| *m == msg_id), "{given:?}");
    assert!(
        given.iter().all(|(_, n)| (*n as usize) < max_payload),
        "{given:?}"
    );
    assert_eq!(
        (&e["source"], &e["maxPayload"], &e["tenant"], &e["userId"]),
        (
            &json!("outbox"),
            &json!(max_payload),
            &json!(TENANT),
            &json!("big")
        ),
        "{e}"
    );
    assert!(
        e["size"].as_u64().is_some_and(|n| n > max_payload as u64),
        "{e}"
    );
    assert!(!e.to_string().contains("xxxx"), "no content in the event");
    let dead = dead_letters(&t.db_url);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        (&dead[0]["reason"], &dead[0]["msgId"], &dead[0]["id"]),
        (&json!("too_large"), &json!(msg_id), &e["deadLetter"]),
        "{:?}",
        dead[0]
    );
    // The transcript keeps the message whole.
    let store = store::connect(&t.db_url).await.unwrap();
    let rows = store.transcript("cec", TENANT, "big").await.unwrap();
    let kept = rows.iter().find(|r| r.relay_id == msg_id).expect("kept");
    assert_eq!(
        kept.content.as_deref().map(str::len),
        Some(max_payload + 1000)
    );
}
