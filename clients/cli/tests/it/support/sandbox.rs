//! Meshes served in this process, started by `grantmesh_node::start` — the
//! function the binary and `grantmesh dev` use — on loopback ports.
//!
//! [`Mesh`] is a registry, two colleges and an agency on a fresh database;
//! the free functions start single roles for tests that arrange a mesh of
//! their own.

use std::time::Duration;

use grantmesh_node::config::{
    AgencySettings, CollegeSettings, MailSettings, MeshSettings, RegistrySettings, Role,
    ServerSettings, StoreSettings,
};
use grantmesh_node::{Band, Lease, Node};
use grantmesh_proto::v1::*;
use grantmesh_proto::{AgencyClient, CollegeClient};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use uuid::Uuid;

use super::db::TestDb;
use super::{assert_eventually, authed, ids, keys};

/// A day as long as a real one: accounts that must not expire during a test.
pub const DAY: Duration = Duration::from_secs(86_400);

/// The band of `nsf`, the sandbox's agency.
/// `nsf`'s band in the sandbox: 3,000.00 to 5,000.00 (minor units
/// 300000..=500000), the amounts the tests' requests are written in.
pub fn nsf_band() -> Band {
    Band::new(300_000, 500_000).unwrap()
}

/// The agencies sandbox colleges open accounts for: `nsf`, and `erc`, which
/// `grants/agencies.rs` starts with a band of its own.
pub fn known_agencies() -> Vec<(String, Band)> {
    vec![
        ("nsf".to_owned(), nsf_band()),
        ("erc".to_owned(), Band::new(100_000, 200_000).unwrap()),
    ]
}

async fn start(role: Role) -> Node {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    grantmesh_node::start(role, listener)
        .await
        .unwrap_or_else(|err| panic!("the node starts: {err:#}"))
}

/// A server of `identity` (`registry`, `college/college-0`) registering as
/// `id` (the name its certificate gives it when `None`), on TLS with the
/// test CA's certificate.
fn server(identity: &str, id: Option<&str>) -> ServerSettings {
    ServerSettings {
        instance_id: id.map(str::to_owned),
        tls: Some(super::tls::paths(identity)),
        ..ServerSettings::default()
    }
}

/// Tests renew twice a second, so a missed beat shows well within the TTL.
fn mesh(registries: &[&str]) -> MeshSettings {
    MeshSettings {
        lease: Lease::new(Duration::from_secs(3), Duration::from_millis(500)).unwrap(),
        ..MeshSettings::new(registries.iter().map(|r| r.to_string()).collect())
    }
}

/// The store at `database_url`, with the colleges' token keys test
/// processes also get.
pub fn store(database_url: &str) -> StoreSettings {
    StoreSettings {
        database_url: database_url.to_owned(),
        pool_size: StoreSettings::DEFAULT_POOL_SIZE,
        keys: keys(),
    }
}

/// The store at `database_url`, with an agency's token keys (the public half).
pub fn agency_store(database_url: &str) -> StoreSettings {
    StoreSettings {
        keys: super::agency_keys(),
        ..store(database_url)
    }
}

/// A registry with no warm-up (tests watch a registry they have just
/// started) and the given default TTL.
pub async fn registry(id: &str, default_ttl: Duration, warmup: Duration) -> Node {
    start(Role::Registry(RegistrySettings {
        server: server("registry", Some(id)),
        default_ttl,
        warmup,
        ..RegistrySettings::default()
    }))
    .await
}

/// A registry (no warm-up, 60 s default TTL) on which one identity may
/// hold `instances` instances: for tests that register many from one certificate.
pub async fn registry_holding(id: &str, instances: usize) -> Node {
    start(Role::Registry(RegistrySettings {
        server: server("registry", Some(id)),
        default_ttl: Duration::from_secs(60),
        warmup: Duration::ZERO,
        capacity: grantmesh_registry::Capacity {
            instances_per_member: instances,
            ..grantmesh_registry::Capacity::default()
        },
        ..RegistrySettings::default()
    }))
    .await
}

/// A college registered with `registries`.
pub async fn college(
    database_url: &str,
    id: &str,
    day_length: Duration,
    registries: &[&str],
) -> Node {
    start(Role::College(CollegeSettings {
        server: server(&super::tls::college(id), None),
        day_length,
        agencies: known_agencies(),
        mail: MailSettings::outbox(super::outbox()),
        ..CollegeSettings::new(mesh(registries), store(database_url))
    }))
    .await
}

