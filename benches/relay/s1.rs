//! S1, poll fan-out: N open sessions polled every second by the relay, then by a bare loop of
//! the same polls with the same HTTP client (`baseline-poll`, a child process).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use sim::Endpoint;

use crate::rig::{self, BaselineProcess, CpuMeter, Relay, RelayOptions, Sim};

/// Polls in flight at most in the baseline: the relay's default `relay.max_concurrent_polls`.
const POLLS_IN_FLIGHT: usize = 512;

/// What one side (relay or baseline) measured.
struct Side {
    polls_per_s: f64,
    cpu_us_per_poll: f64,
    cpu_pct: f64,
    lag_p50_ms: f64,
    lag_p99_ms: f64,
    split: String,
}

/// Lag of a poll: how much later than one interval after the user's previous poll it came.
fn lags(mut gaps: Vec<Duration>, interval: Duration) -> (f64, f64) {
    let ms = |q: f64, v: &mut Vec<Duration>| {
        rig::quantile(v, q).map_or(f64::NAN, |g| {
            (g.as_secs_f64() - interval.as_secs_f64()) * 1000.0
        })
    };
    (ms(0.5, &mut gaps), ms(0.99, &mut gaps))
}

async fn measure(
    sim: &Sim,
    who: (&'static str, u32),
    nats_pid: u32,
    window: Duration,
    interval: Duration,
) -> Result<Side> {
    let polls0 = sim.calls(Endpoint::Poll);
    sim.taps.start();
    let meter = CpuMeter::start(&[who, ("sim", std::process::id()), ("nats", nats_pid)])?;
    tokio::time::sleep(window).await;
    let split = meter.stop()?;
    let gaps = sim.taps.stop();
    let polls = (sim.calls(Endpoint::Poll) - polls0).max(1) as f64;
    let (lag_p50_ms, lag_p99_ms) = lags(gaps, interval);
    Ok(Side {
        polls_per_s: polls / split.wall.as_secs_f64(),
        cpu_us_per_poll: split.of(who.0).as_secs_f64() * 1e6 / polls,
        cpu_pct: split.pct(who.0),
        lag_p50_ms,
        lag_p99_ms,
        split: split.summary(),
    })
}

/// Runs S1 for every N; prints one table row per N.
pub async fn run(ns: &[usize], window: Duration, interval: Duration) -> Result<()> {
    println!(
        "\n## S1 poll fan-out (interval {interval:?}, window {window:?})\n\n\
         | N | side | polls/s | CPU µs/poll | CPU % core | RSS KiB/session | lag p50 ms | lag p99 ms | CPU split (% of a core) |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    for &n in ns {
        let nats = rig::start_nats().await?;
        let nats_pid = nats.pid().unwrap_or(0);
        let client = async_nats::connect(nats.url()).await?;
        let js = async_nats::jetstream::new(client);
        let sim = Sim::start().await?;
        let dir = tempfile::tempdir()?;
        let store = format!("sqlite://{}", dir.path().join("relay.db").display());
        let mut relay = Relay::start(&RelayOptions {
            dir: dir.path(),
            store_url: &store,
            nats_url: &nats.url(),
            sim_url: &sim.base_url,
            poll_interval: interval,
            workers: None,
        })?;
        relay.wait_ready(&js).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss0 = rig::rss_kib(relay.pid())?;
        let t = Instant::now();
        rig::open_sessions(&js, &sim, "u", n).await?;
        eprintln!("S1 N={n}: {n} sessions opened in {:?}", t.elapsed());
        // Every session polled a few times: the first polls drain the robot's welcome.
        tokio::time::sleep(interval * 3).await;
        let r = measure(&sim, ("relay", relay.pid()), nats_pid, window, interval).await?;
        let rss1 = rig::rss_kib(relay.pid())?;
        let per_session = rss1.saturating_sub(rss0) as f64 / n as f64;
        drop(relay);

        let base = BaselineProcess::spawn(&[
            "baseline-poll".into(),
            "--sim".into(),
            sim.base_url.clone(),
            "--users".into(),
            n.to_string(),
            "--interval-ms".into(),
            interval.as_millis().to_string(),
        ])
        .await?;
        tokio::time::sleep(interval * 3).await;
        let b = measure(&sim, ("baseline", base.pid()), nats_pid, window, interval).await?;
        drop(base);

        for (side, s, rss) in [
            ("relay", &r, format!("{per_session:.1}")),
            ("baseline", &b, "–".to_owned()),
        ] {
            println!(
                "| {n} | {side} | {:.0} | {:.1} | {:.1} | {rss} | {:.1} | {:.1} | {} |",
                s.polls_per_s, s.cpu_us_per_poll, s.cpu_pct, s.lag_p50_ms, s.lag_p99_ms, s.split
            );
        }
        println!(
            "| {n} | **ratio relay/baseline** | {:.2} | **{:.2}** | {:.2} | | | | |",
            r.polls_per_s / b.polls_per_s,
            r.cpu_us_per_poll / b.cpu_us_per_poll,
            r.cpu_pct / b.cpu_pct,
        );
    }
    Ok(())
}

/// The baseline child: applies for a token per user `b<i>`, then polls each user every
/// `interval` on a fixed schedule (users spread evenly over the interval), at most
/// [`POLLS_IN_FLIGHT`] at once, doing nothing else.
pub async fn baseline(sim_url: &str, users: usize, interval: Duration) -> Result<()> {
    let cec = rig::cec_client(sim_url)?;
    let ch = cec.tenant().channel_config_id.clone();
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..users {
        let (cec, ch, sem) = (cec.clone(), ch.clone(), sem.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await;
            cec.apply_token(&format!("b{i}"), "bench", "zh", &ch).await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    println!("ready");
    let start = tokio::time::Instant::now();
    let mut pollers = tokio::task::JoinSet::new();
    // As many polls in flight as the relay allows itself (`relay.max_concurrent_polls`).
    let in_flight = Arc::new(tokio::sync::Semaphore::new(POLLS_IN_FLIGHT));
    for i in 0..users {
        let (cec, in_flight) = (cec.clone(), in_flight.clone());
        let offset = interval.mul_f64(i as f64 / users as f64);
        pollers.spawn(async move {
            let user = format!("b{i}");
            let mut tick = tokio::time::interval_at(start + offset, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Ok(_permit) = in_flight.acquire().await else {
                    return;
                };
                // The answer is dropped: the baseline does nothing else.
                let _ = cec.poll(&user).await;
            }
        });
    }
    while let Some(r) = pollers.join_next().await {
        r?;
    }
    Ok(())
}
