//! Tests of the CEC simulator, through its router (`tower::ServiceExt::oneshot`) or a spawned
//! server and reqwest.

mod call_log;
mod calls;
mod control;
mod conversation;
mod faults;
mod feedback;
mod forced;
mod media;
mod tim;
mod tokens;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{SimConfig, Simulator};
use ::cec::wire::{ApplyTokenResponse, PollResponse, SendResponse, TokenByAkSkResponse};

pub(super) const TOKEN_PATH: &str = "/apigovernance/api/oauth/tokenByAkSk";
pub(super) const APPLY_PATH: &str = "/apiaccess/ccmessaging/applyToken";
pub(super) const SEND_PATH: &str = "/apiaccess/ccmessaging/send";
pub(super) const QUEUE_PATH: &str = "/apiaccess/ccmessaging/queryQueueInfo";

/// One answer: status, headers, body bytes.
pub(super) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not the expected JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn value(&self) -> Value {
        self.json()
    }

    pub fn renewed_token(&self) -> Option<String> {
        self.headers
            .get("ccmessaging-token")
            .map(|v| v.to_str().expect("header text").to_owned())
    }
}

/// A customer-side client of the simulator's router.
pub(super) struct Client {
    pub sim: Simulator,
    pub router: Router,
    pub access: String,
}

impl Client {
    /// A simulator with `cfg`, and an AccessToken for it.
    pub async fn new(cfg: SimConfig) -> Self {
        let sim = Simulator::new(cfg);
        let router = sim.router();
        let mut c = Client {
            sim,
            router,
            access: String::new(),
        };
        let a = c
            .token_by_ak_sk("sim-app-key", "sim-app-secret", None)
            .await;
        assert_eq!(a.status, StatusCode::OK);
        c.access = a.json::<TokenByAkSkResponse>().access_token;
        c
    }

    pub async fn request(&self, req: Request<Body>) -> Answer {
        let resp = self
            .router
            .clone()
            .oneshot(req)
            .await
            .expect("router is infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body")
            .to_vec();
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn token_by_ak_sk(&self, key: &str, secret: &str, expire: Option<&str>) -> Answer {
        let mut req = Request::post(TOKEN_PATH).header("content-type", "application/json");
        if let Some(e) = expire {
            req = req.header("X-Token-Expire", e);
        }
        let body = json!({ "app_key": key, "app_secret": secret }).to_string();
        self.request(req.body(Body::from(body)).expect("request"))
            .await
    }

    /// A request to a ccmessaging endpoint with the client's credentials.
    pub fn authed(
        &self,
        method: &str,
        uri: &str,
        cc_token: Option<&str>,
    ) -> axum::http::request::Builder {
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .header("x-app-key", "sim-app-key")
            .header("Authorization", format!("Bearer {}", self.access));
        if let Some(t) = cc_token {
            b = b.header("ccmessaging-token", t);
        }
        b
    }

    pub async fn post(&self, path: &str, cc_token: Option<&str>, body: Value) -> Answer {
        let req = self
            .authed("POST", path, cc_token)
            .body(Body::from(body.to_string()))
            .expect("request");
        self.request(req).await
    }

    /// A GET of `uri` with the client's credentials and `cc_token`.
    pub async fn get(&self, uri: &str, cc_token: Option<&str>) -> Answer {
        let req = self
            .authed("GET", uri, cc_token)
            .body(Body::empty())
            .expect("request");
        self.request(req).await
    }

    /// A POST of `body` to `path` without any credentials (the control API).
    pub async fn post_plain(&self, path: &str, body: Value) -> Answer {
        let req = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        self.request(req).await
    }

    /// A token for `user`, connected to the robot (welcome polled); returns the token and the
    /// session's `callId`.
    pub async fn connected(&self, user: &str) -> (String, String) {
        let t = self.apply_token(user).await;
        let r = self.send_ok(user, &t, "CONNECT", "").await;
        assert_eq!(r.result_code, "0");
        let m = self.poll(user, &t).await.downlink_messages;
        let call_id = m[0].call_id.clone().expect("callId");
        (t, call_id)
    }

    pub async fn apply_token(&self, user: &str) -> String {
        let body = json!({ "userId": user, "userName": user, "channelId": "1011577355744904195", "locale": "zh" });
        let a = self.post(APPLY_PATH, None, body).await;
        assert_eq!(a.status, StatusCode::OK);
        let r: ApplyTokenResponse = a.json();
        assert_eq!(r.result_code, "0");
        assert!(!r.token.is_empty());
        r.token
    }

    /// A send of `control_type` with TEXT `content`, as the relay builds it.
    pub async fn send(
        &self,
        user: &str,
        token: &str,
        control_type: &str,
        content: &str,
        message_id: Option<&str>,
    ) -> Answer {
        let mut body = send_body(user, control_type, content);
        if let Some(id) = message_id {
            body["messageId"] = json!(id);
        }
        self.post(SEND_PATH, Some(token), body).await
    }

    /// [`Client::send`] that must answer 200; returns the parsed answer.
    pub async fn send_ok(
        &self,
        user: &str,
        token: &str,
        control_type: &str,
        content: &str,
    ) -> SendResponse {
        let a = self.send(user, token, control_type, content, None).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&a.body)
        );
        a.json()
    }

    pub async fn poll_raw(&self, user: &str, token: &str) -> Answer {
        let uri = format!("/apiaccess/ccmessaging/poll?receiverId={user}&channel=WEB");
        let req = self
            .authed("GET", &uri, Some(token))
            .body(Body::empty())
            .expect("request");
        self.request(req).await
    }

    pub async fn poll(&self, user: &str, token: &str) -> PollResponse {
        let a = self.poll_raw(user, token).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&a.body)
        );
        let r: PollResponse = a.json();
        assert_eq!(r.result_code, "0");
        r
    }
}

/// A send body as the relay builds it.
pub(super) fn send_body(user: &str, control_type: &str, content: &str) -> Value {
    json!({
        "channel": "WEB",
        "content": content,
        "controlType": control_type,
        "from": user,
        "mediaType": "TEXT",
        "senderNickname": user,
        "sourceType": "CUSTOMER",
        "timestamp": "1619573122352",
        "to": "1011577355744904195",
        "userAgent": null,
        "senderAvatar": null
    })
}

/// (resultCode, resultDesc) of a send answer.
pub(super) fn code_desc(r: &SendResponse) -> (&str, &str) {
    (
        r.result_code.as_str(),
        r.result_desc.as_deref().unwrap_or(""),
    )
}
