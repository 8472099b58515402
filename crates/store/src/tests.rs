//! The store contract, written once and run against both databases.
//!
//! Each test in [`contract_tests!`] is an `async fn(Db)` instantiated twice: on SQLite (a fresh
//! file in a temporary directory) and on PostgreSQL (a fresh database created through an admin
//! URL, and dropped afterwards). The admin URL comes from [`pg_provision`], shared with the
//! integration tests: `CCRELAY_TEST_PG_URL` when set, else a server on 127.0.0.1:5432, else one it
//! starts or installs. `CCRELAY_TEST_PG_URL=skip` skips the PostgreSQL half, loudly.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use serde_json::json;
use sqlx::Connection;
use time::OffsetDateTime;
use time::macros::datetime;

use super::*;

// ---------------------------------------------------------------------------------------------
// Harness

/// A fresh, migrated store, and how to open another handle on the same database.
#[derive(Clone)]
struct Db {
    store: DynStore,
    url: String,
}

impl Db {
    /// A second, independent handle on the same database.
    async fn reopen(&self) -> DynStore {
        connect(&self.url).await.expect("reopen the test database")
    }
}

use devkit::pg_provision;

/// The admin URL for the PostgreSQL tests, found or provisioned by [`pg_provision`] (once per
/// process); `None` when `CCRELAY_TEST_PG_URL=skip`.
///
/// # Panics
/// If no server can be reached or provisioned.
async fn pg_admin_url() -> Option<String> {
    if std::env::var(pg_provision::PG_URL_ENV).is_ok_and(|url| url == "skip") {
        return None;
    }
    let url = pg_provision::admin_pg_url(&test_deps_dir())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the store tests need PostgreSQL: {e}\nOr set {}=skip to skip them.",
                pg_provision::PG_URL_ENV
            )
        });
    Some(url)
}

/// `<target>/test-deps`, where the tests lock (and the integration tests install) what they
/// provision: `CARGO_TARGET_DIR` if set, else `target` in the workspace. Unit tests get no
/// `CARGO_TARGET_TMPDIR` to follow.
fn test_deps_dir() -> std::path::PathBuf {
    let manifest_dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| manifest_dir.join("target"), |dir| manifest_dir.join(dir));
    target.join("test-deps")
}

/// Runs `test` on a fresh SQLite database file.
async fn on_sqlite<F, Fut>(test: F)
where
    F: FnOnce(Db) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = connect(&url).await.expect("open SQLite");
    store.migrate().await.expect("migrate SQLite");
    test(Db {
        store: store.clone(),
        url,
    })
    .await;
    store.close().await;
}

/// Runs `test` on a fresh PostgreSQL database, dropped afterwards even if the test panics.
async fn on_postgres<F, Fut>(test: F)
where
    F: FnOnce(Db) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(admin_url) = pg_admin_url().await else {
        eprintln!("CCRELAY_TEST_PG_URL=skip: PostgreSQL contract test SKIPPED");
        return;
    };
    let name = format!("ccrelay_test_{}", uuid::Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL for the store tests at {} ({e}); set CCRELAY_TEST_PG_URL, or =skip",
                config::redact::database_url(&admin_url)
            )
        });
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let mut url = url::Url::parse(&admin_url).expect("admin url");
    url.set_path(&name);
    let url = url.to_string();

    let outcome = AssertUnwindSafe(async {
        let store = connect(&url).await.expect("open PostgreSQL");
        store.migrate().await.expect("migrate PostgreSQL");
        test(Db {
            store: store.clone(),
            url: url.clone(),
        })
        .await;
        store.close().await;
    })
    .catch_unwind()
    .await;

    // Best effort: a leftover database is harmless, and named for what it is.
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;
    let _ = admin.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::on_sqlite(super::$name).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::on_postgres(super::$name).await;
                }
            )*
        }
    };
}

contract_tests!(
    migrating_twice_changes_nothing,
    an_empty_commit_does_nothing,
    sessions_open_close_and_reopen,
    a_user_has_at_most_one_open_session,
    set_state_moves_open_sessions_only,
    changes_to_unknown_sessions_are_refused,
    begin_up_is_new_then_pending_then_done,
    begin_up_refuses_rows_it_cannot_key,
    an_up_row_is_recorded_with_its_outcome_in_one_commit,
    a_commit_that_fails_leaves_nothing_behind,
    down_messages_are_deduplicated_by_message_code,
    the_outbox_keeps_commit_order_until_done,
    outbox_seqs_are_never_reused,
    the_transcript_is_in_time_order_across_directions,
    events_are_kept_per_user_in_order,
    touch_only_moves_forward,
    list_sessions_filters_and_orders,
    the_session_token_is_stored_and_cleared,
    timestamps_round_trip_at_microsecond_precision,
    concurrent_writers_all_commit,
    concurrent_begin_up_of_one_message_is_new_once,
    concurrent_up_lookups_each_get_their_own_answer,
    a_closed_store_fails_with_retryable_errors,
    satisfactions_round_trip_per_user_in_order,
    offline_messages_round_trip_per_user_in_order,
    a_failing_commit_keeps_no_satisfaction_or_offline_message,
    offline_messages_are_deduplicated_by_message_id,
    text_with_nul_characters_is_stored,
    export_pages_cover_a_range_once_in_order,
    transcript_pages_follow_the_transcript_order,
    a_held_down_holds_back_its_subject_until_its_file_is_finished,
    a_failed_file_releases_its_down_and_records_the_error,
    files_follow_their_downs_and_are_refused_without_one,
    many_writers_share_transactions_and_a_bad_write_fails_alone,
    every_kind_of_write_goes_through_group_commit,
    the_commits_of_one_batch_are_applied_together_and_answered_apart,
    a_failing_outbox_row_backs_off_alone_then_becomes_a_dead_letter,
    dead_letters_are_kept_once_retried_and_dropped,
    what_the_server_cannot_take_is_committed_as_a_dead_letter_and_an_error_event,
);

// ---------------------------------------------------------------------------------------------
// Fixtures

const TENANT: &str = "acme";

fn id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn at(offset_secs: i64) -> OffsetDateTime {
    datetime!(2025-06-01 12:00:00.123456 UTC) + time::Duration::seconds(offset_secs)
}

/// A session that is not stored, under the id `id`.
fn ghost(id: &str) -> Session {
    let mut s = session("ghost", SessionState::Active, at(0));
    s.id = id.to_owned();
    s
}

fn session(user: &str, state: SessionState, opened: OffsetDateTime) -> Session {
    Session {
        id: id(),
        kind: kind::CEC.to_owned(),
        tenant: TENANT.to_owned(),
        user_id: user.to_owned(),
        channel_config_id: "1011577355744904195".to_owned(),
        state,
        token: Some("tok-1".to_owned()),
        opened_at: opened,
        closed_at: None,
        close_reason: None,
        last_activity_at: opened,
    }
}

fn open(s: &Session) -> Commit {
    Commit {
        sessions: vec![SessionChange::Open(s.clone())],
        ..Commit::default()
    }
}

fn close(s: &Session, reason: &str, when: OffsetDateTime) -> Commit {
    Commit {
        sessions: vec![SessionChange::Close {
            id: s.id.clone(),
            reason: reason.to_owned(),
            at: when,
        }],
        ..Commit::default()
    }
}

fn up_row(user: &str, message_id: &str, created: OffsetDateTime) -> MessageRow {
    MessageRow {
        relay_id: id(),
        kind: kind::CEC.to_owned(),
        tenant: TENANT.to_owned(),
        user_id: user.to_owned(),
        session_id: None,
        direction: Direction::Up,
        message_id: Some(message_id.to_owned()),
        message_code: None,
        source_type: Some("CUSTOMER".to_owned()),
        control_type: Some("CHAT".to_owned()),
        media_type: Some("TEXT".to_owned()),
        content: Some(format!("hello {message_id}")),
        body: json!({"messageId": message_id, "content": "hello", "controlType": "CHAT"})
            .to_string(),
        status: MessageStatus::Pending,
        result_code: None,
        result_desc: None,
        stream_seq: Some(42),
        created_at: created,
    }
}

fn down(user: &str, code: Option<&str>, content: &str, created: OffsetDateTime) -> DownRecord {
    let relay_id = id();
    let body = json!({
        "id": relay_id, "tenant": TENANT, "userId": user, "content": content,
        "messageCode": code, "sourceType": "AGENT",
    })
    .to_string();
    DownRecord {
        row: MessageRow {
            relay_id: relay_id.clone(),
            kind: kind::CEC.to_owned(),
            tenant: TENANT.to_owned(),
            user_id: user.to_owned(),
            session_id: None,
            direction: Direction::Down,
            message_id: None,
            message_code: code.map(str::to_owned),
            source_type: Some("AGENT".to_owned()),
            control_type: Some("CHAT".to_owned()),
            media_type: Some("TEXT".to_owned()),
            content: Some(content.to_owned()),
            body: body.clone(),
            status: MessageStatus::Received,
            result_code: None,
            result_desc: None,
            stream_seq: None,
            created_at: created,
        },
        publish: OutboxMsg {
            msg_id: relay_id,
            subject: format!("ccrelay.cec.{TENANT}.down.{user}"),
            payload: body.into_bytes(),
        },
    }
}

fn event(user: &str, event_type: &str, created: OffsetDateTime) -> EventRecord {
    let relay_id = id();
    EventRecord {
        body: json!({"id": relay_id, "type": event_type, "ok": true}).to_string(),
        relay_id,
        kind: kind::CEC.to_owned(),
        tenant: Some(TENANT.to_owned()),
        user_id: Some(user.to_owned()),
        session_id: None,
        event_type: event_type.to_owned(),
        ok: true,
        subject: format!("ccrelay.cec.{TENANT}.event.{user}"),
        created_at: created,
    }
}

fn satisfaction(
    user: &str,
    source: SatisfactionSource,
    score: &str,
    created: OffsetDateTime,
) -> SatisfactionRow {
    SatisfactionRow {
        relay_id: id(),
        kind: kind::CEC.to_owned(),
        tenant: TENANT.to_owned(),
        user_id: user.to_owned(),
        session_id: None,
        source,
        score: score.to_owned(),
        comment: Some(format!("comment {score}")),
        inter_idx: (source == SatisfactionSource::Robot).then(|| "2".to_owned()),
        result_code: "0".to_owned(),
        result_desc: Some("Save satisfaction success!".to_owned()),
        created_at: created,
    }
}

fn offline(
    user: &str,
    source: OfflineSource,
    message_id: Option<&str>,
    content: &str,
    created: OffsetDateTime,
) -> OfflineRow {
    OfflineRow {
        relay_id: id(),
        kind: kind::CEC.to_owned(),
        tenant: TENANT.to_owned(),
        user_id: user.to_owned(),
        session_id: None,
        source,
        message_id: message_id.map(str::to_owned),
        caller: (source == OfflineSource::LeaveMessage).then(|| "1386667777".to_owned()),
        content: content.to_owned(),
        tip_text: (source == OfflineSource::Offline).then(|| "Agents are offline".to_owned()),
        result_code: "0".to_owned(),
        result_desc: Some("ok".to_owned()),
        created_at: created,
    }
}

/// `rows` as the store gives them back: timestamps at store precision.
fn stored_satisfactions(rows: &[&SatisfactionRow]) -> Vec<SatisfactionRow> {
    rows.iter()
        .map(|r| SatisfactionRow {
            created_at: to_store_precision(r.created_at),
            ..(*r).clone()
        })
        .collect()
}

fn stored_offline(rows: &[&OfflineRow]) -> Vec<OfflineRow> {
    rows.iter()
        .map(|r| OfflineRow {
            created_at: to_store_precision(r.created_at),
            ..(*r).clone()
        })
        .collect()
}

async fn satisfactions_of(store: &DynStore, user: &str) -> Vec<SatisfactionRow> {
    store
        .satisfactions(kind::CEC, TENANT, user)
        .await
        .expect("satisfactions")
}

async fn offline_of(store: &DynStore, user: &str) -> Vec<OfflineRow> {
    store
        .offline_messages(kind::CEC, TENANT, user)
        .await
        .expect("offline messages")
}

fn downs(records: Vec<DownRecord>) -> Commit {
    Commit {
        down: records,
        ..Commit::default()
    }
}

/// JSON bodies compared as values: PostgreSQL's jsonb keeps the value, not the spelling.
fn same_json(a: &str, b: &str) -> bool {
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).expect("JSON body");
    parse(a) == parse(b)
}

fn assert_same_message(got: &MessageRow, want: &MessageRow) {
    assert!(same_json(&got.body, &want.body), "{got:?} vs {want:?}");
    let mut got = got.clone();
    got.body = want.body.clone();
    assert_eq!(got, *want);
}

async fn transcript(store: &DynStore, user: &str) -> Vec<MessageRow> {
    store
        .transcript(kind::CEC, TENANT, user)
        .await
        .expect("transcript")
}

