//! `ccrelay demo`: the relay on its embedded defaults (SQLite, a local nats-server, the built-in
//! simulator) and a short scripted conversation through NATS — exactly what a service would do —
//! followed by the transcript the relay stored.
//!
//! The demo is the only command that serves the simulator as a tenant (`demo`) and the only one
//! that installs and starts a nats-server on its own (when none answers at a loopback `nats.url`);
//! that server is the demo's child and dies with it, SIGKILL included.

use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::StreamExt;
use serde_json::{Value, json};

use config::{CecTenant, Config, DEMO_TENANT};
use relay::app::{App, shutdown_signal};
use store::{Direction, kind};

/// Runs the demo; see the module docs.
pub async fn run(mut config: Config, keep_running: bool) -> anyhow::Result<()> {
    if !config.uses_simulator() {
        bail!(
            "`ccrelay demo` talks to the built-in simulator; this configuration names real [[cec]] tenants. \
             Run it without a config file (or with one that has no [[cec]] section)."
        );
    }
    let mut local_nats = relay::app::local_nats(
        &config.nats,
        Box::new(|| {
            let cache = natsd::default_cache_dir()
                .unwrap_or_else(|| std::path::PathBuf::from(".ccrelay-cache"));
            Ok(devkit::ensure_nats_server((2, 9), &cache)?)
        }),
    )
    .await
    .context("starting a local nats-server")?;
    // Started above if needed: the relay must not try again.
    config.nats.embedded = false;

    let sim_cfg = sim::SimConfig::default();
    let simulator = sim::spawn(sim_cfg.clone())
        .await
        .context("starting the built-in simulator")?;
    tracing::info!(url = %simulator.base_url(), tenant = DEMO_TENANT,
        "Serving the built-in CEC simulator as tenant \"demo\"");
    let url = url::Url::parse(&simulator.base_url()).context("simulator url")?;
    let mut tenant = CecTenant::simulated(
        DEMO_TENANT,
        url,
        &sim_cfg.app_key,
        &sim_cfg.app_secret,
        &sim_cfg.channel_config_id,
    );
    tenant.poll_interval = Duration::from_millis(500);
    config.cec.push(tenant);

    let result = relay_and_talk(config, keep_running).await;
    drop(simulator);
    if let Some(n) = local_nats.as_mut() {
        n.stop().await;
    }
    result
}

/// Starts the relay, holds the conversation, and keeps the relay running if asked.
async fn relay_and_talk(config: Config, keep_running: bool) -> anyhow::Result<()> {
    let app = App::start(config).await?;
    let result = conversation(&app).await;
    if let Err(e) = &result {
        eprintln!("demo failed: {e:#}");
    }
    if keep_running && result.is_ok() {
        let p = app.relay().subjects.prefix().to_owned();
        println!("\nThe relay keeps running (Ctrl-C to stop). Talk to it like the demo did:");
        println!("  nats pub {p}.cec.{DEMO_TENANT}.up.alice '{{\"controlType\":\"CONNECT\"}}'");
        println!("  nats pub {p}.cec.{DEMO_TENANT}.up.alice '{{\"content\":\"hello\"}}'");
        println!("  nats sub '{p}.cec.{DEMO_TENANT}.*.alice'");
        println!("Health: http://{}/readyz", app.http_addr());
        if app.run_until(shutdown_signal()).await == relay::app::Stopped::Forced {
            std::process::exit(130);
        }
    } else {
        app.shutdown().await;
    }
    result
}

/// The customer's subjects, and the ids of the messages seen on them.
struct Watch {
    sub: async_nats::Subscriber,
    seen: std::collections::HashSet<String>,
}

