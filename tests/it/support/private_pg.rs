//! A PostgreSQL server of a test's own — its own data directory and port — so the test can stop
//! and restart it without disturbing the shared server the other tests use.
//!
//! Uses the binaries of the PostgreSQL that [`super::admin_pg_url`] makes sure is installed. As
//! root the server runs as the `postgres` user (PostgreSQL refuses to run as root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct PrivatePg {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    _dir: tempfile::TempDir,
}

impl PrivatePg {
    /// initdb + start; panics with the server's words if either fails.
    pub async fn start() -> PrivatePg {
        Self::start_configured(|_| {}).await
    }

    /// [`start`](Self::start), with `configure` given the data directory between initdb and the
    /// start (to edit `postgresql.conf`, `pg_hba.conf`, add certificates…). The files it leaves
    /// there are given to the server's user.
    pub async fn start_configured(configure: impl FnOnce(&Path) + Send + 'static) -> PrivatePg {
        // Provisions the package if the machine has none.
        let _ = super::admin_pg_url().await;
        tokio::task::spawn_blocking(move || Self::start_blocking(configure))
            .await
            .unwrap()
    }

    fn start_blocking(configure: impl FnOnce(&Path)) -> PrivatePg {
        let bin = newest_bin_dir().expect("PostgreSQL server binaries under /usr/lib/postgresql");
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("ccrelay-pg-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if as_postgres {
            let uid = id("-u");
            let gid = id("-g");
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
            std::os::unix::fs::chown(&data, Some(uid), Some(gid)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = PrivatePg {
            bin,
            data,
            port,
            as_postgres,
            _dir: dir,
        };
        let data = pg.data.display().to_string();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        configure(&pg.data);
        if as_postgres {
            let (uid, gid) = (id("-u"), id("-g"));
            for entry in std::fs::read_dir(&pg.data).unwrap() {
                let path = entry.unwrap().path();
                if path.is_file() {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
                }
            }
        }
        pg.start_server();
        pg
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub async fn stop(&self) {
        let data = self.data.display().to_string();
        let this = (self.bin.clone(), data, self.as_postgres);
        tokio::task::spawn_blocking(move || {
            run_in(
                &this.0,
                this.2,
                "pg_ctl",
                &["-D", &this.1, "-m", "fast", "-w", "stop"],
            )
        })
        .await
        .unwrap();
    }

    /// Starts it again on the same port and data.
    pub async fn restart(&self) {
        let (bin, data, port, as_pg) = (
            self.bin.clone(),
            self.data.clone(),
            self.port,
            self.as_postgres,
        );
        tokio::task::spawn_blocking(move || start_in(&bin, &data, port, as_pg))
            .await
            .unwrap();
    }

    fn start_server(&self) {
        start_in(&self.bin, &self.data, self.port, self.as_postgres)
    }

    fn run(&self, program: &str, args: &[&str]) {
        run_in(&self.bin, self.as_postgres, program, args)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        let _ = command(&self.bin, self.as_postgres, "pg_ctl")
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn start_in(bin: &Path, data: &Path, port: u16, as_postgres: bool) {
    let d = data.display().to_string();
    let log = data.join("server.log").display().to_string();
    let opts = format!(
        "-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    );
    run_in(
        bin,
        as_postgres,
        "pg_ctl",
        &["-D", &d, "-l", &log, "-o", &opts, "-w", "-t", "60", "start"],
    );
}

fn command(bin: &Path, as_postgres: bool, program: &str) -> Command {
    let path = bin.join(program);
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn run_in(bin: &Path, as_postgres: bool, program: &str, args: &[&str]) {
    let out = command(bin, as_postgres, program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn newest_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn is_root() -> bool {
    id_of(&["-u"]) == Some(0)
}

fn id(flag: &str) -> u32 {
    id_of(&[flag, "postgres"]).expect("a postgres user (installed with the server)")
}

fn id_of(args: &[&str]) -> Option<u32> {
    let out = Command::new("id").args(args).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}
