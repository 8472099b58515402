//! Tencent's callbacks: `POST /tim/<a>/callback` on the relay's HTTP listener.
//!
//! Callbacks fail closed. With a `callback_token`, the query's `Sign` must be hex
//! sha256(token + `RequestTime`) (compared in constant time) and `RequestTime` (unix seconds) at
//! most [`MAX_AGE_SECS`] old and at most [`MAX_AHEAD_SECS`] ahead of the relay's clock: a missing
//! or wrong sign is refused with 401, a time outside the window with 403. Without a token, every
//! callback is refused with 401, unless the app sets `allow_unsigned_callbacks` (warned about
//! at start). A body longer than [`body_limit`] of the connected NATS server's `max_payload`
//! could never be published: it is refused with 413 and an `error` event on `P.error`.
//! The body is stored (`tim_callbacks`), and, when it is
//! about a user and not sent by one of the app's robots (`@RBT#…`), kept in the transcript and
//! put in the outbox for `P.tim.<a>.in.<u>` in the same transaction; then the relay answers
//! `{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}`. The commit is given 1.5 s, well inside
//! Tencent's 2 s; publishing happens afterwards, from the outbox. A Desk session event
//! (`Desk.SessionEventNotify` with a `SessionId`) also brings that Desk session's summary up to
//! date in the same transaction ([`DESK_SESSION_EVENT`]; `store::summary`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::Instrument as _;

use super::TimLink;
use contract::payload::new_id;
use contract::subjects::check_token;
use contract::tim_payload::inbound;
use store::now;
use store::{
    Commit, Direction, DownRecord, MessageRow, MessageStatus, OutboxMsg, SummaryRequest,
    TimCallbackRow, kind,
};

/// How old `RequestTime` may be (Tencent signs each call as it makes it).
pub const MAX_AGE_SECS: i64 = 60;
/// How far ahead of the relay's clock `RequestTime` may be (clocks differ a little; a signed URL
/// dated in the future would stay valid for that long).
pub const MAX_AHEAD_SECS: i64 = 5;
/// Room left in `max_payload` for what the relay adds to a callback's body (`id`, `app`,
/// `command`, `receivedAt`) and for the message's headers.
pub const PAYLOAD_HEADROOM: usize = 4096;
/// The body limit whatever the server takes (axum's default).
pub const MAX_BODY: usize = 2 * 1024 * 1024;
/// NATS's default `max_payload`, assumed while the server has not said.
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
/// Time given to the commit before answering (Tencent waits 2 s).
const COMMIT_BUDGET: Duration = Duration::from_millis(1500);
/// The command of Desk's session events: each updates its session's summary.
pub const DESK_SESSION_EVENT: &str = "Desk.SessionEventNotify";

/// What the handler shares: the apps, and the NATS connection whose `max_payload` bounds bodies.
#[derive(Clone)]
struct Callbacks {
    link: Arc<TimLink>,
    nats: async_nats::Client,
}

/// The callback routes, to merge into the relay's router. Warns, once, about every app whose
/// callbacks are refused for want of a token or accepted unsigned.
pub fn router(link: Arc<TimLink>, nats: async_nats::Client) -> Router {
    for a in link.apps.values() {
        match (&a.config.callback_token, a.config.allow_unsigned_callbacks) {
            (Some(_), _) => {}
            (None, false) => tracing::warn!(
                app = %a.name,
                "No callback_token: this app's Tencent callbacks will be refused (set callback_token, \
                 or allow_unsigned_callbacks = true to accept them unsigned)"
            ),
            (None, true) => tracing::warn!(
                app = %a.name,
                "allow_unsigned_callbacks: this app accepts Tencent callbacks without a signature; \
                 anyone who can reach the relay's HTTP listener can post them"
            ),
        }
    }
    Router::new()
        .route("/tim/{app}/callback", post(callback))
        .with_state(Callbacks { link, nats })
}

/// The longest callback body taken with a NATS server whose `max_payload` is `max_payload`
/// (0: not known yet, NATS's default 1 MiB is assumed): what the relay publishes is the body
/// plus a few fields and headers, and it must fit.
pub fn body_limit(max_payload: usize) -> usize {
    let max_payload = if max_payload == 0 {
        DEFAULT_MAX_PAYLOAD
    } else {
        max_payload
    };
    max_payload.saturating_sub(PAYLOAD_HEADROOM).min(MAX_BODY)
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("{0} missing from the query string")]
    Missing(&'static str),
    #[error("RequestTime is not a unix time in seconds")]
    BadTime,
    #[error("RequestTime is {0} s old (at most {MAX_AGE_SECS} s)")]
    Stale(i64),
    #[error("RequestTime is {0} s ahead of the relay's clock (at most {MAX_AHEAD_SECS} s)")]
    Ahead(i64),
    #[error("Sign does not match")]
    Mismatch,
}

