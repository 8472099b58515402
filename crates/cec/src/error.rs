//! Typed errors of the CEC client, classified for retrying apart from sending (Vector's
//! `RetryLogic`): callers ask [`CecError::is_retryable`], never parse messages.

/// Which CEC endpoint a call went to (for errors, logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    TokenByAkSk,
    ApplyToken,
    Send,
    Poll,
    QueryQueueInfo,
    SaveSatisfaction,
    UploadFileStream,
    DownloadFileStream,
    QueryPhraseByKeyword,
    CreateClickToCall,
    GetClickToCallEvents,
    CheckClickToCallSupport,
    DropClickToCall,
    DoLeaveMessage,
    MobileAgentCreateCall,
    RobotFeedback,
}

impl Endpoint {
    /// Every endpoint, each at the index `endpoint as usize`.
    pub const ALL: [Endpoint; 16] = [
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

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::TokenByAkSk => "tokenByAkSk",
            Endpoint::ApplyToken => "applyToken",
            Endpoint::Send => "send",
            Endpoint::Poll => "poll",
            Endpoint::QueryQueueInfo => "queryQueueInfo",
            Endpoint::SaveSatisfaction => "saveSatisfaction",
            Endpoint::UploadFileStream => "uploadFileStream",
            Endpoint::DownloadFileStream => "downloadFileStream",
            Endpoint::QueryPhraseByKeyword => "queryPhraseByKeyword",
            Endpoint::CreateClickToCall => "createClickToCall",
            Endpoint::GetClickToCallEvents => "getClickToCallEvents",
            Endpoint::CheckClickToCallSupport => "checkClickToCallSupport",
            Endpoint::DropClickToCall => "dropClickToCall",
            Endpoint::DoLeaveMessage => "doLeaveMessage",
            Endpoint::MobileAgentCreateCall => "mobileAgentCreateCall",
            Endpoint::RobotFeedback => "robotFeedback",
        }
    }
    /// The path below the tenant's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::TokenByAkSk => "/apigovernance/api/oauth/tokenByAkSk",
            Endpoint::ApplyToken => "/apiaccess/ccmessaging/applyToken",
            Endpoint::Send => "/apiaccess/ccmessaging/send",
            Endpoint::Poll => "/apiaccess/ccmessaging/poll",
            Endpoint::QueryQueueInfo => "/apiaccess/ccmessaging/queryQueueInfo",
            Endpoint::SaveSatisfaction => "/apiaccess/ccmessaging/saveSatisfaction",
            Endpoint::UploadFileStream => "/apiaccess/ccmessaging/uploadFileStream",
            Endpoint::DownloadFileStream => "/apiaccess/ccmessaging/downloadFileStream",
            Endpoint::QueryPhraseByKeyword => "/apiaccess/ccmessaging/queryPhraseByKeyword",
            Endpoint::CreateClickToCall => "/apiaccess/ccmessaging/v1/createClickToCall",
            Endpoint::GetClickToCallEvents => "/apiaccess/ccmessaging/v1/getClickToCallEvents",
            Endpoint::CheckClickToCallSupport => {
                "/apiaccess/ccmessaging/v1/checkClickToCallSupport"
            }
            Endpoint::DropClickToCall => "/apiaccess/ccmessaging/v1/dropClickToCall",
            Endpoint::DoLeaveMessage => "/apiaccess/ccmessaging/doLeaveMessage",
            Endpoint::MobileAgentCreateCall => "/apiaccess/ccmessaging/v1/mobileagent/createcall",
            Endpoint::RobotFeedback => "/apiaccess/ccmessaging/v1/robot/feedbacksatisfaction",
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed CEC call. Never carries a secret or a token.
#[derive(Debug, thiserror::Error)]
pub enum CecError {
    /// No answer in time.
    #[error("CEC {endpoint}: timed out")]
    Timeout { endpoint: Endpoint },
    /// The connection failed or broke (refused, reset, DNS, TLS).
    #[error("CEC {endpoint}: connection failed: {reason}")]
    Connect { endpoint: Endpoint, reason: String },
    /// 401 even after renewing the tokens: the credentials or the account are wrong.
    #[error("CEC {endpoint}: unauthorized (HTTP 401) after renewing tokens")]
    Unauthorized { endpoint: Endpoint },
    /// Any other non-200 HTTP status.
    #[error("CEC {endpoint}: HTTP {status}: {snippet}")]
    Status {
        endpoint: Endpoint,
        status: u16,
        snippet: String,
    },
    /// HTTP 200 with a body that is not the documented JSON.
    #[error("CEC {endpoint}: unreadable answer ({reason}): {snippet}")]
    Decode {
        endpoint: Endpoint,
        reason: String,
        snippet: String,
    },
    /// The answer's body is longer than the relay reads (`limit` bytes): not read to its end.
    /// Final: the same call would get the same answer.
    #[error("CEC {endpoint}: answer larger than {limit} bytes; not read")]
    TooLarge { endpoint: Endpoint, limit: usize },
    /// The upstream answered with a non-zero result code that makes the call fail as a whole
    /// (tokenByAkSk, applyToken). `send` result codes are outcomes, not errors.
    #[error("CEC {endpoint}: resultCode {code}: {desc}")]
    Result {
        endpoint: Endpoint,
        code: String,
        desc: String,
    },
}

