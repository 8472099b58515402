//! Configuration: one TOML file plus `CCRELAY_<SECTION>__<KEY>` environment overrides, read with
//! figment and validated before anything starts.
//!
//! - Unknown keys are errors (a typo must not silently fall back to a default).
//! - Durations are written with their unit (`"1s"`, `"30m"`) and exposed as [`Duration`].
//! - Secrets are [`SecretString`]s: `Debug` prints `[REDACTED]`, and they never reach logs.
//!   Each can also be read from a file (`app_secret_file`, for systemd `LoadCredential=`).
//!   A URL's own password (`store.url`, `nats.url`) is shown as `***` wherever the relay prints
//!   the URL ([`Config::redacted`], [`crate::redact::database_url`],
//!   [`crate::redact::nats_url`]).
//! - An environment variable's value is parsed as TOML (`CCRELAY_NATS__MAX_BYTES=1024` is a
//!   number), except for the keys that are text ([`ENV_TEXT_KEYS`]): a password of digits stays
//!   the string it is.
//! - The array sections `[[cec]]` and `[[tim]]` are overridden per entry by its name:
//!   `CCRELAY_CEC__ACME__APP_SECRET=…` sets `app_secret` of the tenant named `acme`.
//!
//! The built-in simulator is a tenant only under `ccrelay demo` (as tenant `demo`, see
//! [`Config::uses_simulator`]); `ccrelay run` relays exactly the `[[cec]]` and `[[tim]]` entries
//! configured.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use contract::subjects::{TokenError, check_name};

pub mod redact;

/// The default path of the configuration file.
pub const DEFAULT_PATH: &str = "config/ccrelay.toml";
/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "CCRELAY_";
/// The keys (last part of the name) whose environment value is text, taken as is: parsed as TOML,
/// `CCRELAY_NATS__PASSWORD=12345678` would be a number and `0123` would lose its zero. Keys ending
/// in `_file` are text too.
pub const ENV_TEXT_KEYS: &[&str] = &[
    "url",
    "prefix",
    "user",
    "password",
    "token",
    "listen",
    "files_bucket",
    "app_key",
    "app_secret",
    "secret_key",
    "callback_token",
    "channel_config_id",
    "admin_identifier",
    "locale",
    "name",
];

/// Whether the environment value of `key` (its last part) is text, never parsed.
fn env_text_key(key: &str) -> bool {
    ENV_TEXT_KEYS.contains(&key) || key.ends_with("_file")
}
/// The tenant name used for the built-in simulator when no tenant is configured.
pub const DEMO_TENANT: &str = "demo";

/// Why the configuration cannot be used. Always names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
    #[error("configuration key `{key}`: cannot read {path}: {source}")]
    SecretFile {
        key: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub store: StoreConfig,
    pub nats: NatsConfig,
    pub http: HttpConfig,
    pub relay: RelayConfig,
    pub rpc: RpcConfig,
    pub cluster: ClusterConfig,
    pub cec: Vec<CecTenant>,
    pub tim: Vec<TimApp>,
}

/// `[store]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` (created if missing) or `postgres://user@host/db`.
    pub url: String,
    /// PostgreSQL: read the password from this file (trailing newline trimmed) into `url`'s
    /// password at load, so `url` itself holds no secret.
    pub password_file: Option<PathBuf>,
    /// How long the relay keeps what it stored (docs/PRIVACY.md): older transcripts, events,
    /// satisfactions, offline messages, files' rows, Tencent callbacks and streams, dead letters,
    /// summaries' free text and closed sessions are deleted in the background. `None` (the
    /// default): kept until deleted by hand. At least an hour; the streams' and the files
    /// bucket's `max_age` may not be longer.
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// How often the retention pass runs (the first one this long after start, at most a minute).
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
    /// Rows deleted per transaction by retention and erasure: small, so that the relay's own
    /// writes never wait long for them.
    pub retention_batch: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "sqlite://ccrelay.db".to_owned(),
            password_file: None,
            retention: None,
            retention_interval: Duration::from_secs(3600),
            retention_batch: 500,
        }
    }
}

/// The URL with its password redacted: `Debug` output (`check-config`, logs) never shows it.
impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &crate::redact::database_url(&self.url))
            .field("password_file", &self.password_file)
            .field("retention", &self.retention)
            .field("retention_interval", &self.retention_interval)
            .field("retention_batch", &self.retention_batch)
            .finish()
    }
}

/// `[nats]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// Subject prefix P; streams are `<P upper>_IN` and `<P upper>_OUT`.
    pub prefix: String,
    /// Let `ccrelay run` start a local nats-server (one already on this machine, never
    /// installed) when none answers at a loopback `url`; off by default. `ccrelay demo` always
    /// does. The server is the relay's child and dies with it.
    pub embedded: bool,
    /// A `.creds` file (JWT + nkey).
    pub credentials_file: Option<PathBuf>,
    /// A file holding an nkey seed.
    pub nkey_seed_file: Option<PathBuf>,
    pub user: Option<String>,
    #[serde(deserialize_with = "secret_text::deserialize")]
    pub password: Option<SecretString>,
    /// Read `password` from this file instead (trailing newline trimmed).
    pub password_file: Option<PathBuf>,
    #[serde(deserialize_with = "secret_text::deserialize")]
    pub token: Option<SecretString>,
    /// Read `token` from this file instead (trailing newline trimmed).
    pub token_file: Option<PathBuf>,
    /// Require TLS; with `tls_ca_file` to trust a private CA.
    pub tls_required: bool,
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Streams: how long messages are kept (`0s` = forever).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Streams: size limit in bytes (`-1` = unlimited).
    pub max_bytes: i64,
    /// Streams: replicas (1 for a single server, 3 in a cluster).
    pub replicas: usize,
    /// Streams: the de-duplication window for `Nats-Msg-Id`. Must cover the longest time the relay
    /// may be down between publishing a row and recording its PubAck.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Consumer: how long a delivered uplink message may stay unacknowledged before redelivery.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Consumer: how many uplink messages may be in flight at once.
    pub max_ack_pending: i64,
    /// Consumer: deliveries of one uplink message after which JetStream stops delivering it (and
    /// the relay records it as a dead letter from the max-deliveries advisory). The relay itself
    /// retries in place rather than asking for redelivery, so only restarts and lost acks count.
    pub max_deliver: i64,
    /// Object store bucket for the files agents send (default `<PREFIX>_FILES`).
    pub files_bucket: Option<String>,
    /// Files bucket: size limit in bytes (`-1` = unlimited). When full, new files are refused
    /// (their DownMessages carry `fileError`); stored ones are kept.
    pub files_max_bytes: i64,
    /// Files bucket: how long a file is kept (`0s` = forever).
    #[serde(with = "humantime_serde")]
    pub files_max_age: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".to_owned(),
            prefix: "ccrelay".to_owned(),
            embedded: false,
            credentials_file: None,
            nkey_seed_file: None,
            user: None,
            password: None,
            password_file: None,
            token: None,
            token_file: None,
            tls_required: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: -1,
            replicas: 1,
            duplicate_window: Duration::from_secs(10 * 60),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 10_000,
            max_deliver: 50,
            files_bucket: None,
            files_max_bytes: -1,
            files_max_age: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// `[cluster]`: several relays on one PostgreSQL database and one NATS prefix as one service
