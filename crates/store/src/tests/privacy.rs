//! Retention and erasure ([`crate::privacy`]) on both databases: what a retention pass deletes
//! and keeps, what an erasure deletes of one customer and of nobody else, the audit record, and
//! on SQLite that no erased text is left in the database's files.

use std::collections::BTreeMap;

use serde_json::json;
use time::OffsetDateTime;

use super::{
    Db, TENANT, at, close, down, event, id, in_session, offline, on_postgres, on_sqlite, open,
    pending_file_of, satisfaction, session, sqlite_file_url, up_row,
};
use crate::privacy::{Customer, Erasure, Purge, Purged, Scrubbed, Table};
use crate::{
    Commit, DeadLetter, DynStore, FileDone, FileStatus, MessageStatus, OfflineSource,
    SatisfactionSource, SessionState, SummaryRequest, TimCallbackRow, TimStreamRow, dead_source,
    kind,
};

contract_tests!(
    retention_deletes_what_is_older_in_small_steps_and_keeps_the_rest,
    retention_keeps_a_session_until_nothing_references_it,
    an_erasure_deletes_one_customer_everywhere_and_nobody_else,
    an_erasure_of_a_tencent_user_reaches_its_callbacks_and_streams,
    an_erasure_done_twice_deletes_nothing_the_second_time,
    the_audit_keeps_counts_and_a_hash_never_the_user,
    scrub_leaves_the_database_usable,
);

/// Runs `first` and every step after it; the rows deleted, and how many steps it took.
async fn run(store: &DynStore, first: Purge) -> (u64, usize) {
    let (mut rows, mut steps) = (0, 0);
    let mut step = Some(first);
    while let Some(s) = step {
        let done: Purged = store.purge(&s).await.expect("purge step");
        rows += done.rows;
        steps += 1;
        assert!(steps < 1_000, "steps never end: {s:?}");
        step = s.next(&done);
    }
    (rows, steps)
}

/// A whole retention pass at `before`, `limit` rows a step: the rows deleted per table.
async fn retention(store: &DynStore, before: OffsetDateTime, limit: i64) -> BTreeMap<Table, u64> {
    let mut out = BTreeMap::new();
    for t in Table::RETENTION {
        let (rows, _) = run(store, Purge::older(*t, before, limit)).await;
        out.insert(*t, rows);
    }
    out
}

/// A whole erasure of `c`, `limit` rows a step: the rows deleted per table.
async fn erase(store: &DynStore, c: &Customer, limit: i64) -> BTreeMap<Table, u64> {
    let mut out = BTreeMap::new();
    for t in Table::ERASURE {
        let step = Purge::Customer {
            table: *t,
            customer: c.clone(),
            limit,
        };
        out.insert(*t, run(store, step).await.0);
    }
    out
}

fn cec_customer(user: &str) -> Customer {
    Customer {
        kind: kind::CEC.to_owned(),
        tenant: TENANT.to_owned(),
        user_id: user.to_owned(),
        subjects: ["down", "event", "up"]
            .iter()
            .map(|w| format!("ccrelay.cec.{TENANT}.{w}.{user}"))
            .collect(),
    }
}

