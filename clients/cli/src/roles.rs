//! The server roles' flags, turned into [`grantmesh_node`] settings.
//!
//! This module only parses: every check on the values lives in the settings
//! types, and every role is started by [`grantmesh_node::start`], as in
//! `grantmesh dev`, the tests and the benchmarks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use grantmesh_auth::Keys;
use grantmesh_discovery::parse_registry_list;
use grantmesh_discovery::tls::{Identity, TlsPaths};
use grantmesh_node::config::{
    AgencySettings, CollegeSettings, MailSettings, MeshSettings, RegistrySettings, Role,
    ServerSettings, StoreSettings,
};
use grantmesh_node::{Band, Lease};
use tokio::net::TcpListener;

/// Flags every server role shares.
#[derive(Args, Clone, Debug)]
pub struct ServerArgs {
    /// Address to listen on. Port 0 picks a free port (printed on stdout).
    #[arg(long, env = "GRANTMESH_LISTEN")]
    listen: Option<SocketAddr>,
    /// Id to register under. By default the name this member's certificate
    /// gives it (`college/college-1` → `college-1`); with --insecure a fresh
    /// `SERVICE-xxxx` id. With --tls-dir, a college reads DIR/college.ID.pem
    /// when it is there.
    #[arg(long, env = "GRANTMESH_INSTANCE_ID")]
    instance_id: Option<String>,
    /// How long in-flight calls get to finish on shutdown.
    #[arg(long, env = "GRANTMESH_GRACE_PERIOD", default_value = "10s", value_parser = humantime::parse_duration)]
    grace_period: Duration,
    /// Calls handled at once; beyond it new calls are refused with
    /// RESOURCE_EXHAUSTED instead of queueing.
    #[arg(long, env = "GRANTMESH_MAX_CALLS", default_value_t = grantmesh_server::Limits::default().concurrent_calls)]
    max_calls: usize,
    /// Calls one connection may have handled at once.
    #[arg(long, env = "GRANTMESH_MAX_CALLS_PER_CONNECTION", default_value_t = grantmesh_server::Limits::default().calls_per_connection)]
    max_calls_per_connection: usize,
    /// Calls one caller may have handled at once, over all its connections:
    /// a mesh member by its client certificate, anyone else by address.
    #[arg(long, env = "GRANTMESH_MAX_CALLS_PER_PEER", default_value_t = grantmesh_server::Limits::default().calls_per_peer)]
    max_calls_per_peer: usize,
    /// Of --max-calls, how many only mesh members (a client certificate) may
    /// take, so that anonymous load cannot starve registration or agencies.
    #[arg(long, env = "GRANTMESH_CALLS_RESERVED_FOR_MEMBERS", default_value_t = grantmesh_server::Limits::default().reserved_for_members)]
    calls_reserved_for_members: usize,
    /// Connections held at once (4096, or ¾ of the descriptor limit if lower).
    #[arg(long, env = "GRANTMESH_MAX_CONNECTIONS", default_value_t = grantmesh_server::Limits::default().connections.total)]
    max_connections: usize,
    /// Open connections without a mesh certificate from one IP address.
    #[arg(long, env = "GRANTMESH_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = grantmesh_server::Limits::default().connections.per_address)]
    max_connections_per_address: usize,
    /// Of --max-connections, how many only mesh members may hold.
    #[arg(long, env = "GRANTMESH_CONNECTIONS_RESERVED_FOR_MEMBERS", default_value_t = grantmesh_server::Limits::default().connections.reserved_for_members)]
    connections_reserved_for_members: usize,
    /// How long a connection may hold no call before it is closed, even if
    /// it answers keepalive pings.
    #[arg(long, env = "GRANTMESH_IDLE_CONNECTION_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    idle_connection_timeout: Duration,
    /// The longest Ping delay a caller without a mesh certificate may ask for.
    #[arg(long, env = "GRANTMESH_MAX_ANONYMOUS_PING_DELAY", default_value = "1s", value_parser = humantime::parse_duration)]
    max_anonymous_ping_delay: Duration,
    /// Serve Prometheus metrics over plain HTTP at http://ADDR/metrics
    /// (port 0 picks a free one); registered as the instance's `metrics` label.
    #[arg(long, env = "GRANTMESH_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Directory with the mesh CA (ca.pem) and this role's certificate and key
    /// (SERVICE.pem, SERVICE.key), as `grantmesh ca init` / `ca issue` write them.
    #[arg(long, env = "GRANTMESH_TLS_DIR", conflicts_with = "insecure")]
    tls_dir: Option<PathBuf>,
    /// The mesh CA certificate (with --cert and --key, instead of --tls-dir).
    /// `GRANTMESH_CA` is also what client commands read; set beside
    /// `GRANTMESH_TLS_DIR` it must name that directory's ca.pem.
    #[arg(long, env = "GRANTMESH_CA")]
    ca: Option<PathBuf>,
    /// This role's certificate (with --ca and --key, instead of --tls-dir).
    #[arg(long, env = "GRANTMESH_CERT")]
    cert: Option<PathBuf>,
    /// This role's private key (with --ca and --cert, instead of --tls-dir).
    #[arg(long, env = "GRANTMESH_KEY")]
    key: Option<PathBuf>,
    /// The certificate issuer (`grantmesh ca serve`) to renew this server's
    /// certificate from, over the certificate itself, when two thirds of its
    /// life have passed; the new files are picked up live.
    #[arg(long, env = "GRANTMESH_ISSUER")]
    issuer: Option<String>,
    /// Serve and call in plaintext, without TLS: for loopback experiments
    /// only, as anyone on the network can then read and forge calls.
    #[arg(long, env = "GRANTMESH_INSECURE", value_parser = clap::builder::BoolishValueParser::new())]
    insecure: bool,
}

