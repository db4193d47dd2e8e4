//! One VM's QEMU process, its QMP connection and its supervisor.
//!
//! Capabilities are small traits ([`Pausable`], [`Migratable`]) so the host logic names
//! what it needs from a VM rather than reaching into QEMU.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_api::{
    AgentMigrationStatus, Compression, DiskCopyProgress, MigrationProgress, OutgoingRequest,
    StreamSettings, TuneRequest, VmRuntime, VmState, ZeroPage,
};
use ferry_qemu::{build_args, QemuProcess, ResolvedBoot, RuntimePaths};
use ferry_qmp::{
    MigrationParameters, MigrationStatus, MultifdCompression, QmpClient, RunState,
    ZeroPageDetection,
};
use tokio::sync::watch;

use crate::error::AgentError;
use crate::persist::{PersistedVm, QemuFiles, Role};
use crate::qemu_tls::PeerTls;

/// How long QEMU gets to open its QMP socket after start.
const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a status question to QEMU's monitor may take before QEMU counts as
/// unresponsive (a busy main loop, e.g. a destination waiting for a page in post-copy).
pub const MONITOR_TIMEOUT: Duration = Duration::from_secs(3);

/// Pausing and resuming the guest's vCPUs.
#[allow(async_fn_in_trait)]
pub trait Pausable {
    async fn pause(&self) -> Result<(), AgentError>;
    async fn resume(&self) -> Result<(), AgentError>;
}

/// Either side of a live migration.
#[allow(async_fn_in_trait)]
pub trait Migratable {
    /// Destination: set up the stream as the source will (`stream`), over QEMU's TLS
    /// admitting only the peer when `tls` is given, then listen on `address`:`port` (0:
    /// QEMU picks a free port); returns the port it listens on.
    async fn listen_incoming(
        &self,
        address: IpAddr,
        port: u16,
        stream: &StreamSettings,
        tls: Option<PeerTls<'_>>,
    ) -> Result<u16, AgentError>;
    /// Source: start sending (over QEMU's TLS, to the peer only, when `tls` is given).
    async fn send(&self, req: &OutgoingRequest, tls: Option<PeerTls<'_>>)
        -> Result<(), AgentError>;
    /// Either side: where the migration is.
    async fn migration_status(&self) -> Result<AgentMigrationStatus, AgentError>;
    /// Source: stop sending and make sure the guest runs here.
    async fn cancel_outgoing(&self) -> Result<(), AgentError>;
}

/// What a restarted agent found in a VM's directory.
pub enum Adoption {
    /// Its QEMU runs and its monitor answered.
    Adopted(Arc<QemuVm>),
    /// No QEMU runs for this record any more.
    Gone(PersistedVm),
    /// Its QEMU runs but its monitor does not answer (yet).
    Unresponsive(Unadopted),
}

/// A QEMU that runs but whose monitor has not answered the restarted agent: shown as
/// `Unresponsive` (never as gone) while adoption is retried.
#[derive(Debug, Clone)]
pub struct Unadopted {
    pub dir: PathBuf,
    pub record: PersistedVm,
    pub pid: u32,
    /// Why the last attempt failed.
    pub reason: String,
}

impl Unadopted {
    fn new(dir: PathBuf, record: PersistedVm, pid: u32, reason: String) -> Unadopted {
        Unadopted {
            dir,
            record,
            pid,
            reason,
        }
    }

    pub fn runtime(&self) -> VmRuntime {
        VmRuntime {
            spec: self.record.spec.clone(),
            state: VmState::Unresponsive,
            qemu_status: None,
            pid: Some(self.pid),
            accel: self.record.accel,
            started_at: self.record.started_at,
            exit_reason: None,
        }
    }

    /// Whether its QEMU still runs.
    pub fn is_alive(&self) -> bool {
        ferry_qemu::process::pid_alive(self.pid)
    }

