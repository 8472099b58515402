//! Media coming down: the files agents send (a DownMessage whose `mediaType` is a file),
//! downloaded with `downloadFileStream` into a NATS object store bucket.
//!
//! The poll answer is committed at once (by the poller): a file message's outbox row is
//! committed *held*, with a pending `files` row, so nothing waits for a download before CEC's
//! un-acknowledged poll is safe in the database. The outbox publishes no row of that user's down
//! subject after a held one, so DownMessages still go out in the order the upstream returned them.
//!
//! This task ([`run`]) owns the rest. It looks for pending files every [`SWEEP`] (also those
//! left by a previous run), downloads each (at most `relay.media_concurrency` at once), puts the
//! bytes into the bucket (`nats.files_bucket`, default `<PREFIX>_FILES`, created or updated at
//! start-up with the limits `nats.files_max_bytes` and `nats.files_max_age`) under a name derived
//! from the message ([`object_name`], so a retry after a crash overwrites the same object), then
//! in one transaction fills the `files` row, rewrites the held DownMessage to carry `file` and
//! releases it. A failed download is retried with exponential backoff and
//! jitter; after `relay.media_attempts` attempts, `relay.media_deadline` after the message came,
//! or at once for a final error, the DownMessage is released carrying `fileError`
//! (`{"code","message"}`) and the row is marked failed: a message is never held back forever.
//!
//! In a cluster, a file is downloaded by the owner of its user's partition, under the work gate
//! ([`crate::ownership::Ownership::begin_for`]), so one member downloads it and a hand-back waits
//! for the download in flight.

pub mod content;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, object_store};
use backon::{BackoffBuilder, ExponentialBuilder};
use base64::Engine;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::bus::streams::{self, SetupError};
use crate::relay::Relay;
use cec::wire::{CHANNEL_WEB, DownlinkMessage, result_code};
use cec::wire_ops::DownloadRequest;
use config::Config;
use contract::payload::{DownMessage, FileError, FileRef};
use store::{FileDone, FileRow, FileStatus, PendingFile};

/// How often the store is asked for pending files.
pub const SWEEP: Duration = Duration::from_millis(200);
/// Pending files read per sweep.
const BATCH: i64 = 256;
/// First and largest delay between two download attempts of one file (before jitter).
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The object store bucket files go to.
pub fn bucket_name(cfg: &Config) -> String {
    cfg.nats
        .files_bucket
        .clone()
        .unwrap_or_else(|| format!("{}_FILES", cfg.nats.prefix.to_uppercase()))
}

/// The object a DownMessage's file is stored as: `<tenant>/<user>/<DownMessage id>`.
pub fn object_name(tenant: &str, user_id: &str, relay_id: &str) -> String {
    format!("{tenant}/{user_id}/{relay_id}")
}

/// The pending `files` row of a down message, if its media is a file ([`content`]).
pub fn pending_file(
    kind: &str,
    session_id: &str,
    down: &DownMessage<DownlinkMessage>,
) -> Option<FileRow> {
    let media_type = down.message.media_type.as_deref()?;
    let r = content::media_ref(media_type, down.message.content.as_deref()?)?;
    Some(FileRow {
        relay_id: down.id.clone(),
        kind: kind.to_owned(),
        tenant: down.tenant.clone(),
        user_id: down.user_id.clone(),
        session_id: Some(session_id.to_owned()),
        media_type: media_type.to_owned(),
        file_id: r.file_id,
        file_type: r.file_type,
        status: FileStatus::Pending,
        size: None,
        sha256: None,
        bucket: None,
        object: None,
        attempts: 0,
        error_code: None,
        error_message: None,
        created_at: down.received_at,
        updated_at: down.received_at,
    })
}

