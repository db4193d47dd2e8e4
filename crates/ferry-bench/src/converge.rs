//! `ferry bench convergence`: the same guest and workload migrated (a) with QEMU's defaults,
//! driven directly over QMP the way `virsh migrate --live` does (destination started with
//! `-incoming`, then one `migrate` on the source and nothing else: no auto-converge, no
//! post-copy, QEMU's 300 ms downtime limit and 128 MiB/s cap), and (b) by Ferry with its
//! convergence controller (same 300 ms budget, throttle allowed up to 99 %, then post-copy),
//! and (c) by Ferry with post-copy as soon as pre-copy is seen not to converge, side by side, over a migration link shaped to 1 Gbit/s, with the guest dirtying memory
//! at set fractions of the link rate. A client in its own namespace holds one TCP
//! connection to the guest through each run. Writes a JSON result and an SVG plot.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_api::client::AgentClient;
use ferry_api::*;
use ferry_lab::netlab::NetLab;
use ferry_lab::Observer;
use serde::Serialize;

use crate::console::{bytes, millis, print_json, print_table};
use crate::error::fail;
use crate::error::{BenchError, BenchResult};
use crate::net::{boot_networked_guest, start_client, start_shaped_lab};
use crate::progress::follow;

/// The options of `ferry bench convergence`; the binary gives them from its flags.
#[derive(Debug, Clone)]
pub struct ConvergenceConfig {
    /// Guest memory, MiB.
    pub memory: u64,
    /// MiB the guest workload rewrites.
    pub workload_mem: u64,
    /// Guest dirty rates to run, percent of the 1 Gbit/s link.
    pub link_pcts: Vec<f64>,
    /// Which arms to run: qemu-defaults, ferry (throttle up to 99 %, then post-copy),
    /// ferry-postcopy (post-copy as soon as pre-copy is seen not to converge).
    pub modes: Vec<String>,
    /// Downtime budget, ms (QEMU's default downtime limit, for all).
    pub downtime_limit: u64,
    /// A run not finished after this long counts as not converging (and is cancelled), s.
    pub time_limit: u64,
    /// Where to write the result files.
    pub out: PathBuf,
    /// Print JSON (for scripts) instead of a table.
    pub json: bool,
}

/// The arms of the comparison, in the order they run and are drawn.
pub const MODES: [&str; 3] = ["qemu-defaults", "ferry", "ferry-postcopy"];

/// 1 Gbit/s in MiB/s: what the shaped link carries.
pub(crate) const LINK_MIB_S: f64 = 1e9 / 8.0 / 1_048_576.0;

#[derive(Serialize, Clone, Default)]
struct Row {
    link_pct: f64,
    target_dirty_mib_s: f64,
    /// What the guest actually rewrote before the migration, MiB/s.
    achieved_dirty_mib_s: f64,
    mode: &'static str,
    /// Finished (the VM runs on the destination) within the time limit.
    converged: bool,
    outcome: String,
    total_time_ms: u64,
    qemu_downtime_ms: Option<u64>,
    within_budget: bool,
    client_longest_gap_ms: f64,
    client_answered: u64,
    client_requests: u64,
    bytes_sent: u64,
    passes: u64,
    max_throttle_pct: u64,
    postcopy: bool,
    /// Bytes sent at the link rate, ms: the least time that stream could take.
    link_bound_ms: u64,
    /// Guest-reported page mismatches on the destination (None: not checked).
    mismatches: Option<u64>,
}

pub(crate) fn link_bound_ms(bytes_sent: u64) -> u64 {
    (bytes_sent as f64 / (LINK_MIB_S * 1_048_576.0) * 1000.0) as u64
}

/// The guest's rewrite rate over a few seconds, from its status lines.
pub(crate) async fn achieved_rate(c: &ferry_api::client::ServerClient, vm: &str) -> f64 {
    let o = Observer { client: c, vm };
    let Ok(Some(first)) = o.last_status().await else {
        return 0.0;
    };
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let Ok(Some(last)) = o.last_status().await else {
        return 0.0;
    };
    let pages = last.written.saturating_sub(first.written);
    pages as f64 * 4096.0 / 1_048_576.0 / t.elapsed().as_secs_f64()
}

/// Guest mismatches as the console on `agent` shows them, after a few more status lines.
pub(crate) async fn mismatches_on(agent: &AgentClient, vm: &str) -> Option<u64> {
    tokio::time::sleep(Duration::from_secs(4)).await;
    let tail = agent.console(vm, 64 << 10).await.ok()?;
    ferry_guest::status::ConsoleSummary::parse(&tail.text)
        .last
        .map(|s| s.mismatches)
}

