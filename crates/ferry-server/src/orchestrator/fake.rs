//! A scripted cluster of fake agents for the orchestrator's unit tests (a fake inside a
//! unit test of the orchestrator's logic; end-to-end tests use real agents and QEMU).
//!
//! Each host keeps, per VM, what its QEMU would report: the migration status, whether the
//! guest runs, whether QEMU exited. A migration stream moves one step per poll of the
//! source, completes after `stream_polls` polls (the destination then runs, as QEMU's
//! autostart does), and obeys what a real QEMU does when its peer dies. Faults: a host's
//! agent down for a while (a crash and restart), a QEMU killed, the migration link cut, a
//! disk copy failing, and triggers that fire on a given call.
//!
//! The fake also judges: after every call it checks that at most one QEMU runs the guest
//! and that the orchestrator never killed the only whole copy of the VM; violations are
//! kept for the test to assert on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry_api::*;
use tokio::sync::Notify;

use super::agents::{AgentError, AgentResult, Agents};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Normal,
    Incoming,
    Outgoing,
}

#[derive(Debug, Clone)]
pub struct FakeVm {
    pub role: Role,
    pub status: MigrationStatus,
    pub running: bool,
    pub exited: bool,
    pub passes: u64,
    pub transferred: u64,
    pub disks: Vec<DiskCopyProgress>,
    pub copy_polls: u32,
}

impl FakeVm {
    fn normal() -> FakeVm {
        FakeVm {
            role: Role::Normal,
            status: MigrationStatus::None,
            running: true,
            exited: false,
            passes: 0,
            transferred: 0,
            disks: Vec::new(),
            copy_polls: 0,
        }
    }

    /// Holds everything needed to run the guest (and is not a spent source).
    fn whole(&self) -> bool {
        !self.exited
            && match self.role {
                Role::Incoming => self.status == MigrationStatus::Completed,
                _ => self.status != MigrationStatus::Completed && !self.status.is_postcopy(),
            }
    }
}

/// A fault that fires when a call is made.
#[derive(Debug, Clone)]
pub enum Fault {
    /// The host's agent does not answer for this long (then it is back, QEMUs intact).
    AgentDown { host: String, for_: Duration },
    /// The VM's QEMU on the host exits.
    KillQemu { host: String },
    /// The migration link carries nothing until `for_` has passed.
    CutLink { for_: Duration },
    /// The destination's pool fills up: the disk copy fails.
    PoolFull,
    /// Only wakes the test (e.g. to kill the orchestrator's task there).
    Notify,
}

#[derive(Default)]
struct State {
    hosts: HashMap<String, HashMap<String, FakeVm>>,
    down_until: HashMap<String, Instant>,
    link_cut_until: Option<Instant>,
    /// (call, host) -> faults fired after the call returns.
    triggers: Vec<(String, String, Fault)>,
    /// Fired when the source first reports `completed`.
    on_completed: Vec<Fault>,
    /// Fired when post-copy starts.
    on_postcopy: Vec<Fault>,
    calls: Vec<(String, String)>,
    violations: Vec<String>,
    stream_polls: u32,
    stream: Option<(String, String)>,
    /// The guest out-dirties the link (so the controller escalates).
    hopeless: bool,
    /// Polls of the source a disk copy needs to get in sync (0: the default, 3).
    copy_polls_needed: u32,
    /// A fault fired during the current call: the call yields before it returns, so the
    /// test can act (kill the orchestrator) at exactly that moment.
    just_fired: bool,
}

pub struct FakeCluster {
    state: Mutex<State>,
    pub vm: String,
    pub fired: Notify,
}

