//! `ferry bench ha`: how long from a host's loss to its HA VM running elsewhere, with the
//! server's default timing (or `--lease-s`), in two cases on a network lab of three hosts:
//!
//! - `crash`: host a's agent and QEMU are killed (the host is gone);
//! - `partition`: host a's management link is cut (the host lives, isolated): a stops the
//!   VM itself, then the server restarts it; the gap between the two is the fencing margin
//!   as it really was.
//!
//! For each: when the server suspected the host, declared it failed, restarted the VM, and
//! when the guest printed its first status line on its new host; the lease and margins.
//! Prints a table and writes bench/results/ha.json. Figures, not assertions.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_api::client::ServerClient;
use ferry_api::*;
use ferry_lab::{test_vm_spec, wait_ready, NetLab, NetLabConfig, Observer};

use crate::console::print_table;
use crate::error::{fail, BenchError, BenchResult};
use crate::results::{machine_json, write_result};
use crate::setup::{own_binary, test_image};

/// The options of `ferry bench ha`; the binary gives them from its flags.
#[derive(Debug, Clone)]
pub struct HaConfig {
    /// The server's `--ha-lease-s` (default: the server's default).
    pub lease_s: u64,
    /// Where to write the result file.
    pub out: PathBuf,
}

/// A directory for the shared pool, removed also when the bench fails.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Result<TempDir, BenchError> {
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| BenchError::failed(format!("{}: {e}", dir.display())))?;
        Ok(TempDir(dir))
    }
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
struct Case {
    case: &'static str,
    suspected_s: Option<f64>,
    failed_s: Option<f64>,
    /// When the source host's QEMU was seen gone (partition: the host fenced itself).
    source_stopped_s: Option<f64>,
    restarted_s: Option<f64>,
    /// The guest's first status line on its new host.
    running_s: Option<f64>,
    /// Restart minus the source's stop: the fencing margin as it happened.
    fence_margin_s: Option<f64>,
    to: Option<String>,
    error: Option<String>,
}

