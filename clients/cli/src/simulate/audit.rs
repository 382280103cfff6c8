//! The audit after a simulation: what the central store holds for each
//! account, checked against the money rules and against what the service
//! told the simulated researchers.
//!
//! [`check`] is a pure function of one account's [`AccountAudit`] (read in
//! one snapshot by `AccountStore::audit`) and the [`Acknowledged`] ledger the
//! client kept, so every kind of breach is unit-tested on hand-made rows.
//! The store is only read, through `AccountStore`'s API: no SQL here.
//!
//! This file depends on nothing else in the binary, so integration tests can
//! include it and audit a store they have corrupted on purpose.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Context as _;
use grantmesh_college::store::{AccountAudit, AccountStore};
use serde::Serialize;
use uuid::Uuid;

/// Connections the audit opens: it reads one account at a time.
const AUDIT_POOL_SIZE: usize = 2;

/// The day length handed to the store connection. The audit never opens an
/// account, the only thing a day length is used for, so any value will do.
const AUDIT_DAY_LENGTH: Duration = Duration::from_secs(1);

/// What the service answered one withdrawal: the journal entry it reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The journal entry's id (`Transaction.transaction_id`).
    pub transaction_id: i64,
    pub amount: i64,
}

/// The client's side of one account's withdrawals, by idempotency key.
#[derive(Clone, Debug, Default)]
pub struct Acknowledged {
    /// Every acknowledgement received per key: the first answer and any replays.
    pub applied: HashMap<String, Vec<Ack>>,
    /// Keys whose calls ended without a definite answer (transport error,
    /// timeout, the run stopped mid-call): they may or may not have been applied.
    pub ambiguous: HashSet<String>,
    /// Keys deliberately sent more than once.
    pub retried: HashSet<String>,
}

impl Acknowledged {
    /// A call with `key` is about to be sent: until it is answered, its outcome is unknown.
    pub fn sending(&mut self, key: &str) {
        if !self.applied.contains_key(key) {
            self.ambiguous.insert(key.to_owned());
        }
    }

    /// The service applied (or replayed) the withdrawal with `key`.
    pub fn acknowledged(&mut self, key: &str, ack: Ack) {
        self.ambiguous.remove(key);
        self.applied.entry(key.to_owned()).or_default().push(ack);
    }

    /// The service definitely did not apply the withdrawal with `key` (a
    /// refusal such as insufficient funds or expiry).
    pub fn refused(&mut self, key: &str) {
        self.ambiguous.remove(key);
    }

    /// `key` is being sent a second time on purpose.
    pub fn retrying(&mut self, key: &str) {
        self.retried.insert(key.to_owned());
    }
}

/// Which invariant a breach is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// balance == award − sum of the journal.
    BalanceMatchesJournal,
    /// The balance and every `balance_after` are ≥ 0.
    NeverNegative,
    /// Each entry's `balance_after` is the award less the entries up to it, in journal order.
    JournalRunningBalance,
    /// No entry was made at or after the account's expiry.
    NothingAfterExpiry,
    /// Every acknowledged withdrawal is in the journal once, with the id and amount reported.
    AcknowledgedExactlyOnce,
    /// An idempotency key appears in the journal at most once (retried keys included).
    OneRowPerKey,
    /// Every journal entry is one the client was told about, or one whose call had no answer.
    NoUnacknowledgedRows,
}

/// One broken invariant of one account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Breach {
    pub account: Uuid,
    pub check: Check,
    pub detail: String,
}