/// Flags of roles that join the mesh (agency, college).
#[derive(Args, Clone, Debug)]
pub struct MeshArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// URL other instances dial to reach this one; `https://LISTEN` by default.
    #[arg(long, env = "GRANTMESH_ADVERTISE")]
    advertise: Option<String>,
    /// Registry replicas to register with, comma separated
    /// [default: https://127.0.0.1:7000, or http:// with --insecure].
    #[arg(long, env = "GRANTMESH_REGISTRY")]
    registry: Option<String>,
    /// How long the registry waits for a heartbeat before removing this instance.
    #[arg(long, env = "GRANTMESH_TTL", default_value = "3s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// How often this instance renews its lease.
    #[arg(long, env = "GRANTMESH_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// How long to keep serving after deregistering on shutdown, so clients stop picking this instance first.
    #[arg(long, env = "GRANTMESH_DRAIN_DELAY", default_value = "500ms", value_parser = humantime::parse_duration)]
    drain_delay: Duration,
}

#[derive(Args, Clone, Debug)]
pub struct RegistryArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// TTL for instances that register without one.
    #[arg(long, env = "GRANTMESH_TTL", default_value = "3s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// How long after start-up Watch holds back its first snapshot, so that a restarted
    /// registry has relearned the mesh first (more than the instances' heartbeat interval).
    #[arg(long, env = "GRANTMESH_REGISTRY_WARMUP", default_value = "1500ms", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Services the registry keeps (counting those only watched).
    #[arg(long, env = "GRANTMESH_MAX_SERVICES", default_value_t = grantmesh_registry::Capacity::default().services)]
    max_services: usize,
    /// Instances of one service the registry keeps.
    #[arg(long, env = "GRANTMESH_MAX_INSTANCES_PER_SERVICE", default_value_t = grantmesh_registry::Capacity::default().instances_per_service)]
    max_instances_per_service: usize,
    /// Most instances one mesh identity (one certificate) may hold at once.
    #[arg(long, env = "GRANTMESH_MAX_INSTANCES_PER_MEMBER", default_value_t = grantmesh_registry::Capacity::default().instances_per_member)]
    max_instances_per_member: usize,
    /// Watch streams open at once.
    #[arg(long, env = "GRANTMESH_MAX_WATCHES", default_value_t = grantmesh_registry::default_watches().total)]
    max_watches: usize,
    /// Watch streams one caller may have open: a mesh member by its
    /// certificate, anyone else by address.
    #[arg(long, env = "GRANTMESH_MAX_WATCHES_PER_PEER", default_value_t = grantmesh_registry::default_watches().per_peer)]
    max_watches_per_peer: usize,
    /// Of --max-watches, how many only mesh members may open.
    #[arg(long, env = "GRANTMESH_WATCHES_RESERVED_FOR_MEMBERS", default_value_t = grantmesh_registry::default_watches().reserved_for_members)]
    watches_reserved_for_members: usize,
}

