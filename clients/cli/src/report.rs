//! `grantmesh report`: an account's spend against its time — awarded,
//! spent, available; the share of the period elapsed beside the share of
//! the award spent (the burn rate); and the day the money runs out at the
//! rate so far. Computed from the account and its whole journal as the
//! college gives them, so it is exactly what the ledger says. Printed as a
//! table, as JSON, or as CSV (one header line and one line per budget line:
//! today, the account as a whole), like `transactions --output csv`.

use std::time::{Duration, SystemTime};

use grantmesh_proto::v1::{Account, Member, Transaction};
use serde::Serialize;

use crate::output::{self, Format};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The figures of one account.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub account_id: String,
    pub title: String,
    pub currency: String,
    /// The budget line (all of the account, until accounts have lines).
    pub line: String,
    pub awarded_minor: i64,
    pub spent_minor: i64,
    pub available_minor: i64,
    pub withdrawals: usize,
    /// Of the period from opening to expiry, how much has passed (0–100).
    pub period_elapsed_percent: f64,
    /// Of the award, how much is spent (0–100).
    pub award_spent_percent: f64,
    /// Minor units spent per day so far.
    pub spent_per_day_minor: i64,
    /// When the money runs out at the rate so far (RFC 3339), if before the
    /// account expires; empty when it lasts (or nothing is spent yet).
    pub runs_out_at: String,
    pub opened_at: String,
    pub expires_at: String,
}

fn time(t: Option<&prost_types::Timestamp>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// `part` of `whole` in percent, to a tenth, from integers (money never
/// goes through floating point; only the printed share does).
fn percent(part: i128, whole: i128) -> f64 {
    if whole <= 0 {
        return 0.0;
    }
    let permille = (part * 1000 + whole / 2) / whole;
    permille.clamp(0, 1000) as f64 / 10.0
}

/// The report of `account` with its whole `journal`, as of `now`.
pub fn report(account: &Account, journal: &[Transaction], now: SystemTime) -> Report {
    let opened = time(account.opened_at.as_ref());
    let expires = time(account.expires_at.as_ref());
    let spent: i64 = journal.iter().map(|t| t.amount_minor).sum();
    let period = expires.duration_since(opened).unwrap_or_default();
    let elapsed = now.duration_since(opened).unwrap_or_default().min(period);
    // Whole minor units a day; a rate over less than a day counts as a day.
    let day_secs = i128::from(DAY.as_secs());
    let elapsed_secs = i128::from(elapsed.as_secs()).max(day_secs);
    let per_day = i64::try_from(i128::from(spent) * day_secs / elapsed_secs).unwrap_or(i64::MAX);
    let runs_out_at = if per_day > 0 && account.balance_minor > 0 {
        let left_secs = i128::from(account.balance_minor) * day_secs / i128::from(per_day);
        let out = now + Duration::from_secs(u64::try_from(left_secs).unwrap_or(u64::MAX / 4));
        if out < expires {
            humantime::format_rfc3339_seconds(out).to_string()
        } else {
            String::new()
        }
    } else if per_day > 0 {
        humantime::format_rfc3339_seconds(now).to_string()
    } else {
        String::new()
    };
    Report {
        account_id: account.account_id.clone(),
        title: account.title.clone(),
        currency: if account.currency.is_empty() {
            grantmesh_proto::money::DEFAULT_CURRENCY.to_owned()
        } else {
            account.currency.clone()
        },
        line: "all".to_owned(),
        awarded_minor: account.award_minor,
        spent_minor: spent,
        available_minor: account.balance_minor,
        withdrawals: journal.len(),
        period_elapsed_percent: percent(
            i128::from(elapsed.as_secs()),
            i128::from(period.as_secs()),
        ),
        award_spent_percent: percent(i128::from(spent), i128::from(account.award_minor)),
        spent_per_day_minor: per_day,
        runs_out_at,
        opened_at: output::time(account.opened_at.as_ref()),
        expires_at: output::time(account.expires_at.as_ref()),
    }
}

/// Prints `report` as `format` asks.
pub fn print(report: &Report, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string(report)?),
        Format::Csv => {
            let mut out = csv::Writer::from_writer(std::io::stdout());
            out.serialize(report)?;
            out.flush()?;
        }
        Format::Table => {
            let money = |minor| output::money(&report.currency, minor);
            let runs_out = if report.runs_out_at.is_empty() {
                "not before it expires, at the rate so far".to_owned()
            } else {
                report.runs_out_at.clone()
            };
            let table = output::record(&[
                ("account", report.account_id.clone()),
                ("title", report.title.clone()),
                ("awarded", money(report.awarded_minor)),
                (
                    "spent",
                    format!(
                        "{} in {} withdrawal(s)",
                        money(report.spent_minor),
                        report.withdrawals
                    ),
                ),
                ("available", money(report.available_minor)),
                (
                    "burn",
                    format!(
                        "{}% of the award spent in {}% of the period",
                        report.award_spent_percent, report.period_elapsed_percent
                    ),
                ),
                ("per day", money(report.spent_per_day_minor)),
                ("runs out", runs_out),
                (
                    "period",
                    format!("{} to {}", report.opened_at, report.expires_at),
                ),
            ]);
            println!("{}", table.trim_fmt());
        }
    }
    Ok(())
}

