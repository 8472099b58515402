//! Proves the test harness itself: nats-server and PostgreSQL are there and behave as the other
//! tests assume.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use natsd::{self, LocalNatsServer};
use sqlx::{Connection, PgConnection};

use crate::support::{MIN_NATS_VERSION, admin_pg_url, fresh_pg_database, nats, nats_server_binary};

async fn jetstream_of(server: &LocalNatsServer) -> jetstream::Context {
    let client = async_nats::connect(server.url()).await.unwrap();
    jetstream::new(client)
}

async fn create_smoke_stream(js: &jetstream::Context) {
    js.create_stream(stream::Config {
        name: "SMOKE".into(),
        subjects: vec!["smoke.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Publishes `count` messages with distinct `Nats-Msg-Id`s and waits for their acks.
async fn publish_acked(js: &jetstream::Context, count: usize) {
    for i in 0..count {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("msg-{i}").as_str(),
        );
        js.publish_with_headers("smoke.a", headers, format!("m{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

async fn stored_messages(js: &jetstream::Context) -> u64 {
    let mut stream = js.get_stream("SMOKE").await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test]
async fn the_test_nats_server_is_recent_enough_and_answers_jetstream_requests() {
    let server = nats().await;
    let client = async_nats::connect(server.url()).await.unwrap();
    let version = natsd::parse_version(&client.server_info().version).unwrap();
    assert!(
        (version.0, version.1) >= MIN_NATS_VERSION,
        "nats-server {version:?} is older than {MIN_NATS_VERSION:?}"
    );
    let account = jetstream::new(client).query_account().await.unwrap();
    assert_eq!(account.streams, 0, "a fresh server has no streams");
}

#[tokio::test]
async fn publishing_the_same_msg_id_twice_stores_one_message() {
    let server = nats().await;
    let js = jetstream_of(&server).await;
    create_smoke_stream(&js).await;

    let mut acks = Vec::new();
    for _ in 0..2 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, "same-id");
        let ack = js
            .publish_with_headers("smoke.a", headers, "hello".into())
            .await
            .unwrap()
            .await
            .unwrap();
        acks.push(ack);
    }

    assert!(!acks[0].duplicate);
    assert!(
        acks[1].duplicate,
        "the second publish must be reported as a duplicate"
    );
    assert_eq!(acks[0].sequence, acks[1].sequence);
    assert_eq!(stored_messages(&js).await, 1);
}

#[tokio::test]
async fn restarting_the_server_keeps_the_streams_messages() {
    let mut server = nats().await;
    let js = jetstream_of(&server).await;
    create_smoke_stream(&js).await;
    publish_acked(&js, 3).await;
    let port = server.port();

    server.restart().await.unwrap();

    assert_eq!(server.port(), port);
    let js = jetstream_of(&server).await;
    assert_eq!(stored_messages(&js).await, 3);
}

#[tokio::test]
async fn a_killed_server_can_be_restarted_with_its_messages() {
    let mut server = nats().await;
    let js = jetstream_of(&server).await;
    create_smoke_stream(&js).await;
    publish_acked(&js, 3).await;

    server.kill();
    assert!(!server.is_running());
    assert!(!natsd::nats_reachable(&server.url(), Duration::from_secs(1)).await);

    server.restart().await.unwrap();
    assert!(natsd::nats_reachable(&server.url(), Duration::from_secs(1)).await);
    let js = jetstream_of(&server).await;
    assert_eq!(stored_messages(&js).await, 3);
}

#[tokio::test]
async fn a_stopped_server_is_unreachable_and_its_temporary_store_goes_with_it() {
    let mut server = nats().await;
    assert!(server.is_running());
    assert!(natsd::nats_reachable(&server.url(), Duration::from_secs(1)).await);

    server.stop().await;

    assert!(!server.is_running());
    assert!(!natsd::nats_reachable(&server.url(), Duration::from_secs(1)).await);
    let store = server.store_dir().to_owned();
    assert!(store.exists());
    drop(server);
    assert!(
        !store.exists(),
        "the temporary store must be removed on drop"
    );
}

#[test]
fn installing_nats_server_into_an_empty_directory_works_even_from_several_threads_at_once() {
    let dir = tempfile::tempdir().unwrap();

    let installed: Vec<_> = std::thread::scope(|s| {
        let installs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| devkit::install_nats_server(dir.path())))
            .collect();
        installs
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    });

    let expected = natsd::installed_path(dir.path());
    assert!(installed.iter().all(|p| *p == expected), "{installed:?}");
    let version = natsd::binary_version(&expected).unwrap();
    assert!((version.0, version.1) >= MIN_NATS_VERSION);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with(".nats-server-install-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "staging directories left behind: {leftovers:?}"
    );
    // Installed now, so ensuring finds it without installing again.
    let ensured = devkit::ensure_nats_server(MIN_NATS_VERSION, dir.path()).unwrap();
    assert!(natsd::binary_version(&ensured).is_some());
}

#[tokio::test]
async fn a_fresh_pg_database_is_usable_and_dropped_with_its_guard() {
    let pg = fresh_pg_database().await;
    let name = pg.name.clone();
    let mut conn = PgConnection::connect(&pg.url).await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    let current: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(current, name);
    conn.close().await.unwrap();

    drop(pg);

    let mut admin = PgConnection::connect(&admin_pg_url().await).await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(left, 0, "database {name} must be dropped with its guard");
}

#[tokio::test]
async fn each_fresh_pg_database_is_a_different_one() {
    let a = fresh_pg_database().await;
    let b = fresh_pg_database().await;
    assert_ne!(a.name, b.name);
    assert_ne!(a.url, b.url);
}

#[tokio::test]
async fn a_server_cannot_start_on_a_port_another_server_holds() {
    let first = nats().await;
    let binary = tokio::task::spawn_blocking(nats_server_binary)
        .await
        .unwrap();
    let options = natsd::NatsServerOptions {
        port: first.port(),
        ..Default::default()
    };

    let second = LocalNatsServer::start(&binary, options).await;

    match second {
        Err(natsd::NatsdError::Exited { log_tail, .. }) => {
            assert!(log_tail.contains("address already in use"), "{log_tail}")
        }
        other => panic!("expected the second server to exit, got {other:?}"),
    }
}
