//! Injected faults: what a flaky upstream or its API gateway does to a call.
//!
//! A fault is matched by endpoint (or [`Endpoint::Any`]) in the order faults were injected, and is
//! served *before* the call is processed: a faulted send is not processed and a faulted poll drains
//! nothing. The one exception is a fault that only delays ([`Fault::is_delay_only`]): the call is
//! then processed once the delay has passed, whether or not the client is still waiting, as a
//! slow server would (see [`crate`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// An endpoint of the simulated CEC API, as faults and statistics name it. Serialised in
/// camelCase after the URL's last segment (`"tokenByAkSk"`, `"send"`, …); the Rust names are
/// accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Endpoint {
    /// `POST /apigovernance/api/oauth/tokenByAkSk`.
    #[serde(alias = "TokenByAkSk")]
    TokenByAkSk,
    /// `POST /apiaccess/ccmessaging/applyToken`.
    #[serde(alias = "ApplyToken")]
    ApplyToken,
    /// `POST /apiaccess/ccmessaging/send`.
    #[serde(alias = "Send")]
    Send,
    /// `GET /apiaccess/ccmessaging/poll`.
    #[serde(alias = "Poll")]
    Poll,
    /// `POST /apiaccess/ccmessaging/queryQueueInfo`.
    #[serde(alias = "QueryQueueInfo")]
    QueryQueueInfo,
    /// `POST /apiaccess/ccmessaging/saveSatisfaction`.
    #[serde(alias = "SaveSatisfaction")]
    SaveSatisfaction,
    /// `POST /apiaccess/ccmessaging/uploadFileStream`.
    #[serde(alias = "UploadFileStream")]
    UploadFileStream,
    /// `POST /apiaccess/ccmessaging/downloadFileStream`.
    #[serde(alias = "DownloadFileStream")]
    DownloadFileStream,
    /// `POST /apiaccess/ccmessaging/queryPhraseByKeyword`.
    #[serde(alias = "QueryPhraseByKeyword")]
    QueryPhraseByKeyword,
    /// `POST /apiaccess/ccmessaging/v1/createClickToCall`.
    #[serde(alias = "CreateClickToCall")]
    CreateClickToCall,
    /// `GET /apiaccess/ccmessaging/v1/getClickToCallEvents`.
    #[serde(alias = "GetClickToCallEvents")]
    GetClickToCallEvents,
    /// `GET /apiaccess/ccmessaging/v1/checkClickToCallSupport`.
    #[serde(alias = "CheckClickToCallSupport")]
    CheckClickToCallSupport,
    /// `POST /apiaccess/ccmessaging/v1/dropClickToCall`.
    #[serde(alias = "DropClickToCall")]
    DropClickToCall,
    /// `POST /apiaccess/ccmessaging/doLeaveMessage`.
    #[serde(alias = "DoLeaveMessage")]
    DoLeaveMessage,
    /// `POST /apiaccess/ccmessaging/v1/mobileagent/createcall`.
    #[serde(alias = "MobileAgentCreateCall")]
    MobileAgentCreateCall,
    /// `POST /apiaccess/ccmessaging/v1/robot/feedbacksatisfaction`.
    #[serde(alias = "RobotFeedback")]
    RobotFeedback,
    /// Every endpoint above (faults only; never counted in statistics).
    #[serde(alias = "Any")]
    Any,
}

impl Endpoint {
    /// The endpoints that are counted in statistics, in index order.
    pub const COUNTED: [Endpoint; 16] = [
        Endpoint::TokenByAkSk,
        Endpoint::ApplyToken,
        Endpoint::Send,
        Endpoint::Poll,
        Endpoint::QueryQueueInfo,
        Endpoint::SaveSatisfaction,
        Endpoint::UploadFileStream,
        Endpoint::DownloadFileStream,
        Endpoint::QueryPhraseByKeyword,
        Endpoint::CreateClickToCall,
        Endpoint::GetClickToCallEvents,
        Endpoint::CheckClickToCallSupport,
        Endpoint::DropClickToCall,
        Endpoint::DoLeaveMessage,
        Endpoint::MobileAgentCreateCall,
        Endpoint::RobotFeedback,
    ];

    /// Index into [`Endpoint::COUNTED`]; `None` for [`Endpoint::Any`].
    pub(crate) fn index(self) -> Option<usize> {
        Endpoint::COUNTED.iter().position(|e| *e == self)
    }

    pub(crate) fn matches(self, called: Endpoint) -> bool {
        self == Endpoint::Any || self == called
    }

    /// A plausible answer of this endpoint cut in the middle (for [`FaultBody::Truncated`]).
    fn truncated_body(self) -> &'static str {
        match self {
            Endpoint::TokenByAkSk => r#"{"AccessToken":"a3f9c2","ApplyType":"Bea"#,
            Endpoint::ApplyToken => r#"{"token":"7d9fbcdd-e306-4b84","resul"#,
            Endpoint::Poll => {
                r#"{"resultCode":"0","resultDesc":"query user messages success.","downlinkMessages":[{"from":"10115"#
            }
            _ => r#"{"resultCode":"0","resultDe"#,
        }
    }
}

