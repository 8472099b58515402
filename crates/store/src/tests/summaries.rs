//! Session summaries on both databases: a constructed conversation with a robot, a queue, an
//! agent, a transfer, files, satisfaction, robot feedback and offline messages is summarised in
//! the commit that closes it, with every figure as docs/ANALYTICS.md defines it; a close that
//! changes nothing summarises nothing; a later request recomputes; pages cover a range once; a
//! Desk session is summarised from its callbacks; and the migration computes the summaries of
//! sessions closed before it.

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{
    Db, TENANT, at, event, id, offline, on_postgres, on_sqlite, open, pg_admin_url, satisfaction,
    session, up_row,
};
use crate::{
    Commit, Direction, DownRecord, DynStore, EventRecord, MessageRow, MessageStatus, OfflineSource,
    OutboxMsg, SatisfactionSource, Session, SessionChange, SessionState, SessionSummary,
    SummaryPage, SummaryRequest, TimCallbackRow, TimStreamRow, kind, to_store_precision,
};

contract_tests!(
    a_closed_session_is_summarised_in_the_commit_that_closes_it,
    a_session_closed_twice_is_summarised_once,
    a_request_recomputes_a_closed_session_and_ignores_an_open_one,
    summary_pages_cover_a_range_once_in_order,
    a_desk_session_is_summarised_from_its_callbacks,
);

const SUBJECT: &str = "ccrelay.cec.acme.event.";

/// A down row from `source` (`ROBOT`, `AGENT`, `SYSTEM`) in session `s`.
fn down_in(
    s: &Session,
    source: &str,
    control: &str,
    media: &str,
    created: OffsetDateTime,
) -> DownRecord {
    let relay_id = id();
    let body = json!({"id": relay_id, "sourceType": source, "controlType": control}).to_string();
    DownRecord {
        row: MessageRow {
            relay_id: relay_id.clone(),
            kind: kind::CEC.to_owned(),
            tenant: TENANT.to_owned(),
            user_id: s.user_id.clone(),
            session_id: Some(s.id.clone()),
            direction: Direction::Down,
            message_id: None,
            message_code: Some(id()),
            source_type: Some(source.to_owned()),
            control_type: Some(control.to_owned()),
            media_type: Some(media.to_owned()),
            content: Some("x".to_owned()),
            body: body.clone(),
            status: MessageStatus::Received,
            result_code: None,
            result_desc: None,
            stream_seq: None,
            created_at: created,
        },
        publish: OutboxMsg {
            msg_id: relay_id,
            subject: format!("ccrelay.cec.{TENANT}.down.{}", s.user_id),
            payload: body.into_bytes(),
        },
    }
}

/// A customer's up row in session `s`, with its outcome.
fn up_in(
    s: &Session,
    control: &str,
    media: &str,
    status: MessageStatus,
    code: &str,
    created: OffsetDateTime,
) -> MessageRow {
    let mut r = up_row(&s.user_id, &id()[..30], created);
    r.session_id = Some(s.id.clone());
    r.control_type = Some(control.to_owned());
    r.media_type = Some(media.to_owned());
    r.status = status;
    r.result_code = Some(code.to_owned());
    r
}

/// An event of session `s` with `fields` in its body.
fn event_in(s: &Session, ty: &str, fields: Value, created: OffsetDateTime) -> EventRecord {
    let mut e = event(&s.user_id, ty, created);
    e.session_id = Some(s.id.clone());
    let mut body: Value = serde_json::from_str(&e.body).expect("event body");
    if let (Some(b), Value::Object(f)) = (body.as_object_mut(), fields) {
        b.extend(f);
    }
    e.body = body.to_string();
    e
}

fn ups(rows: Vec<MessageRow>) -> Vec<Commit> {
    rows.into_iter()
        .map(|r| Commit {
            up_row: Some(r),
            ..Commit::default()
        })
        .collect()
}

