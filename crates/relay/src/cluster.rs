//! Membership: how an instance of a cluster (several relays on one PostgreSQL, `docs/HA.md`)
//! takes, keeps and gives back its partitions.
//!
//! One task ticks every [`store::cluster::tick_interval`] (a fifth of `cluster.lease`): a
//! transaction of [`Leases::tick`] renews this instance's leases and takes free or expired
//! partitions up to its fair share. What the tick found goes to the work gate
//! ([`Ownership::set_owned`], [`Ownership::renewed`]) and to the store's fencing
//! ([`Fencing::set`]); the open sessions of every partition that became this instance's are
//! handed to the poller ([`PollerHandle::adopt`]), first polled one interval later.
//!
//! Leases are valid locally until the tick's start plus the lease, less a margin (a tenth of the
//! lease, at least a second): the database's lease is measured from its own `now()`, which is
//! later than the tick's start, so this instance stops working before any other may start. A
//! tick that fails or hangs past that point lapses everything ([`Ownership::lapse`]): no poll,
//! no send, no publish, until a tick succeeds again.
//!
//! Partitions beyond the fair share (a member joined) are handed back gracefully: no new work
//! starts on them, the work in flight drains (up to half a lease), then they are released for
//! the newcomer to take at its next tick. On shutdown, after the intake has drained, [`leave`]
//! releases every partition at once so the others take them within one tick.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ownership::Ownership;
use crate::poller::PollerHandle;
use store::DynStore;
use store::cluster::{Fencing, Leases, MemberInfo, Tick, tick_interval};

/// What the membership task shares with the rest of the relay.
#[derive(Clone)]
pub struct Membership {
    pub me: MemberInfo,
    pub leases: Leases,
    pub lease: Duration,
    pub fencing: Arc<Fencing>,
    pub ownership: Ownership,
    /// The last tick's view, for `/readyz` and `P.rpc.cluster.status`.
    pub last: Arc<Mutex<Option<TickView>>>,
}

/// What the last successful tick saw.
#[derive(Debug, Clone)]
pub struct TickView {
    pub at: Instant,
    pub target: u32,
    pub members: Vec<String>,
}

/// The member id this instance uses: `cluster.id`, else the host name.
pub fn member_id(configured: Option<&str>) -> String {
    configured.map_or_else(host_name, str::to_owned)
}

/// The host's name ([`crate::instance::host_name`]), reduced to the characters a member id
/// takes (`[A-Za-z0-9_-]`, 64 at most).
pub fn host_name() -> String {
    let id: String = crate::instance::host_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if id.is_empty() {
        "ccrelay".to_owned()
    } else {
        id
    }
}

/// How long before the database's lease runs out this instance stops: a tenth of the lease,
/// at least a second (at most half the lease).
fn margin(lease: Duration) -> Duration {
    (lease / 10).max(Duration::from_secs(1)).min(lease / 2)
}

