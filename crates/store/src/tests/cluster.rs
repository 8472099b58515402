//! The cluster's leases and fencing on a real PostgreSQL (`docs/HA.md`): shares, expiry,
//! takeover with a new epoch, a renewal racing a takeover, a paused holder's writes refused, and
//! a model test of random joins, pauses and hand-backs. A lease "runs out" here by moving its
//! `lease_until` into the past with the database's own clock, the only clock the rules read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use time::OffsetDateTime;

use super::{Db, on_postgres, open, session, up_row};
use crate::cluster::{Fencing, Leases, MemberInfo};
use crate::{Commit, Options, SessionState, Store, StoreError, connect_with};

const LEASE: Duration = Duration::from_secs(30);

fn member(id: &str) -> MemberInfo {
    MemberInfo {
        id: id.to_owned(),
        host: "test".to_owned(),
        pid: 1,
        version: "0".to_owned(),
        // A host clock far off: it decides nothing.
        started_at: OffsetDateTime::now_utc() + time::Duration::hours(5),
    }
}

/// Lets `id`'s leases (and membership) run out, by the database's clock.
async fn expire(db: &Db, id: &str) {
    let pool = pool(db).await;
    sqlx::query(
        "UPDATE cluster_partitions SET lease_until = now() - interval '1 second' WHERE owner = $1",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE cluster_members SET lease_until = now() - interval '1 second' WHERE member = $1",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
}

async fn pool(db: &Db) -> sqlx::PgPool {
    sqlx::PgPool::connect(&db.url).await.unwrap()
}

fn leases(db: &Db) -> Leases {
    db.store.leases().expect("PostgreSQL keeps leases")
}

async fn fenced_store(db: &Db, fencing: &Arc<Fencing>) -> Store {
    connect_with(
        &db.url,
        Options {
            fencing: Some(fencing.clone()),
            ..Options::default()
        },
    )
    .await
    .unwrap()
}

/// A user of `tenant` in partition `p` of 8.
fn user_in(p: u32) -> String {
    (0..)
        .map(|i| format!("u{i}"))
        .find(|u| contract::partition::of(super::TENANT, u, 8) == p)
        .unwrap_or_default()
}

async fn shares_expiry_and_takeover(db: Db) {
    let l = leases(&db);
    l.init(8).await.unwrap();
    let a = l.tick(&member("a"), LEASE, true).await.unwrap();
    assert_eq!(a.target, 8);
    assert_eq!(a.owned.len(), 8, "a lone member takes everything");
    assert!(
        a.acquired
            .iter()
            .all(|x| x.epoch == 1 && x.previous.is_none())
    );

    // b joins: its share is 4, all taken; a sees its own share fall to 4 and hands back.
    let b = l.tick(&member("b"), LEASE, true).await.unwrap();
    assert_eq!((b.target, b.owned.len()), (4, 0));
    let a = l.tick(&member("a"), LEASE, true).await.unwrap();
    assert_eq!((a.target, a.owned.len()), (4, 8));
    let give: Vec<u32> = a.owned.iter().rev().take(4).map(|&(p, _)| p).collect();
    l.release("a", &give).await.unwrap();
    let b = l.tick(&member("b"), LEASE, true).await.unwrap();
    assert_eq!(b.owned.len(), 4);
    assert!(
        b.acquired
            .iter()
            .all(|x| x.epoch == 2 && x.previous.is_none())
    );
    let a = l.tick(&member("a"), LEASE, true).await.unwrap();
    let mine: BTreeSet<u32> = a.owned.iter().map(|&(p, _)| p).collect();
    let theirs: BTreeSet<u32> = b.owned.iter().map(|&(p, _)| p).collect();
    assert!(mine.is_disjoint(&theirs));
    assert_eq!(mine.len() + theirs.len(), 8);

    // a stops ticking (killed, paused): once its leases run out, b takes them, epoch + 1.
    expire(&db, "a").await;
    let b = l.tick(&member("b"), LEASE, true).await.unwrap();
    assert_eq!((b.target, b.owned.len()), (8, 8), "{b:?}");
    for x in &b.acquired {
        assert_eq!(x.previous.as_deref(), Some("a"));
        assert_eq!(x.epoch, 2);
    }
    // a wakes: its renewal finds nothing of its own; its share is now 4, all held by b.
    let a = l.tick(&member("a"), LEASE, true).await.unwrap();
    assert!(a.owned.is_empty(), "{a:?}");

    let status = l.status().await.unwrap();
    assert_eq!(status.partitions, 8);
    assert_eq!(status.members.len(), 2);
    assert!(
        status
            .leases
            .iter()
            .all(|p| p.owner.as_deref() == Some("b") && p.valid)
    );

    // Leaving frees everything at once.
    l.leave("b").await.unwrap();
    let a = l.tick(&member("a"), LEASE, true).await.unwrap();
    assert_eq!(a.owned.len(), 8);
    assert!(
        a.acquired
            .iter()
            .all(|x| x.epoch == 3 && x.previous.is_none())
    );
}

async fn another_partition_count_is_refused(db: Db) {
    let l = leases(&db);
    l.init(8).await.unwrap();
    l.init(8).await.unwrap();
    let err = l.init(16).await.unwrap_err();
    assert!(matches!(err, StoreError::Cluster(_)), "{err}");
    assert!(err.to_string().contains("set up with 8"), "{err}");
    l.reset().await.unwrap();
    l.init(16).await.unwrap();
}

async fn a_paused_holder_writes_nothing(db: Db) {
    let l = leases(&db);
    l.init(8).await.unwrap();
    let fa = Fencing::new("a", 8);
    let fb = Fencing::new("b", 8);
    let (sa, sb) = (fenced_store(&db, &fa).await, fenced_store(&db, &fb).await);

    let tick = l.tick(&member("a"), LEASE, true).await.unwrap();
    fa.set(&tick.owned);
    let user = user_in(3);
    let s = session(&user, SessionState::Active, super::at(0));
    sa.commit(open(&s)).await.unwrap();

    // b does not own partition 3: its write is refused, alone, and nothing of it is kept.
    let r = sb.begin_up(&up_row(&user, "m-b", super::at(1))).await;
    assert!(
        matches!(r, Err(StoreError::Fenced { partition: 3 })),
        "{r:?}"
    );
    assert!(!r.unwrap_err().is_retryable());

    // a is paused past its lease; b takes over. a still believes it owns partition 3 at its
    // epoch, but the database says otherwise: its writes are refused.
    expire(&db, "a").await;
    let tick = l.tick(&member("b"), LEASE, true).await.unwrap();
    fb.set(&tick.owned);
    let r = sa.begin_up(&up_row(&user, "m-a", super::at(2))).await;
    assert!(
        matches!(r, Err(StoreError::Fenced { partition: 3 })),
        "{r:?}"
    );
    let r = sa.set_session_token(&s, Some("stale")).await;
    assert!(matches!(r, Err(StoreError::Fenced { .. })), "{r:?}");
    // Even if a learnt the partition again at its old epoch, the epoch no longer matches.
    let r = sa
        .commit(Commit {
            up_row: Some(up_row(&user, "m-a2", super::at(3))),
            ..Commit::default()
        })
        .await;
    assert!(matches!(r, Err(StoreError::Fenced { .. })), "{r:?}");

    // What a had in hand from the upstream is a fact: committed all the same.
    let fact = Commit {
        up_row: Some(up_row(&user, "m-fact", super::at(4))),
        ..Commit::default()
    };
    sa.commit_fact(fact).await.unwrap();
    // b, the owner, writes.
    sb.begin_up(&up_row(&user, "m-b2", super::at(5)))
        .await
        .unwrap();
    let ids: Vec<_> = sb
        .transcript(crate::kind::CEC, super::TENANT, &user)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| m.message_id)
        .collect();
    assert_eq!(ids, ["m-fact", "m-b2"]);
    let session = sb
        .open_session(crate::kind::CEC, super::TENANT, &user)
        .await
        .unwrap();
    assert_eq!(session.and_then(|s| s.token).as_deref(), Some("tok-1"));
    sa.close().await;
    sb.close().await;
}

