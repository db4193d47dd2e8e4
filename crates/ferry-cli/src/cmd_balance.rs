//! `ferry cluster balance` (settings, the plan, a run now) and `ferry recommendation
//! list|apply|dismiss`.

use clap::{Args, Subcommand, ValueEnum};
use ferry_api::*;

use crate::cli::JsonFlag;
use crate::cmd_cluster::client;
use crate::exit::{CliError, CliResult};
use crate::output::{ago, print_json, print_table};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModeArg {
    Off,
    Recommend,
    Automatic,
}

impl From<ModeArg> for BalanceMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Off => BalanceMode::Off,
            ModeArg::Recommend => BalanceMode::Recommend,
            ModeArg::Automatic => BalanceMode::Automatic,
        }
    }
}

/// Load balancing, DRS-like: the cluster's imbalance is the spread of its hosts' load
/// (max of CPU and memory share, from the VMs' measured use); a plan moves VMs from the
/// most to the least loaded hosts when the gain beats the migration's cost, never
/// breaking a rule or a limit and never moving a VM again within its minimum stay.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    ferry cluster balance                       # settings and the imbalance now\n  \
    ferry cluster balance --dry-run             # the plan: load before/after, each move's cost\n  \
    ferry cluster balance --dry-run --level 5   # what an aggressive level would do\n  \
    ferry cluster balance --mode recommend --level 3\n  \
    ferry cluster balance --mode automatic --interval 300 --min-stay 30\n  \
    ferry cluster balance --now                 # one run now, in the configured mode\n  \
    ferry recommendation list")]
pub struct BalanceArgs {
    /// off: nothing runs by itself; recommend: runs list recommendations to apply one by
    /// one; automatic: runs send their moves through the migration queue.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// 1: only a large imbalance (0.20), few moves; 5: aggressive (0.02).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub level: Option<u8>,
    /// Minutes a VM stays put after it moved.
    #[arg(long, value_name = "MIN")]
    pub min_stay: Option<u32>,
    /// Seconds between runs (recommend and automatic modes).
    #[arg(long, value_name = "S")]
    pub interval: Option<u32>,
    /// The most moves one run proposes.
    #[arg(long, value_name = "N")]
    pub max_moves: Option<u32>,
    /// Print the plan now (with --level: at that level) and move nothing.
    #[arg(long, conflicts_with_all = ["mode", "min_stay", "interval", "max_moves", "now"])]
    pub dry_run: bool,
    /// Run once now in the configured mode (after applying any settings given).
    #[arg(long)]
    pub now: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Subcommand, Debug)]
