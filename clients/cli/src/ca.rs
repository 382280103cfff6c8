//! `grantmesh ca`: the mesh's own certificate authority.
//!
//! ```text
//! grantmesh ca init  --dir /etc/grantmesh/tls
//! grantmesh ca issue --dir /etc/grantmesh/tls --service college --name college-1 --dns college-1.internal --ip 10.0.0.7
//! grantmesh college  --tls-dir /etc/grantmesh/tls …
//! ```
//!
//! Or keep the CA key in one place and let members join and renew:
//!
//! ```text
//! grantmesh ca serve --dir /etc/grantmesh/ca --listen 0.0.0.0:7300 --dns issuer \
//!                    --join-tokens /etc/grantmesh/join-tokens   # lines: `college/* TOKEN`
//! grantmesh ca join  --issuer https://issuer:7300 --ca ca.pem --join-token-file college.token \
//!                    --service college --name college-7 --dns college-7.internal --out tls
//! grantmesh college  --tls-dir tls --issuer https://issuer:7300 …   # renews before expiry
//! ```
//!
//! The work is done by [`grantmesh_discovery::tls::ca`], `renew` and
//! [`grantmesh_issuer`]; this is their command line.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use grantmesh_discovery::tls::Identity;
use grantmesh_discovery::tls::ca::{self, LeafRequest};

#[derive(Subcommand, Debug)]
pub enum Ca {
    /// Make a CA (DIR/ca.pem, DIR/ca.key) that every mesh member will trust.
    Init {
        /// Where to put it.
        #[arg(long, env = "GRANTMESH_TLS_DIR")]
        dir: PathBuf,
    },
    /// Make the researcher-token key pair: DIR/token.key (Ed25519, mode 0600),
    /// which only colleges hold and sign with, and DIR/token.pub, with which
    /// agencies verify tokens. Refuses to overwrite a key.
    TokenKey {
        /// Where to put it.
        #[arg(long, env = "GRANTMESH_TLS_DIR")]
        dir: PathBuf,
    },
    /// Serve as the mesh's certificate issuer: the one process holding the CA
    /// key, signing members' requests for short-lived certificates (with a
    /// join token the first time, over their current certificate after).
    Serve(ServeArgs),
    /// Get a first certificate from the issuer with a join token: a new key,
    /// kept here, and OUT/SERVICE.NAME.pem, .key and ca.pem.
    Join(JoinArgs),
    /// Sign a certificate for one mesh member (DIR/SERVICE.NAME.pem and .key,
    /// or DIR/SERVICE.pem and .key without --name).
    Issue(IssueArgs),
}

#[derive(Args, Debug)]
pub struct IssueArgs {
    /// The directory holding the CA (`ca init`).
    #[arg(long, env = "GRANTMESH_TLS_DIR")]
    dir: PathBuf,
    #[command(flatten)]
    member: Member,
    /// Where to write the certificate and key; the CA's directory by default.
    #[arg(long)]
    out: Option<PathBuf>,
    /// How long the certificate is valid.
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    valid_for: std::time::Duration,
    /// Keep the certificate already in the output directory when it was
    /// signed by this CA for exactly these names and is valid for longer
    /// than this; issue it only when missing, different or about to expire.
    /// Makes issuing safe to run again (e.g. every start of a cluster).
    #[arg(long, value_parser = humantime::parse_duration)]
    renew_within: Option<std::time::Duration>,
}

/// The token key files in a TLS directory, which colleges and agencies
/// read by default from their --tls-dir.
pub const TOKEN_KEY: &str = "token.key";
pub const TOKEN_PUBLIC_KEY: &str = "token.pub";

/// Writes a fresh token key pair into `dir` unless one is there; returns
/// whether it made one.
pub fn make_token_key(dir: &std::path::Path) -> anyhow::Result<bool> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let private = dir.join(TOKEN_KEY);
    if private.exists() {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    let pair = grantmesh_auth::TokenKeyPair::generate();
    let public = dir.join(TOKEN_PUBLIC_KEY);
    std::fs::write(&public, &pair.public_pem)
        .map_err(|err| anyhow::anyhow!("{}: {err}", public.display()))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private)
        .map_err(|err| anyhow::anyhow!("{}: {err}", private.display()))?;
    file.write_all(pair.private_pem.as_bytes())?;
    file.sync_all()?;
    Ok(true)
}

/// Whom a certificate is for, and where it is reached.
#[derive(Args, Debug)]
pub struct Member {
    /// The service the certificate names: registry, agency, college, …
    #[arg(long)]
    service: String,
    /// Who it is within the service: a college's instance id (`college-1`),
    /// an agency's name (`nsf`). The registry lets a certificate register
    /// only the instance it names, and colleges open accounts for the agency
    /// it names; a registry's certificate has no name.
    #[arg(long)]
    name: Option<String>,
    /// DNS names it is reached at (repeat or comma-separate); localhost by default.
    #[arg(long, value_delimiter = ',')]
    dns: Vec<String>,
    /// IP addresses it is reached at (repeat or comma-separate); 127.0.0.1 by default.
    #[arg(long, value_delimiter = ',')]
    ip: Vec<IpAddr>,
}

