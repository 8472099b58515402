//! S5, several relays as one service (docs/HA.md): N = 1 and N = 3 relays on one PostgreSQL
//! sharing the same sessions, then the bare poll loop of S1 over as many users (`baseline-poll`).
//! Reported: the CPU per poll of the relays together with PostgreSQL's (the leases' and the
//! fencing's cost lands in the database), the ratio N = 3 / N = 1 (target ≤ 1.10) and each
//! against the baseline; then, with N = 3, one relay SIGKILLed and the distribution of how long
//! its sessions went unpolled (the takeover time).

use std::time::{Duration, Instant};

use anyhow::Result;
use sim::Endpoint;

use crate::rig::{self, BaselineProcess, CpuMeter, Relay, RelayOptions, Sim};
use crate::s2::Db;

/// What one run measured.
struct Side {
    polls_per_s: f64,
    cpu_us_per_poll: f64,
    split: String,
}

/// The pids of the PostgreSQL server's processes (its backends do the leases' and fencing's
/// work).
fn postgres_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .collect()
}

async fn measure(sim: &Sim, who: &[(&'static str, u32)], window: Duration) -> Result<Side> {
    let polls0 = sim.calls(Endpoint::Poll);
    let mut pids: Vec<(&'static str, u32)> = who.to_vec();
    pids.extend(postgres_pids().into_iter().map(|p| ("pg", p)));
    pids.push(("sim", std::process::id()));
    let meter = CpuMeter::start(&pids)?;
    tokio::time::sleep(window).await;
    let split = meter.stop()?;
    let polls = (sim.calls(Endpoint::Poll) - polls0).max(1) as f64;
    // The relays' and the database's CPU; the simulator's is the same work on both sides.
    let cost: Duration = split
        .by
        .iter()
        .filter(|(n, _)| *n != "sim")
        .map(|(_, d)| *d)
        .sum();
    let mut shown: std::collections::BTreeMap<&str, Duration> = Default::default();
    for (n, d) in &split.by {
        *shown.entry(n).or_default() += *d;
    }
    let summary = shown
        .iter()
        .map(|(n, d)| {
            format!(
                "{n} {:.0}%",
                100.0 * d.as_secs_f64() / split.wall.as_secs_f64()
            )
        })
        .collect::<Vec<_>>()
        .join(" · ");
    Ok(Side {
        polls_per_s: polls / split.wall.as_secs_f64(),
        cpu_us_per_poll: cost.as_secs_f64() * 1e6 / polls,
        split: summary,
    })
}

/// N relays as one cluster on a fresh PostgreSQL database, `sessions` sessions opened through
/// them; measured over `window`. `workers`: each relay's runtime threads (default: one per core).
/// With `kill`, one relay is then SIGKILLed and the gaps of every session's polls around it are
/// returned.
async fn cluster(
    n: usize,
    workers: Option<usize>,
    sessions: usize,
    window: Duration,
    interval: Duration,
    kill: bool,
) -> Result<(Side, Vec<Duration>)> {
    let nats = rig::start_nats().await?;
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    let sim = Sim::start().await?;
    let db = Db::new("postgres").await?;
    let dirs: Vec<tempfile::TempDir> = (0..n)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let mut relays = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        relays.push(Relay::start_with(
            &RelayOptions {
                dir: dir.path(),
                store_url: db.url(),
                nats_url: &nats.url(),
                sim_url: &sim.base_url,
                poll_interval: interval,
                workers,
            },
            "",
            &format!("[cluster]\nid = \"s5-{i}\"\nlease = \"10s\"\n"),
        )?);
    }
    for r in &mut relays {
        r.wait_ready(&js).await?;
    }
    // Fair shares: a newcomer's share moves within seconds (docs/HA.md).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let t = Instant::now();
    rig::open_sessions(&js, &sim, "u", sessions).await?;
    eprintln!("S5 N={n}: {sessions} sessions opened in {:?}", t.elapsed());
    tokio::time::sleep(interval * 3).await;
    let who: Vec<(&'static str, u32)> = relays.iter().map(|r| ("relay", r.pid())).collect();
    let side = measure(&sim, &who, window).await?;
    let mut gaps = Vec::new();
    if kill {
        sim.taps.start();
        tokio::time::sleep(interval * 2).await;
        drop(relays.remove(0));
        tokio::time::sleep(Duration::from_secs(25)).await;
        gaps = sim.taps.stop();
    }
    drop(relays);
    db.drop_db().await?;
    Ok((side, gaps))
}

/// Runs S5; prints its table.
pub async fn run(sessions: usize, window: Duration, interval: Duration) -> Result<()> {
    println!(
        "\n## S5 several relays (sessions {sessions}, interval {interval:?}, window {window:?}, \
         PostgreSQL)\n\n\
         | side | polls/s | CPU µs/poll (relays + PostgreSQL) | CPU split (% of a core) |\n\
         |---|---|---|---|"
    );
    let (one, _) = cluster(1, None, sessions, window, interval, false).await?;
    let (three, gaps) = cluster(3, None, sessions, window, interval, true).await?;
    // Three relays sized to the host: one runtime thread each instead of one per core.
    let (sized, _) = cluster(3, Some(1), sessions, window, interval, false).await?;

    let sim = Sim::start().await?;
    let base = BaselineProcess::spawn(&[
        "baseline-poll".into(),
        "--sim".into(),
        sim.base_url.clone(),
        "--users".into(),
        sessions.to_string(),
        "--interval-ms".into(),
        interval.as_millis().to_string(),
    ])
    .await?;
    tokio::time::sleep(interval * 3).await;
    let b = measure(&sim, &[("baseline", base.pid())], window).await?;
    drop(base);

    for (side, s) in [
        ("N = 1", &one),
        ("N = 3", &three),
        ("N = 3, one runtime thread each", &sized),
        ("baseline", &b),
    ] {
        println!(
            "| {side} | {:.0} | {:.1} | {} |",
            s.polls_per_s, s.cpu_us_per_poll, s.split
        );
    }
    println!(
        "| **ratio N = 3 / N = 1** | {:.2} | **{:.2}** | |",
        three.polls_per_s / one.polls_per_s,
        three.cpu_us_per_poll / one.cpu_us_per_poll
    );
    println!(
        "| **ratio N = 3 (one thread each) / N = 1** | {:.2} | **{:.2}** | |",
        sized.polls_per_s / one.polls_per_s,
        sized.cpu_us_per_poll / one.cpu_us_per_poll
    );
    println!(
        "| ratio N = 1 / baseline | {:.2} | {:.2} | |\n| ratio N = 3 / baseline | {:.2} | {:.2} | |",
        one.polls_per_s / b.polls_per_s,
        one.cpu_us_per_poll / b.cpu_us_per_poll,
        three.polls_per_s / b.polls_per_s,
        three.cpu_us_per_poll / b.cpu_us_per_poll
    );
    // The killed relay's sessions: one long gap each (the rest poll at the interval).
    let mut takeovers: Vec<Duration> = gaps.into_iter().filter(|g| *g > interval * 2).collect();
    let q = |v: &mut Vec<Duration>, p: f64| {
        rig::quantile(v, p).map_or("–".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
    };
    println!(
        "\nSIGKILL of one of three relays (lease 10 s): {} sessions went unpolled longer than two \
         intervals; their gap p50 {}, p90 {}, max {}.",
        takeovers.len(),
        q(&mut takeovers, 0.5),
        q(&mut takeovers, 0.9),
        q(&mut takeovers, 1.0)
    );
    Ok(())
}
