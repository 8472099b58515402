//! Retention and erasure (docs/PRIVACY.md) against the real binary, a real nats-server and the
//! simulator, on SQLite and on PostgreSQL.
//!
//! - After a whole conversation — the robot echoing the customer, a file an agent sent
//!   (downloaded into the object store), a satisfaction with a comment, a leave-message — and an
//!   uplink message left in `_IN`, `ccrelay forget` leaves no trace of the customer: not in the
//!   database (SQLite: in no byte of its files; PostgreSQL: in no row of any table), not in the
//!   object store's stream, not in `_IN` or `_OUT`. Another customer's are all there. A customer
//!   whose session is open is refused. Run again (through the RPC, the relay running), it erases
//!   nothing, and the audit has both runs, with a hash of the customer and never their id.
//! - With a retention of a day, rows three days old are deleted in small batches while a
//!   conversation goes on (its messages flow and stay), and the metric counts them.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::Row;

use crate::support::app::{PREFIX, TENANT, Watcher, is_down_containing, is_event, is_result_for};
use crate::support::relay_proc::{RelayConfig, RelayProcess, write_config};

/// The customer erased, the one kept, the one whose session stays open.
const ERASED: &str = "alice7q";
const KEPT: &str = "bob7q";
const OPEN: &str = "carol7q";
/// In every text the erased customer leaves (and `KMARK` in the kept one's).
const MARK: &str = "AMARKx";
const KEEP_MARK: &str = "KMARKx";
const BUCKET: &str = "CCRELAY_FILES";

