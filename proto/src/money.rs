//! Money as people read and type it. On the wire and in the store an amount
//! is an integer of minor units (cents) beside the ISO 4217 code of its
//! currency; people see `EUR 400,000.00` and type `400000`, `400000.00` or
//! `400,000.00`. How many decimals a currency has comes from ISO 4217
//! (the `iso_currency` crate): two for EUR and USD, none for JPY, three for
//! KWD. Parsing never goes through floating point, so what a researcher
//! types is exactly what moves.

use std::fmt;

/// The currency of an agency that names none.
pub const DEFAULT_CURRENCY: &str = "USD";

/// A currency with minor units: its code and how many decimals it has.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: [u8; 3],
    exponent: u8,
}

/// Why a currency code or a typed amount is not usable, in words for a
/// form, a flag or a status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoneyError {
    /// Not an ISO 4217 code, or one without minor units (gold, SDRs).
    Currency(String),
    Empty,
    Malformed {
        text: String,
        decimals: u8,
    },
    TooLarge(String),
}

impl fmt::Display for MoneyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Currency(code) => write!(
                f,
                "{} is not an ISO 4217 currency code with minor units (such as EUR or USD)",
                crate::errors::quote(code)
            ),
            Self::Empty => f.write_str("enter an amount, such as 25 or 25.50"),
            Self::Malformed { text, decimals: 0 } => write!(
                f,
                "{text} is not an amount: use digits, without decimals in this currency"
            ),
            Self::Malformed { text, decimals } => write!(
                f,
                "{text} is not an amount: use digits, with at most {decimals} after the point \
                 (25 or 25.50)"
            ),
            Self::TooLarge(text) => {
                write!(
                    f,
                    "{text} is more than the largest amount grantmesh handles"
                )
            }
        }
    }
}

impl std::error::Error for MoneyError {}

