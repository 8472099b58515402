//! The contract's Tencent IM payloads: [`TimSend`] (`P.tim.<a>.send.<u>`), [`TimChunk`]
//! (`P.tim.<a>.stream.<u>`) and the [`inbound`] body published on `P.tim.<a>.in.<u>`.
//!
//! Parsing refuses unknown fields and checks every limit before any upstream call; every refusal
//! is a [`TimPayloadError`] naming the field.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

/// The largest request body Tencent IM takes (its error 93000), as documented for `send_msg` and
/// `send_stream_msg`: a chunk longer than this can never be sent. The Tencent client checks whole
/// requests against the same figure.
pub const MAX_BODY_BYTES: usize = 12 * 1024;

/// Longest accepted `id` and `streamId` (they are stored and echoed in events).
pub const MAX_ID_CHARS: usize = 128;

/// A refused payload: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct TimPayloadError {
    pub field: String,
    pub reason: String,
}

/// A refusal of `field` for `reason`.
pub fn refuse(field: &str, reason: impl Into<String>) -> TimPayloadError {
    TimPayloadError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// A Desk message to one user, published on `P.tim.<a>.send.<u>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimSend {
    /// The idempotency key (`MsgRandom` is derived from it). Derived from the stream sequence
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Desk session; when absent the message is addressed `from` → `<u>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The customer service account (`FromAccount`), required without `sessionId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// A text message (`TIMTextElem`); or give `msgBody`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Raw TIM elements (`[{"MsgType": "TIMCustomElem", "MsgContent": {…}}]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_body: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_custom_data: Option<String>,
    /// 0 (default) or 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_from_user_resp_timeout: Option<u8>,
}

/// One chunk of a robot's streamed answer, published on `P.tim.<a>.stream.<u>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimChunk {
    pub stream_id: String,
    /// The robot account (`@RBT#…`); needed on the first chunk of a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default)]
    pub chunk: String,
    #[serde(default)]
    pub finish: bool,
}

