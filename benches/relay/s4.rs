//! S4, Tencent robot streaming: N streams, each fed `rate` chunks per second on `_IN` for a
//! window, against the simulator's 200 calls/s limit. Figures: p50/p99 delay from a chunk's
//! publish to its receipt by the simulator's `send_stream_msg`, calls per chunk, rate-limit
//! answers (must be 0), chunks out of order (must be 0), CPU of every process.
//!
//! Chunks are published by a child process (`s4-publish`), so that the bench process's CPU is the
//! simulator's; each chunk's text is `<index>@<unix µs>;`, read back by the tap in front of the
//! simulator. Baseline (`baseline-stream`, a child process): a bare JetStream pull consumer that
//! merges each stream's pending chunks into one call, serves the streams round-robin under the
//! relay's own limiter ([`RateLimiter::for_limit`]) with the same [`TimClient`] and HTTP client,
//! and acks a call's chunks once it is accepted — no database, no relay logic.

use std::collections::{HashMap, VecDeque};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::jetstream;
use futures::StreamExt;
use relay::timlink::ratelimit::RateLimiter;
use sim::SimConfig;
use tim::TimClient;
use tim::wire::{MAX_BODY_BYTES, StreamMsgRequest};

use crate::rig::{self, CpuMeter, Relay, RelayOptions, Sim};

/// The Tencent app's name in the relay's configuration.
const APP: &str = "bench";
/// The robot account every stream is sent from.
const ROBOT: &str = "@RBT#bench";
/// The app's (and the simulator's) calls per second.
const LIMIT: u32 = 200;
/// Unacknowledged chunks JetStream lets either side hold, by default. A chunk is acknowledged
/// only once the call carrying it is accepted (and, in the relay, saved), so this must cover the
/// chunks published during one round of every stream: N × rate × N / LIMIT (100,000 at N =
/// 1,000); the relay's own default (10,000) does not.
pub const MAX_ACK_PENDING: i64 = 200_000;
/// Seconds of the window whose chunks are not counted (the first call of each stream, the
/// JetStream consumer's start).
const WARMUP_S: u64 = 3;

/// One S4 run's parameters.
#[derive(Clone, Copy)]
pub struct Params {
    pub streams: usize,
    pub rate: u32,
    pub secs: u64,
    /// `max_ack_pending` of both sides' consumers.
    pub max_ack_pending: i64,
}

struct Figures {
    published: u64,
    publish_rate: f64,
    chunks: usize,
    measured: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    calls: u64,
    rate_limited: u64,
    out_of_order: u64,
    missing: u64,
    split: String,
}

/// Runs S4 for every N; prints one row per side and a ratio.
pub async fn run(ns: &[usize], rate: u32, secs: u64, max_ack_pending: i64) -> Result<()> {
    println!(
        "\n## S4 Tencent robot streaming ({rate} chunks/s per stream for {secs} s, limit {LIMIT} calls/s; \
         delays of chunks published after the first {WARMUP_S} s; max_ack_pending {max_ack_pending})\n\n\
         | N streams | side | chunks/s published | chunks | delay p50 ms | p99 ms | max ms | calls | calls/chunk | rate-limited | out of order | missing | CPU split (% of a core, publish window) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for &n in ns {
        one(Params {
            streams: n,
            rate,
            secs,
            max_ack_pending,
        })
        .await?;
    }
    let per_s = 1.0 / RateLimiter::for_limit(LIMIT).interval().as_secs_f64();
    println!(
        "\nThe bound of any streamer: N streams sharing {per_s:.0} calls/s (the relay's limiter, 5 % under \
         {LIMIT}) get a call each every N / {per_s:.0} s at best, and a chunk waits for its stream's next \
         call: delay p50 ≥ ≈ N / {:.0} s, p99 ≥ ≈ 0.99 × N / {per_s:.0} s.",
        2.0 * per_s
    );
    Ok(())
}

