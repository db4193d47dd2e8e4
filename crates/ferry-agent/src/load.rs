//! The load each heartbeat carries: the host's busy CPUs and used memory (from
//! `/proc/stat` and `/proc/meminfo`), and per running VM its QEMU's CPU time
//! (`/proc/<pid>/stat`), resident memory and the guest's dirty rate.
//!
//! CPU use is a rate, so a report compares two readings: the first heartbeat carries no
//! load. The dirty rate costs QEMU a second of page sampling, so it is measured by a
//! background task every [`DIRTY_EVERY`] per VM, never while the VM migrates (the
//! migration's own figures are better then, and the sampling would compete with it), and
//! the heartbeat carries the last value with its time.
//!
//! The parsers are strict and pure (unit-tested on real text); reading the files is at the
//! edge.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ferry_api::{LoadReport, VmLoadReport};

use crate::host::Agent;
use crate::persist::Role;

/// How often each VM's dirty rate is measured.
pub const DIRTY_EVERY: Duration = Duration::from_secs(30);
/// How often the sampler looks for VMs due a measurement.
pub const SAMPLER_TICK: Duration = Duration::from_secs(5);

/// Jiffies from the aggregate `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
    /// `cpuN` lines: the host's CPUs.
    pub cpus: u32,
}

/// Parses `/proc/stat`: busy = user + nice + system + irq + softirq + steal; total adds
/// idle and iowait (guest time is already inside user).
pub fn parse_proc_stat(text: &str) -> Result<CpuTimes, String> {
    let mut agg = None;
    let mut cpus = 0u32;
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("cpu") => {
                let v: Vec<u64> = parts
                    .map(|p| p.parse::<u64>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("the cpu line has a bad number: {e}"))?;
                if v.len() < 8 {
                    return Err(format!("the cpu line has {} fields, expected 8+", v.len()));
                }
                let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
                agg = Some((busy, busy + v[3] + v[4]));
            }
            Some(c) if c.starts_with("cpu") && c[3..].parse::<u32>().is_ok() => cpus += 1,
            _ => {}
        }
    }
    let (busy, total) = agg.ok_or("no aggregate cpu line")?;
    Ok(CpuTimes {
        busy,
        total,
        cpus: cpus.max(1),
    })
}

/// MemTotal and MemAvailable from `/proc/meminfo`, KiB.
pub fn parse_meminfo(text: &str) -> Result<(u64, u64), String> {
    let field = |name: &str| -> Result<u64, String> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .ok_or_else(|| format!("no {name} line"))?;
        let mut parts = line.split_whitespace();
        let n = parts
            .next()
            .ok_or_else(|| format!("{name} has no value"))?
            .parse::<u64>()
            .map_err(|e| format!("{name}: {e}"))?;
        match parts.next() {
            Some("kB") => Ok(n),
            other => Err(format!("{name}: unexpected unit {other:?}")),
        }
    };
    Ok((field("MemTotal:")?, field("MemAvailable:")?))
}

/// utime + stime of `/proc/<pid>/stat`, clock ticks. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_pid_stat(text: &str) -> Result<u64, String> {
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("no ')' after the command name")?;
    // After ')': state is field 3, so utime (14) and stime (15) are the 12th and 13th.
    let f: Vec<&str> = rest.split_whitespace().collect();
    if f.len() < 13 {
        return Err(format!("{} fields after the name, expected 13+", f.len()));
    }
    let num = |s: &str| {
        s.parse::<u64>()
            .map_err(|e| format!("bad tick count {s}: {e}"))
    };
    Ok(num(f[11])? + num(f[12])?)
}

/// One reading of everything a report compares.
#[derive(Debug, Clone)]
pub struct Reading {
    pub at: Instant,
    pub wall: DateTime<Utc>,
    pub host: CpuTimes,
    pub mem_total_kib: u64,
    pub mem_available_kib: u64,
    /// VM name → (QEMU pid, its CPU ticks, resident MiB).
    pub vms: HashMap<String, (u32, u64, u64)>,
}

