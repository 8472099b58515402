//! What a customer leaves behind: saveSatisfaction (doc §6), doLeaveMessage (§15),
//! v1/robot/feedbacksatisfaction (§17), and the phrase suggestions of queryPhraseByKeyword
//! (§10). Everything accepted is recorded for assertions ([`Simulator::satisfactions`] …).

use std::sync::Mutex;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;
use serde_json::{Map, Value};

use super::Simulator;
use super::auth::{Needs, bad_request, code_desc, json_renewed, session};
use super::faults::{Endpoint, lock};
use ::cec::wire::{CHANNEL_WEB, result_code};

const SATISFACTION_OK: &str = "Save satisfaction success!";
const SATISFACTION_NO_CALL: &str = "The callIdString obtained failed!";
const SATISFACTION_FAILED: &str = "Save satisfaction failed";
/// `comment` must be shorter than this many characters.
const COMMENT_MAX_CHARS: usize = 512;
/// `feedbackContent` may be at most this many bytes.
const FEEDBACK_CONTENT_MAX_BYTES: usize = 64;
/// resultCode of a dissatisfied robot feedback without `feedbackContent`.
const FEEDBACK_CONTENT_EMPTY: &str = "30000000008";

/// A satisfaction rating saveSatisfaction accepted ([`Simulator::satisfactions`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Satisfaction {
    pub user_id: String,
    /// The `callId` of the user's latest session, which the rating is for.
    pub call_id: String,
    /// 1 to 5.
    pub evaluation: u8,
    pub comment: String,
    pub channel_config_id: String,
}

/// A message doLeaveMessage accepted ([`Simulator::leave_messages`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaveMessage {
    /// The user the ccmessaging-token was applied for.
    pub user_id: String,
    /// The body's `callId` (the document calls it the user's id).
    pub call_id: String,
    /// The number to call back.
    pub caller: String,
    pub leave_message: String,
}

/// A robot feedback v1/robot/feedbacksatisfaction accepted ([`Simulator::robot_feedbacks`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RobotFeedback {
    /// `from`.
    pub user_id: String,
    /// 1 satisfied, 0 dissatisfied.
    pub feedback: u8,
    pub feedback_content: Option<String>,
    pub inter_idx: String,
}

/// Everything recorded, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Records {
    pub(crate) satisfactions: Mutex<Vec<Satisfaction>>,
    pub(crate) leave_messages: Mutex<Vec<LeaveMessage>>,
    pub(crate) robot_feedbacks: Mutex<Vec<RobotFeedback>>,
}

/// The routes of this module, paths as documented.
pub(crate) fn routes() -> Router<Simulator> {
    Router::new()
        .route(
            "/apiaccess/ccmessaging/saveSatisfaction",
            post(save_satisfaction),
        )
        .route("/apiaccess/ccmessaging/doLeaveMessage", post(leave_message))
        .route(
            "/apiaccess/ccmessaging/v1/robot/feedbacksatisfaction",
            post(robot_feedback),
        )
        .route(
            "/apiaccess/ccmessaging/queryPhraseByKeyword",
            post(query_phrase),
        )
}

/// The body as a JSON object, if it is one.
fn object(body: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

const NOT_AN_OBJECT: &str = "body is not a JSON object";

/// A string field, if present and a string.
fn text<'m>(map: &'m Map<String, Value>, key: &str) -> Option<&'m str> {
    map.get(key).and_then(Value::as_str)
}

async fn save_satisfaction(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sim.call(Endpoint::SaveSatisfaction, move |sim| {
        let Some(mut map) = object(&body) else {
            return bad_request(NOT_AN_OBJECT);
        };
        // Table 6-4 wraps the fields in `satisfication`; the sample sends them flat. Both work.
        if let Some(Value::Object(inner)) = map
            .remove("satisfication")
            .or_else(|| map.remove("satisfaction"))
        {
            map = inner;
        }
        let cfg = &sim.inner.cfg;
        let evaluation = text(&map, "evaluation")
            .and_then(|e| e.parse::<u8>().ok())
            .filter(|e| (1..=5).contains(e));
        let comment = text(&map, "comment").filter(|c| c.chars().count() < COMMENT_MAX_CHARS);
        let named = text(&map, "userId");
        let valid = text(&map, "channel") == Some(CHANNEL_WEB)
            && text(&map, "channelConfigId") == Some(cfg.channel_config_id.as_str())
            && named.is_some();
        let answered = session(sim, &headers, Needs::All, named, |u, user_id| {
            let Some(call_id) = u.last_call_id.clone() else {
                return (result_code::FAILED, SATISFACTION_NO_CALL);
            };
            let (Some(evaluation), Some(comment), true) = (evaluation, comment, valid) else {
                return (result_code::FAILED, SATISFACTION_FAILED);
            };
            lock(&sim.inner.records.satisfactions).push(Satisfaction {
                user_id: user_id.to_owned(),
                call_id,
                evaluation,
                comment: comment.to_owned(),
                channel_config_id: cfg.channel_config_id.clone(),
            });
            (result_code::OK, SATISFACTION_OK)
        });
        match answered {
            Err(denied) => denied.into_response(),
            Ok(((code, desc), renewed)) => code_desc(code, desc, renewed),
        }
    })
    .await
}

