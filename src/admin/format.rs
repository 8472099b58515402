//! How the admin commands write rows: a line of text, a JSON object, and how they read times.
//! (`ccrelay export`'s formats are the `archive` crate's.)
//!
//! What customers and agents wrote is untrusted: the text forms escape control characters
//! ([`printable`]), so a message cannot move the cursor, recolour or clear the operator's
//! terminal.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use store::MessageRow;

/// Reads `--since` / `--until`: RFC 3339 (`2026-12-01T08:00:00Z`) or a date (`2026-12-01`,
/// midnight UTC).
///
/// # Errors
/// Neither form.
pub fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &date_format)
        .map(|d| d.midnight().assume_utc())
        .map_err(|_| {
            format!("{s:?} is not an RFC 3339 time (2026-12-01T08:00:00Z) or a date (2026-12-01)")
        })
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// `2026-12-01 08:00:00`, for tables.
pub(super) fn short_time(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    t.format(&f).unwrap_or_default()
}

/// Every stored field; `body` as the JSON it is (or a string if it is not JSON).
pub(super) fn json_line(r: &MessageRow) -> Value {
    let body =
        serde_json::from_str::<Value>(&r.body).unwrap_or_else(|_| Value::String(r.body.clone()));
    json!({
        "relayId": r.relay_id,
        "kind": r.kind,
        "tenant": r.tenant,
        "userId": r.user_id,
        "sessionId": r.session_id,
        "direction": r.direction.as_str(),
        "messageId": r.message_id,
        "messageCode": r.message_code,
        "sourceType": r.source_type,
        "controlType": r.control_type,
        "mediaType": r.media_type,
        "content": r.content,
        "status": r.status.as_str(),
        "resultCode": r.result_code,
        "resultDesc": r.result_desc,
        "createdAt": rfc3339(r.created_at),
        "body": body,
    })
}

/// `2026-12-01 08:00:00  down AGENT  CHAT/TEXT  你好` — for a person reading a conversation.
pub(super) fn text_line(r: &MessageRow) -> String {
    let who = match r.direction {
        store::Direction::Up => "CUSTOMER",
        store::Direction::Down => r.source_type.as_deref().unwrap_or("?"),
    };
    let status = match (r.status, r.result_code.as_deref()) {
        (store::MessageStatus::Failed, code) => format!("  [failed {}]", code.unwrap_or("")),
        _ => String::new(),
    };
    format!(
        "{}  {:<4}  {:<8}  {}/{}  {}{}",
        short_time(r.created_at),
        r.direction.as_str(),
        printable(who),
        printable(r.control_type.as_deref().unwrap_or("-")),
        printable(r.media_type.as_deref().unwrap_or("-")),
        printable(r.content.as_deref().unwrap_or("")),
        printable(&status),
    )
}

/// `s` safe to print on a terminal, one line: control characters (C0 and C1, DEL, so ESC,
/// CR and LF too) and the bidirectional overrides that reorder what is shown become `\u{…}`
/// escapes (`\n`, `\r`, `\t` for the common three), and a backslash is doubled so an escape
/// cannot be faked. Everything else, CJK and emoji included, is kept.
pub(crate) fn printable(s: &str) -> Cow<'_, str> {
    fn unsafe_char(c: char) -> bool {
        c == '\\'
            || c.is_control()
            || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    }
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `ccrelay cluster status` as text: one line per member, then the partitions grouped by
/// owner, from the JSON of `relay::cluster::status`.
pub fn cluster_status(status: &Value) -> String {
    let mut out = String::new();
    let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_i64).unwrap_or(0);
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let _ = writeln!(
        out,
        "{} partitions, {} live members, {} partitions without a live owner",
        n(status, "partitions"),
        n(status, "liveMembers"),
        n(status, "unownedPartitions")
    );
    let _ = writeln!(
        out,
        "{:<32} {:<5} {:>10} {:>12} {:>8}  host",
        "member", "live", "partitions", "lease left", "pid"
    );
    for m in status["members"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<32} {:<5} {:>10} {:>10}ms {:>8}  {}",
            printable(&s(m, "member")),
            m["live"].as_bool().unwrap_or(false),
            n(m, "partitions"),
            n(m, "leaseRemainingMs"),
            n(m, "pid"),
            printable(&s(m, "host"))
        );
    }
    let _ = writeln!(
        out,
        "partition  owner                            epoch  lease left"
    );
    for p in status["leases"].as_array().into_iter().flatten() {
        let owner = p["owner"].as_str().unwrap_or("-");
        let left = if p["valid"].as_bool().unwrap_or(false) {
            format!("{}ms", n(p, "leaseRemainingMs"))
        } else {
            "expired".to_owned()
        };
        let _ = writeln!(
            out,
            "{:>9}  {:<32} {:>5}  {}",
            n(p, "partition"),
            printable(owner),
            n(p, "epoch"),
            left
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_dates() {
        assert_eq!(
            parse_time("2026-12-01").unwrap(),
            time::macros::datetime!(2026-12-01 00:00 UTC)
        );
        assert_eq!(
            parse_time("2026-12-01T08:30:00+08:00").unwrap(),
            time::macros::datetime!(2026-12-01 00:30 UTC)
        );
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
    }

    fn row(content: &str) -> MessageRow {
        MessageRow {
            relay_id: "r1".into(),
            kind: "cec".into(),
            tenant: "acme".into(),
            user_id: "ann".into(),
            session_id: None,
            direction: store::Direction::Up,
            message_id: Some("m1".into()),
            message_code: None,
            source_type: Some("CUSTOMER".into()),
            control_type: Some("CHAT".into()),
            media_type: Some("TEXT".into()),
            content: Some(content.into()),
            body: "{}".into(),
            status: store::MessageStatus::Sent,
            result_code: Some("-1".into()),
            result_desc: None,
            stream_seq: None,
            created_at: time::macros::datetime!(2026-12-01 08:00 UTC),
        }
    }

    #[test]
    fn the_text_transcript_escapes_control_characters() {
        let evil = "hi\u{1b}[2J\u{1b}]0;pwned\u{7}\r\nfake line\u{202e}txt.exe\u{9b}31m \\u{1b}";
        let line = text_line(&row(evil));
        assert!(
            !line.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{line:?}"
        );
        assert!(
            line.ends_with(
                "hi\\u{1b}[2J\\u{1b}]0;pwned\\u{7}\\r\\nfake line\\u{202e}txt.exe\\u{9b}31m \\\\u{1b}"
            ),
            "{line}"
        );
        assert_eq!(printable("你好 😀 plain"), "你好 😀 plain");
    }
}
