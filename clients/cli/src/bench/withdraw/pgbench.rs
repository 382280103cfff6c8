//! pgbench's side of the bench, straight against the same database: the
//! one-statement withdrawal the College ran before batching
//! (`clients/cli/bench/pgbench/withdraw.sql`), the baseline every
//! mesh/pgbench ratio is against.
//!
//! The script is kept as it was, not checked against the College's store:
//! it is the fixed yardstick, not a copy of what the College runs now
//! (since issue 18 the College decides each batch in Rust between two
//! pipelined round trips, which no one pgbench script repeats).
//! [`Pgbench::run`] runs it for one cell and reads pgbench's summary (rate,
//! transactions, failures) and its per-transaction log (every latency).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use tokio::time::Instant;

use super::MEMO;
use super::measure::{Measured, Sampler, histogram};

/// The baseline script, as it lives in the repository.
const ONE_STATEMENT_SCRIPT: &str = include_str!("../../../bench/pgbench/withdraw.sql");

/// pgbench's variables for one cell.
pub(super) struct PgbenchVars<'a> {
    /// Accounts in play: the script picks `bench_accounts.n` in `1..=naccounts`.
    pub(super) naccounts: usize,
    /// The researcher who withdraws.
    pub(super) researcher: &'a str,
    /// The cell and round, which makes idempotency keys unique across runs.
    pub(super) tag: &'a str,
}

/// pgbench, ready to run the script against the bench database.
pub(super) struct Pgbench {
    /// The pgbench binary.
    binary: PathBuf,
    /// The one-statement script, written into `work`.
    script: PathBuf,
    /// The bench database.
    url: String,
    /// The run's scratch directory: the script and pgbench's transaction logs.
    work: PathBuf,
}

impl Pgbench {
    /// Writes the script into `work`, for `binary` to run against `url`.
    pub(super) fn new(binary: &Path, url: &str, work: &Path) -> anyhow::Result<Self> {
        let script = work.join("withdraw.sql");
        std::fs::write(&script, ONE_STATEMENT_SCRIPT)?;
        Ok(Self {
            binary: binary.to_owned(),
            script,
            url: url.to_owned(),
            work: work.to_owned(),
        })
    }

    /// One pgbench run: (withdrawals made, what was measured); every
    /// transaction is one withdrawal.
    pub(super) async fn run(
        &self,
        sampler: &Sampler,
        clients: usize,
        duration: Duration,
        vars: &PgbenchVars<'_>,
        phase: &str,
    ) -> anyhow::Result<(u64, Measured)> {
        let (pgbench, url, work) = (&self.binary, &self.url, &self.work);
        let run = format!("{}o{phase}", vars.tag);
        let log_prefix = work.join(format!("log-{run}"));
        let mut command = tokio::process::Command::new(pgbench);
        command
            .args(["-n", "-M", "prepared", "-f"])
            .arg(&self.script)
            .args([
                "-c",
                &clients.to_string(),
                "-j",
                &clients.min(2).to_string(),
            ])
            .args(["-T", &duration.as_secs().to_string()])
            .args(["-D", &format!("naccounts={}", vars.naccounts)])
            .args(["-D", &format!("researcher={}", vars.researcher)])
            .args([
                "-D",
                "amount=1",
                "-D",
                &format!("memo={MEMO}"),
                "-D",
                &format!("run={run}"),
                "-D",
                "seq=0",
            ])
            .arg("-l")
            .arg(format!("--log-prefix={}", log_prefix.display()))
            .arg(url)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let before = sampler.sample().await;
        let started = Instant::now();
        let output = command
            .output()
            .await
            .with_context(|| format!("failed to run {}", pgbench.display()))?;
        let window = started.elapsed();
        let cpu = sampler.sample().await - before;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() || stderr.contains("aborted") {
            bail!("pgbench failed ({}):\n{stdout}{stderr}", output.status);
        }
        let (processed, tps) = summary(&stdout)?;
        // Every transaction's latency, from the per-client logs.
        let latency = read_logs(work, &log_prefix)?;
        if latency.len() != processed {
            bail!(
                "pgbench logged {} transactions but reports {processed}",
                latency.len()
            );
        }
        // The rate is pgbench's own (without connection set-up); the CPU is
        // pgbench's whole life, in which it processed every transaction.
        Ok((
            processed,
            Measured {
                rate: tps,
                latency,
                cpu,
                cpu_wall: window,
                cpu_count: processed,
            },
        ))
    }
}

