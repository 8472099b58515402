//! The database is the buffer: with NATS down, polling goes on and everything is committed with
//! its outbox rows, then published once NATS is back — each message once. With the database down,
//! nothing polled is lost: it is committed once the database is back.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::app::*;

const USERS: usize = 10;
const MESSAGES: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_for_30s_while_1000_messages_come_down_all_arrive_once() {
    let mut t = spawn_app().await;
    let users: Vec<String> = (0..USERS).map(|i| format!("out{i}")).collect();
    let mut w = Watcher::new(&t.js, &format!("{PREFIX}.cec.{TENANT}.event.*")).await;
    for (i, u) in users.iter().enumerate() {
        let id: &'static str = Box::leak(format!("c{i}").into_boxed_str());
        t.up(u, json!({"controlType": "CONNECT", "messageId": id}))
            .await;
        w.until(10, "connected", is_result_for(id)).await;
    }

    t.nats_server.stop().await;
    let down_at = tokio::time::Instant::now();
    // The agents write while NATS is down, over 20 of its 30 seconds.
    for n in 0..MESSAGES {
        t.sim.agent_say(&users[n % USERS], &format!("n-{n}"));
        if n % 50 == 49 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    // Everything is polled and committed while NATS is away.
    let store = t.app().relay().store.clone();
    let deadline = down_at + Duration::from_secs(30);
    let committed = loop {
        let mut n = 0;
        for u in &users {
            n += store
                .transcript("cec", TENANT, u)
                .await
                .unwrap()
                .iter()
                .filter(|r| r.content.as_deref().is_some_and(|c| c.starts_with("n-")))
                .count();
        }
        if n == MESSAGES || tokio::time::Instant::now() >= deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        committed, MESSAGES,
        "all polled and stored while NATS was down"
    );
    tokio::time::sleep_until(deadline).await;

    t.nats_server.restart().await.unwrap();
    let mut downs = Watcher::new(&t.js, &format!("{PREFIX}.cec.{TENANT}.down.*")).await;
    let seen = count_agent_messages(&mut downs, 60).await;
    assert_eq!(seen.len(), MESSAGES, "every message on _OUT");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");
    // Per user, in the order the agents wrote them.
    for u in &users {
        let order: Vec<usize> = downs
            .downs()
            .iter()
            .filter(|v| v["userId"] == u.as_str())
            .filter_map(|v| v["content"].as_str()?.strip_prefix("n-")?.parse().ok())
            .collect();
        assert!(order.windows(2).all(|p| p[0] < p[1]), "{u}: {order:?}");
    }
    t.stop().await;
}

/// Reads `n-…` DownMessages until all [`MESSAGES`] were seen (or `secs` pass), counting copies.
async fn count_agent_messages(w: &mut Watcher, secs: u64) -> HashMap<String, usize> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        w.drain(1).await;
        let seen = tally(w.downs());
        if seen.len() == MESSAGES || tokio::time::Instant::now() >= deadline {
            // A last look for late duplicates.
            w.drain(1).await;
            return tally(w.downs());
        }
    }
}

fn tally(downs: Vec<&Value>) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for v in downs {
        if let Some(c) = v["content"].as_str().filter(|c| c.starts_with("n-")) {
            *seen.entry(c.to_owned()).or_insert(0) += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_while_sessions_are_active_loses_nothing() {
    let pg = crate::support::private_pg::PrivatePg::start().await;
    let mut t = spawn_app_on(sim::SimConfig::default(), Some(pg.url())).await;
    let users: Vec<String> = (0..5).map(|i| format!("db{i}")).collect();
    let mut w = Watcher::new(&t.js, &format!("{PREFIX}.cec.{TENANT}.event.*")).await;
    for (i, u) in users.iter().enumerate() {
        let id: &'static str = Box::leak(format!("d{i}").into_boxed_str());
        t.up(u, json!({"controlType": "CONNECT", "messageId": id}))
            .await;
        w.until(10, "connected", is_result_for(id)).await;
    }
    assert_eq!(t.readyz().await.0, 200);

    pg.stop().await;
    let (status, body) = t.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["database"]
            .as_str()
            .is_some_and(|d| d.starts_with("down")),
        "/readyz names the database: {body}"
    );
    // The first message polled cannot be committed…
    t.sim.agent_say(&users[0], "n-first");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // …and from then on polling pauses, for every session: nothing more is taken from the
    // upstream that could not be stored.
    let polls = || t.sim.stats().calls(sim::Endpoint::Poll);
    let paused_at = polls();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(polls(), paused_at, "no poll while the database is down");
    const N: usize = 200;
    for n in 0..N - 1 {
        t.sim
            .agent_say(&users[(n + 1) % users.len()], &format!("n-{n}"));
    }
    pg.restart().await;

    let mut downs = Watcher::new(&t.js, &format!("{PREFIX}.cec.{TENANT}.down.*")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let seen = loop {
        downs.drain(1).await;
        let seen = tally(downs.downs());
        if seen.len() == N || tokio::time::Instant::now() >= deadline {
            break seen;
        }
    };
    assert_eq!(
        seen.len(),
        N,
        "every message polled while the database was down arrives"
    );
    assert!(seen.values().all(|n| *n == 1), "once each: {seen:?}");
    for u in &users {
        let rows = t
            .app()
            .relay()
            .store
            .transcript("cec", TENANT, u)
            .await
            .unwrap();
        let stored = rows
            .iter()
            .filter(|r| r.content.as_deref().is_some_and(|c| c.starts_with("n-")))
            .count();
        assert_eq!(stored, N / users.len(), "{u}: all stored");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while t.readyz().await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "ready again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    t.stop().await;
}
