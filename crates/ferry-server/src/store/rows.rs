//! Reading rows into Ferry's types (events are written in [`super::audit`]). Every reader
//! takes a plain connection so transactions (claims, phase changes) reuse them.

use chrono::Utc;
use ferry_api::*;
use rusqlite::{params, Connection, Row};
use uuid::Uuid;

use super::{from_json, json, parse_ts, ts, StoreError, StoredHost, R};

pub(super) fn stored_host_row(r: &Row) -> rusqlite::Result<R<StoredHost>> {
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

pub(super) fn vm_row(r: &Row) -> rusqlite::Result<R<Vm>> {
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

pub(super) const MIGRATION_SELECT: &str =
    "SELECT id, vm, source, destination, phase, options, stream_uri, progress,
    report, error, created_at, updated_at, finished_at, addresses, run, attention, priority,
    operation FROM migrations";

pub(super) fn migration_row(r: &Row) -> rusqlite::Result<R<Migration>> {
    let id: String = r.get(0)?;
    let phase: String = r.get(4)?;
    let options: String = r.get(5)?;
    let progress: Option<String> = r.get(7)?;
    let report: Option<String> = r.get(8)?;
    let created: String = r.get(10)?;
    let updated: String = r.get(11)?;
    let finished: Option<String> = r.get(12)?;
    let addresses: Option<String> = r.get(13)?;
    let run: Option<String> = r.get(14)?;
    let attention: Option<String> = r.get(15)?;
    let priority: i32 = r.get(16)?;
    let operation: Option<String> = r.get(17)?;
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
            run: run
                .as_deref()
                .map(from_json)
                .transpose()?
                .unwrap_or_default(),
            attention: attention.as_deref().map(from_json).transpose()?,
            priority,
            operation: operation
                .map(|o| Uuid::parse_str(&o).map_err(|e| StoreError::Corrupt(e.to_string())))
                .transpose()?,
            queue: None,
        })
    })())
}

pub(super) const EVENT_SELECT: &str =
    "SELECT id, at, actor, kind, vm, host, migration, outcome, message, data, hash FROM events";

pub(super) fn event_row(r: &Row) -> rusqlite::Result<R<Event>> {
    let id: i64 = r.get(0)?;
    let at: String = r.get(1)?;
    let migration: Option<String> = r.get(6)?;
    let outcome: String = r.get(7)?;
    let data: String = r.get(9)?;
    let hash: Option<String> = r.get(10)?;
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
            hash,
        })
    })())
}

pub(super) const HOST_SELECT: &str =
    "SELECT h.name, h.url, h.migration_address, h.registered_at, h.last_seen, h.inventory,
            (SELECT COUNT(*) FROM vms v WHERE v.host = h.name), h.maintenance
     FROM hosts h";

pub(super) const VM_SELECT: &str =
    "SELECT name, spec, host, state, migration, created_at, updated_at FROM vms";

pub(super) fn load_hosts(conn: &Connection) -> R<Vec<StoredHost>> {
    let mut stmt = conn.prepare(&format!("{HOST_SELECT} ORDER BY h.name"))?;
    let rows = stmt.query_map([], stored_host_row)?;
    rows.map(|r| r.map_err(StoreError::from).and_then(|h| h))
        .collect()
}

pub(super) fn load_vms(conn: &Connection) -> R<Vec<Vm>> {
    let mut stmt = conn.prepare(&format!("{VM_SELECT} ORDER BY name"))?;
    let rows = stmt.query_map([], vm_row)?;
    rows.map(|r| r.map_err(StoreError::from).and_then(|v| v))
        .collect()
}

/// Migrations the orchestrator is not done with (not terminal; `needs_attention` counts).
pub(super) fn load_unfinished(conn: &Connection) -> R<Vec<Migration>> {
    let mut stmt = conn.prepare(&format!(
        "{MIGRATION_SELECT} WHERE phase NOT IN ('completed', 'failed', 'cancelled') ORDER BY created_at"
    ))?;
    let rows = stmt.query_map([], migration_row)?;
    rows.map(|r| r.map_err(StoreError::from).and_then(|m| m))
        .collect()
}

/// Writes a migration's record (phase, figures, run state). Terminal phases release the
/// VM; `Completed` moves it to the destination. `vm_state`: the VM's state changes with it
/// (e.g. crashed when the migration lost it).
pub(super) fn write_migration(
    conn: &Connection,
    m: &Migration,
    vm_state: Option<VmState>,
) -> R<()> {
    let n = conn.execute(
        "UPDATE migrations SET phase = ?2, stream_uri = ?3, progress = ?4, report = ?5, error = ?6,
             updated_at = ?7, finished_at = ?8, addresses = ?9, run = ?10, attention = ?11
         WHERE id = ?1",
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
            json(&m.run)?,
            m.attention.as_ref().map(json).transpose()?,
        ],
    )?;
    if n != 1 {
        return Err(StoreError::Corrupt(format!(
            "no migration {} to update",
            m.id
        )));
    }
    if m.phase == Phase::Completed {
        conn.execute(
            "UPDATE vms SET host = ?2, state = 'running', migration = NULL, updated_at = ?3
             WHERE name = ?1 AND migration = ?4",
            params![m.vm, m.destination, ts(&m.updated_at), m.id.to_string()],
        )?;
    } else if m.phase.is_terminal() {
        conn.execute(
            "UPDATE vms SET migration = NULL, updated_at = ?2 WHERE name = ?1 AND migration = ?3",
            params![m.vm, ts(&m.updated_at), m.id.to_string()],
        )?;
    }
    if let Some(state) = vm_state {
        conn.execute(
            "UPDATE vms SET state = ?2, updated_at = ?3 WHERE name = ?1",
            params![m.vm, state.as_str(), ts(&Utc::now())],
        )?;
    }
    Ok(())
}
