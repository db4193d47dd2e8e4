//! Migrations: requests, records, agent-level steps, and the event log.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use ferry_migration::convergence::History as ConvergenceHistory;
pub use ferry_migration::pause::{Checkpoint as PauseCheckpoint, PauseParts};
pub use ferry_migration::recovery::{Keep, SideFacts};
pub use ferry_migration::{
    disk_totals, disks_in_sync, BlockJobStatus, DiskCopyProgress, MigrationProgress,
    MigrationReport, MigrationStatus, NetworkReport, Phase, PhaseEvent, TimeParts,
};

use crate::{ApiError, VmSpec};

/// Tunables of one migration. Unset fields take the server's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationOptions {
    /// Live (the default), quick (save to a shared pool, restore on the destination) or
    /// cold (a stopped VM with its local disks).
    #[serde(default)]
    pub mode: crate::MigrationMode,
    /// Cap on the migration stream, MiB/s. None: no cap (QEMU's own default is 128 MiB/s;
    /// Ferry lifts it unless asked to cap).
    #[serde(default)]
    pub max_bandwidth_mib: Option<u64>,
    /// Longest acceptable switch-over pause, ms (QEMU's downtime-limit).
    #[serde(default)]
    pub downtime_limit_ms: Option<u64>,
    /// Abort when no progress is made for this long, seconds.
    #[serde(default)]
    pub progress_timeout_s: Option<u64>,
    /// Local-pool disks: keep the source's image after the VM runs on the destination
    /// (by default it is deleted once the destination runs).
    #[serde(default)]
    pub keep_source: bool,
    /// Go on past pre-migration checks that only warn (failures always refuse).
    #[serde(default)]
    pub force: bool,
    /// Parallel streams (QEMU multifd channels); 1: a single stream.
    #[serde(default)]
    pub streams: Option<u8>,
    #[serde(default)]
    pub compression: Option<crate::Compression>,
    #[serde(default)]
    pub zero_page: Option<crate::ZeroPage>,
    /// Highest guest vCPU throttle the controller may apply, percent (0: never throttle).
    #[serde(default)]
    pub max_throttle_pct: Option<u8>,
    /// When post-copy may be used (never / allowed / automatic).
    #[serde(default)]
    pub postcopy: Option<crate::PostcopyPolicy>,
    /// Pre-copy gets this many seconds per GiB of guest RAM to converge by itself before
    /// the controller escalates (None: no deadline).
    #[serde(default)]
    pub completion_timeout_s_per_gib: Option<u64>,
    /// How QEMU's switch-over target moves within the downtime budget: `least` (the
    /// default: start low, raise only when pre-copy stops shrinking) or `budget` (aim at
    /// the budget's ceiling from the start).
    #[serde(default)]
    pub switchover: Option<crate::SwitchoverPolicy>,
    /// Frames that reach the source while the guest is paused are drained from the
    /// source's tap once the stream completed and delivered to the guest on the
    /// destination (None: on). Off only to measure what it saves.
    #[serde(default)]
    pub forward_frames: Option<bool>,
}

pub const DEFAULT_DOWNTIME_LIMIT_MS: u64 = 300;
pub const DEFAULT_PROGRESS_TIMEOUT_S: u64 = 60;

impl MigrationOptions {
    /// What the convergence controller may do for a migration of a guest with `ram_mib`.
    pub fn convergence_policy(&self, ram_mib: u64) -> ferry_migration::convergence::Policy {
        use ferry_migration::convergence::{completion_deadline_ms, Policy};
        Policy {
            downtime_budget_ms: self.downtime_limit_ms.unwrap_or(DEFAULT_DOWNTIME_LIMIT_MS),
            max_throttle_pct: self.max_throttle_pct.unwrap_or(0),
            postcopy: self.postcopy.unwrap_or_default(),
            completion_deadline_ms: completion_deadline_ms(
                self.completion_timeout_s_per_gib,
                ram_mib,
            ),
            switchover: self.switchover.unwrap_or_default(),
        }
    }

    pub fn validate(&self) -> Result<(), ApiError> {
        if let Some(b) = self.max_bandwidth_mib {
            if b == 0 || b > 1 << 20 {
                return Err(ApiError::bad_request(format!(
                    "max_bandwidth_mib is {b}; it must be between 1 and {}",
                    1 << 20
                )));
            }
        }
        if let Some(d) = self.downtime_limit_ms {
            if !(1..=60_000).contains(&d) {
                return Err(ApiError::bad_request(format!(
                    "downtime_limit_ms is {d}; it must be between 1 and 60000"
                )));
            }
        }
        if let Some(t) = self.progress_timeout_s {
            if !(1..=86_400).contains(&t) {
                return Err(ApiError::bad_request(format!(
                    "progress_timeout_s is {t}; it must be between 1 and 86400"
                )));
            }
        }
        self.validate_stream()
    }
}

