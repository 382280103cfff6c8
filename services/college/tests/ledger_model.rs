//! Property tests of the ledger's withdrawal rule, [`decide`], against a
//! plain sequential model.
//!
//! `decide` judges a whole batch at once, each request seeing the ones
//! before it, and defers the requests on accounts another writer has
//! locked. The model here judges one withdrawal at a time against a `Vec`
//! journal. Random plans over a tiny domain (two or three accounts, four
//! researchers, four keys, awards up to 60) make keys collide, members come
//! and go and accounts expire mid-plan. A harness plays the store: it builds
//! each batch's [`Locked`] as a store does once it holds the locks, writes
//! only what the [`Decision`] says, and runs deferred requests again as the
//! next batch. After every step, each outcome, every balance and the whole
//! journal must be the model's, and the bank's invariants must hold: a
//! balance is its award less its journal and never negative, nothing is
//! journaled at or after its account's expiry, and a key is journaled at
//! most once. The examples at the end pin the cases a person would name.
//!
//! Set `PROPTEST_CASES` to run more (or fewer) random plans.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use grantmesh_college::ledger::{
    Decision, Earlier, Locked, LockedAccount, Outcome, Refusal, Request, Role, TransactionRow,
    decide,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use uuid::Uuid;

/// Account slots a plan may open; it opens two or three of them.
const ACCOUNT_SLOTS: usize = 3;
/// A slot that is never opened, so that some withdrawals name an account
/// that does not exist.
const NO_ACCOUNT: usize = ACCOUNT_SLOTS;
/// Few researchers, so that members share accounts and keys.
const RESEARCHERS: usize = 4;
/// Few keys, so that keys meet again without being planned to.
const KEYS: [&str; 4] = ["k0", "k1", "k2", "k3"];
/// Awards small next to amounts, so that accounts run dry.
const MAX_AWARD: i64 = 60;
const MAX_AMOUNT: i64 = 25;
/// The latest expiry, in clock ticks after the start: close enough that
/// most plans see an account expire, and often see the clock land on the
/// very tick.
const MAX_EXPIRY: u64 = 20;
/// The longest single step of the clock, in ticks.
const MAX_ADVANCE: u64 = 6;
/// Steps per plan and withdrawals per batch: about 40 operations at most,
/// which is enough for every rule to meet every other while keeping a
/// shrunk counterexample short enough to read.
const MAX_STEPS: usize = 14;
const MAX_BATCH: usize = 4;
/// Random plans per run unless `PROPTEST_CASES` says otherwise: enough to
/// see every outcome many times over, in well under a second in debug.
const DEFAULT_CASES: u32 = 512;
/// Where the clock starts: arbitrary, but far from the epoch.
const START: Duration = Duration::from_secs(1_700_000_000);

fn account_id(slot: usize) -> Uuid {
    Uuid::from_u128(0xacc0_0000 + slot as u128)
}

fn researcher_id(researcher: usize) -> Uuid {
    Uuid::from_u128(0x5e5e_0000 + researcher as u128)
}

/// The store's clock at `tick`.
fn time(tick: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + START + Duration::from_secs(tick)
}

/// One account as the plan opens it.
#[derive(Clone, Debug)]
struct Opening {
    award: i64,
    /// The tick at which it expires.
    expires_at: u64,
    /// Its members at the start, by researcher number.
    members: Vec<(usize, Role)>,
}

/// A withdrawal, by account slot and researcher number.
#[derive(Clone, Debug, PartialEq)]
struct Withdraw {
    account: usize,
    caller: usize,
    amount: i64,
    key: &'static str,
}

impl Withdraw {
    /// The request, with a memo that tells it from every other withdrawal
    /// of the plan, so that a replay must name the right earlier entry.
    fn request(&self, memo: usize) -> Request {
        Request {
            account: account_id(self.account),
            caller: researcher_id(self.caller),
            amount: self.amount,
            key: self.key.into(),
            memo: format!("w{memo}"),
        }
    }
}

#[derive(Clone, Debug)]
enum Step {
    /// Withdrawals the store judges together. Those on a `busy` account
    /// find its lock held by another writer and go again as the next batch.
    Batch {
        withdrawals: Vec<Withdraw>,
        busy: Vec<usize>,
    },
    AddMember {
        account: usize,
        researcher: usize,
        role: Role,
    },
    ChangeRole {
        account: usize,
        researcher: usize,
        role: Role,
    },
    RemoveMember {
        account: usize,
        researcher: usize,
    },
    AdvanceClock {
        by: u64,
    },
}

