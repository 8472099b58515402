//! `ccrelay export` — the real binary — over what a real conversation stored (through NATS and
//! the simulator), on SQLite and PostgreSQL alike: every table in every format, checked row for
//! row against the store; the Parquet files read back by an independent reader, DuckDB, for
//! their rows, column types (timestamps are timestamps) and values; the queries of
//! docs/ANALYTICS.md run on the export; and an export into a directory stopped midway — at a
//! part limit, and killed — then resumed, with every row exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use store::{Commit, Direction, DownRecord, MessageRow, MessageStatus, OutboxMsg};

use crate::support::app::*;

/// The relay's binary, reading the database at `db_url` (no configuration file).
fn ccrelay(db_url: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ccrelay"));
    c.env_remove("RUST_LOG")
        .env_remove("CCRELAY_CONFIG")
        .env("CCRELAY_STORE__URL", db_url)
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

/// The DuckDB shell, installed into `target/test-deps` on first use.
async fn duckdb() -> PathBuf {
    tokio::task::spawn_blocking(|| {
        devkit::duckdb::ensure_duckdb(&crate::support::test_deps_dir())
            .unwrap_or_else(|e| panic!("the export tests read Parquet back with DuckDB: {e}"))
    })
    .await
    .unwrap()
}

/// The rows `sql` gives in DuckDB, run in `dir`, as JSON objects.
fn duck(duckdb: &Path, dir: &Path, sql: &str) -> Vec<Value> {
    let out = Command::new(duckdb)
        .args(["-json", "-c", sql])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "DuckDB refused {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    if text.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{sql}: {e}: {text}"))
}

