//! The RPC operations whose results are kept: `satisfaction` (saveSatisfaction), `robotFeedback`
//! (v1/robot/feedbacksatisfaction) and `leaveMessage` (doLeaveMessage). Each is checked against
//! the documented limits, sent upstream, and its outcome — whatever the result code — committed
//! with its event (`satisfaction.saved` / `offline.saved`) before the reply goes out.
//!
//! A satisfaction result belongs to the user's open session or, with none open, to their latest
//! one: CEC evaluates the user's last call, and customers are asked for their evaluation once
//! the agent has ended the conversation. A result for a closed session recomputes its summary
//! in the same commit and publishes it again (`session.summary`, the later one superseding).

use serde_json::Value;

use super::RpcError;
use super::body::{Body, reply};
use crate::relay::{Relay, Tenant};
use cec::wire::CHANNEL_WEB;
use cec::wire_ops::{
    LeaveMessageRequest, ResultResponse, RobotFeedbackRequest, SatisfactionRequest,
};
use contract::payload::{Event, event_type, new_id};
use store::{Commit, OfflineRow, OfflineSource, SatisfactionRow, SatisfactionSource, Session};
use store::{SessionState, SummaryRequest, kind};
use store::{event_record, now};

/// `comment`: "小于512字符" (fewer than 512 characters).
pub const COMMENT_MAX_CHARS: usize = 511;
/// `feedbackContent`: "最大长度限制64字节" (64 bytes).
pub const FEEDBACK_CONTENT_MAX_BYTES: usize = 64;

/// The ops served here.
pub(super) const OPS: &[&str] = &["satisfaction", "robotFeedback", "leaveMessage"];

/// Calls `op` (one of [`OPS`]) of tenant `t` with the request `b`.
pub(super) async fn call(relay: &Relay, t: &Tenant, op: &str, b: &Body) -> Result<Value, RpcError> {
    match op {
        "satisfaction" => satisfaction(relay, t, b).await,
        "robotFeedback" => robot_feedback(relay, t, b).await,
        "leaveMessage" => leave_message(relay, t, b).await,
        other => Err(RpcError::UnknownOp(other.to_owned())),
    }
}

async fn satisfaction(relay: &Relay, t: &Tenant, b: &Body) -> Result<Value, RpcError> {
    let user = b.user()?;
    let evaluation = b.str("evaluation")?;
    if !matches!(evaluation.as_str(), "1" | "2" | "3" | "4" | "5") {
        return Err(RpcError::Invalid(format!(
            "evaluation: {evaluation:?} must be 1 to 5"
        )));
    }
    let comment = b.opt_str("comment")?.unwrap_or_default();
    let n = comment.chars().count();
    if n > COMMENT_MAX_CHARS {
        return Err(RpcError::Invalid(format!(
            "comment: is {n} characters; fewer than 512 allowed"
        )));
    }
    let req = SatisfactionRequest {
        channel: CHANNEL_WEB.to_owned(),
        user_id: user.clone(),
        evaluation: evaluation.clone(),
        comment: comment.clone(),
        channel_config_id: b
            .opt_str("channelConfigId")?
            .unwrap_or_else(|| t.config().channel_config_id.clone()),
    };
    let rsp = t.client.save_satisfaction(&req).await?;
    let row = |session_id: Option<String>| SatisfactionRow {
        relay_id: new_id(),
        kind: kind::CEC.to_owned(),
        tenant: t.name.to_string(),
        user_id: user.clone(),
        session_id,
        source: SatisfactionSource::Customer,
        score: evaluation.clone(),
        comment: Some(comment.clone()),
        inter_idx: None,
        result_code: rsp.result_code.clone(),
        result_desc: rsp.result_desc.clone(),
        created_at: now(),
    };
    save_satisfaction(relay, t, &user, &rsp, row).await?;
    reply(&rsp, None)
}

async fn robot_feedback(relay: &Relay, t: &Tenant, b: &Body) -> Result<Value, RpcError> {
    // The web channel API reference names the customer `from`; `userId` is accepted as everywhere
    // else.
    let user = b.customer("robotFeedback")?;
    let feedback = match b.opt_str("feedback")?.as_deref() {
        Some("1") => 1,
        Some("0") => 0,
        Some(other) => {
            return Err(RpcError::Invalid(format!(
                "feedback: {other:?} must be 1 (satisfied) or 0 (dissatisfied)"
            )));
        }
        None => return Err(RpcError::Invalid("feedback: is required".into())),
    };
    let content = b.opt_str("feedbackContent")?.filter(|c| !c.is_empty());
    match (&content, feedback) {
        (None, 0) => {
            return Err(RpcError::Invalid(
                "feedbackContent: is required when feedback is 0".into(),
            ));
        }
        (Some(c), _) if c.len() > FEEDBACK_CONTENT_MAX_BYTES => {
            return Err(RpcError::Invalid(format!(
                "feedbackContent: is {} bytes; at most {FEEDBACK_CONTENT_MAX_BYTES}",
                c.len()
            )));
        }
        _ => {}
    }
    let inter_idx = b.str("interIdx")?;
    let req = RobotFeedbackRequest {
        feedback,
        feedback_content: content.clone(),
        from: user.clone(),
        inter_idx: inter_idx.clone(),
    };
    let rsp = t.client.robot_feedback(&req).await?;
    let row = |session_id: Option<String>| SatisfactionRow {
        relay_id: new_id(),
        kind: kind::CEC.to_owned(),
        tenant: t.name.to_string(),
        user_id: user.clone(),
        session_id,
        source: SatisfactionSource::Robot,
        score: feedback.to_string(),
        comment: content.clone(),
        inter_idx: Some(inter_idx.clone()),
        result_code: rsp.result_code.clone(),
        result_desc: rsp.result_desc.clone(),
        created_at: now(),
    };
    save_satisfaction(relay, t, &user, &rsp, row).await?;
    reply(&rsp, None)
}

