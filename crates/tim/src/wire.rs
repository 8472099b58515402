//! Tencent IM REST bodies, field names exactly as documented (PascalCase, and `From_Account` /
//! `To_Account` with underscores for the robot API, as its table and samples spell them).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// `send_msg`: "消息包体请不要超过12K" (error 93000). Checked before sending.
pub const MAX_BODY_BYTES: usize = 12 * 1024;

/// `ActionStatus` of a successful answer.
pub const ACTION_OK: &str = "OK";

/// Body of `v4/desk_http_svc/send_msg`: addressed by `SessionId`, or by `FromAccount` (a customer
/// service account) + `ToAccount` (the user).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SendMsgRequest {
    #[serde(rename = "SessionId", default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(
        rename = "FromAccount",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub from_account: Option<String>,
    #[serde(rename = "ToAccount", default, skip_serializing_if = "Option::is_none")]
    pub to_account: Option<String>,
    /// 32-bit unsigned, for de-duplication: the relay derives it from the message id.
    #[serde(rename = "MsgRandom")]
    pub msg_random: u32,
    #[serde(rename = "MsgBody")]
    pub msg_body: Vec<MsgElement>,
    #[serde(
        rename = "CloudCustomData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cloud_custom_data: Option<String>,
    /// 0: the message counts towards the user-reply timeout (default); 1: it does not.
    #[serde(
        rename = "ExcludeFromUserRespTimeout",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub exclude_from_user_resp_timeout: Option<u8>,
}

/// One element of `MsgBody` (`TIMTextElem`, `TIMCustomElem`, …): the content is kept as JSON so
/// every element type Tencent defines passes through unchanged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MsgElement {
    #[serde(rename = "MsgType")]
    pub msg_type: String,
    #[serde(rename = "MsgContent")]
    pub msg_content: Value,
}

impl MsgElement {
    /// A `TIMTextElem` with `Text`.
    pub fn text(text: impl Into<String>) -> Self {
        MsgElement {
            msg_type: "TIMTextElem".to_owned(),
            msg_content: serde_json::json!({ "Text": text.into() }),
        }
    }
}

/// Body of `v4/openim_robot_http_svc/send_stream_msg`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamMsgRequest {
    /// The robot, `@RBT#…`.
    #[serde(rename = "From_Account")]
    pub from_account: String,
    #[serde(rename = "To_Account")]
    pub to_account: String,
    #[serde(rename = "Chunk")]
    pub chunk: String,
    /// Blank on the first call; from the second on, the `MsgKey` the first answer returned.
    #[serde(rename = "MsgKey", default, skip_serializing_if = "Option::is_none")]
    pub msg_key: Option<String>,
    /// 1 on the last call.
    #[serde(rename = "Finish", default, skip_serializing_if = "Option::is_none")]
    pub finish: Option<u8>,
}

/// The answer of both endpoints. `MsgKey` only from `send_stream_msg`.
///
/// The documents give `ErrorCode` as an Integer; a numeric string is accepted too, and missing
/// fields default (an answer without `ActionStatus` is judged by `ErrorCode`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TimAnswer {
    #[serde(rename = "ActionStatus", default)]
    pub action_status: String,
    #[serde(rename = "ErrorCode", default, deserialize_with = "int_or_string")]
    pub error_code: i64,
    #[serde(rename = "ErrorInfo", default)]
    pub error_info: String,
    #[serde(rename = "MsgKey", default, skip_serializing_if = "Option::is_none")]
    pub msg_key: Option<String>,
}

impl TimAnswer {
    /// `ErrorCode` 0 and `ActionStatus` OK (or absent).
    pub fn is_ok(&self) -> bool {
        self.error_code == 0 && (self.action_status.is_empty() || self.action_status == ACTION_OK)
    }
}

/// The `MsgRandom` of a message: the first 4 bytes (big-endian) of SHA-256 of its id.
///
/// Stable across restarts and processes, so a send retried after a crash or a timeout carries
/// the same `MsgRandom` and Tencent de-duplicates it (per session, or per FromAccount +
/// ToAccount). The relay uses it for every send; two different ids collide with probability
/// 2⁻³² per pair within one conversation.
pub fn msg_random(id: &str) -> u32 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(id.as_bytes());
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

fn int_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Int(i64),
        Str(String),
    }
    match Either::deserialize(d)? {
        Either::Int(i) => Ok(i),
        Either::Str(s) => s.trim().parse().map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documents_samples_parse() {
        let by_session: SendMsgRequest = serde_json::from_str(r#"{"SessionId": "fd8a2e30-54de-4e40-bcaf-02718409c5cf","MsgRandom": 8436874,"MsgBody": [{"MsgType": "TIMTextElem","MsgContent": {"Text": "欢迎使用智能客服,很高兴为您服务!"}}],"CloudCustomData": "your cloud custom data"}"#).unwrap();
        assert_eq!(by_session.msg_random, 8436874);
        assert_eq!(by_session.msg_body[0].msg_type, "TIMTextElem");
        let by_account: SendMsgRequest = serde_json::from_str(r#"{"FromAccount": "@customer_service_account","ToAccount": "user45","MsgRandom": 82139,"MsgBody": [{"MsgType": "TIMTextElem","MsgContent": {"Text": "x"}}],"CloudCustomData": "your cloud custom data"}"#).unwrap();
        assert_eq!(by_account.to_account.as_deref(), Some("user45"));
        let last: StreamMsgRequest = serde_json::from_str(r#"{"From_Account": "@RBT#my_bot","To_Account": "user01","Chunk": "world","MsgKey": "606781340_3986845397_1706000918","Finish": 1}"#).unwrap();
        assert_eq!(last.finish, Some(1));
        let answer: TimAnswer = serde_json::from_str(r#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0,"MsgKey":"606781340_3986845397_1706000918"}"#).unwrap();
        assert!(answer.is_ok());
        let fail: TimAnswer =
            serde_json::from_str(r#"{"ActionStatus":"FAIL","ErrorInfo":"x","ErrorCode":"141005"}"#)
                .unwrap();
        assert!(!fail.is_ok());
        assert_eq!(fail.error_code, 141005);
    }

    #[test]
    fn msg_random_is_stable_and_spreads() {
        // sha256("m-1") starts with these bytes; the value must never change between releases.
        assert_eq!(msg_random("m-1"), msg_random("m-1"));
        assert_ne!(msg_random("m-1"), msg_random("m-2"));
        // sha256("") = e3b0c442…
        assert_eq!(msg_random(""), 0xe3b0_c442);
    }

    #[test]
    fn a_first_chunk_leaves_msgkey_and_finish_out() {
        let first = StreamMsgRequest {
            from_account: "@RBT#my_bot".into(),
            to_account: "user01".into(),
            chunk: "hello, ".into(),
            msg_key: None,
            finish: None,
        };
        assert_eq!(
            serde_json::to_string(&first).unwrap(),
            r#"{"From_Account":"@RBT#my_bot","To_Account":"user01","Chunk":"hello, "}"#
        );
    }
}