/// What the body of a faulted answer is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FaultBody {
    /// With a `status`: a small JSON error body as an API gateway sends it. Without one: the
    /// normal answer (the fault then only delays).
    #[default]
    #[serde(alias = "Normal")]
    Normal,
    /// An HTML error page: not JSON at all.
    #[serde(alias = "Garbage")]
    Garbage,
    /// The endpoint's JSON answer cut in the middle.
    #[serde(alias = "Truncated")]
    Truncated,
    /// Exactly this body, as `application/json`.
    #[serde(alias = "Custom")]
    Custom(String),
}

/// One injected fault. As JSON (control API):
/// `{"endpoint":"send","status":503,"delay":"2s","body":"garbage","times":3}`; every field but
/// `endpoint` may be left out, `body` is `"normal"|"garbage"|"truncated"|{"custom":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    /// Which endpoint's calls get the fault.
    pub endpoint: Endpoint,
    /// HTTP status of the faulted answer; `None` ⇒ 200 (or the normal status for a delay-only
    /// fault). A status that is not a valid HTTP status is served as 500.
    #[serde(default)]
    pub status: Option<u16>,
    /// How long to wait before answering (or before processing, for a delay-only fault).
    #[serde(default, with = "humantime_serde")]
    pub delay: Option<Duration>,
    /// The body of the faulted answer.
    #[serde(default)]
    pub body: FaultBody,
    /// For how many calls; `None` ⇒ until cleared.
    #[serde(default)]
    pub times: Option<u32>,
}

impl Fault {
    /// Answer `status` with a gateway-style JSON error body.
    pub fn status(endpoint: Endpoint, status: u16) -> Self {
        Fault {
            endpoint,
            status: Some(status),
            delay: None,
            body: FaultBody::Normal,
            times: None,
        }
    }

    /// Answer 200 with `body` instead of the normal answer.
    pub fn body(endpoint: Endpoint, body: FaultBody) -> Self {
        Fault {
            endpoint,
            status: None,
            delay: None,
            body,
            times: None,
        }
    }

    /// Process the call normally, but only after `delay`.
    pub fn delay(endpoint: Endpoint, delay: Duration) -> Self {
        Fault {
            endpoint,
            status: None,
            delay: Some(delay),
            body: FaultBody::Normal,
            times: None,
        }
    }

    /// The same fault, for `n` calls only.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    /// Whether this fault only slows the call down (no status, normal body): the call is still
    /// processed.
    pub fn is_delay_only(&self) -> bool {
        self.status.is_none() && self.body == FaultBody::Normal
    }

    /// The answer this fault serves in place of the normal one (not for delay-only faults).
    pub(crate) fn response(&self, called: Endpoint) -> Response {
        let status = self
            .status
            .map(|s| StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .unwrap_or(StatusCode::OK);
        let json = "application/json;charset=UTF-8";
        match &self.body {
            FaultBody::Normal => {
                let body = serde_json::json!({
                    "error_code": format!("SIM.{}", status.as_u16()),
                    "error_msg": format!(
                        "injected fault: {}",
                        status.canonical_reason().unwrap_or("error")
                    ),
                });
                (status, [(header::CONTENT_TYPE, json)], body.to_string()).into_response()
            }
            FaultBody::Garbage => (
                status,
                [(header::CONTENT_TYPE, "text/html")],
                "<html><head><title>502 Bad Gateway</title></head><body><center>\
                 <h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>",
            )
                .into_response(),
            FaultBody::Truncated => (
                status,
                [(header::CONTENT_TYPE, json)],
                called.truncated_body(),
            )
                .into_response(),
            FaultBody::Custom(body) => {
                (status, [(header::CONTENT_TYPE, json)], body.clone()).into_response()
            }
        }
    }
}

/// The faults in force, in injection order.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// The faults themselves; `times` counts down as they are served.
    list: Mutex<Vec<Fault>>,
    /// `list.len()`, readable without the lock: the fast path of every call when no fault is set.
    len: AtomicUsize,
}

impl Faults {
    pub(crate) fn inject(&self, fault: Fault) {
        if fault.times == Some(0) {
            return;
        }
        let mut list = lock(&self.list);
        list.push(fault);
        self.len.store(list.len(), Ordering::Release);
    }

    pub(crate) fn clear(&self) {
        let mut list = lock(&self.list);
        list.clear();
        self.len.store(0, Ordering::Release);
    }

    pub(crate) fn list(&self) -> Vec<Fault> {
        lock(&self.list).clone()
    }

    /// The fault to serve on this call of `called`, if any, counting it down.
    pub(crate) fn take(&self, called: Endpoint) -> Option<Fault> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut list = lock(&self.list);
        let i = list.iter().position(|f| f.endpoint.matches(called))?;
        let served = list[i].clone();
        if let Some(times) = list[i].times.as_mut() {
            *times = times.saturating_sub(1);
            if *times == 0 {
                list.remove(i);
            }
        }
        self.len.store(list.len(), Ordering::Release);
        Some(served)
    }
}

/// Locks a mutex, recovering from poisoning (every critical section leaves the data consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
