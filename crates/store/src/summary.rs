//! Session summaries (table `session_summaries`): one row per conversation with its figures — a
//! [`SessionSummary`], the contract's type, field for field.
//!
//! What each figure means is defined once per database, in SQL: the views `cec_session_summaries`
//! (a closed CEC session, from its `sessions` row, transcript, events, satisfactions and offline
//! messages) and `tim_session_summaries` (a Tencent Desk session, from its stored
//! `Desk.SessionEventNotify` callbacks and the user's robot streams) of
//! `migrations/*/0008_summaries.sql`, which also computed the summaries of the sessions closed
//! before it. docs/ANALYTICS.md says the same in words.
//!
//! A commit computes summaries after all its other rows, in the same transaction
//! ([`crate::apply`]): every CEC session it closes gets its row — whatever the commit asked — and
//! each [`SummaryRequest`] of the commit (re)computes one, inserted or replacing the session's
//! row, and, when it names a subject, publishes it as a `session.summary` event. A request for a
//! session the same commit closes is applied only if that close took effect (a session closed
//! twice is summarised once); one for a session that is not closed computes nothing.

use std::sync::LazyLock;

use time::OffsetDateTime;

use contract::payload::{Event, event_type};
pub use contract::summary::SessionSummary;

use crate::{EventRecord, Result, Session, StoreError, kind};

/// A summary a [`crate::Commit`] (re)computes: of the CEC session `session_id` (kind `cec`) or
/// of the Desk session `session_id` of Tencent app `tenant` (kind `tim`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryRequest {
    pub kind: String,
    /// The CEC tenant or the Tencent app.
    pub tenant: String,
    /// The user (which writer of group commit takes the commit; see [`crate::group`]).
    pub user_id: String,
    pub session_id: String,
    /// Where to publish the summary as a `session.summary` event (`P.cec.<t>.event.<u>`); not
    /// published without one.
    pub publish: Option<String>,
}

impl SummaryRequest {
    /// The summary of CEC session `s`, published on `subject` when given.
    pub fn cec(s: &Session, subject: Option<String>) -> Self {
        SummaryRequest {
            kind: kind::CEC.to_owned(),
            tenant: s.tenant.clone(),
            user_id: s.user_id.clone(),
            session_id: s.id.clone(),
            publish: subject,
        }
    }

    /// The summary of Desk session `session_id` of app `app` (not published).
    pub fn desk(app: &str, user_id: &str, session_id: &str) -> Self {
        SummaryRequest {
            kind: kind::TIM.to_owned(),
            tenant: app.to_owned(),
            user_id: user_id.to_owned(),
            session_id: session_id.to_owned(),
            publish: None,
        }
    }
}

/// A page of summaries ([`crate::Queries::summaries_page`]): those with `since <= closed_at <
/// until`, of one kind, tenant and user or all, ordered by `(closed_at, session_id)`, after
/// `after`, at most `limit`. Reading page after page ([`SummaryPage::next`]) keeps memory
/// constant over any number of summaries.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryPage {
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub kind: Option<String>,
    pub tenant: Option<String>,
    pub user_id: Option<String>,
    /// `(closed_at, session_id)` of the last summary of the previous page.
    pub after: Option<(OffsetDateTime, String)>,
    pub limit: i64,
}

impl SummaryPage {
    /// The first page of `limit` summaries, no filter.
    pub fn first(limit: i64) -> Self {
        SummaryPage {
            since: None,
            until: None,
            kind: None,
            tenant: None,
            user_id: None,
            after: None,
            limit,
        }
    }

    /// The page after the one that ended with `last`.
    pub fn next(&mut self, last: &SessionSummary) {
        self.after = Some((last.closed_at, last.session_id.clone()));
    }

    /// `after` as a text cursor (`summaries.list`'s `next`): `<closed_at µs>:<session_id>`.
    pub fn cursor(last: &SessionSummary) -> String {
        format!("{}:{}", crate::unix_micros(last.closed_at), last.session_id)
    }

    /// The position a [`SummaryPage::cursor`] names; `None` if `text` is not one.
    pub fn parse_cursor(text: &str) -> Option<(OffsetDateTime, String)> {
        let (us, id) = text.split_once(':')?;
        let at = crate::from_unix_micros(us.parse().ok()?).ok()?;
        Some((at, id.to_owned()))
    }

    /// Its statement, the numbered parameters written by `mark`, with the arguments in order:
    /// only the filters it has, so that each reads by the index that fits.
    pub(crate) fn query(&self, mark: fn(usize) -> String) -> (String, Vec<Arg>) {
        let mut args = Vec::new();
        let mut filters = Vec::new();
        let bind = |args: &mut Vec<Arg>, a: Arg| {
            args.push(a);
            mark(args.len())
        };
        if let Some(t) = self.since {
            filters.push(format!("closed_at >= {}", bind(&mut args, Arg::Time(t))));
        }
        if let Some(t) = self.until {
            filters.push(format!("closed_at < {}", bind(&mut args, Arg::Time(t))));
        }
        for (column, value) in [
            ("kind", &self.kind),
            ("tenant", &self.tenant),
            ("user_id", &self.user_id),
        ] {
            if let Some(v) = value {
                let m = bind(&mut args, Arg::Text(v.clone()));
                filters.push(format!("{column} = {m}"));
            }
        }
        if let Some((at, id)) = &self.after {
            let a = bind(&mut args, Arg::Time(*at));
            let i = bind(&mut args, Arg::Text(id.clone()));
            filters.push(format!(
                "(closed_at > {a} OR (closed_at = {a} AND session_id > {i}))"
            ));
        }
        let limit = bind(&mut args, Arg::Int(self.limit.max(0)));
        let filter = if filters.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", filters.join(" AND "))
        };
        let sql = format!(
            "SELECT {} FROM session_summaries {filter} ORDER BY closed_at, session_id LIMIT {limit}",
            *COLUMN_LIST
        );
        (sql, args)
    }
}