/// Flags of roles that use the central store and verify tokens (agency, college).
#[derive(Args, Clone, Debug)]
pub struct StoreArgs {
    /// PostgreSQL URL of the central store, e.g. postgres://user:pass@host:5432/grantmesh.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Connections this instance may hold to the store.
    #[arg(long, env = "GRANTMESH_POOL_SIZE", default_value_t = 16)]
    pool_size: usize,
    /// A college's token signing key: the Ed25519 private key (PKCS#8 PEM)
    /// that signs researchers' bearer tokens, the same on every college
    /// (`grantmesh ca token-key`). Default: TLS-DIR/token.key. Colleges only.
    #[arg(long, env = "GRANTMESH_TOKEN_KEY_FILE")]
    token_key_file: Option<PathBuf>,
    /// An agency's copy of the token key's public half (PEM), which verifies
    /// researchers' tokens but cannot make one. Default: TLS-DIR/token.pub.
    #[arg(long, env = "GRANTMESH_TOKEN_PUBLIC_KEY_FILE")]
    token_public_key_file: Option<PathBuf>,
    /// How long a researcher's access token stays valid (at most 15m; the
    /// CLI and portal renew it with the session's refresh token).
    #[arg(long, env = "GRANTMESH_TOKEN_TTL", default_value = "15m", value_parser = humantime::parse_duration)]
    token_ttl: Duration,
}

#[derive(Args, Clone, Debug)]
pub struct AgencyArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    #[command(flatten)]
    store: StoreArgs,
    /// The agency's name; instances with the same name are one agency.
    #[arg(
        long,
        env = "GRANTMESH_AGENCY_NAME",
        default_value = "grantmesh-agency"
    )]
    name: String,
    /// Smallest award granted, in minor units of --currency (30000000: 300,000.00).
    #[arg(long, env = "GRANTMESH_MIN_AWARD", default_value_t = Band::DEFAULT.min())]
    min_award: i64,
    /// Largest award granted, in minor units of --currency (50000000: 500,000.00).
    #[arg(long, env = "GRANTMESH_MAX_AWARD", default_value_t = Band::DEFAULT.max())]
    max_award: i64,
    /// The currency it awards in: an ISO 4217 code (EUR, USD, JPY…).
    #[arg(long, env = "GRANTMESH_CURRENCY", default_value = grantmesh_proto::money::DEFAULT_CURRENCY, value_parser = parse_currency)]
    currency: grantmesh_proto::money::Currency,
    /// How long one attempt to have a college open an account may take.
    #[arg(long, env = "GRANTMESH_OPEN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    open_timeout: Duration,
    /// How often accepted proposals still without an account are retried.
    #[arg(long, env = "GRANTMESH_RECONCILE_EVERY", default_value = "2s", value_parser = humantime::parse_duration)]
    reconcile_every: Duration,
}

#[derive(Args, Clone, Debug)]
pub struct CollegeArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    #[command(flatten)]
    store: StoreArgs,
    /// How long one day of an account's duration lasts (simulations use 1s).
    #[arg(long, env = "GRANTMESH_DAY_LENGTH", default_value = "24h", value_parser = humantime::parse_duration)]
    day_length: Duration,
    /// The agencies this college opens accounts for, each with its award band
    /// in minor units (both ends included), comma separated: NAME=MIN..MAX,…
    #[arg(
        long,
        env = "GRANTMESH_AGENCIES",
        default_value = "grantmesh-agency=30000000..50000000",
        value_parser = parse_agencies
    )]
    agencies: AgencyBands,
    /// WatchAccount streams this college serves at once.
    #[arg(long, env = "GRANTMESH_MAX_ACCOUNT_WATCHES", default_value_t = grantmesh_college::WatchLimits::default().total)]
    max_account_watches: usize,
    /// WatchAccount streams from one address (a member's certificate counts as one).
    #[arg(long, env = "GRANTMESH_MAX_ACCOUNT_WATCHES_PER_PEER", default_value_t = grantmesh_college::WatchLimits::default().per_peer)]
    max_account_watches_per_peer: usize,
    /// WatchAccount streams one researcher may hold open.
    #[arg(long, env = "GRANTMESH_MAX_ACCOUNT_WATCHES_PER_RESEARCHER", default_value_t = grantmesh_college::WatchLimits::default().per_researcher)]
    max_account_watches_per_researcher: usize,
    #[command(flatten)]
    mail: MailArgs,
    /// The sender of the messages a college mails.
    #[arg(long, env = "GRANTMESH_MAIL_FROM", default_value = grantmesh_mail::DEFAULT_FROM)]
    mail_from: String,
    /// The least time between two sign-up messages to one email (a sign-up
    /// sooner changes nothing and sends nothing).
    #[arg(long, env = "GRANTMESH_SIGNUP_RESEND_AFTER", default_value = "60s", value_parser = humantime::parse_duration)]
    signup_resend_after: Duration,
}

