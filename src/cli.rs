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
    /// Configuration file. Without one, the defaults: SQLite in ./ccrelay.db, NATS at
    /// 127.0.0.1:4222 (and `demo` adds a local nats-server and the built-in simulator).
    #[arg(long, short, global = true, env = "CCRELAY_CONFIG", default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Log format: text (for a terminal) or json.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay until SIGTERM or Ctrl-C. It relays the configured CEC tenants and Tencent IM
    /// apps, and never installs or starts anything (no nats-server, no simulator).
    Run,
    /// Run the relay on its embedded defaults, hold a short scripted conversation through NATS, and
    /// print its transcript. Serves the built-in simulator as tenant `demo`, and starts a local
    /// nats-server (installing one if needed) when none answers at a loopback nats.url; that
    /// server dies with the demo.
    Demo {
        /// Keep the relay running after the conversation (until Ctrl-C).
        #[arg(long)]
        keep_running: bool,
        /// Show a failover instead: this many relays (2–8) as one cluster on PostgreSQL
        /// (CCRELAY_DEMO_PG_URL, else one found or provisioned) and a private nats-server; the
        /// relay that owns the customer is killed mid-conversation.
        #[arg(long)]
        instances: Option<usize>,
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
    /// List stored sessions, newest first.
    Sessions {
        /// Only this tenant's (or app's).
        #[arg(long)]
        tenant: Option<String>,
        /// Only sessions in this state: active, queued or closed.
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Print a customer's stored conversation, both directions, oldest first.
    Transcript {
        tenant: String,
        user: String,
        /// One JSON object per message, every stored field.
        #[arg(long)]
        json: bool,
        /// `cec` (Huawei CEC) or `tim` (Tencent IM).
        #[arg(long, default_value = "cec")]
        kind: String,
    },
    /// Export a table of what the relay stored — the transcript, events, satisfaction results,
    /// offline messages, session summaries — oldest first, as JSON lines, CSV or Parquet, read page by page in
    /// constant memory (docs/ANALYTICS.md).
    Export {
        /// What to export: messages (the transcript), events, satisfaction (evaluations and robot
        /// feedback), offline (offline and leave-messages) or summaries (one row per
        /// conversation, by the time it closed).
        #[arg(long, value_enum, default_value_t = archive::What::Messages)]
        what: archive::What,
        /// jsonl, csv, or parquet (typed columns; needs --out or --dir).
        #[arg(long, value_enum, default_value_t = archive::Format::Jsonl)]
        format: archive::Format,
        /// The rows stored from this time on (RFC 3339, or a date: midnight UTC); default: all.
        /// Into a --dir that holds an export already, it goes on where that one stopped.
        #[arg(long, value_parser = crate::admin::parse_time)]
        since: Option<time::OffsetDateTime>,
        /// The rows stored before this time; default: now.
        #[arg(long, value_parser = crate::admin::parse_time)]
        until: Option<time::OffsetDateTime>,
        /// Only this tenant's (or Tencent app's).
        #[arg(long)]
        tenant: Option<String>,
        /// Write one file, complete or not at all, instead of standard output.
        #[arg(long, conflicts_with = "dir")]
        out: Option<PathBuf>,
        /// Write into this directory one file per time range, and a state file: the same
        /// command run again goes on where the last one stopped (after an interruption, or for
        /// the rows stored since), with every row exactly once.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// With --dir: start a new file after this many rows (at the next change of timestamp).
        #[arg(long, requires = "dir", value_parser = clap::value_parser!(u64).range(1..))]
        part_rows: Option<u64>,
        /// With --dir: stop after writing this many files; run it again to go on.
        #[arg(long, requires = "dir", value_parser = clap::value_parser!(u64).range(1..))]
        max_parts: Option<u64>,
    },
    /// Publish the stored messages of a time range again, under another subject prefix
    /// (`<prefix>.<kind>.<tenant>.<up|down>.<user>`), for an analytics backfill.
    Replay {
        #[arg(long, value_parser = crate::admin::parse_time)]
        since: time::OffsetDateTime,
        #[arg(long, value_parser = crate::admin::parse_time)]
        until: Option<time::OffsetDateTime>,
        #[arg(long)]
        tenant: Option<String>,
        /// The subject prefix to publish under; never the relay's own.
        #[arg(long)]
        prefix: String,
    },
    /// Erase one customer everywhere the relay keeps them (docs/PRIVACY.md): every table, their
    /// files in the object store, their messages in the streams; an audit row says who asked,
    /// when and how many rows went. Refused while the customer's session is open. Safe to repeat.
    /// Needs NATS, not the relay; migrates the database first (as `ccrelay migrate`).
    Forget {
        /// The tenant (`--kind cec`) or Tencent IM app (`--kind tim`).
        tenant: String,
        user: String,
        /// `cec` (Huawei CEC) or `tim` (Tencent IM).
        #[arg(long, default_value = "cec")]
        kind: String,
        /// What went, as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The audit of erasures, newest first (who asked, when, a hash of whom, what went).
    Erasures {
        /// Only the erasures of this customer (TENANT USER, found by their hash).
        #[arg(long, num_args = 2, value_names = ["TENANT", "USER"])]
        customer: Option<Vec<String>>,
        /// `cec` or `tim`, with --customer.
        #[arg(long, default_value = "cec")]
        kind: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// One JSON object per erasure.
        #[arg(long)]
        json: bool,
    },
    /// Load and validate the configuration, print it with secrets redacted, then exit.
    CheckConfig,
    /// What the relay gave up on (poison messages), kept with the reason: list, retry or drop.
    Deadletter {
        #[command(subcommand)]
        action: DeadletterAction,
    },
    /// The summary of every conversation (docs/ANALYTICS.md, "Session summaries").
    Summaries {
        #[command(subcommand)]
        action: SummariesAction,
    },
    /// A period's figures per tenant, from the session summaries: sessions and messages of each
    /// side, queue-wait and first-response percentiles (p50, p90, p99), satisfaction.
    Report {
        /// Sessions closed from this time on (RFC 3339, or a date: midnight UTC).
        #[arg(long, value_parser = crate::admin::parse_time)]
        since: time::OffsetDateTime,
        /// Up to (not including) this time; default: now.
        #[arg(long, value_parser = crate::admin::parse_time)]
        until: Option<time::OffsetDateTime>,
        /// Only this tenant's (or app's).
        #[arg(long)]
        tenant: Option<String>,
        /// The report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Several relays on one PostgreSQL (docs/HA.md): members, partitions, leases.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
}

/// `ccrelay cluster …`.
#[derive(Debug, Subcommand)]
pub enum ClusterAction {
    /// Members (live or not), partitions with owner, epoch and lease remaining, as the database
    /// sees them now.
    Status {
        /// The whole status as JSON (what `P.rpc.cluster.status` answers).
        #[arg(long)]
        json: bool,
    },
    /// Forgets the cluster's set-up (partition count, owners, members), so relays with another
    /// `cluster.partitions` can start. Only with every relay stopped.
    Reset {
        /// Confirms that no relay of the cluster is running.
        #[arg(long)]
        yes: bool,
    },
}

/// `ccrelay summaries …`.
#[derive(Debug, Subcommand)]
pub enum SummariesAction {
    /// Summaries of closed sessions (and Tencent Desk sessions), oldest close first.
    List {
        /// Closed from this time on (RFC 3339, or a date: midnight UTC).
        #[arg(long, value_parser = crate::admin::parse_time)]
        since: Option<time::OffsetDateTime>,
        /// Closed before this time.
        #[arg(long, value_parser = crate::admin::parse_time)]
        until: Option<time::OffsetDateTime>,
        /// Only this tenant's (or app's).
        #[arg(long)]
        tenant: Option<String>,
        /// Only `cec` (Huawei CEC) or `tim` (Tencent Desk) sessions.
        #[arg(long)]
        kind: Option<String>,
        /// Only this customer's.
        #[arg(long)]
        user: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u64,
        /// One JSON object per summary, every field (what `summaries.list` answers).
        #[arg(long)]
        json: bool,
    },
}

/// `ccrelay deadletter …`.
#[derive(Debug, Subcommand)]
pub enum DeadletterAction {
    /// The oldest dead letters, with their source, reason and error.
    List {
        /// One JSON object per dead letter, every stored field (the payload as text or base64).
        #[arg(long)]
        json: bool,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Publish one again on its subject (through the outbox of the running relay); an uplink
    /// message is then handled again, its failed outcome reset.
    Retry { id: i64 },
    /// Delete one for good.
    Drop { id: i64 },
}