/// The report between two readings (pure). A VM is in it only if the same QEMU (pid) was
/// read both times; dirty rates come from `dirty`.
pub fn report(
    prev: &Reading,
    now: &Reading,
    ticks_per_s: f64,
    dirty: &HashMap<String, (f64, DateTime<Utc>)>,
) -> Option<LoadReport> {
    let secs = now.at.checked_duration_since(prev.at)?.as_secs_f64();
    let total = now.host.total.checked_sub(prev.host.total)?;
    if secs <= 0.0 || total == 0 || ticks_per_s <= 0.0 {
        return None;
    }
    let busy = now.host.busy.saturating_sub(prev.host.busy);
    let cpu_used = busy as f64 / total as f64 * f64::from(now.host.cpus);
    let mut vms: Vec<VmLoadReport> = now
        .vms
        .iter()
        .filter_map(|(name, &(pid, ticks, resident))| {
            let &(ppid, pticks, _) = prev.vms.get(name)?;
            if ppid != pid {
                return None;
            }
            let used = ticks.saturating_sub(pticks) as f64 / ticks_per_s / secs;
            let d = dirty.get(name);
            Some(VmLoadReport {
                name: name.clone(),
                cpu_used: used.min(f64::from(now.host.cpus)),
                resident_mib: resident,
                dirty_rate_mib_s: d.map(|x| x.0),
                dirty_measured_at: d.map(|x| x.1),
            })
        })
        .collect();
    vms.sort_by(|a, b| a.name.cmp(&b.name));
    Some(LoadReport {
        at: now.wall,
        cpu_used,
        memory_used_mib: now.mem_total_kib.saturating_sub(now.mem_available_kib) / 1024,
        vms,
    })
}

/// Dirty-rate measurements kept per VM, and how far back they count: one second of page
/// sampling is noisy (a steady 16 MiB/s writer reads 25-44 MiB/s), so what is reported is
/// the mean of the last few.
const DIRTY_KEEP: usize = 5;
const DIRTY_WINDOW: chrono::Duration = chrono::Duration::minutes(3);

/// One VM's recent dirty-rate measurements, newest last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DirtySamples(std::collections::VecDeque<(f64, DateTime<Utc>)>);

impl DirtySamples {
    pub fn record(&mut self, rate: f64, at: DateTime<Utc>) {
        self.0.push_back((rate, at));
        while self.0.len() > DIRTY_KEEP {
            self.0.pop_front();
        }
    }

    /// When the newest was taken.
    pub fn latest_at(&self) -> Option<DateTime<Utc>> {
        self.0.back().map(|s| s.1)
    }

    /// The mean of the measurements within [`DIRTY_WINDOW`] of `now` (and `extra`, a fresh
    /// one not recorded), with the newest one's time.
    pub fn mean(&self, now: DateTime<Utc>, extra: Option<f64>) -> Option<(f64, DateTime<Utc>)> {
        let mut rates: Vec<f64> = self
            .0
            .iter()
            .filter(|(_, at)| now - *at <= DIRTY_WINDOW)
            .map(|(r, _)| *r)
            .collect();
        rates.extend(extra);
        if rates.is_empty() {
            return None;
        }
        let at = if extra.is_some() {
            now
        } else {
            self.latest_at()?
        };
        Some((rates.iter().sum::<f64>() / rates.len() as f64, at))
    }
}

/// The agent's load state: the previous reading and the dirty rates measured so far.
#[derive(Default)]
pub struct LoadState {
    prev: Mutex<Option<Reading>>,
    dirty: Mutex<HashMap<String, DirtySamples>>,
}

impl LoadState {
    /// The mean of `vm`'s recent dirty-rate measurements and `fresh` (one just taken), MiB/s.
    pub fn dirty_rate(&self, vm: &str, fresh: Option<f64>) -> Option<f64> {
        let d = self.dirty.lock().ok()?;
        match d.get(vm) {
            Some(s) => s.mean(Utc::now(), fresh).map(|m| m.0),
            None => fresh,
        }
    }

