//! PostgreSQL over TLS: a private server with `ssl = on`, a certificate from a CA generated here
//! (with the `openssl` command), and a `pg_hba.conf` that accepts only `hostssl` connections.
//! `verify-full` with the right CA connects; a wrong CA or a host name the certificate does not
//! name is refused; `require` and the default `prefer` encrypt; plaintext is refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::private_pg::PrivatePg;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("the tests need the openssl command (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA: `<name>.crt`, `<name>.key` in `dir`.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    dir.join(format!("{name}.crt"))
}

/// `server.crt` / `server.key` for DNS name `localhost` only, signed by the CA `ca`.
fn make_server_cert(dir: &Path, ca: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
}

async fn connects(url: &str) -> Result<(), String> {
    match store::connect(url).await {
        Ok(store) => store.ping().await.map_err(|e| e.to_string()),
        Err(e) => Err(format!("{e:#}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_verifies_the_server() {
    let certs = tempfile::tempdir().unwrap();
    let good_ca = make_ca(certs.path(), "good-ca");
    let wrong_ca = make_ca(certs.path(), "wrong-ca");
    make_server_cert(certs.path(), "good-ca");
    let (crt, key) = (
        certs.path().join("server.crt"),
        certs.path().join("server.key"),
    );
    let pg = PrivatePg::start_configured(move |data| {
        std::fs::copy(&crt, data.join("server.crt")).unwrap();
        std::fs::copy(&key, data.join("server.key")).unwrap();
        std::fs::set_permissions(
            data.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        conf.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(data.join("postgresql.conf"), conf).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )
        .unwrap();
    })
    .await;
    let port = pg.port();
    let at = |host: &str, query: &str| format!("postgres://postgres@{host}:{port}/postgres{query}");
    let good = good_ca.display();
    let wrong = wrong_ca.display();

    // The right CA and the name in the certificate: connected, and the relay's own commands work.
    let verified = at(
        "localhost",
        &format!("?sslmode=verify-full&sslrootcert={good}"),
    );
    connects(&verified).await.unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ccrelay"))
        .arg("migrate")
        .env("CCRELAY_STORE__URL", &verified)
        .env_remove("CCRELAY_CONFIG")
        .current_dir(certs.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A CA that did not sign the server's certificate, or a host name it does not name: refused.
    let e = connects(&at(
        "localhost",
        &format!("?sslmode=verify-full&sslrootcert={wrong}"),
    ))
    .await
    .unwrap_err();
    assert!(e.contains("certificate"), "wrong CA: {e}");
    let e = connects(&at(
        "127.0.0.1",
        &format!("?sslmode=verify-full&sslrootcert={good}"),
    ))
    .await
    .unwrap_err();
    assert!(e.contains("certificate"), "wrong host name: {e}");
    let out = Command::new(env!("CARGO_BIN_EXE_ccrelay"))
        .arg("migrate")
        .env(
            "CCRELAY_STORE__URL",
            at(
                "localhost",
                &format!("?sslmode=verify-full&sslrootcert={wrong}"),
            ),
        )
        .env_remove("CCRELAY_CONFIG")
        .current_dir(certs.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("certificate"),
        "ccrelay migrate with the wrong CA: {err}"
    );

    // verify-ca checks the chain but not the name.
    connects(&at(
        "127.0.0.1",
        &format!("?sslmode=verify-ca&sslrootcert={good}"),
    ))
    .await
    .unwrap();
    // `require` and the default `prefer` encrypt (the server accepts nothing else).
    connects(&at("127.0.0.1", "?sslmode=require"))
        .await
        .unwrap();
    connects(&at("127.0.0.1", "")).await.unwrap();
    // Plaintext: refused by the hostssl-only pg_hba.conf.
    let e = connects(&at("127.0.0.1", "?sslmode=disable"))
        .await
        .unwrap_err();
    assert!(e.contains("pg_hba") || e.contains("encryption"), "{e}");
}
