//! A client of the test guest's TCP service: one connection, one request every 10 ms,
//! every answer timed. It is how tests and benchmarks see a migration from outside the VM:
//! a broken connection, an unanswered request, and the longest gap between answers (the
//! downtime a user notices, switch-over plus the network learning the VM's new port).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The guest workload's TCP port (`ferry.port`, default 7000).
pub const GUEST_PORT: u16 = 7000;
/// One request every this long.
pub const INTERVAL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProbeStats {
    pub sent: u64,
    pub answered: u64,
    /// Time between consecutive answers, ms.
    #[serde(skip)]
    pub gaps_ms: Vec<f64>,
    /// Why the client stopped early (a reset, a wrong answer), if it did.
    pub error: Option<String>,
    /// The guest's last answer (`<token> tick=T mismatches=M`).
    pub last_answer: String,
}

impl ProbeStats {
    pub fn longest_gap_ms(&self) -> f64 {
        self.gaps_ms.iter().copied().fold(0.0, f64::max)
    }

    pub fn percentile_gap_ms(&self, p: f64) -> f64 {
        let mut g = self.gaps_ms.clone();
        g.sort_by(|a, b| a.total_cmp(b));
        let idx = ((g.len() as f64) * p).floor() as usize;
        g.get(idx.min(g.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    }

    /// The guest's tick in its last answer.
    pub fn last_tick(&self) -> Option<u64> {
        self.last_answer
            .split_whitespace()
            .find_map(|w| w.strip_prefix("tick="))
            .and_then(|t| t.parse().ok())
    }

    pub fn summary(&self) -> String {
        format!(
            "{} requests, {} answered, longest gap {:.1} ms, p99 gap {:.1} ms{}",
            self.sent,
            self.answered,
            self.longest_gap_ms(),
            self.percentile_gap_ms(0.99),
            self.error
                .as_ref()
                .map(|e| format!(", stopped: {e}"))
                .unwrap_or_default()
        )
    }
}

/// A running probe; [`Probe::finish`] stops it and returns what it saw.
pub struct Probe {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<ProbeStats>,
}

impl Probe {
    /// Starts asking over `stream` (already connected, e.g. from inside a namespace).
    pub fn start(stream: TcpStream) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || run(stream, flag));
        Probe { stop, thread }
    }

    pub fn finish(self) -> ProbeStats {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_else(|_| ProbeStats {
            error: Some("the probe thread panicked".into()),
            ..Default::default()
        })
    }
}

/// Connects to the guest service (call inside the client's namespace).
pub fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(10))
}

/// Connects from a network lab's client namespace to the guest service at `ip`.
pub fn connect_from_client(lab: &crate::NetLab, ip: &str) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = format!("{ip}:{GUEST_PORT}")
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{ip}: {e}")))?;
    lab.in_ns(lab.client_ns(), move || connect(addr))
        .map_err(|e| std::io::Error::other(e.to_string()))?
}

fn run(stream: TcpStream, stop: Arc<AtomicBool>) -> ProbeStats {
    let mut stats = ProbeStats::default();
    let _ = stream.set_nodelay(true);
    // Long enough to ride out a switch-over; a real hang still ends the probe.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            stats.error = Some(e.to_string());
            return stats;
        }
    };
    let mut reader = BufReader::new(stream);
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        stats.sent += 1;
        let token = format!("r{}", stats.sent);
        if let Err(e) = writer.write_all(format!("{token}\n").as_bytes()) {
            stats.error = Some(format!("write #{}: {e}", stats.sent));
            break;
        }
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => {
                stats.error = Some(format!("connection closed at #{}", stats.sent));
                break;
            }
            Ok(_) if line.starts_with(&format!("{token} ")) => {
                stats.answered += 1;
                let now = Instant::now();
                stats
                    .gaps_ms
                    .push(now.duration_since(last).as_secs_f64() * 1000.0);
                last = now;
                stats.last_answer = line.trim().to_string();
            }
            Ok(_) => {
                stats.error = Some(format!("wrong answer to {token}: {:?}", line.trim()));
                break;
            }
            Err(e) => {
                stats.error = Some(format!("read #{}: {e}", stats.sent));
                break;
            }
        }
        if let Some(rest) = INTERVAL.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    stats
}

