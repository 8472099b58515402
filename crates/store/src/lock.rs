//! One relay per SQLite database: the instance lock ([`instance_lock`]).
//!
//! SQLite keeps one relay (docs/HA.md): two relays on one file would poll the same sessions and
//! consume the same JetStream messages, each believing it is alone. So a relay on SQLite takes an
//! exclusive, non-blocking advisory lock (`flock` on Unix) on `<database>.lock` before it opens the
//! store, and holds it for its lifetime; a second relay finds it held and refuses to start, naming
//! the holder, whose description (pid, host, start time) the lock file holds.
//!
//! The lock belongs to the open file, not to the file on disk: it goes when the process does, even
//! by SIGKILL, and nothing is left to clean up. The file itself stays (deleting it on exit would let
//! a relay that opened it just before lock an unlinked file while a third locks a new one). A
//! database is known by its real path: `relay.db`, `./relay.db`, an absolute path and a symbolic
//! link to it all lock the same file. PostgreSQL needs no such lock: several relays on one
//! database are a cluster (docs/HA.md).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::StoreError;

/// The most of a holder's description read back from a lock file.
const MAX_HOLDER_BYTES: u64 = 4096;
/// How long a relay refused waits for the holder's description, which the holder writes just
/// after it took the lock.
const HOLDER_WAIT: Duration = Duration::from_millis(500);

/// Why [`instance_lock`] refused.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the database's lock: a relay is running on it.
    #[error(
        "the SQLite store {} is in use by another relay ({holder}); SQLite keeps one relay: \
         for several relays use PostgreSQL (docs/HA.md)",
        database.display()
    )]
    Held {
        /// The database file.
        database: PathBuf,
        /// What the holder wrote in the lock file (`holder unknown` when it wrote nothing).
        holder: String,
    },
    /// The lock file could not be created, written or locked.
    #[error("cannot lock the SQLite store {}: {} ({source})", database.display(), lock.display())]
    Io {
        database: PathBuf,
        lock: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `store.url` is not a SQLite URL the store could open.
    #[error("store.url: {0}")]
    Url(#[source] StoreError),
}

/// The lock of a SQLite database, held while this value lives (see the module docs).
#[derive(Debug)]
pub struct InstanceLock {
    /// The locked file: closing it releases the lock.
    _file: File,
    /// Its path, `<database>.lock`.
    path: PathBuf,
    /// The database it stands for, by its real path.
    database: PathBuf,
}

impl InstanceLock {
    /// The lock file, `<database>.lock`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database file, by its real path.
    pub fn database(&self) -> &Path {
        &self.database
    }
}

/// Takes the instance lock of the store at `url` for `holder` (a description of this process
/// for whoever is refused: pid, host, start time), and writes `holder` into the lock file.
/// `Ok(None)` for a store that needs none: PostgreSQL (a cluster), and a SQLite database private to
/// its store (`sqlite::memory:`).
///
/// # Errors
/// [`LockError::Held`] when another process holds the lock, naming it; [`LockError::Io`] when the
/// lock file cannot be created or locked (its directory missing, a file system without locks);
/// [`LockError::Url`] for a malformed SQLite URL.
pub fn instance_lock(url: &str, holder: &str) -> Result<Option<InstanceLock>, LockError> {
    if !url.starts_with("sqlite:") {
        return Ok(None);
    }
    let Some(file) = crate::sqlite::database_file(url).map_err(LockError::Url)? else {
        return Ok(None);
    };
    let database = real_path(&file);
    let path = lock_path(&database);
    let io_error = |source| LockError::Io {
        database: database.clone(),
        lock: path.clone(),
        source,
    };
    // Not truncated on open: the text is the holder's until the lock is ours.
    let mut lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(LockError::Held {
                holder: read_holder(&mut lock),
                database,
            });
        }
        Err(TryLockError::Error(e)) => return Err(io_error(e)),
    }
    lock.set_len(0)
        .and_then(|()| lock.seek(SeekFrom::Start(0)))
        .and_then(|_| lock.write_all(holder.as_bytes()))
        .map_err(io_error)?;
    Ok(Some(InstanceLock {
        _file: lock,
        path,
        database,
    }))
}

