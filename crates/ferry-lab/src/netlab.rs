//! The network lab: several "hosts" on this machine, each a Linux network namespace running
//! its own `ferry agent`, joined by separate L2 segments, with the server in the root
//! namespace. Links can be shaped with `tc tbf` ([`NetLab::shape_migration`]) and long
//! distances emulated with the delaying TCP relay ([`NetLab::start_relay`], [`crate::relay`]).
//! This machine has no `netem`; tbf, bridges, veths, taps and namespaces are what we use.
//!
//! # Topology (slot N, hosts a, b, ...; host i = 1, 2, ... in the order given)
//!
//! ```text
//!  root namespace                       fyN-sw (the switch)
//!  ferry server on 172.29.N.254:port    ┌───────────────────────────────────────────────┐
//!  fyN-m 172.29.N.254/24 ──────────────▶│ r-mgmt ─┐                                     │
//!                                       │         ├─ bridge mgmt    172.29.N.0/24       │
//!  fyN-a (host a, i=1)                  │ p1-mgmt ┘                                     │
//!   ferry agent a, its QEMUs            │                                               │
//!   mgmt0 172.29.N.11/24 ──────────────▶│ p1-mgmt                                       │
//!   mig0  172.31.N.11/24 ──────────────▶│ p1-mig ──── bridge mignet 172.31.N.0/24       │
//!   br-vm (no IP) ◀─ vmup0 ────────────▶│ p1-vm  ─┐   (mignet has 172.31.N.250: relays) │
//!     └ the VMs' taps                   │         ├─ bridge vmnet   172.30.N.0/24       │
//!  fyN-b (host b, i=2): .12, p2-*  ────▶│ p2-vm  ─┤                                     │
//!  fyN-cl (client)                      │         │                                     │
//!   eth0 172.30.N.2/24 ────────────────▶│ cl-vm  ─┘                                     │
//!                                       └───────────────────────────────────────────────┘
//! ```
//!
//! - `mgmt` carries the API: the server reaches the agents, the agents the server. The root
//!   namespace (the server, tests, the CLI) is on it through `fyN-m`.
//! - `mignet` carries migration streams between the hosts' `mig0` (agents get
//!   `--migration-address 172.31.N.(10+i)`).
//! - `vmnet` is the VM network: each host's `br-vm` (where the agent attaches VM taps) is
//!   joined to it through `vmup0`, and the client namespace sits on it, so a client outside
//!   every host talks to the VMs (at [`NetLab::vm_subnet_ip`], e.g. 172.30.N.100) wherever
//!   they run. Bridges run without STP and with forward delay 0, so a port forwards at once;
//!   after a migration they learn the VM's MAC on its new port from the RARP QEMU
//!   broadcasts (default ageing).
//! - IPv6 is off in the lab's namespaces and on `fyN-m` (no DAD, no router solicitations).
//!
//! # Slots, records, cleanup
//!
//! A lab claims a slot N in 1..=200 by creating `fyN-sw` under a lock (see [`state`]);
//! `/run/ferry-lab/N/state.json` records the owner (pid + start time) and everything
//! created, before it is created. [`NetLab::shutdown`] (also run by `Drop`, so also when a
//! test panics) stops the daemons, kills every process in the lab's namespaces (agents,
//! QEMUs, helpers), deletes `fyN-m` and the namespaces (which takes their veths, bridges and
//! taps with them) and removes the work and state directories. After a crash (owner killed),
//! [`down`]`(`[`Which::Dead`]`)` — run by every [`NetLab::start`] and by `ferry lab down` —
//! does the same from the record. A lab whose owner is alive, or a detached one (`ferry lab
//! up --keep-running`), is only removed when asked for by slot or with `--all`.
//!
//! # Shaping
//!
//! [`NetLab::shape_migration`] puts a `tbf` on both ends of a host's migration link: the
//! host's `mig0` (what it sends) and the switch's `pI-mig` (what it receives). See [`Shape`]
//! for the parameters.

mod state;
mod sys;

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_api::client::ServerClient;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::daemon::{self, Daemon, DaemonSpec};
use crate::lab::LabError;
use crate::relay::{self, RelayConfig, RelayStats};

pub use state::{down, read_record, status, LabRecord, LabStatus, Liveness, Which, STATE_ROOT};
pub use sys::{in_netns, ProcId};

/// The segments (bridges in the switch namespace).
pub const MGMT_BRIDGE: &str = "mgmt";
pub const MIGRATION_BRIDGE: &str = "mignet";
pub const VM_BRIDGE: &str = "vmnet";
/// The bridge in each host namespace that VM taps attach to.
pub const HOST_VM_BRIDGE: &str = "br-vm";
/// The VM network's name as agents know it (`--network vmnet=br-vm`).
pub const VM_NETWORK: &str = "vmnet";
/// The host's interfaces.
pub const HOST_MGMT_IF: &str = "mgmt0";
pub const HOST_MIGRATION_IF: &str = "mig0";
pub const HOST_VM_UPLINK: &str = "vmup0";
pub const CLIENT_IF: &str = "eth0";
pub const MAX_HOSTS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum NetLabError {
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Config(String),
    #[error(
        "no free lab slot (1..=200 are taken; `ferry lab status` lists them, \
         `ferry lab down` removes dead ones)"
    )]
    NoFreeSlot,
    #[error("lab slot {0} is in use (`ferry lab status`)")]
    SlotBusy(u8),
}

