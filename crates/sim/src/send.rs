//! `POST /apiaccess/ccmessaging/send`: validation, idempotency by `messageId`, the per-user rate
//! limit, and what each controlType does to the session, with the resultCodes and the exact
//! resultDesc strings of the Huawei Cloud CEC API reference page *Send Message (send)*.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::auth::{self, Denied, bad_request, check_access, check_cc_token, json_renewed};
use super::script::{Script, Sender, agent_reply, robot_reply};
use super::state::{ReceivedSend, Stage, User};
use super::{SimConfig, Simulator};
use ::cec::wire::{
    CHANNEL_WEB, OfflineMsg, SOURCE_CUSTOMER, SendRequest, SendResponse, limits, result_code,
};

use ::cec::wire::{CONTROL_TYPES, MEDIA_TYPES};
const PARAM_INVALID: &str = "Requested param validate failed.";
const QUEUING: &str = "Queuing...";
const TOO_QUICK: &str = "chat failed, send too quick or session keep touch failed.";
const WORKING_HOURS: &str = "The current time is not within the working time of the service agents";

/// Handles one send call (after faults).
pub(crate) fn handle(sim: &Simulator, headers: &HeaderMap, body: &[u8]) -> Response {
    let inner = &sim.inner;
    if let Err(denied) = check_access(inner, headers) {
        return denied.into_response();
    }
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return bad_request("body is not JSON");
    };
    let from = match value.get("from") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let parsed = serde_json::from_value::<SendRequest>(value).ok();
    let script = sim.script();
    let now = Instant::now();
    let answered = inner.users.with_existing(&from, |u| -> Result<_, Denied> {
        u.advance(now, &from, &script);
        let renewed = check_cc_token(inner, u, &from, headers, now)?;
        let answer = match parsed {
            None => answer(result_code::PARAM_NULL, "Param is null"),
            Some(req) => accept(sim, u, &from, req, now),
        };
        Ok(json_renewed(&answer, renewed))
    });
    match answered {
        None => auth::no_cc_token().into_response(),
        Some(Err(denied)) => denied.into_response(),
        Some(Ok(answer)) => answer,
    }
}

/// Idempotency, rate limit, validation, then the controlType's effect; records what was accepted.
fn accept(
    sim: &Simulator,
    u: &mut User,
    user_id: &str,
    req: SendRequest,
    now: Instant,
) -> SendResponse {
    let inner = &sim.inner;
    if let Some(i) = req
        .message_id
        .as_ref()
        .and_then(|id| u.accepted_ids.get(id))
        && let Some(first) = u.received.get_mut(*i)
    {
        first.count += 1;
        inner
            .counters
            .sends_deduplicated
            .fetch_add(1, Ordering::Relaxed);
        return first.response.clone();
    }
    if !u.within_rate(inner.cfg.send_rate_limit, now) {
        return answer(result_code::FAILED, TOO_QUICK);
    }
    let (response, accepted) = match validate(&req, &inner.cfg) {
        Err(refused) => (refused, false),
        Ok(()) => dispatch(&sim.script(), u, user_id, &req, now),
    };
    if accepted {
        if let Some(id) = &req.message_id {
            u.accepted_ids.insert(id.clone(), u.received.len());
        }
        u.received.push(ReceivedSend {
            request: req,
            response: response.clone(),
            count: 1,
        });
    }
    response
}

fn answer(code: &str, desc: &str) -> SendResponse {
    SendResponse {
        result_code: code.into(),
        result_desc: Some(desc.into()),
        offline_msg: None,
    }
}

fn ok(desc: &str) -> (SendResponse, bool) {
    (answer(result_code::OK, desc), true)
}

fn refused(code: &str, desc: &str) -> (SendResponse, bool) {
    (answer(code, desc), false)
}

/// A failure in offline mode: the message is kept as an offline message (so it counts as
/// accepted).
fn offline(cfg: &SimConfig, desc: &str) -> (SendResponse, bool) {
    let mut response = answer(result_code::FAILED, desc);
    response.offline_msg = Some(OfflineMsg {
        is_offline_status: Some(true),
        tip_text: Some(cfg.offline_tip_text.clone()),
    });
    (response, true)
}

/// The "none channel config found." refusal in the wording of each controlType.
fn no_channel_config(control_type: &str) -> &'static str {
    match control_type {
        "CONNECT" => "connect failed, none channel config found.",
        "DISCONNECT" => "disconnect failed, none channel config found.",
        "TRANS2AGENT" => "transfer to agent failed, none channel config found.",
        "INPUT" => "send inputStatus failed, none channel config found.",
        _ => "chat failed, none channel config found.",
    }
}

/// Checks the fields the document constrains.
fn validate(req: &SendRequest, cfg: &SimConfig) -> Result<(), SendResponse> {
    let invalid = || answer(result_code::PARAM_INVALID, PARAM_INVALID);
    if req.channel != CHANNEL_WEB
        || req.source_type != SOURCE_CUSTOMER
        || !CONTROL_TYPES.contains(&req.control_type.as_str())
        || !MEDIA_TYPES.contains(&req.media_type.as_str())
    {
        return Err(invalid());
    }
    if let Some(id) = &req.message_id
        && (id.chars().count() > limits::MESSAGE_ID_MAX_CHARS || id.contains(','))
    {
        return Err(invalid());
    }
    if req.to != cfg.channel_config_id {
        return Err(answer(
            result_code::FAILED,
            no_channel_config(&req.control_type),
        ));
    }
    if req.media_type == "TEXT" && req.content.len() > limits::TEXT_MAX_BYTES {
        return Err(invalid());
    }
    if req.control_type == "CHAT" {
        check_chat_content(req)?;
    }
    Ok(())
}