/// (column name, DuckDB type) of what `source` reads, in order.
fn duck_types(duckdb: &Path, dir: &Path, source: &str) -> Vec<(String, String)> {
    duck(duckdb, dir, &format!("DESCRIBE SELECT * FROM {source}"))
        .into_iter()
        .map(|r| {
            (
                r["column_name"].as_str().unwrap().to_owned(),
                r["column_type"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Two customers: ann goes from the robot to a queued transfer, talks to the agent, rates it,
/// gives robot feedback, leaves a message and disconnects; bob says hello and stays.
async fn converse(t: &TestApp) {
    let mut w = t.watch(TENANT, "ann").await;
    t.up("ann", json!({"controlType": "CONNECT", "messageId": "a1"}))
        .await;
    w.until(10, "connected", is_result_for("a1")).await;
    t.up(
        "ann",
        json!({"content": "opening hours?", "messageId": "a2"}),
    )
    .await;
    w.until(10, "robot answer", is_down_containing("opening hours?"))
        .await;
    t.up(
        "ann",
        json!({"controlType": "TRANS2AGENT", "messageId": "a3"}),
    )
    .await;
    w.until(15, "agent", |s, v| {
        s.contains(".down.") && v["sourceType"] == "AGENT"
    })
    .await;
    t.sim.agent_say("ann", "=cmd, \"quoted\"\nand a newline");
    w.until(10, "agent says", is_down_containing("and a newline"))
        .await;
    for (op, body) in [
        (
            "satisfaction",
            json!({"userId": "ann", "evaluation": 4, "comment": "quick"}),
        ),
        (
            "robotFeedback",
            json!({"from": "ann", "feedback": 0, "feedbackContent": "wrong", "interIdx": "1"}),
        ),
        (
            "leaveMessage",
            json!({"userId": "ann", "caller": "1386667777", "leaveMessage": "call me back"}),
        ),
    ] {
        let r = t.rpc(TENANT, op, &body).await;
        assert_eq!(r["ok"], true, "{op}: {r}");
    }
    t.up(
        "ann",
        json!({"controlType": "DISCONNECT", "messageId": "a4"}),
    )
    .await;
    w.until(10, "closed", is_event("session.closed")).await;
    let mut w = t.watch(TENANT, "bob").await;
    t.up("bob", json!({"controlType": "CONNECT", "messageId": "b1"}))
        .await;
    w.until(10, "connected", is_result_for("b1")).await;
    t.up("bob", json!({"content": "hello", "messageId": "b2"}))
        .await;
    w.until(10, "sent", is_result_for("b2")).await;
}

/// Each row's id (`relay_id`; a summary's `session_id`) → its time (`created_at`; a summary's
/// `closed_at`), in µs since the epoch, of every row of each table, as the store has them.
struct Stored {
    tables: BTreeMap<&'static str, BTreeMap<String, i64>>,
}

async fn stored(db_url: &str) -> Stored {
    let store = store::connect(db_url).await.unwrap();
    let mut tables: BTreeMap<&'static str, BTreeMap<String, i64>> = BTreeMap::new();
    for user in ["ann", "bob"] {
        let us = store::unix_micros;
        for r in store.transcript("cec", TENANT, user).await.unwrap() {
            tables
                .entry("messages")
                .or_default()
                .insert(r.relay_id, us(r.created_at));
        }
        for r in store.events("cec", TENANT, user).await.unwrap() {
            tables
                .entry("events")
                .or_default()
                .insert(r.relay_id, us(r.created_at));
        }
        for r in store.satisfactions("cec", TENANT, user).await.unwrap() {
            tables
                .entry("satisfaction")
                .or_default()
                .insert(r.relay_id, us(r.created_at));
        }
        for r in store.offline_messages("cec", TENANT, user).await.unwrap() {
            tables
                .entry("offline")
                .or_default()
                .insert(r.relay_id, us(r.created_at));
        }
    }
    let mut page = store::SummaryPage::first(1_000);
    page.tenant = Some(TENANT.to_owned());
    for s in store.summaries_page(&page).await.unwrap() {
        tables
            .entry("summaries")
            .or_default()
            .insert(s.session_id, store::unix_micros(s.closed_at));
    }
    assert_eq!(
        tables["summaries"].len(),
        1,
        "ann's session closed, bob's is open"
    );
    assert_eq!(
        tables["satisfaction"].len(),
        2,
        "an evaluation and a feedback"
    );
    assert_eq!(tables["offline"].len(), 1, "the leave-message");
    assert!(tables["messages"].len() >= 8);
    Stored { tables }
}

const WHATS: [&str; 5] = ["messages", "events", "satisfaction", "offline", "summaries"];

/// The id and time columns of a table's export.
fn key_columns(what: &str) -> (&'static str, &'static str) {
    match what {
        "summaries" => ("session_id", "closed_at"),
        _ => ("relay_id", "created_at"),
    }
}

/// What DuckDB makes of the typed columns of each table's Parquet export.
fn typed_columns(what: &str) -> &'static [(&'static str, &'static str)] {
    match what {
        "messages" => &[
            ("created_at", "TIMESTAMP WITH TIME ZONE"),
            ("relay_id", "VARCHAR"),
            ("body", "VARCHAR"),
        ],
        "events" => &[
            ("created_at", "TIMESTAMP WITH TIME ZONE"),
            ("ok", "BOOLEAN"),
            ("body", "VARCHAR"),
        ],
        "satisfaction" => &[
            ("created_at", "TIMESTAMP WITH TIME ZONE"),
            ("score", "BIGINT"),
        ],
        "summaries" => &[
            ("opened_at", "TIMESTAMP WITH TIME ZONE"),
            ("closed_at", "TIMESTAMP WITH TIME ZONE"),
            ("queued", "BOOLEAN"),
            ("queue_wait_ms", "BIGINT"),
            ("satisfaction_evaluation", "BIGINT"),
            ("close_reason", "VARCHAR"),
        ],
        _ => &[
            ("created_at", "TIMESTAMP WITH TIME ZONE"),
            ("content", "VARCHAR"),
        ],
    }
}

async fn every_table_exports_in_every_format(mut t: TestApp) {
    converse(&t).await;
    let db = t.db_url.clone();
    t.stop().await;
    let stored = stored(&db).await;
    let duckdb = duckdb().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    for what in WHATS {
        let want = &stored.tables[what];
        let (id, time) = key_columns(what);
        // JSON lines, on standard output (the default format), every stored row once, in time
        // order.
        let jsonl = run(ccrelay(&db).args(["export", "--what", what]));
        let rows: Vec<Value> = jsonl
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let ids: BTreeSet<_> = rows
            .iter()
            .map(|r| r[id].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), rows.len(), "{what}: each row once");
        assert_eq!(ids, want.keys().cloned().collect(), "{what}");
        let times: Vec<_> = rows
            .iter()
            .map(|r| r[time].as_str().unwrap().to_owned())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{what}: {times:?}");

        // CSV and Parquet into files, read by DuckDB.
        for format in ["csv", "parquet"] {
            let file = format!("{what}.{format}");
            run(ccrelay(&db)
                .args(["export", "--what", what, "--format", format, "--out"])
                .arg(d.join(&file)));
            let got: BTreeMap<String, i64> = duck(
                &duckdb,
                d,
                &format!("SELECT {id} AS id, epoch_us({time}) AS us FROM '{file}'"),
            )
            .into_iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_owned(),
                    r["us"].as_i64().unwrap(),
                )
            })
            .collect();
            assert_eq!(
                &got, want,
                "{file}: every row with its time, to the microsecond"
            );
        }
        let types = duck_types(&duckdb, d, &format!("'{what}.parquet'"));
        for (column, ty) in typed_columns(what) {
            let got = types
                .iter()
                .find(|(c, _)| c == column)
                .map(|(_, t)| t.as_str());
            assert_eq!(got, Some(*ty), "{what}.parquet {column}: {types:?}");
        }
        let csv = std::fs::read_to_string(d.join(format!("{what}.csv"))).unwrap();
        let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
        let columns: Vec<&str> = types.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(
            header, columns,
            "{what}: the CSV has the Parquet file's columns"
        );
    }

    // Values, as DuckDB reads them from Parquet.
    let sat = duck(
        &duckdb,
        d,
        "SELECT source, score, comment, tenant, user_id FROM 'satisfaction.parquet' ORDER BY source",
    );
    assert_eq!(
        sat,
        vec![
            json!({"source": "customer", "score": 4, "comment": "quick", "tenant": TENANT, "user_id": "ann"}),
            json!({"source": "robot", "score": 0, "comment": "wrong", "tenant": TENANT, "user_id": "ann"}),
        ]
    );
    let off = duck(
        &duckdb,
        d,
        "SELECT source, caller, content FROM 'offline.parquet'",
    );
    assert_eq!(
        off,
        vec![json!({"source": "leave_message", "caller": "1386667777", "content": "call me back"})]
    );
    let agent = duck(
        &duckdb,
        d,
        "SELECT content, json_extract_string(body, '$.sourceType') AS who, direction, status \
         FROM 'messages.parquet' WHERE content LIKE '=cmd%'",
    );
    assert_eq!(
        agent,
        vec![
            json!({"content": "=cmd, \"quoted\"\nand a newline", "who": "AGENT",
                     "direction": "down", "status": "received"})
        ]
    );
    let summary = duck(
        &duckdb,
        d,
        "SELECT user_id, close_reason, queued, queue_wait_ms > 0 AS waited, transfers, \
         satisfaction_evaluation, robot_feedback_negative, leave_messages, \
         closed_at > opened_at AS later FROM 'summaries.parquet'",
    );
    assert_eq!(
        summary,
        vec![
            json!({"user_id": "ann", "close_reason": "customer", "queued": true,
                     "waited": true, "transfers": 1, "satisfaction_evaluation": 4,
                     "robot_feedback_negative": 1, "leave_messages": 1, "later": true})
        ]
    );
    let closed = duck(
        &duckdb,
        d,
        "SELECT ok, json_extract_string(body, '$.reason') AS reason FROM 'events.parquet' \
         WHERE event_type = 'session.closed'",
    );
    assert_eq!(closed, vec![json!({"ok": true, "reason": "customer"})]);
    // CSV defuses the formula; the typed formats keep the text as it was.
    let csv = std::fs::read_to_string(d.join("messages.csv")).unwrap();
    assert!(
        csv.contains(",\"'=cmd, \"\"quoted\"\"\nand a newline\","),
        "{csv}"
    );

    // A tenant and a time range select rows; Parquet needs a file.
    let none = run(ccrelay(&db).args(["export", "--what", "events", "--tenant", "nobody"]));
    assert!(none.is_empty());
    let later = run(ccrelay(&db).args(["export", "--since", "2999-01-01"]));
    assert!(later.is_empty());
    let refused = ccrelay(&db)
        .args(["export", "--format", "parquet"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--out FILE or --dir DIR"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // The documented queries run on the export.
    let archive = d.join("archive");
    for what in WHATS {
        run(ccrelay(&db)
            .args(["export", "--what", what, "--format", "parquet", "--dir"])
            .arg(&archive));
    }
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ANALYTICS.md"))
            .unwrap();
    let queries = sql_blocks(&doc);
    assert!(queries.len() >= 3, "{queries:?}");
    let mut ran = 0;
    for q in &queries {
        let rows = duck(&duckdb, d, q);
        assert!(!rows.is_empty(), "no answer from {q}");
        ran += 1;
    }
    assert!(ran >= 6, "{queries:?}");
    // And the README's, and the one at the top of docs/ANALYTICS.md.
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    for text in [&readme, &doc] {
        let shell = shell_query(text);
        let rows = duck(&duckdb, d, &shell);
        assert_eq!(rows.len(), 1, "{shell}: {rows:?}");
        assert_eq!(rows[0]["tenant"], TENANT);
        assert_eq!(rows[0]["sessions"], 1);
        assert_eq!(rows[0]["satisfaction"], 4.0);
    }
    let by_day = duck(
        &duckdb,
        d,
        "SELECT sum(n)::BIGINT AS n FROM (SELECT count(*) AS n FROM 'archive/messages-*.parquet' \
         GROUP BY date_trunc('day', created_at))",
    );
    assert_eq!(by_day, vec![json!({"n": stored.tables["messages"].len()})]);
}

/// The query of the first `duckdb -c "…"` of a Markdown document.
fn shell_query(doc: &str) -> String {
    let start = doc.find("duckdb -c \"").expect("a duckdb -c command") + "duckdb -c \"".len();
    let len = doc[start..].find('"').expect("its closing quote");
    doc[start..start + len].to_owned()
}

/// The ```sql blocks of a Markdown document.
fn sql_blocks(doc: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```sql") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(q), l) => {
                q.push_str(l);
                q.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_table_exports_in_every_format_from_sqlite() {
    let t = spawn_app_with(sim::SimConfig {
        queue_length: 1,
        queue_step: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    every_table_exports_in_every_format(t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_table_exports_in_every_format_from_postgres() {
    let pg = crate::support::fresh_pg_database().await;
    let t = spawn_app_on(
        sim::SimConfig {
            queue_length: 1,
            queue_step: Duration::from_millis(200),
            ..Default::default()
        },
        Some(pg.url.clone()),
    )
    .await;
    every_table_exports_in_every_format(t).await;
}

// ---------------------------------------------------------------------------------------------
// Resuming an export into a directory.

/// A down message of `user` stored at `at` (µs since the epoch), committed straight to the store.
fn down_at(user: &str, n: usize, at: i64) -> DownRecord {
    let relay_id = uuid::Uuid::now_v7().to_string();
    let body = json!({"id": relay_id, "content": format!("m{n}")}).to_string();
    DownRecord {
        row: MessageRow {
            relay_id: relay_id.clone(),
            kind: "cec".into(),
            tenant: TENANT.into(),
            user_id: user.into(),
            session_id: None,
            direction: Direction::Down,
            message_id: None,
            message_code: None,
            source_type: Some("AGENT".into()),
            control_type: Some("CHAT".into()),
            media_type: Some("TEXT".into()),
            content: Some(format!("m{n}")),
            body: body.clone(),
            status: MessageStatus::Received,
            result_code: None,
            result_desc: None,
            stream_seq: None,
            created_at: store::from_unix_micros(at).unwrap(),
        },
        publish: OutboxMsg {
            msg_id: relay_id,
            subject: format!("ccrelay.cec.{TENANT}.down.{user}"),
            payload: body.into_bytes(),
        },
    }
}

/// 2026-12-01T00:00:00Z in µs since the epoch.
const DAY: i64 = 1_796_083_200_000_000;

/// `n` messages from `start` (µs), three at a time sharing a timestamp, a millisecond apart.
async fn store_messages(db_url: &str, start: i64, n: usize) -> BTreeSet<String> {
    let store = store::connect(db_url).await.unwrap();
    let mut ids = BTreeSet::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let down: Vec<_> = chunk
            .iter()
            .map(|&i| down_at(&format!("u{}", i % 5), i, start + (i as i64 / 3) * 1_000))
            .collect();
        ids.extend(down.iter().map(|d| d.row.relay_id.clone()));
        store
            .commit(Commit {
                down,
                ..Commit::default()
            })
            .await
            .unwrap();
    }
    ids
}

fn stamp(us: i64) -> String {
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    store::from_unix_micros(us).unwrap().format(&f).unwrap()
}

/// The parts of `what` in `dir`, by name, in order.
fn parts(dir: &Path, what: &str, ext: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(&format!("{what}-")) && n.ends_with(&format!(".{ext}")))
        .collect();
    names.sort();
    names
}

/// Each part starts where the one before ended: `(from, to)` of the names.
fn assert_tiled(names: &[String], first_from: &str, last_to: &str) {
    let ranges: Vec<(String, String)> = names
        .iter()
        .map(|n| {
            let inner = n.split_once('-').unwrap().1.rsplit_once('.').unwrap().0;
            let (a, b) = inner.split_once('-').unwrap();
            (a.to_owned(), b.to_owned())
        })
        .collect();
    assert_eq!(ranges[0].0, first_from, "{names:?}");
    assert_eq!(ranges.last().unwrap().1, last_to, "{names:?}");
    for w in ranges.windows(2) {
        assert_eq!(w[0].1, w[1].0, "{names:?}");
        assert!(w[0].0 < w[0].1, "{names:?}");
    }
}

/// The relay ids in the parts of `dir` (JSON lines), each counted.
fn ids_in(dir: &Path) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for name in parts(dir, "messages", "jsonl") {
        for line in std::fs::read_to_string(dir.join(name)).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            *ids.entry(v["relay_id"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
    }
    ids
}

async fn an_export_stopped_midway_goes_on_with_each_row_once(db_url: String) {
    store::connect(&db_url)
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let want = store_messages(&db_url, DAY, 60).await;
    let duckdb = duckdb().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    let until = stamp(DAY + 3_600_000_000);
    let export = |extra: &[&str]| {
        let mut c = ccrelay(&db_url);
        c.args([
            "export",
            "--format",
            "parquet",
            "--since",
            "2026-12-01",
            "--until",
            &until,
        ])
        .args(["--part-rows", "10", "--dir"])
        .arg(&dir)
        .args(extra);
        c
    };
    // Stopped after two parts of 12 rows each: 10, and the two more of the tenth row's
    // microsecond (three rows share each).
    let out = export(&["--max-parts", "2"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("run the same command to go on"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = parts(&dir, "messages", "parquet");
    assert_eq!(first.len(), 2, "{first:?}");
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.join("messages.export.json")).unwrap()).unwrap();
    assert_eq!(state["rows"], 24);
    assert_eq!(state["next"], stamp(DAY + 7 * 1_000 + 1));

    // What a crash would leave: a part being written, and a part renamed into place whose state
    // was never written.
    std::fs::write(
        dir.join(".messages-20261201T000000.008001Z.parquet.partial"),
        b"half",
    )
    .unwrap();
    let orphan = "messages-20261201T000000.007001Z-20261201T000000.009001Z.parquet";
    std::fs::write(dir.join(orphan), b"not parquet").unwrap();

    // A later --since would leave a gap: refused. The same command goes on.
    let gap = ccrelay(&db_url)
        .args([
            "export",
            "--format",
            "parquet",
            "--since",
            "2026-12-02",
            "--dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!gap.status.success());
    assert!(String::from_utf8_lossy(&gap.stderr).contains("gap"));
    run(&mut export(&[]));
    let all = parts(&dir, "messages", "parquet");
    assert!(!all.contains(&orphan.to_owned()), "{all:?}");
    assert!(all.starts_with(&first), "{all:?}");
    assert_tiled(&all, "20261201T000000.000000Z", "20261201T010000.000000Z");
    assert!(std::fs::read_dir(&dir).unwrap().all(|e| {
        !e.unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".partial")
    }));
    let counted = duck(
        &duckdb,
        tmp.path(),
        "SELECT count(*) AS n, count(DISTINCT relay_id) AS distinct_ids, \
         min(created_at) = TIMESTAMPTZ '2026-12-01 00:00:00+00' AS starts \
         FROM 'archive/messages-*.parquet'",
    );
    assert_eq!(
        counted,
        vec![json!({"n": want.len(), "distinct_ids": want.len(), "starts": true})]
    );
    let ids: BTreeSet<String> = duck(
        &duckdb,
        tmp.path(),
        "SELECT relay_id FROM 'archive/messages-*.parquet'",
    )
    .into_iter()
    .map(|r| r["relay_id"].as_str().unwrap().to_owned())
    .collect();
    assert_eq!(ids, want);

    // Again: nothing new before --until, nothing written.
    run(&mut export(&[]));
    assert_eq!(parts(&dir, "messages", "parquet"), all);
    // Later rows, and a later --until: one more part with just them.
    let more = store_messages(&db_url, DAY + 3_600_000_000, 5).await;
    let later = stamp(DAY + 7_200_000_000);
    run(ccrelay(&db_url)
        .args(["export", "--format", "parquet", "--until", &later, "--dir"])
        .arg(&dir));
    let now = parts(&dir, "messages", "parquet");
    assert_eq!(now.len(), all.len() + 1);
    assert_tiled(&now, "20261201T000000.000000Z", "20261201T020000.000000Z");
    let counted = duck(
        &duckdb,
        tmp.path(),
        "SELECT count(*) AS n, count(DISTINCT relay_id) AS distinct_ids \
         FROM 'archive/messages-*.parquet'",
    );
    let total = want.len() + more.len();
    assert_eq!(counted, vec![json!({"n": total, "distinct_ids": total})]);
    // Another format or tenant is another export: refused in this directory.
    let other = ccrelay(&db_url)
        .args(["export", "--format", "parquet", "--tenant", "beta", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!other.status.success());

    // Killed mid-way (SIGKILL, no chance to tidy up), then run again: each row once.
    let big = store_messages(&db_url, DAY + 7_200_000_000, 3_000).await;
    let killed = tmp.path().join("killed");
    let end = stamp(DAY + 86_400_000_000);
    let resume = || {
        let mut c = ccrelay(&db_url);
        c.args([
            "export",
            "--since",
            "2026-12-01",
            "--until",
            &end,
            "--part-rows",
            "50",
            "--dir",
        ])
        .arg(&killed);
        c
    };
    let mut child = resume().stderr(Stdio::null()).spawn().unwrap();
    let state = killed.join("messages.export.json");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !state.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    let before = parts(&killed, "messages", "jsonl").len();
    eprintln!("killed ({status}) after {before} parts");
    run(&mut resume());
    let ids = ids_in(&killed);
    assert!(ids.values().all(|&n| n == 1), "a row written twice");
    let expected: BTreeSet<String> = want.iter().chain(&more).chain(&big).cloned().collect();
    assert_eq!(ids.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert_tiled(
        &parts(&killed, "messages", "jsonl"),
        "20261201T000000.000000Z",
        "20261202T000000.000000Z",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_stopped_midway_goes_on_with_each_row_once_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("relay.db").display());
    an_export_stopped_midway_goes_on_with_each_row_once(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_stopped_midway_goes_on_with_each_row_once_on_postgres() {
    let pg = crate::support::fresh_pg_database().await;
    an_export_stopped_midway_goes_on_with_each_row_once(pg.url.clone()).await;
}