#[derive(Debug, Clone)]
pub struct NetLabConfig {
    /// The `ferry` binary to run daemons from.
    pub ferry_bin: PathBuf,
    /// Host names: 1 to 8, each `[a-z][a-z0-9]{0,7}` (not `sw`, `cl` or `m`).
    pub hosts: Vec<String>,
    /// The guest image cache the agents use (None: their default).
    pub image_dir: Option<PathBuf>,
    /// Keep the work directory (logs) after shutdown.
    pub keep: bool,
    /// `RUST_LOG` for the daemons.
    pub log_filter: String,
    /// A particular slot (None: the first free one).
    pub slot: Option<u8>,
    /// Pass `--network vmnet=br-vm` to the agents. None: if `ferry agent --help` lists
    /// `--network`.
    pub vm_network_flag: Option<bool>,
    /// Hosts whose agent gets no `--network` (a host lacking the VM network).
    pub hosts_without_vm_network: Vec<String>,
    /// Extra arguments for every agent.
    pub agent_args: Vec<String>,
    /// Extra arguments for one agent: (host, args).
    pub host_args: Vec<(String, Vec<String>)>,
    /// The server's `--host-timeout-ms`.
    pub host_timeout_ms: u64,
    /// The agents' `--heartbeat-ms`.
    pub heartbeat_ms: u64,
    /// Extra arguments for the server (e.g. the fault tests' hold points).
    pub server_args: Vec<String>,
    /// Run the cluster with `--insecure` (plain HTTP and plain TCP streams): only for
    /// comparing against the secured cluster (`ferry bench tls`).
    pub insecure: bool,
}

impl NetLabConfig {
    pub fn new(ferry_bin: PathBuf, hosts: &[&str]) -> NetLabConfig {
        NetLabConfig {
            ferry_bin,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            image_dir: None,
            keep: false,
            log_filter: "info".into(),
            slot: None,
            vm_network_flag: None,
            hosts_without_vm_network: Vec::new(),
            agent_args: Vec::new(),
            host_args: Vec::new(),
            host_timeout_ms: 5000,
            heartbeat_ms: 500,
            server_args: Vec::new(),
            insecure: false,
        }
    }

    fn validate(&self) -> Result<(), NetLabError> {
        if self.hosts.is_empty() || self.hosts.len() > MAX_HOSTS {
            return Err(NetLabError::Config(format!(
                "a network lab has 1 to {MAX_HOSTS} hosts, not {}",
                self.hosts.len()
            )));
        }
        for (i, h) in self.hosts.iter().enumerate() {
            let ok = h.len() <= 8
                && h.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
                && h.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && !["sw", "cl", "m"].contains(&h.as_str());
            if !ok {
                return Err(NetLabError::Config(format!(
                    "bad host name {h:?}: use [a-z][a-z0-9]{{0,7}}, not sw, cl or m"
                )));
            }
            if self.hosts[..i].contains(h) {
                return Err(NetLabError::Config(format!("host {h} is listed twice")));
            }
        }
        if let Some((h, _)) = self.host_args.iter().find(|(h, _)| !self.hosts.contains(h)) {
            return Err(NetLabError::Config(format!(
                "extra arguments for {h}, which is not a host of the lab"
            )));
        }
        if !self.ferry_bin.is_file() {
            return Err(NetLabError::Config(format!(
                "the ferry binary {} does not exist (build it: cargo build -p ferry-cli)",
                self.ferry_bin.display()
            )));
        }
        Ok(())
    }
}

/// One host of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetHost {
    pub name: String,
    /// 1 for the first host: its addresses end in 10 + index.
    pub index: u8,
    /// Its network namespace, `fyN-<name>`.
    pub ns: String,
    /// On `mgmt0`: the agent listens here.
    pub mgmt_ip: Ipv4Addr,
    /// On `mig0`: the agent's `--migration-address`.
    pub migration_ip: Ipv4Addr,
    /// The switch's end of the host's migration link (shaped for the host's downlink).
    pub switch_migration_port: String,
    /// The agent's URL (set once it listens).
    pub agent_url: String,
    /// The agent's `--state-dir`.
    pub state_dir: PathBuf,
}

/// A rate for a host's migration link (both directions), as `tc tbf`.
///
/// Parameters: `rate` as given; `burst` = max(rate / 250, 32 KiB), i.e. what the bucket
/// refills in one tick of this kernel's HZ=250 (the classic rule for tbf, whose timers were
/// tick based; it also keeps the bucket larger than a 64 KiB GSO packet from 1 Gbit/s up:
/// 100 Mbit/s -> 50 kB, 1 Gbit/s -> 500 kB, 10 Gbit/s -> 5 MB); `limit` (queue) = max(20 ms
/// at the rate, 3 x burst, 1 MiB), so TCP's local queueing (TSQ allows ~1 MiB per socket)
/// is not dropped at the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// No shaping (the veth's own speed).
    None,
    Mbit(u32),
    Gbit1,
    Gbit10,
}

/// The parameters of one `tbf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tbf {
    pub rate_bit_s: u64,
    pub burst_bytes: u64,
    pub limit_bytes: u64,
}

impl Tbf {
    /// Arguments after `tc qdisc replace dev DEV root`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "tbf".into(),
            "rate".into(),
            format!("{}bit", self.rate_bit_s),
            "burst".into(),
            self.burst_bytes.to_string(),
            "limit".into(),
            self.limit_bytes.to_string(),
        ]
    }
}

impl Shape {
    pub fn rate_bit_s(&self) -> Option<u64> {
        match self {
            Shape::None => None,
            Shape::Mbit(m) => Some(u64::from(*m) * 1_000_000),
            Shape::Gbit1 => Some(1_000_000_000),
            Shape::Gbit10 => Some(10_000_000_000),
        }
    }

    pub fn tbf(&self) -> Option<Tbf> {
        let rate = self.rate_bit_s()?.max(8_000);
        let bytes_s = rate / 8;
        let burst = (bytes_s / 250).max(32 << 10);
        let limit = (bytes_s / 50).max(3 * burst).max(1 << 20);
        Some(Tbf {
            rate_bit_s: rate,
            burst_bytes: burst,
            limit_bytes: limit,
        })
    }
}

