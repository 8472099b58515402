//! What was polled is never dropped.
//!
//! - A database that refuses writes — full, read-only — pauses the relay: traffic flows while the
//!   database fills up (SQLite at its `max_page_count`) or turns read-only (PostgreSQL with
//!   `default_transaction_read_only`, as a demoted primary would be); `/readyz` names the cause;
//!   once writes go through again every message is on `_OUT` once.
//! - A SIGKILL (or a shutdown) with poll answers in hand loses none of them: the database is kept
//!   from committing (a lock held by the test) while the simulator answers every poll, the relay
//!   is killed (or stopped), and the next start replays its poll journal — every message once on
//!   `_OUT`.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Connection};

use crate::support::app::*;
use crate::support::relay_proc::{RelayConfig, RelayProcess, write_config};

const USERS: usize = 5;

/// Opens a session per user and returns the users.
async fn open_sessions(t: &TestApp, prefix: &str) -> Vec<String> {
    let users: Vec<String> = (0..USERS).map(|i| format!("{prefix}{i}")).collect();
    let mut w = Watcher::new(&t.js, &format!("{PREFIX}.cec.{TENANT}.event.*")).await;
    for u in &users {
        let id: &'static str = Box::leak(format!("open-{u}").into_boxed_str());
        t.up(u, json!({"controlType": "CONNECT", "messageId": id}))
            .await;
        w.until(15, "connected", is_result_for(id)).await;
    }
    users
}

/// The agents say `<tag>-0` … `<tag>-<n-1>` over `over`, round robin over `users`.
fn agents_say(
    t: &TestApp,
    users: &[String],
    tag: &str,
    n: usize,
    over: Duration,
) -> tokio::task::JoinHandle<()> {
    let (sim, users, tag) = (t.sim.clone(), users.to_vec(), tag.to_owned());
    tokio::spawn(async move {
        for i in 0..n {
            sim.agent_say(&users[i % users.len()], &format!("{tag}-{i}"));
            tokio::time::sleep(over / n as u32).await;
        }
    })
}

