//! The console protocol: lines the guest prints and the host parses.
//!
//! All lines start with [`PREFIX`] so they stand out among kernel messages:
//!
//! ```text
//! FERRY-GUEST boot kernel=6.1.0-56-cloud-amd64                       (from /init)
//! FERRY-GUEST net ip=172.30.5.100/24 mac=52:54:00:12:34:56           (from /init, ferry.ip set)
//! FERRY-GUEST tcp port=7000                                           (ferry.ip set, port != 0)
//! FERRY-GUEST start mem_mib=64 rate_mib=5 pages=16384
//! FERRY-GUEST tick=1 written=9000 verified=0 mismatches=0 mem_mib=64 rate_mib=5
//! FERRY-GUEST ready mem_mib=64 rate_mib=5
//! FERRY-GUEST tick=2 written=16390 verified=5120 mismatches=0 mem_mib=64 rate_mib=5
//! FERRY-GUEST MISMATCH page=7 expected_gen=3 found_gen=2 found_page=7 kind=stale ...
//! FERRY-GUEST exited status=1                                         (from /init)
//! ```
//!
//! Status lines (`tick=`) come once per second from the start, also while the memory is being
//! filled (then `verified` stays 0); `ready` is printed once, when the fill is complete, before
//! the next status line. Parsers here only look at complete lines (ending in `\n`), because a
//! console read may stop in the middle of a number.
//!
//! Network lines (see [`NetLine`], [`TcpLine`]) appear only when `ferry.ip` is on the kernel
//! command line. Instead of `net ip=...`, `/init` prints `FERRY-GUEST net error=<reason>` when
//! it could not configure `eth0`, with reason one of `no-eth0`, `bad-ip`, `bad-gw`,
//! `link-failed`, `addr-failed`, `route-failed` (the workload then still starts, and reports
//! a bad `ferry.ip`/`ferry.gw` as a `config-error`). `FERRY-GUEST tcp error=<reason>` means
//! the TCP service could not listen; the memory workload runs anyway.

use std::fmt;

/// Prefix of every line the guest kit prints.
pub const PREFIX: &str = "FERRY-GUEST";
/// Prefix of a mismatch report line.
pub const MISMATCH_PREFIX: &str = "FERRY-GUEST MISMATCH";

/// One per-second status line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatusLine {
    /// Monotonic counter, +1 per line, starting at 1.
    pub tick: u64,
    /// Pages written in total, including the initial fill.
    pub written: u64,
    /// Pages verified in total.
    pub verified: u64,
    /// Mismatching pages found in total.
    pub mismatches: u64,
    /// Size of the checked area.
    pub mem_mib: u64,
    /// Configured rewrite rate in MiB/s.
    pub rate_mib: f64,
}

impl fmt::Display for StatusLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `{}` on f64 prints the shortest text that parses back to the same value, which is what
        // makes parse(display(x)) == x.
        write!(
            f,
            "{PREFIX} tick={} written={} verified={} mismatches={} mem_mib={} rate_mib={}",
            self.tick, self.written, self.verified, self.mismatches, self.mem_mib, self.rate_mib
        )
    }
}

/// The part of `line` after `FERRY-GUEST `, wherever it starts (a console line can carry a
/// kernel message or a stray `\r` before it), with trailing whitespace removed.
fn payload(line: &str) -> Option<&str> {
    let at = line.find(PREFIX)?;
    let rest = line[at + PREFIX.len()..].strip_prefix(' ')?;
    Some(rest.trim_end())
}

/// `key=value` pairs of a payload; `None` if any word is not of that form.
fn pairs(payload: &str) -> Option<Vec<(&str, &str)>> {
    payload
        .split_whitespace()
        .map(|w| w.split_once('='))
        .collect()
}

fn parse_rate(v: &str) -> Option<f64> {
    let r: f64 = v.parse().ok()?;
    (r.is_finite() && r >= 0.0).then_some(r)
}