/// A relay started with [`NetLab::start_relay`].
#[derive(Debug, Clone)]
pub struct LabRelay {
    /// Where it listens.
    pub addr: SocketAddr,
    pub stats: Arc<RelayStats>,
}

struct NsRelay {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsRelay {
    fn stop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A process started in a lab namespace with [`NetLab::spawn_in`]; killed (SIGKILL) and
/// reaped when dropped. Dereferences to the [`Child`].
pub struct NsChild {
    child: Child,
    log: PathBuf,
}

impl NsChild {
    /// Its stdout and stderr.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

impl std::ops::Deref for NsChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for NsChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A running network lab. See the module documentation.
pub struct NetLab {
    record: LabRecord,
    owner: Option<ProcId>,
    work: PathBuf,
    daemons: Vec<Daemon>,
    /// Each agent's spec as first started (restarts with other arguments start from it).
    agent_specs: Vec<(String, DaemonSpec)>,
    relays: Vec<NsRelay>,
    spawned: AtomicU32,
    detached: bool,
    done: bool,
    /// The cluster's CA and the admin's token; set before the server starts.
    trust: Option<crate::Trust>,
}

impl NetLab {
    /// Removes dead labs, claims a slot, builds the topology, starts the server in the root
    /// namespace and one agent per host namespace, and waits until every host is connected.
    /// On failure everything created so far is removed.
    pub async fn start(cfg: NetLabConfig) -> Result<NetLab, NetLabError> {
        cfg.validate()?;
        if !nix::unistd::geteuid().is_root() {
            return Err(NetLabError::Config(
                "the network lab needs root (it creates network namespaces)".into(),
            ));
        }
        match down(Which::Dead) {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!("removed dead network labs {removed:?}")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot remove dead network labs: {e}"),
        }
        let owner =
            ProcId::me().ok_or_else(|| NetLabError::Io("cannot read /proc/self/stat".into()))?;
        let record = state::claim(cfg.slot, owner)?;
        let slot = record.slot;
        let mut lab = NetLab {
            record,
            owner: Some(owner),
            work: PathBuf::new(),
            daemons: Vec::new(),
            agent_specs: Vec::new(),
            relays: Vec::new(),
            spawned: AtomicU32::new(0),
            detached: false,
            done: false,
            trust: None,
        };
        // From here on, `lab`'s Drop removes whatever exists.
        let work = tempfile::Builder::new()
            .prefix(&format!("{}{slot}-", state::WORK_DIR_PREFIX))
            .tempdir()
            .map_err(|e| NetLabError::Io(format!("cannot create a lab work directory: {e}")))?
            .keep();
        lab.work = work.clone();
        lab.record.work_dir = Some(work);
        lab.record.keep_work_dir = cfg.keep;
        lab.save()?;
        lab.build_topology(&cfg.hosts)?;
        lab.start_daemons(&cfg).await?;
        Ok(lab)
    }

    fn save(&self) -> Result<(), NetLabError> {
        state::write_record(&self.record)
    }

    /// Records a namespace, then creates it with `lo` up and IPv6 off.
    fn add_namespace(&mut self, ns: &str) -> Result<(), NetLabError> {
        if !self.record.namespaces.iter().any(|n| n == ns) {
            self.record.namespaces.push(ns.to_string());
            self.save()?;
            sys::ip(&["netns", "add", ns])?;
        }
        sys::ip_in(ns, &["link", "set", "lo", "up"])?;
        let res = in_netns(ns, || {
            for key in ["all", "default"] {
                let path = format!("/proc/sys/net/ipv6/conf/{key}/disable_ipv6");
                if Path::new(&path).exists() {
                    std::fs::write(&path, "1").map_err(|e| format!("{path}: {e}"))?;
                }
            }
            Ok::<(), String>(())
        })?;
        res.map_err(|e| NetLabError::Io(format!("cannot turn IPv6 off in {ns}: {e}")))
    }

    fn add_bridge(ns: &str, name: &str) -> Result<(), NetLabError> {
        sys::ip_in(
            ns,
            &[
                "link",
                "add",
                name,
                "type",
                "bridge",
                "forward_delay",
                "0",
                "stp_state",
                "0",
            ],
        )?;
        sys::ip_in(ns, &["link", "set", name, "up"])?;
        Ok(())
    }

    /// A veth from `port` on bridge `bridge` of the switch to `peer` in `ns` (left down).
    fn add_switch_port(
        &self,
        port: &str,
        bridge: &str,
        ns: &str,
        peer: &str,
    ) -> Result<(), NetLabError> {
        let sw = &self.record.switch_ns;
        sys::ip_in(
            sw,
            &[
                "link", "add", port, "type", "veth", "peer", "name", peer, "netns", ns,
            ],
        )?;
        sys::ip_in(sw, &["link", "set", port, "master", bridge, "up"])?;
        Ok(())
    }

