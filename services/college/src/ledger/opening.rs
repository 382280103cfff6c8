//! Opening a proposal's account a second time: a replay only if the terms
//! are the ones it was opened with.
//!
//! An agency retries `OpenAccount` when it did not hear the answer; the
//! retry must get the account back. A second call that differs in the
//! agency, the principal investigator it was awarded to, the award or the
//! duration is not a retry, and is refused naming what differs, rather
//! than answered with an account on other terms.

use uuid::Uuid;

/// What an account was opened with, as the agency asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terms {
    pub agency: String,
    /// Whom it was awarded to (the principal investigator may change later).
    pub awarded_to: Uuid,
    /// Minor units of `currency`.
    pub award: i64,
    /// ISO 4217 code.
    pub currency: String,
    pub duration_days: u32,
}

/// `None` when `asked` opens the same account as `opened` (a replay), or
/// the differences, named, when it does not.
pub fn difference(proposal: &str, opened: &Terms, asked: &Terms) -> Option<String> {
    let mut differs = Vec::new();
    if opened.agency != asked.agency {
        differs.push(format!(
            "agency {:?}, not {:?}",
            opened.agency, asked.agency
        ));
    }
    if opened.awarded_to != asked.awarded_to {
        differs.push(format!(
            "principal investigator {}, not {}",
            opened.awarded_to, asked.awarded_to
        ));
    }
    if opened.award != asked.award {
        differs.push(format!("award {}, not {}", opened.award, asked.award));
    }
    if opened.currency != asked.currency {
        differs.push(format!(
            "currency {}, not {}",
            opened.currency, asked.currency
        ));
    }
    if opened.duration_days != asked.duration_days {
        differs.push(format!(
            "duration {} days, not {}",
            opened.duration_days, asked.duration_days
        ));
    }
    (!differs.is_empty()).then(|| {
        format!(
            "proposal {} already has an account, opened with {}; \
             a retry must ask for the same terms",
            grantmesh_proto::errors::quote(proposal),
            differs.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms() -> Terms {
        Terms {
            agency: "nsf".into(),
            awarded_to: Uuid::nil(),
            award: 40_000_000,
            currency: "EUR".into(),
            duration_days: 365,
        }
    }

    #[test]
    fn the_same_terms_are_a_replay_and_each_difference_is_named() {
        assert_eq!(difference("p", &terms(), &terms()), None);
        let asked = Terms {
            agency: "erc".into(),
            award: 1,
            currency: "USD".into(),
            ..terms()
        };
        let message = difference("p", &terms(), &asked).unwrap();
        assert!(message.contains("agency \"nsf\", not \"erc\""), "{message}");
        assert!(message.contains("award 40000000, not 1"), "{message}");
        assert!(message.contains("currency EUR, not USD"), "{message}");
        assert!(!message.contains("duration"), "{message}");
    }
}
