//! What the agent keeps on disk per VM, so a restarted agent adopts running QEMUs.
//!
//! `<state>/vms/<name>/vm.json` holds a [`PersistedVm`]. The struct is versioned and the
//! version is checked on load: an agent never guesses at a layout it does not know.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use ferry_api::{Accel, VmSpec};
use serde::{Deserialize, Serialize};

pub const PERSIST_VERSION: u32 = 1;

/// Which part the QEMU plays. Decides what the agent does when it finds it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// An ordinary running (or paused) VM.
    Normal,
    /// A destination QEMU waiting for or receiving a stream.
    Incoming,
    /// A source QEMU sending itself away.
    Outgoing,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersistedVm {
    pub version: u32,
    pub spec: VmSpec,
    pub accel: Accel,
    pub role: Role,
    pub started_at: DateTime<Utc>,
    /// Destination of a storage copy: the disks (indices into `spec.disks`) this agent
    /// created empty for the incoming VM. Removed again if the migration rolls back
    /// (never an image that existed before).
    #[serde(default)]
    pub created_disks: Vec<usize>,
    /// Destination of a storage copy: target disks are exported over NBD and the vCPUs
    /// are held after the stream until the exports are gone.
    #[serde(default)]
    pub exports_disks: bool,
    /// Source of a storage copy: the disks being mirrored to the destination.
    #[serde(default)]
    pub copying_disks: Vec<usize>,
    /// QEMU was started with a second QMP socket for the operator's tools (`--aux-qmp`).
    #[serde(default)]
    pub aux_qmp: bool,
    /// The taps this agent created for the VM's NICs, in NIC order. Cleanup deletes these
    /// and only these (a name recomputed from a hash could be another VM's). Empty in a
    /// record written before taps were recorded.
    #[serde(default)]
    pub taps: Vec<String>,
    /// The files QEMU was started with (its monitors, pidfile, console). A restarted agent
    /// adopts QEMU through these, not through paths it would compute today. None in a
    /// record written before they were recorded.
    #[serde(default)]
    pub files: Option<QemuFiles>,
    /// The host at the other end of this QEMU's current (or last) migration when it runs
    /// over QEMU's TLS: a post-copy recovery or resume must name the same peer. None: no
    /// TLS (an agent without TLS material, or a record written before TLS existed).
    #[serde(default)]
    pub tls_peer: Option<String>,
    /// Source: where the current (or last) outgoing stream goes, when the URI names an
    /// address (see `stream_socket`).
    #[serde(default)]
    pub stream_peer: Option<std::net::SocketAddr>,
}

/// Where a QEMU's monitors, pidfile and console are, as it was started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuFiles {
    pub qmp_socket: PathBuf,
    pub oob_qmp_socket: PathBuf,
    /// The operator's second monitor (`--aux-qmp`), if QEMU was started with one.
    #[serde(default)]
    pub aux_qmp_socket: Option<PathBuf>,
    pub console_log: PathBuf,
    pub pidfile: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} has layout version {found}; this agent reads version {PERSIST_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

impl PersistedVm {
    pub fn new(spec: VmSpec, accel: Accel, role: Role) -> PersistedVm {
        PersistedVm {
            version: PERSIST_VERSION,
            spec,
            accel,
            role,
            started_at: Utc::now(),
            created_disks: Vec::new(),
            exports_disks: false,
            copying_disks: Vec::new(),
            aux_qmp: false,
            taps: Vec::new(),
            files: None,
            tls_peer: None,
            stream_peer: None,
        }
    }

    pub fn load(path: &Path) -> Result<PersistedVm, PersistError> {
        let read_err = |reason: String| PersistError::Read {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| read_err(e.to_string()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| read_err(e.to_string()))?;
        let found = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        if found != PERSIST_VERSION {
            return Err(PersistError::Version {
                path: path.to_path_buf(),
                found,
            });
        }
        let vm: PersistedVm = serde_json::from_value(value).map_err(|e| read_err(e.to_string()))?;
        vm.spec
            .validate()
            .map_err(|e| read_err(format!("invalid spec: {}", e.message)))?;
        Ok(vm)
    }

    /// Writes atomically (temp file + rename): a crash leaves the old or the new record.
    pub fn save(&self, path: &Path) -> Result<(), PersistError> {
        let write_err = |reason: String| PersistError::Write {
            path: path.to_path_buf(),
            reason,
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| write_err(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(|e| write_err(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| write_err(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::Boot;

    fn record() -> PersistedVm {
        PersistedVm::new(
            VmSpec {
                ha: None,
                name: "web1".into(),
                vcpus: 1,
                memory_mib: 256,
                boot: Boot::Image {
                    image: "test-guest".into(),
                    cmdline: String::new(),
                },
                accel: Accel::Auto,
                machine: "pc-q35-10.0".into(),
                cpu_model: "qemu64".into(),
                nics: vec![],
                disks: vec![],
            },
            Accel::Tcg,
            Role::Normal,
        )
    }

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.json");
        let r = record();
        r.save(&path).unwrap();
        assert_eq!(PersistedVm::load(&path).unwrap(), r);
    }

    #[test]
    fn records_without_later_fields_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.json");
        let old = record();
        let mut r = old.clone();
        r.taps = vec!["fy0123abcdn0".into()];
        r.save(&path).unwrap();
        assert_eq!(PersistedVm::load(&path).unwrap().taps, r.taps);
        let mut v = serde_json::to_value(&old).unwrap();
        let fields = v.as_object_mut().unwrap();
        for later in [
            "taps",
            "aux_qmp",
            "copying_disks",
            "exports_disks",
            "created_disks",
        ] {
            fields.remove(later);
        }
        std::fs::write(&path, v.to_string()).unwrap();
        assert_eq!(PersistedVm::load(&path).unwrap(), old);
    }

    #[test]
    fn refuses_unknown_versions_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.json");
        let mut v = serde_json::to_value(record()).unwrap();
        v["version"] = 99.into();
        std::fs::write(&path, v.to_string()).unwrap();
        let err = PersistedVm::load(&path).unwrap_err().to_string();
        assert!(err.contains("version 99"), "{err}");
        std::fs::write(&path, "{not json").unwrap();
        assert!(PersistedVm::load(&path).is_err());
    }
}