impl SignError {
    fn status(&self) -> StatusCode {
        match self {
            SignError::Stale(_) | SignError::Ahead(_) => StatusCode::FORBIDDEN,
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
    let age = now.saturating_sub(t);
    if age > MAX_AGE_SECS {
        return Err(SignError::Stale(age));
    }
    if age < -MAX_AHEAD_SECS {
        return Err(SignError::Ahead(age.saturating_neg()));
    }
    let want = Sha256::digest(format!("{token}{time}").as_bytes());
    // Hex digits in either case are accepted.
    let got = decode_hex(got.trim()).ok_or(SignError::Mismatch)?;
    if !constant_time_eq(&want, &got) {
        return Err(SignError::Mismatch);
    }
    Ok(())
}

/// 32 bytes from 64 hex digits, or `None`.
fn decode_hex(s: &str) -> Option<[u8; 32]> {
    let digits = s.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        *o = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// Whether `a` and `b` are equal, in a time that depends on their length only, so that how long
/// a refusal takes tells nothing about how much of a forged `Sign` was right. (Both are 32-byte
/// digests; a dependency such as `subtle` would do the same in more code.)
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn answer(status: StatusCode, code: i64, info: &str) -> Response {
    let action = if code == 0 { "OK" } else { "FAIL" };
    (
        status,
        Json(json!({"ActionStatus": action, "ErrorCode": code, "ErrorInfo": info})),
    )
        .into_response()
}

/// One callback, in the span `callback` (`app`).
async fn callback(
    State(cb): State<Callbacks>,
    Path(app): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let span = tracing::error_span!("callback", app = %app);
    handle_callback(cb, app, query, body).instrument(span).await
}

async fn handle_callback(
    cb: Callbacks,
    app: String,
    query: HashMap<String, String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let link = &cb.link;
    let Some(a) = link.app(&app) else {
        tracing::warn!("Tencent callback for an unknown app; refused");
        crate::instrument::callback_refused("", "unknown_app");
        return answer(
            StatusCode::NOT_FOUND,
            404,
            &format!("no [[tim]] app is named {app:?}"),
        );
    };
    match (&a.config.callback_token, a.config.allow_unsigned_callbacks) {
        (Some(token), _) => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            if let Err(e) = check_sign(token.expose_secret(), &query, now) {
                // The token never reaches the log; the query's own fields are not secret.
                tracing::warn!(reason = %e, request_time = query.get("RequestTime").map(String::as_str),
                    "Tencent callback with a bad signature; refused");
                let reason = match e {
                    SignError::Stale(_) | SignError::Ahead(_) | SignError::BadTime => "time",
                    _ => "sign",
                };
                crate::instrument::callback_refused(&app, reason);
                return answer(e.status(), i64::from(e.status().as_u16()), &e.to_string());
            }
        }
        (None, true) => {}
        (None, false) => {
            tracing::warn!(
                "Tencent callback refused: the app has no callback_token (and unsigned callbacks are not allowed)"
            );
            crate::instrument::callback_refused(&app, "unsigned");
            return answer(
                StatusCode::UNAUTHORIZED,
                401,
                "callbacks of this app are refused: the relay has no callback_token for it",
            );
        }
    }
    let limit = body_limit(cb.nats.server_info().max_payload);
    let body = match body {
        Ok(b) if b.len() <= limit => b,
        Ok(b) => return refuse_too_large(link, &app, Some(b.len()), limit).await,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return refuse_too_large(link, &app, None, limit).await;
        }
        Err(e) => {
            tracing::warn!(reason = %e.body_text(), "Tencent callback body unreadable; refused");
            return answer(StatusCode::BAD_REQUEST, 400, &e.body_text());
        }
    };
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
            tracing::warn!(command, reason = %e, "Tencent callback body refused");
            return answer(StatusCode::BAD_REQUEST, 400, &e.to_string());
        }
    };
    let payload = inb.payload.to_string();
    if payload.len() > limit + PAYLOAD_HEADROOM / 2 {
        // What the relay adds made it too long to publish with its headers.
        return refuse_too_large(link, &app, Some(body.len()), limit).await;
    }
    let sink = link.sink();
    let routable = inb.user.as_deref().is_some_and(|u| check_token(u).is_ok());
    let publish = routable && !inb.from_robot;
    let mut commit = Commit::default();
    if publish && let Some(user) = inb.user.as_deref() {
        let msg_key = body_json
            .as_ref()
            .and_then(|v| v.get("MsgKey"))
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty() && k.len() <= store::MAX_KEY_BYTES)
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
            command,
            user = inb.user.as_deref(),
            "Tencent callback names no routable user; stored, not published"
        );
    }
    let desk_session = body_json
        .as_ref()
        .filter(|_| command == DESK_SESSION_EVENT)
        .and_then(|v| v.get("SessionId"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    if let Some(session_id) = desk_session {
        let user = inb.user.as_deref().unwrap_or_default();
        commit
            .summaries
            .push(SummaryRequest::desk(&app, user, session_id));
    }
    let row = TimCallbackRow {
        relay_id: id,
        app: app.clone(),
        // An indexed column: a user id longer than any subject token is kept in the body only.
        user_id: inb
            .user
            .clone()
            .filter(|u| u.len() <= contract::subjects::MAX_TOKEN_BYTES),
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
            tracing::error!(command, error = %e, "Cannot store a Tencent callback");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                503,
                "the relay cannot store the callback now",
            )
        }
        Err(_) => {
            tracing::warn!(command, "Storing a Tencent callback took too long");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                503,
                "the relay cannot store the callback now",
            )
        }
    }
}

