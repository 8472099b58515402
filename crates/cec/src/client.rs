//! The HTTP client of one CEC tenant.
//!
//! Every call carries `x-app-key`, `Authorization: Bearer <AccessToken>` and `User-Agent:
//! ccrelay/<version> (<instance>)` ([`user_agent`]: which relay made it); calls for a user also
//! carry that user's `ccmessaging-token`. The client keeps both tokens itself:
//! - the AccessToken is fetched before first use and refreshed before it expires, one refresh at a
//!   time ([`AccessTokenCache`]);
//! - a user's token comes from applyToken; when a response header `ccmessaging-token` carries a new
//!   one, it replaces the old (web channel document §3.1.2);
//! - on HTTP 401 the token that was refused is dropped, a new one obtained, and the call retried
//!   once. A 401 from applyToken itself means the AccessToken was refused.
//!
//! Each call has a timeout, and its answer is read up to a limit ([`MAX_ANSWER_BYTES`]; for
//! downloadFileStream, the base64 of the tenant's `max_file_bytes`): a longer answer is a final
//! [`CecError::TooLarge`], never read to its end. Retrying on failure is the caller's business
//! ([`CecError::is_retryable`]).
//!
//! A call does as little as it can per request, since polls run tens of thousands of times a
//! second: each endpoint's URL is parsed once (a call clones it and appends its query), the
//! `x-app-key` and token header values are kept ready-made, and the call metrics are held handles.
//!
//! "doc §N" cites chapter N of the web channel document: Huawei Cloud CEC 2.5.0.0.0, *User Access —
//! Web Client Access (RESTful)*.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::auth::{AccessToken, AccessTokenCache, UserToken, UserTokens};
use super::error::{CecError, Endpoint, snippet};
use super::wire::{
    ApplyTokenRequest, ApplyTokenResponse, CHANNEL_WEB, PollResponse, SendRequest, SendResponse,
    TokenByAkSkRequest, TokenByAkSkResponse, result_code,
};
use super::wire_ops::{
    ChannelOnly, ClickToCallEventsResponse, ClickToCallRequest, ClickToCallSupportResponse,
    DownloadRequest, DownloadResponse, LeaveMessageRequest, MobileAgentCallRequest,
    MobileAgentCallResponse, PhraseRequest, PhraseResponse, QueueInfoRequest, QueueInfoResponse,
    ResultResponse, RobotFeedbackRequest, SatisfactionRequest, UploadRequest, UploadResponse,
};
use config::CecTenant;
use upstream::bounded::MAX_ANSWER_BYTES;

/// Header carrying a user's token, both ways.
pub const CC_TOKEN_HEADER: &str = "ccmessaging-token";
/// Header carrying the app key.
pub const APP_KEY_HEADER: &str = "x-app-key";
/// Header asking for an AccessToken lifetime, in seconds.
pub const TOKEN_EXPIRE_HEADER: &str = "X-Token-Expire";

/// The instance named in the `User-Agent` of a client given none ([`CecClient::http_client`]).
pub const DEFAULT_INSTANCE: &str = "ccrelay";

/// `ccrelay/<version> (<instance>)`: the `User-Agent` of every request, naming the relay that made
/// it (among several, docs/HA.md) for the upstream's logs and the simulator's call log. Characters
/// a header or the parentheses cannot carry (controls, spaces, non-ASCII, `(`, `)`, `\`) become
/// `_`; an empty instance is [`DEFAULT_INSTANCE`].
pub fn user_agent(instance: &str) -> String {
    let instance = match instance {
        "" => DEFAULT_INSTANCE.to_owned(),
        name => name
            .chars()
            .map(|c| match c {
                '(' | ')' | '\\' => '_',
                c if c.is_ascii_graphic() => c,
                _ => '_',
            })
            .collect(),
    };
    format!("ccrelay/{} ({instance})", env!("CARGO_PKG_VERSION"))
}

/// Tokens held beyond `max_sessions`, for users calling RPC ops without a session.
const SPARE_USER_TOKENS: usize = 1024;

/// How a call authenticates.
#[derive(Clone, Copy)]
enum Auth<'a> {
    /// AccessToken only (applyToken).
    App,
    /// AccessToken and this user's token.
    User(&'a str),
}

