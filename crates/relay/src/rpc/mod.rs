//! Request-reply over core NATS: `P.cec.<t>.rpc.<op>`, one op per CEC endpoint that is not a
//! message (contract § RPC). A request is the endpoint's body less what the relay fills in
//! (`channel`, the tenant's `channelConfigId`, the customer's token); the reply is the endpoint's
//! answer plus `"ok"`, or `{"ok": false, "error": {"code", "message"}}` for a request the relay
//! refuses (`invalid_request`, `unknown_tenant`, `upstream`, `unavailable`, `timeout`).
//!
//! `forget` erases one customer (`forget`, [`crate::privacy::forget`]): tenant-scoped for a CEC
//! customer, relay-wide (`P.rpc.forget`) for a Tencent app's user too.
//!
//! Relay-wide `P.rpc.<op>`: `sessions.list`, `transcript.get`, `summaries.list`, `health`,
//! `cluster.status` (`relay_wide`; the last is [`crate::cluster::status`]). The
//! reads about a tenant's customers are also served tenant-scoped, as
//! `P.cec.<t>.rpc.sessions.list`, `P.cec.<t>.rpc.transcript.get` and
//! `P.cec.<t>.rpc.summaries.list`, the tenant taken from the subject, so that NATS permissions on
//! subjects can confine a service to its tenant.
//!
//! Replies go only to reply subjects under one of `rpc.inbox_prefixes` ([`reply_allowed`]): a
//! request naming any other (`P.cec.acme.up.bob`, `$JS.API.…`) is dropped, logged and counted,
//! so a caller cannot make the relay publish where it chooses. At most `rpc.max_concurrent`
//! requests are worked on at once per tenant (and as many relay-wide); one more is answered
//! `unavailable` at once.
//!
//! Ops served here: `queueInfo`, `phrases`, `upload`, `download`, `clickToCall.support`,
//! `clickToCall.create`, `clickToCall.events`, `clickToCall.drop`, `mobileAgentCall`, and — stored,
//! with their events — `satisfaction`, `robotFeedback`, `leaveMessage` (`stored`). Requests are
//! handled concurrently (a queue group, so several relays share the load); they are not stored.
//!
//! In a cluster a request that acts for a customer (every tenant op but the stored reads) is
//! served by the member that owns the customer's partition, the one that holds the customer's
//! token: the member that receives it forwards it, reply subject unchanged, on
//! `P._cluster.<member>.<subject>`, which only that member subscribes to ([`owner_route`]). With
//! no owner known (a partition between owners), the reply is `unavailable`: retry.

mod body;
mod forget;
mod ops;
mod relay_wide;
mod stored;

pub use body::{Body, own_user_field};
pub use relay_wide::{PAGE_DEFAULT, PAGE_MAX};

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tracing::Instrument as _;

use crate::relay::Relay;
use crate::uplink::Uplink;
use cec::CecError;
use contract::payload::{ErrorBody, ErrorReply};

/// Queue group of the RPC subscription.
pub const QUEUE_GROUP: &str = "ccrelay";
/// The longest reply subject answered (an inbox is ~50 bytes; a long one would take room in the
/// relay's protocol line that the server bounds).
pub const MAX_REPLY_LEN: usize = 256;

/// Whether a reply may be published on `reply`: one of `prefixes` (each ending with `.`)
/// followed by one or more subject tokens, no wildcard, at most [`MAX_REPLY_LEN`] bytes.
pub fn reply_allowed(prefixes: &[String], reply: &str) -> bool {
    reply.len() <= MAX_REPLY_LEN
        && prefixes.iter().any(|p| {
            reply.strip_prefix(p.as_str()).is_some_and(|rest| {
                rest.split('.')
                    .all(|t| contract::subjects::check_token(t).is_ok())
            })
        })
}

/// The tenant a request subject names: `<t>` of `P.cec.<t>.rpc.<op>`.
fn subject_tenant<'s>(prefix: &str, subject: &'s str) -> Option<&'s str> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix(".cec.")?;
    rest.split_once(".rpc.").map(|(t, _)| t)
}

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