async fn leave_message(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    sim.call(Endpoint::DoLeaveMessage, move |sim| {
        let Some(map) = object(&body) else {
            return bad_request(NOT_AN_OBJECT);
        };
        let fields = ["callId", "caller", "leaveMessage", "channel"];
        let null = fields.iter().any(|k| match map.get(*k) {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(_) => false,
        });
        let strings: Vec<&str> = fields.iter().filter_map(|k| text(&map, k)).collect();
        let answered = session(sim, &headers, Needs::All, None, |_, user_id| {
            if null {
                return (result_code::PARAM_NULL, "Param is null");
            }
            let [call_id, caller, message, channel] = strings[..] else {
                return (
                    result_code::PARAM_INVALID,
                    "Requested param validate failed.",
                );
            };
            if channel != CHANNEL_WEB {
                return (
                    result_code::PARAM_INVALID,
                    "Requested param validate failed.",
                );
            }
            lock(&sim.inner.records.leave_messages).push(LeaveMessage {
                user_id: user_id.to_owned(),
                call_id: call_id.to_owned(),
                caller: caller.to_owned(),
                leave_message: message.to_owned(),
            });
            (result_code::OK, "Save leaveMessage success!")
        });
        match answered {
            Err(denied) => denied.into_response(),
            Ok(((code, desc), renewed)) => code_desc(code, desc, renewed),
        }
    })
    .await
}

/// `feedback` as the document types it (integer), or as a string of one.
fn feedback_value(v: Option<&Value>) -> Option<u8> {
    match v? {
        Value::Number(n) => n.as_u64().and_then(|n| u8::try_from(n).ok()),
        Value::String(s) => s.parse::<u8>().ok(),
        _ => None,
    }
    .filter(|f| *f <= 1)
}

async fn robot_feedback(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    sim.call(Endpoint::RobotFeedback, move |sim| {
        let Some(map) = object(&body) else {
            return bad_request(NOT_AN_OBJECT);
        };
        let Some(feedback) = feedback_value(map.get("feedback")) else {
            return bad_request("feedback must be 1 or 0");
        };
        let Some(from) = text(&map, "from").filter(|f| !f.is_empty()) else {
            return bad_request("from is required");
        };
        let inter_idx = match map.get("interIdx") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return bad_request("interIdx is required"),
        };
        let content = text(&map, "feedbackContent").filter(|c| !c.is_empty());
        if content.is_some_and(|c| c.len() > FEEDBACK_CONTENT_MAX_BYTES) {
            return bad_request("feedbackContent is longer than 64 bytes");
        }
        let answered = session(sim, &headers, Needs::All, Some(from), |_, user_id| {
            if feedback == 0 && content.is_none() {
                return (
                    FEEDBACK_CONTENT_EMPTY,
                    "feedbackContent can not be empty when feedback is 0",
                );
            }
            lock(&sim.inner.records.robot_feedbacks).push(RobotFeedback {
                user_id: user_id.to_owned(),
                feedback,
                feedback_content: content.map(str::to_owned),
                inter_idx,
            });
            (result_code::OK, "Send message to robot successfully")
        });
        match answered {
            Err(denied) => denied.into_response(),
            Ok(((code, desc), renewed)) => code_desc(code, desc, renewed),
        }
    })
    .await
}

/// RspBody of queryPhraseByKeyword. Table 10-2 names the array `phrases`, the sample `question`:
/// the simulator answers `question`, as the real service's sample does.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PhraseResponse {
    question: Vec<String>,
    result_code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    result_desc: Option<String>,
}

async fn query_phrase(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    sim.call(Endpoint::QueryPhraseByKeyword, move |sim| {
        let Some(map) = object(&body) else {
            return bad_request(NOT_AN_OBJECT);
        };
        let cfg = &sim.inner.cfg;
        let answer = |desc: Option<&str>, question: Vec<String>| PhraseResponse {
            question,
            result_code: if desc.is_some() { "1" } else { result_code::OK }.into(),
            result_desc: desc.map(str::to_owned),
        };
        let content = text(&map, "strContent").unwrap_or_default();
        let response = if content.is_empty() || text(&map, "channel") != Some(CHANNEL_WEB) {
            answer(Some("request is no exist"), Vec::new())
        } else if text(&map, "locale").is_none_or(str::is_empty) {
            answer(Some("locale is error"), Vec::new())
        } else if !cfg.robot {
            answer(Some("Robot is no exist"), Vec::new())
        } else {
            let needle = content.to_lowercase();
            let found = cfg
                .phrases
                .iter()
                .filter(|p| p.to_lowercase().contains(&needle))
                .cloned()
                .collect();
            answer(None, found)
        };
        match session(sim, &headers, Needs::CcToken, None, |_, _| ()) {
            Err(denied) => denied.into_response(),
            Ok(((), renewed)) => json_renewed(&response, renewed),
        }
    })
    .await
}
