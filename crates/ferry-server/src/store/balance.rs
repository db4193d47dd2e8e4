//! The balancer's settings and recommendations in the store.

use chrono::Utc;
use ferry_api::*;
use rusqlite::{params, OptionalExtension};
use uuid::Uuid;

use super::{from_json, json, ts, Store, R};

const BALANCE_KEY: &str = "balance";

impl Store {
    /// The balancer's settings (the defaults, mode off, until an operator sets them).
    pub fn balance_settings(&self) -> R<BalanceSettings> {
        Ok(match self.setting(BALANCE_KEY)? {
            Some(text) => from_json(&text)?,
            None => BalanceSettings::default(),
        })
    }

    pub fn set_balance_settings(&self, s: &BalanceSettings) -> R<()> {
        self.set_setting(BALANCE_KEY, &json(s)?)
    }

    /// Records a run's recommendations; the open ones of earlier runs are superseded (the
    /// cluster they were made for has changed), in one transaction.
    pub fn replace_recommendations(&self, new: &[Recommendation]) -> R<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let open: Vec<String> = {
            let mut stmt = tx.prepare("SELECT record FROM recommendations WHERE state = 'open'")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for text in open {
            let mut r: Recommendation = from_json(&text)?;
            r.state = RecommendationState::Superseded;
            r.updated_at = Some(Utc::now());
            tx.execute(
                "UPDATE recommendations SET state = ?2, record = ?3 WHERE id = ?1",
                params![r.id.to_string(), r.state.as_str(), json(&r)?],
            )?;
        }
        for r in new {
            tx.execute(
                "INSERT INTO recommendations (id, state, record, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![r.id.to_string(), r.state.as_str(), json(r)?, ts(&r.created_at)],
            )?;
        }
        // Bounded: the newest 500 are kept.
        tx.execute(
            "DELETE FROM recommendations WHERE id NOT IN
                 (SELECT id FROM recommendations ORDER BY created_at DESC LIMIT 500)",
            [],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Newest first.
    pub fn recommendations(&self, limit: u32) -> R<Vec<Recommendation>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT record FROM recommendations ORDER BY created_at DESC LIMIT ?1")?;
        let rows = stmt.query_map([limit], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(from_json(&row?)?);
        }
        Ok(out)
    }

    pub fn recommendation(&self, id: Uuid) -> R<Option<Recommendation>> {
        let text: Option<String> = self
            .conn()
            .query_row(
                "SELECT record FROM recommendations WHERE id = ?1",
                [id.to_string()],
                |r| r.get(0),
            )
            .optional()?;
        text.map(|t| from_json(&t)).transpose()
    }

    /// Saves a recommendation that was open; false (nothing written) if it is no longer
    /// open (applied, dismissed or superseded meanwhile).
    pub fn settle_recommendation(&self, r: &Recommendation) -> R<bool> {
        let n = self.conn().execute(
            "UPDATE recommendations SET state = ?2, record = ?3 WHERE id = ?1 AND state = 'open'",
            params![r.id.to_string(), r.state.as_str(), json(r)?],
        )?;
        Ok(n == 1)
    }
}
