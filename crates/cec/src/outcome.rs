//! What a `send` answer means for the relay: the documented result codes mapped to outcomes.

use super::wire::{SendResponse, result_code};

/// The meaning of a `send` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// resultCode 0.
    Accepted,
    /// resultCode 11 "Queuing...": accepted, waiting for an agent.
    Queued,
    /// The tenant's offline switch kept the message as an offline message.
    Offline,
    /// resultCode 12: outside the agents' working hours. Final.
    OutOfHours,
    /// resultCode 2/3: the request was refused as invalid. Final.
    Invalid,
    /// resultCode 13 "send too quick": rate limited. Retry later.
    TooQuick,
    /// Any other non-zero code. Final.
    Failed,
}

impl SendOutcome {
    pub fn of(rsp: &SendResponse) -> Self {
        if rsp.is_offline() {
            return SendOutcome::Offline;
        }
        match rsp.result_code.trim() {
            result_code::OK => SendOutcome::Accepted,
            result_code::QUEUING => SendOutcome::Queued,
            result_code::OUT_OF_WORKING_HOURS => SendOutcome::OutOfHours,
            result_code::PARAM_NULL | result_code::PARAM_INVALID => SendOutcome::Invalid,
            result_code::FAILED
                if rsp
                    .result_desc
                    .as_deref()
                    .is_some_and(|d| d.contains("send too quick")) =>
            {
                SendOutcome::TooQuick
            }
            _ => SendOutcome::Failed,
        }
    }

    /// Whether the message reached the contact center (as a live or an offline message).
    pub fn is_ok(self) -> bool {
        matches!(
            self,
            SendOutcome::Accepted | SendOutcome::Queued | SendOutcome::Offline
        )
    }

    pub fn is_retryable(self) -> bool {
        matches!(self, SendOutcome::TooQuick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::OfflineMsg;

    fn rsp(code: &str, desc: &str) -> SendResponse {
        SendResponse {
            result_code: code.into(),
            result_desc: Some(desc.into()),
            offline_msg: None,
        }
    }

    #[test]
    fn documented_codes_map_to_outcomes() {
        assert_eq!(SendOutcome::of(&rsp("0", "ok")), SendOutcome::Accepted);
        assert_eq!(
            SendOutcome::of(&rsp("11", "Queuing...")),
            SendOutcome::Queued
        );
        assert_eq!(
            SendOutcome::of(&rsp("12", "not working time")),
            SendOutcome::OutOfHours
        );
        assert_eq!(
            SendOutcome::of(&rsp("3", "Incorrect JSON format")),
            SendOutcome::Invalid
        );
        assert_eq!(
            SendOutcome::of(&rsp(
                "13",
                "chat failed, send too quick or session keep touch failed."
            )),
            SendOutcome::TooQuick
        );
        assert_eq!(
            SendOutcome::of(&rsp("13", "sendUserMessage failed.")),
            SendOutcome::Failed
        );
        let mut off = rsp("13", "connect failed");
        off.offline_msg = Some(OfflineMsg {
            is_offline_status: Some(true),
            tip_text: None,
        });
        assert_eq!(SendOutcome::of(&off), SendOutcome::Offline);
        assert!(SendOutcome::Offline.is_ok());
        assert!(!SendOutcome::Failed.is_ok());
    }
}
