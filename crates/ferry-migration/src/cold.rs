//! Cold migration: a stopped VM moves. Its local-pool disks are copied into the
//! destination's pool of the same name, each copy is verified (size and a checksum of the
//! guest-visible content, computed on each host from its own file), and only then does the
//! VM's record move to the destination; the source's disks are deleted after that.
//!
//! ```text
//!  Pending ─▶ Copying ─▶ Verifying ─▶ Completed ─▶ (source disks deleted)
//!     │          │           │
//!     └──────────┴───────────┴──▶ RollingBack ─▶ Failed | Cancelled
//!                  (the destination's copies deleted; the source was only read)
//! ```
//!
//! Nothing on the source is written before `Completed`: the copy and the checksum only read
//! its images (the VM is claimed by the migration, so it cannot be started meanwhile). So
//! every failure before the record moves rolls back by deleting what was made on the
//! destination, and the source's disks go only once every copy was verified and the move
//! is durable.

use serde::{Deserialize, Serialize};

use crate::phase::Phase;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColdStep {
    #[default]
    Pending,
    /// The destination makes empty targets and the source copies its local disks into them.
    Copying,
    /// Both hosts checksum their copy of every disk.
    Verifying,
    /// The VM's record is on the destination (still stopped).
    Completed,
    /// A failure or a cancel before `Completed`: the destination's copies are deleted.
    RollingBack,
    Failed,
    Cancelled,
}

impl ColdStep {
    pub const ALL: [ColdStep; 7] = [
        ColdStep::Pending,
        ColdStep::Copying,
        ColdStep::Verifying,
        ColdStep::Completed,
        ColdStep::RollingBack,
        ColdStep::Failed,
        ColdStep::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ColdStep::Pending => "pending",
            ColdStep::Copying => "copying",
            ColdStep::Verifying => "verifying",
            ColdStep::Completed => "completed",
            ColdStep::RollingBack => "rolling_back",
            ColdStep::Failed => "failed",
            ColdStep::Cancelled => "cancelled",
        }
    }

    /// The migration's phase in this step.
    pub fn phase(self) -> Phase {
        match self {
            ColdStep::Pending => Phase::Pending,
            ColdStep::Copying | ColdStep::Verifying => Phase::CopyingDisks,
            ColdStep::Completed => Phase::Completed,
            ColdStep::RollingBack => Phase::RollingBack,
            ColdStep::Failed => Phase::Failed,
            ColdStep::Cancelled => Phase::Cancelled,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ColdStep::Completed | ColdStep::Failed | ColdStep::Cancelled
        )
    }
}

impl std::fmt::Display for ColdStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColdEvent {
    Start,
    /// Every disk was copied.
    DisksCopied,
    /// Every copy matched its source (see [`verify`]).
    Verified,
    Failure,
    CancelRequested,
    RolledBack {
        cancelled: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a cold migration in step '{from}' cannot take event {event:?}")]
pub struct ColdRefusal {
    pub from: ColdStep,
    pub event: ColdEvent,
}

impl ColdStep {
    pub fn next(self, event: ColdEvent) -> Result<ColdStep, ColdRefusal> {
        use ColdEvent as E;
        use ColdStep as S;
        let next = match (self, event) {
            (S::Pending, E::Start) => S::Copying,
            (S::Copying, E::DisksCopied) => S::Verifying,
            (S::Verifying, E::Verified) => S::Completed,
            (
                S::Pending | S::Copying | S::Verifying | S::RollingBack,
                E::Failure | E::CancelRequested,
            ) => S::RollingBack,
            (S::RollingBack, E::RolledBack { cancelled: false }) => S::Failed,
            (S::RollingBack, E::RolledBack { cancelled: true }) => S::Cancelled,
            (from, event) => return Err(ColdRefusal { from, event }),
        };
        Ok(next)
    }
}

/// A disk's guest-visible content as one host sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSum {
    /// The virtual size, bytes.
    pub virtual_size: u64,
    /// Hex digest of the content (see `ferry_agent::disk_sum` for how it is computed).
    pub digest: String,
}

/// Whether the destination's copy is the source's disk: same size, same digest.
pub fn verify(label: &str, source: &DiskSum, dest: &DiskSum) -> Result<(), String> {
    if source.digest.is_empty() || dest.digest.is_empty() {
        return Err(format!("{label}: a checksum is missing"));
    }
    if source.virtual_size != dest.virtual_size {
        return Err(format!(
            "{label}: the copy is {} bytes, the source {} bytes",
            dest.virtual_size, source.virtual_size
        ));
    }
    if source.digest != dest.digest {
        return Err(format!(
            "{label}: the copy's checksum {} differs from the source's {}",
            short(&dest.digest),
            short(&source.digest)
        ));
    }
    Ok(())
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(16)]
}