pub(crate) struct QemuRun {
    pub converged: bool,
    pub outcome: String,
    pub total_ms: u64,
    pub downtime_ms: Option<u64>,
    pub bytes_sent: u64,
    pub passes: u64,
    pub max_throttle: u64,
}

/// (a): the destination agent starts QEMU with `-incoming` (as libvirt does); the source
/// QEMU gets exactly one `migrate` over its second QMP socket, with QEMU's defaults.
pub(crate) async fn qemu_defaults(
    lab: &NetLab,
    c: &ferry_api::client::ServerClient,
    vm: &str,
    limit: Duration,
) -> Result<QemuRun, BenchError> {
    let dest = lab.agent_client("b").map_err(fail)?;
    let a = lab.host("a").ok_or_else(|| fail("no host a"))?;
    let (uri, qmp) = crate::plain::open_plain_migration(c, vm, &dest, &a.state_dir).await?;
    let started = Instant::now();
    qmp.migrate(&uri, false).await.map_err(fail)?;
    let crate::plain::Watched {
        info,
        completed: converged,
        outcome,
        max_throttle,
    } = crate::plain::watch_until_done(&qmp, started, limit, Duration::from_millis(250)).await?;
    if converged {
        // Done means the guest runs on b.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match dest.vm(vm).await {
                Ok(rt) if rt.state == VmState::Running => break,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    let ram = info.ram.clone().unwrap_or_default();
    Ok(QemuRun {
        converged,
        outcome,
        total_ms: started.elapsed().as_millis() as u64,
        downtime_ms: info.downtime,
        bytes_sent: ram.transferred,
        passes: ram.dirty_sync_count,
        max_throttle,
    })
}

#[allow(clippy::too_many_arguments)]
async fn one(
    lab: &NetLab,
    a: &ConvergenceConfig,
    mode: &'static str,
    vm: &str,
    ip_k: u8,
    pct: f64,
) -> Result<Row, BenchError> {
    let c = lab.client();
    let target = LINK_MIB_S * pct / 100.0;
    eprintln!("bench: {mode}, guest dirtying {pct}% of the link ({target:.0} MiB/s)");
    let ip = boot_networked_guest(lab, vm, ip_k, a.memory, a.workload_mem, target).await?;
    let achieved = achieved_rate(&c, vm).await;
    let client = start_client(lab, &ip)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let limit = Duration::from_secs(a.time_limit);
    let dest = lab.agent_client("b").map_err(fail)?;
    let mut row = Row {
        link_pct: pct,
        target_dirty_mib_s: target,
        achieved_dirty_mib_s: achieved,
        mode,
        ..Default::default()
    };
    if mode == "qemu-defaults" {
        let r = qemu_defaults(lab, &c, vm, limit).await?;
        row.converged = r.converged;
        row.outcome = r.outcome;
        row.total_time_ms = r.total_ms;
        row.qemu_downtime_ms = r.downtime_ms;
        row.bytes_sent = r.bytes_sent;
        row.passes = r.passes;
        row.max_throttle_pct = r.max_throttle;
    } else {
        let run = ferry_arm(
            &c,
            vm,
            if mode == "ferry" {
                MigrationOptions {
                    downtime_limit_ms: Some(a.downtime_limit),
                    max_throttle_pct: Some(99),
                    postcopy: Some(PostcopyPolicy::Allowed),
                    ..Default::default()
                }
            } else {
                MigrationOptions {
                    downtime_limit_ms: Some(a.downtime_limit),
                    postcopy: Some(PostcopyPolicy::Automatic),
                    ..Default::default()
                }
            },
        )
        .await?;
        let (m, r) = (run.migration, run.report);
        row.converged = run.completed;
        row.outcome = run.outcome;
        row.total_time_ms = r.total_time_ms;
        row.qemu_downtime_ms = row.converged.then_some(r.downtime_ms);
        row.bytes_sent = r.bytes_sent;
        row.passes = r.passes;
        row.postcopy = r.postcopy;
        row.max_throttle_pct = max_throttle(&c, m.id).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = client.finish();
    row.client_longest_gap_ms = stats.longest_gap_ms();
    row.client_answered = stats.answered;
    row.client_requests = stats.sent;
    row.link_bound_ms = link_bound_ms(row.bytes_sent);
    row.within_budget =
        row.converged && row.qemu_downtime_ms.unwrap_or(u64::MAX) <= a.downtime_limit;
    if row.converged {
        row.mismatches = mismatches_on(&dest, vm).await;
    }
    eprintln!(
        "bench: {mode} at {pct}%: {} in {}, downtime {:?} ms, client gap {:.0} ms",
        row.outcome,
        millis(row.total_time_ms),
        row.qemu_downtime_ms,
        row.client_longest_gap_ms
    );
    clean_up(&c, &dest, vm).await;
    Ok(row)
}

/// How one of Ferry's arms went: the finished record, its report, and in a word how it
/// ended.
pub(crate) struct FerryRun {
    pub migration: Migration,
    pub report: MigrationReport,
    pub completed: bool,
    pub outcome: String,
}

/// Moves `vm` to host b with `options` through the server and follows it to its end.
pub(crate) async fn ferry_arm(
    c: &ferry_api::client::ServerClient,
    vm: &str,
    options: MigrationOptions,
) -> Result<FerryRun, BenchError> {
    let m = c
        .migrate(&MigrateRequest {
            vm: vm.into(),
            to: Some("b".into()),
            options,
            priority: None,
        })
        .await?;
    let m = follow(c, &m, false).await?;
    let report = m.report.clone().unwrap_or_default();
    let outcome = match (&m.phase, &m.error) {
        (Phase::Completed, _) if report.postcopy => "completed in post-copy".into(),
        (Phase::Completed, _) => "completed".into(),
        (p, e) => format!("{p}: {}", e.clone().unwrap_or_default()),
    };
    Ok(FerryRun {
        completed: m.phase == Phase::Completed,
        migration: m,
        report,
        outcome,
    })
}

/// The highest vCPU throttle any pass of migration `id` ran at, percent.
pub(crate) async fn max_throttle(
    c: &ferry_api::client::ServerClient,
    id: uuid::Uuid,
) -> Result<u64, BenchError> {
    Ok(c.events(&EventQuery {
        migration: Some(id),
        kind: Some("migration.pass".into()),
        limit: Some(1000),
        ..Default::default()
    })
    .await?
    .iter()
    .filter_map(|e| e.data["throttle_pct"].as_u64())
    .max()
    .unwrap_or(0))
}

/// Removes the guest from both hosts whatever happened (a plain-QEMU run left the server's
/// record on a).
pub(crate) async fn clean_up(c: &ferry_api::client::ServerClient, dest: &AgentClient, vm: &str) {
    let _ = dest.remove(vm).await;
    let _ = c.stop_vm(vm).await;
    let _ = c.delete_vm(vm).await;
}

/// One run of a benchmark's matrix: a load and an arm, with its guest's name and address.
pub(crate) struct Cell {
    pub load: f64,
    pub arm: &'static str,
    pub vm: String,
    pub ip_k: u8,
}

/// Every load x every chosen arm, in order; each guest gets its own name (`PREFIX<i>a<j>`)
/// and VM-network address.
pub(crate) fn matrix(
    prefix: &str,
    loads: &[f64],
    arms: &[&'static str],
    chosen: &[String],
) -> Vec<Cell> {
    let mut cells = Vec::new();
    for (i, load) in loads.iter().enumerate() {
        for (j, arm) in arms.iter().enumerate() {
            if chosen.iter().any(|c| c == arm) {
                cells.push(Cell {
                    load: *load,
                    arm,
                    vm: format!("{prefix}{i}a{j}"),
                    ip_k: 100 + (i * arms.len() + j) as u8,
                });
            }
        }
    }
    cells
}

/// What the result files of the benchmarks on the shaped two-host lab say about the run.
pub(crate) fn lab_facts(
    benchmark: &str,
    memory: u64,
    workload: u64,
    budget: u64,
) -> serde_json::Value {
    serde_json::json!({
        "benchmark": benchmark,
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "machine": crate::results::machine_json("tcg"),
        "link": "1 Gbit/s (tc tbf on both ends of each host's migration link)",
        "streams": "in the clear for every arm (the cluster runs --insecure: QEMU alone cannot \
            join Ferry's stream TLS)",
        "link_mib_s": LINK_MIB_S,
        "guest_memory_mib": memory,
        "workload_mib": workload,
        "downtime_budget_ms": budget,
    })
}

/// `facts` with `more` added (both JSON objects).
pub(crate) fn with_facts(
    mut facts: serde_json::Value,
    more: serde_json::Value,
) -> serde_json::Value {
    if let (Some(f), serde_json::Value::Object(m)) = (facts.as_object_mut(), more) {
        f.extend(m);
    }
    facts
}

pub async fn convergence(a: ConvergenceConfig) -> BenchResult {
    let lab = start_shaped_lab(vec!["--aux-qmp".to_string()], true).await?;
    let mut rows = Vec::new();
    for c in matrix("cv", &a.link_pcts, &MODES, &a.modes) {
        rows.push(one(&lab, &a, c.arm, &c.vm, c.ip_k, c.load).await?);
    }
    drop(lab);

    let facts = lab_facts("convergence", a.memory, a.workload_mem, a.downtime_limit);
    let doc = with_facts(
        facts,
        serde_json::json!({
            "time_limit_s": a.time_limit,
            "qemu_defaults": "destination QEMU -incoming (Ferry agent), then one `migrate` on the \
                source's QMP: QEMU 10 defaults (downtime-limit 300 ms, max-bandwidth 128 MiB/s, \
                no auto-converge, no post-copy)",
            "ferry": "ferry vm migrate with the downtime budget, --max-throttle 99, --postcopy allowed",
            "ferry-postcopy": "ferry vm migrate with the downtime budget, --postcopy automatic (no throttle)",
            "client": "one TCP connection from a client namespace, one request every 10 ms",
            "rows": rows,
        }),
    );
    let file = crate::results::write_result(&a.out, "convergence", &doc)?;
    let svg = a.out.join("convergence.svg");
    write_plot(&svg, &rows, a.time_limit)?;
    if a.json {
        print_json(&doc)?;
    } else {
        print_rows(&rows);
        println!(
            "results written to {} and {}",
            file.display(),
            svg.display()
        );
    }
    Ok(())
}

fn print_rows(rows: &[Row]) {
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                format!("{:.0}%", r.link_pct),
                format!("{:.0}/{:.0}", r.target_dirty_mib_s, r.achieved_dirty_mib_s),
                r.mode.to_string(),
                if r.converged { "yes" } else { "NO" }.to_string(),
                millis(r.total_time_ms),
                r.qemu_downtime_ms.map(millis).unwrap_or_else(|| "-".into()),
                format!("{:.0} ms", r.client_longest_gap_ms),
                bytes(r.bytes_sent),
                r.passes.to_string(),
                format!("{}%", r.max_throttle_pct),
                if r.postcopy { "yes" } else { "no" }.to_string(),
                if r.link_bound_ms > 0 {
                    format!("{:.2}", r.total_time_ms as f64 / r.link_bound_ms as f64)
                } else {
                    "-".into()
                },
                r.mismatches
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print_table(
        &[
            "DIRTY",
            "MIB/S SET/GOT",
            "MODE",
            "DONE",
            "TOTAL",
            "DOWNTIME",
            "CLIENT GAP",
            "SENT",
            "PASSES",
            "THROTTLE",
            "POST-COPY",
            "TOTAL/LINK",
            "MISMATCH",
        ],
        &table,
    );
}

/// Two bar charts side by side: total time (a run that did not finish is drawn to the
/// time limit, hatched) and the client-observed gap, per dirty rate, QEMU's defaults
/// against Ferry.
fn plot_svg(rows: &[Row], limit_s: u64) -> String {
    let pcts: Vec<f64> = {
        let mut v: Vec<f64> = rows.iter().map(|r| r.link_pct).collect();
        v.dedup();
        v
    };
    let (w, h, pad) = (460.0, 300.0, 50.0);
    let mut out = String::new();
    out.push_str(&format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n\
         <defs><pattern id=\"hatch\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" \
         patternTransform=\"rotate(45)\"><rect width=\"3\" height=\"6\" fill=\"#999\"/></pattern></defs>\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        2.0 * w,
        h + 40.0
    ));
    struct Panel {
        title: &'static str,
        /// The bar's value for a row, given the time limit (s).
        value: fn(&Row, u64) -> f64,
        log: bool,
    }
    let panels = [
        Panel {
            title: "total time, s (log scale; hatched: not done)",
            value: |r, limit| {
                if r.converged {
                    r.total_time_ms as f64 / 1000.0
                } else {
                    limit as f64
                }
            },
            log: true,
        },
        Panel {
            title: "longest gap a client saw, ms (hatched: no switch-over)",
            value: |r, _| r.client_longest_gap_ms,
            log: false,
        },
    ];
    for (k, panel) in panels.iter().enumerate() {
        let (title, log) = (panel.title, panel.log);
        let value = |r: &Row| (panel.value)(r, limit_s);
        let x0 = k as f64 * w + pad;
        let (pw, ph) = (w - 1.5 * pad, h - 2.0 * pad);
        let max = rows.iter().map(value).fold(1.0, f64::max);
        let scale = |v: f64| {
            if log {
                (v.max(1.0).ln() / max.max(2.0).ln()) * ph
            } else {
                v / max * ph
            }
        };
        out.push_str(&format!(
            "<text x=\"{x0}\" y=\"20\" font-weight=\"bold\">{title}</text>\n\
             <line x1=\"{x0}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n",
            pad + ph,
            x0 + pw,
            pad + ph
        ));
        let group = pw / pcts.len().max(1) as f64;
        for (g, pct) in pcts.iter().enumerate() {
            let gx = x0 + g as f64 * group;
            out.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{pct:.0}% of link</text>\n",
                gx + group / 2.0,
                pad + ph + 15.0
            ));
            for (j, mode) in MODES.iter().enumerate() {
                let Some(r) = rows.iter().find(|r| r.link_pct == *pct && r.mode == *mode) else {
                    continue;
                };
                let v = value(r);
                let bh = scale(v);
                let bx = gx + group * (0.08 + 0.28 * j as f64);
                let fill = match (j, r.converged) {
                    (_, false) => "url(#hatch)",
                    (0, _) => "#888",
                    (1, _) => "#2a6fdb",
                    _ => "#e08a1e",
                };
                out.push_str(&format!(
                    "<rect x=\"{bx:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{fill}\" stroke=\"black\"/>\n\
                     <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{v:.0}</text>\n",
                    pad + ph - bh,
                    group * 0.26,
                    bx + group * 0.13,
                    pad + ph - bh - 3.0,
                ));
            }
        }
    }
    out.push_str(&format!(
        "<rect x=\"{pad}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"#888\"/>\
         <text x=\"{}\" y=\"{}\">QEMU defaults (virsh migrate --live)</text>\n\
         <rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"#2a6fdb\"/>\
         <text x=\"{}\" y=\"{}\">Ferry (throttle up to 99 %, then post-copy)</text>\n\
         <rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"#e08a1e\"/>\
         <text x=\"{}\" y=\"{}\">Ferry (post-copy when not converging)</text>\n</svg>\n",
        h + 15.0,
        pad + 16.0,
        h + 25.0,
        pad + 260.0,
        h + 15.0,
        pad + 276.0,
        h + 25.0,
        pad + 530.0,
        h + 15.0,
        pad + 546.0,
        h + 25.0
    ));
    out
}

