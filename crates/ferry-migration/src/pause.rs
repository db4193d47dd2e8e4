//! Where the switch-over pause goes, from QEMU's own checkpoints.
//!
//! QEMU (8.2 and later) marks the steps of the pause with the trace event
//! `vmstate_downtime_checkpoint`; the agents turn it on for both QEMUs of a migration and
//! read the lines back from QEMU's log (`GET /v1/vms/{name}/migration/checkpoints`) (`-msg timestamp=on` stamps each with the host's
//! wall clock: `PID@SECONDS.MICROS:vmstate_downtime_checkpoint NAME`). The pieces:
//!
//! ```text
//!  source                                                     destination
//!  src-downtime-start ─ stop vCPUs ─▶ src-vm-stopped
//!     ─ last bitmap sync + RAM left ─▶ src-iterable-saved
//!     ─ device state ─▶ src-non-iterable-saved
//!     ─ the stream's tail and the destination's load ─────────▶ dst-precopy-loadvm-completed
//!                                                 ─ resume ─▶ dst-precopy-bh-vm-started
//! ```
//!
//! The piece that crosses hosts compares two hosts' clocks (the lab runs on one machine;
//! across hosts it is as good as their time sync). Pure: the agents read the log, the
//! orchestrator hands both sides' checkpoints to [`PauseParts::from_checkpoints`].

use serde::{Deserialize, Serialize};

/// The checkpoints Ferry reads, in the order QEMU passes them. Anything else in the log is
/// not a checkpoint (QEMU's log is not trusted to name its own).
pub const CHECKPOINTS: [&str; 9] = [
    "src-downtime-start",
    "src-vm-stopped",
    "src-iterable-saved",
    "src-non-iterable-saved",
    "dst-precopy-loadvm-completed",
    "dst-precopy-bh-enter",
    "dst-precopy-bh-announced",
    "dst-precopy-bh-vm-started",
    "src-downtime-end",
];

/// The trace event QEMU marks them with.
pub const TRACE_EVENT: &str = "vmstate_downtime_checkpoint";

/// One checkpoint: its name (one of [`CHECKPOINTS`]) and when, µs since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub name: String,
    pub unix_us: u64,
}

/// One log line as a checkpoint, if it is one.
pub fn parse_line(line: &str) -> Option<Checkpoint> {
    let (stamp, rest) = line.split_once(':')?;
    let (_pid, time) = stamp.split_once('@')?;
    let (secs, micros) = time.split_once('.')?;
    if micros.len() != 6 {
        return None;
    }
    let secs: u64 = secs.parse().ok()?;
    let micros: u64 = micros.parse().ok()?;
    let mut words = rest.split_whitespace();
    if words.next()? != TRACE_EVENT {
        return None;
    }
    // QEMU 10 prints the bare name; older ones `checkpoint=NAME`.
    let word = words.next()?;
    let name = word.strip_prefix("checkpoint=").unwrap_or(word);
    let name = CHECKPOINTS.iter().find(|c| **c == name)?;
    Some(Checkpoint {
        name: name.to_string(),
        unix_us: secs.checked_mul(1_000_000)?.checked_add(micros)?,
    })
}

/// The checkpoints of the last pause in a log (a QEMU that took part in several migrations
/// logs each): from the last first-step of its side on.
pub fn last_pause(log: &str) -> Vec<Checkpoint> {
    let all: Vec<Checkpoint> = log.lines().filter_map(parse_line).collect();
    let first = |c: &Checkpoint| c.name == CHECKPOINTS[0] || c.name == CHECKPOINTS[4];
    match all.iter().rposition(first) {
        Some(i) => all[i..].to_vec(),
        None => Vec::new(),
    }
}

/// The pause in pieces, ms (each None when a checkpoint is missing).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PauseParts {
    /// Stopping the vCPUs.
    pub stop_ms: Option<f64>,
    /// The last dirty-bitmap sync and the RAM still dirty.
    pub ram_ms: Option<f64>,
    /// Every device's state.
    pub devices_ms: Option<f64>,
    /// The stream's tail in flight and the destination loading it (crosses hosts' clocks).
    pub load_ms: Option<f64>,
    /// The destination announcing the NICs and starting the vCPUs.
    pub resume_ms: Option<f64>,
    /// From the source's stop to the destination's vCPUs running.
    pub total_ms: Option<f64>,
}

