//! The event log's hash chain and signed checkpoints, on the store's side.
//!
//! Every event is written here (one code path, [`Store::insert_event`]): inside the
//! caller's transaction it reads the last event's hash, hashes the new event onto it with
//! [`ferry_api::audit::event_hash`] (the same pure function `ferry events verify` runs) and
//! inserts both. SQLite serialises writers, so two appends can never chain onto the same
//! predecessor. Every [`CHECKPOINT_EVERY`] events the same transaction also records a
//! checkpoint signed with the server's key. Like the events, checkpoints refuse UPDATE and
//! DELETE at the database level.
//!
//! The key lives in the data directory (`audit-signing.key`, PKCS#8, mode 0600), created
//! on first start.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use chrono::{DateTime, SubsecRound, Utc};
use ferry_api::audit::{
    self, from_hex, Checkpoint, Digest, PublicKey, SigningKey, CHECKPOINT_EVERY, GENESIS,
};
use ferry_api::*;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::rows::{event_row, EVENT_SELECT};
use super::{from_json, json, parse_ts, ts, NewEvent, Store, StoreError, R};

/// The signing key's file in the server's data directory.
pub const AUDIT_KEY_FILE: &str = "audit-signing.key";

/// The checkpoints table, in a new database and on the upgrade to version 5.
pub(super) const CHECKPOINTS_SCHEMA: &str = r#"
CREATE TABLE checkpoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id INTEGER NOT NULL,
    hash TEXT NOT NULL,
    at TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'the audit checkpoints are append-only'); END;
CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'the audit checkpoints are append-only'); END;
"#;

/// Version 4 -> 5, after the SQL step added the `hash` column: the checkpoints table, and
/// the rows written before the chain existed are chained in id order. The one time the log
/// is rewritten, so the no-update trigger is lifted for it and put back in the same
/// transaction (the caller's).
pub(super) fn upgrade_to_v5(conn: &Connection) -> R<()> {
    conn.execute_batch(CHECKPOINTS_SCHEMA)?;
    let events: Vec<Event> = {
        let mut stmt = conn.prepare(&format!("{EVENT_SELECT} ORDER BY id"))?;
        let rows = stmt.query_map([], event_row)?;
        rows.map(|r| r.map_err(StoreError::from).and_then(|e| e))
            .collect::<R<_>>()?
    };
    conn.execute_batch("DROP TRIGGER IF EXISTS events_no_update;")?;
    let mut prev = GENESIS;
    for e in &events {
        prev = audit::event_hash(&prev, e);
        conn.execute(
            "UPDATE events SET hash = ?2 WHERE id = ?1",
            params![e.id, audit::to_hex(&prev)],
        )?;
    }
    conn.execute_batch(APPEND_ONLY[0].1)?;
    if !events.is_empty() {
        tracing::info!(events = events.len(), "chained the existing event log");
    }
    Ok(())
}

/// The triggers that make the log and the checkpoints append-only, by name.
const APPEND_ONLY: &[(&str, &str)] = &[
    (
        "events_no_update",
        "CREATE TRIGGER events_no_update BEFORE UPDATE ON events
            BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;",
    ),
    (
        "events_no_delete",
        "CREATE TRIGGER events_no_delete BEFORE DELETE ON events
            BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;",
    ),
    (
        "checkpoints_no_update",
        "CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
            BEGIN SELECT RAISE(ABORT, 'the audit checkpoints are append-only'); END;",
    ),
    (
        "checkpoints_no_delete",
        "CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
            BEGIN SELECT RAISE(ABORT, 'the audit checkpoints are append-only'); END;",
    ),
];

/// On every open: a missing append-only trigger means someone with the file dropped it,
/// probably to edit the log. Put it back (so it does not stay open) and say so loudly; what
/// was changed meanwhile is for `ferry events verify` to find.
pub(super) fn ensure_append_only(conn: &Connection) -> R<()> {
    for (name, create) in APPEND_ONLY {
        let present = conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = ?1",
                [name],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !present {
            conn.execute_batch(create)?;
            tracing::warn!(
                trigger = name,
                "an append-only trigger of the audit log was missing (dropped by someone with \
                 the database file?); restored it. Run `ferry events verify`"
            );
        }
    }
    Ok(())
}

