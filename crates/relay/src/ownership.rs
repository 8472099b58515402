//! What this instance owns, and the one gate every unit of partitioned work passes (docs/HA.md,
//! "The work gate").
//!
//! Work is keyed by (tenant, user) — for Tencent IM, (app, user) — and divided into
//! `cluster.partitions` partitions ([`contract::partition::of`]). A relay on SQLite owns every
//! partition for its whole life ([`Ownership::single`]); a member of a cluster owns what its
//! leases in PostgreSQL give it, as the membership task (`crate::cluster`) reports them
//! ([`Ownership::set_owned`]), and only while its leases are valid by its own monotonic clock
//! ([`Ownership::renewed`]).
//!
//! [`Ownership::begin`] answers a [`Work`] guard only when the partition is owned, not being
//! handed back, and the leases valid; the guard counts the partition's work in flight, so a hand
//! back ([`Ownership::start_release`] then [`Ownership::drained`]) waits for what was started.
//! The poller, the uplink and Tencent workers and the file downloads all start their work here,
//! and the partitioned JetStream consumers follow [`Ownership::consuming`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, AtomicUsize, Ordering::SeqCst};

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

const NOT_OWNED: u8 = 0;
const OWNED: u8 = 1;
const RELEASING: u8 = 2;

/// What this instance owns. Cheap to clone.
#[derive(Clone)]
pub struct Ownership(Arc<Inner>);

struct Inner {
    partitions: u32,
    /// A cluster of one (SQLite): everything owned, always valid.
    single: bool,
    base: Instant,
    /// Nanoseconds after `base` until which the leases are valid locally; 0: not valid.
    valid_until: AtomicU64,
    slots: Vec<Slot>,
    consuming: watch::Sender<BTreeSet<u32>>,
    drained: Notify,
    /// Who owns each partition, as the last tick saw it ([`Ownership::set_owners`]).
    owners: std::sync::RwLock<Vec<Option<String>>>,
    /// The partitions each JetStream follower still pulls ([`Ownership::add_puller`]).
    pullers: std::sync::Mutex<Vec<watch::Receiver<BTreeSet<u32>>>>,
}

#[derive(Default)]
struct Slot {
    state: AtomicU8,
    epoch: AtomicI64,
    inflight: AtomicUsize,
}

/// One unit of work of a partition, in flight until dropped.
pub struct Work {
    owner: Ownership,
    partition: u32,
}

impl Work {
    pub fn partition(&self) -> u32 {
        self.partition
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let slot = &self.owner.0.slots[self.partition as usize];
        if slot.inflight.fetch_sub(1, SeqCst) == 1 {
            self.owner.0.drained.notify_waiters();
        }
    }
}

impl Ownership {
    /// Everything, for good: a relay on SQLite.
    pub fn single(partitions: u32) -> Self {
        let o = Self::new(partitions, true);
        for s in &o.0.slots {
            s.state.store(OWNED, SeqCst);
        }
        o.publish();
        o
    }

    /// Nothing until the membership task says otherwise: a member of a cluster.
    pub fn cluster(partitions: u32) -> Self {
        Self::new(partitions, false)
    }

    fn new(partitions: u32, single: bool) -> Self {
        let partitions = partitions.max(1);
        let (consuming, _) = watch::channel(BTreeSet::new());
        Ownership(Arc::new(Inner {
            partitions,
            single,
            base: Instant::now(),
            valid_until: AtomicU64::new(0),
            slots: (0..partitions).map(|_| Slot::default()).collect(),
            consuming,
            drained: Notify::new(),
            pullers: std::sync::Mutex::new(Vec::new()),
            owners: std::sync::RwLock::new(Vec::new()),
        }))
    }

    /// Whether this instance is a member of a cluster (not a relay on SQLite).
    pub fn is_cluster(&self) -> bool {
        !self.0.single
    }

    pub fn partitions(&self) -> u32 {
        self.0.partitions
    }

    /// The partition of `(tenant, user)`.
    pub fn partition_of(&self, tenant: &str, user: &str) -> u32 {
        contract::partition::of(tenant, user, self.0.partitions)
    }

    /// Whether the leases are valid now (always, for a cluster of one).
    pub fn valid(&self) -> bool {
        self.0.single || self.nanos(Instant::now()) < self.0.valid_until.load(SeqCst)
    }