    /// Ends its QEMU (SIGKILL: its monitor does not answer, so it cannot be asked).
    pub fn kill(&self) {
        QemuProcess {
            pid: self.pid,
            child: None,
        }
        .kill();
    }
}

/// A VM's QEMU as this agent runs it.
pub struct QemuVm {
    pub name: String,
    pub dir: PathBuf,
    pub paths: RuntimePaths,
    record: Mutex<PersistedVm>,
    pid: u32,
    pub(crate) qmp: QmpClient,
    /// The out-of-band-only connection (post-copy pause and recovery); None if QEMU did not
    /// offer out-of-band execution or the socket did not answer.
    pub(crate) oob_qmp: Option<QmpClient>,
    stop_requested: AtomicBool,
    /// Source of a storage copy: the disks' last known copy progress (kept after the copy
    /// finished, for the final report) and why finishing the copy failed, if it did.
    pub(crate) disk_progress: Arc<Mutex<Vec<DiskCopyProgress>>>,
    pub(crate) copy_error: Arc<Mutex<Option<String>>>,
    /// None while QEMU runs; the reason once it exited.
    exit: watch::Receiver<Option<String>>,
    /// Serializes state-changing operations on this VM (migrate, cancel, stop).
    pub op_lock: tokio::sync::Mutex<()>,
}

/// The second QMP socket of a VM launched with `aux_qmp` (see `AgentConfig::aux_qmp`).
pub const AUX_QMP_SOCKET: &str = "qmp-aux.sock";

fn paths_in(dir: &Path, aux_qmp: bool) -> RuntimePaths {
    RuntimePaths {
        qmp_socket: dir.join("qmp.sock"),
        oob_qmp_socket: dir.join("qmp-oob.sock"),
        aux_qmp_socket: aux_qmp.then(|| dir.join(AUX_QMP_SOCKET)),
        console_log: dir.join("console.log"),
        pidfile: dir.join("qemu.pid"),
    }
}

impl From<&RuntimePaths> for QemuFiles {
    fn from(p: &RuntimePaths) -> Self {
        QemuFiles {
            qmp_socket: p.qmp_socket.clone(),
            oob_qmp_socket: p.oob_qmp_socket.clone(),
            aux_qmp_socket: p.aux_qmp_socket.clone(),
            console_log: p.console_log.clone(),
            pidfile: p.pidfile.clone(),
        }
    }
}

/// The files of the QEMU `record` describes: as recorded at its start, or (a record from
/// before they were recorded) where the agent of then put them.
pub(crate) fn recorded_paths(dir: &Path, record: &PersistedVm) -> RuntimePaths {
    match &record.files {
        Some(f) => RuntimePaths {
            qmp_socket: f.qmp_socket.clone(),
            oob_qmp_socket: f.oob_qmp_socket.clone(),
            aux_qmp_socket: f.aux_qmp_socket.clone(),
            console_log: f.console_log.clone(),
            pidfile: f.pidfile.clone(),
        },
        None => paths_in(dir, record.aux_qmp),
    }
}

pub(crate) fn record_path(dir: &Path) -> PathBuf {
    dir.join("vm.json")
}

fn internal(what: &str) -> impl Fn(String) -> AgentError + '_ {
    move |reason| AgentError::process(format!("{what}: {reason}"))
}

impl QemuVm {
    /// Starts QEMU for `record` in `dir` and connects to it.
    pub async fn launch(
        qemu: &Path,
        mut record: PersistedVm,
        boot: &ResolvedBoot,
        taps: &[String],
        disks: &[PathBuf],
        dir: PathBuf,
        how: ferry_qemu::cmdline::Launch<'_>,
    ) -> Result<Arc<QemuVm>, AgentError> {
        let start = how.start;
        std::fs::create_dir_all(&dir)
            .map_err(|e| internal("cannot create the VM directory")(e.to_string()))?;
        let paths = paths_in(&dir, record.aux_qmp);
        record.files = Some(QemuFiles::from(&paths));
        for stale in [&paths.qmp_socket, &paths.oob_qmp_socket, &paths.pidfile] {
            let _ = std::fs::remove_file(stale);
        }
        // A new QEMU instance gets a fresh console: readers look for this instance's lines.
        std::fs::write(&paths.console_log, b"")
            .map_err(|e| internal("cannot create the console log")(e.to_string()))?;
        record.save(&record_path(&dir)).map_err(AgentError::from)?;
        let args = build_args(&record.spec, boot, record.accel, &paths, taps, disks, how);
        let log = dir.join("qemu.log");
        let mut process = QemuProcess::spawn(qemu, &args, &log)
            .map_err(|e| AgentError::process(e.to_string()))?;
        tracing::info!(vm = %record.spec.name, pid = process.pid, ?start, "QEMU started");
        let qmp = match QmpClient::connect_with_retry(&paths.qmp_socket, QMP_CONNECT_TIMEOUT).await
        {
            Ok(q) => q,
            Err(e) => {
                process.kill();
                if let Some(child) = process.child.as_mut() {
                    let _ = child.wait().await;
                }
                return Err(AgentError::process(format!(
                    "QEMU did not come up: {e}; QEMU said: {}",
                    log_tail(&log)
                )));
            }
        };
        let oob_qmp = connect_oob(&paths.oob_qmp_socket).await;
        Ok(Self::supervise(record, dir, paths, process, qmp, oob_qmp))
    }