/// The close of `s` at `when`, asking for its summary on the user's event subject.
fn close_summarised(s: &Session, when: OffsetDateTime) -> Commit {
    Commit {
        sessions: vec![SessionChange::Close {
            id: s.id.clone(),
            reason: "customer".to_owned(),
            at: when,
        }],
        summaries: vec![SummaryRequest::cec(
            s,
            Some(format!("{SUBJECT}{}", s.user_id)),
        )],
        ..Commit::default()
    }
}

/// Commits a whole conversation of `user` (see the module docs) opened at `at(0)`, not closed.
async fn converse(store: &DynStore, user: &str) -> Session {
    let s = session(user, SessionState::Active, at(0));
    store.commit(open(&s)).await.expect("open");
    let mut commits = vec![Commit {
        events: vec![event_in(
            &s,
            "session.opened",
            json!({"locale": "en"}),
            at(0),
        )],
        ..Commit::default()
    }];
    let sent = MessageStatus::Sent;
    commits.extend(ups(vec![
        // The CONNECT, before the opening: a control, not a message.
        up_in(&s, "CONNECT", "TEXT", sent, "0", at(-1)),
        up_in(&s, "CHAT", "TEXT", sent, "0", at(5)),
    ]));
    commits.push(super::downs(vec![
        down_in(&s, "ROBOT", "CHAT", "TEXT", at(2)),
        down_in(&s, "ROBOT", "CHAT", "TEXT", at(6)),
    ]));
    // The transfer, answered "Queuing..."; a message while queued; the queue positions.
    commits.extend(ups(vec![
        up_in(&s, "TRANS2AGENT", "TEXT", sent, "11", at(10)),
        up_in(&s, "CHAT", "TEXT", sent, "11", at(12)),
    ]));
    commits.push(Commit {
        events: vec![
            event_in(&s, "session.queued", json!({}), at(10)),
            event_in(&s, "session.queued", json!({"position": 3}), at(11)),
            event_in(&s, "session.queued", json!({"position": 1}), at(14)),
        ],
        sessions: vec![SessionChange::SetState {
            id: s.id.clone(),
            state: SessionState::Queued,
        }],
        ..Commit::default()
    });
    // An agent: the system's notice and the greeting 10 s after the transfer; then turns.
    commits.push(super::downs(vec![
        down_in(&s, "SYSTEM", "CHAT", "TEXT", at(20)),
        down_in(&s, "AGENT", "CHAT", "TEXT", at(20)),
    ]));
    commits.extend(ups(vec![up_in(&s, "CHAT", "TEXT", sent, "0", at(25))]));
    commits.push(super::downs(vec![down_in(
        &s,
        "AGENT",
        "CHAT",
        "TEXT",
        at(28),
    )]));
    commits.extend(ups(vec![
        up_in(&s, "CHAT", "IMAGE", sent, "0", at(30)),
        up_in(&s, "CHAT", "TEXT", sent, "0", at(31)),
    ]));
    commits.push(super::downs(vec![
        down_in(&s, "AGENT", "CHAT", "TEXT", at(35)),
        down_in(&s, "AGENT", "CHAT", "IMAGE", at(40)),
    ]));
    commits.extend(ups(vec![
        up_in(&s, "CHAT", "TEXT", sent, "0", at(45)),
        // Refused: not a message the contact center has.
        up_in(&s, "CHAT", "TEXT", MessageStatus::Failed, "13", at(45)),
    ]));
    commits.push(super::downs(vec![down_in(
        &s,
        "AGENT",
        "CHAT",
        "TEXT",
        at(46),
    )]));
    commits.extend(ups(vec![up_in(&s, "CHAT", "TEXT", sent, "0", at(50))]));
    commits.push(super::downs(vec![
        down_in(&s, "AGENT", "CHAT", "TEXT", at(54)),
        // The agent hangs up: a control, not a message.
        down_in(&s, "AGENT", "DISCONNECT", "TEXT", at(69)),
    ]));
    // Satisfaction (the one accepted last counts), robot feedback, offline messages.
    let in_s = |mut r: crate::SatisfactionRow, code: &str| {
        r.session_id = Some(s.id.clone());
        r.result_code = code.to_owned();
        r
    };
    let mut good = in_s(
        satisfaction(user, SatisfactionSource::Customer, "4", at(60)),
        "0",
    );
    good.comment = Some("quick and kind".to_owned());
    commits.push(Commit {
        satisfactions: vec![
            in_s(
                satisfaction(user, SatisfactionSource::Customer, "2", at(58)),
                "0",
            ),
            good,
            in_s(
                satisfaction(user, SatisfactionSource::Customer, "1", at(61)),
                "13",
            ),
            in_s(
                satisfaction(user, SatisfactionSource::Robot, "1", at(7)),
                "0",
            ),
            in_s(
                satisfaction(user, SatisfactionSource::Robot, "0", at(8)),
                "0",
            ),
            in_s(
                satisfaction(user, SatisfactionSource::Robot, "1", at(9)),
                "30000000008",
            ),
        ],
        ..Commit::default()
    });
    let off = |source, code: &str, t| {
        let mut o = offline(user, source, None, "later", at(t));
        o.session_id = Some(s.id.clone());
        o.result_code = code.to_owned();
        o
    };
    commits.push(Commit {
        offline: vec![
            off(OfflineSource::Offline, "0", 3),
            off(OfflineSource::LeaveMessage, "0", 62),
            off(OfflineSource::LeaveMessage, "3", 63),
        ],
        ..Commit::default()
    });
    for c in commits {
        store.commit(c).await.expect("conversation commit");
    }
    s
}

