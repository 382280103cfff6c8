//! The soak's mesh: a registry, two colleges and the agency `nsf`, each a
//! child process of the real `grantmesh` binary on TLS (the test CA of
//! `support::tls`), the colleges and the agency on one fresh database; and
//! the resident memory of those processes, sampled from `/proc`.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use grantmesh_discovery::tls::ca;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::support::db::TestDb;
use crate::support::{Proc, assert_eventually, free_port, ids, tls};

/// The service the abusive registrations are made under.
pub const ABUSE_SERVICE: &str = "abuse";
/// The identity the test CA signs for them, as a mesh member gone rogue
/// would hold: its instances are `abuse-N`, replicas of its name.
pub const ABUSE_IDENTITY: &str = "abuse/abuse";
/// The soak's registries let one identity hold this many instances, so the
/// abuser can still fill a service to its limit (1,000) and the soak
/// measures the registry there, as if that many members had registered.
pub const ABUSE_INSTANCES_PER_MEMBER: &str = "2000";

/// A registry of the soak: on the test CA, letting the abuser hold
/// [`ABUSE_INSTANCES_PER_MEMBER`] instances.
pub async fn registry() -> Proc {
    let dir = tls_dir().to_str().expect("a UTF-8 path");
    Proc::registry(&[
        "--tls-dir",
        dir,
        "--max-instances-per-member",
        ABUSE_INSTANCES_PER_MEMBER,
    ])
    .await
}

/// The test CA's directory, with a certificate for [`ABUSE_IDENTITY`] too.
pub fn tls_dir() -> &'static Path {
    tls::member(ABUSE_IDENTITY);
    tls::dir()
}

/// The mesh under soak.
pub struct SoakMesh {
    pub db: TestDb,
    pub registry: Proc,
    pub colleges: Vec<Proc>,
    pub agency: Proc,
    /// The first college's metrics endpoint (`--metrics-listen`).
    pub college_metrics: std::net::SocketAddr,
    /// The web portal (`grantmesh web`) in front of the mesh, and where it listens.
    pub portal: tokio::process::Child,
    pub portal_addr: std::net::SocketAddr,
}

/// Starts `grantmesh web` in front of the registry at `registry`.
async fn start_portal(registry: &str) -> (tokio::process::Child, std::net::SocketAddr) {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_grantmesh"))
        .args([
            "web",
            "--listen",
            "127.0.0.1:0",
            "--registry",
            registry,
            "--ca",
        ])
        .arg(tls_dir().join(ca::CA_CERT))
        .env("GRANTMESH_LOG", "warn")
        .env_remove("GRANTMESH_CA")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("grantmesh web starts");
    let stdout = child.stdout.take().expect("its stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the portal says where it listens")
        .expect("its stdout")
        .expect("a line");
    // "grantmesh web: http://ADDR (mesh dashboard: …)"
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("the portal said {line:?}"));
    (child, addr)
}

impl SoakMesh {
    pub async fn start() -> SoakMesh {
        let dir = tls_dir().to_str().expect("a UTF-8 path").to_owned();
        let db = TestDb::create().await;
        let registry = registry().await;
        let mut colleges = Vec::new();
        let college_metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("an address");
        for n in 0..2 {
            let id = format!("college-{n}");
            let metrics = college_metrics.to_string();
            let mut args = vec![
                "--tls-dir",
                &dir,
                "--database-url",
                &db.url,
                "--instance-id",
                &id,
            ];
            if n == 0 {
                args.extend(["--metrics-listen", &metrics]);
            }
            colleges.push(Proc::member("college", &registry.url(), &args).await);
        }
        let agency = Proc::member(
            "agency",
            &registry.url(),
            &[
                "--tls-dir",
                &dir,
                "--database-url",
                &db.url,
                "--name",
                "nsf",
            ],
        )
        .await;
        let url = registry.url();
        assert_eventually(
            Duration::from_secs(20),
            "both colleges and the agency registered",
            || {
                let url = url.clone();
                async move {
                    ids(&url, "college").await.len() == 2 && ids(&url, "agency").await.len() == 1
                }
            },
        )
        .await;
        let (portal, portal_addr) = start_portal(&registry.url()).await;
        SoakMesh {
            db,
            registry,
            colleges,
            agency,
            college_metrics,
            portal,
            portal_addr,
        }
    }

    /// Every server process: (name, pid).
    pub fn processes(&self) -> Vec<(String, u32)> {
        let mut all = vec![&self.registry];
        all.extend(self.colleges.iter());
        all.push(&self.agency);
        all.into_iter()
            .map(|p| (p.name.clone(), p.child.id().expect("running")))
            .collect()
    }

    /// The servers that have exited, with their status.
    pub fn exited(&mut self) -> Vec<String> {
        let mut all = vec![&mut self.registry];
        all.extend(self.colleges.iter_mut());
        all.push(&mut self.agency);
        let mut exited: Vec<String> = all
            .into_iter()
            .filter_map(|p| match p.child.try_wait() {
                Ok(Some(status)) => Some(format!("{} exited: {status}", p.name)),
                _ => None,
            })
            .collect();
        if let Ok(Some(status)) = self.portal.try_wait() {
            exited.push(format!("the web portal exited: {status}"));
        }
        exited
    }
}

/// Resident memory of `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// User + system CPU time of `pid` in clock ticks (`/proc/PID/stat`).
pub fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0;
    };
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0)
}

/// RSS samples of a set of processes, taken every [`RssLog::EVERY`].
pub struct RssLog {
    pub names: Vec<String>,
    /// (seconds since the log started, RSS in KiB of each process in `names` order).
    pub samples: Mutex<Vec<(f64, Vec<u64>)>>,
}

impl RssLog {
    /// Often enough to catch a minute's peak, rarely enough to cost nothing.
    pub const EVERY: Duration = Duration::from_secs(2);

    /// Samples `processes` until `stop` is cancelled.
    pub fn spawn(processes: Vec<(String, u32)>, stop: CancellationToken) -> std::sync::Arc<RssLog> {
        let log = std::sync::Arc::new(RssLog {
            names: processes.iter().map(|(n, _)| n.clone()).collect(),
            samples: Mutex::new(Vec::new()),
        });
        let writer = std::sync::Arc::clone(&log);
        tokio::spawn(async move {
            let started = Instant::now();
            let mut ticker = tokio::time::interval(RssLog::EVERY);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                let sample = processes
                    .iter()
                    .map(|(_, pid)| rss_kib(*pid).unwrap_or(0))
                    .collect();
                writer
                    .samples
                    .lock()
                    .unwrap()
                    .push((started.elapsed().as_secs_f64(), sample));
            }
        });
        log
    }

    /// The highest RSS (KiB) of process `index` over samples in `from..to` seconds.
    pub fn max_between(&self, index: usize, from: f64, to: f64) -> u64 {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| (from..to).contains(at))
            .map(|(_, rss)| rss[index])
            .max()
            .unwrap_or(0)
    }
}