impl Currency {
    /// The currency of code `code` (any case: `eur` is EUR).
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        let upper = code.trim().to_ascii_uppercase();
        let refused = || MoneyError::Currency(code.to_owned());
        let known = iso_currency::Currency::from_code(&upper).ok_or_else(refused)?;
        let exponent = known.exponent().ok_or_else(refused)?;
        let exponent = u8::try_from(exponent)
            .ok()
            .filter(|e| *e <= 4)
            .ok_or_else(refused)?;
        let bytes: [u8; 3] = upper.as_bytes().try_into().map_err(|_| refused())?;
        Ok(Self {
            code: bytes,
            exponent,
        })
    }

    /// [`DEFAULT_CURRENCY`].
    pub fn default_currency() -> Self {
        Self::parse(DEFAULT_CURRENCY).expect("USD is an ISO 4217 currency")
    }

    /// The ISO 4217 code, `EUR`.
    pub fn code(&self) -> &str {
        std::str::from_utf8(&self.code).expect("ASCII letters")
    }

    /// Decimals of the currency: 2 for EUR.
    pub fn exponent(&self) -> u8 {
        self.exponent
    }

    fn scale(&self) -> u64 {
        10u64.pow(u32::from(self.exponent))
    }

    /// `40000000` → `"400,000.00"`: grouped thousands, the currency's
    /// decimals; negative amounts keep their sign.
    pub fn number(&self, minor: i64) -> String {
        let sign = if minor < 0 { "-" } else { "" };
        let abs = minor.unsigned_abs();
        let (whole, fraction) = (abs / self.scale(), abs % self.scale());
        let digits = whole.to_string();
        let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        match self.exponent {
            0 => format!("{sign}{grouped}"),
            e => format!("{sign}{grouped}.{fraction:0width$}", width = usize::from(e)),
        }
    }

    /// `40000000` → `"EUR 400,000.00"`.
    pub fn format(&self, minor: i64) -> String {
        format!("{} {}", self.code(), self.number(minor))
    }

    /// `"400000"`, `"400000.5"`, `"400,000.00"` → minor units. Commas and
    /// spaces between digits are allowed, and the code itself before or
    /// after (`EUR 25.50`); a sign, an exponent or a decimal more than the
    /// currency has are not.
    pub fn parse_amount(&self, text: &str) -> Result<i64, MoneyError> {
        let trimmed = text.trim();
        let without_code = trimmed
            .strip_prefix(self.code())
            .or_else(|| trimmed.strip_suffix(self.code()))
            .unwrap_or(trimmed);
        let cleaned: String = without_code
            .trim()
            .chars()
            .filter(|c| *c != ',' && *c != ' ')
            .collect();
        if cleaned.is_empty() {
            return Err(MoneyError::Empty);
        }
        let shown = crate::errors::quote(trimmed);
        let malformed = || MoneyError::Malformed {
            text: shown.clone(),
            decimals: self.exponent,
        };
        let (whole, fraction) = cleaned.split_once('.').unwrap_or((&cleaned, ""));
        let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
        if (whole.is_empty() && fraction.is_empty())
            || !digits(whole)
            || !digits(fraction)
            || fraction.len() > usize::from(self.exponent)
        {
            return Err(malformed());
        }
        let whole: i64 = if whole.is_empty() {
            0
        } else {
            whole
                .parse()
                .map_err(|_| MoneyError::TooLarge(shown.clone()))?
        };
        let padded = format!("{fraction:0<width$}", width = usize::from(self.exponent));
        let fraction: i64 = if padded.is_empty() {
            0
        } else {
            padded.parse().map_err(|_| malformed())?
        };
        let scale = i64::try_from(self.scale()).expect("at most 10^4");
        whole
            .checked_mul(scale)
            .and_then(|w| w.checked_add(fraction))
            .ok_or(MoneyError::TooLarge(shown))
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl std::str::FromStr for Currency {
    type Err = MoneyError;

    fn from_str(code: &str) -> Result<Self, MoneyError> {
        Self::parse(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    #[test]
    fn amounts_are_shown_with_the_code_grouped_thousands_and_the_currencys_decimals() {
        assert_eq!(eur().format(40_000_000), "EUR 400,000.00");
        assert_eq!(eur().number(0), "0.00");
        assert_eq!(eur().number(5), "0.05");
        assert_eq!(eur().number(-123_456), "-1,234.56");
        let yen = Currency::parse("jpy").unwrap();
        assert_eq!(yen.format(1_234_567), "JPY 1,234,567");
        let dinar = Currency::parse("KWD").unwrap();
        assert_eq!(dinar.number(1_234_567), "1,234.567");
    }

    #[test]
    fn what_people_type_is_exactly_what_moves() {
        let eur = eur();
        for (typed, minor) in [
            ("400000", 40_000_000),
            ("400000.00", 40_000_000),
            ("400,000.00", 40_000_000),
            ("400 000", 40_000_000),
            ("EUR 25.5", 2_550),
            ("25.50 EUR", 2_550),
            (".05", 5),
            ("0.1", 10),
        ] {
            assert_eq!(eur.parse_amount(typed), Ok(minor), "{typed}");
        }
        assert_eq!(
            Currency::parse("JPY").unwrap().parse_amount("1,500"),
            Ok(1_500)
        );
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        let eur = eur();
        assert_eq!(eur.parse_amount(" "), Err(MoneyError::Empty));
        for typed in ["-5", "1e5", "25.505", "abc", "1.2.3", "+3", "."] {
            let refused = eur.parse_amount(typed);
            assert!(
                matches!(refused, Err(MoneyError::Malformed { decimals: 2, .. })),
                "{typed}: {refused:?}"
            );
        }
        assert!(matches!(
            eur.parse_amount("99999999999999999999"),
            Err(MoneyError::TooLarge(_))
        ));
        let yen = Currency::parse("JPY").unwrap();
        let refused = yen.parse_amount("10.5").unwrap_err();
        assert!(
            refused.to_string().contains("without decimals"),
            "{refused}"
        );
    }

    #[test]
    fn only_iso_4217_codes_with_minor_units_are_currencies() {
        assert_eq!(Currency::parse(" usd ").unwrap().code(), "USD");
        for code in ["", "EURO", "XYZ", "XAU", "€"] {
            assert!(Currency::parse(code).is_err(), "{code}");
        }
        assert_eq!(Currency::default_currency().code(), DEFAULT_CURRENCY);
    }
}
