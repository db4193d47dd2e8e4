//! `ferry lab`: the network test lab (hosts as network namespaces on this machine, each with
//! its own agent, the server in the root namespace; see `ferry_lab::netlab` for the
//! topology) and `ferry lab relay`, the delaying TCP relay that emulates a long link.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use ferry_lab::netlab::{self, LabRecord, LabStatus, Liveness, NetLabError, Which};
use ferry_lab::{NetLab, NetLabConfig, RelayConfig, RelayStats};

use crate::cli::JsonFlag;
use crate::exit::{CliError, CliResult};
use crate::output::{print_json, print_table};

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
        } => up(hosts, keep_running, slot, image_dir, keep_logs, json.json).await,
        LabCmd::Down { slot, all } => down(slot, all).await,
        LabCmd::Status { json } => status(json.json).await,
        LabCmd::Relay {
            listen,
            to,
            delay_ms,
            rate_mbit,
            max_queued_mib,
            ready_file,
        } => {
            let mut cfg = RelayConfig::new(to, Duration::from_millis(delay_ms));
            if let Some(r) = rate_mbit {
                cfg = cfg.with_rate_mbit(r);
            }
            cfg.max_queued_bytes = max_queued_mib.max(1) << 20;
            relay(listen, cfg, ready_file).await
        }
    }
}

