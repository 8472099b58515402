//! `ccrelay export`: what the relay stored — the transcript, events, satisfaction results,
//! offline and leave-messages, the session summaries — written for analytics tools as JSON lines, CSV or Parquet, read
//! from the store page by page in constant memory, with a progress bar on a terminal, and
//! resumable by time range.
//!
//! The store is read only through its [`store::Queries`] (`export_messages` and its siblings:
//! keyset pages in `(created_at, id)` order, see [`store::ExportPage`]; `summaries_page` in
//! `(closed_at, session_id)` order), so an export reads
//! SQLite and PostgreSQL alike and opens no other way into the database. The `parquet` crate is a
//! dependency of this crate alone: the relay does not link it.
//!
//! # Layout
//! - [`columns`]: what each table's export holds — one small column spec per table (name, type,
//!   how a stored row gives the value) — and the [`columns::Table`]s.
//! - [`encode`]: the three formats, written from a column spec: JSON lines, CSV (RFC 4180, with
//!   spreadsheet formulas defused) and Parquet (typed columns).
//! - [`parts`]: an export into a directory — one file per time range, each complete or absent,
//!   and the state file from which the same command goes on after an interruption.
//! - [`progress`]: the progress bar on a terminal.
//! - [`export`]: the loop that reads pages and writes them, for each kind of target.
#![forbid(unsafe_code)]

pub mod columns;
pub mod encode;
pub mod export;
pub mod parts;
pub mod progress;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use export::{Outcome, Request, Target, export};
pub use progress::Progress;

/// What `ccrelay export` exports: one table of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum What {
    /// The transcript, both directions (table `messages`).
    Messages,
    /// Every event the relay emitted (table `events`).
    Events,
    /// Customer evaluations and robot feedback (table `satisfactions`).
    #[value(alias = "satisfactions")]
    Satisfaction,
    /// Offline messages and leave-messages (table `offline_messages`).
    Offline,
    /// One row of figures per conversation (table `session_summaries`), by the time it closed.
    #[value(alias = "summary")]
    Summaries,
}

impl What {
    /// Its name on the command line, in file names and in the state file.
    pub fn as_str(self) -> &'static str {
        match self {
            What::Messages => "messages",
            What::Events => "events",
            What::Satisfaction => "satisfaction",
            What::Offline => "offline",
            What::Summaries => "summaries",
        }
    }
}

/// The file format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line; JSON bodies as JSON values.
    Jsonl,
    /// RFC 4180 CSV with a header line; JSON bodies as JSON text.
    Csv,
    /// Apache Parquet: typed columns (integers, booleans, timestamps in UTC), JSON bodies as
    /// text, Snappy-compressed.
    Parquet,
}

impl Format {
    /// The file name extension of its files.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A file or directory could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Rows could not be encoded into, or written to, `target`.
    #[error("writing {target}: {source}")]
    Encode {
        target: String,
        #[source]
        source: encode::EncodeError,
    },
    /// The request cannot be carried out as asked (the message says why and what to do).
    #[error("{0}")]
    Refused(String),
}

impl ExportError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ExportError::Io {
            action,
            path,
            source,
        }
    }
}
