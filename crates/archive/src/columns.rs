//! What each table's export holds: its columns, each a name, a type and how a stored row gives
//! its value ([`Column`]), and the read of the store that pages through the table in time order
//! ([`Table`]).
//!
//! Every format writes the same columns, under the same (the database's) names and in the same
//! order, so one query reads a JSON lines, CSV or Parquet export alike. The types ([`ColType`])
//! are those an analyst computes with: scores are integers, flags booleans, times timestamps in
//! UTC (microseconds, as stored), JSON bodies text. Columns the relay keeps for itself (a token,
//! a JetStream sequence, the table's row id) are not exported.
//!
//! Adding a table to `ccrelay export` is: a [`store::Queries`] read of its pages in time order
//! (keyset-paginated), a column spec and a [`Table`] here, a [`crate::What`] for it, and its arm
//! in [`crate::export::export`]. The session summaries came that way: they are read with
//! `Queries::summaries_page` in `(closed_at, session_id)` order, and ordered (and cut into parts)
//! by `closed_at`.

use std::future::Future;
use std::pin::Pin;

use store::{
    EventRecord, ExportKey, ExportPage, Keyed, MessageRow, OfflineRow, SatisfactionRow,
    SessionSummary, Store, SummaryPage,
};
use time::OffsetDateTime;

use crate::What;

/// The type of an exported column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    /// Text (Parquet: UTF-8 string).
    Text,
    /// A 64-bit integer (Parquet: INT64).
    Int,
    /// true or false (Parquet: BOOLEAN).
    Bool,
    /// A time in UTC at microsecond precision (Parquet: TIMESTAMP(MICROS, UTC); text formats:
    /// RFC 3339, `2026-12-01T08:00:00.123456Z`).
    Timestamp,
    /// A JSON document (Parquet and CSV: its text; JSON lines: the JSON value itself).
    Json,
}

/// One value of a row, as its column's type has it.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'r> {
    Null,
    Text(&'r str),
    Int(i64),
    Bool(bool),
    Timestamp(OffsetDateTime),
    Json(&'r str),
}

impl<'r> From<Option<&'r str>> for Cell<'r> {
    /// A nullable text column's value.
    fn from(s: Option<&'r str>) -> Self {
        s.map_or(Cell::Null, Cell::Text)
    }
}

/// One exported column of rows `R`.
pub struct Column<R> {
    /// Its name in every format: the database's column name.
    pub name: &'static str,
    pub ty: ColType,
    /// Whether the value may be missing (SQL NULL). A column that is not nullable never gives
    /// [`Cell::Null`] (Parquet: a required field).
    pub nullable: bool,
    /// The value of a row; a [`Cell`] of `ty`, or [`Cell::Null`] when `nullable`.
    pub get: fn(&R) -> Cell<'_>,
}

impl<R> std::fmt::Debug for Column<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Column")
            .field("name", &self.name)
            .field("ty", &self.ty)
            .field("nullable", &self.nullable)
            .finish()
    }
}

/// A nullable integer's value.
fn int(v: Option<i64>) -> Cell<'static> {
    v.map_or(Cell::Null, Cell::Int)
}

/// A column that always has a value.
const fn req<R>(name: &'static str, ty: ColType, get: fn(&R) -> Cell<'_>) -> Column<R> {
    Column {
        name,
        ty,
        nullable: false,
        get,
    }
}

/// A column whose value may be missing.
const fn opt<R>(name: &'static str, ty: ColType, get: fn(&R) -> Cell<'_>) -> Column<R> {
    Column {
        name,
        ty,
        nullable: true,
        get,
    }
}

use ColType::{Bool, Int, Json, Text, Timestamp};

/// The transcript (`messages`). The same columns, in the same order, as the CSV of earlier
/// versions.
pub static MESSAGE_COLUMNS: &[Column<MessageRow>] = &[
    req("relay_id", Text, |r| Cell::Text(&r.relay_id)),
    req("kind", Text, |r| Cell::Text(&r.kind)),
    req("tenant", Text, |r| Cell::Text(&r.tenant)),
    req("user_id", Text, |r| Cell::Text(&r.user_id)),
    opt("session_id", Text, |r| r.session_id.as_deref().into()),
    req("direction", Text, |r| Cell::Text(r.direction.as_str())),
    opt("message_id", Text, |r| r.message_id.as_deref().into()),
    opt("message_code", Text, |r| r.message_code.as_deref().into()),
    opt("source_type", Text, |r| r.source_type.as_deref().into()),
    opt("control_type", Text, |r| r.control_type.as_deref().into()),
    opt("media_type", Text, |r| r.media_type.as_deref().into()),
    opt("content", Text, |r| r.content.as_deref().into()),
    req("status", Text, |r| Cell::Text(r.status.as_str())),
    opt("result_code", Text, |r| r.result_code.as_deref().into()),
    opt("result_desc", Text, |r| r.result_desc.as_deref().into()),
    req("created_at", Timestamp, |r| Cell::Timestamp(r.created_at)),
    req("body", Json, |r| Cell::Json(&r.body)),
];

