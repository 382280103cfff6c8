//! The withdrawal rule.

use std::collections::HashMap;

use uuid::Uuid;

use super::{Decision, Earlier, KeyScope, Locked, NewEntry, Outcome, Refusal, Request};

/// Judges `requests` in order against `locked`, each seeing the ones before
/// it in the same batch. For each, in this order: an account whose lock
/// another writer holds is deferred; a missing account, a caller who is not
/// a member (or whose role may not withdraw) are refused; a key the caller
/// used before on the account is replayed if the amount is the same and
/// refused if not; an account at or past its expiry by the store's clock is
/// refused; a balance below the amount is refused; otherwise the amount is
/// debited and journaled. A refusal changes nothing and fails no other.
pub fn decide(locked: &Locked, requests: &[Request]) -> Decision {
    let mut balances: HashMap<Uuid, i64> = HashMap::new();
    // Keys applied earlier in this batch: the entry that holds each.
    let mut applied: HashMap<KeyScope, usize> = HashMap::new();
    let mut entries: Vec<NewEntry> = Vec::new();
    let mut outcomes = Vec::with_capacity(requests.len());
    for request in requests {
        outcomes.push(one(
            locked,
            request,
            &mut balances,
            &mut applied,
            &mut entries,
        ));
    }
    let mut balances: Vec<(Uuid, i64)> = balances
        .into_iter()
        .filter(|(account, balance)| locked.accounts[account].balance != *balance)
        .collect();
    balances.sort_unstable();
    Decision {
        outcomes,
        entries,
        balances,
        at: locked.now,
    }
}

fn one(
    locked: &Locked,
    request: &Request,
    balances: &mut HashMap<Uuid, i64>,
    applied: &mut HashMap<KeyScope, usize>,
    entries: &mut Vec<NewEntry>,
) -> Outcome {
    if locked.busy.contains(&request.account) {
        return Outcome::Deferred;
    }
    let Some(account) = locked.accounts.get(&request.account) else {
        return Outcome::Refused(Refusal::NoAccount);
    };
    if !account
        .roles
        .get(&request.caller)
        .is_some_and(|role| role.may_withdraw())
    {
        return Outcome::Refused(Refusal::NotMember);
    }
    let balance = balances.entry(request.account).or_insert(account.balance);
    let scope = request.scope();
    if let Some(earlier) = locked.used.get(&scope) {
        return replay(
            earlier.amount,
            request.amount,
            Earlier::Journal(earlier.clone()),
            *balance,
        );
    }
    if let Some(&entry) = applied.get(&scope) {
        return replay(
            entries[entry].amount,
            request.amount,
            Earlier::Batch(entry),
            *balance,
        );
    }
    if account.expires_at <= locked.now {
        return Outcome::Refused(Refusal::Expired);
    }
    if *balance < request.amount {
        return Outcome::Refused(Refusal::InsufficientFunds { balance: *balance });
    }
    *balance -= request.amount;
    applied.insert(scope, entries.len());
    entries.push(NewEntry {
        account: request.account,
        researcher: request.caller,
        amount: request.amount,
        key: request.key.clone(),
        memo: request.memo.clone(),
        balance_after: *balance,
    });
    Outcome::Applied {
        entry: entries.len() - 1,
        balance: *balance,
    }
}

fn replay(previous_amount: i64, amount: i64, earlier: Earlier, balance: i64) -> Outcome {
    if previous_amount == amount {
        Outcome::Replayed { earlier, balance }
    } else {
        Outcome::Refused(Refusal::KeyReused { previous_amount })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::ledger::{LockedAccount, Role};

    fn request(account: Uuid, caller: Uuid, amount: i64, key: &str) -> Request {
        Request {
            account,
            caller,
            amount,
            key: key.into(),
            memo: String::new(),
        }
    }

    fn locked(account: Uuid, members: &[Uuid], balance: i64) -> Locked {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        Locked {
            now,
            accounts: HashMap::from([(
                account,
                LockedAccount {
                    balance,
                    expires_at: now + Duration::from_secs(60),
                    roles: members.iter().map(|m| (*m, Role::Member)).collect(),
                },
            )]),
            busy: HashSet::new(),
            used: HashMap::new(),
        }
    }

    #[test]
    fn two_members_using_one_key_each_get_their_own_withdrawal() {
        let (account, ada, bob) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let decision = decide(
            &locked(account, &[ada, bob], 100),
            &[
                request(account, ada, 10, "k"),
                request(account, bob, 10, "k"),
            ],
        );
        assert_eq!(decision.entries.len(), 2);
        assert_eq!(decision.balances, vec![(account, 80)]);
    }

    #[test]
    fn a_withdrawal_on_an_account_locked_elsewhere_is_deferred_and_fails_no_other() {
        let (account, busy, ada) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut state = locked(account, &[ada], 100);
        state.busy.insert(busy);
        let decision = decide(
            &state,
            &[request(busy, ada, 10, "a"), request(account, ada, 10, "b")],
        );
        assert_eq!(decision.outcomes[0], Outcome::Deferred);
        assert!(matches!(decision.outcomes[1], Outcome::Applied { .. }));
    }

    #[test]
    fn a_refused_batch_writes_no_balance() {
        let (account, ada) = (Uuid::new_v4(), Uuid::new_v4());
        let decision = decide(
            &locked(account, &[ada], 5),
            &[request(account, ada, 10, "a")],
        );
        assert!(decision.balances.is_empty() && decision.entries.is_empty());
    }
}
