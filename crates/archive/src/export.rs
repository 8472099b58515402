//! The export loop: a table's pages, read one after the other from the store
//! ([`crate::columns::Span`], [`PAGE_ROWS`] rows each), written as they come to one of three
//! [`Target`]s — standard output, one file, or a directory of time-range parts ([`crate::parts`])
//! — with the progress on a terminal. One page of rows (and, for Parquet, one row group) is all
//! it holds in memory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use store::Store;
use time::{Duration, OffsetDateTime};

use crate::columns::{self, Span, Table};
use crate::encode::Encoder;
use crate::parts::{self, State};
use crate::{ExportError, Format, Progress, What};

/// Rows read from the store per page.
pub const PAGE_ROWS: i64 = 1_000;

/// Where an export goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Standard output (JSON lines and CSV only).
    Stdout,
    /// One file, complete or not there at all: written beside as `.<name>.partial` and renamed
    /// into place at the end.
    File(PathBuf),
    /// A directory of time-range parts with a state file: see [`crate::parts`].
    Dir {
        path: PathBuf,
        /// A part ends after this many rows (at the next change of timestamp).
        part_rows: u64,
        /// Stop after writing this many parts; the next run goes on from there.
        max_parts: Option<u64>,
    },
}

/// What to export, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub what: What,
    pub format: Format,
    /// The rows stored from this time on; `None`: from the first. Into a directory that holds an
    /// export already, the export goes on where it stopped (and `since` may not be later).
    pub since: Option<OffsetDateTime>,
    /// The rows stored before this time.
    pub until: OffsetDateTime,
    /// Only this tenant's (or Tencent app's) rows.
    pub tenant: Option<String>,
    pub target: Target,
}

/// What an export did.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Rows written by this run.
    pub rows: u64,
    /// The files written by this run, in order.
    pub files: Vec<PathBuf>,
    /// Every row stored before this time is exported (into a directory: with the runs before).
    pub exported_until: OffsetDateTime,
    /// Whether the export reached `until` (not when it stopped at `max_parts`).
    pub complete: bool,
}

/// Exports `req.what` as `req` says.
///
/// # Errors
/// The store cannot be read, the target cannot be written, or the request is refused (Parquet to
/// standard output, a directory holding another export: [`ExportError::Refused`]).
pub async fn export(store: &Store, req: &Request) -> Result<Outcome, ExportError> {
    if req.format == Format::Parquet && req.target == Target::Stdout {
        return Err(ExportError::Refused(
            "Parquet is written to a file: give --out FILE or --dir DIR".to_owned(),
        ));
    }
    // The one place that maps a table to its export.
    match req.what {
        What::Messages => run(store, &columns::MESSAGES, req).await,
        What::Events => run(store, &columns::EVENTS, req).await,
        What::Satisfaction => run(store, &columns::SATISFACTION, req).await,
        What::Offline => run(store, &columns::OFFLINE, req).await,
        What::Summaries => run(store, &columns::SUMMARIES, req).await,
    }
}

async fn run<I: Send + Sync + 'static, R: Send + Sync + 'static>(
    store: &Store,
    table: &Table<I, R>,
    req: &Request,
) -> Result<Outcome, ExportError> {
    let since = req.since.unwrap_or(OffsetDateTime::UNIX_EPOCH);
    match &req.target {
        Target::Stdout => {
            let out = BufWriter::new(std::io::stdout());
            let mut progress = Progress::new(table.what.as_str(), req.until);
            let (_, rows) = write_range(
                store,
                table,
                req,
                since,
                out,
                "standard output",
                &mut progress,
            )
            .await?;
            progress.finish("exported");
            Ok(Outcome {
                rows,
                files: Vec::new(),
                exported_until: req.until,
                complete: true,
            })
        }
        Target::File(path) => one_file(store, table, req, since, path).await,
        Target::Dir {
            path,
            part_rows,
            max_parts,
        } => into_dir(store, table, req, path, *part_rows, *max_parts).await,
    }
}