async fn outbox_ids(store: &DynStore) -> Vec<String> {
    store
        .outbox_pending(1_000)
        .await
        .expect("outbox")
        .into_iter()
        .map(|r| r.msg_id)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The contract

async fn migrating_twice_changes_nothing(db: Db) {
    let s = session("u1", SessionState::Active, at(0));
    let mut rated = satisfaction("u1", SatisfactionSource::Customer, "5", at(1));
    rated.session_id = Some(s.id.clone());
    let kept = offline("u1", OfflineSource::Offline, Some("m-1"), "hello", at(1));
    db.store
        .commit(Commit {
            sessions: vec![SessionChange::Open(s.clone())],
            satisfactions: vec![rated.clone()],
            offline: vec![kept.clone()],
            ..Commit::default()
        })
        .await
        .unwrap();
    db.store.migrate().await.expect("second migrate");
    let other = db.reopen().await;
    other.migrate().await.expect("migrate from another handle");
    assert_eq!(
        other.open_session(kind::CEC, TENANT, "u1").await.unwrap(),
        Some(s)
    );
    assert_eq!(satisfactions_of(&other, "u1").await, vec![rated]);
    assert_eq!(offline_of(&other, "u1").await, vec![kept]);
    other.close().await;
}

async fn an_empty_commit_does_nothing(db: Db) {
    assert!(Commit::default().is_empty());
    let done = db.store.commit(Commit::default()).await.unwrap();
    assert_eq!(done, Committed::default());
    assert_eq!(
        db.store.outbox_stats().await.unwrap(),
        OutboxStats::default()
    );
}

async fn sessions_open_close_and_reopen(db: Db) {
    let store = &db.store;
    assert_eq!(
        store.open_session(kind::CEC, TENANT, "u1").await.unwrap(),
        None
    );

    let first = session("u1", SessionState::Active, at(0));
    store.commit(open(&first)).await.unwrap();
    assert_eq!(
        store.open_session(kind::CEC, TENANT, "u1").await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(store.open_sessions().await.unwrap(), vec![first.clone()]);

    store
        .commit(close(&first, "customer", at(10)))
        .await
        .unwrap();
    assert_eq!(
        store.open_session(kind::CEC, TENANT, "u1").await.unwrap(),
        None
    );
    assert!(store.open_sessions().await.unwrap().is_empty());
    let closed = Session {
        state: SessionState::Closed,
        closed_at: Some(at(10)),
        close_reason: Some("customer".to_owned()),
        ..first.clone()
    };
    assert_eq!(
        store.list_sessions(None, None, 10).await.unwrap(),
        vec![closed.clone()]
    );

    // Closing again is a no-op: the first reason and time stay.
    store.commit(close(&first, "idle", at(20))).await.unwrap();
    assert_eq!(
        store.list_sessions(None, None, 10).await.unwrap(),
        vec![closed.clone()]
    );

    // The user may open a new session once the old one is closed.
    let second = session("u1", SessionState::Queued, at(30));
    store.commit(open(&second)).await.unwrap();
    assert_eq!(
        store.open_session(kind::CEC, TENANT, "u1").await.unwrap(),
        Some(second.clone())
    );
    assert_eq!(store.open_sessions().await.unwrap(), vec![second.clone()]);
    assert_eq!(
        store.list_sessions(None, None, 10).await.unwrap(),
        vec![second, closed]
    );
}

async fn a_user_has_at_most_one_open_session(db: Db) {
    let store = &db.store;
    let first = session("u1", SessionState::Queued, at(0));
    store.commit(open(&first)).await.unwrap();

    let second = session("u1", SessionState::Active, at(1));
    let err = store.commit(open(&second)).await.unwrap_err();
    // sqlx's error on PostgreSQL, rusqlite's from SQLite's batch writer.
    assert!(
        matches!(err, StoreError::Query(_) | StoreError::Sqlite { .. }),
        "{err:?}"
    );
    assert!(
        !err.is_retryable(),
        "a constraint violation is final: {err:?}"
    );
    assert_eq!(
        store.open_session(kind::CEC, TENANT, "u1").await.unwrap(),
        Some(first)
    );

    // The key is (kind, tenant, user): the same user elsewhere is another key.
    let mut other_tenant = session("u1", SessionState::Active, at(2));
    other_tenant.tenant = "globex".to_owned();
    let mut other_kind = session("u1", SessionState::Active, at(3));
    other_kind.kind = kind::TIM.to_owned();
    store.commit(open(&other_tenant)).await.unwrap();
    store.commit(open(&other_kind)).await.unwrap();
    assert_eq!(store.open_sessions().await.unwrap().len(), 3);
}

async fn set_state_moves_open_sessions_only(db: Db) {
    let store = &db.store;
    let s = session("u1", SessionState::Active, at(0));
    store.commit(open(&s)).await.unwrap();
    let set = |state| Commit {
        sessions: vec![SessionChange::SetState {
            id: s.id.clone(),
            state,
        }],
        ..Commit::default()
    };

    store.commit(set(SessionState::Queued)).await.unwrap();
    let got = store.open_session(kind::CEC, TENANT, "u1").await.unwrap();
    assert_eq!(got.unwrap().state, SessionState::Queued);

    let err = store.commit(set(SessionState::Closed)).await.unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    let got = store.open_session(kind::CEC, TENANT, "u1").await.unwrap();
    assert_eq!(got.unwrap().state, SessionState::Queued);

    // A closed session stays closed.
    store.commit(close(&s, "agent", at(5))).await.unwrap();
    store.commit(set(SessionState::Active)).await.unwrap();
    assert_eq!(
        store.open_session(kind::CEC, TENANT, "u1").await.unwrap(),
        None
    );
    let all = store.list_sessions(None, None, 10).await.unwrap();
    assert_eq!(all[0].state, SessionState::Closed);
}

async fn changes_to_unknown_sessions_are_refused(db: Db) {
    let store = &db.store;
    let ghost = "no-such-session".to_owned();
    let changes = [
        Commit {
            sessions: vec![SessionChange::SetState {
                id: ghost.clone(),
                state: SessionState::Queued,
            }],
            ..Commit::default()
        },
        Commit {
            sessions: vec![SessionChange::Close {
                id: ghost.clone(),
                reason: "idle".to_owned(),
                at: at(0),
            }],
            ..Commit::default()
        },
        Commit {
            touch: vec![(ghost.clone(), at(0))],
            ..Commit::default()
        },
    ];
    for commit in changes {
        let err = store.commit(commit.clone()).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{commit:?}: {err:?}");
    }
    // A transcript row must name a session that exists.
    let mut d = down("u1", None, "hi", at(0));
    d.row.session_id = Some(ghost);
    let err = store.commit(downs(vec![d])).await.unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert!(transcript(store, "u1").await.is_empty());
}

async fn begin_up_is_new_then_pending_then_done(db: Db) {
    let store = &db.store;
    let s = session("u1", SessionState::Active, at(0));
    store.commit(open(&s)).await.unwrap();

    let row = up_row("u1", "m-1", at(1));
    assert_eq!(store.begin_up(&row).await.unwrap(), UpBegin::New);
    // A redelivery: same key, a new relay id. Not finished yet, so: send again.
    let again = up_row("u1", "m-1", at(2));
    assert_eq!(store.begin_up(&again).await.unwrap(), UpBegin::Pending);
    // Same message id, another user: another message.
    assert_eq!(
        store.begin_up(&up_row("u2", "m-1", at(1))).await.unwrap(),
        UpBegin::New
    );

    let stored = transcript(store, "u1").await;
    assert_eq!(stored.len(), 1);
    assert_same_message(&stored[0], &row);

    let outcome = UpOutcome {
        kind: kind::CEC.to_owned(),
        tenant: TENANT.to_owned(),
        user_id: "u1".to_owned(),
        message_id: "m-1".to_owned(),
        status: MessageStatus::Sent,
        session_id: Some(s.id.clone()),
        result_code: Some("0".to_owned()),
        result_desc: Some("success".to_owned()),
    };
    let done = store
        .commit(Commit {
            up: Some(outcome.clone()),
            ..Commit::default()
        })
        .await
        .unwrap();
    assert_eq!(done, Committed::default());
    assert_eq!(
        store.begin_up(&again).await.unwrap(),
        UpBegin::Done(MessageStatus::Sent)
    );

    let stored = transcript(store, "u1").await;
    assert_eq!(stored.len(), 1);
    let want = MessageRow {
        status: MessageStatus::Sent,
        session_id: Some(s.id.clone()),
        result_code: Some("0".to_owned()),
        result_desc: Some("success".to_owned()),
        ..row.clone()
    };
    assert_same_message(&stored[0], &want);

    // An outcome without a session id keeps the one recorded.
    store
        .commit(Commit {
            up: Some(UpOutcome {
                status: MessageStatus::Failed,
                session_id: None,
                result_code: Some("1-0001".to_owned()),
                result_desc: None,
                ..outcome
            }),
            ..Commit::default()
        })
        .await
        .unwrap();
    let stored = transcript(store, "u1").await;
    assert_eq!(stored[0].status, MessageStatus::Failed);
    assert_eq!(stored[0].session_id, Some(s.id));
    assert_eq!(stored[0].result_desc, None);
    assert_eq!(
        store.begin_up(&again).await.unwrap(),
        UpBegin::Done(MessageStatus::Failed)
    );
}

async fn begin_up_refuses_rows_it_cannot_key(db: Db) {
    let store = &db.store;
    let mut no_id = up_row("u1", "m-1", at(0));
    no_id.message_id = None;
    let err = store.begin_up(&no_id).await.unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    let down_row = down("u1", None, "x", at(0)).row;
    let err = store.begin_up(&down_row).await.unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert!(transcript(store, "u1").await.is_empty());
}

async fn an_up_row_is_recorded_with_its_outcome_in_one_commit(db: Db) {
    let store = &db.store;
    let s = session("u1", SessionState::Active, at(0));
    store.commit(open(&s)).await.unwrap();
    let status = |m: &'static str| async move {
        store
            .up_lookup(kind::CEC, TENANT, "u1", m)
            .await
            .map(|l| l.status)
    };
    assert_eq!(status("m-1").await.unwrap(), None);

    // Never begun: inserted with its outcome.
    let sent = MessageRow {
        status: MessageStatus::Sent,
        session_id: Some(s.id.clone()),
        result_code: Some("0".to_owned()),
        result_desc: Some("success".to_owned()),
        ..up_row("u1", "m-1", at(1))
    };
    let with_row = |row: &MessageRow| Commit {
        up_row: Some(row.clone()),
        events: vec![event("u1", "up.result", at(1))],
        ..Commit::default()
    };
    let done = store.commit(with_row(&sent)).await.unwrap();
    assert_eq!(done.outboxed, 1);
    assert_eq!(status("m-1").await.unwrap(), Some(MessageStatus::Sent));
    let stored = transcript(store, "u1").await;
    assert_eq!(stored.len(), 1);
    assert_same_message(&stored[0], &sent);

    // A Pending row of an earlier run takes the outcome; its relay id and body stay.
    let begun = up_row("u1", "m-2", at(2));
    assert_eq!(store.begin_up(&begun).await.unwrap(), UpBegin::New);
    assert_eq!(status("m-2").await.unwrap(), Some(MessageStatus::Pending));
    let failed = MessageRow {
        relay_id: id(),
        status: MessageStatus::Failed,
        session_id: None,
        result_code: Some("1-0001".to_owned()),
        body: r#"{"other":"body"}"#.to_owned(),
        ..up_row("u1", "m-2", at(3))
    };
    store.commit(with_row(&failed)).await.unwrap();
    let stored = transcript(store, "u1").await;
    assert_eq!(stored.len(), 2);
    let want = MessageRow {
        status: MessageStatus::Failed,
        result_code: Some("1-0001".to_owned()),
        ..begun.clone()
    };
    assert_same_message(&stored[1], &want);
    assert_eq!(status("m-2").await.unwrap(), Some(MessageStatus::Failed));
    // Another user's message with the same id is another message.
    let other = store
        .up_lookup(kind::CEC, TENANT, "u2", "m-1")
        .await
        .unwrap();
    assert_eq!(other, UpLookup::default());
    // The lookup brings the user's open session along.
    let mine = store
        .up_lookup(kind::CEC, TENANT, "u1", "m-1")
        .await
        .unwrap();
    assert_eq!(mine.session.map(|found| found.id), Some(s.id.clone()));

    // A row it cannot key is refused, and nothing of the commit stays.
    let before = store_outbox_len(store).await;
    let mut no_id = up_row("u1", "m-3", at(4));
    no_id.message_id = None;
    let down_row = down("u1", None, "x", at(4)).row;
    for bad in [no_id, down_row] {
        let err = store.commit(with_row(&bad)).await.unwrap_err();
        assert!(!err.is_retryable(), "{err:?}");
    }
    assert_eq!(transcript(store, "u1").await.len(), 2);
    assert_eq!(store_outbox_len(store).await, before);

    // A closed session is not brought along.
    store.commit(close(&s, "idle", at(5))).await.unwrap();
    let after = store
        .up_lookup(kind::CEC, TENANT, "u1", "m-1")
        .await
        .unwrap();
    assert_eq!(after.status, Some(MessageStatus::Sent));
    assert_eq!(after.session, None);
}

async fn a_commit_that_fails_leaves_nothing_behind(db: Db) {
    let store = &db.store;
    let s = session("u1", SessionState::Active, at(0));
    let full = |tail: Commit| Commit {
        sessions: vec![SessionChange::Open(s.clone())],
        down: vec![
            down("u1", Some("c1"), "one", at(1)),
            down("u1", None, "two", at(2)),
        ],
        events: vec![event("u1", "session.opened", at(0))],
        touch: vec![(s.id.clone(), at(2))],
        ..tail
    };
    let failing = [
        // The up outcome of a message never begun.
        full(Commit {
            up: Some(UpOutcome {
                kind: kind::CEC.to_owned(),
                tenant: TENANT.to_owned(),
                user_id: "u1".to_owned(),
                message_id: "never-begun".to_owned(),
                status: MessageStatus::Sent,
                session_id: None,
                result_code: None,
                result_desc: None,
            }),
            ..Commit::default()
        }),
        // The very last step fails, after every insert.
        {
            let mut c = full(Commit::default());
            c.touch.push(("no-such-session".to_owned(), at(3)));
            c
        },
        // A body that is not JSON (the last down, after the others went in).
        {
            let mut c = full(Commit::default());
            let mut bad = down("u1", None, "three", at(3));
            bad.row.body = "{not json".to_owned();
            c.down.push(bad);
            c
        },
        // A constraint violation in the middle: two events with one relay id.
        {
            let mut c = full(Commit::default());
            let mut dup = event("u1", "error", at(3));
            dup.relay_id = c.events[0].relay_id.clone();
            c.events.push(dup);
            c
        },
    ];
    for commit in failing {
        let err = store.commit(commit).await.unwrap_err();
        assert!(!err.is_retryable(), "{err:?}");
        assert_eq!(
            store.open_session(kind::CEC, TENANT, "u1").await.unwrap(),
            None
        );
        assert!(
            store
                .list_sessions(None, None, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(transcript(store, "u1").await.is_empty());
        assert!(
            store
                .events(kind::CEC, TENANT, "u1")
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.outbox_stats().await.unwrap(), OutboxStats::default());
    }

    // The same commit without the fault goes through whole.
    let done = store.commit(full(Commit::default())).await.unwrap();
    assert_eq!(done.inserted_down.len(), 2);
    assert_eq!(done.outboxed, 3);
    assert_eq!(transcript(store, "u1").await.len(), 2);
    assert_eq!(store.outbox_stats().await.unwrap().pending, 3);
}

async fn down_messages_are_deduplicated_by_message_code(db: Db) {
    let store = &db.store;
    let a = down("u1", Some("c1"), "a", at(1));
    let b = down("u1", None, "b", at(2));
    let done = store
        .commit(downs(vec![a.clone(), b.clone()]))
        .await
        .unwrap();
    assert_eq!(
        done,
        Committed {
            inserted_down: vec![a.row.relay_id.clone(), b.row.relay_id.clone()],
            duplicate_down: 0,
            outboxed: 2,
            set_aside: Vec::new(),
        }
    );

    // The upstream returns c1 again (under a new relay id), b's twin without a code, and c2.
    let a_again = down("u1", Some("c1"), "a", at(3));
    let b_twin = down("u1", None, "b", at(4));
    let c = down("u1", Some("c2"), "c", at(5));
    let done = store
        .commit(downs(vec![a_again.clone(), b_twin.clone(), c.clone()]))
        .await
        .unwrap();
    assert_eq!(
        done,
        Committed {
            inserted_down: vec![b_twin.row.relay_id.clone(), c.row.relay_id.clone()],
            duplicate_down: 1,
            outboxed: 2,
            set_aside: Vec::new(),
        }
    );

    // A code repeated within one commit: the first one wins.
    let d1 = down("u1", Some("c3"), "d", at(6));
    let d2 = down("u1", Some("c3"), "d", at(7));
    // The same code for another user is another message.
    let other_user = down("u2", Some("c1"), "a", at(8));
    let done = store
        .commit(downs(vec![d1.clone(), d2, other_user.clone()]))
        .await
        .unwrap();
    assert_eq!(
        done.inserted_down,
        vec![d1.row.relay_id.clone(), other_user.row.relay_id.clone()]
    );
    assert_eq!(done.duplicate_down, 1);

    let kept: Vec<_> = [&a, &b, &b_twin, &c, &d1]
        .iter()
        .map(|d| d.row.relay_id.clone())
        .collect();
    let stored = transcript(store, "u1").await;
    assert_eq!(
        stored
            .iter()
            .map(|r| r.relay_id.clone())
            .collect::<Vec<_>>(),
        kept
    );
    for (got, want) in stored.iter().zip([&a, &b, &b_twin, &c, &d1]) {
        assert_same_message(got, &want.row);
    }
    let mut published = kept;
    published.push(other_user.row.relay_id.clone());
    assert_eq!(outbox_ids(store).await, published);
}

async fn the_outbox_keeps_commit_order_until_done(db: Db) {
    let store = &db.store;
    assert_eq!(store.outbox_stats().await.unwrap(), OutboxStats::default());
    assert!(store.outbox_pending(10).await.unwrap().is_empty());

    let before = to_store_precision(OffsetDateTime::now_utc());
    let first = down("u1", None, "one", at(0));
    let second = down("u2", Some("x"), "two", at(0));
    let ev = event("u1", "session.closed", at(-5));
    store
        .commit(Commit {
            down: vec![first.clone(), second.clone()],
            events: vec![ev.clone()],
            ..Commit::default()
        })
        .await
        .unwrap();
    let third = down("u1", None, "three", at(-10));
    store.commit(downs(vec![third.clone()])).await.unwrap();
    let after = OffsetDateTime::now_utc();

    let pending = store.outbox_pending(10).await.unwrap();
    assert_eq!(
        pending.iter().map(|r| r.msg_id.clone()).collect::<Vec<_>>(),
        vec![
            first.publish.msg_id.clone(),
            second.publish.msg_id.clone(),
            ev.relay_id.clone(),
            third.publish.msg_id.clone()
        ],
        "commit order, downs before events"
    );
    assert!(pending.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(pending[0].payload, first.publish.payload);
    assert_eq!(pending[0].subject, first.publish.subject);
    assert_eq!(pending[2].payload, ev.body.as_bytes());
    assert_eq!(pending[2].subject, ev.subject);
    for row in &pending {
        assert!(
            row.created_at >= before && row.created_at <= after,
            "{row:?}"
        );
    }
    assert_eq!(
        store.outbox_pending(2).await.unwrap(),
        pending[..2].to_vec()
    );

    let stats = store.outbox_stats().await.unwrap();
    assert_eq!(stats.pending, 4);
    assert_eq!(stats.oldest, Some(pending[0].created_at));

    store
        .outbox_done(&[pending[0].seq, pending[2].seq])
        .await
        .unwrap();
    assert_eq!(
        store.outbox_pending(10).await.unwrap(),
        vec![pending[1].clone(), pending[3].clone()]
    );
    // Repeated and empty acknowledgements are harmless.
    store.outbox_done(&[pending[0].seq]).await.unwrap();
    store.outbox_done(&[]).await.unwrap();
    assert_eq!(store.outbox_stats().await.unwrap().pending, 2);

    store
        .outbox_done(&[pending[1].seq, pending[3].seq])
        .await
        .unwrap();
    assert_eq!(store.outbox_stats().await.unwrap(), OutboxStats::default());
    // Publishing is the outbox's business: the transcript keeps everything.
    assert_eq!(transcript(store, "u1").await.len(), 2);
}

async fn outbox_seqs_are_never_reused(db: Db) {
    let store = &db.store;
    store
        .commit(downs(vec![
            down("u1", None, "a", at(0)),
            down("u1", None, "b", at(1)),
        ]))
        .await
        .unwrap();
    let pending = store.outbox_pending(10).await.unwrap();
    let last = pending.last().unwrap().seq;
    store
        .outbox_done(&pending.iter().map(|r| r.seq).collect::<Vec<_>>())
        .await
        .unwrap();
    // A late ack of the old seqs must not hit the new row.
    store
        .commit(downs(vec![down("u1", None, "c", at(2))]))
        .await
        .unwrap();
    let fresh = store.outbox_pending(10).await.unwrap();
    assert_eq!(fresh.len(), 1);
    assert!(fresh[0].seq > last, "{} reused after {last}", fresh[0].seq);
}

async fn the_transcript_is_in_time_order_across_directions(db: Db) {
    let store = &db.store;
    let up1 = up_row("u1", "m-1", at(10));
    store.begin_up(&up1).await.unwrap();
    // Inserted later, created earlier.
    let d_early = down("u1", None, "early", at(5));
    // Same instant as up1: insertion order breaks the tie.
    let d_tie = down("u1", None, "tie", at(10));
    let d_late = down("u1", Some("c9"), "late", at(20));
    store
        .commit(downs(vec![d_late.clone(), d_early.clone(), d_tie.clone()]))
        .await
        .unwrap();
    let up2 = up_row("u1", "m-2", at(15));
    store.begin_up(&up2).await.unwrap();
    // Someone else's conversation is not part of it.
    store.begin_up(&up_row("u2", "m-1", at(12))).await.unwrap();

    let got = transcript(store, "u1").await;
    let want = [&d_early.row, &up1, &d_tie.row, &up2, &d_late.row];
    assert_eq!(got.len(), want.len());
    for (got, want) in got.iter().zip(want) {
        assert_same_message(got, want);
    }
    assert!(
        store
            .transcript(kind::TIM, TENANT, "u1")
            .await
            .unwrap()
            .is_empty()
    );
}

async fn events_are_kept_per_user_in_order(db: Db) {
    let store = &db.store;
    let s = session("u1", SessionState::Active, at(0));
    let mut opened = event("u1", "session.opened", at(0));
    opened.session_id = Some(s.id.clone());
    let mut failed = event("u1", "up.result", at(-1));
    failed.ok = false;
    failed.body = json!({"id": failed.relay_id, "type": "up.result", "ok": false,
                         "resultCode": "1-0004", "nested": {"b": [1, 2], "a": null}})
    .to_string();
    let mut tenantless = event("u1", "error", at(1));
    tenantless.tenant = None;
    tenantless.user_id = None;
    let other = event("u2", "session.opened", at(0));
    let done = store
        .commit(Commit {
            sessions: vec![SessionChange::Open(s)],
            events: vec![
                opened.clone(),
                failed.clone(),
                tenantless.clone(),
                other.clone(),
            ],
            ..Commit::default()
        })
        .await
        .unwrap();
    assert_eq!(done.outboxed, 4);
    assert!(done.inserted_down.is_empty());

    let got = store.events(kind::CEC, TENANT, "u1").await.unwrap();
    assert_eq!(got.len(), 2);
    for (got, want) in got.iter().zip([&failed, &opened]) {
        assert!(same_json(&got.body, &want.body), "{got:?}");
        assert_eq!(
            EventRecord {
                body: want.body.clone(),
                ..got.clone()
            },
            *want
        );
    }
    assert_eq!(
        outbox_ids(store).await,
        vec![
            opened.relay_id,
            failed.relay_id,
            tenantless.relay_id,
            other.relay_id
        ]
    );
}

async fn satisfactions_round_trip_per_user_in_order(db: Db) {
    let store = &db.store;
    let s = session("u1", SessionState::Active, at(0));
    // Nanoseconds and a non-UTC offset: read back in UTC, at microsecond precision.
    let mut customer = satisfaction(
        "u1",
        SatisfactionSource::Customer,
        "4",
        datetime!(2025-06-01 14:00:05.123456789 +02:00),
    );
    customer.session_id = Some(s.id.clone());
    let mut robot = satisfaction("u1", SatisfactionSource::Robot, "0", at(-1));
    robot.comment = Some("dissatisfied".to_owned());
    robot.result_code = "30000000008".to_owned();
    robot.result_desc = None;
    // Every optional column empty, and the same time as `customer`: ties in insertion order.
    let bare = SatisfactionRow {
        relay_id: id(),
        session_id: None,
        comment: None,
        inter_idx: None,
        result_desc: None,
        ..satisfaction("u1", SatisfactionSource::Robot, "1", customer.created_at)
    };
    let other_user = satisfaction("u2", SatisfactionSource::Customer, "1", at(0));
    let mut other_tenant = satisfaction("u1", SatisfactionSource::Customer, "2", at(0));
    other_tenant.tenant = "globex".to_owned();
    let mut other_kind = satisfaction("u1", SatisfactionSource::Customer, "3", at(0));
    other_kind.kind = kind::TIM.to_owned();

    let commit = Commit {
        sessions: vec![SessionChange::Open(s)],
        satisfactions: vec![
            customer.clone(),
            robot.clone(),
            bare.clone(),
            other_user.clone(),
            other_tenant.clone(),
            other_kind.clone(),
        ],
        ..Commit::default()
    };
    assert!(!commit.is_empty());
    let done = store.commit(commit).await.unwrap();
    // Stored, not published.
    assert_eq!(done, Committed::default());
    assert_eq!(store.outbox_stats().await.unwrap(), OutboxStats::default());

    let got = satisfactions_of(store, "u1").await;
    assert_eq!(got, stored_satisfactions(&[&robot, &customer, &bare]));
    assert!(
        got.iter()
            .all(|r| r.created_at.offset() == time::UtcOffset::UTC)
    );
    assert_eq!(
        satisfactions_of(store, "u2").await,
        stored_satisfactions(&[&other_user])
    );
    assert_eq!(
        store
            .satisfactions(kind::CEC, "globex", "u1")
            .await
            .unwrap(),
        stored_satisfactions(&[&other_tenant])
    );
    assert_eq!(
        store.satisfactions(kind::TIM, TENANT, "u1").await.unwrap(),
        stored_satisfactions(&[&other_kind])
    );
    assert!(satisfactions_of(store, "nobody").await.is_empty());

    // Only a commit of satisfactions is not empty either.
    let later = satisfaction("u3", SatisfactionSource::Customer, "5", at(9));
    store
        .commit(Commit {
            satisfactions: vec![later.clone()],
            ..Commit::default()
        })
        .await
        .unwrap();
    assert_eq!(satisfactions_of(store, "u3").await, vec![later]);
}

async fn offline_messages_round_trip_per_user_in_order(db: Db) {
    let store = &db.store;
    let s = session("u1", SessionState::Queued, at(0));
    let mut sent_offline = offline(
        "u1",
        OfflineSource::Offline,
        Some("m-1"),
        "are you there?",
        datetime!(2025-06-01 14:00:05.999999999 +02:00),
    );
    sent_offline.session_id = Some(s.id.clone());
    let mut left = offline(
        "u1",
        OfflineSource::LeaveMessage,
        None,
        "请回复电话",
        at(-1),
    );
    left.result_code = "13".to_owned();
    let bare = OfflineRow {
        relay_id: id(),
        session_id: None,
        message_id: None,
        caller: None,
        tip_text: None,
        result_desc: None,
        ..offline(
            "u1",
            OfflineSource::Offline,
            None,
            "",
            sent_offline.created_at,
        )
    };
    let other_user = offline("u2", OfflineSource::Offline, Some("m-1"), "x", at(0));
    let mut other_tenant = offline("u1", OfflineSource::Offline, Some("m-1"), "y", at(0));
    other_tenant.tenant = "globex".to_owned();

    let done = store
        .commit(Commit {
            sessions: vec![SessionChange::Open(s)],
            offline: vec![
                sent_offline.clone(),
                left.clone(),
                bare.clone(),
                other_user.clone(),
                other_tenant.clone(),
            ],
            ..Commit::default()
        })
        .await
        .unwrap();
    assert_eq!(done, Committed::default());
    assert_eq!(store.outbox_stats().await.unwrap(), OutboxStats::default());

    let got = offline_of(store, "u1").await;
    assert_eq!(got, stored_offline(&[&left, &sent_offline, &bare]));
    assert!(
        got.iter()
            .all(|r| r.created_at.offset() == time::UtcOffset::UTC)
    );
    assert_eq!(
        offline_of(store, "u2").await,
        stored_offline(&[&other_user])
    );
    assert_eq!(
        store
            .offline_messages(kind::CEC, "globex", "u1")
            .await
            .unwrap(),
        stored_offline(&[&other_tenant])
    );
    assert!(
        store
            .offline_messages(kind::TIM, TENANT, "u1")
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_failing_commit_keeps_no_satisfaction_or_offline_message(db: Db) {
    let store = &db.store;
    let s = session("u1", SessionState::Active, at(0));
    let full = || {
        let mut rated = satisfaction("u1", SatisfactionSource::Customer, "5", at(1));
        rated.session_id = Some(s.id.clone());
        let mut kept = offline("u1", OfflineSource::Offline, Some("m-1"), "hi", at(1));
        kept.session_id = Some(s.id.clone());
        Commit {
            sessions: vec![SessionChange::Open(s.clone())],
            down: vec![down("u1", Some("c1"), "one", at(1))],
            events: vec![event("u1", "satisfaction.saved", at(1))],
            satisfactions: vec![
                rated,
                satisfaction("u1", SatisfactionSource::Robot, "1", at(2)),
            ],
            offline: vec![
                kept,
                offline("u1", OfflineSource::LeaveMessage, None, "call me", at(2)),
            ],
            touch: vec![(s.id.clone(), at(2))],
            ..Commit::default()
        }
    };
    let failing = [
        // The last step fails, after the satisfaction and offline rows went in.
        {
            let mut c = full();
            c.touch.push(("no-such-session".to_owned(), at(3)));
            c
        },
        // A satisfaction naming a session that does not exist.
        {
            let mut c = full();
            let mut ghost = satisfaction("u1", SatisfactionSource::Customer, "1", at(3));
            ghost.session_id = Some("no-such-session".to_owned());
            c.satisfactions.push(ghost);
            c
        },
        // Two satisfactions with one relay id.
        {
            let mut c = full();
            let mut dup = satisfaction("u1", SatisfactionSource::Robot, "0", at(3));
            dup.relay_id = c.satisfactions[0].relay_id.clone();
            c.satisfactions.push(dup);
            c
        },
        // An offline message naming a session that does not exist.
        {
            let mut c = full();
            let mut ghost = offline("u1", OfflineSource::LeaveMessage, None, "x", at(3));
            ghost.session_id = Some("no-such-session".to_owned());
            c.offline.push(ghost);
            c
        },
        // Two offline messages with one relay id (a different message_id: not a duplicate).
        {
            let mut c = full();
            let mut dup = offline("u1", OfflineSource::Offline, Some("m-2"), "x", at(3));
            dup.relay_id = c.offline[0].relay_id.clone();
            c.offline.push(dup);
            c
        },
    ];
    for commit in failing {
        let err = store.commit(commit).await.unwrap_err();
        assert!(!err.is_retryable(), "{err:?}");
        assert!(satisfactions_of(store, "u1").await.is_empty());
        assert!(offline_of(store, "u1").await.is_empty());
        assert_eq!(
            store.open_session(kind::CEC, TENANT, "u1").await.unwrap(),
            None
        );
        assert!(transcript(store, "u1").await.is_empty());
        assert!(
            store
                .events(kind::CEC, TENANT, "u1")
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.outbox_stats().await.unwrap(), OutboxStats::default());
    }

    // The same commit without the fault goes through whole.
    let commit = full();
    let done = store.commit(commit.clone()).await.unwrap();
    assert_eq!(done.outboxed, 2);
    assert_eq!(
        satisfactions_of(store, "u1").await,
        stored_satisfactions(&commit.satisfactions.iter().collect::<Vec<_>>())
    );
    assert_eq!(
        offline_of(store, "u1").await,
        stored_offline(&commit.offline.iter().collect::<Vec<_>>())
    );
    assert_eq!(transcript(store, "u1").await.len(), 1);
}

async fn offline_messages_are_deduplicated_by_message_id(db: Db) {
    let store = &db.store;
    let first = offline("u1", OfflineSource::Offline, Some("m-1"), "first", at(1));
    let left = offline("u1", OfflineSource::LeaveMessage, None, "call me", at(2));
    store
        .commit(Commit {
            offline: vec![first.clone(), left.clone()],
            ..Commit::default()
        })
        .await
        .unwrap();

    // Redelivered: a new relay id, the same message_id. Skipped, not an error, and the rest of
    // the commit is kept. Rows without a message_id are never duplicates, even when equal but
    // for the relay id; nor is the same message_id of another user, tenant or kind.
    let again = offline("u1", OfflineSource::Offline, Some("m-1"), "again", at(3));
    let left_again = OfflineRow {
        relay_id: id(),
        ..left.clone()
    };
    let second = offline("u1", OfflineSource::Offline, Some("m-2"), "second", at(4));
    let second_in_batch = offline("u1", OfflineSource::Offline, Some("m-2"), "dup", at(5));
    let other_user = offline("u2", OfflineSource::Offline, Some("m-1"), "u2", at(3));
    let mut other_tenant = offline("u1", OfflineSource::Offline, Some("m-1"), "t", at(3));
    other_tenant.tenant = "globex".to_owned();
    let mut other_kind = offline("u1", OfflineSource::Offline, Some("m-1"), "k", at(3));
    other_kind.kind = kind::TIM.to_owned();
    let rated = satisfaction("u1", SatisfactionSource::Customer, "3", at(3));
    store
        .commit(Commit {
            offline: vec![
                again,
                left_again.clone(),
                second.clone(),
                second_in_batch,
                other_user.clone(),
                other_tenant.clone(),
                other_kind.clone(),
            ],
            satisfactions: vec![rated.clone()],
            ..Commit::default()
        })
        .await
        .unwrap();

    assert_eq!(
        offline_of(store, "u1").await,
        stored_offline(&[&first, &left, &left_again, &second])
    );
    assert_eq!(
        offline_of(store, "u2").await,
        stored_offline(&[&other_user])
    );
    assert_eq!(
        store
            .offline_messages(kind::CEC, "globex", "u1")
            .await
            .unwrap(),
        stored_offline(&[&other_tenant])
    );
    assert_eq!(
        store
            .offline_messages(kind::TIM, TENANT, "u1")
            .await
            .unwrap(),
        stored_offline(&[&other_kind])
    );
    assert_eq!(
        satisfactions_of(store, "u1").await,
        stored_satisfactions(&[&rated])
    );
}

async fn touch_only_moves_forward(db: Db) {
    let store = &db.store;
    let s = session("u1", SessionState::Active, at(0));
    store.commit(open(&s)).await.unwrap();
    let touch = |points: Vec<OffsetDateTime>| Commit {
        touch: points.into_iter().map(|t| (s.id.clone(), t)).collect(),
        ..Commit::default()
    };
    let last_activity = || async {
        store
            .open_session(kind::CEC, TENANT, "u1")
            .await
            .unwrap()
            .unwrap()
            .last_activity_at
    };

    store.commit(touch(vec![at(60)])).await.unwrap();
    assert_eq!(last_activity().await, at(60));
    store.commit(touch(vec![at(30)])).await.unwrap();
    assert_eq!(last_activity().await, at(60));
    store
        .commit(touch(vec![at(90), at(120), at(100)]))
        .await
        .unwrap();
    assert_eq!(last_activity().await, at(120));

    // A closed session can still be touched (a late message), and still only forward.
    store.commit(close(&s, "idle", at(130))).await.unwrap();
    store.commit(touch(vec![at(125)])).await.unwrap();
    let all = store.list_sessions(None, None, 1).await.unwrap();
    assert_eq!(all[0].last_activity_at, at(125));
}

async fn list_sessions_filters_and_orders(db: Db) {
    let store = &db.store;
    let mut made = Vec::new();
    for (i, (tenant, user, state)) in [
        ("acme", "u1", SessionState::Active),
        ("acme", "u2", SessionState::Queued),
        ("globex", "u3", SessionState::Active),
        ("acme", "u4", SessionState::Active),
        ("globex", "u5", SessionState::Active),
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = session(user, state, at(i as i64 * 10));
        s.tenant = tenant.to_owned();
        store.commit(open(&s)).await.unwrap();
        made.push(s);
    }
    store
        .commit(close(&made[4], "agent", at(100)))
        .await
        .unwrap();
    let ids = |v: Vec<Session>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
    let want = |idx: &[usize]| idx.iter().map(|&i| made[i].id.clone()).collect::<Vec<_>>();

    let all = store.list_sessions(None, None, 100).await.unwrap();
    assert_eq!(ids(all), want(&[4, 3, 2, 1, 0]), "newest first");
    let acme = store.list_sessions(Some("acme"), None, 100).await.unwrap();
    assert_eq!(ids(acme), want(&[3, 1, 0]));
    let active = store
        .list_sessions(None, Some(SessionState::Active), 100)
        .await
        .unwrap();
    assert_eq!(ids(active), want(&[3, 2, 0]));
    let globex_closed = store
        .list_sessions(Some("globex"), Some(SessionState::Closed), 100)
        .await
        .unwrap();
    assert_eq!(ids(globex_closed), want(&[4]));
    let limited = store.list_sessions(None, None, 2).await.unwrap();
    assert_eq!(ids(limited), want(&[4, 3]));
    assert!(store.list_sessions(None, None, 0).await.unwrap().is_empty());
    assert!(
        store
            .list_sessions(None, None, -1)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .list_sessions(Some("initech"), None, 100)
            .await
            .unwrap()
            .is_empty()
    );
    let opened = store.open_sessions().await.unwrap();
    assert_eq!(ids(opened), want(&[0, 1, 2, 3]), "oldest first");
}

async fn the_session_token_is_stored_and_cleared(db: Db) {
    let store = &db.store;
    let s = session("u1", SessionState::Active, at(0));
    store.commit(open(&s)).await.unwrap();
    let token = || async {
        store
            .open_session(kind::CEC, TENANT, "u1")
            .await
            .unwrap()
            .unwrap()
            .token
    };
    assert_eq!(token().await.as_deref(), Some("tok-1"));
    store.set_session_token(&s, Some("tok-2")).await.unwrap();
    assert_eq!(token().await.as_deref(), Some("tok-2"));
    store.set_session_token(&s, None).await.unwrap();
    assert_eq!(token().await, None);
    let err = store
        .set_session_token(&ghost("nope"), Some("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    // Never in Debug output.
    let shown = format!(
        "{:?}",
        Session {
            token: Some("secret-tok".into()),
            ..s
        }
    );
    assert!(!shown.contains("secret-tok"), "{shown}");
}

async fn timestamps_round_trip_at_microsecond_precision(db: Db) {
    let store = &db.store;
    // Nanoseconds, a non-UTC offset, before 1970 and before 2000 (PostgreSQL's epoch).
    let times = [
        datetime!(2025-06-01 14:00:00.123456789 +02:00),
        datetime!(1969-12-31 23:59:59.9999995 UTC),
        datetime!(1999-12-31 23:59:59.000001999 UTC),
        datetime!(2000-01-01 00:00:00 UTC),
    ];
    for (i, t) in times.into_iter().enumerate() {
        let user = format!("t{i}");
        let mut s = session(&user, SessionState::Active, t);
        s.last_activity_at = t + time::Duration::nanoseconds(1);
        store.commit(open(&s)).await.unwrap();
        let got = store
            .open_session(kind::CEC, TENANT, &user)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.opened_at, to_store_precision(t));
        assert_eq!(got.opened_at.offset(), time::UtcOffset::UTC);
        assert_eq!(got.last_activity_at, to_store_precision(s.last_activity_at));
        assert_eq!(
            got.opened_at.unix_timestamp_nanos() % 1_000,
            0,
            "microseconds: {t}"
        );
        store
            .commit(downs(vec![down(&user, None, "x", t)]))
            .await
            .unwrap();
        assert_eq!(
            transcript(store, &user).await[0].created_at,
            to_store_precision(t)
        );
    }
    // Rounded down, never up.
    assert_eq!(
        to_store_precision(datetime!(1969-12-31 23:59:59.9999995 UTC)),
        datetime!(1969-12-31 23:59:59.999999 UTC)
    );
}

async fn concurrent_writers_all_commit(db: Db) {
    // Every write transaction takes the write lock up front (SQLite) or runs in parallel
    // (PostgreSQL): none may fail for being concurrent.
    const TASKS: usize = 8;
    const COMMITS: usize = 25;
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let store = db.store.clone();
        handles.push(tokio::spawn(async move {
            let user = format!("w{task}");
            let s = session(&user, SessionState::Active, at(0));
            store.commit(open(&s)).await.unwrap();
            for i in 0..COMMITS {
                let mut d = down(&user, Some(&format!("c{i}")), "x", at(i as i64));
                d.row.session_id = Some(s.id.clone());
                let ev = event(&user, "poll", at(i as i64));
                store
                    .commit(Commit {
                        down: vec![d],
                        events: vec![ev],
                        touch: vec![(s.id.clone(), at(i as i64))],
                        ..Commit::default()
                    })
                    .await
                    .unwrap();
                // Readers run alongside.
                store.outbox_stats().await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.expect("writer task");
    }
    assert_eq!(
        store_outbox_len(&db.store).await,
        (TASKS * COMMITS * 2) as i64
    );
    for task in 0..TASKS {
        assert_eq!(
            transcript(&db.store, &format!("w{task}")).await.len(),
            COMMITS
        );
    }
}

/// A group-commit store of its own on `db`'s database, to count its batches.
async fn group_on(db: &Db) -> Store {
    Store::new(backend_of(db).await, Options::default()).unwrap()
}

/// The backend alone (no group commit in front), to hand it a batch of writes.
async fn backend_of(db: &Db) -> Arc<dyn Backend> {
    if db.url.starts_with("sqlite:") {
        Arc::new(crate::sqlite::SqliteStore::connect(&db.url).await.unwrap())
    } else {
        Arc::new(crate::postgres::PgStore::connect(&db.url).await.unwrap())
    }
}

async fn the_commits_of_one_batch_are_applied_together_and_answered_apart(db: Db) {
    let backend = backend_of(&db).await;
    let s = session("u1", SessionState::Active, at(0));
    db.store.commit(open(&s)).await.unwrap();
    let in_s = |mut d: DownRecord| {
        d.row.session_id = Some(s.id.clone());
        d
    };
    let d1 = in_s(down("u1", Some("c1"), "one", at(1)));
    let d1_again = in_s(down("u1", Some("c1"), "one again", at(2)));
    let d2 = in_s(down("u1", Some("c2"), "two", at(3)));
    let (ea, eb, ec) = (
        event("u1", "a", at(1)),
        event("u1", "b", at(2)),
        event("u2", "c", at(3)),
    );
    let sent = MessageRow {
        status: MessageStatus::Sent,
        ..up_row("u2", "m-10", at(3))
    };
    let mut writes = vec![
        Write::Commit(Commit {
            down: vec![d1.clone()],
            events: vec![ea.clone()],
            touch: vec![(s.id.clone(), at(50))],
            ..Commit::default()
        }),
        Write::BeginUp(up_row("u3", "m-9", at(4))),
        Write::Commit(Commit {
            down: vec![d1_again, d2.clone()],
            events: vec![eb.clone()],
            touch: vec![(s.id.clone(), at(90)), (s.id.clone(), at(70))],
            ..Commit::default()
        }),
        Write::OutboxDone(vec![]),
        Write::Commit(Commit {
            up_row: Some(sent.clone()),
            events: vec![ec.clone()],
            ..Commit::default()
        }),
    ];
    let done = backend.write_batch(&mut writes).await.unwrap();
    let committed = |inserted: &[&DownRecord], duplicate_down, outboxed| {
        Written::Committed(Committed {
            inserted_down: inserted.iter().map(|d| d.row.relay_id.clone()).collect(),
            duplicate_down,
            outboxed,
            set_aside: Vec::new(),
        })
    };
    assert_eq!(
        done,
        vec![
            committed(&[&d1], 0, 2),
            Written::Begun(UpBegin::New),
            committed(&[&d2], 1, 2),
            Written::Done,
            committed(&[], 0, 1),
        ]
    );
    // Each commit's downs before its events, each kind in commit order.
    let outbox = outbox_ids(&db.store).await;
    let pos = |id: &str| outbox.iter().position(|o| o == id).unwrap();
    assert_eq!(outbox.len(), 5, "{outbox:?}");
    let (p1, p2) = (pos(&d1.row.relay_id), pos(&d2.row.relay_id));
    let (pa, pb, pc) = (pos(&ea.relay_id), pos(&eb.relay_id), pos(&ec.relay_id));
    assert!(
        p1 < pa && p2 < pb && p1 < p2 && pa < pb && pb < pc,
        "{outbox:?}"
    );
    // The latest touch of the batch wins.
    let open_now = db
        .store
        .open_session(kind::CEC, TENANT, "u1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(open_now.last_activity_at, at(90));
    assert_eq!(transcript(&db.store, "u1").await.len(), 2);
    let lookup = db.store.up_lookup(kind::CEC, TENANT, "u2", "m-10").await;
    assert_eq!(lookup.unwrap().status, Some(MessageStatus::Sent));

    // One commit touching a session that does not exist fails the batch, which leaves nothing.
    let mut writes = vec![
        Write::Commit(Commit {
            events: vec![event("u1", "d", at(5))],
            touch: vec![(s.id.clone(), at(99))],
            ..Commit::default()
        }),
        Write::Commit(Commit {
            touch: vec![("no-such-session".to_owned(), at(5))],
            ..Commit::default()
        }),
    ];
    let err = backend.write_batch(&mut writes).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert_eq!(outbox_ids(&db.store).await.len(), 5);
    backend.close().await;
}

async fn many_writers_share_transactions_and_a_bad_write_fails_alone(db: Db) {
    const WRITERS: usize = 300;
    const BAD: usize = 137;
    let group = group_on(&db).await;
    let store: DynStore = group.clone();
    let start = Arc::new(tokio::sync::Barrier::new(WRITERS));
    let mut handles = Vec::new();
    for i in 0..WRITERS {
        let (store, start) = (store.clone(), start.clone());
        handles.push(tokio::spawn(async move {
            start.wait().await;
            let user = format!("g{i}");
            let d = down(&user, Some(&format!("c{i}")), "x", at(i as i64));
            let mut commit = Commit {
                down: vec![d],
                events: vec![event(&user, "poll", at(i as i64))],
                ..Commit::default()
            };
            if i == BAD {
                // Names a session that does not exist: a bug in the caller, refused for good.
                commit.sessions.push(SessionChange::SetState {
                    id: "no-such-session".into(),
                    state: SessionState::Active,
                });
            }
            let begun = store
                .begin_up(&up_row(&user, &format!("m{i}"), at(0)))
                .await;
            (store.commit(commit).await, begun)
        }));
    }
    for (i, h) in handles.into_iter().enumerate() {
        let (committed, begun) = h.await.expect("writer task");
        assert_eq!(begun.unwrap(), UpBegin::New, "writer {i}");
        match committed {
            Ok(c) => {
                assert_ne!(i, BAD, "the bad write was taken");
                assert_eq!(c.inserted_down.len(), 1, "writer {i}");
            }
            Err(e) => {
                assert_eq!(i, BAD, "writer {i} failed: {e}");
                assert!(!e.is_retryable(), "{e:?}");
            }
        }
    }
    for i in 0..WRITERS {
        let rows = transcript(&store, &format!("g{i}")).await;
        // The up row, and the down unless it was the bad write's (rolled back with it).
        assert_eq!(rows.len(), if i == BAD { 1 } else { 2 }, "writer {i}");
    }
    assert_eq!(
        store_outbox_len(&store).await,
        ((WRITERS - 1) * 2) as i64,
        "every good write's down and event, nothing of the bad one"
    );
    // 2 × 300 writes, queued all at once: they shared transactions (and the bad write's batch
    // was applied again one by one, which the count leaves out).
    assert!(
        group.batches() < (WRITERS as u64) / 2,
        "{} batches for {} writes",
        group.batches(),
        2 * WRITERS
    );
}

async fn every_kind_of_write_goes_through_group_commit(db: Db) {
    let group = group_on(&db).await;
    let s = session("kinds", SessionState::Active, at(0));
    group.commit(open(&s)).await.unwrap();
    group.set_session_token(&s, Some("tok")).await.unwrap();
    assert!(
        group
            .set_session_token(&ghost("no-such-session"), Some("tok"))
            .await
            .is_err()
    );
    assert_eq!(
        group.begin_up(&up_row("kinds", "m1", at(1))).await.unwrap(),
        UpBegin::New
    );
    group
        .commit(downs(vec![down("kinds", None, "x", at(2))]))
        .await
        .unwrap();
    let seqs: Vec<i64> = group
        .outbox_pending(10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs.len(), 1);
    group.outbox_done(&seqs).await.unwrap();
    assert_eq!(store_outbox_len(&db.store).await, 0);
    // Each write above was alone in the queue: one batch each, the failed one included.
    assert_eq!(group.batches(), 6);
    let stored = db
        .store
        .open_session(kind::CEC, TENANT, "kinds")
        .await
        .unwrap();
    assert_eq!(stored.and_then(|s| s.token).as_deref(), Some("tok"));
}

async fn store_outbox_len(store: &DynStore) -> i64 {
    store.outbox_stats().await.unwrap().pending
}

async fn concurrent_begin_up_of_one_message_is_new_once(db: Db) {
    let mut handles = Vec::new();
    for _ in 0..8 {
        let store = db.store.clone();
        handles.push(tokio::spawn(async move {
            store.begin_up(&up_row("u1", "m-1", at(0))).await.unwrap()
        }));
    }
    let mut seen = Vec::new();
    for h in handles {
        seen.push(h.await.unwrap());
    }
    assert_eq!(
        seen.iter().filter(|b| **b == UpBegin::New).count(),
        1,
        "{seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|b| **b == UpBegin::Pending).count(),
        7,
        "{seen:?}"
    );
    assert_eq!(transcript(&db.store, "u1").await.len(), 1);
}

/// Hundreds of lookups at once (on SQLite they share statements, see `sqlite::lookup`): each
/// gets its own message's status and its own user's session.
async fn concurrent_up_lookups_each_get_their_own_answer(db: Db) {
    let mut sessions = std::collections::HashMap::new();
    for u in (0..10).step_by(2) {
        let user = format!("u{u}");
        let s = session(&user, SessionState::Active, at(0));
        db.store.commit(open(&s)).await.unwrap();
        sessions.insert(user, s.id);
    }
    for u in 0..10 {
        for m in (0..20).step_by(2) {
            let row = up_row(&format!("u{u}"), &format!("m-{m}"), at(1));
            assert_eq!(db.store.begin_up(&row).await.unwrap(), UpBegin::New);
        }
    }
    let mut handles = Vec::new();
    for i in 0..400 {
        let store = db.store.clone();
        let (user, message) = (format!("u{}", i % 10), format!("m-{}", i % 20));
        handles.push(tokio::spawn(async move {
            let found = store
                .up_lookup(kind::CEC, TENANT, &user, &message)
                .await
                .unwrap();
            (i, user, found)
        }));
    }
    for h in handles {
        let (i, user, found) = h.await.unwrap();
        let want_status = (i % 20 % 2 == 0).then_some(MessageStatus::Pending);
        assert_eq!(found.status, want_status, "lookup {i}");
        assert_eq!(
            found.session.map(|s| (s.user_id, s.id)),
            sessions.get(&user).map(|id| (user.clone(), id.clone())),
            "lookup {i}"
        );
    }
}

async fn a_closed_store_fails_with_retryable_errors(db: Db) {
    let store = db.reopen().await;
    store.ping().await.expect("ping");
    store.close().await;
    let err = store.ping().await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.is_retryable(), "{err:?}");
    let err = store
        .commit(downs(vec![down("u1", None, "x", at(0))]))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    let err = store.open_sessions().await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    // The other handle is unaffected.
    db.store.ping().await.expect("other handle");
}

// ---------------------------------------------------------------------------------------------
// Not about a particular database

#[tokio::test]
async fn a_write_whose_caller_gave_up_before_its_batch_is_not_applied() {
    let (_dir, url) = sqlite_file_url("store.db");
    let store = connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    // The writer runs on a thread of its own, so the test keeps it busy instead of relying on
    // scheduling: another connection holds the write lock, and the writer waits on it with a
    // first write ("blocker") while the second ("quitter") is queued behind it and dropped.
    let other = crate::sqlite::SqliteStore::connect(&url).await.unwrap();
    let held = other.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
    let blocker = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .commit(downs(vec![down("blocker", None, "b", at(0))]))
                .await
        })
    };
    // Long enough for the writer to take the blocker's batch and wait for the lock (5 s).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!blocker.is_finished(), "the blocker must wait for the lock");
    let mut given_up = Box::pin(store.commit(downs(vec![down("quitter", None, "x", at(0))])));
    assert!(futures::poll!(&mut given_up).is_pending());
    drop(given_up);
    held.rollback().await.unwrap();
    blocker
        .await
        .unwrap()
        .expect("the blocker commits once the lock is free");
    store
        .commit(downs(vec![down("stayer", None, "y", at(1))]))
        .await
        .unwrap();
    assert!(transcript(&store, "quitter").await.is_empty());
    assert_eq!(transcript(&store, "stayer").await.len(), 1);
    assert_eq!(transcript(&store, "blocker").await.len(), 1);
    other.close().await;
}

#[test]
fn a_write_names_the_user_whose_rows_it_writes() {
    let s = session("u7", SessionState::Active, at(0));
    assert_eq!(Write::Commit(open(&s)).user(), Some((TENANT, "u7")));
    assert_eq!(
        Write::BeginUp(up_row("u8", "m", at(0))).user(),
        Some((TENANT, "u8"))
    );
    let only_events = Commit {
        events: vec![event("u9", "poll", at(0))],
        ..Commit::default()
    };
    assert_eq!(Write::Commit(only_events).user(), Some((TENANT, "u9")));
    // The up outcome comes first, whatever else the commit holds.
    let mut mixed = downs(vec![down("u2", None, "x", at(0))]);
    mixed.up = Some(UpOutcome {
        kind: kind::CEC.into(),
        tenant: TENANT.into(),
        user_id: "u1".into(),
        message_id: "m".into(),
        status: MessageStatus::Sent,
        session_id: None,
        result_code: None,
        result_desc: None,
    });
    assert_eq!(Write::Commit(mixed).user(), Some((TENANT, "u1")));
    assert_eq!(
        Write::session_token(&ghost("g"), Some("t")).user(),
        Some((TENANT, "ghost"))
    );
    assert_eq!(Write::OutboxDone(vec![1]).user(), None);
    assert_eq!(Write::Commit(Commit::default()).user(), None);
}

#[test]
fn store_precision_is_whole_microseconds_rounded_down() {
    let t = datetime!(2025-01-02 03:04:05.678901999 +08:00);
    let kept = to_store_precision(t);
    assert_eq!(kept, datetime!(2025-01-01 19:04:05.678901 UTC));
    assert_eq!(kept.offset(), time::UtcOffset::UTC);
    assert_eq!(unix_micros(kept), unix_micros(t));
    assert_eq!(from_unix_micros(unix_micros(t)).unwrap(), kept);
    assert_eq!(unix_micros(datetime!(1969-12-31 23:59:59.9999999 UTC)), -1);
}

#[tokio::test]
async fn connect_refuses_other_schemes() {
    for url in ["mysql://u:pw@h/db", "ccrelay.db", ""] {
        let err = connect(url).await.err().expect("refused");
        assert!(
            matches!(err, StoreError::UnsupportedUrl(_)),
            "{url}: {err:?}"
        );
        assert!(!err.to_string().contains("pw@"), "password shown: {err}");
    }
}

#[tokio::test]
async fn in_memory_sqlite_keeps_its_data_between_calls() {
    let store = connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let s = session("u1", SessionState::Active, at(0));
    store.commit(open(&s)).await.unwrap();
    store
        .commit(downs(vec![down("u1", Some("c"), "x", at(1))]))
        .await
        .unwrap();
    assert_eq!(store.open_sessions().await.unwrap(), vec![s]);
    assert_eq!(store.outbox_stats().await.unwrap().pending, 1);
    // Another in-memory store is another database.
    let other = connect("sqlite::memory:").await.unwrap();
    other.migrate().await.unwrap();
    assert!(other.open_sessions().await.unwrap().is_empty());
}

#[tokio::test]
async fn connect_takes_both_postgres_schemes() {
    let Some(admin_url) = pg_admin_url().await else {
        eprintln!("CCRELAY_TEST_PG_URL=skip: PostgreSQL test SKIPPED");
        return;
    };
    let rest = admin_url
        .split_once("://")
        .map(|(_, rest)| rest)
        .expect("admin url with a scheme");
    for scheme in ["postgres", "postgresql"] {
        let store = connect(&format!("{scheme}://{rest}"))
            .await
            .unwrap_or_else(|e| panic!("{scheme}: {e}"));
        store.ping().await.unwrap();
        store.close().await;
    }
}

#[tokio::test]
async fn an_unreachable_postgres_is_unavailable() {
    // Port 1 on localhost: nothing listens, the connection is refused.
    let err = connect("postgres://ccrelay:pw@127.0.0.1:1/ccrelay")
        .await
        .err()
        .expect("no server");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.is_retryable());
}

/// A SQLite database file `name` in a fresh temporary directory (kept while the guard lives).
fn sqlite_file_url(name: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join(name).display());
    (dir, url)
}

#[tokio::test]
async fn a_sqlite_file_database_is_durable_and_in_wal_mode() {
    let (_dir, url) = sqlite_file_url("d.db");
    let store = crate::sqlite::SqliteStore::connect(&url).await.unwrap();
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(journal, "wal");
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(synchronous, 2, "FULL");
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(fk, 1);
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(busy, 5_000);
    // The batch writer's own connection too: it is the one whose commits must reach the disk.
    assert_eq!(
        store.writer_pragma("synchronous").unwrap(),
        2,
        "FULL on the writer"
    );
    assert_eq!(store.writer_pragma("foreign_keys").unwrap(), 1);
    assert_eq!(store.writer_pragma("busy_timeout").unwrap(), 5_000);
    assert_eq!(store.writer_pragma("temp_store").unwrap(), 2, "MEMORY");
    store.close().await;
}

#[tokio::test]
async fn migration_0005_leaves_the_per_user_indexes_and_drops_the_session_ones() {
    let (_dir, url) = sqlite_file_url("i.db");
    let store = crate::sqlite::SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let indexes: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name")
            .fetch_all(store.pool())
            .await
            .unwrap();
    for kept in [
        "messages_user",
        "messages_up_key",
        "events_user",
        "messages_created",
    ] {
        assert!(
            indexes.iter().any(|i| i == kept),
            "{kept} missing: {indexes:?}"
        );
    }
    for dropped in ["messages_session", "events_session"] {
        assert!(
            !indexes.iter().any(|i| i == dropped),
            "{dropped} still there"
        );
    }
    // A session's transcript is read through the user's index (docs/STORAGE.md).
    let plan: Vec<String> = sqlx::query(
        "EXPLAIN QUERY PLAN SELECT * FROM messages \
         WHERE kind = 'cec' AND tenant = 't' AND user_id = 'u' AND session_id = 's' \
         ORDER BY created_at, id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| sqlx::Row::get::<String, _>(r, "detail"))
    .collect();
    assert!(
        plan.iter().any(|d| d.contains("messages_user")),
        "plan: {plan:?}"
    );
    store.close().await;
}

#[tokio::test]
async fn a_sqlite_commit_waits_for_another_writer_instead_of_failing() {
    let (_dir, url) = sqlite_file_url("w.db");
    let store = connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    // Another process (here: another pool) holds the write lock for a while.
    let other = crate::sqlite::SqliteStore::connect(&url).await.unwrap();
    let mut held = other.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query(
        "INSERT INTO outbox (msg_id, subject, payload, created_at) VALUES ('x', 's', x'00', 0)",
    )
    .execute(&mut *held)
    .await
    .unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .commit(downs(vec![down("u1", Some("c1"), "x", at(0))]))
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!writer.is_finished(), "the commit must wait for the lock");
    held.commit().await.unwrap();
    let done = writer
        .await
        .unwrap()
        .expect("commit after the lock was released");
    assert_eq!(done.inserted_down.len(), 1);
    assert_eq!(store.outbox_stats().await.unwrap().pending, 2);
    other.close().await;
    store.close().await;
}

// ---------------------------------------------------------------------------------------------
// Media coming down: files and held outbox rows

fn pending_file_of(d: &DownRecord, session_id: &str, file_id: &str) -> FileRow {
    FileRow {
        relay_id: d.row.relay_id.clone(),
        kind: kind::CEC.to_owned(),
        tenant: TENANT.to_owned(),
        user_id: d.row.user_id.clone(),
        session_id: Some(session_id.to_owned()),
        media_type: "IMAGE".to_owned(),
        file_id: file_id.to_owned(),
        file_type: "jpg".to_owned(),
        status: FileStatus::Pending,
        size: None,
        sha256: None,
        bucket: None,
        object: None,
        attempts: 0,
        error_code: None,
        error_message: None,
        created_at: d.row.created_at,
        updated_at: d.row.created_at,
    }
}

fn in_session(mut d: DownRecord, s: &Session) -> DownRecord {
    d.row.session_id = Some(s.id.clone());
    d
}

async fn a_held_down_holds_back_its_subject_until_its_file_is_finished(db: Db) {
    let store = &db.store;
    let s1 = session("u1", SessionState::Active, at(0));
    let s2 = session("u2", SessionState::Active, at(0));
    store.commit(open(&s1)).await.unwrap();
    store.commit(open(&s2)).await.unwrap();
    let before = in_session(down("u1", None, "before", at(1)), &s1);
    let image = in_session(down("u1", None, "file-1", at(2)), &s1);
    let after = in_session(down("u1", None, "after", at(3)), &s1);
    let other = in_session(down("u2", None, "other user", at(3)), &s2);
    let ev = event("u1", "session.queued", at(3));
    let file = pending_file_of(&image, &s1.id, "file-1");
    store
        .commit(Commit {
            down: vec![before.clone(), image.clone(), after.clone(), other.clone()],
            events: vec![ev.clone()],
            files: vec![file.clone()],
            ..Commit::default()
        })
        .await
        .unwrap();
    let later = in_session(down("u1", None, "later", at(4)), &s1);
    store.commit(downs(vec![later.clone()])).await.unwrap();

    // The held row and every later row of its subject wait; other subjects do not.
    assert_eq!(
        outbox_ids(store).await,
        vec![
            before.row.relay_id.clone(),
            other.row.relay_id.clone(),
            ev.relay_id.clone()
        ]
    );
    assert_eq!(store.outbox_stats().await.unwrap().pending, 6);
    let pending = store.pending_files(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].file, file);
    assert_eq!(pending[0].payload, image.publish.payload);
    assert_eq!(
        store.files(kind::CEC, TENANT, "u1").await.unwrap(),
        vec![file.clone()]
    );

    store
        .file_attempt_failed(&image.row.relay_id, 1, "503", "busy")
        .await
        .unwrap();
    let retried = store.pending_files(10).await.unwrap();
    assert_eq!(retried[0].file.attempts, 1);
    assert_eq!(retried[0].file.error_code.as_deref(), Some("503"));
    assert_eq!(retried[0].file.error_message.as_deref(), Some("busy"));
    assert!(retried[0].file.updated_at > file.updated_at);
    assert_eq!(outbox_ids(store).await.len(), 3, "still held");

    let body = json!({"id": image.row.relay_id, "content": "file-1",
        "file": {"bucket": "B", "object": "acme/u1/x", "size": 3, "sha256": "abc"}})
    .to_string();
    let done = FileDone {
        relay_id: image.row.relay_id.clone(),
        status: FileStatus::Stored,
        size: Some(3),
        sha256: Some("abc".to_owned()),
        bucket: Some("B".to_owned()),
        object: Some("acme/u1/x".to_owned()),
        attempts: 2,
        error_code: None,
        error_message: None,
        payload: body.clone(),
        at: at(10),
    };
    assert!(store.finish_file(&done).await.unwrap());
    assert!(store.pending_files(10).await.unwrap().is_empty());
    let rows = store.outbox_pending(10).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.msg_id.clone()).collect::<Vec<_>>(),
        vec![
            before.row.relay_id.clone(),
            image.row.relay_id.clone(),
            after.row.relay_id.clone(),
            other.row.relay_id.clone(),
            ev.relay_id.clone(),
            later.row.relay_id.clone()
        ],
        "released, in commit order"
    );
    assert_eq!(rows[1].payload, body.as_bytes(), "published with `file`");
    let t = transcript(store, "u1").await;
    let row = t.iter().find(|m| m.relay_id == image.row.relay_id).unwrap();
    assert!(
        same_json(&row.body, &body),
        "the transcript keeps the same body"
    );
    let stored = store.files(kind::CEC, TENANT, "u1").await.unwrap();
    assert_eq!(stored.len(), 1);
    let f = &stored[0];
    assert_eq!(f.status, FileStatus::Stored);
    assert_eq!(
        (
            f.size,
            f.sha256.as_deref(),
            f.bucket.as_deref(),
            f.object.as_deref()
        ),
        (Some(3), Some("abc"), Some("B"), Some("acme/u1/x"))
    );
    assert_eq!((f.attempts, f.updated_at), (2, at(10)));
    assert_eq!(
        (f.file_id.as_str(), f.file_type.as_str()),
        ("file-1", "jpg")
    );

    // Finishing twice changes nothing.
    let mut again = done.clone();
    again.payload = "{}".to_owned();
    assert!(!store.finish_file(&again).await.unwrap());
    assert_eq!(
        store.outbox_pending(10).await.unwrap()[1].payload,
        body.as_bytes()
    );
    let mut pending_again = done;
    pending_again.status = FileStatus::Pending;
    assert!(
        !store
            .finish_file(&pending_again)
            .await
            .unwrap_err()
            .is_retryable()
    );
}

async fn a_failed_file_releases_its_down_and_records_the_error(db: Db) {
    let store = &db.store;
    let s = session("u1", SessionState::Active, at(0));
    store.commit(open(&s)).await.unwrap();
    let image = in_session(down("u1", None, "file-9", at(1)), &s);
    let next = in_session(down("u1", None, "next", at(2)), &s);
    store
        .commit(Commit {
            down: vec![image.clone(), next.clone()],
            files: vec![pending_file_of(&image, &s.id, "file-9")],
            ..Commit::default()
        })
        .await
        .unwrap();
    assert!(outbox_ids(store).await.is_empty());
    let body = json!({"id": image.row.relay_id,
        "fileError": {"code": "13", "message": "IOException"}})
    .to_string();
    let done = FileDone {
        relay_id: image.row.relay_id.clone(),
        status: FileStatus::Failed,
        size: None,
        sha256: None,
        bucket: None,
        object: None,
        attempts: 5,
        error_code: Some("13".to_owned()),
        error_message: Some("IOException".to_owned()),
        payload: body.clone(),
        at: at(5),
    };
    assert!(store.finish_file(&done).await.unwrap());
    assert_eq!(
        outbox_ids(store).await,
        vec![image.row.relay_id.clone(), next.row.relay_id.clone()]
    );
    let f = &store.files(kind::CEC, TENANT, "u1").await.unwrap()[0];
    assert_eq!(f.status, FileStatus::Failed);
    assert_eq!(f.attempts, 5);
    assert_eq!(f.error_code.as_deref(), Some("13"));
    assert_eq!(f.size, None);
    assert!(store.pending_files(10).await.unwrap().is_empty());
}

async fn files_follow_their_downs_and_are_refused_without_one(db: Db) {
    let store = &db.store;
    let s = session("u1", SessionState::Active, at(0));
    store.commit(open(&s)).await.unwrap();
    let first = in_session(down("u1", Some("code-1"), "file-1", at(1)), &s);
    store.commit(downs(vec![first.clone()])).await.unwrap();
    // The upstream returns the same message again: its file is skipped with it.
    let dup = in_session(down("u1", Some("code-1"), "file-1", at(2)), &s);
    let done = store
        .commit(Commit {
            down: vec![dup.clone()],
            files: vec![pending_file_of(&dup, &s.id, "file-1")],
            ..Commit::default()
        })
        .await
        .unwrap();
    assert_eq!(done.duplicate_down, 1);
    assert!(
        store
            .files(kind::CEC, TENANT, "u1")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(outbox_ids(store).await, vec![first.row.relay_id.clone()]);

    // A file whose down is not in the commit is a caller's bug: nothing of the commit is kept.
    let lone = in_session(down("u1", None, "file-2", at(3)), &s);
    let other = in_session(down("u1", None, "text", at(3)), &s);
    let err = store
        .commit(Commit {
            down: vec![other.clone()],
            files: vec![pending_file_of(&lone, &s.id, "file-2")],
            ..Commit::default()
        })
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(transcript(store, "u1").await.len(), 1);
    assert!(
        store
            .files(kind::CEC, TENANT, "u1")
            .await
            .unwrap()
            .is_empty()
    );
}

// ---------------------------------------------------------------------------------------------
// Rough throughput, not part of the contract: `cargo test --release --lib store::tests::bench --
// --ignored --nocapture`. Batches of 100 downlink messages (each with a message code and a
// session), one touch per commit, as the poller commits them.

async fn downlink_throughput(db: Db) {
    const BATCH: usize = 100;
    const BATCHES: usize = 200;
    let s = session("bench", SessionState::Active, at(0));
    db.store.commit(open(&s)).await.unwrap();
    let commits: Vec<Commit> = (0..BATCHES)
        .map(|b| Commit {
            down: (0..BATCH)
                .map(|i| {
                    let mut d = down(
                        "bench",
                        Some(&format!("code-{b}-{i}")),
                        "a typical agent reply",
                        at((b * BATCH + i) as i64),
                    );
                    d.row.session_id = Some(s.id.clone());
                    d
                })
                .collect(),
            touch: vec![(s.id.clone(), at((b * BATCH) as i64))],
            ..Commit::default()
        })
        .collect();
    let started = std::time::Instant::now();
    for commit in commits {
        let done = db.store.commit(commit).await.unwrap();
        assert_eq!(done.inserted_down.len(), BATCH);
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{}: {} downlink messages in {secs:.2}s = {:.0}/s",
        db.url.split(':').next().unwrap_or("?"),
        BATCH * BATCHES,
        (BATCH * BATCHES) as f64 / secs
    );
    assert_eq!(store_outbox_len(&db.store).await, (BATCH * BATCHES) as i64);
}

#[tokio::test]
#[ignore = "benchmark"]
async fn bench_downlink_sqlite() {
    on_sqlite(downlink_throughput).await;
}

#[tokio::test]
#[ignore = "benchmark"]
async fn bench_downlink_postgres() {
    on_postgres(downlink_throughput).await;
}

/// A NUL in what the upstream or a customer sent must not fail the commit for good (PostgreSQL's
/// text and jsonb refuse it; it is stored there as U+FFFD). The outbox payload is kept exactly.
async fn text_with_nul_characters_is_stored(db: Db) {
    let store = &db.store;
    let s = session("nul", SessionState::Active, at(0));
    store.commit(open(&s)).await.unwrap();
    let d = down("nul", Some("c-nul"), "a\u{0}b", at(1));
    let payload = d.publish.payload.clone();
    let mut ev = event("nul", "up.result", at(2));
    ev.body = json!({"type": "up.result", "resultDesc": "x\u{0}"}).to_string();
    let commit = Commit {
        down: vec![d],
        events: vec![ev],
        ..Default::default()
    };
    store.commit(commit).await.unwrap();
    let mut up = up_row("nul", "m-nul", at(3));
    up.content = Some("c\u{0}".into());
    up.body = json!({"content": "c\u{0}"}).to_string();
    assert_eq!(store.begin_up(&up).await.unwrap(), UpBegin::New);

    let rows = transcript(store, "nul").await;
    assert_eq!(rows.len(), 2);
    let content = rows[0].content.as_deref().unwrap();
    assert!(
        content == "a\u{0}b" || content == "a\u{FFFD}b",
        "{content:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&rows[0].body).unwrap();
    assert!(body["content"] == "a\u{0}b" || body["content"] == "a\u{FFFD}b");
    assert_eq!(store.outbox_pending(10).await.unwrap()[0].payload, payload);
}

/// Export paging: every row of the range once, in (created_at, relay_id) order, even when more
/// rows than a page share one timestamp; rows outside the range or of another tenant left out.
async fn transcript_pages_follow_the_transcript_order(db: Db) {
    let store = &db.store;
    let mut records = Vec::new();
    for i in 0..25 {
        // Ties on created_at in the middle: insertion order breaks them, as in the transcript.
        let t = if (10..15).contains(&i) {
            at(100)
        } else {
            at(i)
        };
        records.push(down("pg", None, &format!("m{i}"), t));
    }
    records.push(down("other", None, "not theirs", at(3)));
    store.commit(downs(records)).await.unwrap();
    let whole = transcript(store, "pg").await;
    assert_eq!(whole.len(), 25);
    let mut after: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let page = store
            .transcript_page(kind::CEC, TENANT, "pg", after.as_deref(), 7)
            .await
            .unwrap()
            .expect("a known cursor");
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        after = Some(last.relay_id.clone());
        seen.extend(page);
    }
    let ids = |rows: &[MessageRow]| rows.iter().map(|r| r.relay_id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&seen),
        ids(&whole),
        "the pages are the transcript, once, in order"
    );
    // A cursor from another user's transcript, or none at all, names no row of this one.
    let theirs = transcript(store, "other").await;
    for bad in [theirs[0].relay_id.as_str(), "no-such-row"] {
        let page = store
            .transcript_page(kind::CEC, TENANT, "pg", Some(bad), 7)
            .await
            .unwrap();
        assert!(page.is_none(), "{bad}");
    }
}

async fn export_pages_cover_a_range_once_in_order(db: Db) {
    let store = &db.store;
    let mut records = Vec::new();
    let mut evs = Vec::new();
    let mut sats = Vec::new();
    let mut offline_rows = Vec::new();
    for i in 0..250 {
        // 200 rows at one instant (ties broken by insertion order), then one row per second.
        let t = if i < 200 { at(10) } else { at(10 + i) };
        let user = format!("p{}", i % 7);
        records.push(down(&user, None, &format!("m{i}"), t));
        evs.push(event(&user, "session.queued", t));
        sats.push(satisfaction(&user, SatisfactionSource::Customer, "4", t));
        offline_rows.push(offline(&user, OfflineSource::LeaveMessage, None, "call", t));
    }
    records.push(down("early", None, "before", at(1)));
    records.push(down("late", None, "after", at(10_000)));
    evs.push(event("late", "session.closed", at(5_000)));
    let mut other = down("x", None, "other tenant", at(20));
    other.row.tenant = "beta".into();
    records.push(other);
    let mut other = event("x", "error", at(20));
    other.tenant = None;
    evs.push(other);
    let mut other = satisfaction("x", SatisfactionSource::Robot, "0", at(20));
    other.tenant = "beta".into();
    sats.push(other);
    let mut other = offline("x", OfflineSource::Offline, Some("o"), "later", at(20));
    other.tenant = "beta".into();
    offline_rows.push(other);
    store.commit(downs(records)).await.unwrap();
    // In several commits, so that insertion order and time order differ for the ties.
    for chunk in evs.chunks(100).rev() {
        store
            .commit(Commit {
                events: chunk.to_vec(),
                satisfactions: sats.drain(..sats.len().min(100)).collect(),
                offline: offline_rows.drain(..offline_rows.len().min(100)).collect(),
                ..Commit::default()
            })
            .await
            .unwrap();
    }
    store
        .commit(Commit {
            satisfactions: sats,
            offline: offline_rows,
            ..Commit::default()
        })
        .await
        .unwrap();

    /// Every row of `since..until` (of `tenant`), page by page of `limit`, with its key.
    async fn all<T, F>(
        read: impl Fn(ExportPage) -> F,
        tenant: Option<&str>,
        limit: i64,
    ) -> Vec<Keyed<T>>
    where
        F: Future<Output = Result<Vec<Keyed<T>>>>,
    {
        let mut page = ExportPage::first(at(5), at(5_000), tenant.map(str::to_owned), limit);
        let mut seen = Vec::new();
        loop {
            let rows = read(page.clone()).await.unwrap();
            assert!(rows.len() as i64 <= limit);
            let Some(last) = rows.last() else { break };
            page.next(last.key);
            seen.extend(rows);
        }
        let in_order = seen.windows(2).all(|w| w[0].key < w[1].key);
        assert!(in_order, "strictly increasing (created_at, id)");
        seen
    }
    let t = Some(TENANT);
    let messages = all(|p| async move { store.export_messages(&p).await }, t, 64).await;
    assert_eq!(messages.len(), 250, "each row of the range once");
    assert!(messages.iter().all(|m| m.key.at == m.row.created_at));
    assert_eq!(messages[0].row.content.as_deref(), Some("m0"));
    let events = all(|p| async move { store.export_events(&p).await }, t, 64).await;
    assert_eq!(events.len(), 250, "the end of the range is left out");
    // Ties come in insertion order: the second hundred events were committed before the first.
    assert_eq!(events[0].row.relay_id, evs[100].relay_id);
    assert_eq!(events[100].row.relay_id, evs[0].relay_id);
    let sats = all(
        |p| async move { store.export_satisfactions(&p).await },
        t,
        7,
    )
    .await;
    assert_eq!(sats.len(), 250);
    assert_eq!(sats[0].row.score, "4");
    let offline = all(|p| async move { store.export_offline(&p).await }, t, 1_000).await;
    assert_eq!(offline.len(), 250);
    assert_eq!(offline[249].row.created_at, to_store_precision(at(259)));

    // All tenants: the other tenant's rows and the event that names none.
    let messages = all(|p| async move { store.export_messages(&p).await }, None, 64).await;
    assert_eq!(messages.len(), 251);
    let events = all(|p| async move { store.export_events(&p).await }, None, 64).await;
    assert_eq!(events.len(), 251);
    let sats = all(
        |p| async move { store.export_satisfactions(&p).await },
        None,
        64,
    )
    .await;
    assert_eq!(sats.len(), 251);
    let offline = all(|p| async move { store.export_offline(&p).await }, None, 64).await;
    assert_eq!(offline.len(), 251);

    // A page starting at a row's key leaves that row out, and the rows at the same instant
    // before it.
    let page = ExportPage {
        until: at(5_000),
        tenant: None,
        after: messages[100].key,
        limit: 1_000,
    };
    let rest = store.export_messages(&page).await.unwrap();
    assert_eq!(rest.len(), 150);
    assert_eq!(rest[0].row.relay_id, messages[101].row.relay_id);
}

// ---------------------------------------------------------------------------------------------
// Tencent IM: streams and callbacks.

mod tim {
    use super::*;

    contract_tests!(
        tim_streams_are_upserted_with_their_events,
        tim_callbacks_are_stored_with_their_transcript_row,
        a_failing_tim_save_keeps_nothing,
        open_tim_streams_are_listed_until_finished_or_failed,
    );

    async fn open_tim_streams_are_listed_until_finished_or_failed(db: Db) {
        let s = &db.store;
        for (id, t) in [("a", 1), ("b", 2), ("c", 3)] {
            s.tim_stream_save(&stream(id, "u1", at(t)), Commit::default())
                .await
                .unwrap();
        }
        let mut other_app = stream("x", "u1", at(0));
        other_app.app = "other".into();
        s.tim_stream_save(&other_app, Commit::default())
            .await
            .unwrap();
        let mut b = stream("b", "u1", at(2));
        b.finished = true;
        b.status = MessageStatus::Sent;
        s.tim_stream_save(&b, Commit::default()).await.unwrap();
        let mut c = stream("c", "u1", at(3));
        c.status = MessageStatus::Failed;
        s.tim_stream_save(&c, Commit::default()).await.unwrap();
        let open: Vec<String> = s
            .tim_open_streams("shop", 10)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.stream_id)
            .collect();
        assert_eq!(open, ["a"]);
        assert_eq!(s.tim_open_streams("shop", 0).await.unwrap().len(), 0);
    }

    fn stream(stream_id: &str, user: &str, created: OffsetDateTime) -> TimStreamRow {
        TimStreamRow {
            app: "shop".into(),
            user_id: user.into(),
            stream_id: stream_id.into(),
            from_account: Some("@RBT#bot".into()),
            msg_key: None,
            text: String::new(),
            chunks: 0,
            calls: 0,
            last_seq: 0,
            finished: false,
            status: MessageStatus::Pending,
            error_code: None,
            error_info: None,
            created_at: created,
            updated_at: created,
        }
    }

    fn tim_event(user: &str) -> EventRecord {
        let mut e = event(user, "stream.result", at(5));
        e.kind = kind::TIM.into();
        e.tenant = Some("shop".into());
        e.subject = format!("ccrelay.tim.shop.event.{user}");
        e
    }

    async fn tim_streams_are_upserted_with_their_events(db: Db) {
        let s = &db.store;
        let mut row = stream("st1", "u1", at(1));
        s.tim_stream_save(&row, Commit::default()).await.unwrap();
        assert_eq!(
            s.tim_stream("shop", "st1").await.unwrap(),
            Some(row.clone())
        );
        row.msg_key = Some("key-1".into());
        row.text = "hello, world".into();
        row.chunks = 3;
        row.calls = 2;
        row.last_seq = 42;
        row.finished = true;
        row.status = MessageStatus::Sent;
        row.updated_at = at(4);
        let ev = tim_event("u1");
        let done = s
            .tim_stream_save(
                &row,
                Commit {
                    events: vec![ev.clone()],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(done.outboxed, 1);
        assert_eq!(
            s.tim_stream("shop", "st1").await.unwrap(),
            Some(row.clone())
        );
        assert_eq!(s.tim_stream("shop", "nope").await.unwrap(), None);
        s.tim_stream_save(&stream("st2", "u1", at(2)), Commit::default())
            .await
            .unwrap();
        s.tim_stream_save(&stream("st3", "u2", at(3)), Commit::default())
            .await
            .unwrap();
        let ids: Vec<_> = s
            .tim_streams("shop", "u1")
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.stream_id)
            .collect();
        assert_eq!(ids, ["st1", "st2"]);
        let events = s.events(kind::TIM, "shop", "u1").await.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].relay_id, ev.relay_id);
        assert_eq!(events[0].subject, ev.subject);
    }

    async fn tim_callbacks_are_stored_with_their_transcript_row(db: Db) {
        let s = &db.store;
        let robot = TimCallbackRow {
            relay_id: id(),
            app: "shop".into(),
            user_id: Some("u1".into()),
            command: "C2C.CallbackAfterSendMsg".into(),
            body: json!({"From_Account": "@RBT#bot", "To_Account": "u1"}).to_string(),
            published: false,
            created_at: at(1),
        };
        s.tim_callback_save(&robot, Commit::default())
            .await
            .unwrap();
        let mut down = down("u1", None, "hi", at(2));
        down.row.kind = kind::TIM.into();
        down.row.tenant = "shop".into();
        down.row.session_id = None;
        down.publish.subject = "ccrelay.tim.shop.in.u1".into();
        let user = TimCallbackRow {
            relay_id: down.row.relay_id.clone(),
            app: "shop".into(),
            user_id: Some("u1".into()),
            command: "Bot.OnC2CMessage".into(),
            body: json!({"From_Account": "u1", "MsgBody": []}).to_string(),
            published: true,
            created_at: at(2),
        };
        let done = s
            .tim_callback_save(
                &user,
                Commit {
                    down: vec![down.clone()],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(done.outboxed, 1);
        let got = s.tim_callbacks("shop", 10).await.unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].relay_id, robot.relay_id);
        assert!(!got[0].published);
        assert_eq!(got[1].command, "Bot.OnC2CMessage");
        let body: serde_json::Value = serde_json::from_str(&got[1].body).unwrap();
        assert_eq!(body["From_Account"], "u1");
        let transcript = s.transcript(kind::TIM, "shop", "u1").await.unwrap();
        assert_eq!(transcript.len(), 1);
        assert_eq!(transcript[0].relay_id, down.row.relay_id);
        assert_eq!(s.tim_callbacks("shop", 1).await.unwrap().len(), 1);
        assert!(s.tim_callbacks("other", 10).await.unwrap().is_empty());
    }

    async fn a_failing_tim_save_keeps_nothing(db: Db) {
        let s = &db.store;
        // A commit naming a session that does not exist fails: the stream row goes with it.
        let bad = Commit {
            touch: vec![("no-such-session".into(), at(1))],
            ..Default::default()
        };
        assert!(
            s.tim_stream_save(&stream("st9", "u9", at(1)), bad.clone())
                .await
                .is_err()
        );
        assert_eq!(s.tim_stream("shop", "st9").await.unwrap(), None);
        let cb = TimCallbackRow {
            relay_id: id(),
            app: "shop".into(),
            user_id: None,
            command: "X".into(),
            body: "{}".into(),
            published: false,
            created_at: at(1),
        };
        assert!(s.tim_callback_save(&cb, bad).await.is_err());
        assert!(s.tim_callbacks("shop", 10).await.unwrap().is_empty());
    }
}

