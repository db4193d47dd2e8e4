//! Load, as agents measure it: what a VM's memory costs to move (the inputs of the
//! evacuation estimate, `ferry_server::estimate`), and the host and VM load every
//! heartbeat carries (CPU, memory, dirty rate), which the server keeps as a bounded
//! history for `ferry host show`, `ferry vm show` and the balancer.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A host's load over the last heartbeat interval, sent with every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadReport {
    pub at: DateTime<Utc>,
    /// Busy CPU time across the host's CPUs, in CPUs (1.5: one and a half CPUs busy), from
    /// `/proc/stat` between two heartbeats.
    pub cpu_used: f64,
    /// MemTotal − MemAvailable, MiB.
    pub memory_used_mib: u64,
    /// Each running VM's QEMU.
    #[serde(default)]
    pub vms: Vec<VmLoadReport>,
}

/// One VM's load in a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmLoadReport {
    pub name: String,
    /// QEMU's CPU time (all its threads) over the interval, in CPUs.
    pub cpu_used: f64,
    /// QEMU's resident memory, MiB.
    pub resident_mib: u64,
    /// The guest's dirty page rate, MiB/s: the mean of its last few measurements (QEMU
    /// `calc-dirty-rate`, one every 30 s, none during a migration) within 3 minutes.
    #[serde(default)]
    pub dirty_rate_mib_s: Option<f64>,
    #[serde(default)]
    pub dirty_measured_at: Option<DateTime<Utc>>,
}

impl LoadReport {
    /// Checks what an agent sent: finite, non-negative figures, plausible sizes, and VM
    /// names that are names. A report that fails is dropped, the heartbeat still counts.
    pub fn validate(&self, cpus: u32) -> Result<(), String> {
        let cpu_ok = |c: f64| c.is_finite() && c >= 0.0 && c <= f64::from(cpus.max(1)) * 1.5;
        if !cpu_ok(self.cpu_used) {
            return Err(format!("host CPU use {} is out of range", self.cpu_used));
        }
        if self.vms.len() > 10_000 {
            return Err(format!("{} VMs in one report", self.vms.len()));
        }
        for v in &self.vms {
            crate::validate_name("VM name", &v.name).map_err(|e| e.message)?;
            if !cpu_ok(v.cpu_used) {
                return Err(format!(
                    "VM {} CPU use {} is out of range",
                    v.name, v.cpu_used
                ));
            }
            if let Some(r) = v.dirty_rate_mib_s {
                if !(r.is_finite() && (0.0..1e7).contains(&r)) {
                    return Err(format!("VM {} dirty rate {r} is out of range", v.name));
                }
            }
        }
        Ok(())
    }
}

/// One point of a load history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoadSample {
    pub at: DateTime<Utc>,
    /// In CPUs.
    pub cpu_used: f64,
    /// Host: memory in use; VM: QEMU's resident memory. MiB.
    pub memory_mib: u64,
    /// VMs only: the dirty rate last measured, MiB/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_rate_mib_s: Option<f64>,
}

/// Averages and peaks over windows of a history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoadWindow {
    pub minutes: u32,
    pub samples: u32,
    pub cpu_avg: f64,
    pub cpu_max: f64,
    pub memory_avg_mib: u64,
    pub memory_max_mib: u64,
}

/// `GET /v1/hosts/{name}/load`, `GET /v1/vms/{name}/load`: the last hour (at most),
/// oldest first, with the latest sample and 1, 15 and 60 minute windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadHistory {
    /// `host` or `vm`.
    pub kind: String,
    pub name: String,
    /// Where the VM's samples came from last (VMs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub latest: Option<LoadSample>,
    pub windows: Vec<LoadWindow>,
    pub samples: Vec<LoadSample>,
}

/// `GET /v1/vms/{name}/memory` on the VM's agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmMemoryFacts {
    /// Guest RAM, MiB (the spec's).
    pub ram_mib: u64,
    /// QEMU's resident memory, MiB (`VmRSS`, rounded up). Pages the guest never touched
    /// are not resident and cross the wire as zero-page markers, so a migration sends
    /// about min(RAM, resident).
    pub resident_mib: u64,
    /// The guest's dirty page rate, MiB/s (QEMU's page sampling); None when it could not
    /// be measured (the agent logs why).
    pub dirty_rate_mib_s: Option<f64>,
    /// How long the dirty rate was measured over, ms (0 without a rate). Page sampling
    /// counts a page once however often it is written, so a longer window reads lower.
    pub sampled_ms: u64,
}

impl VmMemoryFacts {
    /// Bytes a migration sends at least once: min(guest RAM, QEMU's resident memory).
    pub fn bytes_to_send(&self) -> u64 {
        self.ram_mib.min(self.resident_mib).saturating_mul(1 << 20)
    }

    /// The dirty rate in bytes/s (0 when unknown).
    pub fn dirty_bytes_per_s(&self) -> u64 {
        match self.dirty_rate_mib_s {
            Some(r) if r.is_finite() && r > 0.0 => (r * (1u64 << 20) as f64) as u64,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_round_trip_and_convert() {
        let f = VmMemoryFacts {
            ram_mib: 1024,
            resident_mib: 300,
            dirty_rate_mib_s: Some(2.5),
            sampled_ms: 1000,
        };
        let back: VmMemoryFacts =
            serde_json::from_value(serde_json::to_value(&f).unwrap()).unwrap();
        assert_eq!(back, f);
        assert_eq!(f.bytes_to_send(), 300 << 20);
        assert_eq!(f.dirty_bytes_per_s(), 5 << 19);
        let unknown = VmMemoryFacts {
            dirty_rate_mib_s: None,
            ..f
        };
        assert_eq!(unknown.dirty_bytes_per_s(), 0);
    }
}
