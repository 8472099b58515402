//! What the CEC tasks of a running relay share ([`Relay`]): configuration, store (with its
//! health), subjects, one CEC client per tenant, the outbox signal, what this instance owns and
//! the cancellation token.
//!
//! It holds no task's handle: the poller's handle and journal go to the tasks that use them (the
//! uplink's context, the poller's task), so this module depends on nothing of the engine but the
//! outbox's signal, and every task module may depend on it.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::outbox::OutboxSignal;
use crate::ownership::Ownership;
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
    /// Which users' work is this instance's ([`Ownership`]): all of it on SQLite, the
    /// partitions its leases give it in a cluster.
    pub ownership: Ownership,
    /// This instance's member id in a cluster (`None` on SQLite).
    pub member: Option<String>,
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
