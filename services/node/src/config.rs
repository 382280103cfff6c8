//! Typed settings of every role, each checking itself where it is defined.
//!
//! The binary's flags, `grantmesh dev`, the tests and the benches all build
//! these types, so a rule such as "the heartbeat is shorter than the TTL" or
//! "the smallest award is at most the largest" is written once, here. The
//! small types ([`Lease`], [`Band`]) can only be made valid; the role
//! settings are checked by their `validate` method, which [`crate::start`]
//! calls before it binds anything to the store.

use std::collections::HashMap;
use std::time::Duration;

use grantmesh_auth::Keys;
use grantmesh_discovery::tls::TlsPaths;

/// A setting that cannot work, with a message naming it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

type Result<T> = std::result::Result<T, ConfigError>;

/// How an instance keeps its registration alive: it renews every
/// `heartbeat_interval`, and the registry removes it `ttl` after the last renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    ttl: Duration,
    heartbeat_interval: Duration,
}

impl Lease {
    /// A lease whose TTL the registry accepts and whose heartbeat comes
    /// well within it.
    pub fn new(ttl: Duration, heartbeat_interval: Duration) -> Result<Self> {
        check_ttl("ttl", ttl)?;
        if heartbeat_interval.is_zero() || heartbeat_interval >= ttl {
            return Err(ConfigError::new(format!(
                "heartbeat interval ({heartbeat_interval:?}) must be more than zero and shorter than the ttl ({ttl:?})"
            )));
        }
        Ok(Self {
            ttl,
            heartbeat_interval,
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }
}

impl Default for Lease {
    fn default() -> Self {
        Self {
            ttl: grantmesh_discovery::DEFAULT_TTL,
            heartbeat_interval: grantmesh_discovery::DEFAULT_HEARTBEAT_INTERVAL,
        }
    }
}

fn check_ttl(name: &str, ttl: Duration) -> Result<()> {
    let (min, max) = grantmesh_registry::TTL_RANGE;
    if !(min..=max).contains(&ttl) {
        return Err(ConfigError::new(format!(
            "{name} {ttl:?} is outside {min:?}..={max:?}"
        )));
    }
    Ok(())
}

/// The awards an agency grants, in minor units, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Band {
    min: i64,
    max: i64,
}

impl Band {
    /// The default band of a grantmesh agency: 300,000.00 to 500,000.00 in
    /// its currency (minor units of a currency with two decimals).
    pub const DEFAULT: Band = Band {
        min: 30_000_000,
        max: 50_000_000,
    };

    pub fn new(min: i64, max: i64) -> Result<Self> {
        if min <= 0 || min > max {
            return Err(ConfigError::new(format!(
                "the award band is not usable: the smallest award ({min}) must be more than zero and at most the largest ({max})"
            )));
        }
        Ok(Self { min, max })
    }

    pub const fn min(&self) -> i64 {
        self.min
    }

    pub const fn max(&self) -> i64 {
        self.max
    }
}

impl Default for Band {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What every server role has.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// Id to register under. `None`: on TLS the name in the certificate
    /// (`college/college-1` → `college-1`), in plaintext `SERVICE-<random>`.
    pub instance_id: Option<String>,
    /// How long in-flight calls get to finish on shutdown.
    pub grace_period: Duration,
    /// This server's TLS files (the CA, its certificate and key); `None`
    /// serves plaintext, which the binary allows only with `--insecure`.
    pub tls: Option<TlsPaths>,
    /// How many calls it handles at once before refusing more.
    pub limits: grantmesh_server::Limits,
    /// Where to serve Prometheus metrics over plain HTTP (`GET /metrics`);
    /// `None` serves none.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The certificate issuer (`https://issuer:7300`) this server renews its
    /// certificate from before it expires; `None` keeps the files as they
    /// are (renewed by whoever wrote them).
    pub issuer: Option<String>,
}

/// Longest instance id accepted, so ids stay readable in listings.
const MAX_INSTANCE_ID: usize = 128;

impl ServerSettings {
    fn validate(&self) -> Result<()> {
        self.limits.check().map_err(ConfigError::new)?;
        if let Some(tls) = &self.tls
            && tls.identity.is_none()
        {
            return Err(ConfigError::new(format!(
                "a server needs its own certificate and key beside the CA {}",
                tls.ca.display()
            )));
        }
        if let Some(id) = &self.instance_id
            && (id.trim().is_empty() || id.len() > MAX_INSTANCE_ID)
        {
            return Err(ConfigError::new(format!(
                "the instance id must be 1 to {MAX_INSTANCE_ID} characters"
            )));
        }
        Ok(())
    }

