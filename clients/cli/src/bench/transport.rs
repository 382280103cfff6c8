//! How a bench's mesh is dialled: TLS with a throwaway CA, or plaintext.
//!
//! Every role refuses to start without `--tls-dir` or `--insecure`, so each
//! bench asks this module for the flags of its children and for the
//! [`Transport`] of its own clients. With TLS, [`BenchTransport::new`] makes
//! a CA in the bench's work directory with the registry's certificate, and
//! [`BenchTransport::member`] issues a loopback certificate for each member
//! the bench starts or speaks as (`college/college-1`, `agency/bench-agency`:
//! `grantmesh ca init` + `grantmesh ca issue`, through the library). The
//! token key pair is made there too (on either transport). The bench removes
//! the directory when it is done. `--transport
//! both` ([`TransportChoice::Both`]) measures the two side by side in one run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use grantmesh_discovery::tls::{TlsMaterial, TlsPaths, Transport, ca};
use grantmesh_node::process::ChildNode;
use tokio::process::Command;

/// `--transport`: what a bench runs its mesh on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportChoice {
    /// TLS with a throwaway mesh CA, as every mesh runs by default.
    Tls,
    /// Plaintext, as with `--insecure`.
    Insecure,
    /// Both, side by side in the same run.
    Both,
}

impl TransportChoice {
    /// The transports to measure, TLS first.
    pub fn kinds(self) -> Vec<Kind> {
        match self {
            Self::Tls => vec![Kind::Tls],
            Self::Insecure => vec![Kind::Insecure],
            Self::Both => vec![Kind::Tls, Kind::Insecure],
        }
    }
}

/// One transport a mesh runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tls,
    Insecure,
}

impl Kind {
    /// As printed in the tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::Tls => "TLS",
            Self::Insecure => "plaintext",
        }
    }
}

/// One transport, ready for a bench: the children's flags and the clients' [`Transport`].
/// The outbox the colleges of every bench mesh in `work` mail into.
pub fn outbox_in(work: &Path) -> PathBuf {
    work.join("mail")
}

pub struct BenchTransport {
    kind: Kind,
    /// The throwaway CA's directory, with a certificate per member (TLS only).
    dir: Option<PathBuf>,
    /// Where the token key pair is: one per work directory, so that the
    /// meshes of `--transport both` take each other's tokens.
    keys: PathBuf,
    /// The outbox the bench's colleges mail into (sign-up codes).
    outbox: PathBuf,
    /// What the bench's own clients use: the CA only, no identity (like a researcher).
    client: Transport,
}

impl BenchTransport {
    /// With TLS, makes a fresh CA and a loopback certificate per service in
    /// `work/tls-ca` (`work` is the bench's own scratch directory).
    pub fn new(kind: Kind, work: &Path) -> anyhow::Result<Self> {
        let (dir, client, keys) = match kind {
            Kind::Insecure => (None, Transport::Insecure, work.join("token-keys")),
            Kind::Tls => {
                let dir = work.join("tls-ca");
                ca::init(&dir).context("failed to make the bench's mesh CA")?;
                ca::issue(&dir, &ca::LeafRequest::loopback("registry"), &dir)
                    .context("failed to issue the bench's registry certificate")?;
                let client = tls_transport(&dir, None)?;
                (Some(dir), client, work.join("token-keys"))
            }
        };
        crate::ca::make_token_key(&keys).context("failed to make the bench's token key")?;
        let outbox = outbox_in(work);
        Ok(Self {
            kind,
            dir,
            keys,
            outbox,
            client,
        })
    }

