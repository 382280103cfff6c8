//! `grantmesh dev`: the whole mesh in one process, for trying grantmesh out.
//!
//! A registry, two agencies with different names and bands, and two
//! colleges, each on its own port and registered through the real registry
//! exactly as separate processes would be — every node is started by
//! [`grantmesh_node::start`], like the role subcommands. With no
//! `DATABASE_URL` the nodes share an embedded SQLite store in the user's data
//! directory, so nothing has to be installed; with one, they use PostgreSQL.
//! The token key pair is made once and kept beside the store (colleges sign
//! with its private half, agencies verify with its public half), so a
//! login outlives a restart. Ctrl-C drains and stops every node.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use grantmesh_auth::Keys;
use grantmesh_discovery::tls::{Identity, TlsPaths};
use grantmesh_node::config::{
    AgencySettings, CollegeSettings, MailSettings, MeshSettings, RegistrySettings, Role,
    ServerSettings,
};
use grantmesh_node::{Band, Node, StoreSettings};
use grantmesh_proto::money::Currency;
use tokio::net::TcpListener;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where the embedded store and the dev signing keys live
    /// (default: the user's data directory, e.g. ~/.local/share/grantmesh).
    #[arg(long, env = "GRANTMESH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Start over: delete the embedded store (researchers, accounts, journal) first.
    #[arg(long)]
    fresh: bool,
    /// Use this PostgreSQL server instead of the embedded store.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Address every node listens on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// The registry's port; agencies listen on +100 and +101, colleges on
    /// +200 and +201. 0 picks free ports for every node. Default: 7000, or
    /// 0 with --simulate (so it runs beside a `grantmesh dev` you already have).
    #[arg(long)]
    base_port: Option<u16>,
    /// How long one day of an account's duration lasts (default 24h; 1s with --simulate).
    #[arg(long, value_parser = humantime::parse_duration)]
    day_length: Option<Duration>,
    /// Run `grantmesh simulate` against the mesh, print its summary, stop the
    /// mesh and exit with the simulation's status.
    #[arg(long)]
    simulate: bool,
    /// With --simulate: how many projects.
    #[arg(long, requires = "simulate", default_value_t = 8)]
    projects: u32,
    /// With --simulate: students per funded project.
    #[arg(long, requires = "simulate", default_value_t = 3)]
    students: u32,
    /// With --simulate: the seed of every random choice.
    #[arg(long, requires = "simulate")]
    seed: Option<u64>,
    /// With --simulate: print the summary as JSON.
    #[arg(long, requires = "simulate")]
    json: bool,
    /// Run in plaintext instead of TLS (by default dev makes its own CA and
    /// certificates in the data directory).
    #[arg(long)]
    insecure: bool,
    /// Do not start the web portal (it listens on the base port + 80 otherwise).
    #[arg(long)]
    no_web: bool,
    /// Do not serve Prometheus metrics (each node serves them over plain
    /// HTTP on the base port + 90 and up otherwise).
    #[arg(long)]
    no_metrics: bool,
}

/// A simulated day: accounts of a few days expire within seconds.
const SIMULATED_DAY: Duration = Duration::from_secs(1);
const DEFAULT_DAY: Duration = Duration::from_secs(24 * 60 * 60);
const DEFAULT_BASE_PORT: u16 = 7000;
/// The web portal listens on the base port + this (7080 by default).
const WEB_PORT_OFFSET: u16 = 80;
/// Nodes serve their metrics on the base port + this and up (7090 for the
/// registry, 7091–7092 for the agencies, 7093–7094 for the colleges): one
/// port each, as each node has its own metrics. Plain HTTP, on dev's host.
const METRICS_PORT_OFFSET: u16 = 90;

/// The two agencies of the dev mesh: different names, different bands.
/// The dev agencies: name, currency, band in its minor units (nsf: USD
/// 300,000.00–500,000.00, the default band; erc: EUR 100,000.00–250,000.00).
const AGENCIES: [(&str, &str, i64, i64); 2] = [
    ("nsf", "USD", 30_000_000, 50_000_000),
    ("erc", "EUR", 10_000_000, 25_000_000),
];

