//! What one side of one cell measured, and the tables printed from it.
//!
//! A [`Measured`] holds a rate, a latency histogram (microseconds) and the
//! CPU ticks spent meanwhile, split by who spent them ([`CpuUse`], sampled
//! from `/proc` by a [`Sampler`], see [`super::super::cpu`]). A [`Row`] puts
//! the mesh and pgbench side of one scenario and concurrency together;
//! [`print_tables`] prints the rates and latencies, then where the CPU went;
//! [`print_transport_table`] puts TLS and plaintext side by side.
//!
//! `bench heartbeat` measures with the same [`Measured`] and [`Sampler`].

use std::time::Duration;

use hdrhistogram::Histogram;

use super::super::cpu;
use super::super::transport::{Kind, ratio};

/// What one side of one cell measured.
pub(in crate::bench) struct Measured {
    /// Withdrawals (calls) per second over the measured window.
    pub(in crate::bench) rate: f64,
    /// Latencies in microseconds.
    pub(in crate::bench) latency: Histogram<u64>,
    /// CPU spent over `cpu_wall`, in which `cpu_count` withdrawals completed.
    pub(in crate::bench) cpu: CpuUse,
    /// The window `cpu` was sampled over.
    pub(in crate::bench) cpu_wall: Duration,
    /// Withdrawals completed in `cpu_wall`.
    pub(in crate::bench) cpu_count: u64,
}

/// CPU ticks spent during a window, by who spent them.
#[derive(Default, Clone, Copy)]
pub(in crate::bench) struct CpuUse {
    /// This process (mesh) or pgbench.
    driver: u64,
    /// Registry and College children (mesh only; idle during pgbench).
    mesh: u64,
    /// The PostgreSQL server and its backends.
    postgres: u64,
    /// The whole machine: busy ticks, and all ticks (busy and idle) of every core.
    machine_busy: u64,
    machine_total: u64,
}

/// One line of the tables: both sides of one scenario at one concurrency.
pub(super) struct Row {
    /// The scenario's name as printed ([`super::Scenario::name`]).
    pub(super) scenario: String,
    /// Concurrent clients on either side.
    pub(super) clients: usize,
    /// The mesh side on each transport (TLS first), over every round.
    pub(super) meshes: Vec<(Kind, Measured)>,
    /// pgbench running the one-statement withdrawal (the baseline), over every round.
    pub(super) pgbench: Measured,
    /// The batch sizes the College used in this cell.
    pub(super) sizes: super::BatchSizes,
    /// First mesh/pgbench of each round.
    pub(super) ratios: Vec<f64>,
    /// TLS/plaintext of each round; empty unless both ran.
    pub(super) transport_ratios: Vec<f64>,
}

impl Measured {
    /// Rounds of equal length as one: mean rate, every latency, all CPU.
    pub(in crate::bench) fn combine(rounds: Vec<Measured>) -> Measured {
        let n = rounds.len().max(1) as f64;
        let mut all = Measured {
            rate: 0.0,
            latency: histogram(),
            cpu: CpuUse::default(),
            cpu_wall: Duration::ZERO,
            cpu_count: 0,
        };
        for round in rounds {
            all.rate += round.rate / n;
            all.latency.add(&round.latency).expect("same bounds");
            all.cpu = all.cpu + round.cpu;
            all.cpu_wall += round.cpu_wall;
            all.cpu_count += round.cpu_count;
        }
        all
    }
}

/// Processes whose CPU is sampled.
pub(in crate::bench) struct Sampler {
    /// The registry and College children.
    pub(in crate::bench) children: Vec<u32>,
    /// The PostgreSQL server, when it runs on this machine.
    pub(in crate::bench) postmaster: Option<u32>,
}

impl Sampler {
    pub(in crate::bench) async fn sample(&self) -> CpuUse {
        // Wait (briefly) for the postmaster to reap backends that just exited.
        let mut postgres = 0;
        if let Some(postmaster) = self.postmaster {
            for _ in 0..200 {
                if let Some(ticks) = cpu::server_ticks(postmaster) {
                    postgres = ticks;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let (machine_busy, machine_total) = cpu::machine_ticks();
        CpuUse {
            driver: cpu::process_ticks(std::process::id(), true),
            mesh: self
                .children
                .iter()
                .map(|&pid| cpu::process_ticks(pid, false))
                .sum(),
            postgres,
            machine_busy,
            machine_total,
        }
    }
}

impl std::ops::Add for CpuUse {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        Self {
            driver: self.driver + other.driver,
            mesh: self.mesh + other.mesh,
            postgres: self.postgres + other.postgres,
            machine_busy: self.machine_busy + other.machine_busy,
            machine_total: self.machine_total + other.machine_total,
        }
    }
}

impl std::ops::Sub for CpuUse {
    type Output = Self;
    fn sub(self, before: Self) -> Self {
        Self {
            driver: self.driver.saturating_sub(before.driver),
            mesh: self.mesh.saturating_sub(before.mesh),
            postgres: self.postgres.saturating_sub(before.postgres),
            machine_busy: self.machine_busy.saturating_sub(before.machine_busy),
            machine_total: self.machine_total.saturating_sub(before.machine_total),
        }
    }
}

/// The longest latency a histogram holds, in microseconds: ten minutes, far
/// beyond any call that did not hang; longer ones are recorded as this.
const MAX_LATENCY_MICROS: u64 = 600_000_000;
/// Significant figures of recorded latencies: 0.1 % precision is finer than
/// the run-to-run noise of these figures.
const LATENCY_FIGURES: u8 = 3;

/// An empty latency histogram; every one in the bench has these bounds, so any two add up.
pub(in crate::bench) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, LATENCY_FIGURES)
        .expect("valid histogram bounds")
}

