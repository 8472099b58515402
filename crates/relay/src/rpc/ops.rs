//! The RPC operations: read the request, check it against the documented limits, call CEC, and
//! shape the reply.
//!
//! An op that needs a customer's `ccmessaging-token` names the customer by `userId` or by its
//! endpoint's own user field when it has one ([`own_user_field`]: `from` of `send` and
//! `robotFeedback`, `callId` of `leaveMessage`); both may be given when they agree.

use base64::Engine as _;
use serde::Serialize;
use serde_json::{Map, Value};

use super::RpcError;
use crate::relay::Tenant;
use crate::uplink::validate::check_user_id;
use cec::wire::{CHANNEL_WEB, FILE_TYPES};
use cec::wire_ops::{
    ClickToCallRequest, DownloadRequest, MobileAgentCallRequest, PhraseRequest, QueueInfoRequest,
    UploadRequest,
};

/// Calls `op` of `tenant` with the request `body` (a JSON object).
pub(super) async fn call(
    relay: &crate::relay::Relay,
    tenant: &Tenant,
    op: &str,
    b: Body,
) -> Result<Value, RpcError> {
    let c = &tenant.client;
    match op {
        "queueInfo" => {
            let user = b.user()?;
            let req = QueueInfoRequest {
                user_id: user.clone(),
                channel_config_id: b
                    .opt_str("channelConfigId")?
                    .unwrap_or_else(|| tenant.config().channel_config_id.clone()),
                channel: CHANNEL_WEB.to_owned(),
            };
            reply(&c.query_queue_info(&user, &req).await?, None)
        }
        "phrases" => {
            let user = b.user()?;
            let text = b.str("strContent")?;
            if text.trim().is_empty() {
                return Err(RpcError::Invalid("strContent: must not be empty".into()));
            }
            let req = PhraseRequest {
                str_content: text,
                locale: b
                    .opt_str("locale")?
                    .unwrap_or_else(|| tenant.config().locale.clone()),
                channel: CHANNEL_WEB.to_owned(),
            };
            reply(&c.phrases(&user, &req).await?, None)
        }
        "upload" => {
            let user = b.user()?;
            let file_type = b.file_type("fileType")?;
            let stream = b.str("fileStream")?;
            base64::engine::general_purpose::STANDARD
                .decode(stream.as_bytes())
                .map_err(|e| RpcError::Invalid(format!("fileStream: not base64: {e}")))?;
            let req = UploadRequest {
                file_type,
                file_stream: stream,
                channel: CHANNEL_WEB.to_owned(),
            };
            reply(&c.upload(&user, &req).await?, None)
        }
        "download" => {
            let user = b.user()?;
            let req = DownloadRequest {
                file_id: b.str("fileId")?,
                channel: CHANNEL_WEB.to_owned(),
                file_type: b.file_type("fileType")?,
            };
            if req.file_id.trim().is_empty() {
                return Err(RpcError::Invalid("fileId: must not be empty".into()));
            }
            reply(&c.download(&user, &req).await?, None)
        }
        "clickToCall.support" => {
            let user = b.user()?;
            // This answer's resultCode is optional: no code means success.
            let rsp = c.click_to_call_support(&user).await?;
            let ok = rsp.result_code.is_empty() || rsp.result_code == "0";
            reply(&rsp, Some(ok))
        }
        "clickToCall.create" => {
            let user = b.user()?;
            let media = b.opt_str("mediaAbility")?.unwrap_or_else(|| "0".into());
            if media != "0" && media != "1" {
                return Err(RpcError::Invalid(format!(
                    "mediaAbility: {media:?} must be \"0\" (audio) or \"1\" (video)"
                )));
            }
            let req = ClickToCallRequest {
                channel: CHANNEL_WEB.to_owned(),
                media_ability: media,
            };
            reply(&c.create_click_to_call(&user, &req).await?, None)
        }
        "clickToCall.events" => {
            let user = b.user()?;
            reply(&c.click_to_call_events(&user).await?, None)
        }
        "clickToCall.drop" => {
            let user = b.user()?;
            reply(&c.drop_click_to_call(&user).await?, None)
        }
        "mobileAgentCall" => {
            let req = MobileAgentCallRequest {
                called: b.bounded("called", 1, 32)?,
                call_data: b.opt_str("callData")?,
                caller_present: b.bounded("callerPresent", 1, 32)?,
            };
            if let Some(d) = &req.call_data
                && d.chars().count() > 1024
            {
                return Err(RpcError::Invalid(format!(
                    "callData: is {} characters; at most 1024",
                    d.chars().count()
                )));
            }
            reply(&c.mobile_agent_call(&req).await?, None)
        }
        "send" => send(relay, tenant, b).await,
        "satisfaction" => super::stored::satisfaction(relay, tenant, &b).await,
        "robotFeedback" => super::stored::robot_feedback(relay, tenant, &b).await,
        "leaveMessage" => super::stored::leave_message(relay, tenant, &b).await,
        other => Err(RpcError::UnknownOp(other.to_owned())),
    }
}