    fn build_topology(&mut self, hosts: &[String]) -> Result<(), NetLabError> {
        let n = self.record.slot;
        let sw = self.record.switch_ns.clone();
        self.add_namespace(&sw)?;
        for br in [MGMT_BRIDGE, MIGRATION_BRIDGE, VM_BRIDGE] {
            Self::add_bridge(&sw, br)?;
        }
        let relay_cidr = format!("{}/24", self.record.relay_ip);
        sys::ip_in(&sw, &["addr", "add", &relay_cidr, "dev", MIGRATION_BRIDGE])?;

        // The root namespace's way onto the management network.
        let root_if = format!("fy{n}-m");
        self.record.root_links.push(root_if.clone());
        self.save()?;
        sys::ip(&[
            "link", "add", &root_if, "type", "veth", "peer", "name", "r-mgmt", "netns", &sw,
        ])?;
        let v6 = format!("/proc/sys/net/ipv6/conf/{root_if}/disable_ipv6");
        if Path::new(&v6).exists() {
            std::fs::write(&v6, "1")
                .map_err(|e| NetLabError::Io(format!("cannot turn IPv6 off: {v6}: {e}")))?;
        }
        let server_cidr = format!("{}/24", mgmt_ip(n, 254));
        sys::ip(&["addr", "add", &server_cidr, "dev", &root_if])?;
        sys::ip(&["link", "set", &root_if, "up"])?;
        sys::ip_in(&sw, &["link", "set", "r-mgmt", "master", MGMT_BRIDGE, "up"])?;

        for (i, name) in hosts.iter().enumerate() {
            let index = i as u8 + 1;
            let ns = format!("fy{n}-{name}");
            self.add_namespace(&ns)?;
            let host = NetHost {
                name: name.clone(),
                index,
                ns: ns.clone(),
                mgmt_ip: mgmt_ip(n, 10 + index),
                migration_ip: Ipv4Addr::new(172, 31, n, 10 + index),
                switch_migration_port: format!("p{index}-mig"),
                agent_url: String::new(),
                state_dir: self.work.join(name),
            };
            self.add_switch_port(&format!("p{index}-mgmt"), MGMT_BRIDGE, &ns, HOST_MGMT_IF)?;
            self.add_switch_port(
                &host.switch_migration_port,
                MIGRATION_BRIDGE,
                &ns,
                HOST_MIGRATION_IF,
            )?;
            self.add_switch_port(&format!("p{index}-vm"), VM_BRIDGE, &ns, HOST_VM_UPLINK)?;
            Self::add_bridge(&ns, HOST_VM_BRIDGE)?;
            sys::ip_in(
                &ns,
                &[
                    "link",
                    "set",
                    HOST_VM_UPLINK,
                    "master",
                    HOST_VM_BRIDGE,
                    "up",
                ],
            )?;
            let mgmt = format!("{}/24", host.mgmt_ip);
            sys::ip_in(&ns, &["addr", "add", &mgmt, "dev", HOST_MGMT_IF])?;
            sys::ip_in(&ns, &["link", "set", HOST_MGMT_IF, "up"])?;
            let mig = format!("{}/24", host.migration_ip);
            sys::ip_in(&ns, &["addr", "add", &mig, "dev", HOST_MIGRATION_IF])?;
            sys::ip_in(&ns, &["link", "set", HOST_MIGRATION_IF, "up"])?;
            self.record.hosts.push(host);
        }
        self.save()?;

        let cl = self.record.client_ns.clone();
        self.add_namespace(&cl)?;
        self.add_switch_port("cl-vm", VM_BRIDGE, &cl, CLIENT_IF)?;
        let client = format!("{}/24", self.record.client_ip);
        sys::ip_in(&cl, &["addr", "add", &client, "dev", CLIENT_IF])?;
        sys::ip_in(&cl, &["link", "set", CLIENT_IF, "up"])?;
        Ok(())
    }

    fn spawn_daemon(&mut self, spec: DaemonSpec) -> Result<usize, NetLabError> {
        let d = daemon::spawn(&self.work, spec)?;
        if let Some(proc) = ProcId::of(d.child.id()) {
            self.record.daemons.push(state::DaemonRecord {
                name: d.spec.name.clone(),
                proc,
            });
        }
        self.daemons.push(d);
        self.save()?;
        Ok(self.daemons.len() - 1)
    }

    fn agent_spec(&self, cfg: &NetLabConfig, host: &NetHost, vm_network: bool) -> DaemonSpec {
        let ready = self.work.join(format!("{}.addr", host.name));
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--name".into(),
            host.name.clone(),
            "--listen".into(),
            format!("{}:0", host.mgmt_ip),
            "--server".into(),
            self.server_url().to_string(),
            "--state-dir".into(),
            host.state_dir.display().to_string(),
            "--migration-address".into(),
            host.migration_ip.to_string(),
            "--heartbeat-ms".into(),
            cfg.heartbeat_ms.to_string(),
            "--ready-file".into(),
            ready.display().to_string(),
        ];
        if let Some(img) = &cfg.image_dir {
            args.push("--image-dir".into());
            args.push(img.display().to_string());
        }
        if vm_network && !cfg.hosts_without_vm_network.contains(&host.name) {
            args.push("--network".into());
            args.push(format!("{VM_NETWORK}={HOST_VM_BRIDGE}"));
        }
        args.extend(cfg.agent_args.iter().cloned());
        for (h, extra) in &cfg.host_args {
            if *h == host.name {
                args.extend(extra.iter().cloned());
            }
        }
        DaemonSpec {
            name: format!("agent-{}", host.name),
            ferry_bin: cfg.ferry_bin.clone(),
            args,
            netns: Some(host.ns.clone()),
            log_filter: cfg.log_filter.clone(),
            own_group: true,
            env: Vec::new(),
        }
    }