/// Everything a CEC customer leaves, at `t` (seconds after the fixtures' epoch), in a session
/// closed right after: an up message, a down message with a downloaded file, an event, a
/// satisfaction, a leave-message, an outbox row still to publish, and a dead letter by user and
/// one (an outbox row set aside) by subject only. `marker` is in every text.
async fn conversation(store: &DynStore, user: &str, t: i64, marker: &str) -> crate::Session {
    let s = session(user, SessionState::Active, at(t));
    store.commit(open(&s)).await.unwrap();
    let mut up = up_row(user, &format!("m-{marker}"), at(t + 1));
    up.session_id = Some(s.id.clone());
    up.status = MessageStatus::Sent;
    up.content = Some(format!("hello {marker}"));
    let agent = in_session(down(user, None, &format!("agent {marker}"), at(t + 2)), &s);
    let photo = in_session(down(user, None, &format!("photo {marker}"), at(t + 2)), &s);
    let mut ev = event(user, "up.result", at(t + 2));
    ev.session_id = Some(s.id.clone());
    ev.body = json!({"id": ev.relay_id, "type": "up.result", "note": marker}).to_string();
    let mut rated = satisfaction(user, SatisfactionSource::Customer, "5", at(t + 3));
    rated.session_id = Some(s.id.clone());
    rated.comment = Some(format!("great {marker}"));
    let mut left = offline(
        user,
        OfflineSource::LeaveMessage,
        None,
        &format!("call me {marker}"),
        at(t + 3),
    );
    left.session_id = Some(s.id.clone());
    store
        .commit(Commit {
            up_row: Some(up),
            down: vec![agent, photo.clone()],
            events: vec![ev],
            satisfactions: vec![rated],
            offline: vec![left],
            files: vec![pending_file_of(&photo, &s.id, &format!("f-{marker}"))],
            ..Commit::default()
        })
        .await
        .unwrap();
    let done = FileDone {
        relay_id: photo.row.relay_id.clone(),
        status: FileStatus::Stored,
        size: Some(3),
        sha256: Some("ab".repeat(32)),
        bucket: Some("CCRELAY_FILES".to_owned()),
        object: Some(format!("{TENANT}/{user}/{}", photo.row.relay_id)),
        attempts: 1,
        error_code: None,
        error_message: None,
        payload: json!({"id": photo.row.relay_id, "content": format!("photo {marker}")})
            .to_string(),
        at: at(t + 3),
    };
    assert!(store.finish_file(&done).await.unwrap());
    // Closed with its summary, which takes the satisfaction's comment.
    let mut closing = close(&s, "customer", at(t + 4));
    closing.summaries = vec![SummaryRequest::cec(&s, None)];
    store.commit(closing).await.unwrap();
    for (source, msg_id, u) in [
        (dead_source::CEC_UP, format!("in-{marker}"), Some(user)),
        (dead_source::OUTBOX, format!("out-{marker}"), None),
    ] {
        let w = if u.is_some() { "up" } else { "down" };
        store
            .dead_letter_add(&DeadLetter {
                id: 0,
                source: source.to_owned(),
                msg_id,
                subject: format!("ccrelay.cec.{TENANT}.{w}.{user}"),
                payload: format!("{{\"content\":\"dead {marker}\"}}").into_bytes(),
                kind: u.map(|_| kind::CEC.to_owned()),
                tenant: u.map(|_| TENANT.to_owned()),
                user_id: u.map(str::to_owned),
                message_id: None,
                reason: "attempts".to_owned(),
                error: "given up".to_owned(),
                attempts: 3,
                created_at: at(t + 3),
                dead_at: at(t + 3),
            })
            .await
            .unwrap();
    }
    s
}

/// How many rows of `user` each table holds (the outbox and dead letters by subject).
async fn rows_of(
    store: &DynStore,
    kind_: &str,
    tenant: &str,
    user: &str,
) -> BTreeMap<Table, usize> {
    let mut out = BTreeMap::new();
    let transcript = store.transcript(kind_, tenant, user).await.unwrap();
    out.insert(Table::Messages, transcript.len());
    out.insert(
        Table::Events,
        store.events(kind_, tenant, user).await.unwrap().len(),
    );
    out.insert(
        Table::Satisfactions,
        store
            .satisfactions(kind_, tenant, user)
            .await
            .unwrap()
            .len(),
    );
    out.insert(
        Table::OfflineMessages,
        store
            .offline_messages(kind_, tenant, user)
            .await
            .unwrap()
            .len(),
    );
    out.insert(
        Table::Files,
        store.files(kind_, tenant, user).await.unwrap().len(),
    );
    let mine = |subject: &str| {
        subject.starts_with(&format!("ccrelay.{kind_}.{tenant}."))
            && subject.ends_with(&format!(".{user}"))
    };
    out.insert(
        Table::Outbox,
        store
            .outbox_pending(10_000)
            .await
            .unwrap()
            .iter()
            .filter(|r| mine(&r.subject))
            .count(),
    );
    out.insert(
        Table::DeadLetters,
        store
            .dead_letters(10_000)
            .await
            .unwrap()
            .iter()
            .filter(|d| mine(&d.subject))
            .count(),
    );
    out.insert(
        Table::Sessions,
        store
            .list_sessions(Some(tenant), None, 10_000)
            .await
            .unwrap()
            .iter()
            .filter(|s| s.user_id == user && s.kind == kind_)
            .count(),
    );
    if kind_ == kind::TIM {
        out.insert(
            Table::TimStreams,
            store.tim_streams(tenant, user).await.unwrap().len(),
        );
        out.insert(
            Table::TimCallbacks,
            store
                .tim_callbacks(tenant, 10_000)
                .await
                .unwrap()
                .iter()
                .filter(|c| c.user_id.as_deref() == Some(user))
                .count(),
        );
    }
    out
}

