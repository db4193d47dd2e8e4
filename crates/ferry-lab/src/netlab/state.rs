//! What a lab created, on disk, so that it can be removed by someone else: slots, the state
//! file, the lock, claiming a slot, tearing a slot down, `down` and `status`.
//!
//! Protocol. `/run/ferry-lab/lock` is flock()ed around (a) claiming a slot and (b) tearing
//! one down. A claim, under the lock: the slot must have no directory and no `fyN-*`
//! namespace; `mkdir /run/ferry-lab/N`, write `state.json` (owner = this process), then
//! `ip netns add fyN-sw` (which fails if the namespace exists: the atomic claim). Everything
//! is recorded in `state.json` *before* it is created. A teardown, under the lock, re-reads
//! the record, kills the lab's processes, deletes its root links and namespaces and removes
//! the slot directory last. So a slot directory without a live owner is always a leftover,
//! and a `fyN-*` namespace without a slot directory too.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::sys::{self, ProcId};
use super::{NetHost, NetLabError};

/// Where lab records live (tmpfs: a reboot forgets labs, as it forgets namespaces).
pub const STATE_ROOT: &str = "/run/ferry-lab";
pub const MAX_SLOT: u8 = 200;
const RECORD_VERSION: u32 = 1;
/// Work directories are created with this prefix (a teardown removes only such a directory).
pub(crate) const WORK_DIR_PREFIX: &str = "ferry-netlab-";

/// A daemon a lab started (server or agent), for a teardown by another process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonRecord {
    pub name: String,
    pub proc: ProcId,
}

/// The state file of a lab: `/run/ferry-lab/N/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabRecord {
    pub version: u32,
    pub slot: u8,
    /// The process that owns the lab; `None` once detached (`ferry lab up --keep-running`):
    /// then only an explicit `down --slot N` / `--all` removes it.
    pub owner: Option<ProcId>,
    pub detached: bool,
    /// Seconds since the epoch.
    pub created_unix: u64,
    /// Logs, daemon state and ready files.
    pub work_dir: Option<PathBuf>,
    /// Keep `work_dir` on teardown (debugging).
    pub keep_work_dir: bool,
    /// Namespaces, in creation order.
    pub namespaces: Vec<String>,
    /// Links in the root namespace.
    pub root_links: Vec<String>,
    pub daemons: Vec<DaemonRecord>,
    pub server_url: Option<String>,
    pub switch_ns: String,
    pub client_ns: String,
    pub client_ip: Ipv4Addr,
    /// The switch namespace's address on the migration network (for relays).
    pub relay_ip: Ipv4Addr,
    pub hosts: Vec<NetHost>,
}

impl LabRecord {
    pub(crate) fn new(slot: u8, owner: Option<ProcId>) -> LabRecord {
        LabRecord {
            version: RECORD_VERSION,
            slot,
            owner,
            detached: false,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            work_dir: None,
            keep_work_dir: false,
            namespaces: Vec::new(),
            root_links: Vec::new(),
            daemons: Vec::new(),
            server_url: None,
            switch_ns: switch_ns(slot),
            client_ns: client_ns(slot),
            client_ip: Ipv4Addr::new(172, 30, slot, 2),
            relay_ip: Ipv4Addr::new(172, 31, slot, 250),
            hosts: Vec::new(),
        }
    }
}

pub(crate) fn switch_ns(slot: u8) -> String {
    format!("fy{slot}-sw")
}

pub(crate) fn client_ns(slot: u8) -> String {
    format!("fy{slot}-cl")
}

/// The prefix of every namespace and root link of slot `slot`.
pub(crate) fn slot_prefix(slot: u8) -> String {
    format!("fy{slot}-")
}

pub(crate) fn slot_dir(slot: u8) -> PathBuf {
    Path::new(STATE_ROOT).join(slot.to_string())
}

fn record_path(slot: u8) -> PathBuf {
    slot_dir(slot).join("state.json")
}

/// The slot a namespace or root link name belongs to (`fy12-a` -> 12).
pub(crate) fn slot_of(name: &str) -> Option<u8> {
    let rest = name.strip_prefix("fy")?;
    let (num, _) = rest.split_once('-')?;
    if num.is_empty() || num.starts_with('0') || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse().ok().filter(|n| (1..=MAX_SLOT).contains(n))
}

pub fn read_record(slot: u8) -> Option<LabRecord> {
    let text = std::fs::read_to_string(record_path(slot)).ok()?;
    let rec: LabRecord = serde_json::from_str(&text).ok()?;
    (rec.version == RECORD_VERSION && rec.slot == slot).then_some(rec)
}

