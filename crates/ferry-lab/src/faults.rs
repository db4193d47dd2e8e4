//! The fault matrix: one migration per cell, held by the server at the moment a phase
//! begins ([`crate::hold`]), one fault injected there (a daemon or a QEMU SIGKILLed, the
//! destination's pool filled), whatever was killed restarted, the run released, and then
//! the invariants checked on the real system:
//!
//! - the migration settles (completed, failed, cancelled, or needs_attention with its
//!   reason, which the runner then resolves the way an operator would);
//! - exactly one QEMU runs the VM and the server names its host (none when the VM is
//!   lost, which must be reported: phase `failed`, VM `crashed`, with the reason);
//! - the guest keeps counting with zero mismatches, in memory and on its disk;
//! - nothing leaked: no QEMU and no disk image on the other host, no run left held.
//!
//! Every cell has its own [`Lab`] (own directory, ports, tmpfs), so cells share nothing
//! and can run side by side. [`run_cell`] never panics on what it observes: it returns the
//! outcome, and a broken invariant is [`Outcome::Violation`] with what was seen.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_api::client::ServerClient;
use ferry_api::*;
use serde::Serialize;

use crate::cluster::{Cluster, Route};
use crate::hold;
use crate::lab::LabConfig;
use crate::netlab::NetLabConfig;
use crate::{test_vm_spec, verdict_after, wait_ready, Observer};

const VM: &str = "fm";
const DISK: &str = "fmdisk";
/// The guest's local disk and the self-verifying area on it (MiB); the area's rewrite rate.
const DISK_MIB: u64 = 32;
const AREA_MIB: u64 = 16;
/// A pool-full cell needs a copy still allocating blocks when the pool fills: QEMU's
/// mirror copies the first ~16 MiB in a burst before its rate limit bites.
const FULL_DISK_MIB: u64 = 64;
const FULL_AREA_MIB: u64 = 48;
const DISK_WRITE_MIB_S: f64 = 1.0;
/// How long a cut migration link stays down.
const LINK_DOWN: Duration = Duration::from_secs(20);

/// (disk size, guest area) for `cell`, MiB.
fn disk_size(cell: Cell) -> (u64, u64) {
    if cell.fault == Fault::DestPoolFull {
        (FULL_DISK_MIB, FULL_AREA_MIB)
    } else {
        (DISK_MIB, AREA_MIB)
    }
}

/// Where the run is held when the fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Point {
    Preparing,
    CopyingDisks,
    Transferring,
    SwitchingOver,
    PostCopy,
}

impl Point {
    pub const ALL: [Point; 5] = [
        Point::Preparing,
        Point::CopyingDisks,
        Point::Transferring,
        Point::SwitchingOver,
        Point::PostCopy,
    ];

    pub fn as_str(self) -> &'static str {
        hold::POINTS[self as usize]
    }
}

