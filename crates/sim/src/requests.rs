//! The log of the CEC API requests the simulator received — method, path, query, headers and
//! JSON body — so tests can check the exact upstream request of every endpoint
//! ([`crate::Simulator::requests`]). The `/sim/` control API is not logged. Bounded: the
//! oldest entries go first, and a body over 64 KiB (`MAX_BODY`) is kept as its length only.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::Simulator;
use super::faults::lock;

/// Entries kept.
const CAPACITY: usize = 2_000;
/// Largest body kept in the log.
const MAX_BODY: usize = 64 * 1024;

/// One request as received. `Debug` leaves out the values of the credential headers.
#[derive(Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    /// The body as JSON, when it is JSON of at most 64 KiB (`MAX_BODY`).
    pub body: Option<serde_json::Value>,
    pub body_len: usize,
}

/// Headers whose values `Debug` does not show.
const CREDENTIALS: &[&str] = &["authorization", "ccmessaging-token", "x-app-secret"];

impl std::fmt::Debug for LoggedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: BTreeMap<&str, &str> = self
            .headers
            .iter()
            .map(|(k, v)| {
                let shown = if CREDENTIALS.contains(&k.as_str()) {
                    "[redacted]"
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("LoggedRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("headers", &headers)
            .field("body", &self.body)
            .field("body_len", &self.body_len)
            .finish()
    }
}

impl LoggedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

#[derive(Default)]
pub(crate) struct RequestLog {
    entries: Mutex<VecDeque<LoggedRequest>>,
}

impl RequestLog {
    pub(crate) fn snapshot(&self) -> Vec<LoggedRequest> {
        lock(&self.entries).iter().cloned().collect()
    }
}

/// Middleware: logs the request, then hands it on unchanged.
pub(crate) async fn record(State(sim): State<Simulator>, req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/sim/") {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return axum::http::StatusCode::BAD_REQUEST.into_response();
    };
    let entry = LoggedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: (bytes.len() <= MAX_BODY)
            .then(|| serde_json::from_slice(&bytes).ok())
            .flatten(),
        body_len: bytes.len(),
    };
    {
        let mut log = lock(&sim.inner.requests.entries);
        if log.len() >= CAPACITY {
            log.pop_front();
        }
        log.push_back(entry);
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_leaves_out_credentials() {
        let r = LoggedRequest {
            method: "POST".into(),
            path: "/apiaccess/ccmessaging/send".into(),
            query: None,
            headers: [
                ("authorization", "Bearer s3cr3t-access"),
                ("ccmessaging-token", "s3cr3t-cc"),
                ("x-app-key", "ak"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            body: None,
            body_len: 0,
        };
        let shown = format!("{r:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(
            shown.contains("x-app-key") && shown.contains("ak"),
            "{shown}"
        );
        assert_eq!(r.header("Authorization"), Some("Bearer s3cr3t-access"));
    }
}