    /// Adopts a QEMU left running by an earlier agent, from its directory, through the
    /// files its record names. `monitor_wait`: how long its monitor gets to answer.
    pub async fn adopt(dir: PathBuf, monitor_wait: Duration) -> Result<Adoption, AgentError> {
        let record = PersistedVm::load(&record_path(&dir))?;
        let paths = recorded_paths(&dir, &record);
        let Some(pid) = ferry_qemu::process::read_pidfile(&paths.pidfile) else {
            return Ok(Adoption::Gone(record));
        };
        let Some(process) = QemuProcess::adopt(pid, &paths.qmp_socket) else {
            return Ok(Adoption::Gone(record));
        };
        // Bounded as a whole: a QEMU whose main loop hangs accepts the connection but
        // never greets.
        let connect = QmpClient::connect_with_retry(&paths.qmp_socket, monitor_wait);
        let qmp = match tokio::time::timeout(monitor_wait + MONITOR_TIMEOUT, connect).await {
            Ok(Ok(q)) => q,
            Ok(Err(e)) => {
                return Ok(Adoption::Unresponsive(Unadopted::new(
                    dir,
                    record,
                    pid,
                    format!(
                        "QEMU pid {pid} runs but its monitor {} does not answer: {e}",
                        paths.qmp_socket.display()
                    ),
                )))
            }
            Err(_) => {
                return Ok(Adoption::Unresponsive(Unadopted::new(
                    dir,
                    record,
                    pid,
                    format!(
                        "QEMU pid {pid} runs but its monitor {} did not greet within {} s",
                        paths.qmp_socket.display(),
                        (monitor_wait + MONITOR_TIMEOUT).as_secs()
                    ),
                )))
            }
        };
        let oob_qmp = connect_oob(&paths.oob_qmp_socket).await;
        Ok(Adoption::Adopted(Self::supervise(
            record, dir, paths, process, qmp, oob_qmp,
        )))
    }

