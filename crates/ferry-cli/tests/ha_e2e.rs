//! High availability with real daemons, real QEMU and real guests writing to disks on a
//! shared pool. The lease is 9 s (the agent fences 3 s before it ends; the server waits 3 s
//! past it), so each case settles within half a minute.
//!
//! - A host whose agent and QEMUs are killed: its HA VM runs again on another host,
//!   exactly once, with its disk data intact; a VM without HA and an HA VM on a local disk
//!   are named with the reason and not restarted.
//! - The server killed for longer than the lease: every VM keeps running, and nothing is
//!   restarted when it returns.
//! - A host cut off from the management network only (alive, partitioned): it finds
//!   itself isolated and stops its HA VM, which runs again elsewhere, exactly once, its
//!   disk data intact.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferry_api::client::ServerClient;
use ferry_api::*;
use ferry_lab::{ensure_test_image, test_vm_spec, wait_ready, Lab, NetLab, NetLabConfig, Observer};

const LEASE: &[&str] = &["--ha-lease-s", "9"];

/// An HA (or not) guest writing to a disk in `pool`, on `host`; waits until its disk area
/// is initialised.
async fn boot_disk_guest(c: &ServerClient, name: &str, host: &str, pool: &str, ha: bool) {
    c.create_disk(
        host,
        pool,
        &CreateDiskRequest {
            name: format!("{name}-disk"),
            size_mib: 64,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("disk for {name}: {e}"));
    let mut spec = test_vm_spec(name, 160, 8, 0.5);
    spec.disks = vec![DiskRef {
        pool: pool.into(),
        image: format!("{name}-disk"),
    }];
    if let Boot::Image { cmdline, .. } = &mut spec.boot {
        *cmdline = ferry_image::with_disk(cmdline, "vda", 16, 1.0);
    }
    spec.ha = ha.then(HaPolicy::default);
    c.create_vm(&CreateVmRequest {
        host: Some(host.into()),
        spec,
    })
    .await
    .unwrap_or_else(|e| panic!("VM {name}: {e}"));
    wait_ready(c, name, Duration::from_secs(300)).await.unwrap();
    let obs = Observer {
        client: c,
        vm: name,
    };
    wait_console(&obs, "disk initialised", |s| s.disk_last.is_some()).await;
}

/// Waits (90 s at most) for the `vm.restart` event of `vm` with `outcome`.
async fn restart_event(c: &ServerClient, vm: &str, outcome: Outcome) -> Event {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let events = c
            .events(&EventQuery {
                vm: Some(vm.into()),
                kind: Some("vm.restart".into()),
                ..Default::default()
            })
            .await
            .unwrap_or_default();
        if let Some(e) = events.into_iter().find(|e| e.outcome == outcome) {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no vm.restart ({outcome:?}) for {vm}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The guest came back from its disk: it found its area and verified every block.
async fn disk_intact(c: &ServerClient, vm: &str) {
    let obs = Observer { client: c, vm };
    let s = wait_console(&obs, "disk verified after the restart", |s| {
        s.disk_verified_after_restart.is_some()
    })
    .await;
    let (blocks, mismatches) = s.disk_verified_after_restart.expect("verified");
    assert!(blocks >= (16 << 20) / 4096 - 64, "{vm}: {blocks} blocks");
    assert_eq!(mismatches, 0, "{vm}: disk mismatches after the restart");
}

fn health_story(events: &[Event], host: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.kind == EventKind::HostHealth && e.host.as_deref() == Some(host))
        .map(|e| e.data["to"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_hosts_ha_vm_runs_again_elsewhere_once_and_a_server_outage_restarts_nothing() {
    let mut cfg = lab_config(&["a", "b", "c"]);
    cfg.pools = true;
    cfg.server_args = LEASE.iter().map(|s| s.to_string()).collect();
    let mut lab = Lab::start(cfg.clone()).await.expect("lab starts");
    let c = lab.client();
    boot_disk_guest(&c, "h1", "a", "shared", true).await;
    boot_disk_guest(&c, "local1", "a", "local", true).await;
    c.create_vm(&CreateVmRequest {
        host: Some("a".into()),
        spec: test_vm_spec("plain1", 128, 8, 0.0),
    })
    .await
    .unwrap();
    boot_disk_guest(&c, "keep1", "b", "shared", true).await;

    // The server down for two leases: agents still reach each other, so nothing stops,
    // and nothing restarts once it is back.
    let pids: Vec<(&str, &str, Option<u32>)> = [
        ("a", "h1"),
        ("a", "local1"),
        ("a", "plain1"),
        ("b", "keep1"),
    ]
    .into_iter()
    .map(|(h, v)| (h, v, lab.qemu_pid(h, v)))
    .collect();
    assert!(pids.iter().all(|p| p.2.is_some()), "{pids:?}");
    lab.kill_server().unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await; // the outage itself, 2 leases long
    lab.restart_server(&cfg).await.expect("server back");
    // Past the failover window as the new server counts it.
    tokio::time::sleep(Duration::from_secs(16)).await;
    for (h, v, pid) in &pids {
        assert_eq!(lab.qemu_pid(h, v), *pid, "{v} kept running on {h}");
    }
    let restarts = c
        .events(&EventQuery {
            kind: Some("vm.restart".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(restarts.is_empty(), "{restarts:?}");
    // The agents noticed, judged themselves not isolated and said so.
    let log = std::fs::read_to_string(lab.dir().join("agent-a.log")).unwrap_or_default();
    assert!(
        log.contains("not isolated"),
        "agent a's log says nothing of it"
    );

    // Host a dies: its agent and every QEMU on it.
    lab.kill_agent("a").unwrap();
    for v in ["h1", "local1", "plain1"] {
        assert!(lab.kill_qemu("a", v), "{v} killed");
    }
    let e = restart_event(&c, "h1", Outcome::Ok).await;
    let to = e.host.clone().expect("where");
    assert_ne!(to, "a");
    let vm = c.vm("h1").await.unwrap();
    assert_eq!(vm.host, to);
    let running: Vec<&str> = ["a", "b", "c"]
        .into_iter()
        .filter(|h| lab.qemu_pid(h, "h1").is_some())
        .collect();
    assert_eq!(running, vec![to.as_str()], "h1 runs exactly once");
    disk_intact(&c, "h1").await;
    // The others are named with the reason.
    let local = restart_event(&c, "local1", Outcome::Error).await;
    assert!(local.message.contains("do not share"), "{}", local.message);
    let plain = restart_event(&c, "plain1", Outcome::Error).await;
    assert!(plain.message.contains("HA is off"), "{}", plain.message);
    assert_eq!(c.host("a").await.unwrap().health, HostHealth::Failed);
    // keep1 on b was never touched.
    assert_eq!(lab.qemu_pid("b", "keep1"), pids[3].2);
    let all = c
        .events(&EventQuery {
            kind: Some("host".into()),
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    let story = health_story(&all, "a");
    assert!(
        story.ends_with(&["suspected".to_string(), "failed".to_string()]),
        "{story:?}"
    );
    // The host comes back: alive again, and h1 is not started twice.
    lab.restart_agent_with(&cfg, "a", &[]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.host("a").await.unwrap().health != HostHealth::Alive {
        assert!(Instant::now() < deadline, "a not alive again");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(lab.qemu_pid("a", "h1").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_cut_from_the_management_network_stops_its_ha_vm_which_runs_again_elsewhere() {
    let image_dir = ensure_test_image(&mut |_| {}).expect("test image");
    let shared = tempfile::tempdir().unwrap();
    let mut cfg = NetLabConfig::new(ferry_bin(), &["a", "b", "c"]);
    cfg.image_dir = Some(image_dir);
    cfg.server_args = LEASE.iter().map(|s| s.to_string()).collect();
    cfg.agent_args = vec![
        "--pool".into(),
        format!("shared={}:shared", shared.path().display()),
    ];
    let lab = NetLab::start(cfg).await.expect("network lab starts");
    let c = lab.client();
    boot_disk_guest(&c, "p1", "a", "shared", true).await;
    assert!(lab.qemu_pid("a", "p1").is_some());

    lab.set_management_link("a", false).unwrap();
    let e = restart_event(&c, "p1", Outcome::Ok).await;
    let to = e.host.clone().expect("where");
    assert_ne!(to, "a");
    // a stopped it itself (its isolation response), before the server restarted it.
    assert!(lab.qemu_pid("a", "p1").is_none(), "a still runs p1");
    let running: Vec<&str> = ["a", "b", "c"]
        .into_iter()
        .filter(|h| lab.qemu_pid(h, "p1").is_some())
        .collect();
    assert_eq!(running, vec![to.as_str()], "p1 runs exactly once");
    disk_intact(&c, "p1").await;
    let log = std::fs::read_to_string(lab.dir().join("agent-a.log")).unwrap_or_default();
    assert!(
        log.contains("isolated: HA VM stopped"),
        "{}",
        lab.log_tail("agent-a")
    );

    // Back on the network: a is alive again and does not run p1.
    lab.set_management_link("a", true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.host("a").await.unwrap().health != HostHealth::Alive {
        assert!(Instant::now() < deadline, "a not alive again");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(lab.qemu_pid("a", "p1").is_none());
    assert_eq!(c.vm("p1").await.unwrap().host, to);
}