/// `send`: an UpMessage plus `userId`, handled exactly as one from `P.cec.<t>.up.<u>` (validated,
/// idempotent by `messageId`, retried, committed with its events), answered with its outcome.
/// It does not queue behind the user's messages on the stream: don't mix both ways for one user
/// when order matters.
async fn send(relay: &crate::relay::Relay, tenant: &Tenant, b: Body) -> Result<Value, RpcError> {
    use crate::uplink::handle::{Delivery, Disposition, handle};
    let user = b.customer("send")?;
    let mut up = b.0;
    if let Some(m) = up.as_object_mut() {
        // The relay fills in `from` itself, as for a message on `P.cec.<t>.up.<u>`.
        m.remove("userId");
        m.remove("from");
    }
    let message_id = match up.get("messageId") {
        Some(Value::String(id)) => id.clone(),
        Some(_) => return Err(RpcError::Invalid("messageId: must be a string".into())),
        None => {
            // A fresh key, recorded with the message: a retry with it is answered, not resent.
            let id = format!("rpc-{}", &uuid::Uuid::now_v7().simple().to_string()[4..]);
            if let Some(m) = up.as_object_mut() {
                m.insert("messageId".into(), Value::String(id.clone()));
            }
            id
        }
    };
    let payload = serde_json::to_vec(&up).map_err(|e| RpcError::Invalid(e.to_string()))?;
    let subject = relay.subjects.cec_up(&tenant.name, &user);
    let d = handle(
        relay,
        Delivery {
            subject: &subject,
            payload: &payload,
            derived_id: message_id.clone(),
            stream_seq: 0,
            received_at: time::OffsetDateTime::now_utc(),
        },
    )
    .await;
    if d != Disposition::Ack {
        return Err(RpcError::Unavailable(
            "the message could not be completed now (shutting down or the database is down); retry with the same messageId".into(),
        ));
    }
    let rows = relay
        .store
        .transcript(store::kind::CEC, &tenant.name, &user)
        .await
        .map_err(|e| RpcError::Unavailable(e.to_string()))?;
    let row = rows
        .iter()
        .rev()
        .find(|r| {
            r.direction == store::Direction::Up
                && r.message_id.as_deref() == Some(message_id.as_str())
        })
        .ok_or_else(|| RpcError::Unavailable("the outcome was not found".into()))?;
    if row.result_code.as_deref() == Some("invalid_request") {
        // Refused by the relay's own checks: the same error as any refused request.
        return Err(RpcError::Invalid(
            row.result_desc.clone().unwrap_or_default(),
        ));
    }
    Ok(serde_json::json!({
        "ok": row.status == store::MessageStatus::Sent,
        "messageId": message_id,
        "status": row.status.as_str(),
        "resultCode": row.result_code,
        "resultDesc": row.result_desc,
    }))
}

/// The endpoint's answer as a JSON object plus `ok` (by default: `resultCode` is "0").
pub(super) fn reply<T: Serialize>(rsp: &T, ok: Option<bool>) -> Result<Value, RpcError> {
    let mut v = serde_json::to_value(rsp).map_err(|e| RpcError::Invalid(e.to_string()))?;
    if let Value::Object(m) = &mut v {
        let ok = ok.unwrap_or_else(|| m.get("resultCode").and_then(Value::as_str) == Some("0"));
        m.insert("ok".into(), Value::Bool(ok));
    }
    Ok(v)
}

/// The field of `op`'s documented upstream body that names the customer, when it is not
/// `userId`: the contract lets a request name the customer by it instead.
pub fn own_user_field(op: &str) -> Option<&'static str> {
    match op {
        "send" | "robotFeedback" => Some("from"),
        "leaveMessage" => Some("callId"),
        _ => None,
    }
}

/// Typed reads of a request body, each refusal naming the field.
pub struct Body(Value);

impl Body {
    /// A request body: a JSON object (an empty payload is `{}`).
    pub fn parse(payload: &[u8]) -> Result<Body, RpcError> {
        let body: Value = if payload.is_empty() {
            Value::Object(Map::new())
        } else {
            serde_json::from_slice(payload)
                .map_err(|e| RpcError::Invalid(format!("the request is not JSON: {e}")))?
        };
        if !body.is_object() {
            return Err(RpcError::Invalid(
                "the request must be a JSON object".into(),
            ));
        }
        Ok(Body(body))
    }

    pub(super) fn map(&self) -> &Map<String, Value> {
        // `dispatch` checked that the body is an object.
        self.0.as_object().unwrap_or_else(|| unreachable!())
    }