/// The client of one tenant. Cheap to clone; clones share the HTTP pool and the token caches.
#[derive(Clone)]
pub struct CecClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    tenant: CecTenant,
    access: AccessTokenCache,
    users: UserTokens,
    /// Each endpoint's URL (at `endpoint as usize`), parsed once; `None` if it does not parse.
    urls: Vec<Option<url::Url>>,
    /// `x-app-key`, if the key is a valid header value.
    app_key: Option<HeaderValue>,
    metrics: upstream::metrics::UpstreamCalls,
}

impl CecClient {
    /// A client for `tenant` sharing the connection pool of `http`.
    pub fn new(http: reqwest::Client, tenant: CecTenant) -> Self {
        let urls = Endpoint::ALL
            .iter()
            .map(|&e| url::Url::parse(&endpoint_url(&tenant.base_url, e)).ok())
            .collect();
        // Every open session's user, and as many again as RPC callers without a session may
        // need (at most [`SPARE_USER_TOKENS`]).
        let user_capacity = tenant
            .max_sessions
            .saturating_add(tenant.max_sessions.min(SPARE_USER_TOKENS));
        CecClient {
            inner: Arc::new(Inner {
                http,
                app_key: HeaderValue::from_str(&tenant.app_key).ok(),
                metrics: upstream::metrics::UpstreamCalls::new(
                    "cec",
                    &tenant.name,
                    Endpoint::ALL.len(),
                ),
                urls,
                tenant,
                access: AccessTokenCache::default(),
                users: UserTokens::with_capacity(user_capacity),
            }),
        }
    }

    /// [`Self::http_client_for`] the instance [`DEFAULT_INSTANCE`] (tools, tests).
    pub fn http_client() -> reqwest::Result<reqwest::Client> {
        Self::http_client_for(DEFAULT_INSTANCE)
    }

    /// One HTTP client for every tenant (and every Tencent app): keep-alive pool, rustls, no
    /// redirects, and [`user_agent`]`(instance)` on every request.
    pub fn http_client_for(instance: &str) -> reqwest::Result<reqwest::Client> {
        reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(user_agent(instance))
            .build()
    }

    pub fn tenant(&self) -> &CecTenant {
        &self.inner.tenant
    }

    /// The user's current token, if the client holds one.
    pub fn user_token(&self, user: &str) -> Option<Arc<str>> {
        self.inner.users.token(user)
    }

    /// Whether the client holds a token for the user.
    pub fn has_user_token(&self, user: &str) -> bool {
        self.inner.users.contains(user)
    }

    /// The user's current token if the client holds one other than `known`.
    pub fn user_token_changed(&self, user: &str, known: Option<&str>) -> Option<Arc<str>> {
        self.inner.users.changed(user, known)
    }

    /// Seeds a user's token (a resumed session's stored token).
    pub fn set_user_token(
        &self,
        user: &str,
        token: &str,
        user_name: &str,
        locale: &str,
        channel_id: &str,
    ) {
        self.inner.users.insert(
            user,
            UserToken {
                token: token.into(),
                user_name: user_name.to_owned(),
                locale: locale.to_owned(),
                channel_id: channel_id.to_owned(),
            },
        );
    }

    /// Forgets a user's token (their session ended).
    pub fn forget_user(&self, user: &str) {
        self.inner.users.remove(user);
    }

    /// Applies for a `ccmessaging-token` for `user` and keeps it. Returns the token.
    pub async fn apply_token(
        &self,
        user: &str,
        user_name: &str,
        locale: &str,
        channel_id: &str,
    ) -> Result<Arc<str>, CecError> {
        let req = ApplyTokenRequest {
            user_id: user.to_owned(),
            user_name: user_name.to_owned(),
            channel_id: channel_id.to_owned(),
            locale: locale.to_owned(),
        };
        let rsp: ApplyTokenResponse = self
            .call(
                Endpoint::ApplyToken,
                reqwest::Method::POST,
                &[],
                Some(&req),
                Auth::App,
            )
            .await?;
        if rsp.result_code != result_code::OK || rsp.token.is_empty() {
            return Err(CecError::Result {
                endpoint: Endpoint::ApplyToken,
                code: rsp.result_code,
                desc: rsp
                    .result_desc
                    .unwrap_or_else(|| "no token in the answer".into()),
            });
        }
        let token: Arc<str> = rsp.token.into();
        self.inner.users.insert(
            user,
            UserToken {
                token: token.clone(),
                user_name: user_name.to_owned(),
                locale: locale.to_owned(),
                channel_id: channel_id.to_owned(),
            },
        );
        Ok(token)
    }