/// Answers 413 to a body too long to publish, after committing an `error` event on `P.error`
/// (the body is not read for its user: it is not stored).
async fn refuse_too_large(
    link: &TimLink,
    app: &str,
    size: Option<usize>,
    limit: usize,
) -> Response {
    let size_text = size.map_or_else(|| "more than 2 MiB".to_owned(), |n| format!("{n} bytes"));
    let reason = format!("is {size_text}; at most {limit} bytes fit the NATS server's max_payload");
    tracing::warn!(reason = %reason, "Tencent callback body too large; refused");
    crate::instrument::callback_refused(app, "too_large");
    let sink = link.sink();
    let event = sink.refusal(app, "", "too_large", "body", &reason);
    match tokio::time::timeout(COMMIT_BUDGET, sink.commit(event)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "Cannot record the refusal of a Tencent callback")
        }
        Err(_) => tracing::warn!("Recording the refusal of a Tencent callback took too long"),
    }
    answer(
        StatusCode::PAYLOAD_TOO_LARGE,
        413,
        &format!("body: {reason}"),
    )
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
    fn request_times_ahead_of_the_clock_are_refused_beyond_a_few_seconds() {
        let at = |t: i64| {
            q(&[
                ("RequestTime", &t.to_string()),
                ("Sign", &sign("tok", &t.to_string())),
            ])
        };
        let now = 1_700_000_000;
        assert_eq!(check_sign("tok", &at(now + MAX_AHEAD_SECS), now), Ok(()));
        assert_eq!(
            check_sign("tok", &at(now + MAX_AHEAD_SECS + 1), now),
            Err(SignError::Ahead(MAX_AHEAD_SECS + 1))
        );
        // Once allowed by a symmetric window: a URL signed for the future stayed valid longer.
        assert_eq!(
            check_sign("tok", &at(now + 50), now),
            Err(SignError::Ahead(50))
        );
        assert_eq!(SignError::Ahead(50).status(), StatusCode::FORBIDDEN);
        // Extreme times neither overflow nor pass.
        assert!(check_sign("tok", &at(i64::MIN), now).is_err());
        assert!(check_sign("tok", &at(i64::MAX), now).is_err());
    }

    #[test]
    fn signs_compare_as_digests_in_either_case() {
        let t = "1700000000";
        let good = sign("tok", t);
        let now = 1_700_000_000;
        let with = |s: &str| q(&[("RequestTime", t), ("Sign", s)]);
        assert_eq!(check_sign("tok", &with(&good.to_uppercase()), now), Ok(()));
        assert_eq!(check_sign("tok", &with(&format!(" {good} ")), now), Ok(()));
        let long = format!("{good}0");
        let not_hex = format!("zz{}", &good[2..]);
        for bad in [&good[..63], "", long.as_str(), not_hex.as_str()] {
            assert_eq!(
                check_sign("tok", &with(bad), now),
                Err(SignError::Mismatch),
                "{bad}"
            );
        }
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn bodies_are_bounded_below_the_servers_max_payload() {
        assert_eq!(body_limit(0), 1024 * 1024 - PAYLOAD_HEADROOM);
        assert_eq!(body_limit(1024 * 1024), 1024 * 1024 - PAYLOAD_HEADROOM);
        assert_eq!(body_limit(64 * 1024), 60 * 1024);
        assert_eq!(body_limit(64 * 1024 * 1024), MAX_BODY);
        assert_eq!(body_limit(100), 0);
    }

    proptest::proptest! {
        /// Whatever the query holds, the check answers without panicking, and accepts only the
        /// token's own sign of a time inside the window.
        #[test]
        fn any_query_is_answered(time in ".{0,24}", sign_text in ".{0,70}", now in proptest::num::i64::ANY) {
            let query = q(&[("RequestTime", &time), ("Sign", &sign_text)]);
            if check_sign("tok", &query, now).is_ok() {
                let t: i64 = time.trim().parse().unwrap();
                proptest::prop_assert!(now.saturating_sub(t) <= MAX_AGE_SECS);
                proptest::prop_assert!(t.saturating_sub(now) <= MAX_AHEAD_SECS);
                proptest::prop_assert!(sign("tok", &time).eq_ignore_ascii_case(sign_text.trim()));
            }
        }

        #[test]
        fn a_good_sign_inside_the_window_passes(now in 0i64..4_000_000_000, back in -MAX_AHEAD_SECS..=MAX_AGE_SECS) {
            let t = (now - back).to_string();
            let query = q(&[("RequestTime", &t), ("Sign", &sign("tok", &t))]);
            proptest::prop_assert_eq!(check_sign("tok", &query, now), Ok(()));
        }
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