/// Waits (up to `secs`) for `event` and `downs` DownMessages on `watch` — what answers the
/// customer's message `shown` — printing the DownMessages and events as they come.
async fn answers(
    watch: &mut Watch,
    shown: &str,
    event: &str,
    downs: usize,
    secs: u64,
) -> anyhow::Result<()> {
    let (seen, watch) = (&mut watch.seen, &mut watch.sub);
    let (mut got_event, mut got_downs) = (false, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !(got_event && got_downs >= downs) {
        let next = tokio::time::timeout_at(deadline, watch.next())
            .await
            .with_context(|| format!("no answer to {shown} within {secs}s"))?
            .context("subscription ended")?;
        let v: Value = serde_json::from_slice(&next.payload).unwrap_or(Value::Null);
        // A message published again (by a relay taking over the outbox) is kept once by
        // JetStream, but a plain subscriber sees both publishes: shown once.
        if let Some(id) = v["id"].as_str()
            && !seen.insert(id.to_owned())
        {
            continue;
        }
        if next.subject.as_str().contains(".down.") {
            got_downs += 1;
            println!(
                "  {:>8} ← {}",
                v["sourceType"].as_str().unwrap_or("?"),
                v["content"].as_str().unwrap_or("")
            );
        } else if next.subject.as_str().contains(".event.") {
            let ty = v["type"].as_str().unwrap_or("");
            if ty == "error" || v["ok"] == json!(false) {
                bail!("the relay refused {shown}: {}", v["resultDesc"]);
            }
            println!("           · event {ty}");
            got_event |= ty == event;
        }
    }
    Ok(())
}

async fn conversation(app: &App) -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    while !app.streams_ready() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!(
                "NATS streams were not ready after 30s: is NATS reachable at {}?",
                config::redact::nats_url(&app.relay().config.nats.url)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let relay = app.relay();
    let subjects = &relay.subjects;
    let user = format!("demo-{}", time::OffsetDateTime::now_utc().unix_timestamp());
    let nats = app.nats().clone();
    let js = async_nats::jetstream::new(nats.clone());
    let mut watch = Watch {
        sub: nats
            .subscribe(format!("{}.cec.{DEMO_TENANT}.*.{user}", subjects.prefix()))
            .await
            .context("subscribing")?,
        seen: Default::default(),
    };
    let up = subjects.cec_up(DEMO_TENANT, &user);
    println!("\nA customer ({user}) talks to the contact center through NATS subject {up}\n");

    let steps: [(Value, &str, usize); 5] = [
        (
            json!({"controlType": "CONNECT", "messageId": "m1"}),
            "session.opened",
            1,
        ),
        (
            json!({"content": "Hello, what are your opening hours?", "messageId": "m2"}),
            "up.result",
            1,
        ),
        (
            json!({"controlType": "TRANS2AGENT", "messageId": "m3"}),
            "up.result",
            2,
        ),
        (
            json!({"content": "I'd like to change my delivery address.", "messageId": "m4"}),
            "up.result",
            1,
        ),
        (
            json!({"controlType": "DISCONNECT", "messageId": "m5"}),
            "session.closed",
            0,
        ),
    ];
    for (msg, event, downs) in steps {
        let shown = msg
            .get("content")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| {
                format!(
                    "[{}]",
                    msg.get("controlType")
                        .and_then(Value::as_str)
                        .unwrap_or("CHAT")
                )
            });
        println!("  customer → {shown}");
        js.publish(up.clone(), serde_json::to_vec(&msg)?.into())
            .await
            .context("publishing")?
            .await
            .context("waiting for the PubAck")?;
        answers(&mut watch, &shown, event, downs, 20).await?;
    }

    let rows = relay
        .store
        .transcript(kind::CEC, DEMO_TENANT, &user)
        .await?;
    println!(
        "\nTranscript stored in {} ({} rows):",
        config::redact::database_url(&relay.config.store.url),
        rows.len()
    );
    for r in rows {
        let who = match r.direction {
            Direction::Up => "customer".to_owned(),
            Direction::Down => r.source_type.clone().unwrap_or_default().to_lowercase(),
        };
        let what = match r.content.as_deref() {
            Some(c) if !c.is_empty() => c.to_owned(),
            _ => format!("[{}]", r.control_type.as_deref().unwrap_or("")),
        };
        println!(
            "  {}  {:>4} {:<9} {:<40} {}",
            r.created_at
                .format(time::macros::format_description!(
                    "[hour]:[minute]:[second].[subsecond digits:3]"
                ))
                .unwrap_or_default(),
            r.direction.as_str(),
            who,
            what,
            r.status.as_str()
        );
    }
    Ok(())
}

