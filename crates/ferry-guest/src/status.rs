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
//!
//! Disk lines (see [`DiskStatusLine`], [`DiskLine`]) appear only with `ferry.disk` on the
//! kernel command line; the disk workload ([`crate::disk`]) runs in its own thread and prints
//! its own lines, never changing the memory lines above:
//!
//! ```text
//! FERRY-GUEST disk tick=1 written=3000 verified=0 mismatches=0 mib=32 rate_mib=2   (initialising)
//! FERRY-GUEST disk ready mib=32 rate_mib=2                    (fresh disk, area initialised)
//! FERRY-GUEST disk resume blocks=8174                         (valid header found: a restart)
//! FERRY-GUEST disk verified-after-restart blocks=8174 mismatches=0 ahead=3
//! FERRY-GUEST disk tick=2 written=3512 verified=6000 mismatches=0 mib=32 rate_mib=2
//! FERRY-GUEST DISK-MISMATCH block=7 expected_gen=3 found_gen=2 kind=stale found_block=7
//! FERRY-GUEST disk mismatch-lines-suppressed count=12
//! FERRY-GUEST disk error reason=/dev/vda does not exist ...   (the disk workload stopped)
//! ```
//!
//! The disk counters (`written`, `verified`, `mismatches`, in 4 KiB blocks) count from the
//! start of this boot; `tick` is the disk thread's own, one line a second. After a restart,
//! `mismatches` of `verified-after-restart` are those of the full post-restart sweep, and
//! `ahead` the blocks accepted one generation ahead of the table (see [`crate::disk`]).

use std::fmt;

/// Prefix of every line the guest kit prints.
pub const PREFIX: &str = "FERRY-GUEST";
/// Prefix of a mismatch report line.
pub const MISMATCH_PREFIX: &str = "FERRY-GUEST MISMATCH";
/// Prefix of a disk mismatch report line (not matched by [`MISMATCH_PREFIX`]).
pub const DISK_MISMATCH_PREFIX: &str = "FERRY-GUEST DISK-MISMATCH";

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

/// Values of `keys` in a payload of `key=value` words: each required exactly once, unknown
/// keys ignored.
fn fields<'a, const N: usize>(payload: &'a str, keys: [&str; N]) -> Option<[&'a str; N]> {
    let mut found: [Option<&str>; N] = [None; N];
    for (k, v) in pairs(payload)? {
        if let Some(slot) = keys.iter().position(|key| *key == k) {
            if found[slot].replace(v).is_some() {
                return None;
            }
        }
    }
    let mut out = [""; N];
    for (o, f) in out.iter_mut().zip(found) {
        *o = f?;
    }
    Some(out)
}

/// The disk workload's per-second status line (`FERRY-GUEST disk tick=...`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskStatusLine {
    /// The disk thread's own counter, +1 per line, starting at 1.
    pub tick: u64,
    /// 4 KiB data blocks written in this boot, including the initialisation.
    pub written: u64,
    /// Data blocks verified in this boot, including the post-restart sweep.
    pub verified: u64,
    /// Mismatches found in this boot (data blocks and table entries).
    pub mismatches: u64,
    /// Size of the disk area in MiB.
    pub mib: u64,
    /// Configured rewrite rate in MiB/s.
    pub rate_mib: f64,
}

impl fmt::Display for DiskStatusLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX} disk tick={} written={} verified={} mismatches={} mib={} rate_mib={}",
            self.tick, self.written, self.verified, self.mismatches, self.mib, self.rate_mib
        )
    }
}

impl DiskStatusLine {
    /// Parses a disk status line. Keys may come in any order, unknown keys are ignored; all
    /// six known keys are required once.
    pub fn parse(line: &str) -> Option<DiskStatusLine> {
        let p = payload(line)?.strip_prefix("disk ")?;
        if !p.starts_with("tick=") {
            return None;
        }
        let [tick, written, verified, mismatches, mib, rate] = fields(
            p,
            [
                "tick",
                "written",
                "verified",
                "mismatches",
                "mib",
                "rate_mib",
            ],
        )?;
        Some(DiskStatusLine {
            tick: tick.parse().ok()?,
            written: written.parse().ok()?,
            verified: verified.parse().ok()?,
            mismatches: mismatches.parse().ok()?,
            mib: mib.parse().ok()?,
            rate_mib: parse_rate(rate)?,
        })
    }
}

