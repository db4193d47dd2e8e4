//! `ferry bench network`: what a client outside the VM sees during a migration. Hosts are
//! network namespaces; the migration network is shaped to 1 Gbit/s; a client in its own
//! namespace holds one TCP connection to the guest and asks every 10 ms. Then the same
//! guest over a 100 ms round-trip link (a delaying relay on the migration network).

use std::path::PathBuf;
use std::time::Duration;

use ferry_api::*;
use ferry_lab::netlab::{NetLab, NetLabConfig, Shape};
use ferry_lab::probe::{self, Probe};
use ferry_lab::{networked_vm_spec, wait_ready};
use serde::Serialize;

use crate::console::{bytes, millis, print_json, print_table};
use crate::error::{fail, BenchError, BenchResult};
use crate::progress::follow;
use crate::setup::{own_binary, test_image};

/// The options of `ferry bench network`; the binary gives them from its flags.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Guest memory, MiB.
    pub memory: u64,
    /// MiB the guest workload fills.
    pub workload_mem: u64,
    /// Guest dirty rates to run over the 1 Gbit/s link, MiB/s (0 = idle).
    pub rates: Vec<f64>,
    /// Guest dirty rate for the 100 ms RTT run, MiB/s.
    pub rtt_rate: f64,
    /// Where to write the result file.
    pub out: PathBuf,
    /// Print JSON (for scripts) instead of a table.
    pub json: bool,
}

#[derive(Serialize)]
struct Row {
    scenario: String,
    dirty_rate_mib_s: f64,
    link: String,
    completed: bool,
    total_time_ms: u64,
    qemu_downtime_ms: u64,
    bytes_sent: u64,
    passes: u64,
    client_requests: u64,
    client_answered: u64,
    client_longest_gap_ms: f64,
    client_p99_gap_ms: f64,
    client_error: Option<String>,
}

/// Boots the test guest on host a with a NIC on the VM network at `vm_subnet_ip(ip_k)`;
/// returns that IP once the guest reports ready.
pub(crate) async fn boot_networked_guest(
    lab: &NetLab,
    vm: &str,
    ip_k: u8,
    memory_mib: u64,
    workload_mib: u64,
    rate: f64,
) -> Result<String, BenchError> {
    let c = lab.client();
    let ip = lab.vm_subnet_ip(ip_k).to_string();
    let spec = networked_vm_spec(vm, memory_mib, workload_mib, rate, &ip);
    c.create_vm(&CreateVmRequest {
        host: Some("a".into()),
        spec,
    })
    .await?;
    wait_ready(&c, vm, Duration::from_secs(600))
        .await
        .map_err(BenchError::failed)?;
    Ok(ip)
}

/// One TCP connection from the client namespace to the guest at `ip`, asking every 10 ms.
pub(crate) fn start_client(lab: &NetLab, ip: &str) -> Result<Probe, BenchError> {
    let stream = probe::connect_from_client(lab, ip).map_err(fail)?;
    Ok(Probe::start(stream))
}

async fn one(
    lab: &NetLab,
    vm: &str,
    ip_k: u8,
    a: &NetworkConfig,
    rate: f64,
    scenario: &str,
    link: &str,
) -> Result<Row, BenchError> {
    let c = lab.client();
    eprintln!(
        "bench: {scenario}: {} MiB guest, workload {} MiB at {rate} MiB/s",
        a.memory, a.workload_mem
    );
    let ip = boot_networked_guest(lab, vm, ip_k, a.memory, a.workload_mem, rate).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let client = start_client(lab, &ip)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = c
        .migrate(&MigrateRequest {
            vm: vm.into(),
            to: Some("b".into()),
            options: Default::default(),
            priority: None,
        })
        .await?;
    let m = follow(&c, &m, false).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = client.finish();
    eprintln!("bench: {scenario}: {}", stats.summary());
    let r = m.report.clone().unwrap_or_default();
    let _ = c.stop_vm(vm).await;
    let _ = c.delete_vm(vm).await;
    Ok(Row {
        scenario: scenario.into(),
        dirty_rate_mib_s: rate,
        link: link.into(),
        completed: m.phase == Phase::Completed,
        total_time_ms: r.total_time_ms,
        qemu_downtime_ms: r.downtime_ms,
        bytes_sent: r.bytes_sent,
        passes: r.passes,
        client_requests: stats.sent,
        client_answered: stats.answered,
        client_longest_gap_ms: stats.longest_gap_ms(),
        client_p99_gap_ms: stats.percentile_gap_ms(0.99),
        client_error: stats.error.clone(),
    })
}

