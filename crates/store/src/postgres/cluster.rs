//! The cluster's leases in PostgreSQL (tables of `migrations/postgres/0007_cluster.sql`), and
//! the fencing check of a write transaction. Every time is the database's `now()`: the hosts'
//! clocks decide nothing. See [`crate::cluster`] for the rules.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use super::{get, opt_ts, ts};
use crate::cluster::{
    Acquired, ClusterStatus, Fencing, MemberInfo, MemberRow, PartitionRow, Tick, fair_share,
};
use crate::{Result, StoreError, Write, classify};

/// The cluster's leases, on the relay's PostgreSQL.
#[derive(Clone)]
pub struct Leases {
    pool: PgPool,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn partition(v: i32) -> Result<u32> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("partition {v} is negative")))
}

impl Leases {
    pub(crate) fn new(pool: PgPool) -> Self {
        Leases { pool }
    }

    /// Sets up the partitions, once per cluster: `partitions` rows, recorded in `cluster_meta`.
    ///
    /// # Errors
    /// [`StoreError::Cluster`] when the cluster was set up with another count (every member must
    /// be configured alike; see `docs/HA.md` for changing it).
    pub async fn init(&self, partitions: u32) -> Result<()> {
        let n = i32::try_from(partitions)
            .map_err(|_| StoreError::Cluster(format!("{partitions} partitions are too many")))?;
        let mut tx = self.pool.begin().await.map_err(classify)?;
        sqlx::query(
            "INSERT INTO cluster_meta (id, partitions) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
        )
        .bind(n)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        let have: i32 = sqlx::query_scalar("SELECT partitions FROM cluster_meta WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .map_err(classify)?;
        if have != n {
            return Err(StoreError::Cluster(format!(
                "cluster.partitions is {partitions} here but the cluster on this database was set up \
                 with {have}: every relay must be configured alike (to change it, stop every relay \
                 and run `ccrelay cluster reset`)"
            )));
        }
        sqlx::query(
            "INSERT INTO cluster_partitions (partition) SELECT generate_series(0, $1 - 1) \
             ON CONFLICT (partition) DO NOTHING",
        )
        .bind(n)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)
    }

