//! The DuckDB shell, for the tests that read `ccrelay export`'s files back with a reader of
//! their own: PyPI's `duckdb-cli` wheel (the DuckDB Foundation's build of the `duckdb` command,
//! Parquet and JSON built in, nothing loaded from the network at run time), installed like
//! nats-server ([`crate::nats`]) into a cache directory. Only tests use it.
//!
//! Installing is blocking (it runs pip and downloads about 20 MB); call it from
//! `tokio::task::spawn_blocking` in async code.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::nats::pip_install_requirement;

/// The PyPI package of the DuckDB shell.
pub const DUCKDB_PACKAGE: &str = "duckdb-cli";
/// The version installed (and so the DuckDB the documented queries are checked with).
pub const DUCKDB_VERSION: &str = "1.5.6";
/// A `duckdb` binary to use instead of installing one.
pub const DUCKDB_ENV: &str = "CCRELAY_DUCKDB";

/// The `duckdb` binary: `$CCRELAY_DUCKDB`, else [`DUCKDB_VERSION`] under `cache_dir`,
/// installed there from PyPI first if it is not.
///
/// Safe to call from several processes at once: installs are serialised by a lock file in
/// `cache_dir` and happen in a temporary directory renamed into place.
///
/// # Errors
/// Nothing runs and none can be installed; the message says what failed.
pub fn ensure_duckdb(cache_dir: &Path) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(DUCKDB_ENV) {
        let path = PathBuf::from(path);
        return if runs(&path) {
            Ok(path)
        } else {
            Err(format!("{DUCKDB_ENV}={} does not run", path.display()))
        };
    }
    let final_dir = cache_dir.join(format!("duckdb-cli-{DUCKDB_VERSION}"));
    let binary = final_dir.join("duckdb_cli").join("duckdb");
    if runs(&binary) {
        return Ok(binary);
    }
    fs::create_dir_all(cache_dir)
        .map_err(|e| format!("cannot create {}: {e}", cache_dir.display()))?;
    let lock_path = cache_dir.join(".duckdb-install.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    // Someone else may have installed it while we waited for the lock.
    if runs(&binary) {
        return Ok(binary);
    }
    tracing::info!(version = DUCKDB_VERSION, dir = %cache_dir.display(), "Installing the DuckDB shell from PyPI");
    let staging = tempfile::Builder::new()
        .prefix(".duckdb-install-")
        .tempdir_in(cache_dir)
        .map_err(|e| format!("cannot create a directory in {}: {e}", cache_dir.display()))?;
    pip_install_requirement(
        staging.path(),
        &format!("{DUCKDB_PACKAGE}=={DUCKDB_VERSION}"),
    )?;
    let staged = staging.path().join("duckdb_cli").join("duckdb");
    fs::set_permissions(&staged, fs::Permissions::from_mode(0o755)).map_err(|e| {
        format!(
            "pip installed {DUCKDB_PACKAGE} but {}: {e}",
            staged.display()
        )
    })?;
    if !runs(&staged) {
        return Err(format!(
            "the installed {} does not run on this machine",
            staged.display()
        ));
    }
    if final_dir.exists() {
        // A broken leftover (the binary did not run, see above).
        fs::remove_dir_all(&final_dir)
            .map_err(|e| format!("cannot remove {}: {e}", final_dir.display()))?;
    }
    fs::rename(staging.path(), &final_dir)
        .map_err(|e| format!("cannot move the install into {}: {e}", final_dir.display()))?;
    drop(lock);
    Ok(binary)
}

/// Whether `duckdb --version` runs.
fn runs(binary: &Path) -> bool {
    binary.is_file()
        && Command::new(binary)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}
