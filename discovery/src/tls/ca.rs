//! The mesh's own certificate authority, made with `rcgen`.
//!
//! `grantmesh ca init` makes a CA key and certificate in a directory;
//! `grantmesh ca issue --service college --name college-1` signs a leaf for
//! one member in it. A leaf names its holder as a SPIFFE-style URI SAN
//! (`spiffe://grantmesh/college/college-1`, see [`super::Identity`]), carries the DNS
//! names and IP addresses it is reached at (checked by every client, as any
//! TLS server name), and is good for both ends of a connection: servers
//! present it, and mesh members present it as their client certificate.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use super::{Identity, TlsError};

/// A CA lives ten years: it is the root every member trusts, and replacing
/// it means re-issuing every leaf.
const CA_VALIDITY: Duration = Duration::days(3650);
/// A leaf lives 90 days, the common choice for automated rotation: long
/// enough to run for a season, short enough that a stolen key ages out.
pub const LEAF_VALIDITY: Duration = Duration::days(90);
/// Clocks of the machines in a mesh disagree a little.
const BACKDATE: Duration = Duration::minutes(5);

/// File names in a TLS directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";

/// The certificate and key files named `stem` in `dir` (`registry`, or an
/// identity's [`Identity::file_stem`]).
pub fn leaf_files(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    )
}

/// Makes a CA in `dir` (created if missing). Refuses to overwrite one.
pub fn init(dir: &Path) -> Result<PathBuf, TlsError> {
    std::fs::create_dir_all(dir).map_err(|err| TlsError::io(dir, err))?;
    let cert_path = dir.join(CA_CERT);
    if cert_path.exists() {
        return Err(TlsError::Invalid(format!(
            "{} already exists; a CA is made once (remove it to start over, then issue every leaf again)",
            cert_path.display()
        )));
    }
    let key = KeyPair::generate().map_err(TlsError::rcgen)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "grantmesh");
    name.push(DnType::CommonName, "grantmesh mesh CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    let cert = params.self_signed(&key).map_err(TlsError::rcgen)?;
    write_private(&dir.join(CA_KEY), &key.serialize_pem())?;
    write(&cert_path, &cert.pem())?;
    Ok(cert_path)
}

/// What a leaf certificate is for.
#[derive(Clone, Debug)]
pub struct LeafRequest {
    /// Who it names (`registry`, `agency/nsf`, `college/college-1`, …).
    pub identity: Identity,
    /// DNS names it is reached at.
    pub dns: Vec<String>,
    /// IP addresses it is reached at.
    pub ips: Vec<IpAddr>,
    /// How long it is valid from now.
    pub validity: Duration,
}

impl LeafRequest {
    /// A leaf for `identity` (`registry`, `college/college-1`), reachable as
    /// `localhost` and 127.0.0.1. Panics on an identity that
    /// [`Identity::parse`] refuses: for names written in code.
    pub fn loopback(identity: &str) -> Self {
        Self::loopback_for(Identity::parse(identity).expect("a valid identity"))
    }

    /// A leaf for `identity`, reachable as `localhost` and 127.0.0.1.
    pub fn loopback_for(identity: Identity) -> Self {
        Self {
            identity,
            dns: vec!["localhost".to_owned()],
            ips: vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([0u16; 8])],
            validity: LEAF_VALIDITY,
        }
    }
}

/// The mesh CA, read from its directory and ready to sign: what `ca issue`
/// and the issuer (`grantmesh ca serve`) sign with.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl Authority {
    /// The CA in `ca_dir` (`ca.pem` and `ca.key`).
    pub fn open(ca_dir: &Path) -> Result<Self, TlsError> {
        let ca_pem = read(&ca_dir.join(CA_CERT))?;
        let ca_key = KeyPair::from_pem(&read(&ca_dir.join(CA_KEY))?).map_err(TlsError::rcgen)?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(TlsError::rcgen)?;
        Ok(Self { issuer, ca_pem })
    }

    /// The CA's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A leaf for `request` over `public_key` (whose holder proved it has
    /// the private half, as a request's signature does): its PEM and when
    /// it expires.
    pub fn sign(
        &self,
        request: &LeafRequest,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<(String, OffsetDateTime), TlsError> {
        let params = leaf_params(request)?;
        let not_after = params.not_after;
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(TlsError::rcgen)?;
        Ok((cert.pem(), not_after))
    }
}

/// What every leaf says: its identity (URI SAN and common name), the names
/// and addresses it is reached at, good for both ends of a connection, for
/// `request.validity` from now (backdated a little for skewed clocks).
fn leaf_params(request: &LeafRequest) -> Result<CertificateParams, TlsError> {
    let mut params = named_params(request)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + request.validity;
    Ok(params)
}

