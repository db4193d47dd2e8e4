//! Where the benchmarks' results go: each writes `<out>/<name>.json` with the machine it
//! ran on.

use crate::error::BenchError;

/// The machine a benchmark ran on, as the namespaced benchmarks record it.
pub(crate) fn machine_json(accel: &str) -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu": cpu,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "accel": accel,
    })
}

/// Writes `doc` as `<out>/<name>.json` (pretty, newline-terminated); returns the path.
pub(crate) fn write_result(
    out: &std::path::Path,
    name: &str,
    doc: &serde_json::Value,
) -> Result<std::path::PathBuf, BenchError> {
    std::fs::create_dir_all(out)
        .map_err(|e| BenchError::failed(format!("cannot create {}: {e}", out.display())))?;
    let file = out.join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(doc).map_err(|e| BenchError::failed(e.to_string()))?;
    std::fs::write(&file, text + "\n")
        .map_err(|e| BenchError::failed(format!("cannot write {}: {e}", file.display())))?;
    Ok(file)
}
