//! The scheduler against the in-process fake ([`crate::timlink::fake`]), in real time.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::timlink::fake::FakeTim;
use contract::Subjects;
use store::DynStore;

struct Rig {
    fake: Arc<FakeTim>,
    handle: StreamHandle,
    store: DynStore,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

async fn rig(fake_limit: usize, limiter: u32, idle: Duration) -> Rig {
    let store = store::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    rig_on(store, fake_limit, limiter, idle).await
}

async fn rig_on(store: DynStore, fake_limit: usize, limiter: u32, idle: Duration) -> Rig {
    let fake = Arc::new(FakeTim::new(fake_limit, Duration::from_millis(3)));
    rig_with(store, fake, limiter, idle)
}

fn rig_with(store: DynStore, fake: Arc<FakeTim>, limiter: u32, idle: Duration) -> Rig {
    rig_budget(store, fake, limiter, idle, Default::default())
}

fn rig_budget(
    store: DynStore,
    fake: Arc<FakeTim>,
    limiter: u32,
    idle: Duration,
    budget: crate::timlink::Budget,
) -> Rig {
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let handle = spawn(
        StreamCtx {
            app: "shop".into(),
            upstream: fake.clone(),
            limiter: Arc::new(RateLimiter::for_limit(limiter)),
            sink: Sink {
                store: store.clone(),
                subjects: Subjects::new("ccrelay"),
                cancel: cancel.clone(),
                budget,
                ownership: crate::ownership::Ownership::single(1),
            },
            idle_timeout: idle,
        },
        &tracker,
    );
    Rig {
        fake,
        handle,
        store,
        cancel,
        tracker,
    }
}

impl Rig {
    fn push(
        &self,
        user: &str,
        stream: &str,
        text: &str,
        finish: bool,
        seq: u64,
    ) -> oneshot::Receiver<Disposition> {
        let (tx, rx) = oneshot::channel();
        let pushed = self.handle.push(ChunkIn {
            user: user.into(),
            chunk: TimChunk {
                stream_id: stream.into(),
                from: Some("@RBT#bot".into()),
                chunk: text.into(),
                finish,
            },
            seq,
            received_at: time::OffsetDateTime::now_utc(),
            done: Some(tx),
        });
        assert!(pushed.is_ok());
        rx
    }

