//! The HTTP client of one Tencent IM app.
//!
//! Every call is `POST {base_url}/v4/…?sdkappid=…&identifier=…&usersig=…&random=…&contenttype=json`
//! with a fresh 32-bit `random`, signed with the app's admin UserSig, which is cached and renewed
//! well before it expires (and at once when Tencent answers 70001). An HTTP 200 answer with
//! `ActionStatus` FAIL or `ErrorCode` ≠ 0 is a [`TimError::Api`]. Each call has a timeout;
//! retrying is the caller's business ([`TimError::is_retryable`]).

use std::sync::Arc;

use super::error::{TimEndpoint, TimError};
use super::wire::{SendMsgRequest, StreamMsgRequest, TimAnswer};
use crate::config::TimApp;

/// The client of one app. Cheap to clone; clones share the HTTP pool and the UserSig cache.
#[derive(Clone)]
pub struct TimClient {
    inner: Arc<Inner>,
}

struct Inner {
    #[allow(dead_code)] // used once the calls are implemented
    http: reqwest::Client,
    app: TimApp,
}

impl TimClient {
    pub fn new(http: reqwest::Client, app: TimApp) -> Self {
        TimClient {
            inner: Arc::new(Inner { http, app }),
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

    /// `v4/desk_http_svc/send_msg`. A body over 12 KB is refused before sending.
    pub async fn send_msg(&self, req: &SendMsgRequest) -> Result<TimAnswer, TimError> {
        let _ = req;
        Err(TimError::Invalid {
            endpoint: TimEndpoint::DeskSendMsg,
            reason: "not implemented yet".into(),
        })
    }

    /// `v4/openim_robot_http_svc/send_stream_msg`; the answer carries `MsgKey`.
    pub async fn send_stream_msg(&self, req: &StreamMsgRequest) -> Result<TimAnswer, TimError> {
        let _ = req;
        Err(TimError::Invalid {
            endpoint: TimEndpoint::RobotSendStreamMsg,
            reason: "not implemented yet".into(),
        })
    }
}