fn none_left(rows: &BTreeMap<Table, usize>) -> bool {
    rows.values().all(|n| *n == 0)
}

async fn retention_deletes_what_is_older_in_small_steps_and_keeps_the_rest(db: Db) {
    let store = &db.store;
    // Two old conversations, one new; the cut-off between them.
    conversation(store, "old1", 0, "o1").await;
    conversation(store, "old2", 100, "o2").await;
    conversation(store, "new", 10_000, "n").await;
    // An open stream and a finished one, both old; callbacks old and new.
    for (sid, finished, t) in [
        ("s-open", false, 5),
        ("s-done", true, 5),
        ("s-new", true, 10_005),
    ] {
        store
            .tim_stream_save(
                &stream("shop", "tu", sid, finished, at(t)),
                Commit::default(),
            )
            .await
            .unwrap();
    }
    for t in [5, 10_005] {
        store
            .tim_callback_save(&callback("shop", "tu", at(t)), Commit::default())
            .await
            .unwrap();
    }
    // Published: gone from the outbox, as in a running relay.
    let seqs: Vec<i64> = store
        .outbox_pending(10_000)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    store.outbox_done(&seqs).await.unwrap();

    let sessions: Vec<crate::Session> = store.list_sessions(Some(TENANT), None, 100).await.unwrap();
    let summary_of = |user: &str| {
        let id = sessions
            .iter()
            .find(|s| s.user_id == user)
            .unwrap()
            .id
            .clone();
        async move { store.summary(kind::CEC, TENANT, &id).await.unwrap() }
    };
    let comment = summary_of("old1")
        .await
        .expect("summarised")
        .satisfaction_comment;
    assert_eq!(comment.as_deref(), Some("great o1"));

    let deleted = retention(store, at(5_000), 2).await;
    // Summaries stay, their figures whole, their free text blanked.
    let old = summary_of("old1").await.expect("kept");
    assert_eq!(old.satisfaction_comment, None);
    assert_eq!(old.satisfaction_evaluation, Some(5));
    let new = summary_of("new").await.expect("kept");
    assert_eq!(new.satisfaction_comment.as_deref(), Some("great n"));
    assert_eq!(deleted[&Table::SessionSummaries], 2);
    for user in ["old1", "old2"] {
        let left = rows_of(store, kind::CEC, TENANT, user).await;
        assert!(none_left(&left), "{user}: {left:?}");
    }
    let new = rows_of(store, kind::CEC, TENANT, "new").await;
    assert_eq!(new[&Table::Messages], 3, "{new:?}");
    assert_eq!(new[&Table::Sessions], 1);
    assert_eq!(new[&Table::DeadLetters], 2);
    assert_eq!(deleted[&Table::Messages], 6, "{deleted:?}");
    assert_eq!(deleted[&Table::Events], 2);
    assert_eq!(deleted[&Table::Satisfactions], 2);
    assert_eq!(deleted[&Table::OfflineMessages], 2);
    assert_eq!(deleted[&Table::Files], 2);
    assert_eq!(deleted[&Table::DeadLetters], 4);
    assert_eq!(deleted[&Table::Sessions], 2);
    assert_eq!(deleted[&Table::TimCallbacks], 1);
    assert_eq!(deleted[&Table::TimStreams], 1, "the open stream stays");
    let streams: Vec<String> = store
        .tim_streams("shop", "tu")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.stream_id)
        .collect();
    assert_eq!(streams, ["s-open", "s-new"]);
    assert_eq!(store.tim_callbacks("shop", 10).await.unwrap().len(), 1);

    // A second pass finds nothing.
    let again = retention(store, at(5_000), 2).await;
    assert!(again.values().all(|n| *n == 0), "{again:?}");
}