    pub(crate) fn instance_id(&self, service: &str) -> String {
        self.instance_id
            .clone()
            .unwrap_or_else(|| grantmesh_discovery::new_instance_id(service))
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            issuer: None,
            instance_id: None,
            grace_period: Duration::from_secs(10),
            tls: None,
            limits: grantmesh_server::Limits::default(),
            metrics_listen: None,
        }
    }
}

/// How a role that joins the mesh (agency, college) registers.
#[derive(Clone, Debug)]
pub struct MeshSettings {
    /// Registry replicas to register with and discover through.
    pub registries: Vec<String>,
    /// URL other instances dial; `http://<bound address>` when `None`.
    pub advertise: Option<String>,
    pub lease: Lease,
    /// How long to keep serving after deregistering on shutdown.
    pub drain_delay: Duration,
}

impl MeshSettings {
    /// Registers with `registries` on the default lease and drain delay.
    pub fn new(registries: Vec<String>) -> Self {
        Self {
            registries,
            advertise: None,
            lease: Lease::default(),
            drain_delay: Duration::from_millis(500),
        }
    }

    /// `tls`: whether this member speaks TLS, so its registries must be
    /// `https://` URLs (and `http://` ones without).
    fn validate(&self, tls: bool) -> Result<()> {
        if self.registries.is_empty() {
            return Err(ConfigError::new("no registry is named to register with"));
        }
        let scheme = if tls { "https://" } else { "http://" };
        if let Some(url) = self.registries.iter().find(|url| !url.starts_with(scheme)) {
            return Err(ConfigError::new(if tls {
                format!("registry {url} is not an https:// URL, and this member speaks TLS")
            } else {
                format!(
                    "registry {url} is not an http:// URL, and this member runs without TLS (--insecure)"
                )
            }));
        }
        if let Some(url) = &self.advertise
            && !url.starts_with(scheme)
            && url.contains("://")
        {
            return Err(ConfigError::new(format!(
                "the advertised URL {url} must start with {scheme}"
            )));
        }
        Ok(())
    }
}

/// Where a role keeps its data and how it tells callers apart.
#[derive(Clone)]
pub struct StoreSettings {
    /// The central store: a PostgreSQL URL, or `sqlite:PATH` for the embedded store.
    pub database_url: String,
    /// Connections this instance may hold to the store.
    pub pool_size: usize,
    /// The token keys: a college's sign and verify, an agency's only verify.
    pub keys: Keys,
}

/// Most connections one instance may hold; beyond this a pool only queues
/// inside PostgreSQL, whose default `max_connections` is 100.
const MAX_POOL_SIZE: usize = 256;

impl StoreSettings {
    /// The default pool size, which the benchmarks found enough for 64 clients per instance.
    pub const DEFAULT_POOL_SIZE: usize = 16;

    fn validate(&self) -> Result<()> {
        if self.database_url.trim().is_empty() {
            return Err(ConfigError::new("no database URL is given"));
        }
        if !(1..=MAX_POOL_SIZE).contains(&self.pool_size) {
            return Err(ConfigError::new(format!(
                "the pool size must be 1 to {MAX_POOL_SIZE}"
            )));
        }
        Ok(())
    }
}

/// A registry replica.
#[derive(Clone, Debug)]
pub struct RegistrySettings {
    pub server: ServerSettings,
    /// TTL for instances that register without one.
    pub default_ttl: Duration,
    /// How long after start-up `Watch` holds back its first snapshot.
    pub warmup: Duration,
    /// How many services and instances it keeps.
    pub capacity: grantmesh_registry::Capacity,
    /// How its Watch streams are shared out by caller.
    pub watches: grantmesh_server::peers::Split,
}

impl RegistrySettings {
    pub fn validate(&self) -> Result<()> {
        self.server.validate()?;
        check_ttl("the default ttl", self.default_ttl)?;
        if self.capacity.services == 0
            || self.capacity.instances_per_service == 0
            || self.capacity.instances_per_member == 0
        {
            return Err(ConfigError::new(
                "--max-services, --max-instances-per-service and --max-instances-per-member must be at least 1",
            ));
        }
        let watches = &self.watches;
        if watches.total == 0 || watches.per_peer == 0 {
            return Err(ConfigError::new(
                "--max-watches and --max-watches-per-peer must be at least 1",
            ));
        }
        if watches.reserved_for_members >= watches.total {
            return Err(ConfigError::new(format!(
                "--watches-reserved-for-members ({}) must be less than --max-watches ({})",
                watches.reserved_for_members, watches.total
            )));
        }
        Ok(())
    }
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            server: ServerSettings::default(),
            default_ttl: grantmesh_discovery::DEFAULT_TTL,
            warmup: Duration::from_millis(1500),
            capacity: grantmesh_registry::Capacity::default(),
            watches: grantmesh_registry::default_watches(),
        }
    }
}

