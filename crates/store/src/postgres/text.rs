//! PostgreSQL's `text` cannot hold NUL (U+0000), and `jsonb` refuses the `\u0000` escape; SQLite
//! takes both. A message with a NUL in it — an upstream's or a customer's — must still be stored,
//! not fail its commit for good, so before PostgreSQL sees them NULs become U+FFFD (the
//! replacement character) in text columns and in the strings of JSON bodies. Outbox payloads are
//! `bytea` and untouched: what is published is exactly what was built.
//!
//! The common case — no NUL anywhere — costs one scan per field and no allocation.

use serde_json::Value;

use crate::{Commit, MessageRow, Write};

fn fix(s: &mut String) {
    if s.contains('\0') {
        *s = s.replace('\0', "\u{FFFD}");
    }
}

fn fix_opt(s: &mut Option<String>) {
    if let Some(s) = s {
        fix(s);
    }
}

/// A JSON document whose strings (keys included) may contain `\u0000`.
fn fix_json(body: &mut String) {
    if !body.contains("\\u0000") {
        return;
    }
    let Ok(mut v) = serde_json::from_str::<Value>(body) else {
        return;
    };
    walk(&mut v);
    if let Ok(s) = serde_json::to_string(&v) {
        *body = s;
    }
}

fn walk(v: &mut Value) {
    match v {
        Value::String(s) => fix(s),
        Value::Array(a) => a.iter_mut().for_each(walk),
        Value::Object(m) => {
            let fixed: serde_json::Map<String, Value> = std::mem::take(m)
                .into_iter()
                .map(|(mut k, mut v)| {
                    fix(&mut k);
                    walk(&mut v);
                    (k, v)
                })
                .collect();
            *m = fixed;
        }
        _ => {}
    }
}

/// A text column's value PostgreSQL can store.
pub(crate) fn owned(s: &str) -> String {
    let mut s = s.to_owned();
    fix(&mut s);
    s
}

/// An optional text column's value PostgreSQL can store.
pub(crate) fn owned_opt(s: &Option<String>) -> Option<String> {
    s.as_deref().map(owned)
}

/// A JSON document PostgreSQL's `jsonb` takes.
pub(crate) fn json(body: &str) -> String {
    let mut body = body.to_owned();
    fix_json(&mut body);
    body
}

fn fix_row(r: &mut MessageRow) {
    for f in [
        &mut r.message_id,
        &mut r.message_code,
        &mut r.source_type,
        &mut r.control_type,
        &mut r.media_type,
        &mut r.content,
        &mut r.result_code,
        &mut r.result_desc,
    ] {
        fix_opt(f);
    }
    fix_json(&mut r.body);
}

/// Rewrites `w`, in place, into what PostgreSQL can store (twice changes nothing more).
pub(crate) fn write(w: &mut Write) {
    match w {
        Write::Commit(c) | Write::Fact(c) => fix_commit(c),
        Write::BeginUp(r) => fix_row(r),
        Write::SessionToken { token, .. } => fix_opt(token),
        // The dead letter's id is added to this body when stored, which keeps it clean.
        Write::OutboxDead { event: Some(e), .. } => fix_json(&mut e.body),
        // Their text is cleaned where it is bound ([`crate::DeadLetter::clean`], [`json`]).
        Write::OutboxDone(_)
        | Write::OutboxFailed { .. }
        | Write::OutboxDead { event: None, .. }
        | Write::DeadLetterAdd(_)
        | Write::DeadLetterRetry { .. }
        | Write::DeadLetterDrop(_)
        | Write::FileAttemptFailed { .. }
        | Write::FinishFile(_) => {}
        Write::TimStream(row, c) => {
            fix(&mut row.text);
            fix_opt(&mut row.error_info);
            fix_commit(c);
        }
        Write::TimCallback(row, c) => {
            fix_json(&mut row.body);
            fix_commit(c);
        }
    }
}

/// Makes a commit one PostgreSQL can store.
fn fix_commit(c: &mut Commit) {
    for d in &mut c.down {
        fix_row(&mut d.row);
    }
    for e in &mut c.events {
        fix_json(&mut e.body);
    }
    for e in c.set_aside.iter_mut().filter_map(|s| s.event.as_mut()) {
        fix_json(&mut e.body);
    }
    if let Some(up) = &mut c.up {
        fix_opt(&mut up.result_code);
        fix_opt(&mut up.result_desc);
    }
    if let Some(r) = &mut c.up_row {
        fix_row(r);
    }
    for s in &mut c.satisfactions {
        fix(&mut s.score);
        fix_opt(&mut s.comment);
        fix_opt(&mut s.inter_idx);
        fix(&mut s.result_code);
        fix_opt(&mut s.result_desc);
    }
    for o in &mut c.offline {
        fix_opt(&mut o.caller);
        fix(&mut o.content);
        fix_opt(&mut o.tip_text);
        fix(&mut o.result_code);
        fix_opt(&mut o.result_desc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    /// `s` with NUL replaced.
    fn text(s: &str) -> Cow<'_, str> {
        if s.contains('\0') {
            Cow::Owned(s.replace('\0', "\u{FFFD}"))
        } else {
            Cow::Borrowed(s)
        }
    }

    #[test]
    fn nul_becomes_the_replacement_character_in_text_and_json() {
        assert_eq!(text("a\0b"), "a\u{FFFD}b");
        assert!(matches!(text("plain"), Cow::Borrowed(_)));
        let mut body =
            serde_json::json!({"content": "x\u{0}y", "k\u{0}": ["\u{0}"], "n": 1}).to_string();
        assert!(body.contains("\\u0000"));
        fix_json(&mut body);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["content"], "x\u{FFFD}y");
        assert_eq!(v["k\u{FFFD}"][0], "\u{FFFD}");
        assert!(!body.contains("\\u0000"));
        // An escaped backslash followed by "u0000" is not a NUL and stays.
        let mut literal = serde_json::json!({"c": "\\u0000"}).to_string();
        let before = literal.clone();
        fix_json(&mut literal);
        assert_eq!(
            serde_json::from_str::<Value>(&literal).unwrap(),
            serde_json::from_str::<Value>(&before).unwrap()
        );
    }
}