/// A table's pages of one range, in order.
struct Pages<'s, I: 'static, R: 'static> {
    store: &'s Store,
    table: &'s Table<I, R>,
    span: Span,
    /// The page read last (none at first): the next starts after its last item.
    rows: Vec<I>,
    /// The last page read was short: there is no more.
    done: bool,
}

impl<'s, I: 'static, R: 'static> Pages<'s, I, R> {
    fn new(store: &'s Store, table: &'s Table<I, R>, req: &Request, since: OffsetDateTime) -> Self {
        Pages {
            store,
            table,
            span: Span {
                since,
                until: req.until,
                tenant: req.tenant.clone(),
                limit: PAGE_ROWS,
            },
            rows: Vec::new(),
            done: false,
        }
    }

    /// The next page; `None` after the last.
    async fn next(&mut self) -> Result<Option<&[I]>, ExportError> {
        if self.done {
            return Ok(None);
        }
        let rows = (self.table.read)(self.store, &self.span, self.rows.last()).await?;
        self.done = (rows.len() as i64) < self.span.limit;
        self.rows = rows;
        if self.rows.is_empty() {
            self.done = true;
            return Ok(None);
        }
        Ok(Some(&self.rows))
    }
}

/// Writes every row of `[since, until)` to `out` in `req.format`; gives `out` back, flushed,
/// with the number of rows.
async fn write_range<I: Send + Sync + 'static, R: Send + Sync + 'static, W: Write + Send>(
    store: &Store,
    table: &Table<I, R>,
    req: &Request,
    since: OffsetDateTime,
    out: W,
    target: &str,
    progress: &mut Progress,
) -> Result<(W, u64), ExportError> {
    let encode_error = |source| ExportError::Encode {
        target: target.to_owned(),
        source,
    };
    let mut encoder = Encoder::new(req.format, table.columns, out).map_err(encode_error)?;
    let mut pages = Pages::new(store, table, req, since);
    let mut n = 0u64;
    while let Some(rows) = pages.next().await? {
        for item in rows {
            encoder.write((table.row)(item)).map_err(encode_error)?;
        }
        n += rows.len() as u64;
        if let Some(last) = rows.last() {
            progress.advance(rows.len() as u64, (table.time)(last));
        }
    }
    let out = encoder.finish().map_err(encode_error)?;
    Ok((out, n))
}

/// [`Target::File`]: the whole range into `path`, renamed into place once complete.
async fn one_file<I: Send + Sync + 'static, R: Send + Sync + 'static>(
    store: &Store,
    table: &Table<I, R>,
    req: &Request,
    since: OffsetDateTime,
    path: &Path,
) -> Result<Outcome, ExportError> {
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        ExportError::Refused(format!("--out {}: not a file name", path.display()))
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let (mut partial, file) = Partial::create(dir.join(format!(".{name}.partial")))?;
    let mut progress = Progress::new(table.what.as_str(), req.until);
    let (out, rows) = write_range(
        store,
        table,
        req,
        since,
        BufWriter::new(file),
        &path.display().to_string(),
        &mut progress,
    )
    .await?;
    let file = out
        .into_inner()
        .map_err(|e| ExportError::io("writing", &partial.path)(e.into_error()))?;
    file.sync_all()
        .map_err(ExportError::io("syncing", &partial.path))?;
    std::fs::rename(&partial.path, path).map_err(ExportError::io("renaming into place", path))?;
    partial.renamed();
    progress.finish("exported");
    Ok(Outcome {
        rows,
        files: vec![path.to_owned()],
        exported_until: req.until,
        complete: true,
    })
}

/// A file written under a temporary name until it is complete: removed when dropped before it
/// was renamed into place — after an error, or when the export is abandoned (its future dropped,
/// as `ccrelay export` does at Ctrl-C) — so no half file is left behind.
struct Partial {
    path: PathBuf,
    renamed: bool,
}

impl Partial {
    fn create(path: PathBuf) -> Result<(Self, File), ExportError> {
        let file = File::create(&path).map_err(ExportError::io("creating", &path))?;
        Ok((
            Partial {
                path,
                renamed: false,
            },
            file,
        ))
    }