impl FakeCluster {
    /// Hosts `a` and `b`; the VM runs on `a`. The stream completes after `stream_polls`
    /// polls of the source.
    pub fn new(vm: &str, stream_polls: u32) -> Arc<FakeCluster> {
        let mut s = State {
            stream_polls,
            ..Default::default()
        };
        s.hosts.insert("a".into(), HashMap::new());
        s.hosts.insert("b".into(), HashMap::new());
        if let Some(a) = s.hosts.get_mut("a") {
            a.insert(vm.to_string(), FakeVm::normal());
        }
        Arc::new(FakeCluster {
            state: Mutex::new(s),
            vm: vm.to_string(),
            fired: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fire `fault` right after `call` is made on `host` (once).
    pub fn after(&self, call: &str, host: &str, fault: Fault) {
        self.lock()
            .triggers
            .push((call.to_string(), host.to_string(), fault));
    }

    /// Disk copies need this many polls of the source to get in sync.
    pub fn copy_polls(&self, polls: u32) {
        self.lock().copy_polls_needed = polls;
    }

    /// The guest dirties memory faster than the link moves it.
    pub fn hopeless(&self) {
        self.lock().hopeless = true;
    }

    /// Fire `fault` when the source first reports the stream completed.
    pub fn at_completion(&self, fault: Fault) {
        self.lock().on_completed.push(fault);
    }

    /// Fire `fault` right after post-copy starts.
    pub fn at_postcopy(&self, fault: Fault) {
        self.lock().on_postcopy.push(fault);
    }

    pub fn vm_on(&self, host: &str) -> Option<FakeVm> {
        self.lock()
            .hosts
            .get(host)
            .and_then(|h| h.get(&self.vm))
            .cloned()
    }

    pub fn calls(&self, call: &str) -> Vec<String> {
        self.lock()
            .calls
            .iter()
            .filter(|(c, _)| c == call)
            .map(|(_, h)| h.clone())
            .collect()
    }

    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// Hosts whose QEMU runs the guest.
    pub fn running_on(&self) -> Vec<String> {
        let s = self.lock();
        let mut out: Vec<String> = s
            .hosts
            .iter()
            .filter(|(_, vms)| vms.get(&self.vm).is_some_and(|v| v.running && !v.exited))
            .map(|(h, _)| h.clone())
            .collect();
        out.sort();
        out
    }

    fn fire(&self, s: &mut State, fault: Fault) {
        match fault {
            Fault::AgentDown { host, for_ } => {
                s.down_until.insert(host, Instant::now() + for_);
            }
            Fault::KillQemu { host } => {
                if let Some(v) = s.hosts.get_mut(&host).and_then(|h| h.get_mut(&self.vm)) {
                    v.exited = true;
                    v.running = false;
                }
                Self::peer_died(s, &self.vm);
            }
            Fault::CutLink { for_ } => s.link_cut_until = Some(Instant::now() + for_),
            Fault::PoolFull => {
                if let Some(v) = s.hosts.get_mut("a").and_then(|h| h.get_mut(&self.vm)) {
                    for d in &mut v.disks {
                        d.error = Some("No space left on device".into());
                        d.status = BlockJobStatus::Concluded;
                    }
                }
            }
            Fault::Notify => {}
        }
        s.just_fired = true;
        self.fired.notify_one();
    }

    /// What QEMU does when the other side of a pre-copy stream dies: the destination exits
    /// (exit-on-error), the source fails the migration and resumes its guest.
    fn peer_died(s: &mut State, vm: &str) {
        let Some((src, dst)) = s.stream.clone() else {
            return;
        };
        let dst_dead = s
            .hosts
            .get(&dst)
            .and_then(|h| h.get(vm))
            .is_none_or(|v| v.exited);
        let src_dead = s
            .hosts
            .get(&src)
            .and_then(|h| h.get(vm))
            .is_none_or(|v| v.exited);
        let status = s
            .hosts
            .get(&src)
            .and_then(|h| h.get(vm))
            .map(|v| v.status)
            .unwrap_or_default();
        if status.is_postcopy() || status == MigrationStatus::Completed {
            return; // post-copy: the survivor stays as it is; completed: nothing streams
        }
        if dst_dead && !src_dead {
            if let Some(v) = s.hosts.get_mut(&src).and_then(|h| h.get_mut(vm)) {
                v.status = MigrationStatus::Failed;
                v.running = true;
                v.role = Role::Normal;
            }
            s.stream = None;
        }
        if src_dead && !dst_dead {
            if let Some(v) = s.hosts.get_mut(&dst).and_then(|h| h.get_mut(vm)) {
                if v.status != MigrationStatus::Completed {
                    v.exited = true;
                }
            }
            s.stream = None;
        }
    }

    /// The safety judge, after every call.
    fn judge(&self, s: &mut State, what: &str) {
        let running = s
            .hosts
            .values()
            .filter(|h| h.get(&self.vm).is_some_and(|v| v.running && !v.exited))
            .count();
        if running > 1 {
            s.violations
                .push(format!("after {what}: the guest runs on {running} hosts"));
        }
    }

    /// Call bookkeeping: record, refuse if the host is down, fire triggers after.
    /// Every stream and export names its peer (QEMU's TLS admits only that host): the other
    /// side of the migration, never the host itself.
    fn check_peer(&self, host: &str, peer: &Option<String>) -> AgentResult<()> {
        let known = peer
            .as_deref()
            .is_some_and(|p| p != host && self.lock().hosts.contains_key(p));
        if known {
            return Ok(());
        }
        Err(AgentError::Refused {
            host: host.into(),
            reason: format!("peer_host {peer:?} is not the other side (fake)"),
        })
    }

    fn enter(&self, call: &str, host: &str) -> AgentResult<()> {
        let mut s = self.lock();
        s.calls.push((call.to_string(), host.to_string()));
        if s.down_until.get(host).is_some_and(|t| Instant::now() < *t) {
            return Err(AgentError::Unreachable {
                host: host.to_string(),
                reason: "connection refused (fake)".into(),
            });
        }
        if !s.hosts.contains_key(host) {
            return Err(AgentError::UnknownHost {
                host: host.to_string(),
            });
        }
        Ok(())
    }

    fn leave(&self, call: &str, host: &str) {
        let mut s = self.lock();
        let mut fired = Vec::new();
        s.triggers.retain(|(c, h, f)| {
            if c == call && h == host {
                fired.push(f.clone());
                false
            } else {
                true
            }
        });
        for f in fired {
            self.fire(&mut s, f);
        }
        self.judge(&mut s, call);
    }

    /// After a call: if a fault fired, let the test run before the caller sees the answer.
    async fn after_call(&self) {
        let fired = std::mem::take(&mut self.lock().just_fired);
        if fired {
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
        }
    }

    fn vm_mut<'a>(&self, s: &'a mut State, host: &str) -> AgentResult<&'a mut FakeVm> {
        s.hosts
            .get_mut(host)
            .and_then(|h| h.get_mut(&self.vm))
            .ok_or_else(|| AgentError::NotFound {
                host: host.to_string(),
                reason: format!("no VM named '{}'", self.vm),
            })
    }

    fn status_of_in(s: &State, v: &FakeVm) -> AgentMigrationStatus {
        let mut st = Self::status_of(v);
        if s.hopeless && !v.status.is_postcopy() {
            st.progress.remaining_bytes = 10 << 30;
            st.progress.dirty_rate_bytes_per_s = 200 << 20;
        }
        st
    }

    fn status_of(v: &FakeVm) -> AgentMigrationStatus {
        let vm_state = if v.exited {
            VmState::Crashed
        } else if v.running {
            VmState::Running
        } else if v.role == Role::Incoming {
            VmState::Incoming
        } else {
            VmState::Paused
        };
        AgentMigrationStatus {
            vm_state,
            progress: MigrationProgress {
                qemu_status: if v.exited {
                    MigrationStatus::Unknown
                } else {
                    v.status
                },
                passes: v.passes,
                transferred_bytes: v.transferred,
                remaining_bytes: 1 << 20,
                bandwidth_bytes_per_s: 100 << 20,
                ram_total_bytes: 256 << 20,
                disks: v.disks.clone(),
                ..Default::default()
            },
            downtime_ms: Some(50),
            error: None,
        }
    }

    /// One poll of the source moves the stream (or the copy) one step.
    fn step(&self, s: &mut State, host: &str) {
        let link_up = s.link_cut_until.is_none_or(|t| Instant::now() >= t);
        let Some((src, dst)) = s.stream.clone() else {
            return;
        };
        if host != src || !link_up {
            return;
        }
        let polls = s.stream_polls;
        let dst_alive = s
            .hosts
            .get(&dst)
            .and_then(|h| h.get(&self.vm))
            .is_some_and(|v| !v.exited);
        if !dst_alive {
            // The destination died before the stream reached it: QEMU fails the
            // migration and the source runs on.
            Self::peer_died(s, &self.vm);
            return;
        }
        let mut completed = false;
        if let Some(v) = s.hosts.get_mut(&src).and_then(|h| h.get_mut(&self.vm)) {
            if v.exited {
                return;
            }
            if matches!(
                v.status,
                MigrationStatus::Active | MigrationStatus::PostcopyActive | MigrationStatus::Setup
            ) {
                v.status = if v.status.is_postcopy() {
                    v.status
                } else {
                    MigrationStatus::Active
                };
                v.passes += 1;
                v.transferred += 64 << 20;
                if v.passes >= polls as u64 {
                    v.status = MigrationStatus::Completed;
                    v.running = false;
                    completed = true;
                }
            }
        }
        if completed {
            if let Some(d) = s.hosts.get_mut(&dst).and_then(|h| h.get_mut(&self.vm)) {
                if !d.exited {
                    d.status = MigrationStatus::Completed;
                    d.running = true; // QEMU's autostart
                }
            }
            s.stream = None;
            let faults = std::mem::take(&mut s.on_completed);
            for f in faults {
                self.fire(s, f);
            }
        }
    }

    fn copy_step(s: &mut State, vm: &str) {
        let link_up = s.link_cut_until.is_none_or(|t| Instant::now() >= t);
        let needed = if s.copy_polls_needed == 0 {
            3
        } else {
            s.copy_polls_needed
        };
        if let Some(v) = s.hosts.get_mut("a").and_then(|h| h.get_mut(vm)) {
            if v.disks.is_empty() || !link_up || v.disks.iter().any(|d| d.error.is_some()) {
                return;
            }
            v.copy_polls += 1;
            for d in &mut v.disks {
                d.copied_bytes = (d.copied_bytes + (64 << 20)).min(d.total_bytes);
                if v.copy_polls >= needed {
                    d.ready = true;
                    d.writes_blocking = true;
                    d.status = BlockJobStatus::Ready;
                }
            }
        }
    }
}

#[async_trait]
impl Agents for FakeCluster {
    async fn prepare_incoming(
        &self,
        host: &str,
        req: &IncomingRequest,
    ) -> AgentResult<IncomingResponse> {
        self.enter("prepare_incoming", host)?;
        self.check_peer(host, &req.peer_host)?;
        {
            let mut s = self.lock();
            let Some(h) = s.hosts.get_mut(host) else {
                return Err(AgentError::UnknownHost { host: host.into() });
            };
            if h.get(&self.vm).is_some_and(|v| !v.exited) {
                return Err(AgentError::Refused {
                    host: host.into(),
                    reason: "a VM of that name already runs here".into(),
                });
            }
            h.insert(
                self.vm.clone(),
                FakeVm {
                    role: Role::Incoming,
                    status: MigrationStatus::Setup,
                    running: false,
                    ..FakeVm::normal()
                },
            );
        }
        self.leave("prepare_incoming", host);
        self.after_call().await;
        Ok(IncomingResponse {
            listen: "127.0.0.1:4444".into(),
            advertised: "127.0.0.1:4444".into(),
            disk_export: (!req.copy_disks.is_empty()).then(|| "127.0.0.1:4445".to_string()),
            disk_export_names: req
                .copy_disks
                .iter()
                .map(|d| format!("random-{}", d.index))
                .collect(),
        })
    }