/// Every event the relay emitted (`events`). An event refusing something that names no tenant
/// (on `P.error`) has no tenant or user.
pub static EVENT_COLUMNS: &[Column<EventRecord>] = &[
    req("relay_id", Text, |r| Cell::Text(&r.relay_id)),
    req("kind", Text, |r| Cell::Text(&r.kind)),
    opt("tenant", Text, |r| r.tenant.as_deref().into()),
    opt("user_id", Text, |r| r.user_id.as_deref().into()),
    opt("session_id", Text, |r| r.session_id.as_deref().into()),
    req("event_type", Text, |r| Cell::Text(&r.event_type)),
    req("ok", Bool, |r| Cell::Bool(r.ok)),
    req("subject", Text, |r| Cell::Text(&r.subject)),
    req("created_at", Timestamp, |r| Cell::Timestamp(r.created_at)),
    req("body", Json, |r| Cell::Json(&r.body)),
];

/// Customer evaluations and robot feedback (`satisfactions`). `score` is an integer: the
/// evaluation 1–5, or the robot feedback 1 (satisfied) / 0 (not); the store keeps the upstream's
/// text, which the relay checked to be one of those before storing it (anything else would be
/// exported as null).
pub static SATISFACTION_COLUMNS: &[Column<SatisfactionRow>] = &[
    req("relay_id", Text, |r| Cell::Text(&r.relay_id)),
    req("kind", Text, |r| Cell::Text(&r.kind)),
    req("tenant", Text, |r| Cell::Text(&r.tenant)),
    req("user_id", Text, |r| Cell::Text(&r.user_id)),
    opt("session_id", Text, |r| r.session_id.as_deref().into()),
    req("source", Text, |r| Cell::Text(r.source.as_str())),
    opt("score", Int, |r| {
        r.score.trim().parse().map_or(Cell::Null, Cell::Int)
    }),
    opt("comment", Text, |r| r.comment.as_deref().into()),
    opt("inter_idx", Text, |r| r.inter_idx.as_deref().into()),
    req("result_code", Text, |r| Cell::Text(&r.result_code)),
    opt("result_desc", Text, |r| r.result_desc.as_deref().into()),
    req("created_at", Timestamp, |r| Cell::Timestamp(r.created_at)),
];

/// Offline messages and leave-messages (`offline_messages`).
pub static OFFLINE_COLUMNS: &[Column<OfflineRow>] = &[
    req("relay_id", Text, |r| Cell::Text(&r.relay_id)),
    req("kind", Text, |r| Cell::Text(&r.kind)),
    req("tenant", Text, |r| Cell::Text(&r.tenant)),
    req("user_id", Text, |r| Cell::Text(&r.user_id)),
    opt("session_id", Text, |r| r.session_id.as_deref().into()),
    req("source", Text, |r| Cell::Text(r.source.as_str())),
    opt("message_id", Text, |r| r.message_id.as_deref().into()),
    opt("caller", Text, |r| r.caller.as_deref().into()),
    req("content", Text, |r| Cell::Text(&r.content)),
    opt("tip_text", Text, |r| r.tip_text.as_deref().into()),
    req("result_code", Text, |r| Cell::Text(&r.result_code)),
    opt("result_desc", Text, |r| r.result_desc.as_deref().into()),
    req("created_at", Timestamp, |r| Cell::Timestamp(r.created_at)),
];

