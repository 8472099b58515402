//! Calls: click-to-call (doc §11–14: create, events, support, drop) and the mobile agent's
//! anonymous call (§16, v1/mobileagent/createcall).
//!
//! A click-to-call belongs to the user of the ccmessaging-token. Creating it queues the event
//! "Call connected" (eventId 168101, as in the sample) and dropping it queues "Call released"
//! (eventId 168102, the simulator's own: the document shows only the first); each
//! getClickToCallEvents answers the next event, or `{"resultCode":"0","resultDesc":""}` with no
//! `eventId` when there is none. createClickToCall's header table marks every header optional:
//! the ccmessaging-token is still required, since without it the call would belong to no one,
//! and `x-app-key`/`Authorization` are checked when sent.

use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Simulator;
use super::auth::{
    CodeDesc, Needs, bad_request, check_access, code_desc, json, json_renewed, session,
};
use super::faults::Endpoint;
use super::state::{CallEvent, ClickCall};
use ::cec::wire::{CHANNEL_WEB, result_code};

/// The WebRTC gateway's domain in "Call connected" events.
pub(crate) const WEBRTC_DOMAIN: &str = "webrtc.sim.invalid";
/// The WebRTC gateway's addresses in "Call connected" events.
pub(crate) const WEBRTC_GATEWAYS: [&str; 2] = ["127.0.0.1:8443", "127.0.0.1:8444"];
/// `clickToCallCaller` of "Call connected" events (as in the sample).
pub(crate) const CLICK_TO_CALL_CALLER: &str = "AnonymousCard";
/// eventId of "Call connected" (the sample's).
pub(crate) const EVENT_CONNECTED: &str = "168101";
/// eventId of "Call released" (the simulator's own).
pub(crate) const EVENT_RELEASED: &str = "168102";

const NOT_SUPPORTED: &str = "The channel does not support click-to-call";
const WORKING_HOURS: &str = "The current time is not within the working time of the service agents";
const REQUEST_ERROR: &str = "request exception";
const NO_CALL: &str = "there is no click-to-call to drop";
/// resultCodes of v1/mobileagent/createcall (table 16-3).
const MOBILE_FEATURE_OFF: &str = "3001000001";
const MOBILE_INVALID: &str = "3001000003";
/// Length limits of v1/mobileagent/createcall (table 16-2), in characters.
const CALLED_MAX_CHARS: usize = 32;
const CALL_DATA_MAX_CHARS: usize = 1024;
const CALLER_PRESENT_MAX_CHARS: usize = 32;

/// The routes of this module, paths as documented.
pub(crate) fn routes() -> Router<Simulator> {
    let base = "/apiaccess/ccmessaging/v1";
    Router::new()
        .route(&format!("{base}/createClickToCall"), post(create))
        .route(&format!("{base}/getClickToCallEvents"), get(events))
        .route(&format!("{base}/checkClickToCallSupport"), get(support))
        .route(&format!("{base}/dropClickToCall"), post(drop_call))
        .route(
            &format!("{base}/mobileagent/createcall"),
            post(mobile_create),
        )
}

/// The body as a JSON object (or `None`).
fn object(body: &[u8]) -> Option<serde_json::Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

async fn create(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    sim.call(Endpoint::CreateClickToCall, move |sim| {
        let cfg = &sim.inner.cfg;
        let map = object(&body).unwrap_or_default();
        let channel_ok = map.get("channel").and_then(Value::as_str) == Some(CHANNEL_WEB);
        let ability = map
            .get("mediaAbility")
            .and_then(Value::as_str)
            .filter(|a| ["0", "1"].contains(a))
            .map(str::to_owned);
        let answered = session(sim, &headers, Needs::CcToken, None, |u, _| {
            if !cfg.click_to_call {
                return (result_code::CLICK_TO_CALL_UNSUPPORTED, NOT_SUPPORTED);
            }
            let (true, Some(media_ability)) = (channel_ok, ability) else {
                return (result_code::FAILED, REQUEST_ERROR);
            };
            if !cfg.agents_available {
                return (result_code::OUT_OF_WORKING_HOURS, WORKING_HOURS);
            }
            if u.click_call.is_some() {
                return (result_code::FAILED, REQUEST_ERROR);
            }
            u.click_call = Some(ClickCall { media_ability });
            u.call_events.push_back(CallEvent {
                result_code: result_code::OK.into(),
                result_desc: "Call connected".into(),
                event_id: EVENT_CONNECTED.into(),
                content: json!({
                    "domain": WEBRTC_DOMAIN,
                    "gwAddresses": WEBRTC_GATEWAYS,
                    "accessCode": cfg.access_code,
                    "clickToCallCaller": CLICK_TO_CALL_CALLER,
                }),
            });
            // The sample answers the string "null".
            (result_code::OK, "null")
        });
        match answered {
            Err(denied) => denied.into_response(),
            Ok(((code, desc), renewed)) => code_desc(code, desc, renewed),
        }
    })
    .await
}

/// Query of getClickToCallEvents and checkClickToCallSupport.
#[derive(Debug, Deserialize)]
struct ChannelQuery {
    channel: Option<String>,
}