/// The currency of dev agency `name`.
fn currency_of(name: &str) -> Currency {
    let code = AGENCIES
        .iter()
        .find(|(agency, ..)| *agency == name)
        .map_or(grantmesh_proto::money::DEFAULT_CURRENCY, |(_, code, ..)| {
            *code
        });
    Currency::parse(code).expect("the dev agencies' currencies are ISO 4217 codes")
}
/// How many colleges share the store.
const COLLEGES: usize = 2;
/// Shorter than a production drain: in one process nobody else is routing to us.
const DEV_DRAIN_DELAY: Duration = Duration::from_millis(200);
/// Researchers' access tokens live as long as anywhere (the CLI and portal
/// renew them with the session's refresh token).
const DEV_TOKEN_TTL: Duration = grantmesh_auth::tokens::MAX_TOKEN_TTL;

/// A running dev mesh.
pub struct DevMesh {
    /// The CA every node's certificate comes from (`None` with --insecure).
    pub ca: Option<PathBuf>,
    pub registry: Node,
    pub agencies: Vec<(String, Band, Node)>,
    pub colleges: Vec<Node>,
    /// The store every node uses (a `sqlite:` path or a PostgreSQL URL).
    pub database_url: String,
    /// The mail catcher: the colleges keep what they mail here
    /// (`DATA_DIR/mail`), `grantmesh mail` and the portal's /dev/mail read it.
    pub outbox: PathBuf,
    /// The researcher portal and mesh dashboard (`None` with --no-web or --simulate).
    pub web: Option<DevWeb>,
}

/// The web portal of a dev mesh.
pub struct DevWeb {
    /// `http://HOST:PORT`.
    pub url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl DevWeb {
    async fn start(
        addr: SocketAddr,
        registry: &str,
        ca: Option<&Path>,
        outbox: &Path,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!("failed to listen on {addr} for the web portal (another grantmesh dev running? try --base-port or --no-web)")
        })?;
        let url = format!("http://{}", listener.local_addr()?);
        let transport = crate::transport::for_urls([registry], ca)?;
        let web = grantmesh_web::Web::new(grantmesh_web::WebSettings {
            dev_mail: Some(outbox.to_owned()),
            ..grantmesh_web::WebSettings::new(vec![registry.to_owned()], transport)
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(web.serve(listener, async move {
            let _ = stopped.await;
        }));
        Ok(Self { url, stop, served })
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.served
            .await
            .context("the web portal panicked")?
            .context("the web portal failed")
    }
}

impl DevMesh {
    /// Starts every node and waits until the registry lists them all.
    pub async fn start(args: &DevArgs) -> anyhow::Result<DevMesh> {
        let data_dir = match &args.data_dir {
            Some(dir) => dir.clone(),
            None => directories::ProjectDirs::from("", "", "grantmesh")
                .context("cannot tell where your data directory is; pass --data-dir")?
                .data_dir()
                .to_owned(),
        };
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("failed to create {}", data_dir.display()))?;
        let database_url = match &args.database_url {
            Some(url) => url.clone(),
            None => embedded_store(&data_dir, args.fresh)?,
        };
        let tls_dir = data_dir.join(crate::transport::DEV_TLS_DIR);
        let outbox = data_dir.join(crate::mail::DEV_MAIL_DIR);
        let ca = if args.insecure {
            None
        } else {
            Some(dev_certificates(&tls_dir)?)
        };
        let base_port = args
            .base_port
            .unwrap_or(if args.simulate { 0 } else { DEFAULT_BASE_PORT });
        let port = |offset: u16| {
            let port = if base_port == 0 {
                0
            } else {
                base_port
                    .checked_add(offset)
                    .context("--base-port is too high")?
            };
            anyhow::Ok(SocketAddr::new(args.host, port))
        };
        // `identity`: whose certificate it serves with (`registry`,
        // `college/college-1`); `metrics`: its metrics port, after METRICS_PORT_OFFSET.
        let server = |identity: &str, id: Option<String>, metrics: u16| {
            let metrics_listen = if args.no_metrics {
                None
            } else {
                Some(port(METRICS_PORT_OFFSET + metrics)?)
            };
            anyhow::Ok(ServerSettings {
                instance_id: id,
                tls: ca.as_ref().map(|_| {
                    let identity = Identity::parse(identity).expect("a dev identity");
                    TlsPaths::in_dir(&tls_dir, Some(&identity.file_stem()))
                }),
                metrics_listen,
                ..ServerSettings::default()
            })
        };
        let (signing, verifying) = dev_keys(&data_dir)?;
        let college_store = StoreSettings {
            database_url: database_url.clone(),
            pool_size: StoreSettings::DEFAULT_POOL_SIZE,
            keys: signing,
        };
        let agency_store = StoreSettings {
            keys: verifying,
            ..college_store.clone()
        };
        let day_length = args.day_length.unwrap_or(if args.simulate {
            SIMULATED_DAY
        } else {
            DEFAULT_DAY
        });

