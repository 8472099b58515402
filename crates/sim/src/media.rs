//! Files: uploadFileStream (doc §8), downloadFileStream (§9), and the files agents send
//! ([`Simulator::agent_send_file`]). Every file is kept in memory under its `objectKey` / `fileId`
//! (a UUID), whoever stored it, and any user of the tenant can download it.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::auth::{Needs, bad_request, json_renewed, session};
use super::faults::Endpoint;
use super::{SimConfig, Simulator};
use ::cec::wire::{CHANNEL_WEB, result_code};

/// The documented file types. The document writes "bpm", surely meaning bmp: both are accepted.
pub(crate) const FILE_TYPES: &[&str] = &[
    "jpg", "png", "bmp", "bpm", "mp3", "aac", "mp4", "txt", "csv",
];

const PARAM_NULL: &str = "Param is null";
const PARAM_INVALID: &str = "Requested param validate failed.";
const DECODE_FAILED: &str = "decode file failed";
/// resultCode (sic: a string, not an HTTP status) of a download without `fileId`.
const OBJECT_KEY_NULL_CODE: &str = "401";
const OBJECT_KEY_NULL: &str = "objectKey is null!";
const DOWNLOAD_PARAM_NULL: &str = "param channelId or userId or tenantId is null";
const FILE_TYPE_OUT_OF_RANGE: &str = "param filetype Out of range!";
const DOWNLOAD_IO: &str = "downloadFileStream IOException";

/// A stored file. Its `fileType` is not kept: a download is served whatever documented type it
/// asks for.
#[derive(Debug, Clone)]
pub(crate) struct StoredFile {
    pub(crate) bytes: Vec<u8>,
}

/// The routes of this module; uploads may be as large as `cfg.max_file_bytes` once decoded.
pub(crate) fn routes(cfg: &SimConfig) -> Router<Simulator> {
    // Base64 is 4/3 of the file, plus room for the rest of the body; a larger body gets 413.
    let limit = cfg.max_file_bytes.saturating_mul(4) / 3 + 64 * 1024;
    Router::new()
        .route(
            "/apiaccess/ccmessaging/uploadFileStream",
            post(upload).layer(DefaultBodyLimit::max(limit)),
        )
        .route("/apiaccess/ccmessaging/downloadFileStream", post(download))
}

/// Stores `bytes` under a new UUID, returned.
pub(crate) fn store(sim: &Simulator, bytes: Vec<u8>) -> String {
    let key = uuid::Uuid::now_v7().to_string();
    sim.inner
        .files
        .with(&key, |f| *f = Some(StoredFile { bytes }));
    key
}

/// ReqBody of uploadFileStream (table 8-1).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UploadRequest {
    #[serde(default)]
    file_type: Option<String>,
    #[serde(default)]
    file_stream: Option<String>,
    #[serde(default)]
    channel: Option<String>,
}

/// RspBody of uploadFileStream (table 8-2).
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct UploadResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    object_key: Option<String>,
    result_code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    result_desc: Option<String>,
}

/// Validates and decodes an upload: the file's bytes, or the refusal's code and desc.
fn decode_upload(
    req: UploadRequest,
    max_bytes: usize,
) -> Result<Vec<u8>, (&'static str, &'static str)> {
    let present = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    if !present(&req.file_type) || !present(&req.file_stream) || !present(&req.channel) {
        return Err((result_code::PARAM_NULL, PARAM_NULL));
    }
    let file_type = req.file_type.unwrap_or_default();
    let mut stream = req.file_stream.unwrap_or_default();
    if req.channel.as_deref() != Some(CHANNEL_WEB) || !FILE_TYPES.contains(&file_type.as_str()) {
        return Err((result_code::PARAM_INVALID, PARAM_INVALID));
    }
    // Line breaks in the base64 (as in the document's sample) are tolerated.
    stream.retain(|c| !c.is_ascii_whitespace());
    if stream.len() / 4 * 3 > max_bytes.saturating_add(3) {
        return Err((result_code::PARAM_INVALID, PARAM_INVALID));
    }
    let Ok(bytes) = STANDARD.decode(stream.as_bytes()) else {
        return Err((result_code::FAILED, DECODE_FAILED));
    };
    if bytes.len() > max_bytes {
        return Err((result_code::PARAM_INVALID, PARAM_INVALID));
    }
    Ok(bytes)
}

async fn upload(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    sim.call(Endpoint::UploadFileStream, move |sim| {
        let Ok(req) = serde_json::from_slice::<UploadRequest>(&body) else {
            return bad_request("body is not {\"fileType\",\"fileStream\",\"channel\"}");
        };
        let renewed = match session(sim, &headers, Needs::All, None, |_, _| ()) {
            Err(denied) => return denied.into_response(),
            Ok(((), renewed)) => renewed,
        };
        let response = match decode_upload(req, sim.inner.cfg.max_file_bytes) {
            Ok(bytes) => UploadResponse {
                object_key: Some(store(sim, bytes)),
                result_code: result_code::OK.into(),
                result_desc: None,
            },
            Err((code, desc)) => UploadResponse {
                result_code: code.into(),
                result_desc: Some(desc.into()),
                ..UploadResponse::default()
            },
        };
        json_renewed(&response, renewed)
    })
    .await
}

/// ReqBody of downloadFileStream (table 9-1).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DownloadRequest {
    #[serde(default)]
    file_id: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    file_type: Option<String>,
}

/// RspBody of downloadFileStream (table 9-2).
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct DownloadResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    file_stream: Option<String>,
    result_code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    result_desc: Option<String>,
}

/// The file a download asks for, base64, or the refusal's code and desc. A `channel` other than
/// WEB is refused like a missing one (the document lists no other code); the stored file is
/// served whatever `fileType` (of the documented ones) is asked for.
fn find_download(
    sim: &Simulator,
    req: &DownloadRequest,
) -> Result<String, (&'static str, &'static str)> {
    let Some(file_id) = req.file_id.as_deref().filter(|f| !f.is_empty()) else {
        return Err((OBJECT_KEY_NULL_CODE, OBJECT_KEY_NULL));
    };
    let file_type = req.file_type.as_deref().unwrap_or_default();
    if req.channel.as_deref() != Some(CHANNEL_WEB) || file_type.is_empty() {
        return Err((result_code::PARAM_NULL, DOWNLOAD_PARAM_NULL));
    }
    if !FILE_TYPES.contains(&file_type) {
        return Err((result_code::FAILED, FILE_TYPE_OUT_OF_RANGE));
    }
    sim.inner
        .files
        .with_existing(file_id, |f| f.as_ref().map(|f| STANDARD.encode(&f.bytes)))
        .flatten()
        .ok_or((result_code::FAILED, DOWNLOAD_IO))
}

async fn download(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    sim.call(Endpoint::DownloadFileStream, move |sim| {
        let Ok(req) = serde_json::from_slice::<DownloadRequest>(&body) else {
            return bad_request("body is not {\"fileId\",\"channel\",\"fileType\"}");
        };
        let renewed = match session(sim, &headers, Needs::All, None, |_, _| ()) {
            Err(denied) => return denied.into_response(),
            Ok(((), renewed)) => renewed,
        };
        let response = match find_download(sim, &req) {
            Ok(stream) => DownloadResponse {
                file_stream: Some(stream),
                result_code: result_code::OK.into(),
                result_desc: None,
            },
            Err((code, desc)) => DownloadResponse {
                result_code: code.into(),
                result_desc: Some(desc.into()),
                ..DownloadResponse::default()
            },
        };
        json_renewed(&response, renewed)
    })
    .await
}
