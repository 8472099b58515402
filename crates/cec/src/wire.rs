//! Huawei CEC web-channel wire types, field for field as the API documents them, in two published
//! documents: the web channel document — Huawei Cloud CEC 2.5.0.0.0, *User Access — Web Client
//! Access (RESTful)*, document version 01 (2024-03-01), whose chapters the `§` numbers here cite —
//! and the send page — the Huawei Cloud CEC API reference page *Send Message (send)*,
//! `POST /apiaccess/ccmessaging/send` (updated 2024-09-24), whose tables "send doc table N" cites.
//!
//! The documents disagree with themselves in places. The rule everywhere in this file:
//! **accept every form the documents show, send the documented one**, and say so beside the field.
//! - Numbers documented as strings (`resultCode`, `timestamp`, `Expires`, `interIdx`, …) are also
//!   accepted as JSON numbers ([`lenient`]); `timestamp` keeps the form it arrived in ([`StrOrNum`]),
//!   so a DownMessage republishes the upstream value unchanged.
//! - `resultCode` is also accepted under the name `returnCode` (the samples of saveSatisfaction and
//!   uploadFileStream use it).
//! - `null` and an absent optional field mean the same; we omit `None` when serialising.
//! - Unknown fields of a downlink message are kept ([`DownlinkMessage::extra`]) so nothing the
//!   upstream adds is lost on the way to NATS; unknown fields elsewhere are ignored.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Documented limits that the relay checks before any upstream call.
pub mod limits {
    /// `send.from` / applyToken `userId`: "取值范围：1到24位字符串".
    pub const USER_ID_MAX_CHARS: usize = 24;
    /// TEXT content: "文本内容大小不能超过1K". Read as 1024 bytes of UTF-8.
    pub const TEXT_MAX_BYTES: usize = 1024;
    /// `messageId`: "最大长度为32。值不能包含逗号".
    pub const MESSAGE_ID_MAX_CHARS: usize = 32;
    /// `senderAvatar`: "最长1024字符".
    pub const SENDER_AVATAR_MAX_CHARS: usize = 1024;
    /// Downlink `content`: "最多500个字符" (informational; we never truncate what comes down).
    pub const DOWN_CONTENT_MAX_CHARS: usize = 500;
}

/// The only channel the web-channel API knows.
pub const CHANNEL_WEB: &str = "WEB";
/// `sourceType` of everything a customer sends.
pub const SOURCE_CUSTOMER: &str = "CUSTOMER";

/// The `controlType`s of `send` (send doc table 3, 1.3).
pub const CONTROL_TYPES: &[&str] = &[
    "CONNECT",
    "CHAT",
    "TRANS2AGENT",
    "INPUT",
    "READ",
    "DISCONNECT",
];
/// The `mediaType`s of `send` (send doc table 3, 1.5).
pub const MEDIA_TYPES: &[&str] = &[
    "TEXT",
    "IMAGE",
    "AUDIO",
    "VIDEO",
    "FILE",
    "FILE_IMAGE",
    "FILE_VIDEO",
    "WEBCARD",
];

/// File types of uploadFileStream and downloadFileStream (doc §8.1.1). The document writes "bpm"
/// where bmp is meant: both are accepted.
pub const FILE_TYPES: &[&str] = &[
    "jpg", "png", "bmp", "bpm", "mp3", "aac", "mp4", "txt", "csv",
];

/// `mediaFileType`s a WEBCARD may name: "当前仅支持固定值img,img/png,img/jpg,不填类型默认按jpg".
pub const WEBCARD_MEDIA_FILE_TYPES: &[&str] = &["img", "img/png", "img/jpg"];

