//! `ferry bench evacuate`: a host (a) with four 1 GiB guests, two of them dirtying memory,
//! evacuated over a 1 Gbit/s migration link to three other hosts (network namespaces, each
//! host's migration link shaped with `tc tbf` both ways). Measures:
//!
//! 1. each guest moved alone to the host the plan picks for it (and brought back, so the
//!    evacuation starts from the same state), and the sum of those times;
//! 2. the dry run's estimate (`maintenance enter --dry-run`, taken just before) against the
//!    real evacuation, from the operation's creation to its end; every guest must verify
//!    clean afterwards (a full sweep of its pages on the new host);
//! 3. the link's utilisation during the evacuation: the bytes the migrations sent over
//!    (link rate x evacuation time).
//!
//! Prints tables, writes bench/results/evacuate.json and evacuate.txt. The lab (namespaces,
//! daemons, QEMUs, its directory) is removed when it is dropped, also on an error.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_api::client::ServerClient;
use ferry_api::*;
use ferry_guest::status::StatusLine;
use ferry_lab::netlab::{NetLab, NetLabConfig, Shape};
use ferry_lab::{test_vm_spec, verdict_after, wait_ready, GuestVerdict, Observer};
use ferry_server::estimate::{estimate, Costs, EstimateVm};
use serde::Serialize;

use crate::console::{bytes, millis, print_json, print_table};
use crate::error::fail;
use crate::error::{BenchError, BenchResult};
use crate::progress::follow;
use crate::results::{machine_json, write_result};
use crate::setup::{own_binary, test_image};

/// The options of `ferry bench evacuate`; the binary gives them from its flags.
#[derive(Debug, Clone)]
pub struct EvacuateConfig {
    /// Guests on the host evacuated.
    pub vms: usize,
    /// How many of them rewrite memory (the others only verify theirs).
    pub dirty_vms: usize,
    /// What the dirtying guests rewrite, MiB/s.
    pub dirty_rate: f64,
    /// Each guest's memory, MiB.
    pub memory: u64,
    /// MiB each guest's workload fills with self-verifying pages.
    pub workload_mem: u64,
    /// Hosts the guests may go to, besides the source (2 to 7).
    pub destinations: usize,
    /// The link capacity every agent declares (`--migration-link-mib-s`; 1 Gbit/s is
    /// 119 MiB/s); 0 declares none, so the server uses what its probes measure.
    pub link_mib_s: u64,
    /// Each migration, the evacuation and each guest's check may take this long, s.
    pub time_limit: u64,
    /// Keep the lab's directory (daemon logs) afterwards.
    pub keep: bool,
    /// Where to write the result files.
    pub out: PathBuf,
    /// Print JSON (for scripts) instead of a table.
    pub json: bool,
}

/// The host evacuated.
const SOURCE: &str = "a";
/// What the shaped link carries, bytes/s (1 Gbit/s).
const LINK_BYTES_S: f64 = 1e9 / 8.0;
/// The goal for the estimate: within this fraction of the actual time.
const GOAL: f64 = 0.20;

#[derive(Serialize, Clone)]
struct Guest {
    vm: String,
    /// What the workload is set to rewrite, MiB/s (0: it only verifies).
    dirty_rate_mib_s: f64,
    /// What it rewrote over a few seconds before the runs, MiB/s.
    achieved_dirty_mib_s: f64,
}

/// One guest moved alone, and back.
#[derive(Serialize)]
struct Single {
    vm: String,
    to: String,
    /// The migration's report (time from its start, bytes, passes, downtime).
    report: MigrationReport,
    /// What the estimate's model gives this VM moved alone, s.
    model_alone_s: Option<f64>,
    /// The way back to a, ms (not part of the sum).
    back_time_ms: u64,
    /// Guest mismatches seen after the move and after the way back.
    mismatches: u64,
}