/// What goes wrong at the hold point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// SIGKILL the server; restart it on the same data directory.
    KillServer,
    /// SIGKILL the source's agent; restart it.
    KillSourceAgent,
    /// SIGKILL the destination's agent; restart it.
    KillDestAgent,
    /// SIGKILL the destination's QEMU.
    KillDestQemu,
    /// SIGKILL the source's QEMU.
    KillSourceQemu,
    /// Cut the migration link.
    LinkCut,
    /// Fill the destination's local pool.
    DestPoolFull,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::KillServer,
        Fault::KillSourceAgent,
        Fault::KillDestAgent,
        Fault::KillDestQemu,
        Fault::KillSourceQemu,
        Fault::LinkCut,
        Fault::DestPoolFull,
    ];

    /// The name on a command line (`kill-dest-qemu`).
    pub fn key(self) -> &'static str {
        match self {
            Fault::KillServer => "kill-server",
            Fault::KillSourceAgent => "kill-source-agent",
            Fault::KillDestAgent => "kill-dest-agent",
            Fault::KillDestQemu => "kill-dest-qemu",
            Fault::KillSourceQemu => "kill-source-qemu",
            Fault::LinkCut => "link-cut",
            Fault::DestPoolFull => "dest-pool-full",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Fault::KillServer => "kill server",
            Fault::KillSourceAgent => "kill source agent",
            Fault::KillDestAgent => "kill dest agent",
            Fault::KillDestQemu => "kill dest QEMU",
            Fault::KillSourceQemu => "kill source QEMU",
            Fault::LinkCut => "link cut",
            Fault::DestPoolFull => "dest pool full",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cell {
    pub point: Point,
    pub fault: Fault,
}

impl Cell {
    pub fn new(point: Point, fault: Fault) -> Cell {
        Cell { point, fault }
    }

    /// Every cell of the matrix, phase by phase.
    pub fn all() -> Vec<Cell> {
        Point::ALL
            .iter()
            .flat_map(|p| Fault::ALL.iter().map(|f| Cell::new(*p, *f)))
            .collect()
    }

    /// Why this cell cannot be run, if it cannot.
    pub fn not_applicable(self) -> Option<&'static str> {
        match (self.point, self.fault) {
            (Point::SwitchingOver, Fault::DestPoolFull) => {
                Some("the disk copy finished before the switch-over")
            }
            (Point::PostCopy, Fault::DestPoolFull) => Some("post-copy cells copy no disk"),
            _ => None,
        }
    }

    /// The outcomes the recovery rules allow for this cell
    /// (ferry_migration::recovery has the table).
    pub fn expected(self) -> &'static [Outcome] {
        use crate::faults::Outcome::*;
        match (self.point, self.fault) {
            // Before the switch, a 20 s cut either outlasts the watchdog (rolled back) or
            // the stream picks up again when the link is back (moved); after it, the
            // destination has everything, and post-copy pauses and recovers.
            (Point::SwitchingOver | Point::PostCopy, Fault::LinkCut) => &[Moved],
            (_, Fault::LinkCut) => &[Moved, RolledBack],
            (Point::PostCopy, Fault::KillDestQemu | Fault::KillSourceQemu) => &[Lost],
            (Point::SwitchingOver, Fault::KillDestQemu) => &[NeedsAttention],
            (Point::SwitchingOver, Fault::KillSourceQemu) => &[Moved],
            (_, Fault::KillSourceQemu) => &[Lost],
            (_, Fault::KillDestQemu) => &[RolledBack],
            (Point::Preparing, Fault::KillServer) => &[RolledBack],
            (Point::SwitchingOver | Point::PostCopy, Fault::KillServer) => &[Moved],
            (_, Fault::KillServer) => &[Moved],
            (Point::SwitchingOver | Point::PostCopy, _) => &[Moved],
            // The copy is done by then: the guest rewrites blocks already allocated on
            // the destination, so a full pool may not be noticed at all.
            (Point::Transferring, Fault::DestPoolFull) => &[Moved, RolledBack],
            (_, Fault::DestPoolFull) => &[RolledBack],
            // An agent killed and restarted mid-run: either is clean.
            _ => &[Moved, RolledBack],
        }
    }

    pub fn label(self) -> String {
        format!("{} x {}", self.point.as_str(), self.fault.as_str())
    }
}

impl std::str::FromStr for Cell {
    type Err = String;
    /// `POINT:FAULT`, e.g. `transferring:kill-dest-qemu`.
    fn from_str(s: &str) -> Result<Cell, String> {
        let (p, f) = s
            .split_once(':')
            .ok_or_else(|| format!("'{s}': a cell is POINT:FAULT"))?;
        let point = Point::ALL
            .into_iter()
            .find(|x| x.as_str() == p)
            .ok_or_else(|| format!("'{p}' is not a point (one of {})", hold::POINTS.join(", ")))?;
        let fault = Fault::ALL
            .into_iter()
            .find(|x| x.key() == f)
            .ok_or_else(|| {
                let keys: Vec<&str> = Fault::ALL.iter().map(|x| x.key()).collect();
                format!("'{f}' is not a fault (one of {})", keys.join(", "))
            })?;
        Ok(Cell { point, fault })
    }
}

