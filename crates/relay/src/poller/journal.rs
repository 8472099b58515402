//! The poll journal: the raw body of every poll answer that carries messages, appended to a local
//! file before the answer is committed, so a process killed between the two (SIGKILL, OOM, a
//! crash) loses nothing — the kernel keeps what was written — and the next start replays it
//! ([`super::replay`]) before polling resumes.
//!
//! Each answer costs one `write` and no `fsync`: a power loss takes the page cache with it, and
//! with it the journal's tail, as it takes the poll in flight. Records are trimmed once their
//! answers are committed: the journal is a series of *segments* (`<name>.<n>`); the current one
//! is truncated whenever every answer in it is committed, and when it grows past 1 MiB a new one
//! is started and the old one removed once its answers are. So it holds, at any time, about what
//! polls have in flight.
//!
//! A record is `CCJ1`, the header's and the body's lengths (u32, little-endian), a checksum of
//! both (FNV-1a, 64 bits), the header (JSON: tenant, user, session, channel, state, receive time)
//! and the body as the upstream sent it. Reading stops at the first record that is short or does
//! not check out — the torn tail of a write cut short — and says so.
//!
//! Replaying an answer committed already changes nothing: the store skips a downlink message
//! whose `messageCode` it has. An answer the store refuses for good (not for being away) is set
//! aside in `<name>.rejected`, same format, and a log line names it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Size past which a new segment is started.
const SEGMENT_BYTES: u64 = 1 << 20;
const MAGIC: &[u8; 4] = b"CCJ1";
/// Magic, two lengths and the checksum.
const PREFIX_BYTES: usize = 4 + 4 + 4 + 8;

/// Who a journaled answer belongs to, and when it came.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub tenant: String,
    pub user: String,
    pub session: String,
    pub channel: String,
    /// The session's state when polled (`active`, `queued`).
    pub state: String,
    /// When the answer came, in microseconds since the Unix epoch.
    pub at: i64,
}

/// One answer read back from the journal.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub header: Header,
    pub body: Vec<u8>,
}

/// A journaled answer not yet committed; hand it back with [`Journal::done`] once it is.
#[derive(Debug)]
#[must_use = "a journaled answer stays in the journal until done"]
pub struct Ticket {
    segment: u64,
}

/// What earlier runs left in the journal: answers that may not have been committed.
#[derive(Debug, Default)]
pub struct Leftover {
    pub records: Vec<Record>,
    /// Records that did not check out (a torn tail) and were skipped.
    pub torn: usize,
    files: Vec<PathBuf>,
    /// For a journal of another instance ([`Journal::orphans`]): its lock, held until removed.
    lock: Option<File>,
}

impl Leftover {
    /// Removes the files the records came from: call once every record is committed (or set
    /// aside).
    pub fn remove(self) {
        for f in self.files {
            if let Err(e) = std::fs::remove_file(&f)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(file = %f.display(), error = %e, "Could not remove a replayed poll journal segment");
            }
        }
    }
}

/// The journal (or none, for a store that does not outlive the process).
pub struct Journal {
    /// `<dir>/<name>`: segments are `<base>.<n>`.
    base: PathBuf,
    state: Option<Mutex<State>>,
    /// `<base>.lock`, locked while this journal is in use (a cluster member's, see
    /// [`Journal::open_locked`]).
    _lock: Option<File>,
}

struct State {
    file: File,
    segment: u64,
    size: u64,
    /// Answers not yet committed, per segment (the current one and older ones).
    open: HashMap<u64, usize>,
    /// Whether the last append failed (logged once per run of failures).
    failing: bool,
    /// The current segment's file was removed ([`Journal::close`]): the next append makes it
    /// again.
    removed: bool,
}

impl Journal {
    /// No journal: appends do nothing.
    pub fn disabled() -> Journal {
        Journal {
            base: PathBuf::new(),
            state: None,
            _lock: None,
        }
    }

    /// Opens the journal `name` in `dir` (created if missing) and reads what earlier runs left.
    ///
    /// # Errors
    /// The directory or a segment cannot be created, listed or read.
    pub fn open(dir: &Path, name: &str) -> io::Result<(Journal, Leftover)> {
        std::fs::create_dir_all(dir)?;
        let (leftover, segment) = read_leftover(dir, name)?;
        let base = dir.join(name);
        let file = open_segment(&base, segment)?;
        Ok((
            Journal {
                base,
                state: Some(Mutex::new(State {
                    file,
                    segment,
                    size: 0,
                    open: HashMap::new(),
                    failing: false,
                    removed: false,
                })),
                _lock: None,
            },
            leftover,
        ))
    }