/// The disk workload's one-off lines.
#[derive(Debug, Clone, PartialEq)]
pub enum DiskLine {
    /// `FERRY-GUEST disk ready mib=<n> rate_mib=<r>`: a fresh area was initialised (every
    /// block generation 1, then the table, then the header).
    Ready {
        /// Size of the area in MiB.
        mib: u64,
        /// Configured rewrite rate in MiB/s.
        rate_mib: f64,
    },
    /// `FERRY-GUEST disk resume blocks=<n>`: the device holds a valid area of the requested
    /// size (the VM was restarted); the post-restart sweep begins.
    Resume {
        /// Data blocks in the area.
        blocks: u64,
    },
    /// `FERRY-GUEST disk verified-after-restart blocks=<n> mismatches=<m> ahead=<k>`: every
    /// block was verified once after the restart.
    VerifiedAfterRestart {
        /// Data blocks verified.
        blocks: u64,
        /// Mismatches of that sweep.
        mismatches: u64,
        /// Blocks found exactly one generation ahead of the table and accepted (a write whose
        /// table update had not reached the disk when the VM stopped).
        ahead: u64,
    },
    /// `FERRY-GUEST disk error reason=<text>`: the disk workload stopped (or never started);
    /// the memory workload keeps running.
    Error {
        /// Why, free text.
        reason: String,
    },
}

impl fmt::Display for DiskLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskLine::Ready { mib, rate_mib } => {
                write!(f, "{PREFIX} disk ready mib={mib} rate_mib={rate_mib}")
            }
            DiskLine::Resume { blocks } => write!(f, "{PREFIX} disk resume blocks={blocks}"),
            DiskLine::VerifiedAfterRestart {
                blocks,
                mismatches,
                ahead,
            } => write!(
                f,
                "{PREFIX} disk verified-after-restart blocks={blocks} mismatches={mismatches} \
                 ahead={ahead}"
            ),
            DiskLine::Error { reason } => write!(f, "{PREFIX} disk error reason={reason}"),
        }
    }
}

impl DiskLine {
    /// Parses one of the disk workload's one-off lines; unknown keys are ignored (`ahead`
    /// is optional, 0 when absent).
    pub fn parse(line: &str) -> Option<DiskLine> {
        let p = payload(line)?.strip_prefix("disk ")?;
        if let Some(reason) = p.strip_prefix("error reason=") {
            return Some(DiskLine::Error {
                reason: reason.to_string(),
            });
        }
        let (what, rest) = p.split_once(' ')?;
        match what {
            "ready" => {
                let [mib, rate] = fields(rest, ["mib", "rate_mib"])?;
                Some(DiskLine::Ready {
                    mib: mib.parse().ok()?,
                    rate_mib: parse_rate(rate)?,
                })
            }
            "resume" => {
                let [blocks] = fields(rest, ["blocks"])?;
                Some(DiskLine::Resume {
                    blocks: blocks.parse().ok()?,
                })
            }
            "verified-after-restart" => {
                let [blocks, mismatches] = fields(rest, ["blocks", "mismatches"])?;
                let ahead = match fields(rest, ["ahead"]) {
                    Some([a]) => a.parse().ok()?,
                    None => 0,
                };
                Some(DiskLine::VerifiedAfterRestart {
                    blocks: blocks.parse().ok()?,
                    mismatches: mismatches.parse().ok()?,
                    ahead,
                })
            }
            _ => None,
        }
    }
}

/// All disk status lines in console text, in order.
pub fn disk_status_lines(text: &str) -> impl Iterator<Item = DiskStatusLine> + '_ {
    complete_lines(text).filter_map(DiskStatusLine::parse)
}

/// Number of `FERRY-GUEST DISK-MISMATCH` lines in console text (rate-limited in the guest;
/// [`DiskStatusLine::mismatches`] is the authoritative total).
pub fn disk_mismatch_line_count(text: &str) -> usize {
    complete_lines(text)
        .filter(|l| l.contains(DISK_MISMATCH_PREFIX))
        .count()
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
    /// The last `disk ready` line (a fresh disk area was initialised).
    pub disk_ready: Option<DiskReadyLine>,
    /// Data blocks from the last `disk resume` line (the disk area was found after a restart).
    pub disk_resumed: Option<u64>,
    /// `(blocks, mismatches)` of the `disk verified-after-restart` line that followed the last
    /// `disk resume` (`None` while that sweep is still running).
    pub disk_verified_after_restart: Option<(u64, u64)>,
    /// `ahead` of that same line: blocks accepted one generation ahead of the table.
    pub disk_ahead_after_restart: Option<u64>,
    /// Disk status lines seen in total.
    pub disk_status_lines: usize,
    /// Disk status lines seen after the last `disk ready` or `disk verified-after-restart`
    /// line, i.e. in the disk workload's steady state (reset by `disk resume`).
    pub disk_status_lines_after_ready: usize,
    /// The last disk status line.
    pub disk_last: Option<DiskStatusLine>,
    /// `DISK-MISMATCH` lines seen (rate-limited; see [`disk_mismatch_line_count`]).
    pub disk_mismatch_lines: usize,
    /// Reason from the last `disk error` line.
    pub disk_error: Option<String>,
}

