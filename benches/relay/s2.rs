//! S2, downlink throughput: the simulator holds M agent messages over K sessions; the time until
//! the relay has stored them and JetStream has acknowledged them on `_OUT`. Baseline: the same
//! rows inserted in batches plus the same JetStream publishes, no relay logic, in this process.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::future::try_join_all;
use sqlx::Connection;

use crate::rig::{self, CpuMeter, Relay, RelayOptions, Sim};

use devkit::pg_provision;

/// Rows per transaction and publishes per batch in the baseline: the relay's `outbox_batch`.
const BATCH: usize = 512;

/// A fresh database for one run: its URL, and how to drop it afterwards.
pub(crate) enum Db {
    /// The directory is kept for the file's lifetime.
    Sqlite {
        _dir: tempfile::TempDir,
        url: String,
    },
    Pg {
        admin: String,
        name: String,
        url: String,
    },
}

impl Db {
    pub(crate) async fn new(backend: &str) -> Result<Db> {
        if backend == "sqlite" {
            let dir = tempfile::tempdir()?;
            let url = format!("sqlite://{}", dir.path().join("s2.db").display());
            return Ok(Db::Sqlite { _dir: dir, url });
        }
        let lock_dir = rig::target_dir().join("test-deps");
        std::fs::create_dir_all(&lock_dir)?;
        let admin = pg_provision::admin_pg_url(&lock_dir)
            .await
            .map_err(anyhow::Error::msg)?;
        let name = format!("ccrelay_bench_{}", uuid::Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect(&admin).await?;
        // The name is ours: `ccrelay_bench_` and a UUID in hex.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        Ok(Db::Pg { admin, name, url })
    }

    pub(crate) fn url(&self) -> &str {
        match self {
            Db::Sqlite { url, .. } | Db::Pg { url, .. } => url,
        }
    }

    pub(crate) async fn drop_db(self) -> Result<()> {
        if let Db::Pg { admin, name, .. } = self {
            let mut conn = sqlx::PgConnection::connect(&admin).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await?;
        }
        Ok(())
    }
}

/// A DownMessage as the relay publishes it, in size and shape.
fn down_body(i: usize, user: &str) -> String {
    serde_json::json!({
        "channel": "WEB", "content": format!("bench message {i}"), "from": "1011577355744904195",
        "mediaType": "TEXT", "senderNickname": "agent", "sourceType": "AGENT",
        "timestamp": 1_764_600_000_000_i64, "to": user, "messageCode": uuid::Uuid::now_v7().simple().to_string(),
        "simQuestions": null, "callId": "1764600000-1", "controlType": "CHAT",
        "id": uuid::Uuid::now_v7().to_string(), "tenant": rig::TENANT, "userId": user,
        "channelConfigId": "1011577355744904195", "receivedAt": "2026-12-01T18:00:00.000Z"
    })
    .to_string()
}

/// The relay side: seconds from injecting M messages until `_OUT` holds them all.
async fn relay_side(backend: &str, m: usize, k: usize, interval: Duration) -> Result<f64> {
    let db = Db::new(backend).await?;
    let nats = rig::start_nats().await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let sim = Sim::start().await?;
    let dir = tempfile::tempdir()?;
    let mut relay = Relay::start(&RelayOptions {
        dir: dir.path(),
        store_url: db.url(),
        nats_url: &nats.url(),
        sim_url: &sim.base_url,
        poll_interval: interval,
        workers: None,
    })?;
    relay.wait_ready(&js).await?;
    rig::open_sessions(&js, &sim, "u", k).await?;
    let n0 = rig::out_settled(&js, Duration::from_secs(1)).await?;
    let meter = CpuMeter::start(&[
        ("relay", relay.pid()),
        ("sim", std::process::id()),
        ("nats", nats.pid().unwrap_or(0)),
    ])?;
    let t0 = Instant::now();
    for i in 0..m {
        sim.sim
            .agent_say(&format!("u{}", i % k), &format!("bench message {i}"));
    }
    let timeout = Duration::from_secs(60 + m as u64 / 500);
    rig::wait_until(timeout, "every message on _OUT", || async {
        Ok(rig::out_messages(&js).await? >= n0 + m as u64)
    })
    .await
    .with_context(|| relay.log_tail())?;
    let secs = t0.elapsed().as_secs_f64();
    let split = meter.stop()?;
    let rate = m as f64 / secs;
    println!(
        "| {backend} | {m} | {k} | relay | {secs:.2} | {rate:.0} | {:.1} | {} |",
        split.of("relay").as_secs_f64() * 1e6 / m as f64,
        split.summary()
    );
    drop(relay);
    db.drop_db().await?;
    Ok(rate)
}

/// The baseline: M rows in transactions of [`BATCH`], each batch then published to a stream of
/// its own with `Nats-Msg-Id`, all acks of a batch awaited before the next.
async fn baseline_side(backend: &str, m: usize, k: usize) -> Result<f64> {
    let db = Db::new(backend).await?;
    // The relay's own schema, by its own migrations.
    store::connect(db.url()).await?.migrate().await?;
    let nats = rig::start_nats().await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BASE_OUT".into(),
        subjects: vec!["base.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    let bodies: Vec<(String, String)> = (0..m)
        .map(|i| {
            let user = format!("u{}", i % k);
            let body = down_body(i, &user);
            (user, body)
        })
        .collect();
    let meter = CpuMeter::start(&[
        ("baseline", std::process::id()),
        ("nats", nats.pid().unwrap_or(0)),
    ])?;
    let t0 = Instant::now();
    match &db {
        Db::Sqlite { .. } => {
            let opts: sqlx::sqlite::SqliteConnectOptions = db.url().parse()?;
            let opts = opts
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
            let pool = sqlx::SqlitePool::connect_with(opts).await?;
            for (b, chunk) in bodies.chunks(BATCH).enumerate() {
                let mut tx = pool.begin().await?;
                let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "INSERT INTO messages (relay_id, kind, tenant, user_id, direction, \
                     message_code, source_type, control_type, media_type, content, body, status, \
                     created_at) ",
                );
                q.push_values(chunk.iter().enumerate(), |mut r, (j, (user, body))| {
                    r.push_bind(format!("{b}-{j}"))
                        .push_bind("cec")
                        .push_bind(rig::TENANT)
                        .push_bind(user)
                        .push_bind("down")
                        .push_bind(format!("code-{b}-{j}"))
                        .push_bind("AGENT")
                        .push_bind("CHAT")
                        .push_bind("TEXT")
                        .push_bind("bench message")
                        .push_bind(body)
                        .push_bind("received")
                        .push_bind(1_764_600_000_000_i64);
                });
                q.build().execute(&mut *tx).await?;
                tx.commit().await?;
                publish_batch(&js, b, chunk).await?;
            }
        }
        Db::Pg { url, .. } => {
            let pool = sqlx::PgPool::connect(url).await?;
            for (b, chunk) in bodies.chunks(BATCH).enumerate() {
                let mut tx = pool.begin().await?;
                let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                    "INSERT INTO messages (relay_id, kind, tenant, user_id, direction, \
                     message_code, source_type, control_type, media_type, content, body, status, \
                     created_at) ",
                );
                q.push_values(chunk.iter().enumerate(), |mut r, (j, (user, body))| {
                    r.push_bind(format!("{b}-{j}"))
                        .push_bind("cec")
                        .push_bind(rig::TENANT)
                        .push_bind(user)
                        .push_bind("down")
                        .push_bind(format!("code-{b}-{j}"))
                        .push_bind("AGENT")
                        .push_bind("CHAT")
                        .push_bind("TEXT")
                        .push_bind("bench message")
                        .push_bind(body)
                        .push_unseparated("::jsonb")
                        .push_bind("received")
                        .push("now()");
                });
                q.build().execute(&mut *tx).await?;
                tx.commit().await?;
                publish_batch(&js, b, chunk).await?;
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let split = meter.stop()?;
    let rate = m as f64 / secs;
    println!(
        "| {backend} | {m} | {k} | baseline | {secs:.2} | {rate:.0} | {:.1} | {} |",
        split.of("baseline").as_secs_f64() * 1e6 / m as f64,
        split.summary()
    );
    db.drop_db().await?;
    Ok(rate)
}

async fn publish_batch(
    js: &async_nats::jetstream::Context,
    b: usize,
    chunk: &[(String, String)],
) -> Result<()> {
    let mut acks = Vec::with_capacity(chunk.len());
    for (j, (user, body)) in chunk.iter().enumerate() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{b}-{j}").as_str());
        let subject = format!("base.cec.{}.down.{user}", rig::TENANT);
        acks.push(
            js.publish_with_headers(subject, headers, body.clone().into())
                .await?,
        );
    }
    try_join_all(acks.into_iter().map(std::future::IntoFuture::into_future)).await?;
    Ok(())
}

/// Runs S2 for every backend and M; prints one table row per side and a ratio.
pub async fn run(backends: &[String], ms: &[usize], k: usize, interval: Duration) -> Result<()> {
    println!(
        "\n## S2 downlink throughput (poll interval {interval:?})\n\n\
         | store | M | K | side | seconds | msg/s | CPU µs/msg | CPU split (% of a core) |\n\
         |---|---|---|---|---|---|---|---|"
    );
    for backend in backends {
        for &m in ms {
            let relay = relay_side(backend, m, k, interval).await?;
            let base = baseline_side(backend, m, k).await?;
            println!(
                "| {backend} | {m} | {k} | **ratio relay/baseline** | | **{:.2}** | | |",
                relay / base
            );
        }
    }
    Ok(())
}
