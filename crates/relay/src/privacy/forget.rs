//! The erasure of one customer ([`forget`]): `ccrelay forget TENANT USER` and the `forget` RPC.
//!
//! In order, each part idempotent (an erasure run again finishes what a failed one left, and one
//! run twice deletes nothing the second time):
//! 1. **Refuse an open conversation**: a CEC customer with a session not closed (it is being
//!    polled: what the next poll brings would be stored again), a file of theirs still being
//!    downloaded (it would be put in the object store again), or a Tencent user with a robot
//!    stream not finished. The refusal says so; erase once it has ended (a DISCONNECT, the
//!    session's `idle_timeout`, `relay.media_deadline`, the stream's `stream_idle_timeout`).
//! 2. **Files**: every object the customer's `files` rows name is deleted from the object store —
//!    its chunks, and its metadata (the object's name holds the user id), deletion marker
//!    included.
//! 3. **Rows**: every table, [`store::privacy::Table::ERASURE`] in order, `batch` rows per
//!    transaction: first the outbox (so nothing of them is published after), the sessions last.
//! 4. **Streams**: the customer's messages in `_OUT` (`P.<kind>.<t>.*.<u>`) and `_IN` (the same,
//!    and with a partition token after it) purged by subject. A user id that is no subject token
//!    cannot be in a subject: nothing to purge.
//! 5. **Scrub** ([`store::Store::scrub`]): SQLite's write-ahead log copied into the database and
//!    truncated, PostgreSQL's tables vacuumed.
//! 6. **Audit**: a row of `erasures` — who asked, when, the customer as a hash ([`user_hash`]),
//!    the counts — `done`, or `incomplete` when a part failed (its error is the caller's answer).
//!
//! What is not erased (docs/PRIVACY.md): refusals on `P.error` that name no customer, copies
//! services made of what they consumed, a running relay's memory (the RPC, served by the
//! customer's owner, drops the customer's token there), and database backups.

use std::collections::BTreeMap;

use async_nats::jetstream;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use contract::Subjects;
use store::privacy::{Customer, Erasure, Purge, Scrubbed, Table};
use store::{DynStore, FileStatus, MessageStatus, StoreError, kind};

/// Who to erase, and who asked.
#[derive(Debug, Clone)]
pub struct Request {
    /// `cec` or `tim`.
    pub kind: String,
    /// The tenant (CEC) or app (Tencent IM).
    pub tenant: String,
    pub user: String,
    /// `cli:<user>` or `rpc:<caller>`: kept in the audit.
    pub requested_by: String,
}

/// What an erasure needs: the store, JetStream, the subjects, and the rows per transaction.
pub struct Eraser<'a> {
    pub store: &'a DynStore,
    pub js: &'a jetstream::Context,
    pub subjects: &'a Subjects,
    /// Rows per transaction (`store.retention_batch`).
    pub batch: i64,
}

/// What an erasure did.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The audit row's id.
    pub erasure: i64,
    /// The customer as the audit names them ([`user_hash`]).
    pub user_hash: String,
    /// What went, by table (`messages`, …) or place (`object_store`, `stream_in`, `stream_out`).
    pub counts: BTreeMap<String, u64>,
    /// Whether SQLite's log could be truncated at once (see [`Scrubbed`]).
    pub scrubbed: Scrubbed,
}

impl Report {
    /// Everything erased, rows, files and stream messages together.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// Why an erasure was refused or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    /// Nothing was done: the request names no customer the relay could keep.
    #[error("{0}")]
    Invalid(String),
    /// Nothing was done: the customer's conversation is going on.
    #[error(
        "{kind} customer {user:?} of {tenant:?} has {what}: erasing it now would race what it \
         stores next; erase once it has ended ({how})"
    )]
    InProgress {
        kind: String,
        tenant: String,
        user: String,
        what: String,
        how: &'static str,
    },
    /// A part failed: what went before it is gone; the audit says `incomplete`. Run it again.
    #[error("the erasure is incomplete ({done}): {error}; run it again to finish it")]
    Incomplete { done: String, error: String },
}

