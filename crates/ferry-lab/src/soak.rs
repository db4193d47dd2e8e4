//! The soak: two guests migrated back and forth between two hosts, round after round, with
//! faults drawn from a seeded generator: during a migration (at a random hold point: kill
//! an agent or the server, and restart it) and between migrations (the same, while
//! nothing moves), or nothing at all. After every round the invariants of the fault
//! matrix are checked on both VMs: one QEMU, on the host the server names, the guest
//! clean; and nothing left behind on the other host (QEMU processes, sockets, files).
//!
//! The same seed gives the same sequence of decisions (the timing of the real system
//! still varies).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_api::client::ServerClient;
use ferry_api::*;
use serde::Serialize;

use crate::cluster::{Cluster, Route};
use crate::faults::{describe, keep_side, settle, Fault};
use crate::hold;
use crate::lab::LabConfig;
use crate::{test_vm_spec, wait_ready, Observer};

const VMS: [&str; 2] = ["s0", "s1"];
const HOSTS: [&str; 2] = ["a", "b"];

/// splitmix64: small, seedable, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub ferry_bin: PathBuf,
    pub image_dir: Option<PathBuf>,
    pub count: u32,
    pub seed: u64,
    pub keep: bool,
    pub recovery_bound_s: u64,
}

/// One round.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub n: u32,
    pub vm: String,
    pub from: String,
    pub to: String,
    /// `kill server during transferring`, `kill dest agent between`, `none`.
    pub fault: String,
    /// ok / failed-cleanly / needs-attention / lost / error.
    pub result: String,
    pub detail: String,
    pub seconds: f64,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakSummary {
    pub rounds: u32,
    pub ok: u32,
    pub failed_cleanly: u32,
    pub needs_attention: u32,
    pub lost: u32,
    pub errors: u32,
    pub guest_mismatches: u64,
    pub leaked_qemus: u32,
    pub leaked_sockets: u32,
    pub leaked_files: u32,
    pub leaked_taps: i64,
    pub wall_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub seed: u64,
    pub summary: SoakSummary,
    pub rounds: Vec<Round>,
}

/// The points a migration without local disks and without post-copy passes.
const POINTS: [&str; 3] = ["preparing", "transferring", "switching_over"];
const FAULTS: [Option<Fault>; 4] = [
    None,
    Some(Fault::KillServer),
    Some(Fault::KillSourceAgent),
    Some(Fault::KillDestAgent),
];

/// Tap devices on this machine now (their count before and after shows a leak).
fn taps() -> i64 {
    std::fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join("tun_flags").exists())
                .count() as i64
        })
        .unwrap_or(0)
}

pub async fn run(cfg: &SoakConfig, mut progress: impl FnMut(&Round)) -> Result<SoakReport, String> {
    let started = Instant::now();
    let taps_before = taps();
    let holds = tempfile::Builder::new()
        .prefix("ferry-holds-")
        .tempdir()
        .map_err(|e| format!("cannot create a hold directory: {e}"))?;
    let mut lcfg = LabConfig::new(cfg.ferry_bin.clone(), &HOSTS);
    lcfg.image_dir = cfg.image_dir.clone();
    lcfg.keep = cfg.keep;
    lcfg.server_args = hold::server_args(&POINTS, holds.path());
    lcfg.server_args.extend([
        "--recovery-bound-s".to_string(),
        cfg.recovery_bound_s.to_string(),
    ]);
    let mut lab = Cluster::start_loop(lcfg).await?;
    let c = lab.client();
    for (vm, host) in VMS.iter().zip(HOSTS) {
        c.create_vm(&CreateVmRequest {
            host: Some(host.into()),
            spec: test_vm_spec(vm, 256, 32, 2.0),
        })
        .await
        .map_err(|e| format!("create {vm}: {e}"))?;
    }
    for vm in VMS {
        wait_ready(&c, vm, Duration::from_secs(300)).await?;
    }
    let mut rng = Rng(cfg.seed);
    let mut report = SoakReport {
        seed: cfg.seed,
        summary: SoakSummary::default(),
        rounds: Vec::new(),
    };
    for n in 1..=cfg.count {
        let t = Instant::now();
        let vm = VMS[rng.below(VMS.len())];
        let from = c.vm(vm).await.map_err(|e| e.to_string())?.host;
        let to = if from == "a" { "b" } else { "a" };
        let fault = FAULTS[rng.below(FAULTS.len())];
        // Half the faults strike during the migration, half between migrations.
        let during = rng.below(2) == 0;
        let point = POINTS[rng.below(POINTS.len())];
        let route = Route {
            vm,
            source: &from,
            destination: to,
        };
        let mut round = Round {
            n,
            vm: vm.into(),
            from: from.clone(),
            to: to.into(),
            fault: match fault {
                None => "none".into(),
                Some(f) if during => format!("{} during {point}", f.as_str()),
                Some(f) => format!("{} between", f.as_str()),
            },
            result: String::new(),
            detail: String::new(),
            seconds: 0.0,
            problems: Vec::new(),
        };
        if let (Some(f), false) = (fault, during) {
            lab.inject(f, route, None).await?;
        }
        let strike = if during { fault } else { None };
        match one_round(&mut lab, &c, holds.path(), route, strike, point).await {
            Ok((result, detail)) => {
                round.result = result;
                round.detail = detail;
            }
            Err(e) => {
                round.result = "error".into();
                round.detail = e;
            }
        }
        check_all(&lab, &c, &mut round, &mut report.summary).await;
        if !hold::held(holds.path()).is_empty() {
            round.problems.push("a run is still held".into());
        }
        round.seconds = t.elapsed().as_secs_f64();
        let s = &mut report.summary;
        s.rounds += 1;
        match round.result.as_str() {
            "ok" => s.ok += 1,
            "failed-cleanly" => s.failed_cleanly += 1,
            "needs-attention" => s.needs_attention += 1,
            "lost" => s.lost += 1,
            _ => s.errors += 1,
        }
        progress(&round);
        report.rounds.push(round);
    }
    for vm in VMS {
        let obs = Observer { client: &c, vm };
        if let Ok(Some(st)) = obs.last_status().await {
            report.summary.guest_mismatches += st.mismatches;
        }
    }
    report.summary.leaked_taps = taps() - taps_before;
    report.summary.wall_s = started.elapsed().as_secs_f64();
    drop(lab);
    Ok(report)
}