    /// Issues the certificate of `identity` (`college/college-1`) unless it
    /// is there; nothing in plaintext.
    pub fn member(&self, identity: &str) -> anyhow::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let request = ca::LeafRequest::loopback_for(
            grantmesh_discovery::tls::Identity::parse(identity)
                .with_context(|| format!("{identity:?} is not a mesh identity"))?,
        );
        if !ca::leaf_files(dir, &request.identity.file_stem())
            .0
            .exists()
        {
            ca::issue(dir, &request, dir).with_context(|| {
                format!("failed to issue the bench's certificate of {identity}")
            })?;
        }
        Ok(())
    }

    /// The environment that gives a college the bench's token signing key
    /// and its outbox, on either transport.
    pub fn college_env(&self) -> [(&'static str, PathBuf); 2] {
        [
            (
                "GRANTMESH_TOKEN_KEY_FILE",
                self.keys.join(crate::ca::TOKEN_KEY),
            ),
            ("GRANTMESH_MAIL_OUTBOX", self.outbox.clone()),
        ]
    }

    /// The token key pair's directory.
    #[cfg(test)]
    pub fn keys_dir(&self) -> &Path {
        &self.keys
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// How the bench's clients dial the mesh, presenting no certificate.
    pub fn client(&self) -> Transport {
        self.client.clone()
    }

    /// How a client speaking as `identity` (`college/bench`) dials the
    /// mesh: with TLS it presents that member's certificate, issued now if
    /// need be (the registry takes registrations and heartbeats of an
    /// instance only from the identity it names).
    pub fn client_as(&self, identity: &str) -> anyhow::Result<Transport> {
        self.member(identity)?;
        match &self.dir {
            None => Ok(Transport::Insecure),
            Some(dir) => {
                let identity = grantmesh_discovery::tls::Identity::parse(identity)?;
                tls_transport(dir, Some(&identity.file_stem()))
            }
        }
    }

    /// The key file of `identity`'s certificate, with which an agency signs
    /// its credentials (TLS only).
    pub fn key_file(&self, identity: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let identity = grantmesh_discovery::tls::Identity::parse(identity).ok()?;
        Some(ca::leaf_files(dir, &identity.file_stem()).1)
    }

    /// The URL a child listening on `addr` is reached at (`https://` or `http://`).
    pub fn url(&self, addr: SocketAddr) -> String {
        self.client.url(addr)
    }

    /// The flags that tell a role how to prove who it is.
    pub fn role_flags(&self) -> Vec<String> {
        match &self.dir {
            None => vec!["--insecure".to_owned()],
            Some(dir) => vec!["--tls-dir".to_owned(), dir.display().to_string()],
        }
    }

    /// Starts `grantmesh ROLE <transport flags> ARGS…` as a child of this
    /// binary (see [`ChildNode::spawn`]), `adjust` setting its environment
    /// and stderr.
    pub async fn spawn(
        &self,
        name: &str,
        role: &str,
        args: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> anyhow::Result<ChildNode> {
        let exe = std::env::current_exe().context("failed to find this binary")?;
        let mut all = vec![role.to_owned()];
        all.extend(self.role_flags());
        all.extend(args.iter().map(|&arg| arg.to_owned()));
        // A profiler around one role, e.g. GRANTMESH_BENCH_WRAP_COLLEGE="valgrind
        // --tool=callgrind --callgrind-out-file=/tmp/college.%p.cg".
        let wrap = format!("GRANTMESH_BENCH_WRAP_{}", role.to_uppercase());
        if let Ok(wrapper) = std::env::var(&wrap)
            && let Some((program, flags)) =
                wrapper.split_whitespace().collect::<Vec<_>>().split_first()
        {
            let mut wrapped: Vec<String> = flags.iter().map(|&f| f.to_owned()).collect();
            wrapped.push(exe.display().to_string());
            wrapped.extend(all);
            return ChildNode::spawn(Path::new(program), name, &wrapped, adjust).await;
        }
        ChildNode::spawn(&exe, name, &all, adjust).await
    }
}

fn tls_transport(dir: &Path, service: Option<&str>) -> anyhow::Result<Transport> {
    let material: Arc<TlsMaterial> = TlsMaterial::load(TlsPaths::in_dir(dir, service))
        .with_context(|| format!("failed to read the bench's TLS files in {}", dir.display()))?;
    Ok(Transport::Tls(material))
}

/// The order of the sides of one round: as given on even rounds, reversed
/// on odd ones, so that no side always follows another.
pub fn round_order<T: Clone>(sides: &[T], round: usize) -> Vec<T> {
    let mut order = sides.to_vec();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

/// `a / b` for the tables; 0 when `b` is nothing.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_rounds_run_the_sides_in_reverse() {
        assert_eq!(round_order(&[1, 2, 3], 0), vec![1, 2, 3]);
        assert_eq!(round_order(&[1, 2, 3], 1), vec![3, 2, 1]);
        assert_eq!(round_order(&[1, 2], 2), vec![1, 2]);
    }

    #[test]
    fn a_tls_bench_transport_gives_children_its_ca_dir_and_clients_https() {
        let work = tempfile::tempdir().unwrap();
        let tls = BenchTransport::new(Kind::Tls, work.path()).unwrap();
        let flags = tls.role_flags();
        assert_eq!(flags[0], "--tls-dir");
        tls.member("college/college-1").unwrap();
        for stem in ["registry", "college.college-1"] {
            let (cert, key) = ca::leaf_files(Path::new(&flags[1]), stem);
            assert!(cert.exists() && key.exists(), "{stem} has no certificate");
        }
        assert!(tls.keys_dir().join("token.key").exists());
        assert!(tls.client().is_tls());
        assert!(tls.client_as("college/bench").unwrap().is_tls());
        let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        assert_eq!(tls.url(addr), "https://127.0.0.1:7000");

        let plain = BenchTransport::new(Kind::Insecure, work.path()).unwrap();
        assert_eq!(plain.role_flags(), vec!["--insecure"]);
        assert_eq!(plain.url(addr), "http://127.0.0.1:7000");
    }
}
