//! The CEC web-channel routes: tokenByAkSk, applyToken, send, poll, queryQueueInfo.
//!
//! Every handler goes through [`Simulator::call`] (counting, faults), then checks credentials,
//! then does its work synchronously under the user's shard lock. Every poll is also logged in
//! the call log ([`crate::calllog`]), with the relay instance that made it.

use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::auth::{self, Denied, bad_request, check_access, check_cc_token, json, json_renewed};
use super::calllog::{Answered, Call, CallKind};
use super::faults::Endpoint;
use super::state::{CcToken, Stage, queue_position};
use super::stats::PollAnswer;
use super::{Simulator, send};
use ::cec::wire::{
    ApplyTokenRequest, ApplyTokenResponse, CHANNEL_WEB, PollResponse, TokenByAkSkRequest,
    TokenByAkSkResponse, limits, result_code,
};

/// The CEC API's routes, paths as documented.
pub(crate) fn routes() -> Router<Simulator> {
    Router::new()
        .route("/apigovernance/api/oauth/tokenByAkSk", post(token_by_ak_sk))
        .route("/apiaccess/ccmessaging/applyToken", post(apply_token))
        .route("/apiaccess/ccmessaging/send", post(send_handler))
        .route("/apiaccess/ccmessaging/poll", get(poll))
        .route(
            "/apiaccess/ccmessaging/queryQueueInfo",
            post(query_queue_info),
        )
}

async fn token_by_ak_sk(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    sim.call(Endpoint::TokenByAkSk, move |sim| {
        let inner = &sim.inner;
        let Ok(req) = serde_json::from_slice::<TokenByAkSkRequest>(&body) else {
            return bad_request("body is not {\"app_key\",\"app_secret\"}");
        };
        if req.app_key != inner.cfg.app_key || req.app_secret != inner.cfg.app_secret {
            return auth::unauthorized("app_key/app_secret", "app_key or app_secret is wrong");
        }
        let ttl = auth::access_token_ttl(&headers, inner.cfg.access_token_ttl);
        let token = auth::random_token();
        auth::store_access_token(&inner.access, &token, Instant::now() + ttl);
        inner
            .counters
            .access_tokens_issued
            .fetch_add(1, Ordering::Relaxed);
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        json(
            StatusCode::OK,
            &TokenByAkSkResponse {
                access_token: token,
                apply_type: Some("Bearer".into()),
                create_time: Some(created.to_string()),
                expires: Some(ttl.as_secs().to_string()),
                scope: Some("ccmessaging".into()),
                app_key: Some(inner.cfg.app_key.clone()),
                user_id: Some("Anonymous".into()),
            },
        )
    })
    .await
}

async fn apply_token(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    sim.call(Endpoint::ApplyToken, move |sim| {
        let inner = &sim.inner;
        if let Err(denied) = check_access(inner, &headers) {
            return denied.into_response();
        }
        let Ok(req) = serde_json::from_slice::<ApplyTokenRequest>(&body) else {
            return bad_request("body is not an applyTokenReqBody");
        };
        let failed = |desc: &str| {
            json(
                StatusCode::OK,
                &ApplyTokenResponse {
                    token: String::new(),
                    result_code: "1".into(),
                    result_desc: Some(desc.into()),
                },
            )
        };
        let chars = req.user_id.chars().count();
        if chars == 0 || chars > limits::USER_ID_MAX_CHARS {
            return failed("userId must be 1 to 24 characters");
        }
        if req.channel_id != inner.cfg.channel_config_id {
            return failed("channelId is not a channel config id of this tenant");
        }
        let token = auth::random_token();
        let expires_at = Instant::now() + inner.cfg.cc_token_ttl;
        inner.users.with(&req.user_id, |u| {
            let old = u.token.replace(CcToken {
                value: token.clone(),
                expires_at,
            });
            auth::index_cc_token(inner, &req.user_id, old.as_ref(), &token);
        });
        inner
            .counters
            .cc_tokens_issued
            .fetch_add(1, Ordering::Relaxed);
        json(
            StatusCode::OK,
            &ApplyTokenResponse {
                token,
                result_code: result_code::OK.into(),
                result_desc: None,
            },
        )
    })
    .await
}

async fn send_handler(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    sim.call(Endpoint::Send, move |sim| {
        send::handle(sim, &headers, &body)
    })
    .await
}

/// Query of poll (table 5-3).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PollQuery {
    receiver_id: Option<String>,
    channel: Option<String>,
}

/// A poll, logged in the call log ([`crate::calllog`]).
async fn poll(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    Query(q): Query<PollQuery>,
) -> Response {
    let Some(begun) = sim.inner.calls.begin(&headers) else {
        return answer_poll(&sim, headers, q).await;
    };
    let call = Call {
        kind: CallKind::Poll,
        tenant: auth::header_str(&headers, "x-app-key").map(str::to_owned),
        user_id: q.receiver_id.clone(),
        token_user: auth::header_str(&headers, auth::CC_TOKEN_HEADER)
            .and_then(|t| sim.inner.cc_index.with_existing(t, |u| u.clone())),
    };
    let response = answer_poll(&sim, headers, q).await;
    sim.inner.calls.finish(begun, call, &response);
    response
}