    async fn start_daemons(&mut self, cfg: &NetLabConfig) -> Result<(), NetLabError> {
        let n = self.record.slot;
        if !cfg.insecure {
            self.trust = Some(crate::Trust::init(
                &cfg.ferry_bin,
                &self.work.join("server"),
                &self.work.join("client.toml"),
            )?);
        }
        let insecure: Vec<String> = if cfg.insecure {
            vec!["--insecure".into()]
        } else {
            Vec::new()
        };
        let ready = self.work.join("server.addr");
        let server = DaemonSpec {
            name: "server".into(),
            ferry_bin: cfg.ferry_bin.clone(),
            args: vec![
                "server".into(),
                "--listen".into(),
                format!("{}:0", mgmt_ip(n, 254)),
                "--data-dir".into(),
                self.work.join("server").display().to_string(),
                "--ready-file".into(),
                ready.display().to_string(),
                "--host-timeout-ms".into(),
                cfg.host_timeout_ms.to_string(),
            ]
            .into_iter()
            .chain(insecure.iter().cloned())
            .chain(cfg.server_args.iter().cloned())
            .collect(),
            netns: None,
            log_filter: cfg.log_filter.clone(),
            own_group: true,
            env: Vec::new(),
        };
        let idx = self.spawn_daemon(server)?;
        let addr =
            daemon::wait_ready_file(&mut self.daemons[idx], &self.work, "server", &ready).await?;
        let scheme = if cfg.insecure { "http" } else { "https" };
        let url = format!("{scheme}://{addr}");
        if let Some(t) = &self.trust {
            t.write_config(&url)?;
        }
        self.record.server_url = Some(url);
        self.save()?;

        let vm_network = match cfg.vm_network_flag {
            Some(v) => v,
            None => agent_has_network_flag(&cfg.ferry_bin),
        };
        let hosts = self.record.hosts.clone();
        let mut started = Vec::new();
        for h in &hosts {
            let mut spec = self.agent_spec(cfg, h, vm_network);
            match &self.trust {
                Some(t) => {
                    let token = t.join_token(self.server_url(), &h.name).await?;
                    spec.env.push(("FERRY_JOIN_TOKEN".into(), token));
                }
                None => spec.args.push("--insecure".into()),
            }
            self.agent_specs.push((h.name.clone(), spec.clone()));
            started.push((h.name.clone(), self.spawn_daemon(spec)?));
        }
        for (name, idx) in started {
            let ready = self.work.join(format!("{name}.addr"));
            let what = format!("agent {name}");
            let addr =
                daemon::wait_ready_file(&mut self.daemons[idx], &self.work, &what, &ready).await?;
            let scheme = if cfg.insecure { "http" } else { "https" };
            if let Some(h) = self.record.hosts.iter_mut().find(|h| h.name == name) {
                h.agent_url = format!("{scheme}://{addr}");
            }
        }
        self.save()?;
        let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
        if let Err(e) = daemon::wait_connected(&self.client(), &names).await {
            let mut text = e.to_string();
            for d in ["server".to_string()]
                .into_iter()
                .chain(names.iter().map(|h| format!("agent-{h}")))
            {
                text.push_str(&format!("\n--- {d}.log:\n{}", self.log_tail(&d)));
            }
            return Err(NetLabError::Io(text));
        }
        Ok(())
    }

    /// Stops `host`'s agent (SIGTERM; its VMs keep running) and starts it again: with the
    /// same arguments, or if `extra_args` is given, with its original arguments plus these
    /// (e.g. `--migration-advertise` once a relay runs).
    /// Returns once the new agent listens.
    pub async fn restart_agent(
        &mut self,
        host: &str,
        extra_args: Option<Vec<String>>,
    ) -> Result<(), NetLabError> {
        let name = format!("agent-{host}");
        let idx = self
            .daemons
            .iter()
            .position(|d| d.spec.name == name || d.spec.name.starts_with(&format!("{name}~")))
            .ok_or_else(|| NetLabError::Config(format!("no agent {host} in this lab")))?;
        let mut old = self.daemons.remove(idx);
        daemon::stop_one(&mut old, Duration::from_secs(10));
        let old_pid = old.child.id();
        self.record.daemons.retain(|d| d.proc.pid != old_pid);
        let ready = self.work.join(format!("{host}.addr"));
        let _ = std::fs::remove_file(&ready);
        let restarts = self.spawned.fetch_add(1, Ordering::Relaxed);
        let mut spec = match self.agent_specs.iter().find(|(h, _)| h == host) {
            Some((_, first)) => first.clone(),
            None => old.spec.clone(),
        };
        spec.name = format!("{name}~{restarts}");
        match extra_args {
            Some(extra) => spec.args.extend(extra),
            None => spec.args = old.spec.args.clone(),
        }
        let idx = self.spawn_daemon(spec)?;
        let what = format!("agent {host}");
        let addr =
            daemon::wait_ready_file(&mut self.daemons[idx], &self.work, &what, &ready).await?;
        let scheme = if self.trust.is_some() {
            "https"
        } else {
            "http"
        };
        if let Some(h) = self.record.hosts.iter_mut().find(|h| h.name == host) {
            h.agent_url = format!("{scheme}://{addr}");
        }
        self.save()?;
        Ok(())
    }

    /// Kills `host`'s agent with SIGKILL (a crash: no clean-up of its own; its QEMUs keep
    /// running). The lab forgets the process.
    pub fn kill_agent(&mut self, host: &str) -> Result<(), NetLabError> {
        let name = format!("agent-{host}");
        let idx = self
            .daemons
            .iter()
            .position(|d| d.spec.name == name || d.spec.name.starts_with(&format!("{name}~")))
            .ok_or_else(|| NetLabError::Config(format!("no agent {host} in this lab")))?;
        let mut old = self.daemons.remove(idx);
        let pid = old.child.id();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = old.child.wait();
        self.record.daemons.retain(|d| d.proc.pid != pid);
        self.save()?;
        Ok(())
    }

    pub fn slot(&self) -> u8 {
        self.record.slot
    }

    /// What the lab created, as recorded in its state file.
    pub fn record(&self) -> &LabRecord {
        &self.record
    }

    pub fn server_url(&self) -> &str {
        self.record.server_url.as_deref().unwrap_or("")
    }

    /// The admin's client.
    pub fn client(&self) -> ServerClient {
        match &self.trust {
            Some(t) => t.client(self.server_url()),
            // An --insecure lab: its URL is plain http, which the lab wrote itself.
            None => ServerClient::new(self.server_url()).expect("the lab's own URL is valid"),
        }
    }

