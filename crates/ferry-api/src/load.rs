//! What a VM's memory costs to move, as its agent measures it: the inputs of the
//! evacuation estimate (`ferry_server::estimate`).

use serde::{Deserialize, Serialize};

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
