//! The cluster CPU baseline on real agents: computed from what each host's QEMU offers,
//! given to new VMs by default, settable, refused when a host cannot run it, and a host
//! that cannot run it is flagged when it (re)joins.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferry_api::*;

fn cluster(lab: &ferry_lab::Lab, args: &[&str]) -> (Option<i32>, String, String) {
    let out = ferry(lab, args);
    (out.status.code(), stdout(&out), stderr(&out))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_baseline_is_the_best_model_every_host_runs() {
    let (mut lab, cfg) = start_lab(&["a", "b"]).await;
    let c = lab.client();
    // Both hosts run QEMU 10 under TCG: the best ranked model TCG provides in full.
    let info = c.cluster().await.unwrap();
    assert_eq!(info.baseline_setting, BaselineSetting::Auto);
    assert_eq!(info.baseline_model.as_deref(), Some("Westmere"), "{info:?}");
    assert!(info.hosts_without_baseline.is_empty());

    // A new VM gets it by default.
    let vm = c
        .create_vm(&CreateVmRequest {
            host: Some("a".into()),
            spec: ferry_lab::test_vm_spec("base1", 256, 16, 1.0),
        })
        .await
        .unwrap();
    assert_eq!(vm.spec.cpu_model, "Westmere");

    // Cluster migration defaults: set in two steps (each keeps the other's), refused when
    // they cannot work, and given to a migration that names none of its own.
    for args in [
        vec![
            "cluster",
            "defaults",
            "--max-throttle",
            "80",
            "--downtime-limit",
            "250",
        ],
        vec!["cluster", "defaults", "--streams", "2"],
    ] {
        let (code, _, err) = cluster(&lab, &args);
        assert_eq!(code, Some(0), "{err}");
    }
    let (code, _, err) = cluster(&lab, &["cluster", "defaults", "--compression", "xbzrle"]);
    assert_eq!(code, Some(2), "xbzrle with the 2 default streams: {err}");
    let d = c.cluster().await.unwrap().migration_defaults;
    assert_eq!(
        (d.max_throttle_pct, d.downtime_limit_ms, d.streams),
        (Some(80), Some(250), Some(2))
    );
    let m = c
        .migrate(&MigrateRequest {
            vm: "base1".into(),
            to: Some("b".into()),
            options: MigrationOptions {
                downtime_limit_ms: Some(400),
                ..Default::default()
            },
            priority: None,
        })
        .await
        .unwrap();
    assert_eq!(
        (
            m.options.max_throttle_pct,
            m.options.downtime_limit_ms,
            m.options.streams
        ),
        (Some(80), Some(400), Some(2)),
        "the migration's own downtime limit wins; the rest are the defaults"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !c.migration(m.id).await.unwrap().phase.is_terminal() {
        assert!(Instant::now() < deadline, "migration did not end");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(c.migration(m.id).await.unwrap().phase, Phase::Completed);
    let (code, _, err) = cluster(&lab, &["cluster", "defaults", "--clear"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        c.cluster().await.unwrap().migration_defaults,
        MigrationOptions::default()
    );

    // A fixed baseline every host runs is accepted.
    let (code, out, err) = cluster(&lab, &["cluster", "baseline", "--model", "Nehalem"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("new VMs get    Nehalem"), "{out}");

    // b comes back offering fewer models: it is flagged, in the cluster view and the log.
    lab.restart_agent_with(&cfg, "b", &["--cpu-models", "qemu64,kvm64"])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let info = loop {
        let info = c.cluster().await.unwrap();
        if !info.hosts_without_baseline.is_empty() {
            break info;
        }
        assert!(Instant::now() < deadline, "b was not flagged: {info:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(info.hosts_without_baseline[0].host, "b");
    assert!(info.hosts_without_baseline[0]
        .reason
        .contains("does not offer Nehalem"));
    let flagged = c
        .events(&EventQuery {
            kind: Some("host.baseline".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        flagged
            .iter()
            .any(|e| e.host.as_deref() == Some("b") && e.outcome == Outcome::Error),
        "{flagged:?}"
    );

    // A model b cannot run is refused as the baseline, with the host named.
    let (code, _, err) = cluster(&lab, &["cluster", "baseline", "--model", "Westmere"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("b cannot run it"), "{err}");

    // Back to automatic: the best model both run now.
    let (code, out, err) = cluster(&lab, &["cluster", "baseline", "--auto", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let info: ClusterInfo = serde_json::from_str(&out).unwrap();
    assert_eq!(info.baseline_model.as_deref(), Some("qemu64"));
    assert!(info.hosts_without_baseline.is_empty());
}