/// The figures [`converse`] makes, for a session closed at `at(70)`.
fn expected(s: &Session, summarized_at: OffsetDateTime) -> SessionSummary {
    SessionSummary {
        kind: kind::CEC.to_owned(),
        tenant: TENANT.to_owned(),
        user_id: s.user_id.clone(),
        session_id: s.id.clone(),
        opened_at: to_store_precision(at(0)),
        closed_at: to_store_precision(at(70)),
        duration_ms: 70_000,
        close_reason: Some("customer".to_owned()),
        channel_config_id: Some(s.channel_config_id.clone()),
        locale: Some("en".to_owned()),
        queued: Some(true),
        queue_wait_ms: Some(10_000),
        max_queue_position: Some(3),
        first_robot_answer_ms: Some(2_000),
        first_agent_answer_ms: Some(20_000),
        // Turns answered in 3, 5, 1 and 4 s: the mean of the middle two.
        agent_response_median_ms: Some(3_500),
        customer_messages: 7,
        robot_messages: 2,
        agent_messages: 6,
        system_messages: Some(1),
        files_from_customer: Some(1),
        files_to_customer: Some(1),
        transfers: Some(1),
        satisfaction_evaluation: Some(4),
        satisfaction_comment: Some("quick and kind".to_owned()),
        robot_feedback_positive: Some(1),
        robot_feedback_negative: Some(1),
        leave_messages: Some(1),
        offline_messages: Some(1),
        robot_streams: None,
        robot_stream_chars: None,
        summarized_at,
    }
}

async fn summary_of(store: &DynStore, s: &Session) -> Option<SessionSummary> {
    store
        .summary(kind::CEC, TENANT, &s.id)
        .await
        .expect("read summary")
}

/// The `session.summary` events in the outbox, as published.
async fn summary_events(store: &DynStore) -> Vec<Value> {
    store
        .outbox_pending(10_000)
        .await
        .expect("outbox")
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.payload).expect("JSON payload"))
        .filter(|v| v["type"] == "session.summary")
        .collect()
}

