//! What a simulation counts while it runs ([`Tally`]) and what it reports at
//! the end ([`Summary`]): a table for people, one JSON object with `--json`.

use std::collections::BTreeMap;
use std::time::Duration;

use comfy_table::Table;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::audit::Breach;

/// Highest withdrawal latency the histogram records, in microseconds; a
/// slower call is counted at this value. A minute is far beyond any timeout.
const LATENCY_MAX_US: u64 = 60_000_000;

/// Significant figures of the latency histogram: 1 % resolution is plenty.
const LATENCY_SIGNIFICANT_FIGURES: u8 = 2;

/// Why a withdrawal was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    InsufficientFunds,
    Expired,
    Other,
}

/// The counters every actor adds to, behind one lock.
pub struct Tally {
    pub accepted: u64,
    /// Rejected proposals by the agency's reason (without the requested amount).
    pub rejected: BTreeMap<String, u64>,
    /// Projects that never got a decision, by error.
    pub failed: BTreeMap<String, u64>,
    /// The first project failure's step and whole message.
    pub first_failure: Option<String>,
    pub applied: u64,
    pub replayed: u64,
    pub refused: BTreeMap<Refusal, u64>,
    /// Refusals of kind [`Refusal::Other`], by gRPC code and message.
    pub other_errors: BTreeMap<String, u64>,
    pub money_moved: i64,
    /// Latency of every withdrawal call, in microseconds.
    pub latency: Histogram<u64>,
    /// Projects whose actors are still running.
    pub running: u64,
    /// Accepted accounts, in the order they were opened.
    pub accounts: Vec<String>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            accepted: 0,
            rejected: BTreeMap::new(),
            failed: BTreeMap::new(),
            first_failure: None,
            applied: 0,
            replayed: 0,
            refused: BTreeMap::new(),
            other_errors: BTreeMap::new(),
            money_moved: 0,
            latency: Histogram::new_with_max(LATENCY_MAX_US, LATENCY_SIGNIFICANT_FIGURES)
                .expect("valid histogram bounds"),
            running: 0,
            accounts: Vec::new(),
        }
    }
}

impl Tally {
    pub fn record_latency(&mut self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latency
            .saturating_record(micros.clamp(1, LATENCY_MAX_US));
    }

    pub fn refuse(&mut self, refusal: Refusal) {
        *self.refused.entry(refusal).or_default() += 1;
    }
}

/// The audit's outcome; in JSON `{"outcome": "passed", "accounts": 6}` and so on.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum AuditOutcome {
    /// Every account passed every check.
    Passed { accounts: usize },
    /// At least one invariant was breached.
    Breached {
        accounts: usize,
        breaches: Vec<Breach>,
    },
    /// `--no-audit`: the store was not read.
    Skipped,
}

#[derive(Clone, Debug, Serialize)]
pub struct Proposals {
    pub accepted: u64,
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    pub failed_by_error: BTreeMap<String, u64>,
    /// The first failure's step and whole message, when a project failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_failure: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Withdrawals {
    pub applied: u64,
    pub replayed: u64,
    pub refused: BTreeMap<Refusal, u64>,
    pub other_errors: BTreeMap<String, u64>,
    pub per_second: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

/// Everything a run reports.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub seed: u64,
    pub projects: u32,
    pub students: u32,
    pub proposals: Proposals,
    pub withdrawals: Withdrawals,
    pub money_moved_minor: i64,
    pub duration_seconds: f64,
    /// Whether `--max-duration` cut the run short.
    pub stopped_by_max_duration: bool,
    pub accounts: Vec<String>,
    pub audit: AuditOutcome,
}