/// Writes the record atomically (temporary file + rename).
pub(crate) fn write_record(rec: &LabRecord) -> Result<(), NetLabError> {
    let path = record_path(rec.slot);
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(rec)
        .map_err(|e| NetLabError::Io(format!("cannot encode the lab record: {e}")))?;
    std::fs::write(&tmp, text)
        .map_err(|e| NetLabError::Io(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| NetLabError::Io(format!("cannot write {}: {e}", path.display())))
}

/// The global lab lock (held while claiming or tearing down a slot).
pub(crate) fn lock() -> Result<Flock<File>, NetLabError> {
    std::fs::create_dir_all(STATE_ROOT)
        .map_err(|e| NetLabError::Io(format!("cannot create {STATE_ROOT}: {e}")))?;
    let path = Path::new(STATE_ROOT).join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| NetLabError::Io(format!("cannot open {}: {e}", path.display())))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| NetLabError::Io(format!("cannot lock {}: {e}", path.display())))
}

/// Whether anything of slot `slot` exists: its directory, a namespace or a root link.
fn slot_in_use(slot: u8) -> bool {
    let prefix = slot_prefix(slot);
    slot_dir(slot).exists()
        || sys::netns_list().iter().any(|n| n.starts_with(&prefix))
        || sys::root_links().iter().any(|n| n.starts_with(&prefix))
}

/// Claims a slot (`wanted`, or the first free one) for `owner`; returns its record, already
/// written, with the switch namespace created.
pub(crate) fn claim(wanted: Option<u8>, owner: ProcId) -> Result<LabRecord, NetLabError> {
    let _lock = lock()?;
    let candidates: Vec<u8> = match wanted {
        Some(n) if (1..=MAX_SLOT).contains(&n) => vec![n],
        Some(n) => {
            return Err(NetLabError::Config(format!(
                "lab slot {n} is out of range (1..={MAX_SLOT})"
            )))
        }
        None => (1..=MAX_SLOT).collect(),
    };
    for slot in candidates {
        if slot_in_use(slot) {
            if wanted.is_some() {
                return Err(NetLabError::SlotBusy(slot));
            }
            continue;
        }
        let dir = slot_dir(slot);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(NetLabError::Io(format!(
                    "cannot create {}: {e}",
                    dir.display()
                )))
            }
        }
        let mut rec = LabRecord::new(slot, Some(owner));
        rec.namespaces.push(switch_ns(slot));
        if let Err(e) = write_record(&rec) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        match sys::ip(&["netns", "add", &switch_ns(slot)]) {
            Ok(_) => return Ok(rec),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                if wanted.is_some() {
                    return Err(e);
                }
                tracing::warn!("lab slot {slot} not claimed: {e}");
            }
        }
    }
    Err(NetLabError::NoFreeSlot)
}

/// Removes everything of slot `slot`: the recorded daemons, every process in its namespaces,
/// its root links, its namespaces, its work directory (unless kept) and its slot directory.
/// Call with the lock held. Returns the problems met (it carries on past each).
pub(crate) fn teardown(slot: u8, rec: Option<&LabRecord>) -> Vec<String> {
    let mut problems = Vec::new();
    let prefix = slot_prefix(slot);

    // Daemons first, gracefully: the server is in the root namespace, so only its record
    // finds it.
    if let Some(rec) = rec {
        let alive: Vec<u32> = rec
            .daemons
            .iter()
            .filter(|d| d.proc.alive())
            .map(|d| d.proc.pid)
            .collect();
        let left = sys::kill_and_wait(&alive, Signal::SIGTERM, Duration::from_secs(3));
        let left = sys::kill_and_wait(&left, Signal::SIGKILL, Duration::from_secs(3));
        if !left.is_empty() {
            problems.push(format!("daemons still running after SIGKILL: {left:?}"));
        }
    }

    // Everything else that runs in the lab's namespaces (agents, QEMUs, helpers).
    let mut namespaces: Vec<String> = rec.map(|r| r.namespaces.clone()).unwrap_or_default();
    for ns in sys::netns_list() {
        if ns.starts_with(&prefix) && !namespaces.contains(&ns) {
            namespaces.push(ns);
        }
    }
    // Switch last: the hosts' veths end there.
    let sw = switch_ns(slot);
    namespaces.sort_by_key(|n| *n == sw);
    let mut pids = BTreeSet::new();
    for ns in &namespaces {
        if sys::netns_exists(ns) {
            pids.extend(sys::netns_pids(ns));
        }
    }
    let pids: Vec<u32> = pids.into_iter().collect();
    let left = sys::kill_and_wait(&pids, Signal::SIGKILL, Duration::from_secs(5));
    if !left.is_empty() {
        problems.push(format!("processes still running after SIGKILL: {left:?}"));
    }

    // Root links (deleting one end of a veth deletes both).
    let mut links: Vec<String> = rec.map(|r| r.root_links.clone()).unwrap_or_default();
    for l in sys::root_links() {
        if l.starts_with(&prefix) && !links.contains(&l) {
            links.push(l);
        }
    }
    for l in &links {
        if sys::root_links().contains(l) {
            if let Err(e) = sys::ip(&["link", "del", "dev", l]) {
                problems.push(e.to_string());
            }
        }
    }

    for ns in &namespaces {
        if sys::netns_exists(ns) {
            if let Err(e) = sys::ip(&["netns", "del", ns]) {
                problems.push(e.to_string());
            }
        }
    }

    if let Some(rec) = rec {
        if let Some(dir) = &rec.work_dir {
            let ours = dir
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{WORK_DIR_PREFIX}{slot}-")));
            if rec.keep_work_dir {
                if dir.exists() {
                    eprintln!("lab {slot}: work directory kept: {}", dir.display());
                }
            } else if ours && dir.exists() {
                if let Err(e) = std::fs::remove_dir_all(dir) {
                    problems.push(format!("cannot remove {}: {e}", dir.display()));
                }
            }
        }
    }
    let dir = slot_dir(slot);
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            problems.push(format!("cannot remove {}: {e}", dir.display()));
        }
    }
    problems
}