/// Serves `P.cec.*.rpc.>` and `P.rpc.>` until the relay is cancelled. `send` is handled by the
/// uplink's handler, so the RPC task takes the uplink's context.
pub async fn run(up: Arc<Uplink>, nats: async_nats::Client) {
    let relay = up.relay.clone();
    let subject = format!("{}.cec.*.rpc.>", relay.subjects.prefix());
    let wide = format!("{}.rpc.>", relay.subjects.prefix());
    let forwarded = relay
        .member
        .as_ref()
        .map(|m| format!("{}._cluster.{m}.", relay.subjects.prefix()));
    let mut sub = loop {
        let both = async {
            let a = nats
                .queue_subscribe(subject.clone(), QUEUE_GROUP.to_owned())
                .await?;
            let b = nats
                .queue_subscribe(wide.clone(), QUEUE_GROUP.to_owned())
                .await?;
            let both = futures::stream::select(a, b);
            let mine = match &forwarded {
                Some(f) => Some(nats.subscribe(format!("{f}>")).await?),
                None => None,
            };
            Ok::<_, async_nats::SubscribeError>(futures::stream::select(
                both,
                futures::stream::iter(mine).flatten(),
            ))
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
    let js = async_nats::jetstream::new(nats.clone());
    let tracker = tokio_util::task::TaskTracker::new();
    let limit = relay.config.rpc.max_concurrent;
    // One bucket per tenant; the relay-wide requests and those naming no tenant share one more.
    let per_tenant: HashMap<String, Arc<Semaphore>> = relay
        .tenants
        .keys()
        .map(|t| (t.clone(), Arc::new(Semaphore::new(limit))))
        .collect();
    let shared = Arc::new(Semaphore::new(limit));
    loop {
        let msg = tokio::select! {
            _ = relay.cancel.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let Some(reply_to) = msg.reply.clone() else {
            tracing::debug!(subject = %msg.subject, "RPC request without a reply subject ignored");
            continue;
        };
        // A request another member forwarded is this member's to serve, whatever it sees now.
        let (subject, was_forwarded) = match forwarded
            .as_deref()
            .and_then(|f| msg.subject.as_str().strip_prefix(f))
        {
            Some(original) => (original.to_owned(), true),
            None => (msg.subject.to_string(), false),
        };
        let tenant = subject_tenant(relay.subjects.prefix(), &subject)
            .filter(|t| per_tenant.contains_key(*t))
            .unwrap_or_default();
        if !reply_allowed(&relay.config.rpc.inbox_prefixes, &reply_to) {
            let shown: String = reply_to.chars().take(80).collect();
            tracing::warn!(subject = %msg.subject, reply = %shown, allowed = ?relay.config.rpc.inbox_prefixes,
                "RPC request dropped: its reply subject is not under an inbox prefix");
            crate::instrument::rpc_refused(tenant, "reply_subject");
            continue;
        }
        let bucket = per_tenant.get(tenant).unwrap_or(&shared);
        let Ok(permit) = bucket.clone().try_acquire_owned() else {
            crate::instrument::rpc_refused(tenant, "busy");
            tracing::debug!(subject = %msg.subject, limit, "RPC request refused: too many in progress");
            let who = if tenant.is_empty() {
                "relay-wide".to_owned()
            } else {
                format!("of tenant {tenant}")
            };
            let e = RpcError::Unavailable(format!(
                "{limit} requests {who} are in progress (rpc.max_concurrent); retry later"
            ));
            let body = serde_json::to_vec(&e.reply()).unwrap_or_default();
            if let Err(e) = nats.publish(reply_to, body.into()).await {
                tracing::warn!(error = %e, "Cannot send an RPC reply");
            }
            continue;
        };
        if !was_forwarded {
            match owner_route(&relay, &subject, &msg.payload) {
                Route::Here => {}
                Route::To(to) => {
                    drop(permit);
                    if let Err(e) = nats
                        .publish_with_reply(to, reply_to, msg.payload.clone())
                        .await
                    {
                        tracing::warn!(error = %e, "Cannot forward an RPC request to its owner");
                    }
                    continue;
                }
                Route::Nobody => {
                    drop(permit);
                    let e = RpcError::Unavailable(
                        "no relay of the cluster owns this customer right now (a partition is \
                         changing owner); retry in a few seconds"
                            .to_owned(),
                    );
                    let body = serde_json::to_vec(&e.reply()).unwrap_or_default();
                    if let Err(e) = nats.publish(reply_to, body.into()).await {
                        tracing::warn!(error = %e, "Cannot send an RPC reply");
                    }
                    continue;
                }
            }
        }
        let up = up.clone();
        let nats = nats.clone();
        let js = js.clone();
        tracker.spawn(async move {
            let body = handle(&up, &js, &subject, &msg.payload).await;
            drop(permit);
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            if let Err(e) = nats.publish(reply_to, bytes.into()).await {
                tracing::warn!(error = %e, "Cannot send an RPC reply");
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// Where a request is served in a cluster.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Here,
    /// Forwarded on this subject to the member that owns the customer.
    To(String),
    /// The customer's partition has no owner now.
    Nobody,
}

/// Where a request on `subject` is served: here, unless this is a member of a cluster, the
/// request acts for a customer (a tenant op that is not a stored read) and another member owns
/// that customer's partition. A request whose customer cannot be read is served here (and
/// refused as invalid).
fn owner_route(relay: &Relay, subject: &str, payload: &[u8]) -> Route {
    let Some(me) = &relay.member else {
        return Route::Here;
    };
    let Some(tenant) = subject_tenant(relay.subjects.prefix(), subject) else {
        return Route::Here;
    };
    let op = subject
        .rsplit_once(".rpc.")
        .map(|(_, op)| op)
        .unwrap_or_default();
    if relay_wide::TENANT_SCOPED.contains(&op) {
        return Route::Here;
    }
    let Ok(user) = Body::parse(payload).and_then(|b| b.customer(op)) else {
        return Route::Here;
    };
    if relay.ownership.owns(tenant, &user) {
        return Route::Here;
    }
    match relay.ownership.owner_of(tenant, &user) {
        Some(owner) if owner == *me => Route::Here,
        Some(owner) => Route::To(format!(
            "{}._cluster.{owner}.{subject}",
            relay.subjects.prefix()
        )),
        None => Route::Nobody,
    }
}

/// Handles one request and returns the reply body; runs in the span `rpc` (`subject`).
pub async fn handle(
    up: &Uplink,
    js: &async_nats::jetstream::Context,
    subject: &str,
    payload: &[u8],
) -> Value {
    let span = tracing::error_span!("rpc", subject);
    async {
        match dispatch(up, js, subject, payload).await {
            Ok(v) => v,
            Err(e) => {
                if let RpcError::Upstream(u) = &e {
                    tracing::warn!(endpoint = %u.endpoint(), code = %u.code(), error = %u, "RPC failed upstream");
                }
                serde_json::to_value(e.reply()).unwrap_or_else(|_| json!({"ok": false}))
            }
        }
    }
    .instrument(span)
    .await
}

async fn dispatch(
    up: &Uplink,
    js: &async_nats::jetstream::Context,
    subject: &str,
    payload: &[u8],
) -> Result<Value, RpcError> {
    let relay: &Relay = &up.relay;
    if let Some(op) = subject.strip_prefix(&format!("{}.rpc.", relay.subjects.prefix())) {
        if op == "forget" {
            return forget::relay_wide(up, js, &Body::parse(payload)?).await;
        }
        return relay_wide::call(relay, op, &Body::parse(payload)?).await;
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
    let body = Body::parse(payload)?;
    if relay_wide::TENANT_SCOPED.contains(&op) {
        return relay_wide::call_scoped(relay, tenant_name, op, &body).await;
    }
    if stored::OPS.contains(&op) {
        return stored::call(relay, tenant, op, &body).await;
    }
    if op == "forget" {
        return forget::cec(up, js, tenant_name, &body).await;
    }
    ops::call(up, tenant, op, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbox() -> Vec<String> {
        vec!["_INBOX.".to_owned(), "_R_.".to_owned()]
    }

    #[test]
    fn replies_go_to_inboxes_only() {
        for ok in [
            "_INBOX.abc",
            "_INBOX.abc.7",
            "_R_.x.y",
            "_INBOX.acme.nuid.1",
        ] {
            assert!(reply_allowed(&inbox(), ok), "{ok}");
        }
        for bad in [
            "ccrelay.cec.acme.up.bob",
            "$JS.API.STREAM.DELETE.CCRELAY_OUT",
            "_INBOX.",
            "_INBOX",
            "_INBOXES.x",
            "_INBOX..x",
            "_INBOX.*",
            "_INBOX.>",
            "_INBOX.a b",
            "x._INBOX.a",
            "",
        ] {
            assert!(!reply_allowed(&inbox(), bad), "{bad}");
        }
        let long = format!("_INBOX.{}", "a".repeat(MAX_REPLY_LEN));
        assert!(!reply_allowed(&inbox(), &long));
    }

    #[test]
    fn the_tenant_comes_from_the_subject() {
        assert_eq!(
            subject_tenant("P", "P.cec.acme.rpc.queueInfo"),
            Some("acme")
        );
        assert_eq!(
            subject_tenant("P", "P.cec.acme.rpc.transcript.get"),
            Some("acme")
        );
        assert_eq!(subject_tenant("P", "P.rpc.transcript.get"), None);
        assert_eq!(subject_tenant("P", "Q.cec.acme.rpc.x"), None);
    }

    proptest::proptest! {
        /// Whatever the reply subject, an allowed one starts with an inbox prefix and has no
        /// wildcard, space or empty token.
        #[test]
        fn an_allowed_reply_is_an_inbox(reply in "[_A-Za-z.*> $]{0,40}") {
            if reply_allowed(&inbox(), &reply) {
                proptest::prop_assert!(reply.starts_with("_INBOX.") || reply.starts_with("_R_."));
                proptest::prop_assert!(!reply.contains(['*', '>', ' ']) && !reply.contains(".."));
                proptest::prop_assert!(!reply.ends_with('.'));
            }
        }
    }
}