    /// `POST send`. The result code is the caller's to interpret ([`SendResponse`]).
    pub async fn send(&self, req: &SendRequest) -> Result<SendResponse, CecError> {
        self.call(
            Endpoint::Send,
            reqwest::Method::POST,
            &[],
            Some(req),
            Auth::User(&req.from),
        )
        .await
    }

    /// `GET poll?receiverId=<user>&channel=WEB`.
    pub async fn poll(&self, user: &str) -> Result<PollResponse, CecError> {
        self.call::<(), _>(
            Endpoint::Poll,
            reqwest::Method::GET,
            &[("receiverId", user), ("channel", CHANNEL_WEB)],
            None,
            Auth::User(user),
        )
        .await
    }

    /// [`Self::poll`], with the body as the upstream sent it (what the relay's poll journal
    /// keeps): the bytes read once, parsed once, and shared, not copied.
    pub async fn poll_raw(&self, user: &str) -> Result<(PollResponse, bytes::Bytes), CecError> {
        self.call_decoded::<(), _>(
            Endpoint::Poll,
            reqwest::Method::GET,
            &[("receiverId", user), ("channel", CHANNEL_WEB)],
            None,
            Auth::User(user),
            |body| Ok((parse_poll(&body)?, body)),
        )
        .await
    }

    /// `POST queryQueueInfo` for `user` (doc §4).
    pub async fn query_queue_info(
        &self,
        user: &str,
        req: &QueueInfoRequest,
    ) -> Result<QueueInfoResponse, CecError> {
        self.post(Endpoint::QueryQueueInfo, req, Auth::User(user))
            .await
    }

    /// `POST saveSatisfaction` (doc §6).
    pub async fn save_satisfaction(
        &self,
        req: &SatisfactionRequest,
    ) -> Result<ResultResponse, CecError> {
        self.post(Endpoint::SaveSatisfaction, req, Auth::User(&req.user_id))
            .await
    }

    /// `POST uploadFileStream` with `user`'s token (doc §8).
    pub async fn upload(
        &self,
        user: &str,
        req: &UploadRequest,
    ) -> Result<UploadResponse, CecError> {
        self.post(Endpoint::UploadFileStream, req, Auth::User(user))
            .await
    }

    /// `POST downloadFileStream` with `user`'s token (doc §9).
    pub async fn download(
        &self,
        user: &str,
        req: &DownloadRequest,
    ) -> Result<DownloadResponse, CecError> {
        self.post(Endpoint::DownloadFileStream, req, Auth::User(user))
            .await
    }

    /// `POST queryPhraseByKeyword` with `user`'s token (doc §10).
    pub async fn phrases(
        &self,
        user: &str,
        req: &PhraseRequest,
    ) -> Result<PhraseResponse, CecError> {
        self.post(Endpoint::QueryPhraseByKeyword, req, Auth::User(user))
            .await
    }

    /// `POST v1/createClickToCall` (doc §11).
    pub async fn create_click_to_call(
        &self,
        user: &str,
        req: &ClickToCallRequest,
    ) -> Result<ResultResponse, CecError> {
        self.post(Endpoint::CreateClickToCall, req, Auth::User(user))
            .await
    }

    /// `GET v1/getClickToCallEvents?channel=WEB` (doc §12).
    pub async fn click_to_call_events(
        &self,
        user: &str,
    ) -> Result<ClickToCallEventsResponse, CecError> {
        self.get(Endpoint::GetClickToCallEvents, Auth::User(user))
            .await
    }

    /// `GET v1/checkClickToCallSupport?channel=WEB` (doc §13).
    pub async fn click_to_call_support(
        &self,
        user: &str,
    ) -> Result<ClickToCallSupportResponse, CecError> {
        self.get(Endpoint::CheckClickToCallSupport, Auth::User(user))
            .await
    }

