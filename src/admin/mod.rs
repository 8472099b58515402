//! The operator's commands over what the relay stored: `ccrelay sessions`, `transcript`,
//! `replay`, `deadletter`, `summaries`, `report`, `forget` and `erasures`. They read the database
//! directly (SQLite or PostgreSQL alike) and never need the relay to run (`forget` needs NATS).
//! `ccrelay export` is the `archive` crate's.
//!
//! Replay reads the transcript page by page ([`ExportPage`]), as the export does, so memory stays
//! constant over millions of rows; on a terminal it shows its progress on stderr.

mod dead;
mod forget;
mod format;
mod summaries;

use std::io::Write;

use anyhow::Context as _;
use time::OffsetDateTime;

use store::{DynStore, ExportPage, SessionState};

pub use dead::deadletter;
pub use forget::{erasures, forget};
pub use format::{cluster_status, parse_time};
pub use summaries::{Report, SummaryFilter, report, summaries};

/// Rows read per page by replay.
const PAGE: i64 = 1_000;

/// How many rows a file of `ccrelay export --dir` holds at most (but for rows of the same
/// microsecond), unless `--part-rows` says otherwise: a day of a busy relay's messages, some
/// hundreds of MB as JSON lines, some tens as Parquet.
pub const PART_ROWS: u64 = 1_000_000;

/// `ccrelay sessions`: a table of sessions, newest first.
///
/// # Errors
/// The database cannot be read, or `state` is not a state.
pub async fn sessions(
    store: &DynStore,
    tenant: Option<&str>,
    state: Option<&str>,
    limit: i64,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let state = state
        .map(|s| {
            SessionState::parse(s)
                .map_err(|_| anyhow::anyhow!("--state {s:?}: one of active, queued, closed"))
        })
        .transpose()?;
    let rows = store.list_sessions(tenant, state, limit).await?;
    writeln!(
        out,
        "{:<36}  {:<4}  {:<12}  {:<24}  {:<7}  {:<20}  {:<20}  reason",
        "session", "kind", "tenant", "user", "state", "opened", "last activity"
    )?;
    for s in rows {
        writeln!(
            out,
            "{:<36}  {:<4}  {:<12}  {:<24}  {:<7}  {:<20}  {:<20}  {}",
            s.id,
            s.kind,
            format::printable(&s.tenant),
            format::printable(&s.user_id),
            s.state.as_str(),
            format::short_time(s.opened_at),
            format::short_time(s.last_activity_at),
            format::printable(s.close_reason.as_deref().unwrap_or(""))
        )?;
    }
    Ok(())
}

/// `ccrelay transcript TENANT USER`: both directions, oldest first; `--json`: one JSON object per
/// line with every stored field.
///
/// # Errors
/// The database cannot be read.
pub async fn transcript(
    store: &DynStore,
    kind: &str,
    tenant: &str,
    user: &str,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let rows = store.transcript(kind, tenant, user).await?;
    if rows.is_empty() {
        eprintln!("no messages stored for {kind} tenant {tenant:?}, user {user:?}");
    }
    for r in &rows {
        if json {
            writeln!(out, "{}", format::json_line(r))?;
        } else {
            writeln!(out, "{}", format::text_line(r))?;
        }
    }
    Ok(())
}

/// What to replay.
#[derive(Debug, Clone)]
pub struct Range {
    pub since: OffsetDateTime,
    pub until: OffsetDateTime,
    pub tenant: Option<String>,
}

/// `ccrelay replay`: publishes every transcript row of the range, as stored, on
/// `<prefix>.<kind>.<tenant>.<up|down>.<user>` with `Nats-Msg-Id` = the row's relay id, for an
/// analytics backfill. Core NATS: a stream of the operator's on `<prefix>.>` keeps them.
/// Refuses the relay's own prefix, so nothing is ever sent upstream again.
///
/// # Errors
/// The database cannot be read or NATS refuses a publish.
pub async fn replay(
    store: &DynStore,
    nats: &async_nats::Client,
    range: &Range,
    prefix: &str,
    live_prefix: &str,
) -> anyhow::Result<u64> {
    if prefix == live_prefix {
        anyhow::bail!(
            "--prefix {prefix:?} is the relay's own prefix: replay onto another one (e.g. {live_prefix}-replay)"
        );
    }
    contract::subjects::check_token(prefix.replace('.', "_").as_str())
        .map_err(|e| anyhow::anyhow!("--prefix {prefix:?}: {e}"))?;
    let mut progress = archive::Progress::new("replay", range.until);
    let mut total = 0u64;
    let mut page = ExportPage::first(range.since, range.until, range.tenant.clone(), PAGE);
    loop {
        let rows = store.export_messages(&page).await?;
        let Some(last) = rows.last() else { break };
        page.next(last.key);
        for r in rows.iter().map(|k| &k.row) {
            let subject = format!(
                "{prefix}.{}.{}.{}.{}",
                r.kind,
                r.tenant,
                r.direction.as_str(),
                r.user_id
            );
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", r.relay_id.as_str());
            nats.publish_with_headers(subject, headers, r.body.clone().into())
                .await
                .context("publishing")?;
            total += 1;
        }
        // One page in flight at most.
        nats.flush().await.context("flushing to NATS")?;
        progress.advance(rows.len() as u64, last.key.at);
    }
    progress.finish("replayed");
    Ok(total)
}
