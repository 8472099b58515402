//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "ccrelay",
    version,
    about = "Relays Huawei CEC and Tencent IM contact centers to NATS JetStream"
)]
pub struct Cli {
    /// Configuration file. Without one (and without [[cec]] tenants) the relay runs on its
    /// embedded defaults: SQLite, a local nats-server, the built-in simulator.
    #[arg(long, short, global = true, env = "CCRELAY_CONFIG", default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Log format: text (for a terminal) or json.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay until SIGTERM or Ctrl-C.
    Run,
    /// Run the relay on its embedded defaults, hold a short scripted conversation through NATS, and
    /// print its transcript.
    Demo {
        /// Keep the relay running after the conversation (until Ctrl-C).
        #[arg(long)]
        keep_running: bool,
    },
    /// Serve the simulator of CEC and Tencent IM (for development and tests).
    Simulate {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8400")]
        listen: SocketAddr,
        /// Simulator settings (TOML; see docs/SIMULATOR.md). Defaults otherwise.
        #[arg(long)]
        sim_config: Option<PathBuf>,
    },
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Load and validate the configuration, print it with secrets redacted, then exit.
    CheckConfig,
}
