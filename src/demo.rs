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
    let mut watch = nats
        .subscribe(format!("{}.cec.{DEMO_TENANT}.*.{user}", subjects.prefix()))
        .await
        .context("subscribing")?;
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
        let (mut got_event, mut got_downs) = (false, 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !(got_event && got_downs >= downs) {
            let next = tokio::time::timeout_at(deadline, watch.next())
                .await
                .with_context(|| format!("no answer to {shown} within 20s"))?
                .context("subscription ended")?;
            let v: Value = serde_json::from_slice(&next.payload).unwrap_or(Value::Null);
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
