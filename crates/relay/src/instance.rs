//! Who this relay is, as others see it: the name it gives the upstreams (the `User-Agent` of its
//! HTTP calls, [`name`]) and the description it leaves in a SQLite database's instance lock for
//! a relay that finds the database taken ([`holder`]).

use config::Config;

/// This machine's host name: the kernel's (`/proc/sys/kernel/hostname`), else `$HOSTNAME`, else
/// `unknown-host`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned())
}

/// The instance's name for the upstreams: `cluster.id` when configured, else the host name.
pub fn name(config: &Config) -> String {
    config.cluster.id.clone().unwrap_or_else(host_name)
}

/// This process, for whoever finds its lock held: `pid 1234 on host h, started <RFC 3339>`,
/// and `cluster.id` when configured.
pub fn holder(config: &Config) -> String {
    let now = time::OffsetDateTime::now_utc();
    let started = now
        .replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "at an unknown time".to_owned());
    let id = match &config.cluster.id {
        Some(id) => format!("instance {id}, "),
        None => String::new(),
    };
    format!(
        "{id}pid {} on host {}, started {started}",
        std::process::id(),
        host_name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_names_the_pid_the_host_and_the_configured_id() {
        let mut config = Config::default();
        let pid = format!(
            "pid {} on host {}, started ",
            std::process::id(),
            host_name()
        );
        assert!(holder(&config).starts_with(&pid), "{}", holder(&config));
        assert_eq!(name(&config), host_name());
        config.cluster.id = Some("relay-a".into());
        assert!(
            holder(&config).starts_with(&format!("instance relay-a, {pid}")),
            "{}",
            holder(&config)
        );
        assert_eq!(name(&config), "relay-a");
    }
}
