//! Quick and cold migrations on the wire: what the orchestrator remembers of them in the
//! migration's record, and the agent-level steps it asks the hosts for.
//!
//! Nothing here names a host path: the state file of a quick migration is named by the
//! agent from a shared pool's name and the migration's id, and a cold copy names pools and
//! images, which the agent resolves inside its configured pools.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use ferry_migration::cold::{ColdStep, DiskSum};
pub use ferry_migration::quick::{QuickSaved, QuickStep};
pub use ferry_migration::MigrationMode;

use crate::{ApiError, VmSpec};

/// A quick migration's own state in [`crate::RunState`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QuickRun {
    pub step: QuickStep,
    /// The shared pool the state file lives in (chosen at admission).
    pub pool: String,
    /// What was asked so far (each saved before its call).
    pub saved: QuickSaved,
    /// The state file was deleted (or found gone).
    pub file_deleted: bool,
    /// When the source was told to pause (downtime runs from here).
    pub paused_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Measured so far, ms.
    pub save_ms: Option<u64>,
    pub restore_ms: Option<u64>,
}

/// A cold migration's own state in [`crate::RunState`]; the disks are `RunState.copies`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ColdRun {
    pub step: ColdStep,
    /// Per copy (in `RunState.copies` order): copied, and verified against the source.
    pub copied: Vec<bool>,
    pub verified: Vec<bool>,
    /// The destination's agent was told the copies are the VM's now (they are no longer
    /// deleted by a discard).
    pub destination_finished: bool,
    /// The source's agent dropped what it kept for this migration.
    pub source_finished: bool,
}

// ---- quick: agent-level steps ----------------------------------------------------------

/// The state file of one quick migration: a shared pool on the host, and the migration. The
/// agent names the file (`<pool dir>/ferry-quick-<migration>.vmstate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuickStateFile {
    pub pool: String,
    pub migration: Uuid,
}

/// Destination: start a QEMU for `spec` waiting (`-incoming defer`, vCPUs held) for the
/// state in `file` (`POST /v1/vms/{name}/quick/incoming`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuickIncomingRequest {
    pub spec: VmSpec,
    pub file: QuickStateFile,
    /// Parallel channels that write and read the file (QEMU multifd with `mapped-ram`);
    /// 1: a single stream.
    #[serde(default = "one")]
    pub streams: u8,
}

fn one() -> u8 {
    1
}

/// Source: pause the guest and save its state to `file` (`POST
/// /v1/vms/{name}/quick/save`); destination: load it (`.../quick/restore`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuickTransferRequest {
    pub file: QuickStateFile,
    #[serde(default = "one")]
    pub streams: u8,
}

/// The most channels a quick save or restore uses.
pub const MAX_QUICK_STREAMS: u8 = 8;

impl QuickTransferRequest {
    pub fn validate(&self) -> Result<(), ApiError> {
        crate::validate_name("pool name", &self.file.pool)?;
        if !(1..=MAX_QUICK_STREAMS).contains(&self.streams) {
            return Err(ApiError::bad_request(format!(
                "streams is {}; it must be between 1 and {MAX_QUICK_STREAMS}",
                self.streams
            )));
        }
        Ok(())
    }
}

/// What an agent did with a state file (`POST /v1/quick/discard`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuickDiscardResponse {
    /// False: there was no such file.
    pub deleted: bool,
}

// ---- cold: agent-level steps -----------------------------------------------------------

/// Destination: create an empty target for one disk and export it for the source to write
/// (`POST /v1/cold/{migration}/receive`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColdReceiveRequest {
    pub pool: String,
    pub image: String,
    /// The source image's virtual size: the target gets exactly this size.
    pub virtual_size: u64,
    /// The source host (needed with TLS: only its certificate is admitted).
    #[serde(default)]
    pub peer_host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColdReceiveResponse {
    /// `ADDR:PORT` on the destination's migration network, as the source must reach it.
    pub export: String,
    /// Random per disk and migration.
    pub export_name: String,
}