/// One row per conversation (`session_summaries`): the figures docs/ANALYTICS.md defines, under
/// the table's names, in its order. Durations are integer milliseconds; `queued` a boolean.
pub static SUMMARY_COLUMNS: &[Column<SessionSummary>] = &[
    req("kind", Text, |r| Cell::Text(&r.kind)),
    req("tenant", Text, |r| Cell::Text(&r.tenant)),
    req("user_id", Text, |r| Cell::Text(&r.user_id)),
    req("session_id", Text, |r| Cell::Text(&r.session_id)),
    req("opened_at", Timestamp, |r| Cell::Timestamp(r.opened_at)),
    req("closed_at", Timestamp, |r| Cell::Timestamp(r.closed_at)),
    req("duration_ms", Int, |r| Cell::Int(r.duration_ms)),
    opt("close_reason", Text, |r| r.close_reason.as_deref().into()),
    opt("channel_config_id", Text, |r| {
        r.channel_config_id.as_deref().into()
    }),
    opt("locale", Text, |r| r.locale.as_deref().into()),
    opt("queued", Bool, |r| r.queued.map_or(Cell::Null, Cell::Bool)),
    opt("queue_wait_ms", Int, |r| int(r.queue_wait_ms)),
    opt("max_queue_position", Int, |r| int(r.max_queue_position)),
    opt("first_robot_answer_ms", Int, |r| {
        int(r.first_robot_answer_ms)
    }),
    opt("first_agent_answer_ms", Int, |r| {
        int(r.first_agent_answer_ms)
    }),
    opt("agent_response_median_ms", Int, |r| {
        int(r.agent_response_median_ms)
    }),
    req("customer_messages", Int, |r| Cell::Int(r.customer_messages)),
    req("robot_messages", Int, |r| Cell::Int(r.robot_messages)),
    req("agent_messages", Int, |r| Cell::Int(r.agent_messages)),
    opt("system_messages", Int, |r| int(r.system_messages)),
    opt("files_from_customer", Int, |r| int(r.files_from_customer)),
    opt("files_to_customer", Int, |r| int(r.files_to_customer)),
    opt("transfers", Int, |r| int(r.transfers)),
    opt("satisfaction_evaluation", Int, |r| {
        int(r.satisfaction_evaluation)
    }),
    opt("satisfaction_comment", Text, |r| {
        r.satisfaction_comment.as_deref().into()
    }),
    opt("robot_feedback_positive", Int, |r| {
        int(r.robot_feedback_positive)
    }),
    opt("robot_feedback_negative", Int, |r| {
        int(r.robot_feedback_negative)
    }),
    opt("leave_messages", Int, |r| int(r.leave_messages)),
    opt("offline_messages", Int, |r| int(r.offline_messages)),
    opt("robot_streams", Int, |r| int(r.robot_streams)),
    opt("robot_stream_chars", Int, |r| int(r.robot_stream_chars)),
    req("summarized_at", Timestamp, |r| {
        Cell::Timestamp(r.summarized_at)
    }),
];

/// A future the store's reads return (as `async_trait` boxes them).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The rows an export asks the store for: those stored in `[since, until)`, of one tenant or
/// all, a page of at most `limit` at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub since: OffsetDateTime,
    pub until: OffsetDateTime,
    pub tenant: Option<String>,
    pub limit: i64,
}

impl Span {
    /// The store's [`ExportPage`] after the row whose key is `after` (from the first without).
    fn page(&self, after: Option<ExportKey>) -> ExportPage {
        let mut page = ExportPage::first(self.since, self.until, self.tenant.clone(), self.limit);
        if let Some(key) = after {
            page.next(key);
        }
        page
    }
}

/// How a table's pages are read: the page of `span` after the item given (from the first
/// without), in time order. An item is what the store's query returns (the row with its key).
pub type ReadPage<I> =
    for<'a> fn(&'a Store, &'a Span, Option<&'a I>) -> BoxFuture<'a, store::Result<Vec<I>>>;

/// One exportable table: the read of its pages, and its columns.
pub struct Table<I: 'static, R: 'static> {
    pub what: What,
    pub columns: &'static [Column<R>],
    pub read: ReadPage<I>,
    /// The row an item holds.
    pub row: fn(&I) -> &R,
    /// The time an item is ordered by (and parts are cut at).
    pub time: fn(&I) -> OffsetDateTime,
}

/// A table read with its store query `$query` (one of the `export_*` reads of [`ExportPage`]s).
macro_rules! keyed_table {
    ($what:expr, $columns:expr, $query:ident) => {
        Table {
            what: $what,
            columns: $columns,
            read: |store, span, after| {
                Box::pin(async move { store.$query(&span.page(after.map(|k| k.key))).await })
            },
            row: |k| &k.row,
            time: |k| k.key.at,
        }
    };
}

pub static MESSAGES: Table<Keyed<MessageRow>, MessageRow> =
    keyed_table!(What::Messages, MESSAGE_COLUMNS, export_messages);
pub static EVENTS: Table<Keyed<EventRecord>, EventRecord> =
    keyed_table!(What::Events, EVENT_COLUMNS, export_events);
