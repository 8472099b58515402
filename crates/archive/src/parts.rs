//! An export into a directory (`ccrelay export --dir DIR`): resumable by time range.
//!
//! The rows go into *parts*, one file per half-open time range `[from, to)`, named
//! `<what>-<from>-<to>.<ext>` with compact UTC times
//! (`messages-20261201T000000.000000Z-20261202T081500.123457Z.parquet`), so the names sort in
//! time order and `messages-*.parquet` reads them all. The parts of one table tile the time axis:
//! each starts where the one before ended. A part ends after `--part-rows` rows, at the first
//! change of timestamp (so rows stored at the same microsecond are never split: its end is the
//! last row's time plus one microsecond), and the last part of a run ends at the run's `--until`.
//!
//! A part is written to a hidden `.<what>-<from>.<ext>.partial` file, synced, and renamed into
//! place only when complete: a part file is always whole. Then the state file
//! `<what>.export.json` records where the next part starts (`next`), with what the export is
//! (table, format, tenant), written beside and renamed too. A run into a directory that has a
//! state goes on at its `next` — after an interruption, or later for the rows stored since —
//! and so writes every row exactly once:
//! - an interrupted part is thrown away (its `.partial` file removed) and written again;
//! - a part renamed into place whose state was not yet written (a crash between the two) starts
//!   at or after `next`: it is removed and written again.
//!
//! So resuming is: run the same command again. Without the state file (removed, or never made
//! because no part was finished) the parts in the directory are not continued: the export starts
//! over at `--since` and refuses a directory that already holds parts of the same table.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::encode::timestamp_text;
use crate::{ExportError, Format, What};

/// The version of the state file's layout.
const STATE_VERSION: u32 = 1;

/// What an export into a directory has done so far (`<what>.export.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub what: What,
    pub format: Format,
    /// Only this tenant's rows (`--tenant`), or all.
    pub tenant: Option<String>,
    /// Where the next part starts (RFC 3339, UTC, microseconds): every row stored before it is
    /// in a part.
    pub next: String,
    /// Rows written into the parts so far.
    pub rows: u64,
    /// Parts written so far.
    pub parts: u64,
}

impl State {
    /// The state of an export of `what` that has written nothing yet.
    pub fn new(what: What, format: Format, tenant: Option<String>, since: OffsetDateTime) -> Self {
        State {
            version: STATE_VERSION,
            what,
            format,
            tenant,
            next: timestamp_text(since),
            rows: 0,
            parts: 0,
        }
    }

    /// [`State::next`] as a time.
    ///
    /// # Errors
    /// It is not RFC 3339.
    pub fn next_time(&self) -> Result<OffsetDateTime, ExportError> {
        OffsetDateTime::parse(&self.next, &Rfc3339).map_err(|e| {
            ExportError::Refused(format!(
                "the state file's next time {:?} is not RFC 3339: {e}",
                self.next
            ))
        })
    }
}

/// `<dir>/<what>.export.json`.
pub fn state_path(dir: &Path, what: What) -> PathBuf {
    dir.join(format!("{}.export.json", what.as_str()))
}

/// `20261201T081500.123456Z`: a time in a file name (UTC, microseconds, fixed width).
pub fn stamp(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!(
        "[year][month][day]T[hour][minute][second].[subsecond digits:6]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(&f)
        .unwrap_or_default()
}

fn parse_stamp(s: &str) -> Option<OffsetDateTime> {
    let f = time::macros::format_description!(
        "[year][month][day]T[hour][minute][second].[subsecond digits:6]Z"
    );
    time::PrimitiveDateTime::parse(s, &f)
        .ok()
        .map(time::PrimitiveDateTime::assume_utc)
}

/// The name of the part `[from, to)`.
pub fn part_name(what: What, format: Format, from: OffsetDateTime, to: OffsetDateTime) -> String {
    format!(
        "{}-{}-{}.{}",
        what.as_str(),
        stamp(from),
        stamp(to),
        format.extension()
    )
}

/// The range `[from, to)` of a part of `what` in `format` named `name`; `None` for another file.
pub fn parse_part_name(
    what: What,
    format: Format,
    name: &str,
) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let rest = name
        .strip_prefix(what.as_str())?
        .strip_prefix('-')?
        .strip_suffix(format.extension())?
        .strip_suffix('.')?;
    let (from, to) = rest.split_once('-')?;
    Some((parse_stamp(from)?, parse_stamp(to)?))
}

/// The hidden file a part starting at `from` is written to until it is complete.
pub fn partial_name(what: What, format: Format, from: OffsetDateTime) -> String {
    format!(
        ".{}-{}.{}.partial",
        what.as_str(),
        stamp(from),
        format.extension()
    )
}