/// Microseconds as milliseconds, for the tables.
pub(in crate::bench) fn ms(micros: u64) -> String {
    format!("{:.2} ms", micros as f64 / 1000.0)
}

impl Row {
    /// One line of progress on stderr while the bench runs.
    pub(super) fn progress(&self) -> String {
        let mut line = format!("{} | {} clients:", self.scenario, self.clients);
        for (kind, mesh) in &self.meshes {
            line += &format!(
                " mesh ({}) {:.0}/s p50 {} p99 {};",
                kind.label(),
                mesh.rate,
                ms(mesh.latency.value_at_quantile(0.5)),
                ms(mesh.latency.value_at_quantile(0.99)),
            );
        }
        line + &format!(
            " pgbench {:.0}/s p50 {} p99 {}; College batches mean {:.1}",
            self.pgbench.rate,
            ms(self.pgbench.latency.value_at_quantile(0.5)),
            ms(self.pgbench.latency.value_at_quantile(0.99)),
            self.sizes.mean(),
        )
    }

    /// The mesh side that the main table compares with pgbench: the first transport.
    pub(super) fn mesh(&self) -> &Measured {
        &self.meshes[0].1
    }
}

/// CPU µs per call of the driver (this process) and of the mesh children.
pub(in crate::bench) fn cpu_per_call(m: &Measured) -> (f64, f64) {
    let per =
        |ticks: u64| ticks as f64 * cpu::tick().as_secs_f64() * 1e6 / m.cpu_count.max(1) as f64;
    (per(m.cpu.driver), per(m.cpu.mesh))
}

/// The line under the tables: the same call refused by validation, as a floor.
pub(super) fn print_floor(kind: Kind, floor: &Measured) {
    println!(
        "floor ({}): Withdraw refused by validation (mesh, no database), 1 client: {:.0}/s, p50 {}, p99 {}; \
         CPU µs per call: client {:.0}, mesh {:.0}",
        kind.label(),
        floor.rate,
        ms(floor.latency.value_at_quantile(0.5)),
        ms(floor.latency.value_at_quantile(0.99)),
        cpu_per_call(floor).0,
        cpu_per_call(floor).1,
    );
}

/// TLS next to plaintext for every row, when both ran: rates, latencies,
/// their ratios, and the CPU µs per withdrawal of client and mesh.
pub(super) fn print_transport_table(rows: &[Row]) {
    if rows.iter().all(|row| row.transport_ratios.is_empty()) {
        return;
    }
    let rounds = rows.first().map_or(1, |row| row.transport_ratios.len());
    println!(
        "| scenario | clients | TLS withdrawals/s | plaintext withdrawals/s | TLS/plaintext | per round ({rounds}) \
         | TLS p50 | plaintext p50 | TLS p99 | plaintext p99 | CPU µs client TLS / plaintext | CPU µs mesh TLS / plaintext |"
    );
    println!("| --- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |");
    for row in rows {
        let [(_, tls), (_, plain)] = row.meshes.as_slice() else {
            continue;
        };
        let (tls_client, tls_mesh) = cpu_per_call(tls);
        let (plain_client, plain_mesh) = cpu_per_call(plain);
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {} | {} | {tls_client:.0} / {plain_client:.0} | {tls_mesh:.0} / {plain_mesh:.0} |",
            row.scenario,
            row.clients,
            tls.rate,
            plain.rate,
            ratio(tls.rate, plain.rate),
            min_max(&row.transport_ratios),
            ms(tls.latency.value_at_quantile(0.5)),
            ms(plain.latency.value_at_quantile(0.5)),
            ms(tls.latency.value_at_quantile(0.99)),
            ms(plain.latency.value_at_quantile(0.99)),
        );
    }
    println!();
}

