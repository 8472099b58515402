//! The retention task ([`run`]): with `store.retention` set, every `store.retention_interval`
//! (the first time at most a minute after start) a *pass* deletes what is older than the
//! retention, table by table ([`store::privacy::Table::RETENTION`]), in steps of at most
//! `store.retention_batch` rows, each one transaction of its own ([`store::Store::purge`]).
//!
//! **Never in the way.** After each step the task pauses [`PAUSE_FACTOR`] times as long as the
//! step took (and at least [`MIN_PAUSE`]), so it holds the database — on SQLite its one write
//! lock — for at most a fifth of the time, in slices of a few hundred rows; the relay's own
//! commits go between them.
//! A pass that finds the database away stops and the next one goes on.
//!
//! **One member.** In a cluster only the owner of partition 0 (the outbox publisher) runs the
//! steps; it checks before each one, so a pass stops when the partition moves, and the next
//! owner's passes go on. (Steps by two members at once would only share the work: deleting is
//! idempotent.)
//!
//! **Sessions.** A closed session goes once nothing references it any more; one that a younger
//! row still references is looked at again at the next pass.
//!
//! **Said and counted.** Each pass that deleted anything logs one line (`Retention pass`) with
//! the cut-off and the rows per table, and counts them in `ccrelay_retention_deleted_total{table}`;
//! then, on SQLite, the write-ahead log is truncated ([`store::Store::scrub`]) so that no deleted
//! text stays in it. On PostgreSQL autovacuum reclaims the dead rows (docs/PRIVACY.md).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::ownership::Ownership;
use store::DynStore;
use store::privacy::{Purge, Table};

/// A pause between two steps is this many times as long as the step before it.
pub const PAUSE_FACTOR: u32 = 4;
/// The shortest pause between two steps.
pub const MIN_PAUSE: Duration = Duration::from_millis(20);
/// The longest wait before the first pass.
const FIRST_PASS_AFTER: Duration = Duration::from_secs(60);

/// How the task runs (from `[store]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `store.retention`: what is older goes.
    pub keep: Duration,
    /// `store.retention_interval`.
    pub interval: Duration,
    /// `store.retention_batch`: rows per step.
    pub batch: i64,
}

impl Settings {
    /// The settings of `[store]`; `None` when retention is off.
    pub fn of(cfg: &config::StoreConfig) -> Option<Settings> {
        Some(Settings {
            keep: cfg.retention?,
            interval: cfg.retention_interval,
            batch: i64::try_from(cfg.retention_batch).unwrap_or(i64::MAX),
        })
    }
}

/// Why a pass ended before its end.
#[derive(Debug)]
enum Stopped {
    /// The relay is shutting down.
    Cancelled,
    /// This member does not own partition 0 (any more).
    NotOwner,
    /// A step failed (the database away, …).
    Failed(Table, store::StoreError),
}

/// Runs passes until `cancel` fires (see the module docs).
pub async fn run(
    store: DynStore,
    ownership: Ownership,
    settings: Settings,
    cancel: CancellationToken,
) {
    tracing::info!(retention = %humantime::format_duration(settings.keep),
        every = %humantime::format_duration(settings.interval), batch = settings.batch,
        "Retention on: older rows are deleted in the background");
    let mut wait = settings.interval.min(FIRST_PASS_AFTER);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = settings.interval;
        if ownership.begin(0).is_none() {
            continue;
        }
        let cutoff = OffsetDateTime::now_utc() - settings.keep;
        let started = Instant::now();
        let mut counts = BTreeMap::new();
        let ended = pass(&store, &ownership, &settings, &cancel, cutoff, &mut counts).await;
        let total: u64 = counts.values().sum();
        let deleted = summary(&counts);
        let before = cutoff
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        match ended {
            Ok(()) => {
                crate::instrument::retention_pass("done");
                if total > 0 {
                    tracing::info!(%before, ?deleted, total, took = ?started.elapsed(),
                        "Retention pass");
                    if let Err(e) = store.scrub(&[]).await {
                        tracing::warn!(error = %e, "Retention: cannot truncate the database's log; its next checkpoint will");
                    }
                } else {
                    tracing::debug!(%before, "Retention pass: nothing older");
                }
            }
            Err(Stopped::Cancelled) => return,
            Err(Stopped::NotOwner) => {
                crate::instrument::retention_pass("handed_over");
                tracing::info!(
                    ?deleted,
                    total,
                    "Retention pass stopped: partition 0 is another member's now"
                );
            }
            Err(Stopped::Failed(table, e)) => {
                crate::instrument::retention_pass("failed");
                tracing::warn!(table = %table, error = %e, ?deleted, total,
                    "Retention pass stopped; the next one goes on");
            }
        }
    }
}

/// One pass: every table at `cutoff`; adds what it deleted to `counts` as it goes.
async fn pass(
    store: &DynStore,
    ownership: &Ownership,
    settings: &Settings,
    cancel: &CancellationToken,
    cutoff: OffsetDateTime,
    counts: &mut BTreeMap<Table, u64>,
) -> Result<(), Stopped> {
    for table in Table::RETENTION {
        let mut step = Some(Purge::Older {
            table: *table,
            before: cutoff,
            limit: settings.batch,
            after: None,
        });
        while let Some(s) = step {
            if cancel.is_cancelled() {
                return Err(Stopped::Cancelled);
            }
            let began = Instant::now();
            let done = {
                // Held for the step only: a hand-back of partition 0 waits for one step at most.
                let Some(_owner) = ownership.begin(0) else {
                    return Err(Stopped::NotOwner);
                };
                store
                    .purge(&s)
                    .await
                    .map_err(|e| Stopped::Failed(*table, e))?
            };
            if done.rows > 0 {
                *counts.entry(*table).or_default() += done.rows;
                crate::instrument::retention_deleted(table.as_str(), done.rows);
            }
            step = s.next(&done);
            if step.is_some() {
                let pause = (began.elapsed() * PAUSE_FACTOR).max(MIN_PAUSE);
                tokio::select! {
                    _ = cancel.cancelled() => return Err(Stopped::Cancelled),
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    Ok(())
}

/// `counts` in one line: `messages=12 events=3 …`.
fn summary(counts: &BTreeMap<Table, u64>) -> String {
    let named: BTreeMap<String, u64> = counts
        .iter()
        .map(|(t, n)| (t.as_str().to_owned(), *n))
        .collect();
    super::forget::summary(&named)
}