    fn supervise(
        record: PersistedVm,
        dir: PathBuf,
        paths: RuntimePaths,
        mut process: QemuProcess,
        qmp: QmpClient,
        oob_qmp: Option<QmpClient>,
    ) -> Arc<QemuVm> {
        let (exit_tx, exit_rx) = watch::channel(None);
        let vm = Arc::new(QemuVm {
            name: record.spec.name.clone(),
            dir: dir.clone(),
            paths,
            record: Mutex::new(record),
            pid: process.pid,
            qmp: qmp.clone(),
            oob_qmp,
            stop_requested: AtomicBool::new(false),
            disk_progress: Arc::new(Mutex::new(Vec::new())),
            copy_error: Arc::new(Mutex::new(None)),
            exit: exit_rx,
            op_lock: tokio::sync::Mutex::new(()),
        });
        let name = vm.name.clone();
        let log = dir.join("qemu.log");
        tokio::spawn(async move {
            let status = match process.child.as_mut() {
                Some(child) => match child.wait().await {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("unknown ({e})"),
                },
                None => {
                    // Adopted: not our child, so watch QMP and the pid instead.
                    qmp.closed().await;
                    while process.is_alive() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    "exited".to_string()
                }
            };
            let tail = log_tail(&log);
            let reason = if tail.is_empty() {
                format!("QEMU {status}")
            } else {
                format!("QEMU {status}: {tail}")
            };
            tracing::info!(vm = %name, %reason, "QEMU exited");
            let _ = exit_tx.send(Some(reason));
        });
        vm
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn record(&self) -> PersistedVm {
        self.record
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn role(&self) -> Role {
        self.record().role
    }

    pub fn set_role(&self, role: Role) -> Result<(), AgentError> {
        self.update_record(|r| r.role = role)
    }

    /// Changes the record and saves it (atomically) before returning.
    pub fn update_record(&self, change: impl FnOnce(&mut PersistedVm)) -> Result<(), AgentError> {
        let mut rec = self.record.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut rec);
        rec.save(&record_path(&self.dir)).map_err(AgentError::from)
    }

    /// Why QEMU exited, once it did.
    pub fn exit_reason(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    pub fn is_running_process(&self) -> bool {
        self.exit_reason().is_none()
    }

    /// Kills QEMU and waits until it is gone (a few seconds at most).
    pub async fn kill(&self) {
        self.stop_requested.store(true, Ordering::SeqCst);
        if self.exit_reason().is_some() {
            return;
        }
        // Ask nicely first: `quit` returns at once and QEMU exits cleanly.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.qmp.quit()).await;
        let mut rx = self.exit.clone();
        let exited = tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|e| e.is_some()))
            .await
            .is_ok();
        if !exited {
            QemuProcess {
                pid: self.pid,
                child: None,
            }
            .kill();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|e| e.is_some())).await;
        }
    }

    /// Bounds what QEMU's stream sockets hold unsent (see `stream_socket`). Best effort: a
    /// socket that cannot be reached costs the pause a backlog, never the migration.
    fn limit_unsent(&self, bytes: u32) {
        let Some(peer) = self.record().stream_peer else {
            return;
        };
        match crate::stream_socket::limit_unsent(self.pid, peer, bytes) {
            Ok(n) => {
                tracing::info!(vm = %self.name, %peer, sockets = n, bytes, "stream's unsent bytes bounded")
            }
            Err(e) => {
                tracing::warn!(vm = %self.name, %peer, "cannot bound the stream's unsent bytes: {e}")
            }
        }
    }

    /// Turns on QEMU's checkpoints of the switch-over pause (`ferry_migration::pause`): a
    /// few log lines per migration. A QEMU that refuses only costs the report its pieces.
    async fn trace_pause(&self) {
        let args = serde_json::json!({"name": ferry_migration::pause::TRACE_EVENT, "enable": true});
        if let Err(e) = self
            .qmp
            .execute_raw("trace-event-set-state", Some(args))
            .await
        {
            tracing::warn!(vm = %self.name, "QEMU will not trace the switch-over pause: {e}");
        }
    }

    /// The checkpoints of this QEMU's last switch-over pause, from its log.
    pub fn pause_checkpoints(&self) -> Result<Vec<ferry_migration::pause::Checkpoint>, AgentError> {
        let tail = crate::host::read_tail(&self.dir.join("qemu.log"), 256 << 10)?;
        Ok(ferry_migration::pause::last_pause(&tail.text))
    }

    /// QEMU's self-announce with its configured timing (RARP from every NIC).
    pub async fn announce(&self) -> Result<(), AgentError> {
        self.qmp
            .announce_self(None)
            .await
            .map_err(|e| qmp_err("announce-self", e))
    }

    /// The VM's state and QEMU's run state as the API shows them. A monitor that does not
    /// answer within [`MONITOR_TIMEOUT`] reads as `Unresponsive`: alive, state unknown
    /// (never as starting, and never as gone).
    async fn state(&self) -> (VmState, Option<RunState>) {
        let rec = self.record();
        if self.exit_reason().is_some() {
            return if self.stop_requested.load(Ordering::SeqCst) {
                (VmState::Stopped, None)
            } else {
                (VmState::Crashed, None)
            };
        }
        match tokio::time::timeout(MONITOR_TIMEOUT, self.qmp.query_status()).await {
            Ok(Ok(s)) => {
                let state = derive_state(rec.role, &s.status);
                if rec.role == Role::Incoming
                    && s.status == RunState::Running
                    && !self.in_postcopy().await
                {
                    // The stream completed and the guest runs here now. (In post-copy it
                    // runs here while pages still arrive.)
                    let _ = self.set_role(Role::Normal);
                }
                (state, Some(s.status))
            }
            Ok(Err(e)) if e.is_disconnected() => {
                // The monitor closed: QEMU is on its way out; the supervisor will say so.
                (VmState::Unresponsive, None)
            }
            _ => (VmState::Unresponsive, None),
        }
    }

    /// The VM as the API shows it.
    pub async fn runtime(&self) -> VmRuntime {
        let rec = self.record();
        let (state, run_state) = self.state().await;
        let exit = self.exit_reason();
        VmRuntime {
            spec: rec.spec,
            state,
            qemu_status: run_state.map(|s| s.to_string()),
            pid: exit.is_none().then_some(self.pid),
            accel: rec.accel,
            started_at: rec.started_at,
            exit_reason: exit,
        }
    }
}

