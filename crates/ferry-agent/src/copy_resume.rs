//! A restarted agent and the storage copies of the QEMUs it adopts.
//!
//! The tasks that follow a copy ([`QemuVm::watch_copies`], which switches a mirror to
//! write-blocking, and [`QemuVm::finish_copies_at_switch_over`], which completes the
//! mirrors in the `pre-switchover` pause) died with the earlier agent, while QEMU's mirror
//! jobs ran on. Left alone, a migration with `pause-before-switchover` would wait in that
//! pause forever, and the server would see silence. So on adoption the agent asks QEMU
//! what runs (`query-migrate`, `query-block-jobs`) and either restarts the tasks or, if
//! the copies cannot be followed, aborts them (and the memory migration that depends on
//! them) and records why, so the migration status reports a clean failure.
//!
//! What the tasks need is in the VM record already: `copying_disks` (the disk indices;
//! job and node names derive from them) and the spec (the disks' labels).

use ferry_api::{BlockJobStatus, MigrationStatus};

use crate::disk_copy::{copy_node, progress_of};
use crate::runtime::QemuVm;

/// What QEMU reports about one disk's mirror job (None in [`copy_plan`]: no such job).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSeen {
    pub status: BlockJobStatus,
    pub error: Option<String>,
}

/// What to do with an adopted source's copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyPlan {
    /// The copies ended with the migration (they complete in the switch-over pause, so a
    /// migration past it has none left); nothing to follow.
    Over,
    /// Every mirror runs: restart the watcher, and the switch-over task when a memory
    /// migration is under way.
    Follow { finish_at_switch_over: bool },
    /// The migration failed or was cancelled, which ends the copies: only their clean-up
    /// is left (the failure already shows, with QEMU's own reason).
    CleanUp,
    /// The copies cannot be followed: abort them (and the memory migration, if one
    /// runs); the reason goes into the migration status.
    Abort(String),
}

/// The rule: `migration` is QEMU's migration status, `jobs[n]` what it reports about the
/// mirror of the `n`-th copied disk, labelled `labels[n]`.
pub fn copy_plan(
    migration: MigrationStatus,
    jobs: &[Option<JobSeen>],
    labels: &[String],
) -> CopyPlan {
    match migration {
        MigrationStatus::Completed | MigrationStatus::Device => return CopyPlan::Over,
        s if s.is_postcopy() => return CopyPlan::Over,
        MigrationStatus::Failed | MigrationStatus::Cancelled => return CopyPlan::CleanUp,
        MigrationStatus::None
        | MigrationStatus::Setup
        | MigrationStatus::Active
        | MigrationStatus::WaitUnplug
        | MigrationStatus::PreSwitchover => {}
        other => {
            return CopyPlan::Abort(format!(
                "the migration is '{other}', in which the copies cannot be followed"
            ))
        }
    }
    for (n, job) in jobs.iter().enumerate() {
        let label = labels.get(n).map(String::as_str).unwrap_or("a disk");
        match job {
            None => return CopyPlan::Abort(format!("the copy job of {label} is gone")),
            Some(JobSeen { error: Some(e), .. }) => {
                return CopyPlan::Abort(format!("the copy of {label} failed: {e}"))
            }
            Some(j) if j.status.is_concluded() || j.status == BlockJobStatus::Aborting => {
                return CopyPlan::Abort(format!(
                    "the copy job of {label} is '{}', no longer copying",
                    j.status
                ))
            }
            Some(j) if j.status == BlockJobStatus::Unknown => {
                return CopyPlan::Abort(format!(
                    "the copy job of {label} is in a state this agent does not know"
                ))
            }
            Some(_) => {}
        }
    }
    CopyPlan::Follow {
        finish_at_switch_over: migration != MigrationStatus::None,
    }
}

