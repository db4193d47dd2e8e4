//! `ferry`: thin entry point. Parse, dispatch, map the outcome to an exit status.

mod cli;
mod cli_bench;
mod cmd_balance;
mod cmd_cluster;
mod cmd_daemons;
mod cmd_disk;
mod cmd_events;
mod cmd_host;
mod cmd_image;
mod cmd_lab;
mod cmd_load;
mod cmd_maintenance;
mod cmd_migrate;
mod cmd_rules;
mod cmd_schedule;
mod cmd_security;
mod cmd_vm;
mod connection;
mod exit;
mod output;

use clap::Parser;
use ferry_bench as bench;

use crate::cli::{Cli, Command};
use crate::exit::{CliResult, Exit};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.command);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(Exit::Failed as u8);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::from(Exit::Success as u8),
        Err(e) => {
            eprintln!("ferry: error: {}", e.message);
            std::process::ExitCode::from(e.exit as u8)
        }
    }
}

/// Daemons log at info; client commands only warn, so their output stays clean.
fn init_tracing(cmd: &Command) {
    let default = match cmd {
        Command::Server(_) | Command::Agent(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none())
        .try_init();
}

async fn run(cli: Cli) -> CliResult {
    let server = connection::ConnOpts {
        server: cli.server.clone(),
        ca: cli.ca.clone(),
        token: cli.token.clone(),
        config: cli.config.clone(),
    };
    match cli.command {
        Command::Server(a) => cmd_daemons::server(a).await,
        Command::Agent(a) => cmd_daemons::agent(*a, &server).await,
        Command::Ca(c) => cmd_security::ca(&server, c).await,
        Command::User(c) => cmd_security::user(&server, c).await,
        Command::Whoami(j) => cmd_security::whoami(&server, j).await,
        Command::Rule(c) => cmd_rules::rule(&server, c).await,
        Command::Host(cli::HostCmd::JoinToken { name, ttl_s, json }) => {
            cmd_security::join_token(&server, &name, ttl_s, json).await
        }
        Command::Host(cli::HostCmd::Remove { name, json }) => {
            cmd_security::remove_host(&server, &name, json).await
        }
        Command::Host(cli::HostCmd::Maintenance(m)) => {
            cmd_maintenance::maintenance(&server, m).await
        }
        Command::Host(c) => cmd_host::host(&server, c).await,
        Command::Operation(c) => cmd_maintenance::operation(&server, c).await,
        Command::Schedule(c) => cmd_schedule::run(&server, c).await,
        Command::Cluster(cli::ClusterCmd::Balance(a)) => cmd_balance::balance(&server, a).await,
        Command::Cluster(c) => cmd_cluster::cluster(&server, c).await,
        Command::Recommendation(c) => cmd_balance::recommendation(&server, c).await,
        Command::Vm(cli::VmCmd::Migrate(a)) => cmd_migrate::migrate(&server, *a).await,
        Command::Vm(c) => cmd_vm::vm(&server, c).await,
        Command::Migration(c) => cmd_migrate::migration(&server, c).await,
        Command::Events(a) => match a.audit {
            Some(cmd) => cmd_events::run(&server, cmd).await,
            None => cmd_events::list(&server, a).await,
        },
        Command::Disk(c) => cmd_disk::run(&server, c).await,
        Command::Image(cli::ImageCmd::Build(a)) => cmd_image::build(a).await,
        Command::Demo(a) => Ok(bench::demo::run(a.into(), cmd_migrate::print_report).await?),
        Command::Lab(c) => cmd_lab::run(c).await,
        Command::Bench(cli::BenchCmd::Migrate(a)) => {
            interruptible(bench::migrate::migrate(a.into())).await
        }
        Command::Bench(cli::BenchCmd::Network(a)) => {
            interruptible(bench::net::network(a.into())).await
        }
        Command::Bench(cli::BenchCmd::Storage(a)) => {
            interruptible(bench::storage::storage(a.into())).await
        }
        Command::Bench(cli::BenchCmd::Convergence(a)) => {
            interruptible(bench::converge::convergence(a.into())).await
        }
        Command::Bench(cli::BenchCmd::Switchover(a)) => {
            interruptible(bench::switchover::switchover(a.into())).await
        }
        Command::Bench(cli::BenchCmd::Faults(a)) => {
            interruptible(bench::faults::faults(a.into())).await
        }
        Command::Bench(cli::BenchCmd::Soak(a)) => {
            interruptible(bench::faults::soak(a.into())).await
        }
        Command::Bench(cli::BenchCmd::Api(a)) => interruptible(bench::api::api(a.into())).await,
        Command::Bench(cli::BenchCmd::Tls(a)) => interruptible(bench::tls::tls(a.into())).await,
        Command::Bench(cli::BenchCmd::Placement(a)) => {
            Ok(bench::placement::placement(a.into()).await?)
        }
        Command::Bench(cli::BenchCmd::Ha(a)) => interruptible(bench::ha::ha(a.into())).await,
        Command::Bench(cli::BenchCmd::Evacuate(a)) => {
            interruptible(bench::evacuate::evacuate(a.into())).await
        }
        Command::Bench(cli::BenchCmd::Quick(a)) => {
            interruptible(bench::quick::quick(a.into())).await
        }
    }
}

/// Runs a long command until it ends or the operator interrupts it (Ctrl-C or SIGTERM).
/// Interrupting drops the command's future, so the labs, daemons and VMs it started are
/// torn down by their guards before the process exits.
async fn interruptible(work: impl std::future::Future<Output = bench::BenchResult>) -> CliResult {
    tokio::select! {
        r = work => Ok(r?),
        () = bench::lab::interrupted() => {
            Err(exit::CliError::failed("interrupted; what it started was stopped"))
        }
    }
}