    /// `POST v1/dropClickToCall` (doc §14).
    pub async fn drop_click_to_call(&self, user: &str) -> Result<ResultResponse, CecError> {
        let req = ChannelOnly {
            channel: CHANNEL_WEB.to_owned(),
        };
        self.post(Endpoint::DropClickToCall, &req, Auth::User(user))
            .await
    }

    /// `POST doLeaveMessage` with `user`'s token (doc §15).
    pub async fn leave_message(
        &self,
        user: &str,
        req: &LeaveMessageRequest,
    ) -> Result<ResultResponse, CecError> {
        self.post(Endpoint::DoLeaveMessage, req, Auth::User(user))
            .await
    }

    /// `POST v1/mobileagent/createcall`: app credentials only, no customer token (doc §16).
    pub async fn mobile_agent_call(
        &self,
        req: &MobileAgentCallRequest,
    ) -> Result<MobileAgentCallResponse, CecError> {
        self.post(Endpoint::MobileAgentCreateCall, req, Auth::App)
            .await
    }

    /// `POST v1/robot/feedbacksatisfaction` with the token of `req.from` (doc §17).
    pub async fn robot_feedback(
        &self,
        req: &RobotFeedbackRequest,
    ) -> Result<ResultResponse, CecError> {
        self.post(Endpoint::RobotFeedback, req, Auth::User(&req.from))
            .await
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        body: &B,
        auth: Auth<'_>,
    ) -> Result<R, CecError> {
        self.call(endpoint, reqwest::Method::POST, &[], Some(body), auth)
            .await
    }

