//! `grantmesh ca`: the mesh's own certificate authority.
//!
//! ```text
//! grantmesh ca init  --dir /etc/grantmesh/tls
//! grantmesh ca issue --dir /etc/grantmesh/tls --service college --dns college-1.internal --ip 10.0.0.7
//! grantmesh college  --tls-dir /etc/grantmesh/tls …
//! ```
//!
//! The work is done by [`grantmesh_discovery::tls::ca`]; this is its command line.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use grantmesh_discovery::tls::ca::{self, LeafRequest};

#[derive(Subcommand, Debug)]
pub enum Ca {
    /// Make a CA (DIR/ca.pem, DIR/ca.key) that every mesh member will trust.
    Init {
        /// Where to put it.
        #[arg(long, env = "GRANTMESH_TLS_DIR")]
        dir: PathBuf,
    },
    /// Sign a certificate for one service (DIR/SERVICE.pem, DIR/SERVICE.key).
    Issue(IssueArgs),
}

#[derive(Args, Debug)]
pub struct IssueArgs {
    /// The directory holding the CA (`ca init`).
    #[arg(long, env = "GRANTMESH_TLS_DIR")]
    dir: PathBuf,
    /// The service the certificate names: registry, agency, college, …
    #[arg(long)]
    service: String,
    /// DNS names the service is reached at (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    dns: Vec<String>,
    /// IP addresses the service is reached at (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    ip: Vec<IpAddr>,
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

pub fn run(command: Ca) -> anyhow::Result<ExitCode> {
    match command {
        Ca::Init { dir } => {
            let cert = ca::init(&dir)?;
            println!(
                "made the mesh CA: {} (its key beside it, mode 0600)",
                cert.display()
            );
        }
        Ca::Issue(args) => {
            let mut request = LeafRequest::loopback(&args.service);
            if !args.dns.is_empty() || !args.ip.is_empty() {
                request.dns = args.dns;
                request.ips = args.ip;
            }
            request.validity = time::Duration::try_from(args.valid_for)
                .map_err(|_| anyhow::anyhow!("--valid-for is too long"))?;
            let out = args.out.unwrap_or_else(|| args.dir.clone());
            if let Some(within) = args.renew_within {
                let within = time::Duration::try_from(within)
                    .map_err(|_| anyhow::anyhow!("--renew-within is too long"))?;
                if let Some(until) = ca::reusable_leaf(&args.dir, &request, &out, within) {
                    println!(
                        "kept {} for spiffe://grantmesh/{} ({}): valid until {until}, not within {} of expiring",
                        ca::leaf_files(&out, &args.service).0.display(),
                        args.service,
                        names(&request),
                        humantime::format_duration(args.renew_within.unwrap_or_default())
                    );
                    return Ok(ExitCode::SUCCESS);
                }
            }
            let (cert, key) = ca::issue(&args.dir, &request, &out)?;
            println!(
                "issued {} for spiffe://grantmesh/{} ({}; key {})",
                cert.display(),
                args.service,
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