/// The batch sizes the College used in every cell, read from the journal.
pub(super) fn print_batch_sizes(rows: &[Row]) {
    println!("Batch sizes the College used (withdrawals per commit, from the journal's xmin):");
    println!();
    println!(
        "| scenario | clients | batches | mean | p50 | p90 | p99 | max | withdrawals in batches of 2+ |"
    );
    println!("| --- | --: | --: | --: | --: | --: | --: | --: | --: |");
    for row in rows {
        let s = &row.sizes;
        println!(
            "| {} | {} | {} | {:.1} | {} | {} | {} | {} | {:.0}% |",
            row.scenario,
            row.clients,
            s.batches(),
            s.mean(),
            s.quantile(0.5),
            s.quantile(0.9),
            s.quantile(0.99),
            s.quantile(1.0),
            s.batched_share() * 100.0,
        );
    }
    println!();
}

/// `min–max` of per-round ratios.
pub(in crate::bench) fn min_max(ratios: &[f64]) -> String {
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(0.0, f64::max);
    format!("{min:.2}–{max:.2}")
}

/// The rates and latencies of every row, then where the CPU went in each.
pub(super) fn print_tables(rows: &[Row], colleges: usize) {
    let rounds = rows.first().map_or(1, |row| row.ratios.len());
    let range = if rounds > 1 {
        format!(" | per round ({rounds})")
    } else {
        String::new()
    };
    let label = rows.first().map_or("", |row| row.meshes[0].0.label());
    println!(
        "| scenario | clients | mesh ({label}) withdrawals/s | mesh p50 | mesh p99 | pgbench one-statement tps | pgbench p50 | pgbench p99 \
         | mesh/pgbench{range} |"
    );
    println!(
        "| --- | --: | --: | --: | --: | --: | --: | --: | --:{} |",
        if rounds > 1 { " | --:" } else { "" }
    );
    for row in rows {
        let (mesh, pg) = (row.mesh().rate, row.pgbench.rate);
        let range = if rounds > 1 {
            format!(" | {}", min_max(&row.ratios))
        } else {
            String::new()
        };
        println!(
            "| {} | {} | {:.0} | {} | {} | {:.0} | {} | {} | {:.2}{range} |",
            row.scenario,
            row.clients,
            mesh,
            ms(row.mesh().latency.value_at_quantile(0.5)),
            ms(row.mesh().latency.value_at_quantile(0.99)),
            pg,
            ms(row.pgbench.latency.value_at_quantile(0.5)),
            ms(row.pgbench.latency.value_at_quantile(0.99)),
            ratio(mesh, pg),
        );
    }
    println!();
    let tick = cpu::tick().as_secs_f64();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "Where the CPU went while measuring, in % of one core ({cores} cores: {} in all). Client: this process \
         (mesh) or pgbench. Mesh: {colleges} College instance(s) and the registry. Other: every other process on \
         the machine. Then CPU µs per withdrawal of client / mesh / PostgreSQL.",
        cores * 100
    );
    println!();
    println!(
        "| scenario | clients | run | client | mesh | PostgreSQL | other | idle | µs per withdrawal |"
    );
    println!("| --- | --: | --- | --: | --: | --: | --: | --: | --: |");
    let mut disturbed = Vec::new();
    for row in rows {
        let runs = row
            .meshes
            .iter()
            .map(|(kind, m)| (format!("mesh ({})", kind.label()), m))
            .chain([("pgbench".to_owned(), &row.pgbench)]);
        for (run, m) in runs {
            let wall = m.cpu_wall.as_secs_f64();
            let share = |ticks: u64| ticks as f64 * tick / wall * 100.0;
            let (client, mesh, postgres) = (
                share(m.cpu.driver),
                share(m.cpu.mesh),
                share(m.cpu.postgres),
            );
            let busy = m.cpu.machine_busy as f64 / m.cpu.machine_total.max(1) as f64
                * cores as f64
                * 100.0;
            let idle = cores as f64 * 100.0 - busy;
            let other = (busy - client - mesh - postgres).max(0.0);
            if other >= 25.0 {
                disturbed.push(format!(
                    "{} / {} clients / {run}: {other:.0}%",
                    row.scenario, row.clients
                ));
            }
            let per = |ticks: u64| {
                if m.cpu_count > 0 {
                    ticks as f64 * tick * 1e6 / m.cpu_count as f64
                } else {
                    0.0
                }
            };
            println!(
                "| {} | {} | {run} | {client:.0}% | {mesh:.0}% | {postgres:.0}% | {other:.0}% | {idle:.0}% | {:.0} / {:.0} / {:.0} |",
                row.scenario,
                row.clients,
                per(m.cpu.driver),
                per(m.cpu.mesh),
                per(m.cpu.postgres),
            );
        }
    }
    println!();
    if !disturbed.is_empty() {
        println!(
            "warning: other processes took a quarter of a core or more in: {}",
            disturbed.join("; ")
        );
        println!();
    }
}