/// Whether the source's disks may be deleted: the move is durable and every copy matched.
pub fn may_delete_source_disks(step: ColdStep, verified: &[bool]) -> bool {
    step == ColdStep::Completed && verified.iter().all(|v| *v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sum(size: u64, digest: &str) -> DiskSum {
        DiskSum {
            virtual_size: size,
            digest: digest.into(),
        }
    }

    #[test]
    fn the_happy_path_and_its_phases() {
        let mut s = ColdStep::Pending;
        for e in [
            ColdEvent::Start,
            ColdEvent::DisksCopied,
            ColdEvent::Verified,
        ] {
            s = s.next(e).unwrap();
        }
        assert_eq!(s, ColdStep::Completed);
        for s in ColdStep::ALL {
            assert_eq!(s.is_terminal(), s.phase().is_terminal(), "{s}");
        }
        assert!(ColdStep::Copying.next(ColdEvent::Verified).is_err());
    }

    #[test]
    fn verification_needs_equal_size_and_digest() {
        let a = sum(64 << 20, "ab12");
        assert!(verify("local/d", &a, &a.clone()).is_ok());
        let e = verify("local/d", &a, &sum(32 << 20, "ab12")).unwrap_err();
        assert!(e.contains("33554432 bytes"), "{e}");
        let e = verify("local/d", &a, &sum(64 << 20, "ab13")).unwrap_err();
        assert!(e.contains("differs"), "{e}");
        assert!(verify("local/d", &sum(1, ""), &sum(1, "")).is_err());
    }

    #[test]
    fn source_disks_go_only_after_a_verified_move() {
        assert!(may_delete_source_disks(ColdStep::Completed, &[true, true]));
        assert!(may_delete_source_disks(ColdStep::Completed, &[]));
        assert!(!may_delete_source_disks(
            ColdStep::Completed,
            &[true, false]
        ));
        for s in ColdStep::ALL
            .into_iter()
            .filter(|s| *s != ColdStep::Completed)
        {
            assert!(!may_delete_source_disks(s, &[true]), "{s}");
        }
    }

    fn any_event() -> impl Strategy<Value = ColdEvent> {
        prop_oneof![
            Just(ColdEvent::Start),
            Just(ColdEvent::DisksCopied),
            Just(ColdEvent::Verified),
            Just(ColdEvent::Failure),
            Just(ColdEvent::CancelRequested),
            any::<bool>().prop_map(|cancelled| ColdEvent::RolledBack { cancelled }),
        ]
    }

    proptest! {
        /// The record moves only after every copy was verified; terminal steps stay; a
        /// failure or cancel before that always goes through the rollback.
        #[test]
        fn no_event_sequence_moves_an_unverified_vm(events in proptest::collection::vec(any_event(), 0..30)) {
            let mut s = ColdStep::Pending;
            for e in events {
                match s.next(e) {
                    Ok(n) => {
                        prop_assert!(!s.is_terminal());
                        if n == ColdStep::Completed {
                            prop_assert_eq!((s, e), (ColdStep::Verifying, ColdEvent::Verified));
                        }
                        if matches!(n, ColdStep::Failed | ColdStep::Cancelled) {
                            prop_assert_eq!(s, ColdStep::RollingBack);
                        }
                        s = n;
                    }
                    Err(err) => prop_assert_eq!(err.from, s),
                }
            }
        }
    }
}
