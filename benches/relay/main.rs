//! `cargo bench --bench relay -- <scenario> [options]`: ccrelay's capacity and overhead, each
//! figure beside a bare baseline measured in the same run (see `benches/README.md` and
//! `docs/BENCHMARKS.md`).
//!
//! # Layout
//! - `rig`: nats-server, the simulator behind a timestamping tap, the release relay binary,
//!   `/proc` CPU and RSS, percentiles.
//! - `retention`: `--retention-rows`, the same scenarios with the relay's retention at work.
//! - `s1` poll fan-out, `s2` downlink throughput, `s3` uplink throughput, `s4` Tencent robot
//!   streaming, `s5` several relays as one service; each also holds its baseline (`baseline-poll`, `baseline-up` and
//!   `baseline-stream` run as child processes of this binary, as does S4's `s4-publish`).

#![forbid(unsafe_code)]

mod retention;
mod rig;
mod s1;
mod s2;
mod s3;
mod s4;
mod s5;

use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// The relay's allocator (src/main.rs) here too, so the baselines and the simulator do not
/// differ from the relay by their malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "relay-bench",
    about = "ccrelay benchmarks beside bare baselines (loopback only)"
)]
struct Cli {
    /// Runs every relay with retention at work: this many three-day-old messages (and as many
    /// events) seeded into its database, deleted by `store.retention = "1d"` while the scenario
    /// measures (`retention.rs`). 0: retention off.
    #[arg(long, global = true, default_value_t = 0)]
    retention_rows: usize,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// S1 (N = 1k, 5k), S2 (M = 100k), S3 (M = 20k), S2 and S3 on SQLite and PostgreSQL, and S4
    /// (N = 1,000 streams).
    All,
    /// Poll fan-out: N sessions polled every interval.
    S1 {
        /// Session counts, one run each.
        #[arg(long, value_delimiter = ',', default_values_t = [1000, 5000])]
        n: Vec<usize>,
        /// Measurement window per side, seconds.
        #[arg(long, default_value_t = 10)]
        window_s: u64,
        /// Poll interval, milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// Downlink throughput: M messages over K sessions until stored and acked on `_OUT`.
    S2 {
        /// Stores: sqlite, postgres.
        #[arg(long, value_delimiter = ',', default_values_t = ["sqlite".to_owned(), "postgres".to_owned()])]
        store: Vec<String>,
        /// Message counts, one run each.
        #[arg(long, value_delimiter = ',', default_values_t = [100_000])]
        m: Vec<usize>,
        /// Sessions the messages are spread over.
        #[arg(long, default_value_t = 200)]
        k: usize,
        /// The relay's poll interval, milliseconds.
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
    },
    /// Uplink throughput: M UpMessages until the upstream has them; latency at 1,000 msg/s.
    S3 {
        /// Stores: sqlite, postgres.
        #[arg(long, value_delimiter = ',', default_values_t = ["sqlite".to_owned()])]
        store: Vec<String>,
        /// Message counts, one run each.
        #[arg(long, value_delimiter = ',', default_values_t = [20000])]
        m: Vec<usize>,
        /// Sessions the messages are spread over.
        #[arg(long, default_value_t = 200)]
        k: usize,
        /// How long to publish at 1,000 msg/s for the latency figures, seconds.
        #[arg(long, default_value_t = 5)]
        rate_s: u64,
    },
    /// Tencent robot streaming: N streams at `rate` chunks/s each against a 200 calls/s limit.
    S4 {
        /// Stream counts, one run each.
        #[arg(long, value_delimiter = ',', default_values_t = [1000])]
        n: Vec<usize>,
        /// Chunks per second of each stream.
        #[arg(long, default_value_t = 20)]
        rate: u32,
        /// How long every stream is fed, seconds (its last chunk finishes it).
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// `max_ack_pending` of the relay's and the baseline's consumers.
        #[arg(long, default_value_t = s4::MAX_ACK_PENDING)]
        max_ack_pending: i64,
    },
    /// Several relays as one service: N = 1 and N = 3 relays sharing the sessions on one
    /// PostgreSQL (CPU per poll, relays and database), then one of three SIGKILLed.
    S5 {
        /// Sessions shared by the relays.
        #[arg(long, default_value_t = 20_000)]
        sessions: usize,
        /// Measurement window per side, seconds.
        #[arg(long, default_value_t = 10)]
        window_s: u64,
        /// Poll interval, milliseconds.
        #[arg(long, default_value_t = 5000)]
        interval_ms: u64,
    },
    /// (internal) S1's baseline poll loop.
    #[command(hide = true)]
    BaselinePoll {
        #[arg(long)]
        sim: String,
        #[arg(long)]
        users: usize,
        #[arg(long)]
        interval_ms: u64,
    },
    /// (internal) S3's baseline consumer.
    #[command(hide = true)]
    BaselineUp {
        #[arg(long)]
        nats: String,
        #[arg(long)]
        sim: String,
        #[arg(long)]
        users: usize,
    },
    /// (internal) S4's baseline streamer.
    #[command(hide = true)]
    BaselineStream {
        #[arg(long)]
        nats: String,
        #[arg(long)]
        sim: String,
        #[arg(long)]
        max_ack_pending: i64,
    },
    /// (internal) S4's chunk publisher.
    #[command(hide = true)]
    S4Publish {
        #[arg(long)]
        nats: String,
        #[arg(long)]
        subject_prefix: String,
        #[arg(long)]
        stream_prefix: String,
        #[arg(long)]
        streams: usize,
        #[arg(long)]
        rate: u32,
        #[arg(long)]
        secs: u64,
    },
}

fn main() -> Result<()> {
    // `cargo bench` appends `--bench`; it means nothing here.
    let args = std::env::args().filter(|a| a != "--bench");
    let cli = Cli::parse_from(args);
    retention::enable(cli.retention_rows);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(cli.scenario))
}