fn write_plot(path: &Path, rows: &[Row], limit_s: u64) -> Result<(), BenchError> {
    std::fs::write(path, plot_svg(rows, limit_s))
        .map_err(|e| BenchError::failed(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pct: f64, mode: &'static str, converged: bool, total_ms: u64) -> Row {
        Row {
            link_pct: pct,
            target_dirty_mib_s: LINK_MIB_S * pct / 100.0,
            mode,
            converged,
            total_time_ms: total_ms,
            client_longest_gap_ms: 120.0,
            ..Default::default()
        }
    }

    #[test]
    fn the_plot_has_a_bar_per_run_and_draws_unfinished_runs_to_the_limit() {
        let rows = vec![
            row(0.0, "qemu-defaults", true, 9_000),
            row(0.0, "ferry", true, 9_500),
            row(150.0, "qemu-defaults", false, 600_000),
            row(150.0, "ferry", true, 30_000),
            row(150.0, "ferry-postcopy", true, 20_000),
        ];
        let svg = plot_svg(&rows, 600);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // Two panels, one bar per run in each, plus the background, the hatch pattern and
        // three legend swatches.
        assert_eq!(svg.matches("<rect").count(), 2 * rows.len() + 5);
        assert_eq!(
            svg.matches("url(#hatch)").count(),
            2,
            "the unfinished run, both panels"
        );
        assert!(svg.contains(">600</text>"), "drawn to the time limit");
    }

    #[test]
    fn the_link_bound_is_bytes_over_one_gigabit() {
        assert_eq!(link_bound_ms(125_000_000), 1000);
    }
}
