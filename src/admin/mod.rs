//! The operator's commands over what the relay stored: `ccrelay sessions`, `transcript`,
//! `export`, `replay`, `deadletter`, `summaries`, `report`, `forget` and `erasures`. They read the database directly (SQLite or PostgreSQL alike) and never
//! need the relay to run.
//!
//! Export and replay read the transcript page by page ([`MessagePage`]), so memory stays constant
//! over millions of rows; on a terminal they show their progress on stderr.

mod dead;
mod forget;
mod format;
mod summaries;

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use time::OffsetDateTime;

use store::{DynStore, MessagePage, MessageRow, SessionState};

pub use dead::deadletter;
pub use forget::{erasures, forget};
pub use format::{ExportFormat, cluster_status, parse_time};
pub use summaries::{Report, SummaryFilter, report, summaries};

/// Rows read per page by export and replay.
const PAGE: i64 = 1_000;

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

/// What to export or replay.
#[derive(Debug, Clone)]
pub struct Range {
    pub since: OffsetDateTime,
    pub until: OffsetDateTime,
    pub tenant: Option<String>,
}

/// `ccrelay export`: every transcript row of the range, oldest first, as JSON lines or CSV.
/// Returns the number of rows written.
///
/// # Errors
/// The database cannot be read or `out` cannot be written.
pub async fn export(
    store: &DynStore,
    range: &Range,
    fmt: ExportFormat,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    if fmt == ExportFormat::Csv {
        writeln!(out, "{}", format::CSV_HEADER)?;
    }
    let mut progress = Progress::new("exported");
    let n = each_row(store, range, |r| {
        match fmt {
            ExportFormat::Jsonl => writeln!(out, "{}", format::json_line(r))?,
            ExportFormat::Csv => writeln!(out, "{}", format::csv_line(r))?,
        }
        progress.tick();
        Ok(())
    })
    .await?;
    out.flush()?;
    progress.done();
    Ok(n)
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
    let mut progress = Progress::new("replayed");
    let mut total = 0u64;
    let mut page = MessagePage::first(range.since, range.until, range.tenant.clone(), PAGE);
    loop {
        let rows = store.messages_page(&page).await?;
        let Some(last) = rows.last() else { break };
        page.next(last);
        for r in &rows {
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
            progress.tick();
            total += 1;
        }
        // One page in flight at most.
        nats.flush().await.context("flushing to NATS")?;
    }
    progress.done();
    Ok(total)
}

/// Calls `f` on every row of the range, page by page; returns how many.
async fn each_row(
    store: &DynStore,
    range: &Range,
    mut f: impl FnMut(&MessageRow) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut page = MessagePage::first(range.since, range.until, range.tenant.clone(), PAGE);
    let mut n = 0u64;
    loop {
        let rows = store.messages_page(&page).await?;
        let Some(last) = rows.last() else {
            return Ok(n);
        };
        page.next(last);
        for r in &rows {
            f(r)?;
            n += 1;
        }
    }
}

/// A row count on stderr, redrawn at most twice a second, when stderr is a terminal.
struct Progress {
    what: &'static str,
    n: u64,
    shown: Instant,
    on: bool,
}

impl Progress {
    fn new(what: &'static str) -> Self {
        Progress {
            what,
            n: 0,
            shown: Instant::now(),
            on: std::io::stderr().is_terminal(),
        }
    }
    fn tick(&mut self) {
        self.n += 1;
        if self.on && self.shown.elapsed() >= Duration::from_millis(500) {
            self.shown = Instant::now();
            eprint!("\r{} {} rows…", self.what, self.n);
        }
    }
    fn done(&self) {
        if self.on {
            eprintln!("\r{} {} rows.   ", self.what, self.n);
        }
    }
}
