//! The fault harness: the real binary, the simulator, a real nats-server and a PostgreSQL server
//! of its own; a known set of numbered messages pushed in both directions while the relay is
//! SIGKILLed at random moments, nats-server and PostgreSQL are restarted and the upstream fails in
//! bursts. A checker then counts every message as delivered, lost or duplicated, per direction.
//!
//! - Down (CEC → `_OUT`): the agents say `d-<n>`; each must be on `_OUT` once. CEC's poll has no
//!   acknowledgement, so an answer inside the relay at the instant of a kill is the relay's to
//!   keep: the poll journal does. A missing message whose poll the simulator answered within
//!   [`POLL_WINDOW`] before a SIGKILL is counted *lost in the poll window* when the relay's log
//!   says it read that answer (it should have kept it: the run fails), and *unread* when it did
//!   not: the answer was still in the socket when the process died, the one loss left to the
//!   upstream's unacknowledged poll. Any other loss fails the run.
//! - Up (`_IN` → CEC): the customers send `u-<n>` (messageId `u-<n>`) once JetStream took it;
//!   each must reach the upstream once (the simulator honours `messageId` as CEC does) and get
//!   exactly one `up.result` on `_OUT`.
//! - Tencent (`_IN` → Desk `send_msg`): services send `t-<n>` (id `t-<n>`); each must be accepted
//!   once by the simulator (which de-duplicates `MsgRandom`, derived from the id, as Tencent does)
//!   and get exactly one `send.result`.
//!
//! The short forms (one per store) run in `cargo test`. The long form (at least 20 kills, 10,000
//! messages each way, on each store) is documented in docs/RELIABILITY.md:
//! `cargo test --test it chaos::long_form -- --ignored --nocapture`, sized by
//! `CHAOS_KILLS`, `CHAOS_MESSAGES`, `CHAOS_USERS`, and `CHAOS_STORE` (`postgres`, `sqlite` or
//! `both`, the default).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::json;
use sim::{Endpoint, Fault, SimConfig};

use crate::support::app::*;
use crate::support::private_pg::PrivatePg;
use crate::support::relay_proc::{RelayConfig, RelayProcess, write_config};

/// How long before a SIGKILL a poll answer may have been given for a loss of its messages to be
/// counted as "in the poll window" (between the answer and its commit): the losses seen before
/// the poll journal were 10 ms to 300 ms after the answer.
const POLL_WINDOW: Duration = Duration::from_millis(500);

/// The relay's log filter: `info`, and the poller's trace line for each answer in hand (with its
/// messages' codes), which tells a message lost in the poll window from one never read.
const RELAY_LOG: &str = "info,ccrelay_relay::poller=trace";

/// The Tencent app of the harness, on the simulator's Tencent side.
const TIM_APP: &str = "shop";

/// The relay's database in a run.
#[derive(Debug, Clone, Copy)]
enum Db {
    /// A PostgreSQL server of the harness's own, restarted once during the run.
    Postgres,
    /// A SQLite file beside the relay.
    Sqlite,
}

struct Plan {
    db: Db,
    users: usize,
    /// Per direction.
    messages: usize,
    kills: usize,
    /// How long the messages are spread over.
    duration: Duration,
}

#[derive(Default, Debug)]
struct Tally {
    sent: usize,
    delivered: usize,
    duplicated: usize,
    lost: usize,
    /// Of `lost`: answered by the upstream at most [`POLL_WINDOW`] before a SIGKILL, and read by
    /// the relay (its log says the answer was in hand): lost in the poll window, by the relay.
    lost_in_window: usize,
    /// Of `lost`: answered by the upstream at most [`POLL_WINDOW`] before a SIGKILL, and never
    /// read by the relay: still in the socket (or on its way) when the process died.
    lost_unread: usize,
}

struct Report {
    db: Db,
    down: Tally,
    up_upstream: Tally,
    up_results: Tally,
    tim_upstream: Tally,
    tim_results: Tally,
    kills: usize,
    /// Down messages the relay committed from its poll journal at a restart: polled, not
    /// committed when it was killed (what a relay without the journal would have lost).
    replayed: usize,
}

