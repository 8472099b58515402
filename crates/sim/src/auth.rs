//! The three credentials of the CEC API: AccessTokens (tokenByAkSk, checked with `x-app-key` on
//! every ccmessaging call), ccmessaging-tokens (applyToken, checked per user, renewed in a
//! response header when one expires during a live session), and the JSON answers the handlers
//! share.

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::Serialize;

use super::state::{CcToken, Sharded, User};
use super::{Inner, Simulator};

/// The response header that carries a renewed ccmessaging-token (and the request header that
/// carries the current one).
pub(crate) const CC_TOKEN_HEADER: &str = "ccmessaging-token";

/// A new random token: 40 alphanumeric characters (~238 bits), unique in practice.
pub(crate) fn random_token() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect()
}

/// A JSON answer, `Content-Type: application/json;charset=UTF-8` as the document shows.
pub(crate) fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(header::CONTENT_TYPE, "application/json;charset=UTF-8")],
            bytes,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// A 200 JSON answer carrying a renewed ccmessaging-token in its header, if there is one.
pub(crate) fn json_renewed<T: Serialize>(body: &T, renewed: Option<String>) -> Response {
    let mut resp = json(StatusCode::OK, body);
    if let Some(value) = renewed.and_then(|t| HeaderValue::from_str(&t).ok()) {
        resp.headers_mut().insert(CC_TOKEN_HEADER, value);
    }
    resp
}

/// A failed credential check: answered 401 with a small JSON body naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Denied {
    /// The header (or body fields) that failed.
    pub(crate) check: &'static str,
    /// Why, for the developer reading the answer.
    pub(crate) message: &'static str,
}

impl Denied {
    pub(crate) fn new(check: &'static str, message: &'static str) -> Self {
        Denied { check, message }
    }
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        unauthorized(self.check, self.message)
    }
}

/// HTTP 401 with a small JSON body naming the check that failed.
pub(crate) fn unauthorized(check: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": "unauthorized", "check": check, "message": message });
    json(StatusCode::UNAUTHORIZED, &body)
}

/// HTTP 400 with a small JSON body: the request could not be read.
pub(crate) fn bad_request(message: &str) -> Response {
    let body = serde_json::json!({ "error": "bad request", "message": message });
    json(StatusCode::BAD_REQUEST, &body)
}

/// A header's value as text, if present and readable.
pub(crate) fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The lifetime an AccessToken gets: `X-Token-Expire` seconds if given and readable, capped by
/// `cap`; `cap` otherwise.
pub(crate) fn access_token_ttl(headers: &HeaderMap, cap: Duration) -> Duration {
    header_str(headers, "x-token-expire")
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(cap, |secs| Duration::from_secs(secs).min(cap))
}

/// Records a new AccessToken valid until `expires_at`, dropping expired ones from its shard when
/// the shard grows.
pub(crate) fn store_access_token(tokens: &Sharded<Instant>, token: &str, expires_at: Instant) {
    tokens.with_shard(token, |map| {
        if map.len() >= 1024 {
            let now = Instant::now();
            map.retain(|_, exp| *exp > now);
        }
        map.insert(token.to_owned(), expires_at);
    });
}

/// Checks `x-app-key` and `Authorization: Bearer <AccessToken>` of a ccmessaging call.
///
/// # Errors
/// The failed check.
pub(crate) fn check_access(inner: &Inner, headers: &HeaderMap) -> Result<(), Denied> {
    if header_str(headers, "x-app-key") != Some(inner.cfg.app_key.as_str()) {
        return Err(Denied::new(
            "x-app-key",
            "x-app-key is missing or is not the tenant's app key",
        ));
    }
    let Some(auth) = header_str(headers, header::AUTHORIZATION.as_str()) else {
        return Err(Denied::new("Authorization", "Authorization is missing"));
    };
    let token = match auth.trim().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("Bearer") => token.trim(),
        _ => {
            return Err(Denied::new(
                "Authorization",
                "Authorization is not `Bearer <AccessToken>`",
            ));
        }
    };
    match inner.access.with_existing(token, |exp| *exp) {
        None => Err(Denied::new(
            "Authorization",
            "AccessToken was not issued by tokenByAkSk",
        )),
        Some(exp) if Instant::now() >= exp => {
            Err(Denied::new("Authorization", "AccessToken has expired"))
        }
        Some(_) => Ok(()),
    }
}