pub enum RecommendationCmd {
    /// The balancer's recommendations, newest first (open ones can be applied).
    List(JsonFlag),
    /// Request a recommended migration (through the queue, with the usual checks).
    #[command(after_help = "Example:\n  ferry recommendation apply 6f1c...")]
    Apply {
        id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Set a recommendation aside.
    Dismiss {
        id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
}

pub async fn balance(server: &crate::connection::ConnOpts, a: BalanceArgs) -> CliResult {
    let c = client(server)?;
    if a.dry_run {
        let plan = c
            .balance_plan(&BalancePlanRequest { level: a.level })
            .await?;
        if a.json.json {
            return print_json(&plan);
        }
        print_plan(&plan);
        return Ok(());
    }
    let update = BalanceSettingsUpdate {
        mode: a.mode.map(Into::into),
        level: a.level,
        min_stay_minutes: a.min_stay,
        interval_s: a.interval,
        max_moves: a.max_moves,
    };
    let settings = if update == BalanceSettingsUpdate::default() {
        c.balance().await?
    } else {
        c.set_balance(&update).await?
    };
    if a.now {
        let run = c.balance_run(None).await?;
        if a.json.json {
            return print_json(&run);
        }
        print_plan(&run.plan);
        for r in &run.recommendations {
            println!(
                "recommended {}: {} {} -> {} (`ferry recommendation apply {}`)",
                short(r.id),
                r.planned.vm,
                r.planned.from,
                r.planned.to,
                r.id
            );
        }
        for m in &run.migrations {
            println!("migration {m} requested (`ferry migration show {m}`)");
        }
        for r in &run.refused {
            println!("not requested: {r}");
        }
        return if run.refused.is_empty() {
            Ok(())
        } else {
            Err(CliError::failed(format!(
                "{} move(s) could not be requested",
                run.refused.len()
            )))
        };
    }
    if a.json.json {
        return print_json(&settings);
    }
    println!(
        "balancer   {} at level {} (every {} s, at most {} moves, a VM stays {} min after it moved)",
        settings.mode,
        settings.level,
        settings.interval_s,
        settings.max_moves,
        settings.min_stay_minutes
    );
    let plan = c.balance_plan(&BalancePlanRequest::default()).await?;
    println!(
        "imbalance  {:.3} (level {} acts above {:.2}); `--dry-run` shows the plan",
        plan.imbalance_before, plan.settings.level, plan.threshold
    );
    Ok(())
}

fn short(id: uuid::Uuid) -> String {
    id.to_string()[..8].to_string()
}

fn print_plan(p: &BalancePlanView) {
    println!(
        "imbalance {:.3} -> {:.3} (level {}: acts above {:.2}); {}",
        p.imbalance_before, p.imbalance_after, p.settings.level, p.threshold, p.reason
    );
    let rows: Vec<Vec<String>> = p
        .hosts
        .iter()
        .map(|h| {
            vec![
                h.host.clone(),
                format!("{:.2}", h.load_before),
                format!("{:.2}", h.load_after),
                format!("{:.2} / {}", h.cpu_used, h.cpus),
                format!("{} / {} MiB", h.memory_used_mib, h.memory_capacity_mib),
                h.unavailable.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &["HOST", "LOAD", "AFTER", "CPU USED", "MEMORY", "NOTE"],
        &rows,
    );
    if p.moves.is_empty() {
        println!("no moves");
    } else {
        let rows: Vec<Vec<String>> = p
            .moves
            .iter()
            .map(|m| {
                vec![
                    m.vm.clone(),
                    m.from.clone(),
                    m.to.clone(),
                    format!("-{:.3}", m.gain),
                    format!("{:.0} s", m.cost_s),
                    format!("{} MiB", m.memory_mib),
                    format!("{:.1} MiB/s", m.dirty_rate_mib_s),
                ]
            })
            .collect();
        print_table(
            &["VM", "FROM", "TO", "IMBALANCE", "COST", "MEMORY", "DIRTY"],
            &rows,
        );
    }
    for l in &p.left_out {
        println!("left out: {l}");
    }
}

pub async fn recommendation(
    server: &crate::connection::ConnOpts,
    cmd: RecommendationCmd,
) -> CliResult {
    let c = client(server)?;
    let parse = |id: &str| {
        uuid::Uuid::parse_str(id)
            .map_err(|_| CliError::refused(format!("'{id}' is not a recommendation id")))
    };
    match cmd {
        RecommendationCmd::List(json) => {
            let list = c.recommendations().await?;
            if json.json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|r| {
                    vec![
                        r.id.to_string(),
                        r.state.to_string(),
                        r.planned.vm.clone(),
                        format!("{} -> {}", r.planned.from, r.planned.to),
                        format!("-{:.3}", r.planned.gain),
                        format!("{:.0} s", r.planned.cost_s),
                        ago(r.created_at),
                    ]
                })
                .collect();
            print_table(
                &["ID", "STATE", "VM", "MOVE", "IMBALANCE", "COST", "MADE"],
                &rows,
            );
            Ok(())
        }
        RecommendationCmd::Apply { id, json } => {
            let m = c.apply_recommendation(parse(&id)?).await?;
            if json.json {
                return print_json(&m);
            }
            println!(
                "migration {} of VM {} from {} to {}: {}",
                m.id, m.vm, m.source, m.destination, m.phase
            );
            Ok(())
        }
        RecommendationCmd::Dismiss { id, json } => {
            let r = c.dismiss_recommendation(parse(&id)?).await?;
            if json.json {
                return print_json(&r);
            }
            println!("recommendation {} dismissed", r.id);
            Ok(())
        }
    }
}
