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
            host: "a".into(),
            spec: ferry_lab::test_vm_spec("base1", 256, 16, 1.0),
        })
        .await
        .unwrap();
    assert_eq!(vm.spec.cpu_model, "Westmere");
    let _ = c.stop_vm("base1").await;

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