#[derive(Clone, Debug)]
struct Plan {
    accounts: Vec<Opening>,
    steps: Vec<Step>,
}

/// How a generated withdrawal may echo one made earlier in the plan: left
/// to chance, a retry (same key and amount out of 25) would be rare.
#[derive(Clone, Debug)]
enum Echo {
    /// The same caller, key and amount.
    Retry,
    /// The same caller and key, for this amount.
    OtherAmount(i64),
    /// This researcher, with the same account, key and amount: keys are
    /// each caller's own, so this is a withdrawal of its own.
    OtherCaller(usize),
}

/// A withdrawal as generated: fresh, or echoing an earlier one if there is
/// one by then.
type Draw = (Withdraw, Option<(Index, Echo)>);

#[derive(Clone, Debug)]
enum RawStep {
    Batch(Vec<Draw>, Vec<bool>),
    Other(Step),
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Member), Just(Role::PrincipalInvestigator)]
}

fn opening() -> impl Strategy<Value = Opening> {
    (
        0..=MAX_AWARD,
        1..=MAX_EXPIRY,
        vec(prop::option::weighted(0.75, role()), RESEARCHERS),
    )
        .prop_map(|(award, expires_at, roles)| Opening {
            award,
            expires_at,
            members: roles
                .into_iter()
                .enumerate()
                .filter_map(|(researcher, role)| Some((researcher, role?)))
                .collect(),
        })
}

fn draw() -> impl Strategy<Value = Draw> {
    let withdraw = (
        prop_oneof![9 => 0..ACCOUNT_SLOTS, 1 => Just(NO_ACCOUNT)],
        0..RESEARCHERS,
        1..=MAX_AMOUNT,
        prop::sample::select(KEYS.to_vec()),
    )
        .prop_map(|(account, caller, amount, key)| Withdraw {
            account,
            caller,
            amount,
            key,
        });
    let echo = prop_oneof![
        2 => Just(Echo::Retry),
        1 => (1..=MAX_AMOUNT).prop_map(Echo::OtherAmount),
        1 => (0..RESEARCHERS).prop_map(Echo::OtherCaller),
    ];
    (
        withdraw,
        prop::option::weighted(0.4, (any::<Index>(), echo)),
    )
}

fn raw_step() -> impl Strategy<Value = RawStep> {
    prop_oneof![
        6 => (
            vec(draw(), 1..=MAX_BATCH),
            vec(prop::bool::weighted(0.15), ACCOUNT_SLOTS),
        )
            .prop_map(|(draws, busy)| RawStep::Batch(draws, busy)),
        1 => (0..ACCOUNT_SLOTS, 0..RESEARCHERS, role()).prop_map(
            |(account, researcher, role)| RawStep::Other(Step::AddMember {
                account,
                researcher,
                role,
            })
        ),
        1 => (0..ACCOUNT_SLOTS, 0..RESEARCHERS, role()).prop_map(
            |(account, researcher, role)| RawStep::Other(Step::ChangeRole {
                account,
                researcher,
                role,
            })
        ),
        1 => (0..ACCOUNT_SLOTS, 0..RESEARCHERS).prop_map(|(account, researcher)| {
            RawStep::Other(Step::RemoveMember {
                account,
                researcher,
            })
        }),
        1 => (1..=MAX_ADVANCE).prop_map(|by| RawStep::Other(Step::AdvanceClock { by })),
    ]
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        vec(opening(), 2..=ACCOUNT_SLOTS),
        vec(raw_step(), 0..=MAX_STEPS),
    )
        .prop_map(|(accounts, raw)| resolve(accounts, raw))
}

