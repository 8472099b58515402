//! Secrets, black-box: `check-config` and the logs never show a password or token, a secret of
//! digits in an environment variable works, and `nats.password_file` logs in to a nats-server
//! that requires a password.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PASSWORD: &str = "12345678";

fn ccrelay() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ccrelay"));
    c.env_remove("RUST_LOG")
        .env_remove("CCRELAY_CONFIG")
        .stdin(Stdio::null());
    c
}

#[test]
fn check_config_shows_no_password() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ccrelay.toml");
    std::fs::write(
        &config,
        r#"
[store]
url = "postgres://relay:pg-secret-1@db.internal/ccrelay?sslmode=verify-full"
[nats]
url = "nats://127.0.0.1:4222, nats://tok-secret-3@127.0.0.1:4223"
user = "relay"
"#,
    )
    .unwrap();
    let out = ccrelay()
        .args(["check-config", "--config"])
        .arg(&config)
        .env("CCRELAY_NATS__PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(stdout.contains("relay:***@db.internal"), "{stdout}");
    for secret in ["pg-secret-1", "tok-secret-3", PASSWORD] {
        assert!(!stdout.contains(secret), "{secret} shown: {stdout}");
        assert!(!stderr.contains(secret), "{secret} shown: {stderr}");
    }
}

/// A relay process with no tenant, logging at debug level into `log`.
fn relay(dir: &std::path::Path, name: &str, nats: &str, env: &[(&str, &str)]) -> Child {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"sqlite://{db}\"\n[nats]\nprefix = \"{name}\"\n{nats}\n[http]\nlisten = \"127.0.0.1:0\"\n",
            db = dir.join(format!("{name}.db")).display()
        ),
    )
    .unwrap();
    ccrelay()
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "debug")
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
        .spawn()
        .unwrap()
}

/// Three relays log in to a nats-server that wants user `relay` and a password of digits: with
/// `password_file`, with the password in an environment variable, and with it in `nats.url`.
/// Each creates its streams (so it is logged in), and no log line shows the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_file_env_and_url_log_in_and_never_show() {
    let server = crate::support::nats_with_password("relay", PASSWORD).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("nats-password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let url = server.url();
    let hostport = url.trim_start_matches("nats://");
    let mut relays = [
        (
            "from_file",
            relay(
                dir.path(),
                "from_file",
                &format!(
                    "url = \"{url}\"\nuser = \"relay\"\npassword_file = \"{}\"",
                    pw.display()
                ),
                &[],
            ),
        ),
        (
            "from_env",
            relay(
                dir.path(),
                "from_env",
                &format!("url = \"{url}\"\nuser = \"relay\""),
                &[("CCRELAY_NATS__PASSWORD", PASSWORD)],
            ),
        ),
        (
            "in_url",
            relay(
                dir.path(),
                "in_url",
                &format!("url = \"nats://relay:{PASSWORD}@{hostport}\""),
                &[],
            ),
        ),
    ];
    let client =
        async_nats::ConnectOptions::with_user_and_password("relay".into(), PASSWORD.into())
            .connect(&url)
            .await
            .unwrap();
    let js = async_nats::jetstream::new(client);
    let log = |name: &str| std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for (name, child) in &mut relays {
        while js
            .get_stream(format!("{}_OUT", name.to_uppercase()))
            .await
            .is_err()
        {
            assert!(
                child.try_wait().unwrap().is_none(),
                "{name} exited: {}",
                log(name)
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} never logged in: {}",
                log(name)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for (name, child) in &mut relays {
        let _ = child.kill();
        let _ = child.wait();
        let text = log(name);
        assert!(text.contains("ccrelay started"), "{name}: {text}");
        assert!(
            !text.contains(PASSWORD),
            "{name} logged the password: {text}"
        );
    }
}

/// The README's install commands leave the configuration root's alone (mode 0600), and the unit
/// hands it to its dynamic user as a credential, so the relay can read it and no one else can.
#[test]
fn the_unit_reads_a_root_only_configuration_as_a_credential() {
    let unit = include_str!("../../systemd/ccrelay.service");
    let readme = include_str!("../../README.md");
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    assert!(lines.contains(&"DynamicUser=yes"));
    assert!(
        lines.contains(&"LoadCredential=ccrelay.toml:/etc/ccrelay/ccrelay.toml"),
        "{unit}"
    );
    for exec in ["ExecStartPre=", "ExecStart="] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(exec))
            .unwrap_or_else(|| panic!("no {exec}"));
        assert!(line.contains("--config %d/ccrelay.toml"), "{line}");
    }
    assert!(
        readme.contains("install -m 0600 config/ccrelay.example.toml /etc/ccrelay/ccrelay.toml"),
        "README installs the configuration for root only"
    );
}
