//! Claims: a new VM on a host, a stopped VM started again, a migration towards a host.
//! Each reads the cluster, asks a pure check (admission: capacity; disk ownership), and
//! writes the claim in one `BEGIN IMMEDIATE` transaction, so concurrent requests are
//! serialised by SQLite itself and cannot overcommit a host or attach an image twice.

use chrono::Utc;
use ferry_api::*;
use rusqlite::{params, TransactionBehavior};

use super::rows::{load_hosts, load_unfinished, load_vms};
use super::{json, ts, Store, StoreError, StoredHost};

/// What a claim is checked against: the cluster as the transaction sees it.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub hosts: Vec<StoredHost>,
    pub vms: Vec<Vm>,
    /// Migrations in flight (or waiting for an operator).
    pub migrations: Vec<Migration>,
}

/// Why a claim was not written.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The check refused it (no room, an image in use, ...).
    #[error("{0}")]
    Refused(ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for ClaimError {
    fn from(e: rusqlite::Error) -> Self {
        ClaimError::Store(StoreError::Sql(e))
    }
}

impl From<ClaimError> for ApiError {
    fn from(e: ClaimError) -> ApiError {
        match e {
            ClaimError::Refused(a) => a,
            ClaimError::Store(s) => s.into(),
        }
    }
}

type Check<'a> = &'a dyn Fn(&ClusterView) -> Result<(), ApiError>;

impl Store {
    /// Runs `write` in an immediate transaction after `check` accepted the cluster view.
    fn claim(
        &self,
        check: Check,
        write: impl FnOnce(&rusqlite::Transaction) -> Result<(), ClaimError>,
    ) -> Result<(), ClaimError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let view = ClusterView {
            hosts: load_hosts(&tx)?,
            vms: load_vms(&tx)?,
            migrations: load_unfinished(&tx)?,
        };
        check(&view).map_err(ClaimError::Refused)?;
        write(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// Inserts a new VM (usually `starting` on its host) if `check` accepts it and no VM of
    /// that name exists.
    pub fn claim_new_vm(&self, vm: &Vm, check: Check) -> Result<(), ClaimError> {
        self.claim(check, |tx| {
            let n = tx.execute(
                "INSERT OR IGNORE INTO vms (name, spec, host, state, migration, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?5)",
                params![
                    vm.spec.name,
                    json(&vm.spec)?,
                    vm.host,
                    vm.state.as_str(),
                    ts(&vm.created_at)
                ],
            )?;
            if n != 1 {
                return Err(ClaimError::Refused(ApiError::conflict(format!(
                    "a VM named '{}' already exists",
                    vm.spec.name
                ))));
            }
            Ok(())
        })
    }

    /// HA: moves a VM's record from its failed host `from` to `to` as `starting`, if it is
    /// still placed on `from`, not migrating, and `check` accepts (room on `to`).
    pub fn claim_restart(
        &self,
        name: &str,
        from: &str,
        to: &str,
        check: Check,
    ) -> Result<(), ClaimError> {
        self.claim(check, |tx| {
            let n = tx.execute(
                "UPDATE vms SET host = ?3, state = 'starting', updated_at = ?4
                 WHERE name = ?1 AND host = ?2 AND migration IS NULL",
                params![name, from, to, ts(&Utc::now())],
            )?;
            if n != 1 {
                return Err(ClaimError::Refused(ApiError::conflict(format!(
                    "VM '{name}' is no longer on {from}, or it is migrating"
                ))));
            }
            Ok(())
        })
    }

    /// Marks a VM that is not active and not migrating as `starting`, if `check` accepts.
    pub fn claim_start(&self, name: &str, check: Check) -> Result<(), ClaimError> {
        self.claim(check, |tx| {
            let n = tx.execute(
                "UPDATE vms SET state = 'starting', updated_at = ?2
                 WHERE name = ?1 AND migration IS NULL AND state IN ('stopped', 'crashed')",
                params![name, ts(&Utc::now())],
            )?;
            if n != 1 {
                return Err(ClaimError::Refused(ApiError::conflict(format!(
                    "VM '{name}' is already active or migrating"
                ))));
            }
            Ok(())
        })
    }

    /// Records a new migration and marks the VM as migrating, if `check` accepts (the
    /// destination has room for it, counting every migration already heading there): two
    /// concurrent requests for the same VM cannot both start, and concurrent migrations
    /// cannot overcommit a destination. In the same transaction the queue decides whether
    /// it starts now (`Pending`) or waits (`Queued`) under `limits`; `m.phase` says which.
    pub fn begin_migration(
        &self,
        m: &mut Migration,
        check: Check,
        limits: &MigrationLimits,
    ) -> Result<(), ClaimError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut view = ClusterView {
            hosts: load_hosts(&tx)?,
            vms: load_vms(&tx)?,
            migrations: load_unfinished(&tx)?,
        };
        check(&view).map_err(ClaimError::Refused)?;
        let mut candidate = m.clone();
        candidate.phase = Phase::Queued;
        view.migrations.push(candidate);
        m.phase = if crate::queue::decide(limits, &view.migrations)
            .start
            .contains(&m.id)
        {
            Phase::Pending
        } else {
            Phase::Queued
        };
        let claimed = tx.execute(
            "UPDATE vms SET migration = ?2, updated_at = ?3 WHERE name = ?1 AND migration IS NULL",
            params![m.vm, m.id.to_string(), ts(&m.created_at)],
        )?;
        if claimed != 1 {
            return Err(ClaimError::Refused(ApiError::conflict(format!(
                "VM '{}' is already migrating",
                m.vm
            ))));
        }
        tx.execute(
            "INSERT INTO migrations (id, vm, source, destination, phase, options, created_at,
                updated_at, run, priority, operation)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9, ?10)",
            params![
                m.id.to_string(),
                m.vm,
                m.source,
                m.destination,
                m.phase.as_str(),
                json(&m.options)?,
                ts(&m.created_at),
                json(&m.run)?,
                m.priority,
                m.operation.map(|o| o.to_string()),
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes a VM record if `check` accepts (e.g. it is not active anywhere).
    pub fn delete_vm_checked(&self, name: &str, check: Check) -> Result<(), ClaimError> {
        self.claim(check, |tx| {
            tx.execute("DELETE FROM vms WHERE name = ?1", [name])?;
            Ok(())
        })
    }

    /// The cluster as one consistent read (for checks that refuse before any agent call).
    pub fn view(&self) -> Result<ClusterView, StoreError> {
        let conn = self.conn();
        Ok(ClusterView {
            hosts: load_hosts(&conn)?,
            vms: load_vms(&conn)?,
            migrations: load_unfinished(&conn)?,
        })
    }
}