/// Creates the bucket if it does not exist, with the streams' replicas and the
/// `nats.files_max_bytes` / `nats.files_max_age` limits; an existing bucket whose limits differ
/// is updated to them (idempotent).
pub async fn ensure_bucket(
    js: &jetstream::Context,
    bucket: &str,
    cfg: &config::NatsConfig,
) -> Result<object_store::ObjectStore, SetupError> {
    let fail = |what: String, e: &dyn std::fmt::Display| SetupError {
        what,
        reason: e.to_string(),
    };
    if let Ok(store) = js.get_object_store(bucket).await {
        // The bucket is the stream `OBJ_<bucket>`: its limits are the stream's.
        let name = format!("OBJ_{bucket}");
        let mut stream = js
            .get_stream(&name)
            .await
            .map_err(|e| fail(format!("get stream {name}"), &e))?;
        let have = stream
            .info()
            .await
            .map_err(|e| fail(format!("stream {name} info"), &e))?
            .config
            .clone();
        if have.max_bytes != cfg.files_max_bytes || have.max_age != cfg.files_max_age {
            tracing::info!(bucket, max_bytes = cfg.files_max_bytes, max_age = ?cfg.files_max_age,
                "Updating the limits of the files bucket");
            js.update_stream(&jetstream::stream::Config {
                max_bytes: cfg.files_max_bytes,
                max_age: cfg.files_max_age,
                ..have
            })
            .await
            .map_err(|e| fail(format!("update object store {bucket}"), &e))?;
        }
        return Ok(store);
    }
    tracing::info!(bucket, "Creating object store bucket");
    js.create_object_store(object_store::Config {
        bucket: bucket.to_owned(),
        description: Some("ccrelay: files the contact centers sent".to_owned()),
        num_replicas: cfg.replicas,
        max_bytes: cfg.files_max_bytes,
        max_age: cfg.files_max_age,
        ..Default::default()
    })
    .await
    .map_err(|e| fail(format!("create object store {bucket}"), &e))
}

/// A failed download attempt.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct MediaError {
    /// What the DownMessage's `fileError.code` says.
    pub code: String,
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}

impl MediaError {
    fn new(code: impl Into<String>, message: impl Into<String>, retryable: bool) -> Self {
        MediaError {
            code: code.into(),
            message: message.into(),
            retryable,
        }
    }
}

