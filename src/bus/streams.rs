//! Creating or updating the two streams and the uplink consumer, idempotently, at start-up.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};

use super::Subjects;
use crate::config::NatsConfig;

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

/// The configuration of one of the relay's streams.
pub fn stream_config(
    name: String,
    subjects: Vec<String>,
    cfg: &NatsConfig,
    inbound: bool,
) -> stream::Config {
    stream::Config {
        name,
        subjects,
        retention: stream::RetentionPolicy::Limits,
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
    let name = want.name.clone();
    match js.get_stream(&name).await {
        Ok(mut s) => {
            let info = s
                .info()
                .await
                .map_err(|e| err(format!("stream {name} info"), e))?
                .clone();
            let have = &info.config;
            let differs = have.subjects != want.subjects
                || have.max_age != want.max_age
                || have.max_bytes != want.max_bytes
                || have.num_replicas != want.num_replicas
                || have.duplicate_window != want.duplicate_window
                || have.discard != want.discard
                || have.description != want.description;
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

/// Both streams, as the configuration says. Returns the `_IN` stream's info.
pub async fn ensure_streams(
    js: &jetstream::Context,
    subjects: &Subjects,
    cfg: &NatsConfig,
) -> Result<stream::Info, SetupError> {
    let inbound = ensure_stream(
        js,
        stream_config(
            subjects.in_stream(),
            subjects.in_stream_subjects(),
            cfg,
            true,
        ),
    )
    .await?;
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
