//! `grantmesh bench …`: measurements of a real mesh on this machine. They
//! report figures; they assert nothing.
//!
//! This module is only the subcommand and its dispatch: `bench removal`
//! ([`removal`]) times how long a killed or frozen instance stays visible to
//! watchers and clients; `bench withdraw` ([`withdraw`]) measures
//! College/Withdraw through the mesh next to `pgbench` running the same SQL;
//! `bench heartbeat` ([`heartbeat`]) times unary Registry/Heartbeat calls. All
//! run roles as child processes of this same binary through
//! [`grantmesh_node::process::ChildNode`], on TLS with a throwaway CA, on
//! plaintext, or on both side by side ([`transport`], `--transport`).

use std::process::ExitCode;

use clap::Subcommand;

mod cpu;
mod heartbeat;
mod removal;
mod transport;
mod withdraw;

#[derive(Subcommand, Debug)]
pub enum Bench {
    /// Time from `kill -9` / SIGSTOP of an instance to its removal as watchers and clients see it.
    Removal(removal::RemovalArgs),
    /// Withdrawals/s and p50/p99 through the mesh, next to `pgbench` running the same SQL.
    Withdraw(withdraw::WithdrawArgs),
    /// Registry/Heartbeat calls/s and p50/p99 on TLS and plaintext side by side, and the cost of a connection.
    Heartbeat(heartbeat::HeartbeatArgs),
}

pub async fn run(bench: Bench) -> anyhow::Result<ExitCode> {
    match bench {
        Bench::Removal(args) => removal::run(args).await,
        Bench::Withdraw(args) => withdraw::run(args).await,
        Bench::Heartbeat(args) => heartbeat::run(args).await,
    }
}
