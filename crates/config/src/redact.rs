//! Connection URLs fit for logs and errors: passwords and tokens replaced by `***`. Every place
//! that shows a configured URL (logs, `check-config`, errors) goes through here.

/// A database URL with its password (`user:pw@`, or a `password=` parameter) replaced by `***`,
/// for logs and errors.
pub fn database_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            if u.query_pairs().any(|(k, _)| k == "password") {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k == "password" { "***".into() } else { v };
                        (k.into_owned(), v.into_owned())
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "<unparseable url>".to_owned(),
    }
}

/// `nats.url` fit for a log line: in each comma-separated URL, a password (`nats://user:pw@…`)
/// and a token (`nats://token@…`, where the user part is the token) are replaced by `***`. A URL
/// that does not parse (or has no host) loses everything up to its last `@`.
pub fn nats_url(urls: &str) -> String {
    urls.split(',')
        .map(|u| {
            let u = u.trim();
            match url::Url::parse(u) {
                Ok(mut parsed) if parsed.has_host() => {
                    if parsed.password().is_some() {
                        let _ = parsed.set_password(Some("***"));
                    } else if !parsed.username().is_empty() {
                        let _ = parsed.set_username("***");
                    }
                    // `Url` adds a `/` to a URL without a path; keep the configured form.
                    let mut s = parsed.to_string();
                    if !u.ends_with('/') && s.ends_with('/') && parsed.path() == "/" {
                        s.pop();
                    }
                    s
                }
                _ => match u.rfind('@') {
                    Some(at) => format!("***{}", &u[at..]),
                    None => u.to_owned(),
                },
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::{database_url, nats_url};

    #[test]
    fn passwords_and_tokens_are_redacted_in_every_nats_url() {
        assert_eq!(nats_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            nats_url("nats://relay:12345678@a:4222, tls://s3cr3t@b:4223"),
            "nats://relay:***@a:4222,tls://***@b:4223"
        );
        let shown = nats_url("relay:p@ss@not a url");
        assert!(!shown.contains("p@ss"), "{shown}");
    }

    #[test]
    fn database_passwords_are_redacted() {
        assert_eq!(
            database_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(database_url("sqlite://x.db"), "sqlite://x.db");
        let shown = database_url("postgres://u@h/db?sslmode=require&password=12345678");
        assert!(!shown.contains("12345678"), "{shown}");
        assert!(shown.contains("sslmode=require"), "{shown}");
    }
}
