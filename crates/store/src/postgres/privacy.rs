//! Retention and erasure on PostgreSQL ([`crate::privacy`]): each step in a transaction of its
//! own on a pooled connection, beside the group-commit writers (not fenced: what it deletes is
//! every member's, and deleting twice is deleting once); the erasures' audit; and the vacuum
//! after an erasure.
//!
//! A deleted row is only marked dead: its bytes stay in the table's pages until `VACUUM` makes
//! the space reusable and a later write reuses it, and in the write-ahead log, replicas and
//! backups for as long as those are kept. [`scrub`] vacuums the tables an erasure touched (plain
//! `VACUUM`, which blocks no reader or writer), so the dead rows are gone from every index and
//! their space is next to be overwritten; docs/PRIVACY.md says what remains.

use sqlx::{PgPool, Postgres, Row};

use super::Ts;
use crate::privacy::sql::{self, Binds, More};
use crate::privacy::{Erasure, Purge, Purged, Scrubbed, Table, counts_json, counts_of};
use crate::{Result, classify};

/// One step ([`crate::Backend::purge`]).
pub(super) async fn purge(pool: &PgPool, step: &Purge) -> Result<Purged> {
    let mut tx = pool.begin().await.map_err(classify)?;
    let done = match step {
        Purge::Older {
            table: Table::Sessions,
            before,
            limit,
            after,
        } => {
            let (after_at, after_id) = after
                .as_ref()
                .map_or((i64::MIN, String::new()), |(at, id)| {
                    (crate::unix_micros(*at), id.clone())
                });
            // The earliest timestamptz is well after i64::MIN µs: start from it.
            let floor = |us: i64| Ts(us.max(PG_MIN_MICROS));
            let candidates = sqlx::query(sqlx::AssertSqlSafe(sql::pg(sql::OLD_SESSIONS)))
                .bind(Ts::of(*before))
                .bind(floor(after_at))
                .bind(&after_id)
                .bind(*limit)
                .fetch_all(&mut *tx)
                .await
                .map_err(classify)?;
            let delete = sql::pg(&sql::delete_old_session());
            let clear = sql::pg(sql::CLEAR_OLD_TOKEN);
            let mut rows = 0;
            let mut last = None;
            for c in &candidates {
                let id: String = c.try_get("id").map_err(classify)?;
                let opened: Ts = c.try_get("opened_at").map_err(classify)?;
                let n = sqlx::query(sqlx::AssertSqlSafe(delete.clone()))
                    .bind(&id)
                    .bind(Ts::of(*before))
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?
                    .rows_affected();
                if n == 0 {
                    sqlx::query(sqlx::AssertSqlSafe(clear.clone()))
                        .bind(&id)
                        .bind(Ts::of(*before))
                        .execute(&mut *tx)
                        .await
                        .map_err(classify)?;
                }
                rows += n;
                last = Some((opened.get()?, id));
            }
            Purged {
                rows,
                more: candidates.len() as i64 == *limit,
                after: last,
            }
        }
        _ => match sql::statement(step, "= ANY({}::text[])") {
            None => Purged::default(),
            Some((statement, binds, more)) => {
                let n = run(&mut tx, &sql::pg(&statement), binds, step).await?;
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
    tx.commit().await.map_err(classify)?;
    Ok(done)
}

/// `-4713-11-24T00:00:00Z`, PostgreSQL's earliest timestamptz, in µs since the Unix epoch.
const PG_MIN_MICROS: i64 = -210_866_803_200_000_000;

/// Runs `statement` with the parameters `binds` names, taken from `step`; rows changed.
async fn run(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    statement: &str,
    binds: Binds,
    step: &Purge,
) -> Result<u64> {
    let q = sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()));
    let q = match step {
        Purge::Older { before, limit, .. } => q.bind(Ts::of(*before)).bind(*limit),
        Purge::Customer {
            customer: c, limit, ..
        } => match binds {
            Binds::Older => q,
            Binds::Customer => q
                .bind(c.kind.clone())
                .bind(c.tenant.clone())
                .bind(c.user_id.clone())
                .bind(*limit),
            Binds::App => q
                .bind(c.tenant.clone())
                .bind(c.user_id.clone())
                .bind(*limit),
            Binds::Subjects => q.bind(*limit).bind(c.subjects.clone()),
            Binds::CustomerOrSubjects => q
                .bind(c.kind.clone())
                .bind(c.tenant.clone())
                .bind(c.user_id.clone())
                .bind(*limit)
                .bind(c.subjects.clone()),
        },
    };
    Ok(q.execute(&mut **tx)
        .await
        .map_err(classify)?
        .rows_affected())
}

/// [`crate::Backend::scrub`]: `VACUUM` of `tables` (those the database has).
pub(super) async fn scrub(pool: &PgPool, tables: &[Table]) -> Result<Scrubbed> {
    let mut names = Vec::new();
    for t in tables {
        let present: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(t.as_str())
            .fetch_one(pool)
            .await
            .map_err(classify)?;
        if present {
            names.push(t.as_str());
        }
    }
    if !names.is_empty() {
        // Not in a transaction (VACUUM refuses one): the simple query protocol, one statement.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("VACUUM {}", names.join(", "))))
            .execute(pool)
            .await
            .map_err(classify)?;
    }
    Ok(Scrubbed::Vacuumed)
}

/// [`crate::Backend::record_erasure`]: its id.
pub(super) async fn record_erasure(pool: &PgPool, e: &Erasure) -> Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO erasures (kind, tenant, user_hash, requested_by, outcome, counts, \
         started_at, finished_at) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8) RETURNING id",
    )
    .bind(&e.kind)
    .bind(&e.tenant)
    .bind(&e.user_hash)
    .bind(&e.requested_by)
    .bind(&e.outcome)
    .bind(counts_json(&e.counts))
    .bind(Ts::of(e.started_at))
    .bind(Ts::of(e.finished_at))
    .fetch_one(pool)
    .await
    .map_err(classify)
}

/// The erasures' audit, newest first ([`crate::Queries::erasures`]).
pub(super) async fn erasures(pool: &PgPool, limit: i64) -> Result<Vec<Erasure>> {
    sqlx::query(
        "SELECT id, kind, tenant, user_hash, requested_by, outcome, counts::text AS counts, \
         started_at, finished_at FROM erasures ORDER BY id DESC LIMIT $1",
    )
    .bind(limit.max(0))
    .fetch_all(pool)
    .await
    .map_err(classify)?
    .iter()
    .map(|row| {
        let ts = |c: &str| -> Result<_> { row.try_get::<Ts, _>(c).map_err(classify)?.get() };
        Ok(Erasure {
            id: row.try_get("id").map_err(classify)?,
            kind: row.try_get("kind").map_err(classify)?,
            tenant: row.try_get("tenant").map_err(classify)?,
            user_hash: row.try_get("user_hash").map_err(classify)?,
            requested_by: row.try_get("requested_by").map_err(classify)?,
            outcome: row.try_get("outcome").map_err(classify)?,
            counts: counts_of(&row.try_get::<String, _>("counts").map_err(classify)?)?,
            started_at: ts("started_at")?,
            finished_at: ts("finished_at")?,
        })
    })
    .collect()
}