async fn a_closed_session_is_summarised_in_the_commit_that_closes_it(db: Db) {
    let store = &db.store;
    let s = converse(store, "ann").await;
    assert_eq!(summary_of(store, &s).await, None, "open: no summary yet");
    let before = crate::now();
    let c = store
        .commit(close_summarised(&s, at(70)))
        .await
        .expect("close");
    assert_eq!(c.outboxed, 1, "the summary event");
    let got = summary_of(store, &s).await.expect("summary stored");
    assert!(got.summarized_at >= before, "{got:?}");
    assert_eq!(got, expected(&s, got.summarized_at));

    // Published on the user's event subject, after nothing else of it, with the same figures.
    let events = summary_events(store).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["tenant"], TENANT);
    assert_eq!(e["userId"], "ann");
    assert_eq!(e["sessionId"], s.id.as_str());
    assert_eq!(e["ok"], true);
    let published: SessionSummary =
        serde_json::from_value(e["summary"].clone()).expect("a SessionSummary");
    assert_eq!(published, got);
    let pending = store.outbox_pending(10_000).await.expect("outbox");
    assert_eq!(
        pending.last().map(|r| r.subject.as_str()),
        Some(format!("{SUBJECT}ann").as_str())
    );
    // Kept with the session's events.
    let kept = store
        .events(kind::CEC, TENANT, "ann")
        .await
        .expect("events");
    assert!(
        kept.iter()
            .any(|e| e.event_type == "session.summary" && e.session_id.as_deref() == Some(&s.id))
    );
}

async fn a_session_closed_twice_is_summarised_once(db: Db) {
    let store = &db.store;
    let s = session("bob", SessionState::Active, at(0));
    store.commit(open(&s)).await.expect("open");
    // A close that asks for nothing is summarised all the same, unpublished.
    let first = Commit {
        sessions: vec![SessionChange::Close {
            id: s.id.clone(),
            reason: "idle".to_owned(),
            at: at(9),
        }],
        ..Commit::default()
    };
    store.commit(first).await.expect("close");
    let got = summary_of(store, &s).await.expect("summarised");
    assert_eq!(got.close_reason.as_deref(), Some("idle"));
    assert_eq!(got.duration_ms, 9_000);
    assert_eq!(got.customer_messages, 0);
    assert_eq!(got.queued, Some(false));
    assert_eq!(got.queue_wait_ms, None);
    assert_eq!(got.first_agent_answer_ms, None);
    assert_eq!(got.agent_response_median_ms, None);
    assert_eq!(got.satisfaction_evaluation, None);
    assert!(summary_events(store).await.is_empty());
    // Closed again (the agent's hang-up racing the idle close): nothing changes, nothing is
    // published.
    let c = store
        .commit(close_summarised(&s, at(20)))
        .await
        .expect("second close");
    assert_eq!(c.outboxed, 0);
    assert_eq!(summary_of(store, &s).await, Some(got));
    assert!(summary_events(store).await.is_empty());
}

