//! The server's state in SQLite: hosts, VMs, migrations and the append-only event log.
//!
//! The schema version lives in `PRAGMA user_version` and is checked on open: a server never
//! runs against a database layout it does not know. The event log refuses UPDATE and DELETE
//! at the database level (triggers), so "append-only" holds whatever the code does.

use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use ferry_api::*;
use rusqlite::{params, Connection, OptionalExtension, Row};
use uuid::Uuid;

pub const SCHEMA_VERSION: i64 = 3;

/// Upgrades from each older schema version to the next, in order. Index i upgrades
/// version i+1 to i+2.
const UPGRADES: &[&str] = &[
    // 1 -> 2: the network endpoints a migration used.
    "ALTER TABLE migrations ADD COLUMN addresses TEXT;",
    // 2 -> 3: hosts in maintenance; cluster settings.
    "ALTER TABLE hosts ADD COLUMN maintenance INTEGER NOT NULL DEFAULT 0;
     CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
];

const SCHEMA: &str = r#"
CREATE TABLE hosts (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    migration_address TEXT NOT NULL,
    registered_at TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    inventory TEXT NOT NULL,
    maintenance INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE vms (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    host TEXT NOT NULL,
    state TEXT NOT NULL,
    migration TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE migrations (
    id TEXT PRIMARY KEY,
    vm TEXT NOT NULL,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    phase TEXT NOT NULL,
    options TEXT NOT NULL,
    stream_uri TEXT,
    addresses TEXT,
    progress TEXT,
    report TEXT,
    error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    finished_at TEXT
);
CREATE INDEX migrations_vm ON migrations(vm);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    kind TEXT NOT NULL,
    vm TEXT,
    host TEXT,
    migration TEXT,
    outcome TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX events_vm ON events(vm);
CREATE INDEX events_migration ON events(migration);
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
"#;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("database {path} has schema version {found}; this server knows version {SCHEMA_VERSION} (a newer Ferry wrote it?)")]
    Version { path: String, found: i64 },
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::internal(e.to_string())
    }
}

/// A new event, before the log gives it an id and a time.
#[derive(Debug, Clone, Default)]
pub struct NewEvent {
    pub actor: String,
    pub kind: String,
    pub vm: Option<String>,
    pub host: Option<String>,
    pub migration: Option<Uuid>,
    pub outcome: Option<Outcome>,
    pub message: String,
    pub data: serde_json::Value,
}

pub struct Store {
    conn: Mutex<Connection>,
}

type R<T> = Result<T, StoreError>;

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn parse_ts(s: &str) -> R<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("timestamp '{s}': {e}")))
}