/// Turns echoes into the withdrawals they echo, moves fresh withdrawals
/// off unopened slots other than [`NO_ACCOUNT`], and keeps a batch's busy
/// accounts to the open ones it touches, so that a counterexample reads
/// as plain withdrawals.
fn resolve(accounts: Vec<Opening>, raw: Vec<RawStep>) -> Plan {
    let mut earlier: Vec<Withdraw> = Vec::new();
    let mut steps = Vec::new();
    for step in raw {
        let (draws, busy) = match step {
            RawStep::Other(step) => {
                steps.push(step);
                continue;
            }
            RawStep::Batch(draws, busy) => (draws, busy),
        };
        let mut withdrawals = Vec::new();
        for (fresh, echo) in draws {
            let withdrawal = match echo {
                Some((nth, echo)) if !earlier.is_empty() => {
                    let mut withdrawal = nth.get(&earlier).clone();
                    match echo {
                        Echo::Retry => {}
                        Echo::OtherAmount(amount) => withdrawal.amount = amount,
                        Echo::OtherCaller(caller) => withdrawal.caller = caller,
                    }
                    withdrawal
                }
                // A slot the plan did not open would be a second missing
                // account; `NO_ACCOUNT` is enough of those.
                _ if fresh.account != NO_ACCOUNT => Withdraw {
                    account: fresh.account % accounts.len(),
                    ..fresh
                },
                _ => fresh,
            };
            earlier.push(withdrawal.clone());
            withdrawals.push(withdrawal);
        }
        let busy = (0..accounts.len())
            .filter(|&slot| busy[slot] && withdrawals.iter().any(|w| w.account == slot))
            .collect();
        steps.push(Step::Batch { withdrawals, busy });
    }
    Plan { accounts, steps }
}

/// A request's outcome with the entries it names as journal rows, so that
/// the store's answers and the model's can be compared.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Applied { row: TransactionRow, balance: i64 },
    Replayed { row: TransactionRow, balance: i64 },
    Refused(Refusal),
    Deferred,
}

/// Whether `row` holds the key `request` sends.
fn same_scope(row: &TransactionRow, request: &Request) -> bool {
    row.account_id == request.account
        && row.researcher_id == request.caller
        && row.idempotency_key == request.key
}

/// The reference: one withdrawal at a time against a plain journal.
struct Model {
    now: u64,
    accounts: Vec<ModelAccount>,
    journal: Vec<TransactionRow>,
}

struct ModelAccount {
    id: Uuid,
    award: i64,
    balance: i64,
    expires_at: SystemTime,
    members: Vec<(Uuid, Role)>,
}

impl Model {
    fn open(openings: &[Opening]) -> Self {
        let accounts = openings
            .iter()
            .enumerate()
            .map(|(slot, opening)| ModelAccount {
                id: account_id(slot),
                award: opening.award,
                balance: opening.award,
                expires_at: time(opening.expires_at),
                members: opening
                    .members
                    .iter()
                    .map(|&(researcher, role)| (researcher_id(researcher), role))
                    .collect(),
            })
            .collect();
        Self {
            now: 0,
            accounts,
            journal: Vec::new(),
        }
    }

    fn withdraw(&mut self, request: &Request) -> Seen {
        let Some(account) = self.accounts.iter_mut().find(|a| a.id == request.account) else {
            return Seen::Refused(Refusal::NoAccount);
        };
        let role = account
            .members
            .iter()
            .find(|(member, _)| *member == request.caller)
            .map(|(_, role)| *role);
        // Before the key: someone who is not a member learns nothing about
        // the keys used on the account, not even their own old ones.
        if !role.is_some_and(Role::may_withdraw) {
            return Seen::Refused(Refusal::NotMember);
        }
        // Before expiry and funds: a retry of what was applied gets the same
        // answer whenever it comes.
        if let Some(row) = self.journal.iter().find(|row| same_scope(row, request)) {
            if row.amount != request.amount {
                return Seen::Refused(Refusal::KeyReused {
                    previous_amount: row.amount,
                });
            }
            return Seen::Replayed {
                row: row.clone(),
                balance: account.balance,
            };
        }
        let now = time(self.now);
        if account.expires_at <= now {
            return Seen::Refused(Refusal::Expired);
        }
        if account.balance < request.amount {
            return Seen::Refused(Refusal::InsufficientFunds {
                balance: account.balance,
            });
        }
        account.balance -= request.amount;
        let row = TransactionRow {
            id: self.journal.len() as i64 + 1,
            account_id: request.account,
            researcher_id: request.caller,
            amount: request.amount,
            memo: request.memo.clone(),
            idempotency_key: request.key.clone(),
            created_at: now,
            balance_after: account.balance,
        };
        self.journal.push(row.clone());
        Seen::Applied {
            row,
            balance: account.balance,
        }
    }