/// One guest's migration within the evacuation; times from the operation's creation.
#[derive(Serialize)]
struct Moved {
    vm: String,
    to: String,
    state: String,
    migration: Option<uuid::Uuid>,
    /// Started (its own clock begins; it may have waited in the queue before) and finished.
    started_at_s: Option<f64>,
    finished_at_s: Option<f64>,
    /// The dirty rate the dry run sampled for it, MiB/s.
    dirty_sampled_mib_s: Option<f64>,
    /// The migration's report (time from its start, bytes, passes, downtime).
    report: MigrationReport,
    /// The dry run's window for it, s.
    estimate_start_s: Option<f64>,
    estimate_end_s: Option<f64>,
    verdict: Option<GuestVerdict>,
    /// Runs on its new host and verified clean (full sweep, no mismatch).
    guest_ok: bool,
    problem: Option<String>,
}

fn validate(a: &EvacuateConfig) -> Result<(), BenchError> {
    if !(1..=16).contains(&a.vms) {
        return Err(BenchError::refused("--vms takes 1 to 16 guests"));
    }
    if a.dirty_vms > a.vms {
        return Err(BenchError::refused(format!(
            "--dirty-vms {} is more than --vms {}",
            a.dirty_vms, a.vms
        )));
    }
    if !(2..ferry_lab::netlab::MAX_HOSTS).contains(&a.destinations) {
        return Err(BenchError::refused(format!(
            "--destinations takes 2 to {} hosts (the lab has at most {} with the source)",
            ferry_lab::netlab::MAX_HOSTS - 1,
            ferry_lab::netlab::MAX_HOSTS
        )));
    }
    if a.workload_mem == 0 || a.memory < a.workload_mem + 128 {
        return Err(BenchError::refused(format!(
            "--workload-mem must be at least 1 MiB and leave 128 MiB of --memory ({} MiB) to \
             the guest's kernel",
            a.memory
        )));
    }
    if !(a.dirty_rate.is_finite() && a.dirty_rate > 0.0) {
        return Err(BenchError::refused(
            "--dirty-rate must be a number above 0 (MiB/s)",
        ));
    }
    if a.time_limit < 60 {
        return Err(BenchError::refused("--time-limit must be at least 60 s"));
    }
    Ok(())
}

/// Hosts a (the source) and the destinations, every migration link shaped to 1 Gbit/s
/// both ways; the agents declare `link_mib_s` as their link's capacity (0: none).
async fn start_lab(a: &EvacuateConfig, hosts: &[String]) -> Result<NetLab, BenchError> {
    let image_dir = test_image().await?;
    let exe = own_binary()?;
    let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let mut cfg = NetLabConfig::new(exe, &names);
    cfg.image_dir = Some(image_dir);
    cfg.vm_network_flag = Some(false);
    cfg.keep = a.keep;
    if a.link_mib_s > 0 {
        cfg.agent_args = vec!["--migration-link-mib-s".into(), a.link_mib_s.to_string()];
    }
    eprintln!(
        "bench: starting a network lab with hosts {}",
        names.join(", ")
    );
    let lab = NetLab::start(cfg).await.map_err(fail)?;
    for h in hosts {
        lab.shape_migration(h, Shape::Gbit1).map_err(fail)?;
    }
    Ok(lab)
}

async fn status(c: &ServerClient, vm: &str) -> Result<StatusLine, BenchError> {
    Observer { client: c, vm }
        .last_status()
        .await
        .map_err(|e| BenchError::failed(format!("{vm}: cannot read the guest's console: {e}")))?
        .ok_or_else(|| BenchError::failed(format!("{vm}: the guest prints no status line")))
}

/// Each guest's rewrite rate over five seconds, from its status lines.
async fn achieved_rates(c: &ServerClient, guests: &mut [Guest]) -> Result<(), BenchError> {
    let mut first = Vec::new();
    for g in guests.iter() {
        first.push(status(c, &g.vm).await?);
    }
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (g, f) in guests.iter_mut().zip(first) {
        let last = status(c, &g.vm).await?;
        let pages = last.written.saturating_sub(f.written);
        g.achieved_dirty_mib_s = pages as f64 * 4096.0 / 1_048_576.0 / t.elapsed().as_secs_f64();
    }
    Ok(())
}

