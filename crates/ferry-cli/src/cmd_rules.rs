//! `ferry rule ...` and the placement explanation of `vm create` / `vm migrate --explain`.

use ferry_api::client::ServerClient;
use ferry_api::*;

use crate::cli::RuleCmd;
use crate::connection::{client, ConnOpts};
use crate::exit::{CliError, CliResult};
use crate::output::{print_json, print_table};

pub async fn rule(conn: &ConnOpts, cmd: RuleCmd) -> CliResult {
    let c = client(conn)?;
    match cmd {
        RuleCmd::Add {
            name,
            vms,
            affinity,
            anti_affinity,
            on_hosts,
            off_hosts,
            should,
            json,
        } => {
            let kind =
                match (
                    affinity,
                    anti_affinity,
                    on_hosts.is_empty(),
                    off_hosts.is_empty(),
                ) {
                    (true, false, true, true) => RuleKind::Affinity { vms },
                    (false, true, true, true) => RuleKind::AntiAffinity { vms },
                    (false, false, false, true) => RuleKind::VmHost {
                        vms,
                        hosts: on_hosts,
                        on: true,
                    },
                    (false, false, true, false) => RuleKind::VmHost {
                        vms,
                        hosts: off_hosts,
                        on: false,
                    },
                    _ => return Err(CliError::refused(
                        "give exactly one of --affinity, --anti-affinity, --on-hosts, --off-hosts",
                    )),
                };
            let rule = Rule {
                name,
                strength: if should {
                    Strength::Should
                } else {
                    Strength::Must
                },
                kind,
            };
            rule.validate().map_err(|e| CliError::refused(e.message))?;
            let r = c.add_rule(&rule).await?;
            if json.json {
                return print_json(&r);
            }
            println!("rule {} added: {}", r.name, describe(&r));
            Ok(())
        }
        RuleCmd::List(json) => {
            let rules = c.rules().await?;
            if json.json {
                return print_json(&rules);
            }
            let rows: Vec<Vec<String>> = rules
                .iter()
                .map(|r| vec![r.name.clone(), describe(r)])
                .collect();
            print_table(&["NAME", "RULE"], &rows);
            Ok(())
        }
        RuleCmd::Delete { name, json } => {
            let v = c.delete_rule(&name).await?;
            if json.json {
                return print_json(&v);
            }
            println!("rule {name} deleted");
            Ok(())
        }
    }
}

fn describe(r: &Rule) -> String {
    let how = match r.strength {
        Strength::Must => "must",
        Strength::Should => "should",
    };
    match &r.kind {
        RuleKind::Affinity { vms } => format!("{} {how} run together", vms.join(", ")),
        RuleKind::AntiAffinity { vms } => format!("{} {how} run apart", vms.join(", ")),
        RuleKind::VmHost {
            vms,
            hosts,
            on: true,
        } => {
            format!("{} {how} run only on {}", vms.join(", "), hosts.join(", "))
        }
        RuleKind::VmHost {
            vms,
            hosts,
            on: false,
        } => {
            format!("{} {how} never run on {}", vms.join(", "), hosts.join(", "))
        }
    }
}

/// Prints where `req` would go: every candidate with its score and reasons.
pub async fn explain(c: &ServerClient, req: &PlacementRequest, json: bool) -> CliResult {
    let r = c.placement(req).await?;
    if json {
        return print_json(&r);
    }
    print_report(&r);
    Ok(())
}

pub fn print_report(r: &PlacementReport) {
    let rows: Vec<Vec<String>> = r
        .candidates
        .iter()
        .map(|c| {
            let mark = if Some(&c.host) == r.chosen.as_ref() {
                "chosen"
            } else if Some(&c.host) == r.runner_up.as_ref() {
                "runner-up"
            } else if c.score.is_some() {
                "lower score"
            } else {
                "cannot"
            };
            vec![
                c.host.clone(),
                c.score
                    .map(|s| format!("{s:.3}"))
                    .unwrap_or_else(|| "-".into()),
                mark.to_string(),
                c.reasons.join("; "),
            ]
        })
        .collect();
    println!("placement of VM {}:", r.vm);
    print_table(&["HOST", "SCORE", "", "WHY"], &rows);
}