    fn dirty_means(&self) -> HashMap<String, (f64, DateTime<Utc>)> {
        let now = Utc::now();
        self.dirty
            .lock()
            .map(|d| {
                d.iter()
                    .filter_map(|(k, s)| Some((k.clone(), s.mean(now, None)?)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn ticks_per_s() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

impl Agent {
    /// Reads the host and its QEMUs now and reports the load since the last call (None
    /// the first time, or when a file cannot be read: the reason is logged).
    pub async fn load_report(&self) -> Option<LoadReport> {
        let reading = match self.read_load().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot read the host's load: {e}");
                return None;
            }
        };
        let dirty = self.load.dirty_means();
        let mut prev = self.load.prev.lock().unwrap_or_else(|p| p.into_inner());
        let out = prev
            .as_ref()
            .and_then(|p| report(p, &reading, ticks_per_s(), &dirty));
        *prev = Some(reading);
        out
    }

    async fn read_load(&self) -> Result<Reading, String> {
        let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"));
        let host = parse_proc_stat(&read("/proc/stat")?)?;
        let (mem_total_kib, mem_available_kib) = parse_meminfo(&read("/proc/meminfo")?)?;
        let mut vms = HashMap::new();
        for vm in self.running_vms().await {
            let pid = vm.pid();
            // A QEMU that just exited is simply left out.
            let Ok(stat) = read(&format!("/proc/{pid}/stat")) else {
                continue;
            };
            let (Ok(ticks), Ok(resident)) =
                (parse_pid_stat(&stat), crate::memory::resident_mib(pid))
            else {
                continue;
            };
            vms.insert(vm.record().spec.name, (pid, ticks, resident));
        }
        Ok(Reading {
            at: Instant::now(),
            wall: Utc::now(),
            host,
            mem_total_kib,
            mem_available_kib,
            vms,
        })
    }
}

/// Measures each running VM's dirty rate in turn: a new VM within [`SAMPLER_TICK`], then
/// every [`DIRTY_EVERY`]; skips VMs that migrate; forgets VMs that are gone.
pub async fn run_dirty_sampler(agent: Arc<Agent>) {
    loop {
        let vms = agent.running_vms().await;
        let names: Vec<String> = vms.iter().map(|v| v.record().spec.name).collect();
        let due: Vec<_> = {
            let Ok(mut d) = agent.load.dirty.lock() else {
                return;
            };
            d.retain(|k, _| names.contains(k));
            let now = Utc::now();
            let every = chrono::Duration::from_std(DIRTY_EVERY).unwrap_or_default();
            vms.into_iter()
                .filter(|v| {
                    d.get(&v.record().spec.name)
                        .and_then(|s| s.latest_at())
                        .is_none_or(|at| now - at >= every)
                })
                .collect()
        };
        for vm in due {
            if vm.role() != Role::Normal || !vm.is_running_process() {
                continue;
            }
            let name = vm.record().spec.name;
            match crate::memory::dirty_rate_mib_s(&vm.qmp).await {
                Ok(rate) => {
                    if let Ok(mut d) = agent.load.dirty.lock() {
                        d.entry(name).or_default().record(rate, Utc::now());
                    }
                }
                Err(why) => tracing::debug!(vm = %name, "no dirty rate this round: {why}"),
            }
        }
        tokio::time::sleep(SAMPLER_TICK).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n\
                        cpu1 50 3 25 500 10 2 1 1 0 0\nintr 12345\nctxt 999\n";

    #[test]
    fn dirty_rates_are_the_mean_of_the_recent_few() {
        let t0 = Utc::now();
        let mut s = DirtySamples::default();
        assert_eq!(s.mean(t0, None), None);
        assert_eq!(s.mean(t0, Some(8.0)), Some((8.0, t0)));
        for (i, r) in [100.0, 40.0, 20.0, 30.0, 10.0, 20.0].iter().enumerate() {
            s.record(*r, t0 + chrono::Duration::seconds(30 * i as i64));
        }
        // Only the last five are kept: 40, 20, 30, 10, 20.
        let now = t0 + chrono::Duration::seconds(150);
        assert_eq!(s.mean(now, None).unwrap().0, 24.0);
        assert_eq!(s.mean(now, Some(30.0)).unwrap().0, 25.0);
        // Old ones stop counting.
        let later = t0 + chrono::Duration::minutes(60);
        assert_eq!(s.mean(later, None), None);
        assert_eq!(s.mean(later, Some(3.0)).unwrap().0, 3.0);
    }

    #[test]
    fn proc_stat_sums_busy_and_total_and_counts_cpus() {
        let t = parse_proc_stat(STAT).unwrap();
        assert_eq!(t.busy, 100 + 5 + 50 + 3 + 2 + 1);
        assert_eq!(t.total, t.busy + 1000 + 20);
        assert_eq!(t.cpus, 2);
        assert!(parse_proc_stat("cpu 1 2 3\n").is_err());
        assert!(parse_proc_stat("intr 1\n").is_err());
        assert!(parse_proc_stat("cpu 1 2 x 4 5 6 7 8\n").is_err());
    }

    #[test]
    fn meminfo_needs_both_lines_in_kib() {
        let text = "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(parse_meminfo(text).unwrap(), (24_000_000, 20_000_000));
        assert!(parse_meminfo("MemTotal: 5 kB\n").is_err());
        assert!(parse_meminfo("MemTotal: 5 MB\nMemAvailable: 1 kB\n").is_err());
    }

    #[test]
    fn pid_stat_counts_fields_after_the_last_parenthesis() {
        // A command name with spaces and a ')' inside.
        let text = "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 700 300 0 0 20 0 \
                    5 0 12345 1000000 2000 18446744073709551615";
        assert_eq!(parse_pid_stat(text).unwrap(), 1000);
        assert!(parse_pid_stat("4242 (qemu) S 1 2").is_err());
        assert!(parse_pid_stat("no parenthesis").is_err());
    }

    fn reading(at: Instant, busy: u64, total: u64, vms: &[(&str, u32, u64)]) -> Reading {
        Reading {
            at,
            wall: Utc::now(),
            host: CpuTimes {
                busy,
                total,
                cpus: 4,
            },
            mem_total_kib: 8 << 20,
            mem_available_kib: 6 << 20,
            vms: vms
                .iter()
                .map(|(n, pid, t)| (n.to_string(), (*pid, *t, 512)))
                .collect(),
        }
    }

    #[test]
    fn a_report_is_the_rate_between_two_readings() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let a = reading(
            t0,
            1000,
            10_000,
            &[("web", 10, 100), ("db", 11, 50), ("new", 12, 0)],
        );
        // 2 s, 800 jiffies total of which 200 busy → a quarter of 4 CPUs.
        let b = reading(
            t1,
            1200,
            10_800,
            &[("web", 10, 300), ("db", 99, 60), ("later", 13, 5)],
        );
        let dirty = HashMap::from([("web".to_string(), (12.5, Utc::now()))]);
        let r = report(&a, &b, 100.0, &dirty).unwrap();
        assert!((r.cpu_used - 1.0).abs() < 1e-9, "{}", r.cpu_used);
        assert_eq!(r.memory_used_mib, 2048);
        // web used 200 ticks in 2 s at 100/s: one CPU. db's QEMU changed (new pid): left
        // out, as is a VM read only once.
        assert_eq!(r.vms.len(), 1);
        assert_eq!(r.vms[0].name, "web");
        assert!((r.vms[0].cpu_used - 1.0).abs() < 1e-9);
        assert_eq!(r.vms[0].dirty_rate_mib_s, Some(12.5));
        assert!(r.validate(4).is_ok());
        // Time going backwards, or no jiffies: no report.
        assert!(report(&b, &a, 100.0, &dirty).is_none());
        assert!(report(&a, &a.clone(), 100.0, &dirty).is_none());
    }
}