/// `ccrelay demo --instances N`: a failover, shown. N relays (child processes of this binary) as
/// one cluster on a PostgreSQL — `CCRELAY_DEMO_PG_URL`, else one found or provisioned as the
/// tests do — and a private nats-server ≥ 2.11; the customer's conversation starts, the relay
/// that owns the customer is killed (SIGKILL), and the conversation goes on through the others.
pub async fn run_cluster(instances: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        (2..=8).contains(&instances),
        "--instances takes 2 to 8 relays"
    );
    let cache =
        natsd::default_cache_dir().unwrap_or_else(|| std::path::PathBuf::from(".ccrelay-cache"));
    let dir = tempfile::tempdir().context("a temporary directory")?;

    let binary = {
        let cache = cache.clone();
        tokio::task::spawn_blocking(move || devkit::ensure_nats_server((2, 11), &cache))
            .await
            .context("looking for nats-server")??
    };
    let mut nats = natsd::LocalNatsServer::start(&binary, natsd::NatsServerOptions::default())
        .await
        .context("starting a nats-server for the demo")?;
    let admin = match std::env::var("CCRELAY_DEMO_PG_URL") {
        Ok(url) => url,
        Err(_) => devkit::pg_provision::admin_pg_url(&cache)
            .await
            .map_err(anyhow::Error::msg)
            .context("finding or provisioning PostgreSQL (or set CCRELAY_DEMO_PG_URL)")?,
    };
    let db = format!("ccrelay_demo_{}", std::process::id());
    let db_url = create_database(&admin, &db).await?;
    let sim_cfg = sim::SimConfig::default();
    let simulator = sim::spawn(sim_cfg.clone())
        .await
        .context("starting the built-in simulator")?;

    println!(
        "{instances} relays, one PostgreSQL ({db}), one nats-server, the simulator as tenant \"{DEMO_TENANT}\""
    );
    let exe = std::env::current_exe().context("this program's path")?;
    let mut relays = Vec::new();
    for i in 1..=instances {
        let id = format!("demo-{i}");
        let config = dir.path().join(format!("{id}.toml"));
        std::fs::write(
            &config,
            format!(
                "[store]\nurl = \"{db_url}\"\n[nats]\nurl = \"{nats}\"\nembedded = false\n\
                 [http]\nlisten = \"127.0.0.1:0\"\n[relay]\njournal_dir = \"{journals}\"\n\
                 [cluster]\nid = \"{id}\"\nlease = \"5s\"\npartitions = 16\n\
                 [[cec]]\nname = \"{DEMO_TENANT}\"\nbase_url = \"{sim}\"\napp_key = \"{ak}\"\n\
                 app_secret = \"{secret}\"\nchannel_config_id = \"{ch}\"\npoll_interval = \"500ms\"\n",
                nats = nats.url(),
                journals = dir.path().join("journals").display(),
                sim = simulator.base_url(),
                ak = sim_cfg.app_key,
                secret = sim_cfg.app_secret,
                ch = sim_cfg.channel_config_id,
            ),
        )?;
        let log = std::fs::File::create(dir.path().join(format!("{id}.log")))?;
        let child = std::process::Command::new(&exe)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting a relay")?;
        println!("  started {id} (pid {})", child.id());
        relays.push((id, child));
    }
    let result = failover(&nats.url(), &db_url, &mut relays).await;
    for (_, c) in &mut relays {
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(simulator);
    nats.stop().await;
    if let Err(e) = &result {
        eprintln!(
            "demo failed: {e:#} (the relays' logs: {})",
            dir.path().display()
        );
        // Keep the logs for a look.
        let _ = dir.keep();
    }
    let _ = drop_database(&admin, &db).await;
    result
}

async fn create_database(admin: &str, db: &str) -> anyhow::Result<String> {
    use sqlx::Connection as _;
    let mut c = sqlx::PgConnection::connect(admin)
        .await
        .context("connecting to PostgreSQL")?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut c)
        .await
        .context("creating the demo's database")?;
    let mut url = url::Url::parse(admin).context("PostgreSQL url")?;
    url.set_path(db);
    Ok(url.to_string())
}

async fn drop_database(admin: &str, db: &str) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let mut c = sqlx::PgConnection::connect(admin).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .execute(&mut c)
    .await?;
    Ok(())
}

