//! `ccrelay deadletter list | retry ID | drop ID`: the dead letters ([`store::deadletter`]).

use std::io::Write;

use anyhow::Context as _;

use super::format;
use crate::cli::DeadletterAction;
use contract::subjects::excerpt;
use store::{DeadLetter, DynStore};

/// Runs one `deadletter` action, writing what it did to `out`.
///
/// # Errors
/// The database cannot be read or written, or there is no dead letter `ID`.
pub async fn deadletter(
    store: &DynStore,
    action: DeadletterAction,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match action {
        DeadletterAction::List { json, limit } => {
            let rows = store
                .dead_letters(limit)
                .await
                .context("reading the dead letters")?;
            if json {
                for d in &rows {
                    writeln!(out, "{}", as_json(d))?;
                }
                return Ok(());
            }
            writeln!(
                out,
                "{:>6}  {:<14}  {:<14}  {:>8}  {:<20}  {:<40}  error",
                "id", "source", "reason", "attempts", "dead at", "subject"
            )?;
            for d in &rows {
                writeln!(
                    out,
                    "{:>6}  {:<14}  {:<14}  {:>8}  {:<20}  {:<40}  {}",
                    d.id,
                    d.source,
                    d.reason,
                    d.attempts,
                    format::short_time(d.dead_at),
                    excerpt(&d.subject, 40),
                    excerpt(&d.error, 200)
                )?;
            }
            Ok(())
        }
        DeadletterAction::Retry { id } => {
            let d = store
                .dead_letter_retry(id, &contract::payload::new_id())
                .await?
                .with_context(|| format!("there is no dead letter {id}"))?;
            writeln!(
                out,
                "dead letter {id} is in the outbox again: published on {} once the relay runs",
                excerpt(&d.subject, 200)
            )?;
            Ok(())
        }
        DeadletterAction::Drop { id } => {
            anyhow::ensure!(
                store.dead_letter_drop(id).await?,
                "there is no dead letter {id}"
            );
            writeln!(out, "dead letter {id} dropped")?;
            Ok(())
        }
    }
}

/// A dead letter as one JSON object; the payload as text when it is UTF-8, else base64.
fn as_json(d: &DeadLetter) -> serde_json::Value {
    use base64::Engine as _;
    let (payload, encoding) = match std::str::from_utf8(&d.payload) {
        Ok(s) => (s.to_owned(), "text"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&d.payload),
            "base64",
        ),
    };
    let ts = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    serde_json::json!({
        "id": d.id,
        "source": d.source,
        "msgId": d.msg_id,
        "subject": d.subject,
        "payload": payload,
        "payloadEncoding": encoding,
        "kind": d.kind,
        "tenant": d.tenant,
        "userId": d.user_id,
        "messageId": d.message_id,
        "reason": d.reason,
        "error": d.error,
        "attempts": d.attempts,
        "createdAt": ts(d.created_at),
        "deadAt": ts(d.dead_at),
    })
}