impl StatusLine {
    /// Parses a status line. Keys may come in any order and unknown keys are ignored (newer
    /// guests may add some); all six known keys are required and must appear once.
    pub fn parse(line: &str) -> Option<StatusLine> {
        let p = payload(line)?;
        if !p.starts_with("tick=") {
            return None;
        }
        let mut fields: [Option<&str>; 6] = [None; 6];
        for (k, v) in pairs(p)? {
            let slot = match k {
                "tick" => 0,
                "written" => 1,
                "verified" => 2,
                "mismatches" => 3,
                "mem_mib" => 4,
                "rate_mib" => 5,
                _ => continue,
            };
            if fields[slot].replace(v).is_some() {
                return None;
            }
        }
        let num = |i: usize| fields[i]?.parse::<u64>().ok();
        Some(StatusLine {
            tick: num(0)?,
            written: num(1)?,
            verified: num(2)?,
            mismatches: num(3)?,
            mem_mib: num(4)?,
            rate_mib: parse_rate(fields[5]?)?,
        })
    }
}

/// The line printed once the memory area is completely filled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadyLine {
    /// Size of the checked area.
    pub mem_mib: u64,
    /// Configured rewrite rate in MiB/s.
    pub rate_mib: f64,
}

impl fmt::Display for ReadyLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX} ready mem_mib={} rate_mib={}",
            self.mem_mib, self.rate_mib
        )
    }
}

impl ReadyLine {
    /// Parses a `ready` line.
    pub fn parse(line: &str) -> Option<ReadyLine> {
        let p = payload(line)?.strip_prefix("ready ")?;
        let mut mem = None;
        let mut rate = None;
        for (k, v) in pairs(p)? {
            match k {
                "mem_mib" => mem = Some(v.parse().ok()?),
                "rate_mib" => rate = Some(parse_rate(v)?),
                _ => {}
            }
        }
        Some(ReadyLine {
            mem_mib: mem?,
            rate_mib: rate?,
        })
    }
}

/// The `net` line `/init` prints after configuring `eth0` from `ferry.ip` / `ferry.gw`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetLine {
    /// `FERRY-GUEST net ip=<addr>/<prefix> mac=<mac>`: `eth0` is up with that address.
    Up {
        /// `ADDR/PREFIX` as configured, e.g. `10.0.2.15/24`.
        ip: String,
        /// MAC address of `eth0`, lower-case, e.g. `52:54:00:12:34:56`.
        mac: String,
    },
    /// `FERRY-GUEST net error=<reason>`: networking was asked for but is not configured.
    Error {
        /// Why, e.g. `no-eth0`.
        reason: String,
    },
}

impl fmt::Display for NetLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetLine::Up { ip, mac } => write!(f, "{PREFIX} net ip={ip} mac={mac}"),
            NetLine::Error { reason } => write!(f, "{PREFIX} net error={reason}"),
        }
    }
}

impl NetLine {
    /// Parses a `net` line; unknown keys are ignored.
    pub fn parse(line: &str) -> Option<NetLine> {
        let p = payload(line)?.strip_prefix("net ")?;
        if let Some(reason) = p.strip_prefix("error=") {
            return Some(NetLine::Error {
                reason: reason.to_string(),
            });
        }
        let (mut ip, mut mac) = (None, None);
        for (k, v) in pairs(p)? {
            match k {
                "ip" => ip = Some(v.to_string()),
                "mac" => mac = Some(v.to_string()),
                _ => {}
            }
        }
        Some(NetLine::Up { ip: ip?, mac: mac? })
    }
}

/// The line the workload prints about its TCP service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpLine {
    /// `FERRY-GUEST tcp port=<n>`: listening on `0.0.0.0:<n>`.
    Listening {
        /// The port.
        port: u16,
    },
    /// `FERRY-GUEST tcp error=<reason>`: the service could not start.
    Error {
        /// Why (free text).
        reason: String,
    },
}

impl fmt::Display for TcpLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TcpLine::Listening { port } => write!(f, "{PREFIX} tcp port={port}"),
            TcpLine::Error { reason } => write!(f, "{PREFIX} tcp error={reason}"),
        }
    }
}

