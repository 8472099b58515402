//! Connecting to NATS with the configured credentials and TLS, and showing its URL without them
//! ([`config::redact::nats_url`]).

use async_nats::{Client, ConnectOptions};
use secrecy::ExposeSecret;

use config::NatsConfig;

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
    #[error("nats.url: {0}")]
    Url(String),
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
    // Credentials written into the URL are moved to the options, so that no URL the client keeps
    // (and prints in its own debug logs) holds them.
    let (urls, in_url) = split_credentials(&cfg.url)?;
    match in_url {
        Some(UrlAuth::UserPassword(user, pass)) => opts = opts.user_and_password(user, pass),
        Some(UrlAuth::Token(token)) => opts = opts.token(token),
        None => {}
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
    Ok(opts.connect(urls.join(",")).await?)
}

/// Credentials found in `nats.url`.
#[derive(Debug, PartialEq)]
enum UrlAuth {
    UserPassword(String, String),
    /// `nats://TOKEN@host`.
    Token(String),
}

/// The URLs of `nats.url` without their credentials, and those credentials (all URLs that carry
/// any must carry the same).
fn split_credentials(urls: &str) -> Result<(Vec<String>, Option<UrlAuth>), ConnectError> {
    let mut clean = Vec::new();
    let mut auth: Option<UrlAuth> = None;
    for u in urls.split(',').map(str::trim) {
        let Ok(mut parsed) = url::Url::parse(u) else {
            clean.push(u.to_owned());
            continue;
        };
        let found = match (parsed.username(), parsed.password()) {
            ("", None) => None,
            (user, Some(pass)) => Some(UrlAuth::UserPassword(user.to_owned(), pass.to_owned())),
            (token, None) => Some(UrlAuth::Token(token.to_owned())),
        };
        if let Some(found) = found {
            if auth.as_ref().is_some_and(|a| *a != found) {
                return Err(ConnectError::Url(format!(
                    "{}: the URLs carry different credentials; set nats.user/password or nats.token instead",
                    config::redact::nats_url(urls)
                )));
            }
            let _ = parsed.set_password(None);
            let _ = parsed.set_username("");
            auth = Some(found);
        }
        clean.push(parsed.to_string());
    }
    Ok((clean, auth))
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_leave_the_urls() {
        let (urls, auth) =
            super::split_credentials("nats://relay:pw@a:4222, nats://relay:pw@b:4222").unwrap();
        assert_eq!(urls, ["nats://a:4222", "nats://b:4222"]);
        assert_eq!(
            auth,
            Some(super::UrlAuth::UserPassword("relay".into(), "pw".into()))
        );
        let (urls, auth) = super::split_credentials("tls://t0k@a:4222").unwrap();
        assert_eq!(urls, ["tls://a:4222"]);
        assert_eq!(auth, Some(super::UrlAuth::Token("t0k".into())));
        let e = super::split_credentials("nats://a:x@h:1,nats://b:y@h:2").unwrap_err();
        assert!(!e.to_string().contains(":x@"), "{e}");
    }
}