/// An argument of [`SummaryPage::query`], bound by each backend its way.
pub(crate) enum Arg {
    Time(OffsetDateTime),
    Text(String),
    Int(i64),
}

/// The columns of `session_summaries`, in the order of the table (and of [`SessionSummary`]).
pub(crate) const COLUMNS: [&str; 32] = [
    "kind",
    "tenant",
    "user_id",
    "session_id",
    "opened_at",
    "closed_at",
    "duration_ms",
    "close_reason",
    "channel_config_id",
    "locale",
    "queued",
    "queue_wait_ms",
    "max_queue_position",
    "first_robot_answer_ms",
    "first_agent_answer_ms",
    "agent_response_median_ms",
    "customer_messages",
    "robot_messages",
    "agent_messages",
    "system_messages",
    "files_from_customer",
    "files_to_customer",
    "transfers",
    "satisfaction_evaluation",
    "satisfaction_comment",
    "robot_feedback_positive",
    "robot_feedback_negative",
    "leave_messages",
    "offline_messages",
    "robot_streams",
    "robot_stream_chars",
    "summarized_at",
];

/// `kind, tenant, …, summarized_at`.
pub(crate) static COLUMN_LIST: LazyLock<String> = LazyLock::new(|| COLUMNS.join(", "));

/// The statement that (re)computes summaries from `view` (one of the two views) for the rows
/// `filter` selects (it names the view `v`), stamped `at` (a parameter): inserted, or replacing
/// the session's row, and returned.
pub(crate) fn upsert(view: &str, filter: &str, at: &str) -> String {
    let figures: Vec<String> = COLUMNS[..COLUMNS.len() - 1]
        .iter()
        .map(|c| format!("v.{c}"))
        .collect();
    let set: Vec<String> = COLUMNS[4..]
        .iter()
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO session_summaries ({cols}) SELECT {figures}, {at} FROM {view} AS v \
         WHERE {filter} ON CONFLICT (kind, tenant, session_id) DO UPDATE SET {set} \
         RETURNING {cols}",
        cols = *COLUMN_LIST,
        figures = figures.join(", "),
        set = set.join(", "),
    )
}

/// A row's columns as each backend reads them: what [`from_row`] needs.
pub(crate) trait Columns {
    fn text(&self, column: &str) -> Result<Option<String>>;
    fn int(&self, column: &str) -> Result<Option<i64>>;
    fn flag(&self, column: &str) -> Result<Option<bool>>;
    fn time(&self, column: &str) -> Result<Option<OffsetDateTime>>;
}

fn required<T>(v: Option<T>, column: &str) -> Result<T> {
    v.ok_or_else(|| StoreError::Corrupt(format!("session_summaries.{column} is NULL")))
}

/// A summary from a row of `session_summaries` (its [`COLUMNS`]).
pub(crate) fn from_row(r: &impl Columns) -> Result<SessionSummary> {
    let text = |c: &str| r.text(c).and_then(|v| required(v, c));
    let int = |c: &str| r.int(c).and_then(|v| required(v, c));
    let time = |c: &str| r.time(c).and_then(|v| required(v, c));
    Ok(SessionSummary {
        kind: text("kind")?,
        tenant: text("tenant")?,
        user_id: text("user_id")?,
        session_id: text("session_id")?,
        opened_at: time("opened_at")?,
        closed_at: time("closed_at")?,
        duration_ms: int("duration_ms")?,
        close_reason: r.text("close_reason")?,
        channel_config_id: r.text("channel_config_id")?,
        locale: r.text("locale")?,
        queued: r.flag("queued")?,
        queue_wait_ms: r.int("queue_wait_ms")?,
        max_queue_position: r.int("max_queue_position")?,
        first_robot_answer_ms: r.int("first_robot_answer_ms")?,
        first_agent_answer_ms: r.int("first_agent_answer_ms")?,
        agent_response_median_ms: r.int("agent_response_median_ms")?,
        customer_messages: int("customer_messages")?,
        robot_messages: int("robot_messages")?,
        agent_messages: int("agent_messages")?,
        system_messages: r.int("system_messages")?,
        files_from_customer: r.int("files_from_customer")?,
        files_to_customer: r.int("files_to_customer")?,
        transfers: r.int("transfers")?,
        satisfaction_evaluation: r.int("satisfaction_evaluation")?,
        satisfaction_comment: r.text("satisfaction_comment")?,
        robot_feedback_positive: r.int("robot_feedback_positive")?,
        robot_feedback_negative: r.int("robot_feedback_negative")?,
        leave_messages: r.int("leave_messages")?,
        offline_messages: r.int("offline_messages")?,
        robot_streams: r.int("robot_streams")?,
        robot_stream_chars: r.int("robot_stream_chars")?,
        summarized_at: time("summarized_at")?,
    })
}

/// The `session.summary` event of `s`, to publish on `subject`: `sessionId` and the whole
/// summary under `summary`.
pub(crate) fn event(s: &SessionSummary, subject: String) -> EventRecord {
    let summary = serde_json::to_value(s).unwrap_or(serde_json::Value::Null);
    let ev = Event::new(event_type::SESSION_SUMMARY, true)
        .for_user(&s.tenant, &s.user_id)
        .with("sessionId", s.session_id.as_str())
        .with("summary", summary);
    // Only a CEC session is a row of `sessions` (which the event's session_id refers to).
    let session_id = (s.kind == kind::CEC).then_some(s.session_id.as_str());
    crate::event_record(&s.kind, subject, session_id, &ev)
}