    /// Until when the leases are valid locally (`None`: not valid, or a cluster of one).
    pub fn valid_until(&self) -> Option<Instant> {
        let n = self.0.valid_until.load(SeqCst);
        (!self.0.single && n > 0).then(|| self.0.base + std::time::Duration::from_nanos(n))
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.0.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// A guard for one unit of work of partition `p`, if this instance may start it now.
    pub fn begin(&self, p: u32) -> Option<Work> {
        let slot = self.0.slots.get(p as usize)?;
        // Counted before the check: a hand back that changes the state after this point waits
        // for the guard; one that changed it before is seen here.
        slot.inflight.fetch_add(1, SeqCst);
        let work = Work {
            owner: self.clone(),
            partition: p,
        };
        (slot.state.load(SeqCst) == OWNED && self.valid()).then_some(work)
    }

    /// A guard that keeps partition `p` busy (a hand-back waits for it) without leave to work on
    /// it: held over a refused message until it is handed back ([`Self::refuse`]).
    pub fn hold(&self, p: u32) -> Option<Work> {
        let slot = self.0.slots.get(p as usize)?;
        slot.inflight.fetch_add(1, SeqCst);
        Some(Work {
            owner: self.clone(),
            partition: p,
        })
    }

    /// Waits until no JetStream follower pulls partition `p` any more (at most `limit`): a
    /// message refused by the work gate is handed back only then, so the server does not give it
    /// straight back to this member, and the next owner gets it before anything newer.
    pub async fn unpulled(&self, p: u32, limit: std::time::Duration) {
        let deadline = Instant::now() + limit;
        while self.pulled(&[p]) && Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// [`Self::begin`] for the partition of `(tenant, user)`.
    pub fn begin_for(&self, tenant: &str, user: &str) -> Option<Work> {
        self.begin(self.partition_of(tenant, user))
    }

    /// Whether `(tenant, user)`'s partition is this instance's now (and not being handed back).
    pub fn owns(&self, tenant: &str, user: &str) -> bool {
        let p = self.partition_of(tenant, user) as usize;
        self.0.slots[p].state.load(SeqCst) == OWNED && self.valid()
    }

    /// The partitions owned (being handed back included) with their epochs.
    pub fn owned(&self) -> Vec<(u32, i64)> {
        self.0
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state.load(SeqCst) != NOT_OWNED)
            .map(|(p, s)| (p as u32, s.epoch.load(SeqCst)))
            .collect()
    }

    /// How many partitions this instance works on now (owned, not being handed back, valid).
    pub fn working(&self) -> u32 {
        if !self.valid() {
            return 0;
        }
        self.0
            .slots
            .iter()
            .filter(|s| s.state.load(SeqCst) == OWNED)
            .count() as u32
    }

    /// The partitions whose messages this instance is to consume: owned, not being handed back,
    /// while the leases are valid.
    pub fn consuming(&self) -> watch::Receiver<BTreeSet<u32>> {
        self.0.consuming.subscribe()
    }

    fn publish(&self) {
        let now: BTreeSet<u32> = if self.valid() {
            self.0
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.state.load(SeqCst) == OWNED)
                .map(|(p, _)| p as u32)
                .collect()
        } else {
            BTreeSet::new()
        };
        self.0.consuming.send_if_modified(|have| {
            if *have == now {
                false
            } else {
                *have = now;
                true
            }
        });
    }

    /// The leases were renewed: valid locally until `until`.
    pub fn renewed(&self, until: Instant) {
        self.0.valid_until.store(self.nanos(until).max(1), SeqCst);
        self.publish();
    }

    /// The leases could not be renewed in time: nothing is this instance's any more.
    pub fn lapse(&self) {
        if self.0.single {
            return;
        }
        self.0.valid_until.store(0, SeqCst);
        self.publish();
    }

    /// What the database says this instance owns, with epochs: every other partition is not
    /// its own; those being handed back stay so.
    pub fn set_owned(&self, owned: &[(u32, i64)]) {
        if self.0.single {
            return;
        }
        let mut now = vec![None; self.0.slots.len()];
        for &(p, epoch) in owned {
            if let Some(e) = now.get_mut(p as usize) {
                *e = Some(epoch);
            }
        }
        for (slot, epoch) in self.0.slots.iter().zip(now) {
            match epoch {
                Some(e) => {
                    let was = slot.epoch.swap(e, SeqCst);
                    let state = slot.state.load(SeqCst);
                    // A new epoch is a new ownership: whatever was being handed back is over.
                    if state == NOT_OWNED || was != e {
                        slot.state.store(OWNED, SeqCst);
                    }
                }
                None => slot.state.store(NOT_OWNED, SeqCst),
            }
        }
        self.publish();
    }

    /// Stops starting work on `partitions` (they are being handed back).
    pub fn start_release(&self, partitions: &[u32]) {
        for &p in partitions {
            if let Some(s) = self.0.slots.get(p as usize) {
                let _ = s.state.compare_exchange(OWNED, RELEASING, SeqCst, SeqCst);
            }
        }
        self.publish();
    }