impl Member {
    /// The leaf it asks for: loopback names unless some were given.
    fn request(&self) -> anyhow::Result<LeafRequest> {
        let identity = match &self.name {
            Some(name) => Identity::named(&self.service, name)?,
            None => Identity::service(&self.service)?,
        };
        let mut request = LeafRequest::loopback_for(identity);
        if !self.dns.is_empty() || !self.ip.is_empty() {
            request.dns = self.dns.clone();
            request.ips = self.ip.clone();
        }
        Ok(request)
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The directory holding the CA (`ca init`); the issuer's own certificate
    /// (`issuer.pem`, for the names below) is issued into it at start.
    #[arg(long, env = "GRANTMESH_CA_DIR")]
    dir: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "GRANTMESH_LISTEN", default_value = "127.0.0.1:7300")]
    listen: std::net::SocketAddr,
    /// DNS names the issuer is reached at (repeat or comma-separate).
    #[arg(long, value_delimiter = ',', default_value = "localhost")]
    dns: Vec<String>,
    /// IP addresses the issuer is reached at.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    ip: Vec<IpAddr>,
    /// File of join tokens, a line each: `WHOM TOKEN`, WHOM being
    /// `SERVICE/*` (any member of the service) or one identity (`agency/nsf`).
    #[arg(long, env = "GRANTMESH_JOIN_TOKENS")]
    join_tokens: PathBuf,
    /// How long the certificates it signs live.
    #[arg(long, env = "GRANTMESH_LEAF_VALIDITY", default_value = "24h", value_parser = humantime::parse_duration)]
    leaf_validity: std::time::Duration,
}

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// The issuer's URL (`https://issuer:7300`).
    #[arg(long, env = "GRANTMESH_ISSUER")]
    issuer: String,
    /// The mesh CA certificate, which the issuer's certificate must chain to.
    #[arg(long, env = "GRANTMESH_CA")]
    ca: PathBuf,
    /// File holding the join token (keeps it out of `ps` and the environment).
    #[arg(long, env = "GRANTMESH_JOIN_TOKEN_FILE")]
    join_token_file: PathBuf,
    #[command(flatten)]
    member: Member,
    /// Where to write the key, the certificate and ca.pem.
    #[arg(long)]
    out: PathBuf,
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    let tokens = std::fs::read_to_string(&args.join_tokens)
        .with_context(|| format!("failed to read {}", args.join_tokens.display()))?;
    let tokens = grantmesh_issuer::JoinTokens::parse(&tokens)?;
    // Its own certificate, kept while it is good for a month more.
    let mut request = LeafRequest::loopback("issuer");
    request.dns = args.dns;
    request.ips = args.ip;
    if ca::reusable_leaf(&args.dir, &request, &args.dir, time::Duration::days(30)).is_none() {
        ca::issue(&args.dir, &request, &args.dir)
            .context("failed to issue the issuer's certificate")?;
    }
    let role = grantmesh_node::config::Role::Issuer(grantmesh_node::config::IssuerSettings {
        server: grantmesh_node::ServerSettings {
            tls: Some(grantmesh_discovery::tls::TlsPaths::in_dir(
                &args.dir,
                Some("issuer"),
            )),
            ..grantmesh_node::ServerSettings::default()
        },
        ca_dir: args.dir,
        tokens,
        leaf_validity: args.leaf_validity,
    });
    crate::roles::serve_role(role, args.listen).await
}

async fn join(args: JoinArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    let token = std::fs::read_to_string(&args.join_token_file)
        .with_context(|| format!("failed to read {}", args.join_token_file.display()))?;
    let request = args.member.request()?;
    let identity = request.identity.clone();
    let (cert, until) = grantmesh_discovery::tls::renew::join(
        &args.issuer,
        &args.ca,
        token.trim(),
        &request,
        &args.out,
    )
    .await?;
    println!(
        "joined as {}: {} ({}), valid until {until}",
        identity.uri(),
        cert.display(),
        names(&request)
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn run(command: Ca) -> anyhow::Result<ExitCode> {
    match command {
        Ca::Serve(args) => return serve(args).await,
        Ca::Join(args) => return join(args).await,
        Ca::TokenKey { dir } => {
            if !make_token_key(&dir)? {
                anyhow::bail!(
                    "{} already exists; a token key is made once (every college signs with it)",
                    dir.join(TOKEN_KEY).display()
                );
            }
            println!(
                "made the token key: {} (mode 0600, for colleges) and {} (for agencies)",
                dir.join(TOKEN_KEY).display(),
                dir.join(TOKEN_PUBLIC_KEY).display()
            );
        }
        Ca::Init { dir } => {
            let cert = ca::init(&dir)?;
            println!(
                "made the mesh CA: {} (its key beside it, mode 0600)",
                cert.display()
            );
        }
        Ca::Issue(args) => {
            let mut request = args.member.request()?;
            let identity = request.identity.clone();
            request.validity = time::Duration::try_from(args.valid_for)
                .map_err(|_| anyhow::anyhow!("--valid-for is too long"))?;
            let out = args.out.unwrap_or_else(|| args.dir.clone());
            if let Some(within) = args.renew_within {
                let within = time::Duration::try_from(within)
                    .map_err(|_| anyhow::anyhow!("--renew-within is too long"))?;
                if let Some(until) = ca::reusable_leaf(&args.dir, &request, &out, within) {
                    println!(
                        "kept {} for {} ({}): valid until {until}, not within {} of expiring",
                        ca::leaf_files(&out, &identity.file_stem()).0.display(),
                        identity.uri(),
                        names(&request),
                        humantime::format_duration(args.renew_within.unwrap_or_default())
                    );
                    return Ok(ExitCode::SUCCESS);
                }
            }
            let (cert, key) = ca::issue(&args.dir, &request, &out)?;
            println!(
                "issued {} for {} ({}; key {})",
                cert.display(),
                identity.uri(),
                names(&request),
                key.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn names(request: &LeafRequest) -> String {
    request
        .dns
        .iter()
        .cloned()
        .chain(request.ips.iter().map(IpAddr::to_string))
        .collect::<Vec<_>>()
        .join(", ")
}