/// `file` with its directory's symbolic links resolved, and its own if it exists: the same
/// database under any name gives the same path. As given when its directory does not resolve
/// (creating the lock file then fails, naming it).
fn real_path(file: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(file) {
        return real;
    }
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match (std::fs::canonicalize(dir), file.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => file.to_owned(),
    }
}

/// `<database>.lock`.
fn lock_path(database: &Path) -> PathBuf {
    let mut p = database.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// What the holder of `lock` wrote in it, waiting up to [`HOLDER_WAIT`] for a holder that has
/// only just taken the lock.
fn read_holder(lock: &mut File) -> String {
    let deadline = std::time::Instant::now() + HOLDER_WAIT;
    loop {
        let mut text = String::new();
        let read = lock
            .seek(SeekFrom::Start(0))
            .and_then(|_| lock.take(MAX_HOLDER_BYTES).read_to_string(&mut text));
        let text = text.trim();
        match read {
            Ok(_) if !text.is_empty() => return text.to_owned(),
            Ok(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(_) => return "holder unknown".to_owned(),
            Err(e) => return format!("holder unknown: cannot read its lock file: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(path: &Path) -> String {
        format!("sqlite://{}", path.display())
    }

    #[test]
    fn a_second_lock_on_one_database_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("relay.db");
        let first = instance_lock(
            &url(&db),
            "pid 1234 on host h, started 2026-01-01T00:00:00Z",
        )
        .unwrap()
        .expect("a SQLite file is locked");
        assert_eq!(
            first.path(),
            dir.path().canonicalize().unwrap().join("relay.db.lock")
        );

        let err = instance_lock(&url(&db), "pid 5678 on host h").unwrap_err();
        let LockError::Held { holder, database } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(holder, "pid 1234 on host h, started 2026-01-01T00:00:00Z");
        assert_eq!(database, first.database());
        assert_eq!(
            err.to_string(),
            format!(
                "the SQLite store {} is in use by another relay (pid 1234 on host h, started \
                 2026-01-01T00:00:00Z); SQLite keeps one relay: for several relays use PostgreSQL \
                 (docs/HA.md)",
                first.database().display()
            )
        );
    }

    #[test]
    fn the_lock_goes_with_its_holder_and_the_next_holder_replaces_the_description() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("relay.db");
        let first = instance_lock(&url(&db), "a long description of the first holder").unwrap();
        drop(first);
        let second = instance_lock(&url(&db), "second").unwrap().unwrap();
        assert_eq!(std::fs::read_to_string(second.path()).unwrap(), "second");
        let err = instance_lock(&url(&db), "third").unwrap_err();
        assert!(
            matches!(&err, LockError::Held { holder, .. } if holder == "second"),
            "{err:?}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn one_database_under_any_name_is_one_lock() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("relay.db");
        std::fs::write(&db, b"").unwrap();
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&db, &link).unwrap();
        let _held = instance_lock(&format!("sqlite:{}", db.display()), "first")
            .unwrap()
            .unwrap();
        let dotted = format!(
            "sqlite://{}/./relay.db?max_page_count=100&mode=rwc",
            dir.path().display()
        );
        for other in [url(&db), dotted, url(&link)] {
            let err = instance_lock(&other, "second").unwrap_err();
            assert!(matches!(err, LockError::Held { .. }), "{other}: {err:?}");
        }
        // Another database in the same directory is another lock.
        assert!(
            instance_lock(&url(&dir.path().join("other.db")), "x")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn memory_databases_and_postgresql_take_no_lock() {
        for u in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://?mode=memory",
            "postgres://relay@localhost/ccrelay",
            "postgresql://relay@localhost/ccrelay",
        ] {
            assert!(instance_lock(u, "x").unwrap().is_none(), "{u}");
        }
    }

    #[test]
    fn a_malformed_url_or_a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let bad = format!("sqlite://{}?nonsense=1", dir.path().join("a.db").display());
        assert!(matches!(instance_lock(&bad, "x"), Err(LockError::Url(_))));
        let missing = dir.path().join("no/such/dir/a.db");
        let err = instance_lock(&url(&missing), "x").unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("a.db.lock"), "{err}");
    }
}
