//! The state every task of a running relay shares: configuration, store, subjects, one CEC client
//! per tenant, the outbox signal, the poller's handle and the cancellation token.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::outbox::OutboxSignal;
use crate::poller::PollerHandle;
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
    pub poller: PollerHandle,
    /// Fires when the relay is shutting down.
    pub cancel: CancellationToken,
    /// Set once the streams and the uplink consumer are set up (for `/readyz`).
    pub streams_ready: Arc<std::sync::atomic::AtomicBool>,
    /// Where poll answers go before they are committed.
    pub journal: crate::poller::journal::Journal,
}

impl Relay {
    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants.get(name)
    }

    /// Commits, retrying while the database is away ([`store::Store::commit_retrying`]).
    pub async fn commit(&self, commit: Commit) -> Result<Committed, StoreError> {
        self.store.commit_retrying(commit).await
    }
}