/// Hosts a and b in the network lab with the VM network, the migration network shaped to
/// 1 Gbit/s both ways, and `agent_args` for both agents.
/// The two-host lab with both migration links shaped to 1 Gbit/s. `plain_qemu_arm`: the
/// benchmark also moves the guest with QEMU alone, which knows nothing of Ferry's stream
/// TLS, so the cluster runs `--insecure` and every arm streams in the clear (what TLS
/// costs is `ferry bench tls`'s to measure).
pub(crate) async fn start_shaped_lab(
    agent_args: Vec<String>,
    plain_qemu_arm: bool,
) -> Result<NetLab, BenchError> {
    let image_dir = test_image().await?;
    let exe = own_binary()?;
    let mut cfg = NetLabConfig::new(exe, &["a", "b"]);
    cfg.insecure = plain_qemu_arm;
    cfg.image_dir = Some(image_dir);
    cfg.vm_network_flag = Some(true);
    cfg.agent_args = agent_args;
    let lab = NetLab::start(cfg).await.map_err(fail)?;
    for h in ["a", "b"] {
        lab.shape_migration(h, Shape::Gbit1).map_err(fail)?;
    }
    Ok(lab)
}

pub async fn network(a: NetworkConfig) -> BenchResult {
    let mut lab = start_shaped_lab(Vec::new(), false).await?;
    let mut rows = Vec::new();
    for (i, rate) in a.rates.iter().enumerate() {
        let name = if *rate == 0.0 {
            "idle".to_string()
        } else {
            format!("dirty {rate} MiB/s")
        };
        rows.push(
            one(
                &lab,
                &format!("gap{i}"),
                100 + i as u8,
                &a,
                *rate,
                &name,
                "1 Gbit/s (tbf)",
            )
            .await?,
        );
    }
    // 100 ms RTT: b listens on a fixed port and advertises a relay that delays 50 ms each way.
    lab.route_migrations_through_relay("b", 49_400, 50)
        .await
        .map_err(fail)?;
    rows.push(
        one(
            &lab,
            "rtt",
            120,
            &a,
            a.rtt_rate,
            "100 ms RTT",
            "1 Gbit/s + 100 ms RTT relay",
        )
        .await?,
    );
    drop(lab);

    let doc = serde_json::json!({
        "benchmark": "network",
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "machine": crate::results::machine_json("tcg"),
        "guest_memory_mib": a.memory,
        "workload_mib": a.workload_mem,
        "client": "one TCP connection from a client namespace, one request every 10 ms",
        "rows": rows,
    });
    let file = crate::results::write_result(&a.out, "network", &doc)?;
    if a.json {
        print_json(&doc)?;
    } else {
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.scenario.clone(),
                    if r.completed {
                        "yes".into()
                    } else {
                        "NO".into()
                    },
                    millis(r.total_time_ms),
                    millis(r.qemu_downtime_ms),
                    format!("{:.0} ms", r.client_longest_gap_ms),
                    format!("{:.0} ms", r.client_p99_gap_ms),
                    format!("{}/{}", r.client_answered, r.client_requests),
                    bytes(r.bytes_sent),
                ]
            })
            .collect();
        print_table(
            &[
                "SCENARIO",
                "DONE",
                "TOTAL",
                "QEMU DOWNTIME",
                "LONGEST GAP",
                "P99 GAP",
                "ANSWERED",
                "SENT",
            ],
            &table,
        );
        println!("results written to {}", file.display());
    }
    if rows
        .iter()
        .all(|r| r.completed && r.client_error.is_none() && r.client_answered == r.client_requests)
    {
        Ok(())
    } else {
        Err(BenchError::failed(
            "some runs lost the client connection or did not complete (see the table)",
        ))
    }
}
