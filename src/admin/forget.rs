//! `ccrelay forget TENANT USER` (erase one customer everywhere the relay keeps them:
//! [`relay::privacy::forget`]) and `ccrelay erasures` (the audit of erasures). Both work on the
//! database directly, as the other operator's commands do; `forget` also needs NATS (the files
//! in the object store, the streams), and refuses to start without it.

use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;

use relay::privacy::forget::{Eraser, Request, forget as erase, summary, user_hash};
use store::DynStore;
use store::privacy::Scrubbed;

/// How long `forget` waits for NATS to answer before it gives up, having erased nothing.
const NATS_WAIT: Duration = Duration::from_secs(10);

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Who runs the command, as the audit keeps it: `cli:<login name>`.
fn operator() -> String {
    let name = ["USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned());
    format!("cli:{name}")
}

/// `ccrelay forget`: erases the customer (kind, tenant, user) and prints what went (or, with `json`, the report as
/// one JSON object).
///
/// # Errors
/// The request names nobody, the customer's conversation is going on, NATS does not answer
/// (then nothing is erased), or a part of the erasure failed (what went before is gone; run it
/// again).
pub async fn forget(
    store: &DynStore,
    nats: &async_nats::Client,
    config: &config::Config,
    (kind, tenant, user): (&str, &str, &str),
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    tokio::time::timeout(NATS_WAIT, nats.flush())
        .await
        .ok()
        .and_then(Result::ok)
        .with_context(|| {
            format!(
                "NATS does not answer at {} within {NATS_WAIT:?}: an erasure needs it (the \
                 object store, the streams); nothing was erased",
                config::redact::nats_url(&config.nats.url)
            )
        })?;
    let js = async_nats::jetstream::new(nats.clone());
    let subjects = contract::Subjects::new(config.nats.prefix.clone());
    let eraser = Eraser {
        store,
        js: &js,
        subjects: &subjects,
        batch: i64::try_from(config.store.retention_batch).unwrap_or(500),
    };
    let req = Request {
        kind: kind.to_owned(),
        tenant: tenant.to_owned(),
        user: user.to_owned(),
        requested_by: operator(),
    };
    let report = erase(&eraser, &req).await?;
    if json {
        writeln!(
            out,
            "{}",
            json!({
                "erasure": report.erasure,
                "userHash": report.user_hash,
                "counts": report.counts,
                "total": report.total(),
            })
        )?;
    } else {
        writeln!(
            out,
            "erased {kind} customer {user:?} of {tenant:?}: {} (erasure {}, user hash {})",
            summary(&report.counts),
            report.erasure,
            report.user_hash
        )?;
        if report.scrubbed == Scrubbed::Busy {
            writeln!(
                out,
                "note: readers kept SQLite's write-ahead log in use; deleted pages stay in it \
                 until its next checkpoint"
            )?;
        }
    }
    Ok(())
}

/// `ccrelay erasures`: the audit, newest first; with `who`, only that customer's (by their
/// hash).
///
/// # Errors
/// The database cannot be read.
pub async fn erasures(
    store: &DynStore,
    who: Option<(&str, &str, &str)>,
    limit: i64,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let hash = who.map(|(k, t, u)| user_hash(k, t, u));
    let rows: Vec<_> = store
        .erasures(if hash.is_some() { i64::MAX } else { limit })
        .await?
        .into_iter()
        .filter(|e| hash.as_ref().is_none_or(|h| &e.user_hash == h))
        .take(usize::try_from(limit).unwrap_or(0))
        .collect();
    if !json {
        writeln!(
            out,
            "{:>6}  {:<20}  {:<4}  {:<12}  {:<16}  {:<10}  {:<20}  counts",
            "id", "finished", "kind", "tenant", "user hash", "outcome", "requested by"
        )?;
    }
    for e in rows {
        if json {
            writeln!(
                out,
                "{}",
                json!({
                    "id": e.id,
                    "kind": e.kind,
                    "tenant": e.tenant,
                    "userHash": e.user_hash,
                    "requestedBy": e.requested_by,
                    "outcome": e.outcome,
                    "counts": e.counts,
                    "startedAt": rfc3339(e.started_at),
                    "finishedAt": rfc3339(e.finished_at),
                })
            )?;
        } else {
            writeln!(
                out,
                "{:>6}  {:<20}  {:<4}  {:<12}  {:<16}  {:<10}  {:<20}  {}",
                e.id,
                super::format::short_time(e.finished_at),
                e.kind,
                super::format::printable(&e.tenant),
                &e.user_hash[..e.user_hash.len().min(16)],
                e.outcome,
                super::format::printable(&e.requested_by),
                summary(&e.counts)
            )?;
        }
    }
    Ok(())
}
