//! The server's state in SQLite: hosts, VMs, migrations and the append-only event log.
//!
//! The schema version lives in `PRAGMA user_version` and is checked on open: a server never
//! runs against a database layout it does not know. The event log refuses UPDATE and DELETE
//! at the database level (triggers), so "append-only" holds whatever the code does; and it
//! is hash-chained with signed checkpoints ([`audit`]), so an edit made by someone who
//! drops the triggers is still found (`ferry events verify`).

use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use ferry_api::*;
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

mod audit;
mod auth;
mod balance;
mod claims;
mod queue;
mod rows;
mod schedules;

pub use audit::{load_or_create_audit_key, AUDIT_KEY_FILE};
pub use auth::{JoinRedeem, UserRemoval};
pub use claims::{ClaimError, ClusterView};
use rows::{
    event_row, migration_row, stored_host_row, vm_row, EVENT_SELECT, MIGRATION_SELECT, VM_SELECT,
};

pub const SCHEMA_VERSION: i64 = 10;

/// Upgrades from each older schema version to the next, in order. Index i upgrades
/// version i+1 to i+2.
const UPGRADES: &[&str] = &[
    // 1 -> 2: the network endpoints a migration used.
    "ALTER TABLE migrations ADD COLUMN addresses TEXT;",
    // 2 -> 3: hosts in maintenance; cluster settings.
    "ALTER TABLE hosts ADD COLUMN maintenance INTEGER NOT NULL DEFAULT 0;
     CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    // 3 -> 4: what recovery needs beyond the phase (RunState), and why a migration waits
    // for an operator.
    // A migration in flight across the upgrade may have started its stream: recovery must
    // not take it for one that never sent a byte.
    "ALTER TABLE migrations ADD COLUMN run TEXT;
     ALTER TABLE migrations ADD COLUMN attention TEXT;
     UPDATE migrations SET run = '{\"outgoing_started\":true}'
         WHERE phase IN ('copying_disks', 'transferring', 'switching_over', 'post_copy',
                         'rolling_back');",
    // 4 -> 5: the audit chain's hash per event; then `audit::upgrade_to_v5` adds the
    // checkpoints and chains the existing rows.
    "ALTER TABLE events ADD COLUMN hash TEXT;",
    // 5 -> 6: operators, their API tokens, join tokens and the host certificates issued.
    AUTH_SCHEMA,
    // 6 -> 7: placement rules.
    RULES_SCHEMA,
    // 7 -> 8: the migration queue (rank, the operation that asked) and operations.
    QUEUE_SCHEMA,
    // 8 -> 9: the balancer's recommendations.
    BALANCE_SCHEMA,
    // 9 -> 10: scheduled operations.
    SCHEDULES_SCHEMA,
];

/// Scheduled operations (issue 13), each kept whole as JSON under its name, with the
/// latest fire time it dealt with beside it: recording a run is a compare-and-swap on it
/// (see `schedules.rs`). Runs are operations (kind `scheduled`).
const SCHEDULES_SCHEMA: &str = "
CREATE TABLE schedules (
    name TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    last_fire TEXT,
    created_at TEXT NOT NULL
);
";

/// The balancer's recommendations (issue 13), each kept whole as JSON, with its state
/// beside it so open ones are found without parsing every row.
const BALANCE_SCHEMA: &str = "
CREATE TABLE recommendations (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    record TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX recommendations_state ON recommendations(state);
";

/// The migration queue and operations (issue 12): a migration's queue rank and the
/// operation (an evacuation) that requested it; each operation kept whole as JSON, with
/// its state beside it so unfinished ones are found at start.
const QUEUE_SCHEMA: &str = "
ALTER TABLE migrations ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE migrations ADD COLUMN operation TEXT;
CREATE INDEX migrations_operation ON migrations(operation);
CREATE TABLE operations (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    host TEXT NOT NULL,
    state TEXT NOT NULL,
    record TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
";

/// Placement rules (issue 12), each kept whole as JSON under its name.
const RULES_SCHEMA: &str = "
CREATE TABLE rules (
    name TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    created_at TEXT NOT NULL
);
";

/// Who may call the server (issue 11): users with roles and token hashes, join tokens,
/// and every host certificate the CA issued (revocation is `revoked_at`).
const AUTH_SCHEMA: &str = "
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE join_tokens (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT,
    created_by TEXT NOT NULL
);
CREATE TABLE host_certs (
    fingerprint TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    serial TEXT NOT NULL,
    not_after INTEGER NOT NULL,
    issued_at TEXT NOT NULL,
    revoked_at TEXT,
    -- SHA-256 of the CA that signed it: a CA rotation finishes once every host holds one
    -- from the new CA.
    ca TEXT NOT NULL DEFAULT ''
);
CREATE INDEX host_certs_host ON host_certs(host);
";

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
    finished_at TEXT,
    run TEXT,
    attention TEXT
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
    data TEXT NOT NULL,
    hash TEXT
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
    #[error("audit signing key {0}")]
    AuditKey(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::internal(e.to_string())
    }
}

/// A new event, before the log gives it an id and a time.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub actor: String,
    pub kind: EventKind,
    pub vm: Option<String>,
    pub host: Option<String>,
    pub migration: Option<Uuid>,
    pub outcome: Option<Outcome>,
    pub message: String,
    pub data: serde_json::Value,
}