/// The poll itself: the user's queued messages, marked for the call log ([`Answered`]).
async fn answer_poll(sim: &Simulator, headers: HeaderMap, q: PollQuery) -> Response {
    sim.call(Endpoint::Poll, move |sim| {
        let inner = &sim.inner;
        if let Err(denied) = check_access(inner, &headers) {
            return denied.into_response();
        }
        let Some(user_id) = q.receiver_id.filter(|r| !r.is_empty()) else {
            return bad_request("receiverId is required");
        };
        if q.channel.as_deref().is_some_and(|c| c != CHANNEL_WEB) {
            let refused = PollResponse {
                result_code: result_code::PARAM_INVALID.into(),
                ..PollResponse::default()
            };
            return Answered::mark(
                json(StatusCode::OK, &refused),
                result_code::PARAM_INVALID,
                0,
            );
        }
        let script = sim.script();
        let now = Instant::now();
        let answered = inner
            .users
            .with_existing(&user_id, |u| -> Result<_, Denied> {
                u.advance(now, &user_id, &script);
                let renewed = check_cc_token(inner, u, &user_id, &headers, now)?;
                let duplicate = std::mem::take(&mut u.duplicate_next);
                let mut messages = if duplicate {
                    u.last_answer.clone()
                } else {
                    Vec::new()
                };
                messages.extend(u.outbox.drain(..));
                if !messages.is_empty() {
                    u.last_answer.clone_from(&messages);
                }
                Ok((messages, duplicate, renewed))
            });
        let (messages, duplicate, renewed) = match answered {
            None => return auth::no_cc_token().into_response(),
            Some(Err(denied)) => return denied.into_response(),
            Some(Ok(answer)) => answer,
        };
        if !messages.is_empty() {
            inner.counters.log_poll(PollAnswer {
                at: now,
                unix_ms: super::script::unix_ms(now).max(0) as u64,
                user_id,
                message_codes: messages
                    .iter()
                    .map(|m| m.message_code.clone().unwrap_or_default())
                    .collect(),
                duplicate,
            });
        }
        let answered = messages.len();
        let body = PollResponse {
            result_code: result_code::OK.into(),
            result_desc: Some("query user messages success.".into()),
            downlink_messages: messages,
        };
        Answered::mark(json_renewed(&body, renewed), result_code::OK, answered)
    })
    .await
}

/// ReqBody of queryQueueInfo (table 4-1).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueueInfoRequest {
    user_id: String,
    #[serde(default)]
    channel_config_id: Option<String>,
    #[serde(default)]
    channel: Option<String>,
}

/// RspMsg200 of queryQueueInfo (table 4-2); the numbers only while queued.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct QueueInfoResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total_wait_time: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_device_wait_time: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config_maxc_wait_time: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    longest_wait_time: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    estimate_wait_time: Option<u64>,
    result_code: String,
}

async fn query_queue_info(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sim.call(Endpoint::QueryQueueInfo, move |sim| {
        let inner = &sim.inner;
        if let Err(denied) = check_access(inner, &headers) {
            return denied.into_response();
        }
        let Ok(req) = serde_json::from_slice::<QueueInfoRequest>(&body) else {
            return bad_request("body is not {\"userId\",\"channelConfigId\",\"channel\"}");
        };
        let not_queued = QueueInfoResponse {
            result_code: "1".into(),
            ..QueueInfoResponse::default()
        };
        let wrong_channel = req.channel.as_deref().is_some_and(|c| c != CHANNEL_WEB)
            || req
                .channel_config_id
                .as_deref()
                .is_some_and(|c| c != inner.cfg.channel_config_id);
        let script = sim.script();
        let now = Instant::now();
        let step = inner.cfg.queue_step;
        let answered = inner
            .users
            .with_existing(&req.user_id, |u| -> Result<_, Denied> {
                u.advance(now, &req.user_id, &script);
                let renewed = check_cc_token(inner, u, &req.user_id, &headers, now)?;
                let stage = u.session.as_ref().map(|s| s.stage);
                let info = match stage {
                    Some(Stage::Queued { since, ahead }) if !wrong_channel => {
                        let position = u64::from(queue_position(since, ahead, step, now));
                        let waited = now.saturating_duration_since(since).as_secs();
                        QueueInfoResponse {
                            position: Some(position),
                            total_wait_time: Some(waited),
                            current_device_wait_time: Some(waited),
                            config_maxc_wait_time: Some(
                                step.saturating_mul(ahead).as_secs().max(60),
                            ),
                            longest_wait_time: Some(waited),
                            estimate_wait_time: Some(
                                step.saturating_mul(position as u32).as_secs_f64().ceil() as u64,
                            ),
                            result_code: result_code::OK.into(),
                        }
                    }
                    _ => not_queued,
                };
                Ok((info, renewed))
            });
        match answered {
            None => auth::no_cc_token().into_response(),
            Some(Err(denied)) => denied.into_response(),
            Some(Ok((info, renewed))) => json_renewed(&info, renewed),
        }
    })
    .await
}