/// Every invariant `audit` breaks, given what the client was told (`acknowledged`).
pub fn check(audit: &AccountAudit, acknowledged: &Acknowledged) -> Vec<Breach> {
    let account = &audit.account;
    let mut breaches = Vec::new();
    let mut breach = |check: Check, detail: String| {
        breaches.push(Breach {
            account: account.id,
            check,
            detail,
        })
    };

    let spent: i128 = audit.journal.iter().map(|row| i128::from(row.amount)).sum();
    let expected = i128::from(account.award) - spent;
    if i128::from(account.balance) != expected {
        breach(
            Check::BalanceMatchesJournal,
            format!(
                "balance is {} but the award {} less the journal's {} entries totalling {spent} is {expected}",
                account.balance,
                account.award,
                audit.journal.len()
            ),
        );
    }
    if account.balance < 0 {
        breach(
            Check::NeverNegative,
            format!("balance is {}", account.balance),
        );
    }

    let mut running = i128::from(account.award);
    let mut rows_by_key: HashMap<&str, Vec<i64>> = HashMap::new();
    for row in &audit.journal {
        running -= i128::from(row.amount);
        if row.balance_after < 0 {
            breach(
                Check::NeverNegative,
                format!("entry {} leaves a balance of {}", row.id, row.balance_after),
            );
        }
        if row.amount <= 0 || i128::from(row.balance_after) != running {
            breach(
                Check::JournalRunningBalance,
                format!(
                    "entry {} of {} says the balance after it is {}, but the award less the entries up to it is {running}",
                    row.id, row.amount, row.balance_after
                ),
            );
        }
        if row.created_at >= account.expires_at {
            breach(
                Check::NothingAfterExpiry,
                format!(
                    "entry {} was made {:?} after the account expired",
                    row.id,
                    row.created_at
                        .duration_since(account.expires_at)
                        .unwrap_or_default()
                ),
            );
        }
        rows_by_key
            .entry(row.idempotency_key.as_str())
            .or_default()
            .push(row.id);
    }

    let mut duplicated: Vec<_> = rows_by_key
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .collect();
    duplicated.sort();
    for (key, ids) in duplicated {
        let retried = if acknowledged.retried.contains(*key) {
            " (a key the client retried)"
        } else {
            ""
        };
        breach(
            Check::OneRowPerKey,
            format!(
                "key {key:?}{retried} was applied {} times: entries {ids:?}",
                ids.len()
            ),
        );
    }

    let mut acked: Vec<_> = acknowledged.applied.iter().collect();
    acked.sort_by(|a, b| a.0.cmp(b.0));
    for (key, acks) in acked {
        let Some(first) = acks.first() else { continue };
        if let Some(other) = acks.iter().find(|ack| *ack != first) {
            breach(
                Check::AcknowledgedExactlyOnce,
                format!(
                    "key {key:?} was acknowledged as entry {} of {} and, on a retry, as entry {} of {}",
                    first.transaction_id, first.amount, other.transaction_id, other.amount
                ),
            );
        }
        let rows: Vec<_> = audit
            .journal
            .iter()
            .filter(|row| row.idempotency_key == *key)
            .collect();
        match rows.as_slice() {
            [] => breach(
                Check::AcknowledgedExactlyOnce,
                format!(
                    "key {key:?} was acknowledged as entry {} of {} but the journal has no entry with it",
                    first.transaction_id, first.amount
                ),
            ),
            [row] if row.id != first.transaction_id || row.amount != first.amount => breach(
                Check::AcknowledgedExactlyOnce,
                format!(
                    "key {key:?} was acknowledged as entry {} of {} but the journal holds entry {} of {}",
                    first.transaction_id, first.amount, row.id, row.amount
                ),
            ),
            // One entry as acknowledged; several are reported under OneRowPerKey.
            _ => {}
        }
    }

    for row in &audit.journal {
        let key = row.idempotency_key.as_str();
        if !acknowledged.applied.contains_key(key) && !acknowledged.ambiguous.contains(key) {
            breach(
                Check::NoUnacknowledgedRows,
                format!(
                    "entry {} of {} with key {key:?} was never acknowledged, and no call with that key was left without an answer",
                    row.id, row.amount
                ),
            );
        }
    }
    breaches
}