impl Summary {
    pub fn new(
        seed: u64,
        projects: u32,
        students: u32,
        tally: &Tally,
        took: Duration,
        stopped_by_max_duration: bool,
        audit: AuditOutcome,
    ) -> Self {
        let seconds = took.as_secs_f64();
        let calls = tally.applied + tally.replayed + tally.refused.values().sum::<u64>();
        let ms = |q: f64| {
            if tally.latency.is_empty() {
                0.0
            } else {
                tally.latency.value_at_quantile(q) as f64 / 1_000.0
            }
        };
        Summary {
            seed,
            projects,
            students,
            proposals: Proposals {
                accepted: tally.accepted,
                rejected: tally.rejected.values().sum(),
                rejected_by_reason: tally.rejected.clone(),
                failed_by_error: tally.failed.clone(),
                first_failure: tally.first_failure.clone(),
            },
            withdrawals: Withdrawals {
                applied: tally.applied,
                replayed: tally.replayed,
                refused: tally.refused.clone(),
                other_errors: tally.other_errors.clone(),
                per_second: if seconds > 0.0 {
                    calls as f64 / seconds
                } else {
                    0.0
                },
                latency_p50_ms: ms(0.5),
                latency_p99_ms: ms(0.99),
            },
            money_moved_minor: tally.money_moved,
            duration_seconds: seconds,
            stopped_by_max_duration,
            accounts: tally.accounts.clone(),
            audit,
        }
    }

    pub fn breaches(&self) -> &[Breach] {
        match &self.audit {
            AuditOutcome::Breached { breaches, .. } => breaches,
            _ => &[],
        }
    }

    /// Projects that failed before their account's end (no decision, a
    /// sign-up or set-up that kept failing), however many steps in.
    pub fn failed_projects(&self) -> u64 {
        self.proposals.failed_by_error.values().sum()
    }

    /// How the run exits: 7 when the audit found a breach; 5 when projects
    /// failed (the run did not do what it was asked, even where the books
    /// of the rest balance); else 0.
    pub fn exit_code(&self) -> u8 {
        if !self.breaches().is_empty() {
            crate::exit::INVARIANT_BREACHED
        } else if self.failed_projects() > 0 {
            crate::exit::UNAVAILABLE
        } else {
            crate::exit::OK
        }
    }

    /// The summary as a table for a terminal.
    pub fn table(&self) -> Table {
        let mut table = Table::new();
        table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
        table.set_header(["simulation", "result"]);
        let mut row = |name: &str, value: String| {
            table.add_row([name.to_owned(), value]);
        };
        row("seed", self.seed.to_string());
        row(
            "projects × students",
            format!("{} × {}", self.projects, self.students),
        );
        row("proposals accepted", thousands(self.proposals.accepted));
        row("proposals rejected", thousands(self.proposals.rejected));
        for (reason, count) in &self.proposals.rejected_by_reason {
            row(
                "  rejected because",
                format!("{count} × {}", with_separators(reason)),
            );
        }
        for (error, count) in &self.proposals.failed_by_error {
            row("  no decision", format!("{count} × {error}"));
        }
        row("withdrawals applied", thousands(self.withdrawals.applied));
        row("withdrawals replayed", thousands(self.withdrawals.replayed));
        for refusal in [Refusal::InsufficientFunds, Refusal::Expired, Refusal::Other] {
            let count = self.withdrawals.refused.get(&refusal).copied().unwrap_or(0);
            let name = match refusal {
                Refusal::InsufficientFunds => "refused: insufficient funds",
                Refusal::Expired => "refused: expired",
                Refusal::Other => "refused: other",
            };
            row(name, thousands(count));
        }
        for (error, count) in &self.withdrawals.other_errors {
            row("  other", format!("{count} × {error}"));
        }
        row(
            "money moved (minor units)",
            thousands(self.money_moved_minor),
        );
        let stopped = if self.stopped_by_max_duration {
            " (stopped by --max-duration)"
        } else {
            ""
        };
        row(
            "duration",
            format!("{:.2} s{stopped}", self.duration_seconds),
        );
        row(
            "withdrawal calls / s",
            format!("{:.1}", self.withdrawals.per_second),
        );
        row(
            "withdrawal latency p50 / p99",
            format!(
                "{:.2} ms / {:.2} ms",
                self.withdrawals.latency_p50_ms, self.withdrawals.latency_p99_ms
            ),
        );
        let audit = match &self.audit {
            AuditOutcome::Passed { accounts } => format!(
                "passed: {} account(s) read back from the store:\n{}",
                thousands(*accounts as u64),
                AUDIT_CHECKS.map(|check| format!("✓ {check}")).join("\n")
            ),
            AuditOutcome::Breached { accounts, breaches } => {
                format!(
                    "BREACHED: {} breaches in {accounts} accounts",
                    breaches.len()
                )
            }
            AuditOutcome::Skipped => "skipped (--no-audit)".to_owned(),
        };
        row("audit", audit);
        if self.failed_projects() > 0 {
            row(
                "FAILED",
                format!(
                    "{} of {} project(s) did not run to the end (see \"no decision\")",
                    self.failed_projects(),
                    self.projects
                ),
            );
        }
        table
    }
}

