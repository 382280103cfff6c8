//! `grantmesh`: one binary for every role in the mesh, and the operator's
//! commands for looking at a running one.
//!
//! ```text
//! grantmesh registry  --listen 127.0.0.1:7000
//! grantmesh college   --listen 127.0.0.1:7200 --registry http://127.0.0.1:7000
//! grantmesh agency    --listen 127.0.0.1:7100 --registry http://127.0.0.1:7000
//! grantmesh instances --registry http://127.0.0.1:7000
//! grantmesh health 127.0.0.1:7200 --service grantmesh.v1.College
//! grantmesh grant login --email ada@uni.edu      # then GRANTMESH_TOKEN=…
//! grantmesh grant withdraw ACCOUNT 2500 --memo reagents
//! ```

mod bench;
mod grant;
mod ops;
mod roles;
mod simulate;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "grantmesh",
    version,
    about = "A research-grant service mesh: registry, agencies and colleges over gRPC."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a registry replica (service discovery with heartbeat leases).
    Registry(roles::RegistryArgs),
    /// Run a funding agency that takes grant proposals.
    Agency(roles::AgencyArgs),
    /// Run a college that keeps research accounts.
    College(roles::CollegeArgs),
    /// Check a server's gRPC health; exits 0 when it is SERVING.
    Health(ops::HealthArgs),
    /// List the live instances a registry knows, with their addresses.
    Instances(ops::InstancesArgs),
    /// Call a service's Ping through the mesh (discovery and balancing included).
    Ping(ops::PingArgs),
    /// A researcher's commands: register, login, propose, account, withdraw, watch…
    Grant {
        #[command(flatten)]
        target: grant::Target,
        #[command(subcommand)]
        command: grant::Grant,
    },
    /// Measure a mesh running on this machine.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Simulate researchers spending grants through the mesh, then audit the store.
    Simulate(simulate::SimulateArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    grantmesh_server::telemetry::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: failed to start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Registry(args) => roles::run_registry(args).await,
            Command::Agency(args) => roles::run_agency(args).await,
            Command::College(args) => roles::run_college(args).await,
            Command::Health(args) => ops::health(args).await,
            Command::Instances(args) => ops::instances(args).await,
            Command::Ping(args) => ops::ping(args).await,
            Command::Bench(bench) => bench::run(bench).await,
            Command::Simulate(args) => simulate::run(args).await,
            Command::Grant { target, command } => grant::run(target, command).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