/// Reads each account from the store at `database_url` and checks it.
pub async fn audit_accounts(
    database_url: &str,
    accounts: &[(Uuid, Acknowledged)],
) -> anyhow::Result<Vec<Breach>> {
    let store = AccountStore::connect(database_url, AUDIT_POOL_SIZE, AUDIT_DAY_LENGTH)
        .await
        .context("failed to connect to the store for the audit")?;
    let mut breaches = Vec::new();
    for (account, acknowledged) in accounts {
        let audit = store
            .audit(*account)
            .await
            .with_context(|| format!("failed to read account {account} for the audit"))?;
        breaches.extend(check(&audit, acknowledged));
    }
    Ok(breaches)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use grantmesh_college::store::{AccountRow, TransactionRow};

    use super::*;

    const AWARD: i64 = 1_000;

    fn audit(balance: i64, journal: &[(i64, &str, i64)]) -> AccountAudit {
        let opened_at = SystemTime::now() - Duration::from_secs(60);
        let id = Uuid::new_v4();
        let mut running = AWARD;
        let journal = journal
            .iter()
            .enumerate()
            .map(|(n, &(row_id, key, amount))| {
                running -= amount;
                TransactionRow {
                    id: row_id,
                    account_id: id,
                    researcher_id: Uuid::nil(),
                    amount,
                    memo: String::new(),
                    idempotency_key: key.to_owned(),
                    created_at: opened_at + Duration::from_secs(n as u64 + 1),
                    balance_after: running,
                }
            })
            .collect();
        AccountAudit {
            account: AccountRow {
                id,
                proposal_id: "p".into(),
                agency: "nsf".into(),
                title: "t".into(),
                principal_investigator: Uuid::nil(),
                award: AWARD,
                balance,
                opened_at,
                expires_at: opened_at + Duration::from_secs(30),
                expired: true,
                members: Vec::new(),
                journal_position: 0,
                currency: "USD".into(),
            },
            journal,
        }
    }

    fn acked(entries: &[(&str, i64, i64)]) -> Acknowledged {
        let mut acknowledged = Acknowledged::default();
        for &(key, transaction_id, amount) in entries {
            acknowledged.acknowledged(
                key,
                Ack {
                    transaction_id,
                    amount,
                },
            );
        }
        acknowledged
    }

    fn checks(breaches: &[Breach]) -> Vec<Check> {
        let mut checks: Vec<_> = breaches.iter().map(|b| b.check).collect();
        checks.dedup();
        checks
    }

    #[test]
    fn a_consistent_account_passes_every_check() {
        let audit = audit(700, &[(1, "a", 100), (2, "b", 200)]);
        assert_eq!(check(&audit, &acked(&[("a", 1, 100), ("b", 2, 200)])), []);
    }

    #[test]
    fn a_balance_that_disagrees_with_the_journal_is_a_breach() {
        let audit = audit(699, &[(1, "a", 100), (2, "b", 200)]);
        let breaches = check(&audit, &acked(&[("a", 1, 100), ("b", 2, 200)]));
        assert_eq!(checks(&breaches), [Check::BalanceMatchesJournal]);
        assert!(breaches[0].detail.contains("699"), "{breaches:?}");
    }

    #[test]
    fn a_negative_balance_is_a_breach() {
        let audit = audit(-100, &[(1, "a", 600), (2, "b", 500)]);
        let breaches = check(&audit, &acked(&[("a", 1, 600), ("b", 2, 500)]));
        assert_eq!(checks(&breaches), [Check::NeverNegative]);
        assert_eq!(breaches.len(), 2, "the balance and the second entry");
    }

    #[test]
    fn a_balance_after_out_of_step_with_the_journal_order_is_a_breach() {
        let mut audit = audit(700, &[(1, "a", 100), (2, "b", 200)]);
        audit.journal[0].balance_after = 800;
        let breaches = check(&audit, &acked(&[("a", 1, 100), ("b", 2, 200)]));
        assert_eq!(checks(&breaches), [Check::JournalRunningBalance]);
    }

    #[test]
    fn an_entry_made_at_or_after_expiry_is_a_breach() {
        let mut audit = audit(900, &[(1, "a", 100)]);
        audit.journal[0].created_at = audit.account.expires_at;
        let breaches = check(&audit, &acked(&[("a", 1, 100)]));
        assert_eq!(checks(&breaches), [Check::NothingAfterExpiry]);
    }

    #[test]
    fn an_acknowledged_withdrawal_missing_from_the_journal_is_a_breach() {
        let audit = audit(900, &[(1, "a", 100)]);
        let breaches = check(&audit, &acked(&[("a", 1, 100), ("b", 2, 50)]));
        assert_eq!(checks(&breaches), [Check::AcknowledgedExactlyOnce]);
        assert!(breaches[0].detail.contains("\"b\""), "{breaches:?}");
    }

    #[test]
    fn an_acknowledged_withdrawal_recorded_with_another_amount_is_a_breach() {
        let audit = audit(900, &[(1, "a", 100)]);
        let breaches = check(&audit, &acked(&[("a", 1, 90)]));
        assert_eq!(checks(&breaches), [Check::AcknowledgedExactlyOnce]);
    }

    #[test]
    fn a_replay_that_reports_another_entry_is_a_breach() {
        let audit = audit(900, &[(1, "a", 100)]);
        let breaches = check(&audit, &acked(&[("a", 1, 100), ("a", 7, 100)]));
        assert_eq!(checks(&breaches), [Check::AcknowledgedExactlyOnce]);
    }

    #[test]
    fn a_retried_key_applied_twice_is_a_breach() {
        let audit = audit(800, &[(1, "a", 100), (2, "a", 100)]);
        let mut acknowledged = acked(&[("a", 1, 100), ("a", 1, 100)]);
        acknowledged.retrying("a");
        let breaches = check(&audit, &acknowledged);
        assert_eq!(checks(&breaches), [Check::OneRowPerKey]);
        assert!(breaches[0].detail.contains("retried"), "{breaches:?}");
    }

    #[test]
    fn an_entry_nobody_was_told_about_is_a_breach() {
        let audit = audit(800, &[(1, "a", 100), (2, "ghost", 100)]);
        let breaches = check(&audit, &acked(&[("a", 1, 100)]));
        assert_eq!(checks(&breaches), [Check::NoUnacknowledgedRows]);
    }

    #[test]
    fn an_entry_whose_call_had_no_answer_is_allowed() {
        let audit = audit(800, &[(1, "a", 100), (2, "lost", 100)]);
        let mut acknowledged = acked(&[("a", 1, 100)]);
        acknowledged.sending("lost");
        assert_eq!(check(&audit, &acknowledged), []);
    }

    #[test]
    fn a_refused_call_is_no_longer_ambiguous() {
        let audit = audit(800, &[(1, "a", 100), (2, "refused", 100)]);
        let mut acknowledged = acked(&[("a", 1, 100)]);
        acknowledged.sending("refused");
        acknowledged.refused("refused");
        let breaches = check(&audit, &acknowledged);
        assert_eq!(checks(&breaches), [Check::NoUnacknowledgedRows]);
    }
}
