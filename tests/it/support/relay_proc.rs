//! The real `ccrelay` binary as a child process: its configuration file, start, SIGKILL,
//! signals — for the tests that crash it on purpose.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::app::{PREFIX, TENANT};

/// The relay process. Killed when dropped.
pub struct RelayProcess {
    pub config: PathBuf,
    /// stderr of every run, appended.
    pub log: PathBuf,
    pub child: Option<Child>,
}

impl RelayProcess {
    pub fn new(config: PathBuf, log: PathBuf) -> Self {
        RelayProcess {
            config,
            log,
            child: None,
        }
    }

    pub fn start(&mut self) {
        self.start_with(&[("RUST_LOG", "info")], &[]);
    }

    /// [`start`](Self::start) with these environment variables and extra arguments.
    pub fn start_with(&mut self, env: &[(&str, &str)], args: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ccrelay"))
            .args(args)
            .args(["run", "--config"])
            .arg(&self.config)
            // The configuration's directory is the relay's state directory (its poll journal,
            // with PostgreSQL, goes into the working directory).
            .current_dir(self.config.parent().unwrap_or(Path::new(".")))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ccrelay");
        self.child = Some(child);
    }

    /// SIGKILL, and wait for it to be gone. Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `sig` (`-TERM`, …) to the running process.
    pub fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("relay running");
        assert!(
            Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the relay has created the streams (publishing needs them).
    pub async fn wait_for_streams(&self, js: &async_nats::jetstream::Context) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while js
            .get_stream(format!("{}_OUT", PREFIX.to_uppercase()))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "streams never appeared: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What [`write_config`] writes.
pub struct RelayConfig<'a> {
    /// Default: SQLite in the directory.
    pub store_url: Option<String>,
    pub nats_url: &'a str,
    pub sim: &'a sim::SimHandle,
    /// Keys of the `[relay]` section.
    pub relay_section: &'a str,
    pub request_timeout: &'a str,
    pub ack_wait: &'a str,
    /// Appended as is (more sections: `[[tim]]`, …).
    pub extra: &'a str,
}

/// The relay's configuration file in `dir`: the simulator as tenant `acme`, polled every 100 ms.
pub fn write_config(dir: &Path, c: &RelayConfig<'_>) -> PathBuf {
    let sc = sim::SimConfig::default();
    let config = dir.join("ccrelay.toml");
    let store = c
        .store_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.join("relay.db").display()));
    std::fs::write(
        &config,
        format!(
            r#"
[store]
url = "{store}"
[nats]
url = "{nats_url}"
embedded = false
ack_wait = "{ack_wait}"
[http]
listen = "127.0.0.1:0"
[relay]
{relay_section}
[[cec]]
name = "{TENANT}"
base_url = "{sim}"
app_key = "{ak}"
app_secret = "{secret}"
channel_config_id = "{ch}"
poll_interval = "100ms"
request_timeout = "{request_timeout}"
{extra}
"#,
            nats_url = c.nats_url,
            ack_wait = c.ack_wait,
            relay_section = c.relay_section,
            request_timeout = c.request_timeout,
            extra = c.extra,
            sim = c.sim.base_url(),
            ak = sc.app_key,
            secret = sc.app_secret,
            ch = sc.channel_config_id,
        ),
    )
    .unwrap();
    config
}
