//! The summary of one conversation ([`SessionSummary`]): what the `session.summary` event carries
//! under `summary`, what `summaries.list` answers, and a row of the store's `session_summaries`
//! table, field for field. docs/ANALYTICS.md ("Session summaries") defines every field; the
//! store computes them (`migrations/*/0008_summaries.sql`).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// One session's figures. Durations are whole milliseconds (truncated); a figure that does not
/// apply — no agent ever answered, a Tencent session has no queue the relay sees — is `None`
/// (JSON `null`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionSummary {
    /// `cec` (a Huawei CEC session) or `tim` (a Tencent Desk session).
    pub kind: String,
    /// The CEC tenant or the Tencent app.
    pub tenant: String,
    pub user_id: String,
    /// The relay's session id (CEC) or Desk's `SessionId` (Tencent).
    pub session_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
    /// When it closed (CEC); its latest event so far (Tencent).
    #[serde(with = "time::serde::rfc3339")]
    pub closed_at: OffsetDateTime,
    pub duration_ms: i64,
    /// `customer`, `agent`, `idle` or `error` (CEC).
    pub close_reason: Option<String>,
    pub channel_config_id: Option<String>,
    /// The applyToken locale of the CONNECT that opened it.
    pub locale: Option<String>,
    /// Whether the customer waited in an agent queue.
    pub queued: Option<bool>,
    /// From the first transfer request (or "Queuing..." answer) to the first agent message.
    pub queue_wait_ms: Option<i64>,
    /// The largest queue position seen (queryQueueInfo).
    pub max_queue_position: Option<i64>,
    /// From the opening to the first robot message.
    pub first_robot_answer_ms: Option<i64>,
    /// From the opening to the first agent message.
    pub first_agent_answer_ms: Option<i64>,
    /// The median of the agents' responses to the customer's turns.
    pub agent_response_median_ms: Option<i64>,
    pub customer_messages: i64,
    pub robot_messages: i64,
    pub agent_messages: i64,
    pub system_messages: Option<i64>,
    pub files_from_customer: Option<i64>,
    pub files_to_customer: Option<i64>,
    /// Transfer requests (TRANS2AGENT) the contact center accepted.
    pub transfers: Option<i64>,
    /// The customer's evaluation, 1 to 5.
    pub satisfaction_evaluation: Option<i64>,
    pub satisfaction_comment: Option<String>,
    pub robot_feedback_positive: Option<i64>,
    pub robot_feedback_negative: Option<i64>,
    pub leave_messages: Option<i64>,
    pub offline_messages: Option<i64>,
    /// Tencent: the robot streams the relay sent the user during the session.
    pub robot_streams: Option<i64>,
    /// Tencent: their assembled text's length, in characters.
    pub robot_stream_chars: Option<i64>,
    /// When these figures were computed.
    #[serde(with = "time::serde::rfc3339")]
    pub summarized_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_camel_case_and_absent_figures_null() {
        let s = SessionSummary {
            kind: "cec".into(),
            tenant: "acme".into(),
            user_id: "u1".into(),
            session_id: "s1".into(),
            opened_at: OffsetDateTime::UNIX_EPOCH,
            closed_at: OffsetDateTime::UNIX_EPOCH,
            duration_ms: 0,
            close_reason: Some("customer".into()),
            channel_config_id: None,
            locale: None,
            queued: Some(false),
            queue_wait_ms: None,
            max_queue_position: None,
            first_robot_answer_ms: Some(12),
            first_agent_answer_ms: None,
            agent_response_median_ms: None,
            customer_messages: 1,
            robot_messages: 1,
            agent_messages: 0,
            system_messages: Some(0),
            files_from_customer: Some(0),
            files_to_customer: Some(0),
            transfers: Some(0),
            satisfaction_evaluation: None,
            satisfaction_comment: None,
            robot_feedback_positive: Some(0),
            robot_feedback_negative: Some(0),
            leave_messages: Some(0),
            offline_messages: Some(0),
            robot_streams: None,
            robot_stream_chars: None,
            summarized_at: OffsetDateTime::UNIX_EPOCH,
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["firstRobotAnswerMs"], 12);
        assert_eq!(v["queueWaitMs"], serde_json::Value::Null);
        assert_eq!(v["closedAt"], "1970-01-01T00:00:00Z");
        let back: SessionSummary = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}
