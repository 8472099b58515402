//! The partitioned layout of `_IN` against a real nats-server ≥ 2.11 (`relay::bus::partitioned`):
//! the server's `partition(n, 2, 4)` is `contract::partition::of`, followers get exactly their
//! partitions' messages in order, a partition moves between followers without loss or repeat,
//! the pin keeps a second puller out until it is released, and an `_IN` of the single-consumer
//! layout is switched and drained.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use natsd::{LocalNatsServer, NatsServerOptions};
use relay::bus::partitioned::{self, Follower, GROUP, Kind, Setup};
use relay::bus::streams;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use crate::support::{init_tracing, test_deps_dir};

const PREFIX: &str = "ccrelay";

/// A fresh nats-server of at least the version a cluster needs.
async fn nats() -> LocalNatsServer {
    init_tracing();
    let binary = tokio::task::spawn_blocking(|| {
        devkit::ensure_nats_server(partitioned::MIN_SERVER, &test_deps_dir())
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("the partitioned layout needs nats-server ≥ 2.11: {e}"));
    LocalNatsServer::start(&binary, NatsServerOptions::default())
        .await
        .unwrap_or_else(|e| panic!("cannot start nats-server {}: {e}", binary.display()))
}

async fn connect(server: &LocalNatsServer) -> (async_nats::Client, jetstream::Context) {
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    (client, js)
}

fn setup(partitions: u32, lease: Duration) -> Setup {
    Setup::new(config::NatsConfig::default(), partitions, lease)
}

fn subjects() -> contract::Subjects {
    contract::Subjects::new(PREFIX)
}

async fn publish(js: &jetstream::Context, subject: String, payload: String) {
    js.publish(subject, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// A running [`Follower`] whose dispatch sends every message to `rx`.
struct Running {
    owned: watch::Sender<BTreeSet<u32>>,
    pulling: watch::Receiver<BTreeSet<u32>>,
    rx: mpsc::UnboundedReceiver<jetstream::Message>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn follow(js: &jetstream::Context, setup: &Setup, kind: Kind, owned: &[u32]) -> Running {
    let (owned_tx, owned_rx) = watch::channel(owned.iter().copied().collect::<BTreeSet<_>>());
    let (tx, rx) = mpsc::unbounded_channel();
    let follower = Follower::new(js.clone(), subjects(), setup.clone(), kind);
    let pulling = follower.pulling();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(follower.run(owned_rx, cancel.clone(), move |m| {
        let _ = tx.send(m);
    }));
    Running {
        owned: owned_tx,
        pulling,
        rx,
        cancel,
        task,
    }
}

impl Running {
    fn own(&self, owned: &[u32]) {
        self.owned.send_replace(owned.iter().copied().collect());
    }

    /// Waits until no pull loop of `p` runs any more.
    async fn stopped(&mut self, p: u32) {
        timeout(
            Duration::from_secs(10),
            self.pulling.wait_for(|s| !s.contains(&p)),
        )
        .await
        .expect("the pull loop stops within 10 s")
        .unwrap();
    }

    /// The next message within `secs`, acknowledged (the server confirming).
    async fn next(&mut self, secs: u64) -> Option<jetstream::Message> {
        let m = timeout(Duration::from_secs(secs), self.rx.recv())
            .await
            .ok()??;
        m.double_ack().await.unwrap();
        Some(m)
    }

    async fn shutdown(self) {
        self.cancel.cancel();
        timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the follower ends within 10 s after cancel")
            .unwrap();
    }
}

/// `(subject, payload)` of a message.
fn seen(m: &jetstream::Message) -> (String, String) {
    (
        m.subject.to_string(),
        String::from_utf8_lossy(&m.payload).into_owned(),
    )
}

/// Users of `tenant` in partition `p` of `n`.
fn users_in(tenant: &str, p: u32, n: u32, count: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("user-{i}"))
        .filter(|u| contract::partition::of(tenant, u, n) == p)
        .take(count)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_partition_transform_is_contract_partition_of() {
    let server = nats().await;
    let (client, js) = connect(&server).await;
    partitioned::check_server_version(&client).await.unwrap();
    assert!(
        partitioned::check_version("2.10.0")
            .unwrap_err()
            .contains("2.10.0 is too old for a cluster")
    );

    for (prefix, n) in [(PREFIX, 64u32), ("odd", 7)] {
        let s = contract::Subjects::new(prefix);
        let info = partitioned::ensure_partitioned(&js, &s, &setup(n, Duration::from_secs(10)))
            .await
            .unwrap();
        // Only the transform was added: the stream's subjects are the contract's.
        assert_eq!(info.config.subjects, s.in_stream_subjects());

        let tenants = ["acme", "shop-1", "T_x", "a"];
        let mut users: Vec<String> = (0..60).map(|i| format!("u{i}")).collect();
        users.extend((0..20).map(|i| format!("用户-{i}")));
        users.extend((0..10).map(|i| format!("{}{i}", "x".repeat(100))));
        users.extend(["a-b_c:d/e@f#g", "émile", "0", "42", "UPPER", "🙂"].map(String::from));
        let mut sent = Vec::new();
        for (i, u) in users.iter().enumerate() {
            let t = tenants[i % tenants.len()];
            let subject = if i % 3 == 0 {
                s.tim_send(t, u)
            } else {
                s.cec_up(t, u)
            };
            publish(&js, subject, String::new()).await;
            sent.push((t.to_owned(), u.clone()));
        }
        let stream = js.get_stream(s.in_stream()).await.unwrap();
        for (seq, (t, u)) in (1u64..).zip(&sent) {
            let stored = stream.get_raw_message(seq).await.unwrap();
            let subject = stored.subject.to_string();
            let parsed = s
                .parse_cec(&subject)
                .or_else(|| s.parse_tim(&subject))
                .unwrap_or_else(|| panic!("{subject} parses"));
            assert_eq!((parsed.0, parsed.2), (t.as_str(), u.as_str()), "{subject}");
            assert_eq!(
                s.partition_token(&subject),
                Some(contract::partition::of(t, u, n)),
                "nats-server's partition({n},2,4) of {subject}"
            );
        }
        // Again: nothing to change.
        partitioned::ensure_partitioned(&js, &s, &setup(n, Duration::from_secs(10)))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_get_exactly_their_partitions_in_order() {
    let server = nats().await;
    let (_client, js) = connect(&server).await;
    let n = 8;
    let setup = setup(n, Duration::from_secs(10));
    let s = subjects();
    partitioned::ensure_partitioned(&js, &s, &setup)
        .await
        .unwrap();
    let mut a = follow(&js, &setup, Kind::CecUp, &[0, 1, 2, 3]);
    let mut b = follow(&js, &setup, Kind::CecUp, &[4, 5, 6, 7]);
    let mut t = follow(&js, &setup, Kind::Tim, &(0..n).collect::<Vec<_>>());

    let users: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    let per_user = 5;
    for i in 0..per_user {
        for u in &users {
            publish(&js, s.cec_up("acme", u), i.to_string()).await;
        }
    }
    for u in &users[..4] {
        publish(&js, s.tim_send("shop", u), "send".into()).await;
        publish(&js, s.tim_stream("shop", u), "chunk".into()).await;
    }

    let total = users.len() * per_user;
    let mut got: BTreeMap<&str, Vec<(String, String)>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.values().map(Vec::len).sum::<usize>() < total {
        assert!(
            Instant::now() < deadline,
            "all delivered within 20 s: {got:?}"
        );
        tokio::select! {
            Some(m) = a.rx.recv() => { m.double_ack().await.unwrap(); got.entry("a").or_default().push(seen(&m)) }
            Some(m) = b.rx.recv() => { m.double_ack().await.unwrap(); got.entry("b").or_default().push(seen(&m)) }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let mut tim = Vec::new();
    while tim.len() < 8 {
        let m = t.next(10).await.expect("the Tencent messages");
        tim.push(seen(&m));
    }

    for (who, owned) in [("a", 0..4), ("b", 4..8)] {
        let mut per_subject: HashMap<String, Vec<u32>> = HashMap::new();
        for (subject, payload) in &got[who] {
            let (tenant, _, user) = s.parse_cec(subject).unwrap();
            let p = s.partition_token(subject).unwrap();
            assert!(owned.contains(&p), "{who} got {subject}");
            assert_eq!(p, contract::partition::of(tenant, user, n));
            per_subject
                .entry(subject.clone())
                .or_default()
                .push(payload.parse().unwrap());
        }
        for (subject, seq) in per_subject {
            assert_eq!(seq, (0..per_user as u32).collect::<Vec<_>>(), "{subject}");
        }
    }
    assert!(!got["a"].is_empty() && !got["b"].is_empty());
    for (subject, _) in &tim {
        assert!(s.parse_tim(subject).is_some(), "{subject}");
    }
    // Nothing else comes.
    assert!(a.next(1).await.is_none());
    assert!(b.next(1).await.is_none());
    assert!(t.next(1).await.is_none());
    for r in [a, b, t] {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_moves_to_another_follower_without_loss_or_repeat() {
    let server = nats().await;
    let (_client, js) = connect(&server).await;
    let n = 4;
    let setup = setup(n, Duration::from_secs(10));
    let s = subjects();
    partitioned::ensure_partitioned(&js, &s, &setup)
        .await
        .unwrap();
    let users = users_in("acme", 2, n, 3);
    let total = 300usize;
    // Published steadily while the partition moves.
    let publisher = {
        let (js, s, users) = (js.clone(), s.clone(), users.clone());
        tokio::spawn(async move {
            for i in 0..total {
                let u = &users[i % users.len()];
                publish(&js, s.cec_up("acme", u), i.to_string()).await;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    let mut a = follow(&js, &setup, Kind::CecUp, &[0, 1, 2, 3]);
    let mut b = follow(&js, &setup, Kind::CecUp, &[]);
    let mut on_a = Vec::new();
    while on_a.len() < 80 {
        let m = a.next(10).await.expect("A consumes");
        on_a.push(seen(&m));
    }
    // A hands partition 2 back: stops pulling, hands back what came after; what it had is
    // acknowledged; then B gains it.
    a.own(&[0, 1, 3]);
    a.stopped(2).await;
    while let Ok(m) = a.rx.try_recv() {
        m.double_ack().await.unwrap();
        on_a.push(seen(&m));
    }
    b.own(&[2]);
    let mut on_b = Vec::new();
    while on_a.len() + on_b.len() < total {
        let m = b
            .next(10)
            .await
            .unwrap_or_else(|| panic!("B gets the rest: {} + {}", on_a.len(), on_b.len()));
        on_b.push(seen(&m));
    }
    publisher.await.unwrap();
    assert!(a.next(1).await.is_none(), "A gets nothing more");
    assert!(b.next(1).await.is_none(), "nothing is delivered twice");

    let mut all = HashSet::new();
    for (subject, payload) in on_a.iter().chain(&on_b) {
        assert!(
            all.insert((subject.clone(), payload.clone())),
            "{subject} {payload} delivered once"
        );
    }
    assert_eq!(all.len(), total);
    // Per user: A's in order, B's in order, and all of A's before B's.
    for u in &users {
        let seq = |list: &[(String, String)]| -> Vec<usize> {
            list.iter()
                .filter(|(subject, _)| s.parse_cec(subject).map(|(_, _, x)| x) == Some(u.as_str()))
                .map(|(_, p)| p.parse().unwrap())
                .collect()
        };
        let (sa, sb) = (seq(&on_a), seq(&on_b));
        let mut both = sa.clone();
        both.extend(&sb);
        assert!(
            both.windows(2).all(|w| w[0] < w[1]),
            "{u}: A {sa:?} then B {sb:?}"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pin_keeps_a_second_puller_out_until_released() {
    let server = nats().await;
    let (_client, js) = connect(&server).await;
    // A long lease: the pin of a client that stopped pulling lasts that long.
    let setup = setup(1, Duration::from_secs(60));
    let s = subjects();
    partitioned::ensure_partitioned(&js, &s, &setup)
        .await
        .unwrap();
    let mut a = follow(&js, &setup, Kind::CecUp, &[0]);
    publish(&js, s.cec_up("acme", "u"), "0".into()).await;
    assert_eq!(a.next(10).await.map(|m| seen(&m).1).as_deref(), Some("0"));

    // A second client pulling the same consumer in the same group, without unpinning.
    let consumer: PullConsumer = js
        .get_stream(s.in_stream())
        .await
        .unwrap()
        .get_consumer(&partitioned::consumer_name(Kind::CecUp, 0))
        .await
        .unwrap();
    let mut other = consumer
        .stream()
        .group(GROUP)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    for i in 1..=5 {
        publish(&js, s.cec_up("acme", "u"), i.to_string()).await;
    }
    for i in 1..=5 {
        assert_eq!(
            a.next(10).await.map(|m| seen(&m).1),
            Some(i.to_string()),
            "the pinned follower gets everything"
        );
    }
    assert!(
        timeout(Duration::from_millis(1500), other.next())
            .await
            .is_err(),
        "the standby puller gets nothing"
    );

    // A stops pulling: its pin lasts (the lease), so the standby still gets nothing...
    a.own(&[]);
    a.stopped(0).await;
    publish(&js, s.cec_up("acme", "u"), "6".into()).await;
    assert!(
        timeout(Duration::from_secs(2), other.next()).await.is_err(),
        "no delivery while the old pin holds"
    );
    // ...until the pin is released.
    partitioned::unpin(&js, &s, Kind::CecUp, 0).await.unwrap();
    let m = timeout(Duration::from_secs(5), other.next())
        .await
        .expect("the standby gets the pin")
        .unwrap()
        .unwrap();
    assert_eq!(seen(&m).1, "6");
    m.double_ack().await.unwrap();
    // Releasing a pin nobody holds is fine too.
    partitioned::unpin(&js, &s, Kind::Tim, 0).await.unwrap();
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_consumer_stream_is_switched_and_drained_before_partitions_are_pulled() {
    let server = nats().await;
    let (_client, js) = connect(&server).await;
    let s = subjects();
    let nats_cfg = config::NatsConfig::default();
    // The single-consumer layout, holding messages.
    streams::ensure_streams(&js, &s, &nats_cfg).await.unwrap();
    let users: Vec<String> = (0..10).map(|i| format!("u{i}")).collect();
    for u in &users {
        publish(&js, s.cec_up("acme", u), "old".into()).await;
    }

    let n = 4;
    let setup = setup(n, Duration::from_secs(10));
    partitioned::ensure_partitioned(&js, &s, &setup)
        .await
        .unwrap();
    // The idle Tencent consumer is gone; the CEC one holds the old messages.
    assert_eq!(
        partitioned::legacy_pending(&js, &s, Kind::Tim)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        partitioned::legacy_pending(&js, &s, Kind::CecUp)
            .await
            .unwrap(),
        Some(10)
    );
    for u in &users {
        publish(&js, s.cec_up("acme", u), "new".into()).await;
    }

    let mut a = follow(&js, &setup, Kind::CecUp, &[0, 1]);
    let mut b = follow(&js, &setup, Kind::CecUp, &[2, 3]);
    // A (owner of partition 0) drains the single consumer: every old message, whatever its
    // partition, with the subject the service published on.
    let mut old = Vec::new();
    while old.len() < users.len() {
        let m = timeout(Duration::from_secs(10), a.rx.recv())
            .await
            .expect("the old messages")
            .unwrap();
        let (subject, payload) = seen(&m);
        assert_eq!(payload, "old", "{subject}");
        assert_eq!(s.partition_token(&subject), None, "{subject}");
        old.push(m);
    }
    // Not yet acknowledged: nobody pulls the partitions.
    assert!(
        timeout(Duration::from_millis(1500), b.rx.recv())
            .await
            .is_err()
    );
    assert!(
        timeout(Duration::from_millis(10), a.rx.recv())
            .await
            .is_err()
    );
    for m in old {
        m.double_ack().await.unwrap();
    }
    // Then the single consumer is deleted and the partitions are pulled.
    let mut new = 0;
    let deadline = Instant::now() + Duration::from_secs(15);
    while new < users.len() {
        assert!(Instant::now() < deadline, "the new messages within 15 s");
        tokio::select! {
            Some(m) = a.rx.recv() => {
                let (subject, payload) = seen(&m);
                assert_eq!(payload, "new");
                assert!(s.partition_token(&subject).is_some_and(|p| p < 2), "{subject}");
                m.double_ack().await.unwrap();
                new += 1;
            }
            Some(m) = b.rx.recv() => {
                let (subject, payload) = seen(&m);
                assert_eq!(payload, "new");
                assert!(s.partition_token(&subject).is_some_and(|p| p >= 2), "{subject}");
                m.double_ack().await.unwrap();
                new += 1;
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    assert_eq!(
        partitioned::legacy_pending(&js, &s, Kind::CecUp)
            .await
            .unwrap(),
        None
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_outlives_a_deleted_consumer_and_a_server_restart() {
    let mut server = nats().await;
    let (_client, js) = connect(&server).await;
    let setup = setup(1, Duration::from_secs(10));
    let s = subjects();
    partitioned::ensure_partitioned(&js, &s, &setup)
        .await
        .unwrap();
    let mut a = follow(&js, &setup, Kind::CecUp, &[0]);
    publish(&js, s.cec_up("acme", "u"), "0".into()).await;
    assert_eq!(a.next(10).await.map(|m| seen(&m).1).as_deref(), Some("0"));

    // Deleted behind its back: made again, as the single consumers' loops do.
    let name = partitioned::consumer_name(Kind::CecUp, 0);
    let stream = js.get_stream(s.in_stream()).await.unwrap();
    stream.delete_consumer(&name).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while stream.consumer_info(&name).await.is_err() {
        assert!(Instant::now() < deadline, "the consumer is made again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publish(&js, s.cec_up("acme", "u"), "1".into()).await;
    assert_eq!(a.next(15).await.map(|m| seen(&m).1).as_deref(), Some("1"));

    // The server restarts (pins are forgotten; the open pull request is lost).
    server.restart().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let sent = async {
            js.publish(s.cec_up("acme", "u"), "2".into())
                .await?
                .await
                .map_err(async_nats::Error::from)
        };
        if sent.await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "publishing works again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(a.next(15).await.map(|m| seen(&m).1).as_deref(), Some("2"));
    assert!(a.next(1).await.is_none());
    a.shutdown().await;
}
