//! Media coming down: files agents send are downloaded (downloadFileStream) into the NATS object
//! store, and their DownMessages carry `file` — or `fileError`, after retries, never held back.

use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sim::{Endpoint, Fault};
use store::{FileRow, FileStatus, kind};
use tokio::io::AsyncReadExt;

use crate::support::app::*;

const BUCKET: &str = "CCRELAY_FILES";

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Connects `user` and waits for the session to be open.
async fn connect(t: &TestApp, w: &mut Watcher, user: &str) {
    t.up(user, json!({"controlType": "CONNECT", "messageId": "m0"}))
        .await;
    w.until(10, "session.opened", is_event("session.opened"))
        .await;
}

/// The agent sends `bytes` as a file; returns the fileId the user polls.
fn agent_file(t: &TestApp, user: &str, media_type: &str, file_type: &str, bytes: &[u8]) -> String {
    t.sim
        .agent_send_file(user, media_type, file_type, bytes.to_vec())
}

fn is_down_with_content(content: String) -> impl Fn(&str, &Value) -> bool {
    move |s, v| s.contains(".down.") && v["content"] == content.as_str()
}

async fn object_bytes(t: &TestApp, object: &str) -> Vec<u8> {
    object_bytes_in(t, BUCKET, object).await
}

async fn object_bytes_in(t: &TestApp, bucket: &str, object: &str) -> Vec<u8> {
    let store = t.js.get_object_store(bucket).await.expect("files bucket");
    let mut obj = store.get(object).await.expect("object");
    let mut bytes = Vec::new();
    obj.read_to_end(&mut bytes).await.unwrap();
    bytes
}

