//! Relay-wide request-reply on `P.rpc.<op>`: `sessions.list`, `transcript.get`,
//! `summaries.list`, `health`, and the first three tenant-scoped on `P.cec.<t>.rpc.<op>`
//! ([`call_scoped`]). Read-only views of the store; tokens never leave it. `transcript.get` and
//! `summaries.list` are paged: at most `limit` rows (default [`PAGE_DEFAULT`], at most
//! [`PAGE_MAX`]) after the cursor `after` (a message's `relayId`; a summary cursor), and `next`,
//! the cursor of the next page, while there is one.

use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

use super::RpcError;
use super::body::Body;
use crate::relay::Relay;
use store::{MessageRow, Session, SessionState, SummaryPage, kind};

/// The ops also served on `P.cec.<t>.rpc.<op>`.
pub(super) const TENANT_SCOPED: &[&str] = &["sessions.list", "transcript.get", "summaries.list"];
/// `transcript.get`: rows per page without `limit`.
pub const PAGE_DEFAULT: i64 = 100;
/// `transcript.get`: the largest `limit`.
pub const PAGE_MAX: i64 = 1000;

pub(super) async fn call(relay: &Relay, op: &str, b: &Body) -> Result<Value, RpcError> {
    read(relay, op, b, None).await
}

/// `sessions.list`, `transcript.get` and `summaries.list` of `tenant` (from the subject): a body
/// naming another tenant, or a `kind` other than `cec`, is refused.
pub(super) async fn call_scoped(
    relay: &Relay,
    tenant: &str,
    op: &str,
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
            "kind: {k:?}; P.cec.<t>.rpc.{op} reads CEC conversations only"
        )));
    }
    read(relay, op, b, Some(tenant)).await
}

async fn read(relay: &Relay, op: &str, b: &Body, scope: Option<&str>) -> Result<Value, RpcError> {
    match op {
        "sessions.list" => {
            let tenant = match scope {
                Some(t) => Some(t.to_owned()),
                None => b.opt_str("tenant")?,
            };
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
            let sessions = sessions
                .iter()
                .filter(|s| scope.is_none() || s.kind == kind::CEC)
                .map(session_json)
                .collect::<Vec<_>>();
            Ok(json!({"ok": true, "sessions": sessions}))
        }
        "transcript.get" => {
            let tenant = match scope {
                Some(t) => t.to_owned(),
                None => b.str("tenant")?,
            };
            let user = b.str("userId")?;
            let k = b.opt_str("kind")?.unwrap_or_else(|| kind::CEC.to_owned());
            let limit = page_limit(b)?;
            let after = b.opt_str("after")?;
            let mut rows = relay
                .store
                .transcript_page(&k, &tenant, &user, after.as_deref(), limit + 1)
                .await
                .map_err(unavailable)?
                .ok_or_else(|| {
                    RpcError::Invalid(format!(
                        "after: {:?} is not the relayId of a message of this transcript",
                        after.as_deref().unwrap_or_default()
                    ))
                })?;
            // One row more than asked for tells whether there is a next page.
            let more = rows.len() as i64 > limit;
            rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            let mut reply =
                json!({"ok": true, "messages": rows.iter().map(message_json).collect::<Vec<_>>()});
            if more && let Some(last) = rows.last() {
                reply["next"] = Value::String(last.relay_id.clone());
            }
            if k == kind::TIM && after.is_none() {
                // Tencent robot streams, on the first page: one entry each, with the assembled text.
                let streams = relay
                    .store
                    .tim_streams(&tenant, &user)
                    .await
                    .map_err(unavailable)?;
                reply["streams"] = streams.iter().map(tim_stream_json).collect();
            }
            Ok(reply)
        }
        "summaries.list" => summaries(relay, b, scope).await,
        "health" => {
            // A full or read-only database answers a ping: its refusals are in its health.
            let db = match (relay.store.ping().await, relay.store.health().cause()) {
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
        "cluster.status" => match crate::cluster::status(&relay.store).await {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Ok(json!({"ok": true, "partitions": 0, "liveMembers": 1,
                "single": true, "members": [], "leases": []})),
            Err(e) => Err(RpcError::Unavailable(format!("reading the cluster: {e}"))),
        },
        other => Err(RpcError::UnknownOp(other.to_owned())),
    }
}

/// `summaries.list`: the summaries closed in `[since, until)` (RFC 3339; open-ended without),
/// of a tenant, kind and user or all, oldest first, a page at a time; `scope` is the tenant of a
/// tenant-scoped request (and the kind `cec`).
async fn summaries(relay: &Relay, b: &Body, scope: Option<&str>) -> Result<Value, RpcError> {
    let time = |field: &str| -> Result<Option<time::OffsetDateTime>, RpcError> {
        b.opt_str(field)?
            .map(|t| {
                time::OffsetDateTime::parse(&t, &Rfc3339).map_err(|e| {
                    RpcError::Invalid(format!("{field}: {t:?} is not an RFC 3339 time ({e})"))
                })
            })
            .transpose()
    };
    let mut page = SummaryPage::first(page_limit(b)? + 1);
    page.since = time("since")?;
    page.until = time("until")?;
    page.user_id = b.opt_str("userId")?;
    match scope {
        Some(t) => {
            page.tenant = Some(t.to_owned());
            page.kind = Some(kind::CEC.to_owned());
        }
        None => {
            page.tenant = b.opt_str("tenant")?;
            page.kind = b.opt_str("kind")?;
        }
    }
    if let Some(after) = b.opt_str("after")? {
        page.after = Some(SummaryPage::parse_cursor(&after).ok_or_else(|| {
            RpcError::Invalid(format!(
                "after: {after:?} is not the `next` of an earlier page"
            ))
        })?);
    }
    let mut rows = relay
        .store
        .summaries_page(&page)
        .await
        .map_err(unavailable)?;
    // One row more than asked for tells whether there is a next page.
    let limit = usize::try_from(page.limit - 1).unwrap_or(usize::MAX);
    let more = rows.len() > limit;
    rows.truncate(limit);
    let mut reply = json!({"ok": true, "summaries": rows});
    if more && let Some(last) = rows.last() {
        reply["next"] = Value::String(SummaryPage::cursor(last));
    }
    Ok(reply)
}

/// `limit` of a page: 1 to [`PAGE_MAX`], [`PAGE_DEFAULT`] without it.
fn page_limit(b: &Body) -> Result<i64, RpcError> {
    match b.opt_str("limit")? {
        None => Ok(PAGE_DEFAULT),
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=PAGE_MAX).contains(n))
            .ok_or_else(|| RpcError::Invalid(format!("limit: must be 1 to {PAGE_MAX}"))),
    }
}

fn unavailable(e: store::StoreError) -> RpcError {
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

fn tim_stream_json(r: &store::TimStreamRow) -> Value {
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
