//! VMs as an agent runs them and as the server records them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Accel, VmSpec};

/// Life-cycle state of a VM's QEMU process on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// QEMU is starting.
    Starting,
    /// The guest runs.
    Running,
    /// The guest is paused (by the operator, or by a migration switch-over in progress).
    Paused,
    /// A destination QEMU waiting for, or receiving, a migration stream.
    Incoming,
    /// A source QEMU that handed the VM over (paused for good, about to be shut down).
    MigratedAway,
    /// Stopped on request.
    Stopped,
    /// QEMU exited without being asked to.
    Crashed,
    /// QEMU's process lives but its monitor did not answer in time (busy or hung): its
    /// state is unknown, which is not the same as starting or gone.
    Unresponsive,
}

impl VmState {
    /// A QEMU is (about to be) running the guest: starting, running or paused.
    pub fn is_active(self) -> bool {
        matches!(self, VmState::Starting | VmState::Running | VmState::Paused)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Incoming => "incoming",
            VmState::MigratedAway => "migrated_away",
            VmState::Stopped => "stopped",
            VmState::Crashed => "crashed",
            VmState::Unresponsive => "unresponsive",
        }
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A VM as its agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRuntime {
    /// The spec as launched, with the machine alias resolved.
    pub spec: VmSpec,
    pub state: VmState,
    /// QEMU's run state (`query-status`), when QMP answers.
    pub qemu_status: Option<String>,
    pub pid: Option<u32>,
    /// The accelerator actually used.
    pub accel: Accel,
    pub started_at: DateTime<Utc>,
    /// Why QEMU exited, when it did.
    pub exit_reason: Option<String>,
}

/// A request to an agent to launch a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchRequest {
    pub spec: VmSpec,
}

/// The server's record of a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vm {
    pub spec: VmSpec,
    /// The one host the VM runs on (or last ran on).
    pub host: String,
    pub state: VmState,
    /// The migration in flight, if any.
    pub migration: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Live details from the host's agent, when it answered.
    #[serde(default)]
    pub runtime: Option<VmRuntime>,
}

/// `POST /v1/vms` on the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    /// None: the server places the VM (see `ferry_server::placement`).
    #[serde(default)]
    pub host: Option<String>,
    pub spec: VmSpec,
}

/// The tail of a VM's serial console.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleTail {
    /// Bytes written to the console by this QEMU instance so far.
    pub total_bytes: u64,
    /// The last bytes (lossy UTF-8).
    pub text: String,
}
