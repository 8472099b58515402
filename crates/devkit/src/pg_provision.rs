//! Finds, or provisions, a PostgreSQL server for the tests, and returns an admin URL (a role that
//! may create databases).
//!
//! One implementation shared by everything that needs a PostgreSQL server to test against: the
//! store crate's tests, the integration tests (`tests/it/support/postgres.rs`) and the S2
//! benchmark. It is development tooling (it may run `apt-get` and `pg_ctlcluster`), so it lives in
//! this crate, which `ccrelay run` does not link.
//!
//! The admin URL is `CCRELAY_TEST_PG_URL` when set (and then used as is). Otherwise the tests try
//! `postgres://postgres@127.0.0.1:5432/postgres` (a trust-auth server, as on a developer's machine
//! or in a CI service container), then the `ccrelay_test` role they may have created before; the
//! port is 5432 unless `CCRELAY_TEST_PG_PORT` says otherwise. If neither answers, they provision a
//! server, holding a lock file so that parallel test processes do it once:
//!
//! 1. start the Debian cluster if one is installed (`pg_ctlcluster <ver> <name> start`), else
//!    install `postgresql` with apt-get (as root), which creates and starts a cluster;
//! 2. create (or reset) a `ccrelay_test` role with a password and `CREATEDB`, connecting as the
//!    `postgres` OS user over the local socket (peer auth, which Debian allows by default).
//!
//! Why a role of our own: Debian's `pg_hba.conf` wants a password over TCP. Adding a trust line or
//! setting the `postgres` superuser's password would change the machine's security for everyone
//! and could overwrite a password someone relies on; a dedicated role that can only create
//! databases changes nothing else, and works with the stock `pg_hba.conf`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio::sync::OnceCell;

/// The environment variable naming the admin URL (a role that may create databases).
pub const PG_URL_ENV: &str = "CCRELAY_TEST_PG_URL";
/// The environment variable naming the port to try before provisioning (default 5432).
pub const PG_PORT_ENV: &str = "CCRELAY_TEST_PG_PORT";
const DEFAULT_PORT: u16 = 5432;
/// The role the tests create when the `postgres` role cannot log in over TCP.
const TEST_ROLE: &str = "ccrelay_test";
const TEST_ROLE_PASSWORD: &str = "ccrelay_test";

/// The admin URL (a role that can create databases), provisioning a server if need be, holding
/// `<lock_dir>/postgres.lock` while provisioning.
///
/// Worked out once per process: later calls return the first call's outcome (an error too, so
/// that a failed install is not retried by every test), whatever their `lock_dir`. Only the URL is
/// cached, nothing bound to the caller's runtime, so any `#[tokio::test]` may call it.
///
/// # Errors
/// What failed, followed by what to do about it.
pub async fn admin_pg_url(lock_dir: &Path) -> Result<String, String> {
    static ADMIN_URL: OnceCell<Result<String, String>> = OnceCell::const_new();
    ADMIN_URL
        .get_or_init(|| async {
            find_or_provision(lock_dir)
                .await
                .map_err(|e| format!("{e}\n{}", manual_hint()))
        })
        .await
        .clone()
}

fn manual_hint() -> String {
    format!(
        "Either set {PG_URL_ENV} to the URL of a role allowed to create databases \
         (default postgres://postgres@127.0.0.1:{DEFAULT_PORT}/postgres), or run the tests as \
         root on Debian/Ubuntu so they can `apt-get install postgresql` and start it, or install \
         PostgreSQL yourself (`apt-get install postgresql`)."
    )
}

fn candidate_urls(port: u16) -> [String; 2] {
    [
        format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        format!("postgres://{TEST_ROLE}:{TEST_ROLE_PASSWORD}@127.0.0.1:{port}/postgres"),
    ]
}

/// The port to try first: `CCRELAY_TEST_PG_PORT`, else 5432.
fn first_port() -> Result<u16, String> {
    match std::env::var(PG_PORT_ENV) {
        Ok(port) if !port.is_empty() => port
            .parse()
            .map_err(|_| format!("{PG_PORT_ENV}={port} is not a port number")),
        _ => Ok(DEFAULT_PORT),
    }
}

async fn find_or_provision(lock_dir: &Path) -> Result<String, String> {
    if let Some(url) = std::env::var(PG_URL_ENV).ok().filter(|u| !u.is_empty()) {
        return answers(&url)
            .await
            .map(|()| url.clone())
            .map_err(|e| format!("{PG_URL_ENV}={} does not answer: {e}", redact(&url)));
    }
    let first_port = first_port()?;
    if let Some(url) = first_answering(&candidate_urls(first_port)).await {
        return Ok(url);
    }
    let _lock = lock(lock_dir.join("postgres.lock")).await?;
    // Another test process may have provisioned it while we waited.
    if let Some(url) = first_answering(&candidate_urls(first_port)).await {
        return Ok(url);
    }
    let port = tokio::task::spawn_blocking(move || start_local_cluster(first_port))
        .await
        .map_err(|e| e.to_string())??;
    if let Some(url) = first_answering(&candidate_urls(port)).await {
        return Ok(url);
    }
    tokio::task::spawn_blocking(move || create_test_role(port))
        .await
        .map_err(|e| e.to_string())??;
    let role_url = candidate_urls(port)[1].clone();
    answers(&role_url)
        .await
        .map(|()| role_url.clone())
        .map_err(|e| {
            format!(
                "created role {TEST_ROLE} but {} does not answer: {e} (check pg_hba.conf)",
                redact(&role_url)
            )
        })
}