        let registry = start(
            Role::Registry(RegistrySettings {
                server: server("registry", None, 0)?,
                // Nothing was registered before this process: no warm-up to wait out.
                warmup: Duration::ZERO,
                ..RegistrySettings::default()
            }),
            port(0)?,
        )
        .await?;
        let mesh = MeshSettings {
            drain_delay: DEV_DRAIN_DELAY,
            ..MeshSettings::new(vec![registry.url.clone()])
        };
        // The colleges know both dev agencies and their bands.
        let known = AGENCIES
            .into_iter()
            .map(|(name, _, min, max)| Ok((name.to_owned(), Band::new(min, max)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut colleges = Vec::new();
        for n in 0..COLLEGES {
            let settings = CollegeSettings {
                server: server(
                    &format!("college/college-{}", n + 1),
                    Some(format!("college-{}", n + 1)),
                    3 + n as u16,
                )?,
                day_length,
                agencies: known.clone(),
                mail: MailSettings::outbox(&outbox),
                ..CollegeSettings::new(mesh.clone(), college_store.clone())
            };
            colleges.push(start(Role::College(settings), port(200 + n as u16)?).await?);
        }
        let mut agencies = Vec::new();
        for (n, (name, _, min, max)) in AGENCIES.into_iter().enumerate() {
            let band = Band::new(min, max)?;
            let mut settings = AgencySettings::new(name, mesh.clone(), agency_store.clone());
            settings.server = server(&format!("agency/{name}"), None, 1 + n as u16)?;
            settings.band = band;
            settings.currency = currency_of(name);
            let node = start(Role::Agency(settings), port(100 + n as u16)?).await?;
            agencies.push((name.to_owned(), band, node));
        }
        let mut dev = DevMesh {
            ca,
            registry,
            agencies,
            colleges,
            database_url,
            outbox,
            web: None,
        };
        dev.wait_until_listed().await?;
        if !args.no_web && !args.simulate {
            dev.web = Some(
                DevWeb::start(
                    port(WEB_PORT_OFFSET)?,
                    &dev.registry.url,
                    dev.ca.as_deref(),
                    &dev.outbox,
                )
                .await?,
            );
        }
        Ok(dev)
    }

    async fn wait_until_listed(&self) -> anyhow::Result<()> {
        let expected = self.agencies.len() + self.colleges.len();
        let transport =
            crate::transport::for_urls([self.registry.url.as_str()], self.ca.as_deref())?;
        let channel = transport
            .channel(
                &self.registry.url,
                Some(grantmesh_discovery::REGISTRY_SERVICE),
            )
            .await
            .context("failed to reach the dev registry")?;
        let mut client = grantmesh_proto::RegistryClient::new(channel);
        for _ in 0..200 {
            let listed = client
                .list_instances(grantmesh_proto::v1::ListInstancesRequest::default())
                .await?
                .into_inner()
                .instances
                .len();
            if listed >= expected {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("the dev nodes did not all register within 5 s")
    }

    /// Stops the web portal, the agencies and colleges (each deregisters
    /// and drains), then the registry.
    pub async fn stop(self) -> anyhow::Result<()> {
        if let Some(web) = self.web {
            web.stop().await?;
        }
        let members = self
            .agencies
            .into_iter()
            .map(|(_, _, node)| node)
            .chain(self.colleges)
            .map(Node::stop);
        for result in futures::future::join_all(members).await {
            result?;
        }
        self.registry.stop().await
    }

    /// What a person sees when the mesh is up: where everything listens and
    /// commands that work when pasted.
    pub fn banner(&self) -> String {
        let registry = self.registry.addr();
        let mut out = format!(
            "grantmesh dev: the whole mesh in this process\n  store      {}\n\n",
            describe_store(&self.database_url)
        );
        out += &format!("  registry   {}\n", self.registry.url);
        for (name, band, node) in &self.agencies {
            let currency = currency_of(name);
            out += &format!(
                "  agency     {}   {name}: awards {}–{}\n",
                node.url,
                currency.format(band.min()),
                currency.number(band.max())
            );
        }
        for node in &self.colleges {
            out += &format!("  college    {}   {}\n", node.url, node.instance_id);
        }
        let scraped: Vec<&Node> = std::iter::once(&self.registry)
            .chain(self.agencies.iter().map(|(_, _, node)| node))
            .chain(&self.colleges)
            .filter(|node| node.metrics_url.is_some())
            .collect();
        if !scraped.is_empty() {
            out +=
                "  metrics    Prometheus text format, plain HTTP (--no-metrics turns them off):\n";
            for node in scraped {
                out += &format!(
                    "             {}   {}\n",
                    node.metrics_url.as_deref().unwrap_or_default(),
                    node.instance_id
                );
            }
        }
        if let Some(web) = &self.web {
            out += &format!(
                "  web        {}   researcher portal; mesh dashboard at {}/mesh\n",
                web.url, web.url
            );
        }
        let (nsf_name, nsf, _) = &self.agencies[0];
        let flag = if self.registry.url == crate::transport::DEFAULT_REGISTRY {
            String::new()
        } else {
            format!(" --registry {}", self.registry.url)
        };
        let grpcurl = match &self.ca {
            Some(ca) => {
                out += &format!(
                    "  mesh CA    {} (the CLI finds it; for other tools: export GRANTMESH_CA={})\n",
                    ca.display(),
                    ca.display()
                );
                format!("grpcurl -cacert {}", ca.display())
            }
            None => "grpcurl -plaintext".to_owned(),
        };
        out += &format!(
            "  mail       {} (the mail catcher: messages are printed here too; grantmesh mail lists them)\n",
            self.outbox.display()
        );
        let outbox = if crate::mail::dev_outbox().as_deref() == Some(self.outbox.as_path()) {
            String::new()
        } else {
            format!(" --outbox {}", self.outbox.display())
        };
        // Started with `cargo run`, the binary is not on PATH yet: say where it is.
        let on_path = match std::env::current_exe() {
            Ok(exe) if !on_path(&exe) => match exe.parent() {
                Some(dir) => format!(
                    "\nThis grantmesh is not on your PATH; in another shell first:\n\
                     \x20 export PATH=\"{}:$PATH\"\n",
                    dir.display()
                ),
                None => String::new(),
            },
            _ => String::new(),
        };
        out += &on_path;
        out += &format!(
            "\nTry, in another shell:\n\
             \x20 grantmesh instances{flag}\n\
             \x20 grantmesh signup{flag} --name Ada --email ada@uni.edu --password 'correct horse battery'\n\
             \x20 grantmesh verify-email{flag} --email ada@uni.edu --code \"$(grantmesh mail{outbox} --to ada@uni.edu --code)\"\n\
             \x20   (asks for the password you signed up with; that logs you in)\n\
             \x20 grantmesh propose --title 'Protein folding' --amount {} --days 365 --agency {nsf_name}\n\
             \x20 grantmesh accounts\n\
             \x20 {grpcurl} {registry} list\n\
             \x20 {grpcurl} -d '{{\"service\":\"college\"}}' {registry} grantmesh.v1.Registry/ListInstances\n\
             \nCtrl-C drains and stops every node.\n",
            currency_of(nsf_name).number((nsf.min() + nsf.max()) / 2),
        );
        out
    }
}

/// The mail catcher's console half: prints each message the colleges keep
/// in `outbox` from now on, as it arrives.
async fn print_mail(outbox: PathBuf) {
    let read = || grantmesh_mail::outbox::read(&outbox).unwrap_or_default();
    let mut seen: std::collections::HashSet<PathBuf> =
        read().into_iter().map(|letter| letter.file).collect();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        for letter in read() {
            if seen.insert(letter.file.clone()) {
                let body: String = letter
                    .body
                    .trim_end()
                    .lines()
                    .map(|line| format!("  | {line}\n"))
                    .collect();
                println!(
                    "mail to {} (kept in {}): {}\n{body}",
                    letter.to,
                    outbox.display(),
                    letter.subject
                );
            }
        }
    }
}

async fn start(role: Role, addr: SocketAddr) -> anyhow::Result<Node> {
    let service = role.service();
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("failed to listen on {addr} for the {service} (another grantmesh dev running? try --base-port)")
    })?;
    grantmesh_node::start(role, listener).await
}

/// The dev mesh's CA and one certificate per member in `tls_dir` (the
/// registry, each agency, each college instance), made on first use (and
/// one again when it is missing or about to expire); returns the CA
/// certificate's path.
fn dev_certificates(tls_dir: &Path) -> anyhow::Result<PathBuf> {
    use grantmesh_discovery::tls::ca;
    let ca_cert = tls_dir.join(ca::CA_CERT);
    if !ca_cert.exists() {
        ca::init(tls_dir).context("failed to make the dev mesh CA")?;
    }
    let members = std::iter::once("registry".to_owned())
        .chain(AGENCIES.iter().map(|(name, ..)| format!("agency/{name}")))
        .chain((1..=COLLEGES).map(|n| format!("college/college-{n}")));
    for member in members {
        let request = ca::LeafRequest::loopback(&member);
        let (cert, _) = ca::leaf_files(tls_dir, &request.identity.file_stem());
        let fresh_enough = std::fs::metadata(&cert)
            .and_then(|m| m.modified())
            .is_ok_and(|made| made.elapsed().unwrap_or_default() < DEV_CERT_RENEW_AFTER);
        if !fresh_enough {
            ca::issue(tls_dir, &request, tls_dir)
                .with_context(|| format!("failed to issue the dev certificate of {member}"))?;
        }
    }
    Ok(ca_cert)
}

/// Whether `exe` is the `grantmesh` a shell would find on PATH.
fn on_path(exe: &Path) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    let exe = std::fs::canonicalize(exe).unwrap_or_else(|_| exe.to_owned());
    std::env::split_paths(&path)
        .any(|dir| std::fs::canonicalize(dir.join("grantmesh")).is_ok_and(|found| found == exe))
}

/// Dev certificates are issued again well before their 90 days run out.
const DEV_CERT_RENEW_AFTER: Duration = Duration::from_secs(60 * 24 * 60 * 60);

/// The embedded store's URL in `data_dir`, emptied first when `fresh`.
fn embedded_store(data_dir: &Path, fresh: bool) -> anyhow::Result<String> {
    let path = data_dir.join("grantmesh.db");
    if fresh {
        for suffix in ["", "-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{suffix}", path.display()));
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(err)
                        .with_context(|| format!("failed to remove {}", file.display()));
                }
            }
        }
    }
    Ok(format!("sqlite:{}", path.display()))
}

