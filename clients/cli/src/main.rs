//! `grantmesh`: one binary for every role in the mesh, the researcher's
//! commands, and the operator's commands for looking at a running mesh.
//!
//! ```text
//! grantmesh registry  --listen 127.0.0.1:7000
//! grantmesh college   --listen 127.0.0.1:7200 --registry http://127.0.0.1:7000
//! grantmesh agency    --listen 127.0.0.1:7100 --registry http://127.0.0.1:7000
//! grantmesh signup --name Ada --email ada@uni.edu
//! grantmesh login --email ada@uni.edu            # asks for the password, keeps the token
//! grantmesh withdraw ACCOUNT 2500 --memo reagents
//! grantmesh instances
//! grantmesh web --listen 127.0.0.1:7080      # the researcher portal and mesh dashboard
//! ```
//!
//! This file only parses and dispatches: each command lives in its module,
//! and how an error becomes a message and an exit code lives in [`exit`].

mod bench;
mod ca;
mod dev;
mod exit;
mod mail;
mod ops;
mod output;
mod report;
mod researcher;
mod roles;
mod session;
mod simulate;
mod transport;
mod web;

use clap::{CommandFactory as _, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "grantmesh",
    version,
    about = "A research-grant service mesh: registry, agencies and colleges over gRPC.",
    after_help = exit::EXIT_CODES_HELP
)]
struct Cli {
    /// How replies are printed: tables for people, or the protobuf JSON mapping (as grpcurl prints it).
    #[arg(long, global = true, value_enum, default_value_t = output::Format::Table)]
    output: output::Format,
    /// Show the client's own log lines on stderr: -v warnings, -vv info, -vvv debug.
    /// (Servers log at info whatever this says; GRANTMESH_LOG overrides both.)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Researcher(researcher::Verb),
    #[command(flatten)]
    Ops(ops::Verb),
    /// Run a registry replica (service discovery with heartbeat leases).
    Registry(roles::RegistryArgs),
    /// Run a funding agency that takes grant proposals.
    Agency(roles::AgencyArgs),
    /// Run a college that keeps research accounts.
    College(roles::CollegeArgs),
    /// The mesh's certificate authority: make one, issue a member's certificate,
    /// serve as the issuer members join and renew through.
    #[command(subcommand)]
    Ca(ca::Ca),
    /// Serve the researcher portal and the mesh dashboard over HTTP.
    Web(web::WebArgs),
    /// Run the whole mesh in this process: a registry, two agencies, two colleges.
    Dev(dev::DevArgs),
    /// Read the mail a college kept in an outbox (grantmesh dev's mail catcher).
    Mail(mail::MailArgs),
    /// Measure a mesh running on this machine.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Simulate researchers spending grants through the mesh, then audit the store.
    Simulate(simulate::SimulateArgs),
    /// Print a shell completion script: `grantmesh completions bash > /etc/bash_completion.d/grantmesh`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// The log level when `GRANTMESH_LOG` says none: servers log what they
    /// do; `dev`, which runs servers, their warnings; commands for a person
    /// at a terminal nothing unless asked (`-v`), so log lines never
    /// interleave with what they print (their failures are reported by
    /// [`exit::report`] anyway).
    fn default_log(&self, verbose: u8) -> &'static str {
        match self {
            Command::Registry(_)
            | Command::Agency(_)
            | Command::College(_)
            | Command::Web(_)
            | Command::Ca(ca::Ca::Serve(_)) => "info",
            Command::Dev(_) if verbose == 0 => "warn",
            _ => match verbose {
                0 => "off",
                1 => "warn",
                2 => "info",
                _ => "debug",
            },
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "grantmesh", &mut script);
        // A closed pipe (`| head`) is the reader's choice, not a failure to report.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
        return std::process::ExitCode::SUCCESS;
    }
    grantmesh_server::telemetry::init(cli.command.default_log(cli.verbose));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            return exit::report(
                &anyhow::Error::new(err).context("failed to start the async runtime"),
            );
        }
    };
    let format = cli.output;
    let tabular = matches!(
        cli.command,
        Command::Researcher(
            researcher::Verb::Report { .. } | researcher::Verb::Transactions { .. }
        )
    );
    if format == output::Format::Csv && !tabular {
        return exit::report(
            &exit::CliError::Usage(
                "--output csv is for `report` and `transactions`; use table or json here"
                    .to_owned(),
            )
            .into(),
        );
    }
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Researcher(verb) => researcher::run(verb, format).await,
            Command::Ops(verb) => ops::run(verb, format).await,
            Command::Registry(args) => roles::run_registry(args).await,
            Command::Agency(args) => roles::run_agency(args).await,
            Command::College(args) => roles::run_college(args).await,
            Command::Web(args) => web::run(args).await,
            Command::Dev(args) => dev::run(args).await,
            Command::Mail(args) => mail::run(args, format).await,
            Command::Ca(command) => ca::run(command).await,
            Command::Bench(bench) => bench::run(bench).await,
            Command::Simulate(args) => simulate::run(args).await,
            Command::Completions { .. } => unreachable!("handled before the runtime starts"),
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => exit::report(&err),
    }
}
