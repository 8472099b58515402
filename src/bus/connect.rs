//! Connecting to NATS with the configured credentials and TLS.

use async_nats::{Client, ConnectOptions};
use secrecy::ExposeSecret;

use crate::config::NatsConfig;

/// Why the NATS connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("nats: cannot read {what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nats: {0}")]
    Connect(#[from] async_nats::ConnectError),
}

/// Connects to `cfg.url`. With `retry_on_initial_connect`, the call returns at once and the client
/// keeps trying in the background, so the relay starts (and polls into its store) while NATS is
/// down; whatever needs NATS waits for it.
pub async fn connect(cfg: &NatsConfig, name: &str) -> Result<Client, ConnectError> {
    let mut opts = ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .require_tls(cfg.tls_required);
    if let Some(path) = &cfg.credentials_file {
        opts = ConnectOptions::with_credentials_file(path.clone())
            .await
            .map_err(|source| ConnectError::File {
                what: "credentials file",
                path: path.display().to_string(),
                source,
            })?
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .require_tls(cfg.tls_required);
    }
    if let Some(path) = &cfg.nkey_seed_file {
        let seed = std::fs::read_to_string(path).map_err(|source| ConnectError::File {
            what: "nkey seed file",
            path: path.display().to_string(),
            source,
        })?;
        opts = opts.nkey(seed.trim().to_owned());
    }
    if let (Some(user), Some(pass)) = (&cfg.user, &cfg.password) {
        opts = opts.user_and_password(user.clone(), pass.expose_secret().to_owned());
    }
    if let Some(token) = &cfg.token {
        opts = opts.token(token.expose_secret().to_owned());
    }
    if let Some(ca) = &cfg.tls_ca_file {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    let urls: Vec<String> = cfg.url.split(',').map(|s| s.trim().to_owned()).collect();
    Ok(opts.connect(urls.join(",")).await?)
}
