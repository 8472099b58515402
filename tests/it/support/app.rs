//! `spawn_app()`: a relay wired to a fresh nats-server, a fresh SQLite file and its own CEC
//! simulator, plus helpers to talk to it the way services do — through NATS.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use config::{CecTenant, Config};
use futures::StreamExt;
use natsd::LocalNatsServer;
use relay::app::App;
use serde_json::Value;
use sim::{SimConfig, SimHandle};

pub const TENANT: &str = "acme";
pub const PREFIX: &str = "ccrelay";

pub struct TestApp {
    pub nats_server: LocalNatsServer,
    pub sim: SimHandle,
    pub app: Option<App>,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub db_url: String,
    pub db_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// The relay's configuration for a test: its simulator as tenant `acme`, polled every 100 ms.
pub fn test_config(nats_url: &str, db_url: &str, sim: &SimHandle) -> Config {
    let sc = SimConfig::default();
    let mut t = CecTenant::simulated(
        TENANT,
        url::Url::parse(&sim.base_url()).unwrap(),
        &sc.app_key,
        &sc.app_secret,
        &sc.channel_config_id,
    );
    t.poll_interval = Duration::from_millis(100);
    t.request_timeout = Duration::from_secs(3);
    let mut c = Config::default();
    c.store.url = db_url.to_owned();
    c.nats.url = nats_url.to_owned();
    c.nats.embedded = false;
    c.nats.ack_wait = Duration::from_secs(5);
    c.http.listen = "127.0.0.1:0".into();
    c.relay.shutdown_timeout = Duration::from_secs(5);
    c.cec.push(t);
    c
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(SimConfig::default()).await
}

pub async fn spawn_app_with(sim_cfg: SimConfig) -> TestApp {
    spawn_app_on(sim_cfg, None).await
}

/// [`spawn_app_with`] on the database at `db_url` (default: a fresh SQLite file).
pub async fn spawn_app_on(sim_cfg: SimConfig, db_url: Option<String>) -> TestApp {
    spawn_app_configured(sim_cfg, db_url, |_, _| {}).await
}

/// [`spawn_app_on`] with the test configuration changed by `configure` (given the simulator)
/// before the relay starts.
pub async fn spawn_app_configured(
    sim_cfg: SimConfig,
    db_url: Option<String>,
    configure: impl FnOnce(&mut Config, &SimHandle),
) -> TestApp {
    super::init_tracing();
    let nats_server = super::nats().await;
    let sim = sim::spawn(sim_cfg).await.expect("simulator");
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("relay.db");
    let db_url = db_url.unwrap_or_else(|| format!("sqlite://{}", db_path.display()));
    let mut config = test_config(&nats_server.url(), &db_url, &sim);
    // Beside the test's SQLite file; for PostgreSQL not in the working directory (the crate's).
    config.relay.journal_dir = Some(dir.path().to_owned());
    configure(&mut config, &sim);
    let app = App::start(config).await.expect("relay starts");
    let client = async_nats::connect(nats_server.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let t = TestApp {
        nats_server,
        sim,
        app: Some(app),
        client,
        js,
        db_url,
        db_path,
        _dir: dir,
    };
    t.wait_ready().await;
    t
}

impl TestApp {
    pub fn app(&self) -> &App {
        self.app.as_ref().expect("relay running")
    }

    /// `GET /readyz`: its status and body.
    pub async fn readyz(&self) -> (u16, Value) {
        let url = format!("http://{}/readyz", self.app().http_addr());
        let rsp = reqwest::get(url).await.unwrap();
        let status = rsp.status().as_u16();
        (status, rsp.json().await.unwrap_or(Value::Null))
    }

    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !self.app().streams_ready() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "streams not ready in 20s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Publishes an UpMessage (raw bytes) to `P.cec.<tenant>.up.<user>` through JetStream.
    pub async fn publish_raw(&self, tenant: &str, user: &str, payload: &[u8]) {
        self.js
            .publish(
                format!("{PREFIX}.cec.{tenant}.up.{user}"),
                payload.to_vec().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    pub async fn up(&self, user: &str, msg: Value) {
        self.publish_raw(TENANT, user, &serde_json::to_vec(&msg).unwrap())
            .await;
    }

    /// A request-reply on `P.cec.<tenant>.rpc.<op>`, retrying "no responders" briefly while the
    /// relay subscribes after start-up.
    pub async fn rpc(&self, tenant: &str, op: &str, body: &Value) -> Value {
        self.rpc_raw(tenant, op, &serde_json::to_vec(body).unwrap())
            .await
    }

    /// [`TestApp::rpc`] with a request of any bytes (not JSON, say).
    pub async fn rpc_raw(&self, tenant: &str, op: &str, body: &[u8]) -> Value {
        let subject = format!("{PREFIX}.cec.{tenant}.rpc.{op}");
        let body = body.to_vec();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match self
                .client
                .request(subject.clone(), body.clone().into())
                .await
            {
                Ok(m) => return serde_json::from_slice(&m.payload).unwrap(),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{op}: {e}"),
            }
        }
    }

    /// Watches everything the relay published for one user on `_OUT`, from the start.
    pub async fn watch(&self, tenant: &str, user: &str) -> Watcher {
        Watcher::new(&self.js, &format!("{PREFIX}.cec.{tenant}.*.{user}")).await
    }

    pub async fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }
}

/// Reads a filtered view of `_OUT` with an ordered consumer: every stored copy, duplicates
/// included, so tests can count.
pub struct Watcher {
    messages: jetstream::consumer::pull::Ordered,
    pub seen: Vec<(String, Value)>,
}

impl Watcher {
    pub async fn new(js: &jetstream::Context, filter: &str) -> Watcher {
        let stream = js
            .get_stream(format!("{}_OUT", PREFIX.to_uppercase()))
            .await
            .unwrap();
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: filter.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap();
        Watcher {
            messages: consumer.messages().await.unwrap(),
            seen: Vec::new(),
        }
    }

    /// Reads until `pred` holds for something seen, or panics after `secs`.
    pub async fn until(
        &mut self,
        secs: u64,
        what: &str,
        pred: impl Fn(&str, &Value) -> bool,
    ) -> Value {
        if let Some((_, v)) = self.seen.iter().find(|(s, v)| pred(s, v)) {
            return v.clone();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let next = tokio::time::timeout_at(deadline, self.messages.next()).await;
            let Ok(Some(Ok(m))) = next else {
                panic!(
                    "waited {secs}s for {what}; saw {:#?}",
                    self.seen
                        .iter()
                        .map(|(s, v)| (s, &v["type"], &v["content"]))
                        .collect::<Vec<_>>()
                );
            };
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            let subject = m.subject.to_string();
            self.seen.push((subject.clone(), v.clone()));
            if pred(&subject, &v) {
                return v;
            }
        }
    }

    /// Reads whatever arrives within `secs`.
    pub async fn drain(&mut self, secs: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, self.messages.next()).await {
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            self.seen.push((m.subject.to_string(), v));
        }
    }

    pub fn downs(&self) -> Vec<&Value> {
        self.seen
            .iter()
            .filter(|(s, _)| s.contains(".down."))
            .map(|(_, v)| v)
            .collect()
    }

    pub fn events(&self) -> Vec<&Value> {
        self.seen
            .iter()
            .filter(|(s, _)| s.contains(".event."))
            .map(|(_, v)| v)
            .collect()
    }
}

pub fn is_event(ty: &'static str) -> impl Fn(&str, &Value) -> bool {
    move |s, v| s.contains(".event.") && v["type"] == ty
}

pub fn is_result_for(message_id: &'static str) -> impl Fn(&str, &Value) -> bool {
    move |s, v| s.contains(".event.") && v["type"] == "up.result" && v["messageId"] == message_id
}

pub fn is_down_containing(text: &'static str) -> impl Fn(&str, &Value) -> bool {
    move |s, v| s.contains(".down.") && v["content"].as_str().is_some_and(|c| c.contains(text))
}