/// Who a leaf names and where it is reached: all a certificate request says.
fn named_params(request: &LeafRequest) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "grantmesh");
    name.push(DnType::CommonName, request.identity.to_string());
    params.distinguished_name = name;
    let uri = request.identity.uri();
    params.subject_alt_names.push(SanType::URI(
        uri.as_str().try_into().map_err(TlsError::rcgen)?,
    ));
    for dns in &request.dns {
        params.subject_alt_names.push(SanType::DnsName(
            dns.as_str().try_into().map_err(TlsError::rcgen)?,
        ));
    }
    for ip in &request.ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    Ok(params)
}

/// Signs a leaf with the CA in `ca_dir` and writes it (and its new key) into
/// `out_dir` as `STEM.pem` / `STEM.key` (the identity's
/// [`Identity::file_stem`]); returns the two paths.
pub fn issue(
    ca_dir: &Path,
    request: &LeafRequest,
    out_dir: &Path,
) -> Result<(PathBuf, PathBuf), TlsError> {
    let authority = Authority::open(ca_dir)?;
    let key = KeyPair::generate().map_err(TlsError::rcgen)?;
    let (cert, _) = authority.sign(request, &key)?;
    write_leaf(
        out_dir,
        &request.identity.file_stem(),
        &key.serialize_pem(),
        &cert,
    )
}

/// Writes a leaf's key and certificate into `out_dir` as `STEM.key` and
/// `STEM.pem`; returns (certificate, key) paths.
pub fn write_leaf(
    out_dir: &Path,
    stem: &str,
    key_pem: &str,
    cert_pem: &str,
) -> Result<(PathBuf, PathBuf), TlsError> {
    std::fs::create_dir_all(out_dir).map_err(|err| TlsError::io(out_dir, err))?;
    let (cert_path, key_path) = leaf_files(out_dir, stem);
    write_pair(&cert_path, &key_path, key_pem, cert_pem)?;
    Ok((cert_path, key_path))
}

/// Writes a key (mode 0600) and its certificate over `key_path` and
/// `cert_path`. Key first, then certificate: a reloading server that sees
/// the new certificate always finds its key beside it.
pub fn write_pair(
    cert_path: &Path,
    key_path: &Path,
    key_pem: &str,
    cert_pem: &str,
) -> Result<(), TlsError> {
    write_private(key_path, key_pem)?;
    write(cert_path, cert_pem)
}

/// Writes a public file (a certificate) through a rename.
pub fn write_public(path: &Path, contents: &str) -> Result<(), TlsError> {
    write(path, contents)
}

/// Most DNS names and addresses one certificate request may ask for.
pub const MAX_REQUEST_NAMES: usize = 16;

/// A fresh key and a certificate request (PKCS#10, PEM) for `request`:
/// what a member sends the issuer. The key stays with the member.
pub fn request(request: &LeafRequest) -> Result<(KeyPair, String), TlsError> {
    let key = KeyPair::generate().map_err(TlsError::rcgen)?;
    let csr = named_params(request)?
        .serialize_request(&key)
        .map_err(TlsError::rcgen)?
        .pem()
        .map_err(TlsError::rcgen)?;
    Ok((key, csr))
}

/// What a certificate request asks for, its signature checked (the sender
/// holds the private key): the leaf to sign, valid for `validity`, and the
/// public key to sign it over. Exactly one grantmesh identity as its URI,
/// at most [`MAX_REQUEST_NAMES`] DNS names and addresses, nothing else.
pub fn read_request(
    csr_pem: &str,
    validity: Duration,
) -> Result<(LeafRequest, rcgen::PublicKey), TlsError> {
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|err| TlsError::Invalid(format!("not a valid certificate request: {err}")))?;
    let mut identities = Vec::new();
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    for san in &csr.params.subject_alt_names {
        match san {
            SanType::URI(uri) => {
                identities.push(Identity::from_uri(uri.as_str()).ok_or_else(|| {
                    TlsError::Invalid(format!("{:?} is not a grantmesh identity", uri.as_str()))
                })?)
            }
            SanType::DnsName(name) => dns.push(name.as_str().to_owned()),
            SanType::IpAddress(ip) => ips.push(*ip),
            other => {
                return Err(TlsError::Invalid(format!(
                    "a request may name an identity, DNS names and addresses only, not {other:?}"
                )));
            }
        }
    }
    let [identity] = <[Identity; 1]>::try_from(identities).map_err(|found| {
        TlsError::Invalid(format!(
            "a request names exactly one grantmesh identity (spiffe://grantmesh/…), not {}",
            found.len()
        ))
    })?;
    if dns.len() + ips.len() > MAX_REQUEST_NAMES {
        return Err(TlsError::Invalid(format!(
            "a request names at most {MAX_REQUEST_NAMES} DNS names and addresses"
        )));
    }
    let request = LeafRequest {
        identity,
        dns,
        ips,
        validity,
    };
    Ok((request, csr.public_key))
}