async fn run(scenario: Scenario) -> Result<()> {
    let ms = Duration::from_millis;
    match scenario {
        Scenario::All => {
            header();
            s1::run(&[1000, 5000], Duration::from_secs(10), ms(1000)).await?;
            s2::run(
                &["sqlite".into(), "postgres".into()],
                &[100_000],
                200,
                ms(100),
            )
            .await?;
            s3::run(&["sqlite".into(), "postgres".into()], &[20000], 200, 5).await?;
            s4::run(&[1000], 20, 10, s4::MAX_ACK_PENDING).await
        }
        Scenario::S5 {
            sessions,
            window_s,
            interval_ms,
        } => {
            header();
            s5::run(sessions, Duration::from_secs(window_s), ms(interval_ms)).await
        }
        Scenario::S1 {
            n,
            window_s,
            interval_ms,
        } => {
            header();
            s1::run(&n, Duration::from_secs(window_s), ms(interval_ms)).await
        }
        Scenario::S2 {
            store,
            m,
            k,
            interval_ms,
        } => {
            header();
            s2::run(&store, &m, k, ms(interval_ms)).await
        }
        Scenario::S3 {
            store,
            m,
            k,
            rate_s,
        } => {
            header();
            s3::run(&store, &m, k, rate_s).await
        }
        Scenario::S4 {
            n,
            rate,
            secs,
            max_ack_pending,
        } => {
            header();
            s4::run(&n, rate, secs, max_ack_pending).await
        }
        Scenario::BaselineStream {
            nats,
            sim,
            max_ack_pending,
        } => s4::baseline(&nats, &sim, max_ack_pending).await,
        Scenario::S4Publish {
            nats,
            subject_prefix,
            stream_prefix,
            streams,
            rate,
            secs,
        } => s4::publish(&nats, &subject_prefix, &stream_prefix, streams, rate, secs).await,
        Scenario::BaselinePoll {
            sim,
            users,
            interval_ms,
        } => s1::baseline(&sim, users, ms(interval_ms)).await,
        Scenario::BaselineUp { nats, sim, users } => s3::baseline(&nats, &sim, users).await,
    }
}

/// The machine, as `docs/BENCHMARKS.md` wants it beside the figures.
fn header() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "# ccrelay bench — {cores} cores, {cpu}; load average at start: {}",
        load.trim()
    );
}