/// The content rules of a CHAT.
fn check_chat_content(req: &SendRequest) -> Result<(), SendResponse> {
    let bad = |desc: &str| Err(answer(result_code::PARAM_INVALID, desc));
    if req.content.is_empty() {
        return if req.media_type == "TEXT" {
            Err(answer(
                result_code::FAILED,
                "Chat failed because the content is empty.",
            ))
        } else {
            bad("content can not be empty")
        };
    }
    if req.media_type == "WEBCARD" {
        ::cec::wire::check_webcard(&req.content).or_else(bad)?;
    }
    Ok(())
}

/// What a valid send does; `true` when the contact center took it.
fn dispatch(
    script: &Script<'_>,
    u: &mut User,
    user_id: &str,
    req: &SendRequest,
    now: Instant,
) -> (SendResponse, bool) {
    let cfg = script.cfg;
    let stage = u.session.as_ref().map(|s| s.stage);
    match (req.control_type.as_str(), stage) {
        ("CONNECT", _) if cfg.offline_mode => offline(cfg, "No ccucs address available!"),
        ("CONNECT", Some(Stage::Robot)) => ok("connect to robot successfully."),
        ("CONNECT", Some(Stage::Agent)) => ok("成功"),
        ("READ", _) => ok("sendUserMessage successfully."),
        (_, Some(Stage::Queued { .. })) if req.control_type != "DISCONNECT" => {
            refused(result_code::QUEUING, QUEUING)
        }
        ("CONNECT", None) if cfg.robot => {
            u.start_session(script.call_id());
            u.robot_says(user_id, script, &cfg.robot_welcome);
            ok("connect to robot successfully.")
        }
        ("CONNECT", None) if !cfg.agents_available => {
            refused(result_code::OUT_OF_WORKING_HOURS, WORKING_HOURS)
        }
        ("CONNECT", None) => {
            u.start_session(script.call_id());
            if to_agent(script, u, user_id, now) {
                (answer(result_code::QUEUING, QUEUING), true)
            } else {
                ok("成功")
            }
        }
        ("CHAT", None) if cfg.offline_mode => offline(cfg, no_channel_config("CHAT")),
        ("CHAT", None) => refused(result_code::FAILED, no_channel_config("CHAT")),
        ("CHAT", Some(Stage::Robot)) => {
            u.robot_says(user_id, script, &robot_reply(req));
            ok("Send message to robot successfully")
        }
        ("CHAT", Some(_)) => {
            let call_id = u.call_id(script);
            let reply = script.message(
                user_id,
                &call_id,
                Sender::Agent,
                "CHAT",
                &agent_reply(req),
                now,
            );
            u.outbox.push_back(reply);
            ok("sendUserMessage successfully.")
        }
        ("TRANS2AGENT", None) => refused(
            result_code::FAILED,
            "fail to transfer from robot to agent,session keep touch failed.",
        ),
        ("TRANS2AGENT", Some(Stage::Robot)) if !cfg.agents_available => refused(
            result_code::OUT_OF_WORKING_HOURS,
            "The current time is not within the working time of the service agents.",
        ),
        ("TRANS2AGENT", Some(Stage::Robot)) => {
            if to_agent(script, u, user_id, now) {
                (answer(result_code::QUEUING, QUEUING), true)
            } else {
                ok("transfer from robot to agent success.")
            }
        }
        ("TRANS2AGENT", Some(_)) => refused(
            result_code::FAILED,
            "fail to transfer from robot to agent,it has been agent service.",
        ),
        ("INPUT", None) => refused(result_code::FAILED, no_channel_config("INPUT")),
        ("INPUT", Some(Stage::Robot)) => refused(
            result_code::FAILED,
            "This is robot service,this message is prevented!",
        ),
        ("INPUT", _) => ok("sendUserMessage successfully."),
        ("DISCONNECT", None) => refused(result_code::FAILED, no_channel_config("DISCONNECT")),
        ("DISCONNECT", Some(stage)) => {
            u.session = None;
            match stage {
                Stage::Robot => ok("Disconnect robot successfully"),
                // The document lists "Queuing..." for a DISCONNECT while waiting in the queue:
                // the customer leaves the queue all the same.
                Stage::Queued { .. } => (answer(result_code::QUEUING, QUEUING), true),
                Stage::Agent => ok("disconnect successfully"),
            }
        }
        _ => refused(result_code::PARAM_INVALID, PARAM_INVALID),
    }
}

/// Hands the session to an agent: queued when `queue_length > 0` (returns `true`), else
/// connected at once.
fn to_agent(script: &Script<'_>, u: &mut User, user_id: &str, now: Instant) -> bool {
    let ahead = script.cfg.queue_length;
    if ahead > 0 {
        if let Some(s) = u.session.as_mut() {
            s.stage = Stage::Queued { since: now, ahead };
        }
        true
    } else {
        u.connect_agent(user_id, script, now);
        false
    }
}
