//! Amounts as people read and type them: minor units (cents) on the wire,
//! `1,234.56` on the page. Parsing never goes through floating point, so
//! what a researcher types is exactly what is withdrawn.

/// `123456` → `"1,234.56"`; negative amounts keep their sign.
pub fn format(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    let (whole, cents) = (abs / 100, abs % 100);
    let digits = whole.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{sign}{grouped}.{cents:02}")
}

/// Why a typed amount is not usable, in words for the form.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("enter an amount, such as 25 or 25.50")]
    Empty,
    #[error("{0} is not an amount: use digits, with at most two after the point (25 or 25.50)")]
    Malformed(String),
    #[error("{0} is more than the largest amount grantmesh handles")]
    TooLarge(String),
}

/// `"25"`, `"25.5"`, `"1,234.56"` → minor units. Commas and spaces between
/// digits are allowed; a sign, an exponent or a third decimal are not.
pub fn parse(text: &str) -> Result<i64, AmountError> {
    let cleaned: String = text
        .trim()
        .chars()
        .filter(|c| *c != ',' && *c != ' ')
        .collect();
    if cleaned.is_empty() {
        return Err(AmountError::Empty);
    }
    let shown = grantmesh_proto::errors::quote(text.trim());
    let malformed = || AmountError::Malformed(shown.clone());
    let (whole, fraction) = cleaned.split_once('.').unwrap_or((&cleaned, ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty())
        || !digits(whole)
        || !digits(fraction)
        || fraction.len() > 2
    {
        return Err(malformed());
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole
            .parse()
            .map_err(|_| AmountError::TooLarge(shown.clone()))?
    };
    let cents: i64 = match fraction.len() {
        0 => 0,
        1 => fraction.parse::<i64>().map_err(|_| malformed())? * 10,
        _ => fraction.parse().map_err(|_| malformed())?,
    };
    whole
        .checked_mul(100)
        .and_then(|w| w.checked_add(cents))
        .ok_or(AmountError::TooLarge(shown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_shown_with_two_decimals_and_grouped_thousands() {
        assert_eq!(format(0), "0.00");
        assert_eq!(format(5), "0.05");
        assert_eq!(format(123_456), "1,234.56");
        assert_eq!(format(100_000_000), "1,000,000.00");
        assert_eq!(format(-250), "-2.50");
    }

    #[test]
    fn typed_amounts_become_exact_minor_units() {
        assert_eq!(parse("25"), Ok(2500));
        assert_eq!(parse(" 25.5 "), Ok(2550));
        assert_eq!(parse("1,234.56"), Ok(123_456));
        assert_eq!(parse(".07"), Ok(7));
        assert_eq!(parse("0.1"), Ok(10));
    }

    #[test]
    fn amounts_that_are_not_plain_decimals_are_refused_with_the_reason() {
        assert_eq!(parse(""), Err(AmountError::Empty));
        for bad in ["-5", "1e3", "2.345", "abc", ".", "1.2.3", "+4"] {
            assert!(
                matches!(parse(bad), Err(AmountError::Malformed(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse("99999999999999999999"),
            Err(AmountError::TooLarge(_))
        ));
    }
}
