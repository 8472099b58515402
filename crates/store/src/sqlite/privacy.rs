//! Retention and erasure on SQLite ([`crate::privacy`]): each step in a transaction of its own on
//! the writer's connection, between two of group commit's batches; the erasures' audit; and the
//! scrub that leaves no deleted text in the database's files.
//!
//! Every delete of the writer overwrites what it deletes with zeros (`secure_delete`, set when the
//! writer opens: [`super::write`]), so the database file holds no deleted text once the
//! write-ahead log is copied into it. The log itself keeps the pages as they were before each
//! change until it is overwritten: [`scrub`] copies it into the database and truncates it
//! (`wal_checkpoint(TRUNCATE)`), which needs a moment with no reader in the log — it waits for
//! one a tenth of a second at a time, for a few seconds, and says [`Scrubbed::Busy`] if none
//! came.
//!
//! A step that deletes sessions turns `foreign_keys` off on the connection for its transaction
//! (a setting that changes only outside one), and back on after it, whatever happened: its
//! statements delete only sessions they find unreferenced (see [`crate::privacy`]).

use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior, params, params_from_iter};

use super::write::{Writer, sqlite_error};
use crate::privacy::sql::{self, Binds, More};
use crate::privacy::{Erasure, Purge, Purged, Scrubbed, Table, counts_json};
use crate::{Result, from_unix_micros, unix_micros};

/// Tries of a truncating checkpoint, each waiting up to [`SCRUB_WAIT`] for readers to leave the
/// log (not the writer's busy timeout: the relay's batches wait meanwhile), with [`SCRUB_PAUSE`]
/// between them (the connection is free for batches then).
const SCRUB_TRIES: u32 = 20;
const SCRUB_WAIT: Duration = Duration::from_millis(100);
const SCRUB_PAUSE: Duration = Duration::from_millis(200);

/// One step ([`crate::Backend::purge`]), on the writer's connection.
pub(super) fn purge(writer: &Writer, step: &Purge) -> Result<Purged> {
    writer.with_conn(|conn| {
        let sessions = step.table() == Table::Sessions;
        if sessions {
            conn.pragma_update(None, "foreign_keys", "OFF")
                .map_err(sqlite_error)?;
        }
        let done = in_transaction(conn, step);
        if sessions {
            let on = conn
                .pragma_update(None, "foreign_keys", "ON")
                .map_err(sqlite_error);
            if done.is_ok() {
                on?;
            }
        }
        done
    })
}

fn in_transaction(conn: &mut Connection, step: &Purge) -> Result<Purged> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_error)?;
    let done = match step {
        Purge::Older {
            table: Table::Sessions,
            before,
            limit,
            after,
        } => {
            let before = unix_micros(*before);
            let (after_at, after_id) = after
                .as_ref()
                .map_or((i64::MIN, String::new()), |(at, id)| {
                    (unix_micros(*at), id.clone())
                });
            let candidates: Vec<(String, i64)> = tx
                .prepare_cached(sql::OLD_SESSIONS)
                .and_then(|mut st| {
                    st.query_map(params![before, after_at, after_id, limit], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?
                    .collect()
                })
                .map_err(sqlite_error)?;
            let delete = sql::delete_old_session();
            let mut rows = 0;
            for (id, _) in &candidates {
                let n = tx
                    .prepare_cached(&delete)
                    .and_then(|mut st| st.execute(params![id, before]))
                    .map_err(sqlite_error)?;
                if n == 0 {
                    tx.prepare_cached(sql::CLEAR_OLD_TOKEN)
                        .and_then(|mut st| st.execute(params![id, before]))
                        .map_err(sqlite_error)?;
                }
                rows += n as u64;
            }
            let after = match candidates.last() {
                Some((id, at)) => Some((from_unix_micros(*at)?, id.clone())),
                None => None,
            };
            Purged {
                rows,
                more: candidates.len() as i64 == *limit,
                after,
            }
        }
        _ => match sql::statement(step, "IN (SELECT value FROM json_each({}))") {
            None => Purged::default(),
            Some((statement, binds, more)) => {
                let n = run(&tx, &statement, binds, step)?;
                let limit = match step {
                    Purge::Older { limit, .. } | Purge::Customer { limit, .. } => *limit,
                };
                Purged {
                    rows: n,
                    more: match more {
                        More::WhileFull => n as i64 >= limit,
                        More::WhileAny => n > 0,
                    },
                    after: None,
                }
            }
        },
    };
    tx.commit().map_err(sqlite_error)?;
    Ok(done)
}

/// Runs `statement` with the parameters `binds` names, taken from `step`; rows changed.
fn run(conn: &Connection, statement: &str, binds: Binds, step: &Purge) -> Result<u64> {
    use rusqlite::types::Value;
    let values: Vec<Value> = match step {
        Purge::Older { before, limit, .. } => {
            vec![Value::from(unix_micros(*before)), Value::from(*limit)]
        }
        Purge::Customer {
            customer: c, limit, ..
        } => {
            let subjects = serde_json::to_string(&c.subjects).unwrap_or_else(|_| "[]".into());
            let text = |s: &str| Value::from(s.to_owned());
            match binds {
                Binds::Older => Vec::new(),
                Binds::Customer => vec![
                    text(&c.kind),
                    text(&c.tenant),
                    text(&c.user_id),
                    Value::from(*limit),
                ],
                Binds::App => vec![text(&c.tenant), text(&c.user_id), Value::from(*limit)],
                Binds::Subjects => vec![Value::from(*limit), Value::from(subjects)],
                Binds::CustomerOrSubjects => vec![
                    text(&c.kind),
                    text(&c.tenant),
                    text(&c.user_id),
                    Value::from(*limit),
                    Value::from(subjects),
                ],
            }
        }
    };
    let n = conn
        .prepare_cached(statement)
        .and_then(|mut st| st.execute(params_from_iter(values)))
        .map_err(sqlite_error)?;
    Ok(n as u64)
}

/// [`crate::Backend::scrub`]: the write-ahead log copied into the database and truncated to
/// nothing, tried [`SCRUB_TRIES`] times.
pub(super) fn scrub(writer: &Writer) -> Result<Scrubbed> {
    for attempt in 1..=SCRUB_TRIES {
        // (busy, log frames, frames checkpointed): busy = 1 when readers kept the log in use.
        let busy: i64 = writer.with_conn(|conn| {
            conn.busy_timeout(SCRUB_WAIT).map_err(sqlite_error)?;
            let busy = conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                .map_err(sqlite_error);
            conn.busy_timeout(super::BUSY_TIMEOUT)
                .map_err(sqlite_error)?;
            busy
        })?;
        if busy == 0 {
            return Ok(Scrubbed::Checkpointed);
        }
        if attempt < SCRUB_TRIES {
            std::thread::sleep(SCRUB_PAUSE);
        }
    }
    Ok(Scrubbed::Busy)
}

/// [`crate::Backend::record_erasure`]: its id.
pub(super) fn record_erasure(writer: &Writer, e: &Erasure) -> Result<i64> {
    writer.with_conn(|conn| {
        conn.query_row(
            "INSERT INTO erasures (kind, tenant, user_hash, requested_by, outcome, counts, \
             started_at, finished_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
            params![
                e.kind,
                e.tenant,
                e.user_hash,
                e.requested_by,
                e.outcome,
                counts_json(&e.counts),
                unix_micros(e.started_at),
                unix_micros(e.finished_at),
            ],
            |r| r.get(0),
        )
        .map_err(sqlite_error)
    })
}
