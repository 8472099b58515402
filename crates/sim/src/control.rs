//! The control API under `/sim/` (no auth, JSON): the same operations as the in-process methods of
//! [`Simulator`], for tests and developers driving a `ccrelay simulate` from outside.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::Simulator;
use super::auth::{bad_request, json};
use super::calllog::CallKind;
use super::faults::Fault;
use super::forced::Forced;
use super::media::FILE_TYPES;

/// The control routes.
pub(crate) fn routes() -> Router<Simulator> {
    Router::new()
        .route(
            "/sim/faults",
            post(inject_fault).delete(clear_faults).get(list_faults),
        )
        .route("/sim/cec/agent/say", post(agent_say))
        .route("/sim/cec/agent/disconnect", post(agent_disconnect))
        .route("/sim/cec/duplicate-next-poll", post(duplicate_next_poll))
        .route("/sim/cec/expire-tokens", post(expire_tokens))
        .route("/sim/cec/received", get(received))
        .route("/sim/stats", get(stats))
        .route("/sim/cec/poll-log", get(poll_log))
        .route("/sim/cec/requests", get(requests))
        .route("/sim/cec/agent/file", post(agent_file))
        .route("/sim/cec/force-result", post(force_result))
        .route("/sim/calls", get(calls).delete(clear_calls))
}

/// Query of `GET /sim/calls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallsQuery {
    /// Only the records numbered after it.
    #[serde(default)]
    since: u64,
    /// Only calls of this kind.
    kind: Option<CallKind>,
    /// At most this many records.
    limit: Option<usize>,
}

/// The most records one `GET /sim/calls` answers without a `limit`.
const CALLS_PAGE: usize = 100_000;

async fn calls(State(sim): State<Simulator>, Query(q): Query<CallsQuery>) -> Response {
    let records = sim
        .inner
        .calls
        .since(q.since, q.kind, q.limit.unwrap_or(CALLS_PAGE));
    json(StatusCode::OK, &records)
}

async fn clear_calls(State(sim): State<Simulator>) -> StatusCode {
    sim.clear_calls();
    StatusCode::NO_CONTENT
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AgentFile {
    user_id: String,
    media_type: String,
    file_type: String,
    /// The file, base64.
    data: String,
}

/// Answers `{"fileId":…}`.
async fn agent_file(State(sim): State<Simulator>, Json(f): Json<AgentFile>) -> Response {
    if !["IMAGE", "AUDIO", "VIDEO"].contains(&f.media_type.as_str()) {
        return bad_request("mediaType must be IMAGE, AUDIO or VIDEO");
    }
    if !FILE_TYPES.contains(&f.file_type.as_str()) {
        return bad_request("fileType is not one of the documented file types");
    }
    let Ok(bytes) = STANDARD.decode(f.data.as_bytes()) else {
        return bad_request("data is not base64");
    };
    let file_id = sim.agent_send_file(&f.user_id, &f.media_type, &f.file_type, bytes);
    json(StatusCode::OK, &serde_json::json!({ "fileId": file_id }))
}

async fn force_result(State(sim): State<Simulator>, Json(f): Json<Forced>) -> StatusCode {
    sim.force_result(f.endpoint, &f.result_code, &f.result_desc, f.times);
    StatusCode::NO_CONTENT
}

async fn inject_fault(State(sim): State<Simulator>, Json(fault): Json<Fault>) -> Response {
    if let Some(status) = fault.status
        && !(100..=999).contains(&status)
    {
        return bad_request("status must be an HTTP status code");
    }
    sim.inject_fault(fault);
    StatusCode::NO_CONTENT.into_response()
}

async fn clear_faults(State(sim): State<Simulator>) -> StatusCode {
    sim.clear_faults();
    StatusCode::NO_CONTENT
}

async fn list_faults(State(sim): State<Simulator>) -> Response {
    json(StatusCode::OK, &sim.faults())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Say {
    user_id: String,
    content: String,
}

async fn agent_say(State(sim): State<Simulator>, Json(say): Json<Say>) -> StatusCode {
    sim.agent_say(&say.user_id, &say.content);
    StatusCode::NO_CONTENT
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UserRef {
    user_id: String,
}

async fn agent_disconnect(State(sim): State<Simulator>, Json(u): Json<UserRef>) -> StatusCode {
    sim.agent_disconnect(&u.user_id);
    StatusCode::NO_CONTENT
}

async fn duplicate_next_poll(State(sim): State<Simulator>, Json(u): Json<UserRef>) -> StatusCode {
    sim.duplicate_next_poll(&u.user_id);
    StatusCode::NO_CONTENT
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
enum TokenKind {
    Cc,
    Access,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expire {
    kind: TokenKind,
}

async fn expire_tokens(State(sim): State<Simulator>, Json(e): Json<Expire>) -> StatusCode {
    match e.kind {
        TokenKind::Cc => sim.expire_cc_tokens(),
        TokenKind::Access => sim.expire_access_tokens(),
    }
    StatusCode::NO_CONTENT
}

async fn received(State(sim): State<Simulator>, Query(u): Query<UserRef>) -> Response {
    json(StatusCode::OK, &sim.received(&u.user_id))
}

async fn stats(State(sim): State<Simulator>) -> Response {
    json(StatusCode::OK, &sim.stats())
}

async fn poll_log(State(sim): State<Simulator>) -> Response {
    json(StatusCode::OK, &sim.poll_log())
}

async fn requests(State(sim): State<Simulator>) -> Response {
    json(StatusCode::OK, &sim.requests())
}