impl Report {
    fn print(&self) {
        println!(
            "\nchaos ({:?}): {} SIGKILLs, 1 nats-server restart{}",
            self.db,
            self.kills,
            match self.db {
                Db::Postgres => ", 1 PostgreSQL restart",
                Db::Sqlite => "",
            }
        );
        println!(
            "{:<28} {:>7} {:>10} {:>5} {:>14} {:>9} {:>11}",
            "direction", "sent", "delivered", "lost", "(poll window)", "(unread)", "duplicated"
        );
        for (name, t) in [
            ("down: CEC → _OUT", &self.down),
            ("up: _IN → CEC", &self.up_upstream),
            ("up: up.result on _OUT", &self.up_results),
            ("tim: _IN → Tencent", &self.tim_upstream),
            ("tim: send.result on _OUT", &self.tim_results),
        ] {
            println!(
                "{:<28} {:>7} {:>10} {:>5} {:>14} {:>9} {:>11}",
                name, t.sent, t.delivered, t.lost, t.lost_in_window, t.lost_unread, t.duplicated
            );
        }
        println!(
            "down: {} messages polled but not committed at a SIGKILL were committed from the poll journal at the restart",
            self.replayed
        );
    }

    fn assert_no_loss(&self) {
        for (name, t) in [
            ("down", &self.down),
            ("up (upstream)", &self.up_upstream),
            ("up (up.result)", &self.up_results),
            ("tim (upstream)", &self.tim_upstream),
            ("tim (send.result)", &self.tim_results),
        ] {
            assert_eq!(t.duplicated, 0, "{name}: duplicated {t:?}");
            // The poll window included: the journal keeps what a kill interrupted. What the
            // relay never read (still in the socket at the kill) is the upstream's to lose.
            assert_eq!(t.lost - t.lost_unread, 0, "{name}: lost {t:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_form_loses_and_duplicates_nothing() {
    let report = run(Plan {
        db: Db::Postgres,
        users: 10,
        messages: 1_500,
        kills: 5,
        duration: Duration::from_secs(15),
    })
    .await;
    report.print();
    report.assert_no_loss();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_form_on_sqlite_loses_and_duplicates_nothing() {
    let report = run(Plan {
        db: Db::Sqlite,
        users: 10,
        messages: 1_000,
        kills: 4,
        duration: Duration::from_secs(10),
    })
    .await;
    report.print();
    report.assert_no_loss();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long form: cargo test --test it chaos::long_form -- --ignored --nocapture"]
async fn long_form() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let kills = env("CHAOS_KILLS", 25);
    let dbs = match std::env::var("CHAOS_STORE").as_deref() {
        Ok("postgres") => vec![Db::Postgres],
        Ok("sqlite") => vec![Db::Sqlite],
        _ => vec![Db::Postgres, Db::Sqlite],
    };
    let mut reports = Vec::new();
    for db in dbs {
        let report = run(Plan {
            db,
            users: env("CHAOS_USERS", 50),
            messages: env("CHAOS_MESSAGES", 10_000),
            kills,
            duration: Duration::from_secs(kills as u64 * 3),
        })
        .await;
        report.print();
        reports.push(report);
    }
    for r in &reports {
        r.assert_no_loss();
    }
}

async fn run(plan: Plan) -> Report {
    crate::support::init_tracing();
    let mut nats = crate::support::nats().await;
    let pg = match plan.db {
        Db::Postgres => Some(PrivatePg::start().await),
        Db::Sqlite => None,
    };
    let sim = sim::spawn(SimConfig {
        robot: false,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let nats_url = nats.url();
    let tim_section = format!(
        r#"
[[tim]]
name = "{TIM_APP}"
base_url = "{sim}"
sdkappid = 1400000000
secret_key = "sim-tim-secret-key"
admin_identifier = "administrator"
rate_limit = 200
request_timeout = "2s"
"#,
        sim = sim.base_url()
    );
    let config = write_config(
        dir.path(),
        &RelayConfig {
            store_url: pg.as_ref().map(PrivatePg::url),
            nats_url: &nats_url,
            sim: &sim,
            relay_section: r#"shutdown_timeout = "5s""#,
            request_timeout: "2s",
            ack_wait: "2s",
            extra: &tim_section,
        },
    );
    let mut relay = RelayProcess::new(config, dir.path().join("relay.log"));
    relay.start_with(&[("RUST_LOG", RELAY_LOG)], &[]);
    let client = async_nats::connect(&nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    relay.wait_for_streams(&js).await;

    let users: Vec<String> = (0..plan.users).map(|i| format!("c{i}")).collect();
    let mut events = Watcher::new(&js, &format!("{PREFIX}.cec.{TENANT}.event.*")).await;
    for u in &users {
        let id = format!("open-{u}");
        publish(&js, u, json!({"controlType": "CONNECT", "messageId": id})).await;
        let leaked: &'static str = Box::leak(id.into_boxed_str());
        events.until(30, "CONNECT", is_result_for(leaked)).await;
    }

    // Producers: agents in the simulator, customers through JetStream.
    let pace = plan.duration / plan.messages as u32;
    let down_codes: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let down = {
        let (sim, users, codes) = (sim.clone(), users.clone(), down_codes.clone());
        let n = plan.messages;
        tokio::spawn(async move {
            for i in 0..n {
                let content = format!("d-{i}");
                let code = sim.agent_say(&users[i % users.len()], &content);
                codes.lock().unwrap().insert(content, code);
                tokio::time::sleep(pace).await;
            }
        })
    };
    let up = {
        let (js, users) = (js.clone(), users.clone());
        let n = plan.messages;
        tokio::spawn(async move {
            for i in 0..n {
                let id = format!("u-{i}");
                publish(
                    &js,
                    &users[i % users.len()],
                    json!({"content": id, "messageId": id}),
                )
                .await;
                tokio::time::sleep(pace).await;
            }
        })
    };

    let tim = {
        let (js, users) = (js.clone(), users.clone());
        let n = plan.messages;
        tokio::spawn(async move {
            for i in 0..n {
                let id = format!("t-{i}");
                publish_to(
                    &js,
                    &format!("{PREFIX}.tim.{TIM_APP}.send.{}", users[i % users.len()]),
                    json!({"id": id, "from": "@customer_service_account", "text": id}),
                    &id,
                )
                .await;
                tokio::time::sleep(pace).await;
            }
        })
    };

    // Faults, spread over the producers' time.
    let mut kills: Vec<Instant> = Vec::new();
    let gap = plan.duration / (plan.kills as u32 + 1);
    let mut rng = rand::rng();
    for k in 0..plan.kills {
        let jitter = rng.random_range(0.5..1.5);
        tokio::time::sleep(gap.mul_f64(jitter)).await;
        relay.kill();
        kills.push(Instant::now());
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        if k == plan.kills / 3 {
            nats.restart().await.unwrap();
        }
        if let Some(pg) = pg.as_ref().filter(|_| k == 2 * plan.kills / 3) {
            pg.stop().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            pg.restart().await;
        }
        if k % 2 == 1 {
            sim.inject_fault(Fault::status(Endpoint::Send, 503).times(3));
            sim.inject_fault(Fault::status(Endpoint::Poll, 500).times(3));
        }
        relay.start_with(&[("RUST_LOG", RELAY_LOG)], &[]);
    }
    down.await.unwrap();
    up.await.unwrap();
    tim.await.unwrap();

    // Quiet: wait until nothing more arrives for a while.
    let mut out = Watcher::new(&js, &format!("{PREFIX}.cec.{TENANT}.>")).await;
    let mut tim_out = Watcher::new(&js, &format!("{PREFIX}.tim.{TIM_APP}.event.*")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut last = usize::MAX;
    loop {
        out.drain(3).await;
        tim_out.drain(1).await;
        let now = out.seen.len() + tim_out.seen.len();
        if now == last || tokio::time::Instant::now() >= deadline {
            break;
        }
        last = now;
    }

    // The checker.
    let mut copies: HashMap<String, usize> = HashMap::new();
    let mut results: HashMap<String, usize> = HashMap::new();
    for (subject, v) in &out.seen {
        if subject.contains(".down.") {
            if let Some(c) = v["content"].as_str().filter(|c| c.starts_with("d-")) {
                *copies.entry(c.to_owned()).or_default() += 1;
            }
        } else if v["type"] == "up.result"
            && let Some(id) = v["messageId"].as_str().filter(|i| i.starts_with("u-"))
        {
            *results.entry(id.to_owned()).or_default() += 1;
        }
    }
    let answered: HashMap<String, Instant> = sim
        .poll_log()
        .into_iter()
        .flat_map(|a| a.message_codes.into_iter().map(move |c| (c, a.at)))
        .collect();
    let codes = down_codes.lock().unwrap().clone();
    // What the relay read: its "Poll answer in hand" lines (trace), with the messages' codes.
    let log = relay.log_text();
    let in_hand: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Poll answer in hand"))
        .collect();
    let mut down_tally = Tally {
        sent: plan.messages,
        ..Tally::default()
    };
    for i in 0..plan.messages {
        let content = format!("d-{i}");
        let at = codes.get(&content).and_then(|c| answered.get(c));
        // The first kill after the poll answer, and how long after it.
        let gap = at.and_then(|a| {
            kills
                .iter()
                .filter(|k| **k >= *a)
                .map(|k| k.duration_since(*a))
                .min()
        });
        match copies.get(&content).copied().unwrap_or(0) {
            0 => {
                down_tally.lost += 1;
                let read = codes
                    .get(&content)
                    .is_some_and(|c| in_hand.iter().any(|l| l.contains(c.as_str())));
                match gap.filter(|g| *g <= POLL_WINDOW) {
                    Some(gap) if read => {
                        down_tally.lost_in_window += 1;
                        println!(
                            "lost in the poll window: {content}, read by the relay, killed {gap:?} after its poll answer"
                        );
                    }
                    Some(gap) => {
                        down_tally.lost_unread += 1;
                        println!(
                            "lost unread: {content}, killed {gap:?} after its poll answer, before the relay read it"
                        );
                    }
                    None => println!("lost: {content} (poll answered at {at:?})"),
                }
            }
            1 => down_tally.delivered += 1,
            _ => down_tally.duplicated += 1,
        }
    }
    let mut upstream = Tally {
        sent: plan.messages,
        ..Tally::default()
    };
    let mut result_tally = Tally {
        sent: plan.messages,
        ..Tally::default()
    };
    let mut processed: HashMap<String, usize> = HashMap::new();
    for u in &users {
        for r in sim.received(u) {
            if let Some(id) = r.request.message_id.filter(|i| i.starts_with("u-")) {
                *processed.entry(id).or_default() += 1;
            }
        }
    }
    for i in 0..plan.messages {
        let id = format!("u-{i}");
        for (tally, n) in [
            (&mut upstream, processed.get(&id)),
            (&mut result_tally, results.get(&id)),
        ] {
            match n.copied().unwrap_or(0) {
                0 => tally.lost += 1,
                1 => tally.delivered += 1,
                _ => tally.duplicated += 1,
            }
        }
    }
    // Tencent: each t-<n> accepted once by the simulator (repeats of its MsgRandom are answered
    // but flagged), and one send.result each.
    let mut tim_accepted: HashMap<String, usize> = HashMap::new();
    for m in sim.tim().messages().into_iter().filter(|m| !m.duplicate) {
        if let Some(text) = m.msg_body[0]["MsgContent"]["Text"].as_str() {
            *tim_accepted.entry(text.to_owned()).or_default() += 1;
        }
    }
    let mut tim_results: HashMap<String, usize> = HashMap::new();
    for (_, v) in &tim_out.seen {
        if v["type"] == "send.result"
            && let Some(id) = v["messageId"].as_str()
        {
            *tim_results.entry(id.to_owned()).or_default() += 1;
        }
    }
    let mut tim_upstream = Tally {
        sent: plan.messages,
        ..Tally::default()
    };
    let mut tim_result_tally = Tally {
        sent: plan.messages,
        ..Tally::default()
    };
    for i in 0..plan.messages {
        let id = format!("t-{i}");
        for (tally, n) in [
            (&mut tim_upstream, tim_accepted.get(&id)),
            (&mut tim_result_tally, tim_results.get(&id)),
        ] {
            match n.copied().unwrap_or(0) {
                0 => tally.lost += 1,
                1 => tally.delivered += 1,
                _ => tally.duplicated += 1,
            }
        }
    }
    relay.kill();
    // The relay's "Poll journal replayed answers=… stored=N already_stored=…" lines.
    let replayed = relay
        .log_text()
        .lines()
        .filter(|l| l.contains("Poll journal replayed"))
        .filter_map(|l| {
            l.split(" stored=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    Report {
        db: plan.db,
        replayed,
        down: down_tally,
        up_upstream: upstream,
        up_results: result_tally,
        tim_upstream,
        tim_results: tim_result_tally,
        kills: kills.len(),
    }
}

/// Publishes an UpMessage until JetStream acknowledges it (nats-server may be restarting). A try
/// that timed out may still have been stored: `Nats-Msg-Id` lets JetStream drop the repeat.
async fn publish(js: &async_nats::jetstream::Context, user: &str, body: serde_json::Value) {
    let id = body["messageId"].as_str().unwrap_or_default().to_owned();
    publish_to(js, &format!("{PREFIX}.cec.{TENANT}.up.{user}"), body, &id).await
}

/// [`publish`] on any subject, with `msg_id` as `Nats-Msg-Id`.
async fn publish_to(
    js: &async_nats::jetstream::Context,
    subject: &str,
    body: serde_json::Value,
    msg_id: &str,
) {
    let subject = subject.to_owned();
    let payload = serde_json::to_vec(&body).unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let acked = async {
            js.publish_with_headers(subject.clone(), headers.clone(), payload.clone().into())
                .await?
                .await
        };
        match tokio::time::timeout(Duration::from_secs(5), acked).await {
            Ok(Ok(_)) => return,
            _ if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => panic!("cannot publish to {subject}: {other:?}"),
        }
    }
}