async fn a_failing_outbox_row_backs_off_alone_then_becomes_a_dead_letter(db: Db) {
    let store = &db.store;
    let a1 = down("u1", None, "a1", at(0));
    let b1 = down("u2", None, "b1", at(0));
    let a2 = down("u1", None, "a2", at(1));
    store
        .commit(downs(vec![a1.clone(), b1.clone(), a2.clone()]))
        .await
        .unwrap();
    let ids = |rows: &[OutboxRow]| rows.iter().map(|r| r.msg_id.clone()).collect::<Vec<_>>();
    let (a1_id, b1_id, a2_id) = (
        a1.publish.msg_id.clone(),
        b1.publish.msg_id.clone(),
        a2.publish.msg_id.clone(),
    );
    let pending = store.outbox_pending(10).await.unwrap();
    assert_eq!(
        ids(&pending),
        vec![a1_id.clone(), b1_id.clone(), a2_id.clone()]
    );
    assert!(pending.iter().all(|r| r.attempts == 0));

    // a1 fails on its own: it backs off, and its subject's later row waits; u2 goes on.
    let later = OffsetDateTime::now_utc() + time::Duration::minutes(1);
    store
        .outbox_failed(pending[0].seq, 1, later, "refused")
        .await
        .unwrap();
    assert_eq!(
        ids(&store.outbox_pending(10).await.unwrap()),
        vec![b1_id.clone()]
    );
    let stats = store.outbox_stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.retrying, stats.dead_letters),
        (3, 1, 0)
    );
    assert_eq!(stats.oldest_due, Some(pending[1].created_at));

    // Due again: tried with its attempts, a2 still behind it.
    let past = OffsetDateTime::now_utc() - time::Duration::seconds(1);
    store
        .outbox_failed(pending[0].seq, 2, past, "refused again")
        .await
        .unwrap();
    let due = store.outbox_pending(10).await.unwrap();
    assert_eq!(ids(&due), vec![a1_id.clone(), b1_id.clone()]);
    assert_eq!(due[0].attempts, 2);

    // Given up: a dead letter with its subject, payload and error; a2 goes on.
    let dead_id = store
        .outbox_dead(pending[0].seq, "publish_failed", "refused for good", None)
        .await
        .unwrap()
        .expect("moved");
    assert_eq!(
        ids(&store.outbox_pending(10).await.unwrap()),
        vec![b1_id, a2_id]
    );
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.id, dead_id);
    assert_eq!(
        (
            d.source.as_str(),
            d.msg_id.as_str(),
            d.reason.as_str(),
            d.error.as_str()
        ),
        (
            dead_source::OUTBOX,
            a1_id.as_str(),
            "publish_failed",
            "refused for good"
        )
    );
    assert_eq!(
        (&d.subject, &d.payload, d.attempts),
        (&a1.publish.subject, &a1.publish.payload, 2)
    );
    assert_eq!(d.created_at, pending[0].created_at);
    assert_eq!(store.outbox_stats().await.unwrap().dead_letters, 1);
    assert_eq!(
        store
            .outbox_dead(pending[0].seq, "x", "y", None)
            .await
            .unwrap(),
        None,
        "gone"
    );

    // Retried: back in the outbox under its own id, at the end, with no attempts.
    let back = store
        .dead_letter_retry(dead_id, "fresh")
        .await
        .unwrap()
        .expect("retried");
    assert_eq!(back.msg_id, a1_id);
    let now = store.outbox_pending(10).await.unwrap();
    assert_eq!(
        now.last().map(|r| (r.msg_id.clone(), r.attempts)),
        Some((a1_id, 0))
    );
    assert_eq!(
        now.last().map(|r| r.payload.clone()),
        Some(a1.publish.payload.clone())
    );
    assert!(store.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(
        store.dead_letter_retry(dead_id, "fresh").await.unwrap(),
        None
    );
}