/// Runs the membership until `stop` fires (after the intake has drained, see [`crate::app`]);
/// then gives every partition back.
pub async fn run(m: Membership, poller: PollerHandle, store: DynStore, stop: CancellationToken) {
    let every = tick_interval(m.lease);
    let mut adopted: BTreeSet<u32> = BTreeSet::new();
    let mut handing_back: Option<(Vec<u32>, Instant)> = None;
    let mut was_valid = false;
    loop {
        // Leases that ran out locally since the last tick (even with no tick failing past the
        // deadline): the gate refused work meanwhile and the poller dropped sessions it came to,
        // so everything is adopted again once the leases are back.
        if was_valid && !m.ownership.valid() {
            lapse(&m, &mut adopted, &mut was_valid);
        }
        let started = Instant::now();
        // A tick that has not answered when the leases run out locally lapses them.
        let deadline = if m.ownership.valid() {
            m.ownership.valid_until().unwrap_or(started + m.lease)
        } else {
            started + m.lease
        };
        let tick = tokio::select! {
            _ = stop.cancelled() => break,
            t = tokio::time::timeout_at(deadline, m.leases.tick(&m.me, m.lease, true)) => t,
        };
        match tick {
            Ok(Ok(tick)) => {
                crate::instrument::cluster_lease_renewal(started.elapsed());
                m.fencing.set(&tick.owned);
                m.ownership.set_owned(&tick.owned);
                m.ownership.set_owners(tick.owners.clone());
                m.ownership.renewed(
                    (started + m.lease)
                        .checked_sub(margin(m.lease))
                        .unwrap_or(started),
                );
                if !was_valid {
                    tracing::info!(
                        owned = tick.owned.len(),
                        target = tick.target,
                        members = tick.members.len(),
                        "Cluster leases held"
                    );
                    was_valid = true;
                }
                record(&m, &tick);
                for a in &tick.acquired {
                    let kind = if a.previous.is_some() {
                        "expired"
                    } else {
                        "free"
                    };
                    crate::instrument::cluster_takeover(kind);
                    if let Some(prev) = &a.previous {
                        tracing::info!(partition = a.partition, epoch = a.epoch, previous = %prev,
                            "Took over a partition whose owner's lease ran out");
                    }
                }
                handing_back = hand_back(&m, &tick, handing_back).await;
                adopted = adopt(&m, &poller, &store, adopted).await;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Cannot renew the cluster leases; retrying");
                if !m.ownership.valid() {
                    lapse(&m, &mut adopted, &mut was_valid);
                }
            }
            Err(_) => {
                tracing::warn!("Renewing the cluster leases took too long: they ran out here");
                lapse(&m, &mut adopted, &mut was_valid);
            }
        }
        let next = started + every;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
        }
    }
    leave(&m).await;
}

/// Nothing is this instance's any more, until a tick succeeds.
fn lapse(m: &Membership, adopted: &mut BTreeSet<u32>, was_valid: &mut bool) {
    if *was_valid {
        tracing::warn!("Cluster leases lapsed: this relay stops working until it renews them");
    }
    m.ownership.lapse();
    m.fencing.set(&[]);
    adopted.clear();
    *was_valid = false;
    crate::instrument::cluster_view(0, 0);
}

fn record(m: &Membership, tick: &Tick) {
    crate::instrument::cluster_view(tick.owned.len(), tick.members.len());
    if let Ok(mut last) = m.last.lock() {
        *last = Some(TickView {
            at: Instant::now(),
            target: tick.target,
            members: tick.members.clone(),
        });
    }
}

/// Starts handing back what exceeds the fair share, or finishes a hand-back whose work has
/// drained (or whose half-lease is up): released in the database for another member to take.
async fn hand_back(
    m: &Membership,
    tick: &Tick,
    pending: Option<(Vec<u32>, Instant)>,
) -> Option<(Vec<u32>, Instant)> {
    if let Some((ps, deadline)) = pending {
        let drained = m.ownership.drained(&ps, Instant::now()).await && !m.ownership.pulled(&ps);
        if !drained && Instant::now() < deadline {
            return Some((ps, deadline));
        }
        match m.leases.release(&m.me.id, &ps).await {
            Ok(()) => {
                tracing::info!(partitions = ?ps, drained, "Handed partitions back to the cluster");
                let keep: Vec<(u32, i64)> = tick
                    .owned
                    .iter()
                    .filter(|(p, _)| !ps.contains(p))
                    .copied()
                    .collect();
                m.fencing.set(&keep);
                m.ownership.set_owned(&keep);
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot hand partitions back; retrying");
                return Some((ps, deadline));
            }
        }
    }
    let target = tick.target as usize;
    if tick.owned.len() <= target {
        return None;
    }
    // The highest partitions go: a stable choice, so members do not trade back and forth.
    let give: Vec<u32> = tick
        .owned
        .iter()
        .rev()
        .take(tick.owned.len() - target)
        .map(|&(p, _)| p)
        .collect();
    m.ownership.start_release(&give);
    Some((give, Instant::now() + m.lease / 2))
}