pub async fn ha(a: HaConfig) -> BenchResult {
    if !(6..=600).contains(&a.lease_s) {
        return Err(BenchError::refused("--lease-s is 6 to 600"));
    }
    let image_dir = test_image().await?;
    let exe = own_binary()?;
    let mut cases = Vec::new();
    for case in ["crash", "partition"] {
        let shared = TempDir::new(&format!("ferry-bench-ha-{}-{case}", std::process::id()))?;
        let mut cfg = NetLabConfig::new(exe.clone(), &["a", "b", "c"]);
        cfg.image_dir = Some(image_dir.clone());
        cfg.server_args = vec!["--ha-lease-s".into(), a.lease_s.to_string()];
        cfg.agent_args = vec![
            "--pool".into(),
            format!("shared={}:shared", shared.path().display()),
        ];
        eprintln!("bench: {case}: starting a three-host network lab");
        let mut lab = NetLab::start(cfg).await.map_err(fail)?;
        let c = lab.client();
        let r = run_case(&mut lab, &c, case).await;
        cases.push(r.unwrap_or_else(|e| Case {
            case,
            error: Some(e),
            ..Default::default()
        }));
        drop(lab);
    }
    let f = |v: Option<f64>| v.map(|x| format!("{x:.1} s")).unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = cases
        .iter()
        .map(|c| {
            vec![
                c.case.to_string(),
                f(c.suspected_s),
                f(c.failed_s),
                f(c.source_stopped_s),
                f(c.restarted_s),
                f(c.running_s),
                f(c.fence_margin_s),
                c.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &[
            "CASE",
            "SUSPECTED",
            "FAILED",
            "SOURCE STOPPED",
            "RESTARTED",
            "RUNNING",
            "FENCE MARGIN",
            "ERROR",
        ],
        &rows,
    );
    let l = a.lease_s as f64;
    let fence = (a.lease_s / 3).max(2) as f64;
    let grace = (a.lease_s / 5).max(3) as f64;
    println!(
        "lease {l:.0} s: an isolated host stops its HA VMs {fence:.0} s before it ends; the \
         server restarts them {grace:.0} s after it ends (designed margin {:.0} s)",
        fence + grace
    );
    let doc = serde_json::json!({
        "bench": "ha",
        "when": chrono::Utc::now().to_rfc3339(),
        "machine": machine_json("tcg"),
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "lease_s": l, "fence_margin_s": fence, "grace_s": grace,
        "designed_margin_s": fence + grace,
        "cases": cases,
        "goal": {"running_elsewhere_s": 30},
    });
    let file = write_result(&a.out, "ha", &doc)?;
    eprintln!("bench: wrote {}", file.display());
    if cases.iter().any(|c| c.error.is_some()) {
        return Err(BenchError::failed("a case did not complete; see the table"));
    }
    Ok(())
}

async fn run_case(lab: &mut NetLab, c: &ServerClient, case: &'static str) -> Result<Case, String> {
    c.create_disk(
        "a",
        "shared",
        &CreateDiskRequest {
            name: "ha1-disk".into(),
            size_mib: 64,
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut spec = test_vm_spec("ha1", 256, 16, 1.0);
    spec.disks = vec![DiskRef {
        pool: "shared".into(),
        image: "ha1-disk".into(),
    }];
    if let Boot::Image { cmdline, .. } = &mut spec.boot {
        *cmdline = ferry_image::with_disk(cmdline, "vda", 16, 1.0);
    }
    spec.ha = Some(HaPolicy::default());
    c.create_vm(&CreateVmRequest {
        host: Some("a".into()),
        spec,
    })
    .await
    .map_err(|e| e.to_string())?;
    wait_ready(c, "ha1", Duration::from_secs(300)).await?;
    let obs = Observer {
        client: c,
        vm: "ha1",
    };
    let after_id = c
        .events(&EventQuery::default())
        .await
        .map_err(|e| e.to_string())?
        .last()
        .map(|e| e.id)
        .unwrap_or(0);
    // A moment after a heartbeat, as a failure would strike at any time.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let t0 = Instant::now();
    let t0_wall = chrono::Utc::now();
    match case {
        "crash" => kill_agent_and_qemu(lab)?,
        _ => lab
            .set_management_link("a", false)
            .map_err(|e| e.to_string())?,
    }
    let mut out = Case {
        case,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    while out.running_s.is_none() {
        if Instant::now() > deadline {
            return Err("the VM was not running elsewhere within 180 s".into());
        }
        if out.source_stopped_s.is_none() && lab.qemu_pid("a", "ha1").is_none() {
            out.source_stopped_s = Some(t0.elapsed().as_secs_f64());
        }
        let events = c
            .events(&EventQuery {
                after: Some(after_id),
                limit: Some(500),
                ..Default::default()
            })
            .await
            .unwrap_or_default();
        let at = |e: &Event| (e.at - t0_wall).num_milliseconds() as f64 / 1000.0;
        for e in &events {
            if e.kind == EventKind::HostHealth && e.host.as_deref() == Some("a") {
                match e.data["to"].as_str() {
                    Some("suspected") if out.suspected_s.is_none() => out.suspected_s = Some(at(e)),
                    Some("failed") if out.failed_s.is_none() => out.failed_s = Some(at(e)),
                    _ => {}
                }
            }
            if e.kind == EventKind::VmRestart
                && e.outcome == Outcome::Ok
                && out.restarted_s.is_none()
            {
                out.restarted_s = Some(at(e));
                out.to = e.host.clone();
            }
        }
        if let Some(to) = &out.to {
            // Running again: the guest prints a status line from its new QEMU.
            if lab.qemu_pid(to, "ha1").is_some() {
                if let Ok(s) = obs.summary().await {
                    if s.last.is_some() && s.ready.is_some() {
                        out.running_s = Some(t0.elapsed().as_secs_f64());
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if case == "partition" {
        if let (Some(stop), Some(restart)) = (out.source_stopped_s, out.restarted_s) {
            out.fence_margin_s = Some(restart - stop);
        }
        lab.set_management_link("a", true)
            .map_err(|e| e.to_string())?;
    }
    Ok(out)
}

fn kill_agent_and_qemu(lab: &mut NetLab) -> Result<(), String> {
    // The agent first (it would otherwise report the QEMU's death), then the QEMU.
    lab.kill_agent("a").map_err(|e| e.to_string())?;
    if !lab.kill_qemu("a", "ha1") {
        return Err("ha1's QEMU on a was not found".into());
    }
    Ok(())
}