/// Source: copy one local-pool disk into the destination's export
/// (`POST /v1/cold/{migration}/send`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColdSendRequest {
    pub pool: String,
    pub image: String,
    pub export: String,
    pub export_name: String,
    /// Bytes per second; 0 = unlimited.
    #[serde(default)]
    pub max_bandwidth_bytes: u64,
    /// The destination host (needed with TLS).
    #[serde(default)]
    pub peer_host: Option<String>,
}

/// Either side: checksum one image (`POST /v1/cold/{migration}/checksum`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColdDiskRequest {
    pub pool: String,
    pub image: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColdJobKind {
    /// Copying a disk to the destination (source).
    Send,
    /// Serving a target disk to the source (destination).
    Receive,
    /// Checksumming an image (either side).
    Checksum,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColdJobState {
    Running,
    Done,
    Failed,
}

/// One of an agent's jobs for a cold migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColdJob {
    pub pool: String,
    pub image: String,
    pub kind: ColdJobKind,
    pub state: ColdJobState,
    /// Percent done, as the tool reports it (copies).
    #[serde(default)]
    pub progress_pct: f64,
    #[serde(default)]
    pub error: Option<String>,
    /// A finished checksum.
    #[serde(default)]
    pub sum: Option<DiskSum>,
}

/// An agent's view of one cold migration (`GET /v1/cold/{migration}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ColdStatus {
    pub jobs: Vec<ColdJob>,
    /// Destination: the targets this migration created here (`pool/image`).
    #[serde(default)]
    pub created: Vec<String>,
}

impl ColdStatus {
    pub fn job(&self, kind: ColdJobKind, pool: &str, image: &str) -> Option<&ColdJob> {
        self.jobs
            .iter()
            .rev()
            .find(|j| j.kind == kind && j.pool == pool && j.image == image)
    }
}

/// `POST /v1/cold/{migration}/discard` and `.../finish`: what the agent dropped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ColdCleanup {
    /// Targets deleted (discard only), `pool/image`.
    pub deleted: Vec<String>,
    /// Processes (exports, copies, checksums) stopped.
    pub stopped: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_options_and_run_states_still_parse() {
        // A record written before quick and cold existed.
        let o: crate::MigrationOptions = serde_json::from_str(r#"{"force": true}"#).unwrap();
        assert_eq!(o.mode, MigrationMode::Live);
        let r: crate::RunState = serde_json::from_str(r#"{"outgoing_started": true}"#).unwrap();
        assert!(r.quick.is_none() && r.cold.is_none());
        let q: crate::MigrateRequest =
            serde_json::from_str(r#"{"vm": "web1", "options": {"mode": "quick"}}"#).unwrap();
        assert_eq!(q.options.mode, MigrationMode::Quick);
        assert!(serde_json::from_str::<crate::MigrateRequest>(
            r#"{"vm": "web1", "options": {"mode": "warm"}}"#
        )
        .is_err());
    }

    #[test]
    fn transfer_requests_name_a_pool_not_a_path() {
        let ok = QuickTransferRequest {
            file: QuickStateFile {
                pool: "shared".into(),
                migration: Uuid::nil(),
            },
            streams: 2,
        };
        assert!(ok.validate().is_ok());
        for pool in ["../etc", "/mnt/san", "a/b"] {
            let mut bad = ok.clone();
            bad.file.pool = pool.into();
            assert!(bad.validate().is_err(), "{pool}");
        }
        let mut bad = ok;
        bad.streams = 0;
        assert!(bad.validate().is_err());
        // The file name is never a field.
        assert!(serde_json::from_str::<QuickTransferRequest>(
            r#"{"file": {"pool": "shared", "migration": "00000000-0000-0000-0000-000000000000", "path": "/etc/shadow"}}"#
        )
        .is_err());
    }
}
