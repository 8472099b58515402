//! Builders of the rows that go out through the outbox: an [`Event`] or a [`DownMessage`] becomes
//! its store record with the outbox payload it will be published as.

use time::OffsetDateTime;

use crate::bus::payload::{DownMessage, Event};
use crate::store::Direction;
use crate::store::{DownRecord, EventRecord, MessageRow, MessageStatus, OutboxMsg};

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

/// The transcript row and outbox message of a downlink message.
pub fn down_record(
    kind: &str,
    subject: String,
    session_id: &str,
    down: &DownMessage,
) -> DownRecord {
    let body = serde_json::to_string(down).unwrap_or_else(|_| "{}".to_owned());
    let m = &down.message;
    DownRecord {
        row: MessageRow {
            relay_id: down.id.clone(),
            kind: kind.to_owned(),
            tenant: down.tenant.clone(),
            user_id: down.user_id.clone(),
            session_id: Some(session_id.to_owned()),
            direction: Direction::Down,
            message_id: None,
            message_code: m
                .message_code
                .clone()
                .filter(|c| !c.is_empty() && c.len() <= crate::store::MAX_KEY_BYTES),
            source_type: m.source_type.clone(),
            control_type: m.control_type.clone(),
            media_type: m.media_type.clone(),
            content: m.content.clone(),
            body: body.clone(),
            status: MessageStatus::Received,
            result_code: None,
            result_desc: None,
            stream_seq: None,
            created_at: down.received_at,
        },
        publish: OutboxMsg {
            msg_id: down.id.clone(),
            subject,
            payload: body.into_bytes(),
        },
    }
}

/// Now, truncated to microseconds (what both databases keep).
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000)
        .unwrap_or(t)
}
