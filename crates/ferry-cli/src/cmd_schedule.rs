//! `ferry schedule add|list|remove`: operations the server runs at a time or on a cron
//! expression (UTC), each run recorded as an operation with its outcome.

use chrono::{DateTime, SecondsFormat, Utc};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use ferry_api::*;

use crate::cli::JsonFlag;
use crate::cmd_cluster::client;
use crate::exit::CliResult;
use crate::output::{print_json, print_table};

const MISSED_HELP: &str = "Missed runs: fire times that pass while the server is down are \
    dealt with when it starts again, by the schedule's --missed rule. run-once (the \
    default): the schedule runs once at start, however many fire times were missed. skip: \
    it does not run for them and waits for its next fire time (a one-time --at schedule \
    whose time passed is then done). Each run is recorded before it acts, so a restart \
    never runs one fire time twice.";

#[derive(Subcommand, Debug)]
pub enum ScheduleCmd {
    /// Add a schedule: at a time (--at) or on a cron expression (--cron, UTC), do one
    /// thing: a migration, a maintenance entry or exit, or a balancing run. It acts as
    /// `schedule:NAME` through the same checks as the commands themselves; each run is an
    /// operation (`ferry operation show ID`) whose story is `ferry events --operation ID`.
    #[command(
        group(ArgGroup::new("when").required(true).args(["at", "cron"])),
        group(ArgGroup::new("task").required(true)
            .args(["migrate", "maintenance_enter", "maintenance_exit", "balance"])),
        after_help = concat!(
            "Examples:\n  ",
            "ferry schedule add move-web --at 2026-12-06T02:00:00Z --migrate web1 --to b\n  ",
            "ferry schedule add move-db --at 2026-12-06T03:00:00+01:00 --migrate db1   # placement picks\n  ",
            "ferry schedule add sunday-a --cron \"0 2 * * SUN\" --maintenance-enter a\n  ",
            "ferry schedule add monday-a --cron \"0 6 * * MON\" --maintenance-exit a --missed skip\n  ",
            "ferry schedule add nightly --cron \"30 1 * * *\" --balance\n\n",
            "Cron: 5 fields, minute hour day-of-month month day-of-week, read in UTC ",
            "(`0 2 * * SUN` is Sundays at 02:00 UTC); names (SUN, JAN) and @daily, @weekly, ",
            "@hourly work.\n\n",
            "Missed runs: fire times that pass while the server is down are dealt with when it ",
            "starts, by --missed. run-once (default): the schedule runs once at start, however ",
            "many fire times were missed. skip: it waits for its next fire time (a one-time --at ",
            "schedule is then done). A run is recorded before it acts: a restart never runs one ",
            "fire time twice."
        )
    )]
    Add(Box<AddArgs>),
    /// Every schedule: when it fires next (UTC), its latest run and that run's outcome.
    #[command(after_help = "Examples:\n  ferry schedule list\n  ferry schedule list --json")]
    List(JsonFlag),
    /// Remove a schedule: it fires no more (a run already started goes on); its runs stay
    /// on the record.
    #[command(after_help = "Example:\n  ferry schedule remove sunday-a")]
    Remove {
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// The schedule's name (lowercase letters, digits, '-', '_', '.').
    pub name: String,
    /// Once, at this time (RFC 3339, e.g. 2026-12-06T02:00:00Z); must be in the future.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub at: Option<DateTime<Utc>>,
    /// On a 5-field cron expression read in UTC, e.g. "0 2 * * SUN".
    #[arg(long, value_name = "EXPR")]
    pub cron: Option<String>,
    /// Live-migrate this VM (to --to, or where placement puts it).
    #[arg(long, value_name = "VM")]
    pub migrate: Option<String>,
    /// The migration's destination (without it, placement picks when it fires).
    #[arg(
        long,
        value_name = "HOST",
        requires = "migrate",
        conflicts_with_all = ["maintenance_enter", "maintenance_exit", "balance"]
    )]
    pub to: Option<String>,
    /// Put this host into maintenance and evacuate it.
    #[arg(long, value_name = "HOST")]
    pub maintenance_enter: Option<String>,
    /// Return this host to service.
    #[arg(long, value_name = "HOST")]
    pub maintenance_exit: Option<String>,
    /// One balancing run in the balancer's configured mode (`ferry cluster balance`).
    #[arg(long)]
    pub balance: bool,
    /// What happens to fire times missed while the server is down.
    #[arg(long, value_enum, default_value_t = MissedArg::RunOnce, long_help = MISSED_HELP)]
    pub missed: MissedArg,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum MissedArg {
    /// Run once at start, however many fire times were missed.
    RunOnce,
    /// Skip them; wait for the next fire time.
    Skip,
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!("'{s}' is not an RFC 3339 time ({e}); write e.g. 2026-12-06T02:00:00Z")
        })
}