    fn account(&mut self, slot: usize) -> Option<&mut ModelAccount> {
        let id = account_id(slot);
        self.accounts.iter_mut().find(|a| a.id == id)
    }

    fn add_member(&mut self, slot: usize, researcher: usize, role: Role) {
        let researcher = researcher_id(researcher);
        if let Some(account) = self.account(slot)
            && !account.members.iter().any(|(m, _)| *m == researcher)
        {
            account.members.push((researcher, role));
        }
    }

    fn change_role(&mut self, slot: usize, researcher: usize, role: Role) {
        let researcher = researcher_id(researcher);
        if let Some(account) = self.account(slot) {
            for member in &mut account.members {
                if member.0 == researcher {
                    member.1 = role;
                }
            }
        }
    }

    fn remove_member(&mut self, slot: usize, researcher: usize) {
        let researcher = researcher_id(researcher);
        if let Some(account) = self.account(slot) {
            account.members.retain(|(m, _)| *m != researcher);
        }
    }
}

/// The harness's store: what a real store keeps, changed only by what
/// [`decide`] says and by the membership and clock steps.
struct Store {
    now: u64,
    accounts: HashMap<Uuid, StoredAccount>,
    journal: Vec<TransactionRow>,
}

struct StoredAccount {
    balance: i64,
    expires_at: SystemTime,
    roles: HashMap<Uuid, Role>,
}

impl Store {
    fn open(openings: &[Opening]) -> Self {
        let accounts = openings
            .iter()
            .enumerate()
            .map(|(slot, opening)| {
                let account = StoredAccount {
                    balance: opening.award,
                    expires_at: time(opening.expires_at),
                    roles: opening
                        .members
                        .iter()
                        .map(|&(researcher, role)| (researcher_id(researcher), role))
                        .collect(),
                };
                (account_id(slot), account)
            })
            .collect();
        Self {
            now: 0,
            accounts,
            journal: Vec::new(),
        }
    }

    /// What a store reads once it holds the locks of the batch's accounts,
    /// except those in `busy`, whose locks another writer holds.
    fn lock(&self, requests: &[Request], busy: &HashSet<Uuid>) -> Locked {
        let mut locked = Locked {
            now: time(self.now),
            accounts: HashMap::new(),
            busy: HashSet::new(),
            used: HashMap::new(),
        };
        for request in requests {
            if let Some(account) = self.accounts.get(&request.account) {
                if busy.contains(&request.account) {
                    locked.busy.insert(request.account);
                } else {
                    // Only the roles of the batch's callers: as little as
                    // a store may read.
                    let held =
                        locked
                            .accounts
                            .entry(request.account)
                            .or_insert_with(|| LockedAccount {
                                balance: account.balance,
                                expires_at: account.expires_at,
                                roles: HashMap::new(),
                            });
                    if let Some(&role) = account.roles.get(&request.caller) {
                        held.roles.insert(request.caller, role);
                    }
                }
            }
            if let Some(row) = self.journal.iter().find(|row| same_scope(row, request)) {
                locked.used.insert(request.scope(), row.clone());
            }
        }
        locked
    }

    /// Judges `requests` as one batch, checks the decision's own shape,
    /// and writes it: the new entries get the next ids in order, and the
    /// balances are set from the decision and nothing else.
    fn batch(
        &mut self,
        requests: &[Request],
        busy: &HashSet<Uuid>,
    ) -> Result<Vec<Seen>, TestCaseError> {
        let locked = self.lock(requests, busy);
        let decision = decide(&locked, requests);
        check_shape(&locked, requests, &decision)?;
        let first_id = self.journal.len() as i64 + 1;
        let rows: Vec<TransactionRow> = (0..decision.entries.len())
            .map(|i| decision.entry_row(i, first_id + i as i64))
            .collect();
        self.journal.extend(rows.iter().cloned());
        for (id, balance) in &decision.balances {
            prop_assert!(
                locked.accounts.contains_key(id),
                "a balance for an account the batch does not hold: {id}"
            );
            self.accounts.get_mut(id).unwrap().balance = *balance;
        }
        decision
            .outcomes
            .iter()
            .map(|outcome| {
                Ok(match outcome {
                    Outcome::Applied { entry, balance } => Seen::Applied {
                        row: rows[*entry].clone(),
                        balance: *balance,
                    },
                    Outcome::Replayed {
                        earlier: Earlier::Journal(row),
                        balance,
                    } => Seen::Replayed {
                        row: row.clone(),
                        balance: *balance,
                    },
                    Outcome::Replayed {
                        earlier: Earlier::Batch(entry),
                        balance,
                    } => {
                        prop_assert!(*entry < rows.len(), "replays a missing entry {entry}");
                        Seen::Replayed {
                            row: rows[*entry].clone(),
                            balance: *balance,
                        }
                    }
                    Outcome::Refused(refusal) => Seen::Refused(refusal.clone()),
                    Outcome::Deferred => Seen::Deferred,
                })
            })
            .collect()
    }

