//! How the client commands reach a mesh: TLS to `https://` registries and
//! instances, trusting the mesh CA; plaintext only to `http://` URLs, which
//! a plaintext (`--insecure`) mesh advertises.
//!
//! The CA comes from `GRANTMESH_CA`, else `GRANTMESH_TLS_DIR`'s `ca.pem`
//! (the directory the server roles read), else the one `grantmesh dev` made in
//! the data directory, so that commands against a local `grantmesh dev`
//! need no setting at all. Client commands present no certificate: a
//! researcher authenticates with a bearer token.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use grantmesh_discovery::parse_registry_list;
use grantmesh_discovery::tls::{TlsMaterial, TlsPaths, Transport};

/// The registry a command uses when told none: a local `grantmesh dev`.
pub const DEFAULT_REGISTRY: &str = "https://127.0.0.1:7000";

/// The folder `grantmesh dev` keeps its CA and certificates in, below its data directory.
pub const DEV_TLS_DIR: &str = "tls";

/// The data directory `grantmesh dev` uses when not told another.
pub fn default_data_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("GRANTMESH_DATA_DIR") {
        return Some(PathBuf::from(dir));
    }
    directories::ProjectDirs::from("", "", "grantmesh").map(|dirs| dirs.data_dir().to_owned())
}

/// The mesh CA a client trusts: `given`, else `GRANTMESH_CA`, else
/// `GRANTMESH_TLS_DIR/ca.pem`, else `grantmesh dev`'s.
fn ca_path(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_owned());
    }
    if let Some(path) = std::env::var_os("GRANTMESH_CA") {
        return Ok(PathBuf::from(path));
    }
    // The directory the server roles read (`GRANTMESH_TLS_DIR`) holds the CA too.
    if let Some(dir) = std::env::var_os("GRANTMESH_TLS_DIR") {
        return Ok(PathBuf::from(dir).join(grantmesh_discovery::tls::ca::CA_CERT));
    }
    let dev = default_data_dir().map(|dir| {
        dir.join(DEV_TLS_DIR)
            .join(grantmesh_discovery::tls::ca::CA_CERT)
    });
    match dev {
        Some(path) if path.exists() => Ok(path),
        _ => bail!(
            "talking to an https:// mesh needs its CA certificate: set GRANTMESH_CA=PATH \
             or GRANTMESH_TLS_DIR=DIR (`grantmesh ca init` writes DIR/ca.pem; `grantmesh dev` keeps one in its data directory), \
             or use http:// URLs for a mesh started with --insecure"
        ),
    }
}

/// The transport for these URLs: TLS when they are `https://`, plaintext
/// when they are `http://` (a mix is refused).
pub fn for_urls<'a>(
    urls: impl IntoIterator<Item = &'a str>,
    ca: Option<&Path>,
) -> anyhow::Result<Transport> {
    let (mut tls, mut plain) = (false, false);
    for url in urls {
        if url.starts_with("https://") {
            tls = true;
        } else {
            plain = true;
        }
    }
    match (tls, plain) {
        (true, true) => {
            bail!("mixing https:// and http:// registries: a mesh runs on TLS or without it")
        }
        (true, false) => {
            let ca = ca_path(ca)?;
            let material = TlsMaterial::load(TlsPaths {
                ca: ca.clone(),
                identity: None,
            })
            .with_context(|| format!("failed to read the mesh CA {}", ca.display()))?;
            Ok(Transport::Tls(material))
        }
        (false, _) => Ok(Transport::Insecure),
    }
}

/// The transport for a comma-separated registry list.
pub fn for_registries(registries: &str, ca: Option<&Path>) -> anyhow::Result<Transport> {
    let list = parse_registry_list(registries);
    for_urls(list.iter().map(String::as_str), ca)
}

/// `HOST:PORT` → `https://HOST:PORT`; URLs with a scheme are kept.
pub fn with_scheme(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("https://{addr}")
    }
}
