//! Load and balancing on a three-host lab with real guests: the agents' load shows in
//! `host show` / `vm show`; a cluster with every guest on one host gets a plan (dry run:
//! nothing moves), recommendations that can be dismissed, and in automatic mode the
//! moves run through the queue: the imbalance drops, every guest runs clean, a `must`
//! rule holds, and a VM that just moved is not moved again.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferry_api::*;
use ferry_lab::{test_vm_spec, verdict_after, wait_ready, Observer};

const GUESTS: [&str; 3] = ["g1", "g2", "g3"];

fn json<T: serde::de::DeserializeOwned>(out: &std::process::Output) -> T {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_imbalanced_cluster_is_balanced_within_the_rules() {
    let (lab, _cfg) = start_lab(&["a", "b", "c"]).await;
    let c = lab.client();
    for g in GUESTS {
        c.create_vm(&CreateVmRequest {
            host: Some("a".into()),
            spec: test_vm_spec(g, 160, 16, 4.0),
        })
        .await
        .unwrap();
    }
    for g in GUESTS {
        wait_ready(&c, g, Duration::from_secs(300)).await.unwrap();
    }
    // g1 must stay on a, whatever the balancer thinks.
    let out = ferry(
        &lab,
        &["rule", "add", "stay", "--vms", "g1", "--on-hosts", "a"],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // The agents' load arrives: CPU and memory per host and per VM, the dirty rate too.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let host: serde_json::Value = json(&ferry(&lab, &["host", "show", "a", "--json"]));
        let vm: serde_json::Value = json(&ferry(&lab, &["vm", "show", "g2", "--json"]));
        let ready = host["load"]["latest"]["memory_mib"].as_u64().is_some()
            && vm["load"]["latest"]["cpu_used"]
                .as_f64()
                .is_some_and(|c| c > 0.0)
            && vm["load"]["latest"]["dirty_rate_mib_s"].as_f64().is_some()
            && GUESTS.iter().all(|g| {
                let v: serde_json::Value = json(&ferry(&lab, &["vm", "show", g, "--json"]));
                v["load"]["samples"]
                    .as_array()
                    .is_some_and(|s| s.len() >= 2)
            });
        if ready {
            assert_eq!(vm["load"]["host"], "a");
            assert_eq!(vm["load"]["windows"][0]["minutes"], 1);
            break;
        }
        assert!(Instant::now() < deadline, "no load yet: {host} {vm}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let out = ferry(&lab, &["vm", "show", "g2"]);
    assert!(stdout(&out).contains("load now"), "{}", stdout(&out));

    // The dry run: moves off a, nothing started.
    let plan: BalancePlanView = json(&ferry(&lab, &["cluster", "balance", "--dry-run", "--json"]));
    assert!(!plan.moves.is_empty(), "{plan:?}");
    assert!(plan.imbalance_after < plan.imbalance_before, "{plan:?}");
    assert!(plan.imbalance_before > plan.threshold);
    assert!(plan.moves.iter().all(|m| m.from == "a" && m.vm != "g1"));
    assert!(c.migrations().await.unwrap().is_empty());
    let out = ferry(&lab, &["cluster", "balance", "--dry-run"]);
    assert!(stdout(&out).contains("IMBALANCE"), "{}", stdout(&out));

    // Recommend mode: recommendations to apply one by one; a dismissed one stays so.
    let run: BalanceRun = json(&ferry(
        &lab,
        &[
            "cluster",
            "balance",
            "--mode",
            "recommend",
            "--now",
            "--json",
        ],
    ));
    assert!(!run.recommendations.is_empty() && run.migrations.is_empty());
    let first = run.recommendations[0].id.to_string();
    let out = ferry(&lab, &["recommendation", "dismiss", &first]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ferry(&lab, &["recommendation", "apply", &first]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("dismissed"), "{}", stderr(&out));
    let list: Vec<Recommendation> = json(&ferry(&lab, &["recommendation", "list", "--json"]));
    assert!(list
        .iter()
        .any(|r| r.id.to_string() == first && r.state == RecommendationState::Dismissed));
    assert!(c.migrations().await.unwrap().is_empty());

    // Automatic: the moves go through the queue and complete.
    let before: Vec<_> = {
        let mut v = Vec::new();
        for g in GUESTS {
            let s = Observer { client: &c, vm: g }
                .last_status()
                .await
                .unwrap()
                .expect("status");
            v.push((g, s));
        }
        v
    };
    let run: BalanceRun = json(&ferry(
        &lab,
        &[
            "cluster",
            "balance",
            "--mode",
            "automatic",
            "--now",
            "--json",
        ],
    ));
    assert!(!run.migrations.is_empty(), "{run:?}");
    for id in &run.migrations {
        let end =
            wait_migration_event(&c, *id, "migration.phase", |e| e.outcome != Outcome::Info).await;
        assert_eq!(end.outcome, Outcome::Ok, "{}", end.message);
    }
    for (g, s) in &before {
        let v = verdict_after(&c, g, s, Duration::from_secs(180))
            .await
            .unwrap();
        assert!(v.ok(), "{g}: {}", v.describe());
        let vm = c.vm(g).await.unwrap();
        let running: Vec<&str> = ["a", "b", "c"]
            .into_iter()
            .filter(|h| lab.qemu_pid(h, g).is_some())
            .collect();
        assert_eq!(running, vec![vm.host.as_str()], "{g} runs exactly once");
    }
    assert_eq!(c.vm("g1").await.unwrap().host, "a", "the must rule held");
    let moved: Vec<String> = {
        let mut v = Vec::new();
        for g in GUESTS {
            if c.vm(g).await.unwrap().host != "a" {
                v.push(g.to_string());
            }
        }
        v
    };
    assert!(!moved.is_empty());

    // The imbalance dropped (the hosts' load as the new samples show it), and a VM that
    // just moved is not proposed again, even at the most aggressive level.
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let p: BalancePlanView = json(&ferry(
            &lab,
            &["cluster", "balance", "--dry-run", "--level", "5", "--json"],
        ));
        let fresh = p.hosts.iter().all(|h| h.host == "a" || h.cpu_used > 0.0);
        if fresh || Instant::now() > deadline {
            break p;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(
        after.imbalance_before < plan.imbalance_before,
        "{} then {}",
        plan.imbalance_before,
        after.imbalance_before
    );
    assert!(
        after.moves.iter().all(|m| !moved.contains(&m.vm)),
        "{after:?}"
    );
    let story = c
        .events(&EventQuery {
            kind: Some("balance".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(story.iter().any(|e| e.kind == EventKind::BalancePlan));
    assert!(story
        .iter()
        .any(|e| e.kind == EventKind::BalanceMove && e.message.contains("requested")));
}
