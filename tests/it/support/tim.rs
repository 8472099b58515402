//! `spawn_tim_app()`: a relay with one `[[tim]]` app, `shop`, pointed at the simulator's Tencent
//! side with the simulator's default app (sdkappid 1400000000, key `sim-tim-secret-key`, admin
//! `administrator`, callback token `sim-callback-token`, 200 calls/s), plus Tencent helpers.

use std::time::Duration;

use config::TimApp;
use serde_json::{Value, json};
use sim::SimConfig;

use super::app::{PREFIX, TestApp, Watcher};

pub const APP: &str = "shop";
pub const SIM_SDKAPPID: u64 = 1_400_000_000;
pub const SIM_SECRET_KEY: &str = "sim-tim-secret-key";
pub const SIM_CALLBACK_TOKEN: &str = "sim-callback-token";

/// The `[[tim]]` entry for the simulator at `base_url`.
pub fn sim_tim_app(base_url: &str) -> TimApp {
    serde_json::from_value(json!({
        "name": APP,
        "base_url": base_url,
        "sdkappid": SIM_SDKAPPID,
        "secret_key": SIM_SECRET_KEY,
        "admin_identifier": "administrator",
        "callback_token": SIM_CALLBACK_TOKEN,
        "rate_limit": 200,
        "request_timeout": "3s",
        "stream_idle_timeout": "2s",
    }))
    .expect("a valid [[tim]] entry")
}

/// A relay with the CEC tenant of [`super::app::spawn_app`] and the Tencent app `shop`.
pub async fn spawn_tim_app() -> TestApp {
    super::app::spawn_app_configured(SimConfig::default(), None, |config, sim| {
        config.tim.push(sim_tim_app(&sim.base_url()));
    })
    .await
}

impl TestApp {
    /// Publishes a TimSend or TimChunk (`kind` = `send` or `stream`) through JetStream.
    pub async fn tim(&self, kind: &str, user: &str, payload: Value) {
        self.js
            .publish(
                format!("{PREFIX}.tim.{APP}.{kind}.{user}"),
                serde_json::to_vec(&payload).unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Watches `P.tim.shop.*.<user>` on `_OUT`.
    pub async fn watch_tim(&self, user: &str) -> Watcher {
        Watcher::new(&self.js, &format!("{PREFIX}.tim.{APP}.*.{user}")).await
    }

    /// The relay's callback URL for `app`.
    pub fn callback_url(&self, app: &str) -> String {
        format!("http://{}/tim/{app}/callback", self.app().http_addr())
    }

    /// GET a simulator control path (`/sim/tim/…`).
    pub async fn sim_get(&self, path: &str) -> Value {
        let rsp = reqwest::get(format!("{}{path}", self.sim.base_url()))
            .await
            .unwrap();
        assert!(rsp.status().is_success(), "GET {path}: {}", rsp.status());
        rsp.json().await.unwrap()
    }

    /// POST a simulator control path.
    pub async fn sim_post(&self, path: &str, body: Value) -> Value {
        let rsp = reqwest::Client::new()
            .post(format!("{}{path}", self.sim.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(rsp.status().is_success(), "POST {path}: {}", rsp.status());
        rsp.json().await.unwrap_or(Value::Null)
    }

    /// Polls `GET path` until `pred` holds, or panics after `secs`.
    pub async fn sim_until(&self, path: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.sim_get(path).await;
            if pred(&v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited {secs}s on {path}: {v:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