    /// It is in place under its own name: nothing to remove.
    fn renamed(&mut self) {
        self.renamed = true;
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// One part being written into a directory.
struct Part<R: 'static> {
    from: OffsetDateTime,
    partial: Partial,
    encoder: Encoder<R, BufWriter<File>>,
    rows: u64,
}

impl<R: 'static> Part<R> {
    fn open<I>(
        dir: &Path,
        table: &Table<I, R>,
        format: Format,
        from: OffsetDateTime,
    ) -> Result<Self, ExportError> {
        let (partial, file) =
            Partial::create(dir.join(parts::partial_name(table.what, format, from)))?;
        let encoder =
            Encoder::new(format, table.columns, BufWriter::new(file)).map_err(|source| {
                ExportError::Encode {
                    target: partial.path.display().to_string(),
                    source,
                }
            })?;
        Ok(Part {
            from,
            partial,
            encoder,
            rows: 0,
        })
    }

    fn write(&mut self, row: &R) -> Result<(), ExportError> {
        self.rows += 1;
        self.encoder
            .write(row)
            .map_err(|source| ExportError::Encode {
                target: self.partial.path.display().to_string(),
                source,
            })
    }

    /// Finishes the part as `[from, to)` and records it in `state`; returns its path.
    fn commit(
        self,
        dir: &Path,
        to: OffsetDateTime,
        state: &mut State,
    ) -> Result<PathBuf, ExportError> {
        let mut partial = self.partial;
        let out = self
            .encoder
            .finish()
            .map_err(|source| ExportError::Encode {
                target: partial.path.display().to_string(),
                source,
            })?;
        let file = out
            .into_inner()
            .map_err(|e| ExportError::io("writing", &partial.path)(e.into_error()))?;
        let name = parts::part_name(state.what, state.format, self.from, to);
        state.next = crate::encode::timestamp_text(to);
        state.rows += self.rows;
        state.parts += 1;
        let path = parts::commit_part(dir, &partial.path, file, &name, state)?;
        partial.renamed();
        Ok(path)
    }
}

/// [`Target::Dir`]: parts from where the directory's export stopped (or `since`) to `until`.
async fn into_dir<I: Send + Sync + 'static, R: Send + Sync + 'static>(
    store: &Store,
    table: &Table<I, R>,
    req: &Request,
    dir: &Path,
    part_rows: u64,
    max_parts: Option<u64>,
) -> Result<Outcome, ExportError> {
    let resume = parts::prepare(
        dir,
        table.what,
        req.format,
        req.tenant.as_deref(),
        req.since,
    )?;
    let mut state = resume.state;
    let since = resume.since;
    if req.until <= since {
        // Nothing stored since the last run can be exported yet.
        return Ok(Outcome {
            rows: 0,
            files: Vec::new(),
            exported_until: since,
            complete: true,
        });
    }
    let mut progress = Progress::new(table.what.as_str(), req.until);
    let mut pages = Pages::new(store, table, req, since);
    let mut part = Part::open(dir, table, req.format, since)?;
    let mut files = Vec::new();
    let mut last_at: Option<OffsetDateTime> = None;
    let mut rows = 0u64;
    while let Some(page) = pages.next().await? {
        for item in page {
            let at = (table.time)(item);
            if let Some(last) = last_at
                && part.rows >= part_rows
                && at > last
            {
                // Past the part's size, at a change of timestamp: the part is [from, last + 1µs).
                let end = last + Duration::MICROSECOND;
                files.push(part.commit(dir, end, &mut state)?);
                if max_parts.is_some_and(|m| files.len() as u64 >= m) {
                    progress.finish("exported, stopped at --max-parts");
                    return Ok(Outcome {
                        rows,
                        files,
                        exported_until: end,
                        complete: false,
                    });
                }
                part = Part::open(dir, table, req.format, end)?;
            }
            part.write((table.row)(item))?;
            last_at = Some(at);
            rows += 1;
        }
        if let Some(last) = last_at {
            progress.advance(page.len() as u64, last);
        }
    }
    files.push(part.commit(dir, req.until, &mut state)?);
    progress.finish("exported");
    Ok(Outcome {
        rows,
        files,
        exported_until: req.until,
        complete: true,
    })
}
