//! The RPC operations whose results are not kept: read the request, check it against the
//! documented limits, call CEC, and shape the reply. `send` is handed to the uplink's handler
//! ([`crate::uplink::handle`]), exactly as a message on `P.cec.<t>.up.<u>`.

use base64::Engine as _;
use serde_json::Value;

use super::RpcError;
use super::body::{Body, reply};
use crate::relay::Tenant;
use crate::uplink::Uplink;
use cec::wire::CHANNEL_WEB;
use cec::wire_ops::{
    ClickToCallRequest, DownloadRequest, MobileAgentCallRequest, PhraseRequest, QueueInfoRequest,
    UploadRequest,
};

/// Calls `op` of `tenant` with the request `body` (a JSON object).
pub(super) async fn call(
    up: &Uplink,
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
        "send" => send(up, tenant, b).await,
        other => Err(RpcError::UnknownOp(other.to_owned())),
    }
}

/// `send`: an UpMessage plus `userId`, handled exactly as one from `P.cec.<t>.up.<u>` (validated,
/// idempotent by `messageId`, retried, committed with its events), answered with its outcome.
/// It does not queue behind the user's messages on the stream: don't mix both ways for one user
/// when order matters.
async fn send(ctx: &Uplink, tenant: &Tenant, b: Body) -> Result<Value, RpcError> {
    use crate::uplink::handle::{Delivery, Disposition, handle};
    let relay = &ctx.relay;
    let user = b.customer("send")?;
    let mut up = b.into_value();
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
        ctx,
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