async fn first_answering(urls: &[String]) -> Option<String> {
    for url in urls {
        if answers(url).await.is_ok() {
            return Some(url.clone());
        }
    }
    None
}

/// Connects and runs `SELECT 1`.
async fn answers(url: &str) -> Result<(), String> {
    let check = async {
        let mut conn = PgConnection::connect(url).await?;
        sqlx::query("SELECT 1").execute(&mut conn).await?;
        conn.close().await
    };
    match tokio::time::timeout(Duration::from_secs(10), check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

/// Takes an exclusive lock on `path` (created if need be); released when the file is dropped.
async fn lock(path: PathBuf) -> Result<File, String> {
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        file.lock()
            .map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
        Ok(file)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A Debian cluster, as `pg_lsclusters` lists it.
#[derive(Debug)]
struct Cluster {
    version: String,
    name: String,
    port: u16,
    online: bool,
}

fn list_clusters() -> Vec<Cluster> {
    let Ok(out) = Command::new("pg_lsclusters").arg("--no-header").output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            Some(Cluster {
                version: (*cols.first()?).to_owned(),
                name: (*cols.get(1)?).to_owned(),
                port: cols.get(2)?.parse().ok()?,
                online: cols.get(3)?.starts_with("online"),
            })
        })
        .collect()
}

/// Makes sure a local cluster runs, installing PostgreSQL if need be; returns its port.
/// `tried_port` is only for the message when nothing can be done.
fn start_local_cluster(tried_port: u16) -> Result<u16, String> {
    let mut clusters = list_clusters();
    if clusters.is_empty() {
        if !is_root() || !has_program("apt-get") {
            return Err(format!(
                "nothing answers at postgres://postgres@127.0.0.1:{tried_port}/postgres, no \
                 local cluster is installed, and the tests cannot install one (they need root \
                 and apt-get)"
            ));
        }
        eprintln!("The tests need PostgreSQL: installing it with apt-get");
        apt_get_install(&["postgresql"])?;
        clusters = list_clusters();
        if clusters.is_empty() {
            // The package normally creates `main`; a policy may have stopped it.
            let version = installed_server_versions().pop().ok_or(
                "apt-get installed postgresql but no server version is in /usr/lib/postgresql",
            )?;
            run("pg_createcluster", &[&version, "main"])?;
            clusters = list_clusters();
        }
    }
    // Prefer one already running, then the newest.
    clusters.sort_by_key(|c| (c.online, c.version.parse::<u32>().unwrap_or(0)));
    let cluster = clusters
        .pop()
        .ok_or("no PostgreSQL cluster exists after installing postgresql")?;
    if !cluster.online {
        eprintln!(
            "The tests need PostgreSQL: starting cluster {} {}",
            cluster.version, cluster.name
        );
        run("pg_ctlcluster", &[&cluster.version, &cluster.name, "start"])?;
    }
    Ok(cluster.port)
}

/// Versions under /usr/lib/postgresql, oldest first.
fn installed_server_versions() -> Vec<String> {
    let mut versions: Vec<String> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("bin/postgres").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    versions.sort_by_key(|v| v.parse::<u32>().unwrap_or(0));
    versions
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Creates or resets the test role, as the `postgres` OS user over the local socket.
fn create_test_role(port: u16) -> Result<(), String> {
    if !is_root() {
        return Err(format!(
            "the `postgres` role cannot log in over TCP and only root can create the \
             {TEST_ROLE} role; as the postgres user run: CREATE ROLE {TEST_ROLE} LOGIN CREATEDB \
             PASSWORD '{TEST_ROLE_PASSWORD}'"
        ));
    }
    let sql = format!(
        "DO $$ BEGIN\n\
         IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{TEST_ROLE}') THEN\n\
           ALTER ROLE {TEST_ROLE} WITH LOGIN CREATEDB PASSWORD '{TEST_ROLE_PASSWORD}';\n\
         ELSE\n\
           CREATE ROLE {TEST_ROLE} WITH LOGIN CREATEDB PASSWORD '{TEST_ROLE_PASSWORD}';\n\
         END IF;\n\
         END $$;\n"
    );
    let port = port.to_string();
    let psql = [
        "psql",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-p",
        &port,
        "-d",
        "postgres",
    ];
    let mut command = if has_program("runuser") {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).args(psql);
        c
    } else {
        let mut c = Command::new("su");
        c.args(["postgres", "-s", "/bin/sh", "-c", &psql.join(" ")]);
        c
    };
    // The postgres user may not be allowed into the current directory.
    let mut child = command
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run psql as the postgres user: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(sql.as_bytes())
            .map_err(|e| format!("cannot write to psql: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("psql failed: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "cannot create role {TEST_ROLE}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether the tests run as root (`id -u` prints 0), and so may install system packages.
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn has_program(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", "command -v \"$1\"", "sh", program])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `apt-get install -y <packages>`; runs `apt-get update` and retries once if that fails.
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
            "`apt-get update` failed: {}",
            String::from_utf8_lossy(&update.stderr)
        ));
    }
    let out = apt(&install)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`apt-get install {}` failed: {}",
            packages.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.into()
        }
        Ok(u) => u.into(),
        Err(_) => "(unparsable URL)".to_owned(),
    }
}
