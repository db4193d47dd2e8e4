//! Schedules (schema v10): each kept whole as JSON under its name, with the latest fire
//! time it dealt with in its own column, so the scheduler's "this fire time is mine" is a
//! compare-and-swap on it. A run is recorded — the schedule moved on, its operation and
//! event written — in one transaction before the server acts on it, so a restart never
//! acts on the same fire time twice.

use chrono::{DateTime, Utc};
use ferry_api::*;
use rusqlite::{params, OptionalExtension, Transaction, TransactionBehavior};

use super::{from_json, json, ts, NewEvent, Store, R};

impl Store {
    /// Adds a schedule; false (nothing written) if the name is taken.
    pub fn add_schedule(&self, s: &Schedule) -> R<bool> {
        Ok(self.conn().execute(
            "INSERT OR IGNORE INTO schedules (name, record, last_fire, created_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                s.name,
                json(s)?,
                s.last_fire.as_ref().map(ts),
                ts(&s.created_at)
            ],
        )? == 1)
    }

    /// Every schedule, by name.
    pub fn schedules(&self) -> R<Vec<Schedule>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT record FROM schedules ORDER BY name")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(from_json(&row?)?);
        }
        Ok(out)
    }

    pub fn schedule(&self, name: &str) -> R<Option<Schedule>> {
        let text: Option<String> = self
            .conn()
            .query_row(
                "SELECT record FROM schedules WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        text.as_deref().map(from_json).transpose()
    }

    /// Removes a schedule (its runs' operations stay); false if there is none of that name.
    pub fn remove_schedule(&self, name: &str) -> R<bool> {
        Ok(self
            .conn()
            .execute("DELETE FROM schedules WHERE name = ?1", [name])?
            == 1)
    }

    /// Records a run of `next.name` for `next.last_fire`: the schedule as it is after the
    /// run (`next`), the run's operation and its event, in one transaction on disk (synced
    /// even against power loss) before it returns. Only if the schedule still exists and
    /// its latest fire time dealt with is still `since` (what the caller decided on);
    /// false, and nothing written, otherwise.
    pub fn record_fire(
        &self,
        since: Option<DateTime<Utc>>,
        next: &Schedule,
        op: &Operation,
        events: &[NewEvent],
    ) -> R<bool> {
        self.durably(|tx| {
            if !move_on(tx, since, next)? {
                return Ok(false);
            }
            super::queue::insert_operation_row(tx, op)?;
            for e in events {
                self.insert_event(tx, e)?;
            }
            Ok(true)
        })
    }

    /// Records that the fire times up to `next.last_fire` were skipped (the same
    /// compare-and-swap as [`Store::record_fire`]), with the event that says so.
    pub fn record_skip(
        &self,
        since: Option<DateTime<Utc>>,
        next: &Schedule,
        event: &NewEvent,
    ) -> R<bool> {
        self.durably(|tx| {
            if !move_on(tx, since, next)? {
                return Ok(false);
            }
            self.insert_event(tx, event)?;
            Ok(true)
        })
    }

    /// Runs `f` in one immediate transaction committed with `synchronous = FULL`;
    /// committed only if `f` says true.
    fn durably(&self, f: impl FnOnce(&Transaction) -> R<bool>) -> R<bool> {
        let mut conn = self.conn();
        conn.pragma_update(None, "synchronous", "FULL")?;
        let done = (|| -> R<bool> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let ok = f(&tx)?;
            if ok {
                tx.commit()?;
            }
            Ok(ok)
        })();
        let restored = conn.pragma_update(None, "synchronous", "NORMAL");
        let ok = done?;
        restored?;
        Ok(ok)
    }
}

/// Moves the schedule's row to `next` if its latest fire time is still `since`.
fn move_on(tx: &Transaction, since: Option<DateTime<Utc>>, next: &Schedule) -> R<bool> {
    let n = tx.execute(
        "UPDATE schedules SET record = ?2, last_fire = ?3
         WHERE name = ?1 AND last_fire IS ?4",
        params![
            next.name,
            json(next)?,
            next.last_fire.as_ref().map(ts),
            since.as_ref().map(ts)
        ],
    )?;
    Ok(n == 1)
}