/// A nats-server a cluster (PostgreSQL) can use too.
async fn nats_server() -> natsd::LocalNatsServer {
    crate::support::init_tracing();
    let binary = tokio::task::spawn_blocking(|| {
        devkit::ensure_nats_server(
            relay::bus::partitioned::MIN_SERVER,
            &crate::support::test_deps_dir(),
        )
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("nats-server ≥ 2.11: {e}"));
    natsd::LocalNatsServer::start(&binary, natsd::NatsServerOptions::default())
        .await
        .unwrap()
}

/// `ccrelay --config CONFIG ARGS…`: success, stdout, stderr.
async fn ccrelay(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ccrelay"))
        .arg("--config")
        .arg(config)
        .args(args)
        .current_dir(config.parent().unwrap())
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn up(js: &jetstream::Context, user: &str, body: Value) {
    js.publish(
        format!("{PREFIX}.cec.{TENANT}.up.{user}"),
        serde_json::to_vec(&body).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// A request on `subject`, retried while nobody answers yet (the relay subscribing).
async fn request(client: &async_nats::Client, subject: &str, body: Value) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match client
            .request(
                subject.to_owned(),
                serde_json::to_vec(&body).unwrap().into(),
            )
            .await
        {
            Ok(m) => return serde_json::from_slice(&m.payload).unwrap(),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{subject}: {e}"),
        }
    }
}

/// [`request`], again while no relay of a cluster owns the customer yet (a relay just started,
/// waiting for the leases of the one killed before it).
async fn request_owned(client: &async_nats::Client, subject: &str, body: Value) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = request(client, subject, body.clone()).await;
        let unowned = r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no relay of the cluster owns"));
        if !unowned || tokio::time::Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A whole conversation of `user`, every text carrying `mark`: the robot's echo, an agent's
/// file (downloaded into the object store), an agent's words, a satisfaction with a comment, a
/// leave-message; closed by the customer when `close`.
async fn conversation(
    js: &jetstream::Context,
    client: &async_nats::Client,
    sim: &sim::SimHandle,
    user: &'static str,
    mark: &'static str,
    close: bool,
) {
    let mut w = Watcher::new(js, &format!("{PREFIX}.cec.{TENANT}.*.{user}")).await;
    up(
        js,
        user,
        json!({"controlType": "CONNECT", "messageId": "c0"}),
    )
    .await;
    w.until(60, "connected", is_result_for("c0")).await;
    let said = Box::leak(format!("hello {mark}1").into_boxed_str());
    up(js, user, json!({"content": said, "messageId": "c1"})).await;
    w.until(30, "the robot's echo", is_down_containing(said))
        .await;
    sim.agent_send_file(
        user,
        "IMAGE",
        "png",
        format!("png bytes {mark}2").into_bytes(),
    );
    w.until(30, "the file", |s, v| {
        s.contains(".down.") && v.get("file").is_some()
    })
    .await;
    let agent = Box::leak(format!("agent says {mark}3").into_boxed_str());
    sim.agent_say(user, agent);
    w.until(30, "the agent", is_down_containing(agent)).await;
    let rpc = |op: &str| format!("{PREFIX}.cec.{TENANT}.rpc.{op}");
    let r = request(
        client,
        &rpc("satisfaction"),
        json!({"userId": user, "evaluation": 5, "comment": format!("great {mark}4")}),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = request(
        client,
        &rpc("leaveMessage"),
        json!({"userId": user, "caller": "1386667777", "leaveMessage": format!("call me {mark}5")}),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    if close {
        up(
            js,
            user,
            json!({"controlType": "DISCONNECT", "messageId": "c9"}),
        )
        .await;
        w.until(30, "closed", is_event("session.closed")).await;
    }
    // Everything published (the outbox emptied) before the test looks.
    w.drain(1).await;
}

/// Every message of stream `name`: subject and payload.
async fn stream_dump(js: &jetstream::Context, name: &str) -> Vec<(String, Vec<u8>)> {
    let Ok(mut stream) = js.get_stream(name).await else {
        return Vec::new();
    };
    let n = stream.info().await.unwrap().state.messages as usize;
    if n == 0 {
        return Vec::new();
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap_or_else(|_| panic!("{name}: {} of {n} messages read", out.len()))
            .unwrap()
            .unwrap();
        out.push((m.subject.to_string(), m.payload.to_vec()));
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// What of `needle` the streams and the object store hold: the places it was found.
async fn in_nats(js: &jetstream::Context, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for name in [
        format!("{}_OUT", PREFIX.to_uppercase()),
        format!("{}_IN", PREFIX.to_uppercase()),
        format!("OBJ_{BUCKET}"),
    ] {
        for (subject, payload) in stream_dump(js, &name).await {
            if subject.contains(needle) || contains(&payload, needle) {
                found.push(format!("{name}: {subject}"));
            }
        }
    }
    found
}

/// The bytes of every file in `dir` the relay and the database keep (not its log).
fn dir_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_file() && name != "relay.log" && !name.ends_with(".toml") {
            all.extend(std::fs::read(&p).unwrap_or_default());
        }
    }
    all
}

/// Rows of any table of the PostgreSQL database whose text (bytea as text or hex) holds `needle`.
async fn in_postgres(url: &str, needle: &str) -> Vec<String> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(tables.iter().any(|t| t == "erasures"), "{tables:?}");
    let hex: String = needle.bytes().map(|b| format!("{b:02x}")).collect();
    let mut found = Vec::new();
    for t in tables {
        let n: i64 = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) AS n FROM \"{t}\" AS x \
             WHERE x::text LIKE '%' || $1 || '%' OR x::text LIKE '%' || $2 || '%'"
        )))
        .bind(needle)
        .bind(&hex)
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("n");
        if n > 0 {
            found.push(format!("{t}: {n}"));
        }
    }
    pool.close().await;
    found
}