fn describe_store(url: &str) -> String {
    match url.strip_prefix("sqlite:") {
        Some(path) => format!("embedded SQLite at {path}"),
        None => "PostgreSQL (DATABASE_URL)".to_owned(),
    }
}

/// The colleges' and the agencies' token keys, from the pair made once in
/// `data_dir` (`token.key` mode 0600, `token.pub`) so tokens survive a restart.
fn dev_keys(data_dir: &Path) -> anyhow::Result<(Keys, Keys)> {
    crate::ca::make_token_key(data_dir).context("failed to make the dev token key")?;
    let read = |file: &str| {
        let path = data_dir.join(file);
        std::fs::read(&path).with_context(|| format!("failed to read {}", path.display()))
    };
    let signing = Keys::signing(&read(crate::ca::TOKEN_KEY)?, DEV_TOKEN_TTL)
        .context("the dev token key is not usable (delete it to make a new one)")?;
    let verifying = Keys::verifying(&read(crate::ca::TOKEN_PUBLIC_KEY)?)
        .context("the dev token public key is not usable")?;
    Ok((signing, verifying))
}

pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let dev = DevMesh::start(&args).await?;
    if args.simulate {
        let mut simulation = crate::simulate::SimulateArgs::for_mesh(
            dev.registry.url.clone(),
            dev.database_url.clone(),
        );
        simulation.ca = dev.ca.clone();
        simulation.outbox = Some(dev.outbox.clone());
        simulation.projects = args.projects;
        simulation.students = args.students;
        simulation.seed = args.seed;
        simulation.json = args.json;
        eprintln!(
            "grantmesh dev: mesh up on {} ({}); simulating {} projects",
            dev.registry.url,
            describe_store(&dev.database_url),
            args.projects
        );
        let outcome = crate::simulate::run(simulation).await;
        dev.stop().await?;
        return outcome;
    }
    // Before the line scripts wait for: a SIGTERM sent on reading it drains.
    let terminated = grantmesh_server::terminate_signal();
    print!("{}", dev.banner());
    // Scripts wait for this line.
    println!("mesh is up");
    let printing = tokio::spawn(print_mail(dev.outbox.clone()));
    terminated.await;
    printing.abort();
    eprintln!("stopping: every node deregisters and drains");
    dev.stop().await?;
    Ok(ExitCode::SUCCESS)
}
