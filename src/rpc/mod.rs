//! Request-reply over core NATS: `P.cec.<t>.rpc.<op>`, one op per CEC endpoint that is not a
//! message (contract § RPC). A request is the endpoint's body less what the relay fills in
//! (`channel`, the tenant's `channelConfigId`, the customer's token); the reply is the endpoint's
//! answer plus `"ok"`, or `{"ok": false, "error": {"code", "message"}}` for a request the relay
//! refuses (`invalid_request`, `unknown_tenant`, `upstream`, `unavailable`, `timeout`).
//!
//! Relay-wide `P.rpc.<op>`: `sessions.list`, `transcript.get`, `health` ([`relay_wide`]).
//!
//! Ops served here: `queueInfo`, `phrases`, `upload`, `download`, `clickToCall.support`,
//! `clickToCall.create`, `clickToCall.events`, `clickToCall.drop`, `mobileAgentCall`, and — stored,
//! with their events — `satisfaction`, `robotFeedback`, `leaveMessage` ([`stored`]). Requests are
//! handled concurrently (a queue group, so several relays share the load); they are not stored.

mod ops;
mod relay_wide;
mod stored;

use std::sync::Arc;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::bus::payload::{ErrorBody, ErrorReply};
use crate::cec::CecError;
use crate::relay::Relay;

/// Queue group of the RPC subscription.
pub const QUEUE_GROUP: &str = "ccrelay";

/// Why a request gets an error reply.
#[derive(Debug)]
pub enum RpcError {
    Invalid(String),
    UnknownTenant(String),
    UnknownOp(String),
    Upstream(CecError),
    /// The relay cannot do its part now (the database is down).
    Unavailable(String),
}

impl RpcError {
    fn reply(&self) -> ErrorReply {
        let (code, message) = match self {
            RpcError::Invalid(m) => ("invalid_request", m.clone()),
            RpcError::UnknownTenant(t) => (
                "unknown_tenant",
                format!("no [[cec]] tenant is named {t:?}"),
            ),
            RpcError::UnknownOp(op) => (
                "invalid_request",
                format!("unknown operation {op:?}; see the README for the list"),
            ),
            RpcError::Unavailable(m) => ("unavailable", m.clone()),
            RpcError::Upstream(e) => (
                match e {
                    CecError::Timeout { .. } => "timeout",
                    e if e.is_retryable() => "unavailable",
                    _ => "upstream",
                },
                e.to_string(),
            ),
        };
        let upstream = match self {
            RpcError::Upstream(e) => Some(e),
            _ => None,
        };
        ErrorReply {
            ok: false,
            error: ErrorBody {
                code: code.to_owned(),
                message,
                upstream_code: upstream.map(|e| e.code()),
                retryable: upstream.map(|e| e.is_retryable()),
            },
        }
    }
}

impl From<CecError> for RpcError {
    fn from(e: CecError) -> Self {
        RpcError::Upstream(e)
    }
}

/// Serves `P.cec.*.rpc.>` until the relay is cancelled.
pub async fn run(relay: Arc<Relay>, nats: async_nats::Client) {
    let subject = format!("{}.cec.*.rpc.>", relay.subjects.prefix());
    let wide = format!("{}.rpc.>", relay.subjects.prefix());
    let mut sub = loop {
        let both = async {
            let a = nats
                .queue_subscribe(subject.clone(), QUEUE_GROUP.to_owned())
                .await?;
            let b = nats
                .queue_subscribe(wide.clone(), QUEUE_GROUP.to_owned())
                .await?;
            Ok::<_, async_nats::SubscribeError>(futures::stream::select(a, b))
        };
        match both.await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot subscribe to RPC requests; retrying");
                tokio::select! {
                    _ = relay.cancel.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let msg = tokio::select! {
            _ = relay.cancel.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let Some(reply_to) = msg.reply.clone() else {
            tracing::debug!(subject = %msg.subject, "RPC request without a reply subject ignored");
            continue;
        };
        let relay = relay.clone();
        let nats = nats.clone();
        tracker.spawn(async move {
            let body = handle(&relay, msg.subject.as_str(), &msg.payload).await;
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            if let Err(e) = nats.publish(reply_to, bytes.into()).await {
                tracing::warn!(error = %e, "Cannot send an RPC reply");
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// Handles one request and returns the reply body.
pub async fn handle(relay: &Relay, subject: &str, payload: &[u8]) -> Value {
    match dispatch(relay, subject, payload).await {
        Ok(v) => v,
        Err(e) => {
            if let RpcError::Upstream(u) = &e {
                tracing::warn!(subject, endpoint = %u.endpoint(), code = %u.code(), error = %u, "RPC failed upstream");
            }
            serde_json::to_value(e.reply()).unwrap_or_else(|_| json!({"ok": false}))
        }
    }
}

async fn dispatch(relay: &Relay, subject: &str, payload: &[u8]) -> Result<Value, RpcError> {
    if let Some(op) = subject.strip_prefix(&format!("{}.rpc.", relay.subjects.prefix())) {
        return relay_wide::call(relay, op, &ops::Body::parse(payload)?).await;
    }
    let prefix = format!("{}.cec.", relay.subjects.prefix());
    let rest = subject.strip_prefix(&prefix).ok_or_else(|| {
        RpcError::Invalid(format!(
            "subject {subject:?} is not P.cec.<tenant>.rpc.<op>"
        ))
    })?;
    let (tenant_name, op) = rest.split_once(".rpc.").ok_or_else(|| {
        RpcError::Invalid(format!(
            "subject {subject:?} is not P.cec.<tenant>.rpc.<op>"
        ))
    })?;
    let tenant = relay
        .tenant(tenant_name)
        .ok_or_else(|| RpcError::UnknownTenant(tenant_name.to_owned()))?;
    ops::call(relay, tenant, op, ops::Body::parse(payload)?).await
}
