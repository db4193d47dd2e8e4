//! The migration state machine and the arithmetic of progress, as pure functions.
//!
//! This crate knows nothing about QEMU, HTTP or SQLite: the server feeds it what it observes
//! and persists what it returns. That keeps every decision testable on its own.
//!
//! ```text
//!            prepare ok              source migration started
//!  Pending ─────────────▶ Preparing ─────────────────────────▶ Transferring ──────────┐
//!     │                      │  │ local disks       disks in sync   ▲  │               │ controller
//!     │                      │  └──────────▶ CopyingDisks ──────────┘  │               │ starts
//!     │                      │                    │                    │ source        ▼ post-copy
//!     │                      │                    │                    │ completed   PostCopy
//!     │                      │                    │                    ▼               │  │ lost (a
//!     │                      │                    │              SwitchingOver         │  │ QEMU died)
//!     │                      │                    │                    │ destination   │  ▼
//!     │                      │                    │                    ▼ runs          │ Failed
//!     │                      │                    │                Completed ◀─────────┘
//!     │ failure/cancel       │ failure/cancel     │                    │    source sent all,
//!     └──────────────────────┴────────────────────┴──┬─────────────────┘    destination runs
//!                                                    ▼   (failure only before the destination runs)
//!                                               RollingBack ──▶ Failed | Cancelled
//! ```
//!
//! The one rule the diagram encodes: until the destination runs, every way out leads through
//! `RollingBack`, which leaves the VM running on the source and tears the destination down.
//! After the destination runs (`Completed`), the source is gone and there is no way back.
//! Post-copy is the exception made on purpose: the guest runs on the destination while its
//! memory is split between the hosts, so it can only finish (a broken link is paused and
//! resumed, see [`postcopy`]) or, if a QEMU dies, be lost; the controller starts it only
//! when the operator's policy allows it.
//!
//! Quick and cold migrations ([`mode`]) run their own small machines, [`quick`] and
//! [`cold`], whose steps map onto these phases (so the queue, the API and the CLI see one
//! kind of record).

pub mod cold;
pub mod convergence;
pub mod disk_sync;
pub mod follow;
pub mod mode;
pub mod pause;
pub mod phase;
pub mod postcopy;
pub mod progress;
pub mod quick;
pub mod recovery;
pub mod status;
pub mod watch;

pub use mode::MigrationMode;
pub use phase::{Phase, PhaseEvent, TransitionError};
pub use progress::{
    disk_totals, disks_in_sync, DiskCopyProgress, MigrationProgress, MigrationReport,
    NetworkReport, TimeParts,
};
pub use status::{BlockJobStatus, MigrationStatus};