async fn retention_keeps_a_session_until_nothing_references_it(db: Db) {
    let store = &db.store;
    let s = conversation(store, "late", 0, "l").await;
    // A satisfaction given long after the session closed.
    let mut rated = satisfaction("late", SatisfactionSource::Customer, "4", at(9_000));
    rated.session_id = Some(s.id.clone());
    store
        .commit(Commit {
            satisfactions: vec![rated],
            ..Commit::default()
        })
        .await
        .unwrap();
    // And one session still open, opened long ago.
    let open_one = session("still", SessionState::Active, at(1));
    store.commit(open(&open_one)).await.unwrap();

    let deleted = retention(store, at(5_000), 100).await;
    assert_eq!(deleted[&Table::Sessions], 0, "{deleted:?}");
    let kept = store.list_sessions(Some(TENANT), None, 10).await.unwrap();
    let late = kept.iter().find(|k| k.id == s.id).expect("kept");
    assert_eq!(late.token, None, "the token of a session kept is cleared");
    assert!(kept.iter().any(|k| k.id == open_one.id), "open: kept");
    assert!(
        kept.iter()
            .find(|k| k.id == open_one.id)
            .unwrap()
            .token
            .is_some(),
        "an open session's token is its poll's"
    );
    // Once the satisfaction ages out too, the session goes.
    let deleted = retention(store, at(10_000), 100).await;
    assert_eq!(deleted[&Table::Satisfactions], 1);
    assert_eq!(deleted[&Table::Sessions], 1);
    assert!(
        store
            .open_session(kind::CEC, TENANT, "still")
            .await
            .unwrap()
            .is_some()
    );
}

async fn an_erasure_deletes_one_customer_everywhere_and_nobody_else(db: Db) {
    let store = &db.store;
    conversation(store, "alice", 0, "a1").await;
    conversation(store, "alice", 50, "a2").await;
    conversation(store, "bob", 0, "b").await;
    // Alice is back: an open session (which the caller refuses to erase; the store keeps it).
    let again = session("alice", SessionState::Active, at(200));
    store.commit(open(&again)).await.unwrap();
    let bob_before = rows_of(store, kind::CEC, TENANT, "bob").await;

    let deleted = erase(store, &cec_customer("alice"), 2).await;
    let left = rows_of(store, kind::CEC, TENANT, "alice").await;
    assert_eq!(left[&Table::Sessions], 1, "only the open session: {left:?}");
    let mut rest = left.clone();
    rest.remove(&Table::Sessions);
    assert!(none_left(&rest), "{left:?}");
    assert_eq!(deleted[&Table::Messages], 6, "{deleted:?}");
    assert_eq!(deleted[&Table::Outbox], 6, "two downs and an event, twice");
    assert_eq!(deleted[&Table::DeadLetters], 4, "by user and by subject");
    assert_eq!(deleted[&Table::Files], 2);
    assert_eq!(deleted[&Table::Sessions], 2);
    assert_eq!(deleted[&Table::SessionSummaries], 2);
    assert_eq!(deleted[&Table::TimCallbacks], 0);
    assert_eq!(rows_of(store, kind::CEC, TENANT, "bob").await, bob_before);
    let bob = store
        .latest_session(kind::CEC, TENANT, "bob")
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .summary(kind::CEC, TENANT, &bob.id)
            .await
            .unwrap()
            .is_some()
    );
}