/// (docs/HA.md). A relay on SQLite is a cluster of one and ignores it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This instance's name among the members (1–64 of `A-Z a-z 0-9 _ -`). Default: the host
    /// name and a random suffix, new at each start.
    pub id: Option<String>,
    /// How long a partition stays with an instance that stops renewing it: a dead instance's
    /// work moves after about this long.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How many partitions the work (by tenant and user) is divided into: fixed for the lifetime
    /// of a database (the first relay records it; a different value is refused at start).
    pub partitions: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            id: None,
            lease: Duration::from_secs(10),
            partitions: 64,
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of `/healthz`, `/readyz`, `/metrics` and the Tencent callbacks.
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9464".to_owned(),
        }
    }
}

/// `[relay]`: the relay's own behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// At most this many polls in flight at once, per tenant: a tenant whose upstream hangs cannot
    /// delay the polls of the others.
    pub max_concurrent_polls: usize,
    /// At most this many uplink messages being sent upstream at once, per tenant: a tenant whose
    /// upstream fails (its messages held by retries) cannot slow the others down.
    pub max_concurrent_sends: usize,
    /// How long SIGTERM may take to drain in-flight work before the relay exits anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Outbox rows published per batch.
    pub outbox_batch: usize,
    /// Download attempts of a file an agent sent before its DownMessage is published with
    /// `fileError`.
    pub media_attempts: u32,
    /// How long after it was received a file's download is given up (its DownMessage is then
    /// published with `fileError`), whatever the attempts left.
    #[serde(with = "humantime_serde")]
    pub media_deadline: Duration,
    /// At most this many file downloads at once.
    pub media_concurrency: usize,
    /// Failed publishes of one outbox row (for a reason of its own, not NATS being away) before
    /// it becomes a dead letter.
    pub outbox_attempts: u32,
    /// `/readyz` says not ready while the oldest outbox row that could be published has waited
    /// longer than this.
    #[serde(with = "humantime_serde")]
    pub outbox_stuck_after: Duration,
    /// Upstream attempts of one uplink message (retryable failures and "slow down" answers)
    /// before it is given up: a final failed result, a dead letter, and an ack.
    pub up_attempts: u32,
    /// How long after it reached the `_IN` stream an uplink message is given up, whatever the
    /// attempts left.
    #[serde(with = "humantime_serde")]
    pub up_max_age: Duration,
    /// Directory of the poll journal (the relay's `poller::journal`). Default: the SQLite
    /// database's directory; for PostgreSQL the working directory (the systemd unit's
    /// `StateDirectory`).
    pub journal_dir: Option<PathBuf>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            max_concurrent_polls: 512,
            max_concurrent_sends: 256,
            shutdown_timeout: Duration::from_secs(15),
            outbox_batch: 512,
            media_attempts: 5,
            media_deadline: Duration::from_secs(10 * 60),
            media_concurrency: 8,
            journal_dir: None,
            outbox_attempts: 5,
            outbox_stuck_after: Duration::from_secs(60),
            up_attempts: 8,
            up_max_age: Duration::from_secs(10 * 60),
        }
    }
}

/// `[rpc]`: request-reply on `P.cec.<t>.rpc.<op>` and `P.rpc.<op>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RpcConfig {
    /// Replies go only to reply subjects that start with one of these; a request with any other
    /// reply subject is dropped (logged and counted), so no caller can make the relay publish on
    /// a subject of its choosing. Each ends with `.`.
    pub inbox_prefixes: Vec<String>,
    /// At most this many requests worked on at once per tenant (and as many for the relay-wide
    /// ones together); a request beyond it is answered `unavailable` at once.
    pub max_concurrent: usize,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            inbox_prefixes: vec!["_INBOX.".to_owned()],
            max_concurrent: 64,
        }
    }
}

/// One `[[cec]]` tenant: a Huawei CEC account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CecTenant {
    /// Subject token `<t>`: `[A-Za-z0-9_-]{1,64}`.
    pub name: String,
    /// `https://service.besclouds.com` or your CEC domain.
    pub base_url: url::Url,
    pub app_key: String,
    #[serde(default, deserialize_with = "secret_text::deserialize")]
    pub app_secret: Option<SecretString>,
    /// Read `app_secret` from this file instead (trailing newline trimmed).
    #[serde(default)]
    pub app_secret_file: Option<PathBuf>,
    /// The web channel's configuration id ("配置ID").
    pub channel_config_id: String,
    #[serde(default = "default_locale")]
    pub locale: String,
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// A session with no message either way for this long is closed (`reason: idle`).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Timeout of each upstream HTTP call.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Lifetime asked for the AccessToken (`X-Token-Expire`).
    #[serde(default = "default_token_expire", with = "humantime_serde")]
    pub token_expire: Duration,
    /// At most this many open sessions (active or queued) at once; a CONNECT beyond it is refused
    /// (`session_limit`) before any upstream call.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// The largest file (decoded) a downloadFileStream answer may carry; a larger answer is not
    /// read to its end and the file fails with `too_large`.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: usize,
}