async fn leave_message(relay: &Relay, t: &Tenant, b: &Body) -> Result<Value, RpcError> {
    // `callId` is documented as "用户ID", the customer's id: `userId` or `callId` names them.
    let user = b.customer("leaveMessage")?;
    let caller = b.bounded("caller", 1, 64)?;
    let message = b.str("leaveMessage")?;
    if message.trim().is_empty() {
        return Err(RpcError::Invalid("leaveMessage: must not be empty".into()));
    }
    let req = LeaveMessageRequest {
        call_id: user.clone(),
        caller: caller.clone(),
        leave_message: message.clone(),
        channel: CHANNEL_WEB.to_owned(),
    };
    let rsp = t.client.leave_message(&user, &req).await?;
    let session_id = session_of(relay, t, &user).await;
    let ok = rsp.result_code == "0";
    let row = OfflineRow {
        relay_id: new_id(),
        kind: kind::CEC.to_owned(),
        tenant: t.name.to_string(),
        user_id: user.clone(),
        session_id: session_id.clone(),
        source: OfflineSource::LeaveMessage,
        message_id: None,
        caller: Some(caller),
        content: message,
        tip_text: None,
        result_code: rsp.result_code.clone(),
        result_desc: rsp.result_desc.clone(),
        created_at: now(),
    };
    let ev = Event::new(event_type::OFFLINE_SAVED, ok)
        .for_user(&t.name, &user)
        .result(rsp.result_code.clone(), rsp.result_desc.clone())
        .with("source", "leave_message")
        .with("offlineId", row.relay_id.as_str());
    let commit = Commit {
        offline: vec![row],
        events: vec![event_record(
            kind::CEC,
            relay.subjects.cec_event(&t.name, &user),
            session_id.as_deref(),
            &ev,
        )],
        ..Default::default()
    };
    relay.commit(commit).await.map_err(stored)?;
    reply(&rsp, None)
}

async fn save_satisfaction(
    relay: &Relay,
    t: &Tenant,
    user: &str,
    rsp: &ResultResponse,
    row: impl FnOnce(Option<String>) -> SatisfactionRow,
) -> Result<(), RpcError> {
    let session = latest_session(relay, t, user).await;
    let session_id = session.as_ref().map(|s| s.id.clone());
    let row = row(session_id.clone());
    let ev = Event::new(event_type::SATISFACTION_SAVED, rsp.result_code == "0")
        .for_user(&t.name, user)
        .result(rsp.result_code.clone(), rsp.result_desc.clone())
        .with("source", row.source.as_str())
        .with("score", row.score.as_str())
        .with("satisfactionId", row.relay_id.as_str());
    let subject = relay.subjects.cec_event(&t.name, user);
    // A closed session's summary takes the result (only an accepted one changes it).
    let summaries = match &session {
        Some(s) if s.state == SessionState::Closed && rsp.result_code == "0" => {
            vec![SummaryRequest::cec(s, Some(subject.clone()))]
        }
        _ => Vec::new(),
    };
    let commit = Commit {
        satisfactions: vec![row],
        events: vec![event_record(kind::CEC, subject, session_id.as_deref(), &ev)],
        summaries,
        ..Default::default()
    };
    relay.commit(commit).await.map_err(stored)?;
    Ok(())
}

/// The user's open session, else their latest (best effort: a result is kept without one).
async fn latest_session(relay: &Relay, t: &Tenant, user: &str) -> Option<Session> {
    relay
        .store
        .latest_session(kind::CEC, &t.name, user)
        .await
        .ok()
        .flatten()
}

/// The user's open session, if any (best effort: a result is kept without one).
async fn session_of(relay: &Relay, t: &Tenant, user: &str) -> Option<String> {
    relay
        .store
        .open_session(kind::CEC, &t.name, user)
        .await
        .ok()
        .flatten()
        .map(|s| s.id)
}

fn stored(e: store::StoreError) -> RpcError {
    RpcError::Unavailable(format!("the result could not be stored: {e}"))
}