async fn an_erasure_of_a_tencent_user_reaches_its_callbacks_and_streams(db: Db) {
    let store = &db.store;
    for user in ["tu", "other"] {
        store
            .tim_stream_save(
                &stream("shop", user, &format!("s-{user}"), true, at(1)),
                Commit::default(),
            )
            .await
            .unwrap();
        store
            .tim_callback_save(&callback("shop", user, at(1)), Commit::default())
            .await
            .unwrap();
        let mut up = up_row(user, &format!("send-{user}"), at(2));
        up.kind = kind::TIM.to_owned();
        up.tenant = "shop".to_owned();
        up.status = MessageStatus::Sent;
        store
            .commit(Commit {
                up_row: Some(up),
                ..Commit::default()
            })
            .await
            .unwrap();
    }
    // A CEC customer of a tenant named like the app is someone else.
    conversation(store, "tu", 0, "c").await;
    let c = Customer {
        kind: kind::TIM.to_owned(),
        tenant: "shop".to_owned(),
        user_id: "tu".to_owned(),
        subjects: vec!["ccrelay.tim.shop.in.tu".to_owned()],
    };
    let deleted = erase(store, &c, 10).await;
    assert_eq!(deleted[&Table::TimStreams], 1, "{deleted:?}");
    assert_eq!(deleted[&Table::TimCallbacks], 1);
    assert_eq!(deleted[&Table::Messages], 1);
    assert!(none_left(&rows_of(store, kind::TIM, "shop", "tu").await));
    let other = rows_of(store, kind::TIM, "shop", "other").await;
    assert_eq!(other[&Table::TimStreams], 1);
    assert_eq!(other[&Table::TimCallbacks], 1);
    assert_eq!(other[&Table::Messages], 1);
    // The CEC "tu" of tenant acme is untouched.
    assert_eq!(
        store
            .transcript(kind::CEC, TENANT, "tu")
            .await
            .unwrap()
            .len(),
        3
    );
}

async fn an_erasure_done_twice_deletes_nothing_the_second_time(db: Db) {
    let store = &db.store;
    conversation(store, "carol", 0, "c").await;
    let first = erase(store, &cec_customer("carol"), 500).await;
    assert!(first.values().sum::<u64>() > 10, "{first:?}");
    let second = erase(store, &cec_customer("carol"), 500).await;
    assert!(second.values().all(|n| *n == 0), "{second:?}");
}

async fn the_audit_keeps_counts_and_a_hash_never_the_user(db: Db) {
    let store = &db.store;
    let mut counts = BTreeMap::new();
    counts.insert("messages".to_owned(), 12);
    counts.insert("object_store".to_owned(), 1);
    let e = Erasure {
        id: 0,
        kind: kind::CEC.to_owned(),
        tenant: TENANT.to_owned(),
        user_hash: "ab".repeat(32),
        requested_by: "cli:root".to_owned(),
        outcome: "done".to_owned(),
        counts: counts.clone(),
        started_at: at(0),
        finished_at: at(1),
    };
    let first = store.record_erasure(&e).await.unwrap();
    let second = store
        .record_erasure(&Erasure {
            outcome: "incomplete".to_owned(),
            counts: BTreeMap::new(),
            ..e.clone()
        })
        .await
        .unwrap();
    assert!(second > first);
    let kept = store.erasures(10).await.unwrap();
    assert_eq!(kept.len(), 2);
    assert_eq!(kept[0].id, second, "newest first");
    assert_eq!(kept[1], Erasure { id: first, ..e });
}

async fn scrub_leaves_the_database_usable(db: Db) {
    let store = &db.store;
    conversation(store, "dave", 0, "d").await;
    erase(store, &cec_customer("dave"), 500).await;
    let scrubbed = store.scrub(Table::ERASURE).await.unwrap();
    assert!(
        matches!(scrubbed, Scrubbed::Checkpointed | Scrubbed::Vacuumed),
        "{scrubbed:?}"
    );
    conversation(store, "erin", 0, "e").await;
    assert_eq!(
        store
            .transcript(kind::CEC, TENANT, "erin")
            .await
            .unwrap()
            .len(),
        3
    );
}

fn stream(
    app: &str,
    user: &str,
    stream_id: &str,
    finished: bool,
    t: OffsetDateTime,
) -> TimStreamRow {
    TimStreamRow {
        app: app.to_owned(),
        user_id: user.to_owned(),
        stream_id: stream_id.to_owned(),
        from_account: Some("@RBT#bot".to_owned()),
        msg_key: Some("k".to_owned()),
        text: format!("streamed to {user}"),
        chunks: 2,
        calls: 2,
        last_seq: 7,
        finished,
        status: if finished {
            MessageStatus::Sent
        } else {
            MessageStatus::Pending
        },
        error_code: None,
        error_info: None,
        created_at: t,
        updated_at: t,
    }
}

