//! What the CEC tasks of a running relay share ([`Relay`]): configuration, store, subjects, one
//! CEC client per tenant, the outbox signal, the store's health and the cancellation token.
//!
//! It holds no task's handle: the poller's handle and journal go to the tasks that use them (the
//! uplink's context, the poller's task), so this module depends on nothing of the engine but the
//! outbox's signal, and every task module may depend on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::outbox::OutboxSignal;
use cec::CecClient;
use config::{CecTenant, Config};
use contract::Subjects;
use store::{Commit, Committed, DynStore, StoreError};

/// One configured CEC tenant and its client.
pub struct Tenant {
    pub name: Arc<str>,
    pub client: CecClient,
}

impl Tenant {
    pub fn config(&self) -> &CecTenant {
        self.client.tenant()
    }
}

/// Shared by every task; cheap to clone behind an `Arc`.
pub struct Relay {
    pub config: Config,
    pub store: DynStore,
    pub subjects: Subjects,
    pub tenants: HashMap<String, Tenant>,
    pub outbox: OutboxSignal,
    /// Fires when the relay is shutting down.
    pub cancel: CancellationToken,
    /// Set once the streams and the uplink consumer are set up (for `/readyz`).
    pub streams_ready: Arc<std::sync::atomic::AtomicBool>,
    /// Whether the database took the last commit; polling waits while it did not.
    pub store_health: Arc<StoreHealth>,
}

/// Whether the database is taking commits. While it is not, polling pauses ([`Self::wait_up`]),
/// so no answer is taken from the upstream — which forgets what it returned — only to sit in
/// memory until the database is back. `/readyz` names the cause ([`Self::cause`]).
#[derive(Default)]
pub struct StoreHealth {
    down: AtomicBool,
    /// The database answers but refuses writes (full, read-only, failing I/O): a ping does not
    /// tell when it is back, so only a commit going through ends the pause.
    refusing: AtomicBool,
    /// Why the last commit failed, while down.
    cause: std::sync::Mutex<Option<String>>,
    /// One probe at a time, however many polls wait.
    probe: tokio::sync::Mutex<()>,
}

/// How often a paused poller asks the database whether it is back.
const PROBE_EVERY: Duration = Duration::from_secs(1);

impl StoreHealth {
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Why the database is taken for away, while it is.
    pub fn cause(&self) -> Option<String> {
        if !self.is_down() {
            return None;
        }
        self.cause.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_down(&self, e: &StoreError) {
        let refusing = e.refuses_writes();
        *self.cause.lock().unwrap_or_else(|p| p.into_inner()) = Some(if refusing {
            format!("refusing writes: {e}")
        } else {
            e.to_string()
        });
        self.refusing.store(refusing, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            store::metrics::store_away(true);
            tracing::warn!(error = %e, refusing_writes = refusing,
                "Database unavailable: polling paused until it takes writes again");
        }
    }

    fn set_up(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            store::metrics::store_away(false);
            tracing::info!("Database taking writes again: polling resumes");
        }
    }

    /// Returns at once while the database is up; otherwise waits until a probe (a ping, when the
    /// database was unreachable) or a commit finds it back. `false` if `cancel` fired first.
    pub async fn wait_up(&self, store: &DynStore, cancel: &CancellationToken) -> bool {
        while self.is_down() {
            if !self.refusing.load(Ordering::Relaxed)
                && let Ok(_probe) = self.probe.try_lock()
                && tokio::time::timeout(PROBE_EVERY, store.ping())
                    .await
                    .is_ok_and(|r| r.is_ok())
            {
                self.set_up();
                break;
            }
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep(PROBE_EVERY) => {}
            }
        }
        true
    }
}

impl Relay {
    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants.get(name)
    }

    /// Commits, retrying while the database is unreachable (the work it records was done and must
    /// not be lost), until it succeeds, fails for good, or the relay is cancelled.
    pub async fn commit(&self, commit: Commit) -> Result<Committed, store::StoreError> {
        let mut delay = std::time::Duration::from_millis(50);
        loop {
            let started = std::time::Instant::now();
            let result = self.store.commit(commit.clone()).await;
            store::metrics::store_commit(
                started.elapsed(),
                result.as_ref().err().map(|e| e.is_retryable()),
            );
            match result {
                Ok(c) => {
                    self.store_health.set_up();
                    if c.outboxed > 0 {
                        self.outbox.notify();
                    }
                    return Ok(c);
                }
                Err(e) if e.is_retryable() && !self.cancel.is_cancelled() => {
                    self.store_health.set_down(&e);
                    tracing::warn!(error = %e, retry_in = ?delay, "Database unavailable; retrying the commit");
                    tokio::select! {
                        _ = self.cancel.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
                Err(e) => {
                    if !e.is_retryable() {
                        // The database answered about this write itself: it takes writes.
                        self.store_health.set_up();
                    }
                    return Err(e);
                }
            }
        }
    }
}
