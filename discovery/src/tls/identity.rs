//! Who a certificate says its holder is.
//!
//! A mesh certificate carries one SPIFFE-style URI SAN:
//! `spiffe://grantmesh/<service>` for a member that speaks for its whole
//! service (a registry), or `spiffe://grantmesh/<service>/<name>` for one
//! that is somebody in particular: a college instance
//! (`college/college-1`), a funding agency (`agency/nsf`). Clients check
//! the service part when they dial ([`super::Transport::endpoint`]);
//! servers read the whole identity of a caller to decide what it may do:
//! the registry lets `college/college-1` hold the lease of `college-1`
//! only ([`Identity::may_hold`]), a college opens accounts for the agency
//! its caller's certificate names.

use rustls::pki_types::CertificateDer;

use super::TlsError;

/// The URI prefix of every grantmesh identity.
pub const SPIFFE_PREFIX: &str = "spiffe://grantmesh/";

/// Longest service or name in an identity: a DNS label's length, so either
/// fits a host name and a table column.
const MAX_PART: usize = 63;

/// A service and, for members that are somebody in particular, a name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    service: String,
    name: Option<String>,
}

impl Identity {
    /// `spiffe://grantmesh/<service>`: speaks for the whole service.
    pub fn service(service: &str) -> Result<Self, TlsError> {
        check_part("service name", service)?;
        Ok(Self {
            service: service.to_owned(),
            name: None,
        })
    }

    /// `spiffe://grantmesh/<service>/<name>`: one instance or one agency.
    pub fn named(service: &str, name: &str) -> Result<Self, TlsError> {
        check_part("service name", service)?;
        check_part("name", name)?;
        Ok(Self {
            service: service.to_owned(),
            name: Some(name.to_owned()),
        })
    }

    /// `college/college-1` or `registry`, as [`std::fmt::Display`] writes it.
    pub fn parse(text: &str) -> Result<Self, TlsError> {
        match text.split_once('/') {
            Some((service, name)) => Self::named(service, name),
            None => Self::service(text),
        }
    }

    /// The identity a URI SAN names, if it is a grantmesh one.
    pub fn from_uri(uri: &str) -> Option<Self> {
        Self::parse(uri.strip_prefix(SPIFFE_PREFIX)?).ok()
    }

    pub fn service_name(&self) -> &str {
        &self.service
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The URI SAN of a certificate for this identity.
    pub fn uri(&self) -> String {
        format!("{SPIFFE_PREFIX}{self}")
    }

    /// The stem of its certificate and key files: `college.college-1` (or
    /// `registry`), so several identities share one directory.
    pub fn file_stem(&self) -> String {
        match &self.name {
            Some(name) => format!("{}.{name}", self.service),
            None => self.service.clone(),
        }
    }

    /// Whether this identity may hold the registry lease of instance
    /// `instance_id` of `service`: a member of that service with a name, and
    /// the instance is that name (`college/college-1` → `college-1`) or one
    /// replica of it (`agency/nsf` → `nsf-2`). A certificate that names no
    /// one (a registry's) registers nothing.
    pub fn may_hold(&self, service: &str, instance_id: &str) -> bool {
        self.service == service
            && self.name.as_deref().is_some_and(|name| {
                instance_id == name
                    || instance_id
                        .strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with('-'))
            })
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{}/{name}", self.service),
            None => f.write_str(&self.service),
        }
    }
}

/// Parts of an identity: lowercase letters, digits and dashes, as DNS labels
/// and registry names take them.
fn check_part(what: &str, part: &str) -> Result<(), TlsError> {
    let ok = !part.is_empty()
        && part.len() <= MAX_PART
        && !part.starts_with('-')
        && part
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(TlsError::Invalid(format!(
            "{what} {part:?} must be 1 to {MAX_PART} lowercase letters, digits or dashes, not starting with a dash"
        )))
    }
}

/// The grantmesh identity a certificate names, from its URI SAN.
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<Identity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => Identity::from_uri(uri),
        _ => None,
    })
}

/// The identity of the mesh member making `request`, from its verified
/// client certificate; `None` for a caller without one (a researcher,
/// grpcurl) or on a plaintext connection.
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Option<Identity> {
    let certs = request.peer_certs()?;
    identity_of(certs.first()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_reads_back_from_its_uri() {
        for text in ["registry", "college/college-1", "agency/nsf"] {
            let identity = Identity::parse(text).unwrap();
            assert_eq!(Identity::from_uri(&identity.uri()), Some(identity.clone()));
            assert_eq!(identity.to_string(), text);
        }
        assert_eq!(Identity::from_uri("spiffe://other/college"), None);
        assert_eq!(Identity::from_uri("spiffe://grantmesh/college/a/b"), None);
    }

    #[test]
    fn names_are_lowercase_letters_digits_and_dashes() {
        for bad in ["", "College", "a b", "a.b", "-a", "a/b", &"x".repeat(64)] {
            assert!(Identity::named("college", bad).is_err(), "{bad:?}");
        }
        assert!(Identity::named("college", "college-1").is_ok());
    }

    #[test]
    fn a_named_identity_holds_its_own_instance_and_its_replicas_only() {
        let college = Identity::named("college", "college-1").unwrap();
        assert!(college.may_hold("college", "college-1"));
        assert!(college.may_hold("college", "college-1-b"));
        assert!(!college.may_hold("college", "college-2"));
        assert!(!college.may_hold("college", "college-10"));
        assert!(!college.may_hold("college", "college"));
        assert!(!college.may_hold("agency", "college-1"));
        let service_wide = Identity::service("college").unwrap();
        assert!(!service_wide.may_hold("college", "college-1"));
    }
}