/// Now, at the precision the log stores (so what is hashed or signed is what is read back).
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

fn parse_hash(what: &str, hex: &str) -> R<Digest> {
    from_hex::<32>(hex).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// The newest event's id and hash.
fn head(conn: &Connection) -> R<Option<(i64, Digest)>> {
    let last: Option<(i64, Option<String>)> = conn
        .query_row(
            "SELECT id, hash FROM events ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match last {
        None => Ok(None),
        Some((id, None)) => Err(StoreError::Corrupt(format!(
            "event {id} has no hash: the chain cannot continue"
        ))),
        Some((id, Some(h))) => Ok(Some((id, parse_hash(&format!("event {id}"), &h)?))),
    }
}

fn checkpoint_row(r: &rusqlite::Row) -> rusqlite::Result<R<Checkpoint>> {
    let (id, event_id, hash, at, signature): (i64, i64, String, String, String) =
        (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
    Ok(parse_ts(&at).map(|at| Checkpoint {
        id,
        event_id,
        hash,
        at,
        signature,
    }))
}

const CHECKPOINT_SELECT: &str = "SELECT id, event_id, hash, at, signature FROM checkpoints";

fn last_checkpoint(conn: &Connection) -> R<Option<Checkpoint>> {
    conn.query_row(
        &format!("{CHECKPOINT_SELECT} ORDER BY id DESC LIMIT 1"),
        [],
        checkpoint_row,
    )
    .optional()?
    .transpose()
}

fn write_checkpoint(
    conn: &Connection,
    key: &SigningKey,
    event_id: i64,
    hash: &Digest,
) -> R<Checkpoint> {
    let at = now();
    // The signature does not cover the checkpoint's own id (the table assigns it).
    let mut cp = key.checkpoint(0, event_id, hash, at);
    conn.execute(
        "INSERT INTO checkpoints (event_id, hash, at, signature) VALUES (?1, ?2, ?3, ?4)",
        params![cp.event_id, cp.hash, ts(&cp.at), cp.signature],
    )?;
    cp.id = conn.last_insert_rowid();
    Ok(cp)
}

impl Store {
    /// Signs checkpoints with `key` from now on (without one, events are chained but no
    /// checkpoint is written: tests that do not care).
    pub fn with_audit_key(mut self, key: SigningKey) -> Store {
        let public = key.public_key();
        // A restored data directory with another key file, or a replaced key: say so at
        // start rather than only when someone runs `ferry events verify`.
        if let Ok(Some(cp)) = last_checkpoint(&self.conn()) {
            let signed = from_hex::<32>(&cp.hash)
                .map(|h| {
                    public.verifies(
                        &audit::checkpoint_message(cp.event_id, &h, &cp.at),
                        &cp.signature,
                    )
                })
                .unwrap_or(false);
            if !signed {
                tracing::warn!(
                    key = %public.to_hex(),
                    checkpoint = cp.id,
                    "the audit checkpoints were not signed by this server's key \
                     ({AUDIT_KEY_FILE} replaced or restored from elsewhere?); \
                     `ferry events verify` will report them"
                );
            }
        }
        self.audit_key = Some(key);
        self
    }

    pub fn audit_public_key(&self) -> Option<PublicKey> {
        self.audit_key.as_ref().map(SigningKey::public_key)
    }

    /// Appends one event to the chain, inside the caller's transaction (or, on a plain
    /// connection, as one statement group the store's mutex keeps alone). The only place
    /// events are written.
    pub(super) fn insert_event(&self, conn: &Connection, e: &NewEvent) -> R<i64> {
        let last = head(conn)?;
        // The id must be known before the insert (it is hashed, and the row cannot be
        // updated afterwards). AUTOINCREMENT never reuses an id, so neither do we.
        let seq: i64 = conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        let id = seq.max(last.map_or(0, |(id, _)| id)) + 1;
        let data_text = json(&e.data)?;
        // Hash the event exactly as it will be read back (data re-parsed, time at the
        // stored precision), so the server and a verifier agree byte for byte.
        let event = Event {
            id,
            at: now(),
            actor: e.actor.clone(),
            kind: e.kind.clone(),
            vm: e.vm.clone(),
            host: e.host.clone(),
            migration: e.migration,
            outcome: e.outcome.unwrap_or(Outcome::Info),
            message: e.message.clone(),
            data: from_json(&data_text)?,
            hash: None,
        };
        let hash = audit::event_hash(&last.map_or(GENESIS, |(_, h)| h), &event);
        conn.execute(
            "INSERT INTO events (id, at, actor, kind, vm, host, migration, outcome, message, data, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                id,
                ts(&event.at),
                event.actor,
                event.kind.as_str(),
                event.vm,
                event.host,
                event.migration.map(|m| m.to_string()),
                event.outcome.as_str(),
                event.message,
                data_text,
                audit::to_hex(&hash),
            ],
        )?;
        if let Some(key) = &self.audit_key {
            let since = last_checkpoint(conn)?.map_or(0, |c| c.event_id);
            if id - since >= CHECKPOINT_EVERY {
                write_checkpoint(conn, key, id, &hash)?;
            }
        }
        Ok(id)
    }

    /// Appends an event in its own transaction.
    pub fn append_event(&self, e: &NewEvent) -> R<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id = self.insert_event(&tx, e)?;
        tx.commit()?;
        Ok(id)
    }

    /// [`Store::append_event`], on disk before it returns even if the machine loses power
    /// right after: the store runs `synchronous = NORMAL` (a WAL commit may be lost on
    /// power failure), so this one commit runs with `FULL`, which also syncs every commit
    /// before it. For records an action must not outrun (the request record).
    pub fn append_event_durable(&self, e: &NewEvent) -> R<i64> {
        let mut conn = self.conn();
        conn.pragma_update(None, "synchronous", "FULL")?;
        let appended = (|| -> R<i64> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let id = self.insert_event(&tx, e)?;
            tx.commit()?;
            Ok(id)
        })();
        let restored = conn.pragma_update(None, "synchronous", "NORMAL");
        let id = appended?;
        restored?;
        Ok(id)
    }

    /// Every checkpoint, oldest first.
    pub fn checkpoints(&self) -> R<Vec<Checkpoint>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("{CHECKPOINT_SELECT} ORDER BY id"))?;
        let rows = stmt.query_map([], checkpoint_row)?;
        rows.map(|r| r.map_err(StoreError::from).and_then(|c| c))
            .collect()
    }

    /// A checkpoint at the log's current head (the newest one if it already is there);
    /// `None` while the log is empty.
    pub fn checkpoint_now(&self) -> R<Option<Checkpoint>> {
        let Some(key) = &self.audit_key else {
            return Err(StoreError::AuditKey(
                "this store has no signing key".to_string(),
            ));
        };
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some((id, hash)) = head(&tx)? else {
            return Ok(None);
        };
        if let Some(cp) = last_checkpoint(&tx)?.filter(|c| c.event_id == id) {
            return Ok(Some(cp));
        }
        let cp = write_checkpoint(&tx, key, id, &hash)?;
        tx.commit()?;
        Ok(Some(cp))
    }
}