    async fn start_disk_copy(
        &self,
        host: &str,
        _vm: &str,
        req: &DiskCopyRequest,
    ) -> AgentResult<AgentMigrationStatus> {
        self.enter("start_disk_copy", host)?;
        self.check_peer(host, &req.peer_host)?;
        let named: Vec<String> = req.disks.iter().map(|i| format!("random-{i}")).collect();
        if req.export_names != named {
            return Err(AgentError::Refused {
                host: host.into(),
                reason: format!("export names {:?}, expected {named:?}", req.export_names),
            });
        }
        let status = {
            let mut s = self.lock();
            let v = self.vm_mut(&mut s, host)?;
            v.disks = req
                .disks
                .iter()
                .map(|i| DiskCopyProgress {
                    disk: format!("local/d{i}"),
                    total_bytes: 256 << 20,
                    status: BlockJobStatus::Running,
                    ..Default::default()
                })
                .collect();
            Self::status_of(v)
        };
        self.leave("start_disk_copy", host);
        self.after_call().await;
        Ok(status)
    }

    async fn start_outgoing(
        &self,
        host: &str,
        _vm: &str,
        req: &OutgoingRequest,
    ) -> AgentResult<AgentMigrationStatus> {
        self.enter("start_outgoing", host)?;
        self.check_peer(host, &req.peer_host)?;
        let status = {
            let mut s = self.lock();
            let dst = if host == "a" { "b" } else { "a" }.to_string();
            let v = self.vm_mut(&mut s, host)?;
            if v.exited {
                return Err(AgentError::Refused {
                    host: host.into(),
                    reason: "QEMU is not running".into(),
                });
            }
            v.role = Role::Outgoing;
            v.status = MigrationStatus::Setup;
            v.passes = 0;
            let st = Self::status_of(v);
            s.stream = Some((host.to_string(), dst));
            st
        };
        self.leave("start_outgoing", host);
        self.after_call().await;
        Ok(status)
    }