impl QemuVm {
    /// Whether QEMU's migration is in one of the post-copy states (the guest runs on the
    /// destination, pages still flow). Unknown counts as yes: the safe side for callers.
    pub(crate) async fn in_postcopy(&self) -> bool {
        match self.qmp.query_migrate().await {
            Ok(info) => matches!(
                info.status,
                Some(
                    MigrationStatus::PostcopyActive
                        | MigrationStatus::PostcopyPaused
                        | MigrationStatus::PostcopyRecover
                        | MigrationStatus::PostcopyRecoverSetup
                )
            ),
            Err(_) => true,
        }
    }

    /// Capabilities and parameters both sides must share, set before the stream starts.
    /// `pause_before_switchover` only on a source copying disks.
    async fn set_up_stream(
        &self,
        stream: &StreamSettings,
        pause_before_switchover: bool,
    ) -> Result<(), AgentError> {
        // A QEMU that took part in a quick migration (a reclaimed source) may still have
        // `mapped-ram`, which only works with a file.
        self.reset_quick_caps().await;
        let mut caps = stream.capabilities();
        caps.push(("pause-before-switchover", pause_before_switchover));
        self.qmp
            .migrate_set_capabilities(&caps)
            .await
            .map_err(|e| qmp_err("migrate-set-capabilities", e))?;
        self.trace_pause().await;
        let params = MigrationParameters {
            multifd_channels: (stream.streams > 1).then_some(stream.streams as u64),
            multifd_compression: match stream.compression {
                Compression::Zstd => Some(MultifdCompression::Zstd),
                Compression::Zlib => Some(MultifdCompression::Zlib),
                _ if stream.streams > 1 => Some(MultifdCompression::None),
                _ => None,
            },
            zero_page_detection: stream.zero_page.map(|z| match z {
                ZeroPage::None => ZeroPageDetection::None,
                ZeroPage::Legacy => ZeroPageDetection::Legacy,
                ZeroPage::Multifd => ZeroPageDetection::Multifd,
            }),
            xbzrle_cache_size: (stream.xbzrle_cache_bytes > 0).then_some(stream.xbzrle_cache_bytes),
            ..Default::default()
        };
        self.qmp
            .migrate_set_parameters(&params)
            .await
            .map_err(|e| qmp_err("migrate-set-parameters", e))
    }

    /// QEMU's TLS on this side of the stream (nothing without `tls`), and the peer in the
    /// record: a post-copy recovery must name the same one.
    async fn secure_stream(
        &self,
        tls: Option<PeerTls<'_>>,
        incoming: bool,
    ) -> Result<(), AgentError> {
        if let Some(t) = tls {
            match incoming {
                true => t.secure_incoming(&self.qmp, &self.dir).await?,
                false => t.secure_outgoing(&self.qmp, &self.dir).await?,
            }
        }
        self.update_record(|r| r.tls_peer = tls.map(|t| t.peer.to_string()))
    }

    /// Source: the controller's live changes.
    pub async fn tune(&self, req: &TuneRequest) -> Result<(), AgentError> {
        if let Some(p) = req.throttle_pct {
            let p = p.clamp(1, 99) as u64;
            // QEMU moves an active throttle by `increment` up to `max` at its next trigger:
            // a large increment makes that one step to exactly `p`.
            let params = MigrationParameters {
                cpu_throttle_initial: Some(p),
                cpu_throttle_increment: Some(99),
                max_cpu_throttle: Some(p),
                ..Default::default()
            };
            self.qmp
                .migrate_set_parameters(&params)
                .await
                .map_err(|e| qmp_err("migrate-set-parameters", e))?;
        }
        if let Some(cap) = req.max_bandwidth_bytes_s {
            // As at the start (`send`): one cap for pre-copy and post-copy, 0 = no limit.
            let params = MigrationParameters {
                max_bandwidth: Some(cap),
                max_postcopy_bandwidth: Some(cap),
                ..Default::default()
            };
            self.qmp
                .migrate_set_parameters(&params)
                .await
                .map_err(|e| qmp_err("migrate-set-parameters", e))?;
        }
        if let Some(bytes) = req.unsent_limit_bytes {
            self.limit_unsent(bytes);
        }
        if let Some(ms) = req.downtime_limit_ms {
            // The convergence controller moved the switch-over target.
            let params = MigrationParameters {
                downtime_limit: Some(ms),
                ..Default::default()
            };
            self.qmp
                .migrate_set_parameters(&params)
                .await
                .map_err(|e| qmp_err("migrate-set-parameters", e))?;
        }
        if req.start_postcopy {
            self.qmp
                .migrate_start_postcopy()
                .await
                .map_err(|e| qmp_err("migrate-start-postcopy", e))?;
        }
        Ok(())
    }
}

