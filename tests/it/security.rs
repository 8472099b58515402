//! docs/SECURITY.md's nats-server accounts and permissions, run for real: the relay with its own
//! user, and a service holding tenant `acme`'s permissions. It can speak for acme's customers,
//! read acme's transcripts (tenant-scoped RPC) and acme's side of `_OUT`, and it can do none of
//! that for tenant `beta`.

use std::time::Duration;

use async_nats::jetstream;
use config::CecTenant;
use futures::StreamExt;
use relay::app::App;
use serde_json::{Value, json};
use sim::SimConfig;

use crate::support::app::{PREFIX, test_config};
use crate::support::nats_with_config;

const RELAY_PASSWORD: &str = "relay-secret";
const ACME_PASSWORD: &str = "acme-secret";
const BETA_PASSWORD: &str = "beta-secret";

/// The configuration block of docs/SECURITY.md (the fenced block after its marker).
fn documented_config() -> String {
    let doc = include_str!("../../docs/SECURITY.md");
    let after = doc
        .split("<!-- nats-server.conf")
        .nth(1)
        .expect("docs/SECURITY.md has the nats-server.conf marker");
    let block = after.split("```").nth(1).expect("a fenced block after it");
    block.to_owned()
}

/// A service's connection: its user, its own inbox prefix, short timeouts (a refused publish
/// gets no answer at all; the relay and the server answer a local request in milliseconds).
async fn service(url: &str, user: &str, password: &str, tenant: &str) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .custom_inbox_prefix(format!("_INBOX.{tenant}"))
        .request_timeout(Some(Duration::from_secs(1)))
        .connect(url)
        .await
        .unwrap()
}

async fn request(c: &async_nats::Client, subject: String, body: Value) -> Option<Value> {
    let m = c
        .request(subject, serde_json::to_vec(&body).unwrap().into())
        .await
        .ok()?;
    serde_json::from_slice(&m.payload).ok()
}

