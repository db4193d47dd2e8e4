//! Migrations between real agents holding the certificates the cluster CA gave them when
//! they joined: the guest and its local-pool disk move there with 4 streams and back with one, over
//! QEMU's TLS, and verify clean. The destination's QEMU is asked through the operator's
//! monitor (`--aux-qmp`) what it was set up with: TLS credentials, and an authorization
//! that admits exactly the source host's certificate, for the stream and the disk export.

mod common;

use std::time::Duration;

use common::*;
use ferry_api::*;
use ferry_lab::{verdict_after, Observer};
use ferry_qmp::QmpClient;

const VM: &str = "sealed";
const DISK: &str = "sdata";

/// What `host`'s QEMU of the VM was set up with for its last incoming stream.
async fn incoming_tls(lab: &ferry_lab::Lab, host: &str) -> (Option<String>, String, String) {
    let agent = lab.agents.iter().find(|a| a.name == host).expect("agent");
    let socket = agent
        .state_dir
        .join("vms")
        .join(VM)
        .join(ferry_agent::runtime::AUX_QMP_SOCKET);
    let qmp = QmpClient::connect(&socket).await.expect("aux monitor");
    let params = qmp.query_migrate_parameters().await.expect("parameters");
    let stream = qmp
        .qom_get_string("/objects/ferry-migration-authz", "identity")
        .await
        .expect("the stream's authz object");
    let export = qmp
        .qom_get_string("/objects/ferry-nbd-authz", "identity")
        .await
        .expect("the export's authz object");
    (params.tls_creds, stream, export)
}

async fn hop(lab: &ferry_lab::Lab, from: &str, to: &str, streams: &str) {
    let c = lab.client();
    let obs = Observer { client: &c, vm: VM };
    let before = obs.last_status().await.unwrap().expect("status before");
    let out = ferry(
        lab,
        &[
            "vm",
            "migrate",
            VM,
            "--to",
            to,
            "--streams",
            streams,
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "migrate {from}->{to} failed: {}\n{}",
        stderr(&out),
        stdout(&out)
    );
    let m: Migration = serde_json::from_str(&stdout(&out)).expect("--json prints the migration");
    assert_eq!(m.phase, Phase::Completed, "{m:?}");
    let v = verdict_after(&c, VM, &before, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(v.ok(), "guest verdict after {from}->{to}: {}", v.describe());
    let (creds, stream, export) = incoming_tls(lab, to).await;
    assert_eq!(creds.as_deref(), Some("ferry-migration-tls"));
    let source_dn = format!("CN={from}.host.ferry");
    assert_eq!(stream, source_dn, "the stream admits only the source");
    assert_eq!(
        export, source_dn,
        "the disk export admitted only the source"
    );
    let first = wait_console(&obs, "disk status", |s| s.disk_last.is_some())
        .await
        .disk_last
        .expect("disk line");
    let later = wait_console(&obs, "disk progress", |s| {
        s.disk_last
            .as_ref()
            .is_some_and(|d| d.tick >= first.tick + 3)
    })
    .await;
    let d = later.disk_last.expect("disk line");
    assert_eq!((d.mismatches, later.disk_mismatch_lines), (0, 0), "{d}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_and_its_local_disk_move_over_qemu_tls_and_verify_clean() {
    let mut cfg = lab_config(&["a", "b"]);
    cfg.pools = true;
    for host in ["a", "b"] {
        cfg.agent_args.insert(host.into(), vec!["--aux-qmp".into()]);
    }
    let lab = ferry_lab::Lab::start(cfg).await.expect("lab");
    let c = lab.client();
    let out = ferry(
        &lab,
        &[
            "disk", "create", DISK, "--host", "a", "--pool", "local", "--size", "32M",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut spec = ferry_lab::test_vm_spec(VM, 512, 32, 1.0);
    spec.disks = vec![DiskRef {
        pool: "local".into(),
        image: DISK.into(),
    }];
    if let Boot::Image { cmdline, .. } = &mut spec.boot {
        *cmdline = ferry_image::with_disk(cmdline, "vda", 16, 1.0);
    }
    c.create_vm(&CreateVmRequest {
        host: Some("a".into()),
        spec,
    })
    .await
    .expect("VM created");
    ferry_lab::wait_ready(&c, VM, Duration::from_secs(240))
        .await
        .expect("guest ready");
    let obs = Observer { client: &c, vm: VM };
    wait_console(&obs, "disk initialised", |s| s.disk_last.is_some()).await;

    hop(&lab, "a", "b", "4").await;
    hop(&lab, "b", "a", "1").await;
}