    /// One membership step, in one transaction: records `me` as alive for `lease`, renews the
    /// leases `me` still holds, and — when `acquire` — takes free or expired partitions up to
    /// its fair share among the live members. Partitions beyond the share are not given up
    /// here: the caller hands them back ([`Self::release`]) once their work has drained.
    pub async fn tick(&self, me: &MemberInfo, lease: Duration, acquire: bool) -> Result<Tick> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        sqlx::query(
            "INSERT INTO cluster_members (member, host, pid, version, started_at, seen_at, \
               lease_until) \
             VALUES ($1, $2, $3, $4, $5, now(), now() + make_interval(secs => $6)) \
             ON CONFLICT (member) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid, \
               version = EXCLUDED.version, started_at = EXCLUDED.started_at, seen_at = now(), \
               lease_until = EXCLUDED.lease_until",
        )
        .bind(&me.id)
        .bind(&me.host)
        .bind(i32::try_from(me.pid).unwrap_or(i32::MAX))
        .bind(&me.version)
        .bind(super::Ts::of(me.started_at))
        .bind(secs(lease))
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        // Renewed in partition order, as the fencing check locks them, so the two never wait on
        // each other in opposite orders.
        let renewed = sqlx::query(
            "UPDATE cluster_partitions SET lease_until = now() + make_interval(secs => $2), \
               renewed_at = now() \
             WHERE partition IN (SELECT partition FROM cluster_partitions \
               WHERE owner = $1 AND lease_until > now() ORDER BY partition FOR UPDATE) \
             RETURNING partition, epoch",
        )
        .bind(&me.id)
        .bind(secs(lease))
        .fetch_all(&mut *tx)
        .await
        .map_err(classify)?;
        let mut owned = renewed
            .iter()
            .map(|r| Ok((partition(get(r, "partition")?)?, get::<i64>(r, "epoch")?)))
            .collect::<Result<Vec<_>>>()?;
        let members: Vec<String> = sqlx::query_scalar(
            "SELECT member FROM cluster_members WHERE lease_until > now() ORDER BY member",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(classify)?;
        let partitions: i32 =
            sqlx::query_scalar("SELECT partitions FROM cluster_meta WHERE id = 1")
                .fetch_one(&mut *tx)
                .await
                .map_err(classify)?;
        let index = members.iter().position(|m| *m == me.id).unwrap_or(0);
        let target = fair_share(partition(partitions)?, members.len(), index);
        let mut acquired = Vec::new();
        let want = target.saturating_sub(u32::try_from(owned.len()).unwrap_or(u32::MAX));
        if acquire && want > 0 {
            let rows = sqlx::query(
                "WITH free AS ( \
                   SELECT partition, owner AS previous FROM cluster_partitions \
                   WHERE owner IS NULL OR lease_until IS NULL OR lease_until <= now() \
                   ORDER BY partition LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 UPDATE cluster_partitions c SET owner = $1, epoch = c.epoch + 1, \
                   lease_until = now() + make_interval(secs => $2), acquired_at = now(), \
                   renewed_at = now() \
                 FROM free WHERE c.partition = free.partition \
                 RETURNING c.partition, c.epoch, free.previous",
            )
            .bind(&me.id)
            .bind(secs(lease))
            .bind(i64::from(want))
            .fetch_all(&mut *tx)
            .await
            .map_err(classify)?;
            for r in &rows {
                let a = Acquired {
                    partition: partition(get(r, "partition")?)?,
                    epoch: get(r, "epoch")?,
                    previous: get(r, "previous")?,
                };
                owned.push((a.partition, a.epoch));
                acquired.push(a);
            }
        }
        let mut owners = vec![None; usize::try_from(partitions.max(0)).unwrap_or(0)];
        for r in sqlx::query(
            "SELECT partition, owner FROM cluster_partitions \
             WHERE owner IS NOT NULL AND lease_until > now()",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(classify)?
        {
            let p = partition(get(&r, "partition")?)? as usize;
            if let Some(slot) = owners.get_mut(p) {
                *slot = get(&r, "owner")?;
            }
        }
        sqlx::query("DELETE FROM cluster_members WHERE lease_until < now() - interval '1 hour'")
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        // (Members that stopped ticking an hour ago are forgotten above: until then `ccrelay
        // cluster status` lists them as not live.)
        tx.commit().await.map_err(classify)?;
        owned.sort_unstable();
        Ok(Tick {
            owned,
            acquired,
            target,
            members,
            owners,
        })
    }

    /// Gives up `partitions` (those `me` owns): free for the next tick of any member.
    pub async fn release(&self, me: &str, partitions: &[u32]) -> Result<()> {
        let ps: Vec<i32> = partitions
            .iter()
            .filter_map(|&p| i32::try_from(p).ok())
            .collect();
        sqlx::query(
            "UPDATE cluster_partitions SET owner = NULL, lease_until = NULL \
             WHERE owner = $1 AND partition = ANY($2)",
        )
        .bind(me)
        .bind(&ps)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    /// Leaves the cluster: every partition of `me` given up, its member row removed.
    pub async fn leave(&self, me: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        sqlx::query(
            "UPDATE cluster_partitions SET owner = NULL, lease_until = NULL WHERE owner = $1",
        )
        .bind(me)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        sqlx::query("DELETE FROM cluster_members WHERE member = $1")
            .bind(me)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)
    }

    /// Forgets the cluster's set-up (its partition count, owners and members), so relays with
    /// another `cluster.partitions` can start. Only while no relay runs.
    pub async fn reset(&self) -> Result<()> {
        sqlx::raw_sql(
            "DELETE FROM cluster_partitions; DELETE FROM cluster_members; DELETE FROM cluster_meta",
        )
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    /// Members and partitions as the database sees them now.
    pub async fn status(&self) -> Result<ClusterStatus> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let now = sqlx::query("SELECT now() AS now")
            .fetch_one(&mut *tx)
            .await
            .map_err(classify)?;
        let now = ts(&now, "now")?;
        let partitions: Option<i32> =
            sqlx::query_scalar("SELECT partitions FROM cluster_meta WHERE id = 1")
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify)?;
        let members = sqlx::query(
            "SELECT member, host, pid, version, started_at, seen_at, lease_until, \
               lease_until > now() AS live FROM cluster_members ORDER BY member",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(classify)?
        .iter()
        .map(|r| {
            Ok(MemberRow {
                member: get(r, "member")?,
                host: get(r, "host")?,
                pid: get(r, "pid")?,
                version: get(r, "version")?,
                started_at: ts(r, "started_at")?,
                seen_at: ts(r, "seen_at")?,
                lease_until: ts(r, "lease_until")?,
                live: get(r, "live")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        let leases = sqlx::query(
            "SELECT partition, owner, epoch, lease_until, acquired_at, renewed_at, \
               coalesce(owner IS NOT NULL AND lease_until > now(), false) AS valid \
             FROM cluster_partitions ORDER BY partition",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(classify)?
        .iter()
        .map(|r| {
            Ok(PartitionRow {
                partition: partition(get(r, "partition")?)?,
                owner: get(r, "owner")?,
                epoch: get(r, "epoch")?,
                lease_until: opt_ts(r, "lease_until")?,
                acquired_at: opt_ts(r, "acquired_at")?,
                renewed_at: opt_ts(r, "renewed_at")?,
                valid: get(r, "valid")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        tx.commit().await.map_err(classify)?;
        Ok(ClusterStatus {
            now,
            partitions: partitions.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
            members,
            leases,
        })
    }
}

/// The channel of `NOTIFY`: a member committed outbox rows.
const OUTBOX_CHANNEL: &str = "ccrelay_outbox";

/// Whether a batch's writes added outbox rows or released held ones (a file finished, a dead
/// letter published again).
pub(super) fn outboxed(written: &[crate::Written]) -> bool {
    written.iter().any(|w| match w {
        crate::Written::Committed(c) => c.outboxed > 0,
        crate::Written::Changed(changed) => *changed,
        crate::Written::Retried(retried) => retried.is_some(),
        _ => false,
    })
}

/// `NOTIFY ccrelay_outbox`, delivered when the transaction commits (once, however many).
pub(super) async fn notify_outbox(tx: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(OUTBOX_CHANNEL)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
    Ok(())
}

impl Leases {
    /// Calls `wake` whenever any member commits outbox rows (`LISTEN ccrelay_outbox`), until
    /// `cancel` fires; reconnects after errors, waking once each time (rows may have come
    /// meanwhile).
    pub async fn follow_outbox(
        &self,
        cancel: tokio_util::sync::CancellationToken,
        wake: impl Fn() + Send,
    ) {
        while !cancel.is_cancelled() {
            let mut listener = match sqlx::postgres::PgListener::connect_with(&self.pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(error = %e, "Cannot listen for outbox rows; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            if let Err(e) = listener.listen(OUTBOX_CHANNEL).await {
                tracing::debug!(error = %e, "Cannot listen for outbox rows; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            wake();
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    n = listener.recv() => match n {
                        Ok(_) => wake(),
                        Err(e) => {
                            tracing::debug!(error = %e, "Outbox notifications broke off; listening again");
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// Inside a write transaction: refuses `writes` unless their writer owns every partition their
/// fenced writes name, at the epoch it knows, with the lease running — and holds those rows
/// `FOR SHARE` until the transaction ends, so a takeover waits for it.
pub(super) async fn fence(
    tx: &mut PgConnection,
    fencing: &Fencing,
    writes: &[Write],
) -> Result<()> {
    let need = fencing
        .needs(writes)
        .map_err(|partition| StoreError::Fenced { partition })?;
    if need.is_empty() {
        return Ok(());
    }
    let parts: Vec<i32> = need
        .iter()
        .map(|&(p, _)| i32::try_from(p).unwrap_or(i32::MAX))
        .collect();
    let epochs: Vec<i64> = need.iter().map(|&(_, e)| e).collect();
    let held: Vec<i32> = sqlx::query_scalar(
        "SELECT c.partition FROM cluster_partitions c \
           JOIN unnest($1::int4[], $2::int8[]) AS w(partition, epoch) \
             ON c.partition = w.partition AND c.epoch = w.epoch \
         WHERE c.owner = $3 AND c.lease_until > now() \
         ORDER BY c.partition FOR SHARE OF c",
    )
    .bind(&parts)
    .bind(&epochs)
    .bind(fencing.member())
    .fetch_all(&mut *tx)
    .await
    .map_err(classify)?;
    match parts.iter().find(|p| !held.contains(p)) {
        Some(&p) => Err(StoreError::Fenced {
            partition: u32::try_from(p).unwrap_or(u32::MAX),
        }),
        None => Ok(()),
    }
}