    /// Waits until `n` fake streams are finished.
    async fn finished(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let done = self
                .fake
                .with(|s| s.streams.values().filter(|s| s.finished).count());
            if done >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {done} of {n} streams finished in {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

async fn all_acked(rxs: Vec<oneshot::Receiver<Disposition>>) {
    for rx in rxs {
        let d = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("the chunk is answered")
            .expect("the scheduler answered");
        assert_eq!(d, Disposition::Ack);
    }
}

/// The scheduler under load: 500 concurrent streams at 20 chunks per second against a limit of 200
/// calls per second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_streams_at_20_chunks_per_second_stay_under_200_calls_per_second() {
    const STREAMS: usize = 500;
    const CHUNKS: usize = 40; // two seconds at 20/s
    let r = Arc::new(rig(200, 200, Duration::from_secs(30)).await);
    let mut producers = Vec::new();
    for n in 0..STREAMS {
        let r = r.clone();
        producers.push(tokio::spawn(async move {
            let mut rxs = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            for i in 0..CHUNKS {
                tick.tick().await;
                let seq = (n * CHUNKS + i + 1) as u64;
                rxs.push(r.push(
                    &format!("u{n}"),
                    &format!("st{n}"),
                    &format!("{n}:{i};"),
                    i + 1 == CHUNKS,
                    seq,
                ));
            }
            rxs
        }));
    }
    let mut rxs = Vec::new();
    for p in producers {
        rxs.extend(p.await.unwrap());
    }
    r.finished(STREAMS, Duration::from_secs(60)).await;
    all_acked(rxs).await;

    let (rate_limited, max, calls, bad) = r
        .fake
        .with(|s| (s.rate_limited, s.max_in_one_second, s.calls, s.bad_keys));
    eprintln!(
        "{calls} calls, at most {max} in one second, for {} chunks",
        STREAMS * CHUNKS
    );
    assert_eq!(rate_limited, 0, "no call may be over the limit");
    assert!(max <= 200, "{max} calls in one second");
    assert_eq!(bad, 0);
    assert!(
        calls < (STREAMS * CHUNKS) as u64,
        "{calls} calls for {} chunks: waiting chunks are merged",
        STREAMS * CHUNKS
    );
    let streams = r.fake.with(|s| s.streams.clone());
    assert_eq!(streams.len(), STREAMS);
    for st in streams.values() {
        let n: usize = st.to[1..].parse().unwrap();
        let want: String = (0..CHUNKS).map(|i| format!("{n}:{i};")).collect();
        assert_eq!(st.text, want, "stream of {}", st.to);
        assert!(st.finished);
    }
    // Stored too, with a stream.result each.
    for n in [0, 137, 499] {
        let row = r
            .store
            .tim_stream("shop", &format!("st{n}"))
            .await
            .unwrap()
            .unwrap();
        let want: String = (0..CHUNKS).map(|i| format!("{n}:{i};")).collect();
        assert_eq!(row.text, want);
        assert!(row.finished);
        assert_eq!(row.status, MessageStatus::Sent);
        assert_eq!(row.chunks, CHUNKS as i64);
        assert!(row.msg_key.is_some());
        let events = r
            .store
            .events(kind::TIM, "shop", &format!("u{n}"))
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event_type, "stream.result");
        assert!(events[0].ok);
        let body: serde_json::Value = serde_json::from_str(&events[0].body).unwrap();
        assert_eq!(body["MsgKey"], row.msg_key.clone().unwrap().as_str());
        assert_eq!(body["streamId"], format!("st{n}"));
    }
    Arc::try_unwrap(r).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_answer_backs_off_and_retries_without_losing_text() {
    // The relay thinks it may make 100 calls per second; Tencent allows 10.
    let r = rig(10, 100, Duration::from_secs(30)).await;
    let mut rxs = Vec::new();
    for i in 0..10u64 {
        for n in 0..20 {
            rxs.push(r.push(
                &format!("u{n}"),
                &format!("st{n}"),
                &format!("{i},"),
                i == 9,
                i * 20 + n + 1,
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r.finished(20, Duration::from_secs(30)).await;
    all_acked(rxs).await;
    assert!(
        r.fake.with(|s| s.rate_limited) > 0,
        "the fake should have refused some"
    );
    for st in r.fake.with(|s| s.streams.clone()).values() {
        assert_eq!(st.text, "0,1,2,3,4,5,6,7,8,9,");
    }
    r.stop().await;
}

#[tokio::test]
async fn an_idle_stream_is_finished_by_the_relay() {
    let r = rig(100, 100, Duration::from_millis(200)).await;
    let rxs = vec![
        r.push("u1", "st1", "hello, ", false, 1),
        r.push("u1", "st1", "world", false, 2),
    ];
    all_acked(rxs).await;
    r.finished(1, Duration::from_secs(5)).await;
    let st = r.fake.with(|s| s.streams.values().next().cloned()).unwrap();
    assert_eq!(st.text, "hello, world");
    let row = r.store.tim_stream("shop", "st1").await.unwrap().unwrap();
    assert!(row.finished);
    assert_eq!(row.text, "hello, world");
    // A chunk after the end is refused with an error event, and acknowledged.
    all_acked(vec![r.push("u1", "st1", "late", false, 3)]).await;
    let events = r.store.events(kind::TIM, "shop", "u1").await.unwrap();
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["stream.result", "error"]);
    r.stop().await;
}

#[tokio::test]
async fn a_stream_left_open_by_a_restart_is_finished_after_it() {
    // First run: two chunks, no finish, and the relay stops before the stream goes idle.
    let first = rig(100, 100, Duration::from_secs(60)).await;
    let (store, fake) = (first.store.clone(), first.fake.clone());
    all_acked(vec![
        first.push("u1", "st1", "hello, ", false, 1),
        first.push("u1", "st1", "world", false, 2),
    ])
    .await;
    first.stop().await;
    assert!(
        !store
            .tim_stream("shop", "st1")
            .await
            .unwrap()
            .unwrap()
            .finished
    );
    assert_eq!(store.tim_open_streams("shop", 10).await.unwrap().len(), 1);

    // Second run: no chunk of it ever arrives; the relay finishes it, with its MsgKey.
    let second = rig_with(store.clone(), fake.clone(), 100, Duration::from_millis(200));
    second.finished(1, Duration::from_secs(5)).await;
    let st = fake.with(|s| s.streams.values().next().cloned()).unwrap();
    assert_eq!(st.text, "hello, world");
    assert_eq!(fake.with(|s| s.bad_keys), 0, "the same MsgKey was carried");
    // The upstream sees the finish before the relay commits it: wait for the commit.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !store
        .tim_stream("shop", "st1")
        .await
        .unwrap()
        .unwrap()
        .finished
    {
        assert!(
            Instant::now() < deadline,
            "the finished stream was never saved"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(store.tim_open_streams("shop", 10).await.unwrap().is_empty());
    let events = store.events(kind::TIM, "shop", "u1").await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "stream.result");
    second.stop().await;
}

#[tokio::test]
async fn a_final_error_fails_the_stream_with_its_code() {
    let r = rig(100, 100, Duration::from_secs(30)).await;
    r.fake.with(|s| s.stream_faults.push_back(10004));
    all_acked(vec![r.push("u1", "st1", "x", true, 1)]).await;
    let row = r.store.tim_stream("shop", "st1").await.unwrap().unwrap();
    assert_eq!(row.status, MessageStatus::Failed);
    assert_eq!(row.error_code.as_deref(), Some("10004"));
    let events = r.store.events(kind::TIM, "shop", "u1").await.unwrap();
    assert_eq!(events.len(), 1);
    assert!(!events[0].ok);
    let body: serde_json::Value = serde_json::from_str(&events[0].body).unwrap();
    assert_eq!(body["errorCode"], 10004);
    assert_eq!(body["type"], "stream.result");
    r.stop().await;
}

#[tokio::test]
async fn redelivered_chunks_are_skipped_and_a_restart_keeps_the_msg_key() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let fake = Arc::new(FakeTim::new(100, Duration::from_millis(3)));
    let r = rig_with(store.clone(), fake.clone(), 100, Duration::from_secs(30));
    all_acked(vec![r.push("u1", "st1", "a", false, 1)]).await;
    all_acked(vec![r.push("u1", "st1", "a", false, 1)]).await; // redelivered
    r.stop().await;
    // A restart: a new scheduler on the same database, talking to the same Tencent.
    let r = rig_with(store, fake.clone(), 100, Duration::from_secs(30));
    all_acked(vec![
        r.push("u1", "st1", "a", false, 1), // still a redelivery after the restart
        r.push("u1", "st1", "b", true, 2),
    ])
    .await;
    r.finished(1, Duration::from_secs(5)).await;
    assert_eq!(fake.with(|s| s.bad_keys), 0);
    assert_eq!(
        fake.with(|s| s.streams.len()),
        1,
        "the MsgKey was carried over"
    );
    let st = fake.with(|s| s.streams.values().next().cloned()).unwrap();
    assert_eq!(st.text, "ab");
    r.stop().await;
}

#[tokio::test]
async fn a_stream_without_a_robot_account_fails_before_any_call() {
    let r = rig(100, 100, Duration::from_secs(30)).await;
    let (tx, rx) = oneshot::channel();
    let _ = r.handle.push(ChunkIn {
        user: "u1".into(),
        chunk: TimChunk {
            stream_id: "st1".into(),
            from: None,
            chunk: "x".into(),
            finish: true,
        },
        seq: 1,
        received_at: time::OffsetDateTime::now_utc(),
        done: Some(tx),
    });
    all_acked(vec![rx]).await;
    assert_eq!(r.fake.with(|s| s.calls), 0);
    let row = r.store.tim_stream("shop", "st1").await.unwrap().unwrap();
    assert_eq!(row.status, MessageStatus::Failed);
    assert!(row.error_info.unwrap().contains("from"));
    r.stop().await;
}

#[tokio::test]
async fn a_stream_id_of_another_user_is_refused() {
    let r = rig(100, 100, Duration::from_secs(30)).await;
    all_acked(vec![r.push("u1", "st1", "mine", false, 1)]).await;
    all_acked(vec![r.push("u2", "st1", "theirs", false, 2)]).await;
    let events = r.store.events(kind::TIM, "shop", "u2").await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "error");
    assert!(
        events[0].body.contains("another user"),
        "{}",
        events[0].body
    );
    let st = r.fake.with(|s| s.streams.values().next().cloned()).unwrap();
    assert_eq!(st.text, "mine");
    r.stop().await;
}

/// A rig whose calls answer `faults` first, with `budget`.
async fn failing(faults: &[i64], budget: crate::timlink::Budget) -> Rig {
    let store = store::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let fake = Arc::new(FakeTim::new(100, Duration::from_millis(1)));
    fake.with(|s| s.stream_faults.extend(faults));
    rig_budget(store, fake, 100, Duration::from_secs(30), budget)
}

/// The one `stream.result` of `u1` (asserted failed) and the one dead letter.
async fn given_up(r: &Rig) -> (serde_json::Value, store::DeadLetter) {
    let row = r.store.tim_stream("shop", "st1").await.unwrap().unwrap();
    assert_eq!(row.status, MessageStatus::Failed);
    let events = r.store.events(kind::TIM, "shop", "u1").await.unwrap();
    assert_eq!(events.len(), 1);
    assert!(!events[0].ok);
    let body: serde_json::Value = serde_json::from_str(&events[0].body).unwrap();
    assert_eq!(body["type"], "stream.result");
    let mut dead = r.store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "one dead letter");
    let dead = dead.remove(0);
    assert_eq!(body["deadLetter"], dead.id);
    assert_eq!(
        (dead.source.as_str(), dead.message_id.as_deref()),
        ("tim_stream", Some("st1"))
    );
    assert_eq!(dead.subject, "ccrelay.tim.shop.stream.u1");
    (body, dead)
}

#[tokio::test]
async fn a_stream_that_spends_its_attempts_is_given_up_as_a_dead_letter() {
    // Rate-limit answers cost no attempt; three internal errors spend the budget.
    let faults = [
        60007, 10002, 60007, 10002, 10002, 10002, 10002, 10002, 10002, 10002, 10002,
    ];
    let budget = crate::timlink::Budget {
        attempts: 3,
        max_age: Duration::from_secs(600),
    };
    let r = failing(&faults, budget).await;
    let rxs = vec![
        r.push("u1", "st1", "a", false, 1),
        r.push("u1", "st1", "b", true, 2),
    ];
    all_acked(rxs).await;
    assert_eq!(
        r.fake.with(|s| s.calls),
        5,
        "two rate limits and three attempts"
    );
    let (body, dead) = given_up(&r).await;
    assert_eq!(body["reason"], "attempts");
    assert_eq!(body["errorCode"], 10002);
    assert_eq!((dead.reason.as_str(), dead.attempts), ("attempts", 3));
    let chunk: TimChunk = serde_json::from_slice(&dead.payload).unwrap();
    assert_eq!((chunk.chunk.as_str(), chunk.finish), ("ab", true));
    r.stop().await;
}

#[tokio::test]
async fn a_stream_older_than_its_max_age_is_given_up_as_a_dead_letter() {
    // Rate limited for ever: no attempt is spent, the age is.
    let budget = crate::timlink::Budget {
        attempts: 8,
        max_age: Duration::from_millis(300),
    };
    let r = failing(&[60007; 1000], budget).await;
    all_acked(vec![r.push("u1", "st1", "a", true, 1)]).await;
    let (body, dead) = given_up(&r).await;
    assert_eq!(body["reason"], "age");
    assert_eq!(dead.reason, "age");
    r.stop().await;
}
