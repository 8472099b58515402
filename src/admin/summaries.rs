//! `ccrelay summaries list` and `ccrelay report`: the session summaries the relay stored
//! (`session_summaries`, docs/ANALYTICS.md), read page by page.
//!
//! `list` prints them as a table (or one JSON object per line, each a `SessionSummary`, as
//! `summaries.list` answers). `report` condenses a period, per tenant (or app): how many
//! sessions and messages of each side, the queue waits and first-response times as percentiles
//! (nearest rank: the p-th percentile of n values is the ⌈p·n/100⌉-th smallest), and the
//! satisfaction evaluations (count, mean, distribution). The report keeps, per tenant, the
//! durations it ranks (8 bytes each) and nothing else of the summaries.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;
use time::OffsetDateTime;

use super::format::{printable, short_time};
use store::{DynStore, SessionSummary, SummaryPage};

/// Summaries read per page.
const PAGE: i64 = 1_000;

/// Which summaries: those closed in `[since, until)` (either end open), of a tenant, kind and
/// user, or all.
#[derive(Debug, Clone, Default)]
pub struct SummaryFilter {
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub tenant: Option<String>,
    pub kind: Option<String>,
    pub user: Option<String>,
}

impl SummaryFilter {
    fn first_page(&self) -> SummaryPage {
        let mut page = SummaryPage::first(PAGE);
        page.since = self.since;
        page.until = self.until;
        page.tenant = self.tenant.clone();
        page.kind = self.kind.clone();
        page.user_id = self.user.clone();
        page
    }
}

/// Calls `f` on every summary `filter` selects, oldest `closed_at` first, until it returns
/// `false`; how many it was given.
async fn each_summary(
    store: &DynStore,
    filter: &SummaryFilter,
    mut f: impl FnMut(&SessionSummary) -> anyhow::Result<bool>,
) -> anyhow::Result<u64> {
    let mut page = filter.first_page();
    let mut n = 0;
    loop {
        let rows = store.summaries_page(&page).await?;
        let Some(last) = rows.last() else {
            return Ok(n);
        };
        page.next(last);
        for s in &rows {
            n += 1;
            if !f(s)? {
                return Ok(n);
            }
        }
    }
}

/// `ccrelay summaries list`: at most `limit` summaries, oldest `closed_at` first; `json`: one
/// `SessionSummary` object per line.
///
/// # Errors
/// The database cannot be read or `out` written.
pub async fn summaries(
    store: &DynStore,
    filter: &SummaryFilter,
    limit: u64,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if !json {
        writeln!(
            out,
            "{:<36}  {:<4}  {:<12}  {:<24}  {:<19}  {:>9}  {:<8}  {:>9}  {:>9}  {:>9}  {:>11}  sat",
            "session",
            "kind",
            "tenant",
            "user",
            "closed",
            "duration",
            "reason",
            "queued",
            "1st agent",
            "response",
            "msgs c/r/a"
        )?;
    }
    if limit == 0 {
        return Ok(());
    }
    let mut written = 0;
    each_summary(store, filter, |s| {
        if json {
            writeln!(out, "{}", serde_json::to_string(s)?)?;
        } else {
            writeln!(out, "{}", table_line(s))?;
        }
        written += 1;
        Ok(written < limit)
    })
    .await?;
    out.flush()?;
    Ok(())
}

fn table_line(s: &SessionSummary) -> String {
    let ms = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), duration);
    format!(
        "{:<36}  {:<4}  {:<12}  {:<24}  {:<19}  {:>9}  {:<8}  {:>9}  {:>9}  {:>9}  {:>11}  {}",
        printable(&s.session_id),
        s.kind,
        printable(&s.tenant),
        printable(&s.user_id),
        short_time(s.closed_at),
        duration(s.duration_ms),
        printable(s.close_reason.as_deref().unwrap_or("-")),
        ms(s.queue_wait_ms),
        ms(s.first_agent_answer_ms),
        ms(s.agent_response_median_ms),
        format!(
            "{}/{}/{}",
            s.customer_messages, s.robot_messages, s.agent_messages
        ),
        s.satisfaction_evaluation
            .map_or_else(|| "-".to_owned(), |e| e.to_string()),
    )
}