fn default_locale() -> String {
    "zh".to_owned()
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_token_expire() -> Duration {
    Duration::from_secs(600)
}
fn default_max_sessions() -> usize {
    10_000
}
fn default_max_file_bytes() -> usize {
    20 * 1024 * 1024
}

impl CecTenant {
    /// The app secret (after `app_secret_file` was resolved at load).
    pub fn secret(&self) -> &str {
        self.app_secret
            .as_ref()
            .map(|s| s.expose_secret())
            .unwrap_or("")
    }

    /// A tenant pointing at a simulator.
    pub fn simulated(
        name: &str,
        base_url: url::Url,
        app_key: &str,
        secret: &str,
        channel: &str,
    ) -> Self {
        CecTenant {
            name: name.to_owned(),
            base_url,
            app_key: app_key.to_owned(),
            app_secret: Some(SecretString::from(secret.to_owned())),
            app_secret_file: None,
            channel_config_id: channel.to_owned(),
            locale: default_locale(),
            poll_interval: default_poll_interval(),
            idle_timeout: default_idle_timeout(),
            request_timeout: default_request_timeout(),
            token_expire: default_token_expire(),
            max_sessions: default_max_sessions(),
            max_file_bytes: default_max_file_bytes(),
        }
    }
}

/// One `[[tim]]` application: a Tencent Cloud IM app (Desk sends, robot streams, callbacks).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimApp {
    pub name: String,
    #[serde(default = "default_tim_url")]
    pub base_url: url::Url,
    pub sdkappid: u64,
    #[serde(default, deserialize_with = "secret_text::deserialize")]
    pub secret_key: Option<SecretString>,
    #[serde(default)]
    pub secret_key_file: Option<PathBuf>,
    #[serde(default = "default_admin")]
    pub admin_identifier: String,
    /// Checks the `Sign` of inbound callbacks (`sha256(token + RequestTime)`). Without it,
    /// callbacks are refused unless `allow_unsigned_callbacks` is set.
    #[serde(default, deserialize_with = "secret_text::deserialize")]
    pub callback_token: Option<SecretString>,
    #[serde(default)]
    pub callback_token_file: Option<PathBuf>,
    /// Accept callbacks without a signature when no `callback_token` is set (a test set-up, or
    /// a relay reachable only from Tencent's addresses); warned about at start.
    #[serde(default)]
    pub allow_unsigned_callbacks: bool,
    /// REST calls per second for this app, shared by all its sends and streams.
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
    /// Per upstream HTTP call.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Lifetime of the admin UserSig the relay signs (`TLS.expire`); renewed well before it ends.
    #[serde(default = "default_sig_expire", with = "humantime_serde")]
    pub sig_expire: Duration,
    /// A stream that receives no chunk for this long is finished by the relay (`Finish: 1`).
    #[serde(default = "default_stream_idle", with = "humantime_serde")]
    pub stream_idle_timeout: Duration,
}

fn default_sig_expire() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_stream_idle() -> Duration {
    Duration::from_secs(30)
}

fn default_tim_url() -> url::Url {
    // A literal that always parses.
    url::Url::parse("https://console.tim.qq.com").unwrap_or_else(|_| unreachable!())
}
fn default_admin() -> String {
    "administrator".to_owned()
}
fn default_rate_limit() -> u32 {
    200
}

