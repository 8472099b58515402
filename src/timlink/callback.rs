//! Tencent's callbacks: `POST /tim/<a>/callback` on the relay's HTTP listener.
//!
//! With a `callback_token`, the query's `Sign` must be hex sha256(token + `RequestTime`) and
//! `RequestTime` (unix seconds) no more than 60 s away from now: a missing or wrong sign is
//! refused with 401, a stale one with 403. The body is stored (`tim_callbacks`), and, when it is
//! about a user and not sent by one of the app's robots (`@RBT#…`), kept in the transcript and
//! put in the outbox for `P.tim.<a>.in.<u>` in the same transaction; then the relay answers
//! `{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}`. The commit is given 1.5 s, well inside
//! Tencent's 2 s; publishing happens afterwards, from the outbox.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::TimLink;
use crate::bus::payload::new_id;
use crate::bus::subjects::check_token;
use crate::bus::tim_payload::inbound;
use crate::outbox::now;
use crate::store::{
    Commit, Direction, DownRecord, MessageRow, MessageStatus, OutboxMsg, TimCallbackRow, kind,
};

/// How far `RequestTime` may be from now.
pub const MAX_SKEW_SECS: i64 = 60;
/// Time given to the commit before answering (Tencent waits 2 s).
const COMMIT_BUDGET: Duration = Duration::from_millis(1500);

/// The callback routes, to merge into the relay's router.
pub fn router(link: Arc<TimLink>) -> Router {
    Router::new()
        .route("/tim/{app}/callback", post(callback))
        .with_state(link)
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("{0} missing from the query string")]
    Missing(&'static str),
    #[error("RequestTime is not a unix time in seconds")]
    BadTime,
    #[error("RequestTime is {0} s away from now (at most {MAX_SKEW_SECS} s)")]
    Stale(i64),
    #[error("Sign does not match")]
    Mismatch,
}