/// Runs `cells`, `parallel` at a time (each on its own lab), and returns the results in
/// the order of `cells`; `done` is told about each as it finishes.
pub async fn run_matrix(
    cfg: &MatrixConfig,
    cells: &[Cell],
    parallel: usize,
    mut done: impl FnMut(&CellResult),
) -> Vec<CellResult> {
    let mut out: Vec<Option<CellResult>> = vec![None; cells.len()];
    let mut set = tokio::task::JoinSet::new();
    let mut next = 0;
    loop {
        while next < cells.len() && set.len() < parallel.max(1) {
            let (cfg, cell, i) = (cfg.clone(), cells[next], next);
            set.spawn(async move { (i, run_cell(&cfg, cell).await) });
            next += 1;
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        match joined {
            Ok((i, r)) => {
                done(&r);
                out[i] = Some(r);
            }
            // A panicking cell is a bug in the runner; its slot stays empty and is
            // reported as a violation below.
            Err(e) => tracing::error!("a fault cell panicked: {e}"),
        }
    }
    out.into_iter()
        .zip(cells)
        .map(|(r, cell)| {
            r.unwrap_or_else(|| CellResult {
                cell: *cell,
                outcome: Outcome::Violation,
                as_expected: false,
                settle_s: 0.0,
                total_s: 0.0,
                detail: "the runner panicked".into(),
                resolved: None,
                mismatches: None,
                violations: vec!["the runner panicked".into()],
            })
        })
        .collect()
}

/// How a cell ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Completed: the VM runs on the destination.
    Moved,
    /// Failed or cancelled: the VM runs on the source again.
    RolledBack,
    /// needs_attention with a reason (the result says how it was resolved).
    NeedsAttention,
    /// The VM's only whole copy died and the server says so (failed, VM crashed).
    Lost,
    /// The cell cannot be run here (the detail says why).
    NotApplicable,
    /// An invariant broke (two QEMUs, a lost VM reported running, mismatches, a leak, no
    /// settlement) or the lab itself failed; the detail says what.
    Violation,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Moved => "moved",
            Outcome::RolledBack => "rolled back",
            Outcome::NeedsAttention => "needs attention",
            Outcome::Lost => "lost (reported)",
            Outcome::NotApplicable => "n/a",
            Outcome::Violation => "VIOLATION",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CellResult {
    pub cell: Cell,
    pub outcome: Outcome,
    /// Whether the outcome is one [`Cell::expected`] allows.
    pub as_expected: bool,
    /// From the fault to the migration settling (resolution included), s.
    pub settle_s: f64,
    /// The whole cell (lab, boot, migration, checks), s.
    pub total_s: f64,
    /// The migration's final phase, its error or attention reason, the resolution.
    pub detail: String,
    /// How a needs_attention was resolved (`source` / `destination`), if it was.
    pub resolved: Option<String>,
    /// Guest memory and disk mismatches after the cell (None: not checked, e.g. lost).
    pub mismatches: Option<u64>,
    pub violations: Vec<String>,
}

/// What every cell runs with.
#[derive(Debug, Clone)]
pub struct MatrixConfig {
    pub ferry_bin: PathBuf,
    pub image_dir: Option<PathBuf>,
    /// Keep each lab's directory (logs) afterwards.
    pub keep: bool,
    /// The server's `--recovery-bound-s`.
    pub recovery_bound_s: u64,
    pub vm_memory_mib: u64,
    pub workload_mib: u64,
}

impl MatrixConfig {
    pub fn new(ferry_bin: PathBuf, image_dir: Option<PathBuf>) -> MatrixConfig {
        MatrixConfig {
            ferry_bin,
            image_dir,
            keep: false,
            recovery_bound_s: 20,
            vm_memory_mib: 256,
            workload_mib: 32,
        }
    }
}

/// Runs one cell on a lab of its own; never panics on what it observes.
pub async fn run_cell(cfg: &MatrixConfig, cell: Cell) -> CellResult {
    let started = Instant::now();
    let mut r = CellResult {
        cell,
        outcome: Outcome::NotApplicable,
        as_expected: false,
        settle_s: 0.0,
        total_s: 0.0,
        detail: String::new(),
        resolved: None,
        mismatches: None,
        violations: Vec::new(),
    };
    if let Some(why) = cell.not_applicable() {
        r.detail = why.into();
        r.as_expected = true;
        return r;
    }
    if let Err(e) = run(cfg, cell, &mut r).await {
        r.violations.push(e);
    }
    if !r.violations.is_empty() {
        r.outcome = Outcome::Violation;
    }
    r.as_expected = cell.expected().contains(&r.outcome);
    r.total_s = started.elapsed().as_secs_f64();
    r
}

/// Unmounts a tmpfs laid over a pool directory, also when the cell fails.
pub(crate) struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size_mib: u64) -> Result<Tmpfs, String> {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount tmpfs on {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }

    /// Takes every free byte, as another tenant of the pool would: grows a file in 4 MiB
    /// steps, then 64 KiB steps, until the file system refuses. (One request of "all that
    /// statvfs says is free" can be refused outright while the copy writes.)
    pub(crate) fn fill(&self) -> Result<(), String> {
        use std::os::fd::AsRawFd;
        let path = self.0.join("filler.bin");
        let file = std::fs::File::create(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let mut len: i64 = 0;
        for step in [4i64 << 20, 64 << 10] {
            while nix::fcntl::posix_fallocate(file.as_raw_fd(), len, step).is_ok() {
                len += step;
            }
        }
        if len == 0 {
            return Err(format!("{}: no room to fill at all", self.0.display()));
        }
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

async fn run(cfg: &MatrixConfig, cell: Cell, r: &mut CellResult) -> Result<(), String> {
    let holds = tempfile::Builder::new()
        .prefix("ferry-holds-")
        .tempdir()
        .map_err(|e| format!("cannot create a hold directory: {e}"))?;
    let with_disk = cell.point != Point::PostCopy;
    let mut server_args = hold::server_args(&[cell.point.as_str()], holds.path());
    server_args.extend([
        "--recovery-bound-s".to_string(),
        cfg.recovery_bound_s.to_string(),
    ]);
    let mut lab = if cell.fault == Fault::LinkCut {
        // Only the network lab has a migration link to cut that is not also the link
        // between the agents and the server.
        let mut ncfg = NetLabConfig::new(cfg.ferry_bin.clone(), &["a", "b"]);
        ncfg.image_dir = cfg.image_dir.clone();
        ncfg.keep = cfg.keep;
        let pools = with_disk.then(|| holds.path().join("pools"));
        Cluster::start_net(ncfg, server_args, pools.as_deref()).await?
    } else {
        let mut lcfg = LabConfig::new(cfg.ferry_bin.clone(), &["a", "b"]);
        lcfg.image_dir = cfg.image_dir.clone();
        lcfg.keep = cfg.keep;
        lcfg.pools = with_disk;
        lcfg.server_args = server_args;
        Cluster::start_loop(lcfg).await?
    };
    let c = lab.client();
    boot(cfg, &c, cell).await?;
    // Declared after the lab so it is unmounted before the lab removes its directory.
    let pool = if cell.fault == Fault::DestPoolFull {
        let dir = lab.state_dir("b").join("pool-local");
        // Room for the copy and the pre-migration check's 64 MiB margin; filled at the hold.
        Some(Tmpfs::mount(&dir, disk_size(cell).0 + 96)?)
    } else {
        None
    };
    let obs = Observer { client: &c, vm: VM };
    let before = obs
        .last_status()
        .await?
        .ok_or("the guest printed no status")?;
    let m = c
        .migrate(&MigrateRequest {
            vm: VM.into(),
            to: Some("b".into()),
            options: options(cell),
            priority: None,
        })
        .await
        .map_err(|e| format!("migrate: {e}"))?;
    let held = hold::wait_held(
        holds.path(),
        m.id,
        cell.point.as_str(),
        Duration::from_secs(240),
        || async {
            match c.migration(m.id).await {
                Ok(cur) if cur.phase.is_terminal() || cur.phase == Phase::NeedsAttention => {
                    Err(format!(
                        "the migration ended {} before reaching {}: {:?}",
                        cur.phase,
                        cell.point.as_str(),
                        cur.error
                    ))
                }
                _ => Ok(()),
            }
        },
    )
    .await?;

    // The fault, at the moment the phase begins; then what was killed comes back.
    let fault_at = Instant::now();
    let route = Route {
        vm: VM,
        source: "a",
        destination: "b",
    };
    lab.inject(cell.fault, route, pool.as_ref()).await?;
    hold::release(&held)?;
    if cell.fault == Fault::LinkCut {
        // The link stays down for LINK_DOWN (or until the migration settles), then comes
        // back, as a flapping link would.
        let deadline = Instant::now() + LINK_DOWN;
        while Instant::now() < deadline {
            hold::release_all(holds.path());
            if let Ok(cur) = c.migration(m.id).await {
                if cur.phase.is_terminal() || cur.phase == Phase::NeedsAttention {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        lab.set_link("b", true)?;
    }
    let settled = settle(&c, holds.path(), m.id).await;
    let mut m = settled.map_err(|e| format!("{e}\nserver: {}", lab.server_logs()))?;
    r.detail = describe(&m);
    if m.phase == Phase::NeedsAttention {
        r.outcome = Outcome::NeedsAttention;
        let keep = keep_side(&lab, route, &m);
        match keep {
            Some(keep) => {
                let side = match keep {
                    Keep::Source => "source",
                    Keep::Destination => "destination",
                };
                c.resolve_migration(m.id, &ResolveRequest { keep, force: false })
                    .await
                    .map_err(|e| format!("resolve --keep {side}: {e}"))?;
                m = settle(&c, holds.path(), m.id).await?;
                r.resolved = Some(side.into());
                r.detail = format!("{}; resolved --keep {side}: {}", r.detail, describe(&m));
            }
            None => {
                r.violations.push(format!(
                    "needs attention with QEMUs on a {:?} and b {:?}: no side to keep",
                    lab.qemus_on("a"),
                    lab.qemus_on("b")
                ));
            }
        }
    }
    r.settle_s = fault_at.elapsed().as_secs_f64();
    check(&lab, &c, &m, &before, with_disk, r).await;
    if !hold::held(holds.path()).is_empty() {
        r.violations.push("a run is still held".into());
    }
    drop(pool);
    drop(lab);
    Ok(())
}

/// Boots the guest on a (with a disk in a's local pool unless the cell is post-copy).
async fn boot(cfg: &MatrixConfig, c: &ServerClient, cell: Cell) -> Result<(), String> {
    let postcopy = cell.point == Point::PostCopy;
    // Post-copy needs a guest that dirties faster than its capped link (see `options`).
    let rate = if postcopy { 32.0 } else { 2.0 };
    let workload = if postcopy {
        cfg.workload_mib.max(64)
    } else {
        cfg.workload_mib
    };
    let mut spec = test_vm_spec(VM, cfg.vm_memory_mib, workload, rate);
    if !postcopy {
        let (disk_mib, area_mib) = disk_size(cell);
        c.create_disk(
            "a",
            "local",
            &CreateDiskRequest {
                name: DISK.into(),
                size_mib: disk_mib,
            },
        )
        .await
        .map_err(|e| format!("disk create: {e}"))?;
        spec.disks = vec![DiskRef {
            pool: "local".into(),
            image: DISK.into(),
        }];
        if let Boot::Image { cmdline, .. } = &mut spec.boot {
            *cmdline = ferry_image::with_disk(cmdline, "vda", area_mib, DISK_WRITE_MIB_S);
        }
    }
    c.create_vm(&CreateVmRequest {
        host: Some("a".into()),
        spec,
    })
    .await
    .map_err(|e| format!("create VM: {e}"))?;
    wait_ready(c, VM, Duration::from_secs(300)).await?;
    if !postcopy {
        wait_disk(c, Duration::from_secs(180), |_| true).await?;
    }
    Ok(())
}

fn options(cell: Cell) -> MigrationOptions {
    if cell.point == Point::PostCopy {
        // 64 MiB rewritten at 32 MiB/s over 8 MiB/s, no throttle: pre-copy cannot
        // converge, and the controller switches to post-copy soon (a short deadline).
        MigrationOptions {
            max_bandwidth_mib: Some(8),
            max_throttle_pct: Some(0),
            postcopy: Some(PostcopyPolicy::Automatic),
            completion_timeout_s_per_gib: Some(20),
            ..Default::default()
        }
    } else if cell.fault == Fault::DestPoolFull
        && matches!(cell.point, Point::Preparing | Point::CopyingDisks)
    {
        // On loopback the copy would be over before the pool fills; capped, it is still
        // writing new blocks when the fault strikes. Later phases run uncapped: the copy
        // is done, and a cap below the guest's dirty rate would end the run through the
        // convergence controller instead of through the fault.
        MigrationOptions {
            max_bandwidth_mib: Some(4),
            ..Default::default()
        }
    } else {
        MigrationOptions::default()
    }
}

/// Waits (4 min at most) until the migration is settled: completed, failed, cancelled or
/// needs_attention. Runs held again after a restart are released at once: the fault was
/// injected already. Answers that fail (a server coming back) are asked again.
pub(crate) async fn settle(
    c: &ServerClient,
    holds: &Path,
    id: uuid::Uuid,
) -> Result<Migration, String> {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        hold::release_all(holds);
        let last = match c.migration(id).await {
            Ok(m) if m.phase.is_terminal() || m.phase == Phase::NeedsAttention => return Ok(m),
            Ok(m) => format!("{} ({:?})", m.phase, m.error),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(format!(
                "the migration did not settle in 240 s; last: {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn describe(m: &Migration) -> String {
    let mut s = m.phase.to_string();
    if let Some(a) = &m.attention {
        s.push_str(&format!(": {}", a.reason));
    } else if let Some(e) = &m.error {
        s.push_str(&format!(": {e}"));
    }
    s
}

/// The side an operator would keep: the one whose QEMU still lives, when exactly one
/// does; when both live, the one whose guest runs according to what the hosts reported
/// (`attention`), when exactly one does.
pub(crate) fn keep_side(lab: &Cluster, route: Route<'_>, m: &Migration) -> Option<Keep> {
    match (
        lab.qemu_pid(route.source, route.vm),
        lab.qemu_pid(route.destination, route.vm),
    ) {
        (Some(_), None) => Some(Keep::Source),
        (None, Some(_)) => Some(Keep::Destination),
        (Some(_), Some(_)) => {
            let a = m.attention.as_ref()?;
            match (a.source.running(), a.destination.running()) {
                (true, false) => Some(Keep::Source),
                (false, true) => Some(Keep::Destination),
                _ => None,
            }
        }
        (None, None) => None,
    }
}

/// Waits up to 30 s for `host` to have no QEMU left (retirement and teardown finish a
/// moment after the phase is saved).
async fn no_qemu_within(lab: &Cluster, host: &str) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = lab.qemus_on(host);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn wait_disk(
    c: &ServerClient,
    timeout: Duration,
    pred: impl Fn(&ferry_guest::status::DiskStatusLine) -> bool,
) -> Result<ferry_guest::status::ConsoleSummary, String> {
    let obs = Observer { client: c, vm: VM };
    let deadline = Instant::now() + timeout;
    loop {
        let s = obs.summary().await.unwrap_or_default();
        if let Some(e) = &s.disk_error {
            return Err(format!("the guest's disk failed: {e}"));
        }
        if s.disk_last.as_ref().is_some_and(&pred) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            return Err(format!("disk status not seen; last {:?}", s.disk_last));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Classifies the settled migration and checks the invariants into `r`.
async fn check(
    lab: &Cluster,
    c: &ServerClient,
    m: &Migration,
    before: &ferry_guest::status::StatusLine,
    with_disk: bool,
    r: &mut CellResult,
) {
    let v = &mut r.violations;
    let vm = match c.vm(VM).await {
        Ok(vm) => vm,
        Err(e) => {
            v.push(format!("the server does not answer for the VM: {e}"));
            return;
        }
    };
    let (home, other) = match m.phase {
        Phase::Completed => ("b", "a"),
        Phase::Failed | Phase::Cancelled => ("a", "b"),
        _ => {
            v.push(format!("unsettled: {}", describe(m)));
            return;
        }
    };
    let lost = vm.state == VmState::Crashed;
    if r.outcome != Outcome::NeedsAttention {
        r.outcome = match (m.phase, lost) {
            (Phase::Completed, _) => Outcome::Moved,
            (_, true) => Outcome::Lost,
            _ => Outcome::RolledBack,
        };
    }
    if lost {
        if m.phase != Phase::Failed || m.error.is_none() {
            v.push(format!("VM crashed but the migration says {}", describe(m)));
        }
        for h in ["a", "b"] {
            let left = no_qemu_within(lab, h).await;
            if !left.is_empty() {
                v.push(format!("lost VM, yet QEMU {left:?} runs on {h}"));
            }
        }
        return;
    }
    if vm.host != home || vm.state != VmState::Running {
        v.push(format!(
            "{}: the server says {} on {}, expected running on {home}",
            m.phase, vm.state, vm.host
        ));
    }
    let left = no_qemu_within(lab, other).await;
    if !left.is_empty() {
        v.push(format!("QEMU {left:?} left on {other}"));
    }
    let here = lab.qemus_on(home);
    if here.len() != 1 || lab.qemu_pid(home, VM).is_none() {
        v.push(format!(
            "{} QEMUs on {home} ({here:?}), expected 1",
            here.len()
        ));
    }
    if with_disk {
        // The image goes from the host that no longer runs the VM (retirement or rollback
        // clean-up), a moment after the phase is saved.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = c.disks(other, "local").await.unwrap_or_default();
            if left.iter().all(|d| d.name != DISK) {
                break;
            }
            if Instant::now() > deadline {
                v.push(format!("disk image {DISK} left on {other}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    // The guest: counting on, every page verified again, zero mismatches.
    match verdict_after(c, VM, before, Duration::from_secs(180)).await {
        Ok(g) => {
            r.mismatches = Some(g.mismatches);
            if !g.ok() {
                v.push(format!("guest: {}", g.describe()));
            }
        }
        Err(e) => v.push(format!("guest: {e}")),
    }
    if with_disk {
        let first = wait_disk(c, Duration::from_secs(60), |_| true).await;
        let tick = first
            .as_ref()
            .ok()
            .and_then(|s| s.disk_last.as_ref())
            .map(|d| d.tick)
            .unwrap_or(0);
        match wait_disk(c, Duration::from_secs(120), |d| d.tick >= tick + 2).await {
            Ok(s) => {
                let bad = s.disk_last.as_ref().map(|d| d.mismatches).unwrap_or(0)
                    + s.disk_mismatch_lines as u64;
                *r.mismatches.get_or_insert(0) += bad;
                if bad > 0 {
                    v.push(format!("guest disk: {:?}", s.disk_last));
                }
            }
            Err(e) => v.push(format!("guest disk: {e}")),
        }
    }
}

/// The matrix as an aligned text table: one row per cell.
pub fn table(results: &[CellResult]) -> String {
    let headers = [
        "PHASE", "FAULT", "OUTCOME", "EXPECTED", "SETTLE", "MISMATCH", "DETAIL",
    ];
    let rows: Vec<[String; 7]> = results
        .iter()
        .map(|r| {
            let mut outcome = r.outcome.as_str().to_string();
            if let Some(side) = &r.resolved {
                outcome.push_str(&format!(" -> kept {side}"));
            }
            let detail = if r.violations.is_empty() {
                r.detail.clone()
            } else {
                format!("{} | {}", r.violations.join("; "), r.detail)
            };
            [
                r.cell.point.as_str().to_string(),
                r.cell.fault.as_str().to_string(),
                outcome,
                if r.as_expected { "yes" } else { "NO" }.to_string(),
                if r.outcome == Outcome::NotApplicable {
                    "-".into()
                } else {
                    format!("{:.1} s", r.settle_s)
                },
                r.mismatches
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "-".into()),
                one_line(&detail, 110),
            ]
        })
        .collect();
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            w[i] = w[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            l.push_str(&format!("{c:<width$}  ", width = w[i]));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&headers.map(String::from));
    for row in &rows {
        line(row);
    }
    out
}

/// The matrix as a markdown table.
pub fn markdown(results: &[CellResult]) -> String {
    let mut out = String::from(
        "| phase | fault | outcome | expected | settle | mismatches | detail |\n|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let mut outcome = r.outcome.as_str().to_string();
        if let Some(side) = &r.resolved {
            outcome.push_str(&format!(" -> kept {side}"));
        }
        let mut detail = r.detail.clone();
        if !r.violations.is_empty() {
            detail = format!("{} / {detail}", r.violations.join("; "));
        }
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.cell.point.as_str(),
            r.cell.fault.as_str(),
            outcome,
            if r.as_expected { "yes" } else { "NO" },
            if r.outcome == Outcome::NotApplicable {
                "-".to_string()
            } else {
                format!("{:.1} s", r.settle_s)
            },
            r.mismatches
                .map(|m| m.to_string())
                .unwrap_or_else(|| "-".into()),
            one_line(&detail, 200).replace('|', "/"),
        ));
    }
    out
}

fn one_line(s: &str, max: usize) -> String {
    let flat = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let mut t: String = flat.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}
