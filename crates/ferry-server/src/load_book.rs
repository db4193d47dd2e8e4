//! The load history the server keeps from the agents' heartbeats: per host and per VM,
//! the last hour at most, one sample per [`SPACING_S`] slot of the clock (a heartbeat in
//! the same slot replaces the newest sample, so a burst of heartbeats cannot crowd the
//! history out).
//!
//! Kept in memory only: after a server restart the history starts again (the balancer
//! waits for [`MIN_FOR_BALANCING`] of it). Bounded: at most [`MAX_SAMPLES`] per series,
//! and series whose newest sample is older than the retention are dropped.
//!
//! Timestamps are the server's receive time, never the agent's clock.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Duration, Utc};
use ferry_api::{LoadHistory, LoadReport, LoadSample, LoadWindow};

/// How far back the history goes.
pub const RETAIN_MINUTES: i64 = 60;
/// At most one sample per this many seconds.
pub const SPACING_S: i64 = 5;
pub const MAX_SAMPLES: usize = (RETAIN_MINUTES as usize * 60) / SPACING_S as usize + 1;
/// The balancer judges from this many minutes of samples at least (averaged).
pub const MIN_FOR_BALANCING: Duration = Duration::seconds(20);
/// Windows reported with a history.
pub const WINDOWS_MIN: [u32; 3] = [1, 15, 60];

#[derive(Debug, Default, Clone)]
struct Series {
    /// Where the samples came from last (VMs move).
    host: String,
    samples: VecDeque<LoadSample>,
}

/// Samples in the same [`SPACING_S`] slot of the clock replace each other.
fn bucket(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(SPACING_S)
}

impl Series {
    fn push(&mut self, s: LoadSample) {
        match self.samples.back() {
            Some(last) if s.at < last.at => return, // out of order: dropped
            Some(last) if bucket(last.at) == bucket(s.at) => {
                self.samples.pop_back();
            }
            _ => {}
        }
        self.samples.push_back(s);
        let oldest = s.at - Duration::minutes(RETAIN_MINUTES);
        while self.samples.front().is_some_and(|f| f.at < oldest) {
            self.samples.pop_front();
        }
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
    }

    fn since(&self, from: DateTime<Utc>) -> impl Iterator<Item = &LoadSample> {
        self.samples.iter().filter(move |s| s.at >= from)
    }
}

/// Averages and peaks of `samples` within `minutes` of `now`.
pub fn window(samples: &[LoadSample], minutes: u32, now: DateTime<Utc>) -> LoadWindow {
    let from = now - Duration::minutes(i64::from(minutes));
    let inside: Vec<&LoadSample> = samples.iter().filter(|s| s.at >= from).collect();
    let n = inside.len();
    let (mut cpu_sum, mut cpu_max, mut mem_sum, mut mem_max) = (0.0f64, 0.0f64, 0u128, 0u64);
    for s in &inside {
        cpu_sum += s.cpu_used;
        cpu_max = cpu_max.max(s.cpu_used);
        mem_sum += u128::from(s.memory_mib);
        mem_max = mem_max.max(s.memory_mib);
    }
    LoadWindow {
        minutes,
        samples: n as u32,
        cpu_avg: if n > 0 { cpu_sum / n as f64 } else { 0.0 },
        cpu_max,
        memory_avg_mib: if n > 0 {
            (mem_sum / n as u128) as u64
        } else {
            0
        },
        memory_max_mib: mem_max,
    }
}

/// The recent average a decision uses: CPU and memory over the last `over`, and the
/// newest dirty rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recent {
    pub cpu_used: f64,
    pub memory_mib: u64,
    pub dirty_rate_mib_s: Option<f64>,
    /// How far back the samples reach.
    pub span: Duration,
}

#[derive(Debug, Default)]
pub struct LoadBook {
    hosts: HashMap<String, Series>,
    vms: HashMap<String, Series>,
}

impl LoadBook {
    /// Records a (validated) report from `host`, received at `now`. `owns` says whether
    /// the server places a VM on that host: samples for other VMs are dropped, so one
    /// host cannot write another's history.
    pub fn record(
        &mut self,
        host: &str,
        r: &LoadReport,
        now: DateTime<Utc>,
        owns: &dyn Fn(&str) -> bool,
    ) {
        let h = self.hosts.entry(host.to_string()).or_default();
        h.host = host.to_string();
        h.push(LoadSample {
            at: now,
            cpu_used: r.cpu_used,
            memory_mib: r.memory_used_mib,
            dirty_rate_mib_s: None,
        });
        for v in r.vms.iter().filter(|v| owns(&v.name)) {
            let s = self.vms.entry(v.name.clone()).or_default();
            s.host = host.to_string();
            s.push(LoadSample {
                at: now,
                cpu_used: v.cpu_used,
                memory_mib: v.resident_mib,
                dirty_rate_mib_s: v.dirty_rate_mib_s,
            });
        }
        let stale = now - Duration::minutes(RETAIN_MINUTES);
        let fresh = |s: &Series| s.samples.back().is_some_and(|l| l.at >= stale);
        self.hosts.retain(|_, s| fresh(s));
        self.vms.retain(|_, s| fresh(s));
    }

    pub fn host(&self, name: &str, now: DateTime<Utc>) -> LoadHistory {
        history("host", name, None, self.hosts.get(name), now)
    }