impl Config {
    /// Loads `path` (if it exists, or if `required`), applies environment overrides and validates.
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        Self::load_with_env(path, required, std::env::vars())
    }

    /// [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        path: &Path,
        required: bool,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        if required && !path.exists() {
            return Err(invalid(
                "--config",
                format!("file {} does not exist", path.display()),
            ));
        }
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        // Exactly `path` (relative to the working directory), if it exists: `Toml::file` would
        // also look for it in every parent directory, so a relay started in the wrong directory
        // would read some other configuration.
        let mut figment = Figment::new();
        if path.exists() {
            figment = figment.merge(Toml::file_exact(path));
        }
        let figment = figment.merge(EnvSnapshot { env: env.clone() });
        let mut root: Dict = figment
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        apply_array_overrides(&mut root, &env)?;
        let mut config: Config = Figment::from(Serialized::defaults(Value::from(root)))
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.resolve_secret_files()?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML string (no environment), validated. For tests and `check-config`.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = Figment::new()
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.resolve_secret_files()?;
        config.validate()?;
        Ok(config)
    }

    /// True when no `[[cec]]` tenant is configured: `ccrelay demo` can then serve the built-in
    /// simulator as tenant `demo` (`ccrelay run` never does).
    pub fn uses_simulator(&self) -> bool {
        self.cec.is_empty()
    }

    /// A copy fit for printing: the passwords and tokens inside `store.url` and `nats.url` are
    /// `***` (the secret fields are [`SecretString`]s, redacted by their own `Debug`).
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.store.url = crate::redact::database_url(&c.store.url);
        c.nats.url = crate::redact::nats_url(&c.nats.url);
        c
    }

    fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.store.password_file {
            let key = "store.password";
            let Some(password) = resolve_secret(key, None, Some(path))? else {
                return Err(invalid(key, "cannot read the password file"));
            };
            let mut url = url::Url::parse(&self.store.url).map_err(|e| {
                invalid(
                    "store.url",
                    format!("{:?}: {e}", crate::redact::database_url(&self.store.url)),
                )
            })?;
            if !matches!(url.scheme(), "postgres" | "postgresql") {
                return Err(invalid(
                    "store.password_file",
                    "only for a postgres:// store.url",
                ));
            }
            if url.password().is_some() {
                return Err(invalid(
                    "store.password_file",
                    "store.url has a password already: set one or the other",
                ));
            }
            url.set_password(Some(password.expose_secret()))
                .map_err(|()| invalid("store.url", "has no host to give a password to"))?;
            self.store.url = url.to_string();
        }
        let n = &mut self.nats;
        n.password = resolve_secret(
            "nats.password",
            n.password.take(),
            n.password_file.as_deref(),
        )?;
        n.token = resolve_secret("nats.token", n.token.take(), n.token_file.as_deref())?;
        for (i, t) in self.cec.iter_mut().enumerate() {
            let key = format!("cec[{i}] ({}).app_secret", t.name);
            t.app_secret = resolve_secret(&key, t.app_secret.take(), t.app_secret_file.as_deref())?;
        }
        for (i, a) in self.tim.iter_mut().enumerate() {
            let key = format!("tim[{i}] ({}).secret_key", a.name);
            a.secret_key = resolve_secret(&key, a.secret_key.take(), a.secret_key_file.as_deref())?;
            let key = format!("tim[{i}] ({}).callback_token", a.name);
            a.callback_token = resolve_secret(
                &key,
                a.callback_token.take(),
                a.callback_token_file.as_deref(),
            )?;
        }
        Ok(())
    }

    /// Checks everything serde cannot: names, URLs, durations, uniqueness.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_prefix(&self.nats.prefix).map_err(|r| invalid("nats.prefix", r))?;
        for u in self.nats.url.split(',') {
            let u = u.trim();
            let shown = crate::redact::nats_url(u);
            let parsed =
                url::Url::parse(u).map_err(|e| invalid("nats.url", format!("{shown:?}: {e}")))?;
            if !matches!(parsed.scheme(), "nats" | "tls" | "ws" | "wss") {
                return Err(invalid(
                    "nats.url",
                    format!("{shown:?}: scheme must be nats, tls, ws or wss"),
                ));
            }
        }
        if self.nats.password.is_some() && self.nats.user.is_none() {
            return Err(invalid(
                "nats.password",
                "needs nats.user (a password alone is not sent)",
            ));
        }
        if self.nats.replicas == 0 || self.nats.replicas > 5 {
            return Err(invalid("nats.replicas", "must be 1 to 5"));
        }
        if self.nats.duplicate_window < Duration::from_secs(1) {
            return Err(invalid("nats.duplicate_window", "must be at least 1s"));
        }
        if self.nats.ack_wait < Duration::from_secs(1) {
            return Err(invalid("nats.ack_wait", "must be at least 1s"));
        }
        if self.nats.max_ack_pending < 1 {
            return Err(invalid("nats.max_ack_pending", "must be at least 1"));
        }
        if !(self.store.url.starts_with("sqlite:")
            || self.store.url.starts_with("postgres:")
            || self.store.url.starts_with("postgresql:"))
        {
            return Err(invalid(
                "store.url",
                format!(
                    "{:?}: must start with sqlite: or postgres:",
                    crate::redact::database_url(&self.store.url)
                ),
            ));
        }
        self.check_retention()?;
        self.http
            .listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| invalid("http.listen", format!("{:?}: {e}", self.http.listen)))?;
        if self.relay.max_concurrent_polls == 0 {
            return Err(invalid("relay.max_concurrent_polls", "must be at least 1"));
        }
        if self.relay.max_concurrent_sends == 0 {
            return Err(invalid("relay.max_concurrent_sends", "must be at least 1"));
        }
        if self.relay.outbox_batch == 0 {
            return Err(invalid("relay.outbox_batch", "must be at least 1"));
        }
        if self.relay.media_attempts == 0 {
            return Err(invalid("relay.media_attempts", "must be at least 1"));
        }
        if self.relay.media_deadline.is_zero() {
            return Err(invalid("relay.media_deadline", "must be more than 0s"));
        }
        if self.relay.media_concurrency == 0 {
            return Err(invalid("relay.media_concurrency", "must be at least 1"));
        }
        if self.nats.files_max_bytes < -1 || self.nats.files_max_bytes == 0 {
            return Err(invalid(
                "nats.files_max_bytes",
                "must be -1 (unlimited) or a size in bytes",
            ));
        }
        if self.rpc.inbox_prefixes.is_empty() {
            return Err(invalid(
                "rpc.inbox_prefixes",
                "must name at least one prefix (the default is [\"_INBOX.\"])",
            ));
        }
        for p in &self.rpc.inbox_prefixes {
            check_inbox_prefix(p, &self.nats.prefix)
                .map_err(|r| invalid("rpc.inbox_prefixes", r))?;
        }
        if let Some(id) = &self.cluster.id
            && (id.is_empty()
                || id.len() > 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        {
            return Err(invalid(
                "cluster.id",
                format!("{id:?}: must be 1 to 64 of A-Z a-z 0-9 _ -"),
            ));
        }
        if self.cluster.lease < Duration::from_secs(2)
            || self.cluster.lease > Duration::from_secs(300)
        {
            return Err(invalid("cluster.lease", "must be 2s to 300s"));
        }
        if !(1..=1024).contains(&self.cluster.partitions) {
            return Err(invalid("cluster.partitions", "must be 1 to 1024"));
        }
        if self.rpc.max_concurrent == 0 {
            return Err(invalid("rpc.max_concurrent", "must be at least 1"));
        }
        if let Some(b) = &self.nats.files_bucket
            && (b.is_empty()
                || !b
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        {
            return Err(invalid(
                "nats.files_bucket",
                format!("{b:?}: must be 1 or more of A-Z a-z 0-9 _ -"),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.cec.iter().enumerate() {
            let k = |f: &str| format!("cec[{i}].{f}");
            check_name(&t.name).map_err(|e| invalid(k("name"), name_reason(&t.name, e)))?;
            if !names.insert(t.name.as_str()) {
                return Err(invalid(k("name"), format!("{:?} is used twice", t.name)));
            }
            check_http_url(&t.base_url).map_err(|r| invalid(k("base_url"), r))?;
            if t.app_key.trim().is_empty() {
                return Err(invalid(k("app_key"), "must not be empty"));
            }
            if t.app_secret
                .as_ref()
                .is_none_or(|s| s.expose_secret().is_empty())
            {
                return Err(invalid(
                    k("app_secret"),
                    "missing: set app_secret or app_secret_file",
                ));
            }
            if t.channel_config_id.trim().is_empty() {
                return Err(invalid(k("channel_config_id"), "must not be empty"));
            }
            if t.locale.trim().is_empty() {
                return Err(invalid(k("locale"), "must not be empty"));
            }
            if t.max_sessions == 0 {
                return Err(invalid(k("max_sessions"), "must be at least 1"));
            }
            if t.max_file_bytes == 0 {
                return Err(invalid(k("max_file_bytes"), "must be at least 1"));
            }
            for (f, d, min) in [
                ("poll_interval", t.poll_interval, Duration::from_millis(50)),
                ("idle_timeout", t.idle_timeout, Duration::from_secs(1)),
                (
                    "request_timeout",
                    t.request_timeout,
                    Duration::from_millis(100),
                ),
                ("token_expire", t.token_expire, Duration::from_secs(60)),
            ] {
                if d < min {
                    return Err(invalid(
                        k(f),
                        format!(
                            "{} is too short: at least {}",
                            fmt_duration(d),
                            fmt_duration(min)
                        ),
                    ));
                }
            }
        }
        let mut apps = std::collections::HashSet::new();
        for (i, a) in self.tim.iter().enumerate() {
            let k = |f: &str| format!("tim[{i}].{f}");
            check_name(&a.name).map_err(|e| invalid(k("name"), name_reason(&a.name, e)))?;
            if !apps.insert(a.name.as_str()) {
                return Err(invalid(k("name"), format!("{:?} is used twice", a.name)));
            }
            check_http_url(&a.base_url).map_err(|r| invalid(k("base_url"), r))?;
            if a.secret_key
                .as_ref()
                .is_none_or(|s| s.expose_secret().is_empty())
            {
                return Err(invalid(
                    k("secret_key"),
                    "missing: set secret_key or secret_key_file",
                ));
            }
            if a.callback_token
                .as_ref()
                .is_some_and(|s| s.expose_secret().trim().is_empty())
            {
                return Err(invalid(
                    k("callback_token"),
                    "is empty: anyone could sign with it; set the app's token, or remove it \
                     and set allow_unsigned_callbacks = true",
                ));
            }
            if a.rate_limit == 0 {
                return Err(invalid(k("rate_limit"), "must be at least 1"));
            }
            if a.sdkappid == 0 || a.sdkappid > u64::from(u32::MAX) {
                return Err(invalid(k("sdkappid"), "must be a 32-bit SDKAppID, not 0"));
            }
            if a.admin_identifier.trim().is_empty() {
                return Err(invalid(k("admin_identifier"), "must not be empty"));
            }
            for (f, d, min) in [
                (
                    "request_timeout",
                    a.request_timeout,
                    Duration::from_millis(100),
                ),
                ("sig_expire", a.sig_expire, Duration::from_secs(300)),
                (
                    "stream_idle_timeout",
                    a.stream_idle_timeout,
                    Duration::from_millis(100),
                ),
            ] {
                if d < min {
                    return Err(invalid(
                        k(f),
                        format!(
                            "{} is too short: at least {}",
                            fmt_duration(d),
                            fmt_duration(min)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Config {
    /// `store.retention` and what must agree with it: nothing of a customer outlives it, in the
    /// database (the relay's retention task), in the streams (`nats.max_age`) or in the files
    /// bucket (`nats.files_max_age`), whose own limits delete what is older.
    fn check_retention(&self) -> Result<(), ConfigError> {
        let s = &self.store;
        if s.retention_interval < Duration::from_secs(1) {
            return Err(invalid("store.retention_interval", "must be at least 1s"));
        }
        if !(1..=10_000).contains(&s.retention_batch) {
            return Err(invalid("store.retention_batch", "must be 1 to 10000"));
        }
        let Some(keep) = s.retention else {
            return Ok(());
        };
        if keep < Duration::from_secs(3600) {
            return Err(invalid(
                "store.retention",
                format!("{} is too short: at least 1h", fmt_duration(keep)),
            ));
        }
        for (key, age) in [
            ("nats.max_age", self.nats.max_age),
            ("nats.files_max_age", self.nats.files_max_age),
        ] {
            if age.is_zero() || age > keep {
                let have = if age.is_zero() {
                    "0s (forever)".to_owned()
                } else {
                    fmt_duration(age)
                };
                return Err(invalid(
                    key,
                    format!(
                        "is {have}, longer than store.retention ({}): set it to at most that, \
                         so that nothing outlives the retention there",
                        fmt_duration(keep)
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn name_reason(name: &str, e: TokenError) -> String {
    format!("{name:?} {e}: names must match [A-Za-z0-9_-]{{1,64}}")
}

fn check_prefix(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("must not be empty".into());
    }
    for part in p.split('.') {
        check_name(part)
            .map_err(|e| format!("{p:?}: each part {e}; use [A-Za-z0-9_-] and dots"))?;
    }
    Ok(())
}

/// A reply-subject prefix: subject tokens ending with `.`, not the relay's own subjects and not
/// the server's (`$JS.…`, `$SYS.…`).
fn check_inbox_prefix(p: &str, relay_prefix: &str) -> Result<(), String> {
    let Some(body) = p.strip_suffix('.') else {
        return Err(format!("{p:?} must end with \".\" (e.g. \"_INBOX.\")"));
    };
    if p.len() > 128 {
        return Err(format!("{p:?} is longer than 128 bytes"));
    }
    for part in body.split('.') {
        contract::subjects::check_token(part)
            .map_err(|e| format!("{p:?}: a part {e}; use dot-separated subject tokens"))?;
    }
    if p.starts_with('$') {
        return Err(format!(
            "{p:?}: subjects starting with $ belong to the server (JetStream, system)"
        ));
    }
    let own = format!("{relay_prefix}.");
    if p.starts_with(&own) || own.starts_with(p) {
        return Err(format!(
            "{p:?} overlaps the relay's own subjects ({relay_prefix}.>)"
        ));
    }
    Ok(())
}

fn check_http_url(u: &url::Url) -> Result<(), String> {
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!("{u}: scheme must be http or https"));
    }
    if u.host_str().is_none() {
        return Err(format!("{u}: has no host"));
    }
    Ok(())
}

fn resolve_secret(
    key: &str,
    inline: Option<SecretString>,
    file: Option<&Path>,
) -> Result<Option<SecretString>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(invalid(key, "set either the secret or its _file, not both")),
        (Some(s), None) => Ok(Some(s)),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
                key: format!("{key}_file"),
                path: path.to_owned(),
                source,
            })?;
            Ok(Some(SecretString::from(
                text.trim_end_matches(['\n', '\r']).to_owned(),
            )))
        }
        (None, None) => Ok(None),
    }
}

/// Reading a secret: text, or an integer taken as its digits (`password = 12345678` unquoted in
/// TOML). Anything else is refused with a message that does not quote the value, so a
/// mistyped secret cannot reach an error line.
mod secret_text {
    use secrecy::SecretString;
    use serde::de::{Deserializer, Error, Visitor};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
        d.deserialize_option(Optional)
    }

    const EXPECTED: &str = "a secret: text (quote it), or an integer";

    struct Optional;

    impl<'de> Visitor<'de> for Optional {
        type Value = Option<SecretString>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(EXPECTED)
        }
        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(Secret).map(Some)
        }
    }

    struct Secret;

    impl<'de> Visitor<'de> for Secret {
        type Value = SecretString;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(EXPECTED)
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(SecretString::from(v.to_owned()))
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(SecretString::from(v.to_string()))
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(SecretString::from(v.to_string()))
        }
        fn visit_f64<E: Error>(self, _: f64) -> Result<Self::Value, E> {
            Err(E::custom(format!("expected {EXPECTED}")))
        }
        fn visit_bool<E: Error>(self, _: bool) -> Result<Self::Value, E> {
            Err(E::custom(format!("expected {EXPECTED}")))
        }
        fn visit_char<E: Error>(self, v: char) -> Result<Self::Value, E> {
            Ok(SecretString::from(v.to_string()))
        }
    }
}

/// The environment overrides as a figment provider, from the snapshot given to
/// [`Config::load_with_env`], so tests do not depend on (or change) the real environment.
///
/// Plain sections only: `CCRELAY_STORE__URL` → `store.url`. Variables without a section
/// (`CCRELAY_CONFIG`, `CCRELAY_LOG`…) are not configuration keys, and the array sections are
/// applied by name in [`apply_array_overrides`].
struct EnvSnapshot {
    env: Vec<(String, String)>,
}

impl figment::Provider for EnvSnapshot {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable(s)")
    }
    fn data(&self) -> Result<figment::value::Map<figment::Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (k, v) in &self.env {
            let rest = k[ENV_PREFIX.len()..].to_ascii_lowercase();
            if !rest.contains("__") || rest.starts_with("cec__") || rest.starts_with("tim__") {
                continue;
            }
            let key = rest.replace("__", ".");
            let parts: Vec<&str> = key.split('.').collect();
            let value = if parts.last().is_some_and(|k| env_text_key(k)) {
                Value::from(v.clone())
            } else {
                v.parse::<Value>()
                    .unwrap_or_else(|_| Value::from(v.clone()))
            };
            insert_nested(&mut dict, &parts, value);
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

/// Inserts `value` at `path` ("store", "url") into nested dicts, creating them as needed.
fn insert_nested(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry((*first).to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, d) = entry {
                insert_nested(d, rest, value);
            }
        }
    }
}

/// Applies `CCRELAY_CEC__<NAME>__<KEY>` / `CCRELAY_TIM__<NAME>__<KEY>` to the entry of that name.
fn apply_array_overrides(root: &mut Dict, env: &[(String, String)]) -> Result<(), ConfigError> {
    for (k, v) in env {
        let rest = &k[ENV_PREFIX.len()..];
        let mut parts = rest.splitn(3, "__");
        let (Some(section), Some(name), Some(key)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let section = section.to_ascii_lowercase();
        if section != "cec" && section != "tim" {
            continue;
        }
        let key = key.to_ascii_lowercase();
        let entries = match root.get_mut(&section) {
            Some(Value::Array(_, items)) => items,
            _ => {
                return Err(invalid(
                    k.clone(),
                    format!("no [[{section}]] entry is configured to override"),
                ));
            }
        };
        let entry = entries.iter_mut().find_map(|item| match item {
            Value::Dict(_, d)
                if d.get("name")
                    .and_then(|n| n.as_str())
                    .is_some_and(|n| n.eq_ignore_ascii_case(name)) =>
            {
                Some(d)
            }
            _ => None,
        });
        let Some(entry) = entry else {
            return Err(invalid(
                k.clone(),
                format!("no [[{section}]] entry is named {name:?}"),
            ));
        };
        // Numbers stay numbers where the key is numeric; everything else is a string, so a secret
        // made of digits is not turned into a number.
        let value = match key.as_str() {
            "sdkappid" | "rate_limit" => v
                .parse::<Value>()
                .unwrap_or_else(|_| Value::from(v.clone())),
            _ => Value::from(v.clone()),
        };
        entry.insert(key, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [[cec]]
        name = "acme"
        base_url = "https://service.besclouds.com"
        app_key = "ak"
        app_secret = "s3cr3t-value"
        channel_config_id = "1011577355744904195"
    "#;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let (_d, p) = write(text);
        Config::load_with_env(
            &p,
            true,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_fill_a_minimal_file() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.nats.prefix, "ccrelay");
        assert_eq!(c.store.url, "sqlite://ccrelay.db");
        assert_eq!(c.cec[0].poll_interval, Duration::from_secs(1));
        assert_eq!(c.cec[0].idle_timeout, Duration::from_secs(1800));
        assert_eq!(c.cec[0].secret(), "s3cr3t-value");
    }

    #[test]
    fn inbox_prefixes_are_subject_prefixes_apart_from_the_relays_own() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.rpc.inbox_prefixes, ["_INBOX."]);
        assert_eq!(c.rpc.max_concurrent, 64);
        let with = |p: &str| format!("{MINIMAL}\n[rpc]\ninbox_prefixes = [{p}]\n");
        assert!(load(&with(r#""_INBOX.", "_R_.", "_INBOX_acme.""#), &[]).is_ok());
        for (bad, why) in [
            (r#""_INBOX""#, "must end with"),
            (r#""_IN BOX.""#, "subject tokens"),
            (r#""_INBOX..""#, "subject tokens"),
            (r#""_INBOX.*.""#, "subject tokens"),
            (r#""$JS.API.""#, "belong to the server"),
            (r#""ccrelay.""#, "overlaps"),
            (r#""ccrelay.cec.""#, "overlaps"),
            ("", "at least one"),
        ] {
            let e = load(&with(bad), &[]).unwrap_err().to_string();
            assert!(
                e.contains("rpc.inbox_prefixes") && e.contains(why),
                "{bad}: {e}"
            );
        }
        let e = load(&format!("{MINIMAL}\n[rpc]\nmax_concurrent = 0\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("rpc.max_concurrent"), "{e}");
    }

    #[test]
    fn an_empty_callback_token_is_refused() {
        let app = |extra: &str| {
            format!(
                "{MINIMAL}\n[[tim]]\nname = \"shop\"\nsdkappid = 1400000000\nsecret_key = \"k\"\n{extra}\n"
            )
        };
        let c = load(&app(""), &[]).unwrap();
        assert!(c.tim[0].callback_token.is_none() && !c.tim[0].allow_unsigned_callbacks);
        assert!(
            load(&app("allow_unsigned_callbacks = true"), &[])
                .unwrap()
                .tim[0]
                .allow_unsigned_callbacks
        );
        let e = load(&app("callback_token = \" \""), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tim[0].callback_token") && e.contains("empty"),
            "{e}"
        );
    }

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../../../config/ccrelay.example.toml");
        let c = Config::from_toml(text).unwrap();
        assert!(!c.cec.is_empty());
    }

    /// The fields a section's struct takes, from serde's own refusal of an unknown one
    /// ("unknown field `…`, expected one of `a`, `b`, …").
    fn fields_of<T: serde::de::DeserializeOwned>() -> Vec<String> {
        let e = serde_json::from_value::<T>(serde_json::json!({"__probe__": 0}))
            .err()
            .expect("an unknown field is refused")
            .to_string();
        let expected = e.split("expected").nth(1).expect("serde lists the fields");
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    /// The README's configuration table and the example file name every key the structs take,
    /// so neither falls behind the code.
    #[test]
    fn every_key_is_in_the_readme_table_and_the_example_file() {
        let readme = include_str!("../../../README.md");
        let example = include_str!("../../../config/ccrelay.example.toml");
        let sections: [(&str, Vec<String>); 7] = [
            ("[store]", fields_of::<StoreConfig>()),
            ("[nats]", fields_of::<NatsConfig>()),
            ("[http]", fields_of::<HttpConfig>()),
            ("[relay]", fields_of::<RelayConfig>()),
            ("[rpc]", fields_of::<RpcConfig>()),
            ("[[cec]]", fields_of::<CecTenant>()),
            ("[[tim]]", fields_of::<TimApp>()),
        ];
        for (section, fields) in sections {
            assert!(fields.len() > 1 || section == "[store]" || section == "[http]");
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{section}` |")))
                .unwrap_or_else(|| panic!("README has no row for {section}"));
            for f in fields {
                assert!(
                    row.contains(&format!("`{f}`")),
                    "README's {section} row lacks `{f}`"
                );
                assert!(
                    example.contains(&format!("{f} =")),
                    "config/ccrelay.example.toml lacks {section} {f}"
                );
            }
        }
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let c = load(MINIMAL, &[]).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t-value"), "{dbg}");
    }

    #[test]
    fn env_overrides_plain_sections_and_tenants_by_name() {
        let c = load(
            MINIMAL,
            &[
                ("CCRELAY_NATS__PREFIX", "acme_relay"),
                ("CCRELAY_STORE__URL", "sqlite://other.db"),
                ("CCRELAY_CEC__ACME__APP_SECRET", "12345"),
                ("CCRELAY_CEC__ACME__POLL_INTERVAL", "250ms"),
                ("CCRELAY_CONFIG", "ignored.toml"),
            ],
        )
        .unwrap();
        assert_eq!(c.nats.prefix, "acme_relay");
        assert_eq!(c.store.url, "sqlite://other.db");
        assert_eq!(c.cec[0].secret(), "12345");
        assert_eq!(c.cec[0].poll_interval, Duration::from_millis(250));
    }

    #[test]
    fn numeric_secrets_from_the_environment_stay_text() {
        let tim = "[[tim]]\nname = \"shop\"\nsdkappid = 1400000000\nsecret_key = \"k\"\n";
        let c = load(
            &format!("[nats]\nuser = \"relay\"\n{MINIMAL}{tim}"),
            &[
                ("CCRELAY_NATS__PASSWORD", "12345678"),
                ("CCRELAY_NATS__TOKEN", "0123"),
                ("CCRELAY_NATS__USER", "1001"),
                ("CCRELAY_NATS__MAX_BYTES", "1024"),
                ("CCRELAY_CEC__ACME__APP_SECRET", "0042"),
                ("CCRELAY_TIM__SHOP__SECRET_KEY", "777"),
                ("CCRELAY_TIM__SHOP__CALLBACK_TOKEN", "true"),
            ],
        )
        .unwrap();
        let secret = |s: &Option<SecretString>| s.as_ref().unwrap().expose_secret().to_owned();
        assert_eq!(secret(&c.nats.password), "12345678");
        assert_eq!(secret(&c.nats.token), "0123");
        assert_eq!(c.nats.user.as_deref(), Some("1001"));
        assert_eq!(c.nats.max_bytes, 1024);
        assert_eq!(c.cec[0].secret(), "0042");
        assert_eq!(secret(&c.tim[0].secret_key), "777");
        assert_eq!(secret(&c.tim[0].callback_token), "true");
    }

    #[test]
    fn an_unquoted_secret_is_its_digits_and_a_bad_one_is_not_quoted_back() {
        let c = load(
            &format!("[nats]\nuser = \"relay\"\npassword = 12345678\n{MINIMAL}")
                .replace("\"s3cr3t-value\"", "4242"),
            &[],
        )
        .unwrap();
        assert_eq!(
            c.nats.password.as_ref().unwrap().expose_secret(),
            "12345678"
        );
        assert_eq!(c.cec[0].secret(), "4242");
        for bad in ["98765.4321", "true"] {
            let e = load(&MINIMAL.replace("\"s3cr3t-value\"", bad), &[]).unwrap_err();
            let shown = e.to_string();
            assert!(shown.contains("app_secret"), "{shown}");
            assert!(!shown.contains(bad), "{bad} quoted back: {shown}");
        }
    }

    #[test]
    fn nats_and_store_secrets_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let (pw, tok, db) = (
            dir.path().join("pw"),
            dir.path().join("tok"),
            dir.path().join("db"),
        );
        std::fs::write(&pw, "p@ss:word\n").unwrap();
        std::fs::write(&tok, "t0ken\n").unwrap();
        std::fs::write(&db, "db/secret\n").unwrap();
        let text = format!(
            "[store]\nurl = \"postgres://relay@db.internal/ccrelay?sslmode=verify-full\"\npassword_file = {db:?}\n\
             [nats]\nuser = \"relay\"\npassword_file = {pw:?}\ntoken_file = {tok:?}\n{MINIMAL}",
            db = db.display().to_string(),
            pw = pw.display().to_string(),
            tok = tok.display().to_string(),
        );
        let c = load(&text, &[]).unwrap();
        assert_eq!(
            c.nats.password.as_ref().unwrap().expose_secret(),
            "p@ss:word"
        );
        assert_eq!(c.nats.token.as_ref().unwrap().expose_secret(), "t0ken");
        let url = url::Url::parse(&c.store.url).unwrap();
        assert_eq!(url.password(), Some("db%2Fsecret"));
        assert_eq!(url.query(), Some("sslmode=verify-full"));
        let shown = format!("{:?}", c.redacted());
        for secret in ["db%2Fsecret", "db/secret", "p@ss", "t0ken"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        // Both the secret and its file, or a file that is not there: refused, naming the key.
        let e = load(
            &text.replace("user = \"relay\"", "user = \"relay\"\npassword = \"x\""),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("nats.password"), "{e}");
        std::fs::remove_file(&tok).unwrap();
        let e = load(&text, &[]).unwrap_err();
        assert!(e.to_string().contains("nats.token_file"), "{e}");
        // A password without a user is not sent: refused rather than ignored.
        let e = load(&format!("[nats]\npassword = \"x\"\n{MINIMAL}"), &[]).unwrap_err();
        assert!(e.to_string().contains("nats.user"), "{e}");
    }

    #[test]
    fn redacted_hides_url_passwords() {
        let c = load(
            &format!(
                "[store]\nurl = \"postgres://relay:pg-pw@db/ccrelay\"\n\
                 [nats]\nurl = \"nats://relay:nats-pw@a:4222, nats://tok3n@b:4222\"\n{MINIMAL}"
            ),
            &[],
        )
        .unwrap();
        for shown in [
            format!("{:?}", c.redacted()),
            format!("{:#?}", c.redacted()),
        ] {
            for secret in ["pg-pw", "nats-pw", "tok3n", "s3cr3t-value"] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
            assert!(shown.contains("relay:***@db"), "{shown}");
        }
        // The store's Debug is redacted even without `redacted()`.
        assert!(!format!("{c:?}").contains("pg-pw"));
    }

    #[test]
    fn env_override_of_an_unknown_tenant_is_refused() {
        let e = load(MINIMAL, &[("CCRELAY_CEC__NOPE__APP_KEY", "x")]).unwrap_err();
        assert!(e.to_string().contains("CCRELAY_CEC__NOPE__APP_KEY"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = load(&format!("{MINIMAL}\npoll_intervall = \"1s\"\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("poll_intervall"), "{e}");
    }

    #[test]
    fn media_keys_are_read_and_checked() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.relay.media_attempts, 5);
        assert_eq!(c.relay.media_deadline, Duration::from_secs(600));
        assert_eq!(c.nats.files_bucket, None);
        let c = load(
            &format!(
                "[relay]\nmedia_attempts = 2\nmedia_deadline = \"30s\"\n\
                 [nats]\nfiles_bucket = \"MY_FILES\"\n{MINIMAL}"
            ),
            &[],
        )
        .unwrap();
        assert_eq!(c.relay.media_attempts, 2);
        assert_eq!(c.relay.media_deadline, Duration::from_secs(30));
        assert_eq!(c.nats.files_bucket.as_deref(), Some("MY_FILES"));
        for (text, key) in [
            ("[relay]\nmedia_attempts = 0", "relay.media_attempts"),
            ("[relay]\nmedia_deadline = \"0s\"", "relay.media_deadline"),
            ("[relay]\nmedia_concurrency = 0", "relay.media_concurrency"),
            ("[nats]\nfiles_bucket = \"a.b\"", "nats.files_bucket"),
        ] {
            let e = load(&format!("{text}\n{MINIMAL}"), &[]).unwrap_err();
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn retention_is_off_by_default_and_bounds_the_streams_and_files() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.store.retention, None);
        assert_eq!(c.store.retention_interval, Duration::from_secs(3600));
        assert_eq!(c.store.retention_batch, 500);
        let c = load(
            &format!("[store]\nretention = \"400d\"\nretention_batch = 50\n{MINIMAL}"),
            &[],
        )
        .unwrap();
        assert_eq!(c.store.retention, Some(Duration::from_secs(400 * 86_400)));
        assert_eq!(c.store.retention_batch, 50);
        let c = load(MINIMAL, &[("CCRELAY_STORE__RETENTION", "90days")]).unwrap();
        assert_eq!(c.store.retention, Some(Duration::from_secs(90 * 86_400)));
        for (text, key) in [
            ("[store]\nretention = \"10m\"", "store.retention"),
            ("[store]\nretention = \"soon\"", "retention"),
            ("[store]\nretention_batch = 0", "store.retention_batch"),
            (
                "[store]\nretention_interval = \"0s\"",
                "store.retention_interval",
            ),
            // A day's retention with the streams' default week.
            ("[store]\nretention = \"1d\"", "nats.max_age"),
            (
                "[store]\nretention = \"1d\"\n[nats]\nmax_age = \"0s\"",
                "nats.max_age",
            ),
            (
                "[store]\nretention = \"7days\"\n[nats]\nmax_age = \"1d\"",
                "nats.files_max_age",
            ),
        ] {
            let e = load(&format!("{text}\n{MINIMAL}"), &[]).unwrap_err();
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
        let c = load(
            &format!(
                "[store]\nretention = \"1d\"\n[nats]\nmax_age = \"1d\"\n\
                 files_max_age = \"12h\"\n{MINIMAL}"
            ),
            &[],
        )
        .unwrap();
        assert_eq!(c.store.retention, Some(Duration::from_secs(86_400)));
    }

    #[test]
    fn bad_duration_is_named() {
        let e = load(
            &MINIMAL.replace("[[cec]]", "[[cec]]\npoll_interval = \"soon\""),
            &[],
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("poll_interval"), "{s}");
    }

    #[test]
    fn bad_url_is_named() {
        let e = load(
            &MINIMAL.replace("https://service.besclouds.com", "not a url"),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("base_url"), "{e}");
        let e = load(&MINIMAL.replace("https://", "ftp://"), &[]).unwrap_err();
        assert!(e.to_string().contains("cec[0].base_url"), "{e}");
    }

    #[test]
    fn bad_tenant_name_is_named() {
        let e = load(&MINIMAL.replace("\"acme\"", "\"ac.me\""), &[]).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("cec[0].name") && s.contains("'.'"), "{s}");
    }

    #[test]
    fn missing_secret_is_named() {
        let e = load(&MINIMAL.replace("app_secret = \"s3cr3t-value\"", ""), &[]).unwrap_err();
        assert!(
            e.to_string().contains("cec[0] (acme).app_secret")
                || e.to_string().contains("cec[0].app_secret"),
            "{e}"
        );
    }

    #[test]
    fn secret_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "from-file\n").unwrap();
        let text = MINIMAL.replace(
            "app_secret = \"s3cr3t-value\"",
            &format!("app_secret_file = {:?}", f.display().to_string()),
        );
        let c = load(&text, &[]).unwrap();
        assert_eq!(c.cec[0].secret(), "from-file");
    }

    #[test]
    fn no_file_and_no_tenant_means_the_simulator() {
        let c =
            Config::load_with_env(Path::new("/nonexistent/ccrelay.toml"), false, vec![]).unwrap();
        assert!(c.uses_simulator());
        assert!(
            Config::load_with_env(Path::new("/nonexistent/ccrelay.toml"), true, vec![]).is_err()
        );
    }

    proptest::proptest! {
        /// Any text is either a configuration or a clear error, never a panic.
        #[test]
        fn any_text_loads_or_fails_cleanly(text in "(\\[\\[?[a-z]{1,6}\\]\\]?\n|[a-z_]{1,12} = (\"[^\"\\\\]{0,12}\"|[0-9]{1,4}|true)\n){0,8}") {
            match Config::from_toml(&text) {
                Ok(_) => {}
                Err(e) => proptest::prop_assert!(!e.to_string().is_empty()),
            }
        }
    }
}