    /// The partitions being handed back.
    pub fn releasing(&self) -> Vec<u32> {
        self.0
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state.load(SeqCst) == RELEASING)
            .map(|(p, _)| p as u32)
            .collect()
    }

    /// Who owns each partition (the members' ids), as the membership task last saw it.
    pub fn set_owners(&self, owners: Vec<Option<String>>) {
        *self.0.owners.write().unwrap_or_else(|p| p.into_inner()) = owners;
    }

    /// The member that owns `(tenant, user)`'s partition, as last seen.
    pub fn owner_of(&self, tenant: &str, user: &str) -> Option<String> {
        let p = self.partition_of(tenant, user) as usize;
        let owners = self.0.owners.read().unwrap_or_else(|p| p.into_inner());
        owners.get(p).cloned().flatten()
    }

    /// Registers what a JetStream follower still pulls, for [`Self::pulled`].
    pub fn add_puller(&self, pulling: watch::Receiver<BTreeSet<u32>>) {
        self.0
            .pullers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(pulling);
    }

    /// Whether a follower still pulls any of `partitions`: a hand-back releases them only once
    /// none does, so the next owner's first pull comes after the last message handed back.
    pub fn pulled(&self, partitions: &[u32]) -> bool {
        let pullers = self.0.pullers.lock().unwrap_or_else(|p| p.into_inner());
        pullers.iter().any(|rx| {
            let pulling = rx.borrow();
            partitions.iter().any(|p| pulling.contains(p))
        })
    }

    /// Waits until no work of `partitions` is in flight, or `deadline`; whether it was reached.
    pub async fn drained(&self, partitions: &[u32], deadline: Instant) -> bool {
        loop {
            let notified = self.0.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let busy = partitions.iter().any(|&p| {
                self.0
                    .slots
                    .get(p as usize)
                    .is_some_and(|s| s.inflight.load(SeqCst) > 0)
            });
            if !busy {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_cluster_of_one_owns_everything() {
        let o = Ownership::single(8);
        assert!(!o.is_cluster());
        assert!(o.valid());
        assert!((0..8).all(|p| o.begin(p).is_some()));
        assert_eq!(o.working(), 8);
        assert_eq!(o.consuming().borrow().len(), 8);
        o.lapse();
        o.set_owned(&[]);
        assert!(
            o.begin(3).is_some(),
            "nothing takes a cluster of one's partitions"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn work_needs_ownership_and_a_valid_lease() {
        let o = Ownership::cluster(4);
        assert!(o.begin(1).is_none(), "nothing owned yet");
        o.set_owned(&[(1, 7), (2, 3)]);
        assert!(o.begin(1).is_none(), "owned but never renewed");
        o.renewed(Instant::now() + Duration::from_secs(9));
        assert!(o.begin(1).is_some());
        assert!(o.begin(0).is_none());
        assert_eq!(o.owned(), vec![(1, 7), (2, 3)]);
        assert_eq!(*o.consuming().borrow(), BTreeSet::from([1, 2]));
        // The local deadline passes without a renewal: nothing starts.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!o.valid());
        assert!(o.begin(1).is_none());
        assert_eq!(o.working(), 0);
        o.lapse();
        assert!(o.consuming().borrow().is_empty());
        // Renewed again: back.
        o.renewed(Instant::now() + Duration::from_secs(9));
        assert!(o.begin(2).is_some());
        assert_eq!(*o.consuming().borrow(), BTreeSet::from([1, 2]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hand_back_waits_for_the_work_in_flight() {
        let o = Ownership::cluster(4);
        o.set_owned(&[(0, 1), (1, 1)]);
        o.renewed(Instant::now() + Duration::from_secs(60));
        let w = o.begin(0).expect("owned");
        o.start_release(&[0]);
        assert!(o.begin(0).is_none(), "no new work once handing back");
        assert!(o.begin(1).is_some(), "others go on");
        assert_eq!(*o.consuming().borrow(), BTreeSet::from([1]));
        assert_eq!(o.releasing(), vec![0]);
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(!o.drained(&[0], deadline).await, "in flight until dropped");
        let o2 = o.clone();
        let waiter = tokio::spawn(async move {
            o2.drained(&[0], Instant::now() + Duration::from_secs(5))
                .await
        });
        tokio::task::yield_now().await;
        drop(w);
        assert!(waiter.await.expect("joined"));
        // Still owned (until the database says otherwise), but not worked on.
        o.set_owned(&[(0, 1), (1, 1)]);
        assert!(o.begin(0).is_none());
        // Acquired again later, at a new epoch: worked on again.
        o.set_owned(&[(0, 2), (1, 1)]);
        assert!(o.begin(0).is_some());
    }

    #[test]
    fn the_partition_is_the_contract_s() {
        let o = Ownership::cluster(64);
        assert_eq!(
            o.partition_of("acme", "bob"),
            contract::partition::of("acme", "bob", 64)
        );
    }
}
