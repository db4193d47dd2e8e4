//! What moving a VM's memory costs, for the evacuation estimate: its RAM, how much of it
//! QEMU holds resident (`VmRSS` in `/proc/<pid>/status`), and how fast the guest dirties
//! pages (QEMU's `calc-dirty-rate` in page-sampling mode, polled with `query-dirty-rate`).
//!
//! The dirty rate is best effort: QEMU may refuse (a measurement already running, an
//! older QEMU), answer nonsense or take too long; then the facts carry no rate and the
//! reason is logged, and the request still succeeds. The resident size is required:
//! reading it fails only when QEMU is gone.

use std::time::{Duration, Instant};

use ferry_api::VmMemoryFacts;
use ferry_qmp::{DirtyRateInfo, DirtyRateMeasureMode, QmpClient};

use crate::error::AgentError;
use crate::host::Agent;

/// How long QEMU samples the guest's pages. One second is QEMU's shortest in the unit
/// every supported QEMU accepts (milliseconds need 8.2), and long enough for a steady
/// writer to show.
const CALC_TIME_S: u64 = 1;
/// How long to wait for the measurement after QEMU accepted it: the sampling time plus
/// QEMU's own hashing of the sampled pages, with room for a busy host.
const MEASURE_WAIT: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(100);

impl Agent {
    /// `GET /v1/vms/{name}/memory`.
    pub async fn memory_facts(&self, name: &str) -> Result<VmMemoryFacts, AgentError> {
        let vm = self.find(name).await?;
        if !vm.is_running_process() {
            return Err(AgentError::refused(format!(
                "VM '{name}' is not running on host {}",
                self.config.name
            )));
        }
        let ram_mib = vm.record().spec.memory_mib;
        let mut facts = facts(&vm.qmp, vm.pid(), ram_mib).await?;
        // One second of sampling is noisy: the rate given is the mean of this measurement
        // and the load sampler's recent ones (or theirs alone when QEMU refused this one,
        // e.g. because the sampler's own measurement was running).
        if let Some(rate) = self.load.dirty_rate(name, facts.dirty_rate_mib_s) {
            facts.dirty_rate_mib_s = Some(rate);
            facts.sampled_ms = facts.sampled_ms.max(CALC_TIME_S * 1000);
        }
        tracing::debug!(vm = %name, ?facts, "memory facts");
        Ok(facts)
    }
}

/// The facts of the QEMU with `pid`, reached on `qmp`, whose guest has `ram_mib`.
pub async fn facts(qmp: &QmpClient, pid: u32, ram_mib: u64) -> Result<VmMemoryFacts, AgentError> {
    let resident_mib = resident_mib(pid).map_err(AgentError::process)?;
    let (dirty_rate_mib_s, sampled_ms) = match dirty_rate(qmp).await {
        Ok((rate, ms)) => (Some(rate as f64), ms),
        Err(why) => {
            tracing::warn!(pid, "no dirty rate for the estimate: {why}");
            (None, 0)
        }
    };
    Ok(VmMemoryFacts {
        ram_mib,
        resident_mib,
        dirty_rate_mib_s,
        sampled_ms,
    })
}

/// QEMU's resident memory, MiB, rounded up.
pub fn resident_mib(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let kib = vm_rss_kib(&text).map_err(|e| format!("{path}: {e}"))?;
    Ok(kib.div_ceil(1024))
}

/// `VmRSS` from the text of `/proc/<pid>/status`, KiB. Strict: exactly one such line, a
/// decimal number and the unit `kB` (which the kernel means as KiB), nothing else.
pub fn vm_rss_kib(status: &str) -> Result<u64, String> {
    let mut found = None;
    for line in status.lines() {
        let Some(value) = line.strip_prefix("VmRSS:") else {
            continue;
        };
        if found.is_some() {
            return Err("more than one VmRSS line".into());
        }
        let mut parts = value.split_whitespace();
        let (number, unit) = match (parts.next(), parts.next(), parts.next()) {
            (Some(n), Some(u), None) => (n, u),
            _ => return Err(format!("VmRSS line '{line}' is not '<number> kB'")),
        };
        if unit != "kB" || number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("VmRSS line '{line}' is not '<number> kB'"));
        }
        let kib = number
            .parse::<u64>()
            .map_err(|e| format!("VmRSS '{number}': {e}"))?;
        found = Some(kib);
    }
    // A process that exited but was not reaped yet (a zombie) has no VmRSS.
    found.ok_or_else(|| "no VmRSS line (the process is exiting?)".into())
}

/// Measures the guest's dirty rate: MiB/s and the window it was measured over, ms.
/// The guest's dirty rate now, MiB/s (one second of QEMU's page sampling).
pub async fn dirty_rate_mib_s(qmp: &QmpClient) -> Result<f64, String> {
    dirty_rate(qmp).await.map(|(rate, _)| rate as f64)
}

