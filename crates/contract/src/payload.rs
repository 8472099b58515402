//! The contract's NATS payloads: [`UpMessage`] (services → CEC), [`DownMessage`] (CEC →
//! services) and [`Event`] (relay → services). Field names are the contract's (camelCase).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

/// A customer's message or control, published on `P.cec.<t>.up.<u>`: the CEC `send` body less
/// what the relay fills in (`from`, `to`, `channel`, `sourceType`, `timestamp`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpMessage {
    /// CONNECT | CHAT | TRANS2AGENT | INPUT | READ | DISCONNECT; default CHAT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_type: Option<String>,
    /// TEXT | IMAGE | AUDIO | VIDEO | FILE | FILE_IMAGE | FILE_VIDEO | WEBCARD; default TEXT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// The idempotency key (≤ 32 characters, no comma). Derived from the stream sequence if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_nickname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_avatar: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trans_data: Option<String>,
    /// Overrides the tenant's default channel configuration id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_config_id: Option<String>,
    /// For CONNECT: applyToken `userName` (default: the user id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// For CONNECT: applyToken `locale` (default: the tenant's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// A file to upload (uploadFileStream) before sending; its fileId becomes the content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<UpFile>,
}

/// A file carried inline by an UpMessage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct UpFile {
    pub name: String,
    #[serde(rename = "type")]
    pub file_type: String,
    /// Base64 of the file's bytes.
    pub data: String,
}

impl UpMessage {
    pub fn control_type(&self) -> &str {
        self.control_type.as_deref().unwrap_or("CHAT")
    }
    pub fn media_type(&self) -> &str {
        self.media_type.as_deref().unwrap_or("TEXT")
    }
}

/// Metadata of a downloaded file stored in the NATS object store: where it is and what it holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileRef {
    pub bucket: String,
    pub object: String,
    pub size: u64,
    pub sha256: String,
}

/// Why a DownMessage's media could not be downloaded (after retries, or at once when final).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileError {
    /// The HTTP status, the upstream result code, or a word (`timeout`, `connect`,
    /// `object_store`, `attempts`, `deadline`…).
    pub code: String,
    pub message: String,
}

/// What the relay publishes on `P.cec.<t>.down.<u>`: the upstream message, fields unchanged, plus
/// the relay's own. `M` is the upstream message's type, flattened into the payload: the relay
/// uses CEC's documented `DownlinkMessage`; a reader that does not care gets the fields as a JSON
/// object (the default).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DownMessage<M = Map<String, Value>> {
    /// Relay id, unique; also the `Nats-Msg-Id`.
    pub id: String,
    pub tenant: String,
    pub user_id: String,
    pub channel_config_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// Present when the relay downloaded the media and stored it in the object store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileRef>,
    /// Present when the relay gave up downloading the media: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_error: Option<FileError>,
    #[serde(flatten)]
    pub message: M,
}

/// Event types the relay publishes.
pub mod event_type {
    pub const SESSION_OPENED: &str = "session.opened";
    pub const SESSION_QUEUED: &str = "session.queued";
    pub const SESSION_CLOSED: &str = "session.closed";
    /// The summary of a closed session (`summary`: a [`crate::summary::SessionSummary`]).
    pub const SESSION_SUMMARY: &str = "session.summary";
    pub const UP_RESULT: &str = "up.result";
    pub const OFFLINE_SAVED: &str = "offline.saved";
    pub const SATISFACTION_SAVED: &str = "satisfaction.saved";
    pub const SEND_RESULT: &str = "send.result";
    pub const STREAM_RESULT: &str = "stream.result";
    pub const ERROR: &str = "error";
}

/// An event on `P.cec.<t>.event.<u>` (or `P.error` when nothing routable is known).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_desc: Option<String>,
    /// Type-specific fields (`messageId`, `reason`, `offline`, `error`, …).
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl Event {
    /// A new event with a fresh id, stamped now.
    pub fn new(event_type: &str, ok: bool) -> Self {
        Event {
            id: new_id(),
            event_type: event_type.to_owned(),
            at: OffsetDateTime::now_utc(),
            ok,
            tenant: None,
            user_id: None,
            result_code: None,
            result_desc: None,
            fields: Map::new(),
        }
    }
    pub fn for_user(mut self, tenant: &str, user: &str) -> Self {
        self.tenant = Some(tenant.to_owned());
        self.user_id = Some(user.to_owned());
        self
    }
    pub fn result(mut self, code: impl Into<String>, desc: Option<String>) -> Self {
        self.result_code = Some(code.into());
        self.result_desc = desc;
        self
    }
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(key.to_owned(), value.into());
        self
    }
}

/// A fresh relay id: a UUIDv7, time-ordered, so ids sort roughly by creation.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The reply to a request the relay refuses (README, *Subjects*, **RPC**).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorReply {
    pub ok: bool,
    pub error: ErrorBody,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// invalid_request | unknown_tenant | upstream | unavailable | timeout
    pub code: String,
    pub message: String,
    /// For upstream failures: the HTTP status or CEC resultCode, unchanged (`"500"`, `"401"`),
    /// or `timeout` / `connect` / `decode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_code: Option<String>,
    /// For upstream failures: whether the same request may succeed if sent again later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_message_defaults_and_refuses_unknown_fields() {
        let m: UpMessage = serde_json::from_str(r#"{"content":"hi"}"#).unwrap();
        assert_eq!(m.control_type(), "CHAT");
        assert_eq!(m.media_type(), "TEXT");
        let err = serde_json::from_str::<UpMessage>(r#"{"contnet":"hi"}"#).unwrap_err();
        assert!(err.to_string().contains("contnet"), "{err}");
    }

    #[test]
    fn down_message_flattens_upstream_fields() {
        let msg: Map<String, Value> = serde_json::from_str(
            r#"{"content":"hello","sourceType":"ROBOT","timestamp":1619590480756,"vendorField":7}"#,
        )
        .unwrap();
        let down = DownMessage {
            id: "id1".into(),
            tenant: "acme".into(),
            user_id: "u1".into(),
            channel_config_id: "c".into(),
            received_at: OffsetDateTime::UNIX_EPOCH,
            file: None,
            file_error: None,
            message: msg,
        };
        let v = serde_json::to_value(&down).unwrap();
        assert_eq!(v["content"], "hello");
        assert_eq!(v["timestamp"], 1619590480756i64);
        assert_eq!(v["vendorField"], 7);
        assert_eq!(v["id"], "id1");
        assert_eq!(v["receivedAt"], "1970-01-01T00:00:00Z");
        let back: DownMessage = serde_json::from_value(v).unwrap();
        assert_eq!(back, down);
    }

    #[test]
    fn event_serialises_type_specific_fields_flat() {
        let e = Event::new(event_type::UP_RESULT, true)
            .for_user("acme", "u1")
            .with("messageId", "m1");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "up.result");
        assert_eq!(v["messageId"], "m1");
        assert_eq!(v["tenant"], "acme");
    }
}