/// Runs until the relay is cancelled; downloads run on `tracker`.
pub async fn run(relay: Arc<Relay>, js: jetstream::Context, tracker: TaskTracker) {
    let cancel = relay.cancel.clone();
    let bucket = bucket_name(&relay.config);
    let Some(os) = streams::until_ok("Setting up the files bucket", &cancel, || {
        ensure_bucket(&js, &bucket, &relay.config.nats)
    })
    .await
    else {
        return;
    };
    // The files being downloaded, by relay id; `true` once its download ended. An ended one is
    // forgotten only before the next read of the pending files, so a read that began before its
    // result was committed (and still lists it as pending) cannot start it again.
    let in_flight: Arc<Mutex<HashMap<String, bool>>> = Arc::default();
    let permits = Arc::new(Semaphore::new(relay.config.relay.media_concurrency));
    loop {
        if let Ok(mut s) = in_flight.lock() {
            s.retain(|_, ended| !*ended);
        }
        match relay.store.pending_files(BATCH).await {
            Ok(files) => {
                for pf in files {
                    // In a cluster, the owner of the user's partition downloads it.
                    let Some(work) = relay.ownership.begin_for(&pf.file.tenant, &pf.file.user_id)
                    else {
                        continue;
                    };
                    let id = pf.file.relay_id.clone();
                    let fresh = in_flight
                        .lock()
                        .map(|mut s| s.insert(id.clone(), false).is_none())
                        .unwrap_or(false);
                    if !fresh {
                        continue;
                    }
                    let (relay, os, bucket) = (relay.clone(), os.clone(), bucket.clone());
                    let (permits, in_flight) = (permits.clone(), in_flight.clone());
                    let span = tracing::error_span!(
                        "download",
                        tenant = %pf.file.tenant,
                        user = %pf.file.user_id,
                        file_id = %pf.file.file_id
                    );
                    tracker.spawn(
                        async move {
                            let _work = work;
                            fetch(&relay, &os, &bucket, pf, &permits).await;
                            if let Ok(mut s) = in_flight.lock() {
                                s.insert(id, true);
                            }
                        }
                        .instrument(span),
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "Cannot read pending files; will retry"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(SWEEP) => {}
        }
    }
}

/// Downloads and stores one file, retrying, then releases its DownMessage; runs in the span
/// `download` (`tenant`, `user`, `file_id`). A permit of `permits` is held during each attempt
/// only, so files waiting out a backoff do not keep the others from being fetched. Returns early
/// (leaving the file pending, for the next start) when the relay is cancelled.
async fn fetch(
    relay: &Relay,
    os: &object_store::ObjectStore,
    bucket: &str,
    pf: PendingFile,
    permits: &Semaphore,
) {
    let f = &pf.file;
    let cfg = &relay.config.relay;
    let max_attempts = i64::from(cfg.media_attempts);
    let deadline = f.created_at + cfg.media_deadline;
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(RETRY_MIN)
        .with_max_delay(RETRY_MAX)
        .with_jitter()
        .without_max_times()
        .build();
    let mut attempts = f.attempts;
    let outcome = loop {
        if attempts >= max_attempts {
            break Err(MediaError::new(
                f.error_code.clone().unwrap_or_else(|| "attempts".into()),
                format!(
                    "gave up after {attempts} attempts: {}",
                    f.error_message.as_deref().unwrap_or("no error recorded")
                ),
                false,
            ));
        }
        if OffsetDateTime::now_utc() > deadline {
            break Err(MediaError::new(
                "deadline",
                format!(
                    "not downloaded within relay.media_deadline ({})",
                    humantime::format_duration(cfg.media_deadline)
                ),
                false,
            ));
        }
        attempts += 1;
        let result = tokio::select! {
            _ = relay.cancel.cancelled() => return,
            r = async {
                let _permit = permits.acquire().await;
                attempt(relay, os, bucket, f).await
            } => r,
        };
        match result {
            Ok(file) => break Ok(file),
            Err(e) if e.retryable && attempts < max_attempts => {
                let delay = delays.next().unwrap_or(RETRY_MAX);
                tracing::warn!(code = %e.code, error = %e, attempts, retry_in = ?delay,
                    "File download failed; will retry");
                if let Err(se) = relay
                    .store
                    .file_attempt_failed(&f.relay_id, attempts, &e.code, &e.message)
                    .await
                {
                    tracing::debug!(error = %se, "Could not record the failed attempt");
                }
                tokio::select! {
                    _ = relay.cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => break Err(e),
        }
    };
    let at = store::now();
    let done = match outcome {
        Ok(file) => FileDone {
            relay_id: f.relay_id.clone(),
            status: FileStatus::Stored,
            size: Some(file.size as i64),
            sha256: Some(file.sha256.clone()),
            bucket: Some(file.bucket.clone()),
            object: Some(file.object.clone()),
            attempts,
            error_code: None,
            error_message: None,
            payload: with_field(&pf.payload, "file", serde_json::to_value(&file)),
            at,
        },
        Err(e) => {
            tracing::warn!(code = %e.code, error = %e, attempts,
                "File not downloaded; its message is published with fileError");
            let err = FileError {
                code: e.code.clone(),
                message: e.message.clone(),
            };
            FileDone {
                relay_id: f.relay_id.clone(),
                status: FileStatus::Failed,
                size: None,
                sha256: None,
                bucket: None,
                object: None,
                attempts,
                error_code: Some(e.code),
                error_message: Some(e.message),
                payload: with_field(&pf.payload, "fileError", serde_json::to_value(&err)),
                at,
            }
        }
    };
    finish(relay, &done).await;
}

/// Commits the end of a download, retrying while the database is away
/// ([`store::Store::finish_file_retrying`], which wakes the outbox when it released the row).
async fn finish(relay: &Relay, done: &FileDone) {
    match relay.store.finish_file_retrying(done).await {
        Ok(_) => {}
        Err(e) if e.is_retryable() => {} // cancelled while the database is away
        Err(e) => {
            tracing::error!(error = %e, relay_id = %done.relay_id,
                "Could not release a downloaded file's message; it is retried at the next start");
        }
    }
}

/// One download and store.
async fn attempt(
    relay: &Relay,
    os: &object_store::ObjectStore,
    bucket: &str,
    f: &FileRow,
) -> Result<FileRef, MediaError> {
    let Some(tenant) = relay.tenant(&f.tenant) else {
        return Err(MediaError::new(
            "unknown_tenant",
            format!("tenant {:?} is no longer configured", f.tenant),
            false,
        ));
    };
    let req = DownloadRequest {
        file_id: f.file_id.clone(),
        channel: CHANNEL_WEB.to_owned(),
        file_type: f.file_type.clone(),
    };
    let rsp = tenant
        .client
        .download(&f.user_id, &req)
        .await
        .map_err(|e| MediaError::new(e.code(), e.to_string(), e.is_retryable()))?;
    let code = rsp.result_code.trim();
    // The web channel API reference's sample answer of downloadFileStream has no resultCode: a
    // stream without a code is a success.
    let ok = code == result_code::OK || (code.is_empty() && rsp.file_stream.is_some());
    if !ok {
        let desc = rsp.result_desc.unwrap_or_default();
        // Of the documented codes (401 objectKey is null, 2 param null, 13 filetype out of
        // range, 13 IOException), only the file server's IOException may pass.
        let retryable = code == result_code::FAILED && desc.contains("IOException");
        return Err(MediaError::new(
            code,
            format!("downloadFileStream answered {code}: {desc}"),
            retryable,
        ));
    }
    let mut stream = rsp.file_stream.unwrap_or_default();
    stream.retain(|c| !c.is_ascii_whitespace());
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(stream.as_bytes())
        .map_err(|e| {
            MediaError::new(
                "decode",
                format!("downloadFileStream fileStream is not base64: {e}"),
                true,
            )
        })?;
    let max = tenant.config().max_file_bytes;
    if bytes.len() > max {
        return Err(MediaError::new(
            "too_large",
            format!(
                "the file is {} bytes, over the tenant's max_file_bytes ({max})",
                bytes.len()
            ),
            false,
        ));
    }
    let sha256 = hex(&Sha256::digest(&bytes));
    let object = object_name(&f.tenant, &f.user_id, &f.relay_id);
    os.put(object.as_str(), &mut bytes.as_slice())
        .await
        .map_err(|e| {
            MediaError::new(
                "object_store",
                format!("storing {object} in {bucket}: {e}"),
                true,
            )
        })?;
    Ok(FileRef {
        bucket: bucket.to_owned(),
        object,
        size: bytes.len() as u64,
        sha256,
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `payload` (a DownMessage) with `key` set to `value`.
fn with_field(payload: &[u8], key: &str, value: Result<Value, serde_json::Error>) -> String {
    let original = || String::from_utf8_lossy(payload).into_owned();
    let (Ok(mut map), Ok(value)) = (serde_json::from_slice::<Map<String, Value>>(payload), value)
    else {
        // Cannot happen for what the relay committed itself; publish it unchanged.
        return original();
    };
    map.insert(key.to_owned(), value);
    serde_json::to_string(&map).unwrap_or_else(|_| original())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_derived_from_the_message() {
        assert_eq!(object_name("acme", "u1", "0190-ab"), "acme/u1/0190-ab");
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
    }

    #[test]
    fn with_field_adds_to_the_message() {
        let s = with_field(
            br#"{"id":"x","content":"k"}"#,
            "file",
            Ok(serde_json::json!({"size": 3})),
        );
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["file"]["size"], 3);
        assert_eq!(v["content"], "k");
    }
}
