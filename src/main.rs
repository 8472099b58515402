//! The `ccrelay` binary: parse the command line, load the configuration, start logging, run.
#![forbid(unsafe_code)]

use anyhow::Context as _;
use clap::Parser;

use ccrelay::cli::{Cli, Command};
use ccrelay::config::Config;

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
    let explicit = cli.config.as_os_str() != ccrelay::config::DEFAULT_PATH;
    let load = || Config::load(&cli.config, explicit).context("invalid configuration");
    match cli.command {
        Command::Run => {
            let app = ccrelay::app::App::start(load()?).await?;
            if app.run_until(ccrelay::app::shutdown_signal()).await == ccrelay::app::Stopped::Forced
            {
                // Exit without waiting for anything, as a second Ctrl-C asks.
                std::process::exit(130);
            }
            Ok(())
        }
        Command::Demo { keep_running } => ccrelay::demo::run(load()?, keep_running).await,
        Command::Simulate { listen, sim_config } => {
            let cfg = match sim_config {
                Some(p) => {
                    use figment::providers::Format as _;
                    figment::Figment::new()
                        .merge(figment::providers::Toml::file(&p))
                        .extract::<ccrelay::sim::SimConfig>()
                        .with_context(|| format!("simulator settings {}", p.display()))?
                }
                None => ccrelay::sim::SimConfig::default(),
            };
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            tracing::info!(listen = %listener.local_addr()?, "CEC simulator listening");
            let cancel = tokio_util::sync::CancellationToken::new();
            let c = cancel.clone();
            tokio::spawn(async move {
                ccrelay::app::shutdown_signal().await;
                c.cancel();
            });
            ccrelay::sim::Simulator::new(cfg)
                .serve(listener, cancel)
                .await?;
            Ok(())
        }
        Command::Migrate => {
            let config = load()?;
            let store = ccrelay::store::connect(&config.store.url).await?;
            store.migrate().await?;
            println!("migrated {}", ccrelay::store::redact_url(&config.store.url));
            Ok(())
        }
        Command::CheckConfig => {
            let config = load()?;
            println!("{config:#?}");
            println!("configuration OK");
            Ok(())
        }
    }
}
