//! Block jobs, NBD exports and block nodes: the commands storage migration is built from.
//!
//! The shape of a storage migration (what libvirt calls "NBD storage migration"):
//!
//! ```text
//!  destination (incoming, -S)                  source (running)
//!  ──────────────────────────                  ────────────────
//!  nbd-server-start ADDR:PORT
//!  block-export-add disk0 (writable)  ◄────── blockdev-add nbd node → ADDR:PORT/disk0
//!                                             blockdev-mirror disk0 → nbd node
//!                                               (sync full, copy-mode write-blocking)
//!                                             … job becomes `ready`: in sync, and every
//!                                               guest write now goes to both sides …
//!                                             migrate (pause-before-switchover)
//!                                             pre-switchover: vCPUs stopped
//!                                             block-job-cancel (ready → completes, no pivot)
//!                                             job-dismiss, blockdev-del nbd node
//!                                             migrate-continue
//!  migration completed (paused: -S)
//!  nbd-server-stop, cont
//! ```
//!
//! The destination must drop its export before its vCPUs start: the export holds write
//! permission on the node, which the guest's device does not share once running.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::client::QmpClient;
use crate::error::QmpError;

/// One entry of `query-block-jobs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockJobInfo {
    /// The job id (`device` for historical reasons).
    pub device: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Work to do, bytes; a mirror's grows as the guest dirties blocks already copied.
    pub len: u64,
    /// Work done, bytes. `len - offset` is what is still outstanding.
    pub offset: u64,
    /// A mirror is `ready` once source and target are in sync.
    pub ready: bool,
    /// created, running, paused, ready, standby, waiting, pending, aborting, concluded, null.
    pub status: String,
    #[serde(default)]
    pub busy: bool,
    #[serde(default)]
    pub paused: bool,
    /// Rate limit, bytes/s (0: none).
    #[serde(default)]
    pub speed: u64,
    #[serde(default)]
    pub io_status: Option<String>,
    /// Set once the job concluded with an error.
    #[serde(default)]
    pub error: Option<String>,
    /// Mirror: source and target hold the same data and new writes go to both before they
    /// complete (write-blocking mode, in sync).
    #[serde(default)]
    pub actively_synced: bool,
}

impl BlockJobInfo {
    pub fn outstanding(&self) -> u64 {
        self.len.saturating_sub(self.offset)
    }
    pub fn is_concluded(&self) -> bool {
        self.status == "concluded" || self.status == "null"
    }
}

/// `blockdev-mirror` arguments Ferry uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MirrorArgs {
    pub job_id: String,
    /// Source node (the guest's format node).
    pub device: String,
    /// Target node (an NBD client node added with [`QmpClient::blockdev_add_nbd`]).
    pub target: String,
    /// `full`: the whole disk.
    pub sync: String,
    /// `write-blocking`: guest writes go to both sides before they complete, so the copy
    /// converges whatever the guest's write rate; `background`: copy only.
    pub copy_mode: String,
    /// Bytes/s; absent: unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<u64>,
    /// Keep the concluded job until `job-dismiss`, so its outcome can be read.
    pub auto_dismiss: bool,
}

impl MirrorArgs {
    /// The same mirror copying in the background only (guest writes complete at local
    /// speed and are copied later); switch it with [`QmpClient::block_job_block_writes`].
    pub fn background(mut self) -> MirrorArgs {
        self.copy_mode = "background".into();
        self
    }

    /// A full, write-blocking mirror of `device` to `target`.
    pub fn full(job_id: &str, device: &str, target: &str, speed: Option<u64>) -> MirrorArgs {
        MirrorArgs {
            job_id: job_id.into(),
            device: device.into(),
            target: target.into(),
            sync: "full".into(),
            copy_mode: "write-blocking".into(),
            speed,
            auto_dismiss: false,
        }
    }
}

impl QmpClient {
    /// `nbd-server-start` on `host:port`, plain TCP (see
    /// [`QmpClient::nbd_server_start_with`] for TLS).
    pub async fn nbd_server_start(&self, host: &str, port: u16) -> Result<(), QmpError> {
        self.nbd_server_start_with(host, port, None).await
    }

    /// `nbd-server-stop`: closes the server and removes every NBD export.
    pub async fn nbd_server_stop(&self) -> Result<(), QmpError> {
        self.unit_no_args("nbd-server-stop").await
    }