fn check_id(field: &str, id: &str) -> Result<(), TimPayloadError> {
    if id.is_empty() {
        return Err(refuse(field, "is empty"));
    }
    if id.chars().count() > MAX_ID_CHARS {
        return Err(refuse(
            field,
            format!("is longer than {MAX_ID_CHARS} characters"),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(refuse(field, "contains a control character"));
    }
    Ok(())
}

fn parse_json<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, TimPayloadError> {
    serde_json::from_slice(bytes).map_err(|e| refuse("payload", format!("not a valid {what}: {e}")))
}

/// Parses and checks a TimSend (everything but the size of the request Tencent is sent, which the relay checks).
pub fn parse_send(bytes: &[u8]) -> Result<TimSend, TimPayloadError> {
    let m: TimSend = parse_json("TimSend", bytes)?;
    if let Some(id) = &m.id {
        check_id("id", id)?;
    }
    match (&m.session_id, &m.from) {
        (Some(s), _) if s.is_empty() => return Err(refuse("sessionId", "is empty")),
        (None, None) => {
            return Err(refuse(
                "sessionId",
                "missing: give sessionId, or from (the customer service account) to address the user",
            ));
        }
        (None, Some(f)) if f.is_empty() => return Err(refuse("from", "is empty")),
        _ => {}
    }
    match (&m.text, &m.msg_body) {
        (Some(_), Some(_)) => {
            return Err(refuse("text", "give text or msgBody, not both"));
        }
        (None, None) => return Err(refuse("text", "missing: give text or msgBody")),
        (None, Some(b)) if b.is_empty() => return Err(refuse("msgBody", "is empty")),
        _ => {}
    }
    if let Some(b) = &m.msg_body {
        for (i, el) in b.iter().enumerate() {
            check_element(i, el)?;
        }
    }
    if let Some(x) = m.exclude_from_user_resp_timeout
        && x > 1
    {
        return Err(refuse("excludeFromUserRespTimeout", "must be 0 or 1"));
    }
    Ok(m)
}

/// Checks the shape of one `msgBody` element: an object with a non-empty `MsgType` string and a
/// `MsgContent` object (what Tencent's `MsgBody` requires of every element).
pub fn check_element(i: usize, v: &Value) -> Result<(), TimPayloadError> {
    let field = format!("msgBody[{i}]");
    let obj = v
        .as_object()
        .ok_or_else(|| refuse(&field, "must be an object with MsgType and MsgContent"))?;
    match obj.get("MsgType") {
        Some(Value::String(t)) if !t.is_empty() => {}
        _ => {
            return Err(refuse(
                &format!("{field}.MsgType"),
                "missing or not a string",
            ));
        }
    }
    if !obj.get("MsgContent").is_some_and(Value::is_object) {
        return Err(refuse(
            &format!("{field}.MsgContent"),
            "missing or not an object",
        ));
    }
    Ok(())
}

/// Parses and checks a TimChunk.
pub fn parse_chunk(bytes: &[u8]) -> Result<TimChunk, TimPayloadError> {
    let c: TimChunk = parse_json("TimChunk", bytes)?;
    check_id("streamId", &c.stream_id)?;
    if let Some(f) = &c.from
        && f.is_empty()
    {
        return Err(refuse("from", "is empty"));
    }
    if c.chunk.len() > MAX_BODY_BYTES {
        return Err(refuse(
            "chunk",
            format!(
                "is {} bytes, over Tencent's limit of {MAX_BODY_BYTES}",
                c.chunk.len()
            ),
        ));
    }
    Ok(c)
}

/// Whether `account` is one of Tencent's robot accounts (`@RBT#…`).
pub fn is_robot_account(account: &str) -> bool {
    account.starts_with("@RBT#")
}

/// What the relay makes of one callback body.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    /// The user the callback is about, if the body names one.
    pub user: Option<String>,
    /// Sent by one of the app's robot accounts: stored, not published as input.
    pub from_robot: bool,
    /// The TimInbound to publish: the body unchanged plus `id`, `app`, `command`, `receivedAt`.
    pub payload: Value,
}

/// Builds the TimInbound of a callback `body` (which must be a JSON object).
///
/// The user is `From_Account` for a user's message; for a message from a robot or a service
/// account, or a Desk event, the first of `To_Account`, `ToAccount`, `UserId`, `ClientUserId`
/// (Desk.SessionEventNotify's user), `FromAccount` the body has (Tencent's callbacks spell the
/// account fields both ways).
pub fn inbound(
    body: &[u8],
    id: &str,
    app: &str,
    command: &str,
    received_at: OffsetDateTime,
) -> Result<Inbound, TimPayloadError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| refuse("body", format!("not JSON: {e}")))?;
    let Value::Object(mut obj) = v else {
        return Err(refuse("body", "not a JSON object"));
    };
    let text = |obj: &Map<String, Value>, k: &str| {
        obj.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let from = text(&obj, "From_Account");
    let from_robot = from.as_deref().is_some_and(is_robot_account);
    let user = match from {
        Some(f) if !from_robot && !f.starts_with('@') => Some(f),
        _ => [
            "To_Account",
            "ToAccount",
            "UserId",
            "ClientUserId",
            "FromAccount",
        ]
        .iter()
        .find_map(|k| text(&obj, k)),
    };
    let at = received_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    obj.insert("id".into(), id.into());
    obj.insert("app".into(), app.into());
    obj.insert("command".into(), command.into());
    obj.insert("receivedAt".into(), at.into());
    Ok(Inbound {
        user,
        from_robot,
        payload: Value::Object(obj),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_send_needs_addressing_and_content() {
        let e = parse_send(br#"{"text":"hi"}"#).unwrap_err();
        assert_eq!(e.field, "sessionId");
        let e = parse_send(br#"{"sessionId":"s"}"#).unwrap_err();
        assert_eq!(e.field, "text");
        let e = parse_send(br#"{"sessionId":"s","text":"a","msgBody":[]}"#).unwrap_err();
        assert_eq!(e.field, "text");
        let e = parse_send(br#"{"sessionId":"s","txt":"a"}"#).unwrap_err();
        assert!(e.reason.contains("txt"), "{e}");
        let e =
            parse_send(br#"{"from":"@cs","msgBody":[{"MsgType":"TIMCustomElem"}]}"#).unwrap_err();
        assert_eq!(e.field, "msgBody[0].MsgContent");
        let e = parse_send(br#"{"sessionId":"s","text":"a","excludeFromUserRespTimeout":2}"#)
            .unwrap_err();
        assert_eq!(e.field, "excludeFromUserRespTimeout");
    }

    #[test]
    fn chunks_need_a_stream_id() {
        assert_eq!(
            parse_chunk(br#"{"chunk":"a"}"#).unwrap_err().field,
            "payload"
        );
        assert_eq!(
            parse_chunk(br#"{"streamId":"","chunk":"a"}"#)
                .unwrap_err()
                .field,
            "streamId"
        );
        let c =
            parse_chunk(br#"{"streamId":"s","from":"@RBT#b","chunk":"a","finish":true}"#).unwrap();
        assert!(c.finish);
        let big = format!(
            r#"{{"streamId":"s","chunk":"{}"}}"#,
            "y".repeat(MAX_BODY_BYTES + 1)
        );
        assert_eq!(parse_chunk(big.as_bytes()).unwrap_err().field, "chunk");
    }

    #[test]
    fn inbound_names_the_user_and_spots_robots() {
        let at = OffsetDateTime::UNIX_EPOCH;
        let i = inbound(
            br#"{"From_Account":"u7","To_Account":"@RBT#bot","MsgBody":[]}"#,
            "i1",
            "shop",
            "Bot.OnC2CMessage",
            at,
        )
        .unwrap();
        assert_eq!(i.user.as_deref(), Some("u7"));
        assert!(!i.from_robot);
        assert_eq!(i.payload["id"], "i1");
        assert_eq!(i.payload["command"], "Bot.OnC2CMessage");
        assert_eq!(i.payload["receivedAt"], "1970-01-01T00:00:00Z");
        assert!(i.payload["MsgBody"].is_array());
        let r = inbound(
            br#"{"From_Account":"@RBT#bot","To_Account":"u7"}"#,
            "i2",
            "shop",
            "C2C.CallbackAfterSendMsg",
            at,
        )
        .unwrap();
        assert!(r.from_robot);
        assert_eq!(r.user.as_deref(), Some("u7"));
        // A Desk session event names its user ClientUserId (and the service account apart).
        let d = inbound(
            br#"{"SessionId":"s1","Event":"SessionBegin","ClientUserId":"u8",
                 "CustomerServiceId":"@customer_service_account"}"#,
            "i3",
            "shop",
            "Desk.SessionEventNotify",
            at,
        )
        .unwrap();
        assert_eq!(d.user.as_deref(), Some("u8"));
        assert!(!d.from_robot);
        assert_eq!(
            inbound(b"[1]", "i", "a", "c", at).unwrap_err().field,
            "body"
        );
    }

    proptest! {
        #[test]
        fn parsers_never_panic_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_send(&bytes);
            let _ = parse_chunk(&bytes);
            let _ = inbound(&bytes, "i", "a", "c", OffsetDateTime::UNIX_EPOCH);
        }

        #[test]
        fn parsers_never_panic_on_near_json(
            id in proptest::option::of(".{0,140}"),
            text in proptest::option::of(".{0,50}"),
            session in proptest::option::of(".{0,10}"),
            from in proptest::option::of(".{0,10}"),
            body in proptest::option::of(proptest::collection::vec(any::<u8>().prop_map(|b| serde_json::json!({"MsgType": if b % 2 == 0 { Value::from("T") } else { Value::from(b) }, "MsgContent": if b % 3 == 0 { serde_json::json!({}) } else { Value::from(b) }})), 0..3)),
            ex in proptest::option::of(any::<u8>()),
        ) {
            let v = serde_json::json!({"id": id, "text": text, "sessionId": session, "from": from, "msgBody": body, "excludeFromUserRespTimeout": ex});
            let bytes = serde_json::to_vec(&v).unwrap();
            let _ = parse_send(&bytes);
            let c = serde_json::json!({"streamId": id, "chunk": text, "from": from, "finish": ex.map(|e| e % 2 == 0)});
            let _ = parse_chunk(&serde_json::to_vec(&c).unwrap());
        }
    }
}
