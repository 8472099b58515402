//! Relay-wide request-reply on `P.rpc.<op>`: `sessions.list`, `transcript.get`, `health`.
//! Read-only views of the store; tokens never leave it.

use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

use super::RpcError;
use super::ops::Body;
use crate::relay::Relay;
use crate::store::{MessageRow, Session, SessionState, kind};

pub(super) async fn call(relay: &Relay, op: &str, b: &Body) -> Result<Value, RpcError> {
    match op {
        "sessions.list" => {
            let tenant = b.opt_str("tenant")?;
            let state = match b.opt_str("state")?.as_deref() {
                None => None,
                Some(s) => Some(SessionState::parse(s).map_err(|_| {
                    RpcError::Invalid(format!("state: {s:?} must be active, queued or closed"))
                })?),
            };
            let limit = match b.opt_str("limit")? {
                None => 100,
                Some(l) => l
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| RpcError::Invalid("limit: must be 1 to 1000".into()))?,
            };
            let sessions = relay
                .store
                .list_sessions(tenant.as_deref(), state, limit)
                .await
                .map_err(unavailable)?;
            Ok(
                json!({"ok": true, "sessions": sessions.iter().map(session_json).collect::<Vec<_>>()}),
            )
        }
        "transcript.get" => {
            let tenant = b.str("tenant")?;
            let user = b.str("userId")?;
            let k = b.opt_str("kind")?.unwrap_or_else(|| kind::CEC.to_owned());
            let rows = relay
                .store
                .transcript(&k, &tenant, &user)
                .await
                .map_err(unavailable)?;
            let mut reply =
                json!({"ok": true, "messages": rows.iter().map(message_json).collect::<Vec<_>>()});
            if k == kind::TIM {
                // Tencent robot streams: one entry each, with the assembled text.
                let streams = relay
                    .store
                    .tim_streams(&tenant, &user)
                    .await
                    .map_err(unavailable)?;
                reply["streams"] = streams.iter().map(tim_stream_json).collect();
            }
            Ok(reply)
        }
        "health" => {
            // A full or read-only database answers a ping: its refusals are in `store_health`.
            let db = match (relay.store.ping().await, relay.store_health.cause()) {
                (Err(e), _) => format!("down: {e}"),
                (Ok(()), Some(cause)) => format!("down: {cause}"),
                (Ok(()), None) => "up".to_owned(),
            };
            let streams = relay
                .streams_ready
                .load(std::sync::atomic::Ordering::Relaxed);
            let ok = db == "up" && streams;
            Ok(
                json!({"ok": ok, "database": db, "nats": "up", "streams": if streams { "up" } else { "pending" }}),
            )
        }
        other => Err(RpcError::UnknownOp(other.to_owned())),
    }
}

fn unavailable(e: crate::store::StoreError) -> RpcError {
    RpcError::Unavailable(e.to_string())
}

fn ts(t: &time::OffsetDateTime) -> Value {
    t.format(&Rfc3339).map(Value::String).unwrap_or(Value::Null)
}

fn session_json(s: &Session) -> Value {
    json!({
        "id": s.id, "kind": s.kind, "tenant": s.tenant, "userId": s.user_id,
        "channelConfigId": s.channel_config_id, "state": s.state.as_str(),
        "openedAt": ts(&s.opened_at), "closedAt": s.closed_at.as_ref().map(ts),
        "closeReason": s.close_reason, "lastActivityAt": ts(&s.last_activity_at),
    })
}

fn tim_stream_json(r: &crate::store::TimStreamRow) -> Value {
    json!({
        "streamId": r.stream_id, "from": r.from_account, "MsgKey": r.msg_key, "text": r.text,
        "chunks": r.chunks, "calls": r.calls, "finished": r.finished, "status": r.status.as_str(),
        "errorCode": r.error_code, "errorInfo": r.error_info,
        "createdAt": ts(&r.created_at), "updatedAt": ts(&r.updated_at),
    })
}

fn message_json(m: &MessageRow) -> Value {
    json!({
        "relayId": m.relay_id, "direction": m.direction.as_str(), "sessionId": m.session_id,
        "messageId": m.message_id, "messageCode": m.message_code, "sourceType": m.source_type,
        "controlType": m.control_type, "mediaType": m.media_type, "content": m.content,
        "status": m.status.as_str(), "resultCode": m.result_code, "resultDesc": m.result_desc,
        "createdAt": ts(&m.created_at),
        "body": serde_json::from_str::<Value>(&m.body).unwrap_or(Value::Null),
    })
}
