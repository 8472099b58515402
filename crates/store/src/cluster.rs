//! Several relays as one service (`docs/HA.md`): what the store keeps of the cluster and how it
//! refuses a write its writer no longer owns.
//!
//! Work is divided into partitions by (tenant, user) ([`contract::partition::of`]). An instance
//! holds leases on partitions in PostgreSQL ([`Leases`], implemented in
//! `postgres/cluster.rs`): renewed and expired by the database's clock, each with an epoch that
//! grows at every change of owner. The relay's membership task ticks ([`Leases::tick`]) and tells
//! the store which partitions it owns at which epoch ([`Fencing::set`]).
//!
//! **Fencing.** A write of one user's work ([`Write::fenced_user`]) is applied only in a
//! transaction that finds its writer the partition's owner, at the epoch it knows, with the lease
//! running, and that holds the partition's row `FOR SHARE` until it commits, so no takeover
//! commits between the check and the write. A write that fails the check fails alone with
//! [`StoreError::Fenced`] (not retryable) and changes nothing; `ccrelay_cluster_fenced_writes_total`
//! counts them. What the upstream has already forgotten — the messages of a poll answer, a
//! Tencent callback — is a *fact* ([`Write::Fact`]) and is committed by whoever holds it: the
//! store recognises a message seen twice.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use time::OffsetDateTime;

use crate::Write;

/// Which partitions this instance owns, at which epoch, as its membership task last learnt.
/// Shared by the relay (which sets it) and the store's writers (which check against it).
#[derive(Debug)]
pub struct Fencing {
    member: String,
    partitions: u32,
    /// Epoch by partition; `None` where not owned.
    epochs: RwLock<Vec<Option<i64>>>,
}

impl Fencing {
    /// An instance `member` in a cluster of `partitions` partitions, owning none yet.
    pub fn new(member: &str, partitions: u32) -> Arc<Fencing> {
        Arc::new(Fencing {
            member: member.to_owned(),
            partitions: partitions.max(1),
            epochs: RwLock::new(vec![None; partitions.max(1) as usize]),
        })
    }

    pub fn member(&self) -> &str {
        &self.member
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition of `(tenant, user)`.
    pub fn partition_of(&self, tenant: &str, user: &str) -> u32 {
        contract::partition::of(tenant, user, self.partitions)
    }

    /// Owns exactly `owned` (partition, epoch) from now on.
    pub fn set(&self, owned: &[(u32, i64)]) {
        let mut epochs = self.epochs.write().unwrap_or_else(|e| e.into_inner());
        epochs.iter_mut().for_each(|e| *e = None);
        for &(p, epoch) in owned {
            if let Some(slot) = epochs.get_mut(p as usize) {
                *slot = Some(epoch);
            }
        }
    }

    /// The epoch of `partition`, if owned.
    pub fn epoch(&self, partition: u32) -> Option<i64> {
        let epochs = self.epochs.read().unwrap_or_else(|e| e.into_inner());
        epochs.get(partition as usize).copied().flatten()
    }

    /// The (partition, epoch) each fenced write of `writes` needs, sorted and without repeats;
    /// `Err(partition)` for the first write whose partition is not owned at all.
    pub(crate) fn needs(&self, writes: &[Write]) -> Result<Vec<(u32, i64)>, u32> {
        let mut need = Vec::new();
        for w in writes {
            if let Some((tenant, user)) = w.fenced_user() {
                let p = self.partition_of(tenant, user);
                need.push((p, self.epoch(p).ok_or(p)?));
            }
        }
        need.sort_unstable();
        need.dedup();
        Ok(need)
    }
}

/// Who an instance is, as `cluster_members` shows it.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    /// Unique in the cluster (`cluster.id`, or the host name with a random suffix).
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub version: String,
    pub started_at: OffsetDateTime,
}

/// A partition taken by a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    pub partition: u32,
    pub epoch: i64,
    /// Its owner before, when it had one (whose lease had run out).
    pub previous: Option<String>,
}

/// What one [`Leases::tick`] found and did, all in one transaction.
#[derive(Debug, Clone)]
pub struct Tick {
    /// Every partition this instance owns now, with its epoch, sorted: those renewed and those
    /// acquired.
    pub owned: Vec<(u32, i64)>,
    /// Those of `owned` taken by this tick.
    pub acquired: Vec<Acquired>,
    /// This instance's fair share: ⌈P/L⌉ for the first P mod L live members by id, ⌊P/L⌋ for
    /// the others.
    pub target: u32,
    /// The live members (this one included), by id.
    pub members: Vec<String>,
    /// Who owns each partition now (a running lease), by partition; for forwarding requests
    /// that need a user's owner.
    pub owners: Vec<Option<String>>,
}