async fn dead_letters_are_kept_once_retried_and_dropped(db: Db) {
    let store = &db.store;
    // A failed uplink message, and its dead letter.
    let mut row = up_row("u1", "m1", at(0));
    row.status = MessageStatus::Failed;
    store
        .commit(Commit {
            up_row: Some(row),
            ..Commit::default()
        })
        .await
        .unwrap();
    let letter = DeadLetter {
        id: 0,
        source: dead_source::CEC_UP.to_owned(),
        msg_id: "s1-7".to_owned(),
        subject: format!("ccrelay.cec.{TENANT}.up.u1"),
        payload: b"{\"messageId\":\"m1\"}".to_vec(),
        kind: Some(kind::CEC.to_owned()),
        tenant: Some(TENANT.to_owned()),
        user_id: Some("u1".to_owned()),
        message_id: Some("m1".to_owned()),
        reason: "attempts".to_owned(),
        error: "given up after 3 attempts: HTTP 500\0".to_owned(),
        attempts: 3,
        created_at: at(0),
        dead_at: at(5),
    };
    let id = store.dead_letter_add(&letter).await.unwrap().expect("new");
    assert_eq!(
        store.dead_letter_add(&letter).await.unwrap(),
        None,
        "kept once"
    );
    let kept = store.dead_letters(10).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].payload, letter.payload);
    assert_eq!((kept[0].created_at, kept[0].dead_at), (at(0), at(5)));

    // Retried: published as a new message, and its failed row pending again (sent again).
    let back = store
        .dead_letter_retry(id, "fresh-id")
        .await
        .unwrap()
        .expect("retried");
    assert_eq!(back.message_id.as_deref(), Some("m1"));
    let pending = store.outbox_pending(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].msg_id.as_str(), pending[0].subject.as_str()),
        ("fresh-id", letter.subject.as_str())
    );
    let found = store
        .up_lookup(kind::CEC, TENANT, "u1", "m1")
        .await
        .unwrap();
    assert_eq!(found.status, Some(MessageStatus::Pending));

    let again = store
        .dead_letter_add(&DeadLetter {
            msg_id: "s1-8".to_owned(),
            ..letter.clone()
        })
        .await
        .unwrap()
        .expect("new");
    assert!(store.dead_letter_drop(again).await.unwrap());
    assert!(!store.dead_letter_drop(again).await.unwrap());
    assert!(store.dead_letters(10).await.unwrap().is_empty());
}

