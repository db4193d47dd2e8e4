//! Failures before the switch leave the VM running where it was, intact, and clean up the
//! destination.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferry_api::*;
use ferry_lab::Observer;

const VM: &str = "db1";

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_destination_qemu_mid_migration_keeps_the_vm_on_the_source() {
    let (lab, _) = start_lab(&["a", "b"]).await;
    boot_guest(&lab, VM, "a", 256, 20.0).await;
    let c = lab.client();

    // A capped stream keeps the migration in flight long enough to kill the destination.
    let m = c
        .migrate(&MigrateRequest {
            vm: VM.into(),
            to: Some("b".into()),
            options: MigrationOptions {
                max_bandwidth_mib: Some(16),
                ..Default::default()
            },
            priority: None,
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let cur = c.migration(m.id).await.unwrap();
        let sent = cur
            .progress
            .as_ref()
            .map(|p| p.transferred_bytes)
            .unwrap_or(0);
        if cur.phase == Phase::Transferring && sent > 16 << 20 {
            break;
        }
        assert!(
            !cur.phase.is_terminal(),
            "ended before the fault was injected: {cur:?}"
        );
        assert!(
            Instant::now() < deadline,
            "migration never got going: {cur:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(lab.kill_qemu("b", VM), "destination QEMU found and killed");

    let done = loop {
        let cur = c.migration(m.id).await.unwrap();
        if cur.phase.is_terminal() {
            break cur;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(60),
            "never ended: {cur:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done.phase, Phase::Failed);
    let reason = done.error.clone().unwrap_or_default();
    assert!(
        reason.contains("QEMU reports the migration failed"),
        "reason: {reason}"
    );

    // The VM runs on A, the guest keeps counting with zero mismatches, B is clean.
    let vm = c.vm(VM).await.unwrap();
    assert_eq!(vm.host, "a");
    assert_eq!(vm.migration, None);
    assert_eq!(vm.runtime.expect("runtime").state, VmState::Running);
    let obs = Observer { client: &c, vm: VM };
    let now = obs.last_status().await.unwrap().unwrap();
    let later = obs
        .wait_status(Duration::from_secs(30), |s| s.tick >= now.tick + 2)
        .await
        .expect("the guest keeps counting on the source");
    assert_eq!(later.mismatches, 0, "{later}");
    assert!(lab.qemus_on("b").is_empty(), "nothing left on b");
    assert_eq!(lab.qemus_on("a").len(), 1);

    // The failure is in the log with its reason; the CLI reports it with exit status 1.
    let ev = c
        .events(&EventQuery {
            migration: Some(m.id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        ev.iter()
            .any(|e| e.outcome == Outcome::Error && e.message.contains("failed")),
        "{ev:?}"
    );
    let out = ferry(&lab, &["migration", "show", &m.id.to_string()]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("failed"), "{}", stdout(&out));

    // And the VM can still be migrated afterwards.
    let out = ferry(&lab, &["vm", "migrate", VM, "--to", "b", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(c.vm(VM).await.unwrap().host, "b");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_migration_leaves_the_vm_running_on_the_source() {
    let (lab, _) = start_lab(&["a", "b"]).await;
    boot_guest(&lab, VM, "a", 256, 10.0).await;
    let out = ferry(
        &lab,
        &[
            "vm",
            "migrate",
            VM,
            "--to",
            "b",
            "--max-bandwidth",
            "8",
            "--no-wait",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let m: Migration = serde_json::from_str(&stdout(&out)).unwrap();
    let c = lab.client();
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.migration(m.id).await.unwrap().phase != Phase::Transferring {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = ferry(&lab, &["migration", "cancel", &m.id.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let done = loop {
        let cur = c.migration(m.id).await.unwrap();
        if cur.phase.is_terminal() {
            break cur;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done.phase, Phase::Cancelled, "{done:?}");
    let vm = c.vm(VM).await.unwrap();
    assert_eq!(
        (vm.host.as_str(), vm.runtime.map(|r| r.state)),
        ("a", Some(VmState::Running))
    );
    assert!(lab.qemus_on("b").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_agent_adopts_its_running_vm() {
    let (mut lab, cfg) = start_lab(&["a", "b"]).await;
    boot_guest(&lab, VM, "a", 64, 5.0).await;
    let pid = lab.qemu_pid("a", VM).expect("QEMU runs");
    lab.restart_agent(&cfg, "a").await.unwrap();
    assert_eq!(
        lab.qemu_pid("a", VM),
        Some(pid),
        "the agent restart did not touch QEMU"
    );
    let c = lab.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    let rt = loop {
        if let Some(rt) = c.vm(VM).await.unwrap().runtime {
            break rt;
        }
        assert!(
            Instant::now() < deadline,
            "restarted agent does not report the VM"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((rt.state, rt.pid), (VmState::Running, Some(pid)));
    // And it can still act on it: stop works through the adopted QMP connection.
    let out = ferry(&lab, &["vm", "stop", VM]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(lab.qemus_on("a").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_boots_from_a_disk_image_given_by_path() {
    let (mut lab, cfg) = start_lab(&["a", "b"]).await;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("boot,disk.qcow2");
    // A path outside the directories the host boots from is refused (QEMU runs as root),
    // also through a symlink placed in an allowed directory.
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.qcow2");
    std::fs::write(&secret, b"not for guests").unwrap();
    std::os::unix::fs::symlink(&secret, dir.path().join("link.qcow2")).unwrap();
    let allow = dir.path().to_str().unwrap().to_string();
    lab.restart_agent_with(&cfg, "a", &["--boot-path-allow", &allow])
        .await
        .unwrap();
    for (name, path) in [
        ("sneaky1", secret.clone()),
        ("sneaky2", dir.path().join("link.qcow2")),
    ] {
        let out = ferry(
            &lab,
            &[
                "vm",
                "create",
                name,
                "--host",
                "a",
                "--disk",
                path.to_str().unwrap(),
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("outside the directories this host boots from"),
            "{}",
            stderr(&out)
        );
        assert!(lab.client().vm(name).await.is_err());
    }
    assert!(lab.qemus_on("a").is_empty());
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-f", "qcow2"])
        .arg(&disk)
        .arg("64M")
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let out = ferry(
        &lab,
        &[
            "vm",
            "create",
            "disk1",
            "--host",
            "a",
            "--memory",
            "128",
            "--disk",
            disk.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let vm: Vm = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        vm.spec.boot,
        Boot::Disk {
            path: disk.clone(),
            format: DiskFormat::Qcow2
        }
    );
    assert_eq!(vm.state, VmState::Running);
    // QEMU really opened that image: its command line names it, and it holds it open.
    let pid = lab.qemu_pid("a", "disk1").expect("QEMU runs");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    let open = fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .map(|p| p == disk)
            .unwrap_or(false)
    });
    assert!(open, "QEMU holds the boot disk open");

    // A disk that is not there is refused with the reason, and nothing is created.
    let out = ferry(
        &lab,
        &[
            "vm",
            "create",
            "disk2",
            "--host",
            "a",
            "--disk",
            "/nonexistent/d.qcow2",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not exist on host a"),
        "{}",
        stderr(&out)
    );
    assert!(lab.client().vm("disk2").await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_whose_qemu_dies_is_reported_crashed_and_can_be_started_again() {
    let (lab, _) = start_lab(&["a", "b"]).await;
    boot_guest(&lab, "crashy", "a", 32, 1.0).await;
    assert!(lab.kill_qemu("a", "crashy"));
    let c = lab.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let vm = c.vm("crashy").await.unwrap();
        if vm.state == VmState::Crashed {
            let rt = vm.runtime.expect("the agent still describes it");
            assert!(
                rt.exit_reason.unwrap_or_default().contains("signal"),
                "exit reason names the kill"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never reported crashed: {vm:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ev = c
        .events(&EventQuery {
            vm: Some("crashy".into()),
            kind: Some("vm.state".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        ev.iter()
            .any(|e| e.outcome == Outcome::Error && e.message.contains("crashed")),
        "{ev:?}"
    );
    let out = ferry(&lab, &["vm", "start", "crashy", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let vm: Vm = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(vm.state, VmState::Running);
    assert_eq!(lab.qemus_on("a").len(), 1);
}