/// Gives the poller the open sessions of the partitions this instance works on now and did not
/// at the last tick; the set it works on now.
async fn adopt(
    m: &Membership,
    poller: &PollerHandle,
    store: &DynStore,
    adopted: BTreeSet<u32>,
) -> BTreeSet<u32> {
    let working: BTreeSet<u32> = m.ownership.consuming().borrow().clone();
    let gained: BTreeSet<u32> = working.difference(&adopted).copied().collect();
    if gained.is_empty() {
        return working;
    }
    match store.open_sessions().await {
        Ok(open) => {
            let sessions: Vec<_> = open
                .into_iter()
                .filter(|s| gained.contains(&m.ownership.partition_of(&s.tenant, &s.user_id)))
                .collect();
            if !sessions.is_empty() {
                tracing::info!(
                    partitions = gained.len(),
                    sessions = sessions.len(),
                    "Polling the open sessions of partitions taken"
                );
            }
            poller.adopt(sessions);
            working
        }
        Err(e) => {
            tracing::warn!(error = %e, "Cannot read the open sessions of partitions taken; retrying");
            adopted
        }
    }
}

/// The cluster as `ccrelay cluster status` and `P.rpc.cluster.status` show it: members (live or
/// not, lease remaining), partitions (owner, epoch, lease remaining, held since), all measured
/// by the database's clock. `None` for a store that keeps no cluster (SQLite).
pub async fn status(store: &DynStore) -> Result<Option<serde_json::Value>, store::StoreError> {
    let Some(leases) = store.leases() else {
        return Ok(None);
    };
    let st = leases.status().await?;
    let ms = |t: Option<time::OffsetDateTime>| t.map(|t| (t - st.now).whole_milliseconds() as i64);
    let members: Vec<serde_json::Value> = st
        .members
        .iter()
        .map(|m| {
            let owned = st
                .leases
                .iter()
                .filter(|p| p.valid && p.owner.as_deref() == Some(m.member.as_str()))
                .count();
            serde_json::json!({
                "member": m.member, "host": m.host, "pid": m.pid, "version": m.version,
                "live": m.live, "partitions": owned,
                "leaseRemainingMs": ms(Some(m.lease_until)),
                "lastSeenMsAgo": ms(Some(m.seen_at)).map(|v| -v),
                "startedAt": m.started_at.format(&time::format_description::well_known::Rfc3339).ok(),
            })
        })
        .collect();
    let partitions: Vec<serde_json::Value> = st
        .leases
        .iter()
        .map(|p| {
            serde_json::json!({
                "partition": p.partition, "owner": p.owner, "epoch": p.epoch, "valid": p.valid,
                "leaseRemainingMs": ms(p.lease_until),
                "heldForMs": ms(p.acquired_at).map(|v| -v),
            })
        })
        .collect();
    let live = st.members.iter().filter(|m| m.live).count();
    let unowned = st.leases.iter().filter(|p| !p.valid).count();
    Ok(Some(serde_json::json!({
        "ok": true,
        "partitions": st.partitions,
        "liveMembers": live,
        "unownedPartitions": unowned,
        "members": members,
        "leases": partitions,
    })))
}

/// Gives every partition back and leaves the member list, so the others take over at their next
/// tick.
async fn leave(m: &Membership) {
    m.ownership.lapse();
    m.fencing.set(&[]);
    match tokio::time::timeout(Duration::from_secs(5), m.leases.leave(&m.me.id)).await {
        Ok(Ok(())) => tracing::info!("Left the cluster: partitions handed back"),
        Ok(Err(e)) => tracing::warn!(error = %e,
            "Cannot leave the cluster; the others take over when the leases run out"),
        Err(_) => tracing::warn!(
            "Leaving the cluster took too long; the others take over when the leases run out"
        ),
    }
    crate::instrument::cluster_view(0, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_a_tenth_of_the_lease_at_least_a_second() {
        assert_eq!(margin(Duration::from_secs(10)), Duration::from_secs(1));
        assert_eq!(margin(Duration::from_secs(60)), Duration::from_secs(6));
        assert_eq!(margin(Duration::from_secs(2)), Duration::from_secs(1));
    }

    #[test]
    fn host_names_become_member_ids() {
        let id = host_name();
        assert!(!id.is_empty() && id.len() <= 64);
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(member_id(Some("relay-2")), "relay-2");
    }
}