    /// The lab's CA, admin token and client config (`FERRY_CONFIG`).
    pub fn lab_trust(&self) -> Option<&crate::Trust> {
        self.trust.as_ref()
    }

    /// A client for host `host`'s agent, presenting the server's certificate.
    pub fn agent_client(&self, host: &str) -> Result<ferry_api::client::AgentClient, NetLabError> {
        let h = self
            .record
            .hosts
            .iter()
            .find(|h| h.name == host)
            .ok_or_else(|| NetLabError::Config(format!("no host {host} in this lab")))?;
        match &self.trust {
            Some(t) => Ok(t.agent_client(&h.agent_url, host)?),
            // An --insecure lab: plain http to the agent's own URL.
            None => ferry_api::client::AgentClient::new(&h.agent_url)
                .map_err(|e| NetLabError::Io(format!("agent {host}: {e}"))),
        }
    }

    pub fn hosts(&self) -> &[NetHost] {
        &self.record.hosts
    }

    pub fn host(&self, name: &str) -> Option<&NetHost> {
        self.record.hosts.iter().find(|h| h.name == name)
    }

    fn host_or_panic(&self, name: &str) -> &NetHost {
        self.host(name)
            .unwrap_or_else(|| panic!("no host {name} in network lab {}", self.slot()))
    }

    /// `host`'s namespace. Panics if there is no such host.
    pub fn host_ns(&self, host: &str) -> &str {
        &self.host_or_panic(host).ns
    }

    /// `host`'s address on the migration network. Panics if there is no such host.
    pub fn migration_ip(&self, host: &str) -> Ipv4Addr {
        self.host_or_panic(host).migration_ip
    }

    /// `host`'s address on the management network. Panics if there is no such host.
    pub fn mgmt_ip(&self, host: &str) -> Ipv4Addr {
        self.host_or_panic(host).mgmt_ip
    }

    /// 172.30.N.k on the VM network (the client is .2; use .10 and up for VMs).
    pub fn vm_subnet_ip(&self, k: u8) -> Ipv4Addr {
        Ipv4Addr::new(172, 30, self.slot(), k)
    }

    pub fn client_ns(&self) -> &str {
        &self.record.client_ns
    }

    pub fn client_ip(&self) -> Ipv4Addr {
        self.record.client_ip
    }

    pub fn switch_ns(&self) -> &str {
        &self.record.switch_ns
    }

    /// The switch namespace's address on the migration network (listen there for relays).
    pub fn relay_ip(&self) -> Ipv4Addr {
        self.record.relay_ip
    }

    /// The work directory: logs (`server.log`, `agent-<host>.log`), the agents' state dirs.
    pub fn dir(&self) -> &Path {
        &self.work
    }

    pub fn log_tail(&self, name: &str) -> String {
        daemon::log_tail(&self.work, name)
    }

    /// `ip netns exec NS PROGRAM ARGS...` as a [`Command`] (stdio as the caller sets it).
    pub fn command_in<S: AsRef<OsStr>>(
        &self,
        ns: &str,
        program: impl AsRef<OsStr>,
        args: &[S],
    ) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs a program in namespace `ns` and returns its output (whatever its exit status).
    pub fn exec_in<S: AsRef<OsStr>>(
        &self,
        ns: &str,
        program: impl AsRef<OsStr>,
        args: &[S],
    ) -> Result<Output, NetLabError> {
        let program = program.as_ref();
        self.command_in(ns, program, args).output().map_err(|e| {
            NetLabError::Io(format!(
                "cannot run ip netns exec {ns} {}: {e}",
                program.to_string_lossy()
            ))
        })
    }

