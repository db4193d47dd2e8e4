//! `ferry lab`'s options and dispatch; what the commands do is `ferry_bench::lab`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Subcommand;
use ferry_bench::lab::{self, RelayOptions, UpConfig};

use crate::cli::JsonFlag;
use crate::exit::CliResult;

#[derive(Subcommand, Debug)]
pub enum LabCmd {
    /// Start a network lab: each host a network namespace running its own agent, joined by
    /// a management, a migration and a VM network; the server in this namespace.
    #[command(after_help = "Examples:\n  \
        ferry lab up                          # hosts a and b, until Ctrl-C\n  \
        ferry lab up --hosts a,b,c --keep-running\n  \
        ferry lab down --slot 1")]
    Up {
        /// Host names (1 to 8; [a-z][a-z0-9]*).
        #[arg(long, value_delimiter = ',', default_value = "a,b")]
        hosts: Vec<String>,
        /// Leave the lab running and return (remove it with `ferry lab down --slot N`).
        /// Without it the lab runs until Ctrl-C or SIGTERM and is then removed.
        #[arg(long)]
        keep_running: bool,
        /// Use this slot (1..=200) instead of the first free one.
        #[arg(long)]
        slot: Option<u8>,
        /// Guest image cache for the agents (default: theirs).
        #[arg(long)]
        image_dir: Option<PathBuf>,
        /// Keep the work directory (daemon logs) when the lab is removed.
        #[arg(long)]
        keep_logs: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Remove labs: by default those whose owner process is gone (crashed tests, a killed
    /// `ferry lab up`); never a running one unless named with --slot, or --all.
    Down {
        /// Remove this lab, whoever owns it.
        #[arg(long, conflicts_with = "all")]
        slot: Option<u8>,
        /// Remove every lab.
        #[arg(long)]
        all: bool,
    },
    /// List the labs on this machine.
    Status {
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Relay TCP connections to another address, delaying every byte each way (a round trip
    /// takes 2 x --delay-ms longer), optionally at a capped rate. Runs until Ctrl-C/SIGTERM.
    #[command(
        after_help = "Example (in a lab, a 25 ms link from the switch to host b):\n  \
        ip netns exec fy1-sw ferry lab relay --listen 172.31.1.250:7000 --to 172.31.1.12:7000 --delay-ms 25"
    )]
    Relay {
        /// Address to accept connections on (port 0: any free port; see --ready-file).
        #[arg(long)]
        listen: SocketAddr,
        /// Where each connection is relayed to.
        #[arg(long)]
        to: SocketAddr,
        /// Delay added to every byte, each way, ms.
        #[arg(long)]
        delay_ms: u64,
        /// Cap each direction at this rate, Mbit/s (all connections together).
        #[arg(long)]
        rate_mbit: Option<u32>,
        /// Most bytes held per direction and connection, MiB (reads pause beyond).
        #[arg(long, default_value_t = 64)]
        max_queued_mib: usize,
        /// Write the bound address to this file once listening.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
}

pub async fn run(cmd: LabCmd) -> CliResult {
    match cmd {
        LabCmd::Up {
            hosts,
            keep_running,
            slot,
            image_dir,
            keep_logs,
            json,
        } => Ok(lab::up(UpConfig {
            hosts,
            keep_running,
            slot,
            image_dir,
            keep_logs,
            json: json.json,
        })
        .await?),
        LabCmd::Down { slot, all } => Ok(lab::down(slot, all).await?),
        LabCmd::Status { json } => Ok(lab::status(json.json).await?),
        LabCmd::Relay {
            listen,
            to,
            delay_ms,
            rate_mbit,
            max_queued_mib,
            ready_file,
        } => Ok(lab::relay(RelayOptions {
            listen,
            to,
            delay_ms,
            rate_mbit,
            max_queued_mib,
            ready_file,
        })
        .await?),
    }
}