/// Waits (up to `secs`) until `/readyz` says the database is down for a reason containing
/// `cause`; returns its body.
async fn wait_not_ready(t: &TestApp, cause: &str, secs: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let (status, body) = t.readyz().await;
        let db = body["database"].as_str().unwrap_or_default().to_owned();
        if status == 503 && db.contains(cause) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz never named {cause:?}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads `_OUT` until every `<tag>-<i>` (i < n) was seen or `secs` pass; asserts each once.
async fn assert_all_once(t: &TestApp, tag: &str, n: usize, secs: u64) {
    let mut downs = Watcher::new(&t.js, &format!("{PREFIX}.cec.{TENANT}.down.*")).await;
    let prefix = format!("{tag}-");
    let count = |w: &Watcher| {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for v in w.downs() {
            if let Some(c) = v["content"].as_str().filter(|c| c.starts_with(&prefix)) {
                *seen.entry(c.to_owned()).or_default() += 1;
            }
        }
        seen
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while count(&downs).len() < n && tokio::time::Instant::now() < deadline {
        downs.drain(1).await;
    }
    // A last look for late duplicates.
    downs.drain(1).await;
    let seen = count(&downs);
    let lost: Vec<usize> = (0..n)
        .filter(|i| !seen.contains_key(&format!("{tag}-{i}")))
        .collect();
    let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(lost.is_empty(), "lost {} of {n}: {lost:?}", lost.len());
    assert!(twice.is_empty(), "duplicated: {twice:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sqlite_database_pauses_polling_and_loses_nothing() {
    const MESSAGES: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("full.db").display());
    // The relay's database, migrated, with 4 MB of ballast the test frees once it is full.
    let pages: i64 = {
        let store = store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        drop(store);
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("CREATE TABLE ballast (b BLOB)")
            .execute(&mut c)
            .await
            .unwrap();
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) \
             INSERT INTO ballast SELECT randomblob(4000) FROM n",
        )
        .execute(&mut c)
        .await
        .unwrap();
        let pages = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
        pages
    };
    // Room for the sessions, not for the messages.
    let relay_url = format!("{url}?max_page_count={}", pages + 24);
    let mut t = spawn_app_on(sim::SimConfig::default(), Some(relay_url)).await;
    let users = open_sessions(&t, "full").await;
    assert_eq!(t.readyz().await.0, 200);

    let agents = agents_say(&t, &users, "f", MESSAGES, Duration::from_secs(4));
    let body = wait_not_ready(&t, "full", 20).await;
    assert_eq!(body["ready"], false, "{body}");
    agents.await.unwrap();
    // Paused, not dropping: a while longer full, then room again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("PRAGMA busy_timeout = 10000")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("DELETE FROM ballast")
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();

    assert_all_once(&t, "f", MESSAGES, 60).await;
    let (status, body) = t.readyz().await;
    assert_eq!(status, 200, "{body}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_postgres_pauses_polling_and_loses_nothing() {
    const MESSAGES: usize = 300;
    let pg = crate::support::fresh_pg_database().await;
    let mut admin = sqlx::PgConnection::connect(&crate::support::admin_pg_url().await)
        .await
        .unwrap();
    let mut t = spawn_app_on(sim::SimConfig::default(), Some(pg.url.clone())).await;
    let users = open_sessions(&t, "ro").await;
    assert_eq!(t.readyz().await.0, 200);

    let agents = agents_say(&t, &users, "r", MESSAGES, Duration::from_secs(6));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // What a relay still pointed at a demoted primary meets: every new connection read-only.
    let name = &pg.name;
    sqlx::query(AssertSqlSafe(format!(
        r#"ALTER DATABASE "{name}" SET default_transaction_read_only = on"#
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .execute(&mut admin)
    .await
    .unwrap();
    wait_not_ready(&t, "read-only", 20).await;
    agents.await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    sqlx::query(AssertSqlSafe(format!(
        r#"ALTER DATABASE "{name}" RESET default_transaction_read_only"#
    )))
    .execute(&mut admin)
    .await
    .unwrap();

    assert_all_once(&t, "r", MESSAGES, 60).await;
    let (status, body) = t.readyz().await;
    assert_eq!(status, 200, "{body}");
    t.stop().await;
    let _ = admin.close().await;
}

/// Which database a stop test runs on.
enum Db {
    Sqlite,
    Postgres,
}

/// How the relay is stopped with answers in hand.
enum Stop {
    Kill,
    /// SIGTERM: the shutdown gives up on the commits it cannot finish.
    Term,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_with_answers_not_yet_committed_loses_nothing_on_sqlite() {
    stop_with_answers_in_hand(Db::Sqlite, Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_with_answers_not_yet_committed_loses_nothing_on_postgres() {
    stop_with_answers_in_hand(Db::Postgres, Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_with_answers_not_yet_committed_keeps_them_for_the_next_start() {
    stop_with_answers_in_hand(Db::Sqlite, Stop::Term).await;
}

async fn stop_with_answers_in_hand(db: Db, stop: Stop) {
    const MESSAGES: usize = 30;
    crate::support::init_tracing();
    let nats = crate::support::nats().await;
    let sim = sim::spawn(sim::SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pg = match db {
        Db::Postgres => Some(crate::support::fresh_pg_database().await),
        Db::Sqlite => None,
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
            request_timeout: "2s",
            ack_wait: "2s",
            extra: "",
        },
    );
    let mut relay = RelayProcess::new(config, dir.path().join("relay.log"));
    relay.start();
    let client = async_nats::connect(&nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    relay.wait_for_streams(&js).await;
    let users: Vec<String> = (0..3).map(|i| format!("k{i}")).collect();
    let mut events = Watcher::new(&js, &format!("{PREFIX}.cec.{TENANT}.event.*")).await;
    for u in &users {
        let id: &'static str = Box::leak(format!("open-{u}").into_boxed_str());
        let body = serde_json::to_vec(&json!({"controlType": "CONNECT", "messageId": id})).unwrap();
        js.publish(format!("{PREFIX}.cec.{TENANT}.up.{u}"), body.into())
            .await
            .unwrap()
            .await
            .unwrap();
        events.until(20, "connected", is_result_for(id)).await;
    }

    // The database takes no commit: the test holds its write lock.
    let lock = DbLock::take(&store_url).await;
    let mut codes = Vec::new();
    for i in 0..MESSAGES {
        codes.push(sim.agent_say(&users[i % users.len()], &format!("k-{i}")));
    }
    // Each session's poll hands out messages and then waits for its commit, so a session polled
    // while its messages were being queued holds the rest back until the commit goes through:
    // wait until every user has had an answer with messages and nothing more is handed out.
    // What was handed out exists nowhere but in the relay (and its journal); the rest is polled
    // normally after the restart.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = (0, tokio::time::Instant::now());
    loop {
        let answered: std::collections::HashSet<String> = sim
            .poll_log()
            .into_iter()
            .flat_map(|a| a.message_codes)
            .filter(|c| codes.contains(c))
            .collect();
        let every_user = users.iter().enumerate().all(|(u, _)| {
            (0..MESSAGES)
                .filter(|i| i % users.len() == u)
                .any(|i| answered.contains(&codes[i]))
        });
        if answered.len() != last.0 {
            last = (answered.len(), tokio::time::Instant::now());
        }
        if answered.len() == MESSAGES || (every_user && last.1.elapsed() >= Duration::from_secs(1))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the simulator never answered every user: {}",
            relay.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    match stop {
        Stop::Kill => relay.kill(),
        Stop::Term => {
            relay.signal("-TERM");
            let mut child = relay.child.take().expect("relay running");
            let status = tokio::task::spawn_blocking(move || child.wait())
                .await
                .unwrap()
                .unwrap();
            assert!(status.success(), "{status}: {}", relay.log_text());
            assert!(
                relay.log_text().contains("the poll journal keeps them"),
                "{}",
                relay.log_text()
            );
        }
    }
    lock.release().await;

    relay.start();
    let mut downs = Watcher::new(&js, &format!("{PREFIX}.cec.{TENANT}.down.*")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let count = |w: &Watcher| {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for v in w.downs() {
            if let Some(c) = v["content"].as_str().filter(|c| c.starts_with("k-")) {
                *seen.entry(c.to_owned()).or_default() += 1;
            }
        }
        seen
    };
    while count(&downs).len() < MESSAGES && tokio::time::Instant::now() < deadline {
        downs.drain(1).await;
    }
    downs.drain(1).await;
    let seen = count(&downs);
    let lost: Vec<usize> = (0..MESSAGES)
        .filter(|i| !seen.contains_key(&format!("k-{i}")))
        .collect();
    assert!(lost.is_empty(), "lost {lost:?}; log:\n{}", relay.log_text());
    let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "duplicated: {twice:?}");
    assert!(
        relay.log_text().contains("Poll journal replayed"),
        "{}",
        relay.log_text()
    );
    relay.kill();
}

/// A lock that keeps the relay from committing: SQLite's write lock, or PostgreSQL's lock on the
/// transcript table (reads go on).
enum DbLock {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl DbLock {
    async fn take(url: &str) -> DbLock {
        if url.starts_with("sqlite:") {
            let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
            sqlx::query("PRAGMA busy_timeout = 10000")
                .execute(&mut c)
                .await
                .unwrap();
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut c)
                .await
                .unwrap();
            DbLock::Sqlite(c)
        } else {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query("BEGIN").execute(&mut c).await.unwrap();
            sqlx::query("LOCK TABLE messages IN EXCLUSIVE MODE")
                .execute(&mut c)
                .await
                .unwrap();
            DbLock::Postgres(c)
        }
    }

    async fn release(self) {
        match self {
            DbLock::Sqlite(mut c) => {
                sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
                c.close().await.unwrap();
            }
            DbLock::Postgres(mut c) => {
                sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
                c.close().await.unwrap();
            }
        }
    }
}
