//! Admission on real daemons: twenty creates at once at a host that fits three, stopped
//! VMs giving their memory back (and taking it again only if it is there), disk images
//! owned by one VM wherever it runs or whether it runs at all, and one server per data
//! directory.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferry_api::*;
use ferry_lab::test_vm_spec;

const MEMORY_MIB: u64 = 256;

/// Restarts `host`'s agent with a memory reserve that leaves room for exactly `fit` VMs
/// of [`MEMORY_MIB`], and waits until the server has heard the new figure.
async fn leave_room_for(
    lab: &mut ferry_lab::Lab,
    cfg: &ferry_lab::LabConfig,
    host: &str,
    fit: u64,
) {
    let c = lab.client();
    let total = c
        .hosts()
        .await
        .expect("hosts")
        .into_iter()
        .find(|h| h.name == host)
        .expect("host registered")
        .inventory
        .memory_total_mib;
    let need = MEMORY_MIB + ferry_server::checks::qemu_overhead_mib(MEMORY_MIB, 1);
    // Room for `fit`, and half a VM to spare (so rounding cannot admit one more).
    let reserve = total - fit * need - need / 2;
    lab.restart_agent_with(cfg, host, &["--memory-reserve-mib", &reserve.to_string()])
        .await
        .expect("agent restarts");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hosts = c.hosts().await.expect("hosts");
        let h = hosts.iter().find(|h| h.name == host).expect("host");
        if h.inventory.memory_reserve_mib == reserve && h.state == HostState::Connected {
            return;
        }
        assert!(Instant::now() < deadline, "the new reserve never arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_creates_at_once_at_a_host_that_fits_three_admit_exactly_three() {
    let cfg = lab_config(&["a"]);
    let mut lab = ferry_lab::Lab::start(cfg.clone()).await.expect("lab");
    leave_room_for(&mut lab, &cfg, "a", 3).await;

    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let c = lab.client();
        set.spawn(async move {
            let req = CreateVmRequest {
                host: Some("a".into()),
                spec: test_vm_spec(&format!("burst{i}"), MEMORY_MIB, 8, 1.0),
            };
            c.create_vm(&req).await
        });
    }
    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    while let Some(r) = set.join_next().await {
        match r.expect("task") {
            Ok(vm) => admitted.push(vm.spec.name),
            Err(ferry_api::client::ClientError::Api(e)) => refused.push(e),
            Err(e) => panic!("neither admitted nor refused: {e}"),
        }
    }
    assert_eq!(admitted.len(), 3, "admitted {admitted:?}");
    assert_eq!(refused.len(), 17);
    for e in &refused {
        assert_eq!(e.code, ErrorCode::Conflict, "{}", e.message);
        assert!(
            e.message.contains("has no room") && e.message.contains("MiB"),
            "the refusal gives the numbers: {}",
            e.message
        );
    }
    // Nothing was launched or recorded for a refused request.
    assert_eq!(lab.qemus_on("a").len(), 3);
    let vms = lab.client().vms().await.expect("vms");
    let mut names: Vec<String> = vms.iter().map(|v| v.spec.name.clone()).collect();
    names.sort();
    admitted.sort();
    assert_eq!(names, admitted);
    println!("20 creates at once: admitted {admitted:?}, refused 17");

    // A stopped VM gives its memory back: one more fits; the stopped one may not start
    // again while the host is full, and says why.
    let c = lab.client();
    let stopped = admitted[0].clone();
    c.stop_vm(&stopped).await.expect("stop");
    c.create_vm(&CreateVmRequest {
        host: Some("a".into()),
        spec: test_vm_spec("late", MEMORY_MIB, 8, 1.0),
    })
    .await
    .expect("room freed by the stop");
    let e = c.start_vm(&stopped).await.expect_err("no room to start");
    assert!(e.to_string().contains("has no room"), "{e}");
    assert_eq!(lab.qemus_on("a").len(), 3);
    assert_eq!(c.vm(&stopped).await.expect("vm").state, VmState::Stopped);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disk_image_belongs_to_one_vm_wherever_it_runs_and_while_it_is_stopped() {
    let mut cfg = lab_config(&["a", "b"]);
    cfg.pools = true;
    let lab = ferry_lab::Lab::start(cfg).await.expect("lab");
    let out = ferry(
        &lab,
        &[
            "disk", "create", "data1", "--host", "a", "--pool", "shared", "--size", "64M",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let c = lab.client();
    let with_disk = |name: &str| {
        let mut spec = test_vm_spec(name, MEMORY_MIB, 8, 1.0);
        spec.disks = vec![DiskRef {
            pool: "shared".into(),
            image: "data1".into(),
        }];
        spec
    };
    c.create_vm(&CreateVmRequest {
        host: Some("a".into()),
        spec: with_disk("owner"),
    })
    .await
    .expect("the first VM takes the image");

    // The same shared image from the other host: refused, naming the owner.
    let e = c
        .create_vm(&CreateVmRequest {
            host: Some("b".into()),
            spec: with_disk("thief"),
        })
        .await
        .expect_err("attached twice");
    assert!(e.to_string().contains("attached to VM owner"), "{e}");
    assert!(lab.qemus_on("b").is_empty());
    assert!(c.vm("thief").await.is_err(), "nothing recorded");

    // Deleting it is refused from either host, also while its VM is stopped.
    let del = |host: &str| {
        ferry(
            &lab,
            &[
                "disk", "delete", "data1", "--host", host, "--pool", "shared",
            ],
        )
    };
    for host in ["a", "b"] {
        let out = del(host);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("owner"), "{}", stderr(&out));
    }
    c.stop_vm("owner").await.expect("stop");
    let out = del("b");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("owner"), "{}", stderr(&out));
    let file = lab.dir().join("shared-pool/data1.qcow2");
    assert!(file.is_file(), "the image is still there");

    // Once its VM is deleted, the image can go.
    c.delete_vm("owner").await.expect("delete vm");
    let out = del("b");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!file.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_server_on_the_same_data_dir_refuses_naming_the_holder() {
    let (lab, _cfg) = start_lab(&["a"]).await;
    let data_dir = lab.dir().join("server");
    let out = std::process::Command::new(ferry_bin())
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("ferry runs");
    assert!(!out.status.success(), "a second server started");
    let err = stderr(&out);
    assert!(
        err.contains("in use by another Ferry server") && err.contains("pid "),
        "{err}"
    );
    // The first server is untouched.
    assert_eq!(
        lab.client()
            .hosts()
            .await
            .expect("first server answers")
            .len(),
        1
    );
}
