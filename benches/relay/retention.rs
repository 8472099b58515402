//! `--retention-rows N`: every scenario with retention at work (docs/PRIVACY.md). Before a relay
//! starts on a database, N three-day-old messages and as many events (in closed sessions of 100
//! each, published long ago: no outbox rows) are stored in it, and the relay runs with
//! `store.retention = "1d"`, `retention_interval = "1s"` (the streams' and files' `max_age` one
//! day too), so its retention task deletes them — `store.retention_batch` rows per transaction,
//! pausing between them — while the scenario measures. Its passes are in the relay's log
//! (`Retention pass`, `took`): a pass that ended before the measured window ended measured less
//! than a whole run with retention; seed more rows then.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use serde_json::json;
use store::{Commit, Direction, DownRecord, EventRecord, MessageRow, MessageStatus, OutboxMsg};
use store::{Session, SessionChange, SessionState, kind};

use crate::rig::{PREFIX, TENANT};

/// Old rows seeded per database (0: retention off).
static ROWS: AtomicUsize = AtomicUsize::new(0);
/// The databases seeded already (S5 starts several relays on one).
static SEEDED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
/// Messages (and events) per seeded session.
const PER_SESSION: usize = 100;

/// Turns retention on for every relay this run starts: `rows` old messages (and events) seeded.
pub fn enable(rows: usize) {
    ROWS.store(rows, Ordering::SeqCst);
    if rows > 0 {
        println!(
            "# retention on: {rows} messages and {rows} events, three days old, seeded into each \
             database; store.retention = 1d, retention_interval = 1s"
        );
    }
}

/// What the relay's configuration gets: keys of `[store]` and of `[nats]`, and its `RUST_LOG`.
pub struct Keys {
    pub store: &'static str,
    pub nats: &'static str,
    pub log: &'static str,
}

/// The configuration of a relay on `store_url`, its database seeded first when retention is on.
pub fn prepare(store_url: &str) -> Result<Keys> {
    let rows = ROWS.load(Ordering::SeqCst);
    if rows == 0 {
        return Ok(Keys {
            store: "",
            nats: "",
            log: "warn",
        });
    }
    let first = crate::rig::lock(&SEEDED)
        .get_or_insert_with(HashSet::new)
        .insert(store_url.to_owned());
    if first {
        let url = store_url.to_owned();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(seed(&url, rows))
        })
        .context("seeding old rows for retention")?;
    }
    Ok(Keys {
        store: "retention = \"1d\"\nretention_interval = \"1s\"\n",
        nats: "max_age = \"1d\"\nfiles_max_age = \"1d\"\n",
        log: "warn,ccrelay_relay::privacy=info",
    })
}

/// Stores `rows` old messages and events, in closed sessions, with nothing left to publish.
async fn seed(url: &str, rows: usize) -> Result<()> {
    eprintln!("seeding {rows} old messages and events…");
    let store = store::connect(url).await?;
    store.migrate().await?;
    let old = store::now() - time::Duration::days(3);
    for s in 0..rows.div_ceil(PER_SESSION) {
        let user = format!("old{s}");
        let session = Session {
            id: uuid::Uuid::now_v7().to_string(),
            kind: kind::CEC.to_owned(),
            tenant: TENANT.to_owned(),
            user_id: user.clone(),
            channel_config_id: "1".to_owned(),
            state: SessionState::Active,
            token: None,
            opened_at: old,
            closed_at: None,
            close_reason: None,
            last_activity_at: old,
        };
        let mut c = Commit {
            sessions: vec![SessionChange::Open(session.clone())],
            ..Commit::default()
        };
        for n in 0..PER_SESSION.min(rows - s * PER_SESSION) {
            let id = uuid::Uuid::now_v7().to_string();
            let at = old + time::Duration::milliseconds(n as i64);
            let body = json!({"id": id, "content": format!("old words {n}")}).to_string();
            c.down.push(DownRecord {
                row: MessageRow {
                    relay_id: id.clone(),
                    kind: kind::CEC.to_owned(),
                    tenant: TENANT.to_owned(),
                    user_id: user.clone(),
                    session_id: Some(session.id.clone()),
                    direction: Direction::Down,
                    message_id: None,
                    message_code: None,
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
            c.events.push(EventRecord {
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
        c.sessions.push(SessionChange::Close {
            id: session.id.clone(),
            reason: "customer".to_owned(),
            at: old + time::Duration::seconds(1),
        });
        store.commit(c).await?;
    }
    // Published long ago: nothing of it is for the relay to publish.
    loop {
        let seqs: Vec<i64> = store
            .outbox_pending(10_000)
            .await?
            .iter()
            .map(|r| r.seq)
            .collect();
        if seqs.is_empty() {
            break;
        }
        store.outbox_done(&seqs).await?;
    }
    store.close().await;
    Ok(())
}