/// Where a college mails sign-up codes: one of the two is required.
#[derive(Args, Clone, Debug)]
#[group(required = true, multiple = false)]
struct MailArgs {
    /// The SMTP relay: smtp://HOST:PORT (plain), smtp://HOST:PORT?tls=required
    /// (STARTTLS) or smtps://HOST:PORT, with USER:PASSWORD@ before the host
    /// when it wants them.
    #[arg(long, env = "GRANTMESH_SMTP_URL", hide_env_values = true)]
    smtp_url: Option<String>,
    /// Keep every message as a file in DIR instead of sending it (a mail
    /// catcher for development and tests; `grantmesh mail` reads it).
    #[arg(long, env = "GRANTMESH_MAIL_OUTBOX", value_name = "DIR")]
    mail_outbox: Option<PathBuf>,
}

impl MailArgs {
    fn settings(&self, from: &str) -> MailSettings {
        match (&self.smtp_url, &self.mail_outbox) {
            (Some(url), _) => MailSettings::Smtp {
                url: url.clone(),
                from: from.to_owned(),
            },
            (None, Some(dir)) => MailSettings::Outbox {
                dir: dir.clone(),
                from: from.to_owned(),
            },
            (None, None) => MailSettings::Unset,
        }
    }
}

fn parse_currency(code: &str) -> Result<grantmesh_proto::money::Currency, String> {
    code.parse()
        .map_err(|err: grantmesh_proto::money::MoneyError| err.to_string())
}

/// `--agencies`, parsed: names and bands in the order given.
#[derive(Clone, Debug)]
struct AgencyBands(Vec<(String, Band)>);

/// Parses `nsf=300000..500000,erc=100000..250000`. Whether the names are
/// usable and unique is the settings' check, as for every other source.
fn parse_agencies(list: &str) -> Result<AgencyBands, String> {
    let wanted = "expected NAME=MIN..MAX[,NAME=MIN..MAX…], e.g. nsf=300000..500000";
    list.split(',')
        .map(|entry| {
            let entry = entry.trim();
            let (name, band) = entry
                .split_once('=')
                .ok_or_else(|| format!("{entry:?} names no band; {wanted}"))?;
            let (min, max) = band
                .split_once("..")
                .ok_or_else(|| format!("{entry:?}: the band is not MIN..MAX; {wanted}"))?;
            let amount = |text: &str| {
                text.trim().parse::<i64>().map_err(|_| {
                    format!("{entry:?}: {text:?} is not a whole number of minor units; {wanted}")
                })
            };
            let band =
                Band::new(amount(min)?, amount(max)?).map_err(|err| format!("{entry:?}: {err}"))?;
            Ok((name.trim().to_owned(), band))
        })
        .collect::<Result<Vec<_>, String>>()
        .map(AgencyBands)
}

/// Whether two paths name one file (or, when either cannot be resolved, are written alike).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

