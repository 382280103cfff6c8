//! Amounts as people read and type them: minor units (cents) on the wire,
//! `EUR 1,234.56` on the page, in the account's or agency's currency
//! ([`format_in`], [`parse_in`], on `grantmesh_proto::money`). Parsing
//! never goes through floating point, so what a researcher types is
//! exactly what is withdrawn. [`format`] is for a two-decimal amount whose
//! currency the page does not know (one in a status message).

use grantmesh_proto::money::Currency;

/// The currency of `code`, as a reply names it: empty (a server before
/// currencies) or unknown is USD.
pub fn currency(code: &str) -> Currency {
    Currency::parse(code).unwrap_or_else(|_| Currency::default_currency())
}

/// `40000000` of `EUR` → `"EUR 400,000.00"`.
pub fn format_in(code: &str, minor: i64) -> String {
    currency(code).format(minor)
}

/// What a researcher typed, as minor units of the currency `code`.
pub fn parse_in(code: &str, text: &str) -> Result<i64, grantmesh_proto::money::MoneyError> {
    currency(code).parse_amount(text)
}

/// `123456` → `"1,234.56"`; negative amounts keep their sign.
pub fn format(minor: i64) -> String {
    Currency::default_currency().number(minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_shown_in_their_currency() {
        assert_eq!(format(123_456), "1,234.56");
        assert_eq!(format_in("EUR", 40_000_000), "EUR 400,000.00");
        assert_eq!(
            format_in("", 5),
            "USD 0.05",
            "no currency: USD, as before currencies"
        );
        assert_eq!(format_in("JPY", 1_500), "JPY 1,500");
    }

    #[test]
    fn what_is_typed_is_read_in_the_currency() {
        assert_eq!(parse_in("EUR", "1,234.56"), Ok(123_456));
        assert_eq!(parse_in("JPY", "1,500"), Ok(1_500));
        assert!(parse_in("EUR", "25.505").is_err());
        assert!(parse_in("EUR", "-5").is_err());
    }
}