    /// Starts a program in namespace `ns`, its stdout and stderr going to a log file in the
    /// work directory ([`NsChild::log`]). Killed when the handle is dropped, and at the
    /// latest by the lab's shutdown.
    pub fn spawn_in<S: AsRef<OsStr>>(
        &self,
        ns: &str,
        program: impl AsRef<OsStr>,
        args: &[S],
    ) -> Result<NsChild, NetLabError> {
        let program = program.as_ref();
        let k = self.spawned.fetch_add(1, Ordering::Relaxed);
        let log = self.work.join(format!("spawn-{k}.log"));
        let out = std::fs::File::create(&log)
            .map_err(|e| NetLabError::Io(format!("cannot create {}: {e}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| NetLabError::Io(format!("cannot share {}: {e}", log.display())))?;
        let child = self
            .command_in(ns, program, args)
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                NetLabError::Io(format!(
                    "cannot run ip netns exec {ns} {}: {e}",
                    program.to_string_lossy()
                ))
            })?;
        Ok(NsChild { child, log })
    }

    /// Runs `f` on a thread inside namespace `ns` (sockets it creates live there).
    pub fn in_ns<T: Send>(&self, ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, NetLabError> {
        in_netns(ns, f)
    }

    /// Shapes `host`'s migration link, both directions (see [`Shape`]); `Shape::None`
    /// removes the shaping.
    pub fn shape_migration(&self, host: &str, shape: Shape) -> Result<(), NetLabError> {
        let h = self
            .host(host)
            .ok_or_else(|| NetLabError::Config(format!("no host {host} in this lab")))?;
        let ends = [
            (h.ns.as_str(), HOST_MIGRATION_IF),
            (
                self.record.switch_ns.as_str(),
                h.switch_migration_port.as_str(),
            ),
        ];
        for (ns, dev) in ends {
            match shape.tbf() {
                Some(tbf) => {
                    let mut args: Vec<String> = ["qdisc", "replace", "dev", dev, "root"]
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                    args.extend(tbf.args());
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    sys::tc_in(ns, &args)?;
                }
                None => {
                    let shown = sys::tc_in(ns, &["qdisc", "show", "dev", dev])?;
                    if shown.contains("qdisc tbf") {
                        sys::tc_in(ns, &["qdisc", "del", "dev", dev, "root"])?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Sets the MTU of the whole migration network: the `mignet` bridge, every host's
    /// `mig0` and the switch's ends of their links (9000: jumbo frames, as a dedicated
    /// migration network is usually run; at 1500 a TCP stream's headers take 4.4 % of the
    /// link, at 9000 0.7 %). New connections use it at once; 576..=9000.
    pub fn set_migration_mtu(&self, mtu: u16) -> Result<(), NetLabError> {
        if !(576..=9000).contains(&mtu) {
            return Err(NetLabError::Config(format!(
                "migration MTU {mtu}: use 576 to 9000"
            )));
        }
        let mtu = mtu.to_string();
        let sw = self.record.switch_ns.as_str();
        for h in &self.record.hosts {
            for (ns, dev) in [
                (sw, h.switch_migration_port.as_str()),
                (h.ns.as_str(), HOST_MIGRATION_IF),
            ] {
                sys::ip_in(ns, &["link", "set", "dev", dev, "mtu", &mtu])?;
            }
        }
        // A bridge takes the smallest MTU of its ports unless set itself.
        sys::ip_in(sw, &["link", "set", "dev", MIGRATION_BRIDGE, "mtu", &mtu])?;
        Ok(())
    }

    /// Cuts (`up: false`) or restores `host`'s migration link at the switch: its port on the
    /// migration bridge goes down, so the host's `mig0` loses carrier and every packet either
    /// way is dropped without an error (a cable pulled mid-stream, not a refused connection).
    pub fn set_migration_link(&self, host: &str, up: bool) -> Result<(), NetLabError> {
        let h = self
            .host(host)
            .ok_or_else(|| NetLabError::Config(format!("no host {host} in this lab")))?;
        let state = if up { "up" } else { "down" };
        sys::ip_in(
            &self.record.switch_ns,
            &["link", "set", "dev", &h.switch_migration_port, state],
        )?;
        Ok(())
    }

    /// Cuts (`up: false`) or restores `host`'s management link at the switch: the host
    /// loses the server and its peers' agents (its migration and VM links stay up). For
    /// HA tests: a host alive but partitioned.
    pub fn set_management_link(&self, host: &str, up: bool) -> Result<(), NetLabError> {
        let h = self
            .host(host)
            .ok_or_else(|| NetLabError::Config(format!("no host {host} in this lab")))?;
        let state = if up { "up" } else { "down" };
        sys::ip_in(
            &self.record.switch_ns,
            &["link", "set", "dev", &format!("p{}-mgmt", h.index), state],
        )?;
        Ok(())
    }

    /// Starts a delaying TCP relay ([`crate::relay`]) listening on `listen` inside namespace
    /// `ns` and forwarding to `to`: `delay_ms` each way, optionally capped at `rate_mbit`
    /// per direction. Typically in the switch namespace on [`NetLab::relay_ip`], towards a
    /// host's migration address. It runs on a thread of this process that entered the
    /// namespace (so it needs no binary and dies with its owner); the lab stops it on
    /// shutdown, or [`NetLab::stop_relay`]. For a relay in a lab from `ferry lab up`, run
    /// `ip netns exec fyN-sw ferry lab relay ...` instead.
    pub fn start_relay(
        &mut self,
        ns: &str,
        listen: SocketAddr,
        to: SocketAddr,
        delay_ms: u64,
        rate_mbit: Option<u32>,
    ) -> Result<LabRelay, NetLabError> {
        let mut cfg = RelayConfig::new(to, Duration::from_millis(delay_ms));
        if let Some(r) = rate_mbit {
            cfg = cfg.with_rate_mbit(r);
        }
        let stats = Arc::new(RelayStats::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let ns_name = ns.to_string();
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name(format!("relay-{ns}"))
            .spawn(move || {
                if let Err(e) = sys::enter_netns(&ns_name) {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot start a runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::bind(listen).await {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx
                                .send(Err(format!("cannot listen on {listen} in {ns_name}: {e}")));
                            return;
                        }
                    };
                    let bound = listener.local_addr().unwrap_or(listen);
                    let _ = ready_tx.send(Ok(bound));
                    let shutdown = async move {
                        let _ = stop_rx.await;
                    };
                    if let Err(e) = relay::serve(listener, cfg, thread_stats, shutdown).await {
                        tracing::warn!("relay on {bound} in {ns_name} ended: {e}");
                    }
                });
            })
            .map_err(|e| NetLabError::Io(format!("cannot start a relay thread: {e}")))?;
        let mut handle = NsRelay {
            addr: listen,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(addr)) => {
                handle.addr = addr;
                self.relays.push(handle);
                Ok(LabRelay { addr, stats })
            }
            Ok(Err(e)) => {
                handle.stop();
                Err(NetLabError::Io(format!("relay: {e}")))
            }
            Err(_) => {
                handle.stop();
                Err(NetLabError::Io(
                    "relay thread ended before listening".into(),
                ))
            }
        }
    }

    /// Makes migrations to `host` cross a long-distance link: a relay in the switch namespace
    /// on [`NetLab::relay_ip`]:`port` delays `delay_ms` each way and forwards to the host's
    /// migration address; the host's agent is restarted to listen on `port` and to advertise
    /// the relay, and this returns (with the relay's address) once the server has seen it.
    pub async fn route_migrations_through_relay(
        &mut self,
        host: &str,
        port: u16,
        delay_ms: u64,
    ) -> Result<SocketAddr, NetLabError> {
        let relay_ip = self.relay_ip();
        let relay = SocketAddr::new(relay_ip.into(), port);
        let dest = SocketAddr::new(self.migration_ip(host).into(), port);
        let sw = self.switch_ns().to_string();
        self.start_relay(&sw, relay, dest, delay_ms, None)?;
        let extra = vec![
            "--migration-port".to_string(),
            port.to_string(),
            "--migration-advertise".to_string(),
            relay_ip.to_string(),
        ];
        self.restart_agent(host, Some(extra)).await?;
        let client = self.client();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let advertised = client.host(host).await.map(|h| h.migration_address);
            if advertised.as_deref().ok() == Some(relay_ip.to_string().as_str()) {
                return Ok(relay);
            }
            if std::time::Instant::now() > deadline {
                return Err(NetLabError::Config(format!(
                    "host {host} did not advertise the relay {relay_ip} within 20 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the relay listening on `addr`; false if there is none.
    pub fn stop_relay(&mut self, addr: SocketAddr) -> bool {
        match self.relays.iter().position(|r| r.addr == addr) {
            Some(i) => {
                self.relays.remove(i).stop();
                true
            }
            None => false,
        }
    }

    /// Every process of the lab: its daemons and whatever runs in its namespaces.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.daemons.iter().map(|d| d.child.id()).collect();
        for ns in &self.record.namespaces {
            pids.extend(sys::netns_pids(ns));
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// The pid of the QEMU running `vm` on `host`, from its pidfile.
    pub fn qemu_pid(&self, host: &str, vm: &str) -> Option<u32> {
        let h = self.host(host)?;
        let pidfile = h.state_dir.join("vms").join(vm).join("qemu.pid");
        let pid = ferry_qemu::process::read_pidfile(&pidfile)?;
        ferry_qemu::process::pid_runs_with(pid, &h.state_dir).then_some(pid)
    }

    /// QEMU processes of the lab still running on `host`.
    pub fn qemus_on(&self, host: &str) -> Vec<u32> {
        match self.host(host) {
            Some(h) => ferry_qemu::process::qemu_pids_under(&h.state_dir)
                .into_iter()
                .map(|(pid, _)| pid)
                .collect(),
            None => Vec::new(),
        }
    }

    /// SIGKILLs the QEMU of `vm` on `host` (failure injection).
    pub fn kill_qemu(&self, host: &str, vm: &str) -> bool {
        match self.qemu_pid(host, vm) {
            Some(pid) => kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok(),
            None => false,
        }
    }

    /// Leaves the lab running after this process exits (`ferry lab up --keep-running`):
    /// the record says detached, and only `ferry lab down --slot N` (or `--all`) removes
    /// it. Relays started with [`NetLab::start_relay`] end with this process.
    pub fn detach(mut self) -> Result<LabRecord, NetLabError> {
        state::detach(&mut self.record)?;
        self.detached = true;
        for r in &mut self.relays {
            r.stop();
        }
        Ok(self.record.clone())
    }

    /// Stops and removes everything the lab created. Called by `Drop` too; idempotent.
    pub fn shutdown(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        for r in &mut self.relays {
            r.stop();
        }
        self.relays.clear();
        if self.detached {
            return;
        }
        daemon::stop_all(&mut self.daemons, Duration::from_secs(5));
        self.daemons.clear();
        let lock = match state::lock() {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!("network lab {}: {e}; removing it unlocked", self.slot());
                None
            }
        };
        // If someone removed this lab (`ferry lab down --slot N`) and the slot was claimed
        // again, it is not ours any more.
        let slot = self.record.slot;
        let ours = match read_record(slot) {
            Some(r) => r.owner.is_some() && r.owner == self.owner,
            None => true,
        };
        if ours {
            for p in state::teardown(slot, Some(&self.record)) {
                tracing::warn!("network lab {slot}: {p}");
                eprintln!("network lab {slot}: cleanup: {p}");
            }
        }
        drop(lock);
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn mgmt_ip(slot: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(172, 29, slot, host)
}

/// Whether this `ferry` binary's agent takes `--network NAME=BRIDGE`.
fn agent_has_network_flag(ferry_bin: &Path) -> bool {
    match Command::new(ferry_bin)
        .args(["agent", "--help"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout).contains("--network"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tbf_parameters_scale_with_the_rate() {
        let t = Shape::Mbit(100).tbf().unwrap();
        assert_eq!(t.rate_bit_s, 100_000_000);
        assert_eq!(t.burst_bytes, 50_000);
        assert_eq!(t.limit_bytes, 1 << 20);
        let t = Shape::Gbit1.tbf().unwrap();
        assert_eq!(t.burst_bytes, 500_000);
        assert_eq!(t.limit_bytes, 2_500_000);
        let t = Shape::Gbit10.tbf().unwrap();
        assert_eq!(t.burst_bytes, 5_000_000);
        assert_eq!(t.limit_bytes, 25_000_000);
        let t = Shape::Mbit(1).tbf().unwrap();
        assert_eq!(t.burst_bytes, 32 << 10);
        assert_eq!(
            t.args(),
            [
                "tbf",
                "rate",
                "1000000bit",
                "burst",
                "32768",
                "limit",
                "1048576"
            ]
        );
        assert_eq!(Shape::None.tbf(), None);
    }

    #[test]
    fn host_names_are_checked() {
        let bin = PathBuf::from("/proc/self/exe");
        let ok = NetLabConfig::new(bin.clone(), &["a", "b", "web1"]);
        assert!(ok.validate().is_ok(), "{:?}", ok.validate());
        for bad in [
            &["A"][..],
            &["sw"],
            &["a", "a"],
            &["toolongname"],
            &["1a"],
            &[],
        ] {
            let cfg = NetLabConfig::new(bin.clone(), bad);
            assert!(cfg.validate().is_err(), "{bad:?} accepted");
        }
        let nine: Vec<String> = (0..9).map(|i| format!("h{i}")).collect();
        let refs: Vec<&str> = nine.iter().map(String::as_str).collect();
        assert!(NetLabConfig::new(bin, &refs).validate().is_err());
    }
}