impl ServerArgs {
    /// The settings of a `service` server; `name` is who it is within the
    /// service (a college's instance id, an agency's name), which picks
    /// `DIR/SERVICE.NAME.pem` from --tls-dir when that file is there.
    fn settings(&self, service: &str, name: Option<&str>) -> anyhow::Result<ServerSettings> {
        let tls = match (&self.tls_dir, &self.ca, &self.cert, &self.key) {
            _ if self.insecure => {
                if self.ca.is_some() || self.cert.is_some() || self.key.is_some() {
                    bail!(
                        "--insecure runs this {service} without TLS, but --ca/--cert/--key \
                         (or GRANTMESH_CA/GRANTMESH_CERT/GRANTMESH_KEY) are set: drop one or the other"
                    );
                }
                None
            }
            (Some(dir), ca, None, None) => {
                let identity = name.and_then(|name| Identity::named(service, name).ok());
                let paths = match &identity {
                    Some(identity) => TlsPaths::for_identity(dir, identity),
                    None => TlsPaths::in_dir(dir, Some(service)),
                };
                // GRANTMESH_CA is what client commands read, so it is often set
                // beside GRANTMESH_TLS_DIR: fine as long as both name one CA.
                if let Some(ca) = ca
                    && !same_file(ca, &paths.ca)
                {
                    bail!(
                        "--tls-dir {} takes the CA from {}, but --ca (or GRANTMESH_CA) names {}: \
                         a server has one CA. Unset GRANTMESH_CA (client commands also read the CA \
                         from GRANTMESH_TLS_DIR), or use --ca, --cert and --key without --tls-dir",
                        dir.display(),
                        paths.ca.display(),
                        ca.display()
                    );
                }
                Some(paths)
            }
            (Some(_), _, _, _) => bail!(
                "--cert/--key (or GRANTMESH_CERT/GRANTMESH_KEY) are set beside --tls-dir: \
                 this {service} reads {service}.pem and {service}.key (or {service}.NAME.pem and .key) from the directory; drop one or the other"
            ),
            (None, Some(ca), Some(cert), Some(key)) => Some(TlsPaths {
                ca: ca.clone(),
                identity: Some((cert.clone(), key.clone())),
            }),
            _ => bail!(
                "say how this {service} proves who it is: --tls-dir DIR (made by `grantmesh ca init` and \
                 `grantmesh ca issue --service {service} --name NAME`), or --ca, --cert and --key together; \
                 or --insecure to run in plaintext"
            ),
        };
        Ok(ServerSettings {
            issuer: self.issuer.clone(),
            instance_id: self.instance_id.clone(),
            grace_period: self.grace_period,
            tls,
            limits: grantmesh_server::Limits {
                concurrent_calls: self.max_calls,
                calls_per_connection: self.max_calls_per_connection,
                calls_per_peer: self.max_calls_per_peer,
                reserved_for_members: self.calls_reserved_for_members,
                anonymous_ping_delay: self.max_anonymous_ping_delay,
                connections: grantmesh_discovery::incoming::ConnectionLimits {
                    total: self.max_connections,
                    per_address: self.max_connections_per_address,
                    reserved_for_members: self.connections_reserved_for_members,
                    idle_timeout: self.idle_connection_timeout,
                },
            },
            metrics_listen: self.metrics_listen,
        })
    }

    /// `https` with TLS, `http` with --insecure.
    fn scheme(&self) -> &'static str {
        if self.insecure { "http" } else { "https" }
    }
}

impl MeshArgs {
    fn settings(&self) -> anyhow::Result<MeshSettings> {
        let registries = match &self.registry {
            Some(list) => parse_registry_list(list),
            None => vec![format!(
                "{}://127.0.0.1:{DEFAULT_REGISTRY_PORT}",
                self.server.scheme()
            )],
        };
        Ok(MeshSettings {
            registries,
            advertise: self.advertise.clone(),
            lease: Lease::new(self.ttl, self.heartbeat_interval)
                .context("--ttl / --heartbeat-interval")?,
            drain_delay: self.drain_delay,
        })
    }
}

impl StoreArgs {
    /// The store and token keys of a college (`signs`: the private key) or
    /// an agency (the public key only); key files default to the TLS directory's.
    fn settings(
        &self,
        signs: bool,
        tls_dir: Option<&std::path::Path>,
    ) -> anyhow::Result<StoreSettings> {
        let default = |file: &str| tls_dir.map(|dir| dir.join(file));
        let keys = if signs {
            // A college verifies with the public half of the key it signs
            // with; a --token-public-key-file beside it (an environment
            // shared with agencies) is not needed.
            let file = self.token_key_file.clone().or_else(|| default(TOKEN_KEY)).context(
                "say where the token signing key is: --token-key-file (made by `grantmesh ca token-key`)",
            )?;
            let pem = std::fs::read(&file)
                .with_context(|| format!("failed to read the token key {}", file.display()))?;
            Keys::signing(&pem, self.token_ttl)
                .with_context(|| format!("the token key {} is not usable", file.display()))?
        } else {
            if self.token_key_file.is_some() {
                bail!(
                    "--token-key-file is the colleges' signing key: an agency verifies tokens with \
                     the public half only (--token-public-key-file), so that it cannot mint one"
                );
            }
            let file = self
                .token_public_key_file
                .clone()
                .or_else(|| default(TOKEN_PUBLIC_KEY))
                .context(
                    "say where the token public key is: --token-public-key-file (made by `grantmesh ca token-key`)",
                )?;
            let pem = std::fs::read(&file).with_context(|| {
                format!("failed to read the token public key {}", file.display())
            })?;
            Keys::verifying(&pem)
                .with_context(|| format!("the token public key {} is not usable", file.display()))?
        };
        Ok(StoreSettings {
            database_url: self.database_url.clone(),
            pool_size: self.pool_size,
            keys,
        })
    }
}

