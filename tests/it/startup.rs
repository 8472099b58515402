//! What `ccrelay run` and `ccrelay demo` start, black-box: `run` relays what is configured and
//! starts nothing of its own (no nats-server, no simulator tenant); `demo` starts a local
//! nats-server that dies with it, even by SIGKILL; a second relay on one SQLite file refuses to
//! start.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use natsd::{LocalNatsServer, NatsServerOptions, nats_reachable};

fn ccrelay() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ccrelay"));
    c.env_remove("RUST_LOG")
        .env_remove("CCRELAY_CONFIG")
        .env("CCRELAY_NATS_SERVER", crate::support::nats_server_binary())
        .stdin(Stdio::null());
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The pids of the direct children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// `ccrelay run` with a loopback `nats.url` where nothing answers: a clear warning, no
/// nats-server of its own (nothing answers on the port, the relay has no child process), and it
/// connects once a server comes up there. The configuration has only a Tencent app: no CEC tenant
/// `demo` appears (the simulator is not served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_starts_no_nats_server_and_no_simulator_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let config = dir.path().join("ccrelay.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[store]
url = "sqlite://{db}"
[nats]
url = "{url}"
[http]
listen = "127.0.0.1:0"
[[tim]]
name = "shop"
base_url = "http://127.0.0.1:9"
sdkappid = 1400000000
secret_key = "k"
callback_token = "t"
"#,
            db = dir.path().join("relay.db").display()
        ),
    )
    .unwrap();
    let log_path = dir.path().join("relay.log");
    let mut relay = ccrelay()
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !log().contains("No NATS server answers") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no warning about NATS: {}",
            log()
        );
        assert!(relay.try_wait().unwrap().is_none(), "exited: {}", log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give a would-be local server time to come up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !nats_reachable(&url, Duration::from_millis(500)).await,
        "something answers at {url}: {}",
        log()
    );
    assert_eq!(children(relay.id()), Vec::<u32>::new(), "{}", log());
    assert!(!log().contains("starting a local nats-server"), "{}", log());

    // The real server comes up on that port: the relay connects to it, and serves no `demo`.
    let binary = crate::support::nats_server_binary();
    let _server = LocalNatsServer::start(
        &binary,
        NatsServerOptions {
            port,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while js.get_stream("CCRELAY_OUT").await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay never connected: {}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = loop {
        match tokio::time::timeout(
            Duration::from_secs(5),
            client.request(
                "ccrelay.cec.demo.rpc.queueInfo",
                r#"{"userId":"alice"}"#.into(),
            ),
        )
        .await
        {
            Ok(Ok(m)) => break m,
            // The RPC subscription may not be there yet.
            _ => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no RPC reply: {}",
                    log()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(v["error"]["code"], "unknown_tenant", "{v}");
    let _ = relay.kill();
    let _ = relay.wait();
}

/// `ccrelay demo --keep-running` starts a local nats-server where none answers; a SIGKILL of the
/// demo takes that server down with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_s_nats_server_dies_with_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let log_path = dir.path().join("demo.log");
    let mut demo = ccrelay()
        .args(["demo", "--keep-running"])
        .env("CCRELAY_NATS__URL", &url)
        .env("CCRELAY_HTTP__LISTEN", "127.0.0.1:0")
        .env("CCRELAY_CACHE_DIR", dir.path().join("cache"))
        .env("RUST_LOG", "info")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let done = line.contains("The relay keeps running");
            let _ = tx.send(line);
            if done {
                break;
            }
        }
    });
    let mut out = String::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
                if line.contains("The relay keeps running") {
                    break;
                }
            }
            Err(e) => panic!(
                "the demo did not finish its conversation ({e}): {out}\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            ),
        }
    }
    assert!(nats_reachable(&url, Duration::from_secs(2)).await, "{out}");
    let servers: Vec<u32> = children(demo.id())
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "nats-server")
        })
        .collect();
    assert_eq!(
        servers.len(),
        1,
        "the demo's nats-server child: {servers:?}"
    );

    demo.kill().unwrap();
    demo.wait().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while alive(servers[0]) || nats_reachable(&url, Duration::from_millis(300)).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nats-server {} outlived the SIGKILLed demo",
            servers[0]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A second `ccrelay run` on the SQLite database of a running relay refuses to start, naming the
/// holder's pid and pointing to PostgreSQL; once the holder is SIGKILLed, a relay starts on the
/// database (the lock died with the process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_relay_on_one_sqlite_file_refuses_to_start_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let config = dir.path().join("ccrelay.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[store]
url = "sqlite://{db}"
[nats]
url = "nats://127.0.0.1:{port}"
[http]
listen = "127.0.0.1:0"
"#,
            db = db.display(),
            port = free_port(),
        ),
    )
    .unwrap();
    let lock = dir.path().canonicalize().unwrap().join("relay.db.lock");
    let start = |log: &str| {
        ccrelay()
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(log)).unwrap())
            .spawn()
            .unwrap()
    };
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    let holds = |pid: u32| {
        std::fs::read_to_string(&lock).is_ok_and(|t| t.starts_with(&format!("pid {pid} on host ")))
    };

    let mut first = start("first.log");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !holds(first.id()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first relay never took the lock: {}",
            read("first.log")
        );
        assert!(first.try_wait().unwrap().is_none(), "{}", read("first.log"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut second = start("second.log");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if tokio::time::Instant::now() > deadline {
            let _ = second.kill();
            panic!("the second relay kept running: {}", read("second.log"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = read("second.log");
    assert!(!status.success(), "{status}: {log}");
    let expected = format!(
        "the SQLite store {} is in use by another relay (pid {} on host ",
        db.canonicalize().unwrap().display(),
        first.id()
    );
    assert!(log.contains(&expected), "{expected:?} not in {log}");
    assert!(
        log.contains("SQLite keeps one relay: for several relays use PostgreSQL (docs/HA.md)"),
        "{log}"
    );
    assert!(first.try_wait().unwrap().is_none(), "{}", read("first.log"));

    first.kill().unwrap();
    first.wait().unwrap();
    let mut third = start("third.log");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !holds(third.id()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no relay took the lock after the first died: {}",
            read("third.log")
        );
        assert!(third.try_wait().unwrap().is_none(), "{}", read("third.log"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    third.kill().unwrap();
    third.wait().unwrap();
}

/// `ccrelay demo --instances 3`: three relays as one cluster, the customer's relay SIGKILLed
/// mid-conversation, another taking over; every message once in the stored transcript.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failover_demo_goes_on_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let out = ccrelay()
        .args(["demo", "--instances", "3"])
        .env("CCRELAY_DEMO_PG_URL", crate::support::admin_pg_url().await)
        .env("CCRELAY_CACHE_DIR", crate::support::test_deps_dir())
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("SIGKILL demo-"), "{stdout}");
    assert!(stdout.contains("took the customer over"), "{stdout}");
    assert!(
        stdout.contains("You said: I'd like to change my delivery address."),
        "{stdout}"
    );
    assert!(stdout.contains("(7 rows)"), "{stdout}");
}
