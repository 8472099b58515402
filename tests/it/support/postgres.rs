//! A fresh PostgreSQL database per test, on a server the harness makes sure exists.
//!
//! Finding or provisioning the server is [`pg_provision`]'s job, shared with the store's unit
//! tests: `CCRELAY_TEST_PG_URL` when set, else a server on 127.0.0.1:5432 (or
//! `CCRELAY_TEST_PG_PORT`), else a local Debian cluster it starts, or installs with apt-get when
//! running as root, with a `ccrelay_test` role it creates.

use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection, PgConnection};

use super::{init_tracing, test_deps_dir};

use devkit::pg_provision;

use pg_provision::redact;

/// A database of its own for one test.
#[derive(Debug)]
pub struct TestPg {
    /// Connection URL of the fresh database.
    pub url: String,
    /// Its name, `ccrelay_it_<random>`.
    pub name: String,
    /// Drops the database when dropped.
    pub guard: DropDatabase,
}

/// Drops a test database (best effort: errors are ignored) when dropped.
#[derive(Debug)]
pub struct DropDatabase {
    admin_url: String,
    name: String,
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Dropping may happen inside a runtime, which cannot block on another future: use a thread
        // with its own runtime, and wait for it so the database is gone when the guard is.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime
                .block_on(async {
                    tokio::time::timeout(Duration::from_secs(15), drop_database(&admin_url, &name))
                        .await
                })
                .ok()
        })
        .join();
    }
}

async fn drop_database(admin_url: &str, name: &str) -> Result<(), sqlx::Error> {
    let mut admin = PgConnection::connect(admin_url).await?;
    let forced = sqlx::query(AssertSqlSafe(format!(
        r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
    )))
    .execute(&mut admin)
    .await;
    if forced.is_err() {
        // PostgreSQL < 13 has no FORCE.
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(name)
        .execute(&mut admin)
        .await?;
        sqlx::query(AssertSqlSafe(format!(
            r#"DROP DATABASE IF EXISTS "{name}""#
        )))
        .execute(&mut admin)
        .await?;
    }
    admin.close().await
}

/// Creates an empty database `ccrelay_it_<random>` for one test.
///
/// # Panics
/// If no PostgreSQL server can be reached or provisioned; the message says what to install.
pub async fn fresh_pg_database() -> TestPg {
    init_tracing();
    let admin_url = admin_pg_url().await;
    let name = format!("ccrelay_it_{:016x}", rand::random::<u64>());
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", redact(&admin_url)));
    sqlx::query(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
    let _ = admin.close().await;
    let mut url = url::Url::parse(&admin_url).expect("the admin URL was parsed when checked");
    url.set_path(&format!("/{name}"));
    TestPg {
        url: url.into(),
        name: name.clone(),
        guard: DropDatabase { admin_url, name },
    }
}

/// The admin URL (a role that can create databases), provisioning a server if need be (see
/// [`pg_provision`]). Worked out once per test binary.
///
/// # Panics
/// If no server can be reached or provisioned.
pub async fn admin_pg_url() -> String {
    pg_provision::admin_pg_url(&test_deps_dir())
        .await
        .unwrap_or_else(|e| panic!("the tests need PostgreSQL: {e}"))
}