/// The conversation, with the customer's relay killed in the middle.
async fn failover(
    nats_url: &str,
    db_url: &str,
    relays: &mut [(String, std::process::Child)],
) -> anyhow::Result<()> {
    let store = store::connect(db_url).await?;
    let client = async_nats::connect(nats_url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let started = tokio::time::Instant::now();
    // Every relay holds its share of the partitions.
    let owner_of = |st: &store::cluster::ClusterStatus, p: u32| {
        st.leases
            .iter()
            .find(|l| l.partition == p && l.valid)
            .and_then(|l| l.owner.clone())
    };
    loop {
        if let Some(leases) = store.leases()
            && let Ok(st) = leases.status().await
            && st.members.iter().filter(|m| m.live).count() == relays.len()
            && (0..st.partitions).all(|p| owner_of(&st, p).is_some())
            && js.get_stream("CCRELAY_OUT").await.is_ok()
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the relays did not form a cluster within a minute");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let user = format!("demo-{}", time::OffsetDateTime::now_utc().unix_timestamp());
    let prefix = "ccrelay";
    let mut watch = Watch {
        sub: client
            .subscribe(format!("{prefix}.cec.{DEMO_TENANT}.*.{user}"))
            .await?,
        seen: Default::default(),
    };
    let say = |msg: Value| {
        let js = js.clone();
        let subject = format!("{prefix}.cec.{DEMO_TENANT}.up.{user}");
        async move {
            js.publish(subject, serde_json::to_vec(&msg)?.into())
                .await?
                .await?;
            anyhow::Ok(())
        }
    };
    println!("\nA customer ({user}) talks to the contact center through NATS");
    println!("  customer → [CONNECT]");
    say(json!({"controlType": "CONNECT", "messageId": "m1"})).await?;
    answers(&mut watch, "[CONNECT]", "session.opened", 1, 20).await?;
    println!("  customer → Hello, is anyone there?");
    say(json!({"content": "Hello, is anyone there?", "messageId": "m2"})).await?;
    answers(&mut watch, "the first message", "up.result", 1, 20).await?;

    let leases = store.leases().context("PostgreSQL keeps leases")?;
    let st = leases.status().await?;
    let p = contract::partition::of(DEMO_TENANT, &user, st.partitions);
    let owner = owner_of(&st, p).context("the customer's partition has no owner")?;
    let (_, child) = relays
        .iter_mut()
        .find(|(id, _)| *id == owner)
        .context("the owner is not one of the demo's relays")?;
    println!(
        "\n  ✗ SIGKILL {owner} (pid {}), the relay that owns this customer",
        child.id()
    );
    let killed = tokio::time::Instant::now();
    child.kill()?;
    let _ = child.wait();
    println!("  customer → I'd like to change my delivery address.");
    say(json!({"content": "I'd like to change my delivery address.", "messageId": "m3"})).await?;
    answers(&mut watch, "the message after the kill", "up.result", 1, 60).await?;
    let st = leases.status().await?;
    println!(
        "  ✓ {} took the customer over; answered {:.1}s after the kill (lease 5s)\n",
        owner_of(&st, p).unwrap_or_default(),
        killed.elapsed().as_secs_f64()
    );
    println!("  customer → [DISCONNECT]");
    say(json!({"controlType": "DISCONNECT", "messageId": "m4"})).await?;
    answers(&mut watch, "[DISCONNECT]", "session.closed", 0, 20).await?;

    let rows = store.transcript(kind::CEC, DEMO_TENANT, &user).await?;
    println!(
        "\nTranscript stored in PostgreSQL ({} rows), each message once:",
        rows.len()
    );
    for r in rows {
        let what = match r.content.as_deref() {
            Some(c) if !c.is_empty() => c.to_owned(),
            _ => format!("[{}]", r.control_type.as_deref().unwrap_or("")),
        };
        let who = match r.direction {
            Direction::Up => "customer".to_owned(),
            Direction::Down => r.source_type.clone().unwrap_or_default().to_lowercase(),
        };
        println!("  {:>4} {who:<9} {what}", r.direction.as_str());
    }
    let status = relay::cluster::status(&store).await?.unwrap_or_default();
    println!(
        "\nCluster now: {} live members (`ccrelay cluster status` shows the same from the database)",
        status["liveMembers"]
    );
    store.close().await;
    Ok(())
}
