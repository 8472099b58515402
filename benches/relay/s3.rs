//! S3, uplink throughput: M UpMessages published on `_IN` until the simulator has received their
//! sends (msg/s), then latency from publish to upstream receipt at a fixed 1,000 msg/s. Baseline
//! (`baseline-up`, a child process): a bare JetStream pull consumer that sends each message with
//! the same CEC client and acks it, no database and no relay logic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use sim::Endpoint;

use crate::rig::{self, BaselineProcess, CpuMeter, Relay, RelayOptions, Sim};
use crate::s2::Db;

/// Sends in flight in the baseline: the relay's `max_concurrent_sends`.
const BASE_SENDS: usize = 256;

struct Figures {
    secs: f64,
    rate: f64,
    cpu_us: f64,
    split: String,
    p50_ms: f64,
    p99_ms: f64,
    missing: usize,
}

/// `subject(user)` for the side measured, e.g. `ccrelay.cec.bench.up.u3`.
type Subject = fn(&str) -> String;

/// What both sides of one S3 run share.
struct Setup<'a> {
    js: &'a async_nats::jetstream::Context,
    sim: &'a Sim,
    nats_pid: u32,
    m: usize,
    k: usize,
    rate_secs: u64,
}

async fn measure(s: &Setup<'_>, who: (&'static str, u32), subject: Subject) -> Result<Figures> {
    let Setup {
        js,
        sim,
        nats_pid,
        m,
        k,
        rate_secs,
    } = *s;
    let body = |id: &str, i: usize| format!(r#"{{"content":"hello {i}","messageId":"{id}"}}"#);
    // Throughput: everything at once.
    let sends0 = sim.calls(Endpoint::Send);
    let meter = CpuMeter::start(&[who, ("sim", std::process::id()), ("nats", nats_pid)])?;
    let t0 = Instant::now();
    rig::publish_all(
        js,
        (0..m).map(|i| {
            let id = format!("{}t{i}", who.0);
            (subject(&format!("u{}", i % k)), body(&id, i))
        }),
        1024,
    )
    .await?;
    rig::wait_until(
        Duration::from_secs(60 + m as u64 / 200),
        "every send upstream",
        || async { Ok(sim.calls(Endpoint::Send) >= sends0 + m as u64) },
    )
    .await?;
    let secs = t0.elapsed().as_secs_f64();
    let split = meter.stop()?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Latency at 1,000 msg/s.
    sim.taps.start();
    let n = (rate_secs * 1000) as usize;
    let mut published = Vec::with_capacity(n);
    let mut acks = Vec::with_capacity(n);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..n {
        tick.tick().await;
        let id = format!("{}l{i}", who.0);
        let at = Instant::now();
        acks.push(
            js.publish(subject(&format!("u{}", i % k)), body(&id, i).into())
                .await?,
        );
        published.push((id, at));
    }
    futures::future::try_join_all(acks.into_iter().map(std::future::IntoFuture::into_future))
        .await?;
    let _ = rig::wait_until(Duration::from_secs(30), "latency sends", || async {
        Ok(published
            .iter()
            .all(|(id, _)| sim.taps.send_received(id).is_some()))
    })
    .await;
    let mut lat: Vec<Duration> = published
        .iter()
        .filter_map(|(id, at)| {
            sim.taps
                .send_received(id)
                .map(|r| r.saturating_duration_since(*at))
        })
        .collect();
    sim.taps.stop();
    let missing = n - lat.len();
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    Ok(Figures {
        secs,
        rate: m as f64 / secs,
        cpu_us: split.of(who.0).as_secs_f64() * 1e6 / m as f64,
        split: split.summary(),
        p50_ms: ms(rig::quantile(&mut lat, 0.5)),
        p99_ms: ms(rig::quantile(&mut lat, 0.99)),
        missing,
    })
}

fn relay_subject(user: &str) -> String {
    format!("{}.cec.{}.up.{user}", rig::PREFIX, rig::TENANT)
}

fn base_subject(user: &str) -> String {
    format!("base.up.{user}")
}

/// Runs S3 for every M; prints one row per side and a ratio.
pub async fn run(stores: &[String], ms: &[usize], k: usize, rate_secs: u64) -> Result<()> {
    println!(
        "\n## S3 uplink throughput (K = {k} sessions; latency over {rate_secs} s at 1,000 msg/s)\n\n\
         | store | M | side | seconds | msg/s | CPU µs/msg | latency p50 ms | p99 ms | not received | CPU split (% of a core) |\n\
         |---|---|---|---|---|---|---|---|---|---|"
    );
    for store in stores {
        for &m in ms {
            one(store, m, k, rate_secs).await?;
        }
    }
    Ok(())
}

/// One relay run and one baseline run of S3.
async fn one(store: &str, m: usize, k: usize, rate_secs: u64) -> Result<()> {
    {
        let nats = rig::start_nats().await?;
        let nats_pid = nats.pid().unwrap_or(0);
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
        let sim = Sim::start().await?;
        let dir = tempfile::tempdir()?;
        let db = Db::new(store).await?;
        let mut relay = Relay::start(&RelayOptions {
            dir: dir.path(),
            store_url: db.url(),
            nats_url: &nats.url(),
            sim_url: &sim.base_url,
            poll_interval: Duration::from_secs(1),
            workers: None,
        })?;
        relay.wait_ready(&js).await?;
        rig::open_sessions(&js, &sim, "u", k).await?;
        let setup = Setup {
            js: &js,
            sim: &sim,
            nats_pid,
            m,
            k,
            rate_secs,
        };
        let r = measure(&setup, ("relay", relay.pid()), relay_subject)
            .await
            .with_context(|| relay.log_tail())?;
        drop(relay);
        db.drop_db().await?;

        let base = BaselineProcess::spawn(&[
            "baseline-up".into(),
            "--nats".into(),
            nats.url(),
            "--sim".into(),
            sim.base_url.clone(),
            "--users".into(),
            k.to_string(),
        ])
        .await?;
        let b = measure(&setup, ("baseline", base.pid()), base_subject).await?;
        drop(base);
        for (side, f) in [("relay", &r), ("baseline", &b)] {
            println!(
                "| {store} | {m} | {side} | {:.2} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} |",
                f.secs, f.rate, f.cpu_us, f.p50_ms, f.p99_ms, f.missing, f.split
            );
        }
        println!(
            "| {store} | {m} | **ratio relay/baseline** | | **{:.2}** | {:.2} | | {:.2} | | |",
            r.rate / b.rate,
            r.cpu_us / b.cpu_us,
            r.p99_ms / b.p99_ms
        );
    }
    Ok(())
}

/// The baseline child: for users `u<i>` (its own users: their sessions are opened here, with
/// applyToken and a CONNECT send), a stream `BASE_IN` on `base.up.>` and a durable pull consumer;
/// each message is sent upstream as the user's CHAT with the same client, then acked.
pub async fn baseline(nats_url: &str, sim_url: &str, users: usize) -> Result<()> {
    let cec = rig::cec_client(sim_url)?;
    let ch = cec.tenant().channel_config_id.clone();
    for i in 0..users {
        let user = format!("u{i}");
        cec.apply_token(&user, "bench", "zh", &ch).await?;
        cec.send(&send_request(&user, &ch, "CONNECT", "", None))
            .await?;
    }
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await?);
    let stream = js
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "BASE_IN".into(),
            subjects: vec!["base.up.>".into()],
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .get_or_create_consumer(
            "base",
            async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("base".into()),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: 4096,
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer.messages().await?;
    println!("ready");
    let sem = Arc::new(tokio::sync::Semaphore::new(BASE_SENDS));
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(anyhow::Error::msg)?;
        let permit = sem.clone().acquire_owned().await?;
        let (cec, ch) = (cec.clone(), ch.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let user = msg
                .subject
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_owned();
            let up: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
            let content = up
                .get("content")
                .and_then(|c| c.as_str())
                .unwrap_or_default();
            let id = up
                .get("messageId")
                .and_then(|c| c.as_str())
                .map(str::to_owned);
            if let Err(e) = cec
                .send(&send_request(&user, &ch, "CHAT", content, id))
                .await
            {
                eprintln!("baseline send: {e}");
            }
            if let Err(e) = msg.ack().await {
                eprintln!("baseline ack: {e}");
            }
        });
    }
    Ok(())
}

fn send_request(
    user: &str,
    channel_config_id: &str,
    control_type: &str,
    content: &str,
    message_id: Option<String>,
) -> cec::wire::SendRequest {
    cec::wire::SendRequest {
        channel: "WEB".into(),
        content: content.into(),
        control_type: control_type.into(),
        from: user.into(),
        media_type: "TEXT".into(),
        source_type: "CUSTOMER".into(),
        to: channel_config_id.into(),
        message_id,
        sender_nickname: None,
        timestamp: None,
        user_agent: None,
        sender_avatar: None,
        trans_data: None,
    }
}