/// Where an export into a directory starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    /// The start of the first part this run writes.
    pub since: OffsetDateTime,
    /// The state of the export this run continues, if it continues one.
    pub state: State,
}

/// Readies `dir` for an export of `what` in `format` (of `tenant`'s rows): makes it if need
/// be, reads the state of the export it holds, checks that this run continues it, and removes
/// what an interrupted run left (see the module's documentation).
///
/// # Errors
/// [`ExportError::Refused`] when the directory holds an export this run cannot continue (another
/// format or tenant, a `since` past its `next`, parts without a state file);
/// [`ExportError::Io`] when it cannot be read or cleaned.
pub fn prepare(
    dir: &Path,
    what: What,
    format: Format,
    tenant: Option<&str>,
    since: Option<OffsetDateTime>,
) -> Result<Resume, ExportError> {
    fs::create_dir_all(dir).map_err(ExportError::io("creating", dir))?;
    let state_file = state_path(dir, what);
    let state = match fs::read(&state_file) {
        Ok(bytes) => Some(serde_json::from_slice::<State>(&bytes).map_err(|e| {
            ExportError::Refused(format!(
                "{} is not the state file of a ccrelay export ({e}): move it away, or export into \
                 another directory",
                state_file.display()
            ))
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(ExportError::io("reading", &state_file)(e)),
    };
    let names = file_names(dir)?;
    // Interrupted parts, of any run: never complete.
    for name in &names {
        if name.starts_with(&format!(".{}-", what.as_str())) && name.ends_with(".partial") {
            remove(&dir.join(name))?;
        }
    }
    let Some(state) = state else {
        if let Some(part) = names
            .iter()
            .find(|n| parse_part_name(what, format, n).is_some())
        {
            return Err(ExportError::Refused(format!(
                "{} holds {} files ({part}, …) but no state file {}: they cannot be continued. \
                 Export into another directory, or move them away",
                dir.display(),
                what.as_str(),
                state_file.display()
            )));
        }
        let since = since.unwrap_or(OffsetDateTime::UNIX_EPOCH);
        return Ok(Resume {
            since,
            state: State::new(what, format, tenant.map(str::to_owned), since),
        });
    };
    let describe = |s: &State| {
        format!(
            "{} as {} of {}",
            s.what.as_str(),
            s.format.extension(),
            s.tenant
                .as_deref()
                .map_or("every tenant".to_owned(), |t| format!("tenant {t:?}"))
        )
    };
    let asked = State::new(
        what,
        format,
        tenant.map(str::to_owned),
        OffsetDateTime::UNIX_EPOCH,
    );
    if state.version != STATE_VERSION
        || state.what != what
        || state.format != format
        || state.tenant.as_deref() != tenant
    {
        return Err(ExportError::Refused(format!(
            "{} holds an export of {}, not of {}: give the same --format and --tenant, or export \
             into another directory",
            dir.display(),
            describe(&state),
            describe(&asked)
        )));
    }
    let next = state.next_time()?;
    if let Some(since) = since
        && since > next
    {
        return Err(ExportError::Refused(format!(
            "{} holds {} exported up to {}; --since {} would leave a gap: leave --since out to go \
             on from there, or export into another directory",
            dir.display(),
            what.as_str(),
            state.next,
            timestamp_text(since)
        )));
    }
    // A part renamed into place whose state was never written: it is written again.
    for name in &names {
        if let Some((from, _)) = parse_part_name(what, format, name)
            && from >= next
        {
            tracing::info!(file = %name, "Removing a part written after the last state of its export");
            remove(&dir.join(name))?;
        }
    }
    Ok(Resume { since: next, state })
}

/// Makes the part's file at `partial` (complete, and flushed into `file`) the part `name`, and
/// then `state` the directory's state: each synced, then renamed into place.
///
/// # Errors
/// [`ExportError::Io`].
pub fn commit_part(
    dir: &Path,
    partial: &Path,
    file: File,
    name: &str,
    state: &State,
) -> Result<PathBuf, ExportError> {
    file.sync_all()
        .map_err(ExportError::io("syncing", partial))?;
    drop(file);
    let path = dir.join(name);
    fs::rename(partial, &path).map_err(ExportError::io("renaming into place", &path))?;
    sync_dir(dir)?;
    write_state(dir, state)?;
    Ok(path)
}

/// Writes `state` as `dir`'s state file of its table: beside, synced, renamed into place.
///
/// # Errors
/// [`ExportError::Io`].
pub fn write_state(dir: &Path, state: &State) -> Result<(), ExportError> {
    let path = state_path(dir, state.what);
    let tmp = dir.join(format!(".{}.export.json.tmp", state.what.as_str()));
    let mut json = serde_json::to_vec_pretty(state).map_err(|e| ExportError::Io {
        action: "encoding",
        path: path.clone(),
        source: e.into(),
    })?;
    json.push(b'\n');
    let mut f = File::create(&tmp).map_err(ExportError::io("creating", &tmp))?;
    f.write_all(&json)
        .and_then(|()| f.sync_all())
        .map_err(ExportError::io("writing", &tmp))?;
    fs::rename(&tmp, &path).map_err(ExportError::io("renaming into place", &path))?;
    sync_dir(dir)
}

/// Makes the directory's entries (a rename) durable.
fn sync_dir(dir: &Path) -> Result<(), ExportError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ExportError::io("syncing", dir))
}

fn file_names(dir: &Path) -> Result<Vec<String>, ExportError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(ExportError::io("reading", dir))? {
        let entry = entry.map_err(ExportError::io("reading", dir))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

fn remove(path: &Path) -> Result<(), ExportError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(ExportError::io("removing", path)(e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-12-01 00:00 UTC);
    const T1: OffsetDateTime = datetime!(2026-12-02 08:15:00.123457 UTC);

    #[test]
    fn part_names_carry_their_range_and_sort_in_time_order() {
        let name = part_name(What::Messages, Format::Parquet, T0, T1);
        assert_eq!(
            name,
            "messages-20261201T000000.000000Z-20261202T081500.123457Z.parquet"
        );
        assert_eq!(
            parse_part_name(What::Messages, Format::Parquet, &name),
            Some((T0, T1))
        );
        assert_eq!(parse_part_name(What::Events, Format::Parquet, &name), None);
        assert_eq!(parse_part_name(What::Messages, Format::Csv, &name), None);
        assert_eq!(
            parse_part_name(What::Messages, Format::Parquet, "messages-x-y.parquet"),
            None
        );
        let later = part_name(
            What::Messages,
            Format::Parquet,
            T1,
            T1 + time::Duration::DAY,
        );
        assert!(name < later);
        assert!(partial_name(What::Messages, Format::Parquet, T0).starts_with(".messages-"));
    }

    #[test]
    fn a_fresh_directory_starts_at_since() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("new");
        let r = prepare(&sub, What::Events, Format::Csv, None, Some(T0)).unwrap();
        assert_eq!(r.since, T0);
        assert_eq!(r.state.parts, 0);
        let r = prepare(&sub, What::Events, Format::Csv, None, None).unwrap();
        assert_eq!(r.since, OffsetDateTime::UNIX_EPOCH);
    }

    #[test]
    fn a_directory_with_a_state_goes_on_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut state = State::new(What::Messages, Format::Jsonl, Some("acme".into()), T0);
        state.next = timestamp_text(T1);
        state.parts = 1;
        write_state(d, &state).unwrap();
        let done = part_name(What::Messages, Format::Jsonl, T0, T1);
        let orphan = part_name(What::Messages, Format::Jsonl, T1, T1 + time::Duration::HOUR);
        let partial = partial_name(What::Messages, Format::Jsonl, T1);
        let other = part_name(What::Events, Format::Jsonl, T1, T1 + time::Duration::HOUR);
        for f in [&done, &orphan, &partial, &other] {
            fs::write(d.join(f), b"x").unwrap();
        }

        let r = prepare(d, What::Messages, Format::Jsonl, Some("acme"), Some(T0)).unwrap();
        assert_eq!(r.since, T1);
        assert_eq!(r.state, state);
        assert!(d.join(&done).exists(), "a part before next is kept");
        assert!(
            !d.join(&orphan).exists(),
            "a part from next on is written again"
        );
        assert!(!d.join(&partial).exists());
        assert!(
            d.join(&other).exists(),
            "another table's files are not touched"
        );

        for (format, tenant, since) in [
            (Format::Csv, Some("acme"), None),
            (Format::Jsonl, None, None),
            (Format::Jsonl, Some("beta"), None),
            (
                Format::Jsonl,
                Some("acme"),
                Some(T1 + time::Duration::SECOND),
            ),
        ] {
            let e = prepare(d, What::Messages, format, tenant, since).unwrap_err();
            assert!(matches!(e, ExportError::Refused(_)), "{e}");
        }
    }

    #[test]
    fn parts_without_a_state_are_not_continued() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join(part_name(What::Offline, Format::Csv, T0, T1)), b"x").unwrap();
        let e = prepare(d, What::Offline, Format::Csv, None, None).unwrap_err();
        assert!(e.to_string().contains("no state file"), "{e}");
        fs::write(d.join("offline.export.json"), b"{").unwrap();
        let e = prepare(d, What::Offline, Format::Csv, None, None).unwrap_err();
        assert!(e.to_string().contains("not the state file"), "{e}");
    }
}
