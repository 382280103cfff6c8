//! The credential a funding agency sends with each `OpenAccount`.
//!
//! An agency proves who it is twice over, with nothing shared: its TLS
//! client certificate names it (`spiffe://grantmesh/agency/<name>`), and it
//! signs a credential (an ES256 JWT) with that certificate's own private key
//! ([`AgencySigner`]), which the college checks against the public key in
//! the very certificate the connection was made with ([`agency_call`]). So
//! only the holder of the agency's key can open accounts in its name, and
//! one agency cannot sign as another.
//!
//! The credential binds the terms the account is opened with: proposal,
//! award, principal investigator and duration ([`AccountTerms`]). It is for
//! a college (`aud`), lives [`AGENCY_CREDENTIAL_TTL`], and carries a fresh
//! `jti` the college records, so it opens at most one account, once.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use tonic::Status;
use uuid::Uuid;

use crate::{LEEWAY_SECS, bearer, unix_secs};

/// How long an agency's credential for one `OpenAccount` call stays valid.
///
/// Longer than one attempt to open an account (the agency's `--open-timeout`,
/// 5 s by default, plus clock skew and the verifier's leeway), so an honest
/// call never arrives expired; short, so the colleges' record of used
/// credentials ([`AgencyCall::expires_at`]) stays small.
pub const AGENCY_CREDENTIAL_TTL: Duration = Duration::from_secs(60);

/// The audience of agency credentials: the College's `OpenAccount`.
const COLLEGE_AUDIENCE: &str = "college";
const AGENCY: &str = "agency";

/// What an account is opened with, which the credential binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountTerms<'a> {
    pub proposal: &'a str,
    pub award: i64,
    /// The award's ISO 4217 currency code.
    pub currency: &'a str,
    pub principal_investigator: &'a str,
    pub duration_days: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct AgencyClaims {
    /// The agency's name, as its certificate gives it.
    sub: String,
    /// Always "agency".
    kind: String,
    /// Always [`COLLEGE_AUDIENCE`].
    aud: String,
    proposal: String,
    award: i64,
    /// Absent from credentials signed before currencies: then USD.
    #[serde(default = "default_currency")]
    currency: String,
    principal_investigator: String,
    duration_days: u32,
    iat: u64,
    exp: u64,
    /// A fresh id per credential; colleges record it so it is used once.
    jti: Uuid,
}

fn default_currency() -> String {
    "USD".to_owned()
}

/// An agency's call to open an account, as its verified credential says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgencyCall {
    /// The agency its certificate and credential name.
    pub agency: String,
    /// The credential's unique id, to be recorded so that it is used once.
    pub jti: Uuid,
    /// When the college stops accepting the credential (its `exp` plus the
    /// verifier's leeway); its record of use may be forgotten after that.
    pub expires_at: SystemTime,
}

/// Signs credentials with the agency's TLS private key (PKCS#8 PEM, P-256,
/// as `grantmesh ca issue` makes it), read at each signing so that a
/// renewed certificate's key is used as soon as it is on disk.
#[derive(Clone, Debug)]
pub struct AgencySigner {
    key_file: PathBuf,
}

impl AgencySigner {
    pub fn new(key_file: PathBuf) -> Self {
        Self { key_file }
    }

    /// A credential of `agency` for opening one account on `terms`, once,
    /// within [`AGENCY_CREDENTIAL_TTL`]. Sign a new one for every attempt.
    pub fn credential(&self, agency: &str, terms: &AccountTerms<'_>) -> Result<String, String> {
        let pem = std::fs::read(&self.key_file)
            .map_err(|err| format!("{}: {err}", self.key_file.display()))?;
        let der = PrivatePkcs8KeyDer::from_pem_slice(&pem).map_err(|err| {
            format!(
                "{}: not a PKCS#8 private key: {err}",
                self.key_file.display()
            )
        })?;
        sign(
            &EncodingKey::from_ec_der(der.secret_pkcs8_der()),
            agency,
            terms,
        )
    }
}

fn sign(key: &EncodingKey, agency: &str, terms: &AccountTerms<'_>) -> Result<String, String> {
    let now = SystemTime::now();
    let claims = AgencyClaims {
        sub: agency.to_owned(),
        kind: AGENCY.to_owned(),
        aud: COLLEGE_AUDIENCE.to_owned(),
        proposal: terms.proposal.to_owned(),
        award: terms.award,
        currency: terms.currency.to_owned(),
        principal_investigator: terms.principal_investigator.to_owned(),
        duration_days: terms.duration_days,
        iat: unix_secs(now),
        exp: unix_secs(now + AGENCY_CREDENTIAL_TTL),
        jti: Uuid::new_v4(),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, key)
        .map_err(|err| format!("failed to sign the agency's credential: {err}"))
}