/// Checks the ccmessaging-token presented for `user`. An expired token is accepted while the
/// user has a live session and replaced by a new one, returned for the response header; the old
/// one then stops working.
///
/// # Errors
/// The failed check.
pub(crate) fn check_cc_token(
    inner: &Inner,
    user: &mut User,
    user_id: &str,
    headers: &HeaderMap,
    now: Instant,
) -> Result<Option<String>, Denied> {
    let presented = header_str(headers, CC_TOKEN_HEADER);
    let Some(current) = user.token.as_ref() else {
        return Err(no_cc_token());
    };
    if presented != Some(current.value.as_str()) {
        return Err(no_cc_token());
    }
    if now < current.expires_at {
        return Ok(None);
    }
    if !user.in_session() {
        return Err(Denied::new(
            CC_TOKEN_HEADER,
            "ccmessaging-token has expired and the user has no live session: apply for a new one",
        ));
    }
    let value = random_token();
    let old = user.token.replace(CcToken {
        value: value.clone(),
        expires_at: now + inner.cfg.cc_token_ttl,
    });
    index_cc_token(inner, user_id, old.as_ref(), &value);
    inner
        .counters
        .cc_tokens_renewed
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(Some(value))
}

/// The 401 of a ccmessaging-token that is missing, unknown or not this user's current one.
pub(crate) fn no_cc_token() -> Denied {
    Denied::new(
        CC_TOKEN_HEADER,
        "ccmessaging-token is missing or is not the current token applied for this user",
    )
}

/// Records that `token` is now `user_id`'s ccmessaging-token (in place of `old`), so endpoints
/// whose body names no user can find it. Called with the user's shard locked: the index is always
/// locked after the users, never before.
pub(crate) fn index_cc_token(inner: &Inner, user_id: &str, old: Option<&CcToken>, token: &str) {
    if let Some(old) = old {
        inner
            .cc_index
            .with_shard(&old.value, |m| m.remove(&old.value));
    }
    inner
        .cc_index
        .with_shard(token, |m| m.insert(token.to_owned(), user_id.to_owned()));
}

/// Which credentials an endpoint's header table requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Needs {
    /// `ccmessaging-token`, `x-app-key` and `Authorization`.
    All,
    /// `ccmessaging-token`; `x-app-key` and `Authorization` are optional but checked when sent.
    CcToken,
}

/// Checks the credentials of a call made for the user the ccmessaging-token was applied for
/// (`named`, when the body names one, must be that user), then runs `f` on that user under its
/// shard lock. Returns `f`'s result, the user's id and a renewed token for the response header.
///
/// # Errors
/// The 401 of the failed check.
pub(crate) fn session<R>(
    sim: &Simulator,
    headers: &HeaderMap,
    needs: Needs,
    named: Option<&str>,
    f: impl FnOnce(&mut User, &str) -> R,
) -> Result<(R, Option<String>), Denied> {
    let inner = &sim.inner;
    let sent_access =
        headers.contains_key("x-app-key") || headers.contains_key(header::AUTHORIZATION);
    if needs == Needs::All || sent_access {
        check_access(inner, headers)?;
    }
    let presented = header_str(headers, CC_TOKEN_HEADER).ok_or_else(no_cc_token)?;
    let user_id = inner
        .cc_index
        .with_existing(presented, |u| u.clone())
        .ok_or_else(no_cc_token)?;
    if named.is_some_and(|n| n != user_id) {
        return Err(no_cc_token());
    }
    let script = sim.script();
    let now = Instant::now();
    inner
        .users
        .with_existing(&user_id, |u| {
            u.advance(now, &user_id, &script);
            let renewed = check_cc_token(inner, u, &user_id, headers, now)?;
            Ok((f(u, &user_id), renewed))
        })
        .unwrap_or_else(|| Err(no_cc_token()))
}

/// The `{"resultCode","resultDesc"}` answer most endpoints give.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CodeDesc {
    pub(crate) result_code: String,
    pub(crate) result_desc: String,
}

impl CodeDesc {
    pub(crate) fn new(code: &str, desc: &str) -> Self {
        CodeDesc {
            result_code: code.to_owned(),
            result_desc: desc.to_owned(),
        }
    }
}

/// A 200 `{"resultCode","resultDesc"}` answer (with a renewed token, if any).
pub(crate) fn code_desc(code: &str, desc: &str, renewed: Option<String>) -> Response {
    json_renewed(&CodeDesc::new(code, desc), renewed)
}