/// The audit's name for a customer: lower-case hex SHA-256 of kind, tenant and user id, each
/// followed by a NUL byte. Not the id, though not anonymous either: whoever has a user id can
/// compute its hash, and so can someone who tries every id of a small space (phone numbers).
pub fn user_hash(kind: &str, tenant: &str, user: &str) -> String {
    let mut h = Sha256::new();
    for part in [kind, tenant, user] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The customer as the store finds their rows: with the subjects the relay publishes and receives
/// their messages on (none for a user id that is no subject token).
pub fn customer(subjects: &Subjects, kind_: &str, tenant: &str, user: &str) -> Customer {
    let routable = contract::subjects::check_token(user).is_ok();
    let subjects = match (kind_, routable) {
        (_, false) => Vec::new(),
        (kind::TIM, true) => vec![
            subjects.tim_event(tenant, user),
            subjects.tim_in(tenant, user),
            subjects.tim_send(tenant, user),
            subjects.tim_stream(tenant, user),
        ],
        _ => vec![
            subjects.cec_down(tenant, user),
            subjects.cec_event(tenant, user),
            subjects.cec_up(tenant, user),
        ],
    };
    Customer {
        kind: kind_.to_owned(),
        tenant: tenant.to_owned(),
        user_id: user.to_owned(),
        subjects,
    }
}

/// Checks what the request names; refuses it as [`ForgetError::Invalid`].
fn check(req: &Request) -> Result<(), ForgetError> {
    if req.kind != kind::CEC && req.kind != kind::TIM {
        return Err(ForgetError::Invalid(format!(
            "kind {:?}: must be cec or tim",
            req.kind
        )));
    }
    contract::subjects::check_name(&req.tenant).map_err(|e| {
        ForgetError::Invalid(format!(
            "tenant {:?} {e}: names are [A-Za-z0-9_-]{{1,64}}",
            req.tenant
        ))
    })?;
    if req.user.is_empty() {
        return Err(ForgetError::Invalid("the user id is empty".into()));
    }
    Ok(())
}

/// Refuses a customer whose conversation is going on (see the module docs).
async fn check_ended(store: &DynStore, req: &Request) -> Result<(), ForgetError> {
    let busy = |what: String, how| ForgetError::InProgress {
        kind: req.kind.clone(),
        tenant: req.tenant.clone(),
        user: req.user.clone(),
        what,
        how,
    };
    let failed = |e: StoreError| ForgetError::Incomplete {
        done: "nothing erased".into(),
        error: format!("reading the database: {e}"),
    };
    if let Some(s) = store
        .open_session(&req.kind, &req.tenant, &req.user)
        .await
        .map_err(failed)?
    {
        return Err(busy(
            format!("an open session ({}, {})", s.id, s.state.as_str()),
            "the customer's DISCONNECT, or the tenant's idle_timeout",
        ));
    }
    if let Some(f) = store
        .files(&req.kind, &req.tenant, &req.user)
        .await
        .map_err(failed)?
        .into_iter()
        .find(|f| f.status == FileStatus::Pending)
    {
        return Err(busy(
            format!("a file being downloaded ({})", f.relay_id),
            "its download, within relay.media_deadline",
        ));
    }
    if req.kind == kind::TIM
        && let Some(s) = store
            .tim_streams(&req.tenant, &req.user)
            .await
            .map_err(failed)?
            .into_iter()
            .find(|s| !s.finished && s.status == MessageStatus::Pending)
    {
        return Err(busy(
            format!("a robot stream not finished ({:?})", s.stream_id),
            "its last chunk, or the app's stream_idle_timeout",
        ));
    }
    Ok(())
}

/// Erases one customer (see the module docs). The audit row is written whatever happened after
/// the checks, `done` or `incomplete`.
///
/// # Errors
/// [`ForgetError::Invalid`] and [`ForgetError::InProgress`] before anything is deleted;
/// [`ForgetError::Incomplete`] when a part failed.
pub async fn forget(e: &Eraser<'_>, req: &Request) -> Result<Report, ForgetError> {
    check(req)?;
    check_ended(e.store, req).await?;
    let started = OffsetDateTime::now_utc();
    let hash = user_hash(&req.kind, &req.tenant, &req.user);
    let mut counts = BTreeMap::new();
    let outcome = erase(e, req, &mut counts).await;
    let erasure = Erasure {
        id: 0,
        kind: req.kind.clone(),
        tenant: req.tenant.clone(),
        user_hash: hash.clone(),
        requested_by: req.requested_by.clone(),
        outcome: if outcome.is_ok() {
            "done"
        } else {
            "incomplete"
        }
        .to_owned(),
        counts: counts.clone(),
        started_at: started,
        finished_at: OffsetDateTime::now_utc(),
    };
    let recorded = e.store.record_erasure(&erasure).await;
    crate::instrument::erasure(if outcome.is_ok() {
        "done"
    } else {
        "incomplete"
    });
    let done = || {
        let total: u64 = counts.values().sum();
        format!("{total} erased so far")
    };
    let scrubbed = outcome.map_err(|error| ForgetError::Incomplete {
        done: done(),
        error,
    })?;
    let id = recorded.map_err(|err| ForgetError::Incomplete {
        done: done(),
        error: format!("recording the audit row: {err}"),
    })?;
    tracing::info!(kind = %req.kind, tenant = %req.tenant, user_hash = %hash, erasure = id,
        requested_by = %req.requested_by, counts = ?summary(&counts), "Customer erased");
    Ok(Report {
        erasure: id,
        user_hash: hash,
        counts,
        scrubbed,
    })
}

/// `counts` in one line: `messages=12 events=3 …` (those not zero).
pub fn summary(counts: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    if parts.is_empty() {
        "nothing".to_owned()
    } else {
        parts.join(" ")
    }
}

/// Steps 2 to 5, adding to `counts` as it goes; the error in words.
async fn erase(
    e: &Eraser<'_>,
    req: &Request,
    counts: &mut BTreeMap<String, u64>,
) -> Result<Scrubbed, String> {
    let who = customer(e.subjects, &req.kind, &req.tenant, &req.user);

    let files = e
        .store
        .files(&req.kind, &req.tenant, &req.user)
        .await
        .map_err(|err| format!("reading the customer's files: {err}"))?;
    let mut objects = 0;
    for f in &files {
        if let (Some(bucket), Some(object)) = (&f.bucket, &f.object) {
            objects += delete_object(e.js, bucket, object).await?;
        }
    }
    counts.insert("object_store".into(), objects);

    for table in Table::ERASURE {
        let mut step = Some(Purge::Customer {
            table: *table,
            customer: who.clone(),
            limit: e.batch,
        });
        while let Some(s) = step {
            let done = e
                .store
                .purge(&s)
                .await
                .map_err(|err| format!("deleting from {table}: {err}"))?;
            *counts.entry(table.as_str().to_owned()).or_default() += done.rows;
            step = s.next(&done);
        }
    }

    if !who.subjects.is_empty() {
        let (outbound, inbound) = filters(e.subjects, &req.kind, &req.tenant, &req.user);
        counts.insert(
            "stream_out".into(),
            purge(e.js, &e.subjects.out_stream(), &outbound).await?,
        );
        counts.insert(
            "stream_in".into(),
            purge(e.js, &e.subjects.in_stream(), &inbound).await?,
        );
    }

    e.store
        .scrub(Table::ERASURE)
        .await
        .map_err(|err| format!("scrubbing the database: {err}"))
}

/// The subject filters of the customer's messages in `_OUT` and in `_IN` (where a cluster adds a
/// partition token).
fn filters(
    subjects: &Subjects,
    kind_: &str,
    tenant: &str,
    user: &str,
) -> (Vec<String>, Vec<String>) {
    let p = subjects.prefix();
    let any = format!("{p}.{kind_}.{tenant}.*.{user}");
    (vec![any.clone()], vec![format!("{any}.*"), any])
}

/// Purges `filters` from stream `name`; messages purged. A stream that does not exist holds
/// nothing.
async fn purge(js: &jetstream::Context, name: &str, filters: &[String]) -> Result<u64, String> {
    let stream = match js.get_stream(name).await {
        Ok(s) => s,
        Err(err) if stream_missing(&err) => return Ok(0),
        Err(err) => return Err(format!("stream {name}: {err}")),
    };
    let mut purged = 0;
    for f in filters {
        purged += stream
            .purge()
            .filter(f)
            .await
            .map_err(|err| format!("purging {name}: {err}"))?
            .purged;
    }
    Ok(purged)
}

fn stream_missing(err: &jetstream::context::GetStreamError) -> bool {
    matches!(
        err.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(ref j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// Deletes object `name` of `bucket` — its chunks and its metadata, a deletion marker included
/// (the name holds the user id); 1 if it was there, 0 if not.
async fn delete_object(js: &jetstream::Context, bucket: &str, name: &str) -> Result<u64, String> {
    let stream_name = format!("OBJ_{bucket}");
    let stream = match js.get_stream(&stream_name).await {
        Ok(s) => s,
        Err(err) if stream_missing(&err) => return Ok(0),
        Err(err) => return Err(format!("object store {bucket}: {err}")),
    };
    let store = js
        .get_object_store(bucket)
        .await
        .map_err(|err| format!("object store {bucket}: {err}"))?;
    let deleted = match store.info(name).await {
        Ok(info) if !info.deleted => {
            stream
                .purge()
                .filter(format!("$O.{bucket}.C.{}", info.nuid))
                .await
                .map_err(|err| format!("deleting a file from {bucket}: {err}"))?;
            1
        }
        Ok(_) => 0,
        Err(err) if err.kind() == jetstream::object_store::InfoErrorKind::NotFound => 0,
        Err(err) => return Err(format!("reading a file's metadata in {bucket}: {err}")),
    };
    let meta = base64::engine::general_purpose::URL_SAFE.encode(name);
    stream
        .purge()
        .filter(format!("$O.{bucket}.M.{meta}"))
        .await
        .map_err(|err| format!("deleting a file's metadata from {bucket}: {err}"))?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_names_kind_tenant_and_user_apart() {
        let h = user_hash("cec", "acme", "alice");
        assert_eq!(h.len(), 64);
        assert!(
            h.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(h, user_hash("cec", "acme", "alice"));
        assert_ne!(h, user_hash("tim", "acme", "alice"));
        // The separators keep "ac"+"mealice" apart from "acme"+"alice".
        assert_ne!(h, user_hash("cec", "ac", "mealice"));
    }

    #[test]
    fn a_customers_subjects_and_stream_filters() {
        let s = Subjects::new("ccrelay");
        let c = customer(&s, "cec", "acme", "alice");
        assert_eq!(
            c.subjects,
            [
                "ccrelay.cec.acme.down.alice",
                "ccrelay.cec.acme.event.alice",
                "ccrelay.cec.acme.up.alice"
            ]
        );
        let t = customer(&s, "tim", "shop", "u1");
        assert!(t.subjects.contains(&"ccrelay.tim.shop.in.u1".to_owned()));
        assert!(customer(&s, "cec", "acme", "a.b").subjects.is_empty());
        let (out, inbound) = filters(&s, "cec", "acme", "alice");
        assert_eq!(out, ["ccrelay.cec.acme.*.alice"]);
        assert_eq!(
            inbound,
            ["ccrelay.cec.acme.*.alice.*", "ccrelay.cec.acme.*.alice"]
        );
    }

    #[test]
    fn requests_naming_nobody_are_refused() {
        let req = |kind: &str, tenant: &str, user: &str| Request {
            kind: kind.into(),
            tenant: tenant.into(),
            user: user.into(),
            requested_by: "cli:test".into(),
        };
        assert!(check(&req("cec", "acme", "alice")).is_ok());
        for bad in [
            req("xyz", "acme", "alice"),
            req("cec", "a.b", "alice"),
            req("cec", "acme", ""),
        ] {
            assert!(
                matches!(check(&bad), Err(ForgetError::Invalid(_))),
                "{bad:?}"
            );
        }
    }
}