impl TcpLine {
    /// Parses a `tcp` line; unknown keys are ignored.
    pub fn parse(line: &str) -> Option<TcpLine> {
        let p = payload(line)?.strip_prefix("tcp ")?;
        if let Some(reason) = p.strip_prefix("error=") {
            return Some(TcpLine::Error {
                reason: reason.to_string(),
            });
        }
        let port = pairs(p)?
            .into_iter()
            .find(|(k, _)| *k == "port")?
            .1
            .parse()
            .ok()?;
        Some(TcpLine::Listening { port })
    }
}

/// Complete lines of console text: a trailing fragment without `\n` is left out, since it may
/// be a line still being printed.
pub fn complete_lines(text: &str) -> impl Iterator<Item = &str> {
    let end = text.rfind('\n').map_or(0, |i| i + 1);
    text[..end].lines()
}

/// All status lines in console text, in order.
pub fn status_lines(text: &str) -> impl Iterator<Item = StatusLine> + '_ {
    complete_lines(text).filter_map(StatusLine::parse)
}

/// The last complete status line in console text.
pub fn last_status(text: &str) -> Option<StatusLine> {
    status_lines(text).last()
}

/// Number of `FERRY-GUEST MISMATCH` lines in console text. Printing is rate-limited in the
/// guest, so this can be lower than [`StatusLine::mismatches`], which is the authoritative total.
pub fn mismatch_line_count(text: &str) -> usize {
    complete_lines(text)
        .filter(|l| l.contains(MISMATCH_PREFIX))
        .count()
}

/// Everything the host usually wants to know from a guest console log.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConsoleSummary {
    /// Kernel release from the `boot` line of `/init`.
    pub boot_kernel: Option<String>,
    /// The `ready` line, once the memory area was filled.
    pub ready: Option<ReadyLine>,
    /// Status lines seen in total.
    pub status_lines: usize,
    /// Status lines seen after the `ready` line.
    pub status_lines_after_ready: usize,
    /// The last status line.
    pub last: Option<StatusLine>,
    /// `MISMATCH` lines seen (rate-limited; see [`mismatch_line_count`]).
    pub mismatch_lines: usize,
    /// Exit status of the workload, if `/init` reported that it exited.
    pub exited: Option<i32>,
    /// `eth0`'s `ADDR/PREFIX` from the last `net ip=...` line.
    pub net_ip: Option<String>,
    /// `eth0`'s MAC from the last `net ip=...` line.
    pub net_mac: Option<String>,
    /// Reason from a `net error=...` line, if that was the last `net` line.
    pub net_error: Option<String>,
    /// Port from the last `tcp port=...` line.
    pub tcp_port: Option<u16>,
    /// Reason from a `tcp error=...` line, if that was the last `tcp` line.
    pub tcp_error: Option<String>,
}

