//! Typed failures of the Tencent IM client, classified apart from sending: callers ask
//! [`TimError::is_retryable`] and [`TimError::needs_new_sig`], never parse messages.
//!
//! An HTTP 200 answer with `ActionStatus` FAIL or a non-zero `ErrorCode` is a failure
//! ([`TimError::Api`]) and keeps Tencent's code and text unchanged for the caller.

/// Which Tencent endpoint a call went to (for errors, logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimEndpoint {
    /// `v4/desk_http_svc/send_msg`
    DeskSendMsg,
    /// `v4/openim_robot_http_svc/send_stream_msg`
    RobotSendStreamMsg,
}

impl TimEndpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            TimEndpoint::DeskSendMsg => "send_msg",
            TimEndpoint::RobotSendStreamMsg => "send_stream_msg",
        }
    }
    /// The path below the app's base URL.
    pub fn path(self) -> &'static str {
        match self {
            TimEndpoint::DeskSendMsg => "/v4/desk_http_svc/send_msg",
            TimEndpoint::RobotSendStreamMsg => "/v4/openim_robot_http_svc/send_stream_msg",
        }
    }
}

impl std::fmt::Display for TimEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error codes the relay branches on (documents, and Tencent's common REST codes).
pub mod code {
    /// send_msg: JSON cannot be parsed.
    pub const JSON_PARSE: i64 = 90001;
    /// send_msg: MsgRandom missing or not an Integer.
    pub const MSG_RANDOM: i64 = 90005;
    /// send_msg: MsgBody not an Array.
    pub const MSG_BODY: i64 = 90007;
    /// send_msg: needs App administrator rights.
    pub const NOT_ADMIN: i64 = 90009;
    /// send_msg: body over 12 KB.
    pub const TOO_LONG: i64 = 93000;
    /// send_msg: internal error, retry.
    pub const DESK_INTERNAL: i64 = 141002;
    /// send_msg: invalid parameter.
    pub const DESK_PARAM: i64 = 141004;
    /// send_msg: the session does not exist or has ended.
    pub const NO_SESSION: i64 = 141005;
    /// send_stream_msg: internal error, retry.
    pub const ROBOT_INTERNAL: i64 = 10002;
    /// send_stream_msg: incorrect parameter.
    pub const ROBOT_PARAM: i64 = 10004;
    /// REST frequency / rate limits (retry with backoff).
    pub const RATE_LIMITS: [i64; 4] = [60007, 60011, 60018, 60019];
    /// UserSig expired: sign a new one and retry.
    pub const SIG_EXPIRED: i64 = 70001;
    /// UserSig verification failed (wrong key or identifier): final.
    pub const SIG_INVALID: i64 = 70009;
    /// UserSig cannot be parsed (Tencent's account error list): final.
    pub const SIG_PARSE: i64 = 70003;
    /// The request's identifier is not the one the UserSig was signed for: final.
    pub const SIG_IDENTIFIER: i64 = 70013;
    /// The request's SDKAppID is not the one the UserSig was signed for: final.
    pub const SIG_SDKAPPID: i64 = 70014;
    /// REST common code: the service timed out (or the HTTP request was malformed); retry.
    pub const REST_TIMEOUT: i64 = 60008;
    /// The app is not a Desk (智能客服) app: final.
    pub const NOT_DESK_APP: i64 = 141000;
    /// The frequency-limit code the simulator answers: 60007, "REST 接口调用频率超过限制,请降低请求
    /// 频率" in Tencent's REST common error list (60011 is per SDKAppID, 60018/60019 "请求过于
    /// 频繁"); every code of [`RATE_LIMITS`] is treated alike.
    pub const SIM_RATE_LIMIT: i64 = 60007;
}

/// A failed Tencent IM call. Never carries the secret key or a UserSig.
#[derive(Debug, thiserror::Error)]
pub enum TimError {
    /// Refused before sending (body over 12 KB, no addressing, …): final.
    #[error("Tencent {endpoint}: refused before sending: {reason}")]
    Invalid {
        endpoint: TimEndpoint,
        reason: String,
    },
    /// No answer in time.
    #[error("Tencent {endpoint}: timed out")]
    Timeout { endpoint: TimEndpoint },
    /// The connection failed or broke (refused, reset, DNS, TLS).
    #[error("Tencent {endpoint}: connection failed: {reason}")]
    Connect {
        endpoint: TimEndpoint,
        reason: String,
    },
    /// A non-200 HTTP status.
    #[error("Tencent {endpoint}: HTTP {status}: {snippet}")]
    Status {
        endpoint: TimEndpoint,
        status: u16,
        snippet: String,
    },
    /// HTTP 200 with a body that is not the documented JSON.
    #[error("Tencent {endpoint}: unreadable answer ({reason}): {snippet}")]
    Decode {
        endpoint: TimEndpoint,
        reason: String,
        snippet: String,
    },
    /// The answer's body is longer than the relay reads (`limit` bytes): not read to its end.
    #[error("Tencent {endpoint}: answer larger than {limit} bytes; not read")]
    TooLarge { endpoint: TimEndpoint, limit: usize },
    /// `ActionStatus` FAIL or `ErrorCode` ≠ 0: Tencent's code and text, unchanged.
    #[error("Tencent {endpoint}: ErrorCode {code}: {info}")]
    Api {
        endpoint: TimEndpoint,
        code: i64,
        info: String,
    },
}

impl TimError {
    /// Whether the same call may succeed if tried again later (with the same `MsgRandom`).
    pub fn is_retryable(&self) -> bool {
        match self {
            TimError::Invalid { .. } | TimError::TooLarge { .. } => false,
            TimError::Timeout { .. } | TimError::Connect { .. } | TimError::Decode { .. } => true,
            TimError::Status { status, .. } => {
                matches!(*status, 408 | 425 | 429) || (500..600).contains(status)
            }
            TimError::Api { code: c, .. } => {
                matches!(
                    *c,
                    code::DESK_INTERNAL
                        | code::ROBOT_INTERNAL
                        | code::SIG_EXPIRED
                        | code::REST_TIMEOUT
                ) || code::RATE_LIMITS.contains(c)
            }
        }
    }

    /// The admin UserSig was refused as expired: sign a new one before retrying.
    pub fn needs_new_sig(&self) -> bool {
        matches!(
            self,
            TimError::Api {
                code: code::SIG_EXPIRED,
                ..
            }
        )
    }

    /// Tencent said the app is over its rate limit (or HTTP 429).
    pub fn is_rate_limited(&self) -> bool {
        match self {
            TimError::Api { code: c, .. } => code::RATE_LIMITS.contains(c),
            TimError::Status { status: 429, .. } => true,
            _ => false,
        }
    }

    pub fn endpoint(&self) -> TimEndpoint {
        match self {
            TimError::Invalid { endpoint, .. }
            | TimError::Timeout { endpoint }
            | TimError::Connect { endpoint, .. }
            | TimError::Status { endpoint, .. }
            | TimError::Decode { endpoint, .. }
            | TimError::TooLarge { endpoint, .. }
            | TimError::Api { endpoint, .. } => *endpoint,
        }
    }

    /// The code to report to users: Tencent's `ErrorCode`, the HTTP status, or a word.
    pub fn code(&self) -> String {
        match self {
            TimError::Invalid { .. } => "invalid".into(),
            TimError::Timeout { .. } => "timeout".into(),
            TimError::Connect { .. } => "connect".into(),
            TimError::Status { status, .. } => status.to_string(),
            TimError::Decode { .. } => "decode".into(),
            TimError::TooLarge { .. } => "too_large".into(),
            TimError::Api { code, .. } => code.to_string(),
        }
    }

    /// The text to report to users: Tencent's `ErrorInfo` for API failures, else the message.
    pub fn info(&self) -> String {
        match self {
            TimError::Api { info, .. } => info.clone(),
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(c: i64) -> TimError {
        TimError::Api {
            endpoint: TimEndpoint::DeskSendMsg,
            code: c,
            info: String::new(),
        }
    }

    #[test]
    fn the_readme_s_retryable_and_final_codes() {
        for c in [141002, 10002, 60007, 60011, 60018, 60019, 70001, 60008] {
            assert!(api(c).is_retryable(), "{c} should be retryable");
        }
        for c in [
            90001, 90005, 90007, 90009, 93000, 141004, 141005, 10004, 70009, 70003, 70013, 70014,
            141000,
        ] {
            assert!(!api(c).is_retryable(), "{c} should be final");
        }
        assert!(api(70001).needs_new_sig());
        assert!(!api(70009).needs_new_sig());
        assert!(api(60018).is_rate_limited());
    }
}