use crate::ca::{TOKEN_KEY, TOKEN_PUBLIC_KEY};

const DEFAULT_REGISTRY_PORT: u16 = 7000;
const DEFAULT_AGENCY_PORT: u16 = 7100;
const DEFAULT_COLLEGE_PORT: u16 = 7200;

pub async fn run_registry(args: RegistryArgs) -> anyhow::Result<ExitCode> {
    let role = Role::Registry(RegistrySettings {
        server: args.server.settings(grantmesh_registry::SERVICE, None)?,
        default_ttl: args.ttl,
        warmup: args.warmup,
        capacity: grantmesh_registry::Capacity {
            services: args.max_services,
            instances_per_service: args.max_instances_per_service,
            instances_per_member: args.max_instances_per_member,
        },
        watches: grantmesh_server::peers::Split {
            total: args.max_watches,
            per_peer: args.max_watches_per_peer,
            reserved_for_members: args.watches_reserved_for_members,
        },
    });
    run(role, &args.server, DEFAULT_REGISTRY_PORT).await
}

pub async fn run_agency(args: AgencyArgs) -> anyhow::Result<ExitCode> {
    let role = Role::Agency(AgencySettings {
        server: args
            .mesh
            .server
            .settings(grantmesh_agency::SERVICE, Some(&args.name))?,
        mesh: args.mesh.settings()?,
        store: args
            .store
            .settings(false, args.mesh.server.tls_dir.as_deref())?,
        name: args.name,
        band: Band::new(args.min_award, args.max_award).context("--min-award / --max-award")?,
        currency: args.currency,
        open_timeout: args.open_timeout,
        reconcile_every: args.reconcile_every,
    });
    run(role, &args.mesh.server, DEFAULT_AGENCY_PORT).await
}

pub async fn run_college(args: CollegeArgs) -> anyhow::Result<ExitCode> {
    let role = Role::College(CollegeSettings {
        server: args.mesh.server.settings(
            grantmesh_college::SERVICE,
            args.mesh.server.instance_id.as_deref(),
        )?,
        mesh: args.mesh.settings()?,
        store: args
            .store
            .settings(true, args.mesh.server.tls_dir.as_deref())?,
        day_length: args.day_length,
        agencies: args.agencies.0,
        watches: grantmesh_college::WatchLimits {
            total: args.max_account_watches,
            per_peer: args.max_account_watches_per_peer,
            per_researcher: args.max_account_watches_per_researcher,
        },
        mail: args.mail.settings(&args.mail_from),
        signup_resend: args.signup_resend_after,
    });
    run(role, &args.mesh.server, DEFAULT_COLLEGE_PORT).await
}

/// Checks the settings, binds, starts the role and serves until SIGTERM/SIGINT.
async fn run(role: Role, server: &ServerArgs, default_port: u16) -> anyhow::Result<ExitCode> {
    let addr = server
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_port)));
    serve_role(role, addr).await
}

/// Checks the settings, binds `addr`, starts the role and serves until SIGTERM/SIGINT.
pub(crate) async fn serve_role(role: Role, addr: SocketAddr) -> anyhow::Result<ExitCode> {
    role.validate()?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to listen on {addr}"))?;
    // The first line on stdout says where to reach this server; scripts and
    // tests that pass port 0 read it.
    // Installed before the line below: a SIGTERM sent on reading it drains.
    let terminated = grantmesh_server::terminate_signal();
    println!("listening on {}", listener.local_addr()?);
    let node = grantmesh_node::start(role, listener).await?;
    node.run_until(terminated).await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agencies_parse_as_names_with_inclusive_bands() {
        let parsed = parse_agencies("nsf=300000..500000, erc=100000..250000").unwrap();
        assert_eq!(
            parsed.0,
            vec![
                ("nsf".to_owned(), Band::new(300_000, 500_000).unwrap()),
                ("erc".to_owned(), Band::new(100_000, 250_000).unwrap()),
            ]
        );
    }

    #[test]
    fn a_malformed_agency_list_is_refused_saying_what_is_expected() {
        for bad in ["nsf", "nsf=300000", "nsf=a..b", "nsf=500..400", ""] {
            let err = parse_agencies(bad).unwrap_err();
            assert!(
                err.contains("NAME=MIN..MAX") || err.contains("band"),
                "{bad:?}: {err}"
            );
        }
    }
}
