//! Following a migration to its end: the poll loop (patient with a restarting server) and
//! the progress bar it draws on stderr. `ferry vm migrate`, the demo and the benchmarks all
//! follow migrations this way.

use std::time::Duration;

use ferry_api::client::{ClientError, ServerClient};
use ferry_api::*;
use indicatif::{ProgressBar, ProgressStyle};

use crate::console::{bytes, millis, rate};

/// Polls the migration until it ends, drawing a progress bar on stderr when asked.
pub async fn follow(c: &ServerClient, m: &Migration, bar: bool) -> Result<Migration, ClientError> {
    let pb = if bar {
        ProgressBar::new(1000)
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template("{spinner} {prefix:<13} [{bar:30}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.enable_steady_tick(Duration::from_millis(120));
    let mut failures = 0;
    loop {
        let cur = match c.migration(m.id).await {
            Ok(cur) => {
                failures = 0;
                cur
            }
            // The server may be restarting; the migration is its business, keep asking.
            Err(e) if failures < 20 => {
                failures += 1;
                pb.set_message(format!("(server not answering: {e})"));
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        pb.set_prefix(cur.phase.to_string());
        if let Some(q) = &cur.queue {
            pb.set_message(format!("position {}: {}", q.position, waits_for(q)));
        }
        if let Some(p) = &cur.progress {
            let (fraction, message) = progress_line(cur.phase, p);
            pb.set_position((fraction * 1000.0) as u64);
            pb.set_message(message);
        }
        if cur.phase.is_settled() {
            if cur.phase == Phase::Completed {
                pb.set_position(1000);
            }
            pb.finish_and_clear();
            return Ok(cur);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What holds a queued migration back, in one line.
pub fn waits_for(q: &QueueStanding) -> String {
    if q.waits_for.is_empty() {
        return "starts at the next look".to_string();
    }
    q.waits_for
        .iter()
        .map(|w| w.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The progress bar's fill and text: disks while they are copied, memory afterwards.
pub fn progress_line(phase: Phase, p: &MigrationProgress) -> (f64, String) {
    let (copied, total, outstanding) = disk_totals(&p.disks);
    if phase == Phase::CopyingDisks {
        let fraction = if total == 0 {
            0.0
        } else {
            copied as f64 / total as f64
        };
        return (
            fraction,
            format!(
                "disks {} / {}  {}  {} outstanding",
                bytes(copied),
                bytes(total),
                rate(p.bandwidth_bytes_per_s),
                bytes(outstanding)
            ),
        );
    }
    let mut message = format!(
        "{} / {}  {}  dirty {}  pass {}",
        bytes(p.transferred_bytes),
        bytes(p.ram_total_bytes),
        rate(p.bandwidth_bytes_per_s),
        rate(p.dirty_rate_bytes_per_s),
        p.passes
    );
    if let Some(d) = p.predicted_downtime_ms {
        message.push_str(&format!("  predicted pause {}", millis(d)));
    }
    if p.controller_step != ControllerStep::Precopy {
        message.push_str(&format!("  [{}]", p.controller_step));
    }
    if !p.disks.is_empty() {
        message.push_str(&format!("  disks in sync ({})", bytes(copied)));
    }
    if phase == Phase::PostCopy {
        // The guest runs on the destination; what is left is the source's share of pages.
        let message = format!(
            "post-copy {}: {} still on the source  {}  [{}]",
            p.qemu_status.as_str().trim_start_matches("postcopy-"),
            bytes(p.remaining_bytes),
            rate(p.bandwidth_bytes_per_s),
            p.controller_step
        );
        return (p.fraction_done(), message);
    }
    (p.fraction_done(), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_shows_disks_while_they_are_copied() {
        let mut p = MigrationProgress {
            ram_total_bytes: 1 << 30,
            remaining_bytes: 1 << 29,
            disks: vec![DiskCopyProgress {
                disk: "local/d1".into(),
                total_bytes: 4 << 30,
                copied_bytes: 1 << 30,
                ..Default::default()
            }],
            ..Default::default()
        };
        let (f, line) = progress_line(Phase::CopyingDisks, &p);
        assert!((f - 0.25).abs() < 1e-9);
        assert!(line.starts_with("disks "), "{line}");
        assert!(line.contains("outstanding"), "{line}");
        p.disks[0].copied_bytes = 4 << 30;
        let (f, line) = progress_line(Phase::Transferring, &p);
        assert!((f - 0.5).abs() < 1e-9, "memory fraction now");
        assert!(
            line.contains("pass") && line.contains("disks in sync"),
            "{line}"
        );
    }
}