/// The guest runs on after a move: two status lines past `before`; returns its mismatches.
async fn still_running(c: &ServerClient, vm: &str, before: &StatusLine) -> Result<u64, BenchError> {
    let st = Observer { client: c, vm }
        .wait_status(Duration::from_secs(120), |s| s.tick > before.tick + 1)
        .await
        .map_err(|e| BenchError::failed(format!("{vm} after its migration: {e}")))?;
    Ok(st.mismatches)
}

/// Moves `vm` to `to` and follows it to its end (cancelled past `limit`); an error unless
/// it completed.
async fn move_vm(
    c: &ServerClient,
    vm: &str,
    to: &str,
    limit: Duration,
) -> Result<Migration, BenchError> {
    let m = c
        .migrate(&MigrateRequest {
            vm: vm.into(),
            to: Some(to.into()),
            options: Default::default(),
            priority: None,
        })
        .await?;
    let m = match tokio::time::timeout(limit, follow(c, &m, false)).await {
        Ok(r) => r?,
        Err(_) => {
            let _ = c.cancel_migration(m.id).await;
            return Err(BenchError::failed(format!(
                "the migration of {vm} to {to} did not finish within {} s (cancelled)",
                limit.as_secs()
            )));
        }
    };
    if m.phase != Phase::Completed {
        return Err(BenchError::failed(format!(
            "the migration of {vm} to {to} ended {}: {}",
            m.phase,
            m.error.as_deref().unwrap_or("no reason recorded")
        )));
    }
    Ok(m)
}

async fn single(
    c: &ServerClient,
    vm: &str,
    to: &str,
    limit: Duration,
    model: Option<f64>,
) -> Result<Single, BenchError> {
    eprintln!("bench: {vm} alone: {SOURCE} -> {to}");
    let before = status(c, vm).await?;
    let m = move_vm(c, vm, to, limit).await?;
    let mut mismatches = still_running(c, vm, &before).await?;
    eprintln!("bench: {vm} back: {to} -> {SOURCE}");
    let before = status(c, vm).await?;
    let back = move_vm(c, vm, SOURCE, limit).await?;
    mismatches = mismatches.max(still_running(c, vm, &before).await?);
    let r = m.report.unwrap_or_default();
    eprintln!(
        "bench: {vm} alone took {} ({} sent), model {}",
        millis(r.total_time_ms),
        bytes(r.bytes_sent),
        model.map_or("-".into(), |s| format!("{s:.1} s"))
    );
    // Let the guest settle on a again before the next run.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(Single {
        vm: vm.into(),
        to: to.into(),
        report: r,
        model_alone_s: model,
        back_time_ms: back.report.map_or(0, |r| r.total_time_ms),
        mismatches,
    })
}

async fn dry_run(c: &ServerClient) -> Result<EvacuationPlan, BenchError> {
    let plan = c
        .enter_maintenance(SOURCE, &EnterMaintenanceRequest { dry_run: true })
        .await?;
    if let Some(i) = plan.items.iter().find(|i| i.destination.is_none()) {
        return Err(BenchError::failed(format!(
            "the dry run places {} nowhere: {}",
            i.vm,
            i.reason.as_deref().unwrap_or("no reason given")
        )));
    }
    Ok(plan)
}