async fn a_batch_refuses_only_its_fenced_write(db: Db) {
    let l = leases(&db);
    l.init(8).await.unwrap();
    let f = Fencing::new("a", 8);
    let s = fenced_store(&db, &f).await;
    let tick = l.tick(&member("a"), LEASE, true).await.unwrap();
    // a owns everything but believes it owns only partition 1.
    let e1 = tick.owned.iter().find(|&&(p, _)| p == 1).copied().unwrap();
    f.set(&[e1]);
    let (u1, u2) = (user_in(1), user_in(2));
    let writes = (0..20).map(|i| {
        let s = s.clone();
        let u = if i % 5 == 0 { u2.clone() } else { u1.clone() };
        async move {
            (
                u.clone(),
                s.begin_up(&up_row(&u, &format!("m{i}"), super::at(i)))
                    .await,
            )
        }
    });
    for (u, r) in futures::future::join_all(writes).await {
        if u == u2 {
            assert!(
                matches!(r, Err(StoreError::Fenced { partition: 2 })),
                "{r:?}"
            );
        } else {
            r.unwrap();
        }
    }
    s.close().await;
}

/// The model: members tick, pause (their leases run out) and hand back what exceeds their
/// share, in any order. After every step: no partition has two owners, an owner's epoch only
/// grows, a member's view of its partitions agrees with the database, and a write of a
/// partition by a member that does not own it at that epoch is refused.
#[derive(Debug, Clone)]
enum Step {
    Tick(usize),
    Pause(usize),
    HandBack(usize),
    Write(usize, u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3usize).prop_map(Step::Tick),
        1 => (0..3usize).prop_map(Step::Pause),
        2 => (0..3usize).prop_map(Step::HandBack),
        3 => (0..3usize, 0..8u32).prop_map(|(m, p)| Step::Write(m, p)),
    ]
}