/// `mib` and `rate_mib` of a `disk ready` line, for [`ConsoleSummary::disk_ready`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskReadyLine {
    /// Size of the area in MiB.
    pub mib: u64,
    /// Configured rewrite rate in MiB/s.
    pub rate_mib: f64,
}

impl ConsoleSummary {
    /// Summarises console text. If the guest booted more than once, the counts cover all boots
    /// and `last` is from the latest.
    pub fn parse(text: &str) -> ConsoleSummary {
        let mut s = ConsoleSummary::default();
        let mut disk_steady = false;
        for line in complete_lines(text) {
            if let Some(st) = DiskStatusLine::parse(line) {
                s.disk_status_lines += 1;
                if disk_steady {
                    s.disk_status_lines_after_ready += 1;
                }
                s.disk_last = Some(st);
            } else if let Some(d) = DiskLine::parse(line) {
                match d {
                    DiskLine::Ready { mib, rate_mib } => {
                        s.disk_ready = Some(DiskReadyLine { mib, rate_mib });
                        disk_steady = true;
                        s.disk_status_lines_after_ready = 0;
                    }
                    DiskLine::Resume { blocks } => {
                        s.disk_resumed = Some(blocks);
                        s.disk_verified_after_restart = None;
                        s.disk_ahead_after_restart = None;
                        disk_steady = false;
                        s.disk_status_lines_after_ready = 0;
                    }
                    DiskLine::VerifiedAfterRestart {
                        blocks,
                        mismatches,
                        ahead,
                    } => {
                        s.disk_verified_after_restart = Some((blocks, mismatches));
                        s.disk_ahead_after_restart = Some(ahead);
                        disk_steady = true;
                        s.disk_status_lines_after_ready = 0;
                    }
                    DiskLine::Error { reason } => s.disk_error = Some(reason),
                }
            } else if line.contains(DISK_MISMATCH_PREFIX) {
                s.disk_mismatch_lines += 1;
            } else if let Some(st) = StatusLine::parse(line) {
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

    #[test]
    fn disk_lines() {
        let st = DiskStatusLine {
            tick: 4,
            written: 9000,
            verified: 12000,
            mismatches: 0,
            mib: 32,
            rate_mib: 2.0,
        };
        let text = st.to_string();
        assert_eq!(
            text,
            "FERRY-GUEST disk tick=4 written=9000 verified=12000 mismatches=0 mib=32 rate_mib=2"
        );
        assert_eq!(
            DiskStatusLine::parse(&format!("\r{text} new=1\r")),
            Some(st)
        );
        // Memory and disk status lines are never mistaken for each other.
        assert_eq!(StatusLine::parse(&text), None);
        assert_eq!(DiskStatusLine::parse(LINE), None);
        for bad in [
            "FERRY-GUEST disk tick=1 written=1 verified=1 mismatches=0 mib=32",
            "FERRY-GUEST disk tick=1 tick=1 written=1 verified=1 mismatches=0 mib=32 rate_mib=2",
            "FERRY-GUEST disk tick=x written=1 verified=1 mismatches=0 mib=32 rate_mib=2",
            "FERRY-GUEST disk tick=1 written=1 verified=1 mismatches=0 mib=32 rate_mib=-2",
            "FERRY-GUEST disk ready mib=32 rate_mib=2",
        ] {
            assert_eq!(DiskStatusLine::parse(bad), None, "{bad}");
        }

        for (line, text) in [
            (
                DiskLine::Ready {
                    mib: 32,
                    rate_mib: 2.5,
                },
                "FERRY-GUEST disk ready mib=32 rate_mib=2.5",
            ),
            (
                DiskLine::Resume { blocks: 8174 },
                "FERRY-GUEST disk resume blocks=8174",
            ),
            (
                DiskLine::VerifiedAfterRestart {
                    blocks: 8174,
                    mismatches: 0,
                    ahead: 3,
                },
                "FERRY-GUEST disk verified-after-restart blocks=8174 mismatches=0 ahead=3",
            ),
            (
                DiskLine::Error {
                    reason: "/dev/vda does not exist".into(),
                },
                "FERRY-GUEST disk error reason=/dev/vda does not exist",
            ),
        ] {
            assert_eq!(line.to_string(), text);
            assert_eq!(DiskLine::parse(&format!("{text}\r")), Some(line));
            assert_eq!(DiskStatusLine::parse(text), None);
        }
        assert_eq!(
            DiskLine::parse("FERRY-GUEST disk verified-after-restart blocks=5 mismatches=1"),
            Some(DiskLine::VerifiedAfterRestart {
                blocks: 5,
                mismatches: 1,
                ahead: 0
            })
        );
        assert_eq!(DiskLine::parse("FERRY-GUEST disk resume"), None);
        assert_eq!(DiskLine::parse("FERRY-GUEST disk resume blocks=x"), None);
        assert_eq!(DiskLine::parse("FERRY-GUEST disk other a=1"), None);
        assert_eq!(DiskLine::parse(LINE), None);
    }

    #[test]
    fn console_summary_with_disk() {
        let first_boot = "\
FERRY-GUEST boot kernel=6.1.0-56-cloud-amd64\r
FERRY-GUEST start mem_mib=8 rate_mib=5 pages=2048\r
FERRY-GUEST disk tick=1 written=3000 verified=0 mismatches=0 mib=32 rate_mib=2\r
FERRY-GUEST tick=1 written=2048 verified=10 mismatches=0 mem_mib=8 rate_mib=5\r
FERRY-GUEST disk ready mib=32 rate_mib=2\r
FERRY-GUEST disk tick=2 written=8686 verified=100 mismatches=0 mib=32 rate_mib=2\r
FERRY-GUEST DISK-MISMATCH block=7 expected_gen=3 found_gen=2 kind=stale found_block=7\r
FERRY-GUEST disk tick=3 written=9198 verified=900 mismatches=1 mib=32 rate_mib=2\r
";
        let s = ConsoleSummary::parse(first_boot);
        assert_eq!(
            s.disk_ready,
            Some(DiskReadyLine {
                mib: 32,
                rate_mib: 2.0
            })
        );
        assert_eq!(
            (s.disk_status_lines, s.disk_status_lines_after_ready),
            (3, 2)
        );
        assert_eq!(s.disk_last.map(|l| (l.tick, l.mismatches)), Some((3, 1)));
        assert_eq!(s.disk_mismatch_lines, 1);
        assert_eq!(disk_mismatch_line_count(first_boot), 1);
        assert_eq!(disk_status_lines(first_boot).count(), 3);
        assert_eq!(
            (s.disk_resumed, s.disk_verified_after_restart),
            (None, None)
        );
        // The memory side is untouched by disk lines.
        assert_eq!((s.status_lines, s.mismatch_lines), (1, 0));
        assert_eq!(mismatch_line_count(first_boot), 0);
        assert_eq!(s.last.map(|l| l.tick), Some(1));

        let second_boot = "\
FERRY-GUEST boot kernel=6.1.0-56-cloud-amd64\r
FERRY-GUEST disk resume blocks=8174\r
FERRY-GUEST disk tick=1 written=0 verified=4000 mismatches=0 mib=32 rate_mib=2\r
";
        let s = ConsoleSummary::parse(second_boot);
        assert_eq!(s.disk_resumed, Some(8174));
        assert_eq!(s.disk_verified_after_restart, None, "sweep still running");
        assert_eq!(s.disk_status_lines_after_ready, 0);
        let text = format!(
            "{second_boot}FERRY-GUEST disk verified-after-restart blocks=8174 mismatches=0 ahead=2\r
FERRY-GUEST disk tick=2 written=50 verified=8300 mismatches=0 mib=32 rate_mib=2\r
FERRY-GUEST disk error reason=read /dev/vda: EIO\r
"
        );
        let s = ConsoleSummary::parse(&text);
        assert_eq!(s.disk_verified_after_restart, Some((8174, 0)));
        assert_eq!(s.disk_ahead_after_restart, Some(2));
        assert_eq!(
            (s.disk_status_lines, s.disk_status_lines_after_ready),
            (2, 1)
        );
        assert_eq!(s.disk_error.as_deref(), Some("read /dev/vda: EIO"));
        assert_eq!(s.disk_ready, None);
    }

    proptest! {
        #[test]
        fn disk_status_round_trip(
            tick in any::<u64>(),
            written in any::<u64>(),
            verified in any::<u64>(),
            mismatches in any::<u64>(),
            mib in any::<u64>(),
            rate_mib in prop_oneof![(0u32..100_000).prop_map(f64::from), 0.0f64..1e12],
        ) {
            let s = DiskStatusLine { tick, written, verified, mismatches, mib, rate_mib };
            prop_assert_eq!(DiskStatusLine::parse(&s.to_string()), Some(s));
        }

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