    fn add_member(&mut self, slot: usize, researcher: usize, role: Role) {
        if let Some(account) = self.accounts.get_mut(&account_id(slot)) {
            account
                .roles
                .entry(researcher_id(researcher))
                .or_insert(role);
        }
    }

    fn change_role(&mut self, slot: usize, researcher: usize, role: Role) {
        if let Some(account) = self.accounts.get_mut(&account_id(slot))
            && let Some(held) = account.roles.get_mut(&researcher_id(researcher))
        {
            *held = role;
        }
    }

    fn remove_member(&mut self, slot: usize, researcher: usize) {
        if let Some(account) = self.accounts.get_mut(&account_id(slot)) {
            account.roles.remove(&researcher_id(researcher));
        }
    }
}

/// What a decision must be on its own, whatever the model says: one
/// outcome per request, deferred exactly on the busy accounts, stamped with
/// the store's clock, each new entry made by exactly one applied request in
/// order, and a balance for exactly the accounts it debited (amounts are
/// positive, so those are the accounts whose balance changed).
fn check_shape(
    locked: &Locked,
    requests: &[Request],
    decision: &Decision,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(decision.outcomes.len(), requests.len());
    prop_assert_eq!(decision.at, locked.now);
    for (request, outcome) in requests.iter().zip(&decision.outcomes) {
        prop_assert_eq!(
            *outcome == Outcome::Deferred,
            locked.busy.contains(&request.account),
            "{:?} for {:?}",
            outcome,
            request
        );
    }
    let applied: Vec<usize> = decision
        .outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            Outcome::Applied { entry, .. } => Some(*entry),
            _ => None,
        })
        .collect();
    prop_assert_eq!(applied, (0..decision.entries.len()).collect::<Vec<_>>());
    let mut debited: HashMap<Uuid, i64> = HashMap::new();
    for entry in &decision.entries {
        debited.insert(entry.account, entry.balance_after);
    }
    let mut debited: Vec<(Uuid, i64)> = debited.into_iter().collect();
    debited.sort_unstable();
    let mut balances = decision.balances.clone();
    balances.sort_unstable();
    prop_assert_eq!(balances, debited);
    Ok(())
}

/// The store and the model hold the same journal and balances, and the
/// bank's invariants hold.
fn agree(store: &Store, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(&store.journal, &model.journal);
    for account in &model.accounts {
        prop_assert_eq!(store.accounts[&account.id].balance, account.balance);
        let spent: i64 = model
            .journal
            .iter()
            .filter(|row| row.account_id == account.id)
            .map(|row| row.amount)
            .sum();
        prop_assert_eq!(account.balance, account.award - spent);
        prop_assert!(account.balance >= 0, "negative balance {}", account.balance);
    }
    for (i, row) in model.journal.iter().enumerate() {
        let account = &store.accounts[&row.account_id];
        prop_assert!(
            row.created_at < account.expires_at,
            "journaled at or after expiry: {:?}",
            row
        );
        let twice = model.journal[..i].iter().any(|earlier| {
            earlier.account_id == row.account_id
                && earlier.researcher_id == row.researcher_id
                && earlier.idempotency_key == row.idempotency_key
        });
        prop_assert!(!twice, "a key journaled twice: {:?}", row);
    }
    Ok(())
}