    async fn get<R: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        auth: Auth<'_>,
    ) -> Result<R, CecError> {
        self.call::<(), _>(
            endpoint,
            reqwest::Method::GET,
            &[("channel", CHANNEL_WEB)],
            None,
            auth,
        )
        .await
    }

    /// The AccessToken, fetching or refreshing it if needed (single-flight).
    async fn access_token(&self) -> Result<AccessToken, CecError> {
        if let Some(t) = self.inner.access.fresh() {
            return Ok(t);
        }
        let _guard = self.inner.access.refresh_lock.lock().await;
        // Someone else may have refreshed it while we waited.
        if let Some(t) = self.inner.access.fresh() {
            return Ok(t);
        }
        let t = &self.inner.tenant;
        let url = endpoint_url(&t.base_url, Endpoint::TokenByAkSk);
        let expire = t.token_expire.as_secs().max(1);
        let body = TokenByAkSkRequest {
            app_key: t.app_key.clone(),
            app_secret: t.secret().to_owned(),
        };
        let rsp = self
            .inner
            .http
            .post(url)
            .timeout(t.request_timeout)
            .header(TOKEN_EXPIRE_HEADER, expire.to_string())
            .json(&body)
            .send()
            .await
            .map_err(|e| CecError::from_reqwest(Endpoint::TokenByAkSk, e))?;
        let status = rsp.status();
        let bytes = read_body(
            Endpoint::TokenByAkSk,
            rsp,
            MAX_ANSWER_BYTES,
            status.as_u16(),
        )
        .await?;
        if status.as_u16() == 401 || status.as_u16() == 403 {
            return Err(CecError::Unauthorized {
                endpoint: Endpoint::TokenByAkSk,
            });
        }
        if !status.is_success() {
            return Err(CecError::Status {
                endpoint: Endpoint::TokenByAkSk,
                status: status.as_u16(),
                snippet: snippet(&bytes, 160),
            });
        }
        // The body holds the token: never quote it in an error.
        let parsed: TokenByAkSkResponse =
            serde_json::from_slice(&bytes).map_err(|e| CecError::Decode {
                endpoint: Endpoint::TokenByAkSk,
                reason: e.to_string(),
                snippet: String::new(),
            })?;
        if parsed.access_token.is_empty() {
            return Err(CecError::Decode {
                endpoint: Endpoint::TokenByAkSk,
                reason: "empty AccessToken".into(),
                snippet: String::new(),
            });
        }
        let lifetime = parsed
            .expires
            .as_deref()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(expire));
        Ok(self.inner.access.store(parsed.access_token, lifetime))
    }

    /// The user's token and its header value, applying for one (with what it was last applied
    /// with) if there is none.
    async fn ensure_user_token(
        &self,
        user: &str,
    ) -> Result<(Arc<str>, Option<HeaderValue>), CecError> {
        if let Some(held) = self.inner.users.with_header(user) {
            return Ok(held);
        }
        let t = &self.inner.tenant;
        // Boxed: apply_token → call → ensure_user_token would otherwise be an infinite type.
        let token = Box::pin(self.apply_token(user, user, &t.locale, &t.channel_config_id)).await?;
        let header = HeaderValue::from_str(&token).ok().map(|mut v| {
            v.set_sensitive(true);
            v
        });
        Ok((token, header))
    }

    /// The endpoint's URL with `query` appended, from the URL parsed once.
    fn url(&self, endpoint: Endpoint, query: &[(&str, &str)]) -> Option<url::Url> {
        let mut u = self.inner.urls.get(endpoint as usize)?.clone()?;
        if !query.is_empty() {
            u.query_pairs_mut().extend_pairs(query);
        }
        Some(u)
    }

    async fn reapply_user_token(&self, user: &str, refused: &str) -> Result<Arc<str>, CecError> {
        let t = &self.inner.tenant;
        let prev = self.inner.users.invalidate(user, refused);
        match prev {
            // Someone else already renewed it.
            Some(p) if &*p.token != refused => Ok(p.token),
            Some(p) => {
                Box::pin(self.apply_token(user, &p.user_name, &p.locale, &p.channel_id)).await
            }
            None => Box::pin(self.apply_token(user, user, &t.locale, &t.channel_config_id)).await,
        }
    }

    /// One call with the 401-renew-retry-once rule, counted in the metrics.
    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        method: reqwest::Method,
        query: &[(&str, &str)],
        body: Option<&B>,
        auth: Auth<'_>,
    ) -> Result<R, CecError> {
        self.call_decoded(endpoint, method, query, body, auth, |bytes| {
            decode(endpoint, &bytes)
        })
        .await
    }

    /// [`Self::call`], with the answer's body turned into `T` by `decode` (and the metrics of
    /// the call recorded with its outcome, decoding included).
    async fn call_decoded<B: Serialize, T>(
        &self,
        endpoint: Endpoint,
        method: reqwest::Method,
        query: &[(&str, &str)],
        body: Option<&B>,
        auth: Auth<'_>,
        decode: impl FnOnce(bytes::Bytes) -> Result<T, CecError>,
    ) -> Result<T, CecError> {
        let started = std::time::Instant::now();
        let r = self
            .call_renewing(endpoint, method, query, body, auth)
            .await
            .and_then(decode);
        self.inner.metrics.record(
            endpoint as usize,
            endpoint.as_str(),
            started.elapsed(),
            r.as_ref().err().map(CecError::code),
        );
        r
    }

    /// One call, renewing an expired token once; the body of a 2xx answer.
    async fn call_renewing<B: Serialize>(
        &self,
        endpoint: Endpoint,
        method: reqwest::Method,
        query: &[(&str, &str)],
        body: Option<&B>,
        auth: Auth<'_>,
    ) -> Result<bytes::Bytes, CecError> {
        let mut retried = false;
        loop {
            let access = self.access_token().await?;
            let (user_token, user_header) = match auth {
                Auth::App => (None, None),
                Auth::User(u) => {
                    let (t, h) = self.ensure_user_token(u).await?;
                    (Some(t), h)
                }
            };
            let t = &self.inner.tenant;
            let req = match self.url(endpoint, query) {
                Some(url) => self.inner.http.request(method.clone(), url),
                None => self.inner.http.request(
                    method.clone(),
                    endpoint_url_with_query(&t.base_url, endpoint, query),
                ),
            };
            let mut req = req
                .timeout(t.request_timeout)
                .headers(self.headers(&access, user_header));
            if let Some(b) = body {
                req = req.json(b);
            }
            let rsp = req
                .send()
                .await
                .map_err(|e| CecError::from_reqwest(endpoint, e))?;
            let status = rsp.status().as_u16();
            if status == 401 {
                if retried {
                    return Err(CecError::Unauthorized { endpoint });
                }
                retried = true;
                match (auth, user_token) {
                    (Auth::User(u), Some(used)) => {
                        // applyToken refreshes the AccessToken itself if that was the problem.
                        self.reapply_user_token(u, &used).await?;
                    }
                    _ => self.inner.access.invalidate(&access.value),
                }
                continue;
            }
            if let (Auth::User(u), Some(h)) = (auth, rsp.headers().get(CC_TOKEN_HEADER))
                && let Ok(new) = h.to_str()
                && !new.is_empty()
            {
                self.inner.users.renew(u, new);
            }
            let bytes = read_body(endpoint, rsp, self.body_limit(endpoint), status).await?;
            if !(200..300).contains(&status) {
                return Err(CecError::Status {
                    endpoint,
                    status,
                    snippet: snippet(&bytes, 160),
                });
            }
            return Ok(bytes);
        }
    }

    /// The most of an answer of `endpoint` that is read: a downloaded file's base64 (with line
    /// breaks) for downloadFileStream, [`MAX_ANSWER_BYTES`] for every other answer.
    fn body_limit(&self, endpoint: Endpoint) -> usize {
        if endpoint == Endpoint::DownloadFileStream {
            download_limit(self.inner.tenant.max_file_bytes)
        } else {
            MAX_ANSWER_BYTES
        }
    }

    /// The call's headers, from the values kept ready-made (sensitive ones marked so).
    fn headers(&self, access: &AccessToken, user_token: Option<HeaderValue>) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(4);
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(v) = &self.inner.app_key {
            h.insert(APP_KEY_HEADER, v.clone());
        }
        if let Some(v) = &access.header {
            h.insert(AUTHORIZATION, v.clone());
        }
        if let Some(v) = user_token {
            h.insert(CC_TOKEN_HEADER, v);
        }
        h
    }
}