/// Longest agency name, so it fits a label and a table column.
const MAX_AGENCY_NAME: usize = 64;

/// The name an agency runs under unless configured otherwise.
pub const DEFAULT_AGENCY_NAME: &str = "grantmesh-agency";

fn check_agency_name(name: &str) -> Result<()> {
    let trimmed = name.trim();
    if trimmed.is_empty() || trimmed.len() > MAX_AGENCY_NAME || trimmed != name {
        return Err(ConfigError::new(format!(
            "the agency name must be 1 to {MAX_AGENCY_NAME} characters without surrounding spaces"
        )));
    }
    Ok(())
}

/// A funding agency.
#[derive(Clone)]
pub struct AgencySettings {
    pub server: ServerSettings,
    pub mesh: MeshSettings,
    pub store: StoreSettings,
    /// The agency's name; instances with the same name are one agency.
    pub name: String,
    pub band: Band,
    /// The currency it awards in (ISO 4217).
    pub currency: grantmesh_proto::money::Currency,
    /// How long one attempt to have a college open an account may take.
    pub open_timeout: Duration,
    /// How often accepted proposals still without an account are retried.
    pub reconcile_every: Duration,
}

impl AgencySettings {
    /// An agency called `name` with the default band and timings.
    pub fn new(name: impl Into<String>, mesh: MeshSettings, store: StoreSettings) -> Self {
        Self {
            server: ServerSettings::default(),
            mesh,
            store,
            name: name.into(),
            band: Band::default(),
            currency: grantmesh_proto::money::Currency::default_currency(),
            open_timeout: Duration::from_secs(5),
            reconcile_every: Duration::from_secs(2),
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.server.validate()?;
        self.mesh.validate(self.server.tls.is_some())?;
        self.store.validate()?;
        check_agency_name(&self.name)?;
        if self.open_timeout.is_zero() || self.reconcile_every.is_zero() {
            return Err(ConfigError::new(
                "the open timeout and the reconcile interval must be more than zero",
            ));
        }
        Ok(())
    }

    pub(crate) fn labels(&self) -> HashMap<String, String> {
        [(grantmesh_agency::NAME_LABEL.to_owned(), self.name.clone())].into()
    }
}

/// A college.
#[derive(Clone)]
pub struct CollegeSettings {
    pub server: ServerSettings,
    pub mesh: MeshSettings,
    pub store: StoreSettings,
    /// How long one day of an account's duration lasts (simulations use a second).
    pub day_length: Duration,
    /// The agencies this college opens accounts for, each with the band of
    /// awards it grants; any other agency, or award, is refused.
    pub agencies: Vec<(String, Band)>,
    /// How many `WatchAccount` streams it serves, and to whom.
    pub watches: grantmesh_college::WatchLimits,
    /// Where sign-up codes are mailed.
    pub mail: MailSettings,
    /// The least time between two sign-up messages to one email.
    pub signup_resend: Duration,
}

/// How a college mails sign-up codes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum MailSettings {
    /// Not configured: a college refuses to start like this.
    #[default]
    Unset,
    /// Through an SMTP relay (`smtp://host:port`, `smtps://…`,
    /// `smtp://…?tls=required`; credentials in the URL), as `from`.
    Smtp { url: String, from: String },
    /// Into a directory, one file a message (`grantmesh dev`'s mail
    /// catcher, tests).
    Outbox {
        dir: std::path::PathBuf,
        from: String,
    },
}

impl MailSettings {
    /// An outbox at `dir`, from the default sender.
    pub fn outbox(dir: impl Into<std::path::PathBuf>) -> Self {
        Self::Outbox {
            dir: dir.into(),
            from: grantmesh_mail::DEFAULT_FROM.to_owned(),
        }
    }

    /// The mailer these settings describe (within a Tokio runtime).
    pub fn mailer(&self) -> std::result::Result<grantmesh_mail::Mailer, ConfigError> {
        let mailer = match self {
            Self::Unset => return Err(ConfigError::new(Self::UNSET)),
            Self::Smtp { url, from } => grantmesh_mail::Mailer::smtp(url, from),
            Self::Outbox { dir, from } => grantmesh_mail::Mailer::outbox(dir, from),
        };
        mailer.map_err(|err| ConfigError::new(format!("mail: {err}")))
    }

