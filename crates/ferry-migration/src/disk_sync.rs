//! When a disk copy starts blocking the guest's writes.
//!
//! A mirror in `background` mode lets the guest write at local speed and copies changed
//! blocks afterwards; one in `write-blocking` mode makes every guest write wait until the
//! destination has it too. Background is kinder to the guest but converges only while the
//! link outruns the guest's writes; write-blocking always converges. So a copy starts in the
//! background and switches, for good, when either
//!
//! - the disk is in sync (`ready`): from then on it stays in sync at the cost of one link
//!   round trip per write, which is what lets memory migrate next and the final flush in the
//!   switch-over pause be tiny; or
//! - the outstanding bytes have not reached a new low for [`STALL_LIMIT`]: the guest writes
//!   faster than the link, and only blocking its writes lets the copy finish.

/// How long the outstanding bytes may fail to fall before writes are blocked.
pub const STALL_LIMIT_MS: u64 = 5_000;

/// Why a copy switched to blocking the guest's writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockWrites {
    InSync,
    NotConverging,
}

impl BlockWrites {
    pub fn reason(self) -> &'static str {
        match self {
            BlockWrites::InSync => {
                "in sync; from now on guest writes reach both hosts before they complete"
            }
            BlockWrites::NotConverging => {
                "not converging (the guest writes faster than the link copies); blocking guest \
                 writes until the destination has them"
            }
        }
    }
}

/// Follows one disk's copy: feed it every observation, act on the first `Some`.
#[derive(Debug, Clone, Default)]
pub struct CopyWatch {
    best_outstanding: Option<u64>,
    best_at_ms: u64,
}

impl CopyWatch {
    /// `ready`: QEMU reports the mirror in sync; `outstanding`: bytes still to copy;
    /// `now_ms`: any monotonic clock.
    pub fn observe(&mut self, ready: bool, outstanding: u64, now_ms: u64) -> Option<BlockWrites> {
        if ready {
            return Some(BlockWrites::InSync);
        }
        match self.best_outstanding {
            Some(best) if outstanding >= best => (now_ms.saturating_sub(self.best_at_ms)
                >= STALL_LIMIT_MS)
                .then_some(BlockWrites::NotConverging),
            _ => {
                self.best_outstanding = Some(outstanding);
                self.best_at_ms = now_ms;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ready_blocks_writes_at_once() {
        assert_eq!(
            CopyWatch::default().observe(true, 0, 0),
            Some(BlockWrites::InSync)
        );
    }

    #[test]
    fn a_plateau_longer_than_the_limit_means_not_converging() {
        let mut w = CopyWatch::default();
        assert_eq!(w.observe(false, 1000, 0), None);
        assert_eq!(w.observe(false, 800, 1000), None);
        assert_eq!(w.observe(false, 900, 3000), None); // the guest dirtied more: no new low
        assert_eq!(w.observe(false, 800, 5999), None);
        assert_eq!(
            w.observe(false, 850, 6000),
            Some(BlockWrites::NotConverging)
        );
    }

    proptest! {
        /// A copy whose outstanding bytes keep falling is never told to block writes
        /// before it is ready, however slowly it falls.
        #[test]
        fn a_converging_copy_stays_in_the_background(
            steps in proptest::collection::vec((1u64..1_000_000, 1u64..4_999), 1..200)
        ) {
            let mut w = CopyWatch::default();
            let (mut outstanding, mut now) = (u64::MAX / 2, 0u64);
            for (drop, dt) in steps {
                outstanding = outstanding.saturating_sub(drop);
                now += dt;
                prop_assert_eq!(w.observe(false, outstanding, now), None);
            }
        }
    }
}