    /// [`Self::open`] for one member of a cluster, whose journal is `<name>` among those of the
    /// others (`<prefix>-<member>`, several may share a directory): locked (`<name>.lock`) while
    /// in use, so [`Self::orphans`] can tell a dead member's journal from a live one's. Waits up
    /// to 10 s for the lock (another member may be replaying this journal).
    pub fn open_locked(dir: &Path, name: &str) -> io::Result<(Journal, Leftover)> {
        std::fs::create_dir_all(dir)?;
        let lock = lock_file(dir, name)?;
        let started = std::time::Instant::now();
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock)
                    if started.elapsed() < std::time::Duration::from_secs(10) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(io::Error::other(format!(
                        "the poll journal {} is in use by another relay: give each relay on this \
                         host its own cluster.id",
                        dir.join(name).display()
                    )));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
        }
        let (mut journal, leftover) = Self::open(dir, name)?;
        journal._lock = Some(lock);
        Ok((journal, leftover))
    }

    /// The journals of members that died (their lock is free) among the journals `<prefix>-*`
    /// in `dir`, but `own`: each locked and read, to be replayed and removed by this member.
    pub fn orphans(dir: &Path, prefix: &str, own: &str) -> io::Result<Vec<Leftover>> {
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(found);
        };
        for entry in entries {
            let file_name = entry?.file_name();
            let Some(name) = file_name
                .to_str()
                .and_then(|f| f.strip_suffix(".lock"))
                .filter(|n| n.starts_with(&format!("{prefix}-")) && *n != own)
            else {
                continue;
            };
            let lock = lock_file(dir, name)?;
            if lock.try_lock().is_err() {
                continue;
            }
            let (mut leftover, _) = read_leftover(dir, name)?;
            leftover.files.push(dir.join(format!("{name}.lock")));
            leftover.lock = Some(lock);
            found.push(leftover);
        }
        Ok(found)
    }

    /// Where the journal is (for logs); `None` when disabled.
    pub fn base(&self) -> Option<&Path> {
        self.state.as_ref().map(|_| self.base.as_path())
    }

    /// Appends an answer, in one write. `None` when the journal is disabled or the write failed
    /// (logged: the answer is committed all the same, only without the journal's cover).
    pub fn append(&self, header: &Header, body: &[u8]) -> Option<Ticket> {
        let state = self.state.as_ref()?;
        let record = encode(header, body);
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        if s.removed {
            // A poll that ended after the stop (its shutdown deadline passed): not into the
            // removed file, which nothing would read again.
            match open_segment(&self.base, s.segment) {
                Ok(file) => {
                    s.file = file;
                    s.size = 0;
                    s.removed = false;
                }
                Err(e) => {
                    crate::instrument::poll_journal_error();
                    tracing::error!(file = %self.base.display(), error = %e, "Cannot write the poll journal");
                    return None;
                }
            }
        }
        if let Err(e) = s.file.write_all(&record) {
            crate::instrument::poll_journal_error();
            if !s.failing {
                tracing::error!(file = %self.base.display(), error = %e,
                    "Cannot write the poll journal: polled answers are not covered against a crash until it works again");
            }
            s.failing = true;
            // A partial record would hide those after it: cut it off (best effort).
            let size = s.size;
            let _ = s.file.set_len(size);
            return None;
        }
        if s.failing {
            tracing::info!(file = %self.base.display(), "Writing the poll journal again");
            s.failing = false;
        }
        s.size += record.len() as u64;
        let segment = s.segment;
        *s.open.entry(segment).or_default() += 1;
        if s.size >= SEGMENT_BYTES {
            match open_segment(&self.base, segment + 1) {
                Ok(file) => {
                    s.file = file;
                    s.segment = segment + 1;
                    s.size = 0;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot start a new poll journal segment; appending to the current one");
                }
            }
        }
        Some(Ticket { segment })
    }

    /// The answer of `ticket` is committed: trims what no longer needs replaying.
    pub fn done(&self, ticket: Ticket) {
        let Some(state) = self.state.as_ref() else {
            return;
        };
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        let left = match s.open.get_mut(&ticket.segment) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => return,
        };
        if left > 0 {
            return;
        }
        s.open.remove(&ticket.segment);
        if ticket.segment == s.segment {
            // Everything in the current segment is committed: empty it. (Appends go to the end,
            // which is then the start.)
            if let Err(e) = s.file.set_len(0) {
                tracing::warn!(error = %e, "Cannot trim the poll journal");
            } else {
                s.size = 0;
            }
        } else if let Err(e) = std::fs::remove_file(segment_path(&self.base, ticket.segment)) {
            tracing::warn!(error = %e, "Cannot remove a poll journal segment");
        }
    }

    /// Sets an answer the store refused for good aside in `<name>.rejected`; returns that file.
    pub fn reject(&self, header: &Header, body: &[u8]) -> io::Result<PathBuf> {
        let mut path = self.base.clone().into_os_string();
        path.push(".rejected");
        let path = PathBuf::from(path);
        append_only()
            .open(&path)?
            .write_all(&encode(header, body))?;
        Ok(path)
    }

    /// At a clean stop: removes the current segment if every answer in it was committed.
    pub fn close(&self) {
        let Some(state) = self.state.as_ref() else {
            return;
        };
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        if s.open.is_empty() && !s.removed {
            let _ = std::fs::remove_file(segment_path(&self.base, s.segment));
            s.removed = true;
        }
    }
}