/// `POST /v1/migrations` on the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    pub vm: String,
    /// None: the server picks the destination (see `ferry_server::placement`).
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub options: MigrationOptions,
    /// Queue rank: higher starts first, then the earlier request (default 0; an
    /// evacuation's migrations get [`crate::EVACUATION_PRIORITY`]).
    #[serde(default)]
    pub priority: Option<i32>,
}

/// The server's record of a migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Migration {
    pub id: Uuid,
    pub vm: String,
    pub source: String,
    pub destination: String,
    pub phase: Phase,
    pub options: MigrationOptions,
    /// Where the stream went (`tcp:ADDR:PORT` on the destination's migration address).
    pub stream_uri: Option<String>,
    /// The migration-network endpoints used.
    #[serde(default)]
    pub addresses: Option<MigrationAddresses>,
    pub progress: Option<MigrationProgress>,
    pub report: Option<MigrationReport>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// What the orchestrator must remember across a restart (see [`RunState`]).
    #[serde(default)]
    pub run: RunState,
    /// Why the migration needs an operator, with what each side reported
    /// (`needs_attention` only).
    #[serde(default)]
    pub attention: Option<Attention>,
    /// Queue rank (higher first, then the earlier request).
    #[serde(default)]
    pub priority: i32,
    /// The operation (an evacuation, a scheduled run) that asked for this migration, if any.
    #[serde(default)]
    pub operation: Option<Uuid>,
    /// `queued` only: its place in the queue and what holds it back (computed when read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<crate::QueueStanding>,
}

/// Everything recovery needs that is not in the phase: saved with every phase change, so
/// a restarted server acts on the same facts the running one had.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunState {
    /// The source was told to send memory or to copy disks (saved before the call).
    pub outgoing_started: bool,
    /// The local-pool disks this migration copies (decided before anything moved).
    pub copies: Vec<PlannedCopy>,
    /// The convergence controller's memory (its step among it).
    pub controller: ConvergenceHistory,
    /// Guest RAM, MiB (completion deadline, XBZRLE cache).
    pub ram_mib: u64,
    /// The operator asked to cancel (a restarted server still honours it).
    pub cancel_requested: bool,
    /// After `completed`: the source QEMU was shut down.
    pub source_retired: bool,
    /// After `completed`: the source's copies of moved disks were dealt with (deleted,
    /// or kept on request).
    pub source_disks_done: bool,
    /// After a rollback: the destination could not be cleaned up yet (its agent was away).
    pub destination_cleanup_pending: bool,
    /// Post-copy: how often the link broke, and how long the stream stood paused, ms.
    pub postcopy_pauses: u32,
    pub postcopy_paused_ms: u64,
    /// A quick migration's own steps and figures (boxed: most migrations are live).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quick: Option<Box<crate::QuickRun>>,
    /// A cold migration's own steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cold: Option<Box<crate::ColdRun>>,
    /// Where the time went so far (the report carries it at the end).
    #[serde(default)]
    pub parts: TimeParts,
}

impl RunState {
    /// Work left after the VM runs on the destination.
    pub fn cleanup_pending(&self) -> bool {
        !self.source_retired
            || !self.source_disks_done
            || self.quick.as_ref().is_some_and(|q| !q.file_deleted)
            || self
                .cold
                .as_ref()
                .is_some_and(|c| !c.destination_finished || !c.source_finished)
    }
}

/// One local-pool disk a migration copies to the destination's pool of the same name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedCopy {
    /// Index into the spec's disks.
    pub index: usize,
    pub pool: String,
    pub image: String,
    pub virtual_size: u64,
    /// Bytes the source image occupies: what has to fit on the destination.
    pub actual_size: u64,
}

impl PlannedCopy {
    pub fn target(&self) -> DiskCopyTarget {
        DiskCopyTarget {
            index: self.index,
            virtual_size: self.virtual_size,
        }
    }
    pub fn label(&self) -> String {
        format!("{}/{}", self.pool, self.image)
    }
}

/// Why a migration waits for an operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attention {
    pub reason: String,
    pub since: DateTime<Utc>,
    /// What each side's agent reported when recovery stopped.
    pub source: SideFacts,
    pub destination: SideFacts,
}

/// `POST /v1/migrations/{id}/resolve`: an operator settles a migration that needs
/// attention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    pub keep: Keep,
    /// The other side cannot be checked, and the operator made sure it does not run the
    /// guest. Never overrides a refusal that would lose the VM.
    #[serde(default)]
    pub force: bool,
}

// ---- agent-level steps ------------------------------------------------------------------

