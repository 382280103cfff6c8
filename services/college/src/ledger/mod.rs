//! The ledger's rules, written once: what becomes of a batch of withdrawals
//! ([`decide`]) and whether a second opening of a proposal's account is a
//! replay ([`opening`]).
//!
//! Nothing here does I/O or reads a clock. A store takes the row locks of
//! the accounts a batch touches, then reads what the rule needs into a
//! [`Locked`] — the balances and expiries, the roles of the batch's callers,
//! the journal entries of the keys they send, and the store's own clock,
//! all read after the locks — and hands it to [`decide`]. What comes back
//! is an [`Outcome`] for each request and the [`Decision`]'s writes: the new
//! journal entries and the balances after them, which the store writes in
//! the same transaction. So both stores keep one rule by construction, and
//! `tests/ledger_model.rs` checks it against a plain sequential model.
//!
//! Adding a field to an account (a budget line, say) means: load it into
//! [`LockedAccount`], decide with it here, write what [`Decision`] says,
//! and show it in the views.

mod decide;
pub mod opening;

pub use decide::decide;

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use uuid::Uuid;

/// One withdrawal as its caller asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub account: Uuid,
    pub caller: Uuid,
    /// Minor units, more than zero (checked before it gets here).
    pub amount: i64,
    pub key: String,
    pub memo: String,
}

impl Request {
    /// Where its idempotency key lives: keys are the caller's own on each
    /// account, so two members may use the same key without meeting.
    pub fn scope(&self) -> KeyScope {
        KeyScope {
            account: self.account,
            caller: self.caller,
            key: self.key.clone(),
        }
    }
}

/// An idempotency key, scoped to the account and the caller who sent it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyScope {
    pub account: Uuid,
    pub caller: Uuid,
    pub key: String,
}

/// What a member may do on an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    PrincipalInvestigator,
    Member,
}

impl Role {
    /// The role as the stores write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PrincipalInvestigator => "principal_investigator",
            Self::Member => "member",
        }
    }

    /// A stored role; `None` for anything else.
    pub fn parse(role: &str) -> Option<Self> {
        match role {
            "principal_investigator" => Some(Self::PrincipalInvestigator),
            "member" => Some(Self::Member),
            _ => None,
        }
    }

    /// Whether this role may withdraw from the account.
    pub fn may_withdraw(self) -> bool {
        matches!(self, Self::PrincipalInvestigator | Self::Member)
    }
}

/// A journal entry: one applied withdrawal, never changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionRow {
    pub id: i64,
    pub account_id: Uuid,
    pub researcher_id: Uuid,
    pub amount: i64,
    pub memo: String,
    pub idempotency_key: String,
    pub created_at: SystemTime,
    pub balance_after: i64,
}

/// One account as the store read it while holding its row lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockedAccount {
    pub balance: i64,
    pub expires_at: SystemTime,
    /// The roles of (at least) the batch's callers who are members.
    pub roles: HashMap<Uuid, Role>,
}

/// Everything [`decide`] judges a batch by, read after the locks.
#[derive(Clone, Debug)]
pub struct Locked {
    /// The store's clock, read once the locks were held: expiry is judged
    /// by it and the new entries are stamped with it.
    pub now: SystemTime,
    /// The batch's accounts whose locks this transaction holds.
    pub accounts: HashMap<Uuid, LockedAccount>,
    /// The batch's accounts that exist but whose lock another writer holds:
    /// their withdrawals are [`Outcome::Deferred`], so that they wait on
    /// their own instead of holding up the rest of the batch.
    pub busy: HashSet<Uuid>,
    /// The journal entries of the batch's keys that were used before.
    pub used: HashMap<KeyScope, TransactionRow>,
}

/// Why a withdrawal was refused. A refusal changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    NoAccount,
    NotMember,
    /// The key was used before for another amount.
    KeyReused {
        previous_amount: i64,
    },
    /// The store's clock is at or past the account's expiry.
    Expired,
    InsufficientFunds {
        balance: i64,
    },
}

/// A withdrawal's entry that was made before this one, with the same key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Earlier {
    /// Already in the journal.
    Journal(TransactionRow),
    /// Made earlier in this batch: [`Decision::entries`]`[i]`.
    Batch(usize),
}

/// What became of one request of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Debited; its new entry is [`Decision::entries`]`[i]`, and the
    /// account held `balance` after it.
    Applied {
        entry: usize,
        balance: i64,
    },
    /// The same key and amount were applied before: that entry, and the
    /// account's balance now.
    Replayed {
        earlier: Earlier,
        balance: i64,
    },
    Refused(Refusal),
    /// Its account's lock is held by another writer: nothing was judged;
    /// it must go again in a batch that waits for that lock.
    Deferred,
}

/// A journal entry to write, stamped [`Locked::now`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEntry {
    pub account: Uuid,
    pub researcher: Uuid,
    pub amount: i64,
    pub key: String,
    pub memo: String,
    pub balance_after: i64,
}

/// [`decide`]'s answer: each request's outcome, in order, and the writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub outcomes: Vec<Outcome>,
    /// New journal entries, in the order their ids must run.
    pub entries: Vec<NewEntry>,
    /// The balance of every account the batch debited, after the batch, by id.
    pub balances: Vec<(Uuid, i64)>,
    /// The stamp of the new entries: [`Locked::now`].
    pub at: SystemTime,
}

impl Decision {
    /// Whether every request was debited or replayed within the batch: no
    /// refusal, deferral or replay of an earlier entry. Only such a decision
    /// can be written from a guess of the state ([`crate::store`]'s one-trip
    /// path), since the write then proves the guess right; a refusal would
    /// go unproven.
    pub fn only_writes(&self) -> bool {
        self.outcomes.iter().all(|outcome| {
            matches!(
                outcome,
                Outcome::Applied { .. }
                    | Outcome::Replayed {
                        earlier: Earlier::Batch(_),
                        ..
                    }
            )
        })
    }

    /// The journal row of new entry `i`, once the store gave it `id`.
    pub fn entry_row(&self, i: usize, id: i64) -> TransactionRow {
        let entry = &self.entries[i];
        TransactionRow {
            id,
            account_id: entry.account,
            researcher_id: entry.researcher,
            amount: entry.amount,
            memo: entry.memo.clone(),
            idempotency_key: entry.key.clone(),
            created_at: self.at,
            balance_after: entry.balance_after,
        }
    }
}