/// Where the journal of the store at `store_url` lives: its directory and name. The name is
/// derived from the store's URL (without password or parameters), so a journal is only ever
/// replayed into the database it was written for. The directory is `journal_dir` when given,
/// else the SQLite database's own directory, else (PostgreSQL) the working directory. `None` for
/// a database that does not outlive the process (`sqlite::memory:`).
pub fn location(store_url: &str, journal_dir: Option<&Path>) -> Option<(PathBuf, String)> {
    if store_url.contains(":memory:") || store_url.contains("mode=memory") {
        return None;
    }
    let base = store_url.split('?').next().unwrap_or(store_url);
    let identity = config::redact::database_url(base);
    let name = format!("ccrelay-polls-{:016x}", fnv1a(&[identity.as_bytes()]));
    let dir = match journal_dir {
        Some(d) => d.to_owned(),
        None => base
            .strip_prefix("sqlite://")
            .or_else(|| base.strip_prefix("sqlite:"))
            .and_then(|path| Path::new(path).parent())
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_owned),
    };
    Some((dir, name))
}

/// What the journal `name` in `dir` holds, and the number its next segment takes.
fn read_leftover(dir: &Path, name: &str) -> io::Result<(Leftover, u64)> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(n) = file_name
            .to_str()
            .and_then(|f| f.strip_prefix(name))
            .and_then(|f| f.strip_prefix('.'))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push((n, entry.path()));
    }
    segments.sort();
    let mut leftover = Leftover::default();
    for (_, path) in &segments {
        let bytes = std::fs::read(path)?;
        let (records, torn) = parse(&bytes);
        if torn > 0 {
            tracing::warn!(file = %path.display(), bytes = torn,
                "Poll journal segment ends in a torn record (a write cut short); its tail is skipped");
            leftover.torn += 1;
        }
        leftover.records.extend(records);
        leftover.files.push(path.clone());
    }
    let next = segments.last().map_or(0, |(n, _)| n + 1);
    Ok((leftover, next))
}

/// `<dir>/<name>.lock`, opened (created if missing).
fn lock_file(dir: &Path, name: &str) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!("{name}.lock")))
}

fn segment_path(base: &Path, n: u64) -> PathBuf {
    let mut p = base.as_os_str().to_owned();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

fn open_segment(base: &Path, n: u64) -> io::Result<File> {
    append_only().open(segment_path(base, n))
}

/// Options of a journal file: appended to, created readable by its owner only (it holds
/// customers' messages).
fn append_only() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o
}