/// The server's signing key from `dir`, created (mode 0600) if there is none.
pub fn load_or_create_audit_key(dir: &Path) -> R<SigningKey> {
    let path = dir.join(AUDIT_KEY_FILE);
    let err = |reason: String| StoreError::AuditKey(format!("{}: {reason}", path.display()));
    match std::fs::read(&path) {
        Ok(bytes) => {
            let mode = std::fs::metadata(&path)
                .map(|m| m.permissions().mode())
                .map_err(|e| err(e.to_string()))?;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "the audit signing key is readable by others; it should be mode 0600"
                );
            }
            SigningKey::from_pkcs8(&bytes).map_err(|e| err(e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let pkcs8 = SigningKey::generate_pkcs8().map_err(|e| err(e.to_string()))?;
            // Written whole under a temporary name and renamed: a crash never leaves a
            // half-written key for the next start to refuse.
            let tmp = dir.join(format!(".{AUDIT_KEY_FILE}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(&pkcs8)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                std::fs::File::open(dir)?.sync_all()
            };
            write().map_err(|e| err(e.to_string()))?;
            let key = SigningKey::from_pkcs8(&pkcs8).map_err(|e| err(e.to_string()))?;
            tracing::info!(
                path = %path.display(),
                public_key = %key.public_key().to_hex(),
                "created the audit signing key; keep the public key elsewhere to pin it \
                 (`ferry events verify --key`)"
            );
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}