async fn a_request_recomputes_a_closed_session_and_ignores_an_open_one(db: Db) {
    let store = &db.store;
    let s = session("cat", SessionState::Active, at(0));
    store.commit(open(&s)).await.expect("open");
    let request = SummaryRequest::cec(&s, Some(format!("{SUBJECT}cat")));
    // Open: nothing to summarise.
    let c = store
        .commit(Commit {
            summaries: vec![request.clone()],
            ..Commit::default()
        })
        .await
        .expect("request");
    assert_eq!(c.outboxed, 0);
    assert_eq!(summary_of(store, &s).await, None);
    assert_eq!(
        store
            .latest_session(kind::CEC, TENANT, "cat")
            .await
            .expect("latest")
            .map(|l| l.id),
        Some(s.id.clone())
    );

    store
        .commit(close_summarised(&s, at(30)))
        .await
        .expect("close");
    assert_eq!(
        summary_of(store, &s)
            .await
            .expect("summary")
            .satisfaction_evaluation,
        None
    );
    // An evaluation after the close, with the request: the summary takes it, published again.
    let mut late = satisfaction("cat", SatisfactionSource::Customer, "5", at(40));
    late.session_id = Some(s.id.clone());
    let c = store
        .commit(Commit {
            satisfactions: vec![late],
            summaries: vec![request],
            ..Commit::default()
        })
        .await
        .expect("late satisfaction");
    assert_eq!(c.outboxed, 1);
    let got = summary_of(store, &s).await.expect("summary");
    assert_eq!(got.satisfaction_evaluation, Some(5));
    assert_eq!(got.satisfaction_comment.as_deref(), Some("comment 5"));
    assert_eq!(got.closed_at, to_store_precision(at(30)), "still the close");
    let events = summary_events(store).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["summary"]["satisfactionEvaluation"], 5);
    // The latest session of the user is the closed one now, as long as no other opened.
    let later = session("cat", SessionState::Active, at(50));
    store.commit(open(&later)).await.expect("open again");
    assert_eq!(
        store
            .latest_session(kind::CEC, TENANT, "cat")
            .await
            .expect("latest")
            .map(|l| l.id),
        Some(later.id)
    );
}

async fn summary_pages_cover_a_range_once_in_order(db: Db) {
    let store = &db.store;
    // Five sessions of two users closed at 10, 20, 20, 30, 40 s; one of another tenant at 25 s.
    let mut closed = Vec::new();
    for (user, t) in [("u1", 10), ("u2", 20), ("u1", 20), ("u2", 30), ("u1", 40)] {
        let s = session(user, SessionState::Active, at(t - 5));
        store.commit(open(&s)).await.expect("open");
        store
            .commit(close_summarised(&s, at(t)))
            .await
            .expect("close");
        closed.push(s);
    }
    let mut other = session("u1", SessionState::Active, at(20));
    other.tenant = "other".to_owned();
    store.commit(open(&other)).await.expect("open");
    store
        .commit(close_summarised(&other, at(25)))
        .await
        .expect("close");

    // Page by page, two at a time.
    let mut page = SummaryPage::first(2);
    page.tenant = Some(TENANT.to_owned());
    let mut seen = Vec::new();
    loop {
        let rows = store.summaries_page(&page).await.expect("page");
        assert!(rows.len() <= 2);
        let Some(last) = rows.last() else { break };
        page.next(last);
        // The text cursor names the same place.
        assert_eq!(
            SummaryPage::parse_cursor(&SummaryPage::cursor(last)),
            page.after
        );
        seen.extend(rows.iter().map(|r| (r.closed_at, r.session_id.clone())));
    }
    let mut want: Vec<(OffsetDateTime, String)> = closed
        .iter()
        .zip([10, 20, 20, 30, 40])
        .map(|(s, t)| (to_store_precision(at(t)), s.id.clone()))
        .collect();
    want.sort();
    assert_eq!(seen, want, "every summary of the tenant once, in order");

    // A time range and a user.
    let mut page = SummaryPage::first(100);
    page.since = Some(at(20));
    page.until = Some(at(40));
    let rows = store.summaries_page(&page).await.expect("range");
    assert_eq!(rows.len(), 4, "20, 20, 25 (other tenant), 30");
    page.user_id = Some("u2".to_owned());
    page.kind = Some(kind::CEC.to_owned());
    let rows = store.summaries_page(&page).await.expect("user");
    assert_eq!(
        rows.iter()
            .map(|r| r.session_id.clone())
            .collect::<Vec<_>>(),
        vec![closed[1].id.clone(), closed[3].id.clone()]
    );
    assert_eq!(SummaryPage::parse_cursor("nonsense"), None);
}