/// FNV-1a, 64 bits.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn encode(header: &Header, body: &[u8]) -> Vec<u8> {
    // A struct of strings and an integer always serialises.
    let h = serde_json::to_vec(header).unwrap_or_default();
    let mut out = Vec::with_capacity(PREFIX_BYTES + h.len() + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&u32::try_from(h.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&fnv1a(&[&h, body]).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(body);
    out
}

/// The records in `bytes`, up to the first that does not check out, and how many bytes were
/// left unread after it (0 when the segment ends cleanly).
fn parse(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match parse_one(&bytes[at..]) {
            Some((record, len)) => {
                records.push(record);
                at += len;
            }
            None => return (records, bytes.len() - at),
        }
    }
    (records, 0)
}

fn parse_one(b: &[u8]) -> Option<(Record, usize)> {
    let prefix = b.get(..PREFIX_BYTES)?;
    if &prefix[..4] != MAGIC {
        return None;
    }
    let h_len = u32::from_le_bytes(prefix[4..8].try_into().ok()?) as usize;
    let b_len = u32::from_le_bytes(prefix[8..12].try_into().ok()?) as usize;
    let sum = u64::from_le_bytes(prefix[12..20].try_into().ok()?);
    let h = b.get(PREFIX_BYTES..PREFIX_BYTES.checked_add(h_len)?)?;
    let end = PREFIX_BYTES.checked_add(h_len)?.checked_add(b_len)?;
    let body = b.get(PREFIX_BYTES + h_len..end)?;
    if fnv1a(&[h, body]) != sum {
        return None;
    }
    let header = serde_json::from_slice(h).ok()?;
    Some((
        Record {
            header,
            body: body.to_vec(),
        },
        end,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str) -> Header {
        Header {
            tenant: "acme".into(),
            user: user.into(),
            session: format!("s-{user}"),
            channel: "ch".into(),
            state: "active".into(),
            at: 1_700_000_000_000_000,
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn uncommitted_answers_are_read_back_by_the_next_run_and_committed_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (j, left) = Journal::open(dir.path(), "polls").unwrap();
        assert!(left.records.is_empty());
        let a = j.append(&header("a"), br#"{"a":1}"#).unwrap();
        let _b = j.append(&header("b"), b"{\"b\":\n2}").unwrap();
        j.done(a);
        // A crash: `_b` is never done. What was written is in the file.
        drop(j);
        let (j2, left) = Journal::open(dir.path(), "polls").unwrap();
        assert_eq!(left.torn, 0);
        // `a` was committed, but the segment still held `b`: both are read back (replaying `a`
        // changes nothing).
        let users: Vec<&str> = left
            .records
            .iter()
            .map(|r| r.header.user.as_str())
            .collect();
        assert_eq!(users, ["a", "b"]);
        assert_eq!(left.records[1].body, b"{\"b\":\n2}");
        left.remove();
        let t = j2.append(&header("c"), b"{}").unwrap();
        j2.done(t);
        j2.close();
        assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
        let (_, left) = Journal::open(dir.path(), "polls").unwrap();
        assert!(left.records.is_empty());
    }

    #[test]
    fn an_answer_after_the_close_is_still_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), "polls").unwrap();
        j.close();
        assert!(files(dir.path()).is_empty());
        // A poll that outlived the shutdown deadline.
        let _late = j.append(&header("late"), b"{}").unwrap();
        j.close();
        let (_, left) = Journal::open(dir.path(), "polls").unwrap();
        let users: Vec<&str> = left
            .records
            .iter()
            .map(|r| r.header.user.as_str())
            .collect();
        assert_eq!(users, ["late"]);
    }

    #[test]
    fn a_segment_is_emptied_once_all_its_answers_are_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), "polls").unwrap();
        let a = j.append(&header("a"), b"{}").unwrap();
        let b = j.append(&header("b"), b"{}").unwrap();
        j.done(b);
        let len = |j: &Journal| std::fs::metadata(segment_path(&j.base, 0)).unwrap().len();
        assert!(len(&j) > 0);
        j.done(a);
        assert_eq!(len(&j), 0);
        let c = j.append(&header("c"), b"{}").unwrap();
        drop(c);
        let (_, left) = Journal::open(dir.path(), "polls").unwrap();
        let users: Vec<&str> = left
            .records
            .iter()
            .map(|r| r.header.user.as_str())
            .collect();
        assert_eq!(users, ["c"]);
    }

    #[test]
    fn full_segments_are_removed_once_committed_and_the_rest_replayed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), "polls").unwrap();
        let body = vec![b'x'; 300_000];
        let tickets: Vec<Ticket> = (0..8)
            .map(|i| j.append(&header(&format!("u{i}")), &body).unwrap())
            .collect();
        assert!(files(dir.path()).len() >= 3, "{:?}", files(dir.path()));
        // Commit all but the last two.
        let mut tickets = tickets.into_iter();
        for t in tickets.by_ref().take(6) {
            j.done(t);
        }
        let rest: Vec<Ticket> = tickets.collect();
        drop(rest);
        let (_, left) = Journal::open(dir.path(), "polls").unwrap();
        let users: Vec<&str> = left
            .records
            .iter()
            .map(|r| r.header.user.as_str())
            .collect();
        assert!(users.ends_with(&["u6", "u7"]), "{users:?}");
        assert!(users.len() <= 4, "committed segments are gone: {users:?}");
    }

    #[test]
    fn a_torn_tail_is_skipped_and_the_records_before_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), "polls").unwrap();
        let _a = j.append(&header("a"), b"{\"x\":1}").unwrap();
        let _b = j.append(&header("b"), b"{\"x\":2}").unwrap();
        drop(j);
        let path = segment_path(&dir.path().join("polls"), 0);
        let len = std::fs::metadata(&path).unwrap().len();
        for cut in [1, 5, 25] {
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(len - cut).unwrap();
            let (records, torn) = parse(&std::fs::read(&path).unwrap());
            assert_eq!(records.len(), 1, "cut {cut}");
            assert!(torn > 0);
        }
        // A flipped byte in the body fails the checksum.
        let mut bytes = encode(&header("c"), b"{\"x\":3}");
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        assert_eq!(parse(&bytes).0.len(), 0);
        let (j, left) = Journal::open(dir.path(), "polls").unwrap();
        assert_eq!((left.records.len(), left.torn), (1, 1));
        // The next run writes a segment of its own, after the torn one.
        let _c = j.append(&header("c"), b"{}").unwrap();
        assert!(files(dir.path()).contains(&"polls.1".to_owned()));
    }

    #[test]
    fn the_journal_lives_beside_a_sqlite_database_and_is_named_after_the_store() {
        let (dir, name) = location("sqlite:///var/lib/ccrelay/ccrelay.db", None).unwrap();
        assert_eq!(dir, Path::new("/var/lib/ccrelay"));
        assert!(name.starts_with("ccrelay-polls-"), "{name}");
        let (dir, same) = location(
            "sqlite:///var/lib/ccrelay/ccrelay.db?max_page_count=9",
            None,
        )
        .unwrap();
        assert_eq!(
            (dir.as_path(), &same),
            (Path::new("/var/lib/ccrelay"), &name)
        );
        assert_eq!(
            location("sqlite://ccrelay.db", None).unwrap().0,
            Path::new(".")
        );
        let (dir, pg) = location("postgres://relay:secret@db/ccrelay", None).unwrap();
        assert_eq!(dir, Path::new("."));
        // The password is not part of the name: rotating it keeps the journal.
        let (_, pg2) = location("postgres://relay:other@db/ccrelay?sslmode=require", None).unwrap();
        assert_eq!(pg, pg2);
        assert_ne!(pg, location("postgres://relay@db/other", None).unwrap().1);
        let (dir, _) = location("postgres://db/x", Some(Path::new("/srv/j"))).unwrap();
        assert_eq!(dir, Path::new("/srv/j"));
        assert!(location("sqlite::memory:", None).is_none());
    }

    #[cfg(unix)]
    #[test]
    fn journal_files_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), "polls").unwrap();
        let _t = j.append(&header("a"), b"{}").unwrap();
        let rejected = j.reject(&header("b"), b"{}").unwrap();
        for f in [segment_path(&j.base, 0), rejected] {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{}: {mode:o}", f.display());
        }
    }

    #[test]
    fn rejected_answers_are_set_aside_readable() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), "polls").unwrap();
        let path = j.reject(&header("a"), b"{\"bad\":true}").unwrap();
        let (records, torn) = parse(&std::fs::read(path).unwrap());
        assert_eq!((records.len(), torn), (1, 0));
        assert_eq!(records[0].body, b"{\"bad\":true}");
    }
}
