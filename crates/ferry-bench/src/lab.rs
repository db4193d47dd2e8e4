//! `ferry lab`: the network test lab (hosts as network namespaces on this machine, each with
//! its own agent, the server in the root namespace; see `ferry_lab::netlab` for the
//! topology) and `ferry lab relay`, the delaying TCP relay that emulates a long link.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ferry_lab::netlab::{self, LabRecord, LabStatus, Liveness, NetLabError, Which};
use ferry_lab::{NetLab, NetLabConfig, RelayConfig, RelayStats};

use crate::console::{print_json, print_table};
use crate::error::{BenchError, BenchResult};

/// The options of `ferry lab up`; the binary gives them from its flags.
#[derive(Debug, Clone)]
pub struct UpConfig {
    /// Host names (1 to 8; [a-z][a-z0-9]*).
    pub hosts: Vec<String>,
    /// Leave the lab running and return; otherwise it runs until Ctrl-C or SIGTERM and is
    /// then removed.
    pub keep_running: bool,
    /// Use this slot (1..=200) instead of the first free one.
    pub slot: Option<u8>,
    /// Guest image cache for the agents (default: theirs).
    pub image_dir: Option<PathBuf>,
    /// Keep the work directory (daemon logs) when the lab is removed.
    pub keep_logs: bool,
    /// Print JSON (for scripts) instead of a table.
    pub json: bool,
}

/// The options of `ferry lab relay`; the binary gives them from its flags.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Address to accept connections on (port 0: any free port; see `ready_file`).
    pub listen: SocketAddr,
    /// Where each connection is relayed to.
    pub to: SocketAddr,
    /// Delay added to every byte, each way, ms.
    pub delay_ms: u64,
    /// Cap each direction at this rate, Mbit/s (all connections together).
    pub rate_mbit: Option<u32>,
    /// Most bytes held per direction and connection, MiB (reads pause beyond).
    pub max_queued_mib: usize,
    /// Write the bound address to this file once listening.
    pub ready_file: Option<PathBuf>,
}

fn lab_error(e: NetLabError) -> BenchError {
    match e {
        NetLabError::Config(_) | NetLabError::SlotBusy(_) => BenchError::refused(e.to_string()),
        _ => BenchError::failed(e.to_string()),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn interrupted() {
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

/// Starts a network lab; without `keep_running`, runs it until Ctrl-C or SIGTERM and then
/// removes it.
pub async fn up(c: UpConfig) -> BenchResult {
    let json = c.json;
    let exe = std::env::current_exe()
        .map_err(|e| BenchError::failed(format!("cannot find my own binary: {e}")))?;
    let names: Vec<&str> = c.hosts.iter().map(String::as_str).collect();
    let mut cfg = NetLabConfig::new(exe, &names);
    cfg.slot = c.slot;
    cfg.image_dir = c.image_dir;
    cfg.keep = c.keep_logs;
    if !json {
        eprintln!("ferry lab: starting hosts {} ...", c.hosts.join(", "));
    }
    // Interrupted while starting: dropping the start future removes what it created.
    let lab = tokio::select! {
        r = NetLab::start(cfg) => r.map_err(lab_error)?,
        _ = interrupted() => return Err(BenchError::failed("interrupted; the lab was removed")),
    };
    if c.keep_running {
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
        .map_err(|e| BenchError::failed(format!("shutdown task failed: {e}")))?;
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

/// Removes the lab in `slot`, every lab (`all`), or else those whose owner is gone.
pub async fn down(slot: Option<u8>, all: bool) -> BenchResult {
    let which = match (slot, all) {
        (Some(n), _) => Which::Slot(n),
        (None, true) => Which::All,
        (None, false) => Which::Dead,
    };
    let removed = tokio::task::spawn_blocking(move || netlab::down(which))
        .await
        .map_err(|e| BenchError::failed(format!("cleanup task failed: {e}")))?
        .map_err(lab_error)?;
    if let Which::Slot(n) = which {
        if removed.is_empty() {
            return Err(BenchError::refused(format!("there is no lab {n}")));
        }
    }
    for n in &removed {
        println!("removed lab {n}");
    }
    let left = tokio::task::spawn_blocking(netlab::status)
        .await
        .map_err(|e| BenchError::failed(format!("status task failed: {e}")))?;
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

/// Lists the labs on this machine.
pub async fn status(json: bool) -> BenchResult {
    let labs: Vec<LabStatus> = tokio::task::spawn_blocking(netlab::status)
        .await
        .map_err(|e| BenchError::failed(format!("status task failed: {e}")))?;
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

/// Relays TCP connections with a delay (and optionally a rate cap) until Ctrl-C or SIGTERM.
pub async fn relay(o: RelayOptions) -> BenchResult {
    let listen = o.listen;
    let mut cfg = RelayConfig::new(o.to, Duration::from_millis(o.delay_ms));
    if let Some(r) = o.rate_mbit {
        cfg = cfg.with_rate_mbit(r);
    }
    cfg.max_queued_bytes = o.max_queued_mib.max(1) << 20;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| BenchError::failed(format!("cannot listen on {listen}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| BenchError::failed(format!("cannot read the bound address: {e}")))?;
    if let Some(file) = &o.ready_file {
        std::fs::write(file, format!("{bound}\n"))
            .map_err(|e| BenchError::failed(format!("cannot write {}: {e}", file.display())))?;
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
        .map_err(|e| BenchError::failed(format!("relay failed: {e}")))?;
    use std::sync::atomic::Ordering::Relaxed;
    eprintln!(
        "ferry lab relay: stopped after {} connections, {} bytes there, {} bytes back",
        stats.connections.load(Relaxed),
        stats.bytes_to_target.load(Relaxed),
        stats.bytes_from_target.load(Relaxed)
    );
    Ok(())
}
