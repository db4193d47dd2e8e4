//! Storage pools and disk images, through the CLI, on real agents and real qemu-img.

mod common;

use common::*;
use ferry_api::*;

#[tokio::test(flavor = "multi_thread")]
async fn disks_are_created_listed_and_deleted_in_pools_with_names_checked() {
    let mut cfg = lab_config(&["a", "b"]);
    cfg.pools = true;
    let lab = ferry_lab::Lab::start(cfg).await.expect("lab");

    let out = ferry(
        &lab,
        &[
            "disk", "create", "data1", "--host", "a", "--pool", "local", "--size", "1G", "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let d: DiskImage = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        (d.name.as_str(), d.format.as_str(), d.virtual_size),
        ("data1", "qcow2", 1 << 30)
    );
    // The image really is a qcow2 file in a's local pool, not in b's.
    let file = lab.agents[0].state_dir.join("pool-local/data1.qcow2");
    assert!(file.is_file(), "{}", file.display());
    assert!(!lab.agents[1]
        .state_dir
        .join("pool-local/data1.qcow2")
        .exists());

    // The shared pool shows the same image from both hosts.
    let out = ferry(
        &lab,
        &[
            "disk", "create", "shared1", "--host", "a", "--pool", "shared", "--size", "64M",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ferry(&lab, &["disk", "list", "--host", "b", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let on_b: Vec<DiskImage> = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        on_b.iter()
            .map(|d| (d.pool.as_str(), d.name.as_str()))
            .collect::<Vec<_>>(),
        vec![("shared", "shared1")]
    );
    let hosts = lab.client().hosts().await.unwrap();
    let pools: Vec<(String, bool)> = hosts[0]
        .inventory
        .pools
        .iter()
        .map(|p| (p.name.clone(), p.shared))
        .collect();
    assert!(
        pools.contains(&("local".into(), false)) && pools.contains(&("shared".into(), true)),
        "{pools:?}"
    );

    // Bad input: refused, nothing created.
    for (args, needle) in [
        (
            vec![
                "disk",
                "create",
                "../escape",
                "--host",
                "a",
                "--pool",
                "local",
                "--size",
                "1G",
            ],
            "must start with",
        ),
        (
            vec![
                "disk", "create", "x", "--host", "a", "--pool", "local", "--size", "1.5G",
            ],
            "whole number",
        ),
        (
            vec![
                "disk", "create", "x", "--host", "a", "--pool", "nopool", "--size", "1G",
            ],
            "no pool 'nopool'",
        ),
        (
            vec![
                "disk", "create", "data1", "--host", "a", "--pool", "local", "--size", "1G",
            ],
            "already exists",
        ),
        (
            vec!["disk", "delete", "nodisk", "--host", "a", "--pool", "local"],
            "no disk 'nodisk'",
        ),
    ] {
        let out = ferry(&lab, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    assert!(!lab.agents[0].state_dir.join("pool-local/x.qcow2").exists());

    let out = ferry(
        &lab,
        &["disk", "delete", "data1", "--host", "a", "--pool", "local"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!file.exists());
    let ev = lab
        .client()
        .events(&EventQuery {
            kind: Some("disk".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(ev
        .iter()
        .any(|e| e.kind == EventKind::DiskCreate && e.outcome == Outcome::Ok));
    assert!(ev
        .iter()
        .any(|e| e.kind == EventKind::DiskDelete && e.outcome == Outcome::Ok));
    assert!(ev.iter().any(|e| e.kind == EventKind::DiskCreate
        && e.outcome == Outcome::Error
        && e.message.contains("already exists")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_with_a_shared_pool_disk_migrates_and_a_local_disk_that_cannot_be_copied_is_refused() {
    let mut cfg = lab_config(&["a", "b"]);
    cfg.pools = true;
    let lab = ferry_lab::Lab::start(cfg).await.expect("lab");
    let c = lab.client();
    for (host, pool, disk) in [
        ("a", "shared", "sdata"),
        ("a", "local", "ldata"),
        ("b", "local", "ldata"),
    ] {
        let out = ferry(
            &lab,
            &[
                "disk", "create", disk, "--host", host, "--pool", pool, "--size", "64M",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }

    // A local-pool disk whose name is taken in the destination's pool: the copy would
    // overwrite it, so the migration is refused before anything is touched.
    let mut spec = ferry_lab::test_vm_spec("local1", 512, 32, 1.0);
    spec.disks = vec![DiskRef {
        pool: "local".into(),
        image: "ldata".into(),
    }];
    c.create_vm(&CreateVmRequest {
        host: Some("a".into()),
        spec,
    })
    .await
    .unwrap();
    let out = ferry(&lab, &["vm", "migrate", "local1", "--to", "b"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("pool local on b already has a disk named ldata"),
        "{}",
        stderr(&out)
    );
    assert!(c.migrations().await.unwrap().is_empty());
    assert!(lab.qemus_on("b").is_empty());
    // And the image it uses cannot be deleted under it.
    let out = ferry(
        &lab,
        &["disk", "delete", "ldata", "--host", "a", "--pool", "local"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("belongs to VM local1"),
        "{}",
        stderr(&out)
    );
    let out = ferry(&lab, &["vm", "stop", "local1"]);
    assert!(out.status.success());

    // A shared-pool disk: memory and device state move, the image stays, and afterwards only
    // the destination's QEMU has it open.
    let mut spec = ferry_lab::test_vm_spec("shared1", 512, 64, 5.0);
    spec.disks = vec![DiskRef {
        pool: "shared".into(),
        image: "sdata".into(),
    }];
    // The guest writes self-verifying blocks to the disk (vda) while it migrates.
    if let Boot::Image { cmdline, .. } = &mut spec.boot {
        *cmdline = ferry_image::with_disk(cmdline, "vda", 32, 2.0);
    }
    c.create_vm(&CreateVmRequest {
        host: Some("a".into()),
        spec,
    })
    .await
    .unwrap();
    ferry_lab::wait_ready(&c, "shared1", std::time::Duration::from_secs(240))
        .await
        .unwrap();
    let image = lab.dir().join("shared-pool/sdata.qcow2");
    let holders = |path: &std::path::Path| -> Vec<u32> {
        ["a", "b"]
            .iter()
            .flat_map(|h| lab.qemus_on(h))
            .filter(|pid| {
                std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .map(|fds| {
                        fds.flatten().any(|fd| {
                            std::fs::read_link(fd.path())
                                .map(|p| p == path)
                                .unwrap_or(false)
                        })
                    })
                    .unwrap_or(false)
            })
            .collect()
    };
    assert_eq!(
        holders(&image),
        lab.qemus_on("a"),
        "a's QEMU holds the image"
    );
    let out = ferry(&lab, &["vm", "migrate", "shared1", "--to", "b", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m: Migration = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(m.phase, Phase::Completed);
    let b_qemus = lab.qemus_on("b");
    assert_eq!(b_qemus.len(), 1);
    // The source QEMU is shut down right after the switch (the migration is complete as
    // soon as b runs): give it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while holders(&image) != b_qemus && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        holders(&image),
        b_qemus,
        "only b's QEMU holds the image now"
    );
    let on_b = c.disks("b", "shared").await.unwrap();
    assert_eq!(
        on_b.iter()
            .find(|d| d.name == "sdata")
            .and_then(|d| d.in_use_by.clone()),
        Some("shared1".into())
    );
    let obs = ferry_lab::Observer {
        client: &c,
        vm: "shared1",
    };
    let v = obs
        .wait_status(std::time::Duration::from_secs(60), |s| {
            s.mismatches == 0 && s.tick > 3
        })
        .await;
    assert!(v.is_ok(), "{v:?}");
    // The disk workload carries on on b: fresh disk status lines there, zero mismatches,
    // and it keeps writing and verifying.
    let first = wait_console(&obs, "disk status on b", |s| s.disk_last.is_some()).await;
    let first = first.disk_last.expect("a disk line");
    let later = wait_console(&obs, "disk progress on b", |s| {
        s.disk_last
            .as_ref()
            .is_some_and(|d| d.tick >= first.tick + 3 && d.verified > first.verified + 8174)
    })
    .await;
    let d = later.disk_last.expect("a disk line");
    assert_eq!((d.mismatches, later.disk_mismatch_lines), (0, 0), "{d}");
    assert!(d.written > first.written, "still writing: {d}");

    // And once more after the VM reboots on the destination: the whole area re-verified.
    let out = ferry(&lab, &["vm", "stop", "shared1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ferry(&lab, &["vm", "start", "shared1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(c.vm("shared1").await.unwrap().host, "b");
    let after = wait_console(&obs, "disk verified after reboot on b", |s| {
        s.disk_verified_after_restart.is_some()
    })
    .await;
    let (blocks, mismatches) = after.disk_verified_after_restart.expect("verified");
    assert!(blocks > 8000, "the whole 32 MiB area: {blocks} blocks");
    assert_eq!(mismatches, 0);
}
