//! Hold points for fault tests: a run that reaches a configured point writes a file and
//! waits until the file is removed. The test injects its fault at exactly that moment (a
//! killed daemon, a cut link) and then removes the file, instead of guessing with a sleep.
//!
//! `ferry server --test-hold-at transferring --test-hold-dir DIR`: the run writes
//! `DIR/<migration id>.<point>` (JSON: migration, VM, point) once the phase is saved and its
//! first step was taken (the stream started, the copy started, ...), and goes on when the
//! file is gone (at most [`MAX_HOLD`]).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// The longest a run waits at a hold point.
pub const MAX_HOLD: Duration = Duration::from_secs(600);

/// Where a run can be held: in each phase, right after its first step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldPoint {
    /// The destination QEMU listens; nothing was sent yet.
    Preparing,
    /// The source started copying the local disks.
    CopyingDisks,
    /// The source started sending memory.
    Transferring,
    /// The source completed the stream; the destination is not confirmed running yet.
    SwitchingOver,
    /// Post-copy started: the guest runs on the destination.
    PostCopy,
    /// Quick migration: the source saved the paused VM to the state file; the destination
    /// has not been told to load it yet.
    QuickSaved,
}

impl HoldPoint {
    pub const ALL: [HoldPoint; 6] = [
        HoldPoint::Preparing,
        HoldPoint::CopyingDisks,
        HoldPoint::Transferring,
        HoldPoint::SwitchingOver,
        HoldPoint::PostCopy,
        HoldPoint::QuickSaved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HoldPoint::Preparing => "preparing",
            HoldPoint::CopyingDisks => "copying_disks",
            HoldPoint::Transferring => "transferring",
            HoldPoint::SwitchingOver => "switching_over",
            HoldPoint::PostCopy => "post_copy",
            HoldPoint::QuickSaved => "quick_saved",
        }
    }
}

impl FromStr for HoldPoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HoldPoint::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "'{s}' is not a hold point (one of: {})",
                    HoldPoint::ALL.map(|p| p.as_str()).join(", ")
                )
            })
    }
}

impl std::fmt::Display for HoldPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The configured hold points and the directory their files go to.
#[derive(Debug, Clone)]
pub struct Hold {
    pub dir: PathBuf,
    pub at: Vec<HoldPoint>,
}

impl Hold {
    /// The file a run held at `point` writes.
    pub fn file(&self, id: Uuid, point: HoldPoint) -> PathBuf {
        self.dir.join(format!("{id}.{point}"))
    }

    pub(crate) async fn wait(&self, point: HoldPoint, id: Uuid, vm: &str) {
        if !self.at.contains(&point) {
            return;
        }
        let file = self.file(id, point);
        let body = serde_json::json!({"migration": id, "vm": vm, "point": point.as_str()});
        if let Err(e) = std::fs::write(&file, body.to_string()) {
            tracing::error!(file = %file.display(), "cannot write the hold file: {e}");
            return;
        }
        tracing::warn!(%point, file = %file.display(), "held for a fault test");
        let since = Instant::now();
        while file.exists() && since.elapsed() < MAX_HOLD {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = std::fs::remove_file(&file);
        tracing::warn!(%point, "released");
    }
}