async fn one(p: Params) -> Result<()> {
    let nats = rig::start_nats().await?;
    let nats_pid = nats.pid().unwrap_or(0);
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let sim = Sim::start().await?;

    let r = {
        let dir = tempfile::tempdir()?;
        let db = crate::s2::Db::new("sqlite").await?;
        let mut relay = Relay::start_with(
            &RelayOptions {
                dir: dir.path(),
                store_url: db.url(),
                nats_url: &nats.url(),
                sim_url: &sim.base_url,
                poll_interval: Duration::from_secs(1),
                workers: None,
            },
            &format!("max_ack_pending = {}", p.max_ack_pending),
            &tim_section(&sim.base_url),
        )?;
        relay.wait_ready(&js).await?;
        let subject = format!("{}.tim.{APP}.stream.u", rig::PREFIX);
        measure(
            &sim,
            p,
            ("relay", relay.pid()),
            nats_pid,
            &nats.url(),
            &subject,
        )
        .await
        .with_context(|| relay.log_tail())?
    };
    let b = {
        let base = rig::BaselineProcess::spawn(&[
            "baseline-stream".into(),
            "--nats".into(),
            nats.url(),
            "--sim".into(),
            sim.base_url.clone(),
            "--max-ack-pending".into(),
            p.max_ack_pending.to_string(),
        ])
        .await?;
        measure(
            &sim,
            p,
            ("baseline", base.pid()),
            nats_pid,
            &nats.url(),
            "base.tim.u",
        )
        .await?
    };
    for (side, f) in [("relay", &r), ("baseline", &b)] {
        println!(
            "| {} | {side} | {:.0} ({} in all) | {} ({} measured) | {:.0} | {:.0} | {:.0} | {} | {:.4} | {} | {} | {} | {} |",
            p.streams,
            f.publish_rate,
            f.published,
            f.chunks,
            f.measured,
            f.p50_ms,
            f.p99_ms,
            f.max_ms,
            f.calls,
            f.calls as f64 / f.chunks.max(1) as f64,
            f.rate_limited,
            f.out_of_order,
            f.missing,
            f.split
        );
    }
    println!(
        "| {} | **ratio relay/baseline** | | | {:.2} | **{:.2}** | | | {:.2} | | | | |",
        p.streams,
        r.p50_ms / b.p50_ms,
        r.p99_ms / b.p99_ms,
        (r.calls as f64 / r.chunks.max(1) as f64) / (b.calls as f64 / b.chunks.max(1) as f64),
    );
    Ok(())
}

/// The relay's `[[tim]]` app on the simulator's default Tencent app.
fn tim_section(sim_url: &str) -> String {
    let t = SimConfig::default().tim;
    format!(
        r#"[[tim]]
name = "{APP}"
base_url = "{sim_url}"
sdkappid = {sdkappid}
secret_key = "{key}"
admin_identifier = "{admin}"
rate_limit = {LIMIT}
stream_idle_timeout = "30s"
"#,
        sdkappid = t.sdkappid,
        key = t.secret_key,
        admin = t.admin_identifier,
    )
}

/// The same app for the baseline's client.
fn tim_app(sim_url: &str) -> Result<config::TimApp> {
    let t = SimConfig::default().tim;
    Ok(serde_json::from_value(serde_json::json!({
        "name": APP,
        "base_url": sim_url,
        "sdkappid": t.sdkappid,
        "secret_key": t.secret_key,
        "admin_identifier": t.admin_identifier,
        "rate_limit": LIMIT,
    }))?)
}

