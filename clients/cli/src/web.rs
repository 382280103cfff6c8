//! `grantmesh web`: the researcher portal and the mesh dashboard over HTTP
//! (crate `grantmesh-web`), reaching the mesh through its registries like
//! every client command.
//!
//! ```text
//! grantmesh web --listen 127.0.0.1:7080 --registry https://127.0.0.1:7000
//! ```
//!
//! The portal speaks plain HTTP; put a TLS proxy in front of it for anything
//! but loopback, and pass `--secure-cookies` then.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use grantmesh_discovery::parse_registry_list;
use grantmesh_web::{Web, WebSettings};
use tokio::net::TcpListener;

/// Where the portal listens when not told: beside a local `grantmesh dev`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7080";

#[derive(Args, Debug)]
pub struct WebArgs {
    /// Address to serve HTTP on (HOST:PORT; port 0 picks a free one).
    #[arg(long, env = "GRANTMESH_WEB_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: String,
    /// Registry replicas to find agencies and colleges through, comma separated.
    #[arg(long, env = "GRANTMESH_REGISTRY", default_value = crate::transport::DEFAULT_REGISTRY)]
    registry: String,
    /// The mesh CA certificate, for https:// registries
    /// [default: $GRANTMESH_CA, else $GRANTMESH_TLS_DIR/ca.pem, else the one `grantmesh dev` made].
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Mark the session cookie `Secure` (sent over HTTPS only): set it when a
    /// TLS proxy fronts the portal.
    #[arg(long, env = "GRANTMESH_WEB_SECURE_COOKIES", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false)]
    secure_cookies: bool,
    /// Show this outbox (a college's --mail-outbox) at /dev/mail, codes and
    /// all, as `grantmesh dev` does: for development and tests only.
    #[arg(long, value_name = "DIR")]
    dev_mail_outbox: Option<PathBuf>,
}

pub async fn run(args: WebArgs) -> anyhow::Result<ExitCode> {
    let transport = crate::transport::for_registries(&args.registry, args.ca.as_deref())?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("failed to listen on {} for the web portal", args.listen))?;
    let addr = listener.local_addr()?;
    let mut settings = WebSettings::new(parse_registry_list(&args.registry), transport);
    settings.secure_cookies = args.secure_cookies;
    settings.dev_mail = args.dev_mail_outbox;
    if settings.dev_mail.is_some() {
        tracing::warn!(
            "serving the mail outbox at /dev/mail (--dev-mail-outbox): for development only"
        );
    }
    tracing::info!(%addr, registry = %args.registry, "web portal serving");
    let terminated = grantmesh_server::terminate_signal();
    println!("grantmesh web: http://{addr} (mesh dashboard: http://{addr}/mesh)");
    Web::new(settings)
        .serve(listener, terminated)
        .await
        .context("the web portal failed")?;
    Ok(ExitCode::SUCCESS)
}