impl PauseParts {
    /// The pieces from both sides' checkpoints; None when neither side has any.
    pub fn from_checkpoints(source: &[Checkpoint], destination: &[Checkpoint]) -> Option<Self> {
        if source.is_empty() && destination.is_empty() {
            return None;
        }
        let at = |name: &str| {
            source
                .iter()
                .chain(destination)
                .find(|c| c.name == name)
                .map(|c| c.unix_us)
        };
        let span = |from: &str, to: &str| match (at(from), at(to)) {
            (Some(a), Some(b)) if b >= a => Some((b - a) as f64 / 1000.0),
            _ => None,
        };
        Some(PauseParts {
            stop_ms: span("src-downtime-start", "src-vm-stopped"),
            ram_ms: span("src-vm-stopped", "src-iterable-saved"),
            devices_ms: span("src-iterable-saved", "src-non-iterable-saved"),
            load_ms: span("src-non-iterable-saved", "dst-precopy-loadvm-completed"),
            resume_ms: span("dst-precopy-loadvm-completed", "dst-precopy-bh-vm-started"),
            total_ms: span("src-downtime-start", "dst-precopy-bh-vm-started"),
        })
    }

    /// One line: `stop 1.2 + RAM 8.0 + devices 3.1 + load 5.5 + resume 0.9 = 18.7 ms`.
    pub fn summary(&self) -> String {
        let f = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{v:.1}"));
        format!(
            "stop {} + RAM {} + devices {} + load {} + resume {} = {} ms",
            f(self.stop_ms),
            f(self.ram_ms),
            f(self.devices_ms),
            f(self.load_ms),
            f(self.resume_ms),
            f(self.total_ms)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE_LOG: &str = "\
15796@1796300301.266505:vmstate_downtime_checkpoint src-downtime-start
15796@1796300301.266604:vmstate_downtime_checkpoint src-vm-stopped
15796@1796300301.266622:vmstate_downtime_save type=iterable idstr=ram instance_id=0 downtime=13
15796@1796300301.274624:vmstate_downtime_checkpoint src-iterable-saved
15796@1796300301.277633:vmstate_downtime_checkpoint src-non-iterable-saved
15796@1796300301.300000:vmstate_downtime_checkpoint src-downtime-end
";
    const DEST_LOG: &str = "\
qemu-system-x86_64: some warning
16000@1796300301.281000:vmstate_downtime_checkpoint dst-precopy-loadvm-completed
16000@1796300301.281100:vmstate_downtime_checkpoint dst-precopy-bh-enter
16000@1796300301.281500:vmstate_downtime_checkpoint dst-precopy-bh-announced
16000@1796300301.282000:vmstate_downtime_checkpoint dst-precopy-bh-vm-started
";

    #[test]
    fn a_pause_splits_into_its_pieces() {
        let p = PauseParts::from_checkpoints(&last_pause(SOURCE_LOG), &last_pause(DEST_LOG))
            .expect("parts");
        let close = |v: Option<f64>, want: f64| (v.expect("piece") - want).abs() < 0.001;
        assert!(close(p.stop_ms, 0.099), "{p:?}");
        assert!(close(p.ram_ms, 8.020), "{p:?}");
        assert!(close(p.devices_ms, 3.009), "{p:?}");
        assert!(close(p.load_ms, 3.367), "{p:?}");
        assert!(close(p.resume_ms, 1.0), "{p:?}");
        assert!(close(p.total_ms, 15.495), "{p:?}");
        assert!(p.summary().ends_with("= 15.5 ms"), "{}", p.summary());
    }

    #[test]
    fn only_the_last_pause_of_a_log_counts() {
        let twice = format!(
            "{}{}",
            SOURCE_LOG.replace("1796300301", "1796300001"),
            SOURCE_LOG
        );
        let last = last_pause(&twice);
        assert_eq!(last.len(), 5);
        assert!(last.iter().all(|c| c.unix_us / 1_000_000 == 1796300301));
    }

    #[test]
    fn lines_that_are_not_known_checkpoints_are_ignored() {
        for bad in [
            "",
            "garbage",
            "1@1.5:vmstate_downtime_checkpoint src-vm-stopped",
            "1@x.000001:vmstate_downtime_checkpoint src-vm-stopped",
            "1@1.000001:vmstate_downtime_checkpoint made-up-name",
            "1@1.000001:vmstate_downtime_save src-vm-stopped",
            "1@99999999999999999999.000001:vmstate_downtime_checkpoint src-vm-stopped",
        ] {
            assert_eq!(parse_line(bad), None, "{bad}");
        }
        assert_eq!(
            parse_line("7@2.000003:vmstate_downtime_checkpoint checkpoint=src-vm-stopped"),
            Some(Checkpoint {
                name: "src-vm-stopped".into(),
                unix_us: 2_000_003
            })
        );
        assert_eq!(PauseParts::from_checkpoints(&[], &[]), None);
    }
}