fn json<T: serde::Serialize>(v: &T) -> R<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> R<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store {
    pub fn open(path: &Path) -> R<Store> {
        let open_err = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        let conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| open_err(e.to_string()))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        match version {
            0 => {
                conn.execute_batch(SCHEMA)?;
                conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            }
            SCHEMA_VERSION => {}
            older if (1..SCHEMA_VERSION).contains(&older) => {
                for (i, sql) in UPGRADES.iter().enumerate().skip(older as usize - 1) {
                    conn.execute_batch(sql)?;
                    conn.pragma_update(None, "user_version", i as i64 + 2)?;
                }
                tracing::info!(
                    from = older,
                    to = SCHEMA_VERSION,
                    "database schema upgraded"
                );
            }
            found => {
                return Err(StoreError::Version {
                    path: path.display().to_string(),
                    found,
                })
            }
        }
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- hosts ------------------------------------------------------------------------

    /// Inserts or refreshes a host. Returns true when the host is new.
    pub fn upsert_host(&self, reg: &HostRegistration, now: DateTime<Utc>) -> R<bool> {
        let conn = self.conn();
        let existed: bool = conn
            .query_row("SELECT 1 FROM hosts WHERE name = ?1", [&reg.name], |_| {
                Ok(())
            })
            .optional()?
            .is_some();
        conn.execute(
            "INSERT INTO hosts (name, url, migration_address, registered_at, last_seen, inventory)
             VALUES (?1, ?2, ?3, ?4, ?4, ?5)
             ON CONFLICT(name) DO UPDATE SET url = ?2, migration_address = ?3, last_seen = ?4, inventory = ?5",
            params![reg.name, reg.url, reg.migration_address, ts(&now), json(&reg.inventory)?],
        )?;
        Ok(!existed)
    }

    /// Hosts with the raw last-seen time; the caller decides connected/disconnected.
    pub fn hosts(&self) -> R<Vec<StoredHost>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT h.name, h.url, h.migration_address, h.registered_at, h.last_seen, h.inventory,
                    (SELECT COUNT(*) FROM vms v WHERE v.host = h.name), h.maintenance
             FROM hosts h ORDER BY h.name",
        )?;
        let rows = stmt.query_map([], stored_host_row)?;
        rows.map(|r| r.map_err(StoreError::from).and_then(|h| h))
            .collect()
    }

    pub fn host(&self, name: &str) -> R<Option<StoredHost>> {
        Ok(self.hosts()?.into_iter().find(|h| h.name == name))
    }

    /// Puts a host into or out of maintenance; false if there is no such host.
    pub fn set_maintenance(&self, name: &str, on: bool) -> R<bool> {
        let n = self.conn().execute(
            "UPDATE hosts SET maintenance = ?2 WHERE name = ?1",
            params![name, on as i64],
        )?;
        Ok(n == 1)
    }

    /// A cluster setting (JSON text), if set.
    pub fn setting(&self, key: &str) -> R<Option<String>> {
        Ok(self
            .conn()
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    pub fn set_setting(&self, key: &str, value: &str) -> R<()> {
        self.conn().execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = ?2",
            params![key, value],
        )?;
        Ok(())
    }

    // ---- VMs --------------------------------------------------------------------------

    pub fn insert_vm(&self, vm: &Vm) -> R<bool> {
        let n = self.conn().execute(
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
        Ok(n == 1)
    }

    pub fn vms(&self) -> R<Vec<Vm>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, spec, host, state, migration, created_at, updated_at FROM vms ORDER BY name",
        )?;
        let rows = stmt.query_map([], vm_row)?;
        rows.map(|r| r.map_err(StoreError::from).and_then(|v| v))
            .collect()
    }

    pub fn vm(&self, name: &str) -> R<Option<Vm>> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT name, spec, host, state, migration, created_at, updated_at FROM vms WHERE name = ?1",
                [name],
                vm_row,
            )
            .optional()?;
        row.transpose()
    }

    pub fn set_vm_state(&self, name: &str, state: VmState) -> R<()> {
        self.set_vm_state_logged(name, state, None)
    }

    /// Sets a VM's state and appends the event that reports it in one transaction: a
    /// reader sees both or neither.
    pub fn set_vm_state_logged(
        &self,
        name: &str,
        state: VmState,
        event: Option<&NewEvent>,
    ) -> R<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE vms SET state = ?2, updated_at = ?3 WHERE name = ?1",
            params![name, state.as_str(), ts(&Utc::now())],
        )?;
        if let Some(e) = event {
            insert_event(&tx, e)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn delete_vm(&self, name: &str) -> R<bool> {
        Ok(self
            .conn()
            .execute("DELETE FROM vms WHERE name = ?1", [name])?
            == 1)
    }

    // ---- migrations -------------------------------------------------------------------

    /// Records a new migration and marks the VM as migrating, atomically: two concurrent
    /// requests for the same VM cannot both start (the second gets `false`).
    pub fn begin_migration(&self, m: &Migration) -> R<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let claimed = tx.execute(
            "UPDATE vms SET migration = ?2, updated_at = ?3 WHERE name = ?1 AND migration IS NULL",
            params![m.vm, m.id.to_string(), ts(&m.created_at)],
        )?;
        if claimed != 1 {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO migrations (id, vm, source, destination, phase, options, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            params![
                m.id.to_string(),
                m.vm,
                m.source,
                m.destination,
                m.phase.as_str(),
                json(&m.options)?,
                ts(&m.created_at)
            ],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Saves a migration's phase and figures. When the phase is terminal the VM is released
    /// (and, for `Completed`, moved to the destination) in the same transaction: the VM
    /// record and the migration record can never disagree about where the VM is.
    pub fn save_migration(&self, m: &Migration) -> R<()> {
        self.save_migration_logged(m, None)
    }

    /// [`Store::save_migration`] with the event that reports the change, in the same
    /// transaction: whoever sees a migration's new phase also finds its log entry (the
    /// audit trail never lags the state it describes).
    pub fn save_migration_logged(&self, m: &Migration, event: Option<&NewEvent>) -> R<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE migrations SET phase = ?2, stream_uri = ?3, progress = ?4, report = ?5, error = ?6,
                 updated_at = ?7, finished_at = ?8, addresses = ?9 WHERE id = ?1",
            params![
                m.id.to_string(),
                m.phase.as_str(),
                m.stream_uri,
                m.progress.as_ref().map(json).transpose()?,
                m.report.as_ref().map(json).transpose()?,
                m.error,
                ts(&m.updated_at),
                m.finished_at.as_ref().map(ts),
                m.addresses.as_ref().map(json).transpose()?,
            ],
        )?;
        if m.phase == Phase::Completed {
            tx.execute(
                "UPDATE vms SET host = ?2, state = 'running', migration = NULL, updated_at = ?3
                 WHERE name = ?1 AND migration = ?4",
                params![m.vm, m.destination, ts(&m.updated_at), m.id.to_string()],
            )?;
        } else if m.phase.is_terminal() {
            tx.execute(
                "UPDATE vms SET migration = NULL, updated_at = ?2 WHERE name = ?1 AND migration = ?3",
                params![m.vm, ts(&m.updated_at), m.id.to_string()],
            )?;
        }
        if let Some(e) = event {
            insert_event(&tx, e)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn migration(&self, id: Uuid) -> R<Option<Migration>> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!("{MIGRATION_SELECT} WHERE id = ?1"),
                [id.to_string()],
                migration_row,
            )
            .optional()?;
        row.transpose()
    }

    pub fn migrations(&self, limit: u32) -> R<Vec<Migration>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "{MIGRATION_SELECT} ORDER BY created_at DESC LIMIT ?1"
        ))?;
        let rows = stmt.query_map([limit], migration_row)?;
        rows.map(|r| r.map_err(StoreError::from).and_then(|m| m))
            .collect()
    }

    pub fn unfinished_migrations(&self) -> R<Vec<Migration>> {
        Ok(self
            .migrations(u32::MAX)?
            .into_iter()
            .filter(|m| !m.phase.is_terminal())
            .collect())
    }

    // ---- events -----------------------------------------------------------------------

    pub fn append_event(&self, e: &NewEvent) -> R<i64> {
        insert_event(&self.conn(), e)
    }

    pub fn events(&self, q: &EventQuery) -> R<Vec<Event>> {
        let conn = self.conn();
        let limit = q.limit.unwrap_or(100).min(10_000);
        // Newest `limit` matching events, returned oldest first (as a log reads).
        let mut stmt = conn.prepare(
            "SELECT * FROM (
                SELECT id, at, actor, kind, vm, host, migration, outcome, message, data FROM events
                WHERE (?1 IS NULL OR vm = ?1) AND (?2 IS NULL OR migration = ?2)
                  AND (?3 IS NULL OR kind = ?3 OR kind LIKE ?3 || '.%') AND (?4 IS NULL OR id > ?4)
                ORDER BY id DESC LIMIT ?5) ORDER BY id ASC",
        )?;
        let rows = stmt.query_map(
            params![
                q.vm,
                q.migration.map(|m| m.to_string()),
                q.kind,
                q.after,
                limit
            ],
            event_row,
        )?;
        rows.map(|r| r.map_err(StoreError::from).and_then(|e| e))
            .collect()
    }
}