async fn model(db: &Db, steps: Vec<Step>) {
    let l = leases(db);
    l.reset().await.unwrap();
    l.init(8).await.unwrap();
    let names = ["a", "b", "c"];
    let fences: Vec<Arc<Fencing>> = names.iter().map(|n| Fencing::new(n, 8)).collect();
    let mut stores = Vec::new();
    for f in &fences {
        stores.push(fenced_store(db, f).await);
    }
    let mut targets = [0u32; 3];
    let mut epochs: BTreeMap<u32, i64> = BTreeMap::new();
    for (i, step) in steps.into_iter().enumerate() {
        match step {
            Step::Tick(m) => {
                let t = l.tick(&member(names[m]), LEASE, true).await.unwrap();
                fences[m].set(&t.owned);
                targets[m] = t.target;
            }
            Step::Pause(m) => expire(db, names[m]).await,
            Step::HandBack(m) => {
                let owned: Vec<u32> = (0..8).filter(|&p| fences[m].epoch(p).is_some()).collect();
                let extra = owned.len().saturating_sub(targets[m] as usize);
                let give: Vec<u32> = owned.iter().rev().take(extra).copied().collect();
                l.release(names[m], &give).await.unwrap();
                let keep: Vec<(u32, i64)> = owned
                    .iter()
                    .filter(|p| !give.contains(p))
                    .filter_map(|&p| Some((p, fences[m].epoch(p)?)))
                    .collect();
                fences[m].set(&keep);
            }
            Step::Write(m, p) => {
                let user = user_in(p);
                let r = stores[m]
                    .begin_up(&up_row(&user, &format!("w{i}"), super::at(i as i64)))
                    .await;
                let status = l.status().await.unwrap();
                let row = &status.leases[p as usize];
                let owns = row.valid
                    && row.owner.as_deref() == Some(names[m])
                    && fences[m].epoch(p) == Some(row.epoch);
                match r {
                    Ok(_) => assert!(owns, "step {i}: {} wrote partition {p}: {row:?}", names[m]),
                    Err(StoreError::Fenced { partition }) => {
                        assert_eq!(partition, p);
                        assert!(!owns, "step {i}: owner {} was fenced: {row:?}", names[m]);
                    }
                    Err(e) => panic!("step {i}: {e}"),
                }
            }
        }
        let status = l.status().await.unwrap();
        for row in &status.leases {
            let before = epochs.insert(row.partition, row.epoch).unwrap_or(0);
            assert!(row.epoch >= before, "step {i}: epoch went back: {row:?}");
        }
        for (m, f) in fences.iter().enumerate() {
            for p in 0..8 {
                if let Some(e) = f.epoch(p) {
                    let row = &status.leases[p as usize];
                    // A member may believe it owns what it lost (paused), never at a newer epoch.
                    assert!(
                        e <= row.epoch,
                        "step {i}: {} has epoch {e}: {row:?}",
                        names[m]
                    );
                }
            }
        }
    }
    for s in stores {
        s.close().await;
    }
}

async fn lease_model(db: Db) {
    let runner_config = ProptestConfig {
        cases: 12,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(runner_config);
    let strategy = proptest::collection::vec(step(), 10..40);
    let handle = tokio::runtime::Handle::current();
    let db = Arc::new(db);
    let result = tokio::task::block_in_place(|| {
        runner.run(&strategy, |steps| {
            handle.block_on(model(&db, steps));
            Ok(())
        })
    });
    result.unwrap();
}

#[tokio::test]
async fn postgres_shares_expiry_and_takeover() {
    on_postgres(shares_expiry_and_takeover).await;
}

#[tokio::test]
async fn postgres_another_partition_count_is_refused() {
    on_postgres(another_partition_count_is_refused).await;
}

#[tokio::test]
async fn postgres_a_paused_holder_writes_nothing() {
    on_postgres(a_paused_holder_writes_nothing).await;
}

#[tokio::test]
async fn postgres_a_batch_refuses_only_its_fenced_write() {
    on_postgres(a_batch_refuses_only_its_fenced_write).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lease_model() {
    on_postgres(lease_model).await;
}