impl QemuVm {
    /// On adoption: restart the tasks of this source's storage copies, or abort them with
    /// a reason the migration status shows. A VM copying nothing is left alone.
    pub async fn resume_copies(&self) {
        let copying = self.record().copying_disks;
        if copying.is_empty() {
            return;
        }
        let labels: Vec<String> = copying.iter().map(|&i| self.disk_label(i)).collect();
        let plan = match (
            self.qmp.query_migrate().await,
            self.qmp.query_block_jobs().await,
        ) {
            (Ok(info), Ok(jobs)) => {
                let migration = crate::cancel::typed(info.status.as_ref());
                let seen: Vec<Option<JobSeen>> = copying
                    .iter()
                    .map(|&i| {
                        jobs.iter()
                            .find(|j| j.device == copy_node(i))
                            .map(|j| JobSeen {
                                status: BlockJobStatus::parse(&j.status),
                                error: j.error.clone(),
                            })
                    })
                    .collect();
                // The last known progress, for the status.
                *self.disk_progress.lock().unwrap_or_else(|p| p.into_inner()) = copying
                    .iter()
                    .zip(&labels)
                    .map(
                        |(&i, label)| match jobs.iter().find(|j| j.device == copy_node(i)) {
                            Some(j) => progress_of(label, j),
                            None => ferry_api::DiskCopyProgress {
                                disk: label.clone(),
                                status: BlockJobStatus::Null,
                                ..Default::default()
                            },
                        },
                    )
                    .collect();
                copy_plan(migration, &seen, &labels)
            }
            (Err(e), _) | (_, Err(e)) => {
                CopyPlan::Abort(format!("QEMU did not say what runs: {e}"))
            }
        };
        match plan {
            CopyPlan::Over => {
                tracing::info!(vm = %self.name, "adopted after its disk copies completed")
            }
            CopyPlan::Follow {
                finish_at_switch_over,
            } => {
                self.watch_copies(&copying);
                if finish_at_switch_over {
                    self.finish_copies_at_switch_over(self.qmp.events());
                }
                tracing::info!(vm = %self.name, disks = ?labels, finish_at_switch_over,
                    "adopted with disk copies running; following them again");
            }
            CopyPlan::CleanUp => self.abort_copies().await,
            CopyPlan::Abort(why) => self.abort_unfollowable_copies(&why).await,
        }
    }

    async fn abort_unfollowable_copies(&self, why: &str) {
        let reason = format!(
            "the agent restarted and could not follow the disk copy ({why}); the copy was aborted"
        );
        tracing::error!(vm = %self.name, "{reason}");
        // The memory migration waits for the copies at the switch-over; without them it
        // must not go on. (Harmless when it is already over.)
        let _ = self.qmp.migrate_cancel().await;
        self.abort_copies().await;
        {
            let mut progress = self.disk_progress.lock().unwrap_or_else(|p| p.into_inner());
            for p in progress.iter_mut().filter(|p| p.error.is_none()) {
                p.error = Some(reason.clone());
            }
        }
        *self.copy_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> Option<JobSeen> {
        Some(JobSeen {
            status: BlockJobStatus::Ready,
            error: None,
        })
    }

    #[test]
    fn copies_are_followed_only_while_every_mirror_runs() {
        let labels = vec!["local/d0".to_string(), "local/d1".to_string()];
        let both = [running(), running()];
        for &m in MigrationStatus::ALL
            .iter()
            .chain([&MigrationStatus::Unknown])
        {
            let plan = copy_plan(m, &both, &labels);
            match m {
                MigrationStatus::None => {
                    assert_eq!(
                        plan,
                        CopyPlan::Follow {
                            finish_at_switch_over: false
                        }
                    )
                }
                MigrationStatus::Setup
                | MigrationStatus::Active
                | MigrationStatus::WaitUnplug
                | MigrationStatus::PreSwitchover => {
                    assert_eq!(
                        plan,
                        CopyPlan::Follow {
                            finish_at_switch_over: true
                        },
                        "{m}"
                    )
                }
                MigrationStatus::Completed | MigrationStatus::Device => {
                    assert_eq!(plan, CopyPlan::Over, "{m}")
                }
                s if s.is_postcopy() => assert_eq!(plan, CopyPlan::Over, "{m}"),
                MigrationStatus::Failed | MigrationStatus::Cancelled => {
                    assert_eq!(plan, CopyPlan::CleanUp, "{m}")
                }
                _ => assert!(matches!(plan, CopyPlan::Abort(_)), "{m}: {plan:?}"),
            }
        }
    }

    #[test]
    fn a_gone_failed_or_concluded_job_aborts_with_its_disk_named() {
        let labels = vec!["local/d0".to_string(), "local/d1".to_string()];
        let cases = [
            (None, "gone"),
            (
                Some(JobSeen {
                    status: BlockJobStatus::Running,
                    error: Some("No space left".into()),
                }),
                "No space left",
            ),
            (
                Some(JobSeen {
                    status: BlockJobStatus::Concluded,
                    error: None,
                }),
                "concluded",
            ),
            (
                Some(JobSeen {
                    status: BlockJobStatus::Unknown,
                    error: None,
                }),
                "does not know",
            ),
        ];
        for (second, word) in cases {
            let plan = copy_plan(MigrationStatus::Active, &[running(), second], &labels);
            let CopyPlan::Abort(why) = plan else {
                panic!("{word}: {plan:?}");
            };
            assert!(why.contains("local/d1") && why.contains(word), "{why}");
        }
    }
}
