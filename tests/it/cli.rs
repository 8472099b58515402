//! The binary's commands and its behaviour as a daemon: configuration checks, migrations, health
//! endpoints, SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::app::*;

fn ccrelay() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ccrelay"));
    // The working directory of each test has no config/ccrelay.toml: the embedded defaults apply.
    c.env_remove("RUST_LOG")
        .env_remove("CCRELAY_CONFIG")
        .stdin(Stdio::null());
    c
}

#[test]
fn check_config_names_the_bad_key_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[cec]]\nname = \"acme\"\nbase_url = \"https://x\"\napp_key = \"k\"\napp_secret = \"TOPSECRET\"\nchannel_config_id = \"c\"\npoll_interval = \"soon\"\n",
    )
    .unwrap();
    let out = ccrelay()
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("poll_interval"), "{err}");
    assert!(!err.contains("TOPSECRET"), "{err}");

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        std::fs::read_to_string(&bad).unwrap().replace("soon", "2s"),
    )
    .unwrap();
    let out = ccrelay()
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("configuration OK"));
    assert!(!text.contains("TOPSECRET"), "secrets are redacted: {text}");

    let out = ccrelay()
        .args(["check-config", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn the_example_configuration_passes_check_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/ccrelay.example.toml");
    let out = ccrelay()
        .args(["check-config", "--config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn migrate_creates_the_schema_and_can_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    for _ in 0..2 {
        let out = ccrelay()
            .arg("migrate")
            .env("CCRELAY_STORE__URL", format!("sqlite://{}", db.display()))
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(db.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_which_dependency_is_down() {
    let mut t = spawn_app().await;
    let base = format!("http://{}", t.app().http_addr());
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["ready"], true);

    t.nats_server.stop().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = http.get(format!("{base}/readyz")).send().await.unwrap();
        if r.status() == 503 {
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["database"], "up");
            assert!(v["nats"].as_str().unwrap().starts_with("down"), "{v}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz never noticed NATS was down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.nats_server.restart().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_relay_cleanly_and_in_time() {
    let nats = crate::support::nats().await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = ccrelay()
        .arg("run")
        .env("CCRELAY_NATS__URL", nats.url())
        .env("CCRELAY_NATS__EMBEDDED", "false")
        .env("CCRELAY_HTTP__LISTEN", "127.0.0.1:0")
        .env("CCRELAY_RELAY__SHUTDOWN_TIMEOUT", "5s")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Up when the streams exist.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while js.get_stream("CCRELAY_IN").await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay never came up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no exit within 10s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "exit {status:?}: {err}");
    assert!(
        err.contains("Received SIGTERM") && err.contains("Shutdown complete"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_serves_the_cec_api_and_its_control_api() {
    use std::io::BufRead;
    let mut child = ccrelay()
        .args(["simulate", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("simulator exited").unwrap();
        if let Some(rest) = line.split("listen=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let http = reqwest::Client::new();
    let sc = sim::SimConfig::default();
    let r = http
        .post(format!("http://{addr}/apigovernance/api/oauth/tokenByAkSk"))
        .header("X-Token-Expire", "60")
        .json(&serde_json::json!({"app_key": sc.app_key, "app_secret": sc.app_secret}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["Expires"], "60");
    let r = http
        .post(format!("http://{addr}/apigovernance/api/oauth/tokenByAkSk"))
        .json(&serde_json::json!({"app_key": sc.app_key, "app_secret": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let stats: serde_json::Value = http
        .get(format!("http://{addr}/sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats["accessTokensIssued"]
            .as_u64()
            .or(stats["access_tokens_issued"].as_u64()),
        Some(1),
        "{stats}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_it_notifies_ready_watchdog_and_stopping() {
    let nats = crate::support::nats().await;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = ccrelay()
        .arg("run")
        .env("CCRELAY_NATS__URL", nats.url())
        .env("CCRELAY_NATS__EMBEDDED", "false")
        .env("CCRELAY_HTTP__LISTEN", "127.0.0.1:0")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        // READY first, then watchdog pings.
        while seen.iter().filter(|s: &&String| *s == "WATCHDOG=1").count() < 2 {
            let n = socket.recv(&mut buf).expect("a notification within 30 s");
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        (socket, seen)
    })
    .await
    .unwrap();
    let (socket, mut seen) = seen;
    assert!(seen[0].starts_with("READY=1"), "{seen:?}");
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let stopping = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 256];
        loop {
            let n = socket.recv(&mut buf).expect("STOPPING=1 within 30 s");
            let s = String::from_utf8_lossy(&buf[..n]).into_owned();
            if s == "STOPPING=1" {
                return s;
            }
        }
    })
    .await
    .unwrap();
    seen.push(stopping);
    assert!(child.wait().unwrap().success(), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_relay_did() {
    let mut t = spawn_app().await;
    let mut w = t.watch(TENANT, "meter").await;
    t.up(
        "meter",
        serde_json::json!({"controlType": "CONNECT", "messageId": "mt0"}),
    )
    .await;
    w.until(10, "connected", is_result_for("mt0")).await;
    t.sim
        .inject_fault(sim::Fault::status(sim::Endpoint::Send, 503).times(1));
    t.up(
        "meter",
        serde_json::json!({"content": "hi", "messageId": "mt1"}),
    )
    .await;
    w.until(10, "sent", is_result_for("mt1")).await;
    t.sim.agent_say("meter", "measured");
    w.until(10, "down", is_down_containing("measured")).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let rsp = reqwest::get(format!("http://{}/metrics", t.app().http_addr()))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert!(
        rsp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let body = rsp.text().await.unwrap();
    let value = |prefix: &str| -> f64 {
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    for name in [
        "ccrelay_polls_total",
        "ccrelay_poll_seconds_bucket",
        "ccrelay_upstream_call_seconds_bucket",
        "ccrelay_published_total",
        "ccrelay_publish_seconds_bucket",
        "ccrelay_store_commit_seconds_bucket",
        "ccrelay_outbox_backlog",
    ] {
        assert!(body.contains(name), "{name} missing from:\n{body}");
    }
    assert!(
        value("ccrelay_sessions_active{tenant=\"acme\"}") >= 1.0,
        "{body}"
    );
    assert!(
        value("ccrelay_messages_total{kind=\"cec\",tenant=\"acme\",direction=\"up\"}") >= 2.0,
        "{body}"
    );
    assert!(
        value("ccrelay_messages_total{kind=\"cec\",tenant=\"acme\",direction=\"down\"}") >= 1.0,
        "{body}"
    );
    assert!(
        value(
            "ccrelay_upstream_errors_total{kind=\"cec\",tenant=\"acme\",endpoint=\"send\",code=\"503\"}"
        ) >= 1.0,
        "{body}"
    );
    assert!(
        value("ccrelay_retries_total{kind=\"cec\",what=\"call\"}") >= 1.0,
        "{body}"
    );
    t.stop().await;
}