/// From pgbench's printed summary: (transactions processed, tps); an error
/// when a transaction failed.
fn summary(stdout: &str) -> anyhow::Result<(u64, f64)> {
    let field = |label: &str| -> anyhow::Result<f64> {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(label))
            .with_context(|| format!("no {label:?} in pgbench's output:\n{stdout}"))?;
        let value = line[label.len()..].split_whitespace().next().unwrap_or("");
        value
            .parse()
            .with_context(|| format!("cannot read {line:?}"))
    };
    let processed = field("number of transactions actually processed:")? as u64;
    let failed = field("number of failed transactions:").unwrap_or(0.0);
    if failed > 0.0 {
        bail!("pgbench reports failed transactions:\n{stdout}");
    }
    let tps = field("tps =")?;
    Ok((processed, tps))
}

/// Every latency in the per-client logs `pgbench -l --log-prefix=log_prefix`
/// wrote into `work` (`PREFIX.PID[.THREAD]`, one line per transaction with
/// the latency in µs as its third field); the logs are removed once read.
fn read_logs(work: &Path, log_prefix: &Path) -> anyhow::Result<Histogram<u64>> {
    let mut latency = histogram();
    let prefix = log_prefix
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    for entry in std::fs::read_dir(work)? {
        let entry = entry?;
        if !entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(&format!("{prefix}.")))
        {
            continue;
        }
        for line in std::fs::read_to_string(entry.path())?.lines() {
            let micros: u64 = line
                .split_whitespace()
                .nth(2)
                .and_then(|f| f.parse().ok())
                .with_context(|| format!("unexpected pgbench log line {line:?}"))?;
            latency.saturating_record(micros);
        }
        std::fs::remove_file(entry.path())?;
    }
    Ok(latency)
}

/// The pgbench to run: `given`, else `pgbench` on PATH, else the newest
/// `/usr/lib/postgresql/*/bin/pgbench`.
pub(super) fn find_pgbench(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_owned());
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("pgbench"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.flatten()
                .map(|d| d.path().join("bin/pgbench"))
                .collect()
        })
        .unwrap_or_default();
    debian.sort();
    debian.reverse(); // the newest version first
    on_path
        .into_iter()
        .chain(debian)
        .find(|path| path.is_file())
        .context("no pgbench found on PATH or in /usr/lib/postgresql/*/bin: install postgresql-client or pass --pgbench")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pgbench 15's summary of a run, as it prints it.
    const SUMMARY: &str = "transaction type: withdraw.sql
scaling factor: 1
query mode: prepared
number of clients: 4
number of threads: 2
maximum number of tries: 1
duration: 1 s
number of transactions actually processed: 1594
number of failed transactions: 0 (0.000%)
latency average = 2.509 ms
initial connection time = 10.123 ms
tps = 1594.123456 (without initial connection time)
";

    #[test]
    fn the_summary_gives_transactions_processed_and_tps() {
        let (processed, tps) = summary(SUMMARY).unwrap();
        assert_eq!(processed, 1594);
        assert!((tps - 1594.123456).abs() < 1e-9, "{tps}");
    }

    #[test]
    fn a_summary_with_failed_transactions_is_an_error() {
        let failed = SUMMARY.replace(
            "number of failed transactions: 0 (0.000%)",
            "number of failed transactions: 3 (0.188%)",
        );
        let err = summary(&failed).unwrap_err();
        assert!(err.to_string().contains("failed transactions"), "{err:#}");
    }

    #[test]
    fn a_summary_without_a_rate_is_an_error() {
        let cut = SUMMARY.replace("tps = 1594.123456 (without initial connection time)\n", "");
        let err = summary(&cut).unwrap_err();
        assert!(err.to_string().contains("\"tps =\""), "{err:#}");
    }

    #[test]
    fn the_logs_of_one_run_give_every_latency_and_are_removed() {
        let work = std::env::temp_dir().join(format!("gm-pgbench-logs-{}", std::process::id()));
        std::fs::create_dir_all(&work).unwrap();
        // Two clients' logs of this run, and one of another run that must stay.
        std::fs::write(work.join("log-s1m.101"), "0 0 250 0 1 2\n0 1 750 0 1 3\n").unwrap();
        std::fs::write(work.join("log-s1m.101.1"), "1 0 1500 0 1 4\n").unwrap();
        std::fs::write(work.join("log-s1mx.102"), "0 0 9 0 1 2\n").unwrap();
        let latency = read_logs(&work, &work.join("log-s1m")).unwrap();
        let left: Vec<_> = std::fs::read_dir(&work)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        std::fs::remove_dir_all(&work).unwrap();
        assert_eq!(latency.len(), 3);
        assert_eq!(latency.min(), 250);
        assert_eq!(
            latency.value_at_quantile(1.0),
            latency.highest_equivalent(1500)
        );
        assert_eq!(left, ["log-s1mx.102"]);
    }
}