/// The conversation, the refusal, the erasure and its repeat, on the store at `store_url`
/// (SQLite in the test's directory when `None`).
async fn forget_leaves_no_trace(store_url: Option<String>) {
    let nats = nats_server().await;
    let sim = sim::spawn(sim::SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let nats_url = nats.url();
    let config = write_config(
        dir.path(),
        &RelayConfig {
            store_url: store_url.clone(),
            nats_url: &nats_url,
            sim: &sim,
            relay_section: "",
            request_timeout: "3s",
            ack_wait: "5s",
            extra: "",
        },
    );
    let mut relay = RelayProcess::new(config.clone(), dir.path().join("relay.log"));
    relay.start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    relay.wait_for_streams(&js).await;

    conversation(&js, &client, &sim, ERASED, MARK, true).await;
    conversation(&js, &client, &sim, KEPT, KEEP_MARK, true).await;
    let mut w = Watcher::new(&js, &format!("{PREFIX}.cec.{TENANT}.*.{OPEN}")).await;
    up(
        &js,
        OPEN,
        json!({"controlType": "CONNECT", "messageId": "o0"}),
    )
    .await;
    w.until(60, "connected", is_result_for("o0")).await;

    // An open session is refused, saying why, and nothing of it is erased.
    let (ok, _, err) = ccrelay(&config, &["forget", TENANT, OPEN]).await;
    assert!(!ok, "{err}");
    assert!(err.contains("open session"), "{err}");
    assert!(err.contains("DISCONNECT"), "{err}");

    // The relay stops; a message for the customer waits in _IN meanwhile.
    relay.kill();
    up(
        &js,
        ERASED,
        json!({"content": format!("late {MARK}6"), "messageId": "c10"}),
    )
    .await;
    for mark in [format!("{MARK}1"), format!("{MARK}2"), format!("{MARK}6")] {
        assert!(
            !in_nats(&js, &mark).await.is_empty(),
            "{mark} is in NATS before"
        );
    }
    if store_url.is_none() {
        assert!(contains(&dir_bytes(dir.path()), &format!("{MARK}4")));
    }

    let (ok, out, err) = ccrelay(&config, &["forget", TENANT, ERASED, "--json"]).await;
    assert!(ok, "forget failed: {err}");
    let report: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let counts = &report["counts"];
    for (what, at_least) in [
        ("messages", 5),
        ("events", 5),
        ("satisfactions", 1),
        ("offline_messages", 1),
        ("files", 1),
        ("sessions", 1),
        ("object_store", 1),
        ("stream_out", 5),
        ("stream_in", 1),
    ] {
        assert!(
            counts[what].as_u64().unwrap_or(0) >= at_least,
            "{what}: {report}"
        );
    }

    // No trace: not in NATS, not in the database.
    for needle in [MARK, ERASED] {
        let left = in_nats(&js, needle).await;
        assert!(left.is_empty(), "{needle} left in NATS: {left:?}");
    }
    for needle in [KEEP_MARK, KEPT] {
        assert!(!in_nats(&js, needle).await.is_empty(), "{needle} kept");
    }
    let kept_object = sim_object_of(&js, KEPT).await;
    assert!(kept_object.is_some(), "the kept customer's file stays");
    match &store_url {
        None => {
            let bytes = dir_bytes(dir.path());
            for needle in [MARK, ERASED] {
                assert!(
                    !contains(&bytes, needle),
                    "{needle} left in the database's files"
                );
            }
            assert!(contains(&bytes, KEEP_MARK));
        }
        Some(url) => {
            for needle in [MARK, ERASED] {
                let left = in_postgres(url, needle).await;
                assert!(left.is_empty(), "{needle} left in PostgreSQL: {left:?}");
            }
            assert!(!in_postgres(url, KEEP_MARK).await.is_empty());
        }
    }

    // Again, through the RPC with the relay running: nothing left to erase, and said so.
    relay.start();
    relay.wait_for_streams(&js).await;
    let r = request_owned(
        &client,
        &format!("{PREFIX}.cec.{TENANT}.rpc.forget"),
        json!({"userId": ERASED, "requestedBy": "crm"}),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["total"], 0, "{r}");
    assert_eq!(r["userHash"], report["userHash"]);
    // And an open session is refused there too.
    let r = request_owned(
        &client,
        &format!("{PREFIX}.cec.{TENANT}.rpc.forget"),
        json!({"userId": OPEN}),
    )
    .await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("open session"),
        "{r}"
    );

    // The audit: both runs, newest first, a hash and never the id.
    let (ok, out, err) = ccrelay(
        &config,
        &["erasures", "--customer", TENANT, ERASED, "--json"],
    )
    .await;
    assert!(ok, "{err}");
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows[0]["requestedBy"], "rpc:crm");
    assert!(rows[1]["requestedBy"].as_str().unwrap().starts_with("cli:"));
    assert_eq!(rows[1]["counts"], report["counts"]);
    for r in &rows {
        assert_eq!(r["outcome"], "done");
        assert_eq!(r["userHash"], report["userHash"]);
        assert!(!r.to_string().contains(ERASED), "{r}");
    }
    assert_eq!(
        report["userHash"],
        relay::privacy::forget::user_hash("cec", TENANT, ERASED)
    );
    relay.kill();
    if store_url.is_none() {
        let bytes = dir_bytes(dir.path());
        assert!(!contains(&bytes, MARK) && !contains(&bytes, ERASED));
    }
}

