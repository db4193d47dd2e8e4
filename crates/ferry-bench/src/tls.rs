//! `ferry bench tls`: what encrypting and authenticating the migration stream costs. The
//! same guest (1 GiB, 768 MiB of self-verifying pages) migrates with 1 and with 4 streams
//! in a secured cluster (QEMU's TLS between the hosts' certificates) and in an
//! `--insecure` one (plain TCP), over loopback and over a 1 Gbit/s migration network
//! (network namespaces, `tc tbf`). Prints a table and writes bench/results/tls.json.

use std::path::PathBuf;
use std::time::Duration;

use ferry_api::client::ServerClient;
use ferry_api::*;
use ferry_lab::netlab::{NetLab, NetLabConfig, Shape};
use ferry_lab::{test_vm_spec, verdict_after, wait_ready, Lab, LabConfig, Observer};

use crate::console::print_table;
use crate::error::{fail, BenchError, BenchResult};
use crate::results::{machine_json, write_result};
use crate::setup::{own_binary, test_image};

/// The options of `ferry bench tls`; the binary gives them from its flags.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Guest memory (MiB).
    pub memory: u64,
    /// Memory the guest's workload fills with self-verifying pages (MiB).
    pub workload_mem: u64,
    /// The workload's dirty rate (MiB/s).
    pub rate: f64,
    /// Stream counts to measure.
    pub streams: Vec<u8>,
    /// Links: loopback, 1gbit.
    pub links: Vec<String>,
    /// Where to write the result file.
    pub out: PathBuf,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    link: &'static str,
    transport: &'static str,
    streams: u8,
    completed: bool,
    total_time_ms: u64,
    transfer_time_ms: u64,
    downtime_ms: u64,
    bytes_sent: u64,
    throughput_mbit_s: f64,
    guest_ok: Option<bool>,
}

/// Boots the guest on a, then migrates it a -> b and back, once per stream count.
async fn run(
    c: &ServerClient,
    a: &TlsConfig,
    link: &'static str,
    transport: &'static str,
) -> Result<Vec<Row>, BenchError> {
    let vm = "tlsbench";
    c.create_vm(&CreateVmRequest {
        host: Some("a".into()),
        spec: test_vm_spec(vm, a.memory, a.workload_mem, a.rate),
    })
    .await?;
    wait_ready(c, vm, Duration::from_secs(600))
        .await
        .map_err(BenchError::failed)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut rows = Vec::new();
    let mut to = "b";
    for &streams in &a.streams {
        eprintln!("bench: {link}, {transport}, {streams} stream(s): migrating to {to}");
        let before = Observer { client: c, vm }
            .last_status()
            .await
            .map_err(BenchError::failed)?
            .ok_or_else(|| BenchError::failed("no guest status"))?;
        let m = c
            .migrate(&MigrateRequest {
                vm: vm.into(),
                to: Some(to.into()),
                options: MigrationOptions {
                    streams: Some(streams),
                    ..Default::default()
                },
                priority: None,
            })
            .await?;
        let m = crate::progress::follow(c, &m, false).await?;
        let r = m.report.clone().unwrap_or_default();
        let completed = m.phase == Phase::Completed;
        let guest_ok = if completed {
            verdict_after(c, vm, &before, Duration::from_secs(300))
                .await
                .ok()
                .map(|v| v.ok())
        } else {
            None
        };
        rows.push(Row {
            link,
            transport,
            streams,
            completed,
            total_time_ms: r.total_time_ms,
            transfer_time_ms: r.transfer_time_ms,
            downtime_ms: r.downtime_ms,
            bytes_sent: r.bytes_sent,
            throughput_mbit_s: if r.total_time_ms > 0 {
                r.bytes_sent as f64 * 8.0 / 1e6 / (r.total_time_ms as f64 / 1e3)
            } else {
                0.0
            },
            guest_ok,
        });
        if completed {
            to = if to == "b" { "a" } else { "b" };
        }
    }
    Ok(rows)
}

pub async fn tls(a: TlsConfig) -> BenchResult {
    if a.streams.is_empty() || a.streams.iter().any(|s| *s == 0 || *s > 16) {
        return Err(BenchError::refused("--streams takes counts from 1 to 16"));
    }
    let image_dir = test_image().await?;
    let exe = own_binary()?;
    let mut rows = Vec::new();
    for link in &a.links {
        for insecure in [false, true] {
            let transport = if insecure { "plain TCP" } else { "QEMU TLS" };
            match link.as_str() {
                "loopback" => {
                    let mut cfg = LabConfig::new(exe.clone(), &["a", "b"]);
                    cfg.image_dir = Some(image_dir.clone());
                    cfg.insecure = insecure;
                    let lab = Lab::start(cfg).await.map_err(fail)?;
                    rows.extend(run(&lab.client(), &a, "loopback", transport).await?);
                }
                "1gbit" => {
                    let mut cfg = NetLabConfig::new(exe.clone(), &["a", "b"]);
                    cfg.image_dir = Some(image_dir.clone());
                    cfg.insecure = insecure;
                    let lab = NetLab::start(cfg).await.map_err(fail)?;
                    for h in ["a", "b"] {
                        lab.shape_migration(h, Shape::Gbit1).map_err(fail)?;
                    }
                    rows.extend(run(&lab.client(), &a, "1 Gbit/s", transport).await?);
                }
                other => {
                    return Err(BenchError::refused(format!(
                        "unknown link '{other}': use loopback or 1gbit"
                    )))
                }
            }
        }
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.link.to_string(),
                r.transport.to_string(),
                r.streams.to_string(),
                if r.completed {
                    "yes".into()
                } else {
                    "NO".into()
                },
                format!("{:.2}", r.total_time_ms as f64 / 1e3),
                format!("{}", r.downtime_ms),
                format!("{:.0}", r.bytes_sent as f64 / (1 << 20) as f64),
                format!("{:.0}", r.throughput_mbit_s),
                match r.guest_ok {
                    Some(true) => "clean".into(),
                    Some(false) => "MISMATCH".into(),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    print_table(
        &[
            "LINK",
            "TRANSPORT",
            "STREAMS",
            "DONE",
            "TOTAL S",
            "PAUSE MS",
            "MIB SENT",
            "MBIT/S",
            "GUEST",
        ],
        &table,
    );
    // TLS over plaintext, per link and stream count.
    let mut ratios = Vec::new();
    for r in rows.iter().filter(|r| r.transport == "QEMU TLS") {
        if let Some(p) = rows
            .iter()
            .find(|p| p.transport == "plain TCP" && p.link == r.link && p.streams == r.streams)
        {
            if r.throughput_mbit_s > 0.0 && p.throughput_mbit_s > 0.0 {
                let ratio = r.throughput_mbit_s / p.throughput_mbit_s;
                eprintln!(
                    "bench: {} {} stream(s): TLS throughput {:.2} x plaintext",
                    r.link, r.streams, ratio
                );
                ratios.push(serde_json::json!({
                    "link": r.link, "streams": r.streams, "tls_over_plain_throughput": ratio,
                }));
            }
        }
    }
    let doc = serde_json::json!({
        "bench": "tls",
        "when": chrono::Utc::now().to_rfc3339(),
        "machine": machine_json("tcg"),
        "guest_memory_mib": a.memory,
        "workload_mib": a.workload_mem,
        "dirty_rate_mib_s": a.rate,
        "rows": rows,
        "tls_over_plain": ratios,
    });
    let file = write_result(&a.out, "tls", &doc)?;
    eprintln!("bench: wrote {}", file.display());
    Ok(())
}