/// Checks a WEBCARD `content` as the send document describes it (1.2): a JSON object with
/// `title`, and `mediaFileId` or `redirectUrl` (one of the two is required), `mediaFileType` empty
/// or one of [`WEBCARD_MEDIA_FILE_TYPES`]. The error is the `resultDesc` CEC answers with
/// resultCode 3, word for word, so the relay's refusal and the upstream's read the same.
pub fn check_webcard(content: &str) -> Result<(), &'static str> {
    let Ok(serde_json::Value::Object(card)) = serde_json::from_str(content) else {
        return Err("Incorrect JSON format");
    };
    let present = |k: &str| {
        card.get(k)
            .and_then(serde_json::Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    if !present("mediaFileId") && !present("redirectUrl") {
        return Err("the content Json String must contains mediaFileId or redirectUrl");
    }
    if !present("title") {
        return Err("the content Json String must contains title");
    }
    if let Some(t) = card
        .get("mediaFileType")
        .and_then(serde_json::Value::as_str)
        && !t.is_empty()
        && !WEBCARD_MEDIA_FILE_TYPES.contains(&t)
    {
        return Err("Incorrect mediaFileType");
    }
    Ok(())
}

/// `resultCode` values the documents list for `send` and friends.
pub mod result_code {
    pub const OK: &str = "0";
    pub const PARAM_NULL: &str = "2";
    pub const PARAM_INVALID: &str = "3";
    pub const CLICK_TO_CALL_UNSUPPORTED: &str = "7";
    pub const QUEUING: &str = "11";
    pub const OUT_OF_WORKING_HOURS: &str = "12";
    pub const FAILED: &str = "13";
}

/// A value documented as a string that the samples also show as a number (`timestamp`,
/// `receiveTime`, `eventId`). It serialises back in the form it came in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StrOrNum {
    Str(String),
    Int(i64),
    Float(f64),
}

impl StrOrNum {
    /// The value as an integer if it is one (or a string holding one).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            StrOrNum::Str(s) => s.trim().parse().ok(),
            StrOrNum::Int(i) => Some(*i),
            StrOrNum::Float(f) => Some(*f as i64),
        }
    }
}

impl std::fmt::Display for StrOrNum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StrOrNum::Str(s) => f.write_str(s),
            StrOrNum::Int(i) => write!(f, "{i}"),
            StrOrNum::Float(x) => write!(f, "{x}"),
        }
    }
}

/// Deserialisers that accept the forms the documents show for one field.
pub mod lenient {
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    fn scalar_to_string(v: Value) -> Option<String> {
        match v {
            Value::Null => None,
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            // An object or array where a string is documented: keep its JSON text rather than fail.
            other => Some(other.to_string()),
        }
    }

    /// A string that may arrive as a number, a bool or null.
    pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Option::<Value>::deserialize(d)?.and_then(scalar_to_string))
    }

    /// A required string that may arrive as a number; null becomes "".
    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(opt_string(d)?.unwrap_or_default())
    }

    /// A boolean that may arrive as `true`, `"true"`, `"Y"`, `1`.
    pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        Ok(match Option::<Value>::deserialize(d)? {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(b),
            Some(Value::Number(n)) => Some(n.as_f64().unwrap_or(0.0) != 0.0),
            Some(Value::String(s)) => Some(matches!(
                s.trim().to_ascii_lowercase().as_str(),
                "true" | "y" | "yes" | "1"
            )),
            Some(_) => None,
        })
    }

    /// An array that may be `null` or absent.
    pub fn vec_or_null<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
    }
}

// ---------------------------------------------------------------------------------------------
// §2 tokenByAkSk (API Fabric)
// ---------------------------------------------------------------------------------------------

/// Body of `POST /apigovernance/api/oauth/tokenByAkSk`. Sent with header `X-Token-Expire: <secs>`.
/// Holds the app secret: never log or `Debug` it (the manual `Debug` below redacts it).
#[derive(Clone, Serialize, Deserialize)]
pub struct TokenByAkSkRequest {
    pub app_key: String,
    pub app_secret: String,
}

impl std::fmt::Debug for TokenByAkSkRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenByAkSkRequest")
            .field("app_key", &self.app_key)
            .field("app_secret", &"[redacted]")
            .finish()
    }
}

/// Answer of tokenByAkSk. `CreateTime` and `Expires` are strings in the sample; numbers accepted.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenByAkSkResponse {
    #[serde(rename = "AccessToken")]
    pub access_token: String,
    #[serde(rename = "ApplyType", default, skip_serializing_if = "Option::is_none")]
    pub apply_type: Option<String>,
    #[serde(
        rename = "CreateTime",
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub create_time: Option<String>,
    /// Lifetime in seconds.
    #[serde(
        rename = "Expires",
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires: Option<String>,
    #[serde(rename = "Scope", default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(rename = "AppKey", default, skip_serializing_if = "Option::is_none")]
    pub app_key: Option<String>,
    #[serde(rename = "UserID", default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

