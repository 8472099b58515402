//! The `ccrelay` binary: parse the command line, load the configuration, start logging, run.
#![forbid(unsafe_code)]

use anyhow::Context as _;
use clap::Parser;

use ccrelay::cli::{Cli, Command};
use config::Config;

/// mimalloc instead of glibc's malloc: less CPU per poll and per message, and less memory per
/// session, measured A/B in S1 and S3 (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    ccrelay::telemetry::init(cli.log_format, std::io::stderr);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("ccrelay: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // The default path may be absent (embedded defaults); a path given explicitly must exist.
    let explicit = cli.config.as_os_str() != config::DEFAULT_PATH;
    let load = || Config::load(&cli.config, explicit).context("invalid configuration");
    match cli.command {
        Command::Run => {
            let app = relay::app::App::start(load()?).await?;
            if app.run_until(relay::app::shutdown_signal()).await == relay::app::Stopped::Forced {
                // Exit without waiting for anything, as a second Ctrl-C asks.
                std::process::exit(130);
            }
            Ok(())
        }
        Command::Demo {
            instances: Some(n), ..
        } => ccrelay::demo::run_cluster(n).await,
        Command::Demo { keep_running, .. } => ccrelay::demo::run(load()?, keep_running).await,
        Command::Simulate { listen, sim_config } => {
            let cfg = match sim_config {
                Some(p) => {
                    use figment::providers::Format as _;
                    figment::Figment::new()
                        .merge(figment::providers::Toml::file(&p))
                        .extract::<sim::SimConfig>()
                        .with_context(|| format!("simulator settings {}", p.display()))?
                }
                None => sim::SimConfig::default(),
            };
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            tracing::info!(listen = %listener.local_addr()?, "Simulator of CEC and Tencent IM listening");
            let cancel = tokio_util::sync::CancellationToken::new();
            let c = cancel.clone();
            tokio::spawn(async move {
                relay::app::shutdown_signal().await;
                c.cancel();
            });
            sim::Simulator::new(cfg).serve(listener, cancel).await?;
            Ok(())
        }
        Command::Migrate => {
            let config = load()?;
            let store = store::connect(&config.store.url).await?;
            store.migrate().await?;
            println!(
                "migrated {}",
                config::redact::database_url(&config.store.url)
            );
            Ok(())
        }
        Command::Sessions {
            tenant,
            state,
            limit,
        } => {
            let store = open_store(&load()?).await?;
            let mut out = std::io::stdout().lock();
            ccrelay::admin::sessions(&store, tenant.as_deref(), state.as_deref(), limit, &mut out)
                .await
        }
        Command::Transcript {
            tenant,
            user,
            json,
            kind,
        } => {
            let store = open_store(&load()?).await?;
            let mut out = std::io::stdout().lock();
            ccrelay::admin::transcript(&store, &kind, &tenant, &user, json, &mut out).await
        }
        Command::Export {
            what,
            format,
            since,
            until,
            tenant,
            out,
            dir,
            part_rows,
            max_parts,
        } => {
            let store = open_store(&load()?).await?;
            let target = match (out, dir) {
                (Some(path), _) => archive::Target::File(path),
                (None, Some(path)) => archive::Target::Dir {
                    path,
                    part_rows: part_rows.unwrap_or(ccrelay::admin::PART_ROWS),
                    max_parts,
                },
                (None, None) => archive::Target::Stdout,
            };
            let request = archive::Request {
                what,
                format,
                since,
                until: until.unwrap_or_else(time::OffsetDateTime::now_utc),
                tenant,
                target,
            };
            let into_dir = matches!(request.target, archive::Target::Dir { .. });
            // At Ctrl-C the export is dropped, and with it the file it was writing (a
            // `.partial`): what is in place is complete.
            let done = tokio::select! {
                done = archive::export(&store, &request) => done?,
                _ = tokio::signal::ctrl_c() => anyhow::bail!(
                    "interrupted{}",
                    if into_dir { ": run the same command to go on" } else { "" }
                ),
            };
            let until = archive::encode::timestamp_text(done.exported_until);
            tracing::info!(
                what = what.as_str(),
                rows = done.rows,
                files = done.files.len(),
                exported_until = %until,
                complete = done.complete,
                "Export done"
            );
            if let archive::Target::Dir { path, .. } = &request.target {
                if done.complete {
                    eprintln!(
                        "{} rows into {} file(s) in {}; every row stored before {until} is exported",
                        done.rows,
                        done.files.len(),
                        path.display()
                    );
                } else {
                    eprintln!(
                        "{} rows into {} file(s) in {}; stopped at {until}: run the same command to go on",
                        done.rows,
                        done.files.len(),
                        path.display()
                    );
                }
            }
            Ok(())
        }
        Command::Replay {
            since,
            until,
            tenant,
            prefix,
        } => {
            let config = load()?;
            let store = open_store(&config).await?;
            let nats = relay::bus::connect::connect(&config.nats, "ccrelay-replay")
                .await
                .context("connecting to NATS")?;
            let range = ccrelay::admin::Range {
                since,
                until: until.unwrap_or_else(time::OffsetDateTime::now_utc),
                tenant,
            };
            let n =
                ccrelay::admin::replay(&store, &nats, &range, &prefix, &config.nats.prefix).await?;
            println!("replayed {n} messages under {prefix}.>");
            Ok(())
        }
        Command::Deadletter { action } => {
            let store = open_store(&load()?).await?;
            let mut out = std::io::stdout().lock();
            ccrelay::admin::deadletter(&store, action, &mut out).await
        }
        Command::Forget {
            tenant,
            user,
            kind,
            json,
        } => {
            let config = load()?;
            let store = open_store(&config).await?;
            store.migrate().await.context("migrating the store")?;
            let nats = relay::bus::connect::connect(&config.nats, "ccrelay-forget")
                .await
                .context("connecting to NATS")?;
            let mut out = std::io::stdout().lock();
            let who = (kind.as_str(), tenant.as_str(), user.as_str());
            ccrelay::admin::forget(&store, &nats, &config, who, json, &mut out).await
        }
        Command::Erasures {
            customer,
            kind,
            limit,
            json,
        } => {
            let store = open_store(&load()?).await?;
            let who = customer
                .as_deref()
                .and_then(|c| Some((kind.as_str(), c.first()?.as_str(), c.get(1)?.as_str())));
            let mut out = std::io::stdout().lock();
            ccrelay::admin::erasures(&store, who, limit, json, &mut out).await
        }
        Command::Summaries {
            action:
                ccrelay::cli::SummariesAction::List {
                    since,
                    until,
                    tenant,
                    kind,
                    user,
                    limit,
                    json,
                },
        } => {
            let store = open_store(&load()?).await?;
            let filter = ccrelay::admin::SummaryFilter {
                since,
                until,
                tenant,
                kind,
                user,
            };
            let mut out = std::io::stdout().lock();
            ccrelay::admin::summaries(&store, &filter, limit, json, &mut out).await
        }
        Command::Report {
            since,
            until,
            tenant,
            json,
        } => {
            let store = open_store(&load()?).await?;
            let filter = ccrelay::admin::SummaryFilter {
                since: Some(since),
                until: Some(until.unwrap_or_else(time::OffsetDateTime::now_utc)),
                tenant,
                ..Default::default()
            };
            let report = ccrelay::admin::report(&store, &filter).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.text());
            }
            Ok(())
        }
        Command::Cluster { action } => {
            let store = open_store(&load()?).await?;
            cluster(&store, action).await
        }
        Command::CheckConfig => {
            let config = load()?;
            println!("{:#?}", config.redacted());
            println!("configuration OK");
            Ok(())
        }
    }
}

/// `ccrelay cluster …`.
async fn cluster(
    store: &store::DynStore,
    action: ccrelay::cli::ClusterAction,
) -> anyhow::Result<()> {
    use ccrelay::cli::ClusterAction;
    match action {
        ClusterAction::Status { json } => {
            let Some(status) = relay::cluster::status(store).await? else {
                println!("This store is SQLite: one relay, no cluster (docs/HA.md).");
                return Ok(());
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", ccrelay::admin::cluster_status(&status));
            }
            Ok(())
        }
        ClusterAction::Reset { yes } => {
            anyhow::ensure!(
                yes,
                "`ccrelay cluster reset` forgets every lease: stop every relay of the cluster, then \
                 run it with --yes"
            );
            let leases = store
                .leases()
                .context("this store is SQLite: it keeps no cluster")?;
            leases.reset().await?;
            println!("cluster set-up forgotten; the next relay to start sets it up again");
            Ok(())
        }
    }
}

/// The configured database, for the commands that only read it.
async fn open_store(config: &Config) -> anyhow::Result<store::DynStore> {
    store::connect(&config.store.url).await.with_context(|| {
        format!(
            "opening {}",
            config::redact::database_url(&config.store.url)
        )
    })
}