async fn what_the_server_cannot_take_is_committed_as_a_dead_letter_and_an_error_event(db: Db) {
    const MAX: usize = 4096;
    let limit = crate::fit::PublishLimit::fixed(contract::Subjects::new("ccrelay"), MAX);
    let options = Options {
        limit: Some(limit),
        ..Options::default()
    };
    let store = Store::new(backend_of(&db).await, options).unwrap();
    let t0 = at(0);
    let small = down("big", Some("c-small"), "hello", t0);
    let big = down("big", Some("c-big"), &"x".repeat(MAX + 10), at(1));
    let ok_event = event("big", "session.opened", t0);
    let mut big_event = event("big", "session.closed", at(2));
    big_event.body =
        json!({"id": big_event.relay_id, "type": "session.closed", "pad": "y".repeat(MAX)})
            .to_string();
    let done = store
        .commit(Commit {
            down: vec![small.clone(), big.clone()],
            events: vec![ok_event.clone(), big_event.clone()],
            ..Commit::default()
        })
        .await
        .unwrap();
    assert_eq!(done.inserted_down.len(), 2, "{done:?}");
    let set_aside: Vec<&str> = done.set_aside.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(
        set_aside,
        [big.publish.msg_id.as_str(), big_event.relay_id.as_str()]
    );
    assert!(
        done.set_aside.iter().all(|(_, id)| id.is_some()),
        "{done:?}"
    );
    assert_eq!(
        done.outboxed, 4,
        "the small down and event, and two error events"
    );

    // Both transcripts rows and both events are stored: only the publication is replaced.
    let rows = transcript(&store, "big").await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].content, big.row.content);
    let events = store.events(kind::CEC, TENANT, "big").await.unwrap();
    assert!(events.iter().any(|e| e.relay_id == big_event.relay_id));

    // The outbox holds nothing over the limit: the small messages, then the error events.
    let outbox = store.outbox_pending(100).await.unwrap();
    let ids: Vec<&str> = outbox.iter().map(|r| r.msg_id.as_str()).collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert_eq!(
        ids[..2],
        [small.publish.msg_id.as_str(), ok_event.relay_id.as_str()]
    );
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    for (row, (d, original)) in outbox[2..]
        .iter()
        .zip(dead.iter().zip([&big.publish.msg_id, &big_event.relay_id]))
    {
        assert!(row.payload.len() < MAX, "{}", row.payload.len());
        assert_eq!(row.subject, "ccrelay.error");
        let e: serde_json::Value = serde_json::from_slice(&row.payload).unwrap();
        assert_eq!(
            (
                &e["type"],
                &e["resultCode"],
                &e["source"],
                &e["msgId"],
                &e["deadLetter"],
                &e["maxPayload"]
            ),
            (
                &json!("error"),
                &json!("too_large"),
                &json!("outbox"),
                &json!(original),
                &json!(d.id),
                &json!(MAX)
            ),
            "{e}"
        );
        assert!(e["size"].as_u64().is_some_and(|n| n > MAX as u64), "{e}");
        assert_eq!(
            (d.source.as_str(), d.reason.as_str(), d.attempts),
            ("outbox", "too_large", 0)
        );
        assert_eq!(&d.msg_id, original);
        assert_eq!(d.tenant.as_deref(), Some(TENANT));
    }
    assert_eq!(dead[0].payload, big.publish.payload);
    assert_eq!(dead[0].subject, big.publish.subject);
    assert!(
        outbox
            .iter()
            .all(|r| !String::from_utf8_lossy(&r.payload).contains("xxxx"))
    );

    // The same big message again (a duplicate code): nothing of it is stored a second time.
    let again = store
        .commit(downs(vec![down(
            "big",
            Some("c-big"),
            &"x".repeat(MAX + 10),
            at(3),
        )]))
        .await
        .unwrap();
    assert_eq!(
        (again.duplicate_down, again.outboxed, again.set_aside.len()),
        (1, 0, 0)
    );
    assert_eq!(store.dead_letters(10).await.unwrap().len(), 2);
    assert_eq!(store.outbox_pending(100).await.unwrap().len(), 4);

    // A store without a limit (tools, tests) commits as before.
    let plain = db.reopen().await;
    let big2 = down("big", Some("c-big2"), &"x".repeat(MAX + 10), at(4));
    assert_eq!(
        plain
            .commit(downs(vec![big2.clone()]))
            .await
            .unwrap()
            .outboxed,
        1
    );

    // Set aside at publish time (the server's limit shrank after the commit): the row becomes a
    // dead letter and its error event is committed with it, in one transaction.
    let row = plain
        .outbox_pending(100)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.msg_id == big2.publish.msg_id)
        .expect("the big row");
    let announce = event("big", "error", at(5));
    let id = store
        .outbox_dead(row.seq, "too_large", "over", Some(&announce))
        .await
        .unwrap()
        .expect("moved");
    let outbox = store.outbox_pending(100).await.unwrap();
    assert!(outbox.iter().all(|r| r.msg_id != big2.publish.msg_id));
    let published = outbox
        .iter()
        .find(|r| r.msg_id == announce.relay_id)
        .expect("the event's outbox row");
    let e: serde_json::Value = serde_json::from_slice(&published.payload).unwrap();
    assert_eq!(e["deadLetter"], json!(id), "{e}");
    let events = store.events(kind::CEC, TENANT, "big").await.unwrap();
    assert!(events.iter().any(|e| e.relay_id == announce.relay_id));
    // Gone already: nothing is stored.
    let again = event("big", "error", at(6));
    assert_eq!(
        store
            .outbox_dead(row.seq, "too_large", "over", Some(&again))
            .await
            .unwrap(),
        None
    );
    assert!(
        store
            .outbox_pending(100)
            .await
            .unwrap()
            .iter()
            .all(|r| r.msg_id != again.relay_id)
    );
}

