//! The HTTP client of one Tencent IM app.
//!
//! Every call is `POST {base_url}/v4/…?sdkappid=…&identifier=…&usersig=…&random=…&contenttype=json`
//! with a fresh 32-bit `random`, signed with the app's admin UserSig, which is cached and renewed
//! once 80% of `sig_expire` has passed (and at once when Tencent answers 70001: the call is then
//! signed anew and tried once more). An HTTP 200 answer with `ActionStatus` FAIL or `ErrorCode` ≠
//! 0 is a [`TimError::Api`]. Each call has the app's `request_timeout`; retrying beyond the one
//! 70001 retry is the caller's business ([`TimError::is_retryable`]).
//!
//! Answers are read up to [`upstream::bounded::MAX_ANSWER_BYTES`]; a longer one is a final
//! [`TimError::TooLarge`].
//!
//! The UserSig travels in the query string, so it never reaches a log line or an error: reqwest's
//! errors are stripped of their URL, and only the endpoint and status are logged.

use std::sync::{Arc, Mutex};

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::error::{TimEndpoint, TimError};
use super::usersig;
use super::wire::{MAX_BODY_BYTES, SendMsgRequest, StreamMsgRequest, TimAnswer};
use config::TimApp;

/// Unix seconds; replaceable in tests to drive the UserSig renewal.
type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Longest part of an unexpected answer body kept in an error.
const SNIPPET_CHARS: usize = 200;

/// The client of one app. Cheap to clone; clones share the HTTP pool and the UserSig cache.
#[derive(Clone)]
pub struct TimClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// The shared connection pool.
    http: reqwest::Client,
    /// The app: base URL, SDKAppID, key, admin identifier, timeouts.
    app: TimApp,
    /// The admin UserSig in use, signed lazily and renewed before it expires.
    sig: Mutex<Option<CachedSig>>,
    /// Unix seconds now.
    clock: Clock,
}

/// An admin UserSig and when it was signed.
struct CachedSig {
    sig: SecretString,
    /// `TLS.time`.
    signed_at: u64,
}

impl std::fmt::Debug for TimClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimClient")
            .field("app", &self.inner.app.name)
            .field("sdkappid", &self.inner.app.sdkappid)
            .finish_non_exhaustive()
    }
}

impl TimClient {
    pub fn new(http: reqwest::Client, app: TimApp) -> Self {
        Self::with_clock(http, app, Arc::new(usersig::unix_now))
    }

    fn with_clock(http: reqwest::Client, app: TimApp, clock: Clock) -> Self {
        TimClient {
            inner: Arc::new(Inner {
                http,
                app,
                sig: Mutex::new(None),
                clock,
            }),
        }
    }

    /// The app's configured name.
    pub fn name(&self) -> &str {
        &self.inner.app.name
    }

    /// The app's configuration.
    pub fn app(&self) -> &TimApp {
        &self.inner.app
    }

    /// `v4/desk_http_svc/send_msg`. Refused before sending ([`TimError::Invalid`]) without
    /// `SessionId` or `FromAccount` + `ToAccount`, with an empty `MsgBody`, or with a body over
    /// [`MAX_BODY_BYTES`].
    pub async fn send_msg(&self, req: &SendMsgRequest) -> Result<TimAnswer, TimError> {
        let ep = TimEndpoint::DeskSendMsg;
        let has = |f: &Option<String>| f.as_deref().is_some_and(|s| !s.is_empty());
        let addressed = has(&req.session_id) || (has(&req.from_account) && has(&req.to_account));
        if !addressed {
            return Err(invalid(
                ep,
                "neither SessionId nor FromAccount + ToAccount is set".into(),
            ));
        }
        if req.msg_body.is_empty() {
            return Err(invalid(ep, "MsgBody is empty".into()));
        }
        self.call(ep, req).await
    }

    /// `v4/openim_robot_http_svc/send_stream_msg`; the answer carries `MsgKey`. Refused before
    /// sending without `From_Account` or `To_Account`, or with a body over [`MAX_BODY_BYTES`].
    pub async fn send_stream_msg(&self, req: &StreamMsgRequest) -> Result<TimAnswer, TimError> {
        let ep = TimEndpoint::RobotSendStreamMsg;
        if req.from_account.is_empty() {
            return Err(invalid(ep, "From_Account is empty".into()));
        }
        if req.to_account.is_empty() {
            return Err(invalid(ep, "To_Account is empty".into()));
        }
        self.call(ep, req).await
    }