/// The body of an answer with HTTP `status`, up to `limit` bytes. A longer one is
/// [`CecError::TooLarge`] if it is a success; an error status's body is only quoted, so it is
/// then left out.
async fn read_body(
    endpoint: Endpoint,
    rsp: reqwest::Response,
    limit: usize,
    status: u16,
) -> Result<bytes::Bytes, CecError> {
    match upstream::bounded::read(rsp, limit).await {
        Ok(b) => Ok(b),
        Err(upstream::bounded::BodyError::TooLarge { .. }) if !(200..300).contains(&status) => {
            Ok(bytes::Bytes::new())
        }
        Err(e) => Err(CecError::from_body(endpoint, e)),
    }
}

/// The longest downloadFileStream answer for a file of `max_file_bytes`: its base64 (4 bytes per
/// 3), line breaks up to one per 32 bytes, and 64 KiB for the JSON around it.
pub fn download_limit(max_file_bytes: usize) -> usize {
    let b64 = max_file_bytes.div_ceil(3).saturating_mul(4);
    b64.saturating_add(b64 / 32).saturating_add(64 * 1024)
}

/// An answer of `endpoint` as `R`. An applyToken answer is not quoted in the error: it carries
/// the customer's token.
fn decode<R: DeserializeOwned>(endpoint: Endpoint, body: &[u8]) -> Result<R, CecError> {
    serde_json::from_slice(body).map_err(|e| CecError::Decode {
        endpoint,
        reason: e.to_string(),
        snippet: if endpoint == Endpoint::ApplyToken {
            String::new()
        } else {
            snippet(body, 160)
        },
    })
}

/// A poll answer's body (as [`CecClient::poll_raw`] returned it, or as the poll journal kept it).
///
/// # Errors
/// [`CecError::Decode`] when it is not a poll answer.
pub fn parse_poll(body: &[u8]) -> Result<PollResponse, CecError> {
    decode(Endpoint::Poll, body)
}

fn endpoint_url(base: &url::Url, endpoint: Endpoint) -> String {
    format!("{}{}", base.as_str().trim_end_matches('/'), endpoint.path())
}

fn endpoint_url_with_query(base: &url::Url, endpoint: Endpoint, query: &[(&str, &str)]) -> String {
    let plain = endpoint_url(base, endpoint);
    if query.is_empty() {
        return plain;
    }
    match url::Url::parse(&plain) {
        Ok(mut u) => {
            u.query_pairs_mut().extend_pairs(query);
            u.into()
        }
        Err(_) => plain,
    }
}