    pub(super) fn opt_str(&self, field: &str) -> Result<Option<String>, RpcError> {
        match self.map().get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(RpcError::Invalid(format!(
                "{field}: expected a string, found {other}"
            ))),
        }
    }

    pub(super) fn str(&self, field: &str) -> Result<String, RpcError> {
        self.opt_str(field)?
            .ok_or_else(|| RpcError::Invalid(format!("{field}: is required")))
    }

    pub(super) fn bounded(&self, field: &str, min: usize, max: usize) -> Result<String, RpcError> {
        let s = self.str(field)?;
        let n = s.chars().count();
        if n < min || n > max {
            return Err(RpcError::Invalid(format!(
                "{field}: is {n} characters; {min} to {max} allowed"
            )));
        }
        Ok(s)
    }

    /// The customer whose token the call uses: `userId`, checked like a send's `from`.
    pub(super) fn user(&self) -> Result<String, RpcError> {
        let u = self.str("userId")?;
        check_user_id(&u).map_err(|r| RpcError::Invalid(r.to_string()))?;
        Ok(u)
    }

    /// The customer `op` acts for: `userId`, or the op's own user field ([`own_user_field`]);
    /// both when they name the same customer. Checked like a send's `from`.
    pub fn customer(&self, op: &str) -> Result<String, RpcError> {
        let Some(own) = own_user_field(op) else {
            return self.user();
        };
        let u = match (self.opt_str("userId")?, self.opt_str(own)?) {
            (Some(a), Some(b)) if a != b => {
                return Err(RpcError::Invalid(format!(
                    "userId and {own} name different customers ({a:?}, {b:?}); give one of them"
                )));
            }
            (Some(u), _) | (None, Some(u)) => u,
            (None, None) => {
                return Err(RpcError::Invalid(format!("userId: is required (or {own})")));
            }
        };
        check_user_id(&u).map_err(|r| RpcError::Invalid(r.to_string()))?;
        Ok(u)
    }

    pub(super) fn file_type(&self, field: &str) -> Result<String, RpcError> {
        let t = self.str(field)?.to_ascii_lowercase();
        if !FILE_TYPES.contains(&t.as_str()) {
            return Err(RpcError::Invalid(format!(
                "{field}: {t:?} is not one of jpg, png, bmp, mp3, aac, mp4, txt, csv"
            )));
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer(op: &str, body: &str) -> Result<String, String> {
        Body::parse(body.as_bytes())
            .and_then(|b| b.customer(op))
            .map_err(|e| match e {
                RpcError::Invalid(m) => m,
                other => format!("{other:?}"),
            })
    }

    #[test]
    fn an_op_names_its_customer_by_user_id_or_its_own_field() {
        // The documented bodies.
        assert_eq!(
            customer(
                "leaveMessage",
                r#"{"callId":"c1","caller":"138","leaveMessage":"x"}"#
            ),
            Ok("c1".into())
        );
        assert_eq!(
            customer(
                "robotFeedback",
                r#"{"from":"f1","feedback":1,"interIdx":"1"}"#
            ),
            Ok("f1".into())
        );
        assert_eq!(
            customer("send", r#"{"from":"s1","content":"hi"}"#),
            Ok("s1".into())
        );
        // userId everywhere; both when they agree.
        for op in [
            "leaveMessage",
            "robotFeedback",
            "send",
            "queueInfo",
            "phrases",
        ] {
            assert_eq!(customer(op, r#"{"userId":"u1"}"#), Ok("u1".into()), "{op}");
        }
        assert_eq!(
            customer("leaveMessage", r#"{"userId":"u1","callId":"u1"}"#),
            Ok("u1".into())
        );
        let e = customer("leaveMessage", r#"{"userId":"u1","callId":"u2"}"#).unwrap_err();
        assert!(e.contains("different customers"), "{e}");
        assert_eq!(
            customer("leaveMessage", "{}"),
            Err("userId: is required (or callId)".into())
        );
        // An op whose body has no user field of its own: userId only.
        assert_eq!(
            customer("phrases", r#"{"from":"f1"}"#),
            Err("userId: is required".into())
        );
        // The customer is checked as a subject token, whichever field named them.
        let e = customer("leaveMessage", r#"{"callId":"a.b"}"#).unwrap_err();
        assert!(e.starts_with("userId"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn any_body_gives_a_routable_customer_or_a_refusal(body in "\\{(\"(userId|from|callId)\":\"[a-z.* ]{0,30}\",?){0,3}\\}") {
            for op in ["leaveMessage", "robotFeedback", "send", "queueInfo"] {
                if let Ok(Ok(u)) = Body::parse(body.as_bytes()).map(|b| b.customer(op)) {
                    proptest::prop_assert!(crate::uplink::validate::check_user_id(&u).is_ok());
                }
            }
        }
    }
}