impl NewEvent {
    /// An event of `kind` by `actor`, with nothing else filled in yet.
    pub fn new(actor: impl Into<String>, kind: EventKind, message: impl Into<String>) -> NewEvent {
        NewEvent {
            actor: actor.into(),
            kind,
            vm: None,
            host: None,
            migration: None,
            outcome: None,
            message: message.into(),
            data: serde_json::Value::Null,
        }
    }
}

pub struct Store {
    conn: Mutex<Connection>,
    /// Signs the event log's checkpoints (see [`audit`]).
    audit_key: Option<ferry_api::audit::SigningKey>,
}

pub(crate) type R<T> = Result<T, StoreError>;

pub(crate) fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub(crate) fn parse_ts(s: &str) -> R<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("timestamp '{s}': {e}")))
}

pub(crate) fn json<T: serde::Serialize>(v: &T) -> R<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> R<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store {
    pub fn open(path: &Path) -> R<Store> {
        let open_err = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        let mut conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| open_err(e.to_string()))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        match version {
            0 => {
                let tx = conn.transaction()?;
                tx.execute_batch(SCHEMA)?;
                tx.execute_batch(audit::CHECKPOINTS_SCHEMA)?;
                tx.execute_batch(AUTH_SCHEMA)?;
                tx.execute_batch(RULES_SCHEMA)?;
                tx.execute_batch(QUEUE_SCHEMA)?;
                tx.execute_batch(BALANCE_SCHEMA)?;
                tx.execute_batch(SCHEDULES_SCHEMA)?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
                tx.commit()?;
            }
            SCHEMA_VERSION => {}
            older if (1..SCHEMA_VERSION).contains(&older) => {
                // Each step in one transaction: a failed upgrade leaves the previous
                // version whole.
                for (i, sql) in UPGRADES.iter().enumerate().skip(older as usize - 1) {
                    let to = i as i64 + 2;
                    let tx = conn.transaction()?;
                    tx.execute_batch(sql)?;
                    if to == 5 {
                        audit::upgrade_to_v5(&tx)?;
                    }
                    tx.pragma_update(None, "user_version", to)?;
                    tx.commit()?;
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
        audit::ensure_append_only(&conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
            audit_key: None,
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
        rows::load_hosts(&self.conn())
    }

    pub fn host(&self, name: &str) -> R<Option<StoredHost>> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!("{} WHERE h.name = ?1", rows::HOST_SELECT),
                [name],
                stored_host_row,
            )
            .optional()?;
        row.transpose()
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

    /// After a launch: the spec as the agent resolved it (machine alias) and the state.
    pub fn set_vm_launched(&self, name: &str, spec: &VmSpec, state: VmState) -> R<()> {
        self.conn().execute(
            "UPDATE vms SET spec = ?2, state = ?3, updated_at = ?4 WHERE name = ?1",
            params![name, json(spec)?, state.as_str(), ts(&Utc::now())],
        )?;
        Ok(())
    }

    pub fn vms(&self) -> R<Vec<Vm>> {
        rows::load_vms(&self.conn())
    }

    pub fn vm(&self, name: &str) -> R<Option<Vm>> {
        let conn = self.conn();
        let row = conn
            .query_row(&format!("{VM_SELECT} WHERE name = ?1"), [name], vm_row)
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
            self.insert_event(&tx, e)?;
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

    /// Saves a migration's phase, figures and run state. When the phase is terminal the VM
    /// is released (and, for `Completed`, moved to the destination) in the same
    /// transaction: the VM record and the migration record can never disagree about where
    /// the VM is.
    pub fn save_migration(&self, m: &Migration) -> R<()> {
        self.save_migration_logged(m, None)
    }

    /// [`Store::save_migration`] with the event that reports the change, in the same
    /// transaction: whoever sees a migration's new phase also finds its log entry (the
    /// audit trail never lags the state it describes).
    pub fn save_migration_logged(&self, m: &Migration, event: Option<&NewEvent>) -> R<()> {
        self.save_migration_with(m, event, None)
    }

    /// [`Store::save_migration_logged`], also setting the VM's state in the same
    /// transaction (a migration that lost the VM marks it crashed).
    pub fn save_migration_with(
        &self,
        m: &Migration,
        event: Option<&NewEvent>,
        vm_state: Option<VmState>,
    ) -> R<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        rows::write_migration(&tx, m, vm_state)?;
        if let Some(e) = event {
            self.insert_event(&tx, e)?;
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

    /// Migrations not ended: in flight, or waiting for an operator.
    pub fn unfinished_migrations(&self) -> R<Vec<Migration>> {
        rows::load_unfinished(&self.conn())
    }

    /// Completed migrations whose clean-up (retiring the source, its disk copies) did not
    /// finish, e.g. because the server stopped right after the switch.
    pub fn completed_with_cleanup_pending(&self) -> R<Vec<Migration>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "{MIGRATION_SELECT} WHERE phase = 'completed' AND finished_at > ?1 ORDER BY created_at"
        ))?;
        // Only recent ones: older clean-ups were settled or reported long ago.
        let since = ts(&(Utc::now() - chrono::Duration::days(1)));
        let rows = stmt.query_map([since], migration_row)?;
        let all: R<Vec<Migration>> = rows
            .map(|r| r.map_err(StoreError::from).and_then(|m| m))
            .collect();
        Ok(all?
            .into_iter()
            .filter(|m| m.run.cleanup_pending())
            .collect())
    }

    // ---- placement rules --------------------------------------------------------------

    /// Adds a rule; false if the name is taken.
    pub fn add_rule(&self, rule: &Rule, now: DateTime<Utc>) -> R<bool> {
        Ok(self.conn().execute(
            "INSERT OR IGNORE INTO rules (name, rule, created_at) VALUES (?1, ?2, ?3)",
            params![rule.name, json(rule)?, ts(&now)],
        )? == 1)
    }

    pub fn rules(&self) -> R<Vec<Rule>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT rule FROM rules ORDER BY name")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(from_json(&row?)?);
        }
        Ok(out)
    }

    /// Deletes a rule; false if there is none of that name.
    pub fn delete_rule(&self, name: &str) -> R<bool> {
        Ok(self
            .conn()
            .execute("DELETE FROM rules WHERE name = ?1", [name])?
            == 1)
    }

    // ---- events -----------------------------------------------------------------------

    pub fn events(&self, q: &EventQuery) -> R<Vec<Event>> {
        let conn = self.conn();
        let limit = q.limit.unwrap_or(100).min(10_000);
        // Without `after`, the newest `limit` matching events; with it, the oldest `limit`
        // after it (so a follower or a verifier paging through never skips any). Returned
        // oldest first either way, as a log reads.
        let order = if q.after.is_some() { "ASC" } else { "DESC" };
        // An operation's story: its own events, those of the operations it started (a
        // scheduled run's evacuation) and of every migration any of them requested or
        // that it lists (a scheduled balancing run's).
        let mut stmt = conn.prepare(&format!(
            "WITH linked(id) AS (
                SELECT ?6 UNION
                SELECT value FROM operations o, json_each(o.record, '$.run.operations')
                 WHERE o.id = ?6)
             SELECT * FROM (
                {EVENT_SELECT}
                WHERE (?1 IS NULL OR vm = ?1) AND (?2 IS NULL OR migration = ?2)
                  AND (?3 IS NULL OR kind = ?3 OR kind LIKE ?3 || '.%') AND (?4 IS NULL OR id > ?4)
                  AND (?6 IS NULL OR json_extract(data, '$.operation') IN (SELECT id FROM linked)
                       OR migration IN (SELECT id FROM migrations WHERE operation IN (SELECT id FROM linked))
                       OR migration IN (SELECT value FROM operations o,
                              json_each(o.record, '$.run.migrations') WHERE o.id = ?6))
                ORDER BY id {order} LIMIT ?5) ORDER BY id ASC"
        ))?;
        let rows = stmt.query_map(
            params![
                q.vm,
                q.migration.map(|m| m.to_string()),
                q.kind,
                q.after,
                limit,
                q.operation.map(|o| o.to_string()),
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