async fn files_of(t: &TestApp, user: &str) -> Vec<FileRow> {
    let store = store::connect(&t.db_url).await.unwrap();
    let files = store.files(kind::CEC, TENANT, user).await.unwrap();
    store.close().await;
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_each_media_type_reaches_the_object_store_and_its_down_message() {
    let mut t = spawn_app().await;
    let user = "fiona";
    let mut w = t.watch(TENANT, user).await;
    connect(&t, &mut w, user).await;

    let sent = [
        ("IMAGE", "png", b"\x89PNG\r\n\x1a\n an image".to_vec()),
        ("AUDIO", "mp3", b"ID3 some audio".to_vec()),
        ("VIDEO", "mp4", (0..=255u8).cycle().take(300_000).collect()),
    ];
    let mut ids = Vec::new();
    for (media_type, file_type, bytes) in &sent {
        ids.push(agent_file(&t, user, media_type, file_type, bytes));
    }
    let files = files_of_when_done(&t, user, sent.len()).await;
    for ((media_type, _, bytes), file_id) in sent.iter().zip(&ids) {
        let down = w
            .until(
                20,
                "the file's DownMessage",
                is_down_with_content(file_id.clone()),
            )
            .await;
        assert_eq!(down["mediaType"], *media_type);
        assert!(down.get("fileError").is_none(), "{down}");
        let file = &down["file"];
        let object = format!("{TENANT}/{user}/{}", down["id"].as_str().unwrap());
        assert_eq!(
            file,
            &json!({"bucket": BUCKET, "object": object, "size": bytes.len(),
                "sha256": sha256_hex(bytes)}),
        );
        let stored = object_bytes(&t, &object).await;
        assert_eq!(sha256_hex(&stored), sha256_hex(bytes));
        assert!(
            stored == *bytes,
            "the object store holds the simulator's bytes"
        );

        let row = files
            .iter()
            .find(|f| f.file_id == *file_id)
            .expect("a files row");
        assert_eq!(row.relay_id, down["id"].as_str().unwrap());
        assert_eq!(row.status, FileStatus::Stored);
        assert_eq!(row.media_type, *media_type);
        assert_eq!(row.size, Some(bytes.len() as i64));
        assert_eq!(row.sha256.as_deref(), Some(sha256_hex(bytes).as_str()));
        assert_eq!(row.bucket.as_deref(), Some(BUCKET));
        assert_eq!(row.object.as_deref(), Some(object.as_str()));
        assert_eq!(row.attempts, 1);
        assert_eq!(row.error_code, None);

        // The transcript keeps the DownMessage as published, `file` included.
        let store = store::connect(&t.db_url).await.unwrap();
        let rows = store.transcript(kind::CEC, TENANT, user).await.unwrap();
        store.close().await;
        let kept = rows.iter().find(|m| m.relay_id == row.relay_id).unwrap();
        let kept: Value = serde_json::from_str(&kept.body).unwrap();
        assert_eq!(kept, down);
    }
    // The upstream request: downloadFileStream with the fileId and a documented fileType.
    assert_eq!(t.sim.stats().calls(Endpoint::DownloadFileStream), 3);
    t.stop().await;
}

/// Waits until `n` files of `user` are no longer pending.
async fn files_of_when_done(t: &TestApp, user: &str, n: usize) -> Vec<FileRow> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let files = files_of(t, user).await;
        if files.len() == n && files.iter().all(|f| f.status != FileStatus::Pending) {
            return files;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "files not done in 30s: {files:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_fails_a_few_times_is_retried_then_stored() {
    let mut t = spawn_app().await;
    let user = "gus";
    let mut w = t.watch(TENANT, user).await;
    connect(&t, &mut w, user).await;

    let mut fault = Fault::status(Endpoint::DownloadFileStream, 503);
    fault.times = Some(2);
    t.sim.inject_fault(fault);
    let bytes = b"retried image bytes".to_vec();
    let file_id = agent_file(&t, user, "IMAGE", "jpg", &bytes);
    let down = w
        .until(
            20,
            "the file's DownMessage",
            is_down_with_content(file_id.clone()),
        )
        .await;
    assert_eq!(down["file"]["sha256"], sha256_hex(&bytes), "{down}");
    assert!(down.get("fileError").is_none(), "{down}");
    let object = down["file"]["object"].as_str().unwrap().to_owned();
    assert_eq!(object_bytes(&t, &object).await, bytes);
    let files = files_of_when_done(&t, user, 1).await;
    assert_eq!(files[0].status, FileStatus::Stored);
    assert_eq!(files[0].attempts, 3, "two failures, then success");
    assert_eq!(t.sim.stats().calls(Endpoint::DownloadFileStream), 3);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_keeps_failing_is_published_with_the_failure_and_order_is_kept() {
    let mut t = spawn_app().await;
    let user = "hana";
    let mut w = t.watch(TENANT, user).await;
    connect(&t, &mut w, user).await;

    // Until cleared: every attempt fails.
    t.sim
        .inject_fault(Fault::status(Endpoint::DownloadFileStream, 503));
    let file_id = agent_file(&t, user, "VIDEO", "mp4", b"never downloaded");
    t.sim.agent_say(user, "sent after the video");
    t.sim.agent_say(user, "and another one");
    let down = w
        .until(
            30,
            "the file's DownMessage",
            is_down_with_content(file_id.clone()),
        )
        .await;
    assert!(down.get("file").is_none(), "{down}");
    assert_eq!(down["fileError"]["code"], "503", "{down}");
    assert!(
        down["fileError"]["message"]
            .as_str()
            .unwrap()
            .contains("503"),
        "{down}"
    );
    w.until(
        10,
        "the later message",
        is_down_containing("and another one"),
    )
    .await;
    let contents: Vec<&str> = w
        .downs()
        .iter()
        .filter_map(|v| v["content"].as_str())
        .collect();
    let at = |c: &str| contents.iter().position(|x| *x == c).unwrap();
    assert!(at(&file_id) < at("sent after the video"), "{contents:?}");
    assert!(
        at("sent after the video") < at("and another one"),
        "{contents:?}"
    );

    let files = files_of_when_done(&t, user, 1).await;
    let f = &files[0];
    assert_eq!(f.status, FileStatus::Failed);
    assert_eq!(f.attempts, 5, "relay.media_attempts");
    assert_eq!(f.error_code.as_deref(), Some("503"));
    assert_eq!(
        (f.size, f.sha256.as_deref(), f.object.as_deref()),
        (None, None, None)
    );
    assert_eq!(t.sim.stats().calls(Endpoint::DownloadFileStream), 5);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_download_is_resumed_after_a_restart() {
    let mut t = spawn_app().await;
    let user = "ivan";
    let mut w = t.watch(TENANT, user).await;
    connect(&t, &mut w, user).await;

    t.sim
        .inject_fault(Fault::status(Endpoint::DownloadFileStream, 503));
    let bytes = b"downloaded by the next run".to_vec();
    let file_id = agent_file(&t, user, "AUDIO", "aac", &bytes);
    t.sim.agent_say(user, "after the audio");
    // Stop while the file is still pending (one failed attempt recorded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let files = files_of(&t, user).await;
        if files.first().is_some_and(|f| f.attempts >= 1) {
            assert_eq!(files[0].status, FileStatus::Pending);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{files:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.stop().await;
    w.drain(1).await;
    assert!(
        !w.downs()
            .iter()
            .any(|v| v["content"] == file_id.as_str() || v["content"] == "after the audio"),
        "held while pending: {:?}",
        w.downs()
    );

    t.sim.clear_faults();
    let config = test_config(&t.nats_server.url(), &t.db_url, &t.sim);
    t.app = Some(relay::app::App::start(config).await.expect("restart"));
    let down = w
        .until(
            20,
            "the file's DownMessage",
            is_down_with_content(file_id.clone()),
        )
        .await;
    assert_eq!(down["file"]["sha256"], sha256_hex(&bytes), "{down}");
    assert_eq!(down["file"]["size"], bytes.len());
    let object = down["file"]["object"].as_str().unwrap().to_owned();
    assert_eq!(object_bytes(&t, &object).await, bytes);
    w.until(
        10,
        "the later message",
        is_down_containing("after the audio"),
    )
    .await;
    w.drain(1).await;
    let copies = w
        .downs()
        .iter()
        .filter(|v| v["content"] == file_id.as_str())
        .count();
    assert_eq!(copies, 1, "published once");
    let f = &files_of_when_done(&t, user, 1).await[0];
    assert_eq!(f.status, FileStatus::Stored);
    assert!(f.attempts >= 2, "{f:?}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_refusal_is_published_at_once_and_a_passing_one_is_retried() {
    let mut t = spawn_app().await;
    let user = "jo";
    let mut w = t.watch(TENANT, user).await;
    connect(&t, &mut w, user).await;

    // resultCode 2 (a parameter is missing): final, no second attempt.
    t.sim.force_result(
        Endpoint::DownloadFileStream,
        "2",
        "param channelId or userId or tenantId is null",
        1,
    );
    let refused = agent_file(&t, user, "IMAGE", "jpg", b"refused");
    let down = w
        .until(
            20,
            "the refused file",
            is_down_with_content(refused.clone()),
        )
        .await;
    assert_eq!(down["fileError"]["code"], "2", "{down}");
    assert!(
        down["fileError"]["message"]
            .as_str()
            .unwrap()
            .contains("param channelId or userId or tenantId is null"),
        "{down}"
    );
    assert_eq!(t.sim.stats().calls(Endpoint::DownloadFileStream), 1);
    let f = &files_of_when_done(&t, user, 1).await[0];
    assert_eq!((f.status, f.attempts), (FileStatus::Failed, 1));

    // resultCode 13 "downloadFileStream IOException": the file server's trouble, retried.
    t.sim.force_result(
        Endpoint::DownloadFileStream,
        "13",
        "downloadFileStream IOException",
        1,
    );
    let bytes = b"second time lucky".to_vec();
    let passing = agent_file(&t, user, "IMAGE", "bmp", &bytes);
    let down = w
        .until(
            20,
            "the retried file",
            is_down_with_content(passing.clone()),
        )
        .await;
    assert_eq!(down["file"]["sha256"], sha256_hex(&bytes), "{down}");
    assert_eq!(t.sim.stats().calls(Endpoint::DownloadFileStream), 3);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_with_its_own_bucket_and_attempts_files_are_stored_or_given_up_in_order() {
    let pg = crate::support::fresh_pg_database().await;
    let mut t = spawn_app_configured(sim::SimConfig::default(), Some(pg.url.clone()), |c, _| {
        c.relay.media_attempts = 2;
        c.nats.files_bucket = Some("MEDIA_IT".to_owned());
    })
    .await;
    let user = "kim";
    let mut w = t.watch(TENANT, user).await;
    connect(&t, &mut w, user).await;

    t.sim
        .inject_fault(Fault::status(Endpoint::DownloadFileStream, 500));
    let lost = agent_file(&t, user, "IMAGE", "png", b"given up after two");
    let given_up = w
        .until(20, "the given-up file", is_down_with_content(lost.clone()))
        .await;
    assert_eq!(given_up["fileError"]["code"], "500", "{given_up}");
    assert_eq!(
        t.sim.stats().calls(Endpoint::DownloadFileStream),
        2,
        "relay.media_attempts = 2"
    );
    t.sim.clear_faults();
    let bytes = b"stored on the second file".to_vec();
    let kept = agent_file(&t, user, "AUDIO", "mp3", &bytes);
    t.sim.agent_say(user, "after both files");
    w.until(
        20,
        "the later message",
        is_down_containing("after both files"),
    )
    .await;
    let downs = w.downs();
    let at = |c: &str| downs.iter().position(|v| v["content"] == c).unwrap();
    assert!(at(&lost) < at(&kept) && at(&kept) < at("after both files"));
    let stored = downs[at(&kept)];
    assert_eq!(stored["file"]["bucket"], "MEDIA_IT", "{stored}");
    let object = stored["file"]["object"].as_str().unwrap();
    assert_eq!(object_bytes_in(&t, "MEDIA_IT", object).await, bytes);

    let files = files_of_when_done(&t, user, 2).await;
    let by_id = |id: &str| files.iter().find(|f| f.file_id == id).unwrap();
    assert_eq!(
        (by_id(&lost).status, by_id(&lost).attempts),
        (FileStatus::Failed, 2)
    );
    assert_eq!(by_id(&kept).status, FileStatus::Stored);
    assert_eq!(
        by_id(&kept).sha256.as_deref(),
        Some(sha256_hex(&bytes).as_str())
    );
    assert_eq!(by_id(&kept).file_type, "mp3");
    t.stop().await;
}
