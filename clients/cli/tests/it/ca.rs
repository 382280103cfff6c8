//! `grantmesh ca`, run as the real binary: issuing is idempotent with
//! `--renew-within`, as the compose cluster's `certs` step relies on.

use std::path::Path;
use std::process::Command;

fn ca(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_grantmesh"))
        .arg("ca")
        .args(args)
        .env_remove("GRANTMESH_TLS_DIR")
        .output()
        .expect("grantmesh runs");
    assert!(
        output.status.success(),
        "grantmesh ca {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn issuing_again_keeps_a_certificate_that_fits_and_replaces_one_that_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let out = dir.path().join("tls");
    let (ca_dir_s, out_s) = (ca_dir.to_str().unwrap(), out.to_str().unwrap());
    ca(&["init", "--dir", ca_dir_s]);
    let issue = |names: &str, within: &str| {
        ca(&[
            "issue",
            "--dir",
            ca_dir_s,
            "--out",
            out_s,
            "--service",
            "registry",
            "--dns",
            names,
            "--ip",
            "127.0.0.1",
            "--renew-within",
            within,
        ])
    };
    let cert = out.join("registry.pem");
    let key = out.join("registry.key");

    let first = issue("registry-1,localhost", "30d");
    assert!(first.starts_with("issued"), "{first}");
    let (cert_1, key_1) = (read(&cert), read(&key));

    // The same request again: nothing is written, the files stay as they were.
    let again = issue("localhost,registry-1", "30d");
    assert!(again.starts_with("kept"), "{again}");
    assert_eq!((read(&cert), read(&key)), (cert_1.clone(), key_1.clone()));

    // Other names: issued anew.
    let renamed = issue("registry-1,registry-2,localhost", "30d");
    assert!(renamed.starts_with("issued"), "{renamed}");
    let cert_2 = read(&cert);
    assert_ne!(cert_2, cert_1);

    // About to expire (a 90-day leaf is within 100 days of its end): issued anew.
    let expiring = issue("registry-1,registry-2,localhost", "100d");
    assert!(expiring.starts_with("issued"), "{expiring}");
    assert_ne!(read(&cert), cert_2);

    // Signed by another CA (a CA made anew): issued anew.
    let other = dir.path().join("other-ca");
    ca(&["init", "--dir", other.to_str().unwrap()]);
    let by_other = ca(&[
        "issue",
        "--dir",
        other.to_str().unwrap(),
        "--out",
        out_s,
        "--service",
        "registry",
        "--dns",
        "registry-1,registry-2,localhost",
        "--ip",
        "127.0.0.1",
        "--renew-within",
        "30d",
    ]);
    assert!(by_other.starts_with("issued"), "{by_other}");
}