impl CecError {
    /// Whether the same call may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            CecError::Timeout { .. } | CecError::Connect { .. } => true,
            // A garbage or truncated body is what proxies and overloaded gateways produce.
            CecError::Decode { .. } => true,
            CecError::Status { status, .. } => {
                matches!(*status, 408 | 425 | 429) || (500..600).contains(status)
            }
            CecError::Unauthorized { .. } => false,
            CecError::TooLarge { .. } => false,
            CecError::Result { .. } => false,
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        match self {
            CecError::Timeout { endpoint }
            | CecError::Connect { endpoint, .. }
            | CecError::Unauthorized { endpoint }
            | CecError::Status { endpoint, .. }
            | CecError::Decode { endpoint, .. }
            | CecError::TooLarge { endpoint, .. }
            | CecError::Result { endpoint, .. } => *endpoint,
        }
    }

    /// The code to report to users: the HTTP status, the upstream result code, or a word.
    pub fn code(&self) -> String {
        match self {
            CecError::Timeout { .. } => "timeout".into(),
            CecError::Connect { .. } => "connect".into(),
            CecError::Unauthorized { .. } => "401".into(),
            CecError::Status { status, .. } => status.to_string(),
            CecError::Decode { .. } => "decode".into(),
            CecError::TooLarge { .. } => "too_large".into(),
            CecError::Result { code, .. } => code.clone(),
        }
    }

    /// A body that could not be read.
    pub(crate) fn from_body(endpoint: Endpoint, e: upstream::bounded::BodyError) -> Self {
        match e {
            upstream::bounded::BodyError::TooLarge { limit } => {
                CecError::TooLarge { endpoint, limit }
            }
            upstream::bounded::BodyError::Read(e) => CecError::from_reqwest(endpoint, e),
        }
    }

    pub(crate) fn from_reqwest(endpoint: Endpoint, e: reqwest::Error) -> Self {
        if e.is_timeout() {
            CecError::Timeout { endpoint }
        } else if e.is_decode() || e.is_body() {
            CecError::Decode {
                endpoint,
                reason: "body could not be read".into(),
                snippet: String::new(),
            }
        } else {
            // reqwest's Display never includes headers; strip the URL's query just in case.
            CecError::Connect {
                endpoint,
                reason: e.without_url().to_string(),
            }
        }
    }
}

/// At most `max` characters of a body, for error messages.
pub(crate) fn snippet(body: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(body);
    let mut out: String = s.chars().take(max).collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classification() {
        let e = Endpoint::Send;
        assert!(CecError::Timeout { endpoint: e }.is_retryable());
        assert!(
            CecError::Status {
                endpoint: e,
                status: 503,
                snippet: String::new()
            }
            .is_retryable()
        );
        assert!(
            CecError::Status {
                endpoint: e,
                status: 429,
                snippet: String::new()
            }
            .is_retryable()
        );
        assert!(
            !CecError::Status {
                endpoint: e,
                status: 400,
                snippet: String::new()
            }
            .is_retryable()
        );
        assert!(!CecError::Unauthorized { endpoint: e }.is_retryable());
        let big = CecError::TooLarge {
            endpoint: e,
            limit: 10,
        };
        assert!(!big.is_retryable());
        assert_eq!(big.code(), "too_large");
    }

    #[test]
    fn snippet_truncates() {
        assert_eq!(snippet(b"abcdef", 3), "abc…");
        assert_eq!(snippet(b"ab", 3), "ab");
    }
}