/// Polls the operation until it is finished; past `limit` it is cancelled and an error.
async fn wait_operation(
    c: &ServerClient,
    id: uuid::Uuid,
    limit: Duration,
) -> Result<Operation, BenchError> {
    let deadline = Instant::now() + limit;
    let (mut shown, mut shown_at) = (usize::MAX, Instant::now());
    loop {
        let op = c.operation(id).await?;
        if op.state.is_finished() {
            return Ok(op);
        }
        let moved = op.count(ItemState::Moved);
        if moved != shown || shown_at.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "bench: evacuation: {moved} of {} moved{}",
                op.items.len(),
                op.eta_s
                    .map_or(String::new(), |e| format!(", ETA {e:.0} s"))
            );
            (shown, shown_at) = (moved, Instant::now());
        }
        if Instant::now() > deadline {
            let _ = c.cancel_maintenance(SOURCE).await;
            return Err(BenchError::failed(format!(
                "the evacuation did not finish within {} s (cancelled)",
                limit.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn mib(bytes_per_s: u64) -> f64 {
    bytes_per_s as f64 / 1_048_576.0
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Each VM's dirty-rate samples (one per plan: QEMU's page sampling over a second), MiB/s.
fn samples(plans: &[&[EstimateAssumption]]) -> HashMap<String, Vec<f64>> {
    let mut out: HashMap<String, Vec<f64>> = HashMap::new();
    for a in plans.iter().flat_map(|p| p.iter()) {
        out.entry(a.vm.clone())
            .or_default()
            .push(mib(a.dirty_bytes_per_s));
    }
    out
}

/// The estimate's model run on a plan's figures: for the VM `only` alone, or for all;
/// each VM's dirty rate as `dirty` gives it (MiB/s), else as the plan sampled it. The
/// links per host are the pair figures the plan used (equal when the agents declare one).
fn model(
    plan: &EvacuationPlan,
    only: Option<&str>,
    dirty: &HashMap<String, f64>,
    limits: &MigrationLimits,
) -> Option<f64> {
    let mut vms = Vec::new();
    let mut links: HashMap<String, u64> = HashMap::new();
    for a in plan
        .assumptions
        .iter()
        .filter(|a| only.is_none_or(|o| o == a.vm))
    {
        let to = plan
            .items
            .iter()
            .find(|i| i.vm == a.vm)?
            .destination
            .clone()?;
        for h in [SOURCE.to_string(), to.clone()] {
            let l = links.entry(h).or_default();
            *l = (*l).max(a.link_bytes_per_s);
        }
        vms.push(EstimateVm {
            vm: a.vm.clone(),
            source: SOURCE.into(),
            destination: to,
            bytes: a.bytes,
            dirty_bytes_per_s: dirty
                .get(&a.vm)
                .map_or(a.dirty_bytes_per_s, |m| (m * 1_048_576.0) as u64),
        });
    }
    let link = |h: &str| links.get(h).copied();
    estimate(&vms, &link, limits, &Costs::default())
        .ok()
        .map(|e| e.total_s)
}

fn secs_between(from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

/// What each VM's migration in the evacuation did, and whether its guest is clean on its
/// new host (full sweep).
async fn moved_rows(
    c: &ServerClient,
    op: &Operation,
    dry: &EvacuationPlan,
    befores: HashMap<String, StatusLine>,
    limit: Duration,
) -> Result<Vec<Moved>, BenchError> {
    let mut verdicts = tokio::task::JoinSet::new();
    for (vm, before) in befores {
        let c = c.clone();
        verdicts.spawn(async move {
            let v = verdict_after(&c, &vm, &before, limit).await;
            (vm, v)
        });
    }
    let mut found: HashMap<String, Result<GuestVerdict, String>> = HashMap::new();
    while let Some(done) = verdicts.join_next().await {
        let (vm, v) = done.map_err(fail)?;
        found.insert(vm, v);
    }
    let mut rows = Vec::new();
    for it in &op.items {
        let m = match it.migration {
            Some(id) => Some(c.migration(id).await?),
            None => None,
        };
        let r = m
            .as_ref()
            .and_then(|m| m.report.clone())
            .unwrap_or_default();
        let vm = c.vm(&it.vm).await?;
        let assumed = dry.assumptions.iter().find(|a| a.vm == it.vm);
        let verdict = found.remove(&it.vm);
        let mut problems = Vec::new();
        if it.state != ItemState::Moved {
            problems.push(format!(
                "{}: {}",
                it.state,
                it.reason.as_deref().unwrap_or("no reason")
            ));
        }
        if vm.host == SOURCE || vm.state != VmState::Running {
            problems.push(format!("{} on {}", vm.state, vm.host));
        }
        match &verdict {
            Some(Ok(v)) if !v.ok() => problems.push(v.describe()),
            Some(Err(e)) => problems.push(format!("no verdict: {e}")),
            None => problems.push("not checked".into()),
            _ => {}
        }
        let finished_at_s = m
            .as_ref()
            .and_then(|m| m.finished_at)
            .map(|t| secs_between(op.created_at, t));
        rows.push(Moved {
            vm: it.vm.clone(),
            to: vm.host.clone(),
            state: it.state.to_string(),
            migration: it.migration,
            started_at_s: finished_at_s.map(|f| f - r.total_time_ms as f64 / 1000.0),
            finished_at_s,
            dirty_sampled_mib_s: assumed.map(|a| mib(a.dirty_bytes_per_s)),
            report: r,
            estimate_start_s: assumed.map(|a| a.start_s),
            estimate_end_s: assumed.map(|a| a.end_s),
            verdict: verdict.and_then(Result::ok),
            guest_ok: problems.is_empty(),
            problem: (!problems.is_empty()).then(|| problems.join("; ")),
        });
    }
    Ok(rows)
}

pub async fn evacuate(a: EvacuateConfig) -> BenchResult {
    validate(&a)?;
    let limit = Duration::from_secs(a.time_limit);
    let hosts: Vec<String> = std::iter::once(SOURCE.to_string())
        .chain((0..a.destinations).map(|i| ((b'b' + i as u8) as char).to_string()))
        .collect();
    let lab = start_lab(&a, &hosts).await?;
    let c = lab.client();
    let limits = c.limits().await?;
    let load_start = loadavg();
    let accel = c
        .hosts()
        .await?
        .first()
        .map_or("unknown".to_string(), |h| h.inventory.accel.to_string());

    // The guests, all on a.
    let mut guests: Vec<Guest> = (0..a.vms)
        .map(|i| Guest {
            vm: match i < a.dirty_vms {
                true => format!("dirty{}", i + 1),
                false => format!("idle{}", i + 1 - a.dirty_vms),
            },
            dirty_rate_mib_s: if i < a.dirty_vms { a.dirty_rate } else { 0.0 },
            achieved_dirty_mib_s: 0.0,
        })
        .collect();
    for g in &guests {
        eprintln!(
            "bench: booting {} on {SOURCE}: {} MiB, workload {} MiB at {} MiB/s",
            g.vm, a.memory, a.workload_mem, g.dirty_rate_mib_s
        );
        c.create_vm(&CreateVmRequest {
            host: Some(SOURCE.into()),
            spec: test_vm_spec(&g.vm, a.memory, a.workload_mem, g.dirty_rate_mib_s),
        })
        .await?;
    }
    for g in &guests {
        wait_ready(&c, &g.vm, Duration::from_secs(900))
            .await
            .map_err(|e| BenchError::failed(format!("{}: {e}", g.vm)))?;
    }
    achieved_rates(&c, &mut guests).await?;

    // 1. Each guest alone, to where the plan sends it, and back.
    let first = dry_run(&c).await?;
    let mut singles = Vec::new();
    for it in &first.items {
        let to = it.destination.clone().unwrap_or_default();
        let modelled = model(&first, Some(&it.vm), &HashMap::new(), &limits);
        singles.push(single(&c, &it.vm, &to, limit, modelled).await?);
    }
    let sum_s: f64 = singles
        .iter()
        .map(|s| s.report.total_time_ms as f64 / 1000.0)
        .sum();

    // 2. The dry run just before, then the evacuation itself.
    tokio::time::sleep(Duration::from_secs(5)).await;
    eprintln!("bench: dry run of the evacuation of {SOURCE}");
    let dry = dry_run(&c).await?;
    let mut befores = HashMap::new();
    for g in &guests {
        befores.insert(g.vm.clone(), status(&c, &g.vm).await?);
    }
    eprintln!(
        "bench: evacuating {SOURCE} (dry-run estimate {:.1} s)",
        dry.estimate_s
    );
    let load_before = loadavg();
    let started = Instant::now();
    let plan = c
        .enter_maintenance(SOURCE, &EnterMaintenanceRequest { dry_run: false })
        .await?;
    let op = plan
        .operation
        .ok_or_else(|| BenchError::failed("maintenance enter started no operation"))?;
    let op = wait_operation(&c, op.id, limit).await?;
    let wall_s = started.elapsed().as_secs_f64();
    let load_after = loadavg();
    let actual_s = op
        .finished_at
        .map_or(wall_s, |t| secs_between(op.created_at, t));
    eprintln!(
        "bench: evacuation {} in {actual_s:.1} s; checking every guest (a full sweep each)",
        op.state
    );
    let moved = moved_rows(&c, &op, &dry, befores, limit).await?;
    drop(lab);

    // 3. Figures.
    let sent: u64 = moved.iter().map(|m| m.report.bytes_sent).sum();
    let utilisation = sent as f64 / (LINK_BYTES_S * actual_s.max(0.001));
    let error = (dry.estimate_s - actual_s) / actual_s.max(0.001);
    let within = error.abs() <= GOAL;
    let last_move_s = moved
        .iter()
        .filter_map(|m| m.finished_at_s)
        .fold(0.0, f64::max);
    let sampled = samples(&[&first.assumptions, &dry.assumptions, &op.assumptions]);
    let means: HashMap<String, f64> = sampled
        .iter()
        .map(|(vm, v)| (vm.clone(), v.iter().sum::<f64>() / v.len().max(1) as f64))
        .collect();
    let with_means = model(&dry, None, &means, &limits);
    let mut sample_text: Vec<String> = sampled
        .iter()
        .map(|(vm, v)| format!("{vm} {:.0?}", v))
        .collect();
    sample_text.sort();
    let clean = op.state == OperationState::Succeeded
        && moved.iter().all(|m| m.guest_ok)
        && singles.iter().all(|s| s.mismatches == 0);
    let summary = vec![
        format!(
            "{} x {} MiB guests ({} dirtying {} MiB/s, workload {} MiB) on host {SOURCE}, {} \
             destinations, 1 Gbit/s migration links (tc tbf){}",
            a.vms,
            a.memory,
            a.dirty_vms,
            a.dirty_rate,
            a.workload_mem,
            a.destinations,
            if a.link_mib_s > 0 {
                format!(", declared {} MiB/s", a.link_mib_s)
            } else {
                ", capacity from the server's probes".into()
            }
        ),
        format!(
            "single migrations: {sum_s:.1} s in sum; evacuation: {actual_s:.1} s ({:.2}x the \
             sum; last migration done at {last_move_s:.1} s; {wall_s:.1} s from the request)",
            actual_s / sum_s.max(0.001)
        ),
        format!(
            "dry-run estimate {:.1} s vs actual {actual_s:.1} s: {:+.1} % (goal within {:.0} \
             %: {})",
            dry.estimate_s,
            error * 100.0,
            GOAL * 100.0,
            if within { "met" } else { "NOT met" }
        ),
        format!(
            "dirty-rate samples (QEMU page sampling, 1 s; first dry run/dry run/enter): {}; \
             the dry run's estimate with each VM's mean sample: {}",
            sample_text.join(", "),
            with_means.map_or("-".into(), |e| format!(
                "{e:.1} s ({:+.1} %)",
                (e - actual_s) / actual_s.max(0.001) * 100.0
            ))
        ),
        format!(
            "link utilisation: {} sent in {actual_s:.1} s over 1 Gbit/s: {:.0} %",
            bytes(sent),
            utilisation * 100.0
        ),
        format!(
            "evacuation {}; guests {}",
            op.state,
            if clean {
                "all clean"
            } else {
                "NOT all clean (see the table)"
            }
        ),
    ];

    let doc = serde_json::json!({
        "benchmark": "evacuate",
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "machine": machine_json(&accel),
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "hosts": hosts,
        "source": SOURCE,
        "guest_memory_mib": a.memory,
        "workload_mib": a.workload_mem,
        "link": "1 Gbit/s (tc tbf on both ends of each host's migration link)",
        "link_bytes_s": LINK_BYTES_S,
        "declared_link_mib_s": (a.link_mib_s > 0).then_some(a.link_mib_s),
        "limits": limits,
        "guests": guests,
        "singles": singles,
        "singles_sum_s": sum_s,
        "dry_run": {
            "estimate_s": dry.estimate_s,
            "items": dry.items,
            "assumptions": dry.assumptions,
        },
        "evacuation": {
            "operation": op.id,
            "state": op.state,
            "estimate_at_enter_s": op.estimate_s,
            "actual_s": actual_s,
            "last_migration_done_s": last_move_s,
            "wall_s": wall_s,
            "vs_singles_sum": actual_s / sum_s.max(0.001),
            "bytes_sent": sent,
            "link_utilisation": utilisation,
            "moved": moved,
        },
        "estimate_error": error,
        "dirty_samples_mib_s": sampled,
        "estimate_with_mean_samples_s": with_means,
        "loadavg": {"start": load_start, "before_evacuation": load_before,
            "after_evacuation": load_after},
        "goal": {"estimate_within": GOAL, "met": within},
        "guests_clean": clean,
        "summary": summary,
    });
    let file = write_result(&a.out, "evacuate", &doc)?;
    let txt = a.out.join("evacuate.txt");
    let text = format!(
        "ferry bench evacuate, {} ({} build, {} CPUs, {accel})\n{}\n",
        doc["date"].as_str().unwrap_or_default(),
        doc["build"].as_str().unwrap_or_default(),
        doc["machine"]["cpus"],
        summary.join("\n")
    );
    std::fs::write(&txt, text)
        .map_err(|e| BenchError::failed(format!("cannot write {}: {e}", txt.display())))?;
    if a.json {
        print_json(&doc)?;
    } else {
        print_singles(&singles, &guests);
        print_moved(&moved);
        for line in &summary {
            println!("{line}");
        }
        println!(
            "results written to {} and {}",
            file.display(),
            txt.display()
        );
    }
    if clean {
        Ok(())
    } else {
        Err(BenchError::failed(
            "the evacuation did not succeed or a guest is not clean (see the table)",
        ))
    }
}

fn print_singles(singles: &[Single], guests: &[Guest]) {
    let rows: Vec<Vec<String>> = singles
        .iter()
        .map(|s| {
            let g = guests.iter().find(|g| g.vm == s.vm);
            vec![
                s.vm.clone(),
                g.map_or("-".into(), |g| {
                    format!("{:.0}/{:.1}", g.dirty_rate_mib_s, g.achieved_dirty_mib_s)
                }),
                format!("{SOURCE} -> {}", s.to),
                millis(s.report.total_time_ms),
                s.model_alone_s.map_or("-".into(), |m| format!("{m:.1} s")),
                bytes(s.report.bytes_sent),
                s.report.passes.to_string(),
                millis(s.report.downtime_ms),
                millis(s.back_time_ms),
                s.mismatches.to_string(),
            ]
        })
        .collect();
    println!("each guest alone:");
    let headers = "VM|DIRTY SET/GOT|MOVE|TIME|MODEL|SENT|PASSES|DOWNTIME|BACK|MISMATCH";
    print_table(&headers.split('|').collect::<Vec<_>>(), &rows);
}

fn print_moved(moved: &[Moved]) {
    let at = |s: Option<f64>| s.map_or("-".into(), |s| format!("{s:.1}"));
    let rows: Vec<Vec<String>> = moved
        .iter()
        .map(|m| {
            vec![
                m.vm.clone(),
                m.to.clone(),
                m.state.clone(),
                m.dirty_sampled_mib_s
                    .map_or("-".into(), |d| format!("{d:.0} MiB/s")),
                format!("{}-{} s", at(m.started_at_s), at(m.finished_at_s)),
                format!("{}-{} s", at(m.estimate_start_s), at(m.estimate_end_s)),
                millis(m.report.total_time_ms),
                bytes(m.report.bytes_sent),
                m.report.passes.to_string(),
                millis(m.report.downtime_ms),
                if m.guest_ok {
                    "clean".into()
                } else {
                    m.problem.clone().unwrap_or_default()
                },
            ]
        })
        .collect();
    println!("the evacuation:");
    let headers = "VM|TO|STATE|DIRTY SAMPLED|ACTUAL|ESTIMATED|TIME|SENT|PASSES|DOWNTIME|GUEST";
    print_table(&headers.split('|').collect::<Vec<_>>(), &rows);
}