    async fn migration_status(&self, host: &str, _vm: &str) -> AgentResult<AgentMigrationStatus> {
        self.enter("migration_status", host)?;
        let status = {
            let mut s = self.lock();
            self.step(&mut s, host);
            Self::copy_step(&mut s, &self.vm);
            let v = self.vm_mut(&mut s, host)?.clone();
            Self::status_of_in(&s, &v)
        };
        self.leave("migration_status", host);
        self.after_call().await;
        Ok(status)
    }

    async fn tune(
        &self,
        host: &str,
        _vm: &str,
        req: &TuneRequest,
    ) -> AgentResult<AgentMigrationStatus> {
        self.enter("tune", host)?;
        let status = {
            let mut s = self.lock();
            let dst = if host == "a" { "b" } else { "a" };
            if req.start_postcopy {
                if let Some(d) = s.hosts.get_mut(dst).and_then(|h| h.get_mut(&self.vm)) {
                    d.status = MigrationStatus::PostcopyActive;
                    d.running = true;
                }
                let v = self.vm_mut(&mut s, host)?;
                v.status = MigrationStatus::PostcopyActive;
                v.running = false;
                let faults = std::mem::take(&mut s.on_postcopy);
                for f in faults {
                    self.fire(&mut s, f);
                }
            }
            Self::status_of(self.vm_mut(&mut s, host)?)
        };
        self.leave("tune", host);
        self.after_call().await;
        Ok(status)
    }