/// The kernel's TCP counters of the calling thread's network namespace (call inside the
/// client's namespace, before and after: the difference is what a migration cost the
/// client). `timeouts` is Linux's `TCPTimeouts`: retransmission timers that fired, the
/// 200 ms-or-more waits a lost segment costs; `loss_probes` (`TCPLossProbes`) are the tail
/// loss probes that fire first for a lone unanswered segment, also after about 200 ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TcpCounters {
    pub timeouts: u64,
    pub loss_probes: u64,
    pub retransmitted_segments: u64,
}

impl TcpCounters {
    /// Reads `/proc/thread-self/net/{netstat,snmp}` (`self` would be the process's
    /// namespace, not the thread's).
    pub fn read() -> std::io::Result<TcpCounters> {
        let netstat = std::fs::read_to_string("/proc/thread-self/net/netstat")?;
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
        Self::parse(&netstat, &snmp).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no TCPTimeouts / RetransSegs in /proc/net/{netstat,snmp}",
            )
        })
    }

    /// The two counters from the files' text (header line, then value line, per prefix).
    pub fn parse(netstat: &str, snmp: &str) -> Option<TcpCounters> {
        Some(TcpCounters {
            timeouts: counter(netstat, "TcpExt:", "TCPTimeouts")?,
            loss_probes: counter(netstat, "TcpExt:", "TCPLossProbes")?,
            retransmitted_segments: counter(snmp, "Tcp:", "RetransSegs")?,
        })
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &TcpCounters) -> TcpCounters {
        TcpCounters {
            timeouts: self.timeouts.saturating_sub(earlier.timeouts),
            loss_probes: self.loss_probes.saturating_sub(earlier.loss_probes),
            retransmitted_segments: self
                .retransmitted_segments
                .saturating_sub(earlier.retransmitted_segments),
        }
    }
}

fn counter(text: &str, prefix: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let header = lines.next()?;
    let values = lines.next()?;
    let at = header.split_whitespace().position(|h| h == name)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_counters_come_from_their_columns() {
        let netstat = "TcpExt: SyncookiesSent TCPTimeouts TCPLossProbes\nTcpExt: 1 42 3\nIpExt: A\nIpExt: 9\n";
        let snmp = "Ip: Forwarding\nIp: 1\nTcp: RtoAlgorithm RetransSegs\nTcp: 1 17\n";
        let c = TcpCounters::parse(netstat, snmp).expect("counters");
        assert_eq!(
            c,
            TcpCounters {
                timeouts: 42,
                loss_probes: 3,
                retransmitted_segments: 17
            }
        );
        assert_eq!(TcpCounters::parse("TcpExt: A\nTcpExt: 1\n", snmp), None);
        let later = TcpCounters {
            timeouts: 45,
            loss_probes: 3,
            retransmitted_segments: 17,
        };
        assert_eq!(later.since(&c).timeouts, 3);
        // Readable here (the test's own namespace).
        assert!(TcpCounters::read().is_ok());
    }

    #[test]
    fn percentiles_and_ticks() {
        let s = ProbeStats {
            gaps_ms: (1..=100).map(f64::from).collect(),
            last_answer: "r9 tick=42 mismatches=0".into(),
            ..Default::default()
        };
        assert_eq!(s.longest_gap_ms(), 100.0);
        assert_eq!(s.percentile_gap_ms(0.99), 100.0);
        assert_eq!(s.percentile_gap_ms(0.5), 51.0);
        assert_eq!(s.last_tick(), Some(42));
    }

    #[test]
    fn a_closed_connection_is_an_error_not_a_hang() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            for _ in 0..3 {
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                s.write_all(format!("{} tick=1 mismatches=0\n", l.trim()).as_bytes())
                    .unwrap();
            }
            // then hang up
        });
        let probe = Probe::start(connect(addr).unwrap());
        server.join().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let stats = probe.finish();
        assert_eq!(stats.answered, 3);
        assert!(stats.error.is_some());
    }
}
