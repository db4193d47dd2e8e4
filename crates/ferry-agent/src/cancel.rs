//! Ending an outgoing migration on the source without handing the VM over: cancelling it
//! (the guest keeps running here) and reclaiming it (resuming a source whose migration
//! completed, once the destination was proven not to hold the VM).
//!
//! Both end in `cont` on the source, and `cont` on a source whose destination already
//! holds the VM runs two copies of one guest (two writers on its disks, one MAC in two
//! places). So both ask QEMU's own migration status first and decide by the pure rules
//! [`cancel_step`] and [`reclaim_rule`]; cancelling asks again after `migrate_cancel`,
//! because the switch-over can complete between the two.

use std::time::Duration;

use ferry_migration::MigrationStatus;

use crate::error::AgentError;
use crate::persist::Role;
use crate::runtime::{qmp_err, Pausable, QemuVm, MONITOR_TIMEOUT};

/// How long QEMU gets to wind a cancelled migration down.
const CANCEL_SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// Why resuming a source in this state would run the guest twice (or lose it).
const COMPLETED: &str = "the source's QEMU reports the migration completed; the destination \
    holds the VM, resuming here would run two copies";
const POSTCOPY: &str = "the migration is in post-copy: the guest runs on the destination and \
    this host holds only part of its memory, so it can only finish, not be cancelled";
const DEVICE: &str = "the switch-over is in progress (the device state is being sent); \
    resuming here could run two copies";

/// What cancelling may do with a source whose QEMU reports `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelStep {
    /// Nothing is in flight (no migration, or it failed or was cancelled): the guest can
    /// be resumed here.
    Settled,
    /// Pre-copy before the device state left (iterating, or held at `pre-switchover`):
    /// `migrate_cancel`, then wait for `Settled`.
    Cancel,
    /// Resuming here would be unsafe; the reason says why.
    Refuse(&'static str),
}

/// The cancel rule: see [`CancelStep`]. A status this build does not know is refused: it
/// is not proof that the destination lacks the VM.
pub fn cancel_step(status: MigrationStatus) -> CancelStep {
    match status {
        MigrationStatus::None | MigrationStatus::Cancelled | MigrationStatus::Failed => {
            CancelStep::Settled
        }
        MigrationStatus::Setup
        | MigrationStatus::Active
        | MigrationStatus::WaitUnplug
        | MigrationStatus::PreSwitchover
        | MigrationStatus::Cancelling => CancelStep::Cancel,
        MigrationStatus::Completed => CancelStep::Refuse(COMPLETED),
        MigrationStatus::Device => CancelStep::Refuse(DEVICE),
        s if s.is_postcopy() => CancelStep::Refuse(POSTCOPY),
        MigrationStatus::Colo => CancelStep::Refuse(
            "the QEMU is in COLO fault-tolerance mode, which Ferry does not drive; refusing to \
             resume it",
        ),
        _ => CancelStep::Refuse(
            "the source's QEMU reports a migration status this agent does not know; refusing \
             to resume a guest that may run on the destination",
        ),
    }
}

/// The reclaim rule: may a source whose QEMU reports `status`, with its guest `paused`
/// (postmigrate or paused), be resumed? Only a migration that is over (completed, or
/// failed/cancelled with the guest left paused) qualifies; the caller has the operator's
/// word that the destination does not hold the VM.
pub fn reclaim_rule(status: MigrationStatus, paused: bool) -> Result<(), &'static str> {
    let over = matches!(
        status,
        MigrationStatus::Completed | MigrationStatus::Failed | MigrationStatus::Cancelled
    );
    if !over {
        return Err(match status {
            s if s.is_postcopy() => POSTCOPY,
            s if s.is_iterating() || s == MigrationStatus::Cancelling => {
                "the migration has not completed (it is still in pre-copy or winding down); \
                 cancel it instead"
            }
            s if s.is_switching() => DEVICE,
            MigrationStatus::None => {
                "this QEMU never sent a migration; there is nothing to reclaim"
            }
            _ => {
                "the source's QEMU reports a migration status this agent cannot prove is over; \
                 refusing to resume it"
            }
        });
    }
    if !paused {
        return Err("the guest is not paused here (it already runs); there is nothing to reclaim");
    }
    Ok(())
}

/// QEMU's `query-migrate` status as Ferry types it (no status: no migration).
pub(crate) fn typed(status: Option<&ferry_qmp::MigrationStatus>) -> MigrationStatus {
    status
        .map(|s| MigrationStatus::parse(s.as_str()))
        .unwrap_or(MigrationStatus::None)
}

impl QemuVm {
    /// The migration status, asked with a bound: an unanswered monitor is an unknown
    /// state, and an unknown state never resumes a guest.
    async fn bounded_migration_status(&self) -> Result<MigrationStatus, AgentError> {
        match tokio::time::timeout(MONITOR_TIMEOUT, self.qmp.query_migrate()).await {
            Ok(Ok(info)) => Ok(typed(info.status.as_ref())),
            Ok(Err(e)) => Err(qmp_err("query-migrate", e)),
            Err(_) => Err(AgentError::refused(format!(
                "VM '{}': QEMU's monitor did not answer query-migrate within {} s; refusing \
                 to resume a source whose migration state is unknown",
                self.name,
                MONITOR_TIMEOUT.as_secs()
            ))),
        }
    }

    fn refusal(&self, why: &str) -> AgentError {
        AgentError::refused(format!("VM '{}': {why}", self.name))
    }

