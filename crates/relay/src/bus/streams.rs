//! Creating or updating the two streams and the uplink consumers, idempotently, at start-up.
//!
//! `_IN` has *interest* retention: a message is removed as soon as the consumer whose filter takes
//! it has acknowledged it (`ccrelay-cec-up` takes `P.cec.*.up.*`, `ccrelay-tim` takes `P.tim.>`;
//! the filters do not overlap), so handled uplink messages do not pile up until `max_age`. An
//! interest stream drops at once a message no consumer is there to want, so both consumers are
//! made before the retention is set — also when no `[[tim]]` app is configured, so Tencent
//! messages wait for one as they always did. A stream made by an earlier version (limits
//! retention) is switched in place at start-up: nats-server 2.10 and later change the retention of
//! a stream between limits and interest, keeping every message not yet acknowledged, and drop
//! those already acknowledged. An older server refuses the change; the relay then keeps the
//! limits retention and says so in a warning (messages then stay until `max_age` / `max_bytes`).

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};

use config::NatsConfig;
use contract::Subjects;

/// Durable name of the consumer that feeds CEC uplink.
pub const CEC_UP_CONSUMER: &str = "ccrelay-cec-up";

/// Durable name of the consumer that feeds Tencent IM sends and streams.
pub const TIM_CONSUMER: &str = "ccrelay-tim";

/// A failed stream or consumer operation.
#[derive(Debug, thiserror::Error)]
#[error("nats: {what}: {reason}")]
pub struct SetupError {
    pub what: String,
    pub reason: String,
}

fn err(what: impl Into<String>, e: impl std::fmt::Display) -> SetupError {
    SetupError {
        what: what.into(),
        reason: e.to_string(),
    }
}

/// The configuration of one of the relay's streams: `_IN` (`inbound`) with interest retention,
/// `_OUT` with limits retention (its readers keep their own position).
pub fn stream_config(
    name: String,
    subjects: Vec<String>,
    cfg: &NatsConfig,
    inbound: bool,
) -> stream::Config {
    stream::Config {
        name,
        subjects,
        retention: if inbound {
            stream::RetentionPolicy::Interest
        } else {
            stream::RetentionPolicy::Limits
        },
        storage: stream::StorageType::File,
        max_age: cfg.max_age,
        max_bytes: cfg.max_bytes,
        num_replicas: cfg.replicas,
        duplicate_window: cfg.duplicate_window,
        // `_IN` refuses new messages when full rather than dropping unprocessed ones; `_OUT`
        // drops its oldest (its readers keep their own position).
        discard: if inbound {
            stream::DiscardPolicy::New
        } else {
            stream::DiscardPolicy::Old
        },
        description: Some(if inbound {
            "ccrelay: messages from services to the contact centers".to_owned()
        } else {
            "ccrelay: messages and events from the contact centers".to_owned()
        }),
        ..Default::default()
    }
}

/// Creates the stream, or updates it when its configuration differs. Returns its info.
pub async fn ensure_stream(
    js: &jetstream::Context,
    want: stream::Config,
) -> Result<stream::Info, SetupError> {
    ensure_stream_keeping(js, want, false).await
}

/// [`ensure_stream`]; with `keep_retention`, an existing stream keeps its retention (and a new
/// one gets `want`'s).
async fn ensure_stream_keeping(
    js: &jetstream::Context,
    mut want: stream::Config,
    keep_retention: bool,
) -> Result<stream::Info, SetupError> {
    let name = want.name.clone();
    match js.get_stream(&name).await {
        Ok(mut s) => {
            let info = s
                .info()
                .await
                .map_err(|e| err(format!("stream {name} info"), e))?
                .clone();
            let have = &info.config;
            if keep_retention {
                want.retention = have.retention;
            }
            let differs = have.subjects != want.subjects
                || have.retention != want.retention
                || have.max_age != want.max_age
                || have.max_bytes != want.max_bytes
                || have.num_replicas != want.num_replicas
                || have.duplicate_window != want.duplicate_window
                || have.discard != want.discard
                || have.description != want.description
                || have.subject_transform != want.subject_transform;
            if differs {
                tracing::info!(stream = %name, "Updating stream configuration");
                js.update_stream(&want)
                    .await
                    .map_err(|e| err(format!("update stream {name}"), e))
            } else {
                Ok(info)
            }
        }
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            tracing::info!(stream = %name, "Creating stream");
            js.create_stream(want)
                .await
                .map_err(|e| err(format!("create stream {name}"), e))?
                .info()
                .await
                .cloned()
                .map_err(|e| err(format!("stream {name} info"), e))
        }
        Err(e) => Err(err(format!("get stream {name}"), e)),
    }
}

