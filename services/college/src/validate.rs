//! Checks on what callers send, each naming the field at fault. Everything
//! here runs before the store is touched, so bad input changes nothing.

use tonic::Status;
use uuid::Uuid;

/// The largest amount of money any call accepts, in minor units (10^15).
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000_000;

pub fn text(field: &str, value: &str, max_chars: usize) -> Result<String, Status> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field} must not be empty"
        )));
    }
    optional_text(field, trimmed, max_chars)
}

pub fn optional_text(field: &str, value: &str, max_chars: usize) -> Result<String, Status> {
    if value.chars().count() > max_chars {
        return Err(Status::invalid_argument(format!(
            "{field} is longer than {max_chars} characters"
        )));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(Status::invalid_argument(format!(
            "{field} contains control characters"
        )));
    }
    Ok(value.trim().to_owned())
}

/// A plausible email address, lower-cased: one `@`, a non-empty local part,
/// and a domain with a dot.
pub fn email(field: &str, value: &str) -> Result<String, Status> {
    let email = value.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains("..")
        });
    if !valid {
        return Err(Status::invalid_argument(format!(
            "{field} {} is not a valid email address",
            grantmesh_proto::errors::quote(value)
        )));
    }
    Ok(email)
}

pub fn id(field: &str, value: &str) -> Result<Uuid, Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    value.parse().map_err(|_| {
        Status::invalid_argument(format!(
            "{field} {} is not a valid id",
            grantmesh_proto::errors::quote(value)
        ))
    })
}

/// An amount of money: more than zero and at most [`MAX_AMOUNT_MINOR`].
/// An ISO 4217 currency code with minor units (`EUR`).
pub fn currency(field: &str, value: &str) -> Result<grantmesh_proto::money::Currency, Status> {
    grantmesh_proto::money::Currency::parse(value)
        .map_err(|err| Status::invalid_argument(format!("{field}: {err}")))
}

pub fn amount(field: &str, value: i64) -> Result<i64, Status> {
    if value <= 0 {
        return Err(Status::invalid_argument(format!(
            "{field} must be more than zero (got {value})"
        )));
    }
    if value > MAX_AMOUNT_MINOR {
        return Err(Status::invalid_argument(format!(
            "{field} {value} is more than the largest amount accepted, {MAX_AMOUNT_MINOR}"
        )));
    }
    Ok(value)
}

/// An idempotency key: 1–128 printable characters.
pub fn idempotency_key(field: &str, value: &str) -> Result<String, Status> {
    if value.is_empty()
        || value.len() > 128
        || value.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(Status::invalid_argument(format!(
            "{field} must be 1 to 128 printable characters without spaces"
        )));
    }
    Ok(value.to_owned())
}

/// Page size: 0 means `default`, more than `max` is refused.
pub fn page_size(field: &str, value: u32, default: u32, max: u32) -> Result<i64, Status> {
    match value {
        0 => Ok(i64::from(default)),
        n if n > max => Err(Status::invalid_argument(format!(
            "{field} must be at most {max}"
        ))),
        n => Ok(i64::from(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_lowercased_and_malformed_ones_refused() {
        assert_eq!(
            email("email", " Ada@Example.ORG ").unwrap(),
            "ada@example.org"
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.org",
            "ada@example",
            "a b@example.org",
            "ada@@example.org",
            "ada@example..org",
        ] {
            assert!(email("email", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn amounts_must_be_positive_and_bounded() {
        assert!(amount("amount_minor", 0).is_err());
        assert!(amount("amount_minor", -5).is_err());
        assert!(amount("amount_minor", i64::MAX).is_err());
        assert_eq!(amount("amount_minor", 1).unwrap(), 1);
        assert!(
            amount("amount_minor", -1)
                .unwrap_err()
                .message()
                .contains("amount_minor")
        );
    }

    #[test]
    fn text_fields_are_trimmed_and_bounded() {
        assert_eq!(text("title", "  Grant  ", 10).unwrap(), "Grant");
        assert!(text("title", "   ", 10).is_err());
        assert!(
            text("title", "x".repeat(11).as_str(), 10)
                .unwrap_err()
                .message()
                .contains("title")
        );
    }
}