async fn dirty_rate(qmp: &QmpClient) -> Result<(u64, u64), String> {
    qmp.calc_dirty_rate(CALC_TIME_S, DirtyRateMeasureMode::PageSampling)
        .await
        .map_err(|e| format!("calc-dirty-rate: {e}"))?;
    // QEMU marks the measurement as running before it answers, so no earlier result is
    // read as this one.
    let deadline = Instant::now() + Duration::from_secs(CALC_TIME_S) + MEASURE_WAIT;
    loop {
        tokio::time::sleep(POLL).await;
        let info = qmp
            .query_dirty_rate()
            .await
            .map_err(|e| format!("query-dirty-rate: {e}"))?;
        if let Some(found) = check_dirty_rate(&info)? {
            return Ok(found);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "QEMU still measuring after {} s",
                (CALC_TIME_S + MEASURE_WAIT.as_secs())
            ));
        }
    }
}

/// The rate and window of a `query-dirty-rate` reply, None while QEMU measures. Beyond
/// what [`DirtyRateInfo::rate_mib_s`] checks, the measurement must be the one asked for:
/// page sampling over [`CALC_TIME_S`].
pub fn check_dirty_rate(info: &DirtyRateInfo) -> Result<Option<(u64, u64)>, String> {
    let Some(rate) = info.rate_mib_s()? else {
        return Ok(None);
    };
    if let Some(mode) = info.mode.as_ref() {
        if *mode != DirtyRateMeasureMode::PageSampling {
            return Err(format!("QEMU measured in mode {mode}, not page-sampling"));
        }
    }
    match info.calc_time_ms() {
        Some(ms) if ms == CALC_TIME_S * 1000 => Ok(Some((rate, ms))),
        other => Err(format!(
            "QEMU measured over {other:?} ms, not the {} ms asked for",
            CALC_TIME_S * 1000
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const STATUS: &str = "Name:\tqemu-system-x86\nUmask:\t0022\nState:\tS (sleeping)\n\
        VmPeak:\t 2662436 kB\nVmRSS:\t  204812 kB\nRssAnon:\t  180000 kB\nThreads:\t7\n";

    #[test]
    fn the_resident_size_is_read_strictly() {
        assert_eq!(vm_rss_kib(STATUS), Ok(204_812));
        assert_eq!(vm_rss_kib("VmRSS:\t0 kB\n"), Ok(0));
        for bad in [
            "Name:\tzombie\nState:\tZ (zombie)\n",
            "VmRSS:\t12 kB\nVmRSS:\t13 kB\n",
            "VmRSS:\t12 MB\n",
            "VmRSS:\t12\n",
            "VmRSS:\t-12 kB\n",
            "VmRSS:\t+12 kB\n",
            "VmRSS:\t1.5 kB\n",
            "VmRSS:\t12 kB extra\n",
            "VmRSS:\t99999999999999999999999 kB\n",
            "VmRSS:\t١٢ kB\n",
        ] {
            assert!(vm_rss_kib(bad).is_err(), "{bad:?}");
        }
        // Other keys that merely contain the name do not count.
        assert!(vm_rss_kib("XVmRSS:\t5 kB\n").is_err());
    }

    #[test]
    fn this_process_has_a_resident_size() {
        let mib = resident_mib(std::process::id()).unwrap();
        assert!(mib > 0);
        assert!(resident_mib(u32::MAX).is_err());
    }

    #[test]
    fn only_the_measurement_asked_for_is_taken() {
        let info = |v: serde_json::Value| serde_json::from_value::<DirtyRateInfo>(v).unwrap();
        let good = json!({"status": "measured", "dirty-rate": 42, "mode": "page-sampling",
            "calc-time": 1, "calc-time-unit": "second", "sample-pages": 512, "start-time": 7});
        assert_eq!(check_dirty_rate(&info(good)), Ok(Some((42, 1000))));
        // QEMU before 8.2 gives no unit: seconds.
        let old = json!({"status": "measured", "dirty-rate": 3, "calc-time": 1});
        assert_eq!(check_dirty_rate(&info(old)), Ok(Some((3, 1000))));
        let measuring = json!({"status": "measuring", "calc-time": 1});
        assert_eq!(check_dirty_rate(&info(measuring)), Ok(None));
        for bad in [
            json!({"status": "measured", "dirty-rate": 42, "mode": "dirty-ring", "calc-time": 1}),
            json!({"status": "measured", "dirty-rate": 42, "calc-time": 10}),
            json!({"status": "measured", "dirty-rate": 42, "calc-time": 1, "calc-time-unit": "millisecond"}),
            json!({"status": "measured", "dirty-rate": 42}),
            json!({"status": "measured", "dirty-rate": -1, "calc-time": 1}),
            json!({"status": "unstarted", "calc-time": 1}),
        ] {
            assert!(check_dirty_rate(&info(bad.clone())).is_err(), "{bad}");
        }
    }
}
