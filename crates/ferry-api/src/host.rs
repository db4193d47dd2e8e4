//! Hosts: what an agent reports about itself, and the server's view of it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Accel;

/// What an agent knows about its host. Sent with every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostInventory {
    pub agent_version: String,
    pub cpus: u32,
    pub cpu_model_name: String,
    pub memory_total_mib: u64,
    pub memory_available_mib: u64,
    /// `qemu-system-x86_64 --version`, e.g. "10.0.2".
    pub qemu_version: String,
    /// What `accel = auto` resolves to on this host, and why.
    pub accel: Accel,
    pub accel_reason: String,
    /// Machine-type aliases and what they resolve to (q35 -> pc-q35-10.0), plus every
    /// concrete machine type this QEMU offers.
    pub machine_aliases: Vec<(String, String)>,
    pub machine_types: Vec<String>,
    /// Networks (by name) this host's VMs can attach to.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Storage pools on this host.
    #[serde(default)]
    pub pools: Vec<crate::PoolInfo>,
    pub vms_running: u32,
    pub vm_memory_mib: u64,
    /// `vendor_id` from /proc/cpuinfo (GenuineIntel, AuthenticAMD).
    #[serde(default)]
    pub cpu_vendor: String,
    /// CPU models this host's QEMU offers under its accelerator, each with the features it
    /// cannot provide (empty: the model runs here). Asked of QEMU itself
    /// (`query-cpu-definitions`), restricted by the agent's `--cpu-models` if set.
    #[serde(default)]
    pub cpu_models: Vec<CpuModelAvailability>,
    /// Memory the host keeps for itself and never gives to VMs, MiB (`--memory-reserve-mib`).
    #[serde(default)]
    pub memory_reserve_mib: u64,
    /// vCPUs allowed per host CPU (`--vcpu-overcommit`).
    #[serde(default)]
    pub vcpu_overcommit: f64,
    /// vCPUs of the VMs running here.
    #[serde(default)]
    pub vcpus_committed: u32,
    /// The migration link's capacity as the operator configured it, MiB/s
    /// (`--migration-link-mib-s`; None: the server uses what its probes measured).
    #[serde(default)]
    pub migration_link_mib_s: Option<u64>,
}

/// The cluster CPU baseline setting (`POST /v1/cluster/baseline`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode", content = "model")]
pub enum BaselineSetting {
    /// Computed from the hosts: the best model every host can run.
    Auto,
    /// Named by the operator.
    Fixed(String),
}

/// `GET /v1/cluster`: cluster-wide settings and what they resolve to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub baseline_setting: BaselineSetting,
    /// The CPU model new VMs get by default (`cpu_model: "baseline"`); None when no
    /// model is common to the hosts (or none reported its models yet).
    pub baseline_model: Option<String>,
    /// Hosts that cannot run the baseline, with why.
    pub hosts_without_baseline: Vec<HostBaselineProblem>,
    /// Options every migration gets unless it sets its own.
    #[serde(default)]
    pub migration_defaults: crate::MigrationOptions,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostBaselineProblem {
    pub host: String,
    pub reason: String,
}

/// One CPU model as a host's QEMU sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuModelAvailability {
    pub name: String,
    /// Features this host cannot provide for the model; empty when it runs here.
    #[serde(default)]
    pub unavailable_features: Vec<String>,
}

impl HostInventory {
    /// The model's entry, if this host's QEMU knows it.
    pub fn cpu_model(&self, name: &str) -> Option<&CpuModelAvailability> {
        self.cpu_models.iter().find(|m| m.name == name)
    }
}

/// An agent introducing itself (and then heartbeating) to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRegistration {
    pub name: String,
    /// Where the server reaches the agent's API, e.g. http://10.0.0.5:7701.
    pub url: String,
    /// The address the host receives migration streams on (the migration network).
    pub migration_address: String,
    pub inventory: HostInventory,
    /// What runs on the host right now: the agent owns this truth, and the server
    /// reconciles its records with it.
    #[serde(default)]
    pub vms: Vec<ReportedVm>,
    /// The host's and its VMs' load since the last heartbeat (None from the first one,
    /// which has nothing to compare against).
    #[serde(default)]
    pub load: Option<crate::LoadReport>,
    /// Which of its peers answered its last probes.
    #[serde(default)]
    pub peers: Option<crate::PeerView>,
}

/// One VM in a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportedVm {
    pub name: String,
    pub state: crate::VmState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Heartbeats arrive.
    Connected,
    /// No heartbeat for longer than the server's timeout.
    Disconnected,
}

impl std::fmt::Display for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HostState::Connected => "connected",
            HostState::Disconnected => "disconnected",
        })
    }
}

/// The server's record of a host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    pub url: String,
    pub migration_address: String,
    pub state: HostState,
    pub registered_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub inventory: HostInventory,
    /// VMs the server places on this host.
    pub vms: u32,
    /// In maintenance: takes no VMs (set with `ferry host maintenance`).
    #[serde(default)]
    pub maintenance: bool,
    /// How the server judges it (heartbeats, lease, peers).
    #[serde(default)]
    pub health: crate::HostHealth,
    /// In the reply to a heartbeat only: the lease it grants and the host's peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<crate::HostLease>,
}
