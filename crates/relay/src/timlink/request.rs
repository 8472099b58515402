//! A checked TimSend ([`contract::tim_payload::TimSend`]) as Tencent's `send_msg` body: the
//! elements checked one by one, `MsgRandom` derived from the message's id, the body's size checked
//! against Tencent's limit before any call.

use serde_json::Value;

use contract::tim_payload::{TimPayloadError, TimSend, check_element, refuse};
use tim::wire::{MAX_BODY_BYTES, MsgElement, SendMsgRequest};

/// One checked `msgBody` element as Tencent's `MsgElement`.
fn element(i: usize, v: &Value) -> Result<MsgElement, TimPayloadError> {
    check_element(i, v)?;
    serde_json::from_value(v.clone()).map_err(|e| refuse(&format!("msgBody[{i}]"), e.to_string()))
}

/// The `send_msg` body of a checked TimSend to `user`, with `MsgRandom` from `id`. Refuses a body
/// over 12 KB (Tencent's 93000) before any call.
pub fn send_request(m: &TimSend, user: &str, id: &str) -> Result<SendMsgRequest, TimPayloadError> {
    let msg_body = match (&m.text, &m.msg_body) {
        (Some(t), _) => vec![MsgElement::text(t.clone())],
        (None, Some(b)) => b
            .iter()
            .enumerate()
            .map(|(i, v)| element(i, v))
            .collect::<Result<_, _>>()?,
        (None, None) => return Err(refuse("text", "missing: give text or msgBody")),
    };
    let (session_id, from_account, to_account) = match &m.session_id {
        Some(s) => (Some(s.clone()), None, None),
        None => (None, m.from.clone(), Some(user.to_owned())),
    };
    let req = SendMsgRequest {
        session_id,
        from_account,
        to_account,
        msg_random: tim::wire::msg_random(id),
        msg_body,
        cloud_custom_data: m.cloud_custom_data.clone(),
        exclude_from_user_resp_timeout: m.exclude_from_user_resp_timeout,
    };
    let size = serde_json::to_vec(&req).map(|v| v.len()).unwrap_or(0);
    if size > MAX_BODY_BYTES {
        return Err(refuse(
            if m.text.is_some() { "text" } else { "msgBody" },
            format!("the request body is {size} bytes, over Tencent's limit of {MAX_BODY_BYTES}"),
        ));
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::tim_payload::parse_send;
    use proptest::prelude::*;

    #[test]
    fn send_requests_for_both_addressings() {
        let m = parse_send(br#"{"id":"m1","sessionId":"s1","text":"hello","cloudCustomData":"c","excludeFromUserRespTimeout":1}"#).unwrap();
        let r = send_request(&m, "u1", "m1").unwrap();
        assert_eq!(r.session_id.as_deref(), Some("s1"));
        assert_eq!(r.to_account, None);
        assert_eq!(r.msg_random, tim::wire::msg_random("m1"));
        assert_eq!(r.msg_body, vec![MsgElement::text("hello")]);
        assert_eq!(r.exclude_from_user_resp_timeout, Some(1));
        let m = parse_send(
            br#"{"from":"@cs","msgBody":[{"MsgType":"TIMCustomElem","MsgContent":{"Data":"card"}}]}"#,
        )
        .unwrap();
        let r = send_request(&m, "u1", "x").unwrap();
        assert_eq!(r.from_account.as_deref(), Some("@cs"));
        assert_eq!(r.to_account.as_deref(), Some("u1"));
        assert_eq!(r.msg_body[0].msg_type, "TIMCustomElem");
    }

    #[test]
    fn a_body_over_12_kb_is_refused_before_sending() {
        let m = TimSend {
            session_id: Some("s".into()),
            text: Some("x".repeat(MAX_BODY_BYTES)),
            ..Default::default()
        };
        let e = send_request(&m, "u", "id").unwrap_err();
        assert_eq!(e.field, "text");
        assert!(e.reason.contains("12288"), "{e}");
    }

    proptest! {
        #[test]
        fn requests_never_panic_on_near_json(
            id in proptest::option::of(".{0,140}"),
            text in proptest::option::of(".{0,50}"),
            session in proptest::option::of(".{0,10}"),
            from in proptest::option::of(".{0,10}"),
            body in proptest::option::of(proptest::collection::vec(any::<u8>().prop_map(|b| serde_json::json!({"MsgType": if b % 2 == 0 { Value::from("T") } else { Value::from(b) }, "MsgContent": if b % 3 == 0 { serde_json::json!({}) } else { Value::from(b) }})), 0..3)),
        ) {
            let v = serde_json::json!({"id": id, "text": text, "sessionId": session, "from": from, "msgBody": body});
            if let Ok(m) = parse_send(&serde_json::to_vec(&v).unwrap()) {
                let _ = send_request(&m, "u", m.id.as_deref().unwrap_or("x"));
            }
        }
    }
}
