//! `ferry bench switchover`: what a client sees of the switch-over, side by side, in one
//! run: (a) QEMU's defaults driven over QMP as `virsh migrate --live` does, (b) Ferry's
//! previous policy (QEMU aimed at two thirds of the budget from the start, frames that
//! reach the paused source lost with it) and (c) Ferry now (the least pause the guest
//! allows, frames forwarded). A 1 GiB guest idle and dirtying 10 and 50 MiB/s, over a
//! migration link shaped to 1 Gbit/s; a client in its own namespace asks every 10 ms and
//! its TCP counters are read before and after. Writes `switchover.json` and `.svg`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_api::*;
use ferry_lab::netlab::NetLab;
use ferry_lab::probe::TcpCounters;
use serde::Serialize;

use crate::console::{bytes, millis, print_json, print_table};
use crate::converge::{
    achieved_rate, clean_up, ferry_arm, lab_facts, link_bound_ms, matrix, max_throttle,
    mismatches_on, qemu_defaults, with_facts,
};
use crate::error::{fail, BenchError, BenchResult};
use crate::net::{boot_networked_guest, start_client, start_shaped_lab};

/// The options of `ferry bench switchover`; the binary gives them from its flags.
#[derive(Debug, Clone)]
pub struct SwitchoverConfig {
    /// Guest memory, MiB.
    pub memory: u64,
    /// MiB the guest workload rewrites.
    pub workload_mem: u64,
    /// Guest dirty rates, MiB/s (0: idle).
    pub rates: Vec<f64>,
    /// Which arms to run (see [`ARMS`]).
    pub arms: Vec<String>,
    /// Downtime budget, ms (QEMU's default downtime limit, for all).
    pub downtime_limit: u64,
    /// MTU of the lab's migration network.
    pub migration_mtu: u16,
    /// Runs of every (load, arm) cell, interleaved (1..=5): goals and the plot use each
    /// cell's median, as one run's figures vary by a few per cent on a shared machine.
    pub repeat: u32,
    /// Where to write the result files.
    pub out: PathBuf,
    /// Print JSON (for scripts) instead of a table.
    pub json: bool,
}

/// The arms, in the order they run and are drawn.
pub const ARMS: [&str; 3] = ["qemu-defaults", "ferry-previous", "ferry"];

/// The goals, checked in the result (never asserted: timing is a benchmark's).
const GOAL_IDLE_PAUSE_MS: f64 = 30.0;
const GOAL_IDLE_GAP_MS: f64 = 100.0;
const GOAL_BUSY_GAP_MS: f64 = 200.0;
const GOAL_IDLE_TOTAL_OVER_LINK: f64 = 1.05;

#[derive(Serialize, Clone, Default)]
struct Row {
    dirty_mib_s: f64,
    /// What the guest actually rewrote before the migration, MiB/s.
    achieved_dirty_mib_s: f64,
    arm: &'static str,
    /// Which run of its cell (1-based, see `--repeat`).
    run: u32,
    completed: bool,
    outcome: String,
    /// QEMU's own figure of the pause.
    qemu_pause_ms: Option<u64>,
    /// The switch-over target QEMU had when it paused (Ferry's arms).
    switchover_target_ms: Option<u64>,
    /// The pause in pieces from QEMU's checkpoints (Ferry's arms).
    pause: Option<PauseParts>,
    /// What the taps saw (Ferry's arms): the gap in the guest's frames, frames forwarded.
    network: Option<NetworkReport>,
    client_longest_gap_ms: f64,
    client_p99_gap_ms: f64,
    client_requests: u64,
    client_answered: u64,
    client_error: Option<String>,
    /// The client's TCP retransmission timeouts and retransmitted segments during the run.
    tcp: TcpCounters,
    /// From the request to the VM running on the destination (Ferry: the report's parts
    /// summed; QEMU: from `migrate` to the destination running).
    total_time_ms: u64,
    parts: Option<TimeParts>,
    bytes_sent: u64,
    passes: u64,
    /// The highest vCPU throttle a pass ran at, percent.
    max_throttle_pct: u64,
    /// Bytes sent at the link rate, ms, and the total time over it.
    link_bound_ms: u64,
    total_over_link: f64,
    mismatches: Option<u64>,
}