/// The identity, DNS names and addresses of the leaf in `cert_pem`, and
/// when it expires: what a member asks for again when it renews.
pub fn describe_leaf(cert_pem: &str) -> Result<(LeafRequest, OffsetDateTime), TlsError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|err| TlsError::Invalid(format!("not a certificate: {err}")))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|err| TlsError::Invalid(format!("not a certificate: {err}")))?;
    let mut identity = None;
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::URI(uri) => {
                    identity = identity.or_else(|| Identity::from_uri(uri));
                }
                x509_parser::extensions::GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*bytes).expect("4 bytes"))),
                    16 => ips.push(IpAddr::from(
                        <[u8; 16]>::try_from(*bytes).expect("16 bytes"),
                    )),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let identity = identity
        .ok_or_else(|| TlsError::Invalid("the certificate names no grantmesh identity".into()))?;
    let validity = parsed.validity();
    let lifetime = validity.not_after.to_datetime() - validity.not_before.to_datetime();
    Ok((
        LeafRequest {
            identity,
            dns,
            ips,
            validity: lifetime - BACKDATE,
        },
        validity.not_after.to_datetime(),
    ))
}

/// The expiry of the leaf for `request` already in `out_dir` when it can be
/// kept: signed by the CA in `ca_dir`, naming exactly the request's identity,
/// DNS names and addresses, with its key beside it, and valid for longer
/// than `renew_within` from now. `None` when it must be issued (again).
///
/// This is what makes issuing idempotent (`grantmesh ca issue --renew-within`):
/// a start-up step that runs again into a live cluster leaves its
/// certificates alone instead of re-issuing them under every server.
pub fn reusable_leaf(
    ca_dir: &Path,
    request: &LeafRequest,
    out_dir: &Path,
    renew_within: Duration,
) -> Option<OffsetDateTime> {
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, UnixTime};

    let (cert_path, key_path) = leaf_files(out_dir, &request.identity.file_stem());
    if !key_path.is_file() {
        return None;
    }
    let leaf = CertificateDer::from_pem_file(&cert_path).ok()?;
    let ca = CertificateDer::from_pem_file(ca_dir.join(CA_CERT)).ok()?;

    // Signed by this CA and valid now: webpki's own check, as a peer makes it.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).ok()?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        super::provider(),
    )
    .build()
    .ok()?;
    let name = match (request.dns.first(), request.ips.first()) {
        (Some(dns), _) => rustls::pki_types::ServerName::try_from(dns.clone()).ok()?,
        (None, Some(ip)) => rustls::pki_types::ServerName::from(*ip),
        (None, None) => return None,
    };
    verifier
        .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
        .ok()?;

    // Exactly the names asked for, and not about to expire.
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    let mut uris = Vec::new();
    for name in &parsed.subject_alternative_name().ok()??.value.general_names {
        match name {
            x509_parser::extensions::GeneralName::DNSName(d) => dns.push((*d).to_owned()),
            x509_parser::extensions::GeneralName::IPAddress(bytes) => ips.push(match bytes.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).ok()?),
                16 => IpAddr::from(<[u8; 16]>::try_from(*bytes).ok()?),
                _ => return None,
            }),
            x509_parser::extensions::GeneralName::URI(u) => uris.push((*u).to_owned()),
            _ => {}
        }
    }
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v.dedup();
        v
    };
    let mut wanted_ips = request.ips.clone();
    wanted_ips.sort();
    wanted_ips.dedup();
    ips.sort();
    ips.dedup();
    if uris != [request.identity.uri()]
        || sorted(dns) != sorted(request.dns.clone())
        || ips != wanted_ips
    {
        return None;
    }
    let not_after = parsed.validity().not_after.to_datetime();
    (not_after - OffsetDateTime::now_utc() > renew_within).then_some(not_after)
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|err| TlsError::io(path, err))
}

/// Writes through a temporary file and a rename, so a reader sees the old
/// file or the new one, never half of one.
fn write(path: &Path, contents: &str) -> Result<(), TlsError> {
    write_mode(path, contents, 0o644)
}

fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    write_mode(path, contents, 0o600)
}

fn write_mode(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|err| TlsError::io(&tmp, err))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|err| TlsError::io(&tmp, err))?;
    std::fs::rename(&tmp, path).map_err(|err| TlsError::io(path, err))
}
