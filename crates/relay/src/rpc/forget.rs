//! `forget`: erases one customer ([`crate::privacy::forget`]) for a service, on
//! `P.cec.<t>.rpc.forget` (`{"userId", "requestedBy"?}`; the tenant is the subject's) and
//! relay-wide on `P.rpc.forget` (`{"kind"?: "cec" | "tim", "tenant", "userId", "requestedBy"?}`,
//! the way to reach a Tencent app's user, or a tenant no longer configured).
//!
//! `requestedBy` is the caller's name for itself, kept in the audit as `rpc:<requestedBy>`
//! (NATS does not tell who sent a request: NATS permissions decide who may). The tenant-scoped
//! request acts for a customer, so in a cluster it is served by the customer's owner (see
//! [`super::owner_route`]), which also drops the customer's `ccmessaging-token` from its memory.
//!
//! Reply: `{"ok": true, "erasure", "userHash", "counts", "total"}`. A customer whose conversation
//! is going on, or an erasure that did not finish, is answered `unavailable` with the reason
//! (erase again later); a request naming nobody, `invalid_request`.

use async_nats::jetstream;
use serde_json::{Value, json};

use super::RpcError;
use super::body::Body;
use crate::privacy::forget::{Eraser, ForgetError, Request, forget};
use crate::uplink::Uplink;
use store::kind;

/// The longest `requestedBy` kept.
const REQUESTED_BY_MAX_CHARS: usize = 128;

/// `P.cec.<tenant>.rpc.forget`.
pub(super) async fn cec(
    up: &Uplink,
    js: &jetstream::Context,
    tenant: &str,
    b: &Body,
) -> Result<Value, RpcError> {
    if let Some(t) = b.opt_str("tenant")?
        && t != tenant
    {
        return Err(RpcError::Invalid(format!(
            "tenant: {t:?} is not the tenant of this subject ({tenant:?}); leave it out"
        )));
    }
    if let Some(k) = b.opt_str("kind")?
        && k != kind::CEC
    {
        return Err(RpcError::Invalid(format!(
            "kind: {k:?}; P.cec.<t>.rpc.forget erases CEC customers (P.rpc.forget: Tencent's)"
        )));
    }
    let user = b.user()?;
    erase(up, js, kind::CEC, tenant, &user, b).await
}

/// `P.rpc.forget`.
pub(super) async fn relay_wide(
    up: &Uplink,
    js: &jetstream::Context,
    b: &Body,
) -> Result<Value, RpcError> {
    let k = b.opt_str("kind")?.unwrap_or_else(|| kind::CEC.to_owned());
    let tenant = b.str("tenant")?;
    let user = b.str("userId")?;
    erase(up, js, &k, &tenant, &user, b).await
}

async fn erase(
    up: &Uplink,
    js: &jetstream::Context,
    k: &str,
    tenant: &str,
    user: &str,
    b: &Body,
) -> Result<Value, RpcError> {
    let by = match b.opt_str("requestedBy")? {
        None => "unnamed".to_owned(),
        Some(s)
            if !s.is_empty()
                && s.chars().count() <= REQUESTED_BY_MAX_CHARS
                && !s.chars().any(char::is_control) =>
        {
            s
        }
        Some(_) => {
            return Err(RpcError::Invalid(format!(
                "requestedBy: 1 to {REQUESTED_BY_MAX_CHARS} characters, no control character"
            )));
        }
    };
    let relay = &up.relay;
    let eraser = Eraser {
        store: &relay.store,
        js,
        subjects: &relay.subjects,
        batch: i64::try_from(relay.config.store.retention_batch).unwrap_or(500),
    };
    let req = Request {
        kind: k.to_owned(),
        tenant: tenant.to_owned(),
        user: user.to_owned(),
        requested_by: format!("rpc:{by}"),
    };
    let done = forget(&eraser, &req).await;
    if !matches!(
        done,
        Err(ForgetError::Invalid(_) | ForgetError::InProgress { .. })
    ) && k == kind::CEC
        && let Some(t) = relay.tenant(tenant)
    {
        // Nothing of the customer is left to poll or call for: their token goes too.
        t.client.forget_user(user);
    }
    match done {
        Ok(r) => Ok(json!({
            "ok": true,
            "erasure": r.erasure,
            "userHash": r.user_hash,
            "counts": r.counts,
            "total": r.total(),
        })),
        Err(ForgetError::Invalid(m)) => Err(RpcError::Invalid(m)),
        Err(e) => Err(RpcError::Unavailable(e.to_string())),
    }
}
