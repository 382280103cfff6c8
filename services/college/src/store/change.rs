//! The one codec of the change notifications College instances send each
//! other on [`super::CHANNEL`] (PostgreSQL `NOTIFY`, or SQLite's in-process
//! fan-out, which carries the same payloads):
//!
//! - `withdrawals:<first entry id>:<last entry id>:<account>,<account>,…`:
//!   one batch of withdrawals, the range of its journal entries' ids and the
//!   accounts it debited, sorted (`*` for any, when the list would not fit
//!   a `NOTIFY` payload);
//! - `membership:<account>`: who belongs to the account changed.
//!
//! A statement that assigns entry ids itself gets a pattern
//! ([`Change::withdrawals_pattern`]) and puts the ids in.

use uuid::Uuid;

/// What one notification announces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A batch of withdrawals: the entries with ids in `first..=last` on
    /// the accounts named (`None`: on any account).
    Withdrawals {
        first: i64,
        last: i64,
        accounts: Option<Vec<Uuid>>,
    },
    Membership(Uuid),
}

/// The longest account list a payload carries; PostgreSQL refuses payloads
/// of 8000 bytes or more.
const MAX_ACCOUNTS_LEN: usize = 7000;

/// In a [`Change::withdrawals_pattern`], the place of the first entry id.
pub const FIRST: &str = "{first}";
/// In a [`Change::withdrawals_pattern`], the place of the last entry id.
pub const LAST: &str = "{last}";

/// A payload's account list: the ids, sorted, or `*` when too many to fit.
fn listed(accounts: Option<&[Uuid]>) -> String {
    accounts
        .map(|accounts| {
            accounts
                .iter()
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|listed| listed.len() <= MAX_ACCOUNTS_LEN)
        .unwrap_or_else(|| "*".into())
}

impl Change {
    /// A batch of withdrawals on `accounts` (in any order, repeats allowed).
    pub fn withdrawals(first: i64, last: i64, accounts: impl IntoIterator<Item = Uuid>) -> Self {
        let mut accounts: Vec<Uuid> = accounts.into_iter().collect();
        accounts.sort_unstable();
        accounts.dedup();
        Self::Withdrawals {
            first,
            last,
            accounts: Some(accounts),
        }
    }

    pub fn encode(&self) -> String {
        match self {
            Self::Withdrawals {
                first,
                last,
                accounts,
            } => format!("withdrawals:{first}:{last}:{}", listed(accounts.as_deref())),
            Self::Membership(account) => format!("membership:{account}"),
        }
    }

    /// The payload of a batch of withdrawals on `accounts` whose entry ids
    /// are not known yet: [`FIRST`] and [`LAST`] stand for them, for the
    /// statement that assigns the ids to put in (and nothing else).
    pub fn withdrawals_pattern(accounts: impl IntoIterator<Item = Uuid>) -> String {
        let Self::Withdrawals { accounts, .. } = Self::withdrawals(0, 0, accounts) else {
            unreachable!("withdrawals() makes a Withdrawals change");
        };
        format!("withdrawals:{FIRST}:{LAST}:{}", listed(accounts.as_deref()))
    }

    /// The change a payload announces; `None` for one this codec does not
    /// know (a newer instance's, or noise on the channel).
    pub fn parse(payload: &str) -> Option<Self> {
        let mut parts = payload.splitn(4, ':');
        match parts.next()? {
            "withdrawals" => {
                let first = parts.next()?.parse().ok()?;
                let last = parts.next()?.parse().ok()?;
                let accounts = match parts.next()? {
                    "*" => None,
                    listed => Some(
                        listed
                            .split(',')
                            .map(|a| a.parse().ok())
                            .collect::<Option<Vec<Uuid>>>()?,
                    ),
                };
                Some(Self::Withdrawals {
                    first,
                    last,
                    accounts,
                })
            }
            "membership" => Some(Self::Membership(parts.next()?.parse().ok()?)),
            _ => None,
        }
    }

    /// Whether this change concerns `account`.
    pub fn concerns(&self, account: Uuid) -> bool {
        match self {
            Self::Withdrawals { accounts, .. } => accounts
                .as_ref()
                .is_none_or(|accounts| accounts.binary_search(&account).is_ok()),
            Self::Membership(changed) => *changed == account,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_reads_back_as_written() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        for change in [
            Change::withdrawals(3, 9, [b, a, b]),
            Change::Withdrawals {
                first: 1,
                last: 1,
                accounts: None,
            },
            Change::Membership(a),
        ] {
            assert_eq!(Change::parse(&change.encode()), Some(change));
        }
        assert!(Change::withdrawals(1, 2, [a]).concerns(a));
        assert!(!Change::withdrawals(1, 2, [a]).concerns(b));
        assert_eq!(Change::parse("withdrawals:1:x:*"), None);
        assert_eq!(Change::parse("other:thing"), None);
    }

    #[test]
    fn a_pattern_with_its_ids_put_in_reads_back_as_the_change() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let payload = Change::withdrawals_pattern([b, a])
            .replace(FIRST, "7")
            .replace(LAST, "9");
        assert_eq!(
            Change::parse(&payload),
            Some(Change::withdrawals(7, 9, [a, b]))
        );
    }

    #[test]
    fn a_batch_on_too_many_accounts_to_list_is_announced_for_any() {
        let many: Vec<Uuid> = (0..300).map(|_| Uuid::new_v4()).collect();
        let payload = Change::withdrawals(1, 300, many).encode();
        assert_eq!(payload, "withdrawals:1:300:*");
        assert!(payload.len() < 8000);
    }
}