/// A duration in milliseconds as people read it: `850 ms`, `12.3 s`, `4 min 05 s`, `2 h 10 min`.
pub(crate) fn duration(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    match ms {
        0..1_000 => format!("{sign}{ms} ms"),
        1_000..60_000 => format!("{sign}{}.{} s", ms / 1_000, ms % 1_000 / 100),
        60_000..3_600_000 => format!("{sign}{} min {:02} s", ms / 60_000, ms % 60_000 / 1_000),
        _ => format!(
            "{sign}{} h {:02} min",
            ms / 3_600_000,
            ms % 3_600_000 / 60_000
        ),
    }
}

/// `ccrelay report`: the period's figures per tenant, from the summaries closed in it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    #[serde(with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
    /// By (tenant, kind), in that order.
    pub tenants: Vec<TenantReport>,
}

/// One tenant's (or app's) figures over the period.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TenantReport {
    pub tenant: String,
    pub kind: String,
    pub sessions: u64,
    /// Sessions by close reason (`customer`, `agent`, `idle`, `error`; Tencent sessions have
    /// none).
    pub close_reasons: BTreeMap<String, u64>,
    pub messages: Messages,
    /// Sessions that waited in an agent queue.
    pub queued: u64,
    pub queue_wait_ms: Percentiles,
    pub first_robot_answer_ms: Percentiles,
    pub first_agent_answer_ms: Percentiles,
    /// Over the sessions' own medians of the agents' responses.
    pub agent_response_median_ms: Percentiles,
    pub satisfaction: Satisfaction,
}

/// Messages of each side, summed over the sessions.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Messages {
    pub customer: i64,
    pub robot: i64,
    pub agent: i64,
    pub system: i64,
}

/// Percentiles of the sessions that have the figure (`count` of them); `None` with none.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Percentiles {
    pub count: u64,
    pub p50: Option<i64>,
    pub p90: Option<i64>,
    pub p99: Option<i64>,
}

impl Percentiles {
    /// Of `values` (sorted in place), by nearest rank.
    fn of(values: &mut [i64]) -> Self {
        values.sort_unstable();
        let n = values.len();
        let at = |p: usize| {
            // ⌈p·n/100⌉-th smallest, 1-based.
            let rank = (p * n).div_ceil(100).max(1);
            values.get(rank - 1).copied()
        };
        Percentiles {
            count: n as u64,
            p50: at(50),
            p90: at(90),
            p99: at(99),
        }
    }
}

/// The customers' evaluations (1 to 5) of the period's sessions.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Satisfaction {
    /// Sessions with an evaluation.
    pub count: u64,
    pub mean: Option<f64>,
    /// How many of each, "1" to "5".
    pub distribution: BTreeMap<String, u64>,
}

/// What the report keeps of one tenant while reading.
#[derive(Default)]
struct Tally {
    sessions: u64,
    close_reasons: BTreeMap<String, u64>,
    messages: Messages,
    queued: u64,
    queue_wait: Vec<i64>,
    first_robot: Vec<i64>,
    first_agent: Vec<i64>,
    response: Vec<i64>,
    ratings: [u64; 5],
}

impl Tally {
    fn add(&mut self, s: &SessionSummary) {
        self.sessions += 1;
        if let Some(r) = &s.close_reason {
            *self.close_reasons.entry(r.clone()).or_default() += 1;
        }
        self.messages.customer += s.customer_messages;
        self.messages.robot += s.robot_messages;
        self.messages.agent += s.agent_messages;
        self.messages.system += s.system_messages.unwrap_or(0);
        self.queued += u64::from(s.queued == Some(true));
        self.queue_wait.extend(s.queue_wait_ms);
        self.first_robot.extend(s.first_robot_answer_ms);
        self.first_agent.extend(s.first_agent_answer_ms);
        self.response.extend(s.agent_response_median_ms);
        if let Some(e) = s.satisfaction_evaluation
            && let Some(slot) = usize::try_from(e - 1)
                .ok()
                .and_then(|i| self.ratings.get_mut(i))
        {
            *slot += 1;
        }
    }