/// Ferry's out-of-band monitor, negotiated while QEMU is healthy (capability negotiation
/// itself is in-band). Without it post-copy recovery falls back to the main monitor.
async fn connect_oob(socket: &Path) -> Option<QmpClient> {
    if !socket.exists() {
        // A QEMU started by an older agent, adopted: it has no such monitor.
        return None;
    }
    let options = ferry_qmp::QmpOptions {
        connect_retry: Some(Duration::from_secs(5)),
        oob: true,
        ..Default::default()
    };
    match QmpClient::connect_with(socket, options).await {
        Ok(q) => Some(q),
        Err(e) => {
            tracing::warn!(socket = %socket.display(), "no out-of-band QMP connection: {e}");
            None
        }
    }
}

/// The API state from the agent's role and QEMU's run state.
pub fn derive_state(role: Role, status: &RunState) -> VmState {
    match (role, status) {
        (_, RunState::Running) => VmState::Running,
        (Role::Incoming, _) => VmState::Incoming,
        (_, RunState::PostMigrate) => VmState::MigratedAway,
        (_, RunState::Prelaunch | RunState::InMigrate) => VmState::Starting,
        (_, RunState::Shutdown) => VmState::Stopped,
        _ => VmState::Paused,
    }
}

impl Pausable for QemuVm {
    async fn pause(&self) -> Result<(), AgentError> {
        self.qmp.stop().await.map_err(|e| qmp_err("stop", e))
    }
    async fn resume(&self) -> Result<(), AgentError> {
        self.qmp.cont().await.map_err(|e| qmp_err("cont", e))
    }
}

