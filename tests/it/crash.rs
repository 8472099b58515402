//! The real binary killed with SIGKILL mid-conversation and started again.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::support::app::*;

struct Relay {
    config: std::path::PathBuf,
    log: std::path::PathBuf,
    child: Option<Child>,
}

impl Relay {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ccrelay"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ccrelay");
        self.child = Some(child);
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap(); // SIGKILL
            c.wait().unwrap();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_relay_resumes_without_losing_or_duplicating() {
    crate::support::init_tracing();
    let nats = crate::support::nats().await;
    let sim = ccrelay::sim::spawn(ccrelay::sim::SimConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sc = ccrelay::sim::SimConfig::default();
    let config = dir.path().join("ccrelay.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[store]
url = "sqlite://{db}"
[nats]
url = "{nats}"
embedded = false
ack_wait = "3s"
[http]
listen = "127.0.0.1:0"
[[cec]]
name = "{TENANT}"
base_url = "{sim}"
app_key = "{ak}"
app_secret = "{secret}"
channel_config_id = "{ch}"
poll_interval = "100ms"
request_timeout = "2s"
"#,
            db = dir.path().join("relay.db").display(),
            nats = nats.url(),
            sim = sim.base_url(),
            ak = sc.app_key,
            secret = sc.app_secret,
            ch = sc.channel_config_id,
        ),
    )
    .unwrap();
    let mut relay = Relay {
        config,
        log: dir.path().join("relay.log"),
        child: None,
    };
    relay.start();

    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let up = |body: serde_json::Value| {
        let js = js.clone();
        async move {
            js.publish(
                format!("{PREFIX}.cec.{TENANT}.up.erin"),
                serde_json::to_vec(&body).unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    };
    // The relay creates the streams; publishing waits for them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while js.get_stream("CCRELAY_OUT").await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "streams never appeared: {}",
            std::fs::read_to_string(&relay.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut w = Watcher::new(&js, &format!("{PREFIX}.cec.{TENANT}.*.erin")).await;
    up(json!({"controlType": "CONNECT", "messageId": "x0"})).await;
    w.until(20, "connected", is_result_for("x0")).await;

    let mut expected = Vec::new();
    for round in 0..3 {
        // Messages said while the relay is up…
        let live = format!("live-{round}");
        sim.agent_say("erin", &live);
        let live_static: &'static str = Box::leak(live.clone().into_boxed_str());
        w.until(20, "live message", is_down_containing(live_static))
            .await;
        // …an uplink message published right before the kill…
        let id = format!("k{round}");
        up(json!({"content": format!("sent-before-kill-{round}"), "messageId": id})).await;
        tokio::time::sleep(Duration::from_millis(50 * round as u64)).await;
        relay.kill();
        // …and messages said while it is down.
        let down = format!("while-down-{round}");
        sim.agent_say("erin", &down);
        relay.start();
        expected.extend([live, down]);
    }
    sim.agent_say("erin", "final");
    w.until(30, "final", is_down_containing("final")).await;
    w.drain(3).await;

    let contents: Vec<String> = w
        .downs()
        .iter()
        .filter_map(|d| d["content"].as_str().map(str::to_owned))
        .collect();
    for e in &expected {
        let n = contents.iter().filter(|c| c.contains(e.as_str())).count();
        assert_eq!(n, 1, "{e:?} arrived {n} times; downs: {contents:#?}");
    }
    // The robot's answers to messages sent just before a kill: at most once. (A poll answer inside
    // the relay at the instant of SIGKILL is the one loss CEC's unacknowledged poll imposes.)
    for round in 0..3 {
        let e = format!("sent-before-kill-{round}");
        let n = contents.iter().filter(|c| c.contains(e.as_str())).count();
        assert!(n <= 1, "{e:?} arrived {n} times");
    }
    let mut ids: Vec<&str> = w
        .seen
        .iter()
        .map(|(_, v)| v["id"].as_str().unwrap())
        .collect();
    let total = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total, "an id was published twice");
    // The upstream processed each uplink message once, whatever the kills: a message resent after
    // a kill carries the same messageId and is de-duplicated (counted, not processed again).
    assert_eq!(sim.received("erin").len(), 4, "{:?}", sim.received("erin"));
    relay.kill();
}