/// A member as `ccrelay cluster status` shows it.
#[derive(Debug, Clone)]
pub struct MemberRow {
    pub member: String,
    pub host: String,
    pub pid: i32,
    pub version: String,
    pub started_at: OffsetDateTime,
    pub seen_at: OffsetDateTime,
    pub lease_until: OffsetDateTime,
    /// Whether its lease runs, by the database's clock.
    pub live: bool,
}

/// A partition as `ccrelay cluster status` shows it.
#[derive(Debug, Clone)]
pub struct PartitionRow {
    pub partition: u32,
    pub owner: Option<String>,
    pub epoch: i64,
    pub lease_until: Option<OffsetDateTime>,
    pub acquired_at: Option<OffsetDateTime>,
    pub renewed_at: Option<OffsetDateTime>,
    /// Whether its owner's lease runs, by the database's clock.
    pub valid: bool,
}

/// The whole cluster, as the database sees it at `now`.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    pub now: OffsetDateTime,
    pub partitions: u32,
    pub members: Vec<MemberRow>,
    pub leases: Vec<PartitionRow>,
}

/// Splits `partitions` among `live` members (sorted by id): the fair share of the member at
/// `index`.
pub fn fair_share(partitions: u32, live: usize, index: usize) -> u32 {
    let live = u32::try_from(live.max(1)).unwrap_or(u32::MAX);
    let index = u32::try_from(index).unwrap_or(u32::MAX);
    partitions / live + u32::from(index < partitions % live)
}

/// How often a member ticks for a lease of `lease`: a fifth of it, between 200 ms and 2 s.
pub fn tick_interval(lease: Duration) -> Duration {
    (lease / 5).clamp(Duration::from_millis(200), Duration::from_secs(2))
}

pub use crate::postgres::cluster::Leases;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Commit, MessageRow};

    #[test]
    fn fair_shares_add_up_and_differ_by_at_most_one() {
        for p in 1..=130u32 {
            for l in 1..=8usize {
                let shares: Vec<u32> = (0..l).map(|i| fair_share(p, l, i)).collect();
                assert_eq!(shares.iter().sum::<u32>(), p, "p={p} l={l}");
                let (min, max) = (shares.iter().min(), shares.iter().max());
                assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "p={p} l={l}");
            }
        }
    }

    #[test]
    fn tick_interval_is_a_fifth_of_the_lease_within_bounds() {
        assert_eq!(
            tick_interval(Duration::from_secs(10)),
            Duration::from_secs(2)
        );
        assert_eq!(
            tick_interval(Duration::from_secs(2)),
            Duration::from_millis(400)
        );
        assert_eq!(
            tick_interval(Duration::from_millis(500)),
            Duration::from_millis(200)
        );
        assert_eq!(
            tick_interval(Duration::from_secs(300)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn needs_names_the_partitions_of_fenced_writes_only() {
        let f = Fencing::new("a", 8);
        let row = |tenant: &str, user: &str| MessageRow {
            relay_id: "r".into(),
            kind: "cec".into(),
            tenant: tenant.into(),
            user_id: user.into(),
            session_id: None,
            direction: crate::Direction::Up,
            message_id: Some("m".into()),
            message_code: None,
            source_type: None,
            control_type: None,
            media_type: None,
            content: None,
            body: "{}".into(),
            status: crate::MessageStatus::Pending,
            result_code: None,
            result_desc: None,
            stream_seq: None,
            created_at: crate::now(),
        };
        let p = f.partition_of("t", "u");
        let begin = Write::BeginUp(row("t", "u"));
        assert_eq!(f.needs(std::slice::from_ref(&begin)), Err(p));
        f.set(&[(p, 7)]);
        assert_eq!(f.needs(std::slice::from_ref(&begin)), Ok(vec![(p, 7)]));
        // A fact, and a write that names no user, need nothing.
        let fact = Write::Fact(Commit {
            up_row: Some(row("x", "y")),
            ..Commit::default()
        });
        assert_eq!(f.needs(&[fact, Write::OutboxDone(vec![1])]), Ok(vec![]));
        f.set(&[]);
        assert_eq!(f.epoch(p), None);
    }
}
