//! `/sim/tim/…` (no auth, JSON): what the app received, faults, reset, and callbacks sent to a
//! relay the way Tencent sends them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{TimFault, TimSim};

/// How long a callback may take to be answered.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// How old a `"stale"` callback's `RequestTime` is.
pub(crate) const STALE_BY_SECS: u64 = 3600;

pub(super) fn routes() -> Router<TimSim> {
    Router::new()
        .route("/sim/tim/messages", get(messages))
        .route("/sim/tim/streams", get(streams))
        .route("/sim/tim/stats", get(stats))
        .route("/sim/tim/faults", post(inject_fault).delete(clear_faults))
        .route("/sim/tim/reset", post(reset))
        .route("/sim/tim/callback", post(callback))
}

async fn messages(State(sim): State<TimSim>) -> Response {
    Json(sim.messages()).into_response()
}

async fn streams(State(sim): State<TimSim>) -> Response {
    Json(sim.streams()).into_response()
}

async fn stats(State(sim): State<TimSim>) -> Response {
    Json(sim.stats()).into_response()
}

fn bad_request(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": "bad request", "message": message })),
    )
        .into_response()
}

async fn inject_fault(State(sim): State<TimSim>, Json(f): Json<TimFault>) -> Response {
    if let Some(status) = f.status
        && !(100..=999).contains(&status)
    {
        return bad_request("status must be an HTTP status code");
    }
    if f.error_code.is_some() && f.status.is_some() {
        return bad_request("give errorCode or status, not both");
    }
    if f.is_delay_only() && f.delay_ms.is_none() {
        return bad_request("a fault needs errorCode, status or delayMs");
    }
    sim.inject_fault(f);
    StatusCode::NO_CONTENT.into_response()
}

async fn clear_faults(State(sim): State<TimSim>) -> StatusCode {
    sim.clear_faults();
    StatusCode::NO_CONTENT
}

async fn reset(State(sim): State<TimSim>) -> StatusCode {
    sim.reset();
    StatusCode::NO_CONTENT
}

/// How the simulator signs a callback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallbackSign {
    /// `Sign` = hex sha256(token + RequestTime), RequestTime now.
    #[default]
    Good,
    /// A `Sign` made with another token.
    Bad,
    /// A correct `Sign`, but RequestTime an hour ago.
    Stale,
}

/// `POST /sim/tim/callback`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallbackReq {
    /// The relay's callback URL.
    url: String,
    /// `CallbackCommand`, e.g. `Bot.OnC2CMessage`.
    command: String,
    /// What is POSTed.
    body: Value,
    #[serde(default)]
    sign: CallbackSign,
}

/// hex sha256(token + request_time): Tencent's callback `Sign`.
pub fn callback_sign(token: &str, request_time: u64) -> String {
    Sha256::digest(format!("{token}{request_time}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn callback(State(sim): State<TimSim>, Json(req): Json<CallbackReq>) -> Response {
    let Ok(mut url) = url::Url::parse(&req.url) else {
        return bad_request("url is not a URL");
    };
    let cfg = sim.config();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("SdkAppid", &cfg.sdkappid.to_string())
            .append_pair("CallbackCommand", &req.command)
            .append_pair("contenttype", "json")
            .append_pair("ClientIP", "127.0.0.1")
            .append_pair("OptPlatform", "RESTAPI");
        // Without a token a good callback is unsigned, as Tencent sends it; bad and stale ones
        // are always signed (wrongly) so that a relay has something to refuse.
        if !cfg.callback_token.is_empty() || req.sign != CallbackSign::Good {
            let (time, token) = match req.sign {
                CallbackSign::Good => (now, cfg.callback_token.clone()),
                CallbackSign::Bad => (now, format!("not-{}", cfg.callback_token)),
                CallbackSign::Stale => (
                    now.saturating_sub(STALE_BY_SECS),
                    cfg.callback_token.clone(),
                ),
            };
            q.append_pair("RequestTime", &time.to_string())
                .append_pair("Sign", &callback_sign(&token, time));
        }
    }
    let sent = sim
        .shared
        .http
        .post(url)
        .timeout(CALLBACK_TIMEOUT)
        .json(&req.body)
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_GATEWAY,
                Json(json!({ "error": e.without_url().to_string() })),
            )
                .into_response();
        }
    };
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap_or_default();
    let body = serde_json::from_slice::<Value>(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Json(json!({ "status": status, "body": body })).into_response()
}