fn desk_callback(app: &str, user: &str, body: Value, created: OffsetDateTime) -> TimCallbackRow {
    TimCallbackRow {
        relay_id: id(),
        app: app.to_owned(),
        user_id: Some(user.to_owned()),
        command: "Desk.SessionEventNotify".to_owned(),
        body: body.to_string(),
        published: true,
        created_at: created,
    }
}

async fn a_desk_session_is_summarised_from_its_callbacks(db: Db) {
    let store = &db.store;
    let (app, user, desk) = ("shop", "tom", "2baf4d84-beb4-4607-a1ea-6ebcaef3e0e6");
    let t0 = 1_725_540_000_000_i64;
    let events = [
        ("SessionBegin", 0, None, 0),
        ("ChatBot.UserSendMsg", 1_000, None, 1),
        ("ChatBot.RobotSendMsg", 1_500, None, 2),
        ("ChatBot.UserSendMsg", 4_000, None, 4),
        ("Staff.StaffSendMsg", 9_000, None, 9),
        ("Staff.UserSendMsg", 10_000, None, 10),
        ("SessionEnd", 12_000, Some(4), 12),
    ];
    // A robot stream the relay sent the user during the session, and one long after.
    let stream = |stream_id: &str, text: &str, created: OffsetDateTime| TimStreamRow {
        app: app.to_owned(),
        user_id: user.to_owned(),
        stream_id: stream_id.to_owned(),
        from_account: Some("@RBT#bot".to_owned()),
        msg_key: Some("k".to_owned()),
        text: text.to_owned(),
        chunks: 2,
        calls: 1,
        last_seq: 1,
        finished: true,
        status: MessageStatus::Sent,
        error_code: None,
        error_info: None,
        created_at: created,
        updated_at: created,
    };
    store
        .tim_stream_save(&stream("st1", "héllo wörld", at(2)), Commit::default())
        .await
        .expect("stream");
    store
        .tim_stream_save(&stream("st2", "later", at(500)), Commit::default())
        .await
        .expect("stream");
    for (event, ms, rating, received) in events {
        let mut body = json!({"CallbackCommand": "Desk.SessionEventNotify", "SessionId": desk,
            "Event": event, "EventTime": t0 + ms, "ClientUserId": user});
        if let Some(r) = rating {
            body["SatisfactionSelected"] = json!(r);
        }
        let commit = Commit {
            summaries: vec![SummaryRequest::desk(app, user, desk)],
            ..Commit::default()
        };
        store
            .tim_callback_save(&desk_callback(app, user, body, at(received)), commit)
            .await
            .expect("callback");
    }
    // Tencent repeats a callback it had no answer to: the same event, counted once.
    let again = json!({"CallbackCommand": "Desk.SessionEventNotify", "SessionId": desk,
        "Event": "ChatBot.UserSendMsg", "EventTime": t0 + 4_000, "ClientUserId": user});
    store
        .tim_callback_save(
            &desk_callback(app, user, again, at(5)),
            Commit {
                summaries: vec![SummaryRequest::desk(app, user, desk)],
                ..Commit::default()
            },
        )
        .await
        .expect("callback");
    // Another app's session and another command are not this session's.
    let other = json!({"SessionId": desk, "Event": "ChatBot.UserSendMsg", "EventTime": t0});
    store
        .tim_callback_save(
            &desk_callback("mall", user, other, at(3)),
            Commit::default(),
        )
        .await
        .expect("callback");

    let got = store
        .summary(kind::TIM, app, desk)
        .await
        .expect("read")
        .expect("summarised");
    let ms = |v: i64| {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(v) * 1_000_000).expect("time")
    };
    assert_eq!(got.user_id, user);
    assert_eq!(got.opened_at, ms(t0));
    assert_eq!(got.closed_at, ms(t0 + 12_000));
    assert_eq!(got.duration_ms, 12_000);
    assert_eq!(got.customer_messages, 3);
    assert_eq!(got.robot_messages, 1);
    assert_eq!(got.agent_messages, 1);
    assert_eq!(got.first_robot_answer_ms, Some(1_500));
    assert_eq!(got.first_agent_answer_ms, Some(9_000));
    assert_eq!(got.satisfaction_evaluation, Some(4));
    assert_eq!(got.robot_streams, Some(1));
    assert_eq!(got.robot_stream_chars, Some(11), "characters, not bytes");
    assert_eq!(got.queued, None);
    assert_eq!(got.transfers, None);
    assert!(summary_events(store).await.is_empty(), "not published");
    assert_eq!(
        store.summary(kind::TIM, "mall", desk).await.expect("read"),
        None,
        "asked for by no commit"
    );
}