/// What the audit checks of every account, in words (the list the README promises).
pub const AUDIT_CHECKS: [&str; 7] = [
    "balance = award − journal",
    "never negative",
    "each entry's balance-after is right",
    "nothing at or after expiry",
    "every acknowledged withdrawal journaled exactly once",
    "one entry per idempotency key",
    "no entry nobody was told of",
];

/// `1234567` → `1,234,567`.
pub fn thousands(n: impl Into<i128>) -> String {
    let n: i128 = n.into();
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// Every run of five or more digits in `text` with thousands separators
/// (an agency's reason: "band of 300000 to 500000" → "300,000 to 500,000").
fn with_separators(text: &str) -> String {
    let mut out = String::new();
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        if digits.len() >= 5
            && let Ok(n) = digits.parse::<i64>()
        {
            out.push_str(&thousands(n));
        } else {
            out.push_str(digits);
        }
        digits.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            flush(&mut digits, &mut out);
            out.push(c);
        }
    }
    flush(&mut digits, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(tally: &Tally, audit: AuditOutcome) -> Summary {
        Summary::new(1, 2, 1, tally, Duration::from_secs(1), false, audit)
    }

    #[test]
    fn a_run_whose_projects_failed_does_not_exit_0_even_when_its_audit_passed() {
        let passed = AuditOutcome::Passed { accounts: 1 };
        let mut tally = Tally {
            accepted: 1,
            ..Tally::default()
        };
        assert_eq!(summary(&tally, passed.clone()).exit_code(), 0);
        tally.failed.insert("sign up: Unavailable".to_owned(), 1);
        let failed = summary(&tally, passed);
        assert_eq!(failed.exit_code(), crate::exit::UNAVAILABLE);
        assert!(failed.table().to_string().contains("FAILED"));
        let breached = AuditOutcome::Breached {
            accounts: 1,
            breaches: Vec::new(),
        };
        // An empty breach list is no breach; one breach outranks failed projects.
        assert_eq!(
            summary(&tally, breached).exit_code(),
            crate::exit::UNAVAILABLE
        );
        let breached = AuditOutcome::Breached {
            accounts: 1,
            breaches: vec![Breach {
                account: uuid::Uuid::nil(),
                check: super::super::audit::Check::NeverNegative,
                detail: "balance is -1".to_owned(),
            }],
        };
        assert_eq!(
            summary(&tally, breached).exit_code(),
            crate::exit::INVARIANT_BREACHED
        );
    }

    #[test]
    fn numbers_in_the_summary_have_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(-1234567), "-1,234,567");
        assert_eq!(
            with_separators("the requested amount is outside nsf's band of 300000 to 500000"),
            "the requested amount is outside nsf's band of 300,000 to 500,000"
        );
        assert_eq!(with_separators("365 days"), "365 days");
    }
}
