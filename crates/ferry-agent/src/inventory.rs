//! What this host offers: CPUs, memory, QEMU, accelerator.

use ferry_api::{CpuModelAvailability, HostInventory};

/// (total, available) memory in MiB from /proc/meminfo.
pub fn memory_mib() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    parse_meminfo(&text)
}

pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kib| kib / 1024)
            .unwrap_or(0)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

pub fn cpu_model_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default()
}

/// The CPU vendor (`GenuineIntel`, `AuthenticAMD`): a guest cannot move between vendors
/// with a host-derived CPU model, so the server compares it.
pub fn cpu_vendor() -> String {
    parse_cpu_vendor(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
}

/// `vendor_id` of the first processor in /proc/cpuinfo text; empty if there is none.
pub fn parse_cpu_vendor(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(key, _)| key.trim() == "vendor_id")
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default()
}

/// The models QEMU offers, restricted to the operator's allow-list if there is one.
/// Allow-listed names this QEMU does not know are returned separately (most likely a typo
/// in the flag, worth a warning; a host cannot offer what its QEMU lacks).
pub fn allowed_cpu_models(
    offered: Vec<CpuModelAvailability>,
    allow: Option<&[String]>,
) -> (Vec<CpuModelAvailability>, Vec<String>) {
    let Some(allow) = allow else {
        return (offered, Vec::new());
    };
    let unknown = allow
        .iter()
        .filter(|a| !offered.iter().any(|m| &m.name == *a))
        .cloned()
        .collect();
    let kept = offered
        .into_iter()
        .filter(|m| allow.contains(&m.name))
        .collect();
    (kept, unknown)
}

pub fn cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// Fills the parts of an inventory that come from /proc.
pub fn base_inventory() -> HostInventory {
    let (total, available) = memory_mib();
    HostInventory {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        cpus: cpus(),
        cpu_model_name: cpu_model_name(),
        cpu_vendor: cpu_vendor(),
        memory_total_mib: total,
        memory_available_mib: available,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_meminfo() {
        let text = "MemTotal:       24589056 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(parse_meminfo(text), (24012, 19531));
        assert_eq!(parse_meminfo(""), (0, 0));
    }

    #[test]
    fn reads_the_cpu_vendor() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n\n\
                    processor\t: 1\nvendor_id\t: AuthenticAMD\n";
        assert_eq!(parse_cpu_vendor(text), "AuthenticAMD");
        assert_eq!(
            parse_cpu_vendor("vendor_id       : GenuineIntel\n"),
            "GenuineIntel"
        );
        // Not confused by a key that merely starts alike.
        assert_eq!(parse_cpu_vendor("vendor_id_x : Nope\n"), "");
        assert_eq!(parse_cpu_vendor(""), "");
    }

    #[test]
    fn the_allow_list_restricts_and_names_unknown_models() {
        let model = |n: &str| CpuModelAvailability {
            name: n.into(),
            unavailable_features: Vec::new(),
        };
        let offered = vec![model("EPYC"), model("Skylake-Server"), model("qemu64")];
        let (all, unknown) = allowed_cpu_models(offered.clone(), None);
        assert_eq!((all, unknown.len()), (offered.clone(), 0));
        let allow = vec!["qemu64".to_string(), "Nehalem-typo".to_string()];
        let (kept, unknown) = allowed_cpu_models(offered, Some(&allow));
        assert_eq!(kept, vec![model("qemu64")]);
        assert_eq!(unknown, vec!["Nehalem-typo".to_string()]);
    }
}