    async fn cancel_outgoing(&self, host: &str, _vm: &str) -> AgentResult<()> {
        self.enter("cancel_outgoing", host)?;
        {
            let mut s = self.lock();
            let v = self.vm_mut(&mut s, host)?;
            if v.exited {
                return Err(AgentError::Refused {
                    host: host.into(),
                    reason: "QEMU is not running".into(),
                });
            }
            if v.status == MigrationStatus::Completed || v.status.is_postcopy() {
                return Err(AgentError::Refused {
                    host: host.into(),
                    reason: format!("the migration is {}; refusing to resume", v.status),
                });
            }
            v.status = MigrationStatus::Cancelled;
            v.running = true;
            v.role = Role::Normal;
            v.disks.clear();
            s.stream = None;
        }
        self.leave("cancel_outgoing", host);
        self.after_call().await;
        Ok(())
    }

    async fn reclaim(&self, host: &str, _vm: &str) -> AgentResult<()> {
        self.enter("reclaim", host)?;
        {
            let mut s = self.lock();
            let v = self.vm_mut(&mut s, host)?;
            if v.status != MigrationStatus::Completed || v.role != Role::Outgoing {
                return Err(AgentError::Refused {
                    host: host.into(),
                    reason: "not a completed source".into(),
                });
            }
            v.running = true;
            v.role = Role::Normal;
            v.status = MigrationStatus::None;
        }
        self.leave("reclaim", host);
        self.after_call().await;
        Ok(())
    }

    async fn remove(&self, host: &str, _vm: &str) -> AgentResult<()> {
        self.enter("remove", host)?;
        {
            let mut s = self.lock();
            let others_whole = s
                .hosts
                .iter()
                .filter(|(h, _)| h.as_str() != host)
                .any(|(_, vms)| vms.get(&self.vm).is_some_and(|v| v.whole()));
            let Some(h) = s.hosts.get_mut(host) else {
                return Err(AgentError::UnknownHost { host: host.into() });
            };
            let Some(v) = h.remove(&self.vm) else {
                return Err(AgentError::NotFound {
                    host: host.into(),
                    reason: "no such VM".into(),
                });
            };
            if v.whole() && !others_whole {
                s.violations
                    .push(format!("removed the only whole copy of the VM on {host}"));
            }
            Self::peer_died(&mut s, &self.vm);
        }
        self.leave("remove", host);
        self.after_call().await;
        Ok(())
    }