/// A host as stored (connection state is computed from `last_seen` by the caller).
#[derive(Debug, Clone)]
pub struct StoredHost {
    pub name: String,
    pub url: String,
    pub migration_address: String,
    pub registered_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub inventory: HostInventory,
    pub vms: u32,
    pub maintenance: bool,
}

/// Appends one event (the table refuses UPDATE and DELETE: the log only grows).
fn insert_event(conn: &Connection, e: &NewEvent) -> R<i64> {
    conn.execute(
        "INSERT INTO events (at, actor, kind, vm, host, migration, outcome, message, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            ts(&Utc::now()),
            e.actor,
            e.kind,
            e.vm,
            e.host,
            e.migration.map(|m| m.to_string()),
            e.outcome.unwrap_or(Outcome::Info).as_str(),
            e.message,
            json(&e.data)?,
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

fn stored_host_row(r: &Row) -> rusqlite::Result<R<StoredHost>> {
    let registered: String = r.get(3)?;
    let seen: String = r.get(4)?;
    let inv: String = r.get(5)?;
    let (name, url, addr): (String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
    let vms: u32 = r.get(6)?;
    let maintenance: i64 = r.get(7)?;
    Ok((|| {
        Ok(StoredHost {
            name,
            url,
            migration_address: addr,
            registered_at: parse_ts(&registered)?,
            last_seen: parse_ts(&seen)?,
            inventory: from_json(&inv)?,
            vms,
            maintenance: maintenance != 0,
        })
    })())
}

fn vm_row(r: &Row) -> rusqlite::Result<R<Vm>> {
    let spec: String = r.get(1)?;
    let host: String = r.get(2)?;
    let state: String = r.get(3)?;
    let migration: Option<String> = r.get(4)?;
    let created: String = r.get(5)?;
    let updated: String = r.get(6)?;
    Ok((|| {
        Ok(Vm {
            spec: from_json(&spec)?,
            host,
            state: from_json(&format!("\"{state}\""))?,
            migration: migration
                .map(|m| Uuid::parse_str(&m).map_err(|e| StoreError::Corrupt(e.to_string())))
                .transpose()?,
            created_at: parse_ts(&created)?,
            updated_at: parse_ts(&updated)?,
            runtime: None,
        })
    })())
}

const MIGRATION_SELECT: &str =
    "SELECT id, vm, source, destination, phase, options, stream_uri, progress,
    report, error, created_at, updated_at, finished_at, addresses FROM migrations";

fn migration_row(r: &Row) -> rusqlite::Result<R<Migration>> {
    let id: String = r.get(0)?;
    let phase: String = r.get(4)?;
    let options: String = r.get(5)?;
    let progress: Option<String> = r.get(7)?;
    let report: Option<String> = r.get(8)?;
    let created: String = r.get(10)?;
    let updated: String = r.get(11)?;
    let finished: Option<String> = r.get(12)?;
    let addresses: Option<String> = r.get(13)?;
    let (vm, source, destination): (String, String, String) = (r.get(1)?, r.get(2)?, r.get(3)?);
    let stream_uri: Option<String> = r.get(6)?;
    let error: Option<String> = r.get(9)?;
    Ok((|| {
        Ok(Migration {
            id: Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            vm,
            source,
            destination,
            phase: Phase::parse(&phase)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown phase '{phase}'")))?,
            options: from_json(&options)?,
            stream_uri,
            progress: progress.as_deref().map(from_json).transpose()?,
            report: report.as_deref().map(from_json).transpose()?,
            error,
            created_at: parse_ts(&created)?,
            updated_at: parse_ts(&updated)?,
            finished_at: finished.as_deref().map(parse_ts).transpose()?,
            addresses: addresses.as_deref().map(from_json).transpose()?,
            run: Default::default(),
            attention: None,
        })
    })())
}

fn event_row(r: &Row) -> rusqlite::Result<R<Event>> {
    let id: i64 = r.get(0)?;
    let at: String = r.get(1)?;
    let migration: Option<String> = r.get(6)?;
    let outcome: String = r.get(7)?;
    let data: String = r.get(9)?;
    let (actor, kind, vm, host, message): (String, String, Option<String>, Option<String>, String) =
        (r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(8)?);
    Ok((|| {
        Ok(Event {
            id,
            at: parse_ts(&at)?,
            actor,
            kind: EventKind::parse(&kind),
            vm,
            host,
            migration: migration
                .map(|m| Uuid::parse_str(&m).map_err(|e| StoreError::Corrupt(e.to_string())))
                .transpose()?,
            outcome: Outcome::parse(&outcome),
            message,
            data: from_json(&data)?,
        })
    })())
}