/// Plays `plan` on the store and the model side by side.
fn play(plan: &Plan) -> Result<(), TestCaseError> {
    let mut store = Store::open(&plan.accounts);
    let mut model = Model::open(&plan.accounts);
    let mut memo = 0;
    for step in &plan.steps {
        match step {
            Step::Batch { withdrawals, busy } => {
                let requests: Vec<Request> = withdrawals
                    .iter()
                    .map(|withdrawal| {
                        memo += 1;
                        withdrawal.request(memo)
                    })
                    .collect();
                let busy: HashSet<Uuid> = busy.iter().map(|&slot| account_id(slot)).collect();
                let seen = store.batch(&requests, &busy)?;
                let expected: Vec<Seen> = requests
                    .iter()
                    .map(|request| {
                        if busy.contains(&request.account) {
                            Seen::Deferred
                        } else {
                            model.withdraw(request)
                        }
                    })
                    .collect();
                prop_assert_eq!(seen, expected, "batch {:?}", requests);
                let deferred: Vec<Request> = requests
                    .into_iter()
                    .filter(|request| busy.contains(&request.account))
                    .collect();
                if !deferred.is_empty() {
                    let seen = store.batch(&deferred, &HashSet::new())?;
                    let expected: Vec<Seen> = deferred.iter().map(|r| model.withdraw(r)).collect();
                    prop_assert_eq!(seen, expected, "deferred batch {:?}", deferred);
                }
            }
            &Step::AddMember {
                account,
                researcher,
                role,
            } => {
                store.add_member(account, researcher, role);
                model.add_member(account, researcher, role);
            }
            &Step::ChangeRole {
                account,
                researcher,
                role,
            } => {
                store.change_role(account, researcher, role);
                model.change_role(account, researcher, role);
            }
            &Step::RemoveMember {
                account,
                researcher,
            } => {
                store.remove_member(account, researcher);
                model.remove_member(account, researcher);
            }
            &Step::AdvanceClock { by } => {
                store.now += by;
                model.now += by;
            }
        }
        agree(&store, &model)?;
    }
    Ok(())
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn batches_of_withdrawals_decide_what_one_at_a_time_would(plan in plan()) {
        play(&plan)?;
    }
}

fn one_account(award: i64, expires_at: u64, members: &[usize]) -> Store {
    Store::open(&[Opening {
        award,
        expires_at,
        members: members.iter().map(|&m| (m, Role::Member)).collect(),
    }])
}

fn withdraw(caller: usize, amount: i64, key: &'static str) -> Withdraw {
    Withdraw {
        account: 0,
        caller,
        amount,
        key,
    }
}

#[test]
fn a_retry_in_the_same_batch_replays_the_entry_made_earlier_in_it() {
    let store = one_account(50, 10, &[0]);
    let retry = withdraw(0, 20, "k0").request(1);
    let decision = decide(
        &store.lock(&[retry.clone(), retry.clone()], &HashSet::new()),
        &[retry.clone(), retry],
    );
    assert_eq!(
        decision.outcomes,
        vec![
            Outcome::Applied {
                entry: 0,
                balance: 30
            },
            Outcome::Replayed {
                earlier: Earlier::Batch(0),
                balance: 30
            },
        ]
    );
    assert_eq!(decision.entries.len(), 1);
    assert_eq!(decision.balances, vec![(account_id(0), 30)]);
}

#[test]
fn a_removed_members_retry_is_refused_as_not_a_member() -> Result<(), TestCaseError> {
    let mut store = one_account(50, 10, &[0, 1]);
    let retry = withdraw(0, 20, "k0").request(1);
    let first = store.batch(std::slice::from_ref(&retry), &HashSet::new())?;
    assert!(matches!(first[..], [Seen::Applied { balance: 30, .. }]));
    store.remove_member(0, 0);
    let again = store.batch(&[retry], &HashSet::new())?;
    assert_eq!(again, vec![Seen::Refused(Refusal::NotMember)]);
    Ok(())
}

#[test]
fn a_withdrawal_at_exactly_the_expiry_instant_is_refused() -> Result<(), TestCaseError> {
    let mut store = one_account(50, 10, &[0]);
    store.now = 9;
    let before = store.batch(&[withdraw(0, 5, "k0").request(1)], &HashSet::new())?;
    assert!(matches!(before[..], [Seen::Applied { balance: 45, .. }]));
    store.now = 10;
    let at = store.batch(&[withdraw(0, 5, "k1").request(2)], &HashSet::new())?;
    assert_eq!(at, vec![Seen::Refused(Refusal::Expired)]);
    Ok(())
}