/// Destination: start QEMU for `spec` waiting for an incoming stream on the host's
/// migration address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncomingRequest {
    pub spec: VmSpec,
    /// Disks (of `spec.disks`) to create empty in the destination's pool and export for
    /// the source to copy into: local-pool disks. Shared-pool disks are not listed.
    #[serde(default)]
    pub copy_disks: Vec<DiskCopyTarget>,
    /// Capabilities and parameters that must match the source's.
    #[serde(default)]
    pub stream: crate::StreamSettings,
    /// The source host. An agent with TLS material needs it: QEMU
    /// then admits (or talks to) only that host's certificate.
    #[serde(default)]
    pub peer_host: Option<String>,
}

/// One disk the destination creates and exports for a storage copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskCopyTarget {
    /// Index into `spec.disks`.
    pub index: usize,
    /// The source image's virtual size: the target gets exactly this size.
    pub virtual_size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncomingResponse {
    /// Where QEMU listens, `ADDR:PORT` on the destination's migration network.
    pub listen: String,
    /// Where the source must connect (differs from `listen` behind NAT or a relay).
    pub advertised: String,
    /// With `copy_disks`: the NBD server exporting the target disks, `ADDR:PORT` as the
    /// source must reach it (on the migration network).
    #[serde(default)]
    pub disk_export: Option<String>,
    /// With `copy_disks`: the export name of each target, in `copy_disks` order (random
    /// per migration, never the VM's or the disk's name).
    #[serde(default)]
    pub disk_export_names: Vec<String>,
}

/// Source, post-copy paused: reconnect to the destination's recovery listener
/// (`POST /v1/vms/{name}/migration/resume`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeRequest {
    /// `tcp:ADDR:PORT`, as the destination's recover answer advertised it.
    pub uri: String,
    /// The destination host. An agent with TLS material needs it: QEMU
    /// then admits (or talks to) only that host's certificate.
    #[serde(default)]
    pub peer_host: Option<String>,
}

/// Destination, post-copy paused: listen for the source again
/// (`POST /v1/vms/{name}/migration/recover`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverRequest {
    /// The source host. An agent with TLS material needs it: QEMU
    /// then admits (or talks to) only that host's certificate.
    #[serde(default)]
    pub peer_host: Option<String>,
}

/// Source: mirror the listed disks to the destination's NBD export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskCopyRequest {
    /// `ADDR:PORT` of the destination's NBD server.
    pub export: String,
    /// Indices into the VM's `spec.disks`.
    pub disks: Vec<usize>,
    /// Bytes per second per disk; 0 = unlimited.
    #[serde(default)]
    pub max_bandwidth_bytes: u64,
    /// The export name of each disk, in `disks` order, as the destination reported them.
    pub export_names: Vec<String>,
    /// The destination host. An agent with TLS material needs it: QEMU
    /// then admits (or talks to) only that host's certificate.
    #[serde(default)]
    pub peer_host: Option<String>,
}

/// The network endpoints a migration used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationAddresses {
    /// The source host's migration-network address.
    pub source: String,
    /// Where the destination QEMU listened.
    pub destination_listen: String,
    /// Where the source connected.
    pub destination_advertised: String,
}

/// Source: send the VM to `uri`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutgoingRequest {
    pub uri: String,
    /// Bytes per second; 0 = unlimited.
    pub max_bandwidth_bytes: u64,
    pub downtime_limit_ms: u64,
    #[serde(default)]
    pub stream: crate::StreamSettings,
    /// The destination host. An agent with TLS material needs it: QEMU
    /// then admits (or talks to) only that host's certificate.
    #[serde(default)]
    pub peer_host: Option<String>,
}

/// A side's view of its migration (`query-migrate`, normalised), and of its QEMU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentMigrationStatus {
    /// The VM's QEMU as the agent sees it: running, paused, crashed, unresponsive, ...
    pub vm_state: crate::VmState,
    pub progress: MigrationProgress,
    /// The guest pause QEMU measured, once completed.
    pub downtime_ms: Option<u64>,
    /// QEMU's error text, when failed.
    pub error: Option<String>,
}

impl AgentMigrationStatus {
    /// QEMU's migration status.
    pub fn status(&self) -> MigrationStatus {
        self.progress.qemu_status
    }
    pub fn is_completed(&self) -> bool {
        self.status() == MigrationStatus::Completed
    }
    /// In one of QEMU's post-copy states (active, paused, recovering).
    pub fn is_postcopy(&self) -> bool {
        self.status().is_postcopy()
    }
    pub fn is_failed(&self) -> bool {
        self.status().is_failed()
    }

    /// What recovery reads from this answer.
    pub fn facts(&self) -> SideFacts {
        use crate::VmState;
        match self.vm_state {
            VmState::Crashed | VmState::Stopped => SideFacts::Exited,
            VmState::Unresponsive => SideFacts::Unresponsive,
            state => SideFacts::qemu(self.status(), state == VmState::Running),
        }
    }
}
