//! The state every task of a running relay shares: configuration, store, subjects, one CEC client
//! per tenant, the outbox signal, the poller's handle and the cancellation token.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::bus::Subjects;
use crate::cec::CecClient;
use crate::config::{CecTenant, Config};
use crate::outbox::OutboxSignal;
use crate::poller::PollerHandle;
use crate::store::{Commit, Committed, DynStore};

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
    pub poller: PollerHandle,
    /// Fires when the relay is shutting down.
    pub cancel: CancellationToken,
    /// Set once the streams and the uplink consumer are set up (for `/readyz`).
    pub streams_ready: Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants.get(name)
    }

    /// Commits, retrying while the database is unreachable (the work it records was done and must
    /// not be lost), until it succeeds, fails for good, or the relay is cancelled.
    pub async fn commit(&self, commit: Commit) -> Result<Committed, crate::store::StoreError> {
        let mut delay = std::time::Duration::from_millis(50);
        loop {
            match self.store.commit(commit.clone()).await {
                Ok(c) => {
                    if c.outboxed > 0 {
                        self.outbox.notify();
                    }
                    return Ok(c);
                }
                Err(e) if e.is_retryable() && !self.cancel.is_cancelled() => {
                    tracing::warn!(error = %e, retry_in = ?delay, "Database unavailable; retrying the commit");
                    tokio::select! {
                        _ = self.cancel.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }
}
