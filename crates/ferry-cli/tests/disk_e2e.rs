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
        .any(|e| e.kind == "disk.create" && e.outcome == Outcome::Ok));
    assert!(ev
        .iter()
        .any(|e| e.kind == "disk.delete" && e.outcome == Outcome::Ok));
    assert!(ev.iter().any(|e| e.kind == "disk.create"
        && e.outcome == Outcome::Error
        && e.message.contains("already exists")));
}
