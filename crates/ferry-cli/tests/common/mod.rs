//! Shared setup for the end-to-end tests: a lab of real daemons (this build's `ferry`
//! binary), real QEMU 10 under TCG, the real test guest.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use ferry_api::*;
use ferry_lab::{ensure_test_image, test_vm_spec, wait_ready, Lab, LabConfig};

pub fn ferry_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

pub fn lab_config(hosts: &[&str]) -> LabConfig {
    let image_dir = ensure_test_image(&mut |_| {}).unwrap_or_else(|e| {
        panic!("the test guest image is needed: {e}\n(build the static guest first: scripts/test.sh does)")
    });
    let mut cfg = LabConfig::new(ferry_bin(), hosts);
    cfg.image_dir = Some(image_dir);
    cfg.keep = std::env::var_os("FERRY_KEEP_LAB").is_some();
    cfg
}

pub async fn start_lab(hosts: &[&str]) -> (Lab, LabConfig) {
    let cfg = lab_config(hosts);
    let lab = Lab::start(cfg.clone()).await.expect("lab starts");
    (lab, cfg)
}

/// Runs the `ferry` CLI against the lab's server, as its admin (the lab's client config).
pub fn ferry(lab: &Lab, args: &[&str]) -> Output {
    ferry_as(lab, args, &[])
}

/// Runs the `ferry` CLI as the lab's admin with extra environment (e.g. another
/// FERRY_TOKEN, which wins over the config file).
pub fn ferry_as(lab: &Lab, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(ferry_bin());
    cmd.args(args)
        .env(
            "FERRY_CONFIG",
            &lab.trust().expect("a secured lab").config_path,
        )
        .env_remove("FERRY_SERVER")
        .env_remove("FERRY_CA")
        .env_remove("FERRY_TOKEN")
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("ferry runs")
}

/// A two-host network lab (hosts a and b, the VM network on every host).
pub async fn start_netlab() -> ferry_lab::NetLab {
    let image_dir = ensure_test_image(&mut |_| {}).expect("test image");
    let mut cfg = ferry_lab::NetLabConfig::new(ferry_bin(), &["a", "b"]);
    cfg.image_dir = Some(image_dir);
    cfg.vm_network_flag = Some(true);
    cfg.keep = std::env::var_os("FERRY_KEEP_LAB").is_some();
    ferry_lab::NetLab::start(cfg)
        .await
        .expect("network lab starts")
}

/// Boots `spec` (e.g. a [`ferry_lab::networked_vm_spec`]) on `host` of a network lab and
/// waits until the guest is ready.
pub async fn boot_on_netlab(lab: &ferry_lab::NetLab, host: &str, spec: VmSpec) -> Vm {
    let c = lab.client();
    let name = spec.name.clone();
    let vm = c
        .create_vm(&CreateVmRequest {
            host: Some(host.into()),
            spec,
        })
        .await
        .expect("VM created");
    wait_ready(&c, &name, Duration::from_secs(240))
        .await
        .expect("guest ready");
    vm
}

/// The client namespace's connection to the guest service at `ip`.
pub fn connect_from_client(lab: &ferry_lab::NetLab, ip: &str) -> std::net::TcpStream {
    ferry_lab::probe::connect_from_client(lab, ip)
        .expect("the client connects to the guest over the VM network")
}

/// Runs the `ferry` CLI against a network lab's server, as its admin.
pub fn ferry_net(lab: &ferry_lab::NetLab, args: &[&str]) -> Output {
    let config = &lab.lab_trust().expect("the lab's server runs").config_path;
    std::process::Command::new(ferry_bin())
        .args(args)
        .env("FERRY_CONFIG", config)
        .env_remove("FERRY_SERVER")
        .env_remove("FERRY_CA")
        .env_remove("FERRY_TOKEN")
        .env("NO_COLOR", "1")
        .output()
        .expect("ferry runs")
}

/// Runs the `ferry` CLI against the server at `url` with no configuration at all.
pub fn ferry_at(url: &str, args: &[&str]) -> Output {
    std::process::Command::new(ferry_bin())
        .args(args)
        .env("FERRY_SERVER", url)
        .env_remove("FERRY_CONFIG")
        .env_remove("FERRY_CA")
        .env_remove("FERRY_TOKEN")
        .env("HOME", "/nonexistent")
        .env("NO_COLOR", "1")
        .output()
        .expect("ferry runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Boots the test guest on `host` and waits until its workload is ready.
pub async fn boot_guest(lab: &Lab, name: &str, host: &str, workload_mib: u64, rate: f64) {
    let c = lab.client();
    c.create_vm(&CreateVmRequest {
        host: Some(host.into()),
        spec: test_vm_spec(name, 512, workload_mib, rate),
    })
    .await
    .expect("VM created");
    wait_ready(&c, name, Duration::from_secs(240))
        .await
        .expect("guest ready");
}

/// Waits until the console summary satisfies `pred`; fails on a disk error or after 3 min.
pub async fn wait_console(
    obs: &ferry_lab::Observer<'_>,
    what: &str,
    pred: impl Fn(&ferry_guest::status::ConsoleSummary) -> bool,
) -> ferry_guest::status::ConsoleSummary {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let s = obs.summary().await.unwrap_or_default();
        if pred(&s) {
            return s;
        }
        assert!(s.disk_error.is_none(), "{what}: {:?}", s.disk_error);
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not seen; last disk line {:?}",
            s.disk_last
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

/// A tmpfs mounted over a directory for the test, unmounted also when the test fails.
pub struct Tmpfs(pub std::path::PathBuf);

impl Tmpfs {
    pub fn mount(dir: &std::path::Path, size_mib: u64) -> Tmpfs {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount runs");
        assert!(out.status.success(), "mount tmpfs: {out:?}");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The events of one migration, of one kind.
pub async fn migration_events(
    c: &ferry_api::client::ServerClient,
    id: uuid::Uuid,
    kind: &str,
) -> Vec<Event> {
    c.events(&EventQuery {
        migration: Some(id),
        kind: Some(kind.into()),
        ..Default::default()
    })
    .await
    .expect("events")
}

/// Waits (up to 60 s) for an event of one migration and kind that satisfies `pred`.
/// Events written after the migration completes (source retirement, disk deletion)
/// land a moment after what they describe is visible, so a single look can miss them.
pub async fn wait_migration_event(
    c: &ferry_api::client::ServerClient,
    id: uuid::Uuid,
    kind: &str,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let events = migration_events(c, id, kind).await;
        if let Some(e) = events.into_iter().find(|e| pred(e)) {
            return e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no matching {kind} event for migration {id} in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
