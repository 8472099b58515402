//! The relay's small HTTP surface: `/healthz` (the process answers), `/readyz` (the database
//! is reachable and takes writes, NATS is reachable, the streams are set up and the outbox keeps
//! up) and `/metrics` (Prometheus text format, see [`crate::instrument`]). Tencent callbacks
//! (`/tim/<a>/callback`) are merged in from [`crate::timlink::callback`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use store::DynStore;

/// What `/readyz` looks at.
#[derive(Clone)]
pub struct Health {
    /// The store, and whether it takes commits (it may answer a ping and refuse writes).
    pub store: DynStore,
    pub nats: async_nats::Client,
    /// Set once the streams and the uplink consumer exist.
    pub streams_ready: Arc<AtomicBool>,
    /// Whether the outbox keeps up (a stuck outbox is not ready).
    pub outbox: crate::outbox::OutboxHealth,
    /// In a cluster: ready only while the leases are renewed (`docs/HA.md`).
    pub ownership: crate::ownership::Ownership,
}

pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::instrument::render(),
    )
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    let db = match (h.store.ping().await, h.store.health().cause()) {
        (Err(e), _) => format!("down: {e}"),
        (Ok(()), Some(cause)) => format!("down: {cause}"),
        (Ok(()), None) => "up".to_owned(),
    };
    let nats = match h.nats.connection_state() {
        async_nats::connection::State::Connected => "up".to_owned(),
        other => format!("down: {other:?}"),
    };
    let streams = if h.streams_ready.load(Ordering::Relaxed) {
        "up"
    } else {
        "pending"
    };
    let outbox = match h.outbox.stuck() {
        None => "up".to_owned(),
        Some(why) => format!("stuck: {why}"),
    };
    let cluster = if !h.ownership.is_cluster() {
        "single"
    } else if h.ownership.valid() {
        "up"
    } else {
        "down: leases not renewed"
    };
    let ready = db == "up"
        && nats == "up"
        && streams == "up"
        && outbox == "up"
        && (cluster == "up" || cluster == "single");
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(
            json!({"ready": ready, "database": db, "nats": nats, "streams": streams, "outbox": outbox, "cluster": cluster}),
        ),
    )
}

/// Serves `router` on `listener` until `cancel` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}