    fn report(mut self, tenant: String, kind: String) -> TenantReport {
        let count: u64 = self.ratings.iter().sum();
        let total: u64 = self
            .ratings
            .iter()
            .zip(1u64..)
            .map(|(n, score)| n * score)
            .sum();
        TenantReport {
            tenant,
            kind,
            sessions: self.sessions,
            close_reasons: self.close_reasons,
            messages: self.messages,
            queued: self.queued,
            queue_wait_ms: Percentiles::of(&mut self.queue_wait),
            first_robot_answer_ms: Percentiles::of(&mut self.first_robot),
            first_agent_answer_ms: Percentiles::of(&mut self.first_agent),
            agent_response_median_ms: Percentiles::of(&mut self.response),
            satisfaction: Satisfaction {
                count,
                mean: (count > 0).then(|| total as f64 / count as f64),
                distribution: (1..=5)
                    .zip(self.ratings)
                    .map(|(score, n)| (score.to_string(), n))
                    .collect(),
            },
        }
    }
}

/// The report of the summaries `filter` selects (its `since` and `until` are the period).
///
/// # Errors
/// The database cannot be read.
pub async fn report(store: &DynStore, filter: &SummaryFilter) -> anyhow::Result<Report> {
    let mut tallies: BTreeMap<(String, String), Tally> = BTreeMap::new();
    each_summary(store, filter, |s| {
        tallies
            .entry((s.tenant.clone(), s.kind.clone()))
            .or_default()
            .add(s);
        Ok(true)
    })
    .await?;
    Ok(Report {
        since: filter.since,
        until: filter.until,
        tenants: tallies
            .into_iter()
            .map(|((tenant, kind), t)| t.report(tenant, kind))
            .collect(),
    })
}

impl Report {
    /// The report as text for a terminal.
    pub fn text(&self) -> String {
        let when =
            |t: Option<OffsetDateTime>, open: &str| t.map_or_else(|| open.to_owned(), short_time);
        let mut out = format!(
            "Sessions closed from {} to {} (UTC)\n",
            when(self.since, "the first"),
            when(self.until, "now")
        );
        if self.tenants.is_empty() {
            out.push_str("\nNo session summary in this period.\n");
        }
        for t in &self.tenants {
            out.push_str(&t.text());
        }
        out
    }
}

impl TenantReport {
    fn text(&self) -> String {
        let mut out = format!("\n{} ({})\n", printable(&self.tenant), self.kind);
        let reasons = self
            .close_reasons
            .iter()
            .map(|(r, n)| format!("{} {n}", printable(r)))
            .collect::<Vec<_>>()
            .join(", ");
        let m = &self.messages;
        let lines = [
            (
                "sessions",
                if reasons.is_empty() {
                    self.sessions.to_string()
                } else {
                    format!("{} (closed by {reasons})", self.sessions)
                },
            ),
            (
                "messages",
                format!(
                    "customer {}, robot {}, agent {}, system {}",
                    m.customer, m.robot, m.agent, m.system
                ),
            ),
            ("queued", format!("{} sessions", self.queued)),
            ("queue wait", self.queue_wait_ms.text()),
            ("first robot answer", self.first_robot_answer_ms.text()),
            ("first agent answer", self.first_agent_answer_ms.text()),
            ("agent response", self.agent_response_median_ms.text()),
            ("satisfaction", self.satisfaction.text()),
        ];
        for (name, value) in lines {
            out.push_str(&format!("  {name:<20}{value}\n"));
        }
        out
    }
}

impl Percentiles {
    fn text(&self) -> String {
        match (self.p50, self.p90, self.p99) {
            (Some(a), Some(b), Some(c)) => format!(
                "p50 {}, p90 {}, p99 {} ({} sessions)",
                duration(a),
                duration(b),
                duration(c),
                self.count
            ),
            _ => "-".to_owned(),
        }
    }
}

impl Satisfaction {
    fn text(&self) -> String {
        let Some(mean) = self.mean else {
            return "no evaluation".to_owned();
        };
        let spread = self
            .distribution
            .iter()
            .map(|(score, n)| format!("{score}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!("{} evaluated, mean {mean:.2} ({spread})", self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<i64> = (1..=100).rev().collect();
        let p = Percentiles::of(&mut v);
        assert_eq!((p.p50, p.p90, p.p99), (Some(50), Some(90), Some(99)));
        let p = Percentiles::of(&mut [7]);
        assert_eq!((p.count, p.p50, p.p99), (1, Some(7), Some(7)));
        let p = Percentiles::of(&mut [3, 1, 2]);
        assert_eq!((p.p50, p.p90), (Some(2), Some(3)));
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(12_345), "12.3 s");
        assert_eq!(duration(245_000), "4 min 05 s");
        assert_eq!(duration(7_800_000), "2 h 10 min");
        assert_eq!(duration(-1_500), "-1.5 s");
    }
}