impl SignError {
    fn status(&self) -> StatusCode {
        match self {
            SignError::Stale(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// hex sha256(token + request_time): Tencent's callback `Sign`.
pub fn sign(token: &str, request_time: &str) -> String {
    let d = Sha256::digest(format!("{token}{request_time}").as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks `Sign` and `RequestTime` of a callback's query against `token` at `now` (unix s).
pub fn check_sign(token: &str, query: &HashMap<String, String>, now: i64) -> Result<(), SignError> {
    let time = query
        .get("RequestTime")
        .ok_or(SignError::Missing("RequestTime"))?;
    let got = query.get("Sign").ok_or(SignError::Missing("Sign"))?;
    let t: i64 = time.trim().parse().map_err(|_| SignError::BadTime)?;
    let skew = (now - t).abs();
    if skew > MAX_SKEW_SECS {
        return Err(SignError::Stale(skew));
    }
    // Hex digits in either case are accepted.
    if !sign(token, time).eq_ignore_ascii_case(got.trim()) {
        return Err(SignError::Mismatch);
    }
    Ok(())
}

fn answer(status: StatusCode, code: i64, info: &str) -> Response {
    let action = if code == 0 { "OK" } else { "FAIL" };
    (
        status,
        Json(json!({"ActionStatus": action, "ErrorCode": code, "ErrorInfo": info})),
    )
        .into_response()
}

async fn callback(
    State(link): State<Arc<TimLink>>,
    Path(app): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let Some(a) = link.app(&app) else {
        tracing::warn!(app, "Tencent callback for an unknown app; refused");
        return answer(
            StatusCode::NOT_FOUND,
            404,
            &format!("no [[tim]] app is named {app:?}"),
        );
    };
    if let Some(token) = &a.config.callback_token {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if let Err(e) = check_sign(token.expose_secret(), &query, now) {
            // The token never reaches the log; the query's own fields are not secret.
            tracing::warn!(app, reason = %e, request_time = query.get("RequestTime").map(String::as_str),
                "Tencent callback with a bad signature; refused");
            return answer(e.status(), i64::from(e.status().as_u16()), &e.to_string());
        }
    }
    let received_at = now();
    let id = new_id();
    let command_q = query.get("CallbackCommand").cloned();
    let body_json: Option<Value> = serde_json::from_slice(&body).ok();
    let command = command_q
        .or_else(|| {
            body_json
                .as_ref()
                .and_then(|v| v.get("CallbackCommand"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let inb = match inbound(&body, &id, &app, &command, received_at) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(app, command, reason = %e, "Tencent callback body refused");
            return answer(StatusCode::BAD_REQUEST, 400, &e.to_string());
        }
    };
    let sink = link.sink();
    let routable = inb.user.as_deref().is_some_and(|u| check_token(u).is_ok());
    let publish = routable && !inb.from_robot;
    let mut commit = Commit::default();
    if publish && let Some(user) = inb.user.as_deref() {
        let payload = inb.payload.to_string();
        let msg_key = body_json
            .as_ref()
            .and_then(|v| v.get("MsgKey"))
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty() && k.len() <= crate::store::MAX_KEY_BYTES)
            .map(str::to_owned);
        commit.down.push(DownRecord {
            row: MessageRow {
                relay_id: id.clone(),
                kind: kind::TIM.to_owned(),
                tenant: app.clone(),
                user_id: user.to_owned(),
                session_id: None,
                direction: Direction::Down,
                message_id: None,
                // A callback Tencent repeats (same MsgKey) is kept and published once.
                message_code: msg_key,
                source_type: Some("USER".to_owned()),
                control_type: Some(command.clone()),
                media_type: first_msg_type(body_json.as_ref()),
                content: first_text(body_json.as_ref()),
                body: payload.clone(),
                status: MessageStatus::Received,
                result_code: None,
                result_desc: None,
                stream_seq: None,
                created_at: received_at,
            },
            publish: OutboxMsg {
                msg_id: id.clone(),
                subject: sink.subjects.tim_in(&app, user),
                payload: payload.into_bytes(),
            },
        });
    } else if !routable {
        tracing::warn!(
            app,
            command,
            user = inb.user.as_deref(),
            "Tencent callback names no routable user; stored, not published"
        );
    }
    let row = TimCallbackRow {
        relay_id: id,
        app: app.clone(),
        // An indexed column: a user id longer than any subject token is kept in the body only.
        user_id: inb
            .user
            .clone()
            .filter(|u| u.len() <= crate::bus::subjects::MAX_TOKEN_BYTES),
        command: command.clone(),
        // As received (it parsed as a JSON object above).
        body: String::from_utf8_lossy(&body).into_owned(),
        published: publish,
        created_at: received_at,
    };
    let store = sink.store.clone();
    let saved = tokio::time::timeout(
        COMMIT_BUDGET,
        sink.save(|| store.tim_callback_save(&row, commit.clone())),
    )
    .await;
    match saved {
        Ok(Ok(_)) => {
            crate::instrument::messages("tim", &app, "in", 1);
            answer(StatusCode::OK, 0, "")
        }
        Ok(Err(e)) => {
            tracing::error!(app, command, error = %e, "Cannot store a Tencent callback");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                503,
                "the relay cannot store the callback now",
            )
        }
        Err(_) => {
            tracing::warn!(app, command, "Storing a Tencent callback took too long");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                503,
                "the relay cannot store the callback now",
            )
        }
    }
}

fn first_element(body: Option<&Value>) -> Option<&Value> {
    body?.get("MsgBody")?.as_array()?.first()
}

fn first_msg_type(body: Option<&Value>) -> Option<String> {
    first_element(body)?
        .get("MsgType")?
        .as_str()
        .map(str::to_owned)
}

fn first_text(body: Option<&Value>) -> Option<String> {
    let el = first_element(body)?;
    (el.get("MsgType")?.as_str()? == "TIMTextElem")
        .then(|| {
            el.get("MsgContent")?
                .get("Text")?
                .as_str()
                .map(str::to_owned)
        })
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn signatures_are_checked_with_the_token_and_time() {
        let good = sign("tok", "1700000000");
        assert_eq!(good.len(), 64);
        let ok = q(&[("RequestTime", "1700000000"), ("Sign", &good)]);
        assert_eq!(check_sign("tok", &ok, 1700000030), Ok(()));
        assert_eq!(
            check_sign("other", &ok, 1700000030),
            Err(SignError::Mismatch)
        );
        assert_eq!(
            check_sign("tok", &ok, 1700000061),
            Err(SignError::Stale(61))
        );
        assert_eq!(
            check_sign("tok", &q(&[("Sign", &good)]), 1700000000),
            Err(SignError::Missing("RequestTime"))
        );
        assert_eq!(
            check_sign("tok", &q(&[("RequestTime", "x"), ("Sign", "y")]), 0),
            Err(SignError::BadTime)
        );
        assert_eq!(SignError::Stale(61).status(), StatusCode::FORBIDDEN);
        assert_eq!(SignError::Mismatch.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn the_known_sha256_of_token_and_time() {
        // sha256("abc") — the token and time are simply concatenated.
        assert_eq!(
            sign("a", "bc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn texts_and_types_of_the_first_element() {
        let v = json!({"MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hi"}}]});
        assert_eq!(first_text(Some(&v)).as_deref(), Some("hi"));
        assert_eq!(first_msg_type(Some(&v)).as_deref(), Some("TIMTextElem"));
        let c = json!({"MsgBody": [{"MsgType": "TIMCustomElem", "MsgContent": {"Data": "x"}}]});
        assert_eq!(first_text(Some(&c)), None);
        assert_eq!(first_text(None), None);
    }
}