fn options_for(arm: &str, budget: u64) -> MigrationOptions {
    let o = MigrationOptions {
        downtime_limit_ms: Some(budget),
        max_throttle_pct: Some(99),
        postcopy: Some(PostcopyPolicy::Allowed),
        ..Default::default()
    };
    match arm {
        "ferry-previous" => MigrationOptions {
            switchover: Some(SwitchoverPolicy::Budget),
            forward_frames: Some(false),
            ..o
        },
        _ => MigrationOptions {
            switchover: Some(SwitchoverPolicy::Least),
            forward_frames: Some(true),
            ..o
        },
    }
}

fn client_counters(lab: &NetLab) -> Result<TcpCounters, BenchError> {
    lab.in_ns(lab.client_ns(), TcpCounters::read)
        .map_err(fail)?
        .map_err(fail)
}

async fn one(
    lab: &NetLab,
    a: &SwitchoverConfig,
    arm: &'static str,
    vm: &str,
    ip_k: u8,
    rate: f64,
) -> Result<Row, BenchError> {
    let c = lab.client();
    eprintln!("bench: {arm}, guest dirtying {rate} MiB/s");
    let ip = boot_networked_guest(lab, vm, ip_k, a.memory, a.workload_mem, rate).await?;
    let mut row = Row {
        dirty_mib_s: rate,
        achieved_dirty_mib_s: achieved_rate(&c, vm).await,
        arm,
        ..Default::default()
    };
    let client = start_client(lab, &ip)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = client_counters(lab)?;
    let dest = lab.agent_client("b").map_err(fail)?;
    if arm == "qemu-defaults" {
        let r = qemu_defaults(lab, &c, vm, Duration::from_secs(600)).await?;
        row.completed = r.converged;
        row.outcome = r.outcome;
        row.total_time_ms = r.total_ms;
        row.qemu_pause_ms = r.downtime_ms;
        row.bytes_sent = r.bytes_sent;
        row.passes = r.passes;
        row.max_throttle_pct = r.max_throttle;
    } else {
        let run = ferry_arm(&c, vm, options_for(arm, a.downtime_limit)).await?;
        let r = run.report;
        row.completed = run.completed;
        row.outcome = run.outcome;
        row.qemu_pause_ms = row.completed.then_some(r.downtime_ms);
        row.switchover_target_ms = r.switchover_target_ms;
        row.pause = r.pause.clone();
        row.network = r.network.clone();
        row.max_throttle_pct = max_throttle(&c, run.migration.id).await?;
        row.parts = r.parts;
        row.total_time_ms = r.parts.map_or(r.total_time_ms, |p| p.total_ms());
        row.bytes_sent = r.bytes_sent;
        row.passes = r.passes;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = client.finish();
    row.tcp = client_counters(lab)?.since(&before);
    row.client_longest_gap_ms = stats.longest_gap_ms();
    row.client_p99_gap_ms = stats.percentile_gap_ms(0.99);
    row.client_requests = stats.sent;
    row.client_answered = stats.answered;
    row.client_error = stats.error.clone();
    row.link_bound_ms = link_bound_ms(row.bytes_sent);
    if row.link_bound_ms > 0 {
        row.total_over_link = row.total_time_ms as f64 / row.link_bound_ms as f64;
    }
    if row.completed {
        row.mismatches = mismatches_on(&dest, vm).await;
    }
    eprintln!(
        "bench: {arm} at {rate} MiB/s: {}, pause {:?} ms, client gap {:.0} ms, {} RTO(s), total {}",
        row.outcome,
        row.qemu_pause_ms,
        row.client_longest_gap_ms,
        row.tcp.timeouts,
        millis(row.total_time_ms)
    );
    clean_up(&c, &dest, vm).await;
    Ok(row)
}

/// The median of `value` over the rows of cell (`arm`, `rate`) (None: no such row).
fn median_of(rows: &[Row], arm: &str, rate: f64, value: fn(&Row) -> f64) -> Option<f64> {
    let mut v: Vec<f64> = rows
        .iter()
        .filter(|r| r.arm == arm && r.dirty_mib_s == rate)
        .map(value)
        .collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The loads in the order first given, each once.
fn distinct_rates(rows: &[Row]) -> Vec<f64> {
    let mut rates: Vec<f64> = Vec::new();
    for r in rows {
        if !rates.contains(&r.dirty_mib_s) {
            rates.push(r.dirty_mib_s);
        }
    }
    rates
}

fn pause_of(r: &Row) -> f64 {
    r.qemu_pause_ms.unwrap_or(0) as f64
}
fn gap_of(r: &Row) -> f64 {
    r.client_longest_gap_ms
}
fn ratio_of(r: &Row) -> f64 {
    r.total_over_link
}

/// Each cell's medians (what the goals and the plot use).
fn medians(rows: &[Row]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for rate in distinct_rates(rows) {
        for arm in ARMS {
            let m = |f| median_of(rows, arm, rate, f);
            if m(gap_of).is_none() {
                continue;
            }
            out.push(serde_json::json!({
                "arm": arm,
                "dirty_mib_s": rate,
                "runs": rows.iter().filter(|r| r.arm == arm && r.dirty_mib_s == rate).count(),
                "qemu_pause_ms": m(pause_of),
                "client_longest_gap_ms": m(gap_of),
                "client_p99_gap_ms": m(|r| r.client_p99_gap_ms),
                "tcp_timeouts": m(|r| r.tcp.timeouts as f64),
                "total_over_link": m(ratio_of),
            }));
        }
    }
    out
}

/// Each goal of the issue, against the median of the `ferry` arm's runs.
fn goals(rows: &[Row]) -> serde_json::Value {
    let ferry = |rate: f64, f| median_of(rows, "ferry", rate, f);
    let met = |v: Option<f64>, goal: f64| serde_json::json!({"value": v, "goal": goal, "met": v.is_some_and(|v| v <= goal)});
    let busiest = rows
        .iter()
        .filter(|r| r.arm == "ferry")
        .map(|r| r.dirty_mib_s)
        .fold(0.0, f64::max);
    serde_json::json!({
        "idle_pause_ms": met(ferry(0.0, pause_of), GOAL_IDLE_PAUSE_MS),
        "idle_client_gap_ms": met(ferry(0.0, gap_of), GOAL_IDLE_GAP_MS),
        "busiest_client_gap_ms": met(ferry(busiest, gap_of), GOAL_BUSY_GAP_MS),
        "busiest_dirty_mib_s": busiest,
        "idle_total_over_link": met(ferry(0.0, ratio_of), GOAL_IDLE_TOTAL_OVER_LINK),
        "of": "the median of the ferry arm's runs",
    })
}

pub async fn switchover(a: SwitchoverConfig) -> BenchResult {
    // Each guest gets its own address on the VM network, from .100 up.
    let guests = a.rates.len() * a.repeat.max(1) as usize * ARMS.len();
    if guests > 150 {
        return Err(BenchError::failed(format!(
            "{} rates x {} runs x {} arms is {guests} guests; at most 150",
            a.rates.len(),
            a.repeat,
            ARMS.len()
        )));
    }
    let lab = start_shaped_lab(vec!["--aux-qmp".to_string()], true).await?;
    lab.set_migration_mtu(a.migration_mtu).map_err(fail)?;
    let loads: Vec<f64> = (0..a.repeat.max(1))
        .flat_map(|_| a.rates.iter().copied())
        .collect();
    let mut rows: Vec<Row> = Vec::new();
    for c in matrix("sw", &loads, &ARMS, &a.arms) {
        let mut row = one(&lab, &a, c.arm, &c.vm, c.ip_k, c.load).await?;
        row.run = 1 + rows
            .iter()
            .filter(|r| r.arm == row.arm && r.dirty_mib_s == row.dirty_mib_s)
            .count() as u32;
        rows.push(row);
    }
    drop(lab);
    let facts = lab_facts("switchover", a.memory, a.workload_mem, a.downtime_limit);
    let doc = with_facts(
        facts,
        serde_json::json!({
            "qemu-defaults": "destination QEMU -incoming (Ferry agent), then one `migrate` on the \
                source's QMP: QEMU 10 defaults (downtime-limit 300 ms, max-bandwidth 128 MiB/s)",
            "ferry-previous": "ferry vm migrate --switchover budget --no-frame-forwarding (QEMU \
                aims at two thirds of the budget from the start, no bound on the sockets' unsent \
                bytes, frames reaching the paused source lost), --max-throttle 99, post-copy allowed",
            "ferry": "ferry vm migrate (--switchover least: from 20 ms up only when pre-copy \
                stops shrinking; unsent bytes bounded near the end; frames forwarded), --max-throttle \
                99, post-copy allowed. Both Ferry arms run today's convergence controller: the \
                throttle held to 90 % (its sleeps within a third of the budget) and given up \
                for post-copy when a step does not slow the guest's writes",
            "migration_mtu": a.migration_mtu,
            "client": "one TCP connection from a client namespace, one request every 10 ms; \
                TCP counters (TCPTimeouts, TCPLossProbes, RetransSegs) of its namespace before and after",
            "total_time": "Ferry: the report's parts (checks + prepare + stream + switch); \
                QEMU: from `migrate` to the destination running (no checks)",
            "repeat": a.repeat.max(1),
            "goals": goals(&rows),
            "medians": medians(&rows),
            "rows": rows,
        }),
    );
    let file = crate::results::write_result(&a.out, "switchover", &doc)?;
    let svg = a.out.join("switchover.svg");
    write_plot(&svg, &rows)?;
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
    let opt = |v: Option<u64>| v.map(millis).unwrap_or_else(|| "-".into());
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                format!("{:.0}/{:.0}", r.dirty_mib_s, r.achieved_dirty_mib_s),
                r.arm.to_string(),
                if r.completed { "yes" } else { "NO" }.to_string(),
                opt(r.qemu_pause_ms),
                opt(r.switchover_target_ms),
                format!("{:.0} ms", r.client_longest_gap_ms),
                r.network
                    .as_ref()
                    .and_then(|n| n.client_gap_ms)
                    .map(millis)
                    .unwrap_or_else(|| "-".into()),
                format!("{:.0} ms", r.client_p99_gap_ms),
                format!(
                    "{}/{}/{}",
                    r.tcp.timeouts, r.tcp.loss_probes, r.tcp.retransmitted_segments
                ),
                format!("{}/{}", r.client_answered, r.client_requests),
                millis(r.total_time_ms),
                bytes(r.bytes_sent),
                format!("{}%", r.max_throttle_pct),
                format!("{:.2}", r.total_over_link),
                r.mismatches
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print_table(
        &[
            "MIB/S SET/GOT",
            "ARM",
            "DONE",
            "PAUSE",
            "TARGET",
            "CLIENT GAP",
            "TAP GAP",
            "P99 GAP",
            "RTO/TLP/RETRANS",
            "ANSWERED",
            "TOTAL",
            "SENT",
            "THROTTLE",
            "TOTAL/LINK",
            "MISMATCH",
        ],
        &table,
    );
    for r in rows
        .iter()
        .filter(|r| r.parts.is_some() || r.pause.is_some())
    {
        println!(
            "  {} at {} MiB/s: {}; pause {}; {}",
            r.arm,
            r.dirty_mib_s,
            r.parts.map(|p| p.summary()).unwrap_or_default(),
            r.pause.as_ref().map(|p| p.summary()).unwrap_or_default(),
            r.network.as_ref().map(|n| n.summary()).unwrap_or_default()
        );
    }
}

const COLOURS: [&str; 3] = ["#c44e52", "#8c8c8c", "#4c72b0"];

/// Three grouped bar charts (QEMU's pause, the client's longest gap, total time over the
/// link bound), one group per dirty rate, one bar per arm, with the goal drawn.
fn plot_svg(rows: &[Row]) -> String {
    let rates = distinct_rates(rows);
    type Value = fn(&Row) -> f64;
    let panels: [(&str, Value, Option<f64>); 3] = [
        ("QEMU's pause, ms", pause_of, Some(GOAL_IDLE_PAUSE_MS)),
        ("client's longest gap, ms", gap_of, Some(GOAL_IDLE_GAP_MS)),
        (
            "total time / (bytes / link)",
            ratio_of,
            Some(GOAL_IDLE_TOTAL_OVER_LINK),
        ),
    ];
    let (w, h, pad) = (340.0, 280.0, 45.0);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        3.0 * w,
        h + 50.0
    );
    for (k, (title, value, goal)) in panels.iter().enumerate() {
        let x0 = k as f64 * w + pad;
        let (pw, ph) = (w - 1.5 * pad, h - 2.0 * pad);
        let max = rows
            .iter()
            .map(value)
            .chain(goal.iter().copied())
            .fold(1e-9, f64::max)
            * 1.1;
        let y = |v: f64| pad + ph - v / max * ph;
        out.push_str(&format!(
            "<text x=\"{x0}\" y=\"20\" font-weight=\"bold\">{title}</text>\n\
             <line x1=\"{x0}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{max:.1}</text>\n",
            pad + ph,
            x0 + pw,
            pad + ph,
            x0 - 4.0,
            pad + 4.0
        ));
        if let Some(g) = goal {
            out.push_str(&format!(
                "<line x1=\"{x0}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"green\" \
                 stroke-dasharray=\"4 3\"/><text x=\"{1}\" y=\"{2}\" fill=\"green\" \
                 text-anchor=\"end\">goal {g}</text>\n",
                y(*g),
                x0 + pw,
                y(*g) - 3.0
            ));
        }
        let group = pw / rates.len().max(1) as f64;
        let bar = group / (ARMS.len() as f64 + 1.0);
        for (i, rate) in rates.iter().enumerate() {
            let gx = x0 + i as f64 * group;
            for (j, arm) in ARMS.iter().enumerate() {
                let Some(v) = median_of(rows, arm, *rate, *value) else {
                    continue;
                };
                out.push_str(&format!(
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>\n",
                    gx + (j as f64 + 0.5) * bar,
                    y(v),
                    bar * 0.9,
                    pad + ph - y(v),
                    COLOURS[j]
                ));
            }
            out.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
                gx + group / 2.0,
                pad + ph + 14.0,
                if *rate == 0.0 {
                    "idle".to_string()
                } else {
                    format!("{rate} MiB/s")
                }
            ));
        }
    }
    for (j, arm) in ARMS.iter().enumerate() {
        let x = pad + j as f64 * 150.0;
        out.push_str(&format!(
            "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{}\">{arm}</text>\n",
            h + 25.0,
            COLOURS[j],
            x + 14.0,
            h + 34.0
        ));
    }
    out.push_str("</svg>\n");
    out
}

