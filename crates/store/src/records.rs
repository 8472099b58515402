//! Builders of the rows that go out through the outbox: an [`Event`] becomes its store record with
//! the outbox payload it will be published as.

use time::OffsetDateTime;

use contract::payload::Event;

use crate::EventRecord;

/// An event record for `subject` (the per-user event subject or `P.error`).
pub fn event_record(
    kind: &str,
    subject: String,
    session_id: Option<&str>,
    event: &Event,
) -> EventRecord {
    // Serialising our own struct cannot fail; fall back to an empty object rather than panic.
    let body = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_owned());
    EventRecord {
        relay_id: event.id.clone(),
        kind: kind.to_owned(),
        tenant: event.tenant.clone(),
        user_id: event.user_id.clone(),
        session_id: session_id.map(str::to_owned),
        event_type: event.event_type.clone(),
        ok: event.ok,
        body,
        subject,
        created_at: event.at,
    }
}

/// Now, at the precision both databases keep ([`crate::to_store_precision`]).
pub fn now() -> OffsetDateTime {
    crate::to_store_precision(OffsetDateTime::now_utc())
}