/// Which labs `down` removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Labs whose owner process is gone (crashed tests, killed `ferry lab up`), and
    /// leftovers without a record. Never a detached lab, never one whose owner is alive.
    Dead,
    /// This slot, whoever owns it.
    Slot(u8),
    /// Every lab.
    All,
}

/// How a lab is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// Its owner process runs.
    Owned,
    /// Detached (`ferry lab up --keep-running`): its daemons are its owner.
    Detached,
    /// Owner gone or no record: `ferry lab down` removes it.
    Dead,
}

/// One lab as `ferry lab status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LabStatus {
    pub slot: u8,
    pub liveness: Liveness,
    /// Its recorded daemons still running.
    pub daemons_alive: usize,
    /// Its namespaces that exist now.
    pub namespaces: Vec<String>,
    pub record: Option<LabRecord>,
}

/// Every slot with anything in it (directory, namespace or root link).
fn used_slots() -> BTreeSet<u8> {
    let mut slots = BTreeSet::new();
    if let Ok(dir) = std::fs::read_dir(STATE_ROOT) {
        for e in dir.filter_map(|e| e.ok()) {
            if let Some(n) = e
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u8>().ok())
                .filter(|n| (1..=MAX_SLOT).contains(n))
            {
                slots.insert(n);
            }
        }
    }
    for name in sys::netns_list().iter().chain(sys::root_links().iter()) {
        if let Some(n) = slot_of(name) {
            slots.insert(n);
        }
    }
    slots
}

fn status_of(slot: u8) -> LabStatus {
    let record = read_record(slot);
    let liveness = match &record {
        Some(r) if r.detached => Liveness::Detached,
        Some(r) if r.owner.is_some_and(|o| o.alive()) => Liveness::Owned,
        _ => Liveness::Dead,
    };
    let prefix = slot_prefix(slot);
    let mut namespaces: Vec<String> = sys::netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    namespaces.sort();
    LabStatus {
        slot,
        liveness,
        daemons_alive: record
            .as_ref()
            .map(|r| r.daemons.iter().filter(|d| d.proc.alive()).count())
            .unwrap_or(0),
        namespaces,
        record,
    }
}

/// Every lab on this machine.
pub fn status() -> Vec<LabStatus> {
    used_slots().into_iter().map(status_of).collect()
}

/// Removes labs (see [`Which`]); returns the slots removed. Problems met on the way are
/// logged; a slot that could not be removed completely is still listed by `status`.
pub fn down(which: Which) -> Result<Vec<u8>, NetLabError> {
    let slots: Vec<u8> = match which {
        Which::Slot(n) => vec![n],
        Which::Dead | Which::All => used_slots().into_iter().collect(),
    };
    let mut removed = Vec::new();
    for slot in slots {
        let _lock = lock()?;
        // Decide under the lock: the slot may have been torn down and claimed again.
        let st = status_of(slot);
        let nothing = st.record.is_none() && st.namespaces.is_empty() && !slot_in_use(slot);
        if nothing {
            continue;
        }
        if which == Which::Dead && st.liveness != Liveness::Dead {
            continue;
        }
        let problems = teardown(slot, st.record.as_ref());
        for p in &problems {
            tracing::warn!("lab {slot}: {p}");
        }
        removed.push(slot);
    }
    Ok(removed)
}

/// Marks a lab detached: no owner process any more.
pub(crate) fn detach(rec: &mut LabRecord) -> Result<(), NetLabError> {
    rec.detached = true;
    rec.owner = None;
    write_record(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_their_slot() {
        assert_eq!(slot_of("fy1-sw"), Some(1));
        assert_eq!(slot_of("fy12-a"), Some(12));
        assert_eq!(slot_of("fy200-m"), Some(200));
        assert_eq!(slot_of("fy201-m"), None);
        assert_eq!(slot_of("fy0-a"), None);
        assert_eq!(slot_of("fy01-a"), None);
        assert_eq!(slot_of("fyx-a"), None);
        assert_eq!(slot_of("fy1"), None);
        assert_eq!(slot_of("eth0"), None);
        assert!(!"fy12-a".starts_with(&slot_prefix(1)));
    }
}