fn write_plot(path: &Path, rows: &[Row]) -> Result<(), BenchError> {
    std::fs::write(path, plot_svg(rows))
        .map_err(|e| BenchError::failed(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(arm: &'static str, rate: f64, pause: u64, gap: f64, ratio: f64) -> Row {
        Row {
            arm,
            dirty_mib_s: rate,
            completed: true,
            qemu_pause_ms: Some(pause),
            client_longest_gap_ms: gap,
            total_over_link: ratio,
            ..Default::default()
        }
    }

    #[test]
    fn goals_are_judged_on_the_ferry_arm() {
        let rows = [
            row("qemu-defaults", 0.0, 150, 250.0, 1.2),
            row("ferry", 0.0, 20, 60.0, 1.1),
            row("ferry", 50.0, 40, 250.0, 1.3),
        ];
        let g = goals(&rows);
        assert_eq!(g["idle_pause_ms"]["met"], true);
        assert_eq!(g["idle_client_gap_ms"]["met"], true);
        assert_eq!(g["busiest_client_gap_ms"]["met"], false);
        assert_eq!(g["busiest_dirty_mib_s"], 50.0);
        assert_eq!(g["idle_total_over_link"]["met"], false);
    }

    #[test]
    fn goals_and_bars_take_the_median_of_a_cells_runs() {
        let rows = [
            row("ferry", 0.0, 20, 60.0, 1.04),
            row("ferry", 0.0, 90, 150.0, 1.09),
            row("ferry", 0.0, 25, 70.0, 1.05),
        ];
        let g = goals(&rows);
        assert_eq!(g["idle_pause_ms"]["value"], 25.0);
        assert_eq!(g["idle_client_gap_ms"]["value"], 70.0);
        assert_eq!(g["idle_client_gap_ms"]["met"], true);
        assert_eq!(g["idle_total_over_link"]["value"], 1.05);
        assert_eq!(median_of(&rows[..2], "ferry", 0.0, gap_of), Some(105.0));
        assert_eq!(median_of(&rows, "qemu-defaults", 0.0, gap_of), None);
        let m = medians(&rows);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0]["runs"], 3);
        // One bar per cell, not per run.
        let svg = plot_svg(&rows);
        assert_eq!(svg.matches("<rect x=").count(), 3 + ARMS.len());
    }

    #[test]
    fn the_plot_has_a_bar_per_row_and_the_goals() {
        let rows = [
            row("qemu-defaults", 0.0, 150, 250.0, 1.2),
            row("ferry", 0.0, 20, 60.0, 1.1),
        ];
        let svg = plot_svg(&rows);
        assert_eq!(svg.matches("<rect x=").count(), 3 * rows.len() + ARMS.len());
        assert_eq!(svg.matches("goal ").count(), 3);
    }

    #[test]
    fn the_matrix_runs_every_load_for_the_chosen_arms_with_distinct_guests() {
        let chosen = vec!["ferry".to_string(), "qemu-defaults".to_string()];
        let cells = matrix("sw", &[0.0, 50.0], &ARMS, &chosen);
        let got: Vec<(f64, &str, &str, u8)> = cells
            .iter()
            .map(|c| (c.load, c.arm, c.vm.as_str(), c.ip_k))
            .collect();
        assert_eq!(
            got,
            vec![
                (0.0, "qemu-defaults", "sw0a0", 100),
                (0.0, "ferry", "sw0a2", 102),
                (50.0, "qemu-defaults", "sw1a0", 103),
                (50.0, "ferry", "sw1a2", 105),
            ]
        );
    }

    #[test]
    fn the_previous_policy_is_the_budget_one() {
        assert_eq!(
            options_for("ferry-previous", 300).switchover,
            Some(SwitchoverPolicy::Budget)
        );
        assert_eq!(
            options_for("ferry", 300).switchover,
            Some(SwitchoverPolicy::Least)
        );
        assert_eq!(
            options_for("ferry-previous", 300).forward_frames,
            Some(false)
        );
        assert_eq!(options_for("ferry", 300).forward_frames, Some(true));
    }
}
