//! What this host offers: CPUs, memory, QEMU, accelerator.

use ferry_api::HostInventory;

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
}
