//! Pre-migration checks on real agents configured to differ, in the network lab: one VM on
//! `a`, and a destination for each way a host can be unfit. `--check` must name the right
//! check (and only it) every time; a refused migration touches nothing and leaves the report
//! in the event log; the healthy destination passes and the migration then runs.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use ferry_api::*;
use ferry_lab::netlab::{NetLab, NetLabConfig};

const VM: &str = "web1";

/// A `qemu-system-x86_64` whose machine list lacks `pc-q35-10.0` (as an older QEMU's
/// would); everything else runs the real binary.
fn qemu_without_q35_10(dir: &Path) -> PathBuf {
    let path = dir.join("qemu-older-machines");
    std::fs::write(
        &path,
        "#!/bin/sh\n\
         if [ \"$1\" = \"-machine\" ] && [ \"$2\" = \"help\" ]; then\n\
         \x20 /usr/bin/qemu-system-x86_64 -machine help | grep -v 'pc-q35-10.0'\n\
         \x20 exit 0\n\
         fi\n\
         exec /usr/bin/qemu-system-x86_64 \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn check(lab: &NetLab, to: &str) -> CheckReport {
    let out = ferry_net(lab, &["vm", "migrate", VM, "--to", to, "--check", "--json"]);
    let report: CheckReport = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("--check --json to {to}: {e}: {}", stderr(&out)));
    let failed = report.verdict() == Verdict::Fail;
    assert_eq!(
        out.status.code(),
        Some(if failed { 2 } else { 0 }),
        "exit code for {to}: {}",
        stderr(&out)
    );
    println!(
        "{to}: {} in {} ms; failed: {}",
        report.verdict(),
        report.elapsed_ms,
        report.summary(Verdict::Fail)
    );
    report
}

fn failed_names(r: &CheckReport) -> Vec<&str> {
    r.with(Verdict::Fail)
        .iter()
        .map(|c| c.name.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_unfit_destination_is_refused_by_the_check_that_names_why() {
    let work = tempfile::tempdir().unwrap();
    let pool = |h: &str| work.path().join(format!("pool-{h}"));
    for h in ["a", "b", "c", "d", "e", "f", "g", "h"] {
        std::fs::create_dir_all(pool(h)).unwrap();
    }
    // g's pool is a 40 MiB file system: the VM's 64 MiB of disk data cannot fit.
    let _tmpfs = Tmpfs::mount(&pool("g"), 40);

    let image_dir = ferry_lab::ensure_test_image(&mut |_| {}).expect("test image");
    let mut cfg = NetLabConfig::new(ferry_bin(), &["a", "b", "c", "d", "e", "f", "g", "h"]);
    cfg.image_dir = Some(image_dir);
    cfg.vm_network_flag = Some(true);
    cfg.hosts_without_vm_network = vec!["d".into()];
    let older_qemu = qemu_without_q35_10(work.path());
    let extra = |h: &str| -> Vec<String> {
        let mut v = vec!["--pool".to_string(), format!("local={}", pool(h).display())];
        match h {
            "c" => v.extend(["--memory-reserve-mib".into(), "100000000".into()]),
            "e" => v.extend(["--cpu-models".into(), "qemu64,kvm64".into()]),
            "f" => v.extend(["--qemu".into(), older_qemu.display().to_string()]),
            _ => {}
        }
        v
    };
    cfg.host_args = ["a", "b", "c", "d", "e", "f", "g"]
        .iter()
        .map(|h| (h.to_string(), extra(h)))
        .collect();
    cfg.host_args.push((
        "h".into(),
        vec!["--pool".into(), format!("local={}", pool("h").display())],
    ));
    let mut lab = NetLab::start(cfg).await.expect("lab");
    // h advertises a migration address nobody answers on (its subnet's .99).
    let ip = lab.migration_ip("a").octets();
    let dead = format!("{}.{}.{}.99", ip[0], ip[1], ip[2]);
    lab.restart_agent("h", Some(vec!["--migration-advertise".into(), dead]))
        .await
        .expect("h restarts advertising a dead address");
    let url = lab.host("h").expect("h").agent_url.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while lab
        .client()
        .host("h")
        .await
        .map(|h| h.url != url)
        .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "h did not re-register"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let c = lab.client();

    // The VM: a NIC on the VM network, a Nehalem CPU, a local disk holding 64 MiB.
    c.create_disk(
        "a",
        "local",
        &CreateDiskRequest {
            name: "data".into(),
            size_mib: 128,
        },
    )
    .await
    .unwrap();
    let io = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5a 0 64M"])
        .arg(pool("a").join("data.qcow2"))
        .output()
        .unwrap();
    assert!(io.status.success(), "{io:?}");
    let mut spec = ferry_lab::test_vm_spec(VM, 512, 32, 1.0);
    spec.cpu_model = "Nehalem".into();
    spec.nics = vec![NicSpec {
        network: "vmnet".into(),
        mac: None,
    }];
    spec.disks = vec![DiskRef {
        pool: "local".into(),
        image: "data".into(),
    }];
    c.create_vm(&CreateVmRequest {
        host: Some("a".into()),
        spec,
    })
    .await
    .unwrap();
    ferry_lab::wait_ready(&c, VM, Duration::from_secs(240))
        .await
        .unwrap();

    // Healthy: every check passes.
    let ok = check(&lab, "b");
    assert_eq!(ok.verdict(), Verdict::Pass, "{:#?}", ok.checks);
    assert!(ok.checks.len() >= 12);

    for (host, check_name, words) in [
        ("c", "memory", "does not fit"),
        ("d", "networks", "lacks network(s) vmnet"),
        ("e", "cpu.model", "does not offer CPU model 'Nehalem'"),
        ("f", "qemu.machine", "no machine type pc-q35-10.0"),
        ("g", "storage", "MiB free"),
        ("h", "migration_network.reachable", "cannot reach"),
    ] {
        let r = check(&lab, host);
        assert_eq!(
            failed_names(&r),
            vec![check_name],
            "{host}: {:#?}",
            r.checks
        );
        let c = r.checks.iter().find(|c| c.name == check_name).unwrap();
        assert!(c.message.contains(words), "{host}: {}", c.message);
    }

    // Maintenance: refused while on, fine again once off.
    let out = ferry_net(&lab, &["host", "maintenance", "enter", "b"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = check(&lab, "b");
    assert_eq!(failed_names(&r), vec!["destination"]);
    assert!(r.checks[0].message.contains("maintenance"));

    // A real migrate is refused the same way, touching nothing, with the report logged.
    let out = ferry_net(&lab, &["vm", "migrate", VM, "--to", "b"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("pre-migration checks failed"),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("destination"),
        "the report is printed"
    );
    assert!(c.migrations().await.unwrap().is_empty());
    assert!(lab.qemus_on("b").is_empty());
    let refused = c
        .events(&EventQuery {
            vm: Some(VM.into()),
            kind: Some("migration.request".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let e = refused.last().expect("the refusal is logged");
    assert_eq!(e.outcome, Outcome::Error);
    assert!(
        e.data["checks"].as_array().is_some_and(|a| a.len() >= 12),
        "{:?}",
        e.data
    );

    let out = ferry_net(&lab, &["host", "maintenance", "exit", "b"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ferry_net(&lab, &["vm", "migrate", VM, "--to", "b", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m: Migration = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(m.phase, Phase::Completed);
    let logged = migration_events(&c, m.id, "migration.check").await;
    assert_eq!(logged.len(), 1, "the passing report is in the event log");
    lab.shutdown();
}