impl Migratable for QemuVm {
    async fn listen_incoming(
        &self,
        address: IpAddr,
        port: u16,
        stream: &StreamSettings,
        tls: Option<PeerTls<'_>>,
    ) -> Result<u16, AgentError> {
        self.set_up_stream(stream, false).await?;
        self.secure_stream(tls, true).await?;
        let host = match address {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        self.qmp
            .migrate_incoming(&format!("tcp:{host}:{port}"))
            .await
            .map_err(|e| qmp_err("migrate-incoming", e))?;
        let info = self
            .qmp
            .query_migrate()
            .await
            .map_err(|e| qmp_err("query-migrate", e))?;
        info.listening_port().ok_or_else(|| {
            AgentError::internal("QEMU listens for the migration but did not say on which port")
        })
    }

    async fn send(
        &self,
        req: &OutgoingRequest,
        tls: Option<PeerTls<'_>>,
    ) -> Result<(), AgentError> {
        // With disks being copied, QEMU pauses before the switch so the copies can finish
        // while the vCPUs are stopped (see `disk_copy`). Set either way: capabilities
        // outlive a migration inside QEMU.
        let copying = !self.record().copying_disks.is_empty();
        if copying {
            self.check_disks_in_sync().await?;
        }
        self.set_up_stream(&req.stream, copying).await?;
        self.secure_stream(tls, false).await?;
        let params = MigrationParameters {
            // QEMU's default cap is 128 MiB/s, which would throttle every migration on a
            // fast link; 0 disables QEMU's rate limit (RATE_LIMIT_DISABLED).
            max_bandwidth: Some(req.max_bandwidth_bytes),
            // The operator's cap holds in post-copy too (QEMU has a separate one, 0 = none).
            max_postcopy_bandwidth: Some(req.max_bandwidth_bytes),
            downtime_limit: Some(req.downtime_limit_ms),
            // Auto-converge stays at a token 1 % until the controller raises it.
            cpu_throttle_initial: req.stream.throttle.then_some(1),
            cpu_throttle_increment: req.stream.throttle.then_some(1),
            max_cpu_throttle: req.stream.throttle.then_some(1),
            ..Default::default()
        };
        self.qmp
            .migrate_set_parameters(&params)
            .await
            .map_err(|e| qmp_err("migrate-set-parameters", e))?;
        self.set_role(Role::Outgoing)?;
        let peer = crate::stream_socket::peer_of_uri(&req.uri);
        self.update_record(|r| r.stream_peer = peer)?;
        let switch_events = self.qmp.events();
        if let Err(e) = self.qmp.migrate(&req.uri, false).await {
            let _ = self.set_role(Role::Normal);
            return Err(qmp_err("migrate", e));
        }
        if copying {
            self.finish_copies_at_switch_over(switch_events);
        }
        Ok(())
    }

    async fn migration_status(&self) -> Result<AgentMigrationStatus, AgentError> {
        let (vm_state, _) = self.state().await;
        if matches!(
            vm_state,
            VmState::Crashed | VmState::Stopped | VmState::Unresponsive
        ) {
            // Nothing more can be asked; the state says what is known.
            return Ok(AgentMigrationStatus {
                vm_state,
                progress: MigrationProgress {
                    qemu_status: ferry_api::MigrationStatus::Unknown,
                    disks: self
                        .disk_progress
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                    ..Default::default()
                },
                downtime_ms: None,
                error: self.exit_reason(),
            });
        }
        let info = match tokio::time::timeout(MONITOR_TIMEOUT, self.qmp.query_migrate()).await {
            Ok(Ok(info)) => info,
            Ok(Err(e)) if !e.is_disconnected() => return Err(qmp_err("query-migrate", e)),
            _ => {
                return Ok(AgentMigrationStatus {
                    vm_state: VmState::Unresponsive,
                    progress: MigrationProgress::default(),
                    downtime_ms: None,
                    error: None,
                })
            }
        };
        let mut status = to_agent_status(&info, vm_state);
        status.progress.disks = self.disk_copy_progress().await;
        // A copy that failed or was aborted shows with the migration that failed with it,
        // or on its own before any memory migration started.
        if status.is_failed() || status.progress.qemu_status == ferry_api::MigrationStatus::None {
            if let Some(reason) = self
                .copy_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
            {
                status.error = Some(reason);
            }
        }
        Ok(status)
    }

    async fn cancel_outgoing(&self) -> Result<(), AgentError> {
        self.cancel_outgoing_checked().await
    }
}

/// QEMU's `query-migrate` answer, normalised; `vm_state` from `query-status`.
pub fn to_agent_status(info: &ferry_qmp::MigrationInfo, vm_state: VmState) -> AgentMigrationStatus {
    let ram = info.ram.clone().unwrap_or_default();
    let page = if ram.page_size == 0 {
        4096
    } else {
        ram.page_size
    };
    // QEMU's status typed once, here, where it enters Ferry.
    let status = info
        .status
        .as_ref()
        .map(|s| ferry_api::MigrationStatus::parse(s.as_str()))
        .unwrap_or(ferry_api::MigrationStatus::None);
    AgentMigrationStatus {
        vm_state,
        progress: MigrationProgress {
            qemu_status: status,
            elapsed_ms: info.total_time.unwrap_or(0),
            ram_total_bytes: ram.total,
            transferred_bytes: ram.transferred,
            remaining_bytes: ram.remaining,
            dirty_rate_bytes_per_s: ram.dirty_pages_rate.saturating_mul(page),
            bandwidth_bytes_per_s: (ram.mbps * 1_000_000.0 / 8.0) as u64,
            passes: ram.dirty_sync_count,
            expected_downtime_ms: info.expected_downtime,
            disks: Vec::new(),
            throttle_pct: info.cpu_throttle_percentage.unwrap_or(0).min(100) as u8,
            ..Default::default()
        },
        downtime_ms: info.downtime,
        error: info.error_desc.clone(),
    }
}

pub(crate) fn qmp_err(command: &str, e: ferry_qmp::QmpError) -> AgentError {
    AgentError::qmp(command, e)
}

/// The last meaningful lines QEMU wrote to its log, for error messages.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(3);
    lines[start..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_follows_role_and_run_state() {
        assert_eq!(
            derive_state(Role::Normal, &RunState::Running),
            VmState::Running
        );
        assert_eq!(
            derive_state(Role::Incoming, &RunState::InMigrate),
            VmState::Incoming
        );
        assert_eq!(
            derive_state(Role::Incoming, &RunState::Running),
            VmState::Running
        );
        assert_eq!(
            derive_state(Role::Outgoing, &RunState::PostMigrate),
            VmState::MigratedAway
        );
        assert_eq!(
            derive_state(Role::Outgoing, &RunState::FinishMigrate),
            VmState::Paused
        );
        assert_eq!(
            derive_state(Role::Normal, &RunState::Paused),
            VmState::Paused
        );
    }

    fn record(name: &str) -> PersistedVm {
        PersistedVm::new(
            ferry_api::VmSpec {
                ha: None,
                name: name.into(),
                vcpus: 1,
                memory_mib: 256,
                boot: ferry_api::Boot::Image {
                    image: "test-guest".into(),
                    cmdline: String::new(),
                },
                accel: ferry_api::Accel::Auto,
                machine: "pc-q35-10.0".into(),
                cpu_model: "qemu64".into(),
                nics: vec![],
                disks: vec![],
            },
            ferry_api::Accel::Tcg,
            Role::Normal,
        )
    }

    /// A process standing in for a QEMU whose monitor hangs: it runs with its recorded QMP
    /// socket in its command line (what adoption checks), and the socket accepts but never
    /// greets.
    #[tokio::test]
    async fn a_running_qemu_whose_monitor_hangs_is_unresponsive_not_gone() {
        let state = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let dir = state.path().join("web1");
        std::fs::create_dir_all(&dir).unwrap();
        // Recorded paths differ from what `paths_in` would compute: adoption must use them.
        let mut paths = paths_in(elsewhere.path(), true);
        paths.qmp_socket = elsewhere.path().join("monitor.sock");
        let _listener = tokio::net::UnixListener::bind(&paths.qmp_socket).unwrap();
        let mut rec = record("web1");
        rec.aux_qmp = true;
        rec.files = Some(QemuFiles::from(&paths));
        rec.save(&record_path(&dir)).unwrap();
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; :"])
            .arg(&paths.qmp_socket)
            .spawn()
            .unwrap();
        std::fs::write(&paths.pidfile, child.id().to_string()).unwrap();
        // `spawn` returns once the child's execve has begun, not ended: until the kernel
        // has set up the new arguments, /proc/PID/cmdline reads empty (seen here under load,
        // with the comm already `sh`). Adoption of a real QEMU never meets that window; the
        // stand-in must be past it first.
        let started = std::time::Instant::now();
        while !ferry_qemu::process::pid_runs_with(child.id(), &paths.qmp_socket) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the stand-in never showed its arguments"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let outcome = QemuVm::adopt(dir.clone(), Duration::from_millis(200)).await;
        let _ = child.kill();
        let _ = child.wait();
        match outcome.unwrap() {
            Adoption::Unresponsive(u) => {
                assert_eq!(u.pid, child.id());
                assert!(u.reason.contains("monitor.sock"), "{}", u.reason);
                let rt = u.runtime();
                assert_eq!(rt.state, VmState::Unresponsive);
                assert_eq!(rt.pid, Some(child.id()));
            }
            Adoption::Adopted(_) => panic!("a monitor that never greets cannot be adopted"),
            Adoption::Gone(_) => panic!("a running QEMU must not read as gone"),
        }
        // Once the process is gone, so is the VM.
        assert!(matches!(
            QemuVm::adopt(dir, Duration::from_millis(200))
                .await
                .unwrap(),
            Adoption::Gone(_)
        ));
    }

    #[test]
    fn old_records_find_their_files_where_the_agent_put_them() {
        let dir = Path::new("/state/vms/web1");
        let mut rec = record("web1");
        rec.aux_qmp = true;
        let paths = recorded_paths(dir, &rec);
        assert_eq!(paths.qmp_socket, dir.join("qmp.sock"));
        assert_eq!(paths.aux_qmp_socket, Some(dir.join(AUX_QMP_SOCKET)));
    }

    #[test]
    fn agent_status_normalises_qemu_units() {
        let info: ferry_qmp::MigrationInfo = serde_json::from_value(serde_json::json!({
            "status": "active",
            "total-time": 1500,
            "expected-downtime": 30,
            "ram": {"transferred": 1000, "remaining": 500, "total": 4096, "dirty-pages-rate": 10,
                    "mbps": 80.0, "dirty-sync-count": 2, "page-size": 4096}
        }))
        .unwrap();
        let s = to_agent_status(&info, VmState::Running);
        assert_eq!(s.progress.qemu_status, ferry_api::MigrationStatus::Active);
        assert_eq!(s.progress.dirty_rate_bytes_per_s, 40960);
        assert_eq!(s.progress.bandwidth_bytes_per_s, 10_000_000);
        assert_eq!(s.progress.passes, 2);
        assert_eq!(s.progress.expected_downtime_ms, Some(30));
    }
}