/// One CSV record of the journal (columns named as the JSON of `report`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JournalLine<'a> {
    transaction: &'a str,
    when: String,
    researcher_id: &'a str,
    researcher: String,
    amount: String,
    currency: &'a str,
    amount_minor: i64,
    balance_after_minor: i64,
    memo: &'a str,
    idempotency_key: &'a str,
}

/// Prints a journal as CSV, newest first, researchers named from `members`.
pub fn journal_csv(
    transactions: &[Transaction],
    members: &[Member],
    currency: &str,
) -> anyhow::Result<()> {
    let code = if currency.is_empty() {
        grantmesh_proto::money::DEFAULT_CURRENCY
    } else {
        currency
    };
    let number = |minor: i64| {
        grantmesh_proto::money::Currency::parse(code)
            .map(|c| c.number(minor).replace(',', ""))
            .unwrap_or_else(|_| minor.to_string())
    };
    let mut out = csv::Writer::from_writer(std::io::stdout());
    for t in transactions {
        out.serialize(JournalLine {
            transaction: &t.transaction_id,
            when: output::time(t.created_at.as_ref()),
            researcher_id: &t.researcher_id,
            researcher: output::researcher_name(members, &t.researcher_id),
            amount: number(t.amount_minor),
            currency: code,
            amount_minor: t.amount_minor,
            balance_after_minor: t.balance_after_minor,
            memo: &t.memo,
            idempotency_key: &t.idempotency_key,
        })?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(t: SystemTime) -> Option<prost_types::Timestamp> {
        Some(t.into())
    }

    fn account(opened: SystemTime, days: u64, award: i64, balance: i64) -> Account {
        Account {
            account_id: "a".into(),
            award_minor: award,
            balance_minor: balance,
            currency: "EUR".into(),
            opened_at: ts(opened),
            expires_at: ts(opened + DAY * days as u32),
            ..Account::default()
        }
    }

    fn spent(amounts: &[i64]) -> Vec<Transaction> {
        amounts
            .iter()
            .map(|&amount_minor| Transaction {
                amount_minor,
                ..Transaction::default()
            })
            .collect()
    }

    #[test]
    fn the_burn_rate_compares_the_award_spent_with_the_period_elapsed() {
        let opened = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        // 100 days of 400: after 25 days, 200,000.00 of 400,000.00 spent.
        let a = account(opened, 100, 40_000_000, 20_000_000);
        let r = report(&a, &spent(&[5_000_000, 15_000_000]), opened + DAY * 25);
        assert_eq!(r.spent_minor, 20_000_000);
        assert_eq!(r.available_minor, 20_000_000);
        assert_eq!(
            (r.award_spent_percent, r.period_elapsed_percent),
            (50.0, 25.0)
        );
        assert_eq!(r.spent_per_day_minor, 800_000);
        // 20,000,000 left at 800,000 a day: 25 days more, on day 50.
        assert_eq!(
            r.runs_out_at,
            humantime::format_rfc3339_seconds(opened + DAY * 50).to_string()
        );
    }

    #[test]
    fn money_that_lasts_past_the_expiry_does_not_run_out_and_nothing_spent_has_no_rate() {
        let opened = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let a = account(opened, 10, 1_000_000, 990_000);
        let slow = report(&a, &spent(&[10_000]), opened + DAY * 5);
        assert_eq!(slow.runs_out_at, "");
        let idle = report(
            &account(opened, 10, 1_000_000, 1_000_000),
            &[],
            opened + DAY,
        );
        assert_eq!(
            (idle.spent_per_day_minor, idle.runs_out_at.as_str()),
            (0, "")
        );
        assert_eq!(idle.award_spent_percent, 0.0);
        // Past its expiry the period is all elapsed, never more.
        let late = report(&a, &spent(&[10_000]), opened + DAY * 30);
        assert_eq!(late.period_elapsed_percent, 100.0);
    }
}