/// One migration; `strike` (if any) at `point`. Returns (result, detail).
async fn one_round(
    lab: &mut Cluster,
    c: &ServerClient,
    holds: &Path,
    route: Route<'_>,
    strike: Option<Fault>,
    point: &str,
) -> Result<(String, String), String> {
    let m = c
        .migrate(&MigrateRequest {
            vm: route.vm.into(),
            to: Some(route.destination.into()),
            options: MigrationOptions::default(),
            priority: None,
        })
        .await
        .map_err(|e| format!("migrate: {e}"))?;
    // Every hold point is configured: the run stops at each; the chosen one gets the
    // fault, the others are released at once.
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut struck = strike.is_none();
    loop {
        if !struck {
            let file = hold::hold_file(holds, m.id, point);
            if file.exists() {
                if let Some(f) = strike {
                    lab.inject(f, route, None).await?;
                }
                struck = true;
            }
        }
        for f in hold::held(holds) {
            let is_target = !struck && f == hold::hold_file(holds, m.id, point);
            if !is_target {
                hold::release(&f)?;
            }
        }
        let cur = c.migration(m.id).await;
        if let Ok(cur) = &cur {
            if cur.phase.is_terminal() || cur.phase == Phase::NeedsAttention {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err(format!("migration {} did not settle in 240 s", m.id));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut m = settle(c, holds, m.id).await?;
    let mut detail = describe(&m);
    let mut attention = false;
    if m.phase == Phase::NeedsAttention {
        attention = true;
        let keep = keep_side(lab, route, &m)
            .ok_or_else(|| format!("needs attention and no side to keep: {detail}"))?;
        c.resolve_migration(m.id, &ResolveRequest { keep, force: false })
            .await
            .map_err(|e| format!("{detail}; resolve: {e}"))?;
        m = settle(c, holds, m.id).await?;
        detail = format!("{detail}; resolved: {}", describe(&m));
    }
    let vm = c.vm(route.vm).await.map_err(|e| e.to_string())?;
    let result = if attention {
        "needs-attention"
    } else if vm.state == VmState::Crashed {
        "lost"
    } else if m.phase == Phase::Completed {
        "ok"
    } else {
        "failed-cleanly"
    };
    Ok((result.into(), detail))
}

/// Both VMs: one QEMU on the host the server names, the guest counting with zero
/// mismatches; nothing of a VM left on the host it is not on.
async fn check_all(lab: &Cluster, c: &ServerClient, round: &mut Round, s: &mut SoakSummary) {
    for vm in VMS {
        let Ok(rec) = c.vm(vm).await else {
            round
                .problems
                .push(format!("{vm}: the server does not answer"));
            continue;
        };
        let home = rec.host.as_str();
        if rec.state != VmState::Running {
            round
                .problems
                .push(format!("{vm}: {} on {home}", rec.state));
        }
        if lab.qemu_pid(home, vm).is_none() {
            round.problems.push(format!("{vm}: no QEMU on {home}"));
        }
        for other in HOSTS.iter().filter(|h| **h != home) {
            // Retirement and teardown finish a moment after the phase is saved.
            let dir = lab.state_dir(other).join("vms").join(vm);
            let deadline = Instant::now() + Duration::from_secs(20);
            while dir.exists() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            if lab.qemu_pid(other, vm).is_some() {
                s.leaked_qemus += 1;
                round.problems.push(format!("{vm}: a QEMU left on {other}"));
            }
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.filter_map(|e| e.ok()) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.ends_with(".sock") {
                        s.leaked_sockets += 1;
                    } else {
                        s.leaked_files += 1;
                    }
                    round.problems.push(format!("{vm}: {name} left on {other}"));
                }
            }
        }
        let obs = Observer { client: c, vm };
        let before = obs.last_status().await.ok().flatten();
        let tick = before.as_ref().map(|b| b.tick).unwrap_or(0);
        match obs
            .wait_status(Duration::from_secs(60), |st| st.tick > tick)
            .await
        {
            Ok(st) => {
                // Cumulative since boot: the summary takes the last value of each VM.
                if st.mismatches > 0 {
                    round
                        .problems
                        .push(format!("{vm}: {} mismatches", st.mismatches));
                }
            }
            Err(e) => round.problems.push(format!("{vm}: the guest: {e}")),
        }
    }
}
