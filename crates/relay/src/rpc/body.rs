//! A request's body ([`Body`]: typed reads, each refusal naming the field), the customer it acts
//! for, and the shape of a reply ([`reply`]). Shared by every RPC operation.
//!
//! An op that needs a customer's `ccmessaging-token` names the customer by `userId` or by its
//! endpoint's own user field when it has one ([`own_user_field`]: `from` of `send` and
//! `robotFeedback`, `callId` of `leaveMessage`); both may be given when they agree.

use serde::Serialize;
use serde_json::{Map, Value};

use super::RpcError;
use crate::uplink::validate::check_user_id;
use cec::wire::FILE_TYPES;

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
    /// The body as JSON.
    pub(super) fn into_value(self) -> Value {
        self.0
    }

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