impl std::fmt::Debug for TokenByAkSkResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenByAkSkResponse")
            .field("access_token", &"[redacted]")
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// §3 applyToken
// ---------------------------------------------------------------------------------------------

/// applyTokenReqBody (table 3-1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApplyTokenRequest {
    pub user_id: String,
    pub user_name: String,
    pub channel_id: String,
    pub locale: String,
}

/// applyTokenRspBody (table 3-2). The document's sample response (`{ "XXXX…" }`) is not JSON;
/// the table is followed.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApplyTokenResponse {
    #[serde(default)]
    pub token: String,
    #[serde(alias = "returnCode", deserialize_with = "lenient::string")]
    pub result_code: String,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub result_desc: Option<String>,
}

impl std::fmt::Debug for ApplyTokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplyTokenResponse")
            .field("token", &"[redacted]")
            .field("result_code", &self.result_code)
            .field("result_desc", &self.result_desc)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// §7 send
// ---------------------------------------------------------------------------------------------

/// sendMsgReq (send doc table 3). `timestamp` is documented as a string and sent as one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SendRequest {
    pub channel: String,
    /// Documented optional in the send page, required in the web channel document: always sent.
    #[serde(default, deserialize_with = "lenient::string")]
    pub content: String,
    pub control_type: String,
    pub from: String,
    pub media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_nickname: Option<String>,
    pub source_type: String,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub timestamp: Option<String>,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_avatar: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trans_data: Option<String>,
}

/// senMsgRsp (send doc table 4).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SendResponse {
    #[serde(alias = "returnCode", deserialize_with = "lenient::string")]
    pub result_code: String,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub result_desc: Option<String>,
    /// Present only when the tenant's offline switch is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_msg: Option<OfflineMsg>,
}

impl SendResponse {
    /// Whether the upstream answered in offline mode (the message was kept as an offline message).
    pub fn is_offline(&self) -> bool {
        self.offline_msg
            .as_ref()
            .and_then(|o| o.is_offline_status)
            .unwrap_or(false)
    }
}

/// `offlineMsg` of senMsgRsp. `isOfflineStatus` is a boolean; `"true"` accepted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OfflineMsg {
    #[serde(
        default,
        deserialize_with = "lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub is_offline_status: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tip_text: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// §5 poll
// ---------------------------------------------------------------------------------------------

/// pollRsp (table 5-2). `downlinkMessages` is required but tolerated absent or null.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PollResponse {
    #[serde(alias = "returnCode", deserialize_with = "lenient::string")]
    pub result_code: String,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub result_desc: Option<String>,
    #[serde(default, deserialize_with = "lenient::vec_or_null")]
    pub downlink_messages: Vec<DownlinkMessage>,
}

/// downLinkMsgArr (table 5-1): one message from an agent, a robot or the system.
///
/// Every documented field is typed; anything else the upstream sends is kept in `extra` and
/// serialised back, so a DownMessage carries the upstream fields unchanged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DownlinkMessage {
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub channel: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub content: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub from: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub media_type: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub sender_nickname: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub source_type: Option<String>,
    /// Documented as a string, shown as a number (ms) in the sample: kept as it came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<StrOrNum>,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub to: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub inter_idx: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub is_offline_status: Option<String>,
    /// The upstream's unique message code: the key the relay de-duplicates downlink messages by.
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub message_code: Option<String>,
    /// Documented as a string; kept as any JSON value (robots return lists in practice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sim_questions: Option<Value>,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub association_content_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub call_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub control_type: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub queue_flag: Option<String>,
    /// Documented as a number (a timestamp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_time: Option<StrOrNum>,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub robot_gender: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient::opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub sender_avatar: Option<String>,
    /// Fields the documents do not list, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl DownlinkMessage {
    /// `controlType`, defaulting to CHAT as the upstream does for plain messages.
    pub fn control_type(&self) -> &str {
        self.control_type.as_deref().unwrap_or("CHAT")
    }
    /// Whether this message ends the session from the contact center's side.
    pub fn is_disconnect(&self) -> bool {
        self.control_type().eq_ignore_ascii_case("DISCONNECT")
    }
}
