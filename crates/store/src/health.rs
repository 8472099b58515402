//! Whether the database is taking writes ([`StoreHealth`]), as the [`crate::Store`]'s retrying
//! calls find it: the `ccrelay_store_away` gauge, the "Database unavailable … polling paused" and
//! "taking writes again" log lines, and the cause `/readyz` names.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{Store, StoreError};

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

    /// Whether the database answers but refuses writes, while it is taken for away: only a
    /// write going through tells that it is back.
    pub(crate) fn is_refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    /// Why the database is taken for away, while it is.
    pub fn cause(&self) -> Option<String> {
        if !self.is_down() {
            return None;
        }
        self.cause.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_down(&self, e: &StoreError) {
        let refusing = e.refuses_writes();
        *self.cause.lock().unwrap_or_else(|p| p.into_inner()) = Some(if refusing {
            format!("refusing writes: {e}")
        } else {
            e.to_string()
        });
        self.refusing.store(refusing, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            crate::metrics::store_away(true);
            tracing::warn!(error = %e, refusing_writes = refusing,
                "Database unavailable: polling paused until it takes writes again");
        }
    }

    pub(crate) fn set_up(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            crate::metrics::store_away(false);
            tracing::info!("Database taking writes again: polling resumes");
        }
    }

    /// Returns at once while the database is up; otherwise waits until a probe (a ping, when the
    /// database was unreachable) or a commit finds it back. `false` if `cancel` fired first.
    pub(crate) async fn wait_up(&self, store: &Store, cancel: &CancellationToken) -> bool {
        while self.is_down() {
            if !self.is_refusing()
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