impl ConsoleSummary {
    /// Summarises console text. If the guest booted more than once, the counts cover all boots
    /// and `last` is from the latest.
    pub fn parse(text: &str) -> ConsoleSummary {
        let mut s = ConsoleSummary::default();
        for line in complete_lines(text) {
            if let Some(st) = StatusLine::parse(line) {
                s.status_lines += 1;
                if s.ready.is_some() {
                    s.status_lines_after_ready += 1;
                }
                s.last = Some(st);
            } else if let Some(r) = ReadyLine::parse(line) {
                s.ready = Some(r);
                s.status_lines_after_ready = 0;
            } else if line.contains(MISMATCH_PREFIX) {
                s.mismatch_lines += 1;
            } else if let Some(n) = NetLine::parse(line) {
                (s.net_ip, s.net_mac, s.net_error) = match n {
                    NetLine::Up { ip, mac } => (Some(ip), Some(mac), None),
                    NetLine::Error { reason } => (None, None, Some(reason)),
                };
            } else if let Some(t) = TcpLine::parse(line) {
                (s.tcp_port, s.tcp_error) = match t {
                    TcpLine::Listening { port } => (Some(port), None),
                    TcpLine::Error { reason } => (None, Some(reason)),
                };
            } else if let Some(p) = payload(line) {
                if let Some(k) = p.strip_prefix("boot kernel=") {
                    s.boot_kernel = Some(k.to_string());
                } else if let Some(code) = p.strip_prefix("exited status=") {
                    s.exited = code.parse().ok();
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LINE: &str =
        "FERRY-GUEST tick=3 written=17000 verified=40000 mismatches=0 mem_mib=64 rate_mib=5";

    #[test]
    fn parse_and_display() {
        let s = StatusLine::parse(LINE).unwrap();
        assert_eq!(
            s,
            StatusLine {
                tick: 3,
                written: 17000,
                verified: 40000,
                mismatches: 0,
                mem_mib: 64,
                rate_mib: 5.0
            }
        );
        assert_eq!(s.to_string(), LINE);
    }

    #[test]
    fn parse_is_tolerant_of_console_noise_and_new_keys() {
        let noisy = format!("\r[ 12.3] x {LINE} disk_written=4\r");
        assert_eq!(StatusLine::parse(&noisy), StatusLine::parse(LINE));
    }

    #[test]
    fn parse_rejects_malformed() {
        for bad in [
            "",
            "FERRY-GUEST ready mem_mib=64 rate_mib=5",
            "FERRY-GUEST tick=1 written=1 verified=1 mismatches=0 mem_mib=64",
            "FERRY-GUEST tick=1 written=x verified=1 mismatches=0 mem_mib=64 rate_mib=5",
            "FERRY-GUEST tick=1 tick=2 written=1 verified=1 mismatches=0 mem_mib=64 rate_mib=5",
            "FERRY-GUEST tick=1 written=1 verified=1 mismatches=0 mem_mib=64 rate_mib=-1",
            "FERRY-GUEST tick=1 written=1 verified=1 mismatches=0 mem_mib=64 rate_mib=5 junk",
            "FERRY-GUESTtick=1 written=1 verified=1 mismatches=0 mem_mib=64 rate_mib=5",
        ] {
            assert_eq!(StatusLine::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ready_round_trip() {
        let r = ReadyLine {
            mem_mib: 64,
            rate_mib: 2.5,
        };
        assert_eq!(r.to_string(), "FERRY-GUEST ready mem_mib=64 rate_mib=2.5");
        assert_eq!(ReadyLine::parse(&r.to_string()), Some(r));
        assert_eq!(ReadyLine::parse(LINE), None);
    }

    #[test]
    fn console_helpers() {
        let text = "\
[    0.000000] Linux version 6.1\r
FERRY-GUEST boot kernel=6.1.0-56-cloud-amd64\r
FERRY-GUEST tick=1 written=10 verified=0 mismatches=0 mem_mib=1 rate_mib=5\r
FERRY-GUEST ready mem_mib=1 rate_mib=5\r
FERRY-GUEST tick=2 written=300 verified=100 mismatches=0 mem_mib=1 rate_mib=5\r
FERRY-GUEST MISMATCH page=7 expected_gen=3 found_gen=2 found_page=7 kind=stale bad_words=510\r
FERRY-GUEST tick=3 written=600 verified=500 mismatches=1 mem_mib=1 rate_mib=5\r
FERRY-GUEST exited status=1\r
FERRY-GUEST tick=4 written=900 verified=900 mismatches=1 mem_mib=1 rate_mi";
        let last = last_status(text).unwrap();
        assert_eq!(last.tick, 3, "the unterminated last line is ignored");
        assert_eq!(status_lines(text).count(), 3);
        assert_eq!(mismatch_line_count(text), 1);
        let s = ConsoleSummary::parse(text);
        assert_eq!(s.boot_kernel.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(
            s.ready,
            Some(ReadyLine {
                mem_mib: 1,
                rate_mib: 5.0
            })
        );
        assert_eq!(s.status_lines, 3);
        assert_eq!(s.status_lines_after_ready, 2);
        assert_eq!(s.last, Some(last));
        assert_eq!(s.mismatch_lines, 1);
        assert_eq!(s.exited, Some(1));
        assert_eq!(last_status("no status here\n"), None);
        assert_eq!((s.net_ip, s.net_mac, s.tcp_port), (None, None, None));
    }

    #[test]
    fn net_and_tcp_lines() {
        let up = NetLine::Up {
            ip: "10.0.2.15/24".into(),
            mac: "52:54:00:12:34:56".into(),
        };
        assert_eq!(
            up.to_string(),
            "FERRY-GUEST net ip=10.0.2.15/24 mac=52:54:00:12:34:56"
        );
        assert_eq!(NetLine::parse(&format!("\r{up}\r")), Some(up));
        assert_eq!(
            NetLine::parse("FERRY-GUEST net error=no-eth0"),
            Some(NetLine::Error {
                reason: "no-eth0".into()
            })
        );
        assert_eq!(NetLine::parse("FERRY-GUEST net ip=10.0.2.15/24"), None);
        assert_eq!(NetLine::parse("FERRY-GUEST network ip=1 mac=2"), None);
        let t = TcpLine::Listening { port: 7000 };
        assert_eq!(t.to_string(), "FERRY-GUEST tcp port=7000");
        assert_eq!(TcpLine::parse(&t.to_string()), Some(t));
        assert_eq!(TcpLine::parse("FERRY-GUEST tcp port=70000"), None);
        assert_eq!(
            TcpLine::parse("FERRY-GUEST tcp error=cannot listen on 0.0.0.0:7000: in use"),
            Some(TcpLine::Error {
                reason: "cannot listen on 0.0.0.0:7000: in use".into()
            })
        );
        // Neither is mistaken for a status line or vice versa.
        assert_eq!(StatusLine::parse("FERRY-GUEST tcp port=7000"), None);
        assert_eq!(TcpLine::parse(LINE), None);

        let text = "\
FERRY-GUEST boot kernel=6.1.0-56-cloud-amd64\r
FERRY-GUEST net ip=10.0.2.15/24 mac=52:54:00:12:34:56\r
FERRY-GUEST tcp port=7000\r
FERRY-GUEST start mem_mib=1 rate_mib=5 pages=256\r
FERRY-GUEST tick=1 written=10 verified=0 mismatches=0 mem_mib=1 rate_mib=5\r
";
        let s = ConsoleSummary::parse(text);
        assert_eq!(s.net_ip.as_deref(), Some("10.0.2.15/24"));
        assert_eq!(s.net_mac.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(s.tcp_port, Some(7000));
        assert_eq!((s.net_error, s.tcp_error), (None, None));
        assert_eq!(s.status_lines, 1);

        let s = ConsoleSummary::parse("FERRY-GUEST net error=no-eth0\nFERRY-GUEST tcp error=x y\n");
        assert_eq!((s.net_ip, s.net_error.as_deref()), (None, Some("no-eth0")));
        assert_eq!((s.tcp_port, s.tcp_error.as_deref()), (None, Some("x y")));
    }

    proptest! {
        #[test]
        fn status_round_trip(
            tick in any::<u64>(),
            written in any::<u64>(),
            verified in any::<u64>(),
            mismatches in any::<u64>(),
            mem_mib in any::<u64>(),
            rate_mib in prop_oneof![
                (0u32..100_000).prop_map(f64::from),
                0.0f64..1e12,
                proptest::num::f64::POSITIVE
                    | proptest::num::f64::NORMAL
                    | proptest::num::f64::SUBNORMAL
                    | proptest::num::f64::ZERO,
            ],
        ) {
            let s = StatusLine { tick, written, verified, mismatches, mem_mib, rate_mib };
            let text = s.to_string();
            prop_assert_eq!(StatusLine::parse(&text), Some(s));
            let console = format!("junk\n{text}\r\n");
            prop_assert_eq!(last_status(&console), Some(s));
        }
    }
}