async fn events(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Query(q): Query<ChannelQuery>,
) -> Response {
    sim.call(Endpoint::GetClickToCallEvents, move |sim| {
        let channel_ok = q.channel.as_deref() == Some(CHANNEL_WEB);
        let answered = session(sim, &headers, Needs::All, None, |u, _| {
            if !channel_ok {
                return Err(CodeDesc::new(result_code::FAILED, REQUEST_ERROR));
            }
            u.call_events
                .pop_front()
                .ok_or_else(|| CodeDesc::new(result_code::OK, ""))
        });
        match answered {
            Err(denied) => denied.into_response(),
            Ok((Ok(event), renewed)) => json_renewed(&event, renewed),
            Ok((Err(none), renewed)) => json_renewed(&none, renewed),
        }
    })
    .await
}

/// The answer of checkClickToCallSupport (table 13-3 spells `webRTCsupported`, the sample
/// `webRTCSupported`: the sample's spelling is used).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SupportResponse {
    result_code: String,
    result_desc: String,
    #[serde(rename = "webRTCSupported")]
    web_rtc_supported: bool,
    click_to_call_supported: bool,
}

async fn support(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Query(q): Query<ChannelQuery>,
) -> Response {
    sim.call(Endpoint::CheckClickToCallSupport, move |sim| {
        let renewed = match session(sim, &headers, Needs::All, None, |_, _| ()) {
            Err(denied) => return denied.into_response(),
            Ok(((), renewed)) => renewed,
        };
        if q.channel.as_deref() != Some(CHANNEL_WEB) {
            return code_desc(result_code::FAILED, REQUEST_ERROR, renewed);
        }
        let on = sim.inner.cfg.click_to_call;
        let body = SupportResponse {
            result_code: result_code::OK.into(),
            result_desc: String::new(),
            web_rtc_supported: on,
            click_to_call_supported: on,
        };
        json_renewed(&body, renewed)
    })
    .await
}

async fn drop_call(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    sim.call(Endpoint::DropClickToCall, move |sim| {
        let channel_ok = object(&body)
            .and_then(|m| m.get("channel").and_then(Value::as_str).map(str::to_owned))
            .is_some_and(|c| c == CHANNEL_WEB);
        let answered = session(sim, &headers, Needs::All, None, |u, _| {
            if !channel_ok {
                return (result_code::FAILED, REQUEST_ERROR);
            }
            if u.click_call.take().is_none() {
                return (result_code::FAILED, NO_CALL);
            }
            u.call_events.push_back(CallEvent {
                result_code: result_code::OK.into(),
                result_desc: "Call released".into(),
                event_id: EVENT_RELEASED.into(),
                content: json!({ "causeId": "0", "causeDesc": "Released by the customer" }),
            });
            (result_code::OK, "")
        });
        match answered {
            Err(denied) => denied.into_response(),
            Ok(((code, desc), renewed)) => code_desc(code, desc, renewed),
        }
    })
    .await
}

/// ReqBody of v1/mobileagent/createcall (table 16-2).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MobileCallRequest {
    #[serde(default)]
    called: Option<String>,
    #[serde(default)]
    call_data: Option<String>,
    #[serde(default)]
    caller_present: Option<String>,
}

/// resultData of v1/mobileagent/createcall (table 16-3).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MobileCallData {
    call_serial_no: String,
    sip_service_address: String,
    accesscode: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MobileCallResponse {
    result_code: String,
    result_desc: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    result_data: Option<MobileCallData>,
}

/// Whether a createcall body keeps to table 16-2: `called` 1–32 characters, `callData` ≤ 1024,
/// `callerPresent` ≤ 32 (optional: "the platform's default caller number is used without it").
fn mobile_call_valid(req: &MobileCallRequest) -> bool {
    let within =
        |v: &Option<String>, max: usize| v.as_ref().is_none_or(|s| s.chars().count() <= max);
    req.called.as_deref().is_some_and(|c| !c.is_empty())
        && within(&req.called, CALLED_MAX_CHARS)
        && within(&req.call_data, CALL_DATA_MAX_CHARS)
        && within(&req.caller_present, CALLER_PRESENT_MAX_CHARS)
}

async fn mobile_create(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    sim.call(Endpoint::MobileAgentCreateCall, move |sim| {
        let inner = &sim.inner;
        if let Err(denied) = check_access(inner, &headers) {
            return denied.into_response();
        }
        let answer = |code: &str, desc: &str| MobileCallResponse {
            result_code: code.into(),
            result_desc: desc.into(),
            result_data: None,
        };
        let response = if !inner.cfg.mobile_agent {
            answer(
                MOBILE_FEATURE_OFF,
                "the mobile agent feature is not enabled",
            )
        } else {
            match serde_json::from_slice::<MobileCallRequest>(&body) {
                Err(_) => {
                    return bad_request("body is not {\"called\",\"callData\",\"callerPresent\"}");
                }
                Ok(req) if !mobile_call_valid(&req) => {
                    answer(MOBILE_INVALID, "input parameter validation failed")
                }
                Ok(_) => {
                    let n = inner.seq.fetch_add(1, Ordering::Relaxed);
                    MobileCallResponse {
                        result_data: Some(MobileCallData {
                            call_serial_no: format!("sim-{n}"),
                            sip_service_address: inner.cfg.sip_service_address.clone(),
                            accesscode: format!(
                                "{}{}",
                                inner.cfg.access_code,
                                uuid::Uuid::now_v7().simple()
                            ),
                        }),
                        ..answer(result_code::OK, "Success")
                    }
                }
            }
        };
        json(StatusCode::OK, &response)
    })
    .await
}