/// The agency that makes `request` to open an account on `terms`: its
/// client certificate names `agency/<name>`, and its credential is signed
/// by that certificate's key, names the same agency, and binds exactly
/// these terms.
///
/// No certificate, or a missing, forged, expired or malformed credential,
/// is UNAUTHENTICATED; a certificate of anyone but an agency, a credential
/// naming another agency, or one issued for other terms is PERMISSION_DENIED.
/// Whether the credential was used before is for the caller to check, with
/// [`AgencyCall::jti`], in its store.
pub fn agency_call<T>(
    request: &tonic::Request<T>,
    terms: &AccountTerms<'_>,
) -> Result<AgencyCall, Status> {
    let cert = request
        .peer_certs()
        .and_then(|certs| certs.first().cloned())
        .ok_or_else(|| {
            Status::unauthenticated(
                "opening research accounts needs a funding agency's mesh certificate (agency/<name>)",
            )
        })?;
    let identity = grantmesh_discovery::tls::identity_of(&cert);
    let name = match identity.as_ref() {
        Some(identity) if identity.service_name() == AGENCY => identity.name(),
        _ => None,
    };
    let Some(name) = name else {
        return Err(Status::permission_denied(format!(
            "only a funding agency may open research accounts; your certificate names {}",
            identity.map_or_else(|| "no grantmesh identity".to_owned(), |i| i.to_string())
        )));
    };
    let token = bearer(request)?;
    let key = public_key(&cert)?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.leeway = LEEWAY_SECS;
    validation.set_audience(&[COLLEGE_AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "sub", "aud"]);
    let claims = jsonwebtoken::decode::<AgencyClaims>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|err| {
            use jsonwebtoken::errors::ErrorKind;
            Status::unauthenticated(match err.kind() {
                ErrorKind::ExpiredSignature => {
                    "the agency's credential has expired; the agency must sign a new one"
                }
                ErrorKind::InvalidAudience => "the agency's credential is not meant for a college",
                _ => "the agency's credential is invalid: it must be signed with the key of the agency's own certificate",
            })
        })?;
    if claims.kind != AGENCY {
        return Err(Status::unauthenticated(
            "the agency's credential is not an agency credential",
        ));
    }
    if claims.sub != name {
        return Err(Status::permission_denied(format!(
            "the credential is signed as agency {:?} but the certificate names agency {name:?}",
            claims.sub
        )));
    }
    let differs = [
        ("proposal", claims.proposal != terms.proposal),
        ("award", claims.award != terms.award),
        ("currency", claims.currency != terms.currency),
        (
            "principal investigator",
            claims.principal_investigator != terms.principal_investigator,
        ),
        ("duration", claims.duration_days != terms.duration_days),
    ];
    if let Some((field, _)) = differs.iter().find(|(_, differs)| *differs) {
        return Err(Status::permission_denied(format!(
            "the agency's credential was issued for another {field}"
        )));
    }
    Ok(AgencyCall {
        agency: name.to_owned(),
        jti: claims.jti,
        expires_at: UNIX_EPOCH + Duration::from_secs(claims.exp.saturating_add(LEEWAY_SECS)),
    })
}

/// The P-256 public key of `cert`, as ES256 verification takes it.
fn public_key(cert: &CertificateDer<'_>) -> Result<DecodingKey, Status> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|_| Status::unauthenticated("the agency's certificate cannot be read"))?;
    let spki = parsed.public_key();
    // id-ecPublicKey with the P-256 curve (prime256v1).
    let p256 = spki.algorithm.algorithm.to_id_string() == "1.2.840.10045.2.1"
        && spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|oid| oid.to_id_string() == "1.2.840.10045.3.1.7");
    if !p256 {
        return Err(Status::unauthenticated(
            "the agency's certificate key is not a P-256 key; issue it with `grantmesh ca issue`",
        ));
    }
    Ok(DecodingKey::from_ec_der(&spki.subject_public_key.data))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TERMS: AccountTerms<'static> = AccountTerms {
        proposal: "p-1",
        award: 400_000,
        currency: "EUR",
        principal_investigator: "pi-1",
        duration_days: 365,
    };

    fn key() -> (rcgen::KeyPair, EncodingKey, DecodingKey) {
        let pair = rcgen::KeyPair::generate().unwrap();
        let encoding = EncodingKey::from_ec_der(&pair.serialize_der());
        let decoding = DecodingKey::from_ec_der(pair.public_key_raw());
        (pair, encoding, decoding)
    }

    #[test]
    fn a_credential_verifies_with_its_own_key_only() {
        let (_, encoding, decoding) = key();
        let (_, _, other) = key();
        let token = sign(&encoding, "nsf", &TERMS).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[COLLEGE_AUDIENCE]);
        let claims = jsonwebtoken::decode::<AgencyClaims>(&token, &decoding, &validation)
            .unwrap()
            .claims;
        assert_eq!(
            (claims.sub.as_str(), claims.proposal.as_str(), claims.award),
            ("nsf", "p-1", 400_000)
        );
        assert_eq!(claims.principal_investigator, "pi-1");
        assert_eq!(claims.duration_days, 365);
        assert!(jsonwebtoken::decode::<AgencyClaims>(&token, &other, &validation).is_err());
        let again = sign(&encoding, "nsf", &TERMS).unwrap();
        let second = jsonwebtoken::decode::<AgencyClaims>(&again, &decoding, &validation)
            .unwrap()
            .claims;
        assert_ne!(claims.jti, second.jti, "every credential has its own id");
    }

    #[test]
    fn a_call_without_a_certificate_is_unauthenticated() {
        let request = tonic::Request::new(());
        assert_eq!(
            agency_call(&request, &TERMS).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn a_certificates_public_key_is_what_verifies_the_credential() {
        let pair = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://grantmesh/agency/nsf".try_into().unwrap(),
        ));
        let cert = params.self_signed(&pair).unwrap();
        let decoding = public_key(cert.der()).unwrap();
        let token = sign(
            &EncodingKey::from_ec_der(&pair.serialize_der()),
            "nsf",
            &TERMS,
        )
        .unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[COLLEGE_AUDIENCE]);
        assert!(jsonwebtoken::decode::<AgencyClaims>(&token, &decoding, &validation).is_ok());
    }
}