    /// Serialises, checks the size, sends; on 70001 signs anew and sends once more.
    async fn call<B: Serialize>(&self, ep: TimEndpoint, req: &B) -> Result<TimAnswer, TimError> {
        let body = serde_json::to_vec(req)
            .map_err(|e| invalid(ep, format!("body cannot be serialised: {e}")))?;
        if body.len() > MAX_BODY_BYTES {
            return Err(invalid(
                ep,
                format!(
                    "body is {} bytes, over the limit of {MAX_BODY_BYTES} bytes (12 KB)",
                    body.len()
                ),
            ));
        }
        let started = std::time::Instant::now();
        let r = match self.send_once(ep, &body, false).await {
            Err(e) if e.needs_new_sig() => {
                tracing::info!(app = %self.name(), endpoint = %ep, "Tencent says the admin UserSig expired; signing a new one and retrying once.");
                self.send_once(ep, &body, true).await
            }
            other => other,
        };
        upstream::metrics::upstream_call(
            "tim",
            self.name(),
            ep.as_str(),
            started.elapsed(),
            r.as_ref().err().map(TimError::code),
        );
        r
    }

    async fn send_once(
        &self,
        ep: TimEndpoint,
        body: &[u8],
        renew: bool,
    ) -> Result<TimAnswer, TimError> {
        let app = &self.inner.app;
        let sig = self.admin_sig(renew);
        let mut url = url::Url::parse(&format!(
            "{}{}",
            app.base_url.as_str().trim_end_matches('/'),
            ep.path()
        ))
        .map_err(|e| invalid(ep, format!("base_url cannot take the path: {e}")))?;
        url.query_pairs_mut()
            .append_pair("sdkappid", &app.sdkappid.to_string())
            .append_pair("identifier", &app.admin_identifier)
            .append_pair("usersig", sig.expose_secret())
            .append_pair("random", &rand::random::<u32>().to_string())
            .append_pair("contenttype", "json");
        let resp = self
            .inner
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(app.request_timeout)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| from_reqwest(ep, e))?;
        let status = resp.status();
        let bytes = match upstream::bounded::read(resp, upstream::bounded::MAX_ANSWER_BYTES).await {
            Ok(b) => b,
            // An error status's body is only quoted: too long, it is left out.
            Err(upstream::bounded::BodyError::TooLarge { .. })
                if status != reqwest::StatusCode::OK =>
            {
                bytes::Bytes::new()
            }
            Err(upstream::bounded::BodyError::TooLarge { limit }) => {
                return Err(TimError::TooLarge {
                    endpoint: ep,
                    limit,
                });
            }
            Err(upstream::bounded::BodyError::Read(e)) => return Err(from_reqwest(ep, e)),
        };
        tracing::debug!(app = %self.name(), endpoint = %ep, status = status.as_u16(), "Tencent IM call answered.");
        if status != reqwest::StatusCode::OK {
            return Err(TimError::Status {
                endpoint: ep,
                status: status.as_u16(),
                snippet: snippet(&bytes),
            });
        }
        let answer: TimAnswer = serde_json::from_slice(&bytes).map_err(|e| TimError::Decode {
            endpoint: ep,
            reason: e.to_string(),
            snippet: snippet(&bytes),
        })?;
        if !answer.is_ok() {
            return Err(TimError::Api {
                endpoint: ep,
                code: answer.error_code,
                info: answer.error_info,
            });
        }
        Ok(answer)
    }

    /// The cached admin UserSig, signed anew when `renew`, when none is cached, or once 80% of
    /// `sig_expire` has passed since it was signed (or the clock went back).
    fn admin_sig(&self, renew: bool) -> SecretString {
        let app = &self.inner.app;
        let now = (self.inner.clock)();
        let expire = app.sig_expire.as_secs().max(1);
        let renew_after = expire.saturating_mul(4) / 5;
        let mut cached = self
            .inner
            .sig
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = cached.as_ref()
            && !renew
            && now >= c.signed_at
            && now - c.signed_at < renew_after
        {
            return c.sig.clone();
        }
        let key = app
            .secret_key
            .as_ref()
            .map(|k| k.expose_secret())
            .unwrap_or_default();
        let sig = SecretString::from(usersig::sign(
            key,
            app.sdkappid,
            &app.admin_identifier,
            now,
            expire,
        ));
        tracing::debug!(app = %app.name, signed_at = now, expire, "Signed a new admin UserSig.");
        *cached = Some(CachedSig {
            sig: sig.clone(),
            signed_at: now,
        });
        sig
    }
}

fn invalid(endpoint: TimEndpoint, reason: String) -> TimError {
    TimError::Invalid { endpoint, reason }
}

/// A reqwest failure as a typed error, without the URL (whose query holds the UserSig).
fn from_reqwest(endpoint: TimEndpoint, e: reqwest::Error) -> TimError {
    if e.is_timeout() {
        TimError::Timeout { endpoint }
    } else if e.is_decode() || e.is_body() {
        TimError::Decode {
            endpoint,
            reason: "body could not be read".into(),
            snippet: String::new(),
        }
    } else {
        TimError::Connect {
            endpoint,
            reason: e.without_url().to_string(),
        }
    }
}

/// At most [`SNIPPET_CHARS`] characters of a body, for error messages.
fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let mut out: String = s.chars().take(SNIPPET_CHARS).collect();
    if s.chars().count() > SNIPPET_CHARS {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests;