/// Publishes through the `s4-publish` child, waits for every chunk to reach the simulator, and
/// reads the figures off the tap.
async fn measure(
    sim: &Sim,
    p: Params,
    who: (&'static str, u32),
    nats_pid: u32,
    nats_url: &str,
    subject_prefix: &str,
) -> Result<Figures> {
    let stats0 = sim.sim.tim().stats();
    sim.taps.start();
    let publisher = Publisher::spawn(&[
        "s4-publish".into(),
        "--nats".into(),
        nats_url.into(),
        "--subject-prefix".into(),
        subject_prefix.into(),
        "--stream-prefix".into(),
        format!("{}-", who.0),
        "--streams".into(),
        p.streams.to_string(),
        "--rate".into(),
        p.rate.to_string(),
        "--secs".into(),
        p.secs.to_string(),
    ])
    .await?;
    let meter = CpuMeter::start(&[who, ("sim", std::process::id()), ("nats", nats_pid)])?;
    eprintln!("s4 {}: N = {}, publishing…", who.0, p.streams);
    // The publisher reports its own CPU: it is gone before /proc could be read.
    let (published, publisher_cpu) = publisher.finish().await?;
    let mut split = meter.stop()?;
    split.by.push(("publisher", publisher_cpu));
    eprintln!(
        "s4 {}: published {published} in {:.1} s; waiting for the simulator to have them all",
        who.0,
        split.wall.as_secs_f64()
    );
    let per_stream = u64::from(p.rate) * p.secs;
    let expected = per_stream * p.streams as u64;
    let last = u32::try_from(per_stream.saturating_sub(1)).unwrap_or(u32::MAX);
    let _ = rig::wait_until(
        Duration::from_secs(60 + p.secs),
        "every chunk upstream",
        || async {
            let tap = rig::lock(&sim.taps.chunks);
            Ok(tap.last.len() >= p.streams && tap.last.values().all(|l| *l >= last))
        },
    )
    .await;
    sim.taps.stop();
    eprintln!("s4 {}: done", who.0);
    let stats = sim.sim.tim().stats();
    let tap = std::mem::take(&mut *rig::lock(&sim.taps.chunks));
    let warm = u32::try_from(u64::from(p.rate) * WARMUP_S).unwrap_or(u32::MAX);
    let mut delays: Vec<Duration> = tap
        .delays
        .iter()
        .filter(|(i, _)| *i >= warm)
        .map(|(_, d)| *d)
        .collect();
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    Ok(Figures {
        published,
        publish_rate: published as f64 / split.wall.as_secs_f64(),
        chunks: tap.delays.len(),
        measured: delays.len(),
        p50_ms: ms(rig::quantile(&mut delays, 0.5)),
        p99_ms: ms(rig::quantile(&mut delays, 0.99)),
        max_ms: ms(delays.last().copied()),
        calls: stats.calls - stats0.calls,
        rate_limited: stats.rate_limited - stats0.rate_limited,
        out_of_order: tap.out_of_order,
        missing: expected.saturating_sub(tap.delays.len() as u64),
        split: split.summary(),
    })
}

/// The `s4-publish` child: prints `ready`, publishes, prints how many chunks it published and
/// the CPU it used (µs).
struct Publisher {
    child: Child,
    lines: Option<std::io::Lines<std::io::BufReader<std::process::ChildStdout>>>,
}

impl Publisher {
    async fn spawn(args: &[String]) -> Result<Publisher> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("publisher stdout")?;
        let (ready, lines) = tokio::task::spawn_blocking(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            (lines.next(), lines)
        })
        .await?;
        match ready {
            Some(Ok(l)) if l == "ready" => Ok(Publisher {
                child,
                lines: Some(lines),
            }),
            other => bail!("s4-publish did not start (said {other:?})"),
        }
    }

    /// Waits for the publisher's last word: how many chunks it published, and the CPU it used.
    async fn finish(mut self) -> Result<(u64, Duration)> {
        let lines = self.lines.take().context("publisher output already read")?;
        let last = tokio::task::spawn_blocking(move || lines.last()).await?;
        let status = self.child.wait()?;
        let parsed = match last {
            Some(Ok(l)) => l.split_once(' ').and_then(|(n, cpu)| {
                Some((n.parse().ok()?, Duration::from_micros(cpu.parse().ok()?)))
            }),
            _ => None,
        };
        parsed.with_context(|| format!("s4-publish ended ({status}) without a count"))
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The publisher child: stream `i` is `<stream_prefix><i>` of user `u<i>` on
/// `<subject_prefix><i>`; every 5 ms a tenth of the streams get their next chunk, so each stream
/// gets `rate` a second (at `rate` = 20); the last chunk has `finish`. Up to 4,096 publishes
/// await their JetStream ack (under async-nats's own bound of 5,000, which would deadlock).
pub async fn publish(
    nats_url: &str,
    subject_prefix: &str,
    stream_prefix: &str,
    streams: usize,
    rate: u32,
    secs: u64,
) -> Result<()> {
    let js = jetstream::new(async_nats::connect(nats_url).await?);
    println!("ready");
    let per_stream = u64::from(rate) * secs;
    // Each stream's chunk period, cut into 5 ms slots; stream i publishes in slot i % slots.
    let period = Duration::from_secs(1) / rate.max(1);
    let slots = (period.as_millis() as u64 / 5).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut acks = VecDeque::new();
    let mut published = 0u64;
    for t in 0..per_stream * slots {
        tick.tick().await;
        let idx = t / slots;
        let slot = (t % slots) as usize;
        for i in (slot..streams).step_by(slots as usize) {
            let body = serde_json::json!({
                "streamId": format!("{stream_prefix}{i}"),
                "from": ROBOT,
                "chunk": format!("{idx}@{};", rig::unix_us()),
                "finish": idx + 1 == per_stream,
            });
            acks.push_back(
                js.publish(format!("{subject_prefix}{i}"), body.to_string().into())
                    .await?,
            );
            published += 1;
            if acks.len() >= 4096
                && let Some(a) = acks.pop_front()
            {
                a.await?;
            }
        }
    }
    for a in acks {
        a.await?;
    }
    let cpu = rig::cpu_time(std::process::id())?;
    println!("{published} {}", cpu.as_micros());
    Ok(())
}

/// One stream in the baseline.
#[derive(Default)]
struct BaseStream {
    user: String,
    msg_key: Option<String>,
    pending: VecDeque<(jetstream::Message, String, bool)>,
    in_flight: bool,
    queued: bool,
    finished: bool,
}

/// The baseline child: a stream `BASE_TIM` on `base.tim.>` and a durable pull consumer; chunks
/// are merged per `streamId`, streams are served round-robin under the relay's limiter, and a
/// call's chunks are acked once Tencent accepted it.
pub async fn baseline(nats_url: &str, sim_url: &str, max_ack_pending: i64) -> Result<()> {
    let client = TimClient::new(cec::CecClient::http_client()?, tim_app(sim_url)?);
    let js = jetstream::new(async_nats::connect(nats_url).await?);
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: "BASE_TIM".into(),
            subjects: vec!["base.tim.>".into()],
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .get_or_create_consumer(
            "base",
            jetstream::consumer::pull::Config {
                durable_name: Some("base".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending,
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer.messages().await?;
    println!("ready");
    let limiter = RateLimiter::for_limit(LIMIT);
    let (done_tx, mut done_rx) =
        tokio::sync::mpsc::unbounded_channel::<(String, Option<String>, bool)>();
    let mut streams: HashMap<String, BaseStream> = HashMap::new();
    let mut ready: VecDeque<String> = VecDeque::new();
    loop {
        // Start every call the limiter allows now.
        let mut wake = None;
        while let Some(key) = ready.front().cloned() {
            if let Err(at) = limiter.try_acquire_at(tokio::time::Instant::now()) {
                wake = Some(at);
                break;
            }
            ready.pop_front();
            let Some(s) = streams.get_mut(&key) else {
                continue;
            };
            s.queued = false;
            s.in_flight = true;
            let mut text = String::new();
            let mut taken = Vec::new();
            let mut finish = false;
            while let Some((_, t, _)) = s.pending.front() {
                if !taken.is_empty() && text.len() + t.len() > MAX_BODY_BYTES - 1024 {
                    break;
                }
                let Some((m, t, f)) = s.pending.pop_front() else {
                    break;
                };
                text.push_str(&t);
                taken.push(m);
                finish = f;
                if f {
                    break;
                }
            }
            let req = StreamMsgRequest {
                from_account: ROBOT.into(),
                to_account: s.user.clone(),
                chunk: text,
                msg_key: s.msg_key.clone(),
                finish: finish.then_some(1),
            };
            let (client, tx) = (client.clone(), done_tx.clone());
            tokio::spawn(async move {
                match client.send_stream_msg(&req).await {
                    Ok(a) => {
                        futures::future::join_all(taken.iter().map(|m| m.ack())).await;
                        let _ = tx.send((key, a.msg_key, finish));
                    }
                    Err(e) => {
                        // Dropped unacked: JetStream delivers the chunks again after ack_wait.
                        eprintln!("baseline send_stream_msg: {e}");
                        let _ = tx.send((key, req.msg_key, false));
                    }
                }
            });
        }
        let sleep = tokio::time::sleep_until(
            wake.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600)),
        );
        tokio::select! {
            m = messages.next() => {
                let Some(m) = m else { break };
                let m = m.map_err(anyhow::Error::msg)?;
                let user = m.subject.rsplit('.').next().unwrap_or_default().to_owned();
                let c: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                let key = c.get("streamId").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
                let text = c.get("chunk").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
                let finish = c.get("finish").and_then(serde_json::Value::as_bool).unwrap_or(false);
                let s = streams.entry(key.clone()).or_insert_with(|| BaseStream {
                    user,
                    ..Default::default()
                });
                if s.finished {
                    let _ = m.ack().await;
                    continue;
                }
                s.pending.push_back((m, text, finish));
                if !s.in_flight && !s.queued {
                    s.queued = true;
                    ready.push_back(key);
                }
            }
            Some((key, msg_key, finished)) = done_rx.recv() => {
                if let Some(s) = streams.get_mut(&key) {
                    s.in_flight = false;
                    if s.msg_key.is_none() {
                        s.msg_key = msg_key.filter(|k| !k.is_empty());
                    }
                    s.finished = finished;
                    if !s.pending.is_empty() && !finished {
                        s.queued = true;
                        ready.push_back(key);
                    }
                }
            }
            _ = sleep, if wake.is_some() => {}
        }
    }
    Ok(())
}