pub static SATISFACTION: Table<Keyed<SatisfactionRow>, SatisfactionRow> = keyed_table!(
    What::Satisfaction,
    SATISFACTION_COLUMNS,
    export_satisfactions
);
pub static OFFLINE: Table<Keyed<OfflineRow>, OfflineRow> =
    keyed_table!(What::Offline, OFFLINE_COLUMNS, export_offline);

/// The session summaries, by `closed_at`, read with the store's own paging of them.
pub static SUMMARIES: Table<SessionSummary, SessionSummary> = Table {
    what: What::Summaries,
    columns: SUMMARY_COLUMNS,
    read: |store, span, after| {
        Box::pin(async move {
            let mut page = SummaryPage::first(span.limit);
            page.since = Some(span.since);
            page.until = Some(span.until);
            page.tenant = span.tenant.clone();
            if let Some(last) = after {
                page.next(last);
            }
            store.summaries_page(&page).await
        })
    },
    row: |s| s,
    time: |s| s.closed_at,
};

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use store::{Direction, MessageStatus, OfflineSource, SatisfactionSource};
    use time::macros::datetime;

    pub(crate) fn message() -> MessageRow {
        MessageRow {
            relay_id: "r1".into(),
            kind: "cec".into(),
            tenant: "acme".into(),
            user_id: "ann".into(),
            session_id: None,
            direction: Direction::Down,
            message_id: None,
            message_code: Some("c1".into()),
            source_type: Some("AGENT".into()),
            control_type: Some("CHAT".into()),
            media_type: Some("TEXT".into()),
            content: Some("hi, \"you\"\nthere".into()),
            body: r#"{"content": "hi", "n": 1}"#.into(),
            status: MessageStatus::Received,
            result_code: None,
            result_desc: None,
            stream_seq: Some(7),
            created_at: datetime!(2026-12-01 08:00:00.123456 UTC),
        }
    }

    pub(crate) fn event() -> EventRecord {
        EventRecord {
            relay_id: "e1".into(),
            kind: "cec".into(),
            tenant: None,
            user_id: None,
            session_id: None,
            event_type: "error".into(),
            ok: false,
            body: r#"{"type":"error"}"#.into(),
            subject: "ccrelay.error".into(),
            created_at: datetime!(2026-12-01 08:00 UTC),
        }
    }

    pub(crate) fn satisfaction(score: &str) -> SatisfactionRow {
        SatisfactionRow {
            relay_id: "s1".into(),
            kind: "cec".into(),
            tenant: "acme".into(),
            user_id: "ann".into(),
            session_id: Some("sess".into()),
            source: SatisfactionSource::Customer,
            score: score.into(),
            comment: Some("=1+1".into()),
            inter_idx: None,
            result_code: "0".into(),
            result_desc: None,
            created_at: datetime!(2026-12-01 08:00 UTC),
        }
    }

    pub(crate) fn offline() -> OfflineRow {
        OfflineRow {
            relay_id: "o1".into(),
            kind: "cec".into(),
            tenant: "acme".into(),
            user_id: "ann".into(),
            session_id: None,
            source: OfflineSource::LeaveMessage,
            message_id: None,
            caller: Some("1386667777".into()),
            content: "call me".into(),
            tip_text: None,
            result_code: "0".into(),
            result_desc: Some("ok".into()),
            created_at: datetime!(2026-12-01 08:00 UTC),
        }
    }

    pub(crate) fn summary() -> SessionSummary {
        SessionSummary {
            kind: "cec".into(),
            tenant: "acme".into(),
            user_id: "ann".into(),
            session_id: "sess".into(),
            opened_at: datetime!(2026-12-01 08:00 UTC),
            closed_at: datetime!(2026-12-01 08:10 UTC),
            duration_ms: 600_000,
            close_reason: Some("customer".into()),
            channel_config_id: Some("1011".into()),
            locale: None,
            queued: Some(true),
            queue_wait_ms: Some(42_000),
            max_queue_position: Some(3),
            first_robot_answer_ms: Some(900),
            first_agent_answer_ms: Some(50_000),
            agent_response_median_ms: None,
            customer_messages: 4,
            robot_messages: 2,
            agent_messages: 3,
            system_messages: Some(1),
            files_from_customer: Some(0),
            files_to_customer: Some(0),
            transfers: Some(1),
            satisfaction_evaluation: Some(5),
            satisfaction_comment: None,
            robot_feedback_positive: Some(0),
            robot_feedback_negative: Some(1),
            leave_messages: Some(0),
            offline_messages: Some(0),
            robot_streams: None,
            robot_stream_chars: None,
            summarized_at: datetime!(2026-12-01 08:10:00.5 UTC),
        }
    }

    /// Every column of `row` gives a value of its type, or null where it may.
    fn cells_match_their_types<R>(columns: &[Column<R>], row: &R) {
        let mut names: Vec<_> = columns.iter().map(|c| c.name).collect();
        for c in columns {
            let cell = (c.get)(row);
            let fits = match (&cell, c.ty) {
                (Cell::Null, _) => c.nullable,
                (Cell::Text(_), Text)
                | (Cell::Int(_), Int)
                | (Cell::Bool(_), Bool)
                | (Cell::Timestamp(_), Timestamp)
                | (Cell::Json(_), Json) => true,
                _ => false,
            };
            assert!(fits, "{}: {cell:?} in a {:?} column", c.name, c.ty);
            assert!(
                c.name
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch == '_'),
                "{}",
                c.name
            );
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), columns.len(), "names are unique");
    }

    #[test]
    fn every_column_gives_a_value_of_its_type() {
        cells_match_their_types(MESSAGE_COLUMNS, &message());
        cells_match_their_types(EVENT_COLUMNS, &event());
        cells_match_their_types(SATISFACTION_COLUMNS, &satisfaction("5"));
        cells_match_their_types(SATISFACTION_COLUMNS, &satisfaction("?"));
        cells_match_their_types(OFFLINE_COLUMNS, &offline());
        cells_match_their_types(SUMMARY_COLUMNS, &summary());
    }

    fn cell<'r, R>(columns: &[Column<R>], row: &'r R, name: &str) -> Cell<'r> {
        let c = columns.iter().find(|c| c.name == name).expect(name);
        (c.get)(row)
    }

    #[test]
    fn rows_map_to_their_columns() {
        let m = message();
        assert_eq!(cell(MESSAGE_COLUMNS, &m, "direction"), Cell::Text("down"));
        assert_eq!(cell(MESSAGE_COLUMNS, &m, "status"), Cell::Text("received"));
        assert_eq!(cell(MESSAGE_COLUMNS, &m, "session_id"), Cell::Null);
        assert_eq!(
            cell(MESSAGE_COLUMNS, &m, "created_at"),
            Cell::Timestamp(datetime!(2026-12-01 08:00:00.123456 UTC))
        );
        assert_eq!(cell(MESSAGE_COLUMNS, &m, "body"), Cell::Json(&m.body));
        assert!(
            MESSAGE_COLUMNS.iter().all(|c| c.name != "stream_seq"),
            "internal"
        );
        let names: Vec<_> = MESSAGE_COLUMNS.iter().map(|c| c.name).collect();
        assert_eq!(
            names.join(","),
            "relay_id,kind,tenant,user_id,session_id,direction,message_id,message_code,\
             source_type,control_type,media_type,content,status,result_code,result_desc,\
             created_at,body",
            "the CSV header of earlier versions"
        );

        let e = event();
        assert_eq!(cell(EVENT_COLUMNS, &e, "ok"), Cell::Bool(false));
        assert_eq!(cell(EVENT_COLUMNS, &e, "tenant"), Cell::Null);

        assert_eq!(
            cell(SATISFACTION_COLUMNS, &satisfaction("5"), "score"),
            Cell::Int(5)
        );
        assert_eq!(
            cell(SATISFACTION_COLUMNS, &satisfaction("0"), "score"),
            Cell::Int(0)
        );
        assert_eq!(
            cell(SATISFACTION_COLUMNS, &satisfaction("great"), "score"),
            Cell::Null
        );
        assert_eq!(
            cell(SATISFACTION_COLUMNS, &satisfaction("5"), "source"),
            Cell::Text("customer")
        );

        let o = offline();
        assert_eq!(
            cell(OFFLINE_COLUMNS, &o, "source"),
            Cell::Text("leave_message")
        );
        assert_eq!(
            cell(OFFLINE_COLUMNS, &o, "caller"),
            Cell::Text("1386667777")
        );
    }

    #[test]
    fn each_table_is_its_what() {
        assert_eq!(MESSAGES.what, What::Messages);
        assert_eq!(EVENTS.what, What::Events);
        assert_eq!(SATISFACTION.what, What::Satisfaction);
        assert_eq!(OFFLINE.what, What::Offline);
        assert_eq!(SUMMARIES.what, What::Summaries);
    }
}