// ---------------------------------------------------------------------------------------------
// The migration's summaries of the sessions closed before it

/// Commits [`converse`]'s conversation on a database migrated up to (not including) 0008 and
/// closes it with `close` (by hand: this relay's close would summarise, and that schema has no
/// views); then migrates and checks the summary computed.
async fn backfill<M, C, F>(store: DynStore, migrate_to_0007: M, close: C)
where
    M: std::future::Future<Output = ()>,
    C: FnOnce(String) -> F,
    F: std::future::Future<Output = ()>,
{
    migrate_to_0007.await;
    let s = converse(&store, "old").await;
    close(s.id.clone()).await;
    store.migrate().await.expect("migrate to 0008");
    let got = summary_of(&store, &s).await.expect("backfilled");
    assert_eq!(got, expected(&s, got.summarized_at));
    assert!(summary_events(&store).await.is_empty(), "nothing published");
    store.close().await;
}

#[tokio::test]
async fn the_migration_summarises_the_sessions_closed_before_it_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("old.db").display());
    let sqlite = crate::sqlite::SqliteStore::connect(&url)
        .await
        .expect("open");
    let pool = sqlite.pool().clone();
    let store =
        crate::Store::new(std::sync::Arc::new(sqlite), crate::Options::default()).expect("store");
    let p = pool.clone();
    let migrate = async move {
        sqlx::migrate!("../../migrations/sqlite")
            .run_to(7, &p)
            .await
            .expect("migrate to 0007");
    };
    let close = |id: String| async move {
        sqlx::query(
            "UPDATE sessions SET state = 'closed', closed_at = ?2, close_reason = 'customer' \
             WHERE id = ?1",
        )
        .bind(id)
        .bind(crate::unix_micros(at(70)))
        .execute(&pool)
        .await
        .expect("close by hand");
    };
    backfill(store, migrate, close).await;
}

#[tokio::test]
async fn the_migration_summarises_the_sessions_closed_before_it_postgres() {
    let Some(admin_url) = pg_admin_url().await else {
        eprintln!("CCRELAY_TEST_PG_URL=skip: PostgreSQL migration test SKIPPED");
        return;
    };
    use sqlx::Connection as _;
    let name = format!("ccrelay_test_{}", uuid::Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("admin connection");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let mut url = url::Url::parse(&admin_url).expect("admin url");
    url.set_path(&name);
    let pg = crate::postgres::PgStore::connect(url.as_str())
        .await
        .expect("open");
    let pool = pg.pool().clone();
    let store =
        crate::Store::new(std::sync::Arc::new(pg), crate::Options::default()).expect("store");
    let p = pool.clone();
    let migrate = async move {
        sqlx::migrate!("../../migrations/postgres")
            .run_to(7, &p)
            .await
            .expect("migrate to 0007");
    };
    let close = |id: String| async move {
        sqlx::query(
            "UPDATE sessions SET state = 'closed', close_reason = 'customer', \
             closed_at = 'epoch'::timestamptz + $2 * interval '1 microsecond' WHERE id = $1",
        )
        .bind(id)
        .bind(crate::unix_micros(at(70)))
        .execute(&pool)
        .await
        .expect("close by hand");
    };
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(backfill(
        store, migrate, close,
    )))
    .await;
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
