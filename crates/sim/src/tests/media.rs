//! uploadFileStream and downloadFileStream: round trips byte for byte, every documented code,
//! the size limit, and files sent by an agent (`agent_send_file`, `POST /sim/cec/agent/file`).

use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::Client;
use crate::SimConfig;

const UPLOAD: &str = "/apiaccess/ccmessaging/uploadFileStream";
const DOWNLOAD: &str = "/apiaccess/ccmessaging/downloadFileStream";

fn upload(file_type: &str, bytes: &[u8]) -> Value {
    json!({ "fileType": file_type, "fileStream": STANDARD.encode(bytes), "channel": "WEB" })
}

fn download(file_id: &str, file_type: &str) -> Value {
    json!({ "fileId": file_id, "channel": "WEB", "fileType": file_type })
}

/// Every byte value, in an order that depends on `seed`.
fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn every_file_type_round_trips_byte_for_byte() {
    let c = Client::new(SimConfig::default()).await;
    let t = c.apply_token("u1").await;
    let types = [
        "jpg", "png", "bmp", "bpm", "mp3", "aac", "mp4", "txt", "csv",
    ];
    for (i, file_type) in types.into_iter().enumerate() {
        let sent = bytes(i as u8, 1000 + i);
        let a = c.post(UPLOAD, Some(&t), upload(file_type, &sent)).await;
        assert_eq!(a.status, StatusCode::OK);
        let v = a.value();
        let obj = v.as_object().expect("object");
        assert_eq!(obj.len(), 2, "only objectKey and resultCode: {v}");
        assert_eq!(v["resultCode"], "0");
        let key = v["objectKey"].as_str().expect("objectKey");
        uuid::Uuid::parse_str(key).expect("objectKey is a UUID");
        assert_eq!(c.sim.uploaded(key).as_deref(), Some(&sent[..]));

        let a = c.post(DOWNLOAD, Some(&t), download(key, file_type)).await;
        assert_eq!(a.status, StatusCode::OK);
        let v = a.value();
        assert_eq!(v["resultCode"], "0", "{file_type}");
        let got = STANDARD
            .decode(v["fileStream"].as_str().expect("fileStream"))
            .expect("base64");
        assert_eq!(got, sent, "{file_type}");
    }
    assert_eq!(c.sim.uploaded("no-such-key"), None);
}

#[tokio::test]
async fn upload_accepts_the_documents_line_broken_base64_and_files_over_axums_default_limit() {
    let c = Client::new(SimConfig::default()).await;
    let t = c.apply_token("u1").await;
    let sent = bytes(7, 300);
    let encoded = STANDARD.encode(&sent);
    let broken = format!("{}\n  {}", &encoded[..40], &encoded[40..]);
    let body = json!({ "fileType": "jpg", "fileStream": broken, "channel": "WEB" });
    let v = c.post(UPLOAD, Some(&t), body).await.value();
    assert_eq!(v["resultCode"], "0");
    let key = v["objectKey"].as_str().expect("objectKey");
    assert_eq!(c.sim.uploaded(key), Some(sent));

    // 3 MiB: more than axum's default 2 MB body, well within the default 10 MiB.
    let big = bytes(1, 3 << 20);
    let v = c.post(UPLOAD, Some(&t), upload("mp4", &big)).await.value();
    assert_eq!(v["resultCode"], "0");
    let key = v["objectKey"].as_str().expect("objectKey");
    assert_eq!(c.sim.uploaded(key).map(|b| b.len()), Some(big.len()));
}