/// Both streams, as the configuration says, and both consumers of `_IN` (see the module docs for
/// the order). Returns the `_IN` stream's info.
pub async fn ensure_streams(
    js: &jetstream::Context,
    subjects: &Subjects,
    cfg: &NatsConfig,
) -> Result<stream::Info, SetupError> {
    let want = stream_config(
        subjects.in_stream(),
        subjects.in_stream_subjects(),
        cfg,
        true,
    );
    // First as it is (a new one with limits retention), then the consumers, then the retention.
    let staged = stream::Config {
        retention: stream::RetentionPolicy::Limits,
        ..want.clone()
    };
    let mut inbound = ensure_stream_keeping(js, staged, true).await?;
    ensure_cec_up_consumer(js, subjects, cfg).await?;
    ensure_tim_consumer(js, subjects, cfg).await?;
    if inbound.config.retention != want.retention {
        inbound = switch_retention(js, &want, inbound).await?;
    }
    ensure_stream(
        js,
        stream_config(
            subjects.out_stream(),
            subjects.out_stream_subjects(),
            cfg,
            false,
        ),
    )
    .await?;
    Ok(inbound)
}

/// Updates `_IN` to `want`'s retention. A refusal by the server (older than 2.10) leaves the
/// stream as it is, with a warning; only a failure to reach it is an error.
async fn switch_retention(
    js: &jetstream::Context,
    want: &stream::Config,
    have: stream::Info,
) -> Result<stream::Info, SetupError> {
    let name = &want.name;
    match js.update_stream(want).await {
        Ok(info) => {
            tracing::info!(stream = %name, from = ?have.config.retention, to = ?want.retention,
                "Stream retention changed: acknowledged messages are now removed");
            Ok(info)
        }
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::CreateStreamErrorKind::JetStream(_)
            ) =>
        {
            tracing::warn!(stream = %name, error = %e,
                "The server refused to change the stream's retention (nats-server 2.10 or later \
                 can); acknowledged uplink messages stay until nats.max_age or nats.max_bytes");
            Ok(have)
        }
        Err(e) => Err(err(format!("update stream {name}"), e)),
    }
}

/// The durable pull consumer of CEC uplink, created or updated.
pub async fn ensure_cec_up_consumer(
    js: &jetstream::Context,
    subjects: &Subjects,
    cfg: &NatsConfig,
) -> Result<consumer::Consumer<consumer::pull::Config>, SetupError> {
    let want = consumer::pull::Config {
        durable_name: Some(CEC_UP_CONSUMER.to_owned()),
        description: Some("ccrelay: customer messages to Huawei CEC".to_owned()),
        filter_subject: subjects.cec_up_filter(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: cfg.ack_wait,
        // The relay retries in place (only restarts and lost acks deliver again); a message
        // delivered this often anyway is given up by JetStream, and recorded by the relay as a
        // dead letter from the advisory (`uplink::advisory`).
        max_deliver: cfg.max_deliver,
        max_ack_pending: cfg.max_ack_pending,
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    };
    let stream_name = subjects.in_stream();
    let stream = js
        .get_stream_no_info(&stream_name)
        .await
        .map_err(|e| err(format!("get stream {stream_name}"), e))?;
    // create_consumer creates, or updates the mutable fields of an existing durable consumer.
    stream
        .create_consumer(want)
        .await
        .map_err(|e| err(format!("consumer {CEC_UP_CONSUMER}"), e))
}

/// The durable pull consumer of Tencent IM sends and chunks (`P.tim.>` on `_IN`), created or
/// updated. Apart from the CEC one, so a slow contact center never holds up the other.
pub async fn ensure_tim_consumer(
    js: &jetstream::Context,
    subjects: &Subjects,
    cfg: &NatsConfig,
) -> Result<consumer::Consumer<consumer::pull::Config>, SetupError> {
    let want = consumer::pull::Config {
        durable_name: Some(TIM_CONSUMER.to_owned()),
        description: Some("ccrelay: messages and stream chunks to Tencent IM".to_owned()),
        filter_subject: subjects.tim_filter(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: cfg.ack_wait,
        max_deliver: cfg.max_deliver,
        max_ack_pending: cfg.max_ack_pending,
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    };
    let stream_name = subjects.in_stream();
    let stream = js
        .get_stream_no_info(&stream_name)
        .await
        .map_err(|e| err(format!("get stream {stream_name}"), e))?;
    stream
        .create_consumer(want)
        .await
        .map_err(|e| err(format!("consumer {TIM_CONSUMER}"), e))
}

/// Retries `f` with capped exponential backoff until it succeeds or `cancel` fires.
pub async fn until_ok<T, E, F, Fut>(
    what: &str,
    cancel: &tokio_util::sync::CancellationToken,
    mut f: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "{what} failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}