    async fn hand_over(&self, host: &str, _vm: &str) -> AgentResult<()> {
        self.enter("hand_over", host)?;
        {
            let mut s = self.lock();
            let v = self.vm_mut(&mut s, host)?;
            if v.status != MigrationStatus::Completed {
                return Err(AgentError::Refused {
                    host: host.into(),
                    reason: format!("migration is '{}', not completed", v.status),
                });
            }
            if let Some(h) = s.hosts.get_mut(host) {
                h.remove(&self.vm);
            }
        }
        self.leave("hand_over", host);
        self.after_call().await;
        Ok(())
    }

    async fn pause_checkpoints(&self, host: &str, _vm: &str) -> AgentResult<Vec<PauseCheckpoint>> {
        self.enter("pause_checkpoints", host)?;
        self.leave("pause_checkpoints", host);
        Ok(Vec::new())
    }

    async fn announce(&self, host: &str, _vm: &str) -> AgentResult<()> {
        self.enter("announce", host)?;
        self.leave("announce", host);
        self.after_call().await;
        Ok(())
    }

    /// The fake hosts have no taps: no record, as an agent says of a VM without a NIC.
    async fn frame_report(&self, host: &str, vm: &str, _wait_ms: u64) -> AgentResult<FrameReport> {
        Err(AgentError::NotFound {
            host: host.into(),
            reason: format!("no frame record of VM '{vm}'"),
        })
    }

    async fn delete_disk(&self, host: &str, _pool: &str, _image: &str) -> AgentResult<()> {
        self.enter("delete_disk", host)?;
        self.leave("delete_disk", host);
        self.after_call().await;
        Ok(())
    }

    async fn pause_postcopy(&self, host: &str, _vm: &str) -> AgentResult<AgentMigrationStatus> {
        self.enter("pause_postcopy", host)?;
        let st = {
            let mut s = self.lock();
            let v = self.vm_mut(&mut s, host)?;
            if v.status.is_postcopy() {
                v.status = MigrationStatus::PostcopyPaused;
            }
            Self::status_of(v)
        };
        self.leave("pause_postcopy", host);
        self.after_call().await;
        Ok(st)
    }

    async fn recover_incoming(
        &self,
        host: &str,
        _vm: &str,
        req: &RecoverRequest,
    ) -> AgentResult<IncomingResponse> {
        self.enter("recover_incoming", host)?;
        self.check_peer(host, &req.peer_host)?;
        {
            let mut s = self.lock();
            let v = self.vm_mut(&mut s, host)?;
            v.status = MigrationStatus::PostcopyRecover;
        }
        self.leave("recover_incoming", host);
        self.after_call().await;
        Ok(IncomingResponse {
            listen: "127.0.0.1:4446".into(),
            advertised: "127.0.0.1:4446".into(),
            disk_export: None,
            disk_export_names: Vec::new(),
        })
    }

    async fn resume_outgoing(
        &self,
        host: &str,
        _vm: &str,
        req: &ResumeRequest,
    ) -> AgentResult<AgentMigrationStatus> {
        self.enter("resume_outgoing", host)?;
        self.check_peer(host, &req.peer_host)?;
        let st = {
            let mut s = self.lock();
            for h in ["a", "b"] {
                if let Some(v) = s.hosts.get_mut(h).and_then(|x| x.get_mut(&self.vm)) {
                    if v.status.is_postcopy() {
                        v.status = MigrationStatus::PostcopyActive;
                    }
                }
            }
            let dst = if host == "a" { "b" } else { "a" };
            s.stream = Some((host.to_string(), dst.to_string()));
            Self::status_of(self.vm_mut(&mut s, host)?)
        };
        self.leave("resume_outgoing", host);
        self.after_call().await;
        Ok(st)
    }

    async fn probe_link(
        &self,
        source: &str,
        destination: &str,
        _bytes: u64,
        _max_ms: u64,
    ) -> AgentResult<ProbeSendResponse> {
        self.enter("probe_link", source)?;
        self.enter("probe_link", destination)?;
        let cut = self
            .lock()
            .link_cut_until
            .is_some_and(|t| Instant::now() < t);
        if cut {
            return Err(AgentError::Failed {
                host: source.into(),
                reason: "no route (fake)".into(),
            });
        }
        Ok(ProbeSendResponse {
            connect_ms: 1.0,
            bytes_sent: 1 << 20,
            elapsed_ms: 10.0,
            bytes_per_s: 100 << 20,
        })
    }
}