/// The name of `user`'s object in the files bucket, if it has one.
async fn sim_object_of(js: &jetstream::Context, user: &str) -> Option<String> {
    let store = js.get_object_store(BUCKET).await.ok()?;
    let mut list = store.list().await.ok()?;
    while let Some(Ok(o)) = list.next().await {
        if o.name.starts_with(&format!("{TENANT}/{user}/")) && !o.deleted {
            return Some(o.name);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_leaves_no_trace_of_a_customer_on_sqlite() {
    forget_leaves_no_trace(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_leaves_no_trace_of_a_customer_on_postgres() {
    let pg = crate::support::fresh_pg_database().await;
    forget_leaves_no_trace(Some(pg.url.clone())).await;
}

/// Old sessions seeded into the database, each with this many messages and as many events.
const OLD_SESSIONS: usize = 60;
const OLD_ROWS: usize = 100;

/// Seeds `OLD_SESSIONS` closed sessions, three days old, with their messages and events, as a
/// relay would have stored and published them.
async fn seed_old(url: &str) {
    use store::{Commit, DownRecord, EventRecord, MessageRow, MessageStatus, OutboxMsg};
    use store::{Direction, Session, SessionChange, SessionState, kind};
    let store = store::connect(url).await.unwrap();
    store.migrate().await.unwrap();
    let old = store::now() - time::Duration::days(3);
    for s in 0..OLD_SESSIONS {
        let user = format!("old{s}");
        let session = Session {
            id: uuid::Uuid::now_v7().to_string(),
            kind: kind::CEC.to_owned(),
            tenant: TENANT.to_owned(),
            user_id: user.clone(),
            channel_config_id: "1".to_owned(),
            state: SessionState::Active,
            token: Some("t".to_owned()),
            opened_at: old,
            closed_at: None,
            close_reason: None,
            last_activity_at: old,
        };
        let mut rows = Commit {
            sessions: vec![SessionChange::Open(session.clone())],
            ..Commit::default()
        };
        for n in 0..OLD_ROWS {
            let id = uuid::Uuid::now_v7().to_string();
            let at = old + time::Duration::milliseconds(n as i64);
            let body = json!({"id": id, "content": format!("old words {n}")}).to_string();
            rows.down.push(DownRecord {
                row: MessageRow {
                    relay_id: id.clone(),
                    kind: kind::CEC.to_owned(),
                    tenant: TENANT.to_owned(),
                    user_id: user.clone(),
                    session_id: Some(session.id.clone()),
                    direction: Direction::Down,
                    message_id: None,
                    message_code: Some(format!("code-{n}")),
                    source_type: Some("AGENT".to_owned()),
                    control_type: Some("CHAT".to_owned()),
                    media_type: Some("TEXT".to_owned()),
                    content: Some(format!("old words {n}")),
                    body: body.clone(),
                    status: MessageStatus::Received,
                    result_code: None,
                    result_desc: None,
                    stream_seq: None,
                    created_at: at,
                },
                publish: OutboxMsg {
                    msg_id: id,
                    subject: format!("{PREFIX}.cec.{TENANT}.down.{user}"),
                    payload: body.into_bytes(),
                },
            });
            let ev = uuid::Uuid::now_v7().to_string();
            rows.events.push(EventRecord {
                body: json!({"id": ev, "type": "up.result"}).to_string(),
                relay_id: ev,
                kind: kind::CEC.to_owned(),
                tenant: Some(TENANT.to_owned()),
                user_id: Some(user.clone()),
                session_id: Some(session.id.clone()),
                event_type: "up.result".to_owned(),
                ok: true,
                subject: format!("{PREFIX}.cec.{TENANT}.event.{user}"),
                created_at: at,
            });
        }
        rows.sessions.push(SessionChange::Close {
            id: session.id.clone(),
            reason: "customer".to_owned(),
            at: old + time::Duration::seconds(1),
        });
        // Opened and closed in one commit: Open goes first.
        store.commit(rows).await.unwrap();
    }
    // Published long ago.
    loop {
        let seqs: Vec<i64> = store
            .outbox_pending(10_000)
            .await
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        if seqs.is_empty() {
            break;
        }
        store.outbox_done(&seqs).await.unwrap();
    }
    store.close().await;
}

/// `ccrelay_retention_deleted_total{table="<table>"}` on `/metrics` at `addr` (0 until there).
async fn deleted_metric(addr: &str, table: &str) -> u64 {
    let Ok(rsp) = reqwest::get(format!("http://{addr}/metrics")).await else {
        return 0;
    };
    let text = rsp.text().await.unwrap_or_default();
    let series = format!("ccrelay_retention_deleted_total{{table=\"{table}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// With a retention of a day: three-day-old rows deleted in batches while a conversation goes
/// on, its own rows kept; the metric and the log say what went.
async fn retention_deletes_old_rows_while_the_relay_works(store_url: Option<String>) {
    let nats = nats_server().await;
    let sim = sim::spawn(sim::SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = store_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("relay.db").display()));
    seed_old(&url).await;
    let nats_url = nats.url();
    let config = write_config(
        dir.path(),
        &RelayConfig {
            store_url: Some(url.clone()),
            nats_url: &nats_url,
            sim: &sim,
            relay_section: "",
            request_timeout: "3s",
            ack_wait: "5s",
            extra: "",
        },
    );
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut relay = RelayProcess::new(config, dir.path().join("relay.log"));
    relay.start_with(
        &[
            ("RUST_LOG", "info"),
            ("CCRELAY_STORE__RETENTION", "1d"),
            ("CCRELAY_STORE__RETENTION_INTERVAL", "1s"),
            ("CCRELAY_STORE__RETENTION_BATCH", "40"),
            ("CCRELAY_NATS__MAX_AGE", "1d"),
            ("CCRELAY_NATS__FILES_MAX_AGE", "1d"),
            ("CCRELAY_HTTP__LISTEN", &addr),
        ],
        &[],
    );
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    relay.wait_for_streams(&js).await;
    let total = (OLD_SESSIONS * OLD_ROWS) as u64;

    // A conversation while the pass runs: every message answered, in time; the deleted count
    // as each answer came.
    let user = "live7q";
    let mut w = Watcher::new(&js, &format!("{PREFIX}.cec.{TENANT}.*.{user}")).await;
    up(
        &js,
        user,
        json!({"controlType": "CONNECT", "messageId": "l0"}),
    )
    .await;
    w.until(60, "connected", is_result_for("l0")).await;
    let mut seen_while = Vec::new();
    for n in 0..10 {
        let said: &'static str = Box::leak(format!("live words {n}").into_boxed_str());
        let sent = std::time::Instant::now();
        up(
            &js,
            user,
            json!({"content": said, "messageId": format!("l{}", n + 1)}),
        )
        .await;
        w.until(10, "the robot's echo", is_down_containing(said))
            .await;
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "{:?}",
            sent.elapsed()
        );
        seen_while.push(deleted_metric(&addr, "messages").await);
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut seen = seen_while.clone();
    loop {
        let (m, e, s) = (
            deleted_metric(&addr, "messages").await,
            deleted_metric(&addr, "events").await,
            deleted_metric(&addr, "sessions").await,
        );
        seen.push(m);
        if m >= total && e >= total && s >= OLD_SESSIONS as u64 {
            assert_eq!((m, e, s), (total, total, OLD_SESSIONS as u64));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never finished: messages {m}, events {e}, sessions {s}\n{}",
            relay.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen.iter().any(|n| *n > 0 && *n < total),
        "deleted in batches, counted as it went: {seen:?}"
    );
    assert!(
        seen_while.iter().any(|n| *n < total),
        "the conversation ran while the pass did: {seen_while:?}"
    );

    let store = store::connect(&url).await.unwrap();
    for s in [0, OLD_SESSIONS / 2, OLD_SESSIONS - 1] {
        let old = format!("old{s}");
        assert!(
            store
                .transcript("cec", TENANT, &old)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(store.events("cec", TENANT, &old).await.unwrap().is_empty());
    }
    let live = store.transcript("cec", TENANT, user).await.unwrap();
    assert!(
        live.len() >= 21,
        "the conversation's rows stay: {}",
        live.len()
    );
    let sessions = store.list_sessions(Some(TENANT), None, 1000).await.unwrap();
    assert_eq!(sessions.len(), 1, "only the live session is left");
    store.close().await;
    let log = relay.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("Retention pass") && l.contains(&format!("messages={total}"))),
        "{log}"
    );
    relay.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_rows_in_batches_while_the_relay_works_on_sqlite() {
    retention_deletes_old_rows_while_the_relay_works(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_rows_in_batches_while_the_relay_works_on_postgres() {
    let pg = crate::support::fresh_pg_database().await;
    retention_deletes_old_rows_while_the_relay_works(Some(pg.url.clone())).await;
}

/// A Tencent IM user erased through `P.rpc.forget`: their Desk send, robot stream and callback,
/// in the tables and in `_OUT`; refused while their robot stream is still going; another user's
/// kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tencent_user_is_erased_through_the_relay_wide_rpc() {
    use crate::support::tim::{APP, spawn_tim_app};
    let mut t = spawn_tim_app().await;
    let (user, other) = ("tina7q", "tom7q");
    let forget_rpc =
        |u: &str| json!({"kind": "tim", "tenant": APP, "userId": u, "requestedBy": "desk-bot"});
    for (u, mark) in [(user, MARK), (other, KEEP_MARK)] {
        let mut w = t.watch_tim(u).await;
        t.tim(
            "send",
            u,
            json!({"id": format!("s-{u}"), "from": "@customer_service_account",
            "text": format!("desk {mark}1")}),
        )
        .await;
        w.until(30, "send.result", is_event("send.result")).await;
        let rsp = t
            .sim_post(
                "/sim/tim/callback",
                json!({
                    "url": t.callback_url(APP),
                    "command": "Bot.OnC2CMessage",
                    "body": {"CallbackCommand": "Bot.OnC2CMessage", "From_Account": u,
                             "To_Account": "@RBT#bot", "MsgBody": [{"MsgType": "TIMTextElem",
                             "MsgContent": {"Text": format!("user says {mark}2")}}]},
                    "sign": "good"
                }),
            )
            .await;
        assert_eq!(rsp["status"], 200, "{rsp}");
        w.until(30, "inbound", |s, _| s.contains(".in.")).await;
        t.tim(
            "stream",
            u,
            json!({"streamId": format!("st-{u}"), "from": "@RBT#bot",
            "chunk": format!("robot streams {mark}3"), "finish": false}),
        )
        .await;
        if u == user {
            // The stream is going on: refused, nothing erased.
            let store = t.app().relay().store.clone();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while store.tim_streams(APP, u).await.unwrap().is_empty() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "stream never stored"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let r = request(&t.client, &format!("{PREFIX}.rpc.forget"), forget_rpc(u)).await;
            assert_eq!(r["ok"], false, "{r}");
            assert!(
                r["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("robot stream"),
                "{r}"
            );
        }
        t.tim(
            "stream",
            u,
            json!({"streamId": format!("st-{u}"), "chunk": " end", "finish": true}),
        )
        .await;
        w.until(30, "stream.result", is_event("stream.result"))
            .await;
    }
    assert!(!in_nats(&t.js, &format!("{MARK}2")).await.is_empty());

    let r = request(&t.client, &format!("{PREFIX}.rpc.forget"), forget_rpc(user)).await;
    assert_eq!(r["ok"], true, "{r}");
    for (what, at_least) in [
        ("messages", 2),
        ("tim_streams", 1),
        ("tim_callbacks", 1),
        ("events", 2),
        ("stream_out", 3),
    ] {
        assert!(
            r["counts"][what].as_u64().unwrap_or(0) >= at_least,
            "{what}: {r}"
        );
    }
    let store = t.app().relay().store.clone();
    assert!(store.transcript("tim", APP, user).await.unwrap().is_empty());
    assert!(store.tim_streams(APP, user).await.unwrap().is_empty());
    let callbacks = store.tim_callbacks(APP, 1000).await.unwrap();
    assert!(callbacks.iter().all(|c| c.user_id.as_deref() != Some(user)));
    assert!(
        callbacks
            .iter()
            .any(|c| c.user_id.as_deref() == Some(other))
    );
    assert_eq!(store.tim_streams(APP, other).await.unwrap().len(), 1);
    for needle in [MARK, user] {
        let left = in_nats(&t.js, needle).await;
        assert!(left.is_empty(), "{needle} left in NATS: {left:?}");
    }
    assert!(!in_nats(&t.js, KEEP_MARK).await.is_empty());
    let audit = store.erasures(10).await.unwrap();
    assert_eq!(audit[0].requested_by, "rpc:desk-bot");
    assert_eq!(audit[0].kind, "tim");
    assert_eq!(audit[0].tenant, APP);
    t.stop().await;
}