/// An agency called `name` (instance id `NAME`, as its certificate
/// `agency/NAME` says) registered with `registry`.
pub async fn agency(database_url: &str, registry: &str, name: &str, band: Band) -> Node {
    let mut settings = AgencySettings::new(name, mesh(&[registry]), agency_store(database_url));
    settings.server = server(&format!("agency/{name}"), None);
    settings.band = band;
    settings.open_timeout = Duration::from_secs(2);
    settings.reconcile_every = Duration::from_millis(500);
    start(Role::Agency(settings)).await
}

/// A registry, two colleges and the agency `nsf` (default band) on one fresh database.
pub struct Mesh {
    pub db: TestDb,
    pub registry: Node,
    pub colleges: Vec<Node>,
    pub agency: Node,
}

impl Mesh {
    pub async fn start(day_length: Duration) -> Mesh {
        let db = TestDb::create().await;
        let registry = registry("registry", Duration::from_secs(3), Duration::ZERO).await;
        let mut colleges = Vec::new();
        for n in 0..2 {
            let id = format!("college-{n}");
            colleges.push(college(&db.url, &id, day_length, &[&registry.url]).await);
        }
        let agency = agency(&db.url, &registry.url, "nsf", nsf_band()).await;
        assert_eventually(
            Duration::from_secs(5),
            "both colleges registered",
            || async { ids(&registry.url, "college").await.len() == 2 },
        )
        .await;
        Mesh {
            db,
            registry,
            colleges,
            agency,
        }
    }

    pub async fn college(&self, n: usize) -> CollegeClient<Channel> {
        CollegeClient::new(super::tls::channel(&self.colleges[n].url).await)
    }

    /// College `n`, called by agency `agency` (presenting its certificate).
    pub async fn college_as_agency(&self, n: usize, agency: &str) -> CollegeClient<Channel> {
        CollegeClient::new(
            super::tls::channel_as(&self.colleges[n].url, &format!("agency/{agency}")).await,
        )
    }

    pub async fn agency(&self) -> AgencyClient<Channel> {
        AgencyClient::new(super::tls::channel(&self.agency.url).await)
    }

    /// Registers and logs in a researcher; returns (id, token).
    pub async fn researcher(&self, name: &str) -> (String, String) {
        let mut college = self.college(0).await;
        let email = format!("{name}-{}@university.edu", Uuid::new_v4().simple());
        let login = super::sign_up(&mut college, name, &email, "correct horse battery").await;
        (login.researcher.unwrap().researcher_id, login.token)
    }

    /// Opens an account directly with a credential of the sandbox agency
    /// whose band holds `award`.
    pub async fn open(&self, investigator: &str, award: i64, days: u32) -> Account {
        let (agency, _) = known_agencies()
            .into_iter()
            .find(|(_, band)| (band.min()..=band.max()).contains(&award))
            .unwrap_or_else(|| panic!("no sandbox agency grants an award of {award}"));
        let open = OpenAccountRequest {
            proposal_id: Uuid::new_v4().to_string(),
            agency: agency.clone(),
            principal_investigator_id: investigator.into(),
            title: "Test account".into(),
            award_minor: award,
            duration_days: days,
            currency: "USD".into(),
        };
        let credential = super::agency_credential(&agency, &open);
        self.college_as_agency(0, &agency)
            .await
            .open_account(authed(open, &credential))
            .await
            .unwrap()
            .into_inner()
    }

    /// Checks the journal invariants in the database and returns (balance, journal sum, entries).
    pub async fn check_invariants(&self, account: &str) -> (i64, i64, i64) {
        let client = self.db.client().await;
        let id: Uuid = account.parse().unwrap();
        let row = client
            .query_one(
                "SELECT a.award, a.balance, COALESCE(SUM(w.amount), 0)::bigint, COUNT(w.id),
                        COALESCE(MIN(w.balance_after), a.award)
                 FROM accounts a LEFT JOIN withdrawals w ON w.account_id = a.id
                 WHERE a.id = $1 GROUP BY a.id",
                &[&id],
            )
            .await
            .unwrap();
        let (award, balance, sum, count, lowest): (i64, i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        assert_eq!(
            balance,
            award - sum,
            "balance must equal award minus the journal's sum"
        );
        assert!(balance >= 0 && lowest >= 0, "never negative");
        let keys: i64 = client
            .query_one(
                "SELECT COUNT(DISTINCT idempotency_key) FROM withdrawals WHERE account_id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(keys, count, "each idempotency key applied once");
        (balance, sum, count)
    }
}
