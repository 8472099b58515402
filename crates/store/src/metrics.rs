//! The store's metrics (served by the relay's `/metrics`): commits, group-commit batches, the
//! database being away, and dead letters. Recorded through the `metrics` facade.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

/// One store commit attempt.
pub fn store_commit(took: Duration, error: Option<bool>) {
    histogram!("ccrelay_store_commit_seconds").record(took.as_secs_f64());
    if let Some(retryable) = error {
        counter!("ccrelay_store_errors_total", "retryable" => if retryable { "true" } else { "false" })
            .increment(1);
    }
}

/// Group commit applied a batch of `writes` writes in one transaction.
pub fn store_batch(writes: usize) {
    counter!("ccrelay_store_batches_total").increment(1);
    counter!("ccrelay_store_writes_total").increment(writes as u64);
}

/// The database went away (unreachable, or refusing writes) or came back.
pub fn store_away(away: bool) {
    gauge!("ccrelay_store_away").set(if away { 1.0 } else { 0.0 });
}

/// Something was given up on and kept as a dead letter.
pub fn dead_letter(source: &str, reason: &str) {
    counter!("ccrelay_dead_letters_total", "source" => source.to_owned(), "reason" => reason.to_owned())
        .increment(1);
}

/// A write was refused: its partition is no longer this instance's ([`crate::cluster`]).
pub fn fenced(partition: u32) {
    counter!("ccrelay_cluster_fenced_writes_total").increment(1);
    tracing::warn!(
        partition,
        "A write was fenced: its partition belongs to another relay now"
    );
}