    pub fn vm(&self, name: &str, now: DateTime<Utc>) -> LoadHistory {
        let s = self.vms.get(name);
        history("vm", name, s.map(|s| s.host.clone()), s, now)
    }

    /// The average over the last `over` for a host.
    pub fn recent_host(&self, name: &str, over: Duration, now: DateTime<Utc>) -> Option<Recent> {
        recent(self.hosts.get(name)?, over, now)
    }

    /// The average over the last `over` for a VM, if its samples come from `host`.
    pub fn recent_vm(
        &self,
        name: &str,
        host: &str,
        over: Duration,
        now: DateTime<Utc>,
    ) -> Option<Recent> {
        let s = self.vms.get(name).filter(|s| s.host == host)?;
        recent(s, over, now)
    }
}

fn recent(s: &Series, over: Duration, now: DateTime<Utc>) -> Option<Recent> {
    let inside: Vec<&LoadSample> = s.since(now - over).collect();
    let first = inside.first()?;
    let n = inside.len() as f64;
    Some(Recent {
        cpu_used: inside.iter().map(|x| x.cpu_used).sum::<f64>() / n,
        memory_mib: (inside.iter().map(|x| x.memory_mib as f64).sum::<f64>() / n) as u64,
        dirty_rate_mib_s: inside.iter().rev().find_map(|x| x.dirty_rate_mib_s),
        span: now - first.at,
    })
}

fn history(
    kind: &str,
    name: &str,
    host: Option<String>,
    s: Option<&Series>,
    now: DateTime<Utc>,
) -> LoadHistory {
    let samples: Vec<LoadSample> = s
        .map(|s| s.samples.iter().copied().collect())
        .unwrap_or_default();
    LoadHistory {
        kind: kind.to_string(),
        name: name.to_string(),
        host,
        latest: samples.last().copied(),
        windows: WINDOWS_MIN
            .iter()
            .map(|m| window(&samples, *m, now))
            .collect(),
        samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::VmLoadReport;

    fn report(cpu: f64, mem: u64, vms: &[(&str, f64)]) -> LoadReport {
        LoadReport {
            at: Utc::now(),
            cpu_used: cpu,
            memory_used_mib: mem,
            vms: vms
                .iter()
                .map(|(n, c)| VmLoadReport {
                    name: n.to_string(),
                    cpu_used: *c,
                    resident_mib: 100,
                    dirty_rate_mib_s: Some(1.0),
                    dirty_measured_at: None,
                })
                .collect(),
        }
    }

    #[test]
    fn history_is_spaced_bounded_and_windowed() {
        let mut b = LoadBook::default();
        let t0 = Utc::now();
        let all = |_: &str| true;
        // Two hours of heartbeats every 2 s.
        for i in 0..3600 {
            let at = t0 + Duration::seconds(2 * i);
            b.record(
                "a",
                &report((i % 4) as f64, 1000 + i as u64, &[("web", 0.5)]),
                at,
                &all,
            );
        }
        let now = t0 + Duration::seconds(2 * 3599);
        let h = b.host("a", now);
        assert!(h.samples.len() <= MAX_SAMPLES, "{}", h.samples.len());
        assert!(h.samples.len() >= MAX_SAMPLES - 2, "{}", h.samples.len());
        assert!(h.samples.first().unwrap().at >= now - Duration::minutes(RETAIN_MINUTES));
        assert!(h
            .samples
            .windows(2)
            .all(|w| bucket(w[1].at) > bucket(w[0].at)));
        assert_eq!(h.latest.unwrap().memory_mib, 1000 + 3599);
        let one = &h.windows[0];
        assert_eq!(one.minutes, 1);
        assert!(one.samples >= 11 && one.samples <= 13, "{one:?}");
        assert!(one.cpu_max <= 3.0 && one.cpu_avg > 0.0);
        let v = b.vm("web", now);
        assert_eq!(v.host.as_deref(), Some("a"));
        assert!(
            (b.recent_vm("web", "a", Duration::minutes(1), now)
                .unwrap()
                .cpu_used
                - 0.5)
                .abs()
                < 1e-9
        );
        assert!(b.recent_vm("web", "b", Duration::minutes(1), now).is_none());
    }

    #[test]
    fn a_host_cannot_write_another_hosts_vm_and_stale_series_go() {
        let mut b = LoadBook::default();
        let t0 = Utc::now();
        b.record(
            "a",
            &report(1.0, 10, &[("mine", 1.0), ("theirs", 9.0)]),
            t0,
            &|n| n == "mine",
        );
        assert!(b.vm("theirs", t0).samples.is_empty());
        assert_eq!(b.vm("mine", t0).samples.len(), 1);
        // Out-of-order samples are dropped.
        b.record(
            "a",
            &report(5.0, 10, &[]),
            t0 - Duration::seconds(30),
            &|_| true,
        );
        assert_eq!(b.host("a", t0).latest.unwrap().cpu_used, 1.0);
        // Two hours later only b reports: a's series is gone.
        let later = t0 + Duration::hours(2);
        b.record("b", &report(1.0, 10, &[]), later, &|_| true);
        assert!(b.host("a", later).samples.is_empty());
        assert!(b.vm("mine", later).latest.is_none());
    }
}
