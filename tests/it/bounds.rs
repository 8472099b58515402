//! The relay's bounds: open sessions per tenant, a draining `_IN` (and its migration from the
//! limits retention of earlier versions), the files bucket's limits, and a configuration file
//! looked for where it is said to be, not in parent directories.

use std::process::{Command, Stdio};
use std::time::Duration;

use async_nats::jetstream::{self, stream::RetentionPolicy};
use relay::bus::streams;
use serde_json::{Value, json};

use crate::support::app::*;

/// Waits until `_IN` holds exactly `n` messages; returns its info.
async fn in_stream_holds(js: &jetstream::Context, n: u64) -> jetstream::stream::Info {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = js
            .get_stream("CCRELAY_IN")
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        if info.state.messages == n {
            return info;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "_IN holds {} messages, not {n}: {:?}",
            info.state.messages,
            info.state
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `pred` for the event of type `ty` on user `u`'s event subject.
fn event_of(u: &str, ty: &str) -> impl Fn(&str, &Value) -> bool {
    let (suffix, ty) = (format!(".event.{u}"), ty.to_owned());
    move |s, v| s.ends_with(&suffix) && v["type"] == ty.as_str()
}

/// `pred` for the `up.result` of message `id`.
fn result_of(id: &str) -> impl Fn(&str, &Value) -> bool {
    let id = id.to_owned();
    move |s, v| s.contains(".event.") && v["type"] == "up.result" && v["messageId"] == id.as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_capped_in_drains_and_the_files_bucket_is_bounded() {
    let t = spawn_app_configured(Default::default(), None, |c, _| {
        c.cec[0].max_sessions = 2;
        c.nats.files_max_bytes = 10 * 1024 * 1024;
        c.nats.files_max_age = Duration::from_secs(3600);
    })
    .await;
    let mut w = Watcher::new(&t.js, &format!("{PREFIX}.cec.{TENANT}.>")).await;
    for u in ["u1", "u2"] {
        t.up(
            u,
            json!({"controlType": "CONNECT", "messageId": format!("c-{u}")}),
        )
        .await;
        w.until(10, "session opened", event_of(u, "session.opened"))
            .await;
    }

    // A third session is one too many: refused with the reason, nothing opened upstream.
    t.up("u3", json!({"controlType": "CONNECT", "messageId": "c-u3"}))
        .await;
    let result = w.until(10, "u3's result", result_of("c-u3")).await;
    assert_eq!(result["ok"], false, "{result}");
    assert_eq!(result["resultCode"], "session_limit", "{result}");
    assert!(
        result["resultDesc"]
            .as_str()
            .is_some_and(|d| d.contains("max_sessions")),
        "{result}"
    );
    let error = w.until(10, "u3's error", event_of("u3", "error")).await;
    assert_eq!(error["error"]["code"], "session_limit", "{error}");
    assert!(t.sim.received("u3").is_empty(), "nothing reached CEC");
    let store = store::connect(&t.db_url).await.unwrap();
    let open: Vec<String> = store
        .open_sessions()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.user_id)
        .collect();
    assert_eq!(open.len(), 2, "{open:?}");
    assert!(!open.contains(&"u3".to_owned()));

    // Once a session ends there is room again.
    t.up(
        "u1",
        json!({"controlType": "DISCONNECT", "messageId": "d-u1"}),
    )
    .await;
    w.until(10, "u1 closed", event_of("u1", "session.closed"))
        .await;
    t.up(
        "u3",
        json!({"controlType": "CONNECT", "messageId": "c2-u3"}),
    )
    .await;
    w.until(10, "u3 opened", event_of("u3", "session.opened"))
        .await;

    // Every one of those messages was acknowledged: `_IN` keeps none of them.
    let info = in_stream_holds(&t.js, 0).await;
    assert_eq!(info.config.retention, RetentionPolicy::Interest);
    assert!(info.state.last_sequence >= 5);

    // The files bucket has the configured limits.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let files = loop {
        if let Ok(mut s) = t.js.get_stream("OBJ_CCRELAY_FILES").await {
            break s.info().await.unwrap().config.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no files bucket");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(files.max_bytes, 10 * 1024 * 1024);
    assert_eq!(files.max_age, Duration::from_secs(3600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_stream_of_an_earlier_version_is_migrated_without_losing_a_message() {
    crate::support::init_tracing();
    let nats = crate::support::nats().await;
    let sim = sim::spawn(Default::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("relay.db").display());
    let mut config = test_config(&nats.url(), &db_url, &sim);
    config.nats.files_max_age = Duration::from_secs(7200);
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let subjects = contract::Subjects::new(PREFIX.to_owned());

    // `_IN` and the files bucket as an earlier version made them: limits retention, no limits on
    // the bucket; the CEC consumer only.
    let mut old = streams::stream_config(
        subjects.in_stream(),
        subjects.in_stream_subjects(),
        &config.nats,
        true,
    );
    old.retention = RetentionPolicy::Limits;
    js.create_stream(old).await.unwrap();
    js.create_object_store(jetstream::object_store::Config {
        bucket: "CCRELAY_FILES".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let consumer = streams::ensure_cec_up_consumer(&js, &subjects, &config.nats)
        .await
        .unwrap();
    let publish = |subject: String, body: Value| {
        let js = js.clone();
        async move {
            js.publish(subject, serde_json::to_vec(&body).unwrap().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    // Handled by the earlier version: acknowledged, but kept by the limits retention.
    publish(
        subjects.cec_up(TENANT, "old"),
        json!({"controlType": "CONNECT", "messageId": "handled"}),
    )
    .await;
    {
        use futures::StreamExt;
        let mut batch = consumer
            .batch()
            .max_messages(1)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .unwrap();
        let m = batch.next().await.unwrap().unwrap();
        m.double_ack().await.unwrap();
    }
    // Not handled yet: must survive the migration and be handled after it.
    for u in ["m1", "m2"] {
        publish(
            subjects.cec_up(TENANT, u),
            json!({"controlType": "CONNECT", "messageId": format!("c-{u}")}),
        )
        .await;
    }
    // For a Tencent app this relay does not (yet) have: kept, as before.
    publish(
        subjects.tim_send("shop", "v1"),
        json!({"text": "hello", "messageId": "t1"}),
    )
    .await;
    assert_eq!(
        in_stream_holds(&js, 4).await.config.retention,
        RetentionPolicy::Limits
    );

    let app = relay::app::App::start(config).await.expect("relay starts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !app.streams_ready() {
        assert!(tokio::time::Instant::now() < deadline, "streams not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut w = Watcher::new(&js, &format!("{PREFIX}.cec.{TENANT}.>")).await;
    for u in ["m1", "m2"] {
        let r = w
            .until(
                15,
                "the unhandled message's result",
                result_of(&format!("c-{u}")),
            )
            .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    // The acknowledged message went with the migration and was not handled again; the unhandled
    // ones went once handled; the Tencent one waits for its consumer.
    let info = in_stream_holds(&js, 1).await;
    assert_eq!(info.config.retention, RetentionPolicy::Interest);
    assert!(sim.received("old").is_empty());
    let tim = js
        .get_stream("CCRELAY_IN")
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&subjects.tim_send("shop", "v1"))
        .await;
    assert!(tim.is_ok(), "the Tencent message is kept: {tim:?}");
    // The bucket made without limits got them.
    let mut files = js.get_stream("OBJ_CCRELAY_FILES").await.unwrap();
    assert_eq!(
        files.info().await.unwrap().config.max_age,
        Duration::from_secs(7200)
    );
    app.shutdown().await;
}

/// A relay started in a directory below one holding `config/ccrelay.toml` does not read that
/// file: the default path is relative to the working directory only.
#[test]
fn the_default_configuration_is_not_looked_for_in_parent_directories() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    // A configuration that does not pass: whoever reads it fails.
    std::fs::write(
        dir.path().join("config/ccrelay.toml"),
        "[nats]\nprefix = \"not a prefix\"\n",
    )
    .unwrap();
    let check = |cwd: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_ccrelay"))
            .arg("check-config")
            .env_remove("CCRELAY_CONFIG")
            .env_remove("RUST_LOG")
            .current_dir(cwd)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let here = check(dir.path());
    assert!(
        !here.status.success(),
        "the file in the working directory is read"
    );
    assert!(String::from_utf8_lossy(&here.stderr).contains("nats.prefix"));
    let below = dir.path().join("srv/relay");
    std::fs::create_dir_all(&below).unwrap();
    let out = check(&below);
    assert!(
        out.status.success(),
        "a parent's config/ccrelay.toml was read: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