// ---------------------------------------------------------------------------------------------
// The commit-and-retry path

#[tokio::test]
async fn a_retrying_commit_wakes_the_outbox_and_keeps_the_database_up() {
    let woken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let options = Options {
        on_outboxed: Some({
            let woken = woken.clone();
            Arc::new(move || {
                woken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
        }),
        ..Options::default()
    };
    let store = connect_with("sqlite::memory:", options).await.unwrap();
    store.migrate().await.unwrap();
    let done = store
        .commit_retrying(downs(vec![down("r1", None, "x", at(0))]))
        .await
        .unwrap();
    assert_eq!(done.outboxed, 1);
    assert_eq!(woken.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(!store.health().is_down());
    store.close().await;
}

#[tokio::test]
async fn a_retrying_commit_takes_the_database_for_away_until_cancelled() {
    let cancel = tokio_util::sync::CancellationToken::new();
    let options = Options {
        cancel: cancel.clone(),
        ..Options::default()
    };
    let store = connect_with("sqlite::memory:", options).await.unwrap();
    store.migrate().await.unwrap();
    store.close().await;
    let retrying = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .commit_retrying(downs(vec![down("r2", None, "x", at(0))]))
                .await
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !store.health().is_down() {
        assert!(std::time::Instant::now() < deadline, "never taken for away");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(store.health().cause().is_some());
    assert!(
        !retrying.is_finished(),
        "retried while the database is away"
    );
    cancel.cancel();
    let err = retrying.await.unwrap().unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

mod cluster;
mod privacy;

mod summaries;
