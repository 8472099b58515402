//! How the admin commands write rows: a line of text, a JSON object, a CSV record (RFC 4180), and
//! how they read times.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::store::MessageRow;

/// `--format` of `ccrelay export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line, with the stored body as JSON.
    Jsonl,
    /// RFC 4180 CSV with a header line; the body as JSON text.
    Csv,
}

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
        crate::store::Direction::Up => "CUSTOMER",
        crate::store::Direction::Down => r.source_type.as_deref().unwrap_or("?"),
    };
    let status = match (r.status, r.result_code.as_deref()) {
        (crate::store::MessageStatus::Failed, code) => format!("  [failed {}]", code.unwrap_or("")),
        _ => String::new(),
    };
    format!(
        "{}  {:<4}  {:<8}  {}/{}  {}{status}",
        short_time(r.created_at),
        r.direction.as_str(),
        who,
        r.control_type.as_deref().unwrap_or("-"),
        r.media_type.as_deref().unwrap_or("-"),
        r.content.as_deref().unwrap_or(""),
    )
}

pub(super) const CSV_HEADER: &str = "relay_id,kind,tenant,user_id,session_id,direction,message_id,\
message_code,source_type,control_type,media_type,content,status,result_code,result_desc,created_at,body";

/// One CSV record (RFC 4180: fields with a comma, quote, CR or LF are quoted, quotes doubled).
pub(super) fn csv_line(r: &MessageRow) -> String {
    let created = rfc3339(r.created_at);
    let fields: [Option<&str>; 17] = [
        Some(&r.relay_id),
        Some(&r.kind),
        Some(&r.tenant),
        Some(&r.user_id),
        r.session_id.as_deref(),
        Some(r.direction.as_str()),
        r.message_id.as_deref(),
        r.message_code.as_deref(),
        r.source_type.as_deref(),
        r.control_type.as_deref(),
        r.media_type.as_deref(),
        r.content.as_deref(),
        Some(r.status.as_str()),
        r.result_code.as_deref(),
        r.result_desc.as_deref(),
        Some(&created),
        Some(&r.body),
    ];
    fields
        .iter()
        .map(|f| csv_field(f.unwrap_or("")))
        .collect::<Vec<_>>()
        .join(",")
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
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

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(CSV_HEADER.split(',').count(), 17);
    }
}