fn callback(app: &str, user: &str, t: OffsetDateTime) -> TimCallbackRow {
    TimCallbackRow {
        relay_id: id(),
        app: app.to_owned(),
        user_id: Some(user.to_owned()),
        command: "C2C.CallbackAfterSendMsg".to_owned(),
        body: json!({"From_Account": user, "MsgBody": [{"MsgType": "TIMTextElem"}]}).to_string(),
        published: true,
        created_at: t,
    }
}

/// Every byte of the SQLite database's files (the database, its log, its shared memory).
fn file_bytes(path: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        if let Ok(b) = std::fs::read(&p) {
            all.extend(b);
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// On SQLite, the erased customer's text is in none of the database's files once the erasure
/// is scrubbed, though it went through the outbox (published rows are deleted with zeros too),
/// was rewritten by updates, and shared pages with a customer who stays.
#[tokio::test]
async fn an_erased_customers_text_is_in_no_sqlite_file() {
    let (dir, url) = sqlite_file_url("erase.db");
    let path = dir.path().join("erase.db");
    let store = crate::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    for n in 0..40 {
        let marker = format!("Zq{n:02}xMARK");
        conversation(&store, "frank", n * 10, &marker).await;
        conversation(&store, "grace", n * 10, &format!("Kw{n:02}yKEEP")).await;
    }
    let seqs: Vec<i64> = store
        .outbox_pending(10_000)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    store.outbox_done(&seqs).await.unwrap();
    assert!(contains(&file_bytes(&path), "Zq07xMARK"), "written at all");

    erase(&store, &cec_customer("frank"), 50).await;
    assert_eq!(
        store.scrub(Table::ERASURE).await.unwrap(),
        Scrubbed::Checkpointed
    );
    let bytes = file_bytes(&path);
    for n in 0..40 {
        assert!(
            !contains(&bytes, &format!("Zq{n:02}xMARK")),
            "marker {n} left"
        );
    }
    assert!(contains(&bytes, "Kw07yKEEP"), "grace's rows stay");
    store.close().await;
}

/// A step that deletes sessions turns SQLite's foreign keys off for its own transaction only.
#[tokio::test]
async fn foreign_keys_are_back_on_after_a_sqlite_sessions_step() {
    let (_dir, url) = sqlite_file_url("fk.db");
    let sqlite = std::sync::Arc::new(crate::sqlite::SqliteStore::connect(&url).await.unwrap());
    crate::Backend::migrate(&*sqlite).await.unwrap();
    let store = crate::Store::new(sqlite.clone(), crate::Options::default()).unwrap();
    conversation(&store, "hank", 0, "h").await;
    erase(&store, &cec_customer("hank"), 10).await;
    assert_eq!(sqlite.writer_pragma("foreign_keys").unwrap(), 1);
    assert_eq!(sqlite.writer_pragma("secure_delete").unwrap(), 1);
    // And they hold: a row naming a session that is not there is refused.
    let mut orphan = up_row("hank", "late", at(1));
    orphan.session_id = Some("no-such-session".to_owned());
    orphan.status = MessageStatus::Sent;
    let refused = store
        .commit(Commit {
            up_row: Some(orphan),
            ..Commit::default()
        })
        .await;
    assert!(refused.is_err(), "{refused:?}");
    store.close().await;
}

/// On PostgreSQL a row's session must be its own customer's (the keys of migration 0009).
#[tokio::test]
async fn a_postgres_row_cannot_name_another_customers_session() {
    on_postgres(|db: Db| async move {
        let s = session("ivy", SessionState::Active, at(0));
        db.store.commit(open(&s)).await.unwrap();
        let mut stray = up_row("jack", "m", at(1));
        stray.session_id = Some(s.id.clone());
        stray.status = MessageStatus::Sent;
        let refused = db
            .store
            .commit(Commit {
                up_row: Some(stray),
                ..Commit::default()
            })
            .await;
        assert!(refused.is_err(), "{refused:?}");
    })
    .await;
}