/// Publishes through JetStream and waits for the PubAck. A server that has just started may
/// answer "no responders" for a stream created a moment ago: that is retried for a few seconds.
async fn publish(js: &jetstream::Context, subject: String, payload: Vec<u8>) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..30 {
        match js.publish(subject.clone(), payload.clone().into()).await {
            Ok(ack) => match ack.await {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound => {
                    last = e.to_string();
                }
                Err(e) => return Err(e.to_string()),
            },
            Err(e) => return Err(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_s_service_can_neither_read_nor_speak_for_another_tenant() {
    let server = nats_with_config(
        &documented_config(),
        &[
            ("CCRELAY_NATS_PASSWORD", RELAY_PASSWORD),
            ("SVC_ACME_PASSWORD", ACME_PASSWORD),
            ("SVC_BETA_PASSWORD", BETA_PASSWORD),
        ],
    )
    .await;
    let sim = sim::spawn(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("relay.db").display());
    let mut config = test_config(&server.url(), &db_url, &sim);
    let sc = SimConfig::default();
    let mut beta = CecTenant::simulated(
        "beta",
        url::Url::parse(&sim.base_url()).unwrap(),
        &sc.app_key,
        &sc.app_secret,
        &sc.channel_config_id,
    );
    beta.poll_interval = Duration::from_millis(100);
    config.cec.push(beta);
    config.nats.user = Some("ccrelay".into());
    config.nats.password = Some(RELAY_PASSWORD.to_owned().into());
    let app = App::start(config)
        .await
        .expect("the relay starts with its user");

    let acme = service(&server.url(), "svc_acme", ACME_PASSWORD, "acme").await;
    let beta = service(&server.url(), "svc_beta", BETA_PASSWORD, "beta").await;
    let mut acme_js = jetstream::new(acme.clone());
    acme_js.set_timeout(Duration::from_secs(1));
    let mut beta_js = jetstream::new(beta.clone());
    beta_js.set_timeout(Duration::from_secs(1));

    // Each tenant's service talks for its own customers (the relay may still be subscribing).
    let up = |tenant: &str, user: &str| format!("{PREFIX}.cec.{tenant}.up.{user}");
    let connect =
        |id: &str| serde_json::to_vec(&json!({"controlType": "CONNECT", "messageId": id})).unwrap();
    publish(&acme_js, up("acme", "alice"), connect("a1"))
        .await
        .expect("acme's service speaks for acme's customer");
    publish(&beta_js, up("beta", "bob"), connect("b1"))
        .await
        .expect("beta's service speaks for beta's customer");
    let scoped = |tenant: &str, op: &str| format!("{PREFIX}.cec.{tenant}.rpc.{op}");
    let mut alice = None;
    for _ in 0..100 {
        let r = request(
            &acme,
            scoped("acme", "transcript.get"),
            json!({"userId": "alice"}),
        )
        .await;
        if let Some(r) = r.filter(|r| r["messages"].as_array().is_some_and(|m| !m.is_empty())) {
            alice = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alice = alice.expect("acme's service reads acme's transcript");
    assert_eq!(alice["ok"], true, "{alice}");
    let r = request(&acme, scoped("acme", "sessions.list"), json!({}))
        .await
        .unwrap();
    assert!(
        r["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["tenant"] == "acme"),
        "{r}"
    );

    // It cannot read beta's: neither through beta's subject, nor relay-wide, nor by naming beta
    // in the body of its own.
    let (to_beta, relay_wide, as_beta) = tokio::join!(
        request(
            &acme,
            scoped("beta", "transcript.get"),
            json!({"userId": "bob"})
        ),
        request(
            &acme,
            format!("{PREFIX}.rpc.transcript.get"),
            json!({"tenant": "beta", "userId": "bob"}),
        ),
        request(
            &acme,
            scoped("beta", "send"),
            json!({"userId": "bob", "content": "x"})
        ),
    );
    assert!(to_beta.is_none(), "read beta's transcript: {to_beta:?}");
    assert!(relay_wide.is_none(), "read relay-wide: {relay_wide:?}");
    assert!(
        as_beta.is_none(),
        "sent as beta's customer by RPC: {as_beta:?}"
    );
    let r = request(
        &acme,
        scoped("acme", "transcript.get"),
        json!({"tenant": "beta", "userId": "bob"}),
    )
    .await
    .unwrap();
    assert_eq!(r["error"]["code"], "invalid_request", "{r}");

    // It cannot speak as beta's customer on the stream either.
    let spoof = acme_js
        .publish(up("beta", "bob"), connect("evil").into())
        .await;
    let acked = match spoof {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(!acked, "published as beta's customer");

    // It reads acme's side of _OUT through its consumer, and cannot make one on beta's.
    let out = format!("{}_OUT", PREFIX.to_uppercase());
    // Not by an API subject that names acme's filter over a body that names another.
    let forged = json!({"stream_name": &out, "config": {"durable_name": "acme",
        "filter_subject": format!("{PREFIX}.>"), "ack_policy": "explicit"}});
    let r = request(
        &acme,
        format!("$JS.API.CONSUMER.CREATE.{out}.acme.{PREFIX}.cec.acme.>"),
        forged,
    )
    .await
    .expect("the server answers");
    assert!(r.get("error").is_some(), "{r}");

    let consumer: jetstream::consumer::PullConsumer = acme_js
        .create_consumer_on_stream(
            jetstream::consumer::pull::Config {
                durable_name: Some("acme".into()),
                filter_subject: format!("{PREFIX}.cec.acme.>"),
                ..Default::default()
            },
            out.as_str(),
        )
        .await
        .expect("acme's consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let first = batch.next().await.expect("acme's events").unwrap();
    assert!(
        first.subject.starts_with(&format!("{PREFIX}.cec.acme.")),
        "{}",
        first.subject
    );
    for filter in [format!("{PREFIX}.cec.beta.>"), format!("{PREFIX}.>")] {
        let r = acme_js
            .create_consumer_on_stream(
                jetstream::consumer::pull::Config {
                    durable_name: Some("acme".into()),
                    filter_subject: filter.clone(),
                    ..Default::default()
                },
                out.as_str(),
            )
            .await;
        assert!(r.is_err(), "a consumer on {filter}");
    }
    // Beta's replies cannot be overheard on acme's side.
    let mut snoop = acme.subscribe("_INBOX.>").await.unwrap();
    let r = request(
        &beta,
        scoped("beta", "transcript.get"),
        json!({"userId": "bob"}),
    )
    .await;
    assert_eq!(r.expect("beta reads its own")["ok"], true);
    let overheard = tokio::time::timeout(Duration::from_millis(500), snoop.next()).await;
    assert!(overheard.is_err(), "overheard: {overheard:?}");

    // Nothing of acme's attempts reached beta's conversations.
    let store = app.relay().store.clone();
    let bob = store.transcript("cec", "beta", "bob").await.unwrap();
    assert!(
        bob.iter().all(|m| m.message_id.as_deref() != Some("evil")),
        "{bob:?}"
    );
    app.shutdown().await;
}
