//! The migration queue and operations in the store. Every decision that takes a slot runs
//! inside one `BEGIN IMMEDIATE` transaction with the read it is based on, so concurrent
//! requests and the dispatcher cannot together start more than the limits allow.

use chrono::Utc;
use ferry_api::*;
use rusqlite::{params, OptionalExtension, TransactionBehavior};
use uuid::Uuid;

use super::claims::ClusterView;
use super::rows::{load_hosts, load_unfinished, load_vms, migration_row, write_migration};
use super::{from_json, json, ts, NewEvent, Store, StoreError, MIGRATION_SELECT, R};

const LIMITS_KEY: &str = "migration_limits";

impl Store {
    /// The cluster's migration limits (the defaults until an operator sets them).
    pub fn limits(&self) -> R<MigrationLimits> {
        Ok(match self.setting(LIMITS_KEY)? {
            Some(text) => from_json(&text)?,
            None => MigrationLimits::default(),
        })
    }

    pub fn set_limits(&self, limits: &MigrationLimits) -> R<()> {
        self.set_setting(LIMITS_KEY, &json(limits)?)
    }

    /// Takes the queued migrations `pick` chooses (from the cluster as this transaction
    /// sees it) out of the queue: each becomes `Pending`, with its `migration.started`
    /// event, in the same transaction.
    pub fn dequeue(
        &self,
        pick: &dyn Fn(&ClusterView) -> Vec<Uuid>,
        event: &dyn Fn(&Migration) -> NewEvent,
    ) -> R<Vec<Migration>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let view = ClusterView {
            hosts: load_hosts(&tx)?,
            vms: load_vms(&tx)?,
            migrations: load_unfinished(&tx)?,
        };
        let mut started = Vec::new();
        for id in pick(&view) {
            let Some(m) = view
                .migrations
                .iter()
                .find(|m| m.id == id && m.phase == Phase::Queued)
            else {
                continue;
            };
            let mut m = m.clone();
            m.phase = m
                .phase
                .next(PhaseEvent::Dequeued)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            m.updated_at = Utc::now();
            write_migration(&tx, &m, None)?;
            self.insert_event(&tx, &event(&m))?;
            started.push(m);
        }
        tx.commit()?;
        Ok(started)
    }

    /// Takes a migration out of the queue without starting it: the operator cancelled it
    /// (`cancelled`), or its checks failed when its turn came. Nothing was touched on any
    /// host, so this is final at once; the VM is released in the same transaction. None
    /// if it is no longer queued (it just started: cancel it the ordinary way).
    pub fn withdraw_queued(
        &self,
        id: Uuid,
        cancelled: bool,
        reason: &str,
        event: &dyn Fn(&Migration) -> NewEvent,
    ) -> R<Option<Migration>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found = tx
            .query_row(
                &format!("{MIGRATION_SELECT} WHERE id = ?1"),
                [id.to_string()],
                migration_row,
            )
            .optional()?
            .transpose()?;
        let Some(mut m) = found.filter(|m| m.phase == Phase::Queued) else {
            return Ok(None);
        };
        m.phase = m
            .phase
            .next(PhaseEvent::Withdrawn { cancelled })
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let now = Utc::now();
        m.updated_at = now;
        m.finished_at = Some(now);
        m.error = Some(reason.to_string());
        write_migration(&tx, &m, None)?;
        self.insert_event(&tx, &event(&m))?;
        tx.commit()?;
        Ok(Some(m))
    }

    /// The migrations an operation requested, oldest first.
    pub fn migrations_of(&self, operation: Uuid) -> R<Vec<Migration>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "{MIGRATION_SELECT} WHERE operation = ?1 ORDER BY created_at"
        ))?;
        let rows = stmt.query_map([operation.to_string()], migration_row)?;
        rows.map(|r| r.map_err(StoreError::from).and_then(|m| m))
            .collect()
    }

    // ---- operations -------------------------------------------------------------------

    /// Records a new operation with the event that announces it.
    pub fn insert_operation(&self, op: &Operation, event: &NewEvent) -> R<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert_operation_row(&tx, op)?;
        self.insert_event(&tx, event)?;
        tx.commit()?;
        Ok(())
    }

    /// Saves an operation's record, with the events that report the change, if nobody
    /// saved it since `op` was read (its `revision`); false (and nothing written) if
    /// somebody did: the caller reads it again and redoes its change.
    pub fn save_operation(&self, op: &Operation, events: &[NewEvent]) -> R<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut next = op.clone();
        next.revision = op.revision + 1;
        let n = tx.execute(
            "UPDATE operations SET state = ?2, record = ?3, updated_at = ?4
             WHERE id = ?1 AND json_extract(record, '$.revision') IS ?5",
            params![
                op.id.to_string(),
                op.state.as_str(),
                json(&next)?,
                ts(&op.updated_at),
                op.revision as i64
            ],
        )?;
        if n != 1 {
            return Ok(false);
        }
        for e in events {
            self.insert_event(&tx, e)?;
        }
        tx.commit()?;
        Ok(true)
    }

    pub fn operation(&self, id: Uuid) -> R<Option<Operation>> {
        let text: Option<String> = self
            .conn()
            .query_row(
                "SELECT record FROM operations WHERE id = ?1",
                [id.to_string()],
                |r| r.get(0),
            )
            .optional()?;
        text.as_deref().map(from_json).transpose()
    }

    /// The newest `limit` operations, newest first.
    pub fn operations(&self, limit: u32) -> R<Vec<Operation>> {
        self.operations_where("1 = 1 ORDER BY created_at DESC LIMIT ?1", limit)
    }

    /// Operations not finished (a restarted server carries them on).
    pub fn unfinished_operations(&self) -> R<Vec<Operation>> {
        self.operations_where(
            "state IN ('running', 'cancelling') AND ?1 > 0 ORDER BY created_at",
            u32::MAX,
        )
    }

    fn operations_where(&self, clause: &str, limit: u32) -> R<Vec<Operation>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT record FROM operations WHERE {clause}"))?;
        let rows = stmt.query_map([limit], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(from_json(&row?)?);
        }
        Ok(out)
    }
}

/// Writes a new operation's row (inside the caller's transaction).
pub(super) fn insert_operation_row(tx: &rusqlite::Connection, op: &Operation) -> R<()> {
    tx.execute(
        "INSERT INTO operations (id, kind, host, state, record, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        params![
            op.id.to_string(),
            json(&op.kind)?,
            op.host,
            op.state.as_str(),
            json(op)?,
            ts(&op.created_at)
        ],
    )?;
    Ok(())
}
