//! `ccrelay sessions`, `transcript`, `export` and `replay` against what a real conversation
//! stored, on SQLite and PostgreSQL alike.

use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::support::app::*;

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

/// A conversation of two customers; returns how many transcript rows it stored.
async fn converse(t: &TestApp) -> usize {
    for u in ["ann", "bob"] {
        let mut w = t.watch(TENANT, u).await;
        let c: &'static str = Box::leak(format!("{u}-c").into_boxed_str());
        let m: &'static str = Box::leak(format!("{u}-m").into_boxed_str());
        t.up(u, json!({"controlType": "CONNECT", "messageId": c}))
            .await;
        w.until(10, "connected", is_result_for(c)).await;
        t.up(u, json!({"content": "hello, \"agent\"", "messageId": m}))
            .await;
        w.until(10, "sent", is_result_for(m)).await;
        t.sim.agent_say(u, "hi, with a comma\nand a newline");
        w.until(10, "agent", is_down_containing("with a comma"))
            .await;
    }
    let mut n = 0;
    for u in ["ann", "bob"] {
        n += t
            .app()
            .relay()
            .store
            .transcript("cec", TENANT, u)
            .await
            .unwrap()
            .len();
    }
    n
}

async fn every_command_reads_what_was_stored(mut t: TestApp) {
    let rows = converse(&t).await;
    let db = t.db_url.clone();
    let nats = t.nats_server.url();
    t.stop().await;

    let sessions = run(ccrelay(&db, &nats).args(["sessions", "--tenant", TENANT]));
    assert!(
        sessions.contains("ann") && sessions.contains("bob"),
        "{sessions}"
    );
    assert_eq!(
        sessions.lines().count(),
        3,
        "a header and two sessions: {sessions}"
    );
    let none = run(ccrelay(&db, &nats).args(["sessions", "--state", "closed"]));
    assert_eq!(none.lines().count(), 1, "{none}");

    let text = run(ccrelay(&db, &nats).args(["transcript", TENANT, "ann"]));
    assert!(
        text.contains("CUSTOMER") && text.contains("hello, \"agent\""),
        "{text}"
    );
    let json_lines = run(ccrelay(&db, &nats).args(["transcript", TENANT, "ann", "--json"]));
    let parsed: Vec<Value> = json_lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        parsed
            .iter()
            .any(|v| v["direction"] == "down" && v["body"]["sourceType"] == "AGENT")
    );

    let jsonl = run(ccrelay(&db, &nats).args(["export", "--since", "2000-01-01"]));
    assert_eq!(jsonl.lines().count(), rows);
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("out.csv");
    run(ccrelay(&db, &nats)
        .args([
            "export",
            "--since",
            "2000-01-01",
            "--format",
            "csv",
            "--tenant",
            TENANT,
            "--out",
        ])
        .arg(&csv_path));
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    assert!(csv.starts_with("relay_id,kind,tenant,"), "{csv}");
    assert!(
        csv.contains("\"hello, \"\"agent\"\"\""),
        "quoted per RFC 4180: {csv}"
    );
    let records = csv_records(&csv);
    assert_eq!(records, rows + 1, "a header and one record per row");
    let later = run(ccrelay(&db, &nats).args(["export", "--since", "2999-01-01"]));
    assert!(later.is_empty());

    // Replay onto another prefix; the relay's own is refused.
    let client = async_nats::connect(&nats).await.unwrap();
    let mut sub = client.subscribe("backfill.>").await.unwrap();
    client.flush().await.unwrap();
    let out =
        run(ccrelay(&db, &nats).args(["replay", "--since", "2000-01-01", "--prefix", "backfill"]));
    assert!(out.contains(&format!("replayed {rows} messages")), "{out}");
    let mut got = 0;
    while got < rows {
        let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("replayed messages")
            .unwrap();
        assert!(m.subject.starts_with("backfill.cec.acme."), "{}", m.subject);
        assert!(
            m.headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .is_some()
        );
        got += 1;
    }
    let refused = ccrelay(&db, &nats)
        .args(["replay", "--since", "2000-01-01", "--prefix", PREFIX])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("own prefix"));
}

/// Records in RFC 4180 text: newlines inside quotes do not end a record.
fn csv_records(csv: &str) -> usize {
    let mut quoted = false;
    let mut n = 0;
    for c in csv.chars() {
        match c {
            '"' => quoted = !quoted,
            '\n' if !quoted => n += 1,
            _ => {}
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_commands_read_sqlite() {
    every_command_reads_what_was_stored(spawn_app().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_commands_read_postgres() {
    let pg = crate::support::fresh_pg_database().await;
    let t = spawn_app_on(sim::SimConfig::default(), Some(pg.url.clone())).await;
    every_command_reads_what_was_stored(t).await;
}