    /// `block-export-add` of type nbd: export `node` as `name`. Exporting an inactive node
    /// (an incoming QEMU's) activates it, which is what a mirror target needs.
    pub async fn block_export_add_nbd(
        &self,
        id: &str,
        node: &str,
        name: &str,
        writable: bool,
    ) -> Result<(), QmpError> {
        self.unit(
            "block-export-add",
            json!({"type": "nbd", "id": id, "node-name": node, "name": name, "writable": writable}),
        )
        .await
    }

    /// `blockdev-add` of an NBD client node connected to `host:port`, export `export`,
    /// plain TCP (see [`QmpClient::blockdev_add_nbd_with`] for TLS).
    pub async fn blockdev_add_nbd(
        &self,
        node: &str,
        host: &str,
        port: u16,
        export: &str,
    ) -> Result<(), QmpError> {
        self.blockdev_add_nbd_with(node, host, port, export, None)
            .await
    }

    /// `blockdev-del`.
    pub async fn blockdev_del(&self, node: &str) -> Result<(), QmpError> {
        self.unit("blockdev-del", json!({ "node-name": node }))
            .await
    }

    /// `blockdev-mirror`.
    pub async fn blockdev_mirror(&self, args: &MirrorArgs) -> Result<(), QmpError> {
        let value = serde_json::to_value(args).map_err(|source| QmpError::Encode {
            command: "blockdev-mirror".into(),
            source,
        })?;
        self.unit("blockdev-mirror", value).await
    }

    /// `query-block-jobs`.
    pub async fn query_block_jobs(&self) -> Result<Vec<BlockJobInfo>, QmpError> {
        self.execute::<serde_json::Value, _>("query-block-jobs", None)
            .await
    }

    /// `block-job-cancel`. On a `ready` mirror without `force` the job completes without
    /// pivoting: the target holds everything written up to now. With `force` it aborts.
    pub async fn block_job_cancel(&self, job: &str, force: bool) -> Result<(), QmpError> {
        self.unit("block-job-cancel", json!({ "device": job, "force": force }))
            .await
    }

    /// `block-job-set-speed` (bytes/s, 0 = unlimited).
    pub async fn block_job_set_speed(&self, job: &str, speed: u64) -> Result<(), QmpError> {
        self.unit(
            "block-job-set-speed",
            json!({ "device": job, "speed": speed }),
        )
        .await
    }

    /// `block-job-change`: switch a mirror to `write-blocking` (guest writes reach the
    /// target before they complete, so the mirror converges whatever the write rate).
    pub async fn block_job_block_writes(&self, job: &str) -> Result<(), QmpError> {
        self.unit(
            "block-job-change",
            json!({ "id": job, "type": "mirror", "copy-mode": "write-blocking" }),
        )
        .await
    }

    /// `job-dismiss`: forget a concluded job.
    pub async fn job_dismiss(&self, job: &str) -> Result<(), QmpError> {
        self.unit("job-dismiss", json!({ "id": job })).await
    }

    async fn unit(&self, command: &str, args: serde_json::Value) -> Result<(), QmpError> {
        self.execute_raw(command, Some(args)).await.map(|_| ())
    }

    async fn unit_no_args(&self, command: &str) -> Result<(), QmpError> {
        self.execute_raw(command, None).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_args_use_qemu_spelling() {
        let v = serde_json::to_value(MirrorArgs::full("m0", "disk0", "nbd0", None)).unwrap();
        assert_eq!(
            v,
            json!({"job-id": "m0", "device": "disk0", "target": "nbd0", "sync": "full",
                   "copy-mode": "write-blocking", "auto-dismiss": false})
        );
        let v = serde_json::to_value(MirrorArgs::full("m0", "disk0", "nbd0", Some(5))).unwrap();
        assert_eq!(v["speed"], 5);
    }

    #[test]
    fn block_job_info_parses_query_block_jobs() {
        let j: BlockJobInfo = serde_json::from_value(json!({
            "auto-finalize": true, "io-status": "ok", "device": "mirror-disk0",
            "auto-dismiss": false, "busy": false, "len": 100, "offset": 40,
            "status": "running", "paused": false, "speed": 0, "ready": false,
            "type": "mirror", "actively-synced": false
        }))
        .unwrap();
        assert_eq!(j.outstanding(), 60);
        assert_eq!(j.kind, "mirror");
        assert!(!j.is_concluded());
    }
}
