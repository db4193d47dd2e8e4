//! Migrations: requests, records, agent-level steps, and the event log.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use ferry_migration::{
    disk_totals, disks_in_sync, DiskCopyProgress, MigrationProgress, MigrationReport, Phase,
    PhaseEvent,
};

use crate::{ApiError, VmSpec};

/// Tunables of one migration. Unset fields take the server's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationOptions {
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
}

pub const DEFAULT_DOWNTIME_LIMIT_MS: u64 = 300;
pub const DEFAULT_PROGRESS_TIMEOUT_S: u64 = 60;

impl MigrationOptions {
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
    pub to: String,
    #[serde(default)]
    pub options: MigrationOptions,
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
}

/// Source, post-copy paused: reconnect to the destination's recovery listener
/// (`POST /v1/vms/{name}/migration/resume`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeRequest {
    /// `tcp:ADDR:PORT`, as the destination's recover answer advertised it.
    pub uri: String,
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
}

/// A side's view of its migration (`query-migrate`, normalised).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentMigrationStatus {
    pub progress: MigrationProgress,
    /// The guest pause QEMU measured, once completed.
    pub downtime_ms: Option<u64>,
    /// QEMU's error text, when failed.
    pub error: Option<String>,
}

impl AgentMigrationStatus {
    pub fn is_completed(&self) -> bool {
        self.progress.qemu_status == "completed"
    }
    /// In one of QEMU's post-copy states (active, paused, recovering).
    pub fn is_postcopy(&self) -> bool {
        self.progress.qemu_status.starts_with("postcopy")
    }
    pub fn is_failed(&self) -> bool {
        matches!(self.progress.qemu_status.as_str(), "failed" | "cancelled")
    }
}

// ---- event log --------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Error,
    Info,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Info => "info",
        }
    }
    pub fn parse(s: &str) -> Outcome {
        match s {
            "ok" => Outcome::Ok,
            "error" => Outcome::Error,
            _ => Outcome::Info,
        }
    }
}

/// One line of the append-only event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// Who asked: the client's `x-ferry-actor`, or `server` / `agent:NAME` for the system.
    pub actor: String,
    /// What: `vm.create`, `migration.phase`, `migration.pass`, `host.register`, ...
    pub kind: String,
    pub vm: Option<String>,
    pub host: Option<String>,
    pub migration: Option<Uuid>,
    pub outcome: Outcome,
    pub message: String,
    /// The numbers behind it.
    #[serde(default)]
    pub data: serde_json::Value,
}

/// Filters for `GET /v1/events`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventQuery {
    pub vm: Option<String>,
    pub migration: Option<Uuid>,
    pub kind: Option<String>,
    /// Only events with an id greater than this (for following the log).
    pub after: Option<i64>,
    pub limit: Option<u32>,
}