#[tokio::test]
async fn upload_answers_2_3_and_13_as_documented() {
    let c = Client::new(SimConfig {
        max_file_bytes: 16,
        ..SimConfig::default()
    })
    .await;
    let t = c.apply_token("u1").await;
    let null = json!({ "resultCode": "2", "resultDesc": "Param is null" });
    let invalid = json!({ "resultCode": "3", "resultDesc": "Requested param validate failed." });
    let cases = [
        (json!({ "fileStream": "AAAA", "channel": "WEB" }), &null),
        (
            json!({ "fileType": "jpg", "fileStream": "", "channel": "WEB" }),
            &null,
        ),
        (json!({ "fileType": "jpg", "fileStream": "AAAA" }), &null),
        (
            json!({ "fileType": "gif", "fileStream": "AAAA", "channel": "WEB" }),
            &invalid,
        ),
        (
            json!({ "fileType": "JPG", "fileStream": "AAAA", "channel": "WEB" }),
            &invalid,
        ),
        (
            json!({ "fileType": "jpg", "fileStream": "AAAA", "channel": "APP" }),
            &invalid,
        ),
        (upload("txt", &[b'x'; 17]), &invalid),
    ];
    for (body, expect) in cases {
        let a = c.post(UPLOAD, Some(&t), body.clone()).await;
        assert_eq!(&a.value(), expect, "{body}");
    }
    let body = json!({ "fileType": "jpg", "fileStream": "not base64!", "channel": "WEB" });
    let a = c.post(UPLOAD, Some(&t), body).await;
    assert_eq!(
        a.value(),
        json!({ "resultCode": "13", "resultDesc": "decode file failed" })
    );
    let v = c
        .post(UPLOAD, Some(&t), upload("txt", &[b'x'; 16]))
        .await
        .value();
    assert_eq!(v["resultCode"], "0", "exactly max_file_bytes is accepted");

    let a = c.post(UPLOAD, None, upload("txt", b"x")).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn download_answers_401_2_and_13_as_documented() {
    let c = Client::new(SimConfig::default()).await;
    let t = c.apply_token("u1").await;
    let key = c
        .post(UPLOAD, Some(&t), upload("png", b"png"))
        .await
        .value()["objectKey"]
        .as_str()
        .expect("objectKey")
        .to_owned();
    let cases = [
        (
            json!({ "channel": "WEB", "fileType": "png" }),
            "401",
            "objectKey is null!",
        ),
        (download("", "png"), "401", "objectKey is null!"),
        (
            json!({ "fileId": key, "fileType": "png" }),
            "2",
            "param channelId or userId or tenantId is null",
        ),
        (
            json!({ "fileId": key, "channel": "WEB" }),
            "2",
            "param channelId or userId or tenantId is null",
        ),
        (download(&key, "exe"), "13", "param filetype Out of range!"),
        (
            download("44992392-2078-4caa-af3f-16cc328db296", "png"),
            "13",
            "downloadFileStream IOException",
        ),
    ];
    for (body, code, desc) in cases {
        let a = c.post(DOWNLOAD, Some(&t), body.clone()).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(
            a.value(),
            json!({ "resultCode": code, "resultDesc": desc }),
            "{body}"
        );
    }
    let a = c.post(DOWNLOAD, None, download(&key, "png")).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_file_the_agent_sends_is_polled_as_its_file_id_and_downloads() {
    let c = Client::new(SimConfig::default()).await;
    let (t, call_id) = c.connected("u1").await;
    let image = bytes(9, 2048);
    let file_id = c.sim.agent_send_file("u1", "IMAGE", "png", image.clone());
    let m = c.poll("u1", &t).await.downlink_messages;
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].content.as_deref(), Some(file_id.as_str()));
    assert_eq!(m[0].media_type.as_deref(), Some("IMAGE"));
    assert_eq!(m[0].source_type.as_deref(), Some("AGENT"));
    assert_eq!(m[0].control_type.as_deref(), Some("CHAT"));
    assert_eq!(m[0].call_id.as_deref(), Some(call_id.as_str()));
    let v = c
        .post(DOWNLOAD, Some(&t), download(&file_id, "png"))
        .await
        .value();
    assert_eq!(v["resultCode"], "0");
    let got = STANDARD
        .decode(v["fileStream"].as_str().expect("fileStream"))
        .expect("base64");
    assert_eq!(got, image);
}

#[tokio::test]
async fn the_control_route_sends_an_agent_file() {
    let c = Client::new(SimConfig::default()).await;
    let (t, _) = c.connected("u1").await;
    let audio = bytes(3, 500);
    let body = json!({ "userId": "u1", "mediaType": "AUDIO", "fileType": "mp3", "data": STANDARD.encode(&audio) });
    let a = c.post_plain("/sim/cec/agent/file", body).await;
    assert_eq!(a.status, StatusCode::OK);
    let file_id = a.value()["fileId"].as_str().expect("fileId").to_owned();
    let m = c.poll("u1", &t).await.downlink_messages;
    assert_eq!(m[0].content.as_deref(), Some(file_id.as_str()));
    assert_eq!(m[0].media_type.as_deref(), Some("AUDIO"));
    assert_eq!(c.sim.uploaded(&file_id), Some(audio));

    for bad in [
        json!({ "userId": "u1", "mediaType": "TEXT", "fileType": "mp3", "data": "AAAA" }),
        json!({ "userId": "u1", "mediaType": "VIDEO", "fileType": "avi", "data": "AAAA" }),
        json!({ "userId": "u1", "mediaType": "VIDEO", "fileType": "mp4", "data": "!!" }),
    ] {
        let a = c.post_plain("/sim/cec/agent/file", bad.clone()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert!(c.poll("u1", &t).await.downlink_messages.is_empty());
}