    /// Source: stop the migration and make sure the guest runs here, unless QEMU says the
    /// destination may already hold it (see [`cancel_step`]).
    pub(crate) async fn cancel_outgoing_checked(&self) -> Result<(), AgentError> {
        let first = self.bounded_migration_status().await?;
        match cancel_step(first) {
            CancelStep::Refuse(why) => return Err(self.refusal(why)),
            CancelStep::Settled => {}
            CancelStep::Cancel => {
                // "Not active" errors (it ended meanwhile) are fine: the re-check decides.
                let _ = self.qmp.migrate_cancel().await;
            }
        }
        self.abort_copies().await;
        let deadline = tokio::time::Instant::now() + CANCEL_SETTLE_TIMEOUT;
        let settled = loop {
            // Asked again even when the first answer was settled: the switch-over may have
            // completed in between, and then the guest must not be resumed.
            let now = self.bounded_migration_status().await?;
            match cancel_step(now) {
                CancelStep::Settled => break now,
                CancelStep::Refuse(why) => return Err(self.refusal(why)),
                CancelStep::Cancel if tokio::time::Instant::now() >= deadline => {
                    return Err(self.refusal(&format!(
                        "the migration did not wind down within {} s of migrate_cancel (QEMU \
                         still reports '{now}'); the guest was not resumed",
                        CANCEL_SETTLE_TIMEOUT.as_secs()
                    )));
                }
                CancelStep::Cancel => tokio::time::sleep(CANCEL_POLL).await,
            }
        };
        let run = self
            .qmp
            .query_status()
            .await
            .map_err(|e| qmp_err("query-status", e))?;
        if !run.running {
            // QEMU resumes a pre-copy source itself when the migration fails; this covers a
            // cancel in the pre-switchover pause, which leaves the vCPUs stopped.
            self.resume().await?;
        }
        tracing::info!(vm = %self.name, status = %settled, "outgoing migration settled; guest runs here");
        self.set_role(Role::Normal)
    }

    /// Source whose migration is over with the guest paused here: resume it, on the
    /// operator's (or server's) proof that the destination does not hold the VM.
    pub(crate) async fn reclaim(&self) -> Result<(), AgentError> {
        if self.role() != Role::Outgoing {
            return Err(self.refusal(&format!(
                "it is not an outgoing migration source here (its role is {:?}); only a source \
                 can be reclaimed",
                self.role()
            )));
        }
        let status = self.bounded_migration_status().await?;
        let run = self
            .qmp
            .query_status()
            .await
            .map_err(|e| qmp_err("query-status", e))?;
        let paused = !run.running
            && matches!(
                run.status,
                ferry_qmp::RunState::PostMigrate | ferry_qmp::RunState::Paused
            );
        reclaim_rule(status, paused).map_err(|why| self.refusal(why))?;
        // Leftover copy jobs or NBD nodes would keep writing to the destination's disks.
        self.abort_copies().await;
        self.resume().await?;
        tracing::warn!(vm = %self.name, %status, "source reclaimed: the guest runs here again");
        self.set_role(Role::Normal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_never_resumes_a_guest_the_destination_may_hold() {
        for &s in MigrationStatus::ALL
            .iter()
            .chain([&MigrationStatus::Unknown])
        {
            let step = cancel_step(s);
            let expected = match s {
                MigrationStatus::None | MigrationStatus::Cancelled | MigrationStatus::Failed => {
                    CancelStep::Settled
                }
                MigrationStatus::Setup
                | MigrationStatus::Active
                | MigrationStatus::WaitUnplug
                | MigrationStatus::PreSwitchover
                | MigrationStatus::Cancelling => CancelStep::Cancel,
                MigrationStatus::Completed => CancelStep::Refuse(COMPLETED),
                MigrationStatus::Device => CancelStep::Refuse(DEVICE),
                MigrationStatus::PostcopyDevice
                | MigrationStatus::PostcopyActive
                | MigrationStatus::PostcopyPaused
                | MigrationStatus::PostcopyRecoverSetup
                | MigrationStatus::PostcopyRecover => CancelStep::Refuse(POSTCOPY),
                MigrationStatus::Colo | MigrationStatus::Unknown => {
                    assert!(matches!(step, CancelStep::Refuse(_)), "{s}");
                    continue;
                }
            };
            assert_eq!(step, expected, "{s}");
        }
        let CancelStep::Refuse(why) = cancel_step(MigrationStatus::Completed) else {
            panic!("completed must be refused");
        };
        assert!(
            why.contains("completed") && why.contains("two copies"),
            "{why}"
        );
    }

    #[test]
    fn reclaim_only_a_paused_source_whose_migration_is_over() {
        for &s in MigrationStatus::ALL
            .iter()
            .chain([&MigrationStatus::Unknown])
        {
            let over = matches!(
                s,
                MigrationStatus::Completed | MigrationStatus::Failed | MigrationStatus::Cancelled
            );
            assert_eq!(reclaim_rule(s, true).is_ok(), over, "{s} paused");
            assert!(reclaim_rule(s, false).is_err(), "{s} running");
        }
        assert_eq!(
            reclaim_rule(MigrationStatus::PostcopyActive, true),
            Err(POSTCOPY)
        );
        let why = reclaim_rule(MigrationStatus::Active, true).unwrap_err();
        assert!(why.contains("cancel it instead"), "{why}");
    }

    #[test]
    fn no_status_is_no_migration() {
        assert_eq!(typed(None), MigrationStatus::None);
        assert_eq!(
            typed(Some(&ferry_qmp::MigrationStatus::Completed)),
            MigrationStatus::Completed
        );
    }
}