    const UNSET: &str = "a college mails sign-up codes: give it an SMTP relay (--smtp-url \
         smtp://relay:25) or an outbox directory (--mail-outbox DIR)";
}

impl CollegeSettings {
    /// A college that knows one agency, [`DEFAULT_AGENCY_NAME`] with the
    /// default band: what an agency started with no name or band is.
    pub fn new(mesh: MeshSettings, store: StoreSettings) -> Self {
        Self {
            server: ServerSettings::default(),
            mesh,
            store,
            day_length: Duration::from_secs(24 * 60 * 60),
            agencies: vec![(DEFAULT_AGENCY_NAME.to_owned(), Band::DEFAULT)],
            watches: grantmesh_college::WatchLimits::default(),
            mail: MailSettings::Unset,
            signup_resend: grantmesh_auth::signup::RESEND_AFTER,
        }
    }

    /// The known agencies as the College takes them: name → inclusive band.
    pub(crate) fn agency_bands(&self) -> HashMap<String, (i64, i64)> {
        self.agencies
            .iter()
            .map(|(name, band)| (name.clone(), (band.min(), band.max())))
            .collect()
    }

    pub fn validate(&self) -> Result<()> {
        self.server.validate()?;
        self.mesh.validate(self.server.tls.is_some())?;
        self.store.validate()?;
        if !self.store.keys.can_sign() {
            return Err(ConfigError::new(
                "a college signs researchers' tokens: it needs the token signing key (token.key), not only its public half",
            ));
        }
        if self.mail == MailSettings::Unset {
            return Err(ConfigError::new(MailSettings::UNSET));
        }
        if self.day_length.is_zero() {
            return Err(ConfigError::new("the day length must be more than zero"));
        }
        let watches = &self.watches;
        if watches.total == 0 || watches.per_peer == 0 || watches.per_researcher == 0 {
            return Err(ConfigError::new(
                "--max-account-watches, --max-account-watches-per-peer and \
                 --max-account-watches-per-researcher must be at least 1",
            ));
        }
        if self.agencies.is_empty() {
            return Err(ConfigError::new(
                "a college must know at least one agency to open accounts for",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (name, _) in &self.agencies {
            check_agency_name(name)?;
            if !seen.insert(name.as_str()) {
                return Err(ConfigError::new(format!(
                    "agency {name:?} is listed more than once; give each agency one band"
                )));
            }
        }
        Ok(())
    }
}

/// Any role, as [`crate::start`] takes it.
#[derive(Clone)]
pub enum Role {
    Registry(RegistrySettings),
    Agency(AgencySettings),
    College(CollegeSettings),
    Issuer(IssuerSettings),
}

/// The certificate issuer (`grantmesh ca serve`).
#[derive(Clone)]
pub struct IssuerSettings {
    /// Its own certificate (`issuer`, issued from the CA at start) and the CA.
    pub server: ServerSettings,
    /// The directory with the CA's certificate and key.
    pub ca_dir: std::path::PathBuf,
    pub tokens: grantmesh_issuer::JoinTokens,
    /// How long the leaves it signs live.
    pub leaf_validity: Duration,
}

impl IssuerSettings {
    pub fn validate(&self) -> Result<()> {
        self.server.validate()?;
        if self.server.tls.is_none() {
            return Err(ConfigError::new("the issuer serves TLS only"));
        }
        if self.leaf_validity < grantmesh_issuer::MIN_LEAF_VALIDITY {
            return Err(ConfigError::new(format!(
                "the leaf validity must be at least {:?}",
                grantmesh_issuer::MIN_LEAF_VALIDITY
            )));
        }
        if self.tokens.is_empty() {
            return Err(ConfigError::new(
                "the issuer knows no join token: give it --join-tokens FILE (lines of `college/* TOKEN`, `agency/nsf TOKEN`)",
            ));
        }
        Ok(())
    }
}

impl Role {
    pub fn validate(&self) -> Result<()> {
        match self {
            Role::Registry(settings) => settings.validate(),
            Role::Agency(settings) => settings.validate(),
            Role::College(settings) => settings.validate(),
            Role::Issuer(settings) => settings.validate(),
        }
    }

    /// The server settings every role has.
    pub fn server(&self) -> &ServerSettings {
        match self {
            Role::Registry(settings) => &settings.server,
            Role::Agency(settings) => &settings.server,
            Role::College(settings) => &settings.server,
            Role::Issuer(settings) => &settings.server,
        }
    }

    /// The service name this role registers under.
    pub fn service(&self) -> &'static str {
        match self {
            Role::Registry(_) => grantmesh_registry::SERVICE,
            Role::Agency(_) => grantmesh_agency::SERVICE,
            Role::College(_) => grantmesh_college::SERVICE,
            Role::Issuer(_) => grantmesh_discovery::tls::renew::ISSUER_SERVICE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_needs_a_heartbeat_shorter_than_its_ttl() {
        let second = Duration::from_secs(1);
        assert!(Lease::new(3 * second, second).is_ok());
        let err = Lease::new(second, second).unwrap_err().to_string();
        assert!(err.contains("shorter than the ttl"), "{err}");
        assert!(Lease::new(3 * second, Duration::ZERO).is_err());
    }

    #[test]
    fn a_lease_ttl_must_be_one_the_registry_accepts() {
        let err = Lease::new(Duration::from_secs(7200), Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside"), "{err}");
    }

    #[test]
    fn a_band_runs_from_a_positive_minimum_to_a_maximum_at_least_as_large() {
        assert_eq!(Band::new(1, 1).unwrap().max(), 1);
        assert!(Band::new(0, 10).is_err());
        let err = Band::new(500, 400).unwrap_err().to_string();
        assert!(err.contains("(500)") && err.contains("(400)"), "{err}");
        // 300,000.00 to 500,000.00: the brief's band, in minor units.
        assert_eq!(Band::default(), Band::new(30_000_000, 50_000_000).unwrap());
    }

    #[test]
    fn a_registry_refuses_a_default_ttl_it_would_not_grant() {
        let settings = RegistrySettings {
            default_ttl: Duration::from_millis(10),
            ..RegistrySettings::default()
        };
        assert!(settings.validate().is_err());
        assert!(RegistrySettings::default().validate().is_ok());
    }

    fn store() -> StoreSettings {
        StoreSettings {
            database_url: "sqlite:/tmp/x.db".into(),
            pool_size: 4,
            keys: Keys::signing(
                grantmesh_auth::TokenKeyPair::generate()
                    .private_pem
                    .as_bytes(),
                Duration::from_secs(60),
            )
            .unwrap(),
        }
    }

    #[test]
    fn an_agency_name_is_short_and_not_blank() {
        let mesh = MeshSettings::new(vec!["http://127.0.0.1:7000".into()]);
        assert!(
            AgencySettings::new("nsf", mesh.clone(), store())
                .validate()
                .is_ok()
        );
        for bad in ["", " nsf", &"x".repeat(65)] {
            assert!(
                AgencySettings::new(bad, mesh.clone(), store())
                    .validate()
                    .is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_college_knows_at_least_one_agency_each_named_once() {
        let mesh = MeshSettings::new(vec!["http://127.0.0.1:7000".into()]);
        let mut college = CollegeSettings::new(mesh, store());
        assert_eq!(
            college.agencies,
            vec![(DEFAULT_AGENCY_NAME.to_owned(), Band::DEFAULT)]
        );
        let err = college.validate().unwrap_err().to_string();
        assert!(
            err.contains("--smtp-url") && err.contains("--mail-outbox"),
            "a college without a way to mail codes is refused: {err}"
        );
        college.mail = MailSettings::outbox("/tmp/outbox");
        assert!(college.validate().is_ok());
        college.agencies.clear();
        let err = college.validate().unwrap_err().to_string();
        assert!(err.contains("at least one agency"), "{err}");
        college.agencies = vec![("nsf".into(), Band::DEFAULT), ("".into(), Band::DEFAULT)];
        assert!(college.validate().is_err());
        college.agencies = vec![("nsf".into(), Band::DEFAULT), ("nsf".into(), Band::DEFAULT)];
        let err = college.validate().unwrap_err().to_string();
        assert!(err.contains("more than once"), "{err}");
    }

    #[test]
    fn a_mesh_member_needs_a_registry_a_pool_and_a_day() {
        let mut college = CollegeSettings::new(MeshSettings::new(Vec::new()), store());
        college.mail = MailSettings::outbox("/tmp/outbox");
        assert!(
            college
                .validate()
                .unwrap_err()
                .to_string()
                .contains("registry")
        );
        college.mesh.registries = vec!["http://127.0.0.1:7000".into()];
        assert!(college.validate().is_ok());
        college.store.pool_size = 0;
        assert!(
            college
                .validate()
                .unwrap_err()
                .to_string()
                .contains("pool size")
        );
        college.store.pool_size = 4;
        college.day_length = Duration::ZERO;
        assert!(college.validate().is_err());
    }
}