fn lab_error(e: NetLabError) -> CliError {
    match e {
        NetLabError::Config(_) | NetLabError::SlotBusy(_) => CliError::refused(e.to_string()),
        _ => CliError::failed(e.to_string()),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn up(
    hosts: Vec<String>,
    keep_running: bool,
    slot: Option<u8>,
    image_dir: Option<PathBuf>,
    keep_logs: bool,
    json: bool,
) -> CliResult {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::failed(format!("cannot find my own binary: {e}")))?;
    let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let mut cfg = NetLabConfig::new(exe, &names);
    cfg.slot = slot;
    cfg.image_dir = image_dir;
    cfg.keep = keep_logs;
    if !json {
        eprintln!("ferry lab: starting hosts {} ...", hosts.join(", "));
    }
    // Interrupted while starting: dropping the start future removes what it created.
    let lab = tokio::select! {
        r = NetLab::start(cfg) => r.map_err(lab_error)?,
        _ = interrupted() => return Err(CliError::failed("interrupted; the lab was removed")),
    };
    if keep_running {
        let rec = lab.detach().map_err(lab_error)?;
        if json {
            return print_json(&rec);
        }
        print_lab(&rec);
        println!(
            "\nThe lab keeps running (detached). Remove it with: ferry lab down --slot {}",
            rec.slot
        );
        return Ok(());
    }
    if json {
        print_json(lab.record())?;
    } else {
        print_lab(lab.record());
        println!("\nThe lab runs until Ctrl-C (or SIGTERM), then it is removed.");
    }
    interrupted().await;
    let mut lab = lab;
    tokio::task::spawn_blocking(move || lab.shutdown())
        .await
        .map_err(|e| CliError::failed(format!("shutdown task failed: {e}")))?;
    if !json {
        eprintln!("ferry lab: removed");
    }
    Ok(())
}

fn print_lab(rec: &LabRecord) {
    let n = rec.slot;
    let server = rec.server_url.as_deref().unwrap_or("-");
    println!("network lab {n} is up");
    println!("  server  {server}  (root namespace, on fy{n}-m 172.29.{n}.254/24)");
    let rows: Vec<Vec<String>> = rec
        .hosts
        .iter()
        .map(|h| {
            vec![
                format!("  {}", h.name),
                h.ns.clone(),
                h.mgmt_ip.to_string(),
                h.migration_ip.to_string(),
                h.agent_url.clone(),
            ]
        })
        .collect();
    print_table(
        &["  HOST", "NAMESPACE", "MGMT", "MIGRATION", "AGENT"],
        &rows,
    );
    println!(
        "  client  {}  {}/24 on vmnet (VM addresses: 172.30.{n}.10 - 172.30.{n}.249)",
        rec.client_ns, rec.client_ip
    );
    println!(
        "  switch  {}  bridges mgmt 172.29.{n}.0/24, mignet 172.31.{n}.0/24, vmnet 172.30.{n}.0/24; \
         {} on mignet for relays",
        rec.switch_ns, rec.relay_ip
    );
    println!("  VM bridge on every host: br-vm (agents: --network vmnet=br-vm)");
    if let Some(dir) = &rec.work_dir {
        println!("  logs    {}", dir.display());
    }
    let (a, b) = match rec.hosts.as_slice() {
        [a, b, ..] => (a.name.clone(), b.migration_ip.to_string()),
        [a] => (a.name.clone(), a.migration_ip.to_string()),
        [] => ("a".into(), format!("172.31.{n}.12")),
    };
    println!("\nUse it:");
    match &rec.work_dir {
        Some(dir) => println!(
            "  export FERRY_CONFIG={}   # server, CA and the admin's token",
            dir.join("client.toml").display()
        ),
        None => println!("  export FERRY_SERVER={server}"),
    }
    println!("  ferry host list");
    println!("  ferry vm create web1 --host {a} --nic vmnet --guest-ip 172.30.{n}.100/24");
    println!(
        "  ip netns exec {} <command>     # a client on the VM network",
        rec.client_ns
    );
    println!("  ip netns exec fy{n}-{a} <command>     # on host {a}");
    println!(
        "  ip netns exec {} ferry lab relay --listen {}:7000 --to {b}:7000 --delay-ms 25",
        rec.switch_ns, rec.relay_ip
    );
    println!("  ferry lab down --slot {n}");
}

async fn down(slot: Option<u8>, all: bool) -> CliResult {
    let which = match (slot, all) {
        (Some(n), _) => Which::Slot(n),
        (None, true) => Which::All,
        (None, false) => Which::Dead,
    };
    let removed = tokio::task::spawn_blocking(move || netlab::down(which))
        .await
        .map_err(|e| CliError::failed(format!("cleanup task failed: {e}")))?
        .map_err(lab_error)?;
    if let Which::Slot(n) = which {
        if removed.is_empty() {
            return Err(CliError::refused(format!("there is no lab {n}")));
        }
    }
    for n in &removed {
        println!("removed lab {n}");
    }
    let left = tokio::task::spawn_blocking(netlab::status)
        .await
        .map_err(|e| CliError::failed(format!("status task failed: {e}")))?;
    if removed.is_empty() {
        println!("no lab to remove");
    }
    for st in left {
        let why = match st.liveness {
            Liveness::Owned => format!(
                "its owner (pid {}) runs",
                st.record
                    .as_ref()
                    .and_then(|r| r.owner)
                    .map(|o| o.pid.to_string())
                    .unwrap_or_default()
            ),
            Liveness::Detached => "it is detached".to_string(),
            Liveness::Dead => "it could not be removed completely".to_string(),
        };
        println!(
            "lab {} left alone: {why} (remove it with --slot {})",
            st.slot, st.slot
        );
    }
    Ok(())
}

async fn status(json: bool) -> CliResult {
    let labs: Vec<LabStatus> = tokio::task::spawn_blocking(netlab::status)
        .await
        .map_err(|e| CliError::failed(format!("status task failed: {e}")))?;
    if json {
        return print_json(&labs);
    }
    if labs.is_empty() {
        println!("no network labs");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = labs
        .iter()
        .map(|st| {
            let rec = st.record.as_ref();
            let state = match st.liveness {
                Liveness::Owned => "owned",
                Liveness::Detached => "detached",
                Liveness::Dead => "dead",
            };
            let owner = rec
                .and_then(|r| r.owner)
                .map(|o| o.pid.to_string())
                .unwrap_or_else(|| "-".into());
            let hosts = rec
                .map(|r| {
                    r.hosts
                        .iter()
                        .map(|h| h.name.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let daemons = match rec {
                Some(r) => format!("{}/{}", st.daemons_alive, r.daemons.len()),
                None => "-".into(),
            };
            vec![
                st.slot.to_string(),
                state.to_string(),
                owner,
                hosts,
                daemons,
                rec.and_then(|r| r.server_url.clone())
                    .unwrap_or_else(|| "-".into()),
                st.namespaces.len().to_string(),
                rec.and_then(|r| r.work_dir.as_ref())
                    .map(|d| d.display().to_string())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print_table(
        &[
            "SLOT",
            "STATE",
            "OWNER",
            "HOSTS",
            "DAEMONS",
            "SERVER",
            "NAMESPACES",
            "WORK DIR",
        ],
        &rows,
    );
    Ok(())
}

async fn relay(listen: SocketAddr, cfg: RelayConfig, ready_file: Option<PathBuf>) -> CliResult {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::failed(format!("cannot listen on {listen}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| CliError::failed(format!("cannot read the bound address: {e}")))?;
    if let Some(file) = &ready_file {
        std::fs::write(file, format!("{bound}\n"))
            .map_err(|e| CliError::failed(format!("cannot write {}: {e}", file.display())))?;
    }
    let rate = cfg
        .rate_bytes_s
        .map(|r| format!(", at most {} Mbit/s each way", r * 8 / 1_000_000))
        .unwrap_or_default();
    eprintln!(
        "ferry lab relay: {bound} -> {}, +{} ms each way{rate}",
        cfg.to,
        cfg.delay.as_millis()
    );
    let stats = std::sync::Arc::new(RelayStats::default());
    ferry_lab::relay::serve(listener, cfg, stats.clone(), interrupted())
        .await
        .map_err(|e| CliError::failed(format!("relay failed: {e}")))?;
    use std::sync::atomic::Ordering::Relaxed;
    eprintln!(
        "ferry lab relay: stopped after {} connections, {} bytes there, {} bytes back",
        stats.connections.load(Relaxed),
        stats.bytes_to_target.load(Relaxed),
        stats.bytes_from_target.load(Relaxed)
    );
    Ok(())
}