fn utc(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// "in 5 s", "in 3 h", "2 min ago".
fn relative(t: &DateTime<Utc>) -> String {
    let d = t.signed_duration_since(Utc::now()).num_seconds();
    let (n, future) = (d.unsigned_abs(), d >= 0);
    let text = match n {
        0..=89 => format!("{n} s"),
        90..=5399 => format!("{} min", n / 60),
        5400..=172_799 => format!("{} h", n / 3600),
        _ => format!("{} days", n / 86_400),
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

impl AddArgs {
    fn request(&self) -> ScheduleRequest {
        let when = match (&self.at, &self.cron) {
            (Some(t), _) => ScheduleWhen::At(*t),
            (None, Some(c)) => ScheduleWhen::Cron(c.clone()),
            // clap requires one of them.
            (None, None) => ScheduleWhen::Cron(String::new()),
        };
        let task = if let Some(vm) = &self.migrate {
            ScheduleTask::Migrate {
                vm: vm.clone(),
                to: self.to.clone(),
            }
        } else if let Some(host) = &self.maintenance_enter {
            ScheduleTask::MaintenanceEnter { host: host.clone() }
        } else if let Some(host) = &self.maintenance_exit {
            ScheduleTask::MaintenanceExit { host: host.clone() }
        } else {
            ScheduleTask::Balance
        };
        ScheduleRequest {
            name: self.name.clone(),
            when,
            task,
            missed: match self.missed {
                MissedArg::RunOnce => MissedRule::RunOnce,
                MissedArg::Skip => MissedRule::Skip,
            },
        }
    }
}

pub async fn run(server: &crate::connection::ConnOpts, cmd: ScheduleCmd) -> CliResult {
    let c = client(server)?;
    match cmd {
        ScheduleCmd::Add(a) => {
            let s = c.add_schedule(&a.request()).await?;
            if a.json.json {
                return print_json(&s);
            }
            println!(
                "schedule {} added: {}, {}; next fire {}; missed runs: {}",
                s.name,
                s.task,
                s.when,
                s.next_fire
                    .map(|t| format!("{} ({})", utc(&t), relative(&t)))
                    .unwrap_or_else(|| "none".into()),
                s.missed
            );
            Ok(())
        }
        ScheduleCmd::List(json) => {
            let list = c.schedules().await?;
            if json.json {
                return print_json(&list);
            }
            print_schedules(&list);
            Ok(())
        }
        ScheduleCmd::Remove { name, json } => {
            let answer = c.remove_schedule(&name).await?;
            if json.json {
                return print_json(&answer);
            }
            println!(
                "schedule {name} removed; its runs stay on the record (`ferry operation list`)"
            );
            Ok(())
        }
    }
}

fn print_schedules(list: &[Schedule]) {
    if list.is_empty() {
        println!("no schedules (`ferry schedule add --help`)");
        return;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let next = match s.next_fire {
                Some(t) => format!("{} ({})", utc(&t), relative(&t)),
                None => "done".into(),
            };
            let (last, run) = match &s.last_run {
                Some(r) => (
                    format!("{} {}", utc(&r.fire_at), r.state),
                    r.operation.to_string(),
                ),
                None => ("-".into(), "-".into()),
            };
            vec![
                s.name.clone(),
                s.when.to_string(),
                s.task.to_string(),
                s.missed.to_string(),
                next,
                last,
                run,
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "WHEN",
            "TASK",
            "MISSED",
            "NEXT (UTC)",
            "LAST RUN",
            "OPERATION",
        ],
        &rows,
    );
    for s in list {
        if let Some(outcome) = s.last_run.as_ref().and_then(|r| r.outcome.as_ref()) {
            println!("{}: {outcome}", s.name);
        }
        if let Some(k) = &s.skipped {
            println!(
                "{}: skipped {} fire time(s) missed while the server was down (latest {})",
                s.name,
                k.count,
                utc(&k.fire_at)
            );
        }
    }
}

/// `ferry operation show` for a scheduled run.
pub fn print_run(op: &Operation) {
    let Some(run) = &op.run else {
        return;
    };
    println!(
        "scheduled run {} of schedule {}: {} (for {}{}, by {})",
        op.id,
        run.schedule,
        op.state,
        utc(&run.fire_at),
        if run.missed > 0 {
            format!(
                ", run once at server start for {} missed fire time(s)",
                run.missed
            )
        } else {
            String::new()
        },
        op.actor
    );
    println!("task:     {}", run.task);
    for m in &run.migrations {
        println!("migration {m} (`ferry migration show {m}`)");
    }
    for o in &run.operations {
        println!("operation {o} (`ferry operation show {o}`)");
    }
    for r in &run.recommendations {
        println!("recommendation {r} (`ferry recommendation list`)");
    }
    if let Some(o) = &run.outcome {
        println!("outcome:  {o}");
    }
    println!("story:    ferry events --operation {}", op.id);
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use crate::cli::{Cli, Command};

    fn add(args: &[&str]) -> Result<ferry_api::ScheduleRequest, String> {
        let mut all = vec!["ferry", "schedule", "add"];
        all.extend(args);
        match Cli::try_parse_from(all).map_err(|e| e.to_string())?.command {
            Command::Schedule(super::ScheduleCmd::Add(a)) => Ok(a.request()),
            other => Err(format!("parsed as {other:?}")),
        }
    }

    #[test]
    fn the_options_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn add_builds_the_request_and_refuses_what_does_not_fit() {
        use ferry_api::*;
        let r = add(&["sun", "--cron", "0 2 * * SUN", "--maintenance-enter", "a"]).unwrap();
        assert_eq!(r.when, ScheduleWhen::Cron("0 2 * * SUN".into()));
        assert_eq!(r.task, ScheduleTask::MaintenanceEnter { host: "a".into() });
        assert_eq!(r.missed, MissedRule::RunOnce);
        let r = add(&[
            "m",
            "--at",
            "2026-12-06T03:00:00+01:00",
            "--migrate",
            "web1",
            "--missed",
            "skip",
        ])
        .unwrap();
        assert_eq!(
            r.when,
            ScheduleWhen::At("2026-12-06T02:00:00Z".parse().unwrap())
        );
        assert_eq!(
            r.task,
            ScheduleTask::Migrate {
                vm: "web1".into(),
                to: None
            }
        );
        assert_eq!(r.missed, MissedRule::Skip);
        assert_eq!(
            add(&["b", "--cron", "@daily", "--balance"]).unwrap().task,
            ScheduleTask::Balance
        );
        for bad in [
            &["x", "--balance"][..],
            &["x", "--cron", "* * * * *"],
            &[
                "x",
                "--at",
                "2026-12-06T02:00:00Z",
                "--cron",
                "* * * * *",
                "--balance",
            ],
            &["x", "--at", "Sunday", "--balance"],
            &[
                "x",
                "--cron",
                "* * * * *",
                "--balance",
                "--maintenance-exit",
                "a",
            ],
            &["x", "--cron", "* * * * *", "--to", "b", "--balance"],
            &[
                "x",
                "--cron",
                "* * * * *",
                "--migrate",
                "v",
                "--missed",
                "later",
            ],
        ] {
            assert!(add(bad).is_err(), "{bad:?} parsed");
        }
    }
}
